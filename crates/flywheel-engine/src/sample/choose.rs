//! Choosing the next token, seeding each sequence, and spotting stop strings.
//!
//! Every sequence draws from its own generator, seeded from `(seed, request index, sample index)`,
//! so a completion depends on those three numbers and its logits only: not on which other
//! sequences shared its batch, nor on the order in which sequences finished.

use flywheel_core::SamplingParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};

/// SplitMix64's finaliser: a cheap, well-mixing bijection on `u64`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random generator of sample `sample` of request `request` under sampler seed `seed`.
pub fn sequence_rng(seed: u64, request: usize, sample: usize) -> StdRng {
    StdRng::seed_from_u64(mix(mix(mix(seed) ^ request as u64) ^ sample as u64))
}

/// Temperature, top-k and top-p applied to a row of logits.
#[derive(Debug, Clone)]
pub(crate) struct TokenChooser {
    temperature: f32,
    top_k: usize,
    top_p: f32,
}

/// Orders candidates by logit, highest first, ties to the lower id: a total, deterministic order.
fn by_logit_desc(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

impl TokenChooser {
    /// Validates `params`' temperature, top-k and top-p.
    pub fn new(params: &SamplingParams) -> Result<Self> {
        if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
            return Err(EngineError::invalid(format!(
                "temperature must be finite and >= 0, got {}",
                params.temperature
            )));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(EngineError::invalid(format!("top_p must be in (0, 1], got {}", params.top_p)));
        }
        Ok(Self { temperature: params.temperature, top_k: params.top_k, top_p: params.top_p })
    }

    /// Picks a token from `logits`. Greedy (temperature 0) takes the arg-max, lowest id on ties,
    /// and draws nothing from `rng`.
    pub fn choose(&self, logits: &[f32], rng: &mut StdRng, scratch: &mut Vec<(f32, u32)>) -> u32 {
        if self.temperature == 0.0 || self.top_k == 1 {
            return argmax(logits);
        }
        scratch.clear();
        scratch.extend(
            logits.iter().enumerate().map(|(i, &l)| (if l.is_nan() { f32::NEG_INFINITY } else { l }, i as u32)),
        );
        if self.top_k > 0 && self.top_k < scratch.len() {
            scratch.select_nth_unstable_by(self.top_k - 1, by_logit_desc);
            scratch.truncate(self.top_k);
            scratch.sort_unstable_by(by_logit_desc);
        }
        // Unnormalised softmax of logits / temperature, the largest weight being 1; the weights
        // replace the logits in `scratch` (same order, so the tie-breaking stays the same).
        let max = scratch.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / self.temperature;
        for c in scratch.iter_mut() {
            c.0 = ((c.0 - max) * inv_t).exp();
        }
        let mut total: f64 = scratch.iter().map(|c| f64::from(c.0)).sum();
        if self.top_p < 1.0 {
            // The nucleus is the most likely tokens up to mass top_p. When the tokens of weight at
            // least 1e-4 already hold that mass, the nucleus lies among them: sort only those (a
            // few dozen of a 49k vocabulary, instead of all).
            let floor = 1e-4;
            let heavy: f64 = scratch.iter().filter(|c| c.0 >= floor).map(|c| f64::from(c.0)).sum();
            if heavy >= f64::from(self.top_p) * total {
                scratch.retain(|c| c.0 >= floor);
            }
            scratch.sort_unstable_by(by_logit_desc);
            let (mut cum, mut keep) = (0.0, scratch.len());
            for (i, c) in scratch.iter().enumerate() {
                cum += f64::from(c.0);
                if cum >= f64::from(self.top_p) * total {
                    keep = i + 1;
                    break;
                }
            }
            scratch.truncate(keep);
            total = scratch.iter().map(|c| f64::from(c.0)).sum();
        }
        let mut u = rng.random::<f64>() * total;
        for c in scratch.iter() {
            u -= f64::from(c.0);
            if u < 0.0 {
                return c.1;
            }
        }
        scratch.last().map_or(0, |c| c.1)
    }
}

/// Index of the largest value, the first one on ties (NaN never wins).
pub(crate) fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// The byte offset of the earliest stop string in `text` that ends after byte `new_from` (so only
/// matches that new text completed are reported), if any.
pub(crate) fn find_stop(text: &str, new_from: usize, stops: &[String]) -> Option<usize> {
    let longest = stops.iter().map(String::len).max()?;
    let mut start = new_from.saturating_sub(longest.saturating_sub(1));
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text[start..].find(s.as_str()).map(|i| start + i)).min()
}

/// The byte offset of the earliest stop string anywhere in `text`.
pub(crate) fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    find_stop(text, 0, stops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chooser(temperature: f32, top_k: usize, top_p: f32) -> TokenChooser {
        TokenChooser::new(&SamplingParams { temperature, top_k, top_p, ..SamplingParams::default() }).unwrap()
    }

    #[test]
    fn greedy_takes_first_maximum() {
        let mut rng = sequence_rng(0, 0, 0);
        let c = chooser(0.0, 0, 1.0);
        assert_eq!(c.choose(&[0.1, 3.0, 3.0, -1.0], &mut rng, &mut Vec::new()), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [2.0, 1.0, 0.5, 3.0, -5.0];
        let mut scratch = Vec::new();
        let mut rng = sequence_rng(7, 1, 2);
        let top2 = chooser(1.0, 2, 1.0);
        let nucleus = chooser(1.0, 0, 0.5); // p(3) = 0.61 > 0.5 alone
        for _ in 0..200 {
            assert!(matches!(top2.choose(&logits, &mut rng, &mut scratch), 0 | 3));
            assert_eq!(nucleus.choose(&logits, &mut rng, &mut scratch), 3);
        }
    }

    #[test]
    fn nucleus_of_a_large_flat_tail_is_exact() {
        // 1000 equally likely tokens and one heavy one: the shortcut must not drop the tail when
        // the tail is needed to reach top_p.
        let mut logits = vec![0.0f32; 1001];
        logits[500] = 10.0; // tail weights e^-10 < 1e-4 each, but 4.3% of the mass together
        let (mut rng, mut scratch) = (sequence_rng(3, 0, 0), Vec::new());
        let c = chooser(1.0, 0, 0.99);
        let others = (0..4000).filter(|_| c.choose(&logits, &mut rng, &mut scratch) != 500).count();
        assert!((100..260).contains(&others), "tail tokens must be drawn (~4.3%): {others}");
        let c = chooser(1.0, 0, 0.9);
        assert!((0..200).all(|_| c.choose(&logits, &mut rng, &mut scratch) == 500));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Softmax([ln 1, ln 3]) = [0.25, 0.75].
        let logits = [0.0, 3f32.ln()];
        let (mut rng, mut scratch) = (sequence_rng(1, 0, 0), Vec::new());
        let c = chooser(1.0, 0, 1.0);
        let ones = (0..4000).filter(|_| c.choose(&logits, &mut rng, &mut scratch) == 1).count();
        assert!((2850..3150).contains(&ones), "{ones}");
    }

    #[test]
    fn rngs_differ_by_request_and_sample_and_repeat_by_seed() {
        let draw = |s, r, k| sequence_rng(s, r, k).random::<u64>();
        assert_eq!(draw(1, 2, 3), draw(1, 2, 3));
        assert_ne!(draw(1, 2, 3), draw(1, 3, 2));
        assert_ne!(draw(1, 2, 3), draw(2, 2, 3));
    }

    #[test]
    fn stop_strings_are_found_once_completed() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc\n", 3, &stops), None);
        assert_eq!(find_stop("abc\n\n", 4, &stops), Some(3));
        assert_eq!(find_stop("xEN", 2, &stops), None);
        assert_eq!(find_stop("xEND", 3, &stops), Some(1));
        assert_eq!(first_stop("a END b\n\n", &stops), Some(2));
        assert_eq!(find_stop("é€END", 5, &stops), Some(5));
        assert_eq!(find_stop("abc", 0, &[]), None);
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let p = |temperature, top_p| SamplingParams { temperature, top_p, ..SamplingParams::default() };
        assert!(TokenChooser::new(&p(-1.0, 1.0)).is_err());
        assert!(TokenChooser::new(&p(1.0, 0.0)).is_err());
        assert!(TokenChooser::new(&p(f32::NAN, 1.0)).is_err());
    }
}
