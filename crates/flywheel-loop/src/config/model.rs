//! The `[model]` table: which model to start from, and how the embedded engine holds it.

use std::path::PathBuf;

use flywheel_core::Architecture;
use serde::{Deserialize, Serialize};

use super::TrainingConfig;

/// Which model to start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelConfig {
    /// A fresh model in this process (candle), trained on the task's seed set first.
    Embedded(EmbeddedModelConfig),
    /// A pretrained model in this process (candle), from a GGUF file or a Hugging Face directory.
    Pretrained(PretrainedModelConfig),
}

impl ModelConfig {
    /// Most sequences the embedded engine decodes at once.
    pub fn max_batch(&self) -> usize {
        match self {
            ModelConfig::Embedded(c) => c.max_batch,
            ModelConfig::Pretrained(c) => c.max_batch,
        }
    }

    /// Whether the model writes with a calculator (`[model] calculator`).
    pub fn calculator(&self) -> bool {
        match self {
            ModelConfig::Embedded(_) => false,
            ModelConfig::Pretrained(c) => c.calculator,
        }
    }

    /// Checks every setting; the message names the key and its allowed range.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_batch() == 0 {
            return Err("model.max-batch must be at least 1".into());
        }
        let model = match self {
            ModelConfig::Embedded(model) => return model.validate(),
            ModelConfig::Pretrained(model) => model,
        };
        if model.path.as_os_str().is_empty() {
            return Err("model.path must name a GGUF file or a Hugging Face directory".into());
        }
        if model.micro_batch_tokens == 0 {
            return Err("model.micro-batch-tokens must be at least 1".into());
        }
        let Some(lora) = &model.lora else { return Ok(()) };
        if lora.rank == 0 {
            return Err("model.lora.rank must be at least 1".into());
        }
        if !(lora.alpha.is_finite() && lora.alpha > 0.0) {
            return Err(format!("model.lora.alpha must be a number above 0, got {}", lora.alpha));
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            return Err(format!("model.lora.dropout must be in [0, 1), got {}", lora.dropout));
        }
        if lora.target_modules.is_empty() {
            return Err(format!("model.lora.target-modules must name at least one of {}", LORA_TARGETS.join(", ")));
        }
        if let Some(bad) = lora.target_modules.iter().find(|m| !LORA_TARGETS.contains(&m.as_str())) {
            return Err(format!("model.lora.target-modules: `{bad}` is not one of {}", LORA_TARGETS.join(", ")));
        }
        Ok(())
    }
}

/// A pretrained model, improved as it is (iteration 0 evaluates it without training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PretrainedModelConfig {
    /// A GGUF file (llama.cpp) or a Hugging Face model directory (`config.json`, `*.safetensors`,
    /// `tokenizer.json`, and `tokenizer_config.json` for the chat template). Relative paths are
    /// resolved against the working directory.
    pub path: PathBuf,
    /// LoRA adapters to train instead of every weight; absent: full fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSettings>,
    /// Most sequences decoded at once.
    #[serde(default = "default_pretrained_batch")]
    pub max_batch: usize,
    /// Tokens per forward pass in training (packed tokens with the fused pass, padded ones with
    /// autograd): a step's batch is split into micro-batches of at most this many and their
    /// gradients are summed, so only peak memory changes.
    #[serde(default = "default_micro_batch_tokens")]
    pub micro_batch_tokens: usize,
    /// Which pass computes the training gradients: `"fused"` (the default), the engine's
    /// written-out forward and backward over packed sequences, or `"autograd"`, candle's autograd
    /// graph over padded micro-batches (the reference it is tested against).
    #[serde(default)]
    pub training_pass: TrainingPass,
    /// With `training-pass = "autograd"`: recompute each layer's activations in the backward
    /// pass (gradient checkpointing): the same gradients up to rounding, a quarter of the peak
    /// memory (SmolLM2-135M, LoRA r=16, 8 x 150 tokens: 3.7 GB instead of 14.7 GB), at 0.84x
    /// the speed. The fused pass keeps only what its backward pass reads and ignores this.
    #[serde(default = "default_true")]
    pub activation_checkpointing: bool,
    /// Give the model a calculator ([`crate::tools::Calculator`]): the result of every expression
    /// it ends with `=` is written for it, in sampling and in evaluation alike.
    #[serde(default)]
    pub calculator: bool,
}

/// How the embedded engine computes training gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainingPass {
    /// The written-out forward and backward pass over packed sequences.
    #[default]
    Fused,
    /// candle's autograd over padded micro-batches.
    Autograd,
}

fn default_true() -> bool {
    true
}

fn default_pretrained_batch() -> usize {
    64
}

fn default_micro_batch_tokens() -> usize {
    2048
}

/// LoRA settings (PEFT's names in brackets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoraSettings {
    /// Rank of the update (`r`).
    pub rank: usize,
    /// Scale numerator; the update is scaled by `alpha / rank` (`lora_alpha`).
    pub alpha: f64,
    /// Dropout on the adapter input while training (`lora_dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// Projections that get adapters (`target_modules`): any of `q_proj`, `k_proj`, `v_proj`,
    /// `o_proj`, `gate_proj`, `up_proj`, `down_proj`.
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
}

fn default_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec()
}

/// Projections LoRA may target in a Llama model.
pub const LORA_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// An in-process model: a fresh one of a given shape, trained on the task's seed set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EmbeddedModelConfig {
    /// Shape of the fresh model.
    pub architecture: Architecture,
    /// Training of the base model on the seed set (`step-growth` is not used there).
    pub base_training: TrainingConfig,
    /// Most sequences decoded at once.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Which pass computes the training gradients (see [`PretrainedModelConfig::training_pass`]):
    /// the fused pass by default, whose buffers are reused from step to step (candle's autograd
    /// allocates every intermediate anew). It gives the same gradients up to rounding; a tiny
    /// model trained from scratch for hundreds of steps amplifies rounding into a different
    /// trajectory, so `"autograd"` reproduces runs made before this default changed.
    #[serde(default)]
    pub training_pass: TrainingPass,
}

fn default_max_batch() -> usize {
    256
}

impl EmbeddedModelConfig {
    fn validate(&self) -> Result<(), String> {
        let a = &self.architecture;
        let counts = [
            ("hidden-size", a.hidden_size),
            ("intermediate-size", a.intermediate_size),
            ("num-hidden-layers", a.num_hidden_layers),
            ("num-attention-heads", a.num_attention_heads),
            ("num-key-value-heads", a.num_key_value_heads),
            ("max-position-embeddings", a.max_position_embeddings),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(format!("model.architecture.{key} must be at least 1"));
        }
        if !a.hidden_size.is_multiple_of(a.num_attention_heads) {
            return Err(format!(
                "model.architecture.num-attention-heads ({}) must divide hidden-size ({})",
                a.num_attention_heads, a.hidden_size
            ));
        }
        if !(a.hidden_size / a.num_attention_heads).is_multiple_of(2) {
            return Err(format!(
                "model.architecture: the head width hidden-size / num-attention-heads ({}) must be even (RoPE)",
                a.hidden_size / a.num_attention_heads
            ));
        }
        if !a.num_attention_heads.is_multiple_of(a.num_key_value_heads) {
            return Err(format!(
                "model.architecture.num-key-value-heads ({}) must divide num-attention-heads ({})",
                a.num_key_value_heads, a.num_attention_heads
            ));
        }
        if !(a.rope_theta.is_finite() && a.rope_theta > 0.0) {
            return Err(format!("model.architecture.rope-theta must be a number above 0, got {}", a.rope_theta));
        }
        self.base_training.validate("model.base-training")
    }
}
