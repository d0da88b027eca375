//! Runs whose samples come from an OpenAI-compatible server (a fake one on loopback, with an API
//! key), through the binary: the hook points the server at each checkpoint, every request goes to
//! the server with the key, and the key shows in none of the run directory's files and none of the
//! log lines; training can go through an external command (`flywheel train` itself).

#[path = "../../flywheel-remote/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use flywheel_loop::tasks::addition::scratchpad;
use support::{fake_server, ServerOptions};

const KEY: &str = "sk-flywheel-test-5f3c9a";

fn config(base: &str, trainer: &str) -> String {
    format!(
        r#"
name = "remote"
seed = 3
iterations = 2
threads = 1

[task]
type = "addition"
max-digits = 2
seed-examples = [20, 20]
train-per-length = 10
eval-per-length = 5

[model]
type = "embedded"
max-batch = 64
[model.architecture]
hidden-size = 16
intermediate-size = 32
num-hidden-layers = 1
num-attention-heads = 2
num-key-value-heads = 2
max-position-embeddings = 48
[model.base-training]
steps = 5
batch-size = 8
learning-rate = 0.004

[generator]
type = "openai"
base-urls = ["{base}"]
model = "served"
api = "completions"
api-key-env = "FLYWHEEL_TEST_API_KEY"
on-checkpoint = ["touch", "{{checkpoint}}/served-by-hook"]
max-retries = 2

[strategy]
type = "star"
samples-per-problem = 2
temperature = 0.8
max-new-tokens = 20
rationalization = true

[training]
steps = 5
batch-size = 8
learning-rate = 0.004

[eval]
max-new-tokens = 20
{trainer}"#
    )
}

fn every_file(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            every_file(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn a_run_samples_through_a_server_and_never_writes_or_logs_its_key() {
    let server = fake_server(ServerOptions { key: Some(KEY.into()), ..ServerOptions::default() });
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("remote.toml");
    std::fs::write(&config_path, config(&server.base(), "")).unwrap();
    let run_dir = dir.path().join("run");
    let run = |key: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flywheel"));
        command.args(["run", config_path.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()]);
        command.env("RUST_LOG", "trace").env_remove("FLYWHEEL_TEST_API_KEY");
        if let Some(key) = key {
            command.env("FLYWHEEL_TEST_API_KEY", key);
        }
        command.output().unwrap()
    };

    // Without the key, the run stops before any work, naming the variable.
    let out = run(None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FLYWHEEL_TEST_API_KEY is not set"), "{stderr}");
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);

    let out = run(Some(KEY));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stderr}");
    // Every checkpoint was served by the hook before it was sampled, and sampled remotely.
    for k in 0..=2 {
        let iter = run_dir.join(format!("iter-{k:04}"));
        assert!(iter.join("model/served-by-hook").is_file(), "iteration {k}'s checkpoint was not served");
        let journal = std::fs::read_to_string(iter.join("remote-samples.jsonl")).unwrap();
        assert!(journal.lines().count() >= 10, "iteration {k}: {journal}");
    }
    let bodies = server.bodies.lock().unwrap();
    assert!(bodies.len() >= 30 && bodies.iter().all(|b| b["model"] == "served"), "{} requests", bodies.len());
    // The key is in no file of the run and no line of the log.
    for text in [&stderr, &stdout] {
        assert!(!text.contains(KEY), "the key was logged");
    }
    let mut files = Vec::new();
    every_file(&run_dir, &mut files);
    assert!(files.len() > 20);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()), "the key is in {}", file.display());
    }
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config.contains("api-key-env = \"FLYWHEEL_TEST_API_KEY\""), "{config}");
}

#[test]
fn a_run_generates_through_a_server_and_trains_through_flywheel_train_as_a_command() {
    // The server solves every other sample of `a+b` (hinted or not) right.
    let solver: support::Solver = Arc::new(|prompt: &str, i: usize| {
        let question = prompt.split(['|', '\n']).next().unwrap_or("");
        let Some((a, b)) = question.split_once('+') else { return "?".into() };
        let (a, b): (u64, u64) = (a.trim().parse().unwrap_or(0), b.trim().parse().unwrap_or(0));
        if i.is_multiple_of(2) {
            scratchpad(a, b)
        } else {
            scratchpad(a, b + 1)
        }
    });
    let server = fake_server(ServerOptions { solver: Some(solver), key: Some(KEY.into()), ..ServerOptions::default() });
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("remote.toml");
    let flywheel = env!("CARGO_BIN_EXE_flywheel");
    let config_arg = config_path.display().to_string();
    let trainer = format!(
        "\n[trainer]\ntype = \"command\"\ncommand = [\"{flywheel}\", \"train\", \"{config_arg}\", \"--data\", \"{{data}}\", \
         \"--start\", \"{{start}}\", \"--out\", \"{{out}}\", \"--steps\", \"{{steps}}\", \"--seed\", \"{{seed}}\"]\n"
    );
    std::fs::write(&config_path, config(&server.base(), &trainer)).unwrap();
    let run_dir = dir.path().join("run");
    let out = Command::new(flywheel)
        .args(["run", &config_arg, "--run-dir", run_dir.to_str().unwrap()])
        .env("FLYWHEEL_TEST_API_KEY", KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for k in 1..=2 {
        let iter = run_dir.join(format!("iter-{k:04}"));
        let log = std::fs::read_to_string(iter.join("trainer.log")).unwrap();
        assert!(log.starts_with(&format!("$ {flywheel} train")), "{log}");
        // [training] steps = 5, grown by the default step-growth of 0.25 per iteration.
        let steps = [5, 6][k - 1];
        assert!(log.contains(&format!("--steps {steps}")), "the config's steps are passed: {log}");
        assert!(log.trim_end().ends_with("# exit status: 0"), "{log}");
        // The command trained on what the iteration kept, and wrote the model the next one serves.
        let kept = std::fs::read_to_string(iter.join("trainer/set-1.jsonl")).unwrap();
        assert_eq!(kept, std::fs::read_to_string(iter.join("train.jsonl")).unwrap());
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(iter.join("model/train-summary.json")).unwrap()).unwrap();
        assert_eq!(summary["steps"], steps);
        assert!(summary["first_loss"].as_f64().unwrap() > 0.0, "{summary}");
        assert!(iter.join("model/model.safetensors").is_file());
        assert!(iter.join("model/served-by-hook").is_file());
    }
    let events = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let trained = events.lines().filter(|l| l.contains("\"event\":\"train\"")).count();
    assert!(trained >= 2, "{events}");
}
