//! `choreo diff` end to end: review runs published by hand into a real nats-server, as a run
//! and its replays into sandboxes would leave them, compared by the binary.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::Output;

use choreo_bus::envelope::stamp_child;
use choreo_bus::names::{AgentName, EventType};
use choreo_bus::{Emit, Event, Namespace, Publisher, RootEvent, StreamsConfig, ensure_streams};
use choreo_testkit::Bus;
use serde_json::{Value, json};

fn emit(event_type: &str, data: Value) -> Emit {
    Emit::json(EventType::new(event_type).expect("type"), &data).expect("json")
}

fn child(parent: &Event, agent: &str, index: usize, event_type: &str, data: Value) -> Event {
    let agent = AgentName::new(agent).expect("name");
    stamp_child(parent, &agent, index, emit(event_type, data))
}

/// One run of the review team as the log keeps it: the specialists answer in `arrivals` order,
/// each publishing `findings(specialist)`, and the aggregator's report hangs under the last
/// completion, the one that completed its join.
fn review(root: &Event, arrivals: &[&str], findings: impl Fn(&str) -> Vec<Value>) -> Vec<Event> {
    let planned = child(
        root,
        "triage",
        0,
        "review.planned",
        json!({"specialists": ["security", "performance"]}),
    );
    let mut events = vec![root.clone(), planned.clone()];
    for specialist in arrivals {
        let found = findings(specialist);
        let completed = child(
            &planned,
            specialist,
            found.len(),
            "review.specialist.completed",
            json!({"specialist": specialist, "findings": found.len()}),
        );
        for (i, finding) in found.into_iter().enumerate() {
            events.push(child(&planned, specialist, i, "review.finding", finding));
        }
        events.push(completed);
    }
    let last = events.last().expect("a completion").clone();
    let report = child(
        &last,
        "aggregator",
        0,
        "review.completed",
        json!({"verdict": "comment"}),
    );
    let approved = child(&report, "editor", 0, "review.approved", json!({}));
    events.extend([report, approved]);
    events
}

fn findings(specialist: &str) -> Vec<Value> {
    vec![
        json!({"specialist": specialist, "title": "key in code", "line": 3}),
        json!({"specialist": specialist, "title": "query in a loop", "line": 9}),
    ]
}

/// Stores `events` in `namespace`'s stream, each confirmed, so a read that starts afterwards
/// finds them all.
async fn store(bus: &Bus, namespace: &str, events: &[Event]) -> anyhow::Result<()> {
    let namespace = Namespace::new(namespace)?;
    ensure_streams(
        &bus.jetstream,
        &StreamsConfig {
            namespace: namespace.clone(),
            ..StreamsConfig::default()
        },
    )
    .await?;
    let publisher = Publisher::new(bus.jetstream.clone(), namespace);
    for event in events {
        publisher.send_event(event).await?.confirmed().await?;
    }
    Ok(())
}

/// A replayed root, as `choreo replay --into` copies it: same id, same payload, `replayof`.
fn replayed(root: &Event) -> Event {
    let mut copy = root.clone();
    copy.attributes.insert(
        "replayof".into(),
        format!("events/{}/{}", root.correlation_id, root.id),
    );
    copy
}

async fn choreo_diff(bus: &Bus, a: &str, b: &str) -> anyhow::Result<Output> {
    choreo_testkit::cli::choreo(&bus.server.url(), &["diff", a, b]).await
}

/// The lines that name a difference.
fn difference_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with(['-', '+', '~']))
        .map(str::to_string)
        .collect()
}

fn explain(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn diff_ignores_arrival_order_and_names_exactly_a_changed_finding() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let root = RootEvent::new(emit("review.requested", json!({"diff": "+key = 1"})), "cli")
        .with_correlation_id("pr-7")
        .into_event()?;
    store(
        &bus,
        "events",
        &review(&root, &["security", "performance"], findings),
    )
    .await?;
    // The same builds again: performance answered first this time, so the report hangs under
    // security's completion, and each specialist's findings were stored in another order.
    let reordered = review(
        &replayed(&root),
        &["performance", "security"],
        |specialist| {
            let mut found = findings(specialist);
            found.reverse();
            found
        },
    );
    store(&bus, "lab", &reordered).await?;
    // A new security build that words its second finding differently (and another order).
    let changed = review(
        &replayed(&root),
        &["performance", "security"],
        |specialist| {
            let mut found = findings(specialist);
            if specialist == "security" {
                found[1]["title"] = json!("queries in a loop");
            }
            found
        },
    );
    store(&bus, "changed", &changed).await?;

    let same = choreo_diff(&bus, "pr-7", "lab/pr-7").await?;
    assert_eq!(same.status.code(), Some(0), "{}", explain(&same));
    let text = String::from_utf8_lossy(&same.stdout);
    assert!(text.contains("same tree: "), "{text}");
    assert!(
        text.contains(
            "A after review.specialist.completed [performance], B after \
             review.specialist.completed [security]"
        ),
        "the join's other trigger is a note: {text}"
    );
    assert_eq!(difference_lines(&same), Vec::<String>::new(), "{text}");

    let differ = choreo_diff(&bus, "pr-7", "changed/pr-7").await?;
    assert_eq!(differ.status.code(), Some(1), "{}", explain(&differ));
    assert_eq!(
        difference_lines(&differ),
        vec![
            "~ payload differs: review.requested [cli] > review.planned [triage] > \
             review.finding [security] #2"
                .to_string()
        ],
        "{}",
        explain(&differ)
    );
    let text = String::from_utf8_lossy(&differ.stdout);
    assert!(
        text.contains(r#""title":"query in a loop""#)
            && text.contains(r#""title":"queries in a loop""#),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&differ.stderr).contains("the runs differ in 1 place(s)"),
        "{}",
        explain(&differ)
    );
    Ok(())
}
