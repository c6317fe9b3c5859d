//! LXD going away while the daemon runs: snapshots go on (containers recognised by cgroup),
//! the outage is logged once, and LXD is picked up again when it returns. A test binary of its
//! own, because it takes LXD away from every test running beside it.
use std::time::Duration;

use lynx_tests::{
    daemon::DaemonUnderTest,
    lxd::{TestContainer, ensure_daemon, lxd, stop_daemon},
    privileged,
};

#[test]
fn the_daemon_outlives_an_lxd_outage() {
    if !privileged("the_daemon_outlives_an_lxd_outage") {
        return;
    }
    lxd();
    let container = TestContainer::launch("outage");
    let daemon = DaemonUnderTest::start("outage", "200ms");
    let name = container.name().to_owned();
    daemon.wait_for(
        "LXD's view of the container",
        Duration::from_secs(20),
        |s| {
            s.host.lxd_available
                && s.containers
                    .iter()
                    .any(|c| c.name == name && c.kind == "lxd")
        },
    );

    stop_daemon();
    let during = daemon.wait_for("the outage in the snapshot", Duration::from_secs(20), |s| {
        !s.host.lxd_available
    });
    // Still writing, and the running container is still there, by its cgroup.
    let later = daemon.next_snapshot();
    assert_ne!(later.host.timestamp, during.host.timestamp);
    assert!(!later.host.lxd_available);
    let entry = later
        .containers
        .iter()
        .find(|c| c.name == name)
        .expect("listed by cgroup");
    assert_eq!(entry.kind, "lxc");
    assert_eq!(
        entry.status, "Running",
        "the container outlives LXD's crash"
    );
    assert!(entry.processes.unwrap_or(0) > 0, "its processes still run");

    ensure_daemon();
    daemon.wait_for("LXD back in the snapshot", Duration::from_secs(30), |s| {
        s.host.lxd_available
            && s.containers
                .iter()
                .any(|c| c.name == name && c.kind == "lxd")
    });
    let log = daemon.log();
    assert_eq!(
        log.matches("LXD unavailable").count(),
        1,
        "the outage is logged once:\n{log}"
    );
    assert!(log.contains("LXD answers"), "the return is logged:\n{log}");
}
