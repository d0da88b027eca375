//! The `flywheel` command line.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// Training allocates and frees many large tensors; glibc's malloc returns each to the kernel
/// (mmap/munmap and page faults: about 60% of a training step's time on the tiny model), mimalloc
/// keeps them (see [`keep_freed_memory`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod cli;
mod engine;
mod judge;
mod progress;
mod run;

/// mimalloc hands freed memory back to the kernel 10 ms after it is freed; a LoRA step on SmolLM2
/// then re-faults and zeroes its large tensors' pages every time (470,000 page faults and a third
/// of the step's time, measured with `perf stat` on `flywheel bench train`). With
/// `MIMALLOC_PURGE_DELAY=-1` it keeps them (4,800 faults): the process stays at its peak size.
/// mimalloc reads its options before `main`, and setting them from Rust needs `unsafe`, so the
/// program runs itself again once with the variable set (unless the user set it).
fn keep_freed_memory() -> Option<ExitCode> {
    const VAR: &str = "MIMALLOC_PURGE_DELAY";
    if let Some(parent) = std::env::var_os(PARENT_VAR) {
        // The re-run child: leave with the parent (a SIGKILLed parent must not leave a run going).
        let parent: u32 = parent.to_str()?.parse().ok()?;
        std::thread::spawn(move || loop {
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(137);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        });
        return None;
    }
    if std::env::var_os(VAR).is_some() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "-1")
        .env(PARENT_VAR, std::process::id().to_string())
        .status()
        .ok()?;
    Some(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Whether `command` fine-tunes a model, the only work that needs [`keep_freed_memory`]; the other
/// commands (a `judge` in a pipeline, say) start without running themselves again.
fn trains(command: &cli::Command) -> bool {
    matches!(
        command,
        cli::Command::Run(_)
            | cli::Command::Resume(_)
            | cli::Command::Bench(cli::BenchArgs { what: cli::BenchTarget::Train { .. } })
    )
}

/// Set in the re-run child to the parent's process id.
const PARENT_VAR: &str = "FLYWHEEL_REEXEC_PARENT";

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if trains(&cli.command) {
        if let Some(code) = keep_freed_memory() {
            return code;
        }
    }
    init_tracing(cli.verbose);
    let result = match cli.command {
        cli::Command::Run(args) => run::run(&args),
        cli::Command::Resume(args) => run::resume(&args),
        cli::Command::Eval(args) => run::eval(&args),
        cli::Command::Report(args) => run::report(&args),
        cli::Command::Judge(args) => judge::run(&args),
        cli::Command::Bench(args) => bench::run(&args),
        cli::Command::Export(args) => run::export(&args),
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
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
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
