//! Micro-batches as the written-out pass sees them: sequences laid end to end, no padding.

use std::ops::Range;

use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::text::template::TokenizedExample;

/// A micro-batch's sequences laid end to end.
#[derive(Debug)]
pub(super) struct Packed {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub seqs: Vec<Range<usize>>,
    /// Rows whose next token is a target, and those targets.
    pub target_rows: Vec<usize>,
    pub targets: Vec<u32>,
}

impl Packed {
    /// Packs `examples`; row `t` of an example predicts its token `t + 1`.
    pub fn new(examples: &[&TokenizedExample], config: &ModelConfig) -> Result<Self> {
        let mut p = Packed {
            ids: Vec::new(),
            positions: Vec::new(),
            seqs: Vec::new(),
            target_rows: Vec::new(),
            targets: Vec::new(),
        };
        for ex in examples {
            let n = ex.ids.len().saturating_sub(1);
            if n > config.max_position_embeddings {
                return Err(EngineError::invalid(format!(
                    "a training example of {n} tokens is longer than max_position_embeddings = {}",
                    config.max_position_embeddings
                )));
            }
            if let Some(&id) = ex.ids.iter().find(|&&id| id as usize >= config.vocab_size) {
                return Err(EngineError::invalid(format!(
                    "token id {id} is outside the vocabulary ({})",
                    config.vocab_size
                )));
            }
            let start = p.ids.len();
            for i in 0..n {
                if ex.target[i + 1] {
                    p.target_rows.push(start + i);
                    p.targets.push(ex.ids[i + 1]);
                }
            }
            p.ids.extend_from_slice(&ex.ids[..n]);
            p.positions.extend(0..n as u32);
            p.seqs.push(start..start + n);
        }
        Ok(p)
    }

    pub fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// Cuts `examples` into runs of at most `budget` tokens (at least one example each), in order.
pub(super) fn packs<'a>(examples: &[&'a TokenizedExample], budget: usize) -> Vec<Vec<&'a TokenizedExample>> {
    let mut out: Vec<Vec<&TokenizedExample>> = Vec::new();
    let mut current: Vec<&TokenizedExample> = Vec::new();
    let mut used = 0;
    for &ex in examples {
        let n = ex.ids.len().saturating_sub(1);
        if !current.is_empty() && used + n > budget {
            out.push(std::mem::take(&mut current));
            used = 0;
        }
        used += n;
        current.push(ex);
    }
    out.extend((!current.is_empty()).then_some(current));
    out
}
