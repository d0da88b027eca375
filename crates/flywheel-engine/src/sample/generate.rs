//! The batched sampler: continuous batching over per-sequence KV caches.
//!
//! Up to `max_batch` sequences decode together, one token each per step. Each request's prompt is
//! prefilled once (prompts of several requests packed into one pass) and its `n` samples extend
//! the shared prompt cache.
//!
//! Prompts often begin alike (a chat template's system turn and a few worked examples before a
//! short question). With [`SamplerOptions::share_prefix`], the longest beginning common to every
//! prompt (token ids; at least [`MIN_SHARED_PREFIX`] of them) is prefilled once into a frozen
//! cache, and each prompt's prefill computes only its own remainder, from position = shared length,
//! extending that cache: three levels (common beginning, prompt, sample), each stored once. At
//! least one token of every prompt stays outside the shared part, so that each prompt's prefill
//! yields the logits of its last token. Rows are computed independently (see `infer.rs`), so
//! sharing changes no result, bit for bit: it only skips recomputing the common beginning.
//!
//! A sequence that finishes (end-of-sequence token, stop string, `max_new_tokens`, or the context
//! limit) leaves the batch at once and a waiting sample takes its slot, so a long tail of
//! unfinished sequences never holds up work. Each sequence has its own seeded generator and its
//! rows are computed independently of its neighbours, so results do not depend on `max_batch` or
//! on the order in which sequences finish.
//!
//! A [`Tool`] (a calculator) may write parts of a completion: after each sampled token it sees the
//! sequence's text so far, and the tokens of what it writes are fed to the model next in place of
//! samples (no random draw is spent on them), counted against `max_new_tokens` like any other.

use std::collections::VecDeque;
use std::sync::Arc;

use flywheel_core::{Completion, FinishReason, GenerationRequest, Reporter, SamplingParams, Tool};
use rand::rngs::StdRng;

use crate::error::{EngineError, Result};
use crate::sample::choose::{find_stop, first_stop, sequence_rng, TokenChooser};
use crate::sample::infer::{InferenceModel, StepInput};
use crate::sample::kv_cache::KvCache;
use crate::sample::quant::WeightFormat;
use crate::text::tokenizer::TextTokenizer;

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
    /// Prefill the beginning common to all prompts once and let every prompt extend it (default
    /// true; see the module docs). The completions are the same either way; only the time differs.
    pub share_prefix: bool,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        Self { max_batch: 256, max_prefill_tokens: 8192, weights: WeightFormat::default(), share_prefix: true }
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

/// Fewest tokens worth sharing between prompts: a shorter common beginning is recomputed per prompt.
pub(crate) const MIN_SHARED_PREFIX: usize = 16;

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
    /// Bytes of `text` handed to the [`TextSink`] so far.
    streamed: usize,
    /// Position the next fed token takes.
    next_pos: usize,
    /// Tokens the [`Tool`] wrote, fed before the model samples again.
    written: VecDeque<u32>,
}

/// What the sampler needs besides the requests.
pub(crate) struct SamplerContext<'a> {
    pub model: &'a InferenceModel,
    pub tokenizer: &'a TextTokenizer,
    pub eos_ids: &'a [u32],
    pub bos_id: Option<u32>,
    pub max_positions: usize,
    pub options: &'a SamplerOptions,
    /// A seed per request, in place of the parameters' seed: request `i`'s samples are then
    /// those it would get alone under `seeds[i]`, whatever it is batched with.
    pub seeds: Option<&'a [u64]>,
    /// Where text goes as it is decoded, for a caller that streams it.
    pub sink: Option<&'a dyn TextSink>,
    /// Consulted after each sampled token; what it writes is fed as the next tokens.
    pub tool: Option<&'a dyn Tool>,
}

/// Receives each sequence's text as it is decoded (a server streaming tokens to its clients).
/// Calls come from the sampling thread, in order per sequence; the pieces of a sequence joined
/// are its completion's text exactly. Text that could be the beginning of a stop string is held
/// back until it is known not to be one.
pub trait TextSink: Sync {
    /// More text of sample `sample` of request `request`.
    fn text(&self, request: usize, sample: usize, piece: &str);
    /// The sample is complete (its last text already sent).
    fn finished(&self, request: usize, sample: usize, completion: &Completion);
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
    let prompts = encode_prompts(ctx, requests)?;
    let total: usize = requests.iter().map(|r| r.n).sum();
    reporter.start("sample", total as u64);
    let shared = shared_prompt_cache(ctx, &prompts, requests)?;
    let mut decoder = Decoder {
        ctx,
        requests,
        params,
        chooser: &chooser,
        prompts: &prompts,
        shared: shared.as_ref(),
        reporter,
        queue: (0..requests.len()).filter(|&i| requests[i].n > 0).collect(),
        ready: VecDeque::new(),
        active: Vec::new(),
        scratch: Vec::new(),
        results: requests.iter().map(|r| vec![None; r.n]).collect(),
    };
    loop {
        decoder.fill_slots()?;
        if decoder.active.is_empty() {
            break;
        }
        decoder.choose_tokens()?;
        if !decoder.active.is_empty() {
            decoder.feed_back()?;
        }
    }
    reporter.finish();
    let results = decoder.results;
    Ok(results.into_iter().map(|r| r.into_iter().map(|c| c.expect("every sample completes")).collect()).collect())
}

/// Every request's prompt as token ids (BOS alone for an empty prompt), checked against the context.
fn encode_prompts(ctx: &SamplerContext<'_>, requests: &[GenerationRequest]) -> Result<Vec<Vec<u32>>> {
    requests
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
        .collect()
}

/// The cache of the beginning every sampled prompt shares, when sharing is on and there is one.
fn shared_prompt_cache(
    ctx: &SamplerContext<'_>,
    prompts: &[Vec<u32>],
    requests: &[GenerationRequest],
) -> Result<Option<Arc<KvCache>>> {
    if !ctx.options.share_prefix {
        return Ok(None);
    }
    let sampled: Vec<&[u32]> = prompts.iter().zip(requests).filter(|(_, r)| r.n > 0).map(|(p, _)| &p[..]).collect();
    let len = shared_prefix_len(&sampled);
    (len > 0).then(|| prefill_shared(ctx, &sampled[0][..len])).transpose()
}

/// The state of one [`generate`] call: prompts waiting for their prefill, prefilled prompts
/// waiting for slots, the sequences decoding, and the finished completions.
struct Decoder<'a> {
    ctx: &'a SamplerContext<'a>,
    requests: &'a [GenerationRequest],
    params: &'a SamplingParams,
    chooser: &'a TokenChooser,
    prompts: &'a [Vec<u32>],
    shared: Option<&'a Arc<KvCache>>,
    reporter: &'a dyn Reporter,
    queue: VecDeque<usize>,
    ready: VecDeque<Prefilled>,
    active: Vec<Active<'a>>,
    scratch: Vec<(f32, u32)>,
    results: Vec<Vec<Option<Completion>>>,
}

impl Decoder<'_> {
    /// Fills free slots: samples of prefilled prompts first, prefilling more prompts as needed.
    fn fill_slots(&mut self) -> Result<()> {
        let (ctx, params) = (self.ctx, self.params);
        while self.active.len() < ctx.options.max_batch {
            if let Some(p) = self.ready.front_mut() {
                let seq = Active {
                    request: p.request,
                    sample: p.next_sample,
                    cache: KvCache::extending(p.prefix.clone()),
                    logits: p.logits.to_vec(),
                    rng: match ctx.seeds {
                        Some(seeds) => sequence_rng(seeds[p.request], 0, p.next_sample),
                        None => sequence_rng(params.seed, p.request, p.next_sample),
                    },
                    ids: Vec::new(),
                    stream: ctx.tokenizer.inner().decode_stream(true),
                    text: String::new(),
                    streamed: 0,
                    next_pos: p.prompt_len,
                    written: VecDeque::new(),
                };
                p.next_sample += 1;
                if p.next_sample == self.requests[p.request].n {
                    self.ready.pop_front();
                }
                if params.max_new_tokens == 0 {
                    let done = Completion { text: String::new(), tokens: 0, finish: FinishReason::Length };
                    if let Some(sink) = ctx.sink {
                        sink.finished(seq.request, seq.sample, &done);
                    }
                    self.results[seq.request][seq.sample] = Some(done);
                    self.reporter.advance(1);
                } else {
                    self.active.push(seq);
                }
            } else if !self.queue.is_empty() {
                let free = ctx.options.max_batch - self.active.len();
                let prefilled = prefill(ctx, self.prompts, self.requests, self.shared, &mut self.queue, free)?;
                self.ready.extend(prefilled);
            } else {
                break;
            }
        }
        Ok(())
    }

    /// Samples one token per sequence and retires the finished ones.
    fn choose_tokens(&mut self) -> Result<()> {
        let (ctx, params) = (self.ctx, self.params);
        let mut finished = 0;
        let mut i = 0;
        while i < self.active.len() {
            let seq = &mut self.active[i];
            let sampled = seq.written.is_empty();
            let token = match seq.written.pop_front() {
                Some(token) => token,
                None => self.chooser.choose(&seq.logits, &mut seq.rng, &mut self.scratch),
            };
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
                } else if let Some(piece) = ctx.tool.filter(|_| sampled).and_then(|tool| tool.write(&seq.text)) {
                    seq.written.extend(ctx.tokenizer.encode(&piece)?);
                }
            }
            if let Some(reason) = finish {
                let seq = self.active.swap_remove(i);
                let done = complete(ctx, &params.stop, &seq.ids, reason)?;
                if let Some(sink) = ctx.sink {
                    // The rest of the final text (the streamed part is a prefix of it: both are
                    // the same tokens decoded, and held-back text never passed a stop string).
                    if let Some(rest) = done.text.get(seq.streamed..).filter(|r| !r.is_empty()) {
                        sink.text(seq.request, seq.sample, rest);
                    }
                    sink.finished(seq.request, seq.sample, &done);
                }
                self.results[seq.request][seq.sample] = Some(done);
                finished += 1;
            } else {
                if let Some(sink) = ctx.sink {
                    stream_text(sink, seq, &params.stop);
                }
                i += 1;
            }
        }
        if finished > 0 {
            self.reporter.advance(finished as u64);
        }
        Ok(())
    }

    /// Feeds every sequence's sampled token back through the model: the next logits.
    fn feed_back(&mut self) -> Result<()> {
        let feed: Vec<([u32; 1], [u32; 1])> =
            self.active.iter().map(|s| ([*s.ids.last().unwrap_or(&0)], [s.next_pos as u32])).collect();
        let mut inputs: Vec<StepInput<'_>> = self
            .active
            .iter_mut()
            .zip(&feed)
            .map(|(s, (t, p))| StepInput { cache: &mut s.cache, tokens: t, positions: p })
            .collect();
        let logits = self.ctx.model.step(&mut inputs)?;
        drop(inputs);
        for (seq, row) in self.active.iter_mut().zip(logits.chunks_exact(self.ctx.model.vocab())) {
            seq.logits.copy_from_slice(row);
            seq.next_pos += 1;
        }
        Ok(())
    }
}

/// Hands `seq`'s new text to `sink`, holding back the tail that could still grow into a stop string.
fn stream_text(sink: &dyn TextSink, seq: &mut Active<'_>, stops: &[String]) {
    let hold = stops.iter().map(String::len).max().unwrap_or(0).saturating_sub(1);
    let mut end = seq.text.len().saturating_sub(hold);
    while !seq.text.is_char_boundary(end) {
        end -= 1;
    }
    if end > seq.streamed {
        sink.text(seq.request, seq.sample, &seq.text[seq.streamed..end]);
        seq.streamed = end;
    }
}

/// How many leading tokens `prompts` share: their longest common prefix, capped one short of the
/// shortest prompt (each prompt keeps a token of its own), or 0 when that is under
/// [`MIN_SHARED_PREFIX`] or there are fewer than two prompts.
fn shared_prefix_len(prompts: &[&[u32]]) -> usize {
    let Some((first, rest)) = prompts.split_first() else { return 0 };
    if rest.is_empty() {
        return 0;
    }
    let common =
        rest.iter().fold(first.len(), |len, p| first[..len].iter().zip(*p).take_while(|(a, b)| a == b).count());
    let shortest = prompts.iter().map(|p| p.len()).min().unwrap_or(0);
    let len = common.min(shortest.saturating_sub(1));
    if len >= MIN_SHARED_PREFIX {
        len
    } else {
        0
    }
}

/// Prefills `prefix` (positions `0..len`) into a fresh cache, in passes of at most
/// `max_prefill_tokens` tokens, and freezes it for the prompts to extend.
fn prefill_shared(ctx: &SamplerContext<'_>, prefix: &[u32]) -> Result<Arc<KvCache>> {
    let mut cache = ctx.model.new_cache();
    let positions: Vec<u32> = (0..prefix.len() as u32).collect();
    let chunk = ctx.options.max_prefill_tokens.max(1);
    for (tokens, positions) in prefix.chunks(chunk).zip(positions.chunks(chunk)) {
        ctx.model.step(&mut [StepInput { cache: &mut cache, tokens, positions }])?;
    }
    Ok(cache.into_shared())
}

/// Prefills the prompts at the front of `queue`: enough requests to fill `free` slots, within the
/// prefill token budget (at least one request). With a `shared` prefix cache, every prompt extends
/// it and only the tokens after it are computed (and counted against the budget).
fn prefill(
    ctx: &SamplerContext<'_>,
    prompts: &[Vec<u32>],
    requests: &[GenerationRequest],
    shared: Option<&Arc<KvCache>>,
    queue: &mut VecDeque<usize>,
    free: usize,
) -> Result<Vec<Prefilled>> {
    let start = shared.map_or(0, |s| s.len());
    let (mut take, mut tokens, mut samples) = (Vec::new(), 0, 0);
    while let Some(&r) = queue.front() {
        let own = prompts[r].len() - start;
        if !take.is_empty() && (samples >= free || tokens + own > ctx.options.max_prefill_tokens) {
            break;
        }
        queue.pop_front();
        take.push(r);
        tokens += own;
        samples += requests[r].n;
    }
    let new_cache = || shared.map_or_else(|| ctx.model.new_cache(), |s| KvCache::extending(s.clone()));
    let mut caches: Vec<KvCache> = take.iter().map(|_| new_cache()).collect();
    let positions: Vec<Vec<u32>> = take.iter().map(|&r| (start as u32..prompts[r].len() as u32).collect()).collect();
    let mut inputs: Vec<StepInput<'_>> = caches
        .iter_mut()
        .zip(&take)
        .zip(&positions)
        .map(|((cache, &r), pos)| StepInput { cache, tokens: &prompts[r][start..], positions: pos })
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

#[cfg(test)]
mod tests {
    use flywheel_core::NullReporter;

    use super::*;
    use crate::model::DecoderModel;
    use crate::testing::{small_config, ALPHABET};

    /// A few-shot-like preamble over the test alphabet: 48 characters, one token each.
    const PREAMBLE: &str = "1+2=3 4+4=8 a+b=c 10+20=30 cab=bac 7+1=8 9+0=9 ";

    /// The small test model with room for long prompts, and everything the sampler needs.
    struct Fixture {
        model: InferenceModel,
        tokenizer: TextTokenizer,
        eos: [u32; 1],
        bos: Option<u32>,
        max_positions: usize,
    }

    impl Fixture {
        fn new(format: WeightFormat) -> Self {
            let tokenizer = TextTokenizer::char_level(ALPHABET).unwrap();
            let mut config = small_config(tokenizer.vocab_size(), true);
            config.max_position_embeddings = 128;
            let model = DecoderModel::new_random(&config, 31).unwrap();
            let eos = [config.eos_ids()[0]];
            let model = InferenceModel::new(&model, format).unwrap();
            Self { model, tokenizer, eos, bos: config.bos_token_id, max_positions: config.max_position_embeddings }
        }

        fn ctx<'a>(&'a self, options: &'a SamplerOptions) -> SamplerContext<'a> {
            SamplerContext {
                model: &self.model,
                tokenizer: &self.tokenizer,
                eos_ids: &self.eos,
                bos_id: self.bos,
                max_positions: self.max_positions,
                options,
                seeds: None,
                sink: None,
                tool: None,
            }
        }

        fn generate(
            &self,
            options: &SamplerOptions,
            requests: &[GenerationRequest],
            params: &SamplingParams,
        ) -> Vec<Vec<Completion>> {
            generate(&self.ctx(options), requests, params, &NullReporter).unwrap()
        }

        fn ids(&self, requests: &[GenerationRequest]) -> Vec<Vec<u32>> {
            requests.iter().map(|r| self.tokenizer.encode(&r.prompt).unwrap()).collect()
        }
    }

    fn req(prompt: impl Into<String>, n: usize) -> GenerationRequest {
        GenerationRequest::new(prompt, n)
    }

    fn options(share_prefix: bool, max_batch: usize, max_prefill_tokens: usize) -> SamplerOptions {
        SamplerOptions { max_batch, max_prefill_tokens, weights: WeightFormat::F32, share_prefix }
    }

    fn params(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_p: 0.95, top_k: 0, max_new_tokens: 24, seed, ..SamplingParams::default() }
    }

    /// Requests that share [`PREAMBLE`]; one prompt is the preamble plus a single token, and one
    /// request asks for no samples (its prompt, which shares less, must not shorten the prefix).
    fn few_shot() -> Vec<GenerationRequest> {
        vec![
            req(format!("{PREAMBLE}3+5="), 3),
            req(format!("{PREAMBLE}a"), 2),
            req("0 abc", 0),
            req(format!("{PREAMBLE}12+34= c"), 1),
            req(format!("{PREAMBLE}ba+ab="), 4),
        ]
    }

    #[test]
    fn shared_prefix_len_keeps_a_token_per_prompt_and_a_minimum() {
        let long: Vec<u32> = (0..40).collect();
        let other: Vec<u32> = (0..30).chain([99, 98]).collect();
        assert_eq!(shared_prefix_len(&[&long, &other]), 30);
        assert_eq!(shared_prefix_len(&[&long, &long[..25]]), 24, "a prompt equal to the prefix keeps its last token");
        assert_eq!(shared_prefix_len(&[&long, &long]), 39);
        assert_eq!(shared_prefix_len(&[&long]), 0, "one prompt shares with no one");
        assert_eq!(shared_prefix_len(&[]), 0);
        assert_eq!(shared_prefix_len(&[&long, &long[..MIN_SHARED_PREFIX]]), 0, "below the minimum");
        assert_eq!(shared_prefix_len(&[&long, &long[..MIN_SHARED_PREFIX + 1]]), MIN_SHARED_PREFIX);
        assert_eq!(shared_prefix_len(&[&long, &other, &[7, 0, 1]]), 0);
    }

    /// Each prompt's prefill logits are the same bits whether the common beginning was shared
    /// (in one or several passes) or recomputed, in Q8_0 and in `f32`.
    #[test]
    fn prefill_logits_are_bit_identical_with_a_shared_prefix() {
        for format in [WeightFormat::F32, WeightFormat::Q8_0] {
            let f = Fixture::new(format);
            let requests = few_shot();
            let prompts = f.ids(&requests);
            let sampled: Vec<&[u32]> =
                prompts.iter().zip(&requests).filter(|(_, r)| r.n > 0).map(|(p, _)| &p[..]).collect();
            let len = shared_prefix_len(&sampled);
            assert_eq!(len, PREAMBLE.len(), "the common beginning is the preamble");
            let plain = options(false, 64, 8192);
            let run = |options: &SamplerOptions, shared: Option<&Arc<KvCache>>| {
                let mut queue: VecDeque<usize> = (0..requests.len()).filter(|&i| requests[i].n > 0).collect();
                let mut out = Vec::new();
                while !queue.is_empty() {
                    out.extend(prefill(&f.ctx(options), &prompts, &requests, shared, &mut queue, 64).unwrap());
                }
                out.into_iter()
                    .map(|p| (p.request, p.prompt_len, p.prefix.len(), p.logits.to_vec()))
                    .collect::<Vec<_>>()
            };
            let reference = run(&plain, None);
            for max_prefill_tokens in [8192, 5] {
                let chunked = options(true, 64, max_prefill_tokens);
                let shared = prefill_shared(&f.ctx(&chunked), &sampled[0][..len]).unwrap();
                assert_eq!(shared.len(), len);
                let got = run(&chunked, Some(&shared));
                assert_eq!(got, reference, "{format:?}, max_prefill_tokens {max_prefill_tokens}");
                assert_eq!(Arc::strong_count(&shared), 1, "the prompt caches were dropped");
            }
        }
    }

    /// A sink that records what it is handed.
    #[derive(Default)]
    struct Recorder {
        pieces: std::sync::Mutex<Vec<((usize, usize), String)>>,
        finished: std::sync::Mutex<Vec<((usize, usize), Completion)>>,
    }

    impl TextSink for Recorder {
        fn text(&self, request: usize, sample: usize, piece: &str) {
            assert!(!piece.is_empty(), "no empty pieces");
            self.pieces.lock().unwrap().push(((request, sample), piece.to_string()));
        }

        fn finished(&self, request: usize, sample: usize, completion: &Completion) {
            let mut finished = self.finished.lock().unwrap();
            assert!(finished.iter().all(|(k, _)| *k != (request, sample)), "finished once");
            finished.push(((request, sample), completion.clone()));
        }
    }

    /// Streaming hands each sequence's text over piece by piece, never past a stop string, and
    /// the pieces joined are the returned completion exactly; the completions are those of the
    /// same call without a sink.
    #[test]
    fn streamed_pieces_join_into_each_completion() {
        let f = Fixture::new(WeightFormat::Q8_0);
        let requests = few_shot();
        // Stop strings the samples do reach, several characters long, so that text is held back.
        let free = f.generate(&options(true, 3, 8192), &requests, &params(1.0, 11));
        let (a, b) = (&free[0][0].text, &free[4][1].text);
        assert!(a.len() > 8 && b.len() > 8, "long enough samples: {a:?} {b:?}");
        for stop in [vec![], vec![a[4..6].to_string()], vec![b[5..8].to_string(), "=".to_string()]] {
            let p = SamplingParams { stop: stop.clone(), ..params(1.0, 11) };
            let options = options(true, 3, 8192);
            let plain = f.generate(&options, &requests, &p);
            let recorder = Recorder::default();
            let ctx = SamplerContext { sink: Some(&recorder), ..f.ctx(&options) };
            let streamed = generate(&ctx, &requests, &p, &NullReporter).unwrap();
            assert_eq!(streamed, plain, "stop {stop:?}: a sink changes no completion");
            let pieces = recorder.pieces.into_inner().unwrap();
            let finished = recorder.finished.into_inner().unwrap();
            assert_eq!(finished.len(), 10, "every sample finished once");
            let mut several = 0;
            for (r, completions) in plain.iter().enumerate() {
                for (s, c) in completions.iter().enumerate() {
                    let mine: Vec<&str> =
                        pieces.iter().filter(|(k, _)| *k == (r, s)).map(|(_, t)| t.as_str()).collect();
                    assert_eq!(mine.concat(), c.text, "stop {stop:?}, request {r} sample {s}");
                    several += usize::from(mine.len() > 1);
                    let done = finished.iter().find(|(k, _)| *k == (r, s)).map(|(_, c)| c);
                    assert_eq!(done, Some(c));
                }
            }
            assert!(several >= 5, "stop {stop:?}: text arrives in pieces ({several} of 10 samples in several)");
        }
    }

    #[test]
    fn sharing_a_prefix_changes_no_completion() {
        let f = Fixture::new(WeightFormat::Q8_0);
        let requests = few_shot();
        for (temperature, seed) in [(1.0, 7), (0.8, 8), (0.0, 0)] {
            let p = params(temperature, seed);
            let reference = f.generate(&options(false, 256, 8192), &requests, &p);
            let shapes: Vec<usize> = reference.iter().map(Vec::len).collect();
            assert_eq!(shapes, [3, 2, 0, 1, 4]);
            if temperature > 0.0 {
                let texts: Vec<&str> = reference[4].iter().map(|c| c.text.as_str()).collect();
                assert!(texts.iter().any(|t| *t != texts[0]), "samples of one prompt differ: {texts:?}");
            }
            for (max_batch, max_prefill_tokens) in [(256, 8192), (3, 7), (1, 1)] {
                let shared = options(true, max_batch, max_prefill_tokens);
                assert_eq!(f.generate(&shared, &requests, &p), reference, "t={temperature} batch {max_batch}");
            }
        }
        // A prompt equal to the whole common beginning: the shared part stops one token short.
        let requests = vec![req(PREAMBLE, 2), req(format!("{PREAMBLE}4+4="), 2)];
        let p = params(1.0, 3);
        assert_eq!(shared_prefix_len(&f.ids(&requests).iter().map(|p| &p[..]).collect::<Vec<_>>()), PREAMBLE.len() - 1);
        assert_eq!(
            f.generate(&options(true, 256, 8192), &requests, &p),
            f.generate(&options(false, 256, 8192), &requests, &p)
        );
    }

    #[test]
    fn prompts_without_a_common_beginning_still_sample() {
        let f = Fixture::new(WeightFormat::Q8_0);
        let requests =
            vec![req("1+1=", 2), req(format!("a{PREAMBLE}"), 1), req(format!("b{PREAMBLE}"), 3), req("9", 1)];
        assert_eq!(shared_prefix_len(&f.ids(&requests).iter().map(|p| &p[..]).collect::<Vec<_>>()), 0);
        let p = params(1.0, 11);
        let shared = f.generate(&options(true, 256, 8192), &requests, &p);
        assert_eq!(shared.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 3, 1]);
        assert!(shared.iter().flatten().all(|c| c.tokens > 0 && c.tokens <= 24));
        assert_eq!(shared, f.generate(&options(false, 256, 8192), &requests, &p));
        // A single request (nothing to share with) samples as before.
        let one = [req(format!("{PREAMBLE}3+5="), 2)];
        assert_eq!(f.generate(&options(true, 256, 8192), &one, &p), f.generate(&options(false, 256, 8192), &one, &p));
    }

    /// Writes `WRITTEN` once, after a completion's first character.
    #[derive(Debug)]
    struct AfterFirst;

    const WRITTEN: &str = "10+20=30 ";

    impl Tool for AfterFirst {
        fn write(&self, text: &str) -> Option<String> {
            (text.chars().count() == 1).then(|| WRITTEN.to_string())
        }
    }

    #[test]
    fn a_tool_writes_in_the_models_place_and_the_model_goes_on_from_it() {
        let f = Fixture::new(WeightFormat::F32);
        let opts = options(true, 4, 8192);
        let prompt = format!("{PREAMBLE}3+5=");
        let p = SamplingParams { ignore_eos: true, ..params(0.0, 0) };
        let ctx = SamplerContext { tool: Some(&AfterFirst), ..f.ctx(&opts) };
        let with_tool = generate(&ctx, &[req(prompt.clone(), 2)], &p, &NullReporter).unwrap();
        let [first, second] = &with_tool[0][..] else { panic!("two samples") };
        assert_eq!(first, second, "greedy samples agree");
        let text = &first.text;
        assert_eq!(first.tokens, 24, "written tokens count against max_new_tokens");
        let head: String = text.chars().take(1).collect();
        assert_eq!(&text[head.len()..head.len() + WRITTEN.len()], WRITTEN, "{text:?}");
        // Greedy decoding from the prompt, the first character and the written text goes on as the
        // model did after the tool wrote: the written tokens were fed to it.
        let rest = SamplingParams { max_new_tokens: 24 - 1 - WRITTEN.len(), ..p.clone() };
        let resumed = f.generate(&opts, &[req(format!("{prompt}{head}{WRITTEN}"), 1)], &rest);
        assert_eq!(format!("{head}{WRITTEN}{}", resumed[0][0].text), *text);
        // Without the tool the model writes something else.
        assert!(!f.generate(&opts, &[req(prompt, 1)], &p)[0][0].text.contains(WRITTEN));
        // Sampled (not greedy), the written text is in every completion too.
        let hot = SamplingParams { temperature: 1.0, seed: 3, ..p };
        let sampled = generate(&ctx, &[req(format!("{PREAMBLE}1+2="), 5)], &hot, &NullReporter).unwrap();
        for c in &sampled[0] {
            let first_len = c.text.chars().next().map_or(0, char::len_utf8);
            assert_eq!(c.text.get(first_len..first_len + WRITTEN.len()), Some(WRITTEN), "{:?}", c.text);
        }
    }
}
