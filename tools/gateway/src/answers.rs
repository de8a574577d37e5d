//! The bodies of the gateway's successful answers, as types: the handlers serialise them and
//! the OpenAPI description ([`crate::openapi`]) is generated from them, so the two cannot
//! drift apart.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use choreo_bus::Published;
use serde::Serialize;
use utoipa::ToSchema;

use crate::intake::Mode;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Accepted {
    /// The event's id: the `Idempotency-Key`, the CloudEvent's `id`, the GitHub delivery, or
    /// one the gateway made.
    pub id: String,
    /// The run it belongs to; an event starting a run has its own id.
    pub correlation_id: String,
    /// Where the events stream stored it.
    pub stream_sequence: u64,
    /// It was stored before (the same id): this request stored nothing new.
    pub duplicate: bool,
}

impl From<&Published> for Accepted {
    fn from(stored: &Published) -> Self {
        Accepted {
            id: stored.event_id.clone(),
            correlation_id: stored.correlation_id.clone(),
            stream_sequence: stored.stream_sequence,
            duplicate: stored.duplicate,
        }
    }
}

/// The events of a batch, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AcceptedBatch {
    pub events: Vec<Accepted>,
}

/// The `202` of `POST /v1/events`: one event, or `{"events": [...]}` for a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Stored {
    One(Accepted),
    Batch(AcceptedBatch),
}

/// `202` with what was stored.
pub fn accepted(mode: Mode, published: &[Published]) -> Response {
    let stored = match (mode, published) {
        (Mode::Batch, _) | (_, [] | [_, _, ..]) => Stored::Batch(AcceptedBatch {
            events: published.iter().map(Accepted::from).collect(),
        }),
        (_, [one]) => Stored::One(Accepted::from(one)),
    };
    (StatusCode::ACCEPTED, axum::Json(stored)).into_response()
}

/// A GitHub delivery that publishes nothing: a `ping`, or an event or action not acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum GithubAnswer {
    /// GitHub checking the hook.
    Pong {
        /// Always `true`.
        pong: bool,
    },
    /// Nothing to do, and why.
    Ignored { ignored: String },
}

/// `GET /healthz`: the process is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz`: NATS is connected and the events stream is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Ready {
    /// Always `connected`.
    #[schema(example = "connected")]
    pub nats: String,
    /// The events stream's name.
    #[schema(example = "EVENTS")]
    pub stream: String,
}
