//! The error type engines report through the core traits.

/// Errors crossing the engine boundary.
///
/// Engines keep their own detailed error enums and convert into this one at the trait boundary,
/// keeping the message (and the chain, rendered into it) so that the user sees what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A request was malformed (empty prompt, zero samples, a parameter out of range).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The engine failed while generating.
    #[error("generation failed: {0}")]
    Generation(String),
    /// The engine failed while training.
    #[error("training failed: {0}")]
    Training(String),
    /// A model could not be loaded or built (a missing or damaged file, an unsupported config).
    #[error("loading the model failed: {0}")]
    Load(String),
    /// A model could not be saved.
    #[error("saving the model failed: {0}")]
    Save(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file that was being read or written.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for the core traits.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
