//! The kernel cost of following nginx's bytes on each path the daemon can take, run by
//! `cargo xtask bench` as root: the socket tracepoints (`sock_recv_length`,
//! `sock_send_length`, kernel 6.3 on) and, for older kernels, the end of every system call
//! (`sys_exit`, filtered by nginx's cgroup). This host's kernel has both, so one nginx under
//! one load is measured through each in turn, in alternating rounds, by BPF run-time
//! statistics: nanoseconds per program run (an event: a socket call of the host, or any
//! system call of the host), and per request through nginx.
//!
//! Prints one `bench-result: {json}` line that xtask merges into `target/bench/results.json`.
use std::time::Duration;

use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use lynx_common::http::{HTTP_EXIT_PROGRAM, HTTP_RECV_PROGRAM, HTTP_SEND_PROGRAM};
use lynx_tests::{
    TestCgroup,
    daemon::DaemonUnderTest,
    http_client::CountingBackend,
    nginx::{Nginx, wrk},
};
use serde_json::json;

/// Rounds of each path, alternated so that drift in the machine hits both alike.
const ROUNDS: usize = 3;
const RUN: Duration = Duration::from_secs(4);
const CONNECTIONS: u32 = 32;

/// One way of following nginx's bytes: its `[nginx] byte_hooks` and its programs.
struct Path {
    name: &'static str,
    byte_hooks: &'static str,
    /// The hooks the snapshot's `features` names for it.
    hooks: &'static [&'static str],
    programs: &'static [&'static str],
}

const PATHS: [Path; 2] = [
    Path {
        name: "socket_tracepoints",
        byte_hooks: "socket_tracepoints",
        hooks: &["tp_btf/sock_recv_length", "tp_btf/sock_send_length"],
        programs: &[HTTP_RECV_PROGRAM, HTTP_SEND_PROGRAM],
    },
    Path {
        name: "system_calls",
        byte_hooks: "system_calls",
        hooks: &["tp_btf/sys_exit"],
        programs: &[HTTP_EXIT_PROGRAM],
    },
];

/// Run time (ns) and runs of the programs called `names`, summed over every loaded copy.
fn stats(names: &[&str]) -> (u64, u64) {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| names.iter().any(|name| name.get(..15).unwrap_or(name) == n))
        })
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
        .fold((0, 0), |(t, c), (pt, pc)| (t + pt, c + pc))
}

/// The cost of `path` under keep-alive load through `nginx`: (ns per run, runs per request,
/// ns per request).
fn measure(nginx: &Nginx, path: &Path) -> (f64, f64, f64) {
    let config = format!(
        "{}byte_hooks = \"{}\"\n[lxd]\nsockets = []\n",
        nginx.lynx_config(),
        path.byte_hooks
    );
    let daemon = DaemonUnderTest::start_configured("bench-byte-hooks", "1s", "", &config);
    let master = nginx.master_pid();
    let snapshot = daemon.wait_for("the daemon to find nginx", Duration::from_secs(10), |s| {
        s.nginx.master_pid == Some(master)
    });
    let hooks = &snapshot.features[&lynx::model::Family::NginxRequests].hooks;
    assert_eq!(
        hooks, path.hooks,
        "{}: the hooks the daemon uses",
        path.name
    );
    let before = stats(path.programs);
    let requests = wrk(&nginx.url("/"), CONNECTIONS, RUN, true).requests.max(1);
    let after = stats(path.programs);
    drop(daemon);
    let (time, runs) = (after.0 - before.0, after.1 - before.1);
    (
        time as f64 / runs.max(1) as f64,
        runs as f64 / requests as f64,
        time as f64 / requests as f64,
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the bench needs root");
    let backends = [CountingBackend::start(), CountingBackend::start()];
    let addresses: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let cgroup = TestCgroup::create("bench-byte-hooks");
    let nginx = Nginx::start_in("bench-byte-hooks", &addresses, &cgroup);
    wrk(&nginx.url("/"), CONNECTIONS, Duration::from_secs(1), true);
    // Restored when this descriptor closes, even if the bench fails.
    let _stats = enable_stats(Stats::RunTime).expect("enable BPF run-time statistics");

    let mut figures: [[Vec<f64>; 3]; 2] = Default::default();
    for round in 0..ROUNDS {
        // Alternate which path goes first.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (per_run, runs_per_request, per_request) = measure(&nginx, &PATHS[i]);
            println!(
                "bench byte hooks round {}: {}: {per_run:.1} ns/run, {runs_per_request:.1} runs \
                 per request, {per_request:.0} ns per request",
                round + 1,
                PATHS[i].name
            );
            for (series, value) in
                figures[i]
                    .iter_mut()
                    .zip([per_run, runs_per_request, per_request])
            {
                series.push(value);
            }
        }
    }
    let mut result = serde_json::Map::new();
    for (path, [per_run, runs, per_request]) in PATHS.iter().zip(&mut figures) {
        let (per_run, runs, per_request) = (median(per_run), median(runs), median(per_request));
        println!(
            "bench byte hooks: {} (median of {ROUNDS}): {per_run:.1} ns per event, {runs:.1} \
             events per request, {per_request:.0} ns per request",
            path.name
        );
        result.insert(
            path.name.into(),
            json!({
                "programs": path.programs,
                "ns_per_event": per_run,
                "events_per_request": runs,
                "ns_per_request": per_request,
            }),
        );
    }
    let ratio = result["system_calls"]["ns_per_request"]
        .as_f64()
        .unwrap_or(0.0)
        / result["socket_tracepoints"]["ns_per_request"]
            .as_f64()
            .unwrap_or(1.0);
    println!("bench byte hooks: system calls over socket tracepoints, per request: {ratio:.2}");
    result.insert(
        "system_calls_over_socket_tracepoints_per_request".into(),
        ratio.into(),
    );
    let result = json!({ "nginx_byte_hooks": {
        "load": format!("wrk -c{CONNECTIONS} keep-alive for {RUN:?} through nginx to two loopback backends, {ROUNDS} alternating rounds, medians"),
        "paths": result,
    }});
    println!("bench-result: {result}");
}
