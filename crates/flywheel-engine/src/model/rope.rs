//! Rotary position embedding tables, shared by the training and the sampling path.
//!
//! The tables are computed the way Hugging Face's `LlamaRotaryEmbedding` computes them (inverse
//! frequencies, angles and their cosines in `f32`, with `linear` or Llama 3's `llama3` scaling of
//! the frequencies as `modeling_rope_utils.py` applies it), so that a checkpoint trained elsewhere
//! sees the same rotations here. The rotation itself is the "rotate half" convention of HF Llama: the head is
//! split into a first and a second half, and pair `i` is `(x[i], x[i + d/2])`.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::model::config::RopeScaling;

/// Cosine and sine of every (position, frequency) pair, `max_positions × head_dim/2`, row-major.
#[derive(Debug, Clone)]
pub(crate) struct RopeTables {
    /// Half the head width: the number of rotated pairs.
    pub half: usize,
    /// Number of positions covered.
    pub max_positions: usize,
    /// `cos[p * half + i]`.
    pub cos: Vec<f32>,
    /// `sin[p * half + i]`.
    pub sin: Vec<f32>,
}

impl RopeTables {
    /// Tables for heads of width `head_dim`, base `theta`, positions `0..max_positions`, the
    /// frequencies rescaled by `scaling`.
    pub fn new(head_dim: usize, theta: f64, max_positions: usize, scaling: Option<RopeScaling>) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> =
            (0..half).map(|i| scaled(1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32), scaling)).collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Self { half, max_positions, cos, sin }
    }

    /// The tables as `(max_positions, half)` tensors of `dtype` (for the differentiable path).
    pub fn tensors(&self, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let shape = (self.max_positions, self.half);
        let cos = Tensor::from_slice(&self.cos, shape, device)?.to_dtype(dtype)?;
        let sin = Tensor::from_slice(&self.sin, shape, device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Rotates one head `x` (length `2 * half`) in place to position `pos`.
    #[inline(always)]
    pub fn rotate(&self, x: &mut [f32], pos: usize) {
        let (cos, sin) = (&self.cos[pos * self.half..][..self.half], &self.sin[pos * self.half..][..self.half]);
        let (a, b) = x.split_at_mut(self.half);
        for i in 0..self.half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// An inverse frequency after `scaling` (`transformers`' `_compute_linear_scaling_rope_parameters`
/// and `_compute_llama3_parameters`, in `f32` as there).
fn scaled(inv_freq: f32, scaling: Option<RopeScaling>) -> f32 {
    match scaling {
        None => inv_freq,
        Some(RopeScaling::Linear { factor }) => inv_freq / factor as f32,
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let (factor, low, high, original) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
                original_max_position_embeddings as f32,
            );
            let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
            if wavelen > original / low {
                inv_freq / factor
            } else if wavelen < original / high {
                inv_freq
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_rotation_keeps_norm() {
        let t = RopeTables::new(8, 10_000.0, 16, None);
        let mut x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let orig = x;
        t.rotate(&mut x, 0);
        assert_eq!(x, orig);
        t.rotate(&mut x, 7);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x) - norm(&orig)).abs() < 1e-3);
        // Pair 0 (x[0], x[4]) turns by exactly 7 radians (inverse frequency 1).
        let (c, s) = (7f32.cos(), 7f32.sin());
        assert!((x[0] - (1.0 * c - 5.0 * s)).abs() < 1e-5);
    }

    #[test]
    fn relative_positions_give_equal_dot_products() {
        // The point of RoPE: <rot(q, m), rot(k, n)> depends on m - n only.
        let t = RopeTables::new(8, 10_000.0, 64, None);
        let q = [0.3, -1.0, 0.5, 2.0, 1.5, 0.1, -0.7, 0.2];
        let k = [1.0, 0.4, -0.2, 0.9, -1.1, 0.6, 0.3, -0.5];
        let dot_at = |m: usize, n: usize| {
            let (mut a, mut b) = (q, k);
            t.rotate(&mut a, m);
            t.rotate(&mut b, n);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        assert!((dot_at(10, 3) - dot_at(40, 33)).abs() < 1e-4);
    }
}
