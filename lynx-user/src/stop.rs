//! Waiting that a stop request cuts short.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

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
