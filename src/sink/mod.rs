//! Where alerts and scores go.

pub mod ndjson;
