//! The daemon's HTTP server, run by `cargo xtask bench` (as root): the same daemon, with 1,000
//! extra cgroups each with a process, measured with the server off and then on with 20
//! clients each fetching `/metrics` ten times a second: resident memory (target: under
//! 30 MB), CPU per collection tick (the server must not make collection dearer), and how long
//! a scrape takes under that load.
//!
//! Prints one `bench-result: {json}` line that xtask merges into `target/bench/results.json`.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, sleep},
    time::{Duration, Instant},
};

use lynx_tests::{
    bench::{ManyCgroups, measure_daemon, memory_mb, rss_mb},
    daemon::DaemonUnderTest,
    nginx::free_port,
};
use serde_json::json;

const CGROUPS: usize = 1000;
const CLIENTS: usize = 20;
const POLL: Duration = Duration::from_millis(100);

/// One scrape: how long until the whole answer was read.
fn scrape(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect to the daemon");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "a scrape failed");
    started.elapsed()
}

/// [`CLIENTS`] threads scraping every [`POLL`] until stopped; their latencies on join.
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<Duration>>>,
}

impl Clients {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..CLIENTS)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut latencies = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        latencies.push(scrape(addr));
                        sleep(POLL);
                    }
                    latencies
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn stop(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Duration> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("a client"))
            .collect();
        all.sort();
        all
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the bench needs root");

    let off = DaemonUnderTest::start("bench-web-off", "100ms");
    let cgroups = ManyCgroups::create(CGROUPS);
    let (off_cpu_ms, _, off_rss) = measure_daemon(&off);
    let off_peak = memory_mb(off.pid(), "VmHWM:");
    drop(off);
    drop(cgroups);

    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let on = DaemonUnderTest::start_with_prometheus("bench-web-on", "100ms", &addr.to_string());
    let cgroups = ManyCgroups::create(CGROUPS);
    on.next_snapshot();
    let clients = Clients::start(addr);
    let (on_cpu_ms, _, on_rss) = measure_daemon(&on);
    let latencies = clients.stop();
    let on_peak = memory_mb(on.pid(), "VmHWM:");
    let rss_after = rss_mb(on.pid());
    drop(on);
    drop(cgroups);

    let percentile =
        |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    let (p50, p99, max) = (percentile(0.5), percentile(0.99), percentile(1.0));
    println!(
        "bench web server, {CGROUPS} extra cgroups, {CLIENTS} clients scraping /metrics every \
         {POLL:?} ({} scrapes): RSS {on_rss:.1} MB (peak {on_peak:.1}) against {off_rss:.1} MB \
         (peak {off_peak:.1}) with the server off, ratio {:.3} (target: under 30 MB); CPU per \
         tick {on_cpu_ms:.2} ms against {off_cpu_ms:.2} ms, ratio {:.3} (it includes serving \
         the scrapes); scrape p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        latencies.len(),
        on_rss / off_rss,
        on_cpu_ms / off_cpu_ms,
    );
    let result = json!({
        "web_server": {
            "extra_cgroups": CGROUPS,
            "clients": CLIENTS,
            "poll_ms": POLL.as_millis() as u64,
            "scrapes": latencies.len(),
            "rss_mb": on_rss,
            "rss_mb_after_clients": rss_after,
            "peak_rss_mb": on_peak,
            "off_rss_mb": off_rss,
            "off_peak_rss_mb": off_peak,
            "rss_ratio": on_rss / off_rss,
            "cpu_ms_per_tick": on_cpu_ms,
            "off_cpu_ms_per_tick": off_cpu_ms,
            "cpu_ratio": on_cpu_ms / off_cpu_ms,
            "scrape_ms_p50": p50,
            "scrape_ms_p99": p99,
            "scrape_ms_max": max,
            "targets": {"rss_mb_under": 30},
        },
    });
    println!("bench-result: {result}");
}
