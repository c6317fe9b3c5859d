//! What must hold before the kernel programs can load: privileges and kernel features. Each
//! check is a plain function over text or a root directory so it is tested without root.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// `CAP_SYS_ADMIN`, which on its own also allows BPF, perf events and network programs.
const CAP_SYS_ADMIN: u32 = 21;
/// Loading the cgroup socket and packet programs (`BPF_PROG_TYPE_CGROUP_SKB`, `SOCK_OPS`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Why the kernel programs cannot be loaded on this host.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "missing privilege: {missing} (lynx needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or root, to load its eBPF programs)"
    )]
    MissingPrivilege { missing: String },
    #[error("missing kernel feature: {feature} ({evidence})")]
    MissingFeature { feature: String, evidence: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// The capabilities among those lynx needs that `CapEff` in `/proc/PID/status` text lacks,
/// named; empty when the process may load and attach the programs.
pub fn missing_capabilities(proc_status: &str) -> Vec<&'static str> {
    let effective = proc_status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|&(cap, _)| !has(cap))
    .map(|(_, name)| name)
    .collect()
}

/// Fails with the missing capabilities of this process.
pub fn check_privileges() -> Result<(), PreflightError> {
    let path = Path::new("/proc/self/status");
    let status = fs::read_to_string(path).map_err(|source| PreflightError::Read {
        path: path.to_owned(),
        source,
    })?;
    match missing_capabilities(&status).as_slice() {
        [] => Ok(()),
        missing => Err(PreflightError::MissingPrivilege {
            missing: missing.join(", "),
        }),
    }
}

/// Fails naming the kernel's missing BTF, looked for under `sys` (normally `/sys`). Lynx's
/// programs are loaded against it; a missing tracepoint shows only when attaching.
pub fn check_btf(sys: &Path) -> Result<(), PreflightError> {
    let vmlinux = sys.join("kernel/btf/vmlinux");
    if vmlinux.exists() {
        return Ok(());
    }
    Err(PreflightError::MissingFeature {
        feature: "BTF (CONFIG_DEBUG_INFO_BTF)".into(),
        evidence: format!("{} not found", vmlinux.display()),
    })
}

/// `error`, naming the capability that was missing when it is a refusal (EACCES, EPERM), and
/// `what` needed it.
pub fn needing(error: io::Error, capability: &str, what: &str) -> io::Error {
    match error.kind() {
        io::ErrorKind::PermissionDenied => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{what} needs {capability}: {error}"),
        ),
        _ => error,
    }
}

/// Where bpffs is conventionally mounted.
const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at `/sys/fs/bpf` when `pin_dir` is below it and nothing is mounted there yet,
/// root's alone (`mode=0700`), as systemd mounts it. Not undone on exit: pinned maps live as
/// long as that mount.
pub fn ensure_bpffs(pin_dir: &Path) -> io::Result<()> {
    if !pin_dir.starts_with(BPFFS) {
        return Ok(());
    }
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    if is_mounted(&mounts, BPFFS, "bpf") {
        return Ok(());
    }
    let target = std::ffi::CString::new(BPFFS).expect("no NUL in a constant");
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        // Another process (a second lynx) mounting it at the same moment is fine.
        let mounts = fs::read_to_string("/proc/self/mounts")?;
        if !is_mounted(&mounts, BPFFS, "bpf") {
            return Err(error);
        }
    }
    tracing::info!(target = BPFFS, "mounted bpffs for pinned maps");
    Ok(())
}

/// True when `/proc/self/mounts` text shows a file system of `fs_type` at `target`.
fn is_mounted(mounts: &str, target: &str, fs_type: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split(' ').skip(1);
        fields.next() == Some(target) && fields.next() == Some(fs_type)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(cap_eff: &str) -> String {
        format!(
            "Name:\tlynx\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff}\nCapBnd:\t000001ffffffffff\n"
        )
    }

    #[test]
    fn refusals_name_the_missing_capability_and_other_errors_stay() {
        let refused = needing(
            io::Error::from_raw_os_error(libc::EPERM),
            "CAP_SYS_ADMIN",
            "entering another network namespace",
        );
        assert_eq!(
            refused.to_string(),
            "entering another network namespace needs CAP_SYS_ADMIN: Operation not permitted \
             (os error 1)"
        );
        let gone = needing(io::Error::from_raw_os_error(libc::ENOENT), "CAP_X", "x");
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert!(!gone.to_string().contains("CAP_X"));
    }

    #[test]
    fn root_has_everything() {
        assert!(missing_capabilities(&status("000001ffffffffff")).is_empty());
    }

    #[test]
    fn cap_sys_admin_alone_is_enough() {
        assert!(missing_capabilities(&status(&format!("{:016x}", 1u64 << 21))).is_empty());
    }

    #[test]
    fn unprivileged_user_misses_bpf_perfmon_and_net_admin() {
        assert_eq!(
            missing_capabilities(&status("0000000000000000")),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn cap_bpf_and_net_admin_without_perfmon_names_perfmon() {
        let some = format!("{:016x}", 1u64 << 39 | 1u64 << 12);
        assert_eq!(missing_capabilities(&status(&some)), ["CAP_PERFMON"]);
    }

    #[test]
    fn unreadable_status_counts_as_no_capabilities() {
        assert_eq!(
            missing_capabilities("garbage"),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn mount_table_lookup_matches_target_and_type() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert!(is_mounted(mounts, "/sys/fs/bpf", "bpf"));
        assert!(!is_mounted(mounts, "/sys/fs/bpf", "tracefs"));
        assert!(!is_mounted(
            "none /sys/fs/bpf tmpfs rw 0 0\n",
            "/sys/fs/bpf",
            "bpf"
        ));
    }

    #[test]
    fn missing_btf_is_named_with_its_path() {
        let sys = std::env::temp_dir().join(format!("lynx-sys-{}", std::process::id()));
        fs::create_dir_all(sys.join("kernel/btf")).expect("create fake sysfs");
        let error = check_btf(&sys).unwrap_err().to_string();
        assert!(error.starts_with("missing kernel feature: BTF"), "{error}");
        assert!(error.contains("kernel/btf/vmlinux not found"), "{error}");
        fs::write(sys.join("kernel/btf/vmlinux"), b"").expect("fake BTF");
        check_btf(&sys).expect("BTF present");
        fs::remove_dir_all(&sys).expect("clean up");
    }
}
