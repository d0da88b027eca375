//! The run directory: everything a run writes, and the state that lets it resume.
//!
//! ```text
//! RUN/config.toml            the resolved config, as run
//! RUN/state.json             last finished iteration, the config's hash and values (atomic writes)
//! RUN/.lock                  held by the process using the run (a second one is refused)
//! RUN/metrics.jsonl          one line per event
//! RUN/iter-0003/samples.jsonl, train.jsonl (train-2.jsonl ...: later training sets), pairs.jsonl,
//!               eval.json, eval-samples.jsonl, quality.json (diversity, warnings), model/
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
use std::sync::Arc;

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
    /// The config as run (its resolved values), against which an edited `config.toml` is compared
    /// on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
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

    /// The quality metrics of iteration `k` (diversity, repetition, accuracy trend).
    pub fn quality_path(&self, k: usize) -> PathBuf {
        self.iter_dir(k).join("quality.json")
    }

    /// `metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// The iterations that have a directory, in order.
    pub fn iterations(&self) -> Result<Vec<usize>> {
        let entries = fs::read_dir(&self.root).map_err(|source| LoopError::Io { path: self.root.clone(), source })?;
        let mut found: Vec<usize> =
            entries.flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix("iter-")?.parse().ok()).collect();
        found.sort_unstable();
        Ok(found)
    }
}

/// An open run directory: its paths (through `Deref`), its config and its state. It holds the
/// directory's lock for as long as it lives: a second process that opens the same run is refused.
#[derive(Debug, Clone)]
pub struct RunDir {
    paths: RunPaths,
    config: RunConfig,
    state: RunState,
    /// `config.toml` text still to be written with its hash: a change to the config (more
    /// iterations, an accepted edit) is committed only when the run goes on.
    pending_config: Option<String>,
    _lock: Arc<RunLock>,
}

impl std::ops::Deref for RunDir {
    type Target = RunPaths;

    fn deref(&self) -> &RunPaths {
        &self.paths
    }
}

/// The config keys a run may change after an iteration finished, because they alter nothing
/// already computed: the iteration count (raised only), the worker threads (a run moved to
/// another machine; later iterations then round as that count does), early stopping, the
/// collapse watch's rules, and a remote generator's servers and patience (a run whose servers
/// moved goes on with the new addresses).
pub const RESUMABLE_KEYS: [&str; 5] = ["iterations", "threads", "early-stop", "watch", "generator"];

impl RunDir {
    /// Starts a new run in `root`, which must be new, empty, or a run that stopped before its first
    /// iteration finished (which then starts again). A directory holding anything else is refused
    /// untouched: a run never overwrites or deletes files it did not write.
    pub fn create(root: &Path, config: &RunConfig) -> Result<Self> {
        if root.exists() && !root.is_dir() {
            return Err(run_dir_error(root, "exists and is not a directory; choose another --run-dir"));
        }
        let paths = RunPaths::new(root);
        // Checked before anything is written, the lock file included: a refused folder is left
        // exactly as it was.
        let entries = if root.exists() { entry_names(root)? } else { Vec::new() };
        let foreign: Vec<&String> = entries.iter().filter(|name| !is_run_entry(name)).collect();
        let stray: Vec<&String> = entries.iter().filter(|n| *n != LOCK_FILE && !is_scratch(n)).collect();
        let has_state = paths.state_path().exists();
        if !foreign.is_empty() || (!has_state && !stray.is_empty()) {
            let shown = if foreign.is_empty() { stray } else { foreign };
            return Err(run_dir_error(root, &not_a_run_message(&shown)));
        }
        fs::create_dir_all(root).map_err(|source| LoopError::Io { path: root.to_owned(), source })?;
        let lock = RunLock::acquire(root)?;
        if has_state {
            let state = read_state(&paths.state_path())?;
            if let Some(k) = state.completed {
                return Err(run_dir_error(
                    root,
                    &format!(
                        "a run exists here already (iteration {k} finished); `flywheel resume {}` continues it, \
                         or choose another --run-dir",
                        root.display()
                    ),
                ));
            }
            tracing::info!("{}: the run here stopped before iteration 0 finished; starting it again", root.display());
            paths.remove_iterations()?;
        }
        remove_scratch(root)?;
        let text = config.to_toml();
        let state = RunState {
            completed: None,
            config_sha256: sha256(text.as_bytes()),
            seed: config.seed,
            stopped_early: None,
            patience_from: None,
            config: Some(config_value(config)),
        };
        let dir = RunDir { paths, config: config.clone(), state, pending_config: None, _lock: Arc::new(lock) };
        // state.json first: a start stopped between the two writes is then a run that can be
        // started again, never a folder of stray files.
        dir.save_state()?;
        write_atomic(&dir.config_path(), text.as_bytes())?;
        Ok(dir)
    }

    /// Opens a run to resume it. An edited `config.toml` is accepted when nothing already computed
    /// depends on what changed: any key before the first iteration finished, afterwards only
    /// [`RESUMABLE_KEYS`] (the iteration count raised, not lowered); other changes are refused,
    /// naming the keys. The change is committed when the run goes on.
    pub fn open(root: &Path) -> Result<Self> {
        let paths = RunPaths::new(root);
        let state_path = paths.state_path();
        if !state_path.is_file() {
            return Err(run_dir_error(
                root,
                "no state.json here: not a run directory (start one with `flywheel run CONFIG --run-dir DIR`)",
            ));
        }
        let lock = RunLock::acquire(root)?;
        remove_scratch(root)?;
        let config_path = paths.config_path();
        let state = read_state(&state_path)?;
        let text = fs::read(&config_path).map_err(|source| LoopError::Io { path: config_path.clone(), source })?;
        let text = String::from_utf8(text).map_err(|e| LoopError::Config {
            path: config_path.clone(),
            message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        })?;
        let config = RunConfig::parse(&text, &config_path)?;
        let mut pending_config = None;
        if sha256(text.as_bytes()) != state.config_sha256 {
            accept_edit(&config_path, &state, &config)?;
            pending_config = Some(text);
        }
        let dir = RunDir { paths, config, state, pending_config, _lock: Arc::new(lock) };
        dir.check_completed()?;
        Ok(dir)
    }

    /// Raises the run's iteration count to `iterations`: the one change to a started run's config
    /// that replays nothing (every finished iteration stays as it is), so a run can go on for more
    /// iterations than it was started with. `config.toml` and its hash in `state.json` are
    /// rewritten when the next iteration begins. Lowering the count is refused.
    pub fn extend_iterations(&mut self, iterations: usize) -> Result<()> {
        if iterations < self.config.iterations {
            return Err(LoopError::RunDir {
                path: self.config_path(),
                message: format!(
                    "the run has {} iterations; --iterations may only raise it, not lower it to {iterations}",
                    self.config.iterations
                ),
            });
        }
        if iterations != self.config.iterations {
            self.config.iterations = iterations;
            self.pending_config = Some(self.config.to_toml());
        }
        Ok(())
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

    /// Empties the directory of iteration `k` (leftovers of a stopped run) and creates it; a
    /// pending config change is written first, now that the run goes on.
    pub fn begin_iteration(&mut self, k: usize) -> Result<PathBuf> {
        if let Some(text) = self.pending_config.take() {
            self.state.config_sha256 = sha256(text.as_bytes());
            self.state.config = Some(config_value(&self.config));
            write_atomic(&self.config_path(), text.as_bytes())?;
            self.save_state()?;
        }
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

    /// Refuses a `state.json` that names a finished iteration whose files are missing.
    fn check_completed(&self) -> Result<()> {
        let Some(k) = self.state.completed else { return Ok(()) };
        for needed in [self.model_dir(k), self.eval_path(k)] {
            if !needed.exists() {
                return Err(LoopError::Corrupt {
                    path: self.state_path(),
                    message: format!(
                        "says iteration {k} finished, but {} does not exist; the run directory is damaged \
                         (set \"completed\" to the last iteration whose files are all there)",
                        needed.display()
                    ),
                });
            }
        }
        if k > self.config.iterations {
            return Err(LoopError::Corrupt {
                path: self.state_path(),
                message: format!(
                    "says iteration {k} finished, but the config has {} iterations",
                    self.config.iterations
                ),
            });
        }
        Ok(())
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

impl RunPaths {
    /// Removes the iteration directories and `metrics.jsonl` (a run that starts again).
    fn remove_iterations(&self) -> Result<()> {
        for k in self.iterations()? {
            let dir = self.iter_dir(k);
            fs::remove_dir_all(&dir).map_err(|source| LoopError::Io { path: dir.clone(), source })?;
        }
        let metrics = self.metrics_path();
        match fs::remove_file(&metrics) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LoopError::Io { path: metrics, source: e }),
            _ => Ok(()),
        }
    }
}

/// Refuses an edited config unless nothing computed depends on what changed.
fn accept_edit(config_path: &Path, state: &RunState, config: &RunConfig) -> Result<()> {
    let refuse = |message: String| Err(LoopError::RunDir { path: config_path.to_owned(), message });
    let Some(old) = &state.config else {
        return refuse(
            "the config changed since the run started (SHA-256 differs from state.json); \
             a resumed run must use the config it started with: start a new run instead"
                .into(),
        );
    };
    let mut changed = Vec::new();
    changed_keys(old, &config_value(config), "", &mut changed);
    let Some(k) = state.completed else {
        tracing::info!(
            "{}: changed before any iteration finished ({}); accepted",
            config_path.display(),
            changed.join(", ")
        );
        return Ok(());
    };
    let refused: Vec<&String> = changed
        .iter()
        .filter(|key| !RESUMABLE_KEYS.iter().any(|ok| *key == ok || key.starts_with(&format!("{ok}."))))
        .collect();
    if !refused.is_empty() {
        return refuse(format!(
            "changed since the run started in {}: iteration {k} already finished with the old values, so the run \
             cannot go on with new ones (only {} may change); undo the change or start a new run",
            refused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            RESUMABLE_KEYS.join(", "),
        ));
    }
    let old_iterations = old["iterations"].as_u64().unwrap_or(0) as usize;
    if config.iterations < old_iterations.max(k) {
        return refuse(format!(
            "iterations may only be raised, not lowered from {old_iterations} to {}",
            config.iterations
        ));
    }
    tracing::info!("{}: changed {}; accepted", config_path.display(), changed.join(", "));
    Ok(())
}

/// The dotted paths of the keys whose values differ between two configs (as JSON).
fn changed_keys(old: &serde_json::Value, new: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => changed_keys(x, y, &path, out),
                    _ => out.push(path),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

fn config_value(config: &RunConfig) -> serde_json::Value {
    serde_json::to_value(config).expect("a RunConfig always serialises")
}

fn read_state(path: &Path) -> Result<RunState> {
    let text = fs::read(path).map_err(|source| LoopError::Io { path: path.to_owned(), source })?;
    serde_json::from_slice(&text).map_err(|e| LoopError::Corrupt { path: path.to_owned(), message: e.to_string() })
}

fn run_dir_error(root: &Path, message: &str) -> LoopError {
    LoopError::RunDir { path: root.to_owned(), message: message.to_owned() }
}

fn not_a_run_message(names: &[&String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(5).map(|s| s.as_str()).collect();
    if names.len() > 5 {
        shown.push("...");
    }
    format!(
        "holds files that are not a run's ({}); a run starts only in a new or empty directory, and never \
         overwrites what is there: choose another --run-dir",
        shown.join(", ")
    )
}

/// The names in directory `root`.
fn entry_names(root: &Path) -> Result<Vec<String>> {
    let entries = fs::read_dir(root).map_err(|source| LoopError::Io { path: root.to_owned(), source })?;
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    Ok(names)
}

/// Removes scratch files a killed process left in the run's root (the lock is held: no other
/// process is writing them).
fn remove_scratch(root: &Path) -> Result<()> {
    for name in entry_names(root)?.iter().filter(|n| is_scratch(n)) {
        let path = root.join(name);
        fs::remove_file(&path).map_err(|source| LoopError::Io { path, source })?;
    }
    Ok(())
}

/// Whether `name` is something a run writes in its directory.
fn is_run_entry(name: &str) -> bool {
    matches!(name, "config.toml" | "state.json" | "metrics.jsonl" | LOCK_FILE)
        || is_scratch(name)
        || name.strip_prefix("iter-").is_some_and(|k| k.len() >= 4 && k.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `name` is a scratch file of [`write_atomic`] left by a killed process.
fn is_scratch(name: &str) -> bool {
    name.starts_with(SCRATCH_PREFIX) && name.ends_with(SCRATCH_SUFFIX)
}

/// The lock file of a run directory.
const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a run directory, held while a process uses it (released when dropped, or
/// by the kernel when the process dies).
#[derive(Debug)]
struct RunLock {
    file: File,
}

impl RunLock {
    /// How long a busy lock is waited for: a process that was just stopped may take a moment to
    /// end (the re-run child of `main` notices its parent's end within 200 ms).
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

    fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(LOCK_FILE);
        let io = |source| LoopError::Io { path: path.clone(), source };
        let mut file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        let started = std::time::Instant::now();
        let mut locked = file.try_lock();
        while matches!(locked, Err(fs::TryLockError::WouldBlock)) && started.elapsed() < Self::PATIENCE {
            std::thread::sleep(std::time::Duration::from_millis(50));
            locked = file.try_lock();
        }
        match locked {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let who = if holder.is_empty() { String::new() } else { format!(" (process {holder})") };
                return Err(run_dir_error(
                    root,
                    &format!(
                        "another flywheel process{who} is using this run directory; wait for it to finish or \
                         stop it, then try again"
                    ),
                ));
            }
            Err(fs::TryLockError::Error(source)) => return Err(io(source)),
        }
        file.set_len(0).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { file })
    }
}

impl Drop for RunLock {
    /// Clears the holder's process id (the kernel releases the lock itself).
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
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
            serde_json::from_str(line).map_err(|e| LoopError::Dataset {
                path: path.to_owned(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename: a reader sees the old file
/// or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    PendingFile::create(path)?.commit(bytes)
}

const SCRATCH_PREFIX: &str = ".flywheel-";
const SCRATCH_SUFFIX: &str = ".tmp";

/// A file to be written atomically later: its scratch file is created now, with a name of its
/// own in the target's directory (so no file of the user's is ever touched), which proves that
/// the path is writable before any work is done.
#[derive(Debug)]
pub struct PendingFile {
    path: PathBuf,
    scratch: tempfile::NamedTempFile,
}

impl PendingFile {
    /// Creates the scratch file for `path`; fails when `path` is a directory or its directory is
    /// missing or not writable.
    pub fn create(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(LoopError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory, not a file"),
            });
        }
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix(SCRATCH_PREFIX).suffix(SCRATCH_SUFFIX);
        // The mode `File::create` gives (0o666 less the umask), not a scratch file's 0o600.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let scratch = builder.tempfile_in(dir).map_err(|source| LoopError::Io { path: path.to_owned(), source })?;
        Ok(Self { path: path.to_owned(), scratch })
    }

    /// The file's final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes`, syncs and renames the scratch file over the final path.
    pub fn commit(mut self, bytes: &[u8]) -> Result<()> {
        let io = |source| LoopError::Io { path: self.path.clone(), source };
        self.scratch.write_all(bytes).map_err(io)?;
        self.scratch.as_file().sync_all().map_err(io)?;
        let path = self.path.clone();
        self.scratch.persist(&path).map_err(|e| LoopError::Io { path, source: e.error })?;
        Ok(())
    }
}

/// Reads a JSONL file this module wrote; a line that does not parse is reported with its number.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = fs::read_to_string(path).map_err(|source| LoopError::Io { path: path.to_owned(), source })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| LoopError::Corrupt { path: path.to_owned(), message: format!("line {}: {e}", i + 1) })
        })
        .collect()
}

/// Writes one JSON line per item to `path`, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    write_atomic(path, &jsonl_bytes(items))
}

/// One JSON line per item.
pub fn jsonl_bytes<T: Serialize>(items: &[T]) -> Vec<u8> {
    let mut buf = BufWriter::new(Vec::new());
    for item in items {
        serde_json::to_writer(&mut buf, item).expect("records serialise");
        buf.write_all(b"\n").expect("writing to memory");
    }
    buf.into_inner().expect("flushing to memory")
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
