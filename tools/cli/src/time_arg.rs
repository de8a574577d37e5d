//! Points in time on the command line: RFC 3339 (`2026-11-21T10:42:00Z`) or a duration ago
//! (`10m`, `2h`, `1d`).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses `value` as a point in time, relative to `now` when it is a duration.
pub fn parse_time(value: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(time) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(time);
    }
    let ago = humantime::parse_duration(value).map_err(|_| {
        format!(
            "{value:?} is not a time: use RFC 3339 like 2026-11-21T10:42:00Z, or a duration ago \
             like 10m, 2h or 1d"
        )
    })?;
    let ago = time::Duration::try_from(ago).map_err(|err| format!("{value:?}: {err}"))?;
    Ok(now - ago)
}

/// For clap: a time relative to when the command started.
pub fn time_value(value: &str) -> Result<OffsetDateTime, String> {
    parse_time(value, OffsetDateTime::now_utc())
}

/// How times are printed.
pub fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_else(|_| time.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_absolute_or_ago() {
        let now = OffsetDateTime::parse("2026-11-21T12:00:00Z", &Rfc3339).expect("valid");
        assert_eq!(
            parse_time("2026-11-21T10:42:00Z", now).expect("rfc3339"),
            OffsetDateTime::parse("2026-11-21T10:42:00Z", &Rfc3339).expect("valid")
        );
        assert_eq!(
            parse_time("90m", now).expect("ago"),
            now - time::Duration::minutes(90)
        );
        let err = parse_time("yesterday-ish", now).expect_err("bad");
        assert!(err.contains("RFC 3339"), "{err}");
    }
}
