//! pipewatch watches data pipelines through the events they publish and raises alerts on
//! throughput and data-quality anomalies.
//!
//! The modules follow the data:
//!
//! ```text
//! source ─▶ decode ─▶ dedup ─▶ window ─▶ detect ─▶ alert ─▶ sink
//!                 └─── engine (drives them, in event time) ────┘
//! ```
//!
//! * [`source`] reads raw messages (Kafka for `run`, NDJSON for replay);
//! * [`decode`] validates untrusted bytes into an [`decode::Event`] or a precise rejection;
//! * [`dedup`] drops an event whose id the engine has seen recently;
//! * [`window`] accumulates per-stage event-time buckets and keeps their history;
//! * [`detect`] scores each closed bucket (EWMA, rolling z-score, silence);
//! * [`alert`] turns anomalies into firing/resolved notifications without duplicates;
//! * [`sink`] writes them out (Kafka, NDJSON);
//! * [`engine`] ties these together; [`run`] (the service, on Kafka), [`replay`] and
//!   [`simulate`] are commands built on it ([`cli`] parses them); [`kafka`] holds what all
//!   Kafka clients share;
//! * [`live`] is what an instance knows now, which [`api`] serves: JSON, `/metrics` and the
//!   dashboard.

pub mod alert;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod dedup;
pub mod detect;
pub mod engine;
pub mod flow;
pub mod kafka;
pub mod live;
pub mod metric;
mod probe_table;
pub mod replay;
pub mod run;
pub mod score;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod time;
pub mod window;
