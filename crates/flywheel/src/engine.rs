//! The embedded candle engine behind both of the loop's seams: it opens generators on checkpoints
//! ([`GeneratorBackend`]) and creates and fine-tunes them ([`TrainerBackend`]).

use std::path::Path;
use std::sync::Arc;

use flywheel_core::{Checkpoint, Generator, Reporter, TrainSummary, Trainer};
use flywheel_engine::{Engine as Model, LoraConfig, ModelConfig as DecoderConfig, Proj, TrainPass};
use flywheel_loop::config::{ModelConfig, PretrainedModelConfig};
use flywheel_loop::tools::Calculator;
use flywheel_loop::{GeneratorBackend, Phase, RunConfig, Task, TrainerBackend};

/// How the embedded engine trains, beyond the optimiser's settings.
#[derive(Debug, Clone, Default)]
pub struct TrainingSettings {
    /// Most tokens per forward pass (the engine's default when `None`).
    pub micro_batch_tokens: Option<usize>,
    /// Which pass computes the gradients.
    pub pass: TrainPass,
    /// With the autograd pass: recompute each layer's activations in the backward pass.
    pub checkpoint_layers: bool,
}

/// Creates and loads embedded models with the run's sampler and trainer settings.
#[derive(Debug, Clone)]
pub struct EmbeddedEngine {
    max_batch: usize,
    training: TrainingSettings,
    calculator: bool,
}

impl EmbeddedEngine {
    /// An engine that decodes at most `max_batch` sequences at once and trains as `training` says.
    pub fn new(max_batch: usize, training: TrainingSettings) -> Self {
        Self { max_batch, training, calculator: false }
    }

    /// The same engine whose sampler writes with a [`Calculator`] when `on`.
    pub fn with_calculator(self, on: bool) -> Self {
        Self { calculator: on, ..self }
    }

    fn configure(&self, mut model: Model) -> Model {
        model.sampler.max_batch = self.max_batch;
        if self.calculator {
            model.tool = Some(Arc::new(Calculator));
        }
        if let Some(tokens) = self.training.micro_batch_tokens {
            model.train.micro_batch_tokens = tokens;
        }
        model.train.pass = self.training.pass;
        model.train.checkpoint_layers = self.training.checkpoint_layers;
        model
    }

    fn pretrained(&self, config: &PretrainedModelConfig, seed: u64) -> flywheel_loop::Result<Model> {
        let mut model = Model::open(&config.path).map_err(|e| e.into_load())?;
        tracing::info!("loaded {}: {} parameters", config.path.display(), model.model().config().num_parameters());
        if let Some(lora) = &config.lora {
            let targets = lora.target_modules.iter().filter_map(|m| Proj::from_module(m)).collect();
            let lora = LoraConfig { rank: lora.rank, alpha: lora.alpha, dropout: lora.dropout, targets };
            model.attach_lora(lora, seed).map_err(|e| e.into_load())?;
        }
        Ok(self.configure(model))
    }
}

impl EmbeddedEngine {
    /// The model `config` starts from: a fresh one whose tokenizer covers `task`'s alphabet, or the
    /// pretrained one (with fresh LoRA adapters when configured).
    fn fresh(&self, config: &RunConfig, task: &dyn Task, seed: u64) -> flywheel_loop::Result<Model> {
        let embedded = match &config.model {
            ModelConfig::Embedded(embedded) => embedded,
            ModelConfig::Pretrained(pretrained) => return self.pretrained(pretrained, seed),
        };
        let a = &embedded.architecture;
        let shape = |vocab_size| DecoderConfig {
            hidden_size: a.hidden_size,
            intermediate_size: a.intermediate_size,
            num_hidden_layers: a.num_hidden_layers,
            num_attention_heads: a.num_attention_heads,
            num_key_value_heads: Some(a.num_key_value_heads),
            rope_theta: a.rope_theta,
            max_position_embeddings: a.max_position_embeddings,
            tie_word_embeddings: Some(a.tie_word_embeddings),
            ..DecoderConfig::tiny(vocab_size)
        };
        let model = Model::new_char_level(&task.alphabet(), shape, seed).map_err(|e| e.into_load())?;
        tracing::info!("fresh model: {} parameters", model.model().config().num_parameters());
        Ok(self.configure(model))
    }

    /// A model saved earlier with [`Checkpoint::save`].
    pub fn load(&self, dir: &Path) -> flywheel_loop::Result<Model> {
        let model = Model::open(dir).map_err(|e| e.into_load())?;
        Ok(self.configure(model))
    }
}

impl GeneratorBackend for EmbeddedEngine {
    fn open(&mut self, checkpoint: &Path) -> flywheel_loop::Result<Box<dyn Generator>> {
        Ok(Box::new(self.load(checkpoint)?))
    }
}

impl TrainerBackend for EmbeddedEngine {
    fn init(
        &mut self,
        config: &RunConfig,
        task: &dyn Task,
        seed: u64,
        seed_set: Option<Phase<'_>>,
        out: &Path,
        reporter: &dyn Reporter,
    ) -> flywheel_loop::Result<Option<TrainSummary>> {
        let mut model = self.fresh(config, task, seed)?;
        let summary = match seed_set {
            Some(phase) => Some(model.train(phase.examples, &phase.params, reporter)?),
            None => None,
        };
        Checkpoint::save(&model, out)?;
        Ok(summary)
    }

    fn train(
        &mut self,
        start: &Path,
        phases: &[Phase<'_>],
        out: &Path,
        reporter: &dyn Reporter,
    ) -> flywheel_loop::Result<Vec<TrainSummary>> {
        let mut model = self.load(start)?;
        let mut summaries = Vec::with_capacity(phases.len());
        for phase in phases {
            summaries.push(model.train(phase.examples, &phase.params, reporter)?);
        }
        Checkpoint::save(&model, out)?;
        Ok(summaries)
    }
}

/// Sets the worker threads of candle's matrix products and the engine's rayon pool (both read
/// `RAYON_NUM_THREADS`); 0 means every core. Always set, because candle otherwise re-reads the CPU
/// count on every matrix product. Must run before the first product.
pub fn set_threads(threads: usize) {
    let threads = if threads > 0 { threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}
