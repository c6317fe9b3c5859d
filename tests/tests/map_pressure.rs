//! Full kernel maps: the per-cgroup CPU map and nginx's flow table filled from user space in
//! a running daemon's pinned maps. What the programs could not count is counted as dropped,
//! shown in the snapshot and `/metrics`, and the autoscaler does not scale down on figures
//! that are then only lower bounds.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuHashMap, PerCpuValues};
use lynx::model::Snapshot;
use lynx_common::{
    CGROUP_CPU_MAP, CpuTime, MAPS_LAYOUT_VERSION,
    http::{HTTP_FLOWS_MAP, HttpFlowEntry},
};
use lynx_tests::{
    TestCgroup, control::Farm, daemon::DaemonUnderTest, nginx::free_port, privileged,
};

/// The daemon's pinned map `name`.
fn pinned(daemon: &DaemonUnderTest, name: &str) -> MapData {
    let path: PathBuf = daemon
        .pin_dir
        .join(format!("v{MAPS_LAYOUT_VERSION}"))
        .join(name);
    MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// `name`'s value in `/metrics` with exactly `labels`, as Prometheus text has it.
fn metric(addr: SocketAddr, name: &str, labels: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let line = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|value| value.parse().ok())
}

#[test]
fn a_full_cgroup_map_is_counted_as_drops_exported_and_emptied_of_what_is_gone() {
    if !privileged("a_full_cgroup_map_is_counted_as_drops_exported_and_emptied_of_what_is_gone") {
        return;
    }
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    // A long interval: the map stays full from one sample to the next.
    let daemon = DaemonUnderTest::start_with_prometheus("cpumap", "3s", &listen.to_string());
    daemon.next_snapshot();
    let mut map: PerCpuHashMap<_, u64, CpuTime> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(pinned(&daemon, CGROUP_CPU_MAP)))
            .expect("the CPU map is a per-CPU hash");
    let cpus = aya::util::nr_cpus().expect("the number of CPUs");
    let mut filled = 0u64;
    // Ids no cgroup has: the daemon forgets them at its next sample.
    for id in (1u64 << 62).. {
        let zeros = PerCpuValues::try_from(vec![CpuTime::default(); cpus]).expect("per CPU");
        if map.insert(id, zeros, 0).is_err() {
            break;
        }
        filled += 1;
    }
    assert!(filled > 0, "the map had no room to fill");
    // A cgroup first seen now, while the map is full.
    let cgroup = TestCgroup::create("cpumap");
    let mut busy = cgroup.spawn(Command::new("sh").args(["-c", "while :; do :; done"]));
    sleep(Duration::from_millis(300));
    busy.kill();
    let dropped = daemon.wait_for("the drops in the snapshot", Duration::from_secs(10), |s| {
        s.kernel_drops.cgroup_cpu_map_full > 0
    });
    eprintln!(
        "filled {filled} entries; {} CPU-time events dropped",
        dropped.kernel_drops.cgroup_cpu_map_full
    );
    let exported = metric(listen, "lynx_kernel_drops_total", "{map=\"cgroup_cpu\"}");
    assert!(
        exported.is_some_and(|n| n > 0.0),
        "/metrics exports the drops: {exported:?}"
    );
    assert!(
        daemon.log().contains("a kernel map is full"),
        "the log says so:\n{}",
        daemon.log()
    );
    // The ids no cgroup has are forgotten: the map has room again.
    daemon.next_snapshot();
    let left = map
        .keys()
        .filter_map(Result::ok)
        .filter(|id| *id >= 1 << 62)
        .count();
    assert_eq!(left, 0, "entries of no cgroup stay in the map");
}

/// Takes every free slot of nginx's flow table; gives them back on drop.
struct FullFlowTable {
    map: Array<MapData, HttpFlowEntry>,
    taken: Vec<u32>,
}

impl FullFlowTable {
    fn fill(daemon: &DaemonUnderTest) -> Self {
        let mut map: Array<_, HttpFlowEntry> =
            Array::try_from(Map::Array(pinned(daemon, HTTP_FLOWS_MAP))).expect("an array");
        let mut taken = Vec::new();
        for index in 0..map.len() {
            let entry = map.get(&index, 0).expect("a flow slot");
            if entry.cookie == 0 {
                let dummy = HttpFlowEntry {
                    // No socket has this cookie: no program ever matches or frees it.
                    cookie: u64::MAX - u64::from(index),
                    ..entry
                };
                map.set(index, dummy, 0).expect("take a slot");
                taken.push(index);
            }
        }
        Self { map, taken }
    }
}

impl Drop for FullFlowTable {
    fn drop(&mut self) {
        for &index in &self.taken {
            let _ = self.map.set(index, HttpFlowEntry::default(), 0);
        }
    }
}

fn group(snapshot: &Snapshot) -> &lynx::model::Group {
    snapshot.groups.first().expect("the snapshot has group web")
}

#[test]
fn a_full_flow_table_is_counted_exported_and_keeps_the_autoscaler_from_scaling_down() {
    if !privileged(
        "a_full_flow_table_is_counted_exported_and_keeps_the_autoscaler_from_scaling_down",
    ) {
        return;
    }
    let farm = Farm::new("flowmap", 2);
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    // Idle members: with complete figures the group shrinks once the window is full.
    let policy = "[groups.autoscale]\nmin = 1\nmax = 2\nwindow = \"5s\"\n\
                  scale_down_cpu_percent = 50.0\nscale_up_cpu_percent = 90.0\n\
                  scale_up_cooldown = \"1s\"\nscale_down_cooldown = \"1s\"\n";
    // nginx counted on the farm's port.
    let config = farm.config(policy).replace(
        "[nginx]\n",
        &format!("[nginx]\nports = [{}]\n", farm.nginx.port),
    );
    let daemon =
        DaemonUnderTest::start_with_args("flowmap", "200ms", &listen.to_string(), &config, &[]);
    let table = FullFlowTable::fill(&daemon);
    assert!(!table.taken.is_empty(), "the flow table had no free slot");
    // Connections through nginx now find no slot.
    for _ in 0..20 {
        let _ = farm.get_within(Duration::from_secs(2));
    }
    let dropped = daemon.wait_for("the drops in the snapshot", Duration::from_secs(10), |s| {
        s.kernel_drops.nginx_flows_full > 0
    });
    eprintln!(
        "took {} free slots; {} connections not followed",
        table.taken.len(),
        dropped.kernel_drops.nginx_flows_full
    );
    let exported = metric(listen, "lynx_kernel_drops_total", "{map=\"nginx_flows\"}");
    assert!(
        exported.is_some_and(|n| n > 0.0),
        "/metrics exports the drops: {exported:?}"
    );

    // Idle, but counted from a table that missed connections: the group keeps its size.
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let snapshot = daemon.next_snapshot();
        let autoscaler = group(&snapshot).autoscaler.clone().expect("autoscaled");
        assert!(
            autoscaler
                .last_action
                .as_ref()
                .is_none_or(|action| action.direction != "down"),
            "scaled down on incomplete figures: {autoscaler:?}\nlog:\n{}",
            daemon.log()
        );
        assert_eq!(group(&snapshot).running, 2, "{:?}", group(&snapshot));
    }
    let held = daemon.next_snapshot();
    let reason = group(&held)
        .autoscaler
        .as_ref()
        .and_then(|a| a.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("went uncounted"),
        "the reason says why: {reason}"
    );

    // The table has room again, and nginx's workers that had unfollowed connections are
    // replaced (a reload): the figures are complete again, and the idle group shrinks.
    drop(table);
    let master = daemon
        .next_snapshot()
        .nginx
        .master_pid
        .expect("nginx is counted");
    let old_workers = lynx::nginx::children(master);
    // SAFETY: kill has no memory-safety preconditions; the master is the farm's nginx.
    unsafe { libc::kill(master as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lynx::nginx::children(master).is_disjoint(&old_workers) {
        assert!(
            Instant::now() < deadline,
            "nginx's old workers {old_workers:?} still run: {:?}",
            lynx::nginx::children(master)
        );
        sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snapshot = daemon.next_snapshot();
        let autoscaler = group(&snapshot).autoscaler.clone().expect("autoscaled");
        if autoscaler
            .last_action
            .as_ref()
            .is_some_and(|action| action.direction == "down")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scale-down 30 s after the figures were complete again: {autoscaler:?}\nlog:\n{}",
            daemon.log()
        );
    }
}
