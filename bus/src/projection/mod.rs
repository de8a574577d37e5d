//! Projections: state folded from the log, rebuilt from the start or from a snapshot, at any
//! point in time.
//!
//! A [`Projection`] is a deterministic fold of events into state. The [`Projector`] feeds it
//! the events stream through a [`LogReader`](crate::log::LogReader): from the start, or from a
//! snapshot in the `CHOREO_SNAPSHOTS` key-value bucket ([`SnapshotStore`]), resuming after the
//! last applied sequence. Stopping the same fold early answers "what was the state at 10:42"
//! or "after sequence 1200" ([`AsOf`]): a temporal query is a rebuild that ends sooner.
//!
//! The built-in projection is the [`RunBoard`](run_board::RunBoard): one line per run.

pub mod run_board;
mod snapshot;

use async_nats::jetstream;
use serde::{Serialize, de::DeserializeOwned};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::envelope::EventView;
use crate::log::{From, LogError, LogQuery, LogReader, LogRecord, Until};
use crate::names::Namespace;

pub use snapshot::{SNAPSHOT_BUCKET, SnapshotError, SnapshotStore};

/// Records handed from the read to the fold at a time. A read of at most this many records is
/// folded as it is read, with no thread of its own.
const FOLD_BATCH: usize = 512;
/// Batches read ahead of the fold.
const FOLD_QUEUE: usize = 8;

/// State folded from events. `Send + 'static` because a long fold runs on a thread of its own.
pub trait Projection: Default + Serialize + DeserializeOwned + Send + 'static {
    /// Its key in the snapshot bucket. Change it when the state's shape changes, so an old
    /// snapshot is not read into a new shape.
    const NAME: &'static str;

    /// Folds one event, stored as `record`, into the state. Must depend on nothing else, so a
    /// rebuild gives the same state every time. The event's fields are read in place from the
    /// record; `record.decode()` gives the whole envelope when the maps matter.
    fn apply(&mut self, event: &EventView<'_>, record: &LogRecord);
}

/// The last record a projection applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Stream sequence; 0 before anything was applied.
    pub sequence: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub time: Option<OffsetDateTime>,
}

/// A projection's state and how far into the log it reaches.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Folded<P> {
    pub position: Position,
    pub state: P,
    /// Records applied by this rebuild (not counting what the snapshot held).
    #[serde(skip)]
    pub applied: u64,
    /// Records in the log that were not events of a run: bytes that never decoded, and
    /// envelopes whose run disagrees with their subject.
    #[serde(skip)]
    pub undecodable: u64,
    /// Whether the rebuild started from a snapshot.
    #[serde(skip)]
    pub from_snapshot: bool,
}

impl<P: Projection> Folded<P> {
    /// Folds one record; records at or before the position are skipped, so a rebuild that
    /// overlaps a snapshot applies nothing twice.
    pub fn apply(&mut self, record: &LogRecord) {
        if record.sequence <= self.position.sequence {
            return;
        }
        match record.view() {
            // An envelope whose run disagrees with its subject breaks the wire contract: the
            // runtime dead-letters it into the subject's run, and it is no event of the run
            // its body names.
            Ok(event) if !in_its_run(record.subject.as_str(), event.correlation_id) => {
                self.undecodable += 1;
            }
            Ok(event) => {
                self.state.apply(&event, record);
                self.applied += 1;
            }
            Err(_) => self.undecodable += 1,
        }
        self.position = Position {
            sequence: record.sequence,
            time: Some(record.time),
        };
    }
}

/// Whether `subject` (`<ns>.<correlation>.<type…>`) names run `correlation_id`.
fn in_its_run(subject: &str, correlation_id: &str) -> bool {
    subject.split('.').nth(1) == Some(correlation_id)
}

/// Which state to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsOf {
    /// Everything in the log now.
    #[default]
    Now,
    /// After the record with this sequence.
    Sequence(u64),
    /// As the log stood at this time.
    Time(OffsetDateTime),
}

impl AsOf {
    fn until(self) -> Until {
        match self {
            AsOf::Now => Until::End,
            AsOf::Sequence(sequence) => Until::Sequence(sequence),
            AsOf::Time(time) => Until::Time(time),
        }
    }

    /// Whether a snapshot taken at `position` is not later than this point.
    fn admits(self, position: Position) -> bool {
        match self {
            AsOf::Now => true,
            AsOf::Sequence(sequence) => position.sequence <= sequence,
            AsOf::Time(time) => position.time.is_none_or(|t| t <= time),
        }
    }
}

/// Why a projection could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

impl ProjectionError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ProjectionError::Log(err) => err.is_retryable(),
            ProjectionError::Snapshot(err) => err.is_retryable(),
        }
    }
}

/// Builds projections of one namespace's events stream.
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use choreo_bus::projection::{AsOf, Projector, run_board::RunBoard};
/// let projector = Projector::new(async_nats::jetstream::new(client), Default::default());
/// let board = projector.rebuild::<RunBoard>(AsOf::Now, true).await?;
/// println!("{} runs up to sequence {}", board.state.len(), board.position.sequence);
/// projector.save(&board).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Projector {
    jetstream: jetstream::Context,
    namespace: Namespace,
    snapshots: SnapshotStore,
}

impl Projector {
    pub fn new(jetstream: jetstream::Context, namespace: Namespace) -> Self {
        Projector {
            snapshots: SnapshotStore::new(jetstream.clone(), namespace.clone()),
            jetstream,
            namespace,
        }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The state as of `as_of`: from the snapshot when `use_snapshot` and the snapshot is not
    /// past that point, else from the start; then the log up to that point.
    pub async fn rebuild<P: Projection>(
        &self,
        as_of: AsOf,
        use_snapshot: bool,
    ) -> Result<Folded<P>, ProjectionError> {
        let mut folded = Folded::<P>::default();
        if use_snapshot
            && let Some(snapshot) = self.snapshots.load::<P>().await?
            && as_of.admits(snapshot.position)
        {
            folded = snapshot;
            folded.from_snapshot = true;
        }
        self.catch_up(&mut folded, as_of).await?;
        Ok(folded)
    }

    /// Applies what the log holds after `folded`'s position, up to `as_of`.
    pub async fn catch_up<P: Projection>(
        &self,
        folded: &mut Folded<P>,
        as_of: AsOf,
    ) -> Result<(), ProjectionError> {
        let from = match folded.position.sequence {
            0 => From::Start,
            last => From::Sequence(last + 1),
        };
        let query = LogQuery::filtered(self.namespace.all_events())
            .from(from)
            .until(as_of.until());
        self.fold(folded, query).await
    }

    /// One run's state: `P` folded from the events of `correlation_id` only, as the log holds
    /// them now. The read is filtered by the server to the run's subjects, so it costs the
    /// run's size, not the stream's; no snapshot is involved. A join that must see every
    /// result of its run, whichever copy of the agent handled them, folds its state this way.
    pub async fn fold_run<P: Projection>(
        &self,
        correlation_id: &str,
    ) -> Result<Folded<P>, ProjectionError> {
        let mut folded = Folded::<P>::default();
        let query = LogQuery::filtered(self.namespace.correlation_filter(correlation_id));
        self.fold(&mut folded, query).await?;
        Ok(folded)
    }

    async fn fold<P: Projection>(
        &self,
        folded: &mut Folded<P>,
        query: LogQuery,
    ) -> Result<(), ProjectionError> {
        let mut reader =
            LogReader::open(&self.jetstream, &self.namespace.stream_name(), query).await?;
        // One run's events, say: a thread would cost more than it saves.
        if reader.expected().is_some_and(|n| n <= FOLD_BATCH as u64) {
            while let Some(record) = reader.next().await? {
                folded.apply(&record);
            }
            return Ok(());
        }
        // A long read: the read stays in this task and the fold, which is all computation, runs
        // on a blocking thread fed in batches, so the two use both cores. Not the other way
        // round: a read in a spawned task was woken by the connection's task and so ran on the
        // same worker thread, in turn with it, and the read alone lost 15% (measured with
        // `choreo-bench replay`).
        let (batches, mut to_fold) = mpsc::channel::<Vec<LogRecord>>(FOLD_QUEUE);
        let mut state = std::mem::take(folded);
        let folding = tokio::task::spawn_blocking(move || {
            while let Some(batch) = to_fold.blocking_recv() {
                batch.iter().for_each(|record| state.apply(record));
            }
            state
        });
        let read = read_in_batches(&mut reader, &batches).await;
        // Closing the channel ends the fold once it has applied everything read.
        drop(batches);
        *folded = match folding.await {
            Ok(state) => state,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => {
                return Err(ProjectionError::Log(LogError::Unavailable {
                    stream: self.namespace.stream_name(),
                    detail: format!("the fold was stopped before the end of the read: {err}"),
                }));
            }
        };
        read.map_err(ProjectionError::from)
    }

    /// Keeps `folded` as the projection's snapshot, replacing the previous one.
    pub async fn save<P: Projection>(&self, folded: &Folded<P>) -> Result<(), ProjectionError> {
        self.snapshots.save(folded).await?;
        Ok(())
    }
}

/// Sends what `reader` reads to `batches`, [`FOLD_BATCH`] records at a time (the last batch may
/// be shorter), until the end of the read or until the fold is gone.
async fn read_in_batches(
    reader: &mut LogReader,
    batches: &mpsc::Sender<Vec<LogRecord>>,
) -> Result<(), LogError> {
    let mut batch = Vec::with_capacity(FOLD_BATCH);
    while let Some(record) = reader.next().await? {
        batch.push(record);
        if batch.len() == FOLD_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(FOLD_BATCH));
            if batches.send(full).await.is_err() {
                // The fold panicked; its join reports it.
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = batches.send(batch).await;
    }
    Ok(())
}
