//! The `pipewatch` binary: configuration errors, check-config, replay end to end.

mod common;

use common::pipewatch;

fn check_config(path: &std::path::Path) -> std::process::Output {
    pipewatch()
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw.toml");
    std::fs::write(
        &path,
        "[kafka.properties]\n\"sasl.password\" = \"kafka-secret-1\"\n\"security.protocol\" = \"SASL_SSL\"\n",
    )
    .unwrap();
    let out = pipewatch()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("PIPEWATCH__EMAIL__PASSWORD", "smtp-secret-2")
        .env("PIPEWATCH__WINDOW__BUCKET", "5m")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("bucket = \"5m\""), "{text}");
    assert!(text.contains("SASL_SSL"));
    for secret in ["kafka-secret-1", "smtp-secret-2"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    }
    // what it prints is itself a valid configuration
    let again = dir.path().join("effective.toml");
    std::fs::write(&again, text.replace("\"<redacted>\"", "\"x\"")).unwrap();
    let out = check_config(&again);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_invalid_value_exits_2_naming_key_value_and_expectation() {
    let out = pipewatch()
        .arg("check-config")
        .env("PIPEWATCH__DETECTION__SENSITIVITY", "-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("detection.sensitivity") && err.contains("-1") && err.contains("above 0"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw.toml");
    std::fs::write(&path, "[alerts]\nfor = \"soon\"\n").unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("for") && err.contains("soon"), "{err}");

    let out = pipewatch()
        .args(["check-config", "--config", "/nonexistent/pw.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn replay_reads_stdin_writes_alerts_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let t0: i64 = 1_793_491_200_000;
    let mut input = String::new();
    for i in 0..(180 * 6) {
        let ts = t0 + i * 10_000;
        let records = if (120 * 6..150 * 6).contains(&i) {
            5
        } else {
            1000
        };
        input.push_str(&format!(
            "{{\"pipeline\":\"p\",\"stage\":\"s\",\"timestamp\":{ts},\"records_out\":{records}}}\n"
        ));
        if i == 10 {
            input.push_str("{not json\n");
            input.push_str("{\"pipeline\":\"p\",\"stage\":\"s\",\"timestamp\":1793491200000,\"records_out\":-3}\n");
        }
    }
    let alerts = dir.path().join("alerts.ndjson");
    let scores = dir.path().join("scores.ndjson");
    let dead = dir.path().join("dead.ndjson");
    let mut child = pipewatch()
        .args(["replay", "--input", "-", "--output"])
        .arg(&alerts)
        .arg("--scores")
        .arg(&scores)
        .arg("--dead-letters")
        .arg(&dead)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("2 invalid (not_json=1, negative_count=1)"),
        "{summary}"
    );

    let alerts: Vec<serde_json::Value> = std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| (a["kind"].as_str().unwrap(), a["status"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("throughput_drop", "firing")), "{kinds:?}");
    assert!(
        kinds.contains(&("throughput_drop", "resolved")),
        "{kinds:?}"
    );

    let scores = std::fs::read_to_string(&scores).unwrap();
    let first: serde_json::Value = serde_json::from_str(scores.lines().next().unwrap()).unwrap();
    for field in [
        "pipeline",
        "stage",
        "metric",
        "detector",
        "bucket_start",
        "bucket_end",
        "value",
        "expected",
        "lower",
        "upper",
        "score",
        "anomalous",
        "warming_up",
    ] {
        assert!(
            first.get(field).is_some(),
            "score line lacks {field}: {first}"
        );
    }
    assert_eq!(first["warming_up"], true);
    assert!(first["score"].is_null());

    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[1]["reason"], "negative_count");
    assert_eq!(dead[1]["field"], "records_out");
    assert_eq!(dead[1]["line"], 13);
}
