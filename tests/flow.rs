//! Data-flow tracking through the engine: runs of a two-stage pipeline `p` (`a` feeds
//! `b`), one a minute, made by hand so each test knows exactly what happened to which run.

use pipewatch::alert::{Alert, AlertStatus};
use pipewatch::config::Settings;
use pipewatch::engine::{Engine, Outputs, ScoreRows, ScoredBucket};
use pipewatch::flow::{FlowTracker, SharedFlow};

/// 2026-11-01T00:00:00Z
const T0: i64 = 1_761_955_200_000;
const MINUTE: i64 = 60_000;

struct Hop {
    /// `a`'s end, from the run's minute start.
    a_end_ms: i64,
    /// `b`'s start after `a`'s end.
    delay_ms: i64,
    a_out: u64,
    b_in: Option<u64>,
    b_status: &'static str,
}

fn normal() -> Hop {
    Hop {
        a_end_ms: 5_000,
        delay_ms: 2_000,
        a_out: 1_000,
        b_in: Some(1_000),
        b_status: "success",
    }
}

struct Pipeline {
    engine: Engine,
    flow: SharedFlow,
    out: Outputs,
    alerts: Vec<Alert>,
    rows: Vec<ScoredBucket>,
}

impl Pipeline {
    fn new(edit: &[(&str, &str)]) -> Pipeline {
        let env = edit.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let settings = Settings::load_with_env(None, env).expect("valid settings");
        let (engine, flow) = engine_and_tracker(&settings, ScoreRows::Lead);
        Pipeline {
            engine,
            flow,
            out: Outputs::default(),
            alerts: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Applies one event, and takes what the data-flow tracker found at once.
    fn send(&mut self, json: String) {
        self.engine.ingest(json.as_bytes(), i64::MAX, &mut self.out);
        self.engine.flush_flow(&mut self.out);
        self.collect();
    }

    fn collect(&mut self) {
        self.alerts.append(&mut self.out.alerts);
        self.rows.append(&mut self.out.scores);
    }

    /// Run number `n` at minute `n`: `a`, then `b` unless it has no `b_in`.
    fn run(&mut self, n: i64, hop: Hop) {
        let start = T0 + n * MINUTE;
        let a_end = start + hop.a_end_ms;
        self.send(format!(
            r#"{{"pipeline":"p","stage":"a","timestamp":{a_end},"correlation_id":"run-{n}","duration_ms":4000,"records_in":{},"records_out":{}}}"#,
            hop.a_out, hop.a_out
        ));
        if let Some(b_in) = hop.b_in {
            let b_end = a_end + hop.delay_ms + 3_000;
            self.send(format!(
                r#"{{"pipeline":"p","stage":"b","timestamp":{b_end},"correlation_id":"run-{n}","duration_ms":3000,"status":"{}","records_in":{b_in},"records_out":{b_in}}}"#,
                hop.b_status
            ));
        }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Alert> {
        self.alerts.iter().filter(|a| a.kind == kind).collect()
    }
}

/// An engine, and the data-flow tracker it reports to, to look into.
fn engine_and_tracker(settings: &Settings, score_rows: ScoreRows) -> (Engine, SharedFlow) {
    let flow = FlowTracker::shared(settings).expect("flow.enabled");
    let budget = pipewatch::engine::StageBudget::new(100);
    let engine = Engine::with_shared(settings, score_rows, budget, Some(flow.clone()));
    (engine, flow)
}

#[test]
fn records_lost_between_two_stages_alert_with_both_stages_and_the_counts() {
    let mut p = Pipeline::new(&[]);
    for n in 0..30 {
        p.run(n, normal());
    }
    assert!(p.of_kind("data_loss").is_empty(), "nothing lost yet");
    p.run(
        30,
        Hop {
            b_in: Some(700),
            ..normal()
        },
    );
    assert!(
        p.of_kind("data_loss").is_empty(),
        "a run is judged once it settles (its end plus the allowed lateness)"
    );
    p.run(31, normal());
    let lost = p.of_kind("data_loss");
    assert_eq!(lost.len(), 1, "{lost:?}");
    let alert = lost[0];
    assert_eq!(alert.status, AlertStatus::Firing);
    assert_eq!((alert.pipeline.as_str(), alert.stage.as_str()), ("p", "b"));
    assert_eq!(alert.labels["upstream_stage"], "a");
    assert_eq!(alert.annotations["records_lost"], "300");
    assert_eq!(alert.annotations["upstream_records_out"], "1000");
    assert_eq!(alert.correlation_ids, ["run-30"]);
    assert!(
        alert.summary.contains("300 lost (30%)"),
        "{}",
        alert.summary
    );
    assert_eq!(alert.severity, "critical");

    for n in 32..35 {
        p.run(n, normal());
    }
    let lost = p.of_kind("data_loss");
    assert_eq!(
        lost.len(),
        2,
        "resolved after alerts.resolve_after clean runs"
    );
    assert_eq!(lost[1].status, AlertStatus::Resolved);
}

#[test]
fn a_loss_within_the_tolerance_is_not_one() {
    let mut p = Pipeline::new(&[("PIPEWATCH__FLOW__LOSS_TOLERANCE", "0.01")]);
    for n in 0..30 {
        p.run(
            n,
            Hop {
                b_in: Some(if n % 2 == 0 { 995 } else { 1_000 }),
                ..normal()
            },
        );
    }
    assert!(p.of_kind("data_loss").is_empty());
}

/// Twenty runs through `a` and `b`, then run 20, which leaves `a` and never reaches `b`.
fn a_run_stopped_halfway() -> Pipeline {
    let mut p = Pipeline::new(&[]);
    for n in 0..20 {
        p.run(n, normal());
    }
    p.run(
        20,
        Hop {
            b_in: None,
            ..normal()
        },
    );
    p
}

#[test]
fn live_a_run_stopped_halfway_is_stuck_as_the_wall_clock_passes_its_deadline() {
    let mut p = a_run_stopped_halfway();
    // Then every stream stops, and only the wall clock moves event time on, as
    // `pipewatch run` does on its ticks when caught up. Run 20's deadline (stuck_min, 2m,
    // after `a` ended) and the allowed lateness (30 s) pass within 3 minutes. The engine's
    // own ticks of the tracker are 15 minutes of event time apart: it must be told the
    // time at every call, or it finds nothing here.
    let stopped = T0 + 20 * MINUTE;
    let mut now = stopped;
    while now < stopped + 4 * MINUTE {
        now += 10_000;
        p.engine.advance_clock(now, &mut p.out);
    }
    // The tracker works on its own thread: give it (a bounded) time to take that in.
    let waited = std::time::Instant::now();
    while p.flow.lock().stats().stuck_runs == 0 && waited.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stuck_runs = p.flow.lock().stats().stuck_runs;
    assert_eq!(stuck_runs, 1, "the tracker was not told the time");
    p.engine.flush_flow(&mut p.out);
    p.collect();
    let stuck = p.of_kind("stuck_run");
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(stuck[0].correlation_ids, ["run-20"]);
}

#[test]
fn a_run_that_stops_halfway_is_stuck_once_its_hop_deadline_passes() {
    let mut p = a_run_stopped_halfway();
    // Later runs move event time on; the deadline is stuck_min (2m) here, the hop's
    // usual 5 s times three being less, and it is judged once the allowed lateness
    // (30 s) has passed too: a report of `b` that ended in time may still arrive.
    p.run(21, normal());
    assert!(p.of_kind("stuck_run").is_empty(), "not yet: 1 minute on");
    p.run(22, normal());
    assert!(
        p.of_kind("stuck_run").is_empty(),
        "not yet: 10 s past the deadline, within the lateness"
    );
    p.run(23, normal());
    let stuck = p.of_kind("stuck_run");
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    let alert = stuck[0];
    assert_eq!(alert.status, AlertStatus::Firing);
    assert_eq!(alert.stage, "b");
    assert_eq!(alert.labels["upstream_stage"], "a");
    assert_eq!(alert.correlation_ids, ["run-20"]);
    assert!(
        alert
            .summary
            .contains("run run-20 of p left a but has not reached b after 2m"),
        "{}",
        alert.summary
    );
    for n in 24..26 {
        p.run(n, normal());
    }
    let stuck = p.of_kind("stuck_run");
    assert_eq!(
        stuck.len(),
        2,
        "resolved after alerts.resolve_after runs in time"
    );
    assert_eq!(stuck[1].status, AlertStatus::Resolved);
    assert!(
        stuck[1].ends_at >= Some(stuck[1].starts_at),
        "{:?}",
        stuck[1]
    );
}

#[test]
fn a_failure_alerts_unless_a_retry_succeeds() {
    let mut p = Pipeline::new(&[]);
    for n in 0..10 {
        p.run(n, normal());
    }
    // Run 10 fails at b, and is retried with success a minute later: no alert.
    p.run(
        10,
        Hop {
            b_status: "failure",
            ..normal()
        },
    );
    p.send(format!(
        r#"{{"pipeline":"p","stage":"b","timestamp":{},"correlation_id":"run-10","duration_ms":3000,"records_in":1000,"records_out":1000}}"#,
        T0 + 11 * MINUTE + 30_000
    ));
    // Run 12 fails at b for good.
    for n in 11..12 {
        p.run(n, normal());
    }
    p.run(
        12,
        Hop {
            b_status: "failure",
            ..normal()
        },
    );
    for n in 13..16 {
        p.run(n, normal());
    }
    let failed = p.of_kind("failed_run");
    assert_eq!(
        failed.len(),
        1,
        "only run 12, once stuck_min passed: {failed:?}"
    );
    assert_eq!(failed[0].status, AlertStatus::Firing);
    assert_eq!(failed[0].correlation_ids, ["run-12"]);
    assert_eq!(failed[0].stage, "b");
    assert!(
        failed[0].summary.contains("failed run run-12"),
        "{}",
        failed[0].summary
    );
}

#[test]
fn a_run_stuck_on_one_branch_and_failed_on_another_alerts_both_in_deadline_order() {
    // `a` feeds `b` and `c`. Run 20 fails at `b` 45 s after `a` ended, with no retry,
    // and never reaches `c`: stuck on a→c two minutes (stuck_min) after `a` ended, and
    // failed at `b` two minutes after its failure, which is later. A run is checked
    // once for the earliest of its deadlines, then again for the next.
    let mut p = Pipeline::new(&[]);
    let send = |p: &mut Pipeline, n: i64, stage: &str, end: i64, status: &str| {
        let upstream = if stage == "a" {
            ""
        } else {
            r#","upstream":["a"]"#
        };
        p.send(format!(
            r#"{{"pipeline":"p","stage":"{stage}","timestamp":{end},"correlation_id":"run-{n}","duration_ms":1000,"status":"{status}","records_in":10,"records_out":10{upstream}}}"#
        ));
    };
    for n in 0..26 {
        let a_end = T0 + n * MINUTE + 5_000;
        send(&mut p, n, "a", a_end, "success");
        if n == 20 {
            send(&mut p, n, "b", a_end + 45_000, "failure");
        } else {
            send(&mut p, n, "b", a_end + 3_000, "success");
            send(&mut p, n, "c", a_end + 3_000, "success");
        }
    }
    let flow: Vec<_> = p
        .alerts
        .iter()
        .filter(|a| a.kind == "stuck_run" || a.kind == "failed_run")
        .collect();
    let seen: Vec<_> = flow.iter().map(|a| (a.kind, &*a.stage, a.status)).collect();
    assert_eq!(
        seen,
        [
            ("stuck_run", "c", AlertStatus::Firing),
            ("failed_run", "b", AlertStatus::Firing),
            // The runs after it, in time and successful, resolve both.
            ("stuck_run", "c", AlertStatus::Resolved),
            ("failed_run", "b", AlertStatus::Resolved),
        ],
        "{flow:?}"
    );
    assert!(flow[..2].iter().all(|a| a.correlation_ids == ["run-20"]));
    assert_eq!(flow[0].labels["upstream_stage"], "a");
}

#[test]
fn a_slower_hop_alerts_as_latency_on_its_delay_metric() {
    let mut p = Pipeline::new(&[]);
    for n in 0..60 {
        p.run(
            n,
            Hop {
                delay_ms: 2_000 + (n % 5) * 200,
                ..normal()
            },
        );
    }
    assert!(p.of_kind("latency").is_empty());
    for n in 60..65 {
        p.run(
            n,
            Hop {
                delay_ms: 40_000,
                ..normal()
            },
        );
    }
    let slow = p.of_kind("latency");
    let hop: Vec<&&Alert> = slow.iter().filter(|a| a.metric == "hop_delay").collect();
    assert!(!hop.is_empty(), "{slow:?}");
    assert_eq!(hop[0].stage, "b");
    assert!(
        hop[0].summary.contains("p/b hand-over delay rose to"),
        "{}",
        hop[0].summary
    );
}

#[test]
fn runs_are_bounded_in_number_and_time() {
    let settings = Settings::load_with_env(
        None,
        [
            ("PIPEWATCH__FLOW__MAX_RUNS", "50"),
            ("PIPEWATCH__FLOW__RUN_TTL", "30m"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let (mut engine, flow) = engine_and_tracker(&settings, ScoreRows::None);
    let mut out = Outputs::default();
    for n in 0..200 {
        let json = format!(
            r#"{{"pipeline":"p","stage":"a","timestamp":{},"correlation_id":"run-{n}"}}"#,
            T0 + n * 1000
        );
        engine.ingest(json.as_bytes(), i64::MAX, &mut out);
    }
    // The engine hands events over to the tracker in batches; at the end at the latest.
    engine.finish(&mut out);
    {
        let tracker = flow.lock();
        assert_eq!(tracker.tracked_runs(), 50);
        assert_eq!(tracker.stats().runs_started, 200);
        assert_eq!(tracker.stats().runs_evicted, 150, "the oldest go first");
        assert!(tracker.traces("run-10").is_empty());
        assert_eq!(tracker.traces("run-199").len(), 1);
    }
    // An hour later, every run has expired.
    let json = format!(
        r#"{{"pipeline":"p","stage":"a","timestamp":{},"correlation_id":"late"}}"#,
        T0 + 3_600_000
    );
    engine.ingest(json.as_bytes(), i64::MAX, &mut out);
    engine.flush_flow(&mut out);
    let tracker = flow.lock();
    assert_eq!(tracker.tracked_runs(), 1, "only the newest");
    let stats = tracker.stats();
    assert!(stats.runs_expired >= 49, "{stats:?}");
    assert_eq!(stats.runs_evicted + stats.runs_expired, 200, "{stats:?}");
}

#[test]
fn declared_upstream_stages_are_the_lineage_from_the_first_run() {
    let settings = Settings::load_with_env(None, std::iter::empty()).unwrap();
    let (mut engine, flow) = engine_and_tracker(&settings, ScoreRows::None);
    let mut out = Outputs::default();
    // `x` and `y` run side by side and both feed `z`, as `z`'s producer says. Learning
    // would need `flow.stuck_training` runs before comparing any records.
    let mut run = |n: i64, z_in: u64| {
        let start = T0 + n * MINUTE;
        for (stage, end, records, upstream) in [
            ("x", start + 5_000, 500, ""),
            ("y", start + 6_000, 500, ""),
            ("z", start + 9_000, z_in, r#","upstream":["x","y"]"#),
        ] {
            let json = format!(
                r#"{{"pipeline":"q","stage":"{stage}","timestamp":{end},"correlation_id":"run-{n}","duration_ms":2000,"records_in":{records},"records_out":{records}{upstream}}}"#
            );
            engine.ingest(json.as_bytes(), i64::MAX, &mut out);
        }
    };
    run(0, 600);
    run(1, 1_000);
    run(2, 1_000);
    // What the tracker found, without waiting for the engine's next tick to pass it on.
    engine.flush_flow(&mut out);
    let lost: Vec<_> = out
        .alerts
        .iter()
        .filter(|a| a.kind == "data_loss")
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].correlation_ids, ["run-0"]);
    assert_eq!(lost[0].stage, "z");
    assert_eq!(lost[0].labels["upstream_stage"], "x, y");
    assert_eq!(lost[0].annotations["upstream_records_out"], "1000");
    assert_eq!(lost[0].annotations["records_lost"], "400");

    let tracker = flow.lock();
    let graph = serde_json::to_value(tracker.graph("q").unwrap()).unwrap();
    let edges: Vec<(&str, &str, &str)> = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap();
            (s("from"), s("to"), s("source"))
        })
        .collect();
    assert_eq!(edges, [("x", "z", "declared"), ("y", "z", "declared")]);
}

#[test]
fn a_declaration_written_otherwise_is_read_again() {
    let settings = Settings::load_with_env(None, std::iter::empty()).unwrap();
    let (mut engine, flow) = engine_and_tracker(&settings, ScoreRows::None);
    let mut out = Outputs::default();
    // The engine passes a declaration on only when its text changes: the same names
    // written otherwise, a new order, or names that share a prefix must all get through.
    for (n, (written, names)) in [
        (r#""a","b""#, ["a", "b"]),
        (r#""a","b""#, ["a", "b"]),
        (r#""a", "b""#, ["a", "b"]),
        (r#""b","a""#, ["b", "a"]),
        (r#""ab","a""#, ["ab", "a"]),
        (r#""a\u0062","a""#, ["ab", "a"]),
        (r#""b","a""#, ["b", "a"]),
    ]
    .into_iter()
    .enumerate()
    {
        let json = format!(
            r#"{{"pipeline":"p","stage":"c","timestamp":{},"correlation_id":"run-{n}","upstream":[{written}]}}"#,
            T0 + n as i64 * 1000
        );
        engine.ingest(json.as_bytes(), i64::MAX, &mut out);
        engine.finish(&mut out);
        let tracker = flow.lock();
        let graph = serde_json::to_value(tracker.graph("p").unwrap()).unwrap();
        let upstream: Vec<&str> = graph["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["to"] == "c")
            .map(|e| e["from"].as_str().unwrap())
            .collect();
        assert_eq!(upstream, names, "{written}");
    }
}

#[test]
fn what_the_tracker_finds_does_not_depend_on_how_often_it_is_told_the_time() {
    use pipewatch::decode::{decode, DecodeLimits};
    use pipewatch::flow::{FlowTracker, Sightings};

    // Runs of `a` → `b`, one a minute. After ten normal ones, `b` fails now and then and
    // is retried 80 s to 160 s later (around the 2 minute deadline), or 9 minutes later
    // (a failed run, but one that reached `b` in time), or never reports, or reports after
    // the deadline: the failed-run and stuck-run lifecycles flap, and what they alert
    // depends on the order they see successes and failures in. Every fifth run's `b` is
    // read before its `a` (within the allowed lateness, as from another partition).
    let mut events = Vec::new();
    for n in 0..120i64 {
        let start = T0 + n * MINUTE;
        let a_end = start + 5_000;
        events.push((a_end, a_end, "a", "success", n));
        let mut b = |end: i64, status| {
            let read = if n % 5 == 0 { a_end - 1 } else { end };
            events.push((read, end, "b", status, n));
        };
        match n {
            0..10 => b(a_end + 5_000, "success"),
            _ if n % 7 == 3 => {
                b(a_end + 5_000, "failure");
                b(a_end + 85_000 + (n % 5) * 20_000, "success");
            }
            _ if n % 17 == 8 => {
                b(a_end + 60_000, "failure");
                b(a_end + 600_000, "success");
            }
            _ if n % 11 == 5 => {}
            _ if n % 13 == 6 => b(a_end + 150_000, "success"),
            _ => b(a_end + 5_000, "success"),
        }
    }
    events.sort_by_key(|&(read, ..)| read);
    let settings = Settings::load_with_env(None, std::iter::empty()).unwrap();
    let limits = DecodeLimits::new(65_536, i64::MAX / 2, 0);

    // Told after every event, or only every `every_ms` of event time; with one source,
    // or with `a` and `b` from two (as two partitions' engines), each told on its own.
    let found = |every_ms: i64, sources: usize| {
        let mut tracker = FlowTracker::new(&settings);
        let ids: Vec<usize> = (0..sources)
            .map(|_| tracker.add_source(ScoreRows::None))
            .collect();
        let keys = ["a", "b"].map(|s| tracker.stage_key("p", s).unwrap());
        let mut sightings: Vec<Sightings> = (0..sources).map(|_| Sightings::default()).collect();
        let mut told_ms = vec![i64::MIN; sources];
        let mut alerts = Vec::new();
        for &(read, end, stage, status, n) in &events {
            let json = format!(
                r#"{{"pipeline":"p","stage":"{stage}","timestamp":{end},"correlation_id":"run-{n}","duration_ms":2000,"status":"{status}","records_in":100,"records_out":100}}"#
            );
            let event = decode(json.as_bytes(), &limits).unwrap();
            let b = usize::from(stage == "b");
            let q = b % sources;
            sightings[q].push(keys[b], &event, false);
            if read >= told_ms[q].saturating_add(every_ms) {
                tracker.observe(ids[q], &mut sightings[q]);
                tracker.advance(ids[q], read, &mut alerts);
                told_ms[q] = read;
            }
        }
        for q in 0..sources {
            tracker.observe(ids[q], &mut sightings[q]);
            tracker.advance(ids[q], T0 + 200 * MINUTE, &mut alerts);
        }
        alerts
            .into_iter()
            .map(|a| (a.kind, a.status, a.correlation_ids, a.starts_at, a.summary))
            .collect::<Vec<_>>()
    };
    let every_event = found(0, 1);
    let kinds = |status: AlertStatus| {
        let mut kinds: Vec<&str> = (every_event.iter())
            .filter(|a| a.1 == status)
            .map(|a| a.0)
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    };
    // The tracker also judges the hand-over delays it measures: the late retries make
    // `b`'s a latency alert, which must not depend on the telling either.
    assert_eq!(
        kinds(AlertStatus::Firing),
        ["failed_run", "latency", "stuck_run"]
    );
    assert_eq!(
        kinds(AlertStatus::Resolved),
        ["failed_run", "latency", "stuck_run"]
    );
    // A run that reached `b` with a failure in time is a failed run, not a stuck one.
    for a in every_event.iter().filter(|a| a.0 == "stuck_run") {
        let n: i64 = a.2[0].trim_start_matches("run-").parse().unwrap();
        assert!(n % 17 != 8 || n % 7 == 3, "{a:?}");
    }
    for (every_ms, sources) in [
        (10_000, 1),
        (60_000, 1),
        (7 * MINUTE, 1),
        (0, 2),
        (60_000, 2),
    ] {
        assert_eq!(
            found(every_ms, sources),
            every_event,
            "told every {every_ms} ms, {sources} source(s)"
        );
    }
}

#[test]
fn visits_beyond_the_settling_bound_are_counted_not_kept() {
    use pipewatch::decode::{decode, DecodeLimits};
    use pipewatch::flow::{FlowTracker, Sightings};

    // Two runs at most, so at most eight visits wait to settle per engine.
    let settings = Settings::load_with_env(
        None,
        [("PIPEWATCH__FLOW__MAX_RUNS".to_string(), "2".to_string())],
    )
    .unwrap();
    let limits = DecodeLimits::new(65_536, i64::MAX / 2, 0);
    let mut tracker = FlowTracker::new(&settings);
    let source = tracker.add_source(ScoreRows::None);
    let key = tracker.stage_key("p", "a").unwrap();
    let mut sightings = Sightings::default();
    for n in 0..20 {
        let json = format!(
            r#"{{"pipeline":"p","stage":"a","timestamp":{},"correlation_id":"run-{n}"}}"#,
            T0 + n
        );
        sightings.push(key, &decode(json.as_bytes(), &limits).unwrap(), false);
    }
    tracker.observe(source, &mut sightings);
    let stats = tracker.stats();
    assert_eq!(stats.visits_dropped, 12, "{stats:?}");
    assert_eq!(stats.runs_evicted, 18, "{stats:?}");
    assert!(sightings.is_empty(), "taken in");
}

#[test]
fn a_partition_read_ahead_of_the_others_loses_no_data_flow_figures() {
    // `a` and `b` come through two partitions, so two engines share the tracker, whose
    // clock is the slower partition's. A backlog is read partition by partition, twenty
    // events at a time with `b`'s first: `b`'s engine closes its buckets twenty minutes
    // of event time before the tracker has settled the runs in them. The hop delays
    // into `b` must still be the ones replay (one engine) measures, and the hop that
    // slows down must alert the same.
    let mut events = Vec::new();
    for n in 0..90i64 {
        let a_end = T0 + n * MINUTE + 5_000;
        let delay = if (70..75).contains(&n) {
            40_000
        } else {
            2_000 + (n % 5) * 200
        };
        let b_end = a_end + delay + 3_000;
        for (stage, end, duration) in [("a", a_end, 4_000), ("b", b_end, 3_000)] {
            let json = format!(
                r#"{{"pipeline":"p","stage":"{stage}","timestamp":{end},"correlation_id":"run-{n}","duration_ms":{duration},"records_in":1000,"records_out":1000}}"#
            );
            events.push((end, stage, json));
        }
    }
    events.sort_by_key(|&(end, ..)| end);
    let settings = Settings::load_with_env(None, std::iter::empty()).unwrap();

    // (bucket start, value) of every `hop_delay` row, and its alerts; with the engines'
    // late figures.
    type Found = (Vec<(i64, f64)>, Vec<(i64, AlertStatus)>, u64);
    let found = |partitions: usize| -> Found {
        let flow = pipewatch::flow::FlowTracker::shared(&settings).expect("flow.enabled");
        let budget = pipewatch::engine::StageBudget::new(100);
        let mut engines: Vec<Engine> = (0..partitions)
            .map(|_| {
                Engine::with_shared(
                    &settings,
                    ScoreRows::Lead,
                    budget.clone(),
                    Some(flow.clone()),
                )
            })
            .collect();
        let mut queues: Vec<Vec<&String>> = vec![Vec::new(); partitions];
        for (_, stage, json) in &events {
            queues[usize::from(*stage == "b") % partitions].push(json);
        }
        let mut out = Outputs::default();
        let (mut rows, mut alerts) = (Vec::new(), Vec::new());
        let mut collect = |out: &mut Outputs| {
            for r in out.scores.drain(..).filter(|r| r.metric == "hop_delay") {
                rows.push((r.bucket_start, r.value.expect("a value")));
            }
            for a in out.alerts.drain(..).filter(|a| a.metric == "hop_delay") {
                alerts.push((a.bucket_start, a.status));
            }
        };
        let mut next = vec![0; partitions];
        while (0..partitions).any(|q| next[q] < queues[q].len()) {
            for q in (0..partitions).rev() {
                let chunk = &queues[q][next[q]..(next[q] + 20).min(queues[q].len())];
                for json in chunk {
                    engines[q].ingest(json.as_bytes(), i64::MAX, &mut out);
                    collect(&mut out);
                }
                next[q] += chunk.len();
            }
        }
        for engine in &mut engines {
            engine.finish(&mut out);
            collect(&mut out);
        }
        let late = flow.lock().stats().figures_late;
        // The runs of the last minutes settle in the slower partition's time, which
        // ends earlier: compared up to there.
        rows.retain(|&(start, _)| start < T0 + 85 * MINUTE);
        (rows, alerts, late)
    };
    let (replay_rows, replay_alerts, replay_late) = found(1);
    assert_eq!(replay_late, 0);
    assert!(replay_rows.len() >= 70, "{replay_rows:?}");
    assert_eq!(
        replay_alerts.first(),
        Some(&(T0 + 70 * MINUTE, AlertStatus::Firing)),
        "{replay_alerts:?}"
    );
    let (rows, alerts, late) = found(2);
    assert_eq!(late, 0, "no figure came after its bucket was judged");
    assert_eq!(rows, replay_rows);
    assert_eq!(alerts, replay_alerts);
}

#[test]
fn figures_of_a_stage_forgotten_as_replay_ends_are_judged_first() {
    // `b` reports last at 94m03s (run 93), `a` goes on to 99m05s. At the end of the
    // input the tracker, told 99m05s, has settled run 93, but the lateness (5 m) keeps
    // bucket 94 open; closing the last buckets then forgets `b` (2 m idle) at 96m. Its
    // figures of bucket 94 must be judged before, not lost.
    let mut p = Pipeline::new(&[
        ("PIPEWATCH__WINDOW__ALLOWED_LATENESS", "5m"),
        ("PIPEWATCH__STAGES__IDLE_TIMEOUT", "2m"),
    ]);
    for n in 0..100 {
        let hop = match n {
            93 => Hop {
                a_end_ms: 58_000,
                ..normal()
            },
            94.. => Hop {
                b_in: None,
                ..normal()
            },
            _ => normal(),
        };
        p.run(n, hop);
    }
    p.engine.finish(&mut p.out);
    p.collect();
    let stats = p.engine.stats();
    assert!(stats.stages_evicted >= 1, "{stats:?}");
    assert_eq!(p.flow.lock().stats().figures_late, 0);
    let bucket_94 = |r: &&ScoredBucket| {
        &*r.stage == "b" && r.metric == "hop_delay" && r.bucket_start == T0 + 94 * MINUTE
    };
    assert!(p.rows.iter().any(|r| bucket_94(&r)), "judged, not lost");
}

#[test]
fn a_replay_gives_the_same_output_in_the_same_order_whatever_the_tracker_threads_pace() {
    use pipewatch::simulate::{FaultPlan, SimOptions, Simulation};
    use std::sync::atomic::{AtomicBool, Ordering};

    // The tracker runs on a thread of its own, at whatever pace the machine gives it: what
    // it finds must still come out at the same places of the output. Each output is
    // listed with its place among all outputs: the alerts, and the rows of the data-flow
    // metrics (the engine's own rows are only counted).
    let settings = Settings::defaults();
    let events: Vec<Vec<u8>> = Simulation::new(SimOptions {
        duration: std::time::Duration::from_secs(86_400),
        pipelines: 4,
        faults: FaultPlan::Flow,
        ..SimOptions::default()
    })
    .expect("valid simulation")
    .events()
    .collect();
    let render = || {
        let mut engine = Engine::new(&settings, ScoreRows::All);
        let mut out = Outputs::default();
        let mut listed = Vec::new();
        let mut place = 0usize;
        let mut list = |out: &mut Outputs| {
            for alert in out.alerts.drain(..) {
                let mut alert = serde_json::to_value(&alert).unwrap();
                alert.as_object_mut().unwrap().remove("alert_id");
                listed.push((place, alert.to_string()));
                place += 1;
            }
            for row in out.scores.drain(..) {
                if ["hop_delay", "e2e_latency"].contains(&&*row.metric) {
                    listed.push((place, serde_json::to_string(&row).unwrap()));
                }
                place += 1;
            }
        };
        for event in &events {
            engine.ingest(event, i64::MAX, &mut out);
            list(&mut out);
        }
        engine.finish(&mut out);
        list(&mut out);
        listed
    };
    let first = render();
    let has = |what: &str| first.iter().any(|(_, line)| line.contains(what));
    assert!(has("\"data_loss\"") && has("\"stuck_run\"") && has("hop_delay"));
    // Once as it comes, once with the other core kept busy, so the tracker falls behind.
    let busy = AtomicBool::new(true);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while busy.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let second = render();
        busy.store(false, Ordering::Relaxed);
        assert!(
            second == first,
            "the output changed with the tracker's pace"
        );
    });
    assert!(
        render() == first,
        "the output changed with the tracker's pace"
    );
}

#[test]
fn a_revoked_partitions_stages_are_no_longer_judged_here() {
    // `a` and `b` come through two partitions. After thirty runs `b`'s partition is
    // revoked (its engine goes): its new owner judges `b` from then on. Runs that go on
    // to reach `b` there must not look stuck here, nor any other finding about `b`, alert
    // or score row, come from this instance.
    let settings = Settings::load_with_env(None, std::iter::empty()).unwrap();
    let flow = FlowTracker::shared(&settings).expect("flow.enabled");
    let budget = pipewatch::engine::StageBudget::new(100);
    let engine = || {
        Engine::with_shared(
            &settings,
            ScoreRows::Lead,
            budget.clone(),
            Some(flow.clone()),
        )
    };
    let (mut a, mut b) = (engine(), engine());
    let mut out = Outputs::default();
    // (what, stage) of every alert kind and score row that came out.
    let found = |out: &mut Outputs| -> Vec<(String, String)> {
        let alerts = out.alerts.drain(..).map(|a| (a.kind.to_string(), a.stage));
        let rows = (out.scores.drain(..)).map(|r| (r.metric.to_string(), r.stage.to_string()));
        alerts.chain(rows).collect()
    };
    let send = |engine: &mut Engine, stage: &str, end: i64, n: i64, out: &mut Outputs| {
        let json = format!(
            r#"{{"pipeline":"p","stage":"{stage}","timestamp":{end},"correlation_id":"run-{n}","duration_ms":3000,"records_in":1000,"records_out":1000}}"#
        );
        engine.ingest(json.as_bytes(), i64::MAX, out);
        engine.flush_flow(out);
    };
    let mut before = Vec::new();
    for n in 0..30 {
        let a_end = T0 + n * MINUTE + 5_000;
        send(&mut a, "a", a_end, n, &mut out);
        send(&mut b, "b", a_end + 5_000, n, &mut out);
        before.extend(found(&mut out));
    }
    assert!(
        before
            .iter()
            .any(|(what, stage)| what == "hop_delay" && stage == "b"),
        "b is judged while its partition is here"
    );
    drop(b);
    let mut after = Vec::new();
    for n in 30..60 {
        send(&mut a, "a", T0 + n * MINUTE + 5_000, n, &mut out);
        after.extend(found(&mut out));
    }
    a.finish(&mut out);
    after.extend(found(&mut out));
    let about_b: Vec<_> = after.iter().filter(|(_, stage)| stage == "b").collect();
    assert!(about_b.is_empty(), "{about_b:?}");
    assert!(
        after.iter().any(|(_, stage)| stage == "a"),
        "a is still judged"
    );
}

#[test]
fn the_time_an_engine_waits_for_the_trackers_thread_is_counted() {
    // `pipewatch_flow_wait_seconds_total` tells an operator that following runs is what
    // holds the consume loop back. Here the tracker's thread is held up for 300 ms (its
    // state locked, as a long batch would): the engine's flush waits for it, and the
    // wait is counted.
    let settings = Settings::load_with_env(None, std::iter::empty()).unwrap();
    let (mut engine, flow) = engine_and_tracker(&settings, ScoreRows::Lead);
    let mut out = Outputs::default();
    let json = format!(
        r#"{{"pipeline":"p","stage":"a","timestamp":{T0},"correlation_id":"run-1","records_in":10,"records_out":10}}"#
    );
    engine.ingest(json.as_bytes(), i64::MAX, &mut out);
    assert_eq!(flow.waited(), std::time::Duration::ZERO, "no wait yet");
    let (locked, holding) = std::sync::mpsc::channel();
    let holder = std::thread::spawn({
        let flow = flow.clone();
        move || {
            let _state = flow.lock();
            locked.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    });
    holding.recv().unwrap();
    engine.flush_flow(&mut out);
    holder.join().unwrap();
    let waited = flow.waited();
    assert!(
        waited >= std::time::Duration::from_millis(150),
        "the flush waited for the tracker while it was held up: {waited:?} counted"
    );
}
