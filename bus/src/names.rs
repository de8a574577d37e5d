//! Validated names: event types, agent names, namespaces and ids.
//!
//! Every one of them ends up in a NATS subject or a consumer name, where `.`, `*`, `>` and white
//! space change the meaning. Validating at the edge turns a subject that would silently match
//! the wrong events into an error that names the field.

use std::fmt;

/// Longest id (event or correlation) accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest event type accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 256;
/// Longest agent name accepted, in bytes (a JetStream consumer name).
pub const MAX_AGENT_NAME_LEN: usize = 64;

/// A value was refused: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// The field as a user would name it, e.g. `type` or `correlation_id`.
    pub field: &'static str,
    /// What is wrong with it and what would be accepted.
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ValidationError {
            field,
            reason: reason.into(),
        }
    }
}

/// True for the characters allowed in one subject token: ASCII letters, digits, `-` and `_`.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Which bytes may appear in a subject token, as a table: this check runs on every event
/// decoded (three times), and a table lookup per byte is several times cheaper than the
/// comparisons of `is_token_char`.
const TOKEN_BYTES: [bool; 256] = byte_table(b"-_");
/// The same for an event type, whose tokens are joined by dots.
const TYPE_BYTES: [bool; 256] = byte_table(b"-_.");

/// ASCII letters and digits, and `extra`.
const fn byte_table(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = (byte as u8).is_ascii_alphanumeric();
        byte += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// Whether every byte of `value` is allowed by `table`. Without an early exit, so the loop has
/// no branch per byte; a bad value is rare and short.
fn all_bytes_in(value: &str, table: &[bool; 256]) -> bool {
    value
        .bytes()
        .fold(true, |allowed, byte| allowed & table[usize::from(byte)])
}

/// Checks one subject token: non-empty, at most `max` bytes, only `[A-Za-z0-9_-]`.
fn check_token(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes long; the limit is {max}", value.len()),
        ));
    }
    if all_bytes_in(value, &TOKEN_BYTES) {
        return Ok(());
    }
    if let Some(bad) = value.chars().find(|c| !is_token_char(*c)) {
        return Err(ValidationError::new(
            field,
            format!(
                "{value:?} contains {bad:?}; only ASCII letters, digits, '-' and '_' are allowed"
            ),
        ));
    }
    Ok(())
}

/// Checks an event id or correlation id (one subject token).
pub fn validate_id(field: &'static str, value: &str) -> Result<(), ValidationError> {
    check_token(field, value, MAX_ID_LEN)
}

/// Checks a free-text field that is never part of a subject (e.g. `source`): non-empty, short,
/// and free of control characters so it prints on one line.
pub fn validate_label(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > MAX_TYPE_LEN {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes long; the limit is {MAX_TYPE_LEN}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A dotted event type such as `review.requested`: one or more subject-safe tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(String);

impl EventType {
    pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        validate_type(&value)?;
        Ok(EventType(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<EventType> for String {
    fn from(event_type: EventType) -> String {
        event_type.0
    }
}

impl TryFrom<&str> for EventType {
    type Error = ValidationError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        EventType::new(value)
    }
}

/// Checks a dotted event type.
pub fn validate_type(value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new("type", "must not be empty"));
    }
    if value.len() > MAX_TYPE_LEN {
        return Err(ValidationError::new(
            "type",
            format!("is {} bytes long; the limit is {MAX_TYPE_LEN}", value.len()),
        ));
    }
    // Dotted tokens, checked in one pass; the token by token walk below names what is wrong.
    if all_bytes_in(value, &TYPE_BYTES)
        && !value.starts_with('.')
        && !value.ends_with('.')
        && !value.contains("..")
    {
        return Ok(());
    }
    for token in value.split('.') {
        if token.is_empty() {
            return Err(ValidationError::new(
                "type",
                format!("{value:?} has an empty token; write dotted words like review.requested"),
            ));
        }
        check_token("type", token, MAX_TYPE_LEN)?;
    }
    Ok(())
}

/// An agent's name: its durable consumer name, its span name and its events' `source`.
/// Renaming an agent gives it a new consumer, which reads the stream from the start.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentName(String);

impl AgentName {
    pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        check_token("agent name", &value, MAX_AGENT_NAME_LEN)?;
        Ok(AgentName(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first subject token of every event. A replay can run a copy of a run under another
/// namespace without touching the production subjects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "events";

impl Namespace {
    pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        check_token("namespace", &value, 32)?;
        if value.starts_with(|c: char| !c.is_ascii_lowercase())
            || value.chars().any(|c| c.is_ascii_uppercase())
        {
            return Err(ValidationError::new(
                "namespace",
                format!("{value:?} must be lower case and start with a letter, like `events`"),
            ));
        }
        Ok(Namespace(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stream that holds this namespace's events: `EVENTS` for the default namespace,
    /// `EVENTS_<NAMESPACE>` for the others, so a sandbox never shares a stream with production.
    pub fn stream_name(&self) -> String {
        if self.0 == DEFAULT_NAMESPACE {
            "EVENTS".to_string()
        } else {
            format!("EVENTS_{}", self.0.to_ascii_uppercase())
        }
    }

    /// The subject of one event: `<ns>.<correlation_id>.<type tokens>`.
    pub fn event_subject(&self, correlation_id: &str, event_type: &str) -> String {
        // Pushed rather than formatted: this runs for every event published.
        let mut subject =
            String::with_capacity(self.0.len() + correlation_id.len() + event_type.len() + 2);
        for part in [self.0.as_str(), ".", correlation_id, ".", event_type] {
            subject.push_str(part);
        }
        subject
    }

    /// The filter that matches one event type in every correlation.
    pub fn type_filter(&self, event_type: &EventType) -> String {
        format!("{}.*.{event_type}", self.0)
    }

    /// The filter that matches every event of one correlation.
    pub fn correlation_filter(&self, correlation_id: &str) -> String {
        format!("{}.{correlation_id}.>", self.0)
    }

    /// Everything in this namespace.
    pub fn all_events(&self) -> String {
        format!("{}.>", self.0)
    }

    /// The correlation id in an event subject, read without decoding the payload.
    pub fn correlation_of_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(self.0.as_str())?.strip_prefix('.')?;
        rest.split('.').next().filter(|token| !token.is_empty())
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace(DEFAULT_NAMESPACE.to_string())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a NATS subject filter (`*` one token, `>` the rest) matches a subject.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for filter_token in filter.split('.') {
        match (filter_token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (expected, Some(token)) if expected == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_dotted_subject_safe_tokens() {
        assert!(EventType::new("review.requested").is_ok());
        assert!(EventType::new("finding.reported-v2").is_ok());
        for bad in [
            "",
            "review..requested",
            ".review",
            "review.",
            "a.*",
            "a.>",
            "a b",
            "é",
        ] {
            let err = EventType::new(bad).expect_err(bad);
            assert_eq!(err.field, "type", "{bad}");
        }
    }

    #[test]
    fn the_byte_tables_allow_exactly_the_token_characters() {
        for byte in 0..=u8::MAX {
            let token_char = is_token_char(char::from(byte));
            assert_eq!(TOKEN_BYTES[usize::from(byte)], token_char, "{byte:#x}");
            assert_eq!(
                TYPE_BYTES[usize::from(byte)],
                token_char || byte == b'.',
                "{byte:#x}"
            );
        }
    }

    #[test]
    fn ids_are_single_tokens() {
        assert!(validate_id("correlation_id", "01JD-abc_9").is_ok());
        let err = validate_id("correlation_id", "a.b").expect_err("dot");
        assert_eq!(err.field, "correlation_id");
        assert!(err.reason.contains("'.'"), "{}", err.reason);
        assert!(validate_id("id", &"x".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn labels_refuse_control_characters() {
        assert!(validate_label("source", "github webhook").is_ok());
        assert!(validate_label("source", "a\nb").is_err());
        assert!(validate_label("source", "  ").is_err());
    }

    #[test]
    fn namespace_names_its_stream_and_subjects() {
        let ns = Namespace::default();
        assert_eq!(ns.stream_name(), "EVENTS");
        assert_eq!(
            ns.event_subject("c1", "review.requested"),
            "events.c1.review.requested"
        );
        let sandbox = Namespace::new("sandbox1").expect("valid");
        assert_eq!(sandbox.stream_name(), "EVENTS_SANDBOX1");
        assert_eq!(
            sandbox.type_filter(&EventType::new("a.b").expect("valid")),
            "sandbox1.*.a.b"
        );
        assert!(Namespace::new("Events").is_err());
        assert!(Namespace::new("1events").is_err());
    }

    #[test]
    fn filters_match_subjects_as_nats_does() {
        assert!(subject_matches("events.*.a.b", "events.c1.a.b"));
        assert!(subject_matches("events.*.a.>", "events.c1.a.b.c"));
        assert!(subject_matches("events.>", "events.c1.a"));
        assert!(!subject_matches("events.*.a.>", "events.c1.a"));
        assert!(!subject_matches("events.*.a", "events.c1.a.b"));
        assert!(!subject_matches("events.*.a.b", "events.c1.a"));
        assert!(!subject_matches("events.c2.>", "events.c1.a"));
    }

    #[test]
    fn correlation_is_read_from_the_subject() {
        let ns = Namespace::default();
        assert_eq!(ns.correlation_of_subject("events.c1.a.b"), Some("c1"));
        assert_eq!(ns.correlation_of_subject("other.c1.a.b"), None);
        assert_eq!(ns.correlation_of_subject("eventsx.c1.a"), None);
    }
}
