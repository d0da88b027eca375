//! [`Engine`]: a model, its tokenizer and its prompt format behind the core traits.
//!
//! This is what the loop holds: it samples through [`Generator`], fine-tunes through [`Trainer`],
//! saves and loads Hugging Face checkpoint directories, and resets to a base checkpoint (the loop
//! fine-tunes from the base model every iteration). Engine errors become
//! [`flywheel_core::CoreError`]s here, at the trait boundary.

use std::path::Path;

use flywheel_core::{
    Completion, GenerationRequest, Generator, Reporter, SamplingParams, TrainExample, TrainSummary, Trainer,
    TrainingParams,
};

use crate::checkpoint::{load_checkpoint, save_checkpoint};
use crate::config::{LlamaConfig, TokenIds};
use crate::error::{EngineError, Result};
use crate::generate::{generate, SamplerContext, SamplerOptions};
use crate::infer::InferenceModel;
use crate::model::LlamaModel;
use crate::template::{tokenize_example, PromptFormat, RawFormat};
use crate::tokenizer::{TextTokenizer, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN};
use crate::train::{train, TrainOptions};

/// The embedded candle engine: model, tokenizer, prompt format, sampler and trainer settings.
#[derive(Debug)]
pub struct Engine {
    model: LlamaModel,
    tokenizer: TextTokenizer,
    format: Box<dyn PromptFormat>,
    /// How the sampler batches.
    pub sampler: SamplerOptions,
    /// Optimiser settings of the trainer.
    pub train: TrainOptions,
}

impl Engine {
    /// Wraps a model and its tokenizer, with the raw (concatenation) prompt format. The config
    /// must name an end-of-sequence id and cover the tokenizer's vocabulary.
    pub fn new(model: LlamaModel, tokenizer: TextTokenizer) -> Result<Self> {
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
        Ok(Self { model, tokenizer, format: Box::new(RawFormat), sampler: SamplerOptions::default(), train })
    }

    /// A freshly initialised character-level model over `alphabet`: the tokenizer of
    /// [`TextTokenizer::char_level`] and `config(vocab_size)` with its special ids filled in (for
    /// example `LlamaConfig::tiny`).
    pub fn new_char_level(alphabet: &str, config: impl FnOnce(usize) -> LlamaConfig, seed: u64) -> Result<Self> {
        let tokenizer = TextTokenizer::char_level(alphabet)?;
        let mut config = config(tokenizer.vocab_size());
        config.bos_token_id = tokenizer.token_id(BOS_TOKEN);
        config.eos_token_id = tokenizer.token_id(EOS_TOKEN).map(TokenIds::One);
        Self::new(LlamaModel::new_random(&config, seed)?, tokenizer)
    }

    /// Loads a checkpoint directory (`model.safetensors`, `config.json`, `tokenizer.json`).
    pub fn load(dir: &Path) -> Result<Self> {
        let (model, tokenizer) = load_checkpoint(dir)?;
        Self::new(model, tokenizer)
    }

    /// Saves the current weights, config and tokenizer as a checkpoint directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_checkpoint(dir, &self.model, &self.tokenizer)
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
    pub fn model(&self) -> &LlamaModel {
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

    /// Samples completions (the engine-error form of [`Generator::generate`]).
    pub fn sample(
        &self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Vec<Completion>>> {
        let c = self.model.config();
        let model = InferenceModel::new(&self.model)?;
        let eos_ids = c.eos_ids();
        let ctx = SamplerContext {
            model: &model,
            tokenizer: &self.tokenizer,
            eos_ids: &eos_ids,
            bos_id: c.bos_token_id,
            max_positions: c.max_position_embeddings,
            options: &self.sampler,
        };
        generate(&ctx, requests, params, reporter)
    }

    /// Fine-tunes on `examples` (the engine-error form of [`Trainer::train`]).
    pub fn fine_tune(
        &self,
        examples: &[TrainExample],
        params: &TrainingParams,
        reporter: &dyn Reporter,
    ) -> Result<TrainSummary> {
        let c = self.model.config();
        let eos = c.eos_ids()[0];
        let tokenized = examples
            .iter()
            .enumerate()
            .map(|(i, ex)| {
                let mut t = tokenize_example(&self.tokenizer, self.format.as_ref(), ex, eos)
                    .map_err(|e| EngineError::invalid(format!("training example {i}: {e}")))?;
                t.ids.truncate(c.max_position_embeddings + 1);
                t.target.truncate(c.max_position_embeddings + 1);
                Ok(t)
            })
            .collect::<Result<Vec<_>>>()?;
        train(&self.model, &tokenized, params, &self.train, reporter)
    }
}

impl Generator for Engine {
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        reporter: &dyn Reporter,
    ) -> flywheel_core::Result<Vec<Vec<Completion>>> {
        self.sample(requests, params, reporter).map_err(EngineError::into_generation)
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
        Engine::save(self, dir).map_err(EngineError::into_training)
    }
}
