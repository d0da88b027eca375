//! `flywheel bench`: throughput of flywheel's parts, measured in-process.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, Result};
use flywheel_core::{GenerationRequest, Message, NullReporter, Role, SamplingParams};
use flywheel_engine::TrainPass;
use flywheel_loop::quality::dedup::{find_near_duplicates, DedupConfig};
use flywheel_loop::quality::planted::{planted_corpus, score};
use flywheel_verify::{Answer, Verifier};

use crate::cli::{BenchArgs, BenchTarget};

/// Runs `flywheel bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.what {
        BenchTarget::Judge { data, seconds } => judge(data, *seconds),
        BenchTarget::Sampling { model, samples, new_tokens, threads, repeat, context_words } => {
            sampling(model, (*samples, *new_tokens, *context_words), *threads, *repeat)
        }
        BenchTarget::Train { model, batch, seq_len, rank, pass, no_checkpoint, steps, threads } => {
            let pass = if pass == "autograd" { TrainPass::Autograd } else { TrainPass::Fused };
            train(model, *batch, *seq_len, *rank, (pass, !*no_checkpoint), *steps, *threads)
        }
        BenchTarget::Dedup { docs, duplicates, threshold, num_perm, bands, threads } => {
            let config =
                DedupConfig { threshold: *threshold, num_perm: *num_perm, bands: *bands, ..Default::default() };
            dedup(*docs, *duplicates, &config, *threads)
        }
    }
}

/// Builds a planted corpus, times the near-duplicate search on it and prints one JSON line.
fn dedup(docs: usize, duplicates: f64, config: &DedupConfig, threads: usize) -> Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    if !(0.0..=0.5).contains(&duplicates) {
        anyhow::bail!("--duplicates must be between 0 and 0.5, got {duplicates}");
    }
    crate::engine::set_threads(threads);
    let start = Instant::now();
    let corpus = planted_corpus(docs, duplicates, 1);
    let build = start.elapsed().as_secs_f64();
    tracing::info!("corpus: {} texts, {} planted pairs, built in {build:.1}s", corpus.texts.len(), corpus.pairs.len());
    let start = Instant::now();
    let found = find_near_duplicates(&corpus.texts, config);
    let seconds = start.elapsed().as_secs_f64();
    let report = score(&corpus, &found, config.threshold);
    let bands: serde_json::Map<String, serde_json::Value> = report
        .bands
        .iter()
        .map(|b| {
            let recall = if b.pairs == 0 { serde_json::Value::Null } else { (b.found as f64 / b.pairs as f64).into() };
            (
                format!("{:.2}-{:.2}", b.lo, b.hi),
                serde_json::json!({ "pairs": b.pairs, "found": b.found, "recall": recall }),
            )
        })
        .collect();
    let line = serde_json::json!({
        "bench": "dedup",
        "docs": corpus.texts.len(),
        "mean_chars": corpus.texts.iter().map(String::len).sum::<usize>() as f64 / corpus.texts.len().max(1) as f64,
        "threads": std::env::var("RAYON_NUM_THREADS").ok().and_then(|t| t.parse::<usize>().ok()),
        "threshold": config.threshold,
        "num_perm": config.num_perm,
        "bands": config.bands,
        "seconds": seconds,
        "recall": report.recall,
        "recall_by_band": bands,
        "precision": report.precision,
        "planted_below_threshold_reported": report.below_threshold_reported,
        "pairs_reported": found.pairs.len(),
        "candidates_verified": found.candidates,
        "signature_false_positives": found.signature_false_positives,
        "removed": found.removed(),
        "note": "seconds: the search alone (shingling, signatures, banding, exact verification, clusters)",
    });
    println!("{line}");
    Ok(())
}

/// Judges every worked solution of a GSM8K file against its own final answer, over and over on one
/// thread, and prints completions per second.
fn judge(data: &std::path::Path, seconds: f64) -> Result<()> {
    let text = std::fs::read_to_string(data).with_context(|| format!("cannot read {}", data.display()))?;
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", data.display(), i + 1))?;
        let solution = value["answer"]
            .as_str()
            .with_context(|| format!("{}:{}: missing string field `answer`", data.display(), i + 1))?
            .to_owned();
        let gold = Verifier::gold_answer(&solution).to_owned();
        cases.push((solution, gold));
    }
    anyhow::ensure!(!cases.is_empty(), "{} holds no problems", data.display());
    let mean_len = cases.iter().map(|(s, _)| s.len()).sum::<usize>() / cases.len();
    let verifier = Verifier::default();
    let start = Instant::now();
    let (mut judged, mut correct) = (0u64, 0u64);
    while start.elapsed().as_secs_f64() < seconds {
        for (completion, gold) in &cases {
            // Full work per sample: extract and parse both sides, as `flywheel judge` does.
            let verdict = verifier.judge_parsed(black_box(completion), &Answer::parse(black_box(gold)));
            correct += u64::from(verdict.correct);
        }
        judged += cases.len() as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = judged as f64 / elapsed;
    println!("judge: {judged} completions (mean {mean_len} bytes) in {elapsed:.2}s on 1 thread");
    println!("judge: {rate:.0} completions/s, {:.2} us each; {correct} judged correct", 1e6 / rate);
    println!("judge: target 200000/s: {}", if rate >= 200_000.0 { "met" } else { "NOT met" });
    Ok(())
}

/// Decodes `samples` completions of `new_tokens` tokens each from one chat prompt (its prefill
/// shared), `repeat` times after a warm-up, and prints the best run as one JSON line.
fn sampling(
    model: &std::path::Path,
    (samples, new_tokens, context_words): (usize, usize, usize),
    threads: usize,
    repeat: usize,
) -> Result<()> {
    crate::engine::set_threads(threads);
    let load = Instant::now();
    let engine = flywheel_engine::Engine::open(model).with_context(|| format!("loading {}", model.display()))?;
    tracing::info!("loaded {} in {:.1}s", model.display(), load.elapsed().as_secs_f64());
    const CONTEXT: [&str; 12] = ["Tom", "has", "12", "apples", "and", "buys", "7", "more", "so", "he", "has", "19."];
    let context: Vec<&str> = CONTEXT.iter().copied().cycle().take(context_words).collect();
    let request = "Write a short story about a robot who learns to paint.";
    let content = if context.is_empty() { request.to_string() } else { format!("{}\n\n{request}", context.join(" ")) };
    let messages = [Message { role: Role::User, content }];
    let prompt = engine.format().render_prompt(&messages)?;
    let prompt_tokens = engine.tokenizer().encode(&prompt)?.len();
    let params = SamplingParams {
        temperature: 0.8,
        max_new_tokens: new_tokens,
        seed: 7,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let request = [GenerationRequest::new(prompt, samples)];
    let run = || -> Result<(f64, usize)> {
        let start = Instant::now();
        let out = engine.sample(&request, &params, &NullReporter)?;
        let generated: usize = out[0].iter().map(|c| c.tokens).sum();
        Ok((start.elapsed().as_secs_f64(), generated))
    };
    run()?;
    let mut best: Option<(f64, usize)> = None;
    for _ in 0..repeat.max(1) {
        let (secs, generated) = run()?;
        if best.is_none_or(|(s, _)| secs < s) {
            best = Some((secs, generated));
        }
    }
    let (seconds, generated) = best.expect("at least one run");
    let line = serde_json::json!({
        "engine": "flywheel",
        "model": model.display().to_string(),
        "samples": samples,
        "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens,
        "threads": threads,
        "generated_tokens": generated,
        "seconds": seconds,
        "tokens_per_s": generated as f64 / seconds,
        "note": "seconds include the prompt's prefill (once, shared by all samples)",
    });
    println!("{line}");
    Ok(())
}

/// Times LoRA (or full) fine-tuning steps on fixed-length text and prints one JSON line.
fn train(
    model: &std::path::Path,
    batch: usize,
    seq_len: usize,
    rank: usize,
    (pass, checkpoint_layers): (TrainPass, bool),
    steps: usize,
    threads: usize,
) -> Result<()> {
    crate::engine::set_threads(threads);
    let mut engine = flywheel_engine::Engine::open(model).with_context(|| format!("loading {}", model.display()))?;
    if rank > 0 {
        let targets = flywheel_engine::Proj::ALL.to_vec();
        engine
            .attach_lora(flywheel_engine::LoraConfig { rank, alpha: 2.0 * rank as f64, dropout: 0.05, targets }, 1)?;
    }
    // Every token a target (a language-modelling step, as the peer measures): a user turn of one
    // token, then an assistant turn of `seq_len` tokens of text.
    let words = "the model learns to solve arithmetic word problems by writing its own rationales ";
    let mut text = String::new();
    while engine.tokenizer().encode(&text)?.len() < seq_len {
        text.push_str(words);
    }
    let ids = engine.tokenizer().encode(&text)?;
    let examples: Vec<flywheel_engine::TokenizedExample> = (0..batch)
        .map(|i| {
            let ids: Vec<u32> = ids.iter().cycle().skip(i).take(seq_len + 1).copied().collect();
            flywheel_engine::TokenizedExample { target: vec![true; ids.len()], ids }
        })
        .collect();
    let mut options = engine.train.clone();
    options.micro_batch_tokens = batch * seq_len;
    options.pass = pass;
    options.checkpoint_layers = checkpoint_layers;
    let params = |steps| flywheel_core::TrainingParams {
        steps,
        batch_size: batch,
        learning_rate: 1e-4,
        warmup_steps: 0,
        weight_decay: 0.0,
        grad_clip: 1.0,
        seed: 1,
    };
    flywheel_engine::train(engine.model(), &examples, &params(1), &options, &NullReporter)?;
    let summary = flywheel_engine::train(engine.model(), &examples, &params(steps), &options, &NullReporter)?;
    let tokens = (steps * batch * seq_len) as f64;
    let line = serde_json::json!({
        "engine": "flywheel",
        "model": model.display().to_string(),
        "lora_rank": rank,
        "pass": format!("{pass:?}").to_lowercase(),
        "checkpoint_layers": pass == TrainPass::Autograd && checkpoint_layers,
        "batch": batch,
        "seq_len": seq_len,
        "steps": steps,
        "threads": threads,
        "seconds": summary.seconds,
        "tokens_per_s": tokens / summary.seconds,
        "loss_first": summary.first_loss,
        "loss_last": summary.last_loss,
    });
    println!("{line}");
    Ok(())
}
