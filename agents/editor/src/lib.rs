//! `editor`: a bounded feedback loop on each report. A report passes when every blocking
//! finding (high or critical) carries a concrete suggestion; then it emits `review.approved`.
//! Otherwise it sends each specialist its blocking findings without one
//! (`review.revision.requested`, round + 1), and the aggregator reports the round again. After
//! `max-rounds` reports it approves whatever it has and lists what is still unresolved, so the
//! loop always ends.

use std::collections::BTreeMap;

use choreo_bus::{Agent, Emit, HandlerError, Incoming, ValidationError};
use choreo_review::events::{
    APPROVED, COMPLETED, REVISION_REQUESTED, ReviewApproved, ReviewPlanned, RevisionRequested,
};
use choreo_review::{Finding, Report, emit_json};

pub fn agent() -> Result<Agent, ValidationError> {
    Agent::builder("editor")
        .subscribes(COMPLETED)
        .emits(APPROVED)
        .emits(REVISION_REQUESTED)
        .build()
}

/// The editor's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Reports per review before the editor approves with what it has (1 = never send back).
    #[arg(long, env = "CHOREO_EDITOR_MAX_ROUNDS", default_value_t = 2)]
    pub max_rounds: u32,
}

/// What the editor decides about one report.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Approve {
        unresolved: Vec<Finding>,
    },
    /// Findings to send back, per specialist.
    Revise(BTreeMap<String, Vec<Finding>>),
}

/// Checks `report`, the `round`th of at most `max_rounds`.
pub fn check(report: &Report, max_rounds: u32) -> Verdict {
    let mut lacking: BTreeMap<String, Vec<Finding>> = BTreeMap::new();
    for attributed in report.blocking() {
        if !attributed.finding.has_concrete_suggestion() {
            lacking
                .entry(attributed.specialist.clone())
                .or_default()
                .push(attributed.finding.clone());
        }
    }
    if lacking.is_empty() || report.round >= max_rounds {
        Verdict::Approve {
            unresolved: lacking.into_values().flatten().collect(),
        }
    } else {
        Verdict::Revise(lacking)
    }
}

/// The editor's handler. A revision needs the change again; it is in the run's plan, which
/// the report does not carry, so the editor reads it from the log.
#[derive(Debug, Clone)]
pub struct Editor<P> {
    max_rounds: u32,
    plans: P,
}

/// Where the editor finds a run's plan (the log in production, a map in tests).
pub trait Plans: Send + Sync + 'static {
    fn plan(
        &self,
        correlation_id: &str,
    ) -> impl Future<Output = Result<Option<ReviewPlanned>, HandlerError>> + Send;
}

impl<P: Plans> Editor<P> {
    pub fn new(max_rounds: u32, plans: P) -> Result<Self, ValidationError> {
        if max_rounds == 0 {
            return Err(ValidationError::new("max-rounds", "must be at least 1"));
        }
        Ok(Editor { max_rounds, plans })
    }
}

impl<P: Plans> choreo_bus::Handler for Editor<P> {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        let report: Report = event.json()?;
        match check(&report, self.max_rounds) {
            Verdict::Approve { unresolved } => Ok(vec![emit_json(
                APPROVED,
                &ReviewApproved { report, unresolved },
            )?]),
            Verdict::Revise(lacking) => {
                let plan = self
                    .plans
                    .plan(&event.correlation_id)
                    .await?
                    .ok_or_else(|| {
                        HandlerError::permanent("the run has no review.planned to revise")
                    })?;
                let mut emits = Vec::with_capacity(lacking.len());
                for (specialist, findings) in lacking {
                    let revision = RevisionRequested {
                        reason: format!(
                            "{} blocking finding(s) have no concrete suggestion; say what to \
                             change for each",
                            findings.len()
                        ),
                        specialist,
                        round: report.round + 1,
                        findings,
                        request: plan.request.clone(),
                    };
                    emits.push(emit_json(REVISION_REQUESTED, &revision)?);
                }
                Ok(emits)
            }
        }
    }
}

/// Plans read from the log: the run's `review.planned` event.
#[derive(Debug, Clone)]
pub struct LogPlans {
    pub jetstream: async_nats::jetstream::Context,
    pub namespace: choreo_bus::Namespace,
}

impl Plans for LogPlans {
    async fn plan(&self, correlation_id: &str) -> Result<Option<ReviewPlanned>, HandlerError> {
        use choreo_bus::log::{LogQuery, LogReader};
        let planned = choreo_bus::EventType::new(choreo_review::events::PLANNED)
            .map_err(HandlerError::permanent)?;
        let subject = self
            .namespace
            .event_subject(correlation_id, planned.as_str());
        let unavailable = |err: choreo_bus::log::LogError| {
            HandlerError::retryable(format!("cannot read the run's plan: {err}"))
        };
        let mut reader = LogReader::open(
            &self.jetstream,
            &self.namespace.stream_name(),
            LogQuery::filtered(subject),
        )
        .await
        .map_err(unavailable)?;
        let Some(record) = reader.next().await.map_err(unavailable)? else {
            return Ok(None);
        };
        let event = record.decode().map_err(HandlerError::permanent)?;
        serde_json::from_slice(&event.data)
            .map(Some)
            .map_err(|err| HandlerError::permanent(format!("the run's plan is not JSON: {err}")))
    }
}

/// Builds the handler once connected.
pub async fn build(
    settings: Settings,
    context: choreo_bus::serve::ServeContext,
) -> Result<Editor<LogPlans>, ValidationError> {
    let plans = LogPlans {
        jetstream: async_nats::jetstream::new(context.client),
        namespace: context.namespace,
    };
    Editor::new(settings.max_rounds, plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_bus::Handler as _;
    use choreo_review::events::ReviewRequested;
    use choreo_review::report::{AttributedFinding, Verdict as ReportVerdict};
    use choreo_review::{Severity, testing};

    #[derive(Debug)]
    struct OnePlan(ReviewPlanned);

    impl Plans for OnePlan {
        async fn plan(&self, _: &str) -> Result<Option<ReviewPlanned>, HandlerError> {
            Ok(Some(self.0.clone()))
        }
    }

    fn plan() -> ReviewPlanned {
        ReviewPlanned {
            request: ReviewRequested {
                diff: "the diff".into(),
                repository: String::new(),
                title: String::new(),
                author: String::new(),
                url: String::new(),
            },
            specialists: vec!["security".into(), "style".into()],
            skipped: vec![],
            files: vec![],
        }
    }

    fn report(round: u32, findings: Vec<(&str, Severity, Option<&str>)>) -> Report {
        Report {
            round,
            verdict: ReportVerdict::ChangesRequested,
            findings: findings
                .into_iter()
                .map(|(specialist, severity, suggestion)| AttributedFinding {
                    specialist: specialist.into(),
                    finding: Finding {
                        file: "a.py".into(),
                        line: 3,
                        severity,
                        rule: "r".into(),
                        message: "m".into(),
                        suggestion: suggestion.map(str::to_string),
                    },
                })
                .collect(),
            ..testing::clean_report()
        }
    }

    async fn handle(report: &Report, max_rounds: u32) -> Vec<Emit> {
        let editor = Editor::new(max_rounds, OnePlan(plan())).expect("valid");
        editor
            .handle(&testing::root(COMPLETED, report))
            .await
            .expect("handles")
    }

    #[tokio::test]
    async fn a_report_whose_blocking_findings_say_what_to_do_is_approved() {
        let report = report(
            1,
            vec![
                (
                    "security",
                    Severity::Critical,
                    Some("load the key from the environment"),
                ),
                ("style", Severity::Low, None),
            ],
        );
        let emitted = handle(&report, 2).await;
        assert_eq!(emitted.len(), 1);
        assert_eq!(emitted[0].event_type.as_str(), APPROVED);
        let approved: ReviewApproved = serde_json::from_slice(&emitted[0].data).expect("json");
        assert_eq!(approved.report, report);
        assert!(approved.unresolved.is_empty());
    }

    #[tokio::test]
    async fn blocking_findings_without_a_suggestion_go_back_to_their_specialist() {
        let report = report(
            1,
            vec![
                ("security", Severity::High, None),
                ("security", Severity::High, Some("fix")),
                (
                    "style",
                    Severity::High,
                    Some("rename `fooBar` to `foo_bar`"),
                ),
            ],
        );
        let emitted = handle(&report, 2).await;
        assert_eq!(emitted.len(), 1, "only security has findings to revise");
        assert_eq!(emitted[0].event_type.as_str(), REVISION_REQUESTED);
        let revision: RevisionRequested = serde_json::from_slice(&emitted[0].data).expect("json");
        assert_eq!(revision.specialist, "security");
        assert_eq!(revision.round, 2);
        assert_eq!(revision.findings.len(), 2, "\"fix\" is not concrete");
        assert_eq!(revision.request.diff, "the diff");
    }

    #[tokio::test]
    async fn the_last_round_allowed_is_approved_with_what_is_unresolved() {
        let report = report(2, vec![("security", Severity::High, None)]);
        let emitted = handle(&report, 2).await;
        assert_eq!(emitted[0].event_type.as_str(), APPROVED);
        let approved: ReviewApproved = serde_json::from_slice(&emitted[0].data).expect("json");
        assert_eq!(approved.unresolved.len(), 1);
    }

    #[test]
    fn zero_rounds_is_refused() {
        assert_eq!(
            Editor::new(0, OnePlan(plan())).expect_err("zero").field,
            "max-rounds"
        );
    }
}
