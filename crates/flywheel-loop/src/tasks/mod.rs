//! Built-in tasks, and the prompt conventions the chat-model tasks share.
//!
//! [`addition`] trains a fresh character-level model from a seed set; [`arith_word`] and [`jsonl`] are
//! for pretrained chat models: they pose a question followed by an instruction line, and their
//! rationalization prompt adds one more line with the answer as a hint ([`hinted`]).

pub mod addition;
pub mod arith_word;
pub mod jsonl;

use std::collections::{BTreeSet, HashMap};

use flywheel_core::{Message, Problem, Role, TrainExample};
use flywheel_verify::{Format, Verifier};

use crate::config::TaskConfig;
use crate::{LoopError, Task};

/// The instruction appended to chat-model tasks' questions unless a config names another. It asks
/// for the "The answer is 42." sentence that [`flywheel_verify::Format::Auto`] recognises. Chosen by
/// measurement on SmolLM2-135M-Instruct (greedy, 200 held-out arith-word problems): "solve step by
/// step" makes it open with long preambles that rarely reach an answer within 96 tokens (1.5%);
/// "... end with: The answer is N." is copied literally ("The answer is N.") in 20 of 200 answers
/// (5.5%); this wording leaves 44 answers without the sentence instead of 103 (6.0%).
pub const DEFAULT_INSTRUCTION: &str = "Give a brief calculation, then end with \"The answer is\" and the number.";

/// The task a config asks for, its problems drawn with `seed`.
///
/// Fails when a task's data cannot be read or its problems cannot be drawn as configured.
pub fn build(config: &TaskConfig, seed: u64) -> Result<Box<dyn Task>, LoopError> {
    Ok(match config {
        TaskConfig::Addition(c) => Box::new(addition::Addition::new(c, seed)),
        TaskConfig::ArithWord(c) => Box::new(ChatProblems::arith_word(c, seed)?),
        TaskConfig::Jsonl(c) => Box::new(ChatProblems::jsonl(c, seed)?),
    })
}

/// Problems for a pretrained chat model, the [`Task`] of both [`arith_word`]
/// ([`ChatProblems::arith_word`]) and [`jsonl`] ([`ChatProblems::jsonl`]): each question is posed
/// with an instruction line ([`DEFAULT_INSTRUCTION`] unless the config names one), the
/// rationalization prompt adds the answer as a hint line ([`hinted`]), and completions are judged by
/// their explicit answer marker ([`Format::Auto`]), or their last number when configured.
#[derive(Debug, Clone)]
pub struct ChatProblems {
    train: Vec<Problem>,
    eval: Vec<Problem>,
    instruction: String,
    last_number_fallback: bool,
    overlap_dropped: usize,
    /// Worked examples (question, rationale) for few-shot sampling.
    worked: &'static [(&'static str, &'static str)],
    /// Reference solutions of training problems, by problem id.
    references: HashMap<String, String>,
    /// Reference solutions of held-out problems, by problem id.
    heldout_references: HashMap<String, String>,
}

impl ChatProblems {
    /// The two splits with the prompt and judging settings of a config (`instruction` `None`: the
    /// default instruction). `overlap_dropped` counts training problems left out because they were
    /// also held out.
    fn new(
        train: Vec<Problem>,
        eval: Vec<Problem>,
        instruction: Option<&String>,
        last_number_fallback: bool,
        overlap_dropped: usize,
    ) -> Self {
        let instruction = instruction.cloned().unwrap_or_else(|| DEFAULT_INSTRUCTION.to_owned());
        Self {
            train,
            eval,
            instruction,
            last_number_fallback,
            overlap_dropped,
            worked: &[],
            references: HashMap::new(),
            heldout_references: HashMap::new(),
        }
    }

    /// The task with reference solutions of its training and of its held-out problems, by
    /// problem id.
    fn with_references(mut self, train: HashMap<String, String>, heldout: HashMap<String, String>) -> Self {
        self.references = train;
        self.heldout_references = heldout;
        self
    }

    /// The task with `worked` examples (question, rationale) for few-shot sampling.
    fn with_worked_examples(mut self, worked: &'static [(&'static str, &'static str)]) -> Self {
        self.worked = worked;
        self
    }

    /// Training problems dropped because their question is also held out (always 0 for generated
    /// problems, which never draw one).
    pub fn overlap_dropped(&self) -> usize {
        self.overlap_dropped
    }
}

impl Task for ChatProblems {
    fn train_problems(&self) -> &[Problem] {
        &self.train
    }

    fn eval_problems(&self) -> &[Problem] {
        &self.eval
    }

    /// None: a pretrained chat model follows the instruction as it comes, and STaR's own kept
    /// rationales are its training data.
    fn seed_examples(&self) -> Vec<TrainExample> {
        Vec::new()
    }

    /// The worked examples, each question posed with the task's instruction.
    fn few_shot(&self) -> Vec<Message> {
        self.worked
            .iter()
            .flat_map(|&(question, rationale)| {
                [
                    Message { role: Role::User, content: pose(question, &self.instruction) },
                    Message { role: Role::Assistant, content: rationale.to_owned() },
                ]
            })
            .collect()
    }

    fn reference_solution(&self, problem: &Problem) -> Option<String> {
        self.references.get(&problem.id).cloned()
    }

    fn heldout_reference(&self, problem: &Problem) -> Option<String> {
        self.heldout_references.get(&problem.id).cloned()
    }

    fn prompt(&self, problem: &Problem) -> String {
        pose(&problem.question, &self.instruction)
    }

    fn verifier(&self) -> Verifier {
        Verifier::new(Format::Auto).with_last_number_fallback(self.last_number_fallback)
    }

    fn alphabet(&self) -> String {
        alphabet_of(self)
    }
}

/// `question` posed with `instruction` on the next line; an empty instruction poses the question alone.
pub(crate) fn pose(question: &str, instruction: &str) -> String {
    if instruction.is_empty() {
        question.to_owned()
    } else {
        format!("{question}\n{instruction}")
    }
}

/// `prompt` with a last line that gives `answer` away: STaR's rationalization prompt.
pub(crate) fn hinted(prompt: &str, answer: &str) -> String {
    format!("{prompt}\nHint: the answer is {answer}. Explain how to get it.")
}

/// Every character of `task`'s prompts (plain and hinted) and answers, and the ten digits, sorted.
pub(crate) fn alphabet_of(task: &dyn Task) -> String {
    let mut chars: BTreeSet<char> = ('0'..='9').collect();
    let problems: Vec<&Problem> = task.train_problems().iter().chain(task.eval_problems()).collect();
    for p in problems {
        chars.extend(task.hinted_prompt(p).chars());
        chars.extend(p.answer.chars());
    }
    chars.into_iter().collect()
}
