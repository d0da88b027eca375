//! The written-out pass against the autograd reference (`batch.rs`): the same loss (within 1e-5)
//! and every trainable parameter's gradient within 1e-4 of the largest gradient, for full
//! fine-tuning (tied and untied embeddings), LoRA on every projection without dropout over
//! several packed sequences, and LoRA with dropout on one sequence (where the reference's padded
//! batch draws its masks over the same elements in the same order).

use candle_core::{Tensor, Var};

use super::FusedTrainer;
use crate::model::lora::{LoraConfig, Proj};
use crate::model::DecoderModel;
use crate::testing::small_model;
use crate::text::template::TokenizedExample;
use crate::train::batch::{accumulate_gradients, Accumulated};
use crate::train::TrainOptions;

/// An example of `len` tokens (ids drawn from the small alphabet) whose last `answer` tokens are
/// targets.
fn example(len: usize, answer: usize, salt: usize) -> TokenizedExample {
    TokenizedExample {
        ids: (0..len).map(|i| 3 + ((i * 7 + salt * 5) % 13) as u32).collect(),
        target: (0..len).map(|i| i + answer >= len).collect(),
    }
}

fn examples() -> Vec<TokenizedExample> {
    vec![example(9, 4, 1), example(14, 6, 2), example(5, 2, 3), example(11, 11, 4)]
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Largest gap between the two runs' gradients, relative to the largest reference gradient;
/// `vars_b[i]` is `vars_a[i]`'s counterpart.
fn gap(a: &Accumulated, vars_a: &[Var], b: &Accumulated, vars_b: &[Var]) -> f32 {
    let scale = vars_a.iter().map(|v| max_abs(a.grads.get(v).expect("reference gradient"))).fold(0.0, f32::max);
    assert!(scale > 0.0);
    vars_a
        .iter()
        .zip(vars_b)
        .map(|(va, vb)| {
            let (ga, gb) = (a.grads.get(va).unwrap(), b.grads.get(vb).expect("fused gradient"));
            max_abs(&(ga - gb).unwrap())
        })
        .fold(0.0, f32::max)
        / scale
}

fn reference(model: &DecoderModel, exs: &[TokenizedExample]) -> (Accumulated, Vec<Var>) {
    let refs: Vec<&TokenizedExample> = exs.iter().collect();
    let vars = model.trainable_vars();
    let options = TrainOptions { micro_batch_tokens: 1 << 20, ..Default::default() };
    (accumulate_gradients(model, &vars, &refs, &options).unwrap(), vars)
}

fn fused(model: &DecoderModel, exs: &[TokenizedExample], budget: usize) -> (Accumulated, Vec<Var>) {
    let refs: Vec<&TokenizedExample> = exs.iter().collect();
    let vars = model.trainable_vars();
    let mut trainer = FusedTrainer::new(model, &vars, &TrainOptions::default()).expect("an f32 model");
    // Twice: the second step reuses the first's buffers and must not see its values.
    trainer.accumulate(model, &vars, &refs, budget).unwrap();
    (trainer.accumulate(model, &vars, &refs, budget).unwrap(), vars)
}

#[test]
fn full_fine_tuning_gradients_match_autograd() {
    for tied in [true, false] {
        let (model, _) = small_model(5, tied);
        let (a, va) = reference(&model, &examples());
        for budget in [1 << 20, 16] {
            let (b, vb) = fused(&model, &examples(), budget);
            assert!((a.loss - b.loss).abs() < 1e-5, "tied {tied}: loss {} vs {}", a.loss, b.loss);
            // 4 + 6 + 2 + 10: the first token of a sequence is never predicted.
            assert_eq!((a.targets, b.targets), (22, 22));
            let g = gap(&a, &va, &b, &vb);
            assert!(g < 1e-4, "tied {tied}, budget {budget}: gradients differ by {g}");
        }
        // Packing spends nothing on padding: 8 + 13 + 4 + 10 input tokens.
        assert_eq!(fused(&model, &examples(), 1 << 20).0.tokens, 35);
    }
}

/// The same with one query head per key/value head, heads 12 wide, three layers, and sequences
/// up to 40 tokens (the shape of the addition task's fresh models).
#[test]
fn full_fine_tuning_gradients_match_autograd_without_grouped_heads() {
    let tok = crate::text::tokenizer::TextTokenizer::char_level(crate::testing::ALPHABET).unwrap();
    let mut config = crate::testing::small_config(tok.vocab_size(), true);
    (config.hidden_size, config.intermediate_size, config.num_hidden_layers) = (48, 192, 3);
    config.num_key_value_heads = Some(4);
    let model = DecoderModel::new_random(&config, 3).unwrap();
    let exs: Vec<TokenizedExample> = (0..12).map(|i| example(12 + 3 * i, 5 + i % 4, i)).collect();
    let (a, va) = reference(&model, &exs);
    let (b, vb) = fused(&model, &exs, 1 << 20);
    assert!((a.loss - b.loss).abs() < 1e-5, "loss {} vs {}", a.loss, b.loss);
    let g = gap(&a, &va, &b, &vb);
    assert!(g < 1e-4, "gradients differ by {g}");
}

/// A model with adapters on every projection whose `B` is not zero (else `A` gets no gradient).
fn with_lora(seed: u64, dropout: f64) -> DecoderModel {
    let (mut model, _) = small_model(seed, true);
    let config = LoraConfig { rank: 4, alpha: 8.0, dropout, targets: Proj::ALL.to_vec() };
    model.attach_lora(config, 9).unwrap();
    for (i, v) in model.trainable_vars().into_iter().enumerate() {
        let t = v.as_tensor();
        let values = Tensor::arange(0u32, t.elem_count() as u32, t.device()).unwrap().to_dtype(t.dtype()).unwrap();
        let wave = ((values * 0.37).unwrap() + i as f64).unwrap().sin().unwrap() * 0.05;
        v.set(&wave.unwrap().reshape(t.shape()).unwrap()).unwrap();
    }
    model
}

#[test]
fn lora_gradients_match_autograd() {
    let (a, va) = reference(&with_lora(7, 0.0), &examples());
    let (b, vb) = fused(&with_lora(7, 0.0), &examples(), 1 << 20);
    assert!((a.loss - b.loss).abs() < 1e-5, "loss {} vs {}", a.loss, b.loss);
    let g = gap(&a, &va, &b, &vb);
    assert!(g < 1e-4, "LoRA: gradients differ by {g}");

    // Dropout: one sequence, so the reference's batch has no padding and draws the same masks.
    let one = vec![example(13, 6, 5)];
    let (ma, mb) = (with_lora(7, 0.3), with_lora(7, 0.3));
    let (a, va) = reference(&ma, &one);
    let refs: Vec<&TokenizedExample> = one.iter().collect();
    let vb = mb.trainable_vars();
    let b =
        FusedTrainer::new(&mb, &vb, &TrainOptions::default()).unwrap().accumulate(&mb, &vb, &refs, 1 << 20).unwrap();
    assert!((a.loss - b.loss).abs() < 1e-5, "dropout: loss {} vs {}", a.loss, b.loss);
    let g = gap(&a, &va, &b, &vb);
    assert!(g < 1e-4, "LoRA with dropout: gradients differ by {g}");
    let next = |m: &DecoderModel| rand::Rng::random::<u64>(&mut m.dropout_state().unwrap());
    assert_eq!(next(&ma), next(&mb), "the dropout generator ends where the reference leaves it");
}

/// Every family's optional parts (biases, per-head norms, output norms, scaled embeddings,
/// GeGLU, sliding windows, a local RoPE base) through the written-out pass: the loss and every
/// gradient as autograd's, full fine-tuning and LoRA, with sequences longer than Gemma's window.
#[test]
fn every_family_trains_as_autograd_does() {
    for family in crate::model::arch::FAMILIES {
        let model = crate::testing::family_model(family, 4);
        let (a, va) = reference(&model, &examples());
        for budget in [1 << 20, 16] {
            let (b, vb) = fused(&model, &examples(), budget);
            assert!((a.loss - b.loss).abs() < 1e-5, "{family}: loss {} vs {}", a.loss, b.loss);
            let g = gap(&a, &va, &b, &vb);
            assert!(g < 1e-4, "{family}, budget {budget}: gradients differ by {g}");
        }
        let mut model = model;
        let config = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: Proj::ALL.to_vec() };
        model.attach_lora(config, 9).unwrap();
        for (i, v) in model.trainable_vars().into_iter().enumerate() {
            v.set(&((v.as_tensor().ones_like().unwrap() * (0.01 * (i % 7) as f64)).unwrap())).unwrap();
        }
        let (a, va) = reference(&model, &examples());
        let (b, vb) = fused(&model, &examples(), 1 << 20);
        assert!((a.loss - b.loss).abs() < 1e-5, "{family} LoRA: loss {} vs {}", a.loss, b.loss);
        let g = gap(&a, &va, &b, &vb);
        assert!(g < 1e-4, "{family} LoRA: gradients differ by {g}");
    }
}
