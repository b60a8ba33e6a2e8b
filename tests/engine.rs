//! Engine behaviour through its public API: windows, lateness, silence, limits, lifecycle.

use pipewatch::alert::{Alert, AlertStatus};
use pipewatch::clock::{Clock, ManualClock};
use pipewatch::config::Settings;
use pipewatch::engine::{Engine, Outcome, Outputs, ScoreRows, ScoredBucket};

const T0: i64 = 1_793_491_200_000; // 2026-11-01T00:00:00Z
const MIN: i64 = 60_000;
const NOW: i64 = T0 + 400 * 86_400_000; // a wall clock well after the data

fn event(stage: &str, ts: i64, records: u64) -> String {
    format!(
        r#"{{"pipeline":"p","stage":"{stage}","timestamp":{ts},"records_in":{records},"records_out":{records},"errors":0,"duration_ms":100}}"#
    )
}

struct Run {
    engine: Engine,
    out: Outputs,
    alerts: Vec<Alert>,
    scores: Vec<ScoredBucket>,
}

impl Run {
    fn new(settings: &Settings) -> Run {
        Run::with_rows(settings, ScoreRows::All)
    }

    fn with_rows(settings: &Settings, rows: ScoreRows) -> Run {
        Run {
            engine: Engine::new(settings, rows),
            out: Outputs::default(),
            alerts: Vec::new(),
            scores: Vec::new(),
        }
    }

    fn feed(&mut self, json: &str) -> Outcome {
        let outcome = self.engine.ingest(json.as_bytes(), NOW, &mut self.out);
        self.collect();
        outcome
    }

    fn collect(&mut self) {
        self.alerts.append(&mut self.out.alerts);
        self.scores.append(&mut self.out.scores);
    }

    fn finish(&mut self) {
        self.engine.finish(&mut self.out);
        self.collect();
    }

    fn value(&self, stage: &str, metric: &str, bucket_start: i64) -> Option<f64> {
        let rows: Vec<&ScoredBucket> = self
            .scores
            .iter()
            .filter(|s| *s.stage == *stage && s.metric == metric && s.bucket_start == bucket_start)
            .collect();
        rows.first().and_then(|s| s.value)
    }
}

/// A stage sending `records` every 10 s from `from` (inclusive) to `to` (exclusive).
fn steady(run: &mut Run, stage: &str, from: i64, to: i64, records: impl Fn(i64) -> u64) {
    let mut ts = from;
    while ts < to {
        assert_eq!(run.feed(&event(stage, ts, records(ts))), Outcome::Applied);
        ts += 10_000;
    }
}

#[test]
fn out_of_order_events_land_in_their_bucket_and_late_ones_are_dropped() {
    let settings = Settings::defaults(); // 1m buckets, 30s lateness
    let mut run = Run::new(&settings);
    run.feed(&event("s", T0 + 50_000, 1));
    run.feed(&event("s", T0 + 65_000, 2)); // bucket 1
    run.feed(&event("s", T0 + 40_000, 4)); // out of order, still bucket 0
    run.feed(&event("s", T0 + 60_000, 8)); // exactly on the boundary: bucket 1
    run.feed(&event("s", T0 + 89_999, 16)); // watermark 89.999 s: bucket 0 still open
    assert_eq!(run.feed(&event("s", T0 + 59_999, 32)), Outcome::Applied);
    run.feed(&event("s", T0 + 90_000, 64)); // watermark passes 60 s + 30 s: bucket 0 closes
    assert_eq!(run.feed(&event("s", T0 + 59_000, 128)), Outcome::Late);
    assert_eq!(run.engine.stats().late, 1);
    // another stage moves time past bucket 1; the input's last bucket is partial and
    // finish() leaves it unscored
    run.feed(&event("other", T0 + 2 * MIN + 30_000, 1));
    run.finish();
    assert_eq!(run.value("other", "records", T0 + 2 * MIN), None);
    assert_eq!(run.value("s", "records", T0), Some(1.0 + 4.0 + 32.0));
    assert_eq!(
        run.value("s", "records", T0 + MIN),
        Some(2.0 + 8.0 + 16.0 + 64.0)
    );
    assert_eq!(run.value("s", "events", T0 + MIN), Some(4.0));
    // each bucket is scored exactly once per metric and detector
    let mut keys: Vec<(i64, &str, &str)> = run
        .scores
        .iter()
        .map(|s| (s.bucket_start, &*s.metric, s.detector))
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n);
}

#[test]
fn the_live_view_gets_the_lead_rows_of_what_a_scores_file_gets() {
    let settings = Settings::defaults();
    let feed = |rows| {
        let mut run = Run::with_rows(&settings, rows);
        steady(&mut run, "s", T0, T0 + 240 * MIN, |ts| {
            if (T0 + 120 * MIN..T0 + 150 * MIN).contains(&ts) {
                10
            } else {
                1000 + (ts / 10_000 % 7) as u64 * 10
            }
        });
        run.finish();
        run
    };
    let (all, lead, none) = (
        feed(ScoreRows::All),
        feed(ScoreRows::Lead),
        feed(ScoreRows::None),
    );
    let json = |rows: &[&ScoredBucket]| serde_json::to_string(rows).unwrap();
    let all_lead: Vec<&ScoredBucket> = all.scores.iter().filter(|r| r.lead).collect();
    assert!(
        all_lead.len() < all.scores.len(),
        "two detectors, one leads"
    );
    assert!(all_lead.iter().any(|r| r.anomalous), "the drop is in them");
    assert_eq!(
        json(&lead.scores.iter().collect::<Vec<_>>()),
        json(&all_lead)
    );
    assert!(none.scores.is_empty());
    assert_eq!(
        none.alerts.len(),
        all.alerts.len(),
        "alerts whatever is scored"
    );
    assert!(!all.alerts.is_empty());
}

#[test]
fn a_sustained_drop_fires_once_stays_firing_and_resolves_after_recovery() {
    let settings = Settings::defaults();
    let mut run = Run::new(&settings);
    let outage = (T0 + 120 * MIN, T0 + 180 * MIN);
    steady(&mut run, "s", T0, T0 + 240 * MIN, |ts| {
        if ts >= outage.0 && ts < outage.1 {
            10
        } else {
            1000 + (ts / 10_000 % 7) as u64 * 10
        }
    });
    run.finish();
    let drops: Vec<&Alert> = run
        .alerts
        .iter()
        .filter(|a| a.kind == "throughput_drop" && a.metric == "records")
        .collect();
    let statuses: Vec<AlertStatus> = drops.iter().map(|a| a.status).collect();
    // one firing; the outage (60 min) is shorter than repeat_interval (1 h), so no
    // repeat; the baseline did not learn the outage, so it stays firing until recovery
    assert_eq!(
        statuses,
        vec![AlertStatus::Firing, AlertStatus::Resolved],
        "{drops:#?}"
    );
    assert_eq!(drops[0].bucket_start, outage.0);
    assert_eq!(drops[0].severity, "critical");
    assert!(drops[0].value < drops[0].lower);
    assert_eq!(drops[1].ends_at, Some(outage.1));
    assert_eq!(drops[0].fingerprint, drops[1].fingerprint);
    assert!(run.alerts.iter().all(|a| a.stage == "s"));
}

#[test]
fn silence_is_found_from_the_other_streams_in_replay() {
    let settings = Settings::defaults();
    let mut run = Run::new(&settings);
    let stop = T0 + 60 * MIN;
    let mut ts = T0;
    while ts < T0 + 120 * MIN {
        run.feed(&event("busy", ts, 100));
        if ts < stop {
            run.feed(&event("quiet", ts + 3_000, 100));
        }
        ts += 10_000;
    }
    run.finish();
    let silence: Vec<&Alert> = run.alerts.iter().filter(|a| a.kind == "silence").collect();
    assert_eq!(silence.len(), 1, "{silence:#?}");
    assert_eq!(silence[0].stage, "quiet");
    assert_eq!(silence[0].status, AlertStatus::Firing);
    // last event at stop − 7 s; 2-minute floor → silent in the bucket [stop+1m, stop+2m)
    assert!(
        silence[0].bucket_start <= stop + 2 * MIN,
        "{}",
        silence[0].bucket_start
    );
    assert!(
        silence[0].summary.contains("has sent nothing"),
        "{}",
        silence[0].summary
    );
    assert!(
        !run.alerts.iter().any(|a| a.stage == "busy"),
        "{:#?}",
        run.alerts
    );
}

#[test]
fn silence_is_found_from_the_wall_clock_in_live_mode() {
    let settings = Settings::defaults();
    let mut run = Run::new(&settings);
    let clock = ManualClock::new(T0);
    while clock.now_ms() < T0 + 60 * MIN {
        run.feed(&event("only", clock.now_ms(), 100));
        clock.advance(10_000);
    }
    assert!(run.alerts.is_empty());
    // every stream stops; the consumer is idle and the clock moves on
    for _ in 0..10 {
        clock.advance(MIN);
        run.engine.advance_clock(clock.now_ms(), &mut run.out);
        run.collect();
    }
    let silence: Vec<&Alert> = run.alerts.iter().filter(|a| a.kind == "silence").collect();
    assert_eq!(silence.len(), 1, "{:#?}", run.alerts);
    assert_eq!(silence[0].stage, "only");
    // and it resolves when the stage is back
    while clock.now_ms() < T0 + 80 * MIN {
        run.feed(&event("only", clock.now_ms(), 100));
        clock.advance(10_000);
    }
    let statuses: Vec<AlertStatus> = run
        .alerts
        .iter()
        .filter(|a| a.kind == "silence")
        .map(|a| a.status)
        .collect();
    assert_eq!(statuses, vec![AlertStatus::Firing, AlertStatus::Resolved]);
}

#[test]
fn the_number_of_stages_is_bounded_and_idle_ones_are_forgotten() {
    let mut settings = Settings::defaults();
    settings.stages.max_tracked = 2;
    settings.stages.idle_timeout = std::time::Duration::from_secs(600);
    let mut run = Run::new(&settings);
    assert_eq!(run.feed(&event("a", T0, 1)), Outcome::Applied);
    assert_eq!(run.feed(&event("b", T0, 1)), Outcome::Applied);
    assert_eq!(run.feed(&event("c", T0, 1)), Outcome::StageLimit);
    assert_eq!(run.engine.stats().stage_limit, 1);
    // "a" keeps sending; "b" goes idle for longer than 10 minutes and is forgotten
    steady(&mut run, "a", T0 + 10_000, T0 + 20 * MIN, |_| 1);
    assert_eq!(run.engine.tracked_stages(), 1);
    assert_eq!(run.engine.stats().stages_evicted, 1);
    assert_eq!(run.feed(&event("c", T0 + 20 * MIN, 1)), Outcome::Applied);
}

#[test]
fn a_flood_of_stage_names_costs_bounded_memory() {
    let mut settings = Settings::defaults();
    settings.stages.max_tracked = 1_000;
    let mut run = Run::new(&settings);
    for i in 0..20_000 {
        run.feed(&event(&format!("flood-{i}"), T0 + i, 1));
    }
    assert_eq!(run.engine.tracked_stages(), 1_000);
    assert_eq!(run.engine.stats().stage_limit, 19_000);
}

#[test]
fn duplicate_deliveries_are_counted_once() {
    let settings = Settings::defaults();
    let mut run = Run::new(&settings);
    let e = r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"event_id":"e-1","records_out":5}"#;
    assert_eq!(run.feed(e), Outcome::Applied);
    assert_eq!(run.feed(e), Outcome::Duplicate);
    run.feed(&event("other", T0 + 2 * MIN, 1)); // closes bucket 0
    run.finish();
    assert_eq!(run.value("s", "records", T0), Some(5.0));
}

/// The same delivery is the same stage and the same id whichever decoder reads it: the
/// fast path, the serde path for an escape (into a copy of the text), or the serde path
/// after the fast path has read the identity and hinted the duplicate filter with it (a
/// field only the serde path reads comes after).
#[test]
fn duplicates_are_found_whichever_decoder_reads_them() {
    let settings = Settings::defaults();
    let mut run = Run::new(&settings);
    let plain = r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"event_id":"e-1","records_out":5}"#;
    let escaped_id = r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"event_id":"e\u002d1","records_out":5}"#;
    let escaped_stage = r#"{"pipeline":"p","stage":"\u0073","timestamp":1793491200000,"event_id":"e-1","records_out":5}"#;
    let nested_after = r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"event_id":"e-1","records_out":5,"extra":{"a":[1,{"b":2}]}}"#;
    assert_eq!(run.feed(plain), Outcome::Applied);
    for again in [escaped_id, escaped_stage, nested_after] {
        assert_eq!(run.feed(again), Outcome::Duplicate, "{again}");
    }
    let fresh = r#"{"pipeline":"p","stage":"\u0073","timestamp":1793491200000,"event_id":"e-2","records_out":7,"extra":{}}"#;
    assert_eq!(run.feed(fresh), Outcome::Applied);
    assert_eq!(run.engine.tracked_stages(), 1);
    run.feed(&event("other", T0 + 2 * MIN, 1)); // closes bucket 0
    run.finish();
    assert_eq!(run.value("s", "records", T0), Some(12.0));
}

#[test]
fn invalid_messages_are_counted_by_reason_and_never_applied() {
    let settings = Settings::defaults();
    let mut run = Run::new(&settings);
    for bad in [
        "{",
        "[]",
        r#"{"pipeline":"p","stage":"s","timestamp":1793491200000,"records_in":-1}"#,
    ] {
        assert!(matches!(run.feed(bad), Outcome::Invalid(_)));
    }
    let stats = run.engine.stats();
    assert_eq!(stats.invalid_total(), 3);
    assert_eq!(stats.applied, 0);
    assert_eq!(run.engine.tracked_stages(), 0);
}

#[test]
fn a_jump_far_ahead_in_event_time_does_not_stall() {
    let settings = Settings::defaults();
    let mut run = Run::new(&settings);
    steady(&mut run, "s", T0, T0 + 30 * MIN, |_| 100);
    // a year of empty buckets would be half a million closes per stage
    let far = NOW - 86_400_000;
    let closed_before = run.engine.stats().buckets_closed;
    run.feed(&event("s", far, 100));
    let stats = run.engine.stats();
    assert!(stats.buckets_skipped > 500_000, "{stats:?}");
    // the buckets holding data and the last window.buckets (60) empty ones, no more
    assert!(stats.buckets_closed - closed_before <= 62, "{stats:?}");
}

#[test]
fn the_same_input_gives_the_same_output() {
    let settings = Settings::defaults();
    let render = || {
        let mut run = Run::new(&settings);
        steady(&mut run, "x", T0, T0 + 180 * MIN, |ts| {
            if (T0 + 90 * MIN..T0 + 100 * MIN).contains(&ts) {
                5000
            } else {
                1000
            }
        });
        run.finish();
        let alerts: Vec<serde_json::Value> = run
            .alerts
            .iter()
            .map(|a| {
                let mut v = serde_json::to_value(a).unwrap();
                v.as_object_mut().unwrap().remove("alert_id");
                v
            })
            .collect();
        let scores: Vec<String> = run
            .scores
            .iter()
            .map(|s| serde_json::to_string(s).unwrap())
            .collect();
        (alerts, scores)
    };
    let (a1, s1) = render();
    let (a2, s2) = render();
    assert!(!a1.is_empty());
    assert_eq!(a1, a2);
    assert_eq!(s1, s2);
}

#[test]
fn overrides_change_what_alerts_for_the_stages_they_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw.toml");
    std::fs::write(
        &path,
        r#"
[[overrides]]
stages = "p/muted"
metrics = "records"
enabled = false

[[overrides]]
stages = "p/strict"
metrics = "records"
min_relative_fall = 0.05
"#,
    )
    .unwrap();
    let settings = Settings::load_with_env(Some(&path), std::iter::empty()).unwrap();
    let mut run = Run::new(&settings);
    // the same 30% drop for half an hour on three stages, sending side by side
    let mut ts = T0;
    while ts < T0 + 180 * MIN {
        let records = if (T0 + 120 * MIN..T0 + 150 * MIN).contains(&ts) {
            700
        } else {
            1000
        };
        for stage in ["muted", "strict", "plain"] {
            assert_eq!(run.feed(&event(stage, ts, records)), Outcome::Applied);
        }
        ts += 10_000;
    }
    run.finish();
    let dropped = |stage: &str| {
        run.alerts
            .iter()
            .any(|a| a.stage == stage && a.metric == "records" && a.kind == "throughput_drop")
    };
    assert!(!dropped("muted"), "disabled for this stage");
    assert!(dropped("strict"), "a 5% fall floor lets a 30% drop through");
    assert!(!dropped("plain"), "the default 50% floor does not");
}

fn quality_event(stage: &str, ts: i64, completeness: f64) -> String {
    format!(
        r#"{{"pipeline":"p","stage":"{stage}","timestamp":{ts},"quality":{{"completeness":{completeness}}}}}"#
    )
}

#[test]
fn one_extreme_value_does_not_blind_a_metric() {
    let settings = Settings::defaults();
    let mut run = Run::new(&settings);
    let spike_at = T0 + 60 * MIN;
    let jump_from = T0 + 120 * MIN;
    let mut ts = T0;
    while ts < T0 + 130 * MIN {
        let c = if (spike_at..spike_at + 10_000).contains(&ts) {
            1e14 // in range for the decoder, absurd for the metric
        } else if ts >= jump_from {
            5.0
        } else {
            0.9 + (ts / 10_000 % 3) as f64 * 0.01
        };
        assert_eq!(run.feed(&quality_event("s", ts, c)), Outcome::Applied);
        ts += 10_000;
    }
    run.finish();
    let quality: Vec<&Alert> = run.alerts.iter().filter(|a| a.kind == "quality").collect();
    assert!(
        quality.iter().any(|a| a.bucket_start == spike_at),
        "{quality:#?}"
    );
    assert!(
        quality
            .iter()
            .any(|a| a.bucket_start == jump_from && a.status == AlertStatus::Firing),
        "the jump an hour later is still seen: {quality:#?}"
    );
    let all_finite = run.scores.iter().all(|s| {
        [s.value, s.expected, s.lower, s.upper, s.score]
            .iter()
            .all(|x| x.is_none_or(f64::is_finite))
    });
    assert!(all_finite);
}

#[test]
fn the_partial_bucket_an_input_ends_in_is_not_scored() {
    let settings = Settings::defaults();
    let mut run = Run::new(&settings);
    // a healthy stage whose input stops 10 s into a bucket
    steady(&mut run, "s", T0, T0 + 120 * MIN + 10_000, |_| 1000);
    run.finish();
    assert!(run.alerts.is_empty(), "{:#?}", run.alerts);
    assert_eq!(run.value("s", "records", T0 + 119 * MIN), Some(6000.0));
    assert_eq!(run.value("s", "records", T0 + 120 * MIN), None);
}

#[test]
fn forced_resolutions_say_why_and_relearning_keeps_its_scores() {
    let mut settings = Settings::defaults();
    settings.detection.relearn_after = 10;
    settings.stages.idle_timeout = std::time::Duration::from_secs(3600);
    let mut run = Run::new(&settings);
    // "s" doubles for good; "gone" stops sending while a drop alert fires on it
    let mut ts = T0;
    while ts < T0 + 200 * MIN {
        let doubled = ts >= T0 + 60 * MIN;
        run.feed(&event("s", ts, if doubled { 2000 } else { 1000 }));
        if ts < T0 + 60 * MIN {
            run.feed(&event(
                "gone",
                ts + 1,
                if ts >= T0 + 55 * MIN { 10 } else { 1000 },
            ));
        }
        ts += 10_000;
    }
    run.finish();
    let relearnt: Vec<&Alert> = run
        .alerts
        .iter()
        .filter(|a| a.stage == "s" && a.status == AlertStatus::Resolved && a.detector == "none")
        .collect();
    assert!(!relearnt.is_empty(), "{:#?}", run.alerts);
    assert!(
        relearnt[0].summary.contains("relearn_after"),
        "{}",
        relearnt[0].summary
    );
    // every closed bucket of "s" has its score lines, the relearning one included
    let buckets = |detector: &str| {
        run.scores
            .iter()
            .filter(|r| &*r.stage == "s" && r.metric == "records" && r.detector == detector)
            .count()
    };
    assert_eq!(buckets("ewma"), 199);
    assert_eq!(buckets("zscore"), 199);
    let evicted: Vec<&Alert> = run
        .alerts
        .iter()
        .filter(|a| a.stage == "gone" && a.status == AlertStatus::Resolved)
        .collect();
    assert!(!evicted.is_empty(), "{:#?}", run.alerts);
    // its drop alerts were relearnt first (relearn_after = 10); the silence alert was
    // still firing when the stage was forgotten
    let silence = evicted
        .iter()
        .find(|a| a.kind == "silence")
        .expect("silence resolved");
    assert!(
        silence.summary.contains("no longer tracked"),
        "{}",
        silence.summary
    );
    assert!(!evicted
        .iter()
        .any(|a| a.summary.contains("sending events again")));
}
