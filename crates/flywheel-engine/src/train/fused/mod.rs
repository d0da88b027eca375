//! The written-out training pass: the Llama block's forward and backward by hand, on gemm and
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
//! parameter's gradient to it (full fine-tuning, tied and untied; LoRA with and without dropout).

mod adamw;
mod attention;
mod ops;
#[cfg(test)]
mod tests;

use std::ops::Range;

#[cfg(test)]
use candle_core::{backprop::GradStore, Tensor};
use candle_core::{CpuStorage, DType, Device, Storage, StorageRef, Var};
use rand::rngs::StdRng;
use rayon::prelude::*;

#[cfg(test)]
use super::batch::Accumulated;
use super::TrainOptions;
use crate::error::{EngineError, Result};
use crate::gemm::{matmul, MatMut, MatRef};
use crate::model::config::LlamaConfig;
use crate::model::lora::{LoraConfig, Proj};
use crate::model::LlamaModel;
use crate::text::template::TokenizedExample;
use adamw::{AdamSettings, AdamW};
use attention::Heads;
use ops::{sized, zeroed};

/// Target rows whose logits are computed at once: `HEAD_CHUNK × vocab` floats of scratch (50 MB
/// for SmolLM2); fewer, larger chunks mean fewer passes over the output matrix's gradient.
const HEAD_CHUNK: usize = 256;

/// A parameter's `f32` elements, borrowed from its candle storage for one pass.
struct Held<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
}

impl<'a> Held<'a> {
    fn new(var: &'a Var, what: &str) -> Result<Self> {
        let (guard, layout) = var.as_tensor().storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(EngineError::invalid(format!("{what}: the parameter is not contiguous")));
        };
        if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
            return Err(EngineError::invalid(format!("{what}: the written-out pass needs f32 parameters on the CPU")));
        }
        Ok(Self { guard, start, len: end - start })
    }

    fn get(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => unreachable!("checked in Held::new"),
        }
    }
}

/// One layer's parameters.
struct LayerParams<'a> {
    proj: [Held<'a>; 7],
    input_norm: Held<'a>,
    post_norm: Held<'a>,
    /// `(A, B)` of each projection's adapter.
    lora: [Option<(Held<'a>, Held<'a>)>; 7],
}

/// Every parameter of the model, borrowed for one pass.
struct Params<'a> {
    embed: Held<'a>,
    layers: Vec<LayerParams<'a>>,
    norm: Held<'a>,
    /// The untied output projection.
    head: Option<Held<'a>>,
}

impl<'a> Params<'a> {
    fn hold(model: &'a LlamaModel) -> Result<Self> {
        let layers = model
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let name = |p: Proj| format!("layer {l} {}", p.module());
                let proj = Proj::ALL.map(|p| Held::new(layer.weight(p), &name(p)));
                let lora = Proj::ALL.map(|p| {
                    model
                        .lora
                        .as_ref()
                        .and_then(|lora| lora.adapter(l, p))
                        .map(|ad| Ok::<_, EngineError>((Held::new(&ad.a, &name(p))?, Held::new(&ad.b, &name(p))?)))
                });
                Ok(LayerParams {
                    proj: collect7(proj)?,
                    input_norm: Held::new(&layer.input_norm, "input_layernorm")?,
                    post_norm: Held::new(&layer.post_norm, "post_attention_layernorm")?,
                    lora: collect7(lora.map(Option::transpose))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed: Held::new(&model.embed, "embed_tokens")?,
            layers,
            norm: Held::new(&model.norm, "norm")?,
            head: model.lm_head.as_ref().map(|v| Held::new(v, "lm_head")).transpose()?,
        })
    }

    fn head(&self) -> &[f32] {
        self.head.as_ref().unwrap_or(&self.embed).get()
    }
}

/// Seven results into an array, or the first error.
fn collect7<T>(items: [Result<T>; 7]) -> Result<[T; 7]> {
    let mut out = Vec::with_capacity(7);
    for item in items {
        out.push(item?);
    }
    Ok(out.try_into().unwrap_or_else(|_| unreachable!("seven items")))
}

/// A micro-batch's sequences laid end to end.
#[derive(Debug)]
pub(crate) struct Packed {
    ids: Vec<u32>,
    positions: Vec<u32>,
    seqs: Vec<Range<usize>>,
    /// Rows whose next token is a target, and those targets.
    target_rows: Vec<usize>,
    targets: Vec<u32>,
}

impl Packed {
    /// Packs `examples`; row `t` of an example predicts its token `t + 1`.
    fn new(examples: &[&TokenizedExample], config: &LlamaConfig) -> Result<Self> {
        let mut p = Packed {
            ids: Vec::new(),
            positions: Vec::new(),
            seqs: Vec::new(),
            target_rows: Vec::new(),
            targets: Vec::new(),
        };
        for ex in examples {
            let n = ex.ids.len().saturating_sub(1);
            if n > config.max_position_embeddings {
                return Err(EngineError::invalid(format!(
                    "a training example of {n} tokens is longer than max_position_embeddings = {}",
                    config.max_position_embeddings
                )));
            }
            if let Some(&id) = ex.ids.iter().find(|&&id| id as usize >= config.vocab_size) {
                return Err(EngineError::invalid(format!(
                    "token id {id} is outside the vocabulary ({})",
                    config.vocab_size
                )));
            }
            let start = p.ids.len();
            for i in 0..n {
                if ex.target[i + 1] {
                    p.target_rows.push(start + i);
                    p.targets.push(ex.ids[i + 1]);
                }
            }
            p.ids.extend_from_slice(&ex.ids[..n]);
            p.positions.extend(0..n as u32);
            p.seqs.push(start..start + n);
        }
        Ok(p)
    }

    fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// Cuts `examples` into runs of at most `budget` tokens (at least one example each), in order.
fn packs<'a>(examples: &[&'a TokenizedExample], budget: usize) -> Vec<Vec<&'a TokenizedExample>> {
    let mut out: Vec<Vec<&TokenizedExample>> = Vec::new();
    let mut current: Vec<&TokenizedExample> = Vec::new();
    let mut used = 0;
    for &ex in examples {
        let n = ex.ids.len().saturating_sub(1);
        if !current.is_empty() && used + n > budget {
            out.push(std::mem::take(&mut current));
            used = 0;
        }
        used += n;
        current.push(ex);
    }
    out.extend((!current.is_empty()).then_some(current));
    out
}

/// What the backward pass of one adapter reads: `dropout(x) Aᵀ` and the dropout generator's
/// state before its mask was drawn.
#[derive(Debug, Default)]
struct AdapterActs {
    xa: Vec<f32>,
    rng: Option<StdRng>,
}

/// What the backward pass of one layer reads.
#[derive(Debug, Default)]
struct LayerActs {
    rstd1: Vec<f32>,
    h1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
    x2: Vec<f32>,
    rstd2: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    adapters: [AdapterActs; 7],
}

/// Scratch of the adapters' passes.
#[derive(Debug, Default)]
struct AdapterScratch {
    mask: Vec<f32>,
    dropped: Vec<f32>,
    dxa: Vec<f32>,
    dx: Vec<f32>,
}

/// Scratch of the output head.
#[derive(Debug, Default)]
struct HeadScratch {
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
struct Scratch {
    act: Vec<f32>,
    dx2: Vec<f32>,
    dh: Vec<f32>,
    dattn: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dact: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
    adapter: AdapterScratch,
    head: HeadScratch,
    attention: attention::Scratch,
}

/// Where each trainable parameter's gradient lives in [`Grads::bufs`].
#[derive(Debug)]
enum GradLayout {
    /// Every parameter, in [`crate::model::parameter_shapes`] order.
    Full { layers: usize, tied: bool },
    /// Adapters only: `slots[layer][proj]` is the index of `A` (`B` follows).
    Lora { slots: Vec<[Option<usize>; 7]> },
}

/// The gradients of the trainable parameters, in the order of
/// [`LlamaModel::trainable_vars`].
#[derive(Debug)]
struct Grads {
    bufs: Vec<Vec<f32>>,
    layout: GradLayout,
}

impl Grads {
    fn new(model: &LlamaModel, vars: &[Var]) -> Self {
        let layout = match &model.lora {
            None => GradLayout::Full { layers: model.layers.len(), tied: model.lm_head.is_none() },
            Some(lora) => {
                let mut next = 0;
                let slots = (0..model.layers.len())
                    .map(|l| {
                        Proj::ALL.map(|p| {
                            lora.adapter(l, p).map(|_| {
                                next += 2;
                                next - 2
                            })
                        })
                    })
                    .collect();
                GradLayout::Lora { slots }
            }
        };
        Self { bufs: vars.iter().map(|v| vec![0.0; v.elem_count()]).collect(), layout }
    }

    fn full(&mut self, index: impl FnOnce(usize) -> usize) -> Option<&mut [f32]> {
        match self.layout {
            GradLayout::Full { layers, .. } => Some(&mut self.bufs[index(layers)]),
            GradLayout::Lora { .. } => None,
        }
    }

    /// The gradient of projection `p`'s weight in layer `l` (full fine-tuning).
    fn weight(&mut self, l: usize, p: Proj) -> Option<&mut [f32]> {
        self.full(|_| 1 + 9 * l + p as usize)
    }

    /// The gradient of layer `l`'s input (`0`) or post-attention (`1`) norm weight.
    fn layer_norm(&mut self, l: usize, which: usize) -> Option<&mut [f32]> {
        self.full(|_| 1 + 9 * l + 7 + which)
    }

    fn final_norm(&mut self) -> Option<&mut [f32]> {
        self.full(|layers| 1 + 9 * layers)
    }

    fn embed(&mut self) -> Option<&mut [f32]> {
        self.full(|_| 0)
    }

    fn head(&mut self) -> Option<&mut [f32]> {
        let tied = matches!(self.layout, GradLayout::Full { tied: true, .. });
        self.full(|layers| if tied { 0 } else { 2 + 9 * layers })
    }

    /// The gradients of `A` and `B` of projection `p`'s adapter in layer `l`.
    fn adapter(&mut self, l: usize, p: Proj) -> Option<(&mut [f32], &mut [f32])> {
        let GradLayout::Lora { slots } = &self.layout else { return None };
        let i = slots[l][p as usize]?;
        let (a, b) = self.bufs[i..].split_at_mut(1);
        Some((&mut a[0], &mut b[0]))
    }
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
    /// A trainer for `model`'s trainable parameters `vars` (as [`LlamaModel::trainable_vars`]
    /// lists them), or `None` when this pass does not cover the model (parameters not `f32`).
    pub fn new(model: &LlamaModel, vars: &[Var], options: &TrainOptions) -> Option<Self> {
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
        model: &LlamaModel,
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
        model: &LlamaModel,
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
    fn gradients(&mut self, model: &LlamaModel, examples: &[&TokenizedExample], budget: usize) -> Result<StepStats> {
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
    fn pass(&mut self, model: &LlamaModel, packed: &Packed, weight: f32) -> Result<f64> {
        let params = Params::hold(model)?;
        let c = &model.config;
        let pass = Pass {
            params: &params,
            config: c,
            lora: model.lora.as_ref().map(|l| &l.config),
            rope: &model.rope,
            packed,
            heads: Heads { heads: c.num_attention_heads, kv_heads: c.kv_heads(), head_dim: c.head_dim() },
        };
        let (t, d) = (packed.rows(), c.hidden_size);
        let Workspace { xs, layers, dx, scratch } = &mut self.ws;
        let embed = params.embed.get();
        let x0 = sized(&mut xs[0], t * d);
        for (row, &id) in x0.chunks_exact_mut(d).zip(&packed.ids) {
            row.copy_from_slice(&embed[id as usize * d..][..d]);
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
                    *g += x;
                }
            }
        }
        *dx = [dout, din];
        Ok(loss)
    }
}

/// One pass's read-only inputs.
struct Pass<'a> {
    params: &'a Params<'a>,
    config: &'a LlamaConfig,
    lora: Option<&'a LoraConfig>,
    rope: &'a crate::model::rope::RopeTables,
    packed: &'a Packed,
    heads: Heads,
}

impl Pass<'_> {
    /// `(out, in)` of projection `p`.
    fn dims(&self, p: Proj) -> (usize, usize) {
        let c = self.config;
        let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        match p {
            Proj::Q => (c.num_attention_heads * hd, d),
            Proj::K | Proj::V => (c.kv_heads() * hd, d),
            Proj::O => (d, c.num_attention_heads * hd),
            Proj::Gate | Proj::Up => (f, d),
            Proj::Down => (d, f),
        }
    }

    fn eps(&self) -> f32 {
        self.config.rms_norm_eps as f32
    }

    /// `out (=|+=) x Wᵀ + scale · dropout(x) Aᵀ Bᵀ` for projection `p` of layer `l`.
    #[allow(clippy::too_many_arguments)]
    fn project(
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
    fn project_backward(
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

    /// Decoder layer `l` from `x` to `out`, keeping what its backward pass reads in `acts`.
    fn layer_forward(
        &self,
        l: usize,
        x: &[f32],
        out: &mut Vec<f32>,
        acts: &mut LayerActs,
        ws: &mut Scratch,
        rng: &mut Option<StdRng>,
    ) {
        let c = self.config;
        let (t, d, f) = (self.packed.rows(), c.hidden_size, c.intermediate_size);
        let (qw, kw) = (self.dims(Proj::Q).0, self.dims(Proj::K).0);
        let layer = &self.params.layers[l];
        let LayerActs { rstd1, h1, q, k, v, o, lse, x2, rstd2, h2, gate, up, adapters } = acts;
        let [aq, ak, av, ao, ag, au, ad] = adapters;
        let sc = &mut ws.adapter;
        ops::rms_norm(x, layer.input_norm.get(), self.eps(), sized(h1, t * d), sized(rstd1, t));
        self.project(l, Proj::Q, h1, sized(q, t * qw), false, aq, sc, rng);
        self.project(l, Proj::K, h1, sized(k, t * kw), false, ak, sc, rng);
        self.project(l, Proj::V, h1, sized(v, t * kw), false, av, sc, rng);
        ops::rope(q, qw, &self.packed.positions, self.rope, false);
        ops::rope(k, kw, &self.packed.positions, self.rope, false);
        let (o, lse) = (sized(o, t * qw), sized(lse, t * self.heads.heads));
        attention::forward(self.heads, q, k, v, &self.packed.seqs, o, lse, &mut ws.attention);
        x2.clear();
        x2.extend_from_slice(x);
        self.project(l, Proj::O, o, x2, true, ao, sc, rng);
        ops::rms_norm(x2, layer.post_norm.get(), self.eps(), sized(h2, t * d), sized(rstd2, t));
        self.project(l, Proj::Gate, h2, sized(gate, t * f), false, ag, sc, rng);
        self.project(l, Proj::Up, h2, sized(up, t * f), false, au, sc, rng);
        ops::swiglu(gate, up, sized(&mut ws.act, t * f));
        out.clear();
        out.extend_from_slice(x2);
        self.project(l, Proj::Down, &ws.act, out, true, ad, sc, rng);
    }

    /// The backward pass of layer `l` (input `x`): from `dout`, the gradient of its output, to
    /// `dx` (when `need_dx`; LoRA's first layer has no use for it), adding parameter gradients.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        l: usize,
        x: &[f32],
        acts: &LayerActs,
        dout: &[f32],
        dx: &mut Vec<f32>,
        need_dx: bool,
        ws: &mut Scratch,
        grads: &mut Grads,
    ) {
        let c = self.config;
        let (t, d, f) = (self.packed.rows(), c.hidden_size, c.intermediate_size);
        let (qw, kw) = (self.dims(Proj::Q).0, self.dims(Proj::K).0);
        let layer = &self.params.layers[l];
        let [aq, ak, av, ao, ag, au, ad] = &acts.adapters;
        let sc = &mut ws.adapter;

        // MLP: out = x2 + down(silu(gate) · up), gate and up of h2 = norm(x2).
        let dx2 = &mut ws.dx2;
        dx2.clear();
        dx2.extend_from_slice(dout);
        ops::swiglu(&acts.gate, &acts.up, sized(&mut ws.act, t * f));
        let dact = sized(&mut ws.dact, t * f);
        self.project_backward(l, Proj::Down, dout, &ws.act, Some((dact, false)), ad, sc, grads);
        let (dgate, dup) = (sized(&mut ws.dgate, t * f), sized(&mut ws.dup, t * f));
        ops::swiglu_backward(&ws.dact, &acts.gate, &acts.up, dgate, dup);
        let dh = sized(&mut ws.dh, t * d);
        self.project_backward(l, Proj::Gate, &ws.dgate, &acts.h2, Some((dh, false)), ag, sc, grads);
        self.project_backward(l, Proj::Up, &ws.dup, &acts.h2, Some((&mut ws.dh, true)), au, sc, grads);
        let w2 = layer.post_norm.get();
        ops::rms_norm_backward(&ws.dh, &acts.x2, &acts.rstd2, w2, dx2, grads.layer_norm(l, 1));

        // Attention: x2 = x + o_proj(attention(rope(q), rope(k), v)), q, k, v of h1 = norm(x).
        let dattn = sized(&mut ws.dattn, t * qw);
        self.project_backward(l, Proj::O, dx2, &acts.o, Some((dattn, false)), ao, sc, grads);
        let (dq, dk, dv) = (sized(&mut ws.dq, t * qw), sized(&mut ws.dk, t * kw), sized(&mut ws.dv, t * kw));
        let saved = attention::Saved { q: &acts.q, k: &acts.k, v: &acts.v, o: &acts.o, lse: &acts.lse };
        attention::backward(self.heads, saved, &ws.dattn, &self.packed.seqs, dq, dk, dv, &mut ws.attention);
        ops::rope(dq, qw, &self.packed.positions, self.rope, true);
        ops::rope(dk, kw, &self.packed.positions, self.rope, true);
        let dh = sized(&mut ws.dh, t * d);
        self.project_backward(l, Proj::Q, &ws.dq, &acts.h1, need_dx.then_some((dh, false)), aq, sc, grads);
        self.project_backward(l, Proj::K, &ws.dk, &acts.h1, need_dx.then_some((&mut ws.dh, true)), ak, sc, grads);
        self.project_backward(l, Proj::V, &ws.dv, &acts.h1, need_dx.then_some((&mut ws.dh, true)), av, sc, grads);
        dx.clear();
        dx.extend_from_slice(&ws.dx2);
        if need_dx {
            let w1 = layer.input_norm.get();
            ops::rms_norm_backward(&ws.dh, x, &acts.rstd1, w1, dx, grads.layer_norm(l, 0));
        }
    }

    /// Final norm, output projection and cross-entropy on the target rows of `x`, each target
    /// weighted by `weight`; writes the gradient of `x` into `dx` (zeros elsewhere) and returns
    /// the weighted loss.
    fn head(&self, x: &[f32], weight: f32, dx: &mut [f32], grads: &mut Grads, hs: &mut HeadScratch) -> f64 {
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
