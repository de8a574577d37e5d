//! Reading the log: a stream read in order from a chosen point, with an ordered pull consumer
//! driven on the core connection (`log/delivery.rs` says how, and why not async-nats's own).
//!
//! Every tool that looks back (projections, `choreo trace`, `replay`, `state`, `dlq`) reads
//! through [`LogReader`]. A read is server-side filtered by subject (a run's trace reads
//! `<ns>.<correlation>.>` and nothing else) and, unless it is [`Until::Live`], ends where the
//! stream ended when the read began, so a replay of a busy stream finishes.
//!
//! Times are the stream's own: when the server stored the message. They only grow along the
//! log, so "as of 10:42" means "what the log held at 10:42", whatever clocks the publishers had.

mod delivery;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use choreo_proto::v1::Event;
use time::OffsetDateTime;

use crate::envelope::{self, DecodeError, EventView};
use delivery::{Delivery, Wanted};

/// How often the server reports in on a quiet read, unless the query says otherwise.
pub const DEFAULT_IDLE_HEARTBEAT: Duration = Duration::from_secs(5);

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum From {
    /// The first message the stream still holds.
    #[default]
    Start,
    /// This stream sequence (or the next one the stream holds).
    Sequence(u64),
    /// The first message stored at or after this time.
    Time(OffsetDateTime),
    /// Only messages stored after the read begins.
    Now,
}

/// Where a read stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Until {
    /// Where the stream ended when the read began.
    #[default]
    End,
    /// The last message at or before this sequence (or the end, if sooner).
    Sequence(u64),
    /// The last message stored at or before this time (or the end, if sooner).
    Time(OffsetDateTime),
    /// Never: keep reading as messages arrive.
    Live,
}

/// What to read from a stream.
#[derive(Debug, Clone)]
pub struct LogQuery {
    /// Subject filters; empty reads everything.
    pub filters: Vec<String>,
    pub from: From,
    pub until: Until,
    /// How often the server sends a heartbeat while it has nothing to deliver. A read that hears
    /// nothing for three of these takes its consumer for lost (the server restarted) and creates
    /// it again where it left off: a live read follows the log through a restart. Kept between
    /// 100 ms and 15 s (half of a pull request's expiry, as the server requires).
    pub idle_heartbeat: Duration,
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            filters: Vec::new(),
            from: From::default(),
            until: Until::default(),
            idle_heartbeat: DEFAULT_IDLE_HEARTBEAT,
        }
    }
}

impl LogQuery {
    pub fn filtered(filter: impl Into<String>) -> Self {
        LogQuery {
            filters: vec![filter.into()],
            ..LogQuery::default()
        }
    }

    pub fn idle_heartbeat(mut self, every: Duration) -> Self {
        self.idle_heartbeat = every;
        self
    }

    pub fn from(mut self, from: From) -> Self {
        self.from = from;
        self
    }

    pub fn until(mut self, until: Until) -> Self {
        self.until = until;
        self
    }
}

/// One message of the log, as stored.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub sequence: u64,
    /// When the server stored it.
    pub time: OffsetDateTime,
    pub subject: Subject,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

impl LogRecord {
    /// `event` as it would be stored in `namespace`'s stream at `sequence` and `time`, with no
    /// headers: for folding events that did not come from a stream, and for tests.
    pub fn of_event(
        namespace: &crate::names::Namespace,
        sequence: u64,
        time: OffsetDateTime,
        event: &Event,
    ) -> Self {
        LogRecord {
            sequence,
            time,
            subject: namespace
                .event_subject(&event.correlation_id, &event.r#type)
                .into(),
            headers: None,
            payload: prost::Message::encode_to_vec(event).into(),
        }
    }

    /// The envelope, for records of an events stream.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        envelope::decode(self.payload.clone())
    }

    /// The envelope's fields read in place, without copying them: for folds over many records.
    pub fn view(&self) -> Result<EventView<'_>, DecodeError> {
        EventView::decode(&self.payload)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str())
    }
}

/// Why the log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "stream {stream} does not exist: nothing has been published in this namespace yet, \
         or the streams were never set up (`choreo streams ensure`)"
    )]
    NoStream { stream: String },
    #[error("could not read stream {stream}: {detail}")]
    Unavailable { stream: String, detail: String },
}

impl LogError {
    /// Whether trying again may help: the server may be back.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Unavailable { .. })
    }
}

/// A read in progress. Call [`LogReader::next`] until it returns `None`.
pub struct LogReader {
    stream: String,
    /// `None` once the read is over.
    delivery: Option<Delivery>,
    /// Messages the read will return at most, when it has an end.
    expected: Option<u64>,
    read: u64,
    until: Until,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("stream", &self.stream)
            .field("expected", &self.expected)
            .field("read", &self.read)
            .field("until", &self.until)
            .finish()
    }
}

impl LogReader {
    /// Starts reading `stream`.
    ///
    /// ```no_run
    /// # async fn demo(jetstream: async_nats::jetstream::Context) -> Result<(), Box<dyn std::error::Error>> {
    /// use choreo_bus::log::{LogQuery, LogReader};
    /// let mut reader = LogReader::open(&jetstream, "EVENTS", LogQuery::filtered("events.run-1.>")).await?;
    /// while let Some(record) = reader.next().await? {
    ///     println!("{} {}", record.sequence, record.subject);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn open(
        jetstream: &jetstream::Context,
        stream: &str,
        query: LogQuery,
    ) -> Result<Self, LogError> {
        let deliver_policy = match query.from {
            From::Start => DeliverPolicy::All,
            From::Sequence(start_sequence) => DeliverPolicy::ByStartSequence {
                start_sequence: start_sequence.max(1),
            },
            From::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
            From::Now => DeliverPolicy::New,
        };
        let (filter_subject, filter_subjects) = match query.filters.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let wanted = Wanted {
            filter_subject,
            filter_subjects,
            deliver_policy,
            idle_heartbeat: query.idle_heartbeat,
        };
        let (delivery, matching) = Delivery::start(jetstream, stream, wanted).await?;
        let expected = match query.until {
            Until::Live => None,
            _ => Some(matching),
        };
        Ok(LogReader {
            stream: stream.to_string(),
            // Nothing to wait for: dropping the delivery unsubscribes its inbox at once.
            delivery: (expected != Some(0)).then_some(delivery),
            expected,
            read: 0,
            until: query.until,
        })
    }

    /// How many records the read returns at most: the matching messages the stream held when
    /// the read began. `None` for a live read.
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// The next record, or `None` at the end of the read.
    pub async fn next(&mut self) -> Result<Option<LogRecord>, LogError> {
        let Some(delivery) = self.delivery.as_mut() else {
            return Ok(None);
        };
        let (message, position) = delivery.next().await?;
        let (sequence, time, pending) = (position.sequence, position.time, position.pending);
        let past_the_end = match self.until {
            Until::Sequence(last) => sequence > last,
            Until::Time(last) => time > last,
            Until::End | Until::Live => false,
        };
        if past_the_end {
            self.delivery = None;
            return Ok(None);
        }
        self.read += 1;
        // Stop at the end as it was when the read began, or sooner if messages went away
        // (expired, deleted) meanwhile: nothing pending means nothing left to read.
        if self.until != Until::Live
            && (pending == 0 || self.expected.is_some_and(|expected| self.read >= expected))
        {
            self.delivery = None;
        }
        Ok(Some(LogRecord {
            sequence,
            time,
            subject: message.subject,
            headers: message.headers,
            payload: message.payload,
        }))
    }
}
