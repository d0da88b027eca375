//! Problems read from JSONL files: one JSON object per line with a question and an answer field.
//!
//! GSM8K's `train.jsonl` and `test.jsonl` work as they are: `{"question": "...", "answer": "...
//! #### 72"}`. The answer field may hold a bare answer or a whole worked solution; the gold answer
//! kept is the solution's final marked answer, found by [`Verifier::gold_answer`] (`72` here), so
//! that hints and `samples.jsonl` show the answer alone.
//!
//! Blank lines are skipped. Any other line that is not a JSON object, lacks the question or answer
//! field (or the bucket field, where one is configured), or holds a field of the wrong type, stops
//! the load with an error naming the file, the 1-based line and the field.
//!
//! A training problem whose question (whitespace collapsed) also appears anywhere in the held-out
//! file is dropped, so that evaluation never scores a problem the model was trained on;
//! [`ChatProblems::overlap_dropped`] says how many were. Limits then keep a seeded random subset of each
//! split, in file order. Problem ids are the split and the line: `train-00042` is line 42 of the
//! training file. Like any pretrained-model task, there is no seed set.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use flywheel_core::Problem;
use flywheel_verify::{Format, Verifier};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{Map, Value};

use super::ChatProblems;
use crate::config::JsonlConfig;
use crate::{seeds, LoopError};

impl ChatProblems {
    /// A task whose problems come from two JSONL files: reads both files of `config`; `seed` draws
    /// the subsets that `train-limit` and `eval-limit` keep.
    pub fn jsonl(config: &JsonlConfig, seed: u64) -> Result<Self, LoopError> {
        let references = |split: &[(Problem, String)]| -> HashMap<String, String> {
            split.iter().filter_map(|(p, s)| Some((p.id.clone(), reference_of(s, &p.answer)?))).collect()
        };
        let eval = read_problems(&config.eval, "eval", config)?;
        let heldout_references = references(&eval);
        let eval: Vec<Problem> = eval.into_iter().map(|(p, _)| p).collect();
        let train = read_problems(&config.train, "train", config)?;
        let train_references = references(&train);
        let train: Vec<Problem> = train.into_iter().map(|(p, _)| p).collect();
        let held_out: HashSet<String> = eval.iter().map(|p| normalise(&p.question)).collect();
        let read = train.len();
        let train: Vec<Problem> = train.into_iter().filter(|p| !held_out.contains(&normalise(&p.question))).collect();
        let overlap_dropped = read - train.len();
        if train.is_empty() {
            return Err(LoopError::Task {
                task: "jsonl",
                message: format!(
                    "every problem of {} is also in {}; no training problem is left",
                    config.train.display(),
                    config.eval.display()
                ),
            });
        }
        Ok(Self::new(
            limit(train, config.train_limit, seeds::derive(seed, "jsonl-train", 0)),
            limit(eval, config.eval_limit, seeds::derive(seed, "jsonl-eval", 0)),
            config.instruction.as_ref(),
            config.last_number_fallback,
            overlap_dropped,
        )
        .with_references(train_references, heldout_references))
    }
}

/// The worked solution of an answer field written GSM8K's way (working, then `#### answer`) as a
/// reference solution in the form the task asks for: the working without GSM8K's calculator
/// annotations (`<<48/2=24>>`), then "The answer is" and the gold. `None` for a bare answer.
fn reference_of(answer: &str, gold: &str) -> Option<String> {
    let (working, _) = answer.rsplit_once("####")?;
    let mut text = String::with_capacity(working.len());
    let mut rest = working;
    while let Some(start) = rest.find("<<") {
        let Some(len) = rest[start..].find(">>") else { break };
        text.push_str(&rest[..start]);
        rest = &rest[start + len + 2..];
    }
    text.push_str(rest);
    let text = text.trim();
    (!text.is_empty()).then(|| format!("{text}\nThe answer is {gold}."))
}

/// Every problem of the JSONL file at `path`, in file order, with ids `{split}-{line}`, and its
/// answer field as written.
fn read_problems(path: &Path, split: &str, config: &JsonlConfig) -> Result<Vec<(Problem, String)>, LoopError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoopError::Io { path: path.to_owned(), source })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_number = index + 1;
        let fail = |message: String| LoopError::Dataset { path: path.to_owned(), line: line_number, message };
        let object = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => object,
            Ok(other) => return Err(fail(format!("expected a JSON object, found {}", kind(&other)))),
            Err(e) => return Err(fail(format!("not valid JSON: {e}"))),
        };
        let question = field(&object, &config.question_field, false).map_err(&fail)?;
        let answer = field(&object, &config.answer_field, true).map_err(&fail)?;
        let bucket = match &config.bucket_field {
            Some(name) => field(&object, name, true).map_err(&fail)?,
            None => String::new(),
        };
        if answer.contains("####") && Verifier::new(Format::Gsm8k).extract(&answer).is_none() {
            return Err(fail(format!("field \"{}\" has a `####` marker with no answer after it", config.answer_field)));
        }
        let gold = Verifier::gold_answer(&answer);
        if gold.is_empty() {
            return Err(fail(format!("field \"{}\" holds no answer", config.answer_field)));
        }
        let problem = Problem {
            id: format!("{split}-{line_number:05}"),
            question: question.trim().to_owned(),
            answer: gold.to_owned(),
            bucket,
        };
        problems.push((problem, answer.clone()));
    }
    if problems.is_empty() {
        return Err(LoopError::Task { task: "jsonl", message: format!("{} holds no problems", path.display()) });
    }
    Ok(problems)
}

/// The non-empty text of `object[name]`: a string, or (where `numbers` is allowed) a number.
fn field(object: &Map<String, Value>, name: &str, numbers: bool) -> Result<String, String> {
    let text = match object.get(name) {
        None => return Err(format!("field \"{name}\" is missing")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if numbers => n.to_string(),
        Some(other) => {
            let expected = if numbers { "a string or a number" } else { "a string" };
            return Err(format!("field \"{name}\" must be {expected}, found {}", kind(other)));
        }
    };
    if text.trim().is_empty() {
        return Err(format!("field \"{name}\" is empty"));
    }
    Ok(text)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A question with its whitespace collapsed: what decides that two files share a problem.
fn normalise(question: &str) -> String {
    question.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `limit` problems drawn at random with `seed`, kept in file order; all of them when there is no limit.
fn limit(problems: Vec<Problem>, limit: Option<usize>, seed: u64) -> Vec<Problem> {
    let Some(limit) = limit.filter(|&n| n < problems.len()) else {
        return problems;
    };
    let mut order: Vec<usize> = (0..problems.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut keep = vec![false; problems.len()];
    for &i in &order[..limit] {
        keep[i] = true;
    }
    problems.into_iter().zip(keep).filter_map(|(p, k)| k.then_some(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::reference_of;

    #[test]
    fn a_gsm8k_solution_becomes_a_reference_without_its_calculator_annotations() {
        let answer =
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72";
        assert_eq!(
            reference_of(answer, "72").as_deref(),
            Some("Natalia sold 48/2 = 24 clips in May.\nAltogether 48+24 = 72 clips.\nThe answer is 72.")
        );
        assert_eq!(reference_of("72", "72"), None, "a bare answer is no solution");
        assert_eq!(reference_of("#### 72", "72"), None, "nothing before the marker");
        // An unclosed annotation is left as it is.
        assert_eq!(reference_of("3 + 4 = <<7\n#### 7", "7").as_deref(), Some("3 + 4 = <<7\nThe answer is 7."));
    }
}
