//! The container observer against real LXD containers: each figure in the daemon's snapshot
//! against an independent oracle (the kernel's cgroup accounting, the veth's interface
//! counters, LXD's own API through `lxc`).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread::{self, sleep},
    time::{Duration, Instant},
};

use lynx::model::{Container, Network};
use lynx_tests::{
    KernelOracle, assert_close,
    daemon::DaemonUnderTest,
    entry,
    lxd::{TestContainer, lxd},
    privileged, read_number,
};
use serde_json::Value;

fn network(container: &Container) -> &Network {
    container
        .network
        .as_ref()
        .unwrap_or_else(|| panic!("{}: its traffic is not counted", container.name))
}

/// Interface counters of a container's host-side veth.
struct Veth(PathBuf);

impl Veth {
    fn of(container: &str) -> Self {
        let state: Value = serde_json::from_str(
            &lxd().lxc(&["query", &format!("/1.0/instances/{container}/state")]),
        )
        .expect("instance state JSON");
        let name = state["network"]["eth0"]["host_name"]
            .as_str()
            .expect("eth0 has a host-side veth");
        Self(Path::new("/sys/class/net").join(name).join("statistics"))
    }

    fn read(&self, counter: &str) -> u64 {
        read_number(&self.0.join(counter))
    }

    /// What the container sent, in bytes from the network header on (the veth's receive
    /// side, less 14 bytes of Ethernet header a packet), and what it received.
    fn l3_bytes(&self) -> (u64, u64) {
        let l3 = |bytes: &str, packets: &str| self.read(bytes) - 14 * self.read(packets);
        (l3("rx_bytes", "rx_packets"), l3("tx_bytes", "tx_packets"))
    }
}

#[test]
fn containers_agree_with_the_kernel_and_lxd() {
    if !privileged("containers_agree_with_the_kernel_and_lxd") {
        return;
    }
    let lxd = lxd();
    let [busy, disk, server, client] = thread::scope(|scope| {
        ["busy", "disk", "server", "client"]
            .map(|role| scope.spawn(move || TestContainer::launch(role)))
            .map(|launch| launch.join().expect("launch container"))
    });
    let disk_oracle = KernelOracle::lxc(disk.name());
    disk_oracle.enable_io_accounting();
    let daemon = DaemonUnderTest::start("containers", "200ms");
    let names = [&busy, &disk, &server, &client].map(|c| c.name().to_owned());
    daemon.wait_for(
        "all four containers, known to LXD",
        Duration::from_secs(30),
        |s| {
            names
                .iter()
                .all(|n| s.containers.iter().any(|c| &c.name == n && c.kind == "lxd"))
        },
    );

    // Quiet start: every reading of both sides before any workload.
    let busy_oracle = KernelOracle::lxc(busy.name());
    let (client_veth, server_veth) = (Veth::of(client.name()), Veth::of(server.name()));
    server.serve_http(8080);
    server.exec_ok(&["dd", "if=/dev/zero", "of=/www/big", "bs=64k", "count=768"]);
    // Both sides of the busy container's CPU time every 100 ms, shown with the test's output:
    // where they part says when time was missed.
    let recording = AtomicBool::new(true);
    let started = Instant::now();
    let record = || {
        let mut points = Vec::new();
        while recording.load(Ordering::Relaxed) {
            let lynx = daemon
                .snapshot()
                .and_then(|s| Some(s.containers.iter().find(|c| c.name == busy.name())?.cpu.ns));
            points.push((started.elapsed(), busy_oracle.cpu_ns(), lynx));
            sleep(Duration::from_millis(100));
        }
        points
    };
    let (readings, timeline) = thread::scope(|scope| {
        let timeline = scope.spawn(record);
        let before = daemon.next_snapshot();
        let (cpu_before, io_before) = (busy_oracle.cpu_ns(), disk_oracle.io());
        let (_, client_received_before) = client_veth.l3_bytes();
        let (server_sent_before, _) = server_veth.l3_bytes();

        // A memory hog (page cache it keeps), then a CPU loop for 6 s, bounded inside the
        // container (killing the client would leave the loop spinning until LXD notices).
        busy.exec_ok(&["dd", "if=/dev/zero", "of=/hog", "bs=1M", "count=64"]);
        let mut spin = busy.spawn_exec(&["timeout", "6", "sh", "-c", "while :; do :; done"]);
        // 64 MiB of direct writes.
        disk.exec_ok(&[
            "dd",
            "if=/dev/zero",
            "of=/direct",
            "bs=64k",
            "count=1024",
            "oflag=direct",
        ]);
        // 48 MiB from one container to the other over HTTP.
        let url = format!("http://{}:8080/big", server.ipv4());
        client.exec_ok(&["wget", "-q", "-O", "/dev/null", &url]);
        let spun = spin.wait().expect("wait for lxc exec");
        // busybox timeout exits 143 when it ends the loop, as it must have.
        assert_eq!(spun.code(), Some(143), "the CPU loop ran until its timeout");
        // Quiet end: the busy container has stopped, as the kernel sees it, and the network
        // settles, before the second readings.
        busy_oracle.wait_quiet();
        sleep(Duration::from_millis(500));
        let after = daemon.next_snapshot();
        let (cpu_after, io_after) = (busy_oracle.cpu_ns(), disk_oracle.io());
        let (_, client_received_after) = client_veth.l3_bytes();
        let (server_sent_after, _) = server_veth.l3_bytes();
        recording.store(false, Ordering::Relaxed);
        let readings = (before, after, cpu_before, cpu_after, io_before, io_after);
        let veths = (
            client_received_before,
            client_received_after,
            server_sent_before,
            server_sent_after,
        );
        (
            (readings, veths),
            timeline.join().expect("the timeline's thread"),
        )
    });
    for (at, oracle, lynx) in &timeline {
        eprintln!(
            "timeline {:>6} ms: cpu.stat {oracle} lynx {lynx:?}",
            at.as_millis()
        );
    }
    let ((before, after, cpu_before, cpu_after, io_before, io_after), veths) = readings;
    let (client_received_before, client_received_after, server_sent_before, server_sent_after) =
        veths;

    let delta =
        |f: fn(&Container) -> u64, name: &str| f(entry(&after, name)) - f(entry(&before, name));
    assert_close(
        delta(|c| c.cpu.ns, busy.name()),
        cpu_after - cpu_before,
        0.03,
        "busy container CPU vs cpu.stat usage_usec",
    );
    assert!(
        cpu_after - cpu_before > 2_000_000_000,
        "the CPU loop ran for 3 s"
    );
    assert_close(
        delta(|c| c.block_io.write_bytes, disk.name()),
        io_after.1 - io_before.1,
        0.05,
        "disk container direct-I/O write bytes vs the kernel's per-cgroup I/O statistics",
    );
    assert!(io_after.1 - io_before.1 >= 64 << 20, "64 MiB were written");
    assert_close(
        delta(|c| c.block_io.write_ops, disk.name()),
        io_after.2 - io_before.2,
        0.05,
        "disk container write operations",
    );
    assert_close(
        delta(|c| network(c).tx_bytes, server.name()),
        server_sent_after - server_sent_before,
        0.02,
        "server container sent bytes vs its veth",
    );
    assert_close(
        delta(|c| network(c).rx_bytes, client.name()),
        client_received_after - client_received_before,
        0.02,
        "client container received bytes vs its veth",
    );
    assert!(
        server_sent_after - server_sent_before > 48 << 20,
        "48 MiB went across"
    );
    assert_eq!(
        entry(&after, "host").network,
        None,
        "by default only containers' traffic passes the network programs"
    );
    for container in [&busy, &disk, &server, &client] {
        let memory = entry(&after, container.name())
            .memory
            .as_ref()
            .expect("memory read");
        assert_close(
            memory.used_bytes,
            KernelOracle::lxc(container.name()).memory_bytes(),
            0.05,
            &format!("{} memory vs memory.usage_in_bytes", container.name()),
        );
    }
    assert!(
        entry(&after, busy.name())
            .memory
            .as_ref()
            .expect("memory")
            .used_bytes
            > 60 << 20,
        "the memory hog's 64 MiB show"
    );

    // Names, status, addresses and PIDs as LXD's API reports them.
    let listed: HashMap<String, Value> = lxd
        .list()
        .into_iter()
        .map(|i| (i["name"].as_str().expect("name").to_owned(), i))
        .collect();
    for container in [&busy, &disk, &server, &client] {
        let (ours, theirs) = (entry(&after, container.name()), &listed[container.name()]);
        assert_eq!(ours.status, theirs["status"].as_str().expect("status"));
        assert_eq!(
            Some(u64::from(ours.pid.expect("pid"))),
            theirs["state"]["pid"].as_u64()
        );
        let addresses: Vec<String> = theirs["state"]["network"]
            .as_object()
            .expect("network")
            .iter()
            .filter(|(nic, _)| *nic != "lo")
            .flat_map(|(_, nic)| nic["addresses"].as_array().expect("addresses").clone())
            .filter(|a| a["family"] == "inet" && a["scope"] == "global")
            .map(|a| a["address"].as_str().expect("address").to_owned())
            .collect();
        assert_eq!(ours.ipv4, addresses, "{} IPv4", container.name());
        assert_eq!(
            ours.cgroup.as_deref(),
            Some(format!("/lxc.payload.{}", container.name()).as_str())
        );
    }

    // A stopped and a frozen container are listed with their status.
    server.stop();
    disk.freeze();
    let listed = daemon.wait_for(
        "stopped and frozen containers",
        Duration::from_secs(10),
        |s| {
            s.containers
                .iter()
                .any(|c| c.name == server.name() && c.status == "Stopped")
                && s.containers
                    .iter()
                    .any(|c| c.name == disk.name() && c.status == "Frozen")
        },
    );
    assert_eq!(entry(&listed, server.name()).pid, None);
    assert!(listed.host.containers_stopped >= 1 && listed.host.containers_frozen >= 1);
    disk.unfreeze();
}
