//! The review report: a synthesized summary on top, every specialist's raw output verbatim
//! beneath it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::events::{Provenance, Skipped};
use crate::finding::{Finding, Severity};

/// The aggregator's report for one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub repository: String,
    pub title: String,
    pub author: String,
    pub url: String,
    pub round: u32,
    pub verdict: Verdict,
    /// One paragraph saying what was found.
    pub summary: String,
    /// Findings per severity.
    pub counts: BTreeMap<Severity, usize>,
    /// Every finding, most severe first.
    pub findings: Vec<AttributedFinding>,
    /// One section per planned specialist, in plan order.
    pub specialists: Vec<SpecialistSection>,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Planned specialists that had not answered when the deadline passed.
    #[serde(default)]
    pub missing: Vec<String>,
    /// LLM tokens the specialists reported.
    #[serde(default)]
    pub tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A blocking finding (high or critical).
    ChangesRequested,
    /// Findings, none blocking.
    Comments,
    /// Nothing found.
    Clean,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::ChangesRequested => "changes requested",
            Verdict::Comments => "comments",
            Verdict::Clean => "clean",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributedFinding {
    pub specialist: String,
    #[serde(flatten)]
    pub finding: Finding,
}

/// A specialist's part of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialistSection {
    pub specialist: String,
    /// The round of the output used; `None` if it never answered.
    pub round: Option<u32>,
    pub findings: usize,
    /// Its brain's output, verbatim.
    pub raw_output: String,
    pub provenance: Option<Provenance>,
}

impl Report {
    /// Findings that block the change.
    pub fn blocking(&self) -> impl Iterator<Item = &AttributedFinding> {
        self.findings
            .iter()
            .filter(|f| f.finding.severity.is_blocking())
    }

    /// The report as Markdown: title, verdict and summary, the findings table, then each
    /// specialist's raw output in a fenced block.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let title = if self.title.is_empty() {
            "Code review".to_string()
        } else {
            format!("Code review: {}", self.title)
        };
        let _ = writeln!(out, "## {title}\n");
        if !self.repository.is_empty() || !self.url.is_empty() {
            let _ = writeln!(out, "{} {}\n", self.repository, self.url);
        }
        let _ = writeln!(
            out,
            "**Verdict: {}** (round {})\n\n{}\n",
            self.verdict.as_str(),
            self.round,
            self.summary
        );
        if !self.findings.is_empty() {
            let _ = writeln!(
                out,
                "| severity | where | rule | finding | suggestion |\n|---|---|---|---|---|"
            );
            for AttributedFinding {
                specialist,
                finding,
            } in &self.findings
            {
                let _ = writeln!(
                    out,
                    "| {} | `{}:{}` | {}/{} | {} | {} |",
                    finding.severity,
                    finding.file,
                    finding.line,
                    specialist,
                    finding.rule,
                    table_cell(&finding.message),
                    table_cell(finding.suggestion.as_deref().unwrap_or("")),
                );
            }
            out.push('\n');
        }
        for skipped in &self.skipped {
            let _ = writeln!(
                out,
                "- {} not asked: {}",
                skipped.specialist, skipped.reason
            );
        }
        for missing in &self.missing {
            let _ = writeln!(out, "- {missing} did not answer before the deadline");
        }
        out.push_str("\n### What each specialist said\n");
        for section in &self.specialists {
            let made_by = match &section.provenance {
                Some(Provenance::Rules { version }) => format!("rules {version}"),
                Some(Provenance::Llm {
                    model,
                    prompt_version,
                    ..
                }) => format!("{model}, prompt {prompt_version}"),
                None => "no answer".to_string(),
            };
            let _ = writeln!(out, "\n#### {} ({made_by})\n", section.specialist);
            let fence = fence_for(&section.raw_output);
            let _ = writeln!(out, "{fence}\n{}\n{fence}", section.raw_output);
        }
        out
    }
}

fn table_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A fence longer than any backtick run in `text`, so raw output is kept verbatim.
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}
