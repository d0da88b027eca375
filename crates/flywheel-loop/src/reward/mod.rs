//! Rewards: a number for each sample, scored in batches.
//!
//! - [`Correctness`]: 1 when flywheel-verify judges the final answer right, else 0.
//! - [`Arithmetic`]: a verifiable process reward, the task's [`Task::process_score`]: for chat
//!   tasks the mean of the share of written-out equations that hold and whether one of them
//!   computes the final answer (0 without equations); for addition the share of scratchpad lines
//!   that are right.
//! - [`SelfJudge`]: the model rates the sample itself; a reply that is not a number in range is
//!   counted as missing and scores 0, never a pass.
//! - [`Composite`]: a weighted sum of rewards; the config builds one from its weights ([`build`]).
//!
//! Rewards are scored for a whole batch at once, so that a reward that asks a model (the
//! self-judge) sends one batched request.

mod self_judge;

use flywheel_core::{Generator, Problem, Reporter};
use flywheel_verify::{arithmetic, Answer};

pub use self_judge::{parse_rating, SelfJudge};

use crate::config::RewardConfig;
use crate::records::SampleRecord;
use crate::Task;

/// What a reward may use besides the samples.
pub struct RewardContext<'a> {
    /// The task whose prompts a model-based reward uses.
    pub task: &'a dyn Task,
    /// The model that rates samples (the current policy).
    pub generator: &'a mut dyn Generator,
    /// Seed of any sampling the reward does.
    pub seed: u64,
    /// Progress of a long scoring.
    pub reporter: &'a dyn Reporter,
}

/// The scores of a batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scores {
    /// One score per sample, in order.
    pub values: Vec<f64>,
    /// Samples whose score could not be read (scored 0).
    pub missing: usize,
}

/// A reward on samples.
pub trait Reward {
    /// The scores of `items` (each a sample with its problem), in order.
    fn score(&mut self, cx: &mut RewardContext<'_>, items: &[(&Problem, &SampleRecord)]) -> crate::Result<Scores>;
}

/// 1 for a right final answer, 0 otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Correctness;

impl Reward for Correctness {
    fn score(&mut self, _: &mut RewardContext<'_>, items: &[(&Problem, &SampleRecord)]) -> crate::Result<Scores> {
        Ok(Scores { values: items.iter().map(|(_, r)| f64::from(u8::from(r.correct))).collect(), missing: 0 })
    }
}

/// The arithmetic process reward of one completion whose extracted answer span is `extracted`.
pub fn arithmetic_score(completion: &str, extracted: Option<&str>) -> f64 {
    let equations = arithmetic::equations(completion);
    if equations.is_empty() {
        return 0.0;
    }
    let holding = equations.iter().filter(|e| e.holds()).count() as f64 / equations.len() as f64;
    let computes = match extracted.map(Answer::parse) {
        Some(Answer::Number(n)) => arithmetic::computes(completion, n.to_f64()),
        _ => false,
    };
    (holding + f64::from(u8::from(computes))) / 2.0
}

/// The task's process reward ([`Task::process_score`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Arithmetic;

impl Reward for Arithmetic {
    fn score(&mut self, cx: &mut RewardContext<'_>, items: &[(&Problem, &SampleRecord)]) -> crate::Result<Scores> {
        let values =
            items.iter().map(|(p, r)| cx.task.process_score(p, &r.completion, r.extracted.as_deref())).collect();
        Ok(Scores { values, missing: 0 })
    }
}

/// A weighted sum of rewards.
pub struct Composite {
    parts: Vec<(f64, Box<dyn Reward>)>,
}

impl Composite {
    /// The sum of `parts`, each reward scaled by its weight.
    pub fn new(parts: Vec<(f64, Box<dyn Reward>)>) -> Self {
        Self { parts }
    }
}

impl Reward for Composite {
    fn score(&mut self, cx: &mut RewardContext<'_>, items: &[(&Problem, &SampleRecord)]) -> crate::Result<Scores> {
        let mut total = Scores { values: vec![0.0; items.len()], missing: 0 };
        for (weight, reward) in &mut self.parts {
            let scores = reward.score(cx, items)?;
            for (t, v) in total.values.iter_mut().zip(scores.values) {
                *t += *weight * v;
            }
            total.missing += scores.missing;
        }
        Ok(total)
    }
}

/// The reward a config asks for: the weighted sum of the rewards with a weight above 0.
pub fn build(config: &RewardConfig) -> Composite {
    let mut parts: Vec<(f64, Box<dyn Reward>)> = Vec::new();
    if config.correctness > 0.0 {
        parts.push((config.correctness, Box::new(Correctness)));
    }
    if config.arithmetic > 0.0 {
        parts.push((config.arithmetic, Box::new(Arithmetic)));
    }
    if config.self_judge > 0.0 {
        parts.push((config.self_judge, Box::new(SelfJudge::new(config.judge.clone()))));
    }
    Composite::new(parts)
}

#[cfg(test)]
mod tests {
    use flywheel_core::NullReporter;
    use flywheel_verify::{Format, Verifier};

    use super::*;
    use crate::records::judge_completions;
    use crate::strategy::testing::{completion, Scripted};

    fn problem() -> Problem {
        Problem {
            id: "p".into(),
            question: "8 boxes of 4 pens and 8 more pens?".into(),
            answer: "40".into(),
            bucket: String::new(),
        }
    }

    fn records(texts: &[&str]) -> Vec<SampleRecord> {
        let completions: Vec<_> = texts.iter().map(|t| completion(t)).collect();
        judge_completions(&Verifier::new(Format::Auto), &problem(), "q", &completions, false)
    }

    #[test]
    fn arithmetic_reward_grades_the_working() {
        let score = |text: &str| {
            let r = &records(&[text])[0];
            arithmetic_score(&r.completion, r.extracted.as_deref())
        };
        // Every equation holds and the last computes the answer.
        assert_eq!(score("8 * 4 = 32.\n32 + 8 = 40.\nThe answer is 40."), 1.0);
        // One of two equations is false; the true one computes the answer.
        assert_eq!(score("8 * 4 = 24.\n32 + 8 = 40.\nThe answer is 40."), 0.75);
        // Holds, but the answer stated is not computed.
        assert_eq!(score("8 * 4 = 32.\nThe answer is 40."), 0.5);
        // No equation at all.
        assert_eq!(score("Forty.\nThe answer is 40."), 0.0);
        // An answer span with a unit ("40 pens") still counts as computed.
        assert_eq!(score("8 * 4 + 8 = 40.\nThe answer is 40 pens."), 1.0);
    }

    #[test]
    fn composite_is_the_weighted_sum_and_counts_missing_judge_scores() {
        let texts = ["8 * 4 = 32.\n32 + 8 = 40.\nThe answer is 40.", "8 * 4 = 32.\nThe answer is 32."];
        let recs = records(&texts);
        let p = problem();
        let items: Vec<(&Problem, &SampleRecord)> = recs.iter().map(|r| (&p, r)).collect();
        // The judge rates the first 8/10 and answers the second with something unreadable.
        let mut judge =
            Scripted(|prompt: &str, _| if prompt.contains("32 + 8") { "8".into() } else { "great!".into() });
        let task = crate::strategy::testing::arith_word(1, 1, 0.0, 1);
        let mut cx = RewardContext { task: &task, generator: &mut judge, seed: 1, reporter: &NullReporter };
        let config = RewardConfig { correctness: 1.0, arithmetic: 0.5, self_judge: 2.0, ..RewardConfig::default() };
        let scores = build(&config).score(&mut cx, &items).expect("scores");
        assert_eq!(scores.missing, 1);
        assert!((scores.values[0] - (1.0 + 0.5 * 1.0 + 2.0 * 0.8)).abs() < 1e-12, "{:?}", scores.values);
        assert!((scores.values[1] - (0.0 + 0.5 * 1.0 + 0.0)).abs() < 1e-12, "{:?}", scores.values);
    }
}
