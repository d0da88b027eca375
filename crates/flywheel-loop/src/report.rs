//! `flywheel report`: a run's accuracy per iteration and bucket, what each iteration drew and kept,
//! its quality metrics and warnings, and several runs side by side, as plain text tables or as one
//! self-contained HTML page (`html.rs`).

mod html;

use std::fmt::Write as _;
use std::path::Path;

pub use html::render_html;

use crate::eval::EvalReport;
use crate::events::{Event, QualityEvent, SampleEvent};
use crate::quality::metrics::Quality;
use crate::quality::watch::Severity;
use crate::rundir::{read_events, RunPaths};
use crate::strategy::StrategyStats;
use crate::{LoopError, Result};

/// One row of the accuracy table: an iteration's evaluation and the size of its training set.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The iteration.
    pub iteration: usize,
    /// Training examples of the iteration (seed set for iteration 0).
    pub examples: Option<usize>,
    /// Its evaluation.
    pub eval: EvalReport,
}

/// Everything the report shows of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The run directory's name.
    pub name: String,
    /// One row per evaluated iteration, in order.
    pub rows: Vec<Row>,
    /// The events of `metrics.jsonl`.
    pub events: Vec<Event>,
}

impl RunReport {
    /// Reads a run directory.
    pub fn read(run: &Path) -> Result<Self> {
        let rows = read_rows(run)?;
        let events = read_events(&RunPaths::new(run).metrics_path())?;
        let name = run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { name, rows, events })
    }

    fn sample_event(&self, k: usize) -> Option<&SampleEvent> {
        self.events.iter().find_map(|e| match e {
            Event::Sample(s) if s.iteration == k => Some(s),
            _ => None,
        })
    }

    /// Seconds spent on `phase` (`sample`, `train` or `eval`) in iteration `k`.
    fn seconds(&self, k: usize, phase: &str) -> f64 {
        self.events
            .iter()
            .filter(|e| e.iteration() == k)
            .map(|e| match (e, phase) {
                (Event::Sample(s), "sample") => s.seconds,
                (Event::Train(t), "train") => t.seconds,
                (Event::Eval(v), "eval") => v.seconds,
                _ => 0.0,
            })
            .sum()
    }

    /// Wall time of the whole run so far, from its events.
    fn total_seconds(&self) -> f64 {
        self.rows
            .iter()
            .map(|r| ["sample", "train", "eval"].iter().map(|p| self.seconds(r.iteration, p)).sum::<f64>())
            .sum()
    }
}

/// Reads `iter-*/eval.json` (and the first training set's size) of a run directory, in iteration
/// order; an iteration not yet evaluated is left out.
pub fn read_rows(run: &Path) -> Result<Vec<Row>> {
    let paths = RunPaths::new(run);
    let mut rows = Vec::new();
    for iteration in paths.iterations()? {
        let eval_path = paths.eval_path(iteration);
        let Ok(text) = std::fs::read(&eval_path) else { continue };
        let eval: EvalReport = serde_json::from_slice(&text)
            .map_err(|e| LoopError::Corrupt { path: eval_path.clone(), message: e.to_string() })?;
        let examples = std::fs::read_to_string(paths.train_path(iteration, 0)).ok().map(|t| t.lines().count());
        rows.push(Row { iteration, examples, eval });
    }
    Ok(rows)
}

/// The accuracy table: one line per iteration, overall accuracy then one column per bucket.
pub fn render(rows: &[Row]) -> String {
    let mut buckets: Vec<&String> = rows.iter().flat_map(|r| r.eval.by_bucket.keys()).collect();
    buckets.sort_by_key(|b| (b.parse::<u64>().unwrap_or(u64::MAX), b.as_str()));
    buckets.dedup();
    let mut out = String::new();
    let _ = write!(out, "{:>4}  {:>8}  {:>7}", "iter", "examples", "overall");
    // Each bucket's column is as wide as its name (at least 6).
    let widths: Vec<usize> = buckets.iter().map(|b| b.chars().count().max(6)).collect();
    for (b, w) in buckets.iter().zip(&widths) {
        let _ = write!(out, "  {b:>w$}");
    }
    out.push('\n');
    for r in rows {
        let examples = r.examples.map_or("-".to_owned(), |n| n.to_string());
        let _ = write!(out, "{:>4}  {:>8}  {:>6.1}%", r.iteration, examples, r.eval.accuracy * 100.0);
        for (b, &w) in buckets.iter().zip(&widths) {
            match r.eval.by_bucket.get(*b) {
                Some(a) => {
                    let _ = write!(out, "  {:>w$.1}%", a * 100.0, w = w - 1);
                }
                None => {
                    let _ = write!(out, "  {:>w$}", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}

fn percent(x: Option<f64>) -> String {
    x.map_or("-".to_owned(), |x| format!("{:.1}%", x * 100.0))
}

/// The data table of a run: per iteration, samples drawn and kept, the true correctness and mean
/// reward of what was kept, preference pairs, the self-judge's precision and recall (self-play),
/// pass@k and maj@k where evaluated, and the seconds of each phase; then any early stop.
pub fn render_data(run: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4}  {:>7}  {:>6}  {:>7}  {:>6}  {:>6}  {:>5}  {:>6}  {:>6}  {:>6}  {:>6}  {:>7}  {:>7}  {:>6}",
        "iter",
        "drawn",
        "kept",
        "correct",
        "reward",
        "r-kept",
        "pairs",
        "judgeP",
        "judgeR",
        "pass@k",
        "maj@k",
        "sample s",
        "train s",
        "eval s"
    );
    for r in &run.rows {
        let k = r.iteration;
        let s = run.sample_event(k);
        let (precision, recall) = match s.map(|s| &s.stats) {
            Some(StrategyStats::SelfPlay(p)) => (p.judge.precision(), p.judge.recall()),
            _ => (None, None),
        };
        let num = |x: Option<String>| x.unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "{:>4}  {:>7}  {:>6}  {:>7}  {:>6}  {:>6}  {:>5}  {:>6}  {:>6}  {:>6}  {:>6}  {:>8.0}  {:>7.0}  {:>6.0}",
            k,
            num(s.map(|s| s.samples.to_string())),
            num(s.map(|s| s.kept.to_string())),
            percent(s.and_then(|s| s.kept_correct)),
            num(s.map(|s| format!("{:.3}", s.mean_reward))),
            num(s.map(|s| format!("{:.3}", s.mean_reward_kept))),
            num(s.map(|s| s.pairs.to_string())),
            percent(precision),
            percent(recall),
            percent(r.eval.pass_at_k),
            percent(r.eval.maj_at_k),
            run.seconds(k, "sample"),
            run.seconds(k, "train"),
            run.seconds(k, "eval"),
        );
    }
    for e in &run.events {
        if let Event::Stop(stop) = e {
            let _ = writeln!(out, "stopped early after iteration {}: {}", stop.iteration, stop.reason);
        }
    }
    out
}

/// The quality table of a run: per iteration, the diversity and repetition of the samples drawn
/// (distinct-1/2/3, moving-average TTR, near-duplicate rate, self-BLEU, answer entropy in bits,
/// repetition, mean length in words), the near-duplicate rate of the kept set, the distinct-2 of
/// the held-out answers and the change in held-out accuracy; then the collapse watch's warnings.
/// Empty when the run has no `quality` events (runs made before they existed).
pub fn render_quality(run: &RunReport) -> String {
    let events: Vec<&QualityEvent> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Quality(q) => Some(&**q),
            _ => None,
        })
        .collect();
    if events.is_empty() {
        return String::new();
    }
    let f = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.3}"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>10}  {:>9}  {:>7}  {:>8}",
        "iter",
        "dist-1",
        "dist-2",
        "dist-3",
        "mattr",
        "n-dup",
        "sBLEU",
        "ans-H",
        "rep",
        "len",
        "kept n-dup",
        "eval d-2",
        "ppl",
        "acc chg"
    );
    for q in events {
        let s = q.samples.as_ref();
        let pick = |g: fn(&Quality) -> Option<f64>| f(s.and_then(g));
        let _ = writeln!(
            out,
            "{:>4}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  {:>10}  {:>9}  {:>7}  {:>8}",
            q.iteration,
            pick(|q| q.distinct_1),
            pick(|q| q.distinct_2),
            pick(|q| q.distinct_3),
            pick(|q| q.mattr),
            pick(|q| q.near_duplicate_rate),
            pick(|q| q.self_bleu),
            pick(|q| q.answer_entropy),
            pick(|q| q.repetition),
            s.and_then(|q| q.length_mean).map_or("-".to_owned(), |l| format!("{l:.1}")),
            f(q.kept.as_ref().and_then(|k| k.near_duplicate_rate)),
            f(q.heldout.distinct_2),
            f(q.perplexity),
            q.accuracy_change.map_or("-".to_owned(), |c| format!("{:+.1}", c * 100.0)),
        );
    }
    for q in run.events.iter().filter_map(|e| match e {
        Event::Quality(q) => Some(q),
        _ => None,
    }) {
        for w in &q.warnings {
            let level = match w.severity {
                Severity::Warning => "warning",
                Severity::Critical => "CRITICAL",
            };
            let _ = writeln!(out, "iteration {}: {level} {}: {}", q.iteration, w.rule, w.message);
        }
    }
    out
}

/// Several runs side by side: held-out accuracy, then kept samples (with their true correctness),
/// per iteration, and each run's wall time.
pub fn render_side_by_side(runs: &[RunReport]) -> String {
    let last = runs.iter().flat_map(|r| r.rows.iter().map(|row| row.iteration)).max().unwrap_or(0);
    let width = runs.iter().map(|r| r.name.len()).max().unwrap_or(0).max(14);
    let mut out = String::new();
    let header = |out: &mut String, title: &str| {
        let _ = write!(out, "{title}\n{:>4}", "iter");
        for r in runs {
            let _ = write!(out, "  {:>width$}", r.name);
        }
        out.push('\n');
    };
    header(&mut out, "held-out accuracy");
    for k in 0..=last {
        let _ = write!(out, "{k:>4}");
        for r in runs {
            let cell = r.rows.iter().find(|row| row.iteration == k).map(|row| row.eval.accuracy);
            let _ = write!(out, "  {:>width$}", percent(cell));
        }
        out.push('\n');
    }
    header(&mut out, "\nkept / drawn (truly correct)");
    for k in 1..=last {
        let _ = write!(out, "{k:>4}");
        for r in runs {
            let cell = r
                .sample_event(k)
                .map_or("-".to_owned(), |s| format!("{}/{} ({})", s.kept, s.samples, percent(s.kept_correct)));
            let _ = write!(out, "  {:>width$}", cell);
        }
        out.push('\n');
    }
    let _ = write!(out, "\n{:>4}", "wall");
    for r in runs {
        let _ = write!(out, "  {:>width$}", format!("{:.0} s", r.total_seconds()));
    }
    out.push('\n');
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
            k: None,
            pass_at_k: None,
            maj_at_k: None,
        };
        let table = render(&[Row { iteration: 0, examples: Some(12), eval }]);
        assert_eq!(table, "iter  examples  overall       2      10\n   0        12    50.0%   75.0%   25.0%\n");
    }
}
