//! The model's shape, read from and written to a Hugging Face `config.json`.
//!
//! Field names are Hugging Face's, so that the same struct reads the `config.json` of a Llama,
//! Qwen2, Qwen3 or Gemma 3 checkpoint and writes one that `transformers` reads back; `model_type`
//! names the [`Family`] (`arch.rs`), whose description says which optional parts the layers have.
//! Unknown keys are ignored on purpose (a real `config.json` carries dozens that do not change the
//! forward pass); keys that *would* change it and that this engine does not implement (`yarn` RoPE
//! scaling, biases on every projection, another activation, soft-capping) are rejected by
//! [`ModelConfig::validate`] instead of being silently dropped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
pub use crate::model::arch::{Activation, Family};

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

/// How RoPE's frequencies are rescaled for long contexts (`rope_scaling`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's rule: low frequencies divided by `factor`, high ones kept, those between
    /// blended (`transformers`' `_compute_llama3_parameters`).
    Llama3 {
        /// The divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context the model was first trained with.
        original_max_position_embeddings: f64,
    },
}

/// The attention of one layer: global, or over a sliding window of recent keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerAttention {
    /// The most keys a query sees (itself included), `None` for all before it.
    pub window: Option<usize>,
    /// Whether the layer rotates with the local RoPE base (Gemma 3's sliding layers).
    pub local_rope: bool,
}

/// Shape and constants of a decoder of one of the [`Family`]s, under Hugging Face's
/// `config.json` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The family (`model_type`); `llama` when absent.
    #[serde(rename = "model_type", default)]
    pub family: Family,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the gated MLP's hidden layer.
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
    /// Base of the rotary position embedding (of the global layers, in Gemma 3).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Longest sequence (prompt plus completion) the model accepts.
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the input embedding matrix; when absent, the
    /// family's default ([`Family::ties_by_default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// Beginning-of-sequence id, if the model has one.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s); generation stops at any of them.
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Activation of the MLP's gate (Llama and Qwen's name): `silu`, or `gelu_pytorch_tanh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Gemma's name for the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Biases on every attention projection (Llama, Qwen3, Gemma); only `false` is implemented.
    /// Qwen2 has query, key and value biases whatever this says.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP projections; only `false` is implemented.
    #[serde(default)]
    pub mlp_bias: bool,
    /// RoPE scaling: `null`, `linear` or `llama3` ([`ModelConfig::rope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// `transformers` 5's RoPE settings, which replace `rope_theta`, `rope_scaling` and
    /// `rope_local_base_freq` where present: one `{rope_theta, rope_type, …}` object, or one per
    /// layer type (`full_attention`, `sliding_attention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Gemma: queries are scaled by `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    /// Keys a sliding-window layer sees (Gemma 3; Qwen's when `use_sliding_window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2/3: whether any layer slides; only `false` is implemented.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_sliding_window: bool,
    /// Gemma 3: `sliding_attention` or `full_attention` per layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3 (older `transformers`): every `n`-th layer is global, the others slide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 3: the RoPE base of the sliding layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 2's soft-capping of the final logits; only `null` is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 2's soft-capping of attention scores; only `null` is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}

/// The frequency scaling a `rope_scaling` or `rope_parameters` object asks for (`None`: plain
/// RoPE); `field` names the key in errors.
fn rope_scaling(value: &serde_json::Value, field: &'static str) -> Result<Option<RopeScaling>> {
    let bad = |reason: String| EngineError::config(field, reason);
    let kind = match value.get("rope_type").or_else(|| value.get("type")) {
        None if value.get("rope_theta").is_some() => "default",
        None => return Err(bad(format!("{value} names no `rope_type`"))),
        Some(kind) => kind.as_str().ok_or_else(|| bad(format!("{value}: `rope_type` is not a string")))?,
    };
    let number = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| bad(format!("`{kind}` needs a positive `{key}`")))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: number("factor")? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")?,
        })),
        other => Err(bad(format!("RoPE scaling `{other}` is not supported (linear, llama3)"))),
    }
}

/// Gemma 3's sliding-window pattern when the config names none: five local layers, one global.
const GEMMA3_PATTERN: usize = 6;

impl ModelConfig {
    /// A tiny Llama for character-level tasks: `vocab_size` ids, 4 layers, width 128, 4 query
    /// heads sharing 2 key/value heads, 512 positions, tied embeddings (about 0.7M parameters).
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            family: Family::Llama,
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
            tie_word_embeddings: Some(true),
            bos_token_id: None,
            eos_token_id: None,
            hidden_act: Some("silu".into()),
            hidden_activation: None,
            attention_bias: false,
            mlp_bias: false,
            rope_scaling: None,
            rope_parameters: None,
            query_pre_attn_scalar: None,
            sliding_window: None,
            use_sliding_window: false,
            layer_types: None,
            sliding_window_pattern: None,
            rope_local_base_freq: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
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

    /// Writes the config as a Hugging Face `config.json` (with the family's `model_type` and
    /// `architectures`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut value =
            serde_json::to_value(self).map_err(|source| EngineError::Json { path: path.to_path_buf(), source })?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("architectures".into(), serde_json::json!([self.family.hf_class()]));
            map.insert("torch_dtype".into(), "float32".into());
            map.insert("num_key_value_heads".into(), self.kv_heads().into());
            map.insert("tie_word_embeddings".into(), self.tied().into());
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
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return Err(EngineError::config(
                "head_dim",
                format!("{} is zero or odd; rotary embedding needs pairs", self.head_dim()),
            ));
        }
        self.activation()?;
        if self.attention_bias {
            return Err(EngineError::config(
                "attention_bias",
                format!("biases on every attention projection are not supported ({})", self.family),
            ));
        }
        if self.mlp_bias {
            return Err(EngineError::config("mlp_bias", "biases are not supported"));
        }
        self.rope(false)?;
        self.rope(true)?;
        if self.use_sliding_window {
            return Err(EngineError::config(
                "use_sliding_window",
                "sliding-window attention is not supported for this family",
            ));
        }
        if self.final_logit_softcapping.is_some() {
            return Err(EngineError::config("final_logit_softcapping", "soft-capping is not supported"));
        }
        if self.attn_logit_softcapping.is_some() {
            return Err(EngineError::config("attn_logit_softcapping", "soft-capping is not supported"));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(EngineError::config("rms_norm_eps", "must be positive"));
        }
        for (field, value) in [
            ("rope_theta", Some(self.rope_theta)),
            ("rope_local_base_freq", self.rope_local_base_freq),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
        ] {
            if value.is_some_and(|v| v.is_nan() || v <= 0.0) {
                return Err(EngineError::config(field, "must be positive"));
            }
        }
        if self.family == Family::Gemma3 {
            if self.sliding_window == Some(0) {
                return Err(EngineError::config("sliding_window", "must be positive"));
            }
            if let Some(types) = &self.layer_types {
                if types.len() != self.num_hidden_layers {
                    return Err(EngineError::config(
                        "layer_types",
                        format!("{} entries for {} layers", types.len(), self.num_hidden_layers),
                    ));
                }
                if let Some(t) = types.iter().find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention")) {
                    return Err(EngineError::config(
                        "layer_types",
                        format!("`{t}` is not a layer type this engine knows"),
                    ));
                }
            }
            if self.sliding_window_pattern == Some(0) {
                return Err(EngineError::config("sliding_window_pattern", "must be positive"));
            }
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

    /// Whether the output projection is the embedding matrix.
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(self.family.ties_by_default())
    }

    /// End-of-sequence ids (empty when the config names none).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()
    }

    /// The MLP's gate activation.
    pub fn activation(&self) -> Result<Activation> {
        let (field, name) = match (&self.hidden_activation, &self.hidden_act) {
            (Some(name), _) => ("hidden_activation", name.as_str()),
            (None, Some(name)) => ("hidden_act", name.as_str()),
            (None, None) if self.family == Family::Gemma3 => return Ok(Activation::GeluTanh),
            (None, None) => return Ok(Activation::Silu),
        };
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            other => Err(EngineError::config(field, format!("`{other}` is not supported (silu, gelu_pytorch_tanh)"))),
        }
    }

    /// The RoPE base and frequency scaling of the global layers, or (`local`) of Gemma 3's
    /// sliding ones (whose scaling is always none), from `rope_parameters` where present, else
    /// from `rope_theta`, `rope_scaling` and `rope_local_base_freq`.
    pub fn rope(&self, local: bool) -> Result<(f64, Option<RopeScaling>)> {
        let bad = |reason: String| EngineError::config("rope_parameters", reason);
        if let Some(params) = self.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            let layer_type = if local { "sliding_attention" } else { "full_attention" };
            let params = match params.get(layer_type) {
                Some(entry) => entry,
                None if params.get("rope_theta").is_some() => params,
                None => return Err(bad(format!("{params} has neither `rope_theta` nor `{layer_type}`"))),
            };
            let theta = params
                .get("rope_theta")
                .and_then(serde_json::Value::as_f64)
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| bad(format!("{params} has no positive `rope_theta`")))?;
            return Ok((theta, rope_scaling(params, "rope_parameters")?));
        }
        if local {
            return Ok((self.rope_local_base_freq.unwrap_or(10_000.0), None));
        }
        let scaling = match self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            Some(value) => rope_scaling(value, "rope_scaling")?,
            None => None,
        };
        Ok((self.rope_theta, scaling))
    }

    /// What attention's scores are divided by the square root of: `query_pre_attn_scalar`
    /// (Gemma), else `head_dim`. The `f32` passes compute the scale as `1 / sqrt(x as f32)`.
    pub fn query_scalar(&self) -> f64 {
        self.query_pre_attn_scalar.unwrap_or(self.head_dim() as f64)
    }

    /// The query scale of the `f32` passes (sampling, written-out training).
    pub fn query_scale(&self) -> f32 {
        1.0 / (self.query_scalar() as f32).sqrt()
    }

    /// The multiplier of the token embeddings on the way in: `sqrt(hidden_size)` rounded to
    /// `f32` (Gemma, as `transformers` computes it in the model's dtype), else 1.
    pub fn embed_scale(&self) -> f32 {
        if self.family.scales_embeddings() {
            (self.hidden_size as f32).sqrt()
        } else {
            1.0
        }
    }

    /// The attention of layer `layer`.
    pub fn layer_attention(&self, layer: usize) -> LayerAttention {
        if self.family != Family::Gemma3 {
            return LayerAttention { window: None, local_rope: false };
        }
        let sliding = match &self.layer_types {
            Some(types) => types[layer] == "sliding_attention",
            None => !(layer + 1).is_multiple_of(self.sliding_window_pattern.unwrap_or(GEMMA3_PATTERN)),
        };
        LayerAttention { window: sliding.then(|| self.sliding_window.unwrap_or(4096)), local_rope: sliding }
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        crate::model::parameter_shapes(self).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
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
        let c: ModelConfig = serde_json::from_str(SMOLLM2_135M).unwrap();
        c.validate().unwrap();
        assert_eq!((c.hidden_size, c.num_hidden_layers, c.kv_heads(), c.head_dim()), (576, 30, 3, 64));
        assert_eq!(c.rope_theta, 100_000.0);
        assert!(c.tied());
        assert_eq!(c.eos_ids(), vec![0]);
        // 134.5M parameters, as the model card says (135M).
        assert_eq!(c.num_parameters(), 134_515_008);
    }

    #[test]
    fn rejects_unsupported_features_by_name() {
        let mut c = ModelConfig::tiny(30);
        c.rope_scaling = Some(serde_json::json!({"type": "yarn", "factor": 2.0}));
        assert!(c.validate().unwrap_err().to_string().contains("rope_scaling"));
        let mut c = ModelConfig::tiny(30);
        c.num_key_value_heads = Some(3);
        assert!(c.validate().unwrap_err().to_string().contains("num_key_value_heads"));
    }

    #[test]
    fn eos_may_be_a_list() {
        let mut c = ModelConfig::tiny(30);
        c.eos_token_id = serde_json::from_str("[1, 2]").unwrap();
        assert_eq!(c.eos_ids(), vec![1, 2]);
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut c = ModelConfig::tiny(30);
        c.eos_token_id = Some(TokenIds::One(2));
        c.save(&path).unwrap();
        let mut back = ModelConfig::load(&path).unwrap();
        assert_eq!(back.num_key_value_heads, Some(2));
        back.num_key_value_heads = c.num_key_value_heads;
        assert_eq!(back, c);
    }
}
