//! Evaluation on the held-out split: greedy decoding, accuracy overall and per bucket.

use std::collections::BTreeMap;

use flywheel_core::{GenerationRequest, Generator, Reporter, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::star::{judge_completions, SampleRecord};
use crate::Task;

/// Held-out accuracy: `eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Share of held-out problems answered correctly.
    pub accuracy: f64,
    /// Number of held-out problems.
    pub n: usize,
    /// Accuracy per bucket (digit length for addition).
    pub by_bucket: BTreeMap<String, f64>,
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

/// Greedy answers to every held-out problem, judged; returns the report and the records.
pub fn evaluate(
    task: &dyn Task,
    generator: &mut dyn Generator,
    max_new_tokens: usize,
    reporter: &dyn Reporter,
) -> crate::Result<(EvalReport, Vec<SampleRecord>)> {
    let problems = task.eval_problems();
    let requests: Vec<GenerationRequest> = problems.iter().map(|p| GenerationRequest::new(task.prompt(p), 1)).collect();
    let params = SamplingParams { temperature: 0.0, max_new_tokens, ..SamplingParams::default() };
    let completions = generator.generate(&requests, &params, reporter)?;
    let verifier = task.verifier();
    let records: Vec<SampleRecord> = problems
        .iter()
        .zip(&requests)
        .zip(&completions)
        .flat_map(|((p, r), c)| judge_completions(&verifier, p, &r.prompt, c, false))
        .collect();
    Ok((EvalReport::from_records(&records), records))
}
