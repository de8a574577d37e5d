//! `choreo diff RUN_A RUN_B`: two runs' trees compared event by event.
//!
//! Events are matched by their place in the tree, not by id: the path of (type, source) from
//! the root, and among siblings of the same type and source, their order. So a run copied into
//! a sandbox and run again by a new build lines up with the original wherever it behaved the
//! same, and every difference (an event missing, an extra one, another payload) is named.

use std::collections::BTreeMap;

use choreo_bus::Namespace;
use choreo_bus::cloudevents;
use choreo_bus::trace::RunTrace;

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

/// What differs between two runs, in tree order of the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    OnlyInA(String),
    OnlyInB(String),
    Payload { path: String, a: String, b: String },
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
    let differences = compare(&a, &b);
    println!(
        "A = {ns_a}/{run_a} ({} events)   B = {ns_b}/{run_b} ({} events)",
        a.len(),
        b.len()
    );
    if differences.is_empty() {
        println!("same tree: every event matches in type, source and payload");
        return Ok(());
    }
    for difference in &differences {
        match difference {
            Difference::OnlyInA(path) => println!("- only in A: {path}"),
            Difference::OnlyInB(path) => println!("+ only in B: {path}"),
            Difference::Payload { path, a, b } => {
                println!("~ payload differs: {path}\n    A {a}\n    B {b}");
            }
        }
    }
    Err(Failure::failed(format!(
        "the runs differ in {} place(s)",
        differences.len()
    )))
}

/// `NAMESPACE/CORRELATION` or `CORRELATION`.
fn parse_run(value: &str, default: &Namespace) -> Result<(Namespace, String), Failure> {
    let (namespace, correlation) = match value.split_once('/') {
        Some((ns, correlation)) => (Namespace::new(ns).map_err(Failure::usage)?, correlation),
        None => (default.clone(), value),
    };
    choreo_bus::names::validate_id("correlation", correlation).map_err(Failure::usage)?;
    Ok((namespace, correlation.to_string()))
}

/// Each event's path in the tree, with its payload as text.
fn paths(trace: &RunTrace) -> BTreeMap<String, (usize, String)> {
    let mut out = BTreeMap::new();
    let mut path_of: Vec<String> = vec![String::new(); trace.nodes.len()];
    let mut walk_order = 0usize;
    let mut assign = |siblings: &[usize],
                      prefix: &str,
                      out: &mut BTreeMap<String, (usize, String)>,
                      path_of: &mut Vec<String>| {
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for &index in siblings {
            let event = &trace.nodes[index].event;
            let n = seen
                .entry((event.r#type.clone(), event.source.clone()))
                .or_default();
            *n += 1;
            let step = if *n == 1 {
                format!("{} [{}]", event.r#type, event.source)
            } else {
                format!("{} [{}] #{n}", event.r#type, event.source)
            };
            let path = if prefix.is_empty() {
                step
            } else {
                format!("{prefix} > {step}")
            };
            let payload = cloudevents::data_as_json(event)
                .map(|v| v.to_string())
                .unwrap_or_else(|| format!("{:?}", event.data));
            out.insert(path.clone(), (walk_order, payload));
            walk_order += 1;
            path_of[index] = path;
        }
    };
    assign(&trace.roots, "", &mut out, &mut path_of);
    for (index, _) in trace.walk() {
        let prefix = path_of[index].clone();
        assign(
            &trace.nodes[index].children,
            &prefix,
            &mut out,
            &mut path_of,
        );
    }
    out
}

/// The differences between two traces.
pub fn compare(a: &RunTrace, b: &RunTrace) -> Vec<Difference> {
    let (a, b) = (paths(a), paths(b));
    let mut differences = Vec::new();
    for (path, (_, payload_a)) in &a {
        match b.get(path) {
            None => differences.push(Difference::OnlyInA(path.clone())),
            Some((_, payload_b)) if payload_a != payload_b => {
                differences.push(Difference::Payload {
                    path: path.clone(),
                    a: payload_a.clone(),
                    b: payload_b.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for path in b.keys().filter(|path| !a.contains_key(*path)) {
        differences.push(Difference::OnlyInB(path.clone()));
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_bus::envelope::stamp_child;
    use choreo_bus::log::LogRecord;
    use choreo_bus::names::{AgentName, EventType};
    use choreo_bus::{Emit, Event, RootEvent};

    fn emit(event_type: &str, n: i64) -> Emit {
        Emit::json(
            EventType::new(event_type).expect("type"),
            &serde_json::json!({"n": n}),
        )
        .expect("json")
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

    #[test]
    fn runs_are_matched_by_place_in_the_tree() {
        let root = RootEvent::new(emit("a.requested", 0), "cli")
            .with_correlation_id("run")
            .into_event()
            .expect("root");
        let agent = AgentName::new("worker").expect("name");
        let same = [
            root.clone(),
            stamp_child(&root, &agent, 0, emit("b.done", 1)),
        ];
        assert!(compare(&trace(&same), &trace(&same)).is_empty());

        let changed = [
            root.clone(),
            stamp_child(&root, &agent, 0, emit("b.done", 2)),
            stamp_child(&root, &agent, 1, emit("c.extra", 0)),
        ];
        assert_eq!(
            compare(&trace(&same), &trace(&changed)),
            vec![
                Difference::Payload {
                    path: "a.requested [cli] > b.done [worker]".into(),
                    a: r#"{"n":1}"#.into(),
                    b: r#"{"n":2}"#.into(),
                },
                Difference::OnlyInB("a.requested [cli] > c.extra [worker]".into()),
            ]
        );
    }
}
