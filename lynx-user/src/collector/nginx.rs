//! Which processes are the nginx to count: the master named by its pid file, and its children
//! (workers, cache helpers), found in procfs every interval. The kernel adds children nginx
//! forks in between (a reload's new workers) by itself.
use std::{fs, path::Path};

use super::sockets;
use crate::{
    nginx::{MasterError, NginxControl, find_master, master::io_reason},
    process::parse_stat,
};

/// Why nginx was not found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NginxFindError {
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error("process {pid} has no cgroup v2 path in /proc/{pid}/cgroup")]
    NoCgroup { pid: u32 },
    #[error("cannot tell process {pid}'s network namespace: {reason}")]
    NoNetns { pid: u32, reason: String },
}

/// The cookie the kernel gives process `pid`'s network namespace (`SO_NETNS_COOKIE` of a
/// socket made in it): how the kernel programs tell nginx's connections from those of
/// containers below nginx's cgroup.
pub fn netns_cookie(pid: u32) -> Result<u64, NginxFindError> {
    sockets::in_netns_of(pid, || {
        let socket = sockets::open(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        sockets::u64_option(&socket, libc::SO_NETNS_COOKIE)
    })
    .map_err(|error| NginxFindError::NoNetns {
        pid,
        reason: io_reason(&error),
    })
}

/// nginx's processes at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxProcesses {
    pub master: u32,
    /// The master and its children.
    pub tgids: Vec<u32>,
    /// The master's cgroup v2 path, relative to the hierarchy's root.
    pub cgroup: String,
}

/// Finds the nginx whose master `control` names ([`find_master`]), reading processes from
/// `proc` (`/proc`).
pub fn find(control: &NginxControl, proc: &Path) -> Result<NginxProcesses, NginxFindError> {
    let master = find_master(control, proc)?;
    let stat = |pid: &str| fs::read_to_string(proc.join(pid).join("stat")).ok();
    let cgroup = fs::read_to_string(proc.join(master.to_string()).join("cgroup"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
        })
        .ok_or(NginxFindError::NoCgroup { pid: master })?;
    let mut tgids = vec![master];
    tgids.extend(children(proc, master, &stat));
    tgids.sort_unstable();
    Ok(NginxProcesses {
        master,
        tgids,
        cgroup,
    })
}

/// The children of `master`: from its `children` file (one read, where the kernel has
/// `CONFIG_PROC_CHILDREN`; nginx's master forks from its only thread), else by the parent pid
/// of every process, a read per process every interval.
fn children(proc: &Path, master: u32, stat: &dyn Fn(&str) -> Option<String>) -> Vec<u32> {
    let listed = proc.join(format!("{master}/task/{master}/children"));
    if let Ok(text) = fs::read_to_string(listed) {
        return text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat(&pid.to_string()).and_then(|s| parse_stat(&s).map(|(_, ppid)| ppid))
                == Some(master)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{TempDir, fake_nginx, fake_process};

    /// A fake procfs: `(pid, comm, ppid, cgroup)`; process 100 is the master of the nginx
    /// returned.
    fn fake_proc(name: &str, processes: &[(u32, &str, u32, &str)]) -> (TempDir, NginxControl) {
        let dir = TempDir::new(&format!("nginx-find-{name}"));
        let (control, title) = fake_nginx(dir.path(), 100);
        for &(pid, comm, ppid, cgroup) in processes {
            let (cmdline, exe) = match pid {
                100 => (title.as_str(), Some(control.binary.as_path())),
                _ => ("nginx: worker process", None),
            };
            fake_process(
                &dir.path().join("proc"),
                (pid, comm, ppid),
                cmdline,
                cgroup,
                exe,
            );
        }
        (dir, control)
    }

    #[test]
    fn master_and_its_children_are_found() {
        let (dir, control) = fake_proc(
            "children",
            &[
                (100, "nginx", 1, "/system.slice/nginx.service"),
                (101, "nginx", 100, "/system.slice/nginx.service"),
                (102, "nginx", 100, "/system.slice/nginx.service"),
                (200, "nginx", 1, "/other"),
                (201, "bash (x) y", 100, "/"),
            ],
        );
        let found = find(&control, &dir.path().join("proc")).expect("nginx found");
        assert_eq!(found.master, 100);
        assert_eq!(found.tgids, vec![100, 101, 102, 201]);
        assert_eq!(found.cgroup, "/system.slice/nginx.service");
    }

    #[test]
    fn the_masters_children_file_is_read_where_the_kernel_has_one() {
        let (dir, control) = fake_proc(
            "children-file",
            &[
                (100, "nginx", 1, "/nginx"),
                (101, "nginx", 100, "/nginx"),
                (102, "nginx", 100, "/nginx"),
            ],
        );
        let proc = dir.path().join("proc");
        let task = proc.join("100/task/100");
        fs::create_dir_all(&task).unwrap();
        // Only what the file lists: the parent pids are not read then.
        fs::write(task.join("children"), "102 ").unwrap();
        let found = find(&control, &proc).expect("nginx found");
        assert_eq!(found.tgids, vec![100, 102]);
    }

    #[test]
    fn a_stale_pid_file_is_named() {
        let (dir, control) = fake_proc("stale", &[(100, "sshd", 1, "/")]);
        let error = find(&control, &dir.path().join("proc")).unwrap_err();
        assert!(
            matches!(
                error,
                NginxFindError::Master(MasterError::NotNginx { pid: 100, .. })
            ),
            "{error}"
        );
    }
}
