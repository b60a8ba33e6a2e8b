//! `GET /api/v1/stream`: server-sent events that tell a dashboard when to refetch.
//!
//! Each event carries only the live state's version (`{"version":N}`), sent on connect
//! and whenever it moves, at most twice a second. Browsers then fetch what they show
//! through the ordinary API, filtered and capped, so a thousand stages cost a viewer no
//! more than the rows on its screen, and nothing is pushed per event or per stage. The
//! consumer thread is not involved: the stream polls an atomic counter.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio::sync::watch;

use crate::live::Live;

/// How often a stream looks at the version: the most events per second it sends.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Browsers reconnect after this when the connection drops (EventSource's `retry`).
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// Turns `true` (or closes) when the server shuts down: open streams end then, so a
/// graceful shutdown does not wait for every dashboard tab to go away.
#[derive(Clone)]
pub struct Closing(pub watch::Receiver<bool>);

struct Watch {
    live: Arc<Live>,
    closing: watch::Receiver<bool>,
    sent: Option<u64>,
    tick: tokio::time::Interval,
}

pub async fn changes(
    State(live): State<Arc<Live>>,
    Extension(Closing(closing)): Extension<Closing>,
) -> Response {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Watch {
        live,
        closing,
        sent: None,
        tick,
    };
    let events = futures_util::stream::unfold(start, |mut w| async move {
        loop {
            if *w.closing.borrow() {
                return None;
            }
            let version = w.live.version();
            if w.sent != Some(version) {
                let mut event = Event::default()
                    .event("change")
                    .data(format!("{{\"version\":{version}}}"));
                if w.sent.is_none() {
                    event = event.retry(RECONNECT_AFTER);
                }
                w.sent = Some(version);
                return Some((Ok::<_, Infallible>(event), w));
            }
            tokio::select! {
                _ = w.tick.tick() => {}
                // A change to true, or the sender gone: either way the server is closing.
                _ = w.closing.changed() => return None,
            }
        }
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies such as nginx buffer responses unless told not to, which would hold the
    // events back until the buffer fills.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}
