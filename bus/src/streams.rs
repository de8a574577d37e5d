//! Setting up the `EVENTS`, `DEADLETTERS` and `BUDGETS` streams (and, when asked, the
//! `CHOREO_SNAPSHOTS` bucket), idempotently.
//!
//! [`ensure_streams`] creates what is missing and leaves what matches alone, so every agent,
//! tool and deployment step can call it. A stream that exists with different settings is
//! never silently changed: the log is the source of truth, and shrinking its limits would
//! delete history. What differs is sorted by what nats-server can do about it:
//!
//! - settings the server changes on a live stream, keeping its events (replicas, the limits,
//!   the duplicate window, the discard policy, retention between limits and interest): reported
//!   as [`SetupError::NeedsUpdate`], and changed only when asked ([`ensure_streams_with`] and
//!   [`OnDifference::Update`], `choreo streams ensure --update`);
//! - settings it cannot change in place (storage, the counter setting, retention to or from a
//!   work queue), and the subject list, which it could change but which is what the log *is*:
//!   always [`SetupError::Conflict`], with or without update.
//!
//! Every stream is looked at before any is changed, so a conflict anywhere changes nothing.
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

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError},
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::names::Namespace;
use crate::projection::SNAPSHOT_BUCKET;

/// The stream that keeps dead letters for every namespace.
pub const DEAD_LETTER_STREAM: &str = "DEADLETTERS";
/// The subject prefix of dead letters: `dlq.<ns>.<agent>.<correlation>`.
pub const DEAD_LETTER_PREFIX: &str = "dlq";

/// The counter stream behind the per-correlation budgets.
pub const BUDGET_STREAM: &str = "BUDGETS";
/// The subject prefix of budget counters: `budget.<ns>.<correlation>.<events|tokens>`.
pub const BUDGET_PREFIX: &str = "budget";

/// The most copies JetStream keeps of a stream.
pub const MAX_REPLICAS: usize = 5;

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
    /// above the agents' ack wait. No longer than any stream's max age (the server refuses it).
    pub duplicate_window: Duration,
    pub events: StreamLimits,
    pub dead_letters: StreamLimits,
    /// The budget counters; `max_age` is how long an idle run's counters are kept.
    pub budgets: StreamLimits,
    /// Copies of each stream, on as many servers of a JetStream cluster (1 to 5; 3 or 5 make
    /// sense, and a single server takes only 1). With 3, the streams keep taking events while
    /// one server is down, after their replicas elect a new leader. Default 1.
    pub replicas: usize,
    /// Copies of the `CHOREO_SNAPSHOTS` key-value bucket (the projections' snapshots, see
    /// [`crate::projection::SnapshotStore`]), set up with the streams. `None` (the default)
    /// leaves the bucket alone: it is then made when a first snapshot is saved, with as many
    /// copies as the events stream has.
    pub snapshot_replicas: Option<usize>,
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
            snapshot_replicas: None,
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

    /// What the server would refuse, found before asking it: replicas out of 1 to 5, no
    /// duplicate window, or one longer than a stream keeps its messages.
    pub fn validate(&self) -> Result<(), InvalidStreamsConfig> {
        let replicas = |setting, count: usize| {
            if (1..=MAX_REPLICAS).contains(&count) {
                Ok(())
            } else {
                Err(InvalidStreamsConfig {
                    setting,
                    reason: format!(
                        "{count} copies; JetStream keeps 1 to {MAX_REPLICAS} (3 on a \
                         three-server cluster, 1 on a single server)"
                    ),
                })
            }
        };
        replicas("replicas", self.replicas)?;
        if let Some(count) = self.snapshot_replicas {
            replicas("snapshot_replicas", count)?;
        }
        if self.duplicate_window.is_zero() {
            return Err(InvalidStreamsConfig {
                setting: "duplicate_window",
                reason: "zero; event ids must be remembered for a while (default 2m)".to_string(),
            });
        }
        for (stream, limits) in [
            (self.namespace.stream_name(), &self.events),
            (DEAD_LETTER_STREAM.to_string(), &self.dead_letters),
            (BUDGET_STREAM.to_string(), &self.budgets),
        ] {
            if !limits.max_age.is_zero() && self.duplicate_window > limits.max_age {
                return Err(InvalidStreamsConfig {
                    setting: "duplicate_window",
                    reason: format!(
                        "{} is longer than stream {stream} keeps its messages (max age {}); the \
                         server refuses a duplicate window longer than the max age",
                        humantime::format_duration(self.duplicate_window),
                        humantime::format_duration(limits.max_age)
                    ),
                });
            }
        }
        Ok(())
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

/// The `CHOREO_SNAPSHOTS` bucket's configuration, with `replicas` copies: one value per key
/// (a snapshot's chunks and its manifest), on file.
pub(crate) fn snapshot_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: SNAPSHOT_BUCKET.to_string(),
        description: "choreo projection snapshots".to_string(),
        history: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        ..kv::Config::default()
    }
}

/// A [`StreamsConfig`] the server would refuse; `setting` is the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct InvalidStreamsConfig {
    pub setting: &'static str,
    pub reason: String,
}

/// What [`ensure_streams_with`] does with a stream whose settings differ from the wanted ones
/// only in what the server can change in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDifference {
    /// Change nothing and report the differences ([`SetupError::NeedsUpdate`]).
    #[default]
    Report,
    /// Change them in place. The stream keeps its events, and every setting this configuration
    /// does not name (a description, compression, placement) as it is.
    Update,
}

/// One setting in which an existing stream differs from the wanted one, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub existing: String,
    pub wanted: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} → {}", self.field, self.existing, self.wanted)
    }
}

/// The differences of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamChanges {
    pub stream: String,
    pub differences: Vec<Difference>,
}

impl fmt::Display for StreamChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {}: ", self.stream)?;
        for (index, difference) in self.differences.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{difference}")?;
        }
        Ok(())
    }
}

/// What [`ensure_streams`] did to one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOutcome {
    Created,
    AlreadyMatching,
    /// Changed in place, in these settings.
    Updated(Vec<Difference>),
}

/// What [`ensure_streams`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsReport {
    pub events: StreamOutcome,
    pub dead_letters: StreamOutcome,
    pub budgets: StreamOutcome,
    /// The snapshot bucket's stream, when [`StreamsConfig::snapshot_replicas`] was given.
    pub snapshots: Option<StreamOutcome>,
}

/// Why the streams are not ready.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "stream {stream} exists with {field} = {existing}, but this configuration wants {wanted}; \
         nothing was changed, and updating would not change it ({why}): align the \
         configuration, or change the stream deliberately"
    )]
    Conflict {
        stream: String,
        field: &'static str,
        existing: String,
        wanted: String,
        /// Why it is not changed in place.
        why: &'static str,
    },
    /// Streams differ only in settings the server can change in place, and updating was not
    /// asked for.
    #[error("{}", needs_update(.streams))]
    NeedsUpdate { streams: Vec<StreamChanges> },
    #[error("invalid stream settings: {0}")]
    Invalid(#[from] InvalidStreamsConfig),
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

fn needs_update(streams: &[StreamChanges]) -> String {
    let listed = streams
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let shrinking = streams
        .iter()
        .flat_map(|stream| &stream.differences)
        .any(|difference| LIMITS.contains(&difference.field));
    format!(
        "the streams differ from this configuration ({listed}); nothing was changed. The server \
         can change these in place, keeping the streams' events: pass --update (`choreo \
         streams ensure --update`, or CHOREO_STREAM_UPDATE=true) to apply them{}",
        if shrinking {
            " (a lower limit deletes what is beyond it)"
        } else {
            ""
        }
    )
}

/// Creates the events, dead-letter and budget streams (and the snapshot bucket, if
/// [`StreamsConfig::snapshot_replicas`] says so) if they are missing; checks them if not,
/// changing nothing: [`ensure_streams_with`] and [`OnDifference::Report`].
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
    ensure_streams_with(jetstream, config, OnDifference::Report).await
}

/// Like [`ensure_streams`], and with [`OnDifference::Update`] changes in place what the
/// server can change in place. Every stream is looked at first: a conflict in any of them, or
/// a difference not to be updated, changes nothing.
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), choreo_bus::streams::SetupError> {
/// use choreo_bus::streams::{OnDifference, StreamsConfig, ensure_streams_with};
/// let jetstream = async_nats::jetstream::new(client);
/// // From one server to three: every stream keeps its events, now on three servers.
/// let config = StreamsConfig { replicas: 3, snapshot_replicas: Some(3), ..Default::default() };
/// ensure_streams_with(&jetstream, &config, OnDifference::Update).await?;
/// # Ok(()) }
/// ```
pub async fn ensure_streams_with(
    jetstream: &jetstream::Context,
    config: &StreamsConfig,
    on_difference: OnDifference,
) -> Result<StreamsReport, SetupError> {
    config.validate()?;
    let mut targets = vec![
        Target::Stream(Box::new(config.events_stream())),
        Target::Stream(Box::new(config.dead_letter_stream())),
        Target::Stream(Box::new(config.budget_stream())),
    ];
    if let Some(replicas) = config.snapshot_replicas {
        targets.push(Target::Bucket { replicas });
    }
    let mut steps = Vec::with_capacity(targets.len());
    for target in &targets {
        steps.push(inspect(jetstream, target).await?);
    }
    if on_difference == OnDifference::Report {
        let streams: Vec<StreamChanges> = targets
            .iter()
            .zip(&steps)
            .filter_map(|(target, step)| match step {
                Step::Update { differences, .. } => Some(StreamChanges {
                    stream: target.stream_name(),
                    differences: differences.clone(),
                }),
                Step::Create | Step::Keep => None,
            })
            .collect();
        if !streams.is_empty() {
            return Err(SetupError::NeedsUpdate { streams });
        }
    }
    let mut outcomes = Vec::with_capacity(targets.len());
    for (target, step) in targets.iter().zip(steps) {
        outcomes.push(apply(jetstream, target, step, on_difference).await?);
    }
    let mut outcomes = outcomes.into_iter();
    let mut next = || outcomes.next().unwrap_or(StreamOutcome::AlreadyMatching);
    Ok(StreamsReport {
        events: next(),
        dead_letters: next(),
        budgets: next(),
        snapshots: config.snapshot_replicas.map(|_| next()),
    })
}

/// Something [`ensure_streams_with`] sets up.
enum Target {
    Stream(Box<stream::Config>),
    /// The snapshot bucket with this many copies. Only its replicas (and file storage) are
    /// this configuration's; the rest of its stream is the key-value layer's.
    Bucket {
        replicas: usize,
    },
}

impl Target {
    fn stream_name(&self) -> String {
        match self {
            Target::Stream(config) => config.name.clone(),
            Target::Bucket { .. } => format!("KV_{SNAPSHOT_BUCKET}"),
        }
    }

    /// What the existing stream's configuration should be.
    fn wanted(&self, existing: &stream::Config) -> stream::Config {
        match self {
            Target::Stream(config) => (**config).clone(),
            Target::Bucket { replicas } => {
                let bucket = snapshot_bucket(*replicas);
                stream::Config {
                    num_replicas: bucket.num_replicas,
                    storage: bucket.storage,
                    ..existing.clone()
                }
            }
        }
    }

    async fn create(&self, jetstream: &jetstream::Context) -> Result<(), SetupError> {
        let name = self.stream_name();
        let (may_pass, source): (bool, async_nats::Error) = match self {
            Target::Stream(config) => match jetstream.create_stream(&**config).await {
                Ok(_) => return Ok(()),
                Err(err) => (change_may_pass(&err), err.into()),
            },
            Target::Bucket { replicas } => {
                match jetstream.create_key_value(snapshot_bucket(*replicas)).await {
                    Ok(_) => return Ok(()),
                    Err(err) => (bucket_create_may_pass(&err), err.into()),
                }
            }
        };
        Err(if may_pass {
            SetupError::Unavailable {
                stream: name,
                source,
            }
        } else {
            SetupError::Refused {
                stream: name,
                source,
            }
        })
    }
}

/// What a target needs.
enum Step {
    Create,
    Keep,
    /// Differs in place-changeable settings only: `config` is the existing stream's
    /// configuration with the wanted values of those.
    Update {
        config: Box<stream::Config>,
        differences: Vec<Difference>,
    },
}

async fn inspect(jetstream: &jetstream::Context, target: &Target) -> Result<Step, SetupError> {
    let name = target.stream_name();
    match jetstream.get_stream(&name).await {
        Ok(existing) => {
            let existing = &existing.cached_info().config;
            let wanted = target.wanted(existing);
            let differences = compare(existing, &wanted)?;
            Ok(if differences.is_empty() {
                Step::Keep
            } else {
                Step::Update {
                    config: Box::new(updated(existing, &wanted)),
                    differences,
                }
            })
        }
        Err(err) if is_stream_not_found(&err) => Ok(Step::Create),
        Err(err) => Err(SetupError::Unavailable {
            stream: name,
            source: err.into(),
        }),
    }
}

async fn apply(
    jetstream: &jetstream::Context,
    target: &Target,
    step: Step,
    on_difference: OnDifference,
) -> Result<StreamOutcome, SetupError> {
    let step = match step {
        Step::Create => match target.create(jetstream).await {
            Ok(()) => return Ok(StreamOutcome::Created),
            // Another process may have created it between our two calls: what it made counts.
            Err(create_err) => match inspect(jetstream, target).await {
                Ok(Step::Create) | Err(SetupError::Unavailable { .. }) => return Err(create_err),
                Ok(step) => step,
                Err(conflict) => return Err(conflict),
            },
        },
        step => step,
    };
    match step {
        Step::Create | Step::Keep => Ok(StreamOutcome::AlreadyMatching),
        Step::Update { differences, .. } if on_difference == OnDifference::Report => {
            Err(SetupError::NeedsUpdate {
                streams: vec![StreamChanges {
                    stream: target.stream_name(),
                    differences,
                }],
            })
        }
        Step::Update {
            config,
            differences,
        } => match jetstream.update_stream(&*config).await {
            Ok(_) => Ok(StreamOutcome::Updated(differences)),
            Err(err) => {
                let may_pass = change_may_pass(&err);
                let stream = target.stream_name();
                let source = err.into();
                Err(if may_pass {
                    SetupError::Unavailable { stream, source }
                } else {
                    SetupError::Refused { stream, source }
                })
            }
        },
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

/// Whether a failed stream creation or update can pass when tried again: nothing answered, or
/// the cluster is not ready, or too few of its servers are up to place the replicas (10005;
/// also the answer when more replicas are asked than the cluster has servers, which the
/// message names).
fn change_may_pass(err: &CreateStreamError) -> bool {
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

/// [`change_may_pass`] for a key-value bucket: its stream's creation, or the account question
/// asked before it (which fails only when JetStream does not answer).
fn bucket_create_may_pass(err: &CreateKeyValueError) -> bool {
    match err.kind() {
        CreateKeyValueErrorKind::TimedOut | CreateKeyValueErrorKind::JetStream => true,
        CreateKeyValueErrorKind::BucketCreate => std::error::Error::source(err)
            .and_then(|source| source.downcast_ref::<CreateStreamError>())
            .is_some_and(change_may_pass),
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

/// A duration limit as text (`30d`), zero being no limit.
fn age_limit(value: Duration) -> String {
    if value.is_zero() {
        "unlimited".to_string()
    } else {
        humantime::format_duration(value).to_string()
    }
}

/// A stream setting a [`StreamsConfig`] names, and what the server can do about a change to it.
struct Setting {
    field: &'static str,
    show: fn(&stream::Config) -> String,
    edit: Edit,
}

/// nats-server's rules for changing a setting of a live stream (`configUpdateCheck` in its
/// `server/stream.go`; the same on 2.12 to 2.14).
enum Edit {
    /// The server changes it in place: sets the wanted value on an existing configuration.
    InPlace(fn(&mut stream::Config, &stream::Config)),
    /// Never changed in place, for this reason.
    Fixed(&'static str),
    /// In place unless `fixed` gives a reason for these two configurations.
    Unless {
        set: fn(&mut stream::Config, &stream::Config),
        fixed: fn(&stream::Config, &stream::Config) -> Option<&'static str>,
    },
}

/// The settings compared, in the order they are reported. Any other setting of an existing
/// stream is left as it is.
const SETTINGS: [Setting; 11] = [
    Setting {
        field: "subjects",
        show: |c| format!("{:?}", c.subjects),
        // The server would take it, but the subject list is what the log captures: events
        // stored under subjects no longer listed stay, unreachable by the new configuration.
        edit: Edit::Fixed("the subject list is what the stream captures, so it is never updated"),
    },
    Setting {
        field: "storage",
        show: |c| format!("{:?}", c.storage),
        edit: Edit::Fixed("the server cannot change a stream's storage type"),
    },
    Setting {
        field: "retention",
        show: |c| format!("{:?}", c.retention),
        edit: Edit::Unless {
            set: |c, w| c.retention = w.retention,
            fixed: |c, w| {
                (c.retention == RetentionPolicy::WorkQueue
                    || w.retention == RetentionPolicy::WorkQueue)
                    .then_some("the server cannot change retention to or from a work queue")
            },
        },
    },
    Setting {
        field: "allow_msg_counter",
        show: |c| c.allow_message_counter.to_string(),
        edit: Edit::Fixed("the server cannot change whether a stream is a counter stream"),
    },
    Setting {
        field: "duplicate_window",
        show: |c| humantime::format_duration(c.duplicate_window).to_string(),
        edit: Edit::InPlace(|c, w| c.duplicate_window = w.duplicate_window),
    },
    Setting {
        field: "max_age",
        show: |c| age_limit(c.max_age),
        edit: Edit::InPlace(|c, w| c.max_age = w.max_age),
    },
    Setting {
        field: "max_bytes",
        show: |c| limit(c.max_bytes),
        edit: Edit::InPlace(|c, w| c.max_bytes = w.max_bytes),
    },
    Setting {
        field: "max_messages",
        show: |c| limit(c.max_messages),
        edit: Edit::InPlace(|c, w| c.max_messages = w.max_messages),
    },
    Setting {
        field: "discard",
        show: |c| format!("{:?}", c.discard),
        edit: Edit::InPlace(|c, w| c.discard = w.discard),
    },
    Setting {
        field: "max_messages_per_subject",
        show: |c| limit(c.max_messages_per_subject),
        edit: Edit::InPlace(|c, w| c.max_messages_per_subject = w.max_messages_per_subject),
    },
    Setting {
        field: "replicas",
        show: |c| c.num_replicas.to_string(),
        edit: Edit::InPlace(|c, w| c.num_replicas = w.num_replicas),
    },
];

/// The limits among [`SETTINGS`]: lowering one deletes what is beyond it.
const LIMITS: [&str; 4] = [
    "max_age",
    "max_bytes",
    "max_messages",
    "max_messages_per_subject",
];

/// How an existing stream differs from the wanted one: [`SetupError::Conflict`] for the first
/// setting that cannot change in place, else every difference (none: it matches).
fn compare(
    existing: &stream::Config,
    wanted: &stream::Config,
) -> Result<Vec<Difference>, SetupError> {
    let mut differences = Vec::new();
    for setting in &SETTINGS {
        // Rendered, so "unlimited" is equal however the server spells it, and readable.
        let (was, want) = ((setting.show)(existing), (setting.show)(wanted));
        if was == want {
            continue;
        }
        let fixed = match &setting.edit {
            Edit::InPlace(_) => None,
            Edit::Fixed(why) => Some(*why),
            Edit::Unless { fixed, .. } => fixed(existing, wanted),
        };
        if let Some(why) = fixed {
            return Err(SetupError::Conflict {
                stream: wanted.name.clone(),
                field: setting.field,
                existing: was,
                wanted: want,
                why,
            });
        }
        differences.push(Difference {
            field: setting.field,
            existing: was,
            wanted: want,
        });
    }
    Ok(differences)
}

/// `existing` with the wanted value of every setting the server changes in place.
fn updated(existing: &stream::Config, wanted: &stream::Config) -> stream::Config {
    let mut config = existing.clone();
    for setting in &SETTINGS {
        match setting.edit {
            Edit::InPlace(set) | Edit::Unless { set, .. } => set(&mut config, wanted),
            Edit::Fixed(_) => {}
        }
    }
    config
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
        let may_pass = |kind| change_may_pass(&CreateStreamError::new(kind));
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

    /// The default events stream on one server, as the server reports it back.
    fn events() -> stream::Config {
        stream::Config {
            description: Some("kept as it is".to_string()),
            ..StreamsConfig::default().events_stream()
        }
    }

    fn fields(differences: &[Difference]) -> Vec<&'static str> {
        differences.iter().map(|d| d.field).collect()
    }

    #[test]
    fn what_the_server_changes_in_place_is_a_difference_to_update_keeping_the_rest() {
        let wanted = StreamsConfig {
            replicas: 3,
            duplicate_window: Duration::from_secs(300),
            events: StreamLimits {
                max_age: Duration::from_secs(30 * 24 * 3600),
                max_bytes: 10_000_000_000,
                ..StreamLimits::default()
            },
            ..StreamsConfig::default()
        }
        .events_stream();
        let existing = events();
        let differences = compare(&existing, &wanted).expect("no conflict");
        assert_eq!(
            fields(&differences),
            ["duplicate_window", "max_age", "max_bytes", "replicas"]
        );
        assert_eq!(differences[1].to_string(), "max_age unlimited → 30days");
        assert_eq!(differences[3].to_string(), "replicas 1 → 3");

        let update = updated(&existing, &wanted);
        assert_eq!(update.num_replicas, 3);
        assert_eq!(update.max_age, wanted.max_age);
        assert_eq!(update.max_bytes, wanted.max_bytes);
        assert_eq!(update.duplicate_window, wanted.duplicate_window);
        // What the configuration does not name stays as the stream has it.
        assert_eq!(update.description.as_deref(), Some("kept as it is"));
        assert!(compare(&update, &wanted).expect("matches").is_empty());
    }

    #[test]
    fn a_matching_stream_has_no_differences_however_the_server_spells_no_limit() {
        let wanted = StreamsConfig::default().events_stream();
        let reported = stream::Config {
            max_bytes: -1,
            max_messages: 0,
            max_messages_per_subject: -1,
            ..events()
        };
        assert_eq!(compare(&reported, &wanted).expect("no conflict"), []);
    }

    #[test]
    fn what_the_server_cannot_change_in_place_is_a_conflict_even_beside_updatable_differences() {
        let wanted = StreamsConfig {
            replicas: 3,
            ..StreamsConfig::default()
        }
        .events_stream();
        for (field, existing) in [
            (
                "subjects",
                stream::Config {
                    subjects: vec!["other.>".to_string()],
                    ..events()
                },
            ),
            (
                "storage",
                stream::Config {
                    storage: StorageType::Memory,
                    ..events()
                },
            ),
            (
                "allow_msg_counter",
                stream::Config {
                    allow_message_counter: true,
                    ..events()
                },
            ),
            (
                "retention",
                stream::Config {
                    retention: RetentionPolicy::WorkQueue,
                    ..events()
                },
            ),
        ] {
            match compare(&existing, &wanted) {
                Err(SetupError::Conflict {
                    field: reported, ..
                }) => assert_eq!(reported, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn retention_changes_in_place_between_limits_and_interest_only() {
        let wanted = StreamsConfig::default().events_stream();
        let interest = stream::Config {
            retention: RetentionPolicy::Interest,
            ..events()
        };
        let differences = compare(&interest, &wanted).expect("no conflict");
        assert_eq!(fields(&differences), ["retention"]);
        assert_eq!(
            updated(&interest, &wanted).retention,
            RetentionPolicy::Limits
        );
    }

    #[test]
    fn the_snapshot_bucket_is_compared_on_its_replicas_and_storage_alone() {
        let bucket = Target::Bucket { replicas: 3 };
        let existing = stream::Config {
            name: "KV_CHOREO_SNAPSHOTS".to_string(),
            subjects: vec!["$KV.CHOREO_SNAPSHOTS.>".to_string()],
            max_messages_per_subject: 1,
            num_replicas: 1,
            ..stream::Config::default()
        };
        assert_eq!(bucket.stream_name(), existing.name);
        let differences = compare(&existing, &bucket.wanted(&existing)).expect("no conflict");
        assert_eq!(fields(&differences), ["replicas"]);
        let memory = stream::Config {
            storage: StorageType::Memory,
            ..existing
        };
        assert!(matches!(
            compare(&memory, &bucket.wanted(&memory)),
            Err(SetupError::Conflict {
                field: "storage",
                ..
            })
        ));
    }

    #[test]
    fn differences_not_updated_say_that_update_would_apply_them() {
        let message = SetupError::NeedsUpdate {
            streams: vec![StreamChanges {
                stream: "EVENTS".to_string(),
                differences: vec![Difference {
                    field: "replicas",
                    existing: "1".to_string(),
                    wanted: "3".to_string(),
                }],
            }],
        }
        .to_string();
        assert!(
            message.contains("stream EVENTS: replicas 1 → 3"),
            "{message}"
        );
        assert!(message.contains("--update"), "{message}");
        assert!(!message.contains("lower limit"), "{message}");
    }

    #[test]
    fn settings_the_server_would_refuse_are_named_before_asking_it() {
        let invalid = |config: StreamsConfig| config.validate().map_err(|err| err.setting);
        assert_eq!(invalid(StreamsConfig::default()), Ok(()));
        for replicas in [0, 6] {
            assert_eq!(
                invalid(StreamsConfig {
                    replicas,
                    ..StreamsConfig::default()
                }),
                Err("replicas")
            );
            assert_eq!(
                invalid(StreamsConfig {
                    snapshot_replicas: Some(replicas),
                    ..StreamsConfig::default()
                }),
                Err("snapshot_replicas")
            );
        }
        assert_eq!(
            invalid(StreamsConfig {
                duplicate_window: Duration::ZERO,
                ..StreamsConfig::default()
            }),
            Err("duplicate_window")
        );
        // Longer than the events are kept; and than the budgets' week.
        let short = StreamsConfig {
            events: StreamLimits {
                max_age: Duration::from_secs(60),
                ..StreamLimits::default()
            },
            ..StreamsConfig::default()
        };
        assert_eq!(invalid(short), Err("duplicate_window"));
        assert_eq!(
            invalid(StreamsConfig {
                duplicate_window: Duration::from_secs(8 * 24 * 3600),
                ..StreamsConfig::default()
            }),
            Err("duplicate_window")
        );
    }

    #[test]
    fn a_bucket_whose_stream_could_not_be_placed_yet_may_pass() {
        let bucket_error = |code| {
            CreateKeyValueError::with_source(
                CreateKeyValueErrorKind::BucketCreate,
                CreateStreamError::new(CreateStreamErrorKind::JetStream(server_error(code))),
            )
        };
        assert!(bucket_create_may_pass(&bucket_error(10005)));
        assert!(!bucket_create_may_pass(&bucket_error(10074)));
        assert!(bucket_create_may_pass(&CreateKeyValueError::new(
            CreateKeyValueErrorKind::TimedOut
        )));
    }
}
