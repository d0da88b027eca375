//! Throughput of the embedded engine with the tiny character model (`ModelConfig::tiny`).
//!
//! `cargo run --release -p flywheel-engine --example bench [sample|train] [sequences] [new_tokens]`
//!
//! Prints (best of three runs) sampling tokens/s (greedy and temperature 1.0, `sequences` sequences of up to
//! `new_tokens` tokens, 8 samples per prompt) and training tokens/s (batches of 32 and 64
//! sequences of about 150 tokens). A random-weight model is used; the end-of-sequence token is
//! remapped to an id it never emits (`<bos>`, masked by nothing but never chosen greedily in
//! practice), and token counts are measured, not assumed.

use std::time::Instant;

use flywheel_core::{GenerationRequest, NullReporter, SamplingParams, TrainExample, TrainingParams};
use flywheel_engine::{Engine, ModelConfig};

/// Each measurement is repeated and the fastest run reported (the machine may be shared).
const REPEATS: usize = 3;

const ALPHABET: &str = "0123456789+-*=()abcdefghijklmnopqrstuvwxyz .,:?\n";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let mode = std::env::args().nth(1).filter(|a| a == "sample" || a == "train");
    let (do_sample, do_train) = (mode.as_deref() != Some("train"), mode.as_deref() != Some("sample"));
    let sequences = args.first().copied().unwrap_or(256);
    let new_tokens = args.get(1).copied().unwrap_or(150);
    let mut engine = Engine::new_char_level(ALPHABET, ModelConfig::tiny, 0)?;
    let c = engine.model().config();
    println!(
        "tiny model: {} params, d={}, {} layers, vocab {}, threads {}",
        c.num_parameters(),
        c.hidden_size,
        c.num_hidden_layers,
        c.vocab_size,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );
    let per_prompt = 8;
    let requests: Vec<GenerationRequest> = (0..sequences.div_ceil(per_prompt))
        .map(|i| {
            GenerationRequest::new(
                format!("question {i}: what is {} + {}?\n", i * 37 % 1000, i * 91 % 1000),
                per_prompt,
            )
        })
        .collect();
    for temperature in [0.0, 1.0].into_iter().filter(|_| do_sample) {
        let params = SamplingParams { temperature, max_new_tokens: new_tokens, seed: 1, ..SamplingParams::default() };
        let (mut secs, mut out) = (f64::INFINITY, Vec::new());
        for _ in 0..REPEATS {
            let start = Instant::now();
            out = engine.sample(&requests, &params, &NullReporter)?;
            secs = secs.min(start.elapsed().as_secs_f64());
        }
        let tokens: usize = out.iter().flatten().map(|c| c.tokens).sum();
        let n: usize = out.iter().map(Vec::len).sum();
        println!(
            "sample T={temperature}: {n} seqs, {tokens} tokens ({:.0}/seq) in {secs:.2}s = {:.0} tok/s",
            tokens as f64 / n as f64,
            tokens as f64 / secs
        );
    }
    let examples: Vec<TrainExample> = (0..256)
        .map(|i| {
            let prompt = format!("question {i}: what is {} + {}?\n", i * 37 % 1000, i * 91 % 1000);
            let answer: String =
                format!("let me add the digits one by one, carrying as needed: {i} {i} {i}. so the answer is {i}.")
                    .chars()
                    .cycle()
                    .take(120)
                    .collect();
            TrainExample::single_turn(prompt, answer)
        })
        .collect();
    let tokens_per_example = examples[0].messages.iter().map(|m| m.content.chars().count()).sum::<usize>() + 1;
    let micro: Vec<usize> = std::env::var("MICRO")
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|_| vec![engine.train.micro_batch_tokens]);
    for (batch_size, micro) in
        [32, 64].into_iter().filter(|_| do_train).flat_map(|b| micro.iter().map(move |&m| (b, m)))
    {
        engine.train.micro_batch_tokens = micro;
        let params = TrainingParams {
            steps: 5,
            batch_size,
            learning_rate: 1e-3,
            warmup_steps: 2,
            weight_decay: 0.01,
            grad_clip: 1.0,
            seed: 0,
        };
        let mut s = engine.fine_tune(&examples, &params, &NullReporter)?;
        for _ in 1..REPEATS {
            let again = engine.fine_tune(&examples, &params, &NullReporter)?;
            if again.seconds < s.seconds {
                s = again;
            }
        }
        let tokens = (params.steps * batch_size * tokens_per_example) as f64;
        println!(
            "train batch {batch_size} x ~{tokens_per_example} tokens (micro-batches of <= {micro} tokens): {:.0} tok/s ({:.0} ms/step, loss {:.3} -> {:.3})",
            tokens / s.seconds,
            1000.0 * s.seconds / params.steps as f64,
            s.first_loss,
            s.last_loss
        );
    }
    Ok(())
}
