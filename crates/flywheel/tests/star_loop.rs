//! A miniature STaR run through the binary, as a user runs it: a tiny model, few problems, two
//! iterations. Held-out accuracy after STaR must beat the base model's; rationalized examples must
//! be saved without their hint; a killed run must resume to the same files.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// The runs use both cores (threads = 2); run them one at a time rather than starving each other.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

const CONFIG: &str = r#"
name = "mini"
seed = 5
iterations = 2
threads = 2

[task]
type = "addition"
max-digits = 3
seed-examples = [100, 400, 4]
train-per-length = 150
eval-per-length = 40

[model]
type = "embedded"
max-batch = 256
[model.architecture]
hidden-size = 48
intermediate-size = 192
num-hidden-layers = 3
num-attention-heads = 4
num-key-value-heads = 4
max-position-embeddings = 64
[model.base-training]
steps = 500
batch-size = 32
learning-rate = 0.004
warmup-steps = 30

[strategy]
type = "star"
samples-per-problem = 4
temperature = 0.8
max-new-tokens = 40
rationalization = true

[training]
steps = 350
batch-size = 32
learning-rate = 0.004
warmup-steps = 30

[eval]
max-new-tokens = 40
"#;

fn flywheel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .output()
        .expect("run flywheel")
}

fn accuracy(run: &Path, k: usize) -> f64 {
    let text = std::fs::read(run.join(format!("iter-{k:04}/eval.json"))).expect("eval.json");
    let v: serde_json::Value = serde_json::from_slice(&text).expect("json");
    v["accuracy"].as_f64().expect("accuracy")
}

#[test]
fn star_raises_held_out_accuracy_and_keeps_hints_out_of_training_data() {
    let _serial = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("mini.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let run = tmp.path().join("run");
    let out = flywheel(&["run", config.to_str().expect("utf8"), "--run-dir", run.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let (before, after) = (accuracy(&run, 0), accuracy(&run, 2));
    assert!(after > before, "held-out accuracy did not rise: {before} -> {after}\n{stderr}");

    // The report prints one row per iteration on stdout, then what each iteration drew and kept,
    // then the quality of each iteration's samples.
    let table = String::from_utf8_lossy(&out.stdout);
    let tables: Vec<&str> = table.split("\n\n").collect();
    let [accuracy_table, data_table, quality_table] = tables[..] else { panic!("three tables: {table}") };
    assert_eq!(accuracy_table.lines().count(), 4, "{table}");
    assert!(data_table.starts_with("iter    drawn") && data_table.lines().count() == 4, "{table}");
    assert!(quality_table.starts_with("iter  dist-1") && quality_table.lines().count() >= 4, "{table}");
    for k in 0..=2 {
        assert!(run.join(format!("iter-{k:04}/quality.json")).is_file(), "iteration {k}: no quality.json");
    }
    let html = tmp.path().join("report.html");
    let report = flywheel(&["report", run.to_str().expect("utf8"), "--html", html.to_str().expect("utf8")]);
    assert_eq!(String::from_utf8_lossy(&report.stdout), table);
    let page = std::fs::read_to_string(&html).expect("the HTML report");
    assert!(page.starts_with("<!DOCTYPE html>") && page.matches("<svg").count() >= 10, "{page}");
    assert!(page.contains("Held-out accuracy") && page.contains("distinct-2"));
    // Self-contained: nothing is fetched (the SVG namespace is a name, not a request).
    assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("<link"));

    for k in 1..=2 {
        let train = std::fs::read_to_string(run.join(format!("iter-{k:04}/train.jsonl"))).expect("train");
        assert!(!train.is_empty() && !train.contains('|'), "iteration {k}: hint in a training prompt");
        for line in train.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            assert_eq!(v["messages"][0]["role"], "user");
            assert_eq!(v["messages"][1]["role"], "assistant");
        }
    }
    let samples = std::fs::read_to_string(run.join("iter-0001/samples.jsonl")).expect("samples");
    let first: serde_json::Value = serde_json::from_str(samples.lines().next().expect("a sample")).expect("json");
    for key in ["problem_id", "prompt", "completion", "extracted", "correct", "rationalized"] {
        assert!(first.get(key).is_some(), "samples.jsonl lacks {key}: {first}");
    }

    // Resume after the last iteration has nothing to do, and a changed config is refused.
    let again = flywheel(&["resume", run.to_str().expect("utf8")]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let cfg = run.join("config.toml");
    let edited = std::fs::read_to_string(&cfg).expect("config").replace("seed = 5", "seed = 6");
    std::fs::write(&cfg, edited).expect("write");
    let refused = flywheel(&["resume", run.to_str().expect("utf8")]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("changed since the run started in seed"), "{stderr}");
}

/// The miniature config, cut down further: only the files matter here, not the accuracy.
fn quick_config() -> String {
    CONFIG
        .replace("steps = 500", "steps = 120")
        .replace("steps = 350", "steps = 80")
        .replace("train-per-length = 150", "train-per-length = 60")
}

#[test]
fn a_run_killed_mid_iteration_resumes_to_the_same_files() {
    let _serial = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("quick.toml");
    std::fs::write(&config, quick_config()).expect("config");
    let config = config.to_str().expect("utf8");

    let whole = tmp.path().join("whole");
    let out = flywheel(&["run", config, "--run-dir", whole.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Start the same run and kill it (SIGKILL) once iteration 2 has written its samples.
    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["run", config, "--run-dir", killed.to_str().expect("utf8")])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let marker = killed.join("iter-0002/samples.jsonl");
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before it could be killed");
        assert!(started.elapsed().as_secs() < 300, "iteration 2 never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert!(!killed.join("iter-0002/eval.json").exists(), "killed too late to test anything");

    let resumed = flywheel(&["resume", killed.to_str().expect("utf8")]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    for k in 0..=2 {
        for file in ["train.jsonl", "eval.json", "samples.jsonl"] {
            let rel = format!("iter-{k:04}/{file}");
            if k == 0 && file == "samples.jsonl" {
                continue;
            }
            let (a, b) = (std::fs::read(whole.join(&rel)), std::fs::read(killed.join(&rel)));
            assert!(a.is_ok() && a.as_ref().ok() == b.as_ref().ok(), "{rel} differs after kill and resume");
        }
    }
}

/// Self-play and ReST-EM through the binary on the quick config: the judge's role is taught by the
/// seed set, its verdicts are read and measured, and both strategies write their files.
#[test]
fn self_play_and_rest_em_run_end_to_end() {
    let _serial = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().expect("tmp");
    let strategy_start = quick_config().find("[strategy]").expect("[strategy]");
    let strategy_end = quick_config().find("[training]").expect("[training]");
    let with_strategy = |strategy: &str| {
        let text = quick_config();
        format!("{}{strategy}\n{}", &text[..strategy_start], &text[strategy_end..])
            .replace("eval-per-length = 40", "eval-per-length = 40\nseed-judge-fraction = 0.5")
            .replace("iterations = 2", "iterations = 1")
    };
    for (name, strategy) in [
        (
            "self-play",
            "[strategy]\ntype = \"self-play\"\nsamples-per-problem = 2\ntemperature = 0.8\nmax-new-tokens = 40\n\
             judge-max-new-tokens = 12\nrevisions = 1\n",
        ),
        (
            "rest-em",
            "[strategy]\ntype = \"rest-em\"\nsamples-per-problem = 2\ntemperature = 0.8\nmax-new-tokens = 40\n",
        ),
    ] {
        let config = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&config, with_strategy(strategy)).expect("config");
        let run = tmp.path().join(name);
        let out = flywheel(&["run", config.to_str().expect("utf8"), "--run-dir", run.to_str().expect("utf8")]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
        let sample: serde_json::Value = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .find(|e| e["event"] == "sample")
            .expect("a sample event");
        assert_eq!(sample["strategy"], name);
        assert!(run.join("iter-0001/pairs.jsonl").exists() && run.join("iter-0001/eval.json").exists());
        if name == "self-play" {
            let judge = &sample["judge"];
            let judged: u64 = [
                "true_positive",
                "false_positive",
                "true_negative",
                "false_negative",
                "unparsed_right",
                "unparsed_wrong",
            ]
            .iter()
            .map(|k| judge[k].as_u64().expect("count"))
            .sum();
            assert!(judged >= sample["samples"].as_u64().expect("samples"), "every solution is judged: {sample}");
            // The judge was taught its verdicts by the seed set: it gives them.
            let parsed = judged - judge["unparsed_right"].as_u64().unwrap() - judge["unparsed_wrong"].as_u64().unwrap();
            assert!(parsed * 2 > judged, "most replies are a verdict: {sample}");
        }
    }
}
