//! Fixtures shared by the unit tests: a very small model over a small alphabet.

use candle_core::{Device, Tensor};

use crate::model::arch::Family;
use crate::model::config::{ModelConfig, TokenIds};
use crate::model::DecoderModel;
use crate::text::tokenizer::TextTokenizer;

pub const ALPHABET: &str = "0123456789+=abc ";

/// Width 32, 2 layers, 4 query heads over 2 key/value heads, 64 positions.
pub fn small_config(vocab: usize, tied: bool) -> ModelConfig {
    let mut c = ModelConfig::tiny(vocab);
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.max_position_embeddings = 64;
    c.tie_word_embeddings = Some(tied);
    c.eos_token_id = Some(TokenIds::One(2));
    c.bos_token_id = Some(1);
    c
}

/// [`small_config`] shaped as `family`: Qwen2 as is (its biases come with the family); Qwen3
/// with heads wider than `hidden / heads`; Gemma 3 with a sliding window of 4 keys on layers
/// 0 and 2, a local RoPE base, a query scalar unlike the head width, and GeGLU.
pub fn family_config(family: Family, vocab: usize) -> ModelConfig {
    let mut c = small_config(vocab, family == Family::Gemma3);
    c.family = family;
    c.hidden_act = None;
    match family {
        Family::Llama | Family::Qwen2 => {}
        Family::Qwen3 => c.head_dim = Some(12),
        Family::Gemma3 => {
            c.num_hidden_layers = 3;
            c.head_dim = Some(12);
            c.sliding_window = Some(4);
            c.layer_types =
                Some(["sliding_attention", "full_attention", "sliding_attention"].map(String::from).to_vec());
            c.rope_local_base_freq = Some(100.0);
            c.query_pre_attn_scalar = Some(20.0);
            c.hidden_activation = Some("gelu_pytorch_tanh".into());
        }
    }
    c
}

/// A random model of `family` ([`family_config`]) whose biases and norm weights are random too
/// (fresh ones are 0 and 1, which would hide a part the passes forget).
pub fn family_model(family: Family, seed: u64) -> DecoderModel {
    let tok = TextTokenizer::char_level(ALPHABET).unwrap();
    let model = DecoderModel::new_random(&family_config(family, tok.vocab_size()), seed).unwrap();
    for (i, (_, var)) in model.named_vars().into_iter().enumerate() {
        if var.rank() == 1 {
            let n = var.elem_count();
            let wave = Tensor::arange(0u32, n as u32, &Device::Cpu).unwrap().to_dtype(candle_core::DType::F32).unwrap();
            let wave = ((wave * 0.71).unwrap() + i as f64).unwrap().sin().unwrap();
            var.set(&((wave * 0.3).unwrap() + var.as_tensor()).unwrap()).unwrap();
        }
    }
    model
}

pub fn small_model(seed: u64, tied: bool) -> (DecoderModel, TextTokenizer) {
    let tok = TextTokenizer::char_level(ALPHABET).unwrap();
    let model = DecoderModel::new_random(&small_config(tok.vocab_size(), tied), seed).unwrap();
    (model, tok)
}

/// `(1, n)` u32 tensor.
pub fn row(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

/// Logits of the differentiable pass for one sequence at positions `0..n`, as rows.
pub fn reference_logits(model: &DecoderModel, ids: &[u32]) -> Vec<Vec<f32>> {
    let pos: Vec<u32> = (0..ids.len() as u32).collect();
    model.forward(&row(ids), &row(&pos), None).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
