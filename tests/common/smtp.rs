//! A real SMTP server for tests: `tests/smtp_sink.py` (aiosmtpd, Debian's
//! `python3-aiosmtpd`) on a loopback port, and the messages it received.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Debian's interpreter: the one `python3-aiosmtpd` is installed for (a `python3` earlier
/// on PATH may be another).
const PYTHON: &str = "/usr/bin/python3";
/// How long an expected message may take to arrive.
const PATIENCE: Duration = Duration::from_secs(15);

/// An SMTP server on `port`, killed on drop.
pub struct SmtpServer {
    child: Child,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    pub fn start(port: u16, args: &[&str]) -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = Command::new(PYTHON)
            .arg("-B")
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("/usr/bin/python3 runs (apt-get install python3-aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let server = SmtpServer { child, dir };
        assert_eq!(line.trim(), "ready", "{}", server.stderr());
        server
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Every message received so far, in order.
    pub fn messages(&self) -> Vec<Mail> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| Mail(serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()))
            .collect()
    }

    /// Waits until `n` messages have arrived; returns them.
    pub fn wait_for(&self, n: usize) -> Vec<Mail> {
        let what = format!("{n} message(s)");
        eventually(&what, || {
            let messages = self.messages();
            (messages.len() >= n).then_some(messages)
        })
        .unwrap_or_else(|| {
            panic!(
                "{} arrived, not {what}: {}",
                self.messages().len(),
                self.stderr()
            )
        })
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it gives something or [`PATIENCE`] runs out.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() > deadline {
            eprintln!("gave up waiting for {what}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One received message, as `smtp_sink.py` recorded it.
pub struct Mail(pub Value);

impl Mail {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn headers(&self) -> Vec<(String, String)> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
            .collect()
    }

    pub fn subject(&self) -> String {
        self.header("Subject").expect("a Subject")
    }

    pub fn recipients(&self) -> Vec<String> {
        let mut to: Vec<String> = self.0["rcpt_tos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        to.sort();
        to
    }

    pub fn text(&self) -> &str {
        self.0["text"].as_str().expect("a text/plain part")
    }

    pub fn html(&self) -> &str {
        self.0["html"].as_str().expect("a text/html part")
    }

    /// Both parts, for checks that apply to each.
    pub fn parts(&self) -> [&str; 2] {
        [self.text(), self.html()]
    }
}
