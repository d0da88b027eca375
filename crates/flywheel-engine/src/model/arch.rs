//! The decoder families, described once.
//!
//! Llama, Qwen2/2.5, Qwen3 and Gemma 3 are one decoder with optional parts: a layer normalises,
//! projects queries, keys and values (with biases in Qwen2), normalises each query and key head
//! (Qwen3, Gemma 3), rotates them, attends (over a sliding window in Gemma 3's local layers),
//! projects back (normalising the result in Gemma 3), adds to the residual stream, and does the
//! same with a gated MLP (SwiGLU, or GeGLU in Gemma). This file says which parts each family has
//! and what its tensors are called in Hugging Face checkpoints and in llama.cpp's GGUF files. The
//! three passes over the model (the autograd reference in `forward.rs`, the sampler in
//! `sample/infer.rs`, the written-out training pass in `train/fused/`) read the layer's parts from
//! here, the readers and writers of `formats/` its names; adding a family is an entry here plus
//! whatever new optional step it needs in those passes.
//!
//! One convention inside the engine: a norm weight multiplies (`x̂ · w`). Gemma's checkpoints
//! store `w - 1` (its RMSNorm multiplies by `1 + w`); [`Family::norm_offset`] is added when a
//! Hugging Face checkpoint is read and taken off when one is written. llama.cpp's converter adds
//! it too, so Gemma GGUF tensors are already multiplicative.

use serde::{Deserialize, Serialize};

use crate::model::lora::Proj;

/// A decoder family, named by its `config.json` `model_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Family {
    /// Llama 1-3 and the models built on it (SmolLM2, TinyLlama, …).
    #[default]
    Llama,
    /// Qwen2 and Qwen2.5 (Math, Coder): biases on the query, key and value projections.
    Qwen2,
    /// Qwen3 (dense): an RMSNorm on every query and key head.
    Qwen3,
    /// Gemma 3 (text): norms around attention and MLP, `(1 + w)` norms, scaled embeddings,
    /// GeGLU, per-head query/key norms, local sliding-window layers with their own RoPE base.
    Gemma3,
}

/// Every family, in the order the docs list them.
pub const FAMILIES: [Family; 4] = [Family::Llama, Family::Qwen2, Family::Qwen3, Family::Gemma3];

/// One parameter of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// A projection's weight matrix.
    Weight(Proj),
    /// A projection's bias (Qwen2's query, key and value).
    Bias(Proj),
    /// The norm before attention.
    AttnNorm,
    /// The norm of attention's output, before the residual add (Gemma).
    AttnPostNorm,
    /// The norm before the MLP.
    MlpNorm,
    /// The norm of the MLP's output, before the residual add (Gemma).
    MlpPostNorm,
    /// The norm of each query head (`head_dim` wide).
    QNorm,
    /// The norm of each key head.
    KNorm,
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x σ(x)` (SwiGLU).
    Silu,
    /// GELU, tanh approximation (GeGLU; `gelu_pytorch_tanh`).
    GeluTanh,
}

impl Family {
    /// The family a `config.json` `model_type` names.
    pub fn from_model_type(name: &str) -> Option<Family> {
        FAMILIES.into_iter().find(|f| f.model_type() == name)
    }

    /// The family a GGUF `general.architecture` names.
    pub fn from_gguf(name: &str) -> Option<Family> {
        FAMILIES.into_iter().find(|f| f.gguf_architecture() == name)
    }

    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3_text",
        }
    }

    /// `config.json`'s `architectures[0]`: the `transformers` class that loads it.
    pub fn hf_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// GGUF's `general.architecture` (also the prefix of its metadata keys).
    pub fn gguf_architecture(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3",
        }
    }

    /// The supported names, for error messages.
    pub fn supported(gguf: bool) -> String {
        let names: Vec<&str> =
            FAMILIES.iter().map(|f| if gguf { f.gguf_architecture() } else { f.model_type() }).collect();
        names.join(", ")
    }

    /// Whether the query, key and value projections have biases.
    pub fn qkv_bias(self) -> bool {
        self == Family::Qwen2
    }

    /// Whether each query and key head is RMS-normalised before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Gemma3)
    }

    /// Whether attention's and the MLP's outputs are normalised before the residual add.
    pub fn post_norms(self) -> bool {
        self == Family::Gemma3
    }

    /// What Hugging Face checkpoints leave out of each norm weight (see the module doc).
    pub fn norm_offset(self) -> f32 {
        if self == Family::Gemma3 {
            1.0
        } else {
            0.0
        }
    }

    /// Whether token embeddings are multiplied by `sqrt(hidden_size)` on the way in.
    pub fn scales_embeddings(self) -> bool {
        self == Family::Gemma3
    }

    /// Whether llama.cpp's converter permutes the query and key rows of this family
    /// (`formats/gguf.rs`): it does for Llama only, whose GGUF RoPE rotates adjacent pairs.
    pub fn gguf_permutes_qk(self) -> bool {
        self == Family::Llama
    }

    /// Whether the output projection is tied to the embeddings when `config.json` does not say
    /// (the `transformers` class's default, which `save_pretrained` leaves out).
    pub fn ties_by_default(self) -> bool {
        self == Family::Gemma3
    }

    /// The parameters of one layer, in checkpoint order.
    pub fn parts(self) -> Vec<Part> {
        let mut parts: Vec<Part> = Proj::ALL.into_iter().map(Part::Weight).collect();
        if self.qkv_bias() {
            parts.extend([Proj::Q, Proj::K, Proj::V].map(Part::Bias));
        }
        parts.extend([Part::AttnNorm, Part::MlpNorm]);
        if self.post_norms() {
            parts.extend([Part::AttnPostNorm, Part::MlpPostNorm]);
        }
        if self.qk_norm() {
            parts.extend([Part::QNorm, Part::KNorm]);
        }
        parts
    }

    /// The Hugging Face name of `part` inside a layer (`self_attn.q_proj.weight`).
    pub fn hf_part(self, part: Part) -> String {
        let gemma = self == Family::Gemma3;
        match part {
            Part::Weight(p) => format!("{}.weight", p.path()),
            Part::Bias(p) => format!("{}.bias", p.path()),
            Part::AttnNorm => "input_layernorm.weight".into(),
            // Llama's "post-attention" norm is the one before the MLP; Gemma's is after attention.
            Part::AttnPostNorm => "post_attention_layernorm.weight".into(),
            Part::MlpNorm if gemma => "pre_feedforward_layernorm.weight".into(),
            Part::MlpNorm => "post_attention_layernorm.weight".into(),
            Part::MlpPostNorm => "post_feedforward_layernorm.weight".into(),
            Part::QNorm => "self_attn.q_norm.weight".into(),
            Part::KNorm => "self_attn.k_norm.weight".into(),
        }
    }

    /// The llama.cpp name of `part` inside a block (`attn_q.weight`).
    pub fn gguf_part(self, part: Part) -> String {
        let proj = |p: Proj| match p {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        };
        match part {
            Part::Weight(p) => format!("{}.weight", proj(p)),
            Part::Bias(p) => format!("{}.bias", proj(p)),
            Part::AttnNorm => "attn_norm.weight".into(),
            Part::AttnPostNorm => "post_attention_norm.weight".into(),
            Part::MlpNorm => "ffn_norm.weight".into(),
            Part::MlpPostNorm => "post_ffw_norm.weight".into(),
            Part::QNorm => "attn_q_norm.weight".into(),
            Part::KNorm => "attn_k_norm.weight".into(),
        }
    }

    /// The Hugging Face name of a llama.cpp tensor name of this family, or `None` for a name it
    /// does not know.
    pub fn hf_name(self, gguf: &str) -> Option<String> {
        match gguf {
            "token_embd.weight" => return Some(EMBED.into()),
            "output_norm.weight" => return Some(FINAL_NORM.into()),
            "output.weight" => return Some(LM_HEAD.into()),
            _ => {}
        }
        let (layer, name) = gguf.strip_prefix("blk.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let part = self.parts().into_iter().find(|&p| self.gguf_part(p) == name)?;
        Some(layer_name(layer, &self.hf_part(part)))
    }

    /// The llama.cpp name of a Hugging Face tensor name of this family.
    pub fn gguf_name(self, hf: &str) -> Option<String> {
        match hf {
            EMBED => return Some("token_embd.weight".into()),
            FINAL_NORM => return Some("output_norm.weight".into()),
            LM_HEAD => return Some("output.weight".into()),
            _ => {}
        }
        let (layer, name) = hf.strip_prefix("model.layers.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let part = self.parts().into_iter().find(|&p| self.hf_part(p) == name)?;
        Some(format!("blk.{layer}.{}", self.gguf_part(part)))
    }

    /// Whether the Hugging Face tensor `hf` is a norm weight of this family (the final norm or a
    /// layer's), the tensors Gemma's checkpoints store less [`Family::norm_offset`].
    pub fn is_norm(self, hf: &str) -> bool {
        hf == FINAL_NORM || self.part_of(hf).is_some_and(|(_, p)| p.is_norm())
    }

    /// The part a Hugging Face tensor name is, with its layer (`None` outside the layers).
    pub fn part_of(self, hf: &str) -> Option<(usize, Part)> {
        let (layer, name) = hf.strip_prefix("model.layers.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        self.parts().into_iter().find(|&p| self.hf_part(p) == name).map(|p| (layer, p))
    }
}

impl TryFrom<String> for Family {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Family::from_model_type(&name)
            .ok_or_else(|| format!("model_type `{name}` is not supported (supported: {})", Family::supported(false)))
    }
}

impl From<Family> for String {
    fn from(f: Family) -> String {
        f.model_type().to_string()
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

impl Part {
    /// Whether the part is a norm weight (a vector that multiplies).
    pub fn is_norm(self) -> bool {
        !matches!(self, Part::Weight(_) | Part::Bias(_))
    }
}

/// The token embeddings' Hugging Face name.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The final norm's Hugging Face name.
pub const FINAL_NORM: &str = "model.norm.weight";
/// The untied output projection's Hugging Face name.
pub const LM_HEAD: &str = "lm_head.weight";

/// The Hugging Face name of a layer's parameter.
pub fn layer_name(layer: usize, part_name: &str) -> String {
    format!("model.layers.{layer}.{part_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_between_hugging_face_and_llama_cpp() {
        for family in FAMILIES {
            for part in family.parts() {
                let hf = layer_name(7, &family.hf_part(part));
                let gguf = family.gguf_name(&hf).unwrap();
                assert_eq!(family.hf_name(&gguf).as_deref(), Some(hf.as_str()), "{family} {part:?}");
                assert_eq!(family.part_of(&hf), Some((7, part)));
            }
        }
        assert_eq!(
            Family::Llama.hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            Family::Gemma3.hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            Family::Gemma3.hf_name("blk.2.post_attention_norm.weight").unwrap(),
            "model.layers.2.post_attention_layernorm.weight"
        );
        assert_eq!(Family::Qwen2.hf_name("blk.3.attn_q.bias").unwrap(), "model.layers.3.self_attn.q_proj.bias");
        assert!(Family::Llama.hf_name("blk.3.attn_q.bias").is_none(), "Llama has no biases");
        assert!(Family::Llama.hf_name("blk.x.attn_q.weight").is_none());
    }

    #[test]
    fn every_family_has_its_own_parts() {
        assert_eq!(Family::Llama.parts().len(), 9);
        assert_eq!(Family::Qwen2.parts().len(), 12);
        assert_eq!(Family::Qwen3.parts().len(), 11);
        assert_eq!(Family::Gemma3.parts().len(), 13);
        let parts = Family::Gemma3.parts();
        let names: std::collections::HashSet<String> = parts.iter().map(|&p| Family::Gemma3.hf_part(p)).collect();
        assert_eq!(names.len(), parts.len(), "no two parts share a name");
    }

    #[test]
    fn model_types_parse_and_unknown_ones_are_named() {
        let f: Family = serde_json::from_str("\"qwen2\"").unwrap();
        assert_eq!(f, Family::Qwen2);
        let err = serde_json::from_str::<Family>("\"mistral\"").unwrap_err().to_string();
        assert!(err.contains("mistral") && err.contains("qwen3"), "{err}");
        assert_eq!(Family::from_gguf("gemma3"), Some(Family::Gemma3));
        assert_eq!(serde_json::to_string(&Family::Gemma3).unwrap(), "\"gemma3_text\"");
    }
}
