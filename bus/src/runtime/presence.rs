//! A running copy of an agent, visible on NATS: each registers on the Services API (ADR-32)
//! under its agent's name, so `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (and their `.<name>`
//! forms) are answered by every live copy, each with an id of its own. Its metadata says what
//! it is (the namespace, what it subscribes to and emits, and what its handler says of itself
//! through `Handler::describe`, e.g. a specialist's brain and model); its stats carry what it has done
//! ([`Summary`]: handled, failed, mean handling time, in flight, breakers), as the data of its
//! one endpoint, `status`, which answers a request with the same summary.
//!
//! `choreo agents` reads these, with the agents' durable consumers, to list the live agents
//! and their copies and to name an agent whose consumer has no live copy.

use std::collections::HashMap;

use async_nats::service::{Service, ServiceExt as _};
use futures::StreamExt as _;
use tracing::warn;

use crate::metrics::{AgentMetrics, Summary};
use crate::names::Namespace;
use crate::runtime::Agent;

/// Metadata keys of an agent's service.
pub mod metadata {
    /// The namespace it handles events in.
    pub const NAMESPACE: &str = "choreo.namespace";
    /// The event types it subscribes to, comma-separated.
    pub const SUBSCRIBES: &str = "choreo.subscribes";
    /// The event types it may emit, comma-separated.
    pub const EMITS: &str = "choreo.emits";
}

/// The name of the endpoint whose stats carry a copy's [`Summary`].
pub const STATUS_ENDPOINT: &str = "status";

/// The subject of a copy's `status` endpoint: any copy of `agent` in `namespace` answers.
pub fn status_subject(namespace: &Namespace, agent: &str) -> String {
    format!("choreo.agents.{namespace}.{agent}.status")
}

/// Registers this copy of `agent`; it answers until the returned service is stopped or the
/// connection closes. The summary comes from `metrics`.
pub(crate) async fn announce(
    client: &async_nats::Client,
    agent: &Agent,
    namespace: &Namespace,
    described: Vec<(String, String)>,
    metrics: AgentMetrics,
) -> Result<(Service, tokio::task::JoinHandle<()>), async_nats::Error> {
    let list = |types: &[crate::names::EventType]| {
        types
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    // The handler's own first, so the runtime's keys win a clash.
    let mut metadata: HashMap<String, String> = described.into_iter().collect();
    metadata.extend([
        (metadata::NAMESPACE.to_string(), namespace.to_string()),
        (metadata::SUBSCRIBES.to_string(), list(agent.subscribes())),
        (metadata::EMITS.to_string(), list(agent.emits())),
    ]);
    let stats = metrics.clone();
    let service = client
        .service_builder()
        .description(format!("choreo agent {}", agent.name()))
        .metadata(metadata)
        .stats_handler(move |_endpoint, _stats| summary_json(&stats.summary()))
        .start(agent.name().as_str(), env!("CARGO_PKG_VERSION"))
        .await?;
    let mut endpoint = service
        .endpoint_builder()
        .name(STATUS_ENDPOINT)
        .add(status_subject(namespace, agent.name().as_str()))
        .await?;
    let answering = tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            let body = summary_json(&metrics.summary()).to_string();
            if let Err(err) = request.respond(Ok(body.into())).await {
                warn!(error = %err, "could not answer a status request");
            }
        }
    });
    Ok((service, answering))
}

/// Asks this copy's own `$SRV.PING.<name>.<id>` once, and warns when it goes unanswered: a
/// subscription the server refused (credentials without `$SRV.>`) is not an error the client
/// hears when it subscribes, so this is how the copy learns it is unseen.
pub(crate) async fn check_seen(client: async_nats::Client, service: async_nats::service::Info) {
    let subject = format!("$SRV.PING.{}.{}", service.name, service.id);
    let answer = tokio::time::timeout(SEEN_WITHIN, client.request(subject, "".into())).await;
    if !matches!(answer, Ok(Ok(_))) {
        warn!(
            agent = %service.name,
            "this copy does not answer its own $SRV.PING: choreo agents will not list it (do \
             its NATS credentials allow subscribing to $SRV.> and publishing replies?)"
        );
    }
}

/// How long a copy waits for its own ping's answer.
const SEEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

fn summary_json(summary: &Summary) -> serde_json::Value {
    serde_json::to_value(summary).unwrap_or_default()
}
