//! The agent runtime: durable pull consumer → decode → handler → publish children → ack.
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

mod agent;
mod config;
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

pub use agent::{Agent, AgentBuilder, FnHandler, Handler, HandlerError, Incoming, handler_fn};
pub use config::{Backoff, RuntimeConfig};
pub use disposition::{Disposition, decide};

use crate::dead_letter::{DeadLetterReason, DeadLetterWriter, Original};
use crate::envelope::{self, stamp_child};
use crate::names::ValidationError;
use crate::publish::Publisher;

use dispatch::SerialByKey;

/// How often the server sends idle heartbeats on a pull, so a dead connection is noticed.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
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
        let jetstream = jetstream::new(self.client.clone());
        let mut consumer = bind_consumer(&jetstream, &self.agent, &self.config).await?;
        info!(
            agent = %self.agent.name(),
            subscribes = ?self.agent.subscribes().iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            config = ?self.config,
            "agent started"
        );

        let stopping = Arc::new(AtomicBool::new(false));
        let worker = Arc::new(Worker {
            publisher: Publisher::new(jetstream.clone(), self.config.namespace.clone()),
            dead_letters: DeadLetterWriter::new(
                jetstream.clone(),
                self.config.namespace.clone(),
                self.agent.name().clone(),
            ),
            agent: self.agent,
            handler: self.handler,
            config: self.config,
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

        let mut shutdown = std::pin::pin!(shutdown);
        let mut pending_stream: Option<pull::Stream> = None;
        'pulling: loop {
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(worker.config.batch)
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
        if let Err(err) = self.client.flush().await {
            warn!(error = %err, "could not flush acks on shutdown; unacked events will be redelivered");
        }
        info!(agent = %worker.agent.name(), "stopped");
        Ok(())
    }
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
    if let Err(err) = message.ack_with(AckKind::Nak(None)).await {
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
        let undecoded = Original {
            subject: message.subject.as_str(),
            payload: &message.payload,
            stream: &stream,
            stream_sequence,
            delivery_count: delivered,
            event: None,
        };

        let event = match envelope::decode(&message.payload) {
            Ok(event) => event,
            Err(err) => {
                let disposition = Disposition::DeadLetter {
                    reason: DeadLetterReason::DecodeFailed,
                    error: err.to_string(),
                };
                self.settle(&message, undecoded, disposition).await;
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
            if delivered > self.config.max_deliveries {
                let disposition = Disposition::DeadLetter {
                    reason: DeadLetterReason::HandlerFailed,
                    error: format!(
                        "delivered {delivered} times without completing; the agent may be crashing on it"
                    ),
                };
                let decoded = Original {
                    event: Some(&event),
                    ..undecoded
                };
                self.settle(&message, decoded, disposition).await;
                return;
            }
            let incoming = Incoming {
                event,
                delivery: delivered,
                stream_sequence,
            };
            let outcome = AssertUnwindSafe(self.handler.handle(&incoming))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(HandlerError::Retryable(panic_message(&panic))));
            if let Err(err) = &outcome {
                warn!(error = %err, retryable = err.is_retryable(), "handler failed");
            }
            let disposition = decide(&self.agent, &self.config, delivered, outcome);
            let decoded = Original {
                event: Some(&incoming.event),
                ..undecoded
            };
            self.settle(&message, decoded, disposition).await;
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
        disposition: Disposition,
    ) {
        let delivered = original.delivery_count;
        let disposition = match (disposition, original.event) {
            (Disposition::Publish(emits), Some(parent)) => {
                match self.publish_children(parent, emits).await {
                    Ok(count) => {
                        debug!(children = count, "handled");
                        ack(message, AckKind::Ack).await;
                        return;
                    }
                    Err(err) => {
                        warn!(error = %err, "could not publish children; will retry");
                        disposition::retry_or_give_up(
                            &self.config,
                            delivered,
                            format!("publishing children failed: {err}"),
                        )
                    }
                }
            }
            (disposition, _) => disposition,
        };
        match disposition {
            Disposition::Publish(_) => {
                // Only reachable without a decoded parent, which never publishes.
                ack(message, AckKind::Ack).await;
            }
            Disposition::Retry(delay) => ack(message, AckKind::Nak(Some(delay))).await,
            Disposition::DeadLetter { reason, error } => {
                match self.dead_letters.write(original, reason, &error).await {
                    Ok(()) => {
                        error!(reason = %reason, error = %error, "dead-lettered");
                        ack(message, AckKind::Term).await;
                    }
                    Err(err) => {
                        // Never terminate without the dead letter stored: try again later.
                        warn!(error = %err, "could not store dead letter; will retry");
                        let delay = self.config.backoff.delay(delivered);
                        ack(message, AckKind::Nak(Some(delay))).await;
                    }
                }
            }
        }
    }

    /// Stamps and publishes children, waiting until the stream has stored every one.
    async fn publish_children(
        &self,
        parent: &choreo_proto::v1::Event,
        emits: Vec<envelope::Emit>,
    ) -> Result<usize, crate::publish::PublishError> {
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
