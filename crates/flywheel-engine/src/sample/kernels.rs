//! The per-row kernels of the sampling path: matrix products through gemm, and attention,
//! RMSNorm and SwiGLU on plain `f32` slices.
//!
//! The attention kernel is generic over a `pulp::Simd` level so that, called through
//! `pulp::Arch::dispatch`, it compiles to AVX2/FMA code where the CPU has it while the crate stays
//! free of `unsafe` and of build-time CPU flags.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::model::arch::Activation;
use crate::sample::kv_cache::KvCache;

/// gemm sends products with `m * n` up to this to a kernel with its own summation order.
const GEMM_SMALL_PRODUCT: usize = 256;

/// Head counts and width of one attention layer, its query scale and its window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The scores' scale (`head_dim^-1/2`, or the family's).
    pub scale: f32,
    /// The most recent keys a query sees (sliding-window layers), `None` for all.
    pub window: Option<usize>,
}

impl HeadShape {
    /// The first key a query that sees `keys` keys attends to.
    #[inline(always)]
    pub fn first_key(&self, keys: usize) -> usize {
        self.window.map_or(0, |w| keys.saturating_sub(w))
    }
}

/// `row` replaced by the softmax of its entries from `first` on, zeros before: the
/// probabilities of a query that sees only keys `first..`.
#[inline(always)]
pub(crate) fn softmax_from(row: &mut [f32], first: usize) {
    row[..first].fill(0.0);
    softmax(&mut row[first..]);
}

/// Attention of one query row (all heads) over the first `keys` entries of `cache`'s layer.
/// The query heads sharing a key/value head are processed together, so each cached key and
/// value is read once per group.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend<S: pulp::Simd>(
    simd: S,
    shape: HeadShape,
    q: &[f32],
    cache: &KvCache,
    layer: usize,
    keys: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let hd = shape.head_dim;
    let kvw = shape.kv_heads * hd;
    let group = shape.heads / shape.kv_heads;
    let scale = shape.scale;
    let first = shape.first_key(keys);
    scores.clear();
    scores.resize(group * keys, 0.0);
    for kvh in 0..shape.kv_heads {
        let qs = &q[kvh * group * hd..][..group * hd];
        let entries = cache.segments(layer).flat_map(|(k, _)| k.chunks_exact(kvw)).take(keys);
        for (j, entry) in entries.enumerate() {
            let k = &entry[kvh * hd..][..hd];
            for (g, qh) in qs.chunks_exact(hd).enumerate() {
                scores[g * keys + j] = dot_simd(simd, qh, k) * scale;
            }
        }
        for row in scores.chunks_exact_mut(keys) {
            softmax_from(row, first);
        }
        let os = &mut out[kvh * group * hd..][..group * hd];
        for (g, oh) in os.chunks_exact_mut(hd).enumerate() {
            let values = || cache.segments(layer).flat_map(|(_, v)| v.chunks_exact(kvw)).map(|e| &e[kvh * hd..][..hd]);
            weighted_sum(simd, &scores[g * keys..][..keys], values, oh);
        }
    }
}

/// `row` replaced by its softmax (in place), with [`exp_nonpositive`] (the arguments are at most
/// 0), which the compiler vectorizes where libm's `expf` is a call per score.
#[inline(always)]
pub(crate) fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for s in row.iter_mut() {
        *s = exp_nonpositive(*s - max);
    }
    let mut sum = 0.0;
    for s in row.iter() {
        sum += *s;
    }
    let inv = 1.0 / sum;
    for s in row.iter_mut() {
        *s *= inv;
    }
}

/// `e^x` for `x <= 0`, within 2 ulp: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r`
/// by its degree-7 Taylor polynomial (truncation below 2e-8 relative), times `2^n` built in the
/// exponent bits. Below -87 (where `e^x` is under `f32`'s normal range) it returns about `1e-38`
/// or less, never a subnormal; no branch, so a loop of it vectorizes.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p: f32 = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.mul_add(r, c);
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `out = Σ_j p[j] v_j` over the value rows `values()` (as many as `p` has), each output lane summed in key order with
/// fused multiply-adds. Eight vectors of the output at a time stay in registers across all keys
/// (one pass over the keys per eight vectors), rather than being loaded and stored per key.
#[inline(always)]
fn weighted_sum<'v, S: pulp::Simd, I: Iterator<Item = &'v [f32]>>(
    simd: S,
    p: &[f32],
    values: impl Fn() -> I,
    out: &mut [f32],
) {
    let lanes = std::mem::size_of::<S::f32s>() / std::mem::size_of::<f32>();
    let (oh, ot) = S::as_mut_simd_f32s(out);
    let vectors = oh.len();
    let zero = simd.splat_f32s(0.0);
    let mut groups = oh.chunks_exact_mut(8);
    for (c, o) in groups.by_ref().enumerate() {
        let mut acc = [zero; 8];
        for (v, &p) in values().zip(p) {
            let vs = &S::as_simd_f32s(v).0[8 * c..][..8];
            let ps = simd.splat_f32s(p);
            for (a, &v) in acc.iter_mut().zip(vs) {
                *a = simd.mul_add_e_f32s(ps, v, *a);
            }
        }
        o.copy_from_slice(&acc);
    }
    let rest = groups.into_remainder();
    for (i, o) in rest.iter_mut().enumerate() {
        let mut acc = zero;
        for (v, &p) in values().zip(p) {
            acc = simd.mul_add_e_f32s(simd.splat_f32s(p), S::as_simd_f32s(v).0[vectors / 8 * 8 + i], acc);
        }
        *o = acc;
    }
    let first = vectors * lanes;
    for (i, o) in ot.iter_mut().enumerate() {
        *o = 0.0;
        for (v, &p) in values().zip(p) {
            *o += p * v[first + i];
        }
    }
}

/// `x · w^T` for `rows` rows of `x`, through candle's gemm, zero-padded to enough rows that gemm
/// takes its general path (see the module docs).
pub(crate) fn linear(x: &[f32], rows: usize, w: &Tensor) -> Result<Vec<f32>> {
    let (n, k) = w.dims2()?;
    let padded = rows.max(GEMM_SMALL_PRODUCT / n + 1).max(2);
    let input = if padded == rows {
        Tensor::from_slice(x, (rows, k), &Device::Cpu)?
    } else {
        let mut v = Vec::with_capacity(padded * k);
        v.extend_from_slice(x);
        v.resize(padded * k, 0.0);
        Tensor::from_vec(v, (padded, k), &Device::Cpu)?
    };
    let mut out: Vec<f32> = input.matmul(&w.t()?)?.flatten_all()?.to_vec1()?;
    out.truncate(rows * n);
    Ok(out)
}

/// RMSNorm of every row of `x` (rows of `w.len()` floats), in place.
pub(crate) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let ms = dot(row, row) / w.len() as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (a, &g) in row.iter_mut().zip(w) {
            *a = *a * inv * g;
        }
    }
}

/// RMSNorm of every row of `x` (rows of `w.len()` floats).
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    rms_norm_in_place(&mut out, w, eps);
    out
}

pub(crate) fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `a · b` in SIMD registers of `S`, fused multiply-adds where the CPU has them. Four
/// accumulators, so that a head's products are not one chain of dependent additions.
#[inline(always)]
pub(crate) fn dot_simd<S: pulp::Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (ah, at) = S::as_simd_f32s(a);
    let (bh, bt) = S::as_simd_f32s(b);
    let (a4, b4) = (ah.chunks_exact(4), bh.chunks_exact(4));
    let (ar, br) = (a4.remainder(), b4.remainder());
    let mut acc = [simd.splat_f32s(0.0); 4];
    for (x, y) in a4.zip(b4) {
        for i in 0..4 {
            acc[i] = simd.mul_add_e_f32s(x[i], y[i], acc[i]);
        }
    }
    for (x, y) in ar.iter().zip(br) {
        acc[0] = simd.mul_add_e_f32s(*x, *y, acc[0]);
    }
    let sum = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
    let tail: f32 = at.iter().zip(bt).map(|(x, y)| x * y).sum();
    simd.reduce_sum_f32s(sum) + tail
}

/// Dot product with eight independent accumulators (vectorises; fixed summation order).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The gated activation of fused `[gate | up]` rows (`2 ff` wide): `act(gate) * up`, `ff` wide
/// (SwiGLU, or GeGLU with GELU's tanh approximation).
pub(crate) fn gated(gu: &[f32], ff: usize, activation: Activation) -> Vec<f32> {
    let mut act = Vec::with_capacity(gu.len() / 2);
    for r in gu.chunks_exact(2 * ff) {
        let (g, u) = r.split_at(ff);
        match activation {
            Activation::Silu => act.extend(g.iter().zip(u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)),
            Activation::GeluTanh => act.extend(g.iter().zip(u).map(|(&g, &u)| gelu_tanh(g) * u)),
        }
    }
    act
}

/// `sqrt(2 / π)`, GELU's tanh approximation's constant.
pub(crate) const GELU_C: f32 = 0.797_884_6;

/// GELU, tanh approximation: `x/2 · (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_C * (x + 0.044_715 * x * x * x)).tanh())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`weighted_sum`] and [`dot_simd`] at the CPU's SIMD level.
    struct Sums<'a> {
        p: &'a [f32],
        values: &'a [Vec<f32>],
    }

    impl pulp::WithSimd for Sums<'_> {
        type Output = (Vec<f32>, f32);

        fn with_simd<S: pulp::Simd>(self, simd: S) -> Self::Output {
            let mut out = vec![f32::NAN; self.values[0].len()];
            weighted_sum(simd, self.p, || self.values.iter().map(Vec::as_slice), &mut out);
            (out, dot_simd(simd, &self.values[0], &self.values[1]))
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let (got, want) = (f64::from(exp_nonpositive(x)), f64::from(x).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.0 * f64::from(f32::EPSILON), "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37 && exp_nonpositive(f32::NEG_INFINITY) >= 0.0);
    }

    #[test]
    fn attention_sums_match_plain_loops() {
        // Head widths with whole groups of eight vectors, a remainder vector and scalar tails.
        for hd in [8, 64, 67, 136] {
            let values: Vec<Vec<f32>> =
                (0..5).map(|j| (0..hd).map(|i| ((i * 7 + j * 3) % 11) as f32 / 11.0 - 0.4).collect()).collect();
            let p = [0.1, 0.3, 0.2, 0.25, 0.15];
            let (got, dot) = pulp::Arch::new().dispatch(Sums { p: &p, values: &values });
            for (i, g) in got.iter().enumerate() {
                let want: f32 = values.iter().zip(&p).map(|(v, p)| p * v[i]).sum();
                assert!((g - want).abs() < 1e-5, "hd {hd} lane {i}: {g} vs {want}");
            }
            let want: f32 = values[0].iter().zip(&values[1]).map(|(a, b)| a * b).sum();
            assert!((dot - want).abs() < 1e-4, "hd {hd}: {dot} vs {want}");
        }
    }
}
