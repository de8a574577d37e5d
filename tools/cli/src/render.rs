//! How one event is printed by `tail` and `replay`: a line for people, or a CloudEvent per line
//! with `--json`.

use choreo_bus::log::LogRecord;
use choreo_bus::names::validate_id;
use choreo_bus::{Event, Namespace, cloudevents};

use crate::Failure;

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

/// Which events `tail` and `replay` show.
#[derive(Debug, Clone, clap::Args)]
pub struct EventFilter {
    /// Only this event type (NATS wildcards allowed: `review.>`).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Only this run.
    #[arg(long)]
    pub correlation: Option<String>,
    /// Only events from this source (agent or external system).
    #[arg(long)]
    pub source: Option<String>,
}

impl EventFilter {
    /// The subject filter the server applies: run and type. Checks the run id first.
    pub fn subject(&self, namespace: &Namespace) -> Result<String, Failure> {
        if let Some(correlation) = &self.correlation {
            validate_id("correlation", correlation).map_err(Failure::usage)?;
        }
        Ok(format!(
            "{namespace}.{}.{}",
            self.correlation.as_deref().unwrap_or("*"),
            self.event_type.as_deref().unwrap_or(">")
        ))
    }

    /// What the server cannot filter: the source.
    pub fn admits(&self, event: &Event) -> bool {
        self.source
            .as_ref()
            .is_none_or(|source| *source == event.source)
    }

    /// The line for `record`, or `None` when the filter leaves it out.
    pub fn line(&self, record: &LogRecord, json: bool) -> Option<String> {
        match record.decode() {
            Ok(event) if !self.admits(&event) => None,
            Ok(event) => Some(event_line(record, &event, json)),
            Err(err) => Some(undecodable_line(record, &err.to_string(), json)),
        }
    }
}

/// `text` safe inside HTML text and attribute values, for the pages written by hand (`trace
/// --format html`, `graph --format html`).
pub fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
