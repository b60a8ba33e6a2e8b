//! Live state: what this instance currently knows, shared between the thread that runs
//! the engines (writer) and the HTTP API, dashboard and `/metrics` (readers).
//!
//! The engines stay single-threaded and unaware of it: a driver (`run`, `replay --serve`)
//! hands over what an engine produced ([`Live::record_alert`] for each alert, then
//! [`Live::observe`] for scored buckets and forgotten stages). Each notification passes
//! here before any sink, which is where silences decide whether a person is emailed.

pub mod alerts;
pub mod silences;
pub mod stages;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::alert::{Alert, AlertStatus};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::engine::Outputs;
use crate::flow::{FlowTracker, SharedFlow};
use crate::telemetry::Telemetry;

use alerts::{AlertBook, Change};
use silences::Silences;
use stages::{Owner, StageBoard};

/// Which driver feeds the live state; readiness means something different for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `pipewatch run`: ready when connected to Kafka with partitions assigned.
    Service,
    /// `pipewatch replay --serve`: ready when the input is fully processed.
    Replay,
}

#[derive(Debug, Default)]
struct Readiness {
    kafka_up: bool,
    assigned_partitions: usize,
    warming_up: usize,
    replay_finished: bool,
}

/// What `/readyz` answers.
#[derive(Debug, Serialize)]
pub struct ReadyReport {
    pub ready: bool,
    /// Why not, when not ready; notes otherwise.
    pub reasons: Vec<String>,
}

pub struct Live {
    pub stages: StageBoard,
    pub alerts: AlertBook,
    pub silences: Silences,
    pub telemetry: Telemetry,
    /// Runs across stages and the pipelines' lineage, shared with the engines.
    pub flow: Option<SharedFlow>,
    pub driver: Driver,
    /// Bearer token of the write endpoints; empty: they are off.
    pub api_token: String,
    pub metrics_max_stages: usize,
    readiness: Mutex<Readiness>,
    /// Bumped whenever what the API shows changes (buckets scored, alerts, silences,
    /// stages gone): the dashboard's live stream tells browsers to refetch when it
    /// moves. One relaxed add per bucket-closing batch, nothing per event.
    version: AtomicU64,
}

impl Live {
    pub fn new(settings: &Settings, driver: Driver) -> Live {
        Live {
            stages: StageBoard::new(settings.window.buckets as usize),
            alerts: AlertBook::new(settings.http.recent_alerts),
            silences: Silences::new(settings.http.max_silences),
            telemetry: Telemetry::new(),
            flow: FlowTracker::shared(settings),
            driver,
            api_token: settings.http.api_token.clone(),
            metrics_max_stages: settings.http.metrics_max_stages,
            readiness: Mutex::new(Readiness::default()),
            version: AtomicU64::new(0),
        }
    }

    /// A number that changes whenever the stages, alerts or silences shown change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Notes that what the API shows changed.
    pub fn changed(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one notification on its way out and says whether to email it. A firing
    /// alert that a silence matches is annotated `silenced_by` and not emailed; it is
    /// still counted, listed and sent to the alert topic.
    pub fn record_alert(&self, alert: &mut Alert) -> bool {
        let silence = match alert.status {
            AlertStatus::Firing => self.silences.silencing(alert, SystemClock.now_ms()),
            AlertStatus::Resolved => None,
        };
        if let Some(id) = &silence {
            alert.annotations.insert("silenced_by", id.clone());
            self.telemetry.notifications_silenced.inc();
        }
        let (change, email) = self.alerts.record(alert, silence.is_none());
        self.note_change(alert, change);
        self.changed();
        self.telemetry.record_alert(alert);
        email
    }

    /// A notification re-derived while warming up from history: restores the alert's
    /// state (it was sent before), sends and counts nothing.
    pub fn restore_alert(&self, alert: &Alert) {
        let change = self.alerts.restore(alert);
        self.note_change(alert, change);
        self.changed();
    }

    fn note_change(&self, alert: &Alert, change: Change) {
        let silence = alert.kind == crate::metric::AlertKind::Silence.as_str();
        match change {
            Change::Started => self
                .stages
                .note_alert(&alert.pipeline, &alert.stage, silence, true),
            Change::Ended => self
                .stages
                .note_alert(&alert.pipeline, &alert.stage, silence, false),
            Change::Repeated | Change::EndedUnknown => {}
        }
    }

    /// Takes in an engine's scored buckets and forgotten stages (draining them), after
    /// its alerts went through [`Live::record_alert`].
    pub fn observe(&self, out: &mut Outputs, owner: Option<&Owner>) {
        if out.scores.is_empty() && out.forgotten.is_empty() {
            return;
        }
        if !out.scores.is_empty() {
            self.stages.add_scores(&out.scores, owner);
            out.scores.clear();
        }
        for (pipeline, stage) in out.forgotten.drain(..) {
            self.stages.forget(&pipeline, &stage);
        }
        self.changed();
    }

    /// Mirrors what the shared data-flow tracker counts into the metrics.
    pub fn record_flow(&self) {
        if let Some(flow) = &self.flow {
            self.telemetry.record_flow(&flow.lock(), flow.waited());
        }
    }

    /// A partition was revoked: its stages and their alerts are now another instance's.
    pub fn revoke(&self, owner: &Owner) {
        let gone = self.stages.forget_owner(owner);
        self.alerts.forget_stages(&gone);
        self.changed();
    }

    /// The service's connection state, for `/readyz`.
    pub fn set_service_state(&self, kafka_up: bool, assigned_partitions: usize, warming_up: usize) {
        let mut r = self.readiness();
        r.kafka_up = kafka_up;
        r.assigned_partitions = assigned_partitions;
        r.warming_up = warming_up;
    }

    pub fn set_replay_finished(&self) {
        self.readiness().replay_finished = true;
    }

    fn readiness(&self) -> std::sync::MutexGuard<'_, Readiness> {
        self.readiness
            .lock()
            .expect("readiness is replaced field by field, never left half-written")
    }

    pub fn ready(&self) -> ReadyReport {
        let r = self.readiness();
        let mut reasons = Vec::new();
        let ready = match self.driver {
            Driver::Service => {
                if !r.kafka_up {
                    reasons.push("not connected to Kafka".to_string());
                }
                if r.assigned_partitions == 0 {
                    reasons.push("no event-topic partitions assigned".to_string());
                }
                let ready = reasons.is_empty();
                if r.warming_up > 0 {
                    reasons.push(format!(
                        "{} partitions warming up from history",
                        r.warming_up
                    ));
                }
                ready
            }
            Driver::Replay => {
                if !r.replay_finished {
                    reasons.push("replay still running".to_string());
                }
                reasons.is_empty()
            }
        };
        ReadyReport { ready, reasons }
    }
}
