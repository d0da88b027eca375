//! The engine through its public API: sampling semantics, reproducibility, checkpoints, and an
//! end-to-end run where training and greedy sampling must agree.

use flywheel_core::{
    CoreError, FinishReason, GenerationRequest, Generator, NullReporter, SamplingParams, TrainExample, Trainer,
    TrainingParams,
};
use flywheel_engine::{tokenize_example, Engine, ModelConfig};

fn small(vocab: usize) -> ModelConfig {
    let mut c = ModelConfig::tiny(vocab);
    c.hidden_size = 64;
    c.intermediate_size = 128;
    c.num_hidden_layers = 2;
    c.max_position_embeddings = 48;
    c
}

fn engine(seed: u64) -> Engine {
    Engine::new_char_level("abcde|0123456789+=", small, seed).unwrap()
}

fn req(prompt: &str, n: usize) -> GenerationRequest {
    GenerationRequest::new(prompt, n)
}

fn sampling(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 0,
        max_new_tokens: 12,
        stop: vec![],
        seed,
        ignore_eos: false,
    }
}

#[test]
fn results_do_not_depend_on_batching() {
    let mut e = engine(1);
    let requests = [req("ab|", 3), req("1+2=", 1), req("edcba|", 4), req("9", 2)];
    let params = sampling(42);
    let reference = e.generate(&requests, &params, &NullReporter).unwrap();
    for max_batch in [1, 3, 7] {
        e.sampler.max_batch = max_batch;
        e.sampler.max_prefill_tokens = 4;
        assert_eq!(e.generate(&requests, &params, &NullReporter).unwrap(), reference, "max_batch {max_batch}");
    }
    // The same request alone, at a different index, draws other samples (its rng is per index)...
    let shapes: Vec<usize> = reference.iter().map(Vec::len).collect();
    assert_eq!(shapes, [3, 1, 4, 2]);
    let texts: Vec<&str> = reference[2].iter().map(|c| c.text.as_str()).collect();
    assert!(texts.iter().any(|t| *t != texts[0]), "samples of one prompt differ: {texts:?}");
    // ...and another seed gives other completions.
    assert_ne!(e.generate(&requests, &sampling(43), &NullReporter).unwrap(), reference);
}

#[test]
fn greedy_samples_agree_and_respect_limits() {
    let mut e = engine(2);
    let params = SamplingParams { max_new_tokens: 5, ..SamplingParams::default() };
    let out = e.generate(&[req("abc|", 3), req("12", 0)], &params, &NullReporter).unwrap();
    assert!(out[1].is_empty());
    assert!(out[0].iter().all(|c| c == &out[0][0]));
    let c = &out[0][0];
    assert!(c.tokens <= 5);
    assert!(c.finish == FinishReason::Stop || c.tokens == 5);
    let none = SamplingParams { max_new_tokens: 0, ..SamplingParams::default() };
    let out = e.generate(&[req("a", 2)], &none, &NullReporter).unwrap();
    assert!(out[0].iter().all(|c| c.tokens == 0 && c.text.is_empty() && c.finish == FinishReason::Length));
}

#[test]
fn stop_strings_cut_the_text() {
    let mut e = engine(3);
    let free = SamplingParams { max_new_tokens: 20, seed: 5, ..sampling(5) };
    let requests: Vec<GenerationRequest> = (0..8).map(|i| req(&format!("{i}+{i}="), 1)).collect();
    let out = e.generate(&requests, &free, &NullReporter).unwrap();
    // Pick a completion with some character repeated after its first position, stop at it.
    let (i, text) =
        out.iter().enumerate().map(|(i, c)| (i, c[0].text.clone())).find(|(_, t)| t.chars().count() >= 3).unwrap();
    let stop: String = text.chars().nth(1).unwrap().to_string();
    let cut = &text[..text.find(&stop).unwrap()];
    let with_stop = SamplingParams { stop: vec![stop.clone(), "zz".into()], ..free };
    let again = e.generate(&requests, &with_stop, &NullReporter).unwrap();
    assert_eq!(again[i][0].text, cut, "completion {text:?} stopped at {stop:?}");
    assert_eq!(again[i][0].finish, FinishReason::Stop);
}

#[test]
fn context_limit_and_bad_prompts() {
    let mut e = engine(4);
    let long = "a".repeat(46);
    let params = SamplingParams { max_new_tokens: 10, ..SamplingParams::default() };
    let out = e.generate(&[req(&long, 1)], &params, &NullReporter).unwrap();
    assert!(out[0][0].tokens <= 2 + 1, "48 positions leave room for ~2 tokens: {:?}", out[0][0]);
    let err = e.generate(&[req(&"a".repeat(49), 1)], &params, &NullReporter).unwrap_err();
    assert!(matches!(err, CoreError::InvalidRequest(_)), "{err}");
    let err = e.generate(&[req("xyz", 1)], &params, &NullReporter).unwrap_err();
    assert!(matches!(err, CoreError::InvalidRequest(ref m) if m.contains("'x'")), "{err}");
    let bad = SamplingParams { top_p: 0.0, ..params };
    assert!(matches!(e.generate(&[req("a", 1)], &bad, &NullReporter), Err(CoreError::InvalidRequest(_))));
}

/// The copy task: `s|` → `s` for strings over `abcde`. Trains on 400 strings, tests on 60 unseen.
#[test]
fn training_then_greedy_sampling_solves_held_out_copies() {
    let mut e = Engine::new_char_level("abcde|", small, 7).unwrap();
    let letters = ['a', 'b', 'c', 'd', 'e'];
    let all: Vec<String> = (0..625usize)
        .map(|mut i| {
            (0..4)
                .map(|_| {
                    let c = letters[i % 5];
                    i /= 5;
                    c
                })
                .collect()
        })
        .collect();
    let mut order: Vec<usize> = (0..all.len()).collect();
    let mut state = 99u64;
    for i in (1..order.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    let train: Vec<TrainExample> =
        order[..400].iter().map(|&i| TrainExample::single_turn(format!("{}|", all[i]), all[i].clone())).collect();
    let held: Vec<&String> = order[400..460].iter().map(|&i| &all[i]).collect();
    let params = TrainingParams {
        steps: 300,
        batch_size: 32,
        learning_rate: 3e-3,
        warmup_steps: 20,
        weight_decay: 0.01,
        grad_clip: 1.0,
        seed: 0,
    };
    let summary = e.train(&train, &params, &NullReporter).unwrap();
    assert!(summary.last_loss < summary.first_loss * 0.3, "{summary:?}");
    let requests: Vec<GenerationRequest> = held.iter().map(|s| req(&format!("{s}|"), 1)).collect();
    let greedy = SamplingParams { max_new_tokens: 8, ..SamplingParams::default() };
    let out = e.generate(&requests, &greedy, &NullReporter).unwrap();
    let correct = out.iter().zip(&held).filter(|(c, s)| &c[0].text == **s && c[0].finish == FinishReason::Stop).count();
    eprintln!("copy task: {correct}/{} held-out right, {summary:?}", held.len());
    assert!(correct * 10 >= held.len() * 9, "{correct}/{} held-out copies right; loss {summary:?}", held.len());

    // A checkpoint of the trained model samples the same; resetting to the base undoes training.
    let dir = tempfile::tempdir().unwrap();
    e.save(&dir.path().join("trained")).unwrap();
    let mut back = Engine::load(&dir.path().join("trained")).unwrap();
    assert_eq!(back.generate(&requests, &greedy, &NullReporter).unwrap(), out);
    let base = Engine::new_char_level("abcde|", small, 7).unwrap();
    base.save(&dir.path().join("base")).unwrap();
    e.reset_from(&dir.path().join("base")).unwrap();
    let mut fresh = Engine::load(&dir.path().join("base")).unwrap();
    assert_eq!(
        e.generate(&requests, &greedy, &NullReporter).unwrap(),
        fresh.generate(&requests, &greedy, &NullReporter).unwrap()
    );
}

#[test]
fn log_likelihood_sums_the_target_tokens_log_probabilities_and_falls_with_training() {
    let mut e = engine(3);
    let examples = vec![
        TrainExample::single_turn("ab|", "ab"),
        TrainExample::single_turn("12+3=", "15"),
        TrainExample::single_turn("e|", "eeee"),
    ];
    let scored = Generator::log_likelihood(&mut e, &examples).unwrap().expect("the engine scores text");
    // The reference: each example's own pass, its target positions' log-probabilities summed.
    let eos = e.model().config().eos_ids()[0];
    let (mut nll, mut tokens) = (0.0f64, 0u64);
    for ex in &examples {
        let t = tokenize_example(e.tokenizer(), e.format(), ex, eos).unwrap();
        let logp = e.model().token_logprobs(&t.ids).unwrap();
        for (i, lp) in logp.iter().enumerate() {
            if t.target[i + 1] {
                nll -= f64::from(*lp);
                tokens += 1;
            }
        }
    }
    assert_eq!(scored.tokens, tokens, "answer characters and each end of sequence: 2+1 + 2+1 + 4+1");
    assert_eq!(tokens, 11);
    assert!((scored.nll - nll).abs() < 1e-3 * nll, "{} vs {nll}", scored.nll);
    let before = scored.perplexity().unwrap();
    assert!(before > 4.0, "an untrained model is near-uniform over {} tokens: {before}", 20);

    let params = TrainingParams {
        steps: 60,
        batch_size: 3,
        learning_rate: 3e-3,
        warmup_steps: 5,
        weight_decay: 0.0,
        grad_clip: 1.0,
        seed: 0,
    };
    e.train(&examples, &params, &NullReporter).unwrap();
    let after = Generator::log_likelihood(&mut e, &examples).unwrap().unwrap().perplexity().unwrap();
    assert!(after < 1.5, "the trained examples are nearly certain: {before} -> {after}");
}

#[test]
fn a_request_with_its_own_seed_samples_the_same_alone_or_batched() {
    let e = engine(4);
    let sampler = e.prepare_sampler().unwrap();
    let requests = [req("ab|", 3), req("12+3=", 2), req("ab|", 3)];
    let params = sampling(0);
    let batched = sampler.sample(&requests, &params, Some(&[5, 9, 6]), &NullReporter).unwrap();
    let alone = sampler.sample(&requests[1..2], &params, Some(&[9]), &NullReporter).unwrap();
    assert_eq!(batched[1], alone[0]);
    let first = sampler.sample(&requests[..1], &params, Some(&[5]), &NullReporter).unwrap();
    assert_eq!(batched[0], first[0]);
    assert_ne!(batched[0], batched[2], "the same prompt under another seed");
    assert!(sampler.sample(&requests, &params, Some(&[1]), &NullReporter).is_err(), "one seed per request");
}

#[test]
fn engine_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Engine>();
}

/// Errors at the trait boundary say what failed: a save is not "training failed".
#[test]
fn a_failed_save_is_named_as_such() {
    let e = engine(1);
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let err = flywheel_core::Checkpoint::save(&e, &blocker.join("model")).unwrap_err().to_string();
    assert!(err.contains("a-file"), "{err}");
    assert!(!err.contains("training failed") && !err.contains("generation failed"), "{err}");
}
