//! The worker: what happens to one delivery between its arrival and its settling. Decode, skip
//! what needs no handling (a redrive for another agent, a redelivery already handled), the
//! guards before the handler, the handler itself (under its timeout, cancelled at the end of a
//! shutdown's grace, panics caught), and the guards and publishing of its children. Each step
//! ends in an [`Outcome`]; `settle.rs` carries out its fate.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use choreo_proto::v1::Event;
use futures::FutureExt;
use futures::future::join_all;
use opentelemetry::context::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

use crate::dead_letter::{DeadLetterReason, DeadLetterWriter, Original, REDRIVE_FOR};
use crate::envelope::{self, Emit, stamp_child};
use crate::guard::{BreakerState, BudgetError, CircuitBreaker, Guards, Stop};
use crate::handling::{ChildHeaders, HANDLED, HandlingEnd, HandlingNotice, Spend, SpendMeter};
use crate::metrics::AgentMetrics;
use crate::names::EventType;
use crate::publish::{PublishError, Publisher};

use super::agent::{Agent, Handler, HandlerError, Incoming};
use super::config::RuntimeConfig;
use super::deferrals::Deferrals;
use super::fate::Outcome;
use super::handled;
use super::lease::{Lease, Leases};

/// How long to wait before trying again when NATS cannot take a publish or a read (a leader
/// election, a lost node): long enough not to spin, short against an election's seconds.
pub(super) const NATS_UNAVAILABLE_WAIT: Duration = Duration::from_secs(1);
/// How long a handled event's children wait in hand for NATS to take them before the event
/// goes back to the stream: past a leader election (seconds), short of hiding an outage.
const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(60);

/// A delivery in hand, with its lease.
#[derive(Debug)]
pub(crate) struct Held {
    pub message: jetstream::Message,
    pub lease: Option<Lease>,
}

impl Held {
    /// A delivery just received: its lease starts now.
    pub fn arrived(message: jetstream::Message, leases: &Leases) -> Held {
        let lease = message.reply.clone().map(|reply| leases.hold(reply));
        Held { message, lease }
    }
}

/// Where a delivery stands: which attempt it is, and where it is in the stream.
#[derive(Debug, Clone)]
pub(super) struct Facts {
    pub stream: String,
    pub stream_sequence: u64,
    /// When the stream stored the message: the same on every delivery.
    pub stored_at: std::time::SystemTime,
    /// Deliveries as the server counts them.
    pub delivered: u64,
    /// Deliveries that were real attempts (not deferred on an outage).
    pub attempts: u64,
}

/// A handler that ran: when its delivery arrived, how long the handler took, what it spent.
#[derive(Debug, Clone)]
pub(super) struct Ran {
    pub received: SystemTime,
    pub took: Duration,
    pub spend: Spend,
}

/// Everything a worker needs to handle one event. Shared by every worker task of a process.
pub(crate) struct Worker<H> {
    pub agent: Agent,
    pub handler: H,
    pub config: RuntimeConfig,
    pub jetstream: jetstream::Context,
    pub publisher: Publisher,
    pub dead_letters: DeadLetterWriter,
    pub guards: Guards,
    pub deferrals: Deferrals,
    pub leases: Leases,
    /// Set at shutdown: start nothing new.
    pub stopping: Arc<AtomicBool>,
    /// Cancelled when the shutdown grace runs out: running handlers are dropped.
    pub cancel: CancellationToken,
    pub metrics: AgentMetrics,
}

impl<H: Handler> Worker<H> {
    pub async fn work(&self, held: Held) {
        let received = SystemTime::now();
        let Held { message, lease } = held;
        let facts = match message.info() {
            Ok(info) => {
                let stream_sequence = info.stream_sequence;
                let delivered = u64::try_from(info.delivered).unwrap_or(1);
                Facts {
                    stream: info.stream.to_string(),
                    stream_sequence,
                    stored_at: info.published.into(),
                    delivered,
                    attempts: self.deferrals.attempts(stream_sequence, delivered),
                }
            }
            Err(err) => {
                error!(agent = %self.agent.name(), error = %err, "message without JetStream metadata; ignored");
                return;
            }
        };
        if facts.delivered > 1 {
            self.metrics.redelivered();
        }
        let original = Original {
            subject: message.subject.as_str(),
            payload: &message.payload,
            stream: &facts.stream,
            stream_sequence: facts.stream_sequence,
            delivery_count: facts.delivered,
            event: None,
        };
        if self.stopping.load(Ordering::SeqCst) {
            // Fetched before shutdown but not started: give it back rather than start new work.
            return self
                .settle(&message, lease, original, &facts, Outcome::Unstarted, None)
                .await;
        }
        if let Some(target) = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(REDRIVE_FOR))
            && target.as_str() != self.agent.name().as_str()
        {
            debug!(agent = %self.agent.name(), redrive_for = target.as_str(), "redrive for another agent; skipped");
            return self
                .settle(
                    &message,
                    lease,
                    original,
                    &facts,
                    Outcome::RedriveForAnother,
                    None,
                )
                .await;
        }
        // What the wire contract refuses (docs/wire-contract.md) is never handled as either the
        // run or the type it claims.
        if let Err(refused) = envelope::contract::check(message.subject.as_str(), &message.payload)
        {
            return self
                .settle(&message, lease, original, &facts, refused.into(), None)
                .await;
        }
        let event = match envelope::decode(message.payload.clone()) {
            // An envelope without a time (a client in another language that left it out) takes
            // the time the stream stored it: the same on every delivery, so the ids of its
            // children, which carry the parent's millisecond when its id is not a UUIDv7, stay
            // the same on a redelivery, and do not sort in 1970.
            Ok(mut event) => {
                if event.time.is_none() {
                    event.time = Some(facts.stored_at.into());
                }
                event
            }
            Err(err) => {
                let outcome = Outcome::Undecodable(err.to_string());
                return self
                    .settle(&message, lease, original, &facts, outcome, None)
                    .await;
            }
        };
        // The span of this handling in the logs. Traces get their consumer span from the
        // OpenTelemetry API directly (below), not from this one: per handling that is a
        // fraction of the work of converting a `tracing` span.
        let span = info_span!(
            crate::telemetry::HANDLE_SPAN,
            // Strings, not `%` (Display): recorded as they are, without `fmt` machinery.
            agent = self.agent.name().as_str(),
            event_id = event.id.as_str(),
            event_type = event.r#type.as_str(),
            correlation_id = event.correlation_id.as_str(),
            causation_id = event.causation_id.as_str(),
            depth = event.depth,
            delivery = facts.delivered,
        );
        let handling = async {
            let (outcome, ran) = self.handle(&event, &facts, received).await;
            if let Some(ran) = &ran {
                self.record_quiet_handling(&event, &facts, ran, &outcome)
                    .await;
            }
            let failure = crate::telemetry::exporting()
                .then(|| handler_failure(&outcome).map(|(_, error)| error))
                .flatten();
            let original = Original {
                event: Some(&event),
                ..original
            };
            self.settle(&message, lease, original, &facts, outcome, ran.as_ref())
                .await;
            failure
        }
        .instrument(span);
        match crate::telemetry::consumer_span(
            self.agent.name().as_str(),
            &event,
            message.subject.as_str(),
            facts.delivered,
        ) {
            None => {
                handling.await;
            }
            Some(consumer) => {
                let failure = handling.with_context(consumer.clone()).await;
                crate::telemetry::end_consumer_span(&consumer, failure);
            }
        }
    }

    /// Everything from the checks before the handler to its answer, with the handler's run
    /// when it ran.
    async fn handle(
        &self,
        event: &Event,
        facts: &Facts,
        received: SystemTime,
    ) -> (Outcome, Option<Ran>) {
        let permit = match self.before_handler(event, facts).await {
            Ok(permit) => permit,
            Err(outcome) => return (outcome, None),
        };
        let spend = SpendMeter::counted_in(self.metrics.clone());
        let (outcome, took) = self.run_handler(event, facts, permit, &spend).await;
        let ran = Ran {
            received,
            took,
            spend: spend.spent(),
        };
        let outcome = self.charge_cost(event, &ran.spend, outcome).await;
        (outcome, Some(ran))
    }

    /// The checks before the handler: an earlier handling already stored, a crash loop, the
    /// cycle guard, the handle rate and the breaker. Gives the breaker's permit, or the outcome
    /// that ends the delivery here.
    async fn before_handler(
        &self,
        event: &Event,
        facts: &Facts,
    ) -> Result<Option<crate::guard::Permit>, Outcome> {
        if facts.delivered > 1 {
            // Boxed: only redeliveries ask, and this future inlined would make every
            // handling's future (and the task spawned for it) several kilobytes larger, which
            // every event pays for in copies.
            match Box::pin(handled::children_stored(
                &self.jetstream,
                &self.config.namespace,
                &self.agent,
                event,
                facts.stream_sequence,
            ))
            .await
            {
                Ok(true) => {
                    debug!("redelivered, but every child of its handling is stored");
                    return Err(Outcome::AlreadyHandled);
                }
                Ok(false) => {}
                // Not knowing, running the handler could pay twice: wait for the log instead.
                Err(err) => {
                    warn!(error = %err, "cannot check the log for an earlier handling; waiting");
                    return Err(Outcome::Unavailable(NATS_UNAVAILABLE_WAIT));
                }
            }
        }
        // Delivered more often than allowed and never completed: the agent keeps dying on it.
        if facts.attempts > self.config.max_deliveries {
            return Err(Outcome::CrashLoop {
                attempts: facts.attempts,
            });
        }
        if let Some(cycle) = &self.guards.cycle
            && let Err(stop) = cycle.check(self.agent.name(), event)
        {
            return Err(Outcome::Stopped(stop));
        }
        if let Some(limiter) = &self.guards.handle_rate {
            let asked = tokio::time::Instant::now();
            limiter.acquire().await;
            self.metrics
                .waited_on("handle", asked.elapsed().as_secs_f64());
        }
        match self
            .guards
            .breaker
            .as_ref()
            .map(CircuitBreaker::try_acquire)
        {
            // Refused without calling: not a failure, so it costs no attempt.
            Some(Err(open)) => Err(Outcome::Unavailable(open.retry_in)),
            Some(Ok(permit)) => Ok(Some(permit)),
            None => Ok(None),
        }
    }

    /// The handler, under its timeout and the shutdown's cancellation, panics caught; its
    /// answer recorded with the breaker. Gives the outcome and how long the handler ran.
    async fn run_handler(
        &self,
        event: &Event,
        facts: &Facts,
        permit: Option<crate::guard::Permit>,
        spend: &SpendMeter,
    ) -> (Outcome, Duration) {
        let incoming = Incoming {
            event: event.clone(),
            delivery: facts.delivered,
            stream_sequence: facts.stream_sequence,
            budget: self
                .guards
                .budget
                .as_ref()
                .map(|budget| budget.for_run(&event.correlation_id)),
            spend: spend.clone(),
        };
        let handling = AssertUnwindSafe(self.handler.handle(&incoming)).catch_unwind();
        let started = tokio::time::Instant::now();
        let timed = |metrics: &AgentMetrics| {
            let took = started.elapsed();
            metrics.handled_in(&event.r#type, took.as_secs_f64());
            took
        };
        let result = tokio::select! {
            // Dropping the handler's future aborts what it has in flight (an HTTP call).
            () = self.cancel.cancelled() => {
                if let Some(permit) = permit {
                    permit.ignore();
                }
                return (Outcome::Unstarted, started.elapsed());
            }
            answered = tokio::time::timeout(self.config.handler_timeout, handling) => match answered {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(HandlerError::Retryable(panic_message(&panic))),
                Err(_elapsed) => {
                    let took = timed(&self.metrics);
                    warn!(timeout = ?self.config.handler_timeout, "handler timed out; cancelled");
                    if let Some(permit) = permit {
                        permit.failure();
                    }
                    return (Outcome::TimedOut(self.config.handler_timeout), took);
                }
            },
        };
        let took = timed(&self.metrics);
        let probed = permit.as_ref().is_some_and(|permit| permit.is_probe());
        if let Some(permit) = permit {
            match &result {
                Ok(_) => permit.success(),
                Err(err) if self.guards.breaker_ignores.contains(&err.kind()) => permit.ignore(),
                Err(_) => permit.failure(),
            }
        }
        if let Err(err) = &result {
            warn!(error = %err, kind = %err.kind(), "handler failed");
            if matches!(err, HandlerError::OverBudget(_)) {
                self.metrics.budget_refused("handler");
            }
        }
        let breaker_wait = match (&result, &self.guards.breaker) {
            (Err(_), Some(breaker)) if !probed && breaker.state() != BreakerState::Closed => {
                Some(breaker.open_remaining())
            }
            _ => None,
        };
        let outcome = Outcome::Handled {
            result,
            breaker_wait,
        };
        (outcome, took)
    }

    /// Charges what the handling's model calls cost to the run's cost budget, whatever the
    /// handler answered: the money is spent. Children of a handling that passed the budget
    /// are not published (dead letter `budget_exhausted`); a counter that cannot be reached
    /// is logged, not waited on, so the handler's answer is not lost over it.
    async fn charge_cost(&self, event: &Event, spend: &Spend, outcome: Outcome) -> Outcome {
        let micros = spend.cost_micros();
        let Some(budget) = self.guards.budget.as_ref().filter(|_| micros > 0) else {
            return outcome;
        };
        match budget.charge_cost(&event.correlation_id, micros).await {
            Ok(()) => outcome,
            Err(err @ BudgetError::Exhausted { .. }) => {
                self.metrics.budget_refused("runtime");
                match outcome {
                    Outcome::Handled { result: Ok(_), .. } => Outcome::Stopped(Stop {
                        reason: DeadLetterReason::BudgetExhausted,
                        detail: err.to_string(),
                    }),
                    other => other,
                }
            }
            Err(err) => {
                warn!(error = %err, cost = spend.cost, "could not charge the handling's cost");
                outcome
            }
        }
    }

    /// Leaves a [`HANDLED`] notice for a handling that published nothing, when it is worth a
    /// message (see [`crate::handling`]). Best effort: the notice is a record, and failing to
    /// store it must not hold up the event.
    async fn record_quiet_handling(
        &self,
        event: &Event,
        facts: &Facts,
        ran: &Ran,
        outcome: &Outcome,
    ) {
        let (end, error) = match outcome {
            Outcome::Handled {
                result: Ok(emits), ..
            } if emits.is_empty() => (HandlingEnd::EmittedNothing, String::new()),
            _ => match handler_failure(outcome) {
                Some(failure) => failure,
                None => return,
            },
        };
        if end == HandlingEnd::EmittedNothing
            && ran.spend.is_empty()
            && ran.took < self.config.record_handlings_over
        {
            return;
        }
        let notice = HandlingNotice {
            agent: self.agent.name().to_string(),
            event_id: event.id.clone(),
            event_type: event.r#type.clone(),
            delivery: facts.delivered,
            received: ran.received.into(),
            took_ms: ran.took.as_secs_f64() * 1000.0,
            end,
            error,
            spend: ran.spend.clone(),
        };
        let stored = async {
            let emit = Emit::json(EventType::new(HANDLED)?, &notice).map_err(|err| {
                crate::PublishError::Refused {
                    detail: format!("cannot encode the handling notice: {err}"),
                }
            })?;
            let delivery = facts.delivered.to_be_bytes();
            let sequence = facts.stream_sequence.to_be_bytes();
            let parts: [&[u8]; 5] = [
                facts.stream.as_bytes(),
                &sequence,
                &delivery,
                self.agent.name().as_str().as_bytes(),
                HANDLED.as_bytes(),
            ];
            let id = envelope::derived_event_id(envelope::timestamp_millis_of(event), &parts);
            let notice_event = envelope::stamp_with_id(event, self.agent.name(), id, emit);
            self.publisher
                .send_event(&notice_event)
                .await?
                .confirmed()
                .await
        };
        // Boxed, as the redelivery check is: most handlings leave no notice.
        if let Err(err) = Box::pin(stored).await {
            warn!(error = %err, "could not record the handling in the log");
        }
    }

    /// Runs the publishing guards, then stamps and publishes children, waiting until the
    /// stream has stored every one.
    pub(super) async fn publish_children(
        &self,
        parent: &Event,
        emits: Vec<Emit>,
        handling: &ChildHeaders,
    ) -> Outcome {
        if emits.is_empty() {
            return Outcome::Published;
        }
        if let Some(depth) = &self.guards.depth
            && let Err(stop) = depth.check_children(parent)
        {
            return Outcome::Stopped(stop);
        }
        // NATS unable to answer (an election, a lost node) is waited out here, keeping the
        // handler's result and the lease: sending the event back would run the handler, and
        // pay for its model calls, again.
        let patience = tokio::time::Instant::now() + UNAVAILABLE_PATIENCE;
        if let Some(budget) = &self.guards.budget {
            let events = u64::try_from(emits.len()).unwrap_or(u64::MAX);
            let tokens = emits.iter().map(|e| e.tokens_used).sum();
            loop {
                match budget.charge(&parent.correlation_id, events, tokens).await {
                    Ok(()) => break,
                    Err(err @ BudgetError::Exhausted { .. }) => {
                        self.metrics.budget_refused("runtime");
                        return Outcome::Stopped(Stop {
                            reason: DeadLetterReason::BudgetExhausted,
                            detail: err.to_string(),
                        });
                    }
                    Err(err @ BudgetError::Unavailable { .. }) => {
                        warn!(error = %err, "budget counter unavailable; waiting");
                        if !self.wait_for_nats(patience).await {
                            return Outcome::Unavailable(NATS_UNAVAILABLE_WAIT);
                        }
                    }
                }
            }
        }
        for emit in &emits {
            if let Some(limiter) = self.guards.publish_rates.get(&emit.event_type) {
                let asked = tokio::time::Instant::now();
                limiter.acquire().await;
                self.metrics.waited_on(
                    &format!("publish:{}", emit.event_type),
                    asked.elapsed().as_secs_f64(),
                );
            }
        }
        let emitted = emits.len();
        let children: Vec<_> = emits
            .into_iter()
            .enumerate()
            .map(|(index, emit)| stamp_child(parent, self.agent.name(), index, emit))
            .collect();
        loop {
            match self.send_children(&children, emitted, handling).await {
                Ok(()) => {
                    debug!(children = emitted, "handled");
                    return Outcome::Published;
                }
                // Sending again is safe: the ids are the same, and the stream drops copies.
                Err(err) if err.is_retryable() => {
                    warn!(error = %err, "NATS could not store the children yet; waiting");
                    if !self.wait_for_nats(patience).await {
                        return Outcome::Unavailable(NATS_UNAVAILABLE_WAIT);
                    }
                }
                Err(err @ PublishError::Forbidden(_)) => {
                    return Outcome::PublishForbidden(err.to_string());
                }
                Err(err) => {
                    warn!(error = %err, "could not publish children");
                    return Outcome::PublishFailed(err.to_string());
                }
            }
        }
    }

    /// Waits a moment before asking NATS again; false once `patience` has run out or the
    /// shutdown grace has.
    async fn wait_for_nats(&self, patience: tokio::time::Instant) -> bool {
        if tokio::time::Instant::now() >= patience {
            return false;
        }
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = tokio::time::sleep(NATS_UNAVAILABLE_WAIT) => true,
        }
    }

    async fn send_children(
        &self,
        children: &[Event],
        emitted: usize,
        handling: &ChildHeaders,
    ) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(children.len());
        for (index, child) in children.iter().enumerate() {
            pending.push(
                self.publisher
                    .send_child(child, index, emitted, handling)
                    .await?,
            );
        }
        for confirmed in join_all(pending.into_iter().map(|p| p.confirmed())).await {
            confirmed?;
        }
        Ok(())
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

/// How the handler failed, with what to tell: its error, or the timeout that cancelled it;
/// `None` when it answered (or never ran).
fn handler_failure(outcome: &Outcome) -> Option<(HandlingEnd, String)> {
    match outcome {
        Outcome::Handled {
            result: Err(err), ..
        } => Some((HandlingEnd::Failed, err.to_string())),
        Outcome::TimedOut(limit) => Some((
            HandlingEnd::TimedOut,
            format!("cancelled after {}", humantime::format_duration(*limit)),
        )),
        _ => None,
    }
}
