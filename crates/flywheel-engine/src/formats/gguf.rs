//! Reading llama.cpp's GGUF files: the model's shape, its weights (dequantized to `f32`, under
//! Hugging Face names), its tokenizer and its chat template, for every family of `model/arch.rs`
//! (`general.architecture` names it; its metadata keys are prefixed with that name).
//!
//! Three things differ from a Hugging Face checkpoint and are undone here:
//!
//! * **Names.** `blk.3.attn_q.weight` is `model.layers.3.self_attn.q_proj.weight`, and so on
//!   ([`Family::hf_name`]).
//! * **Q and K rows, for Llama.** llama.cpp's converter permutes the rows of Llama's query and key
//!   projections so that its RoPE can rotate adjacent pairs `(x[2i], x[2i+1])`; Hugging Face's
//!   rotates the two halves of each head `(x[i], x[i + d/2])`. The converter reshapes the rows to
//!   `(heads, 2, head_dim/2)` and swaps the last two axes; [`unpermute_rows`] does the inverse,
//!   reshaping to `(heads, head_dim/2, 2)` and swapping back, so that the forward pass stays the
//!   Hugging Face one. Qwen and Gemma files keep Hugging Face's order (llama.cpp runs their RoPE
//!   in "NeoX" mode, rotating halves).
//! * **Norm weights, for Gemma.** The converter adds 1 to Gemma's norm weights (its RMSNorm
//!   multiplies by `1 + w`); they are taken back to Hugging Face's values here, so that
//!   [`GgufModel::tensors`] holds what a Hugging Face checkpoint would.
//! * **Tokenizer.** (`gguf_tokenizer.rs`) GGUF stores the vocabulary, the merges, each token's type and the name of the
//!   pre-tokenizer (`tokenizer.ggml.pre`), not a `tokenizer.json`. [`tokenizer_json`] builds the
//!   equivalent `tokenizer.json` (byte-level BPE, control tokens as special added tokens, the
//!   pre-tokenizer llama.cpp uses for that name), so the rest of the engine sees one tokenizer type.
//!
//! Quantized matrices (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants Q2_K to Q6_K; f16, bf16, f32)
//! are dequantized once at load by candle's GGML code: the sampler and trainer work in `f32`, and
//! candle's quantized matmul has no backward pass to train through.

use crate::error::without_backtrace;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::json;

use crate::error::{EngineError, Result};
use crate::formats::gguf_tokenizer::tokenizer_json;
use crate::model::arch::Family;
use crate::model::config::{ModelConfig, TokenIds};
use crate::text::tokenizer::TextTokenizer;

/// Everything a GGUF file provides, in the engine's terms.
#[derive(Debug)]
pub struct GgufModel {
    /// The model's shape and special ids.
    pub config: ModelConfig,
    /// Every weight, `f32`, under its Hugging Face name, Q/K rows in Hugging Face order.
    pub tensors: HashMap<String, Tensor>,
    /// The tokenizer rebuilt from the vocabulary and merges.
    pub tokenizer: TextTokenizer,
    /// The Jinja chat template (`tokenizer.chat_template`), if the file has one.
    pub chat_template: Option<String>,
}

/// Reads a GGUF file of one of the supported architectures.
pub fn load_gguf(path: &Path) -> Result<GgufModel> {
    let err = |reason: String| EngineError::Gguf { path: path.to_path_buf(), reason };
    let file = File::open(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
    let mut reader = BufReader::new(file);
    let content =
        Content::read(&mut reader).map_err(|e| err(format!("not a readable GGUF file: {}", without_backtrace(e))))?;
    let meta = Metadata { map: &content.metadata, path };
    let arch = meta.string("general.architecture")?;
    let family = Family::from_gguf(&arch).ok_or_else(|| {
        err(format!("architecture `{arch}` is not supported (supported: {})", Family::supported(true)))
    })?;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(err("tensor `rope_freqs.weight` (Llama 3.1's RoPE frequency factors) is not supported yet; \
             the Hugging Face directory of the model loads"
            .into()));
    }
    let config = config_from_metadata(&meta, family, content.tensor_infos.contains_key("output.weight"))?;
    config.validate()?;
    let offset = f64::from(family.norm_offset());
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let hf = family
            .hf_name(name)
            .ok_or_else(|| err(format!("tensor `{name}` is not a parameter of a `{arch}` model")))?;
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| err(format!("tensor `{name}`: {}", without_backtrace(e))))?;
        let mut t = q.dequantize(&Device::Cpu)?;
        crate::formats::checkpoint::check_finite(path, name, &t)?;
        if family.gguf_permutes_qk() && name.ends_with("attn_q.weight") {
            t = unpermute_rows(&t, config.num_attention_heads)?;
        } else if family.gguf_permutes_qk() && name.ends_with("attn_k.weight") {
            t = unpermute_rows(&t, config.kv_heads())?;
        }
        if offset != 0.0 && family.is_norm(&hf) {
            t = (t - offset)?;
        }
        tensors.insert(hf, t);
    }
    let tokenizer = TextTokenizer::from_json(&tokenizer_json(&meta)?)?;
    let chat_template = meta.optional_string("tokenizer.chat_template")?;
    Ok(GgufModel { config, tensors, tokenizer, chat_template })
}

/// The Hugging Face name of a llama.cpp tensor name of a Llama model (see [`Family::hf_name`]).
pub fn hf_name(gguf: &str) -> Option<String> {
    Family::Llama.hf_name(gguf)
}

/// Undoes llama.cpp's row permutation of a `(heads * head_dim, in)` query or key projection.
pub fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(EngineError::invalid(format!("cannot unpermute {rows} rows into {heads} heads")));
    }
    let half = rows / heads / 2;
    Ok(w.reshape((heads, half, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

/// Typed access to GGUF metadata, with errors naming the file and key.
pub(super) struct Metadata<'a> {
    pub map: &'a HashMap<String, Value>,
    pub path: &'a Path,
}

impl Metadata<'_> {
    pub fn err(&self, key: &str, reason: impl std::fmt::Display) -> EngineError {
        EngineError::Gguf { path: self.path.to_path_buf(), reason: format!("metadata `{key}`: {reason}") }
    }

    pub fn get(&self, key: &str) -> Result<&Value> {
        self.map.get(key).ok_or_else(|| self.err(key, "missing"))
    }

    pub fn string(&self, key: &str) -> Result<String> {
        self.get(key)?.to_string().cloned().map_err(|e| self.err(key, e))
    }

    pub fn optional_string(&self, key: &str) -> Result<Option<String>> {
        self.map.get(key).map(|v| v.to_string().cloned().map_err(|e| self.err(key, e))).transpose()
    }

    /// An unsigned integer of any width.
    pub fn uint(&self, key: &str) -> Result<u64> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => u64::from(*x),
            Value::U16(x) => u64::from(*x),
            Value::U32(x) => u64::from(*x),
            Value::U64(x) => *x,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => return Err(self.err(key, format!("expected an unsigned integer, got {other:?}"))),
        };
        Ok(n)
    }

    pub fn optional_uint(&self, key: &str) -> Result<Option<u64>> {
        if self.map.contains_key(key) {
            self.uint(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn optional_float(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(other) => Err(self.err(key, format!("expected a float, got {other:?}"))),
        }
    }

    pub fn array(&self, key: &str) -> Result<&Vec<Value>> {
        self.get(key)?.to_vec().map_err(|e| self.err(key, e))
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)?.iter().map(|v| v.to_string().cloned().map_err(|e| self.err(key, e))).collect()
    }
}

fn config_from_metadata(meta: &Metadata<'_>, family: Family, has_output: bool) -> Result<ModelConfig> {
    let arch = family.gguf_architecture();
    let key = |k: &str| format!("{arch}.{k}");
    let usize_of = |k: &str| meta.uint(&key(k)).map(|x| x as usize);
    let optional = |k: &str| meta.optional_uint(&key(k)).map(|x| x.map(|x| x as usize));
    let hidden = usize_of("embedding_length")?;
    let heads = usize_of("attention.head_count")?;
    let vocab = match meta.optional_uint(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => meta.array("tokenizer.ggml.tokens")?.len(),
    };
    let rope_scaling = match meta.optional_string(&key("rope.scaling.type"))?.as_deref() {
        None | Some("none") => None,
        Some("linear") => {
            let factor = meta.optional_float(&key("rope.scaling.factor"))?.unwrap_or(1.0);
            (factor != 1.0).then(|| json!({"rope_type": "linear", "factor": factor}))
        }
        Some(kind) => {
            return Err(meta.err(&key("rope.scaling.type"), format!("RoPE scaling `{kind}` is not implemented")))
        }
    };
    // The head width: `attention.key_length` (Qwen3, Gemma 3), else `rope.dimension_count`.
    let head_dim = match optional("attention.key_length")? {
        Some(d) => Some(d),
        None => optional("rope.dimension_count")?,
    };
    let mut config = ModelConfig::tiny(vocab);
    config.family = family;
    config.hidden_size = hidden;
    config.intermediate_size = usize_of("feed_forward_length")?;
    config.num_hidden_layers = usize_of("block_count")?;
    config.num_attention_heads = heads;
    config.num_key_value_heads = optional("attention.head_count_kv")?;
    config.head_dim = head_dim.filter(|&d| d != hidden / heads.max(1));
    config.rms_norm_eps = meta.optional_float(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
    config.rope_theta = meta.optional_float(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    config.max_position_embeddings = usize_of("context_length")?;
    config.tie_word_embeddings = Some(!has_output);
    config.bos_token_id = meta.optional_uint("tokenizer.ggml.bos_token_id")?.map(|x| x as u32);
    config.eos_token_id = meta.optional_uint("tokenizer.ggml.eos_token_id")?.map(|x| TokenIds::One(x as u32));
    config.hidden_act = None;
    config.rope_scaling = rope_scaling;
    if family == Family::Gemma3 {
        // llama.cpp's own Gemma 3 constants where the file does not say (`llama-model.cpp`):
        // every sixth layer global, local RoPE base 10000.
        config.sliding_window = optional("attention.sliding_window")?;
        config.sliding_window_pattern = Some(optional("attention.sliding_window_pattern")?.unwrap_or(6));
        config.rope_local_base_freq = Some(meta.optional_float(&key("rope.freq_base_swa"))?.unwrap_or(10_000.0));
        config.query_pre_attn_scalar = Some(config.head_dim() as f64);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_map_to_hugging_face_names() {
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(hf_name("blk.12.attn_k.weight").unwrap(), "model.layers.12.self_attn.k_proj.weight");
        assert_eq!(hf_name("blk.0.ffn_norm.weight").unwrap(), "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("blk.1.attn_q.bias").is_none());
    }

    /// llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reshapes the rows to
    /// `(heads, 2, head_dim/2)` and swaps the last two axes; unpermuting its output must give the
    /// original rows back.
    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        let (heads, head_dim, cols) = (3, 8, 2);
        let rows = heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let hf = Tensor::from_vec(hf, (rows, cols), &Device::Cpu).unwrap();
        let permuted = hf
            .reshape((heads, 2, head_dim / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        // Row 1 of the permuted head is the first row of the head's second half (adjacent pairs).
        let p: Vec<Vec<f32>> = permuted.to_vec2().unwrap();
        assert_eq!(p[1][0], (head_dim / 2 * cols) as f32);
        let back: Vec<Vec<f32>> = unpermute_rows(&permuted, heads).unwrap().to_vec2().unwrap();
        assert_eq!(back, hf.to_vec2::<f32>().unwrap());
        assert!(unpermute_rows(&hf, 5).is_err());
    }
}
