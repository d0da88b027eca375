//! The run directory: everything a run writes, and the state that lets it resume.
//!
//! ```text
//! RUN/config.toml            the resolved config, as run
//! RUN/state.json             last finished iteration and the config's hash (atomic writes)
//! RUN/metrics.jsonl          one line per event
//! RUN/iter-0003/samples.jsonl, train.jsonl (train-2.jsonl ...: later training sets), pairs.jsonl,
//!               eval.json, eval-samples.jsonl, model/
//! ```
//!
//! Every path of a run is named here and nowhere else; the runner and the report ask for them.
//!
//! An iteration's files are complete once `state.json` names it finished; anything of a later
//! iteration is a leftover of a stopped run and is redone on resume, and metrics lines past the
//! finished iteration are dropped, so no event is lost or repeated.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::Event;
use crate::{LoopError, Result, RunConfig};

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The last iteration whose files are complete, if any.
    pub completed: Option<usize>,
    /// SHA-256 of `config.toml` as the run started.
    pub config_sha256: String,
    /// The master seed (also in the config; kept here for quick inspection).
    pub seed: u64,
    /// The iteration after which the run stopped early, if it did (cleared when it is resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<usize>,
    /// The iteration a resumed early-stopped run went on from: the stop rule looks only at the
    /// iterations after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience_from: Option<usize>,
}

/// The paths of a run directory: every file a run writes is named here, and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    root: PathBuf,
}

impl RunPaths {
    /// The paths of the run directory `root`.
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned() }
    }

    /// The run's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.toml`: the config as run.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// `state.json`: how far the run got.
    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// The directory of iteration `k`.
    pub fn iter_dir(&self, k: usize) -> PathBuf {
        self.root.join(format!("iter-{k:04}"))
    }

    /// The model checkpoint of iteration `k`.
    pub fn model_dir(&self, k: usize) -> PathBuf {
        self.iter_dir(k).join("model")
    }

    /// Every sample of iteration `k` with its verdict.
    pub fn samples_path(&self, k: usize) -> PathBuf {
        self.iter_dir(k).join("samples.jsonl")
    }

    /// Training set `set` (0-based) of iteration `k`: `train.jsonl` for the first, then
    /// `train-2.jsonl`, `train-3.jsonl`...
    pub fn train_path(&self, k: usize, set: usize) -> PathBuf {
        match set {
            0 => self.iter_dir(k).join("train.jsonl"),
            n => self.iter_dir(k).join(format!("train-{}.jsonl", n + 1)),
        }
    }

    /// The preference pairs of iteration `k`.
    pub fn pairs_path(&self, k: usize) -> PathBuf {
        self.iter_dir(k).join("pairs.jsonl")
    }

    /// The held-out evaluation of iteration `k`.
    pub fn eval_path(&self, k: usize) -> PathBuf {
        self.iter_dir(k).join("eval.json")
    }

    /// The judged held-out completions of iteration `k`.
    pub fn eval_samples_path(&self, k: usize) -> PathBuf {
        self.iter_dir(k).join("eval-samples.jsonl")
    }

    /// The judged held-out samples of iteration `k` behind pass@k and maj@k (`[eval] samples`).
    pub fn eval_sampled_path(&self, k: usize) -> PathBuf {
        self.iter_dir(k).join("eval-sampled.jsonl")
    }

    /// `metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// The iterations that have a directory, in order.
    pub fn iterations(&self) -> Result<Vec<usize>> {
        let entries = fs::read_dir(&self.root).map_err(|source| LoopError::Io { path: self.root.clone(), source })?;
        let mut found: Vec<usize> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("iter-")?.parse().ok())
            .collect();
        found.sort_unstable();
        Ok(found)
    }
}

/// An open run directory: its paths (through `Deref`), its config and its state.
#[derive(Debug, Clone)]
pub struct RunDir {
    paths: RunPaths,
    config: RunConfig,
    state: RunState,
}

impl std::ops::Deref for RunDir {
    type Target = RunPaths;

    fn deref(&self) -> &RunPaths {
        &self.paths
    }
}

impl RunDir {
    /// Starts a new run in `root`, which must not hold one already.
    pub fn create(root: &Path, config: &RunConfig) -> Result<Self> {
        let paths = RunPaths::new(root);
        if paths.state_path().exists() {
            return Err(LoopError::RunDir {
                path: root.to_owned(),
                message: "a run exists here already; use `flywheel resume` to continue it, or choose another --run-dir"
                    .into(),
            });
        }
        fs::create_dir_all(root).map_err(|source| LoopError::Io { path: root.to_owned(), source })?;
        let text = config.to_toml();
        write_atomic(&paths.config_path(), text.as_bytes())?;
        let state = RunState {
            completed: None,
            config_sha256: sha256(text.as_bytes()),
            seed: config.seed,
            stopped_early: None,
            patience_from: None,
        };
        let dir = RunDir { paths, config: config.clone(), state };
        dir.save_state()?;
        Ok(dir)
    }

    /// Opens a run to resume it; refuses when `config.toml` changed since the run started.
    pub fn open(root: &Path) -> Result<Self> {
        let paths = RunPaths::new(root);
        let (config_path, state_path) = (paths.config_path(), paths.state_path());
        let text = fs::read(&config_path).map_err(|source| LoopError::Io { path: config_path.clone(), source })?;
        let state_text = fs::read(&state_path).map_err(|source| LoopError::Io { path: state_path.clone(), source })?;
        let state: RunState = serde_json::from_slice(&state_text)
            .map_err(|e| LoopError::Corrupt { path: state_path.clone(), message: e.to_string() })?;
        if sha256(&text) != state.config_sha256 {
            return Err(LoopError::RunDir {
                path: config_path,
                message: "the config changed since the run started (SHA-256 differs from state.json); \
                          a resumed run must use the config it started with: start a new run instead"
                    .into(),
            });
        }
        let text = String::from_utf8_lossy(&text);
        let config = RunConfig::parse(&text, &config_path)?;
        Ok(RunDir { paths, config, state })
    }

    /// Raises the run's iteration count to `iterations`: the one change to a started run's config
    /// that replays nothing (every finished iteration stays as it is), so a run can go on for more
    /// iterations than it was started with. `config.toml` and its hash in `state.json` are
    /// rewritten. Lowering the count is refused.
    pub fn extend_iterations(&mut self, iterations: usize) -> Result<()> {
        let config_path = self.config_path();
        if iterations < self.config.iterations {
            return Err(LoopError::RunDir {
                path: config_path,
                message: format!(
                    "the run has {} iterations; --iterations may only raise it, not lower it to {iterations}",
                    self.config.iterations
                ),
            });
        }
        self.config.iterations = iterations;
        let text = self.config.to_toml();
        write_atomic(&config_path, text.as_bytes())?;
        self.state.config_sha256 = sha256(text.as_bytes());
        self.save_state()
    }

    /// The config the run uses.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The run's state.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// Marks that the run stopped early after iteration `k`.
    pub fn stop_early(&mut self, k: usize) -> Result<()> {
        self.state.stopped_early = Some(k);
        self.save_state()
    }

    /// Clears an early stop so that the run goes on; the stop rule then looks only at the iterations
    /// after `k`.
    pub fn clear_early_stop(&mut self) -> Result<()> {
        if let Some(k) = self.state.stopped_early.take() {
            self.state.patience_from = Some(k);
            self.save_state()?;
        }
        Ok(())
    }

    /// Empties the directory of iteration `k` (leftovers of a stopped run) and creates it.
    pub fn begin_iteration(&self, k: usize) -> Result<PathBuf> {
        let dir = self.iter_dir(k);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|source| LoopError::Io { path: dir.clone(), source })?;
        }
        fs::create_dir_all(&dir).map_err(|source| LoopError::Io { path: dir.clone(), source })?;
        self.truncate_metrics(k)?;
        Ok(dir)
    }

    /// Marks iteration `k` finished: its files are complete.
    pub fn finish_iteration(&mut self, k: usize) -> Result<()> {
        self.state.completed = Some(k);
        self.save_state()
    }

    /// Appends one event to `metrics.jsonl`.
    pub fn append_event(&self, event: &Event) -> Result<()> {
        let path = self.metrics_path();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| LoopError::Io { path: path.clone(), source })?;
        let line = serde_json::to_string(event).expect("events serialise");
        writeln!(file, "{line}").map_err(|source| LoopError::Io { path, source })
    }

    /// The events of `metrics.jsonl`, in order (none when it does not exist yet).
    pub fn events(&self) -> Result<Vec<Event>> {
        read_events(&self.metrics_path())
    }

    /// Drops metrics lines of iterations `>= k` (written by a run stopped during iteration `k`).
    fn truncate_metrics(&self, k: usize) -> Result<()> {
        let path = self.metrics_path();
        let Ok(text) = fs::read_to_string(&path) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["iteration"].as_u64())
                    .is_none_or(|i| (i as usize) < k)
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        write_atomic(&path, kept.as_bytes())
    }

    fn save_state(&self) -> Result<()> {
        let text = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        write_atomic(&self.state_path(), &text)
    }
}

/// The events of the `metrics.jsonl` at `path`, in order; none when the file does not exist.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LoopError::Io { path: path.to_owned(), source }),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| LoopError::Dataset { path: path.to_owned(), line: i + 1, message: e.to_string() })
        })
        .collect()
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename: a reader sees the old file
/// or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |source| LoopError::Io { path: path.to_owned(), source };
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Writes one JSON line per item to `path`, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    let mut buf = BufWriter::new(Vec::new());
    for item in items {
        serde_json::to_writer(&mut buf, item).expect("records serialise");
        buf.write_all(b"\n").expect("writing to memory");
    }
    write_atomic(path, &buf.into_inner().expect("flushing to memory"))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
