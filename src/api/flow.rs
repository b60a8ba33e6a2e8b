//! Data-flow tracking over HTTP, read-only: a run as a trace, a pipeline's lineage.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::live::Live;

use super::error;

fn off() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "data-flow tracking is off (flow.enabled = false)",
    )
}

/// `GET /api/v1/runs/{correlation_id}`: the run of every pipeline that used this
/// correlation id, each with its stages in order, their records and the hop delays.
pub async fn run(State(live): State<Arc<Live>>, Path(correlation_id): Path<String>) -> Response {
    let Some(flow) = &live.flow else {
        return off();
    };
    let tracker = flow.lock();
    let runs = tracker.traces(&correlation_id);
    if runs.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "no run with this correlation id on this instance (unknown, or forgotten after \
             flow.run_ttl or flow.max_runs)",
        );
    }
    super::ok(&serde_json::json!({
        "correlation_id": correlation_id,
        "runs": runs,
    }))
}

/// `GET /api/v1/pipelines/{pipeline}/graph`: stages and the edges between them, declared
/// or learned, with each hop's usual delay.
pub async fn graph(State(live): State<Arc<Live>>, Path(pipeline): Path<String>) -> Response {
    let Some(flow) = &live.flow else {
        return off();
    };
    let tracker = flow.lock();
    match tracker.graph(&pipeline) {
        Some(graph) => super::ok(&graph),
        None => error(
            StatusCode::NOT_FOUND,
            "no pipeline of this name has sent events with correlation ids here",
        ),
    }
}
