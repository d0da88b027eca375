//! A synthetic corpus of short texts with near-duplicates planted at known Jaccard levels, and the
//! recall of a near-duplicate search on it: what `flywheel bench dedup` and the tests measure.
//!
//! Texts are 200-400 characters of words drawn from a Zipf-distributed vocabulary of made-up words
//! (frequent words shared by most texts, as "the" and "is" are), numbers and punctuation. A planted
//! duplicate is a copy of an earlier text edited (words replaced, dropped or inserted) until its
//! exact Jaccard similarity to the original falls in a chosen band of [`BANDS`]; the bands run from
//! 0.5 (well below a 0.7 threshold, to measure what the search wrongly reports) to 1.0. The
//! duplicates are shuffled among the other texts, so a pair's two texts are usually far apart.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::dedup::{jaccard, shingles, NearDuplicates};

/// Lower edges of the similarity bands duplicates are planted in; each band is 0.05 wide.
pub const BANDS: [f64; 10] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];

/// A planted pair: the indices of the original and its edited copy, and their exact similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlantedPair {
    /// The lower index of the two.
    pub a: u32,
    /// The higher index of the two.
    pub b: u32,
    /// Exact Jaccard similarity of their shingles.
    pub jaccard: f64,
}

/// The corpus and its planted pairs.
#[derive(Debug, Clone)]
pub struct PlantedCorpus {
    /// The texts, originals and copies shuffled together.
    pub texts: Vec<String>,
    /// Every planted pair.
    pub pairs: Vec<PlantedPair>,
}

/// `docs` texts, of which `duplicate_fraction` are edited copies of others, spread evenly over
/// [`BANDS`]; the same `seed` gives the same corpus.
pub fn planted_corpus(docs: usize, duplicate_fraction: f64, seed: u64) -> PlantedCorpus {
    let copies = ((docs as f64 * duplicate_fraction.clamp(0.0, 0.5)).round() as usize).min(docs / 2);
    let originals = docs - copies;
    let vocab = Vocabulary::new(20_000, seed);
    let mut texts: Vec<Vec<String>> = (0..originals)
        .into_par_iter()
        .map(|i| vocab.text(&mut StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))))
        .collect();
    let planted: Vec<(usize, Vec<String>, f64)> = (0..copies)
        .into_par_iter()
        .map(|c| {
            let mut rng = StdRng::seed_from_u64(!seed ^ (c as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9));
            let original = rng.random_range(0..originals);
            let lo = BANDS[c % BANDS.len()];
            let (copy, j) = edit_into_band(&texts[original], lo, lo + 0.05, &vocab, &mut rng);
            (original, copy, j)
        })
        .collect();
    let mut pairs_by_index: Vec<(usize, usize, f64)> = Vec::with_capacity(copies);
    for (original, copy, j) in planted {
        pairs_by_index.push((original, texts.len(), j));
        texts.push(copy);
    }
    // Shuffle the order: position p holds text order[p].
    let mut order: Vec<usize> = (0..texts.len()).collect();
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut position = vec![0u32; order.len()];
    for (p, &t) in order.iter().enumerate() {
        position[t] = p as u32;
    }
    let mut slots: Vec<Option<Vec<String>>> = texts.into_iter().map(Some).collect();
    let texts: Vec<String> = order.iter().map(|&t| slots[t].take().expect("each text once").join(" ")).collect();
    let pairs = pairs_by_index
        .into_iter()
        .map(|(x, y, j)| {
            let (px, py) = (position[x], position[y]);
            PlantedPair { a: px.min(py), b: px.max(py), jaccard: j }
        })
        .collect();
    PlantedCorpus { texts, pairs }
}

/// Words with Zipf frequencies.
struct Vocabulary {
    words: Vec<String>,
    /// Cumulative probabilities.
    cdf: Vec<f64>,
}

impl Vocabulary {
    fn new(size: usize, seed: u64) -> Self {
        const SYLLABLES: [&str; 24] = [
            "ka", "lo", "mi", "ne", "ru", "ta", "so", "vi", "de", "po", "zu", "ha", "bri", "sto", "gen", "mar", "lin",
            "tor", "ex", "al", "qu", "ri", "fa", "om",
        ];
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(7));
        let mut seen = HashSet::new();
        let mut words = Vec::with_capacity(size);
        while words.len() < size {
            let n = rng.random_range(1..=4);
            let w: String = (0..n).map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())]).collect();
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let weights: Vec<f64> = (1..=size).map(|r| 1.0 / (r as f64).powf(1.07)).collect();
        let total: f64 = weights.iter().sum();
        let cdf = weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / total;
                Some(*acc)
            })
            .collect();
        Self { words, cdf }
    }

    /// One word: a number one time in eight, a punctuation mark one in twelve, else a word.
    fn word(&self, rng: &mut StdRng) -> String {
        match rng.random_range(0..24) {
            0..3 => rng.random_range(0..1000).to_string(),
            3 => "=".to_string(),
            4 => ".".to_string(),
            _ => {
                let u: f64 = rng.random();
                let i = self.cdf.partition_point(|&c| c < u).min(self.words.len() - 1);
                self.words[i].clone()
            }
        }
    }

    /// A text of 200 to 400 characters, as words.
    fn text(&self, rng: &mut StdRng) -> Vec<String> {
        let target = rng.random_range(200..=400);
        let mut out = Vec::new();
        let mut len = 0;
        while len < target {
            let w = self.word(rng);
            len += w.len() + 1;
            out.push(w);
        }
        out
    }
}

/// An edited copy of `words` whose exact similarity to it lies in `[lo, hi)` (the closest reached
/// when 50 tries miss), and that similarity.
fn edit_into_band(words: &[String], lo: f64, hi: f64, vocab: &Vocabulary, rng: &mut StdRng) -> (Vec<String>, f64) {
    let original = shingles(&words.join(" "));
    let mut best: Option<(Vec<String>, f64)> = None;
    for _ in 0..50 {
        let mut copy = words.to_vec();
        let mut j = 1.0;
        while j >= hi && !copy.is_empty() {
            let at = rng.random_range(0..copy.len());
            match rng.random_range(0..4) {
                0 => {
                    copy.remove(at);
                }
                1 => copy.insert(at, vocab.word(rng)),
                _ => copy[at] = vocab.word(rng),
            }
            j = jaccard(&original, &shingles(&copy.join(" ")));
        }
        if j >= lo {
            return (copy, j);
        }
        let centre = (lo + hi) / 2.0;
        if best.as_ref().is_none_or(|(_, b)| (b - centre).abs() > (j - centre).abs()) {
            best = Some((copy, j));
        }
    }
    best.expect("at least one try")
}

/// Recall of the planted pairs in one similarity band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandRecall {
    /// The band's lower edge (inclusive).
    pub lo: f64,
    /// The band's upper edge (exclusive; the last band includes 1.0).
    pub hi: f64,
    /// Planted pairs whose exact similarity lies in the band.
    pub pairs: usize,
    /// Of those, the pairs the search reported.
    pub found: usize,
}

/// How a search did on a planted corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallReport {
    /// Per band of [`BANDS`].
    pub bands: Vec<BandRecall>,
    /// Recall over the planted pairs at or above the threshold.
    pub recall: f64,
    /// Reported pairs whose exact similarity (recomputed here) is at or above the threshold, over
    /// all reported pairs.
    pub precision: f64,
    /// Planted pairs below the threshold that were reported (should be none).
    pub below_threshold_reported: usize,
}

/// Scores `found` against the corpus's planted pairs at `threshold`.
pub fn score(corpus: &PlantedCorpus, found: &NearDuplicates, threshold: f64) -> RecallReport {
    let reported: HashSet<(u32, u32)> = found.pairs.iter().map(|p| (p.a, p.b)).collect();
    let mut bands: Vec<BandRecall> =
        BANDS.iter().map(|&lo| BandRecall { lo, hi: lo + 0.05, pairs: 0, found: 0 }).collect();
    let (mut above, mut above_found, mut below_reported) = (0usize, 0usize, 0usize);
    for p in &corpus.pairs {
        let hit = reported.contains(&(p.a, p.b));
        if let Some(band) = bands.iter_mut().rev().find(|b| p.jaccard >= b.lo - 1e-12) {
            band.pairs += 1;
            band.found += usize::from(hit);
        }
        if p.jaccard >= threshold {
            above += 1;
            above_found += usize::from(hit);
        } else if hit {
            below_reported += 1;
        }
    }
    let correct = found
        .pairs
        .par_iter()
        .filter(|p| {
            let (a, b) = (&corpus.texts[p.a as usize], &corpus.texts[p.b as usize]);
            jaccard(&shingles(a), &shingles(b)) >= threshold
        })
        .count();
    RecallReport {
        bands,
        recall: if above == 0 { 1.0 } else { above_found as f64 / above as f64 },
        precision: if found.pairs.is_empty() { 1.0 } else { correct as f64 / found.pairs.len() as f64 },
        below_threshold_reported: below_reported,
    }
}
