//! The Prometheus text exposition format 0.0.4 of a snapshot: what the daemon's HTTP server
//! ([`crate::web`]) answers `GET /metrics` with, rendered from the snapshot current when the
//! request arrives (`lynx_snapshot_timestamp_seconds` is the snapshot's `host.timestamp`, so
//! `/metrics` and `/snapshot` can be matched).
use std::fmt::{self, Write as _};

use super::history::parse_timestamp;
use crate::model::{Autoscaler, Container, Disk, Features, Group, Nginx, NginxEndpoint, Snapshot};

/// `Content-Type` of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The snapshot in the Prometheus text exposition format 0.0.4.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = Exposition::default();
    let host = &snapshot.host;

    if let Some((seconds, nanos)) = parse_timestamp(&host.timestamp) {
        out.family(
            "lynx_snapshot_timestamp_seconds",
            Type::Gauge,
            "When the snapshot's second sample was taken (host.timestamp), in Unix seconds.",
        );
        let value = Decimal::signed(seconds, nanos);
        out.sample("lynx_snapshot_timestamp_seconds", &[], value);
    }
    out.gauge(
        "lynx_host_interval_seconds",
        "Length of the interval the snapshot's rates are computed over.",
        Decimal::scaled(host.interval_ms, 3),
    );
    out.gauge("lynx_host_cpus", "Online CPUs.", host.cpus);
    out.gauge(
        "lynx_host_cpu_ratio",
        "Busy share of all CPUs over the interval (/proc/stat): 1 is every CPU busy.",
        Float(host.cpu_percent / 100.0),
    );
    out.family(
        "lynx_host_memory_bytes",
        Type::Gauge,
        "Host memory (/proc/meminfo): MemTotal, MemAvailable, MemFree, and total minus available as used.",
    );
    for (state, mib) in [
        ("total", host.memory_total_mb),
        ("available", host.memory_available_mb),
        ("used", host.memory_used_mb),
        ("free", host.memory_free_mb),
    ] {
        let bytes = mib.saturating_mul(1024 * 1024);
        out.sample("lynx_host_memory_bytes", &[("state", state)], bytes);
    }
    for (name, value, minutes) in [
        ("lynx_host_load1", host.load_average[0], "1"),
        ("lynx_host_load5", host.load_average[1], "5"),
        ("lynx_host_load15", host.load_average[2], "15"),
    ] {
        let help = format!("{minutes}-minute load average (/proc/loadavg).");
        out.gauge(name, &help, Float(value));
    }
    out.family(
        "lynx_containers",
        Type::Gauge,
        "Containers by status, the host entry not counted.",
    );
    for (status, count) in [
        ("running", host.containers_running),
        ("stopped", host.containers_stopped),
        ("frozen", host.containers_frozen),
    ] {
        out.sample("lynx_containers", &[("status", status)], count);
    }
    out.gauge(
        "lynx_lxd_available",
        "1 when LXD's latest poll answered; without it containers are recognised by cgroup only.",
        u8::from(host.lxd_available),
    );
    // Only on a host with a Docker Engine.
    if let Some(available) = host.docker_available {
        out.gauge(
            "lynx_docker_available",
            "1 when the Docker Engine answers; without it Docker containers are named by their id.",
            u8::from(available),
        );
    }

    let containers = &snapshot.containers;
    out.family(
        "lynx_container_up",
        Type::Gauge,
        "1 for each container in the snapshot (and the host entry), labelled with its status.",
    );
    for c in containers {
        let labels = [
            ("container", c.name.as_str()),
            ("kind", c.kind.as_str()),
            ("status", c.status.as_str()),
        ];
        out.sample("lynx_container_up", &labels, 1);
    }
    out.family(
        "lynx_container_cpu_seconds_total",
        Type::Counter,
        "CPU time of the container's tasks, counted in the kernel.",
    );
    for c in containers {
        let value = Decimal::scaled(c.cpu.ns, 9);
        out.sample("lynx_container_cpu_seconds_total", &labels(c), value);
    }
    type Optional = fn(&Container) -> Option<u64>;
    let gauges: [(&str, &str, Optional); 5] = [
        (
            "lynx_container_memory_bytes",
            "Memory in use by the container's cgroup, page cache included (memory.current).",
            |c| c.memory.as_ref().map(|m| m.used_bytes),
        ),
        (
            "lynx_container_memory_limit_bytes",
            "Memory limit of the container's cgroup (memory.max); absent when unlimited.",
            |c| c.memory.as_ref().and_then(|m| m.limit_bytes),
        ),
        (
            "lynx_container_memory_swap_bytes",
            "Swap used by the container's cgroup; 0 when not accounted.",
            |c| c.memory.as_ref().map(|m| m.swap_bytes),
        ),
        (
            "lynx_container_processes",
            "Processes in the container's cgroup subtree.",
            |c| c.processes.map(u64::from),
        ),
        (
            "lynx_container_uptime_seconds",
            "Time since the container's init process started.",
            |c| c.uptime_s,
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, Type::Gauge, help);
        for c in containers {
            if let Some(value) = value(c) {
                out.sample(name, &labels(c), value);
            }
        }
    }
    render_disks(&mut out, containers);
    // `None`: not counted for this container (network outside containers).
    type Counter = fn(&Container) -> Option<u64>;
    let counters: [(&str, &str, Counter); 8] = [
        (
            "lynx_container_block_read_bytes_total",
            "Bytes of block I/O reads the container's tasks submitted, counted in the kernel.",
            |c| Some(c.block_io.read_bytes),
        ),
        (
            "lynx_container_block_write_bytes_total",
            "Bytes of block I/O writes the container's tasks submitted (writeback is the host's).",
            |c| Some(c.block_io.write_bytes),
        ),
        (
            "lynx_container_block_read_ops_total",
            "Block I/O reads the container's tasks submitted.",
            |c| Some(c.block_io.read_ops),
        ),
        (
            "lynx_container_block_write_ops_total",
            "Block I/O writes the container's tasks submitted.",
            |c| Some(c.block_io.write_ops),
        ),
        (
            "lynx_container_network_receive_bytes_total",
            "Bytes delivered to the container's sockets, from the network header on.",
            |c| c.network.as_ref().map(|n| n.rx_bytes),
        ),
        (
            "lynx_container_network_transmit_bytes_total",
            "Bytes sent from the container's sockets, from the network header on.",
            |c| c.network.as_ref().map(|n| n.tx_bytes),
        ),
        (
            "lynx_container_network_receive_packets_total",
            "Packets delivered to the container's sockets.",
            |c| c.network.as_ref().map(|n| n.rx_packets),
        ),
        (
            "lynx_container_network_transmit_packets_total",
            "Packets sent from the container's sockets.",
            |c| c.network.as_ref().map(|n| n.tx_packets),
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, Type::Counter, help);
        for c in containers {
            if let Some(value) = value(c) {
                out.sample(name, &labels(c), value);
            }
        }
    }

    render_nginx(&mut out, &snapshot.nginx);

    let drops = &snapshot.kernel_drops;
    out.family(
        "lynx_kernel_drops_total",
        Type::Counter,
        "Events the kernel programs could not count because a map was full.",
    );
    for (map, count) in [
        ("cgroup_cpu", drops.cgroup_cpu_map_full),
        ("cgroup_net", drops.cgroup_net_map_full),
        ("cgroup_io", drops.cgroup_io_map_full),
        ("nginx_endpoints", drops.nginx_endpoints_full),
        ("nginx_flows", drops.nginx_flows_full),
    ] {
        out.sample("lynx_kernel_drops_total", &[("map", map)], count);
    }
    render_features(&mut out, &snapshot.features);
    out.gauge(
        "lynx_collector_sample_seconds",
        "Wall time lynx took to read the kernel maps, cgroupfs and procfs for this snapshot.",
        Float(snapshot.collector.sample_ms / 1000.0),
    );
    if !snapshot.groups.is_empty() {
        render_groups(&mut out, &snapshot.groups);
    }
    out.text
}

/// LXD's disk figures per container and device; a figure LXD did not give has no sample.
fn render_disks(out: &mut Exposition, containers: &[Container]) {
    type Figure = fn(&Disk) -> Option<u64>;
    let families: [(&str, &str, Figure); 4] = [
        (
            "lynx_container_disk_used_bytes",
            "Bytes the disk device's volume uses, as LXD measures it (polled every [disk] interval); absent where LXD measures nothing (a dir pool).",
            |d| d.used_bytes,
        ),
        (
            "lynx_container_disk_limit_bytes",
            "The disk device's size quota; absent without one.",
            |d| d.limit_bytes,
        ),
        (
            "lynx_container_disk_free_bytes",
            "What the container can still write on the device: the quota's rest, capped by the pool's free space, or the pool's free space without a quota.",
            |d| d.free_bytes,
        ),
        (
            "lynx_container_disk_nearly_full",
            "1 when the device's usage is at least [disk] full_fraction of its quota.",
            |d| Some(u64::from(d.nearly_full)),
        ),
    ];
    for (name, help, value) in families {
        out.family(name, Type::Gauge, help);
        for c in containers {
            for (device, disk) in c.disk.iter().flatten() {
                if let Some(value) = value(disk) {
                    let [container, kind] = labels(c);
                    out.sample(name, &[container, kind, ("device", device)], value);
                }
            }
        }
    }
}

/// Which counter families the kernel supports: 1 counted, 0 unavailable (the snapshot's
/// `features` object says why), with the hooks that count them.
fn render_features(out: &mut Exposition, features: &Features) {
    if features.is_empty() {
        return;
    }
    out.family(
        "lynx_feature_active",
        Type::Gauge,
        "1 when the kernel supports a counter family and Lynx counts it; 0 when it is unavailable and its counters read zero (the snapshot's features object says why).",
    );
    for (family, feature) in features {
        let hooks = feature.hooks.join(",");
        out.sample(
            "lynx_feature_active",
            &[("family", family.name()), ("hooks", &hooks)],
            u8::from(feature.is_active()),
        );
    }
}

/// nginx's counters per endpoint: `side` is `client` (a listening port) or `upstream` (an
/// address, port and, when one has the address, container).
fn render_nginx(out: &mut Exposition, nginx: &Nginx) {
    out.gauge(
        "lynx_nginx_up",
        "1 when the nginx named by [nginx] pid_file was found and is being counted.",
        u8::from(nginx.master_pid.is_some()),
    );
    let endpoints: Vec<(&str, &NginxEndpoint)> = nginx
        .listen
        .iter()
        .map(|e| ("client", e))
        .chain(nginx.upstreams.iter().map(|e| ("upstream", e)))
        .collect();
    type Value = fn(&NginxEndpoint) -> u64;
    let families: [(&str, Type, &str, Value); 6] = [
        (
            "lynx_nginx_connections_total",
            Type::Counter,
            "Connections nginx accepted on a port (client) or opened to an upstream.",
            |e| e.connections,
        ),
        (
            "lynx_nginx_active_connections",
            Type::Gauge,
            "Connections open now.",
            |e| e.active,
        ),
        (
            "lynx_nginx_requests_total",
            Type::Counter,
            "HTTP/1.x requests nginx received (client) or sent (upstream), counted in the kernel.",
            |e| e.requests,
        ),
        (
            "lynx_nginx_bad_requests_total",
            Type::Counter,
            "Requests nginx rejects and closes the connection for (malformed request line or body framing).",
            |e| e.bad_requests,
        ),
        (
            "lynx_nginx_receive_bytes_total",
            Type::Counter,
            "Bytes nginx read from these connections.",
            |e| e.bytes_in,
        ),
        (
            "lynx_nginx_transmit_bytes_total",
            Type::Counter,
            "Bytes nginx wrote to these connections.",
            |e| e.bytes_out,
        ),
    ];
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        for (side, endpoint) in &endpoints {
            let port = endpoint.port.to_string();
            let labels = [
                ("side", *side),
                ("address", endpoint.address.as_deref().unwrap_or("")),
                ("port", port.as_str()),
                ("container", endpoint.container.as_deref().unwrap_or("")),
            ];
            out.sample(name, &labels, value(endpoint));
        }
    }
}

/// The `[[groups]]`: members, upstream servers and the autoscalers.
fn render_groups(out: &mut Exposition, groups: &[Group]) {
    out.family(
        "lynx_group_containers",
        Type::Gauge,
        "Members of the group by LXD status.",
    );
    for g in groups {
        for (status, count) in [
            ("running", g.running),
            ("frozen", g.frozen),
            ("stopped", g.stopped),
        ] {
            let labels = [("group", g.name.as_str()), ("status", status)];
            out.sample("lynx_group_containers", &labels, count);
        }
    }
    type Value = fn(&Group) -> Option<u64>;
    let per_group: [(&str, &str, Value); 4] = [
        (
            "lynx_group_upstream_servers",
            "Servers Lynx puts in the group's nginx upstream; 0 means clients get 503 from the fallback.",
            |g| Some(g.servers.len() as u64),
        ),
        (
            "lynx_group_upstream_error",
            "1 when nginx rejected the last upstream file (it serves the previous one), else 0.",
            |g| Some(u64::from(g.upstream_error.is_some())),
        ),
        (
            "lynx_autoscaler_min_running",
            "The autoscaler's fewest running members.",
            |g| g.autoscaler.as_ref().map(|a| u64::from(a.min)),
        ),
        (
            "lynx_autoscaler_max_running",
            "The autoscaler's most running members.",
            |g| g.autoscaler.as_ref().map(|a| u64::from(a.max)),
        ),
    ];
    for (name, help, value) in per_group {
        out.family(name, Type::Gauge, help);
        for g in groups {
            if let Some(value) = value(g) {
                out.sample(name, &[("group", g.name.as_str())], value);
            }
        }
    }
    let autoscaled: Vec<(&str, &Autoscaler)> = groups
        .iter()
        .filter_map(|g| Some((g.name.as_str(), g.autoscaler.as_ref()?)))
        .collect();
    out.family(
        "lynx_autoscaler_state",
        Type::Gauge,
        "1 for the autoscaler's state (steady, scaling_up, draining, scaling_down, lxd_unavailable); dry_run says whether it only logs.",
    );
    for (group, a) in &autoscaled {
        let dry_run = if a.dry_run { "true" } else { "false" };
        let labels = [("group", *group), ("state", &a.state), ("dry_run", dry_run)];
        out.sample("lynx_autoscaler_state", &labels, 1);
    }
    out.family(
        "lynx_autoscaler_cpu_ratio",
        Type::Gauge,
        "Mean CPU of the running members over the autoscaler's window: 1 is one full CPU.",
    );
    for (group, a) in &autoscaled {
        if let Some(percent) = a.cpu_percent_avg {
            let labels = [("group", *group)];
            out.sample("lynx_autoscaler_cpu_ratio", &labels, Float(percent / 100.0));
        }
    }
    out.family(
        "lynx_autoscaler_last_action_timestamp_seconds",
        Type::Gauge,
        "When the autoscaler last decided a scale action, in Unix seconds, with its direction.",
    );
    for (group, a) in &autoscaled {
        let Some(action) = &a.last_action else {
            continue;
        };
        if let Some((seconds, nanos)) = parse_timestamp(&action.at) {
            let labels = [("group", *group), ("direction", action.direction.as_str())];
            let value = Decimal::signed(seconds, nanos);
            out.sample(
                "lynx_autoscaler_last_action_timestamp_seconds",
                &labels,
                value,
            );
        }
    }
    out.family(
        "lynx_autoscaler_next_action_timestamp_seconds",
        Type::Gauge,
        "The earliest the next scale action in each direction can come, in Unix seconds; absent when none can.",
    );
    for (group, a) in &autoscaled {
        for (direction, at) in [("up", &a.next_scale_up_at), ("down", &a.next_scale_down_at)] {
            if let Some((seconds, nanos)) = at.as_deref().and_then(parse_timestamp) {
                let labels = [("group", *group), ("direction", direction)];
                let value = Decimal::signed(seconds, nanos);
                out.sample(
                    "lynx_autoscaler_next_action_timestamp_seconds",
                    &labels,
                    value,
                );
            }
        }
    }
}

fn labels(container: &Container) -> [(&'static str, &str); 2] {
    [
        ("container", container.name.as_str()),
        ("kind", container.kind.as_str()),
    ]
}

#[derive(Clone, Copy)]
enum Type {
    Gauge,
    Counter,
}

/// The exposition being written. Writing to a `String` cannot fail, hence the ignored
/// `fmt::Result`s.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family, whose samples must follow.
    fn family(&mut self, name: &str, kind: Type, help: &str) {
        let kind = match kind {
            Type::Gauge => "gauge",
            Type::Counter => "counter",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_label_value(value, &mut self.text);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A gauge family of one unlabelled sample.
    fn gauge(&mut self, name: &str, help: &str, value: impl fmt::Display) {
        self.family(name, Type::Gauge, help);
        self.sample(name, &[], value);
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and newline only.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as the format spells it: `NaN`, `+Inf`, `-Inf`, else Rust's shortest exact form.
struct Float(f64);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

/// An exact decimal `whole.fraction` (no float rounding: nanoseconds stay exact), trailing
/// zeros of the fraction dropped.
struct Decimal {
    negative: bool,
    whole: u64,
    fraction: u64,
    digits: u32,
}

impl Decimal {
    /// `units` of 10^-`digits`.
    fn scaled(units: u64, digits: u32) -> Self {
        let scale = 10u64.pow(digits);
        Self {
            negative: false,
            whole: units / scale,
            fraction: units % scale,
            digits,
        }
    }

    /// `seconds` + `nanos` / 10^9, for a time that may lie before 1970.
    fn signed(seconds: i64, nanos: u32) -> Self {
        let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
        let magnitude = total.unsigned_abs();
        Self {
            negative: total < 0,
            whole: u64::try_from(magnitude / 1_000_000_000).unwrap_or(u64::MAX),
            fraction: (magnitude % 1_000_000_000) as u64,
            digits: 9,
        }
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        write!(f, "{}", self.whole)?;
        if self.fraction == 0 {
            return Ok(());
        }
        let fraction = format!("{:0width$}", self.fraction, width = self.digits as usize);
        write!(f, ".{}", fraction.trim_end_matches('0'))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{BlockIo, Container, Cpu, Disk, Family, Feature, Memory, Network, fixtures};

    /// A snapshot with a container, the host, nginx and a group: what [`FIXTURE_METRICS`]
    /// renders.
    pub(crate) fn fixture() -> Snapshot {
        let web1 = Container {
            pid: Some(12990),
            ipv4: vec!["10.177.42.62".into()],
            image: Some("Lynx test busybox".into()),
            created_at: Some("2026-11-22T04:21:56.576667384Z".into()),
            last_used_at: Some("2026-11-22T04:21:56.760705543Z".into()),
            uptime_s: Some(5),
            cgroup: Some("/lxc.payload.web1".into()),
            processes: Some(4),
            cpu: Cpu {
                ns: 767_759_602,
                percent: 76.7,
            },
            memory: Some(Memory {
                used_bytes: 1_064_960,
                limit_bytes: Some(536_870_912),
                percent_of_host: 0.0,
                swap_bytes: 0,
            }),
            block_io: BlockIo {
                read_bytes: 4096,
                write_bytes: 8192,
                read_ops: 1,
                write_ops: 2,
                ..BlockIo::default()
            },
            network: Some(Network {
                rx_bytes: 1500,
                tx_bytes: 3000,
                rx_packets: 10,
                tx_packets: 20,
                ..Network::default()
            }),
            disk: Some(
                [
                    (
                        "root".to_owned(),
                        Disk {
                            path: "/".into(),
                            pool: Some("fast".into()),
                            used_bytes: Some(61_000_000),
                            limit_bytes: Some(67_108_864),
                            free_bytes: Some(6_108_864),
                            nearly_full: true,
                            reason: None,
                        },
                    ),
                    (
                        "logs".to_owned(),
                        Disk {
                            path: "/var/log".into(),
                            pool: Some("default".into()),
                            free_bytes: Some(9_000_000_000),
                            reason: Some("pool default is a dir pool".into()),
                            ..Disk::default()
                        },
                    ),
                ]
                .into(),
            ),
            ..fixtures::container("web1", "lxd", "Running")
        };
        let host = Container {
            cpu: Cpu {
                ns: 28_000_000_000,
                percent: 2.36,
            },
            ..fixtures::container("host", "host", "Running")
        };
        let mut snapshot = fixtures::snapshot("2026-11-22T04:22:02.196581371Z", vec![web1, host]);
        snapshot.kernel_drops.cgroup_net_map_full = 3;
        snapshot.features.insert(
            Family::BlockIo,
            Feature::unavailable(
                &["tp_btf/block_bio_queue"],
                "missing kernel feature: tracepoint block_bio_queue (kernel 5.4.0)".into(),
            ),
        );
        snapshot.nginx = Nginx {
            master_pid: Some(900),
            listen: vec![NginxEndpoint {
                address: None,
                container: None,
                connections: 40,
                ..fixtures::upstream("", "", 12.5, 3)
            }],
            upstreams: vec![fixtures::upstream("web1", "10.177.42.62", 12.5, 3)],
            ..Nginx::default()
        };
        snapshot
    }

    pub(crate) const FIXTURE_METRICS: &str = r#"# HELP lynx_snapshot_timestamp_seconds When the snapshot's second sample was taken (host.timestamp), in Unix seconds.
# TYPE lynx_snapshot_timestamp_seconds gauge
lynx_snapshot_timestamp_seconds 1795321322.196581371
# HELP lynx_host_interval_seconds Length of the interval the snapshot's rates are computed over.
# TYPE lynx_host_interval_seconds gauge
lynx_host_interval_seconds 1
# HELP lynx_host_cpus Online CPUs.
# TYPE lynx_host_cpus gauge
lynx_host_cpus 2
# HELP lynx_host_cpu_ratio Busy share of all CPUs over the interval (/proc/stat): 1 is every CPU busy.
# TYPE lynx_host_cpu_ratio gauge
lynx_host_cpu_ratio 0.5
# HELP lynx_host_memory_bytes Host memory (/proc/meminfo): MemTotal, MemAvailable, MemFree, and total minus available as used.
# TYPE lynx_host_memory_bytes gauge
lynx_host_memory_bytes{state="total"} 25275924480
lynx_host_memory_bytes{state="available"} 24477958144
lynx_host_memory_bytes{state="used"} 796917760
lynx_host_memory_bytes{state="free"} 23011000320
# HELP lynx_host_load1 1-minute load average (/proc/loadavg).
# TYPE lynx_host_load1 gauge
lynx_host_load1 0.59
# HELP lynx_host_load5 5-minute load average (/proc/loadavg).
# TYPE lynx_host_load5 gauge
lynx_host_load5 0.87
# HELP lynx_host_load15 15-minute load average (/proc/loadavg).
# TYPE lynx_host_load15 gauge
lynx_host_load15 0.81
# HELP lynx_containers Containers by status, the host entry not counted.
# TYPE lynx_containers gauge
lynx_containers{status="running"} 1
lynx_containers{status="stopped"} 0
lynx_containers{status="frozen"} 0
# HELP lynx_lxd_available 1 when LXD's latest poll answered; without it containers are recognised by cgroup only.
# TYPE lynx_lxd_available gauge
lynx_lxd_available 1
# HELP lynx_container_up 1 for each container in the snapshot (and the host entry), labelled with its status.
# TYPE lynx_container_up gauge
lynx_container_up{container="web1",kind="lxd",status="Running"} 1
lynx_container_up{container="host",kind="host",status="Running"} 1
# HELP lynx_container_cpu_seconds_total CPU time of the container's tasks, counted in the kernel.
# TYPE lynx_container_cpu_seconds_total counter
lynx_container_cpu_seconds_total{container="web1",kind="lxd"} 0.767759602
lynx_container_cpu_seconds_total{container="host",kind="host"} 28
# HELP lynx_container_memory_bytes Memory in use by the container's cgroup, page cache included (memory.current).
# TYPE lynx_container_memory_bytes gauge
lynx_container_memory_bytes{container="web1",kind="lxd"} 1064960
# HELP lynx_container_memory_limit_bytes Memory limit of the container's cgroup (memory.max); absent when unlimited.
# TYPE lynx_container_memory_limit_bytes gauge
lynx_container_memory_limit_bytes{container="web1",kind="lxd"} 536870912
# HELP lynx_container_memory_swap_bytes Swap used by the container's cgroup; 0 when not accounted.
# TYPE lynx_container_memory_swap_bytes gauge
lynx_container_memory_swap_bytes{container="web1",kind="lxd"} 0
# HELP lynx_container_processes Processes in the container's cgroup subtree.
# TYPE lynx_container_processes gauge
lynx_container_processes{container="web1",kind="lxd"} 4
# HELP lynx_container_uptime_seconds Time since the container's init process started.
# TYPE lynx_container_uptime_seconds gauge
lynx_container_uptime_seconds{container="web1",kind="lxd"} 5
# HELP lynx_container_disk_used_bytes Bytes the disk device's volume uses, as LXD measures it (polled every [disk] interval); absent where LXD measures nothing (a dir pool).
# TYPE lynx_container_disk_used_bytes gauge
lynx_container_disk_used_bytes{container="web1",kind="lxd",device="root"} 61000000
# HELP lynx_container_disk_limit_bytes The disk device's size quota; absent without one.
# TYPE lynx_container_disk_limit_bytes gauge
lynx_container_disk_limit_bytes{container="web1",kind="lxd",device="root"} 67108864
# HELP lynx_container_disk_free_bytes What the container can still write on the device: the quota's rest, capped by the pool's free space, or the pool's free space without a quota.
# TYPE lynx_container_disk_free_bytes gauge
lynx_container_disk_free_bytes{container="web1",kind="lxd",device="logs"} 9000000000
lynx_container_disk_free_bytes{container="web1",kind="lxd",device="root"} 6108864
# HELP lynx_container_disk_nearly_full 1 when the device's usage is at least [disk] full_fraction of its quota.
# TYPE lynx_container_disk_nearly_full gauge
lynx_container_disk_nearly_full{container="web1",kind="lxd",device="logs"} 0
lynx_container_disk_nearly_full{container="web1",kind="lxd",device="root"} 1
# HELP lynx_container_block_read_bytes_total Bytes of block I/O reads the container's tasks submitted, counted in the kernel.
# TYPE lynx_container_block_read_bytes_total counter
lynx_container_block_read_bytes_total{container="web1",kind="lxd"} 4096
lynx_container_block_read_bytes_total{container="host",kind="host"} 0
# HELP lynx_container_block_write_bytes_total Bytes of block I/O writes the container's tasks submitted (writeback is the host's).
# TYPE lynx_container_block_write_bytes_total counter
lynx_container_block_write_bytes_total{container="web1",kind="lxd"} 8192
lynx_container_block_write_bytes_total{container="host",kind="host"} 0
# HELP lynx_container_block_read_ops_total Block I/O reads the container's tasks submitted.
# TYPE lynx_container_block_read_ops_total counter
lynx_container_block_read_ops_total{container="web1",kind="lxd"} 1
lynx_container_block_read_ops_total{container="host",kind="host"} 0
# HELP lynx_container_block_write_ops_total Block I/O writes the container's tasks submitted.
# TYPE lynx_container_block_write_ops_total counter
lynx_container_block_write_ops_total{container="web1",kind="lxd"} 2
lynx_container_block_write_ops_total{container="host",kind="host"} 0
# HELP lynx_container_network_receive_bytes_total Bytes delivered to the container's sockets, from the network header on.
# TYPE lynx_container_network_receive_bytes_total counter
lynx_container_network_receive_bytes_total{container="web1",kind="lxd"} 1500
lynx_container_network_receive_bytes_total{container="host",kind="host"} 0
# HELP lynx_container_network_transmit_bytes_total Bytes sent from the container's sockets, from the network header on.
# TYPE lynx_container_network_transmit_bytes_total counter
lynx_container_network_transmit_bytes_total{container="web1",kind="lxd"} 3000
lynx_container_network_transmit_bytes_total{container="host",kind="host"} 0
# HELP lynx_container_network_receive_packets_total Packets delivered to the container's sockets.
# TYPE lynx_container_network_receive_packets_total counter
lynx_container_network_receive_packets_total{container="web1",kind="lxd"} 10
lynx_container_network_receive_packets_total{container="host",kind="host"} 0
# HELP lynx_container_network_transmit_packets_total Packets sent from the container's sockets.
# TYPE lynx_container_network_transmit_packets_total counter
lynx_container_network_transmit_packets_total{container="web1",kind="lxd"} 20
lynx_container_network_transmit_packets_total{container="host",kind="host"} 0
# HELP lynx_nginx_up 1 when the nginx named by [nginx] pid_file was found and is being counted.
# TYPE lynx_nginx_up gauge
lynx_nginx_up 1
# HELP lynx_nginx_connections_total Connections nginx accepted on a port (client) or opened to an upstream.
# TYPE lynx_nginx_connections_total counter
lynx_nginx_connections_total{side="client",address="",port="80",container=""} 40
lynx_nginx_connections_total{side="upstream",address="10.177.42.62",port="80",container="web1"} 3
# HELP lynx_nginx_active_connections Connections open now.
# TYPE lynx_nginx_active_connections gauge
lynx_nginx_active_connections{side="client",address="",port="80",container=""} 3
lynx_nginx_active_connections{side="upstream",address="10.177.42.62",port="80",container="web1"} 3
# HELP lynx_nginx_requests_total HTTP/1.x requests nginx received (client) or sent (upstream), counted in the kernel.
# TYPE lynx_nginx_requests_total counter
lynx_nginx_requests_total{side="client",address="",port="80",container=""} 0
lynx_nginx_requests_total{side="upstream",address="10.177.42.62",port="80",container="web1"} 0
# HELP lynx_nginx_bad_requests_total Requests nginx rejects and closes the connection for (malformed request line or body framing).
# TYPE lynx_nginx_bad_requests_total counter
lynx_nginx_bad_requests_total{side="client",address="",port="80",container=""} 0
lynx_nginx_bad_requests_total{side="upstream",address="10.177.42.62",port="80",container="web1"} 0
# HELP lynx_nginx_receive_bytes_total Bytes nginx read from these connections.
# TYPE lynx_nginx_receive_bytes_total counter
lynx_nginx_receive_bytes_total{side="client",address="",port="80",container=""} 0
lynx_nginx_receive_bytes_total{side="upstream",address="10.177.42.62",port="80",container="web1"} 0
# HELP lynx_nginx_transmit_bytes_total Bytes nginx wrote to these connections.
# TYPE lynx_nginx_transmit_bytes_total counter
lynx_nginx_transmit_bytes_total{side="client",address="",port="80",container=""} 0
lynx_nginx_transmit_bytes_total{side="upstream",address="10.177.42.62",port="80",container="web1"} 0
# HELP lynx_kernel_drops_total Events the kernel programs could not count because a map was full.
# TYPE lynx_kernel_drops_total counter
lynx_kernel_drops_total{map="cgroup_cpu"} 0
lynx_kernel_drops_total{map="cgroup_net"} 3
lynx_kernel_drops_total{map="cgroup_io"} 0
lynx_kernel_drops_total{map="nginx_endpoints"} 0
lynx_kernel_drops_total{map="nginx_flows"} 0
# HELP lynx_feature_active 1 when the kernel supports a counter family and Lynx counts it; 0 when it is unavailable and its counters read zero (the snapshot's features object says why).
# TYPE lynx_feature_active gauge
lynx_feature_active{family="cpu",hooks="tp_btf/sched_switch,perf_event/cpu-clock"} 1
lynx_feature_active{family="block_io",hooks="tp_btf/block_bio_queue"} 0
lynx_feature_active{family="network",hooks="cgroup_skb/ingress,cgroup_skb/egress"} 1
lynx_feature_active{family="nginx_connections",hooks="sock_ops,cgroup/sock_release,tp_btf/sched_process_fork"} 1
lynx_feature_active{family="nginx_requests",hooks="tp_btf/sock_recv_length,tp_btf/sock_send_length"} 1
# HELP lynx_collector_sample_seconds Wall time lynx took to read the kernel maps, cgroupfs and procfs for this snapshot.
# TYPE lynx_collector_sample_seconds gauge
lynx_collector_sample_seconds 0.00087
"#;

    #[test]
    fn renders_the_fixture() {
        let rendered = render(&fixture());
        for (line, (got, want)) in rendered.lines().zip(FIXTURE_METRICS.lines()).enumerate() {
            assert_eq!(got, want, "line {}", line + 1);
        }
        assert_eq!(rendered, FIXTURE_METRICS, "whole exposition");
    }

    #[test]
    fn escapes_label_values() {
        let mut out = String::new();
        escape_label_value("a\\b\"c\nd€", &mut out);
        assert_eq!(out, r#"a\\b\"c\nd€"#);

        let mut snapshot = fixture();
        snapshot.containers[0].name = "we\"b\\1\n".into();
        let rendered = render(&snapshot);
        assert!(
            rendered.contains(
                "lynx_container_cpu_seconds_total{container=\"we\\\"b\\\\1\\n\",kind=\"lxd\"} 0.767759602\n"
            ),
            "an escaped name in:\n{rendered}"
        );
        assert_eq!(
            rendered.lines().count(),
            FIXTURE_METRICS.lines().count(),
            "a newline in a name adds no line"
        );
    }

    #[test]
    fn formats_numbers_exactly() {
        assert_eq!(Decimal::scaled(767_759_602, 9).to_string(), "0.767759602");
        assert_eq!(Decimal::scaled(1_000_000_000, 9).to_string(), "1");
        assert_eq!(Decimal::scaled(1_500_000_000, 9).to_string(), "1.5");
        assert_eq!(
            Decimal::scaled(u64::MAX, 9).to_string(),
            "18446744073.709551615"
        );
        assert_eq!(Decimal::scaled(250, 3).to_string(), "0.25");
        assert_eq!(Decimal::signed(-1, 500_000_000).to_string(), "-0.5");
        assert_eq!(Decimal::signed(-2, 0).to_string(), "-2");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(1e-7).to_string(), "0.0000001");
    }
}
