//! Helpers shared by integration tests.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

pub mod smtp;
pub mod webdriver;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The pipewatch binary under test, without the developer's `PIPEWATCH__*` settings.
pub fn pipewatch() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pipewatch"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PIPEWATCH__") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// What `pipewatch simulate` wrote: its events, one JSON object a line, and the labels of
/// the faults it injected.
pub struct Simulated {
    pub events: PathBuf,
    pub labels: Vec<Value>,
}

impl Simulated {
    /// The label of the first injected fault of `kind` (`drop`, `records_lost`, …).
    pub fn fault(&self, kind: &str) -> &Value {
        self.labels
            .iter()
            .find(|l| l["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} injected: {:?}", self.labels))
    }
}

/// Runs `pipewatch simulate` with `args`, writing its events and fault labels into `dir`
/// (`events.ndjson`, `labels.ndjson`); panics with its standard error if it fails.
pub fn simulate(dir: &Path, args: &[&str]) -> Simulated {
    let events = dir.join("events.ndjson");
    let labels = dir.join("labels.ndjson");
    let out = pipewatch()
        .arg("simulate")
        .args(args)
        .arg("--output")
        .arg(&events)
        .arg("--labels")
        .arg(&labels)
        .output()
        .expect("pipewatch simulate runs");
    assert!(
        out.status.success(),
        "simulate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels = std::fs::read_to_string(&labels)
        .expect("labels written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a label is JSON"))
        .collect();
    Simulated { events, labels }
}

/// Percent-encodes a URL path segment.
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Calls `attempt` every 100 ms until it gives a value; at `timeout`, panics with its last
/// error and `context()` (a log, say).
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut context: impl FnMut() -> String,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!(
                    "timed out after {timeout:?} waiting for {what}: {last}\n{}",
                    context()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// An HTTP response as a test reads it.
pub struct Reply {
    pub status: u16,
    /// Status line and headers, lowercased.
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a new connection (`Connection: close`): enough for
/// pipewatch's API, Prometheus' and chromedriver's, without an HTTP client crate. The
/// body ends at `Content-Length` when the server sends one (chromedriver keeps the
/// connection open however it is asked), else where the server closes the connection.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let mut expected_len = None;
    loop {
        if let Some(end) = expected_len {
            if raw.len() >= end {
                break;
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if expected_len.is_none() {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
                expected_len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .map(|len| split + 4 + len);
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok(Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// `GET path`, panicking when the server cannot be reached.
pub fn get(address: SocketAddr, path: &str) -> Reply {
    request(address, "GET", path, &[], "")
        .unwrap_or_else(|e| panic!("GET http://{address}{path}: {e}"))
}

/// The lines of one metric family (exact name, any labels) in a text exposition.
pub fn series<'a>(exposition: &'a str, name: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .collect()
}

/// The value of the one series `name` (without labels) in a text exposition.
pub fn value(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
