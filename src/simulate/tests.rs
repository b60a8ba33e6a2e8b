//! Behavioural tests of the simulator through its public API and its JSON output.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::*;

const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

fn options(duration: Duration, faults: FaultPlan) -> SimOptions {
    SimOptions {
        duration,
        faults,
        ..SimOptions::default()
    }
}

fn bytes_of(opts: SimOptions) -> Vec<u8> {
    let mut out = Vec::new();
    Simulation::new(opts)
        .expect("valid options")
        .write_events(&mut out)
        .expect("writing to memory");
    out
}

/// One parsed event, keeping the original line for byte comparisons.
#[derive(Clone, Debug)]
struct Ev {
    line: String,
    pipeline: String,
    stage: String,
    ts: i64,
    corr: String,
    status: String,
    records_in: u64,
    records_out: u64,
    rejected: u64,
    errors: u64,
    duration_ms: f64,
    null_rate: Option<f64>,
}

impl Ev {
    fn unit_key(&self) -> (String, String, String, bool) {
        (
            self.pipeline.clone(),
            self.stage.clone(),
            self.corr.clone(),
            self.status == "retry",
        )
    }
}

fn timestamp_ms(v: &Value) -> i64 {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .expect("RFC 3339 timestamp")
            .timestamp_millis(),
        Value::Number(n) => n.as_i64().expect("integer epoch milliseconds"),
        other => panic!("bad timestamp {other}"),
    }
}

fn parse(line: &str) -> Ev {
    let v: Value = serde_json::from_str(line).expect("valid JSON");
    let count = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
    Ev {
        line: line.to_string(),
        pipeline: v["pipeline"].as_str().expect("pipeline").to_string(),
        stage: v["stage"].as_str().expect("stage").to_string(),
        ts: timestamp_ms(&v["timestamp"]),
        corr: v["correlation_id"].as_str().unwrap_or_default().to_string(),
        status: v["status"].as_str().expect("status").to_string(),
        records_in: count("records_in"),
        records_out: count("records_out"),
        rejected: count("records_rejected"),
        errors: count("errors"),
        duration_ms: v["duration_ms"].as_f64().expect("duration_ms"),
        null_rate: v["quality"]["null_rate"].as_f64(),
    }
}

fn events_of(opts: SimOptions) -> Vec<Ev> {
    let bytes = bytes_of(opts);
    std::str::from_utf8(&bytes)
        .expect("UTF-8")
        .lines()
        .map(parse)
        .collect()
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// One day with the default faults and the same day without, generated once for all tests
/// (debug builds generate about ten times slower than release ones).
struct Day {
    bytes: Vec<u8>,
    events: Vec<Ev>,
    labels: Vec<FaultLabel>,
    specs: Vec<FaultSpec>,
}

fn day(faults: FaultPlan) -> Day {
    let mut sim = Simulation::new(options(DAY, faults)).expect("valid");
    let mut bytes = Vec::new();
    sim.write_events(&mut bytes).expect("in memory");
    let events = std::str::from_utf8(&bytes)
        .expect("UTF-8")
        .lines()
        .map(parse)
        .collect();
    Day {
        labels: sim.labels(),
        specs: sim.fault_specs().to_vec(),
        bytes,
        events,
    }
}

fn faulted_day() -> &'static Day {
    static DAY_WITH_FAULTS: OnceLock<Day> = OnceLock::new();
    DAY_WITH_FAULTS.get_or_init(|| day(FaultPlan::Default))
}

fn fault_free_day() -> &'static Day {
    static DAY_WITHOUT_FAULTS: OnceLock<Day> = OnceLock::new();
    DAY_WITHOUT_FAULTS.get_or_init(|| day(FaultPlan::None))
}

#[test]
fn same_seed_gives_the_same_bytes_and_another_seed_does_not() {
    let opts = options(6 * HOUR, FaultPlan::Default);
    let a = bytes_of(opts.clone());
    assert!(!a.is_empty());
    assert_eq!(a, bytes_of(opts.clone()));
    let other = bytes_of(SimOptions { seed: 43, ..opts });
    assert_ne!(a, other);
}

/// History, then live events from where it ended (as the quickstart runs them): the
/// second simulation counts its runs from 0 again, and an id it repeated would have a
/// consumer drop that event as a duplicate.
#[test]
fn a_simulation_that_carries_on_from_another_repeats_none_of_its_event_ids() {
    let history = options(6 * HOUR, FaultPlan::Default);
    let live = SimOptions {
        start: history.start + chrono::Duration::hours(6),
        faults: FaultPlan::None,
        ..history.clone()
    };
    let ids = |opts: SimOptions| -> HashSet<String> {
        events_of_json(opts)
            .iter()
            .map(|v| v["event_id"].as_str().expect("an id").to_string())
            .collect()
    };
    let (before, after) = (ids(history), ids(live));
    assert!(!before.is_empty() && !after.is_empty());
    let repeated = before.intersection(&after).count();
    assert_eq!(repeated, 0, "{repeated} of {} ids repeated", after.len());
}

#[test]
fn faults_within_keeps_every_fault_in_the_first_part_of_the_period() {
    for plan in [FaultPlan::Default, FaultPlan::Flow] {
        let opts = SimOptions {
            faults_within: Some(2 * DAY),
            ..options(3 * DAY, plan)
        };
        let within_end = opts.start + chrono::Duration::days(2);
        let labels = Simulation::new(opts).expect("valid options").labels();
        assert!(!labels.is_empty());
        for label in &labels {
            assert!(label.start < within_end, "{label:?}");
        }
    }
}

fn events_of_json(opts: SimOptions) -> Vec<Value> {
    std::str::from_utf8(&bytes_of(opts))
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("valid JSON"))
        .collect()
}

#[test]
fn events_iterator_and_writer_agree() {
    let mut sim = Simulation::new(options(3 * HOUR, FaultPlan::Default)).expect("valid");
    let mut written = Vec::new();
    let n = sim.write_events(&mut written).expect("in memory");
    let mut joined = Vec::new();
    let mut count = 0;
    for json in sim.events() {
        assert!(!json.contains(&b'\n'));
        joined.extend_from_slice(&json);
        joined.push(b'\n');
        count += 1;
    }
    assert_eq!(n, count);
    assert_eq!(written, joined);
}

#[test]
fn every_event_follows_the_contract() {
    let opts = options(DAY, FaultPlan::Default);
    let (start, end) = (ms(opts.start), ms(opts.start) + DAY.as_millis() as i64);
    let bytes = &faulted_day().bytes;
    let mut ids = HashSet::new();
    let mut last_ts = i64::MIN;
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for line in std::str::from_utf8(bytes).expect("UTF-8").lines() {
        let v: Value = serde_json::from_str(line).expect("valid JSON");
        for field in ["pipeline", "stage", "event_id", "correlation_id", "status"] {
            let s = v[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field}: {line}"));
            assert!(!s.is_empty() && s.len() <= 128, "{field}: {line}");
        }
        let ev = parse(line);
        assert!(ev.ts >= start && ev.ts < end, "out of range: {line}");
        assert!(ev.ts >= last_ts, "out of order: {line}");
        last_ts = ev.ts;
        assert!(
            ids.insert(v["event_id"].as_str().map(str::to_string)),
            "{line}"
        );
        assert!(ev.records_out <= ev.records_in, "{line}");
        assert!(ev.duration_ms.is_finite() && ev.duration_ms > 0.0, "{line}");
        assert!(v["bytes"].as_u64().is_some(), "{line}");
        match ev.status.as_str() {
            "success" => assert_eq!(ev.records_out + ev.rejected, ev.records_in, "{line}"),
            "failure" | "retry" => assert_eq!(ev.records_out, 0, "{line}"),
            other => panic!("status {other}"),
        }
        if let Some(q) = v.get("quality") {
            for (_, x) in q.as_object().expect("object") {
                assert!(
                    x.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0),
                    "{line}"
                );
            }
        }
        let attrs = v["attributes"].as_object().expect("attributes");
        assert!(attrs["host"].is_string() && attrs["version"].is_string());
        // Lineage is in the events except for inventory_sync and the sources.
        let upstream = v.get("upstream").and_then(Value::as_array);
        let expect_upstream = ev.pipeline != "inventory_sync"
            && !matches!(
                ev.stage.as_str(),
                "extract" | "ingest" | "cards" | "transfers" | "snapshot"
            );
        assert_eq!(upstream.is_some(), expect_upstream, "{line}");
        *statuses.entry(ev.status).or_default() += 1;
    }
    assert!(ids.len() > 70_000, "{} events", ids.len());
    assert!(statuses["retry"] > 0, "{statuses:?}");
}

#[test]
fn correlation_ids_tie_the_stages_of_a_unit_and_conserve_records() {
    let opts = options(DAY, FaultPlan::None);
    let start = ms(opts.start);
    let info = Simulation::new(opts).expect("valid").stage_info();
    let events = &fault_free_day().events;
    let mut units: HashMap<(String, String), Vec<&Ev>> = HashMap::new();
    for ev in events.iter().filter(|e| e.status == "success") {
        units
            .entry((ev.pipeline.clone(), ev.corr.clone()))
            .or_default()
            .push(ev);
    }
    let mut checked = 0;
    for ((pipeline, corr), evs) in &units {
        assert!(corr.starts_with(&format!("{pipeline}-")), "{corr}");
        // Units cut by the end of the run may miss their last stages.
        if evs.iter().any(|e| e.ts > start + 23 * 3_600_000) {
            continue;
        }
        let stages: Vec<&StageInfo> = info.iter().filter(|s| &s.pipeline == pipeline).collect();
        assert_eq!(evs.len(), stages.len(), "{corr}");
        let by_stage: HashMap<&str, &Ev> = evs.iter().map(|e| (e.stage.as_str(), *e)).collect();
        for s in stages.iter().filter(|s| !s.upstream.is_empty()) {
            let ev = by_stage[s.stage.as_str()];
            let ups: Vec<&Ev> = s.upstream.iter().map(|u| by_stage[u.as_str()]).collect();
            let fed: u64 = ups.iter().map(|u| u.records_out).sum();
            assert_eq!(ev.records_in, fed, "{corr} {}", s.stage);
            assert!(ups.iter().all(|u| u.ts < ev.ts), "{corr} {}", s.stage);
        }
        checked += 1;
    }
    assert!(checked > 15_000, "{checked}");
}

#[test]
fn retries_are_followed_by_a_success_of_the_same_unit() {
    let events = &fault_free_day().events;
    let successes: HashMap<(String, String, String), i64> = events
        .iter()
        .filter(|e| e.status == "success")
        .map(|e| ((e.pipeline.clone(), e.stage.clone(), e.corr.clone()), e.ts))
        .collect();
    let retries: Vec<&Ev> = events.iter().filter(|e| e.status == "retry").collect();
    assert!(!retries.is_empty());
    for r in retries {
        let key = (r.pipeline.clone(), r.stage.clone(), r.corr.clone());
        // A unit retried in the last minutes may finish after the end of the run.
        if r.ts < ms(SimOptions::default().start) + 23 * 3_600_000 {
            assert!(successes.get(&key).is_some_and(|&t| t > r.ts), "{}", r.line);
        }
    }
    assert!(!events.iter().any(|e| e.status == "failure"));
}

#[test]
fn cadences_are_realistic() {
    let events = &fault_free_day().events;
    let stage_ts = |p: &str, s: &str| -> Vec<&Ev> {
        events
            .iter()
            .filter(|e| e.pipeline == p && e.stage == s && e.status == "success")
            .collect()
    };
    // Streaming: a micro-batch every 6–10 s (clickstream) or 9–15 s (payments).
    for (p, s, lo, hi) in [
        ("clickstream", "ingest", 5_500, 10_500),
        ("payments", "publish", 8_500, 15_500),
    ] {
        let evs = stage_ts(p, s);
        for w in evs.windows(2) {
            let gap = w[1].ts - w[0].ts;
            // A retried unit finishes up to a few seconds late.
            assert!(
                (lo - 4_000..=hi + 4_000).contains(&gap),
                "{p}/{s} gap {gap}"
            );
        }
    }
    // Batch: one run per period, the source done within a couple of minutes of the schedule,
    // downstream stages later.
    for (p, period) in [("orders_etl", 3_600_000), ("inventory_sync", 900_000)] {
        let first = stage_ts(
            p,
            if p == "orders_etl" {
                "extract"
            } else {
                "snapshot"
            },
        );
        let last = stage_ts(p, if p == "orders_etl" { "load" } else { "upsert" });
        assert_eq!(first.len() as i64, 86_400_000 / period);
        for (a, b) in first.iter().zip(&last) {
            let into_period = a.ts.rem_euclid(period);
            assert!((5_000..180_000).contains(&into_period), "{}", a.line);
            assert_eq!(a.corr, b.corr);
            assert!(b.ts - a.ts > 10_000 && b.ts - a.ts < 600_000, "{}", b.line);
        }
    }
}

#[test]
fn volume_follows_a_daily_cycle() {
    let events = &fault_free_day().events;
    let mut per_hour = [0u64; 24];
    for e in events
        .iter()
        .filter(|e| e.pipeline == "clickstream" && e.stage == "ingest")
    {
        per_hour[(e.ts.rem_euclid(86_400_000) / 3_600_000) as usize] += e.records_in;
    }
    let (low_hour, low) = per_hour
        .iter()
        .enumerate()
        .min_by_key(|(_, &n)| n)
        .expect("24 hours");
    let high = *per_hour.iter().max().expect("24 hours");
    assert!(
        (2..=6).contains(&low_hour),
        "trough at {low_hour}: {per_hour:?}"
    );
    assert!(high as f64 / *low as f64 > 1.8, "{per_hour:?}");
}

/// Compares a run with the default faults to the same run without, label by label.
#[test]
fn each_fault_changes_its_window_and_its_label_marks_it() {
    let (faulted, baseline) = (&faulted_day().events, &fault_free_day().events);
    let labels = &faulted_day().labels;
    assert_eq!(labels.len(), 7);

    let index = |evs: &[Ev]| -> HashMap<(String, String, String, bool), Ev> {
        evs.iter().map(|e| (e.unit_key(), e.clone())).collect()
    };
    let base_by_unit = index(baseline);
    let fault_by_unit = index(faulted);

    // Stages that no fault touches are byte-identical.
    let touched: HashSet<(String, String)> = labels
        .iter()
        .flat_map(|l| {
            std::iter::once(l.stage.clone())
                .chain(l.affected_downstream.iter().cloned())
                .map(|s| (l.pipeline.clone(), s))
        })
        .collect();
    let untouched = |evs: &[Ev]| -> Vec<String> {
        evs.iter()
            .filter(|e| !touched.contains(&(e.pipeline.clone(), e.stage.clone())))
            .map(|e| e.line.clone())
            .collect()
    };
    assert_eq!(untouched(faulted), untouched(baseline));

    for label in labels {
        let same_stage = |e: &&Ev| e.pipeline == label.pipeline && e.stage == label.stage;
        // A stage can also sit downstream of another fault: look only around this one's window
        // (faults are at least 20 minutes apart).
        let spec = faulted_day()
            .specs
            .iter()
            .find(|f| f.kind == label.kind)
            .expect("one spec per kind");
        let window = ms(spec.start)..ms(spec.start + spec.duration) + 5 * 60_000;
        // Units of the stage whose events differ from the baseline, in time order.
        let mut changed: Vec<(i64, &Ev, Option<&Ev>)> = baseline
            .iter()
            .filter(same_stage)
            .filter(|b| window.contains(&b.ts))
            .filter_map(|b| match fault_by_unit.get(&b.unit_key()) {
                Some(f) if f.line == b.line => None,
                Some(f) => Some((f.ts, b, Some(f))),
                None => Some((b.ts, b, None)),
            })
            .collect();
        changed.sort_by_key(|c| c.0);
        let first = changed.first().expect("the fault changed something");
        assert_eq!(first.0, ms(label.start), "{label:?}");
        let last = changed.last().expect("non-empty").0;
        assert!(last < ms(label.end), "{label:?}");
        // The label's end is the stage's first unchanged event after the fault.
        let next = faulted
            .iter()
            .filter(same_stage)
            .find(|e| e.ts > last)
            .expect("the stage recovers");
        assert_eq!(next.ts, ms(label.end), "{label:?}");
        assert_eq!(
            Some(&next.line),
            base_by_unit.get(&next.unit_key()).map(|b| &b.line)
        );
        check_fault_effect(label, &changed);
    }
}

/// The kind-specific change of every affected event, compared with its fault-free twin.
fn check_fault_effect(label: &FaultLabel, changed: &[(i64, &Ev, Option<&Ev>)]) {
    let pairs: Vec<(&Ev, &Ev)> = changed
        .iter()
        .filter_map(|&(_, b, f)| f.map(|f| (b, f)))
        .collect();
    let ratio = |num: u64, den: u64| num as f64 / den.max(1) as f64;
    match label.kind {
        FaultKind::Silence => assert!(pairs.is_empty() && changed.len() > 100),
        FaultKind::Drop => {
            for (b, f) in &pairs {
                let r = ratio(f.records_in, b.records_in);
                assert!((0.03..0.23).contains(&r), "{r}: {}", f.line);
            }
        }
        FaultKind::Spike => {
            for (b, f) in &pairs {
                let r = ratio(f.records_in, b.records_in);
                assert!((3.8..6.2).contains(&r), "{r}: {}", f.line);
            }
        }
        FaultKind::ErrorBurst => {
            for (_, f) in &pairs {
                let r = ratio(f.errors, f.records_in);
                assert!((0.045..=0.205).contains(&r), "{r}: {}", f.line);
            }
            let failures = pairs.iter().filter(|(_, f)| f.status == "failure").count();
            assert!(failures > 0 && failures < pairs.len() / 2, "{failures}");
        }
        FaultKind::LatencyJump => {
            for (b, f) in &pairs {
                let r = f.duration_ms / b.duration_ms;
                assert!((4.0..8.5).contains(&r), "{r}: {}", f.line);
            }
        }
        FaultKind::QualityDegradation => {
            for (_, f) in &pairs {
                let n = f.null_rate.expect("quality stage");
                assert!((0.1..=0.3).contains(&n), "{}", f.line);
            }
        }
        FaultKind::RecordsLost => {
            for (b, f) in &pairs {
                let r = ratio(f.records_in, b.records_in);
                assert!((0.55..0.9).contains(&r), "{r}: {}", f.line);
                assert!(f.rejected <= b.rejected + 5, "{}", f.line);
            }
        }
        // Not in the default plan; see their own tests below.
        FaultKind::StuckRun => assert!(pairs.is_empty()),
        FaultKind::SlowHop => {
            for (b, f) in &pairs {
                assert!(f.ts > b.ts && f.duration_ms == b.duration_ms, "{}", f.line);
            }
        }
    }
    if !matches!(label.kind, FaultKind::Silence | FaultKind::StuckRun) {
        assert!(!pairs.is_empty());
    }
}

#[test]
fn records_lost_shows_against_the_upstream_of_the_same_correlation_id() {
    let events = &faulted_day().events;
    let label = faulted_day()
        .labels
        .iter()
        .find(|l| l.kind == FaultKind::RecordsLost)
        .expect("default plan has records_lost");
    let info = Simulation::new(options(DAY, FaultPlan::Default))
        .expect("valid")
        .stage_info()
        .into_iter()
        .find(|s| s.pipeline == label.pipeline && s.stage == label.stage)
        .expect("labelled stage exists");
    let out_of: HashMap<(&str, &str), u64> = events
        .iter()
        .filter(|e| e.pipeline == label.pipeline && e.status == "success")
        .map(|e| ((e.stage.as_str(), e.corr.as_str()), e.records_out))
        .collect();
    let mut lossy = 0;
    for e in events
        .iter()
        .filter(|e| e.pipeline == label.pipeline && e.stage == label.stage && e.status == "success")
    {
        let fed: u64 = info
            .upstream
            .iter()
            .map(|u| out_of[&(u.as_str(), e.corr.as_str())])
            .sum();
        let inside = e.ts >= ms(label.start) && e.ts < ms(label.end);
        if inside {
            lossy += 1;
            let share = e.records_in as f64 / fed as f64;
            assert!((0.55..0.9).contains(&share), "{share}");
        } else {
            assert_eq!(e.records_in, fed);
        }
    }
    assert!(lossy >= 1);
}

#[test]
fn the_default_plan_spreads_one_fault_of_each_kind() {
    for (duration, quiet) in [(7 * DAY, DAY), (DAY, 8 * HOUR), (2 * DAY, DAY)] {
        let opts = options(duration, FaultPlan::Default);
        let start = opts.start;
        let sim = Simulation::new(opts).expect("valid");
        let specs = sim.fault_specs();
        let kinds: HashSet<FaultKind> = specs.iter().map(|f| f.kind).collect();
        assert_eq!(kinds.len(), 7);
        let stages: HashSet<(&str, &str)> = specs
            .iter()
            .map(|f| (f.pipeline.as_str(), f.stage.as_str()))
            .collect();
        assert_eq!(stages.len(), 7, "one stage per fault");
        assert!(specs.iter().all(|f| f.pipeline != "orders_etl"));
        for w in specs.windows(2) {
            assert!(w[0].start + w[0].duration < w[1].start, "disjoint in time");
        }
        for f in specs {
            assert!(f.start >= start + quiet, "{f:?}");
            assert!(f.start + f.duration < start + duration, "{f:?}");
            let minutes = f.duration.as_secs() / 60;
            assert!((20..=155).contains(&minutes), "{f:?}");
        }
    }
}

#[test]
fn short_runs_still_get_every_fault() {
    let sim = Simulation::new(options(3 * HOUR, FaultPlan::Default)).expect("valid");
    let kinds: HashSet<FaultKind> = sim.labels().iter().map(|l| l.kind).collect();
    assert_eq!(kinds.len(), 7);
    for f in sim.fault_specs() {
        assert!(f.start >= SimOptions::default().start + HOUR, "{f:?}");
    }
}

#[test]
fn other_pipeline_counts_work() {
    for pipelines in [1, 2, 9] {
        let opts = SimOptions {
            pipelines,
            ..options(6 * HOUR, FaultPlan::Default)
        };
        let mut sim = Simulation::new(opts).expect("valid");
        let names: HashSet<String> = sim.stages().into_iter().map(|(p, _)| p).collect();
        assert_eq!(names.len(), pipelines);
        let n = sim.write_events(std::io::sink()).expect("sink");
        assert!(n > 0);
        let labels = sim.labels();
        assert!(!labels.is_empty(), "{pipelines}: no labels");
        if pipelines >= 2 {
            assert!(labels.iter().all(|l| l.pipeline != "orders_etl"));
        }
    }
    assert!(Simulation::new(SimOptions {
        pipelines: 0,
        ..SimOptions::default()
    })
    .is_err());
}

#[test]
fn explicit_faults_are_validated_and_applied() {
    let start = SimOptions::default().start + chrono::Duration::hours(2);
    let spec = |kind, pipeline: &str, stage: &str| FaultSpec {
        kind,
        pipeline: pipeline.to_string(),
        stage: stage.to_string(),
        start,
        duration: 30 * Duration::from_secs(60),
    };
    let build =
        |specs: Vec<FaultSpec>| Simulation::new(options(6 * HOUR, FaultPlan::Explicit(specs)));
    for bad in [
        spec(FaultKind::Drop, "nope", "extract"),
        spec(FaultKind::Drop, "orders_etl", "nope"),
        spec(FaultKind::QualityDegradation, "orders_etl", "load"),
        spec(FaultKind::RecordsLost, "payments", "cards"),
        spec(FaultKind::StuckRun, "clickstream", "ingest"),
        spec(FaultKind::SlowHop, "inventory_sync", "snapshot"),
    ] {
        assert!(build(vec![bad.clone()]).is_err(), "{bad:?}");
    }
    let overlapping = vec![
        spec(FaultKind::Drop, "clickstream", "ingest"),
        spec(FaultKind::Spike, "clickstream", "ingest"),
    ];
    assert!(build(overlapping).is_err());

    // records_lost on a fan-in stage, and a non-default kind/stage pairing.
    let sim = build(vec![
        spec(FaultKind::RecordsLost, "payments", "normalize"),
        spec(FaultKind::LatencyJump, "clickstream", "parse"),
        spec(FaultKind::Silence, "orders_etl", "transform"),
    ])
    .expect("valid plan");
    let labels = sim.labels();
    assert_eq!(labels.len(), 3);
    for l in &labels {
        assert!(
            l.start >= start && l.start < start + chrono::Duration::minutes(35),
            "{l:?}"
        );
    }
    let silence = &labels[2];
    assert_eq!(silence.affected_downstream, ["load"]);
    // A silenced batch stage starves its downstream: no load event in the window.
    let events = events_of(options(
        6 * HOUR,
        FaultPlan::Explicit(sim.fault_specs().to_vec()),
    ));
    assert!(!events.iter().any(|e| e.pipeline == "orders_etl"
        && e.stage != "extract"
        && e.ts >= ms(silence.start)
        && e.ts < ms(silence.end)));
}

#[test]
fn labels_serialize_to_the_label_line() {
    for label in &faulted_day().labels {
        let v: Value = serde_json::to_value(label).expect("serializable");
        assert_eq!(v["kind"], label.kind.as_str());
        assert_eq!(v["expected_alert"], label.kind.expected_alert());
        let start = v["start"].as_str().expect("string");
        assert_eq!(
            DateTime::parse_from_rfc3339(start).expect("RFC 3339"),
            label.start
        );
        assert!(label.end > label.start);
        assert_eq!(
            label.kind.as_str().parse::<FaultKind>().ok(),
            Some(label.kind)
        );
    }
}

#[test]
fn labels_are_the_same_before_and_after_generating() {
    let mut sim = Simulation::new(options(6 * HOUR, FaultPlan::Default)).expect("valid");
    let before = sim.labels();
    assert_eq!(before.len(), 7);
    assert_eq!(sim.events().count(), sim.events().count());
    assert_eq!(before, sim.labels());
}

#[test]
fn disorder_stays_within_its_bound() {
    let bound = Duration::from_secs(30);
    let ordered = bytes_of(options(6 * HOUR, FaultPlan::Default));
    let shuffled = bytes_of(SimOptions {
        disorder: bound,
        ..options(6 * HOUR, FaultPlan::Default)
    });
    assert_ne!(ordered, shuffled);
    let lines = |b: &[u8]| -> Vec<String> {
        std::str::from_utf8(b)
            .expect("UTF-8")
            .lines()
            .map(str::to_string)
            .collect()
    };
    let (mut a, mut b) = (lines(&ordered), lines(&shuffled));
    let mut newest = 0;
    let mut late = 0;
    for line in &b {
        let ts = parse(line).ts;
        assert!(newest - ts <= bound.as_millis() as i64, "{line}");
        late += usize::from(ts < newest);
        newest = newest.max(ts);
    }
    assert!(late > a.len() / 10, "only {late} late events");
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same events, reordered");
}

#[test]
fn timestamp_forms() {
    let base = options(2 * HOUR, FaultPlan::None);
    let form = |f| {
        bytes_of(SimOptions {
            timestamp_format: f,
            ..base.clone()
        })
    };
    let parse_all = |b: Vec<u8>| -> Vec<Value> {
        std::str::from_utf8(&b)
            .expect("UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    };
    let text = parse_all(form(TimestampFormat::Rfc3339));
    let millis = parse_all(form(TimestampFormat::EpochMs));
    let mixed = parse_all(form(TimestampFormat::Mixed));
    assert!(millis.iter().all(|v| v["timestamp"].is_i64()));
    let strings = mixed.iter().filter(|v| v["timestamp"].is_string()).count();
    assert!(strings > mixed.len() / 3 && strings < mixed.len() * 2 / 3);
    for ((t, m), x) in text.iter().zip(&millis).zip(&mixed) {
        assert_eq!(t["event_id"], x["event_id"]);
        let ts = timestamp_ms(&t["timestamp"]);
        assert_eq!(ts, timestamp_ms(&m["timestamp"]));
        assert_eq!(ts, timestamp_ms(&x["timestamp"]));
    }
}

#[test]
fn correlation_ids_can_be_left_out() {
    let bytes = bytes_of(SimOptions {
        correlation_ids: false,
        ..options(HOUR, FaultPlan::None)
    });
    let text = std::str::from_utf8(&bytes).expect("UTF-8");
    assert!(!text.is_empty() && !text.contains("correlation_id"));
}

#[test]
fn the_command_writes_events_and_labels() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }
    let dir = std::env::temp_dir().join(format!("simulate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (events, labels) = (dir.join("events.jsonl"), dir.join("labels.jsonl"));
    let cli = Cli::try_parse_from([
        "simulate",
        "--duration",
        "6h",
        "--seed",
        "7",
        "--timestamp-format",
        "epoch-ms",
        "--disorder",
        "5s",
        "--output",
        events.to_str().expect("UTF-8 path"),
        "--labels",
        labels.to_str().expect("UTF-8 path"),
    ])
    .expect("valid arguments");
    let opts = cli.args.to_options();
    assert_eq!(opts.duration, 6 * HOUR);
    assert_eq!(opts.disorder, Duration::from_secs(5));
    assert_eq!(opts.timestamp_format, TimestampFormat::EpochMs);
    run(cli.args, &crate::config::Settings::defaults()).expect("runs");
    let written = std::fs::read(&events).expect("events written");
    assert_eq!(written, bytes_of(opts.clone()));
    let label_lines = std::fs::read_to_string(&labels).expect("labels written");
    assert_eq!(label_lines.lines().count(), 7);
    for line in label_lines.lines() {
        let v: Value = serde_json::from_str(line).expect("JSON");
        for field in [
            "kind",
            "pipeline",
            "stage",
            "start",
            "end",
            "expected_alert",
        ] {
            assert!(v[field].is_string(), "{field}: {line}");
        }
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(Cli::try_parse_from(["simulate", "--faults", "sometimes"]).is_err());
}

/// A week of four pipelines has a realistic volume, spread evenly over the days.
/// (How fast it is generated is measured by `cargo bench --bench engine`, not here.)
#[test]
fn a_week_of_four_pipelines_has_a_realistic_volume() {
    let opts = options(7 * DAY, FaultPlan::Default);
    let start = ms(opts.start);
    let mut sim = Simulation::new(opts).expect("valid");
    let mut per_day: BTreeMap<i64, u64> = BTreeMap::new();
    for json in sim.events() {
        // The timestamp is the third field; parsing it fully is not needed to bin it.
        let text = std::str::from_utf8(&json).expect("UTF-8");
        let at = text.find("\"timestamp\":\"").expect("timestamp") + 13;
        let ts = DateTime::parse_from_rfc3339(&text[at..at + 24])
            .expect("RFC 3339")
            .timestamp_millis();
        *per_day.entry((ts - start) / 86_400_000).or_default() += 1;
    }
    let total: u64 = per_day.values().sum();
    println!("events per day: {per_day:?}");
    assert_eq!(per_day.len(), 7);
    assert!((300_000..800_000).contains(&total), "{total}");
    let (least, most) = (
        per_day.values().min().unwrap(),
        per_day.values().max().unwrap(),
    );
    assert!(*most as f64 / *least as f64 <= 1.1, "{per_day:?}");
}

// ---- Data-flow faults (issue #5): the flow plan, stuck runs and slow hand-overs ----

fn flow_day() -> &'static Day {
    static DAY_WITH_FLOW_FAULTS: OnceLock<Day> = OnceLock::new();
    DAY_WITH_FLOW_FAULTS.get_or_init(|| day(FaultPlan::Flow))
}

/// A day with hand-placed data-flow faults on the stages and cadences the flow plan does not pick
/// with four pipelines (compared with [`fault_free_day`]). A whole day, so that the usual
/// hand-over of a batch stage is measured on enough runs.
struct ExplicitFlowRun {
    faulted: Vec<Ev>,
    labels: Vec<FaultLabel>,
    specs: Vec<FaultSpec>,
}

fn explicit_flow_run() -> &'static ExplicitFlowRun {
    static RUN: OnceLock<ExplicitFlowRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let at = |hours: i64| SimOptions::default().start + chrono::Duration::hours(hours);
        let spec = |kind, pipeline: &str, stage: &str, start, minutes: u64| FaultSpec {
            kind,
            pipeline: pipeline.to_string(),
            stage: stage.to_string(),
            start,
            duration: Duration::from_secs(60 * minutes),
        };
        let specs = vec![
            // A minute of micro-batches stuck before their last two stages.
            spec(FaultKind::StuckRun, "clickstream", "sessionize", at(2), 1),
            // Stuck at a fan-in stage: both sources still emit.
            spec(FaultKind::StuckRun, "payments", "normalize", at(3), 1),
            // Four runs every 15 minutes with a slow hand-over, and stages after it.
            spec(FaultKind::SlowHop, "inventory_sync", "diff", at(2), 60),
        ];
        let plan = FaultPlan::Explicit(specs.clone());
        let sim = Simulation::new(options(DAY, plan.clone())).expect("valid plan");
        ExplicitFlowRun {
            faulted: events_of(options(DAY, plan)),
            labels: sim.labels(),
            specs,
        }
    })
}

fn info_of(pipeline: &str) -> Vec<StageInfo> {
    Simulation::new(SimOptions::default())
        .expect("valid")
        .stage_info()
        .into_iter()
        .filter(|s| s.pipeline == pipeline)
        .collect()
}

/// `stage` and every stage fed by it, directly or not.
fn stage_and_descendants(info: &[StageInfo], stage: &str) -> HashSet<String> {
    let mut reached: HashSet<String> = HashSet::from([stage.to_string()]);
    // Stages are listed upstream first, so one pass reaches every descendant.
    for s in info {
        if s.upstream.iter().any(|u| reached.contains(u)) {
            reached.insert(s.stage.clone());
        }
    }
    reached
}

/// The events of one pipeline by correlation id, then stage.
fn runs_of<'a>(
    events: &'a [Ev],
    pipeline: &str,
) -> BTreeMap<&'a str, HashMap<&'a str, Vec<&'a Ev>>> {
    let mut runs: BTreeMap<&str, HashMap<&str, Vec<&Ev>>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.pipeline == pipeline) {
        runs.entry(e.corr.as_str())
            .or_default()
            .entry(e.stage.as_str())
            .or_default()
            .push(e);
    }
    runs
}

/// Checks one `stuck_run` against its events and the fault-free run, returning how many units
/// got stuck: those units have events up to the labelled stage's upstream and none from the stage
/// on, every other unit reaches every stage with the very events of the fault-free run, and the
/// label's start is the first stuck unit's upstream event, its end the stage's next event.
fn check_stuck_run(
    label: &FaultLabel,
    spec: &FaultSpec,
    faulted: &[Ev],
    baseline: &[Ev],
    run_end: i64,
) -> usize {
    assert_eq!(label.kind, FaultKind::StuckRun);
    assert_eq!(label.expected_alert, "stuck_run");
    let info = info_of(&label.pipeline);
    let upstream = &info
        .iter()
        .find(|s| s.stage == label.stage)
        .expect("labelled stage exists")
        .upstream;
    assert!(!upstream.is_empty());
    let stopped = stage_and_descendants(&info, &label.stage);
    let mut downstream: Vec<&String> = label.affected_downstream.iter().collect();
    downstream.push(&label.stage);
    assert_eq!(
        downstream.into_iter().cloned().collect::<HashSet<_>>(),
        stopped
    );

    // When each stuck unit should have reached the stage: its (latest) upstream event.
    let mut stuck: Vec<(i64, &str)> = Vec::new();
    for (corr, stages) in runs_of(faulted, &label.pipeline) {
        let first = stages
            .values()
            .flatten()
            .map(|e| e.ts)
            .min()
            .expect("events");
        // A unit cut by the end of the run may not have reached its last stages.
        if first > run_end - 10 * 60_000 {
            continue;
        }
        let upstream_done = upstream
            .iter()
            .map(|u| {
                let evs = stages.get(u.as_str());
                evs.and_then(|evs| evs.iter().map(|e| e.ts).max())
                    .unwrap_or_else(|| panic!("{corr} has no {u} event: the upstream emits"))
            })
            .max()
            .expect("an upstream");
        if stages.contains_key(label.stage.as_str()) {
            for s in &info {
                assert!(
                    stages.contains_key(s.stage.as_str()),
                    "{corr} missed {}",
                    s.stage
                );
            }
        } else {
            for s in &stopped {
                assert!(!stages.contains_key(s.as_str()), "{corr} reached {s}");
            }
            stuck.push((upstream_done, corr));
        }
    }
    stuck.sort();
    let (first, _) = *stuck.first().expect("a unit got stuck");
    assert_eq!(first, ms(label.start), "{label:?}");
    let window = ms(spec.start)..ms(spec.start + spec.duration);
    for &(reached_upstream, corr) in &stuck {
        // The unit would have started within the window, a hand-over after its upstream ended.
        assert!(reached_upstream < window.end, "{corr}");
        assert!(reached_upstream > window.start - 60_000, "{corr}");
        assert!(reached_upstream < ms(label.end), "{corr}");
    }
    let next = faulted
        .iter()
        .filter(|e| e.pipeline == label.pipeline && e.stage == label.stage)
        .find(|e| e.ts > first)
        .expect("the stage gets units again");
    assert_eq!(next.ts, ms(label.end), "{label:?}");

    // Nothing else changes: the fault-free run less the stuck units' stopped stages.
    let stuck_ids: HashSet<&str> = stuck.iter().map(|&(_, corr)| corr).collect();
    let lines = |evs: &[Ev], drop_stuck: bool| -> Vec<String> {
        evs.iter()
            .filter(|e| e.pipeline == label.pipeline)
            .filter(|e| {
                !(drop_stuck && stuck_ids.contains(e.corr.as_str()) && stopped.contains(&e.stage))
            })
            .map(|e| e.line.clone())
            .collect()
    };
    assert_eq!(lines(faulted, false), lines(baseline, true));
    stuck.len()
}

#[test]
fn a_stuck_batch_run_stops_at_its_stage_for_one_run() {
    let day = flow_day();
    let label = day
        .labels
        .iter()
        .find(|l| l.kind == FaultKind::StuckRun)
        .expect("the flow plan has a stuck run");
    let spec = day
        .specs
        .iter()
        .find(|f| f.kind == label.kind)
        .expect("spec");
    assert!(matches!(
        info_of(&label.pipeline)[0].cadence,
        Cadence::Batch { .. }
    ));
    let run_end = ms(SimOptions::default().start) + DAY.as_millis() as i64;
    let stuck = check_stuck_run(label, spec, &day.events, &fault_free_day().events, run_end);
    assert_eq!(stuck, 1);
}

#[test]
fn stuck_micro_batches_stop_at_their_stage_for_a_minute() {
    let run = explicit_flow_run();
    let run_end = ms(SimOptions::default().start) + DAY.as_millis() as i64;
    let baseline = &fault_free_day().events;
    for label in run.labels.iter().filter(|l| l.kind == FaultKind::StuckRun) {
        let spec = run
            .specs
            .iter()
            .find(|f| f.pipeline == label.pipeline && f.stage == label.stage)
            .expect("spec");
        let stuck = check_stuck_run(label, spec, &run.faulted, baseline, run_end);
        // Micro-batches come every 6–15 s.
        assert!((3..=12).contains(&stuck), "{stuck} stuck on {label:?}");
    }
    let fan_in = run.labels.iter().find(|l| l.stage == "normalize");
    assert_eq!(
        fan_in.map(|l| l.affected_downstream.clone()),
        Some(vec!["score".to_string(), "publish".to_string()])
    );
}

/// Hand-over delay into `stage` per unit, by correlation id: the stage's start (its first event's
/// timestamp less that event's `duration_ms`) less the end of its latest upstream, with the
/// timestamp of the stage's first event for the unit.
fn hand_overs(events: &[Ev], pipeline: &str, stage: &str) -> BTreeMap<String, (i64, f64)> {
    let info = info_of(pipeline);
    let upstream = &info
        .iter()
        .find(|s| s.stage == stage)
        .expect("stage exists")
        .upstream;
    runs_of(events, pipeline)
        .into_iter()
        .filter_map(|(corr, stages)| {
            let first = stages.get(stage)?.iter().min_by_key(|e| e.ts)?;
            let upstream_done = upstream
                .iter()
                .map(|u| stages.get(u.as_str())?.iter().map(|e| e.ts).max())
                .collect::<Option<Vec<i64>>>()?
                .into_iter()
                .max()?;
            let hop = first.ts as f64 - first.duration_ms - upstream_done as f64;
            Some((corr.to_string(), (first.ts, hop)))
        })
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The least factor by which a slowed hand-over exceeds the usual median: far above the usual
/// band (its 1-in-10 000 hand-over is 6.4 times the median on streaming stages, 4.4 on batch
/// ones), and below the 11 typical hand-overs a slow hop adds by a margin that the sampling error
/// of a measured median cannot eat.
const SLOW_HOP_MIN_FACTOR: f64 = 8.0;

/// Checks one `slow_hop` against the fault-free run: inside the label, every hand-over into the
/// stage is at least [`SLOW_HOP_MIN_FACTOR`] times the usual median, and their median 11–16
/// times; outside, hand-overs are exactly the fault-free ones; the stage's `duration_ms` never
/// changes; the stages after it shift later by the added delay. Returns how many units were
/// slowed.
fn check_slow_hop(label: &FaultLabel, faulted: &[Ev], baseline: &[Ev]) -> usize {
    assert_eq!(label.kind, FaultKind::SlowHop);
    assert_eq!(label.expected_alert, "latency");
    let hops = hand_overs(faulted, &label.pipeline, &label.stage);
    let usual = hand_overs(baseline, &label.pipeline, &label.stage);
    let (start, end) = (ms(label.start), ms(label.end));
    let inside = |ts: i64| (start..end).contains(&ts);
    let normal_median = median(
        hops.values()
            .filter(|(ts, _)| !inside(*ts))
            .map(|&(_, hop)| hop)
            .collect(),
    );
    let mut slowed: Vec<(i64, &str, f64)> = Vec::new();
    for (corr, &(ts, hop)) in &hops {
        let (_, usual_hop) = usual[corr];
        if inside(ts) {
            assert!(
                hop >= SLOW_HOP_MIN_FACTOR * normal_median,
                "{corr}: {hop} ms, usually {normal_median}"
            );
            slowed.push((ts, corr, hop - usual_hop));
        } else {
            assert_eq!(hop, usual_hop, "{corr}");
        }
    }
    slowed.sort_by_key(|&(ts, _, _)| ts);
    assert_eq!(slowed.first().map(|s| s.0), Some(start), "{label:?}");
    let inside_median = median(
        hops.values()
            .filter(|(ts, _)| inside(*ts))
            .map(|&(_, hop)| hop)
            .collect(),
    );
    let factor = inside_median / normal_median;
    assert!((11.0..16.0).contains(&factor), "{factor}");

    // Same processing, later: the stage's own figures are the fault-free ones.
    let twins: HashMap<_, &Ev> = baseline.iter().map(|e| (e.unit_key(), e)).collect();
    for e in faulted
        .iter()
        .filter(|e| e.pipeline == label.pipeline && e.stage == label.stage)
    {
        let twin = twins[&e.unit_key()];
        assert_eq!(
            (e.duration_ms, e.records_in, e.records_out),
            (twin.duration_ms, twin.records_in, twin.records_out),
            "{}",
            e.line
        );
    }
    let slowed_ids: HashMap<&str, f64> = slowed.iter().map(|&(_, c, added)| (c, added)).collect();
    for e in faulted
        .iter()
        .filter(|e| e.pipeline == label.pipeline && label.affected_downstream.contains(&e.stage))
    {
        let shift = (e.ts - twins[&e.unit_key()].ts) as f64;
        match slowed_ids.get(e.corr.as_str()) {
            Some(&added) => assert!(shift >= 0.9 * added, "{shift} < {added}: {}", e.line),
            None => assert_eq!(shift, 0.0, "{}", e.line),
        }
    }
    slowed.len()
}

#[test]
fn a_slow_streaming_hop_delays_only_the_hand_over() {
    let day = flow_day();
    let label = day
        .labels
        .iter()
        .find(|l| l.kind == FaultKind::SlowHop)
        .expect("the flow plan has a slow hop");
    assert!(matches!(
        info_of(&label.pipeline)[0].cadence,
        Cadence::Streaming { .. }
    ));
    let slowed = check_slow_hop(label, &day.events, &fault_free_day().events);
    // 20–90 minutes of micro-batches every 6–15 s.
    assert!(slowed > 60, "{slowed}");
}

#[test]
fn a_slow_batch_hop_delays_only_the_hand_over() {
    let run = explicit_flow_run();
    let label = run
        .labels
        .iter()
        .find(|l| l.kind == FaultKind::SlowHop)
        .expect("labelled");
    let slowed = check_slow_hop(label, &run.faulted, &fault_free_day().events);
    // Runs start within seconds of their schedule, so exactly the four of the hour are slowed.
    assert_eq!(slowed, 4);
}

#[test]
fn records_lost_of_the_flow_plan_shows_against_its_upstream() {
    let day = flow_day();
    let label = day
        .labels
        .iter()
        .find(|l| l.kind == FaultKind::RecordsLost)
        .expect("the flow plan loses records");
    let info = info_of(&label.pipeline);
    let upstream = &info
        .iter()
        .find(|s| s.stage == label.stage)
        .expect("stage")
        .upstream;
    let mut lossy = 0;
    for (corr, stages) in runs_of(&day.events, &label.pipeline) {
        let Some(ev) = stages
            .get(label.stage.as_str())
            .and_then(|evs| evs.iter().find(|e| e.status == "success"))
        else {
            continue;
        };
        let fed: u64 = upstream
            .iter()
            .filter_map(|u| stages.get(u.as_str()))
            .flat_map(|evs| evs.iter().filter(|e| e.status == "success"))
            .map(|e| e.records_out)
            .sum();
        if (ms(label.start)..ms(label.end)).contains(&ev.ts) {
            lossy += 1;
            let share = ev.records_in as f64 / fed as f64;
            assert!((0.55..0.9).contains(&share), "{corr}: {share}");
        } else {
            assert_eq!(ev.records_in, fed, "{corr}");
        }
    }
    assert!(lossy > 60, "{lossy}");
}

#[test]
fn the_flow_plan_spreads_one_data_flow_fault_per_pipeline() {
    let flow_kinds = HashSet::from([
        FaultKind::RecordsLost,
        FaultKind::StuckRun,
        FaultKind::SlowHop,
    ]);
    for (duration, quiet) in [
        (7 * DAY, DAY),
        (DAY, 8 * HOUR),
        (2 * DAY, DAY),
        (6 * HOUR, 2 * HOUR),
    ] {
        let opts = options(duration, FaultPlan::Flow);
        let start = opts.start;
        let sim = Simulation::new(opts).expect("valid");
        let info = sim.stage_info();
        let specs = sim.fault_specs();
        assert_eq!(specs.len(), 3, "{duration:?}");
        let kinds: HashSet<FaultKind> = specs.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, flow_kinds);
        let pipelines: HashSet<&str> = specs.iter().map(|f| f.pipeline.as_str()).collect();
        assert_eq!(pipelines.len(), 3, "one pipeline per fault: {specs:?}");
        assert!(!pipelines.contains("orders_etl"));
        for w in specs.windows(2) {
            assert!(w[0].start + w[0].duration < w[1].start, "disjoint in time");
        }
        for f in specs {
            let stage = info
                .iter()
                .find(|s| s.pipeline == f.pipeline && s.stage == f.stage)
                .expect("a real stage");
            assert!(!stage.upstream.is_empty(), "{f:?}");
            assert!(f.start >= start + quiet, "{f:?}");
            assert!(f.start + f.duration < start + duration, "{f:?}");
            let minutes = f.duration.as_secs() / 60;
            match (f.kind, stage.cadence) {
                (FaultKind::StuckRun, Cadence::Batch { period, offset }) => {
                    // Opens at a scheduled run, half a period long: exactly one run.
                    assert_eq!(f.duration, period / 2, "{f:?}");
                    let into_period = ms(f.start).rem_euclid(period.as_millis() as i64);
                    assert_eq!(into_period, offset.as_millis() as i64, "{f:?}");
                }
                (FaultKind::StuckRun, Cadence::Streaming { .. }) => assert_eq!(minutes, 1),
                _ => assert!((20..=155).contains(&minutes), "{f:?}"),
            }
        }
        // Every fault shows in the events, the stuck run included.
        let labels = sim.labels();
        assert_eq!(
            labels.iter().map(|l| l.kind).collect::<HashSet<_>>(),
            flow_kinds,
            "{duration:?}"
        );
    }
}

#[test]
fn the_flow_plan_labels_name_their_alerts() {
    let labels = &flow_day().labels;
    assert_eq!(labels.len(), 3);
    for label in labels {
        let v: Value = serde_json::to_value(label).expect("serializable");
        let expected = match label.kind {
            FaultKind::RecordsLost => "data_loss",
            FaultKind::StuckRun => "stuck_run",
            FaultKind::SlowHop => "latency",
            other => panic!("{other} is not in the flow plan"),
        };
        assert_eq!(v["expected_alert"], expected);
        assert_eq!(
            v["kind"]
                .as_str()
                .map(str::parse::<FaultKind>)
                .and_then(Result::ok),
            Some(label.kind)
        );
        assert!(label.end > label.start && !label.affected_downstream.is_empty());
    }
    assert_eq!(
        "stuck_run".parse::<FaultKind>().ok(),
        Some(FaultKind::StuckRun)
    );
    assert_eq!(
        "slow_hop".parse::<FaultKind>().ok(),
        Some(FaultKind::SlowHop)
    );
}

#[test]
fn the_command_injects_the_flow_plan() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }
    let dir = std::env::temp_dir().join(format!("simulate-flow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (events, labels) = (dir.join("events.jsonl"), dir.join("labels.jsonl"));
    let cli = Cli::try_parse_from([
        "simulate",
        "--duration",
        "6h",
        "--faults",
        "flow",
        "--output",
        events.to_str().expect("UTF-8 path"),
        "--labels",
        labels.to_str().expect("UTF-8 path"),
    ])
    .expect("valid arguments");
    let opts = cli.args.to_options();
    assert_eq!(opts.faults, FaultPlan::Flow);
    run(cli.args, &crate::config::Settings::defaults()).expect("runs");
    assert_eq!(
        std::fs::read(&events).expect("events written"),
        bytes_of(opts)
    );
    let kinds: HashSet<String> = std::fs::read_to_string(&labels)
        .expect("labels written")
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("JSON");
            v["kind"].as_str().expect("kind").to_string()
        })
        .collect();
    let expected = ["records_lost", "stuck_run", "slow_hop"].map(str::to_string);
    assert_eq!(kinds, HashSet::from(expected));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// FNV-1a, 64 bits: a hash that no toolchain or dependency update changes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The default plan's events and labels are pinned: new kinds and plans must leave them as they
/// were. The hashes are those of `pipewatch simulate --duration 1d --labels FILE` (stdout, then
/// FILE) before `stuck_run` and `slow_hop` existed, with the event ids salted by the start
/// since; change them only for a deliberate change of the default output.
#[test]
fn the_default_plan_output_is_unchanged() {
    let day = faulted_day();
    assert_eq!(fnv1a(&day.bytes), 0xccd5_6e3c_f6de_8391);
    let mut label_file = Vec::new();
    for label in &day.labels {
        serde_json::to_writer(&mut label_file, label).expect("serializable");
        label_file.push(b'\n');
    }
    assert_eq!(fnv1a(&label_file), 0xf8ad_b202_2cce_80e7);
}
