//! Tests on the real Qwen2.5-Coder-0.5B-Instruct GGUF file, Q4_K_M (`scripts/fetch-model
//! qwen2.5-coder-0.5b-instruct` puts it in `models/`): the qwen2 family (query, key and value
//! biases, no Q/K permutation, the `qwen2` pre-tokenizer) and K-quants, end to end.
//!
//! Without the file these tests fail, saying how to fetch it: the README's test command fetches
//! it first. A missing model is never a test reported as passed.

use std::path::PathBuf;
use std::sync::OnceLock;

use flywheel_core::{GenerationRequest, Message, NullReporter, Role, SamplingParams};
use flywheel_engine::Engine;

fn model_path() -> PathBuf {
    let path = std::env::var_os("FLYWHEEL_QWEN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    });
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model qwen2.5-coder-0.5b-instruct (the README's test command does)",
        path.display()
    );
    path
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load_gguf(&model_path()).expect("the Qwen2.5 GGUF loads"))
}

fn greedy(question: &str, tokens: usize) -> String {
    let engine = engine();
    let prompt = engine.format().render_prompt(&[Message { role: Role::User, content: question.into() }]).unwrap();
    let params = SamplingParams { temperature: 0.0, max_new_tokens: tokens, ..SamplingParams::default() };
    engine.sample(&[GenerationRequest::new(prompt, 1)], &params, &NullReporter).unwrap()[0][0].text.clone()
}

#[test]
fn the_file_is_read_as_qwen2() {
    let config = engine().model().config();
    assert_eq!(config.family.model_type(), "qwen2");
    assert_eq!((config.num_hidden_layers, config.hidden_size, config.kv_heads()), (24, 896, 2));
    assert!(!config.tied(), "the Coder 0.5B file has its own output matrix");
    // The chat template's turn markers are single control tokens.
    let ids = engine().tokenizer().encode("<|im_start|>user\n12 + 30<|im_end|>").unwrap();
    assert_eq!(ids.first(), engine().tokenizer().token_id("<|im_start|>").as_ref());
    assert_eq!(ids.last(), engine().tokenizer().token_id("<|im_end|>").as_ref());
    // Every digit is its own token (the `qwen2` pre-tokenizer).
    let digits = engine().tokenizer().encode("12345").unwrap();
    assert_eq!(digits.len(), 5, "{digits:?}");
}

#[test]
fn greedy_answers_to_chat_prompts() {
    let capital = greedy("What is the capital of France? Answer in one word.", 8);
    assert!(capital.contains("Paris"), "{capital:?}");
    let sum = greedy("What is 17 + 25? Reply with the number only.", 8);
    assert!(sum.contains("42"), "{sum:?}");
}
