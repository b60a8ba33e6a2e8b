//! Which detection settings apply to one metric of one stage.
//!
//! Layers, later winning field by field: `[detection]`, then `[metrics.<glob>]` tables
//! (globs first, exact names after), then `[[overrides]]` in file order. Stages share the
//! resolved policies: each series stores a small [`PolicyId`], not a copy.

use globset::GlobMatcher;

use crate::config::{compile_glob, Combine, DetectorKind, Direction, Scale, Settings, Tuning};

/// Everything that decides how one series is scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub enabled: bool,
    pub direction: Direction,
    pub ewma: bool,
    pub zscore: bool,
    pub combine: Combine,
    pub scale: Scale,
    pub sensitivity: f64,
    pub critical_score: f64,
    pub training_buckets: u32,
    pub ewma_alpha: f64,
    pub zscore_window: u32,
    /// `min_relative_change` above and below the expected value.
    pub min_relative_rise: f64,
    pub min_relative_fall: f64,
    pub min_absolute_change: f64,
    pub relearn_after: u32,
}

impl Policy {
    fn apply(&mut self, t: &Tuning) {
        if let Some(v) = t.enabled {
            self.enabled = v;
        }
        if let Some(v) = t.direction {
            self.direction = v;
        }
        if let Some(v) = &t.detectors {
            self.ewma = v.contains(&DetectorKind::Ewma);
            self.zscore = v.contains(&DetectorKind::Zscore);
        }
        if let Some(v) = t.combine {
            self.combine = v;
        }
        if let Some(v) = t.scale {
            self.scale = v;
        }
        if let Some(v) = t.sensitivity {
            self.sensitivity = v;
        }
        if let Some(v) = t.critical_score {
            self.critical_score = v;
        }
        if let Some(v) = t.training_buckets {
            self.training_buckets = v;
        }
        if let Some(v) = t.ewma_alpha {
            self.ewma_alpha = v;
        }
        if let Some(v) = t.zscore_window {
            self.zscore_window = v;
        }
        if let Some(v) = t.min_relative_change {
            (self.min_relative_rise, self.min_relative_fall) = (v, v);
        }
        if let Some(v) = t.min_relative_rise {
            self.min_relative_rise = v;
        }
        if let Some(v) = t.min_relative_fall {
            self.min_relative_fall = v;
        }
        if let Some(v) = t.min_absolute_change {
            self.min_absolute_change = v;
        }
        if let Some(v) = t.relearn_after {
            self.relearn_after = v;
        }
    }

    pub fn allows_up(&self) -> bool {
        self.direction != Direction::Down
    }

    pub fn allows_down(&self) -> bool {
        self.direction != Direction::Up
    }

    /// A value in the units detectors learn and score in.
    pub fn to_scale(&self, value: f64) -> f64 {
        match self.scale {
            Scale::Linear => value,
            Scale::Log => value.max(0.0).ln_1p(),
        }
    }

    /// Back from detector units to the metric's own.
    pub fn from_scale(&self, x: f64) -> f64 {
        match self.scale {
            Scale::Linear => x,
            Scale::Log => x.exp_m1(),
        }
    }
}

/// Index into [`PolicyBook`]; two bytes per series instead of a whole policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyId(u16);

pub struct PolicyBook {
    base: Policy,
    metric_layers: Vec<(GlobMatcher, Tuning)>,
    overrides: Vec<(GlobMatcher, GlobMatcher, Tuning)>,
    policies: Vec<Policy>,
}

impl PolicyBook {
    /// Settings are validated already, so every glob compiles.
    pub fn new(settings: &Settings) -> PolicyBook {
        let d = &settings.detection;
        let base = Policy {
            enabled: true,
            direction: Direction::Both,
            ewma: d.detectors.contains(&DetectorKind::Ewma),
            zscore: d.detectors.contains(&DetectorKind::Zscore),
            combine: d.combine,
            scale: d.scale,
            sensitivity: d.sensitivity,
            critical_score: d.critical_score,
            training_buckets: d.training_buckets,
            ewma_alpha: d.ewma_alpha,
            zscore_window: d.zscore_window,
            min_relative_rise: d.min_relative_change,
            min_relative_fall: d.min_relative_change,
            min_absolute_change: d.min_absolute_change,
            relearn_after: d.relearn_after,
        };
        let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
        let mut metric_layers: Vec<(&String, &Tuning)> = settings.metrics.iter().collect();
        // Globs before exact names; BTreeMap order within each group is deterministic.
        metric_layers.sort_by_key(|(name, _)| !is_glob(name));
        let matcher = |key: &str, glob: &str| compile_glob(key, glob).expect("validated glob");
        PolicyBook {
            base,
            metric_layers: metric_layers
                .into_iter()
                .map(|(name, t)| (matcher("metrics", name), t.clone()))
                .collect(),
            overrides: settings
                .overrides
                .iter()
                .map(|t| {
                    (
                        matcher("overrides", t.stages.as_deref().unwrap_or("*")),
                        matcher("overrides", t.metrics.as_deref().unwrap_or("*")),
                        t.clone(),
                    )
                })
                .collect(),
            policies: Vec::new(),
        }
    }

    /// The policy for `metric` of the stage "pipeline/stage".
    pub fn resolve(&mut self, stage_path: &str, metric: &str) -> PolicyId {
        let mut policy = self.base.clone();
        for (glob, tuning) in &self.metric_layers {
            if glob.is_match(metric) {
                policy.apply(tuning);
            }
        }
        for (stages, metrics, tuning) in &self.overrides {
            if stages.is_match(stage_path) && metrics.is_match(metric) {
                policy.apply(tuning);
            }
        }
        let index = match self.policies.iter().position(|p| *p == policy) {
            Some(i) => i,
            None => {
                self.policies.push(policy);
                self.policies.len() - 1
            }
        };
        // Distinct policies come from distinct config layers, a handful in practice; the
        // cap only guards the id's width.
        PolicyId(u16::try_from(index).unwrap_or(u16::MAX))
    }

    pub fn get(&self, id: PolicyId) -> &Policy {
        &self.policies[usize::from(id.0).min(self.policies.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw.toml");
        std::fs::write(&path, extra).unwrap();
        Settings::load_with_env(Some(&path), std::iter::empty()).unwrap()
    }

    #[test]
    fn layers_apply_in_order() {
        let s = settings(
            r#"
[metrics."quality.*"]
direction = "up"
[metrics."quality.completeness"]
direction = "down"
min_relative_fall = 0.1
[[overrides]]
stages = "billing/*"
metrics = "records"
sensitivity = 5.0
[[overrides]]
stages = "billing/load"
enabled = false
"#,
        );
        let mut book = PolicyBook::new(&s);
        let p = book.resolve("orders/load", "error_rate");
        assert_eq!(book.get(p).direction, Direction::Up, "from default.toml");
        let p = book.resolve("orders/load", "quality.null_rate");
        assert_eq!(book.get(p).direction, Direction::Up);
        let p = book.resolve("orders/load", "quality.completeness");
        assert_eq!(book.get(p).direction, Direction::Down, "exact beats glob");
        assert_eq!(book.get(p).min_relative_rise, 0.5, "from the glob table");
        assert_eq!(book.get(p).min_relative_fall, 0.1, "rise and fall apart");
        let p = book.resolve("billing/transform", "records");
        assert_eq!(book.get(p).sensitivity, 5.0);
        assert!(book.get(p).enabled);
        let p = book.resolve("billing/load", "records");
        assert_eq!(book.get(p).sensitivity, 5.0);
        assert!(!book.get(p).enabled);
        let a = book.resolve("x/y", "records");
        let b = book.resolve("z/w", "records");
        assert_eq!(a, b, "equal policies are shared");
    }
}
