//! Dead letters: messages an agent gave up on, kept in the `DEADLETTERS` stream with the
//! original bytes untouched and the reason, so they can be read, fixed and redriven.

use std::time::SystemTime;

use async_nats::HeaderMap;
use async_nats::jetstream;
use choreo_proto::v1::{DeadLetter, Event};
use prost::Message;

use crate::names::{AgentName, Namespace};
use crate::publish::{PublishError, headers};
use crate::streams::DEAD_LETTER_PREFIX;

/// Why a message was dead-lettered. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The handler kept failing until the agent's max deliveries ran out.
    HandlerFailed,
    /// The handler said retrying cannot help, or emitted a type the agent does not declare.
    HandlerRejected,
    /// The bytes are not a usable `choreo.v1.Event`.
    DecodeFailed,
    /// Publishing the children would have passed the depth limit.
    DepthExceeded,
    /// The run has used its event or token budget.
    BudgetExhausted,
    /// The agent kept handling the same event type along one causation chain.
    CycleDetected,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::HandlerFailed => "handler_failed",
            DeadLetterReason::HandlerRejected => "handler_rejected",
            DeadLetterReason::DecodeFailed => "decode_failed",
            DeadLetterReason::DepthExceeded => "depth_exceeded",
            DeadLetterReason::BudgetExhausted => "budget_exhausted",
            DeadLetterReason::CycleDetected => "cycle_detected",
        }
    }

    /// Every reason, for parsing and listing.
    pub const ALL: [DeadLetterReason; 6] = [
        DeadLetterReason::HandlerFailed,
        DeadLetterReason::HandlerRejected,
        DeadLetterReason::DecodeFailed,
        DeadLetterReason::DepthExceeded,
        DeadLetterReason::BudgetExhausted,
        DeadLetterReason::CycleDetected,
    ];

    /// The reason stored as `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header names set on dead-letter messages, beside `Nats-Msg-Id`.
pub mod dead_letter_headers {
    pub const REASON: &str = "Choreo-Reason";
    pub const AGENT: &str = "Choreo-Agent";
}

/// The message being given up on, as it came from the stream.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    pub subject: &'a str,
    pub payload: &'a [u8],
    pub stream: &'a str,
    pub stream_sequence: u64,
    pub delivery_count: u64,
    /// The decoded event, when the payload decoded.
    pub event: Option<&'a Event>,
}

/// Writes dead letters for one agent.
#[derive(Debug, Clone)]
pub struct DeadLetterWriter {
    jetstream: jetstream::Context,
    namespace: Namespace,
    agent: AgentName,
}

impl DeadLetterWriter {
    pub fn new(jetstream: jetstream::Context, namespace: Namespace, agent: AgentName) -> Self {
        DeadLetterWriter {
            jetstream,
            namespace,
            agent,
        }
    }

    /// Stores a dead letter and waits for the stream to confirm it. Writing the same original
    /// twice (after a crash between this and the term) stores it once.
    pub async fn write(
        &self,
        original: Original<'_>,
        reason: DeadLetterReason,
        error: &str,
    ) -> Result<(), PublishError> {
        let correlation = original
            .event
            .map(|e| e.correlation_id.as_str())
            .or_else(|| self.namespace.correlation_of_subject(original.subject))
            .filter(|c| crate::names::validate_id("correlation_id", c).is_ok())
            .unwrap_or("unknown");
        let subject = format!(
            "{DEAD_LETTER_PREFIX}.{}.{}.{correlation}",
            self.namespace, self.agent
        );
        let letter = DeadLetter {
            original_subject: original.subject.to_string(),
            original: original.payload.to_vec().into(),
            reason: reason.as_str().to_string(),
            error: error.to_string(),
            agent: self.agent.to_string(),
            delivery_count: original.delivery_count,
            stream_sequence: original.stream_sequence,
            stream: original.stream.to_string(),
            time: Some(SystemTime::now().into()),
            event_id: original.event.map(|e| e.id.clone()).unwrap_or_default(),
            correlation_id: original
                .event
                .map(|e| e.correlation_id.clone())
                .unwrap_or_default(),
            event_type: original.event.map(|e| e.r#type.clone()).unwrap_or_default(),
        };
        let mut map = HeaderMap::new();
        let dedup_key = format!(
            "dlq-{}-{}-{}",
            original.stream, original.stream_sequence, self.agent
        );
        map.insert(headers::MSG_ID, dedup_key.as_str());
        map.insert(dead_letter_headers::REASON, reason.as_str());
        map.insert(dead_letter_headers::AGENT, self.agent.as_str());
        let payload = letter.encode_to_vec();
        let size = payload.len();
        let pending = self
            .jetstream
            .send_publish(
                subject.clone(),
                jetstream::message::PublishMessage::build()
                    .headers(map)
                    .payload(payload.into()),
            )
            .await
            .map_err(|err| PublishError::from_nats(&subject, size, err))?;
        pending
            .await
            .map_err(|err| PublishError::from_nats(&subject, size, err))?;
        Ok(())
    }
}
