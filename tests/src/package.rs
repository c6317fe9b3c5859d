//! The Debian package installed on the test machine, and everything put back on drop.
//!
//! The installed daemon uses the default paths (`/etc/lynx`, `/run/lynx`, `/var/lib/lynx`,
//! `/sys/fs/bpf/lynx`), which no other test uses (each of theirs has its own config, pins and
//! files); tests that install the package take turns ([`InstalledPackage::install`] holds a
//! lock for the guard's life). What was at those paths before is moved aside and put back,
//! the package is purged and the `lynx` user removed if the test made them, also when the
//! test panics.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
};

use crate::{run_ok, service::Unit};

/// The package's name, and the paths its daemon uses by default.
pub const PACKAGE: &str = "lynx";
pub const CONFIG: &str = "/etc/lynx/lynx.toml";
pub const SNAPSHOT: &str = "/run/lynx/snapshot.json";
pub const HISTORY: &str = "/var/lib/lynx/history.db";
pub const PINS: &str = "/sys/fs/bpf/lynx";
/// The directories moved aside while the package is installed.
const DEFAULT_PATHS: [&str; 4] = ["/etc/lynx", "/run/lynx", "/var/lib/lynx", PINS];

/// Where Debian 12's systemd units live (`/lib` is `/usr/lib` on a merged-/usr system).
pub const UNIT_DIRS: [&str; 2] = ["/lib/systemd/system", "/usr/lib/systemd/system"];

/// One installation at a time in this process.
static TURN: Mutex<()> = Mutex::new(());

/// The path of a package `cargo xtask test` built, from `variable` (`LYNX_DEB`,
/// `LYNX_DEB_UPGRADE`).
pub fn built_package(variable: &str) -> PathBuf {
    std::env::var_os(variable)
        .unwrap_or_else(|| {
            panic!("{variable} is unset: run the package tests through `cargo xtask test`")
        })
        .into()
}

pub struct InstalledPackage {
    moved_aside: Vec<(PathBuf, PathBuf)>,
    user_existed: bool,
    mounted_bpffs: bool,
    bpffs_mode: Option<u32>,
    _turn: MutexGuard<'static, ()>,
}

impl InstalledPackage {
    /// Installs `deb` with apt-get, as an operator would.
    pub fn install(deb: &Path) -> Self {
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        assert!(
            !is_installed(),
            "a {PACKAGE} package is installed on this machine already: the test will not \
             replace it"
        );
        assert!(
            !lynx::daemon::DaemonLock::is_held(Path::new(PINS)),
            "a lynx daemon runs with the default pins ({PINS}): stop it before this test"
        );
        let moved_aside = DEFAULT_PATHS
            .iter()
            .map(Path::new)
            .filter(|path| path.exists())
            .map(|path| {
                let aside = PathBuf::from(format!(
                    "{}.lynx-test-aside-{}",
                    path.display(),
                    std::process::id()
                ));
                fs::rename(path, &aside).unwrap_or_else(|e| {
                    panic!("move {} aside to {}: {e}", path.display(), aside.display())
                });
                (path.to_owned(), aside)
            })
            .collect();
        let mut package = Self {
            moved_aside,
            user_existed: user_exists(),
            mounted_bpffs: false,
            bpffs_mode: None,
            _turn: turn,
        };
        (package.mounted_bpffs, package.bpffs_mode) = boot_bpffs();
        package.apt_install(deb);
        package
    }

    /// `apt-get install ./PACKAGE.deb`: a first install or an upgrade.
    pub fn apt_install(&self, deb: &Path) {
        apt_get(&[
            "install",
            "-y",
            "--no-install-recommends",
            &deb.display().to_string(),
        ]);
        assert!(is_installed(), "{PACKAGE} is not installed after apt-get");
    }

    /// `apt-get remove lynx`.
    pub fn remove(&self) {
        apt_get(&["remove", "-y", PACKAGE]);
    }

    /// `apt-get purge lynx`.
    pub fn purge(&self) {
        apt_get(&["purge", "-y", PACKAGE]);
    }

    /// The installed unit file and its path.
    pub fn unit(&self) -> (PathBuf, Unit) {
        let path = UNIT_DIRS
            .iter()
            .map(|dir| Path::new(dir).join("lynx.service"))
            .find(|path| path.exists())
            .expect("the package installs lynx.service");
        let unit = Unit::load(&path);
        (path, unit)
    }

    /// What the package's `tmpfiles.d` entry makes, as `systemd-tmpfiles-setup.service` does
    /// at every boot (the postinst does it only where systemd runs).
    pub fn boot_tmpfiles(&self) {
        run_ok(Command::new("systemd-tmpfiles").args(["--create", "lynx.conf"]));
    }
}

impl Drop for InstalledPackage {
    fn drop(&mut self) {
        if is_installed() {
            let _ = Command::new("apt-get")
                .args(["purge", "-y", PACKAGE])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output();
        }
        if !self.user_existed && user_exists() {
            let _ = Command::new("deluser")
                .args(["--system", "--quiet", "lynx"])
                .output();
            let _ = Command::new("delgroup")
                .args(["--system", "--quiet", "lynx"])
                .output();
        }
        for path in DEFAULT_PATHS {
            let _ = fs::remove_dir_all(path);
        }
        for (path, aside) in &self.moved_aside {
            if let Err(error) = fs::rename(aside, path) {
                eprintln!(
                    "cannot put {} back from {}: {error}",
                    path.display(),
                    aside.display()
                );
            }
        }
        if self.mounted_bpffs {
            let _ = Command::new("umount").arg(BPFFS).output();
        }
        if let Some(mode) = self.bpffs_mode {
            let _ = fs::set_permissions(BPFFS, fs::Permissions::from_mode(mode));
        }
    }
}

/// bpffs at /sys/fs/bpf as systemd mounts it at boot, mode 0700: mounted when nothing is
/// there (true), or its mode set (the mode it had, to put back).
fn boot_bpffs() -> (bool, Option<u32>) {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read mounts");
    let mounted = mounts
        .lines()
        .any(|line| line.split(' ').take(3).eq(["bpf", "/sys/fs/bpf", "bpf"]));
    if !mounted {
        run_ok(Command::new("mount").args(["-t", "bpf", "-o", "mode=700", "bpf", BPFFS]));
        return (true, None);
    }
    let mode = fs::metadata(BPFFS)
        .expect("stat bpffs")
        .permissions()
        .mode()
        & 0o7777;
    fs::set_permissions(BPFFS, fs::Permissions::from_mode(0o700)).expect("chmod bpffs");
    (false, Some(mode))
}

const BPFFS: &str = "/sys/fs/bpf";

pub fn is_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", PACKAGE])
        .output()
        .is_ok_and(|o| o.stdout == b"installed")
}

fn user_exists() -> bool {
    Command::new("getent")
        .args(["passwd", "lynx"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `apt-get ARGS`, non-interactive, which must succeed.
fn apt_get(args: &[&str]) -> String {
    run_ok(
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
