//! The harness for choreo's integration tests: a real nats-server per test with the streams set
//! up, agents run in tasks that can be stopped or killed, reading what the streams hold, and
//! waiting for conditions instead of sleeping.
//!
//! The bus's conformance suite (`bus/tests/`) and the multi-agent and fault tests in this
//! directory share it.

pub mod cli;
pub mod compose;
pub mod http;
pub mod metrics;
pub mod team;

use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use choreo_bus::log::{LogQuery, LogReader, LogRecord};
use choreo_bus::{
    Agent, DeadLetter, Emit, Event, EventType, Handler, NatsConfig, Publisher, RootEvent, Runtime,
    RuntimeConfig, StreamsConfig, ensure_streams, runtime::Backoff,
};
use choreo_local_nats::{NatsCluster, NatsServer};
use prost::Message;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The workspace's root folder: where the deployment files and the README are.
#[allow(
    clippy::expect_used,
    reason = "this crate lives one folder below the workspace"
)]
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// A file of the workspace, as text; a missing one fails the test, naming it.
#[allow(
    clippy::panic,
    reason = "a missing workspace file should fail the test"
)]
pub fn workspace_file(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// The variables named in the README's one configuration table: what the container, compose
/// and Kubernetes checks hold their settings against.
#[allow(
    clippy::expect_used,
    reason = "the workspace's own README and a constant pattern; a failure should fail the test"
)]
pub fn documented_variables() -> std::collections::BTreeSet<String> {
    let readme = workspace_file("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Configuration"))
        .expect("a Configuration section in the README");
    let variable = regex::Regex::new(r"`([A-Z][A-Z0-9_]+)`").expect("a valid pattern");
    section
        .lines()
        .filter(|line| line.starts_with('|'))
        .flat_map(|line| {
            variable
                .captures_iter(line)
                .map(|c| c[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// How long any one condition in these tests may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A server (or a cluster, `S`) with the streams set up, and a connection to it.
#[derive(Debug)]
pub struct Bus<S = NatsServer> {
    pub server: S,
    /// Every server's URL: each connection is given them all.
    urls: Vec<String>,
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub publisher: Publisher,
}

impl Bus {
    /// A fresh server with the streams set up.
    pub async fn start() -> anyhow::Result<Bus> {
        Self::on(NatsServer::start().await?, NatsConfig::default()).await
    }

    /// Connects to `server` (with `auth`'s credentials, if any) and sets up the streams.
    pub async fn on(server: NatsServer, auth: NatsConfig) -> anyhow::Result<Bus> {
        let urls = vec![server.url()];
        let client = connect(&urls, auth).await?;
        let jetstream = jetstream::new(client.clone());
        ensure_streams(&jetstream, &StreamsConfig::default()).await?;
        Ok(Bus::with(server, urls, client))
    }
}

impl Bus<NatsCluster> {
    /// A fresh three-server cluster with the streams set up at three replicas.
    pub async fn start_cluster() -> anyhow::Result<Bus<NatsCluster>> {
        let cluster = NatsCluster::start().await?;
        let urls = cluster.urls();
        let client = connect(&urls, NatsConfig::default()).await?;
        ensure_replicated_streams(&jetstream::new(client.clone()), NatsCluster::SIZE).await?;
        Ok(Bus::with(cluster, urls, client))
    }
}

impl<S> Bus<S> {
    fn with(server: S, urls: Vec<String>, client: async_nats::Client) -> Bus<S> {
        let jetstream = jetstream::new(client.clone());
        let publisher = Publisher::new(jetstream.clone(), Default::default());
        Bus {
            server,
            urls,
            client,
            jetstream,
            publisher,
        }
    }

    /// A new, separate connection (as another process would have).
    pub async fn connect(&self, auth: NatsConfig) -> anyhow::Result<async_nats::Client> {
        connect(&self.urls, auth).await
    }

    /// Publishes a root event with a JSON payload, optionally into an existing run.
    pub async fn publish(
        &self,
        event_type: &str,
        data: serde_json::Value,
        correlation: Option<&str>,
    ) -> anyhow::Result<Event> {
        let mut root = RootEvent::new(Emit::json(EventType::new(event_type)?, &data)?, "test");
        if let Some(correlation) = correlation {
            root = root.with_correlation_id(correlation);
        }
        let event = root.into_event()?;
        self.publisher.send_event(&event).await?.confirmed().await?;
        Ok(event)
    }

    /// Every event stored on subjects matching `filter`, in stream order; the runtime's
    /// records of quiet handlings (`choreo.handled`) left out, since whether one is written
    /// depends on how long a handling took, not on what the run did ([`Bus::records`] keeps
    /// them).
    pub async fn events(&self, filter: &str) -> anyhow::Result<Vec<Event>> {
        Ok(self
            .records(filter)
            .await?
            .into_iter()
            .filter(|event| event.r#type != choreo_bus::handling::HANDLED)
            .collect())
    }

    /// Every envelope stored on subjects matching `filter`, in stream order, the runtime's
    /// handling records included.
    pub async fn records(&self, filter: &str) -> anyhow::Result<Vec<Event>> {
        self.raw("EVENTS", filter)
            .await?
            .into_iter()
            .map(|record| Ok(record.decode()?))
            .collect()
    }

    /// Every dead letter stored, in order.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        self.raw("DEADLETTERS", "dlq.>")
            .await?
            .into_iter()
            .map(|record| Ok(DeadLetter::decode(record.payload)?))
            .collect()
    }

    /// The records of `stream` on `filter`, in order.
    pub async fn raw(&self, stream: &str, filter: &str) -> anyhow::Result<Vec<LogRecord>> {
        let mut reader =
            LogReader::open(&self.jetstream, stream, LogQuery::filtered(filter)).await?;
        let mut out = Vec::new();
        while let Some(record) = tokio::time::timeout(PATIENCE, reader.next())
            .await
            .context("ordered read stalled")??
        {
            out.push(record);
        }
        Ok(out)
    }

    /// Starts `agent` on its own connection; stop it with the returned [`Running::stop`].
    pub async fn run<H: Handler>(
        &self,
        agent: Agent,
        handler: H,
        config: RuntimeConfig,
    ) -> anyhow::Result<Running> {
        self.run_as(NatsConfig::default(), agent, handler, config)
            .await
    }

    /// Like [`Bus::run`], connecting with `auth`'s credentials.
    pub async fn run_as<H: Handler>(
        &self,
        auth: NatsConfig,
        agent: Agent,
        handler: H,
        config: RuntimeConfig,
    ) -> anyhow::Result<Running> {
        let client = self.connect(auth).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            Runtime::new(client, agent, handler)
                .config(config)
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Running {
            stop: Some(stop),
            task,
        })
    }
}

async fn connect(urls: &[String], auth: NatsConfig) -> anyhow::Result<async_nats::Client> {
    let config = NatsConfig {
        servers: urls.to_vec(),
        ..auth
    };
    Ok(config.connect().await?)
}

/// A runtime running in a task.
#[derive(Debug)]
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), choreo_bus::runtime::RuntimeError>>,
}

impl Running {
    /// Signals shutdown without waiting.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits for the runtime to drain and return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.request_stop();
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .context("runtime did not stop")???;
        Ok(())
    }

    /// Stops the runtime's task where it is, without draining: as if the process died.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Polls `condition` until it holds, failing after [`PATIENCE`] with `what`.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if condition().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Settings that make retries and redeliveries quick enough for tests.
pub fn quick_config() -> RuntimeConfig {
    RuntimeConfig {
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            multiplier: 2,
        },
        ack_wait: Duration::from_secs(2),
        max_deliveries: 3,
        shutdown_grace: Duration::from_secs(20),
        ..RuntimeConfig::default()
    }
}

#[allow(
    clippy::expect_used,
    reason = "a test's own literal types; a typo should fail the test"
)]
pub fn event_type(name: &str) -> EventType {
    EventType::new(name).expect("test event types are valid")
}

/// Sets up the streams with `replicas` copies each, on a cluster. A cluster that has just
/// elected its meta leader may not have heard from every server yet and cannot place the
/// replicas; that refusal is retryable, so it is asked again until it passes or [`PATIENCE`]
/// runs out.
pub async fn ensure_replicated_streams(
    jetstream: &jetstream::Context,
    replicas: usize,
) -> anyhow::Result<()> {
    let config = StreamsConfig {
        replicas,
        ..StreamsConfig::default()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match ensure_streams(jetstream, &config).await {
            Ok(_) => return Ok(()),
            Err(err) if err.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err).context("setting up the replicated streams"),
        }
    }
}
