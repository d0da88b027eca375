//! The loop end to end on a fake engine whose skill is a plain function of its training data, so the
//! loop's own logic (selection, hint stripping, resume, reproducibility) is tested without candle.

use std::path::{Path, PathBuf};

use flywheel_core::{
    Checkpoint, Completion, CoreError, FinishReason, GenerationRequest, Generator, LogLikelihood, NullReporter,
    Reporter, SamplingParams, TrainExample, TrainSummary, Trainer, TrainingParams,
};
use flywheel_loop::practice;
use flywheel_loop::rundir::RunDir;
use flywheel_loop::tasks::addition::scratchpad;
use flywheel_loop::{GeneratorBackend, Outcome, Phase, RunConfig, Runner, Task, TrainerBackend};

/// Solves an n-digit problem with probability `skill[n]`; a hint adds 0.6. Training sets
/// `skill[n] = examples of n digits / 40`, capped at 1.
#[derive(Debug, Clone, Default)]
struct FakeModel {
    skill: Vec<f64>,
    /// Also write the sum as an equation (`12 + 345 = 357`) before the scratchpad (never saved).
    equations: bool,
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
                if let Some(judged) = r.prompt.strip_suffix("\n?\n") {
                    return (0..r.n).map(|i| judge(judged, params.seed, i)).collect();
                }
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
                        let mut text = if right { scratchpad(a, b) } else { scratchpad(a, b + 1) };
                        if self.equations {
                            let written = if right { a + b } else { a + b + 1 };
                            text = format!("{a} + {b} = {written}\n{text}");
                        }
                        Completion { tokens: text.len(), text, finish: FinishReason::Stop }
                    })
                    .collect()
            })
            .collect())
    }

    /// Every target character costs `1.5 - mean skill` nats (its end of sequence too); only the
    /// task's own scratchpads of held-out-sized problems may be scored.
    fn log_likelihood(&mut self, examples: &[TrainExample]) -> flywheel_core::Result<Option<LogLikelihood>> {
        let tokens: usize = examples
            .iter()
            .map(|e| {
                let (a, b) = e.messages[0].content.trim_end().split_once('+').expect("a+b");
                let reference = scratchpad(a.parse().expect("a"), b.parse().expect("b"));
                assert_eq!(e.messages[1].content, reference, "a scored text is the problem's reference scratchpad");
                reference.len() + 1
            })
            .sum();
        Ok(Some(LogLikelihood { nll: tokens as f64 * fake_nll(&self.skill), tokens: tokens as u64 }))
    }
}

/// The fake model's loss per token: lower the more it can do.
fn fake_nll(skill: &[f64]) -> f64 {
    1.5 - skill.iter().sum::<f64>() / skill.len().max(1) as f64
}

/// The fake model's judgement of `judged` (question line, then scratchpad): right scratchpads are
/// called CORRECT; wrong ones INCORRECT, but CORRECT three times in ten.
fn judge(judged: &str, seed: u64, i: usize) -> Completion {
    let (question, pad) = judged.split_once('\n').expect("question line");
    let (a, b) = question.split_once('+').expect("a+b");
    let (a, b): (u64, u64) = (a.parse().expect("a"), b.parse().expect("b"));
    let right = pad.ends_with(&format!("A:{}", a + b));
    let fooled = hash(&[seed, a, b, i as u64, 7]) % 10 < 3;
    let text = if right || fooled { "CORRECT" } else { "INCORRECT" }.to_owned();
    Completion { tokens: 1, text, finish: FinishReason::Stop }
}

impl Trainer for FakeModel {
    fn train(
        &mut self,
        examples: &[TrainExample],
        params: &TrainingParams,
        _: &dyn Reporter,
    ) -> flywheel_core::Result<TrainSummary> {
        let mut counts = [0usize; 8];
        // The seed set also shows hinted prompts (so the base learns to use a hint) and judgements;
        // they teach no skill here.
        // Practice examples teach it nothing either.
        let plain = |e: &&TrainExample| !e.messages[0].content.contains(['|', '?']) && !practice::is_practice(e);
        for e in examples.iter().filter(plain) {
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

/// Both seams over [`FakeModel`] checkpoints; fails its `fail_at`-th training call (the base
/// model's is the first), like a run killed during training.
#[derive(Default)]
struct FakeEngine {
    trainings: usize,
    fail_at: Option<usize>,
    /// The models it opens also write their sum as an equation before the scratchpad.
    equations: bool,
}

impl FakeEngine {
    fn load(dir: &Path) -> FakeModel {
        let skill = serde_json::from_slice(&read(dir.join("skill.json"))).expect("json");
        FakeModel { skill, equations: false }
    }

    fn count_training(&mut self) -> flywheel_core::Result<()> {
        self.trainings += 1;
        match self.fail_at {
            Some(n) if n == self.trainings => Err(CoreError::Training("killed".into())),
            _ => Ok(()),
        }
    }
}

impl GeneratorBackend for FakeEngine {
    fn open(&mut self, checkpoint: &Path) -> flywheel_loop::Result<Box<dyn Generator>> {
        Ok(Box::new(FakeModel { equations: self.equations, ..Self::load(checkpoint) }))
    }
}

impl TrainerBackend for FakeEngine {
    fn init(
        &mut self,
        _: &RunConfig,
        _: &dyn Task,
        _: u64,
        seed_set: Option<Phase<'_>>,
        out: &Path,
        reporter: &dyn Reporter,
    ) -> flywheel_loop::Result<Option<TrainSummary>> {
        let mut model = FakeModel::default();
        let summary = match seed_set {
            Some(phase) => {
                self.count_training()?;
                Some(model.train(phase.examples, &phase.params, reporter)?)
            }
            None => None,
        };
        model.save(out)?;
        Ok(summary)
    }

    fn train(
        &mut self,
        start: &Path,
        phases: &[Phase<'_>],
        out: &Path,
        reporter: &dyn Reporter,
    ) -> flywheel_loop::Result<Vec<TrainSummary>> {
        self.count_training()?;
        let mut model = Self::load(start);
        let mut summaries = Vec::new();
        for phase in phases {
            summaries.push(model.train(phase.examples, &phase.params, reporter)?);
        }
        model.save(out)?;
        Ok(summaries)
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
    run_config(root, engine, &config()).map(drop)
}

fn run_config(root: &Path, engine: FakeEngine, config: &RunConfig) -> flywheel_loop::Result<Outcome> {
    let dir = if root.join("state.json").exists() { RunDir::open(root)? } else { RunDir::create(root, config)? };
    Runner::new(FakeEngine::default(), engine, dir, &NullReporter)?.run()
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
    assert_quality(tmp.path(), 3);

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
    // Trainings: base (1), iteration 1 (2), iteration 2 (3): fail in iteration 2.
    let err = run(stopped.path(), FakeEngine { fail_at: Some(3), ..FakeEngine::default() }).expect_err("stopped");
    assert!(err.to_string().contains("killed"), "{err}");
    assert!(stopped.path().join("iter-0002/samples.jsonl").exists(), "iteration 2 was under way");
    run(stopped.path(), FakeEngine::default()).expect("resumed");

    for k in 0..=3 {
        for file in ["train.jsonl", "eval.json", "samples.jsonl", "quality.json"] {
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
    let _ = run(tmp.path(), FakeEngine { fail_at: Some(3), ..FakeEngine::default() });
    let path = tmp.path().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config").replace("seed = 3", "seed = 4");
    std::fs::write(&path, text).expect("write");
    let err = RunDir::open(tmp.path()).expect_err("changed config");
    assert!(err.to_string().contains("seed") && err.to_string().contains("iteration 1 already finished"), "{err}");
}

#[test]
fn a_new_run_refuses_an_existing_run_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = run(tmp.path(), FakeEngine { fail_at: Some(2), ..FakeEngine::default() });
    let err = RunDir::create(tmp.path(), &config()).expect_err("second");
    assert!(err.to_string().contains("flywheel resume"), "{err}");
}

/// Every file and its bytes under `root`, for before/after comparisons.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), read(path)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_run_never_starts_in_a_folder_of_other_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(tmp.path().join("config.toml"), "the user's own config").expect("write");
    std::fs::create_dir(tmp.path().join("iter-0000")).expect("mkdir");
    std::fs::write(tmp.path().join("iter-0000/notes.txt"), "keep me").expect("write");
    let before = snapshot(tmp.path());
    let err = RunDir::create(tmp.path(), &config()).expect_err("not empty");
    assert!(err.to_string().contains("new or empty directory"), "{err}");
    assert!(err.to_string().contains("config.toml"), "names what is there: {err}");
    let after: Vec<_> = snapshot(tmp.path()).into_iter().filter(|(p, _)| !p.ends_with(".lock")).collect();
    assert_eq!(before, after, "a refused run touched the user's files");
}

#[test]
fn atomic_writes_leave_other_files_of_the_folder_alone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let user = tmp.path().join("results.tmp");
    std::fs::write(&user, "the user's scratch").expect("write");
    flywheel_loop::rundir::write_atomic(&tmp.path().join("results.jsonl"), b"{}\n").expect("write");
    assert_eq!(read(user), b"the user's scratch");
    assert_eq!(read(tmp.path().join("results.jsonl")), b"{}\n");
    let names: Vec<_> = std::fs::read_dir(tmp.path()).expect("ls").flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 2, "no scratch file left: {names:?}");
}

#[test]
fn an_output_path_that_cannot_be_written_fails_before_any_work() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = tmp.path().join("no/such/dir/out.jsonl");
    let err = flywheel_loop::rundir::PendingFile::create(&missing).expect_err("missing folder");
    assert!(err.to_string().contains("out.jsonl"), "{err}");
    let err = flywheel_loop::rundir::PendingFile::create(tmp.path()).expect_err("a directory");
    assert!(err.to_string().contains("directory"), "{err}");
}

#[test]
fn a_second_process_on_a_run_directory_is_refused_while_the_first_holds_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = run(tmp.path(), FakeEngine { fail_at: Some(2), ..FakeEngine::default() });
    let first = RunDir::open(tmp.path()).expect("first");
    let err = RunDir::open(tmp.path()).expect_err("second while the first runs");
    assert!(err.to_string().contains("another flywheel process"), "{err}");
    assert!(err.to_string().contains(&std::process::id().to_string()), "names the holder: {err}");
    let err = RunDir::create(tmp.path(), &config()).expect_err("run while the first runs");
    assert!(err.to_string().contains("another flywheel process"), "{err}");
    drop(first);
    RunDir::open(tmp.path()).expect("free again");
}

#[test]
fn a_run_that_failed_before_iteration_zero_finished_starts_again_with_a_fixed_config() {
    let tmp = tempfile::tempdir().expect("tmp");
    // The base model's training fails: nothing was computed.
    let err = run(tmp.path(), FakeEngine { fail_at: Some(1), ..FakeEngine::default() }).expect_err("failed start");
    assert!(err.to_string().contains("killed"), "{err}");
    // `run` may start it again...
    drop(RunDir::create(tmp.path(), &config()).expect("started again"));
    // ...and `resume` accepts any fix of the config, since no iteration finished.
    let path = tmp.path().join("config.toml");
    let text =
        std::fs::read_to_string(&path).expect("config").replace("learning-rate = 0.001", "learning-rate = 0.002");
    std::fs::write(&path, text).expect("write");
    let dir = RunDir::open(tmp.path()).expect("a fix before any iteration finished is accepted");
    assert_eq!(dir.config().training.learning_rate, 0.002);
    Runner::new(FakeEngine::default(), FakeEngine::default(), dir, &NullReporter)
        .expect("runner")
        .run()
        .expect("the run goes on");
    RunDir::open(tmp.path()).expect("the accepted config is the run's now");
}

#[test]
fn after_an_iteration_only_keys_that_change_nothing_computed_may_change() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = run(tmp.path(), FakeEngine { fail_at: Some(3), ..FakeEngine::default() });
    let path = tmp.path().join("config.toml");
    let original = std::fs::read_to_string(&path).expect("config");
    let edit = |from: &str, to: &str| {
        assert!(original.contains(from), "{from}");
        std::fs::write(&path, original.replace(from, to)).expect("write");
    };
    edit("learning-rate = 0.001", "learning-rate = 0.002");
    let err = RunDir::open(tmp.path()).expect_err("the learning rate shaped iteration 1");
    assert!(err.to_string().contains("training.learning-rate"), "{err}");
    assert!(err.to_string().contains("iterations, threads, early-stop"), "says what may change: {err}");
    edit("iterations = 3", "iterations = 1");
    let err = RunDir::open(tmp.path()).expect_err("lowered");
    assert!(err.to_string().contains("only be raised"), "{err}");
    edit("iterations = 3", "iterations = 5");
    let dir = RunDir::open(tmp.path()).expect("raised");
    assert_eq!(dir.config().iterations, 5);
    drop(dir);
    edit("threads = 0", "threads = 2");
    RunDir::open(tmp.path()).expect("threads");
}

#[test]
fn resume_with_more_iterations_changes_nothing_until_the_run_goes_on() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = run(tmp.path(), FakeEngine { fail_at: Some(3), ..FakeEngine::default() });
    let before = snapshot(tmp.path());
    let mut dir = RunDir::open(tmp.path()).expect("open");
    dir.extend_iterations(6).expect("raise");
    drop(dir); // the run could not go on (say the model failed to load)
    let after: Vec<_> = snapshot(tmp.path()).into_iter().filter(|(p, _)| !p.ends_with(".lock")).collect();
    let before: Vec<_> = before.into_iter().filter(|(p, _)| !p.ends_with(".lock")).collect();
    assert_eq!(before, after, "config.toml or state.json rewritten before the run went on");
    RunDir::open(tmp.path()).expect("still the run it was");
}

#[test]
fn a_state_naming_a_missing_iteration_is_refused_as_such() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = run(tmp.path(), FakeEngine { fail_at: Some(3), ..FakeEngine::default() });
    std::fs::remove_dir_all(tmp.path().join("iter-0001")).expect("rm");
    let err = RunDir::open(tmp.path()).expect_err("iteration 1 is gone");
    let msg = err.to_string();
    assert!(msg.contains("state.json") && msg.contains("iteration 1") && msg.contains("does not exist"), "{msg}");
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
    Runner::new(FakeEngine::default(), FakeEngine::default(), dir, &NullReporter)
        .expect("runner")
        .run()
        .expect("fourth iteration");
    RunDir::open(short.path()).expect("the rewritten config matches its hash");

    let long = tempfile::tempdir().expect("tmp");
    let mut four = config();
    four.iterations = 4;
    let dir = RunDir::create(long.path(), &four).expect("create");
    Runner::new(FakeEngine::default(), FakeEngine::default(), dir, &NullReporter)
        .expect("runner")
        .run()
        .expect("four iterations");
    for file in ["iter-0004/train.jsonl", "iter-0004/samples.jsonl", "iter-0004/eval.json", "config.toml"] {
        assert_eq!(read(short.path().join(file)), read(long.path().join(file)), "{file} differs");
    }
}

/// The test config with its `[strategy]` table replaced by `strategy` and `extra` top-level text
/// before the first table.
fn config_with(strategy: &str, extra: &str) -> RunConfig {
    let start = CONFIG.find("[strategy]").expect("[strategy]");
    let end = CONFIG.find("[training]").expect("[training]");
    let text = format!("{extra}{}{strategy}\n{}", &CONFIG[..start], &CONFIG[end..]);
    RunConfig::parse(&text, Path::new("fake.toml")).expect("config")
}

fn events(root: &Path) -> Vec<serde_json::Value> {
    String::from_utf8(read(root.join("metrics.jsonl")))
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn sample_events(root: &Path) -> Vec<serde_json::Value> {
    events(root).into_iter().filter(|e| e["event"] == "sample").collect()
}

/// Every iteration writes `quality.json` (and a `quality` event): the samples' and kept set's
/// metrics over exactly the samples the `sample` event counts, the held-out answers' over every
/// held-out problem, and the accuracy change from the iteration before.
fn assert_quality(root: &Path, iterations: usize) {
    let quality: Vec<serde_json::Value> = events(root).into_iter().filter(|e| e["event"] == "quality").collect();
    assert_eq!(quality.len(), iterations + 1, "one quality event per iteration");
    let samples = sample_events(root);
    for k in 0..=iterations {
        let q: serde_json::Value =
            serde_json::from_slice(&read(root.join(format!("iter-{k:04}/quality.json")))).expect("json");
        assert_eq!(q["iteration"], k);
        assert_eq!(q["heldout"]["completions"].as_u64(), Some(accuracy_n(root, k)));
        let d2 = q["heldout"]["distinct_2"].as_f64().expect("held-out distinct-2");
        assert!((0.0..=1.0).contains(&d2));
        // The perplexity is that of this iteration's model.
        let perplexity = q["perplexity"].as_f64().expect("perplexity on the natural-text set");
        let expected = fake_nll(&FakeEngine::load(&root.join(format!("iter-{k:04}/model"))).skill).exp();
        assert!((perplexity - expected).abs() < 1e-9, "iteration {k}: {perplexity} vs {expected}");
        if k == 0 {
            assert!(q["samples"].is_null() && q["accuracy_change"].is_null());
            continue;
        }
        let s = &samples[k - 1];
        assert_eq!(q["samples"]["completions"], s["samples"], "iteration {k}");
        assert_eq!(q["kept"]["completions"], s["kept"], "iteration {k}");
        let change = q["accuracy_change"].as_f64().expect("a change after iteration 0");
        assert!((change - (accuracy(root, k) - accuracy(root, k - 1))).abs() < 1e-12);
        for key in ["distinct_1", "mattr", "near_duplicate_rate", "self_bleu", "answer_entropy", "repetition"] {
            assert!(q["samples"][key].is_number(), "iteration {k}: {key} missing in {q}");
        }
    }
}

fn accuracy_n(root: &Path, k: usize) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(&read(root.join(format!("iter-{k:04}/eval.json")))).expect("json");
    v["n"].as_u64().expect("n")
}

/// Every strategy's `sample` event carries the common metrics.
fn assert_common_metrics(root: &Path, strategy: &str) {
    assert_quality(root, 3);
    let samples = sample_events(root);
    assert_eq!(samples.len(), 3, "{strategy}: one sample event per iteration");
    for e in &samples {
        assert_eq!(e["strategy"], strategy);
        for key in ["samples", "kept", "mean_reward", "mean_reward_kept", "kept_correct", "pairs", "tokens"] {
            assert!(!e[key].is_null() || key == "kept_correct", "{strategy}: {key} missing in {e}");
        }
        assert!(e["samples"].as_u64().unwrap() >= e["kept"].as_u64().unwrap());
    }
    // Preference pairs are written in TRL's conversational shape.
    let pairs = String::from_utf8(read(root.join("iter-0001/pairs.jsonl"))).expect("utf8");
    let first: serde_json::Value = serde_json::from_str(pairs.lines().next().expect("a pair")).expect("json");
    assert_eq!(first["prompt"][0]["role"], "user");
    assert_eq!(first["chosen"][0]["role"], "assistant");
    assert_eq!(first["rejected"][0]["role"], "assistant");
    assert_ne!(first["chosen"], first["rejected"]);
}

#[test]
fn rest_trains_each_improve_step_on_the_samples_above_its_threshold() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = config_with(
        "[strategy]\ntype = \"rest\"\nsamples-per-problem = 4\ntemperature = 0.8\nmax-new-tokens = 64\n\
         thresholds = [0.0, 1.0]\nmax-per-problem = 2\n",
        "",
    );
    run_config(tmp.path(), FakeEngine::default(), &config).expect("run");
    assert_common_metrics(tmp.path(), "rest");
    let lines = |f: &str| String::from_utf8(read(tmp.path().join(f))).expect("utf8").lines().count();
    // Threshold 0 keeps two distinct samples of (nearly) every problem, threshold 1 only right ones.
    let (first, second) = (lines("iter-0001/train.jsonl"), lines("iter-0001/train-2.jsonl"));
    assert!(first > second && second > 0, "{first} then {second}");
    let trains: Vec<_> =
        events(tmp.path()).into_iter().filter(|e| e["event"] == "train" && e["iteration"] == 1).collect();
    assert_eq!(trains.len(), 2, "one training per Improve step");
    assert_eq!((trains[0]["label"].as_str(), trains[1]["label"].as_str()), (Some("reward >= 0"), Some("reward >= 1")));
    let improve = &sample_events(tmp.path())[0]["improve"];
    assert_eq!(improve[0]["kept"].as_u64(), Some(first as u64));
    assert_eq!(improve[1]["mean_reward"].as_f64(), Some(1.0));
    assert!(accuracy(tmp.path(), 3) > accuracy(tmp.path(), 0));
}

#[test]
fn rest_em_keeps_only_correct_samples_up_to_its_cap() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = config_with(
        "[strategy]\ntype = \"rest-em\"\nsamples-per-problem = 4\ntemperature = 0.8\nmax-new-tokens = 64\n\
         max-per-problem = 2\n",
        "",
    );
    run_config(tmp.path(), FakeEngine::default(), &config).expect("run");
    assert_common_metrics(tmp.path(), "rest-em");
    for e in sample_events(tmp.path()) {
        assert_eq!(e["kept_correct"].as_f64(), Some(1.0), "ReST-EM keeps only correct samples: {e}");
        assert!(e["kept"].as_u64().unwrap() <= 2 * 180);
    }
    let samples = String::from_utf8(read(tmp.path().join("iter-0001/samples.jsonl"))).expect("utf8");
    assert!(!samples.contains('|'), "ReST-EM shows no hint");
    assert!(accuracy(tmp.path(), 3) > accuracy(tmp.path(), 0));
}

#[test]
fn self_play_keeps_what_its_judge_approves_and_measures_the_judge() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = config_with(
        "[strategy]\ntype = \"self-play\"\nsamples-per-problem = 4\ntemperature = 0.8\nmax-new-tokens = 64\n\
         revisions = 2\n",
        "",
    );
    if let flywheel_loop::config::TaskConfig::Addition(task) = &mut config.task {
        task.seed_judge_fraction = 0.5;
    }
    run_config(tmp.path(), FakeEngine::default(), &config).expect("run");
    assert_common_metrics(tmp.path(), "self-play");
    let first = &sample_events(tmp.path())[0];
    // The fake judge calls every right scratchpad CORRECT and 3 in 10 wrong ones too.
    assert_eq!(first["judge"]["false_negative"].as_u64(), Some(0));
    let (tp, fp, tn) = (
        first["judge"]["true_positive"].as_f64().unwrap(),
        first["judge"]["false_positive"].as_f64().unwrap(),
        first["judge"]["true_negative"].as_f64().unwrap(),
    );
    let fooled = fp / (fp + tn);
    assert!((0.2..0.4).contains(&fooled), "fooled {fooled}");
    // So the kept data is not all correct, and the metrics say how much is.
    let kept_correct = first["kept_correct"].as_f64().unwrap();
    assert!(kept_correct < 1.0 && (kept_correct - tp / (tp + fp)).abs() < 0.15, "{kept_correct}");
    assert!(first["revised_problems"].as_u64().unwrap() > 0);
    let samples = String::from_utf8(read(tmp.path().join("iter-0001/samples.jsonl"))).expect("utf8");
    assert!(samples.contains("\"revision\":true"));
    let report = flywheel_loop::report::RunReport::read(tmp.path()).expect("report");
    let table = flywheel_loop::report::render_data(&report);
    assert!(table.contains("judgeP") && table.lines().nth(2).is_some_and(|l| l.contains('%')), "{table}");
}

#[test]
fn early_stopping_ends_a_stalled_run_and_resume_goes_on() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = config_with(
        "[strategy]\ntype = \"star\"\nsamples-per-problem = 4\ntemperature = 0.8\nmax-new-tokens = 64\n\
         rationalization = true\n",
        "",
    );
    config.iterations = 8;
    config.early_stop = Some(flywheel_loop::config::EarlyStopConfig { patience: 1, min_delta: 0.0 });
    let outcome = run_config(tmp.path(), FakeEngine::default(), &config).expect("run");
    let Outcome::StoppedEarly(k) = outcome else {
        panic!("the fake model saturates, yet the run went on: {outcome:?}")
    };
    assert!(k < 8);
    assert!(accuracy(tmp.path(), k) <= accuracy(tmp.path(), k - 1), "it stopped because accuracy did not rise");
    assert!(!tmp.path().join(format!("iter-{:04}", k + 1)).exists());
    let state: serde_json::Value = serde_json::from_slice(&read(tmp.path().join("state.json"))).expect("json");
    assert_eq!(state["stopped_early"].as_u64(), Some(k as u64));
    assert!(events(tmp.path()).iter().any(|e| e["event"] == "stop" && e["iteration"] == k));

    // Resumed, it runs at least one more iteration before the rule may stop it again.
    let outcome = run_config(tmp.path(), FakeEngine::default(), &config).expect("resumed");
    assert!(tmp.path().join(format!("iter-{:04}/eval.json", k + 1)).exists());
    assert_eq!(outcome, Outcome::StoppedEarly(k + 1), "still stalled: stops after one more iteration");
    let state: serde_json::Value = serde_json::from_slice(&read(tmp.path().join("state.json"))).expect("json");
    assert_eq!(state["patience_from"].as_u64(), Some(k as u64));
}

#[test]
fn sampled_evaluation_reports_pass_and_majority_at_k() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = config();
    config.iterations = 1;
    config.eval.samples = 4;
    run_config(tmp.path(), FakeEngine::default(), &config).expect("run");
    // The base model's 3-digit skill is 0.2: greedy never solves those problems, four samples often do,
    // and the majority (the same wrong answer) rarely.
    let eval: serde_json::Value = serde_json::from_slice(&read(tmp.path().join("iter-0000/eval.json"))).expect("json");
    let (greedy, pass, maj) =
        (eval["accuracy"].as_f64().unwrap(), eval["pass_at_k"].as_f64().unwrap(), eval["maj_at_k"].as_f64().unwrap());
    assert_eq!(eval["k"].as_u64(), Some(4));
    assert!(pass > greedy && pass > maj, "greedy {greedy}, pass@4 {pass}, maj@4 {maj}");
    let three_digit = eval["by_bucket"]["3"].as_f64().unwrap();
    assert_eq!(three_digit, 0.0);
    let sampled = String::from_utf8(read(tmp.path().join("iter-0000/eval-sampled.jsonl"))).expect("utf8");
    assert_eq!(sampled.lines().count(), 4 * eval["n"].as_u64().unwrap() as usize);
    let text = String::from_utf8(read(tmp.path().join("iter-0001/eval.json"))).expect("utf8");
    assert!(text.contains("\"pass_at_k\""));
}

#[test]
fn a_context_too_short_for_the_task_is_refused_before_any_work() {
    let text = CONFIG.replace("max-position-embeddings = 64", "max-position-embeddings = 12");
    let config = RunConfig::parse(&text, Path::new("short.toml")).expect("parses");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = RunDir::create(tmp.path(), &config).expect("create");
    let Err(err) = Runner::new(FakeEngine::default(), FakeEngine::default(), dir, &NullReporter) else {
        panic!("a 12-token context cannot hold a 3-digit scratchpad");
    };
    let msg = err.to_string();
    assert!(msg.contains("max-position-embeddings (12)") && msg.contains("raise it to at least"), "{msg}");
    assert!(!tmp.path().join("iter-0000").exists(), "no work was done");
}

#[test]
fn a_critical_collapse_warning_stops_the_run_and_resume_goes_on_after_the_config_changes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = config();
    config.iterations = 3;
    // Four samples of one problem often agree word for word: the samples' near-duplicate rate is
    // above 0 in every iteration, so this rule fires at once.
    config.watch = flywheel_loop::config::WatchConfig {
        near_duplicates_above: 0.0,
        critical: vec!["near-duplicates-above".into()],
        ..flywheel_loop::config::WatchConfig::off()
    };
    let outcome = run_config(tmp.path(), FakeEngine::default(), &config).expect("run");
    let Outcome::StoppedEarly(k) = outcome else { panic!("the critical rule did not stop the run: {outcome:?}") };
    let quality: serde_json::Value =
        serde_json::from_slice(&read(tmp.path().join(format!("iter-{k:04}/quality.json")))).expect("json");
    assert_eq!(quality["warnings"][0]["rule"], "near-duplicates-above");
    assert_eq!(quality["warnings"][0]["severity"], "critical");
    let stop = events(tmp.path()).into_iter().find(|e| e["event"] == "stop").expect("a stop event");
    assert!(stop["reason"].as_str().unwrap().starts_with("collapse watch:"), "{stop}");

    // The user makes the rule a warning only; the run goes on to the end.
    let path = tmp.path().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let changed = text.replace("critical = [\"near-duplicates-above\"]", "critical = []");
    assert_ne!(changed, text);
    std::fs::write(&path, changed).expect("write");
    let outcome = run_config(tmp.path(), FakeEngine::default(), &config).expect("resumed");
    assert_eq!(outcome, Outcome::Finished);
    let last: serde_json::Value =
        serde_json::from_slice(&read(tmp.path().join("iter-0003/quality.json"))).expect("json");
    assert_eq!(last["warnings"][0]["severity"], "warning");
}

#[test]
fn accumulated_data_carries_every_earlier_iteration_and_the_cap_bounds_a_problem() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = config();
    config.iterations = 3;
    config.mitigation.data = flywheel_loop::config::DataPolicy::Accumulate;
    run_config(tmp.path(), FakeEngine::default(), &config).expect("run");
    let lines = |k: usize| -> Vec<String> {
        String::from_utf8(read(tmp.path().join(format!("iter-{k:04}/train.jsonl"))))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    for k in 2..=3 {
        let (before, now) = (lines(k - 1), lines(k));
        assert!(now.len() > before.len(), "iteration {k} adds to the earlier data");
        assert_eq!(&now[..before.len()], &before[..], "iteration {k} starts with iteration {}'s set", k - 1);
    }

    let capped = tempfile::tempdir().expect("tmp");
    config.mitigation.max_per_problem = 1;
    config.mitigation.near_duplicate_threshold = 0.7;
    run_config(capped.path(), FakeEngine::default(), &config).expect("run");
    let text = String::from_utf8(read(capped.path().join("iter-0003/train.jsonl"))).unwrap();
    let prompts: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["messages"][0]["content"].to_string())
        .collect();
    let distinct: std::collections::HashSet<&String> = prompts.iter().collect();
    assert_eq!(distinct.len(), prompts.len(), "one example per problem");
    assert!(prompts.len() > lines(1).len() / 2, "the accumulated set still holds most problems");
}

#[test]
fn practice_adds_equations_shaped_like_the_samples_and_is_not_carried_over() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = config();
    config.practice.examples = 5;
    config.practice.equations_per_example = 4;
    config.mitigation.data = flywheel_loop::config::DataPolicy::Accumulate;
    let dir = RunDir::create(tmp.path(), &config).expect("create");
    let generators = FakeEngine { equations: true, ..FakeEngine::default() };
    Runner::new(generators, FakeEngine::default(), dir, &NullReporter).expect("runner").run().expect("run");
    let mut sizes = Vec::new();
    for k in 1..=3 {
        let set: Vec<TrainExample> = String::from_utf8(read(tmp.path().join(format!("iter-{k:04}/train.jsonl"))))
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("example"))
            .collect();
        let (drills, solved): (Vec<&TrainExample>, Vec<&TrainExample>) =
            set.iter().partition(|e| practice::is_practice(e));
        assert_eq!(drills.len(), 5, "iteration {k}: this iteration's practice only, none carried over");
        sizes.push(solved.len());
        for line in drills.iter().flat_map(|e| e.messages[1].content.lines()) {
            // The samples write `a + b` of 1 to 3 digits each (the task's problems).
            let (sum, value) = line.split_once(" = ").expect("an equation");
            let (a, b) = sum.split_once(" + ").unwrap_or_else(|| panic!("{line}: not shaped like a sample's sum"));
            let (a, b, value): (u64, u64, u64) =
                (a.parse().expect("a"), b.parse().expect("b"), value.parse().expect("v"));
            assert!(a < 1000 && b < 1000, "{line}");
            assert_eq!(a + b, value, "{line}");
        }
    }
    assert!(sizes.windows(2).all(|w| w[1] > w[0]), "the solved examples still accumulate: {sizes:?}");
}
