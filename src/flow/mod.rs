//! Data-flow tracking: following runs across the stages of a pipeline.
//!
//! Metrics per stage say that a stage is unwell; following a run says what happened to
//! the data. Events that share a `correlation_id` within a pipeline form a **run**; for
//! each run the tracker keeps which stages it passed, when, and with how many records.
//! From the runs it keeps each pipeline's **lineage** ([`lineage`]) and finds:
//!
//! * **lost records** (`data_loss`): a stage read fewer records than its upstream stages
//!   wrote in the same run (their `records_out` already excludes what they rejected on
//!   purpose), beyond `flow.loss_tolerance`;
//! * **stuck runs** (`stuck_run`): a run reached a stage but not the next one within the
//!   hop's deadline, `flow.stuck_factor` × the 95th percentile of its past delays, at least
//!   `flow.stuck_min`;
//! * **failed runs** (`failed_run`): a stage reported `failure` for a run and no later
//!   success within `flow.stuck_min`.
//!
//! It also measures the hand-over delay into each stage (`hop_delay`, milliseconds from
//! the end of the last of its upstream stages to its start) and each run's end-to-end
//! latency at its final stages (`e2e_latency`, milliseconds from the run's first start),
//! and judges them like any other metric of the stage ([`figures`]).
//!
//! Time is event time. The tracker's clock is the slowest of its sources' watermarks
//! (one per partition engine in `pipewatch run`), so a partition catching up never makes
//! another partition's runs look stuck.
//!
//! The tracker runs on a thread of its own ([`worker`]): following runs costs more than
//! everything else done with an event, and none of it is needed to judge the event's
//! own stage.
//!
//! Memory is bounded: at most `flow.max_runs` runs (the oldest go first), each forgotten
//! `flow.run_ttl` after its last event, and `flow.max_stages_per_pipeline` stages per
//! pipeline; every forgotten run is counted.

mod figures;
pub mod lineage;
mod worker;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashMap;
use serde::Serialize;

use crate::alert::{Alert, AlertFactory, AlertFacts, Notice, Observation, Rules, Severity, Track};
use crate::config::{FlowSettings, Settings};
use crate::decode::{Event, Status};
use crate::detect::{Judgement, PolicyBook};
use crate::engine::Outputs;
use crate::metric::AlertKind;
use crate::probe_table::{prefetch, ProbeTable};
use crate::score::{AlertCounts, ScoreRows, ScoredBucket};
use crate::time::serialize_ms;

use figures::{FigureJudge, StageFigures};

use lineage::{Graph, PipelineFlow};
pub use worker::{Answer, FlowLink, SharedFlow};

/// A stage as the tracker knows it. An engine keeps the key of each of its stages
/// ([`FlowTracker::stage_key`]), so that following a run costs no name lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageKey {
    pipeline: u32,
    stage: u16,
}

/// The metrics data-flow tracking measures for a stage, judged like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowMetric {
    /// Milliseconds from the end of the last of the stage's upstream stages to its start.
    HopDelay,
    /// Milliseconds from a run's first start to its end at this (final) stage.
    E2eLatency,
}

impl FlowMetric {
    pub const COUNT: usize = 2;
    /// In the order of [`FlowMetric::index`].
    pub const ALL: [FlowMetric; FlowMetric::COUNT] = [FlowMetric::HopDelay, FlowMetric::E2eLatency];

    /// Its place in per-metric arrays (below [`FlowMetric::COUNT`]).
    pub fn index(self) -> usize {
        match self {
            FlowMetric::HopDelay => 0,
            FlowMetric::E2eLatency => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FlowMetric::HopDelay => "hop_delay",
            FlowMetric::E2eLatency => "e2e_latency",
        }
    }
}

/// Events an engine has read for the tracker and not handed over yet. An engine hands
/// them over in batches ([`FlowTracker::observe`], before it moves the tracker's clock),
/// so that following runs costs one lock per batch rather than one per event, and the
/// tracker's code and data stay in the caches while it takes a batch in.
#[derive(Debug, Default)]
pub struct Sightings {
    entries: Vec<Sighting>,
    /// The correlation ids of the entries, one after the other.
    ids: String,
    /// The upstream stages an entry's event declared, by the entry's place: only for
    /// the events whose engine saw the declaration change ([`Sightings::push`]).
    declarations: Vec<(usize, Vec<Box<str>>)>,
    /// Events of stages the tracker has no room for ([`FlowTracker::stage_key`]).
    refused: u64,
}

/// One event, as [`Sightings`] holds it until the tracker takes it in: what its
/// [`Visit`] needs, in one cache line.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Sighting {
    key: StageKey,
    /// Where its correlation id ends in [`Sightings::ids`].
    id_end: u32,
    report: Report,
    status: Status,
}

const _: () = assert!(std::mem::size_of::<Sighting>() == 64);

impl Sightings {
    /// Keeps one valid event of stage `key` for the tracker. With `declares`, its
    /// `upstream` goes too: the engine passes it only when it changed, for comparing
    /// the names with the declared stages takes longer than the rest of the event.
    /// Events without a correlation id have nothing to follow. Returns how many events
    /// are waiting.
    pub fn push(&mut self, key: StageKey, event: &Event, declares: bool) -> usize {
        let Some(correlation_id) = event.correlation_id.as_deref() else {
            return self.entries.len();
        };
        if declares {
            let names = event.upstream.names().map(Box::from).collect();
            self.declarations.push((self.entries.len(), names));
        }
        self.ids.push_str(correlation_id);
        self.entries.push(Sighting {
            key,
            id_end: self.ids.len() as u32,
            report: Report::of(event),
            status: event.status,
        });
        self.entries.len()
    }

    /// Counts an event of a stage the tracker has no room for.
    pub fn refuse(&mut self) {
        self.refused += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.refused == 0
    }
}

/// Deadlines are cut to this: a hop that takes longer is not a hop a run can be
/// "stuck" on in any useful sense, and checks must not wait for ever.
const MAX_DEADLINE_MS: i64 = 7 * 24 * 3_600_000;

/// Which lifecycle of a stage: index into `FlowStage::tracks`.
const LOSS: usize = 0;
const STUCK: usize = 1;
const FAILED: usize = 2;

/// What an event says of its stage's part in a run. (Its status is kept beside it, so
/// that a [`Visit`] and a [`Sighting`] pack it with their other small fields.)
#[derive(Debug, Clone, Copy)]
struct Report {
    start_ms: i64,
    end_ms: i64,
    records_in: Count,
    records_out: Count,
    records_rejected: Count,
}

impl Report {
    fn of(event: &Event) -> Report {
        let end_ms = event.timestamp_ms;
        Report {
            start_ms: end_ms - event.duration_ms.map_or(0, |d| d.round() as i64),
            end_ms,
            records_in: Count::new(event.records_in),
            records_out: Count::new(event.records_out),
            records_rejected: Count::new(event.records_rejected),
        }
    }
}

/// One stage's part in one run.
#[derive(Debug, Clone, Copy)]
struct Visit {
    stage: u16,
    report: Report,
    status: Status,
    /// When the run reached the stage: the end of the earliest of its reports there,
    /// attempts included. Deadlines are kept or missed in event time, whichever report
    /// was read first and whenever the check ran.
    reached_ms: i64,
    /// Whether a failure here still waits for a success (`flow.stuck_min` from
    /// `reached_ms`), through a retry's success replacing the attempt.
    recovery: Recovery,
    /// A stuck run is reported once per run and stage left.
    reported: bool,
    /// Its records were compared with its upstream stages' (once per run and stage).
    loss_checked: bool,
}

/// A visit's standing as a possibly failed run. Ordered: a later report of the stage
/// never moves it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Recovery {
    /// No failure reported here.
    NotNeeded,
    /// A failure reported, and a success by the deadline would make up for it.
    Awaited,
    /// Reported as a failed run, or made up for in time: settled either way.
    Settled,
}

// Visits are scanned on every event of their run: they stay small.
const _: () = assert!(std::mem::size_of::<Visit>() <= 56);

/// A record count of a visit: an `Option<u64>` in 8 bytes rather than 16, for a run's
/// visits are scanned on every event of the run (`u64::MAX` is none; a count that large
/// is cut to one less).
#[derive(Debug, Clone, Copy)]
struct Count(u64);

impl Count {
    fn new(count: Option<u64>) -> Count {
        Count(count.map_or(u64::MAX, |c| c.min(u64::MAX - 1)))
    }

    fn get(self) -> Option<u64> {
        (self.0 != u64::MAX).then_some(self.0)
    }
}

/// A run in its slot of [`FlowTracker::runs`]. A slot is reused once its run is
/// forgotten, with the capacity of its lists: in a steady state following runs
/// allocates nothing.
#[derive(Debug, Clone, Default)]
struct Run {
    /// Which run holds the slot; 0 while the slot is free.
    serial: u64,
    /// Of the correlation id, to find the run and to forget it without hashing again.
    hash: u64,
    pipeline: u32,
    correlation_id: String,
    visits: Vec<Visit>,
    /// The lineage edges this run counts for (see [`relearn`]).
    edges: Vec<(u16, u16)>,
    last_ms: i64,
    /// When its check is due (`i64::MAX`: none is). A run has one check in
    /// [`FlowTracker::checks`] at a time, for the earliest of its deadlines.
    check_ms: i64,
}

/// A run, as queues and checks refer to it: a slot and the serial of the run that held
/// it then, so a reference outliving its run finds nothing. Ordered by serial, that is
/// by the age of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RunRef {
    serial: u64,
    slot: u32,
}

/// A run's entry in [`FlowTracker::by_correlation`]: the low half of its correlation id's
/// hash (its place in the table) above its slot plus one (so that no entry is 0).
fn run_entry(hash: u64, slot: u32) -> u64 {
    run_place(hash) << 32 | (u64::from(slot) + 1)
}

fn run_place(hash: u64) -> u64 {
    hash & u64::from(u32::MAX)
}

fn run_slot(entry: u64) -> u32 {
    (entry as u32).wrapping_sub(1)
}

/// Where one source of events (an engine) is in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceClock {
    /// Registered, nothing reported yet.
    Waiting,
    At(i64),
    /// Removed; the slot may be reused.
    Gone,
}

/// One source of events (an engine).
#[derive(Debug)]
struct Source {
    clock: SourceClock,
    /// Visits it reported, waiting to settle (see [`FlowTracker::settle`]): when, run
    /// and stage, in that order. Kept sorted, so that visits settle in the order of
    /// event time however they were read; a partition delivers its events nearly in
    /// time order, so a visit's place is at or near the back. (One heap for all sources
    /// measured the same in a single engine, but costs `run` a cache miss per level once
    /// partitions drift apart in event time and hundreds of thousands wait.)
    settling: VecDeque<(i64, RunRef, u16)>,
    /// The rows it reports of the data-flow metrics judged.
    score_rows: ScoreRows,
    /// Rows of the data-flow metrics of the stages it reported, waiting for it to take
    /// them.
    rows: Vec<ScoredBucket>,
}

/// What a run showed at a stage, for one of the stage's data-flow lifecycles.
#[derive(Debug, Clone, Copy)]
enum Finding {
    /// What the stage read against what its upstream stages wrote.
    Records(Loss),
    /// The run reached the stage within the deadlines of its hops.
    Arrived,
    /// The run left `from` at `left_ms` and had not reached the stage by its deadline.
    Stuck { from: u16, left_ms: i64 },
    /// The stage completed the run.
    Completed,
    /// The stage failed the run, and no retry succeeded.
    Failed,
}

/// A stage read `read` records of the `fed` that its upstream stages wrote in a run.
#[derive(Debug, Clone, Copy)]
struct Loss {
    fed: u64,
    read: u64,
    lost: u64,
    /// Lost records within `flow.loss_tolerance` (and `flow.loss_min_records`).
    allowed: f64,
    share: f64,
    /// How many tolerances were lost: the score of a run, as a detector's is of a
    /// bucket (in the tolerance's units, not standard deviations).
    score: f64,
}

impl Loss {
    fn new(settings: &FlowSettings, fed: u64, read: u64) -> Loss {
        let lost = fed.saturating_sub(read);
        let tolerance = settings.loss_tolerance;
        let share = if fed == 0 {
            0.0
        } else {
            lost as f64 / fed as f64
        };
        Loss {
            fed,
            read,
            lost,
            allowed: (fed as f64 * tolerance).max(settings.loss_min_records as f64 - 1.0),
            share,
            score: -share / tolerance.max(1e-6),
        }
    }

    fn beyond_tolerance(&self) -> bool {
        self.lost as f64 > self.allowed
    }
}

/// Counters of the tracker, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FlowStats {
    pub runs_started: u64,
    /// Forgotten to make room (`flow.max_runs`).
    pub runs_evicted: u64,
    /// Forgotten `flow.run_ttl` after their last event.
    pub runs_expired: u64,
    /// Events of stages beyond `flow.max_stages_per_pipeline`.
    pub stages_over_limit: u64,
    pub data_loss_checks: u64,
    pub stuck_runs: u64,
    pub failed_runs: u64,
    /// Figures whose bucket had been judged when their run settled (a stage with 64
    /// buckets of figures waiting has its oldest judged).
    pub figures_late: u64,
    /// Figures of stages whose partition was revoked: their new owner judges them.
    pub figures_dropped: u64,
    /// Visits never settled (so never compared, learned from or given deadlines): more
    /// waiting to settle for one engine than `4 × flow.max_runs`.
    pub visits_dropped: u64,
    /// Deadlines never checked: more checks waiting than `4 × flow.max_runs`.
    pub checks_dropped: u64,
    /// Alerts raised: data-flow findings, and on its metrics.
    pub alerts: AlertCounts,
}

pub struct FlowTracker {
    settings: FlowSettings,
    min_runs: u32,
    rules: Rules,
    factory: AlertFactory,
    critical_score: f64,
    /// What judging the data-flow metrics of stages needs (see [`figures`]).
    policies: PolicyBook,
    judgements: Vec<Judgement>,
    idle_timeout_ms: i64,
    max_correlation_ids: usize,
    /// Every bucket of figures up to and including this one has been judged.
    figures_judged_through: i64,
    hasher: hashbrown::DefaultHashBuilder,
    pipelines: Vec<PipelineFlow>,
    pipeline_index: HashMap<Arc<str>, u32>,
    /// Run slots; `free` lists the free ones.
    runs: Vec<Run>,
    free: Vec<u32>,
    live_runs: usize,
    /// Slots of the live runs, by the hash of their correlation id ([`run_entry`]).
    by_correlation: ProbeTable,
    /// Live runs, oldest first (and references to forgotten ones, skipped).
    order: VecDeque<RunRef>,
    next_serial: u64,
    /// Runs to check at a moment of event time (see [`FlowTracker::check`]); a run
    /// whose `check_ms` has moved since is skipped.
    checks: BinaryHeap<Reverse<(i64, RunRef)>>,
    lateness_ms: i64,
    sources: Vec<Source>,
    /// The slowest source's watermark.
    now_ms: i64,
    stats: FlowStats,
    /// Buffers reused from call to call.
    scratch_edges: Vec<(u16, u16)>,
    scratch_walk: Vec<u16>,
    scratch_findings: Vec<(u16, Finding, i64)>,
    scratch_hashes: Vec<u64>,
}

impl FlowTracker {
    pub fn new(settings: &Settings) -> FlowTracker {
        let bucket_ms = settings.bucket_ms();
        FlowTracker {
            settings: settings.flow.clone(),
            min_runs: settings.flow.stuck_training,
            rules: Rules::new(&settings.alerts),
            factory: AlertFactory {
                bucket_ms,
                dashboard_url: settings.alerts.dashboard_url.clone(),
            },
            critical_score: settings.detection.critical_score,
            policies: PolicyBook::new(settings),
            judgements: Vec::new(),
            idle_timeout_ms: settings.stages.idle_timeout.as_millis() as i64,
            max_correlation_ids: settings.alerts.max_correlation_ids,
            figures_judged_through: i64::MIN,
            hasher: Default::default(),
            pipelines: Vec::new(),
            pipeline_index: HashMap::new(),
            runs: Vec::new(),
            free: Vec::new(),
            live_runs: 0,
            by_correlation: ProbeTable::new(0, 32),
            order: VecDeque::new(),
            next_serial: 1,
            checks: BinaryHeap::new(),
            lateness_ms: settings.lateness_ms(),
            sources: Vec::new(),
            now_ms: i64::MIN,
            stats: FlowStats::default(),
            scratch_edges: Vec::new(),
            scratch_walk: Vec::new(),
            scratch_findings: Vec::new(),
            scratch_hashes: Vec::new(),
        }
    }

    /// A tracker to share, on a thread of its own, or none when `flow.enabled` is off.
    pub fn shared(settings: &Settings) -> Option<SharedFlow> {
        settings.flow.enabled.then(|| {
            SharedFlow::start(FlowTracker::new(settings))
                .expect("a thread for the data-flow tracker (the system refused one)")
        })
    }

    pub fn stats(&self) -> &FlowStats {
        &self.stats
    }

    pub fn tracked_runs(&self) -> usize {
        self.live_runs
    }

    /// Registers a source of events (an engine), which reports `score_rows` of the
    /// data-flow metrics of its stages. Until it reports where it is, and then by its
    /// watermark, it holds the clock back: a partition not read yet may hold the
    /// upstream stages of runs that other partitions have already delivered.
    pub fn add_source(&mut self, score_rows: ScoreRows) -> usize {
        let free = (self.sources.iter()).position(|s| s.clock == SourceClock::Gone);
        let source = Source {
            clock: SourceClock::Waiting,
            settling: VecDeque::new(),
            score_rows,
            rows: Vec::new(),
        };
        match free {
            Some(free) => {
                // Visits still waiting to settle there settle all the same.
                let settling = std::mem::take(&mut self.sources[free].settling);
                self.sources[free] = Source { settling, ..source };
                free
            }
            None => {
                self.sources.push(source);
                self.sources.len() - 1
            }
        }
    }

    /// A source went away (its partition was revoked): it holds nothing back any more,
    /// and the rows waiting for it, which only its live view showed, are dropped. Its
    /// visits still settle, for the runs that go on through other partitions; but the
    /// stages it reported are its partition's new owner's now: their data-flow series
    /// and lifecycles are forgotten without a word (as its engine's stages are), and
    /// nothing more is found about them here until they report here again.
    pub fn remove_source(&mut self, source: usize) {
        let Some(s) = self.sources.get_mut(source) else {
            return;
        };
        s.clock = SourceClock::Gone;
        s.rows = Vec::new();
        let stages = self.pipelines.iter_mut().flat_map(|p| &mut p.stages);
        for stage in stages.filter(|s| s.home == Some(source as u32)) {
            stage.home = None;
            stage.figures = StageFigures::default();
            stage.tracks = [Track::Idle; 3];
        }
    }

    /// The key of stage `stage` of `pipeline`, added if new; none when the pipeline has
    /// `flow.max_stages_per_pipeline` stages already (the events of such a stage are
    /// counted as they come, see [`Sightings::refuse`]).
    pub fn stage_key(&mut self, pipeline: &str, stage: &str) -> Option<StageKey> {
        let id = match self.pipeline_index.get(pipeline) {
            Some(&id) => id,
            None => {
                let flow = PipelineFlow::new(pipeline, self.min_runs);
                let id = self.pipelines.len() as u32;
                self.pipeline_index.insert(Arc::clone(&flow.name), id);
                self.pipelines.push(flow);
                id
            }
        };
        let max_stages = self.settings.max_stages_per_pipeline;
        let stage = self.pipelines[id as usize].stage_id_or_add(stage, max_stages)?;
        Some(StageKey {
            pipeline: id,
            stage,
        })
    }

    /// Takes in the sightings of source `source`, in the order it read them, and
    /// empties `sightings`. What the runs show is judged once they settle, or at their
    /// checks ([`FlowTracker::advance`]).
    pub fn observe(&mut self, source: usize, sightings: &mut Sightings) {
        let mut hashes = std::mem::take(&mut self.scratch_hashes);
        hashes.clear();
        let mut id_start = 0;
        for sighting in &sightings.entries {
            let correlation_id = &sightings.ids[id_start..sighting.id_end as usize];
            id_start = sighting.id_end as usize;
            hashes.push(self.hasher.hash_one(correlation_id));
        }
        let mut declarations = sightings.declarations.drain(..).peekable();
        let mut id_start = 0;
        for (i, sighting) in sightings.entries.iter().enumerate() {
            self.fetch_runs_ahead(&hashes, i);
            let Sighting { key, id_end, .. } = *sighting;
            let correlation_id = &sightings.ids[id_start..id_end as usize];
            id_start = id_end as usize;
            let p = &mut self.pipelines[key.pipeline as usize];
            p.stages[key.stage as usize].home = Some(source as u32);
            if let Some((_, names)) = declarations.next_if(|(at, _)| *at == i) {
                let max_stages = self.settings.max_stages_per_pipeline;
                p.declare(key.stage, names.iter().map(|n| &**n), max_stages);
            }
            let visit = Visit {
                stage: key.stage,
                report: sighting.report,
                status: sighting.status,
                reached_ms: sighting.report.end_ms,
                recovery: match sighting.status {
                    Status::Failure => Recovery::Awaited,
                    _ => Recovery::NotNeeded,
                },
                reported: false,
                loss_checked: false,
            };
            let hash = hashes[i];
            let run = self.run_of(key.pipeline, correlation_id, hash, visit.report.end_ms);
            self.visit(source, run, visit);
        }
        self.scratch_hashes = hashes;
        sightings.entries.clear();
        sightings.ids.clear();
        self.stats.stages_over_limit += std::mem::take(&mut sightings.refused);
    }

    fn run(&self, run: RunRef) -> Option<&Run> {
        self.runs
            .get(run.slot as usize)
            .filter(|r| r.serial == run.serial)
    }

    /// Starts fetching what handling the sightings a few places after the `i`th will
    /// read. Finding a sighting's run is a chain of cache misses (its place in the
    /// table, the run's slot, then its id and its visits, far apart once four
    /// partitions' runs interleave), each link known only once the one before has come.
    /// So each link is fetched a couple of sightings ahead of the next: by the time
    /// [`Self::observe`] reaches a sighting, its chain is in the cache.
    fn fetch_runs_ahead(&self, hashes: &[u64], i: usize) {
        let run_at = |ahead: usize| {
            let hash = *hashes.get(i + ahead)?;
            let entry = self.by_correlation.find(run_place(hash), |_| true)?;
            self.runs.get(run_slot(entry) as usize)
        };
        if let Some(&hash) = hashes.get(i + 6) {
            self.by_correlation.prefetch(run_place(hash));
        }
        if let Some(run) = run_at(4) {
            let at: *const Run = run;
            prefetch(at);
            prefetch(at.wrapping_byte_add(64));
        }
        if let Some(run) = run_at(2) {
            prefetch(run.correlation_id.as_ptr());
            prefetch(run.visits.as_ptr());
        }
    }

    /// The run of `correlation_id` (whose hash is `hash`) in `pipeline`, started if new.
    fn run_of(&mut self, pipeline: u32, correlation_id: &str, hash: u64, ts_ms: i64) -> RunRef {
        let runs = &self.runs;
        if let Some(entry) = self.by_correlation.find(run_place(hash), |entry| {
            let r = &runs[run_slot(entry) as usize];
            r.pipeline == pipeline && r.correlation_id == correlation_id
        }) {
            let slot = run_slot(entry);
            return RunRef {
                serial: runs[slot as usize].serial,
                slot,
            };
        }
        if self.live_runs >= self.settings.max_runs {
            self.forget_oldest();
            self.stats.runs_evicted += 1;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.runs.push(Run::default());
                (self.runs.len() - 1) as u32
            }
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        let r = &mut self.runs[slot as usize];
        r.serial = serial;
        r.hash = hash;
        r.pipeline = pipeline;
        r.correlation_id.clear();
        r.correlation_id.push_str(correlation_id);
        r.visits.clear();
        r.edges.clear();
        r.last_ms = ts_ms;
        r.check_ms = i64::MAX;
        self.by_correlation.insert(run_entry(hash, slot));
        let run = RunRef { serial, slot };
        self.order.push_back(run);
        self.live_runs += 1;
        self.stats.runs_started += 1;
        run
    }

    fn forget_oldest(&mut self) {
        while let Some(run) = self.order.pop_front() {
            if self.forget(run) {
                return;
            }
        }
    }

    fn forget(&mut self, run: RunRef) -> bool {
        let Some(r) = self.runs.get_mut(run.slot as usize) else {
            return false;
        };
        if r.serial != run.serial {
            return false;
        }
        r.serial = 0;
        (self.by_correlation).remove(run_place(r.hash), |entry| run_slot(entry) == run.slot);
        self.free.push(run.slot);
        self.live_runs -= 1;
        true
    }

    fn visit(&mut self, source: usize, run: RunRef, visit: Visit) {
        let settings = &self.settings;
        let r = &mut self.runs[run.slot as usize];
        r.last_ms = r.last_ms.max(visit.report.end_ms);
        let stage = visit.stage;

        // A stage's visit is complete when it succeeds (or skips); failures and retries
        // before that are attempts, and the visit starts with the first of them.
        let attempt = is_attempt(&visit);
        let mut visit = visit;
        let (earlier, awaits_recovery) = match r.visits.iter().position(|v| v.stage == stage) {
            Some(i) => {
                let earlier = r.visits[i];
                // What every report of the stage adds, in whatever order they are read:
                // when the visit started, when the run reached the stage, and whether
                // it failed there.
                visit.report.start_ms = visit.report.start_ms.min(earlier.report.start_ms);
                visit.reached_ms = visit.reached_ms.min(earlier.reached_ms);
                let awaits =
                    earlier.recovery == Recovery::NotNeeded && visit.recovery == Recovery::Awaited;
                visit.recovery = visit.recovery.max(earlier.recovery);
                if !is_attempt(&earlier) || attempt {
                    // A duplicate report, or one more attempt: the visit stays as it was
                    // but for the above.
                    let v = &mut r.visits[i];
                    v.report.start_ms = visit.report.start_ms;
                    v.reached_ms = visit.reached_ms;
                    v.recovery = visit.recovery;
                } else {
                    visit.reported = earlier.reported;
                    r.visits[i] = visit;
                }
                (Some(earlier), awaits)
            }
            None => {
                r.visits.push(visit);
                (None, visit.recovery == Recovery::Awaited)
            }
        };
        if awaits_recovery {
            let due = recovery_due(settings, visit.reached_ms);
            schedule(
                &mut self.checks,
                settings.max_runs,
                r,
                run,
                due,
                &mut self.stats.checks_dropped,
            );
        }
        // Only a complete visit settles.
        if attempt || earlier.is_some_and(|e| !is_attempt(&e)) {
            return;
        }

        // What needs every stage before this one: once no event that ended before
        // this one can still arrive (the clock, the slowest partition's event time, past
        // its end plus the allowed lateness), the run settles here (see `settle`).
        let queue = &mut self.sources[source].settling;
        if queue.len() < 4 * settings.max_runs {
            let visit = (visit.report.end_ms + self.lateness_ms, run, stage);
            let mut at = queue.len();
            while at > 0 && queue[at - 1] > visit {
                at -= 1;
            }
            // Nearly always the back, where `insert` costs several times `push_back`.
            if at == queue.len() {
                queue.push_back(visit);
            } else {
                queue.insert(at, visit);
            }
        } else {
            self.stats.visits_dropped += 1;
        }
    }

    /// A run's visit of `stage` has settled: every stage that ended before it has
    /// reported, whatever partitions they came through. Only now does the run count for
    /// the lineage, are its records compared with its upstream stages', and does a
    /// success count against failed runs (in the order of event time with the checks
    /// that find them, see [`FlowTracker::advance`]).
    fn settle(&mut self, run: RunRef, stage: u16, alerts: &mut Vec<Alert>) {
        let Some(r) = self
            .runs
            .get_mut(run.slot as usize)
            .filter(|r| r.serial == run.serial)
        else {
            return;
        };
        let p = &mut self.pipelines[r.pipeline as usize];
        let Some(i) = r
            .visits
            .iter()
            .position(|v| v.stage == stage && !is_attempt(v))
        else {
            return;
        };
        let visit = r.visits[i];
        // Everything below reads the lineage and the hops' delays as they stand at
        // this point of event time, which is why runs count for them here rather than
        // as their events are read: what the tracker finds must not depend on how far
        // it had got when an engine handed it the events.
        p.count_run(stage);
        // Where producers declare the lineage, runs need not teach it.
        if p.stages[stage as usize].declared.is_none() {
            relearn(p, r, stage, &mut self.scratch_edges);
        }
        // The deadlines of the stages this one feeds, unless the run has reached them
        // in time already.
        let mut due = i64::MAX;
        for &to in p.downstream(stage) {
            let arrival = arrival_due(&self.settings, self.min_runs, p, &visit, to);
            if !r
                .visits
                .iter()
                .any(|w| w.stage == to && w.reached_ms <= arrival)
            {
                due = due.min(arrival);
            }
        }
        schedule(
            &mut self.checks,
            self.settings.max_runs,
            r,
            run,
            due,
            &mut self.stats.checks_dropped,
        );
        let key = StageKey {
            pipeline: r.pipeline,
            stage,
        };
        let upstream_count = p.upstream(stage).len();
        if upstream_count == 0 || visit.loss_checked {
            if visit.status == Status::Success {
                self.judge(run, key, Finding::Completed, visit.report.end_ms, alerts);
            }
            return;
        }
        // One pass over the hops into this stage, for when the last of its upstream
        // stages ended, what they wrote, and whether the run kept each hop's deadline.
        let mut ready = Some(i64::MIN);
        let mut fed = Some(0u64);
        let mut arrived_in_time = None;
        for j in 0..upstream_count {
            let from = p.upstream(stage)[j];
            let Some(up) = completed(r, from) else {
                (ready, fed) = (None, None);
                continue;
            };
            ready = ready.map(|latest| latest.max(up.report.end_ms));
            fed = fed
                .zip(up.report.records_out.get())
                .map(|(sum, out)| sum.saturating_add(out));
            // Each hop's delays (upstream end to this end) train its stuck-run deadline;
            // a run that arrived within it ends a stuck alert.
            let hop = p.hop_mut(from, stage);
            let arrival_ms = visit.report.end_ms - up.report.end_ms;
            if hop.carried >= self.min_runs {
                let deadline = deadline_ms(&self.settings, hop.p95_ms());
                arrived_in_time = Some(arrived_in_time.unwrap_or(true) && arrival_ms <= deadline);
            }
            hop.record(arrival_ms);
        }
        // The hand-over into this stage, from the moment the last of its upstream stages
        // ended (a stage fed by two waits for both, and that wait is not the hand-over's)
        // to its first attempt's start; and at a final stage, the run's end-to-end
        // latency. Taken now that the run's reports are all in: a retry delivered after
        // its success would otherwise move the start.
        let hop_delay = ready.map(|ready| (visit.report.start_ms - ready).max(0) as f64);
        let final_stage =
            p.downstream(stage).is_empty() && p.stages[stage as usize].runs >= self.min_runs;
        let e2e_latency = final_stage
            .then(|| ancestry_start(p, r, stage, &mut self.scratch_walk))
            .flatten()
            .map(|first_start| (visit.report.end_ms - first_start).max(0) as f64);
        let figures = [
            (FlowMetric::HopDelay, hop_delay),
            (FlowMetric::E2eLatency, e2e_latency),
        ];
        for (metric, value) in figures {
            let Some(value) = value else {
                continue;
            };
            let (end_ms, id) = (visit.report.end_ms, r.correlation_id.as_str());
            let (bucket_ms, max_ids) = (self.factory.bucket_ms, self.max_correlation_ids);
            let s = &mut p.stages[stage as usize];
            if s.home.is_none() {
                self.stats.figures_dropped += 1;
            } else if !s.figures.add(metric, end_ms, value, id, bucket_ms, max_ids) {
                self.stats.figures_late += 1;
            }
        }

        let records = match (fed, visit.report.records_in.get()) {
            (Some(fed), Some(read)) => {
                r.visits[i].loss_checked = true;
                Some(Finding::Records(Loss::new(&self.settings, fed, read)))
            }
            _ => None,
        };
        if visit.status == Status::Success {
            self.judge(run, key, Finding::Completed, visit.report.end_ms, alerts);
        }
        if arrived_in_time == Some(true) {
            self.judge(run, key, Finding::Arrived, visit.report.end_ms, alerts);
        }
        if let Some(records) = records {
            self.judge(run, key, records, visit.report.end_ms, alerts);
        }
    }

    /// Moves source `source`'s watermark to `watermark_ms`; the clock (the slowest
    /// source) then runs the checks that fall due and forgets expired runs.
    pub fn advance(&mut self, source: usize, watermark_ms: i64, alerts: &mut Vec<Alert>) {
        if let Some(s) = self.sources.get_mut(source) {
            s.clock = match s.clock {
                SourceClock::At(w) => SourceClock::At(w.max(watermark_ms)),
                _ => SourceClock::At(watermark_ms),
            };
        }
        let mut now = None::<i64>;
        for s in &self.sources {
            match s.clock {
                SourceClock::Waiting => return,
                SourceClock::At(w) => now = Some(now.map_or(w, |n| n.min(w))),
                SourceClock::Gone => {}
            }
        }
        let Some(now) = now else {
            return;
        };
        if now <= self.now_ms {
            return;
        }
        self.now_ms = now;
        // Settling, checks and the judging of figures, merged in the order of event
        // time: the lifecycles they feed see successes and failures, arrivals and stuck
        // runs in the order they happened, however often (in event time) the engines
        // call this and however the events were split between them, so replay and live
        // processing alert alike. Checks wait for the lateness too: a run is stuck, or
        // failed, only once nothing that ended before its deadline can still arrive.
        loop {
            // The earliest visit of all sources, ties broken by run and stage, not by
            // source: the order must not depend on the partitioning.
            let settling = (self.sources.iter().enumerate())
                .filter_map(|(q, s)| Some((*s.settling.front()?, q)))
                .min()
                .filter(|&((at, ..), _)| at <= now);
            let check = (self.checks.peek())
                .map(|&Reverse((due, run))| (due, run))
                .filter(|&(due, _)| due.saturating_add(self.lateness_ms) <= now);
            // Before them, the buckets of figures due: those every run that ended in
            // them has settled into.
            let next_ms = [
                settling.map(|((at, ..), _)| at),
                check.map(|(due, _)| due.saturating_add(self.lateness_ms)),
            ];
            let next_ms = next_ms.into_iter().flatten().min().unwrap_or(now);
            let figures_through = self.figures_due_through(next_ms);
            if figures_through > self.figures_judged_through {
                self.figures_judged_through = figures_through;
                self.judge_figures(figures_through, None, alerts);
            }
            match (settling, check) {
                (Some(((at, run, stage), q)), check)
                    if check.is_none_or(|(due, _)| at <= due.saturating_add(self.lateness_ms)) =>
                {
                    self.sources[q].settling.pop_front();
                    self.settle(run, stage, alerts);
                }
                (_, Some((due, run))) => {
                    self.checks.pop();
                    self.check(run, due, alerts);
                }
                _ => break,
            }
        }
        let ttl = self.settings.run_ttl.as_millis() as i64;
        while let Some(&run) = self.order.front() {
            match self.run(run) {
                Some(r) if r.last_ms + ttl > now => break,
                Some(_) => {
                    self.order.pop_front();
                    self.forget(run);
                    self.stats.runs_expired += 1;
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// The check of `run` due at `due_ms`: a stage it left and whose downstream stage
    /// it has not reached by the hop's deadline is a stuck run; a failure with no success
    /// since, `flow.stuck_min` later, a failed run. What falls due later is checked again
    /// then, so alerts come in the order of their deadlines, whatever the run.
    fn check(&mut self, run: RunRef, due_ms: i64, alerts: &mut Vec<Alert>) {
        let settings = &self.settings;
        let Some(r) = self
            .runs
            .get_mut(run.slot as usize)
            .filter(|r| r.serial == run.serial && r.check_ms == due_ms)
        else {
            return;
        };
        r.check_ms = i64::MAX;
        let p = &self.pipelines[r.pipeline as usize];
        let mut found = std::mem::take(&mut self.scratch_findings);
        let mut next = i64::MAX;
        for i in 0..r.visits.len() {
            let v = r.visits[i];
            if v.recovery == Recovery::Awaited {
                let due = recovery_due(settings, v.reached_ms);
                if due > due_ms {
                    next = next.min(due);
                } else {
                    r.visits[i].recovery = Recovery::Settled;
                    // No success, or one that ended after the deadline.
                    if is_attempt(&v) || v.report.end_ms > due {
                        self.stats.failed_runs += 1;
                        found.push((v.stage, Finding::Failed, v.reached_ms));
                    }
                }
            }
            if v.reported || is_attempt(&v) {
                continue;
            }
            for &to in p.downstream(v.stage) {
                let due = arrival_due(settings, self.min_runs, p, &v, to);
                // Reached by the deadline, in event time: a run read after its deadline
                // but before the check ran arrived late all the same.
                if r.visits
                    .iter()
                    .any(|w| w.stage == to && w.reached_ms <= due)
                {
                    continue;
                }
                if due <= due_ms {
                    // Once per stage left: the run is stuck there, however many
                    // stages it feeds.
                    r.visits[i].reported = true;
                    self.stats.stuck_runs += 1;
                    let left_ms = v.report.end_ms;
                    found.push((
                        to,
                        Finding::Stuck {
                            from: v.stage,
                            left_ms,
                        },
                        due,
                    ));
                    break;
                }
                next = next.min(due);
            }
        }
        let pipeline = r.pipeline;
        schedule(
            &mut self.checks,
            settings.max_runs,
            r,
            run,
            next,
            &mut self.stats.checks_dropped,
        );
        for (stage, finding, at_ms) in found.drain(..) {
            self.judge(run, StageKey { pipeline, stage }, finding, at_ms, alerts);
        }
        self.scratch_findings = found;
    }

    /// Passes what `run` showed at `stage` (at `at_ms`, which places it in a bucket) to
    /// the stage's lifecycle for that kind of finding, and raises the alert a change of
    /// state calls for. Runs for nearly every event, and nearly always finds nothing
    /// changed: the alert is built apart.
    #[inline(always)]
    fn judge(
        &mut self,
        run: RunRef,
        key: StageKey,
        finding: Finding,
        at_ms: i64,
        alerts: &mut Vec<Alert>,
    ) {
        let critical = Observation::Anomalous(Severity::Critical);
        let (track, observation) = match finding {
            Finding::Records(loss) => {
                self.stats.data_loss_checks += 1;
                match loss.beyond_tolerance() {
                    true => {
                        let severity = Severity::from_score(loss.score, self.critical_score);
                        (LOSS, Observation::Anomalous(severity))
                    }
                    false => (LOSS, Observation::Normal),
                }
            }
            // Always critical: data that stops halfway is data nobody downstream gets.
            Finding::Stuck { .. } => (STUCK, critical),
            Finding::Arrived => (STUCK, Observation::Normal),
            Finding::Failed => (FAILED, critical),
            Finding::Completed => (FAILED, Observation::Normal),
        };
        let stage = &mut self.pipelines[key.pipeline as usize].stages[key.stage as usize];
        // A stage no engine here reports is another instance's to judge.
        let lifecycle = &mut stage.tracks[track];
        if stage.home.is_none() || (observation == Observation::Normal && *lifecycle == Track::Idle)
        {
            return;
        }
        let width = self.factory.bucket_ms;
        let bucket_start = at_ms.div_euclid(width) * width;
        let Some(notice) =
            lifecycle.observe(observation, bucket_start, bucket_start + width, &self.rules)
        else {
            return;
        };
        if let Some(r) = self
            .runs
            .get(run.slot as usize)
            .filter(|r| r.serial == run.serial)
        {
            self.stats.alerts.count(&notice);
            alerts.push(self.raise(r, key.stage, finding, notice, at_ms));
        }
    }

    /// The alert for `notice`, a change of state of a stage's data-flow lifecycle after
    /// what run `r` showed at `stage`.
    #[inline(never)]
    fn raise(&self, r: &Run, stage: u16, finding: Finding, notice: Notice, at_ms: i64) -> Alert {
        let settings = &self.settings;
        let width = self.factory.bucket_ms;
        let bucket_start = at_ms.div_euclid(width) * width;
        let bucket_end = bucket_start + width;
        let p = &self.pipelines[r.pipeline as usize];
        let (pipeline, stage_name) = (&*p.name, &*p.stages[stage as usize].name);
        let corr = r.correlation_id.as_str();
        let firing = matches!(notice, Notice::Firing { .. });
        let human = crate::alert::human_number;
        // What differs between the kinds: the alert's figures, its summary and the
        // upstream stage it names besides its own.
        let (kind, metric, [value, expected, lower, upper, score], summary, upward_only, from) =
            match finding {
                Finding::Records(loss) => {
                    let upstream: Vec<&str> = p
                        .upstream(stage)
                        .iter()
                        .map(|&s| &*p.stages[s as usize].name)
                        .collect();
                    let upstream = upstream.join(", ");
                    let summary = if firing {
                        format!(
                            "{pipeline}/{stage_name} read {} records of the {} that {upstream} wrote in run {corr}: {} lost ({})",
                            human(loss.read as f64),
                            human(loss.fed as f64),
                            human(loss.lost as f64),
                            percent(loss.share),
                        )
                    } else {
                        format!("{pipeline}/{stage_name} reads what {upstream} wrote again (run {corr})")
                    };
                    (
                        AlertKind::DataLoss,
                        "records_in",
                        [
                            loss.read as f64,
                            loss.fed as f64,
                            loss.fed as f64 - loss.allowed,
                            loss.fed as f64,
                            loss.score,
                        ],
                        summary,
                        false,
                        Some(upstream),
                    )
                }
                Finding::Stuck { from, left_ms } => {
                    let waited = (at_ms - left_ms) as f64 / 1000.0;
                    let usual = p.hop(from, stage).map_or(0.0, |h| h.p95_ms() / 1000.0);
                    let summary = format!(
                        "run {corr} of {pipeline} left {} but has not reached {stage_name} after {} (usually within {})",
                        p.stages[from as usize].name,
                        crate::time::human_ms((waited * 1000.0) as i64),
                        crate::time::human_ms((usual * 1000.0) as i64),
                    );
                    let upper = deadline_ms(settings, usual * 1000.0) as f64 / 1000.0;
                    let score = waited / usual.max(1e-3);
                    (
                        AlertKind::StuckRun,
                        "run_arrival",
                        [waited, usual, 0.0, upper, score],
                        summary,
                        true,
                        Some(p.stages[from as usize].name.to_string()),
                    )
                }
                Finding::Arrived => (
                    AlertKind::StuckRun,
                    "run_arrival",
                    [
                        f64::NAN,
                        f64::NAN,
                        0.0,
                        deadline_ms(settings, f64::NAN) as f64 / 1000.0,
                        0.0,
                    ],
                    format!("{pipeline}/{stage_name} receives runs in time again (run {corr})"),
                    true,
                    None,
                ),
                Finding::Failed | Finding::Completed => {
                    let failed = matches!(finding, Finding::Failed);
                    let summary = if firing {
                        format!(
                            "{pipeline}/{stage_name} failed run {corr}, and no retry succeeded within {}",
                            humantime::format_duration(settings.stuck_min)
                        )
                    } else {
                        format!("{pipeline}/{stage_name} completes runs again (run {corr})")
                    };
                    (
                        AlertKind::FailedRun,
                        "run_status",
                        [1.0, 0.0, 0.0, 0.0, if failed { 1.0 } else { 0.0 }],
                        summary,
                        true,
                        None,
                    )
                }
            };
        let mut alert = self.factory.build(&AlertFacts {
            notice,
            kind,
            pipeline,
            stage: stage_name,
            metric,
            detector: "flow",
            value,
            expected,
            lower,
            upper,
            score,
            bucket_start,
            bucket_end,
            correlation_ids: &[corr],
            upward_only,
        });
        alert.summary = summary;
        if let Some(from) = from {
            alert.labels.insert("upstream_stage", from);
        }
        if let Finding::Records(loss) = finding {
            let annotations = &mut alert.annotations;
            annotations.insert("upstream_records_out", loss.fed.to_string());
            annotations.insert("records_in", loss.read.to_string());
            annotations.insert("records_lost", loss.lost.to_string());
        }
        alert
    }

    /// Every run with this correlation id (one per pipeline that used it), as traces.
    pub fn traces(&self, correlation_id: &str) -> Vec<RunTrace<'_>> {
        let hash = self.hasher.hash_one(correlation_id);
        let mut traces: Vec<RunTrace<'_>> = self
            .by_correlation
            .at(run_place(hash))
            .map(|entry| &self.runs[run_slot(entry) as usize])
            .filter(|r| r.correlation_id == correlation_id)
            .map(|r| self.trace(r))
            .collect();
        traces.sort_by(|a, b| a.pipeline.cmp(b.pipeline));
        traces
    }

    fn trace<'a>(&'a self, run: &'a Run) -> RunTrace<'a> {
        let p = &self.pipelines[run.pipeline as usize];
        let mut visits = run.visits.clone();
        visits.sort_by_key(|v| (v.report.start_ms, v.report.end_ms));
        let stages = visits
            .iter()
            .map(|v| {
                let hops = p
                    .upstream(v.stage)
                    .iter()
                    .filter_map(|&from| {
                        let up = run.visits.iter().find(|u| u.stage == from)?;
                        Some(HopTrace {
                            from: &p.stages[from as usize].name,
                            delay_ms: v.report.start_ms - up.report.end_ms,
                            records_out: up.report.records_out.get(),
                        })
                    })
                    .collect();
                StageTrace {
                    stage: &p.stages[v.stage as usize].name,
                    start: v.report.start_ms,
                    end: v.report.end_ms,
                    duration_ms: v.report.end_ms - v.report.start_ms,
                    status: status_name(v.status),
                    records_in: v.report.records_in.get(),
                    records_out: v.report.records_out.get(),
                    records_rejected: v.report.records_rejected.get(),
                    hops,
                }
            })
            .collect::<Vec<_>>();
        let start = visits.iter().map(|v| v.report.start_ms).min().unwrap_or(0);
        let end = visits.iter().map(|v| v.report.end_ms).max().unwrap_or(0);
        RunTrace {
            pipeline: &p.name,
            correlation_id: run.correlation_id.as_str(),
            start,
            end,
            e2e_ms: end - start,
            stages,
        }
    }

    /// Moves the rows waiting for source `source` into `into`.
    pub fn take_rows(&mut self, source: usize, into: &mut Vec<ScoredBucket>) {
        if let Some(s) = self.sources.get_mut(source) {
            into.append(&mut s.rows);
        }
    }

    /// The input of source `source` has ended (replay) at its watermark: the figures of
    /// its stages are judged up to the bucket before the one the input ended in, as the
    /// engine closes its own, without waiting for the allowed lateness.
    pub fn finish(&mut self, source: usize, alerts: &mut Vec<Alert>) {
        let Some(SourceClock::At(watermark_ms)) = self.sources.get(source).map(|s| s.clock) else {
            return;
        };
        let last = (watermark_ms + 1).div_euclid(self.factory.bucket_ms) - 1;
        self.judge_figures(last, Some(source), alerts);
    }

    /// The newest bucket of figures that can be judged at `at_ms` of the tracker's
    /// clock: every run that ended in it has settled by then.
    fn figures_due_through(&self, at_ms: i64) -> i64 {
        (at_ms.saturating_sub(self.lateness_ms)).div_euclid(self.factory.bucket_ms) - 1
    }

    /// Judges the buckets of figures up to and including `through`, of every stage or
    /// of those whose home is `only`: the rows go to the stage's home, the alerts to
    /// `alerts`. In the merged order of [`FlowTracker::advance`], at the moment the
    /// last of them is due.
    fn judge_figures(&mut self, through: i64, only: Option<usize>, alerts: &mut Vec<Alert>) {
        let bucket_ms = self.factory.bucket_ms;
        let at_ms = (through + 1).saturating_mul(bucket_ms) + self.lateness_ms;
        let mut found = Outputs::default();
        for p in &mut self.pipelines {
            for stage in &mut p.stages {
                let Some(home) = stage.home.map(|h| h as usize) else {
                    continue;
                };
                if only.is_some_and(|only| only != home) {
                    continue;
                }
                let score_rows = self
                    .sources
                    .get(home)
                    .map_or(ScoreRows::None, |s| s.score_rows);
                let mut judge = FigureJudge {
                    policies: &mut self.policies,
                    factory: &self.factory,
                    rules: &self.rules,
                    score_rows,
                    judgements: &mut self.judgements,
                    counts: &mut self.stats.alerts,
                    bucket_ms,
                    idle_timeout_ms: self.idle_timeout_ms,
                };
                let names = (&p.name, &stage.name);
                (stage.figures).judge(through, at_ms, names, &mut judge, &mut found);
                alerts.append(&mut found.alerts);
                if let Some(s) = self.sources.get_mut(home) {
                    s.rows.append(&mut found.scores);
                }
                found.scores.clear();
            }
        }
    }

    /// The lineage of one pipeline.
    pub fn graph(&self, pipeline: &str) -> Option<Graph<'_>> {
        let &id = self.pipeline_index.get(pipeline)?;
        Some(self.pipelines[id as usize].graph())
    }

    /// Heap bytes held by runs, free slots included (an estimate from capacities, for
    /// the memory benchmark).
    pub fn run_heap_bytes(&self) -> usize {
        self.runs
            .iter()
            .map(|r| {
                std::mem::size_of::<Run>()
                    + r.correlation_id.capacity()
                    + r.visits.capacity() * std::mem::size_of::<Visit>()
                    + r.edges.capacity() * std::mem::size_of::<(u16, u16)>()
            })
            .sum::<usize>()
            + self.by_correlation.slots() * std::mem::size_of::<u64>()
            + self.order.capacity() * std::mem::size_of::<RunRef>()
            + self.checks.len() * std::mem::size_of::<Reverse<(i64, RunRef)>>()
    }

    pub fn lineage_heap_bytes(&self) -> usize {
        self.pipelines.iter().map(PipelineFlow::heap_bytes).sum()
    }
}

fn deadline_ms(settings: &FlowSettings, p95_ms: f64) -> i64 {
    // Through i64: u128 to f64 is a slow library call, and this runs per hop per run.
    let floor = settings.stuck_min.as_millis() as i64 as f64;
    (p95_ms * settings.stuck_factor)
        .max(floor)
        .min(MAX_DEADLINE_MS as f64) as i64
}

/// When a run that left `left` is due at `to`: never while the hop has not carried
/// enough runs to know its usual delay.
fn arrival_due(
    settings: &FlowSettings,
    min_runs: u32,
    p: &PipelineFlow,
    left: &Visit,
    to: u16,
) -> i64 {
    match p.hop(left.stage, to) {
        Some(hop) if hop.carried >= min_runs => left
            .report
            .end_ms
            .saturating_add(deadline_ms(settings, hop.p95_ms())),
        _ => i64::MAX,
    }
}

/// When a run that failed at a stage it reached at `reached_ms` is a failed run, unless
/// a retry succeeds before: `flow.stuck_min` later.
fn recovery_due(settings: &FlowSettings, reached_ms: i64) -> i64 {
    reached_ms.saturating_add(deadline_ms(settings, 0.0))
}

/// Has `run` checked by `due_ms` at the latest: one check per run waits in `checks`, for
/// the earliest of its deadlines (none for `i64::MAX`). A check the queue has no room
/// for is counted in `dropped`.
fn schedule(
    checks: &mut BinaryHeap<Reverse<(i64, RunRef)>>,
    max_runs: usize,
    r: &mut Run,
    run: RunRef,
    due_ms: i64,
    dropped: &mut u64,
) {
    if due_ms >= r.check_ms {
        return;
    }
    // Bounded like the runs: checks superseded by earlier ones wait in the queue
    // until they fall due, and must not pile up.
    if checks.len() >= 4 * max_runs {
        *dropped += 1;
        return;
    }
    r.check_ms = due_ms;
    checks.push(Reverse((due_ms, run)));
}

/// Counts what this run says of the lineage into `stage`, whose visit has settled: a
/// stage that ended before it started, with no stage of the run in between, comes right
/// before it. Settled, every visit that ended before it has arrived, whatever the order
/// of arrival; a visit that arrives later still (or a retry's success replacing the
/// visit) makes the run count again, and only the difference from what it counted
/// before is counted. `edges` is a buffer.
fn relearn(p: &mut PipelineFlow, run: &mut Run, stage: u16, edges: &mut Vec<(u16, u16)>) {
    let Some(b) = completed(run, stage) else {
        return;
    };
    edges.clear();
    edges.extend(run.edges.iter().filter(|&&(_, to)| to != stage));
    let before = || {
        run.visits
            .iter()
            .filter(|v| !is_attempt(v) && v.stage != stage && v.report.end_ms <= b.report.start_ms)
    };
    for v in before() {
        if !before().any(|w| w.stage != v.stage && w.report.start_ms >= v.report.end_ms) {
            edges.push((v.stage, stage));
        }
    }
    for &(from, to) in &run.edges {
        if to == stage && !edges.contains(&(from, to)) {
            p.unlearn(from, to);
        }
    }
    for &(from, to) in edges.iter() {
        if to == stage && !run.edges.contains(&(from, to)) {
            p.learn(from, to);
        }
    }
    std::mem::swap(&mut run.edges, edges);
}

/// The completed visit of `stage` in `run`.
fn completed(run: &Run, stage: u16) -> Option<Visit> {
    run.visits
        .iter()
        .find(|v| v.stage == stage && !is_attempt(v))
        .copied()
}

/// The earliest start among `stage` and every stage upstream of it, transitively, if all
/// of them have completed in `run`. `walk` is a buffer.
fn ancestry_start(p: &PipelineFlow, run: &Run, stage: u16, walk: &mut Vec<u16>) -> Option<i64> {
    // Stage ids are below `flow.max_stages_per_pipeline`, at most 256.
    let mut seen = [0u64; 4];
    let mut mark = |s: u16| {
        let (word, bit) = (s as usize / 64, 1u64 << (s % 64));
        let new = seen[word] & bit == 0;
        seen[word] |= bit;
        new
    };
    walk.clear();
    walk.push(stage);
    mark(stage);
    let mut start = i64::MAX;
    while let Some(s) = walk.pop() {
        start = start.min(completed(run, s)?.report.start_ms);
        for &u in p.upstream(s) {
            if mark(u) {
                walk.push(u);
            }
        }
    }
    Some(start)
}

/// A failure or retry not (yet) followed by the stage's success.
fn is_attempt(v: &Visit) -> bool {
    matches!(v.status, Status::Failure | Status::Retry)
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Success => "success",
        Status::Failure => "failure",
        Status::Retry => "retry",
        Status::Skipped => "skipped",
    }
}

fn percent(share: f64) -> String {
    format!("{}%", crate::alert::human_number(share * 100.0))
}

/// `GET /api/v1/runs/{correlation_id}`: one run as a trace.
#[derive(Debug, Serialize)]
pub struct RunTrace<'a> {
    pub pipeline: &'a str,
    pub correlation_id: &'a str,
    #[serde(serialize_with = "serialize_ms")]
    pub start: i64,
    #[serde(serialize_with = "serialize_ms")]
    pub end: i64,
    pub e2e_ms: i64,
    /// In the order the run passed through them.
    pub stages: Vec<StageTrace<'a>>,
}

#[derive(Debug, Serialize)]
pub struct StageTrace<'a> {
    pub stage: &'a str,
    #[serde(serialize_with = "serialize_ms")]
    pub start: i64,
    #[serde(serialize_with = "serialize_ms")]
    pub end: i64,
    pub duration_ms: i64,
    pub status: &'static str,
    pub records_in: Option<u64>,
    pub records_out: Option<u64>,
    pub records_rejected: Option<u64>,
    /// The hops into this stage: from which stage, after how long.
    pub hops: Vec<HopTrace<'a>>,
}

#[derive(Debug, Serialize)]
pub struct HopTrace<'a> {
    pub from: &'a str,
    /// Upstream end to this stage's start.
    pub delay_ms: i64,
    pub records_out: Option<u64>,
}
