//! One run as a causation tree, read from the log.
//!
//! [`RunTrace::read`] reads the run's subjects (`<ns>.<correlation>.>`) and nothing else, so
//! its cost is the run's size, not the stream's. Each event becomes a [`TraceNode`] under the
//! event that caused it, with its outcome: which agents reacted (published children), which
//! gave up on it (the runtime's `choreo.dead_lettered` notices, folded into the node rather
//! than shown as children), each agent's handlings of it (from the records its children carry
//! and the `choreo.handled` notices, see [`crate::handling`]: received, took, done, spend), and,
//! given the agents' consumer positions, which acknowledged it without publishing anything and
//! which have yet to.
//!
//! A message on the run's subjects whose bytes are not an envelope is a node too, standing for
//! what its subject names (its type; no id, no source; its bytes as the data), with the decode
//! error; the notice of its dead letter (a root of the run, since nothing it says can be
//! trusted) is folded into it by the original's stream sequence, as is the notice of an
//! envelope refused for breaking the wire contract.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use choreo_proto::v1::Event;
use serde::Serialize;
use time::OffsetDateTime;

use crate::dead_letter::{
    DEAD_LETTERED, DeadLetterNotice, REDRIVE_FOR, REDRIVE_OF, subject_tokens,
};
use crate::envelope;
use crate::handling::{HANDLED, HandlingNotice, HandlingRecord, Spend};
use crate::log::{LogError, LogQuery, LogReader, LogRecord};
use crate::names::{Namespace, subject_matches, validate_id};
use crate::projection::run_board::AgentPosition;

/// One run's events as a tree.
#[derive(Debug, Clone, Serialize)]
pub struct RunTrace {
    pub namespace: String,
    pub correlation_id: String,
    /// Every event of the run in stream order; `roots` and `children` index into it.
    pub nodes: Vec<TraceNode>,
    pub roots: Vec<usize>,
    /// Messages read to build it: the run's own.
    pub messages_read: u64,
}

/// One event of a run, with what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct TraceNode {
    pub sequence: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub stored: OffsetDateTime,
    /// Since the run's first event was stored.
    #[serde(serialize_with = "millis")]
    pub offset: Duration,
    #[serde(serialize_with = "event_json")]
    pub event: Event,
    pub children: Vec<usize>,
    /// Agents that published children of it.
    pub handled_by: BTreeSet<String>,
    /// Subscribed agents that acknowledged it without publishing anything.
    pub acknowledged_by: BTreeSet<String>,
    /// Subscribed agents that have not acknowledged it yet.
    pub waiting_on: BTreeSet<String>,
    pub dead_letters: Vec<DeadLetterNotice>,
    /// Each agent's handlings of it, in the order the log tells them.
    pub handlings: Vec<HandlingRecord>,
    /// Set on a redriven copy: the dead letter it came from and the agent it is for.
    pub redrive: Option<Redrive>,
    /// Set when the message's bytes are not an envelope: why. `event` then stands for what its
    /// subject names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
}

impl TraceNode {
    /// Folds in the record a child carries: the first child of a handling adds it, its
    /// siblings move its end to the last of them stored.
    fn handling_emitted(&mut self, handling: HandlingRecord) {
        let same = self.handlings.iter_mut().find(|known| {
            known.agent == handling.agent
                && known.received == handling.received
                && known.end == handling.end
        });
        match same {
            Some(known) => {
                known.done = known.done.max(handling.done);
                if known.spend.is_empty() {
                    known.spend = handling.spend;
                }
            }
            None => self.handlings.push(handling),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redrive {
    pub dead_letter_sequence: u64,
    pub agent: String,
}

pub(crate) fn millis<S: serde::Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration.as_secs_f64() * 1000.0)
}

fn event_json<S: serde::Serializer>(event: &Event, s: S) -> Result<S::Ok, S::Error> {
    crate::cloudevents::to_json(event).serialize(s)
}

/// What stands in a trace for a message whose bytes are not an envelope: what its subject
/// names (run and type), when it was stored, and its bytes as the data. No id, no source: the
/// bytes say nothing the bus can trust.
fn stand_in(record: &LogRecord) -> Event {
    let (correlation_id, event_type) = subject_tokens(&record.subject);
    Event {
        r#type: event_type.to_string(),
        correlation_id: correlation_id.to_string(),
        time: Some(std::time::SystemTime::from(record.time).into()),
        content_type: "application/octet-stream".to_string(),
        data: record.payload.clone(),
        ..Event::default()
    }
}

/// Why a trace could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "no run {correlation_id} in namespace {namespace}: check the id (`choreo state` lists \
         runs) and the namespace"
    )]
    UnknownRun {
        namespace: String,
        correlation_id: String,
    },
    #[error(transparent)]
    Invalid(#[from] crate::names::ValidationError),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl TraceError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, TraceError::Log(err) if err.is_retryable())
    }
}

impl RunTrace {
    /// Reads run `correlation_id` of `namespace` from its events stream. `agents` (from
    /// [`agent_positions`](crate::projection::run_board::agent_positions)) adds who
    /// acknowledged each event and who has yet to; pass `&[]` to leave that out.
    pub async fn read(
        jetstream: &jetstream::Context,
        namespace: &Namespace,
        correlation_id: &str,
        agents: &[AgentPosition],
    ) -> Result<Self, TraceError> {
        validate_id("correlation_id", correlation_id)?;
        let mut reader = LogReader::open(
            jetstream,
            &namespace.stream_name(),
            LogQuery::filtered(namespace.correlation_filter(correlation_id)),
        )
        .await?;
        let mut records = Vec::new();
        while let Some(record) = reader.next().await? {
            records.push(record);
        }
        if records.is_empty() {
            return Err(TraceError::UnknownRun {
                namespace: namespace.to_string(),
                correlation_id: correlation_id.to_string(),
            });
        }
        Ok(Self::from_records(
            namespace,
            correlation_id,
            &records,
            agents,
        ))
    }

    /// Builds the tree from a run's records in stream order.
    pub fn from_records(
        namespace: &Namespace,
        correlation_id: &str,
        records: &[LogRecord],
        agents: &[AgentPosition],
    ) -> Self {
        let mut trace = RunTrace {
            namespace: namespace.to_string(),
            correlation_id: correlation_id.to_string(),
            nodes: Vec::new(),
            roots: Vec::new(),
            messages_read: records.len() as u64,
        };
        let Some(first) = records.first() else {
            return trace;
        };
        let start = first.time;
        let mut by_id: HashMap<String, usize> = HashMap::new();
        // Where each message of the run is, for the notices of messages refused as they came.
        let mut by_sequence: HashMap<u64, usize> = HashMap::new();
        for record in records {
            let (event, undecodable) = match record.decode() {
                Ok(event) => (event, None),
                Err(err) => (stand_in(record), Some(err.to_string())),
            };
            let parent = by_id.get(&event.causation_id).copied();
            if event.r#type == HANDLED
                && let Some(parent) = parent
                && let Ok(notice) = envelope::json_data::<HandlingNotice>(&event)
            {
                let record = HandlingRecord::from_notice(notice, record.time);
                trace.nodes[parent].handlings.push(record);
                continue;
            }
            if event.r#type == DEAD_LETTERED
                && undecodable.is_none()
                && let Ok(notice) = envelope::json_data::<DeadLetterNotice>(&event)
            {
                // A refused message's notice is a root: nothing in the message names a cause.
                let failed = match parent {
                    Some(parent) => Some(parent),
                    None if event.causation_id.is_empty() => {
                        by_sequence.get(&notice.original_sequence).copied()
                    }
                    None => None,
                };
                if let Some(failed) = failed {
                    trace.nodes[failed].dead_letters.push(notice);
                    continue;
                }
            }
            let redrive = match (record.header(REDRIVE_OF), record.header(REDRIVE_FOR)) {
                (Some(of), Some(agent)) => of.parse().ok().map(|dead_letter_sequence| Redrive {
                    dead_letter_sequence,
                    agent: agent.to_string(),
                }),
                _ => None,
            };
            let subject = record.subject.as_str();
            let (acknowledged_by, waiting_on) = agents
                .iter()
                .filter(|agent| agent.filters.iter().any(|f| subject_matches(f, subject)))
                .filter(|agent| redrive.as_ref().is_none_or(|r| r.agent == agent.agent))
                .partition::<Vec<_>, _>(|agent| agent.ack_floor >= record.sequence);
            let index = trace.nodes.len();
            if let Some(parent) = parent {
                let node = &mut trace.nodes[parent];
                node.children.push(index);
                node.handled_by.insert(event.source.clone());
                if let Some(handling) =
                    HandlingRecord::from_child_headers(&event.source, record.time, |name| {
                        record.header(name)
                    })
                {
                    node.handling_emitted(handling);
                }
            } else {
                trace.roots.push(index);
            }
            if redrive.is_none() && undecodable.is_none() {
                by_id.insert(event.id.clone(), index);
            }
            by_sequence.insert(record.sequence, index);
            trace.nodes.push(TraceNode {
                sequence: record.sequence,
                stored: record.time,
                offset: Duration::try_from(record.time - start).unwrap_or_default(),
                event,
                children: Vec::new(),
                handled_by: BTreeSet::new(),
                acknowledged_by: acknowledged_by
                    .into_iter()
                    .map(|a| a.agent.clone())
                    .collect(),
                waiting_on: waiting_on.into_iter().map(|a| a.agent.clone()).collect(),
                dead_letters: Vec::new(),
                handlings: Vec::new(),
                redrive,
                undecodable,
            });
        }
        // An agent that published children handled the event, and one that dead-lettered it
        // gave up on it: neither merely acknowledged it.
        for TraceNode {
            handled_by,
            acknowledged_by,
            dead_letters,
            ..
        } in &mut trace.nodes
        {
            acknowledged_by.retain(|agent| {
                !handled_by.contains(agent) && !dead_letters.iter().any(|l| &l.agent == agent)
            });
        }
        trace
    }

    /// Events of the run (the runtime's dead-letter notices are outcomes, not events here).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes in tree order (each after its parent, siblings in stream order), with depth.
    pub fn walk(&self) -> Vec<(usize, usize)> {
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<(usize, usize)> = self.roots.iter().rev().map(|&r| (r, 0)).collect();
        while let Some((index, level)) = stack.pop() {
            order.push((index, level));
            for &child in self.nodes[index].children.iter().rev() {
                stack.push((child, level + 1));
            }
        }
        order
    }

    /// What the run's handlings spent on models, in all.
    pub fn spend(&self) -> Spend {
        let mut total = Spend::default();
        for handling in self.nodes.iter().flat_map(|node| &node.handlings) {
            total.add(&handling.spend);
        }
        total
    }

    /// Whether any event of the run was given up on.
    pub fn dead_letter_count(&self) -> usize {
        self.nodes.iter().map(|n| n.dead_letters.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Emit, RootEvent, stamp_child};
    use crate::names::{AgentName, EventType};

    fn record(sequence: u64, event: &Event) -> LogRecord {
        let time = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(sequence as i64 * 10);
        LogRecord::of_event(&Namespace::default(), sequence, time, event)
    }

    fn emit(event_type: &str) -> Emit {
        Emit::json(
            EventType::new(event_type).expect("type"),
            &serde_json::json!({"n": 1}),
        )
        .expect("json")
    }

    #[test]
    fn a_run_becomes_a_tree_with_outcomes() {
        let ns = Namespace::default();
        let root = RootEvent::new(emit("a.requested"), "cli")
            .with_correlation_id("run-1")
            .into_event()
            .expect("valid");
        let counter = AgentName::new("counter").expect("name");
        let b = stamp_child(&root, &counter, 0, emit("b.done"));
        let c = stamp_child(
            &b,
            &AgentName::new("relay").expect("name"),
            0,
            emit("c.done"),
        );
        let notice = DeadLetterNotice {
            agent: "sink".into(),
            reason: "handler_failed".into(),
            error: "boom".into(),
            event_id: c.id.clone(),
            event_type: c.r#type.clone(),
            delivery_count: 3,
            original_sequence: 3,
            dead_letter_sequence: 1,
        };
        let notice_event = stamp_child(
            &c,
            &AgentName::new("sink").expect("name"),
            0,
            Emit::json(EventType::new(DEAD_LETTERED).expect("type"), &notice).expect("json"),
        );
        let records = [
            record(1, &root),
            record(2, &b),
            record(3, &c),
            record(4, &notice_event),
        ];
        let agents = [
            AgentPosition {
                agent: "counter".into(),
                filters: vec!["events.*.a.requested".into()],
                ack_floor: 4,
            },
            AgentPosition {
                agent: "audit".into(),
                filters: vec!["events.*.b.done".into()],
                ack_floor: 4,
            },
            AgentPosition {
                agent: "late".into(),
                filters: vec!["events.*.b.done".into()],
                ack_floor: 1,
            },
            AgentPosition {
                agent: "sink".into(),
                filters: vec!["events.*.c.done".into()],
                ack_floor: 4,
            },
        ];
        let trace = RunTrace::from_records(&ns, "run-1", &records, &agents);

        assert_eq!(trace.len(), 3, "the notice is an outcome, not an event");
        assert_eq!(trace.messages_read, 4);
        assert_eq!(trace.roots, vec![0]);
        assert_eq!(trace.walk(), vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(
            trace.nodes[0].handled_by,
            BTreeSet::from(["counter".to_string()])
        );
        assert!(
            trace.nodes[0].acknowledged_by.is_empty(),
            "counter published, so it handled"
        );
        assert_eq!(
            trace.nodes[1].acknowledged_by,
            BTreeSet::from(["audit".to_string()])
        );
        assert_eq!(
            trace.nodes[1].waiting_on,
            BTreeSet::from(["late".to_string()])
        );
        assert_eq!(trace.nodes[2].dead_letters, vec![notice]);
        assert!(
            trace.nodes[2].acknowledged_by.is_empty(),
            "the sink gave up on it; it did not merely acknowledge it"
        );
        assert_eq!(trace.nodes[2].offset, Duration::from_millis(20));
        assert_eq!(trace.dead_letter_count(), 1);
    }

    /// A message refused as it came and the root notice of its dead letter, as the runtime
    /// stores them: on the run's subjects, the notice naming the message's stream sequence.
    fn refused(sequence: u64, subject: &str, payload: &[u8], reason: &str) -> [LogRecord; 2] {
        let (run, event_type) = subject_tokens(subject);
        let notice = DeadLetterNotice {
            agent: "sink".into(),
            reason: reason.into(),
            error: "payload is not a choreo.v1.Event".into(),
            event_id: String::new(),
            event_type: event_type.into(),
            delivery_count: 1,
            original_sequence: sequence,
            dead_letter_sequence: 1,
        };
        let announcement = RootEvent::new(
            Emit::json(EventType::new(DEAD_LETTERED).expect("type"), &notice).expect("json"),
            "sink",
        )
        .with_correlation_id(run)
        .into_event()
        .expect("valid");
        let mut message = record(sequence, &announcement);
        message.subject = subject.into();
        message.payload = bytes::Bytes::copy_from_slice(payload);
        [message, record(sequence + 1, &announcement)]
    }

    #[test]
    fn bytes_that_are_not_an_envelope_are_a_node_of_the_run_with_their_dead_letter() {
        let ns = Namespace::default();
        let records = refused(1, "events.run-bad.x.y", &[0xff; 12], "decode_failed");
        let trace = RunTrace::from_records(&ns, "run-bad", &records, &[]);
        assert_eq!(trace.len(), 1, "the message, with its notice folded in");
        assert_eq!(trace.dead_letter_count(), 1);
        let node = &trace.nodes[trace.roots[0]];
        assert!(
            node.undecodable
                .as_deref()
                .is_some_and(|e| e.contains("not a choreo.v1.Event")),
            "{node:?}"
        );
        assert_eq!(
            (
                node.event.r#type.as_str(),
                node.event.correlation_id.as_str()
            ),
            ("x.y", "run-bad"),
            "what the subject names"
        );
        assert_eq!(
            (node.event.id.as_str(), node.event.source.as_str()),
            ("", "")
        );
        assert_eq!(&node.event.data[..], &[0xff; 12]);
        assert_eq!(node.dead_letters[0].reason, "decode_failed");
    }

    #[test]
    fn an_envelope_refused_for_its_subject_carries_its_dead_letter() {
        let ns = Namespace::default();
        // The body says another run; the subject says run-a, where it is stored and traced.
        let elsewhere = RootEvent::new(emit("in.put"), "client")
            .with_correlation_id("run-b")
            .into_event()
            .expect("valid");
        let records = refused(
            1,
            "events.run-a.in.put",
            &prost::Message::encode_to_vec(&elsewhere),
            "contract_violated",
        );
        let trace = RunTrace::from_records(&ns, "run-a", &records, &[]);
        assert_eq!(trace.len(), 1);
        let node = &trace.nodes[0];
        assert_eq!(node.undecodable, None, "it is an envelope");
        assert_eq!(node.event.id, elsewhere.id);
        assert_eq!(node.dead_letters[0].reason, "contract_violated");
    }

    #[test]
    fn handlings_come_from_children_headers_and_notices() {
        use crate::handling::{ChildHeaders, HandlingEnd, HandlingNotice};
        use std::time::SystemTime;

        let ns = Namespace::default();
        let root = RootEvent::new(emit("a.requested"), "cli")
            .with_correlation_id("run-2")
            .into_event()
            .expect("valid");
        let worker = AgentName::new("worker").expect("name");
        let first = stamp_child(&root, &worker, 0, emit("b.done"));
        let second = stamp_child(&root, &worker, 1, emit("b.done"));
        let received = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let spend = Spend {
            calls: 2,
            input_tokens: 100,
            output_tokens: 20,
            cost: 0.003,
            model: "m".into(),
        };
        let handling = ChildHeaders::new(received, Duration::from_secs(12), &spend);
        let with_headers =
            |sequence, event: &Event, index| handling.on(index, record(sequence, event));
        let notice = HandlingNotice {
            agent: "waiter".into(),
            event_id: root.id.clone(),
            event_type: root.r#type.clone(),
            delivery: 1,
            received: OffsetDateTime::from(received),
            took_ms: 2500.0,
            end: HandlingEnd::Failed,
            error: "429".into(),
            spend: Spend {
                calls: 1,
                cost: 0.001,
                ..Spend::default()
            },
        };
        let notice_event = stamp_child(
            &root,
            &AgentName::new("waiter").expect("name"),
            0,
            Emit::json(EventType::new(HANDLED).expect("type"), &notice).expect("json"),
        );
        let records = [
            record(1, &root),
            with_headers(2, &first, 0),
            with_headers(3, &second, 1),
            record(4, &notice_event),
        ];
        let trace = RunTrace::from_records(&ns, "run-2", &records, &[]);

        assert_eq!(trace.len(), 3, "the notice is an outcome, not an event");
        let handlings = &trace.nodes[0].handlings;
        assert_eq!(
            handlings.len(),
            2,
            "two children of one handling are one handling"
        );
        let worked = &handlings[0];
        assert_eq!(worked.agent, "worker");
        assert_eq!(worked.end, "emitted");
        assert_eq!(worked.took, Duration::from_secs(12));
        assert_eq!(worked.received, OffsetDateTime::from(received));
        assert_eq!(
            worked.done, records[2].time,
            "done when its last child was stored"
        );
        assert_eq!(worked.spend, spend, "the spend rides on the first child");
        let failed = &handlings[1];
        assert_eq!(
            (failed.agent.as_str(), failed.end.as_str()),
            ("waiter", "failed")
        );
        assert_eq!(failed.error, "429");
        assert_eq!(failed.done, records[3].time);
        let total = trace.spend();
        assert_eq!(total.calls, 3);
        assert_eq!(total.cost_micros(), 4000);
    }
}
