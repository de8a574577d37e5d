//! `reporter`: the second step of the demo choreography. On `text.counted` it writes a one-line
//! summary and emits `report.written`, which ends the run.

use choreo_bus::{Emit, EventType, HandlerError, Incoming, ValidationError};
use serde::{Deserialize, Serialize};

pub const COUNTED: &str = "text.counted";
pub const WRITTEN: &str = "report.written";

/// What `reporter` reads from `text.counted` (the fields it needs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Counted {
    pub words: usize,
    pub lines: usize,
}

/// The payload of `report.written`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub summary: String,
}

pub fn agent() -> Result<choreo_bus::Agent, ValidationError> {
    choreo_bus::Agent::builder("reporter")
        .subscribes(COUNTED)
        .emits(WRITTEN)
        .build()
}

pub fn summarize(counted: &Counted) -> Report {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    Report {
        summary: format!(
            "{} in {}",
            plural(counted.words, "word", "words"),
            plural(counted.lines, "line", "lines")
        ),
    }
}

/// Handles `text.counted`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Handler;

impl choreo_bus::Handler for Handler {
    async fn handle(&self, event: &Incoming) -> Result<Vec<Emit>, HandlerError> {
        let counted: Counted = event.json()?;
        let written = EventType::new(WRITTEN).map_err(HandlerError::permanent)?;
        let emit = Emit::json(written, &summarize(&counted)).map_err(HandlerError::permanent)?;
        Ok(vec![emit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_read_naturally() {
        assert_eq!(
            summarize(&Counted { words: 1, lines: 1 }).summary,
            "1 word in 1 line"
        );
        assert_eq!(
            summarize(&Counted {
                words: 12,
                lines: 3
            })
            .summary,
            "12 words in 3 lines"
        );
    }
}
