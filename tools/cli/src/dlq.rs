//! `choreo dlq`: dead letters listed, shown, redriven after a fix, or purged.

use choreo_bus::cloudevents;
use choreo_bus::dead_letter::{
    DeadLetterFilter, DeadLetterReason, DeadLetterStore, StoredDeadLetter,
};

use crate::Failure;
use crate::connection::Connection;
use crate::time_arg::format_time;

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// List dead letters with their reasons.
    Ls {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full, with the original event decoded.
    Show {
        sequence: u64,
        #[arg(long)]
        json: bool,
    },
    /// Republish the original events for a fresh delivery to the agent that gave up (after a
    /// fix), and remove their dead letters.
    Redrive(Selection),
    /// Delete dead letters for good.
    Purge(Selection),
}

/// Which dead letters a redrive or purge acts on.
#[derive(Debug, Clone, clap::Args)]
struct Selection {
    /// Dead letters by sequence (see `choreo dlq ls`).
    #[arg(required_unless_present = "all")]
    sequences: Vec<u64>,
    /// Every dead letter that matches the filters.
    #[arg(long, conflicts_with = "sequences")]
    all: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Debug, Clone, clap::Args)]
struct FilterArgs {
    /// Only this agent's.
    #[arg(long)]
    agent: Option<String>,
    /// Only this run's.
    #[arg(long)]
    correlation: Option<String>,
    /// Only this reason: handler_failed, handler_rejected, handler_timeout, decode_failed,
    /// contract_violated, depth_exceeded, budget_exhausted, cycle_detected.
    #[arg(long, value_parser = reason)]
    reason: Option<DeadLetterReason>,
}

pub fn reason(value: &str) -> Result<DeadLetterReason, String> {
    DeadLetterReason::from_name(value).ok_or_else(|| {
        let names: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
        format!("{value:?} is not a reason; use one of {}", names.join(", "))
    })
}

impl FilterArgs {
    fn filter(&self) -> Result<DeadLetterFilter, Failure> {
        for (field, value) in [("agent", &self.agent), ("correlation", &self.correlation)] {
            if let Some(value) = value {
                choreo_bus::names::validate_id(field, value).map_err(Failure::usage)?;
            }
        }
        Ok(DeadLetterFilter {
            agent: self.agent.clone(),
            correlation: self.correlation.clone(),
            reason: self.reason,
        })
    }
}

pub async fn run(args: DlqArgs) -> Result<(), Failure> {
    let namespace = args.connection.namespace()?;
    let store = DeadLetterStore::new(args.connection.jetstream().await?, namespace);
    match args.command {
        DlqCommand::Ls { filter, json } => {
            let letters = store
                .list(&filter.filter()?)
                .await
                .map_err(Failure::dead_letter)?;
            for letter in &letters {
                if json {
                    println!("{}", letter_json(letter));
                } else {
                    println!(
                        "{:<6} {}  {:<16} {:<16} run {}  {} {}: {}",
                        letter.sequence,
                        format_time(letter.time),
                        letter.letter.reason,
                        letter.letter.agent,
                        or_unknown(letter.correlation_id()),
                        or_unknown(&letter.letter.event_type),
                        or_unknown(&letter.letter.event_id),
                        letter.letter.error
                    );
                }
            }
            if letters.is_empty() && !json {
                eprintln!("no dead letters");
            }
        }
        DlqCommand::Show { sequence, json } => {
            let letter = store.get(sequence).await.map_err(Failure::dead_letter)?;
            if json {
                println!("{}", letter_json(&letter));
            } else {
                let value = letter_json(&letter);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
                );
            }
        }
        DlqCommand::Redrive(selection) => {
            for sequence in chosen(&store, selection).await? {
                let redriven = store
                    .redrive(sequence)
                    .await
                    .map_err(Failure::dead_letter)?;
                println!(
                    "redrove dead letter {sequence}: event {} of run {} is back for {} (stream sequence {})",
                    redriven.event_id,
                    redriven.correlation_id,
                    redriven.agent,
                    redriven.stream_sequence
                );
            }
        }
        DlqCommand::Purge(selection) => {
            for sequence in chosen(&store, selection).await? {
                store.purge(sequence).await.map_err(Failure::dead_letter)?;
                println!("purged dead letter {sequence}");
            }
        }
    }
    Ok(())
}

/// The sequences named, or with `--all` every dead letter the filters match.
async fn chosen(store: &DeadLetterStore, selection: Selection) -> Result<Vec<u64>, Failure> {
    if !selection.all {
        return Ok(selection.sequences);
    }
    let letters = store
        .list(&selection.filter.filter()?)
        .await
        .map_err(Failure::dead_letter)?;
    if letters.is_empty() {
        eprintln!("no dead letters matched");
    }
    Ok(letters.iter().map(|l| l.sequence).collect())
}

fn or_unknown(value: &str) -> &str {
    if value.is_empty() { "?" } else { value }
}

fn letter_json(stored: &StoredDeadLetter) -> serde_json::Value {
    let letter = &stored.letter;
    serde_json::json!({
        "sequence": stored.sequence,
        "time": format_time(stored.time),
        "reason": letter.reason,
        "error": letter.error,
        "agent": letter.agent,
        "correlation_id": stored.correlation_id(),
        "delivery_count": letter.delivery_count,
        "original_subject": letter.original_subject,
        "original_stream": letter.stream,
        "original_sequence": letter.stream_sequence,
        "event": stored.original_event().map(|e| cloudevents::to_json(&e)),
        "original_bytes": letter.original.len(),
    })
}
