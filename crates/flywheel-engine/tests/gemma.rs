//! Tests on the real Gemma 3 270M GGUF file (base model, Q4_K_M; `scripts/fetch-model
//! gemma-3-270m` puts it in `models/`): the gemma3 family (sandwich norms, `(1 + w)` norms stored
//! plus one by llama.cpp, scaled embeddings, GeGLU, per-head norms, five sliding layers to one
//! global) and a SentencePiece vocabulary of 262,144 pieces read from GGUF scores.
//!
//! Without the file these tests fail, saying how to fetch it: the README's test command fetches
//! it first. A missing model is never a test reported as passed.

use std::path::PathBuf;

use flywheel_core::{GenerationRequest, NullReporter, SamplingParams};
use flywheel_engine::{Engine, RawFormat};

fn model_path() -> PathBuf {
    let path = std::env::var_os("FLYWHEEL_GEMMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/gemma-3-270m-q4_k_m.gguf"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model gemma-3-270m (the README's test command does)",
        path.display()
    );
    path
}

#[test]
fn the_base_model_continues_text_and_tokenizes_by_pieces() {
    let engine = Engine::load_gguf(&model_path()).expect("the Gemma 3 GGUF loads").with_format(Box::new(RawFormat));
    let config = engine.model().config();
    assert_eq!(config.family.model_type(), "gemma3_text");
    assert_eq!((config.num_hidden_layers, config.head_dim(), config.layer_attention(5).window), (18, 256, None));
    assert_eq!(config.layer_attention(0).window, Some(512));
    // What transformers 5.25 computes on the same file (`AutoTokenizer` / `AutoModelForCausalLM`
    // with `gguf_file=`, float32, greedy `generate`): the ids, and the continuation.
    let tok = engine.tokenizer();
    let ids = tok.encode("The capital of France is").unwrap();
    assert_eq!(ids, [818, 5279, 529, 7001, 563]);
    assert_eq!(tok.decode(&ids).unwrap(), "The capital of France is");
    let prompt = "<bos>The capital of France is".to_string();
    let params = SamplingParams { temperature: 0.0, max_new_tokens: 6, ..SamplingParams::default() };
    let out = engine.sample(&[GenerationRequest::new(prompt, 1)], &params, &NullReporter).unwrap();
    assert_eq!(out[0][0].text, " the capital of the country of");
}
