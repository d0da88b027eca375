//! Diversity and repetition of a set of completions: the signs of collapse (Shumailov et al. 2023)
//! that a run watches each iteration.
//!
//! Each metric is a small object fed one completion at a time (`update`), read (`compute`) and
//! emptied (`clear`), as burn-train's metrics are; [`QualityMetrics`] runs them all over a set and
//! gives one serialisable [`Quality`]. Every count is over [`super::words`].
//!
//! * distinct-n: distinct n-grams over all n-grams of the set (Li et al. 2016), for n = 1, 2, 3.
//! * moving-average type-token ratio (Covington & McFall 2010): the type-token ratio of every window
//!   of [`MATTR_WINDOW`] consecutive words of a completion, averaged. The plain ratio over a
//!   concatenation falls with length alone; this one does not.
//! * near-duplicate rate: the share of completions that [`super::dedup`] removes as near-duplicates
//!   (Jaccard of word 3-grams at 0.7 or above) of an earlier one, over the whole set.
//! * self-BLEU (Zhu et al. 2018): BLEU-4 of each completion of a seeded subsample against the rest
//!   of the subsample, averaged; 1 when every completion is the same.
//! * answer entropy: per problem, the entropy in bits of its samples' extracted final answers (no
//!   answer is a value of its own), averaged over problems: 0 when every sample of a problem gives
//!   the same answer.
//! * repetition: the share of each completion's word 4-grams that repeat an earlier 4-gram of the
//!   same completion, averaged (a looping completion scores near 1).
//! * length: mean and standard deviation of completion length in words.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::dedup::{find_near_duplicates, DedupConfig};
use super::words;

/// Words per window of the moving-average type-token ratio.
pub const MATTR_WINDOW: usize = 50;

/// Completions in self-BLEU's subsample (each scored against the others).
pub const SELF_BLEU_SAMPLE: usize = 200;

/// One completion as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// The problem it answers.
    pub problem: &'a str,
    /// The completion's text.
    pub text: &'a str,
    /// Its extracted final answer, if any.
    pub answer: Option<&'a str>,
}

/// A metric over a stream of completions.
pub trait Metric {
    /// What it computes.
    type Output;
    /// Takes one completion into account.
    fn update(&mut self, item: &Item<'_>);
    /// The value over everything since the last `clear`.
    fn compute(&self) -> Self::Output;
    /// Forgets everything.
    fn clear(&mut self);
}

/// Distinct n-grams over all n-grams.
#[derive(Debug, Clone)]
pub struct DistinctN {
    n: usize,
    seen: HashSet<Vec<String>>,
    total: usize,
}

impl DistinctN {
    /// distinct-`n`.
    pub fn new(n: usize) -> Self {
        assert!(n > 0, "n-grams of at least one word");
        Self { n, seen: HashSet::new(), total: 0 }
    }
}

impl Metric for DistinctN {
    type Output = Option<f64>;
    fn update(&mut self, item: &Item<'_>) {
        for gram in words(item.text).windows(self.n) {
            self.total += 1;
            if !self.seen.contains(gram) {
                self.seen.insert(gram.to_vec());
            }
        }
    }
    fn compute(&self) -> Option<f64> {
        (self.total > 0).then(|| self.seen.len() as f64 / self.total as f64)
    }
    fn clear(&mut self) {
        self.seen.clear();
        self.total = 0;
    }
}

/// The moving-average type-token ratio, averaged over completions (a completion shorter than the
/// window counts with its plain ratio).
#[derive(Debug, Clone, Default)]
pub struct MovingTtr {
    sum: f64,
    count: usize,
}

impl MovingTtr {
    /// The moving-average type-token ratio of one word sequence over windows of `window`.
    pub fn of(words: &[String], window: usize) -> Option<f64> {
        if words.is_empty() {
            return None;
        }
        let w = window.min(words.len());
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for word in &words[..w] {
            *counts.entry(word).or_default() += 1;
        }
        let mut sum = counts.len() as f64 / w as f64;
        for i in w..words.len() {
            let out = words[i - w].as_str();
            let c = counts.get_mut(out).expect("counted when it entered");
            *c -= 1;
            if *c == 0 {
                counts.remove(out);
            }
            *counts.entry(&words[i]).or_default() += 1;
            sum += counts.len() as f64 / w as f64;
        }
        Some(sum / (words.len() - w + 1) as f64)
    }
}

impl Metric for MovingTtr {
    type Output = Option<f64>;
    fn update(&mut self, item: &Item<'_>) {
        if let Some(v) = Self::of(&words(item.text), MATTR_WINDOW) {
            self.sum += v;
            self.count += 1;
        }
    }
    fn compute(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The share of completions that are near-duplicates of an earlier one.
#[derive(Debug, Clone, Default)]
pub struct NearDuplicateRate {
    texts: Vec<String>,
}

impl Metric for NearDuplicateRate {
    type Output = Option<f64>;
    fn update(&mut self, item: &Item<'_>) {
        self.texts.push(item.text.to_owned());
    }
    fn compute(&self) -> Option<f64> {
        if self.texts.is_empty() {
            return None;
        }
        let found = find_near_duplicates(&self.texts, &DedupConfig::default());
        Some(found.removed() as f64 / self.texts.len() as f64)
    }
    fn clear(&mut self) {
        self.texts.clear();
    }
}

/// Self-BLEU over a seeded subsample of [`SELF_BLEU_SAMPLE`] completions.
#[derive(Debug, Clone)]
pub struct SelfBleu {
    seed: u64,
    texts: Vec<Vec<String>>,
}

impl SelfBleu {
    /// Self-BLEU whose subsample is drawn with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, texts: Vec::new() }
    }

    /// Sentence BLEU-4 of `hypothesis` against `references`: clipped n-gram precisions (a zero
    /// count smoothed to 0.1, Chen & Cherry's method 1), geometric mean, brevity penalty against
    /// the closest reference length.
    pub fn bleu(hypothesis: &[String], references: &[&[String]]) -> f64 {
        if hypothesis.is_empty() || references.is_empty() {
            return 0.0;
        }
        let mut log_sum = 0.0;
        for n in 1..=4 {
            let grams = ngram_counts(hypothesis, n);
            let total: usize = grams.values().sum();
            if total == 0 {
                // Shorter than n words: the precisions that exist decide.
                continue;
            }
            let mut most: HashMap<&[String], usize> = HashMap::new();
            for r in references {
                for (g, c) in ngram_counts(r, n) {
                    if grams.contains_key(g) {
                        let m = most.entry(g).or_default();
                        *m = (*m).max(c);
                    }
                }
            }
            let clipped: usize = grams.iter().map(|(g, &c)| c.min(most.get(g).copied().unwrap_or(0))).sum();
            let p = if clipped == 0 { 0.1 / total as f64 } else { clipped as f64 / total as f64 };
            log_sum += p.ln();
        }
        let orders = (1..=4).filter(|&n| hypothesis.len() >= n).count() as f64;
        let closest = references
            .iter()
            .map(|r| r.len())
            .min_by_key(|&l| (l.abs_diff(hypothesis.len()), l))
            .expect("references is not empty");
        let brevity =
            if hypothesis.len() >= closest { 1.0 } else { (1.0 - closest as f64 / hypothesis.len() as f64).exp() };
        brevity * (log_sum / orders).exp()
    }
}

fn ngram_counts(words: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut out: HashMap<&[String], usize> = HashMap::new();
    for g in words.windows(n) {
        *out.entry(g).or_default() += 1;
    }
    out
}

impl Metric for SelfBleu {
    type Output = Option<f64>;
    fn update(&mut self, item: &Item<'_>) {
        self.texts.push(words(item.text));
    }
    fn compute(&self) -> Option<f64> {
        if self.texts.len() < 2 {
            return None;
        }
        let m = self.texts.len().min(SELF_BLEU_SAMPLE);
        let picked: Vec<&[String]> = sample(&mut StdRng::seed_from_u64(self.seed), self.texts.len(), m)
            .iter()
            .map(|i| &self.texts[i][..])
            .collect();
        let scores: Vec<f64> = (0..m)
            .map(|i| {
                let refs: Vec<&[String]> =
                    picked.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, r)| *r).collect();
                Self::bleu(picked[i], &refs)
            })
            .collect();
        Some(scores.iter().sum::<f64>() / m as f64)
    }
    fn clear(&mut self) {
        self.texts.clear();
    }
}

/// Mean entropy, in bits, of each problem's extracted answers (ordered maps: the sum runs in the
/// same order every time, so a resumed run writes the same bytes).
#[derive(Debug, Clone, Default)]
pub struct AnswerEntropy {
    answers: BTreeMap<String, BTreeMap<Option<String>, usize>>,
}

impl Metric for AnswerEntropy {
    type Output = Option<f64>;
    fn update(&mut self, item: &Item<'_>) {
        let counts = self.answers.entry(item.problem.to_owned()).or_default();
        *counts.entry(item.answer.map(str::to_owned)).or_default() += 1;
    }
    fn compute(&self) -> Option<f64> {
        if self.answers.is_empty() {
            return None;
        }
        let entropy = |counts: &BTreeMap<Option<String>, usize>| {
            let total: usize = counts.values().sum();
            counts.values().map(|&c| c as f64 / total as f64).map(|p| -p * p.log2()).sum::<f64>()
        };
        Some(self.answers.values().map(entropy).sum::<f64>() / self.answers.len() as f64)
    }
    fn clear(&mut self) {
        self.answers.clear();
    }
}

/// Mean share of repeated word 4-grams within a completion.
#[derive(Debug, Clone, Default)]
pub struct Repetition {
    sum: f64,
    count: usize,
}

impl Repetition {
    /// The share of `words`' 4-grams that repeat an earlier one (0 for fewer than five words).
    pub fn of(words: &[String]) -> f64 {
        let grams: Vec<&[String]> = words.windows(4).collect();
        if grams.len() < 2 {
            return 0.0;
        }
        let distinct: HashSet<&[String]> = grams.iter().copied().collect();
        1.0 - distinct.len() as f64 / grams.len() as f64
    }
}

impl Metric for Repetition {
    type Output = Option<f64>;
    fn update(&mut self, item: &Item<'_>) {
        self.sum += Self::of(&words(item.text));
        self.count += 1;
    }
    fn compute(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Mean and standard deviation of completion length in words.
#[derive(Debug, Clone, Default)]
pub struct Length {
    lengths: Vec<f64>,
}

impl Metric for Length {
    type Output = Option<(f64, f64)>;
    fn update(&mut self, item: &Item<'_>) {
        self.lengths.push(words(item.text).len() as f64);
    }
    fn compute(&self) -> Option<(f64, f64)> {
        if self.lengths.is_empty() {
            return None;
        }
        let n = self.lengths.len() as f64;
        let mean = self.lengths.iter().sum::<f64>() / n;
        let var = self.lengths.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
        Some((mean, var.sqrt()))
    }
    fn clear(&mut self) {
        self.lengths.clear();
    }
}

/// Every metric of one set of completions (`None` where the set is too small for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Completions measured.
    pub completions: usize,
    /// distinct-1.
    pub distinct_1: Option<f64>,
    /// distinct-2.
    pub distinct_2: Option<f64>,
    /// distinct-3.
    pub distinct_3: Option<f64>,
    /// Moving-average type-token ratio ([`MATTR_WINDOW`]-word windows).
    pub mattr: Option<f64>,
    /// Share of completions that are near-duplicates of an earlier one.
    pub near_duplicate_rate: Option<f64>,
    /// Self-BLEU-4 of a seeded subsample.
    pub self_bleu: Option<f64>,
    /// Mean per-problem entropy of final answers, in bits.
    pub answer_entropy: Option<f64>,
    /// Mean share of repeated 4-grams within a completion.
    pub repetition: Option<f64>,
    /// Mean completion length, in words.
    pub length_mean: Option<f64>,
    /// Standard deviation of completion length, in words.
    pub length_std: Option<f64>,
}

/// All the metrics, fed together.
#[derive(Debug, Clone)]
pub struct QualityMetrics {
    distinct: [DistinctN; 3],
    mattr: MovingTtr,
    near_duplicates: NearDuplicateRate,
    self_bleu: SelfBleu,
    answers: AnswerEntropy,
    repetition: Repetition,
    length: Length,
    count: usize,
}

impl QualityMetrics {
    /// Empty metrics; `seed` draws self-BLEU's subsample.
    pub fn new(seed: u64) -> Self {
        Self {
            distinct: [DistinctN::new(1), DistinctN::new(2), DistinctN::new(3)],
            mattr: MovingTtr::default(),
            near_duplicates: NearDuplicateRate::default(),
            self_bleu: SelfBleu::new(seed),
            answers: AnswerEntropy::default(),
            repetition: Repetition::default(),
            length: Length::default(),
            count: 0,
        }
    }

    /// The metrics of `items`, with a self-BLEU subsample drawn from `seed`.
    pub fn of<'a>(items: impl IntoIterator<Item = Item<'a>>, seed: u64) -> Quality {
        let mut m = Self::new(seed);
        for item in items {
            m.update(&item);
        }
        m.compute()
    }
}

impl Metric for QualityMetrics {
    type Output = Quality;
    fn update(&mut self, item: &Item<'_>) {
        for d in &mut self.distinct {
            d.update(item);
        }
        self.mattr.update(item);
        self.near_duplicates.update(item);
        self.self_bleu.update(item);
        self.answers.update(item);
        self.repetition.update(item);
        self.length.update(item);
        self.count += 1;
    }
    fn compute(&self) -> Quality {
        let length = self.length.compute();
        Quality {
            completions: self.count,
            distinct_1: self.distinct[0].compute(),
            distinct_2: self.distinct[1].compute(),
            distinct_3: self.distinct[2].compute(),
            mattr: self.mattr.compute(),
            near_duplicate_rate: self.near_duplicates.compute(),
            self_bleu: self.self_bleu.compute(),
            answer_entropy: self.answers.compute(),
            repetition: self.repetition.compute(),
            length_mean: length.map(|l| l.0),
            length_std: length.map(|l| l.1),
        }
    }
    fn clear(&mut self) {
        for d in &mut self.distinct {
            d.clear();
        }
        self.mattr.clear();
        self.near_duplicates.clear();
        self.self_bleu.clear();
        self.answers.clear();
        self.repetition.clear();
        self.length.clear();
        self.count = 0;
    }
}

#[cfg(test)]
mod tests;
