//! CloudEvents 1.0 (JSON format) to and from the envelope.
//!
//! | CloudEvents | envelope |
//! |---|---|
//! | `id`, `source`, `type`, `time` | `id`, `source`, `type`, `time` |
//! | `datacontenttype` | `content_type` (default `application/json`) |
//! | `data` (JSON) or `data_base64` | `data` bytes |
//! | `correlationid`, `causationid` (correlation extension) | `correlation_id`, `causation_id` |
//! | `depth` | `depth` |
//! | `traceparent` (distributed-tracing extension) | `traceparent` |
//! | `tokensused` | `tokens_used` |
//! | `subject`, `dataschema` | `attributes["subject"]`, `attributes["dataschema"]` |
//! | any other extension | `attributes` |
//!
//! Events coming in from outside are roots: a `causationid` or a non-zero `depth` is refused,
//! because the runtime alone says what caused what.
//!
//! `subject` and `dataschema` are kept as attributes under their own names rather than as
//! envelope fields: nothing in the bus acts on them, the envelope stays as it is for clients
//! already built on it, and `attributes` is where CloudEvents attributes without a field of
//! their own go. They come back out as the attributes they were. Both are checked as
//! CloudEvents says: a non-empty string, and for `dataschema` an absolute URI.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use choreo_proto::v1::Event;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::envelope::{self, Emit, JSON, RootEvent};
use crate::names::{EventType, ValidationError, validate_label};

/// The attributes this mapping gives a meaning; everything else is an extension.
const KNOWN: [&str; 14] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "data",
    "data_base64",
    "correlationid",
    "causationid",
    "depth",
    "traceparent",
];

/// The CloudEvents `subject` attribute, kept in `attributes` under this name.
pub const SUBJECT: &str = "subject";
/// The CloudEvents `dataschema` attribute, kept in `attributes` under this name.
pub const DATASCHEMA: &str = "dataschema";

/// Whether `text` is an absolute URI: a scheme (a letter, then letters, digits, `+`, `-`,
/// `.`), a colon, and something after it, with no white space.
fn is_absolute_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !text.chars().any(char::is_whitespace)
}

/// An event as a CloudEvents JSON object.
pub fn to_json(event: &Event) -> Value {
    let mut object = Map::new();
    object.insert("specversion".into(), json!("1.0"));
    object.insert("id".into(), json!(event.id));
    object.insert("source".into(), json!(event.source));
    object.insert("type".into(), json!(event.r#type));
    if let Some(time) = envelope::event_time(event).and_then(|t| t.format(&Rfc3339).ok()) {
        object.insert("time".into(), json!(time));
    }
    object.insert("datacontenttype".into(), json!(event.content_type));
    object.insert("correlationid".into(), json!(event.correlation_id));
    if !event.causation_id.is_empty() {
        object.insert("causationid".into(), json!(event.causation_id));
    }
    object.insert("depth".into(), json!(event.depth));
    if !event.traceparent.is_empty() {
        object.insert("traceparent".into(), json!(event.traceparent));
    }
    if event.tokens_used > 0 {
        object.insert("tokensused".into(), json!(event.tokens_used));
    }
    for (key, value) in &event.attributes {
        object.entry(key.clone()).or_insert_with(|| json!(value));
    }
    match data_as_json(event) {
        Some(data) => object.insert("data".into(), data),
        None if event.data.is_empty() => None,
        None => object.insert("data_base64".into(), json!(BASE64.encode(&event.data))),
    };
    Value::Object(object)
}

/// The payload as JSON, when it is JSON.
pub fn data_as_json(event: &Event) -> Option<Value> {
    if is_json(&event.content_type) {
        serde_json::from_slice(&event.data).ok()
    } else if event.content_type.starts_with("text/") {
        std::str::from_utf8(&event.data)
            .ok()
            .map(|text| json!(text))
    } else {
        None
    }
}

/// Whether a media type is JSON (`application/json` or any `+json`), parameters aside.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence == JSON || essence.ends_with("+json")
}

/// A CloudEvents JSON object as a root event to publish.
pub fn root_from_json(value: &Value) -> Result<RootEvent, ValidationError> {
    let object = value.as_object().ok_or_else(|| {
        ValidationError::new(
            "cloudevent",
            "must be a JSON object with specversion, id, source and type",
        )
    })?;
    let text = |name: &'static str| -> Result<Option<&str>, ValidationError> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(_) => Err(ValidationError::new(name, "must be a string")),
        }
    };
    let required = |name: &'static str| -> Result<&str, ValidationError> {
        text(name)?.ok_or_else(|| ValidationError::new(name, "is required in a CloudEvent"))
    };
    let context = |name: &'static str| -> Result<Option<&str>, ValidationError> {
        let Some(value) = text(name)? else {
            return Ok(None);
        };
        validate_label(name, value)?;
        Ok(Some(value))
    };
    if required("specversion")? != "1.0" {
        return Err(ValidationError::new(
            "specversion",
            "only CloudEvents 1.0 is supported; set \"specversion\": \"1.0\"",
        ));
    }
    let id = required("id")?;
    let source = required("source")?;
    let event_type = EventType::new(required("type")?)?;
    if text("causationid")?.is_some_and(|c| !c.is_empty()) {
        return Err(ValidationError::new(
            "causationid",
            "an event published from outside starts a chain; its cause is stamped by the \
             agent runtime, never set by hand. Remove causationid",
        ));
    }
    if object.get("depth").is_some_and(|d| d.as_u64() != Some(0)) {
        return Err(ValidationError::new(
            "depth",
            "an event published from outside has depth 0; remove depth",
        ));
    }
    let content_type = text("datacontenttype")?.unwrap_or(JSON).to_string();
    let data =
        match (object.get("data"), text("data_base64")?) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "data",
                    "give data or data_base64, not both",
                ));
            }
            (Some(Value::String(text)), None) if !is_json(&content_type) => {
                Bytes::from(text.clone().into_bytes())
            }
            (Some(data), None) => {
                if !is_json(&content_type) {
                    return Err(ValidationError::new(
                        "data",
                        format!(
                            "is JSON but datacontenttype is {content_type}; use data_base64 for \
                         other content"
                        ),
                    ));
                }
                Bytes::from(serde_json::to_vec(data).map_err(|err| {
                    ValidationError::new("data", format!("cannot be encoded: {err}"))
                })?)
            }
            (None, Some(encoded)) => Bytes::from(BASE64.decode(encoded).map_err(|err| {
                ValidationError::new("data_base64", format!("is not base64: {err}"))
            })?),
            (None, None) => Bytes::new(),
        };
    let mut emit = Emit::new(event_type, content_type, data);
    if let Some(subject) = context(SUBJECT)? {
        emit = emit.attribute(SUBJECT, subject);
    }
    if let Some(schema) = context(DATASCHEMA)? {
        if !is_absolute_uri(schema) {
            return Err(ValidationError::new(
                DATASCHEMA,
                format!("{schema:?} is not an absolute URI (scheme:rest, e.g. https://…)"),
            ));
        }
        emit = emit.attribute(DATASCHEMA, schema);
    }
    if let Some(tokens) = object.get("tokensused") {
        let tokens = tokens
            .as_u64()
            .ok_or_else(|| ValidationError::new("tokensused", "must be a whole number"))?;
        emit = emit.tokens_used(tokens);
    }
    let extensions: BTreeMap<&String, &Value> = object
        .iter()
        .filter(|(key, _)| !KNOWN.contains(&key.as_str()) && key.as_str() != "tokensused")
        .collect();
    for (key, value) in extensions {
        let value = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        emit = emit.attribute(key.clone(), value);
    }
    let mut root = RootEvent::new(emit, source).with_id(id);
    if let Some(correlation) = text("correlationid")? {
        root = root.with_correlation_id(correlation);
    }
    if let Some(traceparent) = text("traceparent")? {
        root = root.with_traceparent(traceparent);
    }
    if let Some(time) = text("time")? {
        let parsed = OffsetDateTime::parse(time, &Rfc3339).map_err(|err| {
            ValidationError::new("time", format!("{time:?} is not RFC 3339: {err}"))
        })?;
        root = root.with_time(parsed);
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        json!({
            "specversion": "1.0",
            "id": "evt-1",
            "source": "ci",
            "type": "review.requested",
            "time": "2026-11-21T10:00:00Z",
            "correlationid": "run-7",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "data": {"diff": "+a"},
            "subject": "refunds.py",
            "dataschema": "https://example.com/schemas/review-request.json",
            "priority": "high"
        })
    }

    #[test]
    fn a_cloudevent_round_trips_through_the_envelope() {
        let event = root_from_json(&document())
            .expect("valid")
            .into_event()
            .expect("valid event");
        assert_eq!(event.id, "evt-1");
        assert_eq!(event.correlation_id, "run-7");
        assert_eq!(event.content_type, JSON);
        assert_eq!(event.attributes["priority"], "high");
        assert_eq!(event.attributes[SUBJECT], "refunds.py");
        assert_eq!(event.attributes[DATASCHEMA], document()["dataschema"]);
        assert_eq!(event.depth, 0);

        let back = to_json(&event);
        for key in [
            "id",
            "source",
            "type",
            "time",
            "correlationid",
            "traceparent",
            "data",
            "subject",
            "dataschema",
            "priority",
        ] {
            assert_eq!(back[key], document()[key], "{key}");
        }
        assert_eq!(back["depth"], json!(0));
    }

    #[test]
    fn binary_data_travels_as_base64() {
        let mut doc = document();
        let object = doc.as_object_mut().expect("object");
        object.remove("data");
        object.insert("datacontenttype".into(), json!("application/octet-stream"));
        object.insert("data_base64".into(), json!(BASE64.encode([0u8, 159, 146])));
        let event = root_from_json(&doc)
            .expect("valid")
            .into_event()
            .expect("event");
        assert_eq!(&event.data[..], &[0u8, 159, 146]);
        assert_eq!(to_json(&event)["data_base64"], doc["data_base64"]);
    }

    #[test]
    fn bad_documents_name_the_field() {
        let cases = [
            (
                "specversion",
                json!({"specversion": "0.3", "id": "a", "source": "s", "type": "t"}),
            ),
            (
                "id",
                json!({"specversion": "1.0", "source": "s", "type": "t"}),
            ),
            (
                "type",
                json!({"specversion": "1.0", "id": "a", "source": "s", "type": "a..b"}),
            ),
            (
                "causationid",
                json!({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "causationid": "x"}),
            ),
            (
                "depth",
                json!({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "depth": 3}),
            ),
            (
                "time",
                json!({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "time": "yesterday"}),
            ),
            (
                "data_base64",
                json!({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "data_base64": "%%"}),
            ),
            (
                "subject",
                json!({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": ""}),
            ),
            (
                "subject",
                json!({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": 7}),
            ),
            (
                "dataschema",
                json!({"specversion": "1.0", "id": "a", "source": "s", "type": "t", "dataschema": "schemas/x.json"}),
            ),
        ];
        for (field, doc) in cases {
            let err = root_from_json(&doc)
                .and_then(RootEvent::into_event)
                .expect_err(field);
            assert_eq!(err.field, field, "{doc}");
        }
    }
}
