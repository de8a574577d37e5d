//! How far behind the agent's consumer is, for the metrics: every [`LAG_REFRESH`] the
//! consumer's info is asked for, and its pending counts set the gauges. Every copy reports the
//! one consumer they share, so a query takes the max over copies, not the sum.

use std::time::Duration;

use async_nats::jetstream;
use tracing::debug;

use crate::metrics::AgentMetrics;

/// How often the consumer's pending counts are asked for: one small request per copy.
pub(super) const LAG_REFRESH: Duration = Duration::from_secs(5);

/// Sets `metrics`' consumer gauges from `consumer` on `stream` until the task is aborted.
pub(super) async fn watch(
    jetstream: jetstream::Context,
    stream: String,
    consumer: String,
    metrics: AgentMetrics,
) {
    let mut every = tokio::time::interval(LAG_REFRESH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let info = match jetstream.get_stream_no_info(&stream).await {
            Ok(stream) => stream
                .consumer_info(&consumer)
                .await
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match info {
            Ok(info) => metrics.consumer_lag(info.num_pending, info.num_ack_pending),
            // Unanswered while NATS is away; the gauges keep the last answer.
            Err(err) => {
                debug!(%consumer, error = %err, "cannot read the consumer's pending counts")
            }
        }
    }
}
