//! Silence: a stage that was sending regularly and stops.
//!
//! Each stage learns the gaps between its events (an EWMA of gap length and spread, in
//! event time). It is silent when the time since its last event exceeds
//! `max(min_silence, mean gap + sensitivity·σ)`. "Now" is the end of the bucket being
//! closed, so in replay the other streams' progress decides it and in live mode, when
//! every stream is quiet, the wall clock does.

use super::{Baseline, Ewma};
use crate::config::SilenceSettings;

/// Gaps are smoothed with this weight: the cadence of a stage changes slowly.
const GAP_ALPHA: f64 = 0.1;

#[derive(Debug, Clone, Copy)]
pub struct GapTracker {
    last_event_ms: i64,
    gaps: Ewma,
}

/// A silence judgement: how long the stage has been quiet against what was expected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SilenceJudgement {
    pub silent_for_ms: i64,
    pub baseline: Baseline,
    pub threshold_ms: f64,
    pub score: f64,
    pub silent: bool,
}

impl GapTracker {
    pub fn new(first_event_ms: i64) -> GapTracker {
        GapTracker {
            last_event_ms: first_event_ms,
            gaps: Ewma::default(),
        }
    }

    pub fn last_event_ms(&self) -> i64 {
        self.last_event_ms
    }

    /// Records an event. An out-of-order event tells nothing about the cadence; a gap
    /// that was itself a silence is kept out of the baseline, like any anomaly.
    pub fn observe(&mut self, ts_ms: i64, settings: &SilenceSettings) {
        if ts_ms <= self.last_event_ms {
            return;
        }
        let gap = (ts_ms - self.last_event_ms) as f64;
        // The threshold is never below `min_silence`, so a shorter gap needs no judging:
        // this runs for every event.
        // Compared as integers: exact, as the float comparison was for any gap between
        // two valid event times (below 2^53 ms), and without a u128 to float conversion.
        let was_silence = (ts_ms - self.last_event_ms) as u128 > settings.min_silence.as_millis()
            && self.judge(ts_ms, settings).is_some_and(|j| j.silent);
        if !was_silence {
            self.gaps.update(gap, GAP_ALPHA);
        }
        self.last_event_ms = ts_ms;
    }

    /// Whether the stage normally sends several events per bucket (at least four): only
    /// then is an empty bucket a drop to zero rather than a pause between runs.
    pub fn is_dense(&self, bucket_ms: i64, training: u32) -> bool {
        self.gaps
            .baseline(training)
            .is_some_and(|b| b.expected * 4.0 <= bucket_ms as f64)
    }

    /// Judges the silence up to `now_ms`; `None` while the cadence is still being learnt.
    pub fn judge(&self, now_ms: i64, settings: &SilenceSettings) -> Option<SilenceJudgement> {
        let baseline = self.gaps.baseline(settings.training_gaps)?;
        let silent_for_ms = now_ms.saturating_sub(self.last_event_ms).max(0);
        let threshold_ms = (baseline.expected + settings.sensitivity * baseline.std_dev)
            .max(settings.min_silence.as_millis() as f64);
        // σ stretched so that the score is exactly `sensitivity` at the threshold, the
        // same convention as the metric bands.
        let sigma = ((threshold_ms - baseline.expected) / settings.sensitivity).max(1.0);
        Some(SilenceJudgement {
            silent_for_ms,
            baseline,
            threshold_ms,
            score: (silent_for_ms as f64 - baseline.expected) / sigma,
            silent: silent_for_ms as f64 > threshold_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> SilenceSettings {
        SilenceSettings {
            enabled: true,
            sensitivity: 4.0,
            min_silence: Duration::from_secs(120),
            training_gaps: 5,
        }
    }

    #[test]
    fn a_regular_stage_that_stops_is_silent() {
        let s = settings();
        let mut g = GapTracker::new(0);
        assert!(g.judge(1_000_000, &s).is_none(), "untrained");
        for i in 1..=20 {
            g.observe(i * 10_000, &s); // every 10 s
        }
        let last = 200_000;
        // σ is ~0 so the 2-minute floor rules
        let j = g.judge(last + 119_000, &s).unwrap();
        assert!(!j.silent);
        let j = g.judge(last + 121_000, &s).unwrap();
        assert!(j.silent && j.score > 4.0);
        assert!(g.is_dense(60_000, 5));
    }

    #[test]
    fn an_hourly_batch_is_judged_by_its_own_cadence() {
        let s = settings();
        let mut g = GapTracker::new(0);
        let hour = 3_600_000;
        for i in 1..=10 {
            g.observe(i * hour + (i % 3) * 5_000, &s);
        }
        let last = g.last_event_ms();
        assert!(!g.judge(last + hour, &s).unwrap().silent);
        assert!(g.judge(last + hour + 10 * 60_000, &s).unwrap().silent);
        assert!(!g.is_dense(60_000, 5));
    }

    #[test]
    fn the_silence_itself_is_not_learnt() {
        let s = settings();
        let mut g = GapTracker::new(0);
        for i in 1..=20 {
            g.observe(i * 10_000, &s);
        }
        g.observe(200_000 + 3_600_000, &s); // back after an hour
        let j = g.judge(g.last_event_ms() + 121_000, &s).unwrap();
        assert!(j.silent, "the baseline still expects a 10 s cadence");
    }
}
