//! The shipped example configs parse, and config errors name the file, the line and the key.

use std::path::{Path, PathBuf};

use flywheel_loop::RunConfig;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn shipped_examples_parse() {
    for name in [
        "addition-star.toml",
        "addition-star-no-rationalization.toml",
        "smollm2-arith-star.toml",
        "smollm2-arith-star-calculator.toml",
        "smollm2-gsm8k-star.toml",
        "collapse-demo.toml",
        "collapse-demo-mitigated.toml",
        "gsm8k-vllm-trl.toml",
        "smollm2-arith-remote.toml",
    ] {
        let config = RunConfig::load(&examples().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format!("{}.toml", config.name), name);
        // What is written to the run directory reads back as the same config.
        assert_eq!(RunConfig::parse(&config.to_toml(), Path::new("roundtrip")).expect("roundtrip"), config);
    }
}

#[test]
fn unknown_key_is_refused_with_file_line_and_key() {
    let text = std::fs::read_to_string(examples().join("addition-star.toml")).expect("example");
    let text = text.replace("samples-per-problem = 4", "samples-per-problem = 4\nsample-per-problem = 4");
    let err = RunConfig::parse(&text, Path::new("my.toml")).expect_err("typo");
    let msg = err.to_string();
    assert!(msg.starts_with("my.toml:"), "{msg}");
    assert!(msg.contains("sample-per-problem"), "{msg}");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn invalid_values_name_the_key() {
    let text = std::fs::read_to_string(examples().join("addition-star.toml")).expect("example");
    let short = text.replace("seed-examples = [100, 1000, 80, 80, 160]", "seed-examples = [100, 1000]");
    assert_ne!(short, text, "the example's seed-examples line changed: update this test");
    let text = short;
    let err = RunConfig::parse(&text, Path::new("my.toml")).expect_err("short list");
    assert!(err.to_string().contains("task.seed-examples"), "{err}");
}

#[test]
fn lora_settings_are_checked() {
    let text = std::fs::read_to_string(examples().join("smollm2-arith-star.toml")).expect("example");
    let config = RunConfig::parse(&text, Path::new("x.toml")).expect("parses");
    let flywheel_loop::config::ModelConfig::Pretrained(model) = &config.model else { panic!("pretrained") };
    let lora = model.lora.as_ref().expect("lora");
    assert_eq!((lora.rank, lora.alpha, lora.target_modules.len()), (16, 32.0, 7));
    let bad = text.replace(r#""q_proj", "k_proj""#, r#""q_proj", "qk_proj""#);
    let err = RunConfig::parse(&bad, Path::new("x.toml")).expect_err("unknown module").to_string();
    assert!(err.contains("qk_proj"), "{err}");
    let bad = text.replace("rank = 16", "rank = 0");
    assert!(RunConfig::parse(&bad, Path::new("x.toml")).is_err());
}

/// Every setting is checked as the config loads, naming the file, the key and what is allowed:
/// none waits for the run to reach it.
#[test]
fn out_of_range_settings_are_refused_at_load_naming_the_key_and_range() {
    let text = std::fs::read_to_string(examples().join("addition-star.toml")).expect("example");
    let cases = [
        ("learning-rate = 0.003", "learning-rate = nan", "training.learning-rate", "above 0"),
        ("learning-rate = 0.003", "learning-rate = -1.0", "training.learning-rate", "above 0"),
        ("learning-rate = 0.003", "learning-rate = inf", "training.learning-rate", "at most 1"),
        ("batch-size = 32", "batch-size = 0", "training.batch-size", "at least 1"),
        ("steps = 1500", "steps = 0", "model.base-training.steps", "at least 1"),
        ("temperature = 0.8", "temperature = nan", "strategy.temperature", "at least 0"),
        ("samples-per-problem = 4", "samples-per-problem = 0", "strategy.samples-per-problem", "at least 1"),
        ("max-new-tokens = 100", "max-new-tokens = 0", "strategy.max-new-tokens", "at least 1"),
        ("train-per-length = 1000", "train-per-length = 0", "task.train-per-length", "at least 1"),
        ("eval-per-length = 100", "eval-per-length = 0", "task.eval-per-length", "at least 1"),
        ("max-position-embeddings = 256", "max-position-embeddings = 0", "max-position-embeddings", "at least 1"),
        ("num-attention-heads = 4", "num-attention-heads = 3", "num-attention-heads", "divide"),
        ("max-batch = 512", "max-batch = 0", "model.max-batch", "at least 1"),
        ("name = \"addition-star\"", "name = \"../elsewhere\"", "name", "plain folder name"),
    ];
    for (from, to, key, range) in cases {
        assert!(text.contains(from), "the example has no `{from}`");
        let bad = text.replacen(from, to, 1);
        let err = RunConfig::parse(&bad, Path::new("my.toml")).expect_err(to).to_string();
        assert!(err.starts_with("my.toml"), "{to}: {err}");
        assert!(err.contains(key) && err.contains(range), "{to}: {err}");
    }
}

#[test]
fn top_p_and_eval_settings_are_checked() {
    let text = std::fs::read_to_string(examples().join("smollm2-arith-star.toml")).expect("example");
    for (from, to, key) in [
        ("top-p = 0.95", "top-p = nan", "strategy.top-p"),
        ("[eval]\nmax-new-tokens = 96", "[eval]\nmax-new-tokens = 0", "eval.max-new-tokens"),
        ("micro-batch-tokens = 2048", "micro-batch-tokens = 0", "model.micro-batch-tokens"),
        ("alpha = 32.0", "alpha = nan", "model.lora.alpha"),
        ("dropout = 0.05", "dropout = nan", "model.lora.dropout"),
    ] {
        assert!(text.contains(from), "the example has no `{from}`");
        let err = RunConfig::parse(&text.replacen(from, to, 1), Path::new("x.toml")).expect_err(to).to_string();
        assert!(err.contains(key), "{to}: {err}");
    }
}

/// The example config with `extra` tables appended.
fn with_tables(extra: &str) -> Result<RunConfig, String> {
    let text = std::fs::read_to_string(examples().join("addition-star.toml")).expect("example");
    RunConfig::parse(&format!("{text}\n{extra}"), Path::new("my.toml")).map_err(|e| e.to_string())
}

#[test]
fn generator_and_trainer_tables_are_checked() {
    let generator = r#"
[generator]
type = "openai"
base-urls = ["http://10.0.0.5:8000/v1"]
model = "policy"
api-key-env = "VLLM_KEY"
on-checkpoint = ["scripts/load-adapter", "{checkpoint}"]
"#;
    let trainer = r#"
[trainer]
type = "command"
command = ["accelerate", "launch", "sft.py", "--data", "{data}", "--out", "{out}", "--steps", "{steps}"]
"#;
    let config = with_tables(&format!("{generator}{trainer}")).expect("valid");
    assert_eq!(RunConfig::parse(&config.to_toml(), Path::new("roundtrip")).expect("roundtrip"), config);
    for (bad, message) in [
        (generator.replace("on-checkpoint = [\"scripts/load-adapter\", \"{checkpoint}\"]\n", ""), "on-checkpoint"),
        (generator.replace("http://10.0.0.5:8000/v1", "10.0.0.5:8000"), "generator.base-urls"),
        (generator.replace("model = \"policy\"", "model = \"policy\"\napi-key = \"sk-123\""), "api-key"),
        (generator.replace("VLLM_KEY", "A=B"), "generator.api-key-env"),
        (trainer.replace("\"--out\", \"{out}\", ", ""), "must pass {out}"),
        (trainer.replace("{steps}", "{step}"), "unknown placeholder {step}"),
    ] {
        let err = with_tables(&bad).expect_err(message);
        assert!(err.starts_with("my.toml") && err.contains(message), "{message}: {err}");
    }
    // A key the table does not have is named with its line.
    let err = with_tables(&generator.replace("model = ", "modle = ")).expect_err("typo");
    assert!(err.contains("modle") && err.contains("line"), "{err}");
}

#[test]
fn the_calculator_is_refused_with_a_remote_generator() {
    let text = std::fs::read_to_string(examples().join("smollm2-arith-remote.toml")).expect("example");
    let with = text.replacen("[model]\n", "[model]\ncalculator = true\n", 1);
    assert_ne!(with, text);
    let err = RunConfig::parse(&with, Path::new("remote.toml")).expect_err("calculator + generator").to_string();
    assert!(err.contains("model.calculator") && err.contains("remote generator"), "{err}");
    // Without a remote generator it is accepted, and written back to the run directory's copy.
    let embedded = std::fs::read_to_string(examples().join("smollm2-arith-star.toml")).expect("example");
    let config = RunConfig::parse(&embedded.replacen("[model]\n", "[model]\ncalculator = true\n", 1), Path::new("x"))
        .expect("embedded calculator");
    assert!(config.model.calculator());
    assert!(RunConfig::parse(&config.to_toml(), Path::new("roundtrip")).expect("roundtrip").model.calculator());
    assert!(!RunConfig::load(&examples().join("smollm2-arith-star.toml")).expect("example").model.calculator());
}

#[test]
fn practice_settings_are_checked_and_written_back_only_when_on() {
    let config = with_tables("[practice]\nexamples = 300\n").expect("practice");
    assert_eq!((config.practice.examples, config.practice.equations_per_example), (300, 12));
    let written = config.to_toml();
    assert!(written.contains("[practice]"), "{written}");
    assert_eq!(RunConfig::parse(&written, Path::new("roundtrip")).expect("roundtrip"), config);
    let off = with_tables("").expect("no practice");
    assert!(!off.to_toml().contains("[practice]"), "a config without practice is written as before");
    for (table, key) in [
        ("[practice]\nexamples = 10\nequations-per-example = 0\n", "practice.equations-per-example"),
        ("[practice]\nequations-per-example = 65\n", "practice.equations-per-example"),
        ("[practice]\nexamples = -1\n", "examples"),
        ("[practice]\nlines = 3\n", "lines"),
    ] {
        let err = with_tables(table).expect_err(table);
        assert!(err.starts_with("my.toml") && err.contains(key), "{table}: {err}");
    }
}
