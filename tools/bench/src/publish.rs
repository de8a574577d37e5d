//! `publish`: the bus's `Publisher` vs two raw JetStream publishes.
//!
//! - `raw`: pre-made bytes as long as our encoded envelope, on one subject, without headers:
//!   what a message of that size costs the client and the server.
//! - `same_wire`: our exact messages, published raw: the subjects (`<ns>.<run>.<type>`, spread
//!   over 256 runs), the headers (`Nats-Msg-Id`, `Choreo-Depth`, `traceparent`, and
//!   `Choreo-Causation-Id` where an event has one) and the encoded envelopes, all built before the clock starts.
//!   Ours over it (`ratio_same_wire`) is what our own code costs; `same_wire` over `raw` is
//!   what the server charges for what the design puts on the wire (deduplication on the id,
//!   a subject per run).
//! - ours: `Publisher::send_event` for envelopes built, validated and encoded (id, time, trace
//!   context) inside the timed loop, since that is what a caller of `Publisher` pays.
//!
//! Every side of every round publishes into a stream created afresh (the bus's default `EVENTS`
//! settings, two-minute duplicate window included), so none inherits another's messages or the
//! ids in its duplicate window; every envelope has an id of its own, so nothing is deduplicated.
//! All sides keep the same number of acknowledgements in flight, and the order of the sides
//! turns each round. Besides the rates, `client_cpu_us_per_msg` gives this process's CPU time
//! per message on each side (medians): on a machine shared with other work it moves less than
//! the rates do, and it shows what our code adds on the client.
//!
//! Before the rounds, one root and one child sent by `Publisher` are read back from the stream
//! and compared with what the `same_wire` side would send for them, so the two stay identical
//! when the bus changes its messages.

use std::future::Future;
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use choreo_bus::envelope::stamp_child;
use choreo_bus::publish::event_headers;
use choreo_bus::{
    AgentName, Emit, Event, EventType, Namespace, Publisher, RootEvent, envelope::JSON,
};
use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message;

use crate::{Report, Settings, fresh_streams, payload, run_ids, with_client_cpu};

/// Acknowledgements awaited at once, on every side (below async-nats's default cap of 5,000).
pub const ACK_WINDOW: usize = 4096;

const EVENT_TYPE: &str = "bench.published";

/// The sides of a round, in the order of the first round; each indexes its figures.
#[derive(Debug, Clone, Copy)]
enum Side {
    Raw = 0,
    SameWire = 1,
    Ours = 2,
}

const SIDES: [Side; 3] = [Side::Raw, Side::SameWire, Side::Ours];

impl Side {
    /// Its name in the report.
    fn name(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::SameWire => "same_wire",
            Side::Ours => "ours",
        }
    }
}

pub async fn run(client: &async_nats::Client, settings: &Settings) -> anyhow::Result<Report> {
    let jetstream = jetstream::new(client.clone());
    let namespace = Namespace::default();
    let publisher = Publisher::new(jetstream.clone(), namespace.clone());
    let event_type = EventType::new(EVENT_TYPE)?;
    // Every side starts from payload bytes made once, as any publisher would have them.
    let data = Bytes::from(serde_json::to_vec(&payload(settings.payload))?);
    let runs = run_ids();

    fresh_streams(client).await?;
    check_same_wire(&jetstream, &publisher, &event_type, &data).await?;
    let sample = root_event(&event_type, &data, &runs[0])?;
    let raw_payload = Bytes::from(vec![b'x'; sample.encoded_len()]);

    // Per side, indexed by `Side`: msgs/s and client CPU per message, round by round.
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for round in 0..settings.rounds {
        for &side in SIDES
            .iter()
            .cycle()
            .skip(round % SIDES.len())
            .take(SIDES.len())
        {
            fresh_streams(client).await?;
            let n = settings.messages;
            let (rate, cpu_us) = match side {
                Side::Raw => {
                    with_client_cpu(
                        n,
                        pipelined(n, |_| async {
                            let ack = jetstream
                                .publish("events.bench-raw.bench.published", raw_payload.clone())
                                .await?;
                            Ok(async move {
                                ack.await?;
                                Ok(())
                            })
                        }),
                    )
                    .await?
                }
                Side::SameWire => {
                    let messages = (0..n)
                        .map(|i| {
                            let event = root_event(&event_type, &data, &runs[i % runs.len()])?;
                            Ok(WireMessage::of(&namespace, &event))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    with_client_cpu(n, publish_wire(&jetstream, messages)).await?
                }
                Side::Ours => {
                    with_client_cpu(
                        n,
                        publish_envelopes(&publisher, &event_type, &data, &runs, n),
                    )
                    .await?
                }
            };
            rates[side as usize].push(rate);
            cpu[side as usize].extend(cpu_us);
        }
    }
    let [raw_rounds, same_wire_rounds, ours_rounds] = rates;
    let mut report = Report::throughput("publish", settings, raw_rounds, ours_rounds).with_other(
        "same_wire",
        "a raw JetStream publish of our exact messages (subjects, headers, bytes) built \
         before the clock starts",
        same_wire_rounds,
    );
    for (side, cpu) in SIDES.iter().zip(&cpu) {
        report = report.with_client_cpu(side.name(), cpu);
    }
    Ok(report)
}

/// A root event of `event_type` carrying `data` in run `run`, built as a `Publisher` caller
/// builds one (a fresh id, the time now, a new trace).
fn root_event(event_type: &EventType, data: &Bytes, run: &str) -> anyhow::Result<Event> {
    let emit = Emit::new(event_type.clone(), JSON, data.clone());
    Ok(RootEvent::new(emit, "bench")
        .with_correlation_id(run)
        .into_event()?)
}

/// One event as `Publisher::send_event` puts it on the wire.
#[derive(Debug, Clone, PartialEq)]
struct WireMessage {
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
}

impl WireMessage {
    /// The subject, headers and bytes the bus sends for `event`, built with the bus's own
    /// header function before the clock starts; [`check_same_wire`] compares them with what
    /// the bus really stored.
    fn of(namespace: &Namespace, event: &Event) -> WireMessage {
        WireMessage {
            subject: namespace
                .event_subject(&event.correlation_id, &event.r#type)
                .into(),
            headers: event_headers(event),
            payload: event.encode_to_vec().into(),
        }
    }
}

/// Sends a root and a child through `publisher`, reads both back from the stream, and fails
/// unless each is stored exactly as [`WireMessage::of`] would have sent it.
async fn check_same_wire(
    jetstream: &jetstream::Context,
    publisher: &Publisher,
    event_type: &EventType,
    data: &Bytes,
) -> anyhow::Result<()> {
    let root = root_event(event_type, data, "bench-check")?;
    let child = stamp_child(
        &root,
        &AgentName::new("bench-agent")?,
        0,
        Emit::new(event_type.clone(), JSON, data.clone()),
    );
    let stream = jetstream
        .get_stream(publisher.namespace().stream_name())
        .await?;
    for event in [root, child] {
        let published = publisher.send_event(&event).await?.confirmed().await?;
        let stored = stream.get_raw_message(published.stream_sequence).await?;
        let sent = WireMessage {
            subject: stored.subject,
            headers: stored.headers,
            payload: stored.payload,
        };
        let ours = WireMessage::of(publisher.namespace(), &event);
        anyhow::ensure!(
            sent == ours,
            "the same_wire side no longer sends what Publisher sends: Publisher stored {sent:?}, \
             the bench would send {ours:?}; WireMessage::of must send what \
             Publisher::send_event sends"
        );
    }
    Ok(())
}

/// Publishes pre-built messages raw, in order; returns msgs/s.
async fn publish_wire(
    jetstream: &jetstream::Context,
    messages: Vec<WireMessage>,
) -> anyhow::Result<f64> {
    let n = messages.len();
    let mut messages = messages.into_iter();
    pipelined(n, |_| {
        let message = messages.next();
        async move {
            let message = message.context("fewer messages than publishes")?;
            let ack = jetstream
                .send_publish(
                    message.subject,
                    PublishMessage::build()
                        .headers(message.headers)
                        .payload(message.payload),
                )
                .await?;
            Ok(async move {
                ack.await?;
                Ok(())
            })
        }
    })
    .await
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
        let event = root_event(event_type, data, &runs[i % runs.len()]);
        async move {
            let pending = publisher.send_event(&event?).await?;
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
