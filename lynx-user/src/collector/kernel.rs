//! The kernel side: loads the embedded eBPF object, attaches its programs and reads its maps.
use std::collections::HashMap;

use aya::{
    EbpfError, EbpfLoader,
    maps::{MapError, PerCpuArray, PerCpuHashMap},
    programs::{
        BtfTracePoint, PerfEvent, Program, ProgramError,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use lynx_common::{
    CGROUP_CPU_MAP, CPU_CLOCK_PROGRAM, CPU_SLICE_MAP, CpuSlice, CpuTime, DROP_CGROUP_CPU_FULL,
    DROPS_MAP, SCHED_SWITCH_PROGRAM, SCHED_SWITCH_TRACEPOINT, TASK_RUNTIME_OFFSET_GLOBAL,
};

use super::{
    btf::{Btf, BtfError},
    preflight::{self, PreflightError},
};

/// How often the cpu-clock program charges the running task on each CPU: the CPU time of a
/// task that is never switched out lags by at most 1/100 s, and 100 wake-ups a second per
/// CPU cost nothing measurable.
const CPU_CLOCK_HZ: u64 = 100;

/// The eBPF object built from `lynx-ebpf` (see `build.rs`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lynx.bpf.o"));

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
}

/// Counts of events the kernel programs could not record, since they were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// CPU time not charged because the cgroup map was full.
    pub cgroup_cpu_map_full: u64,
}

/// Lynx's programs, loaded and attached; detached when dropped.
pub struct KernelCounters {
    ebpf: aya::Ebpf,
    /// The last CPU totals handed out, which later reads never go below (see
    /// [`Self::cgroup_cpu_ns`]).
    cpu_floor: HashMap<u64, u64>,
}

impl KernelCounters {
    /// Checks privileges and kernel features, then loads and attaches every program.
    pub fn load() -> Result<Self, KernelError> {
        preflight::check_privileges()?;
        preflight::check_btf(std::path::Path::new("/sys"))?;
        let task_runtime_offset = u64::from(
            Btf::from_kernel()?.member_offset("task_struct", &["se", "sum_exec_runtime"])?,
        );
        let mut ebpf = EbpfLoader::new()
            .override_global(TASK_RUNTIME_OFFSET_GLOBAL, &task_runtime_offset, true)
            .load(EBPF_OBJECT)?;

        let kernel_btf = aya::Btf::from_sys_fs().map_err(EbpfError::from)?;
        let sched_switch: &mut BtfTracePoint = program(&mut ebpf, SCHED_SWITCH_PROGRAM)?;
        sched_switch
            .load(SCHED_SWITCH_TRACEPOINT, &kernel_btf)
            .map_err(|error| match error {
                ProgramError::Btf(_) => PreflightError::MissingFeature {
                    feature: format!("tracepoint sched/{SCHED_SWITCH_TRACEPOINT}"),
                    evidence: "not in the kernel's BTF".into(),
                }
                .into(),
                error => program_error(SCHED_SWITCH_PROGRAM)(error),
            })?;
        sched_switch
            .attach()
            .map_err(program_error(SCHED_SWITCH_PROGRAM))?;

        let cpu_clock: &mut PerfEvent = program(&mut ebpf, CPU_CLOCK_PROGRAM)?;
        cpu_clock.load().map_err(program_error(CPU_CLOCK_PROGRAM))?;
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
        Ok(Self {
            ebpf,
            cpu_floor: HashMap::new(),
        })
    }

    /// Nanoseconds on CPU per cgroup v2 id since the programs were loaded, summed over CPUs.
    ///
    /// The total is the cgroup map plus each CPU's pending time. The two are read one after
    /// the other while the kernel moves pending time into the map, so one read can miss up
    /// to one sample period per CPU; a total therefore never goes below what an earlier call
    /// returned, and the time missed shows up in the next read.
    pub fn cgroup_cpu_ns(&mut self) -> Result<HashMap<u64, u64>, KernelError> {
        let map_error = |name| move |source| KernelError::Map { name, source };
        let map: PerCpuHashMap<_, u64, CpuTime> = self
            .map(CGROUP_CPU_MAP)?
            .try_into()
            .map_err(map_error(CGROUP_CPU_MAP))?;
        let mut totals = map
            .iter()
            .map(|entry| {
                let (cgroup_id, per_cpu) = entry.map_err(map_error(CGROUP_CPU_MAP))?;
                Ok((cgroup_id, per_cpu.iter().map(|t| t.on_cpu_ns).sum()))
            })
            .collect::<Result<HashMap<u64, u64>, KernelError>>()?;

        let slices: PerCpuArray<_, CpuSlice> = self
            .map(CPU_SLICE_MAP)?
            .try_into()
            .map_err(map_error(CPU_SLICE_MAP))?;
        for slice in slices.get(&0, 0).map_err(map_error(CPU_SLICE_MAP))?.iter() {
            if slice.pending_ns > 0 {
                *totals.entry(slice.cgroup_id).or_default() += slice.pending_ns;
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
