//! Detectors: from a metric's history to a judgement of its newest bucket.
//!
//! Every detector produces a [`Baseline`] (expected value and spread); one rule turns a
//! baseline into a band and a score, so that detectors differ only in how they learn:
//!
//! * the band's half-width is `max(sensitivity·σ, min_absolute_change,
//!   min_relative_change·|expected|)`, so tiny moves on a flat series never alert and a
//!   zero variance never divides by zero;
//! * the score is `(value − expected) / (half-width / sensitivity)`: a signed z-score
//!   that equals ±sensitivity exactly at the band's edges;
//! * a value is flagged when it leaves the band on a side the metric's `direction` allows.

mod ewma;
pub mod policy;
pub mod silence;
mod zscore;

pub use ewma::Ewma;
pub use zscore::RollingWindow;
pub use policy::{Policy, PolicyBook, PolicyId};

use crate::config::{Combine, DetectorKind};

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
}

/// Applies the band rule of this module to a baseline.
pub fn band(policy: &Policy, baseline: Baseline, value: f64) -> Band {
    let Baseline { expected, std_dev } = baseline;
    let half_width = (policy.sensitivity * std_dev)
        .max(policy.min_absolute_change)
        .max(policy.min_relative_change * expected.abs())
        // A flat series with both minimum changes at zero: any move is a real change,
        // but the score must stay finite.
        .max(f64::EPSILON * expected.abs().max(1.0));
    let score = (!value.is_nan()).then(|| {
        ((value - expected) * policy.sensitivity / half_width).clamp(-MAX_ABS_SCORE, MAX_ABS_SCORE)
    });
    let flagged = match score {
        Some(z) => {
            (z > policy.sensitivity && policy.allows_up())
                || (z < -policy.sensitivity && policy.allows_down())
        }
        None => false,
    };
    Band {
        expected,
        lower: expected - half_width,
        upper: expected + half_width,
        score,
        flagged,
    }
}

/// The detectors' combined verdict on one bucket of one series.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    /// Anomalous under the policy: what the alert lifecycle sees and what is kept out
    /// of the baselines.
    pub anomalous: bool,
    /// The judgement an alert reports: for `all`, the weakest of the agreeing detectors;
    /// for `any`, the strongest flagged one.
    pub lead: Option<Judgement>,
}

/// Per-series detector state that lives between buckets.
#[derive(Debug, Clone, Default)]
pub struct DetectorState {
    pub ewma: Ewma,
    pub zscore: RollingWindow,
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
            lead: judgements.first().copied(),
        };
    }
    let strength = |j: &Judgement| j.band.and_then(|b| b.score).map_or(0.0, f64::abs);
    let flagged = |j: &&Judgement| j.band.is_some_and(|b| b.flagged);
    let anomalous = match policy.combine {
        Combine::All => judgements.iter().all(|j| flagged(&j)),
        Combine::Any => judgements.iter().any(|j| flagged(&j)),
    };
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
        lead: lead.copied(),
    }
}

/// Learns from a bucket that was not anomalous.
pub fn learn(policy: &Policy, state: &mut DetectorState, value: f64) {
    if !value.is_nan() {
        if policy.ewma {
            state.ewma.update(value, policy.ewma_alpha);
        }
        if policy.zscore {
            state.zscore.push(value, policy.zscore_window);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Direction, Settings};

    fn policy() -> Policy {
        let mut book = PolicyBook::new(&Settings::defaults());
        let id = book.resolve("p/s", "unnamed");
        book.get(id).clone()
    }

    #[test]
    fn band_rule_by_hand() {
        let mut p = policy();
        p.sensitivity = 3.0;
        p.min_relative_change = 0.1;
        p.min_absolute_change = 0.0;
        // σ dominates: half-width 3·10 = 30
        let b = band(
            &p,
            Baseline {
                expected: 100.0,
                std_dev: 10.0,
            },
            145.0,
        );
        assert_eq!((b.lower, b.upper), (70.0, 130.0));
        assert!((b.score.unwrap() - 4.5).abs() < 1e-12);
        assert!(b.flagged);
        // relative floor dominates: half-width 0.1·100 = 10, score (95−100)·3/10 = −1.5
        let b = band(
            &p,
            Baseline {
                expected: 100.0,
                std_dev: 1.0,
            },
            95.0,
        );
        assert_eq!((b.lower, b.upper), (90.0, 110.0));
        assert!((b.score.unwrap() + 1.5).abs() < 1e-12);
        assert!(!b.flagged);
        // direction: a drop is ignored when only `up` counts
        p.direction = Direction::Up;
        let b = band(
            &p,
            Baseline {
                expected: 100.0,
                std_dev: 1.0,
            },
            10.0,
        );
        assert!(b.score.unwrap() < -3.0 && !b.flagged);
    }

    #[test]
    fn zero_variance_flat_series() {
        let mut p = policy();
        p.min_relative_change = 0.0;
        p.min_absolute_change = 0.01;
        // error rate flat at 0: 0.5 points is within the minimum change, 2 points is not
        let b = band(
            &p,
            Baseline {
                expected: 0.0,
                std_dev: 0.0,
            },
            0.005,
        );
        assert!(!b.flagged);
        let b = band(
            &p,
            Baseline {
                expected: 0.0,
                std_dev: 0.0,
            },
            0.02,
        );
        assert!(b.flagged);
        assert!((b.score.unwrap() - 6.0).abs() < 1e-9);
        // both minimums zero: still finite
        p.min_absolute_change = 0.0;
        let b = band(
            &p,
            Baseline {
                expected: 0.0,
                std_dev: 0.0,
            },
            1.0,
        );
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
        p.min_relative_change = 0.0;
        p.min_absolute_change = 0.0;
        let mut state = DetectorState::default();
        for x in [10.0, 11.0, 9.0, 10.0, 10.5, 9.5] {
            learn(&p, &mut state, x);
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
}
