//! The snapshot document: what lynx publishes each interval. Built from two [`Sample`]s by
//! plain functions; serialised by the sinks. `docs/snapshot.md` documents every field.
use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use lynx_common::http::{Endpoint, FLOW_CLIENT};
use serde::{Deserialize, Serialize};

pub use crate::collector::features::{Family, Feature, FeatureState, Features};
pub use crate::collector::{disk::DiskInfo as Disk, kernel::Drops as KernelDrops};
use crate::{
    collector::{ContainerFiles, Counters, DockerView, InstanceInfo, Sample, containers::Owner},
    docker::{self, ContainerState},
};

/// Schema version of [`Snapshot`]; raised whenever a field changes meaning or goes away.
pub const SNAPSHOT_VERSION: u32 = 4;

/// One /proc-like document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    pub host: Host,
    pub containers: Vec<Container>,
    pub nginx: Nginx,
    pub kernel_drops: KernelDrops,
    /// Which counter families this kernel supports, and through which hooks: a family that
    /// is `unavailable` reads as zero, for the reason given. Empty in documents written
    /// before it was added.
    #[serde(default)]
    pub features: Features,
    pub collector: CollectorStats,
    /// One entry per `[[groups]]` of the daemon's config; empty without groups and from
    /// `lynx snapshot`, which runs no controller.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Why the daemon's history database is not being written (it cannot be opened; it is
    /// tried again each minute); absent while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_error: Option<String>,
}

/// One group of containers behind one nginx upstream, as the controller sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    /// The nginx `upstream` block's name.
    pub upstream: String,
    pub port: u16,
    /// The servers Lynx puts in the upstream (running members that answered on `port`), as
    /// `address:port`; empty means clients get the 503 fallback.
    pub servers: Vec<String>,
    /// Members by LXD status.
    pub running: u32,
    pub frozen: u32,
    pub stopped: u32,
    /// nginx's message when it rejected the last upstream file (it serves the previous one);
    /// `None` when it serves what Lynx rendered.
    pub upstream_error: Option<String>,
    /// `None` for a group without `autoscale`.
    pub autoscaler: Option<Autoscaler>,
}

/// A group's autoscaler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscaler {
    /// `lynx daemon --dry-run`: decisions are logged, not carried out.
    pub dry_run: bool,
    /// `steady`, `scaling_up`, `draining`, `scaling_down` or `lxd_unavailable`.
    pub state: String,
    pub min: u32,
    pub max: u32,
    /// Averages over the policy's window (since its last reset), `None` without samples.
    pub cpu_percent_avg: Option<f64>,
    pub requests_per_s_avg: Option<f64>,
    pub window_filled_s: f64,
    pub last_action: Option<ScaleAction>,
    /// RFC 3339: the earliest the next scale-up or scale-down can come; `None` when none can
    /// (at `max` or with nothing to start, at `min`).
    pub next_scale_up_at: Option<String>,
    pub next_scale_down_at: Option<String>,
    /// The reason of the last decision, with the figures it was made from.
    pub reason: Option<String>,
}

/// A scale action the autoscaler decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleAction {
    /// RFC 3339.
    pub at: String,
    /// `up` or `down`.
    pub direction: String,
    /// Running containers before and after.
    pub from: u32,
    pub to: u32,
    pub containers: Vec<String>,
    pub reason: String,
}

/// The nginx load balancer's traffic, as the kernel counted it in nginx's system calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nginx {
    /// The master's pid; `None` when nginx was not found (nothing new is counted then).
    pub master_pid: Option<u32>,
    /// Client side, over every followed listening port.
    pub accepts: u64,
    pub active: u64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub requests_per_s_10s: f64,
    /// Per listening port.
    pub listen: Vec<NginxEndpoint>,
    /// Per upstream address and port nginx connected to.
    pub upstreams: Vec<NginxEndpoint>,
}

/// One listening port (client side) or one upstream (address, port and container).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxEndpoint {
    /// Upstream: the peer's IPv4 or IPv6 address; listening port: `None`.
    pub address: Option<String>,
    pub port: u16,
    /// Upstream: the container that has the address, when one does.
    pub container: Option<String>,
    /// Listening port that speaks TLS: requests are not counted on it.
    pub tls: bool,
    /// Client side: connections accepted; upstream: connections nginx opened.
    pub connections: u64,
    pub active: u64,
    pub requests: u64,
    pub bad_requests: u64,
    /// Bytes nginx read from and wrote to these connections.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Transfers whose framing was lost (nothing more is counted on that connection).
    pub unparsed: u64,
    pub requests_per_s: f64,
    pub requests_per_s_10s: f64,
}

/// Lynx's own cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorStats {
    /// Wall time of reading the kernel maps, cgroupfs, procfs and LXD for this snapshot.
    pub sample_ms: f64,
}

/// Host-wide figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub timestamp: String,
    pub interval_ms: u64,
    pub kernel: String,
    pub cpus: u32,
    pub cpu_percent: f64,
    pub load_average: [f64; 3],
    pub memory_total_mb: u64,
    pub memory_free_mb: u64,
    pub memory_available_mb: u64,
    pub memory_used_mb: u64,
    pub containers_running: u32,
    pub containers_stopped: u32,
    pub containers_frozen: u32,
    /// Whether LXD answered for this snapshot.
    pub lxd_available: bool,
    /// Whether the Docker Engine answers; `None` (left out) on a host without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_available: Option<bool>,
}

/// One container, or `host` for every cgroup that belongs to no container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub name: String,
    /// `lxd`, `lxc`, `docker`, `service` or `host`.
    pub kind: String,
    /// `Running`, `Stopped`, `Frozen`, or LXD's own word.
    pub status: String,
    pub pid: Option<u32>,
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    pub image: Option<String>,
    pub created_at: Option<String>,
    pub last_used_at: Option<String>,
    pub uptime_s: Option<u64>,
    /// Path of its top cgroup in the v2 hierarchy; `None` when it has none (stopped).
    pub cgroup: Option<String>,
    pub processes: Option<u32>,
    pub cpu: Cpu,
    pub memory: Option<Memory>,
    pub block_io: BlockIo,
    /// LXD containers: each disk device by name (`root`, …); `None` for other kinds and
    /// before LXD's first disk poll.
    #[serde(default)]
    pub disk: Option<BTreeMap<String, Disk>>,
    /// `None` where network traffic is not counted: the host and services, unless
    /// `[daemon] count_host_network` is on.
    pub network: Option<Network>,
    /// What only Docker tells; left out for other kinds and while the engine does not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerDetails>,
}

/// A Docker container's own fields, from the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerDetails {
    /// The full 64-digit id.
    pub id: String,
    /// The engine's state word: `created`, `running`, `paused`, `restarting`, `removing`,
    /// `exited` or `dead`.
    pub state: String,
    /// The image's id (`sha256:…`); `image` is the name it was asked for.
    pub image_id: String,
    /// The main process's program and arguments.
    pub command: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Addresses per network it is attached to.
    pub networks: Vec<DockerNetwork>,
}

/// A Docker container's addresses on one network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerNetwork {
    pub name: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

impl From<&docker::Container> for DockerDetails {
    fn from(container: &docker::Container) -> Self {
        Self {
            id: container.id.clone(),
            state: container.state.to_string(),
            image_id: container.image_id.clone(),
            command: container.command.clone(),
            labels: container.labels.clone(),
            networks: container
                .networks
                .iter()
                .map(|n| DockerNetwork {
                    name: n.name.clone(),
                    ipv4: n.ipv4.map(|a| a.to_string()),
                    ipv6: n.ipv6.map(|a| a.to_string()),
                })
                .collect(),
        }
    }
}

/// What a manager says about a container.
#[derive(Clone, Copy)]
enum Known<'a> {
    Lxd(&'a InstanceInfo),
    Docker(&'a docker::Container),
}

/// A Docker state in the words the snapshot uses for every kind (`docker.state` keeps the
/// engine's own).
fn docker_status(state: &ContainerState) -> &str {
    match state {
        ContainerState::Running => "Running",
        ContainerState::Paused => "Frozen",
        ContainerState::Created | ContainerState::Exited => "Stopped",
        ContainerState::Restarting => "Starting",
        ContainerState::Removing => "Stopping",
        ContainerState::Dead => "Error",
        ContainerState::Other(word) => word,
    }
}

fn format_time(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// The fields every kind shares, from what its manager says.
fn known_info(known: Option<Known>) -> InstanceInfo {
    match known {
        None => InstanceInfo::default(),
        Some(Known::Lxd(instance)) => instance.clone(),
        Some(Known::Docker(c)) => InstanceInfo {
            name: c.name.clone(),
            status: docker_status(&c.state).to_owned(),
            pid: c.pid,
            ipv4: c.ipv4().map(|a| a.to_string()).collect(),
            ipv6: c.ipv6().map(|a| a.to_string()).collect(),
            image: Some(c.image.clone()).filter(|i| !i.is_empty()),
            created_at: Some(format_time(c.created_at)),
            last_used_at: c.started_at.map(format_time),
            disk: None,
        },
    }
}

impl Container {
    /// Its root disk (LXD's device `root`), once LXD's disks were polled.
    pub fn root_disk(&self) -> Option<&Disk> {
        self.disk.as_ref()?.get("root")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// Cumulative nanoseconds on CPU.
    pub ns: u64,
    /// Over the interval: 100 is one full CPU.
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub used_bytes: u64,
    pub limit_bytes: Option<u64>,
    pub percent_of_host: f64,
    pub swap_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockIo {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
    pub read_bytes_per_s: f64,
    pub write_bytes_per_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
}

/// Kernel counters summed over each owner's cgroups, those alive and those removed.
fn totals_by_owner(sample: &Sample) -> BTreeMap<Owner, Counters> {
    let mut by_owner = sample.retired.clone();
    for cgroup in &sample.cgroups {
        by_owner
            .entry(cgroup.owner.clone())
            .or_default()
            .accumulate(&cgroup.counters);
    }
    by_owner
}

/// Builds the document for the interval from `previous` to `current`.
pub fn snapshot(previous: &Sample, current: &Sample) -> Snapshot {
    let elapsed = current.taken.saturating_duration_since(previous.taken);
    let seconds = elapsed.as_secs_f64();
    let host_memory_bytes = current.host.memory.total_kib * 1024;
    let (before, now) = (totals_by_owner(previous), totals_by_owner(current));
    let rate = |now: u64, before: u64| per_second(now.saturating_sub(before), seconds);
    // Only containers' sockets pass the network programs unless the whole host's do.
    let network_counted = |owner: &Owner| current.host_network_counted || owner.is_container();

    let container = |owner: &Owner, files: Option<&ContainerFiles>, known: Option<Known>| {
        let totals = now.get(owner).copied().unwrap_or_default();
        let prior = before.get(owner).copied().unwrap_or_default();
        let info = known_info(known);
        let status = match (known, files) {
            (Some(_), _) => info.status.clone(),
            (None, Some(files)) if files.frozen => "Frozen".to_owned(),
            (None, _) => "Running".to_owned(),
        };
        let kind = match owner {
            Owner::Lxc(_) if known.is_some() => "lxd",
            Owner::Lxc(_) => "lxc",
            Owner::Docker(_) => "docker",
            Owner::Service(_) => "service",
            Owner::Host => "host",
        };
        Container {
            name: match known {
                Some(_) => info.name,
                None => owner.name().to_owned(),
            },
            kind: kind.to_owned(),
            status,
            pid: info.pid,
            ipv4: info.ipv4,
            ipv6: info.ipv6,
            image: info.image,
            created_at: info.created_at,
            last_used_at: info.last_used_at,
            uptime_s: files.and_then(|f| f.uptime_s),
            cgroup: files.map(|f| f.top.clone()),
            processes: files.map(|f| f.processes),
            cpu: Cpu {
                ns: totals.cpu_ns,
                percent: round2(rate(totals.cpu_ns, prior.cpu_ns) / 1e9 * 100.0),
            },
            memory: files.and_then(|f| f.memory).map(|m| Memory {
                used_bytes: m.used_bytes,
                limit_bytes: m.limit_bytes,
                percent_of_host: round2(percent(m.used_bytes as f64, host_memory_bytes as f64)),
                swap_bytes: m.swap_bytes,
            }),
            block_io: BlockIo {
                read_bytes: totals.io.read_bytes,
                write_bytes: totals.io.write_bytes,
                read_ops: totals.io.read_ops,
                write_ops: totals.io.write_ops,
                read_bytes_per_s: round2(rate(totals.io.read_bytes, prior.io.read_bytes)),
                write_bytes_per_s: round2(rate(totals.io.write_bytes, prior.io.write_bytes)),
            },
            disk: info.disk,
            network: network_counted(owner).then(|| Network {
                rx_bytes: totals.net.rx_bytes,
                tx_bytes: totals.net.tx_bytes,
                rx_packets: totals.net.rx_packets,
                tx_packets: totals.net.tx_packets,
                rx_bytes_per_s: round2(rate(totals.net.rx_bytes, prior.net.rx_bytes)),
                tx_bytes_per_s: round2(rate(totals.net.tx_bytes, prior.net.tx_bytes)),
            }),
            docker: match known {
                Some(Known::Docker(c)) => Some(c.into()),
                _ => None,
            },
        }
    };

    let instances = current.instances.as_deref().unwrap_or_default();
    let known = |owner: &Owner| match owner {
        Owner::Lxc(name) => instances.iter().find(|i| &i.name == name).map(Known::Lxd),
        Owner::Docker(id) => current.docker.container(id).map(Known::Docker),
        Owner::Service(_) | Owner::Host => None,
    };
    let mut containers: Vec<Container> = current
        .containers
        .iter()
        // An empty cgroup that no manager knows is what a crashed container left behind.
        .filter(|files| files.processes > 0 || known(&files.owner).is_some())
        .map(|files| container(&files.owner, Some(files), known(&files.owner)))
        .collect();
    // Instances and Docker containers with no cgroup: stopped, or started since the cgroups
    // were read.
    for instance in instances {
        if !containers
            .iter()
            .any(|c| c.name == instance.name && c.kind == "lxd")
        {
            containers.push(container(
                &Owner::Lxc(instance.name.clone()),
                None,
                Some(Known::Lxd(instance)),
            ));
        }
    }
    if let DockerView::Up(listed) = &current.docker {
        for docker in listed {
            let has_cgroup = containers
                .iter()
                .any(|c| c.docker.as_ref().is_some_and(|d| d.id == docker.id));
            if !has_cgroup {
                containers.push(container(
                    &Owner::Docker(docker.id.clone()),
                    None,
                    Some(Known::Docker(docker)),
                ));
            }
        }
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    containers.push(container(&Owner::Host, None, None));

    let count = |status: &str| {
        containers
            .iter()
            .filter(|c| c.kind != "host" && c.status == status)
            .count() as u32
    };
    let (cpu_before, cpu_now) = (previous.host.cpu, current.host.cpu);
    let mem = current.host.memory;
    let mb = |kib: u64| kib / 1024;
    Snapshot {
        version: SNAPSHOT_VERSION,
        host: Host {
            timestamp: rfc3339(current.wall),
            interval_ms: elapsed.as_millis().try_into().unwrap_or(u64::MAX),
            kernel: current.host.kernel.clone(),
            cpus: current.host.cpus,
            cpu_percent: round2(percent(
                cpu_now.busy.saturating_sub(cpu_before.busy) as f64,
                cpu_now.total.saturating_sub(cpu_before.total) as f64,
            )),
            load_average: current.host.load_average,
            memory_total_mb: mb(mem.total_kib),
            memory_free_mb: mb(mem.free_kib),
            memory_available_mb: mb(mem.available_kib),
            memory_used_mb: mb(mem.total_kib.saturating_sub(mem.available_kib)),
            containers_running: count("Running"),
            containers_stopped: count("Stopped"),
            containers_frozen: count("Frozen"),
            lxd_available: current.instances.is_some(),
            docker_available: match current.docker {
                DockerView::Absent => None,
                DockerView::Down => Some(false),
                DockerView::Up(_) => Some(true),
            },
        },
        nginx: nginx(previous, current, &containers),
        containers,
        kernel_drops: current.drops,
        features: current.features.clone(),
        collector: CollectorStats {
            sample_ms: round2(current.duration.as_secs_f64() * 1000.0),
        },
        groups: Vec::new(),
        history_error: None,
    }
}

/// nginx's object: each endpoint with its rates over the interval and over the longer span,
/// upstreams named after the container that has their address.
fn nginx(previous: &Sample, current: &Sample, containers: &[Container]) -> Nginx {
    let now = &current.nginx;
    let requests_at = |endpoints: &[(Endpoint, u64)], endpoint: &Endpoint| {
        endpoints
            .iter()
            .find(|(e, _)| e == endpoint)
            .map_or(0, |(_, r)| *r)
    };
    let before: Vec<(Endpoint, u64)> = previous
        .nginx
        .endpoints
        .iter()
        .map(|(e, c)| (*e, c.requests))
        .collect();
    let interval = current
        .taken
        .saturating_duration_since(previous.taken)
        .as_secs_f64();
    let (earlier_at, earlier) = now
        .earlier
        .as_ref()
        .map_or((previous.taken, &before), |(at, e)| (*at, e));
    let span = current
        .taken
        .saturating_duration_since(earlier_at)
        .as_secs_f64();
    // Compared as addresses, not strings: an IPv6 address has more than one spelling.
    let container_of = |address: IpAddr| {
        containers
            .iter()
            .find(|c| {
                c.kind != "host"
                    && c.ipv4
                        .iter()
                        .chain(&c.ipv6)
                        .any(|a| a.parse::<IpAddr>() == Ok(address))
            })
            .map(|c| c.name.clone())
    };
    let (mut listen, mut upstreams) = (Vec::new(), Vec::new());
    for (endpoint, counts) in &now.endpoints {
        let port = endpoint.port as u16;
        let client = endpoint.kind == u32::from(FLOW_CLIENT);
        let address = (!client).then(|| endpoint.address());
        let rate = |base: &[(Endpoint, u64)], seconds| {
            round2(per_second(
                counts.requests.saturating_sub(requests_at(base, endpoint)),
                seconds,
            ))
        };
        let entry = NginxEndpoint {
            container: address.and_then(container_of),
            address: address.map(|a| a.to_string()),
            port,
            tls: client && now.tls_ports.contains(&port),
            connections: counts.opened,
            active: counts.active(),
            requests: counts.requests,
            bad_requests: counts.bad_requests,
            bytes_in: counts.bytes_in,
            bytes_out: counts.bytes_out,
            unparsed: counts.unparsed,
            requests_per_s: rate(&before, interval),
            requests_per_s_10s: rate(earlier, span),
        };
        match client {
            true => listen.push(entry),
            false => upstreams.push(entry),
        }
    }
    listen.sort_by_key(|e| e.port);
    upstreams.sort_by(|a, b| {
        (&a.container, &a.address, a.port).cmp(&(&b.container, &b.address, b.port))
    });
    let sum = |field: fn(&NginxEndpoint) -> u64| listen.iter().map(field).sum::<u64>();
    let sum_rate = |field: fn(&NginxEndpoint) -> f64| round2(listen.iter().map(field).sum::<f64>());
    Nginx {
        master_pid: now.master,
        accepts: sum(|e| e.connections),
        active: sum(|e| e.active),
        requests: sum(|e| e.requests),
        requests_per_s: sum_rate(|e| e.requests_per_s),
        requests_per_s_10s: sum_rate(|e| e.requests_per_s_10s),
        listen,
        upstreams,
    }
}

/// `part / whole` in percent; 0 when `whole` is 0.
fn percent(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        0.0
    } else {
        part / whole * 100.0
    }
}

/// `amount` per second over `seconds`; 0 for an empty interval.
fn per_second(amount: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        0.0
    } else {
        amount as f64 / seconds
    }
}

pub(crate) fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

pub fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a SystemTime after 1970 formats as RFC 3339")
}

/// Snapshot values for the tests of the modules that consume snapshots.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A cgroup at `path` with `cpu_ns` of CPU and `bytes` each way (and read).
    pub fn cgroup(id: u64, path: &str, cpu_ns: u64, bytes: u64) -> crate::collector::CgroupSample {
        crate::collector::CgroupSample {
            id,
            path: path.into(),
            owner: Owner::of(path).0,
            counters: Counters {
                cpu_ns,
                net: lynx_common::NetCounters {
                    rx_bytes: bytes,
                    rx_packets: 1,
                    tx_bytes: 2 * bytes,
                    tx_packets: 2,
                },
                io: lynx_common::IoCounters {
                    read_bytes: bytes,
                    read_ops: 1,
                    write_bytes: 0,
                    write_ops: 0,
                },
            },
        }
    }

    /// A container with every figure zero or unknown; tests set what they need.
    pub fn container(name: &str, kind: &str, status: &str) -> Container {
        Container {
            name: name.into(),
            kind: kind.into(),
            status: status.into(),
            pid: None,
            ipv4: vec![],
            ipv6: vec![],
            image: None,
            created_at: None,
            last_used_at: None,
            uptime_s: None,
            cgroup: None,
            processes: None,
            cpu: Cpu::default(),
            memory: None,
            block_io: BlockIo::default(),
            disk: None,
            network: Some(Network::default()),
            docker: None,
        }
    }

    /// An nginx upstream with these figures, the others zero.
    pub fn upstream(
        container: &str,
        address: &str,
        requests_per_s: f64,
        active: u64,
    ) -> NginxEndpoint {
        NginxEndpoint {
            address: Some(address.into()),
            port: 80,
            container: Some(container.into()),
            tls: false,
            connections: active,
            active,
            requests: 0,
            bad_requests: 0,
            bytes_in: 0,
            bytes_out: 0,
            unparsed: 0,
            requests_per_s,
            requests_per_s_10s: requests_per_s,
        }
    }

    /// Every family active, nginx's bytes followed at the socket tracepoints (kernel 6.3 on).
    pub fn features() -> Features {
        Features::from([
            (
                Family::Cpu,
                Feature::active(&["tp_btf/sched_switch", "perf_event/cpu-clock"]),
            ),
            (
                Family::BlockIo,
                Feature::active(&["tp_btf/block_bio_queue"]),
            ),
            (
                Family::Network,
                Feature::active(&["cgroup_skb/ingress", "cgroup_skb/egress"]),
            ),
            (
                Family::NginxConnections,
                Feature::active(&[
                    "sock_ops",
                    "cgroup/sock_release",
                    "tp_btf/sched_process_fork",
                ]),
            ),
            (
                Family::NginxRequests,
                Feature::active(&["tp_btf/sock_recv_length", "tp_btf/sock_send_length"]),
            ),
        ])
    }

    /// A snapshot taken at `timestamp` of `containers` as given (the caller adds the `host`
    /// entry), with the host's container counts taken from their statuses.
    pub fn snapshot(timestamp: &str, containers: Vec<Container>) -> Snapshot {
        let count = |status: &str| {
            containers
                .iter()
                .filter(|c| c.kind != "host" && c.status == status)
                .count() as u32
        };
        Snapshot {
            version: SNAPSHOT_VERSION,
            host: Host {
                timestamp: timestamp.into(),
                interval_ms: 1000,
                kernel: "6.18.44".into(),
                cpus: 2,
                cpu_percent: 50.0,
                load_average: [0.59, 0.87, 0.81],
                memory_total_mb: 24_105,
                memory_free_mb: 21_945,
                memory_available_mb: 23_344,
                memory_used_mb: 760,
                containers_running: count("Running"),
                containers_stopped: count("Stopped"),
                containers_frozen: count("Frozen"),
                lxd_available: true,
                docker_available: None,
            },
            containers,
            nginx: Nginx::default(),
            kernel_drops: KernelDrops::default(),
            features: features(),
            collector: CollectorStats { sample_ms: 0.87 },
            groups: Vec::new(),
            history_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::collector::{
        CgroupSample, NginxSample,
        containers::MemoryUsage,
        host::{CpuTicks, HostSample, MemInfo},
        kernel::Drops,
    };
    use fixtures::cgroup;
    use lynx_common::http::{EndpointCounters, FLOW_UPSTREAM};

    fn files(name: &str, frozen: bool) -> ContainerFiles {
        ContainerFiles {
            owner: Owner::Lxc(name.into()),
            top: format!("/lxc.payload.{name}"),
            memory: Some(MemoryUsage {
                used_bytes: 512 * 1024 * 1024,
                limit_bytes: None,
                swap_bytes: 0,
            }),
            processes: 3,
            frozen,
            uptime_s: Some(60),
        }
    }

    fn sample(
        at: Instant,
        busy: u64,
        cgroups: Vec<CgroupSample>,
        instances: Option<Vec<InstanceInfo>>,
    ) -> Sample {
        let containers = vec![files("web1", false), files("web2", true)];
        Sample {
            taken: at,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            host: HostSample {
                memory: MemInfo {
                    total_kib: 8 * 1024 * 1024,
                    free_kib: 2 * 1024 * 1024,
                    available_kib: 6 * 1024 * 1024,
                },
                cpu: CpuTicks {
                    busy,
                    total: busy * 4,
                },
                cpus: 2,
                kernel: "6.18.0".into(),
                load_average: [0.5, 0.25, 0.125],
            },
            cgroups,
            retired: BTreeMap::new(),
            containers,
            instances,
            docker: DockerView::Absent,
            nginx: NginxSample::default(),
            drops: Drops::default(),
            features: fixtures::features(),
            host_network_counted: false,
            duration: Duration::from_micros(1500),
        }
    }

    fn lxd(name: &str, status: &str) -> InstanceInfo {
        InstanceInfo {
            name: name.into(),
            status: status.into(),
            pid: Some(4242),
            ipv4: vec!["10.0.0.2".into()],
            ipv6: vec!["fd42:0:0:0:0:0:0:2".into()],
            ..InstanceInfo::default()
        }
    }

    #[test]
    fn cgroups_are_summed_per_container_and_rates_are_per_second() {
        let start = Instant::now();
        let before = sample(
            start,
            10,
            vec![cgroup(7, "/lxc.payload.web1", 0, 0), cgroup(1, "/", 5, 0)],
            None,
        );
        let after = sample(
            start + Duration::from_secs(2),
            20,
            vec![
                cgroup(7, "/lxc.payload.web1", 2_000_000_000, 1000),
                cgroup(8, "/lxc.payload.web1/init.scope", 1_000_000_000, 1000),
                cgroup(1, "/", 5, 0),
            ],
            None,
        );
        let doc = snapshot(&before, &after);
        let web1 = doc
            .containers
            .iter()
            .find(|c| c.name == "web1")
            .expect("web1 listed");
        assert_eq!(web1.kind, "lxc", "no LXD: recognised by cgroup");
        assert_eq!(web1.cpu.ns, 3_000_000_000);
        assert_eq!(web1.cpu.percent, 150.0);
        let network = web1
            .network
            .as_ref()
            .expect("a container's traffic is counted");
        assert_eq!(network.rx_bytes, 2000);
        assert_eq!(network.tx_bytes_per_s, 2000.0);
        assert_eq!(web1.block_io.read_bytes_per_s, 1000.0);
        assert_eq!(web1.memory.as_ref().expect("memory").percent_of_host, 6.25);
        assert_eq!(web1.processes, Some(3));
        assert_eq!(doc.containers.last().expect("host entry").name, "host");
        assert!(!doc.host.lxd_available);
    }

    #[test]
    fn what_a_removed_inner_cgroup_counted_stays_in_its_container() {
        let start = Instant::now();
        let before = sample(
            start,
            10,
            vec![
                cgroup(7, "/lxc.payload.web1", 1_000_000_000, 0),
                cgroup(
                    8,
                    "/lxc.payload.web1/system.slice/cron.service",
                    500_000_000,
                    0,
                ),
            ],
            None,
        );
        let mut after = sample(
            start + Duration::from_secs(1),
            20,
            vec![cgroup(7, "/lxc.payload.web1", 1_250_000_000, 0)],
            None,
        );
        let removed = cgroup(8, "", 750_000_000, 0).counters;
        after.retired = BTreeMap::from([(Owner::Lxc("web1".into()), removed)]);
        let doc = snapshot(&before, &after);
        let web1 = doc.containers.iter().find(|c| c.name == "web1");
        let cpu = &web1.expect("web1 listed").cpu;
        assert_eq!(cpu.ns, 2_000_000_000);
        assert_eq!(cpu.percent, 50.0);
    }

    #[test]
    fn network_is_shown_only_where_it_is_counted() {
        let start = Instant::now();
        let cgroups = vec![
            cgroup(7, "/lxc.payload.web1", 0, 100),
            cgroup(9, "/system.slice/docker-0123456789abcdef.scope", 0, 100),
            cgroup(5, "/system.slice/nginx.service", 0, 100),
            cgroup(1, "/", 0, 100),
        ];
        let network_of = |host_network_counted: bool| {
            let [before, after] = [start, start + Duration::from_secs(1)].map(|at| {
                let mut sample = sample(at, 1, cgroups.clone(), None);
                sample.host_network_counted = host_network_counted;
                for (owner, top) in [
                    (
                        Owner::Docker("0123456789abcdef".into()),
                        "/system.slice/docker-0123456789abcdef.scope",
                    ),
                    (
                        Owner::Service("nginx".into()),
                        "/system.slice/nginx.service",
                    ),
                ] {
                    let mut files = files("any", false);
                    (files.owner, files.top) = (owner, top.into());
                    sample.containers.push(files);
                }
                sample
            });
            let doc = snapshot(&before, &after);
            ["web1", "0123456789ab", "nginx", "host"].map(|name| {
                doc.containers
                    .iter()
                    .find(|c| c.name == name)
                    .unwrap_or_else(|| panic!("{name} listed"))
                    .network
                    .as_ref()
                    .map(|n| n.rx_bytes)
            })
        };
        assert_eq!(
            network_of(false),
            [Some(100), Some(100), None, None],
            "containers only: the host and services are not counted, so not shown as zero"
        );
        assert_eq!(
            network_of(true),
            [Some(100), Some(100), Some(100), Some(100)],
            "count_host_network: everyone's"
        );
    }

    fn endpoint(kind: u8, addr: &str, port: u32) -> Endpoint {
        Endpoint {
            kind: u32::from(kind),
            port,
            addr: Endpoint::addr_of(addr.parse().expect("an address")),
        }
    }

    fn counts(opened: u64, closed: u64, requests: u64) -> EndpointCounters {
        EndpointCounters {
            opened,
            closed,
            requests,
            ..EndpointCounters::default()
        }
    }

    #[test]
    fn nginx_endpoints_get_rates_and_upstreams_their_container() {
        let start = Instant::now();
        let port_80 = endpoint(FLOW_CLIENT, "::", 80);
        let port_443 = endpoint(FLOW_CLIENT, "::", 443);
        let web1 = endpoint(FLOW_UPSTREAM, "10.0.0.2", 8080);
        // LXD spells it in full; the kernel's bytes are the same address.
        let web1_v6 = endpoint(FLOW_UPSTREAM, "fd42::2", 8080);
        let elsewhere = endpoint(FLOW_UPSTREAM, "192.0.2.9", 80);
        let mut before = sample(start + Duration::from_secs(9), 1, vec![], None);
        before.nginx.endpoints = vec![(port_80, counts(10, 8, 100)), (web1, counts(5, 5, 50))];
        let mut after = sample(
            start + Duration::from_secs(10),
            2,
            vec![],
            Some(vec![lxd("web1", "Running")]),
        );
        after.nginx = NginxSample {
            master: Some(7),
            endpoints: vec![
                (web1, counts(9, 7, 150)),
                (port_443, counts(4, 1, 0)),
                (port_80, counts(30, 27, 200)),
                (elsewhere, counts(1, 0, 1)),
                (web1_v6, counts(2, 2, 3)),
            ],
            tls_ports: vec![443],
            earlier: Some((start, vec![(port_80, 0), (web1, 0)])),
        };
        let nginx = snapshot(&before, &after).nginx;
        assert_eq!(nginx.master_pid, Some(7));
        assert_eq!((nginx.accepts, nginx.active, nginx.requests), (34, 6, 200));
        assert_eq!(
            (nginx.requests_per_s, nginx.requests_per_s_10s),
            (100.0, 20.0)
        );
        let ports: Vec<(u16, bool, u64)> = nginx
            .listen
            .iter()
            .map(|e| (e.port, e.tls, e.active))
            .collect();
        assert_eq!(ports, vec![(80, false, 3), (443, true, 3)]);
        let upstreams: Vec<String> = nginx
            .upstreams
            .iter()
            .map(|e| {
                format!(
                    "{:?} {:?}:{} active {} {}/s {}/s",
                    e.container,
                    e.address,
                    e.port,
                    e.active,
                    e.requests_per_s,
                    e.requests_per_s_10s
                )
            })
            .collect();
        assert_eq!(
            upstreams,
            vec![
                r#"None Some("192.0.2.9"):80 active 1 1/s 0.1/s"#,
                r#"Some("web1") Some("10.0.0.2"):8080 active 2 100/s 15/s"#,
                r#"Some("web1") Some("fd42::2"):8080 active 0 3/s 0.3/s"#,
            ]
        );
    }

    #[test]
    fn lxd_instances_are_merged_by_name_and_stopped_ones_listed() {
        let start = Instant::now();
        let instances = Some(vec![
            lxd("web1", "Running"),
            lxd("web2", "Frozen"),
            lxd("web3", "Stopped"),
        ]);
        let cgroups = vec![cgroup(7, "/lxc.payload.web1", 0, 0)];
        let doc = snapshot(
            &sample(start, 1, cgroups.clone(), instances.clone()),
            &sample(start + Duration::from_secs(1), 2, cgroups, instances),
        );
        let names: Vec<(&str, &str, &str)> = doc
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.kind.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("web1", "lxd", "Running"),
                ("web2", "lxd", "Frozen"),
                ("web3", "lxd", "Stopped"),
                ("host", "host", "Running")
            ]
        );
        let web3 = &doc.containers[2];
        assert_eq!((web3.cgroup.as_deref(), web3.processes), (None, None));
        assert_eq!(doc.containers[0].ipv4, ["10.0.0.2"]);
        assert_eq!(
            (
                doc.host.containers_running,
                doc.host.containers_frozen,
                doc.host.containers_stopped
            ),
            (1, 1, 1)
        );
        assert!(doc.host.lxd_available);
    }

    #[test]
    fn lxds_disk_figures_are_published_per_device() {
        let start = Instant::now();
        let root = Disk {
            path: "/".into(),
            pool: Some("fast".into()),
            used_bytes: Some(20 << 20),
            limit_bytes: Some(64 << 20),
            free_bytes: Some(44 << 20),
            nearly_full: false,
            reason: None,
        };
        let mut web1 = lxd("web1", "Running");
        web1.disk = Some(BTreeMap::from([("root".to_owned(), root.clone())]));
        let instances = Some(vec![web1, lxd("web2", "Stopped")]);
        let cgroups = vec![cgroup(7, "/lxc.payload.web1", 0, 0)];
        let doc = snapshot(
            &sample(start, 1, cgroups.clone(), instances.clone()),
            &sample(start + Duration::from_secs(1), 2, cgroups, instances),
        );
        let disk = |name: &str| {
            let container = doc.containers.iter().find(|c| c.name == name).unwrap();
            container.disk.clone()
        };
        assert_eq!(
            disk("web1"),
            Some(BTreeMap::from([("root".to_owned(), root)]))
        );
        assert_eq!(disk("web2"), None, "no disk poll yet");
        assert_eq!(disk("host"), None);
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            json["containers"][0]["disk"]["root"],
            serde_json::json!({
                "path": "/", "pool": "fast", "used_bytes": 20971520, "limit_bytes": 67108864,
                "free_bytes": 46137344, "nearly_full": false, "reason": null
            })
        );
    }

    #[test]
    fn docker_containers_are_named_by_the_engine_and_by_id_without_it() {
        let id = "530b8ee64a5f369f8345d88baa6cda59be1e0c411b891b32862859f11d7bb005";
        let at = |text: &str| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .expect("a time")
        };
        let container = |name: &str, id: &str, state: ContainerState| docker::Container {
            id: id.into(),
            name: name.into(),
            image: "busybox:1.36".into(),
            image_id: "sha256:feed".into(),
            state,
            pid: Some(77),
            command: vec!["sleep".into(), "3600".into()],
            created_at: at("2026-12-07T15:15:50.1Z"),
            started_at: Some(at("2026-12-07T15:15:51Z")),
            labels: [("app".to_owned(), "demo".to_owned())].into(),
            networks: vec![docker::NetworkAddresses {
                name: "web".into(),
                ipv4: Some(std::net::Ipv4Addr::new(172, 18, 0, 2)),
                ipv6: None,
            }],
        };
        let start = Instant::now();
        let snapshot_with = |view: DockerView| {
            let [before, after] = [start, start + Duration::from_secs(1)].map(|at| {
                let mut sample = sample(at, 1, vec![], None);
                let mut files = files("any", true);
                (files.owner, files.top) = (Owner::Docker(id.into()), format!("/docker/{id}"));
                sample.containers.push(files);
                sample.docker = view.clone();
                sample
            });
            snapshot(&before, &after)
        };
        let doc = snapshot_with(DockerView::Up(vec![
            container("api", id, ContainerState::Paused),
            container("job", &"f".repeat(64), ContainerState::Exited),
        ]));
        let api = doc
            .containers
            .iter()
            .find(|c| c.name == "api")
            .expect("api");
        assert_eq!(
            (api.kind.as_str(), api.status.as_str(), api.pid),
            ("docker", "Frozen", Some(77))
        );
        assert_eq!(api.image.as_deref(), Some("busybox:1.36"));
        assert_eq!(api.ipv4, ["172.18.0.2"]);
        assert_eq!(api.created_at.as_deref(), Some("2026-12-07T15:15:50.1Z"));
        assert_eq!(api.last_used_at.as_deref(), Some("2026-12-07T15:15:51Z"));
        assert_eq!(
            api.cgroup.as_deref(),
            Some(format!("/docker/{id}").as_str())
        );
        let details = api.docker.as_ref().expect("Docker's fields");
        assert_eq!(
            (details.id.as_str(), details.state.as_str()),
            (id, "paused")
        );
        assert_eq!(details.command, ["sleep", "3600"]);
        let job = doc
            .containers
            .iter()
            .find(|c| c.name == "job")
            .expect("listed");
        assert_eq!(
            (job.status.as_str(), job.cgroup.as_ref()),
            ("Stopped", None)
        );
        assert_eq!(doc.host.docker_available, Some(true));
        assert_eq!(doc.host.containers_frozen, 2, "web2 and api");

        let down = snapshot_with(DockerView::Down);
        let by_id = down
            .containers
            .iter()
            .find(|c| c.kind == "docker")
            .expect("listed by cgroup");
        assert_eq!(
            (by_id.name.as_str(), by_id.docker.as_ref()),
            ("530b8ee64a5f", None)
        );
        assert_eq!(by_id.status, "Frozen", "from the cgroup");
        assert_eq!(down.host.docker_available, Some(false));
        let absent = snapshot_with(DockerView::Absent);
        assert_eq!(absent.host.docker_available, None);
        let json = serde_json::to_string(&absent).expect("serialises");
        assert!(
            !json.contains("docker_available") && !json.contains("\"docker\":"),
            "left out without an engine: {json}"
        );
    }

    #[test]
    fn empty_leftover_cgroups_are_not_containers() {
        let start = Instant::now();
        let mut after = sample(start + Duration::from_secs(1), 1, vec![], None);
        after.containers[0].processes = 0;
        let doc = snapshot(&sample(start, 1, vec![], None), &after);
        assert!(
            doc.containers.iter().all(|c| c.name != "web1"),
            "empty, unknown to LXD"
        );
        after.instances = Some(vec![lxd("web1", "Running")]);
        let doc = snapshot(&sample(start, 1, vec![], None), &after);
        assert!(
            doc.containers.iter().any(|c| c.name == "web1"),
            "LXD knows it"
        );
    }

    #[test]
    fn frozen_cgroup_without_lxd_reads_frozen() {
        let start = Instant::now();
        let doc = snapshot(
            &sample(start, 1, vec![], None),
            &sample(start + Duration::from_secs(1), 1, vec![], None),
        );
        let web2 = doc
            .containers
            .iter()
            .find(|c| c.name == "web2")
            .expect("listed");
        assert_eq!(web2.status, "Frozen");
    }

    #[test]
    fn host_figures_come_from_tick_deltas_and_meminfo() {
        let start = Instant::now();
        let doc = snapshot(
            &sample(start, 100, vec![], None),
            &sample(start + Duration::from_secs(1), 150, vec![], None),
        );
        assert_eq!(doc.host.cpu_percent, 25.0);
        assert_eq!(doc.host.memory_total_mb, 8192);
        assert_eq!(doc.host.memory_used_mb, 2048);
        assert_eq!(doc.host.load_average, [0.5, 0.25, 0.125]);
        assert_eq!(doc.collector.sample_ms, 1.5);
        assert_eq!(doc.host.timestamp, "2026-11-18T11:06:40Z");
        assert_eq!(doc.version, SNAPSHOT_VERSION);
    }

    #[test]
    fn zero_length_interval_gives_zero_not_nan() {
        let start = Instant::now();
        let cgroups = vec![cgroup(7, "/lxc.payload.web1", 9, 9)];
        let doc = snapshot(
            &sample(start, 5, cgroups.clone(), None),
            &sample(start, 5, cgroups, None),
        );
        assert_eq!(doc.host.cpu_percent, 0.0);
        assert!(
            doc.containers.iter().all(|c| c.cpu.percent == 0.0
                && c.network.as_ref().is_none_or(|n| n.rx_bytes_per_s == 0.0))
        );
    }
}
