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

use crate::build::{command_succeeds, output_of, run_checked};

/// How the eBPF crate is compiled.
#[derive(Debug, Clone)]
pub enum Toolchain {
    /// `rustup run nightly cargo`, with nightly's own `rust-src`.
    RustupNightly,
    /// The host's `cargo` with this `rustc` (Debian's), and `RUSTC_BOOTSTRAP=1`.
    SystemRustc(PathBuf),
}

/// A Debian package and the command that shows it is installed (or, for a package that
/// brings no command, an absolute path it installs).
#[derive(Clone, Copy)]
pub struct Package {
    pub name: &'static str,
    pub provides: &'static str,
    pub why: &'static str,
}

impl Package {
    fn is_installed(&self) -> bool {
        if self.provides.starts_with('/') {
            return Path::new(self.provides).exists();
        }
        command_succeeds(Command::new("sh").args(["-c", &format!("command -v {}", self.provides)]))
    }
}

/// What the privileged tests drive.
pub const TEST_PACKAGES: &[Package] = &[
    Package {
        name: "util-linux",
        provides: "setpriv",
        why: "tests run lynx without privileges to check its error",
    },
    Package {
        name: "lxd",
        provides: "lxd",
        why: "the privileged tests run real LXD containers",
    },
    Package {
        name: "dnsmasq-base",
        provides: "dnsmasq",
        why: "LXD's managed bridge runs dnsmasq (lxd only recommends it)",
    },
    Package {
        name: "busybox-static",
        provides: "busybox",
        why: "the tests build their container image from busybox",
    },
    Package {
        name: "nginx-light",
        provides: "nginx",
        why: "the tests' load balancer (with stub_status)",
    },
    Package {
        name: "wrk",
        provides: "wrk",
        why: "the tests' HTTP load generator",
    },
    Package {
        name: "tmux",
        provides: "tmux",
        why: "the tests drive `lynx top` in a real terminal",
    },
    Package {
        name: "prometheus",
        provides: "promtool",
        why: "promtool checks lynx's /metrics output",
    },
    Package {
        name: "openssl",
        provides: "openssl",
        why: "the tests make a self-signed certificate for nginx's TLS port",
    },
    Package {
        name: "curl",
        provides: "curl",
        why: "the tests' TLS client",
    },
    Package {
        name: "iproute2",
        provides: "ip",
        why: "the tests make network namespaces and veth pairs (ip netns, ip link)",
    },
    Package {
        name: "procps",
        provides: "sysctl",
        why: "the tests turn IPv6 off in the network namespaces they make",
    },
    Package {
        name: "qemu-system-x86",
        provides: "qemu-system-x86_64",
        why: "the kernel matrix boots Debian's 6.1 and 6.12 kernels in virtual machines",
    },
    Package {
        name: "kmod",
        provides: "depmod",
        why: "the kernel matrix indexes the guest kernels' modules (depmod) and loads them in \
              the guests (modprobe)",
    },
    Package {
        name: "python3-venv",
        provides: "/usr/lib/python3.11/ensurepip",
        why: "the kernel matrix installs virtme-ng (PyPI) in a venv of Debian's python3",
    },
    Package {
        name: "file",
        provides: "file",
        why: "virtme-ng reads a guest kernel's version with file",
    },
];

/// What the benches compare against (they also drive the test rigs).
pub const BENCH_PACKAGES: &[Package] = &[Package {
    name: "bpftrace",
    provides: "bpftrace",
    why: "the bench measures bpftrace's per-cgroup counter as the peer",
}];

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
    for package in packages {
        if !package.is_installed() {
            apt.install(&[package.name], package.why)?;
        }
    }
    Ok(toolchain)
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
struct Apt {
    updated: bool,
}

impl Apt {
    fn available() -> bool {
        Path::new("/usr/bin/apt-get").exists()
    }

    fn install(&mut self, packages: &[&str], why: &str) -> Result<()> {
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
    fn llvm_major_from_rustc_verbose_version() {
        let text = "rustc 1.96.0 (ac68faa20 2026-05-25)\nbinary: rustc\nLLVM version: 22.1.8\n";
        assert_eq!(llvm_major(text), Some(22));
        assert_eq!(llvm_major("rustc 1.96.0\n"), None);
    }
}
