//! The journal of finished requests: one JSON line per request, keyed by a hash of everything
//! that decides its samples, so that a resumed run takes what it already has instead of asking
//! again.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flywheel_core::{Completion, FinishReason};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RemoteError;

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: String,
    samples: Vec<Sample>,
}

/// A sample as the journal keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Sample {
    text: String,
    tokens: usize,
    finish: FinishReason,
}

/// Finished requests, read from and appended to a JSONL file.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    known: Mutex<HashMap<String, Vec<Completion>>>,
}

impl Journal {
    /// Opens the journal at `path`, reading what it holds; a missing file is an empty journal.
    /// A line cut short (the process ended while writing it) is skipped.
    pub fn open(path: &Path) -> Result<Self, RemoteError> {
        let mut known = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    match serde_json::from_str::<Entry>(line) {
                        Ok(e) => {
                            let samples = e
                                .samples
                                .into_iter()
                                .map(|s| Completion { text: s.text, tokens: s.tokens, finish: s.finish })
                                .collect();
                            known.insert(e.key, samples);
                        }
                        Err(err) => tracing::warn!("{} line {}: skipped ({err})", path.display(), i + 1),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RemoteError::Journal { path: path.to_owned(), source }),
        }
        if !known.is_empty() {
            tracing::debug!("{}: {} finished requests on record", path.display(), known.len());
        }
        Ok(Self { path: path.to_owned(), known: Mutex::new(known) })
    }

    /// The samples recorded under `key`, if any.
    pub fn get(&self, key: &str) -> Option<Vec<Completion>> {
        self.known.lock().expect("journal lock").get(key).cloned()
    }

    /// Records `samples` under `key`, appending a line to the file.
    pub fn record(&self, key: String, samples: &[Completion]) -> Result<(), RemoteError> {
        let entry = Entry {
            key: key.clone(),
            samples: samples
                .iter()
                .map(|c| Sample { text: c.text.clone(), tokens: c.tokens, finish: c.finish })
                .collect(),
        };
        let mut line = serde_json::to_string(&entry).expect("an entry serialises");
        line.push('\n');
        let mut known = self.known.lock().expect("journal lock");
        let fail = |source| RemoteError::Journal { path: self.path.clone(), source };
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(fail)?;
        file.write_all(line.as_bytes()).map_err(fail)?;
        known.insert(key, samples.to_vec());
        Ok(())
    }
}

/// The key of a request: a SHA-256 of everything that decides its samples (the serialised
/// request body, the API's path and the request's first slot).
pub(crate) fn key(path: &str, body: &impl Serialize, first: usize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(body).expect("a body serialises"));
    hasher.update(first.to_le_bytes());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
