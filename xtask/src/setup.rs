//! Finds, or installs, a toolchain that can build the eBPF programs, plus the host packages
//! the tests and benches drive.
//!
//! Building `lynx-ebpf` needs `-Z build-std=core` and therefore the standard library's source.
//! Two routes work (see shared/TOOLCHAIN.md for what was verified):
//! - a rustup nightly with the `rust-src` component, the usual aya route;
//! - Debian's `rustc-web` + `rust-web-src` compiler and library source, used through
//!   `RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1` where rustup cannot fetch `rust-src`.
//!
//! `bpf-linker` must be built against the LLVM that the chosen compiler uses.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::command::{command_succeeds, output_of, run_checked};

/// How the eBPF crate is compiled.
#[derive(Debug, Clone)]
pub enum Toolchain {
    /// `rustup run nightly cargo`, with nightly's own `rust-src`.
    RustupNightly,
    /// The host's `cargo` with this `rustc` (Debian's), and `RUSTC_BOOTSTRAP=1`.
    SystemRustc(PathBuf),
}

/// A Debian package and the programs of it that the build, tests or benches run.
#[derive(Clone, Copy, Debug)]
pub struct Package {
    pub name: &'static str,
    /// What the suite executes from it, directly or through another program (LXD runs
    /// dnsmasq). Every program the tests and benches start is in one of these lists, which
    /// a unit test checks against their sources.
    pub programs: &'static [&'static str],
    pub why: &'static str,
}

/// What building the Debian package needs besides the eBPF toolchain (cargo-deb itself comes
/// from crates.io: `package::CARGO_DEB_VERSION`).
pub const PACKAGE_PACKAGES: &[Package] = &[
    Package {
        name: "gzip",
        programs: &["gzip"],
        why: "the man pages are packaged compressed",
    },
    Package {
        name: "dpkg-dev",
        programs: &["dpkg-shlibdeps"],
        why: "cargo-deb derives the package's library dependencies with dpkg-shlibdeps",
    },
    Package {
        name: "binutils",
        programs: &["strip", "readelf"],
        why: "cargo-deb strips the packaged binary; the package test checks it is stripped",
    },
];

/// What the privileged tests drive. Most are on every Debian host; they are listed so that
/// set-up checks them, and installs the ones a minimal host lacks.
pub const TEST_PACKAGES: &[Package] = &[
    Package {
        name: "dash",
        programs: &["sh"],
        why: "shell scripts of the tests (busy loops, a server in a network namespace)",
    },
    Package {
        name: "coreutils",
        programs: &[
            "sleep",
            "timeout",
            "id",
            "chmod",
            "chown",
            "sha256sum",
            "dd",
        ],
        why: "idle and time-bounded busy processes in test cgroups; file owners and modes, \
              and the eBPF object's hash, in the package tests; block writes in the guest tests",
    },
    Package {
        name: "libc-bin",
        programs: &["getent", "ldd"],
        why: "the package tests look up the lynx user and the binary's libraries",
    },
    Package {
        name: "dpkg",
        programs: &["dpkg", "dpkg-deb", "dpkg-query"],
        why: "set-up asks what is installed; the package tests read and install the .deb",
    },
    Package {
        name: "git",
        programs: &["git"],
        why: "the package test compares `lynx --version` with the checkout's revision",
    },
    Package {
        name: "util-linux",
        programs: &["setpriv", "flock", "taskset", "unshare"],
        why: "running lynx and lock holders unprivileged, pinning a load to one CPU, a network namespace",
    },
    Package {
        name: "mount",
        programs: &["mount", "umount"],
        why: "the bench mounts tracefs for bpftrace",
    },
    Package {
        name: "procps",
        programs: &["pgrep", "pkill", "sysctl"],
        why: "the `lynx top` test finds the process it drives; the remote test ends its user's \
              processes; the tests turn IPv6 off in the network namespaces they make",
    },
    Package {
        name: "tar",
        programs: &["tar"],
        why: "the LXD rig packs its busybox image",
    },
    Package {
        name: "lxd",
        programs: &["lxd", "lxc"],
        why: "the privileged tests run real LXD containers",
    },
    Package {
        name: "dnsmasq-base",
        programs: &["dnsmasq"],
        why: "LXD's managed bridge runs dnsmasq, which the lxd package only recommends",
    },
    Package {
        name: "btrfs-progs",
        programs: &["mkfs.btrfs", "btrfs"],
        why: "LXD formats the disk test's btrfs pool on a loop file and measures its volumes \
              with btrfs qgroups",
    },
    Package {
        name: "busybox-static",
        programs: &["busybox"],
        why: "the LXD and Docker rigs build their container images from a static busybox",
    },
    Package {
        name: "docker.io",
        programs: &["dockerd", "docker"],
        why: "the Docker rig runs a real Docker Engine of its own",
    },
    Package {
        name: "containerd",
        programs: &["containerd"],
        why: "the Docker Engine runs its containers through containerd (a hard dependency of docker.io)",
    },
    Package {
        name: "runc",
        programs: &["runc"],
        why: "containerd's container runtime (a hard dependency of docker.io)",
    },
    Package {
        name: "nginx-light",
        programs: &["nginx"],
        why: "the load balancer under test (with stub_status)",
    },
    Package {
        name: "wrk",
        programs: &["wrk"],
        why: "the HTTP load generator",
    },
    Package {
        name: "tmux",
        programs: &["tmux"],
        why: "a real terminal for `lynx top`",
    },
    Package {
        name: "prometheus",
        programs: &["promtool"],
        why: "promtool checks lynx's /metrics output",
    },
    Package {
        name: "chromium",
        programs: &["chromium"],
        why: "a real browser, headless, for the dashboard tests",
    },
    Package {
        name: "chromium-driver",
        programs: &["chromedriver"],
        why: "drives chromium over WebDriver in the dashboard tests",
    },
    Package {
        name: "openssl",
        programs: &["openssl"],
        why: "a self-signed certificate for nginx's TLS port",
    },
    Package {
        name: "g++",
        programs: &["g++"],
        why: "libfuzzer-sys compiles libFuzzer for the fuzz targets",
    },
    Package {
        name: "curl",
        programs: &["curl"],
        why: "the TLS client of the nginx tests",
    },
    Package {
        name: "lintian",
        programs: &["lintian"],
        why: "the package test checks the .deb with Debian's own checker",
    },
    Package {
        name: "systemd",
        programs: &["systemd-analyze", "systemd-tmpfiles"],
        why: "the package test verifies and scores the unit and makes its pin directory as \
              systemd does at boot (no systemd as PID 1 needed)",
    },
    Package {
        name: "adduser",
        programs: &["adduser", "deluser", "delgroup"],
        why: "the package's postinst makes the lynx user; the package tests remove it",
    },
    Package {
        name: "openssh-server",
        programs: &["sshd"],
        why: "the remote test runs a real sshd of its own on a loopback port",
    },
    Package {
        name: "openssh-client",
        programs: &["ssh", "ssh-keygen"],
        why: "`lynx --host ssh://` runs the system's ssh; the remote test makes its own keys",
    },
    Package {
        name: "passwd",
        programs: &["useradd", "userdel"],
        why: "the remote test makes (and removes) a non-root user in LXD's group",
    },
    Package {
        name: "strace",
        programs: &["strace"],
        why: "the package test traces a daemon's life to check the unit's SystemCallFilter",
    },
    Package {
        name: "man-db",
        programs: &["man"],
        why: "the package test reads `man lynx` and `man lynx-daemon`",
    },
    Package {
        name: "bash-completion",
        programs: &["/usr/share/bash-completion/bash_completion"],
        why: "the package test presses TAB after `lynx ` in a login bash, which loads it",
    },
    Package {
        name: "iproute2",
        programs: &["ip"],
        why: "the tests make network namespaces and veth pairs (ip netns, ip link)",
    },
    Package {
        name: "qemu-system-x86",
        programs: &["qemu-system-x86_64"],
        why: "the kernel matrix boots Debian's 6.1 and 6.12 kernels in virtual machines",
    },
    Package {
        name: "kmod",
        programs: &["depmod"],
        why: "the kernel matrix indexes the guest kernels' modules (depmod) and loads them in \
              the guests (modprobe)",
    },
    Package {
        name: "python3-venv",
        programs: &["/usr/lib/python3.11/ensurepip"],
        why: "the kernel matrix installs virtme-ng (PyPI) in a venv of Debian's python3",
    },
    Package {
        name: "file",
        programs: &["file"],
        why: "virtme-ng reads a guest kernel's version with file",
    },
];

/// What the benches compare against (they also drive the test rigs).
pub const BENCH_PACKAGES: &[Package] = &[Package {
    name: "bpftrace",
    programs: &["bpftrace"],
    why: "bpftrace's per-cgroup counter is the CPU-time bench's peer",
}];

/// Where set-up looks for the programs: the sbin directories too, which a user's PATH may
/// lack but the rigs use.
const SYSTEM_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_LIBRARY_SOURCE: &str = "/usr/lib/rustlib/src/rust/library";

/// Makes sure an eBPF-capable toolchain, bpf-linker and `packages` are present, installing
/// what is missing, and says which toolchain to use.
pub fn setup(packages: &[Package]) -> Result<Toolchain> {
    if !cfg!(target_os = "linux") {
        bail!("unsupported platform: Lynx builds and runs on Linux only");
    }
    if !cfg!(target_endian = "little") {
        bail!(
            "unsupported platform: Lynx builds its eBPF programs for bpfel (little-endian hosts)"
        );
    }
    let mut apt = Apt::default();
    let toolchain = find_toolchain(&mut apt)?;
    ensure_bpf_linker(&toolchain, &mut apt)?;
    ensure_packages(packages, &mut apt)?;
    Ok(toolchain)
}

/// Installs the packages that are not installed, then checks that each listed program is
/// there: a package that no longer ships a program the suite runs fails here, by name, not
/// in the middle of a test.
fn ensure_packages(packages: &[Package], apt: &mut Apt) -> Result<()> {
    // dpkg-query fails when one of them is unknown to dpkg, and still lists the others.
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
        .args(packages.iter().map(|p| p.name))
        .stderr(std::process::Stdio::null())
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    for package in packages {
        if !is_installed(&installed, package.name) {
            apt.install(&[package.name], package.why)?;
        }
    }
    let missing: Vec<String> = packages
        .iter()
        .flat_map(|p| p.programs.iter().map(move |program| (p.name, *program)))
        .filter(|(_, program)| find_program(program).is_none())
        .map(|(package, program)| format!("{program} (from {package})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "set-up installed its packages but cannot find {}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Whether `dpkg-query -W -f='${Package} ${db:Status-Status}\n'` output shows `package`
/// installed.
fn is_installed(dpkg_query: &str, package: &str) -> bool {
    dpkg_query
        .lines()
        .any(|line| line.split_once(' ') == Some((package, "installed")))
}

/// The path of `program` in [`SYSTEM_PATH`]; a program given as an absolute path is a file
/// the suite needs that is not a command (bash-completion's loader).
fn find_program(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Some(PathBuf::from(program)).filter(|path| path.exists());
    }
    SYSTEM_PATH
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

fn find_toolchain(apt: &mut Apt) -> Result<Toolchain> {
    let nightly_sysroot =
        output_of(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]));
    if let Some(sysroot) = nightly_sysroot
        && Path::new(sysroot.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
    {
        println!("setup: using rustup's nightly toolchain with rust-src");
        return Ok(Toolchain::RustupNightly);
    }
    if !(Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_LIBRARY_SOURCE).join("core").is_dir())
    {
        if !Apt::available() {
            bail!(
                "unsupported platform: building the eBPF programs needs a rustup nightly with \
                 rust-src (`rustup toolchain install nightly --component rust-src`) or Debian's \
                 rustc-web and rust-web-src packages"
            );
        }
        apt.install(
            &["rustc-web", "rust-web-src"],
            "rustup's toolchains lack rust-src, which -Z build-std=core needs for the eBPF target",
        )?;
    }
    println!("setup: using {DEBIAN_RUSTC} with Debian's library source");
    Ok(Toolchain::SystemRustc(DEBIAN_RUSTC.into()))
}

fn ensure_bpf_linker(toolchain: &Toolchain, apt: &mut Apt) -> Result<()> {
    if command_succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let mut install = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    install.args(["install", "--locked", "bpf-linker"]);
    if let Toolchain::SystemRustc(rustc) = toolchain {
        // bpf-linker must link the same LLVM major version as the compiler that emits bitcode.
        let version = output_of(Command::new(rustc).args(["--version", "--verbose"]))
            .context("cannot ask Debian's rustc for its LLVM version")?;
        let major =
            llvm_major(&version).context("rustc --version --verbose names no LLVM version")?;
        let package = format!("llvm-{major}-dev");
        if !Path::new(&format!("/usr/lib/llvm-{major}/bin/llvm-config")).exists() {
            apt.install(&[&package], "bpf-linker links against the compiler's LLVM")?;
        }
        install
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{major}"));
    }
    println!("setup: installing bpf-linker, the linker for eBPF objects (about 2 minutes)");
    run_checked(&mut install)
}

/// The LLVM major version in `rustc --version --verbose` output.
fn llvm_major(verbose_version: &str) -> Option<u32> {
    verbose_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// apt-get, updated at most once per run.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    fn available() -> bool {
        Path::new("/usr/bin/apt-get").exists()
    }

    pub fn install(&mut self, packages: &[&str], why: &str) -> Result<()> {
        if !Self::available() {
            bail!(
                "unsupported platform: {} missing and no apt-get to install it ({why})",
                packages.join(", ")
            );
        }
        println!("setup: installing {} ({why})", packages.join(", "));
        if !self.updated {
            run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
            self.updated = true;
        }
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_query_output_tells_installed_packages() {
        let output = "lxd installed\nwrk not-installed\nlxd-client config-files\n";
        assert!(is_installed(output, "lxd"));
        assert!(!is_installed(output, "wrk"));
        assert!(!is_installed(output, "lxd-client"));
        assert!(!is_installed(output, "tmux"));
    }

    /// Programs the suite runs that are not Debian packages set-up installs: the toolchain
    /// xtask runs with, what set-up builds with it, and the installer (apt).
    const TOOLCHAIN_PROGRAMS: &[&str] = &["cargo", "rustup", "bpf-linker", "apt-get", "apt-cache"];

    /// Every program the tests, benches and xtask start by name (`Command::new("...")` and the
    /// rigs' `system_command`/`require`) is in a package list, so a fresh host gets it from
    /// set-up instead of failing a test.
    #[test]
    fn every_program_the_suite_runs_is_installed_by_setup() {
        let listed: Vec<&str> = TEST_PACKAGES
            .iter()
            .chain(BENCH_PACKAGES)
            .chain(PACKAGE_PACKAGES)
            .flat_map(|p| p.programs.iter().copied())
            .chain(TOOLCHAIN_PROGRAMS.iter().copied())
            .collect();
        let root = crate::command::workspace_root();
        let mut sources = Vec::new();
        for dir in ["tests", "xtask/src"] {
            rust_files(&root.join(dir), &mut sources);
        }
        assert!(sources.len() > 10, "found the sources: {sources:?}");
        let mut unlisted = Vec::new();
        for path in &sources {
            let text = std::fs::read_to_string(path).expect("read a source file");
            for program in programs_started(&text) {
                if !listed.contains(&program) {
                    unlisted.push(format!("{program} ({})", path.display()));
                }
            }
        }
        assert!(
            unlisted.is_empty(),
            "programs the suite runs that no package list in xtask/src/setup.rs has: {unlisted:?}"
        );
    }

    #[test]
    fn program_names_are_found_in_source_text() {
        let text = r#"Command::new("tmux").arg("-V"); system_command( "lxc" ); require("wrk");
            Command::new(lynx_bin()); let s = "Command::new"; require("..."); require("a b");"#;
        assert_eq!(programs_started(text), ["tmux", "lxc", "wrk"]);
    }

    /// The string literals passed to the functions that start or require a program.
    fn programs_started(text: &str) -> Vec<&str> {
        let mut found = Vec::new();
        for call in ["Command::new(", "system_command(", "require("] {
            for (at, _) in text.match_indices(call) {
                let rest = text[at + call.len()..].trim_start();
                let Some(literal) = rest.strip_prefix('"') else {
                    continue;
                };
                let name = &literal[..literal.find('"').unwrap_or(0)];
                let is_name = name.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
                if is_name {
                    found.push(name);
                }
            }
        }
        found
    }

    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("read a source directory")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    /// The README's table of the packages set-up installs is this list, rendered.
    #[test]
    fn the_readme_lists_every_package_setup_installs() {
        let readme = std::fs::read_to_string(crate::command::workspace_root().join("README.md"))
            .expect("read README.md");
        let table = package_table();
        assert!(
            readme.contains(&table),
            "README.md must contain this table, as set-up's lists are now:\n{table}"
        );
    }

    fn package_table() -> String {
        let mut table = String::from("| package | programs | why |\n|---|---|---|\n");
        for package in TEST_PACKAGES
            .iter()
            .chain(BENCH_PACKAGES)
            .chain(PACKAGE_PACKAGES)
        {
            let programs: Vec<String> = package.programs.iter().map(|p| format!("`{p}`")).collect();
            table += &format!(
                "| `{}` | {} | {} |\n",
                package.name,
                programs.join(", "),
                package.why
            );
        }
        table
    }

    #[test]
    fn llvm_major_from_rustc_verbose_version() {
        let text = "rustc 1.96.0 (ac68faa20 2026-05-25)\nbinary: rustc\nLLVM version: 22.1.8\n";
        assert_eq!(llvm_major(text), Some(22));
        assert_eq!(llvm_major("rustc 1.96.0\n"), None);
    }
}
