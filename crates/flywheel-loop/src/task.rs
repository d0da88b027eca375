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
    /// A reference solution of the training problem `problem`, written by people or by the task's
    /// generator rather than by the model: the natural data a run can mix into its training sets
    /// against collapse (`[mitigation] natural-fraction`). None by default.
    fn reference_solution(&self, _problem: &Problem) -> Option<String> {
        None
    }
    /// A reference solution of the held-out problem `problem` (written by people or the task's
    /// generator): never trained on, these make the fixed natural-text set whose perplexity the
    /// collapse watch follows. None by default.
    fn heldout_reference(&self, _problem: &Problem) -> Option<String> {
        None
    }
    /// The prompt that poses `problem`.
    fn prompt(&self, problem: &Problem) -> String;
    /// The prompt that poses `problem` with its answer shown as a hint (STaR's rationalization):
    /// by default the plain prompt and a line `Hint: the answer is X. Explain how to get it.`
    fn hinted_prompt(&self, problem: &Problem) -> String {
        crate::tasks::hinted(&self.prompt(problem), &problem.answer)
    }
    /// A graded, verifiable score (0 to 1) of how sound the working of `completion` is, whatever
    /// its final answer (the `arithmetic` reward). By default the arithmetic of its written-out
    /// equations ([`crate::reward::arithmetic_score`]); `extracted` is its answer span.
    fn process_score(&self, _problem: &Problem, completion: &str, extracted: Option<&str>) -> f64 {
        crate::reward::arithmetic_score(completion, extracted)
    }
    /// The prompt that asks the model, in a verifier's role, whether `solution` solves `problem`;
    /// its reply must end in the word CORRECT or INCORRECT (self-play).
    fn judge_prompt(&self, problem: &Problem, solution: &str) -> String {
        format!(
            "Problem: {}\n\nProposed solution:\n{}\n\nIs this solution correct? Check each step carefully, \
             then end your reply with one word: CORRECT or INCORRECT.",
            problem.question,
            solution.trim()
        )
    }
    /// The prompt that asks for a better solution of `problem` after the rejected `attempts`
    /// (solution, critique) (self-play's revision step).
    fn revise_prompt(&self, problem: &Problem, attempts: &[(&str, &str)]) -> String {
        let mut text = format!("Problem: {}\n\nEarlier attempts were judged wrong:\n", problem.question);
        for (i, (solution, critique)) in attempts.iter().enumerate() {
            text.push_str(&format!(
                "\nAttempt {}:\n{}\nCritique: {}\n",
                i + 1,
                clip(solution, 400),
                clip(critique, 300)
            ));
        }
        text.push_str("\nAvoid those mistakes and solve the problem again.\n");
        text.push_str(&self.prompt(problem));
        text
    }
    /// The prompt that asks the model to rate `solution` of `problem` with a whole number from 0 to
    /// `scale` (the self-judge reward).
    fn rating_prompt(&self, problem: &Problem, solution: &str, scale: u32) -> String {
        format!(
            "Problem: {}\n\nProposed solution:\n{}\n\nRate this solution from 0 to {scale}, where {scale} means \
             every step and the final answer are right. Reply with the number only.",
            problem.question,
            solution.trim()
        )
    }
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

/// `text` cut to at most `chars` characters, with an ellipsis when cut.
fn clip(text: &str, chars: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}
