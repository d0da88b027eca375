//! Q8_0 weight matrices for the sampling path, and their matrix product with activations.
//!
//! Why: decoding a few sequences reads every weight once per step and does little arithmetic
//! with it, so its speed is set by how many bytes of weights stream through the cores. Q8_0
//! (the GGML format: blocks of 32 signed bytes and one scale, `w ≈ d * q`, `d = amax / 127`)
//! holds a weight in 1.125 bytes instead of 4, and its error (at most `d / 2` per weight, a
//! relative 0.4% of the block's largest) is far below what sampling notices.
//!
//! Two kernels multiply them. Where the CPU has AVX-512 VNNI (`vnni.rs`), the activations are
//! quantized to Q8_0 as well, each block's 32 products are summed exactly in integers and scaled
//! once, on weights interleaved by groups of sixteen rows: about 3x fewer instructions per weight
//! than widening to floats, for an added error of at most half a step per activation. Elsewhere
//! activations stay `f32`, each block's 32 products are summed in `f32` and scaled by `d` once:
//! the AVX2/FMA kernel (`pulp::x86::V3`, safe intrinsics, detected at run time) takes up to eight
//! activation rows per pass over a weight row, so a weight block is loaded and widened once for all
//! of them; without AVX2 a scalar loop computes the same formula. Either way every activation row
//! goes through the same instructions whatever the number of rows beside it, so a row's result
//! does not depend on its batch.
//!
//! Threads: a decode step's few rows would leave a core idle, so its product is split by weight
//! rows (each weight still read from memory once); a prefill's many rows are split by rows.
//! Either way both cores work inside every product, and the split changes no result.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::sample::kernels;
#[cfg(target_arch = "x86_64")]
use crate::sample::vnni;

/// Weights per Q8_0 block.
pub(crate) const BLOCK: usize = 32;

/// Most activation rows that share one pass over a weight row.
const TILE: usize = 8;

/// Weight rows that each activation tile meets in turn (the kernel's cache blocking).
const RUN: usize = 128;

/// Products with at least this many rows split their rows across threads, not their weights.
const ROW_SPLIT: usize = 64;

/// Fewest weight rows per parallel task, so that a task's work outweighs its scheduling.
const MIN_TASK_ROWS: usize = 16;

/// How the sampler holds its weight matrices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// `f32`, exactly the training weights (products through candle's gemm).
    F32,
    /// Q8_0: blocks of 32 `i8` and one `f32` scale; about 3.5× less memory traffic per decode step.
    #[default]
    Q8_0,
}

/// A weight matrix `(n, k)` of the sampling path in the chosen [`WeightFormat`].
pub(crate) enum Weights {
    F32(Tensor),
    Q8(Q8Matrix),
}

impl Weights {
    /// `parts` (`f32` matrices of equal width) stacked by rows, in `format`; `precise`: on the
    /// int8 kernel, quantize this product's activations in two parts (see `vnni.rs`).
    pub fn stacked(parts: &[Tensor], format: WeightFormat, precise: bool) -> Result<Self> {
        Ok(match format {
            WeightFormat::F32 => Weights::F32(Tensor::cat(parts, 0)?.contiguous()?),
            WeightFormat::Q8_0 => Weights::Q8(Q8Matrix::stacked(parts, Kernel::detect(), precise)?),
        })
    }

    /// `x · w^T` for `rows` rows of `x` (row-major, `rows × n`).
    pub fn matmul(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        match self {
            Weights::F32(w) => kernels::linear(x, rows, w),
            Weights::Q8(w) => Ok(w.matmul(x, rows)),
        }
    }
}

/// An `(n, k)` matrix in Q8_0 blocks (a row's last block zero-padded when `k` is not a multiple of
/// [`BLOCK`]): row-major for the `f32` kernel, or interleaved for the int8 one ([`Kernel`]).
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    /// Blocks per row: `ceil(k / 32)`.
    blocks: usize,
    /// `n * blocks` scales, row-major (empty once packed).
    scales: Vec<f32>,
    /// `n * blocks` blocks of quantized weights, row-major (empty once packed).
    quants: Vec<[i8; BLOCK]>,
    /// The same blocks interleaved for the int8 kernel, where it runs.
    #[cfg(target_arch = "x86_64")]
    packed: Option<vnni::Packed>,
    /// Whether the int8 kernel quantizes this product's activations in two parts.
    precise: bool,
}

impl Q8Matrix {
    /// Quantizes the row-major `(n, k)` matrix `w`: per block `d = amax / 127`,
    /// `q = round(w / d)`.
    #[cfg(test)]
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "quantize: {n} × {k} matrix expected");
        let mut m = Self::zeros(n, k);
        m.quantize_rows(0, w);
        m
    }

    /// Quantizes `parts` (`f32` matrices `(n_i, k)`) stacked by rows, reading each in place.
    pub fn stacked(parts: &[Tensor], kernel: Kernel, precise: bool) -> Result<Self> {
        let mut dims = Vec::with_capacity(parts.len());
        for p in parts {
            dims.push(p.dims2()?);
        }
        let k = dims.first().map_or(0, |d| d.1);
        if dims.iter().any(|d| d.1 != k) {
            return Err(EngineError::invalid(format!("stacked matrices of unequal widths: {dims:?}")));
        }
        let mut m = Self::zeros(dims.iter().map(|d| d.0).sum(), k);
        let mut first = 0;
        for (p, (n, _)) in parts.iter().zip(dims) {
            let p = p.contiguous()?;
            let (storage, layout) = p.storage_and_layout();
            let (start, end) = layout.contiguous_offsets().expect("contiguous");
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                return Err(EngineError::invalid("Q8_0 weights need CPU tensors"));
            };
            m.quantize_rows(first, &cpu.as_slice::<f32>()?[start..end]);
            first += n;
        }
        Ok(Self { precise, ..m.for_kernel(kernel) })
    }

    fn zeros(n: usize, k: usize) -> Self {
        let blocks = k.div_ceil(BLOCK);
        Self {
            n,
            k,
            blocks,
            scales: vec![0.0; n * blocks],
            quants: vec![[0; BLOCK]; n * blocks],
            #[cfg(target_arch = "x86_64")]
            packed: None,
            precise: false,
        }
    }

    /// The matrix laid out for `kernel` (the row-major blocks are dropped once interleaved).
    fn for_kernel(self, kernel: Kernel) -> Self {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Int8 => {
                let packed = vnni::Packed::new(self.n, self.blocks, &self.quants, &self.scales);
                Self { scales: Vec::new(), quants: Vec::new(), packed: Some(packed), ..self }
            }
            Kernel::F32 => self,
        }
    }

    /// Quantizes the rows `w` (row-major, `k` wide) into rows `first..` (in parallel).
    fn quantize_rows(&mut self, first: usize, w: &[f32]) {
        if self.blocks == 0 {
            return;
        }
        let (lo, hi) = (first * self.blocks, first * self.blocks + w.len() / self.k * self.blocks);
        self.scales[lo..hi]
            .par_chunks_mut(self.blocks)
            .zip(self.quants[lo..hi].par_chunks_mut(self.blocks))
            .zip(w.par_chunks(self.k))
            .for_each(|((d, q), row)| quantize_row(row, d, q));
    }

    /// The matrix back in `f32` (row-major `(n, k)`).
    #[cfg(test)]
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n * self.k);
        for (d, q) in self.scales.chunks(self.blocks.max(1)).zip(self.quants.chunks(self.blocks.max(1))) {
            let row = d.iter().zip(q).flat_map(|(&d, q)| q.iter().map(move |&v| d * f32::from(v)));
            out.extend(row.take(self.k));
        }
        out
    }

    /// `x · w^T` for `rows` rows of `x` (`rows × k`, row-major): `rows × n`, row-major, on the
    /// kernel the matrix is laid out for.
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.k, "matmul: {rows} rows of {} expected", self.k);
        let (n, kp, blocks) = (self.n, self.blocks * BLOCK, self.blocks);
        if rows == 0 || n == 0 || blocks == 0 {
            return vec![0.0; rows * n];
        }
        // Rows padded to whole blocks (zeros meet the zero padding of the weights).
        let padded: Vec<f32>;
        let x = if kp == self.k {
            x
        } else {
            padded = x
                .chunks_exact(self.k.max(1))
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, kp - self.k)))
                .collect();
            &padded
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &self.packed {
            return self.matmul_int8(packed, x, rows);
        }
        self.matmul_f32(pulp::as_arrays::<BLOCK, f32>(x).0, rows)
    }

    /// [`Q8Matrix::matmul`] on the int8 kernel, `x` padded to whole blocks. A decode step's few
    /// rows are split by groups of weight rows (each weight read from memory once), a prefill's
    /// many rows by bands of rows; each task writes its own pieces of the output rows.
    #[cfg(target_arch = "x86_64")]
    fn matmul_int8(&self, packed: &vnni::Packed, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, groups, threads) = (self.n, packed.groups(), rayon::current_num_threads());
        let xq = vnni::Activations::quantize(x, rows, self.blocks, self.precise);
        let mut out = vec![0f32; rows * n];
        if rows >= ROW_SPLIT {
            let band = rows.div_ceil(2 * threads);
            out.par_chunks_mut(band * n).enumerate().for_each(|(t, part)| {
                let mut pieces: Vec<&mut [f32]> = part.chunks_mut(n).collect();
                vnni::matmul(packed, 0..groups, &xq, t * band, &mut pieces);
            });
            return out;
        }
        let per_task = groups.div_ceil(threads);
        let tasks = groups.div_ceil(per_task);
        let mut pieces: Vec<Vec<&mut [f32]>> = (0..tasks).map(|_| Vec::with_capacity(rows)).collect();
        for row in out.chunks_mut(n) {
            let mut rest = row;
            for task in &mut pieces {
                let (piece, tail) = rest.split_at_mut((per_task * vnni::GROUP).min(rest.len()));
                task.push(piece);
                rest = tail;
            }
        }
        pieces.into_par_iter().enumerate().for_each(|(t, mut task)| {
            let first = t * per_task;
            vnni::matmul(packed, first..(first + per_task).min(groups), &xq, 0, &mut task);
        });
        out
    }

    /// [`Q8Matrix::matmul`] on the `f32` kernel, `xb` the rows padded to whole blocks, its parts
    /// in parallel.
    fn matmul_f32(&self, xb: &[[f32; BLOCK]], rows: usize) -> Vec<f32> {
        let (n, blocks, threads) = (self.n, self.blocks, rayon::current_num_threads());
        if rows >= ROW_SPLIT {
            // Many rows (a prefill): each task takes a band of rows and every weight (re-reading
            // the weights per band costs little next to the arithmetic), writing its rows of the
            // row-major result in place.
            let band = rows.div_ceil(2 * threads).next_multiple_of(TILE);
            let mut out = vec![0f32; rows * n];
            out.par_chunks_mut(band * n).zip(xb.par_chunks(band * blocks)).for_each(|(out, x)| {
                let layout = Layout { weight_stride: 1, row_stride: n };
                matmul_rows(&self.quants, &self.scales, blocks, x, out.len() / n, layout, out);
            });
            return out;
        }
        // Few rows (decoding): each task takes a run of weight rows, so that every weight is
        // read from memory once, and writes a transposed `(weights, rows)` block.
        let mut out_t = vec![0f32; n * rows];
        let per_task = n.div_ceil(4 * threads).max(MIN_TASK_ROWS);
        out_t.par_chunks_mut(per_task * rows).enumerate().for_each(|(t, out)| {
            let (first, count) = (t * per_task, out.len() / rows);
            let q = &self.quants[first * blocks..(first + count) * blocks];
            let d = &self.scales[first * blocks..(first + count) * blocks];
            matmul_rows(q, d, blocks, xb, rows, Layout { weight_stride: rows, row_stride: 1 }, out);
        });
        if rows == 1 {
            return out_t;
        }
        let mut out = vec![0f32; rows * n];
        for (j, col) in out_t.chunks_exact(rows).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                out[i * n + j] = v;
            }
        }
        out
    }
}

/// How a [`Q8Matrix`] product is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// The activations quantized to Q8_0 too and each block's products summed in integers, on
    /// weights interleaved by sixteen rows (`vnni.rs`: AVX-512 VNNI).
    #[cfg(target_arch = "x86_64")]
    Int8,
    /// The activations kept in `f32` and the weights widened to floats (AVX2/FMA, or scalar).
    F32,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if vnni::available() {
            return Kernel::Int8;
        }
        Kernel::F32
    }
}

/// Quantizes one row into its blocks' scales `d` and quants `q` (blocks past the row's end are
/// left as they are: zeros).
fn quantize_row(row: &[f32], d: &mut [f32], q: &mut [[i8; BLOCK]]) {
    let (whole, tail) = pulp::as_arrays::<BLOCK, f32>(row);
    let n = whole.len();
    quantize_blocks(whole, &mut d[..n], &mut q[..n]);
    if !tail.is_empty() {
        (d[n], q[n]) = quantize_block(tail);
    }
}

/// Quantizes whole blocks `x` into scales `d` and quants `q` (SIMD where the CPU has it).
pub(crate) fn quantize_blocks(x: &[[f32; BLOCK]], d: &mut [f32], q: &mut [[i8; BLOCK]]) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Some(simd) = pulp::x86::V3::try_new() {
        v3::quantize_blocks(simd, x, d, q);
        return;
    }
    for ((d, q), x) in d.iter_mut().zip(q).zip(x) {
        (*d, *q) = quantize_block(x);
    }
}

/// One block's scale and quants: `d = amax / 127`, `q = round(x / d)` (ties to even, as the
/// SIMD version rounds); zeros past `x`'s end.
fn quantize_block(x: &[f32]) -> (f32, [i8; BLOCK]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; BLOCK];
    for (q, &v) in q.iter_mut().zip(x) {
        // |v * inv| <= 127 (up to rounding; `as` saturates).
        *q = (v * inv).round_ties_even() as i8;
    }
    (d, q)
}

/// Where [`matmul_rows`] writes weight row `j` · activation row `i`:
/// `out[j * weight_stride + i * row_stride]`.
#[derive(Clone, Copy)]
struct Layout {
    weight_stride: usize,
    row_stride: usize,
}

/// Dot products of the weight rows in `q`/`d` (`blocks` blocks each) with `rows` activation rows
/// `xb` (`blocks` arrays each), written to `out` as `layout` says.
fn matmul_rows(
    q: &[[i8; BLOCK]],
    d: &[f32],
    blocks: usize,
    xb: &[[f32; BLOCK]],
    rows: usize,
    layout: Layout,
    out: &mut [f32],
) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Some(simd) = pulp::x86::V3::try_new() {
        v3::matmul_rows(simd, q, d, blocks, &xb[..rows * blocks], layout, out);
        return;
    }
    matmul_rows_scalar(q, d, blocks, &xb[..rows * blocks], layout, out);
}

/// [`matmul_rows`] without SIMD.
fn matmul_rows_scalar(
    q: &[[i8; BLOCK]],
    d: &[f32],
    blocks: usize,
    xb: &[[f32; BLOCK]],
    layout: Layout,
    out: &mut [f32],
) {
    for (j, (q, d)) in q.chunks_exact(blocks).zip(d.chunks_exact(blocks)).enumerate() {
        for (i, x) in xb.chunks_exact(blocks).enumerate() {
            out[j * layout.weight_stride + i * layout.row_stride] = dot_scalar(q, d, x);
        }
    }
}

/// The portable kernel: per block `t = Σ x q` then `acc += t d`.
fn dot_scalar(q: &[[i8; BLOCK]], d: &[f32], x: &[[f32; BLOCK]]) -> f32 {
    let mut acc = 0f32;
    for ((q, &d), x) in q.iter().zip(d).zip(x) {
        let t: f32 = q.iter().zip(x).map(|(&q, &x)| x * f32::from(q)).sum();
        acc += t * d;
    }
    acc
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod v3 {
    #[cfg(target_arch = "x86")]
    use std::arch::x86::__m256i;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::__m256i;

    use pulp::x86::V3;
    use pulp::{f32x8, i8x16, Simd};

    use super::{Layout, BLOCK, RUN, TILE};

    /// [`super::matmul_rows`] on AVX2/FMA.
    pub fn matmul_rows(
        simd: V3,
        q: &[[i8; BLOCK]],
        d: &[f32],
        blocks: usize,
        xb: &[[f32; BLOCK]],
        layout: Layout,
        out: &mut [f32],
    ) {
        simd.vectorize(Matmul { simd, q, d, blocks, xb, layout, out });
    }

    /// Quantizes whole blocks `x` into scales `d` and quants `q` on AVX2.
    pub fn quantize_blocks(simd: V3, x: &[[f32; BLOCK]], d: &mut [f32], q: &mut [[i8; BLOCK]]) {
        simd.vectorize(Quantize { simd, x, d, q });
    }

    // Kernel bodies for `V3::vectorize`, which runs them inside a function compiled with AVX2/FMA
    // enabled. They are structs with an `#[inline(always)]` `call`, not closures: LLVM may decline
    // to inline a closure's `call_once` (it did once the kernel grew), and the body is then
    // compiled without those features, every intrinsic a function call and ~30× slower.

    /// [`matmul_rows`]' body. The weight rows go in runs of [`RUN`] (about 80 KB, they stay in L2
    /// cache); for each run the activation rows go in tiles of up to [`TILE`] (at most 18 KB at
    /// SmolLM2's widths, they stay in L1) and each tile meets every weight row of the run. Tails run
    /// the same per-row code in smaller tiles.
    struct Matmul<'a> {
        simd: V3,
        q: &'a [[i8; BLOCK]],
        d: &'a [f32],
        blocks: usize,
        xb: &'a [[f32; BLOCK]],
        layout: Layout,
        out: &'a mut [f32],
    }

    impl pulp::NullaryFnOnce for Matmul<'_> {
        type Output = ();

        #[inline(always)]
        fn call(self) {
            let Matmul { simd, q, d, blocks, xb, layout, out } = self;
            let rows = xb.len() / blocks;
            for (run, (q, d)) in q.chunks(RUN * blocks).zip(d.chunks(RUN * blocks)).enumerate() {
                let mut i = 0;
                while i < rows {
                    let (x, first) = (&xb[i * blocks..], run * RUN * layout.weight_stride + i * layout.row_stride);
                    i += match rows - i {
                        TILE.. => tile_run::<TILE>(simd, q, d, blocks, x, layout, &mut out[first..]),
                        4.. => tile_run::<4>(simd, q, d, blocks, x, layout, &mut out[first..]),
                        2.. => tile_run::<2>(simd, q, d, blocks, x, layout, &mut out[first..]),
                        _ => tile_run::<1>(simd, q, d, blocks, x, layout, &mut out[first..]),
                    };
                }
            }
        }
    }

    struct Quantize<'a> {
        simd: V3,
        x: &'a [[f32; BLOCK]],
        d: &'a mut [f32],
        q: &'a mut [[i8; BLOCK]],
    }

    impl pulp::NullaryFnOnce for Quantize<'_> {
        type Output = ();

        #[inline(always)]
        fn call(self) {
            for ((d, q), x) in self.d.iter_mut().zip(self.q.iter_mut()).zip(self.x) {
                (*d, *q) = quantize_block(self.simd, x);
            }
        }
    }

    /// [`super::quantize_block`] of a whole block, on eight-float lanes.
    #[inline(always)]
    fn quantize_block(simd: V3, x: &[f32; BLOCK]) -> (f32, [i8; BLOCK]) {
        let v: [f32x8; 4] = pulp::cast(*x);
        let mut m = simd.abs_f32s(v[0]);
        for &v in &v[1..] {
            m = simd.max_f32s(m, simd.abs_f32s(v));
        }
        let d = simd.reduce_max_f32s(m) / 127.0;
        let inv = simd.splat_f32x8(if d > 0.0 { 1.0 / d } else { 0.0 });
        let mut r = [simd.splat_i32x8(0); 4];
        for (r, &v) in r.iter_mut().zip(&v) {
            *r = simd.convert_f32x8_to_i32x8(simd.round_f32x8(simd.mul_f32s(v, inv)));
        }
        // i32 → i16 → i8 with saturating packs, which interleave 128-bit halves: 32-bit group g
        // of the result holds bytes 4g.. of input `g % 4`, half `g / 4`; a permute restores order.
        let lo = simd.pack_with_signed_saturation_i32x8(r[0], r[1]);
        let hi = simd.pack_with_signed_saturation_i32x8(r[2], r[3]);
        let packed: __m256i = pulp::cast(simd.pack_with_signed_saturation_i16x16(lo, hi));
        let order: __m256i = pulp::cast([0i32, 4, 1, 5, 2, 6, 3, 7]);
        (d, pulp::cast(simd.avx2._mm256_permutevar8x32_epi32(packed, order)))
    }

    /// `R` activation rows `x` (`blocks` arrays each, consecutive) · every weight row of a run,
    /// written by `layout` from `out[0]`. Returns `R`.
    #[inline(always)]
    fn tile_run<const R: usize>(
        simd: V3,
        q: &[[i8; BLOCK]],
        d: &[f32],
        blocks: usize,
        x: &[[f32; BLOCK]],
        layout: Layout,
        out: &mut [f32],
    ) -> usize {
        let x = &x[..R * blocks];
        for (j, (q, d)) in q.chunks_exact(blocks).zip(d.chunks_exact(blocks)).enumerate() {
            for (r, v) in tile::<R>(simd, q, d, x, blocks).into_iter().enumerate() {
                out[j * layout.weight_stride + r * layout.row_stride] = v;
            }
        }
        R
    }

    /// `R` activation rows (`x`, `blocks` arrays each, consecutive) · one weight row. Per row and
    /// block: `t = x0 w0 + x1 w1 + x2 w2 + x3 w3` on
    /// eight-float lanes (`w` the widened quants), `acc = t d + acc`; then a fixed-order lane sum.
    #[inline(always)]
    fn tile<const R: usize>(simd: V3, q: &[[i8; BLOCK]], d: &[f32], x: &[[f32; BLOCK]], blocks: usize) -> [f32; R] {
        let mut acc = [simd.splat_f32x8(0.0); R];
        for (b, (q, &d)) in q.iter().zip(d).enumerate() {
            let parts: [[i8; 8]; 4] = pulp::cast(*q);
            let mut w = [simd.splat_f32x8(0.0); 4];
            for (w, &p) in w.iter_mut().zip(&parts) {
                let p: i8x16 = pulp::cast([p, [0; 8]]);
                *w = simd.convert_i32x8_to_f32x8(simd.convert_i8x16_to_i32x8(p));
            }
            let ds = simd.splat_f32x8(d);
            for (r, acc) in acc.iter_mut().enumerate() {
                let xs: [f32x8; 4] = pulp::cast(x[r * blocks + b]);
                let mut t = simd.mul_f32x8(xs[0], w[0]);
                t = simd.mul_add_f32x8(xs[1], w[1], t);
                t = simd.mul_add_f32x8(xs[2], w[2], t);
                t = simd.mul_add_f32x8(xs[3], w[3], t);
                *acc = simd.mul_add_f32x8(t, ds, *acc);
            }
        }
        let mut out = [0f32; R];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = simd.reduce_sum_f32s(a);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// `x · w^T` in `f64`.
    fn reference(x: &[f32], rows: usize, w: &[f32], n: usize) -> Vec<f32> {
        let k = w.len() / n;
        let mut out = vec![0f32; rows * n];
        for i in 0..rows {
            for j in 0..n {
                let s: f64 = (0..k).map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t])).sum();
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let (n, k) = (7, 80); // 80 = two blocks and a padded half block
        let mut w = random(n * k, 1);
        w[5] = 0.0;
        w[k..2 * k].fill(0.0); // an all-zero row: scale 0, exact zeros back
        let m = Q8Matrix::quantize(&w, n, k);
        let back = m.dequantize();
        assert_eq!(back.len(), w.len());
        for (j, (row, brow)) in w.chunks(k).zip(back.chunks(k)).enumerate() {
            for (b, (x, y)) in row.chunks(BLOCK).zip(brow.chunks(BLOCK)).enumerate() {
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                for (u, v) in x.iter().zip(y) {
                    assert!((u - v).abs() <= d * 0.5 + 1e-7, "row {j} block {b}: {u} → {v} (step {d})");
                }
                // The block's largest magnitude is represented exactly (up to rounding of d).
                assert!(x.iter().zip(y).any(|(u, v)| u.abs() == amax && (u - v).abs() <= amax * 1e-6));
            }
        }
        assert!(back[k..2 * k].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn kernel_matches_reference_product_of_the_dequantized_matrix() {
        for (rows, n, k) in [(1, 5, 32), (3, 40, 96), (8, 17, 576), (13, 33, 48), (21, 3, 1536), (70, 150, 64)] {
            let w = random(n * k, 2);
            let x = random(rows * k, 3);
            let m = Q8Matrix::quantize(&w, n, k);
            let want = reference(&x, rows, &m.dequantize(), n);
            let got = m.matmul(&x, rows);
            // f32 sums of k products of magnitude <= 1: relative error ~ k * 2^-24.
            let tol = k as f32 * 1e-6;
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= tol, "rows={rows} n={n} k={k}: {g} vs {e}");
            }
            // And against the f32 matrix itself: each weight is off by at most d/2 <= amax/254.
            let exact = reference(&x, rows, &w, n);
            let bound = k as f32 / 254.0;
            assert!(got.iter().zip(&exact).all(|(g, e)| (g - e).abs() <= bound));
        }
    }

    #[test]
    fn portable_kernel_agrees_with_the_dispatched_one() {
        let (rows, n, k) = (11, 9, 160);
        let m = Q8Matrix::quantize(&random(n * k, 8), n, k);
        let x = random(rows * k, 9);
        let xb = pulp::as_arrays::<BLOCK, f32>(&x).0;
        let (mut simd, mut scalar) = (vec![0f32; n * rows], vec![0f32; n * rows]);
        let layout = Layout { weight_stride: rows, row_stride: 1 };
        matmul_rows(&m.quants, &m.scales, m.blocks, xb, rows, layout, &mut simd);
        matmul_rows_scalar(&m.quants, &m.scales, m.blocks, xb, layout, &mut scalar);
        // Same formula, different summation order inside a block.
        assert!(simd.iter().zip(&scalar).all(|(a, b)| (a - b).abs() <= k as f32 * 1e-6), "{simd:?} vs {scalar:?}");
        // The quantizers agree exactly (both round ties to even).
        let w = random(4 * BLOCK, 10);
        for x in w.chunks_exact(BLOCK) {
            let simd = Q8Matrix::quantize(x, 1, BLOCK);
            assert_eq!((simd.scales[0], simd.quants[0]), quantize_block(x));
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_neighbours() {
        let (n, k) = (70, 96);
        for m in layouts(&random(n * k, 4), n, k) {
            // 75 rows split by rows across threads, the parts (under ROW_SPLIT) by weights.
            let x = random(75 * k, 5);
            let all = m.matmul(&x, 75);
            for (i, start) in [0usize, 3, 7, 8, 15, 18, 74, 10].into_iter().enumerate() {
                let len = [1, 2, 4, 9, 3, 1, 1, 63][i];
                let part = m.matmul(&x[start * k..(start + len) * k], len);
                assert_eq!(part, all[start * n..(start + len) * n], "rows {start}..{}", start + len);
            }
        }
    }

    /// The matrix in every layout this CPU multiplies: row-major for the `f32` kernel, and
    /// interleaved for the int8 one where it runs.
    fn layouts(w: &[f32], n: usize, k: usize) -> Vec<Q8Matrix> {
        let mut all = vec![Q8Matrix::quantize(w, n, k)];
        #[cfg(target_arch = "x86_64")]
        if vnni::available() {
            all.push(Q8Matrix::quantize(w, n, k).for_kernel(Kernel::Int8));
        } else {
            eprintln!("this CPU lacks AVX-512 VNNI: the int8 kernel is not tested here");
        }
        all
    }

    /// The int8 kernel gives exactly the bits of its scalar statement, for every way a product is
    /// split (tiles of 8, 4, 2, 1 rows; groups across tasks; bands of rows) and for widths and
    /// heights that are not multiples of a block or a group; and it stays within the error that
    /// quantizing both operands allows.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn int8_kernel_computes_its_scalar_statement() {
        if !vnni::available() {
            eprintln!("this CPU lacks AVX-512 VNNI: skipped");
            return;
        }
        let shapes = [(1, 5, 32), (3, 40, 96), (15, 37, 80), (8, 17, 576), (70, 150, 64), (2, 1, 1536)];
        for ((rows, n, k), precise) in shapes.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            let w = random(n * k, 12);
            let rowwise = Q8Matrix::quantize(&w, n, k);
            let m = Q8Matrix { precise, ..Q8Matrix::quantize(&w, n, k).for_kernel(Kernel::Int8) };
            let packed = m.packed.as_ref().expect("packed");
            for j in 0..n {
                let (q, d) = packed.row(j);
                assert_eq!(
                    (&q[..], &d[..]),
                    (&rowwise.quants[j * m.blocks..][..m.blocks], &rowwise.scales[j * m.blocks..][..m.blocks])
                );
            }
            let x = random(rows * k, 13);
            let got = m.matmul(&x, rows);
            let kp = m.blocks * BLOCK;
            let xp: Vec<f32> =
                x.chunks(k).flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, kp - k))).collect();
            let xq = vnni::Activations::quantize(&xp, rows, m.blocks, precise);
            for i in 0..rows {
                for j in 0..n {
                    assert_eq!(
                        got[i * n + j],
                        vnni::reference(packed, &xq, i, j),
                        "rows={rows} n={n} k={k}: ({i}, {j})"
                    );
                }
            }
            // Each weight is off by at most 1/254 of its block's largest magnitude (here at most
            // 1), each activation by 1/254 too, or 1/(254 · 508) when precise: k products, each
            // off by at most the sum of the two and their product.
            let exact = reference(&x, rows, &w, n);
            let ex = if precise { 1.0 / 254.0 / 508.0 } else { 1.0 / 254.0 };
            let bound = k as f32 * (1.0 / 254.0 + ex + ex / 254.0) + 1e-4;
            assert!(got.iter().zip(&exact).all(|(g, e)| (g - e).abs() <= bound), "rows={rows} n={n} k={k}");
            assert!(got.iter().zip(&exact).any(|(g, e)| g != e), "the activations really are quantized");
        }
    }

    #[test]
    fn weights_in_either_format_multiply_alike() {
        let (n, k, rows) = (24, 64, 3);
        let w = random(n * k, 6);
        let t = Tensor::from_vec(w.clone(), (n, k), &candle_core::Device::Cpu).unwrap();
        let x = random(rows * k, 7);
        let f = Weights::stacked(std::slice::from_ref(&t), WeightFormat::F32, false).unwrap().matmul(&x, rows).unwrap();
        let q = Weights::stacked(&[t], WeightFormat::Q8_0, false).unwrap().matmul(&x, rows).unwrap();
        // Weights off by at most 1/254 of their block's largest (and, on the int8 kernel, the
        // activations as well).
        assert!(f.iter().zip(&q).all(|(a, b)| (a - b).abs() <= 2.0 * k as f32 / 254.0));
        assert!(f.iter().zip(&q).any(|(a, b)| a != b), "Q8_0 is really quantized");
    }
}
