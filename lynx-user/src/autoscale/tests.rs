//! The rules with concrete numbers, then as properties over random configs and loads.
use std::time::Duration;

use super::*;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// min 1, max 10, 10s window, cpu 25..75, cooldowns 60s up and 100s down, steps of 1.
fn config() -> PolicyConfig {
    PolicyConfig {
        min: 1,
        max: 10,
        window: secs(10),
        scale_up_cpu_percent: 75.0,
        scale_down_cpu_percent: 25.0,
        scale_up_requests_per_s: None,
        scale_down_requests_per_s: None,
        scale_up_cooldown: secs(60),
        scale_down_cooldown: secs(100),
        scale_up_step: 1,
        scale_down_step: 1,
        scale_down_action: DownAction::Freeze,
    }
}

/// The containers of a simulated group, which carries out decisions at once.
#[derive(Clone, Copy, Debug)]
struct Group {
    running: u32,
    frozen: u32,
    stopped: u32,
}

impl Group {
    fn new(running: u32, frozen: u32, stopped: u32) -> Self {
        Self {
            running,
            frozen,
            stopped,
        }
    }

    fn observe(self, at: Duration, cpu: f64, requests: Option<f64>) -> Observation {
        Observation {
            at,
            running: self.running,
            frozen: self.frozen,
            stopped: self.stopped,
            cpu_percent_avg: cpu,
            requests_per_s_per_container: requests,
            complete: true,
        }
    }

    /// Carries out `decision`, unfreezing before starting.
    fn apply(&mut self, decision: &Decision, action: DownAction) {
        match *decision {
            Decision::Hold { .. } => {}
            Decision::ScaleUp { by, .. } => {
                assert!(
                    by <= self.frozen + self.stopped,
                    "{decision:?} asks for more than the {} frozen and {} stopped containers",
                    self.frozen,
                    self.stopped
                );
                let thawed = by.min(self.frozen);
                self.frozen -= thawed;
                self.stopped -= by - thawed;
                self.running += by;
            }
            Decision::ScaleDown { by, .. } => {
                assert!(
                    by <= self.running,
                    "{decision:?} with {} running",
                    self.running
                );
                self.running -= by;
                match action {
                    DownAction::Freeze => self.frozen += by,
                    DownAction::Stop => self.stopped += by,
                }
            }
        }
    }
}

/// Feeds one observation a second for `seconds` (inclusive) at a constant load, carrying out
/// the decisions; returns the non-`Hold` ones with their time in seconds.
fn feed(
    policy: &mut Policy,
    group: &mut Group,
    seconds: std::ops::RangeInclusive<u64>,
    cpu: f64,
    requests: Option<f64>,
) -> Vec<(u64, Decision)> {
    let mut actions = Vec::new();
    for s in seconds {
        let decision = policy.observe(group.observe(secs(s), cpu, requests));
        group.apply(&decision, policy.config().scale_down_action);
        if !matches!(decision, Decision::Hold { .. }) {
            actions.push((s, decision));
        }
    }
    actions
}

fn up(by: u32, reason: &str) -> Decision {
    Decision::ScaleUp {
        by,
        reason: reason.to_owned(),
    }
}

fn down(by: u32, reason: &str) -> Decision {
    Decision::ScaleDown {
        by,
        reason: reason.to_owned(),
    }
}

fn hold(reason: &str) -> Decision {
    Decision::Hold {
        reason: reason.to_owned(),
    }
}

#[test]
fn no_threshold_decision_before_the_window_is_full() {
    let mut policy = Policy::new(PolicyConfig {
        window: secs(60),
        ..config()
    });
    let mut group = Group::new(2, 3, 0);
    let decision = policy.observe(group.observe(secs(0), 90.0, None));
    assert_eq!(decision, hold("window 0s of 1m filled"), "first sample");
    assert_eq!(
        feed(&mut policy, &mut group, 1..=59, 90.0, None),
        [],
        "1..59s"
    );
    assert_eq!(
        policy.observe(group.observe(secs(12), 90.0, None)).reason(),
        "observation at 12s is earlier than the previous one at 59s: ignored",
        "out of order"
    );
    assert_eq!(
        feed(&mut policy, &mut group, 60..=60, 90.0, None),
        [(
            60,
            up(1, "cpu 90.0% avg over 1m >= 75% up threshold: +1 (2 -> 3)")
        )],
        "the window is full at 60s"
    );
}

#[test]
fn the_window_average_decides_not_a_single_sample() {
    let config = PolicyConfig {
        window: secs(60),
        ..config()
    };
    // One spike among moderate samples: the average over (0s, 60s] is (59 * 50 + 200) / 60.
    let mut policy = Policy::new(config.clone());
    let mut group = Group::new(2, 3, 0);
    assert_eq!(
        feed(&mut policy, &mut group, 0..=59, 50.0, None),
        [],
        "moderate"
    );
    assert_eq!(
        policy.observe(group.observe(secs(60), 200.0, None)),
        hold("cpu 52.5% avg over 1m between the 25% down and 75% up thresholds"),
        "a spike alone does not scale up"
    );
    // One idle sample among busy ones: the average stays 59 * 90 / 60.
    let mut policy = Policy::new(config);
    let mut group = Group::new(2, 3, 0);
    assert_eq!(
        feed(&mut policy, &mut group, 0..=59, 90.0, None),
        [],
        "busy"
    );
    assert_eq!(
        policy.observe(group.observe(secs(60), 0.0, None)),
        up(1, "cpu 88.5% avg over 1m >= 75% up threshold: +1 (2 -> 3)"),
        "a dip alone does not hold back"
    );
}

#[test]
fn scale_up_waits_for_its_cooldown_and_for_a_refilled_window() {
    let mut policy = Policy::new(config());
    let mut group = Group::new(2, 5, 0);
    let times: Vec<u64> = feed(&mut policy, &mut group, 0..=200, 90.0, None)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    // The window refills by 21s after the first, but the 60s cooldown holds until 70s.
    assert_eq!(times, [10, 70, 130, 190], "scale-up times");
    assert_eq!(group.running, 6, "four scale-ups from 2");
    let mut policy = Policy::new(config());
    let mut group = Group::new(2, 5, 0);
    feed(&mut policy, &mut group, 0..=10, 90.0, None);
    assert_eq!(
        policy.observe(group.observe(secs(30), 90.0, None)).reason(),
        "window 0s of 10s filled",
        "the count changed at 30s"
    );
    feed(&mut policy, &mut group, 31..=49, 90.0, None);
    assert_eq!(
        policy.observe(group.observe(secs(50), 90.0, None)).reason(),
        "cpu 90.0% avg over 10s >= 75% up threshold, but scale-up cooldown has 20s left",
        "in cooldown"
    );
}

#[test]
fn scale_down_waits_for_its_cooldown_after_either_action() {
    let mut policy = Policy::new(PolicyConfig {
        scale_up_cooldown: Duration::ZERO,
        ..config()
    });
    let mut group = Group::new(2, 5, 0);
    assert_eq!(
        feed(&mut policy, &mut group, 0..=10, 90.0, None).len(),
        1,
        "one scale-up at 10s"
    );
    feed(&mut policy, &mut group, 11..=49, 10.0, None);
    assert_eq!(
        policy.observe(group.observe(secs(50), 10.0, None)).reason(),
        "cpu 10.0% avg over 10s <= 25% down threshold, but scale-down cooldown has 1m left",
        "a fresh container's warm-up"
    );
    assert_eq!(
        feed(&mut policy, &mut group, 51..=300, 10.0, None),
        [
            (
                110,
                down(
                    1,
                    "cpu 10.0% avg over 10s <= 25% down threshold: -1 (3 -> 2)"
                )
            ),
            (
                210,
                down(
                    1,
                    "cpu 10.0% avg over 10s <= 25% down threshold: -1 (2 -> 1)"
                )
            )
        ],
        "100s apart"
    );
    assert_eq!((group.running, group.frozen), (1, 6), "frozen, not stopped");
    assert_eq!(
        policy
            .observe(group.observe(secs(400), 10.0, None))
            .reason(),
        "cpu 10.0% avg over 10s <= 25% down threshold, but already at min 1",
        "at min"
    );
}

#[test]
fn scale_down_does_not_start_the_scale_up_cooldown() {
    let mut policy = Policy::new(PolicyConfig {
        scale_up_cooldown: secs(300),
        scale_down_cooldown: Duration::ZERO,
        ..config()
    });
    let mut group = Group::new(3, 2, 0);
    assert_eq!(
        feed(&mut policy, &mut group, 0..=10, 10.0, None),
        [(
            10,
            down(
                1,
                "cpu 10.0% avg over 10s <= 25% down threshold: -1 (3 -> 2)"
            )
        )],
        "idle"
    );
    // Only the window, which restarts at 11s, stands between the scale-down and this.
    assert_eq!(
        feed(&mut policy, &mut group, 11..=30, 90.0, None),
        [(
            21,
            up(1, "cpu 90.0% avg over 10s >= 75% up threshold: +1 (2 -> 3)")
        )],
        "busy again"
    );
}

#[test]
fn below_min_is_restored_at_once_even_in_cooldown() {
    let config = PolicyConfig { min: 2, ..config() };
    let mut policy = Policy::new(config.clone());
    let decision = policy.observe(Group::new(0, 1, 5).observe(secs(0), 0.0, None));
    assert_eq!(
        decision,
        up(2, "0 running < min 2: +2 (0 -> 2)"),
        "from zero"
    );

    let mut policy = Policy::new(config.clone());
    let mut group = Group::new(2, 0, 3);
    feed(&mut policy, &mut group, 0..=10, 90.0, None);
    let crashed = Group::new(1, 0, 4);
    assert_eq!(
        policy.observe(crashed.observe(secs(11), 90.0, None)),
        up(1, "1 running < min 2: +1 (1 -> 2)"),
        "one second after a scale-up"
    );

    let mut policy = Policy::new(PolicyConfig { min: 3, ..config });
    assert_eq!(
        policy.observe(Group::new(0, 1, 0).observe(secs(0), 0.0, None)),
        up(1, "0 running < min 3: +1 (0 -> 1)"),
        "capped at what exists"
    );
    assert_eq!(
        policy.observe(Group::new(1, 0, 0).observe(secs(1), 0.0, None)),
        hold("1 running < min 3, but no frozen or stopped container to start"),
        "nothing to start"
    );
}

#[test]
fn above_max_is_corrected_at_once_even_in_cooldown() {
    let mut policy = Policy::new(PolicyConfig { max: 3, ..config() });
    let mut group = Group::new(3, 0, 0);
    assert_eq!(
        feed(&mut policy, &mut group, 0..=10, 10.0, None).len(),
        1,
        "a scale-down at 10s"
    );
    assert_eq!(
        policy.observe(Group::new(6, 0, 0).observe(secs(11), 10.0, None)),
        down(3, "6 running > max 3: -3 (6 -> 3)"),
        "one second later"
    );
}

#[test]
fn steps_are_clamped_to_the_bounds_and_to_what_exists() {
    let busy = |config: PolicyConfig, group: Group| {
        let mut policy = Policy::new(config);
        let mut group = group;
        feed(&mut policy, &mut group, 0..=10, 90.0, None)
            .pop()
            .map_or_else(
                || policy.state(secs(10)).reason,
                |(_, d)| Some(d.reason().to_owned()),
            )
            .expect("a reason")
    };
    let steps = PolicyConfig {
        max: 4,
        scale_up_step: 3,
        scale_down_step: 5,
        min: 2,
        ..config()
    };
    assert_eq!(
        busy(steps.clone(), Group::new(3, 5, 0)),
        "cpu 90.0% avg over 10s >= 75% up threshold: +1 (3 -> 4)",
        "clamped to max"
    );
    assert_eq!(
        busy(steps.clone(), Group::new(2, 1, 0)),
        "cpu 90.0% avg over 10s >= 75% up threshold: +1 (2 -> 3)",
        "clamped to what exists"
    );
    assert_eq!(
        busy(steps.clone(), Group::new(2, 0, 0)),
        "cpu 90.0% avg over 10s >= 75% up threshold, but no frozen or stopped container to start",
        "nothing to start"
    );
    assert_eq!(
        busy(steps.clone(), Group::new(4, 1, 0)),
        "cpu 90.0% avg over 10s >= 75% up threshold, but already at max 4",
        "at max"
    );
    let mut policy = Policy::new(steps);
    let mut group = Group::new(4, 0, 0);
    assert_eq!(
        feed(&mut policy, &mut group, 0..=10, 0.0, None),
        [(
            10,
            down(
                2,
                "cpu 0.0% avg over 10s <= 25% down threshold: -2 (4 -> 2)"
            )
        )],
        "clamped to min"
    );
}

#[test]
fn requests_per_second_scale_up_alone_but_down_only_with_cpu() {
    let config = PolicyConfig {
        scale_up_requests_per_s: Some(100.0),
        scale_down_requests_per_s: Some(10.0),
        ..config()
    };
    let first = |cpu: f64, requests: Option<f64>| {
        let mut policy = Policy::new(config.clone());
        let mut group = Group::new(2, 1, 0);
        feed(&mut policy, &mut group, 0..=10, cpu, requests)
            .pop()
            .map_or_else(
                || policy.state(secs(10)).reason,
                |(_, d)| Some(d.reason().to_owned()),
            )
            .expect("a reason")
    };
    assert_eq!(
        first(30.0, Some(150.0)),
        "requests 150.0/s per container avg over 10s >= 100/s up threshold: +1 (2 -> 3)",
        "requests alone"
    );
    assert_eq!(
        first(90.0, Some(150.0)),
        "cpu 90.0% avg over 10s >= 75% up threshold and requests 150.0/s per container avg \
         over 10s >= 100/s up threshold: +1 (2 -> 3)",
        "both"
    );
    assert_eq!(
        first(10.0, Some(50.0)),
        "cpu 10.0% avg over 10s <= 25% down threshold and requests 50.0/s per container avg \
         over 10s between the 10/s down and 100/s up thresholds",
        "idle CPU, busy enough requests"
    );
    assert_eq!(
        first(10.0, Some(5.0)),
        "cpu 10.0% avg over 10s <= 25% down threshold and requests 5.0/s per container avg \
         over 10s <= 10/s down threshold: -1 (2 -> 1)",
        "both idle"
    );
    assert_eq!(
        first(10.0, None),
        "cpu 10.0% avg over 10s <= 25% down threshold: -1 (2 -> 1)",
        "no requests/s: CPU alone"
    );
    // Requests/s missing from one sample of the window: CPU alone decides.
    let mut policy = Policy::new(config.clone());
    let mut group = Group::new(2, 1, 0);
    feed(&mut policy, &mut group, 0..=4, 30.0, Some(500.0));
    feed(&mut policy, &mut group, 5..=5, 30.0, None);
    assert_eq!(
        feed(&mut policy, &mut group, 6..=10, 30.0, Some(500.0)),
        [],
        "one sample without requests/s"
    );
    assert_eq!(
        policy.state(secs(10)).requests_per_s_avg,
        None,
        "not averaged"
    );
}

#[test]
fn a_change_in_running_restarts_the_window() {
    let mut policy = Policy::new(config());
    let mut group = Group::new(2, 3, 0);
    feed(&mut policy, &mut group, 0..=5, 90.0, None);
    group.running = 3; // The operator started one.
    group.frozen = 2;
    let times: Vec<u64> = feed(&mut policy, &mut group, 6..=20, 90.0, None)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(times, [16], "a full window after the change at 6s");
}

#[test]
fn an_action_that_did_not_happen_is_asked_again_after_a_refilled_window() {
    let mut policy = Policy::new(PolicyConfig {
        scale_up_cooldown: Duration::ZERO,
        ..config()
    });
    let stuck = Group::new(2, 3, 0); // The executor fails: the count stays.
    let times: Vec<u64> = (0..=25)
        .filter(|&s| {
            let decision = policy.observe(stuck.observe(secs(s), 90.0, None));
            matches!(decision, Decision::ScaleUp { .. })
        })
        .collect();
    assert_eq!(times, [10, 21], "not at every observation after 10s");
}

#[test]
fn state_tells_when_the_next_actions_can_come() {
    let mut policy = Policy::new(config());
    let empty = policy.state(secs(0));
    assert_eq!(
        (empty.next_up_at, empty.next_down_at, empty.reason),
        (None, None, None),
        "before any observation"
    );
    let mut group = Group::new(2, 5, 0);
    feed(&mut policy, &mut group, 0..=5, 90.0, None);
    let filling = policy.state(secs(5));
    assert_eq!(filling.window_filled, secs(5), "half the window");
    assert_eq!(filling.cpu_percent_avg, Some(90.0), "average so far");
    assert_eq!(
        filling.next_up_at,
        Some(secs(10)),
        "when the window is full"
    );
    feed(&mut policy, &mut group, 6..=10, 90.0, None);
    let state = policy.state(secs(10));
    let reason = "cpu 90.0% avg over 10s >= 75% up threshold: +1 (2 -> 3)";
    assert_eq!(
        state,
        PolicyState {
            next_up_at: Some(secs(70)),
            next_down_at: Some(secs(110)),
            last_action: Some(Action {
                at: secs(10),
                direction: Direction::Up,
                from: 2,
                to: 3,
                reason: reason.to_owned(),
            }),
            reason: Some(reason.to_owned()),
            window_filled: Duration::ZERO,
            cpu_percent_avg: None,
            requests_per_s_avg: None,
        },
        "after a scale-up"
    );
    let at_min = Group::new(1, 0, 0).observe(secs(11), 10.0, None);
    policy.observe(at_min);
    let state = policy.state(secs(11));
    assert_eq!(
        (state.next_up_at, state.next_down_at),
        (None, None),
        "nothing to start, nothing to put away"
    );
}

mod validate {
    use super::*;

    fn error(config: PolicyConfig) -> String {
        config
            .validate()
            .expect_err("an invalid config")
            .to_string()
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(PolicyConfig::default().validate(), Ok(()), "defaults");
        assert_eq!(config().validate(), Ok(()), "the tests' config");
    }

    #[test]
    fn each_error_names_the_field_and_value() {
        let c = config;
        let cases = [
            (
                PolicyConfig { min: 0, ..c() },
                "min (0) must be at least 1: with no running container there is no load to \
                 measure",
            ),
            (
                PolicyConfig {
                    min: 4,
                    max: 3,
                    ..c()
                },
                "max (3) must be at least min (4)",
            ),
            (
                PolicyConfig {
                    window: Duration::ZERO,
                    ..c()
                },
                "window (0s) must be longer than zero",
            ),
            (
                PolicyConfig {
                    scale_up_step: 0,
                    ..c()
                },
                "scale_up_step (0) must be at least 1",
            ),
            (
                PolicyConfig {
                    scale_down_step: 0,
                    ..c()
                },
                "scale_down_step (0) must be at least 1",
            ),
            (
                PolicyConfig {
                    scale_down_cpu_percent: 70.0,
                    scale_up_cpu_percent: 60.0,
                    ..c()
                },
                "scale_down_cpu_percent (70) must be below scale_up_cpu_percent (60)",
            ),
            (
                PolicyConfig {
                    scale_down_cpu_percent: 60.0,
                    scale_up_cpu_percent: 60.0,
                    ..c()
                },
                "scale_down_cpu_percent (60) must be below scale_up_cpu_percent (60)",
            ),
            (
                PolicyConfig {
                    scale_down_cpu_percent: -1.0,
                    ..c()
                },
                "scale_down_cpu_percent (-1) must be a finite number >= 0",
            ),
            (
                PolicyConfig {
                    scale_up_cpu_percent: f64::NAN,
                    ..c()
                },
                "scale_up_cpu_percent (NaN) must be a finite number >= 0",
            ),
            (
                PolicyConfig {
                    scale_up_requests_per_s: Some(50.5),
                    ..c()
                },
                "scale_up_requests_per_s is set (50.5) but scale_down_requests_per_s is not: \
                 set both or neither",
            ),
            (
                PolicyConfig {
                    scale_down_requests_per_s: Some(5.0),
                    ..c()
                },
                "scale_down_requests_per_s is set (5) but scale_up_requests_per_s is not: set \
                 both or neither",
            ),
            (
                PolicyConfig {
                    scale_down_requests_per_s: Some(100.0),
                    scale_up_requests_per_s: Some(10.0),
                    ..c()
                },
                "scale_down_requests_per_s (100) must be below scale_up_requests_per_s (10)",
            ),
            (
                PolicyConfig {
                    scale_down_requests_per_s: Some(1.0),
                    scale_up_requests_per_s: Some(f64::INFINITY),
                    ..c()
                },
                "scale_up_requests_per_s (inf) must be a finite number >= 0",
            ),
        ];
        for (config, message) in cases {
            assert_eq!(error(config), message, "validate's message");
        }
    }

    #[test]
    fn toml_keys_are_all_optional_with_long_durations() {
        let parse = |text: &str| toml::from_str::<PolicyConfig>(text).map_err(|e| e.to_string());
        assert_eq!(parse(""), Ok(PolicyConfig::default()), "empty");
        let parsed = parse(
            "min = 2\nmax = 8\nwindow = \"2h\"\nscale_up_cpu_percent = 80\n\
             scale_down_cpu_percent = 20.5\nscale_up_requests_per_s = 200\n\
             scale_down_requests_per_s = 20\nscale_up_cooldown = \"90s\"\n\
             scale_down_cooldown = \"1day\"\nscale_up_step = 2\nscale_down_step = 1\n\
             scale_down_action = \"stop\"\n",
        )
        .expect("every key");
        assert_eq!(
            parsed,
            PolicyConfig {
                min: 2,
                max: 8,
                window: secs(7200),
                scale_up_cpu_percent: 80.0,
                scale_down_cpu_percent: 20.5,
                scale_up_requests_per_s: Some(200.0),
                scale_down_requests_per_s: Some(20.0),
                scale_up_cooldown: secs(90),
                scale_down_cooldown: secs(86400),
                scale_up_step: 2,
                scale_down_step: 1,
                scale_down_action: DownAction::Stop,
            },
            "every key"
        );
        let unknown = parse("scale_up_cpu = 80\n").expect_err("an unknown key");
        assert!(
            unknown.contains("unknown field `scale_up_cpu`"),
            "{unknown}"
        );
        let bad = parse("window = \"soon\"\n").expect_err("not a duration");
        assert!(bad.contains("\"soon\""), "{bad}");
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn valid_config() -> impl Strategy<Value = PolicyConfig> {
        (
            (1u32..5, 0u32..8, 500u64..60_000),
            (0.0f64..80.0, 1.0f64..100.0),
            proptest::option::of((0.0f64..50.0, 1.0f64..100.0)),
            (
                0u64..120_000,
                0u64..120_000,
                1u32..4,
                1u32..4,
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (min, extra, window_ms),
                    (down, gap),
                    requests,
                    (up_ms, down_ms, up_step, down_step, stop),
                )| PolicyConfig {
                    min,
                    max: min + extra,
                    window: Duration::from_millis(window_ms),
                    scale_up_cpu_percent: down + gap,
                    scale_down_cpu_percent: down,
                    scale_up_requests_per_s: requests.map(|(down, gap)| down + gap),
                    scale_down_requests_per_s: requests.map(|(down, _)| down),
                    scale_up_cooldown: Duration::from_millis(up_ms),
                    scale_down_cooldown: Duration::from_millis(down_ms),
                    scale_up_step: up_step,
                    scale_down_step: down_step,
                    scale_down_action: if stop {
                        DownAction::Stop
                    } else {
                        DownAction::Freeze
                    },
                },
            )
            .prop_filter("valid", |c| c.validate().is_ok())
    }

    /// Observation steps: milliseconds since the previous one, CPU %, requests/s.
    fn loads() -> impl Strategy<Value = Vec<(u64, f64, Option<f64>)>> {
        proptest::collection::vec(
            (
                0u64..5_000,
                0.0f64..200.0,
                proptest::option::weighted(0.9, 0.0f64..300.0),
            ),
            1..300,
        )
    }

    /// A group size in `[min, max]` from a fraction.
    fn inside(config: &PolicyConfig, fraction: f64) -> u32 {
        config.min + ((config.max - config.min) as f64 * fraction) as u32
    }

    proptest! {
        #[test]
        fn running_moves_into_and_stays_in_min_max(
            config in valid_config(),
            (running, frozen, stopped) in (0u32..15, 0u32..6, 0u32..6),
            loads in loads(),
        ) {
            let mut policy = Policy::new(config.clone());
            let mut group = Group::new(running, frozen, stopped);
            let mut at = Duration::ZERO;
            for (step_ms, cpu, requests) in loads {
                at += Duration::from_millis(step_ms);
                let before = group;
                let decision = policy.observe(group.observe(at, cpu, requests));
                group.apply(&decision, config.scale_down_action);
                let (min, max, after) = (config.min, config.max, group.running);
                let spare = before.frozen + before.stopped;
                if (min..=max).contains(&before.running) {
                    prop_assert!(
                        (min..=max).contains(&after),
                        "{} -> {after} leaves {min}..={max}: {decision:?}",
                        before.running
                    );
                } else if before.running < min {
                    prop_assert_eq!(
                        after,
                        min.min(before.running + spare),
                        "below min with {} spare: {:?}",
                        spare,
                        decision
                    );
                } else {
                    prop_assert_eq!(after, max, "above max: {:?}", decision);
                }
            }
        }

        #[test]
        fn cooldowns_window_and_steps_bound_threshold_actions(
            config in valid_config(),
            (running, frozen, stopped) in (0u32..15, 0u32..6, 0u32..6),
            loads in loads(),
            // Per observation: 0 nothing, 1 a container crashes, 2 the operator starts one.
            events in proptest::collection::vec(
                proptest::sample::select(vec![0u8, 0, 0, 0, 0, 0, 0, 0, 1, 2]),
                300,
            ),
        ) {
            let mut policy = Policy::new(config.clone());
            let mut group = Group::new(running, frozen, stopped);
            let mut at = Duration::ZERO;
            let (mut last_up, mut last_scale) = (None::<Duration>, None::<Duration>);
            // When the samples the policy may average began: reset by actions and by changes
            // in the running count.
            let (mut window_since, mut observed) = (None::<Duration>, None::<u32>);
            for ((step_ms, cpu, requests), event) in loads.into_iter().zip(events) {
                at += Duration::from_millis(step_ms);
                match event {
                    1 if group.running > 0 => {
                        group.running -= 1;
                        group.stopped += 1;
                    }
                    2 if group.stopped > 0 => {
                        group.stopped -= 1;
                        group.running += 1;
                    }
                    _ => {}
                }
                if observed != Some(group.running) {
                    window_since = None;
                }
                observed = Some(group.running);
                if group.running > 0 && window_since.is_none() {
                    window_since = Some(at);
                }
                let before = group;
                let decision = policy.observe(group.observe(at, cpu, requests));
                group.apply(&decision, config.scale_down_action);
                let filled = window_since.map_or(Duration::ZERO, |since| at - since);
                match decision {
                    Decision::Hold { .. } => {}
                    Decision::ScaleUp { by, .. } if before.running >= config.min => {
                        prop_assert!(by <= config.scale_up_step, "step {by} at {at:?}");
                        prop_assert!(
                            last_up.is_none_or(|t| at - t >= config.scale_up_cooldown),
                            "scale-up at {at:?}, previous at {last_up:?}"
                        );
                        prop_assert!(filled >= config.window, "window {filled:?} at {at:?}");
                    }
                    Decision::ScaleDown { by, .. } if before.running <= config.max => {
                        prop_assert!(by <= config.scale_down_step, "step {by} at {at:?}");
                        prop_assert!(
                            last_scale.is_none_or(|t| at - t >= config.scale_down_cooldown),
                            "scale-down at {at:?}, previous action at {last_scale:?}"
                        );
                        prop_assert!(filled >= config.window, "window {filled:?} at {at:?}");
                    }
                    // Out-of-range corrections are bound by nothing.
                    Decision::ScaleUp { .. } | Decision::ScaleDown { .. } => {}
                }
                match decision {
                    Decision::Hold { .. } => {}
                    Decision::ScaleUp { .. } => {
                        last_up = Some(at);
                        last_scale = Some(at);
                        window_since = None;
                    }
                    Decision::ScaleDown { .. } => {
                        last_scale = Some(at);
                        window_since = None;
                    }
                }
            }
        }

        #[test]
        fn a_load_inside_the_hysteresis_band_never_scales(
            config in valid_config(),
            (size, frozen, stopped) in (0.0f64..1.0, 0u32..6, 0u32..6),
            steps in proptest::collection::vec((0u64..5_000, 0.01f64..0.99, 0.01f64..0.99), 1..300),
        ) {
            let mut policy = Policy::new(config.clone());
            let group = Group::new(inside(&config, size), frozen, stopped);
            let mut at = Duration::ZERO;
            let between = |down: f64, up: f64, fraction: f64| down + (up - down) * fraction;
            for (step_ms, cpu, requests) in steps {
                at += Duration::from_millis(step_ms);
                let cpu = between(config.scale_down_cpu_percent, config.scale_up_cpu_percent, cpu);
                let requests = config
                    .scale_down_requests_per_s
                    .zip(config.scale_up_requests_per_s)
                    .map(|(down, up)| between(down, up, requests));
                let decision = policy.observe(group.observe(at, cpu, requests));
                prop_assert!(
                    matches!(decision, Decision::Hold { .. }),
                    "{decision:?} at {at:?} inside the band"
                );
            }
        }

        #[test]
        fn a_load_alternating_around_one_threshold_acts_once_per_cooldown(
            config in valid_config(),
            (size, frozen, stopped) in (0.0f64..1.0, 0u32..6, 0u32..6),
            (around_up, spread) in (any::<bool>(), 0.01f64..0.99),
            steps in proptest::collection::vec((0u64..5_000, any::<bool>()), 1..300),
        ) {
            let config = PolicyConfig {
                scale_up_requests_per_s: None,
                scale_down_requests_per_s: None,
                ..config
            };
            let (down, up) = (config.scale_down_cpu_percent, config.scale_up_cpu_percent);
            // Never past the other threshold.
            let delta = (up - down) * spread;
            let threshold = if around_up { up } else { down };
            let mut policy = Policy::new(config.clone());
            let mut group = Group::new(inside(&config, size), frozen, stopped);
            let mut at = Duration::ZERO;
            let mut last_action = None::<Duration>;
            for (step_ms, above) in steps {
                at += Duration::from_millis(step_ms);
                let cpu = if above { threshold + delta } else { (threshold - delta).max(0.0) };
                let decision = policy.observe(group.observe(at, cpu, None));
                group.apply(&decision, config.scale_down_action);
                let cooldown = match decision {
                    Decision::Hold { .. } => continue,
                    Decision::ScaleUp { .. } => {
                        prop_assert!(around_up, "scale-up around the down threshold at {at:?}");
                        config.scale_up_cooldown
                    }
                    Decision::ScaleDown { .. } => {
                        prop_assert!(!around_up, "scale-down around the up threshold at {at:?}");
                        config.scale_down_cooldown
                    }
                };
                if let Some(previous) = last_action {
                    let gap = at - previous;
                    prop_assert!(
                        gap >= cooldown.max(config.window),
                        "actions at {previous:?} and {at:?}: {gap:?} apart"
                    );
                }
                last_action = Some(at);
            }
        }
    }
}

#[test]
fn incomplete_figures_never_scale_down_but_may_scale_up() {
    let mut policy = Policy::new(PolicyConfig {
        scale_up_cooldown: Duration::ZERO,
        scale_down_cooldown: Duration::ZERO,
        ..config()
    });
    let mut group = Group::new(3, 0, 2);
    // Idle for a full window, but one sample in it missed events (a kernel map was full).
    feed(&mut policy, &mut group, 0..=4, 10.0, None);
    let incomplete = Observation {
        complete: false,
        ..group.observe(secs(5), 10.0, None)
    };
    assert!(matches!(policy.observe(incomplete), Decision::Hold { .. }));
    let decision = policy.observe(group.observe(secs(10), 10.0, None));
    assert_eq!(
        decision.reason(),
        "cpu 10.0% avg over 10s <= 25% down threshold, but some events in the window went \
         uncounted (a kernel map was full, see kernel_drops): the load may be higher, so no \
         scale-down"
    );
    // Once the incomplete sample has left the window, the idle group shrinks.
    assert_eq!(
        feed(&mut policy, &mut group, 11..=15, 10.0, None),
        [(
            15,
            down(
                1,
                "cpu 10.0% avg over 10s <= 25% down threshold: -1 (3 -> 2)"
            )
        )]
    );
    // A lower bound that is already high enough scales up.
    let busy = |at| Observation {
        complete: false,
        ..group.observe(secs(at), 90.0, None)
    };
    let actions: Vec<Decision> = (16..=26)
        .map(|at| policy.observe(busy(at)))
        .filter(|d| !matches!(d, Decision::Hold { .. }))
        .collect();
    assert!(
        matches!(actions.as_slice(), [Decision::ScaleUp { by: 1, .. }]),
        "{actions:?}"
    );
}
