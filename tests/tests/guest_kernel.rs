//! The daemon on the kernels LXD hosts run, pure cgroup v2: run by `cargo xtask test` inside
//! the kernel matrix's virtual machines (Debian 12's 6.1 and 6.12), never on the host (the
//! `guest` feature). Each figure of the snapshot against the kernel's own v2 accounting:
//! `cpu.stat`, `memory.current`, `io.stat` of a virtio disk the matrix attaches, the counters
//! of a veth pair the test makes, and nginx's `stub_status` over backends in network
//! namespaces. Containers are cgroups named as LXC names them (`lxc.payload.NAME`), which
//! Lynx must list as container `NAME`. Emulated CPUs are slow and uneven: CPU time is
//! compared over a window that freezing the cgroup closes, never as a share of a CPU.
use std::{
    fs,
    io::Read,
    net::TcpListener,
    os::unix::fs::MetadataExt,
    process::Command,
    thread::{self, sleep},
    time::{Duration, Instant},
};

use lynx::{
    collector::btf::Btf,
    model::{Container, Family, FeatureState, Snapshot},
};
use lynx_common::http::{HTTP_RECV_TRACEPOINT, HTTP_SEND_TRACEPOINT};
use lynx_tests::{TestCgroup, assert_close, daemon::DaemonUnderTest, netns::TestNetns, privileged};

/// Collection interval of the daemons here: emulated CPUs run everything about ten times
/// slower.
const INTERVAL: &str = "500ms";

/// A daemon with no LXD to ask: containers are recognised by their cgroups.
fn guest_daemon(name: &str) -> DaemonUnderTest {
    DaemonUnderTest::start_configured(name, INTERVAL, "", "[lxd]\nsockets = []\n")
}

/// A container cgroup as LXC names it, and its container's name.
fn container_cgroup(role: &str) -> (TestCgroup, String) {
    let name = format!("lynx-{role}-{}", std::process::id());
    (TestCgroup::at_root(&format!("lxc.payload.{name}")), name)
}

/// The entry of container `name`: recognised from its cgroup alone, as an LXC container.
fn container<'a>(snapshot: &'a Snapshot, name: &str) -> &'a Container {
    let found = snapshot
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("container {name} is not in the snapshot"));
    assert_eq!(found.kind, "lxc", "{name}");
    assert_eq!(
        found.cgroup.as_deref(),
        Some(format!("/lxc.payload.{name}").as_str())
    );
    found
}

fn wait_listed(daemon: &DaemonUnderTest, names: &[&str]) {
    daemon.wait_for("the containers listed", Duration::from_secs(60), |s| {
        names
            .iter()
            .all(|name| s.containers.iter().any(|c| c.name == *name))
    });
}

fn sleeper(cgroup: &TestCgroup) -> lynx_tests::ChildGuard {
    cgroup.spawn(Command::new("sleep").arg("600"))
}

/// The features object: every family counted, nginx's bytes through the hooks this kernel
/// has, and the reason when it is the fallback.
fn check_features(snapshot: &Snapshot) {
    let features = &snapshot.features;
    let kernel = snapshot.host.kernel.as_str();
    eprintln!("kernel {kernel}: {features:#?}");
    for family in Family::ALL {
        let feature = features
            .get(&family)
            .unwrap_or_else(|| panic!("{family:?} is not in the features object"));
        assert_eq!(
            feature.state,
            FeatureState::Active,
            "{family:?}: {feature:?}"
        );
    }
    let btf = Btf::from_kernel().expect("the kernel's BTF");
    let requests = &features[&Family::NginxRequests];
    if btf.has_tracepoint(HTTP_RECV_TRACEPOINT) && btf.has_tracepoint(HTTP_SEND_TRACEPOINT) {
        assert_eq!(
            requests.hooks,
            ["tp_btf/sock_recv_length", "tp_btf/sock_send_length"]
        );
        assert_eq!(requests.reason, None);
    } else {
        // Before 6.3: the fallback, and the snapshot says why.
        assert_eq!(requests.hooks, ["tp_btf/sys_exit"]);
        let reason = requests
            .reason
            .as_deref()
            .expect("a reason for the fallback");
        assert!(reason.contains("6.3"), "{reason}");
    }
}

/// A busy loop's CPU time over a window the freezer closes at both ends (no CPU time moves
/// while Lynx and the kernel are read), within 3% of `cpu.stat`; a sleeping container's
/// under 1% of a CPU over the same window.
fn check_cpu(daemon: &DaemonUnderTest, busy: &(TestCgroup, String), idle: &(TestCgroup, String)) {
    let ((busy, busy_name), (idle, idle_name)) = (busy, idle);
    busy.freeze(true);
    let before = daemon.next_snapshot();
    let (kernel_before, idle_kernel_before) = (busy.v2_usage_ns(), idle.v2_usage_ns());
    let opened = Instant::now();
    busy.freeze(false);
    sleep(Duration::from_secs(4));
    busy.freeze(true);
    let after = daemon.next_snapshot();
    let window = opened.elapsed();
    let (kernel_after, idle_kernel_after) = (busy.v2_usage_ns(), idle.v2_usage_ns());
    busy.freeze(false);

    let lynx = container(&after, busy_name).cpu.ns - container(&before, busy_name).cpu.ns;
    let kernel = kernel_after - kernel_before;
    assert!(
        kernel > 500_000_000,
        "the loop ran only {kernel} ns in {window:?}"
    );
    assert_close(lynx, kernel, 0.03, "busy container: cpu.stat usage_usec");

    let idle_lynx = container(&after, idle_name).cpu.ns - container(&before, idle_name).cpu.ns;
    let share = idle_lynx as f64 / window.as_nanos() as f64;
    eprintln!(
        "sleeping container: lynx {idle_lynx} ns, cpu.stat {} ns in {window:?}",
        idle_kernel_after - idle_kernel_before
    );
    assert!(
        share < 0.01,
        "a sleeping container was charged {:.2}% of a CPU",
        share * 100.0
    );
    assert!(idle_kernel_after - idle_kernel_before < window.as_nanos() as u64 / 100);
}

/// A container's memory (48 MiB of tmpfs it wrote, and its own) against `memory.current`
/// within 5%, and its swap against `memory.swap.current`.
fn check_memory(daemon: &DaemonUnderTest, (cgroup, name): &(TestCgroup, String), held: u64) {
    let snapshot = daemon.next_snapshot();
    let memory = container(&snapshot, name)
        .memory
        .clone()
        .expect("memory is read");
    let number = |file: &str| -> Option<u64> {
        fs::read_to_string(cgroup.v2_file(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let current = number("memory.current").expect("memory.current");
    assert!(
        current >= held,
        "memory.current {current} below what the test holds"
    );
    assert_close(memory.used_bytes, current, 0.05, "memory.current");
    if let Some(swap) = number("memory.swap.current") {
        assert_close(memory.swap_bytes, swap, 0.05, "memory.swap.current");
    }
}

/// 64 MiB written with `dd oflag=direct` to the virtio disk the matrix attaches: bytes and
/// operations equal to `io.stat`'s `wbytes` and `wios` exactly.
fn check_block_io(daemon: &DaemonUnderTest, (cgroup, name): &(TestCgroup, String)) {
    // 256 KiB a write: below the virtio disk's largest request, so that no write is split,
    // which io.stat would count as two operations.
    const WRITES: u64 = 256;
    const SIZE: u64 = 256 << 10;
    let disk = std::env::var("LYNX_GUEST_DISK").unwrap_or_default();
    assert!(
        !disk.is_empty(),
        "LYNX_GUEST_DISK names no disk: the kernel matrix attaches one (cargo xtask test)"
    );
    let rdev = fs::metadata(&disk).expect("the disk").rdev();
    let device = format!("{}:{} ", libc::major(rdev), libc::minor(rdev));
    let io_stat = || -> (u64, u64) {
        let stat = fs::read_to_string(cgroup.v2_file("io.stat")).expect("io.stat");
        let line = stat
            .lines()
            .find(|l| l.starts_with(&device))
            .unwrap_or_default();
        let field = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(0)
        };
        (field("wbytes"), field("wios"))
    };
    let before = daemon.next_snapshot();
    let kernel_before = io_stat();
    let mut dd = cgroup.spawn(Command::new("dd").args([
        "if=/dev/zero",
        &format!("of={disk}"),
        &format!("bs={SIZE}"),
        &format!("count={WRITES}"),
        "oflag=direct",
        "status=none",
    ]));
    assert!(dd.0.wait().expect("dd ends").success(), "dd to {disk}");
    let after = daemon.next_snapshot();
    let kernel_after = io_stat();

    let lynx = |s: &Snapshot| {
        let io = &container(s, name).block_io;
        (io.write_bytes, io.write_ops)
    };
    let (lynx_before, lynx_after) = (lynx(&before), lynx(&after));
    let lynx = (lynx_after.0 - lynx_before.0, lynx_after.1 - lynx_before.1);
    let kernel = (
        kernel_after.0 - kernel_before.0,
        kernel_after.1 - kernel_before.1,
    );
    eprintln!("{disk}: lynx {lynx:?}, io.stat {kernel:?} (bytes, writes)");
    assert_eq!(kernel.0, WRITES * SIZE, "io.stat wbytes of what dd wrote");
    assert_eq!(lynx, kernel, "written bytes and operations");
}

/// 16 MiB sent from a container, in a network namespace of the test's, to the host over a
/// veth pair: what Lynx counts each way within 2% of the pair's own counters.
fn check_network(
    daemon: &DaemonUnderTest,
    (cgroup, name): &(TestCgroup, String),
    netns: &TestNetns,
) {
    const BYTES: usize = 16 << 20;
    let before = daemon.next_snapshot();
    assert!(
        container(&before, name).network.is_some(),
        "{name}'s traffic is counted"
    );
    let listener = TcpListener::bind((netns.host_addr, 0)).expect("listen on the host's side");
    let port = listener.local_addr().expect("an address").port();
    let receiver = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the sender connects");
        let mut data = vec![0; BYTES];
        stream
            .read_exact(&mut data)
            .expect("read what the container sends");
    });
    let (sent_before, received_before) = netns.l3_bytes();
    let script = format!(
        "head -c {BYTES} /dev/zero | busybox nc {} {port}",
        netns.host_addr
    );
    let mut sender = cgroup.spawn(&mut netns.command(&["timeout", "120", "sh", "-c", &script]));
    receiver.join().expect("the receiver got everything");
    // The receiver closed its end, which ends the sender.
    sender.0.wait().expect("the sender ends");
    sleep(Duration::from_millis(500));
    let after = daemon.next_snapshot();
    let (sent_after, received_after) = netns.l3_bytes();

    let network = |s: &Snapshot| container(s, name).network.clone().expect("counted");
    let (lynx_before, lynx_after) = (network(&before), network(&after));
    assert!(sent_after - sent_before >= BYTES as u64);
    assert_close(
        lynx_after.tx_bytes - lynx_before.tx_bytes,
        sent_after - sent_before,
        0.02,
        "bytes the container sent: its veth's",
    );
    assert_close(
        lynx_after.rx_bytes - lynx_before.rx_bytes,
        received_after - received_before,
        0.02,
        "bytes the container received: its veth's",
    );
}

/// One daemon over five containers, each checked against the kernel's accounting of its
/// cgroup: a busy one and a sleeping one (CPU), one holding memory, one writing to a disk,
/// one sending over a veth pair. Each is listed by the name in its cgroup.
#[test]
fn containers_match_the_kernels_own_cgroup_v2_accounting() {
    if !privileged("containers_match_the_kernels_own_cgroup_v2_accounting") {
        return;
    }
    const HELD: u64 = 48 << 20;
    let busy = container_cgroup("busy");
    let idle = container_cgroup("idle");
    let memory = container_cgroup("memory");
    let disk = container_cgroup("disk");
    let net = container_cgroup("net");
    let netns = TestNetns::create(3);
    let _loop = busy
        .0
        .spawn(Command::new("sh").args(["-c", "while :; do :; done"]));
    let _sleepers: Vec<_> = [&idle, &disk, &net]
        .map(|(cgroup, _)| sleeper(cgroup))
        .into();
    // A tmpfs file is charged to the cgroup of the task that wrote it, for as long as it lives.
    let held = std::env::temp_dir().join(&memory.1);
    let _holder = memory.0.spawn(Command::new("sh").args([
        "-c",
        &format!(
            "head -c {HELD} /dev/zero > {} && exec sleep 600",
            held.display()
        ),
    ]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(&held).map_or(0, |m| m.len()) < HELD {
        assert!(
            Instant::now() < deadline,
            "{} not written in 60 s",
            held.display()
        );
        sleep(Duration::from_millis(100));
    }

    let daemon = guest_daemon("guest-containers");
    let names = [&busy, &idle, &memory, &disk, &net].map(|(_, name)| name.as_str());
    wait_listed(&daemon, &names);
    let snapshot = daemon.next_snapshot();
    check_features(&snapshot);
    // Their processes, as cgroup.procs lists them (none of these come or go now).
    for (cgroup, name) in [&busy, &idle, &memory, &disk, &net] {
        let procs = fs::read_to_string(cgroup.v2_file("cgroup.procs")).expect("cgroup.procs");
        assert_eq!(
            container(&snapshot, name).processes,
            Some(procs.lines().count() as u32),
            "{name}'s processes"
        );
    }
    check_cpu(&daemon, &busy, &idle);
    check_memory(&daemon, &memory, HELD);
    check_block_io(&daemon, &disk);
    check_network(&daemon, &net, &netns);
    let _ = fs::remove_file(&held);
}

#[test]
fn nginx_requests_and_accepts_equal_stub_status_and_each_backend() {
    if !privileged("nginx_requests_and_accepts_equal_stub_status_and_each_backend") {
        return;
    }
    // 10,000 with keep-alive and 10,000 with a connection each.
    // A slower interval than the others': the load, not the daemon, should have the CPUs.
    lynx_tests::netns::nginx_counts_exactly_over_namespaces("guest-nginx", "1s", "", 10_000);
}
