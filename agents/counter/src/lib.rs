//! `counter`: the first step of the demo choreography. On `text.submitted` it counts the text's
//! words, lines and characters and emits `text.counted`.

use choreo_bus::{Emit, EventType, HandlerError, Incoming, ValidationError};
use serde::{Deserialize, Serialize};

pub const SUBMITTED: &str = "text.submitted";
pub const COUNTED: &str = "text.counted";

/// The payload of `text.submitted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub text: String,
}

/// The payload of `text.counted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counted {
    pub words: usize,
    pub lines: usize,
    pub chars: usize,
}

pub fn agent() -> Result<choreo_bus::Agent, ValidationError> {
    choreo_bus::Agent::builder("counter")
        .subscribes(SUBMITTED)
        .emits(COUNTED)
        .build()
}

pub fn count(text: &str) -> Counted {
    Counted {
        words: text.split_whitespace().count(),
        lines: text.lines().count(),
        chars: text.chars().count(),
    }
}

/// Handles `text.submitted`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Handler;

impl choreo_bus::Handler for Handler {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        let submitted: Submitted = event.json()?;
        let counted = EventType::new(COUNTED).map_err(HandlerError::permanent)?;
        let emit = Emit::json(counted, &count(&submitted.text)).map_err(HandlerError::permanent)?;
        Ok(vec![emit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_bus::Handler as _;

    fn incoming(data: &str) -> Incoming {
        let emit = Emit::new(
            EventType::new(SUBMITTED).unwrap(),
            "application/json",
            data.as_bytes().to_vec().into(),
        );
        Incoming {
            event: choreo_bus::RootEvent::new(emit, "test")
                .into_event()
                .unwrap(),
            delivery: 1,
            stream_sequence: 1,
        }
    }

    #[tokio::test]
    async fn counts_words_lines_and_chars() {
        let emitted = Handler
            .handle(&incoming(r#"{"text": "one two\nthree é"}"#))
            .await
            .unwrap();
        assert_eq!(emitted.len(), 1);
        assert_eq!(emitted[0].event_type.as_str(), COUNTED);
        let counted: Counted = serde_json::from_slice(&emitted[0].data).unwrap();
        assert_eq!(
            counted,
            Counted {
                words: 4,
                lines: 2,
                chars: 15
            }
        );
    }

    #[tokio::test]
    async fn a_payload_without_text_is_rejected_for_good() {
        let err = Handler
            .handle(&incoming(r#"{"body": 1}"#))
            .await
            .unwrap_err();
        assert!(!err.is_retryable(), "{err}");
    }
}
