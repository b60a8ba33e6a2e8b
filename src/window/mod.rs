//! Per-stage event-time windows: the open buckets that events accumulate into until
//! their metrics are read and scored.
//!
//! Memory is fixed by configuration, never by the event rate: an open bucket holds sums,
//! counts and a constant-size p95 sketch, and a stage has at most
//! `allowed_lateness / bucket + 2` of them open. The history detectors learn from lives in
//! the detectors themselves (`crate::detect`).

mod quantile;

pub use quantile::P2Quantile;

use crate::decode::{Event, Status};
use crate::metric::Builtin;

/// Which optional fields a bucket saw at least once; a metric whose inputs were never
/// reported has no value rather than a misleading zero.
mod seen {
    pub const RECORDS: u8 = 1;
    pub const BYTES: u8 = 2;
    pub const ERRORS: u8 = 4;
    pub const REJECTED: u8 = 8;
}

/// One open event-time bucket of one stage.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub index: i64,
    events: u32,
    failures: u32,
    seen: u8,
    records: u64,
    bytes: u64,
    errors: u64,
    rejected: u64,
    /// `records_in`, or 1 for an event without it: the denominator of the rates.
    rate_base: u64,
    durations: P2Quantile,
    /// (quality slot, sum, count).
    quality: Vec<(u16, f64, u32)>,
    /// The first few correlation ids seen, carried into alerts on this bucket.
    pub correlation_ids: CorrelationIds,
}

impl Bucket {
    pub fn new(index: i64) -> Bucket {
        Bucket {
            index,
            events: 0,
            failures: 0,
            seen: 0,
            records: 0,
            bytes: 0,
            errors: 0,
            rejected: 0,
            rate_base: 0,
            durations: P2Quantile::default(),
            quality: Vec::new(),
            correlation_ids: CorrelationIds::default(),
        }
    }

    /// Empties the bucket to serve as bucket `index`, keeping its allocations: every
    /// stage closes a bucket and opens one each bucket width, and reusing the closed one
    /// spares the sketch's sample, the quality sums and the ids their allocations.
    pub fn reset(&mut self, index: i64) {
        let mut durations = std::mem::take(&mut self.durations);
        durations.clear();
        let mut quality = std::mem::take(&mut self.quality);
        quality.clear();
        let mut correlation_ids = std::mem::take(&mut self.correlation_ids);
        correlation_ids.clear();
        *self = Bucket {
            durations,
            quality,
            correlation_ids,
            ..Bucket::new(index)
        };
    }

    /// Adds one event. `quality` yields (slot, value) for the figures the stage tracks.
    /// Sums saturate: hostile counts near `u64::MAX` must not wrap or panic. (Once per
    /// event, from another module: left to itself the compiler stopped inlining it.)
    #[inline]
    pub fn add(
        &mut self,
        event: &Event,
        quality: impl Iterator<Item = (u16, f64)>,
        max_correlation_ids: usize,
    ) {
        self.events = self.events.saturating_add(1);
        if event.status == Status::Failure {
            self.failures = self.failures.saturating_add(1);
        }
        // A retried attempt is not its unit's outcome: its counts are summed as the
        // schema says, but alone it gives the bucket no volume, or every retry that lands
        // in a bucket before its success would read as a drop to zero.
        let outcome = event.status != Status::Retry;
        if let Some(n) = event.records_out.or(event.records_in) {
            self.records = self.records.saturating_add(n);
            if outcome {
                self.seen |= seen::RECORDS;
            }
        }
        if let Some(n) = event.bytes {
            self.bytes = self.bytes.saturating_add(n);
            if outcome {
                self.seen |= seen::BYTES;
            }
        }
        if let Some(n) = event.errors {
            self.errors = self.errors.saturating_add(n);
            self.seen |= seen::ERRORS;
        }
        if let Some(n) = event.records_rejected {
            self.rejected = self.rejected.saturating_add(n);
            self.seen |= seen::REJECTED;
        }
        self.rate_base = self.rate_base.saturating_add(event.records_in.unwrap_or(1));
        if let Some(d) = event.duration_ms {
            self.durations.observe(d);
        }
        for (slot, x) in quality {
            self.add_figure(slot, x);
        }
        if let Some(id) = &event.correlation_id {
            self.correlation_ids.insert(id, max_correlation_ids);
        }
    }

    /// Adds one value of a quality figure, a metric averaged per bucket.
    fn add_figure(&mut self, slot: u16, x: f64) {
        match self.quality.iter_mut().find(|(s, _, _)| *s == slot) {
            Some((_, sum, n)) => {
                *sum += x;
                *n = n.saturating_add(1);
            }
            None => self.quality.push((slot, x, 1)),
        }
    }

    /// The bucket's metric values by slot, NaN where a metric has no value. An empty
    /// bucket of a `dense` stage (one that normally sends several events per bucket) has
    /// zero volume; an empty bucket of a sparse stage has no values at all, because a
    /// batch job that runs hourly is not "down to zero" in the 59 minutes between runs.
    pub fn values(&self, dense: bool, reported: &Reported, out: &mut [f64]) {
        out.fill(f64::NAN);
        let rate = |num: u64| num as f64 / self.rate_base.max(1) as f64;
        if self.events == 0 {
            if dense {
                out[Builtin::Events as usize] = 0.0;
                if reported.records {
                    out[Builtin::Records as usize] = 0.0;
                }
                if reported.bytes {
                    out[Builtin::Bytes as usize] = 0.0;
                }
            }
            return;
        }
        out[Builtin::Events as usize] = self.events as f64;
        if self.seen & seen::RECORDS != 0 {
            out[Builtin::Records as usize] = self.records as f64;
        }
        if self.seen & seen::BYTES != 0 {
            out[Builtin::Bytes as usize] = self.bytes as f64;
        }
        if self.seen & seen::ERRORS != 0 {
            out[Builtin::ErrorRate as usize] = rate(self.errors);
        }
        out[Builtin::FailureRate as usize] = self.failures as f64 / self.events as f64;
        if self.seen & seen::REJECTED != 0 {
            out[Builtin::RejectedRate as usize] = rate(self.rejected);
        }
        if let Some(p95) = self.durations.value() {
            out[Builtin::DurationP95 as usize] = p95;
        }
        for &(slot, sum, n) in &self.quality {
            if let Some(v) = out.get_mut(slot as usize) {
                *v = sum / n as f64;
            }
        }
    }

    /// Heap bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.durations.heap_bytes()
            + self.quality.capacity() * std::mem::size_of::<(u16, f64, u32)>()
            + self.correlation_ids.heap_bytes()
    }

    /// Folds what this bucket saw into the stage's record of reported fields.
    pub fn note_reported(&self, reported: &mut Reported) {
        reported.records |= self.seen & seen::RECORDS != 0;
        reported.bytes |= self.seen & seen::BYTES != 0;
    }
}

/// The first few distinct correlation ids of a bucket, in one string: a box per id cost
/// an allocation every few events, and a reused bucket keeps these two buffers.
#[derive(Debug, Clone, Default)]
pub struct CorrelationIds {
    text: String,
    /// Where each id ends in `text`, and its [`tail`].
    ends: Vec<(usize, u64)>,
}

impl CorrelationIds {
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(end, _)| {
            let id = &self.text[start..end];
            start = end;
            id
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Adds `id` unless it is known already or `max` ids are. Nearly every event of a
    /// bucket that is not full brings a new id: the ids known are compared by their
    /// tails first, and only an id with the same tail byte by byte.
    #[inline]
    pub fn insert(&mut self, id: &str, max: usize) {
        if self.ends.len() >= max {
            return;
        }
        let id_tail = tail(id.as_bytes());
        let text = self.text.as_bytes();
        let mut start = 0;
        for &(end, known_tail) in &self.ends {
            if known_tail == id_tail && text.get(start..end) == Some(id.as_bytes()) {
                return;
            }
            start = end;
        }
        self.text.push_str(id);
        self.ends.push((self.text.len(), id_tail));
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * std::mem::size_of::<(usize, u64)>()
    }
}

/// The last eight bytes of `id`, or all of a shorter one with its length: equal ids have
/// equal tails, and ids that differ (run numbers, times, random suffixes) nearly always
/// differ in them.
fn tail(id: &[u8]) -> u64 {
    match id.last_chunk::<8>() {
        Some(last) => u64::from_le_bytes(*last),
        None => id
            .iter()
            .fold(id.len() as u64, |word, &b| word << 8 | u64::from(b)),
    }
}

/// Whether a stage has ever reported records and bytes: only then is an empty bucket a
/// zero for those metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reported {
    pub records: bool,
    pub bytes: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, DecodeLimits};

    fn event(json: &str) -> Event<'_> {
        decode(json.as_bytes(), &DecodeLimits::new(65_536, i64::MAX / 2, 0)).unwrap()
    }

    fn values(bucket: &Bucket, dense: bool, reported: Reported, slots: usize) -> Vec<f64> {
        let mut out = vec![0.0; slots];
        bucket.values(dense, &reported, &mut out);
        out
    }

    #[test]
    fn metrics_follow_the_schema_table() {
        let mut b = Bucket::new(0);
        let e1 = event(
            r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"records_in":100,"records_out":90,"records_rejected":10,"errors":5,"bytes":1000,"duration_ms":10,"quality":{"null_rate":0.1}}"#,
        );
        let e2 = event(
            r#"{"pipeline":"p","stage":"s","timestamp":1793491200001,"records_in":300,"status":"failure","errors":3,"duration_ms":30,"quality":{"null_rate":0.3}}"#,
        );
        let e3 = event(r#"{"pipeline":"p","stage":"s","timestamp":1793491200002}"#);
        for e in [&e1, &e2, &e3] {
            b.add(e, e.quality.iter().map(|(_, x)| (7u16, *x)), 5);
        }
        let v = values(&b, false, Reported::default(), 8);
        assert_eq!(v[Builtin::Events as usize], 3.0);
        assert_eq!(
            v[Builtin::Records as usize],
            390.0,
            "records_out, else records_in"
        );
        assert_eq!(v[Builtin::Bytes as usize], 1000.0);
        // errors 8 over records_in 100 + 300 + 1 (the event without records_in counts 1)
        assert!((v[Builtin::ErrorRate as usize] - 8.0 / 401.0).abs() < 1e-12);
        assert!((v[Builtin::FailureRate as usize] - 1.0 / 3.0).abs() < 1e-12);
        assert!((v[Builtin::RejectedRate as usize] - 10.0 / 401.0).abs() < 1e-12);
        assert_eq!(v[Builtin::DurationP95 as usize], 30.0);
        assert!((v[7] - 0.2).abs() < 1e-12);
    }

    #[test]
    fn empty_buckets_are_zero_only_for_dense_stages() {
        let b = Bucket::new(0);
        let reported = Reported {
            records: true,
            bytes: false,
        };
        let sparse = values(&b, false, reported, 7);
        assert!(sparse.iter().all(|v| v.is_nan()));
        let dense = values(&b, true, reported, 7);
        assert_eq!(dense[Builtin::Events as usize], 0.0);
        assert_eq!(dense[Builtin::Records as usize], 0.0);
        assert!(dense[Builtin::Bytes as usize].is_nan(), "never reported");
        assert!(dense[Builtin::ErrorRate as usize].is_nan());
    }

    #[test]
    fn a_bucket_of_retries_alone_has_no_volume() {
        let mut b = Bucket::new(0);
        let retry = event(
            r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"status":"retry","records_out":0,"bytes":0,"errors":1}"#,
        );
        b.add(&retry, std::iter::empty(), 5);
        let v = values(&b, false, Reported::default(), 7);
        assert_eq!(v[Builtin::Events as usize], 1.0);
        assert!(v[Builtin::Records as usize].is_nan());
        assert!(v[Builtin::Bytes as usize].is_nan());
        let done = event(
            r#"{"pipeline":"p","stage":"s","timestamp":1793491200001,"records_out":500,"bytes":10}"#,
        );
        b.add(&done, std::iter::empty(), 5);
        let v = values(&b, false, Reported::default(), 7);
        assert_eq!(v[Builtin::Records as usize], 500.0);
    }

    #[test]
    fn hostile_counts_saturate() {
        let mut b = Bucket::new(0);
        let e = event(
            r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"records_in":18446744073709551615,"errors":18446744073709551615}"#,
        );
        b.add(&e, std::iter::empty(), 5);
        b.add(&e, std::iter::empty(), 5);
        let v = values(&b, false, Reported::default(), 7);
        assert!(v.iter().all(|x| x.is_nan() || x.is_finite()));
    }

    #[test]
    fn correlation_ids_are_bounded_and_unique() {
        let mut b = Bucket::new(0);
        for i in 0..20 {
            let json = format!(
                r#"{{"pipeline":"p","stage":"s","timestamp":1793491200000,"correlation_id":"run-{}"}}"#,
                i % 7
            );
            let e = event(&json);
            b.add(&e, std::iter::empty(), 5);
        }
        assert_eq!(b.correlation_ids.len(), 5);
    }

    #[test]
    fn correlation_ids_with_the_same_tail_are_told_apart() {
        let mut ids = CorrelationIds::default();
        for id in [
            "etl-a-20261124T0300",
            "etl-b-20261124T0300",
            "etl-a-20261124T0300",
            "b-20261124T0300",
            "4T0300",
            "24T0300",
            "4T0300",
            "24T0300",
            "x",
            "etl-b-20261124T0300",
        ] {
            ids.insert(id, 10);
        }
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [
                "etl-a-20261124T0300",
                "etl-b-20261124T0300",
                "b-20261124T0300",
                "4T0300",
                "24T0300",
                "x"
            ]
        );
    }
}
