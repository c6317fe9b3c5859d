//! The operator's policy for one group: bounds, thresholds, cooldowns, steps. Every key is
//! optional in the config file; the defaults are those of [`PolicyConfig::default`].
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// What a scale-down does to a container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownAction {
    /// Freeze it: it keeps its memory and comes back in milliseconds.
    #[default]
    Freeze,
    /// Stop it: it frees its memory and takes a boot to come back.
    Stop,
}

/// One group's autoscaling policy.
///
/// Defaults: `min = 1`, `max = 10`, `window = "1m"`, `scale_up_cpu_percent = 75`,
/// `scale_down_cpu_percent = 25`, no requests/s thresholds, `scale_up_cooldown = "1m"`,
/// `scale_down_cooldown = "5m"`, steps of 1, `scale_down_action = "freeze"`. Durations are
/// humantime strings (`"90s"`, `"5m"`, `"2h"`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Fewest running containers.
    pub min: u32,
    /// Most running containers.
    pub max: u32,
    /// How long the load must stay past a threshold before a scale action.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// CPU % (100 = one full CPU) averaged over the running containers and the window at or
    /// above which the group scales up.
    pub scale_up_cpu_percent: f64,
    /// CPU % at or below which the group scales down; below the up threshold.
    pub scale_down_cpu_percent: f64,
    /// Requests per second per running container at or above which the group scales up.
    pub scale_up_requests_per_s: Option<f64>,
    /// Requests per second per running container at or below which the group may scale down;
    /// set together with `scale_up_requests_per_s`, below it.
    pub scale_down_requests_per_s: Option<f64>,
    /// No scale-up sooner than this after the last scale-up.
    #[serde(deserialize_with = "duration")]
    pub scale_up_cooldown: Duration,
    /// No scale-down sooner than this after the last scale action of either kind.
    #[serde(deserialize_with = "duration")]
    pub scale_down_cooldown: Duration,
    /// Containers started per scale-up.
    pub scale_up_step: u32,
    /// Containers put away per scale-down.
    pub scale_down_step: u32,
    /// What a scale-down does to a container.
    pub scale_down_action: DownAction,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            min: 1,
            max: 10,
            window: Duration::from_secs(60),
            scale_up_cpu_percent: 75.0,
            scale_down_cpu_percent: 25.0,
            scale_up_requests_per_s: None,
            scale_down_requests_per_s: None,
            scale_up_cooldown: Duration::from_secs(60),
            scale_down_cooldown: Duration::from_secs(300),
            scale_up_step: 1,
            scale_down_step: 1,
            scale_down_action: DownAction::Freeze,
        }
    }
}

/// Why a [`PolicyConfig`] cannot be used; each message names the field and its value.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("min (0) must be at least 1: with no running container there is no load to measure")]
    ZeroMin,
    #[error("max ({max}) must be at least min ({min})")]
    MaxBelowMin { min: u32, max: u32 },
    #[error("window (0s) must be longer than zero")]
    ZeroWindow,
    #[error("{field} (0) must be at least 1")]
    ZeroStep { field: &'static str },
    #[error("{field} ({value}) must be a finite number >= 0")]
    BadThreshold { field: &'static str, value: f64 },
    #[error("{down_field} ({down}) must be below {up_field} ({up})")]
    NoHysteresis {
        down_field: &'static str,
        down: f64,
        up_field: &'static str,
        up: f64,
    },
    #[error("{set} is set ({value}) but {unset} is not: set both or neither")]
    HalfRequests {
        set: &'static str,
        value: f64,
        unset: &'static str,
    },
}

impl PolicyConfig {
    /// Checks what the types cannot: bounds, steps, thresholds and their hysteresis.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.min == 0 {
            return Err(PolicyError::ZeroMin);
        }
        if self.max < self.min {
            return Err(PolicyError::MaxBelowMin {
                min: self.min,
                max: self.max,
            });
        }
        if self.window.is_zero() {
            return Err(PolicyError::ZeroWindow);
        }
        for (field, step) in [
            ("scale_up_step", self.scale_up_step),
            ("scale_down_step", self.scale_down_step),
        ] {
            if step == 0 {
                return Err(PolicyError::ZeroStep { field });
            }
        }
        thresholds(
            ("scale_down_cpu_percent", self.scale_down_cpu_percent),
            ("scale_up_cpu_percent", self.scale_up_cpu_percent),
        )?;
        const DOWN: &str = "scale_down_requests_per_s";
        const UP: &str = "scale_up_requests_per_s";
        match (self.scale_down_requests_per_s, self.scale_up_requests_per_s) {
            (Some(down), Some(up)) => thresholds((DOWN, down), (UP, up)),
            (Some(value), None) => Err(PolicyError::HalfRequests {
                set: DOWN,
                value,
                unset: UP,
            }),
            (None, Some(value)) => Err(PolicyError::HalfRequests {
                set: UP,
                value,
                unset: DOWN,
            }),
            (None, None) => Ok(()),
        }
    }
}

/// A down/up threshold pair: both finite and non-negative, down strictly below up.
fn thresholds(
    (down_field, down): (&'static str, f64),
    (up_field, up): (&'static str, f64),
) -> Result<(), PolicyError> {
    for (field, value) in [(down_field, down), (up_field, up)] {
        if !value.is_finite() || value < 0.0 {
            return Err(PolicyError::BadThreshold { field, value });
        }
    }
    if down >= up {
        return Err(PolicyError::NoHysteresis {
            down_field,
            down,
            up_field,
            up,
        });
    }
    Ok(())
}

/// A humantime duration (`"90s"`, `"5m"`, `"2h"`); unlike `config::parse_interval` not capped
/// at an hour, since windows and cooldowns may be longer.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}
