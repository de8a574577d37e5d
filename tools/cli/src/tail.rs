//! `choreo tail`: events as they are stored, one line each, until Ctrl-C.

use choreo_bus::log::{From, LogQuery, LogReader, Until};
use time::OffsetDateTime;

use crate::Failure;
use crate::connection::Connection;
use crate::render::EventFilter;
use crate::time_arg::time_value;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    filter: EventFilter,
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
    let subject = args.filter.subject(&namespace)?;
    let jetstream = args.connection.jetstream().await?;
    let query = LogQuery::filtered(subject)
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
        if let Some(line) = args.filter.line(&record, args.json) {
            println!("{line}");
        }
    }
}
