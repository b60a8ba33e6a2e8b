//! docker/ checked without a Docker engine (these machines have none): every YAML and
//! JSON file parses; every file the compose file mounts or builds from exists, where the
//! images expect it; the Dockerfile copies only what exists and runs as non-root; the
//! configuration the compose file mounts passes `pipewatch check-config`; every pipewatch
//! command line in it parses exactly as the binary parses it (and the simulator's
//! arguments describe a valid simulation); the image's health check works against a live
//! pipewatch. promtool's checks of docker/prometheus/ are in tests/prometheus.rs.
//!
//! What only an engine can show (the images build and start, Kafka forms, the services
//! reach each other) is not checked here.

mod common;

use common::pipewatch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use pipewatch::cli::{Cli, Command as PipewatchCommand};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker() -> PathBuf {
    repo().join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// YAML as JSON values (the compose file uses no anchors, tags or non-string keys).
fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("a mapping key that is not a string: {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("unsupported YAML: {yaml:?}"),
    }
}

fn load_yaml(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn compose() -> Value {
    let docs = load_yaml(&docker().join("docker-compose.yml"));
    assert_eq!(docs.len(), 1, "one YAML document");
    to_json(&docs[0])
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn every_yaml_and_json_file_under_docker_parses() {
    let mut checked = 0;
    for path in files(&docker()) {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                let docs = load_yaml(&path);
                assert!(!docs.is_empty(), "{} is empty", path.display());
                for doc in &docs {
                    to_json(doc);
                }
                checked += 1;
            }
            Some("json") => {
                serde_json::from_str::<Value>(&read(&path))
                    .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
                checked += 1;
            }
            _ => {}
        }
    }
    // The compose file, prometheus.yml, rules.yml, rules.test.yml, two Grafana
    // provisioning files and the Grafana dashboard.
    assert!(
        checked >= 7,
        "only {checked} YAML and JSON files under docker/"
    );
}

/// A short-form volume (`./host:/container[:ro]`) or bind mount: the host path, relative
/// to the compose file, and the container path. Named volumes give `None`.
fn bind(volume: &Value) -> Option<(PathBuf, String)> {
    let (source, target) = match volume {
        Value::String(short) => {
            let mut parts = short.splitn(3, ':');
            let source = parts.next()?.to_string();
            let target = parts.next().expect("a container path").to_string();
            (source, target)
        }
        Value::Object(long) => (
            long.get("source")?.as_str()?.to_string(),
            long["target"].as_str()?.to_string(),
        ),
        other => panic!("unexpected volume {other}"),
    };
    (source.starts_with('.') || source.starts_with('/'))
        .then(|| (docker().join(source.trim_start_matches("./")), target))
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"].as_object().expect("services")
}

#[test]
fn compose_has_every_service_and_every_file_it_mounts_or_builds_from() {
    let compose = compose();
    let services = services(&compose);
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for wanted in [
        "kafka",
        "topics",
        "pipewatch",
        "simulator",
        "prometheus",
        "grafana",
        "mailpit",
    ] {
        assert!(names.contains(wanted), "no {wanted} service in {names:?}");
    }

    let mut missing = Vec::new();
    let mut mounts = Vec::new();
    for (name, service) in services {
        // Images are pinned: `docker compose up` next month runs what was checked today.
        if let Some(image) = service["image"].as_str() {
            assert!(
                image.contains(':') && !image.ends_with(":latest"),
                "{name}: pin the image tag ({image})"
            );
        }
        if let Some(build) = service.get("build") {
            let context = docker().join(build["context"].as_str().expect("a build context"));
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            for path in [&context, &dockerfile] {
                if !path.exists() {
                    missing.push(format!("{name}: build {}", path.display()));
                }
            }
            assert_eq!(
                context.canonicalize().unwrap(),
                repo().canonicalize().unwrap(),
                "{name}: the build context is the repository root (.dockerignore is there)"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            if let Some((host, target)) = bind(volume) {
                if !host.exists() {
                    missing.push(format!("{name}: {} (mounted at {target})", host.display()));
                }
                mounts.push((name.as_str(), host, target));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the compose file refers to files that do not exist (docker/prometheus/ and \
         docker/grafana/ come from the Prometheus and Grafana work, #4):\n  {}",
        missing.join("\n  ")
    );

    // Where the images read them, as the files' own comments ask.
    let mounted = |service: &str, host: &str, target: &str| {
        assert!(
            mounts
                .iter()
                .any(|(s, h, t)| *s == service && h.ends_with(host) && t == target),
            "{service} must mount docker/{host} at {target}"
        );
    };
    mounted(
        "prometheus",
        "prometheus/prometheus.yml",
        "/etc/prometheus/prometheus.yml",
    );
    mounted(
        "prometheus",
        "prometheus/rules.yml",
        "/etc/prometheus/rules.yml",
    );
    mounted(
        "grafana",
        "grafana/provisioning",
        "/etc/grafana/provisioning",
    );
    mounted(
        "grafana",
        "grafana/dashboards",
        "/var/lib/grafana/dashboards",
    );
    mounted(
        "pipewatch",
        "pipewatch.toml",
        "/etc/pipewatch/pipewatch.toml",
    );
    for dir in [
        "grafana/provisioning/datasources",
        "grafana/provisioning/dashboards",
    ] {
        assert!(docker().join(dir).is_dir(), "docker/{dir} missing");
    }
    let prometheus = read(&docker().join("prometheus/prometheus.yml"));
    assert!(
        prometheus.contains("pipewatch:9898"),
        "Prometheus scrapes the pipewatch service"
    );
    assert!(
        read(&docker().join("grafana/provisioning/datasources/prometheus.yml"))
            .contains("http://prometheus:9090")
    );

    // Kafka: one KRaft node that is broker and controller, advertised under its
    // service name.
    let kafka = &services["kafka"]["environment"];
    assert_eq!(kafka["KAFKA_PROCESS_ROLES"], "broker,controller");
    assert_eq!(
        kafka["KAFKA_ADVERTISED_LISTENERS"],
        "PLAINTEXT://kafka:9092"
    );
    assert_eq!(kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"], "1@kafka:9093");
    assert!(services["kafka"]["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka:"));

    // The dashboard is published on the port pipewatch listens on.
    let ports: Vec<&str> = services["pipewatch"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(ports.iter().any(|p| p.ends_with(":9898:9898")), "{ports:?}");
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<String> {
    let text = read(&docker().join("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') && current.is_empty() || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_copies_what_exists_and_runs_as_non_root() {
    let instructions = dockerfile();
    let stages: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    assert!(stages[0].starts_with("FROM rust:") && stages[0].contains("bookworm"));
    assert!(stages[1].starts_with("FROM debian:bookworm-slim"));

    let ignored: Vec<String> = read(&repo().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    assert!(
        ignored.iter().any(|l| l == "target"),
        ".dockerignore keeps target/ out"
    );

    let mut copied = Vec::new();
    for copy in instructions.iter().filter(|i| i.starts_with("COPY ")) {
        if copy.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = copy
            .split_whitespace()
            .skip(1)
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (sources, _destination) = words.split_at(words.len() - 1);
        for source in sources {
            let path = repo().join(source);
            assert!(path.exists(), "{copy}: {source} does not exist");
            let top = source.trim_end_matches('/');
            assert!(
                !ignored.iter().any(|i| i == top),
                "{copy}: .dockerignore leaves {source} out of the build context"
            );
            copied.push(top.to_string());
        }
    }
    // What `cargo build` needs: the manifest and lock, the sources (with the dashboard's
    // assets), the built-in configuration, and the benches the manifest declares.
    for needed in ["Cargo.toml", "Cargo.lock", "src", "config", "benches"] {
        assert!(copied.iter().any(|c| c == needed), "{needed} is not copied");
    }
    assert!(repo().join("src/api/assets/app.js").exists());

    let runtime = instructions
        .iter()
        .skip_while(|i| !i.starts_with("FROM debian"))
        .collect::<Vec<_>>();
    let user = runtime
        .iter()
        .filter_map(|i| i.strip_prefix("USER "))
        .next_back()
        .expect("a USER in the runtime stage");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "runs as {user}"
    );
    assert!(user.starts_with("10001"), "USER 10001, not {user}");
    assert!(runtime.iter().any(|i| *i == "EXPOSE 9898"));
    assert!(runtime
        .iter()
        .any(|i| i.starts_with("ENV PIPEWATCH__HTTP__LISTEN=0.0.0.0:9898")));
    assert!(runtime
        .iter()
        .any(|i| i.starts_with("ENTRYPOINT [\"pipewatch\"]")));
    assert!(
        runtime.iter().any(|i| i.contains("libssl3")),
        "the runtime stage installs the OpenSSL librdkafka links"
    );
}

/// The image's health check command (the JSON exec form of `HEALTHCHECK ... CMD`).
fn healthcheck() -> Vec<String> {
    let instruction = dockerfile()
        .into_iter()
        .find(|i| i.starts_with("HEALTHCHECK "))
        .expect("a HEALTHCHECK");
    let json = &instruction[instruction.find("CMD [").expect("CMD in exec form") + 4..];
    serde_json::from_str(json).expect("the exec form is a JSON array")
}

/// The command lines of the services that run the pipewatch image, as argument vectors
/// starting with `pipewatch`: the `command` list, or each `&&` part of a `sh -c` string
/// (whose words carry no quotes, as the compose file promises).
fn pipewatch_commands(compose: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (name, service) in services(compose) {
        if service["image"].as_str() != Some("pipewatch:local") {
            continue;
        }
        let command: Vec<String> = service["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: command as a list"))
            .iter()
            .map(|w| w.as_str().expect("words").to_string())
            .collect();
        let entrypoint: Vec<&str> = service["entrypoint"]
            .as_array()
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match entrypoint.as_slice() {
            [] => {
                let mut argv = vec!["pipewatch".to_string()];
                argv.extend(command);
                out.push((name.clone(), argv));
            }
            ["/bin/sh", "-c"] => {
                assert_eq!(command.len(), 1, "{name}: one shell command string");
                let script = &command[0];
                for forbidden in ['"', '\'', '$', '`', ';', '|', '>', '<'] {
                    assert!(
                        !script.contains(forbidden),
                        "{name}: keep the command plain words and && ({forbidden:?} found)"
                    );
                }
                for part in script.split("&&") {
                    let mut words: Vec<String> =
                        part.split_whitespace().map(str::to_string).collect();
                    if words.first().map(String::as_str) == Some("exec") {
                        words.remove(0);
                    }
                    assert_eq!(words[0], "pipewatch", "{name}: {part}");
                    out.push((name.clone(), words));
                }
            }
            other => panic!("{name}: unexpected entrypoint {other:?}"),
        }
    }
    out
}

#[test]
fn compose_commands_parse_as_the_binary_parses_them() {
    let compose = compose();
    let commands = pipewatch_commands(&compose);
    let mut kinds = BTreeSet::new();
    for (service, argv) in &commands {
        let cli = Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{service}: {}\n{e}", argv.join(" ")));
        // --config names a file the service mounts.
        let config = cli.config.as_ref().expect("--config");
        let mounted = services(&compose)[service.as_str()]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(bind)
            .find(|(_, target)| Path::new(target) == config);
        assert!(
            mounted.is_some(),
            "{service}: --config {} is not mounted",
            config.display()
        );
        match cli.command {
            PipewatchCommand::Run(_) => {
                kinds.insert("run");
            }
            PipewatchCommand::Simulate(args) => {
                assert!(args.kafka, "{service}: the simulator produces to Kafka");
                // The arguments describe a simulation that can run (the fault plan
                // resolves against the topology), without producing anything.
                pipewatch::simulate::Simulation::new(args.to_options())
                    .unwrap_or_else(|e| panic!("{service}: {}: {e:#}", argv.join(" ")));
                // Faults of a simulation that runs on live are confined to its first
                // hours; after them, the events are fault-free.
                assert!(
                    args.faults == pipewatch::simulate::FaultsChoice::None
                        || args.faults_within.is_some_and(|w| w < args.duration),
                    "{service}: faults for ever: {}",
                    argv.join(" ")
                );
                kinds.insert("simulate");
            }
            other => panic!("{service}: unexpected command {other:?}"),
        }
    }
    assert_eq!(kinds, BTreeSet::from(["run", "simulate"]), "{commands:?}");
    // The image's default command is the service.
    let cmd = dockerfile()
        .into_iter()
        .find(|i| i.starts_with("CMD "))
        .expect("a CMD");
    let default: Vec<String> = serde_json::from_str(&cmd[4..]).expect("CMD in exec form");
    let mut argv = vec!["pipewatch".to_string()];
    argv.extend(default);
    assert!(matches!(
        Cli::try_parse_from(&argv)
            .expect("the default command parses")
            .command,
        PipewatchCommand::Run(_)
    ));
}

#[test]
fn the_mounted_configuration_passes_check_config_with_the_compose_environment() {
    let compose = compose();
    let config = docker().join("pipewatch.toml");
    for (name, service) in services(&compose) {
        if service["image"].as_str() != Some("pipewatch:local") {
            continue;
        }
        let mut cmd = pipewatch();
        cmd.args(["check-config", "--config"]).arg(&config);
        // As the image sets it, then as the compose file does.
        cmd.env("PIPEWATCH__HTTP__LISTEN", "0.0.0.0:9898");
        if let Some(env) = service["environment"].as_object() {
            for (key, value) in env {
                let value = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                cmd.env(key, value);
            }
        }
        let out = cmd.output().expect("pipewatch runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: check-config --config docker/pipewatch.toml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in [
            "listen = \"0.0.0.0:9898\"",
            "brokers = \"kafka:9092\"",
            "smtp_host = \"mailpit\"",
            "topics = [\"pipeline-events\"]",
        ] {
            assert!(text.contains(expected), "{name}: {expected} not in\n{text}");
        }
    }
    // The topics the topics service creates are the ones pipewatch reads and writes.
    let topics = services(&compose)["topics"]["command"][0]
        .as_str()
        .unwrap()
        .to_string();
    for topic in ["pipeline-events", "pipeline-alerts", "pipeline-events-dlq"] {
        assert!(
            topics.contains(&format!("--topic {topic} ")),
            "{topic} is not created"
        );
    }
}

#[test]
fn the_image_health_check_passes_against_a_live_pipewatch_and_fails_without_one() {
    let check = healthcheck();
    assert!(
        check.iter().any(|w| w.contains("127.0.0.1/9898")),
        "{check:?}"
    );
    // The same command, pointed at a pipewatch on a free port (9898 may be taken here).
    let port = common::free_port();
    let against = |port: u16| -> bool {
        let argv: Vec<String> = check
            .iter()
            .map(|w| w.replace("127.0.0.1/9898", &format!("127.0.0.1/{port}")))
            .collect();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("the health check runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "the health check hangs");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(!against(port), "passes with nothing listening");

    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, "").unwrap();
    let mut server = pipewatch()
        .args(["replay", "--serve", "--output"])
        .arg(dir.path().join("alerts.ndjson"))
        .arg("--input")
        .arg(&events)
        .env("PIPEWATCH__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pipewatch replay --serve starts");
    let address = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::request(address, "GET", "/healthz", &[], "").is_err() {
        assert!(Instant::now() < deadline, "pipewatch did not start serving");
        std::thread::sleep(Duration::from_millis(50));
    }
    let passed = against(port);
    let _ = server.kill();
    let _ = server.wait();
    assert!(passed, "the health check fails against a live pipewatch");
}
