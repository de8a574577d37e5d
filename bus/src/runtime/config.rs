//! The runtime's settings, with documented defaults, and the retry backoff.

use std::time::Duration;

use crate::guard::GuardsConfig;
use crate::names::{Namespace, ValidationError};

/// How an agent's runtime behaves. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// The namespace whose events this agent handles. Default `events`.
    pub namespace: Namespace,
    /// Events handled at once by this process; events of one correlation are always handled
    /// one after another, in stream order. Default 16.
    pub concurrency: usize,
    /// Deliveries before a failing event is dead-lettered. Default 5.
    pub max_deliveries: u64,
    /// Delay before a failed event is redelivered. Default 1 s doubling to 60 s.
    pub backoff: Backoff,
    /// How long a silent process keeps the events it holds: a crashed agent's events come back
    /// after this. The runtime renews the lease of every event it holds (in-progress acks)
    /// while it works on it, so this does not bound how long a handler may run. Default 30 s.
    pub ack_wait: Duration,
    /// How long one handling may run; past it the handler is cancelled (its future dropped, so
    /// a call in flight is aborted) and the delivery counts as a failed attempt. Default
    /// 10 minutes: room for the LLM brain's default 4 calls of up to 60 s each and their waits.
    pub handler_timeout: Duration,
    /// Events fetched ahead of the free workers, so a worker that finishes finds the next event
    /// in hand. Kept small: what one copy holds, another copy cannot take. Default 16.
    pub batch: usize,
    /// Unacknowledged events the server lets all copies of this agent hold at once. Default 1024.
    pub max_ack_pending: i64,
    /// On shutdown, how long running handlers get to finish; then they are cancelled and their
    /// events handed back at once, for another copy. Default 30 s.
    pub shutdown_grace: Duration,
    /// Storm control: depth, cycle and budget limits, rate limits and the handler's breaker.
    pub guards: GuardsConfig,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (see [`crate::metrics`]). Default:
    /// nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A handling that emits nothing is recorded in the log (see [`crate::handling`]) when it
    /// failed, spent money, or took at least this long. Default 100 ms: a model call is always
    /// recorded, an event ignored in microseconds is not (it would double the stream's writes).
    pub record_handlings_over: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            namespace: Namespace::default(),
            concurrency: 16,
            max_deliveries: 5,
            backoff: Backoff::default(),
            ack_wait: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(600),
            batch: 16,
            max_ack_pending: 1024,
            shutdown_grace: Duration::from_secs(30),
            guards: GuardsConfig::default(),
            metrics_listen: None,
            record_handlings_over: Duration::from_millis(100),
        }
    }
}

impl RuntimeConfig {
    /// Refuses settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.concurrency == 0 {
            return Err(ValidationError::new("concurrency", "must be at least 1"));
        }
        if self.max_deliveries == 0 {
            return Err(ValidationError::new("max_deliveries", "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(ValidationError::new("batch", "must be at least 1"));
        }
        if self.max_ack_pending < 1 {
            return Err(ValidationError::new(
                "max_ack_pending",
                "must be at least 1",
            ));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(ValidationError::new(
                "ack_wait",
                "must be at least 1 second",
            ));
        }
        if self.handler_timeout.is_zero() {
            return Err(ValidationError::new(
                "handler_timeout",
                "must be above zero",
            ));
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return Err(ValidationError::new(
                "backoff",
                "initial must be above zero and max at least initial",
            ));
        }
        self.guards.validate()
    }
}

/// Exponential backoff between redeliveries of a failing event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Growth per further failure.
    pub multiplier: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2,
        }
    }
}

impl Backoff {
    /// The delay before the next delivery, after the `delivered`-th delivery failed.
    pub fn delay(&self, delivered: u64) -> Duration {
        let exponent = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
        let factor = self.multiplier.max(1).saturating_pow(exponent);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            multiplier: 2,
        };
        let delays: Vec<_> = (1..=5).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(backoff.delay(u64::MAX), Duration::from_millis(500));
    }

    #[test]
    fn impossible_settings_are_refused_by_name() {
        let zero = RuntimeConfig {
            concurrency: 0,
            ..RuntimeConfig::default()
        };
        assert_eq!(zero.validate().expect_err("zero").field, "concurrency");
        assert!(RuntimeConfig::default().validate().is_ok());
    }
}
