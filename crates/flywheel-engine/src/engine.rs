//! [`Engine`]: a model, its tokenizer and its prompt format behind the core traits.
//!
//! This is what the loop holds: it samples through [`Generator`], fine-tunes through [`Trainer`],
//! saves and loads Hugging Face checkpoint directories, and resets to a base checkpoint (the loop
//! fine-tunes from the base model every iteration). Engine errors become
//! [`flywheel_core::CoreError`]s here, at the trait boundary.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flywheel_core::{
    Completion, GenerationRequest, Generator, LogLikelihood, Message, Reporter, Role, SamplingParams, Tool,
    TrainExample, TrainSummary, Trainer, TrainingParams,
};

use crate::error::{EngineError, Result};
use crate::formats::adapter::{load_adapter, save_adapter, AdapterConfig, ADAPTER_CONFIG_FILE};
use crate::formats::checkpoint::{load_checkpoint, read_chat_template, save_checkpoint, write_tokenizer_config};
use crate::formats::gguf::load_gguf;
use crate::formats::gguf_write::{write_gguf, GgufWeights};
use crate::model::config::{ModelConfig, TokenIds};
use crate::model::lora::LoraConfig;
use crate::model::DecoderModel;
use crate::sample::generate::{generate, SamplerContext, SamplerOptions, TextSink};
use crate::sample::infer::InferenceModel;
use crate::text::chat_template::ChatTemplate;
use crate::text::template::{tokenize_example, PromptFormat, RawFormat, TokenizedExample};
use crate::text::tokenizer::{TextTokenizer, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN};
use crate::train::batch::summed_loss;
use crate::train::{train, TrainOptions};

/// The embedded candle engine: model, tokenizer, prompt format, sampler and trainer settings.
#[derive(Debug)]
pub struct Engine {
    model: DecoderModel,
    tokenizer: TextTokenizer,
    format: Box<dyn PromptFormat>,
    /// The chat template's source, when the format is one (written with exported checkpoints).
    chat_template: Option<String>,
    /// Where the base model was loaded from (recorded in saved adapters).
    source: Option<PathBuf>,
    /// How the sampler batches.
    pub sampler: SamplerOptions,
    /// Optimiser settings of the trainer.
    pub train: TrainOptions,
    /// A tool that writes parts of each sampled completion in the model's place (a calculator);
    /// `None`: the model writes all of it.
    pub tool: Option<Arc<dyn Tool>>,
}

impl Engine {
    /// Wraps a model and its tokenizer, with the raw (concatenation) prompt format. The config
    /// must name an end-of-sequence id and cover the tokenizer's vocabulary.
    pub fn new(model: DecoderModel, tokenizer: TextTokenizer) -> Result<Self> {
        let c = model.config();
        if tokenizer.vocab_size() > c.vocab_size {
            return Err(EngineError::config(
                "vocab_size",
                format!("{} is smaller than the tokenizer's {} ids", c.vocab_size, tokenizer.vocab_size()),
            ));
        }
        if c.eos_ids().is_empty() {
            return Err(EngineError::config("eos_token_id", "the engine needs an end-of-sequence id"));
        }
        let pad_id = tokenizer.token_id(PAD_TOKEN).unwrap_or(c.eos_ids()[0]);
        let train = TrainOptions { pad_id, ..TrainOptions::default() };
        let sampler =
            SamplerOptions { weights: default_weight_format(c.num_parameters()), ..SamplerOptions::default() };
        Ok(Self {
            model,
            tokenizer,
            format: Box::new(RawFormat),
            chat_template: None,
            source: None,
            sampler,
            train,
            tool: None,
        })
    }

    /// A freshly initialised character-level model over `alphabet`: the tokenizer of
    /// [`TextTokenizer::char_level`] and `config(vocab_size)` with its special ids filled in (for
    /// example `ModelConfig::tiny`).
    pub fn new_char_level(alphabet: &str, config: impl FnOnce(usize) -> ModelConfig, seed: u64) -> Result<Self> {
        let tokenizer = TextTokenizer::char_level(alphabet)?;
        let mut config = config(tokenizer.vocab_size());
        config.bos_token_id = tokenizer.token_id(BOS_TOKEN);
        config.eos_token_id = tokenizer.token_id(EOS_TOKEN).map(TokenIds::One);
        Self::new(DecoderModel::new_random(&config, seed)?, tokenizer)
    }

    /// Loads a checkpoint directory (`config.json`, `*.safetensors`, `tokenizer.json`), with the
    /// chat template of its `tokenizer_config.json` when it has one. A PEFT adapter directory
    /// (`adapter_config.json`) loads its base model and attaches the adapter.
    pub fn load(dir: &Path) -> Result<Self> {
        if dir.join(ADAPTER_CONFIG_FILE).exists() {
            let base = AdapterConfig::load(dir)?.base_model(dir)?;
            let mut engine = Self::open(&base)?;
            load_adapter(dir, &mut engine.model)?;
            return Ok(engine);
        }
        let (model, tokenizer) = load_checkpoint(dir)?;
        let template = read_chat_template(dir)?;
        let mut engine = Self::new(model, tokenizer)?.with_chat_template(template.as_deref())?;
        engine.source = Some(absolute(dir));
        Ok(engine)
    }

    /// Loads a llama.cpp GGUF file (weights dequantized to `f32`), with its chat template.
    pub fn load_gguf(path: &Path) -> Result<Self> {
        let gguf = load_gguf(path)?;
        let model = DecoderModel::from_tensors(&gguf.config, gguf.tensors, path)?;
        let mut engine = Self::new(model, gguf.tokenizer)?.with_chat_template(gguf.chat_template.as_deref())?;
        engine.source = Some(absolute(path));
        Ok(engine)
    }

    /// Loads a model from a GGUF file, a checkpoint directory or an adapter directory, whichever
    /// `path` is.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::load(path)
        } else {
            Self::load_gguf(path)
        }
    }

    /// Uses `template` (Jinja source) as the prompt format; `None` keeps the current one.
    fn with_chat_template(mut self, template: Option<&str>) -> Result<Self> {
        let Some(source) = template else { return Ok(self) };
        let (bos, eos) = self.special_texts();
        let template = ChatTemplate::new(source, &bos, &eos)?;
        self.chat_template = Some(source.to_owned());
        Ok(self.with_format(Box::new(template)))
    }

    /// The texts of the beginning- and end-of-sequence tokens (empty where the model has none), as
    /// chat templates and `tokenizer_config.json` name them.
    fn special_texts(&self) -> (String, String) {
        let c = self.model.config();
        let text = |id: Option<u32>| id.and_then(|id| self.tokenizer.token_text(id)).unwrap_or_default();
        (text(c.bos_token_id), text(c.eos_ids().first().copied()))
    }

    /// Attaches fresh LoRA adapters drawn from `seed` (the model's output is unchanged until they
    /// train); from now on training updates only them.
    pub fn attach_lora(&mut self, config: LoraConfig, seed: u64) -> Result<()> {
        self.model.attach_lora(config, seed)
    }

    /// Folds the adapters into the base weights, so that [`Engine::save`] writes a whole model.
    pub fn merge_lora(&mut self) -> Result<()> {
        self.model.merge_lora()
    }

    /// Saves the model to `dir`: the adapters in PEFT's format when LoRA is attached (the base
    /// model's path recorded in `adapter_config.json`), else a Hugging Face checkpoint directory
    /// (weights, `config.json`, `tokenizer.json`, and `tokenizer_config.json` with the chat
    /// template when there is one).
    pub fn save(&self, dir: &Path) -> Result<()> {
        if self.model.lora_config().is_some() {
            let base = self.source.as_ref().ok_or_else(|| {
                EngineError::Adapter("the base model was not loaded from a file: save it first".into())
            })?;
            return save_adapter(dir, &self.model, &base.to_string_lossy());
        }
        save_checkpoint(dir, &self.model, &self.tokenizer)?;
        if let Some(template) = &self.chat_template {
            let (bos, eos) = self.special_texts();
            write_tokenizer_config(dir, template, &bos, &eos)?;
        }
        Ok(())
    }

    /// Writes the model, adapters merged, as a GGUF file for llama.cpp ([`write_gguf`]): the
    /// metadata (tokenizer, chat template, hyperparameters) and tensor list come from `base`, or,
    /// when `None`, from the GGUF file this model was loaded from (directly, or as the base of the
    /// adapter directory it was loaded from).
    pub fn export_gguf(&self, base: Option<&Path>, out: &Path, weights: GgufWeights) -> Result<()> {
        let base = match (base, &self.source) {
            (Some(base), _) => base.to_path_buf(),
            (None, Some(source)) if source.is_file() => source.clone(),
            (None, source) => {
                return Err(EngineError::invalid(format!(
                    "a GGUF export copies the tokenizer and metadata of the GGUF file the model was trained from, \
                     and {} is not one: name that file (flywheel export --base FILE.gguf), or convert the \
                     Hugging Face directory with llama.cpp's convert_hf_to_gguf.py",
                    source.as_deref().map_or("this model".into(), |s| s.display().to_string())
                )))
            }
        };
        write_gguf(&self.model, &base, out, weights)
    }

    /// Resets attached adapters to fresh ones drawn from `seed`: back to the base model without
    /// reloading it.
    pub fn reset_lora(&self, seed: u64) -> Result<()> {
        self.model.reset_lora(seed)
    }

    /// Overwrites the weights with those of the checkpoint in `dir` (which must have the same
    /// config), keeping this engine's settings: how the loop returns to its base model.
    pub fn reset_from(&mut self, dir: &Path) -> Result<()> {
        let (base, _) = load_checkpoint(dir)?;
        self.model.copy_weights_from(&base)
    }

    /// Replaces the prompt format (the raw format is the default).
    pub fn with_format(mut self, format: Box<dyn PromptFormat>) -> Self {
        self.format = format;
        self
    }

    /// The model.
    pub fn model(&self) -> &DecoderModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The prompt format.
    pub fn format(&self) -> &dyn PromptFormat {
        self.format.as_ref()
    }

    /// Samples completions of prompts that are already rendered in the model's format (the
    /// [`Generator`] implementation renders each request as a user turn, after its context turns, first).
    pub fn sample(
        &self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Vec<Completion>>> {
        self.prepare_sampler()?.sample(requests, params, None, reporter)
    }

    /// The model prepared for sampling (its weights converted to the sampler's format once), for
    /// a caller that samples many times from the same weights, such as a server.
    pub fn prepare_sampler(&self) -> Result<PreparedSampler<'_>> {
        Ok(PreparedSampler { engine: self, model: InferenceModel::new(&self.model, self.sampler.weights)? })
    }

    /// Fine-tunes on `examples` (the engine-error form of [`Trainer::train`]).
    pub fn fine_tune(
        &self,
        examples: &[TrainExample],
        params: &TrainingParams,
        reporter: &dyn Reporter,
    ) -> Result<TrainSummary> {
        let tokenized = self.tokenize_all(examples, "training example")?;
        train(&self.model, &tokenized, params, &self.train, reporter)
    }

    /// Scores `examples` as training sees them (the engine-error form of
    /// [`Generator::log_likelihood`]): the summed negative log-likelihood of their target tokens
    /// under the current model, adapters included.
    pub fn log_likelihood(&self, examples: &[TrainExample]) -> Result<LogLikelihood> {
        let tokenized = self.tokenize_all(examples, "scored example")?;
        let refs: Vec<&TokenizedExample> = tokenized.iter().collect();
        let (nll, tokens) = summed_loss(&self.model, &refs, self.train.micro_batch_tokens, self.train.pad_id)?;
        Ok(LogLikelihood { nll, tokens })
    }

    /// `examples` tokenized in the engine's format, each cut to the model's context; `what` names
    /// an example in errors.
    fn tokenize_all(&self, examples: &[TrainExample], what: &str) -> Result<Vec<TokenizedExample>> {
        let c = self.model.config();
        let eos = c.eos_ids()[0];
        examples
            .iter()
            .enumerate()
            .map(|(i, ex)| {
                let mut t = tokenize_example(&self.tokenizer, self.format.as_ref(), ex, eos)
                    .map_err(|e| EngineError::invalid(format!("{what} {i}: {e}")))?;
                t.ids.truncate(c.max_position_embeddings + 1);
                t.target.truncate(c.max_position_embeddings + 1);
                Ok(t)
            })
            .collect()
    }
}

/// An [`Engine`]'s model prepared for sampling ([`Engine::prepare_sampler`]).
pub struct PreparedSampler<'a> {
    engine: &'a Engine,
    model: InferenceModel,
}

impl std::fmt::Debug for PreparedSampler<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSampler").finish_non_exhaustive()
    }
}

impl PreparedSampler<'_> {
    /// Samples completions of rendered prompts, as [`Engine::sample`] does. With `seeds` (one
    /// per request), request `i` draws its samples under `seeds[i]`, exactly as it would alone,
    /// whatever it is batched with; without, every request draws under `params.seed`.
    pub fn sample(
        &self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        seeds: Option<&[u64]>,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Vec<Completion>>> {
        self.run(requests, params, seeds, None, reporter)
    }

    /// [`PreparedSampler::sample`], handing each sequence's text to `sink` as it is decoded
    /// (the same completions are returned at the end).
    pub fn sample_streaming(
        &self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        seeds: Option<&[u64]>,
        sink: &dyn TextSink,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Vec<Completion>>> {
        self.run(requests, params, seeds, Some(sink), reporter)
    }

    fn run(
        &self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        seeds: Option<&[u64]>,
        sink: Option<&dyn TextSink>,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Vec<Completion>>> {
        if seeds.is_some_and(|s| s.len() != requests.len()) {
            return Err(EngineError::invalid("one seed per request is needed"));
        }
        let c = self.engine.model.config();
        let eos_ids = c.eos_ids();
        let ctx = SamplerContext {
            model: &self.model,
            tokenizer: &self.engine.tokenizer,
            eos_ids: &eos_ids,
            bos_id: c.bos_token_id,
            max_positions: c.max_position_embeddings,
            options: &self.engine.sampler,
            seeds,
            sink,
            tool: self.engine.tool.as_deref(),
        };
        generate(&ctx, requests, params, reporter)
    }
}

/// Models at least this large sample with Q8_0 weights by default.
const Q8_MIN_PARAMETERS: usize = 10_000_000;

/// Q8_0 for models large enough that decoding is bound by reading their weights (SmolLM2-135M:
/// 540 MB of `f32` per step); `f32` for small ones, where gemm's `f32` kernels are faster and the
/// weights fit in cache (the 0.26M-parameter addition model sampled several times slower with Q8_0).
fn default_weight_format(parameters: usize) -> crate::sample::quant::WeightFormat {
    if parameters >= Q8_MIN_PARAMETERS {
        crate::sample::quant::WeightFormat::Q8_0
    } else {
        crate::sample::quant::WeightFormat::F32
    }
}

/// `path` made absolute (against the working directory), so a saved adapter finds its base from anywhere.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

impl Generator for Engine {
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        reporter: &dyn Reporter,
    ) -> flywheel_core::Result<Vec<Vec<Completion>>> {
        let rendered = requests
            .iter()
            .map(|r| {
                let mut messages = r.context.clone();
                messages.push(Message { role: Role::User, content: r.prompt.clone() });
                Ok(GenerationRequest::new(self.format.render_prompt(&messages)?, r.n))
            })
            .collect::<Result<Vec<_>>>()
            .map_err(EngineError::into_generation)?;
        self.sample(&rendered, params, reporter).map_err(EngineError::into_generation)
    }

    fn log_likelihood(&mut self, examples: &[TrainExample]) -> flywheel_core::Result<Option<LogLikelihood>> {
        Engine::log_likelihood(self, examples).map(Some).map_err(EngineError::into_generation)
    }
}

impl Trainer for Engine {
    fn train(
        &mut self,
        examples: &[TrainExample],
        params: &TrainingParams,
        reporter: &dyn Reporter,
    ) -> flywheel_core::Result<TrainSummary> {
        self.fine_tune(examples, params, reporter).map_err(EngineError::into_training)
    }
}

impl flywheel_core::Checkpoint for Engine {
    fn save(&self, dir: &Path) -> flywheel_core::Result<()> {
        Engine::save(self, dir).map_err(EngineError::into_save)
    }
}
