//! `triage`: on `review.requested`, reads the diff and decides which specialists apply, then
//! emits `review.planned` naming them (so the join knows whom to wait for) and saying why the
//! others were left out.
//!
//! - `style` reviews any change;
//! - `security` reviews code and configuration (secrets live in both);
//! - `performance` and `tests` review changes to code other than tests.
//!
//! A request that is not a diff is refused for good (dead-lettered with the reason): sending
//! it again cannot help.

use choreo_bus::{Agent, Emit, HandlerError, Incoming, ValidationError};
use choreo_review::diff::{Diff, FileKind};
use choreo_review::emit_json;
use choreo_review::events::{
    PLANNED, PlannedFile, REQUESTED, ReviewPlanned, ReviewRequested, Skipped,
};

/// The largest diff triage accepts; a bigger change is better reviewed in parts.
pub const MAX_DIFF_BYTES: usize = 512 * 1024;

pub fn agent() -> Result<Agent, ValidationError> {
    Agent::builder("triage")
        .subscribes(REQUESTED)
        .emits(PLANNED)
        .build()
}

/// The plan for one request.
pub fn plan(request: ReviewRequested) -> Result<ReviewPlanned, HandlerError> {
    if request.diff.len() > MAX_DIFF_BYTES {
        return Err(HandlerError::permanent(format!(
            "the diff is {} bytes; at most {MAX_DIFF_BYTES} are reviewed: split the change",
            request.diff.len()
        )));
    }
    let diff = Diff::parse(&request.diff).map_err(HandlerError::permanent)?;
    let code = diff.has_kind(FileKind::Code);
    let config = diff.has_kind(FileKind::Config);
    let mut specialists = Vec::new();
    let mut skipped = Vec::new();
    let mut decide = |name: &str, applies: bool, reason: &str| {
        if applies {
            specialists.push(name.to_string());
        } else {
            skipped.push(Skipped {
                specialist: name.to_string(),
                reason: reason.to_string(),
            });
        }
    };
    let changes_anything = diff.changed_files().next().is_some();
    decide(
        "security",
        code || config || diff.has_kind(FileKind::Test),
        "no code or configuration changes",
    );
    decide("performance", code, "no code outside tests changes");
    decide("style", changes_anything, "the change only deletes files");
    decide("tests", code, "no code outside tests changes");
    let files = diff
        .files
        .iter()
        .map(|f| PlannedFile {
            path: f.path.clone(),
            kind: if f.deleted {
                "deleted".to_string()
            } else {
                f.kind().as_str().to_string()
            },
            added: f.added.len(),
            removed: f.removed,
        })
        .collect();
    Ok(ReviewPlanned {
        request,
        specialists,
        skipped,
        files,
    })
}

/// Handles `review.requested`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Handler;

impl choreo_bus::Handler for Handler {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        let request: ReviewRequested = event.json()?;
        Ok(vec![emit_json(PLANNED, &plan(request)?)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_bus::Handler as _;
    use choreo_review::testing;

    fn request(diff: &str) -> ReviewRequested {
        ReviewRequested {
            diff: diff.to_string(),
            repository: "acme/shop".into(),
            title: "t".into(),
            author: "a".into(),
            url: String::new(),
        }
    }

    const CODE: &str = "--- a/app/pay.py\n+++ b/app/pay.py\n@@ -1 +1 @@\n-a\n+b\n";
    const DOCS: &str = "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-a\n+b\n";
    const CONFIG: &str = "--- a/deploy/app.yaml\n+++ b/deploy/app.yaml\n@@ -1 +1 @@\n-a\n+b\n";

    #[tokio::test]
    async fn a_code_change_goes_to_every_specialist() {
        let event = testing::root(REQUESTED, &request(CODE));
        let emitted = Handler.handle(&event).await.expect("plans");
        assert_eq!(emitted.len(), 1);
        assert_eq!(emitted[0].event_type.as_str(), PLANNED);
        let planned: ReviewPlanned = serde_json::from_slice(&emitted[0].data).expect("json");
        assert_eq!(
            planned.specialists,
            ["security", "performance", "style", "tests"]
        );
        assert_eq!(
            planned.request.diff, CODE,
            "the request travels with the plan"
        );
        assert_eq!(planned.files[0].kind, "code");
    }

    #[test]
    fn a_docs_only_change_gets_no_tests_review() {
        let planned = plan(request(DOCS)).expect("plans");
        assert_eq!(planned.specialists, ["style"]);
        let skipped: Vec<_> = planned
            .skipped
            .iter()
            .map(|s| s.specialist.as_str())
            .collect();
        assert_eq!(skipped, ["security", "performance", "tests"]);
    }

    #[test]
    fn a_configuration_change_gets_security_and_style() {
        let planned = plan(request(CONFIG)).expect("plans");
        assert_eq!(planned.specialists, ["security", "style"]);
    }

    #[tokio::test]
    async fn a_request_that_is_not_a_diff_is_refused_for_good() {
        let event = testing::root(REQUESTED, &request("please review my code"));
        let err = Handler.handle(&event).await.expect_err("not a diff");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("git diff"), "{err}");
        let not_json = testing::root(REQUESTED, &serde_json::json!({"title": "no diff"}));
        assert!(
            !Handler
                .handle(&not_json)
                .await
                .expect_err("no diff")
                .is_retryable()
        );
    }
}
