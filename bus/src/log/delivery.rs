//! The read under [`LogReader`](super::LogReader): an ordered pull consumer driven on the core
//! connection.
//!
//! async-nats has ordered consumers of its own, and the log was read with them until they were
//! measured: each message they hand out is wrapped with a clone of the JetStream context (a
//! `String` and several reference counts, dropped again a moment later), its ack reply is
//! parsed in full, the time through 128-bit arithmetic, and the pull ordered consumer asks for
//! 500 messages at a time. A replay reads a million messages, and that wrapping alone was about
//! a sixth of the client's CPU on it (docs/architecture.md, "Replay speed"). This keeps what an
//! ordered consumer promises, every message once and in stream order, with the same protocol:
//!
//! - an ephemeral pull consumer without acks; its messages come to an inbox of this read's own,
//!   asked for [`BATCH`] at a time, the next batch asked for when half of one is left, so the
//!   client never holds more than it asked for (a push consumer was measured too: a little
//!   faster, but a reader that falls behind it overflows the client's buffer and loses
//!   messages that must then be fetched again);
//! - a gap in the consumer sequence or a heartbeat naming a later message than the last one
//!   received (the client dropped messages), a status from the server other than a heartbeat
//!   or an expired request (the consumer was deleted), or three heartbeat periods of silence
//!   (the server restarted and the consumer, kept in memory, is gone; or the client dropped
//!   the end of an answered request) all mean the same: create the consumer again from the
//!   sequence after the last one received, on a new inbox. After a loss or a silence the read
//!   asks for a quarter as many messages at a time, so a client with little room settles at
//!   requests it can hold.

use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, Consumer, DeliverPolicy, pull},
    stream::ConsumerErrorKind,
};
use async_nats::{Message, StatusCode, Subscriber};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::time::{Instant, Sleep};

use super::LogError;

/// Messages asked for in one pull request. Measured over a million events (pull requests on
/// the core connection, nothing else changed): 500 (async-nats's own) read at 1.13 of the
/// crate's ordered consumer, 2,000 at 1.30, 5,000 at 1.37, 10,000 at 1.28. Two requests'
/// worth at most are in flight, well inside a client's default room per subscription
/// (65,536 messages).
const BATCH: usize = 4096;
/// How long a pull request waits on the server for messages before it expires (and is asked
/// again): it matters only to a live read, which waits at the end of the log.
const REQUEST_EXPIRES: Duration = Duration::from_secs(30);
/// Heartbeat periods without a word from the server after which the consumer is taken for lost.
const QUIET_PERIODS_BEFORE_RESTART: u32 = 3;
/// The shortest heartbeat asked for; the longest is half a request's expiry, as the server
/// requires.
const SHORTEST_HEARTBEAT: Duration = Duration::from_millis(100);
/// Times in a row the consumer may be created again, with neither a message nor a heartbeat
/// from it in between, before the read gives up: a server that keeps refusing requests must
/// not spin the read forever.
const RESTARTS_IN_A_ROW: u32 = 5;
/// Attempts at creating the consumer again before the read fails, and the first pause between
/// them (doubling each time): enough to ride out a server restart.
const RESTART_ATTEMPTS: u32 = 5;
const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(250);
/// How long the server keeps a consumer nobody asks: a read dropped before its end, or
/// replaced after a gap, leaves its consumer behind this long.
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(10);
/// Tries at creating a read's consumer when the server does not answer, and how long each
/// but the last (which waits as long as the context says) is given: the server makes one in
/// milliseconds, or never when it placed it on a server that is gone (see `subscribe`). With
/// a third of tries lost on three servers, ten all fail once in about 59,000 reads.
const PLACEMENT_ATTEMPTS: u32 = 10;
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The header of an expired request's status: how many of its messages never came.
const PENDING_MESSAGES: &str = "Nats-Pending-Messages";

/// What to read: the consumer's filters and start.
#[derive(Debug, Clone)]
pub(super) struct Wanted {
    pub filter_subject: String,
    pub filter_subjects: Vec<String>,
    pub deliver_policy: DeliverPolicy,
    pub idle_heartbeat: Duration,
}

/// A consumer's messages, in order, each once.
pub(super) struct Delivery {
    jetstream: jetstream::Context,
    stream: String,
    wanted: Wanted,
    consumer: Consumer<pull::Config>,
    inbox: async_nats::Subject,
    messages: Subscriber,
    /// Messages per request: [`BATCH`], less if the server caps requests lower, and less again
    /// after the client dropped messages for want of room.
    batch: usize,
    /// Messages asked for and not yet received.
    asked: usize,
    /// The last consumer sequence received; the next message must carry this plus one.
    consumer_sequence: u64,
    /// The stream sequence of the last message received, where a new consumer picks up.
    last_stream_sequence: Option<u64>,
    /// Heartbeat deadlines passed since the server last sent anything.
    quiet_periods: u32,
    restarts_in_a_row: u32,
    deadline: Pin<Box<Sleep>>,
}

impl Delivery {
    /// Creates the consumer; returns the delivery and how many messages matched when it began.
    pub(super) async fn start(
        jetstream: &jetstream::Context,
        stream: &str,
        mut wanted: Wanted,
    ) -> Result<(Delivery, u64), LogError> {
        wanted.idle_heartbeat = wanted
            .idle_heartbeat
            .clamp(SHORTEST_HEARTBEAT, REQUEST_EXPIRES / 2);
        let subscribed = subscribe(jetstream, stream, &wanted, wanted.deliver_policy).await?;
        let info = subscribed.consumer.cached_info().clone();
        // "Only what comes after now" must not move if the consumer is created again later:
        // pin it to the sequence the server started from.
        if wanted.deliver_policy == DeliverPolicy::New {
            wanted.deliver_policy = DeliverPolicy::ByStartSequence {
                start_sequence: info.delivered.stream_sequence + 1,
            };
        }
        let deadline = Box::pin(tokio::time::sleep(wanted.idle_heartbeat));
        let delivery = Delivery {
            jetstream: jetstream.clone(),
            stream: stream.to_string(),
            wanted,
            batch: subscribed.batch,
            consumer: subscribed.consumer,
            inbox: subscribed.inbox,
            messages: subscribed.messages,
            asked: 0,
            consumer_sequence: 0,
            last_stream_sequence: None,
            quiet_periods: 0,
            restarts_in_a_row: 0,
            deadline,
        };
        Ok((delivery, info.num_pending))
    }

    /// The next message of the stream that matches, and where it sits.
    pub(super) async fn next(&mut self) -> Result<(Message, Position), LogError> {
        loop {
            if self.asked <= self.batch / 2 {
                self.ask().await?;
            }
            let message = tokio::select! {
                biased;
                message = self.messages.next() => message,
                () = &mut self.deadline => {
                    self.quiet_periods += 1;
                    if self.quiet_periods >= QUIET_PERIODS_BEFORE_RESTART {
                        // While a request waits, the server sends heartbeats. None means the
                        // server lost the consumer (a restart), or the request was answered
                        // in full and the client dropped the end of the answer.
                        self.batch = (self.batch / 4).max(1);
                        self.restart("the server sent nothing, not even a heartbeat").await?;
                    } else {
                        let next = Instant::now() + self.wanted.idle_heartbeat;
                        self.deadline.as_mut().reset(next);
                    }
                    continue;
                }
            };
            let Some(message) = message else {
                return Err(self.unavailable("the connection was closed".to_string()));
            };
            self.quiet_periods = 0;
            if let Some(status) = message.status {
                self.on_status(status, &message).await?;
                continue;
            }
            self.asked = self.asked.saturating_sub(1);
            let Some(position) = message.reply.as_deref().and_then(Position::of_reply) else {
                return Err(self.unavailable(format!(
                    "a message on {} came without its place in the stream (no JetStream ack \
                     reply)",
                    message.subject
                )));
            };
            if position.consumer_sequence != self.consumer_sequence + 1 {
                self.lost_messages().await?;
                continue;
            }
            self.consumer_sequence = position.consumer_sequence;
            self.last_stream_sequence = Some(position.sequence);
            self.restarts_in_a_row = 0;
            return Ok((message, position));
        }
    }

    /// Asks the consumer for another batch.
    async fn ask(&mut self) -> Result<(), LogError> {
        let request = pull::BatchConfig {
            batch: self.batch,
            expires: Some(REQUEST_EXPIRES),
            idle_heartbeat: self.wanted.idle_heartbeat,
            ..pull::BatchConfig::default()
        };
        self.consumer
            .request_batch(request, self.inbox.clone())
            .await
            .map_err(|err| self.unavailable(format!("could not ask for messages: {err}")))?;
        self.asked += self.batch;
        Ok(())
    }

    /// Messages the server sent never arrived: the client had no room for them and dropped
    /// them. Ask for fewer at a time from here on, and read again from the last one received.
    async fn lost_messages(&mut self) -> Result<(), LogError> {
        self.batch = (self.batch / 4).max(1);
        self.restart("messages went missing on the way (the client had no room for them)")
            .await
    }

    /// A message from the server about the consumer or a request rather than from the stream.
    async fn on_status(&mut self, status: StatusCode, message: &Message) -> Result<(), LogError> {
        if status == StatusCode::IDLE_HEARTBEAT {
            // A heartbeat names the last message the consumer sent, and comes after it.
            let last_sent = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(async_nats::header::NATS_LAST_CONSUMER))
                .and_then(|value| value.as_str().parse::<u64>().ok());
            if last_sent.is_some_and(|last_sent| last_sent > self.consumer_sequence) {
                return self.lost_messages().await;
            }
            self.restarts_in_a_row = 0;
            return Ok(());
        }
        if status == StatusCode::TIMEOUT {
            // A request expired: what it did not deliver is no longer asked for.
            let unfulfilled = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(PENDING_MESSAGES))
                .and_then(|value| value.as_str().parse::<usize>().ok());
            if let Some(unfulfilled) = unfulfilled {
                self.asked = self.asked.saturating_sub(unfulfilled);
                return Ok(());
            }
        }
        // 409 "Consumer Deleted" and the like: this consumer delivers no more.
        let said = message.description.as_deref().unwrap_or_default();
        self.restart(&format!("the server said {status} {said}"))
            .await
    }

    /// Creates the consumer again from the message after the last one received.
    async fn restart(&mut self, reason: &str) -> Result<(), LogError> {
        let from = match self.last_stream_sequence {
            Some(last) => DeliverPolicy::ByStartSequence {
                start_sequence: last + 1,
            },
            None => self.wanted.deliver_policy,
        };
        self.restarts_in_a_row += 1;
        if self.restarts_in_a_row > RESTARTS_IN_A_ROW {
            return Err(self.unavailable(format!(
                "{reason}; the read's consumer was created again {RESTARTS_IN_A_ROW} \
                 times in a row without a message or heartbeat from it"
            )));
        }
        tracing::debug!(stream = %self.stream, reason, ?from, "creating the read's consumer again");
        let mut pause = FIRST_RESTART_PAUSE;
        let mut attempt = 1;
        let subscribed = loop {
            match subscribe(&self.jetstream, &self.stream, &self.wanted, from).await {
                Ok(subscribed) => break subscribed,
                Err(err) if err.is_retryable() && attempt < RESTART_ATTEMPTS => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(err) => {
                    return Err(self.unavailable(format!(
                        "{reason}, and its consumer could not be created again: {err}"
                    )));
                }
            }
        };
        self.consumer = subscribed.consumer;
        self.inbox = subscribed.inbox;
        self.messages = subscribed.messages;
        self.batch = self.batch.min(subscribed.batch);
        self.asked = 0;
        self.consumer_sequence = 0;
        self.quiet_periods = 0;
        let next = Instant::now() + self.wanted.idle_heartbeat;
        self.deadline.as_mut().reset(next);
        Ok(())
    }

    fn unavailable(&self, detail: String) -> LogError {
        LogError::Unavailable {
            stream: self.stream.clone(),
            detail,
        }
    }
}

/// A consumer and the inbox its messages come to.
struct Subscribed {
    consumer: Consumer<pull::Config>,
    inbox: async_nats::Subject,
    messages: Subscriber,
    batch: usize,
}

/// Subscribes a fresh inbox and creates a consumer that delivers from `from`.
async fn subscribe(
    jetstream: &jetstream::Context,
    stream: &str,
    wanted: &Wanted,
    from: DeliverPolicy,
) -> Result<Subscribed, LogError> {
    let unavailable = |detail: String| LogError::Unavailable {
        stream: stream.to_string(),
        detail,
    };
    let client = jetstream.client();
    let inbox = async_nats::Subject::from(client.new_inbox());
    let messages = client
        .subscribe(inbox.clone())
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    let config = pull::Config {
        filter_subject: wanted.filter_subject.clone(),
        filter_subjects: wanted.filter_subjects.clone(),
        deliver_policy: from,
        ack_policy: AckPolicy::None,
        max_deliver: 1,
        memory_storage: true,
        num_replicas: 1,
        inactive_threshold: INACTIVE_THRESHOLD,
        ..pull::Config::default()
    };
    // On a replicated stream the server places a one-replica consumer on one of the stream's
    // peers, at random, and it takes a peer that was killed for gone only minutes later
    // (nats-server's orphan check: 150 s without a heartbeat, checked every 90 s). Placed
    // there, the consumer is never made and the request times out; placed on a live peer it
    // is made in milliseconds. So a timeout is asked again, soon, a few times: each try lands
    // on the dead peer a third of the time on three servers. (A consumer with the stream's
    // replicas is no way out: its group waits for an election that the dead peer, if the
    // server preferred it, holds up for longer than a read should wait.)
    let mut quick = jetstream.clone();
    quick.set_timeout(PLACEMENT_TIMEOUT);
    let mut attempt = 1;
    let created = loop {
        let asked = if attempt < PLACEMENT_ATTEMPTS {
            &quick
        } else {
            jetstream
        };
        match asked
            .create_consumer_on_stream(config.clone(), stream)
            .await
        {
            Err(err)
                if err.kind() == ConsumerErrorKind::TimedOut && attempt < PLACEMENT_ATTEMPTS =>
            {
                tracing::debug!(
                    stream,
                    attempt,
                    "the read's consumer was not made in time; asking again"
                );
                attempt += 1;
            }
            created => break created,
        }
    };
    let consumer = created.map_err(|err| match err.kind() {
        ConsumerErrorKind::JetStream(server)
            if server.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
        {
            LogError::NoStream {
                stream: stream.to_string(),
            }
        }
        _ => unavailable(err.to_string()),
    })?;
    // The server may cap requests (`max_request_batch`); a larger one would be refused.
    let batch = match usize::try_from(consumer.cached_info().config.max_batch) {
        Ok(cap) if cap > 0 => BATCH.min(cap),
        _ => BATCH,
    };
    Ok(Subscribed {
        consumer,
        inbox,
        messages,
        batch,
    })
}

/// Where a delivered message sits, read from the ack reply subject the server gives it:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<nanos>.<pending>`, or
/// the longer form with a domain and an account hash in front and a token behind (ADR-15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub sequence: u64,
    pub consumer_sequence: u64,
    /// When the server stored the message.
    pub time: OffsetDateTime,
    /// Matching messages after this one when it was sent.
    pub pending: u64,
}

impl Position {
    pub(super) fn of_reply(reply: &str) -> Option<Position> {
        let tokens = reply.strip_prefix("$JS.ACK.")?;
        // The four numbers wanted follow <delivered>: the third token of the short form (7
        // tokens), the fifth of the long one (9 or more).
        let skip = match tokens.bytes().filter(|byte| *byte == b'.').count() + 1 {
            7 => 3,
            9.. => 5,
            _ => return None,
        };
        let mut numbers = tokens.split('.').skip(skip).map(decimal);
        let sequence = numbers.next()??;
        let consumer_sequence = numbers.next()??;
        let nanos = i64::try_from(numbers.next()??).ok()?;
        let pending = numbers.next()??;
        let time = OffsetDateTime::UNIX_EPOCH.checked_add(time::Duration::nanoseconds(nanos))?;
        Some(Position {
            sequence,
            consumer_sequence,
            time,
            pending,
        })
    }
}

/// A token of ASCII digits as a number; `None` for anything else, or one too large.
fn decimal(token: &str) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    token.bytes().try_fold(0u64, |value, byte| {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED_NANOS: i64 = 1_763_700_000_123_456_789;

    fn stored_at() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(STORED_NANOS)).expect("a valid time")
    }

    #[test]
    fn the_short_ack_reply_gives_the_stream_and_consumer_sequence_time_and_pending() {
        let reply = format!("$JS.ACK.EVENTS.reader-1.1.4711.12.{STORED_NANOS}.88");
        assert_eq!(
            Position::of_reply(&reply),
            Some(Position {
                sequence: 4711,
                consumer_sequence: 12,
                time: stored_at(),
                pending: 88,
            })
        );
    }

    #[test]
    fn the_long_ack_reply_with_domain_account_and_token_reads_the_same() {
        let reply = format!("$JS.ACK.hub.ACCHASH.EVENTS.reader-1.1.4711.12.{STORED_NANOS}.88.x7");
        let short = format!("$JS.ACK.EVENTS.reader-1.1.4711.12.{STORED_NANOS}.88");
        assert_eq!(Position::of_reply(&reply), Position::of_reply(&short));
        assert!(Position::of_reply(&reply).is_some());
        let without_token =
            format!("$JS.ACK._.ACCHASH.EVENTS.reader-1.1.4711.12.{STORED_NANOS}.88");
        assert_eq!(
            Position::of_reply(&without_token),
            Position::of_reply(&short)
        );
    }

    #[test]
    fn a_reply_that_is_not_a_whole_ack_subject_has_no_position() {
        for reply in [
            "_INBOX.abc.def",
            "$JS.ACK.EVENTS.reader-1.1.4711.12",
            "$JS.ACK.EVENTS.reader-1.1.4711.12.99.88.extra",
            "$JS.ACK.EVENTS.reader-1.1.47x1.12.99.88",
            "$JS.ACK.EVENTS.reader-1.1..12.99.88",
            "$JS.ACK.EVENTS.reader-1.1.-4.12.99.88",
            "$JS.ACK.EVENTS.reader-1.1.99999999999999999999.12.99.88",
            "$JS.ACK.EVENTS.reader-1.1.1.12.99999999999999999999.88",
        ] {
            assert_eq!(Position::of_reply(reply), None, "{reply}");
        }
    }
}
