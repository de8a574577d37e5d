//! Setting up the `EVENTS`, `DEADLETTERS` and `BUDGETS` streams, idempotently.
//!
//! [`ensure_streams`] creates what is missing and leaves what matches alone, so every agent,
//! tool and deployment step can call it. A stream that exists with different settings is
//! reported as [`SetupError::Conflict`] and never silently changed: the log is the source of
//! truth, and shrinking its limits would delete history.
//!
//! # Defaults
//!
//! | setting | events | dead letters | budgets |
//! |---|---|---|---|
//! | storage | file | file | file |
//! | subjects | `<ns>.>` | `dlq.>` | `budget.>` |
//! | duplicate window | 2 minutes | 2 minutes | 2 minutes |
//! | max age | unlimited | unlimited | 7 days (a run's counters reset after a week idle) |
//! | max bytes, messages | unlimited | unlimited | unlimited; one message kept per counter |
//! | when full | refuse new events (`discard: new`), so a full log is an error, never lost history | same | drop the oldest counters (counters cannot refuse) |
//! | replicas | 1 (`replicas`) | same | same |
//!
//! `BUDGETS` is a counter stream (`allow_msg_counter`, nats-server 2.12 and later): each
//! subject is one number the server adds to atomically, which is how the per-correlation
//! budgets are shared by every agent process (see [`crate::guard::budget`]).

use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{self, DiscardPolicy, StorageType},
};

use crate::names::Namespace;

/// The stream that keeps dead letters for every namespace.
pub const DEAD_LETTER_STREAM: &str = "DEADLETTERS";
/// The subject prefix of dead letters: `dlq.<ns>.<agent>.<correlation>`.
pub const DEAD_LETTER_PREFIX: &str = "dlq";

/// The counter stream behind the per-correlation budgets.
pub const BUDGET_STREAM: &str = "BUDGETS";
/// The subject prefix of budget counters: `budget.<ns>.<correlation>.<events|tokens>`.
pub const BUDGET_PREFIX: &str = "budget";

/// Limits of one stream. Zero or negative means unlimited, as in JetStream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamLimits {
    pub max_age: Duration,
    pub max_bytes: i64,
    pub max_messages: i64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_age: Duration::ZERO,
            max_bytes: -1,
            max_messages: -1,
        }
    }
}

/// Settings for [`ensure_streams`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamsConfig {
    pub namespace: Namespace,
    /// How long an event id is remembered for deduplication. Must outlast a redelivery: keep it
    /// above the agents' ack wait.
    pub duplicate_window: Duration,
    pub events: StreamLimits,
    pub dead_letters: StreamLimits,
    /// The budget counters; `max_age` is how long an idle run's counters are kept.
    pub budgets: StreamLimits,
    /// Copies of each stream, on as many servers of a JetStream cluster (1, 3 or 5; a single
    /// server takes only 1). With 3, the streams keep taking events while one server is down,
    /// after their replicas elect a new leader. Default 1.
    pub replicas: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            namespace: Namespace::default(),
            duplicate_window: Duration::from_secs(120),
            events: StreamLimits::default(),
            dead_letters: StreamLimits::default(),
            budgets: StreamLimits {
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..StreamLimits::default()
            },
            replicas: 1,
        }
    }
}

impl StreamsConfig {
    /// The events stream's JetStream configuration.
    pub fn events_stream(&self) -> stream::Config {
        self.stream(
            self.namespace.stream_name(),
            self.namespace.all_events(),
            &self.events,
        )
    }

    /// The dead-letter stream's JetStream configuration.
    pub fn dead_letter_stream(&self) -> stream::Config {
        self.stream(
            DEAD_LETTER_STREAM.to_string(),
            format!("{DEAD_LETTER_PREFIX}.>"),
            &self.dead_letters,
        )
    }

    /// The budget counter stream's JetStream configuration.
    pub fn budget_stream(&self) -> stream::Config {
        stream::Config {
            allow_message_counter: true,
            // Counters cannot refuse an increment; the newest total per counter is all we need.
            discard: DiscardPolicy::Old,
            max_messages_per_subject: 1,
            ..self.stream(
                BUDGET_STREAM.to_string(),
                format!("{BUDGET_PREFIX}.>"),
                &self.budgets,
            )
        }
    }

    fn stream(&self, name: String, subject: String, limits: &StreamLimits) -> stream::Config {
        stream::Config {
            name,
            subjects: vec![subject],
            storage: StorageType::File,
            duplicate_window: self.duplicate_window,
            max_age: limits.max_age,
            max_bytes: limits.max_bytes,
            max_messages: limits.max_messages,
            discard: DiscardPolicy::New,
            num_replicas: self.replicas,
            // Direct gets let tools read single events from any replica without the leader.
            allow_direct: true,
            ..stream::Config::default()
        }
    }
}

/// What [`ensure_streams`] did to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    Created,
    AlreadyMatching,
}

/// What [`ensure_streams`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsReport {
    pub events: StreamOutcome,
    pub dead_letters: StreamOutcome,
    pub budgets: StreamOutcome,
}

/// Why the streams are not ready.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "stream {stream} exists with {field} = {existing}, but this configuration wants {wanted}; \
         nothing was changed: align the configuration, or change the stream deliberately \
         (nats stream edit {stream})"
    )]
    Conflict {
        stream: String,
        field: &'static str,
        existing: String,
        wanted: String,
    },
    /// JetStream did not answer, or answered "not now" (no meta leader, too few servers up for
    /// the replicas); the same call can pass later.
    #[error(
        "JetStream is unavailable while setting up stream {stream} ({source}); is JetStream \
         enabled (nats-server -js), and enough of its servers up for the replicas? Retry"
    )]
    Unavailable {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("JetStream refused stream {stream}: {source}")]
    Refused {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
}

impl SetupError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SetupError::Unavailable { .. })
    }
}

/// Creates the events, dead-letter and budget streams if they are missing; checks them if not.
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), choreo_bus::streams::SetupError> {
/// let jetstream = async_nats::jetstream::new(client);
/// choreo_bus::streams::ensure_streams(&jetstream, &Default::default()).await?;
/// # Ok(()) }
/// ```
pub async fn ensure_streams(
    jetstream: &jetstream::Context,
    config: &StreamsConfig,
) -> Result<StreamsReport, SetupError> {
    Ok(StreamsReport {
        events: ensure_stream(jetstream, config.events_stream()).await?,
        dead_letters: ensure_stream(jetstream, config.dead_letter_stream()).await?,
        budgets: ensure_stream(jetstream, config.budget_stream()).await?,
    })
}

async fn ensure_stream(
    jetstream: &jetstream::Context,
    wanted: stream::Config,
) -> Result<StreamOutcome, SetupError> {
    let name = wanted.name.clone();
    let unavailable = |source: async_nats::Error| SetupError::Unavailable {
        stream: name.clone(),
        source,
    };
    match jetstream.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|err| unavailable(err.into()))?;
            compare(&info.config, &wanted)?;
            Ok(StreamOutcome::AlreadyMatching)
        }
        Err(err) if is_stream_not_found(&err) => {
            match jetstream.create_stream(wanted.clone()).await {
                Ok(_) => Ok(StreamOutcome::Created),
                Err(create_err) => {
                    // Another process may have created it between our two calls.
                    if let Ok(mut existing) = jetstream.get_stream(&name).await
                        && let Ok(info) = existing.info().await
                    {
                        compare(&info.config, &wanted)?;
                        return Ok(StreamOutcome::AlreadyMatching);
                    }
                    if create_may_pass(&create_err) {
                        Err(unavailable(create_err.into()))
                    } else {
                        Err(SetupError::Refused {
                            stream: name,
                            source: create_err.into(),
                        })
                    }
                }
            }
        }
        Err(err) => Err(unavailable(err.into())),
    }
}

/// True when the server answered that the stream does not exist (as opposed to not answering).
pub fn is_stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(server)
            if server.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Whether a JetStream error code means "not now" rather than "no": the cluster has no meta
/// leader (10008, "temporarily unavailable"), is missing answers (10004), or this server cannot
/// handle the request or has no assignment yet (10009, 10007); the stream is offline (10118).
/// Each passes once the cluster has elected its leaders, so the request is worth retrying.
pub(crate) fn is_transient(code: jetstream::ErrorCode) -> bool {
    use jetstream::ErrorCode;
    [
        ErrorCode::CLUSTER_NOT_AVAILABLE,
        ErrorCode::CLUSTER_INCOMPLETE,
        ErrorCode::CLUSTER_NOT_ASSIGNED,
        ErrorCode::CLUSTER_NOT_LEADER,
        ErrorCode::STREAM_OFFLINE,
    ]
    .contains(&code)
}

/// Whether a failed stream creation can pass when tried again: nothing answered, or the cluster
/// is not ready, or too few of its servers are up to place the replicas (10005; also the answer
/// when more replicas are asked than the cluster has servers, which the message names).
fn create_may_pass(err: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind;
    match err.kind() {
        CreateStreamErrorKind::JetStreamUnavailable | CreateStreamErrorKind::TimedOut => true,
        CreateStreamErrorKind::JetStream(server) => {
            is_transient(server.error_code())
                || server.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS
        }
        _ => false,
    }
}

/// A JetStream limit as text, every "no limit" (0 or negative; the server reports -1) alike.
fn limit(value: i64) -> String {
    if value > 0 {
        value.to_string()
    } else {
        "unlimited".to_string()
    }
}

/// The first setting in which an existing stream differs from the wanted one.
fn compare(existing: &stream::Config, wanted: &stream::Config) -> Result<(), SetupError> {
    // Rendered with Debug, which is equal exactly when the values are, and readable in the error.
    let settings = |c: &stream::Config| {
        [
            ("subjects", format!("{:?}", c.subjects)),
            ("storage", format!("{:?}", c.storage)),
            ("duplicate_window", format!("{:?}", c.duplicate_window)),
            ("max_age", format!("{:?}", c.max_age)),
            ("max_bytes", limit(c.max_bytes)),
            ("max_messages", limit(c.max_messages)),
            ("discard", format!("{:?}", c.discard)),
            (
                "max_messages_per_subject",
                limit(c.max_messages_per_subject),
            ),
            ("allow_msg_counter", c.allow_message_counter.to_string()),
            ("replicas", c.num_replicas.to_string()),
        ]
    };
    for ((field, existing), (_, wanted_value)) in
        settings(existing).into_iter().zip(settings(wanted))
    {
        if existing != wanted_value {
            return Err(SetupError::Conflict {
                stream: wanted.name.clone(),
                field,
                existing,
                wanted: wanted_value,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};

    use super::*;

    fn server_error(code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 503, "err_code": code, "description": "from the server"
        }))
        .expect("a JetStream error")
    }

    #[test]
    fn a_creation_nobody_answered_or_the_cluster_could_not_place_yet_may_pass() {
        let may_pass = |kind| create_may_pass(&CreateStreamError::new(kind));
        assert!(may_pass(CreateStreamErrorKind::TimedOut));
        assert!(may_pass(CreateStreamErrorKind::JetStreamUnavailable));
        // No meta leader; too few servers up for the replicas.
        assert!(may_pass(CreateStreamErrorKind::JetStream(server_error(
            10008
        ))));
        assert!(may_pass(CreateStreamErrorKind::JetStream(server_error(
            10005
        ))));
        // Replicas on a single server, a bad configuration: asking again changes nothing.
        assert!(!may_pass(CreateStreamErrorKind::JetStream(server_error(
            10074
        ))));
        assert!(!may_pass(CreateStreamErrorKind::InvalidStreamName));
    }

    #[test]
    fn only_not_now_codes_are_transient() {
        for code in [10004, 10007, 10008, 10009, 10118] {
            assert!(is_transient(jetstream::ErrorCode(code)), "{code}");
        }
        // Stream not found, store failed (full), JetStream not enabled for the account.
        for code in [10059, 10077, 10039] {
            assert!(!is_transient(jetstream::ErrorCode(code)), "{code}");
        }
    }
}
