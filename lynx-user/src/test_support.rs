//! Helpers shared by the unit tests.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// A directory of its own for one test, removed afterwards, also when the test fails.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `lynx-{name}-PID` in the temporary directory, emptied first; `name` must be unique
    /// among the tests of the process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lynx-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One process in a fake procfs at `proc`: its `stat` (name and parent), `cmdline`,
/// `status` (owned by this test's user), cgroup v2 path and, when given, executable.
pub fn fake_process(
    proc: &Path,
    (pid, comm, ppid): (u32, &str, u32),
    cmdline: &str,
    cgroup: &str,
    exe: Option<&Path>,
) {
    let process = proc.join(pid.to_string());
    fs::create_dir_all(&process).expect("create fake process");
    fs::write(
        process.join("stat"),
        format!("{pid} ({comm}) S {ppid} 1 1 0 -1 4194560 0 0 0 0\n"),
    )
    .expect("write stat");
    fs::write(process.join("cmdline"), format!("{cmdline}\0")).expect("write cmdline");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    fs::write(
        process.join("status"),
        format!("Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
    )
    .expect("write status");
    fs::write(process.join("cgroup"), format!("1:cpu:/x\n0::{cgroup}\n")).expect("write cgroup");
    if let Some(exe) = exe {
        std::os::unix::fs::symlink(exe, process.join("exe")).expect("link exe");
    }
}

/// An nginx to control under `dir`: a binary file, a prefix, a main config and a pid file
/// naming `master`; and the title its master has when started from them.
pub fn fake_nginx(dir: &Path, master: u32) -> (crate::nginx::NginxControl, String) {
    let binary = dir.join("sbin/nginx");
    fs::create_dir_all(dir.join("sbin")).expect("create sbin");
    fs::write(&binary, "").expect("write the fake binary");
    let control = crate::nginx::NginxControl {
        binary,
        main_config: dir.join("conf/nginx.conf"),
        prefix: Some(dir.join("conf")),
        pid_file: dir.join("nginx.pid"),
        test_timeout: std::time::Duration::from_secs(5),
    };
    fs::write(&control.pid_file, format!("{master}\n")).expect("write the pid file");
    let title = format!(
        "nginx: master process {} -p {} -c nginx.conf",
        control.binary.display(),
        dir.join("conf").display()
    );
    (control, title)
}
