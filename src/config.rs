//! Operator-facing configuration (`../shared/schema/config.md`).
//!
//! Sources, later ones winning key by key: the built-in `config/default.toml`, the file
//! given with `--config`, then `PIPEWATCH__<SECTION>__<KEY>` environment variables.
//! Everything is validated once, at start: an invalid value names its key, the value and
//! what was expected, and the binary exits with code 2 instead of running half-configured.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The built-in defaults; every key is documented there.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// What replaces a secret wherever the configuration is shown.
pub const REDACTED: &str = "<redacted>";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub window: WindowSettings,
    pub input: InputSettings,
    pub stages: StageSettings,
    pub detection: DetectionSettings,
    #[serde(default)]
    pub metrics: BTreeMap<String, Tuning>,
    #[serde(default)]
    pub overrides: Vec<Tuning>,
    pub silence: SilenceSettings,
    pub flow: FlowSettings,
    pub alerts: AlertSettings,
    pub http: HttpSettings,
    pub email: EmailSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub alert_topic: String,
    pub dead_letter_topic: String,
    /// History re-read from each newly assigned partition before its committed offset, so
    /// that detectors resume with their baselines after a restart or a rebalance.
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// How often processed offsets are committed (after the alerts they caused are delivered).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Longest a graceful stop may take (flush, commit, leave the group) before pipewatch
    /// gives up and exits with an error.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    #[serde(with = "humantime_serde")]
    pub bucket: Duration,
    pub buckets: u32,
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    pub max_event_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    pub dedup_capacity: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSettings {
    pub max_tracked: usize,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_quality_metrics: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    Ewma,
    Zscore,
}

impl DetectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectorKind::Ewma => "ewma",
            DetectorKind::Zscore => "zscore",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    All,
    Any,
}

/// Which side of the band counts as anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Both,
    Up,
    Down,
}

/// The scale detectors learn and score a metric on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// The values as they are: counts and rates, whose noise is roughly symmetric.
    Linear,
    /// `ln(1 + value)`: durations and other right-skewed figures, whose spread grows with
    /// their level; bands become ratios (×1.5, ÷1.5) instead of differences.
    Log,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionSettings {
    pub detectors: Vec<DetectorKind>,
    pub combine: Combine,
    pub scale: Scale,
    pub sensitivity: f64,
    pub critical_score: f64,
    pub training_buckets: u32,
    pub ewma_alpha: f64,
    pub zscore_window: u32,
    pub min_relative_change: f64,
    pub min_absolute_change: f64,
    pub relearn_after: u32,
}

/// A partial set of detection settings: one `[metrics.<glob>]` table or one
/// `[[overrides]]` entry. Unset fields inherit from the layer below.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Only in `[[overrides]]`: glob over "pipeline/stage" (default "*").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<String>,
    /// Only in `[[overrides]]`: glob over metric names (default "*").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Vec<DetectorKind>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub combine: Option<Combine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_buckets: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ewma_alpha: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zscore_window: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_relative_change: Option<f64>,
    /// Overrides `min_relative_change` above the expected value only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_relative_rise: Option<f64>,
    /// Overrides `min_relative_change` below the expected value only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_relative_fall: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_absolute_change: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relearn_after: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceSettings {
    pub enabled: bool,
    pub sensitivity: f64,
    #[serde(with = "humantime_serde")]
    pub min_silence: Duration,
    pub training_gaps: u32,
}

/// Data-flow tracking across stages: runs by correlation id (see `crate::flow`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSettings {
    pub enabled: bool,
    pub max_runs: usize,
    #[serde(with = "humantime_serde")]
    pub run_ttl: Duration,
    pub max_stages_per_pipeline: usize,
    pub loss_tolerance: f64,
    pub loss_min_records: u64,
    pub stuck_factor: f64,
    #[serde(with = "humantime_serde")]
    pub stuck_min: Duration,
    pub stuck_training: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    #[serde(rename = "for")]
    pub for_buckets: u32,
    pub resolve_after: u32,
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    pub max_correlation_ids: usize,
    pub dashboard_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
    /// Bearer token the API's write endpoints require; empty turns them off.
    pub api_token: String,
    /// Stages whose per-stage gauges `/metrics` exports; the rest are counted.
    pub metrics_max_stages: usize,
    /// Notifications kept for `/api/v1/alerts?state=recent`.
    pub recent_alerts: usize,
    /// Silences that may exist at once.
    pub max_silences: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    None,
    Starttls,
    Tls,
}

/// `[email]`: alert mail (`src/sink/email/`). The first eight keys are a contract
/// (`../shared/schema/config.md`); the rest tune grouping, the hourly cap and retries.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    pub enabled: bool,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub tls: EmailTls,
    pub username: String,
    pub password: String,
    pub from: String,
    pub to: Vec<String>,
    /// Bounds one delivery attempt as a whole, and each network read or write in it.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Alerts for one set of recipients that arrive within this of the first are sent
    /// together, as one message.
    #[serde(with = "humantime_serde")]
    pub group_wait: Duration,
    /// Messages sent in any rolling hour, at most; further alerts wait for the next
    /// allowed message (bounded by `max_pending`).
    pub max_per_hour: u32,
    /// Alerts handed over but not yet taken in by the sender task; beyond it they are
    /// dropped and counted, so detection never waits for mail.
    pub queue_capacity: usize,
    /// Alerts held by the sender task (grouping, the hourly cap, retries), at most.
    pub max_pending: usize,
    /// Wait after the first failed attempt; doubles with each further failure...
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// ...up to this.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// `[[email.routes]]`: the first route matching an alert chooses its recipients;
    /// none matching, `to` does.
    #[serde(default)]
    pub routes: Vec<EmailRoute>,
}

/// One `[[email.routes]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailRoute {
    /// Glob over "pipeline/stage" (default "*"), as in `[[overrides]]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<String>,
    /// Glob over metric names (default "*").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Replaces `email.to` for the alerts this route takes.
    pub to: Vec<String>,
}

// Written out so that the password never reaches a log line through `{:?}` (the derived
// impl would print it; `Settings` and everything holding it derive `Debug`).
impl fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = if self.password.is_empty() {
            ""
        } else {
            REDACTED
        };
        f.debug_struct("EmailSettings")
            .field("enabled", &self.enabled)
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &password)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("timeout", &self.timeout)
            .field("group_wait", &self.group_wait)
            .field("max_per_hour", &self.max_per_hour)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_pending", &self.max_pending)
            .field("retry_backoff", &self.retry_backoff)
            .field("retry_max_backoff", &self.retry_max_backoff)
            .field("routes", &self.routes)
            .finish()
    }
}

/// Why the configuration was refused. Its `Display` is what the operator reads.
#[derive(Debug)]
pub enum ConfigError {
    /// A source could not be read or a value had the wrong type (the config crate's
    /// message names the key).
    Load(String),
    /// A value of the right type that is out of range or malformed.
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Load(msg) => write!(f, "invalid configuration: {msg}"),
            ConfigError::Invalid {
                key,
                value,
                expected,
            } => write!(
                f,
                "invalid configuration: `{key}` = {value}: expected {expected}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: impl Into<String>, value: impl fmt::Debug, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: format!("{value:?}"),
        expected: expected.to_string(),
    }
}

impl Settings {
    /// Loads defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment, so tests need not mutate the
    /// process environment.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        use config::{Config, Environment, File, FileFormat};

        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("PIPEWATCH__"))
            .collect();
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        builder = builder.add_source(
            Environment::with_prefix("PIPEWATCH")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("kafka.topics")
                .with_list_parse_key("email.to")
                .with_list_parse_key("detection.detectors")
                .try_parsing(true)
                .source(Some(env)),
        );
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Built-in defaults only; what tests and benchmarks start from.
    pub fn defaults() -> Settings {
        Self::load_with_env(None, std::iter::empty()).expect("built-in defaults are valid")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.window;
        if w.bucket < Duration::from_millis(100) || w.bucket > Duration::from_secs(86_400) {
            return Err(invalid(
                "window.bucket",
                humantime::format_duration(w.bucket).to_string(),
                "a duration from 100ms to 1d",
            ));
        }
        if !(2..=10_000).contains(&w.buckets) {
            return Err(invalid(
                "window.buckets",
                w.buckets,
                "an integer from 2 to 10000",
            ));
        }
        if w.allowed_lateness > w.bucket * w.buckets {
            return Err(invalid(
                "window.allowed_lateness",
                humantime::format_duration(w.allowed_lateness).to_string(),
                "a duration no longer than window.bucket x window.buckets",
            ));
        }
        // Durations are used as i64 milliseconds; bounding them keeps that exact and
        // keeps nonsense (a 300,000,000-year timeout) out.
        let day = Duration::from_secs(86_400);
        let within = |key: &str, value: Duration, min: Duration, max: Duration, expected: &str| {
            if value < min || value > max {
                Err(invalid(
                    key,
                    humantime::format_duration(value).to_string(),
                    expected,
                ))
            } else {
                Ok(())
            }
        };
        within(
            "input.max_future_skew",
            self.input.max_future_skew,
            Duration::ZERO,
            7 * day,
            "a duration up to 7d",
        )?;
        within(
            "stages.idle_timeout",
            self.stages.idle_timeout,
            w.bucket * 2,
            365 * day,
            "a duration from two buckets to 365d",
        )?;
        within(
            "alerts.repeat_interval",
            self.alerts.repeat_interval,
            Duration::ZERO,
            365 * day,
            "a duration up to 365d",
        )?;
        within(
            "silence.min_silence",
            self.silence.min_silence,
            Duration::ZERO,
            30 * day,
            "a duration up to 30d",
        )?;
        if !(256..=16 << 20).contains(&self.input.max_event_bytes) {
            return Err(invalid(
                "input.max_event_bytes",
                self.input.max_event_bytes,
                "a size from 256 to 16777216 bytes",
            ));
        }
        if self.stages.max_tracked == 0 {
            return Err(invalid("stages.max_tracked", 0, "at least 1"));
        }
        if self.stages.max_quality_metrics > 256 {
            return Err(invalid(
                "stages.max_quality_metrics",
                self.stages.max_quality_metrics,
                "at most 256",
            ));
        }
        let d = &self.detection;
        let base = Tuning {
            detectors: Some(d.detectors.clone()),
            combine: Some(d.combine),
            scale: Some(d.scale),
            sensitivity: Some(d.sensitivity),
            critical_score: Some(d.critical_score),
            training_buckets: Some(d.training_buckets),
            ewma_alpha: Some(d.ewma_alpha),
            zscore_window: Some(d.zscore_window),
            min_relative_change: Some(d.min_relative_change),
            min_absolute_change: Some(d.min_absolute_change),
            relearn_after: Some(d.relearn_after),
            ..Tuning::default()
        };
        base.validate("detection", w.buckets)?;
        for (glob, tuning) in &self.metrics {
            let key = format!("metrics.\"{glob}\"");
            compile_glob(&key, glob)?;
            if tuning.stages.is_some() || tuning.metrics.is_some() {
                return Err(invalid(
                    format!("{key}.stages"),
                    "…",
                    "no `stages`/`metrics` selector inside [metrics.*] (use [[overrides]])",
                ));
            }
            tuning.validate(&key, w.buckets)?;
        }
        for (i, tuning) in self.overrides.iter().enumerate() {
            let key = format!("overrides[{i}]");
            compile_glob(
                &format!("{key}.stages"),
                tuning.stages.as_deref().unwrap_or("*"),
            )?;
            compile_glob(
                &format!("{key}.metrics"),
                tuning.metrics.as_deref().unwrap_or("*"),
            )?;
            tuning.validate(&key, w.buckets)?;
        }
        let s = &self.silence;
        if !(s.sensitivity.is_finite() && s.sensitivity > 0.0) {
            return Err(invalid(
                "silence.sensitivity",
                s.sensitivity,
                "a number above 0",
            ));
        }
        if s.training_gaps < 2 {
            return Err(invalid(
                "silence.training_gaps",
                s.training_gaps,
                "at least 2",
            ));
        }
        let a = &self.alerts;
        if a.for_buckets == 0 {
            return Err(invalid("alerts.for", 0, "at least 1"));
        }
        if a.resolve_after == 0 {
            return Err(invalid("alerts.resolve_after", 0, "at least 1"));
        }
        if a.max_correlation_ids > 100 {
            return Err(invalid(
                "alerts.max_correlation_ids",
                a.max_correlation_ids,
                "at most 100",
            ));
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                &self.http.listen,
                "an address such as 127.0.0.1:9898",
            ));
        }
        if self.kafka.topics.is_empty() {
            return Err(invalid("kafka.topics", "[]", "at least one topic"));
        }
        let k = &self.kafka;
        if k.commit_interval < Duration::from_millis(100)
            || k.commit_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "kafka.commit_interval",
                humantime::format_duration(k.commit_interval).to_string(),
                "a duration from 100ms to 1h",
            ));
        }
        if k.shutdown_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "kafka.shutdown_timeout",
                humantime::format_duration(k.shutdown_timeout).to_string(),
                "a duration of 1s or more",
            ));
        }
        let f = &self.flow;
        if f.max_runs == 0 || f.max_runs > 10_000_000 {
            return Err(invalid("flow.max_runs", f.max_runs, "from 1 to 10000000"));
        }
        if f.run_ttl < Duration::from_secs(1) {
            return Err(invalid(
                "flow.run_ttl",
                humantime::format_duration(f.run_ttl).to_string(),
                "a duration of 1s or more",
            ));
        }
        if !(2..=256).contains(&f.max_stages_per_pipeline) {
            return Err(invalid(
                "flow.max_stages_per_pipeline",
                f.max_stages_per_pipeline,
                "from 2 to 256",
            ));
        }
        if !(0.0..1.0).contains(&f.loss_tolerance) {
            return Err(invalid(
                "flow.loss_tolerance",
                f.loss_tolerance,
                "a fraction from 0 (inclusive) to 1",
            ));
        }
        if !(f.stuck_factor.is_finite() && f.stuck_factor >= 1.0) {
            return Err(invalid(
                "flow.stuck_factor",
                f.stuck_factor,
                "a number >= 1",
            ));
        }
        if f.stuck_training == 0 {
            return Err(invalid("flow.stuck_training", 0, "at least 1"));
        }
        let h = &self.http;
        if h.recent_alerts == 0 || h.recent_alerts > 100_000 {
            return Err(invalid(
                "http.recent_alerts",
                h.recent_alerts,
                "from 1 to 100000",
            ));
        }
        if h.max_silences == 0 || h.max_silences > 100_000 {
            return Err(invalid(
                "http.max_silences",
                h.max_silences,
                "from 1 to 100000",
            ));
        }
        if !h.api_token.is_empty() && h.api_token.len() < 16 {
            return Err(invalid(
                "http.api_token",
                REDACTED,
                "empty (write endpoints off) or at least 16 characters",
            ));
        }
        self.email.validate()?;
        Ok(())
    }

    /// A copy that is safe to print or serve: every secret replaced by [`REDACTED`].
    pub fn redacted(&self) -> Settings {
        let mut copy = self.clone();
        if !copy.email.password.is_empty() {
            copy.email.password = REDACTED.to_string();
        }
        if !copy.http.api_token.is_empty() {
            copy.http.api_token = REDACTED.to_string();
        }
        for (name, value) in copy.kafka.properties.iter_mut() {
            if is_secret_property(name) {
                *value = REDACTED.to_string();
            }
        }
        copy
    }

    /// The effective configuration as TOML, secrets redacted (`pipewatch check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(&self.redacted()).expect("settings serialize to TOML")
    }

    pub fn bucket_ms(&self) -> i64 {
        self.window.bucket.as_millis() as i64
    }

    pub fn lateness_ms(&self) -> i64 {
        self.window.allowed_lateness.as_millis() as i64
    }
}

/// librdkafka properties that carry credentials (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.key.pem`, ...).
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "key", "credential"]
        .iter()
        .any(|word| name.contains(word))
}

pub(crate) fn compile_glob(key: &str, pattern: &str) -> Result<globset::GlobMatcher, ConfigError> {
    glob_matcher(pattern).map_err(|e| invalid(key, pattern, &format!("a glob pattern ({e})")))
}

/// The one way pipewatch reads a glob (over "pipeline/stage", metric names, kinds).
pub fn glob_matcher(pattern: &str) -> Result<globset::GlobMatcher, globset::Error> {
    globset::Glob::new(pattern).map(|g| g.compile_matcher())
}

impl EmailSettings {
    /// Checked whether or not email is enabled (but for what only matters to sending):
    /// a mistake should show at `check-config`, not on the day someone turns email on.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.to.is_empty() {
            return Err(invalid(
                "email.to",
                "[]",
                "at least one recipient when email.enabled",
            ));
        }
        if self.enabled && self.smtp_host.trim().is_empty() {
            return Err(invalid("email.smtp_host", &self.smtp_host, "a host name"));
        }
        if self.smtp_port == 0 {
            return Err(invalid("email.smtp_port", 0, "a port from 1 to 65535"));
        }
        // Only when enabled: a password may be set ahead (from a secret store, in the
        // environment) while email is off.
        if self.enabled && self.username.is_empty() != self.password.is_empty() {
            // Which one is missing is safe to say; the password itself never is.
            let (key, value) = if self.username.is_empty() {
                ("email.username", "")
            } else {
                ("email.password", "")
            };
            return Err(invalid(
                key,
                value,
                "email.username and email.password both set (SMTP auth) or both empty",
            ));
        }
        parse_mailbox("email.from", &self.from)?;
        for (i, to) in self.to.iter().enumerate() {
            parse_mailbox(&format!("email.to[{i}]"), to)?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("email.routes[{i}]");
            compile_glob(
                &format!("{key}.stages"),
                route.stages.as_deref().unwrap_or("*"),
            )?;
            compile_glob(
                &format!("{key}.metrics"),
                route.metrics.as_deref().unwrap_or("*"),
            )?;
            if route.to.is_empty() {
                return Err(invalid(format!("{key}.to"), "[]", "at least one recipient"));
            }
            for (j, to) in route.to.iter().enumerate() {
                parse_mailbox(&format!("{key}.to[{j}]"), to)?;
            }
        }
        let duration = |key: &str, value: Duration, min: Duration, max: Duration, expected| {
            if value < min || value > max {
                Err(invalid(
                    key,
                    humantime::format_duration(value).to_string(),
                    expected,
                ))
            } else {
                Ok(())
            }
        };
        let ms = Duration::from_millis;
        let hour = Duration::from_secs(3_600);
        duration(
            "email.timeout",
            self.timeout,
            ms(100),
            hour / 6,
            "a duration from 100ms to 10m",
        )?;
        duration(
            "email.group_wait",
            self.group_wait,
            Duration::ZERO,
            hour,
            "a duration up to 1h",
        )?;
        duration(
            "email.retry_max_backoff",
            self.retry_max_backoff,
            ms(10),
            24 * hour,
            "a duration from 10ms to 1d",
        )?;
        duration(
            "email.retry_backoff",
            self.retry_backoff,
            ms(10),
            self.retry_max_backoff,
            "a duration from 10ms to email.retry_max_backoff",
        )?;
        if !(1..=100_000).contains(&self.max_per_hour) {
            return Err(invalid(
                "email.max_per_hour",
                self.max_per_hour,
                "an integer from 1 to 100000",
            ));
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return Err(invalid(
                "email.queue_capacity",
                self.queue_capacity,
                "an integer from 1 to 1000000",
            ));
        }
        if !(1..=100_000).contains(&self.max_pending) {
            return Err(invalid(
                "email.max_pending",
                self.max_pending,
                "an integer from 1 to 100000",
            ));
        }
        Ok(())
    }
}

/// An address as the mail is built with it: `ops@example.com` or `Ops <ops@example.com>`.
pub(crate) fn parse_mailbox(
    key: &str,
    value: &str,
) -> Result<lettre::message::Mailbox, ConfigError> {
    value.parse().map_err(|e| {
        invalid(
            key,
            value,
            &format!("an email address such as ops@example.com or \"Ops <ops@example.com>\" ({e})"),
        )
    })
}

impl Tuning {
    fn validate(&self, key: &str, history_buckets: u32) -> Result<(), ConfigError> {
        let positive = |field: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && x > 0.0) => {
                Err(invalid(format!("{key}.{field}"), x, "a number above 0"))
            }
            _ => Ok(()),
        };
        let non_negative = |field: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && x >= 0.0) => Err(invalid(
                format!("{key}.{field}"),
                x,
                "a number of 0 or more",
            )),
            _ => Ok(()),
        };
        positive("sensitivity", self.sensitivity)?;
        positive("critical_score", self.critical_score)?;
        non_negative("min_relative_change", self.min_relative_change)?;
        non_negative("min_relative_rise", self.min_relative_rise)?;
        non_negative("min_relative_fall", self.min_relative_fall)?;
        non_negative("min_absolute_change", self.min_absolute_change)?;
        if let Some(alpha) = self.ewma_alpha {
            if !(alpha > 0.0 && alpha <= 1.0) {
                return Err(invalid(
                    format!("{key}.ewma_alpha"),
                    alpha,
                    "a number in (0, 1]",
                ));
            }
        }
        if let Some(n) = self.training_buckets {
            if n < 2 {
                return Err(invalid(format!("{key}.training_buckets"), n, "at least 2"));
            }
        }
        if let Some(n) = self.zscore_window {
            if n < 2 || n > history_buckets {
                return Err(invalid(
                    format!("{key}.zscore_window"),
                    n,
                    &format!("an integer from 2 to window.buckets ({history_buckets})"),
                ));
            }
        }
        if let Some(d) = &self.detectors {
            if d.is_empty() {
                return Err(invalid(
                    format!("{key}.detectors"),
                    "[]",
                    "at least one detector",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::defaults();
        assert_eq!(s.window.bucket, Duration::from_secs(60));
        assert_eq!(s.window.buckets, 60);
        assert_eq!(s.kafka.topics, vec!["pipeline-events"]);
        assert_eq!(s.alerts.for_buckets, 1);
    }

    #[test]
    fn environment_overrides_with_lists() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("PIPEWATCH__KAFKA__TOPICS", "orders-events,billing-events"),
                ("PIPEWATCH__WINDOW__BUCKET", "5m"),
                ("PIPEWATCH__ALERTS__FOR", "3"),
                ("OTHER__THING", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kafka.topics, vec!["orders-events", "billing-events"]);
        assert_eq!(s.window.bucket, Duration::from_secs(300));
        assert_eq!(s.alerts.for_buckets, 3);
    }

    #[test]
    fn file_then_env_precedence_and_dotted_kafka_properties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw.toml");
        std::fs::write(
            &path,
            r#"
[window]
buckets = 90
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.password" = "hunter2"
"#,
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&path), env(&[("PIPEWATCH__WINDOW__BUCKETS", "120")]))
            .unwrap();
        assert_eq!(s.window.buckets, 120, "environment wins over the file");
        assert_eq!(s.kafka.properties["security.protocol"], "SASL_SSL");
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(REDACTED));
        assert!(shown.contains("SASL_SSL"));
    }

    #[test]
    fn invalid_values_name_key_value_and_expectation() {
        let err = Settings::load_with_env(None, env(&[("PIPEWATCH__WINDOW__BUCKETS", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("window.buckets") && err.contains('1') && err.contains("2 to 10000"),
            "{err}"
        );

        let err = Settings::load_with_env(None, env(&[("PIPEWATCH__WINDOW__BUCKET", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("window.bucket") && err.contains("soon"),
            "{err}"
        );

        let err =
            Settings::load_with_env(None, env(&[("PIPEWATCH__DETECTION__EWMA_ALPHA", "1.5")]))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("detection.ewma_alpha") && err.contains("(0, 1]"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw.toml");
        std::fs::write(&path, "[window]\nbukets = 5\n").unwrap();
        let err = Settings::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bukets"), "{err}");
    }

    #[test]
    fn email_password_is_redacted() {
        let s =
            Settings::load_with_env(None, env(&[("PIPEWATCH__EMAIL__PASSWORD", "s3cret-pass")]))
                .unwrap();
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("s3cret-pass"));
        assert_eq!(
            s.email.password, "s3cret-pass",
            "the live value is untouched"
        );
    }

    #[test]
    fn api_token_is_redacted_and_checked() {
        let token = "api-token-0123456789";
        let s =
            Settings::load_with_env(None, env(&[("PIPEWATCH__HTTP__API_TOKEN", token)])).unwrap();
        assert!(!s.to_redacted_toml().contains(token));
        assert_eq!(s.http.api_token, token);
        let err = Settings::load_with_env(None, env(&[("PIPEWATCH__HTTP__API_TOKEN", "short")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http.api_token") && !err.contains("short"),
            "{err}"
        );
    }

    #[test]
    fn email_password_never_shows_in_debug() {
        let s =
            Settings::load_with_env(None, env(&[("PIPEWATCH__EMAIL__PASSWORD", "s3cret-pass")]))
                .unwrap();
        for shown in [format!("{s:?}"), format!("{:?}", s.email)] {
            assert!(!shown.contains("s3cret-pass"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }

    fn email_error(toml: &str, vars: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw.toml");
        std::fs::write(&path, toml).unwrap();
        Settings::load_with_env(Some(&path), env(vars))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn email_routes_load_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw.toml");
        std::fs::write(
            &path,
            r#"
[email]
enabled = true
to = ["oncall@example.com"]
group_wait = "200ms"

[[email.routes]]
stages = "billing/*"
to = ["Billing <billing-oncall@example.com>"]

[[email.routes]]
metrics = "quality.*"
to = ["dq@example.com"]
"#,
        )
        .unwrap();
        let s = Settings::load_with_env(
            Some(&path),
            env(&[("PIPEWATCH__EMAIL__TO", "a@example.com,b@example.com")]),
        )
        .unwrap();
        let e = &s.email;
        assert_eq!(e.to, ["a@example.com", "b@example.com"]);
        assert_eq!(e.group_wait, Duration::from_millis(200));
        assert_eq!(e.routes.len(), 2);
        assert_eq!(e.routes[0].stages.as_deref(), Some("billing/*"));
        assert_eq!(e.routes[0].metrics, None);
        assert_eq!(e.routes[1].to, ["dq@example.com"]);
        // the effective configuration still prints, routes included
        assert!(s.to_redacted_toml().contains("billing-oncall@example.com"));
    }

    #[test]
    fn invalid_email_values_name_key_value_and_expectation() {
        let check = |toml: &str, vars: &[(&str, &str)], needles: &[&str]| {
            let err = email_error(toml, vars);
            for needle in needles {
                assert!(err.contains(needle), "{needle:?} not in {err:?}");
            }
        };
        check(
            "[email]\nfrom = \"not an address\"\n",
            &[],
            &["email.from", "not an address", "email address"],
        );
        check(
            "[email]\nto = [\"ok@example.com\", \"a\\r\\nBcc: evil@x\"]\n",
            &[],
            &["email.to[1]", "email address"],
        );
        check(
            "[[email.routes]]\nstages = \"billing/[\"\nto = [\"b@example.com\"]\n",
            &[],
            &["email.routes[0].stages", "billing/[", "glob"],
        );
        check(
            "[[email.routes]]\nstages = \"b/*\"\nto = []\n",
            &[],
            &["email.routes[0].to", "at least one recipient"],
        );
        check(
            "[[email.routes]]\nto = [\"x@\"]\n",
            &[],
            &["email.routes[0].to[0]", "x@"],
        );
        check(
            "",
            &[("PIPEWATCH__EMAIL__QUEUE_CAPACITY", "0")],
            &["email.queue_capacity", "from 1"],
        );
        check(
            "",
            &[("PIPEWATCH__EMAIL__MAX_PENDING", "0")],
            &["email.max_pending", "from 1"],
        );
        check(
            "",
            &[("PIPEWATCH__EMAIL__MAX_PER_HOUR", "0")],
            &["email.max_per_hour", "from 1"],
        );
        check(
            "",
            &[("PIPEWATCH__EMAIL__TIMEOUT", "10ms")],
            &["email.timeout", "10ms", "100ms to 10m"],
        );
        check(
            "",
            &[("PIPEWATCH__EMAIL__RETRY_BACKOFF", "10m")],
            &["email.retry_backoff", "retry_max_backoff"],
        );
        check(
            "[email]\nenabled = true\nto = [\"a@example.com\"]\nusername = \"u\"\n",
            &[],
            &["email.password", "both set"],
        );
    }
}
