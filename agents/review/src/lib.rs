//! The code-review team's shared vocabulary: its events, the diff parser, findings, the
//! specialists' brains and handler, and the report.
//!
//! # Layout
//!
//! - [`events`]: event types and JSON payloads, with the flow between agents.
//! - [`diff`]: unified diffs parsed into files and added lines.
//! - [`finding`]: [`Finding`] and [`Severity`].
//! - [`brain`]: [`Specialty`] (a specialist's rules and focus) and [`Brain`] (rules or model).
//! - [`llm`]: the chat-completions brain, with retries, a breaker and token accounting.
//! - [`outbound`]: calls to other services behind a breaker (the notifier's webhook, the
//!   fetcher's diffs).
//! - [`specialist`]: the handler and `main` every specialist shares.
//! - [`report`]: the aggregator's [`Report`] and its Markdown.
//! - [`samples`]: a sample change, for the demo, the tests and the benchmark.
//! - [`testing`]: building delivered events for the agents' unit tests.
//!
//! Each agent is its own crate under `agents/`; this crate holds what more than one of them
//! needs.

pub mod brain;
pub mod diff;
pub mod events;
pub mod finding;
pub mod llm;
pub mod outbound;
pub mod report;
pub mod samples;
pub mod specialist;
pub mod testing;

pub use brain::{Brain, Specialty};
pub use diff::Diff;
pub use finding::{Finding, Severity};
pub use report::Report;

use choreo_bus::{Emit, EventType, HandlerError};

/// The team's binaries, in the order they are started: every agent of the review
/// choreography. `choreo up`, the end-to-end tests and the benchmark start these.
pub const TEAM: [&str; 9] = [
    "choreo-fetcher",
    "choreo-triage",
    "choreo-security",
    "choreo-performance",
    "choreo-style",
    "choreo-tests",
    "choreo-aggregator",
    "choreo-editor",
    "choreo-notifier",
];

/// An [`Emit`] of `event_type` with `value` as JSON. Both are ours, so a failure is a bug in
/// this build: permanent.
pub fn emit_json<T: serde::Serialize + ?Sized>(
    event_type: &str,
    value: &T,
) -> Result<Emit, HandlerError> {
    let event_type = EventType::new(event_type).map_err(HandlerError::permanent)?;
    Emit::json(event_type, value).map_err(HandlerError::permanent)
}

/// The error for an event type an agent did not subscribe to.
pub fn unexpected_type(event_type: &str) -> HandlerError {
    HandlerError::permanent(format!("no handling for event type {event_type}"))
}
