//! The join, given a run's events: what it emits.

use std::collections::BTreeMap;

use choreo_bus::dead_letter::REDRIVE_FOR;
use choreo_bus::log::LogRecord;
use choreo_bus::projection::Folded;
use choreo_bus::{Emit, Event, HandlerError, Namespace};
use choreo_review::events::*;
use choreo_review::report::{Report, Verdict};
use choreo_review::testing;
use choreo_review::{Finding, Severity, emit_json};

use super::*;

/// A run being built: events in log order, each a child of the plan unless said otherwise.
/// An event's stream sequence is its place in `events`, from 1.
struct Run {
    events: Vec<Event>,
    /// Sequences of redriven copies, with the agent each is for.
    redriven_for: BTreeMap<u64, String>,
}

impl Run {
    fn planned(specialists: &[&str]) -> Run {
        let request = ReviewRequested {
            diff: "--- a/x.py\n+++ b/x.py\n@@ -0,0 +1 @@\n+x = 1\n".into(),
            repository: "acme/shop".into(),
            title: "Add x".into(),
            author: "ada".into(),
            url: "https://example.test/pr/1".into(),
        };
        let requested = testing::root(REQUESTED, &request);
        let plan = ReviewPlanned {
            request,
            specialists: specialists.iter().map(|s| s.to_string()).collect(),
            skipped: vec![],
            files: vec![],
        };
        let planned = testing::child(&requested, "triage", emit(PLANNED, &plan));
        Run {
            events: vec![requested.event, planned.event],
            redriven_for: BTreeMap::new(),
        }
    }

    /// The plan's sequence.
    const PLAN: u64 = 2;

    fn plan(&self) -> &Event {
        &self.events[1]
    }

    /// Stores an event and gives its sequence.
    fn push(&mut self, agent: &str, event_type: &str, payload: &impl serde::Serialize) -> u64 {
        let parent = self.plan().clone();
        // Distinct ids per push, as the runtime's index would give.
        let mut event = testing::child(&parent, agent, emit(event_type, payload)).event;
        event.id = format!("{}-{}", event.id, self.events.len());
        self.events.push(event);
        self.events.len() as u64
    }

    /// Stores a redriven copy of the event at `sequence`, for `agent` only.
    fn redrive(&mut self, sequence: u64, agent: &str) -> u64 {
        let copy = self.events[sequence as usize - 1].clone();
        self.events.push(copy);
        let at = self.events.len() as u64;
        self.redriven_for.insert(at, agent.to_string());
        at
    }

    fn finding(
        &mut self,
        specialist: &str,
        round: u32,
        severity: Severity,
        suggestion: Option<&str>,
    ) {
        let finding = Finding {
            file: "x.py".into(),
            line: 1,
            severity,
            rule: format!("{specialist}-rule"),
            message: format!("{specialist} says so"),
            suggestion: suggestion.map(str::to_string),
        };
        self.push(
            specialist,
            FINDING,
            &FindingReported {
                specialist: specialist.into(),
                round,
                finding,
            },
        );
    }

    fn completed(&mut self, specialist: &str, round: u32, findings: usize) -> u64 {
        self.push(
            specialist,
            SPECIALIST_COMPLETED,
            &SpecialistCompleted {
                specialist: specialist.into(),
                round,
                findings,
                raw_output: format!("raw output of {specialist}, round {round}\n```kept```"),
                provenance: Provenance::Rules {
                    version: "v1".into(),
                },
                tokens: 7,
            },
        )
    }

    /// The join as a handling reads it when the log holds the first `stored` events.
    fn join_of(&self, stored: usize) -> Folded<ReviewJoin> {
        let namespace = Namespace::default();
        let mut join = Folded::<ReviewJoin>::default();
        for (i, event) in self.events.iter().take(stored).enumerate() {
            let sequence = i as u64 + 1;
            let mut record =
                LogRecord::of_event(&namespace, sequence, time::OffsetDateTime::now_utc(), event);
            if let Some(agent) = self.redriven_for.get(&sequence) {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(REDRIVE_FOR, agent.as_str());
                record.headers = Some(headers);
            }
            join.apply(&record);
        }
        join
    }

    /// What the handling of the event at `handled` emits, reading the whole run.
    fn emits_handling(&self, handled: u64) -> Result<Vec<Emit>, HandlerError> {
        emits_for(&self.join_of(self.events.len()), handled)
    }

    /// The report the handling of the run's last event emits.
    fn report(&self) -> Report {
        let emits = self
            .emits_handling(self.events.len() as u64)
            .expect("decides");
        assert_eq!(emits.len(), 1, "one report");
        assert_eq!(emits[0].event_type.as_str(), COMPLETED);
        serde_json::from_slice(&emits[0].data).expect("a report")
    }
}

#[allow(clippy::expect_used)]
fn emit(event_type: &str, payload: &impl serde::Serialize) -> choreo_bus::Emit {
    emit_json(event_type, payload).expect("serializes")
}

#[test]
fn waits_for_every_planned_specialist_then_reports_their_raw_outputs_verbatim() {
    let mut run = Run::planned(&["security", "style"]);
    run.finding(
        "security",
        1,
        Severity::Critical,
        Some("read it from the environment"),
    );
    let security_done = run.completed("security", 1, 1);
    assert!(
        run.emits_handling(security_done)
            .expect("decides")
            .is_empty(),
        "style is still out"
    );

    run.finding(
        "style",
        1,
        Severity::Low,
        Some("break the line after the comma"),
    );
    run.finding(
        "style",
        1,
        Severity::Medium,
        Some("rename it to total_amount"),
    );
    run.completed("style", 1, 2);
    let report = run.report();
    assert_eq!(report.round, 1);
    assert_eq!(report.verdict, Verdict::ChangesRequested);
    let severities: Vec<_> = report.findings.iter().map(|f| f.finding.severity).collect();
    assert_eq!(
        severities,
        [Severity::Critical, Severity::Medium, Severity::Low]
    );
    assert_eq!(report.specialists.len(), 2);
    assert_eq!(
        report.specialists[0].raw_output,
        "raw output of security, round 1\n```kept```"
    );
    assert_eq!(report.tokens, 14);
    let markdown = report.markdown();
    let summary_at = markdown.find(&report.summary).expect("summary in the page");
    let raw_at = markdown
        .find("raw output of style")
        .expect("raw output in the page");
    assert!(summary_at < raw_at, "the summary comes first");
    assert!(
        markdown.contains("````\nraw output of security"),
        "a fence longer than the output's"
    );
}

#[test]
fn the_report_is_one_of_a_kind_in_the_run_whatever_triggered_it() {
    let mut run = Run::planned(&["tests"]);
    let tests_done = run.completed("tests", 1, 0);
    let emits = run.emits_handling(tests_done).expect("decides");
    assert_eq!(emits[0].run_key.as_deref(), Some("round-1"));
    let report: Report = serde_json::from_slice(&emits[0].data).expect("report");
    assert_eq!(report.verdict, Verdict::Clean);

    run.push("aggregator", COMPLETED, &report);
    assert!(
        run.emits_handling(tests_done).expect("decides").is_empty(),
        "reported once, even when the completion is handled again"
    );
}

#[test]
fn only_the_handling_of_the_last_input_reports_so_the_report_hangs_under_it() {
    let mut run = Run::planned(&["security", "style"]);
    let security_done = run.completed("security", 1, 0);
    let style_done = run.completed("style", 1, 0);
    // The aggregator started late: every handling reads a log in which the round is complete.
    for earlier in [Run::PLAN, security_done] {
        assert!(
            run.emits_handling(earlier).expect("decides").is_empty(),
            "the handling of the event at {earlier} leaves the report to the last input's"
        );
    }
    assert_eq!(run.emits_handling(style_done).expect("decides").len(), 1);
}

#[test]
fn a_copy_redriven_for_another_agent_is_not_an_input_and_one_for_the_aggregator_is() {
    let mut run = Run::planned(&["security"]);
    let security_done = run.completed("security", 1, 0);
    let for_security = run.redrive(Run::PLAN, "security");
    assert!(
        run.emits_handling(for_security)
            .expect("decides")
            .is_empty()
    );
    assert_eq!(
        run.emits_handling(security_done).expect("decides").len(),
        1,
        "the aggregator never handles the copy, so the completion is still the last input"
    );

    let for_the_aggregator = run.redrive(security_done, AGENT);
    assert!(
        run.emits_handling(security_done)
            .expect("decides")
            .is_empty()
    );
    assert_eq!(
        run.emits_handling(for_the_aggregator)
            .expect("decides")
            .len(),
        1
    );
}

#[test]
fn a_read_of_the_log_short_of_the_handled_event_is_retried() {
    let mut run = Run::planned(&["security"]);
    let security_done = run.completed("security", 1, 0);
    let lagging = run.join_of(security_done as usize - 1);
    let err = emits_for(&lagging, security_done).expect_err("the read misses the event");
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn a_completion_whose_findings_are_not_all_in_yet_is_retried() {
    let mut run = Run::planned(&["security"]);
    run.finding("security", 1, Severity::High, Some("use parameters"));
    let security_done = run.completed("security", 1, 2);
    let err = run
        .emits_handling(security_done)
        .expect_err("one finding missing");
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn a_passed_deadline_reports_without_the_missing_specialist() {
    let mut run = Run::planned(&["security", "performance"]);
    run.completed("security", 1, 0);
    run.push("aggregator", DEADLINE, &DeadlinePassed { round: 1 });
    let report = run.report();
    assert_eq!(report.missing, ["performance"]);
    assert!(
        report.summary.contains("No answer from performance"),
        "{}",
        report.summary
    );
    assert_eq!(report.specialists[1].round, None);
}

#[test]
fn a_revision_round_waits_only_for_the_revised_specialist_and_keeps_the_others() {
    let mut run = Run::planned(&["security", "style"]);
    run.finding("security", 1, Severity::High, None);
    run.completed("security", 1, 1);
    let style_done = run.completed("style", 1, 0);
    let first = run.report();
    run.push("aggregator", COMPLETED, &first);
    let revision = RevisionRequested {
        specialist: "security".into(),
        round: 2,
        reason: "blocking findings need a suggestion".into(),
        findings: vec![],
        request: ReviewRequested {
            diff: String::new(),
            repository: String::new(),
            title: String::new(),
            author: String::new(),
            url: String::new(),
        },
    };
    run.push("editor", REVISION_REQUESTED, &revision);
    assert!(
        run.emits_handling(style_done).expect("decides").is_empty(),
        "security is revising"
    );

    run.finding(
        "security",
        2,
        Severity::High,
        Some("pass the id as a query parameter"),
    );
    run.completed("security", 2, 1);
    let second = run.report();
    assert_eq!(second.round, 2);
    let rounds: Vec<_> = second.specialists.iter().map(|s| s.round).collect();
    assert_eq!(rounds, [Some(2), Some(1)]);
    assert_eq!(
        second.findings.len(),
        1,
        "round 1's security finding is replaced"
    );
    assert!(second.findings[0].finding.has_concrete_suggestion());
}
