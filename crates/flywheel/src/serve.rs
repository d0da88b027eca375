//! `flywheel serve`: the embedded engine behind an OpenAI-compatible HTTP API (`/v1/models`,
//! `/v1/completions`, `/v1/chat/completions`, with `n`, temperature, top-p, top-k, max tokens,
//! stop strings, seeds and streaming), so that OpenAI clients, and flywheel's own remote
//! generator, can sample from a GGUF file, a Hugging Face directory or a PEFT adapter.
//!
//! One worker thread owns the model. Handlers parse and check a request, hand it to the worker
//! through a channel and await the answer; the worker takes every request that queued up while it
//! was busy and samples those that share their settings (temperature, top-p, top-k, max tokens,
//! stop strings) in one batch, so concurrent clients fill the sampler's batch. Each request draws
//! under its own seed, so one with a seed gets the same samples whatever it is batched with (the
//! `i`-th prompt of a completions request under `seed + i`); one without gets a fresh seed.
//! Streaming sends each completion's text as the sampler decodes it (held back only where it could
//! be the beginning of a stop string), each choice's finish reason as soon as it ends, then
//! `[DONE]`; an error after the first chunk arrives as a chunk with an `error` object.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use flywheel_core::{Completion, FinishReason, GenerationRequest, Message, NullReporter, Role, SamplingParams};
use flywheel_engine::{Engine, PreparedSampler, TextSink};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::cli::ServeArgs;

/// Most completions one request may ask for (prompts times `n`).
const MAX_COMPLETIONS: usize = 256;
/// New tokens when a request names no limit.
const DEFAULT_MAX_TOKENS: usize = 256;

/// What a request asks the worker to continue.
#[derive(Debug)]
enum Input {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<Message>),
    /// Texts continued as they are.
    Text(Vec<String>),
}

/// A request for the worker.
#[derive(Debug)]
struct Job {
    input: Input,
    n: usize,
    params: SamplingParams,
    /// Whether the client chose the seed.
    seeded: bool,
    /// Where text goes as it is decoded, for a streaming request.
    stream: Option<mpsc::UnboundedSender<Streamed>>,
    reply: oneshot::Sender<Result<Sampled, String>>,
}

/// What a streaming request receives while its batch decodes.
#[derive(Debug)]
enum Streamed {
    /// More text of choice `choice`.
    Text { choice: usize, text: String },
    /// Choice `choice` ended.
    Done { choice: usize, finish: FinishReason },
}

/// Routes the sampler's text to the streaming jobs of a batch: for each request of the batch,
/// its job's channel and the choice index of its first sample (`None` for a job that does not
/// stream).
struct StreamRoutes {
    routes: Vec<Option<(mpsc::UnboundedSender<Streamed>, usize)>>,
}

impl StreamRoutes {
    fn send(&self, request: usize, sample: usize, event: impl FnOnce(usize) -> Streamed) {
        if let Some(Some((channel, first))) = self.routes.get(request) {
            // A client that went away no longer reads; its samples still complete.
            let _ = channel.send(event(first + sample));
        }
    }
}

impl TextSink for StreamRoutes {
    fn text(&self, request: usize, sample: usize, piece: &str) {
        self.send(request, sample, |choice| Streamed::Text { choice, text: piece.to_owned() });
    }

    fn finished(&self, request: usize, sample: usize, completion: &Completion) {
        self.send(request, sample, |choice| Streamed::Done { choice, finish: completion.finish });
    }
}

/// The worker's answer: completions per prompt, and prompt tokens.
#[derive(Debug)]
struct Sampled {
    completions: Vec<Vec<Completion>>,
    prompt_tokens: usize,
}

/// What the handlers share.
struct Shared {
    model: String,
    jobs: mpsc::UnboundedSender<Job>,
    next_id: AtomicU64,
}

/// Runs the server until Ctrl-C.
pub fn run(args: &ServeArgs) -> Result<()> {
    crate::engine::set_threads(args.threads);
    let mut engine = Engine::open(&args.model).with_context(|| format!("loading {} to serve", args.model.display()))?;
    engine.sampler.max_batch = args.max_batch;
    let name = args.name.clone().unwrap_or_else(|| default_name(&args.model));
    let (jobs, queue) = mpsc::unbounded_channel();
    std::thread::Builder::new().name("sampler".into()).spawn(move || worker(engine, queue))?;
    let shared = Arc::new(Shared { model: name.clone(), jobs, next_id: AtomicU64::new(1) });
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .with_state(shared);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener =
            tokio::net::TcpListener::bind(&address).await.with_context(|| format!("cannot listen on {address}"))?;
        tracing::info!("serving {name} at http://{}/v1 (Ctrl-C stops)", listener.local_addr()?);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("stopping");
            })
            .await
            .context("serving")
    })
}

/// The model's name when none is given: the file or directory name, without `.gguf`.
fn default_name(path: &std::path::Path) -> String {
    let name = path.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
    name.strip_suffix(".gguf").map(str::to_owned).unwrap_or(name)
}

/// The worker: batches what queued up, by settings, until every handler is gone.
fn worker(engine: Engine, mut queue: mpsc::UnboundedReceiver<Job>) {
    let sampler = match engine.prepare_sampler() {
        Ok(sampler) => sampler,
        Err(e) => {
            tracing::error!("cannot prepare the model for sampling: {e}");
            return;
        }
    };
    let mut fresh_seed = 0x5eed_u64;
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while let Ok(job) = queue.try_recv() {
            jobs.push(job);
        }
        // Groups of equal settings, in the order their first job came.
        let mut groups: Vec<(String, Vec<Job>)> = Vec::new();
        for job in jobs {
            let key = batch_key(&job);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, group)) => group.push(job),
                None => groups.push((key, vec![job])),
            }
        }
        for (_, mut group) in groups {
            for job in group.iter_mut().filter(|j| !j.seeded) {
                fresh_seed = fresh_seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                job.params.seed = fresh_seed >> 1;
            }
            sample_group(&engine, &sampler, group);
        }
    }
}

/// Jobs with equal keys are sampled in one batch: their settings but the seed.
fn batch_key(job: &Job) -> String {
    let p = &job.params;
    format!("{}|{}|{}|{}|{:?}", p.temperature, p.top_p, p.top_k, p.max_new_tokens, p.stop)
}

/// Samples every job of `group` in one call, each prompt under its job's seed, and answers each.
fn sample_group(engine: &Engine, sampler: &PreparedSampler<'_>, group: Vec<Job>) {
    let started = Instant::now();
    let params = group[0].params.clone();
    let mut requests = Vec::new();
    let mut seeds = Vec::new();
    let mut spans = Vec::with_capacity(group.len());
    let mut prompt_tokens: Vec<Result<usize, String>> = Vec::with_capacity(group.len());
    let mut routes = StreamRoutes { routes: Vec::new() };
    for job in &group {
        let prompts = match &job.input {
            Input::Chat(messages) => {
                engine.format().render_prompt(messages).map(|p| vec![p]).map_err(|e| e.to_string())
            }
            Input::Text(texts) => Ok(texts.clone()),
        };
        match prompts {
            Ok(prompts) => {
                let tokens = prompts.iter().map(|p| engine.tokenizer().encode(p).map_or(0, |ids| ids.len())).sum();
                spans.push((requests.len(), prompts.len()));
                for i in 0..prompts.len() {
                    routes.routes.push(job.stream.clone().map(|channel| (channel, i * job.n)));
                }
                seeds.extend((0..prompts.len() as u64).map(|i| job.params.seed.wrapping_add(i)));
                requests.extend(prompts.into_iter().map(|p| GenerationRequest::new(p, job.n)));
                prompt_tokens.push(Ok(tokens));
            }
            Err(e) => {
                spans.push((requests.len(), 0));
                prompt_tokens.push(Err(e));
            }
        }
    }
    let streaming = routes.routes.iter().any(Option::is_some);
    let result = match (requests.is_empty(), streaming) {
        (true, _) => Ok(Vec::new()),
        (false, false) => sampler.sample(&requests, &params, Some(&seeds), &NullReporter),
        (false, true) => sampler.sample_streaming(&requests, &params, Some(&seeds), &routes, &NullReporter),
    }
    .map_err(|e| e.to_string());
    drop(routes);
    let samples: usize = requests.iter().map(|r| r.n).sum();
    tracing::info!("{} request(s), {samples} completion(s) in {:.2}s", group.len(), started.elapsed().as_secs_f64());
    for ((job, (start, count)), tokens) in group.into_iter().zip(spans).zip(prompt_tokens) {
        let answer = tokens.and_then(|prompt_tokens| {
            let all = result.as_ref().map_err(Clone::clone)?;
            Ok(Sampled { completions: all[start..start + count].to_vec(), prompt_tokens })
        });
        let _ = job.reply.send(answer);
    }
}

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The sampling fields both APIs share. Fields the server does not implement are ignored.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    n: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    stop: Option<OneOrMany>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

/// A chat message as clients send it: content as a string or as text parts.
#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Value,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: OneOrMany,
    #[serde(flatten)]
    common: Common,
}

/// An OpenAI-style error response.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let kind = if status.is_client_error() { "invalid_request_error" } else { "server_error" };
    (status, Json(json!({"error": {"message": message.into(), "type": kind}}))).into_response()
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({"object": "list", "data": [{"id": shared.model, "object": "model", "created": 0, "owned_by": "flywheel"}]}))
        .into_response()
}

async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: ChatBody = match parse(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return error(StatusCode::BAD_REQUEST, format!("messages[{i}].role: unsupported role {other:?}")),
        };
        let content = match text_of(&m.content) {
            Some(text) => text,
            None => return error(StatusCode::BAD_REQUEST, format!("messages[{i}].content: expected text")),
        };
        messages.push(Message { role, content });
    }
    if messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "messages: at least one message is needed");
    }
    serve_request(shared, Input::Chat(messages), body.common, true).await
}

async fn completions(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: CompletionBody = match parse(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let prompts = body.prompt.into_vec();
    if prompts.is_empty() {
        return error(StatusCode::BAD_REQUEST, "prompt: at least one prompt is needed");
    }
    serve_request(shared, Input::Text(prompts), body.common, false).await
}

/// A request body as JSON, whatever its `Content-Type` says (`curl -d` sends a form type; llama.cpp's
/// and vLLM's servers read the body as JSON all the same), or a 400 naming where it is wrong.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("the request body: {e}")))
}

/// A message's text: a string, or the text parts of a list of parts.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| p["text"].as_str().filter(|_| p["type"] == "text").map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .map(|v| v.concat()),
        _ => None,
    }
}

/// Checks the shared fields, samples through the worker, and answers in the API's shape.
async fn serve_request(shared: Arc<Shared>, input: Input, common: Common, chat: bool) -> Response {
    if let Some(model) = &common.model {
        if model != &shared.model {
            let message = format!("the model `{model}` does not exist; this server serves `{}`", shared.model);
            return error(StatusCode::NOT_FOUND, message);
        }
    }
    let n = common.n.unwrap_or(1);
    let prompts = match &input {
        Input::Chat(_) => 1,
        Input::Text(t) => t.len(),
    };
    if n == 0 || n * prompts > MAX_COMPLETIONS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("n must be 1 to {} per prompt, got {n}", MAX_COMPLETIONS / prompts),
        );
    }
    let temperature = common.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return error(StatusCode::BAD_REQUEST, format!("temperature must be in [0, 2], got {temperature}"));
    }
    let top_p = common.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return error(StatusCode::BAD_REQUEST, format!("top_p must be in (0, 1], got {top_p}"));
    }
    let max_tokens = common.max_completion_tokens.or(common.max_tokens).unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return error(StatusCode::BAD_REQUEST, "max_tokens must be at least 1");
    }
    let params = SamplingParams {
        temperature,
        top_p,
        top_k: common.top_k.map_or(0, |k| k.max(0) as usize),
        max_new_tokens: max_tokens,
        stop: common.stop.map_or_else(Vec::new, OneOrMany::into_vec),
        seed: common.seed.unwrap_or(0),
        ignore_eos: false,
    };
    let (reply, answer) = oneshot::channel();
    let (stream, events) = match common.stream {
        true => {
            let (sender, receiver) = mpsc::unbounded_channel();
            (Some(sender), Some(receiver))
        }
        false => (None, None),
    };
    let job = Job { input, n, params, seeded: common.seed.is_some(), stream, reply };
    if shared.jobs.send(job).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the sampler stopped");
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (id, object) = match chat {
        true => (format!("chatcmpl-{id}"), "chat.completion"),
        false => (format!("cmpl-{id}"), "text_completion"),
    };
    if let Some(events) = events {
        // The completions API names its chunks as its responses; the chat API has its own name.
        let object = if chat { "chat.completion.chunk" } else { object };
        let chunks = Chunks { id, object, created, model: shared.model.clone(), chat, started: HashSet::new() };
        return stream_response(events, answer, chunks).await;
    }
    let sampled = match answer.await {
        Ok(Ok(sampled)) => sampled,
        Ok(Err(message)) => return error(StatusCode::BAD_REQUEST, message),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the sampler stopped while sampling"),
    };
    // `finish_reason`: `FinishReason` serialises as the API's "stop" and "length".
    let choices: Vec<(usize, &Completion)> = sampled.completions.iter().flatten().enumerate().collect();
    let completion_tokens: usize = choices.iter().map(|(_, c)| c.tokens).sum();
    let choices: Vec<Value> = choices
        .iter()
        .map(|(index, c)| match chat {
            true => {
                json!({"index": index, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish})
            }
            false => json!({"index": index, "text": c.text, "finish_reason": c.finish}),
        })
        .collect();
    Json(json!({
        "id": id,
        "object": object,
        "created": created,
        "model": shared.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": sampled.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": sampled.prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}

/// The server-sent events of a streaming request: a chunk per piece of text and per finished
/// choice as the worker sends them, then `[DONE]`. A request that fails before its first chunk
/// gets an ordinary error response; one that fails later, an `error` chunk in place of `[DONE]`.
async fn stream_response(
    mut events: mpsc::UnboundedReceiver<Streamed>,
    answer: oneshot::Receiver<Result<Sampled, String>>,
    mut chunks: Chunks,
) -> Response {
    let Some(first) = events.recv().await else {
        return match answer.await {
            Ok(Err(message)) => error(StatusCode::BAD_REQUEST, message),
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the sampler stopped while sampling"),
            Ok(Ok(_)) => Sse::new(futures_util::stream::iter([Ok::<_, Infallible>(Event::default().data("[DONE]"))]))
                .into_response(),
        };
    };
    let first = chunks.event(first);
    let rest = futures_util::stream::unfold((events, Some(answer), chunks), |(mut events, answer, mut chunks)| async {
        if let Some(streamed) = events.recv().await {
            let event = chunks.event(streamed);
            return Some((event, (events, answer, chunks)));
        }
        let last = match answer?.await {
            Ok(Ok(_)) => Event::default().data("[DONE]"),
            Ok(Err(message)) => Chunks::error(&message),
            Err(_) => Chunks::error("the sampler stopped while sampling"),
        };
        Some((last, (events, None, chunks)))
    });
    let stream = futures_util::stream::once(async { first }).chain(rest).map(Ok::<_, Infallible>);
    Sse::new(stream).into_response()
}

/// Writes the chunks of one streaming response.
struct Chunks {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    chat: bool,
    /// Chat choices whose first chunk (with the assistant role) went out.
    started: HashSet<usize>,
}

impl Chunks {
    fn event(&mut self, streamed: Streamed) -> Event {
        let choice = match (self.chat, streamed) {
            (true, Streamed::Text { choice, text }) => {
                let mut delta = json!({"content": text});
                if self.started.insert(choice) {
                    delta["role"] = json!("assistant");
                }
                json!({"index": choice, "delta": delta, "finish_reason": null})
            }
            (true, Streamed::Done { choice, finish }) => {
                let delta = match self.started.insert(choice) {
                    true => json!({"role": "assistant", "content": ""}),
                    false => json!({}),
                };
                json!({"index": choice, "delta": delta, "finish_reason": finish})
            }
            (false, Streamed::Text { choice, text }) => json!({"index": choice, "text": text, "finish_reason": null}),
            (false, Streamed::Done { choice, finish }) => json!({"index": choice, "text": "", "finish_reason": finish}),
        };
        let chunk = json!({"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": [choice]});
        Event::default().data(chunk.to_string())
    }

    fn error(message: &str) -> Event {
        Event::default().data(json!({"error": {"message": message, "type": "server_error"}}).to_string())
    }
}
