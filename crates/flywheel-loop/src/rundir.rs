//! The run directory: everything a run writes, and the state that lets it resume.
//!
//! ```text
//! RUN/config.toml            the resolved config, as run
//! RUN/state.json             last finished iteration and the config's hash (atomic writes)
//! RUN/metrics.jsonl          one line per event
//! RUN/iter-0003/samples.jsonl, train.jsonl, eval.json, eval-samples.jsonl, model/
//! ```
//!
//! An iteration's files are complete once `state.json` names it finished; anything of a later
//! iteration is a leftover of a stopped run and is redone on resume, and metrics lines past the
//! finished iteration are dropped, so no event is lost or repeated.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
}

/// An open run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    config: RunConfig,
    state: RunState,
}

impl RunDir {
    /// Starts a new run in `root`, which must not hold one already.
    pub fn create(root: &Path, config: &RunConfig) -> Result<Self> {
        if root.join("state.json").exists() {
            return Err(LoopError::RunDir {
                path: root.to_owned(),
                message: "a run exists here already; use `flywheel resume` to continue it, or choose another --run-dir"
                    .into(),
            });
        }
        fs::create_dir_all(root).map_err(|source| LoopError::Io { path: root.to_owned(), source })?;
        let text = config.to_toml();
        write_atomic(&root.join("config.toml"), text.as_bytes())?;
        let state = RunState { completed: None, config_sha256: sha256(text.as_bytes()), seed: config.seed };
        let dir = RunDir { root: root.to_owned(), config: config.clone(), state };
        dir.save_state()?;
        Ok(dir)
    }

    /// Opens a run to resume it; refuses when `config.toml` changed since the run started.
    pub fn open(root: &Path) -> Result<Self> {
        let config_path = root.join("config.toml");
        let state_path = root.join("state.json");
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
        Ok(RunDir { root: root.to_owned(), config, state })
    }

    /// Raises the run's iteration count to `iterations`: the one change to a started run's config
    /// that replays nothing (every finished iteration stays as it is), so a run can go on for more
    /// iterations than it was started with. `config.toml` and its hash in `state.json` are
    /// rewritten. Lowering the count is refused.
    pub fn extend_iterations(&mut self, iterations: usize) -> Result<()> {
        let config_path = self.root.join("config.toml");
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

    /// The run's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The config the run uses.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The run's state.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The directory of iteration `k`.
    pub fn iter_dir(&self, k: usize) -> PathBuf {
        self.root.join(format!("iter-{k:04}"))
    }

    /// The model checkpoint of iteration `k`.
    pub fn model_dir(&self, k: usize) -> PathBuf {
        self.iter_dir(k).join("model")
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
    pub fn append_metric(&self, event: &serde_json::Value) -> Result<()> {
        let path = self.root.join("metrics.jsonl");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| LoopError::Io { path: path.clone(), source })?;
        writeln!(file, "{event}").map_err(|source| LoopError::Io { path, source })
    }

    /// Drops metrics lines of iterations `>= k` (written by a run stopped during iteration `k`).
    fn truncate_metrics(&self, k: usize) -> Result<()> {
        let path = self.root.join("metrics.jsonl");
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
        write_atomic(&self.root.join("state.json"), &text)
    }
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
