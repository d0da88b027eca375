//! Early stopping: the run ends when held-out accuracy has not improved for `patience` iterations.
//!
//! The rule is a pure function of the accuracy history, so its tests are plain equality checks and a
//! resumed run decides exactly as an uninterrupted one would.

use crate::config::EarlyStopConfig;

/// Why the run should stop after the last iteration of `accuracy` (index = iteration, 0 = the base
/// model), or `None` to go on.
///
/// The last `patience` iterations are compared with every one before them: the run stops when
/// their best accuracy does not exceed the earlier best by more than `min-delta`. Only iterations
/// after `from` (where a stopped run was resumed) can make up that window.
pub fn should_stop(accuracy: &[f64], rule: &EarlyStopConfig, from: usize) -> Option<String> {
    let k = accuracy.len().checked_sub(1)?;
    if k < rule.patience || k < from + rule.patience {
        return None;
    }
    let split = k + 1 - rule.patience;
    let best = |xs: &[f64]| xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (before, recent) = (best(&accuracy[..split]), best(&accuracy[split..]));
    if recent - before > rule.min_delta + 1e-12 {
        return None;
    }
    Some(format!(
        "held-out accuracy has not improved for {} iteration{}: best {:.1}% since iteration {split}, {:.1}% before",
        rule.patience,
        if rule.patience == 1 { "" } else { "s" },
        recent * 100.0,
        before * 100.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(patience: usize, min_delta: f64) -> EarlyStopConfig {
        EarlyStopConfig { patience, min_delta }
    }

    #[test]
    fn stops_after_patience_iterations_without_improvement() {
        let history = [0.10, 0.30, 0.40, 0.38, 0.40];
        let stop = |n: usize, r: &EarlyStopConfig| should_stop(&history[..n], r, 0).is_some();
        assert!(!stop(1, &rule(1, 0.0)), "the base model alone never stops a run");
        assert!(!stop(2, &rule(1, 0.0)));
        assert!(!stop(3, &rule(1, 0.0)));
        assert!(stop(4, &rule(1, 0.0)), "0.38 after 0.40");
        assert!(!stop(4, &rule(2, 0.0)), "one bad iteration is within a patience of 2");
        assert!(stop(5, &rule(2, 0.0)), "equal is not better");
        // A rise must exceed min-delta.
        assert!(stop(3, &rule(1, 0.1 + 1e-9)));
        assert!(!stop(3, &rule(1, 0.05)));
    }

    #[test]
    fn a_resumed_run_gets_a_fresh_window() {
        let history = [0.1, 0.3, 0.2, 0.2];
        let rule = rule(1, 0.0);
        assert!(should_stop(&history[..3], &rule, 0).is_some());
        // Resumed after stopping at iteration 2: iteration 3 alone fills the window again.
        assert!(should_stop(&history[..3], &rule, 2).is_none());
        assert!(should_stop(&history, &rule, 2).is_some());
        let reason = should_stop(&history, &rule, 2).unwrap();
        assert!(reason.contains("1 iteration:") && reason.contains("20.0%") && reason.contains("30.0%"), "{reason}");
    }
}
