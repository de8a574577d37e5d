//! Three `nats-server -js` processes in one JetStream cluster on loopback, for tests of what
//! happens while a server is lost: its streams' replicas elect new leaders, and clients must
//! tell "unavailable for a while" from "missing".
//!
//! Each server is a [`NatsServer`] (random client port, its own temporary store, killed on
//! drop) named `node-<index>` and routed to the other two. [`NatsCluster::kill`] and
//! [`NatsCluster::start_again`] stop one hard and bring it back on the same ports and store;
//! [`NatsCluster::stream_leader`] says which server leads a stream now, and
//! [`NatsCluster::wait_for_stream_current`] waits until every replica has caught up.
//!
//! ```no_run
//! # async fn demo() -> Result<(), choreo_local_nats::TestServerError> {
//! use choreo_local_nats::NatsCluster;
//! let mut cluster = NatsCluster::start().await?;
//! // ... create a stream with 3 replicas through cluster.url_list() ...
//! let leader = cluster.wait_for_stream_leader("EVENTS", None).await?;
//! cluster.kill(leader)?;
//! let next = cluster.wait_for_stream_leader("EVENTS", Some(leader)).await?;
//! cluster.start_again(leader).await?;
//! cluster.wait_for_stream_current("EVENTS").await?; // before reading: see its docs
//! # let _ = next; Ok(()) }
//! ```

use std::net::TcpListener;
use std::time::Duration;

use async_nats::jetstream::stream;

use crate::{NatsServer, Options, TestServerError};

/// The cluster's name, as its servers report it.
const CLUSTER_NAME: &str = "choreo-test";
/// How long a stream may take to report a leader on a running server. An election after a
/// server is lost takes a few seconds; this leaves room on a busy machine.
const LEADER_TIMEOUT: Duration = Duration::from_secs(45);
/// How often the leader is asked again while waiting.
const LEADER_POLL: Duration = Duration::from_millis(100);
/// How long one question to JetStream (or one connection attempt) may take while waiting: an
/// answer that does not come soon is asked again.
const QUESTION_TIMEOUT: Duration = Duration::from_secs(2);

/// A three-server JetStream cluster on loopback; every server is killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// How many servers the cluster has: the smallest that keeps a quorum (two) with one lost.
    pub const SIZE: usize = 3;

    /// Starts three servers routed to each other, and waits until JetStream's meta leader is
    /// elected and answers through every one of them.
    ///
    /// Once more, on new ports and stores, if the first three never get there: on a machine
    /// busy with other tests, a fresh cluster has been seen with its routes up and no meta
    /// leader elected 20 s later, and no progress in its log after the first second. The
    /// tests that use a cluster are about what happens to events on one, not about its
    /// bootstrap; a second failure is returned.
    pub async fn start() -> Result<Self, TestServerError> {
        match Self::start_once().await {
            Err(TestServerError::NotReady { log, .. }) => {
                eprintln!(
                    "a fresh three-server cluster elected no meta leader; starting another. \
                     The first one's log:\n{log}"
                );
                Self::start_once().await
            }
            started => started,
        }
    }

    async fn start_once() -> Result<Self, TestServerError> {
        let cluster_ports = free_ports(Self::SIZE)?;
        // Every server is given every route, its own included (nats-server skips the route to
        // itself): JetStream sizes its first meta group from the routes, so each server
        // expects three peers and none elects itself alone.
        let routes = cluster_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(Self::SIZE);
        for (index, port) in cluster_ports.iter().enumerate() {
            nodes.push(NatsServer::prepare(Options {
                args: vec![
                    "--server_name".to_string(),
                    server_name(index),
                    "--cluster_name".to_string(),
                    CLUSTER_NAME.to_string(),
                    "--cluster".to_string(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".to_string(),
                    routes.clone(),
                ],
                ..Options::default()
            })?);
        }
        // All first, then wait: no server is ready before a quorum of them runs.
        for node in &mut nodes {
            node.spawn()?;
        }
        for node in &mut nodes {
            node.wait_ready().await?;
        }
        Ok(NatsCluster { nodes })
    }

    /// The server `node` (0, 1 or 2): its URL, log and store.
    pub fn node(&self, node: usize) -> Result<&NatsServer, TestServerError> {
        self.nodes.get(node).ok_or(TestServerError::NoSuchNode {
            node,
            size: Self::SIZE,
        })
    }

    /// Every server's client URL, in node order, e.g. `nats://127.0.0.1:41234`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Every server's client URL, comma-separated: what `NATS_URL` or `--nats-url` take.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// The name server `node` goes by in the cluster (`server_name`, and a stream's
    /// `cluster.leader`).
    pub fn server_name(&self, node: usize) -> Result<String, TestServerError> {
        self.node(node).map(|_| server_name(node))
    }

    /// Kills server `node` with SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill(&mut self, node: usize) -> Result<(), TestServerError> {
        self.node_mut(node)?.kill();
        Ok(())
    }

    /// Starts server `node` again on its ports and store, and waits until JetStream answers
    /// through it (it has rejoined, and the cluster has a meta leader).
    pub async fn start_again(&mut self, node: usize) -> Result<(), TestServerError> {
        self.node_mut(node)?.start_again().await
    }

    /// Which server leads `stream` now, as JetStream reports it (`$JS.API.STREAM.INFO`'s
    /// `cluster.leader`, matched to the servers' names): `None` while it reports no leader.
    /// Right after a leader is killed the report may still name it for a moment; to wait for
    /// a new one, see [`NatsCluster::wait_for_stream_leader`].
    pub async fn stream_leader(&self, stream: &str) -> Result<Option<usize>, TestServerError> {
        let info = self.stream_info(stream).await?;
        Ok(info
            .cluster
            .and_then(|cluster| cluster.leader)
            .and_then(|name| self.index_of(&name)))
    }

    /// What JetStream reports about `stream` (`$JS.API.STREAM.INFO`), asked through the
    /// running servers.
    pub async fn stream_info(&self, stream: &str) -> Result<stream::Info, TestServerError> {
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .map(NatsServer::url)
            .collect();
        let question = |source: async_nats::Error| TestServerError::Question {
            what: format!("about stream {stream}"),
            source,
        };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(QUESTION_TIMEOUT)
            .connect(running)
            .await
            .map_err(|err| question(err.into()))?;
        let mut jetstream = async_nats::jetstream::new(client.clone());
        jetstream.set_timeout(QUESTION_TIMEOUT);
        let answer = jetstream.get_stream(stream).await;
        let _ = client.drain().await;
        Ok(answer
            .map_err(|err| question(err.into()))?
            .cached_info()
            .clone())
    }

    /// Waits until `stream` reports a leader that is running and is not `other_than` (the one
    /// just killed, say), and returns it. Questions that fail meanwhile (no leader yet, no
    /// meta leader) are asked again, up to 45 s.
    pub async fn wait_for_stream_leader(
        &self,
        stream: &str,
        other_than: Option<usize>,
    ) -> Result<usize, TestServerError> {
        let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
        let mut last = None;
        loop {
            match self.stream_leader(stream).await {
                Ok(Some(leader))
                    if Some(leader) != other_than
                        && self.nodes.get(leader).is_some_and(NatsServer::is_running) =>
                {
                    return Ok(leader);
                }
                Ok(_) => {}
                Err(err) => last = Some(err),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestServerError::NoStreamLeader {
                    stream: stream.to_string(),
                    timeout: LEADER_TIMEOUT,
                    last: last.map(Box::new),
                });
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Waits until every replica of `stream` is up to date: a leader on a running server, and
    /// each other replica online and current (caught up with the leader). A server started
    /// again catches up in the background, and until then it serves what it held when it
    /// stopped: an ephemeral consumer the cluster places on it reads a stale stream. Questions
    /// that fail meanwhile are asked again, up to 45 s.
    pub async fn wait_for_stream_current(&self, stream: &str) -> Result<(), TestServerError> {
        let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
        let mut last = None;
        loop {
            match self.stream_info(stream).await {
                Ok(info) => {
                    let followers = info.config.num_replicas.saturating_sub(1);
                    let current = info.cluster.as_ref().is_some_and(|cluster| {
                        cluster
                            .leader
                            .as_deref()
                            .and_then(|name| self.index_of(name))
                            .and_then(|leader| self.nodes.get(leader))
                            .is_some_and(NatsServer::is_running)
                            && cluster.replicas.len() == followers
                            && cluster
                                .replicas
                                .iter()
                                .all(|replica| replica.current && !replica.offline)
                    });
                    if current {
                        return Ok(());
                    }
                }
                Err(err) => last = Some(err),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestServerError::NotCurrent {
                    stream: stream.to_string(),
                    timeout: LEADER_TIMEOUT,
                    last: last.map(Box::new),
                });
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Every server's log so far, each under its name, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(index, node)| format!("--- {} ---\n{}", server_name(index), node.log()))
            .collect()
    }

    /// The node named `name` in the cluster.
    fn index_of(&self, name: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&index| server_name(index) == name)
    }

    fn node_mut(&mut self, node: usize) -> Result<&mut NatsServer, TestServerError> {
        self.nodes.get_mut(node).ok_or(TestServerError::NoSuchNode {
            node,
            size: Self::SIZE,
        })
    }
}

fn server_name(index: usize) -> String {
    format!("node-{index}")
}

/// `count` loopback ports free right now. Routes must name each server's cluster port before
/// any server starts, so nats-server cannot pick them itself; the listeners are held until all
/// are chosen (no port twice) and closed just before the servers start.
fn free_ports(count: usize) -> Result<Vec<u16>, TestServerError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}
