//! What a specialist reports: a finding at a place in the change.

use serde::{Deserialize, Serialize};

/// How much a finding matters. `High` and `Critical` block a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn is_blocking(self) -> bool {
        self >= Severity::High
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding: where, how bad, which rule, what is wrong and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub file: String,
    /// The line in the changed file (new side), 0 for the whole file.
    pub line: u32,
    pub severity: Severity,
    /// A short stable name (`hardcoded-secret`), so findings can be counted and filtered.
    pub rule: String,
    pub message: String,
    /// A concrete change that fixes it; `None` when the specialist has none.
    #[serde(default)]
    pub suggestion: Option<String>,
}

/// Suggestions shorter than this say nothing concrete ("fix it").
const CONCRETE_SUGGESTION_CHARS: usize = 12;

impl Finding {
    /// A finding on an added line, with a suggestion: what the rules produce.
    pub fn on_line(
        file: &crate::diff::FileChange,
        line: &crate::diff::Line,
        severity: Severity,
        rule: &str,
        message: String,
        suggestion: String,
    ) -> Finding {
        Finding {
            file: file.path.clone(),
            line: line.number,
            severity,
            rule: rule.to_string(),
            message,
            suggestion: Some(suggestion),
        }
    }

    /// Whether the finding says concretely what to change.
    pub fn has_concrete_suggestion(&self) -> bool {
        self.suggestion
            .as_deref()
            .is_some_and(|s| s.trim().chars().count() >= CONCRETE_SUGGESTION_CHARS)
    }
}
