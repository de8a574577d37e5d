//! Storm control: the guards the runtime puts around every handled event.
//!
//! In a choreography nobody is in charge, so the bus itself stops A → B → A → … from running
//! forever, a flood of outside events from drowning an agent, and a dead dependency from
//! turning every event into a failure. Each guard lives in its own file:
//!
//! | guard | where | when it trips |
//! |---|---|---|
//! | [`CycleLimit`] | before the handler | the agent would handle the same type more than K times along one causation chain: dead letter `cycle_detected` |
//! | [`RateLimiter`] (handling) | before the handler | never trips: waits, so the work stays in the stream |
//! | [`CircuitBreaker`] (handler) | around the handler | open: the agent stops pulling and hands events back with a delay |
//! | [`DepthLimit`] | before publishing | children would pass the depth limit: dead letter `depth_exceeded` |
//! | [`CorrelationBudget`] | before publishing | the run has emitted its events or spent its tokens: dead letter `budget_exhausted` |
//! | [`RateLimiter`] (per emitted type) | before publishing | never trips: waits |
//!
//! A guard that stops a run dead-letters the *input* with the reason, so the log says which
//! guard stopped it and why, and `choreo dlq redrive` can resume the run after a fix. The
//! reusable [`CircuitBreaker`] also wraps an agent's outbound calls (an LLM endpoint, a
//! webhook); see [`crate::Handler::breakers`].

pub mod breaker;
pub mod budget;
mod cycle;
mod depth;
mod rate;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use breaker::{
    BreakerConfig, BreakerError, BreakerOpen, BreakerState, CircuitBreaker, Permit, Transition,
};
pub use budget::{
    BudgetError, BudgetKind, BudgetLimits, BudgetUsage, CorrelationBudget, RunBudget,
};
pub use cycle::CycleLimit;
pub use depth::DepthLimit;
pub use rate::{Rate, RateLimit, RateLimiter};

use crate::dead_letter::DeadLetterReason;
use crate::names::{EventType, ValidationError};
use crate::runtime::HandlerErrorKind;

/// A guard stopped a run: the input is dead-lettered with this reason and detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Stop {
    pub reason: DeadLetterReason,
    pub detail: String,
}

/// Which guards an agent runs, and their settings. `Default` gives the documented defaults:
/// depth 32, 5 visits per chain, 1000 events and 500 000 tokens per run, a handler breaker
/// (50 % of at least 10 calls in 30 s opens it for 30 s, 1 probe; rejected input does not
/// count), and no rate limits.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardsConfig {
    pub depth: Option<DepthLimit>,
    pub cycle: Option<CycleLimit>,
    pub budget: BudgetLimits,
    /// Pace of handling, shared by every concurrent handler of the process.
    pub handle_rate: Option<RateLimit>,
    /// Pace of publishing, per emitted type, shared by the process.
    pub publish_rates: BTreeMap<EventType, RateLimit>,
    /// The breaker around the handler.
    pub breaker: Option<BreakerConfig>,
    /// Handler error kinds the handler's breaker does not count.
    pub breaker_ignores: BTreeSet<HandlerErrorKind>,
}

impl Default for GuardsConfig {
    fn default() -> Self {
        GuardsConfig {
            depth: Some(DepthLimit::default()),
            cycle: Some(CycleLimit::default()),
            budget: BudgetLimits::default(),
            handle_rate: None,
            publish_rates: BTreeMap::new(),
            breaker: Some(BreakerConfig::default()),
            breaker_ignores: BTreeSet::from([
                HandlerErrorKind::Permanent,
                HandlerErrorKind::OverBudget,
            ]),
        }
    }
}

impl GuardsConfig {
    /// No guards at all: for measuring what they cost, never for running agents.
    pub fn off() -> Self {
        GuardsConfig {
            depth: None,
            cycle: None,
            budget: BudgetLimits {
                max_events: None,
                max_tokens: None,
                max_cost_micros: None,
            },
            handle_rate: None,
            publish_rates: BTreeMap::new(),
            breaker: None,
            breaker_ignores: BTreeSet::new(),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.depth.is_some_and(|d| d.max == 0) {
            return Err(ValidationError::new(
                "max-depth",
                "must be at least 1 (or off)",
            ));
        }
        if self.cycle.is_some_and(|c| c.max_visits == 0) {
            return Err(ValidationError::new(
                "max-visits",
                "must be at least 1 (or off)",
            ));
        }
        if self.budget.max_events == Some(0) {
            return Err(ValidationError::new(
                "max-events",
                "must be at least 1 (or off)",
            ));
        }
        if self.budget.max_tokens == Some(0) {
            return Err(ValidationError::new(
                "max-tokens",
                "must be at least 1 (or off)",
            ));
        }
        let rates = self.handle_rate.iter().chain(self.publish_rates.values());
        if rates.into_iter().any(|limit| limit.burst == 0) {
            return Err(ValidationError::new("burst", "must be at least 1"));
        }
        if let Some(breaker) = &self.breaker {
            breaker.validate()?;
        }
        Ok(())
    }
}

/// The guards of one running agent, built from its [`GuardsConfig`].
#[derive(Debug)]
pub(crate) struct Guards {
    pub depth: Option<DepthLimit>,
    pub cycle: Option<CycleLimit>,
    pub budget: Option<CorrelationBudget>,
    pub handle_rate: Option<RateLimiter>,
    pub publish_rates: HashMap<EventType, RateLimiter>,
    pub breaker: Option<CircuitBreaker>,
    pub breaker_ignores: BTreeSet<HandlerErrorKind>,
}

impl Guards {
    pub fn new(
        config: &GuardsConfig,
        budget: Option<CorrelationBudget>,
        breaker_name: &str,
    ) -> Result<Self, ValidationError> {
        Ok(Guards {
            depth: config.depth,
            cycle: config.cycle,
            budget,
            handle_rate: config.handle_rate.map(RateLimiter::new).transpose()?,
            publish_rates: config
                .publish_rates
                .iter()
                .map(|(t, limit)| Ok((t.clone(), RateLimiter::new(*limit)?)))
                .collect::<Result<_, ValidationError>>()?,
            breaker: config
                .breaker
                .map(|c| CircuitBreaker::new(breaker_name, c))
                .transpose()?,
            breaker_ignores: config.breaker_ignores.clone(),
        })
    }
}

impl DeadLetterReason {
    /// The guard behind a storm-control reason, for reports.
    pub fn guard(self) -> Option<&'static str> {
        match self {
            DeadLetterReason::DepthExceeded => Some("depth"),
            DeadLetterReason::BudgetExhausted => Some("budget"),
            DeadLetterReason::CycleDetected => Some("cycle"),
            _ => None,
        }
    }
}
