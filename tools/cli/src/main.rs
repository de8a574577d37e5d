//! `choreo`: the command line. Thin: parses arguments and hands off to a command's module.
//!
//! Exit codes: 0 success; 1 the command ran but what it waited for did not happen; 64 bad
//! arguments; 69 something it needs (nats-server, the agents' binaries, a free port) is missing.

mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Every choreo binary uses mimalloc: the event path allocates per message (docs/architecture.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event-driven choreography of AI agents over NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "choreo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start everything locally: nats-server, the streams, and every agent as its own process.
    Up(up::UpArgs),
}

/// A failure with the exit code that describes it.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Failure {
            code: 69,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            let _ = err.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(64);
        }
    };
    let result = match cli.command {
        Command::Up(args) => up::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("choreo: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
