//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use flywheel_verify::Format;

/// Make a language model improve itself by generating its own training data.
#[derive(Debug, Parser)]
#[command(name = "flywheel", version, about)]
pub struct Cli {
    /// More logging on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a run: train or load the base model, then improve it for the configured iterations.
    Run(RunArgs),
    /// Continue a stopped run from its last finished iteration (its config.toml may change only in
    /// iterations, threads, [early-stop], [watch] and [generator] once an iteration finished).
    Resume(ResumeArgs),
    /// Evaluate a saved model on a config's held-out split; prints eval JSON to stdout.
    Eval(EvalArgs),
    /// Print a run's accuracy per iteration and bucket and what each iteration kept; several runs
    /// side by side.
    Report(ReportArgs),
    /// Judge completions against gold answers (JSONL in, JSONL out).
    Judge(JudgeArgs),
    /// Measure throughput of flywheel's parts.
    Bench(BenchArgs),
    /// Write a model as a Hugging Face directory or a GGUF file (--out X.gguf); a LoRA adapter is
    /// merged into its base first.
    Export(ExportArgs),
    /// Fine-tune a config's model on a chat JSONL file and write the checkpoint (or LoRA adapter):
    /// the embedded trainer as a command, for `[trainer] type = "command"`.
    Train(TrainArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (/v1/models, /v1/completions,
    /// /v1/chat/completions), batching concurrent requests into the sampler.
    Serve(ServeArgs),
}

/// Arguments of `flywheel serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A GGUF file, a Hugging Face directory, or a PEFT adapter directory (a run's iter-NNNN/model).
    pub model: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port to listen on.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model's name in the API [default: the file or directory name, without .gguf].
    #[arg(long)]
    pub name: Option<String>,
    /// Worker threads of the sampler (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Most sequences decoded at once.
    #[arg(long, default_value_t = 64, value_parser = at_least_one())]
    pub max_batch: usize,
}

/// Arguments of `flywheel train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run config whose [model] and [training] are used.
    pub config: PathBuf,
    /// Training examples: chat JSONL, one `{"messages": [...]}` per line.
    #[arg(long)]
    pub data: PathBuf,
    /// The directory to write the trained checkpoint to (with `train-summary.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// A checkpoint to start from [default: the config's model as iteration 0 has it: the
    /// pretrained model with fresh LoRA adapters, or a fresh model].
    #[arg(long)]
    pub start: Option<PathBuf>,
    /// Optimiser steps [default: [training] steps].
    #[arg(long, value_parser = at_least_one())]
    pub steps: Option<usize>,
    /// Seed of the batch order (and fresh adapters) [default: derived from the config's seed].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Arguments of `flywheel export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A PEFT adapter directory (its base found through `base_model_name_or_path`), a GGUF file
    /// or a Hugging Face directory.
    pub model: PathBuf,
    /// Where to write: a path ending in `.gguf` gets one llama.cpp GGUF file (for llama-server,
    /// ollama, ...), anything else a Hugging Face directory (`model.safetensors`, `config.json`,
    /// `tokenizer.json`, `tokenizer_config.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// For a GGUF export: the GGUF file the model was trained from, whose metadata (tokenizer,
    /// chat template, hyperparameters) the export copies [default: the GGUF the model was loaded
    /// from, or an adapter's base when it is one].
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// For a GGUF export: how the weight matrices are stored.
    #[arg(long, value_enum, default_value_t = GgufWeightsArg::Q8_0)]
    pub weights: GgufWeightsArg,
}

/// How a GGUF export stores its weight matrices.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GgufWeightsArg {
    /// 32-bit floats, the trained weights exactly.
    F32,
    /// 16-bit floats.
    F16,
    /// llama.cpp's 8-bit blocks (about a quarter of f32's size).
    #[value(name = "q8_0")]
    Q8_0,
}

/// Arguments of `flywheel run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The run's TOML config (see examples/).
    pub config: PathBuf,
    /// Where the run writes its files [default: runs/NAME, NAME from the config].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

/// Arguments of `flywheel resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The directory of the stopped run.
    pub run_dir: PathBuf,
    /// Raise the run's iteration count (a finished run goes on from its last iteration).
    #[arg(long, value_parser = at_least_one())]
    pub iterations: Option<usize>,
}

/// Arguments of `flywheel eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The config whose task (and held-out split) to evaluate on.
    pub config: PathBuf,
    /// The model directory (for example runs/NAME/iter-0003/model).
    #[arg(long)]
    pub model: PathBuf,
    /// Also write every judged completion as JSONL to this file.
    #[arg(long)]
    pub samples: Option<PathBuf>,
}

/// Arguments of `flywheel report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run directories; several are also shown side by side.
    #[arg(required = true)]
    pub run_dirs: Vec<PathBuf>,
    /// Also write the report as one self-contained HTML page (inline SVG charts, no network).
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
}

const FORMAT_HELP: &str = "How completions mark their final answer:
  auto         every explicit marker below but last-number; the one that starts last wins
  gsm8k        the rest of the line after the last '####'
  boxed        the last \\boxed{...} or \\fbox{...} (nested braces)
  answer-is    'the answer is X' / 'the final answer is: X', to the end of the sentence
  final-line   the last line starting 'A:', 'Answer:' or 'Final answer:'
  last-number  the last number in the text";

/// Arguments of `flywheel judge`.
#[derive(Debug, Args)]
#[command(after_help = "Each input line is a JSON object with a string field `completion` and a string field \
`gold` (a bare answer such as \"18\", or a whole worked solution ending in \"#### 18\"). Each output line \
keeps every input field and adds `extracted` (the answer span found, or null) and `correct` (bool).\n\n\
Numbers compare as numbers: 1,234 = $1234.00, 3/4 = 0.75, 25% = 25, '18 dollars' = 18; integers exactly, \
other numbers within a relative 1e-9. Text compares as a whole, lower-cased, white space collapsed: \
never as a substring. An empty or missing answer is never correct.")]
pub struct JudgeArgs {
    /// JSONL file to judge; `-` reads standard input.
    #[arg(long, short)]
    pub input: PathBuf,
    #[arg(long, short, default_value_t = Format::Auto, long_help = FORMAT_HELP)]
    /// How completions mark their final answer (see --help).
    pub format: Format,
    /// Where no marker of the format is found, take the last number of the completion.
    #[arg(long)]
    pub last_number_fallback: bool,
    /// Pass malformed lines through with an `error` field instead of stopping.
    #[arg(long)]
    pub keep_going: bool,
}

/// Arguments of `flywheel bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub what: BenchTarget,
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// Judged completions per second on one core (the verifier alone, no JSON).
    Judge {
        /// GSM8K-style JSONL with `answer` fields (worked solutions); their texts are the completions.
        #[arg(long, default_value = "data/gsm8k/test.jsonl")]
        data: PathBuf,
        /// Seconds to measure for.
        #[arg(long, default_value_t = 3.0, value_parser = positive_seconds)]
        seconds: f64,
    },
    /// Sampling throughput of the embedded engine: k samples of one chat prompt, fixed length
    /// (end-of-sequence ignored), prints one JSON line (tokens/s of generated tokens).
    Sampling {
        /// A GGUF file or a Hugging Face model directory.
        #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: PathBuf,
        /// Samples of the one prompt, decoded together.
        #[arg(long, default_value_t = 8, value_parser = at_least_one())]
        samples: usize,
        /// New tokens per sample.
        #[arg(long, default_value_t = 128, value_parser = at_least_one())]
        new_tokens: usize,
        /// Worker threads (0: all cores).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Timed repetitions (the best is reported; one untimed warm-up runs first).
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        repeat: usize,
        /// Words of context put before the request (STaR's few-shot prompts are about 330 tokens,
        /// which makes attention a larger part of each step).
        #[arg(long, default_value_t = 0)]
        context_words: usize,
    },
    /// LoRA fine-tuning throughput of the embedded engine: steps of `batch` sequences of `seq-len`
    /// tokens (every token a target, as a language-modelling peer measures), prints one JSON line.
    Train {
        /// A GGUF file or a Hugging Face model directory.
        #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
        model: PathBuf,
        /// Sequences per step.
        #[arg(long, default_value_t = 4, value_parser = at_least_one())]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128, value_parser = at_least_one())]
        seq_len: usize,
        /// LoRA rank (0: full fine-tuning).
        #[arg(long, default_value_t = 16)]
        rank: usize,
        /// The pass that computes the gradients: `fused` (written out, packed sequences) or
        /// `autograd` (candle's graph, the reference).
        #[arg(long, default_value = "fused", value_parser = ["fused", "autograd"])]
        pass: String,
        /// With `--pass autograd`: keep every layer's activations instead of recomputing them in
        /// the backward pass.
        #[arg(long)]
        no_checkpoint: bool,
        /// Timed optimiser steps (one untimed warm-up step runs first).
        #[arg(long, default_value_t = 5, value_parser = at_least_one())]
        steps: usize,
        /// Worker threads (0: all cores).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Near-duplicate filtering at scale: builds a corpus of short texts (200-400 characters) with
    /// near-duplicates planted at known Jaccard levels, finds the pairs at or above the threshold
    /// (MinHash + LSH, candidates verified exactly), prints one JSON line: seconds of the search
    /// (the corpus's construction not included), recall per similarity band and at the threshold,
    /// precision.
    Dedup {
        /// Texts in the corpus.
        #[arg(long, default_value_t = 1_000_000, value_parser = at_least_one())]
        docs: usize,
        /// Fraction of the texts that are edited copies of others, spread over similarity bands
        /// 0.50-0.55 ... 0.95-1.00.
        #[arg(long, default_value_t = 0.1)]
        duplicates: f64,
        /// Pairs at or above this Jaccard similarity are near-duplicates.
        #[arg(long, default_value_t = 0.7)]
        threshold: f64,
        /// MinHash hash functions.
        #[arg(long, default_value_t = 128, value_parser = at_least_one())]
        num_perm: usize,
        /// LSH bands (`num-perm` must be a multiple).
        #[arg(long, default_value_t = 32, value_parser = at_least_one())]
        bands: usize,
        /// Worker threads (0: all cores).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

/// A count that must be at least 1.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// A duration in seconds: a finite number above 0.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        Ok(s) => Err(format!("must be a number of seconds above 0, got {s}")),
        Err(e) => Err(e.to_string()),
    }
}
