//! Alerts as subscribers see them (`../shared/schema/alert.md`), and their lifecycle.

pub mod lifecycle;

use std::collections::BTreeMap;

use serde::Serialize;

pub use lifecycle::{Notice, Observation, Rules, Severity, Track};

use crate::metric::AlertKind;
use crate::time::{format_ms, human_ms, serialize_ms, serialize_opt_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// One alert notification, version 1 of the wire format.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub version: &'static str,
    pub alert_id: String,
    pub fingerprint: String,
    pub status: AlertStatus,
    pub severity: &'static str,
    pub kind: &'static str,
    pub pipeline: String,
    pub stage: String,
    pub metric: String,
    pub detector: &'static str,
    pub value: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    pub score: f64,
    #[serde(serialize_with = "serialize_ms")]
    pub bucket_start: i64,
    #[serde(serialize_with = "serialize_ms")]
    pub bucket_end: i64,
    #[serde(rename = "startsAt", serialize_with = "serialize_ms")]
    pub starts_at: i64,
    #[serde(rename = "endsAt", serialize_with = "serialize_opt_ms")]
    pub ends_at: Option<i64>,
    pub correlation_ids: Vec<String>,
    pub summary: String,
    pub labels: BTreeMap<&'static str, String>,
    pub annotations: BTreeMap<&'static str, String>,
}

/// What the engine knows when a lifecycle asks for a notification.
#[derive(Debug, Clone)]
pub struct AlertFacts<'a> {
    pub notice: Notice,
    pub kind: AlertKind,
    pub pipeline: &'a str,
    pub stage: &'a str,
    pub metric: &'a str,
    pub detector: &'static str,
    pub value: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    pub score: f64,
    pub bucket_start: i64,
    pub bucket_end: i64,
    pub correlation_ids: &'a [&'a str],
    /// The metric alerts only upwards, so its summary states the upper bound alone.
    pub upward_only: bool,
}

/// Builds alerts: holds what every alert shares.
#[derive(Debug, Clone)]
pub struct AlertFactory {
    pub bucket_ms: i64,
    pub dashboard_url: String,
}

impl AlertFactory {
    pub fn build(&self, f: &AlertFacts) -> Alert {
        let (status, severity, starts_at, ends_at) = match f.notice {
            Notice::Firing {
                started_ms,
                severity,
            } => (AlertStatus::Firing, severity, started_ms, None),
            Notice::Resolved {
                started_ms,
                ended_ms,
                severity,
            } => (AlertStatus::Resolved, severity, started_ms, Some(ended_ms)),
        };
        let summary = summary(f, status, self.bucket_ms);
        let dashboard = format!(
            "{}/stages/{}/{}",
            self.dashboard_url.trim_end_matches('/'),
            percent_encode(f.pipeline),
            percent_encode(f.stage)
        );
        let description = match status {
            AlertStatus::Firing => format!(
                "{summary}. Detector {} scored {:.1} in the bucket {} to {}; firing since {}.",
                f.detector,
                f.score,
                format_ms(f.bucket_start),
                format_ms(f.bucket_end),
                format_ms(starts_at)
            ),
            AlertStatus::Resolved => format!(
                "{summary}. It fired from {} to {}.",
                format_ms(starts_at),
                format_ms(ends_at.unwrap_or(f.bucket_end))
            ),
        };
        let labels = BTreeMap::from([
            ("pipeline", f.pipeline.to_string()),
            ("stage", f.stage.to_string()),
            ("kind", f.kind.as_str().to_string()),
            ("severity", severity.as_str().to_string()),
            ("metric", f.metric.to_string()),
        ]);
        Alert {
            version: "1",
            alert_id: uuid::Uuid::new_v4().to_string(),
            fingerprint: fingerprint(f.pipeline, f.stage, f.metric, f.kind.as_str()),
            status,
            severity: severity.as_str(),
            kind: f.kind.as_str(),
            pipeline: f.pipeline.to_string(),
            stage: f.stage.to_string(),
            metric: f.metric.to_string(),
            detector: f.detector,
            value: f.value,
            expected: f.expected,
            lower: f.lower,
            upper: f.upper,
            score: f.score,
            bucket_start: f.bucket_start,
            bucket_end: f.bucket_end,
            starts_at,
            ends_at,
            correlation_ids: f.correlation_ids.iter().map(|c| c.to_string()).collect(),
            summary,
            labels,
            annotations: BTreeMap::from([("description", description), ("dashboard", dashboard)]),
        }
    }
}

/// The stable identity of an alert: FNV-1a (64 bit) over pipeline, stage, metric and kind,
/// separated by NUL, as 16 hex digits. Written out here rather than taken from a hashing
/// crate because it is a wire contract: it must never change with a dependency.
pub fn fingerprint(pipeline: &str, stage: &str, metric: &str, kind: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (i, part) in [pipeline, stage, metric, kind].iter().enumerate() {
        if i > 0 {
            // the NUL separator: hash ^ 0 is hash
            hash = hash.wrapping_mul(PRIME);
        }
        for &byte in part.as_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    }
    format!("{hash:016x}")
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters pass).
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A firing alert for unit tests of what consumes alerts, as the engine builds it: in
/// the bucket of 2026-11-24T03:00Z, the metric fell to 120 (expected 8,200–11,800).
#[cfg(test)]
pub(crate) fn test_alert(pipeline: &str, stage: &str, metric: &str, kind: AlertKind) -> Alert {
    let factory = AlertFactory {
        bucket_ms: 60_000,
        dashboard_url: "http://h:9898/".into(),
    };
    factory.build(&AlertFacts {
        notice: Notice::Firing {
            started_ms: 1_795_489_260_000,
            severity: Severity::Critical,
        },
        kind,
        pipeline,
        stage,
        metric,
        detector: "ewma",
        value: 120.0,
        expected: 10_000.0,
        lower: 8_200.0,
        upper: 11_800.0,
        score: -16.4,
        bucket_start: 1_795_489_200_000,
        bucket_end: 1_795_489_260_000,
        correlation_ids: &["orders_etl-run-20261124T0300"],
        upward_only: false,
    })
}

/// A number as people read it: thousands separators, few decimals.
pub fn human_number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x.abs() >= 1000.0 {
        let rounded = x.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return if rounded < 0 { format!("-{out}") } else { out };
    }
    let s = if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    };
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn summary(f: &AlertFacts, status: AlertStatus, bucket_ms: i64) -> String {
    let per = format!("per {}", human_ms(bucket_ms));
    let percent = |x: f64| format!("{}%", human_number(x * 100.0));
    let (what, value, lower, upper) = match f.kind {
        AlertKind::ThroughputDrop | AlertKind::ThroughputSpike => (
            f.metric.to_string(),
            format!("{} {per}", human_number(f.value)),
            human_number(f.lower),
            human_number(f.upper),
        ),
        AlertKind::ErrorRate | AlertKind::FailureRate | AlertKind::RejectedRate => (
            f.metric.replace('_', " "),
            percent(f.value),
            percent(f.lower),
            percent(f.upper),
        ),
        AlertKind::Latency if f.metric == "e2e_latency" => (
            "end-to-end latency".to_string(),
            format!("{} ms", human_number(f.value)),
            human_number(f.lower),
            format!("{} ms", human_number(f.upper)),
        ),
        AlertKind::Latency if f.metric == "hop_delay" => (
            "hand-over delay".to_string(),
            format!("{} ms", human_number(f.value)),
            human_number(f.lower),
            format!("{} ms", human_number(f.upper)),
        ),
        AlertKind::Latency => (
            "p95 duration".to_string(),
            format!("{} ms", human_number(f.value)),
            human_number(f.lower),
            format!("{} ms", human_number(f.upper)),
        ),
        // Data-flow alerts describe a run, not a bucket: `crate::flow` writes their
        // summaries; this one only stands until it does.
        AlertKind::DataLoss | AlertKind::StuckRun | AlertKind::FailedRun => {
            return format!("{}/{} {}", f.pipeline, f.stage, f.kind.as_str());
        }
        AlertKind::Quality => (
            f.metric.to_string(),
            human_number(f.value),
            human_number(f.lower),
            human_number(f.upper),
        ),
        AlertKind::Silence => {
            let quiet = human_ms((f.value * 1000.0) as i64);
            let usual = human_ms((f.expected * 1000.0) as i64);
            return match status {
                AlertStatus::Firing => format!(
                    "{}/{} has sent nothing for {quiet} (usually an event every {usual})",
                    f.pipeline, f.stage
                ),
                AlertStatus::Resolved => {
                    format!("{}/{} is sending events again", f.pipeline, f.stage)
                }
            };
        }
    };
    let verb = match (status, f.kind) {
        (AlertStatus::Resolved, _) => "is back to",
        (_, AlertKind::ThroughputDrop) => "fell to",
        _ if f.score < 0.0 => "fell to",
        _ => "rose to",
    };
    let expected = if f.upward_only {
        format!("up to {upper}")
    } else {
        format!("{lower}–{upper}")
    };
    format!(
        "{}/{} {what} {verb} {value} (expected {expected})",
        f.pipeline, f.stage
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_distinct() {
        let a = fingerprint("orders_etl", "transform", "records", "throughput_drop");
        assert_eq!(
            a,
            fingerprint("orders_etl", "transform", "records", "throughput_drop")
        );
        assert_eq!(a.len(), 16);
        assert_ne!(
            a,
            fingerprint("orders_etl", "transform", "records", "throughput_spike")
        );
        // the separator keeps ("ab","c") and ("a","bc") apart
        assert_ne!(
            fingerprint("ab", "c", "m", "k"),
            fingerprint("a", "bc", "m", "k")
        );
        // pinned: subscribers store fingerprints, so the function must never change
        assert_eq!(
            fingerprint("p", "s", "records", "throughput_drop"),
            fingerprint_pinned()
        );
    }

    fn fingerprint_pinned() -> String {
        // FNV-1a of b"p\0s\0records\0throughput_drop", computed independently
        let mut h: u64 = 0xcbf29ce484222325;
        for b in b"p\0s\0records\0throughput_drop" {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}")
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(human_number(8200.0), "8,200");
        assert_eq!(human_number(1_234_567.4), "1,234,567");
        assert_eq!(human_number(120.0), "120");
        assert_eq!(human_number(0.125), "0.125");
        assert_eq!(human_number(12.34), "12.3");
    }

    #[test]
    fn summary_and_links() {
        // The dashboard address of `test_alert` ends in a slash.
        let a = test_alert(
            "orders_etl",
            "trans form/x",
            "records",
            AlertKind::ThroughputDrop,
        );
        assert_eq!(
            a.summary,
            "orders_etl/trans form/x records fell to 120 per 1m (expected 8,200–11,800)"
        );
        assert_eq!(
            a.annotations["dashboard"],
            "http://h:9898/stages/orders_etl/trans%20form%2Fx"
        );
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["startsAt"], "2026-11-24T03:01:00Z");
        assert_eq!(json["endsAt"], serde_json::Value::Null);
        assert_eq!(json["bucket_start"], "2026-11-24T03:00:00Z");
        assert_eq!(json["labels"]["severity"], "critical");
        assert_eq!(json["version"], "1");
    }
}
