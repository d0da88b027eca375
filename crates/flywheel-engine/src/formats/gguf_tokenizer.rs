//! A GGUF file's tokenizer as a `tokenizer.json`, so that the rest of the engine sees one
//! tokenizer type. GGUF stores the vocabulary, each token's type and either the merges and the
//! name of the pre-tokenizer (`tokenizer.ggml.pre`: byte-level BPE, Llama 3, Qwen, SmolLM2) or
//! each piece's score (SentencePiece: Llama 1-2, Gemma); each becomes the `tokenizers` model that
//! tokenizes as llama.cpp does: control tokens as special added tokens, user-defined ones as
//! added tokens, the pre-tokenizer's regular expression for that name.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use crate::error::Result;
use crate::formats::gguf::Metadata;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
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
        // Qwen2's regex: Llama 3's with every digit on its own.
        "qwen2" => Some(json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        })),
        _ => None,
    }
}

const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.json` equivalent of a GGUF file's tokenizer: byte-level BPE (`gpt2`) or
/// SentencePiece (`llama`).
pub(super) fn tokenizer_json(meta: &Metadata<'_>) -> Result<String> {
    let model = meta.string("tokenizer.ggml.model")?;
    match model.as_str() {
        "gpt2" => byte_level_bpe(meta),
        "llama" => sentencepiece(meta),
        _ => Err(meta.err(
            "tokenizer.ggml.model",
            format!("tokenizer `{model}` is not supported (byte-level BPE `gpt2`, SentencePiece `llama`)"),
        )),
    }
}

/// Each token's GGUF type (normal when the file gives none).
fn token_types(meta: &Metadata<'_>, count: usize) -> Result<Vec<i32>> {
    match meta.map.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| meta.err("tokenizer.ggml.token_type", e))?
            .iter()
            .map(|t| t.to_i32().map_err(|e| meta.err("tokenizer.ggml.token_type", e)))
            .collect(),
        None => Ok(vec![TOKEN_NORMAL; count]),
    }
}

/// Control and user-defined tokens as `added_tokens` (control ones special).
fn added_tokens(tokens: &[String], types: &[i32]) -> Vec<serde_json::Value> {
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let kind = types.get(id).copied().unwrap_or(TOKEN_NORMAL);
        if kind == TOKEN_CONTROL || kind == TOKEN_USER_DEFINED {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": kind == TOKEN_CONTROL
            }));
        }
    }
    added
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`: Llama 1-2, Gemma) as Hugging
/// Face's BPE with byte fallback: spaces become `▁` (with one in front when
/// `tokenizer.ggml.add_space_prefix` says so), and the merges are every split of a piece into two
/// pieces, ranked by the merged piece's score, highest first, as `transformers`'
/// `SentencePieceExtractor` derives them and llama.cpp's tokenizer merges (the best-scoring
/// adjacent pair first). Control and byte tokens are never merged into.
fn sentencepiece(meta: &Metadata<'_>) -> Result<String> {
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let scores: Vec<f32> = match meta.map.get("tokenizer.ggml.scores") {
        Some(v) => v
            .to_vec()
            .map_err(|e| meta.err("tokenizer.ggml.scores", e))?
            .iter()
            .map(|s| s.to_f32().map_err(|e| meta.err("tokenizer.ggml.scores", e)))
            .collect::<Result<_>>()?,
        None => return Err(meta.err("tokenizer.ggml.scores", "missing (a SentencePiece vocabulary needs them)")),
    };
    if scores.len() != tokens.len() {
        return Err(meta.err("tokenizer.ggml.scores", format!("{} scores for {} tokens", scores.len(), tokens.len())));
    }
    let types = token_types(meta, tokens.len())?;
    let mergeable =
        |id: usize| matches!(types.get(id).copied().unwrap_or(TOKEN_NORMAL), TOKEN_NORMAL | TOKEN_USER_DEFINED);
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate().filter(|&(id, _)| mergeable(id)) {
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                if mergeable(l) && mergeable(r) {
                    merges.push((scores[id], id, l, r));
                }
            }
        }
    }
    // Highest score first; among equals, by the merged piece's id, then its parts'.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3))));
    let merges: Vec<[&str; 2]> = merges.iter().map(|&(_, _, l, r)| [tokens[l].as_str(), tokens[r].as_str()]).collect();
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(id, t)| (t.clone(), id.into())).collect();
    let unk = meta.optional_uint("tokenizer.ggml.unknown_token_id")?.and_then(|id| tokens.get(id as usize));
    let prefix = matches!(meta.map.get("tokenizer.ggml.add_space_prefix"), Some(Value::Bool(true)));
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(&tokens, &types),
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    Ok(tokenizer.to_string())
}

/// The `tokenizer.json` equivalent of a GGUF file's byte-level BPE tokenizer.
fn byte_level_bpe(meta: &Metadata<'_>) -> Result<String> {
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
    let types = token_types(meta, tokens.len())?;
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(id, t)| (t.clone(), id.into())).collect();
    let added = added_tokens(&tokens, &types);
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
    use std::path::Path;

    use super::*;
    use crate::text::tokenizer::TextTokenizer;

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A SentencePiece vocabulary tokenizes by the best-scoring merges, falls back to bytes for
    /// what it lacks, keeps control tokens whole, and decodes back to the text.
    #[test]
    fn sentencepiece_vocabularies_merge_by_score_and_fall_back_to_bytes() {
        let tokens = ["<unk>", "<bos>", "<0x21>", "\u{2581}", "a", "b", "ab", "\u{2581}a", "\u{2581}ab", "ba"];
        // "ab" outranks "ba", so "bab" is b + ab; "▁ab" is one piece.
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -3.0, -4.0, -5.0, -6.0];
        let types = [2, 3, 6, 1, 1, 1, 1, 1, 1, 1];
        let map = HashMap::from([
            ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
            ("tokenizer.ggml.tokens".to_string(), strings(&tokens)),
            ("tokenizer.ggml.scores".to_string(), Value::Array(scores.iter().map(|&s| Value::F32(s)).collect())),
            ("tokenizer.ggml.token_type".to_string(), Value::Array(types.iter().map(|&t| Value::I32(t)).collect())),
            ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)),
            ("tokenizer.ggml.add_space_prefix".to_string(), Value::Bool(false)),
        ]);
        let meta = Metadata { map: &map, path: Path::new("test.gguf") };
        let tok = TextTokenizer::from_json(&tokenizer_json(&meta).unwrap()).unwrap();
        assert_eq!(tok.encode("bab ab").unwrap(), vec![5, 6, 8]);
        assert_eq!(tok.encode("<bos>a!").unwrap(), vec![1, 4, 2], "control token whole, '!' as its byte");
        assert_eq!(tok.decode(&[5, 6, 8, 2]).unwrap(), "bab ab!");
    }
}
