//! The run configuration, read from TOML.
//!
//! Every choice is a typed field; unknown keys are rejected so a typo never silently falls back to a
//! default. Errors name the file and, through `toml`'s messages, the line and key. The tables live
//! in one file each: [`task`] (`[task]`), [`model`] (`[model]`), [`strategy`] (`[strategy]`, with
//! its rewards); this file holds the run, `[training]`, `[eval]` and `[early-stop]`.

mod locate;
mod model;
mod strategy;
mod task;

use std::path::{Path, PathBuf};

use flywheel_core::TrainingParams;
use serde::{Deserialize, Serialize};

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
