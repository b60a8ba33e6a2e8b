//! Turns generated events into the JSON of the event contract (`shared/schema/event.md`).
//!
//! Formatting is hand-rolled where it is hot (timestamps, ids) so that encoding a million events
//! costs well under a second, and reuses its string buffers between events.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use super::generator::{RawEvent, Status};
use super::noise::mix64;
use super::topology::{Mode, Topology};
use super::TimestampFormat;

/// Salts that make the id, delivery delay and timestamp form of one event independent hashes.
pub(crate) const ID_SALT: u64 = 0x5eed_0000_0000_1d1d;
pub(crate) const DELAY_SALT: u64 = 0x5eed_0000_de1a_0000;
const FORM_SALT: u64 = 0x5eed_0000_f0f0_0000;

/// A key unique to every event of a simulation: pipeline (16 bits), stage (8 bits), whether it is
/// the retry event of its unit (1 bit) and the unit's sequence number (39 bits).
pub(crate) fn event_key(ev: &RawEvent) -> u64 {
    (u64::from(ev.pipeline) << 48)
        | (u64::from(ev.stage) << 40)
        | (u64::from(ev.status == Status::Retry) << 39)
        | (ev.unit & ((1 << 39) - 1))
}

/// Civil date and time of a UTC instant (Howard Hinnant's `civil_from_days`).
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    milli: u32,
}

fn civil(ms: i64) -> Civil {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (in_day / 3_600_000) as u32,
        minute: (in_day / 60_000 % 60) as u32,
        second: (in_day / 1_000 % 60) as u32,
        milli: (in_day % 1_000) as u32,
    }
}

/// Appends `ms` as RFC 3339 with milliseconds, e.g. `2026-11-24T03:00:00.250Z`.
pub(crate) fn format_rfc3339_ms(buf: &mut String, ms: i64) {
    let c = civil(ms);
    // Writing to a String cannot fail.
    let _ = write!(
        buf,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.milli
    );
}

/// Appends a UUID-shaped id. Its last 64 bits are a bijection of the event key, so ids never
/// collide within a simulation; the seed and the start make them differ between simulations.
fn format_event_id(buf: &mut String, seed_salt: u64, key: u64) {
    let hi = mix64(key ^ seed_salt.rotate_left(17));
    let lo = mix64(key.wrapping_add(seed_salt));
    let _ = write!(
        buf,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    );
}

/// Appends the correlation id of a unit: `orders_etl-20261124T0300` for the batch run scheduled
/// at 03:00, `clickstream-20261124T030012-4521` for micro-batch 4521 cut at 03:00:12.
fn format_correlation_id(buf: &mut String, pipeline: &str, mode: Mode, corr_ms: i64, unit: u64) {
    let c = civil(corr_ms);
    let _ = write!(
        buf,
        "{pipeline}-{:04}{:02}{:02}T{:02}{:02}",
        c.year, c.month, c.day, c.hour, c.minute
    );
    if mode.is_streaming() {
        let _ = write!(buf, "{:02}-{unit}", c.second);
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum TimestampOut<'a> {
    Text(&'a str),
    Millis(i64),
}

#[derive(Serialize)]
struct QualityOut {
    null_rate: f64,
    duplicate_rate: f64,
    schema_violations: u32,
}

#[derive(Serialize)]
struct AttributesOut<'a> {
    host: &'a str,
    version: &'a str,
}

/// The wire form of one event; field order follows the contract's example.
#[derive(Serialize)]
struct EventOut<'a> {
    pipeline: &'a str,
    stage: &'a str,
    timestamp: TimestampOut<'a>,
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    status: &'static str,
    records_in: u64,
    records_out: u64,
    records_rejected: u64,
    bytes: u64,
    duration_ms: f64,
    errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<QualityOut>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    upstream: &'a [String],
    attributes: AttributesOut<'a>,
}

/// Encodes events of one simulation, reusing its buffers.
pub(crate) struct Encoder {
    topo: Arc<Topology>,
    seed_salt: u64,
    format: TimestampFormat,
    correlation_ids: bool,
    ts_buf: String,
    id_buf: String,
    corr_buf: String,
}

impl Encoder {
    /// `start_ms`: the simulation's start. Event keys count runs from it, so a simulation
    /// that carries on where another ended (history, then live) would repeat the other's
    /// ids, and a consumer would drop its events as duplicates.
    pub(crate) fn new(
        topo: Arc<Topology>,
        seed: u64,
        start_ms: i64,
        format: TimestampFormat,
        correlation_ids: bool,
    ) -> Self {
        Encoder {
            topo,
            seed_salt: mix64(seed ^ ID_SALT ^ mix64(start_ms as u64)),
            format,
            correlation_ids,
            ts_buf: String::with_capacity(32),
            id_buf: String::with_capacity(40),
            corr_buf: String::with_capacity(64),
        }
    }

    /// Appends the JSON of `ev` (no newline) to `out`.
    pub(crate) fn encode(&mut self, ev: &RawEvent, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let pipe = &self.topo.pipelines[ev.pipeline as usize];
        let stage = &pipe.stages[ev.stage as usize];
        let key = event_key(ev);

        let as_text = match self.format {
            TimestampFormat::Rfc3339 => true,
            TimestampFormat::EpochMs => false,
            TimestampFormat::Mixed => mix64(key ^ self.seed_salt ^ FORM_SALT) & 1 == 0,
        };
        self.ts_buf.clear();
        if as_text {
            format_rfc3339_ms(&mut self.ts_buf, ev.ts);
        }
        self.id_buf.clear();
        format_event_id(&mut self.id_buf, self.seed_salt, key);
        self.corr_buf.clear();
        if self.correlation_ids {
            format_correlation_id(
                &mut self.corr_buf,
                &pipe.name,
                pipe.mode,
                ev.corr_ms,
                ev.unit,
            );
        }

        let event = EventOut {
            pipeline: &pipe.name,
            stage: &stage.name,
            timestamp: if as_text {
                TimestampOut::Text(&self.ts_buf)
            } else {
                TimestampOut::Millis(ev.ts)
            },
            event_id: &self.id_buf,
            correlation_id: self.correlation_ids.then_some(self.corr_buf.as_str()),
            status: ev.status.as_str(),
            records_in: ev.records_in,
            records_out: ev.records_out,
            records_rejected: ev.rejected,
            bytes: ev.bytes,
            duration_ms: ev.duration_ms,
            errors: ev.errors,
            quality: ev.quality.map(|q| QualityOut {
                null_rate: q.null_rate,
                duplicate_rate: q.duplicate_rate,
                schema_violations: q.schema_violations,
            }),
            upstream: &stage.upstream_names,
            attributes: AttributesOut {
                host: &pipe.hosts[ev.host as usize],
                version: &stage.version,
            },
        };
        serde_json::to_writer(out, &event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, SecondsFormat};
    use rand::Rng;

    #[test]
    fn rfc3339_matches_chrono() {
        let mut rng = crate::simulate::noise::seeded(3, 0);
        let mut buf = String::new();
        for _ in 0..10_000 {
            // Between 1970 and 2200, plus the edges of leap years.
            let ms: i64 = rng.gen_range(0..7_258_118_400_000);
            for t in [ms, 951_782_400_000, 951_868_799_999, 4_107_542_400_000] {
                buf.clear();
                format_rfc3339_ms(&mut buf, t);
                let expected = DateTime::from_timestamp_millis(t)
                    .expect("in range")
                    .to_rfc3339_opts(SecondsFormat::Millis, true);
                assert_eq!(buf, expected);
            }
        }
    }

    #[test]
    fn correlation_ids_name_the_run_or_micro_batch() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T03:00:12.500Z")
            .expect("valid")
            .timestamp_millis();
        let mut buf = String::new();
        let hourly = Mode::Batch {
            period_ms: 3_600_000,
            offset_ms: 0,
        };
        format_correlation_id(&mut buf, "orders_etl", hourly, t, 7);
        assert_eq!(buf, "orders_etl-20261124T0300");
        buf.clear();
        let stream = Mode::Streaming { interval_ms: 8_000 };
        format_correlation_id(&mut buf, "clickstream", stream, t, 4521);
        assert_eq!(buf, "clickstream-20261124T030012-4521");
    }
}
