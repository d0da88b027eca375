//! Evaluation on the held-out split: greedy accuracy overall and per bucket, and, when configured,
//! pass@k and maj@k over k samples per problem (as the STaR and ReST-EM papers report them).

use std::collections::BTreeMap;

use flywheel_core::{GenerationRequest, Generator, Problem, Reporter, SamplingParams};
use flywheel_verify::Answer;
use serde::{Deserialize, Serialize};

use crate::config::EvalConfig;
use crate::records::{judge_completions, SampleRecord};
use crate::Task;

/// Held-out accuracy: `eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Share of held-out problems answered correctly (greedy).
    pub accuracy: f64,
    /// Number of held-out problems.
    pub n: usize,
    /// Accuracy per bucket (digit length for addition).
    pub by_bucket: BTreeMap<String, f64>,
    /// Samples per problem behind `pass_at_k` and `maj_at_k`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Share of problems with at least one right answer among k samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_at_k: Option<f64>,
    /// Share of problems whose most frequent answer among k samples is right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maj_at_k: Option<f64>,
}

impl EvalReport {
    /// Accuracy overall and per bucket of judged records (one per problem).
    pub fn from_records(records: &[SampleRecord]) -> Self {
        let mut buckets: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for r in records {
            let entry = buckets.entry(r.bucket.clone()).or_default();
            entry.0 += usize::from(r.correct);
            entry.1 += 1;
        }
        let correct = records.iter().filter(|r| r.correct).count();
        EvalReport {
            accuracy: ratio(correct, records.len()),
            n: records.len(),
            by_bucket: buckets.into_iter().map(|(k, (c, n))| (k, ratio(c, n))).collect(),
            k: None,
            pass_at_k: None,
            maj_at_k: None,
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Whether any of a problem's samples is right (pass@k with n = k samples).
pub fn pass(samples: &[SampleRecord]) -> bool {
    samples.iter().any(|r| r.correct)
}

/// Whether the majority answer of a problem's samples is right. Answers vote by equivalence
/// (`1,234` and `1234` are one answer); a sample without an answer does not vote; a tie goes to
/// the answer given first.
pub fn majority(samples: &[SampleRecord]) -> bool {
    let mut votes: Vec<(Answer, usize, bool)> = Vec::new();
    for r in samples {
        let Some(span) = &r.extracted else { continue };
        let answer = Answer::parse(span);
        if answer == Answer::Empty {
            continue;
        }
        match votes.iter_mut().find(|(a, _, _)| a.matches(&answer)) {
            Some(vote) => vote.1 += 1,
            None => votes.push((answer, 1, r.correct)),
        }
    }
    let mut best: Option<&(Answer, usize, bool)> = None;
    for vote in &votes {
        if best.is_none_or(|b| vote.1 > b.1) {
            best = Some(vote);
        }
    }
    best.is_some_and(|b| b.2)
}

/// Greedy answers to every held-out problem, judged; with `config.samples = k`, also k samples per
/// problem at `config.temperature` (seeded with `seed`) for pass@k and maj@k. Returns the report,
/// the greedy records and the sampled records.
pub fn evaluate(
    task: &dyn Task,
    generator: &mut dyn Generator,
    config: &EvalConfig,
    seed: u64,
    reporter: &dyn Reporter,
) -> crate::Result<(EvalReport, Vec<SampleRecord>, Vec<SampleRecord>)> {
    let problems = task.eval_problems();
    let greedy =
        SamplingParams { temperature: 0.0, max_new_tokens: config.max_new_tokens, ..SamplingParams::default() };
    let records: Vec<SampleRecord> =
        judged(task, generator, problems, 1, &greedy, reporter)?.into_iter().flatten().collect();
    let mut report = EvalReport::from_records(&records);
    let mut sampled = Vec::new();
    if config.samples > 0 {
        let params = SamplingParams { temperature: config.temperature, seed, ..greedy };
        let groups = judged(task, generator, problems, config.samples, &params, reporter)?;
        report.k = Some(config.samples);
        report.pass_at_k = Some(ratio(groups.iter().filter(|g| pass(g)).count(), groups.len()));
        report.maj_at_k = Some(ratio(groups.iter().filter(|g| majority(g)).count(), groups.len()));
        sampled = groups.into_iter().flatten().collect();
    }
    Ok((report, records, sampled))
}

/// `n` completions of each problem's plain prompt, judged: one list per problem.
fn judged(
    task: &dyn Task,
    generator: &mut dyn Generator,
    problems: &[Problem],
    n: usize,
    params: &SamplingParams,
    reporter: &dyn Reporter,
) -> crate::Result<Vec<Vec<SampleRecord>>> {
    let requests: Vec<GenerationRequest> = problems.iter().map(|p| GenerationRequest::new(task.prompt(p), n)).collect();
    let completions = generator.generate(&requests, params, reporter)?;
    let verifier = task.verifier();
    Ok(problems
        .iter()
        .zip(&requests)
        .zip(&completions)
        .map(|((p, r), c)| judge_completions(&verifier, p, &r.prompt, c, false))
        .collect())
}

#[cfg(test)]
mod tests {
    use flywheel_core::Problem;
    use flywheel_verify::{Format, Verifier};

    use super::*;
    use crate::strategy::testing::completion;

    fn judge(texts: &[&str]) -> Vec<SampleRecord> {
        let p = Problem { id: "p".into(), question: "q".into(), answer: "1234".into(), bucket: String::new() };
        let completions: Vec<_> = texts.iter().map(|t| completion(t)).collect();
        judge_completions(&Verifier::new(Format::Auto), &p, "q", &completions, false)
    }

    #[test]
    fn majority_votes_by_equivalent_answers() {
        // 1,234 and 1234 are one answer: two votes against one for 99.
        assert!(majority(&judge(&["The answer is 99.", "The answer is 1,234.", "The answer is 1234."])));
        assert!(!majority(&judge(&["The answer is 99.", "The answer is 99.", "The answer is 1234."])));
        // Samples without an answer do not vote; none at all is a miss.
        assert!(majority(&judge(&["No idea.", "Hmm.", "The answer is 1234."])));
        assert!(!majority(&judge(&["No idea."])));
        // A tie goes to the answer given first.
        assert!(!majority(&judge(&["The answer is 7.", "The answer is 1234."])));
        assert!(majority(&judge(&["The answer is 1234.", "The answer is 7."])));
    }

    #[test]
    fn pass_needs_one_right_sample() {
        assert!(pass(&judge(&["The answer is 7.", "The answer is 1234."])));
        assert!(!pass(&judge(&["The answer is 7.", "The answer is 12345."])));
    }
}
