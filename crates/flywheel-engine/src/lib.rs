//! The embedded candle engine of flywheel: a Llama-architecture model that samples and trains on
//! the CPU, inside the process.
//!
//! Why embedded: the self-improvement loop alternates thousands of samples with a short
//! fine-tune, many times over. For small models (a character-level toy, SmolLM2-135M) starting an
//! external server or trainer each iteration would cost more than the work itself, and keeping
//! both halves in one process makes a run reproducible from its seed.
//!
//! * [`ModelConfig`] / [`DecoderModel`]: the architecture, weights in candle `Var`s under Hugging
//!   Face names; a differentiable forward pass with explicit position ids.
//! * [`TextTokenizer`]: any `tokenizer.json`, including a character-level one built from an
//!   alphabet.
//! * [`Engine`]: model + tokenizer + [`PromptFormat`], implementing [`flywheel_core::Generator`]
//!   (batched sampling with per-sequence KV caches) and [`flywheel_core::Trainer`] (full-parameter
//!   SFT with AdamW), with checkpoint save / load / reset.
//!
//! The crate by concern: `model/` (configuration, parameters, the differentiable forward pass,
//! LoRA, rotary tables), `text/` (tokenizers, chat templates, tokenized examples), `formats/`
//! (GGUF, safetensors checkpoints, PEFT adapters), `sample/` (the inference model, its kernels and
//! KV cache, token choice, the batched generation loop), `train/` (the training loop, the
//! written-out pass in `train/fused/`, the autograd reference in `train/batch.rs`), `gemm.rs`
//! (matrix products into reused buffers) and `engine.rs` (all of it behind the loop's traits).

mod engine;
mod error;
#[cfg(test)]
mod family_checks;
mod formats;
mod gemm;
mod model;
mod sample;
#[cfg(test)]
mod testing;
mod text;
mod train;

pub use engine::{Engine, PreparedSampler};
pub use error::{EngineError, Result};
pub use formats::adapter::{
    load_adapter, peft_tensor_name, save_adapter, AdapterConfig, ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE,
};
pub use formats::checkpoint::{
    load_checkpoint, load_weights, read_chat_template, save_checkpoint, save_tensors, save_weights,
    write_tokenizer_config, CONFIG_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
pub use formats::gguf::{hf_name, load_gguf, unpermute_rows, GgufModel};
pub use formats::gguf_write::{permute_rows, write_gguf, GgufWeights};
pub use model::config::{ModelConfig, TokenIds};
pub use model::lora::{LoraConfig, Proj};
pub use model::{parameter_shapes, DecoderModel};
pub use sample::choose::sequence_rng;
pub use sample::generate::{SamplerOptions, TextSink};
pub use sample::quant::WeightFormat;
pub use text::chat_template::ChatTemplate;
pub use text::template::{tokenize_example, PromptFormat, RawFormat, Segment, TokenizedExample};
pub use text::tokenizer::{TextTokenizer, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN};
pub use train::{learning_rate, train, TrainOptions, TrainPass};
