//! `flywheel run`, `resume`, `eval` and `report`.

use anyhow::{bail, Context, Result};
use flywheel_core::TrainExample;
use flywheel_engine::TrainPass;
use flywheel_loop::config::{GeneratorConfig, ModelConfig, TrainerConfig, TrainingPass};
use flywheel_loop::report::{self, RunReport};
use flywheel_loop::rundir::{jsonl_bytes, read_jsonl, PendingFile, RunDir};
use flywheel_loop::runner::prepare;
use flywheel_loop::{seeds, tasks, GeneratorBackend, Outcome, Phase, RunConfig, Runner, Task, TrainerBackend};

use crate::cli::{EvalArgs, ExportArgs, GgufWeightsArg, ReportArgs, ResumeArgs, RunArgs, TrainArgs};
use crate::command_trainer::{CommandTrainer, SUMMARY_FILE};
use crate::engine::{EmbeddedEngine, TrainingSettings};
use crate::progress::Bars;
use crate::remote::RemoteBackend;

/// Starts a run.
pub fn run(args: &RunArgs) -> Result<()> {
    let config = RunConfig::load(&args.config)?;
    // The task's files and the model's context are checked before the run directory is made.
    let task = prepare(&config, &args.config)?;
    let root = args.run_dir.clone().unwrap_or_else(|| config.default_run_dir());
    let dir = RunDir::create(&root, &config)?;
    tracing::info!("run {} in {}", config.name, root.display());
    drive(dir, task)
}

/// Resumes a stopped run.
pub fn resume(args: &ResumeArgs) -> Result<()> {
    let mut dir = RunDir::open(&args.run_dir)?;
    if let Some(iterations) = args.iterations {
        dir.extend_iterations(iterations)?;
    }
    let task = prepare(dir.config(), &dir.config_path())?;
    drive(dir, task)
}

fn drive(dir: RunDir, task: Box<dyn Task>) -> Result<()> {
    let config = dir.config().clone();
    let engine = engine_for(&config)?;
    let bars = Bars::new();
    // The embedded engine trains, and samples unless [generator] names servers.
    let generators: Box<dyn GeneratorBackend> = match &config.generator {
        None => Box::new(engine.clone()),
        Some(GeneratorConfig::Openai(remote)) => Box::new(RemoteBackend::new(remote, dir.root())?),
    };
    let trainer: Box<dyn TrainerBackend> = match &config.trainer {
        None => Box::new(engine),
        Some(TrainerConfig::Command(command)) => Box::new(CommandTrainer::new(command, dir.root(), engine)?),
    };
    let mut runner = Runner::with_task(generators, trainer, dir, task, &bars);
    let outcome = runner.run()?;
    let run = RunReport::read(runner.dir().root())?;
    print!("{}\n{}\n{}", report::render(&run.rows), report::render_data(&run), report::render_quality(&run));
    if let Outcome::StoppedEarly(k) = outcome {
        tracing::info!(
            "stopped early after iteration {k}; `flywheel resume {}` goes on",
            runner.dir().root().display()
        );
    }
    Ok(())
}

/// `flywheel train`: the config's model fine-tuned on a chat JSONL file, written to `--out` with
/// its `train-summary.json`; the summary is printed as JSON.
pub fn train(args: &TrainArgs) -> Result<()> {
    let config = RunConfig::load(&args.config)?;
    let examples: Vec<TrainExample> = read_jsonl(&args.data)?;
    anyhow::ensure!(!examples.is_empty(), "{}: no training example", args.data.display());
    let mut engine = engine_for(&config)?;
    let steps = args.steps.unwrap_or(config.training.steps);
    let seed = args.seed.unwrap_or_else(|| seeds::derive(config.seed, "train", 0));
    let phase = Phase { examples: &examples, params: config.training.params(steps, seed) };
    let bars = Bars::new();
    let summary = match &args.start {
        Some(start) => engine.train(start, std::slice::from_ref(&phase), &args.out, &bars)?.pop(),
        None => {
            let task = tasks::build(&config.task, config.seed)?;
            engine.init(&config, task.as_ref(), seed, Some(phase), &args.out, &bars)?
        }
    }
    .context("no training summary")?;
    let text = serde_json::to_string_pretty(&summary).context("serialising the summary")?;
    let path = args.out.join(SUMMARY_FILE);
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("{text}");
    Ok(())
}

fn engine_for(config: &RunConfig) -> Result<EmbeddedEngine> {
    crate::engine::set_threads(config.threads);
    let pass = |pass| match pass {
        TrainingPass::Fused => TrainPass::Fused,
        TrainingPass::Autograd => TrainPass::Autograd,
    };
    let training = match &config.model {
        ModelConfig::Pretrained(p) => TrainingSettings {
            micro_batch_tokens: Some(p.micro_batch_tokens),
            pass: pass(p.training_pass),
            checkpoint_layers: p.activation_checkpointing,
        },
        ModelConfig::Embedded(e) => TrainingSettings { pass: pass(e.training_pass), ..TrainingSettings::default() },
    };
    Ok(EmbeddedEngine::new(config.model.max_batch(), training).with_calculator(config.model.calculator()))
}

/// Evaluates a saved model on a config's held-out split.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let config = RunConfig::load(&args.config)?;
    // The output file is made ready before the work, so that a path that cannot be written fails
    // at once instead of after the evaluation.
    let samples = args.samples.as_deref().map(PendingFile::create).transpose()?;
    let engine = engine_for(&config)?;
    let mut model = engine.load(&args.model)?;
    let task = tasks::build(&config.task, config.seed)?;
    let bars = Bars::new();
    let seed = seeds::derive(config.seed, "eval", 0);
    let (report, records, _) = flywheel_loop::eval::evaluate(task.as_ref(), &mut model, &config.eval, seed, &bars)?;
    // The report first: a failure writing the samples must not lose it.
    println!("{}", serde_json::to_string_pretty(&report).context("serialising the report")?);
    if let Some(file) = samples {
        let path = file.path().to_owned();
        file.commit(&jsonl_bytes(&records)).with_context(|| format!("writing the samples to {}", path.display()))?;
    }
    Ok(())
}

/// Prints a run's accuracy and data tables, or several runs side by side.
pub fn report(args: &ReportArgs) -> Result<()> {
    // Made ready first, so that a path that cannot be written fails before the runs are read.
    let html = args.html.as_deref().map(PendingFile::create).transpose()?;
    let mut runs = Vec::new();
    for dir in &args.run_dirs {
        let run = RunReport::read(dir)?;
        anyhow::ensure!(!run.rows.is_empty(), "{}: no iteration has been evaluated yet", dir.display());
        runs.push(run);
    }
    match &runs[..] {
        [run] => print!("{}\n{}\n{}", report::render(&run.rows), report::render_data(run), report::render_quality(run)),
        _ => {
            for run in &runs {
                let quality = report::render_quality(run);
                print!("{}\n{}{}\n{quality}", run.name, report::render(&run.rows), report::render_data(run));
            }
            print!("{}", report::render_side_by_side(&runs));
        }
    }
    if let Some(file) = html {
        let path = file.path().to_owned();
        file.commit(report::render_html(&runs).as_bytes())?;
        tracing::info!("wrote {}", path.display());
    }
    Ok(())
}

/// Merges an adapter into its base (or converts a GGUF file) and writes a Hugging Face directory,
/// or, for an output path ending in `.gguf`, a GGUF file with the base GGUF's metadata.
pub fn export(args: &ExportArgs) -> Result<()> {
    let mut model =
        flywheel_engine::Engine::open(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let gguf = args.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !gguf && (args.base.is_some() || !matches!(args.weights, GgufWeightsArg::Q8_0)) {
        bail!("--base and --weights apply to a GGUF export only: name an output file ending in .gguf");
    }
    if gguf {
        let weights = match args.weights {
            GgufWeightsArg::F32 => flywheel_engine::GgufWeights::F32,
            GgufWeightsArg::F16 => flywheel_engine::GgufWeights::F16,
            GgufWeightsArg::Q8_0 => flywheel_engine::GgufWeights::Q8_0,
        };
        model
            .export_gguf(args.base.as_deref(), &args.out, weights)
            .with_context(|| format!("writing {}", args.out.display()))?;
    } else {
        model.merge_lora()?;
        model.save(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    }
    tracing::info!("wrote {}", args.out.display());
    Ok(())
}
