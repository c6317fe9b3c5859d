//! The Prometheus endpoint: `GET /metrics` in the text exposition format 0.0.4 and
//! `GET /snapshot` (the JSON document), both from the latest snapshot, served by a small
//! HTTP/1.1 server on a thread of its own.
//!
//! [`PrometheusServer::publish`] only swaps in the new snapshot; a request renders what it
//! asks for from the snapshot current when it arrives, so `/metrics` and `/snapshot` fetched
//! within one interval describe the same moment (`lynx_snapshot_timestamp_seconds` is the
//! snapshot's `host.timestamp`). Connections are answered one at a time and closed: a
//! scraper asks once per scrape interval, and each answer takes well under a millisecond.
use std::{
    fmt::{self, Write as _},
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use super::{Sink, history::parse_timestamp};
use crate::model::{Autoscaler, Container, Group, Nginx, NginxEndpoint, Snapshot};

/// `Content-Type` of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write to a client that does not read may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head read; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8192;
/// How often the server thread looks at its stop flag while no client connects.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Errors of starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: io::Error },
    #[error("cannot start the Prometheus server thread for {address}: {source}")]
    Thread {
        address: SocketAddr,
        source: io::Error,
    },
}

/// The latest snapshot, shared with the server thread; `None` until the first one.
type Latest = Arc<Mutex<Option<Arc<Snapshot>>>>;

/// The endpoint. Dropping it stops and joins its thread (within [`STOP_POLL`], or once the
/// client being answered is done).
pub struct PrometheusServer {
    latest: Latest,
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PrometheusServer {
    /// Listens on `listen` (`host:port`; port 0 picks a free one) and starts serving.
    pub fn start(listen: &str) -> Result<Self, PrometheusError> {
        let listen_error = |source| PrometheusError::Listen {
            address: listen.to_owned(),
            source,
        };
        let listener = TcpListener::bind(listen).map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        // Non-blocking so that a readiness the poll reported but another took cannot hang
        // the accept, and the stop flag is always seen.
        listener.set_nonblocking(true).map_err(listen_error)?;
        let latest: Latest = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name("lynx-prometheus".into())
            .spawn({
                let (latest, stop) = (latest.clone(), stop.clone());
                move || serve(&listener, &latest, &stop)
            })
            .map_err(|source| PrometheusError::Thread {
                address: local_addr,
                source,
            })?;
        tracing::info!("serving Prometheus metrics on http://{local_addr}/metrics");
        Ok(Self {
            latest,
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Sink for PrometheusServer {
    fn publish(&mut self, snapshot: &Snapshot) {
        let snapshot = Arc::new(snapshot.clone());
        // A poisoned lock only means a request thread panicked mid-read: the slot is intact.
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("Prometheus server thread on {} panicked", self.local_addr);
        }
    }
}

fn serve(listener: &TcpListener, latest: &Latest, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(listener, STOP_POLL) {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(error) = answer(stream, latest) {
                    tracing::debug!("Prometheus endpoint: client {peer}: {error}");
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => {
                // Out of file descriptors and the like: say so, and do not spin.
                tracing::warn!("Prometheus endpoint: cannot accept a connection: {error}");
                thread::sleep(STOP_POLL);
            }
        }
    }
}

/// Waits up to `timeout` for a connection to accept.
fn wait_readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fd` is one valid pollfd that outlives the call.
    unsafe { libc::poll(&mut fd, 1, millis) > 0 }
}

/// One response.
struct Response {
    status: &'static str,
    content_type: &'static str,
    extra_headers: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: &'static str, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            extra_headers: "",
            body: body.as_bytes().to_vec(),
        }
    }
}

fn answer(mut stream: TcpStream, latest: &Latest) -> io::Result<()> {
    // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux; made sure anyway,
    // as the timeouts below need blocking mode.
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (response, head_only) = match read_head(&mut stream)? {
        Head::Complete(head) => route(&head, latest),
        Head::TooLarge => (
            Response::text(
                "431 Request Header Fields Too Large",
                "request head too large\n",
            ),
            false,
        ),
        // The client left or stalled: nobody to answer.
        Head::Incomplete => return Ok(()),
    };
    let mut message = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        response.extra_headers
    )
    .into_bytes();
    if !head_only {
        message.extend_from_slice(&response.body);
    }
    stream.write_all(&message)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)
}

enum Head {
    Complete(String),
    TooLarge,
    Incomplete,
}

/// Reads up to the blank line that ends the request head, within [`REQUEST_TIMEOUT`] in all.
fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0; 1024];
    loop {
        if let Some(end) = find_head_end(&head) {
            head.truncate(end);
            return Ok(Head::Complete(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Head::Incomplete);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(Head::Incomplete),
            Ok(n) => head.extend_from_slice(&buffer[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Head::Incomplete);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// Where the head ends: at `\r\n\r\n`, or `\n\n` from a lax client.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The response to a request head, and whether only its head is wanted (`HEAD`).
fn route(head: &str, latest: &Latest) -> (Response, bool) {
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Response::text("400 Bad Request", "bad request\n"), false);
    };
    if !version.starts_with("HTTP/1.") {
        return (
            Response::text("505 HTTP Version Not Supported", "HTTP/1.x only\n"),
            false,
        );
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut response = Response::text("405 Method Not Allowed", "GET or HEAD only\n");
            response.extra_headers = "Allow: GET, HEAD\r\n";
            return (response, false);
        }
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !matches!(path, "/metrics" | "/snapshot") {
        return (
            Response::text("404 Not Found", "not found: try /metrics or /snapshot\n"),
            head_only,
        );
    }
    // Cloned out so that the lock is not held while rendering.
    let snapshot = latest
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(snapshot) = snapshot else {
        let mut response = Response::text("503 Service Unavailable", "no snapshot yet\n");
        response.extra_headers = "Retry-After: 1\r\n";
        return (response, head_only);
    };
    let response = if path == "/metrics" {
        Response {
            status: "200 OK",
            content_type: METRICS_CONTENT_TYPE,
            extra_headers: "",
            body: render(&snapshot).into_bytes(),
        }
    } else {
        match serde_json::to_vec_pretty(&*snapshot) {
            Ok(mut body) => {
                body.push(b'\n');
                Response {
                    status: "200 OK",
                    content_type: "application/json",
                    extra_headers: "",
                    body,
                }
            }
            Err(error) => {
                tracing::warn!("Prometheus endpoint: cannot serialise the snapshot: {error}");
                Response::text(
                    "500 Internal Server Error",
                    "cannot serialise the snapshot\n",
                )
            }
        }
    };
    (response, head_only)
}

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
mod tests {
    use std::net::Shutdown;

    use super::*;
    use crate::model::{BlockIo, Container, Cpu, Memory, Network, fixtures};

    fn fixture() -> Snapshot {
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

    const FIXTURE_METRICS: &str = r#"# HELP lynx_snapshot_timestamp_seconds When the snapshot's second sample was taken (host.timestamp), in Unix seconds.
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

    /// Sends `request` and returns the status line, the headers (lowercased names) and body.
    fn exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
        let mut stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        stream.write_all(request).expect("send the request");
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .expect("read the response to its end");
        let end = find_head_end(&response).unwrap_or_else(|| {
            panic!(
                "no head in the response: {:?}",
                String::from_utf8_lossy(&response)
            )
        });
        let head = String::from_utf8(response[..end].to_vec()).expect("an ASCII head");
        let body = response[end + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status = lines.next().expect("a status line").to_owned();
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("header line {line:?}"));
                (name.to_ascii_lowercase(), value.to_owned())
            })
            .collect();
        (status, headers, body)
    }

    fn get(addr: SocketAddr, path: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: lynx-test\r\n\r\n")
                .as_bytes(),
        )
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
    }

    fn start() -> PrometheusServer {
        PrometheusServer::start("127.0.0.1:0").unwrap_or_else(|e| panic!("start the server: {e}"))
    }

    #[test]
    fn serves_metrics_and_snapshot_of_the_latest_publish() {
        let mut server = start();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0, "a port was chosen");

        let (status, headers, body) = get(addr, "/metrics");
        assert_eq!(
            status, "HTTP/1.1 503 Service Unavailable",
            "before any snapshot"
        );
        assert_eq!(body, b"no snapshot yet\n");
        assert_eq!(header(&headers, "retry-after"), "1");
        let (status, ..) = get(addr, "/snapshot");
        assert_eq!(
            status, "HTTP/1.1 503 Service Unavailable",
            "before any snapshot"
        );

        let snapshot = fixture();
        server.publish(&snapshot);
        let (status, headers, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "/metrics");
        assert!(
            header(&headers, "content-type").starts_with("text/plain; version=0.0.4"),
            "content type of /metrics: {headers:?}"
        );
        assert_eq!(header(&headers, "content-length"), body.len().to_string());
        assert_eq!(header(&headers, "connection"), "close");
        assert_eq!(
            String::from_utf8(body).expect("UTF-8 metrics"),
            FIXTURE_METRICS,
            "/metrics renders the published snapshot"
        );

        let (status, headers, body) = get(addr, "/snapshot?pretty=1");
        assert_eq!(status, "HTTP/1.1 200 OK", "/snapshot");
        assert_eq!(header(&headers, "content-type"), "application/json");
        assert_eq!(header(&headers, "content-length"), body.len().to_string());
        let served: Snapshot = serde_json::from_slice(&body).expect("/snapshot is the document");
        assert_eq!(served, snapshot, "/snapshot is the published snapshot");

        let mut newer = fixture();
        newer.host.timestamp = "2026-11-22T04:22:03Z".into();
        server.publish(&newer);
        let (_, _, body) = get(addr, "/metrics");
        assert!(
            String::from_utf8_lossy(&body)
                .contains("\nlynx_snapshot_timestamp_seconds 1795321323\n"),
            "the newer snapshot replaced the old one"
        );
    }

    #[test]
    fn answers_other_requests_with_errors() {
        let mut server = start();
        let addr = server.local_addr();
        server.publish(&fixture());

        let (status, _, body) = get(addr, "/");
        assert_eq!(status, "HTTP/1.1 404 Not Found", "/");
        assert_eq!(body, b"not found: try /metrics or /snapshot\n");
        let (status, ..) = get(addr, "/metrics/x");
        assert_eq!(status, "HTTP/1.1 404 Not Found", "/metrics/x");

        let (status, headers, _) = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed", "POST");
        assert_eq!(header(&headers, "allow"), "GET, HEAD");

        let (status, headers, body) = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK", "HEAD");
        assert_eq!(
            header(&headers, "content-length"),
            FIXTURE_METRICS.len().to_string(),
            "HEAD's length is GET's"
        );
        assert!(body.is_empty(), "HEAD has no body");

        let (status, ..) = exchange(addr, b"GET /metrics HTTP/1.0\n\n");
        assert_eq!(status, "HTTP/1.1 200 OK", "HTTP/1.0 with bare newlines");

        let (status, ..) = exchange(addr, b"hello\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "garbage");

        let (status, ..) = exchange(addr, b"GET /metrics SPDY/3\r\n\r\n");
        assert_eq!(
            status, "HTTP/1.1 505 HTTP Version Not Supported",
            "not HTTP/1"
        );

        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 2 * MAX_HEAD));
        let (status, ..) = exchange(addr, &huge);
        assert_eq!(
            status, "HTTP/1.1 431 Request Header Fields Too Large",
            "an endless head"
        );
    }

    #[test]
    fn a_client_that_leaves_early_does_not_stop_the_server() {
        let mut server = start();
        let addr = server.local_addr();
        server.publish(&fixture());
        let stream = TcpStream::connect(addr).expect("connect");
        stream.shutdown(Shutdown::Both).expect("hang up");
        drop(stream);
        let (status, ..) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "served after a client hung up");
    }

    #[test]
    fn drop_stops_the_server_and_frees_the_port() {
        let server = start();
        let addr = server.local_addr();
        let started = Instant::now();
        drop(server);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "drop took {:?}",
            started.elapsed()
        );
        let again = PrometheusServer::start(&addr.to_string())
            .unwrap_or_else(|e| panic!("listen on {addr} again after drop: {e}"));
        drop(again);
    }

    #[test]
    fn a_taken_address_is_an_error_naming_it() {
        let server = start();
        let addr = server.local_addr().to_string();
        let Err(error) = PrometheusServer::start(&addr) else {
            panic!("a second server on {addr} started");
        };
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("cannot listen on {addr}: Address already in use")),
            "{message}"
        );
    }

    #[test]
    fn the_sink_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<PrometheusServer>();
    }
}
