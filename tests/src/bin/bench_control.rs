//! Control-loop benchmark, run by `cargo xtask bench` (as root, with the LXD rig): the time
//! from LXD reporting a container's state change (on an event subscription of the bench's
//! own, at LXD's own timestamp) to nginx serving the new upstream (its answers through nginx
//! change: 503 from the fallback once the group's one member is out, the member's page once
//! it is back). A freeze or stop counts from LXD beginning it (its operation event: the
//! member must be out before its service stops answering), an unfreeze or start from LXD
//! reporting it done (its lifecycle event).
//!
//! 50 changes alternate freeze and unfreeze of the member of a one-member group; then 10
//! stops and starts, whose start is also timed from LXD first reporting the container's
//! address (the DHCP lease comes after LXD's start event, and a member joins only once it
//! answers). Lynx's full re-read is set to a minute so that only events drive it.
//!
//! Prints one `bench-result: {json}` line that xtask merges into `target/bench/results.json`.
use std::{
    thread,
    time::{Duration, Instant},
};

use lynx::lxd::{InstanceStatus, LxdClient, StateAction};
use lynx_tests::{
    control::{Farm, LxdEvents, is_503, ms_between},
    daemon::DaemonUnderTest,
    lxd::SOCKET,
};
use serde_json::json;

/// State changes timed for the headline figure.
const CHANGES: usize = 50;
/// Stops and starts timed besides.
const STOP_STARTS: usize = 10;
/// How long one request through nginx may take before the bench tries again: the resolution
/// of the figure while requests stick on a frozen backend.
const EACH_TRY: Duration = Duration::from_millis(10);
/// The target for the p99.
const TARGET_P99_MS: f64 = 200.0;

/// What nginx's answer must be once it serves the new upstream.
type Expected<'a> = dyn Fn(&Result<String, String>) -> bool + 'a;

/// Median and p99 (nearest rank) of `values`, in the units given.
fn median_p99(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let rank =
        |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    (rank(0.5), rank(0.99))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the bench needs root");
    let farm = Farm::new("bench", 1);
    let config = farm.config("").replace(
        "reconcile_interval = \"2s\"",
        "reconcile_interval = \"60s\"",
    );
    let daemon = DaemonUnderTest::start_configured("bench-control", "1s", "", &config);
    let (name, page) = (farm.containers[0].name().to_owned(), farm.pages[0].clone());
    let serves_page = |a: &Result<String, String>| a.as_ref() == Ok(&page);
    let timeout = Duration::from_secs(10);
    farm.until_answer("the page", timeout, serves_page);
    let lxd = LxdClient::new(SOCKET);
    let events = LxdEvents::subscribe();
    let change = |action: StateAction| {
        lxd.change_state(&name, action, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{action:?} {name}: {e}"))
    };

    let mut latencies = Vec::with_capacity(CHANGES);
    for n in 0..CHANGES {
        let (action, event, expected): (_, _, &Expected) = if n % 2 == 0 {
            (StateAction::Freeze, "Freezing instance", &is_503)
        } else {
            (StateAction::Unfreeze, "instance-resumed", &serves_page)
        };
        let served = thread::scope(|scope| {
            scope.spawn(|| change(action));
            farm.until_answer_each(event, timeout, EACH_TRY, expected)
        });
        let reported = events.wait_for(&name, event, timeout);
        latencies.push(ms_between(reported, served));
    }
    let ms: Vec<f64> = latencies.clone();
    let (median, p99) = median_p99(&mut latencies);
    println!(
        "bench control loop: {CHANGES} freezes and unfreezes: LXD's report to nginx serving the \
         new upstream: median {median:.1} ms, p99 {p99:.1} ms (target p99 < {TARGET_P99_MS} ms: \
         {}); resolution {EACH_TRY:?}",
        if p99 < TARGET_P99_MS {
            "met"
        } else {
            "NOT met"
        }
    );

    let (mut stops, mut starts, mut starts_from_address) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..STOP_STARTS {
        let served = thread::scope(|scope| {
            scope.spawn(|| change(StateAction::Stop { force: false }));
            farm.until_answer_each("503 once stopped", timeout, EACH_TRY, is_503)
        });
        let reported = events.wait_for(&name, "Stopping instance", timeout);
        stops.push(ms_between(reported, served));
        let (addressed, served) = thread::scope(|scope| {
            scope.spawn(|| change(StateAction::Start));
            let addressed = loop {
                let state = lxd.instance_state(&name).expect("instance state");
                if state.status == InstanceStatus::Running && !state.ipv4.is_empty() {
                    break Instant::now();
                }
                thread::sleep(Duration::from_millis(2));
            };
            let served = farm.until_answer_each("the page", timeout, EACH_TRY, serves_page);
            (addressed, served)
        });
        let reported = events.wait_for(&name, "instance-started", timeout);
        starts.push(ms_between(reported, served));
        starts_from_address.push(ms_between(addressed, served));
    }
    let (stop_median, stop_p99) = median_p99(&mut stops);
    let (start_median, start_p99) = median_p99(&mut starts);
    let (address_median, address_p99) = median_p99(&mut starts_from_address);
    println!(
        "bench control loop: {STOP_STARTS} stops: median {stop_median:.1} ms, p99 {stop_p99:.1} \
         ms; starts from LXD's event: median {start_median:.1} ms, p99 {start_p99:.1} ms; from \
         LXD's address: median {address_median:.1} ms, p99 {address_p99:.1} ms"
    );
    drop(events);
    drop(daemon);

    let result = json!({
        "control_loop_follow": {
            "changes": CHANGES,
            "kind": "freeze and unfreeze, alternating, of a one-member group",
            "from": "LXD's operation event (freeze begins) or lifecycle event (unfreeze done)",
            "to": "nginx answering from the new upstream",
            "median_ms": median,
            "p99_ms": p99,
            "target_p99_ms_under": TARGET_P99_MS,
            "resolution_ms": EACH_TRY.as_secs_f64() * 1000.0,
            "all_ms": ms,
            "stops": {"count": STOP_STARTS, "median_ms": stop_median, "p99_ms": stop_p99},
            "starts_from_event": {"count": STOP_STARTS, "median_ms": start_median, "p99_ms": start_p99},
            "starts_from_address": {"count": STOP_STARTS, "median_ms": address_median, "p99_ms": address_p99},
        }
    });
    println!("bench-result: {result}");
}
