//! Silences: operator-made rules that mute notifications for a while, as Alertmanager's
//! do. Detection goes on underneath: a silenced alert still fires, is counted, shows in
//! the API and on the alert topic (annotated `silenced_by`); only email stays quiet.
//!
//! Silences are kept in memory by the instance that received them, for wall-clock
//! durations: they are an operator's "I know, I'm on it", not configuration.

use std::sync::RwLock;

use globset::GlobMatcher;
use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::config::glob_matcher;
use crate::time::{parse_rfc3339_ms, serialize_ms};

/// The longest a silence may last: longer ones are configuration in disguise.
const MAX_DURATION_MS: i64 = 90 * 24 * 3_600_000;
const MAX_TEXT: usize = 1_000;

/// A request to create a silence (`POST /api/v1/silences`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    /// Glob over "pipeline/stage".
    pub stages: String,
    /// Glob over metric names (default `*`).
    #[serde(default = "any")]
    pub metric: String,
    /// Glob over alert kinds (default `*`).
    #[serde(default = "any")]
    pub kind: String,
    /// Either an end (RFC 3339) or a duration (humantime, "2h").
    pub ends_at: Option<String>,
    pub duration: Option<String>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub created_by: String,
}

fn any() -> String {
    "*".to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct Silence {
    pub id: String,
    pub stages: String,
    pub metric: String,
    pub kind: String,
    #[serde(serialize_with = "serialize_ms")]
    pub starts_at: i64,
    #[serde(serialize_with = "serialize_ms")]
    pub ends_at: i64,
    pub comment: String,
    pub created_by: String,
    #[serde(skip)]
    matchers: [GlobMatcher; 3],
}

impl Silence {
    fn matches(&self, alert: &Alert) -> bool {
        let [stages, metric, kind] = &self.matchers;
        stages.is_match(format!("{}/{}", alert.pipeline, alert.stage))
            && metric.is_match(&alert.metric)
            && kind.is_match(alert.kind)
    }
}

/// Why a silence was refused; shown to the API caller.
#[derive(Debug, PartialEq)]
pub enum SilenceError {
    Invalid(String),
    TooMany(usize),
}

impl std::fmt::Display for SilenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SilenceError::Invalid(why) => f.write_str(why),
            SilenceError::TooMany(max) => write!(
                f,
                "{max} silences exist already (http.max_silences); delete some first"
            ),
        }
    }
}

pub struct Silences {
    list: RwLock<Vec<Silence>>,
    max: usize,
}

impl Silences {
    pub fn new(max: usize) -> Silences {
        Silences {
            list: RwLock::new(Vec::new()),
            max,
        }
    }

    pub fn create(&self, request: SilenceRequest, now_ms: i64) -> Result<Silence, SilenceError> {
        let invalid = |why: String| SilenceError::Invalid(why);
        let ends_at = match (&request.ends_at, &request.duration) {
            (Some(end), None) => parse_rfc3339_ms(end)
                .ok_or_else(|| invalid(format!("ends_at {end:?} is not an RFC 3339 time")))?,
            (None, Some(d)) => {
                let d = humantime::parse_duration(d)
                    .map_err(|e| invalid(format!("duration {d:?}: {e}")))?;
                now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }
            _ => return Err(invalid("give either ends_at or duration".into())),
        };
        if ends_at <= now_ms {
            return Err(invalid("the silence would end in the past".into()));
        }
        if ends_at - now_ms > MAX_DURATION_MS {
            return Err(invalid("a silence lasts at most 90 days".into()));
        }
        if request.comment.len() > MAX_TEXT || request.created_by.len() > MAX_TEXT {
            return Err(invalid(format!(
                "comment and created_by are at most {MAX_TEXT} bytes"
            )));
        }
        let glob = |key: &str, pattern: &str| {
            if pattern.len() > MAX_TEXT {
                return Err(invalid(format!("{key} is at most {MAX_TEXT} bytes")));
            }
            glob_matcher(pattern).map_err(|e| invalid(format!("{key} {pattern:?}: {e}")))
        };
        let matchers = [
            glob("stages", &request.stages)?,
            glob("metric", &request.metric)?,
            glob("kind", &request.kind)?,
        ];
        let silence = Silence {
            id: uuid::Uuid::new_v4().to_string(),
            stages: request.stages,
            metric: request.metric,
            kind: request.kind,
            starts_at: now_ms,
            ends_at,
            comment: request.comment,
            created_by: request.created_by,
            matchers,
        };
        let mut list = self
            .list
            .write()
            .expect("silences are never left half-updated");
        list.retain(|s| s.ends_at > now_ms);
        if list.len() >= self.max {
            return Err(SilenceError::TooMany(self.max));
        }
        list.push(silence.clone());
        Ok(silence)
    }

    /// The silences in force, oldest first.
    pub fn list(&self, now_ms: i64) -> Vec<Silence> {
        let list = self
            .list
            .read()
            .expect("silences are never left half-updated");
        list.iter()
            .filter(|s| s.ends_at > now_ms)
            .cloned()
            .collect()
    }

    /// Ends a silence at once; false when there is none with this id.
    pub fn delete(&self, id: &str) -> bool {
        let mut list = self
            .list
            .write()
            .expect("silences are never left half-updated");
        let before = list.len();
        list.retain(|s| s.id != id);
        list.len() < before
    }

    /// The id of a silence in force that matches the alert.
    pub fn silencing(&self, alert: &Alert, now_ms: i64) -> Option<String> {
        let list = self
            .list
            .read()
            .expect("silences are never left half-updated");
        list.iter()
            .find(|s| s.ends_at > now_ms && s.matches(alert))
            .map(|s| s.id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(stages: &str, duration: &str) -> SilenceRequest {
        SilenceRequest {
            stages: stages.into(),
            metric: any(),
            kind: any(),
            ends_at: None,
            duration: Some(duration.into()),
            comment: "deploy".into(),
            created_by: "me".into(),
        }
    }

    fn alert(pipeline: &str, stage: &str) -> Alert {
        crate::alert::test_alert(
            pipeline,
            stage,
            "records",
            crate::metric::AlertKind::ThroughputDrop,
        )
    }

    #[test]
    fn matches_by_glob_until_it_ends() {
        let silences = Silences::new(10);
        let s = silences.create(request("billing/*", "1h"), 0).unwrap();
        assert_eq!(
            silences.silencing(&alert("billing", "load"), 1),
            Some(s.id.clone())
        );
        assert_eq!(silences.silencing(&alert("orders", "load"), 1), None);
        assert_eq!(
            silences.silencing(&alert("billing", "load"), 3_600_000),
            None
        );
        assert!(silences.list(3_600_000).is_empty());
        assert!(!silences.delete("nope"));
    }

    #[test]
    fn refuses_bad_requests_and_too_many() {
        let silences = Silences::new(1);
        let mut r = request("*", "1h");
        r.duration = None;
        assert!(silences.create(r, 0).is_err());
        assert!(silences.create(request("[", "1h"), 0).is_err());
        assert!(silences.create(request("*", "100d"), 0).is_err());
        let s = silences.create(request("*", "1h"), 0).unwrap();
        assert_eq!(
            silences.create(request("*", "1h"), 0).unwrap_err(),
            SilenceError::TooMany(1)
        );
        assert!(silences.delete(&s.id));
        assert!(silences.create(request("*", "1h"), 0).is_ok());
    }
}
