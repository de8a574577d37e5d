//! Settling: carrying out an event's fate. Every path ends in an ack, a NAK (with or without a
//! delay) or a term, and an input is only acked or terminated once what it produced (children,
//! a dead letter) is stored. The lease ends right before the answer goes to the server.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tracing::{debug, error, warn};

use crate::dead_letter::Original;

use super::Handler;
use super::fate::{Fate, MIN_DEFER, Outcome, decide};
use super::lease::Lease;
use super::worker::{Facts, Held, Ran, Worker};
use crate::handling::ChildHeaders;

impl<H: Handler> Worker<H> {
    pub(super) async fn settle(
        &self,
        message: &jetstream::Message,
        lease: Option<Lease>,
        original: Original<'_>,
        facts: &Facts,
        outcome: Outcome,
        ran: Option<&Ran>,
    ) {
        let mut outcome = outcome;
        // What the server is told, and what became of the delivery (for the metrics).
        let (answer, became) = loop {
            let skipped = matches!(
                outcome,
                Outcome::AlreadyHandled | Outcome::RedriveForAnother
            );
            match decide(&self.agent, &self.config, facts.attempts, outcome) {
                Fate::Publish(emits) => {
                    outcome = match (original.event, ran) {
                        (Some(parent), Some(ran)) => {
                            let handling = ChildHeaders::new(ran.received, ran.took, &ran.spend);
                            self.publish_children(parent, emits, &handling).await
                        }
                        // Children are only decided for a decoded input the handler ran on;
                        // say so if not.
                        _ => Outcome::Undecodable("children without a handled input".into()),
                    };
                }
                Fate::Ack => {
                    self.deferrals.forget(facts.stream_sequence);
                    break (AckKind::Ack, if skipped { "skipped" } else { "handled" });
                }
                Fate::Retry(delay) => break (AckKind::Nak(Some(delay)), "retried"),
                Fate::Defer(delay) => {
                    self.deferrals.record(facts.stream_sequence);
                    break (AckKind::Nak(Some(delay)), "deferred");
                }
                Fate::HandBack => break (AckKind::Nak(None), "handed_back"),
                Fate::DeadLetter { reason, error } => {
                    // Boxed: rare, and inlined it would make every handling's future
                    // larger (see the redelivery check in `Worker::before_handler`).
                    match Box::pin(self.dead_letters.write(original, reason, &error)).await {
                        Ok(()) => {
                            error!(reason = %reason, error = %error, "dead-lettered");
                            self.deferrals.forget(facts.stream_sequence);
                            self.metrics.dead_lettered(reason.as_str());
                            break (AckKind::Term, "dead_lettered");
                        }
                        // Never terminate without the dead letter stored: wait and try again.
                        Err(err) => {
                            warn!(error = %err, "could not store the dead letter; will retry");
                            outcome =
                                Outcome::Unavailable(self.config.backoff.delay(facts.attempts));
                        }
                    }
                }
            }
        };
        let event_type = original
            .event
            .map_or("undecodable", |event| event.r#type.as_str());
        self.metrics.settled(event_type, became);
        drop(lease);
        answer_server(message, answer).await;
    }

    /// Hands an event back untried for redelivery after `delay`, without counting the delivery
    /// as an attempt: for events in hand when the handler's breaker opened.
    pub(super) async fn defer(&self, held: Held, delay: Duration) {
        let Held { message, lease } = held;
        if let Ok(info) = message.info() {
            self.deferrals.record(info.stream_sequence);
        }
        drop(lease);
        answer_server(&message, AckKind::Nak(Some(delay.max(MIN_DEFER)))).await;
    }

    /// Gives an event that was not started back for immediate redelivery (to another copy).
    pub(super) async fn hand_back(&self, held: Held) {
        let Held { message, lease } = held;
        drop(lease);
        answer_server(&message, AckKind::Nak(None)).await;
    }
}

async fn answer_server(message: &jetstream::Message, kind: AckKind) {
    let nak_now = matches!(kind, AckKind::Nak(None));
    if let Err(err) = message.ack_with(kind).await {
        // The server redelivers after ack_wait; children are deduplicated, and a redelivery
        // whose children are all stored is acknowledged without running the handler.
        if nak_now {
            debug!(error = %err, "could not hand back an event; it is redelivered after ack_wait");
        } else {
            warn!(error = %err, "could not answer the server; the event will be redelivered");
        }
    }
}
