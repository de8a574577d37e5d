//! The fate of an event: one table from what happened to a delivery to what the runtime does
//! with it. Kept apart from NATS so the whole policy is tested on its own.
//!
//! | what happened ([`Outcome`]) | fate ([`Fate`]) |
//! |---|---|
//! | a redrive meant for another agent | ack |
//! | a redelivery whose earlier handling's children are all stored | ack, handler not run |
//! | fetched but not started before shutdown, or cancelled at the end of the grace | hand back now |
//! | bytes that are not an envelope | dead letter `decode_failed` |
//! | an envelope that breaks the wire contract (disagrees with its subject, lacks a required field) | dead letter `contract_violated` |
//! | delivered more than max deliveries without completing (a crash loop) | dead letter `handler_failed` |
//! | a guard stopped the run (cycle, depth, budget) | dead letter with the guard's reason |
//! | the handler's breaker refused, or NATS or a dependency is unavailable | defer: redeliver after the wait, no attempt spent |
//! | the handler returned children | publish them (an undeclared type: dead letter `handler_rejected`) |
//! | the children were all stored | ack |
//! | the handler failed permanently | dead letter `handler_rejected` |
//! | the handler failed retryably while its breaker is open (not a probe) | defer |
//! | the handler failed retryably, or publishing failed | retry after backoff; after the last attempt dead letter `handler_failed` |
//! | the server refused a child's subject to the agent's credentials | dead letter `handler_rejected` (retrying cannot help) |
//! | the handler ran past its timeout | retry after backoff; after the last attempt dead letter `handler_timeout` |
//! | the handler said a dependency is unavailable | defer for its `retry_after` |
//!
//! "Attempts" are deliveries less those deferred (see `deferrals.rs`): waiting out an outage
//! never uses up an event's attempts.

use std::time::Duration;

use crate::dead_letter::DeadLetterReason;
use crate::envelope::Emit;
use crate::envelope::contract::ContractError;
use crate::guard::Stop;

use super::agent::{Agent, HandlerError};
use super::config::RuntimeConfig;

/// The shortest wait before a deferred event comes back, so a breaker about to half-open or a
/// server about to elect does not turn into a tight redelivery loop.
pub(crate) const MIN_DEFER: Duration = Duration::from_millis(100);

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A redrive addressed to another agent (which gave up on it); this one handled it before.
    RedriveForAnother,
    /// A redelivery whose earlier handling's children are all in the stream: that handling
    /// completed and only its ack was lost.
    AlreadyHandled,
    /// Not started (fetched before shutdown), or cancelled when the shutdown grace ran out.
    Unstarted,
    /// The bytes are not a protobuf envelope.
    Undecodable(String),
    /// An envelope that breaks the wire contract (see [`crate::envelope::contract`]); the
    /// error names the field.
    ContractViolated(String),
    /// Delivered this many times without any delivery completing: the agent has been dying
    /// while handling it (a crash, an OOM kill).
    CrashLoop { attempts: u64 },
    /// A guard stopped the run.
    Stopped(Stop),
    /// Something needed is down for now (the handler's open breaker, NATS electing a leader,
    /// the budget counter unreachable): try again after this long.
    Unavailable(Duration),
    /// The handler answered. `breaker_wait` is how long the handler's breaker stays open when
    /// this (non-probe) handling failed and the breaker is not closed.
    Handled {
        result: Result<Vec<Emit>, HandlerError>,
        breaker_wait: Option<Duration>,
    },
    /// The handler ran past the handler timeout and was cancelled.
    TimedOut(Duration),
    /// The children were published and the stream confirmed every one.
    Published,
    /// Publishing the children failed in a way that may pass.
    PublishFailed(String),
    /// The server does not let the agent's credentials publish a child's subject.
    PublishForbidden(String),
}

/// What the runtime does with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// Publish these children; what that gives is decided again ([`Outcome::Published`] …).
    Publish(Vec<Emit>),
    /// Acknowledge: done.
    Ack,
    /// NAK with this delay; the delivery was an attempt.
    Retry(Duration),
    /// NAK with this delay; the delivery is not counted as an attempt.
    Defer(Duration),
    /// NAK at once, for another copy (or this one after a restart) to take.
    HandBack,
    /// Store a dead letter, then terminate the input (no more deliveries).
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
}

impl From<ContractError> for Outcome {
    fn from(refused: ContractError) -> Self {
        match refused {
            ContractError::Undecodable(_) => Outcome::Undecodable(refused.to_string()),
            ContractError::Violated(_) => Outcome::ContractViolated(refused.to_string()),
        }
    }
}

impl From<Stop> for Fate {
    fn from(stop: Stop) -> Self {
        Fate::DeadLetter {
            reason: stop.reason,
            error: stop.detail,
        }
    }
}

/// The table: the fate of a delivery that was the `attempts`-th attempt and gave `outcome`.
pub fn decide(agent: &Agent, config: &RuntimeConfig, attempts: u64, outcome: Outcome) -> Fate {
    match outcome {
        Outcome::RedriveForAnother | Outcome::AlreadyHandled | Outcome::Published => Fate::Ack,
        Outcome::Unstarted => Fate::HandBack,
        Outcome::Undecodable(error) => Fate::DeadLetter {
            reason: DeadLetterReason::DecodeFailed,
            error,
        },
        Outcome::ContractViolated(error) => Fate::DeadLetter {
            reason: DeadLetterReason::ContractViolated,
            error,
        },
        Outcome::CrashLoop { attempts } => Fate::DeadLetter {
            reason: DeadLetterReason::HandlerFailed,
            error: format!(
                "delivered {attempts} times without completing; the agent may be crashing on it"
            ),
        },
        Outcome::Stopped(stop) => stop.into(),
        Outcome::Unavailable(wait) => Fate::Defer(wait.max(MIN_DEFER)),
        Outcome::Handled {
            result: Ok(emits), ..
        } => match emits.iter().find(|emit| !agent.may_emit(&emit.event_type)) {
            Some(undeclared) => Fate::DeadLetter {
                reason: DeadLetterReason::HandlerRejected,
                error: format!(
                    "agent {} emitted {}, which it does not declare; add it with Agent::builder(..).emits(\"{}\")",
                    agent.name(),
                    undeclared.event_type,
                    undeclared.event_type
                ),
            },
            None => Fate::Publish(emits),
        },
        Outcome::Handled {
            result: Err(HandlerError::Permanent(error)),
            ..
        } => Fate::DeadLetter {
            reason: DeadLetterReason::HandlerRejected,
            error,
        },
        Outcome::Handled {
            result: Err(HandlerError::OverBudget(error)),
            ..
        } => Fate::DeadLetter {
            reason: DeadLetterReason::BudgetExhausted,
            error,
        },
        // A known outage is waited out, however long, rather than spending deliveries on it.
        Outcome::Handled {
            result: Err(HandlerError::Unavailable { retry_after, .. }),
            ..
        } => Fate::Defer(retry_after.max(MIN_DEFER)),
        // This failure is the dependency's (the breaker is open): wait for it. A failed probe
        // has no breaker wait, so an event that keeps failing the probe is given up on.
        Outcome::Handled {
            result: Err(HandlerError::Retryable(_)),
            breaker_wait: Some(wait),
        } => Fate::Defer(wait.max(MIN_DEFER)),
        Outcome::Handled {
            result: Err(HandlerError::Retryable(error)),
            breaker_wait: None,
        } => retry_or_give_up(
            config,
            attempts,
            DeadLetterReason::HandlerFailed,
            format!("failed on all {attempts} deliveries; last error: {error}"),
        ),
        Outcome::PublishForbidden(error) => Fate::DeadLetter {
            reason: DeadLetterReason::HandlerRejected,
            error,
        },
        Outcome::PublishFailed(error) => retry_or_give_up(
            config,
            attempts,
            DeadLetterReason::HandlerFailed,
            format!("failed on all {attempts} deliveries; last error: {error}"),
        ),
        Outcome::TimedOut(limit) => retry_or_give_up(
            config,
            attempts,
            DeadLetterReason::HandlerTimeout,
            format!(
                "the handler ran past its timeout of {} on all {attempts} deliveries \
                 (raise --handler-timeout if it needs longer)",
                humantime::format_duration(limit)
            ),
        ),
    }
}

/// A failure that may pass: retry with backoff, or dead-letter once attempts run out.
fn retry_or_give_up(
    config: &RuntimeConfig,
    attempts: u64,
    reason: DeadLetterReason,
    error: String,
) -> Fate {
    if attempts >= config.max_deliveries {
        Fate::DeadLetter { reason, error }
    } else {
        Fate::Retry(config.backoff.delay(attempts))
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

    fn config() -> RuntimeConfig {
        RuntimeConfig {
            max_deliveries: 3,
            ..RuntimeConfig::default()
        }
    }

    fn emit(t: &str) -> Emit {
        Emit::json(EventType::new(t).expect("valid"), &()).expect("json")
    }

    fn handled(result: Result<Vec<Emit>, HandlerError>) -> Outcome {
        Outcome::Handled {
            result,
            breaker_wait: None,
        }
    }

    fn fate(attempts: u64, outcome: Outcome) -> Fate {
        decide(&agent(), &config(), attempts, outcome)
    }

    fn dead_letter(fate: Fate) -> (DeadLetterReason, String) {
        match fate {
            Fate::DeadLetter { reason, error } => (reason, error),
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn declared_children_are_published_then_acked() {
        assert_eq!(
            fate(1, handled(Ok(vec![emit("out.put")]))),
            Fate::Publish(vec![emit("out.put")])
        );
        assert_eq!(fate(1, Outcome::Published), Fate::Ack);
    }

    #[test]
    fn an_undeclared_child_is_a_rejection_naming_the_type() {
        let (reason, error) = dead_letter(fate(
            1,
            handled(Ok(vec![emit("out.put"), emit("sneaky.type")])),
        ));
        assert_eq!(reason, DeadLetterReason::HandlerRejected);
        assert!(error.contains("sneaky.type"), "{error}");
    }

    #[test]
    fn retryable_failures_back_off_until_attempts_run_out() {
        let config = config();
        let fail = || handled(Err(HandlerError::retryable("down")));
        assert_eq!(fate(1, fail()), Fate::Retry(config.backoff.delay(1)));
        assert_eq!(fate(2, fail()), Fate::Retry(config.backoff.delay(2)));
        let (reason, error) = dead_letter(fate(3, fail()));
        assert_eq!(reason, DeadLetterReason::HandlerFailed);
        assert!(error.contains("down") && error.contains("all 3"), "{error}");
    }

    #[test]
    fn a_timed_out_handling_is_retried_then_dead_lettered_as_a_timeout() {
        let limit = Duration::from_secs(90);
        assert_eq!(
            fate(1, Outcome::TimedOut(limit)),
            Fate::Retry(config().backoff.delay(1))
        );
        let (reason, error) = dead_letter(fate(3, Outcome::TimedOut(limit)));
        assert_eq!(reason, DeadLetterReason::HandlerTimeout);
        assert!(
            error.contains("1m 30s") && error.contains("--handler-timeout"),
            "{error}"
        );
    }

    #[test]
    fn a_child_the_credentials_forbid_is_dead_lettered_at_once() {
        let (reason, error) = dead_letter(fate(1, Outcome::PublishForbidden("no".into())));
        assert_eq!(reason, DeadLetterReason::HandlerRejected);
        assert_eq!(error, "no");
    }

    #[test]
    fn failed_publishing_is_retried_like_a_failed_handler() {
        assert_eq!(
            fate(1, Outcome::PublishFailed("refused".into())),
            Fate::Retry(config().backoff.delay(1))
        );
        let (reason, _) = dead_letter(fate(3, Outcome::PublishFailed("refused".into())));
        assert_eq!(reason, DeadLetterReason::HandlerFailed);
    }

    #[test]
    fn outages_are_waited_out_past_max_deliveries_without_spending_attempts() {
        let down = || {
            handled(Err(HandlerError::unavailable(
                "llm breaker open",
                Duration::from_secs(7),
            )))
        };
        for attempts in [1, 3, 50] {
            assert_eq!(fate(attempts, down()), Fate::Defer(Duration::from_secs(7)));
            assert_eq!(
                fate(attempts, Outcome::Unavailable(Duration::from_secs(2))),
                Fate::Defer(Duration::from_secs(2))
            );
        }
        assert_eq!(
            fate(1, Outcome::Unavailable(Duration::ZERO)),
            Fate::Defer(MIN_DEFER),
            "never a tight loop"
        );
    }

    #[test]
    fn a_failure_that_opened_the_breaker_waits_for_it_unless_it_was_a_probe() {
        let tripped = Outcome::Handled {
            result: Err(HandlerError::retryable("timeout")),
            breaker_wait: Some(Duration::from_secs(30)),
        };
        assert_eq!(fate(3, tripped), Fate::Defer(Duration::from_secs(30)));
        let (reason, _) = dead_letter(fate(3, handled(Err(HandlerError::retryable("probe")))));
        assert_eq!(reason, DeadLetterReason::HandlerFailed);
    }

    #[test]
    fn permanent_failures_and_guards_dead_letter_at_once() {
        assert_eq!(
            fate(1, handled(Err(HandlerError::permanent("bad input")))),
            Fate::DeadLetter {
                reason: DeadLetterReason::HandlerRejected,
                error: "bad input".into()
            }
        );
        let (reason, _) = dead_letter(fate(
            1,
            handled(Err(HandlerError::OverBudget("no tokens left".into()))),
        ));
        assert_eq!(reason, DeadLetterReason::BudgetExhausted);
        let stop = Stop {
            reason: DeadLetterReason::DepthExceeded,
            detail: "depth 33".into(),
        };
        let (reason, error) = dead_letter(fate(1, Outcome::Stopped(stop)));
        assert_eq!(
            (reason, error.as_str()),
            (DeadLetterReason::DepthExceeded, "depth 33")
        );
        let (reason, _) = dead_letter(fate(1, Outcome::Undecodable("not protobuf".into())));
        assert_eq!(reason, DeadLetterReason::DecodeFailed);
    }

    #[test]
    fn bytes_that_are_not_an_envelope_and_envelopes_that_break_the_contract_differ() {
        use crate::envelope::contract::check;
        let garbage = check("events.run-1.in.put", b"\xff\xff").expect_err("not protobuf");
        let (reason, error) = dead_letter(fate(1, garbage.into()));
        assert_eq!(reason, DeadLetterReason::DecodeFailed);
        assert!(error.contains("not a choreo.v1.Event"), "{error}");
        let elsewhere = choreo_proto::v1::Event {
            id: "e".into(),
            r#type: "in.put".into(),
            source: "s".into(),
            correlation_id: "run-2".into(),
            ..Default::default()
        };
        let refused = check(
            "events.run-1.in.put",
            &prost::Message::encode_to_vec(&elsewhere),
        )
        .expect_err("another run");
        let (reason, error) = dead_letter(fate(9, refused.into()));
        assert_eq!(reason, DeadLetterReason::ContractViolated);
        assert!(error.contains("correlation_id"), "{error}");
    }

    #[test]
    fn a_crash_loop_is_given_up_on_but_a_handled_redelivery_is_acked() {
        let (reason, error) = dead_letter(fate(4, Outcome::CrashLoop { attempts: 4 }));
        assert_eq!(reason, DeadLetterReason::HandlerFailed);
        assert!(error.contains("delivered 4 times"), "{error}");
        assert_eq!(fate(9, Outcome::AlreadyHandled), Fate::Ack);
        assert_eq!(fate(1, Outcome::RedriveForAnother), Fate::Ack);
    }

    #[test]
    fn unstarted_events_are_handed_back_at_once() {
        assert_eq!(fate(1, Outcome::Unstarted), Fate::HandBack);
    }
}
