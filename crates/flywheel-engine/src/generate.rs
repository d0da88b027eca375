//! The batched sampler: continuous batching over per-sequence KV caches.
//!
//! Up to `max_batch` sequences decode together, one token each per step. Each request's prompt is
//! prefilled once (prompts of several requests packed into one pass) and its `n` samples extend
//! the shared prompt cache. A sequence that finishes (end-of-sequence token, stop string,
//! `max_new_tokens`, or the context limit) leaves the batch at once and a waiting sample takes its
//! slot, so a long tail of unfinished sequences never holds up work. Each sequence has its own
//! seeded generator and its rows are computed independently of its neighbours, so results do not
//! depend on `max_batch` or on the order in which sequences finish.

use std::collections::VecDeque;
use std::sync::Arc;

use flywheel_core::{Completion, FinishReason, GenerationRequest, Reporter, SamplingParams};
use rand::rngs::StdRng;

use crate::error::{EngineError, Result};
use crate::infer::{InferenceModel, StepInput};
use crate::kv_cache::KvCache;
use crate::quant::WeightFormat;
use crate::sample::{find_stop, first_stop, sequence_rng, TokenChooser};
use crate::tokenizer::TextTokenizer;

/// How the sampler batches work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerOptions {
    /// Most sequences decoded at once.
    pub max_batch: usize,
    /// Most prompt tokens prefilled in one pass (at least one prompt is always taken).
    pub max_prefill_tokens: usize,
    /// How the sampler holds the weight matrices: Q8_0 (default; several times faster decoding,
    /// logits within about 1% of `f32`) or `f32` (exactly the training weights).
    pub weights: WeightFormat,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        Self { max_batch: 256, max_prefill_tokens: 8192, weights: WeightFormat::default() }
    }
}

type Stream<'t> = tokenizers::DecodeStream<
    't,
    tokenizers::ModelWrapper,
    tokenizers::NormalizerWrapper,
    tokenizers::PreTokenizerWrapper,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

/// A prompt whose cache is built and whose samples are waiting for a slot.
struct Prefilled {
    request: usize,
    prompt_len: usize,
    prefix: Arc<KvCache>,
    logits: Arc<[f32]>,
    next_sample: usize,
}

/// One sequence being decoded.
struct Active<'t> {
    request: usize,
    sample: usize,
    cache: KvCache,
    /// Logits for the next token.
    logits: Vec<f32>,
    rng: StdRng,
    ids: Vec<u32>,
    stream: Stream<'t>,
    text: String,
    /// Position the next fed token takes.
    next_pos: usize,
}

/// What the sampler needs besides the requests.
pub(crate) struct SamplerContext<'a> {
    pub model: &'a InferenceModel,
    pub tokenizer: &'a TextTokenizer,
    pub eos_ids: &'a [u32],
    pub bos_id: Option<u32>,
    pub max_positions: usize,
    pub options: &'a SamplerOptions,
}

/// Draws `requests[i].n` completions for every request (see [`flywheel_core::Generator`]).
pub(crate) fn generate(
    ctx: &SamplerContext<'_>,
    requests: &[GenerationRequest],
    params: &SamplingParams,
    reporter: &dyn Reporter,
) -> Result<Vec<Vec<Completion>>> {
    let chooser = TokenChooser::new(params)?;
    if ctx.options.max_batch == 0 {
        return Err(EngineError::invalid("max_batch must be positive"));
    }
    let prompts = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut ids = ctx.tokenizer.encode(&r.prompt)?;
            if ids.is_empty() {
                ids.extend(ctx.bos_id);
            }
            if ids.is_empty() {
                return Err(EngineError::invalid(format!("request {i}: empty prompt and the model has no BOS token")));
            }
            if ids.len() > ctx.max_positions {
                return Err(EngineError::invalid(format!(
                    "request {i}: prompt of {} tokens exceeds the context of {}",
                    ids.len(),
                    ctx.max_positions
                )));
            }
            Ok(ids)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut results: Vec<Vec<Option<Completion>>> = requests.iter().map(|r| vec![None; r.n]).collect();
    let total: usize = requests.iter().map(|r| r.n).sum();
    reporter.start("sample", total as u64);

    let mut queue: VecDeque<usize> = (0..requests.len()).filter(|&i| requests[i].n > 0).collect();
    let mut ready: VecDeque<Prefilled> = VecDeque::new();
    let mut active: Vec<Active<'_>> = Vec::new();
    let mut scratch = Vec::new();
    loop {
        // Fill free slots: samples of prefilled prompts first, prefilling more prompts as needed.
        while active.len() < ctx.options.max_batch {
            if let Some(p) = ready.front_mut() {
                let seq = Active {
                    request: p.request,
                    sample: p.next_sample,
                    cache: KvCache::extending(p.prefix.clone()),
                    logits: p.logits.to_vec(),
                    rng: sequence_rng(params.seed, p.request, p.next_sample),
                    ids: Vec::new(),
                    stream: ctx.tokenizer.inner().decode_stream(true),
                    text: String::new(),
                    next_pos: p.prompt_len,
                };
                p.next_sample += 1;
                if p.next_sample == requests[p.request].n {
                    ready.pop_front();
                }
                if params.max_new_tokens == 0 {
                    let done = Completion { text: String::new(), tokens: 0, finish: FinishReason::Length };
                    results[seq.request][seq.sample] = Some(done);
                    reporter.advance(1);
                } else {
                    active.push(seq);
                }
            } else if !queue.is_empty() {
                let free = ctx.options.max_batch - active.len();
                ready.extend(prefill(ctx, &prompts, requests, &mut queue, free)?);
            } else {
                break;
            }
        }
        if active.is_empty() {
            break;
        }
        // Sample one token per sequence; retire the finished.
        let mut finished = 0;
        let mut i = 0;
        while i < active.len() {
            let seq = &mut active[i];
            let token = chooser.choose(&seq.logits, &mut seq.rng, &mut scratch);
            seq.ids.push(token);
            let mut finish = None;
            if ctx.eos_ids.contains(&token) && !params.ignore_eos {
                finish = Some(FinishReason::Stop);
            } else {
                let before = seq.text.len();
                if let Some(piece) = seq.stream.step(token).map_err(|e| EngineError::Tokenizer(e.to_string()))? {
                    seq.text.push_str(&piece);
                }
                if find_stop(&seq.text, before, &params.stop).is_some() {
                    finish = Some(FinishReason::Stop);
                } else if seq.ids.len() >= params.max_new_tokens || seq.next_pos >= ctx.max_positions {
                    finish = Some(FinishReason::Length);
                }
            }
            if let Some(reason) = finish {
                let seq = active.swap_remove(i);
                results[seq.request][seq.sample] = Some(complete(ctx, &params.stop, &seq.ids, reason)?);
                finished += 1;
            } else {
                i += 1;
            }
        }
        if finished > 0 {
            reporter.advance(finished as u64);
        }
        if active.is_empty() {
            continue;
        }
        // Feed the sampled tokens back.
        let feed: Vec<([u32; 1], [u32; 1])> =
            active.iter().map(|s| ([*s.ids.last().unwrap_or(&0)], [s.next_pos as u32])).collect();
        let mut inputs: Vec<StepInput<'_>> = active
            .iter_mut()
            .zip(&feed)
            .map(|(s, (t, p))| StepInput { cache: &mut s.cache, tokens: t, positions: p })
            .collect();
        let logits = ctx.model.step(&mut inputs)?;
        drop(inputs);
        for (seq, row) in active.iter_mut().zip(logits.chunks_exact(ctx.model.vocab())) {
            seq.logits.copy_from_slice(row);
            seq.next_pos += 1;
        }
    }
    reporter.finish();
    Ok(results.into_iter().map(|r| r.into_iter().map(|c| c.expect("every sample completes")).collect()).collect())
}

/// Prefills the prompts at the front of `queue`: enough requests to fill `free` slots, within the
/// prefill token budget (at least one request).
fn prefill(
    ctx: &SamplerContext<'_>,
    prompts: &[Vec<u32>],
    requests: &[GenerationRequest],
    queue: &mut VecDeque<usize>,
    free: usize,
) -> Result<Vec<Prefilled>> {
    let (mut take, mut tokens, mut samples) = (Vec::new(), 0, 0);
    while let Some(&r) = queue.front() {
        if !take.is_empty() && (samples >= free || tokens + prompts[r].len() > ctx.options.max_prefill_tokens) {
            break;
        }
        queue.pop_front();
        take.push(r);
        tokens += prompts[r].len();
        samples += requests[r].n;
    }
    let mut caches: Vec<KvCache> = take.iter().map(|_| ctx.model.new_cache()).collect();
    let positions: Vec<Vec<u32>> = take.iter().map(|&r| (0..prompts[r].len() as u32).collect()).collect();
    let mut inputs: Vec<StepInput<'_>> = caches
        .iter_mut()
        .zip(&take)
        .zip(&positions)
        .map(|((cache, &r), pos)| StepInput { cache, tokens: &prompts[r], positions: pos })
        .collect();
    let logits = ctx.model.step(&mut inputs)?;
    drop(inputs);
    Ok(take
        .into_iter()
        .zip(caches)
        .zip(logits.chunks_exact(ctx.model.vocab()))
        .map(|((request, cache), row)| Prefilled {
            request,
            prompt_len: prompts[request].len(),
            prefix: cache.into_shared(),
            logits: row.into(),
            next_sample: 0,
        })
        .collect())
}

/// The final completion: the decoded text (end-of-sequence left out), cut at the first stop string.
fn complete(ctx: &SamplerContext<'_>, stops: &[String], ids: &[u32], finish: FinishReason) -> Result<Completion> {
    let body = match ids.last() {
        Some(last) if ctx.eos_ids.contains(last) => &ids[..ids.len() - 1],
        _ => ids,
    };
    let mut text = ctx.tokenizer.decode(body)?;
    let finish = match first_stop(&text, stops) {
        Some(at) => {
            text.truncate(at);
            FinishReason::Stop
        }
        None => finish,
    };
    Ok(Completion { text, tokens: ids.len(), finish })
}
