//! The kernel side: loads the embedded eBPF object, attaches its programs and reads its maps.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    EbpfError, EbpfLoader, Pod,
    maps::{
        Array, CgroupStorageKey, HashMap as BpfHashMap, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues,
    },
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, PerfEvent,
        Program, ProgramError, SockOps,
        cgroup_skb::CgroupSkbLinkId,
        cgroup_sock::CgroupSockLinkId,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        sock_ops::SockOpsLinkId,
        tp_btf::BtfTracePointLinkId,
    },
    util::online_cpus,
};
use lynx_common::{
    Accumulate, BIO_OPF_OFFSET_GLOBAL, BIO_QUEUE_PROGRAM, BIO_QUEUE_TRACEPOINT,
    BIO_SIZE_OFFSET_GLOBAL, CGROUP_CPU_MAP, CGROUP_IO_MAP, CGROUP_NET_MAP, CONTAINER_NET_MAP,
    CPU_CLOCK_PROGRAM, CPU_SLICE_MAP, CpuSlice, CpuTime, DROP_CGROUP_CPU_FULL, DROP_CGROUP_IO_FULL,
    DROP_CGROUP_NET_FULL, DROP_HTTP_ENDPOINTS_FULL, DROP_HTTP_FLOWS_FULL, DROPS_MAP,
    HOST_NET_EGRESS_PROGRAM, HOST_NET_INGRESS_PROGRAM, IoCounters, NET_EGRESS_ATTACH_TYPE,
    NET_EGRESS_PROGRAM, NET_INGRESS_ATTACH_TYPE, NET_INGRESS_PROGRAM, NetCounters,
    SCHED_SWITCH_PROGRAM, SCHED_SWITCH_TRACEPOINT, TASK_RUNTIME_OFFSET_GLOBAL,
    http::{
        Endpoint, EndpointCounters, FD_WALK_GLOBAL, FdWalk, HTTP_COUNTERS_MAP, HTTP_ENDPOINTS_MAP,
        HTTP_EXIT_PROGRAM, HTTP_EXIT_TRACEPOINT, HTTP_FLOWS_MAP, HTTP_PORTS_MAP, HTTP_RECV_PROGRAM,
        HTTP_RECV_TRACEPOINT, HTTP_RELEASE_PROGRAM, HTTP_SEND_PROGRAM, HTTP_SEND_TRACEPOINT,
        HTTP_SOCK_OPS_PROGRAM, HTTP_TARGET_MAP, HttpFlowEntry, HttpTarget, NGINX_FORK_PROGRAM,
        NGINX_FORK_TRACEPOINT, NGINX_TGIDS_MAP, PORT_PLAIN, PORT_TLS, TASK_TGID_OFFSET_GLOBAL,
    },
};

use super::{
    btf::{Btf, BtfError},
    features::{self, ByteHooks, BytePath, Family, Feature, Features, choose_byte_path},
    pins::pin_paths,
    preflight::{self, PreflightError},
    sockets::{self, TcpSockets},
};

/// How often the cpu-clock program charges the running task on each CPU, in nanoseconds of
/// the cpu-clock: the CPU time of a task that is never switched out lags by at most 10 ms,
/// and 100 wake-ups a second per CPU cost nothing measurable. A period rather than a
/// frequency: the kernel re-tunes a frequency event's period at every scheduler tick, which
/// a clock counting nanoseconds does not need.
const CPU_CLOCK_PERIOD_NS: u64 = 10_000_000;

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

/// A pair of network programs, each with the way of the packets it counts.
type NetworkPrograms = [(&'static str, CgroupSkbAttachType); 2];

/// The programs on containers' cgroups, which count into the attachment's cgroup storage
/// (keyed by [`NET_INGRESS_ATTACH_TYPE`] and [`NET_EGRESS_ATTACH_TYPE`]).
const CONTAINER_NETWORK_PROGRAMS: NetworkPrograms = [
    (NET_INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
    (NET_EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
];

/// The programs on the root cgroup, which count per socket cgroup.
const HOST_NETWORK_PROGRAMS: NetworkPrograms = [
    (HOST_NET_INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
    (HOST_NET_EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
];

/// The programs that follow nginx's bytes, on every socket call of the host (kernel 6.3 on) or
/// on every system call (before): attached only while an nginx is followed, so that a host
/// without one does not pay for them.
const SOCKET_TRANSFER_PROGRAMS: [&str; 2] = [HTTP_RECV_PROGRAM, HTTP_SEND_PROGRAM];
const SYSTEM_CALL_TRANSFER_PROGRAMS: [&str; 1] = [HTTP_EXIT_PROGRAM];

/// The struct fields the programs read, from the kernel's BTF; a missing one turns off the
/// family whose programs read it.
struct Offsets {
    /// `task_struct.se.sum_exec_runtime` (CPU time).
    task_runtime: Result<u32, BtfError>,
    /// `bio.bi_opf` and `bio.bi_iter.bi_size` (block I/O).
    bio: Result<(u32, u32), BtfError>,
    /// `task_struct.tgid` (nginx's processes).
    task_tgid: Result<u32, BtfError>,
    /// From a file descriptor to its socket's cookie (nginx's bytes, by system call).
    fd_walk: Result<FdWalk, BtfError>,
}

impl Offsets {
    fn read(btf: &Btf) -> Self {
        let at = |root: &str, path: &[&str]| btf.member_offset(root, path);
        let wide = |root: &str, path: &[&str]| at(root, path).map(u64::from);
        Self {
            task_runtime: at("task_struct", &["se", "sum_exec_runtime"]),
            bio: at("bio", &["bi_opf"])
                .and_then(|opf| Ok((opf, at("bio", &["bi_iter", "bi_size"])?))),
            task_tgid: at("task_struct", &["tgid"]),
            fd_walk: (|| {
                Ok(FdWalk {
                    task_files: wide("task_struct", &["files"])?,
                    files_fdt: wide("files_struct", &["fdt"])?,
                    fdt_max_fds: wide("fdtable", &["max_fds"])?,
                    fdt_fd: wide("fdtable", &["fd"])?,
                    file_inode: wide("file", &["f_inode"])?,
                    inode_mode: wide("inode", &["i_mode"])?,
                    file_private_data: wide("file", &["private_data"])?,
                    socket_sk: wide("socket", &["sk"])?,
                    sock_cookie: wide("sock", &["__sk_common", "skc_cookie"])?,
                })
            })(),
        }
    }
}

/// What loading the families needs to know.
struct Loading<'a> {
    btf: &'a Btf,
    kernel_btf: &'a aya::Btf,
    offsets: &'a Offsets,
    /// The kernel's release, named in every reason.
    release: String,
}

/// The offset if the kernel's BTF had it, else the error as the reason its family is off.
fn offset_needed<T>(offset: &Result<T, BtfError>) -> Result<(), KernelError> {
    match offset {
        Ok(_) => Ok(()),
        Err(error) => Err(PreflightError::MissingFeature {
            feature: "a struct field Lynx's programs read".into(),
            evidence: error.to_string(),
        }
        .into()),
    }
}

/// Links of network programs to one cgroup.
type NetworkLinks = Vec<(&'static str, CgroupSkbLinkId)>;

/// The programs that follow nginx's connections, attached to its cgroup.
struct NginxSocketLinks {
    cgroup_id: u64,
    /// [`HTTP_SOCK_OPS_PROGRAM`]: connections opened.
    conn: SockOpsLinkId,
    /// [`HTTP_RELEASE_PROGRAM`]: sockets closed.
    close: CgroupSockLinkId,
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
    /// Checks privileges and BTF, then loads and attaches every program the kernel supports.
    /// A counter family whose kernel features are missing is left out, logged once and
    /// reported in [`Self::features`]; only missing privileges or BTF are errors.
    pub fn load(options: &LoadOptions) -> Result<Self, KernelError> {
        if EBPF_OBJECT.is_empty() {
            return Err(KernelError::NoPrograms);
        }
        preflight::check_privileges()?;
        preflight::check_btf(Path::new("/sys"))?;
        let btf = Btf::from_kernel()?;
        let offsets = Offsets::read(&btf);
        let (task_runtime, bio_opf, bio_size, task_tgid) = (
            offsets.task_runtime.as_ref().map_or(0, |&o| u64::from(o)),
            offsets.bio.as_ref().map_or(0, |&(opf, _)| u64::from(opf)),
            offsets.bio.as_ref().map_or(0, |&(_, size)| u64::from(size)),
            offsets.task_tgid.as_ref().map_or(0, |&o| u64::from(o)),
        );
        let fd_walk = offsets.fd_walk.as_ref().copied().unwrap_or(FdWalk::UNSET);

        let mut loader = EbpfLoader::new();
        for (name, value) in [
            (TASK_RUNTIME_OFFSET_GLOBAL, &task_runtime),
            (BIO_OPF_OFFSET_GLOBAL, &bio_opf),
            (BIO_SIZE_OFFSET_GLOBAL, &bio_size),
            (TASK_TGID_OFFSET_GLOBAL, &task_tgid),
        ] {
            loader.override_global(name, value, true);
        }
        loader.override_global(FD_WALK_GLOBAL, &fd_walk, true);
        let pin_paths = match &options.pin_dir {
            Some(dir) => pin_paths(dir)?,
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(EBPF_OBJECT)?;
        if !pin_paths.is_empty() {
            tracing::info!(dir = ?options.pin_dir, "kernel maps pinned");
        }
        let kernel_btf = aya::Btf::from_sys_fs().map_err(EbpfError::from)?;
        let mut counters = Self {
            ebpf,
            cpu_floor: HashMap::new(),
            network_links: BTreeMap::new(),
            nginx_sockets: None,
            nginx_transfers: Vec::new(),
            nginx_transfer_programs: &[],
            features: Features::new(),
        };
        let loading = Loading {
            btf: &btf,
            kernel_btf: &kernel_btf,
            offsets: &offsets,
            release: features::kernel_release(),
        };
        counters.load_cpu(&loading);
        counters.load_block_io(&loading);
        counters.load_network(&loading);
        counters.load_nginx(&loading, options.nginx_byte_hooks);
        if options.count_host_network && counters.counts(Family::Network) {
            // For the daemon's lifetime: the programs hold their links and detach them when
            // dropped, so nothing needs keeping here.
            counters.attach_network(&options.cgroup_root, HOST_NETWORK_PROGRAMS)?;
        }
        Ok(counters)
    }

    /// Every counter family's state, as found at load.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Whether `family` is counted.
    pub fn counts(&self, family: Family) -> bool {
        self.features.get(&family).is_some_and(Feature::is_active)
    }

    /// Records what loading `family` through `hooks` gave, logging it once; on failure,
    /// unloads `programs`, so that nothing of a family counts without the rest of it.
    fn record(
        &mut self,
        loading: &Loading,
        family: Family,
        hooks: &[&str],
        programs: &[&'static str],
        outcome: Result<Option<String>, String>,
    ) {
        let release = &loading.release;
        let feature = match outcome {
            Ok(note) => {
                let note = note.map(|note| format!("{note} (kernel {release})"));
                tracing::info!(family = family.name(), hooks = ?hooks, note, "counting");
                Feature {
                    reason: note,
                    ..Feature::active(hooks)
                }
            }
            Err(reason) => {
                for &name in programs {
                    if let Some(program) = self.ebpf.program_mut(name) {
                        unload(program);
                    }
                }
                let reason = format!("{reason} (kernel {release})");
                tracing::warn!(
                    family = family.name(),
                    %reason,
                    "not counted: this kernel lacks what its programs need"
                );
                Feature::unavailable(hooks, reason)
            }
        };
        self.features.insert(family, feature);
    }

    /// CPU time: the context-switch tracepoint and the cpu-clock sampler on every CPU.
    fn load_cpu(&mut self, loading: &Loading) {
        let outcome = (|| {
            offset_needed(&loading.offsets.task_runtime)?;
            self.load_tracepoint(loading, SCHED_SWITCH_PROGRAM, SCHED_SWITCH_TRACEPOINT)?;
            self.attach_tracepoint(SCHED_SWITCH_PROGRAM)?;
            let cpu_clock: &mut PerfEvent = program(&mut self.ebpf, CPU_CLOCK_PROGRAM)?;
            cpu_clock.load().map_err(program_error(CPU_CLOCK_PROGRAM))?;
            let cpus = online_cpus()
                .map_err(|(_, error)| program_error(CPU_CLOCK_PROGRAM)(error.into()))?;
            for cpu in cpus {
                cpu_clock
                    .attach(
                        PerfEventConfig::Software(SoftwareEvent::CpuClock),
                        PerfEventScope::AllProcessesOneCpu { cpu },
                        SamplePolicy::Period(CPU_CLOCK_PERIOD_NS),
                        false,
                    )
                    .map_err(program_error(CPU_CLOCK_PROGRAM))?;
            }
            Ok(None)
        })()
        .map_err(|error: KernelError| error.to_string());
        self.record(
            loading,
            Family::Cpu,
            &["tp_btf/sched_switch", "perf_event/cpu-clock"],
            &[SCHED_SWITCH_PROGRAM, CPU_CLOCK_PROGRAM],
            outcome,
        );
    }

    /// Block I/O: the bio submission tracepoint.
    fn load_block_io(&mut self, loading: &Loading) {
        let outcome = (|| {
            offset_needed(&loading.offsets.bio)?;
            self.load_tracepoint(loading, BIO_QUEUE_PROGRAM, BIO_QUEUE_TRACEPOINT)?;
            self.attach_tracepoint(BIO_QUEUE_PROGRAM)?;
            Ok(None)
        })()
        .map_err(|error: KernelError| error.to_string());
        self.record(
            loading,
            Family::BlockIo,
            &["tp_btf/block_bio_queue"],
            &[BIO_QUEUE_PROGRAM],
            outcome,
        );
    }

    /// Network: the socket-buffer programs, attached later to each container's cgroup.
    fn load_network(&mut self, loading: &Loading) {
        let programs = [
            NET_INGRESS_PROGRAM,
            NET_EGRESS_PROGRAM,
            HOST_NET_INGRESS_PROGRAM,
            HOST_NET_EGRESS_PROGRAM,
        ];
        let outcome = programs
            .iter()
            .try_for_each(|&name| {
                let program: &mut CgroupSkb = program(&mut self.ebpf, name)?;
                program.load().map_err(program_error(name))
            })
            .map(|()| None)
            .map_err(|error| error.to_string());
        self.record(
            loading,
            Family::Network,
            &["cgroup_skb/ingress", "cgroup_skb/egress"],
            &programs,
            outcome,
        );
    }

    /// nginx: the connection programs, then the byte programs of the path `wanted` chooses
    /// (requests are counted on the flows the connection programs start).
    fn load_nginx(&mut self, loading: &Loading, wanted: ByteHooks) {
        const CONNECTION_PROGRAMS: [&str; 3] = [
            HTTP_SOCK_OPS_PROGRAM,
            HTTP_RELEASE_PROGRAM,
            NGINX_FORK_PROGRAM,
        ];
        let outcome = (|| {
            offset_needed(&loading.offsets.task_tgid)?;
            let sock_ops: &mut SockOps = program(&mut self.ebpf, HTTP_SOCK_OPS_PROGRAM)?;
            sock_ops
                .load()
                .map_err(program_error(HTTP_SOCK_OPS_PROGRAM))?;
            let release: &mut CgroupSock = program(&mut self.ebpf, HTTP_RELEASE_PROGRAM)?;
            release
                .load()
                .map_err(program_error(HTTP_RELEASE_PROGRAM))?;
            self.load_tracepoint(loading, NGINX_FORK_PROGRAM, NGINX_FORK_TRACEPOINT)?;
            self.attach_tracepoint(NGINX_FORK_PROGRAM)?;
            Ok(None)
        })()
        .map_err(|error: KernelError| error.to_string());
        let connections = outcome.is_ok();
        self.record(
            loading,
            Family::NginxConnections,
            &[
                "sock_ops",
                "cgroup/sock_release",
                "tp_btf/sched_process_fork",
            ],
            &CONNECTION_PROGRAMS,
            outcome,
        );

        let btf = loading.btf;
        let path = choose_byte_path(
            wanted,
            btf.has_tracepoint(HTTP_RECV_TRACEPOINT) && btf.has_tracepoint(HTTP_SEND_TRACEPOINT),
            btf.has_tracepoint(HTTP_EXIT_TRACEPOINT),
        );
        // A path the kernel lacks is reported as the one asked for (or, for `auto`, the
        // usual one).
        let shown = match (&path, wanted) {
            (Ok(path), _) => *path,
            (Err(_), ByteHooks::SystemCalls) => BytePath::SystemCalls,
            (Err(_), _) => BytePath::SocketTracepoints,
        };
        let (hooks, programs, note): (&[&str], &'static [&'static str], _) = match shown {
            BytePath::SocketTracepoints => (
                &["tp_btf/sock_recv_length", "tp_btf/sock_send_length"],
                &SOCKET_TRANSFER_PROGRAMS,
                None,
            ),
            BytePath::SystemCalls => (
                &["tp_btf/sys_exit"],
                &SYSTEM_CALL_TRANSFER_PROGRAMS,
                (wanted == ByteHooks::Auto).then(|| {
                    "no tracepoints sock_recv_length and sock_send_length (they came in 6.3): \
                     nginx's system calls are followed instead"
                        .to_owned()
                }),
            ),
        };
        let outcome = (|| {
            if !connections {
                return Err(
                    "nginx's connections are not followed, and requests are counted on them".into(),
                );
            }
            path?;
            if programs == SYSTEM_CALL_TRANSFER_PROGRAMS {
                offset_needed(&loading.offsets.fd_walk).map_err(|e| e.to_string())?;
            }
            for &name in programs {
                let tracepoint = match name {
                    HTTP_RECV_PROGRAM => HTTP_RECV_TRACEPOINT,
                    HTTP_SEND_PROGRAM => HTTP_SEND_TRACEPOINT,
                    _ => HTTP_EXIT_TRACEPOINT,
                };
                self.load_tracepoint(loading, name, tracepoint)
                    .map_err(|e| e.to_string())?;
            }
            Ok(note)
        })();
        if outcome.is_ok() {
            self.nginx_transfer_programs = programs;
        }
        self.record(loading, Family::NginxRequests, hooks, programs, outcome);
    }

    /// Loads BTF tracepoint program `name` for `tracepoint`, which must be in the kernel.
    fn load_tracepoint(
        &mut self,
        loading: &Loading,
        name: &'static str,
        tracepoint: &'static str,
    ) -> Result<(), KernelError> {
        if !loading.btf.has_tracepoint(tracepoint) {
            return Err(PreflightError::MissingFeature {
                feature: format!("tracepoint {tracepoint}"),
                evidence: "not in the kernel's BTF".into(),
            }
            .into());
        }
        program::<BtfTracePoint>(&mut self.ebpf, name)?
            .load(tracepoint, loading.kernel_btf)
            .map_err(program_error(name))
    }

    /// Attaches a loaded BTF tracepoint program for the daemon's lifetime (the program holds
    /// its link).
    fn attach_tracepoint(&mut self, name: &'static str) -> Result<(), KernelError> {
        program::<BtfTracePoint>(&mut self.ebpf, name)?
            .attach()
            .map(drop)
            .map_err(program_error(name))
    }

    /// Has the network programs count the packets of exactly the cgroup subtrees `dirs` (the
    /// containers' top cgroups): attaches to new ones and detaches from the others. Returns
    /// the cgroups it could not attach to, and why; they are tried again at the next call.
    /// A cgroup found again at the same path with a new id (a container restarted in between)
    /// is attached anew.
    pub fn count_network_of(&mut self, dirs: &[PathBuf]) -> Vec<(PathBuf, KernelError)> {
        if !self.counts(Family::Network) {
            return Vec::new();
        }
        let wanted: BTreeMap<u64, &PathBuf> = dirs
            .iter()
            .filter_map(|dir| Some((fs::metadata(dir).ok()?.ino(), dir)))
            .collect();
        let gone: Vec<u64> = self
            .network_links
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.detach_network(id);
        }
        let new: Vec<&PathBuf> = wanted
            .into_iter()
            .filter(|(id, _)| !self.network_links.contains_key(id))
            .map(|(_, dir)| dir)
            .collect();
        new.into_iter()
            .filter_map(
                |dir| match self.attach_network(dir, CONTAINER_NETWORK_PROGRAMS) {
                    Ok((id, links)) => {
                        self.network_links.insert(id, links);
                        None
                    }
                    Err(error) => Some((dir.clone(), error)),
                },
            )
            .collect()
    }

    /// Attaches both of `programs` to the cgroup at `dir`, or neither; returns the cgroup's
    /// id and the links.
    fn attach_network(
        &mut self,
        dir: &Path,
        programs: NetworkPrograms,
    ) -> Result<(u64, NetworkLinks), KernelError> {
        let cgroup = open_cgroup(dir)?;
        let id = cgroup.metadata().map_err(cgroup_error(dir))?.ino();
        let mut links = Vec::with_capacity(programs.len());
        for (name, direction) in programs {
            let program: &mut CgroupSkb = program(&mut self.ebpf, name)?;
            // Single makes a BPF link, which coexists with other programs on the cgroup and
            // its descendants; AllowMultiple is refused for links (see shared/TOOLCHAIN.md).
            match program.attach(&cgroup, direction, CgroupAttachMode::Single) {
                Ok(link) => links.push((name, link)),
                Err(error) => {
                    self.detach_links(links);
                    return Err(program_error(name)(error));
                }
            }
        }
        Ok((id, links))
    }

    /// Detaches the network programs from cgroup `id`.
    fn detach_network(&mut self, id: u64) {
        let links = self.network_links.remove(&id).unwrap_or_default();
        self.detach_links(links);
    }

    /// A removed cgroup has already let go of its programs, so failures are of no consequence.
    fn detach_links(&mut self, links: NetworkLinks) {
        for (name, link) in links {
            if let Ok(program) = program::<CgroupSkb>(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
    }

    /// Reads every per-cgroup counter.
    pub fn sample(&mut self) -> Result<KernelSample, KernelError> {
        Ok(KernelSample {
            cpu_ns: self.cgroup_cpu_ns()?,
            net: self.cgroup_net()?,
            io: self.per_cgroup(CGROUP_IO_MAP)?,
            nginx: self.nginx_endpoints()?,
            drops: self.drops()?,
        })
    }

    /// Sets which listening ports of nginx are followed, and which of them speak TLS.
    pub fn set_nginx_ports(&mut self, ports: &[u16], tls_ports: &[u16]) -> Result<(), KernelError> {
        let name = HTTP_PORTS_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut map: BpfHashMap<_, u32, u32> = self.map_mut(name)?.try_into().map_err(map_error)?;
        let stale: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for port in stale {
            map.remove(&port).map_err(map_error)?;
        }
        for &port in ports {
            let mode = if tls_ports.contains(&port) {
                PORT_TLS
            } else {
                PORT_PLAIN
            };
            map.insert(u32::from(port), mode, 0).map_err(map_error)?;
        }
        Ok(())
    }

    /// Follows `target`'s processes from now on. Processes the kernel added itself (children
    /// forked since) stay while they live; dead ones are removed.
    pub fn follow_nginx(&mut self, target: &NginxTarget) -> Result<(), KernelError> {
        let name = NGINX_TGIDS_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut tgids: BpfHashMap<_, u32, u32> =
            self.map_mut(name)?.try_into().map_err(map_error)?;
        let dead: Vec<u32> = tgids
            .keys()
            .filter_map(Result::ok)
            .filter(|tgid| !Path::new(&format!("/proc/{tgid}")).exists())
            .collect();
        for tgid in dead {
            tgids.remove(&tgid).map_err(map_error)?;
        }
        for &tgid in &target.tgids {
            tgids.insert(tgid, 1, 0).map_err(map_error)?;
        }
        if target.cgroup_id != 0 {
            if !self.writes_flows() {
                self.end_flows_closed_unseen(target)?;
            }
            // Before any flow can start (the connection programs attach after), so that no
            // followed connection's bytes go unseen.
            self.attach_nginx_transfers()?;
        }
        let name = HTTP_TARGET_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut array: Array<_, HttpTarget> = self.map_mut(name)?.try_into().map_err(map_error)?;
        let value = HttpTarget {
            cgroup_id: target.cgroup_id,
            netns_cookie: target.netns_cookie,
        };
        array.set(0, value, 0).map_err(map_error)?;
        self.follow_nginx_sockets(target)?;
        if target.cgroup_id == 0 {
            // Once the connection programs are gone, for the same reason.
            self.detach_nginx_transfers();
        }
        Ok(())
    }

    /// Whether any program that writes the flows or their counters is attached: the
    /// connection programs, or the byte programs (which write only for a followed nginx).
    fn writes_flows(&self) -> bool {
        self.nginx_sockets.is_some() || !self.nginx_transfers.is_empty()
    }

    /// Attaches the [`NGINX_TRANSFER_PROGRAMS`], unless they are.
    fn attach_nginx_transfers(&mut self) -> Result<(), KernelError> {
        if !self.nginx_transfers.is_empty() {
            return Ok(());
        }
        for &name in self.nginx_transfer_programs {
            let link = program::<BtfTracePoint>(&mut self.ebpf, name)?
                .attach()
                .map_err(program_error(name));
            match link {
                Ok(link) => self.nginx_transfers.push((name, link)),
                Err(error) => {
                    // Both or neither: sent bytes without received ones would be half the story.
                    self.detach_nginx_transfers();
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    fn detach_nginx_transfers(&mut self) {
        for (name, link) in std::mem::take(&mut self.nginx_transfers) {
            if let Ok(program) = program::<BtfTracePoint>(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
    }

    /// Ends the flows whose sockets closed while nothing followed nginx (a daemon restarting,
    /// or nginx lost for a while): frees their slots and counts them closed, as the programs
    /// would have, so that active connections stay right. Called only while no program writes
    /// the flows or their counters: user space cannot add to a per-CPU counter atomically.
    fn end_flows_closed_unseen(&mut self, nginx: &NginxTarget) -> Result<(), KernelError> {
        let Some(&pid) = nginx.tgids.first() else {
            return Ok(());
        };
        let sockets = match sockets::in_netns_of(pid, TcpSockets::read) {
            Ok(sockets) => sockets,
            Err(error) => {
                tracing::warn!(
                    %error,
                    "connections nginx closed while no daemon ran stay counted active"
                );
                return Ok(());
            }
        };
        let name = HTTP_FLOWS_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut flows: Array<_, HttpFlowEntry> =
            self.map_mut(name)?.try_into().map_err(map_error)?;
        let entries = flows
            .iter()
            .enumerate()
            .map(|(index, entry)| Ok((index as u32, entry.map_err(map_error)?)))
            .collect::<Result<Vec<_>, KernelError>>()?;
        let closed = closed_flows(entries, &sockets.in_use);
        for &index in &closed.entries {
            flows
                .set(index, HttpFlowEntry::default(), 0)
                .map_err(map_error)?;
        }
        let name = HTTP_COUNTERS_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut counters: PerCpuArray<_, EndpointCounters> =
            self.map_mut(name)?.try_into().map_err(map_error)?;
        for (&slot, &count) in &closed.per_slot {
            let mut values = counters.get(&slot, 0).map_err(map_error)?.to_vec();
            if let Some(first_cpu) = values.first_mut() {
                first_cpu.closed += count;
            }
            let values = PerCpuValues::try_from(values).map_err(|e| map_error(e.into()))?;
            counters.set(slot, values, 0).map_err(map_error)?;
        }
        if !closed.entries.is_empty() {
            tracing::info!(
                connections = closed.entries.len(),
                "counted nginx's connections that closed while no daemon ran as closed"
            );
        }
        Ok(())
    }

    /// Keeps the connection programs on `target`'s cgroup, and on no other.
    fn follow_nginx_sockets(&mut self, target: &NginxTarget) -> Result<(), KernelError> {
        if !self.counts(Family::NginxConnections) {
            return Ok(());
        }
        if self.nginx_sockets.as_ref().map(|links| links.cgroup_id) == Some(target.cgroup_id) {
            return Ok(());
        }
        if let Some(links) = self.nginx_sockets.take() {
            // Their cgroup may be gone, and the links with it.
            let _ = program::<SockOps>(&mut self.ebpf, HTTP_SOCK_OPS_PROGRAM)?.detach(links.conn);
            let _ =
                program::<CgroupSock>(&mut self.ebpf, HTTP_RELEASE_PROGRAM)?.detach(links.close);
        }
        if target.cgroup_id == 0 {
            return Ok(());
        }
        let cgroup = open_cgroup(&target.cgroup_dir)?;
        // Single makes BPF links, which coexist with other programs on the cgroup.
        let conn = program::<SockOps>(&mut self.ebpf, HTTP_SOCK_OPS_PROGRAM)?
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(program_error(HTTP_SOCK_OPS_PROGRAM))?;
        let close = match program::<CgroupSock>(&mut self.ebpf, HTTP_RELEASE_PROGRAM)?
            .attach(&cgroup, CgroupAttachMode::Single)
        {
            Ok(close) => close,
            Err(error) => {
                // Not one without the other: flows that never end would fill the table.
                let _ = program::<SockOps>(&mut self.ebpf, HTTP_SOCK_OPS_PROGRAM)?.detach(conn);
                return Err(program_error(HTTP_RELEASE_PROGRAM)(error));
            }
        };
        self.nginx_sockets = Some(NginxSocketLinks {
            cgroup_id: target.cgroup_id,
            conn,
            close,
        });
        Ok(())
    }

    /// nginx's counters per endpoint, summed over CPUs.
    fn nginx_endpoints(&self) -> Result<Vec<(Endpoint, EndpointCounters)>, KernelError> {
        let map_error = |name| move |source| KernelError::Map { name, source };
        let slots: BpfHashMap<_, Endpoint, u32> = self
            .map(HTTP_ENDPOINTS_MAP)?
            .try_into()
            .map_err(map_error(HTTP_ENDPOINTS_MAP))?;
        let counters: PerCpuArray<_, EndpointCounters> = self
            .map(HTTP_COUNTERS_MAP)?
            .try_into()
            .map_err(map_error(HTTP_COUNTERS_MAP))?;
        slots
            .iter()
            .map(|entry| {
                let (endpoint, slot) = entry.map_err(map_error(HTTP_ENDPOINTS_MAP))?;
                let mut total = EndpointCounters::default();
                for per_cpu in counters
                    .get(&slot, 0)
                    .map_err(map_error(HTTP_COUNTERS_MAP))?
                    .iter()
                {
                    total.accumulate(per_cpu);
                }
                Ok((endpoint, total))
            })
            .collect()
    }

    /// Removes the counters of `cgroup_ids` (cgroups that are gone) from every map.
    pub fn forget(&mut self, cgroup_ids: &[u64]) -> Result<(), KernelError> {
        self.remove::<CpuTime>(CGROUP_CPU_MAP, cgroup_ids)?;
        self.remove::<NetCounters>(CGROUP_NET_MAP, cgroup_ids)?;
        self.remove::<IoCounters>(CGROUP_IO_MAP, cgroup_ids)?;
        for id in cgroup_ids {
            self.cpu_floor.remove(id);
        }
        Ok(())
    }

    fn remove<V: Pod>(
        &mut self,
        name: &'static str,
        cgroup_ids: &[u64],
    ) -> Result<(), KernelError> {
        let map_error = |source| KernelError::Map { name, source };
        let mut map: PerCpuHashMap<_, u64, V> =
            self.map_mut(name)?.try_into().map_err(map_error)?;
        for id in cgroup_ids {
            match map.remove(id) {
                Ok(()) => {}
                // Not every map has every cgroup.
                Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(map_error(error)),
            }
        }
        Ok(())
    }

    /// Nanoseconds on CPU per cgroup v2 id since the programs were loaded, summed over CPUs.
    ///
    /// The total is the cgroup map plus each CPU's pending time and its running slice so far
    /// (as of the last cpu-clock sample). These are read one after the other while the kernel
    /// moves time between them, so one read can miss up to one sample period per CPU; a total
    /// therefore never goes below what an earlier call returned, and the time missed shows up
    /// in the next read.
    pub fn cgroup_cpu_ns(&mut self) -> Result<HashMap<u64, u64>, KernelError> {
        let map_error = |name| move |source| KernelError::Map { name, source };
        let mut totals: HashMap<u64, u64> = self
            .per_cgroup::<CpuTime>(CGROUP_CPU_MAP)?
            .into_iter()
            .map(|(id, time)| (id, time.on_cpu_ns))
            .collect();

        let slices: PerCpuArray<_, CpuSlice> = self
            .map(CPU_SLICE_MAP)?
            .try_into()
            .map_err(map_error(CPU_SLICE_MAP))?;
        for slice in slices.get(&0, 0).map_err(map_error(CPU_SLICE_MAP))?.iter() {
            let pending = slice.pending.iter().map(|p| (p.cgroup_id, p.ns));
            for (cgroup_id, ns) in pending.chain([(slice.running_cgroup_id, slice.running_ns)]) {
                if ns > 0 {
                    *totals.entry(cgroup_id).or_default() += ns;
                }
            }
        }

        for (cgroup_id, total) in &mut totals {
            let floor = self.cpu_floor.entry(*cgroup_id).or_default();
            *total = (*total).max(*floor);
            *floor = *total;
        }
        self.cpu_floor
            .retain(|cgroup_id, _| totals.contains_key(cgroup_id));
        Ok(totals)
    }

    /// Traffic per cgroup: each container's from its storage, and every cgroup's that the host
    /// programs counted.
    #[expect(
        deprecated,
        reason = "aya deprecates per-CPU cgroup storage for BPF_MAP_TYPE_CGRP_STORAGE, which is \
                  neither per CPU nor per attachment point"
    )]
    fn cgroup_net(&self) -> Result<HashMap<u64, NetCounters>, KernelError> {
        let mut net = self.per_cgroup::<NetCounters>(CGROUP_NET_MAP)?;
        let name = CONTAINER_NET_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let storage: aya::maps::PerCpuCgroupStorage<_, NetCounters> =
            self.map(name)?.try_into().map_err(map_error)?;
        for &id in self.network_links.keys() {
            let counters = net.entry(id).or_default();
            for attach_type in [NET_INGRESS_ATTACH_TYPE, NET_EGRESS_ATTACH_TYPE] {
                match storage.get(CgroupStorageKey::new(id, attach_type), 0) {
                    Ok(per_cpu) => per_cpu.iter().for_each(|value| counters.accumulate(value)),
                    // The cgroup went away since it was attached to.
                    Err(MapError::KeyNotFound) => {}
                    Err(error) => return Err(map_error(error)),
                }
            }
        }
        Ok(net)
    }

    /// A per-CPU hash map keyed by cgroup id, summed over CPUs.
    fn per_cgroup<V: Pod + Default + Accumulate>(
        &self,
        name: &'static str,
    ) -> Result<HashMap<u64, V>, KernelError> {
        let map_error = |source| KernelError::Map { name, source };
        let map: PerCpuHashMap<_, u64, V> = self.map(name)?.try_into().map_err(map_error)?;
        map.iter()
            .map(|entry| {
                let (cgroup_id, per_cpu) = entry.map_err(map_error)?;
                let mut total = V::default();
                per_cpu.iter().for_each(|value| total.accumulate(value));
                Ok((cgroup_id, total))
            })
            .collect()
    }

    /// What the kernel programs had to drop.
    fn drops(&self) -> Result<Drops, KernelError> {
        let map_error = |source| KernelError::Map {
            name: DROPS_MAP,
            source,
        };
        let map: PerCpuArray<_, u64> = self.map(DROPS_MAP)?.try_into().map_err(map_error)?;
        let total = |kind| -> Result<u64, KernelError> {
            Ok(map.get(&kind, 0).map_err(map_error)?.iter().sum())
        };
        Ok(Drops {
            cgroup_cpu_map_full: total(DROP_CGROUP_CPU_FULL)?,
            cgroup_net_map_full: total(DROP_CGROUP_NET_FULL)?,
            cgroup_io_map_full: total(DROP_CGROUP_IO_FULL)?,
            nginx_endpoints_full: total(DROP_HTTP_ENDPOINTS_FULL)?,
            nginx_flows_full: total(DROP_HTTP_FLOWS_FULL)?,
        })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, KernelError> {
        self.ebpf
            .map(name)
            .ok_or(KernelError::Missing { kind: "map", name })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, KernelError> {
        self.ebpf
            .map_mut(name)
            .ok_or(KernelError::Missing { kind: "map", name })
    }
}

/// Flows whose sockets are no longer in use.
#[derive(Debug, Default, PartialEq, Eq)]
struct ClosedFlows {
    /// Their indices in [`HTTP_FLOWS_MAP`].
    entries: Vec<u32>,
    /// How many of them each counter slot had.
    per_slot: BTreeMap<u32, u64>,
}

/// The taken entries among `flows` (index and value) whose socket is not `in_use`.
fn closed_flows(
    flows: impl IntoIterator<Item = (u32, HttpFlowEntry)>,
    in_use: &HashSet<u64>,
) -> ClosedFlows {
    let mut closed = ClosedFlows::default();
    for (index, entry) in flows {
        if entry.cookie != 0 && !in_use.contains(&entry.cookie) {
            closed.entries.push(index);
            *closed.per_slot.entry(entry.slot).or_default() += 1;
        }
    }
    closed
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_of_sockets_no_longer_in_use_are_closed_per_counter_slot() {
        let flow = |cookie, slot| HttpFlowEntry {
            cookie,
            slot,
            ..HttpFlowEntry::default()
        };
        let flows = [
            (0, flow(0, 0)),
            (7, flow(70, 1)),
            (8, flow(80, 1)),
            (9, flow(90, 2)),
            (10, flow(100, 1)),
        ];
        let in_use = HashSet::from([80, 12345]);
        assert_eq!(
            closed_flows(flows, &in_use),
            ClosedFlows {
                entries: vec![7, 9, 10],
                per_slot: BTreeMap::from([(1, 2), (2, 1)]),
            }
        );
    }
}
