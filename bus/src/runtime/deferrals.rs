//! Deliveries an event spent waiting on an open circuit breaker, so they are not counted as
//! attempts.
//!
//! JetStream counts every delivery, including those the runtime hands back untried because the
//! handler's breaker is open, and those whose failure the breaker blames on a dependency that is
//! down. Without this, a long outage would use up an event's deliveries and dead-letter it
//! although the event itself never failed. The count is kept per process: an event deferred by
//! one copy of an agent and then delivered to another is seen there with its full delivery
//! count, which can only make it be given up on sooner, never retried without end.

use dashmap::DashMap;

/// Above this many events remembered, the record starts over (an event then counts a few more
/// of its deliveries, which errs towards giving up, not towards retrying forever).
const REMEMBERED: usize = 65_536;

#[derive(Debug, Default)]
pub(crate) struct Deferrals {
    by_sequence: DashMap<u64, u64>,
}

impl Deferrals {
    /// This delivery of the event at `sequence` is handed back untried, or its failure is the
    /// dependency's.
    pub fn record(&self, sequence: u64) {
        if self.by_sequence.len() >= REMEMBERED {
            self.by_sequence.clear();
        }
        *self.by_sequence.entry(sequence).or_insert(0) += 1;
    }

    /// Deliveries that were real attempts.
    pub fn attempts(&self, sequence: u64, delivered: u64) -> u64 {
        let deferred = self.by_sequence.get(&sequence).map_or(0, |d| *d);
        delivered.saturating_sub(deferred).max(1)
    }

    /// The event is settled (acked or terminated): nothing more to remember.
    pub fn forget(&self, sequence: u64) {
        self.by_sequence.remove(&sequence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_deliveries_are_not_attempts() {
        let deferrals = Deferrals::default();
        assert_eq!(deferrals.attempts(7, 3), 3);
        deferrals.record(7);
        deferrals.record(7);
        assert_eq!(deferrals.attempts(7, 3), 1);
        assert_eq!(deferrals.attempts(8, 3), 3, "other events are unaffected");
        deferrals.forget(7);
        assert_eq!(deferrals.attempts(7, 3), 3);
    }
}
