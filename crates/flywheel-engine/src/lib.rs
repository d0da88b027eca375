//! The embedded candle engine of flywheel: a Llama-architecture model that samples and trains on
//! the CPU, inside the process.
//!
//! Why embedded: the self-improvement loop alternates thousands of samples with a short
//! fine-tune, many times over. For small models (a character-level toy, SmolLM2-135M) starting an
//! external server or trainer each iteration would cost more than the work itself, and keeping
//! both halves in one process makes a run reproducible from its seed.
//!
//! * [`LlamaConfig`] / [`LlamaModel`]: the architecture, weights in candle `Var`s under Hugging
//!   Face names; a differentiable forward pass with explicit position ids.
//! * [`TextTokenizer`]: any `tokenizer.json`, including a character-level one built from an
//!   alphabet.
//! * [`Engine`]: model + tokenizer + [`PromptFormat`], implementing [`flywheel_core::Generator`]
//!   (batched sampling with per-sequence KV caches) and [`flywheel_core::Trainer`] (full-parameter
//!   SFT with AdamW), with checkpoint save / load / reset.

mod adapter;
mod chat_template;
mod checkpoint;
mod config;
mod engine;
mod error;
mod forward;
mod gemm;
mod generate;
mod gguf;
mod infer;
mod kernels;
mod kv_cache;
mod lora;
mod model;
mod quant;
mod rope;
mod sample;
mod template;
#[cfg(test)]
mod testing;
mod tokenizer;
mod train;

pub use adapter::{
    load_adapter, peft_tensor_name, save_adapter, AdapterConfig, ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE,
};
pub use chat_template::ChatTemplate;
pub use checkpoint::{
    load_checkpoint, load_weights, read_chat_template, save_checkpoint, save_tensors, save_weights,
    write_tokenizer_config, CONFIG_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
pub use config::{LlamaConfig, TokenIds};
pub use engine::Engine;
pub use error::{EngineError, Result};
pub use generate::SamplerOptions;
pub use gguf::{hf_name, load_gguf, unpermute_rows, GgufModel};
pub use lora::{LoraConfig, Proj};
pub use model::{parameter_shapes, LlamaModel};
pub use quant::WeightFormat;
pub use sample::sequence_rng;
pub use template::{tokenize_example, PromptFormat, RawFormat, Segment, TokenizedExample};
pub use tokenizer::{TextTokenizer, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN};
pub use train::{learning_rate, train, TrainOptions, TrainPass};
