//! The engine's error type.
//!
//! One `thiserror` enum for the crate (the candle style): every variant names what failed and where
//! (the file, the config field, the tensor), so that a message printed with `{:#}` three crates up
//! still tells the user what to fix. At the trait boundary the error becomes a
//! [`flywheel_core::CoreError`] through [`EngineError::into_generation`] or
//! [`EngineError::into_training`], which keep the rendered chain.

use std::path::PathBuf;

use flywheel_core::{render_chain, CoreError};

/// Everything that can go wrong inside the embedded engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file that was being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (`config.json`) could not be parsed or written.
    #[error("{path}: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A model configuration is inconsistent or uses an unsupported feature.
    #[error("invalid model config: field `{field}`: {reason}")]
    Config {
        /// The offending `config.json` field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A weights file lacks a tensor, has an extra one, or one of the wrong shape or type.
    #[error("{path}: tensor `{name}`: {reason}")]
    Weights {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor name (Hugging Face naming).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A GGUF file could not be read, or uses something this engine does not implement.
    #[error("{path}: {reason}")]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// What is wrong, naming the metadata key or tensor.
        reason: String,
    },
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A LoRA adapter is malformed or does not fit the model.
    #[error("LoRA adapter: {0}")]
    Adapter(String),
    /// A safetensors file could not be parsed or written.
    #[error("{path}: safetensors: {reason}")]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// The parser's or writer's message.
        reason: String,
    },
    /// The tokenizer failed to build, load, encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Text contains a character the character-level vocabulary does not know.
    #[error("tokenizer: character {0:?} is not in the vocabulary")]
    UnknownCharacter(char),
    /// A caller passed something malformed (empty prompt, zero batch size, an example without an
    /// assistant turn, a sequence longer than the model's context).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A tensor operation failed inside candle.
    #[error("candle: {0}")]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for EngineError {
    /// Keeps candle's message but not the backtrace candle captures when `RUST_BACKTRACE` is set
    /// (it prints it as part of the message): an ordinary error is not a crash.
    fn from(err: candle_core::Error) -> Self {
        Self::Candle(without_backtrace(err))
    }
}

/// `err` without the backtraces candle wraps around errors when `RUST_BACKTRACE` is set.
pub(crate) fn without_backtrace(err: candle_core::Error) -> candle_core::Error {
    match err {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        candle_core::Error::Context { inner, context } => {
            candle_core::Error::Context { inner: Box::new(without_backtrace(*inner)), context }
        }
        candle_core::Error::WithPath { inner, path } => {
            candle_core::Error::WithPath { inner: Box::new(without_backtrace(*inner)), path }
        }
        other => other,
    }
}

impl EngineError {
    /// Shorthand for [`EngineError::InvalidInput`].
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidInput(msg.into())
    }

    /// Shorthand for [`EngineError::Config`].
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Config { field, reason: reason.into() }
    }

    /// Converts into the core error of a failed generation call.
    pub fn into_generation(self) -> CoreError {
        self.into_core(CoreError::Generation)
    }

    /// Converts into the core error of a failed training call.
    pub fn into_training(self) -> CoreError {
        self.into_core(CoreError::Training)
    }

    /// Converts into the core error of a model that could not be loaded or built.
    pub fn into_load(self) -> CoreError {
        self.into_core(CoreError::Load)
    }

    /// Converts into the core error of a model that could not be saved.
    pub fn into_save(self) -> CoreError {
        self.into_core(CoreError::Save)
    }

    fn into_core(self, wrap: fn(String) -> CoreError) -> CoreError {
        match self {
            Self::Io { path, source } => CoreError::Io { path, source },
            Self::InvalidInput(msg) => CoreError::InvalidRequest(msg),
            Self::UnknownCharacter(_) => CoreError::InvalidRequest(self.to_string()),
            other => wrap(render_chain(&other)),
        }
    }
}

/// Result alias of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_input_becomes_invalid_request() {
        let core = EngineError::invalid("empty prompt").into_generation();
        assert!(matches!(core, CoreError::InvalidRequest(ref m) if m == "empty prompt"), "{core}");
    }

    #[test]
    fn candle_errors_lose_their_backtrace() {
        let inner = candle_core::Error::Msg("shape mismatch".into());
        let with = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(with.to_string().lines().count() > 1, "candle prints its backtrace");
        let ours = EngineError::from(with);
        assert_eq!(ours.to_string().lines().count(), 1, "{ours}");
        assert!(ours.to_string().contains("shape mismatch"), "{ours}");
    }

    #[test]
    fn config_error_names_the_field() {
        let core = EngineError::config("rope_scaling", "not supported").into_training();
        assert_eq!(core.to_string(), "training failed: invalid model config: field `rope_scaling`: not supported");
    }
}
