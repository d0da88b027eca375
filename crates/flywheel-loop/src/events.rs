//! The lines of `metrics.jsonl`: one typed event per line, for plots and `flywheel report`.
//!
//! Every event carries its iteration, so that a resumed run can drop the events of an iteration it
//! redoes ([`crate::rundir::RunDir::begin_iteration`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quality::metrics::Quality;
use crate::quality::watch::Warning;
use crate::strategy::StrategyStats;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A strategy's sampling and selection.
    Sample(SampleEvent),
    /// One training run (the seed set, or one training set of an iteration).
    Train(TrainEvent),
    /// Held-out evaluation.
    Eval(EvalEvent),
    /// The run stopped early.
    Stop(StopEvent),
    /// The quality of an iteration's samples, kept set and held-out answers (`quality.json`).
    Quality(Box<QualityEvent>),
}

impl Event {
    /// The iteration the event belongs to.
    pub fn iteration(&self) -> usize {
        match self {
            Event::Sample(e) => e.iteration,
            Event::Train(e) => e.iteration,
            Event::Eval(e) => e.iteration,
            Event::Stop(e) => e.iteration,
            Event::Quality(e) => e.iteration,
        }
    }
}

/// What a strategy drew and kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleEvent {
    /// The iteration.
    pub iteration: usize,
    /// Wall time of sampling, judging and selection.
    pub seconds: f64,
    /// Training problems.
    pub problems: usize,
    /// Samples drawn (every role's completions that were judged: solutions, hinted, revisions).
    pub samples: usize,
    /// Tokens generated, all roles together.
    pub tokens: u64,
    /// Generated tokens per second.
    pub tokens_per_second: f64,
    /// Samples kept for training (by the last training set: ReST's strictest Improve step).
    pub kept: usize,
    /// Examples of each training set, in training order.
    pub train_examples: Vec<usize>,
    /// Preference pairs written.
    pub pairs: usize,
    /// Mean reward of all samples.
    pub mean_reward: f64,
    /// Mean reward of the kept samples.
    pub mean_reward_kept: f64,
    /// Share of the kept samples whose answer is truly right by the gold answer (`None`: none kept).
    pub kept_correct: Option<f64>,
    /// Share of all samples whose answer is right.
    pub sample_accuracy: f64,
    /// The strategy's own counters.
    #[serde(flatten)]
    pub stats: StrategyStats,
}

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainEvent {
    /// The iteration (0: the base model on the seed set).
    pub iteration: usize,
    /// 1-based index of the training set within the iteration.
    pub set: usize,
    /// What selected the set.
    pub label: String,
    /// Examples trained on.
    pub examples: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Wall time.
    pub seconds: f64,
    /// Mean loss over the first tenth of the steps.
    pub first_loss: f64,
    /// Mean loss over the last tenth of the steps.
    pub last_loss: f64,
    /// Target tokens seen.
    pub target_tokens: u64,
    /// Target tokens per second.
    pub target_tokens_per_second: f64,
}

/// Held-out evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalEvent {
    /// The iteration.
    pub iteration: usize,
    /// Wall time.
    pub seconds: f64,
    /// Greedy accuracy.
    pub accuracy: f64,
    /// Held-out problems.
    pub n: usize,
    /// Greedy accuracy per bucket.
    pub by_bucket: BTreeMap<String, f64>,
    /// pass@k with `k` samples per problem, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_at_k: Option<f64>,
    /// maj@k (majority vote of `k` samples), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maj_at_k: Option<f64>,
}

/// Why the run stopped early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopEvent {
    /// The last iteration run.
    pub iteration: usize,
    /// What the rule saw.
    pub reason: String,
}

/// The quality of one iteration: what `iter-NNNN/quality.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityEvent {
    /// The iteration.
    pub iteration: usize,
    /// Every sample the strategy drew (none in iteration 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<Quality>,
    /// The samples kept for training (none in iteration 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<Quality>,
    /// The greedy held-out answers.
    pub heldout: Quality,
    /// Held-out accuracy.
    pub accuracy: f64,
    /// Held-out accuracy minus the previous iteration's (`None` in iteration 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_change: Option<f64>,
    /// The model's perplexity per token on the natural-text set (`[watch] perplexity-texts`
    /// reference solutions of held-out problems); `None` when there is none or the generator
    /// cannot score text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// The collapse watch's warnings on this iteration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}
