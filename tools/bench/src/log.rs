//! `replay` and `trace`: reading a large log back.
//!
//! Both fill a fresh `EVENTS` stream with `--log-events` events (1,000,000 by default) in runs
//! of [`RUN_LENGTH`]: a root and a chain of children stamped as the runtime stamps them, on
//! their real subjects.
//!
//! - `replay`: rebuilding the run board from the whole log (the bus's reader, decode, fold)
//!   vs the raw ordered-consumer read of the same messages (async-nats's ordered pull
//!   consumer), in alternating rounds; its ordered push consumer is measured in the same rounds
//!   as a second raw side (`also_raw`, `ratio_also_raw`).
//! - `trace`: one run's trace from the middle of the log vs a raw ordered read of that run's
//!   subjects. Its figures include `messages_read`: the trace must read the run's own
//!   messages, not the stream.

use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{pull, push},
};
use bytes::Bytes;
use choreo_bus::envelope::stamp_child;
use choreo_bus::log::LogRecord;
use choreo_bus::projection::run_board::RunBoard;
use choreo_bus::projection::{AsOf, Folded, Projector};
use choreo_bus::trace::RunTrace;
use choreo_bus::{AgentName, Emit, Event, EventType, Namespace, RootEvent, envelope::JSON};
use futures::StreamExt;
use prost::Message;
use serde::Serialize;
use time::OffsetDateTime;

use crate::publish::pipelined;
use crate::{Report, Settings, fresh_streams, median};

/// Events per run in the filled log.
pub const RUN_LENGTH: usize = 10;

/// The log's events, run by run: `events` in all, in runs of [`RUN_LENGTH`] (the last may be
/// shorter), each a root and a chain of children stamped as the runtime stamps them.
fn log_runs(events: usize) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Vec<Event>>>> {
    let agent = AgentName::new("bench-agent")?;
    let started = EventType::new("bench.started")?;
    let step = EventType::new("bench.step")?;
    let data = Bytes::from(serde_json::to_vec(&crate::payload(64))?);
    Ok((0..events.div_ceil(RUN_LENGTH)).map(move |run| {
        let root = RootEvent::new(Emit::new(started.clone(), JSON, data.clone()), "bench")
            .with_correlation_id(format!("run-{run}"))
            .into_event()?;
        let length = RUN_LENGTH.min(events - run * RUN_LENGTH);
        let mut messages = Vec::with_capacity(length);
        messages.push(root);
        while messages.len() < length {
            let parent = &messages[messages.len() - 1];
            let child = stamp_child(
                parent,
                &agent,
                0,
                Emit::new(step.clone(), JSON, data.clone()),
            );
            messages.push(child);
        }
        Ok(messages)
    }))
}

/// Fills a fresh events stream with `settings.log_events` events; returns how many runs.
pub async fn fill(client: &async_nats::Client, settings: &Settings) -> anyhow::Result<usize> {
    fresh_streams(client).await?;
    let jetstream = jetstream::new(client.clone());
    let namespace = Namespace::default();
    let mut runs = 0;
    for messages in log_runs(settings.log_events)? {
        runs += 1;
        let batch: Vec<(String, Bytes)> = messages?
            .iter()
            .map(|e| {
                (
                    namespace.event_subject(&e.correlation_id, &e.r#type),
                    Bytes::from(e.encode_to_vec()),
                )
            })
            .collect();
        pipelined(batch.len(), |i| {
            let (subject, payload) = batch[i].clone();
            let jetstream = jetstream.clone();
            async move {
                let ack = jetstream.publish(subject, payload).await?;
                Ok(async move {
                    ack.await?;
                    Ok(())
                })
            }
        })
        .await?;
    }
    Ok(runs)
}

/// Reads every message of `filter` with async-nats's ordered pull consumer; returns how many.
async fn raw_read(jetstream: &jetstream::Context, filter: &str) -> anyhow::Result<u64> {
    let stream = jetstream.get_stream_no_info("EVENTS").await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_string(),
            ..Default::default()
        })
        .await?;
    let expected = consumer.cached_info().num_pending;
    let messages = consumer.messages().await?;
    read_all(messages, expected).await
}

/// Reads every message of `filter` with async-nats's ordered push consumer; returns how many.
async fn raw_push_read(jetstream: &jetstream::Context, filter: &str) -> anyhow::Result<u64> {
    let stream = jetstream.get_stream_no_info("EVENTS").await?;
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: jetstream.client().new_inbox(),
            filter_subject: filter.to_string(),
            ..Default::default()
        })
        .await?;
    let expected = consumer.cached_info().num_pending;
    let messages = consumer.messages().await?;
    read_all(messages, expected).await
}

async fn read_all<E: std::error::Error + Send + Sync + 'static>(
    mut messages: impl futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
    expected: u64,
) -> anyhow::Result<u64> {
    let mut read = 0;
    while read < expected {
        let message = messages
            .next()
            .await
            .context("the ordered read ended early")??;
        std::hint::black_box(&message.payload);
        read += 1;
    }
    Ok(read)
}

/// The `fold` scenario's figures: the run board folded from records held in memory, without
/// the read, so a change to the fold can be measured apart from the network and the server.
#[derive(Debug, Serialize)]
pub struct FoldReport {
    pub scenario: &'static str,
    /// Median over the rounds.
    pub events_per_s: f64,
    pub ns_per_event: f64,
    pub log_events: usize,
    pub rounds: usize,
    pub rounds_events_per_s: Vec<f64>,
}

pub fn fold(settings: &Settings) -> anyhow::Result<FoldReport> {
    let namespace = Namespace::default();
    let start = OffsetDateTime::now_utc();
    let mut records = Vec::with_capacity(settings.log_events);
    for messages in log_runs(settings.log_events)? {
        for event in messages? {
            let sequence = records.len() as u64 + 1;
            let time = start + time::Duration::milliseconds(sequence as i64);
            records.push(LogRecord::of_event(&namespace, sequence, time, &event));
        }
    }
    let mut rounds = Vec::with_capacity(settings.rounds);
    for _ in 0..settings.rounds {
        let start = Instant::now();
        let mut board = Folded::<RunBoard>::default();
        for record in &records {
            board.apply(record);
        }
        rounds.push(records.len() as f64 / start.elapsed().as_secs_f64());
        anyhow::ensure!(
            board.applied == records.len() as u64,
            "the board folded {} of {} records",
            board.applied,
            records.len()
        );
    }
    let events_per_s = median(&rounds);
    Ok(FoldReport {
        scenario: "fold",
        events_per_s,
        ns_per_event: 1e9 / events_per_s,
        log_events: settings.log_events,
        rounds: settings.rounds,
        rounds_events_per_s: rounds,
    })
}

pub async fn replay(client: &async_nats::Client, settings: &Settings) -> anyhow::Result<Report> {
    fill(client, settings).await?;
    let jetstream = jetstream::new(client.clone());
    let projector = Projector::new(jetstream.clone(), Namespace::default());
    let (mut raw_rounds, mut ours_rounds, mut push_rounds) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..settings.rounds {
        let start = Instant::now();
        let read = raw_read(&jetstream, "events.>").await?;
        raw_rounds.push(read as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let pushed = raw_push_read(&jetstream, "events.>").await?;
        push_rounds.push(pushed as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let board = projector.rebuild::<RunBoard>(AsOf::Now, false).await?;
        ours_rounds.push(board.applied as f64 / start.elapsed().as_secs_f64());
        anyhow::ensure!(
            board.applied == read && board.state.len() == settings.log_events.div_ceil(RUN_LENGTH),
            "the board folded {} events into {} runs; the log holds {read}",
            board.applied,
            board.state.len()
        );
    }
    let mut report = Report::throughput("replay", settings, raw_rounds, ours_rounds);
    report.messages = settings.log_events;
    report.payload_bytes = 64;
    report.raw_is = Some("async-nats's ordered pull consumer reading every message");
    Ok(report.with_other(
        "also_raw",
        "async-nats's ordered push consumer reading every message",
        push_rounds,
    ))
}

/// The `trace` scenario's figures.
#[derive(Debug, Serialize)]
pub struct TraceReport {
    pub scenario: &'static str,
    /// Ours: reading and building one run's trace, median over the rounds.
    pub latency_ms: f64,
    pub raw: f64,
    pub ours: f64,
    pub unit: &'static str,
    /// raw/ours, so higher stays better.
    pub ratio: f64,
    pub messages_read: u64,
    pub run_events: usize,
    pub log_events: usize,
    pub rounds: usize,
}

pub async fn trace(
    client: &async_nats::Client,
    settings: &Settings,
) -> anyhow::Result<TraceReport> {
    let runs = fill(client, settings).await?;
    let jetstream = jetstream::new(client.clone());
    let namespace = Namespace::default();
    let correlation = format!("run-{}", runs / 2);
    let rounds = settings.rounds.max(5) * 4;
    let (mut raw_rounds, mut ours_rounds) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..rounds {
        let start = Instant::now();
        raw_read(&jetstream, &namespace.correlation_filter(&correlation)).await?;
        raw_rounds.push(start.elapsed().as_secs_f64() * 1000.0);

        let start = Instant::now();
        let trace = RunTrace::read(&jetstream, &namespace, &correlation, &[]).await?;
        ours_rounds.push(start.elapsed().as_secs_f64() * 1000.0);
        last = Some(trace);
    }
    let trace = last.context("no rounds")?;
    let (raw, ours) = (median(&raw_rounds), median(&ours_rounds));
    Ok(TraceReport {
        scenario: "trace",
        latency_ms: ours,
        raw,
        ours,
        unit: "ms",
        ratio: if ours > 0.0 { raw / ours } else { 0.0 },
        messages_read: trace.messages_read,
        run_events: trace.len(),
        log_events: settings.log_events,
        rounds,
    })
}
