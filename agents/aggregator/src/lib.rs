//! `aggregator`: the join. When every specialist a round waits for has completed (with all its
//! findings in the log), or the round's deadline passes, it emits `review.completed`: a report
//! with a synthesized summary over each specialist's raw output, kept verbatim.
//!
//! Its join state is a projection ([`join::ReviewJoin`]) folded from the run's own events each
//! time it decides: the log, not the process, holds the state, so a restarted aggregator, or
//! another copy of it, decides from everything the run holds, whichever copy handled what.
//! The read is filtered to the run's subjects, so it costs the run's size. Only the handling of
//! the run's last input reports ([`emits_for`]), so the report hangs under the input that
//! completed the join. A copy that handles that input again reports again with the same
//! once-per-run id, and the stream keeps one. Deadlines come from [`deadline`].

pub mod deadline;
pub mod join;

use std::time::Duration;

use choreo_bus::projection::{Folded, Projector};
use choreo_bus::serve::ServeContext;
use choreo_bus::settings::HumanDuration;
use choreo_bus::{Agent, Emit, HandlerError, Incoming, ValidationError};
use choreo_review::events::{COMPLETED, DEADLINE};
use choreo_review::{emit_json, unexpected_type};

use crate::join::{Decision, INPUTS, ReviewJoin};

/// The agent's name, which a redriven event names when it is for the aggregator.
pub const AGENT: &str = "aggregator";

pub fn agent() -> Result<Agent, ValidationError> {
    INPUTS
        .into_iter()
        .fold(Agent::builder(AGENT), |builder, input| {
            builder.subscribes(input)
        })
        .emits(COMPLETED)
        // Published by the deadline watch, not by the handler.
        .emits(DEADLINE)
        // The join and the deadline watch read runs from the log.
        .reads_log()
        .build()
}

/// The aggregator's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// How long a round waits for its specialists before it is reported without them.
    #[arg(long, env = "CHOREO_REVIEW_DEADLINE", default_value = "2m")]
    pub review_deadline: HumanDuration,
}

/// Builds the handler and starts the deadline watch beside it.
pub async fn build(
    settings: Settings,
    context: ServeContext,
) -> Result<Aggregator, ValidationError> {
    let deadline = settings.review_deadline.0;
    if deadline.is_zero() {
        return Err(ValidationError::new(
            "review-deadline",
            "must be above zero",
        ));
    }
    let jetstream = async_nats::jetstream::new(context.client);
    let watching = keep_watching(
        jetstream.clone(),
        context.namespace.clone(),
        context.agent,
        deadline,
    );
    let shutdown = context.shutdown;
    tokio::spawn(async move {
        // The watch ends with the agent, not in the middle of the drain after it.
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = watching => {}
        }
    });
    Ok(Aggregator {
        projector: Projector::new(jetstream, context.namespace),
    })
}

/// Runs the deadline watch for as long as the process runs, starting it again after a failure.
async fn keep_watching(
    jetstream: async_nats::jetstream::Context,
    namespace: choreo_bus::Namespace,
    agent: choreo_bus::AgentName,
    deadline: Duration,
) {
    loop {
        let outcome = deadline::watch(
            jetstream.clone(),
            namespace.clone(),
            agent.clone(),
            deadline,
        )
        .await;
        match outcome {
            Ok(()) => tracing::warn!("the review deadline watch's read ended; starting it again"),
            Err(err) => {
                tracing::warn!("the review deadline watch failed: {err}; starting it again")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How long an event waits when the run's log cannot be read (a NATS election, a lost node).
const UNREADABLE_WAIT: Duration = Duration::from_secs(2);

/// The join's handler.
#[derive(Debug, Clone)]
pub struct Aggregator {
    projector: Projector,
}

impl choreo_bus::Handler for Aggregator {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        if !INPUTS.contains(&event.r#type.as_str()) {
            return Err(unexpected_type(&event.r#type));
        }
        let join = self
            .projector
            .fold_run::<ReviewJoin>(&event.correlation_id)
            .await
            .map_err(|err| {
                let error = format!("cannot read the run: {err}");
                if err.is_retryable() {
                    // NATS is electing or a node is lost: wait, without spending a delivery.
                    HandlerError::unavailable(error, UNREADABLE_WAIT)
                } else {
                    HandlerError::retryable(error)
                }
            })?;
        emits_for(&join, event.stream_sequence)
    }
}

/// What the handling of the event stored at sequence `handled` emits, given the run's join as
/// read by that handling.
///
/// Only the handling of the run's last input reports. Handlings run side by side and each
/// reads the log, so the handling of an earlier input (the plan, when the aggregator starts
/// late) may read a log in which the round is already complete; the last input's handling
/// always reads one that holds everything before it. Leaving the report to it hangs the
/// report under the input that completed the join in stream order, whichever handling ran
/// first, so a replay's tree lines up with the original's (`choreo diff`).
pub fn emits_for(join: &Folded<ReviewJoin>, handled: u64) -> Result<Vec<Emit>, HandlerError> {
    if join.position.sequence < handled {
        // A read from a replica that lags behind: the last input's handling must see it all.
        return Err(HandlerError::retryable(format!(
            "the run's log was read up to sequence {}, short of the event at {handled}",
            join.position.sequence
        )));
    }
    if join.state.last_input != handled {
        return Ok(Vec::new());
    }
    match join.state.decide() {
        Decision::Wait => Ok(Vec::new()),
        Decision::FindingsInFlight(why) => Err(HandlerError::retryable(why)),
        Decision::Report(report) => {
            let key = format!("round-{}", report.round);
            Ok(vec![emit_json(COMPLETED, &report)?.once_per_run(key)])
        }
    }
}

#[cfg(test)]
mod tests;
