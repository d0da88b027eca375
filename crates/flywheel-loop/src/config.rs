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
    /// One- and two-step arithmetic word problems from templates (see `tasks::arith_word`).
    ArithWord(ArithWordConfig),
    /// Problems read from JSONL files, such as GSM8K's (see `tasks::jsonl`).
    Jsonl(JsonlConfig),
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

/// Settings of the built-in arithmetic word problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArithWordConfig {
    /// Training problems STaR samples every iteration.
    pub train_problems: usize,
    /// Held-out problems, never trained on.
    pub eval_problems: usize,
    /// Share of two-step problems in each split; the rest take one step.
    #[serde(default = "default_two_step_fraction")]
    pub two_step_fraction: f64,
    /// Largest operand of additions and subtractions (10 to 300); factors, divisors and quotients
    /// stay within 2 to 12 whatever this is.
    #[serde(default = "default_max_operand")]
    pub max_operand: u64,
    /// Where a completion has no explicit answer marker, judge its last number instead.
    #[serde(default)]
    pub last_number_fallback: bool,
    /// The line after each question (default [`crate::tasks::DEFAULT_INSTRUCTION`]); empty: the question alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
}

fn default_two_step_fraction() -> f64 {
    0.5
}

fn default_max_operand() -> u64 {
    100
}

/// Settings of a task read from JSONL files, one problem per line.
///
/// Relative paths are resolved against the current working directory, not the config file's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JsonlConfig {
    /// The training problems.
    pub train: PathBuf,
    /// The held-out problems; a training problem with the same question is dropped.
    pub eval: PathBuf,
    /// The field holding the question (a string).
    #[serde(default = "default_question_field")]
    pub question_field: String,
    /// The field holding the answer: a bare answer or a worked solution ending in a marker such as
    /// GSM8K's `#### 72`, a string or a number.
    #[serde(default = "default_answer_field")]
    pub answer_field: String,
    /// The field holding each problem's bucket for per-bucket accuracy (a string or a number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_field: Option<String>,
    /// Training problems kept, drawn after a seeded shuffle (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// Held-out problems kept, drawn after a seeded shuffle (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_limit: Option<usize>,
    /// The line after each question (default [`crate::tasks::DEFAULT_INSTRUCTION`]); empty: the question alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// Where a completion has no explicit answer marker, judge its last number instead.
    #[serde(default)]
    pub last_number_fallback: bool,
}

fn default_question_field() -> String {
    "question".to_owned()
}

fn default_answer_field() -> String {
    "answer".to_owned()
}

/// Which model to start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelConfig {
    /// A fresh model in this process (candle), trained on the task's seed set first.
    Embedded(EmbeddedModelConfig),
    /// A pretrained model in this process (candle), from a GGUF file or a Hugging Face directory.
    Pretrained(PretrainedModelConfig),
}

impl ModelConfig {
    /// Most sequences the embedded engine decodes at once.
    pub fn max_batch(&self) -> usize {
        match self {
            ModelConfig::Embedded(c) => c.max_batch,
            ModelConfig::Pretrained(c) => c.max_batch,
        }
    }
}

/// A pretrained model, improved as it is (iteration 0 evaluates it without training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PretrainedModelConfig {
    /// A GGUF file (llama.cpp) or a Hugging Face model directory (`config.json`, `*.safetensors`,
    /// `tokenizer.json`, and `tokenizer_config.json` for the chat template). Relative paths are
    /// resolved against the working directory.
    pub path: PathBuf,
    /// LoRA adapters to train instead of every weight; absent: full fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSettings>,
    /// Most sequences decoded at once.
    #[serde(default = "default_pretrained_batch")]
    pub max_batch: usize,
    /// Padded tokens per forward pass in training (a step's batch is split into micro-batches of
    /// at most this many; gradients are summed, so only peak memory changes).
    #[serde(default = "default_micro_batch_tokens")]
    pub micro_batch_tokens: usize,
}

fn default_pretrained_batch() -> usize {
    64
}

fn default_micro_batch_tokens() -> usize {
    2048
}

/// LoRA settings (PEFT's names in brackets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoraSettings {
    /// Rank of the update (`r`).
    pub rank: usize,
    /// Scale numerator; the update is scaled by `alpha / rank` (`lora_alpha`).
    pub alpha: f64,
    /// Dropout on the adapter input while training (`lora_dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// Projections that get adapters (`target_modules`): any of `q_proj`, `k_proj`, `v_proj`,
    /// `o_proj`, `gate_proj`, `up_proj`, `down_proj`.
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
}

fn default_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec()
}

/// Projections LoRA may target in a Llama model.
pub const LORA_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

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

fn is_one(n: &usize) -> bool {
    *n == 1
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
        validate_task(&self.task)?;
        if let ModelConfig::Pretrained(model) = &self.model {
            if let Some(lora) = &model.lora {
                if lora.rank == 0 {
                    return Err("model.lora.rank must be at least 1".into());
                }
                if !(0.0..1.0).contains(&lora.dropout) {
                    return Err("model.lora.dropout must be in [0, 1)".into());
                }
                if let Some(bad) = lora.target_modules.iter().find(|m| !LORA_TARGETS.contains(&m.as_str())) {
                    return Err(format!(
                        "model.lora.target-modules: `{bad}` is not one of {}",
                        LORA_TARGETS.join(", ")
                    ));
                }
            }
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
        if star.keep_per_problem == 0 {
            return Err("strategy.keep-per-problem must be at least 1".into());
        }
        if star.few_shot && !matches!(self.task, TaskConfig::ArithWord(_)) {
            return Err("strategy.few-shot needs a task with worked examples (arith-word)".into());
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

fn validate_task(task: &TaskConfig) -> Result<(), String> {
    match task {
        TaskConfig::Addition(task) => {
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
        }
        TaskConfig::ArithWord(task) => {
            if task.eval_problems == 0 {
                return Err("task.eval-problems must be at least 1".into());
            }
            if !(0.0..=1.0).contains(&task.two_step_fraction) {
                return Err(format!("task.two-step-fraction must be within 0 and 1, got {}", task.two_step_fraction));
            }
            if !(10..=300).contains(&task.max_operand) {
                return Err(format!("task.max-operand must be 10 to 300, got {}", task.max_operand));
            }
        }
        TaskConfig::Jsonl(task) => {
            for (key, path) in [("train", &task.train), ("eval", &task.eval)] {
                if path.as_os_str().is_empty() {
                    return Err(format!("task.{key} must name a file"));
                }
            }
            for (key, field) in [("question-field", &task.question_field), ("answer-field", &task.answer_field)] {
                if field.is_empty() {
                    return Err(format!("task.{key} must not be empty"));
                }
            }
            if task.bucket_field.as_deref() == Some("") {
                return Err("task.bucket-field must not be empty".into());
            }
            for (key, limit) in [("train-limit", task.train_limit), ("eval-limit", task.eval_limit)] {
                if limit == Some(0) {
                    return Err(format!("task.{key} must be at least 1"));
                }
            }
        }
    }
    Ok(())
}
