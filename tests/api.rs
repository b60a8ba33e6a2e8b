//! The HTTP surface over a replayed day: health checks, the JSON API, silences and
//! `/metrics`, served on a free loopback port by the same server `pipewatch run` uses.
//!
//! The day holds five stages whose state is known in advance: a healthy one, one whose
//! volume collapses at the end (its name is an HTML injection), one that stops sending
//! (silent), one that only just started (warming up), and one whose name carries quotes,
//! a slash and a CR/LF.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{segment, series, Reply};

use pipewatch::config::Settings;
use pipewatch::live::{Driver, Live};
use pipewatch::replay::{self, ReplayArgs};

const HOSTILE_STAGE: &str = "<img src=x onerror=alert(1)>";
const CRLF_PIPELINE: &str = "quo\"te\r\nX-Injected: 1";
const CRLF_STAGE: &str = "a/b";
const TOKEN: &str = "s3cret-token-0123456789";
/// 2026-11-01T00:00:00Z
const DAY_START_MS: i64 = 1_761_955_200_000;
const MINUTES: i64 = 24 * 60;

struct Stage {
    pipeline: &'static str,
    stage: &'static str,
    /// Minutes of the day in which it sends, and records per event.
    sends: fn(i64) -> Option<u64>,
}

fn day() -> Vec<Stage> {
    vec![
        Stage {
            pipeline: "orders",
            stage: "load",
            sends: |m| Some(1000 + (m % 7) as u64 * 10),
        },
        Stage {
            pipeline: "evil",
            stage: HOSTILE_STAGE,
            sends: |m| {
                Some(if m >= MINUTES - 30 {
                    5
                } else {
                    1000 + (m % 5) as u64 * 10
                })
            },
        },
        Stage {
            pipeline: "quiet",
            stage: "stops",
            sends: |m| (m < MINUTES - 60).then_some(500),
        },
        Stage {
            pipeline: "new",
            stage: "starter",
            sends: |m| (m >= MINUTES - 5).then_some(100),
        },
        Stage {
            pipeline: CRLF_PIPELINE,
            stage: CRLF_STAGE,
            sends: |m| Some(200 + (m % 3) as u64),
        },
    ]
}

/// The day's events in time order, one per stage and minute.
fn write_day(path: &Path) {
    let mut out = String::new();
    for m in 0..MINUTES {
        for s in day() {
            if let Some(records) = (s.sends)(m) {
                let event = serde_json::json!({
                    "pipeline": s.pipeline,
                    "stage": s.stage,
                    "timestamp": DAY_START_MS + m * 60_000 + 1_000,
                    "records_in": records,
                    "records_out": records,
                    "duration_ms": 100.0 + (m % 4) as f64,
                });
                out.push_str(&event.to_string());
                out.push('\n');
            }
        }
    }
    std::fs::write(path, out).expect("events written");
}

/// A replayed day behind a running HTTP server; stops the server on drop.
struct Served {
    address: SocketAddr,
    live: Arc<Live>,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn settings(extra: &[(&str, &str)]) -> Settings {
    let env = [("PIPEWATCH__HTTP__LISTEN", "127.0.0.1:0")]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()));
    Settings::load_with_env(None, env).expect("valid settings")
}

fn serve(settings: Settings, replay_first: bool) -> Served {
    serve_until(settings, replay_first, std::future::pending())
}

fn serve_until(
    settings: Settings,
    replay_first: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Served {
    let dir = tempfile::tempdir().expect("a temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let live = Arc::new(Live::new(&settings, Driver::Replay));
    let (address, _server) = runtime
        .block_on(pipewatch::api::serve(
            &settings.http.listen,
            Arc::clone(&live),
            shutdown,
        ))
        .expect("the server starts");
    let served = Served {
        address,
        live,
        _runtime: runtime,
        _dir: dir,
    };
    if replay_first {
        served.replay(&settings);
    }
    served
}

impl Served {
    fn replay(&self, settings: &Settings) {
        let input = self._dir.path().join("events.ndjson");
        write_day(&input);
        let args = ReplayArgs {
            input,
            output: self._dir.path().join("alerts.ndjson"),
            scores: None,
            dead_letters: None,
            serve: true,
        };
        replay::run(settings, &args, Some(&self.live)).expect("replay runs");
        self.live.set_replay_finished();
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        common::request(self.address, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], "")
    }
}

fn stage_path(pipeline: &str, stage: &str) -> String {
    format!("/api/v1/stages/{}/{}", segment(pipeline), segment(stage))
}

#[test]
fn liveness_always_readiness_once_the_replay_is_done() {
    let settings = settings(&[]);
    let served = serve(settings.clone(), false);
    let alive = served.get("/healthz");
    assert_eq!(alive.status, 200);
    assert_eq!(alive.json()["status"], "alive");

    let before = served.get("/readyz");
    assert_eq!(before.status, 503, "{}", before.body);
    assert_eq!(before.json()["ready"], false);
    assert_eq!(before.json()["reasons"][0], "replay still running");

    served.replay(&settings);
    let after = served.get("/readyz");
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(after.json()["ready"], true);
    assert!(after.head.contains("x-content-type-options: nosniff"));
    assert_eq!(served.get("/nope").status, 404);
}

#[test]
fn the_service_is_ready_only_when_connected_with_partitions() {
    let live = Live::new(&settings(&[]), Driver::Service);
    let report = live.ready();
    assert!(!report.ready);
    assert_eq!(
        report.reasons,
        [
            "not connected to Kafka",
            "no event-topic partitions assigned"
        ]
    );
    live.set_service_state(true, 0, 0);
    assert!(!live.ready().ready);
    live.set_service_state(true, 3, 1);
    let report = live.ready();
    assert!(report.ready);
    assert_eq!(report.reasons, ["1 partitions warming up from history"]);
}

#[test]
fn stages_list_with_health_worst_first_and_filters() {
    let served = serve(settings(&[]), true);
    let list = served.get("/api/v1/stages").json();
    assert_eq!(list["total"], 5);
    let health: Vec<(String, String)> = list["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["health"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("stops", "silent"),
        (HOSTILE_STAGE, "anomalous"),
        ("starter", "warming_up"),
        ("load", "ok"),
        (CRLF_STAGE, "ok"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(s, h)| (s.to_string(), h.to_string()))
        .collect();
    // Equal health sorts by pipeline: "orders" before "quo\"te...".
    assert_eq!(health, expected);

    let latest = &list["stages"][3]["metrics"]["records"];
    assert!(latest["value"].as_f64().unwrap() > 0.0, "{latest}");
    assert!(latest["lower"].as_f64().unwrap() <= latest["upper"].as_f64().unwrap());

    let anomalous = served.get("/api/v1/stages?health=anomalous").json();
    assert_eq!(anomalous["matched"], 1);
    assert_eq!(anomalous["stages"][0]["stage"], HOSTILE_STAGE);
    let found = served.get("/api/v1/stages?q=ORDERS").json();
    assert_eq!(found["matched"], 1);
    assert_eq!(found["stages"][0]["pipeline"], "orders");
    let limited = served.get("/api/v1/stages?limit=2").json();
    assert_eq!(limited["matched"], 5);
    assert_eq!(limited["stages"].as_array().unwrap().len(), 2);
    let bad = served.get("/api/v1/stages?health=sad");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("sad"));
}

#[test]
fn one_stage_with_a_hostile_name_is_json_text() {
    let served = serve(settings(&[]), true);
    let reply = served.get(&stage_path("evil", HOSTILE_STAGE));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.head.contains("content-type: application/json"));
    // The raw body holds no markup at all: < and > are \u003c and \u003e.
    assert!(!reply.body.contains('<') && !reply.body.contains('>'));
    let stage = reply.json();
    assert_eq!(stage["stage"], HOSTILE_STAGE);
    assert_eq!(stage["health"], "anomalous");
    let records = stage["metrics"]["records"].as_array().unwrap();
    assert_eq!(records.len(), 60, "window.buckets of history");
    let last = records.last().unwrap();
    assert_eq!(last["anomalous"], true, "{last}");
    assert!(last["value"].as_f64().unwrap() < last["lower"].as_f64().unwrap());
    let alerts = stage["alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["kind"] == "throughput_drop" && a["status"] == "firing"),
        "{alerts:?}"
    );

    // The link alerts carry is the dashboard page, which opens the stage from its path:
    // the page is static, so no event text reaches the HTML at all.
    let link = alerts[0]["annotations"]["dashboard"].as_str().unwrap();
    let path = &link[link.find("/stages/").unwrap()..];
    let via_link = served.get(path);
    assert_eq!(via_link.status, 200);
    assert!(via_link.head.contains("content-type: text/html"));
    assert!(via_link.body.starts_with("<!doctype html>"));
    for text in ["<img", "onerror", "alert(1)", "evil"] {
        assert!(!via_link.body.contains(text), "{text} in the page");
    }
    assert!(via_link
        .head
        .contains("content-security-policy: default-src 'self'; script-src 'self';"));

    let crlf = served.get(&stage_path(CRLF_PIPELINE, CRLF_STAGE));
    assert_eq!(crlf.status, 200, "{}", crlf.body);
    assert_eq!(crlf.json()["pipeline"], CRLF_PIPELINE);
    assert!(!crlf.head.contains("x-injected"));

    let missing = served.get(&stage_path("evil", "nope"));
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
}

#[test]
fn alerts_active_and_recent() {
    let served = serve(settings(&[]), true);
    let active = served.get("/api/v1/alerts").json();
    let kinds: Vec<(&str, &str)> = active["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["stage"].as_str().unwrap(), a["kind"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("stops", "silence")), "{kinds:?}");
    assert!(
        kinds.contains(&(HOSTILE_STAGE, "throughput_drop")),
        "{kinds:?}"
    );
    assert!(active["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["status"] == "firing"));

    let recent = served.get("/api/v1/alerts?state=recent").json();
    let recent = recent["alerts"].as_array().unwrap();
    assert!(recent.len() >= kinds.len());
    let ends: Vec<&str> = recent
        .iter()
        .map(|a| a["bucket_end"].as_str().unwrap())
        .collect();
    assert!(
        ends.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {ends:?}"
    );
    assert_eq!(served.get("/api/v1/alerts?state=old").status, 400);
}

#[test]
fn silences_need_the_token_and_mute_email_only() {
    let served = serve(settings(&[("PIPEWATCH__HTTP__API_TOKEN", TOKEN)]), true);
    let json = [("Content-Type", "application/json")];
    let body =
        r#"{"stages":"evil/*","duration":"2h","comment":"<b>deploy</b>","created_by":"ops"}"#;

    let anonymous = served.request("POST", "/api/v1/silences", &json, body);
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.head.contains("www-authenticate: bearer"));
    let wrong = served.request(
        "POST",
        "/api/v1/silences",
        &[json[0], ("Authorization", "Bearer s3cret-token-0123456788")],
        body,
    );
    assert_eq!(wrong.status, 401);

    let bearer = format!("Bearer {TOKEN}");
    let auth = [json[0], ("Authorization", bearer.as_str())];
    let created = served.request("POST", "/api/v1/silences", &auth, body);
    assert_eq!(created.status, 201, "{}", created.body);
    let silence = created.json();
    let id = silence["id"].as_str().unwrap().to_string();
    assert_eq!(silence["comment"], "<b>deploy</b>");
    assert!(!created.body.contains('<'));

    let listed = served.get("/api/v1/silences").json();
    assert_eq!(listed["silences"][0]["id"], id.as_str());

    // A firing alert of a silenced stage: annotated, counted, not emailed.
    let stage = served.get(&stage_path("evil", HOSTILE_STAGE)).json();
    let mut alert: pipewatch::alert::Alert = {
        let live_alerts = served.live.alerts.active();
        let a = live_alerts
            .iter()
            .find(|a| a.alert.stage == HOSTILE_STAGE)
            .expect("the drop fires");
        (*a.alert).clone()
    };
    assert_eq!(
        stage["alerts"][0]["fingerprint"],
        alert.fingerprint.as_str()
    );
    let emailed = served.live.record_alert(&mut alert);
    assert!(!emailed);
    assert_eq!(alert.annotations["silenced_by"], id);
    let metrics = served.get("/metrics").body;
    assert!(metrics.contains("pipewatch_notifications_silenced_total 1"));

    for bad in [
        r#"{"stages":"[","duration":"1h"}"#,
        r#"{"stages":"*","duration":"1h","ends_at":"2030-01-01T00:00:00Z"}"#,
        r#"{"stages":"*","ends_at":"2001-01-01T00:00:00Z"}"#,
        r#"{"stages":"*","duration":"1h","extra":true}"#,
        r#"not json"#,
    ] {
        let refused = served.request("POST", "/api/v1/silences", &auth, bad);
        assert!(
            refused.status == 400 || refused.status == 422,
            "{bad}: {} {}",
            refused.status,
            refused.body
        );
    }
    let huge = format!(
        r#"{{"stages":"*","duration":"1h","comment":"{}"}}"#,
        "x".repeat(20_000)
    );
    assert_eq!(
        served
            .request("POST", "/api/v1/silences", &auth, &huge)
            .status,
        413
    );

    let path = format!("/api/v1/silences/{id}");
    assert_eq!(served.request("DELETE", &path, &[], "").status, 401);
    assert_eq!(served.request("DELETE", &path, &auth, "").status, 204);
    assert_eq!(served.request("DELETE", &path, &auth, "").status, 404);
    assert_eq!(
        served.get("/api/v1/silences").json()["silences"],
        serde_json::json!([])
    );
}

#[test]
fn without_a_token_writes_are_off() {
    let served = serve(settings(&[]), false);
    let reply = served.request(
        "POST",
        "/api/v1/silences",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer anything-at-all-here"),
        ],
        r#"{"stages":"*","duration":"1h"}"#,
    );
    assert_eq!(reply.status, 403);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("http.api_token"));
    assert_eq!(served.get("/api/v1/silences").status, 200);
}

#[test]
fn pipelines_overview_counts_stages_by_health_worst_first() {
    let served = serve(settings(&[]), true);
    let overview = served.get("/api/v1/pipelines").json();
    assert_eq!(overview["total"], 5);
    assert_eq!(
        overview["stages"],
        serde_json::json!({"silent": 1, "anomalous": 1, "warming_up": 1, "ok": 2})
    );
    let rows: Vec<(&str, &str, u64)> = overview["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pipeline"].as_str().unwrap(),
                p["health"].as_str().unwrap(),
                p["firing"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("quiet", "silent", 0),
            ("evil", "anomalous", 1),
            ("new", "warming_up", 0),
            ("orders", "ok", 0),
            (CRLF_PIPELINE, "ok", 0),
        ]
    );
    assert_eq!(overview["pipelines"][1]["counts"]["anomalous"], 1);
    let limited = served.get("/api/v1/pipelines?limit=1").json();
    assert_eq!(limited["total"], 5);
    assert_eq!(limited["pipelines"].as_array().unwrap().len(), 1);

    // The stage list's pipeline filter is exact, unlike ?q=.
    let evil = served.get("/api/v1/stages?pipeline=evil").json();
    assert_eq!(evil["matched"], 1);
    assert_eq!(evil["stages"][0]["stage"], HOSTILE_STAGE);
    assert_eq!(
        served.get("/api/v1/stages?pipeline=evi").json()["matched"],
        0
    );
}

#[test]
fn the_dashboard_page_and_its_assets_under_a_strict_policy() {
    let served = serve(settings(&[]), false);
    let page = served.get("/");
    assert_eq!(page.status, 200);
    assert!(page.head.contains("content-type: text/html; charset=utf-8"));
    let policy = page
        .head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .expect("a policy")
        .to_string();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(policy.contains(directive), "{directive} missing: {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    assert!(page.head.contains("x-frame-options: deny"));
    assert!(page.head.contains("x-content-type-options: nosniff"));
    assert!(page.head.contains("referrer-policy: no-referrer"));

    // Every asset the page names is served from the binary; revalidation answers 304.
    let mut assets = 0;
    for piece in page.body.split("\"/assets/").skip(1) {
        let name = &piece[..piece.find('"').unwrap()];
        let asset = served.get(&format!("/assets/{name}"));
        assert_eq!(asset.status, 200, "{name}");
        assert!(!asset.body.is_empty());
        let etag = asset
            .head
            .lines()
            .find_map(|l| l.strip_prefix("etag: "))
            .expect("an etag")
            .to_string();
        let again = served.request(
            "GET",
            &format!("/assets/{name}"),
            &[("If-None-Match", &etag)],
            "",
        );
        assert_eq!(again.status, 304, "{name}");
        assets += 1;
    }
    assert_eq!(assets, 3, "app.js, app.css and icon.svg");
    assert!(served
        .get("/assets/app.js")
        .head
        .contains("content-type: text/javascript"));
    assert_eq!(served.get("/assets/nope.js").status, 404);
    assert_eq!(served.get("/assets/..%2Fmod.rs").status, 404);

    // JSON answers, rendered as a document, could load and run nothing.
    let api = served.get("/api/v1/stages");
    assert!(api
        .head
        .contains("content-security-policy: default-src 'none'; frame-ancestors 'none'"));
}

/// Reads from `stream` until `done` holds for what was read, or panics after 10 s.
fn read_until(stream: &mut std::net::TcpStream, seen: &mut String, done: impl Fn(&str) -> bool) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !done(seen) {
        assert!(
            std::time::Instant::now() < deadline,
            "stream so far: {seen:?}"
        );
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
}

#[test]
fn the_live_stream_announces_changes_and_ends_at_shutdown() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = serve_until(settings(&[]), false, async {
        let _ = stopped.await;
    });
    let mut stream = std::net::TcpStream::connect(served.address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    stream
        .write_all(b"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, |s| {
        s.contains("\n\n") && s.contains("data: ")
    });
    let head = seen.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{seen}");
    let first = served.live.version();
    assert!(
        seen.contains(&format!("data: {{\"version\":{first}}}")),
        "{seen}"
    );
    assert!(seen.contains("retry: 2000"), "{seen}");

    // A change is announced by itself (what changed is fetched through the API).
    served.live.changed();
    let next = format!("data: {{\"version\":{}}}", first + 1);
    read_until(&mut stream, &mut seen, |s| s.contains(&next));

    // Shutting down ends the stream rather than waiting for the client to leave.
    let asked = std::time::Instant::now();
    stop.send(()).unwrap();
    read_until(&mut stream, &mut seen, |_| false);
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(2),
        "the stream ended {:?} after shutdown",
        asked.elapsed()
    );
}

/// promtool, from Debian's prometheus package (installed by .ci/run).
fn promtool_check(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn metrics_pass_promtool_with_per_stage_series() {
    let served = serve(settings(&[]), true);
    let reply = served.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply
        .head
        .contains("content-type: text/plain; version=0.0.4"));
    let text = reply.body;
    promtool_check(&text);

    let applied: u64 = day()
        .iter()
        .map(|s| (0..MINUTES).filter(|&m| (s.sends)(m).is_some()).count() as u64)
        .sum();
    assert!(
        text.contains(&format!(
            "pipewatch_events_total{{outcome=\"applied\"}} {applied}"
        )),
        "{}",
        series(&text, "pipewatch_events_total").join("\n")
    );
    assert_eq!(series(&text, "pipewatch_stage_health").len(), 5);
    assert!(text.contains(
        "pipewatch_stage_health{health=\"anomalous\",pipeline=\"evil\",stage=\"<img src=x onerror=alert(1)>\"} 1"
    ));
    // Quotes and the line feed are escaped; the label cannot end early.
    assert!(text.contains(r#"pipeline="quo\"te"#), "{text}");
    assert!(series(&text, "pipewatch_stage_value")
        .iter()
        .any(|l| l.contains("metric=\"records\"") && l.contains("stage=\"load\"")));
    for gauge in [
        "pipewatch_stage_expected",
        "pipewatch_stage_band_lower",
        "pipewatch_stage_band_upper",
        "pipewatch_stage_score",
    ] {
        assert!(!series(&text, gauge).is_empty(), "{gauge} missing");
    }
    let firing = series(&text, "pipewatch_alert_firing");
    assert!(firing
        .iter()
        .any(|l| l.contains("kind=\"silence\"") && l.contains("stage=\"stops\"")));
    assert!(firing
        .iter()
        .any(|l| l.contains("kind=\"throughput_drop\"") && l.contains("pipeline=\"evil\"")));
    assert!(text.contains("pipewatch_stage_metrics_omitted_stages 0"));
    assert!(text.contains(
        "pipewatch_alerts_total{kind=\"silence\",severity=\"critical\",status=\"firing\"} 1"
    ));
    assert!(text.contains("pipewatch_tracked_stages 5"));
    assert!(text.contains("process_resident_memory_bytes"));
}

#[test]
fn per_stage_series_are_capped_worst_stages_first() {
    let served = serve(
        settings(&[("PIPEWATCH__HTTP__METRICS_MAX_STAGES", "2")]),
        true,
    );
    let text = served.get("/metrics").body;
    promtool_check(&text);
    let health = series(&text, "pipewatch_stage_health");
    assert_eq!(health.len(), 2, "{health:?}");
    assert!(health.iter().any(|l| l.contains("health=\"silent\"")));
    assert!(health.iter().any(|l| l.contains("health=\"anomalous\"")));
    assert!(text.contains("pipewatch_stage_metrics_omitted_stages 3"));
    assert!(series(&text, "pipewatch_stage_value")
        .iter()
        .all(|l| l.contains("pipeline=\"quiet\"") || l.contains("pipeline=\"evil\"")));
}
