//! `choreo state`: the run board rebuilt from the log, now or as of a past time or sequence.

use choreo_bus::projection::run_board::{RunBoard, RunView, agent_positions};
use choreo_bus::projection::{AsOf, Projector};
use time::OffsetDateTime;

use crate::Failure;
use crate::connection::Connection;
use crate::time_arg::{format_time, time_value};

#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// The board as the log stood at this time (RFC 3339, or a duration ago like 10m).
    #[arg(long, value_parser = time_value, conflicts_with = "seq")]
    at: Option<OffsetDateTime>,
    /// The board after this stream sequence.
    #[arg(long)]
    seq: Option<u64>,
    /// Only this run, in detail.
    #[arg(long)]
    correlation: Option<String>,
    /// Include the platform's own runs (circuit-breaker announcements).
    #[arg(long)]
    all: bool,
    /// Rebuild from the start of the log, ignoring (and not saving) the snapshot.
    #[arg(long)]
    no_snapshot: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: StateArgs) -> Result<(), Failure> {
    let namespace = args.connection.namespace()?;
    if let Some(at) = args.at
        && at > OffsetDateTime::now_utc()
    {
        return Err(Failure::usage(format!(
            "--at {} is in the future",
            format_time(at)
        )));
    }
    let jetstream = args.connection.jetstream().await?;
    let projector = Projector::new(jetstream.clone(), namespace.clone());
    let as_of = match (args.at, args.seq) {
        (Some(at), _) => AsOf::Time(at),
        (None, Some(seq)) => AsOf::Sequence(seq),
        (None, None) => AsOf::Now,
    };
    let board = projector
        .rebuild::<RunBoard>(as_of, !args.no_snapshot)
        .await
        .map_err(Failure::projection)?;
    // Only a board of the whole log is worth keeping; a past one is answered from it anyway.
    if as_of == AsOf::Now && !args.no_snapshot && board.applied > 0 {
        projector.save(&board).await.map_err(Failure::projection)?;
    }
    let agents = agent_positions(&jetstream, &namespace)
        .await
        .map_err(Failure::log)?;
    let views: Vec<RunView<'_>> = board
        .state
        .view(&namespace, &agents)
        .into_iter()
        .filter(|view| {
            args.all || args.correlation.is_some() || !view.run.root_type.starts_with("choreo.")
        })
        .filter(|view| {
            args.correlation
                .as_ref()
                .is_none_or(|c| c.as_str() == &*view.run.correlation_id)
        })
        .collect();
    if let Some(correlation) = &args.correlation
        && views.is_empty()
    {
        return Err(Failure::no_input(format!(
            "no run {correlation} in namespace {namespace}{}: check the id (`choreo state` lists runs)",
            match as_of {
                AsOf::Now => String::new(),
                _ => " at that point".to_string(),
            }
        )));
    }
    if args.json {
        let document = serde_json::json!({
            "namespace": namespace.to_string(),
            "position": board.position,
            "runs": views,
        });
        println!("{document}");
        return Ok(());
    }
    println!(
        "{} runs in {} up to sequence {}{}",
        views.len(),
        namespace,
        board.position.sequence,
        board
            .position
            .time
            .map(|t| format!(" ({})", format_time(t)))
            .unwrap_or_default()
    );
    for view in &views {
        print_run(view, args.correlation.is_some());
    }
    Ok(())
}

fn print_run(view: &RunView<'_>, detail: bool) {
    let run = view.run;
    let status = match &view.status {
        choreo_bus::projection::run_board::RunStatus::Pending { waiting_on } => {
            format!("pending (waiting on {})", waiting_on.join(", "))
        }
        other => other.name().to_string(),
    };
    println!(
        "{}  {:<10} started {}  {} events  {} tokens  cost {:.6}  root {} from {}",
        run.correlation_id,
        status,
        format_time(run.started),
        run.events,
        run.tokens,
        run.cost(),
        run.root_type,
        run.root_source
    );
    if !detail {
        for letter in run.open_dead_letters() {
            println!(
                "    dead letter {}: {} gave up on {} ({})",
                letter.notice.dead_letter_sequence,
                letter.notice.agent,
                letter.notice.event_type,
                letter.notice.reason
            );
        }
        return;
    }
    println!("  last event {}", format_time(run.last_event));
    for (agent, work) in &run.agents {
        let handled: Vec<String> = work
            .handled
            .iter()
            .map(|(t, n)| format!("{t} ×{n}"))
            .collect();
        let emitted: Vec<String> = work
            .emitted
            .iter()
            .map(|(t, n)| format!("{t} ×{n}"))
            .collect();
        let spent = if work.tokens > 0 || work.cost_micros > 0 {
            format!(
                " model tokens {} cost {:.6}",
                work.tokens,
                work.cost_micros as f64 / 1e6
            )
        } else {
            String::new()
        };
        println!(
            "  agent {agent}: handled [{}] emitted [{}]{}{spent}",
            handled.join(", "),
            emitted.join(", "),
            if work.dead_lettered > 0 {
                format!(" dead-lettered {}", work.dead_lettered)
            } else {
                String::new()
            }
        );
    }
    for letter in &run.dead_letters {
        println!(
            "  dead letter {}: {} gave up on {} {}: {} ({}){}",
            letter.notice.dead_letter_sequence,
            letter.notice.agent,
            letter.notice.event_type,
            letter.notice.event_id,
            letter.notice.reason,
            letter.notice.error,
            if letter.redriven { " — redriven" } else { "" }
        );
    }
}
