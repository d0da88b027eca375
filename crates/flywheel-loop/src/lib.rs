//! The self-improvement loop of flywheel, independent of any ML engine.
//!
//! A run is a sequence of iterations, each a pure function of (config, seed, previous state):
//! iteration 0 trains (or loads) the base model and evaluates it; every later iteration asks a
//! [`strategy`] (STaR, ReST, ReST-EM, self-play) for training data made from the current model's
//! samples, scored by the verifier or a [`reward`], fine-tunes, and evaluates on a held-out split
//! that shares no problem with training ([`eval`]), stopping early when accuracy stalls ([`stop`]).
//! Everything is written to a run directory ([`rundir`], events in [`events`]) so that a stopped
//! run resumes from its last finished iteration and produces the same files as one that never
//! stopped.
//!
//! Engines plug in through the two seams of [`backend`] (generation and training) and the
//! `flywheel-core` traits; this crate compiles and tests without candle or an HTTP client.

pub mod backend;
pub mod config;
pub mod eval;
pub mod events;
pub mod practice;
pub mod quality;
pub mod records;
pub mod report;
pub mod reward;
pub mod rundir;
pub mod runner;
pub mod seeds;
pub mod stop;
pub mod strategy;
pub mod task;
pub mod tasks;
pub mod tools;

use std::path::PathBuf;

pub use backend::{GeneratorBackend, Phase, TrainerBackend};
pub use config::RunConfig;
pub use runner::{Outcome, Runner};
pub use task::Task;

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// A config file is invalid; the message names the key (and line, where TOML parsing failed).
    #[error("{}: {message}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file of the run failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the run holds something unexpected.
    #[error("{}: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The run directory cannot be used as asked (exists already, config changed, ...).
    #[error("{}: {message}", path.display())]
    RunDir {
        /// The run directory.
        path: PathBuf,
        /// Why it cannot be used.
        message: String,
    },
    /// A line of a problem file (JSONL) is unusable; the message names the field where one is at fault.
    #[error("{}:{line}: {message}", path.display())]
    Dataset {
        /// The problem file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// A task cannot provide the problems its config asks for.
    #[error("task {task}: {message}")]
    Task {
        /// The task's `type` in the config.
        task: &'static str,
        /// Why not.
        message: String,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] flywheel_core::CoreError),
}

/// Result alias of the loop.
pub type Result<T, E = LoopError> = std::result::Result<T, E>;
