//! Q8_0 × Q8_0 products on AVX-512 VNNI: the activations quantized like the weights (blocks of 32,
//! one scale each), each block's 32 products summed exactly in integers.
//!
//! Why: the `f32` kernel of `quant.rs` widens every weight to a float and spends five FMAs per
//! block, row and weight row. `vpdpbusd` multiplies 64 byte pairs and adds them in fours into
//! sixteen 32-bit lanes in one instruction. Here each lane belongs to one of sixteen weight rows
//! (a *group*), so that after eight `vpdpbusd` a lane holds its row's whole block sum: the weights
//! are stored interleaved for that ([`Packed`]: per group and block, eight registers of sixteen
//! rows × four bytes), and each four bytes of the activation block are broadcast to all lanes. Per
//! activation row, block and group the float work is then three instructions for sixteen weight
//! rows (the conversion, the scales' product, one FMA), and the sixteen lanes are sixteen results
//! of the output row, stored as they are: no horizontal sums, no transposes.
//!
//! `vpdpbusd` takes one unsigned operand: the weights are stored as `q + 128` (`u8`), and the
//! surplus `128 Σx` of an activation block is subtracted by starting its lanes from `-128 Σx`. The
//! integer sums are exact, so the only error beyond the weights' is the activations' rounding (at
//! most `d / 2` per value, `d` = the block's largest magnitude / 127), as in llama.cpp's Q8_0 dot
//! product. Per output value and block: `acc = fma(float(sum), dw * dx, acc)`, blocks in order;
//! every activation row goes through the same instructions whatever the rows beside it, so a row's
//! result does not depend on its batch (and [`reference`] computes the same bits in scalar code).
//!
//! The crate's `unsafe` here: the intrinsics are called from functions compiled with AVX-512
//! enabled (`#[target_feature]`), entered only after [`available`] saw those features on this CPU;
//! loads and stores go through references to whole arrays, so they stay in bounds.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512, __m512i, _mm512_add_epi32, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_loadu_si512, _mm512_mul_ps, _mm512_mullo_epi32, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_storeu_ps,
};
use std::ops::Range;
use std::sync::OnceLock;

use super::quant::BLOCK;

/// Weight rows per group: one per 32-bit lane of a 512-bit register.
pub(crate) const GROUP: usize = 16;

/// Four-byte steps per block.
const STEPS: usize = BLOCK / 4;

/// Most activation rows that share one pass over a group's weights.
const TILE: usize = 8;

/// Whether this CPU runs the kernel (AVX-512 F, BW and VNNI); detected once. Setting
/// `FLYWHEEL_NO_VNNI` turns it off (the `f32` kernel then runs, as on CPUs without it).
pub(crate) fn available() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        std::env::var_os("FLYWHEEL_NO_VNNI").is_none()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    })
}

/// A Q8_0 matrix `(n, k)` interleaved for the kernel: rows in groups of [`GROUP`] (the last one
/// zero-padded), each group's blocks in order; per group and block, step `s` holds bytes
/// `4s..4s + 4` of the block of each of the sixteen rows (lane `l` = row `l`), as `q + 128`.
pub(crate) struct Packed {
    n: usize,
    blocks: usize,
    /// `groups * blocks` entries, group-major.
    quants: Vec<[[u8; 4 * GROUP]; STEPS]>,
    /// The sixteen rows' scales per group and block.
    scales: Vec<[f32; GROUP]>,
}

impl Packed {
    /// Interleaves the row-major blocks `q` and scales `d` of `n` rows of `blocks` blocks each.
    pub fn new(n: usize, blocks: usize, q: &[[i8; BLOCK]], d: &[f32]) -> Self {
        assert!(q.len() == n * blocks && d.len() == n * blocks, "pack: {n} rows of {blocks} blocks expected");
        let groups = n.div_ceil(GROUP);
        let mut quants = vec![[[128u8; 4 * GROUP]; STEPS]; groups * blocks];
        let mut scales = vec![[0f32; GROUP]; groups * blocks];
        for row in 0..n {
            let (g, lane) = (row / GROUP, row % GROUP);
            for b in 0..blocks {
                let (src, entry) = (&q[row * blocks + b], &mut quants[g * blocks + b]);
                for (s, step) in entry.iter_mut().enumerate() {
                    for t in 0..4 {
                        step[4 * lane + t] = (src[4 * s + t] as u8) ^ 0x80;
                    }
                }
                scales[g * blocks + b][lane] = d[row * blocks + b];
            }
        }
        Self { n, blocks, quants, scales }
    }

    /// Number of row groups.
    pub fn groups(&self) -> usize {
        self.quants.len() / self.blocks.max(1)
    }

    /// Row `row`'s blocks and scales back (for tests).
    #[cfg(test)]
    pub fn row(&self, row: usize) -> (Vec<[i8; BLOCK]>, Vec<f32>) {
        let (g, lane) = (row / GROUP, row % GROUP);
        (0..self.blocks)
            .map(|b| {
                let entry = &self.quants[g * self.blocks + b];
                let q = std::array::from_fn(|i| (entry[i / 4][4 * lane + i % 4] ^ 0x80) as i8);
                (q, self.scales[g * self.blocks + b][lane])
            })
            .unzip()
    }
}

/// Activation rows in Q8_0 blocks, as the kernel reads them: per row and block, the 32 quants as
/// eight little-endian words (each broadcast to every lane), the scale, and `-128 Σq`.
///
/// *Precise* activations carry a second set of quants, the rounding error of the first quantized
/// again at 1/254 of the step (`x ≈ d (q + q' / 254)`): the kernel then sums `254 Σwq + Σwq'` in
/// integers (twice the `vpdpbusd` work), for an error of at most `d / 508` per value instead of
/// `d / 2`, close to `f32` products with the Q8_0 weights.
pub(crate) struct Activations {
    blocks: usize,
    quants: Vec<[i32; STEPS]>,
    scales: Vec<f32>,
    starts: Vec<i32>,
    /// The second quants and their starts, for precise activations.
    low: Option<(Vec<[i32; STEPS]>, Vec<i32>)>,
}

/// The words and start of one block's quants.
fn words(q: &[i8; BLOCK]) -> ([i32; STEPS], i32) {
    let words = std::array::from_fn(|s| {
        i32::from_le_bytes([q[4 * s], q[4 * s + 1], q[4 * s + 2], q[4 * s + 3]].map(|v| v as u8))
    });
    (words, -128 * q.iter().map(|&v| i32::from(v)).sum::<i32>())
}

impl Activations {
    /// Quantizes `rows` rows of `x` (each `blocks * 32` wide, row-major), `precise` or not.
    pub fn quantize(x: &[f32], rows: usize, blocks: usize, precise: bool) -> Self {
        assert_eq!(x.len(), rows * blocks * BLOCK, "quantize: {rows} rows of {} expected", blocks * BLOCK);
        let whole = pulp::as_arrays::<BLOCK, f32>(x).0;
        let (mut scales, mut q) = (vec![0f32; whole.len()], vec![[0i8; BLOCK]; whole.len()]);
        super::quant::quantize_blocks(whole, &mut scales, &mut q);
        let (quants, starts) = q.iter().map(words).unzip();
        let low = precise.then(|| {
            assert!(available(), "int8 activations need AVX-512 F, BW and VNNI");
            // SAFETY: `available()` checked that this CPU has every feature `residuals` is
            // compiled for.
            let low = unsafe { residuals(whole, &q, &mut scales) };
            low.into_iter().map(|q| words(&q)).unzip()
        });
        Self { blocks, quants, scales, starts, low }
    }
}

/// The second quants of precise activations: each block's rounding error `x - d q` in steps of
/// `d / 254` (within ±127: the error is at most half a step of `d`); the scales become `d / 254`.
/// Compiled with AVX-512 so that the rounding vectorizes (elsewhere it is a call per value).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn residuals(x: &[[f32; BLOCK]], q: &[[i8; BLOCK]], scales: &mut [f32]) -> Vec<[i8; BLOCK]> {
    let mut low = Vec::with_capacity(x.len());
    for ((x, q), d) in x.iter().zip(q).zip(scales) {
        let inv = if *d > 0.0 { 254.0 / *d } else { 0.0 };
        let mut ql = [0i8; BLOCK];
        for ((ql, &x), &q) in ql.iter_mut().zip(x).zip(q) {
            *ql = ((x - *d * f32::from(q)) * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        low.push(ql);
        *d /= 254.0;
    }
    low
}

/// `x · w^T` for the groups `groups` of `w` and every row of `out`: `out[r]` receives activation
/// row `first + r`'s products with the rows of those groups (as many as it is long, at most
/// `GROUP * groups.len()`).
pub(crate) fn matmul(w: &Packed, groups: Range<usize>, x: &Activations, first: usize, out: &mut [&mut [f32]]) {
    assert!(available(), "the VNNI kernel needs AVX-512 F, BW and VNNI");
    assert!(x.blocks == w.blocks && groups.end <= w.groups() && first + out.len() <= x.scales.len() / w.blocks.max(1));
    assert!(out
        .iter()
        .all(|o| o.len() <= GROUP * groups.len() && o.len() + GROUP * groups.start <= w.n.next_multiple_of(GROUP)));
    // SAFETY: `available()` checked that this CPU has every feature `run` is compiled for.
    unsafe { run(w, groups, x, first, out) }
}

/// [`matmul`]'s body: for each group, the activation rows in tiles of up to [`TILE`], each tile
/// meeting every block of the group (about 10-25 KB at SmolLM2's widths: they stay in L1).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn run(w: &Packed, groups: Range<usize>, x: &Activations, first: usize, out: &mut [&mut [f32]]) {
    let blocks = w.blocks;
    let rows = out.len();
    for (i, g) in groups.enumerate() {
        let (wq, wd) = (&w.quants[g * blocks..][..blocks], &w.scales[g * blocks..][..blocks]);
        let mut r = 0;
        while r < rows {
            let at = (first + r) * blocks;
            let high = (&x.quants[at..], &x.starts[at..]);
            let xd = &x.scales[at..];
            let out = &mut out[r..];
            r += match (&x.low, rows - r) {
                (None, TILE..) => store(tile::<TILE, false>(wq, wd, high, high, xd, blocks), out, i),
                (None, 4..) => store(tile::<4, false>(wq, wd, high, high, xd, blocks), out, i),
                (None, 2..) => store(tile::<2, false>(wq, wd, high, high, xd, blocks), out, i),
                (None, _) => store(tile::<1, false>(wq, wd, high, high, xd, blocks), out, i),
                (Some((lq, ls)), n) => {
                    let low = (&lq[at..], &ls[at..]);
                    match n {
                        TILE.. => store(tile::<TILE, true>(wq, wd, high, low, xd, blocks), out, i),
                        4.. => store(tile::<4, true>(wq, wd, high, low, xd, blocks), out, i),
                        2.. => store(tile::<2, true>(wq, wd, high, low, xd, blocks), out, i),
                        _ => store(tile::<1, true>(wq, wd, high, low, xd, blocks), out, i),
                    }
                }
            };
        }
    }
}

/// Writes the `R` rows of sixteen results to the `i`-th sixteen columns of `out[..R]` (fewer where
/// a row ends sooner). Returns `R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn store<const R: usize>(sums: [__m512; R], out: &mut [&mut [f32]], i: usize) -> usize {
    for (s, o) in sums.into_iter().zip(out.iter_mut()) {
        let mut v = [0f32; GROUP];
        // SAFETY: `v` has room for the sixteen floats stored.
        unsafe { _mm512_storeu_ps(v.as_mut_ptr(), s) };
        let from = (GROUP * i).min(o.len());
        let o = &mut o[from..];
        let len = o.len().min(GROUP);
        o[..len].copy_from_slice(&v[..len]);
    }
    R
}

/// `R` activation rows (`blocks` blocks each, consecutive: quants and starts `high`, scales `xd`)
/// · one group's sixteen weight rows: per block and row, `p = -128 Σx + Σ_s vpdpbusd(w_s, x_s)`
/// (exact; with `PRECISE`, `254 p + p'` of the second quants `low`), then
/// `acc = fma(float(p), dw * dx, acc)` on the sixteen lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn tile<const R: usize, const PRECISE: bool>(
    wq: &[[[u8; 4 * GROUP]; STEPS]],
    wd: &[[f32; GROUP]],
    (xq, xs): (&[[i32; STEPS]], &[i32]),
    (lq, ls): (&[[i32; STEPS]], &[i32]),
    xd: &[f32],
    blocks: usize,
) -> [__m512; R] {
    let mut acc: [__m512; R] = [_mm512_setzero_ps(); R];
    for (b, (wq, wd)) in wq.iter().zip(wd).enumerate() {
        let mut ws = [_mm512_set1_epi32(0); STEPS];
        for (w, step) in ws.iter_mut().zip(wq) {
            // SAFETY: `step` is 64 readable bytes; the load is unaligned.
            *w = unsafe { _mm512_loadu_si512(step.as_ptr().cast()) };
        }
        // SAFETY: `wd` is 16 readable floats; the load is unaligned.
        let dw = unsafe { _mm512_loadu_ps(wd.as_ptr()) };
        let mut p: [__m512i; R] = [_mm512_set1_epi32(0); R];
        for (r, p) in p.iter_mut().enumerate() {
            *p = _mm512_set1_epi32(xs[r * blocks + b]);
        }
        for (s, &w) in ws.iter().enumerate() {
            for (r, p) in p.iter_mut().enumerate() {
                *p = _mm512_dpbusd_epi32(*p, w, _mm512_set1_epi32(xq[r * blocks + b][s]));
            }
        }
        if PRECISE {
            let mut pl: [__m512i; R] = [_mm512_set1_epi32(0); R];
            for (r, pl) in pl.iter_mut().enumerate() {
                *pl = _mm512_set1_epi32(ls[r * blocks + b]);
            }
            for (s, &w) in ws.iter().enumerate() {
                for (r, pl) in pl.iter_mut().enumerate() {
                    *pl = _mm512_dpbusd_epi32(*pl, w, _mm512_set1_epi32(lq[r * blocks + b][s]));
                }
            }
            for (p, &pl) in p.iter_mut().zip(&pl) {
                *p = _mm512_add_epi32(_mm512_mullo_epi32(*p, _mm512_set1_epi32(254)), pl);
            }
        }
        for (r, (acc, &p)) in acc.iter_mut().zip(&p).enumerate() {
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd[r * blocks + b]));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, *acc);
        }
    }
    acc
}

/// The kernel's arithmetic in scalar code, for tests: activation row `r` · weight row `j`, the
/// same bits as [`matmul`].
#[cfg(test)]
pub(crate) fn reference(w: &Packed, x: &Activations, r: usize, j: usize) -> f32 {
    let (q, d) = w.row(j);
    let mut acc = 0f32;
    for b in 0..w.blocks {
        let dot = |words: &[i32; STEPS]| -> i32 {
            let xs = words.iter().flat_map(|v| v.to_le_bytes().map(|b| i32::from(b as i8)));
            q[b].iter().zip(xs).map(|(&w, x)| i32::from(w) * x).sum()
        };
        let mut sum = dot(&x.quants[r * w.blocks + b]);
        if let Some((low, _)) = &x.low {
            sum = 254 * sum + dot(&low[r * w.blocks + b]);
        }
        let dot = sum;
        acc = (dot as f32).mul_add(d[b] * x.scales[r * w.blocks + b], acc);
    }
    acc
}
