//! The kernel side: loads the embedded eBPF object, attaches its programs and reads its maps.
use std::collections::HashMap;

use aya::{
    Ebpf, EbpfError,
    maps::{MapError, PerCpuArray, PerCpuHashMap},
    programs::{
        PerfEvent, Program, ProgramError, RawTracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use lynx_common::{
    CGROUP_CPU_MAP, CPU_CLOCK_PROGRAM, CpuTime, DROP_CGROUP_CPU_FULL, DROPS_MAP,
    SCHED_SWITCH_PROGRAM, SCHED_SWITCH_TRACEPOINT,
};

use super::preflight::{self, PreflightError};

/// The eBPF object built from `lynx-ebpf` (see `build.rs`).
/// How often the cpu-clock program charges the running task on each CPU: the CPU time of a
/// task that is never switched out lags by at most 1/100 s, and 100 wake-ups a second per
/// CPU cost nothing measurable.
const CPU_CLOCK_HZ: u64 = 100;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lynx.bpf.o"));

/// Errors of loading the programs or reading their maps.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
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
}

/// Counts of events the kernel programs could not record, since they were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// CPU time not charged because the cgroup map was full.
    pub cgroup_cpu_map_full: u64,
}

/// Lynx's programs, loaded and attached; detached when dropped.
pub struct KernelCounters {
    ebpf: Ebpf,
}

impl KernelCounters {
    /// Checks privileges and kernel features, then loads and attaches every program.
    pub fn load() -> Result<Self, KernelError> {
        preflight::check_privileges()?;
        preflight::check_btf(std::path::Path::new("/sys"))?;
        let mut ebpf = Ebpf::load(EBPF_OBJECT)?;

        let sched_switch: &mut RawTracePoint = program(&mut ebpf, SCHED_SWITCH_PROGRAM)?;
        sched_switch
            .attach(SCHED_SWITCH_TRACEPOINT)
            .map_err(|error| match error {
                ProgramError::SyscallError(ref e)
                    if e.io_error.kind() == std::io::ErrorKind::NotFound =>
                {
                    PreflightError::MissingFeature {
                        feature: format!("tracepoint sched/{SCHED_SWITCH_TRACEPOINT}"),
                        evidence: "the kernel does not know it".into(),
                    }
                    .into()
                }
                error => program_error(SCHED_SWITCH_PROGRAM)(error),
            })?;

        let cpu_clock: &mut PerfEvent = program(&mut ebpf, CPU_CLOCK_PROGRAM)?;
        let cpus =
            online_cpus().map_err(|(_, error)| program_error(CPU_CLOCK_PROGRAM)(error.into()))?;
        for cpu in cpus {
            cpu_clock
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(CPU_CLOCK_HZ),
                    false,
                )
                .map_err(program_error(CPU_CLOCK_PROGRAM))?;
        }
        Ok(Self { ebpf })
    }

    /// Nanoseconds on CPU per cgroup v2 id since the programs were loaded, summed over CPUs.
    pub fn cgroup_cpu_ns(&self) -> Result<HashMap<u64, u64>, KernelError> {
        let map_error = |source| KernelError::Map {
            name: CGROUP_CPU_MAP,
            source,
        };
        let map: PerCpuHashMap<_, u64, CpuTime> =
            self.map(CGROUP_CPU_MAP)?.try_into().map_err(map_error)?;
        map.iter()
            .map(|entry| {
                let (cgroup_id, per_cpu) = entry.map_err(map_error)?;
                Ok((cgroup_id, per_cpu.iter().map(|t| t.on_cpu_ns).sum()))
            })
            .collect()
    }

    /// What the kernel programs had to drop.
    pub fn drops(&self) -> Result<Drops, KernelError> {
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
        })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, KernelError> {
        self.ebpf
            .map(name)
            .ok_or(KernelError::Missing { kind: "map", name })
    }
}

fn program_error(name: &'static str) -> impl Fn(ProgramError) -> KernelError {
    move |source| KernelError::Program { name, source }
}

/// The program `name` of the object, as type `P`, loaded into the kernel.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, KernelError>
where
    P: LoadProgram,
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program: &mut P = ebpf
        .program_mut(name)
        .ok_or(KernelError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(program_error(name))?;
    program.load_program().map_err(program_error(name))?;
    Ok(program)
}

/// The `load` that every aya program type has, as a trait.
trait LoadProgram {
    fn load_program(&mut self) -> Result<(), ProgramError>;
}

impl LoadProgram for RawTracePoint {
    fn load_program(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl LoadProgram for PerfEvent {
    fn load_program(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}
