//! Headless Chromium driven over WebDriver (chromedriver), for tests that look at the
//! dashboard as a person would: a few JSON calls over the HTTP helper of this module's
//! parent, no browser-automation crate or Node.js toolchain to install.
//!
//! Chromium and chromedriver come from Debian (`chromium`, `chromium-driver`, installed by
//! `.ci/run`): the two packages share a version, which chromedriver requires.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A WebDriver error, as chromedriver reports it (`error` is the W3C error code).
#[derive(Debug)]
pub struct WebDriverError {
    pub error: String,
    pub message: String,
}

/// One browser session; the browser and chromedriver are stopped on drop.
pub struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

/// Panics with what to install when Chromium or chromedriver is missing.
pub fn require_tools() {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "the browser tests need headless Chromium and its WebDriver: {} missing; install \
         Debian's packages with `apt-get install -y chromium chromium-driver` (.ci/run does)",
        missing.join(" and ")
    );
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session with a
    /// new profile, `width`×`height` pixels.
    pub fn start(width: u32, height: u32) -> Browser {
        require_tools();
        let port = super::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let profile = tempfile::tempdir().expect("a browser profile dir");
        let mut browser = Browser {
            driver,
            address,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while browser.call("GET", "/status", None).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {address} within 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Flags that work on these machines, as root, without a display or network.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        ));
        args.push(format!("--window-size={width},{height}"));
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                // An alert() stays open, where `alert_text` sees it, instead of being
                // dismissed by the next command.
                "unhandledPromptBehavior": "ignore",
                "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}
        });
        let created = browser
            .call("POST", "/session", Some(capabilities))
            .unwrap_or_else(|e| panic!("chromedriver cannot start Chromium: {e:?}"));
        browser.session = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser
    }

    /// One WebDriver command: its `value`, or the error it answered.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("Content-Type", "application/json")]
        };
        let reply = super::request(self.address, method, path, headers, &body).map_err(|e| {
            WebDriverError {
                error: "io".into(),
                message: e.to_string(),
            }
        })?;
        let answer: Value = serde_json::from_str(&reply.body).map_err(|e| WebDriverError {
            error: "not json".into(),
            message: format!("{e}: {}", reply.body),
        })?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        match value.get("error").and_then(Value::as_str) {
            Some(error) if reply.status >= 400 => Err(WebDriverError {
                error: error.to_string(),
                message: value["message"].as_str().unwrap_or("").to_string(),
            }),
            _ => Ok(value),
        }
    }

    /// A command of this session (`path` after `/session/{id}`), or the error it answered.
    fn try_session_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// [`Self::try_session_call`] where an error can only be a failed test.
    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_session_call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e:?}"))
    }

    /// The first element `css` selects, as WebDriver refers to it.
    fn find(&self, css: &str) -> String {
        let element = self.session_call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element reference")
            .to_string()
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `body` (a function body: `return ...;`) in the page with `args`.
    pub fn script(&self, body: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": body, "args": args })),
        )
    }

    /// Runs `body` every 100 ms until it returns something other than null or false;
    /// returns that. Panics after `timeout`, with `what` and the last value.
    pub fn wait_for(&self, what: &str, timeout: Duration, body: &str, args: Value) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.script(body, args.clone());
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} (last: {value})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the first element `css` selects, as a user would (WebDriver's element click:
    /// scrolled into view, hit-tested). A live page may replace the element between
    /// finding and clicking it: then it is found again.
    pub fn click(&self, css: &str) {
        for _ in 0..5 {
            let path = format!("/element/{}/click", self.find(css));
            match self.try_session_call("POST", &path, Some(json!({}))) {
                Ok(_) => return,
                Err(e) if e.error == "stale element reference" => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("WebDriver POST {path}: {e:?}"),
            }
        }
        panic!("{css} was replaced five times in a row before it could be clicked");
    }

    /// Types `text` into the first element `css` selects, after clearing it.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.session_call("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The text of an open alert, confirm or prompt dialog, if one is open.
    pub fn dialog_text(&self) -> Option<String> {
        match self.try_session_call("GET", "/alert/text", None) {
            Ok(text) => Some(text.as_str().unwrap_or("").to_string()),
            Err(e) if e.error == "no such alert" => None,
            Err(e) => panic!("WebDriver GET /alert/text: {e:?}"),
        }
    }

    /// The browser console's entries since the last call (level, message).
    pub fn console(&self) -> Vec<(String, String)> {
        let entries = self.session_call("POST", "/se/log", Some(json!({ "type": "browser" })));
        entries
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or("").to_string(),
                            e["message"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG of the viewport to `path` (its directory created if need be).
    pub fn screenshot(&self, path: &Path) -> PathBuf {
        let encoded = self.session_call("GET", "/screenshot", None);
        let png = decode_base64(encoded.as_str().expect("base64 PNG"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("screenshot written");
        path.to_path_buf()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_session_call("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding), as WebDriver returns screenshots: a dozen lines
/// rather than a dependency.
pub fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for group in clean.chunks(4) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | value(c) << (18 - 6 * i));
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}
