//! Gradient tests of the training path.
//!
//! They pin the bug this crate is built around: candle-nn 0.11's fused `rms_norm`,
//! `softmax_last_dim` and `rope` have no backward pass, so a model built on them trains with
//! gradients that silently stop (norm weights and everything below never change). Here every
//! parameter must receive a non-zero gradient and move after one step, and the gradients must match
//! finite differences.

use candle_core::{DType, Tensor, Var};
use flywheel_core::{NullReporter, TrainExample, TrainingParams};

use super::batch::{batch_loss, make_batch};
use crate::model::DecoderModel;
use crate::testing::small_model;
use crate::text::template::{tokenize_example, RawFormat, TokenizedExample};
use crate::text::tokenizer::TextTokenizer;
use crate::train::train;

fn examples(tok: &TextTokenizer) -> Vec<TokenizedExample> {
    // Every token of the alphabet appears, so every embedding row gets a gradient.
    [("1+2=", "3"), ("45+6=", "51"), ("7+8=", "15"), ("0+9=", "9"), ("abc ", "cba"), ("a=", "b")]
        .iter()
        .map(|(p, c)| tokenize_example(tok, &RawFormat, &TrainExample::single_turn(*p, *c), 2).unwrap())
        .collect()
}

fn loss_of(model: &DecoderModel, exs: &[TokenizedExample]) -> Tensor {
    let refs: Vec<&TokenizedExample> = exs.iter().collect();
    let batch = make_batch(&refs, 0, &candle_core::Device::Cpu).unwrap();
    batch_loss(model, &batch).unwrap()
}

fn nonzero(t: &Tensor) -> usize {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .filter(|x| **x != 0.0)
        .count()
}

#[test]
fn every_parameter_gets_a_gradient_and_moves_after_one_step() {
    for tied in [true, false] {
        let (model, tok) = small_model(4, tied);
        let exs = examples(&tok);
        let grads = loss_of(&model, &exs).backward().unwrap();
        for (name, var) in model.named_vars() {
            let g = grads.get(&var).unwrap_or_else(|| panic!("{name}: no gradient"));
            assert!(nonzero(g) > 0, "{name}: gradient is all zero");
        }
        let before = model.named_tensors().unwrap();
        let params = TrainingParams {
            steps: 1,
            batch_size: exs.len(),
            learning_rate: 1e-3,
            warmup_steps: 0,
            weight_decay: 0.0, // so that a change can only come from the gradient
            grad_clip: 1.0,
            seed: 0,
        };
        train(&model, &exs, &params, &Default::default(), &NullReporter).unwrap();
        for (name, var) in model.named_vars() {
            let diff = (var.as_tensor() - &before[&name]).unwrap();
            assert!(nonzero(&diff) > 0, "tied={tied}: {name} did not change after a training step");
        }
    }
}

fn set_element(var: &Var, index: usize, value: f64) {
    let t = var.as_tensor();
    let mut data = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    data[index] = value;
    var.set(&Tensor::from_vec(data, t.shape(), t.device()).unwrap()).unwrap();
}

#[test]
fn gradients_match_finite_differences() {
    let (model, tok) = small_model(9, false);
    // Larger weights than the 0.02 init, so that attention is far from uniform and every
    // path carries a sizeable gradient.
    let model = model.to_dtype(DType::F64).unwrap();
    for (_, var) in model.named_vars() {
        if var.rank() == 2 {
            var.set(&(var.as_tensor() * 10.0).unwrap()).unwrap();
        }
    }
    let exs = examples(&tok);
    let grads = loss_of(&model, &exs).backward().unwrap();
    let h = 1e-5;
    for (name, var) in model.named_vars() {
        let analytic = grads.get(&var).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let n = analytic.len();
        for index in [0, n / 2, n - 1] {
            let x = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()[index];
            set_element(&var, index, x + h);
            let plus = loss_of(&model, &exs).to_scalar::<f64>().unwrap();
            set_element(&var, index, x - h);
            let minus = loss_of(&model, &exs).to_scalar::<f64>().unwrap();
            set_element(&var, index, x);
            let numeric = (plus - minus) / (2.0 * h);
            let err = (numeric - analytic[index]).abs();
            assert!(
                err <= 1e-7 + 1e-4 * numeric.abs(),
                "{name}[{index}]: analytic {} vs numeric {numeric}",
                analytic[index]
            );
        }
    }
}
