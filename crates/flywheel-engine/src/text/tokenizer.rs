//! Text to token ids and back, through a Hugging Face `tokenizer.json`.
//!
//! The engine speaks `tokenizer.json` only, so SmolLM2's tokenizer and the tiny character-level
//! one go through the same code. The character-level tokenizer is an ordinary `tokenizer.json` too:
//! a `WordLevel` model whose vocabulary is the special tokens plus one entry per character, a
//! `FixedLength(1)` pre-tokenizer that cuts the text into single characters, and a `Fuse` decoder
//! that joins them back without separators. Its `unk_token` is deliberately absent from the
//! vocabulary, so a character outside the alphabet is an error instead of a silent `<unk>`.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};

/// Padding token of the character-level tokenizer (id 0).
pub const PAD_TOKEN: &str = "<pad>";
/// Beginning-of-sequence token of the character-level tokenizer (id 1).
pub const BOS_TOKEN: &str = "<bos>";
/// End-of-sequence token of the character-level tokenizer (id 2).
pub const EOS_TOKEN: &str = "<eos>";

/// A tokenizer loaded from (or saved as) a Hugging Face `tokenizer.json`.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// A character-level tokenizer: ids 0, 1, 2 are `<pad>`, `<bos>`, `<eos>`, then one id per
    /// distinct character of `alphabet`, in order of first appearance.
    pub fn char_level(alphabet: &str) -> Result<Self> {
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (id, special) in [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN].into_iter().enumerate() {
            vocab.insert(special.to_string(), id.into());
            added.push(serde_json::json!({
                "id": id, "content": special, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
        }
        for c in alphabet.chars() {
            let next = vocab.len();
            vocab.entry(c.to_string()).or_insert(next.into());
        }
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "FixedLength", "length": 1},
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        let inner = Tokenizer::from_bytes(json.to_string()).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Reads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
        let inner =
            Tokenizer::from_bytes(bytes).map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// Parses the text of a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        let inner = Tokenizer::from_bytes(json.as_bytes()).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Writes the tokenizer as a `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text =
            self.inner.to_string(true).map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
        std::fs::write(path, text).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })
    }

    /// Encodes `text` without adding any special token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self.inner.encode_fast(text, false) {
            Ok(enc) => Ok(enc.get_ids().to_vec()),
            Err(e) => Err(match text.chars().find(|c| self.token_id(&c.to_string()).is_none()) {
                Some(c) => EngineError::UnknownCharacter(c),
                None => EngineError::Tokenizer(format!("encoding {text:?}: {e}")),
            }),
        }
    }

    /// Decodes `ids`, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| EngineError::Tokenizer(format!("decoding {ids:?}: {e}")))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `token` (a vocabulary entry or an added token such as `<eos>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of token `id` (for example `<|im_end|>`), if the id exists.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The wrapped Hugging Face tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHABET: &str = "0123456789+-*=|: \nabcdefghijklmnopqrstuvwxyz.,?";

    #[test]
    fn special_ids_come_first() {
        let t = TextTokenizer::char_level("ab").unwrap();
        assert_eq!([t.token_id(PAD_TOKEN), t.token_id(BOS_TOKEN), t.token_id(EOS_TOKEN)], [Some(0), Some(1), Some(2)]);
        assert_eq!(t.encode("ba").unwrap(), vec![4, 3]);
        assert_eq!(t.vocab_size(), 5);
    }

    #[test]
    fn round_trip_is_identity_on_the_alphabet() {
        let t = TextTokenizer::char_level(ALPHABET).unwrap();
        let chars: Vec<char> = ALPHABET.chars().collect();
        // A deterministic pseudo-random sweep of strings, spaces and newlines included.
        let mut state = 12345u64;
        for len in 0..60 {
            let s: String = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    chars[(state >> 33) as usize % chars.len()]
                })
                .collect();
            let ids = t.encode(&s).unwrap();
            assert_eq!(ids.len(), s.chars().count(), "{s:?}");
            assert_eq!(t.decode(&ids).unwrap(), s);
        }
    }

    #[test]
    fn unknown_character_is_named() {
        let t = TextTokenizer::char_level("abc").unwrap();
        let err = t.encode("abz").unwrap_err();
        assert!(matches!(err, EngineError::UnknownCharacter('z')), "{err}");
    }

    #[test]
    fn decode_skips_special_tokens() {
        let t = TextTokenizer::char_level("ab").unwrap();
        assert_eq!(t.decode(&[3, 2, 0, 4]).unwrap(), "ab");
    }

    #[test]
    fn save_and_load_keep_the_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let t = TextTokenizer::char_level(ALPHABET).unwrap();
        t.save(&path).unwrap();
        let back = TextTokenizer::from_file(&path).unwrap();
        let s = "12+34=46\nabc xyz";
        assert_eq!(back.encode(s).unwrap(), t.encode(s).unwrap());
        assert_eq!(back.vocab_size(), t.vocab_size());
    }
}
