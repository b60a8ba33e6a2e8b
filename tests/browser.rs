//! The dashboard in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver (Debian's `chromium` and `chromium-driver`), looking at a running
//! `pipewatch replay --serve` that reads simulated events from its standard input.
//!
//! The input is two simulated days with one fault of each kind, split where the injected
//! drop on one stage starts. Phase 1 (everything before the drop) goes in first, with two
//! additions: a stage named `<img src=x onerror=alert(1)>` whose volume collapses (so it
//! fires an alert whose summary carries the name), and 1,000 small stages that appear in
//! the last minutes (so the page has to cope with a thousand rows). The page is loaded, the
//! stage is `ok`; then phase 2 (the drop) is written and, without a reload, the stage turns
//! `anomalous`; its charts show the band and the anomalous buckets, and a screenshot is
//! saved to `target/browser/dashboard.png` (CI prints the path).
//!
//! A second test draws a run's trace from a `data_loss` alert (see
//! [`a_data_loss_alert_opens_its_run_as_a_timeline`]).

mod common;

use common::{pipewatch, segment};

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::webdriver::Browser;

const HOSTILE_STAGE: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_PIPELINE: &str = "evil";
/// 20 pipelines of 50 stages: the thousand-stage page.
const BULK_PIPELINES: usize = 20;
const BULK_STAGES: usize = 50;
const MINUTE_MS: i64 = 60_000;
/// How long after the drop starts phase 2 runs: the drop alerts within two buckets.
const PHASE_2_MS: i64 = 20 * MINUTE_MS;
/// Longest wait for the page to show a change (the stream checks twice a second).
const PAGE_UPDATE: Duration = Duration::from_secs(30);

/// Where CI picks up artifacts: `target/` (beside the binary under test).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_pipewatch"))
        .parent()
        .and_then(Path::parent)
        .expect("the binary sits in target/<profile>/")
        .to_path_buf()
}

/// The stage the injected drop hits, and when.
struct Fault {
    pipeline: String,
    stage: String,
    start_ms: i64,
}

struct Input {
    phase1: String,
    phase2: String,
    fault: Fault,
    /// The newest event time of phase 1.
    phase1_end_ms: i64,
    stages: usize,
}

/// The `timestamp` of a simulated event written with `--timestamp-format epoch-ms`.
fn timestamp(line: &str) -> i64 {
    let at = line.find("\"timestamp\":").expect("a timestamp") + "\"timestamp\":".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("an epoch-ms timestamp")
}

fn event(pipeline: &str, stage: &str, at_ms: i64, records: u64) -> String {
    json!({
        "pipeline": pipeline,
        "stage": stage,
        "timestamp": at_ms,
        "records_in": records,
        "records_out": records,
        "duration_ms": 100.0,
    })
    .to_string()
}

fn build_input(dir: &Path) -> Input {
    let sim = common::simulate(dir, &["--duration", "2d", "--timestamp-format", "epoch-ms"]);
    let drop = sim.fault("drop");
    let fault = Fault {
        pipeline: drop["pipeline"].as_str().unwrap().to_string(),
        stage: drop["stage"].as_str().unwrap().to_string(),
        start_ms: ms(&drop["start"]),
    };
    let simulated = std::fs::read_to_string(&sim.events).expect("events");
    let first_ms = timestamp(simulated.lines().next().expect("events"));

    // The additions, stamped between the simulated events.
    let mut extra: Vec<(i64, String)> = Vec::new();
    let collapse_from = fault.start_ms - 15 * MINUTE_MS;
    let mut at = first_ms + 30_000;
    let mut minute = 0u64;
    while at < fault.start_ms {
        let records = if at >= collapse_from {
            5
        } else {
            1000 + (minute % 5) * 10
        };
        extra.push((at, event(HOSTILE_PIPELINE, HOSTILE_STAGE, at, records)));
        at += MINUTE_MS;
        minute += 1;
    }
    for minutes_before in 1..=5 {
        let at = fault.start_ms - minutes_before * MINUTE_MS;
        for p in 0..BULK_PIPELINES {
            for s in 0..BULK_STAGES {
                let (pipeline, stage) = (format!("bulk-{p:02}"), format!("stage-{s:03}"));
                extra.push((at, event(&pipeline, &stage, at, 10 + s as u64)));
            }
        }
    }
    extra.sort_by_key(|(at, _)| *at);

    let mut phase1 = String::new();
    let mut phase2 = String::new();
    let mut extra = extra.into_iter().peekable();
    let mut phase1_end_ms = 0;
    for line in simulated.lines() {
        let at = timestamp(line);
        while let Some((_, e)) = extra.next_if(|(e_at, _)| *e_at <= at) {
            phase1.push_str(&e);
            phase1.push('\n');
        }
        if at < fault.start_ms {
            phase1.push_str(line);
            phase1.push('\n');
            phase1_end_ms = at;
        } else if at < fault.start_ms + PHASE_2_MS {
            phase2.push_str(line);
            phase2.push('\n');
        }
    }
    let simulated_stages = 16;
    Input {
        phase1,
        phase2,
        fault,
        phase1_end_ms,
        stages: simulated_stages + 1 + BULK_PIPELINES * BULK_STAGES,
    }
}

/// `pipewatch replay --input - --serve` on a free loopback port; killed on drop.
struct Replay {
    child: Child,
    stdin: Option<ChildStdin>,
    address: SocketAddr,
    log: PathBuf,
}

impl Replay {
    fn start(dir: &Path) -> Replay {
        let port = common::free_port();
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = dir.join("replay.log");
        let mut child = pipewatch()
            .args(["replay", "--input", "-", "--serve", "--output"])
            .arg(dir.join("alerts.ndjson"))
            .env("PIPEWATCH__HTTP__LISTEN", address.to_string())
            .env(
                "PIPEWATCH__ALERTS__DASHBOARD_URL",
                format!("http://{address}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("pipewatch replay starts");
        let stdin = child.stdin.take();
        let replay = Replay {
            child,
            stdin,
            address,
            log,
        };
        replay.poll("the HTTP server", Duration::from_secs(20), || {
            common::request(address, "GET", "/healthz", &[], "")
                .map_err(|e| e.to_string())
                .map(|_| ())
        });
        replay
    }

    fn write(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("standard input open");
        stdin.write_all(text.as_bytes()).expect("replay reads");
        stdin.flush().expect("replay reads");
    }

    fn end_input(&mut self) {
        self.stdin.take();
    }

    fn get(&self, path: &str) -> Value {
        common::get(self.address, path).json()
    }

    /// Waits until the replay has read its input to the end and processed it (ready).
    fn wait_until_done(&self) {
        self.poll(
            "the replay to finish",
            Duration::from_secs(60),
            || match common::get(self.address, "/readyz").status {
                200 => Ok(()),
                status => Err(format!("readyz {status}")),
            },
        );
    }

    /// [`common::poll`], with the replay's log when it times out.
    fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        attempt: impl FnMut() -> Result<T, String>,
    ) -> T {
        let log = || {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            format!("replay log:\n{text}")
        };
        common::poll(what, timeout, log, attempt)
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "replay did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ms(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a time"))
        .expect("an RFC 3339 time")
        .timestamp_millis()
}

/// The table rows of the page, as the test reads them.
const ROWS: &str = "
    const t = document.getElementById('stages');
    const rows = [...t.tBodies[0].rows].filter((r) => r.dataset.stage !== undefined);
    return {
        rows: rows.length,
        renderMs: Number(t.dataset.renderMs),
        footer: document.getElementById('stages-footer').textContent,
        pipelines: [...new Set(rows.map((r) => r.dataset.pipeline))],
        health: rows.map((r) => [r.dataset.pipeline, r.dataset.stage, r.dataset.health,
            r.querySelector('.health').textContent]),
    };";

#[test]
fn the_dashboard_shows_a_fault_live_and_escapes_hostile_names() {
    common::webdriver::require_tools();
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = build_input(dir.path());
    let fault = &input.fault;
    let mut replay = Replay::start(dir.path());

    // Phase 1: everything before the drop.
    replay.write(&input.phase1);
    let stage_api = format!("/api/v1/stages/{}/{}", fault.pipeline, fault.stage);
    // Buckets close once the newest event is 30 s (allowed lateness) past their end.
    let closed_by = (input.phase1_end_ms / MINUTE_MS - 1) * MINUTE_MS;
    let before = replay.poll("phase 1 to be processed", Duration::from_secs(60), || {
        let stage = replay.get(&stage_api);
        let total = replay.get("/api/v1/stages?limit=1")["total"].as_u64();
        match (stage.get("last_bucket_end"), total) {
            (Some(end), Some(total)) if ms(end) >= closed_by && total as usize == input.stages => {
                Ok(stage)
            }
            _ => Err(format!("stage {stage}, {total:?} stages")),
        }
    });
    assert_eq!(
        before["health"], "ok",
        "{}/{} must be ok before its fault",
        fault.pipeline, fault.stage
    );
    let hostile = replay.get(&format!(
        "/api/v1/stages/{HOSTILE_PIPELINE}/{}",
        segment(HOSTILE_STAGE)
    ));
    assert_eq!(hostile["health"], "anomalous", "{hostile}");

    let browser = Browser::start(1400, 1000);
    let url = format!("http://{}", replay.address);
    browser.goto(&format!("{url}/"));
    browser.wait_for(
        "the page to fill in and go live",
        PAGE_UPDATE,
        "return document.getElementById('live').dataset.state === 'live'
            && document.querySelectorAll('#stages tbody tr[data-stage]').length > 0",
        json!([]),
    );

    // A hostile stage name is text wherever it shows: the table and the alert summary.
    let shown = browser.wait_for(
        "the hostile stage in the table and in an alert",
        PAGE_UPDATE,
        "const name = arguments[0];
         const cells = [...document.querySelectorAll('#stages td.stage')]
             .filter((td) => td.textContent === name);
         const alerts = [...document.querySelectorAll('#alerts .summary-text')]
             .filter((d) => d.textContent.includes(name));
         if (!cells.length || !alerts.length) return null;
         const link = cells[0].firstChild;
         return {
             textNodes: link.childNodes.length === 1 && link.firstChild.nodeType === Node.TEXT_NODE,
             img: document.getElementsByTagName('img').length,
             onerror: document.querySelectorAll('[onerror]').length,
         };",
        json!([HOSTILE_STAGE]),
    );
    assert_eq!(
        shown,
        json!({"textNodes": true, "img": 0, "onerror": 0}),
        "the hostile name became markup"
    );
    assert_eq!(browser.dialog_text(), None, "a dialog opened");

    // A thousand stages: the table holds one page of them, worst first, and the filter
    // narrows it down.
    let all = browser.script(ROWS, json!([]));
    let total = input.stages;
    assert_eq!(all["rows"], 200, "{all}");
    assert!(
        all["footer"].as_str().unwrap().starts_with(&format!(
            "Showing 200 of {},{:03} matching",
            total / 1000,
            total % 1000
        )),
        "{all}"
    );
    let render_ms = all["renderMs"].as_f64().unwrap();
    eprintln!("{total} stages: the table rendered 200 rows in {render_ms} ms");
    // A freeze guard, not a benchmark: rendering 200 rows takes milliseconds.
    assert!(
        render_ms < 5_000.0,
        "the table took {render_ms} ms to render"
    );
    let overview = browser.screenshot(&target_dir().join("browser").join("overview.png"));
    eprintln!("screenshot: {}", overview.display());
    browser.type_into("#filter", "bulk-07/");
    let bulk = browser.wait_for(
        "the filter to show one bulk pipeline",
        PAGE_UPDATE,
        &format!(
            "{} const r = rows(); return r.rows === {BULK_STAGES} ? r : null;",
            rows_fn()
        ),
        json!([]),
    );
    assert_eq!(bulk["pipelines"], json!(["bulk-07"]), "{bulk}");

    // The faulty stage, filtered to, is ok.
    let name = format!("{}/{}", fault.pipeline, fault.stage);
    browser.type_into("#filter", &name);
    let health_of = format!(
        "{} const r = rows();
         return r.rows === 1 && r.health[0][0] === arguments[0] && r.health[0][1] === arguments[1]
             ? r.health[0] : null;",
        rows_fn()
    );
    let args = json!([fault.pipeline, fault.stage]);
    let row = browser.wait_for(
        "the stage alone in the table",
        PAGE_UPDATE,
        &health_of,
        args.clone(),
    );
    assert_eq!(row[2], "ok", "{row}");
    assert_eq!(row[3], "ok", "the health shows as a word: {row}");

    // Phase 2: the drop. The page turns the stage anomalous by itself.
    browser.script(
        "window.pipewatchTestMarker = 'loaded once'; return null;",
        json!([]),
    );
    replay.write(&input.phase2);
    replay.end_input();
    let turned = browser.wait_for(
        "the stage to turn anomalous without a reload",
        PAGE_UPDATE,
        &format!(
            "if (window.pipewatchTestMarker !== 'loaded once') return 'the page was reloaded';
             const row = (() => {{ {health_of} }})();
             return row && row[2] === 'anomalous' ? row : null;"
        ),
        args.clone(),
    );
    assert_eq!(turned[3], "anomalous", "{turned}");
    // The rest of phase 2 in, so the page settles before it is clicked and captured.
    replay.wait_until_done();

    // Its charts: the band shaded, the anomalous buckets marked.
    browser.click("#stages tbody tr[data-stage] a.stage-link");
    let chart = browser.wait_for(
        "the stage's charts with an anomalous bucket",
        PAGE_UPDATE,
        "const chart = document.querySelector('#detail:not([hidden]) svg.chart[data-metric=\"records\"]');
         if (!chart || !chart.querySelector('circle.anomaly')) return null;
         const band = chart.querySelector('path.band');
         return {
             path: location.pathname,
             title: document.getElementById('detail-stage').textContent,
             health: document.getElementById('detail-health').textContent,
             band: band ? band.getAttribute('d').length : 0,
             value: !!chart.querySelector('path.value'),
             expected: !!chart.querySelector('path.expected'),
             anomalies: chart.querySelectorAll('circle.anomaly').length,
             charts: document.querySelectorAll('#charts svg.chart').length,
             alerts: [...document.querySelectorAll('#detail-alerts li .kind')].map((k) => k.textContent),
         };",
        json!([]),
    );
    assert_eq!(
        chart["path"],
        format!("/stages/{}/{}", fault.pipeline, fault.stage),
        "{chart}"
    );
    assert_eq!(chart["title"], fault.stage.as_str());
    assert_eq!(chart["health"], "anomalous");
    assert!(chart["band"].as_u64().unwrap() > 0, "{chart}");
    assert_eq!(
        (chart["value"].clone(), chart["expected"].clone()),
        (json!(true), json!(true))
    );
    assert!(chart["charts"].as_u64().unwrap() >= 7, "{chart}");
    assert!(
        chart["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "throughput_drop"),
        "{chart}"
    );
    let shot = browser.screenshot(&target_dir().join("browser").join("dashboard.png"));
    eprintln!("screenshot: {}", shot.display());

    // The link an alert carries opens the dashboard on its stage, the hostile one too.
    let alerts = replay.get("/api/v1/alerts");
    let link = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["stage"] == HOSTILE_STAGE)
        .and_then(|a| a["annotations"]["dashboard"].as_str())
        .expect("the hostile stage's alert carries a link")
        .to_string();
    browser.goto(&link);
    let opened = browser.wait_for(
        "the alert's link to open its stage",
        PAGE_UPDATE,
        "const title = document.getElementById('detail-stage').textContent;
         return title === arguments[0] && document.querySelector('#charts svg.chart')
             ? { img: document.getElementsByTagName('img').length } : null;",
        json!([HOSTILE_STAGE]),
    );
    assert_eq!(opened["img"], 0);
    assert_eq!(browser.dialog_text(), None, "a dialog opened");

    // Nothing the page did broke its policy or threw.
    let console = browser.console();
    let severe: Vec<&(String, String)> = console
        .iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect();
    assert!(severe.is_empty(), "browser console errors: {severe:?}");

    // A stop is not held up by the open live stream.
    let stopping = Instant::now();
    let status = replay.terminate();
    assert!(status.success(), "replay exited with {status}");
    eprintln!(
        "stopped in {:?} with the page connected; whole test {:?}",
        stopping.elapsed(),
        started.elapsed()
    );
    drop(browser);
}

/// `rows()` in the page: [`ROWS`] as a function, for scripts that wait on it.
fn rows_fn() -> String {
    format!("const rows = () => {{ {ROWS} }};")
}

const HOSTILE_RUN: &str = "<svg onload=alert(3)>";
const HOSTILE_FLOW_PIPELINE: &str = "evil-flow";

/// Groups digits by thousands, as the page shows counts: 26,909.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What the run view shows, as the test reads it.
const RUN_VIEW: &str = "
    const run = document.getElementById('run');
    const trace = run.hidden ? null : run.querySelector('.run-trace');
    if (!trace || !trace.querySelector('svg.timeline')) return null;
    const svg = trace.querySelector('svg.timeline');
    const drawn = [...svg.querySelectorAll('g.run-stage:not(.missing)')];
    return {
        search: location.search,
        id: document.getElementById('run-id').textContent,
        from: document.getElementById('run-from').textContent,
        pipeline: trace.dataset.pipeline,
        stages: drawn.map((g) => g.dataset.stage),
        bars: drawn.map((g) => g.querySelectorAll('rect.bar').length),
        names: drawn.map((g) => g.querySelector('.stage-name title').textContent),
        lossRows: drawn.filter((g) => g.classList.contains('row-loss'))
            .map((g) => [g.dataset.stage, Number(g.dataset.lost)]),
        hops: [...svg.querySelectorAll('path.hop')].map((p) => [p.dataset.from, p.dataset.to]),
        findings: [...trace.querySelectorAll('.run-findings li')].map((li) => [li.dataset.kind, li.textContent]),
        table: [...trace.querySelectorAll('table.run-stages tbody tr')].map((tr) =>
            [tr.dataset.stage, tr.className, [...tr.cells].map((td) => td.textContent)]),
        img: document.getElementsByTagName('img').length,
        handlers: document.querySelectorAll('[onload], [onerror]').length,
    };";

/// A run's trace. Two simulated days with the flow fault plan, cut half an hour after the
/// injected records loss starts (so its runs are still followed: they are forgotten
/// `flow.run_ttl` after their last event), and one more run whose stage and correlation id
/// are markup. From the `data_loss` alert's run link, the page draws the run: a bar per
/// stage in the run's order, the hand-overs from the upstream stages, and the stage that
/// lost records marked with the count, exactly as the API and the alert give them; a
/// screenshot goes to `target/browser/run-trace.png`. Then "find run" shows a run that is
/// not there as such, and the hostile run as text.
#[test]
fn a_data_loss_alert_opens_its_run_as_a_timeline() {
    common::webdriver::require_tools();
    let dir = tempfile::tempdir().expect("a temp dir");
    let simulated = common::simulate(
        dir.path(),
        &[
            "--duration",
            "2d",
            "--faults",
            "flow",
            "--timestamp-format",
            "epoch-ms",
        ],
    );
    let loss = simulated.fault("records_lost");
    let loss_start = ms(&loss["start"]);
    let hostile_at = loss_start - 10 * MINUTE_MS;
    let hostile_run = [(HOSTILE_STAGE, 0), ("sink", 2_000)].map(|(stage, after)| {
        json!({
            "pipeline": HOSTILE_FLOW_PIPELINE,
            "stage": stage,
            "timestamp": hostile_at + after,
            "correlation_id": HOSTILE_RUN,
            "records_in": 10,
            "records_out": 10,
        })
        .to_string()
    });
    let mut input = String::new();
    let mut hostile = hostile_run.iter().peekable();
    for line in std::fs::read_to_string(&simulated.events)
        .expect("events")
        .lines()
    {
        let at = timestamp(line);
        if at >= loss_start + 30 * MINUTE_MS {
            break;
        }
        while let Some(e) = hostile.next_if(|_| at >= hostile_at) {
            input.push_str(e);
            input.push('\n');
        }
        input.push_str(line);
        input.push('\n');
    }

    let mut replay = Replay::start(dir.path());
    replay.write(&input);
    replay.end_input();
    replay.wait_until_done();
    let alerts = replay.get("/api/v1/alerts");
    let alert = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "data_loss" && a["pipeline"] == loss["pipeline"])
        .unwrap_or_else(|| panic!("a data_loss alert fires: {alerts}"))
        .clone();
    let run_id = alert["correlation_ids"][0]
        .as_str()
        .expect("a data_loss alert names its run")
        .to_string();
    let lost: u64 = alert["annotations"]["records_lost"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .expect("the alert says how many records were lost");
    let trace = replay.get(&format!("/api/v1/runs/{}", segment(&run_id)));
    let run = &trace["runs"][0];
    let stages: Vec<&str> = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    let lossy = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == alert["stage"])
        .expect("the run passed the stage that lost records");

    let browser = Browser::start(1400, 1000);
    browser.goto(&format!("http://{}/", replay.address));
    let link = format!(
        "#alerts li[data-fingerprint=\"{}\"] a.run-link",
        alert["fingerprint"].as_str().unwrap()
    );
    browser.wait_for(
        "the data_loss alert with its run link",
        PAGE_UPDATE,
        "return document.querySelector(arguments[0]) !== null;",
        json!([link]),
    );
    browser.click(&link);
    let shown = browser.wait_for("the run's timeline", PAGE_UPDATE, RUN_VIEW, json!([]));
    assert_eq!(shown["search"], format!("?run={}", segment(&run_id)));
    assert_eq!(shown["id"], run_id.as_str());
    assert!(
        shown["from"].as_str().unwrap().contains("data_loss"),
        "{shown}"
    );
    assert_eq!(shown["pipeline"], loss["pipeline"]);
    assert_eq!(
        shown["stages"],
        json!(stages),
        "one row per stage, in order"
    );
    assert_eq!(shown["bars"], json!(vec![1; stages.len()]), "{shown}");
    assert_eq!(
        shown["lossRows"],
        json!([[alert["stage"], lost]]),
        "the stage that lost records, and only it, is marked with the count"
    );
    for hop in lossy["hops"].as_array().unwrap() {
        let drawn = json!([hop["from"], alert["stage"]]);
        assert!(
            shown["hops"].as_array().unwrap().contains(&drawn),
            "hand-over {drawn} drawn: {shown}"
        );
    }
    let findings = shown["findings"].as_array().unwrap();
    assert_eq!(findings[0][0], "loss", "{shown}");
    assert!(
        findings[0][1]
            .as_str()
            .unwrap()
            .contains(&format!("{} lost", thousands(lost))),
        "{shown}"
    );
    let row = shown["table"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == alert["stage"])
        .expect("the stage's row in the table");
    assert!(row[1].as_str().unwrap().contains("row-loss"), "{row}");
    assert_eq!(
        row[2][4],
        thousands(lossy["records_in"].as_u64().unwrap()),
        "records exactly: {row}"
    );
    assert_eq!(row[2][8], thousands(lost), "{row}");
    let shot = browser.screenshot(&target_dir().join("browser").join("run-trace.png"));
    eprintln!("screenshot: {}", shot.display());

    // A run this instance does not have: said so, not an empty chart.
    browser.type_into("#find-run-id", "no-such-run");
    browser.click("#find-run button");
    let missing = browser.wait_for(
        "the run not found",
        PAGE_UPDATE,
        "const title = document.querySelector('#run .run-missing-title');
         return title ? { search: location.search, title: title.textContent } : null;",
        json!([]),
    );
    assert_eq!(missing["search"], "?run=no-such-run");
    assert!(
        missing["title"].as_str().unwrap().contains("no-such-run"),
        "{missing}"
    );

    // A run whose correlation id and stage are markup: text, wherever they show.
    browser.type_into("#find-run-id", HOSTILE_RUN);
    browser.click("#find-run button");
    let hostile = browser.wait_for(
        "the hostile run's timeline",
        PAGE_UPDATE,
        &format!("const view = (() => {{ {RUN_VIEW} }})(); return view && view.pipeline === arguments[0] ? view : null;"),
        json!([HOSTILE_FLOW_PIPELINE]),
    );
    assert_eq!(hostile["id"], HOSTILE_RUN);
    assert_eq!(
        hostile["names"],
        json!([HOSTILE_STAGE, "sink"]),
        "{hostile}"
    );
    assert_eq!(
        (hostile["img"].clone(), hostile["handlers"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(browser.dialog_text(), None, "a dialog opened");

    browser.click("#run-close");
    let closed = browser.wait_for(
        "the run to close",
        PAGE_UPDATE,
        "return document.getElementById('run').hidden ? { search: location.search } : null;",
        json!([]),
    );
    assert_eq!(closed["search"], "");

    // Nothing failed but the lookup of the run that is not there.
    let console = browser.console();
    let severe: Vec<&(String, String)> = console
        .iter()
        .filter(|(level, message)| {
            level == "SEVERE" && !message.contains("/api/v1/runs/no-such-run")
        })
        .collect();
    assert!(severe.is_empty(), "browser console errors: {severe:?}");
    drop(browser);
}
