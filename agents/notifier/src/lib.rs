//! `notifier`: on `review.approved`, delivers the report. With a webhook URL it posts it there
//! (a GitHub-compatible comments endpoint takes the `body` field; any other receiver gets the
//! structured report beside it); without one it writes the report to a Markdown file. It emits
//! `review.delivered` saying where the report went.
//!
//! Posting is behind a circuit breaker named `webhook`: a refused connection, a timeout, a 429
//! or a 5xx counts as a failure and the event is retried with the runtime's backoff; once the
//! breaker opens, events wait in the stream (their attempts not spent) until it lets a probe
//! through, so reports queue up while the target is down and go out when it is back. A 4xx
//! other than 429 is our request's fault (wrong URL, bad token): dead-lettered with the answer.
//! Each post carries `Idempotency-Key: <event id>`: a redelivery after a post whose answer was
//! lost posts again, with the same key, for a receiver that deduplicates.

use std::path::PathBuf;

use choreo_bus::guard::{BreakerConfig, CircuitBreaker};
use choreo_bus::settings::HumanDuration;
use choreo_bus::{Agent, Emit, HandlerError, Incoming, ValidationError};
use choreo_review::events::{APPROVED, DELIVERED, ReviewApproved, ReviewDelivered};
use choreo_review::{Report, emit_json, outbound};
use secrecy::{ExposeSecret, SecretString};

pub fn agent() -> Result<Agent, ValidationError> {
    Agent::builder("notifier")
        .subscribes(APPROVED)
        .emits(DELIVERED)
        .build()
}

/// The notifier's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Where to POST approved reports. `{repository}` and `{number}` are replaced from the
    /// change (its repository, and the last number in its URL), e.g.
    /// https://api.github.com/repos/{repository}/issues/{number}/comments. Unset: write files.
    #[arg(long, env = "CHOREO_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Bearer token for the webhook (a GitHub token for the comments API).
    #[arg(long, env = "CHOREO_WEBHOOK_TOKEN", hide_env_values = true)]
    pub webhook_token: Option<SecretString>,
    /// Time allowed for one post.
    #[arg(long, env = "CHOREO_WEBHOOK_TIMEOUT", default_value = "10s")]
    pub webhook_timeout: HumanDuration,
    /// How long the webhook's breaker stays open once it opens.
    #[arg(long, env = "CHOREO_WEBHOOK_BREAKER_OPEN_FOR", default_value = "30s")]
    pub webhook_breaker_open_for: HumanDuration,
    /// Where reports are written when there is no webhook.
    #[arg(long, env = "CHOREO_REPORTS_DIR", default_value = ".choreo/reports")]
    pub reports_dir: PathBuf,
}

/// Where reports go.
#[derive(Debug, Clone)]
pub enum Target {
    Webhook(Webhook),
    Files(PathBuf),
}

/// A webhook behind its breaker.
#[derive(Debug, Clone)]
pub struct Webhook {
    http: reqwest::Client,
    url: String,
    token: Option<SecretString>,
    breaker: CircuitBreaker,
}

/// The notifier's handler.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Target,
}

impl Notifier {
    pub fn new(settings: &Settings) -> Result<Self, ValidationError> {
        let Some(url) = &settings.webhook_url else {
            return Ok(Notifier {
                target: Target::Files(settings.reports_dir.clone()),
            });
        };
        let probe = url.replace("{repository}", "o/r").replace("{number}", "1");
        let parsed = reqwest::Url::parse(&probe).map_err(|err| {
            ValidationError::new("webhook-url", format!("{url:?} is not a URL: {err}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ValidationError::new(
                "webhook-url",
                "must be http:// or https://",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(settings.webhook_timeout.0)
            .user_agent("choreo-notifier")
            .build()
            .map_err(|err| ValidationError::new("webhook-url", err.to_string()))?;
        let breaker = CircuitBreaker::new(
            "webhook",
            BreakerConfig {
                min_calls: 3,
                open_for: settings.webhook_breaker_open_for.0,
                ..BreakerConfig::default()
            },
        )?;
        Ok(Notifier {
            target: Target::Webhook(Webhook {
                http,
                url: url.clone(),
                token: settings.webhook_token.clone(),
                breaker,
            }),
        })
    }
}

impl choreo_bus::Handler for Notifier {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        let approved: ReviewApproved = event.json()?;
        let delivered = match &self.target {
            Target::Webhook(webhook) => webhook.post(event, &approved).await?,
            Target::Files(dir) => {
                write_report(dir, &event.correlation_id, &approved.report).await?
            }
        };
        Ok(vec![emit_json(DELIVERED, &delivered)?])
    }

    fn breakers(&self) -> Vec<CircuitBreaker> {
        match &self.target {
            Target::Webhook(webhook) => vec![webhook.breaker.clone()],
            Target::Files(_) => Vec::new(),
        }
    }
}

impl Webhook {
    async fn post(
        &self,
        event: &Incoming,
        approved: &ReviewApproved,
    ) -> Result<ReviewDelivered, HandlerError> {
        let url = target_url(&self.url, &approved.report);
        let body = serde_json::json!({
            "body": approved.report.markdown(),
            "choreo": {
                "correlation_id": event.correlation_id,
                "verdict": approved.report.verdict,
                "round": approved.report.round,
                "unresolved": approved.unresolved,
                "report": approved.report,
            },
        });
        let mut request = self
            .http
            .post(&url)
            .header("Idempotency-Key", &event.id)
            .json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        let response = outbound::send(
            &self.breaker,
            request,
            &url,
            "check CHOREO_WEBHOOK_URL and CHOREO_WEBHOOK_TOKEN",
        )
        .await?;
        Ok(ReviewDelivered {
            target: url,
            status: Some(response.status().as_u16()),
        })
    }
}

/// The webhook URL with `{repository}` and `{number}` filled in from the change.
pub fn target_url(template: &str, report: &Report) -> String {
    let number = report
        .url
        .rsplit('/')
        .find(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or("");
    template
        .replace("{repository}", &report.repository)
        .replace("{number}", number)
}

/// Writes the report as `<dir>/<correlation>.md`, whole or not at all (a temporary file
/// renamed into place).
async fn write_report(
    dir: &std::path::Path,
    correlation_id: &str,
    report: &Report,
) -> Result<ReviewDelivered, HandlerError> {
    let failed = |err: std::io::Error| {
        HandlerError::retryable(format!(
            "cannot write the report in {}: {err}",
            dir.display()
        ))
    };
    tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    let path = dir.join(format!("{correlation_id}.md"));
    let partial = dir.join(format!(".{correlation_id}.md.partial"));
    tokio::fs::write(&partial, report.markdown())
        .await
        .map_err(failed)?;
    tokio::fs::rename(&partial, &path).await.map_err(failed)?;
    Ok(ReviewDelivered {
        target: path.display().to_string(),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_bus::Handler as _;
    use choreo_review::testing;
    use std::time::Duration;

    fn report() -> Report {
        testing::clean_report()
    }

    fn settings(url: Option<&str>, dir: PathBuf) -> Settings {
        Settings {
            webhook_url: url.map(str::to_string),
            webhook_token: Some("ghp_secret".into()),
            webhook_timeout: HumanDuration(Duration::from_secs(1)),
            webhook_breaker_open_for: HumanDuration(Duration::from_secs(1)),
            reports_dir: dir,
        }
    }

    #[tokio::test]
    async fn with_no_webhook_the_report_is_written_to_a_file() {
        let dir = tempfile::tempdir().expect("dir");
        let notifier = Notifier::new(&settings(None, dir.path().into())).expect("valid");
        let event = testing::root(
            APPROVED,
            &ReviewApproved {
                report: report(),
                unresolved: vec![],
            },
        );
        let emitted = notifier.handle(&event).await.expect("writes");
        let delivered: ReviewDelivered = serde_json::from_slice(&emitted[0].data).expect("json");
        let written = std::fs::read_to_string(&delivered.target).expect("file");
        assert!(written.contains("Code review: Add refunds"), "{written}");
        assert!(
            delivered
                .target
                .ends_with(&format!("{}.md", event.correlation_id))
        );
    }

    #[test]
    fn the_url_is_filled_in_from_the_change_and_checked() {
        let url = target_url(
            "https://api.github.com/repos/{repository}/issues/{number}/comments",
            &report(),
        );
        assert_eq!(
            url,
            "https://api.github.com/repos/acme/shop/issues/42/comments"
        );
        let err =
            Notifier::new(&settings(Some("ftp://x"), PathBuf::from("unused"))).expect_err("ftp");
        assert_eq!(err.field, "webhook-url");
    }

    #[test]
    fn neither_the_settings_nor_the_webhook_show_the_token() {
        let settings = settings(Some("https://hooks.example/x"), PathBuf::from("unused"));
        let notifier = Notifier::new(&settings).expect("valid");
        for shown in [format!("{settings:?}"), format!("{notifier:?}")] {
            assert!(shown.contains("REDACTED"), "{shown}");
            assert!(!shown.contains("ghp_secret"), "{shown}");
        }
    }
}
