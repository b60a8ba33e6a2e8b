//! Exponentially weighted moving mean and variance.
//!
//! `mean += a·(x − mean)` and `var = (1 − a)·(var + a·(x − mean)²)` (Finch, "Incremental
//! calculation of weighted mean and variance", 2009). While fewer than 1/alpha values
//! have been seen the weight is 1/(n+1), so the first values give their plain mean
//! instead of being pulled towards an arbitrary start.

use super::Baseline;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ewma {
    mean: f64,
    var: f64,
    n: u32,
}

impl Ewma {
    pub fn update(&mut self, x: f64, alpha: f64) {
        let a = alpha.max(1.0 / (self.n as f64 + 1.0));
        let diff = x - self.mean;
        let incr = a * diff;
        let (mean, var) = (self.mean + incr, (1.0 - a) * (self.var + diff * incr));
        // A state that is not finite would blind the detector for good: refuse the value.
        if mean.is_finite() && var.is_finite() {
            (self.mean, self.var) = (mean, var);
            self.n = self.n.saturating_add(1);
        }
    }

    pub fn count(&self) -> u32 {
        self.n
    }

    /// The baseline once `training` values have been learnt.
    pub fn baseline(&self, training: u32) -> Option<Baseline> {
        (self.n >= training).then(|| Baseline {
            expected: self.mean,
            std_dev: self.var.max(0.0).sqrt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        let mut e = Ewma::default();
        e.update(10.0, 0.5); // a = 1: mean 10, var 0
        assert_eq!((e.mean, e.var), (10.0, 0.0));
        e.update(20.0, 0.5); // a = 0.5: diff 10, incr 5 → mean 15, var 0.5·(0 + 50) = 25
        assert_eq!((e.mean, e.var), (15.0, 25.0));
        e.update(15.0, 0.5); // a = 0.5: diff 0 → mean 15, var 12.5
        assert_eq!((e.mean, e.var), (15.0, 12.5));
        e.update(5.0, 0.5); // diff −10, incr −5 → mean 10, var 0.5·(12.5 + 50) = 31.25
        assert_eq!((e.mean, e.var), (10.0, 31.25));
        let b = e.baseline(4).unwrap();
        assert_eq!(b.expected, 10.0);
        assert!((b.std_dev - 31.25f64.sqrt()).abs() < 1e-12);
        assert!(e.baseline(5).is_none(), "still training");
    }

    #[test]
    fn early_values_give_their_plain_mean() {
        let mut e = Ewma::default();
        for x in [2.0, 4.0, 6.0] {
            e.update(x, 0.1);
        }
        assert!((e.mean - 4.0).abs() < 1e-12);
    }
}
