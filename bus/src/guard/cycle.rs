//! Cycle detection: an agent handling the same event type again and again along one causation
//! chain (A → B → A → B …) is a loop, whatever the depth limit allows.
//!
//! Visits are counted along the chain, from the counts each event carries
//! ([`Event::chain_visits`]), not across the whole correlation: an aggregator that joins twenty
//! findings of one type handles that type twenty times in the run, but once on each chain, and
//! that is not a cycle. Counting on the chain also needs no shared state, so it costs nothing
//! and holds across every copy of every agent.

use choreo_proto::v1::Event;

use super::Stop;
use crate::dead_letter::DeadLetterReason;
use crate::envelope::prior_visits;
use crate::names::AgentName;

/// An agent may handle one event type at most `max_visits` times along a chain. Default 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleLimit {
    pub max_visits: u32,
}

impl Default for CycleLimit {
    fn default() -> Self {
        CycleLimit { max_visits: 5 }
    }
}

impl CycleLimit {
    /// Whether `agent` may handle `event`; checked before the handler runs, so a loop costs
    /// no further handler call (or LLM tokens).
    pub fn check(&self, agent: &AgentName, event: &Event) -> Result<(), Stop> {
        let visit = prior_visits(event, agent).saturating_add(1);
        if visit <= self.max_visits {
            return Ok(());
        }
        Err(Stop {
            reason: DeadLetterReason::CycleDetected,
            detail: format!(
                "agent {agent} would handle {} for the {} time along this causation chain \
                 (last from {}, depth {}); the limit is {} (--max-visits): the agents are \
                 answering each other in a loop",
                event.r#type,
                ordinal(visit),
                event.source,
                event.depth,
                self.max_visits
            ),
        })
    }
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Emit, RootEvent, stamp_child};
    use crate::names::EventType;

    #[test]
    fn a_ping_pong_loop_is_stopped_at_the_limit() {
        let limit = CycleLimit { max_visits: 2 };
        let (ping, pong) = (
            AgentName::new("ping").expect("valid"),
            AgentName::new("pong").expect("valid"),
        );
        let emit = |t: &str| Emit::json(EventType::new(t).expect("type"), &()).expect("json");
        let mut event = RootEvent::new(emit("ball.served"), "test")
            .into_event()
            .expect("root");
        // pong answers ball.served with ball.returned; ping answers that with ball.served.
        let mut handled = 0;
        loop {
            let (agent, answer) = if event.r#type == "ball.served" {
                (&pong, "ball.returned")
            } else {
                (&ping, "ball.served")
            };
            if let Err(stop) = limit.check(agent, &event) {
                assert_eq!(stop.reason, DeadLetterReason::CycleDetected);
                assert!(stop.detail.contains("3rd time"), "{}", stop.detail);
                break;
            }
            handled += 1;
            event = stamp_child(&event, agent, 0, emit(answer));
        }
        assert_eq!(handled, 4, "each agent handles its type twice");
    }

    #[test]
    fn ordinals_read_well() {
        let shown: Vec<_> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101].map(ordinal).to_vec();
        assert_eq!(
            shown,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"
            ]
        );
    }
}
