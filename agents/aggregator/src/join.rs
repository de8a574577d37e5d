//! The join's state for one run, folded from the run's events, and what to do about it.

use std::collections::{BTreeMap, BTreeSet};

use choreo_bus::dead_letter::REDRIVE_FOR;
use choreo_bus::envelope::EventView;
use choreo_bus::log::LogRecord;
use choreo_bus::projection::Projection;
use choreo_review::events::{
    COMPLETED, DEADLINE, DeadlinePassed, FINDING, FindingReported, PLANNED, REVISION_REQUESTED,
    ReviewPlanned, RevisionRequested, SPECIALIST_COMPLETED, Skipped, SpecialistCompleted,
};
use choreo_review::report::{AttributedFinding, Report, SpecialistSection, Verdict};
use choreo_review::{Finding, Severity};
use serde::{Deserialize, Serialize};

/// Everything the join knows about one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReviewJoin {
    pub plan: Option<Plan>,
    /// Rounds by number: 1 is triage's plan, later ones the editor's revisions.
    pub rounds: BTreeMap<u32, Round>,
    /// Completions by specialist, then round.
    pub completions: BTreeMap<String, BTreeMap<u32, SpecialistCompleted>>,
    /// Findings by specialist, then round, then event id (a finding stored twice counts once).
    pub findings: BTreeMap<String, BTreeMap<u32, BTreeMap<String, Finding>>>,
    /// The stream sequence of the run's last event that the aggregator handles: only its
    /// handling reports ([`crate::emits_for`]).
    pub last_input: u64,
}

/// What triage planned, without the diff.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub repository: String,
    pub title: String,
    pub author: String,
    pub url: String,
    pub specialists: Vec<String>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// The specialists whose answer this round waits for.
    pub expected: BTreeSet<String>,
    pub deadline_passed: bool,
    pub reported: bool,
}

impl Projection for ReviewJoin {
    const NAME: &'static str = "review-join-v2";

    /// Payloads that do not parse are left out: the agent that wrote them was dead-lettered
    /// or is a different build, and the join can only wait for what it can read. They are
    /// still inputs: the aggregator handles them like any other.
    fn apply(&mut self, event: &EventView<'_>, record: &LogRecord) {
        let handled_here = record
            .header(REDRIVE_FOR)
            .is_none_or(|agent| agent == crate::AGENT);
        if INPUTS.contains(&event.event_type) && handled_here {
            self.last_input = record.sequence;
        }
        match event.event_type {
            PLANNED => {
                let Some(planned) = parse::<ReviewPlanned>(event) else {
                    return;
                };
                self.round(1).expected = planned.specialists.iter().cloned().collect();
                self.plan = Some(Plan {
                    repository: planned.request.repository,
                    title: planned.request.title,
                    author: planned.request.author,
                    url: planned.request.url,
                    specialists: planned.specialists,
                    skipped: planned.skipped,
                });
            }
            REVISION_REQUESTED => {
                if let Some(revision) = parse::<RevisionRequested>(event) {
                    self.round(revision.round)
                        .expected
                        .insert(revision.specialist);
                }
            }
            FINDING => {
                if let Some(reported) = parse::<FindingReported>(event) {
                    self.findings
                        .entry(reported.specialist)
                        .or_default()
                        .entry(reported.round)
                        .or_default()
                        .insert(event.id.to_string(), reported.finding);
                }
            }
            SPECIALIST_COMPLETED => {
                if let Some(completed) = parse::<SpecialistCompleted>(event) {
                    self.completions
                        .entry(completed.specialist.clone())
                        .or_default()
                        .insert(completed.round, completed);
                }
            }
            DEADLINE => {
                if let Some(deadline) = parse::<DeadlinePassed>(event) {
                    self.round(deadline.round).deadline_passed = true;
                }
            }
            COMPLETED => {
                if let Some(report) = parse::<Report>(event) {
                    self.round(report.round).reported = true;
                }
            }
            _ => {}
        }
    }
}

/// The event types the aggregator subscribes to.
pub const INPUTS: [&str; 3] = [PLANNED, SPECIALIST_COMPLETED, DEADLINE];

fn parse<T: serde::de::DeserializeOwned>(event: &EventView<'_>) -> Option<T> {
    serde_json::from_slice(event.data).ok()
}

/// What the join should do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Still waiting for specialists (or the round is reported already).
    Wait,
    /// A specialist's completion is in but some of its findings are not yet: try again soon.
    FindingsInFlight(String),
    /// Report this round.
    Report(Box<Report>),
}

impl ReviewJoin {
    fn round(&mut self, number: u32) -> &mut Round {
        self.rounds.entry(number).or_default()
    }

    /// The latest round's decision: report when every expected specialist answered (with all
    /// its findings in), or when its deadline passed; otherwise wait.
    pub fn decide(&self) -> Decision {
        let Some(plan) = &self.plan else {
            return Decision::Wait;
        };
        let Some((&number, round)) = self.rounds.iter().next_back() else {
            return Decision::Wait;
        };
        if round.reported {
            return Decision::Wait;
        }
        let mut missing = Vec::new();
        for specialist in &round.expected {
            match self.completion(specialist, number) {
                None => missing.push(specialist.clone()),
                Some(completed)
                    if self.findings_of(specialist, number).len() < completed.findings =>
                {
                    if !round.deadline_passed {
                        return Decision::FindingsInFlight(format!(
                            "{specialist} reported {} findings in round {number}; not all are \
                             in the log yet",
                            completed.findings
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        if !missing.is_empty() && !round.deadline_passed {
            return Decision::Wait;
        }
        Decision::Report(Box::new(self.report(plan, number, missing)))
    }

    fn completion(&self, specialist: &str, round: u32) -> Option<&SpecialistCompleted> {
        self.completions.get(specialist)?.get(&round)
    }

    fn findings_of(&self, specialist: &str, round: u32) -> Vec<&Finding> {
        self.findings
            .get(specialist)
            .and_then(|rounds| rounds.get(&round))
            .map(|by_id| by_id.values().collect())
            .unwrap_or_default()
    }

    /// The report of `round`: each planned specialist's latest answer up to that round.
    fn report(&self, plan: &Plan, round: u32, mut missing: Vec<String>) -> Report {
        let mut sections = Vec::new();
        let mut findings = Vec::new();
        let mut tokens = 0;
        for specialist in &plan.specialists {
            let latest = self
                .completions
                .get(specialist)
                .and_then(|rounds| rounds.range(..=round).next_back());
            match latest {
                Some((&answered, completed)) => {
                    tokens += completed.tokens;
                    findings.extend(self.findings_of(specialist, answered).into_iter().map(
                        |finding| AttributedFinding {
                            specialist: specialist.clone(),
                            finding: finding.clone(),
                        },
                    ));
                    sections.push(SpecialistSection {
                        specialist: specialist.clone(),
                        round: Some(answered),
                        findings: completed.findings,
                        raw_output: completed.raw_output.clone(),
                        provenance: Some(completed.provenance.clone()),
                    });
                }
                None => sections.push(SpecialistSection {
                    specialist: specialist.clone(),
                    round: None,
                    findings: 0,
                    raw_output: String::new(),
                    provenance: None,
                }),
            }
        }
        findings.sort_by(|a, b| {
            b.finding
                .severity
                .cmp(&a.finding.severity)
                .then_with(|| a.finding.file.cmp(&b.finding.file))
                .then_with(|| a.finding.line.cmp(&b.finding.line))
                .then_with(|| a.finding.rule.cmp(&b.finding.rule))
        });
        missing.sort();
        let mut counts = BTreeMap::new();
        for attributed in &findings {
            *counts.entry(attributed.finding.severity).or_insert(0) += 1;
        }
        let blocking = findings
            .iter()
            .filter(|f| f.finding.severity.is_blocking())
            .count();
        let verdict = if blocking > 0 {
            Verdict::ChangesRequested
        } else if findings.is_empty() {
            Verdict::Clean
        } else {
            Verdict::Comments
        };
        let summary = summarize(&sections, &findings, blocking, &missing);
        Report {
            repository: plan.repository.clone(),
            title: plan.title.clone(),
            author: plan.author.clone(),
            url: plan.url.clone(),
            round,
            verdict,
            summary,
            counts,
            findings,
            specialists: sections,
            skipped: plan.skipped.clone(),
            missing,
            tokens,
        }
    }
}

/// One paragraph: who found what, how much of it blocks, who is missing.
fn summarize(
    sections: &[SpecialistSection],
    findings: &[AttributedFinding],
    blocking: usize,
    missing: &[String],
) -> String {
    if sections.is_empty() {
        return "No specialist applied to this change.".to_string();
    }
    let per_specialist: Vec<String> = sections
        .iter()
        .filter(|s| s.round.is_some())
        .map(|section| {
            let theirs: Vec<&Finding> = findings
                .iter()
                .filter(|f| f.specialist == section.specialist)
                .map(|f| &f.finding)
                .collect();
            match theirs.iter().map(|f| f.severity).max() {
                None => format!("{}: nothing", section.specialist),
                Some(worst) => format!(
                    "{}: {} (worst {})",
                    section.specialist,
                    plural(theirs.len(), "finding"),
                    worst
                ),
            }
        })
        .collect();
    let mut summary = format!("{}.", per_specialist.join("; "));
    if blocking > 0 {
        summary.push_str(&format!(
            " {} must be fixed before merging ({} or worse).",
            plural(blocking, "finding"),
            Severity::High
        ));
    } else if findings.is_empty() {
        summary.push_str(" Nothing to fix.");
    } else {
        summary.push_str(" Nothing blocks merging.");
    }
    if !missing.is_empty() {
        summary.push_str(&format!(
            " No answer from {} before the deadline.",
            missing.join(", ")
        ));
    }
    summary
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
