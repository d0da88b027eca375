//! Fixtures shared by the unit tests: a very small model over a small alphabet.

use candle_core::{Device, Tensor};

use crate::model::config::{LlamaConfig, TokenIds};
use crate::model::LlamaModel;
use crate::text::tokenizer::TextTokenizer;

pub const ALPHABET: &str = "0123456789+=abc ";

/// Width 32, 2 layers, 4 query heads over 2 key/value heads, 64 positions.
pub fn small_config(vocab: usize, tied: bool) -> LlamaConfig {
    let mut c = LlamaConfig::tiny(vocab);
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.max_position_embeddings = 64;
    c.tie_word_embeddings = tied;
    c.eos_token_id = Some(TokenIds::One(2));
    c.bos_token_id = Some(1);
    c
}

pub fn small_model(seed: u64, tied: bool) -> (LlamaModel, TextTokenizer) {
    let tok = TextTokenizer::char_level(ALPHABET).unwrap();
    let model = LlamaModel::new_random(&small_config(tok.vocab_size(), tied), seed).unwrap();
    (model, tok)
}

/// `(1, n)` u32 tensor.
pub fn row(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

/// Logits of the differentiable pass for one sequence at positions `0..n`, as rows.
pub fn reference_logits(model: &LlamaModel, ids: &[u32]) -> Vec<Vec<f32>> {
    let pos: Vec<u32> = (0..ids.len() as u32).collect();
    model.forward(&row(ids), &row(&pos), None).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
