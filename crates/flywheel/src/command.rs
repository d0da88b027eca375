//! The user commands a config names (`generator.on-checkpoint`, `trainer.command`): argument
//! vectors with placeholders, run without a shell, their output kept in a log of the run.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use flywheel_core::CoreError;

/// `template` with every placeholder of `values` (`("{data}", "/runs/x/set-1.jsonl")`) replaced.
pub fn fill(template: &[String], values: &[(&str, String)]) -> Vec<String> {
    template.iter().map(|arg| values.iter().fold(arg.clone(), |a, (name, value)| a.replace(name, value))).collect()
}

/// Runs `argv` without a shell, stdin closed, appending to `log` a `$ COMMAND` line, the command's
/// stdout and stderr, and a `# STATUS` line. Fails, naming the config `key`, the command and the
/// log, when it cannot start or exits non-zero; `error` makes the failure's kind.
pub fn run_logged(argv: &[String], log: &Path, key: &str, error: fn(String) -> CoreError) -> Result<(), CoreError> {
    let io = |source| CoreError::Io { path: log.to_owned(), source };
    let mut file = OpenOptions::new().create(true).append(true).open(log).map_err(io)?;
    writeln!(file, "$ {}", argv.join(" ")).map_err(io)?;
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(io)?)
        .stderr(file.try_clone().map_err(io)?)
        .status()
        .map_err(|e| error(format!("{key}: cannot run {:?}: {e}", argv[0])))?;
    writeln!(file, "# {status}").map_err(io)?;
    if !status.success() {
        return Err(error(format!("{key} `{}` failed ({status}); its output is in {}", argv.join(" "), log.display())));
    }
    Ok(())
}
