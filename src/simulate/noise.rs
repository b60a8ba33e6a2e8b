//! Small deterministic randomness helpers shared by the generator, the fault planner and the
//! encoder.
//!
//! The generator draws a *fixed sequence* of random numbers per unit of work and turns them into
//! counts with the functions below, whose consumption never depends on the values involved. That
//! keeps the organic data of a run identical whatever faults are injected, so a faulted run
//! differs from the fault-free one only where a fault (or its downstream consequence) acts.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Independent random streams derived from one seed (ChaCha supports 2^64 streams per key).
pub(crate) mod stream {
    /// Per-pipeline variation of the topology (volumes, amplitudes, ...).
    pub const TOPOLOGY: u64 = 1;
    /// The default fault plan's schedule.
    pub const FAULT_PLAN: u64 = 2;
    /// Fault magnitudes (drop factor, latency factor, ...).
    pub const FAULT_MAGNITUDE: u64 = 3;
    /// Organic data of pipeline `p` uses `PIPELINE_BASE + 2p`, its fault noise the next one.
    pub const PIPELINE_BASE: u64 = 16;
}

/// A ChaCha8 generator for `seed` on one of the streams above.
pub(crate) fn seeded(seed: u64, stream_id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream_id);
    rng
}

/// One standard normal draw.
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample(StandardNormal)
}

/// SplitMix64's finaliser: a bijection on `u64` with good avalanche, used to derive event ids,
/// per-event delivery delays and per-event timestamp forms from a unique event key.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A Poisson-distributed count with mean `lambda`, from one normal draw `z` and one uniform draw
/// `u` supplied by the caller (so the random stream advances the same way for every `lambda`).
///
/// Small means use the exact inverse CDF; from 30 on the normal approximation is accurate to well
/// under a percent and keeps the cost constant for the large counts of batch runs.
pub(crate) fn poisson_like(lambda: f64, z: f64, u: f64) -> u64 {
    if lambda.is_nan() || lambda <= 0.0 {
        return 0;
    }
    if lambda >= 30.0 {
        return (lambda + z * lambda.sqrt()).round().max(0.0) as u64;
    }
    let mut k = 0u64;
    let mut p = (-lambda).exp();
    let mut cdf = p;
    // The tail beyond 200 is far below f64 resolution for lambda < 30.
    while u > cdf && k < 200 {
        k += 1;
        p *= lambda / k as f64;
        cdf += p;
    }
    k
}

/// `n × factor`, rounded to the nearest count.
pub(crate) fn scale_count(n: u64, factor: f64) -> u64 {
    (n as f64 * factor).round().max(0.0) as u64
}

/// Rounds to `digits` decimals, so that the JSON carries tidy figures like `0.002137`.
pub(crate) fn round_to(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_like_has_the_right_mean_for_small_and_large_lambdas() {
        let mut rng = seeded(7, 0);
        for &lambda in &[0.5, 3.0, 25.0, 400.0, 60_000.0] {
            let n = 20_000;
            let total: u64 = (0..n)
                .map(|_| {
                    let z = normal(&mut rng);
                    let u: f64 = rng.gen();
                    poisson_like(lambda, z, u)
                })
                .sum();
            let mean = total as f64 / n as f64;
            assert!(
                (mean - lambda).abs() < 0.05 * lambda + 0.05,
                "lambda {lambda}: mean {mean}"
            );
        }
        assert_eq!(poisson_like(0.0, 1.0, 0.5), 0);
        assert_eq!(poisson_like(f64::NAN, 1.0, 0.5), 0);
    }

    #[test]
    fn mix64_is_injective_on_a_sample() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u64 {
            assert!(seen.insert(mix64(i)));
        }
    }
}
