//! Building, stamping and decoding the `choreo.v1.Event` envelope.
//!
//! Two ways in: [`RootEvent`] for an event from outside (CLI, HTTP, a webhook), validated and
//! given an id and a correlation; and [`Emit`], what a handler returns, which the runtime turns
//! into a child with [`stamp_child`]. Nobody sets causation, depth or trace context by hand.
//!
//! What any publisher must put on the wire, and what the runtime refuses, is [`contract`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use choreo_proto::v1::Event;
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::names::{
    AgentName, EventType, ValidationError, validate_id, validate_label, validate_type,
};

pub mod contract;
mod view;
pub use view::EventView;

/// `content_type` of JSON payloads.
pub const JSON: &str = "application/json";
/// `content_type` of protobuf payloads.
pub const PROTOBUF: &str = "application/protobuf";

/// An event a handler wants published. The runtime adds id, source, time, correlation,
/// causation, depth and trace context.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    pub event_type: EventType,
    pub content_type: String,
    pub data: Bytes,
    pub attributes: BTreeMap<String, String>,
    /// LLM tokens spent producing this event; charged to the run's token budget.
    pub tokens_used: u64,
    /// Set by [`Emit::once_per_run`]: the id comes from (correlation, agent, key) rather than
    /// from the input, so the run holds at most one such event whatever caused it.
    pub run_key: Option<String>,
}

impl Emit {
    /// An event whose payload is `data` of the given media type.
    pub fn new(event_type: EventType, content_type: impl Into<String>, data: Bytes) -> Self {
        Emit {
            event_type,
            content_type: content_type.into(),
            data,
            attributes: BTreeMap::new(),
            tokens_used: 0,
            run_key: None,
        }
    }

    /// An event with a JSON payload.
    pub fn json<T: serde::Serialize + ?Sized>(
        event_type: EventType,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(
            event_type,
            JSON,
            serde_json::to_vec(value)?.into(),
        ))
    }

    /// An event with a protobuf payload.
    pub fn proto<M: Message>(event_type: EventType, message: &M) -> Self {
        Self::new(event_type, PROTOBUF, message.encode_to_vec().into())
    }

    /// Adds an extension attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Reports the LLM tokens spent producing this event, so the run's token budget counts them.
    pub fn tokens_used(mut self, tokens: u64) -> Self {
        self.tokens_used = tokens;
        self
    }

    /// Makes this event one of a kind in its run: its id is derived from the run, the agent and
    /// `key` instead of from the event being handled, so the stream's deduplication keeps one
    /// copy however many inputs (or copies of the agent) emit it. A join uses this: two copies
    /// of an aggregator that each see the last awaited result both emit the report, and the
    /// run holds it once. Whichever copy is stored first is the one kept.
    pub fn once_per_run(mut self, key: impl Into<String>) -> Self {
        self.run_key = Some(key.into());
        self
    }
}

/// An event from outside the choreography: the root of a run (or a new step in an existing run
/// when `correlation_id` names one).
#[derive(Debug, Clone, PartialEq)]
pub struct RootEvent {
    pub emit: Emit,
    /// The external system publishing it, e.g. `cli` or `github`.
    pub source: String,
    /// A caller-chosen id, e.g. a CloudEvent id or an idempotency key, so a retried publish is
    /// deduplicated. A fresh UUIDv7 when `None`.
    pub id: Option<String>,
    /// The run this event belongs to. Its own id when `None` (it starts a new run).
    pub correlation_id: Option<String>,
    /// The caller's W3C trace context, if it has one.
    pub traceparent: Option<String>,
    /// When it happened, if the caller says (a CloudEvent's `time`). Now when `None`.
    pub time: Option<SystemTime>,
}

impl RootEvent {
    pub fn new(emit: Emit, source: impl Into<String>) -> Self {
        RootEvent {
            emit,
            source: source.into(),
            id: None,
            correlation_id: None,
            traceparent: None,
            time: None,
        }
    }

    pub fn with_time(mut self, time: impl Into<SystemTime>) -> Self {
        self.time = Some(time.into());
        self
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Validates every field and builds the envelope, with `time` now.
    pub fn into_event(self) -> Result<Event, ValidationError> {
        validate_label("source", &self.source)?;
        let now = SystemTime::now();
        // A generated id is a UUIDv7 whose 74 random bits make a good trace id too.
        let (id, generated) = match self.id {
            Some(id) => {
                validate_id("id", &id)?;
                (id, None)
            }
            None => {
                let uuid = uuid_v7_at(now);
                (encode_uuid(&uuid), Some(uuid))
            }
        };
        let correlation_id = match self.correlation_id {
            Some(correlation_id) => {
                validate_id("correlation_id", &correlation_id)?;
                correlation_id
            }
            None => id.clone(),
        };
        let traceparent = match self.traceparent {
            Some(tp) => {
                TraceParent::parse(&tp).ok_or_else(|| {
                    ValidationError::new(
                        "traceparent",
                        format!("{tp:?} is not W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)"),
                    )
                })?;
                tp
            }
            None => match generated {
                Some(uuid) => TraceParent::root_from_uuid(&uuid).encode(),
                None => TraceParent::root_for(&id).encode(),
            },
        };
        Ok(Event {
            id,
            r#type: self.emit.event_type.into(),
            source: self.source,
            time: Some(self.time.unwrap_or(now).into()),
            correlation_id,
            causation_id: String::new(),
            depth: 0,
            content_type: self.emit.content_type,
            data: self.emit.data,
            attributes: self.emit.attributes,
            traceparent,
            tokens_used: self.emit.tokens_used,
            chain_visits: BTreeMap::new(),
        })
    }
}

/// A fresh, time-sortable event id (UUIDv7, hyphenated).
pub fn new_event_id() -> String {
    encode_uuid(&uuid_v7_at(SystemTime::now()))
}

/// A UUIDv7 for `time`: its milliseconds, then 74 random bits. Ids made in the same
/// millisecond sort in no particular order among themselves (`Uuid::now_v7` would order them
/// with a counter behind a process-wide lock, and read the clock again); nothing here needs
/// that, and the clock read is shared with the event's `time` on every publish.
fn uuid_v7_at(time: SystemTime) -> Uuid {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
    ))
}

/// Hyphenated lower-case form, written directly (it is on every publish's path).
fn encode_uuid(uuid: &Uuid) -> String {
    uuid.hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_string()
}

/// The id of the `index`-th event `agent` emitted while handling `parent`.
///
/// Deterministic, so a redelivered input re-publishes the same ids and the stream's duplicate
/// window drops the copies. It is a UUIDv7 carrying the parent's timestamp (children sort next
/// to their cause) and hash bits from (parent id, agent, index). SHA-256 rather than std's
/// hasher because the ids must not change between builds: a new release may be the one that
/// handles the redelivery.
pub fn child_event_id(parent: &Event, agent: &AgentName, index: usize) -> String {
    derived_event_id(
        timestamp_millis_of(parent),
        &[
            parent.id.as_bytes(),
            agent.as_str().as_bytes(),
            &(index as u64).to_be_bytes(),
        ],
    )
}

/// A UUIDv7 id with `millis` as its time and hash bits from `parts`: the same parts always
/// give the same id. Parts are separated so ("ab", "c") and ("a", "bc") differ.
pub fn derived_event_id(millis: u64, parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0]);
        }
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    encode_uuid(&uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
}

/// The parent's time in milliseconds: from its UUIDv7 id when it has one, else its `time`.
pub(crate) fn timestamp_millis_of(event: &Event) -> u64 {
    if let Some(millis) = uuid_millis(&event.id) {
        return millis;
    }
    event
        .time
        .as_ref()
        .map(|t| {
            let secs = u64::try_from(t.seconds).unwrap_or(0);
            let millis = u64::try_from(t.nanos).unwrap_or(0) / 1_000_000;
            secs * 1000 + millis
        })
        .unwrap_or(0)
}

/// The time part of a UUIDv7 id, in milliseconds.
fn uuid_millis(id: &str) -> Option<u64> {
    let ts = Uuid::parse_str(id).ok()?.get_timestamp()?;
    let (secs, nanos) = ts.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// Builds the `index`-th child that `agent` emits while handling `parent`: same correlation,
/// causation = parent id, depth + 1, trace context continued, `time` now.
///
/// An emit made [`Emit::once_per_run`] gets [`run_keyed_event_id`] instead.
pub fn stamp_child(parent: &Event, agent: &AgentName, index: usize, emit: Emit) -> Event {
    let id = match &emit.run_key {
        Some(key) => run_keyed_event_id(&parent.correlation_id, agent, key),
        None => child_event_id(parent, agent, index),
    };
    stamp_with_id(parent, agent, id, emit)
}

/// The id of the event `agent` emits once in run `correlation_id` under `key`. Its time part is
/// the correlation id's when that is a UUIDv7 (as generated roots are), so the event still
/// sorts within its run; a correlation id of another shape gives time 0.
pub fn run_keyed_event_id(correlation_id: &str, agent: &AgentName, key: &str) -> String {
    derived_event_id(
        uuid_millis(correlation_id).unwrap_or(0),
        &[
            b"once-per-run",
            correlation_id.as_bytes(),
            agent.as_str().as_bytes(),
            key.as_bytes(),
        ],
    )
}

/// [`stamp_child`] with a chosen id, for the runtime's own notices about an event.
pub(crate) fn stamp_with_id(parent: &Event, agent: &AgentName, id: String, emit: Emit) -> Event {
    let traceparent = TraceParent::parse(&parent.traceparent)
        .unwrap_or_else(|| TraceParent::root_for(&parent.correlation_id))
        .child_for(&id)
        .encode();
    Event {
        id,
        r#type: emit.event_type.into(),
        source: agent.as_str().to_owned(),
        time: Some(SystemTime::now().into()),
        correlation_id: parent.correlation_id.clone(),
        causation_id: parent.id.clone(),
        depth: parent.depth.saturating_add(1),
        content_type: emit.content_type,
        data: emit.data,
        attributes: emit.attributes,
        traceparent,
        tokens_used: emit.tokens_used,
        chain_visits: chain_visits_after(parent, agent),
    }
}

/// The key of one (agent, event type) pair in [`Event::chain_visits`].
pub fn chain_visit_key(agent: &AgentName, event_type: &str) -> String {
    format!("{agent}/{event_type}")
}

/// How many times `agent` has already handled events of `event.type` along `event`'s causation
/// chain (not counting `event` itself).
pub fn prior_visits(event: &Event, agent: &AgentName) -> u32 {
    event
        .chain_visits
        .get(&chain_visit_key(agent, &event.r#type))
        .copied()
        .unwrap_or(0)
}

/// A child's chain visits: its parent's, plus `agent` having handled the parent.
fn chain_visits_after(parent: &Event, agent: &AgentName) -> BTreeMap<String, u32> {
    let mut visits = parent.chain_visits.clone();
    *visits
        .entry(chain_visit_key(agent, &parent.r#type))
        .or_insert(0) += 1;
    visits
}

/// Why bytes from the stream are not a usable event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not a choreo.v1.Event: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// Found by [`EventView::decode`], which reads the wire format itself.
    #[error("payload is not a choreo.v1.Event: {0}")]
    Malformed(String),
    #[error("decoded event is unusable: {0}")]
    Invalid(#[from] ValidationError),
}

/// Decodes an envelope and checks the fields the bus relies on (id, type, correlation).
pub fn decode(bytes: impl bytes::Buf) -> Result<Event, DecodeError> {
    // From `Bytes`, the payload is a slice of the message, not a copy.
    let event = Event::decode(bytes)?;
    check_decoded(&event.id, &event.correlation_id, &event.r#type)?;
    Ok(event)
}

/// What every decoded envelope must have, however it was read: the fields its subject and
/// deduplication are made of.
fn check_decoded(id: &str, correlation_id: &str, event_type: &str) -> Result<(), ValidationError> {
    validate_id("id", id)?;
    validate_id("correlation_id", correlation_id)?;
    validate_type(event_type)
}

/// The event's `time`, when it has one that is a valid date.
pub fn event_time(event: &Event) -> Option<time::OffsetDateTime> {
    let time = event.time.as_ref()?;
    let nanos = i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// Decodes a JSON payload, naming the event in the error.
pub fn json_data<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&event.data)
}

/// W3C trace context (`traceparent`), version 00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<trace id>-<span id>-<flags>`; `None` for anything else or all-zero ids.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace)?;
        let span_id: [u8; 8] = decode_hex(span)?;
        let [flags] = decode_hex::<1>(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace for a root event, derived from its id (unique ids give unique traces).
    pub fn root_for(id: &str) -> Self {
        Self::sampled_from(&Sha256::digest(id.as_bytes())[..24])
    }

    /// A new trace for a root event whose id is a fresh UUIDv7: the id's bytes are the trace
    /// id and its last 8 bytes the span id. No hashing needed on the publish path.
    ///
    /// Except for the UUID's two variant bits (always `10`), which in the trace id are replaced
    /// by two of its random bits (from `rand_a`), so the trace id's low 8 bytes are all random:
    /// OpenTelemetry's ratio sampler decides on them, and with the variant bits in place a
    /// ratio below one half kept no run at all.
    pub fn root_from_uuid(id: &Uuid) -> Self {
        let uuid = id.as_bytes();
        let mut bytes = [0u8; 24];
        bytes[..16].copy_from_slice(uuid);
        bytes[8] = (uuid[8] & 0x3f) | (uuid[7] << 6);
        bytes[16..].copy_from_slice(&uuid[8..]);
        Self::sampled_from(&bytes)
    }

    /// A sampled context whose trace id is `bytes[..16]` and span id `bytes[16..24]`.
    fn sampled_from(bytes: &[u8]) -> Self {
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&bytes[..16]);
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&bytes[16..24]);
        TraceParent {
            trace_id,
            span_id,
            flags: 1,
        }
    }

    /// The context of a child: same trace, a span of its own derived from the child's id.
    pub fn child_for(&self, child_id: &str) -> Self {
        let digest = Sha256::digest(child_id.as_bytes());
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&digest[..8]);
        TraceParent { span_id, ..*self }
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` text, `00-<trace id>-<span id>-<flags>`. Written in place over a
    /// template rather than through `Display`: this runs for every event published.
    pub fn encode(&self) -> String {
        // Each slice is exactly twice its bytes' length, the only way `encode_to_slice` fails.
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let _ = hex::encode_to_slice(self.trace_id, &mut out[3..35]);
        let _ = hex::encode_to_slice(self.span_id, &mut out[36..52]);
        let _ = hex::encode_to_slice([self.flags], &mut out[53..55]);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> EventType {
        EventType::new(s).expect("valid type")
    }

    fn root() -> Event {
        RootEvent::new(Emit::json(ty("a.happened"), &1).expect("json"), "test")
            .into_event()
            .expect("valid")
    }

    #[test]
    fn a_root_event_starts_its_own_run() {
        let event = root();
        assert_eq!(event.correlation_id, event.id);
        assert_eq!(event.causation_id, "");
        assert_eq!(event.depth, 0);
        assert!(TraceParent::parse(&event.traceparent).is_some());
        assert_eq!(decode(&event.encode_to_vec()[..]).expect("decodes"), event);
    }

    #[test]
    fn a_root_always_has_a_time_the_callers_or_now() {
        let before = SystemTime::now();
        let now = root().time.expect("a root without a time is never built");
        assert!(
            SystemTime::try_from(now).expect("a valid time")
                >= before - std::time::Duration::from_secs(1)
        );
        let then = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let given = RootEvent::new(Emit::json(ty("a.b"), &1).expect("json"), "ci")
            .with_time(then)
            .into_event()
            .expect("valid");
        assert_eq!(given.time, Some(then.into()));
    }

    #[test]
    fn a_generated_id_is_a_uuid_v7_of_the_event_time() {
        let event = root();
        let time = event.time.expect("a time");
        let millis = u64::try_from(time.seconds).expect("after 1970") * 1000
            + u64::try_from(time.nanos).expect("positive") / 1_000_000;
        let uuid = Uuid::parse_str(&event.id).expect("a uuid");
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(uuid_millis(&event.id), Some(millis));
        let other = root();
        assert_ne!(other.id, event.id);
    }

    #[test]
    fn root_event_validation_names_the_field() {
        let emit = Emit::json(ty("a.b"), &1).expect("json");
        let bad_correlation = RootEvent::new(emit.clone(), "cli").with_correlation_id("x.y");
        assert_eq!(
            bad_correlation.into_event().expect_err("dot").field,
            "correlation_id"
        );
        let bad_id = RootEvent::new(emit.clone(), "cli").with_id("a*");
        assert_eq!(bad_id.into_event().expect_err("star").field, "id");
        let bad_source = RootEvent::new(emit.clone(), "");
        assert_eq!(bad_source.into_event().expect_err("empty").field, "source");
        let bad_trace = RootEvent::new(emit, "cli").with_traceparent("00-zz");
        assert_eq!(
            bad_trace.into_event().expect_err("trace").field,
            "traceparent"
        );
    }

    #[test]
    fn a_child_carries_correlation_causation_depth_and_trace() {
        let parent = root();
        let agent = AgentName::new("worker").expect("valid");
        let child = stamp_child(
            &parent,
            &agent,
            0,
            Emit::json(ty("b.done"), &2).expect("json"),
        );
        assert_eq!(child.correlation_id, parent.correlation_id);
        assert_eq!(child.causation_id, parent.id);
        assert_eq!(child.depth, 1);
        assert_eq!(child.source, "worker");
        let (p, c) = (
            TraceParent::parse(&parent.traceparent).expect("parent trace"),
            TraceParent::parse(&child.traceparent).expect("child trace"),
        );
        assert_eq!(p.trace_id, c.trace_id);
        assert_ne!(p.span_id, c.span_id);
    }

    #[test]
    fn a_once_per_run_child_has_the_same_id_whatever_caused_it() {
        let root = root();
        let agent = AgentName::new("aggregator").expect("valid");
        let first_cause = stamp_child(&root, &agent, 0, Emit::json(ty("x.a"), &1).expect("json"));
        let second_cause = stamp_child(&root, &agent, 1, Emit::json(ty("x.b"), &2).expect("json"));
        let report = || {
            Emit::json(ty("r.done"), &())
                .expect("json")
                .once_per_run("round-1")
        };
        let from_first = stamp_child(&first_cause, &agent, 0, report());
        let from_second = stamp_child(&second_cause, &agent, 3, report());
        assert_eq!(from_first.id, from_second.id);
        assert_eq!(
            from_first.causation_id, first_cause.id,
            "causation is still stamped"
        );
        let other_round = stamp_child(
            &first_cause,
            &agent,
            0,
            Emit::json(ty("r.done"), &())
                .expect("json")
                .once_per_run("round-2"),
        );
        assert_ne!(other_round.id, from_first.id);
        // It sorts with its run: the time part is the root's.
        assert_eq!(uuid_millis(&from_first.id), uuid_millis(&root.id));
    }

    #[test]
    fn children_count_visits_along_their_chain_and_carry_tokens() {
        let ping = AgentName::new("ping").expect("valid");
        let pong = AgentName::new("pong").expect("valid");
        let root = root();
        assert_eq!(prior_visits(&root, &ping), 0);
        let answer = |parent: &Event, agent: &AgentName, to: &str| {
            stamp_child(parent, agent, 0, Emit::json(ty(to), &()).expect("json"))
        };
        // ping handles a.happened (the root's type) twice along one chain.
        let first = answer(&root, &ping, "x.y");
        let back = answer(&first, &pong, "a.happened");
        assert_eq!(prior_visits(&back, &ping), 1);
        assert_eq!(
            prior_visits(&back, &pong),
            0,
            "pong never handled a.happened"
        );
        let again = answer(&back, &ping, "x.y");
        let back_again = answer(&again, &pong, "a.happened");
        assert_eq!(prior_visits(&back_again, &ping), 2);
        assert_eq!(prior_visits(&back_again, &pong), 0);
        assert_eq!(prior_visits(&again, &pong), 1);

        let costly = stamp_child(
            &root,
            &ping,
            0,
            Emit::json(ty("x.y"), &()).expect("json").tokens_used(42),
        );
        assert_eq!(costly.tokens_used, 42);
    }

    #[test]
    fn child_ids_are_deterministic_and_distinct() {
        let parent = root();
        let a = AgentName::new("a").expect("valid");
        let b = AgentName::new("b").expect("valid");
        assert_eq!(
            child_event_id(&parent, &a, 0),
            child_event_id(&parent, &a, 0)
        );
        assert_ne!(
            child_event_id(&parent, &a, 0),
            child_event_id(&parent, &a, 1)
        );
        assert_ne!(
            child_event_id(&parent, &a, 0),
            child_event_id(&parent, &b, 0)
        );
        let id = Uuid::parse_str(&child_event_id(&parent, &a, 0)).expect("uuid");
        assert_eq!(id.get_version_num(), 7);
        let parent_ms = timestamp_millis_of(&parent);
        let (secs, nanos) = id.get_timestamp().expect("v7 timestamp").to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, parent_ms);
    }

    #[test]
    fn garbage_and_incomplete_envelopes_do_not_decode() {
        assert!(matches!(
            decode(&b"\xff\xff\xff"[..]),
            Err(DecodeError::Protobuf(_))
        ));
        let no_correlation = Event {
            id: "x".into(),
            r#type: "a.b".into(),
            ..Event::default()
        };
        assert!(matches!(
            decode(&no_correlation.encode_to_vec()[..]),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn traceparent_round_trips_and_rejects_zero_ids() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(tp).expect("valid").to_string(), tp);
        assert!(
            TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
    }
}
