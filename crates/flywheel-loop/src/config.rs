//! The run configuration, read from TOML.
//!
//! Every choice is a typed field; unknown keys are rejected so a typo never silently falls back to a
//! default. Errors name the file and, through `toml`'s messages, the line and key.

use std::path::{Path, PathBuf};

use flywheel_core::{Architecture, TrainingParams};
use serde::{Deserialize, Serialize};

use crate::LoopError;

/// A whole run: task, model, strategy and their settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunConfig {
    /// Name of the run; the default run directory is `runs/NAME`.
    pub name: String,
    /// Master seed; every random choice of the run derives from it.
    pub seed: u64,
    /// STaR iterations after the base model (iteration 0).
    pub iterations: usize,
    /// Worker threads of the embedded engine (0: all cores). Results are reproducible for a fixed count.
    #[serde(default)]
    pub threads: usize,
    /// The task that poses problems.
    pub task: TaskConfig,
    /// The model to improve.
    pub model: ModelConfig,
    /// How training data is generated.
    pub strategy: StrategyConfig,
    /// Fine-tuning of each iteration.
    pub training: TrainingConfig,
    /// Evaluation on the held-out split.
    #[serde(default)]
    pub eval: EvalConfig,
}

/// Which task poses the problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TaskConfig {
    /// n-digit addition with a digit-by-digit scratchpad (see `tasks::addition`).
    Addition(AdditionConfig),
}

/// Settings of the built-in addition task. Lists are indexed by digit length, from 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdditionConfig {
    /// Longest operand length, in digits (both operands of a problem have the same length).
    pub max_digits: usize,
    /// Worked scratchpads the base model is trained on, per digit length (index 0 = 1 digit).
    pub seed_examples: Vec<usize>,
    /// Share of seed examples also shown with the answer as a hint, so that the base model learns
    /// to use hints (the few-shot rationalization prompt of the STaR paper).
    #[serde(default = "default_hinted_fraction")]
    pub seed_hinted_fraction: f64,
    /// Training problems per digit length that STaR samples every iteration.
    pub train_per_length: usize,
    /// Held-out problems per digit length, never trained on.
    pub eval_per_length: usize,
}

fn default_hinted_fraction() -> f64 {
    0.5
}

/// Which model to start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelConfig {
    /// A model in this process (candle).
    Embedded(EmbeddedModelConfig),
}

/// An in-process model: a fresh one of a given shape, trained on the task's seed set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EmbeddedModelConfig {
    /// Shape of the fresh model.
    pub architecture: Architecture,
    /// Training of the base model on the seed set (`step-growth` is not used there).
    pub base_training: TrainingConfig,
    /// Most sequences decoded at once.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

fn default_max_batch() -> usize {
    256
}

/// How training data is generated each iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Self-Taught Reasoner (Zelikman et al. 2022).
    Star(StarConfig),
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
    /// What each iteration fine-tunes: the base model (as the paper) or the last iteration's.
    #[serde(default)]
    pub fine_tune_from: FineTuneFrom,
}

fn default_top_p() -> f32 {
    1.0
}

fn default_one() -> usize {
    1
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

/// Optimiser settings of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrainingConfig {
    /// Optimiser steps (of the first STaR iteration; later ones grow by `step-growth`).
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
    /// Growth of the step count per STaR iteration (0.2: 20% more each iteration, as in the paper).
    #[serde(default = "default_growth")]
    pub step_growth: f64,
}

impl TrainingConfig {
    /// Steps of STaR iteration `iteration` (1-based): `steps * (1 + step-growth)^(iteration - 1)`.
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
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { max_new_tokens: 160 }
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
        let config: RunConfig =
            toml::from_str(text).map_err(|e| LoopError::Config { path: origin.to_owned(), message: e.to_string() })?;
        config.validate().map_err(|message| LoopError::Config { path: origin.to_owned(), message })?;
        Ok(config)
    }

    /// The config as TOML, as written to the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a RunConfig always serialises")
    }

    fn validate(&self) -> Result<(), String> {
        let TaskConfig::Addition(task) = &self.task;
        if task.max_digits == 0 || task.max_digits > 18 {
            return Err(format!("task.max-digits must be 1 to 18, got {}", task.max_digits));
        }
        if task.seed_examples.len() != task.max_digits {
            return Err(format!(
                "task.seed-examples needs one count per digit length (1..={}), got {}",
                task.max_digits,
                task.seed_examples.len()
            ));
        }
        if !(0.0..=1.0).contains(&task.seed_hinted_fraction) {
            return Err("task.seed-hinted-fraction must be within 0 and 1".into());
        }
        let StrategyConfig::Star(star) = &self.strategy;
        if star.samples_per_problem == 0 {
            return Err("strategy.samples-per-problem must be at least 1".into());
        }
        if star.temperature < 0.0 {
            return Err("strategy.temperature must not be negative".into());
        }
        if !(star.top_p > 0.0 && star.top_p <= 1.0) {
            return Err("strategy.top-p must be in (0, 1]".into());
        }
        if self.training.batch_size == 0 {
            return Err("training.batch-size must be at least 1".into());
        }
        Ok(())
    }

    /// Where a run of this config goes by default.
    pub fn default_run_dir(&self) -> PathBuf {
        PathBuf::from("runs").join(&self.name)
    }
}
