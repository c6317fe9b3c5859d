//! The kernel side: loads the embedded eBPF object, attaches its programs and reads its maps.
use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    EbpfError,
    maps::MapError,
    programs::{Program, ProgramError, tp_btf::BtfTracePointLinkId},
};
use lynx_common::{
    IoCounters, NetCounters,
    http::{Endpoint, EndpointCounters},
};

mod load;
mod maps;
mod network;
mod nginx;

use self::{network::NetworkLinks, nginx::NginxSocketLinks};
use super::{
    btf::BtfError,
    features::{ByteHooks, Family, Feature, Features},
    preflight::PreflightError,
};

/// The eBPF object built from `lynx-ebpf` (see `build.rs`).
pub(super) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lynx.bpf.o"));

/// Errors of loading the programs or reading their maps.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("the embedded eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("cannot open cgroup {path} to attach to: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("cannot prepare pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("the embedded eBPF object does not parse: {0}")]
    Object(String),
    #[error(
        "this lynx was built without its eBPF programs (LYNX_EBPF_OBJECT unset): build it with \
         `cargo xtask build`"
    )]
    NoPrograms,
}

/// Counts of events the kernel programs could not record since they were loaded, because a
/// map was full (the snapshot's `kernel_drops`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drops {
    pub cgroup_cpu_map_full: u64,
    pub cgroup_net_map_full: u64,
    pub cgroup_io_map_full: u64,
    pub nginx_endpoints_full: u64,
    pub nginx_flows_full: u64,
}

/// Everything the kernel counted per cgroup v2 id, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelSample {
    pub cpu_ns: HashMap<u64, u64>,
    pub net: HashMap<u64, NetCounters>,
    pub io: HashMap<u64, IoCounters>,
    /// nginx's counters per listening port and per upstream, summed over CPUs.
    pub nginx: Vec<(Endpoint, EndpointCounters)>,
    pub drops: Drops,
}

/// The nginx whose traffic the kernel follows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NginxTarget {
    /// cgroup v2 id of its master; 0 follows nothing.
    pub cgroup_id: u64,
    /// That cgroup's directory, where the program that sees its connections attaches.
    pub cgroup_dir: PathBuf,
    /// The cookie of its network namespace.
    pub netns_cookie: u64,
    /// Its processes (master and workers).
    pub tgids: Vec<u32>,
}

/// How to load the programs.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The cgroup v2 hierarchy's mount point.
    pub cgroup_root: PathBuf,
    /// bpffs directory to pin the maps in (reusing maps already pinned there), or `None` for
    /// maps private to this process.
    pub pin_dir: Option<PathBuf>,
    /// Whether the network programs count every socket of the host (attached to the
    /// hierarchy's root) rather than only the containers handed to
    /// [`KernelCounters::count_network_of`].
    pub count_host_network: bool,
    /// Which hooks follow nginx's bytes.
    pub nginx_byte_hooks: ByteHooks,
}

/// Lynx's programs, loaded and attached; detached when dropped.
pub struct KernelCounters {
    ebpf: aya::Ebpf,
    /// The last CPU totals handed out, which later reads never go below (see
    /// [`Self::cgroup_cpu_ns`]).
    cpu_floor: HashMap<u64, u64>,
    /// The container network programs' links, per cgroup v2 id they are attached to.
    network_links: BTreeMap<u64, NetworkLinks>,
    /// Where nginx's connections are followed.
    nginx_sockets: Option<NginxSocketLinks>,
    /// The links of the `nginx_transfer_programs`, while an nginx is followed.
    nginx_transfers: Vec<(&'static str, BtfTracePointLinkId)>,
    /// The programs that follow nginx's bytes on this kernel ([`SOCKET_TRANSFER_PROGRAMS`] or
    /// [`SYSTEM_CALL_TRANSFER_PROGRAMS`]); empty when its requests are not counted.
    nginx_transfer_programs: &'static [&'static str],
    /// Every counter family's state.
    features: Features,
}

impl KernelCounters {
    /// Every counter family's state, as found at load.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Whether `family` is counted.
    pub fn counts(&self, family: Family) -> bool {
        self.features.get(&family).is_some_and(Feature::is_active)
    }
}

/// A cgroup directory, opened to attach programs to.
fn open_cgroup(dir: &Path) -> Result<fs::File, KernelError> {
    fs::File::open(dir).map_err(cgroup_error(dir))
}

fn cgroup_error(dir: &Path) -> impl Fn(io::Error) -> KernelError + '_ {
    move |source| KernelError::Cgroup {
        path: dir.to_owned(),
        source,
    }
}

/// Unloads `program`, detaching its links; one not loaded stays so.
fn unload(program: &mut Program) {
    let _ = match program {
        Program::BtfTracePoint(p) => p.unload(),
        Program::PerfEvent(p) => p.unload(),
        Program::CgroupSkb(p) => p.unload(),
        Program::SockOps(p) => p.unload(),
        Program::CgroupSock(p) => p.unload(),
        _ => Ok(()),
    };
}

fn program_error(name: &'static str) -> impl Fn(ProgramError) -> KernelError {
    move |source| KernelError::Program { name, source }
}

/// The program `name` of the object, as type `P`.
fn program<'a, P>(ebpf: &'a mut aya::Ebpf, name: &'static str) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(program_error(name))
}
