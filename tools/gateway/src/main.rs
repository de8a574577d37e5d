//! The gateway as its own process; `choreo-gateway --help` lists its settings.
//!
//! Exit codes: 0 after SIGINT/SIGTERM (requests in hand are finished); 64 for a bad setting
//! (named); 69 when the listen address cannot be bound.

use std::process::ExitCode;

use choreo_bus::serve::{EXIT_CONFIG, EXIT_UNAVAILABLE};
use choreo_bus::{InitialConnect, NatsConfig};
use choreo_gateway::{Gateway, Settings};
use clap::Parser;

// Every choreo binary uses mimalloc: the event path allocates per message (docs/architecture.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::try_parse() {
        Ok(settings) => settings,
        Err(err) => {
            // Help to stdout and exit 0; a bad flag or variable to stderr, named, and exit 64.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { EXIT_CONFIG } else { 0 });
        }
    };
    // Held to the end: dropping it exports the spans still waiting.
    let _telemetry = match choreo_bus::telemetry::init("choreo-gateway") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("choreo-gateway: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config_error = |err: &dyn std::fmt::Display| {
        eprintln!("choreo-gateway: {err}");
        ExitCode::from(EXIT_CONFIG)
    };
    let nats = match NatsConfig::from_env() {
        // The gateway may start before NATS: it answers 503 (and /readyz says not ready) until
        // the connection is made.
        Ok(nats) => nats
            .default_client_name("choreo-gateway")
            .initial_connect(InitialConnect::Retry),
        Err(err) => return config_error(&err),
    };
    let client = match nats.connect().await {
        Ok(client) => client,
        Err(err) => return config_error(&err),
    };
    let gateway = match Gateway::new(client, nats.servers_display(), &settings) {
        Ok(gateway) => gateway,
        Err(err) => return config_error(&err),
    };
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "choreo-gateway: cannot listen on {}: {err}",
                settings.listen
            );
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    tracing::info!(listen = %settings.listen, ?settings, "gateway listening");
    match choreo_gateway::serve(listener, gateway, choreo_bus::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("the gateway stopped: {err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
