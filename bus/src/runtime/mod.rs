//! The agent runtime: durable pull consumer → decode → guards → handler → guards → publish
//! children → ack, as a pipeline of stages, each in its own file:
//!
//! | stage | file | does |
//! |---|---|---|
//! | pull | `pull.rs` | asks for as many events as there is room for (pacing, the handler's breaker), rebinds a lost consumer |
//! | lease | `lease.rs` | keeps every event in hand from being redelivered while it is worked on (in-progress acks) |
//! | dispatch | `dispatch.rs` | one run's events one after another, different runs concurrently |
//! | work | `worker.rs` | decode, skip a handled redelivery, guards, the handler under its timeout, the children |
//! | fate | `fate.rs` | the one table from what happened to what is done |
//! | settle | `settle.rs` | ack, NAK with a delay, hand back, or dead-letter and terminate |
//!
//! # What it promises
//!
//! - **Shared work.** Every copy of an agent binds the same durable consumer (named after the
//!   agent), so starting more processes spreads events among them; each event goes to one. A
//!   copy holds no more than it can start soon (`concurrency + batch`), so copies share.
//! - **Long handlers.** An event's lease is renewed while it is in hand, so a handler may run
//!   for minutes without the server redelivering it; `ack_wait` only says how soon a dead
//!   process's events come back. [`RuntimeConfig::handler_timeout`] bounds one handling: past
//!   it the handler is cancelled and the delivery counts as a failed attempt.
//! - **Order per run.** Within one process, events of one correlation are handled one after
//!   another in stream order; different correlations are handled concurrently, up to
//!   [`RuntimeConfig::concurrency`]. Across processes there is no order between copies: two
//!   events of one run may be handled by two copies at once. A retried event comes back after
//!   its backoff, behind events that arrived meanwhile.
//! - **Exactly once in effect, paid once.** Children are published and confirmed *before* the
//!   input is acked, and their ids are derived from (input id, agent, index). A crash between
//!   the two means a redelivery; if every child is already stored, the redelivery is acked
//!   without running the handler (see `handled.rs`); if only some are, the handler runs again
//!   and the stream's duplicate window drops the copies.
//! - **Failures.** What happens to an event is decided by one table ([`fate::decide`]): retry
//!   with [`Backoff`] until [`RuntimeConfig::max_deliveries`], then dead-letter and terminate; a
//!   permanent error, an undeclared emitted type, or bytes that do not decode are dead-lettered
//!   at once. A dead letter is always stored before the input is terminated, and one poison
//!   event never blocks those behind it. A panicking handler counts as a retryable failure.
//! - **Outages are waited out.** An open breaker, a dependency the handler calls unavailable,
//!   NATS unable to store children or answer a read (a leader election, a lost node): the event
//!   goes back to the stream with a delay and the delivery is not counted as an attempt.
//! - **Shutdown.** When the shutdown future completes the runtime stops pulling, hands back
//!   (NAKs) what it held but had not started, gives running handlers up to
//!   [`RuntimeConfig::shutdown_grace`], then cancels the rest and hands their events back for
//!   another copy, flushes, and returns. Nothing unfinished is acknowledged.
//! - **Reconnects.** A lost connection is waited out; the consumer is rebound if it vanished.
//! - **Storm control.** The guards of [`crate::guard`] run around every event: the cycle limit
//!   and the handling rate before the handler, the handler's circuit breaker around it, the
//!   depth limit, the run's budget and the publishing rates before its children are published.
//!   While the handler's breaker is open the runtime stops pulling and hands what it holds back
//!   with a delay; half-open, it holds only as many events as the breaker has probes. Breaker
//!   transitions (the handler's and those of [`Handler::breakers`]) are logged and published as
//!   `choreo.breaker.*` events in the correlation `breaker-<agent>-<breaker>`.

mod agent;
mod config;
mod deferrals;
mod dispatch;
pub mod fate;
mod handled;
mod lag;
mod lease;
pub mod presence;
mod pull;
mod settle;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull::Config as PullConfig},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use agent::{
    Agent, AgentBuilder, FnHandler, Handler, HandlerError, HandlerErrorKind, Incoming, handler_fn,
};
pub use config::{Backoff, RuntimeConfig};
pub use fate::{Fate, Outcome, decide};

use crate::dead_letter::DeadLetterWriter;
use crate::envelope::{Emit, RootEvent};
use crate::guard::{BreakerState, CircuitBreaker, CorrelationBudget, Guards, Transition};
use crate::metrics::AgentMetrics;
use crate::names::{AgentName, ValidationError};
use crate::publish::Publisher;

use deferrals::Deferrals;
use dispatch::SerialByKey;
use lease::Leases;
use worker::{Held, Worker};

/// The name of the breaker around the handler: its transitions are in the run
/// `breaker-<agent>-handler`.
pub const HANDLER_BREAKER: &str = "handler";
/// After the shutdown grace, how long cancelled handlings get to hand their events back.
const HAND_BACK_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping agent waits for NATS to take its last acks and hand-backs.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Why the runtime could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid runtime configuration: {0}")]
    Config(#[from] ValidationError),
    #[error(
        "stream {stream} not found: create the streams first \
         (`choreo streams ensure`, or choreo_bus::streams::ensure_streams)"
    )]
    NoStream { stream: String },
    #[error(
        "stream {stream} (for the run budgets) not found: create the streams first \
         (`choreo streams ensure`, or choreo_bus::streams::ensure_streams)"
    )]
    NoBudgetStream { stream: String },
    #[error("could not bind consumer {agent} on stream {stream}: {source}")]
    Consumer {
        agent: String,
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    /// The server refused the agent's credentials something the start-up needs (its consumer,
    /// its stream): credentials made for another agent, or for an older manifest.
    #[error("agent {agent} cannot start: {refusal}")]
    Refused {
        agent: String,
        #[source]
        refusal: crate::permissions::Refusal,
    },
}

impl RuntimeError {
    /// A missing stream or an unreachable server may come right; a bad configuration or
    /// credentials that do not allow the agent's own consumer will not.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, RuntimeError::Config(_) | RuntimeError::Refused { .. })
    }
}

/// Runs one agent: binds its consumer and handles events until shut down.
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use choreo_bus::{Agent, Emit, EventType, Incoming, Runtime, handler_fn};
/// let agent = Agent::builder("counter").subscribes("text.submitted").emits("text.counted").build()?;
/// let handler = handler_fn(|event: Incoming| async move {
///     let counted = EventType::new("text.counted").map_err(choreo_bus::HandlerError::permanent)?;
///     Ok(vec![Emit::json(counted, &event.data.len()).map_err(choreo_bus::HandlerError::permanent)?])
/// });
/// Runtime::new(client, agent, handler)
///     .run(choreo_bus::shutdown::signal())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Runtime<H> {
    client: async_nats::Client,
    agent: Agent,
    handler: H,
    config: RuntimeConfig,
    /// Shared with the handler when it counts its own (model calls); new when not given.
    metrics: Option<AgentMetrics>,
}

impl<H: Handler> Runtime<H> {
    pub fn new(client: async_nats::Client, agent: Agent, handler: H) -> Self {
        Runtime {
            client,
            agent,
            handler,
            config: RuntimeConfig::default(),
            metrics: None,
        }
    }

    /// Serves `metrics`, which the handler may count into too, instead of new ones.
    pub fn metrics(mut self, metrics: AgentMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Handles events until `shutdown` completes, then drains and returns.
    ///
    /// Errors only when it cannot start (bad configuration, no stream); once running, lost
    /// connections and failing handlers are dealt with, not returned.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), RuntimeError> {
        self.config.validate()?;
        if let Some(undeclared) = self
            .config
            .guards
            .publish_rates
            .keys()
            .find(|t| !self.agent.may_emit(t))
        {
            return Err(RuntimeError::Config(ValidationError::new(
                "publish-rate",
                format!(
                    "agent {} has a publish rate for {undeclared}, which it does not emit",
                    self.agent.name()
                ),
            )));
        }
        let jetstream = jetstream::new(self.client.clone());
        let consumer = bind_consumer(&jetstream, &self.agent, &self.config).await?;
        let budget = self.budget(&jetstream).await?;
        let guards = Guards::new(&self.config.guards, budget, HANDLER_BREAKER)?;
        info!(
            agent = %self.agent.name(),
            subscribes = ?self.agent.subscribes().iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            config = ?self.config,
            "agent started"
        );

        let publisher = Publisher::new(jetstream.clone(), self.config.namespace.clone());
        let mut companions = tokio::task::JoinSet::new();
        let metrics = match &self.metrics {
            Some(metrics) => metrics.clone(),
            None => AgentMetrics::new(self.agent.name()),
        };
        if let Some(address) = self.config.metrics_listen {
            let listener = crate::metrics::bind(address).await.map_err(|err| {
                RuntimeError::Config(ValidationError::new(
                    "metrics-listen",
                    format!("cannot serve metrics on {address}: {err}"),
                ))
            })?;
            companions.spawn(metrics.clone().serve(listener, self.client.clone()));
        }
        for breaker in guards
            .breaker
            .iter()
            .cloned()
            .chain(self.handler.breakers())
        {
            companions.spawn(announce_transitions(
                breaker,
                publisher.clone(),
                self.agent.name().clone(),
                metrics.clone(),
            ));
        }
        if self.config.metrics_listen.is_some() {
            companions.spawn(lag::watch(
                jetstream.clone(),
                self.config.namespace.stream_name(),
                self.agent.name().to_string(),
                metrics.clone(),
            ));
        }
        let leases = Leases::counted_in(metrics.in_flight().clone());
        companions.spawn(
            leases
                .clone()
                .keep(self.client.clone(), self.config.ack_wait),
        );
        // Live on the Services API, so `choreo agents` sees this copy. An agent whose
        // credentials do not allow `$SRV.>` still runs, unseen.
        let presence = match presence::announce(
            &self.client,
            &self.agent,
            &self.config.namespace,
            self.handler.describe(),
            metrics.clone(),
        )
        .await
        {
            Ok(presence) => {
                companions.spawn(presence::check_seen(
                    self.client.clone(),
                    presence.0.info().await,
                ));
                Some(presence)
            }
            Err(err) => {
                warn!(agent = %self.agent.name(), error = %err, "cannot register on the NATS Services API ($SRV); choreo agents will not list this copy");
                None
            }
        };
        let stopping = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        let worker = Arc::new(Worker {
            publisher,
            dead_letters: DeadLetterWriter::new(
                jetstream.clone(),
                self.config.namespace.clone(),
                self.agent.name().clone(),
            ),
            jetstream: jetstream.clone(),
            agent: self.agent,
            handler: self.handler,
            config: self.config,
            guards,
            deferrals: Deferrals::default(),
            leases,
            stopping: Arc::clone(&stopping),
            cancel: cancel.clone(),
            metrics: metrics.clone(),
        });
        let dispatcher = {
            let worker = Arc::clone(&worker);
            SerialByKey::new(worker.config.concurrency, move |held: Held| {
                let worker = Arc::clone(&worker);
                async move { worker.work(held).await }
            })
        };

        let mut shutdown = std::pin::pin!(shutdown);
        metrics.set_ready(true);
        let unstarted = pull::pull(&jetstream, consumer, &worker, &dispatcher, &mut shutdown).await;
        metrics.set_ready(false);

        // Shutting down: start nothing new, give back what was not started, let running
        // handlers finish within the grace, then cancel them and give their events back too.
        let agent = worker.agent.name().clone();
        info!(%agent, running = worker.leases.len(), "shutting down: finishing events in hand");
        stopping.store(true, Ordering::SeqCst);
        for held in unstarted {
            worker.hand_back(held).await;
        }
        let grace = worker.config.shutdown_grace;
        if tokio::time::timeout(grace, dispatcher.wait_idle())
            .await
            .is_err()
        {
            warn!(%agent, ?grace, "handlers still running after the shutdown grace; cancelling them and handing their events back");
            cancel.cancel();
            if tokio::time::timeout(HAND_BACK_GRACE, dispatcher.wait_idle())
                .await
                .is_err()
            {
                warn!(%agent, "some events could not be handed back; they are redelivered after ack_wait");
            }
        }
        companions.abort_all();
        if let Some((service, answering)) = presence {
            answering.abort();
            if let Err(err) = service.stop().await {
                warn!(error = %err, "could not leave the Services API");
            }
        }
        // Bounded: with the server gone, a flush waits for the reconnection, and the process
        // would ignore its SIGTERM until killed. What is not flushed is redelivered.
        match tokio::time::timeout(FLUSH_GRACE, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(error = %err, "could not flush acks on shutdown; unacked events will be redelivered");
            }
            Err(_) => {
                warn!(
                    ?FLUSH_GRACE,
                    "NATS did not take the last acks in time (is it reachable?); unacked events will be redelivered"
                );
            }
        }
        info!(%agent, "stopped");
        Ok(())
    }

    /// The run budget, if one is configured; its counter stream must exist.
    async fn budget(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<Option<CorrelationBudget>, RuntimeError> {
        let limits = self.config.guards.budget;
        if limits.max_events.is_none()
            && limits.max_tokens.is_none()
            && limits.max_cost_micros.is_none()
        {
            return Ok(None);
        }
        match jetstream
            .get_stream_no_info(crate::streams::BUDGET_STREAM)
            .await
        {
            Ok(_) => {}
            Err(err) if crate::streams::is_stream_not_found(&err) => {
                return Err(RuntimeError::NoBudgetStream {
                    stream: crate::streams::BUDGET_STREAM.to_string(),
                });
            }
            Err(err) => {
                return Err(RuntimeError::Consumer {
                    agent: self.agent.name().to_string(),
                    stream: crate::streams::BUDGET_STREAM.to_string(),
                    source: err.into(),
                });
            }
        }
        Ok(Some(CorrelationBudget::new(
            self.client.clone(),
            self.config.namespace.clone(),
            limits,
        )))
    }
}

/// Logs a breaker's transitions and publishes each as a `choreo.breaker.*` event.
async fn announce_transitions(
    breaker: CircuitBreaker,
    publisher: Publisher,
    agent: AgentName,
    metrics: AgentMetrics,
) {
    let mut transitions = breaker.transitions();
    metrics.breaker(breaker.name(), breaker.state(), false);
    loop {
        let transition = match transitions.recv().await {
            Ok(transition) => transition,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                warn!(%agent, breaker = breaker.name(), missed, "breaker transitions missed");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        metrics.breaker(breaker.name(), transition.to, true);
        if transition.to == BreakerState::Open {
            warn!(%agent, breaker = %transition.breaker, from = %transition.from, reason = %transition.reason, "circuit breaker opened");
        } else {
            info!(%agent, breaker = %transition.breaker, from = %transition.from, to = %transition.to, reason = %transition.reason, "circuit breaker changed");
        }
        if let Err(err) = publish_transition(&publisher, &agent, &breaker, &transition).await {
            warn!(%agent, breaker = breaker.name(), error = %err, "could not publish a breaker transition");
        }
    }
}

async fn publish_transition(
    publisher: &Publisher,
    agent: &AgentName,
    breaker: &CircuitBreaker,
    transition: &Transition,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    #[derive(serde::Serialize)]
    struct Announcement<'a> {
        agent: &'a str,
        #[serde(flatten)]
        transition: &'a Transition,
        open_for_ms: u128,
    }
    let event_type = crate::names::EventType::new(transition.to.event_type())?;
    let emit = Emit::json(
        event_type,
        &Announcement {
            agent: agent.as_str(),
            transition,
            open_for_ms: breaker.config().open_for.as_millis(),
        },
    )?;
    let root = RootEvent::new(emit, agent.as_str())
        .with_correlation_id(format!("breaker-{agent}-{}", breaker.name()));
    publisher.publish_root(root).await?;
    Ok(())
}

/// Every JetStream API request: a refusal of any of them during the consumer's set-up is the
/// set-up's.
const JS_API: &str = "$JS.API.>";

/// Creates or updates the agent's durable consumer.
pub(super) async fn bind_consumer(
    jetstream: &jetstream::Context,
    agent: &Agent,
    config: &RuntimeConfig,
) -> Result<PullConsumer, RuntimeError> {
    let stream_name = config.namespace.stream_name();
    let refused = |refusal| RuntimeError::Refused {
        agent: agent.name().to_string(),
        refusal,
    };
    let stream = crate::permissions::refused_or(JS_API, jetstream.get_stream(&stream_name))
        .await
        .map_err(refused)?
        .map_err(|err| {
            if crate::streams::is_stream_not_found(&err) {
                RuntimeError::NoStream {
                    stream: stream_name.clone(),
                }
            } else {
                RuntimeError::Consumer {
                    agent: agent.name().to_string(),
                    stream: stream_name.clone(),
                    source: err.into(),
                }
            }
        })?;
    let consumer_config = PullConfig {
        durable_name: Some(agent.name().to_string()),
        description: Some(format!("choreo agent {}", agent.name())),
        filter_subjects: agent
            .subscribes()
            .iter()
            .map(|t| config.namespace.type_filter(t))
            .collect(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        // The runtime counts deliveries itself, so it can dead-letter with the reason; the
        // server never silently stops redelivering.
        max_deliver: -1,
        max_ack_pending: config.max_ack_pending,
        ..PullConfig::default()
    };
    crate::permissions::refused_or(JS_API, stream.create_consumer(consumer_config))
        .await
        .map_err(refused)?
        .map_err(|err| RuntimeError::Consumer {
            agent: agent.name().to_string(),
            stream: stream_name,
            source: err.into(),
        })
}
