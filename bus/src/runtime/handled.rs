//! Whether a redelivered event was already handled: every child of an earlier handling by this
//! agent is in the stream, so only the ack was lost (the process died between publishing and
//! acking). Such a redelivery is acknowledged without running the handler again, so a model is
//! not called, and paid, twice.
//!
//! Each child carries, in the `Choreo-Emitted` header, how many events its handling emitted.
//! Children come after their input in the stream and on the run's own subjects, so the check is
//! a short, server-filtered read of the run's events of the types this agent emits, from just
//! after the input. It runs only on redeliveries; first deliveries never pay for it.
//!
//! A handling that emitted nothing leaves nothing to find, so its redelivery runs the handler
//! again; that is the cheap case (a join still waiting, an event the agent ignores).

use std::collections::BTreeSet;

use async_nats::jetstream;
use choreo_proto::v1::Event;

use crate::log::{From, LogError, LogQuery, LogReader};
use crate::names::Namespace;
use crate::publish::headers;

use super::agent::Agent;

/// Reads the run's events after `stream_sequence` and says whether every child that `agent`
/// emitted while handling `input` is there.
pub(super) async fn children_stored(
    jetstream: &jetstream::Context,
    namespace: &Namespace,
    agent: &Agent,
    input: &Event,
    stream_sequence: u64,
) -> Result<bool, LogError> {
    if agent.emits().is_empty() {
        return Ok(false);
    }
    let query = LogQuery {
        filters: agent
            .emits()
            .iter()
            .map(|event_type| namespace.event_subject(&input.correlation_id, event_type.as_str()))
            .collect(),
        ..LogQuery::default()
    }
    .from(From::Sequence(stream_sequence.saturating_add(1)));
    let mut reader = LogReader::open(jetstream, &namespace.stream_name(), query).await?;
    let mut children = Children::default();
    while let Some(record) = reader.next().await? {
        if record.header(headers::CAUSATION_ID) != Some(input.id.as_str()) {
            continue;
        }
        let Ok(view) = record.view() else { continue };
        if view.source != agent.name().as_str() {
            continue;
        }
        let emitted = record
            .header(headers::EMITTED)
            .and_then(|count| count.parse().ok());
        children.saw(view.id, emitted);
        if children.complete() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The children of one handling found so far.
#[derive(Debug, Default)]
struct Children {
    ids: BTreeSet<String>,
    /// How many the handling emitted, as its children say.
    emitted: Option<usize>,
}

impl Children {
    fn saw(&mut self, id: &str, emitted: Option<usize>) {
        self.ids.insert(id.to_string());
        self.emitted = self.emitted.or(emitted);
    }

    /// Every child found. Ids are unique in the stream (its duplicate window, and ids derived
    /// from the input), so counting distinct ids is enough.
    fn complete(&self) -> bool {
        self.emitted
            .is_some_and(|emitted| self.ids.len() >= emitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handling_is_complete_when_all_its_children_are_seen() {
        let mut children = Children::default();
        assert!(!children.complete(), "nothing seen");
        children.saw("a", Some(3));
        children.saw("b", Some(3));
        assert!(!children.complete());
        children.saw("b", Some(3));
        assert!(!children.complete(), "a copy is not another child");
        children.saw("c", Some(3));
        assert!(children.complete());
    }

    #[test]
    fn children_without_a_count_never_prove_a_handling_complete() {
        let mut children = Children::default();
        children.saw("a", None);
        assert!(!children.complete());
    }
}
