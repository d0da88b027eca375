//! The JSONL task: GSM8K's files load as they are, errors name file, line and field, limits draw a
//! seeded subset, and training problems also held out are dropped.

use std::io::Write;
use std::path::{Path, PathBuf};

use flywheel_loop::config::JsonlConfig;
use flywheel_loop::task::check_disjoint;
use flywheel_loop::tasks::ChatProblems;
use flywheel_loop::tasks::DEFAULT_INSTRUCTION;
use flywheel_loop::{LoopError, Task};

/// GSM8K's directory (kept in the repository, MIT licence) relative to the crate, the working
/// directory of `cargo test`.
const GSM8K: &str = "../../data/gsm8k";

fn config(train: &Path, eval: &Path) -> JsonlConfig {
    JsonlConfig {
        train: train.to_owned(),
        eval: eval.to_owned(),
        question_field: "question".into(),
        answer_field: "answer".into(),
        bucket_field: None,
        train_limit: None,
        eval_limit: None,
        instruction: None,
        last_number_fallback: false,
    }
}

/// A file in `dir` holding `lines`.
fn file(dir: &tempfile::TempDir, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).expect("create");
    for line in lines {
        writeln!(f, "{line}").expect("write");
    }
    path
}

fn problems(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!(r#"{{"question": "{prefix} question {i}?", "answer": "{i}"}}"#)).collect()
}

#[test]
fn gsm8k_files_load_as_they_are() {
    let (train, test) = (Path::new(GSM8K).join("train.jsonl"), Path::new(GSM8K).join("test.jsonl"));
    // Relative paths, resolved against the working directory.
    let task = ChatProblems::jsonl(&config(&train, &test), 1).expect("GSM8K loads");
    assert_eq!((task.train_problems().len(), task.eval_problems().len()), (7473, 1319));
    assert_eq!(task.overlap_dropped(), 0);
    assert!(check_disjoint(&task).is_empty());
    let first = &task.train_problems()[0];
    assert_eq!(first.id, "train-00001");
    assert!(first.question.starts_with("Natalia sold clips to 48 of her friends"), "{}", first.question);
    assert_eq!(first.answer, "72");
    assert_eq!(task.prompt(first), format!("{}\n{DEFAULT_INSTRUCTION}", first.question));
    assert!(!task.prompt(first).contains("Hint"));
    assert!(task.hinted_prompt(first).ends_with("\nHint: the answer is 72. Explain how to get it."));
    let verifier = task.verifier();
    assert!(verifier.judge("48 + 24 = 72. The answer is 72.", &first.answer).correct);
    assert!(!verifier.judge("48 + 24 = 72. The answer is 721.", &first.answer).correct);
    // Every gold answer is a bare number, thousands separators and all ("1,080").
    for p in task.train_problems().iter().chain(task.eval_problems()) {
        assert!(!p.answer.contains("####") && !p.answer.contains('\n'), "{}: {}", p.id, p.answer);
        let plain = p.answer.replace(',', "");
        assert!(plain.parse::<f64>().is_ok(), "{}: {}", p.id, p.answer);
        assert!(verifier.judge(&format!("The answer is {plain}."), &p.answer).correct, "{}", p.id);
    }
    assert!(task.seed_examples().is_empty());
}

fn load_error(lines: &[&str], config_edit: impl FnOnce(&mut JsonlConfig)) -> (PathBuf, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let train = file(&dir, "train.jsonl", &lines.iter().map(|l| l.to_string()).collect::<Vec<_>>());
    let eval = file(&dir, "eval.jsonl", &problems("held-out", 3));
    let mut config = config(&train, &eval);
    config_edit(&mut config);
    let err = ChatProblems::jsonl(&config, 1).expect_err("bad line");
    assert!(matches!(err, LoopError::Dataset { .. }), "{err:?}");
    (train, err.to_string())
}

#[test]
fn errors_name_the_file_the_line_and_the_field() {
    let ok = r#"{"question": "What is 2+2?", "answer": "4"}"#;
    let (path, msg) = load_error(&[ok, "", r#"{"question": "Broken", "answer": "#], |_| ());
    assert!(msg.starts_with(&format!("{}:3: not valid JSON", path.display())), "{msg}");

    let (path, msg) = load_error(&[ok, r#"{"question": "No answer here"}"#], |_| ());
    assert_eq!(msg, format!("{}:2: field \"answer\" is missing", path.display()));

    let (path, msg) = load_error(&[r#"{"question": 12, "answer": "4"}"#], |_| ());
    assert_eq!(msg, format!("{}:1: field \"question\" must be a string, found a number", path.display()));

    let (path, msg) = load_error(&[r#"{"question": "What?", "answer": [4]}"#], |_| ());
    assert_eq!(msg, format!("{}:1: field \"answer\" must be a string or a number, found an array", path.display()));

    let (path, msg) = load_error(&[ok, "[1, 2]"], |_| ());
    assert_eq!(msg, format!("{}:2: expected a JSON object, found an array", path.display()));

    for answer in ["####", "Two and two make four. ####  "] {
        let line = format!(r#"{{"question": "What is 2+2?", "answer": "{answer}"}}"#);
        let (path, msg) = load_error(&[ok, &line], |_| ());
        assert_eq!(
            msg,
            format!("{}:2: field \"answer\" has a `####` marker with no answer after it", path.display()),
            "{answer:?}"
        );
    }

    // The held-out file is read first, and lacks the bucket field too.
    let (path, msg) = load_error(&[ok], |c| c.bucket_field = Some("level".into()));
    assert_eq!(msg, format!("{}:1: field \"level\" is missing", path.with_file_name("eval.jsonl").display()));
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let eval = file(&dir, "eval.jsonl", &problems("held-out", 3));
    let missing = dir.path().join("nope.jsonl");
    let err = ChatProblems::jsonl(&config(&missing, &eval), 1).expect_err("missing");
    assert!(err.to_string().starts_with(&missing.display().to_string()), "{err}");
}

#[test]
fn other_field_names_numeric_answers_and_buckets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = [r#"{"problem": "Six times seven?", "solution": 42, "level": 2}"#.to_string(), String::new()];
    let train = file(&dir, "train.jsonl", &lines);
    let eval = file(
        &dir,
        "eval.jsonl",
        &[r#"{"problem": "Two and two?", "solution": "It is 4.\n#### 4", "level": "one"}"#.into()],
    );
    let config = JsonlConfig {
        question_field: "problem".into(),
        answer_field: "solution".into(),
        bucket_field: Some("level".into()),
        instruction: Some(String::new()),
        ..config(&train, &eval)
    };
    let task = ChatProblems::jsonl(&config, 1).expect("loads");
    let (t, e) = (&task.train_problems()[0], &task.eval_problems()[0]);
    assert_eq!((t.answer.as_str(), t.bucket.as_str(), t.question.as_str()), ("42", "2", "Six times seven?"));
    assert_eq!((e.answer.as_str(), e.bucket.as_str()), ("4", "one"));
    assert_eq!(task.prompt(t), "Six times seven?");
    // The held-out worked solution is the natural-text set's; a bare answer gives none.
    assert_eq!(task.heldout_reference(e).as_deref(), Some("It is 4.\nThe answer is 4."));
    assert_eq!(task.heldout_reference(t), None);
    assert_eq!(task.reference_solution(e), None, "a held-out solution is never training data");
}

#[test]
fn limits_keep_a_seeded_subset_in_file_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let train = file(&dir, "train.jsonl", &problems("train", 50));
    let eval = file(&dir, "eval.jsonl", &problems("eval", 40));
    let limited = JsonlConfig { train_limit: Some(20), eval_limit: Some(10), ..config(&train, &eval) };
    let a = ChatProblems::jsonl(&limited, 7).expect("a");
    let b = ChatProblems::jsonl(&limited, 7).expect("b");
    let c = ChatProblems::jsonl(&limited, 8).expect("c");
    assert_eq!((a.train_problems().len(), a.eval_problems().len()), (20, 10));
    assert_eq!(a.train_problems(), b.train_problems());
    assert_eq!(a.eval_problems(), b.eval_problems());
    assert_ne!(a.train_problems(), c.train_problems());
    assert_ne!(a.eval_problems(), c.eval_problems());
    let ids: Vec<&str> = a.train_problems().iter().map(|p| p.id.as_str()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // Not simply the first lines.
    assert_ne!(ids, (1..=20).map(|i| format!("train-{i:05}")).collect::<Vec<_>>());
    let all = JsonlConfig { train_limit: Some(500), ..config(&train, &eval) };
    assert_eq!(ChatProblems::jsonl(&all, 7).expect("all").train_problems().len(), 50);
}

#[test]
fn training_problems_also_held_out_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut train_lines = problems("train", 5);
    // The same question as held-out line 2, with other spacing and another answer format.
    train_lines.push(r#"{"question": "  held-out   question 1? ", "answer": "So 1.\n#### 1"}"#.into());
    train_lines.push(r#"{"question": "held-out question 2?", "answer": "2"}"#.into());
    let train = file(&dir, "train.jsonl", &train_lines);
    let eval = file(&dir, "eval.jsonl", &problems("held-out", 3));
    let task = ChatProblems::jsonl(&config(&train, &eval), 1).expect("loads");
    assert_eq!(task.overlap_dropped(), 2);
    assert_eq!(task.train_problems().len(), 5);
    assert!(check_disjoint(&task).is_empty());
    assert!(task.train_problems().iter().all(|p| p.question.starts_with("train")));

    // Nothing left to train on is an error, not an empty run.
    let only_overlap = file(&dir, "overlap.jsonl", &problems("held-out", 2));
    let err = ChatProblems::jsonl(&config(&only_overlap, &eval), 1).expect_err("empty training split");
    assert!(err.to_string().contains("no training problem is left"), "{err}");
}
