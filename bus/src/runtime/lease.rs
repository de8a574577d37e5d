//! Leases: the deliveries this process holds, kept from being redelivered while it works on
//! them.
//!
//! JetStream redelivers an event that is not acknowledged within the consumer's `ack_wait`. A
//! handler that calls a language model may run for minutes, so without a lease the server would
//! hand the same event to another copy (or this one) while the first handling is still running,
//! and the model would be called, and paid, again. Every delivery the runtime takes is
//! registered here the moment it arrives, and one keeper task sends an in-progress
//! acknowledgement (`+WPI`) for each registered delivery a few times per `ack_wait`. So
//! `ack_wait` measures how fast a *dead* process is noticed, not how long a handler may take.
//!
//! One task for all deliveries, not one per delivery: with fast handlers most deliveries are
//! settled before the first renewal is due, and cost a map insert and remove.
//!
//! A [`Lease`] ends when it is dropped, which the settling code does right before it acks,
//! NAKs or terminates; a renewal already on its way may still reach the server after a NAK,
//! where it only postpones that redelivery by at most `ack_wait`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::Subject;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How many renewals are sent per `ack_wait`: enough that one lost renewal does not lose the
/// lease.
const RENEWALS_PER_ACK_WAIT: u32 = 3;

/// The deliveries this process holds, and when each was last renewed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Leases {
    held: Arc<Mutex<Held>>,
    released: Arc<Notify>,
    /// How many are held, for the metrics.
    counted: Gauge,
}

#[derive(Debug, Default)]
struct Held {
    next_key: u64,
    by_key: HashMap<u64, Holding>,
}

#[derive(Debug)]
struct Holding {
    reply: Subject,
    renewed: Instant,
}

/// One held delivery; the lease ends when this is dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    leases: Leases,
    key: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.lock().by_key.remove(&self.key);
        self.leases.counted.dec();
        self.leases.released.notify_one();
    }
}

impl Leases {
    /// Leases that keep `gauge` at the number held.
    pub fn counted_in(gauge: Gauge) -> Leases {
        Leases {
            counted: gauge,
            ..Leases::default()
        }
    }

    /// Holds the delivery whose acknowledgements go to `reply`, from now until the returned
    /// lease is dropped.
    pub fn hold(&self, reply: Subject) -> Lease {
        self.counted.inc();
        let mut held = self.lock();
        held.next_key = held.next_key.wrapping_add(1);
        let key = held.next_key;
        held.by_key.insert(
            key,
            Holding {
                reply,
                renewed: Instant::now(),
            },
        );
        Lease {
            leases: self.clone(),
            key,
        }
    }

    /// Completes when a lease has ended since the last call (or ends now).
    pub async fn released(&self) {
        self.released.notified().await;
    }

    /// How many deliveries are held.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// The deliveries not renewed for `every` as of `now`, marked renewed.
    fn due(&self, now: Instant, every: Duration) -> Vec<Subject> {
        let mut held = self.lock();
        held.by_key
            .values_mut()
            .filter(|holding| now.duration_since(holding.renewed) >= every)
            .map(|holding| {
                holding.renewed = now;
                holding.reply.clone()
            })
            .collect()
    }

    /// Renews every held delivery until dropped; run it as a task beside the runtime.
    pub async fn keep(self, client: async_nats::Client, ack_wait: Duration) {
        let every = renewal_period(ack_wait);
        let mut tick = tokio::time::interval(every / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = tick.tick().await;
            for reply in self.due(now, every) {
                // A lost renewal is covered by the next one; a lost lease means a redelivery
                // whose children, if any were stored, make it a handled redelivery.
                if let Err(err) = client.publish(reply, IN_PROGRESS.into()).await {
                    tracing::debug!(error = %err, "could not renew a lease");
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// JetStream's in-progress acknowledgement: "still working on it, restart the ack timer".
const IN_PROGRESS: &[u8] = b"+WPI";

/// How long a delivery may go unrenewed.
pub(crate) fn renewal_period(ack_wait: Duration) -> Duration {
    (ack_wait / RENEWALS_PER_ACK_WAIT).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_held_delivery_is_renewed_each_period_until_dropped() {
        let leases = Leases::default();
        let every = renewal_period(Duration::from_secs(30));
        assert_eq!(every, Duration::from_secs(10));
        let lease = leases.hold("$JS.ACK.a".into());
        let start = Instant::now();
        assert!(leases.due(start, every).is_empty(), "new leases are fresh");
        assert!(leases.due(start + every / 2, every).is_empty());
        assert_eq!(
            leases.due(start + every, every),
            vec![Subject::from("$JS.ACK.a")]
        );
        assert!(
            leases.due(start + every, every).is_empty(),
            "renewed, so not due again at once"
        );
        assert_eq!(leases.due(start + every * 2, every).len(), 1);
        drop(lease);
        assert_eq!(leases.len(), 0);
        assert!(leases.due(start + every * 10, every).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn each_delivery_has_its_own_clock() {
        let leases = Leases::default();
        let every = Duration::from_secs(1);
        let _old = leases.hold("old".into());
        tokio::time::advance(Duration::from_millis(600)).await;
        let _new = leases.hold("new".into());
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(
            leases.due(Instant::now(), every),
            vec![Subject::from("old")]
        );
    }

    #[test]
    fn the_renewal_period_stays_well_inside_ack_wait() {
        assert_eq!(
            renewal_period(Duration::from_secs(1)),
            Duration::from_secs(1) / 3
        );
        assert_eq!(
            renewal_period(Duration::from_millis(150)),
            Duration::from_millis(100)
        );
    }
}
