//! `cargo xtask`: set-up, build, run, test and bench Lynx, each one command on a fresh host.
mod bench;
mod build;
mod command;
mod fuzz;
mod kernel_matrix;
mod package;
mod setup;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set up, build, run, test and bench Lynx")]
struct Xtask {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building the eBPF programs needs, where it is missing.
    Setup,
    /// Set up, then build the eBPF object and every workspace crate.
    Build {
        /// Build with the release profile (target/release/lynx).
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run the daemon in the foreground (Ctrl-C stops it).
    Run {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
        /// Arguments for `lynx` instead of `daemon`, e.g. `-- snapshot --interval 2s`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, check formatting and lints, run unit and privileged tests, then the
    /// kernel matrix (the tests that need no LXD, in VMs of Debian's 6.1 and 6.12 kernels),
    /// then each fuzz target for 30 s (not when a test filter is given).
    Test {
        /// Run only this part (CI runs both).
        #[arg(long, value_enum)]
        only: Option<build::Part>,
        /// Arguments passed to the test binaries, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run each fuzz target of `fuzz/` (cargo-fuzz, libFuzzer) for a bounded time.
    Fuzz {
        /// How long to run each target, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Targets to run (all when none is named).
        targets: Vec<String>,
    },
    /// Set up, build in release and measure Lynx against baselines in the same run.
    Bench,
    /// Set up, build in release and make the Debian package, target/debian/lynx_VERSION_ARCH.deb.
    Package {
        /// The Debian revision, the part after the version's `-` [default: the metadata's, 1].
        #[arg(long)]
        revision: Option<String>,
        /// Where to write the package.
        #[arg(long, value_name = "DIR")]
        output: Option<std::path::PathBuf>,
    },
}

/// How long `cargo xtask test` runs each fuzz target.
const FUZZ_SECONDS_IN_TEST: u32 = 30;

fn main() -> ExitCode {
    match run(Xtask::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Setup => setup::setup(&[]).map(drop),
        Command::Build { release } => {
            let toolchain = setup::setup(&[])?;
            build::build_all(&toolchain, build::Profile::from_release(release)).map(drop)
        }
        Command::Run { release, args } => {
            let toolchain = setup::setup(&[])?;
            let lynx = build::build_all(&toolchain, build::Profile::from_release(release))?.lynx;
            let args = if args.is_empty() {
                vec!["daemon".to_owned()]
            } else {
                args
            };
            command::run_checked(std::process::Command::new(lynx).args(args))
        }
        Command::Test { args, only } => {
            let toolchain =
                setup::setup(&[setup::TEST_PACKAGES, setup::PACKAGE_PACKAGES].concat())?;
            let compiler = fuzz::setup(&mut setup::Apt::default())?;
            let packages = package::for_tests(&toolchain)?;
            let run = build::test_all(&toolchain, &args, only, &packages)?;
            let mut failures = run.failures;
            // A filtered run is for one test; the whole suite fuzzes too, whatever the tests
            // found, so that one run reports every part.
            if args.is_empty()
                && only != Some(build::Part::Guests)
                && let Err(error) = fuzz::run(&compiler, &run.object, FUZZ_SECONDS_IN_TEST, &[])
            {
                failures.push(format!("fuzzing ({error:#})"));
            }
            if !failures.is_empty() {
                anyhow::bail!("failed: {}", failures.join(", "));
            }
            Ok(())
        }
        Command::Fuzz { seconds, targets } => {
            let toolchain = setup::setup(&[])?;
            let compiler = fuzz::setup(&mut setup::Apt::default())?;
            let object = build::build_ebpf(&toolchain)?;
            fuzz::run(&compiler, &object, seconds, &targets)
        }
        Command::Bench => {
            let toolchain = setup::setup(&[setup::TEST_PACKAGES, setup::BENCH_PACKAGES].concat())?;
            let built = build::build_all(&toolchain, build::Profile::Release)?;
            bench::run(&built)
        }
        Command::Package { revision, output } => {
            let toolchain = setup::setup(setup::PACKAGE_PACKAGES)?;
            package::build(&toolchain)?;
            package::deb(
                revision.as_deref(),
                &output.unwrap_or_else(package::default_dir),
            )
            .map(drop)
        }
    }
}
