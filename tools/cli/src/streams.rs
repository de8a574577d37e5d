//! `choreo streams`: set up the streams, or see what they hold and who reads them.

use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use choreo_bus::projection::SNAPSHOT_BUCKET;
use choreo_bus::settings::HumanDuration;
use choreo_bus::streams::{
    BUDGET_STREAM, DEAD_LETTER_STREAM, MAX_REPLICAS, OnDifference, StreamLimits, StreamOutcome,
    ensure_streams_with,
};
use choreo_bus::{Namespace, StreamsConfig};
use futures::TryStreamExt;

use crate::Failure;
use crate::connection::Connection;
use crate::time_arg::format_time;

#[derive(Debug, clap::Args)]
pub struct StreamsArgs {
    #[command(subcommand)]
    command: StreamsCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum StreamsCommand {
    /// Create the events, dead-letter and budget streams and the snapshot bucket if missing;
    /// check them if not, and with --update change in place what differs.
    #[command(after_help = ENSURE_HELP)]
    Ensure(EnsureArgs),
    /// Messages, size and time span of each stream, and each agent's consumer.
    Info,
}

const ENSURE_HELP: &str = "\
A stream that differs only in what the server changes in place (replicas, max age, max bytes, \
the duplicate window) is reported, exit 1, until --update applies it; it keeps its events. \
Other differences (the subjects, the storage type) are never changed: exit 1, with or without \
--update. Exit codes: 0 set up; 1 a difference (the message says which); 64 a bad value; 69 \
NATS or JetStream unavailable (retry, or --wait).";

#[derive(Debug, clap::Args)]
struct EnsureArgs {
    /// Copies of each stream on as many servers of a JetStream cluster (1 to 5; a single
    /// server takes 1). With 3, events are still taken while one server is down.
    #[arg(
        long,
        env = "CHOREO_STREAM_REPLICAS",
        default_value_t = 1,
        value_name = "N",
        value_parser = replicas
    )]
    replicas: usize,
    /// Copies of the CHOREO_SNAPSHOTS bucket, which keeps the run board's snapshots
    /// [default: --replicas].
    #[arg(long, env = "CHOREO_SNAPSHOT_REPLICAS", value_name = "N", value_parser = replicas)]
    snapshot_replicas: Option<usize>,
    /// How long EVENTS and DEADLETTERS each keep a message, e.g. 30d; off: no limit.
    #[arg(
        long,
        env = "CHOREO_STREAM_MAX_AGE",
        default_value = "off",
        value_name = "DURATION",
        value_parser = max_age
    )]
    max_age: Duration,
    /// How many bytes EVENTS and DEADLETTERS may each hold, e.g. 50GiB or 20GB; a full stream
    /// refuses new events. off: no limit.
    #[arg(
        long,
        env = "CHOREO_STREAM_MAX_BYTES",
        default_value = "off",
        value_name = "SIZE",
        value_parser = max_bytes,
        allow_negative_numbers = true
    )]
    max_bytes: i64,
    /// How long each stream remembers event ids to store a retried event once; keep it above
    /// the agents' ack wait, and no longer than --max-age [default: 2m].
    #[arg(
        long,
        env = "CHOREO_STREAM_DUPLICATE_WINDOW",
        value_name = "DURATION",
        value_parser = duplicate_window
    )]
    duplicate_window: Option<Duration>,
    /// Change in place what the server can change (replicas, limits, the duplicate window):
    /// the streams keep their events. A lower limit deletes what is beyond it.
    #[arg(long, env = "CHOREO_STREAM_UPDATE")]
    update: bool,
    /// While NATS or JetStream is unavailable (not reachable yet, a cluster electing its
    /// leaders), keep trying for up to this long before exiting 69, e.g. 60s.
    #[arg(
        long,
        env = "CHOREO_STREAM_WAIT",
        default_value = "0s",
        value_name = "DURATION",
        value_parser = wait
    )]
    wait: Duration,
}

impl EnsureArgs {
    /// The configuration these flags ask for; 64 naming the flag when the server would refuse it.
    fn config(&self, namespace: Namespace) -> Result<StreamsConfig, Failure> {
        let defaults = StreamsConfig::default();
        let limits = StreamLimits {
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            ..StreamLimits::default()
        };
        let config = StreamsConfig {
            namespace,
            duplicate_window: self.duplicate_window.unwrap_or(defaults.duplicate_window),
            events: limits.clone(),
            dead_letters: limits,
            replicas: self.replicas,
            snapshot_replicas: Some(self.snapshot_replicas.unwrap_or(self.replicas)),
            ..defaults
        };
        config.validate().map_err(|err| {
            let flag = match err.setting {
                "replicas" => "--replicas (CHOREO_STREAM_REPLICAS)",
                "snapshot_replicas" => "--snapshot-replicas (CHOREO_SNAPSHOT_REPLICAS)",
                _ => "--duplicate-window (CHOREO_STREAM_DUPLICATE_WINDOW)",
            };
            // The window is checked against the streams' max age, which --max-age sets.
            let hint = if err.reason.contains("max age") {
                "; shorten --duplicate-window or lengthen --max-age (CHOREO_STREAM_MAX_AGE)"
            } else {
                ""
            };
            Failure::usage(format!("{flag}: {}{hint}", err.reason))
        })?;
        Ok(config)
    }
}

/// 1 to 5 copies.
fn replicas(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(count) if (1..=MAX_REPLICAS).contains(&count) => Ok(count),
        _ => Err(format!(
            "not a number of copies from 1 to {MAX_REPLICAS} (3 on a three-server cluster, 1 \
             on a single server)"
        )),
    }
}

/// A duration longer than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match text.parse::<HumanDuration>() {
        Ok(HumanDuration(duration)) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("zero".to_string()),
        Err(err) => Err(err.to_string()),
    }
}

/// A duration, or `off` (zero, JetStream's "no limit").
fn max_age(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "off" => Ok(Duration::ZERO),
        _ => positive_duration(text).map_err(|err| format!("{err}; write off for no limit")),
    }
}

fn duplicate_window(text: &str) -> Result<Duration, String> {
    positive_duration(text)
}

fn wait(text: &str) -> Result<Duration, String> {
    text.parse::<HumanDuration>()
        .map(|HumanDuration(duration)| duration)
        .map_err(|err| err.to_string())
}

const NOT_A_SIZE: &str = "not a size; write it like 52428800, 50MiB or 20GB, or off";

/// A size in bytes: a whole number with an optional unit, decimal (`KB`, `MB`, `GB`, `TB`:
/// powers of 1000) or binary (`KiB`, `MiB`, `GiB`, `TiB`: powers of 1024); or `off` (-1,
/// JetStream's "no limit").
fn max_bytes(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    if trimmed == "off" {
        return Ok(-1);
    }
    if trimmed.starts_with('-') {
        return Err("negative; a size is a number of bytes, or off for no limit".to_string());
    }
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(NOT_A_SIZE.to_string());
        }
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| NOT_A_SIZE.to_string())?;
    if bytes == 0 {
        return Err("zero; write off for no limit".to_string());
    }
    Ok(bytes)
}

pub async fn run(args: StreamsArgs) -> Result<(), Failure> {
    let namespace = args.connection.namespace()?;
    let ensure = match args.command {
        StreamsCommand::Ensure(ensure) => ensure,
        StreamsCommand::Info => return info(&args.connection, &namespace).await,
    };
    let config = ensure.config(namespace.clone())?;
    let on_difference = if ensure.update {
        OnDifference::Update
    } else {
        OnDifference::Report
    };
    let deadline = tokio::time::Instant::now() + ensure.wait;
    let report = loop {
        let attempt = async {
            let jetstream = args.connection.jetstream().await?;
            ensure_streams_with(&jetstream, &config, on_difference)
                .await
                .map_err(Failure::setup)
        };
        match attempt.await {
            Ok(report) => break report,
            Err(failure)
                if failure.code == Failure::UNAVAILABLE
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(failure) => return Err(failure),
        }
    };
    let snapshots = SNAPSHOT_BUCKET.to_string();
    for (stream, outcome) in [
        (namespace.stream_name(), Some(report.events)),
        (DEAD_LETTER_STREAM.to_string(), Some(report.dead_letters)),
        (BUDGET_STREAM.to_string(), Some(report.budgets)),
        (snapshots, report.snapshots),
    ] {
        let what = match outcome {
            None => continue,
            Some(StreamOutcome::Created) => "created".to_string(),
            Some(StreamOutcome::AlreadyMatching) => "already set up".to_string(),
            Some(StreamOutcome::Updated(differences)) => format!(
                "updated: {}",
                differences
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        println!("{stream:<16} {what}");
    }
    Ok(())
}

/// Pause between attempts while waiting for JetStream (`--wait`).
const RETRY_PAUSE: Duration = Duration::from_millis(500);

async fn info(connection: &Connection, namespace: &Namespace) -> Result<(), Failure> {
    let jetstream = connection.jetstream().await?;
    for (name, stream_name) in [
        (namespace.stream_name(), namespace.stream_name()),
        (
            DEAD_LETTER_STREAM.to_string(),
            DEAD_LETTER_STREAM.to_string(),
        ),
        (BUDGET_STREAM.to_string(), BUDGET_STREAM.to_string()),
        (SNAPSHOT_BUCKET.to_string(), format!("KV_{SNAPSHOT_BUCKET}")),
    ] {
        let mut stream = match jetstream.get_stream(&stream_name).await {
            Ok(stream) => stream,
            Err(err) => {
                println!("{name:<16} missing ({err}); run `choreo streams ensure`");
                continue;
            }
        };
        let info = stream
            .info()
            .await
            .map_err(|err| Failure::unavailable(err.to_string()))?
            .clone();
        let state = &info.state;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.leader.as_deref())
            .map(|leader| format!(" (leader {leader})"))
            .unwrap_or_default();
        println!(
            "{name:<16} {} messages, {} bytes, sequences {}..{}, {} .. {}; replicas {}{leader}",
            state.messages,
            state.bytes,
            state.first_sequence,
            state.last_sequence,
            format_time(state.first_timestamp),
            format_time(state.last_timestamp),
            info.config.num_replicas,
        );
        // Names first (the metadata leader answers), then each consumer's state from its own
        // leader: with a server down, the server's full listing leaves out the consumers
        // that server led and pages through the rest again.
        let mut names: Vec<String> = stream
            .consumer_names()
            .try_collect()
            .await
            .map_err(|err| Failure::unavailable(err.to_string()))?;
        names.sort();
        for name in names {
            match stream.consumer_info(&name).await {
                Ok(consumer) if consumer.config.durable_name.is_some() => println!(
                    "  consumer {:<20} pending {}  in flight {}  redelivered {}  acknowledged through {}",
                    consumer.name,
                    consumer.num_pending,
                    consumer.num_ack_pending,
                    consumer.num_redelivered,
                    consumer.ack_floor.stream_sequence
                ),
                // A read's consumer, gone when the read ends.
                Ok(_) => {}
                // A read's consumer that expired since the names were listed.
                Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => {}
                Err(err) => println!(
                    "  consumer {name:<20} did not answer ({err}): the server leading it may \
                     be down, or its replicas electing"
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        ensure: EnsureArgs,
    }

    fn config(args: &[&str]) -> Result<StreamsConfig, String> {
        let flags = Flags::try_parse_from(std::iter::once("ensure").chain(args.iter().copied()))
            .map_err(|err| err.to_string())?;
        flags
            .ensure
            .config(Namespace::default())
            .map_err(|failure| format!("{} {}", failure.code, failure.message))
    }

    #[test]
    fn sizes_take_decimal_and_binary_units_or_off() {
        assert_eq!(max_bytes("1048576"), Ok(1_048_576));
        assert_eq!(max_bytes("20GB"), Ok(20_000_000_000));
        assert_eq!(max_bytes("50MiB"), Ok(50 << 20));
        assert_eq!(max_bytes("2 gib"), Ok(2 << 30));
        assert_eq!(max_bytes("off"), Ok(-1));
        for bad in [
            "-1",
            "-5GB",
            "0",
            "0MB",
            "ten",
            "10XB",
            "1.5GB",
            "99999999999TB",
            "",
        ] {
            assert!(max_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_flags_make_the_configuration_with_the_library_defaults_for_the_rest() {
        let plain = config(&[]).expect("valid");
        assert_eq!(plain.replicas, 1);
        assert_eq!(plain.snapshot_replicas, Some(1));
        assert_eq!(
            plain.duplicate_window,
            StreamsConfig::default().duplicate_window
        );
        assert_eq!(plain.events, StreamLimits::default());
        assert_eq!(plain.budgets, StreamsConfig::default().budgets);

        let cluster = config(&[
            "--replicas",
            "3",
            "--max-age",
            "30d",
            "--max-bytes",
            "50GiB",
            "--duplicate-window",
            "5m",
        ])
        .expect("valid");
        assert_eq!(cluster.replicas, 3);
        assert_eq!(cluster.snapshot_replicas, Some(3), "defaults to --replicas");
        assert_eq!(cluster.events.max_age, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(cluster.dead_letters.max_bytes, 50 << 30);
        assert_eq!(cluster.duplicate_window, Duration::from_secs(300));
        // The budgets keep their own week.
        assert_eq!(cluster.budgets, StreamsConfig::default().budgets);
        let snapshots = config(&["--replicas", "3", "--snapshot-replicas", "1"]).expect("valid");
        assert_eq!(snapshots.snapshot_replicas, Some(1));
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--replicas", "0"][..], "--replicas"),
            (&["--replicas", "6"], "--replicas"),
            (&["--snapshot-replicas", "0"], "--snapshot-replicas"),
            (&["--max-bytes", "-1"], "--max-bytes"),
            (&["--max-age", "soon"], "--max-age"),
            (&["--max-age", "0s"], "--max-age"),
            (&["--duplicate-window", "0s"], "--duplicate-window"),
            (
                &["--duplicate-window", "3m", "--max-age", "1m"],
                "--duplicate-window",
            ),
            (&["--wait", "forever"], "--wait"),
        ] {
            let message = config(args).expect_err("refused");
            assert!(message.contains(flag), "{args:?}: {message}");
        }
        let window = config(&["--max-age", "1m"]).expect_err("longer than the max age");
        assert!(
            window.starts_with("64 ") && window.contains("--max-age"),
            "{window}"
        );
    }
}
