//! The run board: one line per run (correlation), folded from the events stream.
//!
//! For each run: when it started and last moved, its root event, how many events and LLM
//! tokens it used and what its model calls cost (from the handling records, see
//! [`crate::handling`]), which types it emitted, which agent emitted what from which input, and its
//! dead letters (from the `choreo.dead_lettered` events the runtime publishes into the run),
//! marked resolved once redriven.
//!
//! Whether a run is still *pending* depends on something the log does not hold: which agents
//! subscribe to its events and how far each has acknowledged. [`RunBoard::view`] takes those
//! from the agents' durable consumers ([`AgentPosition`], read with [`agent_positions`]). A
//! run is:
//! - **failed** while it has a dead letter not redriven (among them the dead letters of
//!   messages refused as they came, bytes that are not an envelope or an envelope that breaks
//!   the wire contract: their notices are roots of the run their subject names);
//! - **pending** while an agent whose subscription matches one of its events has not
//!   acknowledged it;
//! - **complete** otherwise.
//!
//! For a point in the past the consumers can only be read as they are now, so an event that an
//! agent handled *after* that point without publishing anything counts as handled.

use std::collections::hash_map::Entry;
use std::num::NonZeroU64;
use std::sync::Arc;

use litemap::LiteMap;
use rustc_hash::{FxHashMap, FxHashSet};

use async_nats::jetstream;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Projection;
use crate::dead_letter::{DEAD_LETTERED, DeadLetterNotice, REDRIVE_OF};
use crate::envelope::EventView;
use crate::handling::{HANDLED, HandlingNotice, Spend, headers as handling_headers};
use crate::log::LogRecord;
use crate::names::{Namespace, subject_matches};

/// A name (event type, agent, source, correlation id) held once and shared by every map that
/// mentions it: a run's maps then cost a pointer per name, not an allocation.
pub type Name = Arc<str>;

/// Every run seen in the log, by correlation id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunBoard {
    /// Keyed by the run's own `correlation_id`. Boxed: the table holds pointers, so each time
    /// it grows it moves those, not whole runs.
    runs: FxHashMap<Name, Box<Run>>,
    names: SharedNames,
}

/// The names the board's runs share.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SharedNames {
    /// Every event type seen, in order: a run remembers its events' types as indexes into it.
    types: Vec<Name>,
    /// Every type and agent name held. Only a cache for sharing: a board read from a
    /// snapshot starts it empty, and its runs keep names equal to, not shared with, new ones.
    #[serde(skip)]
    held: FxHashSet<Name>,
}

impl SharedNames {
    /// `name`, shared with every other holder.
    fn hold(&mut self, name: &str) -> Name {
        if let Some(held) = self.held.get(name) {
            return held.clone();
        }
        let held: Name = name.into();
        self.held.insert(held.clone());
        held
    }

    /// Index of `event_type` in `types`, adding it the first time, and the held name. A scan:
    /// a log holds a few dozen types, and this runs once per event.
    fn type_index(&mut self, event_type: &str) -> (u32, &Name) {
        let index = match self.types.iter().position(|t| &**t == event_type) {
            Some(index) => index,
            None => {
                let name = self.hold(event_type);
                self.types.push(name);
                self.types.len() - 1
            }
        };
        (index as u32, &self.types[index])
    }
}

impl PartialEq for SharedNames {
    /// The types, whose indexes runs keep; not the cache of held names.
    fn eq(&self, other: &Self) -> bool {
        self.types == other.types
    }
}

/// The root source of a run whose first message was refused as it came: its bytes say
/// nothing the bus can trust.
pub const UNKNOWN_SOURCE: &str = "?";

/// Room a run's counted table starts with (an entry per event, and one per handling beyond an
/// input's first). A run of a dozen events fits; a table grown from empty would be allocated
/// three times on its way there.
const COUNTED_AT_FIRST: usize = 14;

/// What the fold has already counted in a run, under a stable hash of what it is.
///
/// Kept with the run, not in a table for the whole board: a cause and its copies are always in
/// the same run, and events of a run come close together in the log, so the run's table stays
/// in cache while one shared table of a million ids would miss it on nearly every event.
///
/// A handling (an agent emitting events from an input) counts once however many events it
/// emitted. The first agent to handle an input is kept in the input's own entry, so the common
/// case (one agent per input, as in a chain) needs no entry of its own; that halves a chain's
/// table. Only a further agent handling the same input (a fan-out) adds a `Handling` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Counted {
    /// An event (key: its id): the index of its type in the board's `types`, so an event it
    /// caused can name its cause's type; and the first agent that handled it, by the stable
    /// hash of its name.
    Event {
        type_index: u32,
        first_handler: Option<NonZeroU64>,
    },
    /// A handling of an input by an agent other than its first (key: the input's id and the
    /// agent's name).
    Handling,
}

/// Whether the handling an event comes from is one the run has counted.
enum Handled {
    /// The cause is not in the run (yet): nothing to count.
    UnknownCause,
    /// Counted before.
    Before,
    /// Not counted before: the handling of an input of this type (index into `types`).
    New { cause_type_index: u32 },
}

/// One run, as folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub correlation_id: Name,
    /// The type and source of the first event seen in the run.
    pub root_type: Name,
    pub root_source: Name,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_event: OffsetDateTime,
    /// Events stored (a redriven copy is not a new event).
    pub events: u64,
    /// LLM tokens reported by the events' handlers, and by handlings that emitted nothing.
    pub tokens: u64,
    /// What the run's model calls cost, in millionths of the price's unit.
    #[serde(default)]
    pub cost_micros: u64,
    /// Per type: how many, and the stream sequence of the last (what agents must acknowledge).
    pub types: LiteMap<Name, TypeCount>,
    /// Per agent: what it emitted, by the input type it was handling.
    pub agents: LiteMap<Name, AgentWork>,
    pub dead_letters: Vec<RunDeadLetter>,
    counted: FxHashMap<u64, Counted>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCount {
    pub count: u64,
    pub last_sequence: u64,
}

/// What one agent did in a run, as the log shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentWork {
    /// Inputs it handled that led to events, by input type.
    pub handled: LiteMap<Name, u64>,
    /// Events it emitted, by type.
    pub emitted: LiteMap<Name, u64>,
    pub dead_lettered: u64,
    /// LLM tokens and cost (millionths) of its model calls in the run.
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_micros: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDeadLetter {
    #[serde(flatten)]
    pub notice: DeadLetterNotice,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Redriven since: the run no longer counts it as failed.
    pub redriven: bool,
}

/// How far one agent's durable consumer has acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentPosition {
    pub agent: String,
    pub filters: Vec<String>,
    /// Every message matching the filters up to this stream sequence is acknowledged.
    pub ack_floor: u64,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunStatus {
    /// Agents still have events of the run to handle.
    Pending {
        waiting_on: Vec<String>,
    },
    Complete,
    /// Dead letters not redriven.
    Failed {
        dead_letters: u64,
    },
}

impl RunStatus {
    pub fn name(&self) -> &'static str {
        match self {
            RunStatus::Pending { .. } => "pending",
            RunStatus::Complete => "complete",
            RunStatus::Failed { .. } => "failed",
        }
    }
}

/// A run with its status, ready to show.
#[derive(Debug, Clone)]
pub struct RunView<'a> {
    pub status: RunStatus,
    pub run: &'a Run,
}

impl Serialize for RunView<'_> {
    /// The run's public fields and its status; not the fold's bookkeeping.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            correlation_id: &'a str,
            #[serde(flatten)]
            status: &'a RunStatus,
            root_type: &'a str,
            root_source: &'a str,
            #[serde(with = "time::serde::rfc3339")]
            started: OffsetDateTime,
            #[serde(with = "time::serde::rfc3339")]
            last_event: OffsetDateTime,
            events: u64,
            tokens: u64,
            cost: f64,
            types: &'a LiteMap<Name, TypeCount>,
            agents: &'a LiteMap<Name, AgentWork>,
            dead_letters: &'a [RunDeadLetter],
        }
        let run = self.run;
        Shown {
            correlation_id: &run.correlation_id,
            status: &self.status,
            root_type: &run.root_type,
            root_source: &run.root_source,
            started: run.started,
            last_event: run.last_event,
            events: run.events,
            tokens: run.tokens,
            cost: run.cost(),
            types: &run.types,
            agents: &run.agents,
            dead_letters: &run.dead_letters,
        }
        .serialize(serializer)
    }
}

impl Projection for RunBoard {
    // v5: a refused message's dead letter (a root notice) fails its run.
    const NAME: &'static str = "run-board-v5";

    fn apply(&mut self, event: &EventView<'_>, record: &LogRecord) {
        // Looked up before inserting: a key is allocated once per run, not once per event.
        match self.runs.get_mut(event.correlation_id) {
            Some(run) => run.apply(&mut self.names, event, record),
            None => {
                let mut run = Box::new(Run::new(&mut self.names, event, record.time));
                run.apply(&mut self.names, event, record);
                self.runs.insert(run.correlation_id.clone(), run);
            }
        }
    }
}

impl RunBoard {
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn run(&self, correlation_id: &str) -> Option<&Run> {
        self.runs.get(correlation_id).map(|run| &**run)
    }

    /// Every run with its status, oldest first.
    pub fn view<'a>(&'a self, namespace: &Namespace, agents: &[AgentPosition]) -> Vec<RunView<'a>> {
        let mut views: Vec<RunView<'a>> = self
            .runs
            .values()
            .map(|run| RunView {
                status: run.status(namespace, agents),
                run,
            })
            .collect();
        views.sort_by(|a, b| {
            (a.run.started, &a.run.correlation_id).cmp(&(b.run.started, &b.run.correlation_id))
        });
        views
    }
}

impl Run {
    fn new(names: &mut SharedNames, first: &EventView<'_>, time: OffsetDateTime) -> Self {
        Run {
            // Not a shared name: a run's id is in no other run.
            correlation_id: first.correlation_id.into(),
            root_type: names.hold(first.event_type),
            root_source: names.hold(first.source),
            started: time,
            last_event: time,
            events: 0,
            tokens: 0,
            cost_micros: 0,
            types: LiteMap::new(),
            agents: LiteMap::new(),
            dead_letters: Vec::new(),
            counted: FxHashMap::with_capacity_and_hasher(COUNTED_AT_FIRST, Default::default()),
        }
    }

    /// What the run's model calls cost, in the price's unit.
    pub fn cost(&self) -> f64 {
        self.cost_micros as f64 / 1e6
    }

    /// Adds a handling's spend to the run and its agent; `tokens` says whether its tokens are
    /// new (a notice's) or already counted on the children it emitted.
    fn spent(&mut self, names: &mut SharedNames, agent: &str, spend: &Spend, tokens: bool) {
        let cost = spend.cost_micros();
        let work = match self.agents.get_mut(agent) {
            Some(work) => work,
            None => self.agents.entry(names.hold(agent)).or_default(),
        };
        work.cost_micros += cost;
        work.tokens += spend.tokens();
        self.cost_micros += cost;
        if tokens {
            self.tokens += spend.tokens();
        }
    }

    fn apply(&mut self, names: &mut SharedNames, event: &EventView<'_>, record: &LogRecord) {
        self.last_event = record.time;
        // A handling's record is an outcome, not an event of the run: only its spend counts.
        if event.event_type == HANDLED {
            if let Ok(notice) = serde_json::from_slice::<HandlingNotice>(event.data) {
                self.spent(names, event.source, &notice.spend, true);
            }
            return;
        }
        if let Some(spend) = record
            .header(handling_headers::SPEND)
            .and_then(|json| serde_json::from_str::<Spend>(json).ok())
            && !self
                .counted
                .contains_key(&stable_hash(&[event.id.as_bytes()]))
        {
            self.spent(names, event.source, &spend, false);
        }
        let (type_index, type_name) = names.type_index(event.event_type);
        let counts = match self.types.get_mut(event.event_type) {
            Some(counts) => counts,
            None => self.types.entry(type_name.clone()).or_default(),
        };
        counts.last_sequence = record.sequence;
        let id = stable_hash(&[event.id.as_bytes()]);
        if let Some(dead_letter) = record
            .header(REDRIVE_OF)
            .and_then(|s| s.parse::<u64>().ok())
        {
            for letter in &mut self.dead_letters {
                if letter.notice.dead_letter_sequence == dead_letter {
                    letter.redriven = true;
                }
            }
        }
        if self.counted.contains_key(&id) {
            // A redriven copy, or a republish after the duplicate window: not a new event.
            return;
        }
        counts.count += 1;
        self.events += 1;
        self.tokens += event.tokens_used;
        self.counted.insert(
            id,
            Counted::Event {
                type_index,
                first_handler: None,
            },
        );

        if event.event_type == DEAD_LETTERED
            && let Ok(notice) = serde_json::from_slice::<DeadLetterNotice>(event.data)
        {
            self.dead_lettered(names, event, record, notice);
            return;
        }
        if event.causation_id.is_empty() {
            return;
        }
        let work = match self.agents.get_mut(event.source) {
            Some(work) => work,
            None => self.agents.entry(names.hold(event.source)).or_default(),
        };
        increment(&mut work.emitted, names, type_index);
        if let Handled::New { cause_type_index } = count_handling(&mut self.counted, event) {
            increment(&mut work.handled, names, cause_type_index);
        }
    }

    /// Folds a dead letter's notice. A root notice is a refused message's (bytes that are not
    /// an envelope, or an envelope that breaks the wire contract), which the fold never saw as
    /// an event: when it is the run's first word, the run's root is what the message's subject
    /// named, from a source nobody can tell.
    fn dead_lettered(
        &mut self,
        names: &mut SharedNames,
        event: &EventView<'_>,
        record: &LogRecord,
        notice: DeadLetterNotice,
    ) {
        if event.causation_id.is_empty() && self.events == 1 && !notice.event_type.is_empty() {
            self.root_type = names.hold(&notice.event_type);
            self.root_source = names.hold(UNKNOWN_SOURCE);
        }
        let work = match self.agents.get_mut(event.source) {
            Some(work) => work,
            None => self.agents.entry(names.hold(event.source)).or_default(),
        };
        work.dead_lettered += 1;
        self.dead_letters.push(RunDeadLetter {
            notice,
            time: record.time,
            redriven: false,
        });
    }

    /// Dead letters not redriven.
    pub fn open_dead_letters(&self) -> impl Iterator<Item = &RunDeadLetter> {
        self.dead_letters.iter().filter(|letter| !letter.redriven)
    }

    /// Where the run stands, given how far each agent has acknowledged.
    pub fn status(&self, namespace: &Namespace, agents: &[AgentPosition]) -> RunStatus {
        let open = self.open_dead_letters().count() as u64;
        if open > 0 {
            return RunStatus::Failed { dead_letters: open };
        }
        let mut waiting_on: Vec<String> = agents
            .iter()
            .filter(|agent| {
                self.types.iter().any(|(event_type, counts)| {
                    let subject = namespace.event_subject(&self.correlation_id, event_type);
                    counts.last_sequence > agent.ack_floor
                        && agent.filters.iter().any(|f| subject_matches(f, &subject))
                })
            })
            .map(|agent| agent.agent.clone())
            .collect();
        waiting_on.sort();
        waiting_on.dedup();
        if waiting_on.is_empty() {
            RunStatus::Complete
        } else {
            RunStatus::Pending { waiting_on }
        }
    }
}

/// Records that `event`'s source handled its cause, and says whether that is a new handling.
fn count_handling(counted: &mut FxHashMap<u64, Counted>, event: &EventView<'_>) -> Handled {
    let agent = NonZeroU64::new(stable_hash(&[event.source.as_bytes()])).unwrap_or(NonZeroU64::MIN);
    let Some(Counted::Event {
        type_index,
        first_handler,
    }) = counted.get_mut(&stable_hash(&[event.causation_id.as_bytes()]))
    else {
        return Handled::UnknownCause;
    };
    let cause_type_index = *type_index;
    match first_handler {
        None => {
            *first_handler = Some(agent);
            return Handled::New { cause_type_index };
        }
        Some(first) if *first == agent => return Handled::Before,
        Some(_) => {}
    }
    let handling = stable_hash(&[event.causation_id.as_bytes(), event.source.as_bytes()]);
    match counted.entry(handling) {
        Entry::Vacant(entry) => {
            entry.insert(Counted::Handling);
            Handled::New { cause_type_index }
        }
        Entry::Occupied(_) => Handled::Before,
    }
}

/// Adds one to the count of the type at `type_index`.
fn increment(counts: &mut LiteMap<Name, u64>, names: &SharedNames, type_index: u32) {
    let Some(name) = names.types.get(type_index as usize) else {
        return;
    };
    match counts.get_mut(&**name) {
        Some(count) => *count += 1,
        None => {
            counts.insert(name.clone(), 1);
        }
    }
}

/// FNV-1a style: the board's id hashes are kept in snapshots, so they must not change between
/// builds or processes (std's hasher promises neither).
/// It takes eight bytes a step (FNV-1a over words, then a final mix): ids are hashed a few times
/// per event folded.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        let mut words = part.chunks_exact(8);
        for word in &mut words {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            hash = (hash ^ u64::from_le_bytes(bytes)).wrapping_mul(PRIME);
        }
        let mut rest = [0u8; 8];
        rest[..words.remainder().len()].copy_from_slice(words.remainder());
        // The length separates parts, so ("ab", "c") and ("a", "bc") differ.
        hash = (hash ^ u64::from_le_bytes(rest)).wrapping_mul(PRIME);
        hash = (hash ^ part.len() as u64).wrapping_mul(PRIME);
    }
    // Spread the high bits into the low ones, which hash tables index by.
    hash ^ (hash >> 29)
}

/// How far each agent of `namespace` has acknowledged: its durable consumers on the events
/// stream (one per agent, named after it).
pub async fn agent_positions(
    jetstream: &jetstream::Context,
    namespace: &Namespace,
) -> Result<Vec<AgentPosition>, crate::log::LogError> {
    let unavailable = |err: &dyn std::fmt::Display| crate::log::LogError::Unavailable {
        stream: namespace.stream_name(),
        detail: err.to_string(),
    };
    let stream = jetstream
        .get_stream_no_info(namespace.stream_name())
        .await
        .map_err(|err| unavailable(&err))?;
    let infos: Vec<_> = stream
        .consumers()
        .try_collect()
        .await
        .map_err(|err| unavailable(&err))?;
    Ok(infos
        .into_iter()
        .filter(|info| info.config.durable_name.is_some())
        .map(|info| {
            let mut filters = info.config.filter_subjects.clone();
            if !info.config.filter_subject.is_empty() {
                filters.push(info.config.filter_subject.clone());
            }
            if filters.is_empty() {
                filters.push(namespace.all_events());
            }
            AgentPosition {
                agent: info.name,
                filters,
                ack_floor: info.ack_floor.stream_sequence,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Emit, RootEvent, stamp_child};
    use crate::names::{AgentName, EventType};
    use crate::projection::Folded;
    use choreo_proto::v1::Event;

    fn record(sequence: u64, event: &Event) -> LogRecord {
        let time = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(sequence as i64);
        LogRecord::of_event(&Namespace::default(), sequence, time, event)
    }

    fn emit(event_type: &str) -> Emit {
        Emit::json(
            EventType::new(event_type).expect("type"),
            &serde_json::json!({}),
        )
        .expect("json")
    }

    fn root(correlation: &str) -> Event {
        RootEvent::new(emit("count.requested"), "cli")
            .with_correlation_id(correlation)
            .into_event()
            .expect("valid")
    }

    fn agent(name: &str) -> AgentName {
        AgentName::new(name).expect("name")
    }

    fn position(agent: &str, filter: &str, ack_floor: u64) -> AgentPosition {
        AgentPosition {
            agent: agent.to_string(),
            filters: vec![filter.to_string()],
            ack_floor,
        }
    }

    fn dead_letter_notice(parent: &Event, agent_name: &str, dead_letter_sequence: u64) -> Event {
        let notice = DeadLetterNotice {
            agent: agent_name.to_string(),
            reason: "handler_failed".to_string(),
            error: "boom".to_string(),
            event_id: parent.id.clone(),
            event_type: parent.r#type.clone(),
            delivery_count: 3,
            original_sequence: 1,
            dead_letter_sequence,
        };
        let emit = Emit::json(EventType::new(DEAD_LETTERED).expect("type"), &notice).expect("json");
        stamp_child(parent, &agent(agent_name), 99, emit)
    }

    #[test]
    fn an_envelope_whose_run_disagrees_with_its_subject_is_no_event_of_either() {
        let mut board = Folded::<RunBoard>::default();
        board.apply(&record(1, &root("run-a")));
        let mut stray = record(2, &root("run-b"));
        stray.subject = "events.run-a.count.requested".into();
        board.apply(&stray);

        assert!(
            board.state.run("run-b").is_none(),
            "not counted in the body's run"
        );
        assert_eq!(board.state.run("run-a").map(|run| run.events), Some(1));
        assert_eq!(board.undecodable, 1);
    }

    #[test]
    fn a_run_adds_up_what_its_handlings_cost_once_each() {
        use crate::handling::{ChildHeaders, HANDLED, HandlingEnd, HandlingNotice, Spend};
        use std::time::{Duration, SystemTime};

        let mut board = Folded::<RunBoard>::default();
        let root = root("run-9");
        let spend = Spend {
            calls: 1,
            input_tokens: 30,
            output_tokens: 10,
            cost: 0.002,
            model: "m".into(),
        };
        let handling = ChildHeaders::new(SystemTime::now(), Duration::from_secs(1), &spend);
        let child = |index| {
            let emit = emit("count.done").tokens_used(if index == 0 { 40 } else { 0 });
            let event = stamp_child(&root, &agent("counter"), index, emit);
            handling.on(index, record(2 + index as u64, &event))
        };
        let failed = HandlingNotice {
            agent: "judge".into(),
            event_id: root.id.clone(),
            event_type: root.r#type.clone(),
            delivery: 1,
            received: OffsetDateTime::now_utc(),
            took_ms: 10.0,
            end: HandlingEnd::Failed,
            error: "500".into(),
            spend: Spend {
                calls: 2,
                input_tokens: 5,
                output_tokens: 0,
                cost: 0.0005,
                model: "m".into(),
            },
        };
        let notice = stamp_child(
            &root,
            &agent("judge"),
            0,
            Emit::json(EventType::new(HANDLED).expect("type"), &failed).expect("json"),
        );
        board.apply(&record(1, &root));
        board.apply(&child(0));
        board.apply(&child(1));
        board.apply(&record(4, &notice));

        let run = board.state.run("run-9").expect("run");
        assert_eq!(
            run.events, 3,
            "the handling notice is not an event of the run"
        );
        assert!(run.types.get(HANDLED).is_none());
        assert_eq!(
            run.cost_micros, 2500,
            "the spend of two children counted once"
        );
        assert_eq!(
            run.tokens, 45,
            "the children's 40, and the failed handling's 5"
        );
        assert_eq!(run.agents.get("counter").map(|a| a.cost_micros), Some(2000));
        assert_eq!(run.agents.get("judge").map(|a| a.tokens), Some(5));
    }

    #[test]
    fn a_run_counts_events_tokens_and_who_handled_what() {
        let mut board = Folded::<RunBoard>::default();
        let root = root("run-1");
        let done = stamp_child(
            &root,
            &agent("counter"),
            0,
            emit("count.done").tokens_used(40),
        );
        let extra = stamp_child(
            &root,
            &agent("counter"),
            1,
            emit("count.done").tokens_used(2),
        );
        board.apply(&record(1, &root));
        board.apply(&record(2, &done));
        board.apply(&record(3, &extra));

        let run = board.state.run("run-1").expect("run");
        assert_eq!(run.events, 3);
        assert_eq!(run.tokens, 42);
        assert_eq!(&*run.root_type, "count.requested");
        assert_eq!(
            run.types.get("count.done").copied(),
            Some(TypeCount {
                count: 2,
                last_sequence: 3
            })
        );
        let counter = run.agents.get("counter").expect("counter");
        // Two events from one input are one handling.
        assert_eq!(counter.handled.get("count.requested"), Some(&1));
        assert_eq!(counter.emitted.get("count.done"), Some(&2));
        assert_eq!(board.position.sequence, 3);
    }

    #[test]
    fn every_agent_that_handles_an_input_counts_one_handling_of_it() {
        let mut board = Folded::<RunBoard>::default();
        let root = root("run-1");
        // Three agents handle the root; two emit twice from it.
        let children = [
            stamp_child(&root, &agent("security"), 0, emit("finding.reported")),
            stamp_child(&root, &agent("style"), 0, emit("finding.reported")),
            stamp_child(&root, &agent("security"), 1, emit("review.done")),
            stamp_child(&root, &agent("tests"), 0, emit("review.done")),
            stamp_child(&root, &agent("style"), 1, emit("review.done")),
        ];
        board.apply(&record(1, &root));
        for (sequence, child) in (2..).zip(&children) {
            board.apply(&record(sequence, child));
        }
        // A redelivered handling republishes the same child: still one handling.
        board.apply(&record(7, &children[1]));

        let run = board.state.run("run-1").expect("run");
        for (name, emitted) in [("security", 2), ("style", 2), ("tests", 1)] {
            let work = run.agents.get(name).expect(name);
            assert_eq!(work.handled.get("count.requested"), Some(&1), "{name}");
            assert_eq!(work.emitted.values().sum::<u64>(), emitted, "{name}");
        }
    }

    #[test]
    fn a_run_is_pending_until_every_subscribed_agent_has_acknowledged_it() {
        let mut board = Folded::<RunBoard>::default();
        let root = root("run-1");
        let done = stamp_child(&root, &agent("counter"), 0, emit("count.done"));
        board.apply(&record(1, &root));
        board.apply(&record(2, &done));
        let ns = Namespace::default();
        let run = board.state.run("run-1").expect("run");

        let agents = [
            position("counter", "events.*.count.requested", 1),
            position("reporter", "events.*.count.done", 1),
            position("bystander", "events.*.other", 0),
        ];
        assert_eq!(
            run.status(&ns, &agents),
            RunStatus::Pending {
                waiting_on: vec!["reporter".to_string()]
            }
        );
        let agents = [
            position("counter", "events.*.count.requested", 1),
            position("reporter", "events.*.count.done", 2),
        ];
        assert_eq!(run.status(&ns, &agents), RunStatus::Complete);
    }

    #[test]
    fn a_dead_letter_fails_the_run_until_it_is_redriven() {
        let mut board = Folded::<RunBoard>::default();
        let root = root("run-1");
        board.apply(&record(1, &root));
        board.apply(&record(2, &dead_letter_notice(&root, "counter", 7)));
        let ns = Namespace::default();
        let agents = [position("counter", "events.*.count.requested", 2)];
        let run = board.state.run("run-1").expect("run");
        assert_eq!(
            run.status(&ns, &agents),
            RunStatus::Failed { dead_letters: 1 }
        );
        assert_eq!(run.agents.get("counter").map(|w| w.dead_lettered), Some(1));
        assert_eq!(run.dead_letters[0].notice.reason, "handler_failed");

        // The redriven copy: same event, new sequence, marked as the redrive of letter 7.
        let mut copy = record(3, &root);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(REDRIVE_OF, "7");
        copy.headers = Some(headers);
        board.apply(&copy);
        let run = board.state.run("run-1").expect("run");
        assert_eq!(run.events, 2, "a redriven copy is not a new event");
        assert!(run.dead_letters[0].redriven);
        assert_eq!(
            run.status(&ns, &agents),
            RunStatus::Pending {
                waiting_on: vec!["counter".to_string()]
            },
            "the copy waits for the agent"
        );
        let agents = [position("counter", "events.*.count.requested", 3)];
        assert_eq!(run.status(&ns, &agents), RunStatus::Complete);
    }

    #[test]
    fn a_message_refused_as_it_came_fails_the_run_its_subject_names() {
        let mut board = Folded::<RunBoard>::default();
        // Bytes that are not an envelope on events.run-bad.x.y: the fold cannot see them.
        let garbage = LogRecord {
            sequence: 1,
            time: OffsetDateTime::UNIX_EPOCH,
            subject: "events.run-bad.x.y".into(),
            headers: None,
            payload: bytes::Bytes::from_static(&[0xff; 8]),
        };
        let notice = DeadLetterNotice {
            agent: "sink".to_string(),
            reason: "decode_failed".to_string(),
            error: "payload is not a choreo.v1.Event".to_string(),
            event_id: String::new(),
            event_type: "x.y".to_string(),
            delivery_count: 1,
            original_sequence: 1,
            dead_letter_sequence: 1,
        };
        let announcement = RootEvent::new(
            Emit::json(EventType::new(DEAD_LETTERED).expect("type"), &notice).expect("json"),
            "sink",
        )
        .with_correlation_id("run-bad")
        .into_event()
        .expect("valid");
        board.apply(&garbage);
        board.apply(&record(2, &announcement));
        assert_eq!(board.undecodable, 1);

        let run = board.state.run("run-bad").expect("the subject's run");
        let ns = Namespace::default();
        assert_eq!(
            run.status(&ns, &[position("sink", "events.*.x.y", 2)]),
            RunStatus::Failed { dead_letters: 1 }
        );
        assert_eq!(
            (&*run.root_type, &*run.root_source),
            ("x.y", UNKNOWN_SOURCE),
            "not a platform run (choreo.*): listed with the others"
        );
        assert_eq!(run.agents.get("sink").map(|w| w.dead_lettered), Some(1));
        assert_eq!(run.dead_letters[0].notice.reason, "decode_failed");
    }

    #[test]
    fn a_snapshot_resumes_to_the_same_state_as_a_full_rebuild() {
        let root = root("run-1");
        let done = stamp_child(&root, &agent("counter"), 0, emit("count.done"));
        let after = stamp_child(&done, &agent("reporter"), 0, emit("report.written"));
        let records = [record(1, &root), record(2, &done), record(3, &after)];

        let mut full = Folded::<RunBoard>::default();
        records.iter().for_each(|r| full.apply(r));

        let mut first = Folded::<RunBoard>::default();
        records[..2].iter().for_each(|r| first.apply(r));
        let json = serde_json::to_vec(&first).expect("serialize");
        let mut resumed: Folded<RunBoard> = serde_json::from_slice(&json).expect("deserialize");
        // Overlapping records are skipped, so resuming from an earlier point is harmless.
        records.iter().for_each(|r| resumed.apply(r));

        assert_eq!(resumed.state, full.state);
        assert_eq!(resumed.position, full.position);
        let run = resumed.state.run("run-1").expect("run");
        assert_eq!(run.events, 3);
        assert_eq!(
            run.agents
                .get("reporter")
                .and_then(|w| w.handled.get("count.done")),
            Some(&1)
        );
    }
}
