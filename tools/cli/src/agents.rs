//! `choreo agents`: the live agents of a namespace and their copies, from what each running
//! copy answers on the NATS Services API (`$SRV.INFO`, `$SRV.STATS`; see
//! `choreo_bus::runtime::presence`), beside each agent's durable consumer. An agent whose
//! consumer exists but no copy answers, and (with `--watch`) a consumer whose pending count
//! keeps growing, are named as problems.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::service::{Info, Stats};
use choreo_bus::metrics::Summary;
use choreo_bus::runtime::presence::{STATUS_ENDPOINT, metadata};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;

use crate::Failure;
use crate::connection::Connection;

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Print again every INTERVAL until interrupted, naming consumers whose pending count
    /// grew three times in a row.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s",
          value_parser = humantime::parse_duration)]
    watch: Option<Duration>,
    /// How long to wait for the copies' answers after the last one came.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    quiet: Duration,
    #[command(flatten)]
    connection: Connection,
}

/// One agent: its live copies and its consumer.
#[derive(Debug, Serialize)]
pub struct AgentView {
    pub agent: String,
    pub copies: Vec<Copy>,
    /// Events its consumer has not delivered yet (lag); `None` when it has no consumer.
    pub pending: Option<u64>,
    /// Events delivered and not acknowledged yet.
    pub ack_pending: Option<usize>,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Copy {
    pub id: String,
    pub version: String,
    pub subscribes: String,
    /// What the copy's handler says of itself (a specialist: `brain`, `model`).
    pub described: BTreeMap<String, String>,
    #[serde(flatten)]
    pub summary: Option<Summary>,
}

/// What an agent's copies have done, added up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub handled: u64,
    pub failed: u64,
    pub in_flight: i64,
    /// The mean handling time over every copy's handlings; `None` before the first.
    pub mean_ms: Option<f64>,
}

impl AgentView {
    pub fn totals(&self) -> Totals {
        let summaries = || self.copies.iter().filter_map(|copy| copy.summary.as_ref());
        let (weighted, count) = summaries().fold((0.0, 0u64), |(sum, n), s| {
            (
                sum + s.average_handling_ms * s.handlings as f64,
                n + s.handlings,
            )
        });
        Totals {
            handled: summaries().map(|s| s.handled).sum(),
            failed: summaries().map(|s| s.failed).sum(),
            in_flight: summaries().map(|s| s.in_flight).sum(),
            mean_ms: (count > 0).then(|| weighted / count as f64),
        }
    }
}

pub async fn run(args: AgentsArgs) -> Result<(), Failure> {
    let namespace = args.connection.namespace()?;
    let jetstream = args.connection.jetstream().await?;
    let client = jetstream.client();
    let mut history: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    loop {
        let mut agents = match look(&client, &jetstream, &namespace, args.quiet).await {
            Ok(agents) => agents,
            // Watching is for when things go wrong: a look that fails is said, and the next
            // one is tried.
            Err(failure) if args.watch.is_some() => {
                eprintln!("choreo agents: {}", failure.message);
                Vec::new()
            }
            Err(failure) => return Err(failure),
        };
        for agent in &mut agents {
            if let Some(pending) = agent.pending {
                let seen = history.entry(agent.agent.clone()).or_default();
                seen.push(pending);
                if seen.len() > 4 {
                    seen.remove(0);
                }
                if seen.len() == 4 && seen.windows(2).all(|pair| pair[1] > pair[0]) {
                    agent
                        .problems
                        .push(format!("pending grew three times in a row, to {pending}"));
                }
            }
        }
        if args.json {
            let text = serde_json::to_string_pretty(&agents)
                .map_err(|err| Failure::output(std::io::Error::other(err)))?;
            println!("{text}");
        } else {
            print_table(&agents);
        }
        let Some(every) = args.watch else {
            return Ok(());
        };
        tokio::time::sleep(every).await;
        if !args.json {
            println!();
        }
    }
}

/// What the copies and the consumers say now.
pub async fn look(
    client: &async_nats::Client,
    jetstream: &async_nats::jetstream::Context,
    namespace: &choreo_bus::Namespace,
    quiet: Duration,
) -> Result<Vec<AgentView>, Failure> {
    let infos: Vec<Info> = ask(client, "$SRV.INFO", quiet).await?;
    let stats: BTreeMap<String, Stats> = ask::<Stats>(client, "$SRV.STATS", quiet)
        .await?
        .into_iter()
        .map(|stats| (stats.id.clone(), stats))
        .collect();
    let mut agents: BTreeMap<String, AgentView> = BTreeMap::new();
    for info in infos {
        if info.metadata.get(metadata::NAMESPACE).map(String::as_str) != Some(namespace.as_str()) {
            continue;
        }
        let summary = stats
            .get(&info.id)
            .and_then(|stats| {
                stats
                    .endpoints
                    .iter()
                    .find(|endpoint| endpoint.name == STATUS_ENDPOINT)
            })
            .and_then(|endpoint| endpoint.data.clone())
            .and_then(|data| serde_json::from_value(data).ok());
        view(&mut agents, &info.name).copies.push(Copy {
            id: info.id.clone(),
            version: info.version.clone(),
            subscribes: info
                .metadata
                .get(metadata::SUBSCRIBES)
                .cloned()
                .unwrap_or_default(),
            described: info
                .metadata
                .iter()
                .filter(|(key, _)| !key.starts_with("choreo."))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            summary,
        });
    }
    let stream = jetstream
        .get_stream(namespace.stream_name())
        .await
        .map_err(|err| Failure::unavailable(format!("cannot read the consumers: {err}")))?;
    let names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    for name in names {
        let consumer = match stream.consumer_info(&name).await {
            Ok(consumer) => consumer,
            // A read's consumer that expired since the names were listed.
            Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => continue,
            Err(err) => {
                // Whether it is an agent's or a read's is unknown; an agent with copies, or a
                // name that is not a read's random one, is listed with the problem.
                let agent = view(&mut agents, &name);
                agent
                    .problems
                    .push(format!("its consumer did not answer ({err})"));
                if agent.copies.is_empty() {
                    agent.problems.push("no live copy".to_string());
                }
                continue;
            }
        };
        // Reads' consumers are not agents'.
        if consumer.config.durable_name.is_none() {
            continue;
        }
        let agent = view(&mut agents, &name);
        agent.pending = Some(consumer.num_pending);
        agent.ack_pending = Some(consumer.num_ack_pending);
        if agent.copies.is_empty() {
            agent.problems.push(format!(
                "no live copy: its consumer holds {} pending",
                consumer.num_pending
            ));
        }
    }
    Ok(agents.into_values().collect())
}

fn view<'a>(agents: &'a mut BTreeMap<String, AgentView>, name: &str) -> &'a mut AgentView {
    agents.entry(name.to_string()).or_insert_with(|| AgentView {
        agent: name.to_string(),
        copies: Vec::new(),
        pending: None,
        ack_pending: None,
        problems: Vec::new(),
    })
}

/// Asks every service on `subject` and gathers the answers until none came for `quiet`.
async fn ask<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    quiet: Duration,
) -> Result<Vec<T>, Failure> {
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    client
        .flush()
        .await
        .map_err(|err| Failure::unavailable(err.to_string()))?;
    let mut gathered = Vec::new();
    while let Ok(Some(answer)) = tokio::time::timeout(quiet, answers.next()).await {
        if let Ok(parsed) = serde_json::from_slice(&answer.payload) {
            gathered.push(parsed);
        }
    }
    Ok(gathered)
}

fn print_table(agents: &[AgentView]) {
    println!(
        "{:<14} {:>6} {:>8} {:>7} {:>9} {:>9} {:>8}  problems",
        "agent", "copies", "handled", "failed", "mean ms", "in flight", "pending"
    );
    for agent in agents {
        let totals = agent.totals();
        let mean = totals
            .mean_ms
            .map_or_else(|| "-".to_string(), |mean| format!("{mean:.1}"));
        let pending = agent
            .pending
            .map_or_else(|| "-".to_string(), |p| p.to_string());
        println!(
            "{:<14} {:>6} {:>8} {:>7} {:>9} {:>9} {:>8}  {}",
            agent.agent,
            agent.copies.len(),
            totals.handled,
            totals.failed,
            mean,
            totals.in_flight,
            pending,
            if agent.problems.is_empty() {
                "-".to_string()
            } else {
                agent.problems.join("; ")
            }
        );
    }
}
