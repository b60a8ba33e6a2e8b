//! The simulated pipelines: fixed templates instantiated with a little seeded variation.
//!
//! The first four templates are the default set: two streaming pipelines, two batch pipelines,
//! one of which (`inventory_sync`) leaves `upstream` out of its events so that lineage must be
//! learned from the order of stages within a correlation id. More pipelines cycle through the
//! templates, with a `_2`, `_3`, ... suffix from the second round on.

use std::f64::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub(crate) const SECOND_MS: i64 = 1_000;
pub(crate) const MINUTE_MS: i64 = 60 * SECOND_MS;
pub(crate) const HOUR_MS: i64 = 60 * MINUTE_MS;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// How a pipeline cuts its work into units, each of which flows through every stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Micro-batches: a new unit every `interval_ms`, ±25 % jitter.
    Streaming { interval_ms: i64 },
    /// Scheduled runs every `period_ms`, aligned to UTC at `offset_ms` past each period, started
    /// 0–5 s late.
    Batch { period_ms: i64, offset_ms: i64 },
}

impl Mode {
    /// Nominal time between two units.
    pub(crate) fn cadence_ms(self) -> i64 {
        match self {
            Mode::Streaming { interval_ms } => interval_ms,
            Mode::Batch { period_ms, .. } => period_ms,
        }
    }

    pub(crate) fn is_streaming(self) -> bool {
        matches!(self, Mode::Streaming { .. })
    }
}

/// One stage of a template; the numbers are figures at the daily mean volume.
struct StageTpl {
    name: &'static str,
    /// Names of the stages feeding this one; they must come earlier in the template.
    upstream: &'static [&'static str],
    /// Records per second arriving from outside (sources only).
    source_rate: f64,
    /// Fraction of the input rejected on purpose (validation, filters).
    reject: f64,
    /// Average size of one output record.
    record_bytes: f64,
    /// Typical processing time of one unit.
    typical_ms: f64,
    /// Whether the stage reports quality figures.
    quality: bool,
}

const fn source(name: &'static str, rate: f64, reject: f64, bytes: f64, ms: f64) -> StageTpl {
    StageTpl {
        name,
        upstream: &[],
        source_rate: rate,
        reject,
        record_bytes: bytes,
        typical_ms: ms,
        quality: false,
    }
}

const fn stage(
    name: &'static str,
    upstream: &'static [&'static str],
    reject: f64,
    bytes: f64,
    ms: f64,
    quality: bool,
) -> StageTpl {
    StageTpl {
        name,
        upstream,
        source_rate: 0.0,
        reject,
        record_bytes: bytes,
        typical_ms: ms,
        quality,
    }
}

struct PipelineTpl {
    name: &'static str,
    mode: Mode,
    /// Whether events carry `upstream` (false: the engine must learn the lineage).
    upstream_in_events: bool,
    stages: &'static [StageTpl],
}

const fn streaming(interval_s: i64) -> Mode {
    Mode::Streaming {
        interval_ms: interval_s * SECOND_MS,
    }
}

const fn batch(period_min: i64, offset_min: i64) -> Mode {
    Mode::Batch {
        period_ms: period_min * MINUTE_MS,
        offset_ms: offset_min * MINUTE_MS,
    }
}

const TEMPLATES: &[PipelineTpl] = &[
    PipelineTpl {
        name: "orders_etl",
        mode: batch(60, 0),
        upstream_in_events: true,
        stages: &[
            source("extract", 16.7, 0.001, 850.0, 45_000.0),
            stage("transform", &["extract"], 0.004, 620.0, 70_000.0, true),
            stage("load", &["transform"], 0.001, 620.0, 40_000.0, false),
        ],
    },
    PipelineTpl {
        name: "clickstream",
        mode: streaming(8),
        upstream_in_events: true,
        stages: &[
            source("ingest", 120.0, 0.002, 1_400.0, 120.0),
            stage("parse", &["ingest"], 0.006, 900.0, 250.0, true),
            stage("sessionize", &["parse"], 0.001, 600.0, 400.0, false),
            stage("sink", &["sessionize"], 0.001, 600.0, 180.0, false),
        ],
    },
    PipelineTpl {
        name: "payments",
        mode: streaming(12),
        upstream_in_events: true,
        stages: &[
            source("cards", 25.0, 0.001, 700.0, 90.0),
            source("transfers", 9.0, 0.001, 900.0, 90.0),
            stage(
                "normalize",
                &["cards", "transfers"],
                0.003,
                750.0,
                200.0,
                true,
            ),
            stage("score", &["normalize"], 0.002, 800.0, 600.0, false),
            stage("publish", &["score"], 0.001, 800.0, 150.0, false),
        ],
    },
    PipelineTpl {
        name: "inventory_sync",
        mode: batch(15, 0),
        upstream_in_events: false,
        stages: &[
            source("snapshot", 25.0, 0.001, 300.0, 30_000.0),
            stage("diff", &["snapshot"], 0.002, 320.0, 25_000.0, true),
            stage("upsert", &["diff"], 0.001, 320.0, 40_000.0, false),
            stage("notify", &["diff"], 0.008, 200.0, 12_000.0, false),
        ],
    },
    PipelineTpl {
        name: "user_profiles",
        mode: batch(60, 30),
        upstream_in_events: true,
        stages: &[
            source("extract", 8.0, 0.002, 1_200.0, 35_000.0),
            stage("dedupe", &["extract"], 0.01, 1_150.0, 50_000.0, true),
            stage("load", &["dedupe"], 0.001, 1_150.0, 30_000.0, false),
        ],
    },
    PipelineTpl {
        name: "metrics_rollup",
        mode: streaming(15),
        upstream_in_events: true,
        stages: &[
            source("collect", 300.0, 0.001, 120.0, 150.0),
            stage("aggregate", &["collect"], 0.002, 160.0, 700.0, true),
            stage("store", &["aggregate"], 0.001, 160.0, 200.0, false),
        ],
    },
    PipelineTpl {
        name: "shipments",
        mode: streaming(6),
        upstream_in_events: true,
        stages: &[
            source("ingest", 15.0, 0.002, 1_000.0, 100.0),
            stage("geocode", &["ingest"], 0.005, 1_100.0, 500.0, true),
            stage("enrich", &["geocode"], 0.001, 1_300.0, 300.0, false),
            stage("sink", &["enrich"], 0.001, 1_300.0, 150.0, false),
        ],
    },
    PipelineTpl {
        name: "ad_spend",
        mode: batch(15, 5),
        upstream_in_events: true,
        stages: &[
            source("fetch", 6.0, 0.001, 500.0, 20_000.0),
            stage("normalize", &["fetch"], 0.003, 450.0, 15_000.0, true),
            stage("load", &["normalize"], 0.001, 450.0, 25_000.0, false),
        ],
    },
];

/// One stage of an instantiated pipeline.
#[derive(Clone, Debug)]
pub(crate) struct Stage {
    pub name: String,
    /// Indices of the stages feeding this one (always smaller than its own index).
    pub upstream: Vec<usize>,
    /// Names written to `upstream` in events; empty when the pipeline omits lineage.
    pub upstream_names: Vec<String>,
    /// Indices of the stages this one feeds.
    pub downstream: Vec<usize>,
    /// Records per second from outside at the daily mean (sources only).
    pub source_rate: f64,
    pub reject_frac: f64,
    pub record_bytes: f64,
    pub typical_ms: f64,
    /// Records read per unit at the daily mean; durations scale with `records_in / typical_in`.
    pub typical_in: f64,
    /// Baseline `null_rate` of the stages that report quality.
    pub null_base: Option<f64>,
    pub version: String,
    /// Host of a streaming stage (operators are pinned to one worker).
    pub pinned_host: usize,
}

/// An instantiated pipeline.
#[derive(Clone, Debug)]
pub(crate) struct Pipeline {
    pub name: String,
    pub mode: Mode,
    pub upstream_in_events: bool,
    pub stages: Vec<Stage>,
    /// Depth of the daily cycle (0.35 = ±35 %).
    pub amplitude: f64,
    /// Hour of day (UTC) of the volume trough.
    pub trough_hour: f64,
    /// Worker names; batch runs pick one per stage and run, streaming stages are pinned.
    pub hosts: Vec<String>,
}

impl Pipeline {
    /// Multiplier of the mean volume at `t_ms`: a sinusoid with its trough at night.
    pub(crate) fn daily_factor(&self, t_ms: i64) -> f64 {
        let hour = t_ms.rem_euclid(DAY_MS) as f64 / HOUR_MS as f64;
        1.0 - self.amplitude * (2.0 * PI * (hour - self.trough_hour) / 24.0).cos()
    }

    pub(crate) fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// Every stage reachable downstream of `stage`, in stage order.
    pub(crate) fn descendants(&self, stage: usize) -> Vec<usize> {
        let mut reached = vec![false; self.stages.len()];
        let mut todo = vec![stage];
        while let Some(s) = todo.pop() {
            for &d in &self.stages[s].downstream {
                if !reached[d] {
                    reached[d] = true;
                    todo.push(d);
                }
            }
        }
        (0..self.stages.len()).filter(|&s| reached[s]).collect()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Topology {
    pub pipelines: Vec<Pipeline>,
}

impl Topology {
    /// Instantiates `count` pipelines; `rng` supplies the per-pipeline variation.
    pub(crate) fn build(count: usize, rng: &mut ChaCha8Rng) -> Topology {
        let pipelines = (0..count)
            .map(|index| instantiate(index, &TEMPLATES[index % TEMPLATES.len()], rng))
            .collect();
        Topology { pipelines }
    }

    pub(crate) fn pipeline_index(&self, name: &str) -> Option<usize> {
        self.pipelines.iter().position(|p| p.name == name)
    }
}

fn instantiate(index: usize, tpl: &PipelineTpl, rng: &mut ChaCha8Rng) -> Pipeline {
    let round = index / TEMPLATES.len();
    let name = if round == 0 {
        tpl.name.to_string()
    } else {
        format!("{}_{}", tpl.name, round + 1)
    };
    // Replicas of a batch template start a few minutes later so that not every run of the
    // simulation lands on the same minute.
    let mode = match tpl.mode {
        Mode::Batch {
            period_ms,
            offset_ms,
        } => Mode::Batch {
            period_ms,
            offset_ms: (offset_ms + round as i64 * 7 * MINUTE_MS) % period_ms,
        },
        streaming => streaming,
    };
    let volume_scale = rng.gen_range(0.85..1.15);
    let amplitude = rng.gen_range(0.32..0.40);
    let trough_hour = rng.gen_range(3.0..5.0);
    let hosts = (1..=3)
        .map(|k| format!("worker-{}", index * 3 + k))
        .collect();
    let cadence_s = mode.cadence_ms() as f64 / SECOND_MS as f64;

    let mut stages: Vec<Stage> = Vec::with_capacity(tpl.stages.len());
    for (si, st) in tpl.stages.iter().enumerate() {
        let upstream: Vec<usize> = st
            .upstream
            .iter()
            .map(|u| {
                tpl.stages[..si]
                    .iter()
                    .position(|s| s.name == *u)
                    .expect("template upstream names refer to earlier stages")
            })
            .collect();
        let typical_in = if upstream.is_empty() {
            st.source_rate * volume_scale * cadence_s
        } else {
            upstream
                .iter()
                .map(|&u| stages[u].typical_in * (1.0 - stages[u].reject_frac))
                .sum()
        };
        let null_base = st.quality.then(|| 0.002 * rng.gen_range(0.8..1.2));
        stages.push(Stage {
            name: st.name.to_string(),
            upstream_names: if tpl.upstream_in_events {
                st.upstream.iter().map(|u| u.to_string()).collect()
            } else {
                Vec::new()
            },
            upstream,
            downstream: Vec::new(),
            source_rate: st.source_rate * volume_scale,
            reject_frac: st.reject,
            record_bytes: st.record_bytes,
            typical_ms: st.typical_ms,
            typical_in,
            null_base,
            version: format!("{}.{}.{}", 1 + index % 3, (2 + si * 3 + index) % 10, si),
            pinned_host: si % 3,
        });
    }
    for s in 0..stages.len() {
        for u in stages[s].upstream.clone() {
            stages[u].downstream.push(s);
        }
    }
    Pipeline {
        name,
        mode,
        upstream_in_events: tpl.upstream_in_events,
        stages,
        amplitude,
        trough_hour,
        hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::noise::seeded;

    #[test]
    fn templates_are_well_formed() {
        let topo = Topology::build(20, &mut seeded(1, 0));
        let mut names = std::collections::HashSet::new();
        for p in &topo.pipelines {
            assert!(
                names.insert(p.name.clone()),
                "duplicate pipeline {}",
                p.name
            );
            assert!((3..=5).contains(&p.stages.len()), "{}", p.name);
            assert!(p.stages[0].upstream.is_empty());
            for (i, s) in p.stages.iter().enumerate() {
                assert!(s.upstream.iter().all(|&u| u < i));
                assert!(s.typical_in > 0.0);
                assert_eq!(s.source_rate > 0.0, s.upstream.is_empty());
            }
            assert!(p.stages.iter().any(|s| s.null_base.is_some()));
        }
        assert_eq!(topo.pipelines[8].name, "orders_etl_2");
    }

    #[test]
    fn daily_cycle_has_its_trough_at_night() {
        let topo = Topology::build(1, &mut seeded(1, 0));
        let p = &topo.pipelines[0];
        let at = |h: f64| p.daily_factor((h * HOUR_MS as f64) as i64);
        assert!(at(p.trough_hour) < 0.7);
        assert!(at(p.trough_hour + 12.0) > 1.3);
    }
}
