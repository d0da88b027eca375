//! `flywheel judge`: JSONL of completions and gold answers in, the same lines with verdicts out.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use flywheel_verify::Verifier;
use serde_json::{Map, Value};

use crate::cli::JudgeArgs;

/// Runs `flywheel judge`.
pub fn run(args: &JudgeArgs) -> Result<()> {
    let verifier = Verifier::new(args.format).with_last_number_fallback(args.last_number_fallback);
    let input: Box<dyn BufRead> = if args.input == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
        Box::new(BufReader::new(file))
    };
    let name = if args.input == Path::new("-") { "<stdin>".to_owned() } else { args.input.display().to_string() };
    let mut out = BufWriter::new(io::stdout().lock());
    let (mut judged, mut correct, mut malformed) = (0u64, 0u64, 0u64);
    for (index, bytes) in input.split(b'\n').enumerate() {
        let line_no = index + 1;
        let mut bytes = bytes.with_context(|| format!("{name}:{line_no}: cannot read line"))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        // A byte-order mark (Windows editors write one) is not part of the first line's JSON.
        let bytes = if line_no == 1 { bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes) } else { &bytes[..] };
        let line = match std::str::from_utf8(bytes) {
            Ok(line) => line,
            Err(e) => {
                let err = format!("not UTF-8 text (invalid byte at column {})", e.valid_up_to() + 1);
                if !args.keep_going {
                    bail!("{name}:{line_no}: {err}");
                }
                malformed += 1;
                let raw = String::from_utf8_lossy(bytes);
                write_record(&mut out, &malformed_record(&raw, &format!("{name}:{line_no}: {err}")))?;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let record = match judge_line(&verifier, line) {
            Ok(record) => {
                judged += 1;
                correct += u64::from(record["correct"] == Value::Bool(true));
                record
            }
            Err(err) if args.keep_going => {
                malformed += 1;
                malformed_record(line, &format!("{name}:{line_no}: {err}"))
            }
            Err(err) => bail!("{name}:{line_no}: {err}"),
        };
        write_record(&mut out, &record)?;
    }
    out.flush()?;
    tracing::info!(judged, correct, malformed, "judged {name}");
    Ok(())
}

/// Judges one JSONL line; the error says what is wrong with it.
fn judge_line(verifier: &Verifier, line: &str) -> Result<Map<String, Value>, String> {
    let mut record: Map<String, Value> = match serde_json::from_str(line) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err("expected a JSON object".into()),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    let completion = match record.get("completion") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("field `completion` must be a string".into()),
        None => return Err("missing field `completion`".into()),
    };
    let gold = match record.get("gold") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("field `gold` must be a string or a number".into()),
        None => return Err("missing field `gold`".into()),
    };
    let verdict = verifier.judge(&completion, &gold);
    record.insert("extracted".into(), verdict.extracted.map_or(Value::Null, |s| Value::String(s.to_owned())));
    record.insert("correct".into(), Value::Bool(verdict.correct));
    Ok(record)
}

fn write_record(out: &mut impl Write, record: &Map<String, Value>) -> Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// A malformed line passed through under `--keep-going`: its fields if it was an object, its raw
/// text otherwise, and the error.
fn malformed_record(line: &str, error: &str) -> Map<String, Value> {
    let mut record = match serde_json::from_str(line) {
        Ok(Value::Object(map)) => map,
        _ => Map::from_iter([("raw".to_owned(), Value::String(line.to_owned()))]),
    };
    record.insert("error".into(), Value::String(error.to_owned()));
    record
}
