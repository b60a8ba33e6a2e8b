//! The stage graph of each pipeline: declared by producers (`upstream`), or learned from
//! the order in which runs pass through stages; and what each hop usually takes.

use std::sync::Arc;

use serde::Serialize;

use super::figures::StageFigures;
use crate::alert::Track;

/// Delays remembered per hop for its deadline (a ring of the latest).
const HOP_SAMPLES: usize = 64;
/// The 95th percentile of a hop is recomputed every this many new delays: selecting it
/// from the ring for every run would cost more than the rest of a run's tracking.
const QUANTILE_EVERY: u32 = 16;
/// A learned edge must show in this share of the downstream stage's runs (4/5, as a
/// fraction so the threshold is exact).
const LEARNED_SHARE: (u64, u64) = (4, 5);

/// At most this many delays of a full ring lie at or above its 95th percentile.
const ABOVE_P95: usize = HOP_SAMPLES - (HOP_SAMPLES * 95).div_ceil(100) + 1;

/// The `k`-th largest of `values` (`1 ≤ k ≤ ABOVE_P95`), in one pass that keeps the
/// largest few: a high quantile of a small ring costs less this way than by any sort.
fn kth_largest(values: &[f32], k: usize) -> f32 {
    let mut top = [f32::NEG_INFINITY; ABOVE_P95];
    let top = &mut top[..k];
    for &x in values {
        if x > top[k - 1] {
            let mut i = k - 1;
            while i > 0 && top[i - 1] < x {
                top[i] = top[i - 1];
                i -= 1;
            }
            top[i] = x;
        }
    }
    top[k - 1]
}

/// How many of `runs` runs a learned edge must show in.
fn learned_share_needed(runs: u32) -> u64 {
    (u64::from(runs) * LEARNED_SHARE.0).div_ceil(LEARNED_SHARE.1)
}

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
            let n = self.ring.len();
            let rank = (n * 95).div_ceil(100).clamp(1, n);
            self.p95_ms = f64::from(kth_largest(&self.ring, n - rank + 1));
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
    /// Upstream stages named by this stage's producers (`upstream` in its events); none
    /// when they name none, and the lineage is learned.
    pub declared: Option<Vec<u16>>,
    /// Upstream stages seen to end right before this one starts, with how many runs.
    pub learned: Vec<(u16, u32)>,
    /// Runs that completed this stage, counted as their visits settle.
    pub runs: u32,
    /// The upstream stages in effect (see [`PipelineFlow::upstream`]).
    upstream: Vec<u16>,
    /// The stages this one feeds: the reverse of the others' `upstream`.
    downstream: Vec<u16>,
    /// Delays of the hops into this stage.
    pub hops: Vec<HopStats>,
    /// Lifecycles of this stage's data-flow alerts: data loss, stuck runs, failed runs.
    pub tracks: [Track; 3],
    /// The source (engine) that last reported it, while it is here: the rows of its
    /// data-flow metrics go there, to the live view of the partition that has the
    /// stage. None before its first report, and once its partition is revoked: what
    /// tracking finds about the stage is then its new owner's to judge (see
    /// [`crate::flow::FlowTracker::remove_source`]).
    pub home: Option<u32>,
    /// Its data-flow metrics (hop delay, end-to-end latency), judged like any metric.
    pub figures: StageFigures,
}

/// The stage graph of one pipeline.
///
/// Every run asks for the stages up- and downstream of the ones it passes, several
/// times: both lists are kept, and brought up to date when what they derive from
/// changes (a declaration, a learned edge, a stage's run count), which for a pipeline
/// in a steady state leaves them as they are.
#[derive(Debug, Clone)]
pub struct PipelineFlow {
    pub name: Arc<str>,
    pub stages: Vec<FlowStage>,
    /// Runs a stage needs before its learned upstream stages count.
    min_runs: u32,
}

impl PipelineFlow {
    pub fn new(name: &str, min_runs: u32) -> PipelineFlow {
        PipelineFlow {
            name: Arc::from(name),
            stages: Vec::new(),
            min_runs,
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
            declared: None,
            learned: Vec::new(),
            runs: 0,
            upstream: Vec::new(),
            downstream: Vec::new(),
            hops: Vec::new(),
            tracks: [Track::Idle; 3],
            home: None,
            figures: StageFigures::default(),
        });
        Some((self.stages.len() - 1) as u16)
    }

    /// The upstream stages of `stage`: the declared ones when its producers declare
    /// them, else those learned from enough runs.
    pub fn upstream(&self, stage: u16) -> &[u16] {
        &self.stages[stage as usize].upstream
    }

    /// The stages `stage` feeds.
    pub fn downstream(&self, stage: u16) -> &[u16] {
        &self.stages[stage as usize].downstream
    }

    /// Producers of `stage` name its upstream stages `upstream` (stages beyond `max` are
    /// left out). The same list again changes nothing and allocates nothing. (Engines
    /// pass on only declarations written otherwise than the last one, see
    /// [`crate::flow::Sightings::push`].) An event that names none is not a declaration:
    /// it did not say the stage has no upstream.
    pub fn declare<'n>(
        &mut self,
        stage: u16,
        upstream: impl Iterator<Item = &'n str> + Clone,
        max: usize,
    ) {
        let s = &self.stages[stage as usize];
        if let Some(declared) = &s.declared {
            let stages = &self.stages;
            // Compared as resolved below; a list naming unknown stages, or one stage
            // twice, is resolved again each time: rare, and bounded.
            let same = (upstream.clone())
                .map(|n| stages.iter().position(|s| *s.name == *n))
                .filter(|&id| id != Some(stage as usize))
                .eq(declared.iter().map(|&d| Some(d as usize)));
            if same {
                return;
            }
        }
        let mut declared = Vec::new();
        for name in upstream {
            if let Some(id) = self.stage_id_or_add(name, max) {
                if id != stage && !declared.contains(&id) {
                    declared.push(id);
                }
            }
        }
        self.stages[stage as usize].declared = Some(declared);
        self.refresh(stage);
    }

    /// One more run completed `stage`.
    pub fn count_run(&mut self, stage: u16) {
        let s = &mut self.stages[stage as usize];
        let before = learned_share_needed(s.runs);
        s.runs = s.runs.saturating_add(1);
        let after = learned_share_needed(s.runs);
        // Nearly every run leaves the upstream stages as they were: only a learned edge
        // that falls under the share it needs now, or enough runs to start trusting
        // the learned ones, changes them.
        let changes = s.declared.is_none()
            && (s.runs == self.min_runs
                || s.learned
                    .iter()
                    .any(|&(_, n)| u64::from(n) >= before && u64::from(n) < after));
        if changes {
            self.refresh(stage);
        }
    }

    /// Brings `stage`'s upstream stages up to date, and if they changed, every stage's
    /// downstream ones.
    fn refresh(&mut self, stage: u16) {
        let s = &self.stages[stage as usize];
        let learned_share =
            (s.declared.is_none() && s.runs >= self.min_runs).then(|| learned_share_needed(s.runs));
        let effective = s.declared.as_deref().unwrap_or(&[]).iter().copied().chain(
            s.learned
                .iter()
                .filter(move |&&(_, n)| learned_share.is_some_and(|k| u64::from(n) >= k))
                .map(|&(from, _)| from),
        );
        if effective.clone().eq(s.upstream.iter().copied()) {
            return;
        }
        let upstream = effective.collect();
        self.stages[stage as usize].upstream = upstream;
        for s in &mut self.stages {
            s.downstream.clear();
        }
        for to in 0..self.stages.len() {
            for i in 0..self.stages[to].upstream.len() {
                let from = self.stages[to].upstream[i];
                self.stages[from as usize].downstream.push(to as u16);
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
        self.refresh(to);
    }

    pub fn learn(&mut self, from: u16, to: u16) {
        let learned = &mut self.stages[to as usize].learned;
        match learned.iter_mut().find(|(f, _)| *f == from) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => learned.push((from, 1)),
        }
        self.refresh(to);
    }

    /// The graph as the API shows it.
    pub fn graph(&self) -> Graph<'_> {
        let mut edges = Vec::new();
        for (to, stage) in self.stages.iter().enumerate() {
            for &from in &stage.upstream {
                let hop = self.hop(from, to as u16);
                edges.push(Edge {
                    from: &self.stages[from as usize].name,
                    to: &stage.name,
                    source: match stage.declared {
                        Some(_) => "declared",
                        None => "learned",
                    },
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
                        + s.figures.heap_bytes()
                        + s.declared.as_ref().map_or(0, |d| d.capacity() * 2)
                        + s.learned.capacity() * 8
                        + (s.upstream.capacity() + s.downstream.capacity()) * 2
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
    fn the_kth_largest_is_the_sorted_kth_from_the_top() {
        let values: [f32; 7] = [5.0, 1.0, 9.0, 9.0, 3.0, 7.0, 0.0];
        let mut sorted = values;
        sorted.sort_by(|a, b| b.total_cmp(a));
        for k in 1..=ABOVE_P95 {
            assert_eq!(kth_largest(&values, k), sorted[k - 1], "k = {k}");
        }
        assert_eq!(ABOVE_P95, 4, "61st of 64");
    }

    #[test]
    fn learned_edges_need_most_of_the_runs() {
        let mut p = PipelineFlow::new("p", 10);
        let a = p.stage_id_or_add("a", 8).unwrap();
        let b = p.stage_id_or_add("b", 8).unwrap();
        let c = p.stage_id_or_add("c", 8).unwrap();
        for _ in 0..9 {
            p.count_run(b);
            p.learn(a, b);
        }
        p.learn(c, b);
        assert!(p.upstream(b).is_empty(), "too few runs to tell");
        p.count_run(b);
        assert_eq!(p.upstream(b), [a], "9 of 10 runs, but not 1 of 10");
        assert_eq!(p.downstream(a), [b]);
        assert!(p.downstream(c).is_empty());
        // Three runs without the edge: 9 of 13 is under four fifths.
        for _ in 0..3 {
            p.count_run(b);
        }
        assert!(p.upstream(b).is_empty());
        assert!(p.downstream(a).is_empty(), "kept in step");
        assert_eq!(p.stage_id_or_add("d", 3), None, "bounded");
    }

    #[test]
    fn declared_upstream_stages_replace_the_learned_ones() {
        let mut p = PipelineFlow::new("p", 10);
        let a = p.stage_id_or_add("a", 8).unwrap();
        let b = p.stage_id_or_add("b", 8).unwrap();
        for _ in 0..10 {
            p.count_run(b);
            p.learn(a, b);
        }
        assert_eq!(p.upstream(b), [a]);
        p.declare(b, ["x", "a", "b", "x"].into_iter(), 8);
        let x = p.stage_id("x").unwrap();
        assert_eq!(
            p.upstream(b),
            [x, a],
            "in order, itself and repeats left out"
        );
        assert_eq!(p.downstream(x), [b]);
        assert_eq!(p.graph().edges[0].source, "declared");
        p.declare(b, ["a"].into_iter(), 8);
        assert_eq!(p.upstream(b), [a], "a new declaration replaces the old");
        assert!(p.downstream(x).is_empty());
        p.declare(b, ["y", "z"].into_iter(), 4);
        assert_eq!(p.upstream(b), [p.stage_id("y").unwrap()], "bounded");
    }
}
