//! The choreo HTTP gateway: how events from outside (CI, scripts, other services, GitHub) enter
//! the choreography.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/events` | an event, or CloudEvents in structured, binary or batch mode ([`intake`]); bearer token ([`tokens`]); `202` with the ids |
//! | `POST /v1/webhooks/github` | a GitHub delivery, verified by its signature ([`github`]) |
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | NATS is connected and the events stream is there |
//! | `GET /metrics` | the gateway's metrics, OpenMetrics text |
//! | `GET /openapi.json` | this contract as OpenAPI 3.1, generated from the code's types ([`openapi`]) |
//!
//! Each request passes, in order: the token (401), the token's rate (429), the body cap (413),
//! reading and validating every event (400, 415), the token's event types and sources (403),
//! the run's budget (409), and publishing (503, 507, 502) ([`door`]). Every refusal is a problem document
//! ([`problem`]); nothing is published unless every event of the request is valid and allowed.

pub mod answers;
pub mod door;
pub mod github;
pub mod intake;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod settings;
pub mod tokens;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use choreo_bus::guard::{CorrelationBudget, RateLimiter};
use choreo_bus::{Event, Namespace, Published, Publisher, ValidationError};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};

use crate::answers::{GithubAnswer, Health, Ready, accepted};
use crate::door::Door;
use crate::intake::Mode;
use crate::metrics::GatewayMetrics;
use crate::problem::{Kind, Problem};
use crate::settings::GatewaySettings;
use crate::tokens::{Client, Tokens};

pub use settings::GatewaySettings as Settings;

/// The gateway's state, shared by every request.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tokens: Tokens,
    /// One per client name, and one for the GitHub webhook.
    limiters: HashMap<String, RateLimiter>,
    github_secret: Option<SecretString>,
    door: Door,
    jetstream: jetstream::Context,
    namespace: Namespace,
    max_body: usize,
    metrics: GatewayMetrics,
}

/// The limiter key of the GitHub webhook (not a valid token name, so never a client's).
const GITHUB_LIMITER: &str = "\u{0}github";

impl Gateway {
    /// A gateway publishing through `client` (connected to `nats_url`, for messages); the
    /// settings are validated here, tokens included.
    pub fn new(
        client: async_nats::Client,
        nats_url: String,
        settings: &GatewaySettings,
    ) -> Result<Self, ValidationError> {
        settings.validate()?;
        let namespace = settings.namespace()?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(settings.publish_timeout())
            .build(client.clone());
        let tokens = settings.tokens()?;
        if tokens.is_empty() {
            tracing::warn!(
                "no tokens configured (CHOREO_GATEWAY_TOKENS): POST /v1/events answers 401"
            );
        } else {
            // The settings print the tokens as [REDACTED]; their names and types are not secret.
            tracing::info!(clients = ?tokens, "bearer tokens configured");
        }
        let limit = settings.rate_limit();
        let mut limiters = HashMap::new();
        for client in tokens.clients() {
            limiters.insert(client.name.clone(), RateLimiter::new(limit)?);
        }
        limiters.insert(GITHUB_LIMITER.to_string(), RateLimiter::new(limit)?);
        let door = Door::new(
            client.clone(),
            Publisher::new(jetstream.clone(), namespace.clone()),
            CorrelationBudget::new(client, namespace.clone(), settings.budget()),
            nats_url,
        );
        Ok(Gateway {
            inner: Arc::new(Inner {
                tokens,
                limiters,
                github_secret: settings.github_webhook_secret.clone(),
                door,
                jetstream,
                namespace,
                max_body: settings.max_body,
                metrics: GatewayMetrics::default(),
            }),
        })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/events", post(post_events))
            .route("/v1/webhooks/github", post(post_github))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi::openapi_json))
            .fallback(|| async {
                Problem::new(
                    Kind::NotFound,
                    "no such route: POST /v1/events, POST /v1/webhooks/github, GET /healthz, \
                     GET /readyz, GET /metrics, GET /openapi.json",
                )
            })
            // axum's own 405 has no body; a refusal is a problem document like any other (its
            // Allow header is kept).
            .method_not_allowed_fallback(|| async {
                Problem::new(
                    Kind::MethodNotAllowed,
                    "this route does not answer this method: the Allow header lists those it does",
                )
            })
            .with_state(self.clone())
    }

    async fn events(&self, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
        let client = self.authenticate(&headers)?;
        self.pace(&client.name)?;
        let body = self.read_body(&headers, body).await?;
        let intake = intake::read(&headers, &body, &client.name)?;
        entitled(&client, &intake)?;
        let published = self.publish(&intake.events).await?;
        for (event, stored) in intake.events.iter().zip(&published) {
            tracing::info!(
                client = %client.name,
                event_id = %event.id,
                event_type = %event.r#type,
                correlation_id = %event.correlation_id,
                duplicate = stored.duplicate,
                "accepted"
            );
        }
        Ok(accepted(intake.mode, &published))
    }

    async fn github(&self, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
        let Some(secret) = &self.inner.github_secret else {
            return Err(Problem::new(
                Kind::NotFound,
                "the GitHub webhook is off: set CHOREO_GITHUB_WEBHOOK_SECRET to turn it on",
            ));
        };
        self.pace(GITHUB_LIMITER)?;
        let body = self.read_body(&headers, body).await?;
        github::verify(secret.expose_secret().as_bytes(), &headers, &body)?;
        let event = match github::read(&headers, &body)? {
            github::Delivery::Ping => {
                return Ok(axum::Json(GithubAnswer::Pong { pong: true }).into_response());
            }
            github::Delivery::Ignored(ignored) => {
                return Ok(axum::Json(GithubAnswer::Ignored { ignored }).into_response());
            }
            github::Delivery::Review(event) => event,
        };
        let published = self.publish(std::slice::from_ref(&event)).await?;
        tracing::info!(
            event_id = %event.id,
            event_type = %event.r#type,
            "accepted a GitHub delivery"
        );
        Ok(accepted(Mode::Event, &published))
    }

    /// Publishes `events` through the door (all stored, or a problem) and counts them.
    async fn publish(&self, events: &[Event]) -> Result<Vec<Published>, Problem> {
        let published = self.inner.door.publish(events).await?;
        self.inner.metrics.published(published.len());
        Ok(published)
    }

    /// The client whose bearer token the request carries.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Client>, Problem> {
        let unauthorized = |detail: &str| Problem::new(Kind::Unauthorized, detail);
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("send Authorization: Bearer <token>"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|text| {
                let (scheme, token) = text.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| unauthorized("the Authorization header is not Bearer <token>"))?;
        self.inner
            .tokens
            .client(token)
            .ok_or_else(|| unauthorized("the bearer token is not one this gateway knows"))
    }

    /// Takes one of the rate's slots for `key`, or says when one is free.
    fn pace(&self, key: &str) -> Result<(), Problem> {
        let Some(limiter) = self.inner.limiters.get(key) else {
            return Ok(());
        };
        limiter.try_acquire().map_err(|wait| {
            Problem::new(
                Kind::RateLimited,
                format!(
                    "over the rate of {} requests: retry after {} ms; nothing was published",
                    limiter.limit(),
                    wait.as_millis()
                ),
            )
            .retry_after(wait)
        })
    }

    /// The body, refused as soon as it is known to pass the cap.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, Problem> {
        let max = self.inner.max_body;
        let too_large = || {
            Problem::new(
                Kind::BodyTooLarge,
                format!(
                    "the body is over {max} bytes (CHOREO_GATEWAY_MAX_BODY); send less, or split a batch"
                ),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<usize>().ok());
        if declared.is_some_and(|length| length > max) {
            return Err(too_large());
        }
        let mut stream = body.into_data_stream();
        let mut collected = Vec::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|err| {
                Problem::new(
                    Kind::MalformedBody,
                    format!("the body could not be read: {err}"),
                )
            })?;
            if collected.len() + chunk.len() > max {
                return Err(too_large());
            }
            collected.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(collected))
    }

    async fn ready(&self) -> Result<Ready, Problem> {
        self.inner.door.ensure_connected()?;
        let stream = self.inner.namespace.stream_name();
        self.inner
            .jetstream
            .get_stream(&stream)
            .await
            .map_err(|err| {
                let detail = if choreo_bus::streams::is_stream_not_found(&err) {
                    format!("the {stream} stream is not there ({err}): run `choreo streams ensure`")
                } else {
                    // No answer is not "missing": a cluster may be electing the stream's leader.
                    format!(
                        "JetStream did not answer about the {stream} stream ({err}); it may be \
                         electing a leader: retry"
                    )
                };
                Problem::new(Kind::NatsUnavailable, detail)
            })?;
        Ok(Ready {
            nats: "connected".into(),
            stream,
        })
    }
}

/// Whether `client` may publish every event of the request: its type, and its source (the
/// client's name, or a source it is configured to use). The field at fault is named as the
/// request wrote it.
fn entitled(client: &Client, intake: &intake::Intake) -> Result<(), Problem> {
    for (index, event) in intake.events.iter().enumerate() {
        let field = |name: &str| match intake.mode {
            Mode::Batch => format!("[{index}].{name}"),
            Mode::Binary => format!("ce-{name}"),
            Mode::Event | Mode::Structured => name.to_string(),
        };
        if !client.may_publish(&event.r#type) {
            return Err(Problem::new(
                Kind::ForbiddenType,
                format!(
                    "token {} may not publish {} (it may publish {}); nothing was published",
                    client.name,
                    event.r#type,
                    client.allowed()
                ),
            )
            .field(field("type")));
        }
        if !client.may_claim(&event.source) {
            return Err(Problem::new(
                Kind::ForbiddenSource,
                format!(
                    "token {} may not publish as source {:?}: its events carry {} \
                     (CHOREO_GATEWAY_SOURCES gives a token more); nothing was published",
                    client.name,
                    event.source,
                    client.sources()
                ),
            )
            .field(field("source")));
        }
    }
    Ok(())
}

/// Logs what a refusal said (server-side failures as warnings) and answers with it.
fn answer(result: Result<Response, Problem>) -> Response {
    match result {
        Ok(response) => response,
        Err(problem) => {
            if problem.status.is_server_error() {
                tracing::warn!(status = %problem.status, detail = %problem.detail, "refused");
            } else {
                tracing::debug!(status = %problem.status, detail = %problem.detail, "refused");
            }
            problem.into_response()
        }
    }
}

/// Publishes an event, or CloudEvents in structured, batch or binary mode; all or none.
///
/// The shape is told by `Content-Type` (see the request bodies); a `ce-specversion` header
/// makes it a binary-mode CloudEvent instead: the `ce-*` headers are its attributes
/// (percent-encoded), the body its data, `Content-Type` its `datacontenttype`.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = r"^[A-Za-z0-9_-]+$", max_length = 128,
         description = "A plain event's id: a retry with the same key is stored once. With a CloudEvent it must be the event's id; a batch takes none"),
        ("traceparent" = Option<String>, Header, nullable = false, pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
         description = "W3C trace context, for events that carry none"),
        ("ce-specversion" = Option<String>, Header, nullable = false, description = "Binary mode: `1.0`"),
        ("ce-id" = Option<String>, Header, nullable = false, description = "Binary mode: the event's id"),
        ("ce-source" = Option<String>, Header, nullable = false, description = "Binary mode: its source"),
        ("ce-type" = Option<String>, Header, nullable = false, description = "Binary mode: its type"),
        ("ce-correlationid" = Option<String>, Header, nullable = false, description = "Binary mode: the run it joins"),
        ("ce-subject" = Option<String>, Header, nullable = false, description = "Binary mode: its subject"),
    ),
    request_body(
        description = "One event, one CloudEvent, or a batch of CloudEvents",
        content(
            (openapi::PlainEvent = "application/json"),
            (openapi::CloudEvent = "application/cloudevents+json"),
            (openapi::CloudEventBatch = "application/cloudevents-batch+json"),
        )
    ),
    responses(
        (status = 202, description = "Stored (or stored before: `duplicate`): one event, or all of a batch", body = answers::Stored),
    )
)]
async fn post_events(State(gateway): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    counted(&gateway, "events", gateway.events(headers, body)).await
}

/// A GitHub delivery, trusted by its `X-Hub-Signature-256`; a pull request asking for review
/// becomes `github.pull_request.changed`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/github",
    tag = "webhooks",
    params(
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=` and the HMAC-SHA256 of the body, hex"),
        ("X-GitHub-Event" = Option<String>, Header, nullable = false, example = "pull_request",
         description = "`pull_request`, `ping`, ..."),
        ("X-GitHub-Delivery" = Option<String>, Header, nullable = false, example = "72d3162e-cc78-11e3-81ab-4c9367dc0958",
         description = "The delivery's id: the event's id"),
    ),
    request_body(description = "GitHub's payload", content_type = "application/json", content = Object,
        example = json!({
            "action": "opened",
            "repository": {"full_name": "acme/shop"},
            "pull_request": {
                "number": 42, "title": "Refunds", "draft": false, "user": {"login": "dev"},
                "html_url": "https://github.com/acme/shop/pull/42",
                "diff_url": "https://github.com/acme/shop/pull/42.diff",
                "head": {"sha": "abc123"}
            }
        })),
    responses(
        (status = 200, description = "A ping, or a delivery that asks for nothing", body = answers::GithubAnswer),
        (status = 202, description = "Stored (or stored before: `duplicate`)", body = answers::Accepted),
    )
)]
async fn post_github(State(gateway): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    counted(&gateway, "github", gateway.github(headers, body)).await
}

/// The answer to a request on `route`, counted by its status and timed.
async fn counted(
    gateway: &Gateway,
    route: &'static str,
    handling: impl Future<Output = Result<Response, Problem>>,
) -> Response {
    let asked = tokio::time::Instant::now();
    let response = answer(handling.await);
    gateway
        .inner
        .metrics
        .answered(route, response.status().as_u16(), asked.elapsed());
    response
}

/// The gateway's metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "OpenMetrics text",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String))
)]
async fn metrics(State(gateway): State<Gateway>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            choreo_bus::metrics::OPENMETRICS_CONTENT_TYPE,
        )],
        gateway.inner.metrics.encode(),
    )
        .into_response()
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = answers::Health)))]
async fn healthz() -> Response {
    axum::Json(Health {
        status: "ok".into(),
    })
    .into_response()
}

/// NATS is connected and the events stream is there.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = answers::Ready)))]
async fn readyz(State(gateway): State<Gateway>) -> Response {
    answer(
        gateway
            .ready()
            .await
            .map(|body| axum::Json(body).into_response()),
    )
}

/// Serves `gateway` on `listener` until `shutdown` completes, then finishes the requests in
/// hand.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, gateway.router())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[tokio::test]
    async fn neither_the_settings_nor_the_gateway_show_a_token_or_the_webhook_secret() {
        const TOKEN: &str = "ci-token-0123456789abcdef";
        const SECRET: &str = "webhook-secret-for-tests";
        let tokens = format!("ci={TOKEN}:review.*");
        let settings = GatewaySettings::try_parse_from([
            "choreo-gateway",
            "--tokens",
            &tokens,
            "--github-webhook-secret",
            SECRET,
        ])
        .expect("valid");
        // Nothing listens on port 1; with retries the client is made at once all the same.
        let client = choreo_bus::NatsConfig::new("nats://127.0.0.1:1")
            .initial_connect(choreo_bus::InitialConnect::Retry)
            .connect()
            .await
            .expect("a client that keeps trying");
        let gateway = Gateway::new(client, "nats://127.0.0.1:1".into(), &settings).expect("valid");
        for shown in [format!("{settings:?}"), format!("{gateway:?}")] {
            assert!(shown.contains("REDACTED"), "{shown}");
            for secret in [TOKEN, SECRET] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }
}
