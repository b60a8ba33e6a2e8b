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
    }
    if label.kind != FaultKind::Silence {
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
