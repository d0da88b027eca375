//! The loop end to end on a fake engine whose skill is a plain function of its training data, so the
//! loop's own logic (selection, hint stripping, resume, reproducibility) is tested without candle.

use std::path::{Path, PathBuf};

use flywheel_core::{
    Checkpoint, Completion, CoreError, FinishReason, GenerationRequest, Generator, NullReporter, Reporter,
    SamplingParams, TrainExample, TrainSummary, Trainer, TrainingParams,
};
use flywheel_loop::rundir::RunDir;
use flywheel_loop::tasks::addition::scratchpad;
use flywheel_loop::{Engine, RunConfig, Runner, Task};

/// Solves an n-digit problem with probability `skill[n]`; a hint adds 0.6. Training sets
/// `skill[n] = examples of n digits / 40`, capped at 1.
#[derive(Debug, Clone, Default)]
struct FakeModel {
    skill: Vec<f64>,
}

fn hash(parts: &[u64]) -> u64 {
    parts.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, p| (h ^ p).wrapping_mul(0x100_0000_01b3))
}

impl Generator for FakeModel {
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        _: &dyn Reporter,
    ) -> flywheel_core::Result<Vec<Vec<Completion>>> {
        Ok(requests
            .iter()
            .map(|r| {
                let (question, hint) =
                    r.prompt.trim_end().split_once('|').map_or((r.prompt.trim_end(), false), |(q, _)| (q, true));
                let (a, b) = question.split_once('+').expect("a+b");
                let (a, b): (u64, u64) = (a.parse().expect("a"), b.parse().expect("b"));
                let digits = a.to_string().len();
                let p = self.skill.get(digits).copied().unwrap_or(0.0) + if hint { 0.6 } else { 0.0 };
                (0..r.n)
                    .map(|i| {
                        let draw = (hash(&[params.seed, a, b, i as u64]) % 1000) as f64 / 1000.0;
                        let right = if params.temperature == 0.0 { p >= 0.5 } else { draw < p };
                        let text = if right { scratchpad(a, b) } else { scratchpad(a, b + 1) };
                        Completion { tokens: text.len(), text, finish: FinishReason::Stop }
                    })
                    .collect()
            })
            .collect())
    }
}

impl Trainer for FakeModel {
    fn train(
        &mut self,
        examples: &[TrainExample],
        params: &TrainingParams,
        _: &dyn Reporter,
    ) -> flywheel_core::Result<TrainSummary> {
        let mut counts = [0usize; 8];
        // The seed set also shows hinted prompts (so the base learns to use a hint); they teach no skill here.
        for e in examples.iter().filter(|e| !e.messages[0].content.contains('|')) {
            let digits = e.messages[0].content.split('+').next().expect("a").len();
            counts[digits] += 1;
        }
        self.skill = counts.iter().map(|&c| (c as f64 / 40.0).min(1.0)).collect();
        Ok(TrainSummary { steps: params.steps, first_loss: 1.0, last_loss: 0.5, target_tokens: 10, seconds: 0.01 })
    }
}

impl Checkpoint for FakeModel {
    fn save(&self, dir: &Path) -> flywheel_core::Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| CoreError::Io { path: dir.to_owned(), source })?;
        let path = dir.join("skill.json");
        std::fs::write(&path, serde_json::to_vec(&self.skill).expect("json"))
            .map_err(|source| CoreError::Io { path, source })
    }
}

/// Fails its `fail_at`-th training call, like a run killed during training.
#[derive(Default)]
struct FakeEngine {
    trainings: usize,
    fail_at: Option<usize>,
}

struct FailingModel<'a> {
    inner: FakeModel,
    fail: bool,
    _engine: std::marker::PhantomData<&'a ()>,
}

impl Generator for FailingModel<'_> {
    fn generate(
        &mut self,
        r: &[GenerationRequest],
        p: &SamplingParams,
        rep: &dyn Reporter,
    ) -> flywheel_core::Result<Vec<Vec<Completion>>> {
        self.inner.generate(r, p, rep)
    }
}

impl Trainer for FailingModel<'_> {
    fn train(
        &mut self,
        e: &[TrainExample],
        p: &TrainingParams,
        rep: &dyn Reporter,
    ) -> flywheel_core::Result<TrainSummary> {
        if self.fail {
            return Err(CoreError::Training("killed".into()));
        }
        self.inner.train(e, p, rep)
    }
}

impl Checkpoint for FailingModel<'_> {
    fn save(&self, dir: &Path) -> flywheel_core::Result<()> {
        self.inner.save(dir)
    }
}

impl Engine for FakeEngine {
    type Model = FailingModel<'static>;

    fn fresh(&mut self, _: &RunConfig, _: &dyn Task, _: u64) -> flywheel_loop::Result<Self::Model> {
        Ok(self.wrap(FakeModel::default()))
    }

    fn load(&mut self, dir: &Path) -> flywheel_loop::Result<Self::Model> {
        let skill = serde_json::from_slice(&std::fs::read(dir.join("skill.json")).expect("checkpoint")).expect("json");
        Ok(self.wrap(FakeModel { skill }))
    }
}

impl FakeEngine {
    fn wrap(&mut self, inner: FakeModel) -> FailingModel<'static> {
        // Every model may train; count trainings when they are handed out for the base and each iteration.
        self.trainings += 1;
        let fail = self.fail_at.is_some_and(|n| self.trainings == n);
        FailingModel { inner, fail, _engine: std::marker::PhantomData }
    }
}

const CONFIG: &str = r#"
name = "fake"
seed = 3
iterations = 3

[task]
type = "addition"
max-digits = 3
seed-examples = [40, 40, 8]
train-per-length = 60
eval-per-length = 20

[model]
type = "embedded"
max-batch = 64
[model.architecture]
hidden-size = 8
intermediate-size = 16
num-hidden-layers = 1
num-attention-heads = 2
num-key-value-heads = 2
max-position-embeddings = 64
[model.base-training]
steps = 10
batch-size = 4
learning-rate = 0.001

[strategy]
type = "star"
samples-per-problem = 4
temperature = 0.8
max-new-tokens = 64
rationalization = true

[training]
steps = 10
batch-size = 4
learning-rate = 0.001
"#;

fn config() -> RunConfig {
    RunConfig::parse(CONFIG, Path::new("fake.toml")).expect("config")
}

fn run(root: &Path, engine: FakeEngine) -> flywheel_loop::Result<()> {
    let dir = if root.join("state.json").exists() { RunDir::open(root)? } else { RunDir::create(root, &config())? };
    Runner::new(engine, dir, &NullReporter)?.run()
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn accuracy(root: &Path, k: usize) -> f64 {
    let v: serde_json::Value =
        serde_json::from_slice(&read(root.join(format!("iter-{k:04}/eval.json")))).expect("json");
    v["accuracy"].as_f64().expect("accuracy")
}

#[test]
fn accuracy_rises_and_rationalized_examples_are_saved_without_the_hint() {
    let tmp = tempfile::tempdir().expect("tmp");
    run(tmp.path(), FakeEngine::default()).expect("run");
    assert!(
        accuracy(tmp.path(), 3) > accuracy(tmp.path(), 0),
        "{} -> {}",
        accuracy(tmp.path(), 0),
        accuracy(tmp.path(), 3)
    );

    let samples = String::from_utf8(read(tmp.path().join("iter-0001/samples.jsonl"))).expect("utf8");
    let rationalized: Vec<serde_json::Value> = samples
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|v| v["rationalized"] == true)
        .collect();
    assert!(!rationalized.is_empty(), "the fake model leaves 3-digit problems unsolved, so some are rationalized");
    assert!(rationalized.iter().all(|v| v["prompt"].as_str().expect("prompt").contains('|')));
    let train = String::from_utf8(read(tmp.path().join("iter-0001/train.jsonl"))).expect("utf8");
    assert!(!train.contains('|'), "a training prompt holds the hint");
    // Every rationalized, correct sample became a training example with the plain prompt.
    for v in rationalized.iter().filter(|v| v["correct"] == true) {
        let plain = v["prompt"].as_str().expect("prompt").split('|').next().expect("q").to_owned() + "\\n";
        assert!(train.contains(&format!("\"content\":\"{plain}\"")), "{plain} not trained on");
    }
}

#[test]
fn a_run_stopped_mid_iteration_and_resumed_writes_the_same_files() {
    let whole = tempfile::tempdir().expect("tmp");
    run(whole.path(), FakeEngine::default()).expect("uninterrupted run");

    let stopped = tempfile::tempdir().expect("tmp");
    // Model hand-outs: base (1), iteration 1 load + base load (2, 3), iteration 2 (4, 5): fail in iteration 2.
    let err = run(stopped.path(), FakeEngine { trainings: 0, fail_at: Some(5) }).expect_err("stopped");
    assert!(err.to_string().contains("killed"), "{err}");
    assert!(stopped.path().join("iter-0002/samples.jsonl").exists(), "iteration 2 was under way");
    run(stopped.path(), FakeEngine::default()).expect("resumed");

    for k in 0..=3 {
        for file in ["train.jsonl", "eval.json", "samples.jsonl"] {
            let rel = format!("iter-{k:04}/{file}");
            if k == 0 && file == "samples.jsonl" {
                continue;
            }
            assert_eq!(read(whole.path().join(&rel)), read(stopped.path().join(&rel)), "{rel} differs");
        }
    }
    let events = |root: &Path| String::from_utf8(read(root.join("metrics.jsonl"))).expect("utf8").lines().count();
    assert_eq!(events(whole.path()), events(stopped.path()), "metrics lost or repeated");
}

#[test]
fn a_changed_config_is_refused_on_resume() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = run(tmp.path(), FakeEngine { trainings: 0, fail_at: Some(3) });
    let path = tmp.path().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config").replace("seed = 3", "seed = 4");
    std::fs::write(&path, text).expect("write");
    let err = RunDir::open(tmp.path()).expect_err("changed config");
    assert!(err.to_string().contains("config changed"), "{err}");
}

#[test]
fn a_new_run_refuses_an_existing_run_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    RunDir::create(tmp.path(), &config()).expect("first");
    let err = RunDir::create(tmp.path(), &config()).expect_err("second");
    assert!(err.to_string().contains("flywheel resume"), "{err}");
}

#[test]
fn a_finished_run_extended_equals_a_longer_run() {
    // Three iterations, then extended to four, against four from the start: same files.
    let short = tempfile::tempdir().expect("tmp");
    run(short.path(), FakeEngine::default()).expect("three iterations");
    assert!(!short.path().join("iter-0004").exists());
    let mut dir = RunDir::open(short.path()).expect("open");
    let err = dir.extend_iterations(2).expect_err("lowering is refused");
    assert!(err.to_string().contains("only raise"), "{err}");
    dir.extend_iterations(4).expect("raise");
    Runner::new(FakeEngine::default(), dir, &NullReporter).expect("runner").run().expect("fourth iteration");
    RunDir::open(short.path()).expect("the rewritten config matches its hash");

    let long = tempfile::tempdir().expect("tmp");
    let mut four = config();
    four.iterations = 4;
    let dir = RunDir::create(long.path(), &four).expect("create");
    Runner::new(FakeEngine::default(), dir, &NullReporter).expect("runner").run().expect("four iterations");
    for file in ["iter-0004/train.jsonl", "iter-0004/samples.jsonl", "iter-0004/eval.json", "config.toml"] {
        assert_eq!(read(short.path().join(file)), read(long.path().join(file)), "{file} differs");
    }
}
