//! `[trainer] type = "command"`: each iteration's training sets go to an external command (TRL
//! under accelerate, `flywheel train`, anything that reads chat JSONL and writes a checkpoint),
//! run without a shell from the working directory; what it writes is the next iteration's model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use flywheel_core::{CoreError, Reporter, TrainSummary};
use flywheel_loop::config::CommandTrainerConfig;
use flywheel_loop::rundir::write_jsonl;
use flywheel_loop::{LoopError, Phase, RunConfig, Task, TrainerBackend};

use crate::command::{fill, run_logged};
use crate::engine::EmbeddedEngine;

/// The file a trainer command may write into its output directory to report its losses (a
/// [`TrainSummary`] as JSON); `flywheel train` does.
pub const SUMMARY_FILE: &str = "train-summary.json";

/// Trains through a command; iteration 0's model is still written by the embedded engine.
#[derive(Debug)]
pub struct CommandTrainer {
    command: Vec<String>,
    run_dir: PathBuf,
    embedded: EmbeddedEngine,
}

impl CommandTrainer {
    /// The trainer of `config` for the run in `run_dir`; `embedded` writes iteration 0's model.
    pub fn new(config: &CommandTrainerConfig, run_dir: &Path, embedded: EmbeddedEngine) -> std::io::Result<Self> {
        Ok(Self { command: config.command.clone(), run_dir: std::path::absolute(run_dir)?, embedded })
    }

    /// Runs the command once: `data` from `start` into `out`; its output is appended to `log`.
    fn run_once(&self, phase: &Phase<'_>, data: &Path, start: &Path, out: &Path, log: &Path) -> Result<(), CoreError> {
        let iteration = out
            .ancestors()
            .find_map(|p| p.file_name()?.to_str()?.strip_prefix("iter-")?.parse::<usize>().ok())
            .map_or(String::new(), |k| k.to_string());
        let p = &phase.params;
        let values = [
            ("{data}", data.display().to_string()),
            ("{start}", start.display().to_string()),
            ("{out}", out.display().to_string()),
            ("{iteration}", iteration),
            ("{steps}", p.steps.to_string()),
            ("{batch-size}", p.batch_size.to_string()),
            ("{learning-rate}", p.learning_rate.to_string()),
            ("{seed}", p.seed.to_string()),
            ("{run-dir}", self.run_dir.display().to_string()),
        ];
        let argv = fill(&self.command, &values);
        tracing::info!("training with `{}` (output in {})", argv.join(" "), log.display());
        run_logged(&argv, log, "trainer.command", CoreError::Training)?;
        let wrote = std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false);
        if !wrote {
            return Err(CoreError::Training(format!(
                "trainer.command `{}` succeeded but wrote nothing to {}; it must write the new checkpoint \
                 (or PEFT adapter) there",
                argv.join(" "),
                out.display()
            )));
        }
        Ok(())
    }
}

impl TrainerBackend for CommandTrainer {
    fn init(
        &mut self,
        config: &RunConfig,
        task: &dyn Task,
        seed: u64,
        seed_set: Option<Phase<'_>>,
        out: &Path,
        reporter: &dyn Reporter,
    ) -> flywheel_loop::Result<Option<TrainSummary>> {
        self.embedded.init(config, task, seed, seed_set, out, reporter)
    }

    fn train(
        &mut self,
        start: &Path,
        phases: &[Phase<'_>],
        out: &Path,
        reporter: &dyn Reporter,
    ) -> flywheel_loop::Result<Vec<TrainSummary>> {
        let abs = |p: &Path| std::path::absolute(p).map_err(|source| LoopError::Io { path: p.to_owned(), source });
        let (start, out) = (abs(start)?, abs(out)?);
        if phases.is_empty() {
            // Nothing to learn: the next model is the one it starts from.
            return self.embedded.train(&start, phases, &out, reporter);
        }
        let work = out.parent().unwrap_or(&out).join("trainer");
        std::fs::create_dir_all(&work).map_err(|source| LoopError::Io { path: work.clone(), source })?;
        let log = out.parent().unwrap_or(&out).join("trainer.log");
        let mut summaries = Vec::with_capacity(phases.len());
        let mut from = start;
        for (i, phase) in phases.iter().enumerate() {
            let data = work.join(format!("set-{}.jsonl", i + 1));
            write_jsonl(&data, phase.examples)?;
            let to = if i + 1 == phases.len() { out.clone() } else { work.join(format!("model-{}", i + 1)) };
            std::fs::create_dir_all(&to).map_err(|source| LoopError::Io { path: to.clone(), source })?;
            let started = Instant::now();
            self.run_once(phase, &data, &from, &to, &log)?;
            let summary = match std::fs::read(to.join(SUMMARY_FILE)) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LoopError::Corrupt {
                    path: to.join(SUMMARY_FILE),
                    message: format!("not a training summary: {e}"),
                })?,
                Err(_) => TrainSummary {
                    steps: phase.params.steps,
                    first_loss: 0.0,
                    last_loss: 0.0,
                    target_tokens: 0,
                    seconds: started.elapsed().as_secs_f64(),
                },
            };
            summaries.push(summary);
            from = to;
        }
        Ok(summaries)
    }
}
