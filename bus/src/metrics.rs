//! What an agent process tells a scraper and a prober: Prometheus metrics at `/metrics`, and
//! `/healthz` and `/readyz`, served on `CHOREO_METRICS_LISTEN` when it is set.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `choreo_events_handled_total` | counter | `agent`, `type`, `outcome` | deliveries settled, by what became of them: `handled`, `skipped` (a handled redelivery, a redrive for another agent), `retried`, `deferred` (an outage waited out), `handed_back`, `dead_lettered` |
//! | `choreo_handling_duration_seconds` | histogram | `agent`, `type` | from the handler's start to its answer |
//! | `choreo_events_in_flight` | gauge | `agent` | events the process holds (running, queued behind their run, fetched ahead) |
//! | `choreo_redeliveries_total` | counter | `agent` | deliveries the server made again |
//! | `choreo_dead_letters_total` | counter | `agent`, `reason` | dead letters written |
//! | `choreo_breaker_state` | gauge | `agent`, `breaker` | 0 closed, 1 half-open, 2 open |
//! | `choreo_breaker_transitions_total` | counter | `agent`, `breaker`, `to` | breaker transitions |
//! | `choreo_consumer_pending` | gauge | `agent` | events in the stream the agent's consumer has not delivered yet: its lag (every copy reports the one consumer: take the max) |
//! | `choreo_consumer_ack_pending` | gauge | `agent` | events delivered to the consumer's copies and not acknowledged yet |
//! | `choreo_model_calls_total` | counter | `agent`, `model`, `outcome` | calls to a model API: `ok`, `unusable` (an answer that gave no review), `rate_limited`, `server_error`, `refused`, `failed` (no answer) |
//! | `choreo_model_tokens_total` | counter | `agent`, `model`, `direction` | tokens the model API billed: `input` (the prompt), `output` (the answer) |
//! | `choreo_model_cost_total` | counter | `agent`, `model` | what those tokens cost, by the agent's price table (`CHOREO_LLM_PRICE`), in its currency |
//! | `choreo_rate_limit_wait_seconds_total` | counter | `agent`, `limiter` | time spent waiting on a rate limiter: `handle`, or `publish:<type>` |
//! | `choreo_budget_refusals_total` | counter | `agent`, `by` | runs refused more work by their budget: `runtime` (children over the run's events or tokens), `handler` (a model call that would not fit) |
//!
//! `/healthz` answers 200 while the process serves; `/readyz` answers 200 while the runtime is
//! pulling and the connection to NATS is up, 503 otherwise (starting, shutting down, NATS lost).
//! Counting costs an atomic add and a read-locked map lookup per event; the endpoint costs
//! nothing until it is scraped.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::guard::BreakerState;
use crate::names::AgentName;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handled {
    r#type: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OfType {
    r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Breaker {
    breaker: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limiter {
    limiter: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelCall {
    model: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelTokens {
    model: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Model {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedBy {
    by: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transition {
    breaker: String,
    to: &'static str,
}

/// The media type of the text `/metrics` serves (the gateway's too).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Handling times from a millisecond to about two and a half minutes, doubling.
fn handling_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// One agent process's metrics; clones share them.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    handled: Family<Handled, Counter>,
    duration: Family<OfType, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    redeliveries: Counter,
    dead_letters: Family<Reason, Counter>,
    breaker_state: Family<Breaker, Gauge>,
    breaker_transitions: Family<Transition, Counter>,
    consumer_pending: Gauge,
    consumer_ack_pending: Gauge,
    rate_waits: Family<Limiter, Counter<f64, AtomicU64>>,
    budget_refusals: Family<RefusedBy, Counter>,
    model_calls: Family<ModelCall, Counter>,
    model_tokens: Family<ModelTokens, Counter>,
    model_cost: Family<Model, Counter<f64, AtomicU64>>,
    ready: AtomicBool,
    /// The process's totals, for its Services API stats (`runtime::presence`).
    totals: Totals,
}

/// Totals over every event type, kept beside the labelled families so a summary needs no walk
/// over them.
#[derive(Debug, Default)]
struct Totals {
    handled: AtomicU64,
    failed: AtomicU64,
    handling_nanos: AtomicU64,
    handlings: AtomicU64,
    breakers: std::sync::Mutex<BTreeMap<String, &'static str>>,
}

/// What one agent process has done, for `choreo agents` (through `$SRV.STATS`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Deliveries handled and acknowledged.
    pub handled: u64,
    /// Deliveries whose handling failed: retried later or dead-lettered.
    pub failed: u64,
    /// Handler runs timed (each one, whatever its outcome): what the mean is over.
    pub handlings: u64,
    /// The mean time from a handler's start to its answer, in milliseconds.
    pub average_handling_ms: f64,
    pub in_flight: i64,
    /// Each breaker's state: `closed`, `half_open` or `open`.
    pub breakers: BTreeMap<String, String>,
}

impl AgentMetrics {
    pub fn new(agent: &AgentName) -> AgentMetrics {
        let mut registry = Registry::with_labels(std::iter::once((
            Cow::Borrowed("agent"),
            Cow::Owned(agent.to_string()),
        )));
        let handled = Family::<Handled, Counter>::default();
        let duration =
            Family::<OfType, Histogram, fn() -> Histogram>::new_with_constructor(handling_buckets);
        let in_flight = Gauge::default();
        let redeliveries = Counter::default();
        let dead_letters = Family::<Reason, Counter>::default();
        let breaker_state = Family::<Breaker, Gauge>::default();
        let breaker_transitions = Family::<Transition, Counter>::default();
        let consumer_pending = Gauge::default();
        let consumer_ack_pending = Gauge::default();
        let rate_waits = Family::<Limiter, Counter<f64, AtomicU64>>::default();
        let budget_refusals = Family::<RefusedBy, Counter>::default();
        let model_calls = Family::<ModelCall, Counter>::default();
        let model_tokens = Family::<ModelTokens, Counter>::default();
        let model_cost = Family::<Model, Counter<f64, AtomicU64>>::default();
        registry.register(
            "choreo_events_handled",
            "Deliveries settled, by event type and what became of them",
            handled.clone(),
        );
        registry.register_with_unit(
            "choreo_handling_duration",
            "Time from the handler's start to its answer",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "choreo_events_in_flight",
            "Events the process holds: running, queued behind their run, or fetched ahead",
            in_flight.clone(),
        );
        registry.register(
            "choreo_redeliveries",
            "Deliveries the server made again",
            redeliveries.clone(),
        );
        registry.register(
            "choreo_dead_letters",
            "Dead letters written, by reason",
            dead_letters.clone(),
        );
        registry.register(
            "choreo_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        registry.register(
            "choreo_breaker_transitions",
            "Circuit breaker transitions, by the state entered",
            breaker_transitions.clone(),
        );
        registry.register(
            "choreo_consumer_pending",
            "Events in the stream the agent's consumer has not delivered yet (its lag)",
            consumer_pending.clone(),
        );
        registry.register(
            "choreo_consumer_ack_pending",
            "Events delivered to the consumer's copies and not acknowledged yet",
            consumer_ack_pending.clone(),
        );
        registry.register_with_unit(
            "choreo_rate_limit_wait",
            "Time spent waiting on a rate limiter",
            Unit::Seconds,
            rate_waits.clone(),
        );
        registry.register(
            "choreo_budget_refusals",
            "Runs refused more work by their budget, by who refused",
            budget_refusals.clone(),
        );
        registry.register(
            "choreo_model_calls",
            "Calls to a model API, by model and outcome",
            model_calls.clone(),
        );
        registry.register(
            "choreo_model_tokens",
            "Tokens a model API billed, by model and direction (input, output)",
            model_tokens.clone(),
        );
        registry.register(
            "choreo_model_cost",
            "What the billed tokens cost by the agent's price table, in its currency",
            model_cost.clone(),
        );
        // Every reason's series from the start, at 0: Prometheus's increase() sees no rise
        // from a series that appears already at 1, so the first dead letter would not alert.
        for reason in crate::dead_letter::DeadLetterReason::ALL {
            // The guard the call returns is only a read lock on the family: made, then let go.
            drop(dead_letters.get_or_create(&Reason {
                reason: reason.as_str(),
            }));
        }
        AgentMetrics {
            inner: Arc::new(Inner {
                registry,
                handled,
                duration,
                in_flight,
                redeliveries,
                dead_letters,
                breaker_state,
                breaker_transitions,
                consumer_pending,
                consumer_ack_pending,
                rate_waits,
                budget_refusals,
                model_calls,
                model_tokens,
                model_cost,
                ready: AtomicBool::new(false),
                totals: Totals::default(),
            }),
        }
    }

    /// A delivery of `event_type` was settled with `outcome` (see the module's table).
    pub(crate) fn settled(&self, event_type: &str, outcome: &'static str) {
        let total = match outcome {
            "handled" => Some(&self.inner.totals.handled),
            "retried" | "dead_lettered" => Some(&self.inner.totals.failed),
            _ => None,
        };
        if let Some(total) = total {
            total.fetch_add(1, Ordering::Relaxed);
        }
        self.inner
            .handled
            .get_or_create(&Handled {
                r#type: event_type.to_string(),
                outcome,
            })
            .inc();
    }

    pub(crate) fn handled_in(&self, event_type: &str, seconds: f64) {
        let totals = &self.inner.totals;
        // Whole nanoseconds: a handling is never near the 584 years a u64 holds.
        totals
            .handling_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        totals.handlings.fetch_add(1, Ordering::Relaxed);
        self.inner
            .duration
            .get_or_create(&OfType {
                r#type: event_type.to_string(),
            })
            .observe(seconds);
    }

    pub(crate) fn in_flight(&self) -> &Gauge {
        &self.inner.in_flight
    }

    pub(crate) fn redelivered(&self) {
        self.inner.redeliveries.inc();
    }

    pub(crate) fn dead_lettered(&self, reason: &'static str) {
        self.inner
            .dead_letters
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// The breaker `breaker` is now `state` (`entered`: by a transition, not at start).
    pub(crate) fn breaker(&self, breaker: &str, state: BreakerState, entered: bool) {
        let level = match state {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        self.inner
            .totals
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(breaker.to_string(), state.as_str());
        self.inner
            .breaker_state
            .get_or_create(&Breaker {
                breaker: breaker.to_string(),
            })
            .set(level);
        if entered {
            self.inner
                .breaker_transitions
                .get_or_create(&Transition {
                    breaker: breaker.to_string(),
                    to: state.as_str(),
                })
                .inc();
        }
    }

    /// The consumer's pending counts, as the server last said them.
    pub(crate) fn consumer_lag(&self, pending: u64, ack_pending: usize) {
        self.inner
            .consumer_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.inner
            .consumer_ack_pending
            .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
    }

    /// A call to `model` ended with `outcome` (see the module's table); the API billed
    /// `input` and `output` tokens for it, which cost `cost` where the agent has a price.
    pub fn model_call(
        &self,
        model: &str,
        outcome: &'static str,
        input: u64,
        output: u64,
        cost: Option<f64>,
    ) {
        let inner = &self.inner;
        inner
            .model_calls
            .get_or_create(&ModelCall {
                model: model.to_string(),
                outcome,
            })
            .inc();
        for (direction, tokens) in [("input", input), ("output", output)] {
            inner
                .model_tokens
                .get_or_create(&ModelTokens {
                    model: model.to_string(),
                    direction,
                })
                .inc_by(tokens);
        }
        if let Some(cost) = cost {
            inner
                .model_cost
                .get_or_create(&Model {
                    model: model.to_string(),
                })
                .inc_by(cost);
        }
    }

    /// `seconds` were spent waiting on the rate limiter `limiter`.
    pub(crate) fn waited_on(&self, limiter: &str, seconds: f64) {
        self.inner
            .rate_waits
            .get_or_create(&Limiter {
                limiter: limiter.to_string(),
            })
            .inc_by(seconds);
    }

    /// A run's budget refused more work (`by`: `runtime` or `handler`).
    pub(crate) fn budget_refused(&self, by: &'static str) {
        self.inner
            .budget_refusals
            .get_or_create(&RefusedBy { by })
            .inc();
    }

    /// What this process has done so far.
    pub fn summary(&self) -> Summary {
        let totals = &self.inner.totals;
        let handlings = totals.handlings.load(Ordering::Relaxed);
        let nanos = totals.handling_nanos.load(Ordering::Relaxed);
        Summary {
            handled: totals.handled.load(Ordering::Relaxed),
            failed: totals.failed.load(Ordering::Relaxed),
            handlings,
            average_handling_ms: if handlings == 0 {
                0.0
            } else {
                nanos as f64 / handlings as f64 / 1e6
            },
            in_flight: self.inner.in_flight.get(),
            breakers: totals
                .breakers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(name, state)| (name.clone(), (*state).to_string()))
                .collect(),
        }
    }

    /// Whether the runtime is pulling (set by the runtime).
    pub(crate) fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
    /// Ready means the runtime is pulling and `client` is connected.
    pub async fn serve(self, listener: tokio::net::TcpListener, client: async_nats::Client) {
        use axum::http::{StatusCode, header};
        use axum::routing::get;
        let metrics = self.clone();
        let router = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
                            metrics.encode(),
                        )
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = self.inner.ready.load(Ordering::SeqCst)
                        && client.connection_state() == async_nats::connection::State::Connected;
                    async move {
                        if ready {
                            (StatusCode::OK, "ready\n")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                        }
                    }
                }),
            );
        if let Err(err) = axum::serve(listener, router).await {
            tracing::warn!(error = %err, "the metrics endpoint stopped");
        }
    }
}

/// Binds the metrics endpoint's address, so a bad one is refused at start.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_follow_prometheus_conventions_and_carry_the_agent() {
        let metrics = AgentMetrics::new(&AgentName::new("security").expect("valid"));
        metrics.settled("review.planned", "handled");
        metrics.handled_in("review.planned", 0.25);
        metrics.dead_lettered("handler_timeout");
        metrics.breaker("llm", BreakerState::Open, true);
        let text = metrics.encode();
        for line in [
            r#"choreo_events_handled_total{agent="security",type="review.planned",outcome="handled"} 1"#,
            r#"choreo_handling_duration_seconds_count{agent="security",type="review.planned"} 1"#,
            r#"choreo_dead_letters_total{agent="security",reason="handler_timeout"} 1"#,
            r#"choreo_breaker_state{agent="security",breaker="llm"} 2"#,
            r#"choreo_breaker_transitions_total{agent="security",breaker="llm",to="open"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn every_dead_letter_reason_is_served_at_zero_before_the_first() {
        // So an alert on increase() sees the first dead letter as a rise from 0.
        let text = AgentMetrics::new(&AgentName::new("security").expect("valid")).encode();
        for reason in crate::dead_letter::DeadLetterReason::ALL {
            let line = format!(
                "choreo_dead_letters_total{{agent=\"security\",reason=\"{}\"}} 0",
                reason.as_str()
            );
            assert!(text.contains(&line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn every_metric_the_shipped_alerts_and_dashboard_use_is_served() {
        let metrics = AgentMetrics::new(&AgentName::new("security").expect("valid"));
        metrics.settled("review.planned", "handled");
        metrics.handled_in("review.planned", 0.25);
        metrics.dead_lettered("handler_timeout");
        metrics.breaker("handler", BreakerState::Open, true);
        metrics.redelivered();
        metrics.waited_on("handle", 0.5);
        metrics.budget_refused("runtime");
        metrics.consumer_lag(3, 1);
        metrics.model_call("m", "ok", 100, 50, Some(0.01));
        let served = metrics.encode();
        for (file, text, at_least) in [
            (
                "alerts",
                include_str!("../../deploy/prometheus/alerts.yaml"),
                4,
            ),
            (
                "dashboard",
                include_str!("../../deploy/grafana/choreo.json"),
                9,
            ),
        ] {
            let used: std::collections::BTreeSet<&str> = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("choreo_"))
                .collect();
            assert!(used.len() >= at_least, "{file}: {used:?}");
            for metric in used {
                assert!(
                    served.contains(&format!("\n{metric}{{")),
                    "the {file} uses {metric}, which an agent does not serve:\n{served}"
                );
            }
        }
    }
}
