//! `choreo diff RUN_A RUN_B`: two runs' trees compared event by event.
//!
//! Events are matched by their place in the tree, not by id: the path of (type, source) from
//! the root. So a run copied into a sandbox and run again by a new build lines up with the
//! original wherever it behaved the same, and every difference is named by its path.
//!
//! Concurrency is not a change, so two things that depend on arrival order are not compared:
//!
//! - **The order of siblings.** Events of the same type and source under the same cause are
//!   matched by payload first, then by order: four findings stored in another order are the
//!   same four findings.
//! - **Which arrival completed a join.** An agent that waits for several events (the
//!   aggregator waits for every specialist) publishes its output as a child of the one that
//!   came last, so the same `review.completed` hangs under security's completion in one run and
//!   under performance's in the other. After the tree is matched, an event left over in each
//!   run, of the same type and source, whose causes are concurrent (neither caused the other),
//!   is taken for the same event, and what is under it is matched as usual. It is printed as
//!   a note, not counted. The log does not say what an agent waited for, so an agent that
//!   answered another of two concurrent events is taken for a join too.
//!
//! What is compared: each matched event's payload (as JSON values when it is JSON, so key
//! order and spacing do not count; else its bytes and content type), its dead letters (agent
//! and reason), and the events in one run only. Not compared: ids and times (a replay keeps the
//! roots' ids, but a join's output may get another), attributes (a replayed root carries
//! `replayof`), and a dead letter's error text and sequences, which are printed but carry ids
//! and positions.

use std::collections::{HashMap, HashSet};
use std::fmt;

use choreo_bus::Namespace;
use choreo_bus::cloudevents;
use choreo_bus::dead_letter::DeadLetterNotice;
use choreo_bus::trace::RunTrace;
use serde_json::Value;

use crate::Failure;
use crate::connection::Connection;

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The first run: CORRELATION, or NAMESPACE/CORRELATION for another namespace.
    run_a: String,
    /// The second run, written the same way.
    run_b: String,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: DiffArgs) -> Result<(), Failure> {
    let default = args.connection.namespace()?;
    let (ns_a, run_a) = parse_run(&args.run_a, &default)?;
    let (ns_b, run_b) = parse_run(&args.run_b, &default)?;
    let jetstream = args.connection.jetstream().await?;
    let a = RunTrace::read(&jetstream, &ns_a, &run_a, &[])
        .await
        .map_err(Failure::trace)?;
    let b = RunTrace::read(&jetstream, &ns_b, &run_b, &[])
        .await
        .map_err(Failure::trace)?;
    let comparison = compare(&a, &b);
    println!(
        "A = {ns_a}/{run_a} ({} events)   B = {ns_b}/{run_b} ({} events)",
        a.len(),
        b.len()
    );
    for rejoined in &comparison.rejoined {
        println!("{rejoined}");
    }
    if comparison.differences.is_empty() {
        println!("same tree: every event matches in type, source, payload and dead letters");
        return Ok(());
    }
    for difference in &comparison.differences {
        println!("{difference}");
    }
    Err(Failure::failed(format!(
        "the runs differ in {} place(s)",
        comparison.differences.len()
    )))
}

/// `NAMESPACE/CORRELATION` or `CORRELATION`.
pub fn parse_run(value: &str, default: &Namespace) -> Result<(Namespace, String), Failure> {
    let (namespace, correlation) = match value.split_once('/') {
        Some((ns, correlation)) => (Namespace::new(ns).map_err(Failure::usage)?, correlation),
        None => (default.clone(), value),
    };
    choreo_bus::names::validate_id("correlation", correlation).map_err(Failure::usage)?;
    Ok((namespace, correlation.to_string()))
}

/// What two runs' comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// What differs, in tree order of the first run (an event only in B after its cause's
    /// events in A).
    pub differences: Vec<Difference>,
    /// Joins completed by another arrival in each run: the same event, not a difference.
    pub rejoined: Vec<Rejoined>,
}

/// Which run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    A,
    B,
}

/// One difference between two runs. A matched event is named by its path in A.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    OnlyInA(String),
    OnlyInB(String),
    Payload {
        path: String,
        a: Data,
        b: Data,
    },
    /// An agent gave up on the event in one run only.
    DeadLetter {
        path: String,
        run: Run,
        agent: String,
        reason: String,
        error: String,
    },
}

/// A join's output, matched although another of its inputs completed it in each run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejoined {
    /// Its path in A.
    pub path: String,
    /// The event it hangs under in each run: `type [source]`.
    pub after_a: String,
    pub after_b: String,
}

/// An event's payload as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// JSON, or text (as a JSON string).
    Json(Value),
    /// Anything else, compared byte for byte.
    Bytes {
        content_type: String,
        bytes: Vec<u8>,
    },
}

impl Data {
    fn of(event: &choreo_bus::Event) -> Data {
        match cloudevents::data_as_json(event) {
            Some(value) => Data::Json(value),
            None => Data::Bytes {
                content_type: event.content_type.clone(),
                bytes: event.data.to_vec(),
            },
        }
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Json(value) => write!(f, "{value}"),
            Data::Bytes {
                content_type,
                bytes,
            } => write!(
                f,
                "{} bytes of {}",
                bytes.len(),
                if content_type.is_empty() {
                    "no content type"
                } else {
                    content_type
                }
            ),
        }
    }
}

/// Payloads up to this long are shown whole; longer ones by the fields that differ.
const WHOLE_PAYLOAD: usize = 120;
/// A value shown in a field's line is cut at this many characters.
const VALUE_SHOWN: usize = 100;
/// Fields shown per payload difference; the rest are counted.
const FIELDS_SHOWN: usize = 10;

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::OnlyInA(path) => write!(f, "- only in A: {path}"),
            Difference::OnlyInB(path) => write!(f, "+ only in B: {path}"),
            Difference::DeadLetter {
                path,
                run,
                agent,
                reason,
                error,
            } => {
                let sign = if *run == Run::A { '-' } else { '+' };
                write!(
                    f,
                    "{sign} dead letter only in {run:?}: {path}\n    {agent} gave up ({reason}): {error}"
                )
            }
            Difference::Payload { path, a, b } => {
                write!(f, "~ payload differs: {path}")?;
                let (whole_a, whole_b) = (a.to_string(), b.to_string());
                let fields = match (a, b) {
                    (Data::Json(a), Data::Json(b))
                        if whole_a.chars().count() > WHOLE_PAYLOAD
                            || whole_b.chars().count() > WHOLE_PAYLOAD =>
                    {
                        field_changes(a, b)
                    }
                    _ => return write!(f, "\n    A {whole_a}\n    B {whole_b}"),
                };
                for (pointer, a, b) in fields.iter().take(FIELDS_SHOWN) {
                    let at = if pointer.is_empty() {
                        "(the whole payload)"
                    } else {
                        pointer
                    };
                    write!(
                        f,
                        "\n    {at}\n      A {}\n      B {}",
                        shown(*a),
                        shown(*b)
                    )?;
                }
                if fields.len() > FIELDS_SHOWN {
                    write!(f, "\n    … and {} more", fields.len() - FIELDS_SHOWN)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Rejoined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "= same join, completed by another arrival (not a difference): {}\n    A after {}, B after {}",
            self.path, self.after_a, self.after_b
        )
    }
}

/// A field's value in a line, cut to [`VALUE_SHOWN`] characters.
fn shown(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "(absent)".to_string();
    };
    let text = value.to_string();
    match text.char_indices().nth(VALUE_SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The leaves where two JSON values differ, as (JSON pointer, A's value, B's value), a side
/// being `None` where the field is absent.
fn field_changes<'v>(
    a: &'v Value,
    b: &'v Value,
) -> Vec<(String, Option<&'v Value>, Option<&'v Value>)> {
    fn walk<'v>(
        pointer: &str,
        a: Option<&'v Value>,
        b: Option<&'v Value>,
        out: &mut Vec<(String, Option<&'v Value>, Option<&'v Value>)>,
    ) {
        let step =
            |token: &str| format!("{pointer}/{}", token.replace('~', "~0").replace('/', "~1"));
        match (a, b) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                for key in keys {
                    walk(&step(key), a.get(key), b.get(key), out);
                }
            }
            (Some(Value::Array(a)), Some(Value::Array(b))) => {
                for i in 0..a.len().max(b.len()) {
                    walk(&step(&i.to_string()), a.get(i), b.get(i), out);
                }
            }
            (a, b) if a != b => out.push((pointer.to_string(), a, b)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", Some(a), Some(b), &mut out);
    out
}

/// The differences between two runs; see the module's documentation for what counts.
pub fn compare(a: &RunTrace, b: &RunTrace) -> Comparison {
    let mut matching = Matching::new(Side::new(a), Side::new(b));
    matching.match_below(None, None);
    matching.rejoin();
    matching.comparison()
}

/// What identifies an event among its siblings: type, source, and whether it is a redriven copy.
type Key<'t> = (&'t str, &'t str, bool);

/// One run, indexed for the comparison.
struct Side<'t> {
    trace: &'t RunTrace,
    parent: Vec<Option<usize>>,
    /// Each node's place in tree order ([`RunTrace::walk`]).
    position: Vec<usize>,
    /// The last place in tree order of the node's subtree.
    subtree_end: Vec<usize>,
    /// `type [source]`, with `#n` for the nth sibling of the same key.
    step: Vec<String>,
    data: Vec<Data>,
    walk: Vec<usize>,
}

impl<'t> Side<'t> {
    fn new(trace: &'t RunTrace) -> Self {
        let n = trace.nodes.len();
        let mut parent = vec![None; n];
        for (index, node) in trace.nodes.iter().enumerate() {
            for &child in &node.children {
                parent[child] = Some(index);
            }
        }
        let walk: Vec<usize> = trace.walk().into_iter().map(|(index, _)| index).collect();
        let mut position = vec![0; n];
        for (place, &index) in walk.iter().enumerate() {
            position[index] = place;
        }
        let mut subtree_end = position.clone();
        for &index in walk.iter().rev() {
            if let Some(parent) = parent[index] {
                subtree_end[parent] = subtree_end[parent].max(subtree_end[index]);
            }
        }
        let mut side = Side {
            trace,
            parent,
            position,
            subtree_end,
            step: vec![String::new(); n],
            data: trace
                .nodes
                .iter()
                .map(|node| Data::of(&node.event))
                .collect(),
            walk,
        };
        let sibling_lists =
            std::iter::once(&trace.roots).chain(trace.nodes.iter().map(|n| &n.children));
        for siblings in sibling_lists {
            let mut seen: HashMap<Key<'t>, usize> = HashMap::new();
            for &index in siblings {
                let key = side.key(index);
                let nth = seen.entry(key).or_default();
                *nth += 1;
                let (event_type, source, redriven) = key;
                let mut step = format!("{event_type} [{source}]");
                if *nth > 1 {
                    step.push_str(&format!(" #{nth}"));
                }
                if redriven {
                    step.push_str(" (redriven)");
                }
                side.step[index] = step;
            }
        }
        side
    }

    fn key(&self, index: usize) -> Key<'t> {
        let trace: &'t RunTrace = self.trace;
        let node = &trace.nodes[index];
        (
            &node.event.r#type,
            &node.event.source,
            node.redrive.is_some(),
        )
    }

    /// The children of `parent`, or the roots.
    fn children(&self, parent: Option<usize>) -> &'t [usize] {
        let trace: &'t RunTrace = self.trace;
        match parent {
            Some(index) => &trace.nodes[index].children,
            None => &trace.roots,
        }
    }

    fn dead_letters(&self, index: usize) -> &'t [DeadLetterNotice] {
        let trace: &'t RunTrace = self.trace;
        &trace.nodes[index].dead_letters
    }

    /// `root > … > event`, each step `type [source]`.
    fn path(&self, index: usize) -> String {
        let mut steps = vec![self.step[index].as_str()];
        let mut at = index;
        while let Some(parent) = self.parent[at] {
            steps.push(&self.step[parent]);
            at = parent;
        }
        steps.reverse();
        steps.join(" > ")
    }
}

/// A node of the two runs seen as one forest: a matched pair is named by its event in A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Node {
    A(usize),
    B(usize),
}

/// Which event of A is which event of B.
struct Matching<'t> {
    a: Side<'t>,
    b: Side<'t>,
    a_to_b: Vec<Option<usize>>,
    b_to_a: Vec<Option<usize>>,
    /// Pairs matched as one join's output under different causes.
    rejoined: Vec<(usize, usize)>,
}

impl<'t> Matching<'t> {
    fn new(a: Side<'t>, b: Side<'t>) -> Self {
        let (na, nb) = (a.trace.nodes.len(), b.trace.nodes.len());
        Matching {
            a,
            b,
            a_to_b: vec![None; na],
            b_to_a: vec![None; nb],
            rejoined: Vec::new(),
        }
    }

    /// Matches the children of `a` with those of `b` (the roots for `None`), and so on down:
    /// among the same type and source, equal payloads first, then in stream order.
    fn match_below(&mut self, a: Option<usize>, b: Option<usize>) {
        let mut work = vec![(a, b)];
        while let Some((a, b)) = work.pop() {
            let (a_children, b_children) = (self.a.children(a), self.b.children(b));
            for same_payload in [true, false] {
                for &x in a_children {
                    if self.a_to_b[x].is_some() {
                        continue;
                    }
                    let partner = b_children.iter().copied().find(|&y| {
                        self.b_to_a[y].is_none()
                            && self.a.key(x) == self.b.key(y)
                            && (!same_payload || self.a.data[x] == self.b.data[y])
                    });
                    if let Some(y) = partner {
                        self.a_to_b[x] = Some(y);
                        self.b_to_a[y] = Some(x);
                        work.push((Some(x), Some(y)));
                    }
                }
            }
        }
    }

    /// Pairs events left over in both runs that are one join's output under concurrent causes,
    /// in tree order of A so that an outer join is paired before one under it.
    fn rejoin(&mut self) {
        let mut leftover_b: HashMap<Key<'t>, Vec<usize>> = HashMap::new();
        for &y in &self.b.walk {
            if self.b_to_a[y].is_none() && self.b.parent[y].is_some() {
                leftover_b.entry(self.b.key(y)).or_default().push(y);
            }
        }
        for place in 0..self.a.walk.len() {
            let x = self.a.walk[place];
            let Some(cause_a) = self.a.parent[x] else {
                continue;
            };
            if self.a_to_b[x].is_some() {
                continue;
            }
            let Some(candidates) = leftover_b.get(&self.a.key(x)) else {
                continue;
            };
            let joins: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&y| self.b_to_a[y].is_none())
                .filter(|&y| {
                    self.b.parent[y].is_some_and(|cause_b| self.concurrent(cause_a, cause_b))
                })
                .collect();
            let partner = joins
                .iter()
                .copied()
                .find(|&y| self.a.data[x] == self.b.data[y])
                .or_else(|| joins.first().copied());
            if let Some(y) = partner {
                self.a_to_b[x] = Some(y);
                self.b_to_a[y] = Some(x);
                self.rejoined.push((x, y));
                self.match_below(Some(x), Some(y));
            }
        }
    }

    fn node_of_b(&self, y: usize) -> Node {
        match self.b_to_a[y] {
            Some(x) => Node::A(x),
            None => Node::B(y),
        }
    }

    /// A node's causes in either run.
    fn causes(&self, node: Node) -> [Option<Node>; 2] {
        match node {
            Node::A(x) => [
                self.a.parent[x].map(Node::A),
                self.a_to_b[x]
                    .and_then(|y| self.b.parent[y])
                    .map(|cause| self.node_of_b(cause)),
            ],
            Node::B(y) => [self.b.parent[y].map(|cause| self.node_of_b(cause)), None],
        }
    }

    /// Whether `ancestor` is `node` or caused it, in either run.
    fn leads_to(&self, ancestor: Node, node: Node) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![node];
        while let Some(at) = stack.pop() {
            if at == ancestor {
                return true;
            }
            if seen.insert(at) {
                stack.extend(self.causes(at).into_iter().flatten());
            }
        }
        false
    }

    /// Whether A's event `cause_a` and B's event `cause_b` are concurrent: neither is the other
    /// or led to it.
    fn concurrent(&self, cause_a: usize, cause_b: usize) -> bool {
        let (a, b) = (Node::A(cause_a), self.node_of_b(cause_b));
        !self.leads_to(a, b) && !self.leads_to(b, a)
    }

    fn comparison(&self) -> Comparison {
        // (place in A's tree order, 0 for A's own and matched events or 1 for B's, place in
        // B's), so that an event only in B comes after everything under its cause in A.
        let mut found: Vec<((usize, u8, usize), Difference)> = Vec::new();
        for &x in &self.a.walk {
            let place = (self.a.position[x], 0, 0);
            let path = self.a.path(x);
            match self.a_to_b[x] {
                Some(y) => {
                    if self.a.data[x] != self.b.data[y] {
                        found.push((
                            place,
                            Difference::Payload {
                                path: path.clone(),
                                a: self.a.data[x].clone(),
                                b: self.b.data[y].clone(),
                            },
                        ));
                    }
                    for difference in dead_letter_differences(
                        &path,
                        self.a.dead_letters(x),
                        self.b.dead_letters(y),
                    ) {
                        found.push((place, difference));
                    }
                }
                None => {
                    found.push((place, Difference::OnlyInA(path.clone())));
                    for difference in dead_letter_differences(&path, self.a.dead_letters(x), &[]) {
                        found.push((place, difference));
                    }
                }
            }
        }
        for &y in &self.b.walk {
            if self.b_to_a[y].is_some() {
                continue;
            }
            let mut cause = self.b.parent[y];
            let anchor = loop {
                match cause {
                    None => break usize::MAX,
                    Some(at) => match self.b_to_a[at] {
                        Some(x) => break self.a.subtree_end[x],
                        None => cause = self.b.parent[at],
                    },
                }
            };
            let place = (anchor, 1, self.b.position[y]);
            let path = self.b.path(y);
            found.push((place, Difference::OnlyInB(path.clone())));
            for difference in dead_letter_differences(&path, &[], self.b.dead_letters(y)) {
                found.push((place, difference));
            }
        }
        found.sort_by_key(|(place, _)| *place);
        Comparison {
            differences: found
                .into_iter()
                .map(|(_, difference)| difference)
                .collect(),
            rejoined: self
                .rejoined
                .iter()
                .map(|&(x, y)| Rejoined {
                    path: self.a.path(x),
                    after_a: self.a.parent[x]
                        .map(|cause| self.a.step[cause].clone())
                        .unwrap_or_default(),
                    after_b: self.b.parent[y]
                        .map(|cause| self.b.step[cause].clone())
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// Dead letters (by agent and reason) in one run's event and not the other's.
fn dead_letter_differences(
    path: &str,
    a: &[DeadLetterNotice],
    b: &[DeadLetterNotice],
) -> Vec<Difference> {
    let mut only_b: Vec<&DeadLetterNotice> = b.iter().collect();
    let mut only_a = Vec::new();
    for notice in a {
        match only_b
            .iter()
            .position(|other| other.agent == notice.agent && other.reason == notice.reason)
        {
            Some(same) => {
                only_b.remove(same);
            }
            None => only_a.push(notice),
        }
    }
    let tagged = only_a
        .into_iter()
        .map(|notice| (Run::A, notice))
        .chain(only_b.into_iter().map(|notice| (Run::B, notice)));
    tagged
        .map(|(run, notice)| Difference::DeadLetter {
            path: path.to_string(),
            run,
            agent: notice.agent.clone(),
            reason: notice.reason.clone(),
            error: notice.error.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_bus::dead_letter::DEAD_LETTERED;
    use choreo_bus::envelope::stamp_child;
    use choreo_bus::log::LogRecord;
    use choreo_bus::names::{AgentName, EventType};
    use choreo_bus::{Emit, Event, RootEvent};
    use serde_json::json;

    fn emit(event_type: &str, data: Value) -> Emit {
        Emit::json(EventType::new(event_type).expect("type"), &data).expect("json")
    }

    fn child(parent: &Event, agent: &str, index: usize, event_type: &str, data: Value) -> Event {
        let agent = AgentName::new(agent).expect("name");
        stamp_child(parent, &agent, index, emit(event_type, data))
    }

    fn trace(events: &[Event]) -> RunTrace {
        let records: Vec<LogRecord> = events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                LogRecord::of_event(
                    &Namespace::default(),
                    i as u64 + 1,
                    time::OffsetDateTime::UNIX_EPOCH,
                    event,
                )
            })
            .collect();
        RunTrace::from_records(&Namespace::default(), "run", &records, &[])
    }

    /// A review as the team runs it: triage plans, each specialist reports findings and
    /// completes (in `arrivals` order), the aggregator's report hangs under the last completion
    /// (the one that completed its join), the editor approves. `findings` gives a specialist's
    /// findings, in the order it publishes them.
    struct Review<'f> {
        arrivals: &'f [&'f str],
        findings: &'f dyn Fn(&str) -> Vec<Value>,
    }

    const PLANNED: &str = "review.requested [cli] > review.planned [triage]";

    fn findings(specialist: &str) -> Vec<Value> {
        vec![
            json!({"specialist": specialist, "title": "first", "line": 1}),
            json!({"specialist": specialist, "title": "second", "line": 2}),
        ]
    }

    impl Review<'_> {
        fn events(&self) -> Vec<Event> {
            let root = RootEvent::new(emit("review.requested", json!({"diff": "+x"})), "cli")
                .with_correlation_id("run")
                .into_event()
                .expect("root");
            let planned = child(&root, "triage", 0, "review.planned", json!({"n": 2}));
            let mut events = vec![root, planned.clone()];
            let mut last = None;
            for specialist in self.arrivals {
                let found = (self.findings)(specialist);
                for (i, finding) in found.iter().enumerate() {
                    events.push(child(
                        &planned,
                        specialist,
                        i,
                        "review.finding",
                        finding.clone(),
                    ));
                }
                let completed = child(
                    &planned,
                    specialist,
                    found.len(),
                    "review.specialist.completed",
                    json!({"specialist": specialist, "findings": found.len()}),
                );
                events.push(completed.clone());
                last = Some(completed);
            }
            let report = child(
                &last.expect("a specialist"),
                "aggregator",
                0,
                "review.completed",
                json!({"verdict": "comment"}),
            );
            let approved = child(&report, "editor", 0, "review.approved", json!({}));
            events.extend([report, approved]);
            events
        }

        fn trace(&self) -> RunTrace {
            trace(&self.events())
        }
    }

    fn dead_letter(failed: &Event, agent: &str, reason: &str) -> Event {
        let notice = DeadLetterNotice {
            agent: agent.into(),
            reason: reason.into(),
            error: "boom".into(),
            event_id: failed.id.clone(),
            event_type: failed.r#type.clone(),
            delivery_count: 3,
            original_sequence: 9,
            dead_letter_sequence: 1,
        };
        let agent = AgentName::new(agent).expect("name");
        let data = serde_json::to_value(&notice).expect("json");
        stamp_child(failed, &agent, 0, emit(DEAD_LETTERED, data))
    }

    #[test]
    fn a_join_completed_by_another_arrival_is_the_same_run() {
        let a = Review {
            arrivals: &["security", "performance"],
            findings: &findings,
        };
        let b = Review {
            arrivals: &["performance", "security"],
            findings: &findings,
        };
        let comparison = compare(&a.trace(), &b.trace());
        assert_eq!(comparison.differences, vec![], "{comparison:?}");
        assert_eq!(
            comparison.rejoined,
            vec![Rejoined {
                path: format!(
                    "{PLANNED} > review.specialist.completed [performance] > review.completed \
                     [aggregator]"
                ),
                after_a: "review.specialist.completed [performance]".into(),
                after_b: "review.specialist.completed [security]".into(),
            }]
        );
    }

    #[test]
    fn siblings_in_another_order_are_the_same_run() {
        let reversed = |specialist: &str| {
            let mut found = findings(specialist);
            found.reverse();
            found
        };
        let a = Review {
            arrivals: &["security", "performance"],
            findings: &findings,
        };
        let b = Review {
            arrivals: &["security", "performance"],
            findings: &reversed,
        };
        let comparison = compare(&a.trace(), &b.trace());
        assert_eq!(comparison, Comparison::default());
    }

    #[test]
    fn a_changed_specialist_shows_exactly_its_change() {
        let changed = |specialist: &str| {
            let mut found = findings(specialist);
            if specialist == "security" {
                found[1] = json!({"specialist": "security", "title": "second, worse", "line": 2});
            }
            found
        };
        let a = Review {
            arrivals: &["security", "performance"],
            findings: &findings,
        };
        // Another build, and another arrival order as well.
        let b = Review {
            arrivals: &["performance", "security"],
            findings: &changed,
        };
        assert_eq!(
            compare(&a.trace(), &b.trace()).differences,
            vec![Difference::Payload {
                path: format!("{PLANNED} > review.finding [security] #2"),
                a: Data::Json(json!({"specialist": "security", "title": "second", "line": 2})),
                b: Data::Json(
                    json!({"specialist": "security", "title": "second, worse", "line": 2})
                ),
            }]
        );
    }

    #[test]
    fn an_extra_or_a_missing_event_is_named() {
        let more = |specialist: &str| {
            let mut found = findings(specialist);
            if specialist == "performance" {
                found.push(json!({"specialist": "performance", "title": "third", "line": 3}));
            }
            found
        };
        let a = Review {
            arrivals: &["security", "performance"],
            findings: &findings,
        }
        .trace();
        let b = Review {
            arrivals: &["performance", "security"],
            findings: &more,
        }
        .trace();
        let extra = format!("{PLANNED} > review.finding [performance] #3");
        // The completion says how many findings, so it differs too.
        let completed = format!("{PLANNED} > review.specialist.completed [performance]");
        assert_eq!(
            compare(&a, &b).differences,
            vec![
                Difference::Payload {
                    path: completed.clone(),
                    a: Data::Json(json!({"specialist": "performance", "findings": 2})),
                    b: Data::Json(json!({"specialist": "performance", "findings": 3})),
                },
                Difference::OnlyInB(extra.clone()),
            ]
        );
        assert_eq!(
            compare(&b, &a).differences,
            vec![
                Difference::OnlyInA(extra),
                Difference::Payload {
                    path: completed,
                    a: Data::Json(json!({"specialist": "performance", "findings": 3})),
                    b: Data::Json(json!({"specialist": "performance", "findings": 2})),
                },
            ]
        );
    }

    #[test]
    fn a_dead_letter_in_one_run_only_is_named() {
        let review = Review {
            arrivals: &["security", "performance"],
            findings: &findings,
        };
        let mut a = review.events();
        let approved = |events: &[Event]| {
            events
                .iter()
                .find(|event| event.r#type == "review.approved")
                .expect("approved")
                .clone()
        };
        let mut b = Review {
            arrivals: &["performance", "security"],
            findings: &findings,
        }
        .events();
        b.push(dead_letter(&approved(&b), "notifier", "handler_failed"));
        assert_eq!(
            compare(&trace(&a), &trace(&b)).differences,
            vec![Difference::DeadLetter {
                path: format!(
                    "{PLANNED} > review.specialist.completed [performance] > review.completed \
                     [aggregator] > review.approved [editor]"
                ),
                run: Run::B,
                agent: "notifier".into(),
                reason: "handler_failed".into(),
                error: "boom".into(),
            }]
        );

        // The same outcome in both runs, whatever its error text and positions: no difference.
        a.push(dead_letter(&approved(&a), "notifier", "handler_failed"));
        assert_eq!(compare(&trace(&a), &trace(&b)).differences, vec![]);
    }

    #[test]
    fn a_join_completed_by_its_deadline_compares_its_report() {
        let a = Review {
            arrivals: &["security", "performance"],
            findings: &findings,
        }
        .events();
        // B: performance never answered; the deadline completed the join without it.
        let planned = a[1].clone();
        let mut b = vec![a[0].clone(), planned.clone()];
        b.extend(a[2..5].iter().cloned()); // security's two findings and completion
        let deadline = child(
            &planned,
            "aggregator",
            9,
            "review.deadline",
            json!({"round": 1}),
        );
        let report = child(
            &deadline,
            "aggregator",
            0,
            "review.completed",
            json!({"verdict": "comment", "missing": ["performance"]}),
        );
        let approved = child(&report, "editor", 0, "review.approved", json!({}));
        b.extend([deadline, report, approved]);

        let comparison = compare(&trace(&a), &trace(&b));
        let report_path = format!(
            "{PLANNED} > review.specialist.completed [performance] > review.completed [aggregator]"
        );
        assert_eq!(
            comparison.differences,
            vec![
                Difference::OnlyInA(format!("{PLANNED} > review.finding [performance]")),
                Difference::OnlyInA(format!("{PLANNED} > review.finding [performance] #2")),
                Difference::OnlyInA(format!(
                    "{PLANNED} > review.specialist.completed [performance]"
                )),
                Difference::Payload {
                    path: report_path.clone(),
                    a: Data::Json(json!({"verdict": "comment"})),
                    b: Data::Json(json!({"verdict": "comment", "missing": ["performance"]})),
                },
                Difference::OnlyInB(format!("{PLANNED} > review.deadline [aggregator]")),
            ],
            "the report and its approval are matched; only what changed is named"
        );
    }

    #[test]
    fn an_event_moved_down_its_own_chain_is_a_difference() {
        let root = RootEvent::new(emit("a.requested", json!({})), "cli")
            .with_correlation_id("run")
            .into_event()
            .expect("root");
        let b_done = child(&root, "relay", 0, "b.done", json!({}));
        let under_b = child(&b_done, "worker", 0, "c.done", json!({}));
        let under_root = child(&root, "worker", 0, "c.done", json!({}));
        assert_eq!(
            compare(
                &trace(&[root.clone(), b_done.clone(), under_b]),
                &trace(&[root, b_done, under_root]),
            )
            .differences,
            vec![
                Difference::OnlyInA("a.requested [cli] > b.done [relay] > c.done [worker]".into()),
                Difference::OnlyInB("a.requested [cli] > c.done [worker]".into()),
            ],
            "the root caused b.done: not concurrent, so not a join"
        );
    }

    #[test]
    fn a_long_payload_is_shown_by_the_fields_that_differ() {
        let long = "x".repeat(200);
        let difference = Difference::Payload {
            path: "a.requested [cli]".into(),
            a: Data::Json(json!({"diff": long, "finding": {"title": "old", "line": 1}})),
            b: Data::Json(json!({"diff": long, "finding": {"title": "new"}, "files/n": 2})),
        };
        assert_eq!(
            difference.to_string(),
            "~ payload differs: a.requested [cli]\n    /files~1n\n      A (absent)\n      B 2\n    \
             /finding/line\n      A 1\n      B (absent)\n    /finding/title\n      A \"old\"\n      \
             B \"new\""
        );
        let short = Difference::Payload {
            path: "a.requested [cli]".into(),
            a: Data::Json(json!({"n": 1})),
            b: Data::Json(json!({"n": 2})),
        };
        assert_eq!(
            short.to_string(),
            "~ payload differs: a.requested [cli]\n    A {\"n\":1}\n    B {\"n\":2}"
        );
    }
}
