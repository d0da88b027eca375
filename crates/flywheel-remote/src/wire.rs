//! The JSON of the two OpenAI APIs, as far as a sampler needs it.

use flywheel_core::{FinishReason, Message, SamplingParams};
use serde::{Deserialize, Serialize};

/// One request body, chat or completions.
#[derive(Debug, Serialize)]
pub(crate) struct Body<'a> {
    pub model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<&'a Message>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Not in OpenAI's API, accepted by vLLM, SGLang and llama.cpp's server; sent only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    pub max_tokens: usize,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    pub seed: u64,
}

impl<'a> Body<'a> {
    /// The body asking `n` samples with `seed`, under `params`.
    pub fn new(model: &'a str, params: &'a SamplingParams, n: usize, seed: u64) -> Self {
        Self {
            model,
            messages: None,
            prompt: None,
            n,
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: (params.top_k > 0).then_some(params.top_k),
            max_tokens: params.max_new_tokens,
            stop: &params.stop,
            seed,
        }
    }
}

/// A response body of either API.
#[derive(Debug, Deserialize)]
pub(crate) struct Response {
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One returned sample.
#[derive(Debug, Deserialize)]
pub(crate) struct Choice {
    #[serde(default)]
    pub index: Option<usize>,
    /// Chat API.
    #[serde(default)]
    pub message: Option<ChatMessage>,
    /// Completions API.
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

impl Choice {
    /// The sample's text, from whichever API answered.
    pub fn content(&self) -> Option<&str> {
        self.message.as_ref().and_then(|m| m.content.as_deref()).or(self.text.as_deref())
    }

    /// `length` when the token limit cut it, else a stop.
    pub fn finish(&self) -> FinishReason {
        match self.finish_reason.as_deref() {
            Some("length") => FinishReason::Length,
            _ => FinishReason::Stop,
        }
    }
}

/// The assistant message of a chat choice.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    #[serde(default)]
    pub content: Option<String>,
}

/// Token counts of a response.
#[derive(Debug, Deserialize)]
pub(crate) struct Usage {
    #[serde(default)]
    pub completion_tokens: Option<u64>,
}

/// The `error` object of a refusal.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

/// Its message.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorDetail {
    pub message: String,
}
