//! `choreo tail`: events as they are stored, one line each, until Ctrl-C.

use choreo_bus::log::{From, LogQuery, LogReader, Until};
use time::OffsetDateTime;

use crate::Failure;
use crate::connection::Connection;
use crate::render::{event_line, subject_filter, undecodable_line};
use crate::time_arg::time_value;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Only this event type (NATS wildcards allowed: `review.>`).
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Only this run.
    #[arg(long)]
    correlation: Option<String>,
    /// Only events from this source (agent or external system).
    #[arg(long)]
    source: Option<String>,
    /// Start with the events stored since then (RFC 3339, or a duration ago like 10m).
    #[arg(long, value_parser = time_value)]
    since: Option<OffsetDateTime>,
    /// Print each event as a CloudEvents JSON line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: TailArgs) -> Result<(), Failure> {
    let namespace = args.connection.namespace()?;
    if let Some(correlation) = &args.correlation {
        choreo_bus::names::validate_id("correlation", correlation).map_err(Failure::usage)?;
    }
    let jetstream = args.connection.jetstream().await?;
    let query = LogQuery::filtered(subject_filter(
        &namespace,
        args.correlation.as_deref(),
        args.event_type.as_deref(),
    ))
    .from(args.since.map_or(From::Now, From::Time))
    .until(Until::Live);
    let mut reader = LogReader::open(&jetstream, &namespace.stream_name(), query)
        .await
        .map_err(Failure::log)?;
    eprintln!("tailing {} (Ctrl-C to stop)", namespace.stream_name());
    loop {
        let record = tokio::select! {
            record = reader.next() => record.map_err(Failure::log)?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(record) = record else { return Ok(()) };
        let line = match record.decode() {
            Ok(event) if args.source.as_ref().is_some_and(|s| *s != event.source) => continue,
            Ok(event) => event_line(&record, &event, args.json),
            Err(err) => undecodable_line(&record, &err.to_string(), args.json),
        };
        println!("{line}");
    }
}
