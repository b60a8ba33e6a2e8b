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
//! It also measures, for the detectors to judge like any other metric of the stage, the
//! hand-over delay into each stage (`hop_delay`, milliseconds from the end of the last of
//! its upstream stages to its start) and each run's end-to-end latency at its final stages
//! (`e2e_latency`, milliseconds from the run's first start).
//!
//! Time is event time. The tracker's clock is the slowest of its sources' watermarks
//! (one per partition engine in `pipewatch run`), so a partition catching up never makes
//! another partition's runs look stuck.
//!
//! Memory is bounded: at most `flow.max_runs` runs (the oldest go first), each forgotten
//! `flow.run_ttl` after its last event, and `flow.max_stages_per_pipeline` stages per
//! pipeline; every forgotten run is counted.

pub mod lineage;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashTable;
use serde::Serialize;

use crate::alert::{Alert, AlertFactory, AlertFacts, Notice, Observation, Rules, Severity};
use crate::config::{FlowSettings, Settings};
use crate::decode::{Event, Status};
use crate::metric::AlertKind;
use crate::time::serialize_ms;

use lineage::{Graph, PipelineFlow};

/// The tracker as the engines and the API share it.
pub type SharedFlow = Arc<Mutex<FlowTracker>>;

/// Locks a shared tracker.
pub fn lock(flow: &SharedFlow) -> MutexGuard<'_, FlowTracker> {
    flow.lock()
        .expect("the flow tracker is never left half-updated by a panic that is caught")
}

/// A figure the tracker measured for a stage once a run settled there: a metric
/// (`hop_delay` or `e2e_latency`) and its value in milliseconds, the unit of every
/// duration in events (`duration_ms`) and of `duration_p95`. The engine that judges the
/// stage takes it into the bucket of `end_ms` ([`FlowTracker::take_settled`]).
#[derive(Debug, Clone)]
pub struct SettledFigure {
    pub pipeline: Arc<str>,
    pub stage: Arc<str>,
    pub end_ms: i64,
    pub metric: Arc<str>,
    pub value: f64,
}

/// Deadlines longer than this are not watched: a hop that takes days is not a hop a
/// run can be "stuck" on in any useful sense, and entries must not pile up for ever.
const MAX_DEADLINE_MS: i64 = 7 * 24 * 3_600_000;

/// Which lifecycle of a stage: index into `FlowStage::tracks`.
const LOSS: usize = 0;
const STUCK: usize = 1;
const FAILED: usize = 2;

/// One stage's part in one run.
#[derive(Debug, Clone, Copy)]
struct Visit {
    stage: u16,
    start_ms: i64,
    end_ms: i64,
    records_in: Option<u64>,
    records_out: Option<u64>,
    records_rejected: Option<u64>,
    status: Status,
    /// Stuck or failed is reported once per run and stage.
    reported: bool,
    /// Its records were compared with its upstream stages' (once per run and stage).
    loss_checked: bool,
}

#[derive(Debug, Clone)]
struct Run {
    pipeline: u32,
    correlation_id: Box<str>,
    visits: Vec<Visit>,
    /// The lineage edges this run counts for (see [`relearn`]).
    edges: Vec<(u16, u16)>,
    last_ms: i64,
}

/// Something to check at a moment of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    /// Has run `run` reached stage `to`, after leaving `from`?
    Arrival { run: u64, from: u16, to: u16 },
    /// Has run `run` succeeded at `stage` since failing there?
    Recovery { run: u64, stage: u16 },
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
    /// Figures no engine took (more waiting than `4 × flow.max_runs`).
    pub figures_dropped: u64,
}

pub struct FlowTracker {
    settings: FlowSettings,
    min_runs: u32,
    rules: Rules,
    factory: AlertFactory,
    critical_score: f64,
    hasher: hashbrown::DefaultHashBuilder,
    pipelines: Vec<PipelineFlow>,
    pipeline_index: HashMap<Arc<str>, u32>,
    runs: HashMap<u64, Run>,
    /// Run ids by the hash of their correlation id.
    by_correlation: HashTable<u64>,
    /// Run ids, oldest first.
    order: VecDeque<u64>,
    next_run: u64,
    checks: BinaryHeap<Reverse<(i64, Check)>>,
    /// Visits waiting to settle, per source: (when, run, stage), oldest first.
    settling: Vec<VecDeque<(i64, u64, u16)>>,
    lateness_ms: i64,
    /// Each source's watermark; the clock is the slowest.
    sources: Vec<SourceClock>,
    now_ms: i64,
    stats: FlowStats,
    e2e_metric: Arc<str>,
    hop_metric: Arc<str>,
    /// Figures waiting for the engine of their stage.
    settled: Vec<SettledFigure>,
    scratch: Vec<u16>,
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
            hasher: Default::default(),
            pipelines: Vec::new(),
            pipeline_index: HashMap::new(),
            runs: HashMap::new(),
            by_correlation: HashTable::new(),
            order: VecDeque::new(),
            next_run: 0,
            checks: BinaryHeap::new(),
            settling: Vec::new(),
            lateness_ms: settings.lateness_ms(),
            sources: Vec::new(),
            now_ms: i64::MIN,
            stats: FlowStats::default(),
            e2e_metric: Arc::from("e2e_latency"),
            hop_metric: Arc::from("hop_delay"),
            settled: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// A tracker to share, or none when `flow.enabled` is off.
    pub fn shared(settings: &Settings) -> Option<SharedFlow> {
        settings
            .flow
            .enabled
            .then(|| Arc::new(Mutex::new(FlowTracker::new(settings))))
    }

    pub fn stats(&self) -> &FlowStats {
        &self.stats
    }

    pub fn tracked_runs(&self) -> usize {
        self.runs.len()
    }

    /// Registers a source of events (an engine): until it reports where it is, and
    /// then by its watermark, it holds the clock back. A partition not read yet may
    /// hold the upstream stages of runs that other partitions have already delivered.
    pub fn add_source(&mut self) -> usize {
        match self.sources.iter().position(|s| *s == SourceClock::Gone) {
            Some(free) => {
                self.sources[free] = SourceClock::Waiting;
                free
            }
            None => {
                self.sources.push(SourceClock::Waiting);
                self.settling.push(VecDeque::new());
                self.sources.len() - 1
            }
        }
    }

    /// A source went away (its partition was revoked): it holds nothing back any more.
    pub fn remove_source(&mut self, source: usize) {
        if let Some(s) = self.sources.get_mut(source) {
            *s = SourceClock::Gone;
        }
    }

    /// Takes in one valid event with a correlation id (from source `source`); alerts go
    /// to `alerts`.
    pub fn observe(&mut self, source: usize, event: &Event, alerts: &mut Vec<Alert>) {
        let Some(correlation_id) = event.correlation_id.as_deref() else {
            return;
        };
        let pipeline = self.pipeline_id(&event.pipeline);
        let max_stages = self.settings.max_stages_per_pipeline;
        let p = &mut self.pipelines[pipeline as usize];
        let Some(stage) = p.stage_id_or_add(&event.stage, max_stages) else {
            self.stats.stages_over_limit += 1;
            return;
        };
        let end_ms = event.timestamp_ms;
        let start_ms = end_ms - event.duration_ms.map_or(0, |d| d.round() as i64);
        let visit = Visit {
            stage,
            start_ms,
            end_ms,
            records_in: event.records_in,
            records_out: event.records_out,
            records_rejected: event.records_rejected,
            status: event.status,
            reported: false,
            loss_checked: false,
        };
        let run_id = self.run_id(pipeline, correlation_id, end_ms);
        self.visit(source, run_id, visit, alerts);
    }

    fn pipeline_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.pipeline_index.get(name) {
            return id;
        }
        let flow = PipelineFlow::new(name);
        let id = self.pipelines.len() as u32;
        self.pipeline_index.insert(Arc::clone(&flow.name), id);
        self.pipelines.push(flow);
        id
    }

    /// The run of `correlation_id` in `pipeline`, started if new.
    fn run_id(&mut self, pipeline: u32, correlation_id: &str, ts_ms: i64) -> u64 {
        let hash = self.hasher.hash_one(correlation_id);
        let runs = &self.runs;
        if let Some(&id) = self.by_correlation.find(hash, |id| {
            runs.get(id)
                .is_some_and(|r| r.pipeline == pipeline && *r.correlation_id == *correlation_id)
        }) {
            return id;
        }
        if self.runs.len() >= self.settings.max_runs {
            self.forget_oldest();
            self.stats.runs_evicted += 1;
        }
        let id = self.next_run;
        self.next_run += 1;
        self.runs.insert(
            id,
            Run {
                pipeline,
                correlation_id: Box::from(correlation_id),
                visits: Vec::with_capacity(4),
                edges: Vec::new(),
                last_ms: ts_ms,
            },
        );
        let (runs, hasher) = (&self.runs, &self.hasher);
        self.by_correlation
            .insert_unique(hash, id, |id| hasher.hash_one(&*runs[id].correlation_id));
        self.order.push_back(id);
        self.stats.runs_started += 1;
        id
    }

    fn forget_oldest(&mut self) {
        while let Some(id) = self.order.pop_front() {
            if self.forget(id) {
                return;
            }
        }
    }

    fn forget(&mut self, id: u64) -> bool {
        let Some(run) = self.runs.remove(&id) else {
            return false;
        };
        let hash = self.hasher.hash_one(&*run.correlation_id);
        if let Ok(entry) = self.by_correlation.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        true
    }

    fn visit(&mut self, source: usize, run_id: u64, visit: Visit, alerts: &mut Vec<Alert>) {
        let run = self.runs.get_mut(&run_id).expect("the run was just found");
        run.last_ms = run.last_ms.max(visit.end_ms);
        let p = &mut self.pipelines[run.pipeline as usize];
        let stage = visit.stage;

        // A stage's visit is complete when it succeeds (or skips); failures and retries
        // before that are attempts, and the visit starts with the first of them.
        let attempt = is_attempt(&visit);
        let mut visit = visit;
        match run.visits.iter().position(|v| v.stage == stage) {
            Some(i) => {
                let earlier = run.visits[i];
                if !is_attempt(&earlier) || attempt {
                    // A duplicate report, or one more attempt: nothing new but, for an
                    // attempt delivered after its success, when the visit started.
                    let v = &mut run.visits[i];
                    v.start_ms = v.start_ms.min(visit.start_ms);
                    return;
                }
                visit.start_ms = visit.start_ms.min(earlier.start_ms);
                run.visits[i] = visit;
            }
            None => {
                let runs = &mut p.stages[stage as usize].runs;
                *runs = runs.saturating_add(1);
                run.visits.push(visit);
                if attempt {
                    if visit.status == Status::Failure {
                        let wait = self.settings.stuck_min.as_millis() as i64;
                        if let Some(due) =
                            check_due(&self.checks, self.settings.max_runs, visit.end_ms, wait)
                        {
                            self.checks
                                .push(Reverse((due, Check::Recovery { run: run_id, stage })));
                        }
                    }
                    return;
                }
            }
        }
        let mut downstream = std::mem::take(&mut self.scratch);
        p.downstream(stage, self.min_runs, &mut downstream);

        // What needs every stage before this one: once no event that ended before
        // this one can still arrive (the clock, the slowest partition's event time, past
        // its end plus the allowed lateness), the run settles here (see `settle`).
        let queue = &mut self.settling[source];
        if queue.len() < 4 * self.settings.max_runs {
            queue.push_back((visit.end_ms + self.lateness_ms, run_id, stage));
        }

        // Deadlines for the stages this one feeds that the run has not reached.
        for &to in &downstream {
            if run.visits.iter().any(|v| v.stage == to) {
                continue;
            }
            let Some(hop) = p.hop(stage, to).filter(|h| h.carried >= self.min_runs) else {
                continue;
            };
            let deadline = deadline_ms(&self.settings, hop.p95_ms());
            if let Some(due) =
                check_due(&self.checks, self.settings.max_runs, visit.end_ms, deadline)
            {
                self.checks.push(Reverse((
                    due,
                    Check::Arrival {
                        run: run_id,
                        from: stage,
                        to,
                    },
                )));
            }
        }
        self.scratch = downstream;

        let run = &self.runs[&run_id];
        let (pipeline, corr) = (run.pipeline, run.correlation_id.clone());
        if visit.status == Status::Success {
            self.observe_failed(pipeline, stage, &corr, visit, false, alerts);
        }
    }

    /// A run's visit of `stage` has settled: every stage that ended before it has
    /// reported, whatever partitions they came through. Only now does the run count for
    /// the lineage and are its records compared with its upstream stages'.
    fn settle(&mut self, run_id: u64, stage: u16, alerts: &mut Vec<Alert>) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        let p = &mut self.pipelines[run.pipeline as usize];
        relearn(p, run);
        let Some(i) = run
            .visits
            .iter()
            .position(|v| v.stage == stage && !is_attempt(v))
        else {
            return;
        };
        let mut upstream = Vec::new();
        p.upstream(stage, self.min_runs, &mut upstream);
        if upstream.is_empty() || run.visits[i].loss_checked {
            return;
        }
        // The hand-over into this stage, from the moment the last of its upstream stages
        // ended (a stage fed by two waits for both, and that wait is not the hand-over's)
        // to its first attempt's start; and at a final stage, the run's end-to-end
        // latency. Taken now that the run's reports are all in: a retry delivered after
        // its success would otherwise move the start.
        let visit = run.visits[i];
        let ready = upstream
            .iter()
            .map(|&from| completed(run, from).map(|up| up.end_ms))
            .try_fold(i64::MIN, |latest, end| Some(latest.max(end?)));
        let mut measured = Vec::new();
        if let Some(ready) = ready {
            measured.push((&self.hop_metric, (visit.start_ms - ready).max(0) as f64));
        }
        let mut downstream = Vec::new();
        p.downstream(stage, self.min_runs, &mut downstream);
        if downstream.is_empty() && p.stages[stage as usize].runs >= self.min_runs {
            if let Some(first_start) = ancestry_start(p, run, stage, self.min_runs) {
                measured.push((&self.e2e_metric, (visit.end_ms - first_start).max(0) as f64));
            }
        }
        for (metric, value) in measured {
            if self.settled.len() >= 4 * self.settings.max_runs {
                self.stats.figures_dropped += 1;
                continue;
            }
            self.settled.push(SettledFigure {
                pipeline: Arc::clone(&p.name),
                stage: Arc::clone(&p.stages[stage as usize].name),
                end_ms: visit.end_ms,
                metric: Arc::clone(metric),
                value,
            });
        }
        // Each hop's delays (upstream end to this end) train its stuck-run deadline; a
        // run that arrived within it ends a stuck alert.
        let visit = run.visits[i];
        let mut arrived_in_time = None;
        for &from in &upstream {
            let Some(up) = completed(run, from) else {
                continue;
            };
            let hop = p.hop_mut(from, stage);
            let arrival_ms = visit.end_ms - up.end_ms;
            if hop.carried >= self.min_runs {
                let deadline = deadline_ms(&self.settings, hop.p95_ms());
                arrived_in_time = Some(arrived_in_time.unwrap_or(true) && arrival_ms <= deadline);
            }
            hop.record(arrival_ms);
        }
        if arrived_in_time == Some(true) {
            let (pipeline, corr) = (run.pipeline, run.correlation_id.clone());
            self.observe_stuck(
                pipeline,
                stage,
                None,
                &corr,
                visit.start_ms,
                visit.end_ms,
                alerts,
            );
        }
        let run = self.runs.get_mut(&run_id).expect("still there");
        let ups: Option<Vec<Visit>> = upstream.iter().map(|&u| completed(run, u)).collect();
        let Some(ups) = ups else {
            return;
        };
        let fed = ups
            .iter()
            .try_fold(0u64, |sum, u| Some(sum + u.records_out?));
        let (Some(fed), Some(read)) = (fed, run.visits[i].records_in) else {
            return;
        };
        run.visits[i].loss_checked = true;
        let visit = run.visits[i];
        let (pipeline, corr) = (run.pipeline, run.correlation_id.clone());
        self.observe_loss(pipeline, stage, &upstream, &corr, visit, fed, read, alerts);
    }

    /// Moves source `source`'s watermark to `watermark_ms`; the clock (the slowest
    /// source) then runs the checks that fall due and forgets expired runs.
    pub fn advance(&mut self, source: usize, watermark_ms: i64, alerts: &mut Vec<Alert>) {
        if let Some(s) = self.sources.get_mut(source) {
            *s = match *s {
                SourceClock::At(w) => SourceClock::At(w.max(watermark_ms)),
                _ => SourceClock::At(watermark_ms),
            };
        }
        let mut now = None::<i64>;
        for s in &self.sources {
            match *s {
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
        // One queue per source: a partition delivers its events nearly in time order
        // (within the lateness), so a queue rather than a heap, and one settling a little
        // late costs nothing; but two partitions can be days apart while catching up.
        for q in 0..self.settling.len() {
            while let Some(&(due, run, stage)) = self.settling[q].front() {
                if due > now {
                    break;
                }
                self.settling[q].pop_front();
                self.settle(run, stage, alerts);
            }
        }
        while let Some(&Reverse((due, check))) = self.checks.peek() {
            if due > now {
                break;
            }
            self.checks.pop();
            self.run_check(check, due, alerts);
        }
        let ttl = self.settings.run_ttl.as_millis() as i64;
        while let Some(&id) = self.order.front() {
            match self.runs.get(&id) {
                Some(run) if run.last_ms + ttl > now => break,
                Some(_) => {
                    self.order.pop_front();
                    self.forget(id);
                    self.stats.runs_expired += 1;
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
    }

    fn run_check(&mut self, check: Check, due_ms: i64, alerts: &mut Vec<Alert>) {
        match check {
            Check::Arrival { run, from, to } => {
                let Some(r) = self.runs.get_mut(&run) else {
                    return;
                };
                if r.visits.iter().any(|v| v.stage == to) {
                    return;
                }
                let Some(left) = r.visits.iter_mut().find(|v| v.stage == from) else {
                    return;
                };
                if left.reported {
                    return;
                }
                left.reported = true;
                let left_ms = left.end_ms;
                let (pipeline, corr) = (r.pipeline, r.correlation_id.clone());
                self.stats.stuck_runs += 1;
                self.observe_stuck(pipeline, to, Some(from), &corr, left_ms, due_ms, alerts);
            }
            Check::Recovery { run, stage } => {
                let Some(r) = self.runs.get_mut(&run) else {
                    return;
                };
                let Some(v) = r.visits.iter_mut().find(|v| v.stage == stage) else {
                    return;
                };
                if v.status != Status::Failure || v.reported {
                    return;
                }
                v.reported = true;
                let visit = *v;
                let (pipeline, corr) = (r.pipeline, r.correlation_id.clone());
                self.stats.failed_runs += 1;
                self.observe_failed(pipeline, stage, &corr, visit, true, alerts);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn observe_loss(
        &mut self,
        pipeline: u32,
        stage: u16,
        upstream: &[u16],
        corr: &str,
        visit: Visit,
        fed: u64,
        read: u64,
        alerts: &mut Vec<Alert>,
    ) {
        self.stats.data_loss_checks += 1;
        let lost = fed.saturating_sub(read);
        let tolerance = self.settings.loss_tolerance;
        let allowed = (fed as f64 * tolerance).max(self.settings.loss_min_records as f64 - 1.0);
        let share = if fed == 0 {
            0.0
        } else {
            lost as f64 / fed as f64
        };
        // How many tolerances were lost: the score of a run, as a detector's is of a
        // bucket (in the tolerance's units, not standard deviations).
        let score = -share / tolerance.max(1e-6);
        let observation = if lost as f64 > allowed {
            Observation::Anomalous(Severity::from_score(score, self.critical_score))
        } else {
            Observation::Normal
        };
        let (bucket_start, bucket_end) = self.bucket_of(visit.end_ms);
        let p = &mut self.pipelines[pipeline as usize];
        let Some(notice) = p.stages[stage as usize].tracks[LOSS].observe(
            observation,
            bucket_start,
            bucket_end,
            &self.rules,
        ) else {
            return;
        };
        let names: Vec<&str> = upstream
            .iter()
            .map(|&u| &*p.stages[u as usize].name)
            .collect();
        let upstream_names = names.join(", ");
        let stage_name = Arc::clone(&p.stages[stage as usize].name);
        let mut alert = self.factory.build(&AlertFacts {
            notice,
            kind: AlertKind::DataLoss,
            pipeline: &p.name,
            stage: &stage_name,
            metric: "records_in",
            detector: "flow",
            value: read as f64,
            expected: fed as f64,
            lower: fed as f64 - allowed,
            upper: fed as f64,
            score,
            bucket_start,
            bucket_end,
            correlation_ids: &[corr],
            upward_only: false,
        });
        alert.summary = match notice {
            Notice::Firing { .. } => format!(
                "{}/{stage_name} read {} records of the {} that {upstream_names} wrote in run {corr}: {} lost ({})",
                p.name,
                crate::alert::human_number(read as f64),
                crate::alert::human_number(fed as f64),
                crate::alert::human_number(lost as f64),
                percent(share),
            ),
            Notice::Resolved { .. } => format!(
                "{}/{stage_name} reads what {upstream_names} wrote again (run {corr})",
                p.name
            ),
        };
        alert
            .labels
            .insert("upstream_stage", upstream_names.clone());
        alert
            .annotations
            .insert("upstream_records_out", fed.to_string());
        alert.annotations.insert("records_in", read.to_string());
        alert.annotations.insert("records_lost", lost.to_string());
        alerts.push(alert);
    }

    /// A run arrived at `stage` in time (`from` none), or did not arrive from `from`.
    #[allow(clippy::too_many_arguments)]
    fn observe_stuck(
        &mut self,
        pipeline: u32,
        stage: u16,
        from: Option<u16>,
        corr: &str,
        start_ms: i64,
        end_ms: i64,
        alerts: &mut Vec<Alert>,
    ) {
        let observation = match from {
            // Always critical: data that stops halfway is data nobody downstream gets.
            Some(_) => Observation::Anomalous(Severity::Critical),
            None => Observation::Normal,
        };
        let (bucket_start, bucket_end) = self.bucket_of(end_ms);
        let p = &mut self.pipelines[pipeline as usize];
        let Some(notice) = p.stages[stage as usize].tracks[STUCK].observe(
            observation,
            bucket_start,
            bucket_end,
            &self.rules,
        ) else {
            return;
        };
        let stage_name = Arc::clone(&p.stages[stage as usize].name);
        let (waited, usual, from_name) = match from {
            Some(f) => {
                let hop = p.hop(f, stage);
                (
                    (end_ms - start_ms) as f64 / 1000.0,
                    hop.map_or(0.0, |h| h.p95_ms() / 1000.0),
                    Some(Arc::clone(&p.stages[f as usize].name)),
                )
            }
            None => (f64::NAN, f64::NAN, None),
        };
        let mut alert = self.factory.build(&AlertFacts {
            notice,
            kind: AlertKind::StuckRun,
            pipeline: &p.name,
            stage: &stage_name,
            metric: "run_arrival",
            detector: "flow",
            value: waited,
            expected: usual,
            lower: 0.0,
            upper: deadline_ms(&self.settings, usual * 1000.0) as f64 / 1000.0,
            score: if from.is_some() {
                waited / usual.max(1e-3)
            } else {
                0.0
            },
            bucket_start,
            bucket_end,
            correlation_ids: &[corr],
            upward_only: true,
        });
        alert.summary = match (&notice, &from_name) {
            (Notice::Firing { .. }, Some(f)) => format!(
                "run {corr} of {} left {f} but has not reached {stage_name} after {} (usually within {})",
                p.name,
                crate::time::human_ms((waited * 1000.0) as i64),
                crate::time::human_ms((usual * 1000.0) as i64),
            ),
            _ => format!("{}/{stage_name} receives runs in time again (run {corr})", p.name),
        };
        if let Some(f) = from_name {
            alert.labels.insert("upstream_stage", f.to_string());
        }
        alerts.push(alert);
    }

    fn observe_failed(
        &mut self,
        pipeline: u32,
        stage: u16,
        corr: &str,
        visit: Visit,
        failed: bool,
        alerts: &mut Vec<Alert>,
    ) {
        let observation = match failed {
            true => Observation::Anomalous(Severity::Critical),
            false => Observation::Normal,
        };
        let (bucket_start, bucket_end) = self.bucket_of(visit.end_ms);
        let p = &mut self.pipelines[pipeline as usize];
        let Some(notice) = p.stages[stage as usize].tracks[FAILED].observe(
            observation,
            bucket_start,
            bucket_end,
            &self.rules,
        ) else {
            return;
        };
        let stage_name = Arc::clone(&p.stages[stage as usize].name);
        let mut alert = self.factory.build(&AlertFacts {
            notice,
            kind: AlertKind::FailedRun,
            pipeline: &p.name,
            stage: &stage_name,
            metric: "run_status",
            detector: "flow",
            value: 1.0,
            expected: 0.0,
            lower: 0.0,
            upper: 0.0,
            score: if failed { 1.0 } else { 0.0 },
            bucket_start,
            bucket_end,
            correlation_ids: &[corr],
            upward_only: true,
        });
        alert.summary = match notice {
            Notice::Firing { .. } => format!(
                "{}/{stage_name} failed run {corr}, and no retry succeeded within {}",
                p.name,
                humantime::format_duration(self.settings.stuck_min)
            ),
            Notice::Resolved { .. } => {
                format!("{}/{stage_name} completes runs again (run {corr})", p.name)
            }
        };
        alerts.push(alert);
    }

    /// The event-time bucket holding `ts_ms`: where a run's alert is placed, as the
    /// alert schema places every alert.
    fn bucket_of(&self, ts_ms: i64) -> (i64, i64) {
        let width = self.factory.bucket_ms;
        let start = ts_ms.div_euclid(width) * width;
        (start, start + width)
    }

    /// Every run with this correlation id (one per pipeline that used it), as traces.
    pub fn traces(&self, correlation_id: &str) -> Vec<RunTrace<'_>> {
        let hash = self.hasher.hash_one(correlation_id);
        let mut traces: Vec<RunTrace<'_>> = self
            .by_correlation
            .iter_hash(hash)
            .filter_map(|id| self.runs.get(id))
            .filter(|r| *r.correlation_id == *correlation_id)
            .map(|r| self.trace(r))
            .collect();
        traces.sort_by(|a, b| a.pipeline.cmp(b.pipeline));
        traces
    }

    fn trace<'a>(&'a self, run: &'a Run) -> RunTrace<'a> {
        let p = &self.pipelines[run.pipeline as usize];
        let mut visits = run.visits.clone();
        visits.sort_by_key(|v| (v.start_ms, v.end_ms));
        let mut ups = Vec::new();
        let stages = visits
            .iter()
            .map(|v| {
                p.upstream(v.stage, self.min_runs, &mut ups);
                let hops = ups
                    .iter()
                    .filter_map(|&from| {
                        let up = run.visits.iter().find(|u| u.stage == from)?;
                        Some(HopTrace {
                            from: &p.stages[from as usize].name,
                            delay_ms: v.start_ms - up.end_ms,
                            records_out: up.records_out,
                        })
                    })
                    .collect();
                StageTrace {
                    stage: &p.stages[v.stage as usize].name,
                    start: v.start_ms,
                    end: v.end_ms,
                    duration_ms: v.end_ms - v.start_ms,
                    status: status_name(v.status),
                    records_in: v.records_in,
                    records_out: v.records_out,
                    records_rejected: v.records_rejected,
                    hops,
                }
            })
            .collect::<Vec<_>>();
        let start = visits.iter().map(|v| v.start_ms).min().unwrap_or(0);
        let end = visits.iter().map(|v| v.end_ms).max().unwrap_or(0);
        RunTrace {
            pipeline: &p.name,
            correlation_id: &run.correlation_id,
            start,
            end,
            e2e_ms: end - start,
            stages,
        }
    }

    /// Hands the figures waiting for stages that `owns` recognises to `f`; the others
    /// wait for their own engine.
    pub fn take_settled(
        &mut self,
        mut owns: impl FnMut(&str, &str) -> bool,
        mut f: impl FnMut(SettledFigure),
    ) {
        if self.settled.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.settled.len() {
            let s = &self.settled[i];
            if owns(&s.pipeline, &s.stage) {
                f(self.settled.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// The lineage of one pipeline.
    pub fn graph(&self, pipeline: &str) -> Option<Graph<'_>> {
        let &id = self.pipeline_index.get(pipeline)?;
        Some(self.pipelines[id as usize].graph(self.min_runs))
    }

    /// Heap bytes held by runs (an estimate from capacities, for the memory benchmark).
    pub fn run_heap_bytes(&self) -> usize {
        self.runs
            .values()
            .map(|r| {
                std::mem::size_of::<(u64, Run)>()
                    + r.correlation_id.len()
                    + r.visits.capacity() * std::mem::size_of::<Visit>()
                    + std::mem::size_of::<u64>() * 3
            })
            .sum::<usize>()
            + self.checks.len() * std::mem::size_of::<Reverse<(i64, Check)>>()
    }

    pub fn lineage_heap_bytes(&self) -> usize {
        self.pipelines.iter().map(PipelineFlow::heap_bytes).sum()
    }
}

fn deadline_ms(settings: &FlowSettings, p95_ms: f64) -> i64 {
    let floor = settings.stuck_min.as_millis() as f64;
    (p95_ms * settings.stuck_factor)
        .max(floor)
        .min(MAX_DEADLINE_MS as f64) as i64
}

/// When a check made at `from_ms` for `after_ms` is due, if it is worth making.
fn check_due(
    checks: &BinaryHeap<Reverse<(i64, Check)>>,
    max_runs: usize,
    from_ms: i64,
    after_ms: i64,
) -> Option<i64> {
    // Bounded like the runs: a flood of checks for runs long gone is not kept.
    if after_ms > MAX_DEADLINE_MS || checks.len() >= 4 * max_runs {
        return None;
    }
    Some(from_ms.saturating_add(after_ms))
}

/// Counts what this run says of the lineage: a stage that ended before another started,
/// with no stage of the run in between, comes right before it. Visits arrive in any order
/// (a run's stages are on different partitions), so the run's edges are recomputed from
/// all its visits and only the difference is counted: the outcome does not depend on the
/// order of arrival.
fn relearn(p: &mut PipelineFlow, run: &mut Run) {
    let done: Vec<&Visit> = run.visits.iter().filter(|v| !is_attempt(v)).collect();
    let mut edges = Vec::new();
    for b in &done {
        let before: Vec<&&Visit> = done
            .iter()
            .filter(|v| v.stage != b.stage && v.end_ms <= b.start_ms)
            .collect();
        for v in &before {
            let between = before
                .iter()
                .any(|w| w.stage != v.stage && w.start_ms >= v.end_ms);
            if !between {
                edges.push((v.stage, b.stage));
            }
        }
    }
    for &(from, to) in &run.edges {
        if !edges.contains(&(from, to)) {
            p.unlearn(from, to);
        }
    }
    for &(from, to) in &edges {
        if !run.edges.contains(&(from, to)) {
            p.learn(from, to);
        }
    }
    run.edges = edges;
}

/// The completed visit of `stage` in `run`.
fn completed(run: &Run, stage: u16) -> Option<Visit> {
    run.visits
        .iter()
        .find(|v| v.stage == stage && !is_attempt(v))
        .copied()
}

/// The earliest start among `stage` and every stage upstream of it, transitively, if all
/// of them have completed in `run`.
fn ancestry_start(p: &PipelineFlow, run: &Run, stage: u16, min_runs: u32) -> Option<i64> {
    let mut seen = vec![stage];
    let mut next = vec![stage];
    let mut start = i64::MAX;
    let mut ups = Vec::new();
    while let Some(s) = next.pop() {
        start = start.min(completed(run, s)?.start_ms);
        p.upstream(s, min_runs, &mut ups);
        for &u in &ups {
            if !seen.contains(&u) {
                seen.push(u);
                next.push(u);
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
