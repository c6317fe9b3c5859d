//! Building the eBPF object and the workspace, and running the checks and tests.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    command::{run_checked, workspace_root},
    kernel_matrix,
    setup::Toolchain,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Release,
}

impl Profile {
    pub fn from_release(release: bool) -> Self {
        if release { Self::Release } else { Self::Dev }
    }

    fn cargo_args(self) -> &'static [&'static str] {
        match self {
            Self::Dev => &[],
            Self::Release => &["--release"],
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::Dev => "debug",
            Self::Release => "release",
        }
    }
}

/// `cargo` as the running toolchain knows it.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Compiles `lynx-ebpf` for bpfel and returns the object's path. Always the release profile:
/// debug builds of eBPF code do not pass the verifier.
pub fn build_ebpf(toolchain: &Toolchain) -> Result<PathBuf> {
    let target_dir = workspace_root().join("target/ebpf");
    let mut command = match toolchain {
        Toolchain::RustupNightly => {
            let mut command = Command::new("rustup");
            command
                .args(["run", "nightly", "cargo"])
                .current_dir(workspace_root());
            command
        }
        Toolchain::SystemRustc(rustc) => {
            let mut command = cargo();
            // A stable compiler accepts -Z flags only with RUSTC_BOOTSTRAP.
            command.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
            command
        }
    };
    command
        .args(["build", "--package", "lynx-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .env("CARGO_TARGET_DIR", &target_dir)
        // BTF in the object (func_info/line_info): the kernel requires it for programs with
        // bpf_loop callbacks (docs/design/nginx-counting.md). Instruction set v3 (kernel
        // 5.12+): compare-and-swap for the flow table, 32-bit jumps.
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            "-C link-arg=--btf -C target-cpu=v3",
        )
        // Host flags and wrappers mean nothing to the eBPF target.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run_checked(&mut command).context("building the eBPF programs (lynx-ebpf)")?;
    Ok(target_dir.join("bpfel-unknown-none/release/lynx"))
}

/// What [`build_all`] made.
pub struct Built {
    /// The eBPF object embedded into `lynx`.
    pub object: PathBuf,
    /// The `lynx` binary.
    pub lynx: PathBuf,
}

/// Builds the eBPF object, then every workspace crate with it embedded.
pub fn build_all(toolchain: &Toolchain, profile: Profile) -> Result<Built> {
    let object = build_ebpf(toolchain)?;
    run_checked(
        cargo()
            .args(["build", "--workspace", "--exclude", "lynx-ebpf"])
            .args(profile.cargo_args())
            .env("LYNX_EBPF_OBJECT", &object),
    )?;
    let lynx = workspace_root()
        .join("target")
        .join(profile.dir())
        .join("lynx");
    Ok(Built { object, lynx })
}

/// Which tests [`test_all`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Formatting, lints, unit and privileged tests on this host's kernel.
    Host,
    /// The kernel matrix: the tests that need no LXD in virtual machines of other kernels.
    Guests,
}

/// What a test run built, and which of its parts failed.
pub struct TestRun {
    pub object: PathBuf,
    pub failures: Vec<String>,
}

/// Formatting, lints, every unit and privileged test (with `env` set for them), then the
/// kernel matrix; `only` one part. An error is a run that could not go on (a build, fmt or
/// clippy); failed tests are in the returned run's `failures`.
pub fn test_all(
    toolchain: &Toolchain,
    test_args: &[String],
    only: Option<Part>,
    env: &[(&str, PathBuf)],
) -> Result<TestRun> {
    let Built { object, lynx } = build_all(toolchain, Profile::Dev)?;
    let started = Instant::now();
    let mut totals = TestTotals::default();
    let mut failures = Vec::new();
    if only != Some(Part::Guests) && !host_tests(&object, &lynx, test_args, env, &mut totals)? {
        failures.push("host tests".to_owned());
    }
    let host_time = started.elapsed();
    if only != Some(Part::Host) {
        kernel_matrix(&object, &lynx, test_args, &mut totals, &mut failures)?;
    }
    let matrix_time = started.elapsed() - host_time;
    println!(
        "tests took {:.0} s: host {:.0} s, kernel matrix {:.0} s",
        started.elapsed().as_secs_f64(),
        host_time.as_secs_f64(),
        matrix_time.as_secs_f64()
    );
    // One closing line for the whole run, whatever order the test binaries ran in.
    println!("{} passed, {} failed", totals.passed, totals.failed);
    if totals.passed == 0 {
        failures.push("no test ran".to_owned());
    }
    Ok(TestRun { object, failures })
}

/// Formatting, lints, then every unit and privileged test on this host, with `env` set for
/// them; false when a test failed.
fn host_tests(
    object: &Path,
    lynx: &Path,
    test_args: &[String],
    env: &[(&str, PathBuf)],
    totals: &mut TestTotals,
) -> Result<bool> {
    run_checked(cargo().args(["fmt", "--all", "--check"]))
        .context("cargo fmt found unformatted code")?;
    // The kernel programs are linted with the rest, built for the host as an ordinary program
    // (see lynx-ebpf/src/main.rs): clippy's lints do not depend on the target.
    run_checked(
        cargo()
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--features",
                "lynx-tests/guest",
                "--",
                "-D",
                "warnings",
            ])
            .env("LYNX_EBPF_OBJECT", object),
    )
    .context("clippy found problems")?;
    let mut test = cargo();
    test.args([
        "test",
        "--workspace",
        "--exclude",
        "lynx-ebpf",
        "--no-fail-fast",
        "--",
    ])
    .args(test_args)
    .env("LYNX_EBPF_OBJECT", object)
    .env("LYNX_BIN", lynx)
    .env("LYNX_WORKSPACE", workspace_root())
    .envs(env.iter().map(|(name, value)| (name, value)))
    .stdout(Stdio::piped());
    println!("+ {test:?}");
    let mut child = test.spawn().context("cannot start cargo test")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    Ok(child.wait()?.success())
}

/// Runs the guest test binaries in a virtual machine of each kernel of the matrix, all at
/// once (see `kernel_matrix::run_guest` for each guest's CPUs and memory). A guest that does
/// not finish counts as a failed test.
fn kernel_matrix(
    object: &Path,
    lynx: &Path,
    test_args: &[String],
    totals: &mut TestTotals,
    failures: &mut Vec<String>,
) -> Result<()> {
    let tests = guest_test_binaries(object)?;
    let kernels = kernel_matrix::kernels()?;
    let virtme = kernel_matrix::virtme_run()?;
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let guests: Vec<_> = kernels
            .iter()
            .map(|kernel| {
                let (virtme, tests) = (&virtme, &tests);
                scope
                    .spawn(move || kernel_matrix::run_guest(virtme, kernel, tests, test_args, lynx))
            })
            .collect();
        guests
            .into_iter()
            .map(|guest| guest.join().expect("a guest's thread does not panic"))
            .collect()
    });
    for (kernel, outcome) in kernels.iter().zip(outcomes) {
        let what = format!("kernel {} ({})", kernel.series, kernel.release);
        match outcome {
            Ok(outcome) => {
                for line in outcome.log.lines() {
                    println!("[{}] {line}", kernel.series);
                    totals.add(line);
                }
                if !outcome.passed {
                    failures.push(what);
                }
            }
            Err(error) => {
                println!("{what}: {error:#}");
                totals.failed += 1;
                failures.push(what);
            }
        }
    }
    Ok(())
}

/// Builds the test binaries the guests run (`lynx-tests` with its `guest` feature) and
/// returns their paths.
fn guest_test_binaries(object: &Path) -> Result<Vec<PathBuf>> {
    let mut build = cargo();
    build
        .args([
            "test",
            "-p",
            "lynx-tests",
            "--features",
            "guest",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .env("LYNX_EBPF_OBJECT", object)
        .stdout(Stdio::piped());
    for name in kernel_matrix::GUEST_TESTS {
        build.args(["--test", name]);
    }
    println!("+ {build:?}");
    let output = build.output().context("cannot start cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the guest tests failed: {}", output.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        if let Some(executable) = message["executable"].as_str()
            && kernel_matrix::GUEST_TESTS.contains(&name)
        {
            found.push(PathBuf::from(executable));
        }
    }
    if found.len() != kernel_matrix::GUEST_TESTS.len() {
        bail!(
            "cargo built {} of the guest tests {:?}",
            found.len(),
            kernel_matrix::GUEST_TESTS
        );
    }
    Ok(found)
}

/// Sums of libtest's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    fn add(&mut self, line: &str) {
        let Some(result) = line.strip_prefix("test result: ") else {
            return;
        };
        let count = |label: &str| -> u64 {
            result
                .split(';')
                .find_map(|part| {
                    let part = part.trim();
                    let part = part
                        .strip_prefix("ok. ")
                        .or(part.strip_prefix("FAILED. "))
                        .unwrap_or(part);
                    part.strip_suffix(label)
                })
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        self.passed += count(" passed");
        self.failed += count(" failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_totals_sum_libtest_result_lines() {
        let mut totals = TestTotals::default();
        for line in [
            "test result: ok. 21 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "running 2 tests",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.9s",
        ] {
            totals.add(line);
        }
        assert_eq!(
            totals,
            TestTotals {
                passed: 22,
                failed: 1
            }
        );
    }
}
