//! The two engine traits: a [`Generator`] samples completions, a [`Trainer`] learns from examples.
//!
//! Both are deliberately small. A strategy batches everything one phase needs into one call so that
//! an engine can share prompt work (the k samples of a problem share a prefill) and keep its batch
//! full.

use serde::{Deserialize, Serialize};

use crate::{Message, Reporter, Result, TrainExample};

/// How to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; `0.0` means greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling mass in `(0, 1]`; `1.0` disables it.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables it.
    pub top_k: usize,
    /// Upper bound on generated tokens per completion.
    pub max_new_tokens: usize,
    /// Strings that end a completion; the stop string itself is not part of the text.
    pub stop: Vec<String>,
    /// Seed of the sampler; the same seed, inputs and thread count give the same completions.
    pub seed: u64,
    /// Keep decoding past end-of-sequence tokens (for fixed-length benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop: Vec::new(),
            seed: 0,
            ignore_eos: false,
        }
    }
}

/// A tool the sampler consults as a completion grows: given the completion's text so far, it may
/// write the next piece in the model's place, as a calculator fills in the result of `21 + 7 =`
/// (GSM8K's solutions were sampled so: Cobbe et al. 2021). What it writes is tokenized and fed to
/// the model as if sampled, and the model goes on from there; the completion's text holds it.
pub trait Tool: Send + Sync + std::fmt::Debug {
    /// The text to append to `text` (a completion so far), or `None` to let the model go on.
    fn write(&self, text: &str) -> Option<String>;
}

/// One prompt and how many completions to draw from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRequest {
    /// The user's message. A generator renders it as one user turn in its model's prompt format
    /// (the chat template of a chat model; the text as it is for a model without one).
    pub prompt: String,
    /// Number of completions to sample from this prompt.
    pub n: usize,
    /// Earlier turns of the conversation, rendered before the prompt: worked examples of a
    /// few-shot prompt (STaR's prompt set), as alternating user and assistant messages. Empty for
    /// a single-turn prompt.
    pub context: Vec<Message>,
}

impl GenerationRequest {
    /// A single-turn request: `n` completions of `prompt`.
    pub fn new(prompt: impl Into<String>, n: usize) -> Self {
        Self { prompt: prompt.into(), n, context: Vec::new() }
    }

    /// The request with `context` rendered before its prompt.
    pub fn with_context(mut self, context: Vec<Message>) -> Self {
        self.context = context;
        self
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model emitted its end-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The generated text, without the prompt and without the stop string.
    pub text: String,
    /// Number of tokens generated.
    pub tokens: usize,
    /// Why generation ended.
    pub finish: FinishReason,
}

/// How likely a model finds a set of texts: the summed negative log-likelihood of their target
/// tokens (assistant turns and the end of sequence, as training counts them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogLikelihood {
    /// Sum over target tokens of `-ln p(token | everything before it)`, in nats.
    pub nll: f64,
    /// Target tokens scored.
    pub tokens: u64,
}

impl LogLikelihood {
    /// `exp(nll / tokens)`: the perplexity per target token; `None` when nothing was scored.
    pub fn perplexity(&self) -> Option<f64> {
        (self.tokens > 0).then(|| (self.nll / self.tokens as f64).exp())
    }
}

/// Samples completions from a model.
pub trait Generator {
    /// Draws `request.n` completions for every request, in order: the result's `i`-th entry holds
    /// the completions of `requests[i]`.
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Vec<Completion>>>;

    /// Scores `examples` (teacher-forced, rendered as training renders them): the summed
    /// negative log-likelihood of their target tokens. `None` (the default) for a generator that
    /// cannot score text, such as a server without prompt log-probabilities.
    fn log_likelihood(&mut self, _examples: &[TrainExample]) -> Result<Option<LogLikelihood>> {
        Ok(None)
    }
}

/// Optimisation settings of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingParams {
    /// Number of optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Linear warm-up steps before the peak.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip; `0.0` disables clipping.
    pub grad_clip: f64,
    /// Seed for shuffling (and dropout where used).
    pub seed: u64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimiser steps taken.
    pub steps: usize,
    /// Mean loss over the first tenth of the steps.
    pub first_loss: f64,
    /// Mean loss over the last tenth of the steps.
    pub last_loss: f64,
    /// Target (unmasked) tokens seen.
    pub target_tokens: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Fine-tunes a model on chat examples, loss on assistant turns only.
pub trait Trainer {
    /// Trains on `examples` with `params`, updating the trainer's model in place.
    fn train(
        &mut self,
        examples: &[TrainExample],
        params: &TrainingParams,
        reporter: &dyn Reporter,
    ) -> Result<TrainSummary>;
}

/// A model that can be written to a directory and read back by its engine's loader.
pub trait Checkpoint {
    /// Writes the model (weights, config, tokenizer) to `dir`, creating it.
    fn save(&self, dir: &std::path::Path) -> Result<()>;
}

/// The shape of a Llama-architecture model, for engines that create one from scratch.
///
/// Field names follow Hugging Face's `config.json`, so a config can be read by either side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Architecture {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); equal to the heads for plain multi-head attention.
    pub num_key_value_heads: usize,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest sequence the model handles.
    pub max_position_embeddings: usize,
    /// Share the input embedding with the output projection.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_true() -> bool {
    true
}
