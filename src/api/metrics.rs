//! `GET /metrics`: the registered metrics, plus the per-stage gauges and the
//! `ALERTS`-style gauge, built from the live state for each scrape.
//!
//! Per-stage series are many (about fifty a stage), so at most `http.metrics_max_stages`
//! stages are exported, the worst health first so that the stages someone is looking at
//! are never the ones left out; the rest are counted in
//! `pipewatch_stage_metrics_omitted_stages`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntGauge, IntGaugeVec, Opts};

use crate::live::stages::Health;
use crate::live::Live;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn scrape(State(live): State<Arc<Live>>) -> Response {
    let families = stage_families(&live);
    (
        [(header::CONTENT_TYPE, TEXT_FORMAT)],
        live.telemetry.encode(families),
    )
        .into_response()
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name")
}

fn stage_families(live: &Live) -> Vec<MetricFamily> {
    let metric_labels = ["pipeline", "stage", "metric"];
    let value = gauge_vec(
        "pipewatch_stage_value",
        "Latest closed bucket's value of each metric of each stage",
        &metric_labels,
    );
    let expected = gauge_vec(
        "pipewatch_stage_expected",
        "Expected value (the lead detector's baseline) for that bucket",
        &metric_labels,
    );
    let lower = gauge_vec(
        "pipewatch_stage_band_lower",
        "Lower edge of the expected band for that bucket",
        &metric_labels,
    );
    let upper = gauge_vec(
        "pipewatch_stage_band_upper",
        "Upper edge of the expected band for that bucket",
        &metric_labels,
    );
    let score = gauge_vec(
        "pipewatch_stage_score",
        "Signed anomaly score (standard deviations from expected) for that bucket",
        &metric_labels,
    );
    let health = IntGaugeVec::new(
        Opts::new(
            "pipewatch_stage_health",
            "1 for each stage's current health (ok, anomalous, silent, warming_up)",
        ),
        &["pipeline", "stage", "health"],
    )
    .expect("a valid metric name");
    let firing = IntGaugeVec::new(
        Opts::new(
            "pipewatch_alert_firing",
            "1 for each alert firing now, as Prometheus' own ALERTS series",
        ),
        &[
            "pipeline",
            "stage",
            "metric",
            "kind",
            "severity",
            "fingerprint",
            "silenced",
        ],
    )
    .expect("a valid metric name");
    let omitted = IntGauge::new(
        "pipewatch_stage_metrics_omitted_stages",
        "Stages left out of the per-stage gauges by http.metrics_max_stages",
    )
    .expect("a valid metric name");

    let mut chosen: Vec<(Health, Arc<str>, Arc<str>)> = Vec::new();
    live.stages.for_each(|(p, s), view| {
        chosen.push((view.health(), p.clone(), s.clone()));
    });
    chosen.sort();
    let cap = live.metrics_max_stages;
    omitted.set(chosen.len().saturating_sub(cap) as i64);
    chosen.truncate(cap);

    for (h, pipeline, stage) in &chosen {
        let Some(view) = live.stages.get(pipeline, stage) else {
            continue; // forgotten since the list was taken
        };
        health
            .with_label_values(&[&**pipeline, &**stage, h.as_str()])
            .set(1);
        for (metric, points) in view.metrics.iter() {
            let Some(p) = points.back() else { continue };
            let labels = [&**pipeline, &**stage, metric];
            if p.value.is_finite() {
                value.with_label_values(&labels).set(p.value);
            }
            let pairs = [
                (&expected, p.expected),
                (&lower, p.lower),
                (&upper, p.upper),
                (&score, p.score),
            ];
            for (gauge, x) in pairs {
                if let Some(x) = x {
                    gauge.with_label_values(&labels).set(f64::from(x));
                }
            }
        }
    }
    let exported: std::collections::HashSet<(&str, &str)> =
        chosen.iter().map(|(_, p, s)| (&**p, &**s)).collect();
    for active in live.alerts.active() {
        let a = &active.alert;
        if !exported.contains(&(a.pipeline.as_str(), a.stage.as_str())) {
            continue;
        }
        let silenced = if a.annotations.contains_key("silenced_by") {
            "true"
        } else {
            "false"
        };
        firing
            .with_label_values(&[
                a.pipeline.as_str(),
                a.stage.as_str(),
                a.metric.as_str(),
                a.kind,
                a.severity,
                a.fingerprint.as_str(),
                silenced,
            ])
            .set(1);
    }

    let mut families = Vec::new();
    for collector in [
        &value as &dyn Collector,
        &expected,
        &lower,
        &upper,
        &score,
        &health,
        &firing,
        &omitted,
    ] {
        families.extend(collector.collect());
    }
    // The text encoder refuses a family without series (a vector nobody set).
    families.retain(|f| !f.get_metric().is_empty());
    families
}
