//! Near-duplicate detection over a whole collection: MinHash signatures, LSH banding for
//! candidates, and every candidate verified by its exact Jaccard similarity.
//!
//! A text is the set of its word 3-grams ([`shingles`]: lower-cased words, each punctuation mark a
//! word of its own, so `8 * 4 = 32` and `8 + 4 = 12` differ). Its signature holds, for each of
//! `num_perm` hash functions `h_i(x) = (a_i x + b_i) >> 32` (multiply-shift over the shingle's
//! 64-bit xxh3 hash), the least value over its shingles; two texts agree on one entry with
//! probability equal to their Jaccard similarity. The signature is cut into `bands` bands of `r`
//! rows; two texts are candidates when they agree on a whole band, so a pair at similarity `J` is a
//! candidate with probability `1 - (1 - J^r)^bands`: 32 bands of 4 rows make that 0.9998 at
//! `J = 0.7`, and 0.87 at 0.5, where verification rejects it. The banding is the recall; the
//! verification is the precision: a reported pair's similarity is exact, never estimated.
//!
//! Unlike a window over recent examples, every text is compared with every other (through the
//! bands): a duplicate of the first example is found when the millionth comes. A pair is verified
//! once, in the first band where it collides.

use std::collections::HashSet;

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::words;

/// Words per shingle.
pub const SHINGLE_WORDS: usize = 3;

/// Buckets larger than this compare each member with its neighbours and the bucket's first member
/// only (a chain that still joins the cluster), not every pair: a flood of identical texts would
/// otherwise cost the square of its size.
const MAX_BUCKET_MEMBERS: usize = 64;

/// Settings of [`find_near_duplicates`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupConfig {
    /// Pairs at this exact Jaccard similarity or above are near-duplicates.
    pub threshold: f64,
    /// Hash functions (signature length); a multiple of `bands`.
    pub num_perm: usize,
    /// LSH bands; each holds `num_perm / bands` rows.
    pub bands: usize,
    /// Seed of the hash functions.
    pub seed: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { threshold: 0.7, num_perm: 128, bands: 32, seed: 0x5eed }
    }
}

impl DedupConfig {
    /// Rows per band.
    pub fn rows(&self) -> usize {
        self.num_perm / self.bands.max(1)
    }

    /// The probability that a pair at Jaccard similarity `j` becomes a candidate.
    pub fn candidate_probability(&self, j: f64) -> f64 {
        1.0 - (1.0 - j.powi(self.rows() as i32)).powi(self.bands as i32)
    }

    /// Why the settings cannot work, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(format!("threshold must be in (0, 1], got {}", self.threshold));
        }
        if self.bands == 0 || self.num_perm == 0 || !self.num_perm.is_multiple_of(self.bands) {
            return Err(format!("num-perm ({}) must be a positive multiple of bands ({})", self.num_perm, self.bands));
        }
        Ok(())
    }
}

/// The sorted, distinct 64-bit hashes of `text`'s word 3-grams (a text of fewer words is one
/// shingle of all of them; an empty text has none).
pub fn shingles(text: &str) -> Vec<u64> {
    let words = words(text);
    let hash = |parts: &[String]| {
        let mut h = 0u64;
        for (i, p) in parts.iter().enumerate() {
            h = xxh3_64_with_seed(p.as_bytes(), h ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        h
    };
    let mut out: Vec<u64> = if words.is_empty() {
        Vec::new()
    } else if words.len() < SHINGLE_WORDS {
        vec![hash(&words)]
    } else {
        words.windows(SHINGLE_WORDS).map(hash).collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// Exact Jaccard similarity of two sorted, distinct sets (1 for two empty sets).
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    both as f64 / (a.len() + b.len() - both) as f64
}

/// MinHash signatures of `num_perm` multiply-shift hash functions.
#[derive(Debug, Clone)]
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
}

impl MinHasher {
    /// `num_perm` hash functions drawn from `seed`.
    pub fn new(num_perm: usize, seed: u64) -> Self {
        let mut state = seed;
        let mut next = || {
            // splitmix64: the coefficients need only be distinct and well spread.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let (a, b) = (0..num_perm).map(|_| (next() | 1, next())).unzip();
        Self { a, b }
    }

    /// Signature length.
    pub fn len(&self) -> usize {
        self.a.len()
    }

    /// Whether the signature is empty (no hash functions).
    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }

    /// Writes the signature of `shingles` into `out` (`len()` values; all `u32::MAX` for none).
    pub fn signature_into(&self, shingles: &[u64], out: &mut [u32]) {
        out.fill(u32::MAX);
        for &x in shingles {
            for ((o, &a), &b) in out.iter_mut().zip(&self.a).zip(&self.b) {
                let h = (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32;
                *o = (*o).min(h);
            }
        }
    }

    /// The signature of `shingles`.
    pub fn signature(&self, shingles: &[u64]) -> Vec<u32> {
        let mut out = vec![0; self.len()];
        self.signature_into(shingles, &mut out);
        out
    }
}

/// The fraction of equal entries of two signatures: an estimate of their texts' Jaccard similarity.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// A verified near-duplicate pair: indices `a < b` and their exact Jaccard similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DuplicatePair {
    /// The earlier text.
    pub a: u32,
    /// The later text.
    pub b: u32,
    /// Exact Jaccard similarity of their shingles.
    pub jaccard: f64,
}

/// What [`find_near_duplicates`] found.
#[derive(Debug, Clone, Default)]
pub struct NearDuplicates {
    /// Verified pairs at or above the threshold, sorted.
    pub pairs: Vec<DuplicatePair>,
    /// Distinct candidate pairs the bands proposed (each verified once).
    pub candidates: u64,
    /// Candidates whose signatures alone would have passed the threshold but whose exact
    /// similarity is below it: what skipping verification would have let through.
    pub signature_false_positives: u64,
    /// Per text: whether it is kept (the first text of each cluster of near-duplicates, in input
    /// order, and every text without one).
    pub keep: Vec<bool>,
}

impl NearDuplicates {
    /// Texts removed as near-duplicates of an earlier kept one.
    pub fn removed(&self) -> usize {
        self.keep.iter().filter(|&&k| !k).count()
    }
}

/// Finds every pair of `texts` at or above `config.threshold` (up to LSH's miss probability, see the
/// module), and which texts to keep so that no two kept ones are joined by such pairs.
pub fn find_near_duplicates<S: AsRef<str> + Sync>(texts: &[S], config: &DedupConfig) -> NearDuplicates {
    assert!(config.validate().is_ok(), "invalid dedup config: {:?}", config.validate());
    assert!(texts.len() < u32::MAX as usize, "at most 2^32 - 1 texts");
    let n = texts.len();
    let (k, rows) = (config.num_perm, config.rows());
    let hasher = MinHasher::new(k, config.seed);
    let mut sigs = vec![0u32; n * k];
    sigs.par_chunks_mut(k).zip(texts.par_iter()).for_each(|(out, text)| {
        hasher.signature_into(&shingles(text.as_ref()), out);
    });
    let sig = |d: usize| &sigs[d * k..(d + 1) * k];
    let band_of = |d: usize, t: usize| &sig(d)[t * rows..(t + 1) * rows];

    let mut candidates: Vec<(u32, u32)> = Vec::new();
    let mut keys: Vec<(u64, u32)> = vec![(0, 0); n];
    for t in 0..config.bands {
        keys.par_iter_mut().enumerate().for_each(|(d, key)| *key = (band_key(band_of(d, t)), d as u32));
        keys.par_sort_unstable();
        // A pair is proposed in the first band where the two agree: skip it in later ones.
        let first_here =
            |a: usize, b: usize| band_of(a, t) == band_of(b, t) && (0..t).all(|s| band_of(a, s) != band_of(b, s));
        let found: Vec<(u32, u32)> = keys
            .par_chunk_by(|x, y| x.0 == y.0)
            .filter(|bucket| bucket.len() > 1)
            .flat_map_iter(|bucket| {
                let members: Vec<usize> = bucket.iter().map(|&(_, d)| d as usize).collect();
                bucket_pairs(&members)
                    .into_iter()
                    .filter(|&(a, b)| first_here(a, b))
                    .map(|(a, b)| (a.min(b) as u32, a.max(b) as u32))
            })
            .collect();
        candidates.extend(found);
    }
    candidates.par_sort_unstable();
    candidates.dedup();

    let verified: Vec<(DuplicatePair, bool)> = candidates
        .par_iter()
        .map(|&(a, b)| {
            let j = jaccard(&shingles(texts[a as usize].as_ref()), &shingles(texts[b as usize].as_ref()));
            let estimate = estimated_jaccard(sig(a as usize), sig(b as usize));
            (DuplicatePair { a, b, jaccard: j }, estimate >= config.threshold)
        })
        .collect();
    let signature_false_positives =
        verified.iter().filter(|(p, passes)| *passes && p.jaccard < config.threshold).count() as u64;
    let pairs: Vec<DuplicatePair> =
        verified.into_iter().map(|(p, _)| p).filter(|p| p.jaccard >= config.threshold).collect();
    let keep = keep_first_of_clusters(n, &pairs);
    NearDuplicates { pairs, candidates: candidates.len() as u64, signature_false_positives, keep }
}

/// A 64-bit key of one band's rows. Two different bands may share a key: candidates are checked
/// for equal rows, so a collision costs a comparison, never a wrong pair.
fn band_key(rows: &[u32]) -> u64 {
    rows.iter().fold(0x243f_6a88_85a3_08d3u64, |h, &v| {
        let z = (h ^ u64::from(v)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z ^ (z >> 29)
    })
}

/// The pairs to check inside one bucket: all of them for a small bucket, else a chain (each member
/// with its neighbour and with the first member).
fn bucket_pairs(members: &[usize]) -> Vec<(usize, usize)> {
    let g = members.len();
    if g <= MAX_BUCKET_MEMBERS {
        let mut out = Vec::with_capacity(g * (g - 1) / 2);
        for i in 0..g {
            for j in i + 1..g {
                out.push((members[i], members[j]));
            }
        }
        return out;
    }
    let mut out: HashSet<(usize, usize)> = HashSet::new();
    for i in 1..g {
        out.insert((members[0], members[i]));
        out.insert((members[i - 1], members[i]));
    }
    out.into_iter().collect()
}

/// Union-find over `pairs`; keeps the lowest index of each cluster.
fn keep_first_of_clusters(n: usize, pairs: &[DuplicatePair]) -> Vec<bool> {
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn root(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            let up = parent[parent[x as usize] as usize];
            parent[x as usize] = up;
            x = up;
        }
        x
    }
    for p in pairs {
        let (ra, rb) = (root(&mut parent, p.a), root(&mut parent, p.b));
        // The smaller index becomes the root, so a cluster's root is its first text.
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            parent[hi as usize] = lo;
        }
    }
    (0..n as u32).map(|x| root(&mut parent, x) == x).collect()
}

#[cfg(test)]
mod tests;
