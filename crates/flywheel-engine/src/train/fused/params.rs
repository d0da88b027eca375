//! The parameters a pass reads, borrowed from their candle storage, and the gradients it writes,
//! laid out in the order of [`DecoderModel::trainable_vars`].

use candle_core::{CpuStorage, Storage, StorageRef, Var};

use crate::error::{EngineError, Result};
use crate::model::arch::Part;
use crate::model::lora::Proj;
use crate::model::DecoderModel;

/// A parameter's `f32` elements, borrowed from its candle storage for one pass.
pub(super) struct Held<'a> {
    guard: StorageRef<'a>,
    start: usize,
    len: usize,
}

impl<'a> Held<'a> {
    pub fn new(var: &'a Var, what: &str) -> Result<Self> {
        let (guard, layout) = var.as_tensor().storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(EngineError::invalid(format!("{what}: the parameter is not contiguous")));
        };
        if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
            return Err(EngineError::invalid(format!("{what}: the written-out pass needs f32 parameters on the CPU")));
        }
        Ok(Self { guard, start, len: end - start })
    }

    pub fn get(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => unreachable!("checked in Held::new"),
        }
    }
}

/// One layer's parameters: those of every family, and the family's optional parts.
pub(super) struct LayerParams<'a> {
    pub proj: [Held<'a>; 7],
    /// Query, key and value biases (Qwen2).
    pub bias: [Option<Held<'a>>; 3],
    pub attn_norm: Held<'a>,
    pub mlp_norm: Held<'a>,
    pub attn_post_norm: Option<Held<'a>>,
    pub mlp_post_norm: Option<Held<'a>>,
    pub q_norm: Option<Held<'a>>,
    pub k_norm: Option<Held<'a>>,
    /// `(A, B)` of each projection's adapter.
    pub lora: [Option<(Held<'a>, Held<'a>)>; 7],
}

/// Every parameter of the model, borrowed for one pass.
pub(super) struct Params<'a> {
    pub embed: Held<'a>,
    pub layers: Vec<LayerParams<'a>>,
    pub norm: Held<'a>,
    /// The untied output projection.
    pub head: Option<Held<'a>>,
}

impl<'a> Params<'a> {
    pub fn hold(model: &'a DecoderModel) -> Result<Self> {
        let layers = model
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let name = |what: &str| format!("layer {l} {what}");
                let optional =
                    |v: &'a Option<Var>, what: &str| v.as_ref().map(|v| Held::new(v, &name(what))).transpose();
                let proj = Proj::ALL.map(|p| Held::new(layer.weight(p), &name(p.module())));
                let bias = [Proj::Q, Proj::K, Proj::V].map(|p| optional(&layer.bias[p as usize], p.module()));
                let lora = Proj::ALL.map(|p| {
                    model.lora.as_ref().and_then(|lora| lora.adapter(l, p)).map(|ad| {
                        Ok::<_, EngineError>((
                            Held::new(&ad.a, &name(p.module()))?,
                            Held::new(&ad.b, &name(p.module()))?,
                        ))
                    })
                });
                Ok(LayerParams {
                    proj: collect(proj)?,
                    bias: collect(bias)?,
                    attn_norm: Held::new(&layer.attn_norm, &name("attention norm"))?,
                    mlp_norm: Held::new(&layer.mlp_norm, &name("MLP norm"))?,
                    attn_post_norm: optional(&layer.attn_post_norm, "attention output norm")?,
                    mlp_post_norm: optional(&layer.mlp_post_norm, "MLP output norm")?,
                    q_norm: optional(&layer.q_norm, "query norm")?,
                    k_norm: optional(&layer.k_norm, "key norm")?,
                    lora: collect(lora.map(Option::transpose))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed: Held::new(&model.embed, "embed_tokens")?,
            layers,
            norm: Held::new(&model.norm, "norm")?,
            head: model.lm_head.as_ref().map(|v| Held::new(v, "lm_head")).transpose()?,
        })
    }

    pub fn head(&self) -> &[f32] {
        self.head.as_ref().unwrap_or(&self.embed).get()
    }
}

/// `N` results into an array, or the first error.
fn collect<T, const N: usize>(items: [Result<T>; N]) -> Result<[T; N]> {
    let mut out = Vec::with_capacity(N);
    for item in items {
        out.push(item?);
    }
    Ok(out.try_into().unwrap_or_else(|_| unreachable!("{N} items")))
}

/// Where each trainable parameter's gradient lives in [`Grads::bufs`].
#[derive(Debug)]
enum GradLayout {
    /// Every parameter, in [`crate::model::parameter_shapes`] order: the embeddings, each
    /// layer's `parts`, the final norm, the untied head.
    Full { layers: usize, parts: Vec<Part>, tied: bool },
    /// Adapters only: `slots[layer][proj]` is the index of `A` (`B` follows).
    Lora { slots: Vec<[Option<usize>; 7]> },
}

/// The gradients of the trainable parameters, in the order of
/// [`DecoderModel::trainable_vars`].
#[derive(Debug)]
pub(super) struct Grads {
    pub bufs: Vec<Vec<f32>>,
    layout: GradLayout,
}

impl Grads {
    pub fn new(model: &DecoderModel, vars: &[Var]) -> Self {
        let layout = match &model.lora {
            None => GradLayout::Full {
                layers: model.layers.len(),
                parts: model.config.family.parts(),
                tied: model.lm_head.is_none(),
            },
            Some(lora) => {
                let mut next = 0;
                let slots = (0..model.layers.len())
                    .map(|l| {
                        Proj::ALL.map(|p| {
                            lora.adapter(l, p).map(|_| {
                                next += 2;
                                next - 2
                            })
                        })
                    })
                    .collect();
                GradLayout::Lora { slots }
            }
        };
        Self { bufs: vars.iter().map(|v| vec![0.0; v.elem_count()]).collect(), layout }
    }

    /// The buffer at `index(layers, parts per layer)` (full fine-tuning only).
    fn full(&mut self, index: impl FnOnce(usize, &[Part]) -> Option<usize>) -> Option<&mut [f32]> {
        match &self.layout {
            GradLayout::Full { layers, parts, .. } => {
                let i = index(*layers, parts)?;
                Some(&mut self.bufs[i])
            }
            GradLayout::Lora { .. } => None,
        }
    }

    /// The gradient of layer `l`'s parameter `part` (full fine-tuning; `None` for a part the
    /// family lacks).
    pub fn part(&mut self, l: usize, part: Part) -> Option<&mut [f32]> {
        self.full(|_, parts| parts.iter().position(|&p| p == part).map(|i| 1 + parts.len() * l + i))
    }

    /// The gradient of projection `p`'s weight in layer `l` (full fine-tuning).
    pub fn weight(&mut self, l: usize, p: Proj) -> Option<&mut [f32]> {
        self.part(l, Part::Weight(p))
    }

    pub fn final_norm(&mut self) -> Option<&mut [f32]> {
        self.full(|layers, parts| Some(1 + parts.len() * layers))
    }

    pub fn embed(&mut self) -> Option<&mut [f32]> {
        self.full(|_, _| Some(0))
    }

    pub fn head(&mut self) -> Option<&mut [f32]> {
        let tied = matches!(self.layout, GradLayout::Full { tied: true, .. });
        self.full(|layers, parts| Some(if tied { 0 } else { 2 + parts.len() * layers }))
    }

    /// The gradients of `A` and `B` of projection `p`'s adapter in layer `l`.
    pub fn adapter(&mut self, l: usize, p: Proj) -> Option<(&mut [f32], &mut [f32])> {
        let GradLayout::Lora { slots } = &self.layout else { return None };
        let i = slots[l][p as usize]?;
        let (a, b) = self.bufs[i..].split_at_mut(1);
        Some((&mut a[0], &mut b[0]))
    }
}
