//! `choreo publish`: events from the command line, a CloudEvents document, or a JSON-lines
//! file. Every event is validated before the first is sent, so a bad line publishes nothing.

use std::io::Read;
use std::path::Path;

use choreo_bus::{Emit, Event, EventType, Publisher, RootEvent, cloudevents};
use serde_json::Value;

use crate::Failure;
use crate::connection::Connection;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["event_type", "cloudevent", "jsonl"])))]
pub struct PublishArgs {
    /// The event type, e.g. `review.requested`.
    #[arg(value_name = "TYPE")]
    event_type: Option<String>,
    /// The payload: JSON, `@file` for a file, or `-` for standard input.
    #[arg(long, default_value = "{}", requires = "event_type")]
    data: String,
    /// Add the event to this run instead of starting a new one.
    #[arg(long)]
    correlation: Option<String>,
    /// The event id (also its deduplication key); a fresh UUIDv7 if not given.
    #[arg(long)]
    id: Option<String>,
    /// Who is publishing.
    #[arg(long, default_value = "cli")]
    source: String,
    /// Publish a CloudEvents 1.0 JSON document from this file (`-` for standard input).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["event_type", "jsonl"])]
    cloudevent: Option<String>,
    /// Publish many events from a JSON-lines file (`-` for standard input): each line is a
    /// CloudEvent, or {"type": .., "data": .., "correlation": .., "id": ..}.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["event_type", "cloudevent"])]
    jsonl: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: PublishArgs) -> Result<(), Failure> {
    let events = events_of(&args)?;
    let publisher = Publisher::new(
        args.connection.jetstream().await?,
        args.connection.namespace()?,
    );
    let failed = |err, event: &Event| {
        let failure = Failure::publish(err);
        if failure.code == Failure::UNAVAILABLE {
            failure.hint(retry_hint(&args, event))
        } else {
            failure
        }
    };
    let mut pending = Vec::with_capacity(events.len());
    for event in &events {
        pending.push(
            publisher
                .send_event(event)
                .await
                .map_err(|err| failed(err, event))?,
        );
    }
    for (sent, event) in pending.into_iter().zip(&events) {
        let stored = sent.confirmed().await.map_err(|err| failed(err, event))?;
        let note = if stored.duplicate {
            "  (already stored: not published again)"
        } else {
            ""
        };
        println!("event {}  run {}{note}", event.id, event.correlation_id);
    }
    Ok(())
}

/// How to publish `event` again so that it is stored once even if the failed attempt stored it:
/// with the same id, which the stream deduplicates.
fn retry_hint(args: &PublishArgs, event: &Event) -> String {
    if args.jsonl.is_some() {
        "publishing the file again stores each line that has an \"id\" once".to_string()
    } else if args.cloudevent.is_some() || args.id.is_some() {
        format!(
            "publishing it again stores it once (its id is {})",
            event.id
        )
    } else {
        format!("publish it again with --id {} to store it once", event.id)
    }
}

/// Every event the arguments describe, validated.
fn events_of(args: &PublishArgs) -> Result<Vec<Event>, Failure> {
    if let Some(path) = &args.cloudevent {
        let text = read_input(path)?;
        let document: Value = serde_json::from_str(&text)
            .map_err(|err| Failure::data(format!("{path} is not JSON: {err}")))?;
        let root = cloudevents::root_from_json(&document).map_err(Failure::data)?;
        return Ok(vec![root.into_event().map_err(Failure::data)?]);
    }
    if let Some(path) = &args.jsonl {
        let text = read_input(path)?;
        return text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(number, line)| {
                line_event(line, &args.source).map_err(|err| {
                    Failure::data(format!(
                        "{path} line {}: {err}; nothing was published",
                        number + 1
                    ))
                })
            })
            .collect();
    }
    let event_type = args.event_type.as_deref().unwrap_or_default();
    let data = read_data(&args.data)?;
    let mut root = RootEvent::new(
        emit(event_type, &data).map_err(Failure::data)?,
        &args.source,
    );
    if let Some(id) = &args.id {
        root = root.with_id(id);
    }
    if let Some(correlation) = &args.correlation {
        root = root.with_correlation_id(correlation);
    }
    Ok(vec![root.into_event().map_err(Failure::data)?])
}

fn emit(event_type: &str, data: &Value) -> Result<Emit, String> {
    let event_type = EventType::new(event_type).map_err(|err| err.to_string())?;
    Emit::json(event_type, data).map_err(|err| err.to_string())
}

/// One line of a JSON-lines file as an event.
fn line_event(line: &str, source: &str) -> Result<Event, String> {
    let value: Value = serde_json::from_str(line).map_err(|err| format!("not JSON: {err}"))?;
    if value.get("specversion").is_some() {
        let root = cloudevents::root_from_json(&value).map_err(|err| err.to_string())?;
        return root.into_event().map_err(|err| err.to_string());
    }
    let text = |name: &str| value.get(name).and_then(Value::as_str);
    let event_type = text("type").ok_or("missing \"type\"")?;
    let data = value
        .get("data")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let mut root = RootEvent::new(emit(event_type, &data)?, text("source").unwrap_or(source));
    if let Some(id) = text("id") {
        root = root.with_id(id);
    }
    if let Some(correlation) = text("correlation") {
        root = root.with_correlation_id(correlation);
    }
    root.into_event().map_err(|err| err.to_string())
}

/// `--data`: literal JSON, `@file`, or `-`.
fn read_data(value: &str) -> Result<Value, Failure> {
    let (text, origin) = match value.strip_prefix('@') {
        Some(path) => (read_input(path)?, path.to_string()),
        None if value == "-" => (read_input("-")?, "standard input".to_string()),
        None => (value.to_string(), "--data".to_string()),
    };
    serde_json::from_str(&text).map_err(|err| {
        Failure::data(format!(
            "the payload in {origin} is not JSON ({err}); quote it for the shell, e.g. --data '{{\"text\": \"hi\"}}'"
        ))
    })
}

pub fn read_input(path: &str) -> Result<String, Failure> {
    if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|err| Failure::no_input(format!("cannot read standard input: {err}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(Path::new(path))
        .map_err(|err| Failure::no_input(format!("cannot read {path}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_a_cloudevent_or_a_short_form() {
        let short = line_event(
            r#"{"type": "a.b", "data": {"x": 1}, "correlation": "run-1"}"#,
            "cli",
        )
        .expect("short form");
        assert_eq!(short.r#type, "a.b");
        assert_eq!(short.correlation_id, "run-1");
        assert_eq!(&short.data[..], br#"{"x":1}"#);
        let cloud = line_event(
            r#"{"specversion": "1.0", "id": "e1", "source": "ci", "type": "a.b"}"#,
            "cli",
        )
        .expect("cloudevent");
        assert_eq!((cloud.id.as_str(), cloud.source.as_str()), ("e1", "ci"));
        assert!(
            line_event("{", "cli")
                .expect_err("bad")
                .contains("not JSON")
        );
        assert!(
            line_event(r#"{"data": 1}"#, "cli")
                .expect_err("bad")
                .contains("type")
        );
        assert!(
            line_event(r#"{"type": "a..b"}"#, "cli")
                .expect_err("bad")
                .contains("type")
        );
    }
}
