//! LoRA adapters on disk, in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! The tensor names are PEFT's saved names (the adapter name `default` left out):
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` with shape `(r, in)` and
//! `...lora_B.weight` with shape `(out, r)`. The config carries `peft_type = "LORA"`,
//! `task_type = "CAUSAL_LM"`, `r`, `lora_alpha`, `lora_dropout`, `target_modules`, `bias = "none"`
//! and `base_model_name_or_path`, which is where [`AdapterConfig::base_model`] finds the base
//! model again (a GGUF file or a Hugging Face directory).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::formats::checkpoint::load_weights;
use crate::model::lora::{LoraConfig, Proj};
use crate::model::DecoderModel;

/// PEFT's adapter config file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const ADAPTER_MODEL_FILE: &str = "adapter_model.safetensors";

/// The fields of `adapter_config.json` this engine reads and writes (PEFT's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `LORA`.
    pub peft_type: String,
    /// Always `CAUSAL_LM`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model the adapter was trained on (path or hub id).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f64,
    /// Dropout on the adapter's input while training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names that carry adapters (`q_proj`, …).
    pub target_modules: Vec<String>,
    /// Bias training: only `none` is supported.
    #[serde(default = "none")]
    pub bias: String,
    /// Whether weights are stored transposed (`Conv1D` models); only `false` is supported.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Rank-stabilised scaling (`alpha / sqrt(r)`); only `false` is supported.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA; only `false` is supported.
    #[serde(default)]
    pub use_dora: bool,
    /// Everything else PEFT writes, kept as it is.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn none() -> String {
    "none".into()
}

impl AdapterConfig {
    /// The config PEFT would write for `lora` on top of `base_model`.
    pub fn new(lora: &LoraConfig, base_model: &str) -> Self {
        let mut other = serde_json::Map::new();
        for (k, v) in [
            ("inference_mode", serde_json::json!(true)),
            ("init_lora_weights", serde_json::json!(true)),
            ("modules_to_save", serde_json::Value::Null),
            ("layers_to_transform", serde_json::Value::Null),
            ("layers_pattern", serde_json::Value::Null),
            ("rank_pattern", serde_json::json!({})),
            ("alpha_pattern", serde_json::json!({})),
            ("revision", serde_json::Value::Null),
            ("auto_mapping", serde_json::Value::Null),
        ] {
            other.insert(k.into(), v);
        }
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base_model.into()),
            r: lora.rank,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            target_modules: lora.targets.iter().map(|p| p.module().to_string()).collect(),
            bias: none(),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            other,
        }
    }

    /// Reads `dir/adapter_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| EngineError::Io { path: path.clone(), source })?;
        serde_json::from_str(&text).map_err(|source| EngineError::Json { path, source })
    }

    /// The LoRA settings, refusing the PEFT features this engine does not implement.
    pub fn lora(&self) -> Result<LoraConfig> {
        let bad = |what: String| EngineError::Adapter(format!("{ADAPTER_CONFIG_FILE}: {what}"));
        if self.peft_type != "LORA" {
            return Err(bad(format!("peft_type `{}` is not LORA", self.peft_type)));
        }
        if self.bias != "none" || self.fan_in_fan_out || self.use_rslora || self.use_dora {
            return Err(bad("bias, fan_in_fan_out, use_rslora and use_dora are not supported".into()));
        }
        let targets = self
            .target_modules
            .iter()
            .map(|m| Proj::from_module(m).ok_or_else(|| bad(format!("target module `{m}` is not a Llama projection"))))
            .collect::<Result<Vec<_>>>()?;
        let config = LoraConfig { rank: self.r, alpha: self.lora_alpha, dropout: self.lora_dropout, targets };
        config.validate()?;
        Ok(config)
    }

    /// Where the base model is: `base_model_name_or_path`, resolved against `dir` when relative.
    /// A base that does not exist is refused here, naming the adapter's config (a hub id such as
    /// `HuggingFaceTB/SmolLM2-135M-Instruct` cannot be fetched: this engine reads local files).
    pub fn base_model(&self, dir: &Path) -> Result<PathBuf> {
        let config = dir.join(ADAPTER_CONFIG_FILE);
        let base = self
            .base_model_name_or_path
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EngineError::Adapter(format!("{}: no base_model_name_or_path", config.display())))?;
        let path = dir.join(base);
        if !path.exists() {
            return Err(EngineError::Adapter(format!(
                "{}: base_model_name_or_path `{base}` does not exist (looked for {}); set it to the base \
                 model's GGUF file or directory, absolute or relative to the adapter's directory",
                config.display(),
                path.display()
            )));
        }
        Ok(path)
    }
}

/// PEFT's saved name of an adapter matrix: `base_model.model.model.layers.{layer}.{path}.lora_{A|B}.weight`.
pub fn peft_tensor_name(layer: usize, proj: Proj, matrix: char) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{matrix}.weight", proj.path())
}

/// Writes the adapters of `model` to `dir` in PEFT's format; `base_model` is recorded as
/// `base_model_name_or_path`.
pub fn save_adapter(dir: &Path, model: &DecoderModel, base_model: &str) -> Result<()> {
    let lora = model.lora.as_ref().ok_or_else(|| EngineError::Adapter("the model has no adapters".into()))?;
    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io { path: dir.to_path_buf(), source })?;
    let mut tensors = Vec::new();
    for layer in 0..model.layers.len() {
        for p in Proj::ALL {
            if let Some(ad) = lora.adapter(layer, p) {
                tensors.push((peft_tensor_name(layer, p, 'A'), ad.a.as_tensor().clone()));
                tensors.push((peft_tensor_name(layer, p, 'B'), ad.b.as_tensor().clone()));
            }
        }
    }
    crate::formats::checkpoint::save_tensors(&dir.join(ADAPTER_MODEL_FILE), &tensors)?;
    let config = AdapterConfig::new(&lora.config, base_model);
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text =
        serde_json::to_string_pretty(&config).map_err(|source| EngineError::Json { path: path.clone(), source })?;
    std::fs::write(&path, text).map_err(|source| EngineError::Io { path, source })
}

/// Attaches the adapters saved in `dir` to `model` (replacing any attached ones).
pub fn load_adapter(dir: &Path, model: &mut DecoderModel) -> Result<()> {
    let config = AdapterConfig::load(dir)?.lora()?;
    let path = dir.join(ADAPTER_MODEL_FILE);
    let mut tensors: HashMap<String, Tensor> = load_weights(&path)?;
    model.attach_lora(config.clone(), 0)?;
    let lora = model.lora.as_ref().expect("just attached");
    let weights_err =
        |name: &str, reason: String| EngineError::Weights { path: path.clone(), name: name.into(), reason };
    for layer in 0..model.layers.len() {
        for &p in &config.targets {
            let ad = lora.adapter(layer, p).expect("every target has an adapter");
            for (matrix, var) in [('A', &ad.a), ('B', &ad.b)] {
                let name = peft_tensor_name(layer, p, matrix);
                // PEFT keeps the adapter name in memory (`lora_A.default.weight`); accept it too.
                let alt = name.replace(&format!("lora_{matrix}.weight"), &format!("lora_{matrix}.default.weight"));
                let t = tensors.remove(&name).or_else(|| tensors.remove(&alt));
                let t = t.ok_or_else(|| weights_err(&name, "missing".into()))?;
                if t.dims() != var.dims() {
                    return Err(weights_err(&name, format!("shape {:?}, expected {:?}", t.dims(), var.dims())));
                }
                var.set(&t.to_dtype(DType::F32)?)?;
            }
        }
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(weights_err(extra, "not an adapter of the configured target modules".into()));
    }
    Ok(())
}
