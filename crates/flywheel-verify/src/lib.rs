//! Did this completion reach the right answer?
//!
//! Every strategy of flywheel (STaR, ReST, self-play) and every evaluation stands on that question, so
//! this crate answers it conservatively and exactly:
//!
//! * [`extract`] finds the *final* answer a completion commits to, in the formats models write:
//!   GSM8K's `#### 42`, `\boxed{42}`, "The answer is 42", a final `Answer: 42` line, and (only when
//!   asked) the last number of the text. Where several markers appear, the last one wins.
//! * [`Answer::parse`] reads an extracted span as a number (thousands separators, currency, `%`,
//!   fractions, units after the number) or, failing that, as normalised text.
//! * [`arithmetic`] checks the working: every equation a rationale writes out (`8 * 4 = 32`) must
//!   hold, so that a rationale whose mistakes cancel out, or that jumps to a hinted answer, can be
//!   told from a sound one.
//! * [`Answer::matches`] compares two answers: numbers as numbers (integers exactly, others within a
//!   relative 1e-9), text only as whole normalised strings. An empty answer matches
//!   nothing.
//!
//! The textbook bugs this crate exists to avoid: substring matching (`"4"` inside `"42"`,
//! `"correct"` inside `"incorrect"`, the empty string inside everything), regexes that miss an answer
//! followed by more text, and extraction that grabs the first number of the reasoning instead of the
//! final answer.
//!
//! ```
//! use flywheel_verify::{Format, Verifier};
//!
//! let verifier = Verifier::new(Format::Auto);
//! let verdict = verifier.judge("6 * 7 = 42 apples.\nThe answer is $42.00.", "#### 42");
//! assert!(verdict.correct);
//! assert!(!verifier.judge("The answer is 4.", "42").correct);
//! ```

mod answer;
pub mod arithmetic;
mod extract;
mod number;
mod verdict;

pub use answer::Answer;
pub use extract::{extract, Format, ParseFormatError};
pub use number::Number;
pub use verdict::{parse_judgement, Judgement};

/// The outcome of judging one completion against a gold answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'a> {
    /// The answer span found in the completion, or `None` when the completion commits to nothing.
    pub extracted: Option<&'a str>,
    /// Whether the extracted answer is equivalent to the gold answer.
    pub correct: bool,
}

/// Judges completions against gold answers with one extraction format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verifier {
    format: Format,
    last_number_fallback: bool,
}

impl Verifier {
    /// A verifier that extracts completions' answers with `format`.
    pub const fn new(format: Format) -> Self {
        Self { format, last_number_fallback: false }
    }

    /// Where `format` finds no answer, take the last number of the completion instead. Off by
    /// default: a completion that never commits to an answer should not be credited with one.
    pub const fn with_last_number_fallback(mut self, on: bool) -> Self {
        self.last_number_fallback = on;
        self
    }

    /// The answer span of `completion` under this verifier's format and fallback.
    pub fn extract<'a>(&self, completion: &'a str) -> Option<&'a str> {
        extract(completion, self.format).or_else(|| {
            if self.last_number_fallback {
                extract(completion, Format::LastNumber)
            } else {
                None
            }
        })
    }

    /// The extraction format of completions.
    pub const fn format(&self) -> Format {
        self.format
    }

    /// The gold answer of `gold`: its final explicit marker when it has one (a whole GSM8K
    /// solution ending in `#### 18` gives `18`), else the whole trimmed text (a bare answer).
    pub fn gold_answer(gold: &str) -> &str {
        extract(gold, Format::Auto).unwrap_or_else(|| gold.trim())
    }

    /// Judges `completion` against `gold` (a bare answer or a whole worked solution).
    pub fn judge<'a>(&self, completion: &'a str, gold: &str) -> Verdict<'a> {
        self.judge_parsed(completion, &Answer::parse(Self::gold_answer(gold)))
    }

    /// Judges `completion` against an already parsed gold answer; the fast path when one gold
    /// answer is judged against many samples.
    pub fn judge_parsed<'a>(&self, completion: &'a str, gold: &Answer) -> Verdict<'a> {
        let extracted = self.extract(completion);
        let correct = extracted.is_some_and(|span| Answer::parse(span).matches(gold));
        Verdict { extracted, correct }
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new(Format::Auto)
    }
}
