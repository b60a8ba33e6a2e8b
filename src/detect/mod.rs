//! Detectors: from a metric's history to a judgement of its newest bucket.
//!
//! Every detector produces a [`Baseline`] (expected value and spread); one rule turns a
//! baseline into a band and a score, so that detectors differ only in how they learn:
//!
//! * the band's half-width is `max(sensitivity·σ, min_absolute_change,
//!   min_relative_change·|expected|)` (the relative minimum may differ above and below:
//!   `min_relative_rise`, `min_relative_fall`), so tiny moves on a flat series never alert and a
//!   zero variance never divides by zero (on the log scale the two minimums become the
//!   ratios `1 + min_relative_change` and `1 + min_absolute_change/expected`);
//! * the score is `(value − expected) / (half-width / sensitivity)`: a signed z-score
//!   that equals ±sensitivity exactly at the band's edges;
//! * a value is flagged when it leaves the band on a side the metric's `direction` allows.

mod ewma;
pub mod policy;
pub mod silence;
mod zscore;

pub use ewma::Ewma;
pub use policy::{Policy, PolicyBook, PolicyId};
pub use zscore::RollingWindow;

use crate::config::{Combine, DetectorKind, Scale};

/// What a detector has learnt: the expected value and its standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub expected: f64,
    pub std_dev: f64,
}

/// Scores beyond this are reported as this; they carry no more meaning and stay readable.
const MAX_ABS_SCORE: f64 = 1e6;

/// One detector's view of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    pub detector: DetectorKind,
    /// `None` while the detector is still learning.
    pub band: Option<Band>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    /// Signed z-units; `None` when the bucket had no value.
    pub score: Option<f64>,
    /// Outside the band on an allowed side.
    pub flagged: bool,
    /// Outside the band on either side: not normal, whether or not it alerts.
    pub unusual: bool,
}

/// Applies the band rule of this module to a baseline (in detector units) and a value
/// (in the metric's units); the band is reported in the metric's units.
pub fn band(policy: &Policy, baseline: Baseline, value: f64) -> Band {
    let Baseline { expected, std_dev } = baseline;
    // Every bucket of every series is judged: the transcendental functions of the log
    // scale are most of the cost, so each one is computed once.
    let expected_level = policy.from_scale(expected);
    // Half-widths above and below the expected value: they differ only when the minimum
    // relative rise and fall do.
    let half_width = |min_relative: f64| {
        let floor = match policy.scale {
            Scale::Linear => policy
                .min_absolute_change
                .max(min_relative * expected.abs()),
            Scale::Log => {
                let level = expected_level.max(f64::MIN_POSITIVE);
                min_relative
                    .ln_1p()
                    .max((policy.min_absolute_change / level).ln_1p())
            }
        };
        (policy.sensitivity * std_dev)
            .max(floor)
            // A flat series with both minimum changes at zero: any move is a real change,
            // but the score must stay finite.
            .max(f64::EPSILON * expected.abs().max(1.0))
    };
    let above = half_width(policy.min_relative_rise);
    let below = if policy.min_relative_fall.to_bits() == policy.min_relative_rise.to_bits() {
        above
    } else {
        half_width(policy.min_relative_fall)
    };
    let score = (!value.is_nan()).then(|| {
        let deviation = policy.to_scale(value) - expected;
        let half = if deviation >= 0.0 { above } else { below };
        (deviation * policy.sensitivity / half).clamp(-MAX_ABS_SCORE, MAX_ABS_SCORE)
    });
    let (flagged, unusual) = match score {
        Some(z) => (
            (z > policy.sensitivity && policy.allows_up())
                || (z < -policy.sensitivity && policy.allows_down()),
            z.abs() > policy.sensitivity,
        ),
        None => (false, false),
    };
    Band {
        expected: expected_level,
        lower: policy.from_scale(expected - below),
        upper: policy.from_scale(expected + above),
        score,
        flagged,
        unusual,
    }
}

/// The detectors' combined verdict on one bucket of one series.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    /// Anomalous under the policy (band left on a side `direction` alerts on): what the
    /// alert lifecycle sees.
    pub anomalous: bool,
    /// Band left on either side: kept out of the baselines. A latency that halves while
    /// volume collapses does not alert, but it is not the new normal either.
    pub unusual: bool,
    /// The judgement an alert reports: for `all`, the weakest of the agreeing detectors;
    /// for `any`, the strongest flagged one.
    pub lead: Option<Judgement>,
}

/// Per-series detector state that lives between buckets.
#[derive(Debug, Clone, Default)]
pub struct DetectorState {
    pub ewma: Ewma,
    pub zscore: RollingWindow,
    /// An unusual value whose successor is not known yet (see [`DetectorState::learn`]).
    held: Option<f64>,
    /// Consecutive unusual buckets so far.
    unusual_streak: u32,
}

/// Judges `value` against the series' state with each enabled detector, then combines
/// them. Leaves every judgement in `judgements`.
pub fn judge(
    policy: &Policy,
    state: &DetectorState,
    value: f64,
    judgements: &mut Vec<Judgement>,
) -> Verdict {
    judgements.clear();
    if policy.ewma {
        judgements.push(Judgement {
            detector: DetectorKind::Ewma,
            band: state
                .ewma
                .baseline(policy.training_buckets)
                .map(|b| band(policy, b, value)),
        });
    }
    if policy.zscore {
        judgements.push(Judgement {
            detector: DetectorKind::Zscore,
            band: state
                .zscore
                .baseline(policy.training_buckets)
                .map(|b| band(policy, b, value)),
        });
    }
    if !policy.enabled || value.is_nan() || judgements.is_empty() {
        return Verdict {
            anomalous: false,
            unusual: false,
            lead: judgements.first().copied(),
        };
    }
    let strength = |j: &Judgement| j.band.and_then(|b| b.score).map_or(0.0, f64::abs);
    let flagged = |j: &&Judgement| j.band.is_some_and(|b| b.flagged);
    let combine = |test: &dyn Fn(&Judgement) -> bool| match policy.combine {
        Combine::All => judgements.iter().all(test),
        Combine::Any => judgements.iter().any(test),
    };
    let anomalous = combine(&|j| j.band.is_some_and(|b| b.flagged));
    let unusual = combine(&|j| j.band.is_some_and(|b| b.unusual));
    let lead = match (anomalous, policy.combine) {
        (true, Combine::All) => judgements
            .iter()
            .min_by(|a, b| strength(a).total_cmp(&strength(b))),
        (true, Combine::Any) => judgements
            .iter()
            .filter(flagged)
            .max_by(|a, b| strength(a).total_cmp(&strength(b))),
        (false, _) => judgements
            .iter()
            .find(|j| j.band.is_some())
            .or(judgements.first()),
    };
    Verdict {
        anomalous,
        unusual,
        lead: lead.copied(),
    }
}

impl DetectorState {
    /// Learns from one judged bucket; returns true when the detectors have just
    /// accepted a new level (see below) and start learning again.
    ///
    /// Unusual buckets stay out of the baselines so that an outage is never learnt as
    /// the new normal. Two exceptions keep the baselines honest:
    ///
    /// * an unusual value that lasted a single bucket, between normal ones, was noise: it
    ///   is learnt once its successor turns out normal, clamped to the band it left
    ///   (`band`: lower, upper), so that one extreme value cannot inflate the spread.
    ///   Keeping such blips out altogether would cut the tails off every skewed series
    ///   (sparse counts, p95 of a few events): the spread would shrink, more buckets
    ///   would be flagged, and it would shrink again;
    /// * after `relearn_after` unusual buckets in a row the level has changed for good
    ///   (a migration, a new customer): the detectors forget and train on the new level.
    pub fn learn(
        &mut self,
        policy: &Policy,
        value: f64,
        unusual: bool,
        band: Option<(f64, f64)>,
    ) -> bool {
        if value.is_nan() {
            return false;
        }
        if unusual {
            let clamped = band.map_or(value, |(lower, upper)| value.clamp(lower, upper));
            self.held = if self.unusual_streak == 0 {
                Some(clamped)
            } else {
                None
            };
            self.unusual_streak += 1;
            if policy.relearn_after > 0 && self.unusual_streak >= policy.relearn_after {
                *self = DetectorState::default();
                return true;
            }
            return false;
        }
        if let Some(blip) = self.held.take() {
            self.update(policy, blip);
        }
        self.update(policy, value);
        self.unusual_streak = 0;
        false
    }

    fn update(&mut self, policy: &Policy, value: f64) {
        let x = policy.to_scale(value);
        if policy.ewma {
            self.ewma.update(x, policy.ewma_alpha);
        }
        if policy.zscore {
            self.zscore.push(x, policy.zscore_window);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Direction, Settings};

    fn baseline(expected: f64, std_dev: f64) -> Baseline {
        Baseline { expected, std_dev }
    }

    fn policy() -> Policy {
        let mut book = PolicyBook::new(&Settings::defaults());
        let id = book.resolve("p/s", "unnamed");
        book.get(id).clone()
    }

    #[test]
    fn band_rule_by_hand() {
        let mut p = policy();
        p.sensitivity = 3.0;
        (p.min_relative_rise, p.min_relative_fall) = (0.1, 0.1);
        p.min_absolute_change = 0.0;
        // σ dominates: half-width 3·10 = 30
        let b = band(&p, baseline(100.0, 10.0), 145.0);
        assert_eq!((b.lower, b.upper), (70.0, 130.0));
        assert!((b.score.unwrap() - 4.5).abs() < 1e-12);
        assert!(b.flagged);
        // relative floor dominates: half-width 0.1·100 = 10, score (95−100)·3/10 = −1.5
        let b = band(&p, baseline(100.0, 1.0), 95.0);
        assert_eq!((b.lower, b.upper), (90.0, 110.0));
        assert!((b.score.unwrap() + 1.5).abs() < 1e-12);
        assert!(!b.flagged);
        // direction: a drop is ignored when only `up` counts
        p.direction = Direction::Up;
        let b = band(&p, baseline(100.0, 1.0), 10.0);
        assert!(b.score.unwrap() < -3.0 && !b.flagged);
    }

    #[test]
    fn rise_and_fall_floors_make_an_asymmetric_band() {
        let mut p = policy();
        p.sensitivity = 3.0;
        p.min_absolute_change = 0.0;
        (p.min_relative_rise, p.min_relative_fall) = (1.0, 0.2);
        let b = band(&p, baseline(100.0, 1.0), 150.0);
        assert_eq!((b.lower, b.upper), (80.0, 200.0));
        assert!(!b.flagged, "+50% is within a 100% rise");
        let b = band(&p, baseline(100.0, 1.0), 75.0);
        assert!(b.flagged, "-25% is beyond a 20% fall");
        assert!((b.score.unwrap() + 3.75).abs() < 1e-12);
    }

    #[test]
    fn log_scale_bands_are_ratios() {
        let mut p = policy();
        p.scale = Scale::Log;
        p.sensitivity = 3.0;
        (p.min_relative_rise, p.min_relative_fall) = (0.5, 0.5);
        p.min_absolute_change = 0.0;
        // expected 99 in units: ln(100) in detector units; σ small, so the ×1.5 floor rules
        let b = band(&p, baseline(100f64.ln(), 0.01), 160.0);
        assert!((b.expected - 99.0).abs() < 1e-9);
        assert!((b.upper - (100.0 * 1.5 - 1.0)).abs() < 1e-9);
        assert!((b.lower - (100.0 / 1.5 - 1.0)).abs() < 1e-9);
        assert!(b.flagged, "161/100 > 1.5");
        let b = band(&p, baseline(100f64.ln(), 0.01), 140.0);
        assert!(!b.flagged);
        // zero is a finite score, not ln(0)
        let b = band(&p, baseline(100f64.ln(), 0.01), 0.0);
        assert!(b.score.unwrap().is_finite());
    }

    #[test]
    fn zero_variance_flat_series() {
        let mut p = policy();
        p.sensitivity = 3.0;
        (p.min_relative_rise, p.min_relative_fall) = (0.0, 0.0);
        p.min_absolute_change = 0.01;
        // error rate flat at 0: 0.5 points is within the minimum change, 2 points is not
        let b = band(&p, baseline(0.0, 0.0), 0.005);
        assert!(!b.flagged);
        let b = band(&p, baseline(0.0, 0.0), 0.02);
        assert!(b.flagged);
        assert!((b.score.unwrap() - 6.0).abs() < 1e-9);
        // both minimums zero: still finite
        p.min_absolute_change = 0.0;
        let b = band(&p, baseline(0.0, 0.0), 1.0);
        assert!(b.score.unwrap().is_finite() && b.flagged);
    }

    #[test]
    fn cold_start_never_flags() {
        let p = policy();
        let state = DetectorState::default();
        let mut js = Vec::new();
        let v = judge(&p, &state, 1e9, &mut js);
        assert!(!v.anomalous);
        assert!(js.iter().all(|j| j.band.is_none()));
    }

    #[test]
    fn combine_all_needs_every_detector() {
        let mut p = policy();
        p.training_buckets = 3;
        (p.min_relative_rise, p.min_relative_fall) = (0.0, 0.0);
        p.min_absolute_change = 0.0;
        let mut state = DetectorState::default();
        for x in [10.0, 11.0, 9.0, 10.0, 10.5, 9.5] {
            state.learn(&p, x, false, None);
        }
        let mut js = Vec::new();
        let v = judge(&p, &state, 30.0, &mut js);
        assert!(v.anomalous);
        assert_eq!(js.len(), 2);
        let weakest = js
            .iter()
            .map(|j| j.band.unwrap().score.unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(v.lead.unwrap().band.unwrap().score.unwrap(), weakest);
        let v = judge(&p, &state, 10.2, &mut js);
        assert!(!v.anomalous);
    }

    #[test]
    fn isolated_blips_are_learnt_and_outages_are_not() {
        let mut p = policy();
        p.zscore = false;
        let mut state = DetectorState::default();
        state.learn(&p, 10.0, false, None);
        // a blip: learnt only when the next bucket is normal
        state.learn(&p, 50.0, true, Some((5.0, 15.0)));
        assert_eq!(state.ewma.count(), 1);
        state.learn(&p, 10.0, false, None);
        assert_eq!(state.ewma.count(), 3);
        let mean = state.ewma.baseline(1).unwrap().expected;
        assert!(
            mean < 15.0,
            "the blip was learnt as its band edge, 15, not 50: {mean}"
        );
        // an outage of three buckets: none of it is learnt
        for _ in 0..3 {
            state.learn(&p, 0.0, true, None);
        }
        state.learn(&p, 10.0, false, None);
        assert_eq!(state.ewma.count(), 4);
        // no value: changes nothing
        state.learn(&p, f64::NAN, false, None);
        assert_eq!(state.ewma.count(), 4);
    }

    #[test]
    fn a_level_that_stays_is_accepted_after_relearn_after_buckets() {
        let mut p = policy();
        p.relearn_after = 5;
        let mut state = DetectorState::default();
        state.learn(&p, 10.0, false, None);
        let accepted: Vec<bool> = (0..5).map(|_| state.learn(&p, 30.0, true, None)).collect();
        assert_eq!(accepted, vec![false, false, false, false, true]);
        assert_eq!(state.ewma.count(), 0, "training again");
        p.relearn_after = 0;
        assert!(
            !(0..100).any(|_| state.learn(&p, 90.0, true, None)),
            "0 never relearns"
        );
    }
}
