//! The pull loop: asks the server for as many events as this process has room for, holds each
//! one's lease from the moment it arrives, hands it to a worker, and rebinds the consumer when
//! it is lost.
//!
//! # Pacing
//!
//! The process holds at most `concurrency + batch` events (running, waiting behind an event of
//! the same run, or fetched ahead), fewer when handling is rate-limited, one per probe while the
//! handler's breaker is half-open, and none while it is open. Pull requests ask for exactly the
//! room left, so nothing waits unleased in a client buffer, and a copy never hoards events that
//! another copy could be handling. A new request goes out while one is still open when half the
//! limit is free, so a fast agent does not wait a round trip between batches.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use tracing::{debug, warn};

use crate::guard::{BreakerState, CircuitBreaker, RateLimiter};

use super::config::RuntimeConfig;
use super::dispatch::SerialByKey;
use super::lease::Leases;
use super::worker::{Held, Worker};
use super::{Handler, bind_consumer};

/// How long the server keeps one pull request open: an idle agent re-asks this often, and a
/// request lost with a server is noticed after this (plus the client's own 5 s).
const PULL_EXPIRY: Duration = Duration::from_secs(10);
/// Pause between attempts to pull again or rebind after the server refused or vanished.
const REBIND_DELAY: Duration = Duration::from_secs(1);

/// What the handler's breaker allows the pull to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// Closed (or no breaker): the full limit.
    Normal,
    /// Half-open: no more than the breaker's probes, so a failing probe leaves little to give back.
    Probing(usize),
    /// Open: hold nothing; wait this long.
    Paused(Duration),
}

impl Pace {
    pub fn of(breaker: Option<&CircuitBreaker>) -> Pace {
        match breaker.map(|breaker| (breaker.state(), breaker)) {
            None | Some((BreakerState::Closed, _)) => Pace::Normal,
            Some((BreakerState::HalfOpen, breaker)) => {
                Pace::Probing(usize::try_from(breaker.config().half_open_probes).unwrap_or(1))
            }
            Some((BreakerState::Open, breaker)) => Pace::Paused(breaker.open_remaining()),
        }
    }
}

/// How many events the process may hold, and so how many to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    pub concurrency: usize,
    /// Fetched ahead of the free workers.
    pub ahead: usize,
}

impl Limits {
    /// The configured limits; a handle rate keeps what is fetched ahead to about a second of
    /// handling, so events wait in the stream rather than in hand.
    pub fn new(config: &RuntimeConfig, handle_rate: Option<&RateLimiter>) -> Limits {
        let ahead = match handle_rate {
            Some(limiter) => {
                let limit = limiter.limit();
                let per_second = limit.rate.per_second_f64().ceil();
                // Float to integer: saturating, and the rate is positive.
                let per_second = if per_second >= 1.0 {
                    per_second as usize
                } else {
                    1
                };
                per_second
                    .max(usize::try_from(limit.burst).unwrap_or(usize::MAX))
                    .min(config.batch)
            }
            None => config.batch,
        };
        Limits {
            concurrency: config.concurrency,
            ahead,
        }
    }

    /// The most events the process may hold at `pace`.
    pub fn held_at_most(self, pace: Pace) -> usize {
        match pace {
            Pace::Normal => self.concurrency.saturating_add(self.ahead),
            Pace::Probing(probes) => probes.max(1),
            Pace::Paused(_) => 0,
        }
    }

    /// How many events to ask for now, holding `held` with `owed` more still to come from open
    /// requests; zero when no request should go out yet.
    pub fn to_request(self, pace: Pace, held: usize, owed: usize) -> usize {
        let limit = self.held_at_most(pace);
        let room = limit.saturating_sub(held.saturating_add(owed));
        // With a request open, wait until half the limit is free: fewer, larger requests.
        if owed > 0 && room < limit.div_ceil(2) {
            0
        } else {
            room
        }
    }
}

/// One message of an open pull request, or the request's end.
enum Arrival {
    /// Boxed: a message is large, and an end is one number.
    Message(u64, Result<Box<jetstream::Message>, async_nats::Error>),
    End(u64),
}

/// Pulls and dispatches until `shutdown` completes; returns the events it held but had not
/// started, for the caller to hand back.
pub(super) async fn pull<H, W, Fut>(
    jetstream: &jetstream::Context,
    mut consumer: PullConsumer,
    worker: &Arc<Worker<H>>,
    dispatcher: &SerialByKey<Held, W>,
    shutdown: &mut Pin<&mut (impl Future<Output = ()> + Send)>,
) -> VecDeque<Held>
where
    H: Handler,
    W: Fn(Held) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let leases: &Leases = &worker.leases;
    let breaker = worker.guards.breaker.clone();
    let limits = Limits::new(&worker.config, worker.guards.handle_rate.as_ref());
    let mut requests: SelectAll<BoxStream<'static, Arrival>> = SelectAll::new();
    let mut owed: HashMap<u64, usize> = HashMap::new();
    let mut next_request = 0u64;
    let mut ready: VecDeque<Held> = VecDeque::new();
    let mut rebind = false;

    loop {
        if rebind {
            if wait_or_shutdown(shutdown, REBIND_DELAY).await {
                break;
            }
            match bind_consumer(jetstream, &worker.agent, &worker.config).await {
                Ok(rebound) => {
                    consumer = rebound;
                    rebind = false;
                }
                Err(err) => {
                    warn!(agent = %worker.agent.name(), error = %err, "cannot bind the consumer yet; retrying");
                    continue;
                }
            }
        }
        // Events for a run already being worked on queue behind it and need no free worker.
        while let Some(held) = ready.pop_front() {
            let key = run_key(worker, &held);
            if let Err(held) = dispatcher.try_enqueue(&key, held) {
                ready.push_front(held);
                break;
            }
        }
        let pace = Pace::of(breaker.as_ref());
        let wanted = limits.to_request(pace, leases.len(), owed.values().sum());
        if wanted > 0 {
            match consumer
                .batch()
                .max_messages(wanted)
                .expires(PULL_EXPIRY)
                .messages()
                .await
            {
                Ok(batch) => {
                    next_request += 1;
                    let id = next_request;
                    owed.insert(id, wanted);
                    requests.push(
                        batch
                            .map(move |message| Arrival::Message(id, message.map(Box::new)))
                            .chain(futures::stream::once(async move { Arrival::End(id) }))
                            .boxed(),
                    );
                }
                Err(err) => {
                    warn!(agent = %worker.agent.name(), error = %err, "cannot pull; rebinding the consumer");
                    rebind = true;
                    continue;
                }
            }
        }
        let paused = match pace {
            Pace::Paused(wait) => Some(wait),
            _ => None,
        };
        tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            arrival = requests.next(), if !requests.is_empty() => match arrival {
                Some(Arrival::Message(id, Ok(message))) => {
                    if let Some(owed) = owed.get_mut(&id) {
                        *owed = owed.saturating_sub(1);
                    }
                    ready.push_back(Held::arrived(*message, leases));
                }
                Some(Arrival::Message(id, Err(err))) => {
                    // A status the request ends on (the consumer deleted, a leader change):
                    // bind again, which also recreates a consumer that is gone.
                    owed.remove(&id);
                    debug!(agent = %worker.agent.name(), error = %err, "pull request ended; rebinding");
                    rebind = true;
                }
                Some(Arrival::End(id)) => {
                    owed.remove(&id);
                }
                None => {}
            },
            slot = dispatcher.slot(), if !ready.is_empty() && paused.is_none() => {
                if let (Some(slot), Some(held)) = (slot, ready.pop_front()) {
                    let key = run_key(worker, &held);
                    dispatcher.start(&key, held, slot);
                }
            },
            // A worker settled an event: there may be room to ask for more.
            () = leases.released() => {},
            () = wake_after(paused) => {},
        }
        // Held while the breaker opened: back to the stream, to come back when it half-opens.
        if let Some(wait) = paused {
            while let Some(held) = ready.pop_front() {
                worker.defer(held, wait).await;
            }
        }
    }

    // Stop asking: what the open requests already delivered is in hand too.
    for request in requests.iter_mut() {
        while let Some(Some(Arrival::Message(_, Ok(message)))) = request.next().now_or_never() {
            ready.push_back(Held::arrived(*message, leases));
        }
    }
    ready
}

fn run_key<H: Handler>(worker: &Worker<H>, held: &Held) -> String {
    worker
        .config
        .namespace
        .correlation_of_subject(&held.message.subject)
        .unwrap_or_default()
        .to_string()
}

/// Completes after `wait`, or never.
async fn wake_after(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// Sleeps for `delay` unless shutdown comes first; true if it did.
pub(super) async fn wait_or_shutdown(
    shutdown: &mut Pin<&mut (impl Future<Output = ()> + Send)>,
    delay: Duration,
) -> bool {
    tokio::select! {
        () = shutdown.as_mut() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{BreakerConfig, Rate, RateLimit};

    fn limits() -> Limits {
        Limits {
            concurrency: 8,
            ahead: 4,
        }
    }

    #[test]
    fn a_request_asks_for_the_room_left_and_no_more() {
        let limits = limits();
        assert_eq!(limits.to_request(Pace::Normal, 0, 0), 12);
        assert_eq!(limits.to_request(Pace::Normal, 9, 0), 3);
        assert_eq!(limits.to_request(Pace::Normal, 12, 0), 0, "full");
        assert_eq!(
            limits.to_request(Pace::Normal, 20, 0),
            0,
            "over, after a limit change"
        );
    }

    #[test]
    fn with_a_request_open_the_next_waits_for_half_the_limit() {
        let limits = limits();
        assert_eq!(limits.to_request(Pace::Normal, 4, 3), 0, "5 free of 12");
        assert_eq!(limits.to_request(Pace::Normal, 3, 3), 6, "6 free of 12");
        assert_eq!(limits.to_request(Pace::Normal, 0, 12), 0, "all owed");
    }

    #[test]
    fn a_breaker_sets_the_pace() {
        let limits = limits();
        assert_eq!(limits.to_request(Pace::Probing(1), 0, 0), 1);
        assert_eq!(
            limits.to_request(Pace::Probing(1), 1, 0),
            0,
            "the probe is out"
        );
        assert_eq!(
            limits.to_request(Pace::Paused(Duration::from_secs(3)), 0, 0),
            0
        );
    }

    #[test]
    fn a_handle_rate_keeps_about_a_second_of_work_ahead() {
        let config = RuntimeConfig {
            batch: 100,
            ..RuntimeConfig::default()
        };
        let slow = RateLimiter::new(RateLimit {
            rate: Rate::per_second(5).expect("rate"),
            burst: 2,
        })
        .expect("valid");
        assert_eq!(Limits::new(&config, Some(&slow)).ahead, 5);
        let fast = RateLimiter::new(RateLimit {
            rate: Rate::per_second(10_000).expect("rate"),
            burst: 1,
        })
        .expect("valid");
        assert_eq!(
            Limits::new(&config, Some(&fast)).ahead,
            100,
            "never above the batch"
        );
        assert_eq!(Limits::new(&config, None).ahead, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_follows_the_breaker_through_open_half_open_and_closed() {
        let breaker = CircuitBreaker::new(
            "handler",
            BreakerConfig {
                min_calls: 1,
                open_for: Duration::from_secs(30),
                half_open_probes: 2,
                ..BreakerConfig::default()
            },
        )
        .expect("valid");
        assert_eq!(Pace::of(Some(&breaker)), Pace::Normal);
        breaker.try_acquire().expect("closed").failure();
        assert_eq!(
            Pace::of(Some(&breaker)),
            Pace::Paused(Duration::from_secs(30))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            Pace::of(Some(&breaker)),
            Pace::Paused(Duration::from_secs(20))
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(Pace::of(Some(&breaker)), Pace::Probing(2));
        breaker.try_acquire().expect("probe").success();
        breaker.try_acquire().expect("probe").success();
        assert_eq!(Pace::of(Some(&breaker)), Pace::Normal);
        assert_eq!(Pace::of(None), Pace::Normal);
    }
}
