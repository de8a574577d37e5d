//! A circuit breaker: closed, open, half-open.
//!
//! - **Closed**: calls pass; outcomes go into a sliding time window. Once the window holds at
//!   least `min_calls` counted calls and the share of failures reaches `failure_rate`, it opens.
//! - **Open**: calls are refused at once, with how long until it half-opens, so nothing calls a
//!   dependency that is down. After `open_for` it half-opens.
//! - **Half-open**: exactly `half_open_probes` calls are let through. If every probe passes it
//!   closes with a fresh window; the first failing probe opens it again.
//!
//! Which errors count is the caller's policy: a bad request is not the dependency's fault. An
//! outcome that arrives after the breaker changed state (a slow call started while closed that
//! fails while half-open) is ignored, so only calls made in a state decide its next one.
//! Every transition is sent to [`CircuitBreaker::transitions`] subscribers; the agent runtime
//! logs them and publishes them as `choreo.breaker.*` events.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::names::{ValidationError, validate_id};

/// How a breaker decides. `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Share of counted calls in the window that must fail to open it. Default 0.5.
    pub failure_rate: f64,
    /// Counted calls the window must hold before it may open. Default 10.
    pub min_calls: u32,
    /// How far back outcomes count. Default 30 s.
    pub window: Duration,
    /// How long it stays open before letting probes through. Default 30 s.
    pub open_for: Duration,
    /// Probe calls let through while half-open; all must pass to close. Default 1.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 0.5,
            min_calls: 10,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(ValidationError::new(
                "breaker failure_rate",
                format!("{} is not a share above 0 and at most 1", self.failure_rate),
            ));
        }
        if self.min_calls == 0 {
            return Err(ValidationError::new(
                "breaker min_calls",
                "must be at least 1",
            ));
        }
        if self.window < Duration::from_millis(10) {
            return Err(ValidationError::new(
                "breaker window",
                "must be at least 10ms",
            ));
        }
        if self.open_for.is_zero() {
            return Err(ValidationError::new(
                "breaker open_for",
                "must be above zero",
            ));
        }
        if self.half_open_probes == 0 {
            return Err(ValidationError::new(
                "breaker half_open_probes",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The event type published when a breaker enters this state.
    pub fn event_type(self) -> &'static str {
        match self {
            BreakerState::Closed => "choreo.breaker.closed",
            BreakerState::Open => "choreo.breaker.opened",
            BreakerState::HalfOpen => "choreo.breaker.half_opened",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of state, with the figures that caused it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Transition {
    pub breaker: String,
    pub from: BreakerState,
    pub to: BreakerState,
    /// Counted calls and failures in the window (closed → open), or probes (half-open → …).
    pub calls: u32,
    pub failures: u32,
    pub reason: String,
}

impl serde::Serialize for BreakerState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The breaker refused a call; try again after `retry_in`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {breaker} is open; retry in {retry_in:?}")]
pub struct BreakerOpen {
    pub breaker: String,
    pub retry_in: Duration,
}

/// The result of a call through [`CircuitBreaker::call`].
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// Refused without calling.
    #[error(transparent)]
    Open(#[from] BreakerOpen),
    /// Called, and it failed.
    #[error(transparent)]
    Failed(E),
}

/// A circuit breaker. Clones share one state.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use choreo_bus::guard::{BreakerConfig, BreakerError, CircuitBreaker};
/// let llm = CircuitBreaker::new("llm", BreakerConfig::default())?;
/// // Count server errors, not our own bad requests.
/// let answer = llm
///     .call_with(|status: &u16| *status >= 500, || async { Err::<String, u16>(503) })
///     .await;
/// assert!(matches!(answer, Err(BreakerError::Failed(503))));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    name: Arc<str>,
    config: BreakerConfig,
    inner: Arc<Mutex<Inner>>,
    transitions: broadcast::Sender<Transition>,
    /// Woken on every transition and freed probe slot.
    changed: Arc<Notify>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped on every transition; permits from an earlier generation are not counted.
    generation: u64,
}

#[derive(Debug)]
enum State {
    Closed(Window),
    Open { until: Instant },
    HalfOpen { admitted: u32, passed: u32 },
}

impl CircuitBreaker {
    /// A closed breaker. `name` is subject-safe (`[A-Za-z0-9_-]`): it names the breaker's
    /// transition events.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Result<Self, ValidationError> {
        let name = name.into();
        validate_id("breaker name", &name)?;
        config.validate()?;
        let (transitions, _) = broadcast::channel(64);
        Ok(CircuitBreaker {
            name: name.into(),
            config,
            inner: Arc::new(Mutex::new(Inner {
                state: State::Closed(Window::new(config.window)),
                generation: 0,
            })),
            transitions,
            changed: Arc::new(Notify::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state now (an open breaker whose time is up reports half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.half_open_if_due(&mut inner, Instant::now());
        state_of(&inner.state)
    }

    /// How long until an open breaker half-opens; zero when it is not open.
    pub fn open_remaining(&self) -> Duration {
        match self.lock().state {
            State::Open { until } => until.saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        }
    }

    /// Whether a call made now would be let through: closed, or half-open with a probe slot free.
    pub fn would_admit(&self) -> bool {
        let mut inner = self.lock();
        self.half_open_if_due(&mut inner, Instant::now());
        match inner.state {
            State::Closed(_) => true,
            State::Open { .. } => false,
            State::HalfOpen { admitted, .. } => admitted < self.config.half_open_probes,
        }
    }

    /// Completes at the next transition or freed probe slot. Create (and enable) it before
    /// checking the condition you wait on, so a change in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Every transition from now on.
    pub fn transitions(&self) -> broadcast::Receiver<Transition> {
        self.transitions.subscribe()
    }

    /// Asks to make one call. The permit records its outcome; dropping it unrecorded counts
    /// nothing (and frees a probe slot).
    pub fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.half_open_if_due(&mut inner, now);
        let generation = inner.generation;
        let probe = match &mut inner.state {
            State::Closed(_) => false,
            State::Open { until } => {
                return Err(self.open_error(until.saturating_duration_since(now)));
            }
            State::HalfOpen { admitted, .. } => {
                if *admitted >= self.config.half_open_probes {
                    // The probes are out; their outcome decides soon.
                    return Err(self.open_error(self.config.open_for.min(Duration::from_secs(1))));
                }
                *admitted += 1;
                true
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            generation,
            probe,
            settled: false,
        })
    }

    /// Calls `call` unless the breaker is open; every error counts as a failure.
    pub async fn call<T, E, Fut>(&self, call: impl FnOnce() -> Fut) -> Result<T, BreakerError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(|_: &E| true, call).await
    }

    /// Calls `call` unless the breaker is open; an error counts as a failure only if
    /// `is_failure` says so (the others pass as neither success nor failure).
    pub async fn call_with<T, E, Fut>(
        &self,
        is_failure: impl Fn(&E) -> bool,
        call: impl FnOnce() -> Fut,
    ) -> Result<T, BreakerError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire()?;
        match call().await {
            Ok(value) => {
                permit.success();
                Ok(value)
            }
            Err(err) => {
                if is_failure(&err) {
                    permit.failure();
                } else {
                    permit.ignore();
                }
                Err(BreakerError::Failed(err))
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is only changed by whole assignments under the lock, so a panic elsewhere
        // cannot leave it half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open_error(&self, retry_in: Duration) -> BreakerOpen {
        BreakerOpen {
            breaker: self.name.to_string(),
            retry_in,
        }
    }

    fn half_open_if_due(&self, inner: &mut Inner, now: Instant) {
        if let State::Open { until } = inner.state
            && now >= until
        {
            self.move_to(
                inner,
                State::HalfOpen {
                    admitted: 0,
                    passed: 0,
                },
                0,
                0,
                format!(
                    "open for {:?}; letting probes through",
                    self.config.open_for
                ),
            );
        }
    }

    fn record(&self, generation: u64, probe: bool, outcome: Outcome) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.generation != generation {
            return; // Started under an earlier state; it says nothing about this one.
        }
        match (&mut inner.state, outcome) {
            (State::Closed(_), Outcome::Ignored) => {}
            (State::Closed(window), outcome) => {
                window.add(now, outcome == Outcome::Failure);
                let (calls, failures) = window.totals(now);
                if calls >= self.config.min_calls
                    && f64::from(failures) >= self.config.failure_rate * f64::from(calls)
                {
                    let reason = format!(
                        "{failures} of {calls} calls failed in the last {:?}",
                        self.config.window
                    );
                    self.move_to(
                        &mut inner,
                        State::Open {
                            until: now + self.config.open_for,
                        },
                        calls,
                        failures,
                        reason,
                    );
                }
            }
            (State::HalfOpen { admitted, .. }, Outcome::Ignored) if probe => {
                *admitted = admitted.saturating_sub(1);
                self.changed.notify_waiters();
            }
            (State::HalfOpen { admitted, .. }, Outcome::Failure) if probe => {
                let admitted = *admitted;
                self.move_to(
                    &mut inner,
                    State::Open {
                        until: now + self.config.open_for,
                    },
                    admitted,
                    1,
                    "a probe failed".to_string(),
                );
            }
            (State::HalfOpen { passed, .. }, Outcome::Success) if probe => {
                *passed += 1;
                let passed = *passed;
                if passed >= self.config.half_open_probes {
                    self.move_to(
                        &mut inner,
                        State::Closed(Window::new(self.config.window)),
                        passed,
                        0,
                        format!("{passed} probe(s) passed"),
                    );
                }
            }
            _ => {}
        }
    }

    fn move_to(&self, inner: &mut Inner, to: State, calls: u32, failures: u32, reason: String) {
        let from = state_of(&inner.state);
        inner.state = to;
        inner.generation += 1;
        let transition = Transition {
            breaker: self.name.to_string(),
            from,
            to: state_of(&inner.state),
            calls,
            failures,
            reason,
        };
        // No subscriber is fine: nobody is watching this breaker.
        let _ = self.transitions.send(transition);
        self.changed.notify_waiters();
    }
}

fn state_of(state: &State) -> BreakerState {
    match state {
        State::Closed(_) => BreakerState::Closed,
        State::Open { .. } => BreakerState::Open,
        State::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Ignored,
}

/// Leave to make one call; say how it went.
#[derive(Debug)]
#[must_use = "a permit records nothing unless told the outcome"]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl Permit {
    pub fn success(mut self) {
        self.settle(Outcome::Success);
    }

    pub fn failure(mut self) {
        self.settle(Outcome::Failure);
    }

    /// The call failed in a way that says nothing about the dependency (e.g. a bad request).
    pub fn ignore(mut self) {
        self.settle(Outcome::Ignored);
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    fn settle(&mut self, outcome: Outcome) {
        if !self.settled {
            self.settled = true;
            self.breaker.record(self.generation, self.probe, outcome);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.settle(Outcome::Ignored);
    }
}

/// Counted calls over the last `span`, in ten buckets so old outcomes fall out in steps of a
/// tenth of the window without keeping every call.
#[derive(Debug)]
struct Window {
    span: Duration,
    bucket_width: Duration,
    buckets: VecDeque<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    start: Instant,
    calls: u32,
    failures: u32,
}

impl Window {
    const BUCKETS: u32 = 10;

    fn new(span: Duration) -> Self {
        Window {
            span,
            bucket_width: span / Self::BUCKETS,
            buckets: VecDeque::new(),
        }
    }

    fn add(&mut self, now: Instant, failed: bool) {
        self.expire(now);
        let current = match self.buckets.back_mut() {
            Some(bucket) if now < bucket.start + self.bucket_width => bucket,
            _ => {
                self.buckets.push_back(Bucket {
                    start: now,
                    calls: 0,
                    failures: 0,
                });
                match self.buckets.back_mut() {
                    Some(bucket) => bucket,
                    None => return,
                }
            }
        };
        current.calls += 1;
        current.failures += u32::from(failed);
    }

    fn totals(&mut self, now: Instant) -> (u32, u32) {
        self.expire(now);
        self.buckets.iter().fold((0, 0), |(calls, failures), b| {
            (calls + b.calls, failures + b.failures)
        })
    }

    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.buckets.front() {
            if oldest.start + self.span <= now {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn breaker(min_calls: u32, probes: u32) -> CircuitBreaker {
        CircuitBreaker::new(
            "dep",
            BreakerConfig {
                failure_rate: 0.5,
                min_calls,
                window: Duration::from_secs(10),
                open_for: Duration::from_secs(5),
                half_open_probes: probes,
            },
        )
        .expect("breaker")
    }

    fn fail(breaker: &CircuitBreaker) {
        breaker.try_acquire().expect("admitted").failure();
    }

    fn pass(breaker: &CircuitBreaker) {
        breaker.try_acquire().expect("admitted").success();
    }

    #[tokio::test(start_paused = true)]
    async fn it_does_not_open_before_its_minimum_calls() {
        let breaker = breaker(5, 1);
        for _ in 0..4 {
            fail(&breaker);
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "4 failures of 4 < min 5"
        );
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn it_opens_at_the_failure_rate_not_below() {
        let breaker = breaker(4, 1);
        pass(&breaker);
        pass(&breaker);
        pass(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed, "1 of 4 failed");
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed, "2 of 5 failed");
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open, "3 of 6 failed: 50%");
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_leave_the_window() {
        let breaker = breaker(4, 1);
        for _ in 0..3 {
            fail(&breaker);
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        fail(&breaker);
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "the first 3 have aged out"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_makes_zero_downstream_calls() {
        let breaker = breaker(2, 1);
        fail(&breaker);
        fail(&breaker);
        let calls = AtomicU32::new(0);
        for _ in 0..10 {
            let result = breaker
                .call(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), ()>(())
                })
                .await;
            let Err(BreakerError::Open(open)) = result else {
                panic!("expected a refusal, got {result:?}");
            };
            assert!(open.retry_in <= Duration::from_secs(5));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_n_probes_and_closes_when_they_pass() {
        let breaker = breaker(2, 3);
        fail(&breaker);
        fail(&breaker);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probes: Vec<Permit> = (0..3)
            .map(|_| breaker.try_acquire().expect("probe"))
            .collect();
        assert!(probes.iter().all(Permit::is_probe));
        assert!(breaker.try_acquire().is_err(), "a fourth call is refused");
        let mut probes = probes.into_iter();
        probes.next().expect("probe").success();
        probes.next().expect("probe").success();
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen,
            "2 of 3 probes passed"
        );
        probes.next().expect("probe").success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        pass(&breaker);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_probe_reopens_for_another_full_spell() {
        let breaker = breaker(2, 1);
        fail(&breaker);
        fail(&breaker);
        tokio::time::sleep(Duration::from_secs(5)).await;
        breaker.try_acquire().expect("probe").failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.open_remaining(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_its_slot() {
        let breaker = breaker(2, 1);
        fail(&breaker);
        fail(&breaker);
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(breaker.try_acquire().expect("probe"));
        breaker
            .try_acquire()
            .expect("the slot is free again")
            .success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn ignored_error_kinds_do_not_count() {
        let breaker = breaker(2, 1);
        for _ in 0..10 {
            let result = breaker
                .call_with(
                    |status: &u16| *status >= 500,
                    || async { Err::<(), u16>(400) },
                )
                .await;
            assert!(matches!(result, Err(BreakerError::Failed(400))));
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "bad requests are ours"
        );
        for _ in 0..2 {
            let _ = breaker
                .call_with(
                    |status: &u16| *status >= 500,
                    || async { Err::<(), u16>(503) },
                )
                .await;
        }
        assert_eq!(breaker.state(), BreakerState::Open, "server errors count");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_outcome_from_an_earlier_state_is_ignored() {
        let breaker = breaker(2, 1);
        let slow = breaker.try_acquire().expect("closed");
        fail(&breaker);
        fail(&breaker);
        tokio::time::sleep(Duration::from_secs(5)).await;
        slow.failure(); // started while closed, ends while half-open
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn every_transition_is_announced() {
        let breaker = breaker(2, 1);
        let mut transitions = breaker.transitions();
        fail(&breaker);
        fail(&breaker);
        tokio::time::sleep(Duration::from_secs(5)).await;
        pass(&breaker);
        let seen: Vec<_> = std::iter::from_fn(|| transitions.try_recv().ok())
            .map(|t| (t.from, t.to))
            .collect();
        assert_eq!(
            seen,
            [
                (BreakerState::Closed, BreakerState::Open),
                (BreakerState::Open, BreakerState::HalfOpen),
                (BreakerState::HalfOpen, BreakerState::Closed),
            ]
        );
    }

    #[test]
    fn impossible_settings_are_refused() {
        let bad_rate = BreakerConfig {
            failure_rate: 1.5,
            ..BreakerConfig::default()
        };
        assert!(CircuitBreaker::new("x", bad_rate).is_err());
        assert!(CircuitBreaker::new("has space", BreakerConfig::default()).is_err());
    }
}
