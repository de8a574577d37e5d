//! Publishing envelopes to the events stream, for external systems and for the runtime alike.
//!
//! Every event goes out the same way ([`Publisher::send_event`]): on
//! `<ns>.<correlation>.<type>`, with `Nats-Msg-Id` = event id so a retried publish is
//! deduplicated by the stream. With the subject, the plain headers (see [`headers`]) let `nats`
//! CLI users see what an event is without decoding protobuf.

use std::sync::Arc;

use async_nats::jetstream::{
    self, context::PublishErrorKind, publish::PublishAck, response::Response,
};
use async_nats::{HeaderMap, HeaderName, Subject};
use choreo_proto::v1::Event;
use prost::Message;

use crate::envelope::RootEvent;
use crate::names::{Namespace, ValidationError};
use crate::streams::is_transient;

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
    /// On an agent's child: how many events the handling that emitted it emitted, so a
    /// redelivery of its input can tell whether they are all stored.
    pub const EMITTED: &str = "Choreo-Emitted";
    /// The envelope's W3C `traceparent`, as a header too (the name W3C trace context uses).
    pub const TRACEPARENT: &str = "traceparent";
}

/// The stream's answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The event's sequence in the stream (the original's, for a duplicate).
    pub stream_sequence: u64,
    /// True when the stream already held an event with this id: nothing new was stored.
    pub duplicate: bool,
}

/// An event the stream stored, with the ids a caller reports: what
/// [`Publisher::publish_root`] answers, since its caller does not hold the envelope it built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: String,
    pub correlation_id: String,
    /// The event's sequence in the stream (the original's, for a duplicate).
    pub stream_sequence: u64,
    /// True when the stream already held an event with this id: nothing new was stored.
    pub duplicate: bool,
}

impl Published {
    /// `event`, which the stream answered with `stored`.
    pub fn of(event: &Event, stored: Stored) -> Self {
        Published {
            event_id: event.id.clone(),
            correlation_id: event.correlation_id.clone(),
            stream_sequence: stored.stream_sequence,
            duplicate: stored.duplicate,
        }
    }
}

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// JetStream answered that no stream captures the subject. Only an answer counts: a
    /// publish that nothing answered is not taken as proof, the server is asked first (see
    /// [`Unavailability`]).
    #[error(
        "no stream captures subject {subject}: create the streams first \
         (`choreo streams ensure`, or choreo_bus::streams::ensure_streams)"
    )]
    NoStream { subject: String },
    #[error("stream is full ({source}): raise its limits or remove old events; nothing was stored")]
    StreamFull {
        #[source]
        source: jetstream::Error,
    },
    #[error("event is {size} bytes, over the server's max_payload: send a smaller payload")]
    TooLarge { size: usize },
    /// JetStream could not take the event just now; the same publish can pass later.
    #[error(
        "NATS JetStream is unavailable ({why}); the event on {subject} may or may not be \
         stored: retry"
    )]
    Unavailable {
        subject: String,
        #[source]
        why: Unavailability,
    },
    #[error("the stream refused the event: {detail}")]
    Refused { detail: String },
    /// The server does not let this connection's credentials publish on the subject. Retrying
    /// cannot help: other credentials are needed.
    #[error(transparent)]
    Forbidden(#[from] crate::permissions::Refusal),
}

/// Why JetStream could not take a publish just now. Each of these passes on its own (a timeout,
/// a lost connection, an election), so a retry is the answer to every one.
#[derive(Debug, thiserror::Error)]
pub enum Unavailability {
    /// No acknowledgement came: the publish timed out, the connection was lost, or too many
    /// publishes are still awaiting theirs.
    #[error(
        "no acknowledgement ({0}): the connection may have dropped, or the stream be electing \
         a leader"
    )]
    NotConfirmed(#[source] jetstream::context::PublishError),
    /// Nothing answered the publish, though JetStream says this stream captures the subject:
    /// the stream has no leader just now, as while its replicas elect one after a server was
    /// lost.
    #[error(
        "stream {stream} captures the subject but nothing answered: it has no leader right \
         now, e.g. while its replicas elect one"
    )]
    NoLeader { stream: String },
    /// Nothing answered the publish, and JetStream's API did not answer which stream captures
    /// the subject either (it timed out, or nothing listens: JetStream is starting, or not
    /// enabled on that server).
    #[error(
        "nothing answered the publish, and JetStream did not answer which stream captures the \
         subject ({0}); is JetStream enabled (nats-server -js) and its cluster up?"
    )]
    NotAnswered(#[source] jetstream::context::RequestError),
    /// JetStream answered that it cannot serve just now: the cluster has no meta leader
    /// (error 10008, "temporarily unavailable"), a group has no leader, the stream is offline.
    #[error("JetStream is not ready: {0}")]
    NotReady(#[source] jetstream::Error),
}

impl PublishError {
    /// Whether trying the same publish again can succeed. Retrying is always safe: the event id
    /// deduplicates.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PublishError::Unavailable { .. })
    }

    /// What a failed publish on `subject` means. A publish that nothing answered ("no
    /// responders", which async-nats reports as `StreamNotFound`) is not taken as a missing
    /// stream: in a cluster only a stream's leader listens on its subjects, so while the
    /// replicas elect a new one nothing answers. JetStream is asked which stream captures the
    /// subject, and only its answer "none" makes it [`PublishError::NoStream`].
    pub(crate) async fn from_nats(
        jetstream: &jetstream::Context,
        subject: &str,
        size: usize,
        err: jetstream::context::PublishError,
    ) -> Self {
        match Self::from_answer(subject, size, err) {
            Ok(known) => known,
            Err(NoResponders) => {
                Self::from_lookup(subject, lookup_stream(jetstream, subject).await)
            }
        }
    }

    /// The error for everything but "no responders", which needs a question to the server.
    fn from_answer(
        subject: &str,
        size: usize,
        err: jetstream::context::PublishError,
    ) -> Result<Self, NoResponders> {
        let unavailable = |why| PublishError::Unavailable {
            subject: subject.to_string(),
            why,
        };
        Ok(match err.kind() {
            PublishErrorKind::StreamNotFound => return Err(NoResponders),
            PublishErrorKind::MaxPayloadExceeded => PublishError::TooLarge { size },
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => unavailable(Unavailability::NotConfirmed(err)),
            _ => {
                let server_error = std::error::Error::source(&err)
                    .and_then(|source| source.downcast_ref::<jetstream::Error>())
                    .cloned();
                match server_error {
                    Some(server)
                        if server.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED =>
                    {
                        PublishError::StreamFull { source: server }
                    }
                    Some(server) if is_transient(server.error_code()) => {
                        unavailable(Unavailability::NotReady(server))
                    }
                    Some(server) => PublishError::Refused {
                        detail: server.to_string(),
                    },
                    None => unavailable(Unavailability::NotConfirmed(err)),
                }
            }
        })
    }

    /// The error for a publish that nothing answered, from JetStream's answer to "which stream
    /// captures this subject".
    fn from_lookup(
        subject: &str,
        answer: Result<Response<StreamNames>, jetstream::context::RequestError>,
    ) -> Self {
        let unavailable = |why| PublishError::Unavailable {
            subject: subject.to_string(),
            why,
        };
        match answer {
            Ok(Response::Ok(names)) => match names.streams.into_iter().flatten().next() {
                Some(stream) => unavailable(Unavailability::NoLeader { stream }),
                None => PublishError::NoStream {
                    subject: subject.to_string(),
                },
            },
            Ok(Response::Err { error }) if is_transient(error.error_code()) => {
                unavailable(Unavailability::NotReady(error))
            }
            // JetStream said no for another reason, e.g. not enabled for this account: asking
            // again will not change it.
            Ok(Response::Err { error }) => PublishError::Refused {
                detail: format!("no stream can take {subject}: {error}"),
            },
            Err(err) => unavailable(Unavailability::NotAnswered(err)),
        }
    }
}

/// A publish that nothing answered: whether a stream captures its subject is still to be asked.
#[derive(Debug)]
struct NoResponders;

/// The part of JetStream's `STREAM.NAMES` answer we read.
#[derive(Debug, serde::Deserialize)]
struct StreamNames {
    #[serde(default)]
    streams: Option<Vec<String>>,
}

/// Asks JetStream which streams capture `subject` (`$JS.API.STREAM.NAMES` with a subject
/// filter). Answered by the meta leader, so it works while a stream has no leader of its own.
async fn lookup_stream(
    jetstream: &jetstream::Context,
    subject: &str,
) -> Result<Response<StreamNames>, jetstream::context::RequestError> {
    jetstream
        .request("STREAM.NAMES", &serde_json::json!({ "subject": subject }))
        .await
}

/// Publishes `message` (`size` bytes of payload) on `subject` outside a [`Publisher`] (dead
/// letters, redrives) and waits for the stream's acknowledgement, failures classified as a
/// [`Publisher`]'s are.
pub(crate) async fn publish_confirmed(
    jetstream: &jetstream::Context,
    subject: String,
    size: usize,
    message: jetstream::message::PublishMessage,
) -> Result<PublishAck, PublishError> {
    let sent = match jetstream.send_publish(subject.clone(), message).await {
        Ok(ack) => ack.await,
        Err(err) => Err(err),
    };
    match sent {
        Ok(ack) => Ok(ack),
        Err(err) => Err(PublishError::from_nats(jetstream, &subject, size, err).await),
    }
}

/// A publish that was sent but whose acknowledgement is still to come. Await [`PendingPublish::confirmed`]
/// to learn whether the stream stored it. Many can be in flight at once.
///
/// It holds only what explaining a failure needs; the caller holds the event (the ids are not
/// copied into every publish in flight).
#[derive(Debug)]
pub struct PendingPublish {
    ack: jetstream::context::PublishAckFuture,
    /// To ask the server what a failure means (see [`PublishError::from_nats`]).
    jetstream: Arc<jetstream::Context>,
    /// Shares the sent message's bytes: kept for the error path without a copy per publish.
    subject: Subject,
    size: usize,
}

impl PendingPublish {
    pub async fn confirmed(self) -> Result<Stored, PublishError> {
        // Once the server has refused this process something, a refusal of this subject ends
        // the wait at once; before, it is found when the confirmation times out (below).
        let answered = if crate::permissions::ever_refused() {
            crate::permissions::refused_or(&self.subject, self.ack.into_future()).await?
        } else {
            self.ack.await
        };
        let ack = match answered {
            Ok(ack) => ack,
            // Boxed: the classification asks the server questions, and its future inlined
            // here would make every pending publish six times larger (1,872 bytes, not 440),
            // which costs on the path that succeeds (the bench holds thousands at once).
            Err(err) => {
                if let Some(refusal) = crate::permissions::recent(&self.subject) {
                    return Err(PublishError::Forbidden(refusal));
                }
                return Err(Box::pin(PublishError::from_nats(
                    &self.jetstream,
                    &self.subject,
                    self.size,
                    err,
                ))
                .await);
            }
        };
        Ok(Stored {
            stream_sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// Publishes envelopes into one namespace.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// Shared with every [`PendingPublish`]: one reference count per publish, where a clone of
    /// the context would cost an allocation and several.
    jetstream: Arc<jetstream::Context>,
    namespace: Namespace,
}

impl Publisher {
    pub fn new(jetstream: jetstream::Context, namespace: Namespace) -> Self {
        Publisher {
            jetstream: Arc::new(jetstream),
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
        let stored = self.send_event(&event).await?.confirmed().await?;
        Ok(Published {
            event_id: event.id,
            correlation_id: event.correlation_id,
            stream_sequence: stored.stream_sequence,
            duplicate: stored.duplicate,
        })
    }

    /// Sends a complete envelope without waiting for the stream's acknowledgement.
    pub async fn send_event(&self, event: &Event) -> Result<PendingPublish, PublishError> {
        self.send_with_headers(event, event_headers(event)).await
    }

    /// Sends the `index`-th of the `emitted` children of a handling: [`Publisher::send_event`]
    /// with that count in the [`headers::EMITTED`] header and the handling's record
    /// ([`crate::handling`]).
    pub async fn send_child(
        &self,
        event: &Event,
        index: usize,
        emitted: usize,
        handling: &crate::handling::ChildHeaders,
    ) -> Result<PendingPublish, PublishError> {
        let mut headers = event_headers(event);
        headers.insert(
            const { HeaderName::from_static(headers::EMITTED) },
            itoa::Buffer::new().format(emitted),
        );
        handling.write(index, &mut headers);
        self.send_with_headers(event, headers).await
    }

    async fn send_with_headers(
        &self,
        event: &Event,
        headers: HeaderMap,
    ) -> Result<PendingPublish, PublishError> {
        let subject = Subject::from(
            self.namespace
                .event_subject(&event.correlation_id, &event.r#type),
        );
        let payload = event.encode_to_vec();
        let size = payload.len();
        // Ended when this send is: the span covers handing the event to NATS.
        let _span = crate::telemetry::producer_span(event, &subject, size);
        let message = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(payload.into());
        let ack = match self.jetstream.send_publish(subject.clone(), message).await {
            Ok(ack) => ack,
            Err(err) => {
                // Boxed for the same reason as in `PendingPublish::confirmed`.
                return Err(Box::pin(PublishError::from_nats(
                    &self.jetstream,
                    &subject,
                    size,
                    err,
                ))
                .await);
            }
        };
        Ok(PendingPublish {
            ack,
            jetstream: Arc::clone(&self.jetstream),
            subject,
            size,
        })
    }
}

/// The headers every event message carries (public so a benchmark can send the same wire
/// messages without the bus).
///
/// Names are made at compile time (a name given as `&str` is checked and looked up among
/// NATS's standard ones on every insert) and numbers written without `fmt`: this runs for
/// every event published.
pub fn event_headers(event: &Event) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(
        const { HeaderName::from_static(headers::MSG_ID) },
        event.id.as_str(),
    );
    if !event.causation_id.is_empty() {
        map.insert(
            const { HeaderName::from_static(headers::CAUSATION_ID) },
            event.causation_id.as_str(),
        );
    }
    map.insert(
        const { HeaderName::from_static(headers::DEPTH) },
        itoa::Buffer::new().format(event.depth),
    );
    // Also outside the envelope, so NATS's own message tracing, and anything that reads
    // headers only, can follow the trace.
    if !event.traceparent.is_empty() {
        map.insert(
            const { HeaderName::from_static(headers::TRACEPARENT) },
            event.traceparent.as_str(),
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::{
        PublishError as NatsPublishError, RequestError, RequestErrorKind,
    };

    use super::*;

    const SUBJECT: &str = "events.run-1.text.submitted";

    /// A JetStream error answer, as the server sends it.
    fn server_error(code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 503, "err_code": code, "description": description
        }))
        .expect("a JetStream error")
    }

    fn answered(err: NatsPublishError) -> PublishError {
        PublishError::from_answer(SUBJECT, 10, err).expect("classified without a question")
    }

    fn looked_up(json: serde_json::Value) -> PublishError {
        let answer: Response<StreamNames> = serde_json::from_value(json).expect("an API answer");
        PublishError::from_lookup(SUBJECT, Ok(answer))
    }

    #[test]
    fn nothing_answering_a_publish_is_a_question_not_a_missing_stream() {
        let no_responders = NatsPublishError::new(PublishErrorKind::StreamNotFound);
        assert!(PublishError::from_answer(SUBJECT, 10, no_responders).is_err());
    }

    #[test]
    fn no_stream_only_when_jetstream_says_none_captures_the_subject() {
        for none in [
            serde_json::json!({"type": "io.nats.jetstream.api.v1.stream_names_response",
                               "total": 0, "offset": 0, "limit": 1024, "streams": null}),
            serde_json::json!({"total": 0, "streams": []}),
        ] {
            let err = looked_up(none);
            assert!(matches!(err, PublishError::NoStream { .. }), "{err:?}");
            assert!(!err.is_retryable());
            assert!(err.to_string().contains("create the streams"));
        }
    }

    #[test]
    fn a_stream_that_exists_but_did_not_answer_is_electing_a_leader() {
        let err = looked_up(serde_json::json!({"total": 1, "streams": ["EVENTS"]}));
        assert!(
            matches!(&err, PublishError::Unavailable { why: Unavailability::NoLeader { stream }, .. } if stream == "EVENTS"),
            "{err:?}"
        );
        assert!(err.is_retryable());
        let message = err.to_string();
        assert!(message.contains("unavailable") && message.contains("leader"));
        assert!(message.contains("retry") && !message.contains("create the streams"));
    }

    #[test]
    fn a_cluster_without_a_meta_leader_is_unavailable() {
        let err = looked_up(serde_json::json!({"error": {
            "code": 503, "err_code": 10008,
            "description": "JetStream system temporarily unavailable"}}));
        assert!(
            matches!(
                &err,
                PublishError::Unavailable {
                    why: Unavailability::NotReady(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_retryable());
        assert!(err.to_string().contains("temporarily unavailable"));
    }

    #[test]
    fn a_lookup_nobody_answers_is_unavailable() {
        for kind in [RequestErrorKind::TimedOut, RequestErrorKind::NoResponders] {
            let err = PublishError::from_lookup(SUBJECT, Err(RequestError::new(kind)));
            assert!(
                matches!(
                    &err,
                    PublishError::Unavailable {
                        why: Unavailability::NotAnswered(_),
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.is_retryable());
            let source = std::error::Error::source(&err).expect("the cause is kept");
            assert!(source.to_string().contains("JetStream did not answer"));
        }
    }

    #[test]
    fn a_lookup_refused_for_good_is_not_retried() {
        let err = looked_up(serde_json::json!({"error": {
            "code": 503, "err_code": 10039,
            "description": "JetStream not enabled for account"}}));
        assert!(matches!(err, PublishError::Refused { .. }), "{err:?}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn no_acknowledgement_is_unavailable_with_its_cause() {
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::MaxAckPending,
        ] {
            let err = answered(NatsPublishError::new(kind));
            assert!(
                matches!(
                    &err,
                    PublishError::Unavailable {
                        why: Unavailability::NotConfirmed(_),
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.is_retryable());
            assert!(std::error::Error::source(&err).is_some());
        }
    }

    #[test]
    fn server_answers_are_classified_by_code() {
        let with = |code, text| {
            answered(NatsPublishError::with_source(
                PublishErrorKind::Other,
                server_error(code, text),
            ))
        };
        for transient in [10008, 10009, 10118] {
            let err = with(transient, "not now");
            assert!(err.is_retryable(), "{transient}: {err:?}");
        }
        let full = with(10077, "maximum messages exceeded");
        assert!(matches!(full, PublishError::StreamFull { .. }), "{full:?}");
        assert!(!full.is_retryable());
        let refused = with(10071, "wrong last sequence");
        assert!(
            matches!(refused, PublishError::Refused { .. }),
            "{refused:?}"
        );
        assert!(!refused.is_retryable());
        let too_large = answered(NatsPublishError::new(PublishErrorKind::MaxPayloadExceeded));
        assert!(matches!(too_large, PublishError::TooLarge { size: 10 }));
    }

    #[test]
    fn event_headers_carry_the_id_the_cause_and_the_depth() {
        use crate::envelope::{Emit, stamp_child};
        use crate::names::{AgentName, EventType};

        let emit = || {
            Emit::new(
                EventType::new("a.b").expect("type"),
                "text/plain",
                "x".into(),
            )
        };
        let root = RootEvent::new(emit(), "test").into_event().expect("valid");
        let agent = AgentName::new("agent").expect("name");
        let mut child = stamp_child(&root, &agent, 0, emit());
        child.depth = 12;

        let root_headers = event_headers(&root);
        assert_eq!(
            root_headers.get(headers::MSG_ID).map(|v| v.as_str()),
            Some(root.id.as_str())
        );
        assert_eq!(root_headers.get(headers::CAUSATION_ID), None);
        assert_eq!(
            root_headers.get(headers::DEPTH).map(|v| v.as_str()),
            Some("0")
        );

        let child_headers = event_headers(&child);
        assert_eq!(
            child_headers.get(headers::MSG_ID).map(|v| v.as_str()),
            Some(child.id.as_str())
        );
        assert_eq!(
            child_headers.get(headers::CAUSATION_ID).map(|v| v.as_str()),
            Some(root.id.as_str())
        );
        assert_eq!(
            child_headers.get(headers::DEPTH).map(|v| v.as_str()),
            Some("12")
        );
    }
}
