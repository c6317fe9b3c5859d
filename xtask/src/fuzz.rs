//! `cargo xtask fuzz`: each cargo-fuzz target of `fuzz/` (libFuzzer, with AddressSanitizer
//! and overflow checks) run for a bounded time. A crash, a panic or an input that takes over
//! [`INPUT_TIMEOUT_S`] fails the run; libFuzzer keeps the input under
//! `target/fuzz/artifacts/TARGET/`, to become a regression test next to the parser it broke.
//!
//! Corpora grow in `target/fuzz/corpus/TARGET`, seeded from `fuzz/seeds/TARGET`.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    command::{command_succeeds, output_of, run_checked, workspace_root},
    setup::Apt,
};

/// The targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: &[&str] = &[
    "http_request",
    "lxd_response",
    "lxd_events",
    "lxd_json",
    "netlink",
    "config",
];

/// How long one input may take before libFuzzer calls it a hang.
const INPUT_TIMEOUT_S: u32 = 10;
/// The cargo-fuzz release the project uses.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// A compiler that takes the nightly flags cargo-fuzz passes (`-Zsanitizer`).
pub enum FuzzCompiler {
    /// `rustup run nightly cargo`.
    RustupNightly,
    /// The host's cargo with Debian's rustc and `RUSTC_BOOTSTRAP=1`.
    Debian,
}

impl FuzzCompiler {
    fn cargo(&self) -> Command {
        let mut command = match self {
            Self::RustupNightly => {
                let mut command = Command::new("rustup");
                command.args(["run", "nightly", "cargo"]);
                command
            }
            Self::Debian => {
                let mut command = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
                command
                    .env("RUSTC", DEBIAN_RUSTC)
                    .env("RUSTC_BOOTSTRAP", "1");
                command
            }
        };
        command.current_dir(workspace_root());
        command
    }
}

/// Finds a compiler for the fuzz targets (rustup's nightly, else Debian's `rustc-web`, which
/// the eBPF build may have installed already) and installs cargo-fuzz where missing.
pub fn setup(apt: &mut Apt) -> Result<FuzzCompiler> {
    let compiler = if command_succeeds(Command::new("rustup").args([
        "run",
        "nightly",
        "rustc",
        "--version",
    ])) {
        FuzzCompiler::RustupNightly
    } else {
        if !Path::new(DEBIAN_RUSTC).exists() {
            apt.install(
                &["rustc-web"],
                "the fuzz targets need a compiler that takes -Z flags, and rustup has no nightly",
            )?;
        }
        FuzzCompiler::Debian
    };
    let installed = output_of(compiler.cargo().args(["fuzz", "--version"]));
    if !installed.is_some_and(|version| version.contains(CARGO_FUZZ_VERSION)) {
        println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 2 minutes)");
        run_checked(
            Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into())).args([
                "install",
                "--locked",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
            ]),
        )?;
    }
    Ok(compiler)
}

/// Builds every target, then runs each of `targets` (all when empty) for `seconds`.
pub fn run(compiler: &FuzzCompiler, object: &Path, seconds: u32, targets: &[String]) -> Result<()> {
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "no fuzz target {target}: the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let chosen: Vec<&str> = match targets.is_empty() {
        true => TARGETS.to_vec(),
        false => targets.iter().map(String::as_str).collect(),
    };
    let root = workspace_root();
    let fuzz = |command: &mut Command| {
        command
            .args(["fuzz"])
            .env("LYNX_EBPF_OBJECT", object)
            // Host flags mean nothing to the sanitizer build, and would rebuild it.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
    };
    let build_flags = [
        "--fuzz-dir",
        "fuzz",
        "-a",
        "--target-dir",
        "target/fuzz/build",
    ];
    let mut build = compiler.cargo();
    fuzz(&mut build);
    run_checked(build.arg("build").args(build_flags)).context("building the fuzz targets")?;
    for target in chosen {
        let corpus = root.join("target/fuzz/corpus").join(target);
        let artifacts = root.join("target/fuzz/artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let mut run = compiler.cargo();
        fuzz(&mut run);
        run.arg("run")
            .args(build_flags)
            .arg(target)
            .arg(&corpus)
            .arg(root.join("fuzz/seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1");
        run_checked(&mut run).with_context(|| {
            format!(
                "fuzz target {target} found an input that breaks it: see {}",
                artifacts.display()
            )
        })?;
        println!("fuzz: {target} ran {seconds} s without a crash");
    }
    Ok(())
}
