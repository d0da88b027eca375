//! The model's shape, read from and written to a Hugging Face `config.json`.
//!
//! Field names are the Hugging Face Llama names so that the same struct reads SmolLM2's
//! `config.json` and writes one that `transformers` reads back. Unknown keys are ignored on purpose
//! (a real `config.json` carries dozens that do not change the forward pass); keys that *would*
//! change it and that this engine does not implement (`rope_scaling`, biases, another activation)
//! are rejected by [`LlamaConfig::validate`] instead of being silently dropped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// One token id or several, as Hugging Face writes `eos_token_id` (an integer or a list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids, any of which counts.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// Shape and constants of a Llama-architecture decoder (Hugging Face `LlamaConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Epsilon of RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Base of the rotary position embedding.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Longest sequence (prompt plus completion) the model accepts.
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the input embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence id, if the model has one.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s); generation stops at any of them.
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Activation of the MLP; only `silu` is implemented.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Bias on the attention projections; only `false` is implemented.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP projections; only `false` is implemented.
    #[serde(default)]
    pub mlp_bias: bool,
    /// RoPE scaling; only `null` (no scaling) is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_act() -> String {
    "silu".to_string()
}

impl LlamaConfig {
    /// A tiny model for character-level tasks: `vocab_size` ids, 4 layers, width 128, 4 query heads
    /// sharing 2 key/value heads, 512 positions, tied embeddings (about 0.7M parameters).
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            hidden_size: 128,
            intermediate_size: 344,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            vocab_size,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_id: None,
            hidden_act: default_act(),
            attention_bias: false,
            mlp_bias: false,
            rope_scaling: None,
        }
    }

    /// Reads and validates a `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
        let config: Self =
            serde_json::from_str(&text).map_err(|source| EngineError::Json { path: path.to_path_buf(), source })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes the config as a Hugging Face `config.json` (with `model_type` and `architectures`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut value =
            serde_json::to_value(self).map_err(|source| EngineError::Json { path: path.to_path_buf(), source })?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("model_type".into(), "llama".into());
            map.insert("architectures".into(), serde_json::json!(["LlamaForCausalLM"]));
            map.insert("torch_dtype".into(), "float32".into());
            map.insert("num_key_value_heads".into(), self.kv_heads().into());
        }
        let text = serde_json::to_string_pretty(&value)
            .map_err(|source| EngineError::Json { path: path.to_path_buf(), source })?;
        std::fs::write(path, text + "\n").map_err(|source| EngineError::Io { path: path.to_path_buf(), source })
    }

    /// Checks that the shapes agree and that no unimplemented feature is asked for.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(EngineError::config(field, "must be positive"));
            }
        }
        if self.kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(EngineError::config(
                "num_key_value_heads",
                format!("{} does not divide num_attention_heads = {}", self.kv_heads(), self.num_attention_heads),
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(EngineError::config(
                "num_attention_heads",
                format!("{} does not divide hidden_size = {}", self.num_attention_heads, self.hidden_size),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(EngineError::config(
                "head_dim",
                format!("{} is odd; rotary embedding needs pairs", self.head_dim()),
            ));
        }
        if self.hidden_act != "silu" {
            return Err(EngineError::config(
                "hidden_act",
                format!("`{}` is not supported (only `silu`)", self.hidden_act),
            ));
        }
        if self.attention_bias {
            return Err(EngineError::config("attention_bias", "biases are not supported"));
        }
        if self.mlp_bias {
            return Err(EngineError::config("mlp_bias", "biases are not supported"));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(EngineError::config("rope_scaling", "RoPE scaling is not supported"));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(EngineError::config("rms_norm_eps", "must be positive"));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(EngineError::config("rope_theta", "must be positive"));
        }
        for id in self.eos_ids().into_iter().chain(self.bos_token_id) {
            if id as usize >= self.vocab_size {
                return Err(EngineError::config(
                    "eos_token_id",
                    format!("id {id} is outside the vocabulary ({})", self.vocab_size),
                ));
            }
        }
        Ok(())
    }

    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// End-of-sequence ids (empty when the config names none).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        let (d, hd) = (self.hidden_size, self.head_dim());
        let attn = d * hd * (2 * self.num_attention_heads + 2 * self.kv_heads());
        let mlp = 3 * d * self.intermediate_size;
        let embed = self.vocab_size * d * if self.tie_word_embeddings { 1 } else { 2 };
        self.num_hidden_layers * (attn + mlp + 2 * d) + embed + d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's `config.json` as published on the Hugging Face hub (trimmed of keys that do
    /// not change the forward pass is *not* done: extra keys must be ignored).
    const SMOLLM2_135M: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576,
      "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true,
      "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
      "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
      "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true,
      "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true, "vocab_size": 49152
    }"#;

    #[test]
    fn reads_smollm2_config() {
        let c: LlamaConfig = serde_json::from_str(SMOLLM2_135M).unwrap();
        c.validate().unwrap();
        assert_eq!((c.hidden_size, c.num_hidden_layers, c.kv_heads(), c.head_dim()), (576, 30, 3, 64));
        assert_eq!(c.rope_theta, 100_000.0);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_ids(), vec![0]);
        // 134.5M parameters, as the model card says (135M).
        assert_eq!(c.num_parameters(), 134_515_008);
    }

    #[test]
    fn rejects_unsupported_features_by_name() {
        let mut c = LlamaConfig::tiny(30);
        c.rope_scaling = Some(serde_json::json!({"type": "linear", "factor": 2.0}));
        assert!(c.validate().unwrap_err().to_string().contains("rope_scaling"));
        let mut c = LlamaConfig::tiny(30);
        c.num_key_value_heads = Some(3);
        assert!(c.validate().unwrap_err().to_string().contains("num_key_value_heads"));
    }

    #[test]
    fn eos_may_be_a_list() {
        let mut c = LlamaConfig::tiny(30);
        c.eos_token_id = serde_json::from_str("[1, 2]").unwrap();
        assert_eq!(c.eos_ids(), vec![1, 2]);
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut c = LlamaConfig::tiny(30);
        c.eos_token_id = Some(TokenIds::One(2));
        c.save(&path).unwrap();
        let mut back = LlamaConfig::load(&path).unwrap();
        assert_eq!(back.num_key_value_heads, Some(2));
        back.num_key_value_heads = c.num_key_value_heads;
        assert_eq!(back, c);
    }
}
