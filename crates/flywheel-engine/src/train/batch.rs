//! Batches for training: padding, the masked loss, and gradient accumulation over micro-batches.
//!
//! A step's examples are sorted by length and cut into micro-batches of bounded padded size; each
//! is right-padded (causal attention never lets a real token see the padding after it) and its
//! loss is cross-entropy on target tokens only: assistant text and the final end-of-sequence, with
//! prompt and padding masked out. The output projection runs on target rows only, which for a 49k
//! vocabulary is most of the saving. Losses are weighted by their share of the step's targets, so
//! the summed gradient is that of the whole batch's mean loss.

use candle_core::{backprop::GradStore, Device, Tensor, Var};

use super::options::TrainOptions;
use crate::error::{EngineError, Result};
use crate::model::DecoderModel;
use crate::text::template::TokenizedExample;

/// One padded batch: inputs, positions, and which flattened rows predict which target.
pub(crate) struct Batch {
    pub input_ids: Tensor,
    pub position_ids: Tensor,
    /// Flattened `(batch * seq)` row indices whose next token is a target.
    pub target_rows: Tensor,
    /// The target ids of those rows.
    pub targets: Tensor,
    /// Real (non-padding) input tokens.
    pub tokens: usize,
}

/// Right-pads `examples` into a batch. Row `t` of an example predicts token `t + 1`.
pub(crate) fn make_batch(examples: &[&TokenizedExample], pad_id: u32, device: &Device) -> Result<Batch> {
    let t = examples.iter().map(|e| e.ids.len().saturating_sub(1)).max().unwrap_or(0).max(1);
    let (mut ids, mut pos, mut rows, mut targets, mut tokens) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
    for (b, ex) in examples.iter().enumerate() {
        let n = ex.ids.len().saturating_sub(1);
        tokens += n;
        for i in 0..t {
            ids.push(if i < n { ex.ids[i] } else { pad_id });
            pos.push(i as u32);
            if i < n && ex.target[i + 1] {
                rows.push((b * t + i) as u32);
                targets.push(ex.ids[i + 1]);
            }
        }
    }
    if rows.is_empty() {
        return Err(EngineError::invalid("batch has no target token"));
    }
    let shape = (examples.len(), t);
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, shape, device)?,
        position_ids: Tensor::from_vec(pos, shape, device)?,
        target_rows: Tensor::new(rows.as_slice(), device)?,
        targets: Tensor::new(targets.as_slice(), device)?,
        tokens,
    })
}

/// Mean cross-entropy of `batch`'s targets (differentiable, plain tensor ops).
pub(crate) fn batch_loss(model: &DecoderModel, batch: &Batch) -> Result<Tensor> {
    let hidden = model.forward_hidden_mode(&batch.input_ids, &batch.position_ids, None, true)?;
    loss_of_hidden(model, &hidden, batch)
}

/// The summed cross-entropy of `examples`' targets and how many there are: a teacher-forced
/// evaluation pass in micro-batches of at most `budget` padded tokens, with no dropout and no
/// gradient kept. Examples without a target token are skipped.
pub(crate) fn summed_loss(
    model: &DecoderModel,
    examples: &[&TokenizedExample],
    budget: usize,
    pad_id: u32,
) -> Result<(f64, u64)> {
    let scored: Vec<&TokenizedExample> = examples.iter().copied().filter(|e| e.predicted_targets() > 0).collect();
    let (mut nll, mut tokens) = (0.0, 0u64);
    for part in micro_batches(&scored, budget.max(1)) {
        let batch = make_batch(&part, pad_id, &model.device)?;
        let hidden = model.forward_hidden_detached(&batch.input_ids, &batch.position_ids)?;
        let n = batch.targets.dim(0)?;
        let mean = loss_of_hidden(model, &hidden, &batch)?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        nll += mean * n as f64;
        tokens += n as u64;
    }
    Ok((nll, tokens))
}

/// Mean cross-entropy of `batch`'s targets given the final hidden states `(batch, seq, hidden)`.
fn loss_of_hidden(model: &DecoderModel, hidden: &Tensor, batch: &Batch) -> Result<Tensor> {
    let d = model.config().hidden_size;
    let rows = hidden.reshape(((), d))?.index_select(&batch.target_rows, 0)?;
    let logits = model.project(&rows)?; // (n, vocab)
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(1)?.log()?;
    let picked = shifted.gather(&batch.targets.unsqueeze(1)?, 1)?;
    Ok((log_z - picked)?.mean_all()?)
}

/// The summed gradients of one step and what they were computed on.
pub(crate) struct Accumulated {
    /// Gradients of the step's mean loss, by variable.
    pub grads: GradStore,
    /// The step's mean loss over its target tokens.
    pub loss: f64,
    /// Target tokens.
    pub targets: usize,
    /// Real (non-padding) input tokens.
    pub tokens: usize,
}

/// Cuts `examples` (sorted by length) into runs of at most `budget` padded tokens (at least one
/// example each).
pub(crate) fn micro_batches<'a>(examples: &[&'a TokenizedExample], budget: usize) -> Vec<Vec<&'a TokenizedExample>> {
    let mut sorted = examples.to_vec();
    sorted.sort_by_key(|e| e.ids.len());
    let mut out: Vec<Vec<&TokenizedExample>> = Vec::new();
    let mut current: Vec<&TokenizedExample> = Vec::new();
    for ex in sorted {
        let width = ex.ids.len().saturating_sub(1).max(1);
        if !current.is_empty() && (current.len() + 1) * width > budget {
            out.push(std::mem::take(&mut current));
        }
        current.push(ex);
    }
    out.extend((!current.is_empty()).then_some(current));
    out
}

/// Forward and backward passes over `examples` in micro-batches, gradients of `vars` summed.
pub(crate) fn accumulate_gradients(
    model: &DecoderModel,
    vars: &[Var],
    examples: &[&TokenizedExample],
    options: &TrainOptions,
) -> Result<Accumulated> {
    let total: usize = examples.iter().map(|e| e.predicted_targets()).sum();
    let mut acc = Accumulated { grads: GradStore::default(), loss: 0.0, targets: total, tokens: 0 };
    for part in micro_batches(examples, options.micro_batch_tokens.max(1)) {
        let batch = make_batch(&part, options.pad_id, &model.device)?;
        let share = batch.targets.dim(0)? as f64 / total as f64;
        acc.tokens += batch.tokens;
        if options.checkpoint_layers {
            acc.loss += checkpointed_backward(model, vars, &batch, share, &mut acc.grads)?;
            continue;
        }
        let loss = (batch_loss(model, &batch)? * share)?;
        acc.loss += loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        add_grads(&mut acc.grads, vars, &loss.backward()?)?;
    }
    Ok(acc)
}

/// Adds the gradients of `vars` in `grads` to `acc`.
fn add_grads(acc: &mut GradStore, vars: &[Var], grads: &GradStore) -> Result<()> {
    for v in vars {
        if let Some(g) = grads.get(v) {
            let sum = match acc.remove(v) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            acc.insert(v, sum);
        }
    }
    Ok(())
}

/// The loss of `batch` (weighted by `share`) and its gradients, added to `acc`, with activations
/// recomputed layer by layer (gradient checkpointing): the forward pass keeps only each layer's
/// input, and the backward pass rebuilds one layer's graph at a time, from that input and the
/// dropout masks it drew, then backpropagates the gradient of the layer's output through it (as
/// the gradient of `sum(output · g)`). Peak memory holds one layer's graph instead of all of them,
/// for one more forward pass of compute. Returns the weighted loss.
fn checkpointed_backward(
    model: &DecoderModel,
    vars: &[Var],
    batch: &Batch,
    share: f64,
    acc: &mut GradStore,
) -> Result<f64> {
    let ctx = model.layer_context(&batch.input_ids, &batch.position_ids, None)?;
    let layers = model.layers.len();
    let mut inputs = Vec::with_capacity(layers);
    let mut dropout = Vec::with_capacity(layers);
    let mut x = model.embed_tokens(&batch.input_ids)?.detach();
    for li in 0..layers {
        dropout.push(model.dropout_state());
        let out = model.layer(li, &x, &ctx, true)?.detach();
        inputs.push(x);
        x = out;
    }
    let after = model.dropout_state();

    // The head: final norm, output projection and loss, from the last layer's output.
    let top = Var::from_tensor(&x)?;
    let loss = (loss_of_hidden(model, &model.final_norm(top.as_tensor(), &ctx)?, batch)? * share)?;
    let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let grads = loss.backward()?;
    add_grads(acc, vars, &grads)?;
    let mut upstream = grads.get(&top).cloned();

    for li in (0..layers).rev() {
        let Some(g) = upstream.take() else { break };
        let input = Var::from_tensor(&inputs.pop().expect("one input per layer"))?;
        model.set_dropout_state(dropout.pop().expect("one state per layer"));
        let out = model.layer(li, input.as_tensor(), &ctx, true)?;
        let grads = (out * g)?.sum_all()?.backward()?;
        add_grads(acc, vars, &grads)?;
        upstream = grads.get(&input).cloned();
    }
    // The embeddings, when they train (full fine-tuning).
    if let Some(g) = upstream {
        let embedded = model.embed_tokens(&batch.input_ids)?;
        if embedded.track_op() {
            add_grads(acc, vars, &(embedded * g)?.sum_all()?.backward()?)?;
        }
    }
    model.set_dropout_state(after);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lora::Proj;

    fn ex(len: usize) -> TokenizedExample {
        TokenizedExample { ids: vec![3; len], target: (0..len).map(|i| i + 1 == len).collect() }
    }

    #[test]
    fn batch_is_right_padded_and_targets_follow_the_mask() {
        let a = TokenizedExample { ids: vec![5, 6, 7, 2], target: vec![false, false, true, true] };
        let b = TokenizedExample { ids: vec![8, 9], target: vec![false, true] };
        let batch = make_batch(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.input_ids.to_vec2::<u32>().unwrap(), [[5, 6, 7], [8, 0, 0]]);
        assert_eq!(batch.position_ids.to_vec2::<u32>().unwrap(), [[0, 1, 2], [0, 1, 2]]);
        // Row 1 (6) predicts 7, row 2 (7) predicts EOS, row 3 (8) predicts 9.
        assert_eq!(batch.target_rows.to_vec1::<u32>().unwrap(), [1, 2, 3]);
        assert_eq!(batch.targets.to_vec1::<u32>().unwrap(), [7, 2, 9]);
        assert_eq!(batch.tokens, 4);
    }

    #[test]
    fn micro_batches_respect_the_budget_and_sort_by_length() {
        let exs = [ex(11), ex(3), ex(6), ex(5), ex(21)];
        let refs: Vec<&TokenizedExample> = exs.iter().collect();
        let parts = micro_batches(&refs, 20);
        let lens: Vec<Vec<usize>> = parts.iter().map(|p| p.iter().map(|e| e.ids.len()).collect()).collect();
        // Widths are len - 1: [2, 4] fit 20 (2 × 4 = 8, then 3 × 5 = 15, then 4 × 10 = 40 > 20).
        assert_eq!(lens, [vec![3, 5, 6], vec![11], vec![21]]);
    }

    #[test]
    fn micro_batching_does_not_change_the_gradient() {
        let (model, _) = crate::testing::small_model(8, true);
        let vars: Vec<Var> = model.named_vars().into_iter().map(|(_, v)| v).collect();
        let exs = [ex(4), ex(9), ex(7), ex(12), ex(5)];
        let refs: Vec<&TokenizedExample> = exs.iter().collect();
        let whole = accumulate_gradients(
            &model,
            &vars,
            &refs,
            &TrainOptions { micro_batch_tokens: 1 << 20, ..Default::default() },
        )
        .unwrap();
        let split =
            accumulate_gradients(&model, &vars, &refs, &TrainOptions { micro_batch_tokens: 12, ..Default::default() })
                .unwrap();
        assert!((whole.loss - split.loss).abs() < 1e-5);
        for v in &vars {
            let (a, b) = (whole.grads.get(v).unwrap(), split.grads.get(v).unwrap());
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{diff}");
        }
    }

    /// Largest difference between the two runs' gradients over every variable, relative to the
    /// largest gradient.
    fn gradient_gap(a: &Accumulated, b: &Accumulated, vars: &[Var]) -> f32 {
        let max = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = vars.iter().map(|v| max(a.grads.get(v).expect("gradient"))).fold(0.0, f32::max);
        let gap = vars
            .iter()
            .map(|v| max(&(a.grads.get(v).expect("gradient") - b.grads.get(v).expect("gradient")).unwrap()))
            .fold(0.0, f32::max);
        gap / scale
    }

    /// Gradient checkpointing gives the gradients of the whole graph: full fine-tuning (tied
    /// embeddings, every parameter) and LoRA with dropout (the recomputed layers replay the masks),
    /// within 1e-5 of the largest gradient, and leaves the dropout generator where the plain pass does.
    #[test]
    fn checkpointed_layers_give_the_same_gradients() {
        let exs = [ex(4), ex(9), ex(7), ex(12), ex(5)];
        let refs: Vec<&TokenizedExample> = exs.iter().collect();
        let plain = TrainOptions { micro_batch_tokens: 24, ..Default::default() };
        let checkpointed = TrainOptions { checkpoint_layers: true, ..plain.clone() };
        for tied in [true, false] {
            let (model, _) = crate::testing::small_model(3, tied);
            let vars: Vec<Var> = model.named_vars().into_iter().map(|(_, v)| v).collect();
            let a = accumulate_gradients(&model, &vars, &refs, &plain).unwrap();
            let b = accumulate_gradients(&model, &vars, &refs, &checkpointed).unwrap();
            assert!((a.loss - b.loss).abs() < 1e-6, "{} {}", a.loss, b.loss);
            let gap = gradient_gap(&a, &b, &vars);
            assert!(gap < 1e-5, "full fine-tuning, tied {tied}: {gap}");
        }
        let lora = |model: &mut DecoderModel| {
            let config =
                crate::model::lora::LoraConfig { rank: 4, alpha: 8.0, dropout: 0.3, targets: Proj::ALL.to_vec() };
            model.attach_lora(config, 9).unwrap();
            // B = 0 would make every gradient of A zero: give B a value.
            for v in model.trainable_vars() {
                v.set(&(v.as_tensor().ones_like().unwrap() * 0.05).unwrap()).unwrap();
            }
        };
        let (mut one, _) = crate::testing::small_model(3, true);
        let (mut two, _) = crate::testing::small_model(3, true);
        lora(&mut one);
        lora(&mut two);
        let vars_one = one.trainable_vars();
        let a = accumulate_gradients(&one, &vars_one, &refs, &plain).unwrap();
        let b = accumulate_gradients(&two, &two.trainable_vars(), &refs, &checkpointed).unwrap();
        assert!((a.loss - b.loss).abs() < 1e-6, "{} {}", a.loss, b.loss);
        // The two models' variables are distinct objects: compare by position.
        let vars_two = two.trainable_vars();
        let max = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = vars_one.iter().map(|v| max(a.grads.get(v).unwrap())).fold(0.0, f32::max);
        assert!(scale > 0.0);
        for (v1, v2) in vars_one.iter().zip(&vars_two) {
            let gap = max(&(a.grads.get(v1).unwrap() - b.grads.get(v2).unwrap()).unwrap()) / scale;
            assert!(gap < 1e-5, "LoRA: {gap}");
        }
        let next = |m: &DecoderModel| rand::Rng::random::<u64>(&mut m.dropout_state().unwrap());
        assert_eq!(next(&one), next(&two), "the dropout generator ends where the plain pass leaves it");
    }
}
