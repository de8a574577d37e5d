//! `handle`: a raw pull consumer with explicit acks vs the agent runtime (default settings,
//! default guards included) with a no-op handler.
//!
//! `guards`: the runtime with every guard configured but not tripping (rate limits far above
//! the pace, the handler breaker, depth and cycle limits, run budgets) vs the runtime with all
//! guards off. There, each event emits one child, so the publishing guards (depth, the run's
//! event budget, the publish rate) are on the path too; both sides do the same work.
//!
//! Every runtime serves its metrics (`metrics_listen` on a free loopback port, scraped by
//! nobody), as a deployed agent does: the counting is on the measured path.
//!
//! The stream is preloaded once with envelopes spread over 256 runs; every round binds a fresh
//! durable consumer that reads them all. Both sides pull in batches of the runtime's default
//! size with the same `max_ack_pending`, and both clocks start before the consumer is created
//! and stop when the last message has been handled (raw: acked). The side that goes first
//! changes every round (`guards` too). Both report this process's CPU time per handled event
//! on each side (`client_cpu_us_per_msg`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
};
use choreo_bus::guard::{BudgetLimits, GuardsConfig, Rate, RateLimit};
use choreo_bus::{
    Agent, Emit, EventType, Handler, HandlerError, Incoming, Publisher, Runtime, RuntimeConfig,
};
use futures::StreamExt;
use tokio::sync::{Notify, oneshot};

use crate::publish::publish_envelopes;
use crate::{PairedRounds, Report, Settings, fresh_streams, payload, run_ids, with_client_cpu};

const EVENT_TYPE: &str = "bench.handled";
const ECHO_TYPE: &str = "bench.echoed";

pub async fn run(client: &async_nats::Client, settings: &Settings) -> anyhow::Result<Report> {
    if !settings.preloaded {
        fresh_streams_preloaded(client, settings).await?;
    }
    let mut stream = jetstream::new(client.clone()).get_stream("EVENTS").await?;
    // Each round waits for `messages` events: fewer in the stream would wait forever.
    let held = stream.info().await?.state.messages;
    anyhow::ensure!(
        held >= settings.messages as u64,
        "the EVENTS stream holds {held} events, fewer than --messages {}",
        settings.messages
    );

    let n = settings.messages;
    let mut rounds = PairedRounds::default();
    for round in 0..settings.rounds {
        let ours = format!("ours-{round}");
        let config = with_metrics(RuntimeConfig::default());
        rounds
            .run(
                round,
                with_client_cpu(n, raw_round(&stream, n, round)),
                with_client_cpu(n, runtime_round(client, n, &ours, config, false)),
            )
            .await?;
        stream.delete_consumer(&format!("raw-{round}")).await?;
        stream.delete_consumer(&ours).await?;
    }
    Ok(rounds.report("handle", settings))
}

/// `guards`: the runtime with every guard on but not tripping vs with none; ratio = with /
/// without.
pub async fn run_guards(
    client: &async_nats::Client,
    settings: &Settings,
) -> anyhow::Result<Report> {
    fresh_streams_preloaded(client, settings).await?;
    let stream = jetstream::new(client.clone()).get_stream("EVENTS").await?;

    let n = settings.messages;
    let mut rounds = PairedRounds::default();
    for round in 0..settings.rounds {
        let (without, with) = (format!("unguarded-{round}"), format!("guarded-{round}"));
        let unguarded = with_metrics(RuntimeConfig {
            guards: GuardsConfig::off(),
            ..RuntimeConfig::default()
        });
        rounds
            .run(
                round,
                with_client_cpu(n, runtime_round(client, n, &without, unguarded, true)),
                with_client_cpu(n, runtime_round(client, n, &with, guarded()?, true)),
            )
            .await?;
        stream.delete_consumer(&without).await?;
        stream.delete_consumer(&with).await?;
    }
    let mut report = rounds.report("guards", settings);
    report.raw_is = Some("the runtime with every guard off");
    Ok(report)
}

/// Every guard on, none tripping: limits far above what one run or the machine reaches.
fn guarded() -> anyhow::Result<RuntimeConfig> {
    let unreachable = RateLimit {
        rate: Rate::per_second(10_000_000)?,
        burst: 1000,
    };
    Ok(with_metrics(RuntimeConfig {
        guards: GuardsConfig {
            handle_rate: Some(unreachable),
            publish_rates: [(EventType::new(ECHO_TYPE)?, unreachable)].into(),
            budget: BudgetLimits {
                max_events: Some(100_000_000),
                max_tokens: Some(100_000_000),
                max_cost_micros: None,
            },
            ..GuardsConfig::default()
        },
        ..RuntimeConfig::default()
    }))
}

/// New streams, `EVENTS` holding `settings.messages` events for the rounds to read.
pub async fn fresh_streams_preloaded(
    client: &async_nats::Client,
    settings: &Settings,
) -> anyhow::Result<()> {
    fresh_streams(client).await?;
    let publisher = Publisher::new(jetstream::new(client.clone()), Default::default());
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

/// Counts events (optionally answering each with one small child) and wakes the bench when
/// the last one is in.
struct Counting {
    seen: AtomicUsize,
    target: usize,
    done: Arc<Notify>,
    echo: Option<EventType>,
}

impl Handler for Counting {
    async fn handle(&self, _event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        let children = match &self.echo {
            Some(echo) => vec![Emit::new(
                echo.clone(),
                "application/json",
                bytes::Bytes::from_static(b"{}"),
            )],
            None => Vec::new(),
        };
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
        Ok(children)
    }
}

/// `config` serving its metrics on a free loopback port.
fn with_metrics(config: RuntimeConfig) -> RuntimeConfig {
    RuntimeConfig {
        metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..config
    }
}

/// One round of the runtime as agent `name` reading all `n` preloaded events; msgs/s.
async fn runtime_round(
    client: &async_nats::Client,
    n: usize,
    name: &str,
    config: RuntimeConfig,
    echo: bool,
) -> anyhow::Result<f64> {
    let mut agent = Agent::builder(name).subscribes(EVENT_TYPE);
    if echo {
        agent = agent.emits(ECHO_TYPE);
    }
    let agent = agent.build()?;
    let done = Arc::new(Notify::new());
    let handler = Counting {
        seen: AtomicUsize::new(0),
        target: n,
        done: Arc::clone(&done),
        echo: echo.then(|| EventType::new(ECHO_TYPE)).transpose()?,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let start = Instant::now();
    let runtime = tokio::spawn(
        Runtime::new(client.clone(), agent, handler)
            .config(config)
            .run(async {
                let _ = stopped.await;
            }),
    );
    done.notified().await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = stop.send(());
    runtime.await??;
    Ok(rate)
}
