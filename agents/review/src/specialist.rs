//! The specialists' shared handler: a [`Specialty`] reacting to `review.planned` when triage
//! named it, and to `review.revision.requested` addressed to it.
//!
//! It publishes one `review.finding` per finding, then `review.specialist.completed` with the
//! count, the brain's raw output, what produced it (rules version, or model, prompt version
//! and raw response) and the tokens spent, which the runtime charges to the run's budget.

use std::process::ExitCode;

use choreo_bus::{Agent, Emit, Handler, HandlerError, Incoming, ValidationError};

use crate::brain::{Brain, Revision, Specialty, Task};
use crate::diff::Diff;
use crate::events::{
    FINDING, FindingReported, PLANNED, REVISION_REQUESTED, ReviewPlanned, RevisionRequested,
    SPECIALIST_COMPLETED, SpecialistCompleted,
};
use crate::llm::{LlmBrain, LlmSettings};
use crate::{emit_json, unexpected_type};

/// The declaration every specialist shares but for its name.
pub fn agent<S: Specialty>() -> Result<Agent, ValidationError> {
    Agent::builder(S::NAME)
        .subscribes(PLANNED)
        .subscribes(REVISION_REQUESTED)
        .emits(FINDING)
        .emits(SPECIALIST_COMPLETED)
        .build()
}

/// The whole `main` of a specialist: its LLM settings decide its brain (the rules unless
/// `CHOREO_LLM_URL` is set). `about` opens its `--help`.
pub async fn serve<S: Specialty>(rules: S, about: &str) -> ExitCode {
    choreo_bus::serve::serve_with(
        agent::<S>(),
        about,
        |llm: LlmSettings, context| async move {
            let brain = match LlmBrain::from_settings(&llm, context.handler_timeout)? {
                Some(model) => Brain::Llm(Box::new(model)),
                None => Brain::Rules(rules),
            };
            Ok(Specialist::new(brain))
        },
    )
    .await
}

/// A specialist's handler.
#[derive(Debug)]
pub struct Specialist<S> {
    brain: Brain<S>,
}

impl<S: Specialty> Specialist<S> {
    pub fn new(brain: Brain<S>) -> Self {
        Specialist { brain }
    }
}

impl<S: Specialty> Handler for Specialist<S> {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        // Whichever event it is owns the request; the task borrows it from there.
        let (planned, revision);
        let (request, round, revised) = match event.r#type.as_str() {
            PLANNED => {
                planned = event.json::<ReviewPlanned>()?;
                if !planned.specialists.iter().any(|name| name == S::NAME) {
                    return Ok(Vec::new());
                }
                (&planned.request, 1, None)
            }
            REVISION_REQUESTED => {
                revision = event.json::<RevisionRequested>()?;
                if revision.specialist != S::NAME {
                    return Ok(Vec::new());
                }
                let asked = Revision {
                    reason: &revision.reason,
                    findings: &revision.findings,
                };
                (&revision.request, revision.round, Some(asked))
            }
            other => return Err(unexpected_type(other)),
        };
        let diff = Diff::parse(&request.diff).map_err(HandlerError::permanent)?;
        let task = Task {
            request,
            diff: &diff,
            revision: revised,
            budget: event.budget.as_ref(),
            spend: &event.spend,
        };
        let review = self.brain.review(&task).await?;
        let mut emits = Vec::with_capacity(review.findings.len() + 1);
        for finding in &review.findings {
            emits.push(emit_json(
                FINDING,
                &FindingReported {
                    specialist: S::NAME.to_string(),
                    round,
                    finding: finding.clone(),
                },
            )?);
        }
        let completed = SpecialistCompleted {
            specialist: S::NAME.to_string(),
            round,
            findings: review.findings.len(),
            raw_output: review.raw_output,
            provenance: review.provenance,
            tokens: review.tokens,
        };
        emits.push(emit_json(SPECIALIST_COMPLETED, &completed)?.tokens_used(review.tokens));
        Ok(emits)
    }

    fn breakers(&self) -> Vec<choreo_bus::guard::CircuitBreaker> {
        self.brain.breaker().cloned().into_iter().collect()
    }

    fn describe(&self) -> Vec<(String, String)> {
        self.brain.describe()
    }
}
