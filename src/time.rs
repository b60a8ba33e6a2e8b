//! Event-time helpers: everything inside pipewatch is epoch milliseconds (`i64`); RFC 3339
//! text exists only at the edges (decoding events, writing alerts and scores).

use chrono::{DateTime, SecondsFormat, Utc};

/// Parses an RFC 3339 timestamp (any offset) to epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    // Nearly every producer writes UTC in one shape; chrono handles everything else
    // (offsets, leap seconds, lower case, long fractions) and every malformed input.
    utc_ms(s.as_bytes()).or_else(|| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` with a valid date, a second below 60 and at most 9
/// fraction digits, to epoch milliseconds as chrono would give them (the fraction
/// truncated); `None` for anything else, valid or not. Parsing an event's time this way
/// costs a tenth of chrono's general parser. Every byte it accepts is an ASCII digit or
/// one of `-T:.Z`, which the event scanner relies on to read it straight from a message.
pub(crate) fn utc_ms(b: &[u8]) -> Option<i64> {
    let (head, tail) = b.split_first_chunk::<19>()?;
    // Two digits at a time, at fixed offsets: one check per pair and no bounds checks.
    let pair = |i: usize| {
        let (hi, lo) = (head[i].wrapping_sub(b'0'), head[i + 1].wrapping_sub(b'0'));
        (hi < 10 && lo < 10).then(|| u32::from(hi) * 10 + u32::from(lo))
    };
    let punctuated = head[4] == b'-'
        && head[7] == b'-'
        && head[10] == b'T'
        && head[13] == b':'
        && head[16] == b':';
    if !punctuated {
        return None;
    }
    let year = pair(0)? * 100 + pair(2)?;
    let (month, day) = (pair(5)?, pair(8)?);
    let (hour, minute, second) = (pair(11)?, pair(14)?, pair(17)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let millis = match tail {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            let mut ms = 0;
            for (i, &c) in fraction.iter().enumerate() {
                if !c.is_ascii_digit() {
                    return None;
                }
                if i < 3 {
                    ms = ms * 10 + i64::from(c - b'0');
                }
            }
            // Pad "5" (500 ms) and "25" (250 ms) to three digits.
            ms * 10i64.pow(3u32.saturating_sub(fraction.len() as u32))
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let seconds = days * 86_400 + i64::from(hour * 3_600 + minute * 60 + second);
    Some(seconds * 1_000 + millis)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

    fn chrono_ms(s: &str) -> Option<i64> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    #[test]
    fn the_utc_shortcut_agrees_with_chrono_at_the_edges() {
        for s in [
            "2026-11-24T03:00:00Z",
            "2026-11-24T03:00:00.2Z",
            "2026-11-24T03:00:00.25Z",
            "2026-11-24T03:00:00.250Z",
            "2026-11-24T03:00:00.999999999Z",
            "2000-02-29T23:59:59.999Z",
            "2100-02-28T00:00:00Z",
            "1969-12-31T23:59:59.5Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
        ] {
            assert_eq!(utc_ms(s.as_bytes()), chrono_ms(s), "{s}");
        }
        for s in [
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-24T03:00:60Z",
            "2026-11-24T03:00:00.Z",
            "2026-11-24T03:00:00.1234567890Z",
            "2026-11-24t03:00:00Z",
            "2026-11-24T03:00:00z",
            "2026-11-24T03:00:00+00:00",
            "2026-11-24T03:00:00",
            "2026-11-24T24:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
        ] {
            assert_eq!(utc_ms(s.as_bytes()), None, "{s}");
            assert_eq!(parse_rfc3339_ms(s), chrono_ms(s), "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_utc_shortcut_never_disagrees_with_chrono(
            y in 0u32..10_000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..62,
            s in 0u32..62, frac in "(\\.[0-9]{0,11})?", end in "Z|z|\\+01:00|"
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{end}");
            if let Some(ms) = utc_ms(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(ms), chrono_ms(&text), "{}", text);
            }
            proptest::prop_assert_eq!(parse_rfc3339_ms(&text), chrono_ms(&text), "{}", text);
        }

        #[test]
        fn any_text_parses_as_chrono_parses_it(text in "[0-9T:.Z+-]{0,30}") {
            proptest::prop_assert_eq!(parse_rfc3339_ms(&text), chrono_ms(&text));
        }
    }
}
