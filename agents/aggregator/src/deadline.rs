//! The deadline watch: a `review.deadline` event for every round still open when its deadline
//! passes.
//!
//! Every aggregator process runs one. It reads the namespace's `review.planned`,
//! `review.revision.requested` and `review.completed` events from the start of the log and then
//! live, so it knows every open round, including those opened while no aggregator ran. When a
//! round's deadline passes (its first event's storage time + the deadline) it publishes
//! `review.deadline` as a child of that event, with an id made once per run and round: every
//! copy of the aggregator publishes the same event and the stream keeps one. The aggregator
//! handles it like any other event and reports with what it has.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use choreo_bus::envelope::stamp_child;
use choreo_bus::log::{From, LogQuery, LogReader, LogRecord, Until};
use choreo_bus::{AgentName, Event, EventType, Namespace, Publisher};
use choreo_review::events::{
    COMPLETED, DEADLINE, DeadlinePassed, PLANNED, REVISION_REQUESTED, RevisionRequested,
};
use time::OffsetDateTime;
use tokio::time::Instant;

/// How long to wait before trying a failed deadline publish again.
const RETRY_PUBLISH: Duration = Duration::from_secs(1);

/// Rounds waiting for their report, and when each is due.
#[derive(Debug, Default)]
pub struct OpenRounds {
    deadline: Duration,
    /// (correlation, round) → the event that opened the round, and when it is due.
    open: BTreeMap<(String, u32), (Event, OffsetDateTime)>,
}

impl OpenRounds {
    pub fn new(deadline: Duration) -> Self {
        OpenRounds {
            deadline,
            open: BTreeMap::new(),
        }
    }

    /// Folds one event of the watched types.
    pub fn apply(&mut self, event: &Event, stored: OffsetDateTime) {
        let round = match event.r#type.as_str() {
            PLANNED => 1,
            REVISION_REQUESTED => match serde_json::from_slice::<RevisionRequested>(&event.data) {
                Ok(revision) => revision.round,
                Err(_) => return,
            },
            COMPLETED => {
                if let Ok(report) = serde_json::from_slice::<ReportRound>(&event.data) {
                    self.open
                        .remove(&(event.correlation_id.clone(), report.round));
                }
                return;
            }
            _ => return,
        };
        // The round's first event opens it; a second revision request for it changes nothing.
        self.open
            .entry((event.correlation_id.clone(), round))
            .or_insert_with(|| (event.clone(), stored + self.deadline));
    }

    /// The earliest due time among open rounds.
    pub fn next_due(&self) -> Option<OffsetDateTime> {
        self.open.values().map(|(_, due)| *due).min()
    }

    /// Takes the rounds due at `now`: their opening events and round numbers.
    pub fn take_due(&mut self, now: OffsetDateTime) -> Vec<(Event, u32)> {
        let due: Vec<(String, u32)> = self
            .open
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        due.into_iter()
            .filter_map(|key| {
                let round = key.1;
                self.open.remove(&key).map(|(event, _)| (event, round))
            })
            .collect()
    }

    /// Puts a round back, due at `at` (after a failed publish).
    pub fn reopen(&mut self, event: Event, round: u32, at: OffsetDateTime) {
        self.open
            .insert((event.correlation_id.clone(), round), (event, at));
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Only the round of a report, without reading the rest of it.
#[derive(serde::Deserialize)]
struct ReportRound {
    round: u32,
}

/// The `review.deadline` event for `round`, as a child of the event that opened it.
pub fn deadline_event(opened_by: &Event, agent: &AgentName, round: u32) -> Option<Event> {
    let emit = choreo_bus::Emit::json(EventType::new(DEADLINE).ok()?, &DeadlinePassed { round })
        .ok()?
        .once_per_run(format!("deadline-{round}"));
    Some(stamp_child(opened_by, agent, 0, emit))
}

/// Runs the watch until the log read fails for good. Errors are logged; the caller decides
/// whether to restart it.
pub async fn watch(
    jetstream: jetstream::Context,
    namespace: Namespace,
    agent: AgentName,
    deadline: Duration,
) -> Result<(), choreo_bus::log::LogError> {
    let filters: Vec<String> = [PLANNED, REVISION_REQUESTED, COMPLETED]
        .iter()
        .filter_map(|t| EventType::new(*t).ok())
        .map(|t| namespace.type_filter(&t))
        .collect();
    // First what the log holds now, so that no round is thought open only because its
    // report has not been read yet; then live from there.
    let stream = namespace.stream_name();
    let mut rounds = OpenRounds::new(deadline);
    let mut caught_up = LogReader::open(
        &jetstream,
        &stream,
        LogQuery {
            filters: filters.clone(),
            from: From::Start,
            until: Until::End,
            ..LogQuery::default()
        },
    )
    .await?;
    let mut last = 0;
    while let Some(record) = caught_up.next().await? {
        last = record.sequence;
        apply_record(&mut rounds, &record);
    }
    tracing::info!(open = rounds.len(), "review deadline watch caught up");
    let query = LogQuery {
        filters,
        from: From::Sequence(last + 1),
        until: Until::Live,
        ..LogQuery::default()
    };
    let mut reader = LogReader::open(&jetstream, &stream, query).await?;
    let publisher = Publisher::new(jetstream, namespace);
    loop {
        let sleep_for = rounds.next_due().map(|due| {
            let left = due - OffsetDateTime::now_utc();
            Duration::try_from(left).unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            record = reader.next() => {
                match record? {
                    Some(record) => apply_record(&mut rounds, &record),
                    None => return Ok(()),
                }
            }
            () = sleep_until(sleep_for) => {
                for (opened_by, round) in rounds.take_due(OffsetDateTime::now_utc()) {
                    publish_deadline(&publisher, &agent, &mut rounds, opened_by, round).await;
                }
            }
        }
    }
}

fn apply_record(rounds: &mut OpenRounds, record: &LogRecord) {
    if let Ok(event) = record.decode() {
        rounds.apply(&event, record.time);
    }
}

async fn sleep_until(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep_until(Instant::now() + duration).await,
        None => std::future::pending().await,
    }
}

async fn publish_deadline(
    publisher: &Publisher,
    agent: &AgentName,
    rounds: &mut OpenRounds,
    opened_by: Event,
    round: u32,
) {
    let Some(event) = deadline_event(&opened_by, agent, round) else {
        return;
    };
    let stored = match publisher.send_event(&event).await {
        Ok(pending) => pending.confirmed().await,
        Err(err) => Err(err),
    };
    match stored {
        Ok(published) => tracing::info!(
            correlation_id = %event.correlation_id,
            round,
            duplicate = published.duplicate,
            "review deadline passed"
        ),
        Err(err) => {
            tracing::warn!(correlation_id = %event.correlation_id, round, "cannot publish the review deadline: {err}; trying again");
            let again = OffsetDateTime::now_utc() + RETRY_PUBLISH;
            rounds.reopen(opened_by, round, again);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_review::testing;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_700_000_000 + seconds)
    }

    #[test]
    fn a_round_is_due_its_deadline_after_it_opened_until_reported() {
        let mut rounds = OpenRounds::new(Duration::from_secs(60));
        let planned = testing::root(PLANNED, &serde_json::json!({}));
        rounds.apply(&planned, at(0));
        assert_eq!(rounds.next_due(), Some(at(60)));
        assert!(rounds.take_due(at(59)).is_empty());
        let due = rounds.take_due(at(60));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, 1);
        assert!(rounds.is_empty());

        // Reported before its deadline: nothing is due.
        rounds.apply(&planned, at(0));
        let report = testing::root(COMPLETED, &serde_json::json!({"round": 1}));
        let mut report_event = report.event.clone();
        report_event.correlation_id = planned.correlation_id.clone();
        rounds.apply(&report_event, at(5));
        assert!(rounds.is_empty());
    }

    #[test]
    fn the_deadline_event_is_the_same_in_every_copy() {
        let planned = testing::root(PLANNED, &serde_json::json!({}));
        let agent = AgentName::new("aggregator").expect("valid");
        let first = deadline_event(&planned, &agent, 1).expect("event");
        let again = deadline_event(&planned, &agent, 1).expect("event");
        assert_eq!(first.id, again.id);
        assert_eq!(first.causation_id, planned.id);
        assert_ne!(
            deadline_event(&planned, &agent, 2).expect("event").id,
            first.id
        );
    }
}
