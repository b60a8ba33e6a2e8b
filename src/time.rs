//! Event-time helpers: everything inside pipewatch is epoch milliseconds (`i64`); RFC 3339
//! text exists only at the edges (decoding events, writing alerts and scores).

use chrono::{DateTime, SecondsFormat, Utc};

/// Parses an RFC 3339 timestamp (any offset) to epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Formats epoch milliseconds as RFC 3339 UTC, with milliseconds only when there are some
/// (`2026-11-24T03:00:00Z`, `2026-11-24T03:00:00.250Z`).
pub fn format_ms(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => ms.to_string(),
    }
}

/// Serializes an epoch-millisecond field as RFC 3339 UTC.
pub fn serialize_ms<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ms(*ms))
}

/// Serializes an optional epoch-millisecond field as RFC 3339 UTC or null.
pub fn serialize_opt_ms<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => serialize_ms(ms, s),
        None => s.serialize_none(),
    }
}

/// A duration in milliseconds as people say it: `90s` → "1m 30s".
pub fn human_ms(ms: i64) -> String {
    let rounded = std::time::Duration::from_secs((ms.max(0) as u64).div_ceil(1000));
    humantime::format_duration(rounded).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ms = parse_rfc3339_ms("2026-11-24T03:00:00.250Z").unwrap();
        assert_eq!(format_ms(ms), "2026-11-24T03:00:00.250Z");
        assert_eq!(format_ms(ms - 250), "2026-11-24T03:00:00Z");
        assert_eq!(
            parse_rfc3339_ms("2026-11-24T04:00:00+01:00"),
            Some(ms - 250)
        );
        assert_eq!(parse_rfc3339_ms("2026-11-24"), None);
        assert_eq!(human_ms(90_000), "1m 30s");
    }
}
