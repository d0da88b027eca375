//! The `[task]` table: which problems are posed, and how.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// Share of seed examples also shown as a judgement of a scratchpad (half of them flawed), so
    /// that the base model can act as its own judge in self-play: `345+789`, the scratchpad and a
    /// `?` line, answered `CORRECT` or `INCORRECT`. 0 (the default) leaves the seed set and the
    /// model's alphabet as they were.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seed_judge_fraction: f64,
    /// Training problems per digit length that STaR samples every iteration.
    pub train_per_length: usize,
    /// Held-out problems per digit length, never trained on.
    pub eval_per_length: usize,
}

fn default_hinted_fraction() -> f64 {
    0.5
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
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
    /// Stories (templates) of each bucket never trained on: `eval-problems` more held-out problems
    /// are told with them, in buckets `new-story 1-step` and `new-story 2-step`, to measure whether a
    /// gain is arithmetic or the recall of familiar phrasings. 0 (the default): every story is used
    /// in both splits.
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub held_out_stories: usize,
}

fn is_zero_count(n: &usize) -> bool {
    *n == 0
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

pub(super) fn validate_task(task: &TaskConfig) -> Result<(), String> {
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
            if task.train_per_length == 0 || task.eval_per_length == 0 {
                let key = if task.train_per_length == 0 { "train-per-length" } else { "eval-per-length" };
                return Err(format!("task.{key} must be at least 1"));
            }
            if task.seed_examples.iter().all(|&n| n == 0) {
                return Err("task.seed-examples: the base model needs at least one seed example".into());
            }
            if !(0.0..=1.0).contains(&task.seed_hinted_fraction) {
                return Err("task.seed-hinted-fraction must be within 0 and 1".into());
            }
            if !(0.0..=1.0).contains(&task.seed_judge_fraction) {
                return Err(format!(
                    "task.seed-judge-fraction must be within 0 and 1, got {}",
                    task.seed_judge_fraction
                ));
            }
        }
        TaskConfig::ArithWord(task) => {
            if task.train_problems == 0 || task.eval_problems == 0 {
                let key = if task.train_problems == 0 { "train-problems" } else { "eval-problems" };
                return Err(format!("task.{key} must be at least 1"));
            }
            if !(0.0..=1.0).contains(&task.two_step_fraction) {
                return Err(format!("task.two-step-fraction must be within 0 and 1, got {}", task.two_step_fraction));
            }
            if !(10..=300).contains(&task.max_operand) {
                return Err(format!("task.max-operand must be 10 to 300, got {}", task.max_operand));
            }
            let most = crate::tasks::arith_word::MAX_HELD_OUT_STORIES;
            if task.held_out_stories > most {
                return Err(format!(
                    "task.held-out-stories must be 0 to {most} (each bucket keeps a story to train on), got {}",
                    task.held_out_stories
                ));
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
