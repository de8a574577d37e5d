//! Projections rebuilt from a real log: a log longer than one batch of the fold, read from a
//! real nats-server, folds to exactly the state its records give one by one; a temporal query
//! stops at its point wherever that falls in a batch; a rebuild resumes from its snapshot.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use choreo_bus::envelope::stamp_child;
use choreo_bus::log::LogRecord;
use choreo_bus::projection::run_board::RunBoard;
use choreo_bus::projection::{AsOf, Folded, Projector};
use choreo_bus::{AgentName, Emit, Event, RootEvent};
use choreo_testkit::{Bus, event_type};
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
