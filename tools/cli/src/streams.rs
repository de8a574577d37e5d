//! `choreo streams`: set up the streams, or see what they hold and who reads them.

use choreo_bus::streams::{BUDGET_STREAM, DEAD_LETTER_STREAM, StreamOutcome};
use choreo_bus::{StreamsConfig, ensure_streams};
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
    /// Create the events, dead-letter and budget streams if missing; check them if not.
    Ensure {
        /// Copies of each stream on as many servers of a JetStream cluster (1, 3 or 5). With
        /// 3, events are still taken while one server is down.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Messages, size and time span of each stream, and each agent's consumer.
    Info,
}

pub async fn run(args: StreamsArgs) -> Result<(), Failure> {
    let namespace = args.connection.namespace()?;
    let jetstream = args.connection.jetstream().await?;
    match args.command {
        StreamsCommand::Ensure { replicas } => {
            let config = StreamsConfig {
                namespace: namespace.clone(),
                replicas,
                ..StreamsConfig::default()
            };
            let report = ensure_streams(&jetstream, &config)
                .await
                .map_err(Failure::setup)?;
            for (stream, outcome) in [
                (namespace.stream_name(), report.events),
                (DEAD_LETTER_STREAM.to_string(), report.dead_letters),
                (BUDGET_STREAM.to_string(), report.budgets),
            ] {
                let what = match outcome {
                    StreamOutcome::Created => "created",
                    StreamOutcome::AlreadyMatching => "already set up",
                };
                println!("{stream:<16} {what}");
            }
        }
        StreamsCommand::Info => {
            for name in [
                namespace.stream_name(),
                DEAD_LETTER_STREAM.to_string(),
                BUDGET_STREAM.to_string(),
            ] {
                let mut stream = match jetstream.get_stream(&name).await {
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
                println!(
                    "{name:<16} {} messages, {} bytes, sequences {}..{}, {} .. {}",
                    state.messages,
                    state.bytes,
                    state.first_sequence,
                    state.last_sequence,
                    format_time(state.first_timestamp),
                    format_time(state.last_timestamp)
                );
                let consumers: Vec<_> = stream
                    .consumers()
                    .try_collect()
                    .await
                    .map_err(|err| Failure::unavailable(err.to_string()))?;
                for consumer in consumers.iter().filter(|c| c.config.durable_name.is_some()) {
                    println!(
                        "  consumer {:<20} pending {}  in flight {}  redelivered {}  acknowledged through {}",
                        consumer.name,
                        consumer.num_pending,
                        consumer.num_ack_pending,
                        consumer.num_redelivered,
                        consumer.ack_floor.stream_sequence
                    );
                }
            }
        }
    }
    Ok(())
}
