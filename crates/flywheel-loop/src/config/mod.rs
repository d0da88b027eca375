//! The run configuration, read from TOML.
//!
//! Every choice is a typed field; unknown keys are rejected so a typo never silently falls back to a
//! default. Errors name the file and, through `toml`'s messages, the line and key. The tables live
//! in one file each: [`task`] (`[task]`), [`model`] (`[model]`), [`strategy`] (`[strategy]`, with
//! its rewards); this file holds the run, `[training]`, `[eval]` and `[early-stop]`.

mod backends;
mod locate;
mod model;
mod strategy;
mod task;

use std::path::{Path, PathBuf};

use flywheel_core::TrainingParams;
use serde::{Deserialize, Serialize};

pub use backends::{
    CommandTrainerConfig, GeneratorConfig, OpenAiApi, OpenAiGeneratorConfig, TrainerConfig, TRAINER_PLACEHOLDERS,
};
pub use model::{EmbeddedModelConfig, LoraSettings, ModelConfig, PretrainedModelConfig, TrainingPass, LORA_TARGETS};
pub use strategy::{
    JudgeModel, RestConfig, RestEmConfig, RewardConfig, SamplingConfig, SelfJudgeConfig, SelfPlayConfig, StarConfig,
    StrategyConfig,
};
pub use task::{AdditionConfig, ArithWordConfig, JsonlConfig, TaskConfig};

use crate::LoopError;

/// A whole run: task, model, strategy and their settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunConfig {
    /// Name of the run; the default run directory is `runs/NAME`.
    pub name: String,
    /// Master seed; every random choice of the run derives from it.
    pub seed: u64,
    /// Iterations after the base model (iteration 0).
    pub iterations: usize,
    /// Worker threads of the embedded engine (0: all cores). Results are reproducible for a fixed count.
    #[serde(default)]
    pub threads: usize,
    /// The task that poses problems.
    pub task: TaskConfig,
    /// The model to improve.
    pub model: ModelConfig,
    /// Where samples come from, when not from the embedded engine (absent: the embedded engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorConfig>,
    /// What trains each iteration's model, when not the embedded engine (absent: the embedded
    /// engine). The embedded engine still writes iteration 0's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<TrainerConfig>,
    /// How training data is generated.
    pub strategy: StrategyConfig,
    /// Fine-tuning of each iteration.
    pub training: TrainingConfig,
    /// Evaluation on the held-out split.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Stop when held-out accuracy stalls (absent: run every iteration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStopConfig>,
    /// The collapse watch's rules (on by default, warnings only).
    #[serde(default)]
    pub watch: WatchConfig,
    /// Mitigations of collapse applied to each training set (off by default).
    #[serde(default)]
    pub mitigation: MitigationConfig,
    /// Arithmetic practice added to each iteration's training set (off by default).
    #[serde(default, skip_serializing_if = "PracticeConfig::is_off")]
    pub practice: PracticeConfig,
}

/// Whether an iteration's training set replaces the earlier ones' or adds to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataPolicy {
    /// Train on this iteration's selection only.
    #[default]
    Replace,
    /// Train on every earlier iteration's data and this one's (bounded drift, Gerstgrasser et al. 2024).
    Accumulate,
}

/// Mitigations of collapse ([`crate::quality::mitigate`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MitigationConfig {
    /// `"replace"` (default) or `"accumulate"`.
    #[serde(default)]
    pub data: DataPolicy,
    /// Remove examples at this Jaccard similarity (word 3-grams of prompt and answer) or above to
    /// an earlier one, over the whole training set; 0 (default) turns it off.
    #[serde(default)]
    pub near_duplicate_threshold: f64,
    /// At most this many examples of one prompt, the latest ones; 0 (default): no cap.
    #[serde(default)]
    pub max_per_problem: usize,
    /// Share of each training set made of the task's reference solutions of training problems
    /// (natural data: GSM8K's gold solutions for `jsonl`, template-written ones for `arith-word`,
    /// scratchpads for `addition`); 0 (default) turns it off.
    #[serde(default)]
    pub natural_fraction: f64,
    /// Sampling temperature of iteration 1, 2, ...; the last value holds for later iterations.
    /// Empty (default): the strategy's `temperature` throughout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub temperature_schedule: Vec<f32>,
}

impl MitigationConfig {
    /// Whether any mitigation that acts on the training sets is on (the temperature schedule acts
    /// on sampling).
    pub fn changes_training_sets(&self) -> bool {
        self.data == DataPolicy::Accumulate
            || self.near_duplicate_threshold > 0.0
            || self.max_per_problem > 0
            || self.natural_fraction > 0.0
    }

    /// The sampling temperature of iteration `k` (1-based) by the schedule, if there is one.
    pub fn temperature_at(&self, k: usize) -> Option<f32> {
        let last = self.temperature_schedule.len().checked_sub(1)?;
        Some(self.temperature_schedule[k.saturating_sub(1).min(last)])
    }
}

/// Arithmetic practice ([`crate::practice`]): equations shaped like the ones the model's own samples
/// write out, with fresh operands and exact results, added to the first training set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PracticeConfig {
    /// Practice examples added each iteration; 0 (default) turns practice off.
    #[serde(default)]
    pub examples: usize,
    /// Equations in one example, one per line.
    #[serde(default = "default_equations_per_example")]
    pub equations_per_example: usize,
}

impl Default for PracticeConfig {
    fn default() -> Self {
        Self { examples: 0, equations_per_example: default_equations_per_example() }
    }
}

impl PracticeConfig {
    /// Whether practice is off (and the table left out of a written config).
    pub fn is_off(&self) -> bool {
        *self == Self::default()
    }
}

fn default_equations_per_example() -> usize {
    12
}

/// Optimiser settings of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrainingConfig {
    /// Optimiser steps (of the first iteration; later ones grow by `step-growth`).
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// AdamW weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    /// Growth of the step count per iteration (0.2: 20% more each iteration, as in the STaR paper).
    #[serde(default = "default_growth")]
    pub step_growth: f64,
    /// What each iteration fine-tunes: the base model (STaR's and ReST-EM's choice) or the last
    /// iteration's model.
    #[serde(default)]
    pub fine_tune_from: FineTuneFrom,
}

/// The starting point of each iteration's fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FineTuneFrom {
    /// Restart from the base model every iteration (STaR's choice: avoids drift and overfitting).
    #[default]
    Base,
    /// Continue from the previous iteration's model.
    Last,
}

impl TrainingConfig {
    /// Checks every setting of the table `table` (`training`, `model.base-training`).
    pub(super) fn validate(&self, table: &str) -> Result<(), String> {
        if self.steps == 0 {
            return Err(format!("{table}.steps must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(format!("{table}.batch-size must be at least 1"));
        }
        let ranges = [
            (
                "learning-rate",
                self.learning_rate,
                "a number above 0 and at most 1",
                self.learning_rate > 0.0 && self.learning_rate <= 1.0,
            ),
            ("weight-decay", self.weight_decay, "a number from 0 to 1", (0.0..=1.0).contains(&self.weight_decay)),
            (
                "grad-clip",
                self.grad_clip,
                "a number of at least 0 (0: off)",
                self.grad_clip >= 0.0 && self.grad_clip.is_finite(),
            ),
            ("step-growth", self.step_growth, "a number from 0 to 10", (0.0..=10.0).contains(&self.step_growth)),
        ];
        for (key, value, range, ok) in ranges {
            if !ok {
                return Err(format!("{table}.{key} must be {range}, got {value}"));
            }
        }
        if self.warmup_steps > self.steps {
            return Err(format!(
                "{table}.warmup-steps must be at most steps ({}), got {}",
                self.steps, self.warmup_steps
            ));
        }
        Ok(())
    }

    /// Steps of iteration `iteration` (1-based): `steps * (1 + step-growth)^(iteration - 1)`.
    pub fn steps_at(&self, iteration: usize) -> usize {
        let exponent = i32::try_from(iteration.saturating_sub(1)).unwrap_or(i32::MAX);
        (self.steps as f64 * (1.0 + self.step_growth).powi(exponent)).round() as usize
    }

    /// The engine's parameters for a run of `steps` steps seeded with `seed`.
    pub fn params(&self, steps: usize, seed: u64) -> TrainingParams {
        TrainingParams {
            steps,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            warmup_steps: self.warmup_steps,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            seed,
        }
    }
}

fn default_clip() -> f64 {
    1.0
}

fn default_growth() -> f64 {
    0.2
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EvalConfig {
    /// Longest completion decoded in evaluation.
    pub max_new_tokens: usize,
    /// Also draw this many samples per held-out problem and report pass@k and maj@k beside the
    /// greedy accuracy (0: greedy only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub samples: usize,
    /// Temperature of those samples.
    #[serde(default = "default_eval_temperature", skip_serializing_if = "is_default_eval_temperature")]
    pub temperature: f32,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { max_new_tokens: 160, samples: 0, temperature: default_eval_temperature() }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_eval_temperature() -> f32 {
    0.7
}

fn is_default_eval_temperature(t: &f32) -> bool {
    *t == default_eval_temperature()
}

/// Early stopping: end the run when held-out accuracy has not improved for `patience` iterations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EarlyStopConfig {
    /// Iterations without improvement after which the run stops.
    pub patience: usize,
    /// A rise of accuracy (a share, 0.01 = one point) must exceed this to count as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

/// The collapse watch ([`crate::quality::watch`]): rules over each iteration's quality metrics.
/// A count of 0 turns its rule off; a bound of 1 can never be exceeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WatchConfig {
    /// Warn when distinct-2 of the samples has fallen this many iterations in a row.
    #[serde(default = "default_diversity_falling")]
    pub diversity_falling: usize,
    /// Warn when held-out accuracy has fallen this many iterations in a row.
    #[serde(default = "default_accuracy_falling")]
    pub accuracy_falling: usize,
    /// Warn when the samples' repetition (share of repeated 4-grams within a completion) is above.
    #[serde(default = "default_repetition_above")]
    pub repetition_above: f64,
    /// Warn when the samples' near-duplicate rate is above.
    #[serde(default = "default_near_duplicates_above")]
    pub near_duplicates_above: f64,
    /// Warn when the model's perplexity on the natural-text set has risen this many iterations in
    /// a row.
    #[serde(default = "default_perplexity_rising")]
    pub perplexity_rising: usize,
    /// Size of the natural-text set: reference solutions of this many held-out problems (spread
    /// over the split), never trained on, scored by each iteration's model after evaluation. 0
    /// turns the perplexity off; a task without held-out references or a generator that cannot
    /// score text has none.
    #[serde(default = "default_perplexity_texts")]
    pub perplexity_texts: usize,
    /// Rules (by key) whose warning stops the run after the iteration; `flywheel resume` goes on.
    #[serde(default)]
    pub critical: Vec<String>,
}

/// The rule keys of [`WatchConfig`].
pub const WATCH_RULES: [&str; 5] =
    ["diversity-falling", "accuracy-falling", "repetition-above", "near-duplicates-above", "perplexity-rising"];

fn default_diversity_falling() -> usize {
    3
}
fn default_accuracy_falling() -> usize {
    2
}
fn default_repetition_above() -> f64 {
    0.3
}
fn default_near_duplicates_above() -> f64 {
    0.5
}
fn default_perplexity_rising() -> usize {
    2
}
fn default_perplexity_texts() -> usize {
    32
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            diversity_falling: default_diversity_falling(),
            accuracy_falling: default_accuracy_falling(),
            repetition_above: default_repetition_above(),
            near_duplicates_above: default_near_duplicates_above(),
            perplexity_rising: default_perplexity_rising(),
            perplexity_texts: default_perplexity_texts(),
            critical: Vec::new(),
        }
    }
}

impl WatchConfig {
    /// Every rule off (the perplexity is still measured).
    pub fn off() -> Self {
        Self {
            diversity_falling: 0,
            accuracy_falling: 0,
            repetition_above: 1.0,
            near_duplicates_above: 1.0,
            perplexity_rising: 0,
            perplexity_texts: default_perplexity_texts(),
            critical: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        for (key, bound) in
            [("repetition-above", self.repetition_above), ("near-duplicates-above", self.near_duplicates_above)]
        {
            if !(0.0..=1.0).contains(&bound) {
                return Err(format!("watch.{key} must be in [0, 1] (1 turns it off), got {bound}"));
            }
        }
        if let Some(bad) = self.critical.iter().find(|c| !WATCH_RULES.contains(&c.as_str())) {
            return Err(format!("watch.critical: unknown rule {bad:?}; the rules are {}", WATCH_RULES.join(", ")));
        }
        Ok(())
    }
}

impl RunConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, LoopError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoopError::Io { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, LoopError> {
        let config: RunConfig = toml::from_str(text).map_err(|e| {
            // A mistake inside [task], [model] or [strategy] is reported at the table's header;
            // read again to name its line and key.
            let e = locate::locate(text).unwrap_or(e);
            LoopError::Config { path: origin.to_owned(), message: e.to_string() }
        })?;
        config.validate().map_err(|message| LoopError::Config { path: origin.to_owned(), message })?;
        Ok(config)
    }

    /// The config as TOML, as written to the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a RunConfig always serialises")
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name == "." || self.name == ".." || self.name.contains(['/', '\\']) {
            return Err(format!(
                "name must be a plain folder name (the default run directory is runs/NAME), got {:?}",
                self.name
            ));
        }
        task::validate_task(&self.task)?;
        self.model.validate()?;
        if let Some(generator) = &self.generator {
            generator.validate()?;
            if self.model.calculator() {
                return Err("model.calculator works in the embedded engine's sampler, and a remote generator samples \
                     elsewhere; drop one of them"
                    .into());
            }
            if self.strategy.judges_with_base() {
                return Err("strategy.judge = \"base\" needs the base model and the current one served at once, \
                     which a remote generator does not do; judge with the current model, or drop [generator]"
                    .into());
            }
        }
        if let Some(trainer) = &self.trainer {
            trainer.validate()?;
        }
        self.strategy.validate(&self.task)?;
        self.training.validate("training")?;
        if self.eval.max_new_tokens == 0 {
            return Err("eval.max-new-tokens must be at least 1".into());
        }
        if let Some(stop) = &self.early_stop {
            if stop.patience == 0 {
                return Err("early-stop.patience must be at least 1".into());
            }
            if !(stop.min_delta >= 0.0 && stop.min_delta < 1.0) {
                return Err(format!("early-stop.min-delta must be in [0, 1), got {}", stop.min_delta));
            }
        }
        self.watch.validate()?;
        let t = self.mitigation.near_duplicate_threshold;
        if !(0.0..=1.0).contains(&t) {
            return Err(format!("mitigation.near-duplicate-threshold must be in [0, 1] (0 turns it off), got {t}"));
        }
        let f = self.mitigation.natural_fraction;
        if !(0.0..0.95).contains(&f) {
            return Err(format!("mitigation.natural-fraction must be in [0, 0.95), got {f}"));
        }
        if let Some(t) = self.mitigation.temperature_schedule.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
            return Err(format!("mitigation.temperature-schedule: {t} is not a temperature (0 or more)"));
        }
        if self.practice.equations_per_example == 0 || self.practice.equations_per_example > 64 {
            return Err(format!(
                "practice.equations-per-example must be from 1 to 64, got {}",
                self.practice.equations_per_example
            ));
        }
        if self.eval.samples > 0 && !(self.eval.temperature > 0.0 && self.eval.temperature.is_finite()) {
            return Err(format!("eval.temperature must be positive to draw samples, got {}", self.eval.temperature));
        }
        Ok(())
    }

    /// Where a run of this config goes by default.
    pub fn default_run_dir(&self) -> PathBuf {
        PathBuf::from("runs").join(&self.name)
    }
}
