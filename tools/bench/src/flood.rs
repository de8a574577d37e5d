//! `flood`: an agent with a configured handling rate is offered ten times that rate; how fast
//! does it actually handle, and is anything lost?
//!
//! The agent runs with `--handle-rate R` (burst 1). Five seconds of its work (5 R events) are
//! published at 10 R per second while it runs. The handling rate is measured from the first to
//! the last handled event; `rate_ratio` = measured / configured (aim: 0.9 to 1.1), `lost` =
//! offered events never handled (must be 0), `duplicates` = events handled more than once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use choreo_bus::guard::{GuardsConfig, Rate, RateLimit};
use choreo_bus::{
    Agent, Emit, EventType, Handler, HandlerError, Incoming, Publisher, RootEvent, Runtime,
    RuntimeConfig,
};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::{Settings, fresh_streams};

const FLOOD_TYPE: &str = "bench.flooded";
const SECONDS_OF_WORK: usize = 5;
const OVERLOAD: usize = 10;

#[derive(Debug, Serialize)]
pub struct FloodReport {
    pub scenario: &'static str,
    pub configured_rate: f64,
    pub offered: usize,
    pub offered_rate: f64,
    pub handled: usize,
    pub measured_rate: f64,
    pub rate_ratio: f64,
    pub lost: usize,
    pub duplicates: usize,
}

/// Records when each event was handled.
struct Recording {
    handled: Mutex<HashMap<String, (u32, Instant)>>,
    target: usize,
    done: Arc<Notify>,
}

impl Handler for Recording {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        let mut handled = self.handled.lock().unwrap_or_else(PoisonError::into_inner);
        handled
            .entry(event.id.clone())
            .or_insert((0, Instant::now()))
            .0 += 1;
        if handled.len() == self.target {
            self.done.notify_one();
        }
        Ok(Vec::new())
    }
}

pub async fn run(client: &async_nats::Client, settings: &Settings) -> anyhow::Result<FloodReport> {
    fresh_streams(client).await?;
    let rate = settings.flood_rate;
    let offered = usize::try_from(rate)? * SECONDS_OF_WORK;
    let done = Arc::new(Notify::new());
    let recording = Arc::new(Recording {
        handled: Mutex::new(HashMap::with_capacity(offered)),
        target: offered,
        done: Arc::clone(&done),
    });
    let config = RuntimeConfig {
        guards: GuardsConfig {
            handle_rate: Some(RateLimit {
                rate: Rate::per_second(rate)?,
                burst: 1,
            }),
            ..GuardsConfig::default()
        },
        ..RuntimeConfig::default()
    };
    let agent = Agent::builder("flooded").subscribes(FLOOD_TYPE).build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let runtime = tokio::spawn(
        Runtime::new(client.clone(), agent, Arc::clone(&recording))
            .config(config)
            .run(async {
                let _ = stopped.await;
            }),
    );

    // Offer OVERLOAD x the rate, in 10 ms slices.
    let publisher = Publisher::new(jetstream::new(client.clone()), Default::default());
    let event_type = EventType::new(FLOOD_TYPE)?;
    let per_slice = (offered * OVERLOAD / SECONDS_OF_WORK / 100).max(1);
    let mut ids = Vec::with_capacity(offered);
    let mut slices = tokio::time::interval(Duration::from_millis(10));
    let start = Instant::now();
    while ids.len() < offered {
        slices.tick().await;
        let mut pending = Vec::with_capacity(per_slice);
        for _ in 0..per_slice.min(offered - ids.len()) {
            let emit = Emit::json(event_type.clone(), &serde_json::json!({ "n": ids.len() }))?;
            let event = RootEvent::new(emit, "bench").into_event()?;
            pending.push(publisher.send_event(&event).await?);
            ids.push(event.id);
        }
        for published in pending {
            published.confirmed().await?;
        }
    }
    let offered_rate = offered as f64 / start.elapsed().as_secs_f64();

    let patience = Duration::from_secs(u64::try_from(SECONDS_OF_WORK)? * 3 + 30);
    let finished = tokio::time::timeout(patience, done.notified())
        .await
        .is_ok();
    let _ = stop.send(());
    runtime.await??;
    if !finished {
        eprintln!("choreo-bench flood: not every event was handled within {patience:?}");
    }

    let handled = recording
        .handled
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut times: Vec<Instant> = handled.values().map(|(_, at)| *at).collect();
    times.sort();
    let measured_rate = match (times.first(), times.last()) {
        (Some(first), Some(last)) if last > first => {
            (times.len() - 1) as f64 / (*last - *first).as_secs_f64()
        }
        _ => 0.0,
    };
    let configured_rate = f64::from(rate);
    Ok(FloodReport {
        scenario: "flood",
        configured_rate,
        offered,
        offered_rate,
        handled: handled.len(),
        measured_rate,
        rate_ratio: measured_rate / configured_rate,
        lost: ids.iter().filter(|id| !handled.contains_key(*id)).count(),
        duplicates: handled.values().filter(|(count, _)| *count > 1).count(),
    })
}
