//! The written-out training pass: the decoder layer's forward and backward by hand, on gemm and
//! row kernels, over packed sequences, into buffers that live as long as the trainer.
//!
//! The autograd path (`batch.rs`) builds a graph of one candle tensor per operation, pads every
//! sequence of a micro-batch to the longest, and lets candle's matmul backward compute the
//! gradient of both operands. This pass instead:
//! * packs the micro-batch's sequences end to end (attention stays inside each, `attention.rs`),
//!   so no work is spent on padding;
//! * keeps, per layer, only what the backward pass reads (the norms' inputs and inverse RMS, `q`,
//!   `k`, `v`, the attention output and its log-sum-exp, the MLP's gate and up projections, each
//!   adapter's `x Aᵀ`), about 7k floats per token per layer for SmolLM2, and recomputes the cheap
//!   rest (SwiGLU's product, attention probabilities, dropout masks from the generator's state);
//! * computes a frozen weight's product with the output gradient only, never its gradient;
//! * writes every product into reused buffers (`gemm.rs`), accumulating where a sum is wanted,
//!   so a step allocates nothing once the first has sized the buffers.
//!
//! The autograd path stays as the reference: `tests.rs` holds this pass's loss and every
//! parameter's gradient to it (full fine-tuning, tied and untied; LoRA with and without dropout;
//! every family's optional parts).
//!
//! By file: `params.rs` (parameters borrowed for a pass, the gradients' layout), `pack.rs` (packed
//! micro-batches), `pass.rs` (a projection with its adapter, the output head and loss), `layer.rs`
//! (one decoder layer forward and backward), `attention.rs`, `ops.rs` (row kernels), `adamw.rs`.

mod adamw;
mod attention;
mod layer;
mod ops;
mod pack;
mod params;
mod pass;
#[cfg(test)]
mod tests;

#[cfg(test)]
use candle_core::{backprop::GradStore, Tensor};
use candle_core::{DType, Device, Var};
use rand::rngs::StdRng;

#[cfg(test)]
use super::batch::Accumulated;
use super::TrainOptions;
use crate::error::{EngineError, Result};
use crate::model::DecoderModel;
use crate::text::template::TokenizedExample;
use adamw::{AdamSettings, AdamW};
use attention::Heads;
use ops::sized;
use pack::{packs, Packed};
use params::{Grads, Params};
use pass::Pass;

/// What the backward pass of one adapter reads: `dropout(x) Aᵀ` and the dropout generator's
/// state before its mask was drawn.
#[derive(Debug, Default)]
pub(super) struct AdapterActs {
    xa: Vec<f32>,
    rng: Option<StdRng>,
}

/// What the backward pass of one layer reads (the optional parts' buffers stay empty in a
/// family without them).
#[derive(Debug, Default)]
pub(super) struct LayerActs {
    rstd1: Vec<f32>,
    h1: Vec<f32>,
    /// Queries and keys before their per-head norms, and the norms' inverse RMS per head.
    q_raw: Vec<f32>,
    k_raw: Vec<f32>,
    rstd_q: Vec<f32>,
    rstd_k: Vec<f32>,
    /// Queries and keys as attention saw them (normed, rotated).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
    /// Attention's output projection before its norm, and that norm's inverse RMS.
    o_proj: Vec<f32>,
    rstd_o: Vec<f32>,
    x2: Vec<f32>,
    rstd2: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// The MLP's output before its norm, and that norm's inverse RMS.
    down: Vec<f32>,
    rstd_down: Vec<f32>,
    adapters: [AdapterActs; 7],
}

/// Scratch of the adapters' passes.
#[derive(Debug, Default)]
pub(super) struct AdapterScratch {
    mask: Vec<f32>,
    dropped: Vec<f32>,
    dxa: Vec<f32>,
    dx: Vec<f32>,
}

/// Scratch of the output head.
#[derive(Debug, Default)]
pub(super) struct HeadScratch {
    x: Vec<f32>,
    h: Vec<f32>,
    rstd: Vec<f32>,
    logits: Vec<f32>,
    dh: Vec<f32>,
    dx: Vec<f32>,
}

/// Every buffer of a pass, sized by the first micro-batch that needs it and reused after.
#[derive(Debug, Default)]
struct Workspace {
    /// The residual stream entering each layer, and leaving the last.
    xs: Vec<Vec<f32>>,
    layers: Vec<LayerActs>,
    /// Gradients of the residual stream (out, in), swapped layer by layer.
    dx: [Vec<f32>; 2],
    scratch: Scratch,
}

/// Buffers that one layer's pass uses and the next overwrites.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    act: Vec<f32>,
    dx2: Vec<f32>,
    dh: Vec<f32>,
    dattn: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    /// Gradients of queries and keys before their norms.
    dq_raw: Vec<f32>,
    dk_raw: Vec<f32>,
    /// Gradient of a normed output's input.
    dpost: Vec<f32>,
    dv: Vec<f32>,
    dact: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
    adapter: AdapterScratch,
    head: HeadScratch,
    attention: attention::Scratch,
}

/// The written-out trainer of one model: its buffers, gradients and optimiser state, kept
/// across steps.
#[derive(Debug)]
pub(crate) struct FusedTrainer {
    ws: Workspace,
    grads: Grads,
    adam: AdamW,
}

/// What one step computed on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepStats {
    /// The step's mean loss over its target tokens.
    pub loss: f64,
    /// Target tokens.
    pub targets: usize,
    /// Input tokens (no padding).
    pub tokens: usize,
}

impl FusedTrainer {
    /// A trainer for `model`'s trainable parameters `vars` (as [`DecoderModel::trainable_vars`]
    /// lists them), or `None` when this pass does not cover the model (parameters not `f32`).
    pub fn new(model: &DecoderModel, vars: &[Var], options: &TrainOptions) -> Option<Self> {
        if model.dtype != DType::F32 || !matches!(model.device, Device::Cpu) {
            return None;
        }
        let layers = model.layers.len();
        let mut ws = Workspace { xs: vec![Vec::new(); layers + 1], ..Workspace::default() };
        ws.layers.resize_with(layers, LayerActs::default);
        let settings = AdamSettings { beta1: options.beta1, beta2: options.beta2, eps: options.eps };
        Some(Self { ws, grads: Grads::new(model, vars), adam: AdamW::new(vars, settings) })
    }

    /// One optimiser step on `examples`: the gradients of their mean loss over target tokens
    /// (summed over packed micro-batches of at most `budget` tokens), clipped to a global norm
    /// of `grad_clip` (when above 0), then AdamW at `lr` with `weight_decay` on matrices.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        model: &DecoderModel,
        vars: &[Var],
        examples: &[&TokenizedExample],
        budget: usize,
        grad_clip: f64,
        lr: f64,
        weight_decay: f64,
    ) -> Result<StepStats> {
        let stats = self.gradients(model, examples, budget)?;
        adamw::clip(&mut self.grads.bufs, grad_clip);
        self.adam.step(vars, &self.grads.bufs, lr, weight_decay)?;
        Ok(stats)
    }

    /// The gradients [`FusedTrainer::step`] steps on, as a candle [`GradStore`] of `vars`: what
    /// [`super::batch::accumulate_gradients`] computes, by this pass.
    #[cfg(test)]
    pub fn accumulate(
        &mut self,
        model: &DecoderModel,
        vars: &[Var],
        examples: &[&TokenizedExample],
        budget: usize,
    ) -> Result<Accumulated> {
        let stats = self.gradients(model, examples, budget)?;
        let mut grads = GradStore::default();
        for (var, g) in vars.iter().zip(&self.grads.bufs) {
            grads.insert(var, Tensor::from_slice(g, var.shape(), &Device::Cpu)?);
        }
        Ok(Accumulated { grads, loss: stats.loss, targets: stats.targets, tokens: stats.tokens })
    }

    /// Fills `self.grads` with the gradients of the mean loss over `examples`' target tokens.
    fn gradients(&mut self, model: &DecoderModel, examples: &[&TokenizedExample], budget: usize) -> Result<StepStats> {
        let total: usize = examples.iter().map(|e| e.predicted_targets()).sum();
        if total == 0 {
            return Err(EngineError::invalid("batch has no target token"));
        }
        for g in &mut self.grads.bufs {
            g.fill(0.0);
        }
        let (mut loss, mut tokens) = (0.0, 0);
        for part in packs(examples, budget.max(1)) {
            let packed = Packed::new(&part, &model.config)?;
            tokens += packed.rows();
            loss += self.pass(model, &packed, 1.0 / total as f32)?;
        }
        Ok(StepStats { loss, targets: total, tokens })
    }

    /// Forward and backward over one packed micro-batch; gradients added to `self.grads`, each
    /// target's loss weighted by `weight`. Returns the weighted loss.
    fn pass(&mut self, model: &DecoderModel, packed: &Packed, weight: f32) -> Result<f64> {
        let params = Params::hold(model)?;
        let c = &model.config;
        let heads = |l: usize| Heads {
            heads: c.num_attention_heads,
            kv_heads: c.kv_heads(),
            head_dim: c.head_dim(),
            scale: c.query_scale(),
            window: c.layer_attention(l).window,
        };
        let layers = model.layers.len();
        let pass = Pass {
            params: &params,
            config: c,
            lora: model.lora.as_ref().map(|l| &l.config),
            ropes: (0..layers).map(|l| model.rope_for(l)).collect(),
            packed,
            heads: (0..layers).map(heads).collect(),
            activation: c.activation()?,
        };
        let (t, d, scale) = (packed.rows(), c.hidden_size, c.embed_scale());
        let Workspace { xs, layers, dx, scratch } = &mut self.ws;
        let embed = params.embed.get();
        let x0 = sized(&mut xs[0], t * d);
        for (row, &id) in x0.chunks_exact_mut(d).zip(&packed.ids) {
            for (x, e) in row.iter_mut().zip(&embed[id as usize * d..][..d]) {
                *x = e * scale;
            }
        }
        let mut rng = model.dropout_state();
        for l in 0..model.layers.len() {
            let (before, after) = xs.split_at_mut(l + 1);
            pass.layer_forward(l, &before[l], &mut after[0], &mut layers[l], scratch, &mut rng);
        }
        model.set_dropout_state(rng);

        let [mut dout, mut din] = std::mem::take(dx);
        sized(&mut dout, t * d);
        let loss = pass.head(&xs[model.layers.len()], weight, &mut dout, &mut self.grads, &mut scratch.head);
        for l in (0..model.layers.len()).rev() {
            let need_dx = l > 0 || model.lora.is_none();
            pass.layer_backward(l, &xs[l], &layers[l], &dout, &mut din, need_dx, scratch, &mut self.grads);
            std::mem::swap(&mut dout, &mut din);
        }
        if let Some(g) = self.grads.embed() {
            for (row, &id) in dout.chunks_exact(d).zip(&packed.ids) {
                for (g, x) in g[id as usize * d..][..d].iter_mut().zip(row) {
                    *g += x * scale;
                }
            }
        }
        *dx = [dout, din];
        Ok(loss)
    }
}
