//! The LXD rig: real LXD containers for the privileged tests, set up by the tests themselves.
//!
//! - [`lxd()`] returns the rig once the host is ready, setting it up on first use: it checks that
//!   the programs it runs are installed (`cargo xtask setup` installs them; the rig installs
//!   nothing), starts the daemon if [`SOCKET`] does not answer, makes sure LXD has a `default` storage pool, the managed bridge [`BRIDGE`]
//!   ([`BRIDGE_SUBNET`]/[`BRIDGE_PREFIX`], no NAT, no IPv6) and a default profile whose
//!   `eth0` is on it, deletes containers left behind by test processes that no longer exist,
//!   and imports the busybox image [`IMAGE`] built from Debian's `busybox-static`.
//!   Set-up runs once per process (a `OnceLock`) and under a file lock ([`LOCK`]), so parallel
//!   tests and test binaries may all call it; on a ready host it costs a few `lxc` calls.
//! - [`TestContainer::launch`] starts a container named `lynx-t-<prefix>-<pid>-<n>` and waits
//!   until it runs and has an IPv4 address from LXD's dnsmasq. It offers `exec`,
//!   `exec_ok`, `exec_command`, `spawn_exec`, `serve_http`, `stop`, `start`, `freeze`,
//!   `unfreeze` and `status`, and is force-deleted on drop, also when the test panics.
//! - [`TestPool::btrfs`] creates a btrfs storage pool `lynx-t-<prefix>-<pid>-<n>` on a loop
//!   file that LXD makes, deleted on drop (with the image volumes LXD cached on it);
//!   [`TestContainer::launch_with`] launches onto it (`--storage`, `--device root,size=…`).
//! - [`http_get`] fetches a page from the host, and refuses any address but loopback and the
//!   rig's bridge: tests send traffic nowhere else.
//!
//! Everything panics with a message instead of returning errors, and every wait and every
//! command is bounded in time. Containers of a test process that was killed are deleted by the
//! next set-up. The daemon logs to [`LOG`].
use std::{
    env,
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::{self, sleep},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::{SYSTEM_PATH, require};

/// The managed bridge the rig creates; the default profile's `eth0` is attached to it.
pub const BRIDGE: &str = "lynxbr0";
/// The bridge's own (host-side) address, the containers' gateway.
pub const BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 177, 42, 1);
/// The bridge's subnet; dnsmasq hands out `.2` to `.254`.
pub const BRIDGE_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 177, 42, 0);
pub const BRIDGE_PREFIX: u8 = 24;
/// The alias of the busybox image.
pub const IMAGE: &str = "lynx-busybox";
/// LXD's REST API socket (Debian's package).
pub const SOCKET: &str = "/var/lib/lxd/unix.socket";
/// The log of a daemon the rig started.
pub const LOG: &str = "/var/log/lxd-lynx-tests.log";
/// Serialises set-up between test processes.
pub const LOCK: &str = "/run/lynx-tests-lxd.lock";
/// Name prefix of every container the rig launches.
pub const CONTAINER_PREFIX: &str = "lynx-t-";

/// Bumped whenever the image's contents change, so an older import is replaced.
const IMAGE_VERSION: &str = "1";
/// The image property that carries [`IMAGE_VERSION`].
const IMAGE_VERSION_KEY: &str = "lynx.rig";
/// How long a container may take to run and get an address.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one `lxc` command (launch, stop, delete…).
const LXC_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for [`TestContainer::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// The rig: LXD running and initialised, with the busybox image imported.
pub struct Lxd {
    _ready: (),
}

/// The rig, set up on first use (see the module documentation).
pub fn lxd() -> &'static Lxd {
    static LXD: OnceLock<Lxd> = OnceLock::new();
    LXD.get_or_init(Lxd::set_up)
}

/// True when `ip` is on the rig's bridge subnet.
pub fn on_bridge(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - u32::from(BRIDGE_PREFIX));
    u32::from(ip) & mask == u32::from(BRIDGE_SUBNET)
}

impl Lxd {
    fn set_up() -> Self {
        let started = Instant::now();
        let _lock = FileLock::acquire(Path::new(LOCK), Duration::from_secs(1200));
        for program in ["lxd", "lxc", "dnsmasq", "tar"] {
            require(program);
        }
        ensure_daemon();
        ensure_initialised();
        let rig = Self { _ready: () };
        rig.delete_orphans();
        ensure_image();
        eprintln!("lxd rig: ready in {:.1} s", started.elapsed().as_secs_f64());
        rig
    }

    /// Runs `lxc ARGS`, panicking with its stderr unless it succeeds; returns its stdout.
    pub fn lxc(&self, args: &[&str]) -> String {
        lxc(args)
    }

    /// `lxc list --format json`: every instance, as LXD describes it.
    pub fn list(&self) -> Vec<Value> {
        let json = lxc(&["list", "--format", "json"]);
        match serde_json::from_str(&json) {
            Ok(Value::Array(instances)) => instances,
            other => panic!("lxc list --format json: expected an array, got {other:?}"),
        }
    }

    /// The `status` (`Running`, `Frozen`, `Stopped`…) that `lxc list --format json` reports
    /// for `name`, or `None` when there is no such instance.
    pub fn status(&self, name: &str) -> Option<String> {
        self.list()
            .iter()
            .find(|instance| instance["name"] == name)
            .map(|instance| {
                instance["status"]
                    .as_str()
                    .unwrap_or_else(|| panic!("lxc list: {name} has no status: {instance}"))
                    .to_owned()
            })
    }

    /// Deletes containers, then storage pools, of test processes that were killed before
    /// their guards could run.
    fn delete_orphans(&self) {
        for instance in self.list() {
            if let Some(name) = instance["name"].as_str().filter(|name| orphaned(name)) {
                eprintln!("lxd rig: deleting {name}, left behind by a test process");
                lxc(&["delete", "--force", name]);
            }
        }
        let pools: Vec<String> =
            serde_json::from_str(&lxc(&["query", "/1.0/storage-pools"])).expect("pool list");
        for pool in pools {
            let name = pool.rsplit('/').next().unwrap_or_default();
            if orphaned(name) {
                eprintln!("lxd rig: deleting pool {name}, left behind by a test process");
                if let Err(error) = delete_pool(name) {
                    panic!("{error}");
                }
            }
        }
    }
}

/// True when `name` is the rig's and the test process that made it is gone. Set-up runs before
/// this process makes anything, so its own pid marks a leftover of an earlier process with
/// the same pid.
fn orphaned(name: &str) -> bool {
    name.strip_prefix(CONTAINER_PREFIX)
        .and_then(|rest| rest.rsplit('-').nth(1))
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| {
            pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists()
        })
}

/// Deletes storage pool `name`: first the image volumes LXD cached on it (they keep it in
/// use), then the pool, whose loop file LXD removes.
fn delete_pool(name: &str) -> Result<(), String> {
    let query = run(
        system_command("lxc").args(["query", &format!("/1.0/storage-pools/{name}/volumes")]),
        LXC_TIMEOUT,
    )?;
    let volumes: Vec<String> = serde_json::from_slice(&query.stdout).unwrap_or_default();
    let prefix = format!("/1.0/storage-pools/{name}/volumes/");
    for volume in volumes.iter().filter_map(|v| v.strip_prefix(&prefix)) {
        if volume.starts_with("image/") {
            let output = run(
                system_command("lxc").args(["storage", "volume", "delete", name, volume]),
                LXC_TIMEOUT,
            )?;
            if !output.status.success() {
                return Err(format!(
                    "cannot delete volume {volume} of pool {name}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
    }
    let output = run(
        system_command("lxc").args(["storage", "delete", name]),
        LXC_TIMEOUT,
    )?;
    if !output.status.success() {
        return Err(format!(
            "cannot delete pool {name}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// A storage pool for one test, deleted on drop: drop it after the containers on it.
pub struct TestPool {
    name: String,
}

impl TestPool {
    /// A btrfs pool of `size` (LXD's units, `512MiB`) on a loop file that LXD creates under
    /// its own directory and removes with the pool.
    pub fn btrfs(prefix: &str, size: &str) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        lxd();
        for program in ["mkfs.btrfs", "btrfs"] {
            require(program);
        }
        let pool = Self {
            name: container_name(
                prefix,
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed),
            ),
        };
        lxc(&[
            "storage",
            "create",
            &pool.name,
            "btrfs",
            &format!("size={size}"),
        ]);
        pool
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        // No panic here, as in TestContainer's drop.
        if let Err(error) = delete_pool(&self.name) {
            eprintln!("lxd rig: {error}");
        }
    }
}

/// A container launched for one test from [`IMAGE`], force-deleted on drop.
pub struct TestContainer {
    name: String,
    /// The current IPv4 address; `start` may renew it.
    ipv4: AtomicU32,
}

impl TestContainer {
    /// Launches a container named `lynx-t-<prefix>-<pid>-<n>` and waits (at most 60 s) until
    /// it runs and has an IPv4 address on [`BRIDGE`].
    pub fn launch(prefix: &str) -> Self {
        Self::launch_with(prefix, &[])
    }

    /// As [`launch`](Self::launch), with more `lxc launch` arguments, such as
    /// `--storage POOL` and `--device root,size=64MiB`.
    pub fn launch_with(prefix: &str, args: &[&str]) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        lxd();
        let name = container_name(
            prefix,
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed),
        );
        // The guard exists before the launch so that a half-created container is deleted too.
        let container = Self {
            name,
            ipv4: AtomicU32::new(0),
        };
        let started = Instant::now();
        let mut launch = vec!["launch", IMAGE, &container.name, "--quiet"];
        launch.extend_from_slice(args);
        lxc(&launch);
        container.wait_ready();
        eprintln!(
            "lxd rig: {} running at {} after {:.2} s",
            container.name,
            container.ipv4(),
            started.elapsed().as_secs_f64()
        );
        container
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's IPv4 address on [`BRIDGE`].
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ipv4.load(Ordering::Relaxed))
    }

    /// `lxc exec NAME -- ARGS` to its end (at most [`EXEC_TIMEOUT`]), whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(&mut self.exec_command(args), EXEC_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: exec {args:?}: {e}", self.name))
    }

    /// [`exec`](Self::exec) that panics unless the command succeeds; returns its stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let output = self.exec(args);
        assert!(
            output.status.success(),
            "{}: exec {args:?}: {}\nstdout: {}\nstderr: {}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The `lxc exec` command line for `args`, to configure and run as the caller likes.
    pub fn exec_command(&self, args: &[&str]) -> Command {
        let mut command = system_command("lxc");
        command
            .args(["exec", &self.name, "--mode=non-interactive", "--"])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Starts a long-running `lxc exec NAME -- ARGS` (stdin and stdout null, stderr inherited).
    /// Killing the returned child (even with SIGKILL) ends the workload too: LXD kills the
    /// exec'd process when its client disconnects. Daemons it started live on.
    pub fn spawn_exec(&self, args: &[&str]) -> Child {
        self.exec_command(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawn exec {args:?}: {e}", self.name))
    }

    /// Serves `/www` over HTTP on `port` with busybox httpd, and waits (at most 10 s) until the
    /// host can fetch it. Returns the body that `GET /` serves.
    pub fn serve_http(&self, port: u16) -> String {
        let body = format!("lynx test page from {}\n", self.name);
        // The name is [a-z0-9-] only, so it needs no quoting inside the script.
        self.exec_ok(&[
            "sh",
            "-c",
            &format!(
                "mkdir -p /www && echo 'lynx test page from {}' > /www/index.html \
                 && httpd -p {port} -h /www",
                self.name
            ),
        ]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match try_http_get(self.ipv4(), port, "/") {
                Ok(served) if served == body => return body,
                result if Instant::now() >= deadline => panic!(
                    "{}: httpd on port {port} does not serve the index after 10 s: {result:?}",
                    self.name
                ),
                _ => sleep(Duration::from_millis(50)),
            }
        }
    }

    /// As [`serve_http`](Self::serve_http); returns the address a proxy on the host reaches it at.
    pub fn http_backend(&self, port: u16) -> SocketAddr {
        self.serve_http(port);
        SocketAddr::from((self.ipv4(), port))
    }

    /// As [`serve_http`](Self::serve_http), and again at every start: the container's init
    /// starts httpd before it settles, so a restarted container serves without the test's
    /// help.
    pub fn serve_http_at_boot(&self, port: u16) -> String {
        self.exec_ok(&[
            "sed",
            "-i",
            &format!("/^while/i httpd -p {port} -h /www"),
            "/sbin/init",
        ]);
        self.serve_http(port)
    }

    /// `lxc list`'s status of this container (`Running`, `Frozen`, `Stopped`).
    pub fn status(&self) -> String {
        lxd()
            .status(&self.name)
            .unwrap_or_else(|| panic!("{} is not in lxc list", self.name))
    }

    /// Stops the container cleanly (its init exits on SIGPWR), killing it after 30 s.
    pub fn stop(&self) {
        lxc(&["stop", &self.name, "--timeout", "30"]);
    }

    /// Starts the stopped container and waits (at most 60 s) until it has an IPv4 again.
    pub fn start(&self) {
        lxc(&["start", &self.name]);
        self.wait_ready();
    }

    /// Freezes every process of the container (`lxc pause`).
    pub fn freeze(&self) {
        lxc(&["pause", &self.name]);
    }

    /// Thaws the frozen container (`lxc start` resumes a frozen instance).
    pub fn unfreeze(&self) {
        lxc(&["start", &self.name]);
    }

    /// Polls the instance state until it runs with a global IPv4 address on `eth0`.
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let state = lxc(&["query", &format!("/1.0/instances/{}/state", self.name)]);
            let state: Value = serde_json::from_str(&state)
                .unwrap_or_else(|e| panic!("{}: instance state is not JSON: {e}", self.name));
            if state["status"] == "Running"
                && let Some(ip) = global_ipv4(&state)
            {
                assert!(
                    on_bridge(ip),
                    "{}: got {ip}, which is not on {BRIDGE} ({BRIDGE_SUBNET}/{BRIDGE_PREFIX})",
                    self.name
                );
                self.ipv4.store(ip.into(), Ordering::Relaxed);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no IPv4 from LXD's dnsmasq on {BRIDGE} after {READY_TIMEOUT:?} (status {}, \
                 eth0 {}); see {LOG} and `lxc info --show-log {}`",
                self.name,
                state["status"],
                state["network"]["eth0"],
                self.name
            );
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        // No panic here: during unwinding a second panic would abort the whole test binary.
        match run(
            system_command("lxc").args(["delete", "--force", &self.name]),
            LXC_TIMEOUT,
        ) {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "lxd rig: cannot delete {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(e) => eprintln!("lxd rig: cannot delete {}: {e}", self.name),
        }
        remove_leftover_cgroups(&self.name);
    }
}

/// Removes the empty LXC cgroups of container `name` that outlived it: a monitor that died
/// with LXD (the outage test kills it) leaves `lxc.monitor.NAME` in every hierarchy.
/// `rmdir` only removes empty cgroups, so a live container's are never touched.
fn remove_leftover_cgroups(name: &str) {
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .chain([std::path::PathBuf::from("/sys/fs/cgroup")]);
    for hierarchy in hierarchies {
        for kind in ["monitor", "payload"] {
            let _ = std::fs::remove_dir(hierarchy.join(format!("lxc.{kind}.{name}")));
        }
    }
}

/// `GET path` from `ip:port` over HTTP/1.0; panics unless the answer is `200`. Returns the body.
/// Only loopback and the rig's bridge are allowed, so tests send traffic nowhere else.
pub fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> String {
    try_http_get(ip, port, path).unwrap_or_else(|e| panic!("GET http://{ip}:{port}{path}: {e}"))
}

/// `GET path` over HTTP/1.0: the body of a 200 answer, or what went wrong (a status line
/// other than 200 comes back as `answered "HTTP/1.1 503 ..."`).
pub fn try_http_get(ip: Ipv4Addr, port: u16, path: &str) -> Result<String, String> {
    try_http_get_within(ip, port, path, Duration::from_secs(5))
}

/// [`try_http_get`] with `timeout` for the connect and each read and write.
pub fn try_http_get_within(
    ip: Ipv4Addr,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    assert!(
        ip.is_loopback() || on_bridge(ip),
        "{ip} is neither loopback nor on the rig's bridge: tests send traffic nowhere else"
    );
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("set timeouts: {e}"))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("receive: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {response:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status:?}"));
    }
    Ok(body.to_owned())
}

/// A unique container name: `lynx-t-<prefix>-<pid>-<n>`, the prefix cut so the whole stays a valid
/// hostname (at most 63 characters of `[a-z0-9-]`).
fn container_name(prefix: &str, pid: u32, n: u32) -> String {
    let suffix = format!("-{pid}-{n}");
    let room = 63 - CONTAINER_PREFIX.len() - suffix.len();
    let prefix: String = prefix
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(room)
        .collect();
    format!("{CONTAINER_PREFIX}{prefix}{suffix}")
}

/// The first global IPv4 address of `eth0` in an instance state document.
fn global_ipv4(state: &Value) -> Option<Ipv4Addr> {
    state["network"]["eth0"]["addresses"]
        .as_array()?
        .iter()
        .filter(|address| address["family"] == "inet" && address["scope"] == "global")
        .find_map(|address| address["address"].as_str()?.parse().ok())
}

/// Starts the daemon unless the socket answers, and waits until it is ready.
pub fn ensure_daemon() {
    if socket_answers() {
        return;
    }
    let started = Instant::now();
    eprintln!("lxd rig: {SOCKET} does not answer: starting lxd (log in {LOG})");
    // stderr repeats the log, but is where a crash of the daemon would show.
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{LOG}.stderr"))
        .unwrap_or_else(|e| panic!("open {LOG}.stderr: {e}"));
    let mut command = system_command("lxd");
    command
        .args(["--group", "lxd", "--logfile", LOG])
        // LXD 5.0 fetches cloud instance types from the internet at start and daily, with no
        // setting to stop it. Tests send nothing off this host: the proxy is a closed port on
        // loopback, so the request fails here without even a DNS lookup.
        .env("https_proxy", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: setsid and close_range are async-signal-safe. A session of its own detaches the
    // daemon from the test's terminal and process group, so it outlives the test binary; and
    // it must not keep what the test process inherited (a lock the test run holds, say) for
    // its whole life: every descriptor above stderr closes at exec (marked, not closed, so
    // the standard library's own exec-error pipe still works).
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0
                || libc::syscall(
                    libc::SYS_close_range,
                    3,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Dropping the handle neither kills nor waits: the daemon lives on after the tests.
    drop(command.spawn().unwrap_or_else(|e| panic!("start lxd: {e}")));
    let output = run(
        system_command("lxd").args(["waitready", "--timeout", "60"]),
        Duration::from_secs(70),
    )
    .unwrap_or_else(|e| panic!("lxd waitready: {e}"));
    assert!(
        output.status.success() && socket_answers(),
        "lxd did not become ready in 60 s: {}\nlast lines of {LOG}:\n{}",
        String::from_utf8_lossy(&output.stderr),
        tail(Path::new(LOG), 20)
    );
    eprintln!(
        "lxd rig: lxd ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Kills the LXD daemon as a crash would (SIGKILL: its instances keep running, as they do
/// through an LXD upgrade or restart; SIGTERM would stop them) and waits, up to 30 s, until
/// its socket no longer answers. [`ensure_daemon`] starts it again.
pub fn stop_daemon() {
    // Only the daemon (`lxd --group ...`): LXD's per-container monitors are `lxd` processes
    // too (`lxd forkstart ...`), and killing them would kill the containers.
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .expect("list /proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mut args = cmdline.split(|&b| b == 0);
            args.next().is_some_and(|arg| arg.ends_with(b"lxd"))
                && args.next().is_some_and(|arg| arg.starts_with(b"--"))
        })
        .collect();
    assert!(!pids.is_empty(), "no lxd daemon process found to stop");
    for pid in &pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket_answers() {
        assert!(
            Instant::now() < deadline,
            "lxd (pids {pids:?}) still answers 30 s after SIGTERM"
        );
        sleep(Duration::from_millis(100));
    }
}

/// True when LXD answers `GET /1.0` on its socket.
pub fn socket_answers() -> bool {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(SOCKET) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(5));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    if stream
        .write_all(b"GET /1.0 HTTP/1.0\r\nHost: lxd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..] == b"200"
}

/// Gives LXD a `default` storage pool, the bridge, and a default profile using both, unless
/// it has them already; `lxd init --preseed` creates what is missing and merges the profile.
fn ensure_initialised() {
    let query = |path: &str| -> Option<Value> {
        let output = run(system_command("lxc").args(["query", path]), LXC_TIMEOUT)
            .unwrap_or_else(|e| panic!("lxc query {path}: {e}"));
        output.status.success().then(|| {
            serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|e| panic!("lxc query {path}: not JSON: {e}"))
        })
    };
    let address = format!("{BRIDGE_ADDRESS}/{BRIDGE_PREFIX}");
    let pool = query("/1.0/storage-pools/default");
    let network = query(&format!("/1.0/networks/{BRIDGE}"));
    if !network
        .as_ref()
        .is_some_and(|network| network["managed"] == true)
    {
        end_stale_dnsmasq();
    }
    if network
        .as_ref()
        .is_some_and(|network| network["managed"] == false)
    {
        // The bridge device outlived the LXD database that managed it (LXD reinstalled or its
        // state removed): LXD lists it as a host interface and its preseed cannot take it over.
        let output = run(
            system_command("ip").args(["link", "delete", BRIDGE]),
            LXC_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("ip link delete {BRIDGE}: {e}"));
        assert!(
            output.status.success(),
            "ip link delete {BRIDGE}, a bridge LXD no longer manages: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("lxd rig: removed the bridge {BRIDGE} that no LXD database knew");
    }
    let bridge_ok = network.is_some_and(|network| {
        let config = &network["config"];
        network["managed"] == true
            && config["ipv4.address"] == address.as_str()
            && config["ipv4.nat"] == "false"
            && config["ipv6.address"] == "none"
    });
    let profile =
        query("/1.0/profiles/default").unwrap_or_else(|| panic!("LXD has no default profile"));
    let devices = &profile["devices"];
    let has_root = devices["root"]["type"] == "disk";
    let profile_ok = has_root && devices["eth0"]["network"] == BRIDGE;
    if pool.is_some() && bridge_ok && profile_ok {
        return;
    }
    let mut preseed = String::new();
    if pool.is_none() {
        preseed += "storage_pools:\n- name: default\n  driver: dir\n";
    }
    // No iptables/nftables on these hosts: LXD's bridge firewall setup fails unless it is off,
    // and the rig needs none (no NAT, DHCP and DNS are local to the bridge).
    preseed += &format!(
        "networks:\n- name: {BRIDGE}\n  type: bridge\n  config:\n    ipv4.address: {address}\n    \
         ipv4.nat: \"false\"\n    ipv4.firewall: \"false\"\n    ipv6.address: none\n    \
         ipv6.firewall: \"false\"\n"
    );
    preseed += &format!(
        "profiles:\n- name: default\n  devices:\n    eth0:\n      name: eth0\n      \
         network: {BRIDGE}\n      type: nic\n"
    );
    if !has_root {
        preseed += "    root:\n      path: /\n      pool: default\n      type: disk\n";
    }
    eprintln!("lxd rig: initialising LXD with lxd init --preseed:\n{preseed}");
    let output = run_with_input(
        system_command("lxd").args(["init", "--preseed"]),
        preseed.as_bytes(),
        LXC_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("lxd init --preseed: {e}"));
    assert!(
        output.status.success(),
        "lxd init --preseed failed: {}\npreseed:\n{preseed}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Ends a dnsmasq serving [`BRIDGE`] that no LXD manages any more (its LXD was stopped and its
/// database removed): it holds the bridge's DNS port, so LXD could not start its own.
fn end_stale_dnsmasq() {
    let needle = format!("--interface={BRIDGE}");
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
        if args
            .next()
            .is_some_and(|program| program.ends_with("dnsmasq"))
            && args.any(|arg| arg == needle)
        {
            // SAFETY: kill has no memory-safety preconditions; the pid is a stale dnsmasq's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            eprintln!("lxd rig: ended a dnsmasq (pid {pid}) left on {BRIDGE} by an earlier LXD");
        }
    }
}

/// Imports the busybox image unless [`IMAGE`] exists at the current [`IMAGE_VERSION`].
fn ensure_image() {
    let alias = run(
        system_command("lxc").args(["query", &format!("/1.0/images/aliases/{IMAGE}")]),
        LXC_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("lxc query image alias: {e}"));
    if alias.status.success() {
        let alias: Value = serde_json::from_slice(&alias.stdout).expect("image alias is JSON");
        let fingerprint = alias["target"]
            .as_str()
            .unwrap_or_else(|| panic!("image alias {IMAGE} has no target: {alias}"));
        let image: Value =
            serde_json::from_str(&lxc(&["query", &format!("/1.0/images/{fingerprint}")]))
                .expect("image is JSON");
        if image["properties"][IMAGE_VERSION_KEY] == IMAGE_VERSION {
            return;
        }
        eprintln!("lxd rig: replacing {IMAGE}, an older version of the test image");
        lxc(&["image", "delete", fingerprint]);
    }
    // The image is the host's busybox: it must be the static one, which needs no libraries.
    assert!(
        dpkg_installed("busybox-static"),
        "busybox-static is not installed: `cargo xtask setup` installs what the tests run"
    );
    let started = Instant::now();
    let dir = env::temp_dir().join(format!("lynx-busybox-image-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    build_image(&dir);
    let meta = dir.join("meta.tar.gz");
    let rootfs = dir.join("rootfs.tar.gz");
    lxc(&[
        "image",
        "import",
        path_str(&meta),
        path_str(&rootfs),
        "--alias",
        IMAGE,
    ]);
    if let Err(e) = fs::remove_dir_all(&dir) {
        eprintln!("lxd rig: cannot remove {}: {e}", dir.display());
    }
    eprintln!(
        "lxd rig: built and imported image {IMAGE} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The image's init, PID 1: brings up the network through udhcpc (which keeps renewing the
/// lease) and then sleeps; SIGPWR, which `lxc stop` sends, ends it.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
trap 'kill -TERM -1 2>/dev/null; exit 0' PWR TERM INT USR1
ip link set lo up
ip link set eth0 up
udhcpc -b -S -i eth0 -s /etc/udhcpc/default.script >/dev/null 2>&1
# wait returns on a signal, so the trap runs at once.
while :; do sleep 3600 & wait $!; done
"#;

/// udhcpc's hook: it only reports the lease, this applies it.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
"#;

/// Writes `meta.tar.gz` and `rootfs.tar.gz` of the busybox image into `dir`.
fn build_image(dir: &Path) {
    let rootfs = dir.join("rootfs");
    let meta = dir.join("meta");
    for sub in [
        "bin",
        "sbin",
        "etc/udhcpc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "var/log",
        "www",
        "mnt",
    ] {
        create_dir(&rootfs.join(sub));
    }
    create_dir(&meta);
    busybox_rootfs(&rootfs, &["httpd", "udhcpc"]);
    write_file(&rootfs.join("sbin/init"), INIT, 0o755);
    write_file(
        &rootfs.join("etc/udhcpc/default.script"),
        UDHCPC_SCRIPT,
        0o755,
    );
    write_file(
        &rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    write_file(&rootfs.join("etc/group"), "root:x:0:\n", 0o644);
    write_file(&rootfs.join("www/index.html"), "lynx\n", 0o644);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    write_file(
        &meta.join("metadata.yaml"),
        &format!(
            "architecture: x86_64\ncreation_date: {now}\nproperties:\n  description: Lynx \
             test busybox\n  os: busybox\n  {IMAGE_VERSION_KEY}: \"{IMAGE_VERSION}\"\n"
        ),
        0o644,
    );
    for (source, archive) in [(&rootfs, "rootfs.tar.gz"), (&meta, "meta.tar.gz")] {
        let output = run(
            Command::new("tar")
                .args(["--numeric-owner", "--owner=0", "--group=0", "-czf"])
                .arg(dir.join(archive))
                .arg("-C")
                .arg(source)
                .arg("."),
            LXC_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("tar {archive}: {e}"));
        assert!(
            output.status.success(),
            "tar {archive}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Puts the host's static busybox in `rootfs/bin` with a link for each of its applets, and
/// checks that the applets in `needed` are there.
pub(crate) fn busybox_rootfs(rootfs: &Path, needed: &[&str]) {
    create_dir(&rootfs.join("bin"));
    let busybox = Path::new("/bin/busybox");
    fs::copy(busybox, rootfs.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("copy {} into the image: {e}", busybox.display()));
    let applets = run(Command::new(busybox).arg("--list"), LXC_TIMEOUT)
        .unwrap_or_else(|e| panic!("busybox --list: {e}"));
    let applets = String::from_utf8_lossy(&applets.stdout);
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let link = rootfs.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    }
    for applet in needed {
        assert!(
            rootfs.join("bin").join(applet).exists(),
            "{} lacks {applet}: {applets}",
            busybox.display()
        );
    }
}

fn create_dir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

fn write_file(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

/// Runs `lxc ARGS`, panicking with its stderr unless it succeeds; returns its stdout.
fn lxc(args: &[&str]) -> String {
    let output = run(system_command("lxc").args(args), LXC_TIMEOUT)
        .unwrap_or_else(|e| panic!("lxc {}: {e}", args.join(" ")));
    assert!(
        output.status.success(),
        "lxc {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command with [`SYSTEM_PATH`].
pub(crate) fn system_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("PATH", SYSTEM_PATH);
    command
}

fn dpkg_installed(package: &str) -> bool {
    run(
        system_command("dpkg-query").args(["-W", "-f=${Status}", package]),
        LXC_TIMEOUT,
    )
    .is_ok_and(|output| output.stdout.ends_with(b" installed"))
}

/// Runs `command` with stdin null, collecting its output; kills it after `timeout`.
pub(crate) fn run(command: &mut Command, timeout: Duration) -> Result<Output, String> {
    run_with_input(command, &[], timeout)
}

/// Runs `command` with `input` on stdin, collecting its output; kills it after `timeout`.
fn run_with_input(
    command: &mut Command,
    input: &[u8],
    timeout: Duration,
) -> Result<Output, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| format!("write stdin of {program}: {e}"))?;
    }
    // Readers on threads, so a full pipe cannot stall the child, and with a bounded wait for
    // them, so a grandchild that keeps a pipe open cannot stall the test.
    let (sender, receiver) = mpsc::channel();
    for (index, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let mut pipe = pipe.expect("piped output");
        let sender = sender.clone();
        thread::spawn(move || {
            let mut data = Vec::new();
            let _ = pipe.read_to_end(&mut data);
            let _ = sender.send((index, data));
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} still ran after {timeout:?}: killed"));
            }
            Ok(None) => sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("wait for {program}: {e}")),
        }
    };
    let mut outputs = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        let (index, data) = receiver
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| format!("{program} exited but its output stayed open"))?;
        outputs[index] = data;
    }
    let [stdout, stderr] = outputs;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// An exclusive `flock` on a file, released on drop.
struct FileLock(File);

impl FileLock {
    fn acquire(path: &Path, timeout: Duration) -> Self {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let deadline = Instant::now() + timeout;
        while file.try_lock().is_err() {
            assert!(
                Instant::now() < deadline,
                "another test process held {} for {timeout:?}",
                path.display()
            );
            sleep(Duration::from_millis(100));
        }
        Self(file)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the descriptor would unlock too; unlocking says so where it matters.
        let _ = self.0.unlock();
    }
}

/// The last `lines` lines of a file, for panic messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_hostnames() {
        let name = container_name(&"Very_Long.Prefix".repeat(10), 4_194_304, 123_456);
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("lynx-t-very-long-prefix"), "{name}");
        assert!(name.ends_with("-4194304-123456"), "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }

    #[test]
    fn bridge_subnet() {
        assert!(on_bridge(Ipv4Addr::new(10, 177, 42, 77)));
        assert!(!on_bridge(Ipv4Addr::new(10, 177, 43, 77)));
    }
}
