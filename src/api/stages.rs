//! Stages and alerts, read-only: `/api/v1/stages`, `/api/v1/stages/{pipeline}/{stage}`,
//! `/api/v1/pipelines`, `/api/v1/alerts`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::live::stages::{Health, MetricPoints, Point, StageView};
use crate::live::Live;
use crate::time::serialize_ms;

use super::error;

/// Most stages one list response carries.
const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Only stages in this health.
    health: Option<String>,
    /// Only stages whose "pipeline/stage" contains this text (case-insensitive).
    q: Option<String>,
    /// Only the stages of this pipeline (exact name).
    pipeline: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    1_000
}

#[derive(Serialize)]
struct StageSummary<'a> {
    pipeline: &'a str,
    stage: &'a str,
    health: Health,
    /// Alerts of the stage firing now (silence excepted).
    firing: u32,
    #[serde(serialize_with = "serialize_ms")]
    last_bucket_end: i64,
    /// Each metric's latest scored bucket.
    metrics: BTreeMap<&'a str, Point>,
}

impl<'a> StageSummary<'a> {
    fn of(pipeline: &'a str, stage: &'a str, view: &'a StageView) -> StageSummary<'a> {
        StageSummary {
            pipeline,
            stage,
            health: view.health(),
            firing: view.firing,
            last_bucket_end: view.last_bucket_end,
            metrics: view
                .metrics
                .iter()
                .filter_map(|(name, points)| Some((name, *points.back()?)))
                .collect(),
        }
    }
}

/// `GET /api/v1/stages[?health=anomalous][&q=orders][&pipeline=billing][&limit=100]`:
/// every stage this instance judges, worst health first, then by name.
pub async fn list(State(live): State<Arc<Live>>, Query(query): Query<ListQuery>) -> Response {
    let health = match query.health.as_deref().map(|h| (h, Health::parse(h))) {
        Some((h, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("health {h:?} is not one of ok, anomalous, silent, warming_up"),
            )
        }
        Some((_, wanted)) => wanted,
        None => None,
    };
    let needle = query.q.as_deref().map(str::to_lowercase);
    let limit = query.limit.min(MAX_LIMIT);
    // Only keys while scanning: the page of stages asked for is serialized afterwards, so
    // a dashboard showing 200 of 10,000 stages costs 200 summaries, not 10,000.
    let mut rows: Vec<(Health, Arc<str>, Arc<str>)> = Vec::new();
    let mut total = 0usize;
    live.stages.for_each(|(pipeline, stage), view| {
        total += 1;
        let h = view.health();
        if health.is_some_and(|wanted| wanted != h) {
            return;
        }
        if query.pipeline.as_deref().is_some_and(|p| p != &**pipeline) {
            return;
        }
        if let Some(needle) = &needle {
            if !format!("{pipeline}/{stage}")
                .to_lowercase()
                .contains(needle)
            {
                return;
            }
        }
        rows.push((h, pipeline.clone(), stage.clone()));
    });
    rows.sort();
    let matched = rows.len();
    let stages: Vec<serde_json::Value> = rows
        .iter()
        .take(limit)
        .filter_map(|(_, pipeline, stage)| {
            // None: the stage left the board since the scan (revoked, forgotten).
            live.stages.read(pipeline, stage, |view| {
                serde_json::to_value(StageSummary::of(pipeline, stage, view))
                    .expect("a stage summary serializes")
            })
        })
        .collect();
    super::ok(&serde_json::json!({
        "total": total,
        "matched": matched,
        "stages": stages,
    }))
}

/// A pipeline's stages counted by health.
#[derive(Serialize, Default)]
struct HealthCounts {
    silent: u32,
    anomalous: u32,
    warming_up: u32,
    ok: u32,
}

impl HealthCounts {
    fn add(&mut self, health: Health) {
        match health {
            Health::Silent => self.silent += 1,
            Health::Anomalous => self.anomalous += 1,
            Health::WarmingUp => self.warming_up += 1,
            Health::Ok => self.ok += 1,
        }
    }

    /// The worst health counted (`Ok` when none).
    fn worst(&self) -> Health {
        if self.silent > 0 {
            Health::Silent
        } else if self.anomalous > 0 {
            Health::Anomalous
        } else if self.warming_up > 0 {
            Health::WarmingUp
        } else {
            Health::Ok
        }
    }
}

#[derive(Serialize)]
struct PipelineSummary {
    pipeline: String,
    stages: u32,
    /// The worst health of its stages.
    health: Health,
    counts: HealthCounts,
    /// Alerts of its stages firing now (silence excepted, as for a stage).
    firing: u32,
}

#[derive(Debug, Deserialize)]
pub struct PipelinesQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

/// `GET /api/v1/pipelines[?limit=N]`: each pipeline with its stages counted by health,
/// worst first, and the counts over all stages. A few bytes a pipeline: the overview a
/// dashboard can fetch on every update, however many stages there are.
pub async fn pipelines(
    State(live): State<Arc<Live>>,
    Query(query): Query<PipelinesQuery>,
) -> Response {
    let mut all = HealthCounts::default();
    let mut by_pipeline: BTreeMap<String, PipelineSummary> = BTreeMap::new();
    live.stages.for_each(|(pipeline, _), view| {
        let health = view.health();
        all.add(health);
        // Look up by &str first: most calls find their pipeline, and need no String.
        let summary = match by_pipeline.get_mut(&**pipeline) {
            Some(summary) => summary,
            None => by_pipeline
                .entry(pipeline.to_string())
                .or_insert_with(|| PipelineSummary {
                    pipeline: pipeline.to_string(),
                    stages: 0,
                    health: Health::Ok,
                    counts: HealthCounts::default(),
                    firing: 0,
                }),
        };
        summary.stages += 1;
        summary.counts.add(health);
        summary.firing += view.firing;
    });
    let mut rows: Vec<PipelineSummary> = by_pipeline
        .into_values()
        .map(|mut p| {
            p.health = p.counts.worst();
            p
        })
        .collect();
    // Worst first; among equals, the one with more stages in that state.
    rows.sort_by(|a, b| {
        let bad = |p: &PipelineSummary| p.counts.silent + p.counts.anomalous;
        (a.health, std::cmp::Reverse(bad(a)), &a.pipeline).cmp(&(
            b.health,
            std::cmp::Reverse(bad(b)),
            &b.pipeline,
        ))
    });
    let total = rows.len();
    rows.truncate(query.limit.min(MAX_LIMIT));
    super::ok(&serde_json::json!({
        "total": total,
        "stages": all,
        "pipelines": rows,
    }))
}

#[derive(Serialize)]
struct StageDetail<'a> {
    pipeline: &'a str,
    stage: &'a str,
    health: Health,
    firing: u32,
    #[serde(serialize_with = "serialize_ms")]
    last_bucket_end: i64,
    /// Each metric's recent scored buckets, oldest first, with the lead detector's band.
    metrics: &'a MetricPoints,
    /// The stage's alerts firing now.
    alerts: Vec<Arc<Alert>>,
}

/// `GET /api/v1/stages/{pipeline}/{stage}`: one stage's recent buckets and alerts.
pub async fn one(
    State(live): State<Arc<Live>>,
    Path((pipeline, stage)): Path<(String, String)>,
) -> Response {
    let Some(view) = live.stages.get(&pipeline, &stage) else {
        return error(
            StatusCode::NOT_FOUND,
            "no such stage on this instance (unknown, forgotten, or judged by another \
             instance of the consumer group)",
        );
    };
    let alerts = live
        .alerts
        .active()
        .into_iter()
        .filter(|a| a.alert.pipeline == pipeline && a.alert.stage == stage)
        .map(|a| a.alert)
        .collect();
    super::ok(&StageDetail {
        pipeline: &pipeline,
        stage: &stage,
        health: view.health(),
        firing: view.firing,
        last_bucket_end: view.last_bucket_end,
        metrics: &view.metrics,
        alerts,
    })
}

#[derive(Debug, Deserialize)]
pub struct AlertQuery {
    /// `active` (default): firing now; `recent`: the latest notifications.
    state: Option<String>,
}

/// `GET /api/v1/alerts[?state=active|recent]`.
pub async fn alerts(State(live): State<Arc<Live>>, Query(query): Query<AlertQuery>) -> Response {
    let alerts: Vec<Arc<Alert>> = match query.state.as_deref().unwrap_or("active") {
        "active" => live.alerts.active().into_iter().map(|a| a.alert).collect(),
        "recent" => live.alerts.recent(),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("state {other:?} is not one of active, recent"),
            )
        }
    };
    super::ok(&serde_json::json!({ "alerts": alerts }))
}
