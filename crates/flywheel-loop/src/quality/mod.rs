//! The quality of what a run generates, watched for collapse: diversity and repetition metrics of
//! an iteration's samples (`metrics`), the rules that warn or stop on them (`watch`), what a run
//! does against collapse (`mitigate`: accumulate, remove near-duplicates, cap per problem),
//! near-duplicate detection at scale (`dedup`), a synthetic corpus with planted duplicates to
//! measure the detection on (`planted`), and the natural-text set whose perplexity is watched
//! ([`natural_texts`]).

pub mod dedup;
pub mod metrics;
pub mod mitigate;
pub mod planted;
pub mod watch;

use flywheel_core::TrainExample;

use crate::Task;

/// The fixed natural-text set: the reference solutions of `n` held-out problems spread evenly over
/// the split (every bucket and, with withheld stories, both halves), each posed as the task poses
/// it. Never trained on, so a model that narrows to its own outputs shows it here as a rising
/// perplexity: the tails of the distribution are what collapse loses first.
pub fn natural_texts(task: &dyn Task, n: usize) -> Vec<TrainExample> {
    let with_reference: Vec<TrainExample> = task
        .eval_problems()
        .iter()
        .filter_map(|p| Some(TrainExample::single_turn(task.prompt(p), task.heldout_reference(p)?)))
        .collect();
    let n = n.min(with_reference.len());
    (0..n).map(|i| with_reference[i * with_reference.len() / n].clone()).collect()
}

/// The words of `text` as every metric here counts them: lower-cased runs of letters and digits
/// (a decimal point inside a number stays: `3.5`), each other non-space character a word of its
/// own, so that `8 * 4 = 32` and `8 + 4 = 12` share only `8` and `4`.
pub fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let decimal_point = c == '.'
            && word.chars().last().is_some_and(|p| p.is_ascii_digit())
            && chars.peek().is_some_and(|n| n.is_ascii_digit());
        if c.is_alphanumeric() || decimal_point {
            word.extend(c.to_lowercase());
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn words_split_punctuation_and_keep_decimals() {
        assert_eq!(super::words("It costs 3.5 Dollars."), ["it", "costs", "3.5", "dollars", "."]);
        assert_eq!(super::words("8*4=32"), ["8", "*", "4", "=", "32"]);
        assert!(super::words(" \n").is_empty());
    }
}
