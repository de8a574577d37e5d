//! Dead letters: messages an agent gave up on, kept in the `DEADLETTERS` stream with the
//! original bytes untouched and the reason, so they can be read, fixed and redriven.
//!
//! Each dead letter is also announced in the run itself, as a `choreo.dead_lettered` event
//! caused by the event that failed ([`DeadLetterNotice`]). The events stream stays the one
//! log: a trace shows the failure where it happened in the causation tree, and the run board
//! folds failures like any other event, at any point in time.
//!
//! A redrive ([`DeadLetterStore::redrive`]) puts the original bytes back on their subject for
//! the agent that gave up, and only that agent: the copy carries [`REDRIVE_FOR`], and the
//! other agents subscribed to the type acknowledge it without handling it again.

use std::time::SystemTime;

use async_nats::HeaderMap;
use async_nats::jetstream;
use choreo_proto::v1::{DeadLetter, Event};
use prost::Message;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::envelope::{self, Emit, RootEvent};
use crate::log::{LogError, LogQuery, LogReader};
use crate::names::{AgentName, EventType, Namespace, validate_id};
use crate::publish::{PublishError, Publisher, headers, publish_confirmed};
use crate::streams::{DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM};

/// The type of the event that announces a dead letter in its run.
pub const DEAD_LETTERED: &str = "choreo.dead_lettered";

/// Header on a redriven event: the one agent that should handle it.
pub const REDRIVE_FOR: &str = "Choreo-Redrive-For";
/// Header on a redriven event: the dead letter's sequence in `DEADLETTERS`.
pub const REDRIVE_OF: &str = "Choreo-Redrive-Of";

/// The data of a `choreo.dead_lettered` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterNotice {
    pub agent: String,
    pub reason: String,
    pub error: String,
    /// The failed event's id and type. For a message refused as it came (`decode_failed`,
    /// `contract_violated`), whose bytes say nothing the bus can trust: no id, and the type its
    /// subject names.
    pub event_id: String,
    pub event_type: String,
    pub delivery_count: u64,
    /// The failed event's sequence in the events stream.
    pub original_sequence: u64,
    /// Where the dead letter is: its sequence in `DEADLETTERS` (`choreo dlq show N`).
    pub dead_letter_sequence: u64,
}

/// Why a message was dead-lettered. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The handler kept failing until the agent's max deliveries ran out.
    HandlerFailed,
    /// The handler said retrying cannot help, or emitted a type the agent does not declare.
    HandlerRejected,
    /// The handler ran past the agent's handler timeout on its last delivery.
    HandlerTimeout,
    /// The bytes are not a protobuf `choreo.v1.Event`.
    DecodeFailed,
    /// The envelope breaks the wire contract: it disagrees with its subject (another run or
    /// type), lacks a required field, or its causation and depth disagree.
    ContractViolated,
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
            DeadLetterReason::HandlerTimeout => "handler_timeout",
            DeadLetterReason::DecodeFailed => "decode_failed",
            DeadLetterReason::ContractViolated => "contract_violated",
            DeadLetterReason::DepthExceeded => "depth_exceeded",
            DeadLetterReason::BudgetExhausted => "budget_exhausted",
            DeadLetterReason::CycleDetected => "cycle_detected",
        }
    }

    /// Every reason, for parsing and listing.
    pub const ALL: [DeadLetterReason; 8] = [
        DeadLetterReason::HandlerFailed,
        DeadLetterReason::HandlerRejected,
        DeadLetterReason::HandlerTimeout,
        DeadLetterReason::DecodeFailed,
        DeadLetterReason::ContractViolated,
        DeadLetterReason::DepthExceeded,
        DeadLetterReason::BudgetExhausted,
        DeadLetterReason::CycleDetected,
    ];

    /// The reason stored as `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }

    /// Whether the message itself is at fault, not its handling: the same bytes on the same
    /// subject would be refused again, so a redrive cannot help. Such a dead letter is never
    /// taken as the event its bytes may claim to be: it belongs to the run its subject names.
    pub fn is_refused_message(self) -> bool {
        matches!(
            self,
            DeadLetterReason::DecodeFailed | DeadLetterReason::ContractViolated
        )
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
    /// For the `choreo.dead_lettered` notices.
    publisher: Publisher,
}

impl DeadLetterWriter {
    pub fn new(jetstream: jetstream::Context, namespace: Namespace, agent: AgentName) -> Self {
        DeadLetterWriter {
            publisher: Publisher::new(jetstream.clone(), namespace.clone()),
            jetstream,
            namespace,
            agent,
        }
    }

    /// Stores a dead letter, announces it in the run, and waits for both to be confirmed.
    /// Writing the same original twice (after a crash between this and the term) stores each
    /// once.
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
            .filter(|c| validate_id("correlation_id", c).is_ok())
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
        let stored = publish_confirmed(
            &self.jetstream,
            subject,
            size,
            jetstream::message::PublishMessage::build()
                .headers(map)
                .payload(payload.into()),
        )
        .await?;
        let event_type = match original.event {
            Some(_) => letter.event_type,
            None => subject_tokens(original.subject).1.to_string(),
        };
        let notice = DeadLetterNotice {
            agent: self.agent.to_string(),
            reason: reason.as_str().to_string(),
            error: error.to_string(),
            event_id: letter.event_id,
            event_type,
            delivery_count: original.delivery_count,
            original_sequence: original.stream_sequence,
            dead_letter_sequence: stored.sequence,
        };
        let announcement = self.announcement(original, correlation, &notice)?;
        self.publisher
            .send_event(&announcement)
            .await?
            .confirmed()
            .await?;
        Ok(())
    }

    /// The `choreo.dead_lettered` event for `notice`: a child of the failed event when it
    /// decoded, else a root event of the run named by the subject. Its id is derived from the
    /// original's place in the stream, so a rewrite is deduplicated but a redriven copy that
    /// fails again is announced again.
    fn announcement(
        &self,
        original: Original<'_>,
        correlation: &str,
        notice: &DeadLetterNotice,
    ) -> Result<Event, PublishError> {
        let emit = Emit::json(EventType::new(DEAD_LETTERED)?, notice).map_err(|err| {
            PublishError::Refused {
                detail: format!("cannot encode the dead-letter notice: {err}"),
            }
        })?;
        let sequence = original.stream_sequence.to_be_bytes();
        let parts: [&[u8]; 4] = [
            original.stream.as_bytes(),
            &sequence,
            self.agent.as_str().as_bytes(),
            DEAD_LETTERED.as_bytes(),
        ];
        Ok(match original.event {
            Some(parent) => {
                let id = envelope::derived_event_id(envelope::timestamp_millis_of(parent), &parts);
                envelope::stamp_with_id(parent, &self.agent, id, emit)
            }
            None => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0);
                RootEvent::new(emit, self.agent.as_str())
                    .with_id(envelope::derived_event_id(now, &parts))
                    .with_correlation_id(correlation)
                    .into_event()?
            }
        })
    }
}

/// A dead letter as stored, with its place in `DEADLETTERS`.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub sequence: u64,
    pub time: OffsetDateTime,
    pub letter: DeadLetter,
}

impl StoredDeadLetter {
    /// The original event, when its bytes decode.
    pub fn original_event(&self) -> Option<Event> {
        envelope::decode(self.letter.original.clone()).ok()
    }

    /// The run the dead letter belongs to: the failed event's, or for a message refused as it
    /// came (whose bytes claim nothing the bus trusts) the run its subject names.
    pub fn correlation_id(&self) -> &str {
        if self.letter.correlation_id.is_empty() {
            subject_tokens(&self.letter.original_subject).0
        } else {
            &self.letter.correlation_id
        }
    }
}

/// The run and the type an event subject `<ns>.<correlation>.<type tokens>` names; empty
/// where it has none.
pub(crate) fn subject_tokens(subject: &str) -> (&str, &str) {
    let rest = subject.split_once('.').map_or("", |(_, rest)| rest);
    rest.split_once('.').unwrap_or((rest, ""))
}

/// Which dead letters to list. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub agent: Option<String>,
    pub correlation: Option<String>,
    pub reason: Option<DeadLetterReason>,
}

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter with sequence {sequence} in {DEAD_LETTER_STREAM}: see `choreo dlq ls`")]
    NotFound { sequence: u64 },
    #[error(
        "dead letter {sequence} is {reason}: the message itself was refused, so a redrive of \
         the same bytes would be refused the same way; inspect it with `choreo dlq show \
         {sequence}`, publish a corrected event, and purge it"
    )]
    NotRedrivable { sequence: u64, reason: String },
    #[error("dead letter {sequence} is not a choreo.v1.DeadLetter: {detail}")]
    Corrupt { sequence: u64, detail: String },
    #[error(transparent)]
    Read(#[from] LogError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("NATS did not answer ({detail}): retry")]
    Unavailable { detail: String },
}

impl DeadLetterError {
    pub fn is_retryable(&self) -> bool {
        match self {
            DeadLetterError::Read(err) => err.is_retryable(),
            DeadLetterError::Publish(err) => err.is_retryable(),
            DeadLetterError::Unavailable { .. } => true,
            _ => false,
        }
    }
}

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    pub agent: String,
    pub event_id: String,
    pub correlation_id: String,
    /// The copy's sequence in the events stream.
    pub stream_sequence: u64,
}

/// Reads, redrives and purges one namespace's dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    jetstream: jetstream::Context,
    namespace: Namespace,
}

impl DeadLetterStore {
    pub fn new(jetstream: jetstream::Context, namespace: Namespace) -> Self {
        DeadLetterStore {
            jetstream,
            namespace,
        }
    }

    /// The dead letters that match, oldest first.
    pub async fn list(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, DeadLetterError> {
        let subject = format!(
            "{DEAD_LETTER_PREFIX}.{}.{}.{}",
            self.namespace,
            filter.agent.as_deref().unwrap_or("*"),
            filter.correlation.as_deref().unwrap_or("*"),
        );
        let mut reader = LogReader::open(
            &self.jetstream,
            DEAD_LETTER_STREAM,
            LogQuery::filtered(subject),
        )
        .await?;
        let mut letters = Vec::new();
        while let Some(record) = reader.next().await? {
            let letter = decode_letter(record.sequence, &record.payload)?;
            if filter
                .reason
                .is_some_and(|reason| reason.as_str() != letter.reason)
            {
                continue;
            }
            letters.push(StoredDeadLetter {
                sequence: record.sequence,
                time: record.time,
                letter,
            });
        }
        Ok(letters)
    }

    /// One dead letter by its sequence.
    pub async fn get(&self, sequence: u64) -> Result<StoredDeadLetter, DeadLetterError> {
        let stream = self.stream().await?;
        let message = stream.get_raw_message(sequence).await.map_err(|err| {
            use jetstream::stream::RawMessageErrorKind;
            match err.kind() {
                RawMessageErrorKind::NoMessageFound => DeadLetterError::NotFound { sequence },
                _ => DeadLetterError::Unavailable {
                    detail: err.to_string(),
                },
            }
        })?;
        let prefix = format!("{DEAD_LETTER_PREFIX}.{}.", self.namespace);
        if !message.subject.starts_with(&prefix) {
            return Err(DeadLetterError::NotFound { sequence });
        }
        Ok(StoredDeadLetter {
            sequence,
            time: message.time,
            letter: decode_letter(sequence, &message.payload)?,
        })
    }

    /// Puts a dead letter's original event back on its subject for a fresh delivery to the
    /// agent that gave up on it, then removes the dead letter. Redriving the same dead letter
    /// twice publishes one copy (the copy's `Nats-Msg-Id` is derived from the dead letter).
    pub async fn redrive(&self, sequence: u64) -> Result<Redriven, DeadLetterError> {
        let stored = self.get(sequence).await?;
        let letter = &stored.letter;
        let refused = DeadLetterReason::from_name(&letter.reason)
            .is_some_and(DeadLetterReason::is_refused_message);
        let Some(event) = stored.original_event().filter(|_| !refused) else {
            return Err(DeadLetterError::NotRedrivable {
                sequence,
                reason: letter.reason.clone(),
            });
        };
        // The event's own headers, but a dedup key of its own: the original's id is taken.
        let mut map = crate::publish::event_headers(&event);
        map.insert(headers::MSG_ID, format!("redrive-{sequence}").as_str());
        map.insert(REDRIVE_FOR, letter.agent.as_str());
        map.insert(REDRIVE_OF, sequence.to_string().as_str());
        let ack = publish_confirmed(
            &self.jetstream,
            letter.original_subject.clone(),
            letter.original.len(),
            jetstream::message::PublishMessage::build()
                .headers(map)
                .payload(letter.original.clone()),
        )
        .await?;
        self.purge(sequence).await?;
        Ok(Redriven {
            agent: letter.agent.clone(),
            event_id: event.id,
            correlation_id: event.correlation_id,
            stream_sequence: ack.sequence,
        })
    }

    /// Removes one dead letter of this namespace.
    pub async fn purge(&self, sequence: u64) -> Result<(), DeadLetterError> {
        // Read first: a sequence of another namespace's dead letter is "not found" here.
        self.get(sequence).await?;
        self.stream()
            .await?
            .delete_message(sequence)
            .await
            .map_err(|err| DeadLetterError::Unavailable {
                detail: err.to_string(),
            })?;
        Ok(())
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream<()>, DeadLetterError> {
        self.jetstream
            .get_stream_no_info(DEAD_LETTER_STREAM)
            .await
            .map_err(|err| DeadLetterError::Unavailable {
                detail: err.to_string(),
            })
    }
}

fn decode_letter(sequence: u64, payload: &[u8]) -> Result<DeadLetter, DeadLetterError> {
    DeadLetter::decode(payload).map_err(|err| DeadLetterError::Corrupt {
        sequence,
        detail: err.to_string(),
    })
}
