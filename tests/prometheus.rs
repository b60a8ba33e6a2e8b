//! docker/prometheus and docker/grafana against the real tools and the real /metrics:
//! promtool checks the configuration, the rules and their unit tests; every pipewatch
//! metric the rules, their tests and the dashboard name must be one pipewatch exports;
//! and a real Prometheus server scrapes `pipewatch replay --serve`, evaluates the rules
//! on what it scraped and answers the dashboard's queries.
//!
//! promtool and prometheus come from Debian's `prometheus` package (`.ci/run` installs
//! it); these tests fail, saying so, where it is missing.

mod common;

use common::{pipewatch, poll};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `name` on PATH, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not on PATH: these tests need Debian's `prometheus` package \
                 (apt-get install prometheus; .ci/run installs it)"
            )
        })
}

/// Runs promtool and fails with its output unless it succeeds.
fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .expect("promtool reads stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A child process, killed on drop, whose output goes to a log file for failure messages.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(command: &mut Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Process { child, log }
    }

    /// The end of its log, and whether it has exited: for failure messages.
    fn report(&mut self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let exited = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited: {status}"),
            _ => "still running".to_string(),
        };
        format!(
            "{} ({exited}); log tail:\n{}",
            self.log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over HTTP/1.1 with `Connection: close`: the status and the body. Chunked bodies
/// (Prometheus' API answers) are decoded.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let body = if head.contains("\r\ntransfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let body = String::from_utf8(body).map_err(|e| e.to_string())?;
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        rest = rest[size..]
            .strip_prefix(b"\r\n")
            .ok_or("chunk not followed by CRLF")?;
    }
}

/// Percent-encodes a query-string value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus API call: its `data`, or its error.
fn prometheus_api(port: u16, path: &str) -> Result<Value, String> {
    let (status, body) = http_get(port, path)?;
    let answer: Value = serde_json::from_str(&body)
        .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
    if answer["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(answer["data"].clone())
}

/// An instant query's result vector.
fn query(port: u16, promql: &str) -> Result<Vec<Value>, String> {
    let data = prometheus_api(port, &format!("/api/v1/query?query={}", encode(promql)))?;
    Ok(data["result"].as_array().cloned().unwrap_or_default())
}

/// Prometheus' clock, in seconds since the epoch.
fn prometheus_time(port: u16) -> f64 {
    let data = prometheus_api(port, &format!("/api/v1/query?query={}", encode("time()")))
        .expect("query time()");
    data["result"][1]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("time() answered {data}"))
}

/// Every `pipewatch_*` identifier in a text (PromQL, YAML or JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("pipewatch_") {
        let start = from + offset;
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !is_ident(bytes[start - 1]) {
            names.insert(text[start..end].to_string());
        }
        from = end;
    }
    names
}

/// Metric families in the text exposition format, by name, with their type.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// The family a series name belongs to: itself, or the histogram or summary whose
/// `_bucket`, `_sum` or `_count` series it is.
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, String>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        matches!(
            families.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then_some(base)
    })
}

/// Label vectors that only `pipewatch run` fills: their series appear with the first
/// value set (a commit, a lag reading), and replay has no Kafka consumer, so its /metrics
/// has none of them. They are checked against the registration in src/telemetry.rs.
const RUN_ONLY_VECTORS: [&str; 2] = [
    "pipewatch_consumer_lag_messages",
    "pipewatch_offset_commits_total",
];

/// Families that `run` updates and replay leaves at zero: registered at start, so
/// replay's /metrics has them too.
const KAFKA_FAMILIES: [(&str, &str); 7] = [
    ("pipewatch_kafka_up", "gauge"),
    ("pipewatch_kafka_errors_total", "counter"),
    ("pipewatch_assigned_partitions", "gauge"),
    ("pipewatch_kafka_delivery_failures_total", "counter"),
    ("pipewatch_kafka_alerts_sent_total", "counter"),
    ("pipewatch_dead_letters_total", "counter"),
    ("pipewatch_processing_latency_seconds", "histogram"),
];

const DASHBOARD: &str = "docker/grafana/dashboards/pipewatch.json";
const DATASOURCES: &str = "docker/grafana/provisioning/datasources/prometheus.yml";

/// The uid the provisioned datasource gets: the dashboard must use that one.
fn datasource_uid() -> String {
    read(DATASOURCES)
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid:"))
        .map(|uid| uid.trim().trim_matches('"').to_string())
        .expect("the provisioned datasource sets a uid")
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every `datasource` object anywhere in the dashboard.
fn datasource_refs(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "datasource" {
                    out.push(child.clone());
                } else {
                    datasource_refs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| datasource_refs(v, out)),
        _ => {}
    }
}

/// The alert names of rules.yml.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn promtool_accepts_the_config_the_rules_and_their_unit_tests() {
    let config = promtool(
        &["check", "config", "docker/prometheus/prometheus.yml"],
        None,
    );
    let said = String::from_utf8_lossy(&config.stdout);
    assert!(
        said.contains("1 rule files found"),
        "prometheus.yml loads rules.yml: {said}"
    );
    promtool(&["check", "rules", "docker/prometheus/rules.yml"], None);
    promtool(&["test", "rules", "docker/prometheus/rules.test.yml"], None);

    // promtool passes a rule that no test mentions: ask for every alert to be shown
    // firing on some series and quiet on others.
    let alerts = alert_names(&read("docker/prometheus/rules.yml"));
    assert!(alerts.len() >= 10, "rules.yml has its alerts: {alerts:?}");
    let tests = read("docker/prometheus/rules.test.yml");
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    // Each `eval_time` starts an alert_rule_test item; a test group's name ends one.
    let mut items: Vec<String> = Vec::new();
    for line in tests.lines() {
        if line.contains("eval_time:") || line.trim_start().starts_with("- name:") {
            items.push(String::new());
        }
        if let Some(item) = items.last_mut() {
            item.push_str(line);
            item.push('\n');
        }
    }
    for item in &items {
        let Some(name) = item.split("alertname:").nth(1) else {
            continue;
        };
        let name: String = name
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if item.contains("exp_alerts: []") {
            quiet.insert(name);
        } else if item.contains("exp_labels:") {
            firing.insert(name);
        }
    }
    for alert in &alerts {
        assert!(
            firing.contains(alert),
            "rules.test.yml never shows {alert} firing"
        );
        assert!(
            quiet.contains(alert),
            "rules.test.yml never shows {alert} quiet"
        );
    }
    let known: BTreeSet<&String> = alerts.iter().collect();
    for tested in firing.iter().chain(&quiet) {
        assert!(
            known.contains(tested),
            "rules.test.yml tests {tested}, which rules.yml does not define"
        );
    }
}

#[test]
fn grafana_provisioning_and_dashboard_are_consistent() {
    let datasources = read(DATASOURCES);
    assert!(
        datasources.contains("url: http://prometheus:9090"),
        "the datasource points at the compose service prometheus:9090"
    );
    assert!(datasources.contains("type: prometheus"));
    let uid = datasource_uid();
    let provider = read("docker/grafana/provisioning/dashboards/pipewatch.yml");
    assert!(
        provider.contains("path: /var/lib/grafana/dashboards"),
        "the dashboard provider reads the mounted dashboards folder"
    );

    let dash = dashboard();
    assert_eq!(dash["uid"], "pipewatch", "a fixed uid keeps links stable");
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    let mut refs = Vec::new();
    datasource_refs(&dash, &mut refs);
    assert!(!refs.is_empty());
    for r in &refs {
        assert_eq!(
            (&r["type"], r["uid"].as_str()),
            (&Value::from("prometheus"), Some(uid.as_str())),
            "every datasource reference is the provisioned one: {r}"
        );
    }

    let variables: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .expect("template variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for wanted in ["pipeline", "stage", "metric"] {
        assert!(variables.contains(wanted), "variable {wanted}");
    }
    let mut ids = BTreeSet::new();
    let all = panels(&dash);
    for panel in &all {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} ({title}) is used twice");
        for key in ["h", "w", "x", "y"] {
            assert!(
                panel["gridPos"][key].is_u64(),
                "panel {title} has gridPos.{key}"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {title} queries something");
        let ref_ids: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        assert_eq!(ref_ids.len(), targets.len(), "panel {title}: refIds unique");
        for t in targets {
            let expr = t["expr"].as_str().expect("every target has an expr");
            for used in expr.split('$').skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    name.starts_with("__") || variables.contains(name.as_str()),
                    "panel {title} uses ${name}, which is not a template variable"
                );
            }
        }
    }
    // The parts the dashboard exists for.
    let text = read(DASHBOARD);
    for wanted in [
        "custom.fillBelowTo",
        "\"repeat\": \"metric\"",
        "pipewatch_stage_score",
        "pipewatch_stage_health",
        "pipewatch_alert_firing",
        "histogram_quantile(0.99",
    ] {
        assert!(text.contains(wanted), "the dashboard has {wanted}");
    }
}

/// Simulated events, changed so that the families that only events create have series:
/// three invalid lines (pipewatch_invalid_events_total) and one stage that falls silent
/// for the last ~50 minutes (pipewatch_alert_firing, a silent stage's health).
fn replay_input(dir: &Path) -> PathBuf {
    let simulated = common::simulate(dir, &["--duration", "2d", "--faults", "default"]);
    let text = std::fs::read_to_string(&simulated.events).expect("simulated events");
    let lines: Vec<&str> = text.lines().collect();
    let tail_from = lines.len().saturating_sub(3000);
    let silent = "\"pipeline\":\"clickstream\",\"stage\":\"sink\"";
    let mut input: String = lines
        .iter()
        .enumerate()
        .filter(|(i, line)| *i < tail_from || !line.contains(silent))
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    input.push_str("not json\n{}\n{\"pipeline\":\"x\"}\n");
    let path = dir.join("input.ndjson");
    std::fs::write(&path, input).expect("input written");
    path
}

#[test]
fn prometheus_scrapes_replay_and_every_metric_used_is_exported() {
    let started = Instant::now();
    let prometheus_bin = tool("prometheus");
    tool("promtool");
    let dir = tempfile::tempdir().expect("temp dir");
    let input = replay_input(dir.path());

    let pw_port = free_port();
    let mut pipewatch = Process::spawn(
        pipewatch()
            .args(["replay", "--serve", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(dir.path().join("alerts.ndjson"))
            .env("PIPEWATCH__HTTP__LISTEN", format!("127.0.0.1:{pw_port}")),
        dir.path().join("pipewatch.log"),
    );
    poll(
        "replay --serve to be ready",
        Duration::from_secs(120),
        || pipewatch.report(),
        || match http_get(pw_port, "/readyz")? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("/readyz: {status} {body}")),
        },
    );
    let (status, exposition) = http_get(pw_port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);

    // The exposition itself is valid (names, types, HELP, histogram buckets).
    promtool(&["check", "metrics"], Some(&exposition));

    let exported = families(&exposition);
    for (name, kind) in KAFKA_FAMILIES {
        assert_eq!(
            exported.get(name).map(String::as_str),
            Some(kind),
            "{name} is exported (as a {kind}) before Kafka or anything else set it"
        );
    }
    let telemetry = read("src/telemetry.rs");
    for name in RUN_ONLY_VECTORS {
        assert!(
            telemetry.contains(&format!("\"{name}\"")),
            "{name} is registered in src/telemetry.rs"
        );
    }
    for file in [
        "docker/prometheus/rules.yml",
        "docker/prometheus/rules.test.yml",
        DASHBOARD,
    ] {
        let used = metric_names(&read(file));
        assert!(!used.is_empty(), "{file} uses pipewatch metrics");
        let unknown: Vec<&String> = used
            .iter()
            .filter(|name| {
                family_of(name, &exported).is_none() && !RUN_ONLY_VECTORS.contains(&name.as_str())
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics that pipewatch does not export: {unknown:?}\nexported: {:?}",
            exported.keys().collect::<Vec<_>>()
        );
    }

    // What replay exports per stage, to compare with what Prometheus stores.
    let stages: BTreeSet<(String, String)> = exposition
        .lines()
        .filter(|l| l.starts_with("pipewatch_stage_value{"))
        .map(|l| (label(l, "pipeline"), label(l, "stage")))
        .collect();
    assert_eq!(stages.len(), 16, "the simulation's 16 stages: {stages:?}");
    assert!(
        exposition.contains("pipewatch_alert_firing{"),
        "the stage made silent has firing alerts"
    );

    // A real Prometheus, scraping every second and evaluating the real rules.
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: pipewatch\n    static_configs:\n      - targets: [\"127.0.0.1:{pw_port}\"]\n",
            rules = repo().join("docker/prometheus/rules.yml"),
        ),
    )
    .expect("config written");
    let mut prometheus = Process::spawn(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--log.level=warn"),
        dir.path().join("prometheus.log"),
    );
    let timeout = Duration::from_secs(60);
    poll(
        "Prometheus' target to be up",
        timeout,
        || prometheus.report(),
        || {
            let data = prometheus_api(prom_port, "/api/v1/targets")?;
            let targets = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            match targets.as_slice() {
                [t] if t["health"] == "up" => Ok(()),
                _ => Err(format!("targets: {data}")),
            }
        },
    );
    let scraped: BTreeSet<(String, String)> = poll(
        "every stage's series in Prometheus",
        timeout,
        || prometheus.report(),
        || {
            let result = query(
                prom_port,
                "count by (pipeline, stage) (pipewatch_stage_value)",
            )?;
            let found: BTreeSet<(String, String)> = result
                .iter()
                .map(|s| {
                    let m = &s["metric"];
                    let text = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                    (text("pipeline"), text("stage"))
                })
                .collect();
            if found == stages {
                Ok(found)
            } else {
                Err(format!("{} of {} stages", found.len(), stages.len()))
            }
        },
    );
    assert_eq!(scraped.len(), 16);

    // The rules evaluate on the scraped series without error: vector matching problems
    // only show with real series, so only evaluations after the data arrived count.
    let data_seen = prometheus_time(prom_port);
    let rules: Vec<Value> = poll(
        "every rule evaluated on the scraped series",
        timeout,
        || prometheus.report(),
        || {
            let data = prometheus_api(prom_port, "/api/v1/rules")?;
            let rules: Vec<Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .cloned()
                .collect();
            let expected = alert_names(&read("docker/prometheus/rules.yml")).len();
            if rules.len() != expected {
                return Err(format!("{} rules loaded, want {expected}", rules.len()));
            }
            let evaluated = |r: &Value| {
                r["lastEvaluation"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t.timestamp_millis() as f64 / 1000.0 > data_seen)
            };
            match rules.iter().find(|r| !evaluated(r)) {
                Some(r) => Err(format!(
                    "{} last evaluated {}",
                    r["name"], r["lastEvaluation"]
                )),
                None => Ok(rules),
            }
        },
    );
    for rule in &rules {
        assert_eq!(
            rule["health"], "ok",
            "rule {} fails on pipewatch's series: {}",
            rule["name"], rule["lastError"]
        );
    }
    // And they see those series: replay has no Kafka, so the Kafka rule is pending.
    poll(
        "the rules to see the scraped series",
        timeout,
        || prometheus.report(),
        || {
            let data = prometheus_api(prom_port, "/api/v1/alerts")?;
            let active: BTreeMap<&str, &str> = data["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| Some((a["labels"]["alertname"].as_str()?, a["state"].as_str()?)))
                .collect();
            // Absent is pending before the first scrape, and must be gone after it.
            let want = BTreeMap::from([("PipewatchKafkaUnreachable", "pending")]);
            if active == want {
                Ok(())
            } else {
                Err(format!("active alerts {active:?}, want {want:?}"))
            }
        },
    );

    // The dashboard's queries, with its variables set to a real stage, run without error;
    // the per-stage ones find their series.
    let (pipeline, stage) = stages
        .iter()
        .find(|(p, _)| p == "payments")
        .cloned()
        .expect("a payments stage");
    let substitute = |expr: &str| {
        expr.replace("$pipeline", &pipeline)
            .replace("$stage", &stage)
            .replace("$metric", "events")
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m")
    };
    let dash = dashboard();
    for panel in panels(&dash) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = substitute(target["expr"].as_str().expect("expr"));
            let result =
                query(prom_port, &expr).unwrap_or_else(|e| panic!("dashboard query {expr}: {e}"));
            let per_stage = ["pipewatch_stage_", "pipewatch_alert_firing"]
                .iter()
                .any(|m| expr.contains(m));
            assert!(
                !per_stage || !result.is_empty(),
                "dashboard query {expr} finds nothing"
            );
        }
    }
    for variable in dash["templating"]["list"].as_array().into_iter().flatten() {
        let definition = variable["query"].as_str().expect("a query variable");
        let (selector, label_name) = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|rest| rest.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable query {definition}"));
        let series = prometheus_api(
            prom_port,
            &format!("/api/v1/series?match[]={}", encode(&substitute(selector))),
        )
        .unwrap_or_else(|e| panic!("variable query {definition}: {e}"));
        let values: BTreeSet<&str> = series
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s[label_name.trim()].as_str())
            .collect();
        assert!(
            !values.is_empty(),
            "variable query {definition} finds no value"
        );
    }

    drop(prometheus);
    drop(pipewatch);
    eprintln!("replay, scrape and queries took {:?}", started.elapsed());
}

/// A label's value in one exposition line (values here have no escaped quotes).
fn label(line: &str, name: &str) -> String {
    let key = format!("{name}=\"");
    let start = line.find(&key).map(|i| i + key.len()).unwrap_or(0);
    line[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}
