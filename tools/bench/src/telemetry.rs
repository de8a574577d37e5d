//! `telemetry`: the `handle` scenario's runtime with spans exported by OTLP to a local receiver,
//! over the same without an exporter; ratio = with / without.
//!
//! A process exports or not for its whole life (the tracing layers are installed once), so
//! each side runs in a child `choreo-bench handle --preloaded --as-agent` process (logs and
//! traces set up as an agent's are) against this run's server and the events loaded here, one
//! round each, the side that goes first changing every round; the receiver (here) answers
//! every export 200 and counts the spans' bytes, so the report shows the export really
//! happened. `client_cpu_us_per_msg` gives the children's CPU time per handled event, `raw`
//! without and `ours` with the exporter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

use crate::{PairedRounds, Report, Settings};

pub async fn run(
    client: &async_nats::Client,
    nats_url: &str,
    settings: &Settings,
) -> anyhow::Result<Report> {
    // Loaded here, not by each child: the children's spans are then their handlings' alone,
    // not also a preload's still being exported while the handling is timed.
    crate::handle::fresh_streams_preloaded(client, settings).await?;
    let exported = Arc::new(AtomicU64::new(0));
    let receiver = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let exported = exported.clone();
            move |body: axum::body::Bytes| async move {
                exported.fetch_add(body.len() as u64, Ordering::Relaxed);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let mut rounds = PairedRounds::default();
    for round in 0..settings.rounds {
        rounds
            .run(
                round,
                handle_round(nats_url, settings, None),
                handle_round(nats_url, settings, Some(&endpoint)),
            )
            .await?;
    }
    server.abort();
    anyhow::ensure!(
        exported.load(Ordering::Relaxed) > 0,
        "the receiver got no spans: the exporting side did not export"
    );
    let mut report = rounds.report("telemetry", settings);
    report.raw_is = Some("the handle scenario's runtime without an exporter (OTEL_* unset)");
    Ok(report)
}

/// The runtime's rate in one `handle` round of a child process, exporting to `endpoint` if
/// given, with the child's CPU time per event (exporting thread included) where it says.
async fn handle_round(
    nats_url: &str,
    settings: &Settings,
    endpoint: Option<&str>,
) -> anyhow::Result<(f64, Option<f64>)> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?);
    child
        .args([
            "handle",
            "--json",
            "--rounds",
            "1",
            "--preloaded",
            "--as-agent",
        ])
        .args(["--messages", &settings.messages.to_string()])
        .args(["--payload", &settings.payload.to_string()])
        .args(["--nats-url", nats_url])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if let Some(endpoint) = endpoint {
        child.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    }
    let output = child
        .output()
        .await
        .context("running choreo-bench handle")?;
    anyhow::ensure!(
        output.status.success(),
        "choreo-bench handle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading the handle round's report")?;
    let rate = report["ours"]
        .as_f64()
        .context("the handle report has no `ours` rate")?;
    Ok((rate, report["client_cpu_us_per_msg"]["ours"].as_f64()))
}
