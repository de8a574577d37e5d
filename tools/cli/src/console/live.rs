//! The run board kept current, and what NATS is doing.
//!
//! One task folds the log into the [`RunBoard`]: a rebuild at start (from the snapshot `choreo
//! state` keeps, when there is one), then a live read from the next sequence on, so a new run
//! appears as its first event is stored. Another reads every agent's consumer position each
//! second (whether a run is pending or complete depends on them) and watches the connection.
//! Each change is counted on a [`watch`] channel that the pages' event streams wait on.
//!
//! When NATS goes away the board keeps what it had, the pages say since when NATS has not
//! answered, and both tasks carry on from where they were once it is back.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use async_nats::jetstream;
use choreo_bus::Namespace;
use choreo_bus::log::{From, LogQuery, LogReader, Until};
use choreo_bus::projection::run_board::{AgentPosition, RunBoard, agent_positions};
use choreo_bus::projection::{AsOf, Folded, Projector};
use time::OffsetDateTime;
use tokio::sync::watch;

/// How often consumer positions and the connection are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long to wait before trying again after a failed read.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The board and the state of things, shared by the pages.
#[derive(Debug)]
pub struct Live {
    board: RwLock<Board>,
    changed: watch::Sender<u64>,
}

/// What the pages draw from.
#[derive(Debug, Default)]
pub struct Board {
    pub folded: Folded<RunBoard>,
    pub positions: Vec<AgentPosition>,
    /// Whether the first rebuild has finished.
    pub loaded: bool,
    /// NATS not answering: what was seen, and since when.
    pub nats_problem: Option<Problem>,
    /// The log could not be read (the stream missing, say).
    pub log_problem: Option<Problem>,
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub what: String,
    pub since: OffsetDateTime,
}

impl Board {
    /// The first problem, if any, with what it is called.
    pub fn problem(&self) -> Option<(&'static str, &Problem)> {
        match (&self.nats_problem, &self.log_problem) {
            (Some(problem), _) => Some(("NATS is unavailable", problem)),
            (None, Some(problem)) => Some(("The log cannot be read", problem)),
            (None, None) => None,
        }
    }
}

impl Live {
    /// Starts following `namespace`'s log on `client`.
    pub fn start(
        client: async_nats::Client,
        jetstream: jetstream::Context,
        namespace: Namespace,
    ) -> Arc<Live> {
        let (changed, _) = watch::channel(0);
        let live = Arc::new(Live {
            board: RwLock::new(Board::default()),
            changed,
        });
        tokio::spawn(
            live.clone()
                .follow_log(jetstream.clone(), namespace.clone()),
        );
        tokio::spawn(live.clone().follow_positions(client, jetstream, namespace));
        live
    }

    pub fn board(&self) -> RwLockReadGuard<'_, Board> {
        self.board
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver that sees each change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut Board) -> bool) {
        let changed = {
            let mut board = self
                .board
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            change(&mut board)
        };
        if changed {
            self.changed.send_modify(|version| *version += 1);
        }
    }

    async fn follow_log(self: Arc<Self>, jetstream: jetstream::Context, namespace: Namespace) {
        let projector = Projector::new(jetstream.clone(), namespace.clone());
        loop {
            if !self.board().loaded {
                match projector.rebuild::<RunBoard>(AsOf::Now, true).await {
                    Ok(folded) => self.update(|board| {
                        board.folded = folded;
                        board.loaded = true;
                        board.log_problem = None;
                        true
                    }),
                    Err(err) => {
                        self.log_trouble(format!("cannot read the log: {err}"));
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                }
            }
            let next = self.board().folded.position.sequence + 1;
            let query = LogQuery::filtered(namespace.all_events())
                .from(From::Sequence(next))
                .until(Until::Live);
            let mut reader =
                match LogReader::open(&jetstream, &namespace.stream_name(), query).await {
                    Ok(reader) => reader,
                    Err(err) => {
                        self.log_trouble(format!("cannot follow the log: {err}"));
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                };
            loop {
                match reader.next().await {
                    Ok(Some(record)) => self.update(|board| {
                        board.folded.apply(&record);
                        board.log_problem = None;
                        true
                    }),
                    Ok(None) => break,
                    Err(err) => {
                        self.log_trouble(format!("lost the log: {err}"));
                        tokio::time::sleep(RETRY_AFTER).await;
                        break;
                    }
                }
            }
        }
    }

    fn log_trouble(&self, what: String) {
        self.update(|board| set_problem(&mut board.log_problem, what));
    }

    async fn follow_positions(
        self: Arc<Self>,
        client: async_nats::Client,
        jetstream: jetstream::Context,
        namespace: Namespace,
    ) {
        let mut every = tokio::time::interval(LOOK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if client.connection_state() != ConnectionState::Connected {
                self.update(|board| {
                    set_problem(
                        &mut board.nats_problem,
                        "the connection is down, and the console is reconnecting".to_string(),
                    )
                });
                continue;
            }
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                agent_positions(&jetstream, &namespace),
            )
            .await;
            match read {
                Ok(Ok(positions)) => self.update(|board| {
                    let changed = board.positions != positions || board.nats_problem.is_some();
                    board.positions = positions;
                    board.nats_problem = None;
                    changed
                }),
                Ok(Err(err)) => self.update(|board| {
                    set_problem(
                        &mut board.nats_problem,
                        format!("cannot read the agents' consumers: {err}"),
                    )
                }),
                Err(_) => self.update(|board| {
                    set_problem(
                        &mut board.nats_problem,
                        "it did not answer within 5 s".to_string(),
                    )
                }),
            }
        }
    }
}

/// Sets `slot` to `what`, keeping the first time it was seen; true when that is news.
fn set_problem(slot: &mut Option<Problem>, what: String) -> bool {
    match slot {
        Some(problem) if problem.what == what => false,
        Some(problem) => {
            problem.what = what;
            true
        }
        None => {
            *slot = Some(Problem {
                what,
                since: OffsetDateTime::now_utc(),
            });
            true
        }
    }
}
