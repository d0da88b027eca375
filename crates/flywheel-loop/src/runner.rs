//! Carries out a run: iteration 0 builds and evaluates the base model, iterations 1..=N run STaR.
//!
//! Each iteration reads only the previous iteration's checkpoint (and the base's) and seeds derived
//! from the master seed, so a resumed run replays exactly what an uninterrupted one would do.

use std::path::Path;
use std::time::Instant;

use flywheel_core::{Checkpoint, Generator, Reporter, Trainer};
use serde_json::json;

use crate::config::{FineTuneFrom, ModelConfig, StrategyConfig};
use crate::eval::evaluate;
use crate::rundir::{write_atomic, write_jsonl, RunDir};
use crate::star::star_samples;
use crate::{seeds, tasks, LoopError, Result, RunConfig, Task};

/// Makes and loads models: the loop's view of an engine.
pub trait Engine {
    /// The model type this engine runs.
    type Model: Generator + Trainer + Checkpoint;
    /// A freshly initialised model for `config`, its tokenizer covering `task`'s alphabet.
    fn fresh(&mut self, config: &RunConfig, task: &dyn Task, seed: u64) -> Result<Self::Model>;
    /// A model saved earlier with [`Checkpoint::save`].
    fn load(&mut self, dir: &Path) -> Result<Self::Model>;
}

/// Runs the iterations of one run directory.
pub struct Runner<'r, E: Engine> {
    engine: E,
    dir: RunDir,
    task: Box<dyn Task>,
    reporter: &'r dyn Reporter,
}

impl<'r, E: Engine> Runner<'r, E> {
    /// Prepares a run: builds the task and checks that its splits are disjoint.
    pub fn new(engine: E, dir: RunDir, reporter: &'r dyn Reporter) -> Result<Self> {
        let config = dir.config();
        let task = tasks::build(&config.task, config.seed)?;
        let shared = crate::task::check_disjoint(task.as_ref());
        if !shared.is_empty() {
            return Err(LoopError::Config {
                path: dir.root().join("config.toml"),
                message: format!("held-out problems also in training: {}", shared.join(", ")),
            });
        }
        Ok(Self { engine, dir, task, reporter })
    }

    /// The run directory.
    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    /// Runs every iteration not yet finished.
    pub fn run(&mut self) -> Result<()> {
        let first = self.dir.state().completed.map_or(0, |k| k + 1);
        if first > 0 {
            tracing::info!("resuming {} after iteration {}", self.dir.root().display(), first - 1);
        }
        for k in first..=self.dir.config().iterations {
            if k == 0 {
                self.base_iteration()?;
            } else {
                self.star_iteration(k)?;
            }
        }
        Ok(())
    }

    /// Iteration 0: a fresh model trained on the task's seed set, evaluated.
    fn base_iteration(&mut self) -> Result<()> {
        let dir = self.dir.begin_iteration(0)?;
        let config = self.dir.config().clone();
        let mut model = self.engine.fresh(&config, self.task.as_ref(), seeds::derive(config.seed, "init", 0))?;
        match &config.model {
            ModelConfig::Embedded(model_config) => {
                let seed_set = self.task.seed_examples();
                write_jsonl(&dir.join("train.jsonl"), &seed_set)?;
                tracing::info!("iteration 0: training the base model on {} seed examples", seed_set.len());
                let training = &model_config.base_training;
                let params = training.params(training.steps, seeds::derive(config.seed, "train", 0));
                let summary = model.train(&seed_set, &params, self.reporter)?;
                self.log_training(0, seed_set.len(), &summary)?;
            }
            ModelConfig::Pretrained(_) => tracing::info!("iteration 0: the pretrained model, as it is"),
        }
        model.save(&self.dir.model_dir(0))?;
        self.evaluate(0, &mut model)?;
        self.dir.finish_iteration(0)
    }

    fn star_iteration(&mut self, k: usize) -> Result<()> {
        let dir = self.dir.begin_iteration(k)?;
        let config = self.dir.config().clone();
        let StrategyConfig::Star(star) = &config.strategy;
        let mut current = self.engine.load(&self.dir.model_dir(k - 1))?;

        let started = Instant::now();
        let outcome = star_samples(
            self.task.as_ref(),
            &mut current,
            star,
            seeds::derive(config.seed, "sample", k),
            self.reporter,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        write_jsonl(&dir.join("samples.jsonl"), &outcome.samples)?;
        write_jsonl(&dir.join("train.jsonl"), &outcome.train)?;
        let problems = self.task.train_problems().len();
        tracing::info!(
            "iteration {k}: {} samples in {seconds:.1}s ({:.0} tokens/s); solved {}/{problems}, rationalized {}, \
             {} training examples",
            outcome.samples.len(),
            outcome.tokens as f64 / seconds.max(1e-9),
            outcome.solved,
            outcome.rationalized,
            outcome.train.len()
        );
        self.dir.append_metric(&json!({
            "iteration": k, "event": "sample", "seconds": seconds, "samples": outcome.samples.len(),
            "tokens": outcome.tokens, "tokens_per_second": outcome.tokens as f64 / seconds.max(1e-9),
            "problems": problems, "solved": outcome.solved, "rationalized": outcome.rationalized,
            "train_examples": outcome.train.len(),
        }))?;

        let mut model = match star.fine_tune_from {
            FineTuneFrom::Base => {
                drop(current);
                self.engine.load(&self.dir.model_dir(0))?
            }
            FineTuneFrom::Last => current,
        };
        if outcome.train.is_empty() {
            tracing::warn!("iteration {k}: no correct rationale was found; the model is not fine-tuned");
        } else {
            let steps = config.training.steps_at(k);
            let params = config.training.params(steps, seeds::derive(config.seed, "train", k));
            let summary = model.train(&outcome.train, &params, self.reporter)?;
            self.log_training(k, outcome.train.len(), &summary)?;
        }
        model.save(&self.dir.model_dir(k))?;
        self.evaluate(k, &mut model)?;
        self.dir.finish_iteration(k)
    }

    fn log_training(&self, k: usize, examples: usize, s: &flywheel_core::TrainSummary) -> Result<()> {
        let rate = s.target_tokens as f64 / s.seconds.max(1e-9);
        tracing::info!(
            "iteration {k}: trained {} steps on {examples} examples in {:.1}s ({rate:.0} target tokens/s), loss {:.4} -> {:.4}",
            s.steps,
            s.seconds,
            s.first_loss,
            s.last_loss
        );
        self.dir.append_metric(&json!({
            "iteration": k, "event": "train", "examples": examples, "steps": s.steps, "seconds": s.seconds,
            "first_loss": s.first_loss, "last_loss": s.last_loss, "target_tokens": s.target_tokens,
            "target_tokens_per_second": rate,
        }))
    }

    fn evaluate(&self, k: usize, model: &mut E::Model) -> Result<()> {
        let started = Instant::now();
        let (report, records) =
            evaluate(self.task.as_ref(), model, self.dir.config().eval.max_new_tokens, self.reporter)?;
        let seconds = started.elapsed().as_secs_f64();
        let dir = self.dir.iter_dir(k);
        write_jsonl(&dir.join("eval-samples.jsonl"), &records)?;
        let text = serde_json::to_vec_pretty(&report).expect("report serialises");
        write_atomic(&dir.join("eval.json"), &text)?;
        let buckets: Vec<String> = report.by_bucket.iter().map(|(b, a)| format!("{b}:{:.0}%", a * 100.0)).collect();
        tracing::info!(
            "iteration {k}: held-out accuracy {:.1}% of {} ({}) in {seconds:.1}s",
            report.accuracy * 100.0,
            report.n,
            buckets.join(" ")
        );
        self.dir.append_metric(&json!({
            "iteration": k, "event": "eval", "seconds": seconds, "accuracy": report.accuracy, "n": report.n,
            "by_bucket": report.by_bucket,
        }))
    }
}
