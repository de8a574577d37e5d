//! The agent runtime: durable pull consumer → decode → guards → handler → guards → publish
//! children → ack.
//!
//! # What it promises
//!
//! - **Shared work.** Every copy of an agent binds the same durable consumer (named after the
//!   agent), so starting more processes spreads events among them; each event goes to one.
//! - **Order per run.** Within one process, events of one correlation are handled one after
//!   another in stream order; different correlations are handled concurrently, up to
//!   [`RuntimeConfig::concurrency`]. Across processes there is no order between copies: two
//!   events of one run may be handled by two copies at once. A retried event comes back after
//!   its backoff, behind events that arrived meanwhile.
//! - **Exactly once in effect.** Children are published and confirmed *before* the input is
//!   acked, and their ids are derived from (input id, agent, index). A crash between the two
//!   means a redelivery that republishes the same ids, which the stream's duplicate window
//!   drops. The handler may run again; what it emits is stored once.
//! - **Failures.** A retryable handler error NAKs with [`Backoff`] until
//!   [`RuntimeConfig::max_deliveries`], then the event is dead-lettered and terminated. A
//!   permanent error, an undeclared emitted type, or bytes that do not decode are dead-lettered
//!   at once. A dead letter is always stored before the input is terminated, and one poison
//!   event never blocks those behind it. A panicking handler counts as a retryable failure.
//! - **Shutdown.** When the shutdown future completes the runtime stops pulling, hands back
//!   (NAKs) what it fetched but had not started, lets events in hand finish, publish and ack
//!   (for up to [`RuntimeConfig::shutdown_grace`]), flushes, and returns.
//! - **Reconnects.** A lost connection is waited out; the consumer is rebound if it vanished.
//! - **Storm control.** The guards of [`crate::guard`] run around every event: the cycle limit
//!   and the handling rate before the handler, the handler's circuit breaker around it, the
//!   depth limit, the run's budget and the publishing rates before its children are published.
//!   While the handler's breaker is open the runtime stops pulling and hands what it holds back
//!   with a delay; half-open, it pulls only as many events as the breaker has probes. Breaker
//!   transitions (the handler's and those of [`Handler::breakers`]) are logged and published as
//!   `choreo.breaker.*` events in the correlation `breaker-<agent>-<breaker>`.

mod agent;
mod config;
mod deferrals;
mod dispatch;
mod disposition;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use futures::{FutureExt, StreamExt, future::join_all};
use tracing::{Instrument, debug, error, info, info_span, warn};

pub use agent::{
    Agent, AgentBuilder, FnHandler, Handler, HandlerError, HandlerErrorKind, Incoming, handler_fn,
};
pub use config::{Backoff, RuntimeConfig};
pub use disposition::{Disposition, decide};

use crate::dead_letter::{DeadLetterReason, DeadLetterWriter, Original, REDRIVE_FOR};
use crate::envelope::{self, Emit, RootEvent, stamp_child};
use crate::guard::{
    BreakerState, BudgetError, CircuitBreaker, CorrelationBudget, Guards, Stop, Transition,
};
use crate::names::{AgentName, ValidationError};
use crate::publish::{PublishError, Publisher};

use deferrals::Deferrals;
use dispatch::SerialByKey;

/// How often the server sends idle heartbeats on a pull, so a dead connection is noticed.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// The name of the breaker around the handler: its transitions are in the run
/// `breaker-<agent>-handler`.
pub const HANDLER_BREAKER: &str = "handler";
/// Pause before rebinding the consumer after the pull stream ended.
const REBIND_DELAY: Duration = Duration::from_secs(1);

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
    #[error("could not bind consumer {agent} on stream {stream}: {detail}")]
    Consumer {
        agent: String,
        stream: String,
        detail: String,
    },
}

impl RuntimeError {
    /// A missing stream or an unreachable server may come right; a bad configuration will not.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, RuntimeError::Config(_))
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
}

impl<H: Handler> Runtime<H> {
    pub fn new(client: async_nats::Client, agent: Agent, handler: H) -> Self {
        Runtime {
            client,
            agent,
            handler,
            config: RuntimeConfig::default(),
        }
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
        let mut consumer = bind_consumer(&jetstream, &self.agent, &self.config).await?;
        let budget = self.budget(&jetstream).await?;
        let guards = Guards::new(&self.config.guards, budget, HANDLER_BREAKER)?;
        info!(
            agent = %self.agent.name(),
            subscribes = ?self.agent.subscribes().iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            config = ?self.config,
            "agent started"
        );

        let publisher = Publisher::new(jetstream.clone(), self.config.namespace.clone());
        let mut announcers = tokio::task::JoinSet::new();
        for breaker in guards
            .breaker
            .iter()
            .cloned()
            .chain(self.handler.breakers())
        {
            announcers.spawn(announce_transitions(
                breaker,
                publisher.clone(),
                self.agent.name().clone(),
            ));
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let worker = Arc::new(Worker {
            publisher,
            dead_letters: DeadLetterWriter::new(
                jetstream.clone(),
                self.config.namespace.clone(),
                self.agent.name().clone(),
            ),
            agent: self.agent,
            handler: self.handler,
            config: self.config,
            guards,
            deferrals: Deferrals::default(),
            stopping: Arc::clone(&stopping),
        });
        let dispatcher = {
            let worker = Arc::clone(&worker);
            SerialByKey::new(
                worker.config.concurrency,
                move |message: jetstream::Message| {
                    let worker = Arc::clone(&worker);
                    async move { worker.work(message).await }
                },
            )
        };
        let breaker = worker.guards.breaker.clone();

        let mut shutdown = std::pin::pin!(shutdown);
        let mut pending_stream: Option<pull::Stream> = None;
        'pulling: loop {
            // An open breaker: pull nothing until it lets probes through.
            if let Some(breaker) = &breaker
                && breaker.state() == BreakerState::Open
            {
                if wait_or_shutdown(&mut shutdown, breaker.open_remaining()).await {
                    break 'pulling;
                }
                continue 'pulling;
            }
            // Probing a half-open breaker: fetch no more than it will let through, so a failing
            // probe leaves little in hand to give back.
            let pace = match &breaker {
                Some(breaker) if breaker.state() != BreakerState::Closed => {
                    Pace::Probing(usize::try_from(breaker.config().half_open_probes).unwrap_or(1))
                }
                _ => Pace::Normal(worker.pull_batch()),
            };
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(pace.batch())
                .heartbeat(PULL_HEARTBEAT)
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(err) => {
                    warn!(agent = %worker.agent.name(), error = %err, "cannot pull yet; retrying");
                    if wait_or_shutdown(&mut shutdown, REBIND_DELAY).await {
                        break 'pulling;
                    }
                    continue 'pulling;
                }
            };
            loop {
                let next = tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        pending_stream = Some(messages);
                        break 'pulling;
                    }
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        if let Some(breaker) = &breaker {
                            match gate(breaker, pace, &mut shutdown).await {
                                Gate::Pass => {}
                                Gate::HandBack(delay) => {
                                    // Opened, or closed while probing: give back what is held
                                    // and pull again at the new pace.
                                    worker.defer(&message, delay).await;
                                    while let Some(Some(Ok(held))) = messages.next().now_or_never()
                                    {
                                        worker.defer(&held, delay).await;
                                    }
                                    continue 'pulling;
                                }
                                Gate::Shutdown => {
                                    hand_back(&message).await;
                                    pending_stream = Some(messages);
                                    break 'pulling;
                                }
                            }
                        }
                        let key = worker
                            .config
                            .namespace
                            .correlation_of_subject(&message.subject)
                            .unwrap_or_default()
                            .to_string();
                        let Err(message) = dispatcher.try_enqueue(&key, message) else {
                            continue;
                        };
                        let slot = tokio::select! {
                            biased;
                            () = &mut shutdown => {
                                hand_back(&message).await;
                                pending_stream = Some(messages);
                                break 'pulling;
                            }
                            slot = dispatcher.slot() => slot,
                        };
                        match slot {
                            Some(slot) => dispatcher.start(&key, message, slot),
                            None => {
                                hand_back(&message).await;
                                break 'pulling;
                            }
                        }
                    }
                    Some(Err(err)) => {
                        use pull::MessagesErrorKind as Kind;
                        match err.kind() {
                            Kind::MissingHeartbeat
                            | Kind::Pull
                            | Kind::NoResponders
                            | Kind::Other => {
                                debug!(agent = %worker.agent.name(), error = %err, "pull interrupted; continuing");
                            }
                            Kind::ConsumerDeleted
                            | Kind::PushBasedConsumer
                            | Kind::RequestLimitExceeded => {
                                warn!(agent = %worker.agent.name(), error = %err, "consumer lost; rebinding");
                                break;
                            }
                        }
                    }
                    None => break,
                }
            }
            // The pull stream ended: rebind the consumer (it may have been deleted, or the
            // server restarted without its state) and pull again.
            loop {
                if wait_or_shutdown(&mut shutdown, REBIND_DELAY).await {
                    break 'pulling;
                }
                match bind_consumer(&jetstream, &worker.agent, &worker.config).await {
                    Ok(rebound) => {
                        consumer = rebound;
                        continue 'pulling;
                    }
                    Err(err) => {
                        warn!(agent = %worker.agent.name(), error = %err, "cannot rebind consumer yet")
                    }
                }
            }
        }

        // Shutting down: stop taking work, hand back what was fetched but not started, let
        // what is in hand finish.
        info!(agent = %worker.agent.name(), "shutting down: finishing events in hand");
        stopping.store(true, Ordering::SeqCst);
        if let Some(mut messages) = pending_stream {
            while let Some(Some(Ok(message))) = messages.next().now_or_never() {
                hand_back(&message).await;
            }
        }
        if tokio::time::timeout(worker.config.shutdown_grace, dispatcher.wait_idle())
            .await
            .is_err()
        {
            warn!(
                agent = %worker.agent.name(),
                grace = ?worker.config.shutdown_grace,
                "events still in hand after the shutdown grace; they will be redelivered"
            );
        }
        announcers.abort_all();
        if let Err(err) = self.client.flush().await {
            warn!(error = %err, "could not flush acks on shutdown; unacked events will be redelivered");
        }
        info!(agent = %worker.agent.name(), "stopped");
        Ok(())
    }

    /// The run budget, if one is configured; its counter stream must exist.
    async fn budget(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<Option<CorrelationBudget>, RuntimeError> {
        let limits = self.config.guards.budget;
        if limits.max_events.is_none() && limits.max_tokens.is_none() {
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
                    detail: err.to_string(),
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

/// How many events a pull may fetch: the full batch, or a half-open breaker's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    Normal(usize),
    Probing(usize),
}

impl Pace {
    fn batch(self) -> usize {
        match self {
            Pace::Normal(batch) | Pace::Probing(batch) => batch.max(1),
        }
    }
}

/// What the handler's breaker says about dispatching the next event.
enum Gate {
    Pass,
    /// Give back what the pull holds, after this delay, and pull again at the breaker's pace.
    HandBack(Duration),
    Shutdown,
}

/// Waits until the breaker admits a call, or says why the pull must be rebuilt.
async fn gate(
    breaker: &CircuitBreaker,
    pace: Pace,
    shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> Gate {
    loop {
        let changed = breaker.changed();
        let mut changed = std::pin::pin!(changed);
        changed.as_mut().enable();
        match (breaker.state(), pace) {
            (BreakerState::Open, _) => return Gate::HandBack(breaker.open_remaining()),
            (BreakerState::Closed, Pace::Normal(_)) => return Gate::Pass,
            (BreakerState::Closed, Pace::Probing(_)) => return Gate::HandBack(Duration::ZERO),
            (BreakerState::HalfOpen, _) if breaker.would_admit() => return Gate::Pass,
            (BreakerState::HalfOpen, _) => {}
        }
        // Half-open with every probe out: hold the event until a probe settles.
        tokio::select! {
            () = shutdown.as_mut() => return Gate::Shutdown,
            () = changed => {}
        }
    }
}

/// Logs a breaker's transitions and publishes each as a `choreo.breaker.*` event.
async fn announce_transitions(breaker: CircuitBreaker, publisher: Publisher, agent: AgentName) {
    let mut transitions = breaker.transitions();
    loop {
        let transition = match transitions.recv().await {
            Ok(transition) => transition,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                warn!(%agent, breaker = breaker.name(), missed, "breaker transitions missed");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
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

/// Creates or updates the agent's durable consumer.
async fn bind_consumer(
    jetstream: &jetstream::Context,
    agent: &Agent,
    config: &RuntimeConfig,
) -> Result<PullConsumer, RuntimeError> {
    let stream_name = config.namespace.stream_name();
    let stream = jetstream.get_stream(&stream_name).await.map_err(|err| {
        if crate::streams::is_stream_not_found(&err) {
            RuntimeError::NoStream {
                stream: stream_name.clone(),
            }
        } else {
            RuntimeError::Consumer {
                agent: agent.name().to_string(),
                stream: stream_name.clone(),
                detail: err.to_string(),
            }
        }
    })?;
    let consumer_config = pull::Config {
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
        ..pull::Config::default()
    };
    stream
        .create_consumer(consumer_config)
        .await
        .map_err(|err| RuntimeError::Consumer {
            agent: agent.name().to_string(),
            stream: stream_name,
            detail: err.to_string(),
        })
}

/// Sleeps for `delay` unless shutdown comes first; true if it did.
async fn wait_or_shutdown(
    shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    delay: Duration,
) -> bool {
    tokio::select! {
        () = shutdown.as_mut() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Gives an unstarted event back to the server for immediate redelivery (to another copy).
async fn hand_back(message: &jetstream::Message) {
    hand_back_after(message, Duration::ZERO).await;
}

/// Gives an unstarted event back to the server, to be redelivered after `delay`.
async fn hand_back_after(message: &jetstream::Message, delay: Duration) {
    let kind = if delay.is_zero() {
        AckKind::Nak(None)
    } else {
        AckKind::Nak(Some(delay))
    };
    if let Err(err) = message.ack_with(kind).await {
        debug!(error = %err, "could not hand back an event; it is redelivered after ack_wait");
    }
}

/// Everything a worker needs to handle one event.
struct Worker<H> {
    agent: Agent,
    handler: H,
    config: RuntimeConfig,
    publisher: Publisher,
    dead_letters: DeadLetterWriter,
    guards: Guards,
    deferrals: Deferrals,
    stopping: Arc<AtomicBool>,
}

impl<H: Handler> Worker<H> {
    async fn work(&self, message: jetstream::Message) {
        // Fetched before shutdown but not started: give it back rather than start new work.
        if self.stopping.load(Ordering::SeqCst) {
            hand_back(&message).await;
            return;
        }
        let (stream, stream_sequence, delivered) = match message.info() {
            Ok(info) => (
                info.stream.to_string(),
                info.stream_sequence,
                u64::try_from(info.delivered).unwrap_or(1),
            ),
            Err(err) => {
                error!(agent = %self.agent.name(), error = %err, "message without JetStream metadata; ignored");
                return;
            }
        };
        // A redrive is for the one agent that gave up on the event; the others handled it.
        if let Some(target) = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(REDRIVE_FOR))
            && target.as_str() != self.agent.name().as_str()
        {
            debug!(agent = %self.agent.name(), redrive_for = target.as_str(), "redrive for another agent; skipped");
            ack(&message, AckKind::Ack).await;
            return;
        }
        // Deliveries spent waiting on a breaker are not attempts (see deferrals.rs).
        let attempts = self.deferrals.attempts(stream_sequence, delivered);
        let undecoded = Original {
            subject: message.subject.as_str(),
            payload: &message.payload,
            stream: &stream,
            stream_sequence,
            delivery_count: delivered,
            event: None,
        };

        let event = match envelope::decode(message.payload.clone()) {
            Ok(event) => event,
            Err(err) => {
                let disposition = Disposition::DeadLetter {
                    reason: DeadLetterReason::DecodeFailed,
                    error: err.to_string(),
                };
                self.settle(&message, undecoded, attempts, disposition)
                    .await;
                return;
            }
        };
        let span = info_span!(
            "handle",
            agent = %self.agent.name(),
            event_id = %event.id,
            event_type = %event.r#type,
            correlation_id = %event.correlation_id,
            causation_id = %event.causation_id,
            depth = event.depth,
            delivery = delivered,
        );
        async {
            // Delivered more often than allowed without an answer: the agent has been dying
            // while handling it (a crash, an OOM kill). Do not try again.
            if attempts > self.config.max_deliveries {
                let disposition = Disposition::DeadLetter {
                    reason: DeadLetterReason::HandlerFailed,
                    error: format!(
                        "delivered {attempts} times without completing; the agent may be crashing on it"
                    ),
                };
                let decoded = Original {
                    event: Some(&event),
                    ..undecoded
                };
                self.settle(&message, decoded, attempts, disposition).await;
                return;
            }
            if let Some(cycle) = &self.guards.cycle
                && let Err(stop) = cycle.check(self.agent.name(), &event)
            {
                let decoded = Original {
                    event: Some(&event),
                    ..undecoded
                };
                self.settle(&message, decoded, attempts, stop.into()).await;
                return;
            }
            if let Some(limiter) = &self.guards.handle_rate {
                limiter.acquire().await;
            }
            let permit = match self.guards.breaker.as_ref().map(CircuitBreaker::try_acquire) {
                Some(Err(open)) => {
                    // Refused without calling: not a failure, so it costs no retry.
                    debug!(retry_in = ?open.retry_in, "handler breaker open; handing the event back");
                    self.defer(&message, open.retry_in).await;
                    return;
                }
                Some(Ok(permit)) => Some(permit),
                None => None,
            };
            let incoming = Incoming {
                event,
                delivery: delivered,
                stream_sequence,
            };
            let outcome = AssertUnwindSafe(self.handler.handle(&incoming))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(HandlerError::Retryable(panic_message(&panic))));
            let probed = permit.as_ref().is_some_and(|p| p.is_probe());
            if let Some(permit) = permit {
                match &outcome {
                    Ok(_) => permit.success(),
                    Err(err) if self.guards.breaker_ignores.contains(&err.kind()) => permit.ignore(),
                    Err(_) => permit.failure(),
                }
            }
            if let Err(err) = &outcome {
                warn!(error = %err, kind = %err.kind(), "handler failed");
                // A dependency is down (an outbound breaker refused, or this failure tripped the
                // handler's breaker): wait for it rather than spend one of the event's attempts
                // on it. A failed probe does count, so an event that keeps failing the probe is
                // given up on after max deliveries instead of holding the breaker open forever.
                let breaker_wait = self
                    .guards
                    .breaker
                    .as_ref()
                    .filter(|b| {
                        !probed && err.is_retryable() && b.state() != BreakerState::Closed
                    })
                    .map(CircuitBreaker::open_remaining);
                let wait = match (err, breaker_wait) {
                    (_, Some(remaining)) => Some(remaining),
                    (HandlerError::Unavailable { retry_after, .. }, None) => Some(*retry_after),
                    _ => None,
                };
                if let Some(wait) = wait {
                    self.defer(&message, wait).await;
                    return;
                }
            }
            let disposition = decide(&self.agent, &self.config, attempts, outcome);
            let decoded = Original {
                event: Some(&incoming.event),
                ..undecoded
            };
            self.settle(&message, decoded, attempts, disposition).await;
        }
        .instrument(span)
        .await;
    }

    /// Carries out a disposition. Every path ends in ack, NAK or term, and an input is only
    /// acked or terminated once what it produced (children, dead letter) is stored.
    async fn settle(
        &self,
        message: &jetstream::Message,
        original: Original<'_>,
        attempts: u64,
        disposition: Disposition,
    ) {
        let disposition = match (disposition, original.event) {
            (Disposition::Publish(emits), Some(parent)) => {
                match self.publish_children(parent, emits).await {
                    Ok(count) => {
                        debug!(children = count, "handled");
                        self.deferrals.forget(original.stream_sequence);
                        ack(message, AckKind::Ack).await;
                        return;
                    }
                    Err(ChildrenError::Stopped(stop)) => stop.into(),
                    Err(err @ ChildrenError::Failed(_)) => {
                        warn!(error = %err, "could not publish children; will retry");
                        disposition::retry_or_give_up(&self.config, attempts, err.to_string())
                    }
                }
            }
            (disposition, _) => disposition,
        };
        match disposition {
            Disposition::Publish(_) => {
                // Only reachable without a decoded parent, which never publishes.
                self.deferrals.forget(original.stream_sequence);
                ack(message, AckKind::Ack).await;
            }
            Disposition::Retry(delay) => ack(message, AckKind::Nak(Some(delay))).await,
            Disposition::DeadLetter { reason, error } => {
                match self.dead_letters.write(original, reason, &error).await {
                    Ok(()) => {
                        error!(reason = %reason, error = %error, "dead-lettered");
                        self.deferrals.forget(original.stream_sequence);
                        ack(message, AckKind::Term).await;
                    }
                    Err(err) => {
                        // Never terminate without the dead letter stored: try again later.
                        warn!(error = %err, "could not store dead letter; will retry");
                        let delay = self.config.backoff.delay(attempts);
                        ack(message, AckKind::Nak(Some(delay))).await;
                    }
                }
            }
        }
    }

    /// Hands an event back untried (or blamed on a down dependency) for redelivery after
    /// `delay`, without counting the delivery as an attempt.
    async fn defer(&self, message: &jetstream::Message, delay: Duration) {
        if let Ok(info) = message.info() {
            self.deferrals.record(info.stream_sequence);
        }
        hand_back_after(message, delay.max(disposition::MIN_BREAKER_WAIT)).await;
    }

    /// Runs the publishing guards, then stamps and publishes children, waiting until the
    /// stream has stored every one.
    async fn publish_children(
        &self,
        parent: &choreo_proto::v1::Event,
        emits: Vec<Emit>,
    ) -> Result<usize, ChildrenError> {
        if emits.is_empty() {
            return Ok(0);
        }
        if let Some(depth) = &self.guards.depth {
            depth.check_children(parent)?;
        }
        if let Some(budget) = &self.guards.budget {
            let events = u64::try_from(emits.len()).unwrap_or(u64::MAX);
            let tokens = emits.iter().map(|e| e.tokens_used).sum();
            budget
                .charge(&parent.correlation_id, events, tokens)
                .await
                .map_err(|err| match err {
                    BudgetError::Exhausted { .. } => ChildrenError::Stopped(Stop {
                        reason: DeadLetterReason::BudgetExhausted,
                        detail: err.to_string(),
                    }),
                    BudgetError::Unavailable { .. } => ChildrenError::Failed(err.to_string()),
                })?;
        }
        for emit in &emits {
            if let Some(limiter) = self.guards.publish_rates.get(&emit.event_type) {
                limiter.acquire().await;
            }
        }
        let children: Vec<_> = emits
            .into_iter()
            .enumerate()
            .map(|(index, emit)| stamp_child(parent, self.agent.name(), index, emit))
            .collect();
        let mut pending = Vec::with_capacity(children.len());
        for child in &children {
            pending.push(self.publisher.send_event(child).await?);
        }
        for confirmed in join_all(pending.into_iter().map(|p| p.confirmed())).await {
            confirmed?;
        }
        Ok(children.len())
    }

    /// How many events one pull fetches: the configured batch, or about a second of work when
    /// handling is rate-limited, so events wait in the stream rather than in hand.
    fn pull_batch(&self) -> usize {
        match &self.guards.handle_rate {
            Some(limiter) => {
                let limit = limiter.limit();
                let per_second = limit.rate.per_second_f64().ceil();
                // Float to integer: saturating, and the rate is positive.
                let per_second = if per_second >= 1.0 {
                    per_second as usize
                } else {
                    1
                };
                per_second
                    .max(usize::try_from(limit.burst).unwrap_or(usize::MAX))
                    .clamp(1, self.config.batch)
            }
            None => self.config.batch,
        }
    }
}

/// Why children were not published.
#[derive(Debug, thiserror::Error)]
enum ChildrenError {
    /// A guard stopped the run.
    #[error(transparent)]
    Stopped(#[from] Stop),
    /// Publishing failed in a way that may pass.
    #[error("publishing children failed: {0}")]
    Failed(String),
}

impl From<PublishError> for ChildrenError {
    fn from(err: PublishError) -> Self {
        ChildrenError::Failed(err.to_string())
    }
}

impl From<Stop> for Disposition {
    fn from(stop: Stop) -> Self {
        Disposition::DeadLetter {
            reason: stop.reason,
            error: stop.detail,
        }
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(err) = message.ack_with(kind).await {
        // The server will redeliver after ack_wait; children are deduplicated.
        warn!(error = %err, "could not acknowledge; the event will be redelivered");
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_string());
    format!("handler panicked: {text}")
}
