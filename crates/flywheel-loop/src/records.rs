//! Samples and their verdicts: what every strategy records of what the model wrote.
//!
//! A [`SampleRecord`] is one line of `samples.jsonl`: the prompt, the completion, the verifier's
//! verdict against the gold answer, and the strategy's reward and keep decision. The verdict is
//! always computed, also by strategies that may not use it (self-play), so that the true
//! correctness of what a strategy keeps can be measured.

use flywheel_core::{Completion, Problem};
use flywheel_verify::{arithmetic, Answer, Number, Verifier};
use serde::{Deserialize, Serialize};

/// One sampled completion and its verdict: a line of `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// The problem sampled.
    pub problem_id: String,
    /// The problem's bucket (digit length for addition).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bucket: String,
    /// The prompt the model saw (hinted when `rationalized`).
    pub prompt: String,
    /// What the model wrote.
    pub completion: String,
    /// The answer the verifier found, if any.
    pub extracted: Option<String>,
    /// Whether the answer is right.
    pub correct: bool,
    /// Whether this was a rationalization attempt (answer shown as a hint).
    pub rationalized: bool,
    /// Whether the completion states its answer before any working (see [`answers_first`]); such
    /// a sample is never kept, right or not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answer_first: bool,
    /// The first equation the completion writes out that does not hold (`8 * 4 = 24`), if any; with
    /// `check-arithmetic` such a sample is not kept (see [`flywheel_verify::arithmetic`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_equation: Option<String>,
    /// Whether an equation of the completion that holds ends in its extracted answer: the answer is
    /// worked out, not just stated; with `check-arithmetic` a sample without this is not kept.
    #[serde(default)]
    pub answer_computed: bool,
    /// The sample's reward under the strategy's reward (1 or 0 for correctness alone).
    #[serde(default)]
    pub reward: f64,
    /// Whether the strategy kept the sample for training.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    /// Whether this is a self-play revision, written after the problem's solutions were rejected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revision: bool,
    /// The model's own judgements of the sample (self-play).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeRecord>,
}

/// The model's judgements of one sample in its verifier role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeRecord {
    /// The judge's replies, in order.
    pub replies: Vec<String>,
    /// Replies that end their judgement with CORRECT.
    pub correct: usize,
    /// Replies that end their judgement with INCORRECT (or WRONG).
    pub incorrect: usize,
    /// Replies with neither word: counted as missing, never as a pass.
    pub unparsed: usize,
    /// The share of replies that say CORRECT: the sample's quality.
    pub quality: f64,
}

/// Verdicts on the completions of one problem.
pub fn judge_completions(
    verifier: &Verifier,
    problem: &Problem,
    prompt: &str,
    completions: &[Completion],
    rationalized: bool,
) -> Vec<SampleRecord> {
    let gold = Answer::parse(&problem.answer);
    completions
        .iter()
        .map(|c| {
            let verdict = verifier.judge_parsed(&c.text, &gold);
            SampleRecord {
                problem_id: problem.id.clone(),
                bucket: problem.bucket.clone(),
                prompt: prompt.to_owned(),
                completion: c.text.clone(),
                extracted: verdict.extracted.map(str::to_owned),
                correct: verdict.correct,
                rationalized,
                answer_first: answers_first(verifier, &c.text),
                false_equation: arithmetic::first_false(&c.text).map(|e| e.text.to_owned()),
                answer_computed: verdict
                    .extracted
                    .and_then(Number::parse)
                    .is_some_and(|n| arithmetic::computes(&c.text, n.to_f64())),
                reward: f64::from(u8::from(verdict.correct)),
                kept: false,
                revision: false,
                judge: None,
            }
        })
        .collect()
}

/// Whether `completion` states a final answer in its first sentence and then goes on: an answer
/// put before any working, which the text after it can only justify. Rationalization invites
/// exactly this (the hint is parroted: "The answer is 26. Here's a brief calculation: 33 x 7 =
/// 216."), and a model trained on such samples learns to open every answer with a guess: in our
/// first SmolLM2 run, 18 of 36 kept rationalizations did, and after training 199 of 200 held-out
/// answers opened with "The answer is" and accuracy fell from 5.5% to 4.5%. A completion that is
/// only the answer sentence is not affected.
pub fn answers_first(verifier: &Verifier, completion: &str) -> bool {
    let text = completion.trim_start();
    let line = text.split('\n').next().unwrap_or("");
    let sentence = match line.find(". ") {
        Some(end) => &line[..=end],
        None => line,
    };
    sentence.len() < text.trim_end().len() && verifier.extract(sentence).is_some()
}
