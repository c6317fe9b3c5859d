//! Collectors: everything lynx reads from the kernel, cgroupfs, procfs and LXD, turned into
//! [`Sample`]s of cumulative counters. Rates, sums per container and percentages are the
//! model's job.
pub mod btf;
pub mod cgroupfs;
pub mod containers;
pub mod disk;
pub mod docker_containers;
pub mod features;
pub mod host;
pub mod kernel;
pub mod lxd_instances;
pub mod nginx;
mod pins;
pub mod preflight;
mod retired;
pub mod sockets;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    fs,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use cgroupfs::{CgroupError, CgroupLayout, CgroupResolver};
use containers::{MemoryUsage, Owner};
use features::{ByteHooks, Features};
use host::{HostError, HostSample};
use kernel::{Drops, KernelCounters, KernelError, LoadOptions, NginxTarget};
use lynx_common::{
    Accumulate, IoCounters, NetCounters,
    http::{Endpoint, EndpointCounters},
};

use crate::docker;

/// Errors of collecting a sample.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Host(#[from] HostError),
}

impl CollectError {
    /// True when the host cannot run lynx at all (privilege or kernel feature missing), as
    /// opposed to a fault while running.
    pub fn is_unsupported_host(&self) -> bool {
        use preflight::PreflightError::{MissingFeature, MissingPrivilege};
        matches!(
            self,
            Self::Kernel(KernelError::Preflight(
                MissingPrivilege { .. } | MissingFeature { .. }
            )) | Self::Cgroup(CgroupError::NoUnifiedHierarchy)
        )
    }
}

/// Kernel counters of one cgroup, or summed over several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Nanoseconds on CPU since the kernel counters started.
    pub cpu_ns: u64,
    pub net: NetCounters,
    pub io: IoCounters,
}

impl Counters {
    pub fn accumulate(&mut self, other: &Self) {
        self.cpu_ns += other.cpu_ns;
        self.net.accumulate(&other.net);
        self.io.accumulate(&other.io);
    }
}

/// Kernel counters of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSample {
    /// cgroup v2 id (inode number of its directory).
    pub id: u64,
    /// Path relative to the v2 hierarchy's root, starting with `/`.
    pub path: String,
    /// The container (or host) it belongs to, classified once here from `path`.
    pub owner: Owner,
    pub counters: Counters,
}

/// What a container manager (LXD) says about one instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceInfo {
    pub name: String,
    /// `Running`, `Stopped`, `Frozen`, or the manager's own word.
    pub status: String,
    /// The container's init process, when running.
    pub pid: Option<u32>,
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    pub image: Option<String>,
    /// RFC 3339.
    pub created_at: Option<String>,
    /// RFC 3339: when it was last started.
    pub last_used_at: Option<String>,
    /// Disk devices by name, from the last disk poll; `None` before the first one.
    pub disk: Option<BTreeMap<String, disk::DiskInfo>>,
}

/// A source of instance information that may be unreachable for a while.
pub trait InstanceSource {
    /// The instances, or why they cannot be had now.
    fn instances(&mut self) -> Result<Vec<InstanceInfo>, String>;
}

/// What the Docker Engine says, as of its watcher's latest read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DockerView {
    /// No engine on this host: no socket, and none answered since Lynx started.
    #[default]
    Absent,
    /// An engine that answered before, or whose socket exists, does not answer now.
    Down,
    /// Every container the engine has, running or not.
    Up(Vec<docker::Container>),
}

impl DockerView {
    /// The container with this full id, when the engine answers and knows it.
    pub fn container(&self, id: &str) -> Option<&docker::Container> {
        match self {
            Self::Up(containers) => containers.iter().find(|c| c.id == id),
            Self::Absent | Self::Down => None,
        }
    }
}

/// A source of the Docker Engine's view that may be down for a while.
pub trait DockerSource {
    fn view(&mut self) -> DockerView;
}

/// What cgroupfs says about one container's subtree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerFiles {
    pub owner: Owner,
    /// Path of the container's top cgroup.
    pub top: String,
    pub memory: Option<MemoryUsage>,
    pub processes: u32,
    pub frozen: bool,
    /// Seconds since the container's first process started.
    pub uptime_s: Option<u64>,
}

/// Everything read at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was taken, for rates.
    pub taken: Instant,
    /// When it was taken, for the document.
    pub wall: SystemTime,
    pub host: HostSample,
    pub cgroups: Vec<CgroupSample>,
    /// What the removed cgroups of each owner that still has cgroups counted.
    pub retired: BTreeMap<Owner, Counters>,
    pub containers: Vec<ContainerFiles>,
    /// `None` when no instance source answered.
    pub instances: Option<Vec<InstanceInfo>>,
    pub docker: DockerView,
    pub nginx: NginxSample,
    pub drops: Drops,
    /// Which counter families the kernel supports, and through which hooks.
    pub features: Features,
    /// Whether the traffic of cgroups outside containers (the host's own sockets, systemd
    /// services) was counted, or only containers'.
    pub host_network_counted: bool,
    /// How long reading everything took.
    pub duration: Duration,
}

/// nginx's traffic as the kernel counted it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NginxSample {
    /// The master's pid, when nginx was found.
    pub master: Option<u32>,
    /// Counters per listening port and per upstream.
    pub endpoints: Vec<(Endpoint, EndpointCounters)>,
    /// Listening ports that speak TLS.
    pub tls_ports: Vec<u16>,
    /// The requests counted per endpoint at an earlier sample, the newest that is at least
    /// [`REQUEST_RATE_SPAN`] old (or the oldest there is, early on): the base of the model's
    /// longer request rates.
    pub earlier: Option<(Instant, Vec<(Endpoint, u64)>)>,
}

/// The span of the longer request rates.
pub const REQUEST_RATE_SPAN: Duration = Duration::from_secs(10);

/// Which nginx to count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxOptions {
    /// The nginx: its master is found from its pid file, and must be that nginx's.
    pub control: crate::nginx::NginxControl,
    pub ports: Vec<u16>,
    pub tls_ports: Vec<u16>,
    /// Which hooks follow its bytes.
    pub byte_hooks: ByteHooks,
}

/// How the collector starts.
pub struct CollectorOptions {
    pub nginx: NginxOptions,
    /// bpffs directory to pin the kernel maps in; `None` for private maps.
    pub pin_dir: Option<PathBuf>,
    /// Makes the LXD source, or `None` to recognise containers by cgroup only. Called once
    /// the kernel programs are attached: a start refused for want of privilege touches
    /// nothing else.
    pub instances: Option<Box<dyn FnOnce() -> Box<dyn InstanceSource>>>,
    /// Makes the Docker Engine's source, or `None` to recognise Docker containers by cgroup
    /// only; called when `instances` is.
    pub docker: Option<Box<dyn FnOnce() -> Box<dyn DockerSource>>>,
    /// Count the network traffic of every socket on the host, not only containers'.
    pub count_host_network: bool,
}

/// Reads the kernel counters, cgroupfs, the host and LXD.
pub struct Collector {
    kernel: KernelCounters,
    layout: CgroupLayout,
    cgroups: CgroupResolver,
    instances: Option<Box<dyn InstanceSource>>,
    /// Whether the instance source answered last time, to log outages once.
    instances_up: Option<bool>,
    docker: Option<Box<dyn DockerSource>>,
    nginx: NginxOptions,
    /// What the kernel follows now, and why nginx was not found last time (logged once).
    nginx_target: NginxTarget,
    nginx_missing: Option<String>,
    /// The master's pid and its network namespace's cookie, asked once per master.
    nginx_netns: Option<(u32, u64)>,
    /// Recent request counts per endpoint, oldest first, covering [`REQUEST_RATE_SPAN`].
    nginx_requests: VecDeque<(Instant, Vec<(Endpoint, u64)>)>,
    count_host_network: bool,
    /// Counters of removed cgroups, kept with their owners.
    retired: retired::Retired,
    /// Container cgroups the network programs could not attach to (logged once each).
    network_failed: BTreeSet<PathBuf>,
}

impl Collector {
    /// Loads and attaches the kernel programs.
    pub fn start(options: CollectorOptions) -> Result<Self, CollectError> {
        let layout = CgroupLayout::detect()?;
        let mut kernel = KernelCounters::load(&LoadOptions {
            cgroup_root: layout.unified.clone(),
            pin_dir: options.pin_dir,
            count_host_network: options.count_host_network,
            nginx_byte_hooks: options.nginx.byte_hooks,
        })?;
        kernel.set_nginx_ports(&options.nginx.ports, &options.nginx.tls_ports)?;
        tracing::info!(
            unified = %layout.unified.display(),
            hybrid = layout.is_hybrid(),
            network = if options.count_host_network { "every socket" } else { "containers only" },
            "kernel programs attached"
        );
        Ok(Self {
            cgroups: CgroupResolver::new(layout.unified.clone()),
            layout,
            kernel,
            instances: options.instances.map(|make| make()),
            instances_up: None,
            docker: options.docker.map(|make| make()),
            nginx: options.nginx,
            nginx_target: NginxTarget::default(),
            nginx_missing: None,
            nginx_netns: None,
            nginx_requests: VecDeque::new(),
            count_host_network: options.count_host_network,
            retired: retired::Retired::default(),
            network_failed: BTreeSet::new(),
        })
    }

    /// Reads every counter once. Counters of cgroups that are gone are removed from the
    /// kernel maps here.
    pub fn sample(&mut self) -> Result<Sample, CollectError> {
        let started = Instant::now();
        let master = self.follow_nginx()?;
        let tops = containers::discover(&self.layout);
        self.count_network_of(&tops);
        let mut kernel = self.kernel.sample()?;
        let ids: HashSet<u64> = kernel
            .cpu_ns
            .keys()
            .chain(kernel.net.keys())
            .chain(kernel.io.keys())
            .copied()
            .collect();
        let mut paths = self.cgroups.resolve(ids.iter().copied());
        let gone: Vec<u64> = ids
            .iter()
            .filter(|id| !paths.contains_key(id))
            .copied()
            .collect();
        let mut counters_of = |id| Counters {
            cpu_ns: kernel.cpu_ns.remove(&id).unwrap_or(0),
            net: kernel.net.remove(&id).unwrap_or_default(),
            io: kernel.io.remove(&id).unwrap_or_default(),
        };
        if !gone.is_empty() {
            tracing::debug!(count = gone.len(), "keeping counters of removed cgroups");
            for &id in &gone {
                self.retired.retire(id, counters_of(id));
            }
            self.kernel.forget(&gone)?;
        }
        let mut cgroups: Vec<CgroupSample> = ids
            .into_iter()
            .filter_map(|id| {
                let path = paths.remove(&id)?;
                Some(CgroupSample {
                    id,
                    owner: Owner::of(&path).0,
                    path,
                    counters: counters_of(id),
                })
            })
            .collect();
        cgroups.sort_by(|a, b| a.path.cmp(&b.path));
        self.retired.alive(&cgroups);

        let instances = self.read_instances();
        let docker = self
            .docker
            .as_mut()
            .map_or(DockerView::Absent, |source| source.view());
        let containers = self.container_files(tops, &cgroups, instances.as_deref(), &docker);
        let taken = Instant::now();
        let earlier = self.remember_requests(taken, &kernel.nginx);
        Ok(Sample {
            taken,
            wall: SystemTime::now(),
            host: HostSample::read()?,
            cgroups,
            retired: self.retired.totals().clone(),
            containers,
            instances,
            docker,
            nginx: NginxSample {
                master,
                endpoints: kernel.nginx,
                tls_ports: self.nginx.tls_ports.clone(),
                earlier,
            },
            drops: kernel.drops,
            features: self.kernel.features().clone(),
            host_network_counted: self.count_host_network,
            duration: started.elapsed(),
        })
    }

    /// Keeps the request counts of this sample; returns the base for the longer rates.
    fn remember_requests(
        &mut self,
        taken: Instant,
        endpoints: &[(Endpoint, EndpointCounters)],
    ) -> Option<(Instant, Vec<(Endpoint, u64)>)> {
        let history = &mut self.nginx_requests;
        // Keep one reading at least a span old, and nothing older than that one.
        while history
            .get(1)
            .is_some_and(|(at, _)| taken.saturating_duration_since(*at) >= REQUEST_RATE_SPAN)
        {
            history.pop_front();
        }
        let earlier = history.front().cloned();
        let requests = endpoints.iter().map(|(e, c)| (*e, c.requests)).collect();
        history.push_back((taken, requests));
        earlier
    }

    /// Finds nginx's processes and has the kernel follow them; returns the master's pid.
    fn follow_nginx(&mut self) -> Result<Option<u32>, CollectError> {
        let found = nginx::find(&self.nginx.control, "/proc".as_ref()).and_then(|found| {
            let dir = self
                .layout
                .unified
                .join(found.cgroup.trim_start_matches('/'));
            let id = fs::metadata(&dir)
                .map_err(|_| nginx::NginxFindError::NoCgroup { pid: found.master })?
                .ino();
            let netns_cookie = match self.nginx_netns {
                Some((master, cookie)) if master == found.master => cookie,
                _ => nginx::netns_cookie(found.master)?,
            };
            Ok((found, id, dir, netns_cookie))
        });
        let (target, master) = match found {
            Ok((found, cgroup_id, cgroup_dir, netns_cookie)) => {
                self.nginx_netns = Some((found.master, netns_cookie));
                if self.nginx_missing.take().is_some() || self.nginx_target.cgroup_id == 0 {
                    tracing::info!(
                        master = found.master,
                        cgroup = %found.cgroup,
                        processes = found.tgids.len(),
                        "counting nginx's connections and requests"
                    );
                }
                let target = NginxTarget {
                    cgroup_id,
                    cgroup_dir,
                    netns_cookie,
                    tgids: found.tgids,
                };
                (target, Some(found.master))
            }
            Err(error) => {
                let error = error.to_string();
                if self.nginx_missing.as_ref() != Some(&error) {
                    tracing::warn!(%error, "nginx not found: its traffic is not counted until it is");
                    self.nginx_missing = Some(error);
                }
                (NginxTarget::default(), None)
            }
        };
        if target != self.nginx_target {
            match self.kernel.follow_nginx(&target) {
                Ok(()) => self.nginx_target = target,
                // nginx moved or stopped since it was found: the next interval tries again.
                Err(error @ KernelError::Cgroup { .. }) => {
                    tracing::warn!(%error, "nginx's connections are not followed yet");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(master)
    }

    /// Keeps the network programs attached to exactly the containers (LXC and Docker) among
    /// `tops`, unless they count the whole host.
    fn count_network_of(&mut self, tops: &[(Owner, String)]) {
        if self.count_host_network {
            return;
        }
        let dirs: Vec<PathBuf> = tops
            .iter()
            .filter(|(owner, _)| owner.is_container())
            .map(|(_, top)| self.layout.unified.join(top.trim_start_matches('/')))
            .collect();
        let failed = self.kernel.count_network_of(&dirs);
        for (dir, error) in &failed {
            if !self.network_failed.contains(dir) {
                tracing::warn!(%error, "a container's network traffic is not counted until this is fixed");
            }
        }
        self.network_failed = failed.into_iter().map(|(dir, _)| dir).collect();
    }

    fn read_instances(&mut self) -> Option<Vec<InstanceInfo>> {
        let source = self.instances.as_mut()?;
        let result = source.instances();
        let up = result.is_ok();
        if self.instances_up != Some(up) {
            match &result {
                Ok(instances) => tracing::info!(count = instances.len(), "LXD answers"),
                Err(error) => tracing::warn!(
                    %error,
                    "LXD unavailable: containers are recognised by cgroup only until it answers"
                ),
            }
            self.instances_up = Some(up);
        }
        result.ok()
    }

    /// cgroupfs figures for every container that has a cgroup.
    fn container_files(
        &self,
        discovered: Vec<(Owner, String)>,
        cgroups: &[CgroupSample],
        instances: Option<&[InstanceInfo]>,
        docker: &DockerView,
    ) -> Vec<ContainerFiles> {
        let mut tops: BTreeMap<Owner, String> = discovered.into_iter().collect();
        for cgroup in cgroups.iter().filter(|c| c.owner != Owner::Host) {
            if !tops.contains_key(&cgroup.owner) {
                tops.insert(cgroup.owner.clone(), Owner::of(&cgroup.path).1);
            }
        }
        tops.into_iter()
            .map(|(owner, top)| {
                let init_pid = match &owner {
                    Owner::Lxc(name) => instances
                        .and_then(|all| all.iter().find(|i| &i.name == name))
                        .and_then(|instance| instance.pid),
                    Owner::Docker(id) => docker.container(id).and_then(|c| c.pid),
                    Owner::Service(_) | Owner::Host => None,
                };
                let summary = containers::processes(&self.layout, &top);
                ContainerFiles {
                    memory: containers::memory(&self.layout, &top),
                    processes: summary.count,
                    frozen: containers::is_frozen(&self.layout, &top),
                    uptime_s: init_pid.or(summary.first_pid).and_then(process_uptime_s),
                    owner,
                    top,
                }
            })
            .collect()
    }
}

/// Seconds since process `pid` started, from `/proc/PID/stat` and `/proc/uptime`.
fn process_uptime_s(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the parenthesised command name, which may contain spaces.
    let start_ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    Some((uptime as u64).saturating_sub(start_ticks / ticks_per_s))
}
