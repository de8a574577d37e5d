//! A specialist's brain: what turns a change into findings.
//!
//! Each specialist has a [`Specialty`]: its name, deterministic rules that work offline, and
//! what to ask a model to look for. [`Brain`] runs either the rules (the default) or a
//! chat-completions model ([`LlmBrain`](crate::llm::LlmBrain)) with that focus.

use crate::diff::Diff;
use crate::events::{Provenance, ReviewRequested};
use crate::finding::Finding;
use crate::llm::{LlmBrain, LlmError};

/// One reviewer's trade.
pub trait Specialty: Send + Sync + 'static {
    /// The specialist's name, as triage plans it and the agent is named.
    const NAME: &'static str;
    /// Changes whenever the rules' output may change, so a replay can tell.
    const RULES_VERSION: &'static str;
    /// What a model should look for, in a sentence or two.
    const FOCUS: &'static str;

    /// The deterministic review of a change.
    fn review(&self, diff: &Diff) -> Vec<Finding>;
}

/// The work given to a brain: the change, and for a revision what the editor asked for.
#[derive(Debug, Clone)]
pub struct Task<'a> {
    pub request: &'a ReviewRequested,
    pub diff: &'a Diff,
    /// `None` in the first round.
    pub revision: Option<Revision<'a>>,
    /// The run's budget, if the agent has one: a model call is not made when it cannot fit.
    pub budget: Option<&'a choreo_bus::guard::RunBudget>,
    /// The handling's meter: every model call is recorded on it.
    pub spend: &'a choreo_bus::handling::SpendMeter,
}

/// What the editor sent back.
#[derive(Debug, Clone, Copy)]
pub struct Revision<'a> {
    pub reason: &'a str,
    pub findings: &'a [Finding],
}

/// A brain's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub findings: Vec<Finding>,
    /// The brain's output, verbatim (the rules' findings as JSON, or the model's message).
    pub raw_output: String,
    pub provenance: Provenance,
    /// LLM tokens spent (0 for the rules).
    pub tokens: u64,
}

/// The rules, or a model.
#[derive(Debug)]
pub enum Brain<S> {
    Rules(S),
    /// Boxed: a brain is made once per process, and its client, settings and metrics would
    /// make every `Brain` as large.
    Llm(Box<LlmBrain>),
}

impl<S: Specialty> Brain<S> {
    pub async fn review(&self, task: &Task<'_>) -> Result<Review, LlmError> {
        match self {
            Brain::Rules(rules) => Ok(rules_review(rules, task)),
            Brain::Llm(llm) => llm.review(S::NAME, S::FOCUS, task).await,
        }
    }

    /// The breaker around the model's endpoint, if any.
    pub fn breaker(&self) -> Option<&choreo_bus::guard::CircuitBreaker> {
        match self {
            Brain::Rules(_) => None,
            Brain::Llm(llm) => Some(llm.breaker()),
        }
    }

    /// The brain and, for a model, its name: for the copy's Services API metadata.
    pub fn describe(&self) -> Vec<(String, String)> {
        match self {
            Brain::Rules(_) => vec![("brain".to_string(), "rules".to_string())],
            Brain::Llm(llm) => vec![
                ("brain".to_string(), "llm".to_string()),
                ("model".to_string(), llm.model().to_string()),
            ],
        }
    }
}

/// The rules are deterministic, so a revision gives the same findings: they already carry the
/// concrete suggestions the rules can make.
fn rules_review<S: Specialty>(rules: &S, task: &Task<'_>) -> Review {
    let mut findings = rules.review(task.diff);
    findings.sort_by(|a, b| {
        (a.file.as_str(), a.line, &a.rule).cmp(&(b.file.as_str(), b.line, &b.rule))
    });
    let raw_output = serde_json::to_string_pretty(&serde_json::json!({ "findings": findings }))
        .unwrap_or_default();
    Review {
        findings,
        raw_output,
        provenance: Provenance::Rules {
            version: S::RULES_VERSION.to_string(),
        },
        tokens: 0,
    }
}
