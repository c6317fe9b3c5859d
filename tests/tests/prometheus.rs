//! The Prometheus endpoint against the snapshot it serves: `/metrics` passes `promtool check
//! metrics` (Debian package `prometheus`) and carries the figures of `/snapshot` taken at the
//! same moment, both from the daemon and from the server fed a real snapshot directly.
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    thread::sleep,
    time::{Duration, Instant},
};

use lynx::{
    model::Snapshot,
    sink::Sink,
    web::{WebOptions, WebServer},
};
use lynx_tests::{
    daemon::DaemonUnderTest,
    documented_example,
    lxd::{TestContainer, http_get},
    lynx_ok, privileged, promtool_check,
};

/// Where the daemon under test serves; off the default port, so a daemon the host runs does
/// not collide.
const LISTEN: &str = "127.0.0.1:19464";

#[test]
fn daemon_metrics_pass_promtool_and_match_its_snapshot() {
    if !privileged("daemon_metrics_pass_promtool_and_match_its_snapshot") {
        return;
    }
    let container = TestContainer::launch("prom");
    container.serve_http(8080);
    let daemon = DaemonUnderTest::start_with_prometheus("prom", "200ms", LISTEN);
    // Traffic, so that the network counters compared below are not all zero.
    http_get(container.ipv4(), 8080, "/");
    let name = container.name().to_owned();
    daemon.wait_for(
        "the container's traffic in the snapshot",
        Duration::from_secs(20),
        |s| {
            s.containers.iter().any(|c| {
                c.name == name
                    && c.kind == "lxd"
                    && c.status == "Running"
                    && c.network.as_ref().is_some_and(|n| n.tx_bytes > 0)
            })
        },
    );

    let addr: SocketAddr = LISTEN.parse().expect("a socket address");
    let (text, snapshot) = same_moment(addr, &|| daemon.log());
    promtool_check(&text);
    let metrics = parse_metrics(&text);
    check_against(&metrics, &snapshot);
    let labels = [("container", name.as_str()), ("kind", "lxd")];
    assert!(
        value(
            &metrics,
            "lynx_container_network_transmit_bytes_total",
            &labels
        )
        .is_some_and(|bytes| bytes > 0.0),
        "the test container's traffic is in /metrics:\n{text}"
    );
    assert!(
        value(&metrics, "lynx_container_memory_bytes", &labels).is_some(),
        "the test container's memory is in /metrics:\n{text}"
    );

    let (status, _, _) = fetch(addr, "/nothing", &|| daemon.log());
    assert_eq!(status, 404, "an unknown path");
}

#[test]
fn server_serves_a_real_snapshot_that_promtool_accepts() {
    if !privileged("server_serves_a_real_snapshot_that_promtool_accepts") {
        return;
    }
    let output = lynx_ok(&["snapshot", "--interval", "300ms"]);
    let snapshot: Snapshot =
        serde_json::from_str(&output).expect("lynx snapshot prints the document");
    let mut server = WebServer::start(WebOptions {
        listen: "127.0.0.1:0".parse().expect("an address"),
        allowed_hosts: vec![],
        max_connections: 64,
        timeout: Duration::from_secs(10),
        retry: Duration::from_secs(1),
        actions: false,
        login_file: None,
        lxd_sockets: Vec::new(),
        history_path: None,
    })
    .unwrap_or_else(|e| panic!("start the server: {e}"));
    server.publish(&snapshot);
    let addr = server.local_addr().expect("listening");

    let (text, served) = same_moment(addr, &String::new);
    assert_eq!(served, snapshot, "/snapshot is the published snapshot");
    promtool_check(&text);
    check_against(&parse_metrics(&text), &snapshot);
}

#[test]
fn groups_and_autoscalers_of_the_documented_example_pass_promtool() {
    if !privileged("groups_and_autoscalers_of_the_documented_example_pass_promtool") {
        return;
    }
    let snapshot: Snapshot =
        serde_json::from_value(documented_example()).expect("the example fits the schema");
    let text = lynx::sink::prometheus::render(&snapshot);
    promtool_check(&text);
    let metrics = parse_metrics(&text);
    let web = ("group", "web");
    for (status, count) in [("running", 2.0), ("frozen", 0.0), ("stopped", 0.0)] {
        assert_eq!(
            value(
                &metrics,
                "lynx_group_containers",
                &[web, ("status", status)]
            ),
            Some(count),
            "{status}"
        );
    }
    assert_eq!(
        value(&metrics, "lynx_group_upstream_servers", &[web]),
        Some(2.0)
    );
    assert_eq!(
        value(&metrics, "lynx_group_upstream_error", &[web]),
        Some(0.0)
    );
    let state = [web, ("state", "steady"), ("dry_run", "false")];
    assert_eq!(value(&metrics, "lynx_autoscaler_state", &state), Some(1.0));
    assert_eq!(
        value(&metrics, "lynx_autoscaler_cpu_ratio", &[web]),
        Some(0.3835)
    );
    let last = value(
        &metrics,
        "lynx_autoscaler_last_action_timestamp_seconds",
        &[web, ("direction", "up")],
    )
    .expect("the last action's time");
    assert!((last - unix_seconds("2026-11-22T04:21:58.512077061Z")).abs() < 1e-3);
    assert!(
        value(
            &metrics,
            "lynx_autoscaler_next_action_timestamp_seconds",
            &[web, ("direction", "down")]
        )
        .is_some()
    );
}

/// `/metrics` and `/snapshot` of one snapshot: fetched one after the other until both carry
/// the same timestamp (a new snapshot may land between the two requests).
fn same_moment(addr: SocketAddr, log: &dyn Fn() -> String) -> (String, Snapshot) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, content_type, metrics) = fetch(addr, "/metrics", log);
        assert_eq!(status, 200, "/metrics: {metrics}");
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "content type of /metrics: {content_type}"
        );
        let (status, content_type, body) = fetch(addr, "/snapshot", log);
        assert_eq!(status, 200, "/snapshot: {body}");
        assert_eq!(
            content_type, "application/json",
            "content type of /snapshot"
        );
        let snapshot: Snapshot = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/snapshot is not the document: {e}\n{body}"));
        let gauge = value(
            &parse_metrics(&metrics),
            "lynx_snapshot_timestamp_seconds",
            &[],
        )
        .unwrap_or_else(|| panic!("no lynx_snapshot_timestamp_seconds in:\n{metrics}"));
        let taken = unix_seconds(&snapshot.host.timestamp);
        // Snapshots are at least an interval (200 ms) apart.
        if (gauge - taken).abs() < 1e-3 {
            return (metrics, snapshot);
        }
        let last = format!("/metrics at {gauge}, /snapshot at {taken}");
        assert!(
            Instant::now() < deadline,
            "/metrics and /snapshot never showed the same snapshot in 30 s ({last}); log:\n{}",
            log()
        );
        sleep(Duration::from_millis(20));
    }
}

/// `GET path` from `addr`: status, content type and body. Retries while nothing listens yet.
fn fetch(addr: SocketAddr, path: &str, log: &dyn Fn() -> String) -> (u16, String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(stream) => break stream,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                sleep(Duration::from_millis(50));
            }
            Err(e) => panic!(
                "connect to {addr}: {e} (nothing serves [web] listen there); log:\n{}",
                log()
            ),
        }
    };
    let timeout = Some(Duration::from_secs(10));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .expect("set socket timeouts");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
        .unwrap_or_else(|e| panic!("send GET {path}: {e}"));
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .unwrap_or_else(|e| panic!("read the answer to GET {path}: {e}"));
    let response = String::from_utf8(response).expect("a UTF-8 answer");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    assert_eq!(length, body.len(), "Content-Length of GET {path}");
    let content_type = header("content-type").unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Samples by metric name and labels.
type Metrics = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// The samples of a text exposition (lynx writes no sample timestamps); comments skipped,
/// label values unescaped.
fn parse_metrics(text: &str) -> Metrics {
    let mut metrics = Metrics::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        // Label values may hold spaces; the value is after the last one.
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (name, parse_labels(labels, line))
            }
        };
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value {value:?} of {line:?}: {e}"));
        assert!(
            metrics.insert((name.to_owned(), labels), value).is_none(),
            "{line:?} repeats a series"
        );
    }
    metrics
}

/// `a="x",b="y\"z"` to a map, escapes (`\\`, `\"`, `\n`) undone.
fn parse_labels(text: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars();
    loop {
        let label: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if label.is_empty() {
            return labels;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "a quote after {label}= in {line:?}"
        );
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some(c) => value.push(c),
                None => panic!("unclosed label value in {line:?}"),
            }
        }
        labels.insert(label, value);
        match chars.next() {
            None => return labels,
            Some(',') => {}
            other => panic!("{other:?} after a label value in {line:?}"),
        }
    }
}

fn value(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    metrics.get(&(name.to_owned(), labels)).copied()
}

/// Every figure of `snapshot` that /metrics carries, in base units.
fn check_against(metrics: &Metrics, snapshot: &Snapshot) {
    let expect = |name: &str, labels: &[(&str, &str)], want: Option<f64>| {
        let got = value(metrics, name, labels);
        let close = match (got, want) {
            (Some(got), Some(want)) => (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            (got, want) => got == want,
        };
        assert!(
            close,
            "{name}{labels:?}: /metrics has {got:?}, the snapshot says {want:?}"
        );
    };
    let host = &snapshot.host;
    let mib = |n: u64| Some(n as f64 * 1024.0 * 1024.0);
    expect("lynx_host_cpus", &[], Some(f64::from(host.cpus)));
    expect("lynx_host_cpu_ratio", &[], Some(host.cpu_percent / 100.0));
    expect(
        "lynx_host_interval_seconds",
        &[],
        Some(host.interval_ms as f64 / 1000.0),
    );
    for (state, value) in [
        ("total", host.memory_total_mb),
        ("available", host.memory_available_mb),
        ("used", host.memory_used_mb),
        ("free", host.memory_free_mb),
    ] {
        expect("lynx_host_memory_bytes", &[("state", state)], mib(value));
    }
    for (i, name) in ["lynx_host_load1", "lynx_host_load5", "lynx_host_load15"]
        .into_iter()
        .enumerate()
    {
        expect(name, &[], Some(host.load_average[i]));
    }
    for (status, count) in [
        ("running", host.containers_running),
        ("stopped", host.containers_stopped),
        ("frozen", host.containers_frozen),
    ] {
        expect("lynx_containers", &[("status", status)], Some(count.into()));
    }
    expect(
        "lynx_lxd_available",
        &[],
        Some(f64::from(u8::from(host.lxd_available))),
    );
    expect(
        "lynx_collector_sample_seconds",
        &[],
        Some(snapshot.collector.sample_ms / 1000.0),
    );
    assert!(
        !snapshot.features.is_empty(),
        "the snapshot names its features"
    );
    for (family, feature) in &snapshot.features {
        let hooks = feature.hooks.join(",");
        expect(
            "lynx_feature_active",
            &[("family", family.name()), ("hooks", &hooks)],
            Some(f64::from(u8::from(feature.is_active()))),
        );
    }
    let drops = &snapshot.kernel_drops;
    for (map, count) in [
        ("cgroup_cpu", drops.cgroup_cpu_map_full),
        ("cgroup_net", drops.cgroup_net_map_full),
        ("cgroup_io", drops.cgroup_io_map_full),
        ("nginx_endpoints", drops.nginx_endpoints_full),
        ("nginx_flows", drops.nginx_flows_full),
    ] {
        expect(
            "lynx_kernel_drops_total",
            &[("map", map)],
            Some(count as f64),
        );
    }

    for c in &snapshot.containers {
        let labels = [("container", c.name.as_str()), ("kind", c.kind.as_str())];
        let int = |n: u64| Some(n as f64);
        expect(
            "lynx_container_up",
            &[
                ("container", &c.name),
                ("kind", &c.kind),
                ("status", &c.status),
            ],
            Some(1.0),
        );
        expect(
            "lynx_container_cpu_seconds_total",
            &labels,
            Some(c.cpu.ns as f64 / 1e9),
        );
        let memory = c.memory.as_ref();
        expect(
            "lynx_container_memory_bytes",
            &labels,
            memory.map(|m| m.used_bytes as f64),
        );
        expect(
            "lynx_container_memory_limit_bytes",
            &labels,
            memory.and_then(|m| m.limit_bytes).map(|n| n as f64),
        );
        expect(
            "lynx_container_memory_swap_bytes",
            &labels,
            memory.map(|m| m.swap_bytes as f64),
        );
        expect(
            "lynx_container_processes",
            &labels,
            c.processes.map(f64::from),
        );
        expect(
            "lynx_container_uptime_seconds",
            &labels,
            c.uptime_s.map(|s| s as f64),
        );
        let io = &c.block_io;
        expect(
            "lynx_container_block_read_bytes_total",
            &labels,
            int(io.read_bytes),
        );
        expect(
            "lynx_container_block_write_bytes_total",
            &labels,
            int(io.write_bytes),
        );
        expect(
            "lynx_container_block_read_ops_total",
            &labels,
            int(io.read_ops),
        );
        expect(
            "lynx_container_block_write_ops_total",
            &labels,
            int(io.write_ops),
        );
        // LXD's disk figures, per device; what LXD did not give has no series.
        for (device, disk) in c.disk.iter().flatten() {
            let labels = [
                ("container", c.name.as_str()),
                ("kind", c.kind.as_str()),
                ("device", device.as_str()),
            ];
            let figure = |n: Option<u64>| n.map(|n| n as f64);
            expect(
                "lynx_container_disk_used_bytes",
                &labels,
                figure(disk.used_bytes),
            );
            expect(
                "lynx_container_disk_limit_bytes",
                &labels,
                figure(disk.limit_bytes),
            );
            expect(
                "lynx_container_disk_free_bytes",
                &labels,
                figure(disk.free_bytes),
            );
            expect(
                "lynx_container_disk_nearly_full",
                &labels,
                Some(f64::from(u8::from(disk.nearly_full))),
            );
        }
        // Not counted (the host, services): no series.
        let net = c.network.as_ref();
        expect(
            "lynx_container_network_receive_bytes_total",
            &labels,
            net.and_then(|n| int(n.rx_bytes)),
        );
        expect(
            "lynx_container_network_transmit_bytes_total",
            &labels,
            net.and_then(|n| int(n.tx_bytes)),
        );
        expect(
            "lynx_container_network_receive_packets_total",
            &labels,
            net.and_then(|n| int(n.rx_packets)),
        );
        expect(
            "lynx_container_network_transmit_packets_total",
            &labels,
            net.and_then(|n| int(n.tx_packets)),
        );
    }
    // Nothing beyond the snapshot's containers.
    let listed = metrics
        .keys()
        .filter(|(name, _)| name == "lynx_container_up")
        .count();
    assert_eq!(
        listed,
        snapshot.containers.len(),
        "one lynx_container_up per container"
    );
}

/// Unix time of an RFC 3339 UTC timestamp (`2026-11-22T04:22:02.196581371Z`), computed here
/// independently of lynx's own parser.
fn unix_seconds(timestamp: &str) -> f64 {
    let bad = || panic!("{timestamp:?} is not an RFC 3339 UTC timestamp");
    let Some((date, time)) = timestamp.split_once('T') else {
        bad()
    };
    let Some(time) = time.strip_suffix('Z') else {
        bad()
    };
    let numbers = |text: &str, separator: char| -> Vec<i64> {
        text.split(separator)
            .map(|n| n.parse().unwrap_or_else(|_| bad()))
            .collect()
    };
    let (whole, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let (ymd, hms) = (numbers(date, '-'), numbers(whole, ':'));
    let [year, month, day] = ymd[..] else { bad() };
    let [hour, minute, second] = hms[..] else {
        bad()
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let fraction: f64 = format!("0.{fraction}").parse().unwrap_or_else(|_| bad());
    (days * 86_400 + hour * 3600 + minute * 60 + second) as f64 + fraction
}
