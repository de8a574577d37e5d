//! choreo on a three-node NATS JetStream cluster in containers (`compose.cluster.yaml`): the
//! streams at three replicas, every agent and the gateway given all three URLs. Reviews are
//! posted through the gateway while
//!
//! 1. the container of the node that leads `EVENTS` is killed (`docker kill`), and started
//!    again once the reviews posted meanwhile are delivered;
//! 2. the node that leads `EVENTS` then is cut off the network (`docker network disconnect`)
//!    and connected again once the reviews posted meanwhile are delivered.
//!
//! Every review is delivered exactly once (each run holds what the first run held, so no
//! finding twice and none missing), nothing is dead-lettered, and the pauses are printed: how
//! long the stream had no leader, the longest a post waited for the gateway to take it, and
//! the slowest review from the gateway's answer to its report.
//!
//! Where no engine answers the test says so and passes, unless `CHOREO_REQUIRE_DOCKER=1`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use choreo_bus::log::{LogQuery, LogReader};
use choreo_bus::{Event, NatsConfig};
use choreo_testkit::PATIENCE;
use choreo_testkit::compose::{
    Gateway, Project, checked, docker, engine_available, events, poll, shape, team_services,
    wait_delivered,
};

const NODES: [&str; 3] = ["nats-1", "nats-2", "nats-3"];

/// Reviews posted before each fault and while it lasts.
const BEFORE: usize = 3;
const DURING: usize = 6;

#[tokio::test]
async fn every_review_is_delivered_once_through_a_killed_leader_and_a_partitioned_node()
-> anyhow::Result<()> {
    if !engine_available("tests/compose_cluster.rs") {
        return Ok(());
    }
    let project = Project::new("compose.cluster.yaml");
    let result = faults(&project).await;
    project.with_logs_on_failure(result)
}

async fn faults(project: &Project) -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!("{}", project.build_images().await?);
    checked(&mut project.compose(&["up", "--detach", "--no-build"])).await?;
    project.wait_healthy(&NODES).await?;
    project.wait_healthy(&["gateway"]).await?;
    project.wait_healthy(&team_services()).await?;
    let up_at = started.elapsed();

    let cluster = Cluster::new(project).await?;
    let gateway = Gateway {
        http: reqwest::Client::new(),
        url: format!("http://{}", project.published("gateway", 8080).await?),
        token: project.token.clone(),
    };
    let mut reviews = Reviews::new(&gateway, &project.name);

    // The streams were made with three copies by the one-shot `streams` service.
    let info = cluster.events_stream(None).await?;
    let replicas = info.config.num_replicas;
    assert_eq!(replicas, 3, "EVENTS has {replicas} replicas");

    // What one run of the sample is, for every run below to be compared with.
    let sample_run = reviews.post().await?;
    let log = cluster.log(None).await?;
    wait_delivered(&log, &BTreeSet::from([sample_run.clone()])).await?;
    let sample = shape(&events(&log, &format!("events.{sample_run}.>")).await?);

    // 1. The leader's container killed while reviews are in flight, then started again.
    let leader = cluster.leader(None).await?;
    let container = project.container(&leader).await?;
    let killed = ride_out(
        &cluster,
        &mut reviews,
        "leader killed",
        &leader,
        &["kill", &container],
    )
    .await?;
    checked(&mut project.compose(&["start", &leader])).await?;
    cluster.refresh(node_named(&leader)?).await?;
    cluster.wait_all_current().await?;

    // 2. The node leading now cut off the network while reviews are in flight, then let back.
    let cut = cluster.leader(None).await?;
    let container = project.container(&cut).await?;
    let network = format!("{}_default", project.name);
    let partitioned = ride_out(
        &cluster,
        &mut reviews,
        "node cut off",
        &cut,
        &["network", "disconnect", &network, &container],
    )
    .await?;
    // Back on the network under its service name, which the other nodes' routes and every
    // client's URL use.
    docker(&["network", "connect", "--alias", &cut, &network, &container]).await?;
    cluster.wait_all_current().await?;
    reviews.post_many(BEFORE).await?;

    // Every review delivered, each run the sample's run again, nothing dead-lettered.
    let log = cluster.log(None).await?;
    wait_delivered(&log, &reviews.runs()).await?;
    for run in reviews.runs() {
        assert_eq!(
            shape(&events(&log, &format!("events.{run}.>")).await?),
            sample,
            "run {run}"
        );
    }
    let mut dead = LogReader::open(&log, "DEADLETTERS", LogQuery::filtered("dlq.>")).await?;
    if let Some(letter) = dead.next().await? {
        bail!("something was dead-lettered: {letter:?}");
    }
    eprintln!(
        "cluster: {} reviews; up {:.1?}, all {:.1?}\n  {killed}\n  {partitioned}",
        reviews.runs().len(),
        up_at,
        started.elapsed()
    );
    Ok(())
}

/// A fault on `node` (`docker FAULT...`) while reviews are in flight: reviews posted before it
/// and during it, the new leader waited for meanwhile, every review so far delivered without
/// `node`. Returns what the fault cost (see [`Reviews::pauses`]).
async fn ride_out(
    cluster: &Cluster<'_>,
    reviews: &mut Reviews<'_>,
    name: &str,
    node: &str,
    fault: &[&str],
) -> anyhow::Result<String> {
    reviews.post_many(BEFORE).await?;
    let at = Instant::now();
    docker(fault).await?;
    let (posted, elected) =
        tokio::join!(reviews.post_many(DURING), cluster.wait_for_leader(node, at));
    let (posted, (new_leader, elected)) = (posted?, elected?);
    let log = cluster.log(Some(node)).await?;
    wait_delivered(&log, &reviews.runs()).await?;
    let paid = reviews.pauses(name, elected, &posted, &log).await?;
    eprintln!("{paid}; {new_leader} leads now");
    Ok(paid)
}

/// `name` as one of [`NODES`].
fn node_named(name: &str) -> anyhow::Result<&'static str> {
    NODES
        .into_iter()
        .find(|node| *node == name)
        .with_context(|| format!("{name} is not a node of compose.cluster.yaml"))
}

/// The three nodes of a project, asked from the host through their published ports.
struct Cluster<'a> {
    project: &'a Project,
    /// Where the host reaches each node: asked once, and again for a node started again (it
    /// is published on a new port).
    urls: std::sync::Mutex<BTreeMap<&'static str, String>>,
}

impl<'a> Cluster<'a> {
    async fn new(project: &'a Project) -> anyhow::Result<Cluster<'a>> {
        let cluster = Cluster {
            project,
            urls: Default::default(),
        };
        for node in NODES {
            cluster.refresh(node).await?;
        }
        Ok(cluster)
    }

    /// Asks compose where the host reaches `node` now.
    async fn refresh(&self, node: &'static str) -> anyhow::Result<()> {
        let address = self.project.published(node, 4222).await?;
        self.urls
            .lock()
            .unwrap()
            .insert(node, format!("nats://{address}"));
        Ok(())
    }

    /// The URLs of the nodes but `except` (a node cut off: a connection to it would hang until
    /// the client gave it up).
    async fn urls(&self, except: Option<&str>) -> anyhow::Result<Vec<String>> {
        Ok(self
            .urls
            .lock()
            .unwrap()
            .iter()
            .filter(|(node, _)| Some(**node) != except)
            .map(|(_, url)| url.clone())
            .collect())
    }

    /// A JetStream context on the nodes but `except`.
    async fn log(&self, except: Option<&str>) -> anyhow::Result<jetstream::Context> {
        let client = NatsConfig {
            servers: self.urls(except).await?,
            ..NatsConfig::default()
        }
        .connect()
        .await?;
        Ok(jetstream::new(client))
    }

    /// What the cluster says of `EVENTS`, asked through the nodes but `except`.
    async fn events_stream(&self, except: Option<&str>) -> anyhow::Result<jetstream::stream::Info> {
        let log = self.log(except).await?;
        let mut stream = log.get_stream("EVENTS").await?;
        Ok(stream.info().await?.clone())
    }

    /// The node leading `EVENTS` now.
    async fn leader(&self, except: Option<&str>) -> anyhow::Result<String> {
        self.events_stream(except)
            .await?
            .cluster
            .and_then(|cluster| cluster.leader)
            .context("EVENTS reports no leader")
    }

    /// Waits until a node other than `old` leads `EVENTS` (asked without `old`), and returns it
    /// with the time since `fault`.
    async fn wait_for_leader(
        &self,
        old: &str,
        fault: Instant,
    ) -> anyhow::Result<(String, Duration)> {
        let leader = poll(
            &format!("a node other than {old} leads EVENTS"),
            Duration::from_millis(250),
            || async {
                Ok(match self.leader(Some(old)).await {
                    Ok(leader) if leader != old => Some(leader),
                    // No leader yet, or no meta leader to answer: ask again.
                    _ => None,
                })
            },
        )
        .await?;
        Ok((leader, fault.elapsed()))
    }

    /// Waits until every replica of `EVENTS` is online and has caught up with the leader.
    async fn wait_all_current(&self) -> anyhow::Result<()> {
        poll(
            "every replica of EVENTS is current",
            Duration::from_millis(500),
            || async {
                let Ok(info) = self.events_stream(None).await else {
                    return Ok(None);
                };
                let cluster = info.cluster.context("EVENTS is not clustered")?;
                let current = cluster.leader.is_some()
                    && cluster.replicas.len() == NODES.len() - 1
                    && cluster
                        .replicas
                        .iter()
                        .all(|peer| peer.current && !peer.offline);
                Ok(current.then_some(()))
            },
        )
        .await
    }
}

/// The reviews of the test: posted through the gateway, each under an idempotency key of its
/// own, so a post the gateway refused (503 while NATS elects) and that is posted again is one
/// review whether or not the refused post was stored.
struct Reviews<'a> {
    gateway: &'a Gateway,
    prefix: String,
    /// Each review's run and when the gateway took it.
    accepted: BTreeMap<String, SystemTime>,
    /// The longest a post waited for the gateway to take it, since the last [`Reviews::pauses`].
    longest_post: Duration,
}

impl<'a> Reviews<'a> {
    fn new(gateway: &'a Gateway, prefix: &str) -> Reviews<'a> {
        Reviews {
            gateway,
            prefix: prefix.to_string(),
            accepted: BTreeMap::new(),
            longest_post: Duration::ZERO,
        }
    }

    fn runs(&self) -> BTreeSet<String> {
        self.accepted.keys().cloned().collect()
    }

    /// Posts one review, posting it again while the gateway cannot take it; returns its run.
    async fn post(&mut self) -> anyhow::Result<String> {
        let key = format!("{}-{}", self.prefix, self.accepted.len());
        let first = Instant::now();
        let run = loop {
            match self.try_post(&key).await? {
                Some(run) => break run,
                None if first.elapsed() < PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None => bail!("the gateway did not take review {key} in {PATIENCE:?}"),
            }
        };
        self.longest_post = self.longest_post.max(first.elapsed());
        self.accepted.insert(run.clone(), SystemTime::now());
        Ok(run)
    }

    /// Posts `count` reviews, 200 ms apart; returns their runs.
    async fn post_many(&mut self, count: usize) -> anyhow::Result<BTreeSet<String>> {
        let mut runs = BTreeSet::new();
        for _ in 0..count {
            runs.insert(self.post().await?);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(runs)
    }

    /// The run, or `None` when the gateway answered that NATS is unavailable just now (or did
    /// not answer); any other answer fails the test.
    async fn try_post(&self, key: &str) -> anyhow::Result<Option<String>> {
        let sent = self
            .gateway
            .http
            .post(format!("{}/v1/events", self.gateway.url))
            .bearer_auth(&self.gateway.token)
            .header("Idempotency-Key", key)
            .json(&Gateway::review())
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(err) if err.is_timeout() || err.is_connect() => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let status = answer.status();
        let body = answer.text().await?;
        match status {
            reqwest::StatusCode::ACCEPTED => {
                let body: serde_json::Value = serde_json::from_str(&body)?;
                Ok(Some(
                    body["correlation_id"]
                        .as_str()
                        .context("a correlation id")?
                        .to_string(),
                ))
            }
            reqwest::StatusCode::SERVICE_UNAVAILABLE => Ok(None),
            other => bail!("the gateway answered {other}: {body}"),
        }
    }

    /// What a fault cost: the time without a leader, the longest post, and the slowest of
    /// `posted` from the gateway's answer to its `review.delivered`.
    async fn pauses(
        &mut self,
        fault: &str,
        elected: Duration,
        posted: &BTreeSet<String>,
        log: &jetstream::Context,
    ) -> anyhow::Result<String> {
        let mut slowest = Duration::ZERO;
        for event in events(log, "events.*.review.delivered").await? {
            if posted.contains(&event.correlation_id) {
                slowest = slowest.max(self.delivery_time(&event)?);
            }
        }
        let longest_post = std::mem::take(&mut self.longest_post);
        Ok(format!(
            "{fault}: new leader after {elected:.1?}, longest post {longest_post:.1?}, slowest \
             review {slowest:.1?}"
        ))
    }

    /// From the gateway's answer to `delivered` (both clocks are this machine's).
    fn delivery_time(&self, delivered: &Event) -> anyhow::Result<Duration> {
        let accepted = self
            .accepted
            .get(&delivered.correlation_id)
            .context("a review of this test")?;
        let time = delivered.time.context("the delivery's time")?;
        let delivered_at = SystemTime::try_from(time)?;
        Ok(delivered_at.duration_since(*accepted).unwrap_or_default())
    }
}
