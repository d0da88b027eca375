//! LoRA (Hu et al. 2021): low-rank adapters on the frozen base model, in PEFT's layout.
//!
//! A targeted projection `y = x Wᵀ` becomes `y = x Wᵀ + (alpha / rank) · dropout(x) Aᵀ Bᵀ`, with
//! `A` `(rank, in)` drawn as PEFT draws it (Kaiming-uniform, bound `1/sqrt(in)`) and `B` `(out,
//! rank)` zero, so a fresh adapter leaves the model unchanged. Only `A` and `B` train.
//!
//! The base stays in `f32` (candle's quantized matmul has no backward pass), and it is frozen
//! through [`FrozenLinear`]: candle's own matmul backward always computes the gradient of both
//! operands, which for a frozen weight is a third of the layer's work thrown away (and, for the
//! tied 49152 × 576 output projection, a 113 MB gradient per micro-batch). [`FrozenLinear`] is a
//! custom op whose backward returns only the input's gradient.
//!
//! Adapters are saved as PEFT saves them (`adapter_config.json`, `adapter_model.safetensors` with
//! names like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so PEFT, vLLM and
//! `transformers` load them; see `adapter.rs`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// The seven linear projections of a Llama decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    /// `self_attn.q_proj`
    #[serde(rename = "q_proj")]
    Q,
    /// `self_attn.k_proj`
    #[serde(rename = "k_proj")]
    K,
    /// `self_attn.v_proj`
    #[serde(rename = "v_proj")]
    V,
    /// `self_attn.o_proj`
    #[serde(rename = "o_proj")]
    O,
    /// `mlp.gate_proj`
    #[serde(rename = "gate_proj")]
    Gate,
    /// `mlp.up_proj`
    #[serde(rename = "up_proj")]
    Up,
    /// `mlp.down_proj`
    #[serde(rename = "down_proj")]
    Down,
}

impl Proj {
    /// Every projection, in layer order.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// The module's name inside its layer, as PEFT's `target_modules` names it (`q_proj`).
    pub fn module(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// The module's path inside a layer (`self_attn.q_proj`).
    pub fn path(self) -> String {
        let parent = if matches!(self, Proj::Gate | Proj::Up | Proj::Down) { "mlp" } else { "self_attn" };
        format!("{parent}.{}", self.module())
    }

    /// The projection a PEFT target-module name means, if any.
    pub fn from_module(name: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.module() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank of the update.
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Projections that get an adapter.
    pub targets: Vec<Proj>,
}

impl LoraConfig {
    /// Checks the values (rank ≥ 1, dropout in [0, 1), at least one target).
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(EngineError::Adapter("rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(EngineError::Adapter(format!("dropout must be in [0, 1), got {}", self.dropout)));
        }
        if self.targets.is_empty() {
            return Err(EngineError::Adapter("no target modules".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(EngineError::Adapter(format!("alpha must be positive, got {}", self.alpha)));
        }
        Ok(())
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One adapter: `A` `(rank, in)` and `B` `(out, rank)`.
#[derive(Debug, Clone)]
pub(crate) struct Adapter {
    pub a: Var,
    pub b: Var,
}

/// The adapters of a model and their settings.
#[derive(Debug)]
pub(crate) struct Lora {
    pub config: LoraConfig,
    /// `adapters[layer][proj]`.
    pub adapters: Vec<[Option<Adapter>; 7]>,
    /// Draws dropout masks; reseeded with the adapters so training is reproducible.
    rng: Mutex<StdRng>,
}

impl Lora {
    /// Fresh adapters for `layers` layers whose projection `p` maps `dims(p).1` inputs to
    /// `dims(p).0` outputs: `A` Kaiming-uniform (PEFT's default), `B` zero.
    pub fn new(config: LoraConfig, layers: usize, dims: impl Fn(Proj) -> (usize, usize), seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut adapters = Vec::with_capacity(layers);
        for _ in 0..layers {
            let mut row: [Option<Adapter>; 7] = Default::default();
            for &p in &config.targets {
                let (out, inp) = dims(p);
                let a = Tensor::from_vec(kaiming_uniform(&mut rng, config.rank, inp), (config.rank, inp), &cpu())?;
                let b = Tensor::zeros((out, config.rank), candle_core::DType::F32, &cpu())?;
                row[p.index()] = Some(Adapter { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)? });
            }
            adapters.push(row);
        }
        Ok(Self { config, adapters, rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0xd20f_0a75)) })
    }

    /// Re-draws every adapter in place (`A` random, `B` zero) from `seed`: back to the base model.
    pub fn reset(&self, seed: u64) -> Result<()> {
        let mut rng = StdRng::seed_from_u64(seed);
        for row in &self.adapters {
            for &p in &self.config.targets {
                let ad = row[p.index()].as_ref().expect("every target has an adapter");
                let (rank, inp) = ad.a.dims2()?;
                ad.a.set(&Tensor::from_vec(kaiming_uniform(&mut rng, rank, inp), (rank, inp), &cpu())?)?;
                ad.b.set(&ad.b.zeros_like()?)?;
            }
        }
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = StdRng::seed_from_u64(seed ^ 0xd20f_0a75);
        Ok(())
    }

    /// The dropout generator's state, to replay the same masks when a layer is recomputed.
    pub(crate) fn dropout_state(&self) -> StdRng {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the dropout generator's state (see [`Lora::dropout_state`]).
    pub(crate) fn set_dropout_state(&self, state: StdRng) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// The adapter of `proj` in `layer`, if it is a target.
    pub fn adapter(&self, layer: usize, proj: Proj) -> Option<&Adapter> {
        self.adapters.get(layer).and_then(|row| row[proj.index()].as_ref())
    }

    /// Every adapter variable, `A` then `B`, layer by layer.
    pub fn vars(&self) -> Vec<Var> {
        self.adapters.iter().flatten().flatten().flat_map(|ad| [ad.a.clone(), ad.b.clone()]).collect()
    }

    /// The adapter's contribution to `x`'s projection: `scale · dropout(x) Aᵀ Bᵀ`.
    pub fn delta(&self, adapter: &Adapter, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = if train && self.config.dropout > 0.0 { self.dropout(x)? } else { x.clone() };
        Ok((x.matmul(&adapter.a.t()?)?.matmul(&adapter.b.t()?)? * self.config.scale())?)
    }

    /// `scale · B A`, the adapter folded into a weight update of `W`'s shape.
    pub fn merged_delta(&self, adapter: &Adapter) -> Result<Tensor> {
        Ok((adapter.b.as_tensor().matmul(adapter.a.as_tensor())? * self.config.scale())?)
    }

    /// Inverted dropout with a mask from the seeded generator.
    fn dropout(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        let mut mask = Vec::new();
        dropout_mask(
            &mut self.rng.lock().unwrap_or_else(|e| e.into_inner()),
            self.config.dropout,
            rows,
            cols,
            &mut mask,
        );
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}

/// An inverted-dropout mask for a `rows × cols` input: each element `0` with probability `p`
/// (to 1/65536), else the scale that keeps the expectation, `1 / (1 − p)`.
///
/// One `u64` from `rng` seeds the mask; row `r` then draws 16-bit uniforms from its own small
/// generator seeded by (that seed, `r`), so rows fill in parallel and the mask depends on neither
/// the thread count nor the order rows are filled in. Both training passes draw masks here, so a
/// pass replayed from the same generator state draws the same mask.
pub(crate) fn dropout_mask(rng: &mut StdRng, p: f64, rows: usize, cols: usize, out: &mut Vec<f32>) {
    use rand::rngs::SmallRng;
    use rand::RngCore;
    use rayon::prelude::*;
    let seed: u64 = rng.random();
    let threshold = (p * 65536.0).round().min(65535.0) as u32;
    let keep = (65536.0 / (65536.0 - f64::from(threshold))) as f32;
    out.clear();
    out.resize(rows * cols, 0.0);
    let pick = move |bits: u64, lane: u32| if (bits >> (16 * lane)) as u16 as u32 >= threshold { keep } else { 0.0 };
    out.par_chunks_mut(cols.max(1)).enumerate().with_min_len(16).for_each(|(r, row)| {
        let mut g = SmallRng::seed_from_u64(seed ^ (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut quads = row.chunks_exact_mut(4);
        for m in quads.by_ref() {
            let bits = g.next_u64();
            m.copy_from_slice(&[pick(bits, 0), pick(bits, 1), pick(bits, 2), pick(bits, 3)]);
        }
        let bits = g.next_u64();
        for (lane, m) in (0..).zip(quads.into_remainder()) {
            *m = pick(bits, lane);
        }
    });
}

fn cpu() -> candle_core::Device {
    candle_core::Device::Cpu
}

/// PEFT's default initialisation of `A` (`kaiming_uniform_(a=sqrt(5))`): uniform in ±1/sqrt(in).
fn kaiming_uniform(rng: &mut StdRng, rows: usize, inp: usize) -> Vec<f32> {
    let bound = 1.0 / (inp as f64).sqrt();
    (0..rows * inp).map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32).collect()
}

/// `x Wᵀ` for a frozen weight `W` `(out, in)`, with a backward pass for `x` only.
///
/// Used for every base projection while adapters train. `x` is 2-D `(rows, in)`.
pub(crate) struct FrozenLinear {
    /// `W` `(out, in)`, contiguous.
    pub weight: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inp) = layout.shape().dims2()?;
        let data = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("frozen-linear: the input must be f32"),
        };
        let x = match layout.contiguous_offsets() {
            Some((start, end)) => Tensor::from_slice(&data[start..end], (rows, inp), &cpu())?,
            None => candle_core::bail!("frozen-linear: the input must be contiguous"),
        };
        let y = x.matmul(&self.weight.t()?)?;
        let out = y.dims2()?.1;
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1()?), Shape::from((rows, out))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.weight)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_linear_matches_matmul_and_gives_only_the_input_gradient() {
        let w = Tensor::new(&[[1f32, 2.0, 3.0], [-1.0, 0.5, 2.0]], &cpu()).unwrap();
        let x = Var::new(&[[0.5f32, -1.0, 2.0], [1.0, 1.0, 1.0]], &cpu()).unwrap();
        let y = x.as_tensor().apply_op1(FrozenLinear { weight: w.clone() }).unwrap();
        let reference = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), reference.to_vec2::<f32>().unwrap());
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(&x).unwrap().to_vec2::<f32>().unwrap();
        // d(sum(x Wᵀ))/dx = 1 W: every row is the column sums of W.
        assert_eq!(gx, vec![vec![0.0, 2.5, 5.0]; 2]);
        assert!(grads.get(&w).is_none());
    }

    #[test]
    fn fresh_adapters_change_nothing_and_reset_restores_them() {
        let config = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec![Proj::Q, Proj::Down] };
        let lora = Lora::new(config, 2, |p| if p == Proj::Down { (6, 10) } else { (8, 6) }, 1).unwrap();
        assert_eq!(lora.vars().len(), 2 * 2 * 2);
        let ad = lora.adapter(1, Proj::Down).unwrap();
        assert_eq!((ad.a.dims(), ad.b.dims()), (&[4usize, 10][..], &[6usize, 4][..]));
        assert!(lora.adapter(0, Proj::K).is_none());
        let zero = lora.merged_delta(ad).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(zero, 0.0);
        let a0 = ad.a.to_vec2::<f32>().unwrap();
        assert!(a0.iter().flatten().all(|v| v.abs() <= 1.0 / 10f32.sqrt()));
        ad.b.set(&Tensor::ones((6, 4), candle_core::DType::F32, &cpu()).unwrap()).unwrap();
        lora.reset(1).unwrap();
        assert_eq!(ad.a.to_vec2::<f32>().unwrap(), a0[..].to_vec());
        assert_eq!(ad.b.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn bad_settings_are_rejected() {
        let ok = LoraConfig { rank: 8, alpha: 16.0, dropout: 0.05, targets: vec![Proj::Q] };
        assert!(ok.validate().is_ok());
        assert!(LoraConfig { rank: 0, ..ok.clone() }.validate().is_err());
        assert!(LoraConfig { dropout: 1.0, ..ok.clone() }.validate().is_err());
        assert!(LoraConfig { targets: vec![], ..ok }.validate().is_err());
        assert_eq!(Proj::from_module("gate_proj"), Some(Proj::Gate));
        assert_eq!(Proj::Gate.path(), "mlp.gate_proj");
    }
}
