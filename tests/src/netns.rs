//! Network namespaces a test makes, each joined to the root namespace by a veth pair of its
//! own (`10.251.N.1` on the host side, `10.251.N.2` inside): the backends of the nginx rig
//! that needs no LXD, and a container's network for the traffic test. The neighbours are
//! static and IPv6 is off on both ends, so that nothing but the test's own traffic crosses
//! the pair. Removed, with whatever runs in them, on drop.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::ChildGuard;

pub struct TestNetns {
    name: String,
    host_veth: String,
    /// The host side's address, which the namespace reaches the host by.
    pub host_addr: Ipv4Addr,
    /// The namespace's address.
    pub addr: Ipv4Addr,
}

impl TestNetns {
    /// Namespace number `index` (1 to 250) of this test process.
    pub fn create(index: u8) -> Self {
        let pid = std::process::id();
        let netns = Self {
            name: format!("lynx-{index}-{pid}"),
            // Interface names have at most 15 bytes.
            host_veth: format!("lx{index}h{}", pid % 100_000),
            host_addr: Ipv4Addr::new(10, 251, index, 1),
            addr: Ipv4Addr::new(10, 251, index, 2),
        };
        ip(&["netns", "add", &netns.name]);
        let inside = |args: &[&str]| ip(&[&["-n", netns.name.as_str()][..], args].concat());
        netns.exec_ok(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        ip(&[
            "link",
            "add",
            &netns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ]);
        fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", netns.host_veth),
            "1",
        )
        .expect("turn IPv6 off on the host's veth");
        ip(&[
            "addr",
            "add",
            &format!("{}/30", netns.host_addr),
            "dev",
            &netns.host_veth,
        ]);
        inside(&["addr", "add", &format!("{}/30", netns.addr), "dev", "eth0"]);
        ip(&["link", "set", &netns.host_veth, "up"]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["link", "set", "lo", "up"]);
        // Static neighbours: no ARP on the pair while the test measures it.
        let mac = |path: String| {
            fs::read_to_string(path)
                .expect("a veth's MAC")
                .trim()
                .to_owned()
        };
        let host_mac = mac(format!("/sys/class/net/{}/address", netns.host_veth));
        let inner_mac = netns
            .exec_ok(&["cat", "/sys/class/net/eth0/address"])
            .trim()
            .to_owned();
        ip(&[
            "neigh",
            "replace",
            &netns.addr.to_string(),
            "lladdr",
            &inner_mac,
            "dev",
            &netns.host_veth,
            "nud",
            "permanent",
        ]);
        inside(&[
            "neigh",
            "replace",
            &netns.host_addr.to_string(),
            "lladdr",
            &host_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        netns
    }

    /// `args` run inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    /// Runs `args` inside the namespace, which must succeed; returns its output.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let output = self.command(args).output().expect("run ip netns exec");
        assert!(
            output.status.success(),
            "{args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The log of its HTTP server: `httpd -vv` writes a `url:` line for each request it
    /// reads (and nothing for a connection that carried none).
    fn http_log(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("lynx-www-{}.log", self.name))
    }

    /// Requests its HTTP server has read so far.
    pub fn requests_served(&self) -> u64 {
        let log = fs::read_to_string(self.http_log()).unwrap_or_default();
        log.lines().filter(|line| line.contains(": url:")).count() as u64
    }

    /// What the namespace sent and received over its pair, from the host side's interface
    /// counters, in bytes from the network header on (less 14 bytes of Ethernet header a
    /// packet): `(sent, received)`.
    pub fn l3_bytes(&self) -> (u64, u64) {
        let counter = |name: &str| -> u64 {
            let path = format!("/sys/class/net/{}/statistics/{name}", self.host_veth);
            fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {path}: {e}"))
                .trim()
                .parse()
                .expect("a counter")
        };
        let l3 = |bytes: &str, packets: &str| counter(bytes) - 14 * counter(packets);
        (l3("rx_bytes", "rx_packets"), l3("tx_bytes", "tx_packets"))
    }

    /// A busybox httpd inside the namespace on port 80, serving a page that names `index`.
    pub fn serve_http(&self, index: u8) -> ChildGuard {
        let root = std::env::temp_dir().join(format!("lynx-www-{}", self.name));
        fs::create_dir_all(&root).expect("create the document root");
        fs::write(root.join("index.html"), format!("backend {index}\n")).expect("write a page");
        let log = fs::File::create(self.http_log()).expect("create the server's log");
        let server = ChildGuard(
            self.command(&["busybox", "httpd", "-f", "-vv", "-p", "80", "-h"])
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start busybox httpd"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((self.addr, 80)).is_err() {
            assert!(
                Instant::now() < deadline,
                "httpd in {} does not listen",
                self.name
            );
            sleep(Duration::from_millis(50));
        }
        server
    }

    /// The address of its HTTP server.
    pub fn http_backend(&self) -> SocketAddr {
        SocketAddr::from((self.addr, 80))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // The pair goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = fs::remove_dir_all(std::env::temp_dir().join(format!("lynx-www-{}", self.name)));
        let _ = fs::remove_file(self.http_log());
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// nginx (Debian's), in a cgroup of its own, proxying to busybox httpd in two namespaces of
/// the test's, under `per_mode` requests with keep-alive and as many with a connection each,
/// from clients that wait for every answer (so that every request nginx counts reaches a
/// backend). A daemon collecting every `interval`, with `extra` in its `[nginx]` section,
/// must count nginx's requests and accepts exactly as `stub_status` does, and each upstream's
/// requests exactly as its backend's own log of the requests it read. (Not its accepted
/// connections: the emulated 6.1 guest once showed one more connection than requests.)
pub fn nginx_counts_exactly_over_namespaces(
    name: &str,
    interval: &str,
    extra: &str,
    per_mode: usize,
) {
    // Each client's keep-alive connection takes at most nginx's `keepalive_requests` (1,000).
    const CLIENTS: usize = 10;
    let backends = [TestNetns::create(1), TestNetns::create(2)];
    let _servers: Vec<ChildGuard> = (1..)
        .zip(&backends)
        .map(|(index, backend)| backend.serve_http(index))
        .collect();
    let cgroup = crate::TestCgroup::create(&format!("{name}-nginx"));
    let addresses: Vec<SocketAddr> = backends.iter().map(TestNetns::http_backend).collect();
    let nginx = crate::nginx::Nginx::start_in(name, &addresses, &cgroup);
    let config = format!("{}{extra}[lxd]\nsockets = []\n", nginx.lynx_config());
    let daemon = crate::daemon::DaemonUnderTest::start_configured(name, interval, "", &config);
    let master = nginx.master_pid();
    daemon.wait_for("the daemon to find nginx", Duration::from_secs(60), |s| {
        s.nginx.master_pid == Some(master)
    });
    eprintln!("{name}: features {:?}", daemon.next_snapshot().features);

    let (status_before, lynx_before) = (nginx.stub_status(), daemon.next_snapshot().nginx);
    let served_before: Vec<u64> = backends.iter().map(TestNetns::requests_served).collect();
    let per_client = per_mode / CLIENTS;
    assert!(
        per_client <= 1_000,
        "{per_client} requests a keep-alive connection"
    );
    let started = Instant::now();
    let keep_alive = crate::http_client::keep_alive_clients(
        Ipv4Addr::LOCALHOST,
        nginx.port,
        "/",
        CLIENTS,
        per_client,
    );
    let ok_keep_alive: u64 = keep_alive
        .into_iter()
        .map(|c| c.join().expect("a client"))
        .sum();
    let close = crate::http_client::close_clients(
        Ipv4Addr::LOCALHOST,
        nginx.port,
        "/",
        CLIENTS,
        per_client,
    );
    let ok_close: u64 = close.into_iter().map(|c| c.join().expect("a client")).sum();
    let sent = 2 * (CLIENTS * per_client) as u64;
    eprintln!(
        "{name}: {sent} requests in {:.1} s ({ok_keep_alive} keep-alive, {ok_close} close answered 200)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(ok_keep_alive + ok_close, sent, "every request answered 200");
    let (status_after, lynx_after) = (nginx.stub_status(), daemon.next_snapshot().nginx);

    let nginx_requests = status_after.requests - status_before.requests;
    let lynx_requests = lynx_after.requests - lynx_before.requests;
    let (nginx_accepts, lynx_accepts) = (
        status_after.accepts - status_before.accepts,
        lynx_after.accepts - lynx_before.accepts,
    );
    eprintln!(
        "{name}: requests stub_status {nginx_requests} lynx {lynx_requests}; accepts stub_status \
         {nginx_accepts} lynx {lynx_accepts}"
    );
    assert!(
        nginx_requests > sent,
        "stub_status counted {nginx_requests}"
    );
    assert_eq!(lynx_requests, nginx_requests, "{name}: requests");
    assert_eq!(lynx_accepts, nginx_accepts, "{name}: accepts");
    let upstream_requests = |snapshot: &lynx::model::Nginx, backend: &TestNetns| {
        let address = backend.addr.to_string();
        snapshot
            .upstreams
            .iter()
            .find(|e| e.address.as_deref() == Some(address.as_str()) && e.port == 80)
            .map_or(0, |e| e.requests)
    };
    let mut proxied = 0;
    for (backend, served_before) in backends.iter().zip(served_before) {
        let served = backend.requests_served() - served_before;
        let lynx =
            upstream_requests(&lynx_after, backend) - upstream_requests(&lynx_before, backend);
        eprintln!(
            "{name}: backend {}: served {served}, lynx {lynx}",
            backend.addr
        );
        assert_eq!(lynx, served, "{name}: requests sent to {}", backend.addr);
        proxied += lynx;
    }
    // All but the second stub_status request went upstream.
    assert_eq!(proxied, nginx_requests - 1, "{name}: requests proxied");
}
