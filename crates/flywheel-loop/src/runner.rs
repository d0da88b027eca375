//! Carries out a run: iteration 0 builds and evaluates the base model; every later iteration asks
//! the configured [`Strategy`] for training data, trains on it and evaluates.
//!
//! Each iteration reads only the previous iteration's checkpoint (and the base's) and seeds derived
//! from the master seed, so a resumed run replays exactly what an uninterrupted one would do. The
//! runner knows no strategy: it holds a generator backend and a trainer backend, built from config
//! by the caller, and a strategy built from `[strategy]`. After each evaluation it measures the
//! quality of the iteration's samples, kept set and held-out answers (`quality.json`).

use std::time::Instant;

use flywheel_core::{Generator, Reporter, TrainExample, TrainSummary};

use crate::backend::{GeneratorBackend, Phase, TrainerBackend};
use crate::config::{DataPolicy, FineTuneFrom, ModelConfig};
use crate::eval::evaluate;
use crate::events::{EvalEvent, Event, QualityEvent, SampleEvent, StopEvent, TrainEvent};
use crate::practice;
use crate::quality::metrics::{Item, Quality, QualityMetrics};
use crate::quality::watch::{self, Severity};
use crate::quality::{mitigate, natural_texts};
use crate::records::SampleRecord;
use crate::rundir::{read_jsonl, write_atomic, write_jsonl, RunDir};
use crate::strategy::{self, mean, pairs, Collected, Context, Strategy};
use crate::{seeds, stop, tasks, LoopError, Result, Task};

/// Runs the iterations of one run directory.
pub struct Runner<'r, G: GeneratorBackend, T: TrainerBackend> {
    generators: G,
    trainer: T,
    dir: RunDir,
    task: Box<dyn Task>,
    strategy: Box<dyn Strategy>,
    reporter: &'r dyn Reporter,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every configured iteration ran.
    Finished,
    /// Held-out accuracy stalled, or a critical collapse warning fired; the run stopped after this
    /// iteration (resumable).
    StoppedEarly(usize),
}

impl<'r, G: GeneratorBackend, T: TrainerBackend> Runner<'r, G, T> {
    /// Prepares a run: builds and checks the task ([`prepare`]) and builds the strategy.
    pub fn new(generators: G, trainer: T, dir: RunDir, reporter: &'r dyn Reporter) -> Result<Self> {
        let task = prepare(dir.config(), &dir.config_path())?;
        Ok(Self::with_task(generators, trainer, dir, task, reporter))
    }

    /// A run whose task the caller already built with [`prepare`] from `dir`'s config (checked
    /// before the run directory was made, say): the task is not built a second time.
    pub fn with_task(generators: G, trainer: T, dir: RunDir, task: Box<dyn Task>, reporter: &'r dyn Reporter) -> Self {
        let strategy = strategy::build(&dir.config().strategy);
        Self { generators, trainer, dir, task, strategy, reporter }
    }

    /// The run directory.
    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    /// Runs every iteration not yet finished, unless held-out accuracy stalls first (with
    /// `[early-stop]`). A run that stopped early goes on when run again.
    pub fn run(&mut self) -> Result<Outcome> {
        if let Some(k) = self.dir.state().stopped_early {
            tracing::info!("the run stopped early after iteration {k}; going on");
            self.dir.clear_early_stop()?;
        }
        let first = self.dir.state().completed.map_or(0, |k| k + 1);
        if first > 0 {
            tracing::info!("resuming {} after iteration {}", self.dir.root().display(), first - 1);
        }
        for k in first..=self.dir.config().iterations {
            if k == 0 {
                self.base_iteration()?;
            } else {
                self.iteration(k)?;
            }
            if let Some(reason) = self.stop_rule(k)? {
                tracing::warn!("stopping after iteration {k}: {reason}");
                self.dir.append_event(&Event::Stop(StopEvent { iteration: k, reason }))?;
                self.dir.stop_early(k)?;
                return Ok(Outcome::StoppedEarly(k));
            }
        }
        Ok(Outcome::Finished)
    }

    /// Iteration 0: the base model (a fresh one trained on the task's seed set, or a pretrained
    /// one as it is), evaluated.
    fn base_iteration(&mut self) -> Result<()> {
        self.dir.begin_iteration(0)?;
        let config = self.dir.config().clone();
        let seed_set = self.task.seed_examples();
        let phase = match &config.model {
            ModelConfig::Embedded(model) => {
                write_jsonl(&self.dir.train_path(0, 0), &seed_set)?;
                tracing::info!("iteration 0: training the base model on {} seed examples", seed_set.len());
                let training = &model.base_training;
                let params = training.params(training.steps, seeds::derive(config.seed, "train", 0));
                Some(Phase { examples: &seed_set, params })
            }
            ModelConfig::Pretrained(_) => {
                tracing::info!("iteration 0: the pretrained model, as it is");
                None
            }
        };
        let out = self.dir.model_dir(0);
        let seed = seeds::derive(config.seed, "init", 0);
        if let Some(summary) = self.trainer.init(&config, self.task.as_ref(), seed, phase, &out, self.reporter)? {
            self.log_training(0, 0, "seed set", seed_set.len(), &summary)?;
        }
        let evaluated = self.evaluate(0)?;
        self.record_quality(0, None, &evaluated)?;
        self.dir.finish_iteration(0)
    }

    /// Iteration `k`: the strategy's data from the last model, training, evaluation.
    fn iteration(&mut self, k: usize) -> Result<()> {
        self.dir.begin_iteration(k)?;
        let config = self.dir.config().clone();
        let started = Instant::now();
        let mut collected = {
            let mut generator = self.generators.open(&self.dir.model_dir(k - 1))?;
            let mut judge = match config.strategy.judges_with_base() {
                true => Some(self.generators.open(&self.dir.model_dir(0))?),
                false => None,
            };
            let mut cx = Context {
                task: self.task.as_ref(),
                generator: generator.as_mut(),
                judge: judge.as_mut().map(|j| j.as_mut() as &mut dyn Generator),
                seed: seeds::derive(config.seed, "sample", k),
                reporter: self.reporter,
            };
            match config.mitigation.temperature_at(k) {
                Some(t) => {
                    tracing::info!("iteration {k}: sampling at temperature {t} (temperature-schedule)");
                    strategy::build(&config.strategy.with_temperature(t)).collect(&mut cx)?
                }
                None => self.strategy.collect(&mut cx)?,
            }
        };
        self.mitigate(k, &mut collected)?;
        self.practice(k, &mut collected);
        let seconds = started.elapsed().as_secs_f64();
        self.record_samples(k, &collected, seconds)?;

        let start = match config.training.fine_tune_from {
            FineTuneFrom::Base => self.dir.model_dir(0),
            FineTuneFrom::Last => self.dir.model_dir(k - 1),
        };
        let steps = config.training.steps_at(k);
        // The sets that are trained (empty ones are skipped), by index, and their phases.
        let (mut trained, mut phases) = (Vec::new(), Vec::new());
        for (i, set) in collected.sets.iter().enumerate() {
            if set.examples.is_empty() {
                tracing::warn!("iteration {k}: training set {} ({}) is empty; skipped", i + 1, set.label);
                continue;
            }
            // The first set keeps the seed the single-set strategies always had.
            let purpose = if i == 0 { "train".to_owned() } else { format!("train-set-{}", i + 1) };
            let params = config.training.params(steps, seeds::derive(config.seed, &purpose, k));
            trained.push(i);
            phases.push(Phase { examples: &set.examples, params });
        }
        if phases.is_empty() {
            tracing::warn!("iteration {k}: nothing was kept; the model is not fine-tuned");
        }
        let summaries = self.trainer.train(&start, &phases, &self.dir.model_dir(k), self.reporter)?;
        for ((&i, phase), summary) in trained.iter().zip(&phases).zip(&summaries) {
            self.log_training(k, i, &collected.sets[i].label, phase.examples.len(), summary)?;
        }
        let evaluated = self.evaluate(k)?;
        self.record_quality(k, Some(&collected.samples), &evaluated)?;
        self.dir.finish_iteration(k)
    }

    /// Applies `[mitigation]` to each of iteration `k`'s training sets (with `accumulate`, set `i`
    /// of iteration `k - 1` comes first).
    fn mitigate(&self, k: usize, collected: &mut Collected) -> Result<()> {
        let config = self.dir.config().mitigation.clone();
        if !config.changes_training_sets() {
            return Ok(());
        }
        for (i, set) in collected.sets.iter_mut().enumerate() {
            let earlier = match config.data {
                DataPolicy::Accumulate if k > 1 => {
                    let mut earlier = read_jsonl::<TrainExample>(&self.dir.train_path(k - 1, i))?;
                    earlier.retain(|e| !practice::is_practice(e));
                    earlier
                }
                _ => Vec::new(),
            };
            let (mut examples, stats) = mitigate::training_set(earlier, std::mem::take(&mut set.examples), &config);
            let seed = seeds::derive(self.dir.config().seed, &format!("natural-{i}"), k);
            let natural = mitigate::add_natural(&mut examples, self.task.as_ref(), config.natural_fraction, seed);
            tracing::info!(
                "iteration {k}: training set {} ({}): {} selected + {} carried over, {} near-duplicates and {} over \
                 the per-problem cap removed, {natural} reference solutions added: {} examples",
                i + 1,
                set.label,
                stats.fresh,
                stats.carried,
                stats.near_duplicates,
                stats.capped,
                examples.len()
            );
            set.examples = examples;
        }
        Ok(())
    }

    /// Adds `[practice]`'s examples to iteration `k`'s first training set, shaped like the
    /// arithmetic of all its samples.
    fn practice(&self, k: usize, collected: &mut Collected) {
        let config = &self.dir.config().practice;
        let Some(set) = collected.sets.first_mut() else { return };
        if config.examples == 0 {
            return;
        }
        let shapes = practice::shapes(collected.samples.iter().map(|s| s.completion.as_str()));
        let seed = seeds::derive(self.dir.config().seed, "practice", k);
        let examples = practice::examples(&shapes, config.examples, config.equations_per_example, seed);
        tracing::info!(
            "iteration {k}: {} practice examples of {} equations, shaped like the {} expressions the samples write",
            examples.len(),
            config.equations_per_example,
            shapes.len()
        );
        set.examples.extend(examples);
    }

    /// Writes an iteration's samples, training sets and preference pairs, and its `sample` event.
    fn record_samples(&self, k: usize, collected: &Collected, seconds: f64) -> Result<()> {
        write_jsonl(&self.dir.samples_path(k), &collected.samples)?;
        for (i, set) in collected.sets.iter().enumerate() {
            write_jsonl(&self.dir.train_path(k, i), &set.examples)?;
        }
        let pairs = pairs::preference_pairs(self.task.as_ref(), &collected.samples);
        write_jsonl(&self.dir.pairs_path(k), &pairs)?;

        let samples = &collected.samples;
        let kept: Vec<_> = samples.iter().filter(|s| s.kept).collect();
        let event = SampleEvent {
            iteration: k,
            seconds,
            problems: self.task.train_problems().len(),
            samples: samples.len(),
            tokens: collected.tokens,
            tokens_per_second: collected.tokens as f64 / seconds.max(1e-9),
            kept: kept.len(),
            train_examples: collected.sets.iter().map(|s| s.examples.len()).collect(),
            pairs: pairs.len(),
            mean_reward: mean(samples.iter().map(|s| s.reward)),
            mean_reward_kept: mean(kept.iter().map(|s| s.reward)),
            kept_correct: (!kept.is_empty()).then(|| mean(kept.iter().map(|s| f64::from(u8::from(s.correct))))),
            sample_accuracy: mean(samples.iter().map(|s| f64::from(u8::from(s.correct)))),
            stats: collected.stats.clone(),
        };
        tracing::info!(
            "iteration {k}: {} samples in {seconds:.1}s ({:.0} tokens/s); kept {} ({}), mean reward {:.3} (kept {:.3}), \
             {} pairs; {}",
            event.samples,
            event.tokens_per_second,
            event.kept,
            event.kept_correct.map_or("none".to_owned(), |c| format!("{:.1}% truly correct", c * 100.0)),
            event.mean_reward,
            event.mean_reward_kept,
            event.pairs,
            serde_json::to_string(&event.stats).expect("stats serialise"),
        );
        self.dir.append_event(&Event::Sample(event))
    }

    fn log_training(&self, k: usize, set: usize, label: &str, examples: usize, s: &TrainSummary) -> Result<()> {
        let rate = s.target_tokens as f64 / s.seconds.max(1e-9);
        tracing::info!(
            "iteration {k}: trained {} steps on {examples} examples ({label}) in {:.1}s ({rate:.0} target tokens/s), \
             loss {:.4} -> {:.4}",
            s.steps,
            s.seconds,
            s.first_loss,
            s.last_loss
        );
        self.dir.append_event(&Event::Train(TrainEvent {
            iteration: k,
            set: set + 1,
            label: label.to_owned(),
            examples,
            steps: s.steps,
            seconds: s.seconds,
            first_loss: s.first_loss,
            last_loss: s.last_loss,
            target_tokens: s.target_tokens,
            target_tokens_per_second: rate,
        }))
    }

    /// Evaluates iteration `k`'s model on the held-out split, and scores the natural-text set
    /// with it.
    fn evaluate(&mut self, k: usize) -> Result<Evaluated> {
        let started = Instant::now();
        let config = self.dir.config().clone();
        let (report, records, sampled, perplexity) = {
            let mut generator = self.generators.open(&self.dir.model_dir(k))?;
            let seed = seeds::derive(config.seed, "eval", k);
            let (report, records, sampled) =
                evaluate(self.task.as_ref(), generator.as_mut(), &config.eval, seed, self.reporter)?;
            let natural = natural_texts(self.task.as_ref(), config.watch.perplexity_texts);
            let scoring = Instant::now();
            let perplexity = match natural.is_empty() {
                true => None,
                false => generator.log_likelihood(&natural)?.and_then(|l| l.perplexity()),
            };
            if let Some(p) = perplexity {
                tracing::info!(
                    "iteration {k}: perplexity {p:.3} on {} held-out reference solutions ({:.1}s)",
                    natural.len(),
                    scoring.elapsed().as_secs_f64()
                );
            }
            (report, records, sampled, perplexity)
        };
        let seconds = started.elapsed().as_secs_f64();
        write_jsonl(&self.dir.eval_samples_path(k), &records)?;
        if !sampled.is_empty() {
            write_jsonl(&self.dir.eval_sampled_path(k), &sampled)?;
        }
        let text = serde_json::to_vec_pretty(&report).expect("report serialises");
        write_atomic(&self.dir.eval_path(k), &text)?;
        let buckets: Vec<String> = report.by_bucket.iter().map(|(b, a)| format!("{b}:{:.0}%", a * 100.0)).collect();
        let sampled_note = match (report.k, report.pass_at_k, report.maj_at_k) {
            (Some(n), Some(p), Some(m)) => format!("; pass@{n} {:.1}%, maj@{n} {:.1}%", p * 100.0, m * 100.0),
            _ => String::new(),
        };
        tracing::info!(
            "iteration {k}: held-out accuracy {:.1}% of {} ({}){sampled_note} in {seconds:.1}s",
            report.accuracy * 100.0,
            report.n,
            buckets.join(" ")
        );
        self.dir.append_event(&Event::Eval(EvalEvent {
            iteration: k,
            seconds,
            accuracy: report.accuracy,
            n: report.n,
            by_bucket: report.by_bucket,
            pass_at_k: report.pass_at_k,
            maj_at_k: report.maj_at_k,
        }))?;
        Ok(Evaluated { accuracy: report.accuracy, heldout: records, perplexity })
    }

    /// Measures the diversity and repetition of iteration `k`'s samples, kept samples and greedy
    /// held-out answers, and writes them with the accuracy trend to `quality.json` and
    /// `metrics.jsonl`.
    fn record_quality(&self, k: usize, samples: Option<&[SampleRecord]>, evaluated: &Evaluated) -> Result<()> {
        let seed = seeds::derive(self.dir.config().seed, "quality", k);
        let items = |records: &mut dyn Iterator<Item = &SampleRecord>| {
            let items: Vec<Item<'_>> = records
                .map(|r| Item { problem: &r.problem_id, text: &r.completion, answer: r.extracted.as_deref() })
                .collect();
            QualityMetrics::of(items, seed)
        };
        let events = self.dir.events()?;
        let previous = events.iter().find_map(|e| match e {
            Event::Eval(e) if k > 0 && e.iteration == k - 1 => Some(e.accuracy),
            _ => None,
        });
        let mut event = QualityEvent {
            iteration: k,
            samples: samples.map(|s| items(&mut s.iter())),
            kept: samples.map(|s| items(&mut s.iter().filter(|r| r.kept))),
            heldout: items(&mut evaluated.heldout.iter()),
            accuracy: evaluated.accuracy,
            accuracy_change: previous.map(|p| evaluated.accuracy - p),
            perplexity: evaluated.perplexity,
            warnings: Vec::new(),
        };
        let mut history: Vec<&QualityEvent> = events
            .iter()
            .filter_map(|e| match e {
                Event::Quality(q) if q.iteration < k => Some(&**q),
                _ => None,
            })
            .collect();
        history.push(&event);
        let warnings = watch::check(&history, &self.dir.config().watch);
        for w in &warnings {
            tracing::warn!("iteration {k}: collapse watch ({}, {:?}): {}", w.rule, w.severity, w.message);
        }
        event.warnings = warnings;
        let fmt = |q: Option<&Quality>| {
            q.map_or("-".to_owned(), |q| {
                let f = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.3}"));
                format!(
                    "distinct-2 {}, self-BLEU {}, near-dup {}, repetition {}",
                    f(q.distinct_2),
                    f(q.self_bleu),
                    f(q.near_duplicate_rate),
                    f(q.repetition)
                )
            })
        };
        tracing::info!(
            "iteration {k}: quality of samples: {}; kept: {}; held-out answers: {}",
            fmt(event.samples.as_ref()),
            fmt(event.kept.as_ref()),
            fmt(Some(&event.heldout))
        );
        let text = serde_json::to_vec_pretty(&event).expect("quality serialises");
        write_atomic(&self.dir.quality_path(k), &text)?;
        self.dir.append_event(&Event::Quality(Box::new(event)))
    }

    /// Why the run should stop after iteration `k`: a critical collapse warning of the iteration,
    /// or `[early-stop]`'s rule, if configured and it says so.
    fn stop_rule(&self, k: usize) -> Result<Option<String>> {
        if k == self.dir.config().iterations {
            return Ok(None);
        }
        let critical: Vec<String> = self
            .dir
            .events()?
            .into_iter()
            .filter_map(|e| match e {
                Event::Quality(q) if q.iteration == k => Some(q.warnings),
                _ => None,
            })
            .flatten()
            .filter(|w| w.severity == Severity::Critical)
            .map(|w| format!("{} ({})", w.message, w.rule))
            .collect();
        if !critical.is_empty() {
            return Ok(Some(format!(
                "collapse watch: {}; change [watch] or the mitigations, then `flywheel resume`",
                critical.join("; ")
            )));
        }
        let Some(rule) = &self.dir.config().early_stop else { return Ok(None) };
        let mut accuracy = vec![f64::NAN; k + 1];
        for event in self.dir.events()? {
            if let Event::Eval(e) = event {
                if e.iteration <= k {
                    accuracy[e.iteration] = e.accuracy;
                }
            }
        }
        if let Some(missing) = accuracy.iter().position(|a| a.is_nan()) {
            return Err(LoopError::Corrupt {
                path: self.dir.metrics_path(),
                message: format!("no eval event for iteration {missing}"),
            });
        }
        Ok(stop::should_stop(&accuracy, rule, self.dir.state().patience_from.unwrap_or(0)))
    }
}

/// What evaluating an iteration's model found.
struct Evaluated {
    /// Held-out accuracy (greedy).
    accuracy: f64,
    /// The greedy held-out answers, judged.
    heldout: Vec<SampleRecord>,
    /// Perplexity on the natural-text set, where there is one and the generator scores text.
    perplexity: Option<f64>,
}

/// Builds the task of `config` (read from `origin`, named in errors) and checks what can only be
/// checked with its problems at hand: the splits are disjoint, a fresh model's context holds every
/// example, and a pretrained model's path exists. [`Runner::new`] calls it; a caller that wants
/// these errors before it creates anything calls it first and hands the task to
/// [`Runner::with_task`].
pub fn prepare(config: &crate::RunConfig, origin: &std::path::Path) -> Result<Box<dyn Task>> {
    if let ModelConfig::Pretrained(model) = &config.model {
        if !model.path.exists() {
            return Err(LoopError::Config {
                path: origin.to_owned(),
                message: format!(
                    "model.path: {} does not exist (a GGUF file or a Hugging Face directory; relative paths \
                     are read from the working directory)",
                    model.path.display()
                ),
            });
        }
    }
    let task = tasks::build(&config.task, config.seed)?;
    let shared = crate::task::check_disjoint(task.as_ref());
    if !shared.is_empty() {
        return Err(LoopError::Config {
            path: origin.to_owned(),
            message: format!("held-out problems also in training: {}", shared.join(", ")),
        });
    }
    check_context(config, task.as_ref()).map_err(|message| LoopError::Config { path: origin.to_owned(), message })?;
    Ok(task)
}

/// Refuses a fresh (character-level) model whose context cannot hold the task's longest seed
/// example or prompt, which would otherwise fail only when training or sampling reaches it.
fn check_context(config: &crate::RunConfig, task: &dyn Task) -> std::result::Result<(), String> {
    let ModelConfig::Embedded(model) = &config.model else { return Ok(()) };
    let context = model.architecture.max_position_embeddings;
    // Characters are tokens; a few more for the turn markers and the end-of-sequence token.
    const MARKERS: usize = 4;
    let seed_set = task.seed_examples();
    let seed = seed_set.iter().map(|e| e.messages.iter().map(|m| m.content.chars().count()).sum::<usize>());
    let prompts = task.train_problems().iter().chain(task.eval_problems()).map(|p| task.prompt(p).chars().count());
    let longest = seed.chain(prompts).max().unwrap_or(0) + MARKERS;
    if longest > context {
        return Err(format!(
            "model.architecture.max-position-embeddings ({context}) is shorter than the task's longest example \
             ({longest} tokens with its markers); raise it to at least {longest}"
        ));
    }
    Ok(())
}
