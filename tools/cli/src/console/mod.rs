//! `choreo console`: the web face of the log, for whoever is on call.
//!
//! Server-rendered HTML (maud) with a little plain JavaScript for live updates over server-sent
//! events; nothing is fetched from anywhere else, nothing needs a front-end build. Every page is
//! drawn from what the CLI commands read, through the same functions: the run board
//! (`choreo state`), a run's trace and its drawings (`choreo trace`), the live agents (`choreo
//! agents`), dead letters and their redrive (`choreo dlq`), and the comparison of two runs
//! (`choreo diff`).
//!
//! # Layout
//!
//! - [`live`]: the run board kept current from a live read of the log, and the agents'
//!   consumer positions read every second; what NATS is doing, for the pages to say.
//! - [`access`]: who may look. Loopback needs nothing; any other address needs
//!   `CHOREO_CONSOLE_TOKEN`, asked for once and kept in a cookie.
//! - [`page`]: the shell every page shares (navigation, styles, script), the not-found and
//!   unavailable pages, and the server-sent event streams.
//! - One file per page: [`runs`], [`run`], [`agents`], [`dead_letters`], [`compare`].

mod access;
mod agents;
mod compare;
mod dead_letters;
mod live;
mod page;
mod run;
mod runs;

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::routing::{get, post};
use choreo_bus::Namespace;
use choreo_bus::connect::InitialConnect;
use secrecy::SecretString;

use crate::Failure;
use crate::connection::Connection;

/// The address the console listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Pages: / (runs, live), /runs/ID (tree, timeline, payloads, dead \
letters), /agents, /dead-letters, /compare?a=RUN&b=NS/RUN. Open the address it prints in a \
browser; nothing is fetched from the internet."
)]
pub struct ConsoleArgs {
    /// Where to serve the console. On any address other than loopback it needs
    /// CHOREO_CONSOLE_TOKEN.
    #[arg(long, env = "CHOREO_CONSOLE_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The token a browser must give once (it is then kept in a cookie); required to listen
    /// on anything but loopback. Prefer the environment variable: a flag shows in `ps`.
    #[arg(
        long = "console-token",
        env = "CHOREO_CONSOLE_TOKEN",
        hide_env_values = true
    )]
    console_token: Option<SecretString>,
    #[command(flatten)]
    connection: Connection,
}

/// What every page handler gets.
#[derive(Debug, Clone)]
struct Console {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    namespace: Namespace,
    /// For the pages to say where NATS is.
    nats_url: String,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    live: Arc<live::Live>,
    token: Option<SecretString>,
}

impl std::ops::Deref for Console {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

pub async fn run(args: ConsoleArgs) -> Result<(), Failure> {
    let namespace = args.connection.namespace()?;
    access::check_listen(args.listen, args.console_token.as_ref())?;
    // The console outlives NATS outages, its own start included: it serves pages that say NATS
    // is away and follows the log again once it is back.
    let client = args
        .connection
        .config()?
        .initial_connect(InitialConnect::Retry)
        .connect()
        .await
        .map_err(|err| Failure::usage(format!("cannot connect to NATS: {err}")))?;
    // A few seconds for the first connection, so the first pages are not "unavailable" for
    // a server that is there; after that the pages say NATS is away until it answers.
    for _ in 0..50 {
        if client.connection_state() == async_nats::connection::State::Connected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if client.connection_state() != async_nats::connection::State::Connected {
        eprintln!(
            "choreo console: NATS at {} does not answer yet; the pages say so until it does",
            args.connection.nats_url
        );
    }
    let jetstream = jetstream::new(client.clone());
    let live = live::Live::start(client.clone(), jetstream.clone(), namespace.clone());
    let console = Console {
        shared: Arc::new(Shared {
            namespace,
            nats_url: args.connection.nats_url.clone(),
            client,
            jetstream,
            live,
            token: args.console_token,
        }),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| Failure::unavailable(format!("cannot listen on {}: {err}", args.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    println!(
        "choreo console on http://{address}/ (namespace {}, NATS {}){}",
        console.namespace,
        console.nats_url,
        if console.token.is_some() {
            "; a browser is asked for CHOREO_CONSOLE_TOKEN once"
        } else {
            ""
        }
    );
    axum::serve(listener, router(console))
        .with_graceful_shutdown(choreo_bus::shutdown::signal())
        .await
        .map_err(|err| Failure::unavailable(format!("the console stopped: {err}")))
}

fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(runs::page))
        .route("/live/runs", get(runs::live))
        .route("/runs/{id}", get(run::page))
        .route("/runs/{id}/trace.json", get(run::trace_json))
        .route("/runs/{id}/trace.mmd", get(run::trace_mermaid))
        .route("/runs/{id}/events.jsonl", get(run::events))
        .route("/live/run/{id}", get(run::live))
        .route("/agents", get(agents::page))
        .route("/live/agents", get(agents::live))
        .route("/dead-letters", get(dead_letters::page))
        .route("/dead-letters/{sequence}", get(dead_letters::one))
        .route("/dead-letters/redrive", post(dead_letters::redrive))
        .route(
            "/dead-letters/purge",
            get(dead_letters::confirm_purge).post(dead_letters::purge),
        )
        .route("/compare", get(compare::page))
        .route("/live/status", get(page::live_status))
        .route("/login", post(access::login))
        .route("/console.css", get(page::stylesheet))
        .route("/console.js", get(page::script))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(page::no_such_page)
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            access::guard,
        ))
        .with_state(console)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        console: ConsoleArgs,
    }

    #[test]
    fn the_flags_are_consistent_and_default_to_loopback() {
        Flags::command().debug_assert();
        let flags = Flags::try_parse_from(["console"]).expect("defaults");
        assert_eq!(flags.console.listen.to_string(), DEFAULT_LISTEN);
        assert!(flags.console.listen.ip().is_loopback());
    }
}
