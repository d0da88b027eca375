//! The `[generator]` and `[trainer]` tables: where samples come from and what trains, when not
//! the embedded engine.

use serde::{Deserialize, Serialize};

/// A generator other than the embedded engine. Absent: the embedded engine samples from the
/// checkpoints it trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GeneratorConfig {
    /// OpenAI-compatible servers (vLLM, SGLang, llama.cpp's server, `flywheel serve`).
    Openai(OpenAiGeneratorConfig),
}

/// Which OpenAI API to call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpenAiApi {
    /// `/chat/completions`: the server applies the model's chat template.
    #[default]
    Chat,
    /// `/completions`: the text as it is.
    Completions,
}

/// Settings of `[generator] type = "openai"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OpenAiGeneratorConfig {
    /// Base URLs, each up to and including `/v1`; requests are spread over them.
    pub base_urls: Vec<String>,
    /// The `model` field of each request (the served model's or LoRA adapter's name).
    pub model: String,
    /// `"chat"` (default) or `"completions"`.
    #[serde(default)]
    pub api: OpenAiApi,
    /// The environment variable that holds the API key (the key itself never goes in a config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// The command that makes the servers serve a checkpoint the run wrote, as an argument vector
    /// (run without a shell, from the working directory); `{checkpoint}` becomes the checkpoint directory's absolute path and
    /// `{run-dir}` the run directory's. It runs before the first request to each new checkpoint;
    /// its output goes to `on-checkpoint.log` beside the checkpoint, and a non-zero exit stops
    /// the run. Required: without it the servers would go on serving the model they started with.
    pub on_checkpoint: Vec<String>,
    /// Most requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Most samples per request (`n`); 1 for a server without `n`.
    #[serde(default = "default_max_n")]
    pub max_n: usize,
    /// Limit of one request, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// Retries of a request (429, 5xx, timeouts, dropped connections) before the run stops.
    #[serde(default = "default_retries")]
    pub max_retries: usize,
}

fn default_concurrency() -> usize {
    16
}
fn default_max_n() -> usize {
    16
}
fn default_timeout() -> f64 {
    300.0
}
fn default_retries() -> usize {
    8
}

impl GeneratorConfig {
    /// Checks every setting; the message names the key.
    pub(super) fn validate(&self) -> Result<(), String> {
        let GeneratorConfig::Openai(c) = self;
        if c.base_urls.is_empty() {
            return Err("generator.base-urls must name at least one server (http://HOST:PORT/v1)".into());
        }
        if let Some(bad) = c.base_urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
            return Err(format!("generator.base-urls: {bad:?} is not an http:// or https:// URL"));
        }
        if c.model.trim().is_empty() {
            return Err("generator.model must name the served model".into());
        }
        if c.on_checkpoint.is_empty() || c.on_checkpoint[0].trim().is_empty() {
            return Err("generator.on-checkpoint must give the command (an argument vector) that makes the servers \
                 serve each new checkpoint, with {checkpoint} where its path goes"
                .into());
        }
        if c.max_concurrency == 0 || c.max_n == 0 {
            return Err("generator.max-concurrency and generator.max-n must be at least 1".into());
        }
        if !(c.timeout_seconds.is_finite() && c.timeout_seconds > 0.0) {
            return Err(format!("generator.timeout-seconds must be positive, got {}", c.timeout_seconds));
        }
        if let Some(var) = &c.api_key_env {
            if var.is_empty() || var.contains(['=', '\0']) {
                return Err(format!("generator.api-key-env must be an environment variable's name, got {var:?}"));
            }
        }
        Ok(())
    }
}

/// A trainer other than the embedded engine. Absent: the embedded engine trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TrainerConfig {
    /// A command run once per training set (`flywheel train`, or TRL under accelerate).
    Command(CommandTrainerConfig),
}

/// The placeholders a trainer command may use.
pub const TRAINER_PLACEHOLDERS: [&str; 9] =
    ["{data}", "{start}", "{out}", "{iteration}", "{steps}", "{batch-size}", "{learning-rate}", "{seed}", "{run-dir}"];

/// Settings of `[trainer] type = "command"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CommandTrainerConfig {
    /// The command as an argument vector, run without a shell from the working directory (as
    /// the config's other paths are read). Its placeholders: `{data}` (the training set, chat
    /// JSONL), `{start}` (the checkpoint to start from), `{out}` (the directory to write the new
    /// checkpoint or PEFT adapter to), `{iteration}`, `{run-dir}`, and `[training]`'s `{steps}`,
    /// `{batch-size}`, `{learning-rate}`, `{seed}`.
    pub command: Vec<String>,
}

impl TrainerConfig {
    /// Checks every setting; the message names the key.
    pub(super) fn validate(&self) -> Result<(), String> {
        let TrainerConfig::Command(c) = self;
        if c.command.is_empty() || c.command[0].trim().is_empty() {
            return Err("trainer.command must give the program and its arguments, such as \
                 [\"flywheel\", \"train\", \"config.toml\", \"--data\", \"{data}\", \"--start\", \"{start}\", \"--out\", \"{out}\"]"
                .into());
        }
        let all = c.command.join(" ");
        for needed in ["{data}", "{out}"] {
            if !all.contains(needed) {
                return Err(format!("trainer.command must pass {needed} to the trainer"));
            }
        }
        let mut rest = all.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else { break };
            let name = &rest[open..open + close + 1];
            if !TRAINER_PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "trainer.command: unknown placeholder {name}; the placeholders are {}",
                    TRAINER_PLACEHOLDERS.join(", ")
                ));
            }
            rest = &rest[open + close + 1..];
        }
        Ok(())
    }
}
