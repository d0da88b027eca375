//! The ecosystem's file formats: GGUF models (read, and written back for llama.cpp), safetensors checkpoints with `config.json` and
//! tokenizer files (a Hugging Face model directory), and PEFT adapters.

pub(crate) mod adapter;
pub(crate) mod checkpoint;
pub(crate) mod gguf;
pub(crate) mod gguf_tokenizer;
pub(crate) mod gguf_write;
