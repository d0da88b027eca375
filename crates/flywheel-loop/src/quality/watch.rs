//! The collapse watch: rules over the history of an iteration's quality (`quality.json`) that warn,
//! or stop the run, when its outputs narrow or its accuracy falls.
//!
//! Each rule is a pure function of the quality events up to the iteration just finished, so its
//! tests are plain checks and a resumed run decides as an uninterrupted one would. A warning goes to
//! `quality.json`, the log and `flywheel report`; a rule named in `critical` stops the run after the
//! iteration (its state saved), and `flywheel resume` goes on once the config's `[watch]` or the
//! mitigations changed.

use serde::{Deserialize, Serialize};

use super::metrics::Quality;
use crate::config::WatchConfig;
use crate::events::QualityEvent;

/// How serious a warning is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Logged and reported; the run goes on.
    Warning,
    /// The run stops after this iteration.
    Critical,
}

/// One rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    /// The rule's config key (`diversity-falling`, ...).
    pub rule: String,
    /// How serious it is.
    pub severity: Severity,
    /// What the rule saw.
    pub message: String,
}

/// The rules of `config` that fire on `history` (quality events of iterations 0..=k in order, the
/// last one being the iteration just finished, its warnings not yet set).
pub fn check(history: &[&QualityEvent], config: &WatchConfig) -> Vec<Warning> {
    let Some(last) = history.last() else { return Vec::new() };
    let mut out = Vec::new();
    let mut fire = |rule: &str, message: String| {
        let severity = if config.critical.iter().any(|c| c == rule) { Severity::Critical } else { Severity::Warning };
        out.push(Warning { rule: rule.to_owned(), severity, message });
    };
    // What the samples show, or (iteration 0) the held-out answers.
    let measured = |q: &QualityEvent| q.samples.clone().unwrap_or_else(|| q.heldout.clone());

    if let n @ 1.. = config.diversity_falling {
        let values: Option<Vec<f64>> =
            window(history, n).map(|w| w.iter().filter_map(|q| q.samples.as_ref()?.distinct_2).collect());
        if let Some(v) = values.filter(|v| v.len() == n + 1 && falling(v)) {
            fire("diversity-falling", format!("distinct-2 of the samples fell {n} iterations in a row: {}", list(&v)));
        }
    }
    if let n @ 1.. = config.accuracy_falling {
        if let Some(w) = window(history, n) {
            let v: Vec<f64> = w.iter().map(|q| q.accuracy).collect();
            if falling(&v) {
                let percent: Vec<f64> = v.iter().map(|a| a * 100.0).collect();
                fire(
                    "accuracy-falling",
                    format!("held-out accuracy fell {n} iterations in a row: {}%", list(&percent)),
                );
            }
        }
    }
    if let n @ 1.. = config.perplexity_rising {
        let values: Option<Vec<f64>> = window(history, n).and_then(|w| w.iter().map(|q| q.perplexity).collect());
        if let Some(v) = values.filter(|v| v.windows(2).all(|w| w[1] > w[0])) {
            fire(
                "perplexity-rising",
                format!("perplexity on held-out reference solutions rose {n} iterations in a row: {}", list(&v)),
            );
        }
    }
    let bound = |rule: &str, limit: f64, value: fn(&Quality) -> Option<f64>, what: &str| {
        let value = value(&measured(last))?;
        (value > limit).then(|| (rule.to_owned(), format!("{what} {value:.3} is above {limit}")))
    };
    let bounds = [
        bound("repetition-above", config.repetition_above, |q| q.repetition, "repetition (repeated 4-grams)"),
        bound("near-duplicates-above", config.near_duplicates_above, |q| q.near_duplicate_rate, "near-duplicate rate"),
    ];
    for (rule, message) in bounds.into_iter().flatten() {
        fire(&rule, message);
    }
    out
}

/// The last `n + 1` events, when there are that many.
fn window<'a>(history: &'a [&'a QualityEvent], n: usize) -> Option<&'a [&'a QualityEvent]> {
    (n > 0 && history.len() > n).then(|| &history[history.len() - n - 1..])
}

/// Strictly falling.
fn falling(v: &[f64]) -> bool {
    v.windows(2).all(|w| w[1] < w[0])
}

fn list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" -> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quality(distinct_2: f64, repetition: f64) -> Quality {
        Quality {
            completions: 10,
            distinct_1: None,
            distinct_2: Some(distinct_2),
            distinct_3: None,
            mattr: None,
            near_duplicate_rate: Some(0.1),
            self_bleu: None,
            answer_entropy: None,
            repetition: Some(repetition),
            length_mean: None,
            length_std: None,
        }
    }

    fn event(k: usize, distinct_2: f64, accuracy: f64) -> QualityEvent {
        QualityEvent {
            iteration: k,
            samples: (k > 0).then(|| quality(distinct_2, 0.05)),
            kept: None,
            heldout: quality(0.5, 0.05),
            accuracy,
            accuracy_change: None,
            perplexity: None,
            warnings: Vec::new(),
        }
    }

    fn rules(history: &[QualityEvent], config: &WatchConfig) -> Vec<String> {
        let refs: Vec<&QualityEvent> = history.iter().collect();
        check(&refs, config).into_iter().map(|w| format!("{}:{:?}", w.rule, w.severity)).collect()
    }

    #[test]
    fn diversity_falling_needs_n_falls_in_a_row_of_sampled_iterations() {
        let config = WatchConfig { diversity_falling: 2, ..WatchConfig::off() };
        let h = [event(0, 0.0, 0.1), event(1, 0.6, 0.2), event(2, 0.5, 0.3), event(3, 0.4, 0.4)];
        assert_eq!(rules(&h, &config), ["diversity-falling:Warning"]);
        // Two iterations only: iteration 0 has no samples, so there is no window of three.
        assert!(rules(&h[..3], &config).is_empty());
        // A rise in between resets it.
        let h = [event(1, 0.6, 0.2), event(2, 0.7, 0.3), event(3, 0.4, 0.4)];
        assert!(rules(&h, &config).is_empty());
    }

    #[test]
    fn accuracy_falling_and_critical_rules() {
        let config =
            WatchConfig { accuracy_falling: 2, critical: vec!["accuracy-falling".into()], ..WatchConfig::off() };
        let h = [event(0, 0.0, 0.30), event(1, 0.5, 0.25), event(2, 0.5, 0.20)];
        assert_eq!(rules(&h, &config), ["accuracy-falling:Critical"]);
        let h = [event(0, 0.0, 0.30), event(1, 0.5, 0.25), event(2, 0.5, 0.25)];
        assert!(rules(&h, &config).is_empty(), "equal is not falling");
    }

    #[test]
    fn perplexity_rising_needs_n_rises_in_a_row_of_scored_iterations() {
        let config = WatchConfig { perplexity_rising: 2, ..WatchConfig::off() };
        let scored = |k: usize, p: Option<f64>| QualityEvent { perplexity: p, ..event(k, 0.5, 0.2) };
        let h = [scored(0, Some(3.0)), scored(1, Some(3.2)), scored(2, Some(3.5))];
        assert_eq!(rules(&h, &config), ["perplexity-rising:Warning"]);
        let h = [scored(0, Some(3.0)), scored(1, Some(3.5)), scored(2, Some(3.5))];
        assert!(rules(&h, &config).is_empty(), "equal is not rising");
        let h = [scored(0, Some(3.6)), scored(1, Some(3.2)), scored(2, Some(3.5))];
        assert!(rules(&h, &config).is_empty(), "a fall in between resets it");
        let h = [scored(0, None), scored(1, Some(3.2)), scored(2, Some(3.5))];
        assert!(rules(&h, &config).is_empty(), "an unscored iteration is no evidence");
    }

    #[test]
    fn bounds_fire_above_their_limit() {
        let config = WatchConfig { repetition_above: 0.2, near_duplicates_above: 0.05, ..WatchConfig::off() };
        let mut e = event(1, 0.5, 0.2);
        e.samples = Some(quality(0.5, 0.25));
        assert_eq!(rules(&[e.clone()], &config), ["repetition-above:Warning", "near-duplicates-above:Warning"]);
        e.samples = Some(Quality { near_duplicate_rate: Some(0.01), ..quality(0.5, 0.2) });
        assert!(rules(&[e], &config).is_empty(), "at the bound is not above it");
        assert!(rules(&[], &config).is_empty());
    }
}
