//! Strategies: how an iteration turns the current model's samples into training data.
//!
//! The runner asks a [`Strategy`] for one iteration's data ([`Strategy::collect`]) and knows nothing
//! of any one strategy: it writes the samples, trains on the returned [`TrainingSet`]s in order
//! (each from the model the previous one left: ReST's Improve steps), and evaluates. Each strategy
//! lives in a file of its own:
//!
//! - [`star`]: STaR (Zelikman et al. 2022), correct rationales and rationalization with hints;
//! - [`rest`]: ReST (Gulcehre et al. 2023), one Grow step and Improve steps at rising reward thresholds;
//! - [`rest_em`]: ReST-EM (Singh et al. 2023), binary reward with a cap of samples per problem;
//! - [`self_play`]: the model solves, judges its own solutions and revises the rejected ones.
//!
//! Every strategy records the gold verdict of each sample (also self-play, which never uses it to
//! choose) so that the runner can report how much of the kept data is truly correct.

pub mod pairs;
pub mod rest;
pub mod rest_em;
pub mod self_play;
pub mod star;
#[cfg(test)]
pub(crate) mod testing;

use flywheel_core::{GenerationRequest, Generator, Message, Problem, Reporter, SamplingParams, TrainExample};
use serde::{Deserialize, Serialize};

use crate::config::{SamplingConfig, StrategyConfig};
use crate::records::{judge_completions, SampleRecord};
use crate::Task;

/// What a strategy needs from the iteration it runs in.
pub struct Context<'a> {
    /// The task posing the training problems.
    pub task: &'a dyn Task,
    /// The current model.
    pub generator: &'a mut dyn Generator,
    /// A separate judge, where the strategy asked for one (self-play's `judge-model = "base"`).
    pub judge: Option<&'a mut dyn Generator>,
    /// The seed of this iteration's sampling.
    pub seed: u64,
    /// Progress of long phases.
    pub reporter: &'a dyn Reporter,
}

/// One iteration's data, as a strategy returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// Every sample drawn, with its verdict, reward and whether it was kept.
    pub samples: Vec<SampleRecord>,
    /// The training sets, trained one after another (one for every strategy but ReST).
    pub sets: Vec<TrainingSet>,
    /// Tokens generated, all roles together.
    pub tokens: u64,
    /// The strategy's own counters.
    pub stats: StrategyStats,
}

/// One training set of an iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSet {
    /// What selected it (`correct`, `reward >= 0.5`, ...), for logs and reports.
    pub label: String,
    /// The examples, each with the task's plain prompt.
    pub examples: Vec<TrainExample>,
}

/// Counters only one strategy has, written into the iteration's `sample` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "kebab-case")]
pub enum StrategyStats {
    /// STaR.
    Star {
        /// Problems solved without a hint.
        solved: usize,
        /// Problems solved only through rationalization.
        rationalized: usize,
    },
    /// ReST.
    Rest {
        /// One entry per Improve step.
        improve: Vec<ImproveStats>,
        /// Rewards that could not be computed (an unreadable self-judge reply), scored 0.
        reward_missing: usize,
    },
    /// ReST-EM.
    RestEm {
        /// Problems with at least one correct sample.
        solved: usize,
        /// Correct samples left out by the per-problem cap.
        capped: usize,
    },
    /// Self-play.
    SelfPlay(self_play::SelfPlayStats),
}

/// What one ReST Improve step kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImproveStats {
    /// The filter: `reward >= 0.5` or `top 25%`.
    pub filter: String,
    /// Samples kept.
    pub kept: usize,
    /// Mean reward of the kept samples.
    pub mean_reward: f64,
}

impl Context<'_> {
    /// The model that judges: the separate judge where there is one, else the current model.
    pub fn judge(&mut self) -> &mut dyn Generator {
        match &mut self.judge {
            Some(judge) => &mut **judge,
            None => &mut *self.generator,
        }
    }
}

/// Makes one iteration's training data from the current model's samples.
pub trait Strategy {
    /// Samples the task's training problems with `cx.generator`, judges and selects.
    fn collect(&mut self, cx: &mut Context<'_>) -> crate::Result<Collected>;
}

/// The strategy a config asks for.
pub fn build(config: &StrategyConfig) -> Box<dyn Strategy> {
    match config {
        StrategyConfig::Star(c) => Box::new(star::Star::new(c.clone())),
        StrategyConfig::Rest(c) => Box::new(rest::Rest::new(c.clone())),
        StrategyConfig::RestEm(c) => Box::new(rest_em::RestEm::new(c.clone())),
        StrategyConfig::SelfPlay(c) => Box::new(self_play::SelfPlay::new(c.clone())),
    }
}

/// The sampler settings of `sampling`, seeded with `seed`.
pub(crate) fn sampling_params(sampling: &SamplingConfig, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        top_k: sampling.top_k,
        max_new_tokens: sampling.max_new_tokens,
        stop: Vec::new(),
        seed,
        ignore_eos: false,
    }
}

/// The worked examples shown before each question, when `sampling.few_shot` asks for them.
pub(crate) fn context(task: &dyn Task, sampling: &SamplingConfig) -> Vec<Message> {
    if sampling.few_shot {
        task.few_shot()
    } else {
        Vec::new()
    }
}

/// The training problems, their judged samples (one list per problem) and the tokens generated.
pub(crate) type Grown<'t> = (Vec<&'t Problem>, Vec<Vec<SampleRecord>>, u64);

/// The Grow step every strategy starts with: `samples-per-problem` completions of each training
/// problem's plain prompt (after the task's worked examples with `few-shot`), sampled with
/// `cx.seed` and judged. Returns the problems, their records (one list per problem) and the
/// tokens generated.
pub(crate) fn grow<'t>(cx: &mut Context<'t>, sampling: &SamplingConfig) -> crate::Result<Grown<'t>> {
    let task = cx.task;
    let problems: Vec<&Problem> = task.train_problems().iter().collect();
    let shots = context(task, sampling);
    let requests: Vec<GenerationRequest> = problems
        .iter()
        .map(|p| GenerationRequest::new(task.prompt(p), sampling.samples_per_problem).with_context(shots.clone()))
        .collect();
    let (records, tokens) = sample_and_judge(cx, &problems, &requests, &sampling_params(sampling, cx.seed), false)?;
    Ok((problems, records, tokens))
}

/// `n` completions of each prompt, judged against its problem's gold answer: one list of records
/// per problem, and the tokens generated. `rationalized` marks hinted prompts.
pub(crate) fn sample_and_judge(
    cx: &mut Context<'_>,
    problems: &[&Problem],
    requests: &[GenerationRequest],
    params: &SamplingParams,
    rationalized: bool,
) -> crate::Result<(Vec<Vec<SampleRecord>>, u64)> {
    let completions = cx.generator.generate(requests, params, cx.reporter)?;
    let verifier = cx.task.verifier();
    let mut tokens = 0u64;
    let records = problems
        .iter()
        .zip(requests)
        .zip(&completions)
        .map(|((problem, request), completions)| {
            tokens += completions.iter().map(|c| c.tokens as u64).sum::<u64>();
            judge_completions(&verifier, problem, &request.prompt, completions, rationalized)
        })
        .collect();
    Ok((records, tokens))
}

/// The training example of a kept sample: the task's plain prompt (never a hinted or revision
/// prompt) and the completion.
pub fn training_example(task: &dyn Task, problem: &Problem, kept: &SampleRecord) -> TrainExample {
    TrainExample::single_turn(task.prompt(problem), kept.completion.clone())
}

/// The mean of `values` (0 for none).
pub(crate) fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}
