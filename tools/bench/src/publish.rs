//! `publish`: raw JetStream async publish vs the bus publishing envelopes.
//!
//! Both sides publish the same number of messages into the same stream (the bus's default
//! `EVENTS` settings, duplicate window included) with the same number of acknowledgements in
//! flight. Both start from the same payload bytes, made once. The raw side publishes bytes as
//! long as our encoded envelope; ours builds, validates and encodes each envelope (id, time,
//! trace context) and adds its headers inside the timed loop, since that is what a caller of
//! `Publisher` pays.

use std::future::Future;
use std::time::Instant;

use async_nats::jetstream;
use bytes::Bytes;
use choreo_bus::{Emit, EventType, Publisher, RootEvent, envelope::JSON};
use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message;

use crate::{Report, Settings, fresh_streams, payload, run_ids};

/// Acknowledgements awaited at once, on both sides (below async-nats's default cap of 5,000).
pub const ACK_WINDOW: usize = 4096;

pub async fn run(client: &async_nats::Client, settings: &Settings) -> anyhow::Result<Report> {
    fresh_streams(client).await?;
    let jetstream = jetstream::new(client.clone());
    let publisher = Publisher::new(jetstream.clone(), Default::default());
    let event_type = EventType::new("bench.published")?;
    // Both sides start from payload bytes made once, as any publisher would have them.
    let data = Bytes::from(serde_json::to_vec(&payload(settings.payload))?);
    let runs = run_ids();
    let sample = RootEvent::new(Emit::new(event_type.clone(), JSON, data.clone()), "bench")
        .with_correlation_id(runs[0].clone())
        .into_event()?;
    let raw_payload = Bytes::from(vec![b'x'; sample.encoded_len()]);

    let (mut raw_rounds, mut ours_rounds) = (Vec::new(), Vec::new());
    for _ in 0..settings.rounds {
        raw_rounds.push(
            pipelined(settings.messages, |_| async {
                let ack = jetstream
                    .publish("events.bench-raw.bench.published", raw_payload.clone())
                    .await?;
                Ok(async move {
                    ack.await?;
                    Ok(())
                })
            })
            .await?,
        );
        ours_rounds.push(
            publish_envelopes(&publisher, &event_type, &data, &runs, settings.messages).await?,
        );
    }
    Ok(Report::throughput(
        "publish",
        settings,
        raw_rounds,
        ours_rounds,
    ))
}

/// Publishes `n` envelopes of `event_type` carrying `data`, spread over `runs`; returns msgs/s.
pub async fn publish_envelopes(
    publisher: &Publisher,
    event_type: &EventType,
    data: &Bytes,
    runs: &[String],
    n: usize,
) -> anyhow::Result<f64> {
    pipelined(n, |i| {
        let emit = Emit::new(event_type.clone(), JSON, data.clone());
        let root = RootEvent::new(emit, "bench").with_correlation_id(runs[i % runs.len()].clone());
        async move {
            let pending = publisher.send_event(&root.into_event()?).await?;
            Ok(async move {
                pending.confirmed().await?;
                Ok(())
            })
        }
    })
    .await
}

/// Sends `n` messages with up to [`ACK_WINDOW`] acknowledgements outstanding; returns msgs/s.
pub async fn pipelined<S, SendFut, AckFut>(n: usize, mut send: S) -> anyhow::Result<f64>
where
    S: FnMut(usize) -> SendFut,
    SendFut: Future<Output = anyhow::Result<AckFut>>,
    AckFut: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for i in 0..n {
        in_flight.push(send(i).await?);
        if in_flight.len() >= ACK_WINDOW
            && let Some(acked) = in_flight.next().await
        {
            acked?;
        }
    }
    while let Some(acked) = in_flight.next().await {
        acked?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
