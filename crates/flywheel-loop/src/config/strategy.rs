//! The `[strategy]` table: how each iteration makes its training data, and the rewards it scores
//! samples with.
//!
//! Every strategy samples from the current model with the same keys (`samples-per-problem`,
//! `temperature`, `top-p`, `top-k`, `max-new-tokens`, `few-shot`); [`SamplingConfig`] is that common
//! part, read from whichever strategy is configured.

use serde::{Deserialize, Serialize};

use super::TaskConfig;

/// How training data is generated each iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Self-Taught Reasoner (Zelikman et al. 2022).
    Star(StarConfig),
    /// Reinforced Self-Training (Gulcehre et al. 2023): Grow once, Improve at rising thresholds.
    Rest(RestConfig),
    /// ReST-EM (Singh et al. 2023): binary reward, a cap of correct samples per problem.
    RestEm(RestEmConfig),
    /// Self-play: the model solves, judges its own solutions and revises the rejected ones.
    SelfPlay(SelfPlayConfig),
}

/// The sampling settings every strategy shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// Samples drawn per problem.
    pub samples_per_problem: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Top-k cut (0: off).
    pub top_k: usize,
    /// Longest completion sampled.
    pub max_new_tokens: usize,
    /// Show the task's worked examples before each question when sampling.
    pub few_shot: bool,
}

impl StrategyConfig {
    /// The strategy's `type` in the config.
    pub fn name(&self) -> &'static str {
        match self {
            StrategyConfig::Star(_) => "star",
            StrategyConfig::Rest(_) => "rest",
            StrategyConfig::RestEm(_) => "rest-em",
            StrategyConfig::SelfPlay(_) => "self-play",
        }
    }

    /// The sampling settings of the configured strategy.
    pub fn sampling(&self) -> SamplingConfig {
        match self {
            StrategyConfig::Star(c) => c.sampling(),
            StrategyConfig::Rest(c) => c.sampling(),
            StrategyConfig::RestEm(c) => c.sampling(),
            StrategyConfig::SelfPlay(c) => c.sampling(),
        }
    }

    /// The same strategy sampling at `temperature` (a temperature schedule's iteration).
    pub fn with_temperature(&self, temperature: f32) -> Self {
        let mut c = self.clone();
        match &mut c {
            StrategyConfig::Star(s) => s.temperature = temperature,
            StrategyConfig::Rest(s) => s.temperature = temperature,
            StrategyConfig::RestEm(s) => s.temperature = temperature,
            StrategyConfig::SelfPlay(s) => s.temperature = temperature,
        }
        c
    }

    /// Whether the strategy judges with the base model rather than the current one.
    pub fn judges_with_base(&self) -> bool {
        matches!(self, StrategyConfig::SelfPlay(c) if c.judge_model == JudgeModel::Base)
    }

    /// Checks every setting; the message names the key and its allowed range.
    pub(super) fn validate(&self, task: &TaskConfig) -> Result<(), String> {
        let s = self.sampling();
        if s.samples_per_problem == 0 {
            return Err("strategy.samples-per-problem must be at least 1".into());
        }
        check_temperature("strategy.temperature", s.temperature)?;
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(format!("strategy.top-p must be in (0, 1], got {}", s.top_p));
        }
        if s.max_new_tokens == 0 {
            return Err("strategy.max-new-tokens must be at least 1".into());
        }
        if s.few_shot && !matches!(task, TaskConfig::ArithWord(_)) {
            return Err("strategy.few-shot needs a task with worked examples (arith-word)".into());
        }
        match self {
            StrategyConfig::Star(c) => {
                if c.rationalization && c.rationalization_samples == 0 {
                    return Err("strategy.rationalization-samples must be at least 1".into());
                }
                if c.keep_per_problem == 0 {
                    return Err("strategy.keep-per-problem must be at least 1".into());
                }
            }
            StrategyConfig::Rest(c) => {
                c.reward.validate()?;
                match (&c.thresholds[..], c.top_fraction) {
                    ([], None) => {
                        return Err("strategy: ReST needs `thresholds` (one per Improve step) or `top-fraction`".into())
                    }
                    ([_, ..], Some(_)) => {
                        return Err("strategy: give either `thresholds` or `top-fraction`, not both".into())
                    }
                    (_, Some(f)) if !(f > 0.0 && f <= 1.0) => {
                        return Err(format!("strategy.top-fraction must be in (0, 1], got {f}"))
                    }
                    _ => {}
                }
                if let Some(bad) = c.thresholds.iter().find(|t| !t.is_finite()) {
                    return Err(format!("strategy.thresholds must be finite numbers, got {bad}"));
                }
                if c.thresholds.windows(2).any(|w| w[1] < w[0]) {
                    return Err(format!("strategy.thresholds must rise step by step, got {:?}", c.thresholds));
                }
                if c.max_per_problem == Some(0) {
                    return Err("strategy.max-per-problem must be at least 1".into());
                }
            }
            StrategyConfig::RestEm(c) => {
                if c.max_per_problem == 0 {
                    return Err("strategy.max-per-problem must be at least 1".into());
                }
            }
            StrategyConfig::SelfPlay(c) => {
                if c.judge_samples == 0 {
                    return Err("strategy.judge-samples must be at least 1".into());
                }
                check_temperature("strategy.judge-temperature", c.judge_temperature)?;
                check_temperature("strategy.revise-temperature", c.revise_temperature)?;
                if c.judge_max_new_tokens == 0 {
                    return Err("strategy.judge-max-new-tokens must be at least 1".into());
                }
                if !(0.0..=1.0).contains(&c.quality_threshold) {
                    return Err(format!("strategy.quality-threshold must be in [0, 1], got {}", c.quality_threshold));
                }
                if c.keep_per_problem == 0 {
                    return Err("strategy.keep-per-problem must be at least 1".into());
                }
            }
        }
        Ok(())
    }
}

/// `fn sampling(&self) -> SamplingConfig` for strategy configs, which all name the sampling keys alike.
macro_rules! sampling_of {
    ($($config:ty),*) => {$(
        impl $config {
            /// The sampling settings of this strategy.
            pub fn sampling(&self) -> SamplingConfig {
                SamplingConfig {
                    samples_per_problem: self.samples_per_problem,
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    max_new_tokens: self.max_new_tokens,
                    few_shot: self.few_shot,
                }
            }
        }
    )*};
}

sampling_of!(StarConfig, RestConfig, RestEmConfig, SelfPlayConfig);

fn check_temperature(key: &str, t: f32) -> Result<(), String> {
    if t.is_finite() && t >= 0.0 {
        Ok(())
    } else {
        Err(format!("{key} must be a number of at least 0 (0: greedy), got {t}"))
    }
}

/// Settings of STaR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StarConfig {
    /// Samples drawn per problem.
    pub samples_per_problem: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus mass.
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Top-k cut (0: off).
    #[serde(default)]
    pub top_k: usize,
    /// Longest completion sampled.
    pub max_new_tokens: usize,
    /// For problems without a correct sample, retry with the answer shown as a hint.
    pub rationalization: bool,
    /// Samples per rationalization attempt.
    #[serde(default = "default_one")]
    pub rationalization_samples: usize,
    /// Show the task's worked examples before each question when sampling (STaR's few-shot
    /// prompt set). Kept rationales are saved with the plain prompt, and evaluation never shows
    /// them, so the trained model answers without examples.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub few_shot: bool,
    /// Keep a rationale only if every equation it writes out holds (`8 * 4 = 32`) and one of them
    /// computes its final answer, not just if the answer is right (see
    /// [`flywheel_verify::arithmetic`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check_arithmetic: bool,
    /// Most rationales kept per problem: distinct correct samples, in sampling order (1: STaR's one
    /// rationale per problem; more, as ReST-EM's cap, gives the model several ways to an answer).
    #[serde(default = "default_one", skip_serializing_if = "is_one")]
    pub keep_per_problem: usize,
}

/// Settings of ReST: one Grow step samples `samples-per-problem` completions per problem from the
/// current model; each Improve step keeps the samples whose reward reaches its threshold and
/// fine-tunes on them, starting from the model the previous step left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestConfig {
    /// Samples drawn per problem in the Grow step.
    pub samples_per_problem: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus mass.
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Top-k cut (0: off).
    #[serde(default)]
    pub top_k: usize,
    /// Longest completion sampled.
    pub max_new_tokens: usize,
    /// Show the task's worked examples before each question when sampling.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub few_shot: bool,
    /// The reward each sample is scored with.
    #[serde(default)]
    pub reward: RewardConfig,
    /// One Improve step per threshold, each keeping the samples whose reward is at least its
    /// threshold; the thresholds must not fall.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<f64>,
    /// Instead of thresholds, one Improve step keeping this share of all samples, highest reward
    /// first (the seed's top-K filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_fraction: Option<f64>,
    /// Most samples kept per problem in each Improve step, highest reward first (absent: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_problem: Option<usize>,
}

/// Settings of ReST-EM: the E-step keeps up to `max-per-problem` distinct correct samples of each
/// problem (binary reward, no hints), the M-step fine-tunes on them (from the base model, as
/// `[training] fine-tune-from = "base"` does by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestEmConfig {
    /// Samples drawn per problem.
    pub samples_per_problem: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus mass.
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Top-k cut (0: off).
    #[serde(default)]
    pub top_k: usize,
    /// Longest completion sampled.
    pub max_new_tokens: usize,
    /// Show the task's worked examples before each question when sampling.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub few_shot: bool,
    /// Most correct samples kept per problem (10 in the paper).
    #[serde(default = "default_rest_em_cap")]
    pub max_per_problem: usize,
    /// Count a sample as correct only if its written-out arithmetic also holds and computes its
    /// answer (a stricter binary reward).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check_arithmetic: bool,
}

/// Settings of self-play. The gold answers are never used to choose what is kept; they only
/// measure the judge afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SelfPlayConfig {
    /// Solutions drawn per problem.
    pub samples_per_problem: usize,
    /// Sampling temperature of the solver.
    pub temperature: f32,
    /// Nucleus mass.
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Top-k cut (0: off).
    #[serde(default)]
    pub top_k: usize,
    /// Longest solution sampled.
    pub max_new_tokens: usize,
    /// Show the task's worked examples before each question when solving.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub few_shot: bool,
    /// Which model judges: the current one (the seed's self-play) or the base model of iteration
    /// 0, a judge that training on solutions cannot change.
    #[serde(default)]
    pub judge_model: JudgeModel,
    /// Judgements drawn per solution; a solution's quality is the share that say CORRECT.
    #[serde(default = "default_one")]
    pub judge_samples: usize,
    /// Temperature of the judge (0: greedy).
    #[serde(default)]
    pub judge_temperature: f32,
    /// Longest judgement.
    #[serde(default = "default_judge_tokens")]
    pub judge_max_new_tokens: usize,
    /// Revised solutions drawn for a problem none of whose solutions was judged good enough,
    /// written from the rejected attempts and their critiques (0: no revision).
    #[serde(default = "default_one")]
    pub revisions: usize,
    /// Temperature of the revisions.
    #[serde(default = "default_revise_temperature")]
    pub revise_temperature: f32,
    /// Least quality (share of CORRECT judgements) a solution needs to be kept.
    #[serde(default = "default_quality_threshold")]
    pub quality_threshold: f64,
    /// Most solutions kept per problem, best quality first.
    #[serde(default = "default_one")]
    pub keep_per_problem: usize,
}

/// The model that judges in self-play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeModel {
    /// The model being improved, as it is in this iteration.
    #[default]
    Current,
    /// The base model (iteration 0), frozen.
    Base,
}

/// A reward: a weighted sum of the basic rewards (a single one when only its weight is set). The
/// seed's "reward model + correctness bonus" is `self-judge = 1.0, correctness = 1.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RewardConfig {
    /// Weight of correctness: 1 when flywheel-verify judges the answer right, else 0.
    #[serde(default = "default_correctness")]
    pub correctness: f64,
    /// Weight of the arithmetic process reward: the mean of the share of written-out equations
    /// that hold and whether one of them computes the final answer (0 without equations).
    #[serde(default)]
    pub arithmetic: f64,
    /// Weight of the model's own rating of the sample (0 to 1; a reply that cannot be read scores 0).
    #[serde(default)]
    pub self_judge: f64,
    /// How the model is asked for its rating.
    #[serde(default)]
    pub judge: SelfJudgeConfig,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self { correctness: 1.0, arithmetic: 0.0, self_judge: 0.0, judge: SelfJudgeConfig::default() }
    }
}

impl RewardConfig {
    fn validate(&self) -> Result<(), String> {
        let weights =
            [("correctness", self.correctness), ("arithmetic", self.arithmetic), ("self-judge", self.self_judge)];
        if let Some((key, w)) = weights.iter().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
            return Err(format!("strategy.reward.{key} must be a weight of at least 0, got {w}"));
        }
        if weights.iter().all(|(_, w)| *w == 0.0) {
            return Err("strategy.reward: every weight is 0; give at least one reward a weight".into());
        }
        check_temperature("strategy.reward.judge.temperature", self.judge.temperature)?;
        if self.judge.max_new_tokens == 0 {
            return Err("strategy.reward.judge.max-new-tokens must be at least 1".into());
        }
        if !(self.judge.scale.is_finite() && self.judge.scale >= 1.0) {
            return Err(format!("strategy.reward.judge.scale must be at least 1, got {}", self.judge.scale));
        }
        Ok(())
    }
}

/// The prompt of the self-judge reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SelfJudgeConfig {
    /// Highest score; the model is asked for a whole number from 0 to this, and its reply is
    /// divided by it.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Longest reply read.
    #[serde(default = "default_score_tokens")]
    pub max_new_tokens: usize,
    /// Temperature of the rating (0: greedy).
    #[serde(default)]
    pub temperature: f32,
}

impl Default for SelfJudgeConfig {
    fn default() -> Self {
        Self { scale: default_scale(), max_new_tokens: default_score_tokens(), temperature: 0.0 }
    }
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn default_top_p() -> f32 {
    1.0
}

fn default_one() -> usize {
    1
}

fn default_rest_em_cap() -> usize {
    10
}

fn default_judge_tokens() -> usize {
    48
}

fn default_revise_temperature() -> f32 {
    0.5
}

fn default_quality_threshold() -> f64 {
    0.7
}

fn default_correctness() -> f64 {
    1.0
}

fn default_scale() -> f64 {
    10.0
}

fn default_score_tokens() -> usize {
    8
}
