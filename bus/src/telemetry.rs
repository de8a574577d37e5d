//! Log output for binaries: human-readable or JSON lines, chosen by environment.
//!
//! - `CHOREO_LOG_FORMAT`: `human` (default) or `json` (one JSON object per line, with the
//!   current span's fields: agent, event id, type, correlation and causation ids).
//! - `RUST_LOG`: the usual filter, default `info`.
//!
//! The runtime opens one span, `handle`, per handled event; everything logged while handling
//! carries its fields.

use tracing_subscriber::EnvFilter;

/// The variables above, for the end of a binary's `--help`.
pub const ENV_HELP: &str = "Logs (environment): CHOREO_LOG_FORMAT=human|json [default: human], \
                            RUST_LOG=FILTER [default: info]";

/// `CHOREO_LOG_FORMAT` held something other than `human` or `json`.
#[derive(Debug, thiserror::Error)]
#[error("CHOREO_LOG_FORMAT={0:?}: use human or json")]
pub struct LogFormatError(pub String);

/// Installs the global subscriber. Calling it twice is harmless (the first one stays).
pub fn init() -> Result<(), LogFormatError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("CHOREO_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format.as_str() {
        "" | "human" => builder.try_init(),
        "json" => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        other => return Err(LogFormatError(other.to_string())),
    };
    Ok(())
}
