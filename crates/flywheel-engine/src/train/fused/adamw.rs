//! Gradient clipping and AdamW over the written-out pass's gradient buffers, each parameter
//! updated in place in its candle storage ([`InplaceOp1`]).
//!
//! The arithmetic is candle-nn's `AdamW` (decoupled weight decay, bias-corrected moments), done
//! in one pass per parameter instead of about ten whole-tensor temporaries: for full fine-tuning
//! of a 135M-parameter model that is the difference between streaming 3 GB of fresh allocations
//! per step and touching each value once.

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp1, Layout, Var};
use rayon::prelude::*;

use crate::error::Result;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// Scales every gradient so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. `max_norm <= 0` only measures. The sum runs in a fixed order (per chunk, then
/// over chunks), so it does not depend on the thread count.
pub(super) fn clip(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let squares: Vec<f64> = grads
        .iter()
        .flat_map(|g| g.chunks(CHUNK))
        .collect::<Vec<_>>()
        .par_iter()
        .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
        .collect();
    let norm = squares.iter().sum::<f64>().sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as f32;
        for g in grads.iter_mut() {
            g.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= scale));
        }
    }
    norm
}

/// AdamW's settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct AdamSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// AdamW's moments for each trainable parameter.
#[derive(Debug)]
pub(super) struct AdamW {
    settings: AdamSettings,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Whether weight decay applies (matrices and embeddings, not norm weights).
    decays: Vec<bool>,
    t: i32,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub fn new(vars: &[Var], settings: AdamSettings) -> Self {
        Self {
            settings,
            m: vars.iter().map(|v| vec![0.0; v.elem_count()]).collect(),
            v: vars.iter().map(|v| vec![0.0; v.elem_count()]).collect(),
            decays: vars.iter().map(|v| v.rank() >= 2).collect(),
            t: 0,
        }
    }

    /// One step on every parameter of `vars` with its gradient in `grads`.
    pub fn step(&mut self, vars: &[Var], grads: &[Vec<f32>], lr: f64, weight_decay: f64) -> Result<()> {
        self.t += 1;
        let s = self.settings;
        for (i, var) in vars.iter().enumerate() {
            let decay = if self.decays[i] { weight_decay } else { 0.0 };
            let update = Update {
                grad: &grads[i],
                moments: RefCell::new((&mut self.m[i], &mut self.v[i])),
                beta1: s.beta1 as f32,
                beta2: s.beta2 as f32,
                scale_m: (1.0 / (1.0 - s.beta1.powi(self.t))) as f32,
                scale_v: (1.0 / (1.0 - s.beta2.powi(self.t))) as f32,
                shrink: (1.0 - lr * decay) as f32,
                lr: lr as f32,
                eps: s.eps as f32,
            };
            var.as_tensor().inplace_op1(&update)?;
        }
        Ok(())
    }
}

/// One parameter's AdamW update.
struct Update<'a> {
    grad: &'a [f32],
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
    beta1: f32,
    beta2: f32,
    scale_m: f32,
    scale_v: f32,
    /// `1 − lr · weight_decay`.
    shrink: f32,
    lr: f32,
    eps: f32,
}

impl InplaceOp1 for Update<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("adamw-update: parameters must be f32") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("adamw-update: the parameter must be contiguous")
        };
        let theta = &mut data[start..end];
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if theta.len() != self.grad.len() || m.len() != theta.len() {
            candle_core::bail!("adamw-update: {} values, {} gradients", theta.len(), self.grad.len());
        }
        let (b1, b2, scale_m, scale_v) = (self.beta1, self.beta2, self.scale_m, self.scale_v);
        let (shrink, lr, eps, grad) = (self.shrink, self.lr, self.eps, self.grad);
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|(((theta, m), v), g)| {
                for (((p, m), v), &g) in theta.iter_mut().zip(m).zip(v).zip(g) {
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + g * g * (1.0 - b2);
                    let step = (*m * scale_m) / ((*v * scale_v).sqrt() + eps);
                    *p = *p * shrink - step * lr;
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{backprop::GradStore, Device, Tensor};
    use candle_nn::{Optimizer, ParamsAdamW};

    use super::*;

    #[test]
    fn matches_candle_adamw_and_clips_to_the_norm() {
        let init = Tensor::new(&[[0.5f32, -1.0, 2.0], [0.1, 0.0, -0.3]], &Device::Cpu).unwrap();
        let norm_w = Tensor::new(&[1.0f32, 0.9], &Device::Cpu).unwrap();
        let (ours, theirs) = (
            [Var::from_tensor(&init).unwrap(), Var::from_tensor(&norm_w).unwrap()],
            [Var::from_tensor(&init).unwrap(), Var::from_tensor(&norm_w).unwrap()],
        );
        let settings = AdamSettings { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
        let mut adam = AdamW::new(&ours, settings);
        let p = |wd| ParamsAdamW { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: wd };
        let mut decay = candle_nn::AdamW::new(vec![theirs[0].clone()], p(0.1)).unwrap();
        let mut plain = candle_nn::AdamW::new(vec![theirs[1].clone()], p(0.0)).unwrap();
        for step in 0..3 {
            let grads = vec![vec![0.3, -0.2 * step as f32, 1.0, 0.0, 0.5, -0.7], vec![0.05, -0.01]];
            adam.step(&ours, &grads, 0.01, 0.1).unwrap();
            let mut store = GradStore::default();
            store.insert(&theirs[0], Tensor::from_slice(&grads[0], (2, 3), &Device::Cpu).unwrap());
            store.insert(&theirs[1], Tensor::from_slice(&grads[1], 2, &Device::Cpu).unwrap());
            decay.step(&store).unwrap();
            plain.step(&store).unwrap();
        }
        for (a, b) in ours.iter().zip(&theirs) {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6), "{a:?} vs {b:?}");
        }
        let mut grads = vec![vec![3.0, 0.0], vec![4.0]];
        assert!((clip(&mut grads, 1.0) - 5.0).abs() < 1e-9);
        assert!((grads[0][0] - 0.6).abs() < 1e-6 && (grads[1][0] - 0.8).abs() < 1e-6);
        assert!((clip(&mut grads, 0.0) - 1.0).abs() < 1e-5, "0 only measures");
    }
}
