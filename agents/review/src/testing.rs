//! Delivered events for the agents' unit tests: a root, and children stamped by an agent, as
//! the runtime would hand them over. No NATS involved.

use choreo_bus::envelope::stamp_child;
use choreo_bus::{AgentName, Emit, Event, EventType, Incoming, RootEvent};

/// A root event of `event_type` with `payload` as JSON, as delivered the first time.
///
/// # Panics
/// On an invalid type: test input is ours.
#[allow(clippy::expect_used)]
pub fn root(event_type: &str, payload: &impl serde::Serialize) -> Incoming {
    let emit =
        Emit::json(EventType::new(event_type).expect("valid type"), payload).expect("serializes");
    delivered(
        RootEvent::new(emit, "test")
            .into_event()
            .expect("valid root"),
    )
}

/// A child of `parent` emitted by `agent`, as delivered the first time.
///
/// # Panics
/// On an invalid agent name: test input is ours.
#[allow(clippy::expect_used)]
pub fn child(parent: &Event, agent: &str, emit: Emit) -> Incoming {
    let agent = AgentName::new(agent).expect("valid agent name");
    delivered(stamp_child(parent, &agent, 0, emit))
}

fn delivered(event: Event) -> Incoming {
    Incoming {
        event,
        delivery: 1,
        stream_sequence: 1,
        budget: None,
        spend: choreo_bus::handling::SpendMeter::default(),
    }
}

/// The diff of a new file at `path` made of `lines`, parsed.
///
/// # Panics
/// If the result does not parse: test input is ours.
#[allow(clippy::expect_used)]
pub fn diff_adding(path: &str, lines: &[&str]) -> crate::Diff {
    crate::Diff::parse(&diff_text_adding(path, lines)).expect("a valid diff")
}

/// The text of a diff that creates `path` with `lines`.
pub fn diff_text_adding(path: &str, lines: &[&str]) -> String {
    let mut text = format!(
        "--- a/{path}\n+++ b/{path}\n@@ -0,0 +1,{} @@\n",
        lines.len()
    );
    for line in lines {
        text.push('+');
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A report with nothing found, for tests to adjust.
pub fn clean_report() -> crate::Report {
    crate::Report {
        repository: "acme/shop".into(),
        title: "Add refunds".into(),
        author: "ada".into(),
        url: "https://github.com/acme/shop/pull/42".into(),
        round: 1,
        verdict: crate::report::Verdict::Clean,
        summary: "Nothing to fix.".into(),
        counts: Default::default(),
        findings: vec![],
        specialists: vec![],
        skipped: vec![],
        missing: vec![],
        tokens: 0,
    }
}
