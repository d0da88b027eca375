//! The Llama-architecture model: its parameters, held in candle [`Var`]s inside a [`VarMap`].
//!
//! Parameters are named exactly as in Hugging Face checkpoints (`model.layers.3.mlp.up_proj.weight`)
//! so that a `model.safetensors` written here loads in `transformers` and SmolLM2's loads here. Each
//! parameter is a [`Var`], so the optimiser updates it in place and every forward pass (training or
//! sampling) sees the update. This file only owns and names the parameters; the differentiable
//! forward pass lives in `forward.rs`, the fast no-grad sampling pass in `sample/infer.rs`, the
//! written-out training pass in `train/fused/`.

pub(crate) mod arch;
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
use crate::model::arch::{layer_name, Part, EMBED, FINAL_NORM, LM_HEAD};
use crate::model::config::ModelConfig;
use crate::model::lora::{FrozenLinear, Lora, LoraConfig, Proj};
use crate::model::rope::RopeTables;

/// The parameters of one decoder layer: the seven projections and the two norms every family
/// has, and the optional parts of [`Family::parts`](crate::model::arch::Family::parts).
#[derive(Debug, Clone)]
pub(crate) struct LayerVars {
    /// The projections' weights, indexed by [`Proj`].
    pub proj: [Var; 7],
    /// Biases of the query, key and value projections (Qwen2).
    pub bias: [Option<Var>; 3],
    pub attn_norm: Var,
    pub mlp_norm: Var,
    pub attn_post_norm: Option<Var>,
    pub mlp_post_norm: Option<Var>,
    pub q_norm: Option<Var>,
    pub k_norm: Option<Var>,
}

/// A decoder of one of the [`Family`](crate::model::arch::Family)s with trainable parameters.
pub struct DecoderModel {
    pub(crate) config: ModelConfig,
    varmap: VarMap,
    pub(crate) embed: Var,
    pub(crate) layers: Vec<LayerVars>,
    pub(crate) norm: Var,
    /// The output projection; `None` when tied to `embed`.
    pub(crate) lm_head: Option<Var>,
    /// RoPE of the global layers (every layer but Gemma 3's sliding ones).
    pub(crate) rope: RopeTables,
    /// RoPE of Gemma 3's sliding layers.
    pub(crate) rope_local: Option<RopeTables>,
    /// `rope` and `rope_local` as `(max_positions, head_dim/2)` cosine and sine tensors of the
    /// model's dtype (for the differentiable path), made once.
    pub(crate) rope_tensors: (Tensor, Tensor),
    pub(crate) rope_local_tensors: Option<(Tensor, Tensor)>,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// LoRA adapters; while attached, only they train and the base weights are frozen.
    pub(crate) lora: Option<Lora>,
}

impl std::fmt::Debug for DecoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderModel").field("config", &self.config).field("dtype", &self.dtype).finish_non_exhaustive()
    }
}

/// The shape of layer part `part` in a model of `config`.
fn part_shape(config: &ModelConfig, part: Part) -> Vec<usize> {
    match part {
        Part::Weight(p) => {
            let (out, input) = proj_dims(config, p);
            vec![out, input]
        }
        Part::Bias(p) => vec![proj_dims(config, p).0],
        Part::QNorm | Part::KNorm => vec![config.head_dim()],
        Part::AttnNorm | Part::AttnPostNorm | Part::MlpNorm | Part::MlpPostNorm => vec![config.hidden_size],
    }
}

/// `(out, in)` of projection `p` in a model of `config`.
pub(crate) fn proj_dims(config: &ModelConfig, p: Proj) -> (usize, usize) {
    let (d, f, hd) = (config.hidden_size, config.intermediate_size, config.head_dim());
    match p {
        Proj::Q => (config.num_attention_heads * hd, d),
        Proj::K | Proj::V => (config.kv_heads() * hd, d),
        Proj::O => (d, config.num_attention_heads * hd),
        Proj::Gate | Proj::Up => (f, d),
        Proj::Down => (d, f),
    }
}

/// The Hugging Face name and shape of every parameter `config` implies, in a fixed order: the
/// embeddings, each layer's [`Family::parts`](crate::model::arch::Family::parts), the final norm, the untied output projection.
pub fn parameter_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let family = config.family;
    let mut out = vec![(EMBED.to_string(), vec![config.vocab_size, config.hidden_size])];
    for i in 0..config.num_hidden_layers {
        for part in family.parts() {
            out.push((layer_name(i, &family.hf_part(part)), part_shape(config, part)));
        }
    }
    out.push((FINAL_NORM.to_string(), vec![config.hidden_size]));
    if !config.tied() {
        out.push((LM_HEAD.to_string(), vec![config.vocab_size, config.hidden_size]));
    }
    out
}

/// Whether a tensor of a checkpoint may be ignored: buffers some exporters write, and a duplicate
/// `lm_head.weight` next to tied embeddings.
fn ignorable(name: &str, config: &ModelConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (config.tied() && name == LM_HEAD)
}

impl DecoderModel {
    /// A freshly initialised model: every matrix drawn from normal(0, 0.02), every norm weight 1.
    /// The same `seed` gives the same weights.
    pub fn new_random(config: &ModelConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        for (name, shape) in parameter_shapes(config) {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = if config.family.is_norm(&name) {
                vec![1.0 - config.family.norm_offset(); count]
            } else if shape.len() == 1 {
                vec![0.0; count]
            } else {
                (0..count).map(|_| 0.02 * standard_normal(&mut rng)).collect()
            };
            tensors.insert(name, Tensor::from_vec(values, shape, &device)?);
        }
        Self::from_tensors(config, tensors, Path::new("<random init>"))
    }

    /// Builds a model from named tensors (Hugging Face names and values), converting them to
    /// `f32`. `origin` names the file they came from in error messages.
    pub fn from_tensors(config: &ModelConfig, mut tensors: HashMap<String, Tensor>, origin: &Path) -> Result<Self> {
        let offset = f64::from(config.family.norm_offset());
        if offset != 0.0 {
            for (name, t) in tensors.iter_mut() {
                if config.family.is_norm(name) {
                    *t = (t.to_dtype(DType::F32)? + offset)?;
                }
            }
        }
        Self::build(config, tensors, origin, DType::F32)
    }

    /// A copy of this model whose parameters have type `dtype` (for example `F64` for
    /// finite-difference gradient checks). The copy shares no storage with `self`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Self::build(&self.config, self.own_tensors()?, Path::new("<copy>"), dtype)
    }

    /// A snapshot of every parameter (detached copies) by Hugging Face name, with the engine's
    /// values (norm weights multiplicative; `arch.rs`).
    pub(crate) fn own_tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.named_vars().into_iter().map(|(n, v)| Ok((n, v.as_tensor().copy()?.detach()))).collect()
    }

    fn build(config: &ModelConfig, mut tensors: HashMap<String, Tensor>, origin: &Path, dtype: DType) -> Result<Self> {
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
        let family = config.family;
        let parts = family.parts();
        let take = |name: &str| vars[name].clone();
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                // Only the family's parts: Llama's MLP norm has the name of Gemma's attention output norm.
                let part = |p: Part| parts.contains(&p).then(|| take(&layer_name(i, &family.hf_part(p))));
                let must = |p: Part| take(&layer_name(i, &family.hf_part(p)));
                LayerVars {
                    proj: Proj::ALL.map(|p| must(Part::Weight(p))),
                    bias: [Proj::Q, Proj::K, Proj::V].map(|p| part(Part::Bias(p))),
                    attn_norm: must(Part::AttnNorm),
                    mlp_norm: must(Part::MlpNorm),
                    attn_post_norm: part(Part::AttnPostNorm),
                    mlp_post_norm: part(Part::MlpPostNorm),
                    q_norm: part(Part::QNorm),
                    k_norm: part(Part::KNorm),
                }
            })
            .collect();
        let (hd, positions) = (config.head_dim(), config.max_position_embeddings);
        let (theta, scaling) = config.rope(false)?;
        let rope = RopeTables::new(hd, theta, positions, scaling);
        let rope_local = if (0..config.num_hidden_layers).any(|l| config.layer_attention(l).local_rope) {
            let (theta, scaling) = config.rope(true)?;
            Some(RopeTables::new(hd, theta, positions, scaling))
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            embed: take(EMBED),
            layers,
            norm: take(FINAL_NORM),
            lm_head: (!config.tied()).then(|| take(LM_HEAD)),
            varmap,
            rope_tensors: rope.tensors(dtype, &Device::Cpu)?,
            rope_local_tensors: rope_local.as_ref().map(|r| r.tensors(dtype, &Device::Cpu)).transpose()?,
            rope,
            rope_local,
            dtype,
            device: Device::Cpu,
            lora: None,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
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

    /// A snapshot of every parameter (detached copies), by Hugging Face name, with Hugging Face's
    /// values (Gemma's norm weights less one; `arch.rs`).
    pub fn named_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let offset = f64::from(self.config.family.norm_offset());
        self.named_vars()
            .into_iter()
            .map(|(n, v)| {
                let t = v.as_tensor().copy()?.detach();
                let t = if offset != 0.0 && self.config.family.is_norm(&n) { (t - offset)? } else { t };
                Ok((n, t))
            })
            .collect()
    }

    /// RoPE tables of layer `layer`.
    pub(crate) fn rope_for(&self, layer: usize) -> &RopeTables {
        match &self.rope_local {
            Some(local) if self.config.layer_attention(layer).local_rope => local,
            _ => &self.rope,
        }
    }

    /// Overwrites every parameter with the matching tensor of `other` (same config required).
    /// This is how the loop resets to the base model without reallocating.
    pub fn copy_weights_from(&self, other: &DecoderModel) -> Result<()> {
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
impl DecoderModel {
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

    /// Restores a state taken with [`DecoderModel::dropout_state`].
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
        &self.proj[p as usize]
    }

    /// The bias of projection `p`, where the family has one.
    pub(crate) fn bias(&self, p: Proj) -> Option<&Var> {
        match p {
            Proj::Q | Proj::K | Proj::V => self.bias[p as usize].as_ref(),
            _ => None,
        }
    }
}

/// One draw from the standard normal distribution (Box-Muller), from a seeded generator.
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
