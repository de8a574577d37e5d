//! What an agent is: a name, the types it reacts to, the types it may emit, and a handler.

use std::future::Future;
use std::ops::Deref;

use choreo_proto::v1::Event;

use crate::envelope::Emit;
use crate::names::{AgentName, EventType, ValidationError};

/// An agent's declaration. Its name is public API: the durable consumer that all its copies
/// share, its span field and the `source` of what it emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    name: AgentName,
    subscribes: Vec<EventType>,
    emits: Vec<EventType>,
    reads_log: bool,
}

impl Agent {
    /// Starts a declaration.
    ///
    /// ```
    /// let agent = choreo_bus::Agent::builder("counter")
    ///     .subscribes("text.submitted")
    ///     .emits("text.counted")
    ///     .build()?;
    /// assert_eq!(agent.name().as_str(), "counter");
    /// # Ok::<(), choreo_bus::ValidationError>(())
    /// ```
    pub fn builder(name: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            name: name.into(),
            subscribes: Vec::new(),
            emits: Vec::new(),
            reads_log: false,
        }
    }

    pub fn name(&self) -> &AgentName {
        &self.name
    }

    pub fn subscribes(&self) -> &[EventType] {
        &self.subscribes
    }

    pub fn emits(&self) -> &[EventType] {
        &self.emits
    }

    /// Whether it reads its namespace's log itself ([`AgentBuilder::reads_log`]).
    pub fn reads_log(&self) -> bool {
        self.reads_log
    }

    /// Whether this agent declared it may emit `event_type`.
    pub fn may_emit(&self, event_type: &EventType) -> bool {
        self.emits.contains(event_type)
    }
}

/// Collects a declaration; [`AgentBuilder::build`] validates it.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    name: String,
    subscribes: Vec<String>,
    emits: Vec<String>,
    reads_log: bool,
}

impl AgentBuilder {
    /// An event type this agent handles (in every correlation). Call once per type.
    pub fn subscribes(mut self, event_type: impl Into<String>) -> Self {
        self.subscribes.push(event_type.into());
        self
    }

    /// An event type this agent may emit. Emitting anything undeclared is a handler error.
    pub fn emits(mut self, event_type: impl Into<String>) -> Self {
        self.emits.push(event_type.into());
        self
    }

    /// The agent reads its namespace's log itself (a [`crate::log::LogReader`], as a join reads
    /// a run's events), besides what its consumer delivers. Its manifest says so, and its
    /// generated credentials then allow reads of the stream with consumers of its own (never
    /// another agent's).
    pub fn reads_log(mut self) -> Self {
        self.reads_log = true;
        self
    }

    pub fn build(self) -> Result<Agent, ValidationError> {
        let name = AgentName::new(self.name)?;
        if self.subscribes.is_empty() {
            return Err(ValidationError::new(
                "subscribes",
                format!("agent {name} subscribes to nothing; declare at least one event type"),
            ));
        }
        let parse = |types: Vec<String>| {
            let mut parsed = types
                .into_iter()
                .map(EventType::new)
                .collect::<Result<Vec<_>, _>>()?;
            parsed.sort();
            parsed.dedup();
            Ok::<_, ValidationError>(parsed)
        };
        Ok(Agent {
            name,
            subscribes: parse(self.subscribes)?,
            emits: parse(self.emits)?,
            reads_log: self.reads_log,
        })
    }
}

/// An event delivered to a handler, with its delivery facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub event: Event,
    /// 1 on first delivery, more on redelivery.
    pub delivery: u64,
    /// The event's sequence in the events stream.
    pub stream_sequence: u64,
    /// The run's shared budget, when the agent has one: ask it what is left before spending.
    pub budget: Option<crate::guard::RunBudget>,
    /// This handling's meter: record every model call on it (tokens, cost), and the runtime
    /// writes what it spent into the log with the handling, charges its cost to the run's
    /// budget and counts it in the metrics.
    pub spend: crate::handling::SpendMeter,
}

impl Incoming {
    /// The JSON payload; a payload that does not parse is a permanent error (retrying the same
    /// bytes cannot help).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        crate::envelope::json_data(&self.event).map_err(|err| {
            HandlerError::permanent(format!(
                "event {} ({}) has a payload that is not the expected JSON: {err}",
                self.event.id, self.event.r#type
            ))
        })
    }
}

impl Deref for Incoming {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

/// Why a handler did not complete, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Might work next time (a timeout, a flaky dependency): the event is redelivered with
    /// backoff until the agent's max deliveries, then dead-lettered.
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way again (bad input): dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
    /// A dependency is known to be down (its circuit breaker is open): the event waits in the
    /// stream for `retry_after` and is never dead-lettered for this.
    #[error("{error}")]
    Unavailable {
        error: String,
        retry_after: std::time::Duration,
    },
    /// What the handling would spend does not fit in what the run has left (a model call's
    /// `max_tokens` over the run's remaining tokens): dead-lettered `budget_exhausted` at once,
    /// with nothing spent.
    #[error("{0}")]
    OverBudget(String),
}

/// The kinds of [`HandlerError`], e.g. for the errors a breaker does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandlerErrorKind {
    Retryable,
    Permanent,
    Unavailable,
    OverBudget,
}

impl HandlerErrorKind {
    pub const ALL: [HandlerErrorKind; 4] = [
        HandlerErrorKind::Retryable,
        HandlerErrorKind::Permanent,
        HandlerErrorKind::Unavailable,
        HandlerErrorKind::OverBudget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandlerErrorKind::Retryable => "retryable",
            HandlerErrorKind::Permanent => "permanent",
            HandlerErrorKind::Unavailable => "unavailable",
            HandlerErrorKind::OverBudget => "over_budget",
        }
    }
}

impl std::fmt::Display for HandlerErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HandlerErrorKind {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text.trim())
            .ok_or_else(|| {
                ValidationError::new(
                    "error kind",
                    format!(
                        "{text:?} is not one of retryable, permanent, unavailable, over_budget"
                    ),
                )
            })
    }
}

impl HandlerError {
    pub fn retryable(error: impl std::fmt::Display) -> Self {
        HandlerError::Retryable(error.to_string())
    }

    pub fn permanent(error: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(error.to_string())
    }

    pub fn unavailable(error: impl std::fmt::Display, retry_after: std::time::Duration) -> Self {
        HandlerError::Unavailable {
            error: error.to_string(),
            retry_after,
        }
    }

    pub fn kind(&self) -> HandlerErrorKind {
        match self {
            HandlerError::Retryable(_) => HandlerErrorKind::Retryable,
            HandlerError::Permanent(_) => HandlerErrorKind::Permanent,
            HandlerError::Unavailable { .. } => HandlerErrorKind::Unavailable,
            HandlerError::OverBudget(_) => HandlerErrorKind::OverBudget,
        }
    }

    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            HandlerError::Permanent(_) | HandlerError::OverBudget(_)
        )
    }
}

/// An open breaker on an outbound call: the event waits until the breaker may let it through.
impl From<crate::guard::BreakerOpen> for HandlerError {
    fn from(open: crate::guard::BreakerOpen) -> Self {
        let retry_after = open.retry_in;
        HandlerError::unavailable(open, retry_after)
    }
}

/// An agent's logic: given an event, the events to publish. It never publishes itself; the
/// runtime stamps and publishes what it returns, so causation is always right and a redelivery
/// republishes the same ids.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        event: &Incoming,
    ) -> impl Future<Output = Result<Vec<Emit>, HandlerError>> + Send;

    /// The breakers around this handler's outbound calls (an LLM endpoint, a webhook), so the
    /// runtime logs and publishes their transitions. None by default.
    fn breakers(&self) -> Vec<crate::guard::CircuitBreaker> {
        Vec::new()
    }

    /// What this handler is, as `(key, value)` pairs for the copy's Services API metadata
    /// (`choreo agents --json`, `nats micro info`): a specialist says its brain and model.
    /// Keys are the handler's own; `choreo.` is the runtime's prefix. None by default.
    fn describe(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A shared handler, so its owner can keep a handle on its state while the runtime runs it.
impl<H: Handler> Handler for std::sync::Arc<H> {
    fn handle(
        &self,
        event: &Incoming,
    ) -> impl Future<Output = Result<Vec<Emit>, HandlerError>> + Send {
        (**self).handle(event)
    }

    fn breakers(&self) -> Vec<crate::guard::CircuitBreaker> {
        (**self).breakers()
    }

    fn describe(&self) -> Vec<(String, String)> {
        (**self).describe()
    }
}

/// A [`Handler`] made from an async closure that takes the event by value.
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

/// Wraps an async closure as a [`Handler`].
///
/// ```
/// use choreo_bus::{Emit, EventType, Incoming, handler_fn};
/// let handler = handler_fn(|event: Incoming| async move {
///     let done = EventType::new("text.counted").map_err(choreo_bus::HandlerError::permanent)?;
///     Ok(vec![Emit::json(done, &event.data.len()).map_err(choreo_bus::HandlerError::permanent)?])
/// });
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Emit>, HandlerError>> + Send,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Emit>, HandlerError>> + Send,
{
    fn handle(
        &self,
        event: &Incoming,
    ) -> impl Future<Output = Result<Vec<Emit>, HandlerError>> + Send {
        (self.0)(event.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declaration_is_validated() {
        let agent = Agent::builder("a")
            .subscribes("x.y")
            .subscribes("x.y")
            .emits("z.w")
            .build()
            .expect("valid");
        assert_eq!(agent.subscribes().len(), 1, "duplicates collapse");
        assert!(agent.may_emit(&EventType::new("z.w").expect("valid")));
        assert!(!agent.may_emit(&EventType::new("x.y").expect("valid")));

        let no_subscriptions = Agent::builder("a").build().expect_err("empty");
        assert_eq!(no_subscriptions.field, "subscribes");
        let bad_name = Agent::builder("a.b")
            .subscribes("x")
            .build()
            .expect_err("dot");
        assert_eq!(bad_name.field, "agent name");
        let bad_type = Agent::builder("a")
            .subscribes("x.*")
            .build()
            .expect_err("star");
        assert_eq!(bad_type.field, "type");
    }
}
