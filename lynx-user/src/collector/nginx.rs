//! Which processes are the nginx to count: the master named by its pid file, and its children
//! (workers, cache helpers), found in procfs every interval. The kernel adds children nginx
//! forks in between (a reload's new workers) by itself.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::sockets;

/// Why nginx was not found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NginxFindError {
    #[error("cannot read {path}: {reason}")]
    PidFile { path: PathBuf, reason: String },
    #[error("{path} does not hold a process id: {text:?}")]
    BadPidFile { path: PathBuf, text: String },
    #[error("process {pid} from {path} is not running nginx (stale pid file)")]
    NotNginx { pid: u32, path: PathBuf },
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

/// Finds the nginx whose master wrote `pid_file`, reading processes from `proc` (`/proc`).
pub fn find(pid_file: &Path, proc: &Path) -> Result<NginxProcesses, NginxFindError> {
    let text = fs::read_to_string(pid_file).map_err(|e| NginxFindError::PidFile {
        path: pid_file.to_owned(),
        reason: io_reason(&e),
    })?;
    let master: u32 = text
        .trim()
        .parse()
        .map_err(|_| NginxFindError::BadPidFile {
            path: pid_file.to_owned(),
            text: text.trim().chars().take(32).collect(),
        })?;
    let stat = |pid: &str| fs::read_to_string(proc.join(pid).join("stat")).ok();
    let is_nginx = stat(&master.to_string())
        .is_some_and(|s| parse_stat(&s).is_some_and(|(comm, _)| comm == "nginx"));
    if !is_nginx {
        return Err(NginxFindError::NotNginx {
            pid: master,
            path: pid_file.to_owned(),
        });
    }
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

/// The command name and parent pid of `/proc/PID/stat` text; the name is in parentheses
/// and may itself contain spaces and parentheses.
fn parse_stat(text: &str) -> Option<(&str, u32)> {
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

fn io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file (is nginx running?)".into(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    /// A fake procfs: `(pid, comm, ppid, cgroup)`.
    fn fake_proc(name: &str, processes: &[(u32, &str, u32, &str)]) -> TempDir {
        let dir = TempDir::new(&format!("nginx-find-{name}"));
        for (pid, comm, ppid, cgroup) in processes {
            let process = dir.path().join(pid.to_string());
            fs::create_dir_all(&process).expect("create fake process");
            fs::write(
                process.join("stat"),
                format!("{pid} ({comm}) S {ppid} 1 1 0 -1 4194560 0 0 0 0\n"),
            )
            .expect("write stat");
            fs::write(process.join("cgroup"), format!("1:cpu:/x\n0::{cgroup}\n"))
                .expect("write cgroup");
        }
        dir
    }

    #[test]
    fn master_and_its_children_are_found() {
        let proc = fake_proc(
            "children",
            &[
                (100, "nginx", 1, "/system.slice/nginx.service"),
                (101, "nginx", 100, "/system.slice/nginx.service"),
                (102, "nginx", 100, "/system.slice/nginx.service"),
                (200, "nginx", 1, "/other"),
                (201, "bash (x) y", 100, "/"),
            ],
        );
        let pid_file = proc.path().join("nginx.pid");
        fs::write(&pid_file, "100\n").unwrap();
        let found = find(&pid_file, proc.path()).expect("nginx found");
        assert_eq!(found.master, 100);
        assert_eq!(found.tgids, vec![100, 101, 102, 201]);
        assert_eq!(found.cgroup, "/system.slice/nginx.service");
    }

    #[test]
    fn the_masters_children_file_is_read_where_the_kernel_has_one() {
        let proc = fake_proc(
            "children-file",
            &[
                (100, "nginx", 1, "/nginx"),
                (101, "nginx", 100, "/nginx"),
                (102, "nginx", 100, "/nginx"),
            ],
        );
        let task = proc.path().join("100/task/100");
        fs::create_dir_all(&task).unwrap();
        // Only what the file lists: the parent pids are not read then.
        fs::write(task.join("children"), "102 ").unwrap();
        let pid_file = proc.path().join("nginx.pid");
        fs::write(&pid_file, "100\n").unwrap();
        let found = find(&pid_file, proc.path()).expect("nginx found");
        assert_eq!(found.tgids, vec![100, 102]);
    }

    #[test]
    fn missing_stale_and_garbled_pid_files_are_named() {
        let proc = fake_proc("stale", &[(300, "sshd", 1, "/")]);
        let pid_file = proc.path().join("nginx.pid");
        let error = find(&pid_file, proc.path()).unwrap_err().to_string();
        assert!(
            error.contains("nginx.pid") && error.contains("is nginx running"),
            "{error}"
        );
        fs::write(&pid_file, "300").unwrap();
        let error = find(&pid_file, proc.path()).unwrap_err();
        assert!(
            matches!(error, NginxFindError::NotNginx { pid: 300, .. }),
            "{error}"
        );
        fs::write(&pid_file, "nginx").unwrap();
        let error = find(&pid_file, proc.path()).unwrap_err().to_string();
        assert!(error.contains("does not hold a process id"), "{error}");
    }
}
