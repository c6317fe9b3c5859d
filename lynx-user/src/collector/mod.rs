//! Collectors: everything lynx reads from the kernel, cgroupfs, procfs and LXD, turned into
//! [`Sample`]s of cumulative counters. Rates, sums per container and percentages are the
//! model's job.
pub mod btf;
pub mod cgroupfs;
pub mod containers;
pub mod host;
pub mod kernel;
pub mod lxd_instances;
pub mod preflight;

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use cgroupfs::{CgroupError, CgroupLayout, CgroupResolver};
use containers::{MemoryUsage, Owner};
use host::{HostError, HostSample};
use kernel::{Drops, KernelCounters, KernelError, LoadOptions};
use lynx_common::{IoCounters, NetCounters};

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

/// Kernel counters of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSample {
    /// cgroup v2 id (inode number of its directory).
    pub id: u64,
    /// Path relative to the v2 hierarchy's root, starting with `/`.
    pub path: String,
    /// The container (or host) it belongs to, classified once here from `path`.
    pub owner: Owner,
    /// Nanoseconds on CPU since the kernel counters started.
    pub cpu_ns: u64,
    pub net: NetCounters,
    pub io: IoCounters,
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
}

/// A source of instance information that may be unreachable for a while.
pub trait InstanceSource {
    /// The instances, or why they cannot be had now.
    fn instances(&mut self) -> Result<Vec<InstanceInfo>, String>;
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
    pub containers: Vec<ContainerFiles>,
    /// `None` when no instance source answered.
    pub instances: Option<Vec<InstanceInfo>>,
    pub drops: Drops,
    /// How long reading everything took.
    pub duration: Duration,
}

/// How the collector starts.
pub struct CollectorOptions {
    /// bpffs directory to pin the kernel maps in; `None` for private maps.
    pub pin_dir: Option<PathBuf>,
    /// LXD, or `None` to recognise containers by cgroup only.
    pub instances: Option<Box<dyn InstanceSource>>,
}

/// Reads the kernel counters, cgroupfs, the host and LXD.
pub struct Collector {
    kernel: KernelCounters,
    layout: CgroupLayout,
    cgroups: CgroupResolver,
    instances: Option<Box<dyn InstanceSource>>,
    /// Whether the instance source answered last time, to log outages once.
    instances_up: Option<bool>,
}

impl Collector {
    /// Loads and attaches the kernel programs.
    pub fn start(options: CollectorOptions) -> Result<Self, CollectError> {
        let layout = CgroupLayout::detect()?;
        let kernel = KernelCounters::load(&LoadOptions {
            cgroup_root: layout.unified.clone(),
            pin_dir: options.pin_dir,
        })?;
        tracing::info!(
            unified = %layout.unified.display(),
            hybrid = layout.is_hybrid(),
            "kernel programs attached"
        );
        Ok(Self {
            cgroups: CgroupResolver::new(layout.unified.clone()),
            layout,
            kernel,
            instances: options.instances,
            instances_up: None,
        })
    }

    /// Reads every counter once. Counters of cgroups that are gone are removed from the
    /// kernel maps here.
    pub fn sample(&mut self) -> Result<Sample, CollectError> {
        let started = Instant::now();
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
        if !gone.is_empty() {
            tracing::debug!(count = gone.len(), "forgetting counters of removed cgroups");
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
                    cpu_ns: kernel.cpu_ns.remove(&id).unwrap_or(0),
                    net: kernel.net.remove(&id).unwrap_or_default(),
                    io: kernel.io.remove(&id).unwrap_or_default(),
                })
            })
            .collect();
        cgroups.sort_by(|a, b| a.path.cmp(&b.path));

        let instances = self.read_instances();
        let containers = self.container_files(&cgroups, instances.as_deref());
        Ok(Sample {
            taken: Instant::now(),
            wall: SystemTime::now(),
            host: HostSample::read()?,
            cgroups,
            containers,
            instances,
            drops: kernel.drops,
            duration: started.elapsed(),
        })
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
        cgroups: &[CgroupSample],
        instances: Option<&[InstanceInfo]>,
    ) -> Vec<ContainerFiles> {
        let mut tops: BTreeMap<Owner, String> =
            containers::discover(&self.layout).into_iter().collect();
        for cgroup in cgroups.iter().filter(|c| c.owner != Owner::Host) {
            if !tops.contains_key(&cgroup.owner) {
                tops.insert(cgroup.owner.clone(), Owner::of(&cgroup.path).1);
            }
        }
        tops.into_iter()
            .map(|(owner, top)| {
                let init_pid = instances
                    .and_then(|all| all.iter().find(|i| i.name == owner.name()))
                    .and_then(|instance| instance.pid);
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
