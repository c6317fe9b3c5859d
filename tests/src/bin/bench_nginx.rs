//! nginx-counting benchmarks, run by `cargo xtask bench` (as root):
//! - wrk's throughput through nginx with Lynx's programs attached (a daemon counting that
//!   nginx) over the same without, in alternating pairs in one run, with and without
//!   keep-alive;
//! - the kernel cost of each of the nginx programs from BPF run-time statistics: per run (every
//!   system call of the host runs `lynx_http_exit` up to its cgroup check) and per request.
//!
//! Prints one `bench-result: {json}` line that xtask merges into `target/bench/results.json`.
use std::time::Duration;

use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use lynx_common::http::{HTTP_SYS_EXIT_PROGRAM, NGINX_FORK_PROGRAM};
use lynx_tests::{
    daemon::DaemonUnderTest,
    http_client::CountingBackend,
    nginx::{Nginx, wrk},
};
use serde_json::json;

/// Off/on pairs per load; the order alternates so that drift hits both sides alike.
const PAIRS: usize = 5;
const RUN: Duration = Duration::from_secs(4);
const CONNECTIONS: u32 = 32;

/// A program's run time and run count, as the kernel keeps them with stats enabled.
fn program_stats(name: &str) -> (u64, u64) {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
        .fold((0, 0), |(t, c), (pt, pc)| (t + pt, c + pc))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

const PROGRAMS: [&str; 2] = [HTTP_SYS_EXIT_PROGRAM, NGINX_FORK_PROGRAM];

/// A daemon counting `nginx`, once it has found it.
fn counting_daemon(nginx: &Nginx) -> DaemonUnderTest {
    let daemon = DaemonUnderTest::start_configured("bench-nginx", "1s", "", &nginx.lynx_config());
    let master = nginx.master_pid();
    daemon.wait_for("the daemon to find nginx", Duration::from_secs(10), |s| {
        s.nginx.master_pid == Some(master)
    });
    daemon
}

/// Requests of one wrk run, which must see no errors.
fn load(nginx: &Nginx, keep_alive: bool) -> u64 {
    let totals = wrk(&nginx.url("/"), CONNECTIONS, RUN, keep_alive);
    assert_eq!(
        (totals.non_2xx, totals.socket_errors),
        (0, 0),
        "wrk saw errors"
    );
    totals.requests
}

/// Alternating pairs without and with Lynx counting, BPF statistics off (they cost time of
/// their own); returns the result object.
fn throughput(nginx: &Nginx, keep_alive: bool) -> serde_json::Value {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for pair in 0..PAIRS {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for counted in order {
            let daemon = counted.then(|| counting_daemon(nginx));
            let rate = load(nginx, keep_alive) as f64 / RUN.as_secs_f64();
            drop(daemon);
            match counted {
                true => on.push(rate),
                false => off.push(rate),
            }
        }
    }
    let (ratio_means, ratio_medians) = (mean(&on) / mean(&off), median(&on) / median(&off));
    let name = if keep_alive {
        "keep-alive"
    } else {
        "Connection: close"
    };
    println!(
        "bench nginx throughput ({name}, wrk -c{CONNECTIONS}, {PAIRS} pairs of {RUN:?}): \
         without {:.0} req/s, with {:.0} req/s (means); ratio of means {ratio_means:.3}, of \
         medians {ratio_medians:.3} (target >= 0.97: {})",
        mean(&off),
        mean(&on),
        if ratio_means >= 0.97 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("bench nginx runs without {off:.0?} with {on:.0?}");
    json!({
        "without_requests_per_s": off,
        "with_requests_per_s": on,
        "ratio_of_means": ratio_means,
        "ratio_of_medians": ratio_medians,
        "target_ratio_at_least": 0.97,
        "programs": costs(nginx, keep_alive),
    })
}

/// One run with Lynx counting and BPF run-time statistics on: each program's cost per run
/// and per request through nginx.
fn costs(nginx: &Nginx, keep_alive: bool) -> serde_json::Value {
    // Restored when this descriptor closes, even if the bench fails.
    let _stats = enable_stats(Stats::RunTime).expect("enable BPF run-time statistics");
    let daemon = counting_daemon(nginx);
    let before = PROGRAMS.map(program_stats);
    let requests = load(nginx, keep_alive);
    let after = PROGRAMS.map(program_stats);
    drop(daemon);
    let mut programs = serde_json::Map::new();
    for (i, name) in PROGRAMS.iter().enumerate() {
        let (time, runs) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
        let per_run = time as f64 / runs.max(1) as f64;
        let per_request = time as f64 / requests.max(1) as f64;
        println!(
            "bench nginx program {name} ({}): {runs} runs, {per_run:.1} ns/run, \
             {per_request:.0} ns per request through nginx ({requests} requests)",
            if keep_alive { "keep-alive" } else { "close" }
        );
        programs.insert(
            (*name).into(),
            json!({"runs": runs, "ns_per_run": per_run, "ns_per_request": per_request}),
        );
    }
    programs.into()
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the bench needs root");
    let backends = [CountingBackend::start(), CountingBackend::start()];
    let addresses: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let nginx = Nginx::start("bench", &addresses);
    // Warm up nginx, the backends and the page cache.
    wrk(&nginx.url("/"), CONNECTIONS, Duration::from_secs(1), true);
    let keep_alive = throughput(&nginx, true);
    let close = throughput(&nginx, false);
    let result = json!({
        "nginx_throughput": {
            "load": format!("wrk -t2 -c{CONNECTIONS} -d{}s through nginx (2 workers) to two loopback backends, {PAIRS} alternating pairs", RUN.as_secs()),
            "keep_alive": keep_alive,
            "close": close,
        }
    });
    println!("bench-result: {result}");
}
