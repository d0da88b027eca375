//! `flywheel report`: accuracy per iteration and per bucket, as a plain text table.

use std::fmt::Write as _;
use std::path::Path;

use crate::eval::EvalReport;
use crate::{LoopError, Result};

/// One row of the table: an iteration's evaluation and the size of its training set.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The iteration.
    pub iteration: usize,
    /// Training examples of the iteration (seed set for iteration 0).
    pub examples: Option<usize>,
    /// Its evaluation.
    pub eval: EvalReport,
}

/// Reads `iter-*/eval.json` (and `train.jsonl` sizes) of a run directory, in iteration order.
pub fn read_rows(run: &Path) -> Result<Vec<Row>> {
    let entries = std::fs::read_dir(run).map_err(|source| LoopError::Io { path: run.to_owned(), source })?;
    let mut rows = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(iteration) = name.strip_prefix("iter-").and_then(|n| n.parse::<usize>().ok()) else { continue };
        let eval_path = entry.path().join("eval.json");
        let Ok(text) = std::fs::read(&eval_path) else { continue };
        let eval: EvalReport = serde_json::from_slice(&text)
            .map_err(|e| LoopError::Corrupt { path: eval_path.clone(), message: e.to_string() })?;
        let examples = std::fs::read_to_string(entry.path().join("train.jsonl")).ok().map(|t| t.lines().count());
        rows.push(Row { iteration, examples, eval });
    }
    rows.sort_by_key(|r| r.iteration);
    Ok(rows)
}

/// The table: one line per iteration, overall accuracy then one column per bucket.
pub fn render(rows: &[Row]) -> String {
    let mut buckets: Vec<&String> = rows.iter().flat_map(|r| r.eval.by_bucket.keys()).collect();
    buckets.sort_by_key(|b| (b.parse::<u64>().unwrap_or(u64::MAX), b.as_str()));
    buckets.dedup();
    let mut out = String::new();
    let _ = write!(out, "{:>4}  {:>8}  {:>7}", "iter", "examples", "overall");
    for b in &buckets {
        let _ = write!(out, "  {:>6}", b);
    }
    out.push('\n');
    for r in rows {
        let examples = r.examples.map_or("-".to_owned(), |n| n.to_string());
        let _ = write!(out, "{:>4}  {:>8}  {:>6.1}%", r.iteration, examples, r.eval.accuracy * 100.0);
        for b in &buckets {
            match r.eval.by_bucket.get(*b) {
                Some(a) => {
                    let _ = write!(out, "  {:>5.1}%", a * 100.0);
                }
                None => {
                    let _ = write!(out, "  {:>6}", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_buckets_in_numeric_order() {
        let eval = EvalReport {
            accuracy: 0.5,
            n: 4,
            by_bucket: [("10".to_owned(), 0.25), ("2".to_owned(), 0.75)].into_iter().collect(),
        };
        let table = render(&[Row { iteration: 0, examples: Some(12), eval }]);
        assert_eq!(table, "iter  examples  overall       2      10\n   0        12    50.0%   75.0%   25.0%\n");
    }
}
