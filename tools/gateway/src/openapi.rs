//! The HTTP contract as OpenAPI 3.1, served at `GET /openapi.json` so clients can be generated
//! from it.
//!
//! It is generated, not written: each route's operation comes from the `#[utoipa::path]` on its
//! handler, the answers' schemas from the types the handlers serialise ([`crate::answers`],
//! [`ProblemDetails`]), and each route's refusals from [`REFUSALS`], the [`Kind`]s it can
//! answer with, grouped by their status, each described by the titles the problems carry. The
//! request bodies are read by hand (to name the field at fault), so their schemas here,
//! [`PlainEvent`] and [`CloudEvent`], are checked against the reader by tests: the same fields,
//! and patterns that accept what the reader accepts.

use std::collections::BTreeMap;

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ArrayBuilder, ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder,
    Schema, Type, path::Operation,
};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::answers::{Accepted, AcceptedBatch, GithubAnswer, Health, Ready, Stored};
use crate::problem::{Kind, PROBLEM_JSON, ProblemDetails};

/// The name of the bearer-token security scheme.
pub const BEARER: &str = "bearer";

/// What each route can refuse with, by route and method. Routes not listed refuse nothing.
pub const REFUSALS: &[(&str, Method, &[Kind])] = &[
    (
        "/v1/events",
        Method::POST,
        &[
            Kind::InvalidField,
            Kind::MalformedBody,
            Kind::Unauthorized,
            Kind::ForbiddenType,
            Kind::ForbiddenSource,
            Kind::BudgetExhausted,
            Kind::BodyTooLarge,
            Kind::UnsupportedMediaType,
            Kind::RateLimited,
            Kind::NatsRefused,
            Kind::NatsUnavailable,
            Kind::StreamFull,
        ],
    ),
    (
        "/v1/webhooks/github",
        Method::POST,
        // A delivery starts a run, so no budget; its type and source are the gateway's own.
        &[
            Kind::InvalidField,
            Kind::MalformedBody,
            Kind::BadSignature,
            Kind::NotFound,
            Kind::BodyTooLarge,
            Kind::RateLimited,
            Kind::NatsRefused,
            Kind::NatsUnavailable,
            Kind::StreamFull,
        ],
    ),
    ("/readyz", Method::GET, &[Kind::NatsUnavailable]),
];

/// An event in the gateway's own shape (`Content-Type: application/json`). Its `source` is the
/// token's name; its id is the `Idempotency-Key` header, or one the gateway makes.
#[derive(Debug, Clone, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "review.requested", "data": {"diff": "+a"}}))]
pub struct PlainEvent {
    /// Dotted words: letters, digits, `-` and `_`, at most 256 bytes.
    #[schema(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length = 256)]
    pub r#type: String,
    /// Any JSON; `{}` when left out.
    #[schema(value_type = Option<serde_json::Value>)]
    pub data: Option<serde_json::Value>,
    /// The run the event joins; left out, the event starts a run of its own.
    #[schema(pattern = r"^[A-Za-z0-9_-]+$", max_length = 128)]
    pub correlation_id: Option<String>,
}

/// A CloudEvent 1.0 in the JSON format (`application/cloudevents+json`, or one element of
/// `application/cloudevents-batch+json`). Other attributes are extensions, kept as they are. A
/// CloudEvent from outside starts a chain: `causationid` and a `depth` other than 0 are
/// refused.
#[derive(Debug, Clone, ToSchema)]
#[schema(example = json!({
    "specversion": "1.0", "id": "build-7-done", "source": "ci", "type": "build.done",
    "data": {"ok": true}
}))]
pub struct CloudEvent {
    /// Only `1.0`.
    #[schema(pattern = r"^1\.0$")]
    pub specversion: String,
    /// The event's id: a retry with the same id is stored once.
    #[schema(pattern = r"^[A-Za-z0-9_-]+$", max_length = 128)]
    pub id: String,
    /// Who speaks: the token's name, or a source it is configured to use.
    #[schema(min_length = 1, max_length = 256)]
    pub source: String,
    /// Dotted words: letters, digits, `-` and `_`, at most 256 bytes.
    #[schema(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length = 256)]
    pub r#type: String,
    /// The run the event joins; left out, the event starts a run of its own.
    #[schema(pattern = r"^[A-Za-z0-9_-]+$", max_length = 128)]
    pub correlationid: Option<String>,
    /// When it happened (RFC 3339).
    #[schema(format = DateTime)]
    pub time: Option<String>,
    /// The media type of `data`; `application/json` when left out.
    pub datacontenttype: Option<String>,
    /// The payload: JSON, or text when `datacontenttype` is not JSON.
    #[schema(value_type = Option<serde_json::Value>)]
    pub data: Option<serde_json::Value>,
    /// The payload as base64, for bytes (not with `data`).
    #[schema(content_encoding = "base64")]
    pub data_base64: Option<String>,
    /// What the event is about, within its source.
    #[schema(min_length = 1)]
    pub subject: Option<String>,
    /// The schema `data` follows: an absolute URI.
    #[schema(format = "uri")]
    pub dataschema: Option<String>,
    /// W3C trace context: the event's trace continues the caller's.
    #[schema(pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]
    pub traceparent: Option<String>,
}

/// `application/cloudevents-batch+json`: at least one CloudEvent, stored all or none.
#[derive(Debug, Clone)]
pub struct CloudEventBatch(pub Vec<CloudEvent>);

impl PartialSchema for CloudEventBatch {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(CloudEvent::name()))
            .min_items(Some(1))
            .description(Some("At least one CloudEvent, stored all or none"))
            .into()
    }
}

impl ToSchema for CloudEventBatch {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((CloudEvent::name().into_owned(), CloudEvent::schema()));
        CloudEvent::schemas(schemas);
    }
}

/// Adds what the `#[utoipa::path]`s do not say: the bearer scheme and every route's refusals.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from CHOREO_GATEWAY_TOKENS; it names the events' source and \
                         the types it may publish",
                    ))
                    .build(),
            ),
        );
        for (path, method, kinds) in REFUSALS {
            let Some(operation) = openapi
                .paths
                .paths
                .get_mut(*path)
                .and_then(|item| operation_mut(item, method))
            else {
                continue;
            };
            add_refusals(operation, kinds);
        }
    }
}

fn operation_mut<'a>(
    item: &'a mut utoipa::openapi::PathItem,
    method: &Method,
) -> Option<&'a mut Operation> {
    match *method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        _ => None,
    }
}

/// One response per status among `kinds`: a problem document, described by its kinds.
fn add_refusals(operation: &mut Operation, kinds: &[Kind]) {
    let mut by_status: BTreeMap<u16, Vec<Kind>> = BTreeMap::new();
    for kind in kinds {
        by_status
            .entry(kind.status().as_u16())
            .or_default()
            .push(*kind);
    }
    for (status, kinds) in by_status {
        let description = kinds
            .iter()
            .map(|kind| format!("`{}`: {}", kind.urn(), kind.title()))
            .collect::<Vec<_>>()
            .join("; ");
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ProblemDetails")))
            .build();
        let mut response = ResponseBuilder::new()
            .description(description)
            .content(PROBLEM_JSON, content);
        if status == 429 || status == 503 {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1)),
                    )
                    .description(Some("Seconds to wait before trying again"))
                    .build(),
            );
        }
        if kinds.contains(&Kind::Unauthorized) {
            response = response.header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some("Bearer realm=\"choreo\""))
                    .build(),
            );
        }
        operation
            .responses
            .responses
            .insert(status.to_string(), response.build().into());
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "choreo gateway",
        description = "How events from outside (CI, scripts, other services, GitHub) enter the \
                       choreography. Every refusal is an RFC 9457 problem document \
                       (`application/problem+json`), and nothing of a refused request is stored.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        crate::post_events,
        crate::post_github,
        crate::healthz,
        crate::readyz,
        crate::metrics,
        openapi_json
    ),
    components(schemas(
        PlainEvent,
        CloudEvent,
        CloudEventBatch,
        Accepted,
        AcceptedBatch,
        Stored,
        GithubAnswer,
        Health,
        Ready,
        ProblemDetails
    )),
    modifiers(&Contract)
)]
#[derive(Debug)]
pub struct GatewayApi;

/// The description, as served.
pub fn description() -> utoipa::openapi::OpenApi {
    let mut openapi = GatewayApi::openapi();
    openapi.info.version = env!("CARGO_PKG_VERSION").to_string();
    openapi
}

/// This description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "contract",
    responses((status = 200, description = "The gateway's OpenAPI 3.1 description", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json() -> Response {
    axum::Json(description()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn served() -> Value {
        serde_json::to_value(description()).expect("json")
    }

    #[test]
    fn the_description_is_openapi_3_1_and_names_every_route() {
        let doc = served();
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
        let mut routes: Vec<String> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                routes.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        routes.sort();
        assert_eq!(
            routes,
            [
                "GET /healthz",
                "GET /metrics",
                "GET /openapi.json",
                "GET /readyz",
                "POST /v1/events",
                "POST /v1/webhooks/github"
            ]
        );
    }

    #[test]
    fn every_refusal_is_a_problem_document_with_its_status() {
        let doc = served();
        for (path, method, kinds) in REFUSALS {
            let method = method.as_str().to_lowercase();
            let responses = &doc["paths"][path][&method]["responses"];
            for kind in *kinds {
                let status = kind.status().as_u16().to_string();
                let response = &responses[&status];
                assert_eq!(
                    response["content"][PROBLEM_JSON]["schema"]["$ref"],
                    "#/components/schemas/ProblemDetails",
                    "{method} {path} {status}"
                );
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| d.contains(&kind.urn())),
                    "{response}"
                );
            }
        }
        assert_eq!(
            doc["paths"]["/v1/events"]["post"]["security"],
            json!([{BEARER: []}])
        );
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn the_plain_event_schema_has_the_fields_the_reader_takes() {
        let doc = served();
        let schema = &doc["components"]["schemas"]["PlainEvent"];
        let mut fields: Vec<&str> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        let mut read = crate::intake::EVENT_FIELDS.to_vec();
        read.sort_unstable();
        assert_eq!(fields, read);
        assert_eq!(schema["additionalProperties"], false, "{schema}");
        assert_eq!(schema["required"], json!(["type"]));
    }

    /// The schemas' patterns accept what the bus's checks accept, and refuse what they refuse.
    #[test]
    fn the_patterns_agree_with_the_bus() {
        let doc = served();
        let cloudevent = &doc["components"]["schemas"]["CloudEvent"]["properties"];
        let pattern = |field: &str| {
            let text = cloudevent[field]["pattern"].as_str().expect(field);
            let regex = regex::Regex::new(text).expect("a regex");
            move |value: &str| regex.is_match(value)
        };
        let type_pattern = pattern("type");
        for value in [
            "review.requested",
            "a",
            "a-b_c.d1",
            "a..b",
            ".a",
            "a.",
            "a b",
            "é",
            "",
        ] {
            assert_eq!(
                type_pattern(value),
                choreo_bus::names::validate_type(value).is_ok(),
                "{value:?}"
            );
        }
        let id_pattern = pattern("id");
        for value in ["run-1", "A_b-9", "a.b", "a b", "", "é"] {
            assert_eq!(
                id_pattern(value),
                choreo_bus::names::validate_id("id", value).is_ok(),
                "{value:?}"
            );
        }
        assert_eq!(
            doc["components"]["schemas"]["PlainEvent"]["properties"]["type"]["pattern"],
            cloudevent["type"]["pattern"]
        );
    }
}
