//! The stage graph of each pipeline: declared by producers (`upstream`), or learned from
//! the order in which runs pass through stages; and what each hop usually takes.

use std::sync::Arc;

use serde::Serialize;

use crate::alert::Track;

/// Delays remembered per hop for its deadline (a ring of the latest).
const HOP_SAMPLES: usize = 64;
/// The 95th percentile of a hop is recomputed every this many new delays: sorting the
/// ring for every run would cost more than the rest of a run's tracking.
const QUANTILE_EVERY: u32 = 16;
/// A learned edge must show in this share of the downstream stage's runs.
const LEARNED_SHARE: f64 = 0.8;

/// Delays of one hop (upstream end → downstream end), for the stuck-run deadline.
#[derive(Debug, Clone)]
pub struct HopStats {
    pub from: u16,
    ring: Vec<f32>,
    next: usize,
    pub carried: u32,
    p95_ms: f64,
    since_quantile: u32,
}

impl HopStats {
    fn new(from: u16) -> HopStats {
        HopStats {
            from,
            ring: Vec::new(),
            next: 0,
            carried: 0,
            p95_ms: 0.0,
            since_quantile: 0,
        }
    }

    pub fn record(&mut self, delay_ms: i64) {
        let x = delay_ms.max(0) as f32;
        if self.ring.len() < HOP_SAMPLES {
            self.ring.push(x);
        } else {
            self.ring[self.next] = x;
        }
        self.next = (self.next + 1) % HOP_SAMPLES;
        self.carried = self.carried.saturating_add(1);
        self.since_quantile += 1;
        if self.since_quantile >= QUANTILE_EVERY || self.ring.len() < QUANTILE_EVERY as usize {
            self.since_quantile = 0;
            let mut sorted = self.ring.clone();
            sorted.sort_by(f32::total_cmp);
            let rank = ((sorted.len() as f64 * 0.95).ceil() as usize).clamp(1, sorted.len());
            self.p95_ms = f64::from(sorted[rank - 1]);
        }
    }

    pub fn p95_ms(&self) -> f64 {
        self.p95_ms
    }

    pub fn median_ms(&self) -> f64 {
        let mut sorted = self.ring.clone();
        sorted.sort_by(f32::total_cmp);
        sorted.get(sorted.len() / 2).map_or(0.0, |&x| f64::from(x))
    }
}

/// One stage of a pipeline as data-flow tracking sees it.
#[derive(Debug, Clone)]
pub struct FlowStage {
    pub name: Arc<str>,
    /// Upstream stages named by producers.
    pub declared: Vec<u16>,
    /// Upstream stages seen to end right before this one starts, with how many runs.
    pub learned: Vec<(u16, u32)>,
    /// Runs that reached this stage.
    pub runs: u32,
    /// Delays of the hops into this stage.
    pub hops: Vec<HopStats>,
    /// Lifecycles of this stage's data-flow alerts: data loss, stuck runs, failed runs.
    pub tracks: [Track; 3],
}

/// The stage graph of one pipeline.
#[derive(Debug, Clone)]
pub struct PipelineFlow {
    pub name: Arc<str>,
    pub stages: Vec<FlowStage>,
    /// Producers of this pipeline name upstream stages: the declared graph is the graph.
    pub declares: bool,
}

impl PipelineFlow {
    pub fn new(name: &str) -> PipelineFlow {
        PipelineFlow {
            name: Arc::from(name),
            stages: Vec::new(),
            declares: false,
        }
    }

    pub fn stage_id(&self, name: &str) -> Option<u16> {
        self.stages
            .iter()
            .position(|s| *s.name == *name)
            .map(|i| i as u16)
    }

    /// The id of stage `name`, added if new and `max` allows.
    pub fn stage_id_or_add(&mut self, name: &str, max: usize) -> Option<u16> {
        if let Some(id) = self.stage_id(name) {
            return Some(id);
        }
        if self.stages.len() >= max {
            return None;
        }
        self.stages.push(FlowStage {
            name: Arc::from(name),
            declared: Vec::new(),
            learned: Vec::new(),
            runs: 0,
            hops: Vec::new(),
            tracks: [Track::Idle; 3],
        });
        Some((self.stages.len() - 1) as u16)
    }

    /// The upstream stages of `stage`: the declared ones when producers declare them,
    /// else those learned from enough runs.
    pub fn upstream(&self, stage: u16, min_runs: u32, out: &mut Vec<u16>) {
        out.clear();
        let s = &self.stages[stage as usize];
        if self.declares {
            out.extend_from_slice(&s.declared);
            return;
        }
        if s.runs < min_runs {
            return;
        }
        let needed = (f64::from(s.runs) * LEARNED_SHARE).ceil() as u32;
        out.extend(
            s.learned
                .iter()
                .filter(|&&(_, n)| n >= needed)
                .map(|&(from, _)| from),
        );
    }

    /// The stages `stage` feeds.
    pub fn downstream(&self, stage: u16, min_runs: u32, out: &mut Vec<u16>) {
        out.clear();
        let mut ups = Vec::new();
        for (i, _) in self.stages.iter().enumerate() {
            self.upstream(i as u16, min_runs, &mut ups);
            if ups.contains(&stage) {
                out.push(i as u16);
            }
        }
    }

    pub fn hop_mut(&mut self, from: u16, to: u16) -> &mut HopStats {
        let hops = &mut self.stages[to as usize].hops;
        match hops.iter().position(|h| h.from == from) {
            Some(i) => &mut hops[i],
            None => {
                hops.push(HopStats::new(from));
                hops.last_mut().expect("just pushed")
            }
        }
    }

    pub fn hop(&self, from: u16, to: u16) -> Option<&HopStats> {
        self.stages[to as usize]
            .hops
            .iter()
            .find(|h| h.from == from)
    }

    /// A run no longer says `from` comes right before `to` (a stage between them
    /// reported late).
    pub fn unlearn(&mut self, from: u16, to: u16) {
        let learned = &mut self.stages[to as usize].learned;
        if let Some((_, n)) = learned.iter_mut().find(|(f, _)| *f == from) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn learn(&mut self, from: u16, to: u16) {
        let learned = &mut self.stages[to as usize].learned;
        match learned.iter_mut().find(|(f, _)| *f == from) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => learned.push((from, 1)),
        }
    }

    /// The graph as the API shows it.
    pub fn graph(&self, min_runs: u32) -> Graph<'_> {
        let mut edges = Vec::new();
        let mut ups = Vec::new();
        for (to, stage) in self.stages.iter().enumerate() {
            self.upstream(to as u16, min_runs, &mut ups);
            for &from in &ups {
                let hop = self.hop(from, to as u16);
                edges.push(Edge {
                    from: &self.stages[from as usize].name,
                    to: &stage.name,
                    source: if self.declares { "declared" } else { "learned" },
                    runs: hop.map_or(0, |h| h.carried),
                    median_delay_ms: hop.map(HopStats::median_ms),
                    p95_delay_ms: hop.map(HopStats::p95_ms),
                });
            }
        }
        Graph {
            pipeline: &self.name,
            stages: self.stages.iter().map(|s| &*s.name).collect(),
            edges,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.name.len()
            + self
                .stages
                .iter()
                .map(|s| {
                    std::mem::size_of::<FlowStage>()
                        + s.name.len()
                        + s.declared.capacity() * 2
                        + s.learned.capacity() * 8
                        + s.hops
                            .iter()
                            .map(|h| std::mem::size_of::<HopStats>() + h.ring.capacity() * 4)
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// `GET /api/v1/pipelines/{pipeline}/graph`.
#[derive(Debug, Serialize)]
pub struct Graph<'a> {
    pub pipeline: &'a str,
    pub stages: Vec<&'a str>,
    pub edges: Vec<Edge<'a>>,
}

#[derive(Debug, Serialize)]
pub struct Edge<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// `declared` by producers (`upstream`), or `learned` from runs.
    pub source: &'static str,
    /// Runs seen to take this hop.
    pub runs: u32,
    /// Upstream end to downstream end, over the latest runs.
    pub median_delay_ms: Option<f64>,
    pub p95_delay_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_95th_percentile_of_the_latest_delays() {
        let mut hop = HopStats::new(0);
        for d in 1..=112 {
            hop.record(d * 10);
        }
        // The ring holds the last 64 delays, and the figure is refreshed every 16: the
        // 61st of 64 consecutive ones ending at most 16 before the newest (1120).
        let p95 = hop.p95_ms();
        assert!((930.0..=1090.0).contains(&p95), "{p95}");
        assert_eq!(hop.carried, 112);
    }

    #[test]
    fn learned_edges_need_most_of_the_runs() {
        let mut p = PipelineFlow::new("p");
        let a = p.stage_id_or_add("a", 8).unwrap();
        let b = p.stage_id_or_add("b", 8).unwrap();
        let c = p.stage_id_or_add("c", 8).unwrap();
        p.stages[b as usize].runs = 10;
        for _ in 0..9 {
            p.learn(a, b);
        }
        p.learn(c, b);
        let mut ups = Vec::new();
        p.upstream(b, 10, &mut ups);
        assert_eq!(ups, [a]);
        p.upstream(b, 11, &mut ups);
        assert!(ups.is_empty(), "too few runs to tell");
        p.downstream(a, 10, &mut ups);
        assert_eq!(ups, [b]);
        assert_eq!(p.stage_id_or_add("d", 3), None, "bounded");
    }
}
