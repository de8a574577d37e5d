//! `choreo replay`: the log in order, filtered; or, with `--into`, a run's root events copied
//! into a sandbox namespace so agents started there run it again.

use std::io::{IsTerminal, Write};

use choreo_bus::log::{From, LogQuery, LogReader, Until};
use choreo_bus::names::validate_id;
use choreo_bus::{Event, Namespace, Publisher, StreamsConfig, ensure_streams};
use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;

use crate::Failure;
use crate::connection::Connection;
use crate::render::EventFilter;
use crate::time_arg::time_value;

/// The attribute a replayed root carries: where it was copied from (`<ns>/<correlation>/<id>`).
pub const REPLAY_OF: &str = "replayof";

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// From this time (RFC 3339, or a duration ago like 10m).
    #[arg(long, value_parser = time_value)]
    since: Option<OffsetDateTime>,
    /// Up to this time.
    #[arg(long, value_parser = time_value)]
    until: Option<OffsetDateTime>,
    #[command(flatten)]
    filter: EventFilter,
    /// Print each event as a CloudEvents JSON line.
    #[arg(long)]
    json: bool,
    /// Copy the run's root events (needs --correlation) into this sandbox namespace, so agents
    /// started with `--namespace NAMESPACE` run it again; then `choreo diff` the two runs.
    #[arg(long, value_name = "NAMESPACE", requires = "correlation")]
    into: Option<String>,
    /// With --into: the copy's run id (default: the same id, in the sandbox).
    #[arg(long = "as", value_name = "CORRELATION", requires = "into")]
    as_correlation: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: ReplayArgs) -> Result<(), Failure> {
    let namespace = args.connection.namespace()?;
    let subject = args.filter.subject(&namespace)?;
    if let (Some(since), Some(until)) = (args.since, args.until)
        && since > until
    {
        return Err(Failure::usage(
            "--since is after --until: nothing to replay",
        ));
    }
    let jetstream = args.connection.jetstream().await?;
    let query = LogQuery::filtered(subject)
        .from(args.since.map_or(From::Start, From::Time))
        .until(args.until.map_or(Until::End, Until::Time));
    let mut reader = LogReader::open(&jetstream, &namespace.stream_name(), query)
        .await
        .map_err(Failure::log)?;
    if let Some(into) = &args.into {
        return copy_roots(&args, &jetstream, &namespace, into, &mut reader).await;
    }

    // A bar only for a person watching; piped output stays clean.
    let bar = if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(reader.expected().unwrap_or(0));
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut shown = 0u64;
    while let Some(record) = reader.next().await.map_err(Failure::log)? {
        bar.inc(1);
        let Some(line) = args.filter.line(&record, args.json) else {
            continue;
        };
        shown += 1;
        if bar.is_hidden() {
            writeln!(out, "{line}").map_err(Failure::output)?;
        } else {
            bar.println(line);
        }
    }
    out.flush().map_err(Failure::output)?;
    bar.finish_and_clear();
    if shown == 0 {
        eprintln!("no events matched");
    }
    Ok(())
}

/// `--into`: the run's roots (events nobody caused), copied with their ids and payloads.
async fn copy_roots(
    args: &ReplayArgs,
    jetstream: &async_nats::jetstream::Context,
    namespace: &Namespace,
    into: &str,
    reader: &mut LogReader,
) -> Result<(), Failure> {
    let sandbox = Namespace::new(into).map_err(Failure::usage)?;
    if sandbox == *namespace {
        return Err(Failure::usage(format!(
            "--into {into} is the namespace being replayed; choose a sandbox namespace"
        )));
    }
    let correlation = args.filter.correlation.as_deref().unwrap_or_default();
    let target = args.as_correlation.as_deref().unwrap_or(correlation);
    validate_id("as", target).map_err(Failure::usage)?;

    let mut roots: Vec<Event> = Vec::new();
    while let Some(record) = reader.next().await.map_err(Failure::log)? {
        if record.header(choreo_bus::dead_letter::REDRIVE_OF).is_some() {
            continue;
        }
        if let Ok(mut event) = record.decode()
            && event.causation_id.is_empty()
            && args.filter.admits(&event)
        {
            // A root published without a time (a client in another language) is copied with
            // the time the stream stored it, as the runtime would read it: the CLI publishes
            // no root without a time.
            if event.time.is_none() {
                event.time = Some(std::time::SystemTime::from(record.time).into());
            }
            roots.push(event);
        }
    }
    if roots.is_empty() {
        return Err(Failure::no_input(format!(
            "run {correlation} has no root events in namespace {namespace}: check the id \
             (`choreo state`) and the filters"
        )));
    }
    ensure_streams(
        jetstream,
        &StreamsConfig {
            namespace: sandbox.clone(),
            ..StreamsConfig::default()
        },
    )
    .await
    .map_err(Failure::setup)?;
    let existing = LogReader::open(
        jetstream,
        &sandbox.stream_name(),
        LogQuery::filtered(sandbox.correlation_filter(target)),
    )
    .await
    .map_err(Failure::log)?;
    if existing.expected().unwrap_or(0) > 0 {
        return Err(Failure::failed(format!(
            "namespace {sandbox} already has a run {target}; pick another with --as NEW_ID, or \
             another sandbox namespace"
        )));
    }
    let publisher = Publisher::new(jetstream.clone(), sandbox.clone());
    for mut root in roots {
        root.attributes.insert(
            REPLAY_OF.to_string(),
            format!("{namespace}/{correlation}/{}", root.id),
        );
        root.correlation_id = target.to_string();
        publisher
            .send_event(&root)
            .await
            .map_err(Failure::publish)?
            .confirmed()
            .await
            .map_err(Failure::publish)?;
        println!("copied {} {} into {sandbox}", root.r#type, root.id);
    }
    println!(
        "run {sandbox}/{target} started; start agents with --namespace {sandbox} (or \
         CHOREO_NAMESPACE={sandbox}), then: choreo diff {namespace}/{correlation} {sandbox}/{target}"
    );
    Ok(())
}
