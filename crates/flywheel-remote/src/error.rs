//! What can go wrong talking to a server.

/// Errors of the remote generator. None of them holds the API key.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The config names a key variable that is not set.
    #[error("the API key variable {var} is not set (or empty); export it before the run")]
    MissingKey {
        /// The variable's name.
        var: String,
    },
    /// A setting is invalid.
    #[error("remote generator: {0}")]
    Config(String),
    /// The server refused the request for a reason retrying cannot fix (a 4xx other than 429).
    #[error("{url} answered {status}: {message}")]
    Rejected {
        /// The endpoint called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's message (its `error.message`, or the start of its body).
        message: String,
    },
    /// Every attempt of one request failed with a retryable error.
    #[error("gave up after {attempts} attempts; the last: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: usize,
        /// The last attempt's error.
        last: String,
    },
    /// The journal could not be read or written.
    #[error("{path}: {source}")]
    Journal {
        /// The journal file.
        path: std::path::PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client or its runtime could not be built.
    #[error("could not start the HTTP client: {0}")]
    Client(String),
}

impl From<RemoteError> for flywheel_core::CoreError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::MissingKey { .. } | RemoteError::Config(_) => Self::InvalidRequest(e.to_string()),
            _ => Self::Generation(e.to_string()),
        }
    }
}
