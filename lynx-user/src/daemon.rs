//! `lynx daemon`: collect every interval and hand each snapshot to the sinks, until told to
//! stop. Faults the daemon can outlive are logged and the loop goes on.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::{
    collector::{CollectError, Collector},
    model, sink,
};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub interval: Duration,
    pub snapshot_path: PathBuf,
}

/// Runs until `stop` is set. Fails only when collection cannot start.
pub fn run(options: &DaemonOptions, stop: &AtomicBool) -> Result<(), CollectError> {
    let mut collector = Collector::start()?;
    let mut previous = collector.sample()?;
    tracing::info!(
        interval = ?options.interval,
        snapshot = %options.snapshot_path.display(),
        "daemon running"
    );
    let mut next_tick = Instant::now() + options.interval;
    while sleep_until(next_tick, stop) {
        // A slow tick must not make the following ones bunch up.
        next_tick = (next_tick + options.interval).max(Instant::now());
        let current = match collector.sample() {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "collection failed; keeping the previous snapshot");
                continue;
            }
        };
        let snapshot = model::snapshot(&previous, &current);
        if let Err(error) = sink::json_file::write(&options.snapshot_path, &snapshot) {
            tracing::warn!(%error, "snapshot not written");
        }
        previous = current;
    }
    tracing::info!("daemon stopping");
    Ok(())
}

/// Sleeps until `deadline` in short steps; false when `stop` was set meanwhile.
pub fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    const STEP: Duration = Duration::from_millis(50);
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(STEP));
    }
}
