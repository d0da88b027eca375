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
        "smollm2-gsm8k-star.toml",
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
    let text = text.replace("seed-examples = [100, 1000, 80, 80, 80]", "seed-examples = [100, 1000]");
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
