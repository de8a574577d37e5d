//! The library every choreo agent and tool links.
//!
//! # Layout
//!
//! - [`names`]: validated event types, agent names, namespaces and ids; the subject scheme
//!   `<ns>.<correlation_id>.<type tokens>`.
//! - [`envelope`]: building root events ([`RootEvent`]), what handlers return ([`Emit`]),
//!   stamping children (ids, correlation, causation, depth, trace context) and decoding.
//! - [`connect`]: how to reach NATS ([`NatsConfig`]), credentials and TLS, reconnect behaviour.
//! - [`permissions`]: what the server refused (permission violations), named by subject.
//! - [`streams`]: idempotent set-up of the `EVENTS` and `DEADLETTERS` streams.
//! - [`publish`]: publishing envelopes with deduplication ([`Publisher`]).
//! - [`runtime`]: the agent runtime ([`Runtime`]): durable pull consumer → decode → handler →
//!   publish children → ack, with retries, dead letters and graceful shutdown.
//! - [`guard`]: storm control: depth and cycle limits, shared run budgets, rate limiters and
//!   circuit breakers.
//! - [`dead_letter`]: what a dead letter holds and why it was written.
//! - [`handling`]: each handling's record in the log (received, took, spend, end) and the
//!   meter a handler's model calls are counted on.
//! - [`serve`] and [`settings`]: the whole `main` of an agent binary, configured by flags,
//!   environment or a file.
//! - [`metrics`]: an agent's Prometheus metrics and its `/healthz` and `/readyz` probes.
//! - [`telemetry`] and [`shutdown`]: logging set-up and SIGINT/SIGTERM for binaries.
//!
//! Data flows one way: an external system publishes a [`RootEvent`]; the stream stores it; each
//! subscribed agent's [`Runtime`] hands it to a [`Handler`], which returns [`Emit`]s; the runtime
//! stamps and publishes them as children; and so on until no agent reacts.

pub mod cloudevents;
pub mod connect;
pub mod dead_letter;
pub mod envelope;
pub mod guard;
pub mod handling;
pub mod log;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod permissions;
pub mod projection;
pub mod publish;
pub mod runtime;
pub mod serve;
pub mod settings;
pub mod shutdown;
pub mod streams;
pub mod telemetry;
pub mod trace;

pub use choreo_proto::v1::{DeadLetter, Event};
pub use connect::{InitialConnect, NatsConfig};
pub use envelope::{Emit, RootEvent};
pub use names::{AgentName, EventType, Namespace, ValidationError};
pub use publish::{PublishError, Published, Publisher, Stored};
pub use runtime::{
    Agent, Handler, HandlerError, HandlerErrorKind, Incoming, Runtime, RuntimeConfig, handler_fn,
};
pub use serve::serve;
pub use streams::{StreamsConfig, ensure_streams};
