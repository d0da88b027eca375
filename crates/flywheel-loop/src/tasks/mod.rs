//! Built-in tasks.

pub mod addition;

use crate::config::TaskConfig;
use crate::Task;

/// The task a config asks for, its problems drawn with `seed`.
pub fn build(config: &TaskConfig, seed: u64) -> Box<dyn Task> {
    match config {
        TaskConfig::Addition(c) => Box::new(addition::Addition::new(c, seed)),
    }
}
