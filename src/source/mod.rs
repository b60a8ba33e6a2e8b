//! Where events come from. Every source hands raw message bytes to
//! [`crate::engine::Engine::ingest`]: decoding and validation happen in one place.

pub mod batch;
pub mod kafka;
pub mod ndjson;
