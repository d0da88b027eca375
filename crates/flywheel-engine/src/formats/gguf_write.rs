//! Writing a model back to llama.cpp's GGUF format, so that llama.cpp's server (or anything built
//! on it) can serve a checkpoint this engine trained.
//!
//! The file is the GGUF the model was trained from with its weights replaced: every metadata
//! entry (hyperparameters, tokenizer, chat template, special ids) is copied from that base file,
//! so nothing about the tokenizer has to be rebuilt, and every tensor of the base file is written
//! from the model under its llama.cpp name, with the query and key rows permuted back into
//! llama.cpp's order ([`permute_rows`], the inverse of [`unpermute_rows`]). Matrices are stored as
//! `f32`, `f16` or `Q8_0` ([`GgufWeights`]); one-dimensional tensors (the norms) stay `f32`, as
//! llama.cpp's converter keeps them. The base file's own quantization (often Q4_1) is not reused:
//! re-quantizing to four bits would round away most of a fine-tune's change.
//!
//! The file is written under a temporary name and renamed, so an interrupted export never leaves
//! a half-written model behind a valid name.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{without_backtrace, EngineError, Result};
use crate::formats::checkpoint::scratch_path;
use crate::formats::gguf::unpermute_rows;
use crate::model::DecoderModel;

/// How an exported GGUF file stores its weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufWeights {
    /// 32-bit floats: exactly the model's weights (4 bytes per weight).
    F32,
    /// 16-bit floats (2 bytes per weight).
    F16,
    /// llama.cpp's 8-bit blocks of 32 weights with one scale (about 1.06 bytes per weight); the
    /// default, and what this engine's own sampler computes with.
    Q8_0,
}

impl GgufWeights {
    /// The ggml type of a matrix with rows of `row_len` weights: Q8_0 needs whole blocks of 32,
    /// and a matrix whose rows are not falls back to `f16`, as llama.cpp's converter does.
    fn matrix_type(self, row_len: usize) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 if row_len.is_multiple_of(GgmlDType::Q8_0.block_size()) => GgmlDType::Q8_0,
            Self::Q8_0 => GgmlDType::F16,
        }
    }

    /// llama.cpp's `general.file_type` for a file whose matrices are of this type.
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

impl std::str::FromStr for GgufWeights {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            other => Err(EngineError::invalid(format!("GGUF weight type `{other}`: expected f32, f16 or q8_0"))),
        }
    }
}

/// Writes `model` to `out` as a GGUF file whose metadata and tensor list are those of `base`,
/// the GGUF file the model was trained from. Attached LoRA adapters are merged into the weights
/// written (the model itself is not changed). Fails, naming the tensor, when the model's shapes
/// differ from the base file's.
pub fn write_gguf(model: &DecoderModel, base: &Path, out: &Path, weights: GgufWeights) -> Result<()> {
    let err = |reason: String| EngineError::Gguf { path: base.to_path_buf(), reason };
    let file = File::open(base).map_err(|source| EngineError::Io { path: base.to_path_buf(), source })?;
    let mut reader = BufReader::new(file);
    let content =
        Content::read(&mut reader).map_err(|e| err(format!("not a readable GGUF file: {}", without_backtrace(e))))?;
    let config = model.config();
    let family = config.family;
    // The engine's own values: multiplicative norm weights, as llama.cpp stores Gemma's too.
    let ours = model.own_tensors()?;

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|name| tensor_order(name));
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let info = &content.tensor_infos[name];
        let q = match family.hf_name(name) {
            // A tensor the model has no counterpart of (llama.cpp's `rope_freqs`): copied as is.
            None => content
                .tensor(&mut reader, name, &Device::Cpu)
                .map_err(|e| err(format!("tensor `{name}`: {}", without_backtrace(e))))?,
            Some(hf) => {
                let w = exported_weight(model, &ours, &hf)
                    .ok_or_else(|| err(format!("tensor `{name}` (`{hf}`): the model has no such weight")))?;
                let mut w = w?.to_dtype(DType::F32)?;
                if w.dims() != info.shape.dims() {
                    return Err(err(format!(
                        "tensor `{name}`: the model's is {:?}, the base file's {:?}: not the model this file holds",
                        w.dims(),
                        info.shape.dims()
                    )));
                }
                if family.gguf_permutes_qk() && name.ends_with("attn_q.weight") {
                    w = permute_rows(&w, config.num_attention_heads)?;
                } else if family.gguf_permutes_qk() && name.ends_with("attn_k.weight") {
                    w = permute_rows(&w, config.kv_heads())?;
                }
                let dtype = match w.dims() {
                    [_, cols] => weights.matrix_type(*cols),
                    _ => GgmlDType::F32,
                };
                QTensor::quantize(&w, dtype).map_err(|e| err(format!("tensor `{name}`: {}", without_backtrace(e))))?
            }
        };
        tensors.push((name.clone(), q));
    }

    let mut metadata: Vec<(String, Value)> = content
        .metadata
        .iter()
        // candle writes with 32-byte alignment; a different one in the base must not be claimed.
        .filter(|(key, _)| key.as_str() != "general.alignment")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    set(&mut metadata, "general.file_type", Value::U32(weights.file_type()));
    metadata.sort_by(|a, b| a.0.cmp(&b.0));

    let tmp = scratch_path(out)?;
    let io = |source| EngineError::Io { path: out.to_path_buf(), source };
    let mut writer = BufWriter::new(File::create(&tmp).map_err(io)?);
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, q)| (k.as_str(), q)).collect();
    gguf_file::write(&mut writer, &meta_refs, &tensor_refs)
        .map_err(|e| EngineError::Gguf { path: out.to_path_buf(), reason: without_backtrace(e).to_string() })?;
    writer.flush().map_err(io)?;
    drop(writer);
    tmp.persist(out).map_err(|e| io(e.error))
}

/// The weight the file stores under Hugging Face name `hf`: the merged projection where an
/// adapter is attached, else the parameter; `None` when the model has no such weight.
fn exported_weight(model: &DecoderModel, ours: &HashMap<String, Tensor>, hf: &str) -> Option<Result<Tensor>> {
    let projection = hf.strip_prefix("model.layers.").and_then(|rest| {
        let (layer, part) = rest.split_once('.')?;
        let proj = crate::model::lora::Proj::ALL.into_iter().find(|p| part == format!("{}.weight", p.path()))?;
        Some((layer.parse::<usize>().ok()?, proj))
    });
    match projection {
        Some((layer, proj)) if layer < model.config().num_hidden_layers => Some(model.merged_weight(layer, proj)),
        _ => ours.get(hf).cloned().map(Ok),
    }
}

/// Replaces or adds a metadata entry.
fn set(metadata: &mut Vec<(String, Value)>, key: &str, value: Value) {
    match metadata.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => metadata.push((key.to_string(), value)),
    }
}

/// The order tensors are written in: embeddings, then the blocks by number, then the head.
fn tensor_order(name: &str) -> (u8, usize, String) {
    match name.strip_prefix("blk.").and_then(|rest| rest.split_once('.')) {
        Some((layer, part)) => (1, layer.parse().unwrap_or(usize::MAX), part.to_string()),
        None if name.starts_with("token_embd") || name.starts_with("rope_") => (0, 0, name.to_string()),
        None => (2, 0, name.to_string()),
    }
}

/// Permutes the rows of a `(heads * head_dim, in)` Hugging Face query or key projection into
/// llama.cpp's order: the inverse of [`unpermute_rows`].
pub fn permute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(EngineError::invalid(format!("cannot permute {rows} rows into {heads} heads")));
    }
    let half = rows / heads / 2;
    let out = w.reshape((heads, 2, half, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?;
    debug_assert!(unpermute_rows(&out, heads).is_ok());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_and_unpermute_are_inverses() {
        let w = Tensor::arange(0f32, 48.0, &Device::Cpu).unwrap().reshape((12, 4)).unwrap();
        for heads in [1, 2, 3] {
            let there = permute_rows(&w, heads).unwrap();
            assert_ne!(there.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap(), "{heads} heads: rows moved");
            let back = unpermute_rows(&there, heads).unwrap();
            assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap(), "{heads} heads");
        }
        assert!(permute_rows(&w, 5).is_err());
    }

    #[test]
    fn permute_interleaves_the_two_halves_of_each_head() {
        // One head of 4 rows: Hugging Face's halves (0, 1 | 2, 3) become llama.cpp's pairs (0, 2), (1, 3).
        let w = Tensor::new(&[[0f32], [1.0], [2.0], [3.0]], &Device::Cpu).unwrap();
        let rows: Vec<f32> = permute_rows(&w, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(rows, [0.0, 2.0, 1.0, 3.0]);
    }

    #[test]
    fn weight_types_parse_and_fall_back_for_odd_rows() {
        assert_eq!("Q8_0".parse::<GgufWeights>().unwrap(), GgufWeights::Q8_0);
        assert_eq!("f16".parse::<GgufWeights>().unwrap(), GgufWeights::F16);
        let e = "q4_k".parse::<GgufWeights>().unwrap_err().to_string();
        assert!(e.contains("q4_k") && e.contains("q8_0"), "{e}");
        assert_eq!(GgufWeights::Q8_0.matrix_type(576), GgmlDType::Q8_0);
        assert_eq!(GgufWeights::Q8_0.matrix_type(100), GgmlDType::F16);
    }

    #[test]
    fn tensors_are_ordered_embedding_blocks_head() {
        let mut names = vec!["output.weight", "blk.10.attn_q.weight", "blk.2.ffn_up.weight", "token_embd.weight"];
        names.sort_by_key(|n| tensor_order(n));
        assert_eq!(names, ["token_embd.weight", "blk.2.ffn_up.weight", "blk.10.attn_q.weight", "output.weight"]);
    }
}
