//! What to do with an event once its handler has answered: the runtime's policy, kept apart
//! from NATS so it is tested on its own.

use std::time::Duration;

use crate::dead_letter::DeadLetterReason;
use crate::envelope::Emit;

use super::agent::{Agent, HandlerError};
use super::config::RuntimeConfig;

/// The shortest wait before an event refused by an open breaker comes back, so a breaker about
/// to half-open does not turn into a tight redelivery loop.
pub(crate) const MIN_BREAKER_WAIT: Duration = Duration::from_millis(100);

/// The runtime's decision for one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Publish these children, then ack the input.
    Publish(Vec<Emit>),
    /// NAK the input; the server redelivers it after this delay.
    Retry(Duration),
    /// Store a dead letter, then terminate the input (no more deliveries).
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
}

/// Decides what happens after the `delivered`-th delivery produced `outcome`.
pub fn decide(
    agent: &Agent,
    config: &RuntimeConfig,
    delivered: u64,
    outcome: Result<Vec<Emit>, HandlerError>,
) -> Disposition {
    match outcome {
        Ok(emits) => match emits.iter().find(|emit| !agent.may_emit(&emit.event_type)) {
            Some(undeclared) => Disposition::DeadLetter {
                reason: DeadLetterReason::HandlerRejected,
                error: format!(
                    "agent {} emitted {}, which it does not declare; add it with Agent::builder(..).emits(\"{}\")",
                    agent.name(),
                    undeclared.event_type,
                    undeclared.event_type
                ),
            },
            None => Disposition::Publish(emits),
        },
        Err(HandlerError::Permanent(error)) => Disposition::DeadLetter {
            reason: DeadLetterReason::HandlerRejected,
            error,
        },
        Err(HandlerError::Retryable(error)) => retry_or_give_up(config, delivered, error),
        // A known outage is waited out, however long, rather than spending deliveries on it.
        Err(HandlerError::Unavailable { retry_after, .. }) => {
            Disposition::Retry(retry_after.max(MIN_BREAKER_WAIT))
        }
    }
}

/// A failure that may pass: retry with backoff, or dead-letter once deliveries run out.
pub fn retry_or_give_up(config: &RuntimeConfig, delivered: u64, error: String) -> Disposition {
    if delivered >= config.max_deliveries {
        Disposition::DeadLetter {
            reason: DeadLetterReason::HandlerFailed,
            error: format!("failed on all {delivered} deliveries; last error: {error}"),
        }
    } else {
        Disposition::Retry(config.backoff.delay(delivered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::EventType;

    fn agent() -> Agent {
        Agent::builder("a")
            .subscribes("in.put")
            .emits("out.put")
            .build()
            .expect("valid")
    }

    fn emit(t: &str) -> Emit {
        Emit::json(EventType::new(t).expect("valid"), &()).expect("json")
    }

    #[test]
    fn declared_children_are_published() {
        let config = RuntimeConfig::default();
        let outcome = decide(&agent(), &config, 1, Ok(vec![emit("out.put")]));
        assert_eq!(outcome, Disposition::Publish(vec![emit("out.put")]));
    }

    #[test]
    fn an_undeclared_child_is_a_rejection_naming_the_type() {
        let config = RuntimeConfig::default();
        let outcome = decide(
            &agent(),
            &config,
            1,
            Ok(vec![emit("out.put"), emit("sneaky.type")]),
        );
        let Disposition::DeadLetter { reason, error } = outcome else {
            panic!("expected a dead letter, got {outcome:?}");
        };
        assert_eq!(reason, DeadLetterReason::HandlerRejected);
        assert!(error.contains("sneaky.type"), "{error}");
    }

    #[test]
    fn retryable_failures_back_off_until_deliveries_run_out() {
        let config = RuntimeConfig {
            max_deliveries: 3,
            ..RuntimeConfig::default()
        };
        let fail = || Err(HandlerError::retryable("down"));
        assert_eq!(
            decide(&agent(), &config, 1, fail()),
            Disposition::Retry(config.backoff.delay(1))
        );
        assert_eq!(
            decide(&agent(), &config, 2, fail()),
            Disposition::Retry(config.backoff.delay(2))
        );
        let Disposition::DeadLetter { reason, error } = decide(&agent(), &config, 3, fail()) else {
            panic!("third failure should dead-letter");
        };
        assert_eq!(reason, DeadLetterReason::HandlerFailed);
        assert!(error.contains("down"));
    }

    #[test]
    fn an_unavailable_dependency_is_waited_out_past_max_deliveries() {
        let config = RuntimeConfig {
            max_deliveries: 2,
            ..RuntimeConfig::default()
        };
        let down = || {
            Err(HandlerError::unavailable(
                "llm breaker open",
                Duration::from_secs(7),
            ))
        };
        for delivered in [1, 2, 50] {
            assert_eq!(
                decide(&agent(), &config, delivered, down()),
                Disposition::Retry(Duration::from_secs(7)),
                "delivery {delivered}"
            );
        }
    }

    #[test]
    fn permanent_failures_dead_letter_at_once() {
        let config = RuntimeConfig::default();
        let outcome = decide(
            &agent(),
            &config,
            1,
            Err(HandlerError::permanent("bad input")),
        );
        assert_eq!(
            outcome,
            Disposition::DeadLetter {
                reason: DeadLetterReason::HandlerRejected,
                error: "bad input".into()
            }
        );
    }
}
