//! `[generator] type = "openai"`: samples from OpenAI-compatible servers, which the config's
//! `on-checkpoint` command points at each checkpoint the run writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flywheel_core::{CoreError, Generator};
use flywheel_loop::config::{OpenAiApi, OpenAiGeneratorConfig};
use flywheel_loop::GeneratorBackend;
use flywheel_remote::{Api, ApiKey, RemoteConfig, RemoteGenerator};

use crate::command::{fill, run_logged};

/// Opens remote generators on checkpoints: runs the hook for a checkpoint not served yet, then
/// samples through the servers, with a journal beside the checkpoint.
#[derive(Debug)]
pub struct RemoteBackend {
    config: RemoteConfig,
    on_checkpoint: Vec<String>,
    run_dir: PathBuf,
    /// The checkpoint the servers were last pointed at by this process.
    served: Option<PathBuf>,
}

impl RemoteBackend {
    /// The backend of `config` for the run in `run_dir`. Reads the API key now, so that a missing
    /// one fails before any work.
    pub fn new(config: &OpenAiGeneratorConfig, run_dir: &Path) -> anyhow::Result<Self> {
        let api_key = config.api_key_env.as_deref().map(ApiKey::from_env).transpose()?;
        let remote = RemoteConfig {
            base_urls: config.base_urls.clone(),
            model: config.model.clone(),
            api: match config.api {
                OpenAiApi::Chat => Api::Chat,
                OpenAiApi::Completions => Api::Completions,
            },
            api_key,
            max_concurrency: config.max_concurrency,
            max_n: config.max_n,
            timeout: Duration::from_secs_f64(config.timeout_seconds),
            max_retries: config.max_retries,
            ..RemoteConfig::new("", "")
        };
        remote.validate()?;
        Ok(Self {
            config: remote,
            on_checkpoint: config.on_checkpoint.clone(),
            run_dir: std::path::absolute(run_dir)?,
            served: None,
        })
    }

    /// Runs `on-checkpoint` for `checkpoint`, its output appended to `on-checkpoint.log` beside it.
    fn serve(&self, checkpoint: &Path) -> Result<(), CoreError> {
        let values =
            [("{checkpoint}", checkpoint.display().to_string()), ("{run-dir}", self.run_dir.display().to_string())];
        let argv = fill(&self.on_checkpoint, &values);
        let log = checkpoint.parent().unwrap_or(checkpoint).join("on-checkpoint.log");
        tracing::info!("serving {}: {}", checkpoint.display(), argv.join(" "));
        run_logged(&argv, &log, "generator.on-checkpoint", CoreError::Load)
    }
}

impl GeneratorBackend for RemoteBackend {
    fn open(&mut self, checkpoint: &Path) -> flywheel_loop::Result<Box<dyn Generator>> {
        let checkpoint = std::path::absolute(checkpoint)
            .map_err(|source| flywheel_loop::LoopError::Io { path: checkpoint.to_owned(), source })?;
        if self.served.as_ref() != Some(&checkpoint) {
            self.serve(&checkpoint)?;
            self.served = Some(checkpoint.clone());
        }
        let journal = checkpoint.parent().unwrap_or(&checkpoint).join("remote-samples.jsonl");
        let generator = RemoteGenerator::new(self.config.clone())
            .and_then(|g| g.with_journal(&journal))
            .map_err(CoreError::from)?;
        Ok(Box::new(generator))
    }
}
