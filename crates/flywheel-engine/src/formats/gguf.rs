//! Reading llama.cpp's GGUF files: the model's shape, its weights (dequantized to `f32`, under
//! Hugging Face names), its tokenizer and its chat template.
//!
//! Three things differ from a Hugging Face checkpoint and are undone here:
//!
//! * **Names.** `blk.3.attn_q.weight` is `model.layers.3.self_attn.q_proj.weight`, and so on
//!   ([`hf_name`]).
//! * **Q and K rows.** llama.cpp's converter permutes the rows of the query and key projections so
//!   that its RoPE can rotate adjacent pairs `(x[2i], x[2i+1])`; Hugging Face's rotates the two
//!   halves of each head `(x[i], x[i + d/2])`. The converter reshapes the rows to
//!   `(heads, 2, head_dim/2)` and swaps the last two axes; [`unpermute_rows`] does the inverse,
//!   reshaping to `(heads, head_dim/2, 2)` and swapping back, so that the forward pass stays the
//!   Hugging Face one.
//! * **Tokenizer.** GGUF stores the vocabulary, the merges, each token's type and the name of the
//!   pre-tokenizer (`tokenizer.ggml.pre`), not a `tokenizer.json`. [`tokenizer_json`] builds the
//!   equivalent `tokenizer.json` (byte-level BPE, control tokens as special added tokens, the
//!   pre-tokenizer llama.cpp uses for that name), so the rest of the engine sees one tokenizer type.
//!
//! Quantized matrices (Q4_1, Q8_0, …) are dequantized once at load: the sampler and trainer work
//! in `f32`, and candle's quantized matmul has no backward pass to train through.

use crate::error::without_backtrace;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::json;

use crate::error::{EngineError, Result};
use crate::model::config::{LlamaConfig, TokenIds};
use crate::text::tokenizer::TextTokenizer;

/// Everything a GGUF file provides, in the engine's terms.
#[derive(Debug)]
pub struct GgufModel {
    /// The model's shape and special ids.
    pub config: LlamaConfig,
    /// Every weight, `f32`, under its Hugging Face name, Q/K rows in Hugging Face order.
    pub tensors: HashMap<String, Tensor>,
    /// The tokenizer rebuilt from the vocabulary and merges.
    pub tokenizer: TextTokenizer,
    /// The Jinja chat template (`tokenizer.chat_template`), if the file has one.
    pub chat_template: Option<String>,
}

/// Reads a GGUF file of the `llama` architecture.
pub fn load_gguf(path: &Path) -> Result<GgufModel> {
    let err = |reason: String| EngineError::Gguf { path: path.to_path_buf(), reason };
    let file = File::open(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
    let mut reader = BufReader::new(file);
    let content =
        Content::read(&mut reader).map_err(|e| err(format!("not a readable GGUF file: {}", without_backtrace(e))))?;
    let meta = Metadata { map: &content.metadata, path };
    let arch = meta.string("general.architecture")?;
    if arch != "llama" {
        return Err(err(format!("architecture `{arch}` is not supported (only `llama`)")));
    }
    let config = config_from_metadata(&meta, content.tensor_infos.contains_key("output.weight"))?;
    config.validate()?;
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let hf = hf_name(name).ok_or_else(|| err(format!("tensor `{name}` has no Hugging Face counterpart")))?;
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| err(format!("tensor `{name}`: {}", without_backtrace(e))))?;
        let mut t = q.dequantize(&Device::Cpu)?;
        crate::formats::checkpoint::check_finite(path, name, &t)?;
        if name.ends_with("attn_q.weight") {
            t = unpermute_rows(&t, config.num_attention_heads)?;
        } else if name.ends_with("attn_k.weight") {
            t = unpermute_rows(&t, config.kv_heads())?;
        }
        tensors.insert(hf, t);
    }
    let tokenizer = TextTokenizer::from_json(&tokenizer_json(&meta)?)?;
    let chat_template = meta.optional_string("tokenizer.chat_template")?;
    Ok(GgufModel { config, tensors, tokenizer, chat_template })
}

/// The Hugging Face name of a llama.cpp tensor name, or `None` for a name it does not know.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => None,
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
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
struct Metadata<'a> {
    map: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl Metadata<'_> {
    fn err(&self, key: &str, reason: impl std::fmt::Display) -> EngineError {
        EngineError::Gguf { path: self.path.to_path_buf(), reason: format!("metadata `{key}`: {reason}") }
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.map.get(key).ok_or_else(|| self.err(key, "missing"))
    }

    fn string(&self, key: &str) -> Result<String> {
        self.get(key)?.to_string().cloned().map_err(|e| self.err(key, e))
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>> {
        self.map.get(key).map(|v| v.to_string().cloned().map_err(|e| self.err(key, e))).transpose()
    }

    /// An unsigned integer of any width.
    fn uint(&self, key: &str) -> Result<u64> {
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

    fn optional_uint(&self, key: &str) -> Result<Option<u64>> {
        if self.map.contains_key(key) {
            self.uint(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn optional_float(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(other) => Err(self.err(key, format!("expected a float, got {other:?}"))),
        }
    }

    fn array(&self, key: &str) -> Result<&Vec<Value>> {
        self.get(key)?.to_vec().map_err(|e| self.err(key, e))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)?.iter().map(|v| v.to_string().cloned().map_err(|e| self.err(key, e))).collect()
    }
}

fn config_from_metadata(meta: &Metadata<'_>, has_output: bool) -> Result<LlamaConfig> {
    let key = |k: &str| format!("llama.{k}");
    let usize_of = |k: &str| meta.uint(&key(k)).map(|x| x as usize);
    let hidden = usize_of("embedding_length")?;
    let heads = usize_of("attention.head_count")?;
    let vocab = match meta.optional_uint(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => meta.array("tokenizer.ggml.tokens")?.len(),
    };
    if let Some(kind) = meta.optional_string(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(meta.err(&key("rope.scaling.type"), format!("RoPE scaling `{kind}` is not implemented")));
        }
    }
    let head_dim = meta.optional_uint(&key("rope.dimension_count"))?.map(|d| d as usize);
    Ok(LlamaConfig {
        hidden_size: hidden,
        intermediate_size: usize_of("feed_forward_length")?,
        num_hidden_layers: usize_of("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: meta.optional_uint(&key("attention.head_count_kv"))?.map(|x| x as usize),
        head_dim: head_dim.filter(|&d| d != hidden / heads.max(1)),
        rms_norm_eps: meta.optional_float(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: meta.optional_float(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        vocab_size: vocab,
        max_position_embeddings: usize_of("context_length")?,
        tie_word_embeddings: !has_output,
        bos_token_id: meta.optional_uint("tokenizer.ggml.bos_token_id")?.map(|x| x as u32),
        eos_token_id: meta.optional_uint("tokenizer.ggml.eos_token_id")?.map(|x| TokenIds::One(x as u32)),
        hidden_act: "silu".into(),
        attention_bias: false,
        mlp_bias: false,
        rope_scaling: None,
    })
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// The Hugging Face pre-tokenizer that matches llama.cpp's pre-tokenizer `pre`, for byte-level BPE.
fn pre_tokenizer(pre: &str) -> Option<serde_json::Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    match pre {
        // GPT-2's regex, applied by the byte-level pre-tokenizer itself.
        "default" | "gpt2" | "gpt-2" => Some(byte_level(true)),
        // Every digit on its own, then GPT-2's regex (llama.cpp's `\p{N}` rule first).
        "smollm" | "starcoder" | "refact" | "codeshell" | "falcon" => Some(json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
        })),
        // Llama 3's regex: numbers in groups of up to three digits.
        "llama3" | "llama-v3" | "llama-bpe" => Some(json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        })),
        _ => None,
    }
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.json` equivalent of a GGUF file's byte-level BPE tokenizer.
fn tokenizer_json(meta: &Metadata<'_>) -> Result<String> {
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(meta.err(
            "tokenizer.ggml.model",
            format!("tokenizer `{model}` is not supported (only byte-level BPE, `gpt2`)"),
        ));
    }
    let pre_name = meta.optional_string("tokenizer.ggml.pre")?.unwrap_or_else(|| "default".into());
    let pre = pre_tokenizer(&pre_name)
        .ok_or_else(|| meta.err("tokenizer.ggml.pre", format!("pre-tokenizer `{pre_name}` is not supported")))?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    // Checked here: the tokenizers crate would report a bad entry as a line of a "merges text
    // file", which a GGUF file does not have.
    let vocabulary: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
    for (i, merge) in merges.iter().enumerate() {
        let known = |part: &str| vocabulary.contains(part);
        match merge.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') && known(a) && known(b) => {}
            _ => {
                return Err(meta.err(
                    "tokenizer.ggml.merges",
                    format!("entry {i} ({merge:?}) is not two vocabulary tokens separated by one space"),
                ))
            }
        }
    }
    let types: Vec<i32> = match meta.map.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| meta.err("tokenizer.ggml.token_type", e))?
            .iter()
            .map(|t| t.to_i32().map_err(|e| meta.err("tokenizer.ggml.token_type", e)))
            .collect::<Result<_>>()?,
        None => vec![1; tokens.len()],
    };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), id.into());
        let kind = types.get(id).copied().unwrap_or(1);
        if kind == TOKEN_CONTROL || kind == TOKEN_USER_DEFINED {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": kind == TOKEN_CONTROL
            }));
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    Ok(tokenizer.to_string())
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
