//! Causal attention over packed sequences, forward and backward, with grouped key/value heads.
//!
//! A batch is its sequences laid end to end (no padding): sequence `s` owns rows `seqs[s]` of
//! `q` `(tokens, heads · hd)`, `k`, `v` `(tokens, kv_heads · hd)`, and attends only inside them.
//! Sequences run in parallel; inside one, each head's scores are a gemm into a scratch square.
//! The forward pass keeps only each row's log-sum-exp; the backward pass rebuilds the
//! probabilities from it (as FlashAttention does), so no `tokens × tokens` tensor outlives a head.

use std::ops::Range;

use rayon::prelude::*;

use crate::gemm::{matmul, MatMut, MatRef};

/// Head counts and width, the query scale and the sliding window of one layer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The scores' scale (`head_dim^-1/2`, or the family's).
    pub scale: f32,
    /// The most recent keys (itself included) a query sees, `None` for all before it.
    pub window: Option<usize>,
}

impl Heads {
    fn q_width(self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_width(self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn scale(self) -> f32 {
        self.scale
    }
}

/// Cuts `data` (rows of `width`) into one mutable block per sequence.
fn split_rows<'a>(mut data: &'a mut [f32], seqs: &[Range<usize>], width: usize) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(seqs.len());
    let mut at = 0;
    for s in seqs {
        debug_assert_eq!(s.start, at, "sequences are contiguous");
        let (head, rest) = std::mem::take(&mut data).split_at_mut(s.len() * width);
        out.push(head);
        data = rest;
        at = s.end;
    }
    out
}

/// How a row of probabilities is normalised.
enum Norm<'a> {
    /// Compute each row's log-sum-exp and store it at `[i]` (forward).
    Compute(&'a mut [f32]),
    /// Use the stored log-sum-exp of row `i`, at `[i * stride]` (backward).
    Given { lse: &'a [f32], stride: usize },
}

/// Fills `probs` (`n × n`) with the causal softmax of `scale · q kᵀ` for one head of one sequence
/// (zeros above the diagonal, and before the window where there is one).
#[allow(clippy::too_many_arguments)]
fn probabilities(
    probs: &mut [f32],
    q: MatRef<'_>,
    k: MatRef<'_>,
    scale: f32,
    window: Option<usize>,
    n: usize,
    mut norm: Norm<'_>,
) {
    matmul(MatMut::new(probs, n, n), q, k.t(), scale, false, false);
    for (i, row) in probs.chunks_exact_mut(n).enumerate() {
        let first = window.map_or(0, |w| (i + 1).saturating_sub(w));
        let (seen, masked) = row.split_at_mut(i + 1);
        masked.fill(0.0);
        let (before, live) = seen.split_at_mut(first);
        before.fill(0.0);
        let lse = match &mut norm {
            Norm::Given { lse, stride } => lse[i * *stride],
            Norm::Compute(out) => {
                let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = live.iter().map(|s| (s - max).exp()).sum();
                out[i] = max + sum.ln();
                out[i]
            }
        };
        for s in live.iter_mut() {
            *s = (*s - lse).exp();
        }
    }
}

/// Scratch squares, one pair per sequence, kept between calls.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    squares: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Scratch {
    fn take(&mut self, seqs: &[Range<usize>]) -> &mut [(Vec<f32>, Vec<f32>)] {
        self.squares.resize_with(seqs.len().max(self.squares.len()), Default::default);
        for (s, (a, b)) in seqs.iter().zip(&mut self.squares) {
            a.resize(s.len() * s.len(), 0.0);
            b.resize(s.len() * s.len(), 0.0);
        }
        &mut self.squares[..seqs.len()]
    }
}

/// `o` `(tokens, heads · hd)` = causal softmax(`scale · q kᵀ`) `v` per sequence and head, and
/// `lse` `(tokens, heads)`, each row's log-sum-exp of scores.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    shape: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[Range<usize>],
    o: &mut [f32],
    lse: &mut [f32],
    scratch: &mut Scratch,
) {
    let (qw, kw, hd) = (shape.q_width(), shape.kv_width(), shape.head_dim);
    let group = shape.heads / shape.kv_heads;
    let os = split_rows(o, seqs, qw);
    let ls = split_rows(lse, seqs, shape.heads);
    let squares = scratch.take(seqs);
    seqs.par_iter().zip(os).zip(ls).zip(squares).for_each(|(((s, o), lse), (probs, row_lse))| {
        let n = s.len();
        for h in 0..shape.heads {
            let kh = h / group;
            let qh = MatRef::strided(&q[s.start * qw + h * hd..], n, hd, qw);
            let kk = MatRef::strided(&k[s.start * kw + kh * hd..], n, hd, kw);
            let vv = MatRef::strided(&v[s.start * kw + kh * hd..], n, hd, kw);
            probabilities(probs, qh, kk, shape.scale(), shape.window, n, Norm::Compute(&mut row_lse[..n]));
            for (i, &l) in row_lse[..n].iter().enumerate() {
                lse[i * shape.heads + h] = l;
            }
            matmul(MatMut::strided(&mut o[h * hd..], n, hd, qw), MatRef::new(probs, n, n), vv, 1.0, false, false);
        }
    });
}

/// What the forward pass kept: `q`, `k` (rotated), `v`, its output `o` and the rows'
/// log-sum-exp `lse`.
#[derive(Clone, Copy)]
pub(super) struct Saved<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub o: &'a [f32],
    pub lse: &'a [f32],
}

/// The backward pass of [`forward`]: from `dout` (the gradient of `o`) to `dq`, `dk`, `dv`
/// (overwritten). With `P` the probabilities and `D = rowsum(dout · o)`:
/// `dV = Pᵀ dout`, `dS = P (dout Vᵀ − D)`, `dQ = scale · dS K`, `dK = scale · dSᵀ Q`, the last
/// two summed over the query heads that share a key/value head.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    shape: Heads,
    saved: Saved<'_>,
    dout: &[f32],
    seqs: &[Range<usize>],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    scratch: &mut Scratch,
) {
    let Saved { q, k, v, o, lse } = saved;
    let (qw, kw, hd, scale) = (shape.q_width(), shape.kv_width(), shape.head_dim, shape.scale());
    let group = shape.heads / shape.kv_heads;
    let (dqs, dks, dvs) = (split_rows(dq, seqs, qw), split_rows(dk, seqs, kw), split_rows(dv, seqs, kw));
    let squares = scratch.take(seqs);
    seqs.par_iter().zip(dqs).zip(dks).zip(dvs).zip(squares).for_each(|((((s, dq), dk), dv), (probs, dprobs))| {
        let n = s.len();
        let dprobs = &mut dprobs[..n * n];
        for h in 0..shape.heads {
            let kh = h / group;
            let first = h % group == 0;
            let qh = MatRef::strided(&q[s.start * qw + h * hd..], n, hd, qw);
            let kk = MatRef::strided(&k[s.start * kw + kh * hd..], n, hd, kw);
            let vv = MatRef::strided(&v[s.start * kw + kh * hd..], n, hd, kw);
            let dh = MatRef::strided(&dout[s.start * qw + h * hd..], n, hd, qw);
            let norm = Norm::Given { lse: &lse[s.start * shape.heads + h..], stride: shape.heads };
            probabilities(&mut probs[..n * n], qh, kk, scale, shape.window, n, norm);
            let p = MatRef::new(&probs[..n * n], n, n);
            matmul(MatMut::strided(&mut dv[kh * hd..], n, hd, kw), p.t(), dh, 1.0, !first, false);
            matmul(MatMut::new(dprobs, n, n), dh, vv.t(), 1.0, false, false);
            for (i, (ds, p)) in dprobs.chunks_exact_mut(n).zip(probs.chunks_exact(n)).enumerate() {
                let row = (s.start + i) * qw + h * hd;
                let d: f32 = dout[row..row + hd].iter().zip(&o[row..row + hd]).map(|(a, b)| a * b).sum();
                for (ds, &p) in ds.iter_mut().zip(p) {
                    *ds = p * (*ds - d);
                }
            }
            let ds = MatRef::new(dprobs, n, n);
            matmul(MatMut::strided(&mut dq[h * hd..], n, hd, qw), ds, kk, scale, false, false);
            matmul(MatMut::strided(&mut dk[kh * hd..], n, hd, kw), ds.t(), qh, scale, !first, false);
        }
    });
}
