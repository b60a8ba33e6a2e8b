//! Scenario: a simulated week of pipelines with one fault of each kind, replayed through
//! the engine with default settings.
//!
//! * every injected fault alerts with the right stage and kind within 2 buckets of its
//!   start (`records_lost` as `data_loss`, from data-flow tracking);
//! * every stage produces at most one unexplained alert per day, where an alert is
//!   explained by a fault on its stage, or upstream of it, during the fault or the half
//!   hour after it.
//!
//! `cargo test --release --test scenario -- --nocapture` prints the figures.

use std::collections::BTreeMap;
use std::time::Duration;

use pipewatch::alert::{Alert, AlertStatus};
use pipewatch::config::Settings;
use pipewatch::engine::{Engine, Outputs, ScoreRows};
use pipewatch::simulate::{FaultLabel, FaultPlan, SimOptions, Simulation};

const DAYS: u64 = 7;
const GRACE_MS: i64 = 30 * 60_000;

struct Replayed {
    alerts: Vec<Alert>,
    labels: Vec<FaultLabel>,
    stages: Vec<(String, String)>,
    bucket_ms: i64,
}

fn replay_week(seed: u64, disorder: Duration) -> Replayed {
    replay(seed, disorder, FaultPlan::Default)
}

fn replay(seed: u64, disorder: Duration, faults: FaultPlan) -> Replayed {
    let settings = Settings::defaults();
    let mut sim = Simulation::new(SimOptions {
        seed,
        duration: Duration::from_secs(DAYS * 86_400),
        faults,
        disorder,
        ..SimOptions::default()
    })
    .expect("valid simulation");
    let mut engine = Engine::new(&settings, ScoreRows::None);
    let mut out = Outputs::default();
    let now = i64::MAX; // replay: no wall clock (see replay.rs)
    let mut alerts = Vec::new();
    for event in sim.events() {
        engine.ingest(&event, now, &mut out);
        alerts.append(&mut out.alerts);
    }
    engine.finish(&mut out);
    alerts.append(&mut out.alerts);
    let stats = engine.stats();
    assert_eq!(stats.invalid_total(), 0);
    assert_eq!(stats.late, 0, "disorder stays within the allowed lateness");
    Replayed {
        alerts,
        labels: sim.labels(),
        stages: sim.stages(),
        bucket_ms: settings.bucket_ms(),
    }
}

fn explained(alert: &Alert, labels: &[FaultLabel], bucket_ms: i64) -> bool {
    labels.iter().any(|l| {
        let on_path = alert.pipeline == l.pipeline
            && (alert.stage == l.stage || l.affected_downstream.contains(&alert.stage));
        let start = l.start.timestamp_millis() - 2 * bucket_ms;
        let end = l.end.timestamp_millis() + GRACE_MS;
        on_path && alert.bucket_start >= start && alert.bucket_start <= end
    })
}

fn check(run: &Replayed) {
    let firing: Vec<&Alert> = run
        .alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Firing)
        .collect();

    println!("fault                      stage                          alert              delay (buckets)");
    let mut missed = Vec::new();
    for label in &run.labels {
        let start = label.start.timestamp_millis();
        let hit = firing
            .iter()
            .filter(|a| {
                a.pipeline == label.pipeline
                    && a.stage == label.stage
                    && a.kind == label.expected_alert
                    && a.bucket_end > start
            })
            .min_by_key(|a| a.bucket_start);
        let delay = hit.map(|a| {
            (a.bucket_start - start.div_euclid(run.bucket_ms) * run.bucket_ms) / run.bucket_ms
        });
        println!(
            "{:<26} {:<30} {:<18} {}",
            label.kind.as_str(),
            format!("{}/{}", label.pipeline, label.stage),
            label.expected_alert,
            delay.map_or("MISSED".to_string(), |d| d.to_string())
        );
        if delay.is_none_or(|d| d > 2) {
            missed.push(format!(
                "{} on {}/{}",
                label.kind.as_str(),
                label.pipeline,
                label.stage
            ));
        }
    }

    let mut unexplained: BTreeMap<String, Vec<&Alert>> = run
        .stages
        .iter()
        .map(|(p, s)| (format!("{p}/{s}"), Vec::new()))
        .collect();
    for a in &firing {
        if !explained(a, &run.labels, run.bucket_ms) {
            unexplained
                .entry(format!("{}/{}", a.pipeline, a.stage))
                .or_default()
                .push(a);
        }
    }
    let total: usize = unexplained.values().map(Vec::len).sum();
    println!(
        "\n{} alerts fired, {} unexplained over {} stage-days ({:.2} per stage-day); worst stages:",
        firing.len(),
        total,
        run.stages.len() as u64 * DAYS,
        total as f64 / (run.stages.len() as u64 * DAYS) as f64
    );
    let mut worst: Vec<(&String, &Vec<&Alert>)> = unexplained.iter().collect();
    worst.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    for (stage, alerts) in worst.iter().take(5) {
        let kinds: Vec<String> = alerts
            .iter()
            .map(|a| format!("{}:{}", a.metric, a.kind))
            .collect();
        println!("  {stage:<30} {:>2}  {}", alerts.len(), kinds.join(" "));
    }
    assert!(
        missed.is_empty(),
        "faults not found within 2 buckets: {missed:?}"
    );
    let over: Vec<String> = unexplained
        .iter()
        .filter(|(_, v)| v.len() as u64 > DAYS)
        .map(|(s, v)| format!("{s}: {}", v.len()))
        .collect();
    assert!(
        over.is_empty(),
        "more than one unexplained alert per stage-day: {over:?}"
    );
}

#[test]
fn a_week_with_every_fault_kind() {
    check(&replay_week(42, Duration::ZERO));
}

#[test]
fn another_seed_delivered_out_of_order() {
    check(&replay_week(7, Duration::from_secs(20)));
}

#[test]
fn a_healthy_week_has_no_lost_stuck_or_failed_runs() {
    let run = replay(42, Duration::from_secs(20), FaultPlan::None);
    let flow: Vec<String> = run
        .alerts
        .iter()
        .filter(|a| ["data_loss", "stuck_run", "failed_run"].contains(&a.kind))
        .map(|a| format!("{} {}/{} {}", a.kind, a.pipeline, a.stage, a.summary))
        .collect();
    println!("{} alerts in a fault-free week", run.alerts.len());
    assert!(flow.is_empty(), "{flow:#?}");
}

#[test]
fn a_week_with_lost_records_a_stuck_run_and_a_slow_hop() {
    check(&replay(42, Duration::ZERO, FaultPlan::Flow));
}
