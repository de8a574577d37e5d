//! The last step of every request: the run's budget, then publishing, with each failure turned
//! into the answer that tells the client what happened to its events.
//!
//! Nothing is sent while the connection to NATS is down: the request is answered `503` at once,
//! and nothing is buffered to go out later behind the client's back. If the connection drops
//! after an event is sent, the stream's confirmation is waited for up to the publish timeout;
//! then the event may or may not be stored, and the answer says so: retrying with the same
//! `Idempotency-Key` (or CloudEvent id) stores it exactly once.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::connection::State;
use choreo_bus::guard::{BudgetError, CorrelationBudget};
use choreo_bus::publish::PendingPublish;
use choreo_bus::{Event, PublishError, Published, Publisher};

use crate::problem::{Kind, Problem};

/// When to try again after a 503.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Publishes admitted events.
#[derive(Debug, Clone)]
pub struct Door {
    client: async_nats::Client,
    publisher: Publisher,
    budget: CorrelationBudget,
    nats_url: String,
}

impl Door {
    pub fn new(
        client: async_nats::Client,
        publisher: Publisher,
        budget: CorrelationBudget,
        nats_url: String,
    ) -> Self {
        Door {
            client,
            publisher,
            budget,
            nats_url,
        }
    }

    /// Refuses at once when NATS is not connected.
    pub fn ensure_connected(&self) -> Result<(), Problem> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(Problem::new(
                Kind::NatsUnavailable,
                format!(
                    "NATS at {} is unreachable ({state}); nothing was published: retry later",
                    self.nats_url
                ),
            )
            .retry_after(RETRY_AFTER)),
        }
    }

    /// Publishes `events` and waits until the stream has stored each one; all are sent before
    /// any confirmation is awaited, so a batch costs one round trip.
    pub async fn publish(&self, events: &[Event]) -> Result<Vec<Published>, Problem> {
        self.ensure_connected()?;
        self.check_budgets(events).await?;
        let mut pending: Vec<PendingPublish> = Vec::with_capacity(events.len());
        for event in events {
            let sent = self.publisher.send_event(event).await;
            pending.push(sent.map_err(|err| refusal(&err, &self.nats_url, 0, events.len()))?);
        }
        let mut published = Vec::with_capacity(events.len());
        for (sent, event) in pending.into_iter().zip(events) {
            match sent.confirmed().await {
                Ok(stored) => published.push(Published::of(event, stored)),
                Err(err) => {
                    return Err(refusal(&err, &self.nats_url, published.len(), events.len()));
                }
            }
        }
        Ok(published)
    }

    /// Refuses events joining a run that has used its budget: agents could not answer them.
    /// An event starting a run (its correlation is its own id) has nothing to check.
    async fn check_budgets(&self, events: &[Event]) -> Result<(), Problem> {
        let joined: BTreeSet<&str> = events
            .iter()
            .filter(|event| event.correlation_id != event.id)
            .map(|event| event.correlation_id.as_str())
            .collect();
        for correlation in joined {
            self.budget.check(correlation).await.map_err(|err| match err {
                BudgetError::Exhausted { .. } => Problem::new(
                    Kind::BudgetExhausted,
                    format!("{err}. Nothing was published; start a new run instead (leave out the correlation id)"),
                )
                .field("correlation_id"),
                BudgetError::Unavailable { .. } => Problem::new(
                    Kind::NatsUnavailable,
                    format!("cannot read the run's budget: {err}; nothing was published"),
                )
                .retry_after(RETRY_AFTER),
            })?;
        }
        Ok(())
    }
}

/// The answer to a failed publish to NATS at `nats_url`, `stored` of `total` events having been
/// confirmed.
fn refusal(err: &PublishError, nats_url: &str, stored: usize, total: usize) -> Problem {
    let outcome = if total == 1 {
        "it may or may not be stored: retrying with the same Idempotency-Key or CloudEvent id \
         stores it once"
            .to_string()
    } else {
        format!(
            "{stored} of the {total} events were confirmed before it; retry the whole batch: \
             events already stored are recognised by their ids and stored once"
        )
    };
    match err {
        PublishError::Invalid(invalid) => Problem::invalid(invalid.field, invalid.to_string()),
        PublishError::TooLarge { .. } => {
            Problem::new(Kind::BodyTooLarge, format!("{err}; nothing was published"))
        }
        // The streams are missing: a deployment step still to run (or running), so come back.
        PublishError::NoStream { .. } => {
            Problem::new(Kind::NatsUnavailable, format!("{err}; {outcome}"))
                .retry_after(RETRY_AFTER)
        }
        // JetStream cannot take events just now (a timeout, a stream electing its leader);
        // the error says why, the outcome what the client should do.
        PublishError::Unavailable { why, .. } => Problem::new(
            Kind::NatsUnavailable,
            format!("NATS JetStream at {nats_url} is unavailable ({why}); {outcome}"),
        )
        .retry_after(RETRY_AFTER),
        PublishError::StreamFull { .. } => {
            Problem::new(Kind::StreamFull, format!("{err}; {outcome}"))
        }
        PublishError::Refused { .. } => {
            Problem::new(Kind::NatsRefused, format!("{err}; {outcome}"))
        }
        // The gateway's own credentials do not reach a type its tokens allow: a deployment to
        // fix (`choreo auth generate --gateway-types`), not the client's doing.
        PublishError::Forbidden(_) => {
            Problem::new(Kind::NatsRefused, format!("{err}; nothing was stored"))
        }
    }
}

#[cfg(test)]
mod tests {
    use choreo_bus::publish::Unavailability;

    use super::*;

    #[test]
    fn a_stream_electing_its_leader_is_unavailable_for_now_not_missing() {
        let err = PublishError::Unavailable {
            subject: "events.run-1.build.step".to_string(),
            why: Unavailability::NoLeader {
                stream: "EVENTS".to_string(),
            },
        };
        let problem = refusal(&err, "nats://127.0.0.1:4222", 0, 1);
        assert_eq!(problem.kind, Kind::NatsUnavailable);
        assert_eq!(problem.status.as_u16(), 503);
        assert_eq!(problem.retry_after, Some(RETRY_AFTER));
        assert!(problem.detail.contains("leader"), "{}", problem.detail);
        assert!(
            problem.detail.contains("Idempotency-Key"),
            "{}",
            problem.detail
        );
        assert!(
            !problem.detail.contains("create the streams"),
            "{}",
            problem.detail
        );
    }

    #[test]
    fn missing_streams_say_to_create_them() {
        let err = PublishError::NoStream {
            subject: "events.run-1.build.step".to_string(),
        };
        let problem = refusal(&err, "nats://127.0.0.1:4222", 1, 3);
        assert_eq!(problem.status.as_u16(), 503);
        assert_eq!(problem.retry_after, Some(RETRY_AFTER));
        assert!(
            problem.detail.contains("create the streams"),
            "{}",
            problem.detail
        );
        assert!(problem.detail.contains("1 of the 3"), "{}", problem.detail);
    }
}
