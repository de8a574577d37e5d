//! `fetcher`: on `github.pull_request.changed` (published by the gateway's GitHub webhook),
//! fetches the pull request's diff and emits `review.requested`, so the team reviews it like
//! any other change.
//!
//! The fetch is done here rather than in the gateway so that the webhook is answered as soon as
//! the announcement is stored, and a slow or failing diff server gets the runtime's retries,
//! backoff and dead letters instead of a lost webhook delivery. It is guarded three ways:
//!
//! - **Timeout** (`--fetch-timeout`): one fetch may take this long, connection included.
//! - **Size cap** (`--fetch-max-bytes`): a bigger diff is refused as soon as it is known to be
//!   bigger (its `Content-Length`, or the bytes read so far), and dead-lettered: an event that
//!   size would pass the server's payload limit, and a person should look at it.
//! - **Breaker** `diff-fetch`: the diff server down or answering 5xx/429 opens it (see
//!   [`choreo_review::outbound`]); events wait in the stream until it lets a probe through.
//!
//! It fetches only from `--fetch-allow-hosts` (GitHub's by default), redirects included: the
//! URL comes in an event, and an agent inside the network should not fetch wherever an event
//! says.

use std::collections::BTreeSet;

use choreo_bus::guard::{BreakerConfig, CircuitBreaker};
use choreo_bus::settings::HumanDuration;
use choreo_bus::{Agent, Emit, HandlerError, Incoming, ValidationError};
use choreo_review::Diff;
use choreo_review::events::{PULL_REQUEST_CHANGED, PullRequestChanged, REQUESTED, ReviewRequested};
use choreo_review::{emit_json, outbound};
use secrecy::{ExposeSecret, SecretString};

pub fn agent() -> Result<Agent, ValidationError> {
    Agent::builder("fetcher")
        .subscribes(PULL_REQUEST_CHANGED)
        .emits(REQUESTED)
        .build()
}

/// GitHub's hosts: pages, the API, and where `github.com/…/pull/N.diff` redirects.
pub const GITHUB_HOSTS: &str = "github.com,api.github.com,patch-diff.githubusercontent.com";

/// The fetcher's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Token sent as `Authorization: Bearer` with each fetch; needed for private repositories.
    #[arg(long, env = "CHOREO_GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<SecretString>,
    /// Time allowed for one fetch, connection included.
    #[arg(long, env = "CHOREO_FETCH_TIMEOUT", default_value = "10s")]
    pub fetch_timeout: HumanDuration,
    /// Largest diff accepted, in bytes; a bigger one is dead-lettered.
    #[arg(long, env = "CHOREO_FETCH_MAX_BYTES", default_value_t = 512 * 1024)]
    pub fetch_max_bytes: u64,
    /// Hosts diffs may be fetched from (redirects included), comma-separated.
    #[arg(
        long,
        env = "CHOREO_FETCH_ALLOW_HOSTS",
        default_value = GITHUB_HOSTS,
        value_delimiter = ','
    )]
    pub fetch_allow_hosts: Vec<String>,
    /// How long the fetch breaker stays open once it opens.
    #[arg(long, env = "CHOREO_FETCH_BREAKER_OPEN_FOR", default_value = "30s")]
    pub fetch_breaker_open_for: HumanDuration,
}

/// The fetcher's handler.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    token: Option<SecretString>,
    max_bytes: u64,
    allowed: AllowedHosts,
    breaker: CircuitBreaker,
}

/// Hosts a diff may come from.
#[derive(Debug, Clone)]
struct AllowedHosts(BTreeSet<String>);

impl AllowedHosts {
    fn admits(&self, url: &reqwest::Url) -> bool {
        matches!(url.scheme(), "http" | "https")
            && url
                .host_str()
                .is_some_and(|host| self.0.contains(&host.to_ascii_lowercase()))
    }

    fn list(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(",")
    }
}

/// Redirects followed at most, as a browser would.
const MAX_REDIRECTS: usize = 5;

impl Fetcher {
    pub fn new(settings: &Settings) -> Result<Self, ValidationError> {
        let hosts: BTreeSet<String> = settings
            .fetch_allow_hosts
            .iter()
            .map(|host| host.trim().to_ascii_lowercase())
            .filter(|host| !host.is_empty())
            .collect();
        if hosts.is_empty() {
            return Err(ValidationError::new(
                "fetch-allow-hosts",
                format!("must name at least one host, e.g. {GITHUB_HOSTS}"),
            ));
        }
        if settings.fetch_max_bytes == 0 {
            return Err(ValidationError::new(
                "fetch-max-bytes",
                "must be above zero",
            ));
        }
        let allowed = AllowedHosts(hosts);
        // A redirect elsewhere is not followed: its 3xx answer is then refused like any
        // other, naming where it pointed.
        let redirects = {
            let allowed = allowed.clone();
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() < MAX_REDIRECTS && allowed.admits(attempt.url()) {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            })
        };
        let http = reqwest::Client::builder()
            .timeout(settings.fetch_timeout.0)
            .redirect(redirects)
            .user_agent("choreo-fetcher")
            .build()
            .map_err(|err| ValidationError::new("fetch-timeout", err.to_string()))?;
        let breaker = CircuitBreaker::new(
            "diff-fetch",
            BreakerConfig {
                min_calls: 3,
                open_for: settings.fetch_breaker_open_for.0,
                ..BreakerConfig::default()
            },
        )?;
        Ok(Fetcher {
            http,
            token: settings.github_token.clone(),
            max_bytes: settings.fetch_max_bytes,
            allowed,
            breaker,
        })
    }

    /// The pull request's diff, as text.
    async fn fetch_diff(&self, pull_request: &PullRequestChanged) -> Result<String, HandlerError> {
        let url = reqwest::Url::parse(&pull_request.diff_url).map_err(|err| {
            HandlerError::permanent(format!(
                "diff_url {:?} is not a URL: {err}",
                pull_request.diff_url
            ))
        })?;
        if !self.allowed.admits(&url) {
            return Err(HandlerError::permanent(format!(
                "will not fetch {url}: its host is not one of CHOREO_FETCH_ALLOW_HOSTS ({})",
                self.allowed.list()
            )));
        }
        let mut request = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/vnd.github.diff");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        let response = outbound::send(
            &self.breaker,
            request,
            url.as_str(),
            "check CHOREO_GITHUB_TOKEN for a private repository, and CHOREO_FETCH_ALLOW_HOSTS \
             for a redirect",
        )
        .await?;
        let bytes = self.read_capped(response, &url).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The body, refused as soon as it is known to pass the cap.
    async fn read_capped(
        &self,
        mut response: reqwest::Response,
        url: &reqwest::Url,
    ) -> Result<Vec<u8>, HandlerError> {
        let too_big = |size: String| {
            HandlerError::permanent(format!(
                "the diff at {url} is {size} bytes, over the cap of {} \
                 (CHOREO_FETCH_MAX_BYTES); review it by hand or raise the cap",
                self.max_bytes
            ))
        };
        if let Some(length) = response.content_length()
            && length > self.max_bytes
        {
            return Err(too_big(length.to_string()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| {
            HandlerError::retryable(format!("reading the diff from {url} failed: {err}"))
        })? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > self.max_bytes {
                return Err(too_big(format!("more than {}", self.max_bytes)));
            }
        }
        Ok(body)
    }
}

impl choreo_bus::Handler for Fetcher {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        let pull_request: PullRequestChanged = event.json()?;
        let diff = self.fetch_diff(&pull_request).await?;
        if let Err(err) = Diff::parse(&diff) {
            return Err(HandlerError::permanent(format!(
                "{} did not serve a unified diff ({err})",
                pull_request.diff_url
            )));
        }
        let request = ReviewRequested {
            diff,
            repository: pull_request.repository,
            title: pull_request.title,
            author: pull_request.author,
            url: pull_request.url,
        };
        Ok(vec![emit_json(REQUESTED, &request)?])
    }

    fn breakers(&self) -> Vec<CircuitBreaker> {
        vec![self.breaker.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_bus::Handler as _;
    use choreo_bus::HandlerErrorKind;
    use choreo_review::{samples, testing};
    use std::time::Duration;

    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;

    /// A diff server on loopback: `/ok.diff` the sample, `/big.diff` a 2.7 KB diff sent in pieces
    /// (no `Content-Length`), `/gone.diff` 404, `/down.diff` 503, `/page.diff` HTML,
    /// `/away.diff` a redirect to another host.
    async fn diff_server() -> String {
        let router = axum::Router::new()
            .route("/ok.diff", get(|| async { samples::REFUNDS_DIFF }))
            .route(
                "/big.diff",
                get(|| async {
                    let lines: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
                    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
                    let text = testing::diff_text_adding("big.py", &lines).into_bytes();
                    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
                        text.chunks(512).map(|piece| Ok(piece.to_vec())).collect();
                    axum::body::Body::from_stream(futures::stream::iter(pieces))
                }),
            )
            .route("/gone.diff", get(|| async { StatusCode::NOT_FOUND }))
            .route(
                "/down.diff",
                get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
            )
            .route("/page.diff", get(|| async { "<html>sign in</html>" }))
            .route(
                "/away.diff",
                get(|| async {
                    (
                        StatusCode::FOUND,
                        [("location", "http://example.invalid/x.diff")],
                    )
                        .into_response()
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}")
    }

    fn fetcher_settings(max_bytes: u64) -> Settings {
        Settings {
            github_token: None,
            fetch_timeout: HumanDuration(Duration::from_secs(5)),
            fetch_max_bytes: max_bytes,
            fetch_allow_hosts: vec!["127.0.0.1".into()],
            fetch_breaker_open_for: HumanDuration(Duration::from_secs(30)),
        }
    }

    fn fetcher(max_bytes: u64) -> Fetcher {
        Fetcher::new(&fetcher_settings(max_bytes)).expect("valid settings")
    }

    fn announced(diff_url: String) -> Incoming {
        testing::root(
            PULL_REQUEST_CHANGED,
            &PullRequestChanged {
                action: "opened".into(),
                repository: "acme/shop".into(),
                number: 7,
                title: "Refunds".into(),
                author: "dev".into(),
                url: "https://github.com/acme/shop/pull/7".into(),
                diff_url,
                head_sha: "abc123".into(),
            },
        )
    }

    async fn refusal(fetcher: &Fetcher, url: String) -> HandlerError {
        fetcher.handle(&announced(url)).await.expect_err("refused")
    }

    #[test]
    fn neither_the_settings_nor_the_fetcher_show_the_token() {
        let settings = Settings {
            github_token: Some("ghp_fetch_secret".into()),
            ..fetcher_settings(1024)
        };
        let fetcher = Fetcher::new(&settings).expect("valid settings");
        for shown in [format!("{settings:?}"), format!("{fetcher:?}")] {
            assert!(shown.contains("REDACTED"), "{shown}");
            assert!(!shown.contains("ghp_fetch_secret"), "{shown}");
        }
    }

    #[tokio::test]
    async fn a_pull_request_becomes_a_review_request_with_its_diff() {
        let server = diff_server().await;
        let emitted = fetcher(1 << 20)
            .handle(&announced(format!("{server}/ok.diff")))
            .await
            .expect("fetched");
        assert_eq!(emitted.len(), 1);
        assert_eq!(emitted[0].event_type.as_str(), REQUESTED);
        let request: ReviewRequested = serde_json::from_slice(&emitted[0].data).expect("json");
        assert_eq!(request.diff, samples::REFUNDS_DIFF);
        assert_eq!(request.repository, "acme/shop");
        assert_eq!(request.title, "Refunds");
        assert_eq!(request.url, "https://github.com/acme/shop/pull/7");
    }

    #[tokio::test]
    async fn a_diff_over_the_cap_is_refused_for_good_even_without_a_length() {
        let server = diff_server().await;
        let err = refusal(&fetcher(1024), format!("{server}/big.diff")).await;
        assert_eq!(err.kind(), HandlerErrorKind::Permanent, "{err}");
        assert!(err.to_string().contains("over the cap of 1024"), "{err}");
        let with_length = refusal(&fetcher(100), format!("{server}/ok.diff")).await;
        assert!(
            with_length
                .to_string()
                .contains(&samples::REFUNDS_DIFF.len().to_string()),
            "the announced length is named: {with_length}"
        );
    }

    #[tokio::test]
    async fn the_answers_are_sorted_into_retry_and_give_up() {
        let server = diff_server().await;
        let fetcher = fetcher(1 << 20);
        let cases = [
            ("/gone.diff", HandlerErrorKind::Permanent, "404"),
            ("/down.diff", HandlerErrorKind::Retryable, "503"),
            (
                "/page.diff",
                HandlerErrorKind::Permanent,
                "did not serve a unified diff",
            ),
            ("/away.diff", HandlerErrorKind::Permanent, "302"),
        ];
        for (path, kind, says) in cases {
            let err = refusal(&fetcher, format!("{server}{path}")).await;
            assert_eq!(err.kind(), kind, "{path}: {err}");
            assert!(err.to_string().contains(says), "{path}: {err}");
        }
    }

    #[tokio::test]
    async fn hosts_not_allowed_are_never_contacted() {
        let err = refusal(&fetcher(1 << 20), "http://169.254.169.254/latest".into()).await;
        assert_eq!(err.kind(), HandlerErrorKind::Permanent);
        assert!(
            err.to_string().contains("CHOREO_FETCH_ALLOW_HOSTS"),
            "{err}"
        );
        let err = refusal(&fetcher(1 << 20), "file:///etc/passwd".into()).await;
        assert_eq!(err.kind(), HandlerErrorKind::Permanent);
    }

    #[test]
    fn settings_without_hosts_or_with_a_zero_cap_are_refused() {
        let mut settings = Settings {
            github_token: None,
            fetch_timeout: HumanDuration(Duration::from_secs(5)),
            fetch_max_bytes: 10,
            fetch_allow_hosts: vec![" ".into()],
            fetch_breaker_open_for: HumanDuration(Duration::from_secs(30)),
        };
        assert_eq!(
            Fetcher::new(&settings).expect_err("no hosts").field,
            "fetch-allow-hosts"
        );
        settings.fetch_allow_hosts = vec!["github.com".into()];
        settings.fetch_max_bytes = 0;
        assert_eq!(
            Fetcher::new(&settings).expect_err("zero cap").field,
            "fetch-max-bytes"
        );
    }
}
