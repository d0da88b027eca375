//! ReST (Gulcehre et al. 2023): a Grow step samples many completions per problem from the current
//! model and scores them with a reward; then several Improve steps each keep the samples whose
//! reward reaches a threshold that rises step by step, and fine-tune on them, each step starting
//! from the model the previous one left. The seed's simpler filter, the top fraction of all
//! samples by reward, is the `top-fraction` option (one Improve step).
//!
//! Selection ([`select`]) is a pure function of the scored samples; the runner carries out the
//! training of the returned sets in order.

use std::collections::HashMap;

use flywheel_core::Problem;

use super::{grow, mean, training_example, Collected, Context, ImproveStats, Strategy, StrategyStats, TrainingSet};
use crate::config::RestConfig;
use crate::records::SampleRecord;
use crate::reward::{self, Reward, RewardContext};

/// Which samples one Improve step keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Filter {
    /// Samples whose reward is at least this.
    AtLeast(f64),
    /// This share of all samples, highest reward first (ties in sampling order).
    TopFraction(f64),
}

impl Filter {
    /// The filters of a config's Improve steps, in order.
    pub fn schedule(config: &RestConfig) -> Vec<Filter> {
        match config.top_fraction {
            Some(f) => vec![Filter::TopFraction(f)],
            None => config.thresholds.iter().map(|&t| Filter::AtLeast(t)).collect(),
        }
    }

    /// How the filter reads in logs: `reward >= 0.5`, `top 25%`.
    pub fn label(&self) -> String {
        match self {
            Filter::AtLeast(t) => format!("reward >= {t}"),
            Filter::TopFraction(f) => format!("top {}%", f * 100.0),
        }
    }
}

/// The indices (ascending) of the samples `filter` keeps, at most `cap` per problem (highest reward
/// first, ties in sampling order). A problem's repeated text (up to surrounding white space) is kept
/// once.
pub fn select(records: &[SampleRecord], filter: Filter, cap: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by(|&a, &b| records[b].reward.total_cmp(&records[a].reward).then(a.cmp(&b)));
    let passing: Vec<usize> = match filter {
        Filter::AtLeast(t) => order.into_iter().filter(|&i| records[i].reward >= t).collect(),
        Filter::TopFraction(f) => order.into_iter().take((records.len() as f64 * f).floor() as usize).collect(),
    };
    let mut per_problem: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut kept = Vec::new();
    for i in passing {
        let taken = per_problem.entry(records[i].problem_id.as_str()).or_default();
        let repeat = taken.iter().any(|&k| records[k].completion.trim() == records[i].completion.trim());
        if !repeat && cap.is_none_or(|c| taken.len() < c) {
            taken.push(i);
            kept.push(i);
        }
    }
    kept.sort_unstable();
    kept
}

/// ReST as a [`Strategy`].
pub struct Rest {
    config: RestConfig,
    reward: Box<dyn Reward>,
}

impl Rest {
    /// ReST with `config`.
    pub fn new(config: RestConfig) -> Self {
        let reward = Box::new(reward::build(&config.reward));
        Self { config, reward }
    }
}

impl Strategy for Rest {
    fn collect(&mut self, cx: &mut Context<'_>) -> crate::Result<Collected> {
        let task = cx.task;
        let (problems, grouped, tokens) = grow(cx, &self.config.sampling())?;

        // Score: every sample of the Grow step, in one batch.
        let owners: Vec<&Problem> =
            problems.iter().zip(&grouped).flat_map(|(p, records)| std::iter::repeat_n(*p, records.len())).collect();
        let mut samples: Vec<SampleRecord> = grouped.into_iter().flatten().collect();
        let items: Vec<(&Problem, &SampleRecord)> = owners.iter().copied().zip(&samples).collect();
        let mut reward_cx =
            RewardContext { task, generator: &mut *cx.generator, seed: cx.seed ^ 0x2e57, reporter: cx.reporter };
        let scores = self.reward.score(&mut reward_cx, &items)?;
        for (record, value) in samples.iter_mut().zip(&scores.values) {
            record.reward = *value;
        }

        // Improve: one training set per filter, each from the model the previous step left.
        // A sample counts as kept (for the metrics and the preference pairs) when the last, strictest
        // step keeps it.
        let schedule = Filter::schedule(&self.config);
        let mut sets = Vec::new();
        let mut improve = Vec::new();
        for (step, &filter) in schedule.iter().enumerate() {
            let kept = select(&samples, filter, self.config.max_per_problem);
            if step + 1 == schedule.len() {
                for &i in &kept {
                    samples[i].kept = true;
                }
            }
            improve.push(ImproveStats {
                filter: filter.label(),
                kept: kept.len(),
                mean_reward: mean(kept.iter().map(|&i| samples[i].reward)),
            });
            let examples = kept.iter().map(|&i| training_example(task, owners[i], &samples[i])).collect();
            sets.push(TrainingSet { label: filter.label(), examples });
        }
        Ok(Collected { samples, sets, tokens, stats: StrategyStats::Rest { improve, reward_missing: scores.missing } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(problem: &str, text: &str, reward: f64) -> SampleRecord {
        SampleRecord {
            problem_id: problem.into(),
            bucket: String::new(),
            prompt: String::new(),
            completion: text.into(),
            extracted: None,
            correct: reward >= 1.0,
            rationalized: false,
            answer_first: false,
            false_equation: None,
            answer_computed: false,
            reward,
            kept: false,
            revision: false,
            judge: None,
        }
    }

    fn records() -> Vec<SampleRecord> {
        vec![
            record("a", "a1", 0.2),
            record("a", "a2", 0.9),
            record("a", "a3", 0.6),
            record("a", " a2 ", 0.9),
            record("b", "b1", 1.0),
            record("b", "b2", 0.5),
            record("c", "c1", 0.1),
            record("c", "c2", 0.7),
        ]
    }

    #[test]
    fn rising_thresholds_keep_fewer_samples() {
        let config: RestConfig = toml::from_str(
            "samples-per-problem = 4\ntemperature = 0.8\nmax-new-tokens = 9\nthresholds = [0.5, 0.7, 1.0]",
        )
        .unwrap();
        let schedule = Filter::schedule(&config);
        assert_eq!(schedule, [Filter::AtLeast(0.5), Filter::AtLeast(0.7), Filter::AtLeast(1.0)]);
        let r = records();
        // The repeat of a2 (index 3) is never kept.
        assert_eq!(select(&r, schedule[0], None), [1, 2, 4, 5, 7]);
        assert_eq!(select(&r, schedule[1], None), [1, 4, 7]);
        assert_eq!(select(&r, schedule[2], None), [4]);
        assert_eq!(schedule[0].label(), "reward >= 0.5");
    }

    #[test]
    fn the_cap_keeps_the_best_samples_of_each_problem() {
        let r = records();
        assert_eq!(select(&r, Filter::AtLeast(0.0), Some(1)), [1, 4, 7]);
        assert_eq!(select(&r, Filter::AtLeast(0.0), Some(2)), [1, 2, 4, 5, 6, 7]);
    }

    #[test]
    fn top_fraction_ranks_all_samples_by_reward() {
        let r = records();
        // A quarter of 8 samples: the two best, b1 (1.0) then a2 (0.9, the earlier of the tie).
        assert_eq!(select(&r, Filter::TopFraction(0.25), None), [1, 4]);
        // Half: the repeat of a2 takes a place in the ranking but is not kept twice.
        assert_eq!(select(&r, Filter::TopFraction(0.5), None), [1, 4, 7]);
        assert_eq!(Filter::TopFraction(0.25).label(), "top 25%");
    }
}
