//! Progress reporting for long work, drawn by the binary and ignored in tests.

/// Receives progress of long-running work (sampling, training, evaluation).
///
/// Libraries call it; only the binary draws bars (with indicatif). All methods have empty
/// defaults so that an implementation overrides what it shows.
pub trait Reporter: Send + Sync {
    /// A phase of `total` units (samples, steps) begins.
    fn start(&self, _phase: &str, _total: u64) {}
    /// `delta` more units of the current phase are done.
    fn advance(&self, _delta: u64) {}
    /// A free-form status for the current phase (for example the running loss).
    fn message(&self, _msg: &str) {}
    /// The current phase is over.
    fn finish(&self) {}
}

/// A reporter that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullReporter;

impl Reporter for NullReporter {}
