//! Container-observer benchmarks, run by `cargo xtask bench` (as root, with the LXD rig):
//! - the daemon's CPU time per collection tick with 1,000 extra cgroups, each with a process,
//!   against the same daemon on the bare host;
//! - the daemon's resident memory with those cgroups;
//! - for the same 20 LXD containers, the time of one Lynx collection against one request to
//!   LXD's own `/1.0/metrics`, and against the same collection while LXD is asked for the
//!   containers' disk usage every second.
//!
//! Prints one `bench-result: {json}` line that xtask merges into `target/bench/results.json`.
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    thread,
    time::{Duration, Instant},
};

use lynx_common::{CGROUP_CPU_MAP, CpuTime};
use lynx_tests::{
    bench::{ManyCgroups, measure_daemon},
    daemon::DaemonUnderTest,
    lxd::{SOCKET, TestContainer, lxd},
};
use serde_json::json;

const CGROUPS: usize = 1000;
const CONTAINERS: usize = 20;

/// Wall time of one `GET /1.0/metrics` on LXD's socket, whole answer read.
fn lxd_metrics_ms() -> f64 {
    let started = Instant::now();
    let mut stream = UnixStream::connect(SOCKET).expect("connect to LXD");
    stream
        .write_all(b"GET /1.0/metrics HTTP/1.0\r\nHost: lxd\r\n\r\n")
        .expect("send request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read answer");
    assert!(answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"));
    started.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the bench needs root");

    let bare = DaemonUnderTest::start("bench-bare", "100ms");
    let (bare_cpu_ms, bare_sample_ms, bare_rss) = measure_daemon(&bare);
    drop(bare);
    // Created after the daemon starts, so that every process is counted and each of the
    // 1,000 cgroups has its entries in the kernel maps.
    let loaded = DaemonUnderTest::start("bench-1000", "100ms");
    let cgroups = ManyCgroups::create(CGROUPS);
    let (cpu_ms, sample_ms, rss) = measure_daemon(&loaded);
    let counted = loaded.pinned_keys::<CpuTime>(CGROUP_CPU_MAP).len();
    assert!(
        counted > CGROUPS,
        "only {counted} cgroups in the CPU map: the bench measured too few"
    );
    drop(loaded);
    drop(cgroups);
    println!(
        "bench collection tick with {CGROUPS} extra cgroups: {cpu_ms:.2} ms CPU per tick \
         (sample {sample_ms:.2} ms wall), {rss:.1} MB RSS; bare host: {bare_cpu_ms:.2} ms CPU \
         per tick (sample {bare_sample_ms:.2} ms), {bare_rss:.1} MB RSS \
         (targets: under 10 ms per tick, under 30 MB)"
    );

    lxd();
    let containers: Vec<TestContainer> = thread::scope(|scope| {
        let launches: Vec<_> = (0..CONTAINERS)
            .map(|_| scope.spawn(|| TestContainer::launch("bench")))
            .collect();
        launches
            .into_iter()
            .map(|l| l.join().expect("launch"))
            .collect()
    });
    // The same daemon asking LXD for disk usage once in its first seconds and then every
    // second: disk usage is read on LXD's polling thread, so the collection must not slow.
    let measure_with_disk_every = |disk_interval: &str| {
        let daemon = DaemonUnderTest::start_configured(
            &format!("bench-lxd-disk-{disk_interval}"),
            "100ms",
            "",
            &format!("[disk]\ninterval = \"{disk_interval}\"\n"),
        );
        daemon.wait_for("all bench containers", Duration::from_secs(30), |s| {
            containers.iter().all(|c| {
                s.containers
                    .iter()
                    .any(|e| e.name == c.name() && e.kind == "lxd")
            })
        });
        measure_daemon(&daemon)
    };
    let (quiet_cpu_ms, lynx_ms, _) = measure_with_disk_every("1h");
    let (disk_cpu_ms, disk_sample_ms, _) = measure_with_disk_every("1s");
    let mut lxd_ms: Vec<f64> = (0..30).map(|_| lxd_metrics_ms()).collect();
    lxd_ms.sort_by(f64::total_cmp);
    let lxd_ms = lxd_ms[lxd_ms.len() / 2];
    println!(
        "bench {CONTAINERS} LXD containers: one Lynx collection {lynx_ms:.2} ms, one LXD \
         /1.0/metrics request {lxd_ms:.2} ms (medians), ratio {:.3}",
        lynx_ms / lxd_ms
    );
    println!(
        "bench {CONTAINERS} LXD containers, disk usage asked every second against once an \
         hour: collection {disk_sample_ms:.2} ms against {lynx_ms:.2} ms (ratio {:.3}), \
         daemon CPU per tick {disk_cpu_ms:.2} ms against {quiet_cpu_ms:.2} ms",
        disk_sample_ms / lynx_ms
    );
    drop(containers);

    let result = json!({
        "collection_tick": {
            "extra_cgroups": CGROUPS,
            "cpu_ms_per_tick": cpu_ms,
            "sample_ms_median": sample_ms,
            "rss_mb": rss,
            "bare_cpu_ms_per_tick": bare_cpu_ms,
            "bare_sample_ms_median": bare_sample_ms,
            "bare_rss_mb": bare_rss,
            "targets": {"cpu_ms_per_tick_under": 10, "rss_mb_under": 30},
        },
        "lxd_containers_snapshot_vs_metrics": {
            "containers": CONTAINERS,
            "lynx_sample_ms_median": lynx_ms,
            "lxd_metrics_ms_median": lxd_ms,
            "ratio": lynx_ms / lxd_ms,
        },
        "disk_polling_every_second_vs_hourly": {
            "containers": CONTAINERS,
            "sample_ms_median": disk_sample_ms,
            "hourly_sample_ms_median": lynx_ms,
            "sample_ratio": disk_sample_ms / lynx_ms,
            "cpu_ms_per_tick": disk_cpu_ms,
            "hourly_cpu_ms_per_tick": quiet_cpu_ms,
        },
    });
    println!("bench-result: {result}");
}
