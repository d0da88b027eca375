//! The trainer's settings beyond [`flywheel_core::TrainingParams`]: the optimiser's, the padding id, the
//! micro-batch budget, and which pass computes the gradients.

/// How a training step computes its gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainPass {
    /// The written-out pass (`train/fused/`): forward and backward by hand over packed
    /// sequences, the fastest and leanest. Models whose parameters are not `f32` fall back to
    /// [`TrainPass::Autograd`].
    #[default]
    Fused,
    /// candle's autograd over the differentiable forward pass, on right-padded micro-batches:
    /// the reference the written-out pass is tested against.
    Autograd,
}

/// Optimiser settings beyond [`flywheel_core::TrainingParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// The learning rate decays (cosine) from the peak to `peak * min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// AdamW's β₁.
    pub beta1: f64,
    /// AdamW's β₂.
    pub beta2: f64,
    /// AdamW's ε.
    pub eps: f64,
    /// Id written into padding positions (never a target, never attended to by real tokens).
    pub pad_id: u32,
    /// Most tokens in one forward pass: packed tokens for [`TrainPass::Fused`], padded ones
    /// (sequences × longest length, sorted by length so padding is small) for
    /// [`TrainPass::Autograd`]. A step's batch is cut into micro-batches of at most this many
    /// whose gradients are summed: the step is the same, the peak memory is bounded.
    pub micro_batch_tokens: usize,
    /// Which pass computes the gradients.
    pub pass: TrainPass,
    /// With [`TrainPass::Autograd`]: recompute each layer's activations in the backward pass
    /// instead of keeping every layer's graph (gradient checkpointing): the same gradients (up to
    /// rounding), a fraction of the peak memory, one more forward pass of compute.
    pub checkpoint_layers: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            min_lr_ratio: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            pad_id: 0,
            micro_batch_tokens: 1024,
            pass: TrainPass::Fused,
            checkpoint_layers: false,
        }
    }
}
