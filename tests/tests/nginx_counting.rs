//! nginx's connections and requests as Lynx's kernel programs count them, through the real
//! daemon's snapshot, against nginx's own `stub_status`, against what each backend served, and
//! for malformed input against the table in docs/snapshot.md.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
    thread::sleep,
    time::Duration,
};

use lynx::model::{Nginx as NginxSnapshot, NginxEndpoint};
use lynx_tests::{
    TestCgroup,
    daemon::DaemonUnderTest,
    http_client::{
        CountingBackend, get, keep_alive_clients, malformed_inputs, send_malformed, session,
        valid_mix,
    },
    lxd::TestContainer,
    nginx::{Nginx, StubStatus, wrk},
    privileged,
};

/// A daemon counting `nginx`, once it has found it.
fn counting_daemon(name: &str, nginx: &Nginx) -> DaemonUnderTest {
    let daemon = DaemonUnderTest::start_configured(name, "200ms", "", &nginx.lynx_config());
    let master = nginx.master_pid();
    daemon.wait_for("the daemon to find nginx", Duration::from_secs(10), |s| {
        s.nginx.master_pid == Some(master)
    });
    daemon
}

/// nginx's counters at a quiet moment, then Lynx's from a snapshot taken wholly after them.
/// Each includes the `stub_status` request itself, so differences of two such pairs compare
/// exactly. Quiet: no connection on nginx's port in CLOSE_WAIT, which its client closed and
/// nginx still counts active until a worker reads the end.
fn settled(daemon: &DaemonUnderTest, nginx: &Nginx) -> (StubStatus, NginxSnapshot) {
    for _ in 0..50 {
        if closing_on_port(nginx.port) == 0 {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    let status = nginx.stub_status();
    (status, daemon.next_snapshot().nginx)
}

/// Sockets on local `port` in CLOSE_WAIT, from `/proc/net/tcp` (IPv4: the tests' nginx listens
/// on loopback).
fn closing_on_port(port: u16) -> usize {
    const CLOSE_WAIT: &str = "08";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&CLOSE_WAIT)
        })
        .count()
}

/// The client side of the port nginx listens on.
fn listening(snapshot: &NginxSnapshot, port: u16) -> NginxEndpoint {
    snapshot
        .listen
        .iter()
        .find(|e| e.port == port)
        .cloned()
        .unwrap_or_else(|| panic!("no port {port} in {snapshot:#?}"))
}

/// Requests nginx sent to `backend` (0 before the first connection).
fn upstream_requests(snapshot: &NginxSnapshot, backend: SocketAddr) -> u64 {
    upstream(snapshot, backend).map_or(0, |e| e.requests)
}

fn upstream(snapshot: &NginxSnapshot, backend: SocketAddr) -> Option<&NginxEndpoint> {
    snapshot.upstreams.iter().find(|e| {
        e.address.as_deref().map(str::parse::<IpAddr>) == Some(Ok(backend.ip()))
            && e.port == backend.port()
    })
}

/// Asserts that Lynx's client-side changes equal nginx's: requests and accepts exactly, and
/// active connections at this quiet moment (nginx's count includes the `stub_status`
/// connection asking, which is closed by the time Lynx samples).
fn assert_client_side_exact(
    what: &str,
    (s0, k0): &(StubStatus, NginxSnapshot),
    (s1, k1): &(StubStatus, NginxSnapshot),
) {
    let nginx_requests = s1.requests - s0.requests;
    let lynx_requests = k1.requests - k0.requests;
    eprintln!(
        "{what}: requests nginx {nginx_requests} lynx {lynx_requests}; accepts nginx {} lynx {}; \
         active nginx {} lynx {}",
        s1.accepts - s0.accepts,
        k1.accepts - k0.accepts,
        s1.active,
        k1.active
    );
    assert_eq!(lynx_requests, nginx_requests, "{what}: requests");
    assert_eq!(
        k1.accepts - k0.accepts,
        s1.accepts - s0.accepts,
        "{what}: accepts"
    );
    assert_eq!(k1.active + 1, s1.active, "{what}: active connections");
}

#[test]
fn requests_accepts_and_active_connections_match_stub_status_and_the_backends() {
    if !privileged("requests_accepts_and_active_connections_match_stub_status_and_the_backends") {
        return;
    }
    // One upstream of each family: the kernel reads the peer from `skc_daddr` or
    // `skc_v6_daddr`.
    let backends = [
        CountingBackend::start(),
        CountingBackend::start_on(Ipv6Addr::LOCALHOST.into()),
    ];
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let nginx = Nginx::start("counting", &addresses);
    let daemon = counting_daemon("nginx-counting", &nginx);

    let before = settled(&daemon, &nginx);
    let served_before: Vec<u64> = backends.iter().map(CountingBackend::served).collect();
    let keep_alive = wrk(&nginx.url("/"), 16, Duration::from_secs(3), true);
    let close = wrk(&nginx.url("/"), 16, Duration::from_secs(3), false);
    let own = valid_mix(Ipv4Addr::LOCALHOST, nginx.port);
    sleep(Duration::from_millis(300));
    let after = settled(&daemon, &nginx);

    let load = keep_alive.requests + close.requests + own;
    eprintln!(
        "wrk keep-alive {}, wrk close {}, own client {own}",
        keep_alive.requests, close.requests
    );
    assert!(load >= 20_000, "only {load} requests in the run");
    assert_client_side_exact("wrk and own client", &before, &after);
    let client = listening(&after.1, nginx.port);
    assert_eq!(client.bad_requests, 0, "valid traffic only: {client:?}");
    assert_eq!(client.unparsed, 0, "{client:?}");

    // Every request but the stub_status one was proxied, each to one backend.
    let mut proxied = 0;
    for (backend, served_before) in backends.iter().zip(served_before) {
        let lynx =
            upstream_requests(&after.1, backend.addr) - upstream_requests(&before.1, backend.addr);
        let served = backend.served() - served_before;
        eprintln!("backend {}: served {served}, lynx {lynx}", backend.addr);
        assert_eq!(lynx, served, "requests sent to {}", backend.addr);
        proxied += lynx;
    }
    assert_eq!(proxied, after.1.requests - before.1.requests - 1);
}

#[test]
fn malformed_input_counts_as_documented() {
    if !privileged("malformed_input_counts_as_documented") {
        return;
    }
    let backend = CountingBackend::start();
    let nginx = Nginx::start("malformed", &[backend.addr]);
    let daemon = counting_daemon("nginx-malformed", &nginx);
    let port = nginx.port;

    for input in malformed_inputs() {
        let before = settled(&daemon, &nginx);
        send_malformed(Ipv4Addr::LOCALHOST, port, &input);
        sleep(Duration::from_millis(200));
        let after = settled(&daemon, &nginx);
        assert_client_side_exact(input.name, &before, &after);
        // Both include one stub_status request.
        assert_eq!(
            after.0.requests - before.0.requests - 1,
            input.requests,
            "{}: nginx's count is not the documented one",
            input.name
        );
        let bad = listening(&after.1, port).bad_requests - listening(&before.1, port).bad_requests;
        assert_eq!(bad, input.bad_requests, "{}: bad requests", input.name);
    }

    // All of them at once, among valid keep-alive traffic on other connections.
    let before = settled(&daemon, &nginx);
    let clients = keep_alive_clients(Ipv4Addr::LOCALHOST, port, "/valid", 2, 1_000);
    let inputs = malformed_inputs();
    for _ in 0..5 {
        for input in &inputs {
            send_malformed(Ipv4Addr::LOCALHOST, port, input);
        }
    }
    let ok: u64 = clients
        .into_iter()
        .map(|c| c.join().expect("a client thread"))
        .sum();
    assert_eq!(ok, 2_000, "valid requests answered 2xx");
    sleep(Duration::from_millis(200));
    let after = settled(&daemon, &nginx);
    assert_client_side_exact("malformed among valid traffic", &before, &after);
    let bad = listening(&after.1, port).bad_requests - listening(&before.1, port).bad_requests;
    assert_eq!(bad, 5 * inputs.iter().map(|i| i.bad_requests).sum::<u64>());
}

/// TCP passive opens in the container's own network namespace: busybox httpd serves one
/// request per connection, so this is what it served.
fn passive_opens(container: &TestContainer) -> u64 {
    let snmp = container.exec_ok(&["cat", "/proc/net/snmp"]);
    let tcp: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|l| l.starts_with("Tcp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let column = tcp[0]
        .iter()
        .position(|name| *name == "PassiveOpens")
        .expect("a PassiveOpens column");
    tcp[1][column].parse().expect("a number")
}

#[test]
fn requests_per_upstream_container_match_what_each_served() {
    if !privileged("requests_per_upstream_container_match_what_each_served") {
        return;
    }
    let containers = [TestContainer::launch("upst"), TestContainer::launch("upst")];
    let backends: Vec<SocketAddr> = containers.iter().map(|c| c.http_backend(80)).collect();
    let nginx = Nginx::start("upstreams", &backends);
    let daemon = counting_daemon("nginx-upstreams", &nginx);
    // The containers are known to the daemon (by LXD) before the run.
    daemon.wait_for("both containers", Duration::from_secs(30), |s| {
        containers.iter().all(|c| {
            s.containers
                .iter()
                .any(|sc| sc.name == c.name() && sc.ipv4.contains(&c.ipv4().to_string()))
        })
    });

    let before = settled(&daemon, &nginx);
    let opens_before: Vec<u64> = containers.iter().map(passive_opens).collect();
    // Clients that wait for every answer: each request nginx counts is sent upstream. nginx
    // closes a keep-alive connection after 1,000 requests (`keepalive_requests`).
    let ok: u64 = keep_alive_clients(Ipv4Addr::LOCALHOST, nginx.port, "/", 4, 900)
        .into_iter()
        .map(|c| c.join().expect("a client thread"))
        .sum();
    assert_eq!(ok, 3_600, "every request answered 2xx");
    let after = settled(&daemon, &nginx);
    let opens_after: Vec<u64> = containers.iter().map(passive_opens).collect();

    assert_client_side_exact("keep-alive clients", &before, &after);
    let mut proxied = 0;
    for (i, container) in containers.iter().enumerate() {
        let entry = upstream(&after.1, backends[i])
            .unwrap_or_else(|| panic!("no upstream {} in {:#?}", backends[i], after.1));
        assert_eq!(entry.container.as_deref(), Some(container.name()));
        let lynx = entry.requests - upstream_requests(&before.1, backends[i]);
        let served = opens_after[i] - opens_before[i];
        eprintln!(
            "{} ({}): served {served}, lynx {lynx}",
            container.name(),
            backends[i]
        );
        assert_eq!(lynx, served, "requests sent to {}", container.name());
        assert_eq!(entry.active, 0, "busybox closes each connection");
        proxied += lynx;
    }
    assert_eq!(proxied, after.1.requests - before.1.requests - 1);
}

#[test]
fn a_restarted_daemon_keeps_counting_connections_opened_before() {
    if !privileged("a_restarted_daemon_keeps_counting_connections_opened_before") {
        return;
    }
    let backend = CountingBackend::start();
    let nginx = Nginx::start("restart", &[backend.addr]);
    let mut daemon = counting_daemon("nginx-restart", &nginx);
    let before = settled(&daemon, &nginx);
    let first = get("/before-restart");
    let connect = || {
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, nginx.port)).expect("connect to nginx")
    };
    let exchange = |stream: &mut std::net::TcpStream, request: &[u8]| {
        use std::io::{Read, Write};
        stream.write_all(request).expect("send");
        let mut buffer = [0u8; 4096];
        let n = stream.read(&mut buffer).expect("answer");
        assert!(
            buffer[..n].starts_with(b"HTTP/1.1 200"),
            "answer to {request:?}"
        );
    };
    // A keep-alive connection that lives across the restart: one request before, five after.
    let mut stream = connect();
    exchange(&mut stream, &first);
    // One that ends while no daemon runs: its close is seen by none, and the restarted daemon
    // must still count it closed.
    let mut ended = connect();
    exchange(&mut ended, &get("/ends-while-down"));
    sleep(Duration::from_millis(500));
    daemon.kill_and_restart(|| {
        drop(ended);
        // Until nginx has closed its end too.
        sleep(Duration::from_millis(500));
    });
    for _ in 0..5 {
        exchange(&mut stream, &get("/after-restart"));
    }
    drop(stream);
    // A fresh connection too, for good measure.
    session(
        Ipv4Addr::LOCALHOST,
        nginx.port,
        &[get("/fresh")],
        Duration::ZERO,
        1,
    );
    sleep(Duration::from_millis(200));
    let after = settled(&daemon, &nginx);
    assert_client_side_exact("across a daemon restart", &before, &after);
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|line| line.contains("closed while no daemon ran")
                && line.contains("connections=1")),
        "the restarted daemon does not say it closed the connection that ended:\n{log}"
    );
}

#[test]
fn the_hooks_on_every_socket_call_run_only_while_nginx_is_followed() {
    if !privileged("the_hooks_on_every_socket_call_run_only_while_nginx_is_followed") {
        return;
    }
    let backend = CountingBackend::start();
    let nginx = Nginx::start("hooks", &[backend.addr]);
    let daemon = counting_daemon("nginx-hooks", &nginx);
    let byte_hooks = || -> Vec<String> {
        daemon
            .tracepoints()
            .into_iter()
            .filter(|name| name.starts_with("sock_"))
            .collect()
    };
    assert_eq!(byte_hooks(), ["sock_recv_length", "sock_send_length"]);
    drop(nginx);
    daemon.wait_for("the daemon to lose nginx", Duration::from_secs(10), |s| {
        s.nginx.master_pid.is_none()
    });
    assert_eq!(byte_hooks(), Vec::<String>::new(), "without nginx");
    assert!(
        daemon.tracepoints().contains(&"sched_switch".to_owned()),
        "CPU time is still counted: {:?}",
        daemon.tracepoints()
    );
}

#[test]
fn a_tls_port_counts_connections_and_bytes_and_its_requests_upstream() {
    if !privileged("a_tls_port_counts_connections_and_bytes_and_its_requests_upstream") {
        return;
    }
    let backend = CountingBackend::start();
    let nginx = Nginx::start_with_tls("tls", &[backend.addr]);
    let tls_port = nginx.tls_port.expect("a TLS port");
    let daemon = counting_daemon("nginx-tls", &nginx);
    let before = settled(&daemon, &nginx);
    let served_before = backend.served();
    // 20 requests on each of 5 TLS connections (curl reuses its connection).
    const CONNECTIONS: u64 = 5;
    const REQUESTS: u64 = 20;
    let url = format!("https://127.0.0.1:{tls_port}/tls");
    for _ in 0..CONNECTIONS {
        let mut curl = std::process::Command::new("curl");
        curl.args([
            "--silent",
            "--insecure",
            "--http1.1",
            "--max-time",
            "10",
            "--output",
            "/dev/null",
        ]);
        for _ in 0..REQUESTS {
            curl.arg(&url);
        }
        let status = curl.status().expect("run curl");
        assert!(status.success(), "curl: {status}");
    }
    sleep(Duration::from_millis(200));
    let after = settled(&daemon, &nginx);

    // The port has no entry until its first connection.
    assert!(before.1.listen.iter().all(|e| e.port != tls_port));
    let tls_after = listening(&after.1, tls_port);
    assert!(tls_after.tls, "{tls_after:?}");
    assert_eq!(
        tls_after.connections, CONNECTIONS,
        "TLS connections accepted"
    );
    assert_eq!(tls_after.active, 0);
    assert_eq!(
        (tls_after.requests, tls_after.bad_requests),
        (0, 0),
        "ciphertext is not parsed"
    );
    assert!(tls_after.bytes_in > 1000, "{tls_after:?}");
    // nginx counts the TLS requests, Lynx only upstream: the difference is exactly those.
    let nginx_requests = after.0.requests - before.0.requests;
    let plain_requests = after.1.requests - before.1.requests;
    assert_eq!(nginx_requests, plain_requests + CONNECTIONS * REQUESTS);
    assert_eq!(
        after.0.accepts - before.0.accepts,
        after.1.accepts - before.1.accepts
    );
    let upstream =
        upstream_requests(&after.1, backend.addr) - upstream_requests(&before.1, backend.addr);
    assert_eq!(
        upstream,
        CONNECTIONS * REQUESTS,
        "TLS requests, counted upstream"
    );
    assert_eq!(backend.served() - served_before, CONNECTIONS * REQUESTS);
}

#[test]
fn counts_stay_exact_across_nginx_reloads_under_load() {
    if !privileged("counts_stay_exact_across_nginx_reloads_under_load") {
        return;
    }
    let backend = CountingBackend::start();
    // nginx in a cgroup of its own, as a service manager runs it: the kernel's first filter
    // (the cgroup) is the one that picks nginx out here.
    let cgroup = TestCgroup::create("nginx-reload");
    let nginx = Nginx::start_in("reload", &[backend.addr], &cgroup);
    let daemon = counting_daemon("nginx-reload", &nginx);
    let before = settled(&daemon, &nginx);
    let url = nginx.url("/");
    let load = std::thread::spawn(move || wrk(&url, 8, Duration::from_secs(4), true));
    // Each reload starts new workers, which must be counted from their first request, before
    // the daemon's next look at the processes.
    for _ in 0..3 {
        sleep(Duration::from_millis(1000));
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(nginx.master_pid() as i32, libc::SIGHUP) };
    }
    let totals = load.join().expect("the wrk thread");
    sleep(Duration::from_millis(300));
    let after = settled(&daemon, &nginx);
    eprintln!("wrk {} requests across 3 reloads", totals.requests);
    assert_client_side_exact("across reloads", &before, &after);
}

#[test]
fn a_server_on_nginx_port_in_another_network_namespace_is_not_nginx() {
    if !privileged("a_server_on_nginx_port_in_another_network_namespace_is_not_nginx") {
        return;
    }
    const FETCHES: u32 = 20;
    let backend = CountingBackend::start();
    // nginx's cgroup also holds a process in a network namespace of its own (as a container
    // below nginx's cgroup would be), serving on nginx's port there and fetched from there.
    let cgroup = TestCgroup::create("nginx-netns");
    let nginx = Nginx::start_in("netns", &[backend.addr], &cgroup);
    let daemon = counting_daemon("nginx-netns", &nginx);
    let before = settled(&daemon, &nginx);
    let script = format!(
        "ip link set lo up && busybox httpd -f -p 127.0.0.1:{port} -h /etc & sleep 0.5; \
         for i in $(seq 1 {FETCHES}); do \
         busybox wget -q -O /dev/null http://127.0.0.1:{port}/hostname || exit 1; done; kill $!",
        port = nginx.port
    );
    let mut other = cgroup.spawn(Command::new("unshare").args(["-n", "sh", "-c", &script]));
    let status = other
        .0
        .wait()
        .expect("wait for the other namespace's server");
    assert!(
        status.success(),
        "{FETCHES} fetches in the other namespace: {status}"
    );
    let after = settled(&daemon, &nginx);
    assert_client_side_exact("beside another namespace's server", &before, &after);
}
