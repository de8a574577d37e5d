//! The wire contract: what a message on an event subject must be for the runtime to handle it,
//! whoever published it and in whatever language. `docs/wire-contract.md` says the same for
//! people; `proto/vectors/wire-contract.json` holds messages and their verdicts for clients in
//! other languages to test against, and a test below runs [`check`] on every one.
//!
//! A message is refused when:
//! - its bytes are not a protobuf `choreo.v1.Event` ([`ContractError::Undecodable`]: dead
//!   letter `decode_failed`);
//! - or they are, but the envelope breaks a rule ([`ContractError::Violated`]: dead letter
//!   `contract_violated`, the field named): `id`, `type`, `correlation_id` and `source` are
//!   required and well formed; the subject is `<ns>.<correlation_id>.<type>` of this very
//!   envelope; a root (no `causation_id`) has depth 0 and a child depth 1 or more; `time`,
//!   when given, is a valid protobuf `Timestamp`.
//!
//! The subject is what NATS routes by and what a trace reads, so an envelope that disagrees
//! with it is never handled as either: handling it as the subject says would send its
//! children to the body's run, and as the body says would hide it from the subject's run.
//! The fate table (`runtime::fate`) decides what each refusal becomes.

use choreo_proto::Timestamp;

use super::{DecodeError, EventView};
use crate::names::{ValidationError, validate_id, validate_label, validate_type};

/// Earliest and latest seconds of a protobuf `Timestamp`: 0001-01-01 and 9999-12-31T23:59:59Z.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// Why a message on an event subject is refused.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The bytes are not a protobuf `choreo.v1.Event`.
    #[error(transparent)]
    Undecodable(DecodeError),
    /// An envelope that breaks a rule of the contract; the error names the field.
    #[error("breaks the wire contract (docs/wire-contract.md): {0}")]
    Violated(ValidationError),
}

impl ContractError {
    /// The field at fault, for a violation.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ContractError::Undecodable(_) => None,
            ContractError::Violated(err) => Some(err.field),
        }
    }
}

impl From<ValidationError> for ContractError {
    fn from(err: ValidationError) -> Self {
        ContractError::Violated(err)
    }
}

/// Checks a message as it came from the stream: `payload` published on `subject`.
///
/// Reads the envelope in place (no allocation), so it costs a walk over the bytes.
///
/// ```
/// use choreo_bus::envelope::contract::{check, ContractError};
/// let refused = check("events.run-1.a.b", b"\xff\xff").unwrap_err();
/// assert!(matches!(refused, ContractError::Undecodable(_)));
/// ```
pub fn check(subject: &str, payload: &[u8]) -> Result<(), ContractError> {
    let event = EventView::read(payload).map_err(ContractError::Undecodable)?;
    validate_id("id", event.id)?;
    validate_type(event.event_type)?;
    validate_id("correlation_id", event.correlation_id)?;
    validate_label("source", event.source)?;
    check_subject(subject, &event)?;
    check_causation(&event)?;
    if let Some(time) = &event.time {
        check_time(time)?;
    }
    Ok(())
}

/// The subject must be `<ns>.<correlation_id>.<type>` of this envelope. The namespace is not
/// checked here: the agent's consumer only receives its own namespace's subjects.
fn check_subject(subject: &str, event: &EventView<'_>) -> Result<(), ValidationError> {
    let rest = subject.split_once('.').map_or("", |(_, rest)| rest);
    let (correlation, event_type) = rest.split_once('.').unwrap_or((rest, ""));
    let disagrees = |field: &'static str, body: &str, said: &str| {
        ValidationError::new(
            field,
            format!(
                "the envelope says {body:?} but its subject {subject} says {said:?}; publish \
                 every event on <namespace>.<correlation_id>.<type> of its own envelope"
            ),
        )
    };
    if correlation != event.correlation_id {
        return Err(disagrees(
            "correlation_id",
            event.correlation_id,
            correlation,
        ));
    }
    if event_type != event.event_type {
        return Err(disagrees("type", event.event_type, event_type));
    }
    Ok(())
}

/// A root has no cause and depth 0; a child names its cause (another event) and is deeper.
fn check_causation(event: &EventView<'_>) -> Result<(), ValidationError> {
    if event.causation_id.is_empty() {
        if event.depth != 0 {
            return Err(ValidationError::new(
                "depth",
                format!(
                    "is {} on an event without a causation_id; a root has depth 0 (only the \
                     agent runtime publishes children)",
                    event.depth
                ),
            ));
        }
        return Ok(());
    }
    validate_id("causation_id", event.causation_id)?;
    if event.causation_id == event.id {
        return Err(ValidationError::new(
            "causation_id",
            "names the event itself; an event is caused by another",
        ));
    }
    if event.depth == 0 {
        return Err(ValidationError::new(
            "depth",
            "is 0 on an event with a causation_id; a child is one deeper than its cause",
        ));
    }
    Ok(())
}

/// A protobuf `Timestamp` as its definition allows: years 1 to 9999, nanos below a second.
fn check_time(time: &Timestamp) -> Result<(), ValidationError> {
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(ValidationError::new(
            "time",
            format!(
                "has nanos {}; a Timestamp's nanos are 0 to 999999999",
                time.nanos
            ),
        ));
    }
    if !TIMESTAMP_SECONDS.contains(&time.seconds) {
        return Err(ValidationError::new(
            "time",
            format!(
                "has seconds {}; a Timestamp is between 0001-01-01 and 9999-12-31 UTC",
                time.seconds
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use choreo_proto::v1::Event;
    use prost::Message;
    use serde::Deserialize;

    use super::*;
    use crate::runtime::fate::{Fate, Outcome, decide};
    use crate::runtime::{Agent, RuntimeConfig};

    /// The shared test vectors, as a client in another language reads them.
    const VECTORS: &str = include_str!("../../../proto/vectors/wire-contract.json");

    #[derive(Debug, Deserialize)]
    struct Vectors {
        cases: Vec<Case>,
    }

    #[derive(Debug, Deserialize)]
    struct Case {
        name: String,
        subject: String,
        envelope_base64: String,
        /// The envelope's fields, for people and for checking the bytes; absent for bytes
        /// that are not an envelope.
        #[serde(default)]
        fields: Option<Fields>,
        verdict: Verdict,
    }

    #[derive(Debug, Deserialize)]
    struct Verdict {
        /// `handled`, or `dead_lettered`.
        outcome: String,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        field: Option<String>,
    }

    /// `choreo.v1.Event` as the vectors spell it (proto3 JSON names, `time` as its two parts).
    #[derive(Debug, Default, Deserialize)]
    #[serde(default, rename_all = "camelCase", deny_unknown_fields)]
    struct Fields {
        id: String,
        r#type: String,
        source: String,
        time: Option<TimeFields>,
        correlation_id: String,
        causation_id: String,
        depth: u32,
        content_type: String,
        /// UTF-8 text of the payload.
        data: String,
        attributes: BTreeMap<String, String>,
        traceparent: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct TimeFields {
        seconds: i64,
        nanos: i32,
    }

    impl Fields {
        fn event(self) -> Event {
            Event {
                id: self.id,
                r#type: self.r#type,
                source: self.source,
                time: self.time.map(|t| Timestamp {
                    seconds: t.seconds,
                    nanos: t.nanos,
                }),
                correlation_id: self.correlation_id,
                causation_id: self.causation_id,
                depth: self.depth,
                content_type: self.content_type,
                data: self.data.into_bytes().into(),
                attributes: self.attributes,
                traceparent: self.traceparent,
                ..Event::default()
            }
        }
    }

    /// What the runtime does with a message: the contract's check, then the fate table.
    fn verdict(subject: &str, bytes: &[u8]) -> Fate {
        let agent = Agent::builder("vectors")
            .subscribes("in.put")
            .emits("out.put")
            .build()
            .expect("valid agent");
        let outcome = match check(subject, bytes) {
            Ok(()) => Outcome::Published,
            Err(refused) => Outcome::from(refused),
        };
        decide(&agent, &RuntimeConfig::default(), 1, outcome)
    }

    #[test]
    fn the_shared_vectors_get_the_verdicts_they_state() {
        let vectors: Vectors = serde_json::from_str(VECTORS).expect("the vectors file is JSON");
        assert!(vectors.cases.len() >= 10, "too few vectors");
        for case in vectors.cases {
            let bytes = BASE64
                .decode(&case.envelope_base64)
                .unwrap_or_else(|err| panic!("{}: not base64: {err}", case.name));
            if let Some(fields) = case.fields {
                let encoded = fields.event().encode_to_vec();
                assert!(
                    encoded == bytes,
                    "{}: the bytes are not the fields it lists, which encode as {}",
                    case.name,
                    BASE64.encode(&encoded)
                );
            }
            let refused = check(&case.subject, &bytes).err();
            match (verdict(&case.subject, &bytes), &case.verdict) {
                (Fate::Ack, Verdict { outcome, .. }) if outcome == "handled" => {}
                (Fate::DeadLetter { reason, error }, expected)
                    if expected.outcome == "dead_lettered" =>
                {
                    assert_eq!(
                        Some(reason.as_str()),
                        expected.reason.as_deref(),
                        "{}: {error}",
                        case.name
                    );
                    assert_eq!(
                        refused.as_ref().and_then(ContractError::field),
                        expected.field.as_deref(),
                        "{}: {error}",
                        case.name
                    );
                }
                (fate, expected) => panic!("{}: {fate:?}, expected {expected:?}", case.name),
            }
        }
    }

    fn event() -> Event {
        Event {
            id: "evt-1".into(),
            r#type: "review.requested".into(),
            source: "ci".into(),
            correlation_id: "run-1".into(),
            ..Event::default()
        }
    }

    const SUBJECT: &str = "events.run-1.review.requested";

    fn violated(event: &Event, subject: &str) -> ValidationError {
        match check(subject, &event.encode_to_vec()) {
            Err(ContractError::Violated(err)) => err,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn an_envelope_that_disagrees_with_its_subject_is_refused_saying_both() {
        assert!(check(SUBJECT, &event().encode_to_vec()).is_ok());
        let other_run = violated(&event(), "events.run-2.review.requested");
        assert_eq!(other_run.field, "correlation_id");
        assert!(
            other_run.reason.contains("\"run-1\"") && other_run.reason.contains("\"run-2\""),
            "{other_run}"
        );
        let other_type = Event {
            r#type: "review.other".into(),
            ..event()
        };
        let err = violated(&other_type, SUBJECT);
        assert_eq!(err.field, "type");
        assert!(err.reason.contains("\"review.requested\""), "{err}");
        // A type that is a prefix of the subject's is not the same type.
        let shorter = Event {
            r#type: "review".into(),
            ..event()
        };
        assert_eq!(violated(&shorter, SUBJECT).field, "type");
    }

    #[test]
    fn causation_and_depth_must_agree() {
        let deep_root = Event {
            depth: 2,
            ..event()
        };
        assert_eq!(violated(&deep_root, SUBJECT).field, "depth");
        let shallow_child = Event {
            causation_id: "evt-0".into(),
            ..event()
        };
        assert_eq!(violated(&shallow_child, SUBJECT).field, "depth");
        let own_cause = Event {
            causation_id: "evt-1".into(),
            depth: 1,
            ..event()
        };
        assert_eq!(violated(&own_cause, SUBJECT).field, "causation_id");
        let child = Event {
            causation_id: "evt-0".into(),
            depth: 1,
            ..event()
        };
        assert!(check(SUBJECT, &child.encode_to_vec()).is_ok());
    }

    #[test]
    fn a_time_must_be_a_valid_timestamp_when_given() {
        for (seconds, nanos) in [(0, -1), (0, 1_000_000_000), (253_402_300_800, 0)] {
            let event = Event {
                time: Some(Timestamp { seconds, nanos }),
                ..event()
            };
            assert_eq!(violated(&event, SUBJECT).field, "time", "{seconds} {nanos}");
        }
        let fine = Event {
            time: Some(Timestamp {
                seconds: 1_800_000_000,
                nanos: 5,
            }),
            ..event()
        };
        assert!(check(SUBJECT, &fine.encode_to_vec()).is_ok());
    }
}
