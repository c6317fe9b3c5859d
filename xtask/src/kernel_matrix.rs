//! The kernel matrix: the privileged tests that need no LXD daemon, run inside virtual machines
//! that boot the kernels LXD hosts run, Debian 12's stock 6.1 and its 6.12, pure cgroup v2.
//!
//! Each kernel is Debian's own package, the newest apt offers of its series, downloaded with
//! `apt-get download` and unpacked under `target/kernel-matrix/` (never committed; kept as a
//! cache). virtme-ng (PyPI, pinned, in a venv there too) boots it in qemu under software
//! emulation (KVM hangs the guest on these machines), one emulated CPU a guest, the guests
//! side by side, with the host's root filesystem shared
//! read-only, a virtio disk for the block I/O test and a directory the guest writes its test
//! output to. The guest loads its kernel's modules from the unpacked package (`modprobe -d`):
//! the host has none of them and its root is read-only in the guest.
use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::command::{output_of, run_checked, workspace_root};

/// The kernels of the matrix: a name for the series and the pattern of its package name.
const KERNELS: [(&str, &str); 2] = [
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$"),
];
/// virtme-ng, pinned: the version whose options and guest set-up were verified here.
const VIRTME_NG: &str = "virtme-ng==1.42";
/// The test binaries (of `lynx-tests`) the guests run.
pub const GUEST_TESTS: [&str; 1] = ["guest_kernel"];
/// Modules of the guest kernel the tests need: the test's disk, its veth pairs, and the
/// socket listing the daemon asks for (`sock_diag` for TCP).
const GUEST_MODULES: [&str; 3] = ["virtio_blk", "veth", "tcp_diag"];
/// Serial of the virtio disk the block I/O test writes to.
const DISK_SERIAL: &str = "lynxio";
/// Size of that disk: room for the test's 64 MiB.
const DISK_BYTES: u64 = 96 << 20;
/// How long one guest may take from boot to its last test. Emulated, with the host's two CPUs
/// shared with the other guest, nginx's 20,000 requests alone have taken 23 minutes.
const GUEST_DEADLINE: Duration = Duration::from_secs(60 * 60);

/// One kernel of the matrix, unpacked.
pub struct GuestKernel {
    /// The series (`6.1`).
    pub series: &'static str,
    /// Its release (`6.1.0-57-amd64`), `uname -r` in the guest.
    pub release: String,
    /// Where the package is unpacked: `boot/vmlinuz-RELEASE`, `lib/modules/RELEASE`.
    pub root: PathBuf,
}

impl GuestKernel {
    fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
}

fn matrix_dir() -> PathBuf {
    workspace_root().join("target/kernel-matrix")
}

/// The newest package of each series, downloaded and unpacked unless it already is.
pub fn kernels() -> Result<Vec<GuestKernel>> {
    let mut updated = false;
    KERNELS
        .iter()
        .map(|&(series, pattern)| {
            let mut found = newest_package(pattern);
            if found.is_none() && !updated {
                // A fresh machine's package lists may predate the kernel, or be empty.
                run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
                updated = true;
                found = newest_package(pattern);
            }
            let package = found
                .with_context(|| format!("apt offers no kernel package matching {pattern}"))?;
            let release = package
                .strip_prefix("linux-image-")
                .expect("the pattern starts so")
                .to_owned();
            let kernel = GuestKernel {
                series,
                root: matrix_dir().join(&release),
                release,
            };
            if !kernel.vmlinuz().exists() {
                unpack(&package, &kernel.root)?;
            }
            Ok(kernel)
        })
        .collect()
}

/// The newest package whose name matches `pattern`, by version order of the names.
fn newest_package(pattern: &str) -> Option<String> {
    let found = output_of(Command::new("apt-cache").args(["search", "--names-only", pattern]))?;
    found
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
        .map(str::to_owned)
}

/// The numbers in a package name, in order: `linux-image-6.12.118+deb12-amd64` sorts after
/// `linux-image-6.12.9+deb12-amd64`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Downloads `package` and unpacks it into `root`, then indexes its modules for modprobe.
fn unpack(package: &str, root: &Path) -> Result<()> {
    let downloads = matrix_dir().join("debs");
    fs::create_dir_all(&downloads)?;
    println!("kernel matrix: downloading {package}");
    run_checked(
        Command::new("apt-get")
            .args(["download", "-qq", package])
            .current_dir(&downloads),
    )?;
    let deb = fs::read_dir(&downloads)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let partial = root.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let release = package.trim_start_matches("linux-image-");
    run_checked(Command::new("depmod").arg("-b").arg(&partial).arg(release))?;
    fs::rename(&partial, root)?;
    fs::remove_file(&deb)?;
    Ok(())
}

/// `virtme-run` from a venv of its own, made on first use.
pub fn virtme_run() -> Result<PathBuf> {
    let venv = matrix_dir().join("venv");
    let run = venv.join("bin/virtme-run");
    let pinned = venv.join(format!("{VIRTME_NG}.installed"));
    if run.exists() && pinned.exists() {
        return Ok(run);
    }
    let _ = fs::remove_dir_all(&venv);
    // Debian's own interpreter: another python3 first on PATH (pyenv's) may lack venv.
    run_checked(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
    )
    .context("python3-venv is missing: run `cargo xtask setup`")?;
    run_checked(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        VIRTME_NG,
    ]))?;
    fs::write(&pinned, b"")?;
    Ok(run)
}

/// What the guests report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuestOutcome {
    /// The test binaries' output.
    pub log: String,
    /// Whether every test binary exited 0.
    pub passed: bool,
}

/// Boots `kernel` and runs `tests` (paths of test binaries) in it with `test_args`.
pub fn run_guest(
    virtme: &Path,
    kernel: &GuestKernel,
    tests: &[PathBuf],
    test_args: &[String],
    lynx: &Path,
) -> Result<GuestOutcome> {
    let dir = matrix_dir().join("run").join(&kernel.release);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let disk = dir.join("disk.img");
    fs::File::create(&disk)?.set_len(DISK_BYTES)?;
    let log = dir.join("tests.log");
    let status = dir.join("status");
    let script = dir.join("guest.sh");
    fs::write(
        &script,
        guest_script(kernel, tests, test_args, lynx, &log, &status),
    )?;

    let mut command = Command::new(virtme);
    command
        .args([
            "--disable-kvm",
            "--mods=auto",
            "--memory",
            "2G",
            "--cpus",
            "2",
        ])
        .arg("--kimg")
        .arg(kernel.vmlinuz())
        .arg("--rwdir")
        .arg(&dir)
        .arg("--blk-disk")
        .arg(format!("{DISK_SERIAL}={}", disk.display()))
        .arg("--show-boot-console")
        .arg("--script-sh")
        .arg(format!("sh {}", script.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("+ {command:?}");
    let started = Instant::now();
    let mut guest = command.spawn().context("cannot start virtme-run")?;
    // The console's output is read on threads so that a full pipe never stalls the guest.
    let console: Vec<_> = [
        guest
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        guest
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut stream| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
    })
    .collect();
    let exited = loop {
        if let Some(exit) = guest.try_wait()? {
            break Some(exit);
        }
        if started.elapsed() > GUEST_DEADLINE {
            let _ = guest.kill();
            let _ = guest.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let console: String = console
        .into_iter()
        .map(|reader| reader.join().unwrap_or_default())
        .collect();
    let log = fs::read_to_string(&log).unwrap_or_default();
    let finished = fs::read_to_string(&status).ok();
    println!(
        "kernel matrix: {} ({}) ran {:.0} s",
        kernel.series,
        kernel.release,
        started.elapsed().as_secs_f64()
    );
    match (exited, finished) {
        (Some(_), Some(status)) => Ok(GuestOutcome {
            passed: status.trim() == "0",
            log,
        }),
        (exited, _) => bail!(
            "the {} guest ({}) {} before its tests finished; its console:\n{console}\n{log}",
            kernel.series,
            kernel.release,
            match exited {
                Some(status) => format!("exited ({status})"),
                None => format!("was stopped after {GUEST_DEADLINE:?}"),
            },
        ),
    }
}

/// The guest's script: a tmpfs `/tmp` (the root is the host's, read-only), the cgroup v2
/// controllers the tests read, the modules they need, then each test binary in turn under
/// the host's `CI`, its output to `log` and the overall result to `status`.
fn guest_script(
    kernel: &GuestKernel,
    tests: &[PathBuf],
    test_args: &[String],
    lynx: &Path,
    log: &Path,
    status: &Path,
) -> String {
    let quote = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
    let args: Vec<String> = test_args.iter().map(|a| quote(a)).collect();
    let runs: String = tests
        .iter()
        .map(|test| {
            format!(
                "{} --test-threads=1 --show-output {} || failed=1\n",
                quote(&test.display().to_string()),
                args.join(" ")
            )
        })
        .collect();
    format!(
        "exec >{log} 2>&1
set -u
failed=0
mount -t tmpfs tmpfs /tmp
echo '+cpu +io +memory +pids' > /sys/fs/cgroup/cgroup.subtree_control
modprobe -d {root} -a {modules}
disk=
for dev in /sys/block/vd*; do
  [ \"$(cat $dev/serial 2>/dev/null)\" = {DISK_SERIAL} ] && disk=/dev/${{dev##*/}}
done
echo \"guest: kernel $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control), disk $disk\"
export CI={ci} LYNX_BIN={lynx} LYNX_WORKSPACE={workspace} LYNX_GUEST_DISK=$disk RUST_BACKTRACE=1
{runs}echo $failed > {status}
",
        log = quote(&log.display().to_string()),
        root = quote(&kernel.root.display().to_string()),
        modules = GUEST_MODULES.join(" "),
        ci = quote(&std::env::var("CI").unwrap_or_default()),
        lynx = quote(&lynx.display().to_string()),
        workspace = quote(&workspace_root().display().to_string()),
        status = quote(&status.display().to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_packages_sort_by_their_numbers() {
        let mut names = [
            "linux-image-6.12.9+deb12-amd64",
            "linux-image-6.12.118+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64",
        ];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names[2], "linux-image-6.12.118+deb12-amd64");
        assert!(
            version_key("linux-image-6.1.0-57-amd64") > version_key("linux-image-6.1.0-9-amd64")
        );
    }

    #[test]
    fn the_guest_script_runs_every_test_and_records_the_outcome() {
        let kernel = GuestKernel {
            series: "6.1",
            release: "6.1.0-57-amd64".into(),
            root: "/w/target/kernel-matrix/6.1.0-57-amd64".into(),
        };
        let script = guest_script(
            &kernel,
            &[
                "/w/target/debug/deps/a-1".into(),
                "/w/t/guest_kernel-2".into(),
            ],
            &["busy".into()],
            Path::new("/w/target/debug/lynx"),
            Path::new("/run/tests.log"),
            Path::new("/run/status"),
        );
        assert!(
            script.starts_with("exec >'/run/tests.log' 2>&1\n"),
            "{script}"
        );
        assert!(
            script.contains(
                "modprobe -d '/w/target/kernel-matrix/6.1.0-57-amd64' -a virtio_blk veth"
            )
        );
        assert!(script.contains(
            "'/w/target/debug/deps/a-1' --test-threads=1 --show-output 'busy' || failed=1"
        ));
        assert!(
            script.contains(
                "'/w/t/guest_kernel-2' --test-threads=1 --show-output 'busy' || failed=1"
            )
        );
        assert!(
            script.trim_end().ends_with("echo $failed > '/run/status'"),
            "{script}"
        );
    }
}
