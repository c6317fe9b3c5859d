//! Per-container disk usage against LXD's own API: a container with a 64 MiB root quota on a
//! btrfs pool (a loop file LXD makes), and one on the rig's `dir` pool, where LXD measures
//! nothing and the snapshot says so.
use std::time::{Duration, Instant};

use lynx::model::{Disk, Snapshot};
use lynx_tests::{
    assert_close,
    daemon::DaemonUnderTest,
    lxd::{TestContainer, TestPool, lxd},
    privileged,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// Disk polls in these tests: often, so that waits are short.
const DISK_CONFIG: &str = "[disk]\ninterval = \"500ms\"\n";
/// How long LXD's figures may take to settle after a write and `sync`.
const SETTLE: Duration = Duration::from_secs(60);

/// LXD's instance state document of `name`.
fn lxd_state(name: &str) -> Value {
    let text = lxd().lxc(&["query", &format!("/1.0/instances/{name}/state")]);
    serde_json::from_str(&text).expect("instance state is JSON")
}

/// The `root` device of `name` in `snapshot`, once the daemon has polled its disks.
fn root(snapshot: &Snapshot, name: &str) -> Option<Disk> {
    snapshot
        .containers
        .iter()
        .find(|c| c.name == name)?
        .disk
        .as_ref()?
        .get("root")
        .cloned()
}

/// Waits until the snapshot's root usage of `container` equals what LXD's API says now, and
/// returns it: LXD's figure moves while btrfs commits what was written.
fn settled(daemon: &DaemonUnderTest, container: &TestContainer) -> Disk {
    let name = container.name();
    let deadline = Instant::now() + SETTLE;
    loop {
        container.exec_ok(&["sync"]);
        let lxd_usage = lxd_state(name)["disk"]["root"]["usage"].as_u64();
        let waited = Instant::now();
        while waited.elapsed() < Duration::from_secs(3) {
            if let Some(disk) = daemon.snapshot().and_then(|s| root(&s, name))
                && disk.used_bytes.is_some()
                && disk.used_bytes == lxd_usage
            {
                return disk;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            Instant::now() < deadline,
            "{name}: lynx's root usage never equalled LXD's ({lxd_usage:?}) in {SETTLE:?}; \
             last snapshot: {:?}\ndaemon log:\n{}",
            daemon.snapshot().and_then(|s| root(&s, name)),
            daemon.log()
        );
    }
}

/// Writes `bytes` of random data to `path` inside `container` and syncs.
fn write(container: &TestContainer, path: &str, bytes: u64) {
    assert_eq!(bytes % 4096, 0, "whole 4 KiB blocks");
    let count = format!("count={}", bytes / 4096);
    container.exec_ok(&[
        "dd",
        "if=/dev/urandom",
        &format!("of={path}"),
        "bs=4096",
        &count,
    ]);
    container.exec_ok(&["sync"]);
}

#[test]
fn disk_usage_on_a_btrfs_quota_matches_lxd_and_flags_a_nearly_full_root() {
    if !privileged("disk_usage_on_a_btrfs_quota_matches_lxd_and_flags_a_nearly_full_root") {
        return;
    }
    // The pool outlives the container on it: declared first, dropped last.
    let pool = TestPool::btrfs("disk-pool", "512MiB");
    let web = TestContainer::launch_with(
        "disk-btrfs",
        &["--storage", pool.name(), "--device", "root,size=64MiB"],
    );
    let daemon = DaemonUnderTest::start_configured("disk-btrfs", "200ms", "", DISK_CONFIG);

    let before = settled(&daemon, &web);
    assert_eq!(before.pool.as_deref(), Some(pool.name()));
    assert_eq!(before.limit_bytes, Some(64 * MIB), "the root disk's size");
    assert_eq!(before.reason, None);
    let used_before = before.used_bytes.expect("settled");
    eprintln!("before: {before:?}");

    write(&web, "/fill-20m", 20 * MIB);
    let after = settled(&daemon, &web);
    let used_after = after.used_bytes.expect("settled");
    eprintln!("after 20 MiB: {after:?}");
    assert_close(
        used_after - used_before,
        20 * MIB,
        0.02,
        "root usage growth after writing 20 MiB",
    );
    assert_eq!(after.limit_bytes, Some(64 * MIB));
    assert_eq!(
        after.free_bytes,
        Some(64 * MIB - used_after),
        "free is the quota's rest (the pool has more)"
    );
    assert!(!after.nearly_full, "{used_after} of 64 MiB is under 90%");

    // Up to 58 MiB in all: over 90% of 64 MiB (57.6 MiB).
    let rest = (58 * MIB - used_after) / 4096 * 4096;
    write(&web, "/fill-rest", rest);
    let full = settled(&daemon, &web);
    eprintln!("at 58 MiB: {full:?}");
    let used_full = full.used_bytes.expect("settled");
    assert!(
        used_full as f64 >= 0.9 * (64 * MIB) as f64,
        "{used_full} bytes used"
    );
    assert!(
        full.nearly_full,
        "flagged at {used_full} of 64 MiB: {full:?}"
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("a container's disk is nearly full").count(),
        1,
        "logged once when it crossed:\n{log}"
    );

    web.exec_ok(&["rm", "/fill-20m", "/fill-rest"]);
    let cleared = settled(&daemon, &web);
    eprintln!("after deleting: {cleared:?}");
    assert!(!cleared.nearly_full, "cleared after deleting: {cleared:?}");
    // btrfs keeps a few metadata blocks of the deleted files (16 KiB measured).
    let used_cleared = cleared.used_bytes.expect("settled");
    assert!(
        used_cleared.abs_diff(used_before) < MIB,
        "root usage after deleting the files: {used_cleared}, before writing them {used_before}"
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("a container's disk is nearly full").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("a container's disk is no longer nearly full")
            .count(),
        1,
        "logged once when it went back under:\n{log}"
    );
}

#[test]
fn disk_usage_on_a_dir_pool_is_null_with_the_reason() {
    if !privileged("disk_usage_on_a_dir_pool_is_null_with_the_reason") {
        return;
    }
    let web = TestContainer::launch("disk-dir");
    let daemon = DaemonUnderTest::start_configured("disk-dir", "200ms", "", DISK_CONFIG);
    let snapshot = daemon.wait_for(
        "the dir-pool container's disk",
        Duration::from_secs(30),
        |s| root(s, web.name()).is_some(),
    );
    let disk = root(&snapshot, web.name()).expect("polled");
    eprintln!("dir pool: {disk:?}");
    // LXD itself reports no usage for it.
    let state = lxd_state(web.name());
    assert!(
        state["disk"]["root"].is_null(),
        "LXD measures the dir pool after all: {}",
        state["disk"]
    );
    assert_eq!(disk.pool.as_deref(), Some("default"));
    assert_eq!((disk.used_bytes, disk.limit_bytes), (None, None));
    assert!(!disk.nearly_full);
    let reason = disk.reason.expect("a reason");
    assert!(
        reason.contains("dir pool") && reason.contains("project quotas"),
        "{reason}"
    );
    // Free is the pool's, as LXD's resources say.
    let resources: Value =
        serde_json::from_str(&lxd().lxc(&["query", "/1.0/storage-pools/default/resources"]))
            .expect("resources are JSON");
    let space = &resources["space"];
    let free = space["total"].as_u64().expect("total") - space["used"].as_u64().expect("used");
    assert_close(
        disk.free_bytes.expect("the pool's free space"),
        free,
        0.01,
        "dir pool free space",
    );
    // The rest of the container's entry is as without disks.
    let entry = snapshot
        .containers
        .iter()
        .find(|c| c.name == web.name())
        .expect("listed");
    assert_eq!(
        (entry.kind.as_str(), entry.status.as_str()),
        ("lxd", "Running")
    );
    assert!(entry.memory.is_some() && entry.cgroup.is_some());
}
