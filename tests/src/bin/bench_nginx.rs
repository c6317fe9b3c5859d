//! nginx-counting benchmarks, run by `cargo xtask bench` (as root, with the LXD rig):
//! - wrk's throughput through nginx with Lynx's programs attached (a daemon counting that
//!   nginx) over the same without, in alternating pairs in one run, for four loads. Three
//!   proxy to two in-process loopback backends, the harshest case (nginx's bare proxy cost is
//!   all there is to compare with): keep-alive, a connection per request, and keep-alive with
//!   browser-sized requests (where the parser's share is largest). The fourth is keep-alive
//!   to busybox httpd in two LXD containers on the rig's bridge, the deployment Lynx is for
//!   (nginx connects upstream per request, with the host's TIME_WAIT ports reused);
//! - the kernel cost of each of Lynx's programs from BPF run-time statistics: per run (every
//!   socket call of the host runs `lynx_http_recv` or `lynx_http_send` up to its cgroup check)
//!   and per request; the daemon's own CPU time per request; and the ratio those predict
//!   against the host's CPU time per request.
//!
//! Prints one `bench-result: {json}` line that xtask merges into `target/bench/results.json`.
use std::{net::SocketAddr, thread::sleep, time::Duration};

use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use lynx::collector::host::HostSample;
use lynx_common::{
    BIO_QUEUE_PROGRAM, CPU_CLOCK_PROGRAM, HOST_NET_EGRESS_PROGRAM, HOST_NET_INGRESS_PROGRAM,
    NET_EGRESS_PROGRAM, NET_INGRESS_PROGRAM, SCHED_SWITCH_PROGRAM,
    http::{
        HTTP_RECV_PROGRAM, HTTP_RELEASE_PROGRAM, HTTP_SEND_PROGRAM, HTTP_SOCK_OPS_PROGRAM,
        NGINX_FORK_PROGRAM,
    },
};
use lynx_tests::{
    TestCgroup, clock_ticks,
    daemon::DaemonUnderTest,
    http_client::CountingBackend,
    lxd::TestContainer,
    nginx::{Nginx, wrk, wrk_with_headers},
};
use serde_json::json;

/// Off/on pairs of the loopback loads; the order alternates so that drift hits both sides
/// alike.
const PAIRS: usize = 8;
const RUN: Duration = Duration::from_secs(3);
/// Wait before each measured run, on both sides of a pair: a daemon just started is still
/// finishing its first collections (finding the containers, attaching to their cgroups),
/// which a daemon in service did long ago.
const SETTLE: Duration = Duration::from_secs(1);
const CONNECTIONS: u32 = 32;

/// A program's run time and run count, as the kernel keeps them with stats enabled.
fn program_stats(name: &str) -> (u64, u64) {
    // The kernel keeps the first 15 bytes of a name.
    let name = name.get(..15).unwrap_or(name);
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
        .fold((0, 0), |(t, c), (pt, pc)| (t + pt, c + pc))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// The value a fraction `q` of the way through `values` in order (0.5: the median).
fn quantile(values: &[f64], q: f64) -> f64 {
    let sorted = sorted(values);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A confidence interval of at least 95% for the median of what `values` sample, assuming
/// nothing of their distribution: the `k`-th smallest and `k`-th largest value, for the
/// largest `k` at which fewer than `k` of `n` values fall below the median with probability
/// at most 2.5% (a binomial of `n` and 1/2).
fn median_interval(values: &[f64]) -> [f64; 2] {
    let sorted = sorted(values);
    let n = sorted.len();
    let (mut k, mut below, mut term) = (0, 0.0, 0.5_f64.powi(n as i32));
    for j in 0..n {
        below += term;
        if below > 0.025 {
            break;
        }
        k = j + 1;
        term *= (n - j) as f64 / (j + 1) as f64;
    }
    let k = k.max(1);
    [sorted[k - 1], sorted[n - k]]
}

/// Every program of Lynx's (the host network programs run only with `count_host_network`).
const PROGRAMS: [&str; 12] = [
    HTTP_RECV_PROGRAM,
    HTTP_SEND_PROGRAM,
    HTTP_SOCK_OPS_PROGRAM,
    HTTP_RELEASE_PROGRAM,
    NGINX_FORK_PROGRAM,
    SCHED_SWITCH_PROGRAM,
    CPU_CLOCK_PROGRAM,
    NET_INGRESS_PROGRAM,
    NET_EGRESS_PROGRAM,
    HOST_NET_INGRESS_PROGRAM,
    HOST_NET_EGRESS_PROGRAM,
    BIO_QUEUE_PROGRAM,
];

/// A daemon counting `nginx`, once it has found it. It does not poll LXD: what is measured is
/// the kernel programs' effect on nginx, not LXD's cost of answering (which
/// `bench_containers` compares with LXD's own metrics).
fn counting_daemon(nginx: &Nginx) -> DaemonUnderTest {
    let config = format!("{}[lxd]\nsockets = []\n", nginx.lynx_config());
    let daemon = DaemonUnderTest::start_configured("bench-nginx", "1s", "", &config);
    let master = nginx.master_pid();
    daemon.wait_for("the daemon to find nginx", Duration::from_secs(10), |s| {
        s.nginx.master_pid == Some(master)
    });
    daemon
}

/// The request loads, each measured on its own.
#[derive(Clone, Copy)]
struct Load {
    name: &'static str,
    /// Headers wrk adds to each request (its own are Host only).
    headers: &'static [&'static str],
    /// Off/on pairs measured.
    pairs: usize,
}

const KEEP_ALIVE: Load = Load {
    name: "keep-alive",
    headers: &[],
    pairs: PAIRS,
};
const CLOSE: Load = Load {
    name: "Connection: close",
    headers: &["Connection: close"],
    pairs: PAIRS,
};
/// Requests of the size a browser sends (about 600 bytes), which nginx passes on upstream:
/// what the parser costs when most bytes are headers.
const BROWSER: Load = Load {
    name: "keep-alive, browser-sized headers",
    headers: &[
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
         Chrome/131.0.0.0 Safari/537.36",
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
         image/webp,image/apng,*/*;q=0.8",
        "Accept-Language: en-GB,en;q=0.9,de;q=0.8",
        "Accept-Encoding: gzip, deflate, br, zstd",
        "Cookie: session=7f3a9c1e5b2d8f4a6c0e9b3d7f1a5c8e; theme=dark; \
         consent=analytics%3Dfalse%26ads%3Dfalse; last_seen=2026-11-22T09%3A30%3A00Z; \
         cart=a81f3c2e-9d4b-4e1a-8c7f-2b6d0e9a4f13",
        "Cache-Control: max-age=0",
        "Upgrade-Insecure-Requests: 1",
    ],
    pairs: PAIRS,
};

/// Keep-alive from wrk to nginx, which proxies to busybox httpd in LXD containers. httpd
/// closes each connection, so nginx connects upstream for every request. Five times the
/// pairs: Lynx's share here is small against how far single pairs spread on this 2-CPU VM (an
/// interquartile range of about 4 points), and the median's interval must be narrow enough
/// to tell it from the target.
const LXD_BUSYBOX: Load = Load {
    name: "keep-alive, busybox httpd in LXD containers",
    headers: &[],
    pairs: 5 * PAIRS,
};

/// Requests of one wrk run, which must see no errors.
fn load(nginx: &Nginx, load: Load) -> u64 {
    let totals = wrk_with_headers(&nginx.url("/"), CONNECTIONS, RUN, load.headers);
    assert_eq!(
        (totals.non_2xx, totals.socket_errors),
        (0, 0),
        "wrk saw errors"
    );
    totals.requests
}

/// Alternating pairs without and with Lynx counting, BPF statistics off (they cost time of
/// their own); returns the result object. Each pair's two runs are adjacent, so the median of
/// the per-pair ratios cancels the drift of a shared machine better than ratios of totals.
fn throughput(nginx: &Nginx, kind: Load) -> serde_json::Value {
    let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_ns_per_request, mut daemon_ns_per_request) = (Vec::new(), Vec::new());
    for pair in 0..kind.pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut rates = [0.0; 2];
        for counted in order {
            let daemon = counted.then(|| counting_daemon(nginx));
            sleep(SETTLE);
            let busy_before = busy_ns();
            let daemon_before = daemon.as_ref().map(DaemonUnderTest::cpu_time);
            let requests = load(nginx, kind);
            match (&daemon, daemon_before) {
                (Some(daemon), Some(before)) => daemon_ns_per_request
                    .push((daemon.cpu_time() - before).as_nanos() as f64 / requests as f64),
                _ => cpu_ns_per_request.push((busy_ns() - busy_before) as f64 / requests as f64),
            }
            drop(daemon);
            rates[usize::from(counted)] = requests as f64 / RUN.as_secs_f64();
        }
        off.push(rates[0]);
        on.push(rates[1]);
        ratios.push(rates[1] / rates[0]);
    }
    let ratio = quantile(&ratios, 0.5);
    let Load { name, pairs, .. } = kind;
    println!(
        "bench nginx throughput ({name}, wrk -c{CONNECTIONS}, {pairs} pairs of {RUN:?}): \
         without {:.0} req/s, with {:.0} req/s (means); median of pair ratios {ratio:.3} \
         (target >= 0.97: {}), ratio of means {:.3}",
        mean(&off),
        mean(&on),
        if ratio >= 0.97 { "met" } else { "NOT met" },
        mean(&on) / mean(&off),
    );
    // The spread says how far one run's median can be trusted on this machine.
    let quartiles = [quantile(&ratios, 0.25), quantile(&ratios, 0.75)];
    let interval = median_interval(&ratios);
    println!(
        "bench nginx runs without {off:.0?} with {on:.0?}; pair ratios {ratios:.3?}, \
         quartiles {quartiles:.3?}, 95% interval of the median {interval:.3?}"
    );
    let cpu_ns = quantile(&cpu_ns_per_request, 0.5);
    let daemon_ns = quantile(&daemon_ns_per_request, 0.5);
    let (programs, bpf_ns) = costs(nginx, kind);
    // What the programs' own run time and the daemon's predict for a CPU-bound run (the run
    // time includes the statistics' own clock reads).
    let predicted = cpu_ns / (cpu_ns + bpf_ns + daemon_ns);
    println!(
        "bench nginx {name}: host CPU {cpu_ns:.0} ns per request without Lynx; Lynx's programs \
         {bpf_ns:.0} ns and its daemon {daemon_ns:.0} ns per request: predicted ratio \
         {predicted:.3}"
    );
    json!({
        "without_requests_per_s": off,
        "with_requests_per_s": on,
        "pairs": pairs,
        "median_pair_ratio": ratio,
        "pair_ratio_quartiles": quartiles,
        "median_pair_ratio_95_interval": interval,
        "ratio_of_means": mean(&on) / mean(&off),
        "target_ratio_at_least": 0.97,
        "host_cpu_ns_per_request_without": cpu_ns,
        "lynx_programs_ns_per_request": bpf_ns,
        "lynx_daemon_cpu_ns_per_request": daemon_ns,
        "predicted_ratio_from_cpu_cost": predicted,
        "programs": programs,
    })
}

/// Busy CPU time of the host so far (all but idle and iowait), in ns.
fn busy_ns() -> u64 {
    let host = HostSample::read().unwrap_or_else(|e| panic!("read the host's CPU time: {e}"));
    clock_ticks(host.cpu.busy).as_nanos() as u64
}

/// One run with Lynx counting and BPF run-time statistics on: each program's cost per run
/// and per request through nginx.
fn costs(nginx: &Nginx, kind: Load) -> (serde_json::Value, f64) {
    // Restored when this descriptor closes, even if the bench fails.
    let _stats = enable_stats(Stats::RunTime).expect("enable BPF run-time statistics");
    let daemon = counting_daemon(nginx);
    let before = PROGRAMS.map(program_stats);
    let requests = load(nginx, kind);
    let after = PROGRAMS.map(program_stats);
    drop(daemon);
    let mut programs = serde_json::Map::new();
    let total: u64 = (0..PROGRAMS.len()).map(|i| after[i].0 - before[i].0).sum();
    let total_per_request = total as f64 / requests.max(1) as f64;
    for (i, name) in PROGRAMS.iter().enumerate() {
        let (time, runs) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
        let per_run = time as f64 / runs.max(1) as f64;
        let per_request = time as f64 / requests.max(1) as f64;
        println!(
            "bench nginx program {name} ({}): {runs} runs, {per_run:.1} ns/run, \
             {per_request:.0} ns per request through nginx ({requests} requests)",
            kind.name
        );
        programs.insert(
            (*name).into(),
            json!({"runs": runs, "ns_per_run": per_run, "ns_per_request": per_request}),
        );
    }
    (programs.into(), total_per_request)
}

/// A sysctl set while this lives, restored on drop (also when the bench panics).
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Self {
        let old = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        std::fs::write(path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
        Self { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, &self.old) {
            eprintln!("cannot restore {} to {}: {e}", self.path, self.old.trim());
        }
    }
}

/// Each of `kinds` through an nginx of its own in `cgroup` balancing over `backends`. The nginx
/// stops before this returns, so the cgroup holds one nginx at a time.
fn throughputs<const N: usize>(
    name: &str,
    backends: &[SocketAddr],
    cgroup: &TestCgroup,
    kinds: [Load; N],
) -> [serde_json::Value; N] {
    let nginx = Nginx::start_in(name, backends, cgroup);
    // Warm up nginx, the backends and the page cache.
    wrk(&nginx.url("/"), CONNECTIONS, Duration::from_secs(1), true);
    kinds.map(|kind| throughput(&nginx, kind))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the bench needs root");
    let backends = [CountingBackend::start(), CountingBackend::start()];
    let addresses: Vec<_> = backends.iter().map(|b| b.addr).collect();
    // nginx in a cgroup of its own, as a service manager runs it.
    let cgroup = TestCgroup::create("bench-nginx");
    let [keep_alive, close, browser] =
        throughputs("bench", &addresses, &cgroup, [KEEP_ALIVE, CLOSE, BROWSER]);
    // Launched only now, so that the loopback loads run on a host without them.
    let containers = [
        TestContainer::launch("bench"),
        TestContainer::launch("bench"),
    ];
    let upstreams: Vec<_> = containers.iter().map(|c| c.http_backend(80)).collect();
    // nginx closes about a fifth of its upstream connections before httpd does, and each of
    // those leaves a port in TIME_WAIT on the host: at this load connect()'s ~14,000 ports per
    // upstream run out within about 20 s, and throughput collapses to the rate at which they
    // expire. Hosts that proxy to backends without keep-alive reuse them, as here.
    let _reuse = Sysctl::set("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
    let [lxd_busybox] = throughputs("bench-lxd", &upstreams, &cgroup, [LXD_BUSYBOX]);
    let result = json!({
        "nginx_throughput": {
            "load": format!("wrk -t2 -c{CONNECTIONS} -d{}s through nginx (2 workers, a cgroup of its own), alternating pairs without and with Lynx; keep_alive, close and browser_headers to two in-process loopback backends, lxd_busybox_backends to busybox httpd in two LXD containers on the LXD bridge (a connection per request upstream; net.ipv4.tcp_tw_reuse = 1 for it)", RUN.as_secs()),
            "keep_alive": keep_alive,
            "close": close,
            "browser_headers": browser,
            "lxd_busybox_backends": lxd_busybox,
        }
    });
    println!("bench-result: {result}");
}

#[cfg(test)]
mod tests {
    use super::median_interval;

    #[test]
    fn the_median_interval_is_the_binomial_order_statistics() {
        // Order statistics 14 and 27 of 40 (P(fewer than 14 below) = 1.9%), 4 and 13 of 16
        // (1.1%), and the extremes when even those fall short of 95%.
        let values: Vec<f64> = (1..=40).rev().map(f64::from).collect();
        assert_eq!(median_interval(&values), [14.0, 27.0]);
        assert_eq!(median_interval(&values[24..]), [4.0, 13.0]);
        assert_eq!(median_interval(&[2.0, 3.0, 1.0]), [1.0, 3.0]);
    }
}
