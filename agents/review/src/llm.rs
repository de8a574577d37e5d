//! The LLM brain: any OpenAI-compatible chat-completions endpoint, over reqwest.
//!
//! One review is one chat call (`POST {url}/chat/completions`) asking for a JSON object of
//! findings. Inside a handling it retries what may pass on a second try: a 429 after its
//! `Retry-After` (at most 30 s), a 5xx, a timeout or a refused connection after a backoff, an
//! answer that is not the JSON asked for; up to `attempts` calls. Those failures also count
//! against a circuit breaker named `llm`: while it is open no call is made and the event waits
//! in the stream. A 4xx other than 429 is the request's fault (a wrong model name, a bad key)
//! and is not retried. Every answer's token usage is added up and reported with the result,
//! so the runtime charges it to the run's token budget; the model, the prompt version and the
//! raw response are recorded with it.

use std::time::Duration;

use choreo_bus::ValidationError;
use choreo_bus::guard::{BreakerConfig, CircuitBreaker, Permit};
use choreo_bus::handling::SpendMeter;
use choreo_bus::settings::HumanDuration;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::Instrument as _;

use crate::brain::{Review, Task};
use crate::events::Provenance;
use crate::finding::{Finding, Severity};

/// Changes whenever the prompt's wording does, so a replay can tell a changed prompt.
pub const PROMPT_VERSION: &str = "review-prompt-v1";
/// The longest `Retry-After` honoured inside one handling; longer waits go back to the stream.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How long a review waits when the run's budget cannot be read (NATS electing a leader).
const BUDGET_UNREADABLE_WAIT: Duration = Duration::from_secs(2);
/// The first backoff after a 5xx or a network failure; doubled per attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The LLM settings every specialist takes. With no URL the specialist uses its rules.
#[derive(Debug, Clone, clap::Args)]
pub struct LlmSettings {
    /// Base URL of an OpenAI-compatible API (e.g. https://api.openai.com/v1); unset means the
    /// deterministic rules.
    #[arg(long, env = "CHOREO_LLM_URL")]
    pub llm_url: Option<String>,
    /// The model to ask.
    #[arg(long, env = "CHOREO_LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,
    /// Bearer key for the endpoint.
    #[arg(long, env = "CHOREO_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<SecretString>,
    /// Time allowed for one call.
    #[arg(long, env = "CHOREO_LLM_TIMEOUT", default_value = "60s")]
    pub llm_timeout: HumanDuration,
    /// Calls per review before the event is handed back for a later redelivery.
    #[arg(long, env = "CHOREO_LLM_ATTEMPTS", default_value_t = 4)]
    pub llm_attempts: u32,
    /// The most tokens one answer may use (the request's `max_tokens`). No call is made when the
    /// run has fewer tokens left than this: the review is dead-lettered `budget_exhausted`.
    #[arg(long, env = "CHOREO_LLM_MAX_TOKENS", default_value_t = 4096)]
    pub llm_max_tokens: u64,
    /// The model's price per million tokens, input/output (e.g. 0.15/0.60), in any one
    /// currency: each call's cost is counted in the metrics. Unset: tokens only.
    #[arg(long, env = "CHOREO_LLM_PRICE", value_parser = Price::parse)]
    pub llm_price: Option<Price>,
}

/// A model's price per million tokens, for the prompt (input) and the answer (output).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// `IN/OUT` per million tokens, each a non-negative number.
    pub fn parse(text: &str) -> Result<Price, String> {
        let number = |part: &str| {
            part.trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
        };
        match text.split_once('/') {
            Some((input, output)) => match (number(input), number(output)) {
                (Some(input_per_million), Some(output_per_million)) => Ok(Price {
                    input_per_million,
                    output_per_million,
                }),
                _ => Err(format!(
                    "{text:?}: give the price per million tokens as INPUT/OUTPUT, two \
                     non-negative numbers, e.g. 0.15/0.60"
                )),
            },
            None => Err(format!(
                "{text:?}: give the price per million tokens as INPUT/OUTPUT, e.g. 0.15/0.60"
            )),
        }
    }

    /// What `input` prompt tokens and `output` answer tokens cost.
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input_per_million + output as f64 * self.output_per_million) / 1e6
    }
}

/// Why a model gave no usable review.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The breaker is open: the endpoint failed recently. Wait, do not call.
    #[error(transparent)]
    Unavailable(#[from] choreo_bus::guard::BreakerOpen),
    /// Every attempt failed in a way that may pass later.
    #[error("the LLM endpoint failed {attempts} times; last: {last}")]
    Failed { attempts: u32, last: String },
    /// The run has fewer tokens left than one answer may use: no call was made.
    #[error(
        "run {correlation} has {left} tokens left, fewer than one answer may use \
         ({max_tokens}, CHOREO_LLM_MAX_TOKENS); the model was not called (raise --max-tokens \
         if the run is meant to spend more)"
    )]
    OverBudget {
        correlation: String,
        left: u64,
        max_tokens: u64,
    },
    /// The run has less of its cost budget left than one answer may cost: no call was made.
    #[error(
        "run {correlation} has {left:.6} of its cost budget left, less than one answer may cost \
         ({one_answer:.6}: CHOREO_LLM_MAX_TOKENS at the output price of CHOREO_LLM_PRICE); the \
         model was not called (raise --max-cost if the run is meant to spend more)"
    )]
    OverCostBudget {
        correlation: String,
        left: f64,
        one_answer: f64,
    },
    /// The run's budget could not be read, so spending cannot be checked yet.
    #[error(transparent)]
    BudgetUnavailable(#[from] choreo_bus::guard::BudgetError),
    /// The endpoint refused the request itself; retrying the same request cannot help.
    #[error(
        "the LLM endpoint refused the request with {status}: {body} \
         (check CHOREO_LLM_URL, CHOREO_LLM_MODEL and CHOREO_LLM_API_KEY)"
    )]
    Rejected { status: u16, body: String },
}

impl From<LlmError> for choreo_bus::HandlerError {
    fn from(err: LlmError) -> Self {
        match err {
            LlmError::Unavailable(open) => open.into(),
            err @ LlmError::Failed { .. } => choreo_bus::HandlerError::retryable(err),
            err @ LlmError::Rejected { .. } => choreo_bus::HandlerError::permanent(err),
            err @ (LlmError::OverBudget { .. } | LlmError::OverCostBudget { .. }) => {
                choreo_bus::HandlerError::OverBudget(err.to_string())
            }
            err @ LlmError::BudgetUnavailable(_) => {
                choreo_bus::HandlerError::unavailable(err, BUDGET_UNREADABLE_WAIT)
            }
        }
    }
}

/// A chat-completions client with retries and a breaker.
#[derive(Debug, Clone)]
pub struct LlmBrain {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<SecretString>,
    attempts: u32,
    max_tokens: u64,
    breaker: CircuitBreaker,
    price: Option<Price>,
}

impl LlmBrain {
    /// Records one call's outcome and the tokens billed for it on the handling's meter (which
    /// counts it in the process's metrics too).
    fn count(&self, spend: &SpendMeter, outcome: &'static str, usage: Option<&Usage>) {
        let (input, output) = usage.map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens));
        let cost = self.price.map(|price| price.cost(input, output));
        spend.model_call(&self.model, outcome, input, output, cost);
    }

    /// A brain for `settings`, or `None` when no URL is set. Its calls, and the waits between
    /// them, must fit in `handler_timeout` (the runtime cancels a handling past it): settings
    /// that do not are refused, naming all three.
    pub fn from_settings(
        settings: &LlmSettings,
        handler_timeout: Duration,
    ) -> Result<Option<LlmBrain>, ValidationError> {
        let Some(url) = &settings.llm_url else {
            return Ok(None);
        };
        let base = reqwest::Url::parse(url).map_err(|err| {
            ValidationError::new("llm-url", format!("{url:?} is not a URL: {err}"))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ValidationError::new(
                "llm-url",
                "must be http:// or https://",
            ));
        }
        if settings.llm_attempts == 0 {
            return Err(ValidationError::new("llm-attempts", "must be at least 1"));
        }
        if settings.llm_max_tokens == 0 {
            return Err(ValidationError::new("llm-max-tokens", "must be at least 1"));
        }
        let longest = longest_review(settings.llm_timeout.0, settings.llm_attempts);
        if longest > handler_timeout {
            return Err(ValidationError::new(
                "llm-timeout",
                format!(
                    "{} attempts of up to {} each, with up to {} between them, take up to {}, \
                     longer than the handler timeout of {}: the runtime would cancel the \
                     review mid-call; lower CHOREO_LLM_TIMEOUT or CHOREO_LLM_ATTEMPTS, or \
                     raise CHOREO_HANDLER_TIMEOUT",
                    settings.llm_attempts,
                    humantime::format_duration(settings.llm_timeout.0),
                    humantime::format_duration(MAX_RETRY_AFTER),
                    humantime::format_duration(longest),
                    humantime::format_duration(handler_timeout),
                ),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(settings.llm_timeout.0)
            .build()
            .map_err(|err| ValidationError::new("llm-url", err.to_string()))?;
        let breaker = CircuitBreaker::new(
            "llm",
            BreakerConfig {
                min_calls: 5,
                ..BreakerConfig::default()
            },
        )?;
        Ok(Some(LlmBrain {
            http,
            endpoint: format!("{}/chat/completions", url.trim_end_matches('/')),
            model: settings.llm_model.clone(),
            api_key: settings.llm_api_key.clone(),
            attempts: settings.llm_attempts,
            max_tokens: settings.llm_max_tokens,
            breaker,
            price: settings.llm_price,
        }))
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The model it asks (`CHOREO_LLM_MODEL`).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Asks the model for `specialist`'s review of the task.
    pub async fn review(
        &self,
        specialist: &str,
        focus: &str,
        task: &Task<'_>,
    ) -> Result<Review, LlmError> {
        if let Some(budget) = task.budget
            && let Some(left) = budget.tokens_left().await?
            && left < self.max_tokens
        {
            return Err(LlmError::OverBudget {
                correlation: budget.correlation().to_string(),
                left,
                max_tokens: self.max_tokens,
            });
        }
        if let Some(budget) = task.budget
            && let Some(price) = self.price
            && let Some(left) = budget.cost_left_micros().await?
        {
            let one_answer = price.cost(0, self.max_tokens);
            if (left as f64) / 1e6 < one_answer {
                return Err(LlmError::OverCostBudget {
                    correlation: budget.correlation().to_string(),
                    left: left as f64 / 1e6,
                    one_answer,
                });
            }
        }
        let request = serde_json::json!({
            "model": self.model,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "messages": [
                { "role": "system", "content": system_prompt(specialist, focus) },
                { "role": "user", "content": user_prompt(task) },
            ],
        });
        let mut tokens = Tokens::default();
        let mut last_failure = String::new();
        for attempt in 1..=self.attempts {
            let permit = self.breaker.try_acquire()?;
            tokens.calls += 1;
            let span = tracing::info_span!(
                "chat",
                otel.name = %format!("chat {}", self.model),
                otel.kind = "client",
                gen_ai.operation.name = "chat",
                gen_ai.provider.name = "openai",
                gen_ai.request.model = %self.model,
                gen_ai.request.max_tokens = self.max_tokens,
                gen_ai.response.model = tracing::field::Empty,
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
                server.address = %self.endpoint,
                attempt,
            );
            let called = self
                .call(&request, permit, &mut tokens, task.spend)
                .instrument(span)
                .await;
            let wait = match called {
                Ok(answer) => return Ok(answer.into_review(tokens)),
                Err(Attempt::Refused { status, body }) => {
                    return Err(LlmError::Rejected { status, body });
                }
                Err(Attempt::Again { failure, wait }) => {
                    tracing::warn!(attempt, "LLM call failed: {failure}");
                    last_failure = failure;
                    wait.unwrap_or(FIRST_BACKOFF * 2u32.saturating_pow(attempt - 1))
                }
            };
            if attempt < self.attempts {
                tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
            }
        }
        // The calls were paid for although they gave no review: the run's budget says so.
        if tokens.total > 0
            && let Some(budget) = task.budget
            && let Err(err) = budget.charge_spent_tokens(tokens.total).await
        {
            tracing::warn!(
                tokens = tokens.total,
                "could not charge the tokens of failed calls: {err}"
            );
        }
        Err(LlmError::Failed {
            attempts: self.attempts,
            last: last_failure,
        })
    }

    /// One call. Its outcome is recorded with the breaker: server errors, rate limits, network
    /// failures and unusable answers count as failures; a refused request does not.
    async fn call(
        &self,
        request: &serde_json::Value,
        permit: Permit,
        tokens: &mut Tokens,
        spend: &SpendMeter,
    ) -> Result<Answer, Attempt> {
        let mut call = self.http.post(&self.endpoint).json(request);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose_secret());
        }
        let response = match call.send().await {
            Ok(response) => response,
            Err(err) => {
                permit.failure();
                self.count(spend, "failed", None);
                return Err(Attempt::again(format!("{}: {err}", self.endpoint), None));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match response.text().await {
            Ok(body) => body,
            Err(err) => {
                permit.failure();
                self.count(spend, "failed", None);
                return Err(Attempt::again(format!("reading the answer: {err}"), None));
            }
        };
        if status.as_u16() == 429 {
            permit.failure();
            self.count(spend, "rate_limited", None);
            return Err(Attempt::again(
                "429 Too Many Requests".to_string(),
                Some(retry_after.unwrap_or(Duration::from_secs(1))),
            ));
        }
        if status.is_server_error() {
            permit.failure();
            self.count(spend, "server_error", None);
            return Err(Attempt::again(format!("{status}: {}", clip(&body)), None));
        }
        if !status.is_success() {
            permit.ignore();
            self.count(spend, "refused", None);
            return Err(Attempt::Refused {
                status: status.as_u16(),
                body: clip(&body),
            });
        }
        let parsed: ChatResponse = match serde_json::from_str(&body) {
            Ok(parsed) => parsed,
            Err(err) => {
                permit.failure();
                self.count(spend, "failed", None);
                return Err(Attempt::again(
                    format!("not a chat completion: {err}"),
                    None,
                ));
            }
        };
        tokens.add(&parsed.usage);
        // The GenAI attributes of this call's span (`chat`, opened by `review`).
        let span = tracing::Span::current();
        if let Some(usage) = &parsed.usage {
            span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
            span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
        }
        if let Some(model) = &parsed.model {
            span.record("gen_ai.response.model", model.as_str());
        }
        let content = parsed
            .choices
            .into_iter()
            .next()
            .map(|choice| choice.message.content)
            .unwrap_or_default();
        match parse_findings(&content) {
            Ok(findings) => {
                permit.success();
                self.count(spend, "ok", parsed.usage.as_ref());
                Ok(Answer {
                    findings,
                    content,
                    model: parsed.model.unwrap_or_else(|| self.model.clone()),
                    endpoint: self.endpoint.clone(),
                    body,
                })
            }
            Err(err) => {
                permit.failure();
                self.count(spend, "unusable", parsed.usage.as_ref());
                Err(Attempt::again(
                    format!("the answer is not the JSON asked for: {err}"),
                    None,
                ))
            }
        }
    }
}

/// The longest one review may take: every attempt timing out, and the longest wait between
/// them.
fn longest_review(timeout: Duration, attempts: u32) -> Duration {
    timeout.saturating_mul(attempts) + MAX_RETRY_AFTER.saturating_mul(attempts.saturating_sub(1))
}

/// How one call failed.
enum Attempt {
    /// May pass on another call, after `wait` if the endpoint said so.
    Again {
        failure: String,
        wait: Option<Duration>,
    },
    /// Will not pass.
    Refused { status: u16, body: String },
}

impl Attempt {
    fn again(failure: String, wait: Option<Duration>) -> Self {
        Attempt::Again { failure, wait }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tokens {
    prompt: u64,
    completion: u64,
    total: u64,
    calls: u32,
}

impl Tokens {
    fn add(&mut self, usage: &Option<Usage>) {
        if let Some(usage) = usage {
            self.prompt += usage.prompt_tokens;
            self.completion += usage.completion_tokens;
            self.total += usage
                .total_tokens
                .max(usage.prompt_tokens + usage.completion_tokens);
        }
    }
}

struct Answer {
    findings: Vec<Finding>,
    content: String,
    model: String,
    endpoint: String,
    body: String,
}

impl Answer {
    fn into_review(self, tokens: Tokens) -> Review {
        Review {
            findings: self.findings,
            raw_output: self.content,
            provenance: Provenance::Llm {
                endpoint: self.endpoint,
                model: self.model,
                prompt_version: PROMPT_VERSION.to_string(),
                raw_response: self.body,
                prompt_tokens: tokens.prompt,
                completion_tokens: tokens.completion,
                calls: tokens.calls,
            },
            tokens: tokens.total,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    content: String,
}

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

/// A finding as a model writes it: anything but the message may be missing.
#[derive(Debug, Deserialize)]
struct ModelFinding {
    #[serde(default)]
    file: String,
    #[serde(default)]
    line: u32,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    rule: Option<String>,
    message: String,
    #[serde(default)]
    suggestion: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ModelAnswer {
    findings: Vec<ModelFinding>,
}

/// The findings in a model's message: the JSON object in it, with or without a code fence
/// around it.
fn parse_findings(content: &str) -> Result<Vec<Finding>, serde_json::Error> {
    let json = match (content.find('{'), content.rfind('}')) {
        (Some(start), Some(end)) if start < end => &content[start..=end],
        _ => content,
    };
    let answer: ModelAnswer = serde_json::from_str(json)?;
    Ok(answer
        .findings
        .into_iter()
        .map(|f| Finding {
            file: f.file,
            line: f.line,
            severity: f
                .severity
                .and_then(|s| {
                    serde_json::from_value(serde_json::Value::String(s.to_lowercase())).ok()
                })
                .unwrap_or(Severity::Medium),
            rule: f
                .rule
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| "llm".to_string()),
            message: f.message,
            suggestion: f.suggestion.filter(|s| !s.trim().is_empty()),
        })
        .collect())
}

fn system_prompt(specialist: &str, focus: &str) -> String {
    format!(
        "You are the {specialist} reviewer in a code review team. {focus}\n\
         Review only the lines the change adds. Answer with one JSON object and nothing else:\n\
         {{\"findings\": [{{\"file\": \"path\", \"line\": 12, \"severity\": \
         \"info|low|medium|high|critical\", \"rule\": \"short-kebab-name\", \"message\": \
         \"what is wrong\", \"suggestion\": \"the code or change to make instead\"}}]}}\n\
         An empty list is a good answer when nothing is wrong."
    )
}

fn user_prompt(task: &Task<'_>) -> String {
    let request = task.request;
    let mut prompt = format!(
        "Repository: {}\nTitle: {}\nAuthor: {}\n\n```diff\n{}\n```\n",
        request.repository, request.title, request.author, request.diff
    );
    if let Some(revision) = &task.revision {
        prompt.push_str(&format!(
            "\nThe editor sent your review back: {}\nThese findings need it:\n{}\n\
             Answer with your complete list of findings again, each with a concrete suggestion.\n",
            revision.reason,
            serde_json::to_string_pretty(revision.findings).unwrap_or_default()
        ));
    }
    prompt
}

/// At most 500 characters of an error body, for messages.
fn clip(body: &str) -> String {
    let mut clipped: String = body.chars().take(500).collect();
    if clipped.len() < body.len() {
        clipped.push('…');
    }
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_are_read_from_a_fenced_answer_and_filled_in() {
        let content = "Here you go:\n```json\n{\"findings\": [{\"file\": \"a.py\", \"line\": 3, \
                       \"severity\": \"HIGH\", \"message\": \"eval of input\", \
                       \"suggestion\": \"\"}, {\"message\": \"vague\"}]}\n```";
        let findings = parse_findings(content).expect("parses");
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0].severity, Severity::High);
        assert_eq!(findings[0].rule, "llm");
        assert_eq!(findings[0].suggestion, None, "an empty suggestion is none");
        assert_eq!(findings[1].severity, Severity::Medium);
        assert!(parse_findings("no json here").is_err());
    }

    #[test]
    fn a_price_is_two_numbers_per_million_tokens() {
        let price = Price::parse("0.15/0.60").expect("valid");
        assert_eq!(price.cost(1_000_000, 0), 0.15);
        assert!((price.cost(100, 50) - (100.0 * 0.15 + 50.0 * 0.60) / 1e6).abs() < 1e-15);
        for bad in ["0.15", "a/b", "-1/2", "1/", "inf/1"] {
            let err = Price::parse(bad).expect_err(bad);
            assert!(err.contains("INPUT/OUTPUT"), "{bad}: {err}");
        }
    }

    #[test]
    fn settings_are_checked_and_the_key_is_hidden() {
        let settings = LlmSettings {
            llm_url: Some("ftp://example".into()),
            llm_model: "m".into(),
            llm_api_key: Some("sk-secret".into()),
            llm_timeout: HumanDuration(Duration::from_secs(1)),
            llm_attempts: 2,
            llm_max_tokens: 100,
            llm_price: None,
        };
        let minute = Duration::from_secs(60);
        let err = LlmBrain::from_settings(&settings, minute).expect_err("ftp");
        assert_eq!(err.field, "llm-url");
        assert!(!format!("{settings:?}").contains("sk-secret"));
        let none = LlmSettings {
            llm_url: None,
            ..settings.clone()
        };
        assert!(
            LlmBrain::from_settings(&none, minute)
                .expect("valid")
                .is_none()
        );
        let brain = LlmBrain::from_settings(
            &LlmSettings {
                llm_url: Some("https://llm.example/v1".into()),
                ..settings
            },
            minute,
        )
        .expect("valid")
        .expect("a URL makes a brain");
        let shown = format!("{brain:?}");
        assert!(shown.contains("llm.example"), "{shown}");
        assert!(!shown.contains("sk-secret"), "{shown}");
    }

    #[test]
    fn calls_that_cannot_fit_in_the_handler_timeout_are_refused_naming_the_settings() {
        let settings = LlmSettings {
            llm_url: Some("https://llm.example/v1".into()),
            llm_model: "m".into(),
            llm_api_key: None,
            llm_timeout: HumanDuration(Duration::from_secs(60)),
            llm_attempts: 4,
            llm_max_tokens: 100,
            llm_price: None,
        };
        // 4 × 60 s and 3 waits of up to 30 s: 330 s.
        assert_eq!(
            longest_review(Duration::from_secs(60), 4),
            Duration::from_secs(330)
        );
        let defaults = Duration::from_secs(600);
        assert!(
            LlmBrain::from_settings(&settings, defaults).is_ok(),
            "the defaults fit"
        );
        let err =
            LlmBrain::from_settings(&settings, Duration::from_secs(300)).expect_err("too long");
        assert_eq!(err.field, "llm-timeout");
        for named in [
            "CHOREO_LLM_TIMEOUT",
            "CHOREO_LLM_ATTEMPTS",
            "CHOREO_HANDLER_TIMEOUT",
            "5m 30s",
        ] {
            assert!(err.reason.contains(named), "{err}");
        }
    }
}
