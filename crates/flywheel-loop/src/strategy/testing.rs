//! Test doubles shared by the strategies' unit tests.

use flywheel_core::{Completion, FinishReason, GenerationRequest, Generator, Reporter, SamplingParams};

use crate::config::ArithWordConfig;
use crate::tasks::ChatProblems;

/// An arith-word task of `train` and `eval` problems, the share `two_step` of them two-step, drawn
/// with `seed`; every other setting at its default.
pub fn arith_word(train: usize, eval: usize, two_step: f64, seed: u64) -> ChatProblems {
    let config = ArithWordConfig {
        train_problems: train,
        eval_problems: eval,
        two_step_fraction: two_step,
        max_operand: 100,
        last_number_fallback: false,
        instruction: None,
        held_out_stories: 0,
    };
    ChatProblems::arith_word(&config, seed).expect("an arith-word task")
}

/// A completion of `text` that stopped by itself.
pub fn completion(text: &str) -> Completion {
    Completion { text: text.to_owned(), tokens: text.len(), finish: FinishReason::Stop }
}

/// Answers every request with its own context length ("2 turns."), and records the requests it saw.
#[derive(Default)]
pub struct Recorder {
    /// Every request, in order.
    pub requests: Vec<GenerationRequest>,
}

impl Generator for Recorder {
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        _: &SamplingParams,
        _: &dyn Reporter,
    ) -> flywheel_core::Result<Vec<Vec<Completion>>> {
        self.requests.extend_from_slice(requests);
        Ok(requests.iter().map(|r| vec![completion(&format!("{} turns.", r.context.len())); r.n]).collect())
    }
}

/// Answers each request through a function of its prompt and the completion's index.
pub struct Scripted<F: FnMut(&str, usize) -> String>(pub F);

impl<F: FnMut(&str, usize) -> String> Generator for Scripted<F> {
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        _: &SamplingParams,
        _: &dyn Reporter,
    ) -> flywheel_core::Result<Vec<Vec<Completion>>> {
        Ok(requests.iter().map(|r| (0..r.n).map(|i| completion(&(self.0)(&r.prompt, i))).collect()).collect())
    }
}
