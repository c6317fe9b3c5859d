//! [`Policy`]: the rules of the module documentation applied to a stream of observations.
use std::time::Duration;

use super::{
    config::PolicyConfig,
    window::{Averages, Window},
};

/// The group as the caller sees it at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// Monotonic time since an origin of the caller's choosing; never decreasing.
    pub at: Duration,
    pub running: u32,
    pub frozen: u32,
    pub stopped: u32,
    /// CPU % (100 = one full CPU) averaged over the running containers at this instant. A
    /// non-finite or negative value is not recorded (the window keeps its other samples).
    pub cpu_percent_avg: f64,
    /// Requests per second per running container, when the caller knows it; a non-finite or
    /// negative value counts as unknown.
    pub requests_per_s_per_container: Option<f64>,
    /// Whether every event behind these figures was counted. False when a kernel map was
    /// full: the figures are then lower bounds, which may scale the group up but not down.
    pub complete: bool,
}

/// What to do with the group now, relative to the observation's `running`.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Hold {
        reason: String,
    },
    /// Start `by` more containers (the executor picks which: frozen ones first).
    ScaleUp {
        by: u32,
        reason: String,
    },
    /// Put `by` containers away, as `scale_down_action` says.
    ScaleDown {
        by: u32,
        reason: String,
    },
}

impl Decision {
    /// The human reason, with the inputs it was decided from.
    pub fn reason(&self) -> &str {
        match self {
            Self::Hold { reason }
            | Self::ScaleUp { reason, .. }
            | Self::ScaleDown { reason, .. } => reason,
        }
    }
}

/// Which way a scale action went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// A scale action the policy decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    pub at: Duration,
    pub direction: Direction,
    /// Running containers before and after the action.
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// The policy's state for the snapshot, as of the last observation; times are on the
/// caller's clock.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyState {
    /// The earliest a `ScaleUp` can come: now when below `min`, else once the window is full
    /// and the scale-up cooldown over. `None` before the first observation, at `max`, or with
    /// no frozen or stopped container to start.
    pub next_up_at: Option<Duration>,
    /// The earliest a `ScaleDown` can come: now when above `max`, else once the window is full
    /// and the scale-down cooldown over. `None` before the first observation or at `min`.
    pub next_down_at: Option<Duration>,
    pub last_action: Option<Action>,
    /// The reason of the last decision, `None` before the first observation.
    pub reason: Option<String>,
    /// How much of the window has been observed since its last reset.
    pub window_filled: Duration,
    /// The window's averages, `None` without samples; requests/s also `None` when some sample
    /// in the window had none.
    pub cpu_percent_avg: Option<f64>,
    pub requests_per_s_avg: Option<f64>,
}

/// One group's autoscaling policy: feed it observations, carry out its decisions.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    window: Window,
    last: Option<Observation>,
    last_up: Option<Duration>,
    last_down: Option<Duration>,
    last_action: Option<Action>,
    reason: Option<String>,
}

impl Policy {
    /// A policy with no history; `config` should have passed [`PolicyConfig::validate`].
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            window: Window::new(config.window),
            config,
            last: None,
            last_up: None,
            last_down: None,
            last_action: None,
            reason: None,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Records `observation`, then decides.
    pub fn observe(&mut self, observation: Observation) -> Decision {
        let o = observation;
        let decision = match self.last {
            Some(previous) if o.at < previous.at => Decision::Hold {
                reason: format!(
                    "observation at {} is earlier than the previous one at {}: ignored",
                    human(o.at),
                    human(previous.at)
                ),
            },
            previous => {
                if previous.is_some_and(|p| p.running != o.running) {
                    self.window.reset();
                }
                self.last = Some(o);
                let cpu = o.cpu_percent_avg;
                if o.running > 0 && cpu.is_finite() && cpu >= 0.0 {
                    let requests = o
                        .requests_per_s_per_container
                        .filter(|r| r.is_finite() && *r >= 0.0);
                    self.window.record(o.at, cpu, requests, o.complete);
                } else {
                    self.window.evict(o.at);
                }
                self.decide(&o)
            }
        };
        let (direction, to) = match &decision {
            Decision::Hold { .. } => (None, o.running),
            Decision::ScaleUp { by, .. } => {
                self.last_up = Some(o.at);
                (Some(Direction::Up), o.running + by)
            }
            Decision::ScaleDown { by, .. } => {
                self.last_down = Some(o.at);
                (Some(Direction::Down), o.running - by)
            }
        };
        if let Some(direction) = direction {
            // Samples from before the action describe another group size; also when the
            // executor fails and the count stays, the window must refill before a retry.
            self.window.reset();
            self.last_action = Some(Action {
                at: o.at,
                direction,
                from: o.running,
                to,
                reason: decision.reason().to_owned(),
            });
        }
        self.reason = Some(decision.reason().to_owned());
        decision
    }

    /// The state for the snapshot at `now` (not earlier than the last observation).
    pub fn state(&self, now: Duration) -> PolicyState {
        let c = &self.config;
        let full_at = self.window.full_at(now).max(now);
        let (next_up_at, next_down_at) = self.last.map_or((None, None), |o| {
            let spare = o.frozen.saturating_add(o.stopped);
            let up = if spare == 0 || o.running >= c.max {
                None
            } else if o.running < c.min {
                Some(now)
            } else {
                Some(full_at.max(ends(self.last_up, c.scale_up_cooldown)))
            };
            let down = if o.running > c.max {
                Some(now)
            } else if o.running <= c.min {
                None
            } else {
                Some(full_at.max(ends(self.last_scale(), c.scale_down_cooldown)))
            };
            (up, down)
        });
        let averages = self.window.averages();
        PolicyState {
            next_up_at,
            next_down_at,
            last_action: self.last_action.clone(),
            reason: self.reason.clone(),
            window_filled: self.window.filled(now),
            cpu_percent_avg: averages.map(|a| a.cpu_percent),
            requests_per_s_avg: averages.and_then(|a| a.requests_per_s),
        }
    }

    /// The last scale action of either kind.
    fn last_scale(&self) -> Option<Duration> {
        self.last_up.max(self.last_down)
    }

    fn decide(&self, o: &Observation) -> Decision {
        let c = &self.config;
        let spare = o.frozen.saturating_add(o.stopped);
        if o.running < c.min {
            let by = (c.min - o.running).min(spare);
            let reason = format!("{} running < min {}", o.running, c.min);
            return if by == 0 {
                hold(format!(
                    "{reason}, but no frozen or stopped container to start"
                ))
            } else {
                up(o.running, by, reason)
            };
        }
        if o.running > c.max {
            let reason = format!("{} running > max {}", o.running, c.max);
            return down(o.running, o.running - c.max, reason);
        }
        if !self.window.is_full(o.at) {
            return hold(format!(
                "window {} of {} filled",
                human(self.window.filled(o.at)),
                human(c.window)
            ));
        }
        let Some(averages) = self.window.averages() else {
            return hold(format!("no usable sample in the last {}", human(c.window)));
        };
        let signals = self.signals(averages);
        let high: Vec<&Signal> = signals.iter().filter(|s| s.high()).collect();
        if !high.is_empty() {
            let why = join(high.iter().map(|s| s.describe()));
            if o.running >= c.max {
                return hold(format!("{why}, but already at max {}", c.max));
            }
            if let Some(left) = left(self.last_up, c.scale_up_cooldown, o.at) {
                return hold(format!(
                    "{why}, but scale-up cooldown has {} left",
                    human(left)
                ));
            }
            if spare == 0 {
                return hold(format!(
                    "{why}, but no frozen or stopped container to start"
                ));
            }
            let by = c.scale_up_step.min(c.max - o.running).min(spare);
            return up(o.running, by, why);
        }
        let why = join(signals.iter().map(Signal::describe));
        if signals.iter().all(Signal::low) {
            if o.running <= c.min {
                return hold(format!("{why}, but already at min {}", c.min));
            }
            if !averages.complete {
                return hold(format!(
                    "{why}, but some events in the window went uncounted (a kernel map was full, \
                     see kernel_drops): the load may be higher, so no scale-down"
                ));
            }
            if let Some(left) = left(self.last_scale(), c.scale_down_cooldown, o.at) {
                return hold(format!(
                    "{why}, but scale-down cooldown has {} left",
                    human(left)
                ));
            }
            let by = c.scale_down_step.min(o.running - c.min);
            return down(o.running, by, why);
        }
        hold(why)
    }

    /// The load signals that decide: CPU always, requests/s when configured and known over
    /// the whole window.
    fn signals(&self, averages: Averages) -> Vec<Signal> {
        let c = &self.config;
        let over = human(c.window);
        let mut signals = vec![Signal {
            text: format!("cpu {:.1}% avg over {over}", averages.cpu_percent),
            value: averages.cpu_percent,
            down: c.scale_down_cpu_percent,
            up: c.scale_up_cpu_percent,
            unit: "%",
        }];
        if let (Some(down), Some(up), Some(value)) = (
            c.scale_down_requests_per_s,
            c.scale_up_requests_per_s,
            averages.requests_per_s,
        ) {
            signals.push(Signal {
                text: format!("requests {value:.1}/s per container avg over {over}"),
                value,
                down,
                up,
                unit: "/s",
            });
        }
        signals
    }
}

/// One load signal's window average against its thresholds.
struct Signal {
    /// What was measured, e.g. "cpu 83.2% avg over 1m".
    text: String,
    value: f64,
    down: f64,
    up: f64,
    unit: &'static str,
}

impl Signal {
    fn high(&self) -> bool {
        self.value >= self.up
    }

    fn low(&self) -> bool {
        self.value <= self.down
    }

    fn describe(&self) -> String {
        let Self {
            text,
            down,
            up,
            unit,
            ..
        } = self;
        if self.high() {
            format!("{text} >= {up}{unit} up threshold")
        } else if self.low() {
            format!("{text} <= {down}{unit} down threshold")
        } else {
            format!("{text} between the {down}{unit} down and {up}{unit} up thresholds")
        }
    }
}

fn hold(reason: String) -> Decision {
    Decision::Hold { reason }
}

fn up(running: u32, by: u32, why: String) -> Decision {
    Decision::ScaleUp {
        by,
        reason: format!("{why}: +{by} ({running} -> {})", running + by),
    }
}

fn down(running: u32, by: u32, why: String) -> Decision {
    Decision::ScaleDown {
        by,
        reason: format!("{why}: -{by} ({running} -> {})", running - by),
    }
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(" and ")
}

/// When a cooldown started at `since` ends; `ZERO` when none started.
fn ends(since: Option<Duration>, cooldown: Duration) -> Duration {
    since.map_or(Duration::ZERO, |s| s.saturating_add(cooldown))
}

/// What is left at `now` of a cooldown started at `since`, `None` when it is over.
fn left(since: Option<Duration>, cooldown: Duration, now: Duration) -> Option<Duration> {
    let elapsed = now.saturating_sub(since?);
    (elapsed < cooldown).then(|| cooldown - elapsed)
}

/// A duration for reasons, to the millisecond: `1m 30s`, `250ms`.
fn human(duration: Duration) -> String {
    let millis = Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(millis).to_string()
}
