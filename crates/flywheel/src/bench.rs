//! `flywheel bench`: throughput of flywheel's parts, measured in-process.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, Result};
use flywheel_verify::{Answer, Verifier};

use crate::cli::{BenchArgs, BenchTarget};

/// Runs `flywheel bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.what {
        BenchTarget::Judge { data, seconds } => judge(data, *seconds),
    }
}

/// Judges every worked solution of a GSM8K file against its own final answer, over and over on one
/// thread, and prints completions per second.
fn judge(data: &std::path::Path, seconds: f64) -> Result<()> {
    let text = std::fs::read_to_string(data).with_context(|| format!("cannot read {}", data.display()))?;
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", data.display(), i + 1))?;
        let solution = value["answer"]
            .as_str()
            .with_context(|| format!("{}:{}: missing string field `answer`", data.display(), i + 1))?
            .to_owned();
        let gold = Verifier::gold_answer(&solution).to_owned();
        cases.push((solution, gold));
    }
    anyhow::ensure!(!cases.is_empty(), "{} holds no problems", data.display());
    let mean_len = cases.iter().map(|(s, _)| s.len()).sum::<usize>() / cases.len();
    let verifier = Verifier::default();
    let start = Instant::now();
    let (mut judged, mut correct) = (0u64, 0u64);
    while start.elapsed().as_secs_f64() < seconds {
        for (completion, gold) in &cases {
            // Full work per sample: extract and parse both sides, as `flywheel judge` does.
            let verdict = verifier.judge_parsed(black_box(completion), &Answer::parse(black_box(gold)));
            correct += u64::from(verdict.correct);
        }
        judged += cases.len() as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = judged as f64 / elapsed;
    println!("judge: {judged} completions (mean {mean_len} bytes) in {elapsed:.2}s on 1 thread");
    println!("judge: {rate:.0} completions/s, {:.2} us each; {correct} judged correct", 1e6 / rate);
    println!("judge: target 200000/s: {}", if rate >= 200_000.0 { "met" } else { "NOT met" });
    Ok(())
}
