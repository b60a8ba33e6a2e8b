//! Rolling z-score: mean and sample standard deviation of the last `window` normal values
//! in the stage's history (anomalous buckets and buckets without a value are skipped).

use statrs::statistics::Statistics;

use super::Baseline;
use crate::window::History;

/// The baseline from history, or `None` while fewer than `min_samples` normal values
/// exist. `scratch` is reused across calls so scoring does not allocate.
pub fn baseline(
    history: &History,
    slot: usize,
    window: u32,
    min_samples: u32,
    scratch: &mut Vec<f64>,
) -> Option<Baseline> {
    scratch.clear();
    scratch.extend(
        history
            .newest_first(slot)
            .filter(|s| !s.anomalous && !s.value.is_nan())
            .map(|s| s.value)
            .take(window as usize),
    );
    if scratch.len() < (min_samples.min(window) as usize).max(2) {
        return None;
    }
    let expected = scratch.iter().mean();
    let std_dev = scratch.iter().std_dev();
    Some(Baseline {
        expected,
        std_dev: if std_dev.is_finite() { std_dev } else { 0.0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values_skip_anomalies_and_gaps() {
        let mut h = History::new(10, 1);
        for (v, anomalous) in [
            (2.0, false),
            (4.0, false),
            (1000.0, true),
            (f64::NAN, false),
            (4.0, false),
            (5.0, false),
            (5.0, false),
            (7.0, false),
            (9.0, false),
        ] {
            h.push(0, &[v], &[anomalous]);
        }
        let mut scratch = Vec::new();
        // normal values 2 4 4 5 5 7 9: mean 36/7; the last 5 are 4 5 5 7 9: mean 6
        let b = baseline(&h, 0, 5, 3, &mut scratch).unwrap();
        assert!((b.expected - 6.0).abs() < 1e-12);
        // sample variance of 4 5 5 7 9: (4+1+1+1+9)/4 = 4
        assert!((b.std_dev - 2.0).abs() < 1e-12);
        assert!(
            baseline(&h, 0, 30, 8, &mut scratch).is_none(),
            "only 7 normal values"
        );
    }
}
