//! The review team's events: their types and JSON payloads.
//!
//! ```text
//! github.pull_request.changed ─fetcher─▶ review.requested   (from the gateway's GitHub webhook)
//! review.requested ─triage─▶ review.planned ─┬─security────▶ review.finding*, review.specialist.completed
//!                                            ├─performance─▶   "
//!                                            ├─style───────▶   "
//!                                            └─tests───────▶   "
//!   aggregator (join: all planned specialists completed, or review.deadline) ─▶ review.completed
//!   editor ─▶ review.approved ─notifier─▶ review.delivered
//!          └▶ review.revision.requested (to one specialist, round + 1, at most N rounds)
//! ```

use serde::{Deserialize, Serialize};

use crate::finding::Finding;

/// A pull request was opened or pushed to (from the gateway's GitHub webhook).
pub const PULL_REQUEST_CHANGED: &str = "github.pull_request.changed";
pub const REQUESTED: &str = "review.requested";
pub const PLANNED: &str = "review.planned";
pub const FINDING: &str = "review.finding";
pub const SPECIALIST_COMPLETED: &str = "review.specialist.completed";
pub const REVISION_REQUESTED: &str = "review.revision.requested";
pub const DEADLINE: &str = "review.deadline";
pub const COMPLETED: &str = "review.completed";
pub const APPROVED: &str = "review.approved";
pub const DELIVERED: &str = "review.delivered";

/// A change to review, from outside (the CLI, the gateway, a webhook).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRequested {
    /// The unified diff of the change (`git diff` output).
    pub diff: String,
    /// `owner/name`, or any name for the repository.
    #[serde(default)]
    pub repository: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub author: String,
    /// Where a person can see the change (a pull request's page).
    #[serde(default)]
    pub url: String,
}

/// A pull request to review, as GitHub announced it: everything but the diff, which the
/// `fetcher` agent fetches from `diff_url` and turns into [`ReviewRequested`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestChanged {
    /// `opened`, `synchronize`, `reopened` or `ready_for_review`.
    pub action: String,
    /// `owner/name`.
    pub repository: String,
    pub number: u64,
    pub title: String,
    pub author: String,
    /// The pull request's page.
    pub url: String,
    /// Where its unified diff is served.
    pub diff_url: String,
    /// The commit reviewed.
    pub head_sha: String,
}

/// A specialist triage left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub specialist: String,
    pub reason: String,
}

/// Triage's plan: who reviews the change. Carries the request, so a specialist needs nothing
/// but this event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewPlanned {
    pub request: ReviewRequested,
    /// The specialists whose completion the join waits for.
    pub specialists: Vec<String>,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Changed files by kind, for the report.
    #[serde(default)]
    pub files: Vec<PlannedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub path: String,
    pub kind: String,
    pub added: usize,
    pub removed: usize,
}

/// One finding of one specialist in one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingReported {
    pub specialist: String,
    pub round: u32,
    pub finding: Finding,
}

/// What produced a specialist's output, so a replay can tell a changed agent from a changed
/// model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Provenance {
    /// The deterministic rules, at a version.
    Rules { version: String },
    /// A chat-completions model.
    Llm {
        endpoint: String,
        /// The model the endpoint says answered (or the one asked for).
        model: String,
        prompt_version: String,
        /// The endpoint's last response body, verbatim.
        raw_response: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        /// Calls made, retries included.
        calls: u32,
    },
}

/// A specialist is done with a round. Its findings were published before it, one event each;
/// `findings` says how many, so the join knows when it has them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialistCompleted {
    pub specialist: String,
    pub round: u32,
    pub findings: usize,
    /// The brain's output, verbatim: the report keeps it under the summary.
    pub raw_output: String,
    pub provenance: Provenance,
    #[serde(default)]
    pub tokens: u64,
}

/// The editor sends a specialist's part back for another round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRequested {
    pub specialist: String,
    /// The round the revision is for (the report's round + 1).
    pub round: u32,
    /// What to fix.
    pub reason: String,
    /// The findings that need it.
    pub findings: Vec<Finding>,
    /// The change, again, so the specialist needs nothing but this event.
    pub request: ReviewRequested,
}

/// A round's deadline passed (published by the aggregator's deadline watch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlinePassed {
    pub round: u32,
}

/// The editor's verdict on a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewApproved {
    pub report: crate::report::Report,
    /// Blocking findings still without a concrete suggestion after the last round allowed.
    #[serde(default)]
    pub unresolved: Vec<Finding>,
}

/// The approved report reached its audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewDelivered {
    /// The URL posted to, or the file written.
    pub target: String,
    /// The HTTP status, when posted.
    #[serde(default)]
    pub status: Option<u16>,
}
