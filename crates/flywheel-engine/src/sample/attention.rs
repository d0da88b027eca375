//! Decode-step attention for many sequences at once, reading each cached level that several of
//! them share once for all of them.
//!
//! Why: STaR samples k completions of each prompt after a few-shot preamble of some 330 tokens,
//! which every sequence's KV cache shares ([`KvCache`] levels). Attending sequence by sequence
//! reads the preamble's keys and values once per sequence and step (about 20 MB for SmolLM2, so
//! 64 sequences stream 1.3 GB per step from L3 cache or memory), and attention became the larger
//! part of sampling. Here the sequences' levels are grouped by identity: a shared level is walked
//! in blocks of keys, and each block, loaded once, serves every sequence of the group.
//!
//! A sequence's arithmetic is the same whichever sequences share its levels: each score is one
//! [`dot_simd`] of the query head and the key, each head's softmax runs over the sequence's own
//! row of scores, and each output is summed key by key in position order. So batching leaves
//! results bit for bit as they are alone (`infer.rs` tests this).

use std::collections::HashMap;

use crate::sample::kernels::{dot_simd, softmax_from, HeadShape};
use crate::sample::kv_cache::KvCache;

/// Keys per block of a shared level: 32 keys of SmolLM2's three key/value heads are 24 KB of keys
/// (or values), which stay in L1 cache while every sequence of the group uses them.
const KEYS_PER_BLOCK: usize = 32;

/// One sequence's single new row: its query (all heads), its cache (the new key and value already
/// appended) and where its attention output goes (all heads).
pub(crate) struct DecodeRow<'a> {
    pub q: &'a [f32],
    pub cache: &'a KvCache,
    pub out: &'a mut [f32],
}

/// One level of the rows' caches, and the rows that read it.
struct Level<'a> {
    k: &'a [f32],
    v: &'a [f32],
    /// Position of the level's first key in each of its rows' caches (the same for all: a level
    /// is shared with all the levels before it).
    first: usize,
    rows: Vec<usize>,
}

/// Attention of each row's query over its whole cache in `layer`; `scores` is scratch space.
#[inline(always)]
pub(crate) fn attend_rows<S: pulp::Simd>(
    simd: S,
    shape: HeadShape,
    layer: usize,
    rows: &mut [DecodeRow<'_>],
    scores: &mut Vec<f32>,
) {
    let (hd, heads) = (shape.head_dim, shape.heads);
    let kvw = shape.kv_heads * hd;
    let group = heads / shape.kv_heads;
    let scale = shape.scale;

    // The levels, in the order first met: every row meets its own levels in position order, and a
    // level is always met after the ones it extends, so each row's levels stay in order below.
    let mut levels: Vec<Level<'_>> = Vec::new();
    let mut index: HashMap<(usize, usize), usize> = HashMap::new();
    let mut keys = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        let mut first = 0;
        for (k, v) in row.cache.segments(layer) {
            let n = k.len() / kvw;
            if n > 0 {
                let at = *index.entry((k.as_ptr() as usize, k.len())).or_insert_with(|| {
                    levels.push(Level { k, v, first, rows: Vec::new() });
                    levels.len() - 1
                });
                levels[at].rows.push(r);
            }
            first += n;
        }
        keys.push(first);
    }
    // Row r's scores: `heads × keys[r]` from `offsets[r]`.
    let offsets: Vec<usize> = keys.iter().scan(0, |at, &n| Some(std::mem::replace(at, *at + heads * n))).collect();
    scores.clear();
    scores.resize(keys.iter().map(|n| heads * n).sum(), 0.0);

    for level in &levels {
        let n = level.k.len() / kvw;
        for start in (0..n).step_by(KEYS_PER_BLOCK) {
            let end = (start + KEYS_PER_BLOCK).min(n);
            for &r in &level.rows {
                let (q, row_keys) = (rows[r].q, keys[r]);
                let s = &mut scores[offsets[r]..][..heads * row_keys];
                for j in start..end {
                    let key = &level.k[j * kvw..][..kvw];
                    for (h, qh) in q.chunks_exact(hd).enumerate() {
                        let kh = &key[h / group * hd..][..hd];
                        s[h * row_keys + level.first + j] = dot_simd(simd, qh, kh) * scale;
                    }
                }
            }
        }
    }
    for (r, &n) in keys.iter().enumerate() {
        for row in scores[offsets[r]..][..heads * n].chunks_exact_mut(n.max(1)) {
            softmax_from(row, shape.first_key(n));
        }
        rows[r].out.fill(0.0);
    }
    for level in &levels {
        let n = level.v.len() / kvw;
        for start in (0..n).step_by(KEYS_PER_BLOCK) {
            let end = (start + KEYS_PER_BLOCK).min(n);
            for &r in &level.rows {
                let (row_keys, p) = (keys[r], &scores[offsets[r]..]);
                for (h, oh) in rows[r].out.chunks_exact_mut(hd).enumerate() {
                    let p = &p[h * row_keys + level.first..][..n];
                    let values = &level.v[start * kvw + h / group * hd..end * kvw];
                    accumulate(simd, &p[start..end], values, kvw, oh);
                }
            }
        }
    }
}

/// `out += Σ_j p[j] v_j`, key by key in order, one fused multiply-add per key and lane; value
/// `j` is `values[j * stride..][..out.len()]`. Up to eight vectors of `out` stay in registers
/// across the keys (a store and reload per key would chain every key's addition to the last).
#[inline(always)]
fn accumulate<S: pulp::Simd>(simd: S, p: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    let width = out.len();
    let lanes = std::mem::size_of::<S::f32s>() / std::mem::size_of::<f32>();
    let (oh, ot) = S::as_mut_simd_f32s(out);
    for (c, chunk) in oh.chunks_mut(8).enumerate() {
        let mut acc = [simd.splat_f32s(0.0); 8];
        acc[..chunk.len()].copy_from_slice(chunk);
        for (j, &p) in p.iter().enumerate() {
            let v = &S::as_simd_f32s(&values[j * stride..][..width]).0[8 * c..][..chunk.len()];
            let ps = simd.splat_f32s(p);
            for (a, &v) in acc.iter_mut().zip(v) {
                *a = simd.mul_add_e_f32s(ps, v, *a);
            }
        }
        chunk.copy_from_slice(&acc[..chunk.len()]);
    }
    let first = oh.len() * lanes;
    for (i, o) in ot.iter_mut().enumerate() {
        for (j, &p) in p.iter().enumerate() {
            *o = p.mul_add(values[j * stride + first + i], *o);
        }
    }
}
