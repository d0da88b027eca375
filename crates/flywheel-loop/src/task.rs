//! What a task provides to a strategy: problems, prompts, and the judge of answers.

use flywheel_core::{Message, Problem, TrainExample};
use flywheel_verify::Verifier;

/// A source of problems with verifiable answers.
///
/// The training and held-out splits never share a problem; a task that generates problems
/// guarantees this by construction, and [`check_disjoint`] checks it at run start.
pub trait Task {
    /// Problems the strategy samples and trains on.
    fn train_problems(&self) -> &[Problem];
    /// Held-out problems, only ever evaluated.
    fn eval_problems(&self) -> &[Problem];
    /// Worked examples a fresh base model learns the format from (the few-shot prompt's stand-in).
    fn seed_examples(&self) -> Vec<TrainExample>;
    /// Worked examples to show before a question when sampling with a few-shot prompt (STaR's
    /// prompt set `P`): alternating user turns (posed as [`Task::prompt`] poses a problem) and
    /// assistant turns (their rationales). None by default.
    fn few_shot(&self) -> Vec<Message> {
        Vec::new()
    }
    /// The prompt that poses `problem`.
    fn prompt(&self, problem: &Problem) -> String;
    /// The prompt that poses `problem` with its answer shown as a hint (STaR's rationalization).
    fn hinted_prompt(&self, problem: &Problem) -> String;
    /// The judge of this task's completions.
    fn verifier(&self) -> Verifier;
    /// Every character the task's prompts and completions use, for a character-level tokenizer.
    fn alphabet(&self) -> String;
}

/// Ids (and questions) that appear in both splits; empty when the task is sound.
pub fn check_disjoint(task: &dyn Task) -> Vec<String> {
    let train: std::collections::HashSet<&str> = task.train_problems().iter().map(|p| p.question.as_str()).collect();
    task.eval_problems().iter().filter(|p| train.contains(p.question.as_str())).map(|p| p.id.clone()).collect()
}
