//! The fast no-grad forward pass of the sampler: packed rows, per-sequence KV caches.
//!
//! Sampling runs this, not the differentiable graph in `model/forward.rs`: no autograd bookkeeping, the
//! query/key/value and gate/up projections fused into one matrix product each, and the new tokens
//! of all sequences packed into one `(rows, hidden)` matrix whatever their lengths (a prompt's
//! prefill and a one-token decode step go through the same code). Weight matrices are held as
//! Q8_0 by default (`quant.rs`: decoding is bound by the bytes of weights read per step) or as
//! `f32` on candle's gemm ([`WeightFormat`]); the small per-row work (RMSNorm, RoPE, attention
//! over the sequence's own cache, SwiGLU) is plain Rust on `f32` slices. A test checks that the
//! `f32` pass gives the training pass's logits, another that Q8_0 stays close to them.
//!
//! Reproducibility: every row is computed the same way whatever else is in the batch. Attention
//! reads only the row's own cache; the Q8_0 kernel runs the same instructions for a row whatever
//! the row count. gemm (0.19) computes a row the same way for any row count `m` except in two
//! dispatch paths: a single-row `gemv` (`m = 1`) and a "horizontal" kernel for tiny products
//! (`m * n <= 256`), which sum in a different order. `kernels::linear` zero-pads its input out of
//! both. Hence the sampler's output does not depend on how requests are batched.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::model::arch::Activation;
use crate::model::lora::Proj;
use crate::model::rope::RopeTables;
use crate::model::DecoderModel;
use crate::sample::attention::{attend_rows, DecodeRow};
use crate::sample::kernels::{add_assign, attend, gated, rms_norm_in_place, rms_norm_rows, HeadShape};
use crate::sample::kv_cache::KvCache;
use crate::sample::quant::{WeightFormat, Weights};

/// Fewest sequences per thread when a batch is split across threads.
const MIN_SPLIT_SEQUENCES: usize = 16;

/// One layer's weights, fused where that saves a product; matrices in the sampler's
/// [`WeightFormat`], norms and biases in `f32`; the family's optional parts (`model/arch.rs`)
/// where it has them.
struct InferLayer {
    attn_norm: Vec<f32>,
    /// `[q; k; v]` projections stacked: `(q_width + 2 kv_width, hidden)`.
    wqkv: Weights,
    /// `[q; k; v]` biases stacked (Qwen2).
    qkv_bias: Option<Vec<f32>>,
    /// Per-head norms of queries and keys (Qwen3, Gemma 3), `head_dim` wide.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Weights,
    /// The norm of attention's output before the residual add (Gemma).
    attn_post_norm: Option<Vec<f32>>,
    mlp_norm: Vec<f32>,
    /// `[gate; up]` stacked: `(2 ff, hidden)`.
    wgu: Weights,
    wdown: Weights,
    /// The norm of the MLP's output before the residual add (Gemma).
    mlp_post_norm: Option<Vec<f32>>,
    /// Heads, query scale and sliding window of this layer's attention.
    shape: HeadShape,
    /// Whether the layer rotates with the local RoPE tables.
    local_rope: bool,
}

/// The new tokens of one sequence for one [`InferenceModel::step`].
pub(crate) struct StepInput<'a> {
    /// The sequence's cache; the new tokens' keys and values are appended to it.
    pub cache: &'a mut KvCache,
    /// New token ids (at least one).
    pub tokens: &'a [u32],
    /// Their positions (explicit, so any position scheme works).
    pub positions: &'a [u32],
}

/// A frozen snapshot of a [`DecoderModel`] for sampling (matrices in a [`WeightFormat`]). Build one
/// per generation call; it does not follow later training updates.
pub(crate) struct InferenceModel {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ff: usize,
    vocab: usize,
    eps: f32,
    embed: Vec<f32>,
    /// The multiplier of embeddings on the way in (Gemma's `sqrt(hidden)`).
    embed_scale: f32,
    activation: Activation,
    layers: Vec<InferLayer>,
    norm: Vec<f32>,
    lm_head: Weights,
    rope: RopeTables,
    rope_local: Option<RopeTables>,
    /// The SIMD level the per-row kernels are compiled for, detected once.
    arch: pulp::Arch,
}

fn f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?)
}

fn optional_vec(v: Option<&candle_core::Var>) -> Result<Option<Vec<f32>>> {
    v.map(|v| f32_vec(v)).transpose()
}

/// `parts` stacked by rows, in `format`; `precise`: see [`Weights::stacked`].
fn f32_mat(parts: &[&Tensor], format: WeightFormat, precise: bool) -> Result<Weights> {
    let parts: Vec<Tensor> =
        parts.iter().map(|t| t.to_dtype(candle_core::DType::F32)).collect::<candle_core::Result<_>>()?;
    Weights::stacked(&parts, format, precise)
}

impl InferenceModel {
    /// Snapshots `model`'s current weights, its matrices converted to `format`.
    pub fn new(model: &DecoderModel, format: WeightFormat) -> Result<Self> {
        let c = &model.config;
        // LoRA adapters, when attached, are merged into these copies (W + scale * B A). The query,
        // key and value projections get precise activations on the int8 kernel: attention's
        // softmax magnifies their errors (with plain int8 activations there, SmolLM2's greedy
        // answer to "What is the capital of France?" turned from "The capital of France is
        // Paris." to "L'Étoile, la Cité, ...").
        let layers = model
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let w = |p: Proj| model.merged_weight(i, p);
                let qkv_bias = if l.bias.iter().any(Option::is_some) {
                    let mut bias = Vec::new();
                    for p in [Proj::Q, Proj::K, Proj::V] {
                        match l.bias(p) {
                            Some(b) => bias.extend(f32_vec(b)?),
                            None => bias.resize(bias.len() + crate::model::proj_dims(c, p).0, 0.0),
                        }
                    }
                    Some(bias)
                } else {
                    None
                };
                let attention = c.layer_attention(i);
                Ok(InferLayer {
                    attn_norm: f32_vec(&l.attn_norm)?,
                    wqkv: f32_mat(&[&w(Proj::Q)?, &w(Proj::K)?, &w(Proj::V)?], format, true)?,
                    qkv_bias,
                    q_norm: optional_vec(l.q_norm.as_ref())?,
                    k_norm: optional_vec(l.k_norm.as_ref())?,
                    wo: f32_mat(&[&w(Proj::O)?], format, false)?,
                    attn_post_norm: optional_vec(l.attn_post_norm.as_ref())?,
                    mlp_norm: f32_vec(&l.mlp_norm)?,
                    wgu: f32_mat(&[&w(Proj::Gate)?, &w(Proj::Up)?], format, false)?,
                    wdown: f32_mat(&[&w(Proj::Down)?], format, false)?,
                    mlp_post_norm: optional_vec(l.mlp_post_norm.as_ref())?,
                    shape: HeadShape {
                        heads: c.num_attention_heads,
                        kv_heads: c.kv_heads(),
                        head_dim: c.head_dim(),
                        scale: c.query_scale(),
                        window: attention.window,
                    },
                    local_rope: attention.local_rope,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.kv_heads(),
            head_dim: c.head_dim(),
            ff: c.intermediate_size,
            vocab: c.vocab_size,
            eps: c.rms_norm_eps as f32,
            embed: f32_vec(&model.embed)?,
            embed_scale: c.embed_scale(),
            activation: c.activation()?,
            layers,
            norm: f32_vec(&model.norm)?,
            lm_head: f32_mat(&[model.lm_head.as_ref().unwrap_or(&model.embed)], format, false)?,
            rope: model.rope.clone(),
            rope_local: model.rope_local.clone(),
            arch: pulp::Arch::new(),
        })
    }

    /// Number of token ids (the width of a logits row).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// An empty cache shaped for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len(), self.kv_heads * self.head_dim)
    }

    /// Runs the new tokens of every sequence, appends their keys and values to the caches, and
    /// returns the logits of each sequence's last new token: `seqs.len() × vocab`, row-major.
    ///
    /// Large batches are cut into one part per thread, each run start to finish on its own
    /// thread: for small models that beats splitting every matrix product across threads (gemm's
    /// per-product threading costs more than it gains at these sizes). Rows are independent, so the
    /// split changes no result.
    pub fn step(&self, seqs: &mut [StepInput<'_>]) -> Result<Vec<f32>> {
        if rayon::current_thread_index().is_none() {
            // Run the step on a pool thread: its many small parallel products then fork inside
            // the pool, instead of each one queueing work from outside and sleeping until done.
            return rayon::scope(|_| self.step(seqs));
        }
        let threads = rayon::current_num_threads();
        if threads < 2 || seqs.len() < 2 * MIN_SPLIT_SEQUENCES {
            return self.step_part(seqs);
        }
        let part = seqs.len().div_ceil(threads).max(MIN_SPLIT_SEQUENCES);
        let parts: Vec<Result<Vec<f32>>> = seqs.par_chunks_mut(part).map(|p| self.step_part(p)).collect();
        let mut logits = Vec::with_capacity(seqs.len() * self.vocab);
        for p in parts {
            logits.extend(p?);
        }
        Ok(logits)
    }

    /// [`InferenceModel::step`] on one part of the batch.
    fn step_part(&self, seqs: &mut [StepInput<'_>]) -> Result<Vec<f32>> {
        let d = self.hidden;
        let mut rows = 0;
        for s in seqs.iter() {
            if s.tokens.is_empty() || s.tokens.len() != s.positions.len() {
                return Err(EngineError::invalid(
                    "step: every sequence needs as many positions as (at least one) tokens",
                ));
            }
            if let Some(&p) = s.positions.iter().find(|&&p| p as usize >= self.rope.max_positions) {
                return Err(EngineError::invalid(format!(
                    "position {p} is beyond max_position_embeddings = {}",
                    self.rope.max_positions
                )));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= self.vocab) {
                return Err(EngineError::invalid(format!("token id {t} is outside the vocabulary ({})", self.vocab)));
            }
            rows += s.tokens.len();
        }
        let mut x = Vec::with_capacity(rows * d);
        for s in seqs.iter() {
            for &t in s.tokens {
                x.extend(self.embed[t as usize * d..][..d].iter().map(|e| e * self.embed_scale));
            }
        }
        let (qw, kvw) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let width = qw + 2 * kvw;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm_rows(&x, &layer.attn_norm, self.eps);
            let mut qkv = layer.wqkv.matmul(&h, rows)?;
            if let Some(bias) = &layer.qkv_bias {
                for row in qkv.chunks_exact_mut(width) {
                    add_assign(row, bias);
                }
            }
            let mut attn = vec![0f32; rows * qw];
            // Per-sequence work (RoPE, cache append, attention) touches only that sequence's rows
            // and cache: run sequences in parallel.
            let mut jobs = Vec::with_capacity(seqs.len());
            let (mut qkv_rest, mut attn_rest) = (qkv.as_mut_slice(), attn.as_mut_slice());
            for s in seqs.iter_mut() {
                let n = s.tokens.len();
                let (block, rest) = std::mem::take(&mut qkv_rest).split_at_mut(n * width);
                let (out, rest_out) = std::mem::take(&mut attn_rest).split_at_mut(n * qw);
                (qkv_rest, attn_rest) = (rest, rest_out);
                jobs.push((s, block, out));
            }
            let job = |(seq, block, out): &mut (&mut StepInput<'_>, &mut [f32], &mut [f32])| {
                self.arch.dispatch(SequenceAttention { model: self, seq, layer: li, block, out });
            };
            if rows == jobs.len() {
                // Decode rows only: RoPE and the cache append are too little work to fork for.
                jobs.iter_mut().for_each(job);
            } else {
                jobs.par_iter_mut().for_each(job);
            }
            // Sequences with one new row attend together (`attention.rs`): a cached level they
            // share is read once for all of them, in one part per thread.
            let mut decode: Vec<DecodeRow<'_>> = jobs
                .iter_mut()
                .filter(|(seq, ..)| seq.tokens.len() == 1)
                .map(|(seq, block, out)| DecodeRow { q: &block[..qw], cache: &*seq.cache, out })
                .collect();
            let part = decode.len().div_ceil(rayon::current_num_threads()).max(1);
            decode.par_chunks_mut(part).for_each(|rows| {
                self.arch.dispatch(DecodeAttention { model: self, rows, layer: li });
            });
            let mut o = layer.wo.matmul(&attn, rows)?;
            if let Some(w) = &layer.attn_post_norm {
                rms_norm_in_place(&mut o, w, self.eps);
            }
            add_assign(&mut x, &o);
            let h = rms_norm_rows(&x, &layer.mlp_norm, self.eps);
            let gu = layer.wgu.matmul(&h, rows)?;
            let mut m = layer.wdown.matmul(&gated(&gu, self.ff, self.activation), rows)?;
            if let Some(w) = &layer.mlp_post_norm {
                rms_norm_in_place(&mut m, w, self.eps);
            }
            add_assign(&mut x, &m);
        }
        let mut last = Vec::with_capacity(seqs.len() * d);
        let mut end = 0;
        for s in seqs.iter() {
            end += s.tokens.len();
            last.extend_from_slice(&x[(end - 1) * d..end * d]);
        }
        let normed = rms_norm_rows(&last, &self.norm, self.eps);
        self.lm_head.matmul(&normed, seqs.len())
    }

    /// RoPE, cache append and attention for the new rows of one sequence in layer `layer`.
    /// `block` holds the rows' fused q/k/v projections, `out` receives their attention outputs.
    /// A single new row (a decode step) is only rotated and appended: it attends in
    /// [`attend_rows`], with the other sequences that share its cached levels.
    #[inline(always)]
    fn sequence_attention<S: pulp::Simd>(
        &self,
        simd: S,
        s: &mut StepInput<'_>,
        layer: usize,
        block: &mut [f32],
        out: &mut [f32],
    ) {
        let (qw, kvw) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let width = qw + 2 * kvw;
        let n = s.tokens.len();
        let l = &self.layers[layer];
        let rope = match (&self.rope_local, l.local_rope) {
            (Some(local), true) => local,
            _ => &self.rope,
        };
        let (mut ks, mut vs) = (Vec::with_capacity(n * kvw), Vec::with_capacity(n * kvw));
        for (r, &pos) in block.chunks_exact_mut(width).zip(s.positions) {
            if let Some(w) = &l.q_norm {
                rms_norm_in_place(&mut r[..qw], w, self.eps);
            }
            if let Some(w) = &l.k_norm {
                rms_norm_in_place(&mut r[qw..qw + kvw], w, self.eps);
            }
            for head in r[..qw + kvw].chunks_exact_mut(self.head_dim) {
                rope.rotate(head, pos as usize);
            }
            ks.extend_from_slice(&r[qw..qw + kvw]);
            vs.extend_from_slice(&r[qw + kvw..]);
        }
        let before = s.cache.len();
        s.cache.push(layer, &ks, &vs);
        if n == 1 {
            return; // attends with the batch's other one-row sequences
        }
        let mut scores = Vec::new();
        for (i, (r, o)) in block.chunks_exact(width).zip(out.chunks_exact_mut(qw)).enumerate() {
            attend(simd, l.shape, &r[..qw], s.cache, layer, before + i + 1, o, &mut scores);
        }
    }
}

/// The decode rows' attention ([`attend_rows`]) as a [`pulp::WithSimd`] operation.
struct DecodeAttention<'a, 'b, 'c> {
    model: &'a InferenceModel,
    rows: &'b mut [DecodeRow<'c>],
    layer: usize,
}

impl pulp::WithSimd for DecodeAttention<'_, '_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let shape = self.model.layers[self.layer].shape;
        attend_rows(simd, shape, self.layer, self.rows, &mut Vec::new());
    }
}

/// One sequence's attention work as a [`pulp::WithSimd`] operation, so that it (and everything it
/// inlines) is compiled for the SIMD level `pulp` detects at run time (AVX2 + FMA on most x86).
struct SequenceAttention<'a, 'b, 'c> {
    model: &'a InferenceModel,
    seq: &'a mut StepInput<'b>,
    layer: usize,
    block: &'c mut [f32],
    out: &'c mut [f32],
}

impl pulp::WithSimd for SequenceAttention<'_, '_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        self.model.sequence_attention(simd, self.seq, self.layer, self.block, self.out);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::{max_abs_diff, reference_logits, small_model};

    /// Prefills `ids[..split]` then feeds the rest one token at a time; returns every logits row.
    fn fast_logits(fast: &InferenceModel, ids: &[u32], split: usize) -> Vec<Vec<f32>> {
        let mut cache = fast.new_cache();
        let pos: Vec<u32> = (0..ids.len() as u32).collect();
        let mut out = vec![];
        let mut input = [StepInput { cache: &mut cache, tokens: &ids[..split], positions: &pos[..split] }];
        out.push(fast.step(&mut input).unwrap());
        for i in split..ids.len() {
            let mut input = [StepInput { cache: &mut cache, tokens: &ids[i..=i], positions: &pos[i..=i] }];
            out.push(fast.step(&mut input).unwrap());
        }
        out
    }

    #[test]
    fn sampling_path_matches_training_path() {
        for tied in [true, false] {
            let (model, _) = small_model(11, tied);
            let fast = InferenceModel::new(&model, WeightFormat::F32).unwrap();
            let ids = [3u32, 9, 4, 13, 5, 6, 17, 8, 3, 3, 10, 15];
            let reference = reference_logits(&model, &ids);
            let split = 5;
            let got = fast_logits(&fast, &ids, split);
            for (i, row) in got.iter().enumerate() {
                let diff = max_abs_diff(row, &reference[split - 1 + i]);
                assert!(diff < 1e-4, "tied={tied} position {}: max |diff| {diff}", split - 1 + i);
            }
        }
    }

    /// Every family's optional parts in the sampler: the same logits as the training path, for a
    /// sequence longer than Gemma's window of 4, prefilled in part then decoded token by token
    /// (the decode rows go through `attention.rs`, the prefill through `attend`).
    #[test]
    fn every_family_samples_as_the_training_path_computes() {
        for family in crate::model::arch::FAMILIES {
            let model = crate::testing::family_model(family, 6);
            let fast = InferenceModel::new(&model, WeightFormat::F32).unwrap();
            let ids = [3u32, 9, 4, 13, 5, 6, 17, 8, 3, 3, 10, 15];
            let reference = reference_logits(&model, &ids);
            for split in [1, 6] {
                for (i, row) in fast_logits(&fast, &ids, split).iter().enumerate() {
                    let diff = max_abs_diff(row, &reference[split - 1 + i]);
                    assert!(diff < 1e-4, "{family}, split {split}, position {}: max |diff| {diff}", split - 1 + i);
                }
            }
        }
    }

    #[test]
    fn rows_do_not_depend_on_batch_neighbours() {
        for format in [WeightFormat::F32, WeightFormat::Q8_0] {
            let (model, _) = small_model(5, true);
            let fast = InferenceModel::new(&model, format).unwrap();
            let (a, b, c): (&[u32], &[u32], &[u32]) = (&[3, 4, 5], &[6, 7, 8, 9, 10, 11, 12], &[13]);
            let positions = |s: &[u32]| (0..s.len() as u32).collect::<Vec<_>>();
            let alone = {
                let mut cache = fast.new_cache();
                fast.step(&mut [StepInput { cache: &mut cache, tokens: a, positions: &positions(a) }]).unwrap()
            };
            let (mut c1, mut c2, mut c3) = (fast.new_cache(), fast.new_cache(), fast.new_cache());
            let (pb, pa, pc) = (positions(b), positions(a), positions(c));
            let together = fast
                .step(&mut [
                    StepInput { cache: &mut c1, tokens: b, positions: &pb },
                    StepInput { cache: &mut c2, tokens: a, positions: &pa },
                    StepInput { cache: &mut c3, tokens: c, positions: &pc },
                ])
                .unwrap();
            let v = fast.vocab();
            assert_eq!(&together[v..2 * v], alone.as_slice(), "{format:?}: bit-identical whatever the batch");
        }
    }

    /// Q8_0 weights move the logits only a little: each weight is off by at most 1/254 of its
    /// block's largest, and the errors mostly cancel. The bound is loose (the tiny random
    /// model's logits are of order 1); a broken kernel is off by far more.
    #[test]
    fn q8_sampling_path_stays_close_to_training_path() {
        for tied in [true, false] {
            let (model, _) = small_model(11, tied);
            let fast = InferenceModel::new(&model, WeightFormat::Q8_0).unwrap();
            let ids = [3u32, 9, 4, 13, 5, 6, 17, 8, 3, 3, 10, 15];
            let reference = reference_logits(&model, &ids);
            let got = fast_logits(&fast, &ids, 5);
            for (i, row) in got.iter().enumerate() {
                let want = &reference[4 + i];
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = max_abs_diff(row, want);
                assert!(diff < 0.01 * scale.max(1.0), "tied={tied} position {}: max |diff| {diff}", 4 + i);
                assert!(diff > 0.0, "the Q8_0 path really quantizes");
            }
        }
    }

    #[test]
    fn extending_a_shared_prompt_equals_one_long_sequence() {
        let (model, _) = small_model(2, true);
        let fast = InferenceModel::new(&model, WeightFormat::F32).unwrap();
        let ids = [3u32, 4, 5, 6, 7, 8];
        let mut prompt = fast.new_cache();
        fast.step(&mut [StepInput { cache: &mut prompt, tokens: &ids[..4], positions: &[0, 1, 2, 3] }]).unwrap();
        let shared = Arc::new(prompt);
        let mut ext = KvCache::extending(shared.clone());
        let got = fast.step(&mut [StepInput { cache: &mut ext, tokens: &ids[4..], positions: &[4, 5] }]).unwrap();
        let reference = reference_logits(&model, &ids);
        assert!(max_abs_diff(&got, &reference[5]) < 1e-4);
        assert_eq!(shared.len(), 4, "the shared prompt is not modified");
    }

    /// Decode rows attend together, each shared cached level read once for all of them
    /// (`attention.rs`); a row's logits are the same bits as alone, and the training path's.
    #[test]
    fn decode_rows_sharing_cached_levels_match_each_alone() {
        for format in [WeightFormat::F32, WeightFormat::Q8_0] {
            let (model, _) = small_model(3, true);
            let fast = InferenceModel::new(&model, format).unwrap();
            let prompt = [3u32, 4, 5, 6, 7];
            let mut root = fast.new_cache();
            fast.step(&mut [StepInput { cache: &mut root, tokens: &prompt, positions: &[0, 1, 2, 3, 4] }]).unwrap();
            let root = Arc::new(root);
            // Two samples of the prompt (one level deeper for the second), and a stranger.
            let mut mid = KvCache::extending(root.clone());
            fast.step(&mut [StepInput { cache: &mut mid, tokens: &[9], positions: &[5] }]).unwrap();
            let mid = Arc::new(mid);
            let fresh = || (KvCache::extending(root.clone()), KvCache::extending(mid.clone()), fast.new_cache());
            let (mut a, mut b, mut c) = fresh();
            let together = fast
                .step(&mut [
                    StepInput { cache: &mut a, tokens: &[11], positions: &[5] },
                    StepInput { cache: &mut b, tokens: &[12], positions: &[6] },
                    StepInput { cache: &mut c, tokens: &[13], positions: &[0] },
                ])
                .unwrap();
            let (mut a, mut b, mut c) = fresh();
            let v = fast.vocab();
            let alone = [
                fast.step(&mut [StepInput { cache: &mut a, tokens: &[11], positions: &[5] }]).unwrap(),
                fast.step(&mut [StepInput { cache: &mut b, tokens: &[12], positions: &[6] }]).unwrap(),
                fast.step(&mut [StepInput { cache: &mut c, tokens: &[13], positions: &[0] }]).unwrap(),
            ];
            for (i, alone) in alone.iter().enumerate() {
                assert_eq!(&together[i * v..(i + 1) * v], alone.as_slice(), "{format:?}: sequence {i}");
            }
            if format == WeightFormat::F32 {
                let want = reference_logits(&model, &[3, 4, 5, 6, 7, 9, 12]);
                assert!(max_abs_diff(&together[v..2 * v], &want[6]) < 1e-4);
            }
        }
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let (model, _) = small_model(2, true);
        let fast = InferenceModel::new(&model, WeightFormat::F32).unwrap();
        let mut cache = fast.new_cache();
        assert!(fast.step(&mut [StepInput { cache: &mut cache, tokens: &[3], positions: &[64] }]).is_err());
        assert!(fast.step(&mut [StepInput { cache: &mut cache, tokens: &[99], positions: &[0] }]).is_err());
        assert!(fast.step(&mut [StepInput { cache: &mut cache, tokens: &[], positions: &[] }]).is_err());
    }
}
