//! Every family against `transformers`: tiny random models that `scripts/family-fixtures` built
//! with `transformers`' own classes (`tests/fixtures/families/<family>/`: `config.json`,
//! `model.safetensors`, and the log-probabilities the same weights give in float64) load here
//! from their Hugging Face files, and the engine's three passes give the same numbers: the
//! autograd reference's and the sampler's log-probabilities within 1e-4 of `transformers`', the
//! written-out training pass's loss within 1e-4 of the mean negative log-probability, and the
//! sampler's greedy continuation token for token. (Float32 against float64 alone differs by about
//! 1e-5 on these models, as each `reference.json` records.)

use std::path::{Path, PathBuf};

use crate::formats::checkpoint::load_weights;
use crate::model::config::ModelConfig;
use crate::model::DecoderModel;
use crate::sample::infer::{InferenceModel, StepInput};
use crate::sample::quant::WeightFormat;
use crate::text::template::TokenizedExample;
use crate::train::fused::FusedTrainer;
use crate::train::TrainOptions;

/// The families with fixtures; `llama3` is Llama with Llama 3's RoPE scaling.
const FIXTURES: [&str; 5] = ["llama", "llama3", "qwen2", "qwen3", "gemma3"];

/// Within this of `transformers`' float64 log-probabilities.
const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(name);
    assert!(dir.join("reference.json").exists(), "{} is missing: run scripts/family-fixtures", dir.display());
    dir
}

struct Text {
    ids: Vec<u32>,
    logprobs: Vec<f64>,
}

fn load(name: &str) -> (DecoderModel, Vec<Text>, Vec<u32>) {
    let dir = fixture(name);
    let config = ModelConfig::load(&dir.join("config.json")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let model = DecoderModel::from_tensors(&config, load_weights(&dir.join("model.safetensors")).unwrap(), &dir)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let texts = reference["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Text {
            ids: ids(&t["ids"]),
            logprobs: t["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect(),
        })
        .collect();
    (model, texts, ids(&reference["greedy"]))
}

fn max_gap(ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// Log-softmax of one logits row, at `target`.
fn logprob(row: &[f32], target: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&z| (z as f64 - max).exp()).sum();
    row[target as usize] as f64 - max - sum.ln()
}

/// The sampler's logits row after each prefix of `ids` (prefill of one token, then decode steps).
fn sampler_rows(fast: &InferenceModel, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = fast.new_cache();
    (0..ids.len())
        .map(|i| {
            let pos = [i as u32];
            fast.step(&mut [StepInput { cache: &mut cache, tokens: &ids[i..=i], positions: &pos }]).unwrap()
        })
        .collect()
}

#[test]
fn the_autograd_pass_gives_transformers_log_probabilities() {
    for name in FIXTURES {
        let (model, texts, _) = load(name);
        for t in &texts {
            let ours: Vec<f64> = model.token_logprobs(&t.ids).unwrap().into_iter().map(f64::from).collect();
            let gap = max_gap(&ours, &t.logprobs);
            assert!(gap < TOLERANCE, "{name}, {} tokens: autograd log-probabilities off by {gap}", t.ids.len());
        }
    }
}

#[test]
fn the_sampler_gives_transformers_log_probabilities_and_greedy_tokens() {
    for name in FIXTURES {
        let (model, texts, greedy) = load(name);
        let fast = InferenceModel::new(&model, WeightFormat::F32).unwrap();
        for t in &texts {
            let rows = sampler_rows(&fast, &t.ids);
            let ours: Vec<f64> = t.ids[1..].iter().zip(&rows).map(|(&id, row)| logprob(row, id)).collect();
            let gap = max_gap(&ours, &t.logprobs);
            assert!(gap < TOLERANCE, "{name}, {} tokens: sampler log-probabilities off by {gap}", t.ids.len());
        }
        let mut ids = texts[0].ids.clone();
        for want in greedy {
            let row = sampler_rows(&fast, &ids).pop().unwrap();
            let next = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u32;
            assert_eq!(next, want, "{name}: greedy continuation of {ids:?}");
            ids.push(next);
        }
    }
}

#[test]
fn the_written_out_training_pass_gives_transformers_loss() {
    for name in FIXTURES {
        let (model, texts, _) = load(name);
        let vars = model.trainable_vars();
        let mut trainer = FusedTrainer::new(&model, &vars, &TrainOptions::default()).unwrap();
        for t in &texts {
            let example = TokenizedExample { ids: t.ids.clone(), target: vec![true; t.ids.len()] };
            let ours = trainer.accumulate(&model, &vars, &[&example], 1 << 20).unwrap().loss;
            let want = -t.logprobs.iter().sum::<f64>() / t.logprobs.len() as f64;
            assert!((ours - want).abs() < TOLERANCE, "{name}, {} tokens: loss {ours} vs {want}", t.ids.len());
        }
    }
}
