//! The embedded candle engine behind the loop's [`flywheel_loop::Engine`] trait.

use std::path::Path;

use flywheel_engine::{Engine as Model, LlamaConfig, LoraConfig, Proj};
use flywheel_loop::config::{ModelConfig, PretrainedModelConfig};
use flywheel_loop::{RunConfig, Task};

/// Creates and loads embedded models with the run's sampler settings.
#[derive(Debug, Clone)]
pub struct EmbeddedEngine {
    max_batch: usize,
    micro_batch_tokens: Option<usize>,
}

impl EmbeddedEngine {
    /// An engine that decodes at most `max_batch` sequences at once and, when given, trains on
    /// micro-batches of at most `micro_batch_tokens` padded tokens.
    pub fn new(max_batch: usize, micro_batch_tokens: Option<usize>) -> Self {
        Self { max_batch, micro_batch_tokens }
    }

    fn configure(&self, mut model: Model) -> Model {
        model.sampler.max_batch = self.max_batch;
        if let Some(tokens) = self.micro_batch_tokens {
            model.train.micro_batch_tokens = tokens;
        }
        model
    }

    fn pretrained(&self, config: &PretrainedModelConfig, seed: u64) -> flywheel_loop::Result<Model> {
        let mut model = Model::open(&config.path).map_err(|e| e.into_generation())?;
        tracing::info!("loaded {}: {} parameters", config.path.display(), model.model().config().num_parameters());
        if let Some(lora) = &config.lora {
            let targets = lora.target_modules.iter().filter_map(|m| Proj::from_module(m)).collect();
            let lora = LoraConfig { rank: lora.rank, alpha: lora.alpha, dropout: lora.dropout, targets };
            model.attach_lora(lora, seed).map_err(|e| e.into_training())?;
        }
        Ok(self.configure(model))
    }
}

impl flywheel_loop::Engine for EmbeddedEngine {
    type Model = Model;

    fn fresh(&mut self, config: &RunConfig, task: &dyn Task, seed: u64) -> flywheel_loop::Result<Model> {
        let embedded = match &config.model {
            ModelConfig::Embedded(embedded) => embedded,
            ModelConfig::Pretrained(pretrained) => return self.pretrained(pretrained, seed),
        };
        let a = &embedded.architecture;
        let shape = |vocab_size| LlamaConfig {
            hidden_size: a.hidden_size,
            intermediate_size: a.intermediate_size,
            num_hidden_layers: a.num_hidden_layers,
            num_attention_heads: a.num_attention_heads,
            num_key_value_heads: Some(a.num_key_value_heads),
            rope_theta: a.rope_theta,
            max_position_embeddings: a.max_position_embeddings,
            tie_word_embeddings: a.tie_word_embeddings,
            ..LlamaConfig::tiny(vocab_size)
        };
        let model = Model::new_char_level(&task.alphabet(), shape, seed).map_err(|e| e.into_generation())?;
        tracing::info!("fresh model: {} parameters", model.model().config().num_parameters());
        Ok(self.configure(model))
    }

    fn load(&mut self, dir: &Path) -> flywheel_loop::Result<Model> {
        let model = Model::open(dir).map_err(|e| e.into_generation())?;
        Ok(self.configure(model))
    }
}

/// Sets the worker threads of candle's matrix products and the engine's rayon pool (both read
/// `RAYON_NUM_THREADS`); 0 means every core. Always set, because candle otherwise re-reads the CPU
/// count on every matrix product. Must run before the first product.
pub fn set_threads(threads: usize) {
    let threads = if threads > 0 { threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}
