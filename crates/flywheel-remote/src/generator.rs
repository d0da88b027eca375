//! [`RemoteGenerator`]: a phase's requests as concurrent HTTP requests, each retried until its
//! samples arrive.

use std::path::Path;
use std::time::Duration;

use flywheel_core::{Completion, GenerationRequest, Generator, Message, Reporter, Role, SamplingParams};
use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;

use crate::endpoints::Endpoints;
use crate::journal::{self, Journal};
use crate::wire::{Body, ErrorBody, Response};
use crate::{Api, RemoteConfig, RemoteError};

/// Samples completions from OpenAI-compatible servers (see the crate's documentation).
#[derive(Debug)]
pub struct RemoteGenerator {
    config: RemoteConfig,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    endpoints: Endpoints,
    journal: Option<Journal>,
}

/// One HTTP request's share of a phase: `n` samples of request `request`, slots `first..first + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    request: usize,
    first: usize,
    n: usize,
}

/// Why one attempt failed.
#[derive(Debug)]
enum Attempt {
    /// Retrying cannot help.
    Fatal(RemoteError),
    /// Retrying may help; `server_fault` skips the server for its cooldown.
    Retry { message: String, server_fault: bool, retry_after: Option<Duration> },
}

impl Attempt {
    fn retry(message: String, server_fault: bool) -> Self {
        Self::Retry { message, server_fault, retry_after: None }
    }
}

impl RemoteGenerator {
    /// A generator for `config`'s servers. Fails on an invalid config or when the HTTP client
    /// cannot start; nothing is sent before the first phase.
    pub fn new(config: RemoteConfig) -> Result<Self, RemoteError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Client(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| RemoteError::Client(e.to_string()))?;
        let endpoints = Endpoints::new(&config.base_urls, config.cooldown);
        Ok(Self { config, client, runtime, endpoints, journal: None })
    }

    /// The generator with a journal at `path` (created when missing): requests it holds are
    /// answered from it, and every finished request is added to it.
    pub fn with_journal(mut self, path: &Path) -> Result<Self, RemoteError> {
        self.journal = Some(Journal::open(path)?);
        Ok(self)
    }

    /// The settings.
    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// [`Generator::generate`] with this crate's error.
    pub fn sample(
        &self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Vec<Completion>>, RemoteError> {
        let jobs = plan(requests, self.config.max_n);
        let total: usize = requests.iter().map(|r| r.n).sum();
        reporter.start("sampling", total as u64);
        let mut out: Vec<Vec<Option<Completion>>> = requests.iter().map(|r| vec![None; r.n]).collect();
        let (jobs_total, mut reused) = (jobs.len(), 0);
        self.runtime.block_on(async {
            let mut done = stream::iter(jobs)
                .map(|job| async move { (job, self.run_job(&requests[job.request], job, params).await) })
                .buffer_unordered(self.config.max_concurrency);
            while let Some((job, result)) = done.next().await {
                let (samples, from_journal) = result?;
                reused += usize::from(from_journal);
                for (slot, completion) in out[job.request][job.first..job.first + job.n].iter_mut().zip(samples) {
                    *slot = Some(completion);
                }
                reporter.advance(job.n as u64);
            }
            Ok::<(), RemoteError>(())
        })?;
        reporter.finish();
        if reused > 0 {
            tracing::info!("{reused} of {jobs_total} requests answered from the journal, not sent again");
        }
        Ok(out.into_iter().map(|slots| slots.into_iter().map(|c| c.expect("every slot is filled")).collect()).collect())
    }

    /// The `job.n` samples of one job: the request is sent, and sent again after a retryable
    /// failure (to the next server in turn) or for the samples a server left out, until all have
    /// come or the retries are spent. The flag is true when the journal already held them.
    async fn run_job(
        &self,
        request: &GenerationRequest,
        job: Job,
        params: &SamplingParams,
    ) -> Result<(Vec<Completion>, bool), RemoteError> {
        let user = Message { role: Role::User, content: request.prompt.clone() };
        let (path, body) = self.body(request, &user, params, job.n, slot_seed(params.seed, job.request, job.first));
        let key = journal::key(path, &body, job.first);
        if let Some(samples) = self.journal.as_ref().and_then(|j| j.get(&key)) {
            return Ok((samples, true));
        }
        let mut got: Vec<Completion> = Vec::with_capacity(job.n);
        let (mut attempts, mut failures) = (0, 0);
        while got.len() < job.n {
            let first = job.first + got.len();
            let seed = slot_seed(params.seed, job.request, first);
            let (server, base, wait) = self.endpoints.pick();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            attempts += 1;
            let (path, body) = self.body(request, &user, params, job.n - got.len(), seed);
            let (message, retry_after) = match self.send(&format!("{base}{path}"), &body).await {
                Ok(completions) if !completions.is_empty() => {
                    self.endpoints.mark_up(server);
                    got.extend(completions.into_iter().take(job.n - got.len()));
                    continue;
                }
                Ok(_) => (format!("{base}: the response holds no sample"), None),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry { message, server_fault, retry_after }) => {
                    if server_fault {
                        self.endpoints.mark_down(server);
                    }
                    (message, retry_after)
                }
            };
            if failures == self.config.max_retries {
                return Err(RemoteError::GaveUp { attempts, last: message });
            }
            failures += 1;
            let delay = self.backoff(failures, seed, retry_after);
            tracing::debug!("retrying in {delay:.1?} (failure {failures}): {message}");
            tokio::time::sleep(delay).await;
        }
        if let Some(journal) = &self.journal {
            journal.record(key, &got)?;
        }
        Ok((got, false))
    }

    /// The API path and body that ask `n` samples of `request` (its prompt as the message `user`)
    /// with `seed`.
    fn body<'a>(
        &'a self,
        request: &'a GenerationRequest,
        user: &'a Message,
        params: &'a SamplingParams,
        n: usize,
        seed: u64,
    ) -> (&'static str, Body<'a>) {
        let mut body = Body::new(&self.config.model, params, n, seed);
        match self.config.api {
            Api::Chat => {
                body.messages = Some(request.context.iter().chain(std::iter::once(user)).collect());
                ("/chat/completions", body)
            }
            Api::Completions => {
                let mut text: String = request.context.iter().map(|m| format!("{}\n\n", m.content)).collect();
                text.push_str(&request.prompt);
                body.prompt = Some(text);
                ("/completions", body)
            }
        }
    }

    /// The wait before retry number `failures` (from 1): exponential from `backoff`, with
    /// jitter between half and all of it, at least the server's `Retry-After`, at most `max_backoff`.
    fn backoff(&self, failures: usize, seed: u64, retry_after: Option<Duration>) -> Duration {
        let exponential = self.config.backoff.saturating_mul(1 << (failures - 1).min(16));
        let jitter = 0.5 + 0.5 * (mix(seed ^ failures as u64) >> 11) as f64 / (1u64 << 53) as f64;
        let wait = exponential.mul_f64(jitter).max(retry_after.unwrap_or_default());
        wait.min(self.config.max_backoff)
    }

    /// One attempt: `body` posted to `url`.
    async fn send(&self, url: &str, body: &Body<'_>) -> Result<Vec<Completion>, Attempt> {
        let url = url.to_owned();
        let mut http = self.client.post(&url).json(body);
        if let Some(key) = &self.config.api_key {
            http = http.bearer_auth(key.expose());
        }
        let scrub = |text: String| self.config.api_key.as_ref().map_or(text.clone(), |k| k.scrub(&text));
        let response = http.send().await.map_err(|e| Attempt::retry(scrub(describe(&url, &e)), true))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(|e| Attempt::retry(scrub(describe(&url, &e)), true))?;
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT {
            let message = scrub(format!("{url} answered {status}"));
            return Err(Attempt::Retry { message, server_fault: false, retry_after });
        }
        if status.is_server_error() {
            return Err(Attempt::retry(scrub(format!("{url} answered {status}: {}", excerpt(&bytes))), true));
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(RemoteError::Rejected {
                url: url.clone(),
                status: status.as_u16(),
                message: scrub(excerpt(&bytes)),
            }));
        }
        let parsed: Response = serde_json::from_slice(&bytes)
            .map_err(|e| Attempt::retry(format!("{url}: unreadable response ({e})"), false))?;
        completions(parsed).map_err(|m| Attempt::retry(format!("{url}: {m}"), false))
    }
}

impl Generator for RemoteGenerator {
    fn generate(
        &mut self,
        requests: &[GenerationRequest],
        params: &SamplingParams,
        reporter: &dyn Reporter,
    ) -> flywheel_core::Result<Vec<Vec<Completion>>> {
        Ok(self.sample(requests, params, reporter)?)
    }
}

/// The HTTP requests of a phase: each request's samples in runs of at most `max_n`.
fn plan(requests: &[GenerationRequest], max_n: usize) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (request, r) in requests.iter().enumerate() {
        let mut first = 0;
        while first < r.n {
            let n = max_n.min(r.n - first);
            jobs.push(Job { request, first, n });
            first += n;
        }
    }
    jobs
}

/// The seed asked for the samples from slot `first` of request `request`: the same on every
/// retry, different for every slot of a phase (a server that honours seeds then returns the same
/// samples to a retry; one that does not returns others, each still recorded once).
fn slot_seed(seed: u64, request: usize, first: usize) -> u64 {
    mix(mix(seed ^ 0x5eed) ^ ((request as u64) << 20) ^ first as u64) >> 1
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The response's samples in index order, each with its share of the completion tokens
/// (servers report one total per response; it is split by text length).
fn completions(response: Response) -> Result<Vec<Completion>, String> {
    let mut choices = response.choices;
    choices.sort_by_key(|c| c.index.unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(choices.len());
    for (i, choice) in choices.iter().enumerate() {
        let text = choice.content().ok_or_else(|| format!("choice {i} has no text"))?;
        out.push(Completion { text: text.to_owned(), tokens: 0, finish: choice.finish() });
    }
    let total = response.usage.and_then(|u| u.completion_tokens).unwrap_or(0) as usize;
    let chars: usize = out.iter().map(|c| c.text.len()).sum::<usize>().max(1);
    for c in &mut out {
        c.tokens = total * c.text.len() / chars;
    }
    Ok(out)
}

/// What a transport error was, with its causes.
fn describe(url: &str, e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the response was cut off"
    } else {
        "the request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    format!("{url}: {kind} ({})", causes.join(": "))
}

/// A refusal's message: its `error.message`, or the start of its body.
fn excerpt(bytes: &[u8]) -> String {
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(bytes) {
        return body.error.message;
    }
    let text = String::from_utf8_lossy(bytes);
    let mut cut: String = text.chars().take(300).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_cut_into_requests_of_at_most_max_n_samples() {
        let requests = [GenerationRequest::new("a", 5), GenerationRequest::new("b", 1), GenerationRequest::new("c", 2)];
        let jobs = plan(&requests, 2);
        let cut: Vec<(usize, usize, usize)> = jobs.iter().map(|j| (j.request, j.first, j.n)).collect();
        assert_eq!(cut, [(0, 0, 2), (0, 2, 2), (0, 4, 1), (1, 0, 1), (2, 0, 2)]);
    }

    #[test]
    fn slot_seeds_differ_across_slots_and_repeat_for_a_slot() {
        let mut seen = std::collections::HashSet::new();
        for request in 0..50 {
            for first in 0..50 {
                assert!(seen.insert(slot_seed(7, request, first)), "slot ({request}, {first}) repeats a seed");
            }
        }
        assert_eq!(slot_seed(7, 3, 4), slot_seed(7, 3, 4));
        assert_ne!(slot_seed(7, 3, 4), slot_seed(8, 3, 4));
        assert!(slot_seed(7, 3, 4) < 1 << 63, "fits the signed 64-bit seed some servers parse");
    }

    #[test]
    fn choices_come_in_index_order_with_tokens_split_by_length() {
        let body = r#"{"choices":[{"index":1,"text":"bbbb","finish_reason":"length"},
            {"index":0,"message":{"content":"aa"},"finish_reason":"stop"}],"usage":{"completion_tokens":12}}"#;
        let out = completions(serde_json::from_str(body).unwrap()).unwrap();
        assert_eq!(out[0].text, "aa");
        assert_eq!((out[0].tokens, out[0].finish), (4, flywheel_core::FinishReason::Stop));
        assert_eq!((out[1].tokens, out[1].finish), (8, flywheel_core::FinishReason::Length));
        let bad = r#"{"choices":[{"index":0,"message":{}}]}"#;
        assert!(completions(serde_json::from_str(bad).unwrap()).is_err());
    }

    #[test]
    fn the_key_is_redacted_and_scrubbed() {
        let key = crate::ApiKey::new("sk-secret-123");
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        assert_eq!(key.scrub("Incorrect API key provided: sk-secret-123."), "Incorrect API key provided: ***.");
        let missing = crate::ApiKey::from_env("FLYWHEEL_TEST_SURELY_UNSET_VAR").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "the API key variable FLYWHEEL_TEST_SURELY_UNSET_VAR is not set (or empty); export it before the run"
        );
    }
}
