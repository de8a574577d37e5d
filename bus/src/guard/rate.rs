//! Rate limiting by GCRA (the generic cell rate algorithm), shared by every task that holds a
//! clone of the limiter.
//!
//! GCRA keeps one instant per limiter, the *theoretical arrival time* of the next call. A call
//! may proceed once `now >= tat - tolerance`, where the tolerance is `(burst - 1)` emission
//! intervals. Unlike a fixed window it has no boundary at which twice the quota can pass, and
//! unlike a dropping limiter, [`RateLimiter::acquire`] reserves the next slot and waits for it,
//! so callers are served in the order they asked and nothing is refused.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::names::ValidationError;

/// A quota: `count` calls per `per`. Written `100/s`, `30/m`, `2/h` or `5/10s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    per: Duration,
}

impl Rate {
    pub fn new(count: u32, per: Duration) -> Result<Self, ValidationError> {
        if count == 0 {
            return Err(ValidationError::new("rate", "the count must be at least 1"));
        }
        if per.is_zero() {
            return Err(ValidationError::new(
                "rate",
                "the period must be above zero",
            ));
        }
        Ok(Rate { count, per })
    }

    pub fn per_second(count: u32) -> Result<Self, ValidationError> {
        Rate::new(count, Duration::from_secs(1))
    }

    /// The spacing between calls at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }

    /// Calls per second, for reports.
    pub fn per_second_f64(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => write!(f, "{}/s", self.count),
            60 if self.per.subsec_nanos() == 0 => write!(f, "{}/m", self.count),
            3600 if self.per.subsec_nanos() == 0 => write!(f, "{}/h", self.count),
            _ => write!(f, "{}/{}", self.count, humantime::format_duration(self.per)),
        }
    }
}

impl FromStr for Rate {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| {
            ValidationError::new(
                "rate",
                format!("{text:?} {why}; write it as COUNT/PERIOD, e.g. 100/s, 30/m or 5/10s"),
            )
        };
        let (count, period) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| invalid("has no '/'"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| invalid("does not start with a whole number"))?;
        let per = match period.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => humantime::parse_duration(other)
                .map_err(|_| invalid("has a period that is not a duration"))?,
        };
        Rate::new(count, per).map_err(|err| invalid(&err.reason))
    }
}

/// A rate and how many calls may pass at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: Rate,
    /// Calls that may pass back to back before the rate applies; at least 1.
    pub burst: u32,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (burst {})", self.rate, self.burst)
    }
}

/// A GCRA limiter. Clones share one state, so one limiter paces every concurrent handler of a
/// process.
///
/// ```
/// # async fn demo() -> Result<(), choreo_bus::ValidationError> {
/// use choreo_bus::guard::{Rate, RateLimit, RateLimiter};
/// let limiter = RateLimiter::new(RateLimit { rate: "100/s".parse()?, burst: 10 })?;
/// limiter.acquire().await; // waits when over the rate; never refuses
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limit: RateLimit,
    interval: Duration,
    tolerance: Duration,
    /// The theoretical arrival time of the next call; `None` until the first call.
    tat: Arc<Mutex<Option<Instant>>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Result<Self, ValidationError> {
        if limit.burst == 0 {
            return Err(ValidationError::new("burst", "must be at least 1"));
        }
        let interval = limit.rate.interval();
        Ok(RateLimiter {
            limit,
            interval,
            tolerance: interval.saturating_mul(limit.burst - 1),
            tat: Arc::new(Mutex::new(None)),
        })
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Waits until this call is within the rate. Calls are served in the order they asked.
    pub async fn acquire(&self) {
        let at = self.reserve(Instant::now());
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
    }

    /// Takes a slot now if the rate allows one, without waiting; otherwise books nothing and
    /// says how long until a call would pass. For callers that refuse instead of queueing: an
    /// HTTP front door answering `429` with `Retry-After`.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let now = Instant::now();
        self.book(now, |allowed_at| allowed_at <= now)
            .map(|_| ())
            .map_err(|allowed_at| allowed_at - now)
    }

    /// Books the next slot for a call made at `now` and returns when it may proceed.
    fn reserve(&self, now: Instant) -> Instant {
        match self.book(now, |_| true) {
            Ok(at) | Err(at) => at,
        }
    }

    /// The GCRA step: when the next call made at `now` may proceed; the slot is booked only
    /// if `take` accepts that instant (`Ok`), else left free (`Err`).
    fn book(&self, now: Instant, take: impl FnOnce(Instant) -> bool) -> Result<Instant, Instant> {
        // A poisoned lock only means another task panicked between two plain assignments;
        // the instant inside is still a valid schedule.
        let mut tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        let next = tat.map_or(now, |t| t.max(now));
        let allowed_at = next
            .checked_sub(self.tolerance)
            .map_or(now, |earliest| earliest.max(now));
        if !take(allowed_at) {
            return Err(allowed_at);
        }
        *tat = Some(next + self.interval);
        Ok(allowed_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: &str, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit {
            rate: rate.parse().expect("rate"),
            burst,
        })
        .expect("limiter")
    }

    #[test]
    fn rates_parse_and_print() {
        let cases = [
            ("100/s", 100, Duration::from_secs(1), "100/s"),
            ("30/m", 30, Duration::from_secs(60), "30/m"),
            ("2/h", 2, Duration::from_secs(3600), "2/h"),
            ("5/10s", 5, Duration::from_secs(10), "5/10s"),
            (" 7 / 250ms ", 7, Duration::from_millis(250), "7/250ms"),
        ];
        for (text, count, per, shown) in cases {
            let rate: Rate = text.parse().expect(text);
            assert_eq!(rate, Rate::new(count, per).expect("valid"), "{text}");
            assert_eq!(rate.to_string(), shown);
        }
        for bad in ["", "100", "x/s", "0/s", "5/0s", "5/fortnight", "-1/s"] {
            let err = bad.parse::<Rate>().expect_err(bad);
            assert!(err.reason.contains("COUNT/PERIOD"), "{bad}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_at_once_and_the_next_call_waits_one_interval() {
        let limiter = limiter("10/s", 5);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
            assert_eq!(Instant::now(), start, "the burst passes without waiting");
        }
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_rate_equals_the_quota_with_no_double_burst_at_a_boundary() {
        let (quota, burst) = (10_usize, 5_u32);
        let limiter = limiter("10/s", burst);
        let start = Instant::now();
        // Eight concurrent callers ask as fast as they can for ten seconds.
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let limiter = limiter.clone();
            callers.spawn(async move {
                let mut admitted = Vec::new();
                while Instant::now() - start < Duration::from_secs(10) {
                    limiter.acquire().await;
                    admitted.push(Instant::now() - start);
                }
                admitted
            });
        }
        let mut admitted: Vec<Duration> = callers.join_all().await.into_iter().flatten().collect();
        admitted.retain(|at| *at < Duration::from_secs(10));
        admitted.sort();

        // Over ten seconds: the burst plus one call per interval after the first.
        assert_eq!(admitted.len(), quota * 10 + burst as usize - 1);
        // No one-second window, wherever it starts, holds more than the quota plus the burst
        // (a fixed-window counter lets 2 x quota through across a window boundary).
        let busiest = admitted
            .iter()
            .map(|from| {
                admitted
                    .iter()
                    .filter(|at| **at >= *from && **at - *from < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert_eq!(busiest, quota + burst as usize - 1);
        // After the burst is spent, the pace is exactly one call per interval.
        let steady: Vec<_> = admitted[burst as usize..]
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .collect();
        assert!(
            steady.iter().all(|gap| *gap == Duration::from_millis(100)),
            "{steady:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_spell_refills_the_burst_but_no_more() {
        let limiter = limiter("10/s", 3);
        for _ in 0..3 {
            limiter.acquire().await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(Instant::now(), start, "a full burst after a long pause");
        limiter.acquire().await;
        assert_eq!(
            Instant::now() - start,
            Duration::from_millis(100),
            "but only one burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_refuses_over_the_rate_with_the_wait_and_books_nothing() {
        let limiter = limiter("10/s", 2);
        assert_eq!(limiter.try_acquire(), Ok(()));
        assert_eq!(limiter.try_acquire(), Ok(()), "the burst");
        assert_eq!(limiter.try_acquire(), Err(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(
            limiter.try_acquire(),
            Err(Duration::from_millis(60)),
            "a refusal does not push the next slot back"
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(limiter.try_acquire(), Ok(()));
        assert!(limiter.try_acquire().is_err());
    }

    #[test]
    fn a_zero_burst_is_refused() {
        let err = RateLimiter::new(RateLimit {
            rate: Rate::per_second(1).expect("rate"),
            burst: 0,
        })
        .expect_err("zero burst");
        assert_eq!(err.field, "burst");
    }
}
