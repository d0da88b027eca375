//! The per-row kernels of the sampling path: matrix products through gemm, and attention,
//! RMSNorm and SwiGLU on plain `f32` slices.
//!
//! The attention kernel is generic over a `pulp::Simd` level so that, called through
//! `pulp::Arch::dispatch`, it compiles to AVX2/FMA code where the CPU has it while the crate stays
//! free of `unsafe` and of build-time CPU flags.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::kv_cache::KvCache;

/// gemm sends products with `m * n` up to this to a kernel with its own summation order.
const GEMM_SMALL_PRODUCT: usize = 256;

/// Head counts and width of one attention layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
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
    let scale = 1.0 / (hd as f32).sqrt();
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
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            for s in row.iter_mut() {
                *s *= inv;
            }
        }
        let os = &mut out[kvh * group * hd..][..group * hd];
        os.fill(0.0);
        let entries = cache.segments(layer).flat_map(|(_, v)| v.chunks_exact(kvw)).take(keys);
        for (j, entry) in entries.enumerate() {
            let v = &entry[kvh * hd..][..hd];
            for (g, oh) in os.chunks_exact_mut(hd).enumerate() {
                axpy_simd(simd, scores[g * keys + j], v, oh);
            }
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

/// RMSNorm of every row of `x` (rows of `w.len()` floats).
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(w.len()) {
        let ms = dot(row, row) / w.len() as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(&a, &g)| a * inv * g));
    }
    out
}

pub(crate) fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `a · b` in SIMD registers of `S`, fused multiply-adds where the CPU has them.
#[inline(always)]
fn dot_simd<S: pulp::Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (ah, at) = S::as_simd_f32s(a);
    let (bh, bt) = S::as_simd_f32s(b);
    let mut acc = simd.splat_f32s(0.0);
    for (x, y) in ah.iter().zip(bh) {
        acc = simd.mul_add_e_f32s(*x, *y, acc);
    }
    let tail: f32 = at.iter().zip(bt).map(|(x, y)| x * y).sum();
    simd.reduce_sum_f32s(acc) + tail
}

/// `out += p * v` in SIMD registers of `S`.
#[inline(always)]
fn axpy_simd<S: pulp::Simd>(simd: S, p: f32, v: &[f32], out: &mut [f32]) {
    let (oh, ot) = S::as_mut_simd_f32s(out);
    let (vh, vt) = S::as_simd_f32s(v);
    let ps = simd.splat_f32s(p);
    for (o, x) in oh.iter_mut().zip(vh) {
        *o = simd.mul_add_e_f32s(ps, *x, *o);
    }
    for (o, x) in ot.iter_mut().zip(vt) {
        *o += p * x;
    }
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

/// SwiGLU activation of fused `[gate | up]` rows (`2 ff` wide): `silu(gate) * up`, `ff` wide.
pub(crate) fn silu_mul(gu: &[f32], ff: usize) -> Vec<f32> {
    let mut act = Vec::with_capacity(gu.len() / 2);
    for r in gu.chunks_exact(2 * ff) {
        let (g, u) = r.split_at(ff);
        act.extend(g.iter().zip(u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u));
    }
    act
}
