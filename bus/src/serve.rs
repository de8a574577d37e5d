//! The whole `main` of an agent binary: configuration from the environment, logging,
//! connecting, running until SIGINT/SIGTERM, and an exit code that says what went wrong.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `NATS_URL` and the other `NATS_*` | see [`crate::NatsConfig::from_env`] | `nats://127.0.0.1:4222` |
//! | `CHOREO_NAMESPACE` | the namespace to handle | `events` |
//! | `CHOREO_CONCURRENCY` | events handled at once | 16 |
//! | `CHOREO_MAX_DELIVERIES` | deliveries before dead-lettering | 5 |
//! | `CHOREO_ACK_WAIT_SECS` | seconds before an unacked event is redelivered | 30 |
//! | `CHOREO_LOG_FORMAT`, `RUST_LOG` | see [`crate::telemetry`] | `human`, `info` |
//!
//! Exit codes: 0 after a clean shutdown; 64 for bad configuration (the message names the
//! variable); 69 when the streams are missing or the consumer cannot be bound.

use std::process::ExitCode;
use std::time::Duration;

use crate::connect::{InitialConnect, NatsConfig};
use crate::names::{Namespace, ValidationError};
use crate::runtime::{Agent, Handler, Runtime, RuntimeConfig, RuntimeError};

/// Bad configuration (`EX_USAGE` in sysexits).
pub const EXIT_CONFIG: u8 = 64;
/// A service the agent needs is missing (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Runs `agent` with `handler` as configured by the environment, until SIGINT or SIGTERM.
///
/// It takes the declaration as built, so an invalid one exits 64 like any other bad
/// configuration, without every agent's `main` handling it.
///
/// ```no_run
/// # async fn demo() -> std::process::ExitCode {
/// let agent = choreo_bus::Agent::builder("echo").subscribes("echo.requested").build();
/// choreo_bus::serve(agent, choreo_bus::handler_fn(|_event| async { Ok(vec![]) })).await
/// # }
/// ```
pub async fn serve<H: Handler>(agent: Result<Agent, ValidationError>, handler: H) -> ExitCode {
    let agent = match agent {
        Ok(agent) => agent,
        Err(err) => {
            eprintln!("invalid agent declaration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(err) = crate::telemetry::init() {
        eprintln!("{}: {err}", agent.name());
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = match runtime_config_from_env() {
        Ok(config) => config,
        Err(err) => return config_error(&agent, &err),
    };
    let nats = match NatsConfig::from_env() {
        // Containers may start before NATS: keep trying rather than exit.
        Ok(nats) => nats
            .client_name(agent.name().as_str())
            .initial_connect(InitialConnect::Retry),
        Err(err) => return config_error(&agent, &err),
    };
    let client = match nats.connect().await {
        Ok(client) => client,
        Err(err) => return config_error(&agent, &err),
    };
    let name = agent.name().clone();
    match Runtime::new(client, agent, handler)
        .config(config)
        .run(crate::shutdown::signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ RuntimeError::Config(_)) => {
            tracing::error!(agent = %name, "{err}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) => {
            tracing::error!(agent = %name, "{err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn config_error(agent: &Agent, err: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!(agent = %agent.name(), "{err}");
    eprintln!("{}: {err}", agent.name());
    ExitCode::from(EXIT_CONFIG)
}

/// Reads the `CHOREO_*` runtime settings, refusing bad values by variable name.
pub fn runtime_config_from_env() -> Result<RuntimeConfig, ValidationError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let number = |name: &'static str| -> Result<Option<u64>, ValidationError> {
        var(name)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| ValidationError::new(name, format!("{v:?} is not a whole number")))
            })
            .transpose()
    };
    let mut config = RuntimeConfig::default();
    if let Some(namespace) = var("CHOREO_NAMESPACE") {
        config.namespace = Namespace::new(namespace)
            .map_err(|err| ValidationError::new("CHOREO_NAMESPACE", err.reason))?;
    }
    if let Some(n) = number("CHOREO_CONCURRENCY")? {
        config.concurrency = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = number("CHOREO_MAX_DELIVERIES")? {
        config.max_deliveries = n;
    }
    if let Some(n) = number("CHOREO_ACK_WAIT_SECS")? {
        config.ack_wait = Duration::from_secs(n);
    }
    config.validate()?;
    Ok(config)
}
