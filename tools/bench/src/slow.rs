//! `slow`: an agent whose handler takes twice the ack wait.
//!
//! The runtime runs with `ack_wait` 1 s (the least it accepts) and `concurrency` 8, its other
//! settings the defaults; the handler sleeps 2 s and emits one child. [`EVENTS`] root events,
//! each in a run of its own so every worker slot has work, are published before the clock
//! starts; the clock starts when the runtime is started and stops when the handler has finished
//! every event once.
//!
//! - `extra_runs`: handler runs beyond one per event, counted a little after the last event
//!   finished (so a redelivery the server already sent has time to start). Each is an event
//!   the server handed out again while it was still in hand, because the runtime did not tell
//!   the server it was working on it. 0 is the target.
//! - `throughput_ratio`: events/s measured ÷ (`concurrency` ÷ handler time), the rate with
//!   every slot always busy. 0.9 is the target.
//!
//! Bounded in time: if the events are not all handled within [`DEADLINE`], the figures are
//! what was handled by then, with `completed` false.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use choreo_bus::{
    Agent, Emit, EventType, Handler, HandlerError, Incoming, Publisher, RootEvent, Runtime,
    RuntimeConfig, envelope::JSON,
};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::fresh_streams;

/// Events published, each in its own run.
pub const EVENTS: usize = 32;
/// The runtime's `concurrency`.
const CONCURRENCY: usize = 8;
/// The runtime's `ack_wait`: the least it accepts.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// How long the handler takes for one event: twice the ack wait.
const HANDLER_TIME: Duration = Duration::from_secs(2);
/// The longest the benchmark waits for every event to be handled: 2.5 times the time with
/// every slot always busy.
const DEADLINE: Duration = Duration::from_secs(20);
/// Time left after the last event finished for redeliveries already sent to start.
const SETTLE: Duration = Duration::from_millis(1500);

const EVENT_TYPE: &str = "bench.slow";
const CHILD_TYPE: &str = "bench.slow-done";

/// The `slow` scenario's figures.
#[derive(Debug, Serialize)]
pub struct SlowReport {
    pub scenario: &'static str,
    pub events: usize,
    pub handler_ms: u128,
    pub ack_wait_ms: u128,
    pub concurrency: usize,
    /// Handler runs in all, by the time the runtime was stopped.
    pub runs: usize,
    /// Runs beyond one per event.
    pub extra_runs: usize,
    /// Events the handler finished at least once before the clock stopped.
    pub handled: usize,
    /// Whether every event was handled before [`DEADLINE`].
    pub completed: bool,
    pub elapsed_s: f64,
    /// Events handled per second.
    pub events_per_s: f64,
    /// `events_per_s` ÷ (`concurrency` ÷ handler time).
    pub throughput_ratio: f64,
}

/// Sleeps [`HANDLER_TIME`] and emits one child; counts each event's runs and the events
/// finished.
struct SlowHandler {
    child: EventType,
    runs: Mutex<HashMap<String, usize>>,
    finished: Mutex<HashSet<String>>,
    all_finished: Notify,
}

impl Handler for SlowHandler {
    async fn handle(&self, incoming: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        *lock(&self.runs)
            .entry(incoming.event.id.clone())
            .or_default() += 1;
        tokio::time::sleep(HANDLER_TIME).await;
        let finished = {
            let mut finished = lock(&self.finished);
            finished.insert(incoming.event.id.clone());
            finished.len()
        };
        if finished == EVENTS {
            self.all_finished.notify_one();
        }
        Ok(vec![Emit::new(
            self.child.clone(),
            JSON,
            Bytes::from_static(b"{}"),
        )])
    }
}

/// The counts stay right even if a handler panicked while holding the lock.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub async fn run(client: &async_nats::Client) -> anyhow::Result<SlowReport> {
    fresh_streams(client).await?;
    let publisher = Publisher::new(jetstream::new(client.clone()), Default::default());
    let event_type = EventType::new(EVENT_TYPE)?;
    for run in 0..EVENTS {
        let emit = Emit::new(event_type.clone(), JSON, Bytes::from_static(b"{}"));
        publisher
            .publish_root(RootEvent::new(emit, "bench").with_correlation_id(format!("slow-{run}")))
            .await?;
    }

    let agent = Agent::builder("bench-slow")
        .subscribes(EVENT_TYPE)
        .emits(CHILD_TYPE)
        .build()?;
    let handler = Arc::new(SlowHandler {
        child: EventType::new(CHILD_TYPE)?,
        runs: Mutex::new(HashMap::new()),
        finished: Mutex::new(HashSet::new()),
        all_finished: Notify::new(),
    });
    let config = RuntimeConfig {
        ack_wait: ACK_WAIT,
        concurrency: CONCURRENCY,
        // Events still in hand at the stop get one handler time to finish.
        shutdown_grace: HANDLER_TIME + Duration::from_millis(500),
        ..RuntimeConfig::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let start = Instant::now();
    let mut runtime = tokio::spawn(
        Runtime::new(client.clone(), agent, Arc::clone(&handler))
            .config(config)
            .run(async {
                let _ = stopped.await;
            }),
    );
    let completed = tokio::select! {
        () = handler.all_finished.notified() => true,
        () = tokio::time::sleep(DEADLINE) => false,
        ended = &mut runtime => {
            ended??;
            anyhow::bail!("the runtime stopped before the events were handled");
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let handled = lock(&handler.finished).len();
    tokio::time::sleep(SETTLE).await;
    let (runs, started) = {
        let runs = lock(&handler.runs);
        (runs.values().sum::<usize>(), runs.len())
    };
    let _ = stop.send(());
    runtime.await??;

    let events_per_s = handled as f64 / elapsed;
    let ideal = CONCURRENCY as f64 / HANDLER_TIME.as_secs_f64();
    Ok(SlowReport {
        scenario: "slow",
        events: EVENTS,
        handler_ms: HANDLER_TIME.as_millis(),
        ack_wait_ms: ACK_WAIT.as_millis(),
        concurrency: CONCURRENCY,
        runs,
        extra_runs: runs - started,
        handled,
        completed,
        elapsed_s: elapsed,
        events_per_s,
        throughput_ratio: events_per_s / ideal,
    })
}
