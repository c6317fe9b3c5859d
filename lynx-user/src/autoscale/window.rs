//! The sliding window of samples behind threshold decisions, bounded in memory whatever the
//! window's length and the sampling rate.
use std::{collections::VecDeque, time::Duration};

/// How many buckets a window is cut into. Samples closer together than `window / BUCKETS`
/// share a bucket, so the ring never holds more than `BUCKETS + 2` of them and the window's
/// edge is exact to within one bucket.
const BUCKETS: u32 = 1024;

/// Samples of one stretch of time no longer than the bucket width.
#[derive(Debug)]
struct Bucket {
    first: Duration,
    last: Duration,
    samples: u32,
    cpu_sum: f64,
    /// Samples that carried requests/s; the requests/s average only counts when all did.
    requests_samples: u32,
    requests_sum: f64,
    /// Samples whose figures were lower bounds (some events went uncounted).
    incomplete: u32,
}

/// The window's averages at some instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Averages {
    pub cpu_percent: f64,
    /// `None` when some sample in the window had no requests/s.
    pub requests_per_s: Option<f64>,
    /// Every sample in the window counted every event.
    pub complete: bool,
}

/// Samples in `(now - length, now]` since the last reset.
#[derive(Debug)]
pub(super) struct Window {
    length: Duration,
    bucket_width: Duration,
    /// The first sample since the last reset: the window is full once it is `length` old.
    since: Option<Duration>,
    buckets: VecDeque<Bucket>,
}

impl Window {
    pub fn new(length: Duration) -> Self {
        Self {
            length,
            // At least 1ns so that samples at the same instant share a bucket.
            bucket_width: (length / BUCKETS).max(Duration::from_nanos(1)),
            since: None,
            buckets: VecDeque::new(),
        }
    }

    /// Forgets every sample: the window starts filling again.
    pub fn reset(&mut self) {
        self.since = None;
        self.buckets.clear();
    }

    /// Adds a sample; `at` must not be earlier than the previous one. `complete` is false
    /// when its figures are lower bounds.
    pub fn record(
        &mut self,
        at: Duration,
        cpu_percent: f64,
        requests_per_s: Option<f64>,
        complete: bool,
    ) {
        self.since.get_or_insert(at);
        let bucket = match self.buckets.back_mut() {
            Some(bucket) if at.saturating_sub(bucket.first) < self.bucket_width => bucket,
            _ => {
                self.buckets.push_back(Bucket {
                    first: at,
                    last: at,
                    samples: 0,
                    cpu_sum: 0.0,
                    requests_samples: 0,
                    requests_sum: 0.0,
                    incomplete: 0,
                });
                self.buckets.back_mut().expect("a bucket was just pushed")
            }
        };
        bucket.last = at;
        bucket.samples += 1;
        bucket.cpu_sum += cpu_percent;
        bucket.incomplete += u32::from(!complete);
        if let Some(requests) = requests_per_s {
            bucket.requests_samples += 1;
            bucket.requests_sum += requests;
        }
        self.evict(at);
    }

    /// Drops the buckets whose samples are all at or before `now - length`.
    pub fn evict(&mut self, now: Duration) {
        let Some(edge) = now.checked_sub(self.length) else {
            return;
        };
        while self.buckets.front().is_some_and(|b| b.last <= edge) {
            self.buckets.pop_front();
        }
    }

    /// When the window is (or will be, if samples keep coming) full: `length` after the
    /// first sample since the reset, or after `now` when there is none yet.
    pub fn full_at(&self, now: Duration) -> Duration {
        self.since.unwrap_or(now).saturating_add(self.length)
    }

    /// Whether the samples since the reset span at least the window's length at `now`.
    pub fn is_full(&self, now: Duration) -> bool {
        self.since.is_some() && now >= self.full_at(now)
    }

    /// How much of the window has been observed at `now`, at most its length.
    pub fn filled(&self, now: Duration) -> Duration {
        self.since
            .map_or(Duration::ZERO, |since| now.saturating_sub(since))
            .min(self.length)
    }

    /// The averages over the window at `now` (after [`Window::evict`]), `None` without
    /// samples.
    pub fn averages(&self) -> Option<Averages> {
        let (samples, cpu_sum, requests_samples, requests_sum) = self.buckets.iter().fold(
            (0u64, 0.0, 0u64, 0.0),
            |(samples, cpu, requests_samples, requests), b| {
                (
                    samples + u64::from(b.samples),
                    cpu + b.cpu_sum,
                    requests_samples + u64::from(b.requests_samples),
                    requests + b.requests_sum,
                )
            },
        );
        if samples == 0 {
            return None;
        }
        Some(Averages {
            cpu_percent: cpu_sum / samples as f64,
            requests_per_s: (requests_samples == samples)
                .then(|| requests_sum / requests_samples as f64),
            complete: self.buckets.iter().all(|b| b.incomplete == 0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_stays_bounded_however_many_samples_a_window_holds() {
        let mut window = Window::new(Duration::from_secs(3600));
        for ms in 0..(2 * 3_600_000u64 / 10) {
            window.record(Duration::from_millis(ms * 10), 50.0, Some(1.0), true);
        }
        let held = window.buckets.len();
        assert!(
            held <= BUCKETS as usize + 2,
            "a 1h window at 10ms holds {held} buckets, more than {BUCKETS} + 2"
        );
        let averages = window.averages().expect("the window has samples");
        assert_eq!(averages.cpu_percent, 50.0, "mean of equal samples");
        assert_eq!(averages.requests_per_s, Some(1.0), "mean of equal samples");
    }

    #[test]
    fn the_window_holds_samples_after_now_minus_length() {
        let mut window = Window::new(Duration::from_secs(10));
        for s in 0..=20 {
            window.record(Duration::from_secs(s), s as f64, None, s != 5);
        }
        // (10, 20]: 11..=20, mean 15.5.
        let averages = window.averages().expect("the window has samples");
        assert_eq!(averages.cpu_percent, 15.5, "samples 11..=20 only");
        assert_eq!(averages.requests_per_s, None, "no sample had requests/s");
        assert!(
            averages.complete,
            "the incomplete sample at 5 s left the window"
        );
    }
}
