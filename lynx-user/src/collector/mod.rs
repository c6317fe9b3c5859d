//! Collectors: everything lynx reads from the kernel, cgroupfs and procfs, turned into
//! [`Sample`]s of cumulative counters. Rates and percentages are the model's job.
pub mod btf;
pub mod cgroupfs;
pub mod host;
pub mod kernel;
pub mod preflight;

use std::time::{Instant, SystemTime};

use cgroupfs::{CgroupError, CgroupLayout, CgroupResolver};
use host::{HostError, HostSample};
use kernel::{Drops, KernelCounters, KernelError};

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

/// Cumulative CPU time of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSample {
    /// cgroup v2 id (inode number of its directory).
    pub id: u64,
    /// Path relative to the v2 hierarchy's root, starting with `/`.
    pub path: String,
    /// Nanoseconds on CPU since the kernel counters started.
    pub cpu_ns: u64,
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
    pub drops: Drops,
}

/// Reads the kernel counters and the host.
pub struct Collector {
    kernel: KernelCounters,
    cgroups: CgroupResolver,
}

impl Collector {
    /// Loads and attaches the kernel programs.
    pub fn start() -> Result<Self, CollectError> {
        let layout = CgroupLayout::detect()?;
        let kernel = KernelCounters::load()?;
        tracing::info!(
            unified = %layout.unified.display(),
            hybrid = layout.is_hybrid(),
            "kernel programs attached"
        );
        Ok(Self {
            kernel,
            cgroups: CgroupResolver::new(layout.unified),
        })
    }

    /// Reads every counter once.
    pub fn sample(&mut self) -> Result<Sample, CollectError> {
        let cpu = self.kernel.cgroup_cpu_ns()?;
        let mut paths = self.cgroups.resolve(cpu.keys().copied());
        let mut cgroups: Vec<CgroupSample> = cpu
            .into_iter()
            .filter_map(|(id, cpu_ns)| {
                Some(CgroupSample {
                    id,
                    path: paths.remove(&id)?,
                    cpu_ns,
                })
            })
            .collect();
        cgroups.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Sample {
            taken: Instant::now(),
            wall: SystemTime::now(),
            host: HostSample::read()?,
            cgroups,
            drops: self.kernel.drops()?,
        })
    }
}
