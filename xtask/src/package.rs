//! `cargo xtask package`: the Debian package, `target/debian/lynx_VERSION_ARCH.deb`.
//!
//! cargo-deb (from crates.io, at [`CARGO_DEB_VERSION`]) assembles it from
//! `[package.metadata.deb]` in lynx-user/Cargo.toml and packaging/debian/: the release binary
//! with its eBPF object embedded, the unit with its maintainer-script snippets, the commented
//! config as a conffile, copyright and changelog. The man pages and completions are generated
//! here by the binary itself (`lynx generate`), so they always match its command line and are
//! never kept in git.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    build::{self, Profile},
    command::{command_succeeds, output_of, run_checked, workspace_root},
    setup::Toolchain,
};

/// The cargo-deb release this packaging is written for.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Where cargo-deb takes the generated files from (`target/release/package/` in the metadata).
fn assets_dir() -> PathBuf {
    workspace_root().join("target/release/package")
}

/// Builds the release binary and what is generated from it, ready for [`deb`].
pub fn build(toolchain: &Toolchain) -> Result<()> {
    let built = build::build_all(toolchain, Profile::Release)?;
    let dir = assets_dir();
    let _ = fs::remove_dir_all(&dir);
    run_checked(Command::new(&built.lynx).arg("generate").arg(&dir))?;
    // Debian ships man pages gzipped; -n leaves the name and time out, so the same pages
    // make the same package.
    let pages: Vec<PathBuf> = fs::read_dir(dir.join("man"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    run_checked(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))
}

/// Packages what [`build`] made into `out_dir`, with Debian `revision` instead of the
/// metadata's (e.g. a higher one to test an upgrade), and returns the .deb's path.
pub fn deb(revision: Option<&str>, out_dir: &Path) -> Result<PathBuf> {
    ensure_cargo_deb()?;
    fs::create_dir_all(out_dir)?;
    let mut command = cargo_deb();
    command
        .args(["deb", "--package", "lynx-user", "--no-build", "--output"])
        .arg(out_dir);
    if let Some(revision) = revision {
        command.args(["--deb-revision", revision]);
    }
    println!("+ {command:?}");
    let output = command.output().context("cannot start cargo-deb")?;
    if !output.status.success() {
        bail!(
            "cargo deb failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // cargo-deb prints the path of the package it wrote as its last line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = stdout
        .lines()
        .rev()
        .find(|line| line.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb named no .deb: {stdout}"))?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// The packages the privileged tests install, as the environment they read them from: the
/// release package (`LYNX_DEB`) and the same build with a higher revision
/// (`LYNX_DEB_UPGRADE`), to install over it as an upgrade.
pub fn for_tests(toolchain: &Toolchain) -> Result<Vec<(&'static str, PathBuf)>> {
    build(toolchain)?;
    // Upgrade first: every cargo-deb run deletes the other versions' packages it finds in
    // target/debian/.
    let upgrade = deb_upgrade()?;
    let deb = deb(None, &default_dir())?;
    Ok(vec![("LYNX_DEB", deb), ("LYNX_DEB_UPGRADE", upgrade)])
}

/// The upgrade package, apart from `target/debian/` so that `lynx_*.deb` there names one.
fn deb_upgrade() -> Result<PathBuf> {
    deb(Some(UPGRADE_REVISION), &default_dir().join("upgrade-test"))
}

/// Sorts after the metadata's revision `1` (dpkg: `1` < `1+upgrade1`).
const UPGRADE_REVISION: &str = "1+upgrade1";

/// The default output directory, `target/debian/`.
pub fn default_dir() -> PathBuf {
    workspace_root().join("target/debian")
}

fn cargo_deb() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Installs cargo-deb at [`CARGO_DEB_VERSION`] unless that version is there.
fn ensure_cargo_deb() -> Result<()> {
    let installed = output_of(cargo_deb().args(["deb", "--version"]));
    if installed.is_some_and(|v| v.split_whitespace().any(|word| word == CARGO_DEB_VERSION)) {
        return Ok(());
    }
    println!("setup: installing cargo-deb {CARGO_DEB_VERSION}, which builds the Debian package");
    run_checked(cargo_deb().args([
        "install",
        "--locked",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
    ]))?;
    if !command_succeeds(cargo_deb().args(["deb", "--version"])) {
        bail!("cargo-deb {CARGO_DEB_VERSION} was installed but `cargo deb` does not run");
    }
    Ok(())
}
