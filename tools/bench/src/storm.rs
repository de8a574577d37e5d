//! `storm`: two agents that answer each other forever (ping ↔ pong), under the default guards,
//! while a bystander pipeline (relay-a → relay-b) keeps serving other runs.
//!
//! The bystander's end-to-end latency is measured over the same paced runs twice (after a
//! warm-up pass): alone, and with `--storms` ping-pong runs started among them, spread evenly
//! over the bystander's runs so storms are raging throughout. The JSON line has
//! `published_before_stop` (the most events one storm got into the stream), `bound` (what the
//! default guards allow one storm), `stopped_by` (the guard named in the storms' dead letters),
//! and `bystander_p99_ratio` (the bystander's p99 latency with the storms over without; 1.0
//! means the storms went unnoticed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use choreo_bus::guard::GuardsConfig;
use choreo_bus::log::{LogQuery, LogReader, Until};
use choreo_bus::streams::DEAD_LETTER_STREAM;
use choreo_bus::{
    Agent, DeadLetter, Emit, EventType, HandlerError, Incoming, Publisher, RootEvent, Runtime,
    RuntimeConfig, handler_fn,
};
use futures::StreamExt;
use prost::Message;
use serde::Serialize;
use tokio::sync::{Mutex, oneshot};

use crate::{Settings, fresh_streams};

/// Bystander runs per measurement, one every [`BYSTANDER_GAP`].
const BYSTANDER_RUNS: usize = 200;
const BYSTANDER_GAP: Duration = Duration::from_millis(5);
const PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize)]
pub struct StormReport {
    pub scenario: &'static str,
    pub storms: usize,
    pub published_before_stop: usize,
    pub bound: usize,
    pub stopped_by: String,
    pub dead_letters: usize,
    pub bystander_runs: usize,
    pub bystander_p99_ms_without: f64,
    pub bystander_p99_ms_with: f64,
    pub bystander_p99_ratio: f64,
}

type Stop = oneshot::Sender<()>;

/// Starts an agent answering each `from` with one `to`, under the default settings.
fn start(
    client: &async_nats::Client,
    name: &str,
    from: &str,
    to: &str,
) -> anyhow::Result<(
    Stop,
    tokio::task::JoinHandle<Result<(), choreo_bus::runtime::RuntimeError>>,
)> {
    let agent = Agent::builder(name).subscribes(from).emits(to).build()?;
    let to = EventType::new(to)?;
    let handler = handler_fn(move |event: Incoming| {
        let to = to.clone();
        async move {
            let answer = Emit::json(to, &serde_json::json!({ "after": event.id }))
                .map_err(HandlerError::permanent)?;
            Ok(vec![answer])
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Runtime::new(client.clone(), agent, handler)
            .config(RuntimeConfig::default())
            .run(async {
                let _ = stopped.await;
            }),
    );
    Ok((stop, task))
}

pub async fn run(client: &async_nats::Client, settings: &Settings) -> anyhow::Result<StormReport> {
    fresh_streams(client).await?;
    let jetstream = jetstream::new(client.clone());
    let publisher = Publisher::new(jetstream.clone(), Default::default());
    let agents = vec![
        start(client, "ping", "ball.returned", "ball.served")?,
        start(client, "pong", "ball.served", "ball.returned")?,
        start(client, "relay-a", "work.requested", "work.relayed")?,
        start(client, "relay-b", "work.relayed", "work.done")?,
    ];

    bystander_latencies(client, &publisher, "warmup", None).await?;
    let without = bystander_latencies(client, &publisher, "quiet", None).await?;
    let with = bystander_latencies(client, &publisher, "busy", Some(settings.storms)).await?;

    // Every storm ends in a dead letter.
    let letters = wait_for_dead_letters(&jetstream, settings.storms).await?;
    for (stop, task) in agents {
        let _ = stop.send(());
        task.await??;
    }

    let mut per_storm: HashMap<String, usize> = HashMap::new();
    let stream = jetstream.get_stream("EVENTS").await?;
    let mut subjects = stream.info_with_subjects("events.*.ball.>").await?;
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry?;
        let correlation = subject.split('.').nth(1).unwrap_or_default().to_string();
        *per_storm.entry(correlation).or_default() += count;
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for letter in &letters {
        *reasons.entry(letter.reason.clone()).or_default() += 1;
    }
    let stopped_by = reasons
        .iter()
        .max_by_key(|(_, count)| **count)
        .map(|(reason, _)| {
            choreo_bus::dead_letter::DeadLetterReason::from_name(reason)
                .and_then(|r| r.guard())
                .unwrap_or(reason.as_str())
                .to_string()
        })
        .unwrap_or_else(|| "nothing".to_string());

    let (p99_without, p99_with) = (p99(&without), p99(&with));
    Ok(StormReport {
        scenario: "storm",
        storms: settings.storms,
        published_before_stop: per_storm.values().copied().max().unwrap_or(0),
        bound: default_bound(),
        stopped_by,
        dead_letters: letters.len(),
        bystander_runs: BYSTANDER_RUNS,
        bystander_p99_ms_without: p99_without * 1e3,
        bystander_p99_ms_with: p99_with * 1e3,
        bystander_p99_ratio: if p99_without > 0.0 {
            p99_with / p99_without
        } else {
            0.0
        },
    })
}

/// The events one ping-pong storm may publish under the default guards (root included): the
/// tightest of the cycle limit (each agent answers K times), the depth limit (depths 0..=max)
/// and the run's event budget.
fn default_bound() -> usize {
    let guards = GuardsConfig::default();
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    [
        guards
            .cycle
            .map(|c| 1 + 2 * to_usize(u64::from(c.max_visits))),
        guards.depth.map(|d| 1 + to_usize(u64::from(d.max))),
        guards.budget.max_events.map(|n| 1 + to_usize(n)),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(usize::MAX)
}

/// Runs [`BYSTANDER_RUNS`] paced bystander runs, starting `storms` ping-pong runs spread among
/// them if given; returns each bystander run's publish-to-done latency in seconds.
async fn bystander_latencies(
    client: &async_nats::Client,
    publisher: &Publisher,
    label: &str,
    storms: Option<usize>,
) -> anyhow::Result<Vec<f64>> {
    let mut done = client.subscribe("events.*.work.done").await?;
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let collector = {
        let started = Arc::clone(&started);
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(BYSTANDER_RUNS);
            while latencies.len() < BYSTANDER_RUNS {
                let Some(message) = done.next().await else {
                    break;
                };
                let correlation = message
                    .subject
                    .split('.')
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                if let Some(at) = started.lock().await.get(&correlation) {
                    latencies.push(at.elapsed().as_secs_f64());
                }
            }
            latencies
        })
    };

    let served = EventType::new("ball.served")?;
    let requested = EventType::new("work.requested")?;
    let mut storms_started = 0;
    let mut pace = tokio::time::interval(BYSTANDER_GAP);
    for n in 0..BYSTANDER_RUNS {
        pace.tick().await;
        while let Some(storms) = storms
            && storms_started * BYSTANDER_RUNS < storms * (n + 1)
        {
            let emit = Emit::json(served.clone(), &serde_json::json!({}))?;
            let root = RootEvent::new(emit, "bench")
                .with_correlation_id(format!("storm-{storms_started}"));
            publisher.publish_root(root).await?;
            storms_started += 1;
        }
        let correlation = format!("{label}-{n}");
        let emit = Emit::json(requested.clone(), &serde_json::json!({ "n": n }))?;
        let root = RootEvent::new(emit, "bench").with_correlation_id(correlation.clone());
        started.lock().await.insert(correlation, Instant::now());
        publisher.publish_root(root).await?;
    }
    Ok(tokio::time::timeout(PATIENCE, collector).await??)
}

async fn wait_for_dead_letters(
    jetstream: &jetstream::Context,
    expected: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let query = LogQuery::default().until(Until::Live);
    let mut reader = LogReader::open(jetstream, DEAD_LETTER_STREAM, query).await?;
    let mut letters = Vec::with_capacity(expected);
    while letters.len() < expected {
        let record = tokio::time::timeout(PATIENCE, reader.next())
            .await??
            .ok_or_else(|| anyhow::anyhow!("dead letters ended early"))?;
        letters.push(DeadLetter::decode(record.payload)?);
    }
    Ok(letters)
}

fn p99(latencies: &[f64]) -> f64 {
    crate::percentile(latencies, 0.99)
}
