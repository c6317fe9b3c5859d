//! `cargo xtask bench`: Lynx measured against a peer or a baseline in the same run, reported
//! as ratios, and written to `target/bench/results.json`.
use std::{
    io::{Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    programs::{ProgramInfo, loaded_programs},
    sys::{Stats, enable_stats},
};
use serde_json::json;

use crate::{build::Built, command::workspace_root};

/// Pipe round trips per measurement: each is at least two context switches.
const ROUND_TRIPS: u32 = 200_000;
/// Measurements of each side, alternated so that drift in the machine hits both alike.
const ROUNDS: usize = 3;
/// The peer: bpftrace's idiomatic per-cgroup counter on the same tracepoint.
const BPFTRACE_PROGRAM: &str = "tracepoint:sched:sched_switch { @[cgroup] = count(); }";
/// `BPF_PROG_TYPE_TRACEPOINT` in the kernel's uapi: what bpftrace's program is.
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
/// Where bpftrace looks for tracepoints.
const TRACEFS: &str = "/sys/kernel/tracing";
/// Lynx's sched_switch program as the kernel lists it (names are cut to 15 bytes).
const LYNX_PROGRAM_NAME: &str = "lynx_sched_swit";

/// The benches that drive the test rigs, each a binary of `tests/src/bin/`.
const RIG_BENCHES: [&str; 5] = [
    "bench_containers",
    "bench_nginx",
    "bench_byte_hooks",
    "bench_control",
    "bench_web",
];

pub fn run(built: &Built) -> Result<()> {
    sched_switch_cost(&built.lynx)?;
    for bench in RIG_BENCHES {
        rig_bench(built, bench)?;
    }
    Ok(())
}

/// One bench of `tests/src/bin/` (the LXD and nginx rigs are there); its result line is merged
/// into the results file.
fn rig_bench(built: &Built, name: &str) -> Result<()> {
    let mut bench = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    bench
        .current_dir(workspace_root())
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "lynx-tests",
            "--bin",
            name,
        ])
        .env("LYNX_EBPF_OBJECT", &built.object)
        .env("LYNX_BIN", &built.lynx)
        .stdout(Stdio::piped());
    println!("+ {bench:?}");
    let output = bench.spawn()?.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        bail!("{name} failed: {}", output.status);
    }
    let result = stdout
        .lines()
        .find_map(|line| line.strip_prefix("bench-result: "))
        .with_context(|| format!("{name} printed no result line"))?;
    write_results(serde_json::from_str(result)?)
}

/// The kernel cost per context switch of Lynx's sched_switch program against bpftrace's.
fn sched_switch_cost(lynx: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benches load eBPF programs: run `cargo xtask bench` as root");
    }
    // BPF_ENABLE_STATS flips the same switch as the sysctl kernel.bpf_stats_enabled, and
    // flips it back when this descriptor closes, even if the bench fails.
    let _stats = enable_stats(Stats::RunTime).context("cannot enable BPF run-time statistics")?;
    // bpftrace finds tracepoints in tracefs; Lynx itself does not need it.
    let _tracefs = TracefsMount::ensure()?;

    let snapshot = std::env::temp_dir().join("lynx-bench-snapshot.json");
    let mut lynx_costs = Vec::new();
    let mut bpftrace_costs = Vec::new();
    for round in 1..=ROUNDS {
        let lynx_daemon = || {
            Command::new(lynx)
                .args(["daemon", "--output"])
                .arg(&snapshot)
                .stderr(Stdio::null())
                .spawn()
        };
        let lynx_cost = measure("lynx", lynx_daemon, |p| {
            p.name_as_str() == Some(LYNX_PROGRAM_NAME)
        })?;
        let bpftrace = || {
            Command::new("bpftrace")
                .args(["-e", BPFTRACE_PROGRAM])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let bpftrace_cost = measure("bpftrace", bpftrace, |p| {
            p.program_type() as u32 == BPF_PROG_TYPE_TRACEPOINT
        })?;
        println!(
            "bench sched_switch round {round}: lynx {:.1} ns/event ({} events), bpftrace {:.1} ns/event ({} events)",
            lynx_cost.ns_per_event,
            lynx_cost.events,
            bpftrace_cost.ns_per_event,
            bpftrace_cost.events
        );
        lynx_costs.push(lynx_cost.ns_per_event);
        bpftrace_costs.push(bpftrace_cost.ns_per_event);
    }
    let _ = std::fs::remove_file(&snapshot);

    let (lynx_ns, bpftrace_ns) = (median(&mut lynx_costs), median(&mut bpftrace_costs));
    let ratio = lynx_ns / bpftrace_ns;
    println!(
        "bench sched_switch: median over {ROUNDS} rounds of {ROUND_TRIPS} pipe round trips: \
         lynx {lynx_ns:.1} ns/event, bpftrace {bpftrace_ns:.1} ns/event, ratio {ratio:.2} \
         (target <= 0.50: {})",
        if ratio <= 0.5 { "met" } else { "NOT met" }
    );
    write_results(json!({
        "sched_switch_cost": {
            "load": format!("{ROUND_TRIPS} pipe round trips between two threads, {ROUNDS} rounds, median"),
            "lynx_ns_per_event": lynx_ns,
            "bpftrace_ns_per_event": bpftrace_ns,
            "ratio": ratio,
            "target_ratio_at_most": 0.5,
        }
    }))
}

/// Average cost per run of one program under the context-switch load.
struct Cost {
    ns_per_event: f64,
    events: u64,
}

/// Starts a tool, finds the new program it loaded that `is_it` picks, and reads that
/// program's run time and run count across the context-switch load.
fn measure(
    what: &str,
    start: impl FnOnce() -> std::io::Result<Child>,
    is_it: impl Fn(&ProgramInfo) -> bool,
) -> Result<Cost> {
    let before: Vec<u32> = programs().map(|p| p.id()).collect();
    let mut tool = ToolGuard(start().with_context(|| format!("cannot start {what}"))?);
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        if let Some(program) = programs().find(|p| !before.contains(&p.id()) && is_it(p)) {
            break program.id();
        }
        if let Some(status) = tool.0.try_wait()? {
            bail!("{what} exited before loading its program: {status}");
        }
        if Instant::now() > deadline {
            bail!("{what} loaded no program within 60 s");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let stats = || -> Result<(Duration, u64)> {
        let program = programs()
            .find(|p| p.id() == id)
            .with_context(|| format!("{what}'s program {id} went away"))?;
        Ok((program.run_time(), program.run_count()))
    };
    let (time_before, count_before) = stats()?;
    context_switch_load(ROUND_TRIPS)?;
    let (time_after, count_after) = stats()?;
    let events = count_after - count_before;
    Ok(Cost {
        ns_per_event: (time_after - time_before).as_nanos() as f64 / events.max(1) as f64,
        events,
    })
}

fn programs() -> impl Iterator<Item = ProgramInfo> {
    loaded_programs().filter_map(Result::ok)
}

/// Two threads passing one byte back and forth over pipes: every read blocks, so every
/// round trip switches context at least twice.
fn context_switch_load(round_trips: u32) -> Result<()> {
    let (mut ping_rx, mut ping_tx) = std::io::pipe()?;
    let (mut pong_rx, mut pong_tx) = std::io::pipe()?;
    let echo = thread::spawn(move || -> std::io::Result<()> {
        let mut byte = [0u8];
        for _ in 0..round_trips {
            ping_rx.read_exact(&mut byte)?;
            pong_tx.write_all(&byte)?;
        }
        Ok(())
    });
    let mut byte = [0u8];
    for _ in 0..round_trips {
        ping_tx.write_all(&byte)?;
        pong_rx.read_exact(&mut byte)?;
    }
    echo.join().expect("echo thread does not panic")?;
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A tool under measurement: interrupted (as Ctrl-C would) and reaped on drop.
struct ToolGuard(Child);

impl Drop for ToolGuard {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tracefs, mounted for the bench when the host had not mounted it; unmounted on drop.
struct TracefsMount(bool);

impl TracefsMount {
    fn ensure() -> Result<Self> {
        if Path::new(TRACEFS).join("events").exists() {
            return Ok(Self(false));
        }
        crate::command::run_checked(
            Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]),
        )?;
        Ok(Self(true))
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if self.0 {
            let _ = Command::new("umount").arg(TRACEFS).status();
        }
    }
}

/// Merges `results` into `target/bench/results.json`.
fn write_results(results: serde_json::Value) -> Result<()> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    if let serde_json::Value::Object(new) = results {
        all.extend(new);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&all)?)?;
    println!("bench: results in {}", path.display());
    Ok(())
}
