//! Generation through OpenAI-compatible servers: vLLM, SGLang, llama.cpp's server, `flywheel serve`.
//!
//! [`RemoteGenerator`] implements the core [`flywheel_core::Generator`] over the completions or
//! chat-completions API: it cuts each phase's requests into HTTP requests of at most
//! [`RemoteConfig::max_n`] samples, sends them with bounded concurrency across one or many base
//! URLs (skipping one that failed for a while, then trying it again), and retries with backoff on
//! 429, 5xx, timeouts, dropped connections and unreadable bodies, while another 4xx fails at once
//! with the server's message. Every sample has a fixed slot (request, index) and a seed of its own,
//! so a retried request fills the same slots: a sample is recorded exactly once.
//!
//! The API key is read from an environment variable the config names ([`ApiKey::from_env`]), is
//! sent only in the `Authorization` header, prints as `***`, and is scrubbed from every error
//! message (servers sometimes echo the key they rejected).
//!
//! With a journal ([`RemoteGenerator::with_journal`]), every finished request's samples are
//! appended to a JSONL file as they arrive, keyed by what was asked; a generator opened again on
//! the same journal (a resumed run) takes them from there instead of asking again.
//!
//! The async work runs on a small tokio runtime the generator owns; the [`flywheel_core::Generator`]
//! trait stays synchronous, so the loop knows nothing about it.

mod config;
mod endpoints;
mod error;
mod generator;
mod journal;
mod wire;

pub use config::{Api, ApiKey, RemoteConfig};
pub use error::RemoteError;
pub use generator::RemoteGenerator;
