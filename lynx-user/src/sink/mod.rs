//! Sinks: where each snapshot goes once the model has built it. Data flows one way:
//! collectors → model → sinks.
pub mod history;
pub mod json_file;
pub mod prometheus;

use crate::model::Snapshot;

/// A consumer of snapshots. `publish` is called on the collection thread once per interval:
/// it must not block on slow I/O (hand work to a thread of its own instead), and it reports
/// its own faults in the log rather than stopping the daemon.
pub trait Sink {
    fn publish(&mut self, snapshot: &Snapshot);
}
