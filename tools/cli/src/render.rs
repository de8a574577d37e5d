//! How one event is printed by `tail` and `replay`: a line for people, or a CloudEvent per line
//! with `--json`.

use choreo_bus::log::LogRecord;
use choreo_bus::{Event, cloudevents};

use crate::time_arg::format_time;

/// One line for `event`, stored as `record`.
pub fn event_line(record: &LogRecord, event: &Event, json: bool) -> String {
    if json {
        let mut value = cloudevents::to_json(event);
        if let Some(object) = value.as_object_mut() {
            object.insert("sequence".into(), record.sequence.into());
        }
        return value.to_string();
    }
    format!(
        "{}  #{:<6} {}  d{}  {:<28} {:<16} {}",
        format_time(record.time),
        record.sequence,
        event.correlation_id,
        event.depth,
        event.r#type,
        event.source,
        event.id
    )
}

/// The line for a record whose bytes are not an event.
pub fn undecodable_line(record: &LogRecord, error: &str, json: bool) -> String {
    if json {
        serde_json::json!({"sequence": record.sequence, "subject": record.subject, "error": error})
            .to_string()
    } else {
        format!(
            "{}  #{:<6} {}  (not an event: {error})",
            format_time(record.time),
            record.sequence,
            record.subject
        )
    }
}

/// The server-side filter for a namespace, run and type, any of which may be absent.
pub fn subject_filter(
    namespace: &choreo_bus::Namespace,
    correlation: Option<&str>,
    event_type: Option<&str>,
) -> String {
    format!(
        "{namespace}.{}.{}",
        correlation.unwrap_or("*"),
        event_type.unwrap_or(">")
    )
}
