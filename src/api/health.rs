//! Health checks for orchestrators: liveness says the process answers, readiness says
//! it is doing its job (and why not, when it is not).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use crate::live::Live;

pub async fn alive() -> Response {
    super::ok(&json!({ "status": "alive" }))
}

pub async fn ready(State(live): State<Arc<Live>>) -> Response {
    let report = live.ready();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    super::json(status, &report)
}
