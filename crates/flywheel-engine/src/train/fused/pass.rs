//! One pass's read-only inputs, and the pieces every layer uses: a projection with its adapter,
//! forward and backward, and the output head with the cross-entropy loss.

use rand::rngs::StdRng;
use rayon::prelude::*;

use super::attention::Heads;
use super::ops::{self, sized, zeroed};
use super::pack::Packed;
use super::params::{Grads, Params};
use super::{AdapterActs, AdapterScratch, HeadScratch};
use crate::gemm::{matmul, MatMut, MatRef};
use crate::model::arch::Activation;
use crate::model::config::ModelConfig;
use crate::model::lora::{LoraConfig, Proj};
use crate::model::rope::RopeTables;

/// Target rows whose logits are computed at once: `HEAD_CHUNK × vocab` floats of scratch (50 MB
/// for SmolLM2); fewer, larger chunks mean fewer passes over the output matrix's gradient.
const HEAD_CHUNK: usize = 256;

/// One pass's read-only inputs.
pub(super) struct Pass<'a> {
    pub params: &'a Params<'a>,
    pub config: &'a ModelConfig,
    pub lora: Option<&'a LoraConfig>,
    /// The RoPE tables of each layer.
    pub ropes: Vec<&'a RopeTables>,
    pub packed: &'a Packed,
    /// The attention shape of each layer (its window, where it slides).
    pub heads: Vec<Heads>,
    /// The MLP's gate activation.
    pub activation: Activation,
}

impl Pass<'_> {
    /// `(out, in)` of projection `p`.
    pub fn dims(&self, p: Proj) -> (usize, usize) {
        crate::model::proj_dims(self.config, p)
    }

    pub fn eps(&self) -> f32 {
        self.config.rms_norm_eps as f32
    }

    /// `out (=|+=) x Wᵀ + scale · dropout(x) Aᵀ Bᵀ` for projection `p` of layer `l`.
    #[allow(clippy::too_many_arguments)]
    pub fn project(
        &self,
        l: usize,
        p: Proj,
        x: &[f32],
        out: &mut [f32],
        accumulate: bool,
        acts: &mut AdapterActs,
        scratch: &mut AdapterScratch,
        rng: &mut Option<StdRng>,
    ) {
        let (t, (n_out, n_in)) = (self.packed.rows(), self.dims(p));
        let layer = &self.params.layers[l];
        let w = MatRef::new(layer.proj[p as usize].get(), n_out, n_in);
        matmul(MatMut::new(out, t, n_out), MatRef::new(x, t, n_in), w.t(), 1.0, accumulate, true);
        let (Some((a, b)), Some(cfg)) = (&layer.lora[p as usize], self.lora) else { return };
        let r = cfg.rank;
        let input = if cfg.dropout > 0.0 {
            let rng = rng.as_mut().expect("adapters have a dropout generator");
            acts.rng = Some(rng.clone());
            crate::model::lora::dropout_mask(rng, cfg.dropout, t, n_in, &mut scratch.mask);
            ops::masked(x, &scratch.mask, &mut scratch.dropped);
            &scratch.dropped[..]
        } else {
            x
        };
        let xa = sized(&mut acts.xa, t * r);
        matmul(MatMut::new(xa, t, r), MatRef::new(input, t, n_in), MatRef::new(a.get(), r, n_in).t(), 1.0, false, true);
        let bt = MatRef::new(b.get(), n_out, r).t();
        matmul(MatMut::new(out, t, n_out), MatRef::new(xa, t, r), bt, cfg.scale() as f32, true, true);
    }

    /// The backward pass of [`Pass::project`] given `dy`, the gradient of its output: the
    /// weight's gradient when the base trains, the adapter's when there is one, and `dx` (=|+=)
    /// the input's gradient when asked for.
    #[allow(clippy::too_many_arguments)]
    pub fn project_backward(
        &self,
        l: usize,
        p: Proj,
        dy: &[f32],
        x: &[f32],
        dx: Option<(&mut [f32], bool)>,
        acts: &AdapterActs,
        scratch: &mut AdapterScratch,
        grads: &mut Grads,
    ) {
        let (t, (n_out, n_in)) = (self.packed.rows(), self.dims(p));
        let layer = &self.params.layers[l];
        let w = MatRef::new(layer.proj[p as usize].get(), n_out, n_in);
        let dyr = MatRef::new(dy, t, n_out);
        if let Some(gw) = grads.weight(l, p) {
            matmul(MatMut::new(gw, n_out, n_in), dyr.t(), MatRef::new(x, t, n_in), 1.0, true, true);
        }
        let mut dx = dx;
        if let Some((dx, accumulate)) = dx.as_mut() {
            matmul(MatMut::new(dx, t, n_in), dyr, w, 1.0, *accumulate, true);
        }
        let (Some((a, b)), Some(cfg), Some((ga, gb))) = (&layer.lora[p as usize], self.lora, grads.adapter(l, p))
        else {
            return;
        };
        let (r, s) = (cfg.rank, cfg.scale() as f32);
        let xa = MatRef::new(&acts.xa, t, r);
        matmul(MatMut::new(gb, n_out, r), dyr.t(), xa, s, true, true);
        let dxa = sized(&mut scratch.dxa, t * r);
        matmul(MatMut::new(dxa, t, r), dyr, MatRef::new(b.get(), n_out, r), s, false, true);
        let input = if cfg.dropout > 0.0 {
            let mut rng = acts.rng.clone().expect("the forward pass saved the generator");
            crate::model::lora::dropout_mask(&mut rng, cfg.dropout, t, n_in, &mut scratch.mask);
            ops::masked(x, &scratch.mask, &mut scratch.dropped);
            &scratch.dropped[..]
        } else {
            x
        };
        let dxa = MatRef::new(&scratch.dxa, t, r);
        matmul(MatMut::new(ga, r, n_in), dxa.t(), MatRef::new(input, t, n_in), 1.0, true, true);
        if let Some((dx, _)) = dx {
            let a = MatRef::new(a.get(), r, n_in);
            if cfg.dropout > 0.0 {
                let tmp = sized(&mut scratch.dx, t * n_in);
                matmul(MatMut::new(tmp, t, n_in), dxa, a, 1.0, false, true);
                ops::add_masked(dx, &scratch.dx, &scratch.mask);
            } else {
                matmul(MatMut::new(dx, t, n_in), dxa, a, 1.0, true, true);
            }
        }
    }

    /// Final norm, output projection and cross-entropy on the target rows of `x`, each target
    /// weighted by `weight`; writes the gradient of `x` into `dx` (zeros elsewhere) and returns
    /// the weighted loss.
    pub fn head(&self, x: &[f32], weight: f32, dx: &mut [f32], grads: &mut Grads, hs: &mut HeadScratch) -> f64 {
        let d = self.config.hidden_size;
        let vocab = self.config.vocab_size;
        let w = MatRef::new(self.params.head(), vocab, d);
        let norm = self.params.norm.get();
        dx.fill(0.0);
        let mut loss = 0.0;
        let rows = self.packed.target_rows.chunks(HEAD_CHUNK).zip(self.packed.targets.chunks(HEAD_CHUNK));
        for (rows, targets) in rows {
            let n = rows.len();
            let xr = sized(&mut hs.x, n * d);
            for (dst, &r) in xr.chunks_exact_mut(d).zip(rows) {
                dst.copy_from_slice(&x[r * d..][..d]);
            }
            ops::rms_norm(&hs.x, norm, self.eps(), sized(&mut hs.h, n * d), sized(&mut hs.rstd, n));
            let logits = sized(&mut hs.logits, n * vocab);
            matmul(MatMut::new(logits, n, vocab), MatRef::new(&hs.h, n, d), w.t(), 1.0, false, true);
            let losses: Vec<f64> = logits
                .par_chunks_mut(vocab)
                .zip(targets.par_iter())
                .map(|(row, &target)| {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let picked = row[target as usize] - max;
                    let mut sum = 0.0;
                    for z in row.iter_mut() {
                        *z = (*z - max).exp();
                        sum += *z;
                    }
                    // The softmax minus the one-hot target, weighted: the logits' gradient.
                    let scale = weight / sum;
                    for z in row.iter_mut() {
                        *z *= scale;
                    }
                    row[target as usize] -= weight;
                    f64::from(sum.ln() - picked) * f64::from(weight)
                })
                .collect();
            // Summed in row order: the loss does not depend on how rayon split the rows.
            loss += losses.iter().sum::<f64>();
            let dlogits = MatRef::new(&hs.logits, n, vocab);
            matmul(MatMut::new(sized(&mut hs.dh, n * d), n, d), dlogits, w, 1.0, false, true);
            if let Some(gw) = grads.head() {
                matmul(MatMut::new(gw, vocab, d), dlogits.t(), MatRef::new(&hs.h, n, d), 1.0, true, true);
            }
            let dxr = zeroed(&mut hs.dx, n * d);
            ops::rms_norm_backward(&hs.dh, &hs.x, &hs.rstd, norm, dxr, grads.final_norm());
            for (src, &r) in hs.dx.chunks_exact(d).zip(rows) {
                for (g, s) in dx[r * d..][..d].iter_mut().zip(src) {
                    *g += s;
                }
            }
        }
        loss
    }
}
