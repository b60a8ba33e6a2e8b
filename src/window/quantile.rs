//! Streaming quantile estimate in constant memory: the P² algorithm (Jain & Chlamtac,
//! "The P² algorithm for dynamic calculation of quantiles and histograms without storing
//! observations", CACM 1985). Five markers track the minimum, the p/2, p and (1+p)/2
//! quantiles and the maximum; each observation moves them by a parabolic (or, where that
//! would break their order, linear) step. Constant size however many events a bucket holds:
//! 88 bytes, plus the first 32 values kept exactly (at most 256 bytes).

#[derive(Debug, Clone, Default)]
pub struct P2Quantile {
    /// The first observations, kept exactly: P² is rough on small samples, and most
    /// buckets of most stages hold few events. Freed once the markers take over.
    exact: Vec<f64>,
    /// Marker heights and 1-based ranks, valid once `n > EXACT_LIMIT`.
    heights: [f64; 5],
    positions: [u32; 5],
    n: u32,
}

/// The quantile every duration sketch tracks: `duration_p95`.
const P: f64 = 0.95;
/// How far each marker's desired rank moves per observation.
const INCREMENTS: [f64; 5] = [0.0, P / 2.0, P, (1.0 + P) / 2.0, 1.0];
/// Observations kept exactly before switching to markers (256 bytes).
const EXACT_LIMIT: usize = 32;

impl P2Quantile {
    /// Heap bytes held (the exact sample, until the markers take over).
    pub fn heap_bytes(&self) -> usize {
        self.exact.capacity() * std::mem::size_of::<f64>()
    }

    /// Back to no observations, keeping the sample's allocation for reuse.
    pub fn clear(&mut self) {
        let mut exact = std::mem::take(&mut self.exact);
        exact.clear();
        *self = P2Quantile {
            exact,
            ..P2Quantile::default()
        };
    }

    pub fn observe(&mut self, x: f64) {
        if (self.n as usize) < EXACT_LIMIT {
            self.exact.push(x);
            self.n += 1;
            return;
        }
        if self.n as usize == EXACT_LIMIT {
            self.seed_markers();
        }
        let q = &mut self.heights;
        let k = if x < q[0] {
            q[0] = x;
            0
        } else if x >= q[4] {
            q[4] = x;
            3
        } else {
            (0..4).find(|&i| x < q[i + 1]).unwrap_or(3)
        };
        for pos in &mut self.positions[k + 1..] {
            *pos = pos.saturating_add(1);
        }
        self.n = self.n.saturating_add(1);
        for (i, increment) in INCREMENTS.iter().enumerate().take(4).skip(1) {
            let desired = 1.0 + (self.n - 1) as f64 * increment;
            let d = desired - self.positions[i] as f64;
            let room_up = self.positions[i + 1] - self.positions[i] > 1;
            let room_down = self.positions[i] - self.positions[i - 1] > 1;
            if (d >= 1.0 && room_up) || (d <= -1.0 && room_down) {
                let step: i64 = if d > 0.0 { 1 } else { -1 };
                let candidate = self.parabolic(i, step as f64);
                self.heights[i] =
                    if self.heights[i - 1] < candidate && candidate < self.heights[i + 1] {
                        candidate
                    } else {
                        self.linear(i, step)
                    };
                self.positions[i] = (self.positions[i] as i64 + step) as u32;
            }
        }
    }

    /// Places the five markers at the exact sample's quantiles, as if P² had run on it
    /// perfectly, and frees the sample.
    fn seed_markers(&mut self) {
        let mut sample = std::mem::take(&mut self.exact);
        sample.sort_by(f64::total_cmp);
        let n = sample.len();
        for (i, inc) in INCREMENTS.iter().enumerate() {
            let rank = 1 + ((n - 1) as f64 * inc).round() as usize;
            self.positions[i] = rank as u32;
            self.heights[i] = sample[rank - 1];
        }
    }

    fn parabolic(&self, i: usize, d: f64) -> f64 {
        let (q, n) = (&self.heights, self.positions.map(|p| p as f64));
        q[i] + d / (n[i + 1] - n[i - 1])
            * ((n[i] - n[i - 1] + d) * (q[i + 1] - q[i]) / (n[i + 1] - n[i])
                + (n[i + 1] - n[i] - d) * (q[i] - q[i - 1]) / (n[i] - n[i - 1]))
    }

    fn linear(&self, i: usize, step: i64) -> f64 {
        let j = (i as i64 + step) as usize;
        let q = &self.heights;
        q[i] + step as f64 * (q[j] - q[i]) / (self.positions[j] as f64 - self.positions[i] as f64)
    }

    /// The estimate, or `None` before the first observation; exact (nearest rank) up to
    /// `EXACT_LIMIT` observations.
    pub fn value(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        if (self.n as usize) <= EXACT_LIMIT {
            let mut sorted = [0.0; EXACT_LIMIT];
            let sorted = &mut sorted[..self.exact.len()];
            sorted.copy_from_slice(&self.exact);
            sorted.sort_by(f64::total_cmp);
            let rank = (P * sorted.len() as f64).ceil() as usize;
            return Some(sorted[rank.clamp(1, sorted.len()) - 1]);
        }
        Some(self.heights[2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, LogNormal};

    fn exact_p95(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        let rank = (P * values.len() as f64).ceil() as usize;
        values[rank - 1]
    }

    #[test]
    fn small_counts_are_exact() {
        let mut q = P2Quantile::default();
        assert_eq!(q.value(), None);
        for x in [5.0, 1.0, 3.0] {
            q.observe(x);
        }
        assert_eq!(q.value(), Some(5.0));
    }

    #[test]
    fn tracks_the_p95_of_a_skewed_distribution() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let dist = LogNormal::new(6.0, 0.5).unwrap();
        for (n, tolerance) in [(20usize, 0.0), (50, 0.15), (1_000, 0.05), (100_000, 0.03)] {
            let mut q = P2Quantile::default();
            let mut all: Vec<f64> = (0..n).map(|_| dist.sample(&mut rng)).collect();
            for &x in &all {
                q.observe(x);
            }
            let exact = exact_p95(&mut all);
            let err = (q.value().unwrap() - exact).abs() / exact;
            assert!(
                err <= tolerance,
                "n={n}: estimate {:?} vs exact {exact} ({err:.3})",
                q.value()
            );
        }
    }

    #[test]
    fn constant_and_sorted_inputs_stay_sane() {
        let mut q = P2Quantile::default();
        for _ in 0..1000 {
            q.observe(42.0);
        }
        assert_eq!(q.value(), Some(42.0));
        let mut q = P2Quantile::default();
        for i in 0..1000 {
            q.observe(i as f64);
        }
        let v = q.value().unwrap();
        assert!((v - 949.0).abs() < 15.0, "{v}");
    }
}
