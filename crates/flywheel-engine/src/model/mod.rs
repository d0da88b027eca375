//! The Llama-architecture model: its parameters, held in candle [`Var`]s inside a [`VarMap`].
//!
//! Parameters are named exactly as in Hugging Face checkpoints (`model.layers.3.mlp.up_proj.weight`)
//! so that a `model.safetensors` written here loads in `transformers` and SmolLM2's loads here. Each
//! parameter is a [`Var`], so the optimiser updates it in place and every forward pass (training or
//! sampling) sees the update. This file only owns and names the parameters; the differentiable
//! forward pass lives in `forward.rs`, the fast no-grad sampling pass in `sample/infer.rs`, the
//! written-out training pass in `train/fused/`.

pub(crate) mod config;
mod forward;
pub(crate) mod lora;
pub(crate) mod rope;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};
use crate::model::config::LlamaConfig;
use crate::model::lora::{FrozenLinear, Lora, LoraConfig, Proj};
use crate::model::rope::RopeTables;

/// The parameters of one decoder layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerVars {
    pub q: Var,
    pub k: Var,
    pub v: Var,
    pub o: Var,
    pub gate: Var,
    pub up: Var,
    pub down: Var,
    pub input_norm: Var,
    pub post_norm: Var,
}

/// A Llama-architecture decoder with trainable parameters.
pub struct LlamaModel {
    pub(crate) config: LlamaConfig,
    varmap: VarMap,
    pub(crate) embed: Var,
    pub(crate) layers: Vec<LayerVars>,
    pub(crate) norm: Var,
    /// The output projection; `None` when tied to `embed`.
    pub(crate) lm_head: Option<Var>,
    pub(crate) rope: RopeTables,
    /// `rope` as `(max_positions, head_dim/2)` tensors of the model's dtype.
    pub(crate) rope_cos: Tensor,
    pub(crate) rope_sin: Tensor,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// LoRA adapters; while attached, only they train and the base weights are frozen.
    pub(crate) lora: Option<Lora>,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel").field("config", &self.config).field("dtype", &self.dtype).finish_non_exhaustive()
    }
}

/// The Hugging Face name and shape of every parameter `config` implies, in a fixed order.
pub fn parameter_shapes(config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, hd, ff) = (config.hidden_size, config.head_dim(), config.intermediate_size);
    let (q_out, kv_out) = (config.num_attention_heads * hd, config.kv_heads() * hd);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![config.vocab_size, d])];
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.extend([
            (format!("{p}.self_attn.q_proj.weight"), vec![q_out, d]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv_out, d]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv_out, d]),
            (format!("{p}.self_attn.o_proj.weight"), vec![d, q_out]),
            (format!("{p}.mlp.gate_proj.weight"), vec![ff, d]),
            (format!("{p}.mlp.up_proj.weight"), vec![ff, d]),
            (format!("{p}.mlp.down_proj.weight"), vec![d, ff]),
            (format!("{p}.input_layernorm.weight"), vec![d]),
            (format!("{p}.post_attention_layernorm.weight"), vec![d]),
        ]);
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![config.vocab_size, d]));
    }
    out
}

/// Whether a tensor of a checkpoint may be ignored: buffers some exporters write, and a duplicate
/// `lm_head.weight` next to tied embeddings.
fn ignorable(name: &str, config: &LlamaConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (config.tie_word_embeddings && name == "lm_head.weight")
}

impl LlamaModel {
    /// A freshly initialised model: every matrix drawn from normal(0, 0.02), every norm weight 1.
    /// The same `seed` gives the same weights.
    pub fn new_random(config: &LlamaConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        for (name, shape) in parameter_shapes(config) {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = if shape.len() == 1 {
                vec![1.0; count]
            } else {
                (0..count).map(|_| 0.02 * standard_normal(&mut rng)).collect()
            };
            tensors.insert(name, Tensor::from_vec(values, shape, &device)?);
        }
        Self::from_tensors(config, tensors, Path::new("<random init>"))
    }

    /// Builds a model from named tensors (Hugging Face names), converting them to `f32`.
    /// `origin` names the file they came from in error messages.
    pub fn from_tensors(config: &LlamaConfig, tensors: HashMap<String, Tensor>, origin: &Path) -> Result<Self> {
        Self::build(config, tensors, origin, DType::F32)
    }

    /// A copy of this model whose parameters have type `dtype` (for example `F64` for
    /// finite-difference gradient checks). The copy shares no storage with `self`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Self::build(&self.config, self.named_tensors()?, Path::new("<copy>"), dtype)
    }

    fn build(config: &LlamaConfig, mut tensors: HashMap<String, Tensor>, origin: &Path, dtype: DType) -> Result<Self> {
        config.validate()?;
        let weights_err = |name: &str, reason: String| EngineError::Weights {
            path: origin.to_path_buf(),
            name: name.to_string(),
            reason,
        };
        let mut vars: HashMap<String, Var> = HashMap::new();
        for (name, shape) in parameter_shapes(config) {
            let t = tensors.remove(&name).ok_or_else(|| weights_err(&name, "missing".into()))?;
            if t.dims() != shape.as_slice() {
                return Err(weights_err(&name, format!("shape {:?}, expected {:?}", t.dims(), shape)));
            }
            // `copy` so that the variable never aliases the caller's storage.
            vars.insert(name, Var::from_tensor(&t.to_dtype(dtype)?.copy()?)?);
        }
        if let Some(extra) = tensors.keys().filter(|n| !ignorable(n, config)).min() {
            return Err(weights_err(extra, "not a parameter of this architecture".into()));
        }
        let varmap = VarMap::new();
        varmap
            .data()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(vars.iter().map(|(n, v)| (n.clone(), v.clone())));
        let take = |name: String| vars[&name].clone();
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                LayerVars {
                    q: take(format!("{p}.self_attn.q_proj.weight")),
                    k: take(format!("{p}.self_attn.k_proj.weight")),
                    v: take(format!("{p}.self_attn.v_proj.weight")),
                    o: take(format!("{p}.self_attn.o_proj.weight")),
                    gate: take(format!("{p}.mlp.gate_proj.weight")),
                    up: take(format!("{p}.mlp.up_proj.weight")),
                    down: take(format!("{p}.mlp.down_proj.weight")),
                    input_norm: take(format!("{p}.input_layernorm.weight")),
                    post_norm: take(format!("{p}.post_attention_layernorm.weight")),
                }
            })
            .collect();
        let rope = RopeTables::new(config.head_dim(), config.rope_theta, config.max_position_embeddings);
        let device = Device::Cpu;
        let (rope_cos, rope_sin) = rope.tensors(dtype, &device)?;
        Ok(Self {
            config: config.clone(),
            embed: take("model.embed_tokens.weight".into()),
            layers,
            norm: take("model.norm.weight".into()),
            lm_head: (!config.tie_word_embeddings).then(|| take("lm_head.weight".into())),
            varmap,
            rope,
            rope_cos,
            rope_sin,
            dtype,
            device,
            lora: None,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The variables, by Hugging Face name (what an optimiser trains).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Every parameter with its Hugging Face name, in the order of [`parameter_shapes`].
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        parameter_shapes(&self.config)
            .into_iter()
            .map(|(name, _)| {
                let var = data[&name].clone();
                (name, var)
            })
            .collect()
    }

    /// A snapshot of every parameter (detached copies), by Hugging Face name.
    pub fn named_tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.named_vars().into_iter().map(|(n, v)| Ok((n, v.as_tensor().copy()?.detach()))).collect()
    }

    /// Overwrites every parameter with the matching tensor of `other` (same config required).
    /// This is how the loop resets to the base model without reallocating.
    pub fn copy_weights_from(&self, other: &LlamaModel) -> Result<()> {
        if other.config != self.config {
            return Err(EngineError::invalid("copy_weights_from: the two models have different configs"));
        }
        for ((_, dst), (_, src)) in self.named_vars().into_iter().zip(other.named_vars()) {
            dst.set(&src.as_tensor().to_dtype(self.dtype)?)?;
        }
        Ok(())
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// LoRA: attaching, resetting, merging adapters, and the weights the other passes read.
impl LlamaModel {
    /// Attaches fresh adapters (`B = 0`: the model's output is unchanged) drawn from `seed`. From
    /// now on only the adapters train. Replaces adapters already attached.
    pub fn attach_lora(&mut self, config: LoraConfig, seed: u64) -> Result<()> {
        let layers = self.layers.len();
        let lora = Lora::new(config, layers, |p| self.layers[0].weight(p).dims2().unwrap_or((0, 0)), seed)?;
        self.lora = Some(lora);
        Ok(())
    }

    /// Re-draws the adapters from `seed` (back to the base model's output), when attached.
    pub fn reset_lora(&self, seed: u64) -> Result<()> {
        self.lora.as_ref().map_or(Ok(()), |l| l.reset(seed))
    }

    /// The adapters' settings, when attached.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|l| &l.config)
    }

    /// Folds the adapters into the base weights (`W += alpha/rank · B A`) and detaches them.
    pub fn merge_lora(&mut self) -> Result<()> {
        let Some(lora) = self.lora.take() else { return Ok(()) };
        for (i, layer) in self.layers.iter().enumerate() {
            for p in Proj::ALL {
                if let Some(ad) = lora.adapter(i, p) {
                    let w = layer.weight(p);
                    w.set(&(w.as_tensor() + lora.merged_delta(ad)?.to_dtype(self.dtype)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// Projection `p` of layer `layer` with its adapter merged in, as a new `f32` tensor.
    pub(crate) fn merged_weight(&self, layer: usize, p: Proj) -> Result<Tensor> {
        let w = self.layers[layer].weight(p).as_tensor().to_dtype(DType::F32)?;
        match self.lora.as_ref().and_then(|l| l.adapter(layer, p).map(|ad| (l, ad))) {
            Some((lora, ad)) => Ok((w + lora.merged_delta(ad)?)?),
            None => Ok(w),
        }
    }

    /// The variables an optimiser trains: the adapters when attached, else every parameter.
    pub fn trainable_vars(&self) -> Vec<Var> {
        match &self.lora {
            Some(lora) => lora.vars(),
            None => self.named_vars().into_iter().map(|(_, v)| v).collect(),
        }
    }

    /// The state of the adapters' dropout generator, if adapters are attached: a layer recomputed
    /// from this state draws the masks it drew before.
    pub(crate) fn dropout_state(&self) -> Option<rand::rngs::StdRng> {
        self.lora.as_ref().map(|l| l.dropout_state())
    }

    /// Restores a state taken with [`LlamaModel::dropout_state`].
    pub(crate) fn set_dropout_state(&self, state: Option<rand::rngs::StdRng>) {
        if let (Some(lora), Some(state)) = (&self.lora, state) {
            lora.set_dropout_state(state);
        }
    }

    /// A parameter as the forward pass uses it: detached (a constant) while adapters train.
    pub(crate) fn param(&self, v: &Var) -> Tensor {
        if self.lora.is_some() {
            v.as_tensor().detach()
        } else {
            v.as_tensor().clone()
        }
    }

    /// `x Wᵀ` for projection `p` of layer `layer` (`x` 2-D), plus its adapter's update when one
    /// is attached; the base weight is frozen then. `train` turns on the adapter's dropout.
    pub(crate) fn linear(&self, layer: usize, p: Proj, x: &Tensor, train: bool) -> Result<Tensor> {
        let w = self.layers[layer].weight(p);
        let Some(lora) = &self.lora else { return Ok(x.matmul(&w.t()?)?) };
        let base = x.contiguous()?.apply_op1(FrozenLinear { weight: w.as_tensor().detach() })?;
        match lora.adapter(layer, p) {
            Some(ad) => Ok((base + lora.delta(ad, x, train)?)?),
            None => Ok(base),
        }
    }

    /// `x Wᵀ` for the output projection (frozen while adapters train).
    pub(crate) fn output_projection(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        if self.lora.is_some() && x.rank() == 2 {
            return Ok(x.contiguous()?.apply_op1(FrozenLinear { weight: w.as_tensor().detach() })?);
        }
        Ok(x.broadcast_matmul(&self.param(w).t()?)?)
    }
}

impl LayerVars {
    /// The weight of projection `p`.
    pub(crate) fn weight(&self, p: Proj) -> &Var {
        match p {
            Proj::Q => &self.q,
            Proj::K => &self.k,
            Proj::V => &self.v,
            Proj::O => &self.o,
            Proj::Gate => &self.gate,
            Proj::Up => &self.up,
            Proj::Down => &self.down,
        }
    }
}

/// One draw from the standard normal distribution (Box-Muller), from a seeded generator.
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
