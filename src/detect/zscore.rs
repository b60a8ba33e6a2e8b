//! Rolling z-score: mean and sample standard deviation of the last `window` values that
//! were judged normal.
//!
//! The detector keeps its own ring of normal values rather than reading the stage's
//! history: during a long outage the history fills with anomalous rows, and a baseline
//! read from it would run out of normal values and let the outage in.

use statrs::statistics::Statistics;

use super::Baseline;

#[derive(Debug, Clone, Default)]
pub struct RollingWindow {
    values: Box<[f64]>,
    len: usize,
    head: usize,
}

impl RollingWindow {
    /// Adds a normal value, forgetting the oldest once `window` are held. The ring is
    /// allocated on first use, so series without a z-score cost nothing.
    pub fn push(&mut self, x: f64, window: u32) {
        if self.values.is_empty() {
            self.values = vec![0.0; window.max(2) as usize].into_boxed_slice();
        }
        self.values[self.head] = x;
        self.head = (self.head + 1) % self.values.len();
        self.len = (self.len + 1).min(self.values.len());
    }

    /// The baseline once `min_samples` normal values are held (at most the window).
    pub fn baseline(&self, min_samples: u32) -> Option<Baseline> {
        let needed = (min_samples as usize).clamp(2, self.values.len().max(2));
        if self.len < needed {
            return None;
        }
        let held = &self.values[..self.len];
        let std_dev = held.std_dev();
        Some(Baseline {
            expected: held.mean(),
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
}
