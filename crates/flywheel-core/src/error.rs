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

/// Renders an error and its sources as `outer: inner: innermost`, each message once: a source
/// whose text its wrapper already shows (an OS error inside "path: OS error") is not repeated.
pub fn render_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}

/// Result alias for the core traits.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_already_shown_is_not_repeated() {
        let os = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let outer = CoreError::Io { path: "x.toml".into(), source: os };
        assert_eq!(render_chain(&outer), "x.toml: No such file");
        let inner = std::io::Error::other(CoreError::Training("nan loss".into()));
        assert_eq!(render_chain(&inner), "training failed: nan loss");
    }
}
