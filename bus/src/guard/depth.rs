//! The depth limit: how many hops a run may go from its root.

use choreo_proto::v1::Event;

use super::Stop;
use crate::dead_letter::DeadLetterReason;

/// Children deeper than `max` are not published. Default 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthLimit {
    pub max: u32,
}

impl Default for DepthLimit {
    fn default() -> Self {
        DepthLimit { max: 32 }
    }
}

impl DepthLimit {
    /// Whether the children of `parent` may be published.
    pub fn check_children(&self, parent: &Event) -> Result<(), Stop> {
        let child_depth = parent.depth.saturating_add(1);
        if child_depth <= self.max {
            return Ok(());
        }
        Err(Stop {
            reason: DeadLetterReason::DepthExceeded,
            detail: format!(
                "event {} is at depth {}; its children would be at depth {child_depth}, past the \
                 limit of {} hops from the root (raise --max-depth if the run is meant to go \
                 this deep)",
                parent.id, parent.depth, self.max
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_depth(depth: u32) -> Event {
        Event {
            id: "e".into(),
            depth,
            ..Event::default()
        }
    }

    #[test]
    fn children_may_reach_the_limit_but_not_pass_it() {
        let limit = DepthLimit { max: 3 };
        assert!(limit.check_children(&at_depth(2)).is_ok(), "children at 3");
        let stop = limit
            .check_children(&at_depth(3))
            .expect_err("children at 4");
        assert_eq!(stop.reason, DeadLetterReason::DepthExceeded);
        assert!(stop.detail.contains("depth 4"), "{}", stop.detail);
        assert!(limit.check_children(&at_depth(u32::MAX)).is_err());
    }
}
