//! Injected faults: their kinds, the default plan, resolution against a topology, and the labels
//! that record where each one really took effect.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use chrono::{DateTime, Utc};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Serialize, Serializer};

use super::encode::format_rfc3339_ms;
use super::noise::{seeded, stream};
use super::topology::{Mode, Topology, DAY_MS, MINUTE_MS, SECOND_MS};

/// The kinds of anomaly the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Records fall to 5–20 % of normal.
    Drop,
    /// Records rise to 4–6 × normal.
    Spike,
    /// The stage emits nothing.
    Silence,
    /// Errors reach 5–20 % of `records_in`, and 15–35 % of events have status `failure`.
    ErrorBurst,
    /// `duration_ms` rises 4.5–7.5 ×.
    LatencyJump,
    /// `quality.null_rate` jumps to 0.1–0.3.
    QualityDegradation,
    /// The stage reads only 62–83 % of what its upstream wrote, with nothing marked rejected.
    RecordsLost,
    /// A run stops halfway: for the units whose processing at the stage would start within the
    /// window, the stage and every stage downstream of it emit nothing, while the stages upstream
    /// of it emit as usual. The stage must have an upstream. Meant for short windows, so that a
    /// single batch run or a handful of micro-batches get stuck: the flow plan opens the window
    /// at a scheduled run and keeps it open half a period (one run) on batch pipelines, and one
    /// minute (four to ten micro-batches) on streaming ones.
    ///
    /// Its label's `start` is when the first stuck run should have reached the stage: the
    /// timestamp of that unit's upstream event (the latest of them on a stage with several
    /// upstreams). Its `end` is the timestamp of the stage's first event after the stuck units,
    /// i.e. of the first unit that gets through again.
    StuckRun,
    /// For the units whose processing at the stage would start within the window, the hand-over
    /// into the stage (from its upstream's end to its own start) takes 11–14 typical hand-overs
    /// longer than usual, as behind a backlog: about 0.2 s instead of 15 ms on streaming
    /// pipelines, about 50 s instead of 4 s on batch ones. The stage's processing time, and so
    /// its `duration_ms`, is unchanged; its events and those of the stages downstream come that
    /// much later, stretching the pipeline's end-to-end latency. The stage must have an upstream.
    ///
    /// Its label's `start` is the timestamp of the stage's first delayed event, its `end` that of
    /// the stage's first event on time again.
    SlowHop,
}

impl FaultKind {
    /// Every kind, in declaration order (the default plan's are in `ASSIGNMENT_ORDER`).
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Drop,
        FaultKind::Spike,
        FaultKind::Silence,
        FaultKind::ErrorBurst,
        FaultKind::LatencyJump,
        FaultKind::QualityDegradation,
        FaultKind::RecordsLost,
        FaultKind::StuckRun,
        FaultKind::SlowHop,
    ];

    /// The name used in label files and on the command line, e.g. `error_burst`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Drop => "drop",
            FaultKind::Spike => "spike",
            FaultKind::Silence => "silence",
            FaultKind::ErrorBurst => "error_burst",
            FaultKind::LatencyJump => "latency_jump",
            FaultKind::QualityDegradation => "quality_degradation",
            FaultKind::RecordsLost => "records_lost",
            FaultKind::StuckRun => "stuck_run",
            FaultKind::SlowHop => "slow_hop",
        }
    }

    /// The alert kind a detector is expected to raise for this fault.
    pub fn expected_alert(self) -> &'static str {
        match self {
            FaultKind::Drop => "throughput_drop",
            FaultKind::Spike => "throughput_spike",
            FaultKind::Silence => "silence",
            FaultKind::ErrorBurst => "error_rate",
            FaultKind::LatencyJump => "latency",
            FaultKind::QualityDegradation => "quality",
            FaultKind::RecordsLost => "data_loss",
            FaultKind::StuckRun => "stuck_run",
            FaultKind::SlowHop => "latency",
        }
    }

    /// Whether the kind acts on the hand-over from upstream stages, which sources do not have.
    fn needs_upstream(self) -> bool {
        matches!(
            self,
            FaultKind::RecordsLost | FaultKind::StuckRun | FaultKind::SlowHop
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .with_context(|| format!("unknown fault kind {s:?}"))
    }
}

impl Serialize for FaultKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One fault to inject: `kind` on (`pipeline`, `stage`) for units of work whose processing at that
/// stage starts within [`start`, `start + duration`) (would start, for `stuck_run`; would start
/// without the added delay, for `slow_hop`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    /// What goes wrong.
    pub kind: FaultKind,
    /// Name of the pipeline, e.g. `clickstream`.
    pub pipeline: String,
    /// Name of the stage within it, e.g. `ingest`.
    pub stage: String,
    /// Start of the fault window.
    pub start: DateTime<Utc>,
    /// Length of the fault window.
    pub duration: Duration,
}

/// Which faults a simulation injects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FaultPlan {
    /// No faults: organic data only.
    None,
    /// One fault of each kind but `stuck_run` and `slow_hop`, spread over the run (see
    /// [`Simulation`](super::Simulation)).
    #[default]
    Default,
    /// The faults that data-flow tracking finds: one `records_lost`, one `stuck_run` and one
    /// `slow_hop`, each on its own pipeline, spread over the run like the default plan (see
    /// [`Simulation`](super::Simulation)).
    Flow,
    /// Exactly these faults.
    Explicit(Vec<FaultSpec>),
}

/// Where and when an injected fault actually showed in the events: one line of the label file.
///
/// `start` is the timestamp of the first affected event of the stage (for `silence`, of the first
/// suppressed event, i.e. when it would have been emitted; for `stuck_run`, of the first stuck
/// unit's upstream event, i.e. when the run should have reached the stage); `end` is the
/// timestamp of the stage's first unaffected event after it, or the end of the simulation if
/// there is none.
/// `affected_downstream` lists the stages that legitimately change as a consequence (they read
/// the faulted stage's output, directly or not); every kind but `quality_degradation` can reach
/// them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultLabel {
    /// What went wrong (serialized as its [`FaultKind::as_str`] name).
    pub kind: FaultKind,
    /// Pipeline of the faulted stage.
    pub pipeline: String,
    /// The faulted stage.
    pub stage: String,
    /// Timestamp of the first affected event.
    #[serde(serialize_with = "serialize_time")]
    pub start: DateTime<Utc>,
    /// Timestamp of the first unaffected event after the fault (or the end of the simulation).
    #[serde(serialize_with = "serialize_time")]
    pub end: DateTime<Utc>,
    /// [`FaultKind::expected_alert`] of `kind`.
    pub expected_alert: &'static str,
    /// Stages of the same pipeline whose data changes as a consequence.
    pub affected_downstream: Vec<String>,
}

/// Label times use exactly the event timestamp format, so they compare equal as strings.
fn serialize_time<S: Serializer>(t: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buf = String::with_capacity(24);
    format_rfc3339_ms(&mut buf, t.timestamp_millis());
    serializer.serialize_str(&buf)
}

/// A fault resolved against the topology, with its magnitudes drawn.
#[derive(Clone, Debug)]
pub(crate) struct ActiveFault {
    pub kind: FaultKind,
    pub pipeline: usize,
    pub stage: usize,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Kind-specific size: a volume factor (drop, spike, records_lost), an error fraction
    /// (error_burst), a duration factor (latency_jump), a null rate (quality_degradation) or
    /// the hand-over delay added, in typical hand-overs (slow_hop).
    pub magnitude: f64,
    /// Share of `failure` events during an error burst.
    pub fail_prob: f64,
    pub descendants: Vec<usize>,
}

impl ActiveFault {
    fn covers(&self, t_ms: i64) -> bool {
        self.start_ms <= t_ms && t_ms < self.end_ms
    }
}

/// The resolved faults with an index by stage.
#[derive(Clone, Debug, Default)]
pub(crate) struct FaultSet {
    pub faults: Vec<ActiveFault>,
    /// `by_stage[p][s]`: indices into `faults` of the faults on stage `s` of pipeline `p`.
    by_stage: Vec<Vec<Vec<usize>>>,
}

impl FaultSet {
    /// Validates `specs` against `topo` and draws their magnitudes.
    pub(crate) fn resolve(specs: &[FaultSpec], topo: &Topology, seed: u64) -> anyhow::Result<Self> {
        let mut rng = seeded(seed, stream::FAULT_MAGNITUDE);
        let mut by_stage: Vec<Vec<Vec<usize>>> = topo
            .pipelines
            .iter()
            .map(|p| vec![Vec::new(); p.stages.len()])
            .collect();
        let mut faults: Vec<ActiveFault> = Vec::with_capacity(specs.len());
        for spec in specs {
            let fault = resolve_one(spec, topo, &mut rng)?;
            let on_stage = &mut by_stage[fault.pipeline][fault.stage];
            if let Some(&other) = on_stage.iter().find(|&&o| overlaps(&faults[o], &fault)) {
                bail!(
                    "faults {} and {} overlap on {}/{}",
                    faults[other].kind,
                    fault.kind,
                    spec.pipeline,
                    spec.stage
                );
            }
            on_stage.push(faults.len());
            faults.push(fault);
        }
        Ok(FaultSet { faults, by_stage })
    }

    /// Indices of the faults on stage `s` of pipeline `p`.
    pub(crate) fn of_stage(&self, p: usize, s: usize) -> &[usize] {
        self.by_stage
            .get(p)
            .and_then(|stages| stages.get(s))
            .map_or(&[], Vec::as_slice)
    }

    /// The fault (index and definition) acting on stage `s` of pipeline `p` at `t_ms`, if any.
    pub(crate) fn active(&self, p: usize, s: usize, t_ms: i64) -> Option<(usize, &ActiveFault)> {
        self.of_stage(p, s)
            .iter()
            .map(|&i| (i, &self.faults[i]))
            .find(|(_, f)| f.covers(t_ms))
    }
}

fn overlaps(a: &ActiveFault, b: &ActiveFault) -> bool {
    a.start_ms < b.end_ms && b.start_ms < a.end_ms
}

fn resolve_one(
    spec: &FaultSpec,
    topo: &Topology,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> anyhow::Result<ActiveFault> {
    let p = topo
        .pipeline_index(&spec.pipeline)
        .with_context(|| format!("fault {}: unknown pipeline {:?}", spec.kind, spec.pipeline))?;
    let pipe = &topo.pipelines[p];
    let s = pipe.stage_index(&spec.stage).with_context(|| {
        format!(
            "fault {}: pipeline {} has no stage {:?}",
            spec.kind, spec.pipeline, spec.stage
        )
    })?;
    let stage = &pipe.stages[s];
    ensure!(
        spec.kind != FaultKind::QualityDegradation || stage.null_base.is_some(),
        "fault quality_degradation: {}/{} reports no quality figures",
        spec.pipeline,
        spec.stage
    );
    ensure!(
        !spec.kind.needs_upstream() || !stage.upstream.is_empty(),
        "fault {}: {}/{} has no upstream stage",
        spec.kind,
        spec.pipeline,
        spec.stage
    );
    let duration_ms = i64::try_from(spec.duration.as_millis()).unwrap_or(i64::MAX);
    ensure!(duration_ms > 0, "fault {}: empty duration", spec.kind);
    let start_ms = spec.start.timestamp_millis();
    // Both draws always happen so that one fault's kind never shifts another's magnitudes.
    let magnitude = magnitude_for(spec.kind, rng.gen());
    let fail_prob = rng.gen_range(0.15..0.35);
    Ok(ActiveFault {
        kind: spec.kind,
        pipeline: p,
        stage: s,
        start_ms,
        end_ms: start_ms.saturating_add(duration_ms),
        magnitude,
        fail_prob,
        // Nulls change no counts or timing, so nothing downstream notices.
        descendants: if spec.kind == FaultKind::QualityDegradation {
            Vec::new()
        } else {
            pipe.descendants(s)
        },
    })
}

/// Maps a uniform draw onto the kind's magnitude range.
fn magnitude_for(kind: FaultKind, u: f64) -> f64 {
    let (lo, hi) = match kind {
        FaultKind::Drop => (0.05, 0.20),
        FaultKind::Spike => (4.0, 6.0),
        FaultKind::Silence => (0.0, 0.0),
        // With ±25 % per-event variation this keeps errors within 5–20 % of records_in.
        FaultKind::ErrorBurst => (0.07, 0.16),
        FaultKind::LatencyJump => (4.5, 7.5),
        FaultKind::QualityDegradation => (0.12, 0.25),
        FaultKind::RecordsLost => (0.62, 0.83),
        FaultKind::StuckRun => (0.0, 0.0),
        // Typical hand-overs added. An added delay rather than a multiplied one, so that every
        // slowed hand-over exceeds 11 times the usual median, beyond the usual band (whose
        // 1-in-10 000 is 6.4 times the median on streaming stages, 4.4 times on batch ones);
        // multiplying a log-normal draw would let its lowest draws fall back into the band.
        FaultKind::SlowHop => (11.0, 14.0),
    };
    lo + (hi - lo) * u
}

/// The default plan's kinds, in the order in which they pick their stage: the most constrained
/// first.
const ASSIGNMENT_ORDER: [FaultKind; 7] = [
    FaultKind::QualityDegradation,
    FaultKind::RecordsLost,
    FaultKind::Silence,
    FaultKind::Drop,
    FaultKind::Spike,
    FaultKind::ErrorBurst,
    FaultKind::LatencyJump,
];

/// The flow plan's kinds, in the order in which they pick their pipeline: `stuck_run` first so
/// that it gets a batch pipeline (one stuck run), `slow_hop` then takes a streaming one, and
/// `records_lost` what is left (the default plan already puts it on a batch pipeline).
const FLOW_ORDER: [FaultKind; 3] = [
    FaultKind::StuckRun,
    FaultKind::SlowHop,
    FaultKind::RecordsLost,
];

/// The default plan: one fault of each kind, each on its own stage where the topology allows,
/// never on pipeline 0 when there are two pipelines or more, one per time slot so that no two
/// faults (nor their downstream consequences) overlap. Faults start after the first day when the
/// run lasts two days or more, after the first third otherwise.
pub(crate) fn default_plan(
    topo: &Topology,
    start: DateTime<Utc>,
    end_ms: i64,
    seed: u64,
) -> Vec<FaultSpec> {
    spread_plan(topo, start, end_ms, seed, &ASSIGNMENT_ORDER, false)
}

/// The flow plan: the faults of [`FLOW_ORDER`], each on its own pipeline while there are enough
/// of them (pipeline 0 excluded as in the default plan), spread over time like the default plan.
pub(crate) fn flow_plan(
    topo: &Topology,
    start: DateTime<Utc>,
    end_ms: i64,
    seed: u64,
) -> Vec<FaultSpec> {
    spread_plan(topo, start, end_ms, seed, &FLOW_ORDER, true)
}

/// Places one fault of each of `kinds` (see [`default_plan`]); with `own_pipeline`, each goes to
/// a pipeline without another fault while one is left.
fn spread_plan(
    topo: &Topology,
    start: DateTime<Utc>,
    end_ms: i64,
    seed: u64,
    kinds: &[FaultKind],
    own_pipeline: bool,
) -> Vec<FaultSpec> {
    let start_ms = start.timestamp_millis();
    let total = end_ms - start_ms;
    let window_start = if total >= 2 * DAY_MS {
        start_ms + DAY_MS
    } else {
        start_ms + total / 3
    };
    let slot = (end_ms - window_start) / kinds.len() as i64;
    let mut assignments = assign_stages(topo, kinds, own_pipeline, slot * 6 / 10);
    if slot < MINUTE_MS {
        return Vec::new();
    }
    let mut rng = seeded(seed, stream::FAULT_PLAN);
    assignments.shuffle(&mut rng);
    let mut specs: Vec<FaultSpec> = assignments
        .iter()
        .enumerate()
        .map(|(i, &(kind, p, s))| {
            let pipe = &topo.pipelines[p];
            let (lo, hi) = duration_range(kind, pipe.mode);
            // Short runs squeeze faults into their slot, leaving time to recover.
            let dur = rng.gen_range(lo..=hi).min(slot * 6 / 10);
            let dur = dur - dur % SECOND_MS;
            let slot_start = window_start + i as i64 * slot;
            let earliest = slot_start + slot / 20;
            let latest = (slot_start + slot - dur - slot / 10).max(earliest);
            let at = rng.gen_range(earliest..=latest);
            let mut at = at - at.rem_euclid(SECOND_MS);
            if let (
                FaultKind::StuckRun,
                Mode::Batch {
                    period_ms,
                    offset_ms,
                },
            ) = (kind, pipe.mode)
            {
                // Opening at a scheduled run and lasting half a period, the window holds the
                // start of exactly that run at the stage (a few minutes in, at most).
                at += (offset_ms - at).rem_euclid(period_ms);
            }
            FaultSpec {
                kind,
                pipeline: pipe.name.clone(),
                stage: pipe.stages[s].name.clone(),
                start: start + chrono::Duration::milliseconds(at - start_ms),
                duration: Duration::from_millis(dur as u64),
            }
        })
        .collect();
    specs.sort_by_key(|f| f.start);
    specs
}

/// Realistic fault lengths; batch stages need at least two runs inside the window. A stuck run
/// is one batch run (half a period, see [`spread_plan`]) or a minute of micro-batches.
fn duration_range(kind: FaultKind, mode: Mode) -> (i64, i64) {
    let hi = if kind == FaultKind::Silence { 60 } else { 90 } * MINUTE_MS;
    match mode {
        Mode::Streaming { .. } if kind == FaultKind::StuckRun => (MINUTE_MS, MINUTE_MS),
        Mode::Batch { period_ms, .. } if kind == FaultKind::StuckRun => {
            (period_ms / 2, period_ms / 2)
        }
        Mode::Streaming { .. } => (20 * MINUTE_MS, hi),
        Mode::Batch { period_ms, .. } => {
            let lo = (20 * MINUTE_MS).max(2 * period_ms + 5 * MINUTE_MS);
            (lo, hi.max(lo + 30 * MINUTE_MS))
        }
    }
}

/// Picks a (pipeline, stage) for every kind: the best-suited stage by kind preference, then the
/// least used stage, then the pipeline with the fewest faults so far. Stages that run too rarely
/// for a fault of at most `max_fault_ms` come last (short simulations); with `own_pipeline`,
/// so do the pipelines that already have a fault, before anything else.
fn assign_stages(
    topo: &Topology,
    kinds: &[FaultKind],
    own_pipeline: bool,
    max_fault_ms: i64,
) -> Vec<(FaultKind, usize, usize)> {
    let n = topo.pipelines.len();
    let first = if n >= 2 { 1 } else { 0 };
    let mut stage_uses: Vec<Vec<u32>> = topo
        .pipelines
        .iter()
        .map(|p| vec![0; p.stages.len()])
        .collect();
    let mut pipeline_faults = vec![0u32; n];
    let mut out = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        let best = (first..n)
            .flat_map(|p| (0..topo.pipelines[p].stages.len()).map(move |s| (p, s)))
            .filter_map(|(p, s)| {
                let pipe = &topo.pipelines[p];
                let taken = own_pipeline && pipeline_faults[p] > 0;
                // A window shorter than two runs may well contain none.
                let too_sparse = max_fault_ms < 2 * pipe.mode.cadence_ms();
                preference(kind, topo, p, s).map(|pref| {
                    let key = (
                        taken,
                        too_sparse,
                        pref,
                        stage_uses[p][s],
                        pipeline_faults[p],
                        p,
                        s,
                    );
                    (key, (p, s))
                })
            })
            .min_by_key(|&(key, _)| key);
        if let Some((_, (p, s))) = best {
            stage_uses[p][s] += 1;
            pipeline_faults[p] += 1;
            out.push((kind, p, s));
        }
    }
    out
}

/// How well stage `s` of pipeline `p` suits `kind` (0 best); `None` if it cannot host it.
fn preference(kind: FaultKind, topo: &Topology, p: usize, s: usize) -> Option<u8> {
    let pipe = &topo.pipelines[p];
    let stage = &pipe.stages[s];
    let streaming = pipe.mode.is_streaming();
    let source = stage.upstream.is_empty();
    let leaf = stage.downstream.is_empty();
    let rank = |conditions: &[bool]| {
        conditions
            .iter()
            .position(|&c| c)
            .unwrap_or(conditions.len())
    };
    if source && kind.needs_upstream() {
        return None;
    }
    let pref = match kind {
        FaultKind::QualityDegradation => {
            stage.null_base?;
            rank(&[streaming])
        }
        FaultKind::RecordsLost => rank(&[!streaming]),
        // A silent sink is detectable within a minute and starves no other stage.
        FaultKind::Silence => rank(&[streaming && leaf, streaming, leaf]),
        // Volume faults belong where volume enters the pipeline.
        FaultKind::Drop | FaultKind::Spike => rank(&[source && streaming, source]),
        FaultKind::ErrorBurst => rank(&[!source && streaming && !leaf, !source]),
        FaultKind::LatencyJump => rank(&[!streaming && !source, !streaming]),
        // The textbook stuck run is a batch run that stops halfway, leaving stages after it.
        FaultKind::StuckRun => rank(&[!streaming && !leaf, !leaf]),
        // Streaming hand-overs are many and tight, so a slow one stands out within minutes.
        FaultKind::SlowHop => rank(&[streaming && !leaf, streaming]),
    };
    Some(pref as u8)
}

/// Follows one fault's stage while events are generated, to find its label's start and end.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LabelTracker {
    start_ms: Option<i64>,
    end_ms: Option<i64>,
}

impl LabelTracker {
    /// Records the next unit of work of the fault's stage, in processing order: whether the fault
    /// affected it and the timestamp of its first (possibly suppressed) event.
    pub(crate) fn observe(&mut self, affected: bool, first_ts_ms: i64) {
        if affected {
            self.start_ms.get_or_insert(first_ts_ms);
        } else if self.start_ms.is_some() && self.end_ms.is_none() {
            self.end_ms = Some(first_ts_ms);
        }
    }
}

/// The labels of the faults that affected at least one event before `end_ms`.
pub(crate) fn build_labels(
    set: &FaultSet,
    trackers: &[LabelTracker],
    topo: &Topology,
    end_ms: i64,
) -> Vec<FaultLabel> {
    set.faults
        .iter()
        .zip(trackers)
        .filter_map(|(f, t)| {
            let start = t.start_ms?;
            let pipe = &topo.pipelines[f.pipeline];
            Some(FaultLabel {
                kind: f.kind,
                pipeline: pipe.name.clone(),
                stage: pipe.stages[f.stage].name.clone(),
                start: ms_to_datetime(start),
                end: ms_to_datetime(t.end_ms.unwrap_or(end_ms)),
                expected_alert: f.kind.expected_alert(),
                affected_downstream: f
                    .descendants
                    .iter()
                    .map(|&d| pipe.stages[d].name.clone())
                    .collect(),
            })
        })
        .collect()
}

/// Simulated times are validated to be representable, so the fallback is never used.
pub(crate) fn ms_to_datetime(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
