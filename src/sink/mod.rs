//! Where alerts and scores go.

pub mod email;
pub mod kafka;
pub mod ndjson;
