//! `choreo-bench`: runs choreo's paths and raw async-nats side by side on one server, in one
//! run, alternating rounds, and prints each scenario's medians and their ratio.
//!
//! ```text
//! choreo-bench publish slow handle guards flood storm replay fold trace review --json
//! ```
//!
//! Each scenario prints one line (one JSON object with `--json`). Side-by-side scenarios
//! (`publish`, `handle`, `guards`, `telemetry`) have `scenario`, `raw` and `ours` (medians over the rounds),
//! `unit`, and `ratio` = ours / raw, where higher is better (for latencies it is raw / ours, so
//! higher stays better). A scenario that measures another baseline in the same rounds adds its
//! median and ours / it under the baseline's name (`publish`: `same_wire`, `ratio_same_wire`;
//! `replay`: `also_raw`, `ratio_also_raw`). `slow` runs an agent whose handler takes twice the
//! ack wait and reports `extra_runs` and `throughput_ratio` (see `slow.rs`). `flood` and `storm`
//! measure storm control and print their own figures (see their modules). `replay` and `trace`
//! read a log of `--log-events` events back (see `log.rs`), and `fold` folds the same events
//! held in memory; `trace` reports `latency_ms`, `messages_read` and `run_events`. `review` runs
//! the review team as processes and reports `p50_ms`, `p99_ms` and `max_agent_rss_mb` (see
//! `review.rs`).

// Every choreo binary uses mimalloc: the event path allocates per message, and glibc's
// allocator measured 27% slower on `publish` (see docs/architecture.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod flood;
mod handle;
mod log;
mod publish;
mod review;
mod slow;
mod storm;
mod telemetry;

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use serde::Serialize;

/// Benchmarks choreo against raw async-nats on the same server and settings.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Scenarios to run: publish, slow, handle, guards, telemetry, flood, storm, replay, fold,
    /// trace, review. All of them when none is named.
    scenarios: Vec<String>,
    /// Print one JSON object per scenario instead of a table.
    #[arg(long)]
    json: bool,
    /// Use this server instead of starting a private one (it must have JetStream enabled; the
    /// benchmark creates and deletes its own streams on it).
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Messages per round.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Rounds per side; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Bytes of event payload (the envelope's `data`).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// `flood`: the agent's configured handling rate, events per second.
    #[arg(long, default_value_t = 2000)]
    flood_rate: u32,
    /// `storm`: ping-pong runs started at once beside the bystander.
    #[arg(long, default_value_t = 100)]
    storms: usize,
    /// Events in the log that `replay` and `trace` read back.
    #[arg(long, default_value_t = 1_000_000)]
    log_events: usize,
    /// `review`: reviews of the sample change, one at a time.
    #[arg(long, default_value_t = 200)]
    reviews: usize,
    /// `handle`: read the events already in the server's `EVENTS` stream instead of new
    /// streams loaded here (how `telemetry` runs its child processes).
    #[arg(long, hide = true)]
    preloaded: bool,
    /// Set up logs (on stderr) and traces as an agent process does, rather than traces only.
    #[arg(long, hide = true)]
    as_agent: bool,
}

const SCENARIOS: [&str; 11] = [
    "publish",
    "slow",
    "handle",
    "guards",
    "telemetry",
    "flood",
    "storm",
    "replay",
    "fold",
    "trace",
    "review",
];

/// Settings every scenario shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub messages: usize,
    pub rounds: usize,
    pub payload: usize,
    pub flood_rate: u32,
    pub storms: usize,
    pub log_events: usize,
    pub reviews: usize,
    pub preloaded: bool,
}

/// One scenario's result.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub raw: f64,
    pub ours: f64,
    pub unit: &'static str,
    pub ratio: f64,
    pub messages: usize,
    pub rounds: usize,
    pub payload_bytes: usize,
    pub raw_rounds: Vec<f64>,
    pub ours_rounds: Vec<f64>,
    /// What `raw` measures, when it is not raw async-nats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_is: Option<&'static str>,
    /// This process's CPU time per message, in µs, by side (`raw`, `ours`, and the other
    /// sides'), medians over the rounds; where a scenario measures it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub client_cpu_us_per_msg: BTreeMap<&'static str, f64>,
    /// Other baselines measured in the same rounds, each with ours / it.
    #[serde(flatten, skip_serializing_if = "OtherSides::is_empty")]
    pub others: OtherSides,
}

/// Another way to do the same work, measured in the same rounds as `raw` and `ours`, so ours
/// can be read against it too. Its JSON keys carry its name: `<name>` (the median),
/// `<name>_is`, `<name>_rounds` and `ratio_<name>` (ours / it).
#[derive(Debug)]
pub struct OtherSide {
    pub name: &'static str,
    /// What it is.
    pub is: &'static str,
    pub median: f64,
    pub rounds: Vec<f64>,
    /// ours / it.
    pub ratio: f64,
}

/// A report's other sides, serialized as flat keys named after each side.
#[derive(Debug, Default)]
pub struct OtherSides(pub Vec<OtherSide>);

impl OtherSides {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for OtherSides {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len() * 4))?;
        for side in &self.0 {
            map.serialize_entry(side.name, &side.median)?;
            map.serialize_entry(&format!("{}_is", side.name), side.is)?;
            map.serialize_entry(&format!("{}_rounds", side.name), &side.rounds)?;
            map.serialize_entry(&format!("ratio_{}", side.name), &side.ratio)?;
        }
        map.end()
    }
}

impl Report {
    /// A throughput report: ratio = ours / raw.
    pub fn throughput(
        scenario: &'static str,
        settings: &Settings,
        raw_rounds: Vec<f64>,
        ours_rounds: Vec<f64>,
    ) -> Report {
        let (raw, ours) = (median(&raw_rounds), median(&ours_rounds));
        Report {
            scenario,
            raw,
            ours,
            unit: "msgs/s",
            ratio: throughput_ratio(ours, raw),
            messages: settings.messages,
            rounds: settings.rounds,
            payload_bytes: settings.payload,
            raw_rounds,
            ours_rounds,
            raw_is: None,
            client_cpu_us_per_msg: BTreeMap::new(),
            others: OtherSides::default(),
        }
    }

    /// Records `side`'s CPU time per message, the median of its rounds' (nothing when no round
    /// could measure it).
    pub fn with_client_cpu(mut self, side: &'static str, rounds: &[f64]) -> Report {
        if !rounds.is_empty() {
            self.client_cpu_us_per_msg.insert(side, median(rounds));
        }
        self
    }

    /// Adds another throughput baseline measured in the same rounds; its ratio is ours / it.
    pub fn with_other(mut self, name: &'static str, is: &'static str, rounds: Vec<f64>) -> Report {
        let median = median(&rounds);
        self.others.0.push(OtherSide {
            name,
            is,
            median,
            rounds,
            ratio: throughput_ratio(self.ours, median),
        });
        self
    }
}

/// ours / baseline, or 0 when the baseline measured nothing.
fn throughput_ratio(ours: f64, baseline: f64) -> f64 {
    if baseline > 0.0 { ours / baseline } else { 0.0 }
}

/// The value at `share` (0.99 for p99) of `values`, by the nearest-rank method; 0 if empty.
pub fn percentile(values: &[f64], share: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64) * share).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Spans exported only where OTEL_EXPORTER_OTLP_ENDPOINT is set: the `telemetry`
    // scenario's child processes, which also log as an agent does (`--as-agent`).
    let telemetry = if args.as_agent {
        choreo_bus::telemetry::init("choreo-bench")
    } else {
        choreo_bus::telemetry::init_traces("choreo-bench")
    };
    let _telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("choreo-bench: {err}");
            return ExitCode::from(64);
        }
    };
    let unknown: Vec<_> = args
        .scenarios
        .iter()
        .filter(|s| !SCENARIOS.contains(&s.as_str()))
        .collect();
    if !unknown.is_empty()
        || args.rounds == 0
        || args.messages == 0
        || args.flood_rate == 0
        || args.storms == 0
        || args.log_events == 0
        || args.reviews == 0
    {
        eprintln!(
            "choreo-bench: unknown scenario {unknown:?} or a zero count; scenarios are: {}",
            SCENARIOS.join(", ")
        );
        return ExitCode::from(64);
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("choreo-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // A private server unless one is given, so figures are not disturbed by other traffic.
    let (_server, url) = match &args.nats_url {
        Some(url) => (None, url.clone()),
        None => {
            let server = choreo_local_nats::NatsServer::start()
                .await
                .context("starting a private nats-server (or pass --nats-url)")?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = choreo_bus::NatsConfig::new(&url)
        .client_name("choreo-bench")
        .connect()
        .await?;
    let settings = Settings {
        messages: args.messages,
        rounds: args.rounds,
        payload: args.payload,
        flood_rate: args.flood_rate,
        storms: args.storms,
        log_events: args.log_events,
        reviews: args.reviews,
        preloaded: args.preloaded,
    };
    let scenarios: Vec<&str> = if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        args.scenarios.iter().map(String::as_str).collect()
    };
    if !args.json {
        println!(
            "{:<10} {:>14} {:>14} {:>8}  unit",
            "scenario", "raw", "ours", "ratio"
        );
    }
    for scenario in scenarios {
        let (json, table) = match scenario {
            "publish" => compared(publish::run(&client, &settings).await?)?,
            "slow" => {
                let slow = slow::run(&client).await?;
                let table = format!(
                    "{:<10} {} events, handler {} ms, ack wait {} ms, concurrency {}: {:.2} events/s, throughput_ratio {:.3}, extra_runs {}{}",
                    slow.scenario,
                    slow.events,
                    slow.handler_ms,
                    slow.ack_wait_ms,
                    slow.concurrency,
                    slow.events_per_s,
                    slow.throughput_ratio,
                    slow.extra_runs,
                    if slow.completed {
                        String::new()
                    } else {
                        format!(" (only {} handled in time)", slow.handled)
                    }
                );
                (serde_json::to_string(&slow)?, table)
            }
            "handle" => compared(handle::run(&client, &settings).await?)?,
            "guards" => compared(handle::run_guards(&client, &settings).await?)?,
            "telemetry" => compared(telemetry::run(&client, &url, &settings).await?)?,
            "flood" => {
                let flood = flood::run(&client, &settings).await?;
                let table = format!(
                    "{:<10} configured {:.0}/s, offered {:.0}/s, handled {:.0}/s: rate_ratio {:.3}, lost {}, duplicates {}",
                    flood.scenario,
                    flood.configured_rate,
                    flood.offered_rate,
                    flood.measured_rate,
                    flood.rate_ratio,
                    flood.lost,
                    flood.duplicates
                );
                (serde_json::to_string(&flood)?, table)
            }
            "storm" => {
                let storm = storm::run(&client, &settings).await?;
                let table = format!(
                    "{:<10} {} storms stopped by {} after at most {} events (bound {}); bystander p99 {:.1} ms alone, {:.1} ms beside them: ratio {:.3}",
                    storm.scenario,
                    storm.storms,
                    storm.stopped_by,
                    storm.published_before_stop,
                    storm.bound,
                    storm.bystander_p99_ms_without,
                    storm.bystander_p99_ms_with,
                    storm.bystander_p99_ratio
                );
                (serde_json::to_string(&storm)?, table)
            }
            "replay" => compared(log::replay(&client, &settings).await?)?,
            "fold" => {
                let fold = log::fold(&settings)?;
                let table = format!(
                    "{:<10} the run board folded from {} events in memory: {:.0} events/s, {:.0} ns per event",
                    fold.scenario, fold.log_events, fold.events_per_s, fold.ns_per_event
                );
                (serde_json::to_string(&fold)?, table)
            }
            "trace" => {
                let trace = log::trace(&client, &settings).await?;
                let table = format!(
                    "{:<10} {:>14.2} {:>14.2} {:>8.3}  ms (one run of {} events among {}; read {} messages)",
                    trace.scenario,
                    trace.raw,
                    trace.ours,
                    trace.ratio,
                    trace.run_events,
                    trace.log_events,
                    trace.messages_read
                );
                (serde_json::to_string(&trace)?, table)
            }
            "review" => {
                let review = review::run(&client, &url, &settings).await?;
                let table = format!(
                    "{:<10} {} reviews of the sample change, every agent a process: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; largest agent RSS {:.1} MiB; start-up p50 {:.1} ms, max {:.1} ms",
                    review.scenario,
                    review.reviews,
                    review.p50_ms,
                    review.p99_ms,
                    review.max_ms,
                    review.max_agent_rss_mb,
                    review.startup_ms.p50,
                    review.startup_ms.max
                );
                (serde_json::to_string(&review)?, table)
            }
            other => anyhow::bail!("no scenario {other}"),
        };
        println!("{}", if args.json { json } else { table });
    }
    Ok(())
}

/// A side-by-side report as a JSON line and a table row.
fn compared(report: Report) -> anyhow::Result<(String, String)> {
    let others: String = report
        .others
        .0
        .iter()
        .map(|other| {
            format!(
                "; {} {:.0}, ours / it {:.3}",
                other.name, other.median, other.ratio
            )
        })
        .collect();
    let cpu: String = report
        .client_cpu_us_per_msg
        .iter()
        .map(|(side, us)| format!(" {side} {us:.1}"))
        .collect();
    let cpu = if cpu.is_empty() {
        cpu
    } else {
        format!("; client CPU µs/msg:{cpu}")
    };
    let table = format!(
        "{:<10} {:>14.0} {:>14.0} {:>8.3}  {}{}{others}{cpu}",
        report.scenario,
        report.raw,
        report.ours,
        report.ratio,
        report.unit,
        report
            .raw_is
            .map(|is| format!(" (raw: {is})"))
            .unwrap_or_default()
    );
    Ok((serde_json::to_string(&report)?, table))
}

/// A fresh events stream with the bus's default settings, for one scenario.
pub async fn fresh_streams(client: &async_nats::Client) -> anyhow::Result<()> {
    let jetstream = async_nats::jetstream::new(client.clone());
    let config = choreo_bus::StreamsConfig::default();
    for name in [
        config.events_stream().name,
        config.dead_letter_stream().name,
        config.budget_stream().name,
    ] {
        let _ = jetstream.delete_stream(&name).await;
    }
    choreo_bus::ensure_streams(&jetstream, &config).await?;
    Ok(())
}

/// The correlation ids the scenarios spread their events over.
pub fn run_ids() -> Vec<String> {
    (0..256).map(|i| format!("run-{i}")).collect()
}

/// A JSON payload of about `bytes` bytes.
pub fn payload(bytes: usize) -> serde_json::Value {
    serde_json::json!({ "text": "x".repeat(bytes.saturating_sub(12)) })
}

/// The rates and CPU times per message of a two-sided scenario's rounds, side by side.
#[derive(Debug, Default)]
pub struct PairedRounds {
    raw: Vec<f64>,
    ours: Vec<f64>,
    raw_cpu: Vec<f64>,
    ours_cpu: Vec<f64>,
}

impl PairedRounds {
    /// Runs round `round`'s two sides in turn ([`in_turn`]), each giving its rate and CPU time
    /// per message ([`with_client_cpu`]), and records both.
    pub async fn run(
        &mut self,
        round: usize,
        raw: impl Future<Output = anyhow::Result<(f64, Option<f64>)>>,
        ours: impl Future<Output = anyhow::Result<(f64, Option<f64>)>>,
    ) -> anyhow::Result<()> {
        let (raw, ours) = in_turn(round, raw, ours).await;
        let ((raw_rate, raw_cpu), (ours_rate, ours_cpu)) = (raw?, ours?);
        self.raw.push(raw_rate);
        self.raw_cpu.extend(raw_cpu);
        self.ours.push(ours_rate);
        self.ours_cpu.extend(ours_cpu);
        Ok(())
    }

    /// The scenario's report: the rates' medians and ratio, and each side's CPU per message.
    pub fn report(self, scenario: &'static str, settings: &Settings) -> Report {
        Report::throughput(scenario, settings, self.raw, self.ours)
            .with_client_cpu("raw", &self.raw_cpu)
            .with_client_cpu("ours", &self.ours_cpu)
    }
}

/// Runs the two sides of round `round`, `raw` first in even rounds and `ours` first in odd
/// ones, so neither side always runs second (behind the other's consumer, on a server still
/// settling the other's work); returns their results as (raw, ours).
async fn in_turn<R, O>(
    round: usize,
    raw: impl Future<Output = R>,
    ours: impl Future<Output = O>,
) -> (R, O) {
    if round.is_multiple_of(2) {
        let raw = raw.await;
        (raw, ours.await)
    } else {
        let ours = ours.await;
        (raw.await, ours)
    }
}

/// Runs `work` (which handles `n` messages and returns msgs/s) and returns its rate with the
/// CPU time this process spent meanwhile, per message, in µs: the client's cost, which on a
/// machine shared with other work moves less than the rate. `None` where the kernel does not
/// say (no `/proc`).
pub async fn with_client_cpu(
    n: usize,
    work: impl Future<Output = anyhow::Result<f64>>,
) -> anyhow::Result<(f64, Option<f64>)> {
    let before = process_cpu_ns();
    let rate = work.await?;
    let per_message = match (before, process_cpu_ns()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before) as f64 / 1e3 / n as f64),
        _ => None,
    };
    Ok((rate, per_message))
}

/// The CPU time of this process's threads so far, in ns (the first field of each thread's
/// `schedstat`: the whole process, at a finer grain than the clock ticks of `/proc/self/stat`).
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for thread in std::fs::read_dir("/proc/self/task").ok()? {
        let schedstat = std::fs::read_to_string(thread.ok()?.path().join("schedstat")).ok()?;
        total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::in_turn;

    #[tokio::test]
    async fn the_side_that_goes_first_changes_every_round() {
        for round in 0..4 {
            let order = RefCell::new(Vec::new());
            let results = in_turn(
                round,
                async {
                    order.borrow_mut().push("raw");
                    "raw"
                },
                async {
                    order.borrow_mut().push("ours");
                    "ours"
                },
            )
            .await;
            assert_eq!(results, ("raw", "ours"), "round {round}: each in its place");
            let expected = if round.is_multiple_of(2) {
                ["raw", "ours"]
            } else {
                ["ours", "raw"]
            };
            assert_eq!(order.into_inner(), expected, "round {round}");
        }
    }
}
