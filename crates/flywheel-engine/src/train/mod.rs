//! Full-parameter supervised fine-tuning: AdamW, masked cross-entropy, clipping, warm-up + cosine.
//!
//! nanoGPT's loop, on one screen: draw a batch from a seeded shuffle, sum its gradients over
//! micro-batches (`batch.rs`: right-padded, cross-entropy on target tokens only), clip the global
//! gradient norm, step. Weight decay applies to matrices (and embeddings), not to norm weights.
//!
//! `options.rs` holds the settings; `fused/` computes a step's loss and gradients by a
//! written-out forward and backward pass over packed sequences (the default), `batch.rs` by
//! candle's autograd over padded batches (the reference, plain or with recomputed layer
//! activations); this file is the loop over steps.

pub(crate) mod batch;
pub(crate) mod fused;
#[cfg(test)]
mod grad_tests;
mod options;

use std::time::Instant;

use candle_core::{backprop::GradStore, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use flywheel_core::{Reporter, TrainSummary, TrainingParams};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{EngineError, Result};
use crate::model::DecoderModel;
use crate::text::template::TokenizedExample;
use batch::accumulate_gradients;
use fused::FusedTrainer;
pub use options::{TrainOptions, TrainPass};

/// Learning rate at `step` (0-based): linear warm-up to the peak, then cosine decay to
/// `peak * min_lr_ratio` at the last step.
pub fn learning_rate(step: usize, params: &TrainingParams, min_lr_ratio: f64) -> f64 {
    let peak = params.learning_rate;
    if step < params.warmup_steps {
        return peak * (step + 1) as f64 / params.warmup_steps as f64;
    }
    let decay_steps = params.steps.saturating_sub(params.warmup_steps).max(2) - 1;
    let progress = ((step - params.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    let min = peak * min_lr_ratio;
    min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Scales every gradient so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. `max_norm <= 0` only measures.
pub(crate) fn clip_grad_norm(vars: &[Var], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// candle-nn's AdamW (decayed and plain groups) over gradients from candle's autograd.
struct AutogradStep {
    decay: AdamW,
    plain: AdamW,
}

impl AutogradStep {
    fn new(vars: &[Var], params: &TrainingParams, options: &TrainOptions) -> Result<Self> {
        let (decay, no_decay): (Vec<Var>, Vec<Var>) = vars.iter().cloned().partition(|v| v.rank() >= 2);
        let adam = |vars, weight_decay| {
            let p = ParamsAdamW {
                lr: params.learning_rate,
                beta1: options.beta1,
                beta2: options.beta2,
                eps: options.eps,
                weight_decay,
            };
            AdamW::new(vars, p)
        };
        Ok(Self { decay: adam(decay, params.weight_decay)?, plain: adam(no_decay, 0.0)? })
    }

    /// One step; returns (mean loss, target tokens, input tokens).
    fn step(
        &mut self,
        model: &DecoderModel,
        vars: &[Var],
        picked: &[&TokenizedExample],
        options: &TrainOptions,
        grad_clip: f64,
        lr: f64,
    ) -> Result<(f64, usize, usize)> {
        let mut acc = accumulate_gradients(model, vars, picked, options)?;
        clip_grad_norm(vars, &mut acc.grads, grad_clip)?;
        self.decay.set_learning_rate(lr);
        self.plain.set_learning_rate(lr);
        self.decay.step(&acc.grads)?;
        self.plain.step(&acc.grads)?;
        Ok((acc.loss, acc.targets, acc.tokens))
    }
}

/// Trains `model` in place on `examples` (already tokenized) for `params.steps` steps.
pub fn train(
    model: &DecoderModel,
    examples: &[TokenizedExample],
    params: &TrainingParams,
    options: &TrainOptions,
    reporter: &dyn Reporter,
) -> Result<TrainSummary> {
    let start = Instant::now();
    if examples.is_empty() {
        return Err(EngineError::invalid("no training examples"));
    }
    if params.batch_size == 0 {
        return Err(EngineError::invalid("batch_size must be positive"));
    }
    if !(params.learning_rate.is_finite() && params.learning_rate > 0.0) {
        return Err(EngineError::invalid(format!("learning_rate must be positive, got {}", params.learning_rate)));
    }
    for (i, ex) in examples.iter().enumerate() {
        if ex.ids.len() != ex.target.len() || !ex.target.iter().skip(1).any(|&t| t) {
            return Err(EngineError::invalid(format!("training example {i} has no target token after the first")));
        }
    }
    let vars: Vec<Var> = model.trainable_vars();
    let mut fused = match options.pass {
        TrainPass::Fused => FusedTrainer::new(model, &vars, options),
        TrainPass::Autograd => None,
    };
    let mut autograd = match fused {
        Some(_) => None,
        None => Some(AutogradStep::new(&vars, params, options)?),
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(params.seed);
    let mut order: Vec<usize> = Vec::new();
    let (mut losses, mut target_tokens, mut tokens) = (Vec::with_capacity(params.steps), 0u64, 0usize);
    reporter.start("train", params.steps as u64);
    for step in 0..params.steps {
        let mut picked = Vec::with_capacity(params.batch_size);
        while picked.len() < params.batch_size {
            if order.is_empty() {
                order = (0..examples.len()).collect();
                order.shuffle(&mut rng);
            }
            picked.extend(order.pop().map(|i| &examples[i]));
        }
        let lr = learning_rate(step, params, options.min_lr_ratio);
        let (value, targets, step_tokens) = match (fused.as_mut(), autograd.as_mut()) {
            (Some(fused), _) => {
                let budget = options.micro_batch_tokens;
                let s = fused.step(model, &vars, &picked, budget, params.grad_clip, lr, params.weight_decay)?;
                (s.loss, s.targets, s.tokens)
            }
            (None, Some(autograd)) => autograd.step(model, &vars, &picked, options, params.grad_clip, lr)?,
            (None, None) => unreachable!("one of the two passes is set up"),
        };
        losses.push(value);
        target_tokens += targets as u64;
        tokens += step_tokens;
        reporter.advance(1);
        if step % 10 == 0 || step + 1 == params.steps {
            let rate = tokens as f64 / start.elapsed().as_secs_f64();
            reporter.message(&format!("loss {value:.4} lr {lr:.2e} {rate:.0} tok/s"));
        }
    }
    reporter.finish();
    let tenth = (params.steps / 10).max(1).min(losses.len().max(1));
    let mean = |xs: &[f64]| if xs.is_empty() { 0.0 } else { xs.iter().sum::<f64>() / xs.len() as f64 };
    Ok(TrainSummary {
        steps: params.steps,
        first_loss: mean(&losses[..tenth.min(losses.len())]),
        last_loss: mean(&losses[losses.len().saturating_sub(tenth)..]),
        target_tokens,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let p = TrainingParams {
            steps: 110,
            batch_size: 1,
            learning_rate: 1e-3,
            warmup_steps: 10,
            weight_decay: 0.0,
            grad_clip: 0.0,
            seed: 0,
        };
        let lr = |s| learning_rate(s, &p, 0.1);
        assert!((lr(0) - 1e-4).abs() < 1e-12);
        assert!((lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!((lr(109) - 1e-4).abs() < 1e-12);
        assert!(lr(60) < lr(30) && lr(30) < lr(10));
    }
}
