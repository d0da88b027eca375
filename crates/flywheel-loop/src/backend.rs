//! The loop's two engine seams: where samples come from ([`GeneratorBackend`]) and where models are
//! trained ([`TrainerBackend`]).
//!
//! Both speak in checkpoint directories, so that they need not be the same engine: the embedded
//! candle model implements both, while a remote generator (an OpenAI-compatible server) or an
//! external training command implements one. A strategy sees only the [`Generator`] it is handed.

use std::path::Path;

use flywheel_core::{Generator, Reporter, TrainExample, TrainSummary, TrainingParams};

use crate::{RunConfig, Task};

/// Opens generators on checkpoints.
pub trait GeneratorBackend {
    /// A generator that samples from the model saved in `checkpoint` (a directory a
    /// [`TrainerBackend`] wrote).
    fn open(&mut self, checkpoint: &Path) -> crate::Result<Box<dyn Generator>>;
}

/// One training phase: examples and the optimiser settings to learn them with.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase<'a> {
    /// The examples.
    pub examples: &'a [TrainExample],
    /// The optimiser settings.
    pub params: TrainingParams,
}

/// Creates and fine-tunes checkpoints.
pub trait TrainerBackend {
    /// Writes iteration 0's model to `out`: the model `config` starts from (a fresh one whose
    /// tokenizer covers `task`'s alphabet, or a pretrained one), trained on `seed_set` first when
    /// one is given. Returns the summary of that training.
    fn init(
        &mut self,
        config: &RunConfig,
        task: &dyn Task,
        seed: u64,
        seed_set: Option<Phase<'_>>,
        out: &Path,
        reporter: &dyn Reporter,
    ) -> crate::Result<Option<TrainSummary>>;

    /// Loads `start`, trains on each phase in order (each from the model the previous one left)
    /// and writes the result to `out`. With no phase, `out` is a copy of `start`. Returns one summary
    /// per phase.
    fn train(
        &mut self,
        start: &Path,
        phases: &[Phase<'_>],
        out: &Path,
        reporter: &dyn Reporter,
    ) -> crate::Result<Vec<TrainSummary>>;
}

/// A boxed backend is one: a caller picks the backend at run time (the embedded engine or a
/// remote one) and hands the box to [`crate::Runner`].
impl<B: GeneratorBackend + ?Sized> GeneratorBackend for Box<B> {
    fn open(&mut self, checkpoint: &Path) -> crate::Result<Box<dyn Generator>> {
        (**self).open(checkpoint)
    }
}

/// A boxed trainer is one (the embedded engine or a command, picked at run time).
impl<B: TrainerBackend + ?Sized> TrainerBackend for Box<B> {
    fn init(
        &mut self,
        config: &RunConfig,
        task: &dyn Task,
        seed: u64,
        seed_set: Option<Phase<'_>>,
        out: &Path,
        reporter: &dyn Reporter,
    ) -> crate::Result<Option<TrainSummary>> {
        (**self).init(config, task, seed, seed_set, out, reporter)
    }

    fn train(
        &mut self,
        start: &Path,
        phases: &[Phase<'_>],
        out: &Path,
        reporter: &dyn Reporter,
    ) -> crate::Result<Vec<TrainSummary>> {
        (**self).train(start, phases, out, reporter)
    }
}
