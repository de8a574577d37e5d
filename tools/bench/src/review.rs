//! `review`: the sample change reviewed end to end by the whole team, every agent its own
//! process: the time from publishing `review.requested` to `review.completed` arriving, one
//! review at a time, and the largest resident memory any agent process reached.
//!
//! `startup_ms`: each agent is started on its own, one after another, and timed from the
//! process's spawn to its consumer bound and pulling: the server reports a pull request of
//! the agent's durable consumer waiting (`num_waiting`), which an idle agent always has.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use choreo_bus::{Namespace, Publisher, RootEvent};
use choreo_local_nats::process::{AgentProcess, sibling_binary};
use choreo_review::events::{COMPLETED, REQUESTED};
use futures::StreamExt as _;
use serde::Serialize;

use crate::{Settings, fresh_streams, percentile};

use choreo_review::TEAM;
/// Reviews run before measuring, so connections, consumers and caches are warm.
const WARM_UP: usize = 5;
/// The longest one review may take before the benchmark gives up.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
pub struct ReviewReport {
    pub scenario: &'static str,
    pub reviews: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// The largest peak resident memory of any agent process (VmHWM), in MiB.
    pub max_agent_rss_mb: f64,
    /// Each agent's peak resident memory, in MiB.
    pub agent_rss_mb: Vec<(String, f64)>,
    /// From an agent's process start to its consumer bound and pulling, in ms.
    pub startup_ms: Startup,
    pub diff_bytes: usize,
}

pub async fn run(
    client: &async_nats::Client,
    url: &str,
    settings: &Settings,
) -> anyhow::Result<ReviewReport> {
    fresh_streams(client).await?;
    let reports = tempfile::tempdir()?;
    let logs = tempfile::tempdir()?;
    let jetstream = async_nats::jetstream::new(client.clone());
    let mut agents = Vec::new();
    let mut startups = Vec::new();
    for name in TEAM {
        let binary = sibling_binary(name).context(
            "the review benchmark runs the agents' binaries: `cargo build --release --bins`",
        )?;
        let env = [
            ("NATS_URL", url.to_string()),
            ("CHOREO_REPORTS_DIR", reports.path().display().to_string()),
            ("RUST_LOG", "warn".to_string()),
        ];
        let started = Instant::now();
        agents.push(AgentProcess::start(&binary, env, &logs.path().join(name))?);
        let consumer = name.trim_start_matches("choreo-");
        wait_until_pulling(&jetstream, consumer).await?;
        startups.push((
            consumer.to_string(),
            started.elapsed().as_secs_f64() * 1000.0,
        ));
    }
    let outcome = measure(client, settings.reviews).await;
    let mut rss: Vec<(String, f64)> = agents
        .iter()
        .map(|agent| {
            let mib = agent.peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
            (agent.name().to_string(), mib)
        })
        .collect();
    rss.sort_by(|a, b| b.1.total_cmp(&a.1));
    for agent in &mut agents {
        agent.terminate(Duration::from_secs(10)).await;
    }
    let latencies = outcome?;
    Ok(ReviewReport {
        scenario: "review",
        reviews: latencies.len(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: percentile(&latencies, 1.0),
        mean_ms: latencies.iter().sum::<f64>() / latencies.len() as f64,
        max_agent_rss_mb: rss.first().map_or(0.0, |r| r.1),
        agent_rss_mb: rss,
        diff_bytes: choreo_review::samples::REFUNDS_DIFF.len(),
        startup_ms: Startup::of(startups),
    })
}

/// How long the agents took to start, in ms.
#[derive(Debug, Serialize)]
pub struct Startup {
    pub p50: f64,
    pub max: f64,
    pub by_agent: Vec<(String, f64)>,
}

impl Startup {
    fn of(by_agent: Vec<(String, f64)>) -> Startup {
        let times: Vec<f64> = by_agent.iter().map(|(_, ms)| *ms).collect();
        Startup {
            p50: percentile(&times, 0.50),
            max: percentile(&times, 1.0),
            by_agent,
        }
    }
}

/// The longest an agent may take to start before the benchmark gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until `consumer` exists and has a pull request waiting: its agent is bound and pulling.
async fn wait_until_pulling(
    jetstream: &async_nats::jetstream::Context,
    consumer: &str,
) -> anyhow::Result<()> {
    let stream = jetstream.get_stream("EVENTS").await?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(info) = stream.consumer_info(consumer).await
            && info.num_waiting > 0
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("agent {consumer} was not pulling within {STARTUP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Milliseconds from publish to report for `reviews` reviews, one at a time.
async fn measure(client: &async_nats::Client, reviews: usize) -> anyhow::Result<Vec<f64>> {
    let jetstream = async_nats::jetstream::new(client.clone());
    let namespace = Namespace::default();
    let publisher = Publisher::new(jetstream, namespace.clone());
    let request = choreo_review::samples::refunds_request();
    let mut latencies = Vec::with_capacity(reviews);
    for index in 0..WARM_UP + reviews {
        let emit = choreo_review::emit_json(REQUESTED, &request)
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        let root = RootEvent::new(emit, "choreo-bench").into_event()?;
        // Listening before publishing, on the one subject the report can arrive on.
        let mut report = client
            .subscribe(namespace.event_subject(&root.correlation_id, COMPLETED))
            .await?;
        let started = Instant::now();
        publisher.send_event(&root).await?.confirmed().await?;
        tokio::time::timeout(REVIEW_TIMEOUT, report.next())
            .await
            .with_context(|| format!("review {index} was not completed within {REVIEW_TIMEOUT:?}"))?
            .context("the subscription ended")?;
        if index >= WARM_UP {
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(latencies)
}
