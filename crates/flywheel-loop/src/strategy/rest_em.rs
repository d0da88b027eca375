//! ReST-EM (Singh et al. 2023): expectation-maximisation with a binary reward. The E-step samples
//! `samples-per-problem` completions of every training problem from the current model and keeps
//! the correct ones, at most `max-per-problem` distinct texts per problem (10 in the paper), so
//! that easy problems do not swamp the set; the M-step fine-tunes on them, from the base model
//! (`[training] fine-tune-from = "base"`, the default). No hints are shown.
//!
//! "Correct" is STaR's keep rule ([`KeepPolicy`]): the verifier's verdict, a completion that does
//! not state its answer before its working, and with `check-arithmetic` one whose written-out
//! equations all hold and compute the answer. A sample's reward is 1 when it is correct so, else 0.

use super::star::{select, KeepPolicy};
use super::{grow, training_example, Collected, Context, Strategy, StrategyStats, TrainingSet};
use crate::config::RestEmConfig;

/// ReST-EM as a [`Strategy`].
#[derive(Debug, Clone)]
pub struct RestEm {
    config: RestEmConfig,
}

impl RestEm {
    /// ReST-EM with `config`.
    pub fn new(config: RestEmConfig) -> Self {
        Self { config }
    }

    fn policy(&self) -> KeepPolicy {
        KeepPolicy { check_arithmetic: self.config.check_arithmetic, per_problem: self.config.max_per_problem }
    }
}

impl Strategy for RestEm {
    fn collect(&mut self, cx: &mut Context<'_>) -> crate::Result<Collected> {
        let task = cx.task;
        let (problems, mut grouped, tokens) = grow(cx, &self.config.sampling())?;

        let policy = self.policy();
        let unlimited = KeepPolicy { per_problem: usize::MAX, ..policy };
        let (mut solved, mut capped) = (0, 0);
        let mut examples = Vec::new();
        for (problem, records) in problems.iter().zip(&mut grouped) {
            for record in records.iter_mut() {
                record.reward = f64::from(u8::from(policy.admits(record)));
            }
            let kept = select(records, policy);
            capped += select(records, unlimited).len() - kept.len();
            solved += usize::from(!kept.is_empty());
            for i in kept {
                records[i].kept = true;
                examples.push(training_example(task, problem, &records[i]));
            }
        }
        Ok(Collected {
            samples: grouped.into_iter().flatten().collect(),
            sets: vec![TrainingSet { label: "correct".into(), examples }],
            tokens,
            stats: StrategyStats::RestEm { solved, capped },
        })
    }
}

#[cfg(test)]
mod tests {
    use flywheel_core::NullReporter;

    use super::*;
    use crate::strategy::testing::{arith_word, Scripted};
    use crate::Task;

    #[test]
    fn keeps_at_most_the_cap_of_distinct_correct_samples_and_never_shows_a_hint() {
        let task = arith_word(4, 2, 0.0, 3);
        let answers: std::collections::HashMap<String, String> =
            task.train_problems().iter().map(|p| (task.prompt(p), p.answer.clone())).collect();
        // Samples 0-3 are right in three distinct texts (1 repeats 0), 4-5 are wrong.
        let mut model = Scripted(|prompt: &str, i| {
            assert!(!prompt.contains("Hint"), "ReST-EM shows no hint: {prompt}");
            let answer = &answers[prompt];
            match i {
                0 | 1 => format!("The sum is {answer}.\nThe answer is {answer}."),
                2 => format!("So we get {answer}.\nThe answer is {answer}."),
                3 => format!("Counting up gives {answer}.\nThe answer is {answer}."),
                _ => "The answer is 100000.".to_owned(),
            }
        });
        let config: RestEmConfig =
            toml::from_str("samples-per-problem = 6\ntemperature = 1.0\nmax-new-tokens = 9\nmax-per-problem = 2")
                .unwrap();
        let mut cx = Context { task: &task, generator: &mut model, judge: None, seed: 9, reporter: &NullReporter };
        let out = RestEm::new(config).collect(&mut cx).expect("collect");
        assert_eq!(out.samples.len(), 24);
        assert_eq!(out.sets[0].examples.len(), 8, "two per problem");
        assert_eq!(out.stats, StrategyStats::RestEm { solved: 4, capped: 4 });
        let kept: Vec<_> = out.samples.iter().filter(|r| r.kept).collect();
        assert!(kept.iter().all(|r| r.correct && r.reward == 1.0));
        assert!(out.samples.iter().filter(|r| !r.correct).all(|r| r.reward == 0.0 && !r.kept));
        // The two kept texts of a problem differ.
        for pair in out.sets[0].examples.chunks(2) {
            assert_ne!(pair[0].messages[1].content, pair[1].messages[1].content);
        }
    }
}
