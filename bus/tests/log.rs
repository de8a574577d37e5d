//! The log read back from a real nats-server: the reader returns every record once and in
//! order even when the client drops messages it had no room for, and a live read follows the
//! log through a server restart; a log longer than one batch of the fold folds to exactly the
//! state its records give one by one; a temporal query stops at its point wherever that falls
//! in a batch; a rebuild resumes from its snapshot.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use anyhow::Context as _;
use choreo_bus::envelope::stamp_child;
use choreo_bus::log::{From, LogQuery, LogReader, LogRecord, Until};
use choreo_bus::projection::run_board::RunBoard;
use choreo_bus::projection::{AsOf, Folded, Projector};
use choreo_bus::{AgentName, Emit, Event, RootEvent};
use choreo_testkit::{Bus, PATIENCE, event_type};
use serde_json::json;

/// Runs of this many events: a root, then children that fan out to two agents.
const RUN_LENGTH: usize = 7;
/// More than two of the fold's batches (512 records), and not a multiple of one.
const RUNS: usize = 190;

/// Fills the events stream with [`RUNS`] runs; returns every record as stored, in order.
async fn fill(bus: &Bus) -> anyhow::Result<Vec<LogRecord>> {
    let agents = [AgentName::new("planner")?, AgentName::new("checker")?];
    let mut pending = Vec::new();
    for run in 0..RUNS {
        let root = RootEvent::new(
            Emit::json(event_type("work.requested"), &json!({ "run": run }))?,
            "test",
        )
        .with_correlation_id(format!("run-{run}"))
        .into_event()?;
        let mut events: Vec<Event> = vec![root];
        while events.len() < RUN_LENGTH {
            let step = events.len();
            let parent = &events[(step - 1) / 2];
            let agent = &agents[step % 2];
            let emit = Emit::json(event_type("work.done"), &json!({ "step": step }))?
                .tokens_used(step as u64);
            let child = stamp_child(parent, agent, step, emit);
            events.push(child);
        }
        for event in &events {
            pending.push(bus.publisher.send_event(event).await?);
        }
    }
    for publish in pending {
        publish.confirmed().await?;
    }
    let records = bus.raw("EVENTS", "events.>").await?;
    assert_eq!(records.len(), RUNS * RUN_LENGTH);
    Ok(records)
}

/// The board folded from `records` one at a time, in the test's own task.
fn folded_one_by_one(records: &[LogRecord]) -> Folded<RunBoard> {
    let mut folded = Folded::<RunBoard>::default();
    records.iter().for_each(|record| folded.apply(record));
    folded
}

/// The next record of `reader`, failing the test if none comes within [`PATIENCE`].
async fn next_record(reader: &mut LogReader) -> anyhow::Result<LogRecord> {
    tokio::time::timeout(PATIENCE, reader.next())
        .await
        .context("the read stalled")??
        .context("the read ended early")
}

#[tokio::test]
async fn a_reader_whose_client_drops_messages_for_want_of_room_still_returns_every_record_once_in_order()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let records = fill(&bus).await?;
    // A client with room for 16 messages per subscription, far fewer than a read asks for.
    let (overflowed, mut overflows) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(16)
        .event_callback(move |event| {
            let overflowed = overflowed.clone();
            async move {
                if matches!(event, async_nats::Event::SlowConsumer(_)) {
                    let _ = overflowed.send(());
                }
            }
        })
        .connect(bus.server.url())
        .await?;
    let jetstream = async_nats::jetstream::new(client);
    // Short heartbeats: a loss at the end of a batch shows when the next one names a later
    // message than the last one received.
    let query = LogQuery::filtered("events.>").idle_heartbeat(Duration::from_millis(200));
    let mut reader = LogReader::open(&jetstream, "EVENTS", query).await?;
    let mut sequences = vec![next_record(&mut reader).await?.sequence];
    // Read no further until the client has dropped messages for want of room.
    tokio::time::timeout(PATIENCE, overflows.recv())
        .await
        .context("the client never ran out of room")?;

    while let Some(record) = tokio::time::timeout(PATIENCE, reader.next())
        .await
        .context("the read stalled")??
    {
        sequences.push(record.sequence);
    }

    let stored: Vec<u64> = records.iter().map(|record| record.sequence).collect();
    assert_eq!(sequences, stored);
    Ok(())
}

#[tokio::test]
async fn a_live_read_follows_the_log_through_a_server_restart() -> anyhow::Result<()> {
    let mut bus = Bus::start().await?;
    for n in 0..2 {
        bus.publish("work.requested", json!(n), Some("run-live"))
            .await?;
    }
    let query = LogQuery::filtered("events.>")
        .from(From::Start)
        .until(Until::Live)
        .idle_heartbeat(Duration::from_millis(500));
    let mut reader = LogReader::open(&bus.jetstream, "EVENTS", query).await?;
    let before: Vec<u64> = vec![
        next_record(&mut reader).await?.sequence,
        next_record(&mut reader).await?.sequence,
    ];

    // The consumer lives in the server's memory: a restart loses it, the stream stays.
    bus.server.restart().await?;
    let mut published = Vec::new();
    for n in 2..4 {
        published.push(
            bus.publish("work.requested", json!(n), Some("run-live"))
                .await?,
        );
    }

    let after = [
        next_record(&mut reader).await?,
        next_record(&mut reader).await?,
    ];
    assert_eq!(before, [1, 2]);
    assert_eq!(
        after
            .iter()
            .map(|record| record.sequence)
            .collect::<Vec<_>>(),
        [3, 4],
        "the read picks up after the last record it returned, and repeats none"
    );
    let ids: Vec<String> = after
        .iter()
        .map(|record| Ok(record.decode()?.id))
        .collect::<anyhow::Result<_>>()?;
    let published: Vec<String> = published.into_iter().map(|event| event.id).collect();
    assert_eq!(ids, published);
    Ok(())
}

#[tokio::test]
async fn a_log_longer_than_a_batch_rebuilds_to_the_state_of_its_records_folded_one_by_one()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let records = fill(&bus).await?;
    let projector = Projector::new(bus.jetstream.clone(), Default::default());

    let rebuilt = projector.rebuild::<RunBoard>(AsOf::Now, false).await?;

    let expected = folded_one_by_one(&records);
    assert_eq!(rebuilt.applied, records.len() as u64);
    assert_eq!(rebuilt.position, expected.position);
    assert_eq!(rebuilt.state.len(), RUNS);
    assert_eq!(rebuilt.state, expected.state);
    let run = rebuilt.state.run("run-7").expect("run-7");
    assert_eq!(run.events, RUN_LENGTH as u64);
    assert_eq!(run.tokens, (1..RUN_LENGTH as u64).sum::<u64>());
    Ok(())
}

#[tokio::test]
async fn a_temporal_query_stops_at_its_sequence_inside_a_batch() -> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let records = fill(&bus).await?;
    let projector = Projector::new(bus.jetstream.clone(), Default::default());
    // Inside the fold's second batch.
    let last = 777;

    let past = projector
        .rebuild::<RunBoard>(AsOf::Sequence(last), false)
        .await?;

    let expected = folded_one_by_one(&records[..last as usize]);
    assert_eq!(past.position.sequence, last);
    assert_eq!(past.applied, last);
    assert_eq!(past.state, expected.state);
    assert!(
        past.state.len() < RUNS,
        "the runs after sequence {last} are not on the board"
    );
    Ok(())
}

#[tokio::test]
async fn a_rebuild_resumes_from_its_snapshot_and_ends_where_a_full_rebuild_ends()
-> anyhow::Result<()> {
    let bus = Bus::start().await?;
    let records = fill(&bus).await?;
    let projector = Projector::new(bus.jetstream.clone(), Default::default());
    let early = projector
        .rebuild::<RunBoard>(AsOf::Sequence(600), false)
        .await?;
    projector.save(&early).await?;

    let resumed = projector.rebuild::<RunBoard>(AsOf::Now, true).await?;

    assert!(resumed.from_snapshot);
    assert_eq!(
        resumed.applied,
        records.len() as u64 - 600,
        "only what came after the snapshot is read"
    );
    let full = projector.rebuild::<RunBoard>(AsOf::Now, false).await?;
    assert_eq!(resumed.position, full.position);
    assert_eq!(resumed.state, full.state);
    Ok(())
}
