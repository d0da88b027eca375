//! Shared vocabulary of flywheel.
//!
//! Everything that crosses a crate boundary lives here: the problems a task poses, the requests a
//! strategy sends to a [`Generator`], the completions that come back, the chat-format examples a
//! [`Trainer`] learns from, and the [`Reporter`] through which long work shows progress.
//!
//! This crate has no machine-learning dependency on purpose: the loop logic (`flywheel-loop`) and its
//! tests compile against these traits alone, and engines (embedded candle, remote HTTP, external
//! trainer commands) plug in behind them.

mod engine;
mod error;
mod example;
mod report;

pub use engine::{
    Architecture, Checkpoint, Completion, FinishReason, GenerationRequest, Generator, LogLikelihood, SamplingParams,
    Tool, TrainSummary, Trainer, TrainingParams,
};
pub use error::{render_chain, CoreError, Result};
pub use example::{Message, Problem, Role, TrainExample};
pub use report::{NullReporter, Reporter};
