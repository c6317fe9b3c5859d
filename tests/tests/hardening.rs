//! The daemon against what a local user, a hung command or an operator's signal can do to a
//! root process: a user holding its lock file or its HTTP port, SIGHUP, a history database
//! that cannot be opened, an `nginx -t` that never ends, abusive HTTP clients.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use lynx::daemon::{DaemonLock, lock_path};
use lynx_tests::{ChildGuard, daemon::DaemonUnderTest, lxd::lxd, nginx::free_port, privileged};

/// `args` run as user and group `nobody` (65534), with no supplementary groups.
fn as_nobody(args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Waits up to `timeout` for `condition`, panicking with `what` and `detail()`.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "waited {timeout:?} for {what}:\n{}",
            detail()
        );
        sleep(Duration::from_millis(50));
    }
}

/// `GET path` with `Host: host`: the status and body, or why there is none.
fn get(addr: SocketAddr, path: &str, host: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is the test's own child.
    let sent = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(sent, 0, "signal {signal} to {pid}");
}

#[test]
fn a_user_holding_the_lock_file_and_the_port_keeps_no_daemon_from_starting() {
    if !privileged("a_user_holding_the_lock_file_and_the_port_keeps_no_daemon_from_starting") {
        return;
    }
    let name = "squatted";
    // Where DaemonUnderTest pins, and so where its lock is.
    let pin_dir = Path::new("/sys/fs/bpf").join(format!("lynx-test-{name}-{}", std::process::id()));
    let lock = lock_path(&pin_dir);
    // As an older Lynx left it: any user could open it.
    fs::create_dir_all(lock.parent().expect("a directory")).expect("mkdir /run/lynx");
    fs::write(&lock, "1\n").expect("an old lock file");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).expect("chmod 0644");
    let lock_text = lock.to_str().expect("UTF-8");
    // One process that holds the lock and sleeps (flock's own child would outlive a kill).
    let hold = format!("exec 9<{lock_text} && flock -x 9 && exec sleep 3600");
    let _locker = ChildGuard(
        as_nobody(&["sh", "-c", &hold])
            .spawn()
            .expect("start flock as nobody"),
    );
    wait_until(
        "nobody to hold the lock",
        Duration::from_secs(10),
        || DaemonLock::is_held(&pin_dir),
        || fs::read_to_string("/proc/locks").unwrap_or_default(),
    );
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let squatter = ChildGuard(
        as_nobody(&["busybox", "nc", "-l", "-p", &port.to_string()])
            .spawn()
            .expect("start nc as nobody"),
    );
    wait_until(
        "nobody to listen on the port",
        Duration::from_secs(10),
        || lynx::web::holder::holder(addr).is_some(),
        String::new,
    );

    // Both held, and the daemon starts and collects all the same.
    let daemon = DaemonUnderTest::start_with_prometheus(name, "200ms", &addr.to_string());
    daemon.next_snapshot();
    let meta = fs::metadata(&lock).expect("the lock file");
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid()),
        (0o600, 0),
        "a lock file only root can open"
    );
    let status = as_nobody(&["flock", "-n", "-x", lock_text, "true"])
        .status()
        .expect("run flock as nobody");
    assert!(!status.success(), "nobody could take the daemon's lock");
    wait_until(
        "the log to name the port's holder",
        Duration::from_secs(10),
        || {
            let log = daemon.log();
            log.contains(&format!("cannot listen on {addr}"))
                && log.contains(&format!("held by pid {}", squatter.0.id()))
                && log.contains("uid 65534")
        },
        || daemon.log(),
    );
    // Under umask 077, the snapshot is still readable by `lynx top` run by anyone.
    let mode = fs::metadata(&daemon.snapshot_path)
        .expect("the snapshot")
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o644, "the snapshot's mode under umask 077");

    // Once the squatter leaves, the daemon takes its port.
    drop(squatter);
    wait_until(
        "the daemon to serve /metrics",
        Duration::from_secs(20),
        || get(addr, "/metrics", "localhost").is_ok_and(|(status, _)| status == 200),
        || daemon.log(),
    );
}

#[test]
fn sighup_rereads_the_config_applies_what_it_can_and_keeps_a_bad_one_out() {
    if !privileged("sighup_rereads_the_config_applies_what_it_can_and_keeps_a_bad_one_out") {
        return;
    }
    let daemon = DaemonUnderTest::start("sighup", "200ms");
    let good = fs::read_to_string(&daemon.config).expect("the config");
    let logged = |text: &str| {
        let text = text.to_owned();
        let log = || daemon.log();
        wait_until(
            &format!("{text:?} in the log"),
            Duration::from_secs(10),
            || daemon.log().contains(&text),
            log,
        );
    };

    signal(daemon.pid(), libc::SIGHUP);
    logged("config reloaded: nothing changed");
    daemon.next_snapshot();

    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let serving = good.replace("listen = \"\"", &format!("listen = \"{addr}\""));
    assert_ne!(serving, good, "the config has [web] listen");
    fs::write(&daemon.config, &serving).expect("write the config");
    signal(daemon.pid(), libc::SIGHUP);
    logged("config reloaded: applied [web]");
    wait_until(
        "/metrics on the new address",
        Duration::from_secs(10),
        || get(addr, "/metrics", "localhost").is_ok_and(|(status, _)| status == 200),
        || daemon.log(),
    );

    fs::write(&daemon.config, format!("{serving}\nbogus = 1\n")).expect("break the config");
    signal(daemon.pid(), libc::SIGHUP);
    logged("config not reloaded, the running one stays: ");
    logged("unknown field `bogus`");
    assert_eq!(
        get(addr, "/metrics", "localhost").map(|(status, _)| status),
        Ok(200),
        "still served as before"
    );

    let moved = serving.replace(
        &daemon.pin_dir.display().to_string(),
        "/sys/fs/bpf/lynx-test-elsewhere",
    );
    fs::write(&daemon.config, &moved).expect("move the pins");
    signal(daemon.pid(), libc::SIGHUP);
    logged("these take effect only after a restart: [daemon] pin_dir");
    daemon.next_snapshot();
    assert!(
        !Path::new("/sys/fs/bpf/lynx-test-elsewhere").exists(),
        "the running daemon kept its pins"
    );
}

#[test]
fn a_history_database_that_cannot_be_opened_does_not_stop_the_daemon() {
    if !privileged("a_history_database_that_cannot_be_opened_does_not_stop_the_daemon") {
        return;
    }
    let mut daemon = DaemonUnderTest::start("nohistory", "200ms");
    assert_eq!(
        daemon.next_snapshot().history_error,
        None,
        "healthy: no field"
    );
    let blocked = daemon.dir.join("blocked");
    fs::write(&blocked, "a file where a directory should be").expect("block");
    let healthy = format!("path = \"{}\"", daemon.dir.join("history.db").display());
    let unopenable = format!("path = \"{}\"", blocked.join("history.db").display());
    daemon.restart_with_config_change(&healthy, &unopenable);
    let snapshot = daemon.wait_for(
        "the snapshot to say why history is not written",
        Duration::from_secs(10),
        |s| s.history_error.is_some(),
    );
    let error = snapshot.history_error.expect("an error");
    assert!(
        error.contains(&blocked.display().to_string()),
        "the error names the path: {error}"
    );
    daemon.next_snapshot();
    let log = daemon.log();
    assert_eq!(
        log.matches("history is not written until it can be")
            .count(),
        1,
        "said once:\n{log}"
    );
}

/// An `nginx` that never finishes: `nginx -t` hangs.
fn hanging_nginx(dir: &Path) -> PathBuf {
    let binary = dir.join("nginx");
    fs::write(&binary, "#!/bin/sh\nexec sleep 3600\n").expect("write a hanging nginx");
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod");
    binary
}

/// The daemon's children running `sleep`: a hanging `nginx -t`.
fn hanging_checks(daemon: u32) -> Vec<u32> {
    lynx::nginx::children(daemon)
        .into_iter()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "sleep")
        })
        .collect()
}

#[test]
fn a_hanging_nginx_test_is_killed_at_its_deadline_and_does_not_hold_up_sigterm() {
    if !privileged("a_hanging_nginx_test_is_killed_at_its_deadline_and_does_not_hold_up_sigterm") {
        return;
    }
    lxd();
    let scratch = std::env::temp_dir().join(format!("lynx-hanging-nginx-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).expect("scratch dir");
    let binary = hanging_nginx(&scratch);
    // A group of no container: its upstream is the 503 fallback, which needs `nginx -t`.
    let extra = format!(
        "[lxd]\nreconcile_interval = \"1s\"\n\
         [nginx]\nbinary = \"{}\"\nupstream_file = \"{}\"\nfallback_port = {}\ntest_timeout = \"2s\"\n\
         [[groups]]\nname = \"web\"\nport = 8080\ncontainers = [\"lynx-t-none\"]\n",
        binary.display(),
        scratch.join("lynx-upstreams.conf").display(),
        free_port(),
    );
    let mut daemon = DaemonUnderTest::start_configured("hangingnginx", "200ms", "", &extra);
    let timed_out = format!(
        "nginx -t ({}): no result within 2s: killed",
        binary.display()
    );
    wait_until(
        "the check to be killed at its deadline",
        Duration::from_secs(20),
        || daemon.log().contains(&timed_out),
        || daemon.log(),
    );
    let snapshot = daemon.next_snapshot();
    let error = snapshot.groups[0].upstream_error.clone();
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("no result within 2s")),
        "the snapshot says it: {error:?}"
    );

    // With a deadline far off, SIGTERM arrives while the check hangs.
    daemon.restart_with_config_change("test_timeout = \"2s\"", "test_timeout = \"10m\"");
    let pid = daemon.pid();
    let mut checks = Vec::new();
    wait_until(
        "nginx -t to hang",
        Duration::from_secs(20),
        || {
            checks = hanging_checks(pid);
            !checks.is_empty()
        },
        || daemon.log(),
    );
    let started = Instant::now();
    let status = daemon.terminate();
    let took = started.elapsed();
    assert!(status.success(), "the daemon's exit: {status}");
    assert!(
        took < Duration::from_secs(5),
        "the daemon took {took:?} to exit on SIGTERM during nginx -t"
    );
    for check in checks {
        let stat = fs::read_to_string(format!("/proc/{check}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        assert!(
            state.is_none() || state == Some("Z"),
            "the hanging check {check} still runs: {stat}"
        );
    }
    eprintln!("the daemon exited {took:?} after SIGTERM, killing its hanging nginx -t");
    let _ = fs::remove_dir_all(&scratch);
}
