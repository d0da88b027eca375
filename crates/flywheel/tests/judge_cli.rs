//! `flywheel judge` as a user runs it: files, stdin, malformed input, closed pipes.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use serde_json::Value;

fn flywheel() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flywheel"));
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "warn");
    cmd
}

fn run_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    run_with_bytes(args, stdin.as_bytes())
}

fn records(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

#[test]
fn judges_the_example_file_keeping_every_field() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/judge-sample.jsonl");
    let out = flywheel().args(["judge", "--input", path]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = records(&out.stdout);
    assert_eq!(rows.len(), 9);
    let by_id = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("row {id}")).clone();
    assert_eq!(by_id("gsm8k-0")["correct"], true);
    assert_eq!(by_id("substring-trap")["extracted"], "4");
    assert_eq!(by_id("substring-trap")["correct"], false);
    assert_eq!(by_id("no-answer")["extracted"], Value::Null);
    assert_eq!(by_id("text-answer")["correct"], true);
    assert_eq!(by_id("correct-vs-incorrect")["correct"], false);
    // Input fields come first, in their order, then the verdict.
    let keys: Vec<&String> = rows[0].as_object().expect("object").keys().collect();
    assert_eq!(keys, ["id", "completion", "gold", "extracted", "correct"]);
}

#[test]
fn reads_stdin_and_applies_the_format() {
    let input = "{\"completion\": \"so 3 + 4 = 7\", \"gold\": 7}\n\n{\"completion\": \"#### 9\", \"gold\": \"9\"}\n";
    let out = run_with_stdin(&["judge", "--input", "-", "--format", "last-number"], input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = records(&out.stdout);
    assert_eq!(rows.len(), 2, "blank lines are skipped");
    assert_eq!(rows[0]["extracted"], "7");
    assert_eq!(rows[0]["correct"], true);
    assert_eq!(rows[1]["correct"], true);
}

#[test]
fn malformed_line_is_an_error_naming_its_line() {
    let input = "{\"completion\": \"#### 1\", \"gold\": \"1\"}\n{\"completion\": 5, \"gold\": \"1\"}\n";
    let out = run_with_stdin(&["judge", "--input", "-"], input);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("<stdin>:2:") && stderr.contains("`completion` must be a string"), "{stderr}");
}

#[test]
fn keep_going_passes_malformed_lines_through() {
    let input = "not json\n{\"gold\": \"1\", \"x\": 1}\n{\"completion\": \"#### 1\", \"gold\": \"1\"}\n";
    let out = run_with_stdin(&["judge", "--input", "-", "--keep-going"], input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = records(&out.stdout);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["raw"], "not json");
    assert!(rows[0]["error"].as_str().expect("error").contains("<stdin>:1: invalid JSON"));
    assert_eq!(rows[1]["x"], 1);
    assert!(rows[1]["error"].as_str().expect("error").contains("missing field `completion`"));
    assert_eq!(rows[2]["correct"], true);
}

fn run_with_bytes(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = flywheel()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flywheel");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_line() {
    let input = b"\xEF\xBB\xBF{\"completion\": \"#### 1\", \"gold\": \"1\"}\r\n{\"completion\": \"#### 2\", \"gold\": \"1\"}\r\n";
    let out = run_with_bytes(&["judge", "--input", "-"], input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = records(&out.stdout);
    assert_eq!((rows[0]["correct"].clone(), rows[1]["correct"].clone()), (Value::Bool(true), Value::Bool(false)));
}

#[test]
fn keep_going_passes_a_line_that_is_not_utf8_through() {
    let input = b"{\"completion\": \"#### 1\", \"gold\": \"1\"}\n{\"completion\": \"\xFF\xFE 3\", \"gold\": \"3\"}\n{\"completion\": \"#### 3\", \"gold\": \"3\"}\n";
    let out = run_with_bytes(&["judge", "--input", "-", "--keep-going"], input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = records(&out.stdout);
    assert_eq!(rows.len(), 3, "every line comes out");
    assert!(rows[1]["error"].as_str().expect("error").contains("<stdin>:2: not UTF-8"), "{}", rows[1]);
    assert_eq!(rows[2]["correct"], true);
    // Without --keep-going it is an error naming the line.
    let out = run_with_bytes(&["judge", "--input", "-"], input);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("<stdin>:2: not UTF-8"));
}

#[test]
fn missing_file_names_the_path() {
    let out = flywheel().args(["judge", "--input", "/nonexistent/x.jsonl"]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.jsonl"));
}

#[test]
fn a_closed_pipe_downstream_is_not_an_error() {
    let line = "{\"completion\": \"#### 1\", \"gold\": \"1\"}\n";
    let mut child = flywheel()
        .args(["judge", "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    let mut stdin = child.stdin.take().expect("stdin");
    // Enough input to fill the pipe, read a little, then close our end of stdout.
    let writer = std::thread::spawn(move || {
        for _ in 0..200_000 {
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    stdout.read_exact(&mut first).expect("some output");
    drop(stdout);
    let status = child.wait().expect("wait");
    writer.join().expect("writer");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    assert!(status.success(), "exit {status:?}: {stderr}");
}
