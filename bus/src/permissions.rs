//! What the server refused: permission violations, named by their subject.
//!
//! A NATS server that refuses a publish or a subscription does not answer the operation: it
//! drops it and later sends `-ERR 'Permissions Violation for Publish to "<subject>"'`, which
//! async-nats hands to the connection's event callback. Left there, a refused publish looks
//! like a JetStream ack that never came and a refused subscription like a quiet subject. Every
//! connection [`crate::NatsConfig::connect`] makes reports its refusals here: each is logged
//! as an error naming the subject, kept for a while ([`recent`]), and wakes whoever waits on
//! an operation on that subject ([`refused_or`]), so the operation fails at once with a
//! [`Refusal`] instead of a timeout.
//!
//! The server's message names the subject, not the connection, so refusals are matched by
//! subject across the process's connections: a process with two connections that both try
//! the same forbidden subject cannot tell whose refusal it was (it was both, in practice).
//!
//! ```no_run
//! # async fn demo(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let subject = "events.run-1.review.approved";
//! let asked = choreo_bus::permissions::refused_or(subject, client.request(subject, "".into()))
//!     .await;
//! if let Err(refusal) = asked {
//!     eprintln!("{refusal}"); // names the subject and says the credentials do not allow it
//! }
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tracing::{error, warn};

use crate::names::subject_matches;

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Publishing to the subject (a request is a publish too).
    Publish,
    /// Publishing with the subject as the reply subject.
    Reply,
    /// Subscribing to the subject.
    Subscribe,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Publish => "publish to",
            Operation::Reply => "ask for replies on",
            Operation::Subscribe => "subscribe to",
        })
    }
}

/// An operation the server refused for lack of permission. Retrying will not help: the
/// connection's credentials must change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the NATS server refused to let this connection {operation} `{subject}`: its credentials \
     do not allow it (permissions violation); give the process credentials generated for its \
     role (`choreo auth generate`)"
)]
pub struct Refusal {
    pub operation: Operation,
    pub subject: String,
}

impl Refusal {
    /// Reads a server error's text (`Permissions Violation for Publish to "x"`, `... for
    /// Subscription to "x" using queue "q"`, `... for Publish with Reply of "x"`); `None` for
    /// any other error.
    pub fn parse(server_error: &str) -> Option<Self> {
        let rest = server_error
            .trim()
            .trim_matches('\'')
            .strip_prefix("Permissions Violation for ")?;
        let (operation, quoted) = [
            ("Publish with Reply of ", Operation::Reply),
            ("Publish to ", Operation::Publish),
            ("Subscription to ", Operation::Subscribe),
        ]
        .into_iter()
        .find_map(|(prefix, operation)| Some((operation, rest.strip_prefix(prefix)?)))?;
        let subject = quoted.strip_prefix('"')?.split('"').next()?;
        Some(Refusal {
            operation,
            subject: subject.to_string(),
        })
    }
}

/// How long a refusal is remembered for [`recent`].
pub const REMEMBERED_FOR: Duration = Duration::from_secs(60);
/// How many refusals are remembered at most.
const REMEMBERED: usize = 64;

struct Refusals {
    announce: broadcast::Sender<Refusal>,
    recent: Mutex<VecDeque<(Instant, Refusal)>>,
}

/// Set at this process's first refusal. Until then a publish does not watch for one (that
/// costs a subscription per publish): a process whose credentials fit never pays, and one that
/// does not learns of its first refusal when the publish's confirmation times out.
static EVER_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether the server has refused this process anything yet.
pub fn ever_refused() -> bool {
    EVER_REFUSED.load(Ordering::Relaxed)
}

static REFUSALS: LazyLock<Refusals> = LazyLock::new(|| Refusals {
    announce: broadcast::channel(REMEMBERED).0,
    recent: Mutex::new(VecDeque::with_capacity(REMEMBERED)),
});

/// Takes a connection event (the callback [`crate::NatsConfig::connect`] installs): a refusal
/// is logged as an error and recorded; another server error is logged as a warning.
pub(crate) fn observe(event: &async_nats::Event) {
    let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = event else {
        return;
    };
    match Refusal::parse(text) {
        Some(refusal) => {
            error!(operation = %refusal.operation, subject = %refusal.subject, "{refusal}");
            record(refusal);
        }
        None => warn!(error = %text, "the NATS server reported an error"),
    }
}

fn record(refusal: Refusal) {
    EVER_REFUSED.store(true, Ordering::Relaxed);
    if let Ok(mut recent) = REFUSALS.recent.lock() {
        if recent.len() == REMEMBERED {
            recent.pop_front();
        }
        recent.push_back((Instant::now(), refusal.clone()));
    }
    // Nobody waiting is fine.
    let _ = REFUSALS.announce.send(refusal);
}

/// The latest refusal, in the last [`REMEMBERED_FOR`], of a subject `filter` matches (`*` and
/// `>` as in NATS): for code that learns of a failure (a timeout) and asks whether it was one.
pub fn recent(filter: &str) -> Option<Refusal> {
    let recent = REFUSALS.recent.lock().ok()?;
    recent
        .iter()
        .rev()
        .take_while(|(at, _)| at.elapsed() <= REMEMBERED_FOR)
        .find(|(_, refusal)| subject_matches(filter, &refusal.subject))
        .map(|(_, refusal)| refusal.clone())
}

/// Runs `work`, but gives up on it with the [`Refusal`] as soon as the server refuses an
/// operation on a subject `filter` matches (`$JS.API.>` for any JetStream request), rather
/// than waiting for its timeout. A refusal reported before this was called does not count.
pub async fn refused_or<F: Future>(filter: &str, work: F) -> Result<F::Output, Refusal> {
    let mut refusals = REFUSALS.announce.subscribe();
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            biased;
            done = &mut work => return Ok(done),
            refusal = refusals.recv() => match refusal {
                Ok(refusal) if subject_matches(filter, &refusal.subject) => return Err(refusal),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(work.await),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_messages_are_read() {
        assert_eq!(
            Refusal::parse(r#"Permissions Violation for Publish to "events.c1.review.approved""#),
            Some(Refusal {
                operation: Operation::Publish,
                subject: "events.c1.review.approved".into(),
            })
        );
        assert_eq!(
            Refusal::parse(
                r#"'Permissions Violation for Subscription to "events.>" using queue "q"'"#
            ),
            Some(Refusal {
                operation: Operation::Subscribe,
                subject: "events.>".into(),
            })
        );
        assert_eq!(
            Refusal::parse(r#"Permissions Violation for Publish with Reply of "_INBOX.x""#)
                .map(|r| r.operation),
            Some(Operation::Reply)
        );
        for other in ["Authorization Violation", "Maximum Payload Violation", ""] {
            assert_eq!(Refusal::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_refusal_names_the_subject_and_the_fix() {
        let refusal = Refusal {
            operation: Operation::Publish,
            subject: "$JS.ACK.EVENTS.editor.>".into(),
        };
        let said = refusal.to_string();
        assert!(
            said.contains("publish to `$JS.ACK.EVENTS.editor.>`"),
            "{said}"
        );
        assert!(said.contains("choreo auth generate"), "{said}");
    }

    #[tokio::test]
    async fn a_refusal_ends_the_wait_for_its_subject_only() {
        let waiting = tokio::spawn(refused_or(
            "$JS.API.CONSUMER.>",
            std::future::pending::<()>(),
        ));
        tokio::task::yield_now().await;
        // Let the task subscribe before the refusals are announced.
        tokio::time::sleep(Duration::from_millis(20)).await;
        record(Refusal {
            operation: Operation::Publish,
            subject: "unrelated.subject".into(),
        });
        record(Refusal {
            operation: Operation::Publish,
            subject: "$JS.API.CONSUMER.MSG.NEXT.EVENTS.editor".into(),
        });
        let refusal = waiting.await.expect("joins").expect_err("refused");
        assert_eq!(refusal.subject, "$JS.API.CONSUMER.MSG.NEXT.EVENTS.editor");
        assert_eq!(
            recent("$JS.API.>").map(|r| r.subject),
            Some("$JS.API.CONSUMER.MSG.NEXT.EVENTS.editor".into())
        );
        assert_eq!(refused_or(">", async { 7 }).await, Ok(7));
    }
}
