//! Each handling in the log: when an agent received an event, how long its handler took, what
//! it spent on models, and how it ended, so `choreo trace` can draw the agent's work as a bar
//! from received to done, and the run board can total a run's cost, from the log alone.
//!
//! A handling that emits children records itself on them, in headers (no extra message):
//!
//! | header | value |
//! |---|---|
//! | `Choreo-Handling-Received` | when the delivery reached the agent, Unix microseconds |
//! | `Choreo-Handling-Took` | how long the handler ran, microseconds |
//! | `Choreo-Handling-Spend` | on the first child only, when the handling called a model: [`Spend`] as JSON |
//!
//! A handling that emits nothing publishes a [`HANDLED`] notice instead, a child of its input
//! whose data is a [`HandlingNotice`], when it is worth a message: it failed, was cancelled by
//! its timeout, spent money, or took at least the runtime's `record_handlings_over` (a fast
//! handling that ignores an event shows in the trace as "acknowledged" from the consumer's
//! position, without a message per event). Like the dead-letter notice it is an outcome, not
//! an event of the run: the trace folds it into its input and the run board adds up its spend.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::metrics::AgentMetrics;

/// The type of the notice a handling that emitted nothing leaves in the log.
pub const HANDLED: &str = "choreo.handled";

/// Header names of the handling record on children.
pub mod headers {
    pub const RECEIVED: &str = "Choreo-Handling-Received";
    pub const TOOK: &str = "Choreo-Handling-Took";
    pub const SPEND: &str = "Choreo-Handling-Spend";
}

/// What one handling spent on models.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// Calls made to a model API, failed ones included.
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the calls cost at the agent's price (`CHOREO_LLM_PRICE`); 0 without a price.
    pub cost: f64,
    /// The model of the last call.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
}

impl Spend {
    pub fn is_empty(&self) -> bool {
        self.calls == 0
    }

    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    pub fn add(&mut self, other: &Spend) {
        self.calls += other.calls;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost += other.cost;
        if !other.model.is_empty() {
            self.model.clone_from(&other.model);
        }
    }

    /// The cost in millionths, rounded up: what the run's cost counter is charged.
    pub fn cost_micros(&self) -> u64 {
        cost_to_micros(self.cost)
    }
}

/// A cost in millionths of its unit, rounded up (a call that cost anything costs at least 1).
pub fn cost_to_micros(cost: f64) -> u64 {
    if cost.is_finite() && cost > 0.0 {
        // Saturating: `as` clamps a float too large for u64.
        (cost * 1e6).ceil() as u64
    } else {
        0
    }
}

/// One handling's meter, handed to the handler ([`crate::Incoming::spend`]): every model call
/// it makes is recorded here, and in the process's metrics, by one call.
#[derive(Debug, Clone, Default)]
pub struct SpendMeter {
    totals: Arc<Mutex<Spend>>,
    metrics: Option<AgentMetrics>,
}

/// Meters are equal when they have recorded the same spend.
impl PartialEq for SpendMeter {
    fn eq(&self, other: &Self) -> bool {
        self.spent() == other.spent()
    }
}

impl SpendMeter {
    /// A meter that also counts every call into `metrics`.
    pub fn counted_in(metrics: AgentMetrics) -> Self {
        SpendMeter {
            totals: Arc::default(),
            metrics: Some(metrics),
        }
    }

    /// A call to `model` ended with `outcome` (see [`crate::metrics`]'s table); the API billed
    /// `input` and `output` tokens, which cost `cost` where the agent has a price.
    pub fn model_call(
        &self,
        model: &str,
        outcome: &'static str,
        input: u64,
        output: u64,
        cost: Option<f64>,
    ) {
        if let Some(metrics) = &self.metrics {
            metrics.model_call(model, outcome, input, output, cost);
        }
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        totals.add(&Spend {
            calls: 1,
            input_tokens: input,
            output_tokens: output,
            cost: cost.unwrap_or(0.0),
            model: model.to_string(),
        });
    }

    /// What the handling has spent so far.
    pub fn spent(&self) -> Spend {
        self.totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A handling as its children's headers carry it (see the module's table).
#[derive(Debug, Clone, PartialEq)]
pub struct ChildHeaders {
    received_micros: i64,
    took_micros: u64,
    /// [`Spend`] as JSON; none when the handling called no model.
    spend: Option<String>,
}

impl ChildHeaders {
    pub fn new(received: SystemTime, took: Duration, spend: &Spend) -> Self {
        ChildHeaders {
            received_micros: unix_micros(received),
            took_micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            spend: (!spend.is_empty())
                .then(|| serde_json::to_string(spend).ok())
                .flatten(),
        }
    }

    /// `record` (the `index`-th child, as stored) with this handling's headers: for tests
    /// that fold children without a server.
    #[cfg(test)]
    pub(crate) fn on(
        &self,
        index: usize,
        mut record: crate::log::LogRecord,
    ) -> crate::log::LogRecord {
        let mut headers = record.headers.take().unwrap_or_default();
        self.write(index, &mut headers);
        record.headers = Some(headers);
        record
    }

    /// Writes the record onto the `index`-th child's headers; the spend goes on the first
    /// child only, so a run's cost is counted once per handling.
    pub fn write(&self, index: usize, map: &mut async_nats::HeaderMap) {
        use async_nats::header::HeaderName;
        map.insert(
            const { HeaderName::from_static(headers::RECEIVED) },
            itoa::Buffer::new().format(self.received_micros),
        );
        map.insert(
            const { HeaderName::from_static(headers::TOOK) },
            itoa::Buffer::new().format(self.took_micros),
        );
        if index == 0
            && let Some(spend) = &self.spend
        {
            map.insert(
                const { HeaderName::from_static(headers::SPEND) },
                spend.as_str(),
            );
        }
    }
}

/// How a handling that published no children ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlingEnd {
    /// The handler answered with nothing to emit.
    EmittedNothing,
    /// The handler failed; the runtime retries, defers or dead-letters as its fate says.
    Failed,
    /// The handler ran past its timeout and was cancelled.
    TimedOut,
}

/// The data of a [`HANDLED`] notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlingNotice {
    pub agent: String,
    pub event_id: String,
    pub event_type: String,
    /// Which delivery of the event this was (1 for the first).
    pub delivery: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub received: time::OffsetDateTime,
    /// How long the handler ran, in milliseconds.
    pub took_ms: f64,
    pub end: HandlingEnd,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "Spend::is_empty")]
    pub spend: Spend,
}

/// A handling as the log tells it, from its children's headers or its notice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandlingRecord {
    pub agent: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received: time::OffsetDateTime,
    /// How long the handler ran.
    #[serde(serialize_with = "crate::trace::millis")]
    pub took: Duration,
    /// When the stream stored what the handling left (its last child, or its notice): the end
    /// of its bar.
    #[serde(with = "time::serde::rfc3339")]
    pub done: time::OffsetDateTime,
    /// `emitted` for a handling that published children, else its [`HandlingEnd`].
    pub end: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Which delivery of the event it was; 0 when the log does not say (children).
    pub delivery: u64,
    pub spend: Spend,
}

impl HandlingRecord {
    /// The record a child's headers carry (`header` reads one by name); `None` on a child of a
    /// runtime that did not record handlings.
    pub fn from_child_headers<'a>(
        agent: &str,
        stored: time::OffsetDateTime,
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> Option<Self> {
        let received = header(headers::RECEIVED)?.parse::<i128>().ok()?;
        let took = header(headers::TOOK)?.parse::<u64>().ok()?;
        let spend = header(headers::SPEND)
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        Some(HandlingRecord {
            agent: agent.to_string(),
            received: time::OffsetDateTime::from_unix_timestamp_nanos(received * 1000).ok()?,
            took: Duration::from_micros(took),
            done: stored,
            end: "emitted".to_string(),
            error: String::new(),
            delivery: 0,
            spend,
        })
    }

    /// The record a [`HANDLED`] notice stored at `stored` carries.
    pub fn from_notice(notice: HandlingNotice, stored: time::OffsetDateTime) -> Self {
        let end = serde_json::to_value(notice.end)
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default();
        HandlingRecord {
            agent: notice.agent,
            received: notice.received,
            took: Duration::from_secs_f64(notice.took_ms.max(0.0) / 1000.0),
            done: stored,
            end,
            error: notice.error,
            delivery: notice.delivery,
            spend: notice.spend,
        }
    }
}

/// Unix microseconds of `time`, for [`headers::RECEIVED`].
pub fn unix_micros(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_adds_up_the_calls_of_one_handling() {
        let meter = SpendMeter::default();
        meter.model_call("m1", "rate_limited", 0, 0, None);
        meter.model_call("m2", "ok", 100, 40, Some(0.000_25));
        let copy = meter.clone();
        copy.model_call("m2", "ok", 10, 5, Some(0.000_05));
        let spent = meter.spent();
        assert_eq!(spent.calls, 3);
        assert_eq!((spent.input_tokens, spent.output_tokens), (110, 45));
        assert!((spent.cost - 0.0003).abs() < 1e-12);
        assert_eq!(spent.model, "m2");
        assert_eq!(spent.cost_micros(), 300);
    }

    #[test]
    fn costs_round_up_to_a_millionth() {
        assert_eq!(cost_to_micros(0.0), 0);
        assert_eq!(cost_to_micros(1e-9), 1);
        assert_eq!(cost_to_micros(0.5), 500_000);
        assert_eq!(cost_to_micros(f64::NAN), 0);
        assert_eq!(cost_to_micros(-1.0), 0);
    }

    #[test]
    fn a_childs_headers_give_back_the_handling() {
        let stored = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let spend = Spend {
            calls: 1,
            input_tokens: 7,
            output_tokens: 3,
            cost: 0.01,
            model: "m".into(),
        };
        let spend_json = serde_json::to_string(&spend).expect("json");
        let received = (1_799_999_990_i64 * 1_000_000 + 250).to_string();
        let header = |name: &str| match name {
            headers::RECEIVED => Some(received.as_str()),
            headers::TOOK => Some("9500000"),
            headers::SPEND => Some(spend_json.as_str()),
            _ => None,
        };
        let record =
            HandlingRecord::from_child_headers("security", stored, header).expect("a record");
        assert_eq!(record.agent, "security");
        assert_eq!(record.took, Duration::from_millis(9500));
        assert_eq!(
            record.received.unix_timestamp_nanos(),
            (1_799_999_990_i128 * 1_000_000 + 250) * 1000
        );
        assert_eq!(record.done, stored);
        assert_eq!(record.spend, spend);
        assert_eq!(
            HandlingRecord::from_child_headers("x", stored, |_| None),
            None,
            "a child without the headers has no record"
        );
    }

    #[test]
    fn a_notice_names_its_end_as_the_trace_shows_it() {
        let stored = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let notice = HandlingNotice {
            agent: "aggregator".into(),
            event_id: "e".into(),
            event_type: "t.done".into(),
            delivery: 2,
            received: stored - time::Duration::seconds(3),
            took_ms: 1500.0,
            end: HandlingEnd::TimedOut,
            error: "late".into(),
            spend: Spend::default(),
        };
        let json = serde_json::to_value(&notice).expect("json");
        assert_eq!(json["end"], "timed_out");
        assert!(json.get("spend").is_none(), "no spend, no field");
        let record = HandlingRecord::from_notice(notice, stored);
        assert_eq!(record.end, "timed_out");
        assert_eq!(record.took, Duration::from_millis(1500));
        assert_eq!(record.delivery, 2);
    }
}
