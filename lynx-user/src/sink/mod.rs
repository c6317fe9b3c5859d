//! Sinks: where snapshots go.
pub mod json_file;
