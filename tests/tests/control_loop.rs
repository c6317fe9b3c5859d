//! The control loop end to end: the real `lynx daemon` with a `[[groups]]` config, real LXD
//! containers serving HTTP with busybox httpd, and a real nginx that includes Lynx's upstream
//! file. LXD's own event stream, nginx's answers, `lxc list` and wrk are the oracles.
use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::Command,
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use lynx::model::{Autoscaler, Group, Snapshot};
use lynx_tests::{
    control::{Farm, LxdEvents, is_503, ms_between},
    lynx_ok,
    nginx::{WORKER_PROCESSES, wrk},
    privileged,
};

/// The tests measure latencies and count failed requests: one at a time, so that they do not
/// compete with each other for the host's two CPUs.
static SERIAL: Mutex<()> = Mutex::new(());

/// The generous bound on following a state change; the bench measures the real figure.
const FOLLOW_BOUND: Duration = Duration::from_secs(1);

fn group(snapshot: &Snapshot) -> &Group {
    snapshot.groups.first().expect("the snapshot has group web")
}

fn autoscaler(snapshot: &Snapshot) -> &Autoscaler {
    group(snapshot)
        .autoscaler
        .as_ref()
        .expect("group web autoscales")
}

/// The nginx master's children: a reload replaces them.
fn workers(master: u32) -> BTreeSet<u32> {
    let tasks = fs::read_dir(format!("/proc/{master}/task")).expect("the master runs");
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `master`'s workers once all of them have started: a reload replaces every one, so a set
/// taken while nginx is still forking them would look like one.
fn started_workers(master: u32) -> BTreeSet<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let workers = workers(master);
        if workers.len() >= WORKER_PROCESSES {
            return workers;
        }
        assert!(
            Instant::now() < deadline,
            "nginx has {workers:?} after 10 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `nginx -t` of the farm's nginx config, with the upstream file as it is.
fn nginx_test(farm: &Farm) -> std::process::Output {
    let control = farm.nginx.control();
    Command::new(&control.binary)
        .arg("-t")
        .arg("-c")
        .arg(&control.main_config)
        .arg("-p")
        .arg(control.prefix.as_deref().expect("a prefix"))
        .output()
        .expect("run nginx -t")
}

/// Runs `lynx containers ARGS` on a thread while `measure` runs here; returns what `measure`
/// returned.
fn while_lynx<T>(args: &[&str], measure: impl FnOnce() -> T) -> T {
    thread::scope(|scope| {
        let command = scope.spawn(|| lynx_ok(args));
        let result = measure();
        command.join().expect("lynx containers");
        result
    })
}

#[test]
fn upstream_follows_manual_stop_start_freeze_and_unfreeze_within_a_second() {
    if !privileged("upstream_follows_manual_stop_start_freeze_and_unfreeze_within_a_second") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let farm = Farm::new("follow", 1);
    let daemon = farm.daemon("follow", "", &[]);
    let (name, page) = (farm.containers[0].name().to_owned(), farm.pages[0].clone());
    farm.until_answer("the container's page", Duration::from_secs(10), |a| {
        a.as_ref() == Ok(&page)
    });

    let events = LxdEvents::subscribe();
    let served_503 = while_lynx(&["containers", "stop", &name], || {
        farm.until_answer("503 once stopped", Duration::from_secs(40), is_503)
    });
    // A stop or freeze counts from LXD beginning it: the member must leave before its
    // service stops answering.
    let stopping = events.wait_for(&name, "Stopping instance", Duration::from_secs(5));
    let stop_ms = ms_between(stopping, served_503);
    eprintln!("stop: nginx answered 503 {stop_ms:.0} ms after LXD began the stop");

    // An empty group: nginx -t passes and clients get 503 from the fallback, consistently.
    assert_eq!(farm.servers(), Vec::<String>::new());
    let test = nginx_test(&farm);
    assert!(
        test.status.success(),
        "nginx -t with the group empty: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    for _ in 0..10 {
        let answer = farm.get_within(Duration::from_secs(5));
        assert!(is_503(&answer), "an empty group answers 503: {answer:?}");
    }

    // Start: LXD reports the start, then the container gets its address from DHCP and starts
    // httpd; Lynx adds it once it answers.
    let lxd_client = lynx::lxd::LxdClient::new(lynx_tests::lxd::SOCKET);
    let (addressed, served_page) = while_lynx(&["containers", "start", &name], || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addressed = loop {
            let state = lxd_client.instance_state(&name).expect("instance state");
            if state.status == lynx::lxd::InstanceStatus::Running && !state.ipv4.is_empty() {
                break Instant::now();
            }
            assert!(Instant::now() < deadline, "no address after 30 s");
            thread::sleep(Duration::from_millis(5));
        };
        let served = farm.until_answer("the page once started", Duration::from_secs(30), |a| {
            a.as_ref() == Ok(&page)
        });
        (addressed, served)
    });
    let started = events.wait_for(&name, "instance-started", Duration::from_secs(5));
    let start_ms = ms_between(started, served_page);
    let address_ms = ms_between(addressed, served_page);
    eprintln!(
        "start: nginx served the page {start_ms:.0} ms after LXD reported the start, \
         {address_ms:.0} ms after LXD reported its address"
    );

    let served_503 = while_lynx(&["containers", "freeze", &name], || {
        farm.until_answer("503 once frozen", Duration::from_secs(10), is_503)
    });
    let freezing = events.wait_for(&name, "Freezing instance", Duration::from_secs(5));
    let freeze_ms = ms_between(freezing, served_503);
    let served_page = while_lynx(&["containers", "unfreeze", &name], || {
        farm.until_answer("the page once unfrozen", Duration::from_secs(10), |a| {
            a.as_ref() == Ok(&page)
        })
    });
    let resumed = events.wait_for(&name, "instance-resumed", Duration::from_secs(5));
    let unfreeze_ms = ms_between(resumed, served_page);
    eprintln!("freeze: 503 after {freeze_ms:.0} ms; unfreeze: page after {unfreeze_ms:.0} ms");

    let bound = FOLLOW_BOUND.as_secs_f64() * 1000.0;
    for (what, ms) in [
        ("stop", stop_ms),
        ("start, from the address", address_ms),
        ("freeze", freeze_ms),
        ("unfreeze", unfreeze_ms),
    ] {
        assert!(
            ms < bound,
            "{what}: nginx followed after {ms:.0} ms, over {bound} ms; daemon log:\n{}",
            daemon.log()
        );
    }
    assert!(
        start_ms < 10_000.0,
        "start: the page came {start_ms:.0} ms after LXD's start event; daemon log:\n{}",
        daemon.log()
    );
}

#[test]
fn a_main_config_nginx_rejects_never_replaces_a_working_one_nor_does_a_vanished_member_stop_lynx() {
    if !privileged(
        "a_main_config_nginx_rejects_never_replaces_a_working_one_nor_does_a_vanished_member_stop_lynx",
    ) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut farm = Farm::new("reject", 2);
    farm.containers[1].stop();
    let daemon = farm.daemon("reject", "", &[]);
    let (page_a, page_b) = (farm.pages[0].clone(), farm.pages[1].clone());
    farm.until_answer("a's page", Duration::from_secs(10), |a| {
        a.as_ref() == Ok(&page_a)
    });
    let working = fs::read_to_string(&farm.upstream_file).expect("read the upstream file");

    // The operator breaks nginx.conf; then b starts, so Lynx renders a new upstream.
    let main_config = farm.nginx.control().main_config;
    let good = fs::read_to_string(&main_config).expect("read nginx.conf");
    fs::write(
        &main_config,
        format!("{good}\nthis_is_not_a_directive on;\n"),
    )
    .expect("break nginx.conf");
    farm.containers[1].start();
    let message = "unknown directive \"this_is_not_a_directive\"";
    daemon.wait_for(
        "nginx's message in the snapshot",
        Duration::from_secs(15),
        |s| {
            group(s)
                .upstream_error
                .as_deref()
                .is_some_and(|e| e.contains(message))
        },
    );
    assert!(
        daemon.log().contains(message),
        "the log carries nginx's message:\n{}",
        daemon.log()
    );
    assert_eq!(
        fs::read_to_string(&farm.upstream_file).expect("read the upstream file"),
        working,
        "the working file was restored"
    );
    for _ in 0..20 {
        assert_eq!(
            farm.get_within(Duration::from_secs(5)).as_ref(),
            Ok(&page_a),
            "nginx serves the old upstream"
        );
    }
    let snapshot = daemon.next_snapshot();
    assert_eq!(group(&snapshot).running, 2, "the daemon runs on");

    // Mended: the next full re-read (every 2 s) hands the file to nginx again, and nginx
    // balances over both.
    fs::write(&main_config, good).expect("mend nginx.conf");
    let deadline = Instant::now() + Duration::from_secs(15);
    while farm.get_within(Duration::from_secs(5)).as_ref() != Ok(&page_b) {
        assert!(
            Instant::now() < deadline,
            "b not served 15 s after nginx.conf was mended; daemon log:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    daemon.wait_for("no upstream error", Duration::from_secs(5), |s| {
        group(s).upstream_error.is_none()
    });
    assert!(daemon.log().contains("nginx takes the upstream file again"));

    // b is deleted under Lynx's feet: it leaves the group and the upstream, Lynx runs on.
    let a = farm.server(0);
    drop(farm.containers.pop());
    // Deleting stops it first: the group may show it stopped for a moment before it goes.
    let snapshot = daemon.wait_for("b gone from the group", Duration::from_secs(10), |s| {
        let g = group(s);
        g.running == 1 && g.stopped == 0 && g.servers == [a.clone()]
    });
    assert_eq!(group(&snapshot).stopped, 0);
    assert_eq!(farm.servers(), [a]);
    assert!(
        daemon.log().contains("container left the group"),
        "{}",
        daemon.log()
    );
    farm.until_answer("a's page only", Duration::from_secs(5), |answer| {
        answer.as_ref() == Ok(&page_a)
    });
    daemon.next_snapshot();
}

/// min = max = `n`, scale-downs freeze, windows and cooldowns short.
fn fixed_size(n: u32) -> String {
    format!(
        "drain_timeout = \"10s\"\n[groups.autoscale]\nmin = {n}\nmax = {n}\nwindow = \"1s\"\n\
         scale_up_cooldown = \"1s\"\nscale_down_cooldown = \"1s\"\nscale_up_step = 3\n\
         scale_down_step = 3\n"
    )
}

#[test]
fn scaling_down_to_one_and_back_to_three_under_load_fails_no_request() {
    if !privileged("scaling_down_to_one_and_back_to_three_under_load_fails_no_request") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let farm = Farm::new("drain", 3);
    let mut daemon = farm.daemon("drain", &fixed_size(3), &[]);
    daemon.wait_for("three servers", Duration::from_secs(15), |s| {
        group(s).servers.len() == 3
    });
    let url = farm.nginx.url("/");
    let load_for = Duration::from_secs(40);
    let (totals, timings) = thread::scope(|scope| {
        // One request per connection: nginx closes the idle keep-alive connections of the
        // workers a reload retires (any reload, Lynx's or an operator's), and a request
        // that crosses that close fails in wrk, which does not retry as browsers and HTTP
        // libraries do. What this test is about is Lynx's order: no request reaches a
        // member that is frozen.
        let load = scope.spawn(|| wrk(&url, 4, load_for, false));
        let began = Instant::now();
        thread::sleep(Duration::from_secs(2));
        // Lynx restarted with max = 1: the two extra members are drained, then frozen.
        daemon.restart_with_config_change("min = 3\nmax = 3", "min = 1\nmax = 1");
        let down = daemon.wait_for("one running, two frozen", Duration::from_secs(25), |s| {
            let g = group(s);
            g.running == 1 && g.frozen == 2 && g.servers.len() == 1
        });
        let down_at = began.elapsed();
        assert_eq!(
            autoscaler(&down).last_action.as_ref().map(|a| a.to),
            Some(1)
        );
        thread::sleep(Duration::from_secs(2));
        daemon.restart_with_config_change("min = 1\nmax = 1", "min = 3\nmax = 3");
        daemon.wait_for("three running and served", Duration::from_secs(25), |s| {
            let g = group(s);
            g.running == 3 && g.servers.len() == 3
        });
        let up_at = began.elapsed();
        assert!(
            up_at + Duration::from_secs(3) < load_for,
            "the scaling took {up_at:?}, too long for the {load_for:?} of load"
        );
        (load.join().expect("wrk"), (down_at, up_at))
    });
    eprintln!(
        "under load: down to 1 at {:?}, back to 3 at {:?}; wrk: {} requests, {} non-2xx, \
         {} socket errors",
        timings.0, timings.1, totals.requests, totals.non_2xx, totals.socket_errors
    );
    assert!(totals.requests > 1000, "too little load: {totals:?}");
    assert_eq!(
        (totals.non_2xx, totals.socket_errors),
        (0, 0),
        "no request may fail; daemon log:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("scale down"), "{log}");
    assert!(log.contains("drained ("), "{log}");
    assert!(
        !log.contains("drain timeout"),
        "drained before the timeout: {log}"
    );
    assert!(log.contains("scale up"), "{log}");
}

#[test]
fn cpu_load_scales_up_to_max_and_idleness_down_to_min_after_the_cooldown() {
    if !privileged("cpu_load_scales_up_to_max_and_idleness_down_to_min_after_the_cooldown") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let farm = Farm::new("cpu", 3);
    farm.containers[1].freeze();
    farm.containers[2].freeze();
    let cooldown = Duration::from_secs(8);
    let policy = format!(
        "[groups.autoscale]\nmin = 1\nmax = 2\nwindow = \"2s\"\nscale_up_cpu_percent = 30.0\n\
         scale_down_cpu_percent = 5.0\nscale_up_cooldown = \"2s\"\n\
         scale_down_cooldown = \"{}s\"\n",
        cooldown.as_secs()
    );
    let daemon = farm.daemon("cpu", &policy, &[]);
    daemon.wait_for("one running, served", Duration::from_secs(15), |s| {
        group(s).servers.len() == 1 && group(s).running == 1
    });
    let events = LxdEvents::subscribe();
    let (a, b, c) = (
        &farm.containers[0],
        &farm.containers[1],
        &farm.containers[2],
    );

    // A busy loop in the one running member: its CPU is far over 30%.
    let mut busy = lynx_tests::ChildGuard(a.spawn_exec(&["sh", "-c", "while :; do :; done"]));
    let resumed = events.wait_for(b.name(), "instance-resumed", Duration::from_secs(20));
    let up = daemon.wait_for("two running and served", Duration::from_secs(10), |s| {
        group(s).running == 2 && group(s).servers.len() == 2
    });
    let up_action = autoscaler(&up).last_action.clone().expect("a scale-up");
    assert_eq!(
        (up_action.direction.as_str(), up_action.from, up_action.to),
        ("up", 1, 2)
    );
    assert_eq!(up_action.containers, [b.name()], "the first frozen member");
    // Still loaded, at max: nothing more is started, for several windows.
    let held = daemon.wait_for("a hold at max", Duration::from_secs(10), |s| {
        autoscaler(s)
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("already at max 2"))
    });
    eprintln!("at max: {:?}", autoscaler(&held).reason);
    thread::sleep(Duration::from_secs(4));
    assert_eq!(c.status(), "Frozen", "max is 2: the third stays frozen");

    busy.kill();
    let load_stopped = Instant::now();
    let down = daemon.wait_for("one running again", Duration::from_secs(30), |s| {
        group(s).running == 1 && group(s).frozen == 2
    });
    let down_action = autoscaler(&down).last_action.clone().expect("a scale-down");
    assert_eq!(
        (
            down_action.direction.as_str(),
            down_action.from,
            down_action.to
        ),
        ("down", 2, 1)
    );
    let frozen_name = down_action.containers.first().expect("a member").clone();
    let paused = events.wait_for(&frozen_name, "instance-paused", Duration::from_secs(5));
    let at = |rfc: &str| {
        time::OffsetDateTime::parse(rfc, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339")
    };
    let decided_after = at(&down_action.at) - at(&up_action.at);
    let lxd_after = paused - resumed;
    eprintln!(
        "scale-down decided {decided_after} after the scale-up (cooldown {cooldown:?}); LXD \
         froze {frozen_name} {lxd_after:?} after it unfroze {}, {:?} after the load stopped",
        b.name(),
        paused - load_stopped
    );
    assert!(
        decided_after >= cooldown,
        "scaled down {decided_after} after the scale-up, inside the {cooldown:?} cooldown"
    );
    assert!(
        lxd_after + Duration::from_millis(500) >= cooldown,
        "LXD froze {lxd_after:?} after the unfreeze, inside the cooldown"
    );
    // At min: idleness puts nothing more away.
    thread::sleep(Duration::from_secs(4));
    let last = daemon.next_snapshot();
    assert_eq!((group(&last).running, group(&last).frozen), (1, 2));
    assert!(
        autoscaler(&last)
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("already at min 1")),
        "{:?}",
        autoscaler(&last).reason
    );
}

#[test]
fn a_dry_run_decides_and_logs_but_acts_on_nothing() {
    if !privileged("a_dry_run_decides_and_logs_but_acts_on_nothing") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let farm = Farm::new("dry", 2);
    let file_before = fs::read_to_string(&farm.upstream_file).expect("read the upstream file");
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let mtime_before = modified(&farm.upstream_file);
    let workers_before = started_workers(farm.nginx.master_pid());
    let daemon = farm.daemon("dry", &fixed_size(1), &["--dry-run"]);
    daemon.wait_for("a decision to scale down", Duration::from_secs(15), |s| {
        autoscaler(s)
            .last_action
            .as_ref()
            .is_some_and(|a| a.direction == "down")
    });
    // Give an acting daemon time to have drained and frozen.
    thread::sleep(Duration::from_secs(4));
    let snapshot = daemon.next_snapshot();
    assert!(autoscaler(&snapshot).dry_run);
    assert_eq!(group(&snapshot).servers.len(), 2, "it would serve both");
    let log = daemon.log();
    assert!(log.contains("dry run: would scale down"), "{log}");
    assert!(
        log.contains("dry run: would write the upstream file"),
        "{log}"
    );
    for container in &farm.containers {
        assert_eq!(container.status(), "Running", "{}", container.name());
    }
    assert_eq!(
        fs::read_to_string(&farm.upstream_file).expect("read the upstream file"),
        file_before,
        "the upstream file is untouched"
    );
    assert_eq!(modified(&farm.upstream_file), mtime_before);
    assert_eq!(
        workers(farm.nginx.master_pid()),
        workers_before,
        "nginx was not reloaded"
    );
    assert!(is_503(&farm.get_within(Duration::from_secs(5))));
}

#[test]
fn a_container_is_served_on_its_lxd_nic_only_whatever_addresses_it_adds() {
    if !privileged("a_container_is_served_on_its_lxd_nic_only_whatever_addresses_it_adds") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let farm = Farm::new("nic", 1);
    let container = &farm.containers[0];
    // The container's root adds an interface that sorts before eth0, with another address of
    // the bridge's subnet (which the container itself answers on, by ARP) and one outside.
    // (The bridge's own address would cut the container off from the host altogether; the
    // unit tests give it that one.)
    container.exec_ok(&[
        "sh",
        "-c",
        "ip link add docker0 type bridge && ip addr add 10.177.42.250/24 dev docker0 \
         && ip addr add 192.0.2.7/24 dev docker0 && ip link set docker0 up",
    ]);
    let lxd_client = lynx::lxd::LxdClient::new(lynx_tests::lxd::SOCKET);
    let reported = lxd_client
        .instance_state(container.name())
        .expect("instance state");
    let added: std::net::Ipv4Addr = "10.177.42.250".parse().expect("an address");
    assert!(
        reported
            .interfaces
            .get("docker0")
            .is_some_and(|ips| ips.contains(&added)),
        "LXD reports the added addresses: {:?}",
        reported.interfaces
    );
    // nginx has read it; the daemon makes it anew, under its umask 077.
    fs::remove_file(&farm.upstream_file).expect("remove the upstream file");
    let daemon = farm.daemon("nic", "", &[]);
    daemon.wait_for("the member served", Duration::from_secs(15), |s| {
        !group(s).servers.is_empty()
    });
    assert_eq!(farm.servers(), [farm.server(0)], "the upstream file");
    let mode = fs::metadata(&farm.upstream_file)
        .expect("the upstream file")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
        0o644,
        "the upstream file Lynx made under umask 077 is readable by nginx's workers"
    );
    let page = farm.pages[0].clone();
    farm.until_answer("the container's page", Duration::from_secs(10), |a| {
        a.as_ref() == Ok(&page)
    });
    // Five more re-reads: it stays so.
    thread::sleep(Duration::from_secs(10));
    assert_eq!(farm.servers(), [farm.server(0)], "after more re-reads");
    let log = daemon.log();
    assert!(
        log.contains("container reports addresses that are not on its LXD NIC eth0 on lynxbr0"),
        "the log says what was ignored:\n{log}"
    );
}

#[test]
fn a_reload_nginx_does_not_take_is_never_counted_as_served_and_no_member_is_put_away() {
    if !privileged(
        "a_reload_nginx_does_not_take_is_never_counted_as_served_and_no_member_is_put_away",
    ) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let farm = Farm::new("unreloaded", 2);
    // Lynx's fallback port is taken: `nginx -t` passes (it binds nothing), but nginx cannot
    // listen there on reload, and keeps its previous config.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("its address").port();
    // Idle members, so that the autoscaler wants one fewer at once.
    let policy = "drain_timeout = \"4s\"\n[groups.autoscale]\nmin = 1\nmax = 2\nwindow = \"1s\"\n\
                  scale_down_cpu_percent = 50.0\nscale_up_cpu_percent = 90.0\n\
                  scale_up_cooldown = \"1s\"\nscale_down_cooldown = \"1s\"\n";
    let config = farm.config(policy).replace(
        &format!("fallback_port = {}\n", farm.fallback_port),
        &format!("fallback_port = {port}\n"),
    );
    let daemon = lynx_tests::daemon::DaemonUnderTest::start_with_args(
        "unreloaded",
        "200ms",
        "",
        &config,
        &[],
    );
    daemon.wait_for("the failed reload", Duration::from_secs(30), |s| {
        // No group until the controller's first step, which waits for the reload.
        s.groups.first().is_some_and(|g| {
            g.upstream_error
                .as_deref()
                .is_some_and(|e| e.contains("did not start new workers"))
        })
    });
    // Many re-reads (every 2 s) and scale-down decisions later: still not served, nothing
    // put away.
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let snapshot = daemon.next_snapshot();
        assert!(
            group(&snapshot).upstream_error.is_some(),
            "a file nginx never reloaded with was taken as served: {:?}\nlog:\n{}",
            group(&snapshot),
            daemon.log()
        );
        for container in &farm.containers {
            assert_eq!(
                container.status(),
                "Running",
                "{} was put away while nginx still routes to it; log:\n{}",
                container.name(),
                daemon.log()
            );
        }
    }
    assert!(
        daemon.log().contains("scale-down abandoned"),
        "the autoscaler did try:\n{}",
        daemon.log()
    );
    // Once nginx can take the file, it is served.
    drop(taken);
    daemon.wait_for("nginx to take the file", Duration::from_secs(60), |s| {
        group(s).upstream_error.is_none()
    });
}
