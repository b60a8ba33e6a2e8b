//! Rolling z-score: mean and sample standard deviation of the last `window` values that
//! were judged normal.
//!
//! The detector keeps its own ring of normal values rather than reading the stage's
//! history: during a long outage the history fills with anomalous rows, and a baseline
//! read from it would run out of normal values and let the outage in.

use statrs::statistics::Statistics;

use super::Baseline;

/// The last `window` normal values with their running mean and sum of squared
/// deviations, so a baseline costs O(1) per bucket instead of a pass over the window.
#[derive(Debug, Clone, Default)]
pub struct RollingWindow {
    values: Box<[f64]>,
    len: usize,
    head: usize,
    mean: f64,
    /// Σ(x − mean)² over the held values (Welford).
    m2: f64,
    /// Pushes since the statistics were last computed exactly.
    since_exact: usize,
}

impl RollingWindow {
    /// Adds a normal value, forgetting the oldest once `window` are held. The ring is
    /// allocated on first use, so series without a z-score cost nothing.
    pub fn push(&mut self, x: f64, window: u32) {
        // Decoded figures are bounded, so this guards only against arithmetic on them
        // overflowing: a value whose square is not finite would blind the window.
        if !(x * x).is_finite() {
            return;
        }
        if self.values.is_empty() {
            self.values = vec![0.0; window.max(2) as usize].into_boxed_slice();
        }
        if self.len == self.values.len() {
            self.remove(self.values[self.head]);
        }
        self.values[self.head] = x;
        self.head = (self.head + 1) % self.values.len();
        self.add(x);
        // Sliding updates accumulate rounding error; recompute exactly once per window.
        self.since_exact += 1;
        if self.since_exact >= self.values.len() {
            self.recompute();
        }
    }

    fn add(&mut self, x: f64) {
        self.len += 1;
        let d = x - self.mean;
        self.mean += d / self.len as f64;
        self.m2 += d * (x - self.mean);
    }

    fn remove(&mut self, x: f64) {
        self.len -= 1;
        if self.len == 0 {
            (self.mean, self.m2) = (0.0, 0.0);
            return;
        }
        let d = x - self.mean;
        self.mean -= d / self.len as f64;
        self.m2 -= d * (x - self.mean);
    }

    fn recompute(&mut self) {
        let held = &self.values[..self.len];
        self.mean = held.mean();
        self.m2 = if self.len > 1 {
            held.variance() * (self.len - 1) as f64
        } else {
            0.0
        };
        self.since_exact = 0;
    }

    /// The baseline once `min_samples` normal values are held (at most the window).
    pub fn baseline(&self, min_samples: u32) -> Option<Baseline> {
        let needed = (min_samples as usize).clamp(2, self.values.len().max(2));
        if self.len < needed {
            return None;
        }
        let std_dev = (self.m2.max(0.0) / (self.len - 1) as f64).sqrt();
        Some(Baseline {
            expected: self.mean,
            std_dev: if std_dev.is_finite() { std_dev } else { 0.0 },
        })
    }

    pub fn heap_bytes(&self) -> usize {
        self.values.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values_over_the_last_window() {
        let mut w = RollingWindow::default();
        for x in [2.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            w.push(x, 5);
        }
        // the last 5 are 4 5 5 7 9: mean 6, sample variance (4+1+1+1+9)/4 = 4
        let b = w.baseline(3).unwrap();
        assert!((b.expected - 6.0).abs() < 1e-12);
        assert!((b.std_dev - 2.0).abs() < 1e-12);
        assert!(
            w.baseline(30).is_some(),
            "the minimum is capped at the window"
        );
        let mut w = RollingWindow::default();
        w.push(1.0, 5);
        assert!(w.baseline(3).is_none(), "still training");
    }

    #[test]
    fn sliding_statistics_match_a_fresh_computation() {
        let mut w = RollingWindow::default();
        let xs: Vec<f64> = (0..1000)
            .map(|i| 1e6 + ((i * 7919) % 101) as f64 * 3.5)
            .collect();
        for (i, &x) in xs.iter().enumerate() {
            w.push(x, 60);
            let held = &xs[i.saturating_sub(59)..=i];
            if held.len() >= 2 {
                let b = w.baseline(2).unwrap();
                assert!((b.expected - held.mean()).abs() < 1e-6, "mean at {i}");
                assert!((b.std_dev - held.std_dev()).abs() < 1e-6, "std at {i}");
            }
        }
    }
}
