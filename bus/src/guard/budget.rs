//! Per-correlation budgets shared by every agent and every copy: a maximum number of events an
//! agent may emit in one run, a maximum of LLM tokens spent in it, and a maximum cost.
//!
//! # How it is shared
//!
//! Each run has up to three JetStream counters in the `BUDGETS` stream (nats-server 2.12
//! counters, ADR-49): `budget.<ns>.<correlation>.events`, `.tokens` and `.cost` (in millionths
//! of the price's unit, so a whole number). An increment is one request; the
//! server adds atomically and answers with the new total, so there is no read-modify-write race
//! between processes and no compare-and-set retry loop.
//!
//! Charging a counter for every event would add a JetStream write to every publish. Instead a
//! process takes the event budget in *grants* (1, then 2, 4, … up to 1/32 of the budget, at most
//! 64) and spends them locally. Grants are disjoint ranges of the counter, so the events
//! published in a run never pass `max_events`, however many processes share it. The price is
//! that a run can stop a little early: grant left unspent in one process is not available to
//! another (at most one grant per process, so a few events).
//!
//! Tokens and cost are charged as they are reported, since they are already spent. The charge
//! that passes `max_tokens` or `max_cost` is refused, and the run's event counter is closed
//! too, so every agent's publishing in the run stops, not only that of the agents that spend.
//!
//! A redelivered input that was charged before a crash is charged again: the count errs on the
//! side of stopping.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use dashmap::DashMap;
use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::names::Namespace;
use crate::streams::{BUDGET_PREFIX, BUDGET_STREAM};

/// The limits of one run. `None` leaves that measure unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Events agents may emit in one correlation (the root is not counted). Default 1000.
    pub max_events: Option<u64>,
    /// LLM tokens reported by the events of one correlation. Default 500 000.
    pub max_tokens: Option<u64>,
    /// What the model calls of one correlation may cost, in millionths of the price's unit
    /// (`CHOREO_LLM_PRICE`). Default unlimited.
    pub max_cost_micros: Option<u64>,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        BudgetLimits {
            max_events: Some(1000),
            max_tokens: Some(500_000),
            max_cost_micros: None,
        }
    }
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetKind {
    Events,
    Tokens,
    /// In millionths of the price's unit.
    Cost,
}

impl BudgetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetKind::Events => "events",
            BudgetKind::Tokens => "tokens",
            BudgetKind::Cost => "cost",
        }
    }

    /// A counter's value as people read it: cost in the price's unit, the rest as counted.
    pub fn amount(self, value: u64) -> String {
        match self {
            BudgetKind::Cost => format!("{:.6}", value as f64 / 1e6),
            _ => value.to_string(),
        }
    }

    fn setting(self) -> &'static str {
        match self {
            BudgetKind::Events => "max-events",
            BudgetKind::Tokens => "max-tokens",
            BudgetKind::Cost => "max-cost",
        }
    }
}

/// Why a charge was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The run has used its budget: its publishing stops. Retrying cannot help.
    #[error(
        "run {correlation} has used its {} budget ({} of {}); its publishing has \
         stopped (raise --{} if the run is meant to be this big)",
        kind.as_str(), kind.amount(*used), kind.amount(*limit), kind.setting()
    )]
    Exhausted {
        kind: BudgetKind,
        correlation: String,
        used: u64,
        limit: u64,
    },
    /// The counter could not be reached. Retrying may help.
    #[error("budget counter {subject} unavailable: {detail}")]
    Unavailable { subject: String, detail: String },
}

impl BudgetError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, BudgetError::Unavailable { .. })
    }
}

/// A run's counters as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetUsage {
    pub events: u64,
    pub tokens: u64,
    /// In millionths of the price's unit.
    pub cost_micros: u64,
}

/// One run's budget, handed to its handlers ([`crate::Incoming::budget`]) so that a handler
/// about to spend money can first ask what is left.
#[derive(Debug, Clone)]
pub struct RunBudget {
    budget: CorrelationBudget,
    correlation: String,
}

impl RunBudget {
    /// Tokens the run may still spend; `None` when its tokens are not limited.
    pub async fn tokens_left(&self) -> Result<Option<u64>, BudgetError> {
        let Some(limit) = self.budget.limits.max_tokens else {
            return Ok(None);
        };
        let used = self
            .budget
            .read(&self.correlation, BudgetKind::Tokens)
            .await?;
        Ok(Some(limit.saturating_sub(used)))
    }

    /// What the run may still spend, in millionths of the price's unit; `None` when its cost
    /// is not limited.
    pub async fn cost_left_micros(&self) -> Result<Option<u64>, BudgetError> {
        let Some(limit) = self.budget.limits.max_cost_micros else {
            return Ok(None);
        };
        let used = self
            .budget
            .read(&self.correlation, BudgetKind::Cost)
            .await?;
        Ok(Some(limit.saturating_sub(used)))
    }

    /// Charges tokens a handling spent but will not report on an event (its calls failed):
    /// the money is spent, so the run's budget counts it.
    pub async fn charge_spent_tokens(&self, tokens: u64) -> Result<(), BudgetError> {
        self.budget.charge(&self.correlation, 0, tokens).await
    }

    pub fn correlation(&self) -> &str {
        &self.correlation
    }
}

/// Two handles on the same run's budget under the same limits are equal.
impl PartialEq for RunBudget {
    fn eq(&self, other: &Self) -> bool {
        self.correlation == other.correlation && self.budget.limits == other.budget.limits
    }
}

/// Charges runs' budgets. One per process; clones share the grants.
#[derive(Debug, Clone)]
pub struct CorrelationBudget {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    namespace: Namespace,
    limits: BudgetLimits,
    grants: Arc<DashMap<String, Grant>>,
}

/// Event budget this process holds for one run.
#[derive(Debug)]
struct Grant {
    remaining: u64,
    next_size: u64,
    touched: Instant,
}

/// Above this many runs held, grants idle for [`GRANT_IDLE`] are forgotten (their remainder is
/// simply not spent).
const GRANTS_KEPT: usize = 4096;
const GRANT_IDLE: Duration = Duration::from_secs(60);
const MAX_GRANT: u64 = 64;

impl CorrelationBudget {
    pub fn new(client: async_nats::Client, namespace: Namespace, limits: BudgetLimits) -> Self {
        CorrelationBudget {
            jetstream: jetstream::new(client.clone()),
            client,
            namespace,
            limits,
            grants: Arc::new(DashMap::new()),
        }
    }

    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    /// The counter subject of one measure of one run.
    pub fn subject(namespace: &Namespace, correlation: &str, kind: BudgetKind) -> String {
        format!(
            "{BUDGET_PREFIX}.{namespace}.{correlation}.{}",
            kind.as_str()
        )
    }

    /// Charges `events` emitted events and `tokens` reported tokens to `correlation`; all or
    /// nothing: a refused charge publishes none of them.
    pub async fn charge(
        &self,
        correlation: &str,
        events: u64,
        tokens: u64,
    ) -> Result<(), BudgetError> {
        if tokens > 0
            && let Some(limit) = self.limits.max_tokens
        {
            let used = self.add(correlation, BudgetKind::Tokens, tokens).await?;
            if used > limit {
                self.close_events(correlation).await;
                return Err(self.exhausted(correlation, BudgetKind::Tokens, used, limit));
            }
        }
        if events > 0
            && let Some(limit) = self.limits.max_events
        {
            self.take_events(correlation, events, limit).await?;
        }
        Ok(())
    }

    /// Charges what a handling's model calls cost, in millionths. The charge that passes
    /// `max_cost` is refused and closes the run's events, as the token budget does.
    pub async fn charge_cost(&self, correlation: &str, micros: u64) -> Result<(), BudgetError> {
        if micros == 0 {
            return Ok(());
        }
        let Some(limit) = self.limits.max_cost_micros else {
            return Ok(());
        };
        let used = self.add(correlation, BudgetKind::Cost, micros).await?;
        if used > limit {
            self.close_events(correlation).await;
            return Err(self.exhausted(correlation, BudgetKind::Cost, used, limit));
        }
        Ok(())
    }

    /// The budget of one run, as a handler sees it.
    pub fn for_run(&self, correlation: &str) -> RunBudget {
        RunBudget {
            budget: self.clone(),
            correlation: correlation.to_string(),
        }
    }

    /// What a run has used, as the counters say.
    pub async fn usage(&self, correlation: &str) -> Result<BudgetUsage, BudgetError> {
        Ok(BudgetUsage {
            events: self.read(correlation, BudgetKind::Events).await?,
            tokens: self.read(correlation, BudgetKind::Tokens).await?,
            cost_micros: self.read(correlation, BudgetKind::Cost).await?,
        })
    }

    /// Refuses a run that has used its budget, without charging it: for a front door that
    /// should not accept a new event into a run whose publishing has stopped. A run never
    /// charged passes.
    pub async fn check(&self, correlation: &str) -> Result<(), BudgetError> {
        if let Some(limit) = self.limits.max_tokens {
            let tokens = self.read(correlation, BudgetKind::Tokens).await?;
            if tokens > limit {
                return Err(self.exhausted(correlation, BudgetKind::Tokens, tokens, limit));
            }
        }
        if let Some(limit) = self.limits.max_cost_micros {
            let cost = self.read(correlation, BudgetKind::Cost).await?;
            if cost > limit {
                return Err(self.exhausted(correlation, BudgetKind::Cost, cost, limit));
            }
        }
        if let Some(limit) = self.limits.max_events {
            let events = self.read(correlation, BudgetKind::Events).await?;
            if events >= limit {
                return Err(self.exhausted(correlation, BudgetKind::Events, limit, limit));
            }
        }
        Ok(())
    }

    async fn take_events(
        &self,
        correlation: &str,
        events: u64,
        limit: u64,
    ) -> Result<(), BudgetError> {
        let held = self.take_held(correlation, events);
        let needed = events - held;
        if needed == 0 {
            return Ok(());
        }
        let size = self
            .grants
            .get(correlation)
            .map_or(1, |grant| grant.next_size)
            .max(needed);
        let total = match self.add(correlation, BudgetKind::Events, size).await {
            Ok(total) => total,
            Err(err) => {
                self.give_back(correlation, held, None);
                return Err(err);
            }
        };
        // Our grant is the range (total - size, total] of the counter; only its part at or
        // below the limit may be spent.
        let granted = limit.saturating_sub(total.saturating_sub(size)).min(size);
        let cap = (limit / 32).clamp(1, MAX_GRANT);
        if granted >= needed {
            self.give_back(correlation, granted - needed, Some(cap));
            return Ok(());
        }
        self.give_back(correlation, held + granted, Some(cap));
        // The events ran out; say so, unless it was the tokens or the cost that closed the run.
        for (kind, closing_limit) in [
            (BudgetKind::Tokens, self.limits.max_tokens),
            (BudgetKind::Cost, self.limits.max_cost_micros),
        ] {
            if let Some(closing_limit) = closing_limit
                && let Ok(used) = self.read(correlation, kind).await
                && used > closing_limit
            {
                return Err(self.exhausted(correlation, kind, used, closing_limit));
            }
        }
        Err(self.exhausted(correlation, BudgetKind::Events, total.min(limit), limit))
    }

    /// Takes up to `events` from what this process holds for the run.
    fn take_held(&self, correlation: &str, events: u64) -> u64 {
        let Some(mut grant) = self.grants.get_mut(correlation) else {
            return 0;
        };
        let taken = grant.remaining.min(events);
        grant.remaining -= taken;
        grant.touched = Instant::now();
        taken
    }

    /// Returns unspent budget to the run's grant; with `grow`, doubles the next grant up to it.
    fn give_back(&self, correlation: &str, events: u64, grow: Option<u64>) {
        if !self.grants.contains_key(correlation) && self.grants.len() >= GRANTS_KEPT {
            let now = Instant::now();
            self.grants
                .retain(|_, grant| now - grant.touched < GRANT_IDLE);
        }
        let mut grant = self
            .grants
            .entry(correlation.to_string())
            .or_insert_with(|| Grant {
                remaining: 0,
                next_size: 1,
                touched: Instant::now(),
            });
        grant.remaining += events;
        grant.touched = Instant::now();
        if let Some(cap) = grow {
            grant.next_size = (grant.next_size * 2).min(cap);
        }
    }

    /// Pushes the run's event counter past any limit, so every process's next grant fails.
    async fn close_events(&self, correlation: &str) {
        if let Some(limit) = self.limits.max_events
            && let Err(err) = self.add(correlation, BudgetKind::Events, limit + 1).await
        {
            tracing::warn!(correlation, error = %err, "could not close the run's event budget");
        }
    }

    fn exhausted(&self, correlation: &str, kind: BudgetKind, used: u64, limit: u64) -> BudgetError {
        BudgetError::Exhausted {
            kind,
            correlation: correlation.to_string(),
            used,
            limit,
        }
    }

    /// Adds to a counter and returns its new total.
    ///
    /// Boxed, as [`CorrelationBudget::read`] is: a request's future is kilobytes, and inlined
    /// it would make [`CorrelationBudget::charge`]'s, which runs for every handling that
    /// publishes and almost always answers from the grant in hand, as large, and with it
    /// every handling's future.
    fn add<'a>(
        &'a self,
        correlation: &'a str,
        kind: BudgetKind,
        amount: u64,
    ) -> BoxFuture<'a, Result<u64, BudgetError>> {
        Box::pin(self.add_unboxed(correlation, kind, amount))
    }

    async fn add_unboxed(
        &self,
        correlation: &str,
        kind: BudgetKind,
        amount: u64,
    ) -> Result<u64, BudgetError> {
        let subject = Self::subject(&self.namespace, correlation, kind);
        let unavailable = |detail: String| BudgetError::Unavailable {
            subject: subject.clone(),
            detail,
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Incr", format!("+{amount}").as_str());
        let reply = self
            .client
            .request_with_headers(subject.clone(), headers, bytes::Bytes::new())
            .await
            .map_err(|err| {
                unavailable(format!(
                    "{err}; is the {BUDGET_STREAM} stream there (choreo streams ensure)?"
                ))
            })?;
        let ack: CounterAck = serde_json::from_slice(&reply.payload)
            .map_err(|err| unavailable(format!("unreadable answer: {err}")))?;
        if let Some(error) = ack.error {
            return Err(unavailable(error.description));
        }
        ack.val
            .ok_or_else(|| {
                unavailable("the answer has no value; is BUDGETS a counter stream?".into())
            })?
            .parse()
            .map_err(|err| unavailable(format!("counter value is not a whole number: {err}")))
    }

    /// Reads a counter; a counter never written is zero. Boxed for the reason
    /// [`CorrelationBudget::add`] is.
    fn read<'a>(
        &'a self,
        correlation: &'a str,
        kind: BudgetKind,
    ) -> BoxFuture<'a, Result<u64, BudgetError>> {
        Box::pin(self.read_unboxed(correlation, kind))
    }

    async fn read_unboxed(&self, correlation: &str, kind: BudgetKind) -> Result<u64, BudgetError> {
        let subject = Self::subject(&self.namespace, correlation, kind);
        let unavailable = |detail: String| BudgetError::Unavailable {
            subject: subject.clone(),
            detail,
        };
        let stream = self
            .jetstream
            .get_stream_no_info(BUDGET_STREAM)
            .await
            .map_err(|err| unavailable(err.to_string()))?;
        match stream.direct_get_last_for_subject(subject.clone()).await {
            Ok(message) => {
                let value: CounterValue = serde_json::from_slice(&message.payload)
                    .map_err(|err| unavailable(format!("unreadable counter: {err}")))?;
                value.val.parse().map_err(|err| {
                    unavailable(format!("counter value is not a whole number: {err}"))
                })
            }
            Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => Ok(0),
            Err(err) => Err(unavailable(err.to_string())),
        }
    }
}

#[derive(serde::Deserialize)]
struct CounterAck {
    val: Option<String>,
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    description: String,
}

#[derive(serde::Deserialize)]
struct CounterValue {
    val: String,
}
