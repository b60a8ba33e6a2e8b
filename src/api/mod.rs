//! The HTTP surface beside the pipeline: `/metrics` for Prometheus, `/healthz` and
//! `/readyz` for orchestrators, a JSON API under `/api/v1` for people and tools, and the
//! dashboard (`/`) that reads it.
//!
//! Every handler reads the [`Live`] state; none reaches into an engine, so a slow client
//! or a scrape can never hold up detection. Responses carry `nosniff`, and everything
//! that came from events is JSON-encoded, so a hostile stage name stays text.

pub mod dashboard;
mod flow;
mod health;
mod metrics;
mod silences;
mod stages;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::live::Live;

/// Request bodies (silences) are small; anything larger is refused unread.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The routes, over one shared live state. `closing` turns true when the server shuts
/// down, which ends the live streams.
pub fn router(live: Arc<Live>, closing: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        // The link that alerts carry: the dashboard, with that stage open.
        .route("/stages/{pipeline}/{stage}", get(dashboard::page))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/metrics", get(metrics::scrape))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .route("/api/v1/stages", get(stages::list))
        .route("/api/v1/stages/{pipeline}/{stage}", get(stages::one))
        .route("/api/v1/pipelines", get(stages::pipelines))
        .route("/api/v1/alerts", get(stages::alerts))
        .route("/api/v1/runs/{correlation_id}", get(flow::run))
        .route("/api/v1/pipelines/{pipeline}/graph", get(flow::graph))
        .route("/api/v1/stream", get(stream::changes))
        .route(
            "/api/v1/silences",
            get(silences::list).post(silences::create),
        )
        .route("/api/v1/silences/{id}", delete(silences::remove))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(Extension(stream::Closing(closing)))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(live)
}

/// Binds `listen` now (so a taken port fails at start, not later) and serves until
/// `shutdown` completes.
pub async fn serve(
    listen: &str,
    live: Arc<Live>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on http.listen = {listen}"))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "serving the dashboard, /metrics, /healthz, /readyz and /api/v1");
    let (closing, closed) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = closing.send(true);
    };
    let server = axum::serve(listener, router(live, closed)).with_graceful_shutdown(shutdown);
    let handle = tokio::spawn(async move {
        if let Err(err) = server.await {
            tracing::error!(error = %err, "the HTTP server stopped");
        }
    });
    Ok((local, handle))
}

/// A response rendered as a document may load and run nothing unless it says otherwise
/// (the dashboard page sets its own policy), and no response is sniffed into another type.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    response
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// A JSON response in which `<`, `>` and `&` are written as `\u003c`, `\u003e` and
/// `\u0026` (as Go's encoding/json does): still the same JSON, but a hostile stage name
/// stays inert even if some page pastes the body into HTML. Outside strings JSON never
/// uses these characters, so replacing the bytes is exact.
fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let text = match serde_json::to_string(body) {
        Ok(text) => text,
        Err(err) => {
            tracing::error!(error = %err, "cannot encode a response");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => safe.push_str("\\u003c"),
            '>' => safe.push_str("\\u003e"),
            '&' => safe.push_str("\\u0026"),
            c => safe.push(c),
        }
    }
    (status, [(header::CONTENT_TYPE, "application/json")], safe).into_response()
}

/// `json` with status 200.
fn ok(body: &impl serde::Serialize) -> Response {
    json(StatusCode::OK, body)
}

/// An error as the API reports it: `{"error": "..."}` with a status.
fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json(status, &json!({ "error": message.to_string() }))
}
