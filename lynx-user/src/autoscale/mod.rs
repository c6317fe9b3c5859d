//! Autoscaling policy: per group of containers, how many to start or to put away, decided
//! from plain observations (counts, CPU %, requests/s) and the caller's monotonic clock. No
//! I/O, no clock reads, no LXD here: the daemon feeds [`Policy::observe`] and an executor
//! carries out the returned [`Decision`] (it picks which containers: unfreeze first).
//!
//! Rules, in the order [`Policy::observe`] applies them:
//!
//! 1. An observation whose `at` is earlier than the previous one is ignored (`Hold`).
//! 2. Out-of-range corrections come first and ignore cooldowns and the window: they are
//!    corrections, not reactions to load, and cooldowns exist to stop flapping. Fewer than
//!    `min` running: `ScaleUp` to `min` (capped at the frozen + stopped containers there are;
//!    `Hold` when there are none). More than `max`: `ScaleDown` to `max`.
//! 3. Threshold decisions need a full window: observations for at least `window` since the
//!    policy started, since the running count last changed, and since the last scale action.
//!    The window is reset on those events because samples taken at another group size
//!    describe another load per container: without the reset, a scale-up shorter than the
//!    window would be followed by a second one driven by the same pre-scale samples. The
//!    averages are plain means of the samples in `(now - window, now]`.
//! 4. Scale up when the CPU average is `>= scale_up_cpu_percent`, or (when configured and
//!    every sample in the window had it) the requests/s average is
//!    `>= scale_up_requests_per_s`: either saturated signal means users wait. At most
//!    `scale_up_step`, capped at `max` and at the frozen + stopped containers there are.
//!    Not within `scale_up_cooldown` of the last `ScaleUp`. A `ScaleDown` does not start the
//!    scale-up cooldown: a load that comes back must get its capacity back quickly, and the
//!    window reset already requires a full window of load measured at the smaller size.
//! 5. Scale down when the CPU average is `<= scale_down_cpu_percent` and the requests/s
//!    average (when configured and available) is `<= scale_down_requests_per_s`: both
//!    signals must be idle. At most `scale_down_step`, capped at `min`. Not within
//!    `scale_down_cooldown` of the last scale action of either kind, so that the warm-up of a
//!    fresh container does not read as idleness. Not when a sample in the window was
//!    incomplete (a kernel map was full, so the figures are lower bounds): low figures that
//!    may be undercounted are no reason to remove capacity.
//! 6. Otherwise `Hold`, with the reason.
//!
//! Every decision is relative to the observation's counts: the executor applies one (or
//! gives up on it) before the next observation is fed, or the policy, which sees only counts,
//! asks again. Hysteresis comes from `scale_down_* < scale_up_*`, checked by
//! [`PolicyConfig::validate`], which the caller runs after deserialising.
mod config;
mod policy;
#[cfg(test)]
mod tests;
mod window;

pub use config::{DownAction, PolicyConfig, PolicyError};
pub use policy::{Action, Decision, Direction, Observation, Policy, PolicyState};
