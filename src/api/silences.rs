//! Silences over HTTP: list freely; create and delete with the bearer token of
//! `http.api_token`. Without a token configured, writes are off: an API that anyone on
//! the network could use to mute alerts would be worse than none.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::clock::{Clock, SystemClock};
use crate::live::silences::{SilenceError, SilenceRequest};
use crate::live::Live;

use super::error;

/// `GET /api/v1/silences`: the silences in force.
pub async fn list(State(live): State<Arc<Live>>) -> Response {
    let silences = live.silences.list(SystemClock.now_ms());
    super::ok(&serde_json::json!({ "silences": silences }))
}

/// `POST /api/v1/silences` with a JSON [`SilenceRequest`].
pub async fn create(
    State(live): State<Arc<Live>>,
    headers: HeaderMap,
    body: Result<Json<SilenceRequest>, JsonRejection>,
) -> Response {
    if let Some(refusal) = refusal(&live, &headers) {
        return refusal;
    }
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    match live.silences.create(request, SystemClock.now_ms()) {
        Ok(silence) => {
            live.changed();
            tracing::info!(
                id = %silence.id,
                stages = %silence.stages,
                metric = %silence.metric,
                kind = %silence.kind,
                "silence created"
            );
            super::json(StatusCode::CREATED, &silence)
        }
        Err(err @ SilenceError::Invalid(_)) => error(StatusCode::BAD_REQUEST, err),
        Err(err @ SilenceError::TooMany(_)) => error(StatusCode::CONFLICT, err),
    }
}

/// `DELETE /api/v1/silences/{id}`: ends a silence now.
pub async fn remove(
    State(live): State<Arc<Live>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refusal) = refusal(&live, &headers) {
        return refusal;
    }
    if live.silences.delete(&id) {
        live.changed();
        tracing::info!(%id, "silence deleted");
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "no such silence")
    }
}

/// Checks `Authorization: Bearer <token>` against `http.api_token`; the response to
/// send instead when it does not pass.
fn refusal(live: &Live, headers: &HeaderMap) -> Option<Response> {
    if live.api_token.is_empty() {
        return Some(error(
            StatusCode::FORBIDDEN,
            "write endpoints are off: set http.api_token to enable them",
        ));
    }
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(offered.as_bytes(), live.api_token.as_bytes()) {
        None
    } else {
        let mut refusal = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        refusal.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Some(refusal)
    }
}

/// Compares without stopping at the first difference, so response times do not reveal
/// how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abc", b"abcdef"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
