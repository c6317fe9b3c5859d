//! `cargo xtask`: set-up, build, run, test and bench Lynx, each one command on a fresh host.
mod bench;
mod build;
mod kernel_matrix;
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
    /// kernel matrix (the tests that need no LXD, in VMs of Debian's 6.1 and 6.12 kernels).
    Test {
        /// Run only this part (CI runs both).
        #[arg(long, value_enum)]
        only: Option<build::Part>,
        /// Arguments passed to the test binaries, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build in release and measure Lynx against baselines in the same run.
    Bench,
}

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
            build::run_checked(std::process::Command::new(lynx).args(args))
        }
        Command::Test { args, only } => {
            let toolchain = setup::setup(setup::TEST_PACKAGES)?;
            build::test_all(&toolchain, &args, only)
        }
        Command::Bench => {
            let toolchain = setup::setup(&[setup::TEST_PACKAGES, setup::BENCH_PACKAGES].concat())?;
            let built = build::build_all(&toolchain, build::Profile::Release)?;
            bench::run(&built)
        }
    }
}
