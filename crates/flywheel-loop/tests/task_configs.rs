//! Task blocks of a run config: the word-problem and JSONL tasks parse with their defaults, build,
//! and invalid values name their key.

use std::path::{Path, PathBuf};

use flywheel_loop::config::{ArithWordConfig, JsonlConfig, TaskConfig};
use flywheel_loop::{tasks, RunConfig};

/// The shipped addition example with its `[task]` table replaced by `task`.
fn with_task(task: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/addition-star.toml");
    let text = std::fs::read_to_string(path).expect("example");
    let start = text.find("[task]").expect("[task]");
    let end = start + text[start..].find("\n[model").expect("[model] after [task]") + 1;
    format!("{}{task}\n{}", &text[..start], &text[end..])
}

#[test]
fn arith_word_block_parses_with_defaults_and_builds() {
    let text = with_task("[task]\ntype = \"arith-word\"\ntrain-problems = 300\neval-problems = 200\n");
    let config = RunConfig::parse(&text, Path::new("aw.toml")).expect("parses");
    let expected = ArithWordConfig {
        train_problems: 300,
        eval_problems: 200,
        two_step_fraction: 0.5,
        max_operand: 100,
        last_number_fallback: false,
        instruction: None,
        held_out_stories: 0,
    };
    assert_eq!(config.task, TaskConfig::ArithWord(expected));
    assert_eq!(RunConfig::parse(&config.to_toml(), Path::new("roundtrip")).expect("roundtrip"), config);
    let task = tasks::build(&config.task, config.seed).expect("builds");
    assert_eq!((task.train_problems().len(), task.eval_problems().len()), (300, 200));
}

#[test]
fn arith_word_invalid_values_name_the_key() {
    for (line, key) in [
        ("two-step-fraction = 1.5", "task.two-step-fraction"),
        ("max-operand = 5", "task.max-operand"),
        ("eval-problems = 0", "task.eval-problems"),
    ] {
        let block = "[task]\ntype = \"arith-word\"\ntrain-problems = 10\neval-problems = 20\n".to_string();
        let block = if line.starts_with("eval-problems") {
            block.replace("eval-problems = 20", line)
        } else {
            format!("{block}{line}\n")
        };
        let err = RunConfig::parse(&with_task(&block), Path::new("aw.toml")).expect_err(line);
        assert!(err.to_string().contains(key), "{line}: {err}");
    }
    let err = RunConfig::parse(
        &with_task("[task]\ntype = \"arith-word\"\ntrain-problems = 1\neval-problems = 1\ntwo-steps = 1\n"),
        Path::new("aw.toml"),
    )
    .expect_err("unknown key");
    assert!(err.to_string().contains("two-steps"), "{err}");
}

#[test]
fn jsonl_block_parses_with_defaults() {
    let text = with_task(
        "[task]\ntype = \"jsonl\"\ntrain = \"data/train.jsonl\"\neval = \"data/test.jsonl\"\neval-limit = 200\n",
    );
    let config = RunConfig::parse(&text, Path::new("j.toml")).expect("parses");
    let expected = JsonlConfig {
        train: PathBuf::from("data/train.jsonl"),
        eval: PathBuf::from("data/test.jsonl"),
        question_field: "question".into(),
        answer_field: "answer".into(),
        bucket_field: None,
        train_limit: None,
        eval_limit: Some(200),
        instruction: None,
        last_number_fallback: false,
    };
    assert_eq!(config.task, TaskConfig::Jsonl(expected));
    assert_eq!(RunConfig::parse(&config.to_toml(), Path::new("roundtrip")).expect("roundtrip"), config);
    let err = RunConfig::parse(&text.replace("eval-limit = 200", "eval-limit = 0"), Path::new("j.toml"))
        .expect_err("zero limit");
    assert!(err.to_string().contains("task.eval-limit"), "{err}");
    // A missing file is an error of building the task, naming the file.
    let err = tasks::build(&config.task, 1).err().expect("no such file");
    assert!(err.to_string().contains("data/test.jsonl"), "{err}");
}
