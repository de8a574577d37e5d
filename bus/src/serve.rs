//! The whole `main` of an agent binary: settings from flags, environment or a file
//! ([`crate::settings`]), logging, connecting, running until SIGINT/SIGTERM, and an exit code
//! that says what went wrong.
//!
//! Connection settings come from `NATS_URL` and the other `NATS_*` variables (see
//! [`crate::NatsConfig::from_env`]); logging from `CHOREO_LOG_FORMAT` and `RUST_LOG` (see
//! [`crate::telemetry`]). The values in effect are logged at start.
//!
//! Exit codes: 0 after a clean shutdown (or `--help`); 64 for bad configuration (the message
//! names the setting); 69 when the streams are missing or the consumer cannot be bound.

use std::future::Future;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::connect::{InitialConnect, NatsConfig};
use crate::manifest::{MANIFEST_SUBCOMMAND, Manifest};
use crate::names::{AgentName, Namespace, ValidationError};
use crate::runtime::{Agent, Handler, Runtime, RuntimeConfig, RuntimeError};
use crate::settings::AgentSettings;

/// Bad configuration (`EX_USAGE` in sysexits).
pub const EXIT_CONFIG: u8 = 64;
/// A service the agent needs is missing (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// The server refused the agent's credentials what it needs (`EX_NOPERM`).
pub const EXIT_NOPERM: u8 = 77;

/// Runs `agent` with `handler` as configured by its flags, environment and settings file,
/// until SIGINT or SIGTERM. `about` says what the agent does: the first line of its `--help`
/// (the crate's `description`, `env!("CARGO_PKG_DESCRIPTION")`, is meant for it).
///
/// It takes the declaration as built, so an invalid one exits 64 like any other bad
/// configuration, without every agent's `main` handling it.
///
/// ```no_run
/// # async fn demo() -> std::process::ExitCode {
/// let agent = choreo_bus::Agent::builder("echo").subscribes("echo.requested").build();
/// let handler = choreo_bus::handler_fn(|_event| async { Ok(vec![]) });
/// choreo_bus::serve(agent, "Echoes nothing back.", handler).await
/// # }
/// ```
pub async fn serve<H: Handler>(
    agent: Result<Agent, ValidationError>,
    about: &str,
    handler: H,
) -> ExitCode {
    serve_with(agent, about, |_: NoSettings, _| async { Ok(handler) }).await
}

/// What building an agent's handler may need besides its settings: the connection (to read
/// the log, say), the namespace it runs in and its name.
#[derive(Debug, Clone)]
pub struct ServeContext {
    pub client: async_nats::Client,
    pub namespace: Namespace,
    pub agent: AgentName,
    /// Cancelled on SIGINT or SIGTERM: tasks the handler starts (a deadline watch, say) stop
    /// with the agent.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// How long one handling may run (`--handler-timeout`): what the handler's own timeouts
    /// and retries must fit in.
    pub handler_timeout: std::time::Duration,
    /// The process's metrics, which the runtime serves: a handler counts its own into them
    /// (model calls, tokens, cost).
    pub metrics: crate::metrics::AgentMetrics,
}

/// An agent with settings of its own: [`serve`], with `S`'s flags (and their environment
/// variables) added to the runtime's, parsed and validated with them, and the handler built by
/// `build` once connected. An error from `build` is bad configuration: exit 64 with its message.
///
/// ```no_run
/// # async fn demo() -> std::process::ExitCode {
/// #[derive(Debug, clap::Args)]
/// struct Greeting {
///     /// The word to greet with.
///     #[arg(long, env = "GREETING", default_value = "hello")]
///     word: String,
/// }
/// let agent = choreo_bus::Agent::builder("greeter").subscribes("person.arrived").build();
/// choreo_bus::serve::serve_with(agent, "Greets.", |greeting: Greeting, _context| async move {
///     if greeting.word.is_empty() {
///         return Err(choreo_bus::ValidationError::new("word", "must not be empty"));
///     }
///     Ok(choreo_bus::handler_fn(|_event| async { Ok(vec![]) }))
/// })
/// .await
/// # }
/// ```
pub async fn serve_with<S, H, F, Fut>(
    agent: Result<Agent, ValidationError>,
    about: &str,
    build: F,
) -> ExitCode
where
    S: clap::Args + FromArgMatches,
    H: Handler,
    F: FnOnce(S, ServeContext) -> Fut,
    Fut: Future<Output = Result<H, ValidationError>>,
{
    let agent = match agent {
        Ok(agent) => agent,
        Err(err) => {
            eprintln!("invalid agent declaration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(exit) = print_manifest(&agent, about) {
        return exit;
    }
    // Held to the end: dropping it exports the spans still waiting.
    let _telemetry = match crate::telemetry::init(&format!("choreo-{}", agent.name())) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{}: {err}", agent.name());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (config, own_settings) = match settings_from_args::<S>(&agent, about) {
        Ok(settings) => settings,
        Err(exit) => return exit,
    };
    tracing::info!(agent = %agent.name(), guards = %config.guards, "settings in effect");
    let nats = match NatsConfig::from_env() {
        // Containers may start before NATS: keep trying rather than exit.
        Ok(nats) => nats
            .default_client_name(agent.name().as_str())
            .initial_connect(InitialConnect::Retry),
        Err(err) => return config_error(&agent, &err),
    };
    let client = match nats.connect().await {
        Ok(client) => client,
        Err(err) => return config_error(&agent, &err),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            crate::shutdown::signal().await;
            shutdown.cancel();
        }
    });
    let metrics = crate::metrics::AgentMetrics::new(agent.name());
    let context = ServeContext {
        client: client.clone(),
        namespace: config.namespace.clone(),
        agent: agent.name().clone(),
        shutdown: shutdown.clone(),
        handler_timeout: config.handler_timeout,
        metrics: metrics.clone(),
    };
    let handler = match build(own_settings, context).await {
        Ok(handler) => handler,
        Err(err) => return config_error(&agent, &err),
    };
    let name = agent.name().clone();
    match Runtime::new(client, agent, handler)
        .config(config)
        .metrics(metrics)
        .run(shutdown.cancelled_owned())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ RuntimeError::Config(_)) => {
            tracing::error!(agent = %name, "{err}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err @ RuntimeError::Refused { .. }) => {
            tracing::error!(agent = %name, "{err}");
            ExitCode::from(EXIT_NOPERM)
        }
        Err(err) => {
            tracing::error!(agent = %name, "{err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// `choreo-<agent> manifest [SETTINGS]`: prints the agent's [`Manifest`] as JSON and exits 0,
/// without connecting to NATS or needing any variable set. The runtime's flags, environment
/// and settings file are read as for a run, so the manifest has the namespace and the guards
/// the agent would run with; the agent's own settings are not (none of them changes a
/// subject). 64 for a bad setting, 74 when the manifest cannot be written. `None` when the
/// command line is not `manifest`.
fn print_manifest(agent: &Agent, about: &str) -> Option<ExitCode> {
    use std::io::Write as _;
    let mut args = std::env::args_os();
    let program = args.next()?;
    if args.next()? != MANIFEST_SUBCOMMAND {
        return None;
    }
    let command = AgentSettings::command()
        .name(MANIFEST_SUBCOMMAND)
        .bin_name(format!("choreo-{} {MANIFEST_SUBCOMMAND}", agent.name()))
        .about(format!(
            "Prints the manifest of agent {}: its types, consumer, subjects and guards, as \
             JSON (`choreo graph` reads it). Connects to nothing.",
            agent.name()
        ))
        .after_help("");
    let config = match command.try_get_matches_from(std::iter::once(program).chain(args)) {
        Ok(matches) => AgentSettings::from_arg_matches(&matches)
            .map_err(|err| err.to_string())
            .and_then(|settings| settings.with_file().map_err(|err| err.to_string()))
            .and_then(|settings| settings.runtime_config().map_err(|err| err.to_string())),
        Err(err) => {
            // `--help` to stdout, 0; a bad flag to stderr, 64.
            let code = if err.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = err.print();
            return Some(ExitCode::from(code));
        }
    };
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}: {err}", agent.name());
            return Some(ExitCode::from(EXIT_CONFIG));
        }
    };
    let manifest = Manifest::new(agent, about, &config);
    let written = serde_json::to_string_pretty(&manifest)
        .map_err(std::io::Error::other)
        .and_then(|json| writeln!(std::io::stdout().lock(), "{json}"));
    Some(match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}: cannot write the manifest: {err}", agent.name());
            ExitCode::from(74)
        }
    })
}

/// The settings of an agent that has none of its own.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct NoSettings {}

fn config_error(agent: &Agent, err: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!(agent = %agent.name(), "{err}");
    eprintln!("{}: {err}", agent.name());
    ExitCode::from(EXIT_CONFIG)
}

/// Parses the process's flags (and the environment and file behind them) into a runtime
/// configuration and the agent's own settings, or the exit code to leave with: 0 after
/// `--help`, 64 for a bad setting.
fn settings_from_args<S: clap::Args + FromArgMatches>(
    agent: &Agent,
    about: &str,
) -> Result<(RuntimeConfig, S), ExitCode> {
    let (settings, own) = command::<S>(agent, about)
        .try_get_matches()
        .and_then(|matches| {
            Ok((
                AgentSettings::from_arg_matches(&matches)?,
                S::from_arg_matches(&matches)?,
            ))
        })
        .map_err(|err| {
            let code = if err.use_stderr() { EXIT_CONFIG } else { 0 };
            // Prints help and version to stdout, errors to stderr, as clap formats them.
            let _ = err.print();
            ExitCode::from(code)
        })?;
    let config = settings
        .with_file()
        .and_then(|settings| settings.runtime_config())
        .map_err(|err| config_error(agent, &err))?;
    Ok((config, own))
}

/// The agent's command line: the runtime's flags and `S`'s, under the binary's name, opening
/// with what the agent does.
fn command<S: clap::Args>(agent: &Agent, about: &str) -> clap::Command {
    // Set after `S`'s flags: clap takes `S`'s doc comment as the command's about otherwise.
    S::augment_args(AgentSettings::command().name(format!("choreo-{}", agent.name())))
        .about(about.to_string())
        .long_about(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_opens_with_what_the_agent_does() {
        let agent = Agent::builder("echo")
            .subscribes("echo.requested")
            .build()
            .expect("valid");
        // Own settings whose doc comment clap would otherwise take as the about.
        /// The echo's settings.
        #[derive(clap::Args)]
        struct Echo {}
        let mut command = command::<Echo>(&agent, "Echoes what it is sent.");
        for help in [command.render_help(), command.render_long_help()] {
            let help = help.to_string();
            assert_eq!(
                help.lines().next(),
                Some("Echoes what it is sent."),
                "{help}"
            );
        }
        assert_eq!(command.get_name(), "choreo-echo");
    }
}
