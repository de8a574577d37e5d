//! The runtime on a three-server JetStream cluster whose `EVENTS` leader is killed while events
//! are being handled (their children published): the agent waits the election out without spending any event's
//! deliveries, nothing is dead-lettered, and every event is handled once. And the log read
//! while the cluster still counts a killed server as one of its own.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo_bus::log::{LogQuery, LogReader};
use choreo_bus::{Agent, Emit, EventType, Incoming, RootEvent, RuntimeConfig, handler_fn};
use choreo_testkit::{Bus, PATIENCE, quick_config, wait_until};
use serde_json::json;

/// Events published before the agent starts; the leader is killed once a sixth are handled.
const EVENTS: usize = 60;
/// One handling's time: with a concurrency of 4, the events take about 3 s to handle.
const HANDLING: Duration = Duration::from_millis(200);

/// Publishes `n` until the stream confirms it, retrying (with the same id, so a retry that was
/// stored after all is deduplicated) while the cluster elects.
async fn publish_until_stored<S>(bus: &Bus<S>, n: usize) -> anyhow::Result<()> {
    let event = RootEvent::new(
        Emit::json(EventType::new("in.put")?, &json!(n))?,
        "cluster-test",
    )
    .with_correlation_id(format!("run-{n}"))
    .into_event()?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stored = async { bus.publisher.send_event(&event).await?.confirmed().await };
        match stored.await {
            Ok(_) => return Ok(()),
            Err(err) if err.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// How many children are stored now; a read the cluster cannot answer yet counts as none.
async fn children<S>(bus: &Bus<S>) -> usize {
    bus.events("events.*.out.put")
        .await
        .map_or(0, |events| events.len())
}

#[tokio::test]
async fn a_stream_leader_killed_midstream_is_waited_out_and_every_event_is_handled_once()
-> anyhow::Result<()> {
    let mut bus = Bus::start_cluster().await?;
    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = runs.clone();
    let agent = Agent::builder("steadfast")
        .subscribes("in.put")
        .emits("out.put")
        .build()?;
    let handler = handler_fn(move |event: Incoming| {
        *seen.lock().unwrap().entry(event.id.clone()).or_default() += 1;
        async move {
            // Slow enough that handlings are under way, publishing, while the leader is lost.
            tokio::time::sleep(HANDLING).await;
            Ok(vec![Emit::new(
                EventType::new("out.put").map_err(choreo_bus::HandlerError::permanent)?,
                event.content_type.clone(),
                event.data.clone(),
            )])
        }
    });
    // Two deliveries at most: an election that spent deliveries would dead-letter events.
    let config = RuntimeConfig {
        max_deliveries: 2,
        ack_wait: Duration::from_secs(5),
        concurrency: 4,
        ..quick_config()
    };
    for n in 0..EVENTS {
        publish_until_stored(&bus, n).await?;
    }
    let running = bus.run(agent, handler, config).await?;
    wait_until("a sixth of the events are handled", || async {
        Ok(children(&bus).await >= EVENTS / 6)
    })
    .await?;
    let leader = bus.server.wait_for_stream_leader("EVENTS", None).await?;
    bus.server.kill(leader)?;
    let killed = tokio::time::Instant::now();
    let outcome = wait_until("every event is handled", || async {
        Ok(children(&bus).await >= EVENTS)
    })
    .await;
    if let Err(err) = outcome {
        anyhow::bail!("{err}\n{}", bus.server.logs());
    }
    eprintln!(
        "every event handled {:?} after the leader was killed",
        killed.elapsed()
    );
    bus.server.start_again(leader).await?;
    let stream = bus.jetstream.get_stream("EVENTS").await?;
    wait_until("every event is acknowledged", || async {
        let Ok(info) = stream.clone().consumer_info("steadfast").await else {
            return Ok(false);
        };
        Ok(info.num_pending == 0 && info.num_ack_pending == 0)
    })
    .await?;
    running.stop().await?;

    // A read may be served by the restarted server while it still catches up (JetStream places
    // a reader's consumer on any of the stream's servers): read until one read sees them all.
    let read = std::sync::Mutex::new(Vec::new());
    wait_until("every child is read back", || async {
        let events = bus.events("events.*.out.put").await.unwrap_or_default();
        let whole = events.len() >= EVENTS;
        *read.lock().unwrap() = events;
        Ok(whole)
    })
    .await?;
    let children = read.into_inner().unwrap();
    assert_eq!(children.len(), EVENTS, "each event's child stored once");
    let mut per_input: HashMap<&str, usize> = HashMap::new();
    for child in &children {
        *per_input.entry(child.causation_id.as_str()).or_default() += 1;
    }
    assert_eq!(per_input.len(), EVENTS);
    assert!(
        bus.dead_letters().await?.is_empty(),
        "the election spent deliveries"
    );
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), EVENTS);
    assert!(
        runs.values().all(|&n| n == 1),
        "handlers ran more than once: {runs:?}"
    );
    Ok(())
}

/// Reads right after a server was killed. nats-server takes a server that vanished without a
/// word for gone only after minutes (its orphan check), and until then places a third of the
/// reads' one-replica consumers on it, where they are never made. Every one of twelve reads in
/// a row succeeds (the reader asks again when its consumer is not made); asking once, about a
/// third of them fail.
#[tokio::test]
async fn the_log_is_read_while_the_cluster_still_counts_a_killed_server() -> anyhow::Result<()> {
    let mut bus = Bus::start_cluster().await?;
    for n in 0..3 {
        publish_until_stored(&bus, n).await?;
    }
    let killed = 2;
    bus.server.kill(killed)?;
    let live: Vec<String> = (0..3)
        .filter(|node| *node != killed)
        .map(|node| Ok(bus.server.node(node)?.url()))
        .collect::<anyhow::Result<_>>()?;
    let mut log = async_nats::jetstream::new(async_nats::connect(live).await?);
    // Short, so a read that asks the killed server waits less, and long enough for a loaded
    // machine's cluster to make a consumer.
    log.set_timeout(Duration::from_secs(2));
    let read = || async {
        let mut reader = LogReader::open(&log, "EVENTS", LogQuery::filtered("events.>")).await?;
        let mut count = 0;
        while reader.next().await?.is_some() {
            count += 1;
        }
        anyhow::Ok(count)
    };
    // Once the live two have settled (a new leader where the killed one led)...
    wait_until("the live servers answer a read", || async {
        Ok(read().await.is_ok())
    })
    .await?;
    // ...every read succeeds.
    for attempt in 1..=12 {
        let count = read()
            .await
            .map_err(|err| anyhow::anyhow!("read {attempt} failed: {err:#}"))?;
        assert_eq!(count, 3, "read {attempt}");
    }
    Ok(())
}
