//! Loading each counter family: the struct offsets its programs read from the kernel's BTF,
//! then its programs loaded and attached, or the family turned off with the reason.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use aya::{
    EbpfError, EbpfLoader,
    programs::{
        BtfTracePoint, CgroupSkb, CgroupSock, PerfEvent, SockOps,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use lynx_common::{
    BIO_OPF_OFFSET_GLOBAL, BIO_QUEUE_PROGRAM, BIO_QUEUE_TRACEPOINT, BIO_SIZE_OFFSET_GLOBAL,
    CPU_CLOCK_PROGRAM, HOST_NET_EGRESS_PROGRAM, HOST_NET_INGRESS_PROGRAM, NET_EGRESS_PROGRAM,
    NET_INGRESS_PROGRAM, SCHED_SWITCH_PROGRAM, SCHED_SWITCH_TRACEPOINT, TASK_RUNTIME_OFFSET_GLOBAL,
    http::{
        FD_WALK_GLOBAL, FdWalk, HTTP_EXIT_TRACEPOINT, HTTP_RECV_PROGRAM, HTTP_RECV_TRACEPOINT,
        HTTP_RELEASE_PROGRAM, HTTP_SEND_PROGRAM, HTTP_SEND_TRACEPOINT, HTTP_SOCK_OPS_PROGRAM,
        NGINX_FORK_PROGRAM, NGINX_FORK_TRACEPOINT, TASK_TGID_OFFSET_GLOBAL,
    },
};

use super::{
    network::HOST_NETWORK_PROGRAMS,
    nginx::{SOCKET_TRANSFER_PROGRAMS, SYSTEM_CALL_TRANSFER_PROGRAMS},
    *,
};
use crate::collector::{
    btf::{Btf, BtfError},
    features::{self, ByteHooks, BytePath, Family, Feature, Features, choose_byte_path},
    pins::pin_paths,
    preflight::{self, PreflightError},
};

/// How often the cpu-clock program charges the running task on each CPU, in nanoseconds of
/// the cpu-clock: the CPU time of a task that is never switched out lags by at most 10 ms,
/// and 100 wake-ups a second per CPU cost nothing measurable. A period rather than a
/// frequency: the kernel re-tunes a frequency event's period at every scheduler tick, which
/// a clock counting nanoseconds does not need.
pub(super) const CPU_CLOCK_PERIOD_NS: u64 = 10_000_000;

/// The struct fields the programs read, from the kernel's BTF; a missing one turns off the
/// family whose programs read it.
pub(super) struct Offsets {
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
    pub(super) fn read(btf: &Btf) -> Self {
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
pub(super) struct Loading<'a> {
    btf: &'a Btf,
    kernel_btf: &'a aya::Btf,
    offsets: &'a Offsets,
    /// The kernel's release, named in every reason.
    release: String,
}

/// The offset if the kernel's BTF had it, else the error as the reason its family is off.
pub(super) fn offset_needed<T>(offset: &Result<T, BtfError>) -> Result<(), KernelError> {
    match offset {
        Ok(_) => Ok(()),
        Err(error) => Err(PreflightError::MissingFeature {
            feature: "a struct field Lynx's programs read".into(),
            evidence: error.to_string(),
        }
        .into()),
    }
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

    /// Records what loading `family` through `hooks` gave, logging it once; on failure,
    /// unloads `programs`, so that nothing of a family counts without the rest of it.
    pub(super) fn record(
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
    pub(super) fn load_cpu(&mut self, loading: &Loading) {
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
    pub(super) fn load_block_io(&mut self, loading: &Loading) {
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
    pub(super) fn load_network(&mut self, loading: &Loading) {
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
    pub(super) fn load_nginx(&mut self, loading: &Loading, wanted: ByteHooks) {
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
    pub(super) fn load_tracepoint(
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
    pub(super) fn attach_tracepoint(&mut self, name: &'static str) -> Result<(), KernelError> {
        program::<BtfTracePoint>(&mut self.ebpf, name)?
            .attach()
            .map(drop)
            .map_err(program_error(name))
    }
}
