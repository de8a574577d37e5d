//! `choreo publish` against a three-server JetStream cluster whose `EVENTS` leader is killed
//! mid-stream: while the stream's replicas elect a new leader the command exits 69 and says to
//! retry (never "create the streams"), and retrying with the same ids stores every event once.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use choreo_bus::log::{LogError, LogQuery, LogReader};
use choreo_local_nats::NatsCluster;
use choreo_testkit::{PATIENCE, ensure_replicated_streams};
use tokio::sync::watch;

/// Distinct events the loop publishes.
const EVENTS: usize = 40;
/// Events stored before the leader is killed, so the kill lands mid-stream.
const STORED_BEFORE_KILL: usize = 5;
/// Runs of `choreo publish` the whole loop may make, retries included.
const MAX_RUNS: usize = 600;
/// Pause before running a command again after it exited 69: the pace of a retrying client.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What one run of the CLI did.
#[derive(Debug)]
struct Run {
    id: String,
    code: Option<i32>,
    stderr: String,
}

/// Runs `choreo ARGS` with `NATS_URL` naming every server of the cluster.
async fn choreo(urls: &str, args: Vec<String>) -> anyhow::Result<Output> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    choreo_testkit::cli::choreo(urls, &args).await
}

/// Publishes `ids` in order with `choreo publish`, each until it exits 0, stopping at the first
/// exit that is neither 0 nor 69 (the test then fails on it). Reports how many are stored on
/// `stored`, and returns every run.
async fn publish_all(
    urls: String,
    ids: Vec<String>,
    stored: watch::Sender<usize>,
) -> anyhow::Result<Vec<Run>> {
    let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
    let mut runs = Vec::new();
    for (index, id) in ids.into_iter().enumerate() {
        loop {
            if runs.len() >= MAX_RUNS || tokio::time::Instant::now() >= deadline {
                bail!(
                    "gave up after {} runs with {index} events stored; the last: {:?}",
                    runs.len(),
                    runs.last()
                );
            }
            let output = choreo(
                &urls,
                vec![
                    "publish".into(),
                    "cluster.ping".into(),
                    "--id".into(),
                    id.clone(),
                    "--data".into(),
                    format!("{{\"n\": {index}}}"),
                ],
            )
            .await?;
            let run = Run {
                id: id.clone(),
                code: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            };
            let code = run.code;
            runs.push(run);
            match code {
                Some(0) => break,
                Some(69) => tokio::time::sleep(RETRY_PAUSE).await,
                _ => return Ok(runs),
            }
        }
        stored.send_replace(index + 1);
    }
    Ok(runs)
}

/// How many times each event id is stored in `EVENTS`, read through the cluster. Reading
/// creates a consumer, which needs JetStream's meta leader: if the killed server led the
/// cluster too, the read is retried while JetStream says it cannot answer yet.
async fn stored_ids(jetstream: &jetstream::Context) -> anyhow::Result<BTreeMap<String, usize>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match read_ids(jetstream).await {
            Err(err)
                if err
                    .downcast_ref::<LogError>()
                    .is_some_and(LogError::is_retryable)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            read => return read,
        }
    }
}

async fn read_ids(jetstream: &jetstream::Context) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut reader = LogReader::open(jetstream, "EVENTS", LogQuery::filtered("events.>")).await?;
    let mut ids = BTreeMap::new();
    while let Some(record) = tokio::time::timeout(PATIENCE, reader.next())
        .await
        .context("reading EVENTS stalled")??
    {
        *ids.entry(record.decode()?.id).or_insert(0) += 1;
    }
    Ok(ids)
}

#[tokio::test]
async fn publishing_while_the_events_leader_is_killed_exits_69_and_retries_store_each_event_once()
-> anyhow::Result<()> {
    let mut cluster = NatsCluster::start().await?;
    let client = async_nats::connect(cluster.urls()).await?;
    let jetstream = jetstream::new(client);
    ensure_replicated_streams(&jetstream, 3).await?;
    let leader = cluster.wait_for_stream_leader("EVENTS", None).await?;

    let ids: Vec<String> = (0..EVENTS).map(|n| format!("ping-{n:03}")).collect();
    let (stored_tx, mut stored_rx) = watch::channel(0);
    let publishing = tokio::spawn(publish_all(cluster.url_list(), ids.clone(), stored_tx));
    tokio::time::timeout(
        PATIENCE,
        stored_rx.wait_for(|&stored| stored >= STORED_BEFORE_KILL),
    )
    .await
    .context("the first events were not stored")?
    .context("the publishing loop ended early")?;

    cluster.kill(leader)?;
    let runs = publishing.await??;
    // Every event is stored by now, so the stream has a new leader on a running server.
    let new_leader = cluster
        .wait_for_stream_leader("EVENTS", Some(leader))
        .await?;

    for run in &runs {
        match run.code {
            Some(0) => {}
            Some(69) => {
                let message = run.stderr.to_lowercase();
                assert!(
                    message.contains("unavailable") && message.contains("retry"),
                    "a 69 that does not say JetStream is unavailable and to retry: {run:?}"
                );
                assert!(
                    !message.contains("create the streams"),
                    "a 69 that says the streams are missing: {run:?}"
                );
                assert!(
                    message.contains(&format!("--id {}", run.id))
                        || message.contains(&format!("its id is {}", run.id)),
                    "a 69 that does not say how to retry without storing twice: {run:?}"
                );
            }
            _ => panic!(
                "choreo publish exited {:?} (only 0 or 69 while a leader is elected): {run:?}\n{}",
                run.code,
                cluster.logs()
            ),
        }
    }
    let unavailable = runs.iter().filter(|run| run.code == Some(69)).count();
    assert!(
        unavailable > 0,
        "no run fell in the election ({} runs): the test did not see what it is for",
        runs.len()
    );

    let stored = stored_ids(&jetstream).await?;
    let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(stored, expected, "every event stored exactly once");

    cluster.start_again(leader).await?;
    // Until it has caught up, the server started again serves reads from what it held when it
    // was killed.
    cluster.wait_for_stream_current("EVENTS").await?;
    let after = choreo(
        &cluster.url_list(),
        vec![
            "publish".into(),
            "cluster.ping".into(),
            "--id".into(),
            "ping-after".into(),
        ],
    )
    .await?;
    assert_eq!(
        after.status.code(),
        Some(0),
        "with every server back: {}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert_eq!(stored_ids(&jetstream).await?.len(), EVENTS + 1);
    eprintln!(
        "{} runs for {EVENTS} events, {unavailable} exited 69; leader node-{leader} killed, \
         node-{new_leader} elected, node-{leader} back",
        runs.len()
    );
    Ok(())
}
