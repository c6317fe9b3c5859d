//! Docker containers beside LXD's, against a real Docker Engine the test starts: what the
//! daemon's snapshot says of each checked against `docker inspect` and the kernel's own
//! cgroup accounting, the engine's events, `lynx containers` on Docker containers, and an
//! engine that dies mid-run.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use lynx::{
    collector::cgroupfs::CgroupLayout,
    model::{Container, Snapshot},
};
use lynx_common::{
    CGROUP_CPU_MAP, CGROUP_IO_MAP, CGROUP_NET_MAP, CpuTime, IoCounters, NetCounters,
};
use lynx_tests::{
    KernelOracle, assert_close,
    daemon::DaemonUnderTest,
    docker::{DockerEngine, IMAGE},
    entry,
    lxd::{TestContainer, lxd},
    lynx_bin, privileged,
};

/// A daemon collecting every 200 ms that watches `engine`, reading every container again
/// only every minute, so that what changes sooner came from the event stream.
fn daemon_watching(name: &str, engine: &DockerEngine) -> DaemonUnderTest {
    let config = format!("{}reconcile_interval = \"60s\"\n", engine.lynx_config());
    DaemonUnderTest::start_configured(name, "200ms", "", &config)
}

/// The snapshot agrees with `docker inspect` on a container's identity and state.
fn assert_matches_inspect(engine: &DockerEngine, snapshot: &Snapshot, name: &str) {
    let ours = entry(snapshot, name);
    let theirs = engine.inspect(name);
    let docker = ours.docker.as_ref().expect("the engine's fields");
    assert_eq!(ours.kind, "docker");
    assert_eq!(docker.id, theirs["Id"].as_str().expect("Id"));
    assert_eq!(
        ours.image.as_deref(),
        theirs["Config"]["Image"].as_str(),
        "{name} image"
    );
    assert_eq!(docker.image_id, theirs["Image"].as_str().expect("Image"));
    assert_eq!(
        docker.state,
        theirs["State"]["Status"].as_str().expect("Status")
    );
    assert_eq!(
        ours.pid.map(u64::from),
        theirs["State"]["Pid"].as_u64().filter(|&pid| pid > 0),
        "{name} PID"
    );
    let mut command = vec![theirs["Path"].as_str().expect("Path").to_owned()];
    command.extend(
        theirs["Args"]
            .as_array()
            .expect("Args")
            .iter()
            .map(|a| a.as_str().expect("an argument").to_owned()),
    );
    assert_eq!(docker.command, command, "{name} command line");
    // Only a container with processes has a cgroup.
    let running = theirs["State"]["Pid"].as_u64().is_some_and(|pid| pid > 0);
    assert_eq!(
        ours.cgroup,
        running.then(|| engine.cgroup(name)),
        "{name} cgroup"
    );
}

#[test]
fn docker_containers_agree_with_the_engine_and_the_kernel() {
    if !privileged("docker_containers_agree_with_the_engine_and_the_kernel") {
        return;
    }
    let engine = DockerEngine::start("agree");
    let beside = thread::scope(|scope| {
        let lxd = scope.spawn(|| TestContainer::launch("beside-docker"));
        engine.run("lynx-busy", &["sleep", "3600"]);
        // Its memory: 64 MiB of page cache it keeps.
        engine.run(
            "lynx-hog",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/hog bs=1M count=64 && exec sleep 3600",
            ],
        );
        engine.run("lynx-disk", &["sleep", "3600"]);
        lxd.join().expect("launch the LXD container")
    });
    let disk = KernelOracle::of(&engine.cgroup("lynx-disk"));
    disk.enable_io_accounting();
    let busy = KernelOracle::of(&engine.cgroup("lynx-busy"));
    let daemon = daemon_watching("docker-agree", &engine);
    let names = ["lynx-busy", "lynx-hog", "lynx-disk"];
    daemon.wait_for(
        "the three Docker containers, named",
        Duration::from_secs(30),
        |s| {
            names.iter().all(|n| {
                s.containers
                    .iter()
                    .any(|c| c.name == *n && c.kind == "docker")
            })
        },
    );

    // Quiet start, then a CPU loop for 6 s and 64 MiB of direct writes, each bounded inside
    // its container and over when `docker exec` returns; then a quiet end.
    let before = daemon.next_snapshot();
    let (cpu_before, io_before) = (busy.cpu_ns(), disk.io());
    thread::scope(|scope| {
        let spin = scope.spawn(|| {
            engine.try_docker(&[
                "exec",
                "lynx-busy",
                "timeout",
                "6",
                "sh",
                "-c",
                "while :; do :; done",
            ])
        });
        engine.docker(&[
            "exec",
            "lynx-disk",
            "dd",
            "if=/dev/zero",
            "of=/direct",
            "bs=64k",
            "count=1024",
            "oflag=direct",
        ]);
        let spun = spin.join().expect("docker exec's thread");
        // busybox timeout exits 143 when it ends the loop, as it must have.
        assert_eq!(spun.status.code(), Some(143), "the CPU loop: {spun:?}");
    });
    busy.wait_quiet();
    thread::sleep(Duration::from_millis(500));
    let after = daemon.next_snapshot();
    let (cpu_after, io_after) = (busy.cpu_ns(), disk.io());

    let delta =
        |f: fn(&Container) -> u64, name: &str| f(entry(&after, name)) - f(entry(&before, name));
    assert!(
        cpu_after - cpu_before > 1_000_000_000,
        "the CPU loop had at least a second of CPU"
    );
    assert_close(
        delta(|c| c.cpu.ns, "lynx-busy"),
        cpu_after - cpu_before,
        0.03,
        "busy Docker container CPU vs cpu.stat usage_usec",
    );
    assert!(io_after.1 - io_before.1 >= 64 << 20, "64 MiB were written");
    assert_close(
        delta(|c| c.block_io.write_bytes, "lynx-disk"),
        io_after.1 - io_before.1,
        0.05,
        "disk Docker container direct-I/O write bytes vs the kernel's per-cgroup I/O statistics",
    );
    assert_close(
        delta(|c| c.block_io.write_ops, "lynx-disk"),
        io_after.2 - io_before.2,
        0.05,
        "disk Docker container write operations",
    );
    for name in names {
        let memory = entry(&after, name).memory.as_ref().expect("memory read");
        assert_close(
            memory.used_bytes,
            KernelOracle::of(&engine.cgroup(name)).memory_bytes(),
            0.05,
            &format!("{name} memory vs memory.usage_in_bytes"),
        );
        assert_matches_inspect(&engine, &after, name);
        assert_eq!(entry(&after, name).status, "Running");
    }
    let hog = entry(&after, "lynx-hog").memory.as_ref().expect("memory");
    assert!(hog.used_bytes > 60 << 20, "the memory hog's 64 MiB show");
    let lxd_entry = entry(&after, beside.name());
    assert_eq!(
        (lxd_entry.kind.as_str(), lxd_entry.docker.as_ref()),
        ("lxd", None),
        "the LXD container beside them"
    );
    assert_eq!(after.host.docker_available, Some(true));

    // A stopped container is listed, as `docker ps -a` does, with no PID, and no cgroup once
    // the kernel has removed it.
    engine.docker(&["stop", "--time", "1", "lynx-hog"]);
    let stopped = daemon.wait_for("the stopped container", Duration::from_secs(10), |s| {
        s.containers
            .iter()
            .any(|c| c.name == "lynx-hog" && c.status == "Stopped" && c.cgroup.is_none())
    });
    assert_matches_inspect(&engine, &stopped, "lynx-hog");
    drop(beside);
    lxd();
}

/// Every cgroup id in the daemon's pinned per-cgroup maps.
fn pinned_ids(daemon: &DaemonUnderTest) -> Vec<u64> {
    let mut ids = daemon.pinned_keys::<CpuTime>(CGROUP_CPU_MAP);
    ids.extend(daemon.pinned_keys::<NetCounters>(CGROUP_NET_MAP));
    ids.extend(daemon.pinned_keys::<IoCounters>(CGROUP_IO_MAP));
    ids
}

#[test]
fn docker_pause_shows_at_once_and_removal_leaves_nothing() {
    if !privileged("docker_pause_shows_at_once_and_removal_leaves_nothing") {
        return;
    }
    let engine = DockerEngine::start("events");
    engine.run("lynx-paused", &["sh", "-c", "while :; do sleep 0.05; done"]);
    let cgroup = engine.cgroup("lynx-paused");
    let id = fs::metadata(
        CgroupLayout::detect()
            .expect("cgroup layout")
            .unified
            .join(cgroup.trim_start_matches('/')),
    )
    .expect("the container's cgroup")
    .ino();
    let daemon = daemon_watching("docker-events", &engine);
    daemon.wait_for("the container, counted", Duration::from_secs(30), |s| {
        s.containers
            .iter()
            .any(|c| c.name == "lynx-paused" && c.cpu.ns > 0)
    });
    assert!(
        pinned_ids(&daemon).contains(&id),
        "its cgroup is in the maps"
    );

    engine.docker(&["pause", "lynx-paused"]);
    let paused_at = Instant::now();
    let paused = daemon.wait_for("paused", Duration::from_secs(5), |s| {
        s.containers
            .iter()
            .any(|c| c.name == "lynx-paused" && c.status == "Frozen")
    });
    let after = paused_at.elapsed();
    eprintln!("docker pause shown as paused after {after:?}");
    assert!(
        after < Duration::from_secs(1),
        "paused shown after {after:?}"
    );
    assert_matches_inspect(&engine, &paused, "lynx-paused");
    assert_eq!(
        entry(&paused, "lynx-paused")
            .docker
            .as_ref()
            .map(|d| d.state.as_str()),
        Some("paused")
    );

    engine.docker(&["rm", "--force", "lynx-paused"]);
    let removed_at = Instant::now();
    daemon.wait_for("removed", Duration::from_secs(5), |s| {
        s.containers.iter().all(|c| c.name != "lynx-paused")
            && s.containers
                .iter()
                .all(|c| c.cgroup.as_deref() != Some(cgroup.as_str()))
    });
    eprintln!(
        "docker rm -f gone from the snapshot after {:?}",
        removed_at.elapsed()
    );
    // Three ticks for the daemon to forget the cgroup's counters.
    for _ in 0..3 {
        daemon.next_snapshot();
    }
    assert!(
        !pinned_ids(&daemon).contains(&id),
        "the removed container's cgroup {id} is still in the maps"
    );
}

fn lynx(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(lynx_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run lynx")
}

#[test]
fn lynx_containers_acts_on_docker_containers() {
    if !privileged("lynx_containers_acts_on_docker_containers") {
        return;
    }
    let engine = DockerEngine::start("manage");
    let lxd = lxd();
    let twin = TestContainer::launch("twin");
    let config =
        std::env::temp_dir().join(format!("lynx-docker-manage-{}.toml", std::process::id()));
    fs::write(&config, engine.lynx_config()).expect("write the config");
    engine.run("lynx-managed", &["sleep", "3600"]);
    let ok = |args: &[&str]| {
        let output = lynx(&config, args);
        assert!(
            output.status.success(),
            "lynx {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let state = |name: &str| engine.docker(&["inspect", "--format", "{{.State.Status}}", name]);

    for (action, expected) in [
        ("pause", "paused"),
        ("unpause", "running"),
        ("stop", "exited"),
        ("start", "running"),
        ("restart", "running"),
    ] {
        let pid_before = engine.inspect("lynx-managed")["State"]["Pid"].clone();
        let mut args = vec!["containers", action, "lynx-managed"];
        if matches!(action, "stop" | "restart") {
            args.extend(["--timeout", "2s"]);
        }
        assert_eq!(ok(&args), format!("lynx-managed (docker): {expected}\n"));
        assert_eq!(
            state("lynx-managed"),
            expected,
            "after lynx containers {action}"
        );
        if action == "restart" {
            assert_ne!(
                engine.inspect("lynx-managed")["State"]["Pid"],
                pid_before,
                "restarted: a new main process"
            );
        }
    }

    let listed = ok(&["containers", "list"]);
    let row = |name: &str| -> Vec<String> {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listed}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("lynx-managed")[1..4], ["docker", "running", "-"]);
    assert_eq!(row("lynx-managed")[5], IMAGE);
    assert_eq!(row(twin.name())[1..3], ["lxd", "Running"]);

    // A name both engines have is refused, naming --engine, and nothing changes.
    engine.run(twin.name(), &["sleep", "3600"]);
    let refused = lynx(&config, &["containers", "stop", twin.name()]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "an ambiguous name is bad input"
    );
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("--engine lxd or --engine docker"),
        "{message}"
    );
    assert_eq!(state(twin.name()), "running");
    assert_eq!(lxd.status(twin.name()).as_deref(), Some("Running"));
    assert_eq!(
        ok(&["containers", "pause", twin.name(), "--engine", "docker"]),
        format!("{} (docker): paused\n", twin.name())
    );
    assert_eq!(state(twin.name()), "paused");
    assert_eq!(lxd.status(twin.name()).as_deref(), Some("Running"));

    // The engine's own message for what it refuses.
    let missing = lynx(
        &config,
        &["containers", "start", "--engine", "docker", "lynx-no-such"],
    );
    assert_eq!(missing.status.code(), Some(1));
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(
        message.contains("No such container: lynx-no-such"),
        "{message}"
    );
    let _ = fs::remove_file(&config);
}

#[test]
fn docker_engine_killed_mid_run_is_survived() {
    if !privileged("docker_engine_killed_mid_run_is_survived") {
        return;
    }
    let mut engine = DockerEngine::start("outage");
    let id = engine.run(
        "lynx-survivor",
        &["sh", "-c", "while :; do sleep 0.05; done"],
    );
    let short = &id[..12];
    let daemon = daemon_watching("docker-outage", &engine);
    daemon.wait_for("named", Duration::from_secs(30), |s| {
        s.containers.iter().any(|c| c.name == "lynx-survivor")
    });

    engine.kill();
    let down = daemon.wait_for("listed by cgroup id", Duration::from_secs(10), |s| {
        s.host.docker_available == Some(false)
            && s.containers
                .iter()
                .any(|c| c.name == short && c.kind == "docker" && c.docker.is_none())
    });
    assert!(down.containers.iter().all(|c| c.name != "lynx-survivor"));
    // Snapshots go on through the outage.
    for _ in 0..10 {
        let snapshot = daemon.next_snapshot();
        assert!(snapshot.containers.iter().any(|c| c.name == short));
    }

    engine.restart();
    let back = daemon.wait_for("named again", Duration::from_secs(30), |s| {
        s.host.docker_available == Some(true)
            && s.containers.iter().any(|c| c.name == "lynx-survivor")
    });
    assert_matches_inspect(&engine, &back, "lynx-survivor");
    let log = daemon.log();
    assert_eq!(
        log.matches("Docker unavailable").count(),
        1,
        "logged once per outage:\n{log}"
    );
    assert_eq!(log.matches("Docker answers").count(), 2, "{log}");
}
