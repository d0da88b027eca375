//! The `flywheel` command line.

use std::io::IsTerminal;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc, with its default options: the training and sampling passes write into buffers they
/// reuse across steps and layers, so that no allocator setting is needed to keep a step from
/// re-faulting its pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod cli;
mod command;
mod command_trainer;
mod engine;
mod judge;
mod progress;
mod remote;
mod run;
mod serve;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        cli::Command::Run(args) => run::run(&args),
        cli::Command::Resume(args) => run::resume(&args),
        cli::Command::Eval(args) => run::eval(&args),
        cli::Command::Report(args) => run::report(&args),
        cli::Command::Judge(args) => judge::run(&args),
        cli::Command::Bench(args) => bench::run(&args),
        cli::Command::Export(args) => run::export(&args),
        cli::Command::Train(args) => run::train(&args),
        cli::Command::Serve(args) => serve::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Each cause once, and never a backtrace, whatever `RUST_BACKTRACE` says: an
            // ordinary error is not a crash.
            let _ = writeln!(std::io::stderr(), "error: {}", flywheel_core::render_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level chosen with `-v`.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log redirected to a file (a trainer's or hook's log in
        // the run directory) stays plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .init();
}

/// A closed pipe downstream (`flywheel judge ... | head`) is a normal way for output to end.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let broken = Some(std::io::ErrorKind::BrokenPipe);
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == broken
            || cause.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind) == broken
    })
}
