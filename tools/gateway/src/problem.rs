//! Errors as RFC 9457 problem details (`application/problem+json`): a `type` a program can
//! match, a `title` per type, a `detail` that says what to do, and the `field` at fault when
//! there is one.
//!
//! | type (`urn:choreo:problem:…`) | status | when |
//! |---|---|---|
//! | `invalid-field` | 400 | a field (or header) is missing or wrong: `field` names it |
//! | `malformed-body` | 400 | the body is not the JSON its content type says |
//! | `unauthorized` | 401 | no bearer token, or one the gateway does not know |
//! | `bad-signature` | 401 | a GitHub delivery whose X-Hub-Signature-256 does not match |
//! | `forbidden-type` | 403 | the token may not publish this event type |
//! | `forbidden-source` | 403 | a CloudEvent claims a `source` the token may not speak for |
//! | `not-found` | 404 | no such route, or the GitHub webhook is not configured |
//! | `method-not-allowed` | 405 | a route asked with a method it does not answer; `Allow` lists those it does |
//! | `budget-exhausted` | 409 | the run named by the correlation id has used its budget |
//! | `body-too-large` | 413 | the body is over the cap, or the event over NATS's max payload |
//! | `unsupported-media-type` | 415 | a content type the gateway does not read |
//! | `rate-limited` | 429 | the token is over its rate; `Retry-After` says when to come back |
//! | `nats-refused` | 502 | the stream refused the event |
//! | `nats-unavailable` | 503 | NATS is unreachable, JetStream cannot take events just now (a stream electing its leader), or the streams are missing; `Retry-After` |
//! | `stream-full` | 507 | the stream is at its limits; nothing was stored |

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use choreo_bus::ValidationError;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: Kind,
    pub detail: String,
    /// The field, header or path at fault.
    pub field: Option<String>,
    /// For 429 and 503: when trying again makes sense.
    pub retry_after: Option<Duration>,
}

/// What went wrong, one per row of the module's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidField,
    MalformedBody,
    Unauthorized,
    BadSignature,
    ForbiddenType,
    ForbiddenSource,
    NotFound,
    MethodNotAllowed,
    BudgetExhausted,
    BodyTooLarge,
    UnsupportedMediaType,
    RateLimited,
    NatsRefused,
    NatsUnavailable,
    StreamFull,
}

impl Kind {
    /// Every kind, in the order of the module's table.
    pub const ALL: [Kind; 15] = [
        Kind::InvalidField,
        Kind::MalformedBody,
        Kind::Unauthorized,
        Kind::BadSignature,
        Kind::ForbiddenType,
        Kind::ForbiddenSource,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::BudgetExhausted,
        Kind::BodyTooLarge,
        Kind::UnsupportedMediaType,
        Kind::RateLimited,
        Kind::NatsRefused,
        Kind::NatsUnavailable,
        Kind::StreamFull,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Kind::InvalidField => "invalid-field",
            Kind::MalformedBody => "malformed-body",
            Kind::Unauthorized => "unauthorized",
            Kind::BadSignature => "bad-signature",
            Kind::ForbiddenType => "forbidden-type",
            Kind::ForbiddenSource => "forbidden-source",
            Kind::NotFound => "not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::BudgetExhausted => "budget-exhausted",
            Kind::BodyTooLarge => "body-too-large",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::RateLimited => "rate-limited",
            Kind::NatsRefused => "nats-refused",
            Kind::NatsUnavailable => "nats-unavailable",
            Kind::StreamFull => "stream-full",
        }
    }

    /// The URN a problem document's `type` carries.
    pub fn urn(self) -> String {
        format!("urn:choreo:problem:{}", self.slug())
    }

    pub fn status(self) -> StatusCode {
        match self {
            Kind::InvalidField | Kind::MalformedBody => StatusCode::BAD_REQUEST,
            Kind::Unauthorized | Kind::BadSignature => StatusCode::UNAUTHORIZED,
            Kind::ForbiddenType | Kind::ForbiddenSource => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::BudgetExhausted => StatusCode::CONFLICT,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::NatsRefused => StatusCode::BAD_GATEWAY,
            Kind::NatsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::StreamFull => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::InvalidField => "A field is missing or invalid",
            Kind::MalformedBody => "The body cannot be read",
            Kind::Unauthorized => "A valid bearer token is required",
            Kind::BadSignature => "The webhook signature does not match",
            Kind::ForbiddenType => "This token may not publish this event type",
            Kind::ForbiddenSource => "This token may not publish as this source",
            Kind::NotFound => "Not found",
            Kind::MethodNotAllowed => "Method not allowed",
            Kind::BudgetExhausted => "The run has used its budget",
            Kind::BodyTooLarge => "The body is too large",
            Kind::UnsupportedMediaType => "Unsupported content type",
            Kind::RateLimited => "Too many requests",
            Kind::NatsRefused => "The event stream refused the event",
            Kind::NatsUnavailable => "The event stream is unavailable",
            Kind::StreamFull => "The event stream is full",
        }
    }
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Problem {
            status: kind.status(),
            kind,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// A field at fault.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Problem::new(Kind::InvalidField, detail).field(field)
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The body a client receives.
    pub fn body(&self) -> ProblemDetails {
        ProblemDetails {
            r#type: self.kind.urn(),
            title: self.kind.title().to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            field: self.field.clone(),
        }
    }
}

/// A refusal as RFC 9457 problem details, served as `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:choreo:problem:invalid-field",
    "title": "A field is missing or invalid",
    "status": 400,
    "detail": "type: is required, e.g. \"review.requested\"",
    "field": "type"
}))]
pub struct ProblemDetails {
    /// What went wrong, for programs to match: `urn:choreo:problem:<kind>`.
    #[schema(pattern = "^urn:choreo:problem:[a-z-]+$")]
    pub r#type: String,
    /// One per `type`.
    pub title: String,
    /// The HTTP status of the answer.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What happened and what to do.
    pub detail: String,
    /// The field, header or path at fault, as the request wrote it (`type`, `ce-source`,
    /// `[2].id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A validation error of the bus, with its field named as the client wrote it: `prefix` then
/// the field (`[2].type` for the third event of a batch); `rename` maps the bus's names to the
/// request's (a binary-mode CloudEvent's `type` is its `ce-type` header).
pub fn from_validation(
    err: &ValidationError,
    prefix: &str,
    rename: impl Fn(&str) -> Option<String>,
) -> Problem {
    let field = rename(err.field).unwrap_or_else(|| format!("{prefix}{}", err.field));
    Problem::invalid(field.clone(), format!("{field}: {}", err.reason))
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: coming back early would only be refused again.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if self.kind == Kind::Unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"choreo\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_has_its_type_title_status_and_field() {
        let problem = Problem::invalid("type", "type: is required");
        let body = serde_json::to_value(problem.body()).expect("json");
        assert_eq!(body["type"], "urn:choreo:problem:invalid-field");
        assert_eq!(body["status"], 400);
        assert_eq!(body["field"], "type");
        assert_eq!(body["detail"], "type: is required");
        let response = problem.into_response();
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds() {
        let response = Problem::new(Kind::RateLimited, "slow down")
            .retry_after(Duration::from_millis(1200))
            .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
