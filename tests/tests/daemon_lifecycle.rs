//! The daemon over time: readers never see a partial snapshot, counters of removed containers
//! leave the kernel maps, and a daemon killed with SIGKILL and started again goes on counting
//! (and unpins the maps of other layout versions), and the host's own traffic is counted only
//! with `count_host_network`.
use std::{
    collections::{BTreeSet, HashSet},
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    thread,
    time::{Duration, Instant},
};

use lynx::{collector::cgroupfs::CgroupLayout, model::Snapshot};
use lynx_common::{
    CGROUP_CPU_MAP, CGROUP_IO_MAP, CGROUP_NET_MAP, CpuTime, IoCounters, MAPS_LAYOUT_VERSION,
    NetCounters,
};
use lynx_tests::{
    daemon::DaemonUnderTest,
    lxd::{BRIDGE_ADDRESS, TestContainer, lxd},
    privileged,
};

#[test]
fn a_tight_reader_never_sees_invalid_json() {
    if !privileged("a_tight_reader_never_sees_invalid_json") {
        return;
    }
    let daemon = DaemonUnderTest::start("reader", "100ms");
    let (mut reads, mut documents) = (0u64, BTreeSet::new());
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        let bytes = fs::read(&daemon.snapshot_path).expect("the snapshot file is always there");
        let snapshot: Snapshot = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "read {reads} gave invalid JSON: {e}\n{}",
                String::from_utf8_lossy(&bytes)
            )
        });
        documents.insert(snapshot.host.timestamp);
        reads += 1;
    }
    eprintln!(
        "{reads} reads in 30 s saw {} documents, all valid",
        documents.len()
    );
    assert!(
        documents.len() >= 200,
        "the daemon wrote only {} snapshots in 30 s",
        documents.len()
    );
    assert!(
        reads > documents.len() as u64 * 10,
        "the reader was not tight: {reads} reads"
    );
}

/// Every cgroup id in the daemon's pinned per-cgroup maps.
fn all_pinned_keys(daemon: &DaemonUnderTest) -> HashSet<u64> {
    let mut keys: HashSet<u64> = daemon
        .pinned_keys::<CpuTime>(CGROUP_CPU_MAP)
        .into_iter()
        .collect();
    keys.extend(daemon.pinned_keys::<NetCounters>(CGROUP_NET_MAP));
    keys.extend(daemon.pinned_keys::<IoCounters>(CGROUP_IO_MAP));
    keys
}

/// Ids (inode numbers) of every cgroup that exists now.
fn live_cgroup_ids() -> HashSet<u64> {
    let root = CgroupLayout::detect().expect("cgroup layout").unified;
    let mut ids = HashSet::new();
    let mut pending = vec![root];
    while let Some(dir) = pending.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        ids.insert(meta.ino());
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    ids
}

#[test]
fn starting_and_deleting_containers_leaves_no_map_entries() {
    if !privileged("starting_and_deleting_containers_leaves_no_map_entries") {
        return;
    }
    lxd();
    let daemon = DaemonUnderTest::start("churn", "100ms");
    let workload = format!(
        "dd if=/dev/zero of=/x bs=4k count=4 oflag=direct 2>/dev/null; \
         wget -q -O /dev/null http://{BRIDGE_ADDRESS}:9/ 2>/dev/null; true"
    );
    let mut seen_in_maps = 0;
    // 50 containers, five at a time.
    for round in 0..10 {
        let batch: Vec<TestContainer> = thread::scope(|scope| {
            let launches: Vec<_> = (0..5)
                .map(|_| scope.spawn(|| TestContainer::launch("churn")))
                .collect();
            launches
                .into_iter()
                .map(|l| l.join().expect("launch"))
                .collect()
        });
        for container in &batch {
            container.exec_ok(&["sh", "-c", &workload]);
        }
        let ids: Vec<u64> = batch
            .iter()
            .map(|c| {
                let path = CgroupLayout::detect()
                    .expect("layout")
                    .unified
                    .join(format!("lxc.payload.{}", c.name()));
                fs::metadata(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    .ino()
            })
            .collect();
        daemon.next_snapshot();
        let keys = all_pinned_keys(&daemon);
        seen_in_maps += ids.iter().filter(|id| keys.contains(id)).count();
        drop(batch);
        eprintln!("round {round}: 5 containers started, counted and deleted");
    }
    assert!(
        seen_in_maps >= 45,
        "only {seen_in_maps} of 50 containers were ever in the maps"
    );

    // Three ticks for the daemon to notice the last ones are gone.
    for _ in 0..3 {
        daemon.next_snapshot();
    }
    let live = live_cgroup_ids();
    let stale: Vec<u64> = all_pinned_keys(&daemon)
        .into_iter()
        .filter(|id| !live.contains(id))
        .collect();
    assert!(
        stale.is_empty(),
        "map entries of removed cgroups remain: {stale:?}"
    );
}

#[test]
fn a_daemon_killed_and_restarted_continues_the_counts() {
    if !privileged("a_daemon_killed_and_restarted_continues_the_counts") {
        return;
    }
    lxd();
    let container = TestContainer::launch("restart");
    let traffic =
        format!("for i in $(seq 1 400); do wget -q -O /dev/null http://{BRIDGE_ADDRESS}:9/; done");
    let mut talker = container.spawn_exec(&["sh", "-c", &traffic]);
    let mut spinner = container.spawn_exec(&["sh", "-c", "while :; do :; done"]);
    let mut daemon = DaemonUnderTest::start("restart", "200ms");
    let name = container.name().to_owned();
    let counters = |snapshot: &Snapshot| {
        let entry = snapshot
            .containers
            .iter()
            .find(|c| c.name == name)
            .expect("container listed");
        let network = entry
            .network
            .as_ref()
            .expect("a container's traffic is counted");
        (entry.cpu.ns, network.tx_bytes, network.rx_bytes)
    };
    let before = counters(
        &daemon.wait_for("traffic counted", Duration::from_secs(20), |s| {
            s.containers.iter().any(|c| {
                c.name == name && c.network.as_ref().is_some_and(|n| n.tx_bytes > 0) && c.cpu.ns > 0
            })
        }),
    );

    // Pins an older daemon left: the restarted one cannot reuse them and unpins them.
    let older_layout = daemon.pin_dir.join(format!("v{}", MAPS_LAYOUT_VERSION - 1));
    fs::create_dir(&older_layout).expect("mkdir in bpffs");
    daemon.kill_and_restart(|| ());
    let after = counters(&daemon.next_snapshot());
    assert!(!older_layout.exists(), "{} is left", older_layout.display());
    let _ = spinner.kill();
    let _ = talker.kill();
    let _ = (spinner.wait(), talker.wait());

    eprintln!("before SIGKILL (cpu ns, tx, rx) {before:?}, after restart {after:?}");
    assert!(
        after.0 > before.0,
        "CPU time went from {} to {} across the restart",
        before.0,
        after.0
    );
    assert!(
        after.1 >= before.1,
        "sent bytes went back from {} to {}",
        before.1,
        after.1
    );
    assert!(
        after.2 >= before.2,
        "received bytes went back from {} to {}",
        before.2,
        after.2
    );
}

/// Network traffic of every cgroup outside containers (the host entry and services): `None`
/// where it is not counted.
fn outside_containers_rx(snapshot: &Snapshot) -> Option<u64> {
    snapshot
        .containers
        .iter()
        .filter(|c| c.kind == "host" || c.kind == "service")
        .map(|c| c.network.as_ref().map(|n| n.rx_bytes))
        .sum()
}

/// Sends `bytes` from one loopback socket of this process to another.
fn loopback_transfer(bytes: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    let receiver = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).expect("read");
        received.len()
    });
    let mut sender = TcpStream::connect(addr).expect("connect");
    sender.write_all(&vec![b'x'; bytes]).expect("send");
    drop(sender);
    assert_eq!(
        receiver.join().expect("receiver"),
        bytes,
        "all bytes arrived"
    );
}

#[test]
fn the_hosts_own_traffic_is_counted_only_when_asked() {
    if !privileged("the_hosts_own_traffic_is_counted_only_when_asked") {
        return;
    }
    const BYTES: usize = 4 << 20;
    let mut daemon = DaemonUnderTest::start("hostnet", "200ms");
    loopback_transfer(BYTES);
    assert_eq!(
        outside_containers_rx(&daemon.next_snapshot()),
        None,
        "by default the host's packets pass no network program"
    );

    daemon.restart_with_config_change("[history]", "count_host_network = true\n[history]");
    let before = outside_containers_rx(&daemon.next_snapshot()).expect("host traffic counted");
    loopback_transfer(BYTES);
    let counted = daemon.wait_for(
        "the loopback transfer in the host's traffic",
        Duration::from_secs(10),
        |s| outside_containers_rx(s).is_some_and(|rx| rx.saturating_sub(before) >= BYTES as u64),
    );
    let grown = outside_containers_rx(&counted)
        .expect("counted")
        .saturating_sub(before);
    // Headers add a few percent; anything else the host received meanwhile adds too.
    assert!(grown >= BYTES as u64, "received {grown} of {BYTES} bytes");
}
