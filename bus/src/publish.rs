//! Publishing envelopes to the events stream, for external systems and for the runtime alike.
//!
//! Every event goes out the same way ([`Publisher::send_event`]): on
//! `<ns>.<correlation>.<type>`, with `Nats-Msg-Id` = event id so a retried publish is
//! deduplicated by the stream. With the subject, the plain headers (see [`headers`]) let `nats`
//! CLI users see what an event is without decoding protobuf.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use choreo_proto::v1::Event;
use prost::Message;

use crate::envelope::RootEvent;
use crate::names::{Namespace, ValidationError};

/// Header names set on event messages.
///
/// Only what the subject (`<ns>.<correlation>.<type>`) does not already say, because every
/// header byte is parsed by the server on every publish: the id (as `Nats-Msg-Id`, the
/// deduplication key), the causation id (absent on root events) and the depth.
pub mod headers {
    /// The event id; the stream's deduplication key.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const CAUSATION_ID: &str = "Choreo-Causation-Id";
    pub const DEPTH: &str = "Choreo-Depth";
}

/// The stream's answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: String,
    pub correlation_id: String,
    /// The event's sequence in the stream (the original's, for a duplicate).
    pub stream_sequence: u64,
    /// True when the stream already held an event with this id: nothing new was stored.
    pub duplicate: bool,
}

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(
        "no stream captures subject {subject}: create the streams first \
         (`choreo streams ensure`, or choreo_bus::streams::ensure_streams)"
    )]
    NoStream { subject: String },
    #[error("stream is full ({detail}): raise its limits or remove old events; nothing was stored")]
    StreamFull { detail: String },
    #[error("event is {size} bytes, over the server's max_payload: send a smaller payload")]
    TooLarge { size: usize },
    #[error("NATS did not confirm the publish ({detail}); it may not be stored: retry")]
    Unavailable { detail: String },
    #[error("the stream refused the event: {detail}")]
    Refused { detail: String },
}

impl PublishError {
    /// Whether trying the same publish again can succeed. Retrying is always safe: the event id
    /// deduplicates.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PublishError::Unavailable { .. })
    }

    pub(crate) fn from_nats(
        subject: &str,
        size: usize,
        err: jetstream::context::PublishError,
    ) -> Self {
        match err.kind() {
            PublishErrorKind::StreamNotFound => PublishError::NoStream {
                subject: subject.to_string(),
            },
            PublishErrorKind::MaxPayloadExceeded => PublishError::TooLarge { size },
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => PublishError::Unavailable {
                detail: err.to_string(),
            },
            _ => {
                let server_error = std::error::Error::source(&err)
                    .and_then(|source| source.downcast_ref::<jetstream::Error>());
                match server_error {
                    Some(server)
                        if server.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED =>
                    {
                        PublishError::StreamFull {
                            detail: server.to_string(),
                        }
                    }
                    Some(server) => PublishError::Refused {
                        detail: server.to_string(),
                    },
                    None => PublishError::Unavailable {
                        detail: err.to_string(),
                    },
                }
            }
        }
    }
}

/// A publish that was sent but whose acknowledgement is still to come. Await [`PendingPublish::confirmed`]
/// to learn whether the stream stored it. Many can be in flight at once.
#[derive(Debug)]
pub struct PendingPublish {
    ack: jetstream::context::PublishAckFuture,
    subject: String,
    size: usize,
    event_id: String,
    correlation_id: String,
}

impl PendingPublish {
    pub async fn confirmed(self) -> Result<Published, PublishError> {
        let ack = self
            .ack
            .await
            .map_err(|err| PublishError::from_nats(&self.subject, self.size, err))?;
        Ok(Published {
            event_id: self.event_id,
            correlation_id: self.correlation_id,
            stream_sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// Publishes envelopes into one namespace.
#[derive(Debug, Clone)]
pub struct Publisher {
    jetstream: jetstream::Context,
    namespace: Namespace,
}

impl Publisher {
    pub fn new(jetstream: jetstream::Context, namespace: Namespace) -> Self {
        Publisher {
            jetstream,
            namespace,
        }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Validates and publishes an event from outside, and waits until the stream has stored it.
    ///
    /// ```no_run
    /// # async fn demo(publisher: choreo_bus::Publisher) -> Result<(), Box<dyn std::error::Error>> {
    /// use choreo_bus::{Emit, EventType, RootEvent};
    /// let emit = Emit::json(EventType::new("text.submitted")?, &serde_json::json!({"text": "hi"}))?;
    /// let published = publisher.publish_root(RootEvent::new(emit, "cli")).await?;
    /// println!("{} in run {}", published.event_id, published.correlation_id);
    /// # Ok(()) }
    /// ```
    pub async fn publish_root(&self, root: RootEvent) -> Result<Published, PublishError> {
        let event = root.into_event()?;
        self.send_event(&event).await?.confirmed().await
    }

    /// Sends a complete envelope without waiting for the stream's acknowledgement.
    pub async fn send_event(&self, event: &Event) -> Result<PendingPublish, PublishError> {
        let subject = self
            .namespace
            .event_subject(&event.correlation_id, &event.r#type);
        let payload = event.encode_to_vec();
        let size = payload.len();
        let message = jetstream::message::PublishMessage::build()
            .headers(event_headers(event))
            .payload(payload.into());
        let ack = self
            .jetstream
            .send_publish(subject.clone(), message)
            .await
            .map_err(|err| PublishError::from_nats(&subject, size, err))?;
        Ok(PendingPublish {
            ack,
            subject,
            size,
            event_id: event.id.clone(),
            correlation_id: event.correlation_id.clone(),
        })
    }
}

/// The headers every event message carries.
pub(crate) fn event_headers(event: &Event) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(headers::MSG_ID, event.id.as_str());
    if !event.causation_id.is_empty() {
        map.insert(headers::CAUSATION_ID, event.causation_id.as_str());
    }
    map.insert(headers::DEPTH, event.depth.to_string().as_str());
    map
}
