//! Where alerts and scores go.

pub mod kafka;
pub mod ndjson;
