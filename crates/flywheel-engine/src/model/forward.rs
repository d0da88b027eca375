//! The differentiable forward pass, used for training (and as the reference of the sampling path).
//!
//! Every operation here is a plain candle tensor op with a backward pass. candle-nn 0.11's fused
//! `rms_norm`, `softmax_last_dim` and `rope` kernels have none: gradients silently stop at them and
//! the weights before them never learn. So RMSNorm is `x * 1/sqrt(mean(x²) + eps) * w`, softmax is
//! `exp(x - max) / sum`, and RoPE is `narrow`/`cat` with cosine and sine tensors. The gradient test
//! in `train/grad_tests.rs` (every parameter gets a non-zero gradient) and the finite-difference test below
//! pin this.
//!
//! Position ids are an explicit input, so callers may use any position scheme (left padding with
//! per-sequence positions, packed sequences, offsets).

use candle_core::{DType, Tensor, D};

use crate::error::{EngineError, Result};
use crate::model::arch::Activation;
use crate::model::lora::Proj;
use crate::model::DecoderModel;

/// Additive mask value for blocked attention: finite, so that a fully masked row (a padding query)
/// gives a uniform distribution instead of NaN.
const BLOCKED: f64 = -1e9;

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(weight)?)
}

/// Softmax over the last dimension, with the (detached) row maximum subtracted for stability.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Rotates `x` (…, T, head_dim) by the "rotate half" convention with `cos`, `sin` (…, T, head_dim/2).
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let (x1, x2) = (x.narrow(D::Minus1, 0, half)?, x.narrow(D::Minus1, half, half)?);
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[a, b], D::Minus1)?)
}

/// What every layer of one forward pass shares: the batch's shape, RoPE tables at its positions
/// (global, and local where the model has sliding layers), the attention masks and the query
/// scale.
pub(crate) struct LayerContext {
    b: usize,
    t: usize,
    rope: (Tensor, Tensor),
    rope_local: Option<(Tensor, Tensor)>,
    mask: Tensor,
    /// The mask of sliding layers, by window.
    window_masks: Vec<(usize, Tensor)>,
    scale: f64,
}

impl DecoderModel {
    /// Runs the decoder and returns the final-normed hidden states, `(batch, seq, hidden_size)`.
    ///
    /// * `input_ids`: `(batch, seq)` `u32` token ids.
    /// * `position_ids`: `(batch, seq)` `u32` positions (each below `max_position_embeddings`).
    /// * `key_mask`: optional `(batch, seq)` tensor of any numeric type, 1 where the token is real and
    ///   0 for padding; padding keys are not attended to.
    ///
    /// Attention is always causal in sequence order.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        key_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_hidden_mode(input_ids, position_ids, key_mask, false)
    }

    /// [`DecoderModel::forward_hidden`], with LoRA dropout on when `train`.
    pub(crate) fn forward_hidden_mode(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        key_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let ctx = self.layer_context(input_ids, position_ids, key_mask)?;
        let mut x = self.embed_tokens(input_ids)?;
        for li in 0..self.layers.len() {
            x = self.layer(li, &x, &ctx, train)?;
        }
        self.final_norm(&x, &ctx)
    }

    /// [`DecoderModel::forward_hidden`] for evaluation: no dropout, and each layer's output
    /// detached from the autograd graph, so that only one layer's activations are alive at a time
    /// (with the weights being variables, the graph would otherwise keep every intermediate
    /// tensor of every layer until the result is dropped).
    pub(crate) fn forward_hidden_detached(&self, input_ids: &Tensor, position_ids: &Tensor) -> Result<Tensor> {
        let ctx = self.layer_context(input_ids, position_ids, None)?;
        let mut x = self.embed_tokens(input_ids)?.detach();
        for li in 0..self.layers.len() {
            x = self.layer(li, &x, &ctx, false)?.detach();
        }
        Ok(self.final_norm(&x, &ctx)?.detach())
    }

    /// Checks the inputs of a forward pass and builds what its layers share.
    pub(crate) fn layer_context(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        key_mask: Option<&Tensor>,
    ) -> Result<LayerContext> {
        let c = &self.config;
        ensure_u32(input_ids, "input_ids")?;
        ensure_u32(position_ids, "position_ids")?;
        let (b, t) = input_ids.dims2()?;
        if position_ids.dims() != [b, t] {
            return Err(EngineError::invalid(format!(
                "position_ids shape {:?}, expected {:?}",
                position_ids.dims(),
                [b, t]
            )));
        }
        let max_pos = position_ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max_pos >= c.max_position_embeddings {
            return Err(EngineError::invalid(format!(
                "position {max_pos} is beyond max_position_embeddings = {}",
                c.max_position_embeddings
            )));
        }
        let max_id = input_ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max_id >= c.vocab_size {
            return Err(EngineError::invalid(format!(
                "token id {max_id} is outside the vocabulary ({})",
                c.vocab_size
            )));
        }
        let hd = c.head_dim();
        let positions = position_ids.flatten_all()?;
        let at_positions = |(cos, sin): &(Tensor, Tensor)| -> Result<(Tensor, Tensor)> {
            Ok((
                cos.index_select(&positions, 0)?.reshape((b, 1, t, hd / 2))?,
                sin.index_select(&positions, 0)?.reshape((b, 1, t, hd / 2))?,
            ))
        };
        let mut window_masks: Vec<(usize, Tensor)> = Vec::new();
        for l in 0..c.num_hidden_layers {
            if let Some(w) = c.layer_attention(l).window {
                if !window_masks.iter().any(|(x, _)| *x == w) {
                    window_masks.push((w, self.attention_mask(b, t, key_mask, Some(w))?));
                }
            }
        }
        Ok(LayerContext {
            b,
            t,
            rope: at_positions(&self.rope_tensors)?,
            rope_local: self.rope_local_tensors.as_ref().map(at_positions).transpose()?,
            mask: self.attention_mask(b, t, key_mask, None)?,
            window_masks,
            scale: 1.0 / c.query_scalar().sqrt(),
        })
    }

    /// The token embeddings of `input_ids` `(batch, seq)`, flattened to `(batch * seq, hidden_size)`
    /// and scaled as the family scales them.
    pub(crate) fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor> {
        let x = self.param(&self.embed).index_select(&input_ids.flatten_all()?, 0)?;
        let scale = self.config.embed_scale();
        Ok(if scale == 1.0 { x } else { (x * f64::from(scale))? })
    }

    /// `x Wᵀ (+ b)` for projection `p` of layer `li` (the bias, where the family has one, is frozen
    /// with the base weights while adapters train).
    fn projection(&self, li: usize, p: Proj, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.linear(li, p, x, train)?;
        match self.layers[li].bias(p) {
            Some(b) => Ok(y.broadcast_add(&self.param(b))?),
            None => Ok(y),
        }
    }

    /// RMSNorm of `x` with the optional norm weight `w` (identity when the family has none).
    fn optional_norm(&self, x: Tensor, w: Option<&candle_core::Var>) -> Result<Tensor> {
        match w {
            Some(w) => rms_norm(&x, &self.param(w), self.config.rms_norm_eps),
            None => Ok(x),
        }
    }

    /// Decoder layer `li` on the residual stream `x` `(batch * seq, hidden_size)`.
    pub(crate) fn layer(&self, li: usize, x: &Tensor, ctx: &LayerContext, train: bool) -> Result<Tensor> {
        let c = &self.config;
        let layer = &self.layers[li];
        let (b, t) = (ctx.b, ctx.t);
        let (h, kv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let group = h / kv;
        let attention = c.layer_attention(li);
        let (cos, sin) = match (&ctx.rope_local, attention.local_rope) {
            (Some(local), true) => local,
            _ => &ctx.rope,
        };
        let mask = match attention.window {
            Some(w) => &ctx.window_masks.iter().find(|(x, _)| *x == w).expect("a mask per window").1,
            None => &ctx.mask,
        };
        let hn = rms_norm(x, &self.param(&layer.attn_norm), c.rms_norm_eps)?;
        // Projected heads `(b, n, t, hd)`, each head normalised where the family does (before RoPE).
        let heads = |p: Proj, n: usize, norm: Option<&candle_core::Var>| -> Result<Tensor> {
            let y = self.optional_norm(self.projection(li, p, &hn, train)?.reshape((b, t, n, hd))?, norm)?;
            Ok(y.transpose(1, 2)?.contiguous()?)
        };
        // Scaling q (t × hd) instead of the scores (t × t) saves a pass over the largest tensor.
        let q = rope(&heads(Proj::Q, h, layer.q_norm.as_ref())?, cos, sin)?;
        let q = (q * ctx.scale)?.reshape((b, kv, group * t, hd))?;
        let k = rope(&heads(Proj::K, kv, layer.k_norm.as_ref())?, cos, sin)?;
        let v = heads(Proj::V, kv, None)?;
        // Query heads of one group share a key/value head: fold the group into the rows.
        let scores = q.matmul(&k.transpose(2, 3)?)?.reshape((b, kv, group, t, t))?;
        let probs = softmax_last_dim(&scores.broadcast_add(mask)?)?.reshape((b, kv, group * t, t))?;
        let attn = probs.matmul(&v)?.reshape((b, h, t, hd))?.transpose(1, 2)?.reshape((b * t, h * hd))?;
        let o = self.optional_norm(self.linear(li, Proj::O, &attn, train)?, layer.attn_post_norm.as_ref())?;
        let x = (x + o)?;
        let hn = rms_norm(&x, &self.param(&layer.mlp_norm), c.rms_norm_eps)?;
        let gate = self.linear(li, Proj::Gate, &hn, train)?;
        let gate = match c.activation()? {
            Activation::Silu => gate.silu()?,
            Activation::GeluTanh => gate.gelu()?,
        };
        let up = self.linear(li, Proj::Up, &hn, train)?;
        let down = self.linear(li, Proj::Down, &(gate * up)?, train)?;
        Ok((&x + self.optional_norm(down, layer.mlp_post_norm.as_ref())?)?)
    }

    /// The final RMSNorm of the residual stream, reshaped to `(batch, seq, hidden_size)`.
    pub(crate) fn final_norm(&self, x: &Tensor, ctx: &LayerContext) -> Result<Tensor> {
        let c = &self.config;
        Ok(rms_norm(x, &self.param(&self.norm), c.rms_norm_eps)?.reshape((ctx.b, ctx.t, c.hidden_size))?)
    }

    /// Projects hidden states `(…, hidden_size)` to logits `(…, vocab_size)`.
    pub fn project(&self, hidden: &Tensor) -> Result<Tensor> {
        self.output_projection(hidden)
    }

    /// Runs the decoder and returns logits `(batch, seq, vocab_size)`; see
    /// [`DecoderModel::forward_hidden`] for the inputs.
    pub fn forward(&self, input_ids: &Tensor, position_ids: &Tensor, key_mask: Option<&Tensor>) -> Result<Tensor> {
        self.project(&self.forward_hidden(input_ids, position_ids, key_mask)?)
    }

    /// `log p(ids[i] | ids[..i])` for every `i ≥ 1` (positions from 0), through the training graph.
    pub fn token_logprobs(&self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.len() < 2 {
            return Ok(Vec::new());
        }
        let n = ids.len() - 1;
        let input = Tensor::new(&ids[..n], &self.device)?.unsqueeze(0)?;
        let positions = Tensor::new((0..n as u32).collect::<Vec<_>>().as_slice(), &self.device)?.unsqueeze(0)?;
        let logits = self.forward(&input, &positions, None)?.squeeze(0)?.to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let targets = Tensor::new(&ids[1..], &self.device)?.unsqueeze(1)?;
        Ok(logp.gather(&targets, 1)?.squeeze(1)?.to_vec1()?)
    }

    /// The additive mask `(batch, 1, 1, seq, seq)`: causal (within the last `window` keys when
    /// given), plus padding keys when `key_mask` is given.
    fn attention_mask(&self, b: usize, t: usize, key_mask: Option<&Tensor>, window: Option<usize>) -> Result<Tensor> {
        let blocked = |query: usize, key: usize| key > query || window.is_some_and(|w| query - key >= w);
        let causal: Vec<f32> = (0..t * t).map(|i| if blocked(i / t, i % t) { BLOCKED as f32 } else { 0.0 }).collect();
        let causal = Tensor::from_vec(causal, (1, 1, 1, t, t), &self.device)?.to_dtype(self.dtype)?;
        let Some(keys) = key_mask else { return Ok(causal) };
        if keys.dims() != [b, t] {
            return Err(EngineError::invalid(format!("key_mask shape {:?}, expected {:?}", keys.dims(), [b, t])));
        }
        let real = keys.to_dtype(self.dtype)?; // 1 where real, 0 for padding
        let blocked = ((real - 1.0)? * -BLOCKED)?.reshape((b, 1, 1, 1, t))?;
        Ok(causal.broadcast_add(&blocked)?)
    }
}

/// Checks that a forward pass's inputs are `u32`, as candle's `index_select` needs.
pub(crate) fn ensure_u32(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() == DType::U32 {
        Ok(())
    } else {
        Err(EngineError::invalid(format!("{what} must be u32, got {:?}", t.dtype())))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::testing::{max_abs_diff, reference_logits, small_model};

    #[test]
    fn left_padding_with_mask_and_positions_matches_unpadded() {
        let (model, _) = small_model(6, true);
        let (a, b) = ([3u32, 4, 5, 6, 7], [8u32, 9]);
        // Row 1 is left-padded by 3; its positions start at 0 on its first real token.
        let ids = Tensor::new(&[[3u32, 4, 5, 6, 7], [0, 0, 0, 8, 9]], &Device::Cpu).unwrap();
        let pos = Tensor::new(&[[0u32, 1, 2, 3, 4], [0, 0, 0, 0, 1]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [0, 0, 0, 1, 1]], &Device::Cpu).unwrap();
        let out: Vec<Vec<Vec<f32>>> = model.forward(&ids, &pos, Some(&mask)).unwrap().to_vec3().unwrap();
        let (ra, rb) = (reference_logits(&model, &a), reference_logits(&model, &b));
        for t in 0..5 {
            assert!(max_abs_diff(&out[0][t], &ra[t]) < 1e-5);
        }
        for t in 0..2 {
            assert!(max_abs_diff(&out[1][3 + t], &rb[t]) < 1e-5, "padded row, position {t}");
        }
        assert!(out[1][0].iter().all(|x| x.is_finite()), "fully masked padding rows stay finite");
    }

    #[test]
    fn wrong_inputs_are_rejected_with_a_reason() {
        let (model, _) = small_model(6, true);
        let ids = Tensor::new(&[[3u32, 4]], &Device::Cpu).unwrap();
        let far = Tensor::new(&[[0u32, 64]], &Device::Cpu).unwrap();
        let err = model.forward(&ids, &far, None).unwrap_err().to_string();
        assert!(err.contains("max_position_embeddings"), "{err}");
        let f = Tensor::new(&[[0f32, 1.0]], &Device::Cpu).unwrap();
        assert!(model.forward(&ids, &f, None).unwrap_err().to_string().contains("u32"));
    }
}
