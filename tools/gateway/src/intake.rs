//! Reading a request into events, every one validated before any is published.
//!
//! `POST /v1/events` takes four shapes, told apart by their headers:
//!
//! | shape | how it is recognised | the event |
//! |---|---|---|
//! | an event | `Content-Type: application/json` | `{"type", "data", "correlation_id"}`; id from `Idempotency-Key`, source = the token's name |
//! | CloudEvent, structured mode | `Content-Type: application/cloudevents+json` | the document (see [`choreo_bus::cloudevents`]) |
//! | CloudEvents, batch mode | `Content-Type: application/cloudevents-batch+json` | a JSON array of documents |
//! | CloudEvent, binary mode | a `ce-specversion` header | `ce-*` headers are the attributes, the body is the data, `Content-Type` its `datacontenttype` |
//!
//! The W3C `traceparent` header is the event's trace context when the event does not carry one.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use choreo_bus::cloudevents::{self, is_json};
use choreo_bus::envelope::TraceParent;
use choreo_bus::names::validate_id;
use choreo_bus::{Emit, Event, EventType, RootEvent};
use serde_json::{Map, Value};

use crate::problem::{Kind, Problem, from_validation};

pub const CLOUDEVENT: &str = "application/cloudevents+json";
pub const CLOUDEVENTS_BATCH: &str = "application/cloudevents-batch+json";
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const TRACEPARENT: &str = "traceparent";

/// How the events came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Event,
    Structured,
    Binary,
    Batch,
}

/// The events of one request, validated.
#[derive(Debug)]
pub struct Intake {
    pub mode: Mode,
    pub events: Vec<Event>,
}

/// Reads a request's events; `source` is the client's name, the source of plain events.
pub fn read(headers: &HeaderMap, body: &[u8], source: &str) -> Result<Intake, Problem> {
    let intake = read_events(headers, body, source)?;
    idempotency_key_agrees(headers, &intake)?;
    // An event carrying its own trace context ignores the header, but a malformed one is the
    // client's mistake all the same.
    if let Some(traceparent) = header_text(headers, TRACEPARENT)?
        && TraceParent::parse(traceparent).is_none()
    {
        return Err(Problem::invalid(
            "traceparent",
            format!(
                "traceparent: {traceparent:?} is not W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)"
            ),
        ));
    }
    Ok(intake)
}

/// A plain event takes its id from `Idempotency-Key`; a CloudEvent has its own id, so a key
/// sent with one must be that id (a client trusting a key the gateway ignored would store a
/// retry twice), and a batch, whose events each have their own, takes none.
fn idempotency_key_agrees(headers: &HeaderMap, intake: &Intake) -> Result<(), Problem> {
    let Some(key) = header_text(headers, IDEMPOTENCY_KEY)? else {
        return Ok(());
    };
    validate_id("Idempotency-Key", key).map_err(|err| from_validation(&err, "", |_| None))?;
    let refuse = |why: String| Err(Problem::invalid("Idempotency-Key", why));
    match (intake.mode, intake.events.as_slice()) {
        (Mode::Event, _) => Ok(()),
        (Mode::Structured | Mode::Binary, [event]) if event.id == key => Ok(()),
        (Mode::Structured | Mode::Binary, _) => refuse(format!(
            "Idempotency-Key {key} is not the CloudEvent's id: a CloudEvent's id is its key; \
             send the same value, or leave the header out"
        )),
        (Mode::Batch, _) => refuse(
            "a batch takes no Idempotency-Key: each CloudEvent's id is its key; leave the \
             header out"
                .to_string(),
        ),
    }
}

fn read_events(headers: &HeaderMap, body: &[u8], source: &str) -> Result<Intake, Problem> {
    if headers.contains_key("ce-specversion") {
        return Ok(Intake {
            mode: Mode::Binary,
            events: vec![binary(headers, body)?],
        });
    }
    let content_type = header_text(headers, header::CONTENT_TYPE.as_str())?.unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (mode, events) = match essence.as_str() {
        "application/json" => (Mode::Event, vec![plain(headers, body, source)?]),
        CLOUDEVENT => (Mode::Structured, vec![structured(headers, body)?]),
        CLOUDEVENTS_BATCH => (Mode::Batch, batch(headers, body)?),
        _ => {
            let given = if content_type.is_empty() {
                "no Content-Type".to_string()
            } else {
                format!("Content-Type {content_type}")
            };
            return Err(Problem::new(
                Kind::UnsupportedMediaType,
                format!(
                    "{given} is not read here: send application/json (an event), {CLOUDEVENT}, \
                     {CLOUDEVENTS_BATCH}, or a binary-mode CloudEvent (ce-* headers)"
                ),
            )
            .field("Content-Type"));
        }
    };
    Ok(Intake { mode, events })
}

/// The fields of a plain event.
pub const EVENT_FIELDS: [&str; 3] = ["type", "data", "correlation_id"];

fn plain(headers: &HeaderMap, body: &[u8], source: &str) -> Result<Event, Problem> {
    let value = json_body(body, "application/json")?;
    let object = value.as_object().ok_or_else(|| {
        Problem::invalid("body", "must be a JSON object: {\"type\": …, \"data\": …}")
    })?;
    if let Some(unknown) = object
        .keys()
        .find(|key| !EVENT_FIELDS.contains(&key.as_str()))
    {
        return Err(Problem::invalid(
            unknown.clone(),
            format!(
                "{unknown} is not a field of an event; the fields are type, data and \
                 correlation_id (send a CloudEvent with Content-Type: {CLOUDEVENT})"
            ),
        ));
    }
    let event_type = match object.get("type") {
        Some(Value::String(text)) => {
            EventType::new(text.as_str()).map_err(|err| from_validation(&err, "", |_| None))?
        }
        Some(_) => return Err(Problem::invalid("type", "type: must be a string")),
        None => {
            return Err(Problem::invalid(
                "type",
                "type: is required, e.g. \"review.requested\"",
            ));
        }
    };
    let data = object
        .get("data")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let emit = Emit::json(event_type, &data)
        .map_err(|err| Problem::invalid("data", format!("data: cannot be encoded: {err}")))?;
    let mut root = RootEvent::new(emit, source);
    match object.get("correlation_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) => root = root.with_correlation_id(id.as_str()),
        Some(_) => {
            return Err(Problem::invalid(
                "correlation_id",
                "correlation_id: must be a string",
            ));
        }
    }
    if let Some(key) = header_text(headers, IDEMPOTENCY_KEY)? {
        validate_id("Idempotency-Key", key).map_err(|err| from_validation(&err, "", |_| None))?;
        root = root.with_id(key);
    }
    if let Some(traceparent) = header_text(headers, TRACEPARENT)? {
        root = root.with_traceparent(traceparent);
    }
    root.into_event().map_err(|err| {
        from_validation(&err, "", |field| {
            (field == "id").then(|| "Idempotency-Key".into())
        })
    })
}

fn structured(headers: &HeaderMap, body: &[u8]) -> Result<Event, Problem> {
    document(&json_body(body, CLOUDEVENT)?, headers, "")
}

fn batch(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, Problem> {
    let value = json_body(body, CLOUDEVENTS_BATCH)?;
    let documents = value
        .as_array()
        .ok_or_else(|| Problem::invalid("body", "a batch is a JSON array of CloudEvents"))?;
    if documents.is_empty() {
        return Err(Problem::invalid(
            "body",
            "the batch is empty: send at least one CloudEvent",
        ));
    }
    documents
        .iter()
        .enumerate()
        .map(|(index, doc)| document(doc, headers, &format!("[{index}].")))
        .collect()
}

/// One CloudEvents JSON document as an event; `prefix` locates it in a batch.
fn document(doc: &Value, headers: &HeaderMap, prefix: &str) -> Result<Event, Problem> {
    let mut root =
        cloudevents::root_from_json(doc).map_err(|err| from_validation(&err, prefix, |_| None))?;
    if root.traceparent.is_none()
        && let Some(traceparent) = header_text(headers, TRACEPARENT)?
    {
        root = root.with_traceparent(traceparent);
    }
    root.into_event()
        .map_err(|err| from_validation(&err, prefix, |_| None))
}

/// Attributes whose header text stands for a number.
const NUMERIC: [&str; 2] = ["depth", "tokensused"];

/// A binary-mode CloudEvent, read by turning it into the structured document it stands for.
fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Event, Problem> {
    let mut doc = Map::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let text = value
            .to_str()
            .ok()
            .and_then(|text| {
                percent_encoding::percent_decode_str(text)
                    .decode_utf8()
                    .ok()
            })
            .ok_or_else(|| {
                Problem::invalid(
                    name.as_str(),
                    format!("{name}: is not percent-encoded UTF-8"),
                )
            })?;
        let value = match text.parse::<u64>() {
            Ok(number) if NUMERIC.contains(&attribute) => Value::from(number),
            _ => Value::from(text.into_owned()),
        };
        doc.insert(attribute.to_string(), value);
    }
    let content_type = header_text(headers, header::CONTENT_TYPE.as_str())?;
    if let Some(content_type) = content_type {
        doc.insert("datacontenttype".into(), Value::from(content_type));
    }
    if !doc.contains_key("traceparent")
        && let Some(traceparent) = header_text(headers, TRACEPARENT)?
    {
        doc.insert("traceparent".into(), Value::from(traceparent));
    }
    if !body.is_empty() {
        let data = match content_type {
            Some(content_type) if !is_json(content_type) => {
                ("data_base64", Value::from(BASE64.encode(body)))
            }
            _ => (
                "data",
                json_body(body, content_type.unwrap_or("application/json"))?,
            ),
        };
        doc.insert(data.0.into(), data.1);
    }
    let in_headers = |field: &str| {
        Some(match field {
            "data" | "data_base64" => "body".to_string(),
            "datacontenttype" => "Content-Type".to_string(),
            "cloudevent" => "ce-specversion".to_string(),
            other => format!("ce-{other}"),
        })
    };
    let root = cloudevents::root_from_json(&Value::Object(doc))
        .map_err(|err| from_validation(&err, "", in_headers))?;
    root.into_event()
        .map_err(|err| from_validation(&err, "", in_headers))
}

fn json_body(body: &[u8], content_type: &str) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|err| {
        Problem::new(
            Kind::MalformedBody,
            format!("the body is not JSON, as {content_type} says it is: {err}"),
        )
        .field("body")
    })
}

/// A header as text; a header that is not is the client's mistake, named.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Problem> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| Problem::invalid(name, format!("{name}: is not visible ASCII text")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    fn one(intake: Intake) -> Event {
        assert_eq!(intake.events.len(), 1);
        intake.events.into_iter().next().expect("one")
    }

    const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_plain_event_takes_its_id_from_the_idempotency_key_and_its_source_from_the_client() {
        let body =
            json!({"type": "review.requested", "data": {"diff": "+a"}, "correlation_id": "run-1"});
        let intake = read(
            &headers(&[
                ("content-type", "application/json; charset=utf-8"),
                ("idempotency-key", "key-1"),
                ("traceparent", TRACE),
            ]),
            body.to_string().as_bytes(),
            "ci",
        )
        .expect("valid");
        assert_eq!(intake.mode, Mode::Event);
        let event = one(intake);
        assert_eq!(event.id, "key-1");
        assert_eq!(event.r#type, "review.requested");
        assert_eq!(event.source, "ci");
        assert_eq!(event.correlation_id, "run-1");
        assert_eq!(event.traceparent, TRACE);
        assert_eq!(
            serde_json::from_slice::<Value>(&event.data).expect("json"),
            json!({"diff": "+a"})
        );
    }

    #[test]
    fn plain_events_name_the_field_at_fault() {
        let json_headers = headers(&[("content-type", "application/json")]);
        let cases = [
            (json!({"data": {}}), "type"),
            (json!({"type": 7}), "type"),
            (json!({"type": "a..b"}), "type"),
            (json!({"type": "a.b", "correlation": "x"}), "correlation"),
            (
                json!({"type": "a.b", "correlation_id": "has space"}),
                "correlation_id",
            ),
            (json!(["a"]), "body"),
        ];
        for (body, field) in cases {
            let problem =
                read(&json_headers, body.to_string().as_bytes(), "ci").expect_err("invalid");
            assert_eq!(problem.field.as_deref(), Some(field), "{body}: {problem:?}");
            assert_eq!(problem.status, 400);
        }
        let bad_key = headers(&[
            ("content-type", "application/json"),
            ("idempotency-key", "a b"),
        ]);
        let problem = read(&bad_key, br#"{"type":"a.b"}"#, "ci").expect_err("bad key");
        assert_eq!(problem.field.as_deref(), Some("Idempotency-Key"));
        let problem = read(&json_headers, b"{not json", "ci").expect_err("not json");
        assert_eq!(problem.kind, Kind::MalformedBody);
    }

    #[test]
    fn a_structured_cloudevent_is_read_whole() {
        let doc = json!({
            "specversion": "1.0", "id": "ce-1", "source": "ci/pipeline", "type": "build.done",
            "correlationid": "run-9", "data": {"ok": true}, "region": "eu"
        });
        let event = one(read(
            &headers(&[("content-type", CLOUDEVENT), ("traceparent", TRACE)]),
            doc.to_string().as_bytes(),
            "ci",
        )
        .expect("valid"));
        assert_eq!(
            (
                event.id.as_str(),
                event.source.as_str(),
                event.correlation_id.as_str()
            ),
            ("ce-1", "ci/pipeline", "run-9")
        );
        assert_eq!(event.attributes["region"], "eu");
        assert_eq!(
            event.traceparent, TRACE,
            "from the header when the event has none"
        );
    }

    #[test]
    fn a_binary_cloudevent_maps_headers_to_attributes_and_the_body_to_data() {
        let event = one(read(
            &headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "ce-2"),
                ("ce-source", "sensor"),
                ("ce-type", "reading.taken"),
                ("ce-correlationid", "run-3"),
                ("ce-depth", "0"),
                ("ce-note", "caf%C3%A9"),
                ("content-type", "text/plain"),
                ("traceparent", TRACE),
            ]),
            b"21.5 C",
            "ci",
        )
        .expect("valid"));
        assert_eq!(event.id, "ce-2");
        assert_eq!(event.correlation_id, "run-3");
        assert_eq!(event.content_type, "text/plain");
        assert_eq!(&event.data[..], b"21.5 C");
        assert_eq!(event.attributes["note"], "café", "percent-decoded");
        assert_eq!(event.traceparent, TRACE);
    }

    #[test]
    fn binary_mode_problems_name_the_header() {
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-id", "x"),
            ("ce-source", "s"),
        ];
        let missing_type = read(&headers(&base), b"", "ci").expect_err("no type");
        assert_eq!(missing_type.field.as_deref(), Some("ce-type"));
        let mut caused = base.to_vec();
        caused.extend([("ce-type", "a.b"), ("ce-causationid", "c")]);
        let problem = read(&headers(&caused), b"", "ci").expect_err("causation");
        assert_eq!(problem.field.as_deref(), Some("ce-causationid"));
        let mut json_body = base.to_vec();
        json_body.extend([("ce-type", "a.b"), ("content-type", "application/json")]);
        let problem = read(&headers(&json_body), b"{oops", "ci").expect_err("bad json");
        assert_eq!(problem.kind, Kind::MalformedBody);
    }

    #[test]
    fn a_batch_is_validated_whole_and_problems_name_the_index() {
        let good = json!({"specversion": "1.0", "id": "b-1", "source": "s", "type": "a.b"});
        let bad = json!({"specversion": "1.0", "id": "b-2", "source": "s"});
        let batch_headers = headers(&[("content-type", CLOUDEVENTS_BATCH)]);
        let intake = read(
            &batch_headers,
            json!([good, good.clone()]).to_string().as_bytes(),
            "ci",
        )
        .expect("valid");
        assert_eq!((intake.mode, intake.events.len()), (Mode::Batch, 2));
        let problem = read(
            &batch_headers,
            json!([good, bad]).to_string().as_bytes(),
            "ci",
        )
        .expect_err("second bad");
        assert_eq!(problem.field.as_deref(), Some("[1].type"));
        let problem = read(&batch_headers, b"[]", "ci").expect_err("empty");
        assert_eq!(problem.field.as_deref(), Some("body"));
    }

    /// Found by the contract's fuzzing: a malformed `Idempotency-Key` or `traceparent` sent with a
    /// CloudEvent was ignored, and the event accepted. A key must be the CloudEvent's id; a batch
    /// takes none.
    #[test]
    fn headers_sent_with_a_cloudevent_are_checked_even_where_the_event_has_its_own() {
        let doc = json!({"specversion": "1.0", "id": "ce-1", "source": "ci", "type": "a.b"});
        let with_key = |content_type, key, body: &Value| {
            read(
                &headers(&[("content-type", content_type), ("idempotency-key", key)]),
                body.to_string().as_bytes(),
                "ci",
            )
        };
        with_key(CLOUDEVENT, "ce-1", &doc).expect("the same id");
        for (content_type, key, body) in [
            (CLOUDEVENT, "ce-2", doc.clone()),
            (CLOUDEVENT, "a b", doc.clone()),
            (CLOUDEVENTS_BATCH, "ce-1", json!([doc])),
        ] {
            let problem = with_key(content_type, key, &body).expect_err(key);
            assert_eq!(
                problem.field.as_deref(),
                Some("Idempotency-Key"),
                "{problem:?}"
            );
        }
        // Ignored when the CloudEvent has its own trace context, but refused when malformed.
        let mut traced = doc;
        traced["traceparent"] = json!(TRACE);
        let problem = read(
            &headers(&[("content-type", CLOUDEVENT), ("traceparent", "00-zz")]),
            traced.to_string().as_bytes(),
            "ci",
        )
        .expect_err("a malformed traceparent");
        assert_eq!(problem.field.as_deref(), Some("traceparent"));
    }

    #[test]
    fn other_content_types_are_refused_saying_what_is_read() {
        let problem = read(
            &headers(&[("content-type", "application/x-www-form-urlencoded")]),
            b"a=b",
            "ci",
        )
        .expect_err("form");
        assert_eq!(problem.status, 415);
        assert!(problem.detail.contains(CLOUDEVENT), "{}", problem.detail);
        let problem = read(&HeaderMap::new(), b"{}", "ci").expect_err("none");
        assert!(
            problem.detail.contains("no Content-Type"),
            "{}",
            problem.detail
        );
    }
}
