//! `handle`: a raw pull consumer with explicit acks vs the agent runtime with a no-op handler.
//!
//! The stream is preloaded once with envelopes spread over 256 runs; every round binds a fresh
//! durable consumer that reads them all. Both sides pull in batches of the runtime's default
//! size with the same `max_ack_pending`, and both clocks start before the consumer is created
//! and stop when the last message has been handled (raw: acked).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
};
use choreo_bus::{
    Agent, Emit, EventType, Handler, HandlerError, Incoming, Publisher, Runtime, RuntimeConfig,
};
use futures::StreamExt;
use tokio::sync::{Notify, oneshot};

use crate::publish::publish_envelopes;
use crate::{Report, Settings, fresh_streams, payload, run_ids};

const EVENT_TYPE: &str = "bench.handled";

pub async fn run(client: &async_nats::Client, settings: &Settings) -> anyhow::Result<Report> {
    fresh_streams(client).await?;
    let jetstream = jetstream::new(client.clone());
    preload(&jetstream, settings).await?;
    let stream = jetstream.get_stream("EVENTS").await?;

    let (mut raw_rounds, mut ours_rounds) = (Vec::new(), Vec::new());
    for round in 0..settings.rounds {
        raw_rounds.push(raw_round(&stream, settings.messages, round).await?);
        ours_rounds.push(ours_round(client, settings.messages, round).await?);
        stream.delete_consumer(&format!("raw-{round}")).await?;
        stream.delete_consumer(&format!("ours-{round}")).await?;
    }
    Ok(Report::throughput(
        "handle",
        settings,
        raw_rounds,
        ours_rounds,
    ))
}

async fn preload(jetstream: &jetstream::Context, settings: &Settings) -> anyhow::Result<()> {
    let publisher = Publisher::new(jetstream.clone(), Default::default());
    let event_type = EventType::new(EVENT_TYPE)?;
    let data = bytes::Bytes::from(serde_json::to_vec(&payload(settings.payload))?);
    publish_envelopes(
        &publisher,
        &event_type,
        &data,
        &run_ids(),
        settings.messages,
    )
    .await?;
    Ok(())
}

async fn raw_round(
    stream: &jetstream::stream::Stream,
    n: usize,
    round: usize,
) -> anyhow::Result<f64> {
    let defaults = RuntimeConfig::default();
    let start = Instant::now();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(format!("raw-{round}")),
            filter_subject: format!("events.*.{EVENT_TYPE}"),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: defaults.max_ack_pending,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(defaults.batch)
        .messages()
        .await?;
    let mut handled = 0;
    while let Some(message) = messages.next().await {
        message?
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        handled += 1;
        if handled == n {
            break;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Counts events and wakes the bench when the last one is in.
struct Counting {
    seen: AtomicUsize,
    target: usize,
    done: Arc<Notify>,
}

impl Handler for Counting {
    async fn handle(&self, _event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
        Ok(Vec::new())
    }
}

async fn ours_round(client: &async_nats::Client, n: usize, round: usize) -> anyhow::Result<f64> {
    let agent = Agent::builder(format!("ours-{round}"))
        .subscribes(EVENT_TYPE)
        .build()?;
    let done = Arc::new(Notify::new());
    let handler = Counting {
        seen: AtomicUsize::new(0),
        target: n,
        done: Arc::clone(&done),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let start = Instant::now();
    let runtime = tokio::spawn(Runtime::new(client.clone(), agent, handler).run(async {
        let _ = stopped.await;
    }));
    done.notified().await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = stop.send(());
    runtime.await??;
    Ok(rate)
}
