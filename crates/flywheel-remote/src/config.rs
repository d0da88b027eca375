//! What a remote generator talks to and how patiently.

use std::fmt;
use std::time::Duration;

use crate::RemoteError;

/// Which OpenAI API a generator calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST {base}/chat/completions`: the server applies its model's chat template to the
    /// request's context turns and prompt (a user turn).
    Chat,
    /// `POST {base}/completions`: the text is sent as it is: the context turns' contents, each
    /// followed by a blank line, then the prompt (for base models and raw formats).
    Completions,
}

/// An API key: sent only as `Authorization: Bearer ...`, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key held by the environment variable `var`. Fails, naming the variable (never a
    /// value), when it is unset, empty or not Unicode.
    pub fn from_env(var: &str) -> Result<Self, RemoteError> {
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Ok(Self(key.trim().to_owned())),
            _ => Err(RemoteError::MissingKey { var: var.to_owned() }),
        }
    }

    /// A key from its value (tests, callers that read it elsewhere).
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The secret itself, for the header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.0, "***")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Settings of a [`crate::RemoteGenerator`].
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URLs of the servers, each up to and including `/v1` (`http://10.0.0.5:8000/v1`).
    /// Requests are spread over them in turn.
    pub base_urls: Vec<String>,
    /// The `model` field of every request (vLLM's served model name, or a LoRA adapter's name).
    pub model: String,
    /// Which API to call.
    pub api: Api,
    /// The key, when the servers want one.
    pub api_key: Option<ApiKey>,
    /// Most HTTP requests in flight at once, over all servers.
    pub max_concurrency: usize,
    /// Most samples asked of one HTTP request (`n`); 1 for a server without `n`. A server that
    /// returns fewer than asked is asked again for the rest.
    pub max_n: usize,
    /// Limit of one HTTP request, from connecting to the last byte of the body.
    pub timeout: Duration,
    /// Retries of one HTTP request after the first attempt, before the phase fails.
    pub max_retries: usize,
    /// Wait before the first retry; doubled after each (with jitter), up to `max_backoff`.
    pub backoff: Duration,
    /// Longest wait between retries (a `Retry-After` header is honoured up to this).
    pub max_backoff: Duration,
    /// How long a server that refused a connection, timed out or answered 5xx is skipped.
    pub cooldown: Duration,
}

impl RemoteConfig {
    /// Defaults for `base_url` and `model`: chat API, no key, 16 requests in flight, up to 16
    /// samples each, 300 s timeout, 8 retries from 0.5 s to 30 s, 10 s cooldown.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_urls: vec![base_url.into()],
            model: model.into(),
            api: Api::Chat,
            api_key: None,
            max_concurrency: 16,
            max_n: 16,
            timeout: Duration::from_secs(300),
            max_retries: 8,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            cooldown: Duration::from_secs(10),
        }
    }

    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<(), RemoteError> {
        let bad = |message: String| Err(RemoteError::Config(message));
        if self.base_urls.is_empty() {
            return bad("no base URL".into());
        }
        for url in &self.base_urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(format!("base URL {url:?} is not http:// or https://"));
            }
        }
        if self.model.trim().is_empty() {
            return bad("the model name is empty".into());
        }
        if self.max_concurrency == 0 || self.max_n == 0 {
            return bad("max-concurrency and max-n must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return bad("the timeout must be positive".into());
        }
        Ok(())
    }
}
