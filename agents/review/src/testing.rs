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
    }
}
