//! `choreo`: the command line. Thin: parses arguments and hands off to a command's module.
//!
//! Exit codes (sysexits): 0 success; 1 the command ran but the answer is "no" (runs differ, a
//! demo run did not finish, a stream conflicts); 64 bad arguments; 65 bad input data (a payload
//! that is not JSON, an invalid event); 66 what was asked for does not exist (an unknown run or
//! dead letter, a missing file); 69 something needed is unavailable (the NATS server, JetStream
//! while a stream elects a leader: retry; the agents' binaries, a free port); 74 cannot write
//! the output.

mod agents;
mod auth;
mod connection;
mod console;
mod diff;
mod dlq;
mod graph;
mod ping;
mod publish;
mod render;
mod replay;
mod review;
mod state;
mod streams;
mod tail;
mod time_arg;
mod trace;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Every choreo binary uses mimalloc: the event path allocates per message (docs/architecture.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event-driven choreography of AI agents over NATS JetStream.
#[derive(Debug, Parser)]
#[command(
    name = "choreo",
    version,
    about,
    after_help = choreo_bus::connect::env_help()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start everything locally: nats-server, the streams, and every agent as its own process.
    Up(up::UpArgs),
    /// Submit a change (a unified diff) to the review team.
    Review(review::ReviewArgs),
    /// Publish events: TYPE with --data, a CloudEvent, or many from a JSON-lines file.
    Publish(publish::PublishArgs),
    /// Print events as they are stored, one line each.
    Tail(tail::TailArgs),
    /// One run as a causation tree, with each event's outcome.
    Trace(trace::TraceArgs),
    /// Events in order, filtered; or copy a run into a sandbox namespace to run it again.
    Replay(replay::ReplayArgs),
    /// Compare two runs' trees: types, sources and payloads.
    Diff(diff::DiffArgs),
    /// The run board rebuilt from the log, now or as of a time or sequence.
    State(state::StateArgs),
    /// Dead letters: list, show, redrive after a fix, purge.
    Dlq(dlq::DlqArgs),
    /// Set up the streams, or see what they hold.
    Streams(streams::StreamsArgs),
    /// Whether NATS answers with JetStream, or an HTTP URL answers 2xx: a health check (0 or 69).
    Ping(ping::PingArgs),
    /// The live agents and their copies, with what each has done and its consumer's lag.
    Agents(agents::AgentsArgs),
    /// The choreography drawn from the agents' manifests, with its loops and loose ends.
    Graph(graph::GraphArgs),
    /// Credentials: nats-server users allowing each agent only its manifest, and TLS certificates.
    Auth(auth::AuthArgs),
    /// A web console: live runs, a run's tree and timeline, agents, dead letters, compare.
    Console(console::ConsoleArgs),
}

/// A failure with the exit code that describes it.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 64,
            message: message.to_string(),
        }
    }

    pub fn data(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 65,
            message: message.to_string(),
        }
    }

    pub fn no_input(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 66,
            message: message.to_string(),
        }
    }

    pub fn output(err: std::io::Error) -> Self {
        Failure {
            code: 74,
            message: format!("cannot write output: {err}"),
        }
    }

    pub fn log(err: choreo_bus::log::LogError) -> Self {
        match err {
            choreo_bus::log::LogError::NoStream { .. } => Failure::no_input(err.to_string()),
            _ => Failure::unavailable(err.to_string()),
        }
    }

    pub fn trace(err: choreo_bus::trace::TraceError) -> Self {
        match err {
            choreo_bus::trace::TraceError::Log(err) => Failure::log(err),
            choreo_bus::trace::TraceError::Invalid(err) => Failure::usage(err),
            err @ choreo_bus::trace::TraceError::UnknownRun { .. } => {
                Failure::no_input(err.to_string())
            }
        }
    }

    pub fn projection(err: choreo_bus::projection::ProjectionError) -> Self {
        match err {
            choreo_bus::projection::ProjectionError::Log(err) => Failure::log(err),
            err => Failure::unavailable(err.to_string()),
        }
    }

    pub fn publish(err: choreo_bus::PublishError) -> Self {
        match err {
            choreo_bus::PublishError::Invalid(err) => Failure::data(err),
            err if err.is_retryable() => Failure::unavailable(err.to_string()),
            err => Failure::failed(err.to_string()),
        }
    }

    /// Setting up streams: 69 while JetStream cannot answer (retry), 1 for a conflict or a
    /// refusal.
    pub fn setup(err: choreo_bus::streams::SetupError) -> Self {
        if err.is_retryable() {
            Failure::unavailable(err.to_string())
        } else {
            Failure::failed(err.to_string())
        }
    }

    pub fn dead_letter(err: choreo_bus::dead_letter::DeadLetterError) -> Self {
        use choreo_bus::dead_letter::DeadLetterError;
        match err {
            err @ DeadLetterError::NotFound { .. } => Failure::no_input(err.to_string()),
            DeadLetterError::Read(err) => Failure::log(err),
            DeadLetterError::Publish(err) => Failure::publish(err),
            err if err.is_retryable() => Failure::unavailable(err.to_string()),
            err => Failure::failed(err.to_string()),
        }
    }

    /// The exit code of [`Failure::unavailable`].
    pub const UNAVAILABLE: u8 = 69;

    /// The same failure, with what to do about it appended.
    pub fn hint(mut self, hint: impl std::fmt::Display) -> Self {
        self.message = format!("{}; {hint}", self.message);
        self
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Failure {
            code: Failure::UNAVAILABLE,
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
    // Held to the end: dropping it exports the spans still waiting.
    let _telemetry = match choreo_bus::telemetry::init_traces("choreo") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("choreo: {err}");
            return ExitCode::from(64);
        }
    };
    let result = match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Review(args) => review::run(args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Tail(args) => tail::run(args).await,
        Command::Trace(args) => trace::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Diff(args) => diff::run(args).await,
        Command::State(args) => state::run(args).await,
        Command::Dlq(args) => dlq::run(args).await,
        Command::Streams(args) => streams::run(args).await,
        Command::Ping(args) => ping::run(args).await,
        Command::Agents(args) => agents::run(args).await,
        Command::Graph(args) => graph::run(args).await,
        Command::Auth(args) => auth::run(args).await,
        Command::Console(args) => console::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("choreo: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
