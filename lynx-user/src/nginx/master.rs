//! Which process is the nginx master: the one place that reads nginx's pid file, for both the
//! collector (whose processes the kernel follows) and the reload (which sends SIGHUP as root).
//!
//! A pid file is only a claim: nginx may have died and its pid been reused, the file may be
//! garbled or hold `-1` or `0`, which `kill` reads as "every process" and "my own group". So
//! the process it names must be a running nginx master, started from the configured binary
//! with the configured prefix and main config, and owned by the pid file's owner (a user
//! cannot make a process look like root's nginx master).
use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::NginxControl;
use crate::process::{parse_stat, real_uid};

/// The title nginx gives its master process (`ps` shows it, `/proc/PID/cmdline` holds it).
const MASTER_TITLE: &str = "nginx: master process ";

/// Why the pid file does not lead to the nginx master.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MasterError {
    #[error("cannot read {path}: {reason}")]
    PidFile { path: PathBuf, reason: String },
    #[error("{path} does not hold a process id: {text:?}")]
    BadPidFile { path: PathBuf, text: String },
    #[error("process {pid} from {path} is not running nginx (stale pid file)")]
    NotNginx { pid: u32, path: PathBuf },
    #[error("process {pid} from {path} is not the nginx master Lynx is configured for: {reason}")]
    NotMaster {
        pid: u32,
        path: PathBuf,
        reason: String,
    },
}

/// The pid of the nginx master that `control` describes, read from its pid file and checked
/// against `proc` (`/proc`).
pub fn find_master(control: &NginxControl, proc: &Path) -> Result<u32, MasterError> {
    let path = &control.pid_file;
    let (text, owner) = fs::read_to_string(path)
        .and_then(|text| Ok((text, fs::metadata(path)?.uid())))
        .map_err(|e| MasterError::PidFile {
            path: path.clone(),
            reason: io_reason(&e),
        })?;
    let pid = parse_pid(&text).ok_or_else(|| MasterError::BadPidFile {
        path: path.clone(),
        text: text.trim().chars().take(32).collect(),
    })?;
    let process = proc.join(pid.to_string());
    let comm = fs::read_to_string(process.join("stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat).map(|(comm, _)| comm.to_owned()));
    if comm.as_deref() != Some("nginx") {
        return Err(MasterError::NotNginx {
            pid,
            path: path.clone(),
        });
    }
    let not_master = |reason: String| MasterError::NotMaster {
        pid,
        path: path.clone(),
        reason,
    };
    let cmdline = fs::read(process.join("cmdline")).unwrap_or_default();
    let title = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .next()
        .unwrap_or_default()
        .to_owned();
    let Some(arguments) = title.strip_prefix(MASTER_TITLE) else {
        return Err(not_master(format!(
            "its title is {title:?}, not a master's"
        )));
    };
    let uid = real_uid(&process).ok_or_else(|| not_master("no uid in its status".into()))?;
    if uid != owner {
        return Err(not_master(format!(
            "it runs as uid {uid}, and uid {owner} owns the pid file"
        )));
    }
    let exe = fs::read_link(process.join("exe")).map_err(|e| {
        not_master(match e.kind() {
            // nginx's master is root's; a daemon running as its own user lacks this.
            io::ErrorKind::PermissionDenied => format!(
                "cannot read its executable: reading another user's process needs \
                 CAP_SYS_PTRACE ({e})"
            ),
            _ => format!("cannot read its executable: {e}"),
        })
    })?;
    // A binary replaced by a package upgrade shows as deleted until nginx restarts.
    let exe = exe.to_string_lossy();
    let exe = Path::new(exe.strip_suffix(" (deleted)").unwrap_or(&exe));
    let binary = resolve_binary(&control.binary);
    if canonical(exe) != binary {
        return Err(not_master(format!(
            "it runs {}, not [nginx] binary {}",
            exe.display(),
            binary.display()
        )));
    }
    let (prefix, config) = options(arguments);
    if !same_dir(prefix.as_deref(), control.prefix.as_deref()) {
        return Err(not_master(format!(
            "it runs with prefix {}, not [nginx] prefix {}",
            shown(prefix.as_deref()),
            shown(control.prefix.as_deref())
        )));
    }
    // A relative -c is relative to the prefix; without -c nginx reads its built-in path,
    // which the command line does not show.
    if let Some(config) = config {
        let config = match (&prefix, config.is_relative()) {
            (Some(prefix), true) => prefix.join(config),
            _ => config,
        };
        if canonical(&config) != canonical(&control.main_config) {
            return Err(not_master(format!(
                "it runs with -c {}, not [nginx] main_config {}",
                config.display(),
                control.main_config.display()
            )));
        }
    }
    Ok(pid)
}

/// A process id as a pid file holds it: decimal digits only (no sign), and not 0.
fn parse_pid(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Larger than any pid_max: `kill` takes an i32.
    text.parse::<u32>()
        .ok()
        .filter(|&pid| pid > 0 && i32::try_from(pid).is_ok())
}

/// `-p` and `-c` of nginx's command line (`-p DIR` or `-pDIR`), as its title shows them.
fn options(arguments: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let (mut prefix, mut config) = (None, None);
    let mut words = arguments.split_whitespace().skip(1);
    while let Some(word) = words.next() {
        let slot = match word.get(..2) {
            Some("-p") => &mut prefix,
            Some("-c") => &mut config,
            _ => continue,
        };
        let value = match &word[2..] {
            "" => words.next(),
            attached => Some(attached),
        };
        *slot = value.map(PathBuf::from);
    }
    (prefix, config)
}

fn same_dir(a: Option<&Path>, b: Option<&Path>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => canonical(a) == canonical(b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

fn shown(path: Option<&Path>) -> String {
    path.map_or_else(|| "(none)".to_owned(), |p| p.display().to_string())
}

/// The path with links resolved, or as given when it cannot be (it no longer exists).
fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// The binary a bare name such as `nginx` runs, found on `PATH` as `Command` would.
fn resolve_binary(binary: &Path) -> PathBuf {
    if binary.components().count() > 1 {
        return canonical(binary);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .map_or_else(|| binary.to_owned(), |found| canonical(&found))
}

/// Why a file of nginx's is not there, for messages.
pub(crate) fn io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file (is nginx running?)".into(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{TempDir, fake_nginx, fake_process};

    /// A fake procfs holding process 100 as `comm` with `title`, and an nginx to control
    /// whose pid file names it.
    fn fake(name: &str, comm: &str, title: Option<&str>) -> (TempDir, NginxControl) {
        let dir = TempDir::new(&format!("master-{name}"));
        let (control, master_title) = fake_nginx(dir.path(), 100);
        let title = title.unwrap_or(&master_title);
        let exe = control.binary.clone();
        fake_process(
            &dir.path().join("proc"),
            (100, comm, 1),
            title,
            "/",
            Some(&exe),
        );
        (dir, control)
    }

    fn find(dir: &TempDir, control: &NginxControl) -> Result<u32, MasterError> {
        find_master(control, &dir.path().join("proc"))
    }

    #[test]
    fn the_configured_master_is_found() {
        let (dir, control) = fake("found", "nginx", None);
        assert_eq!(find(&dir, &control), Ok(100));
    }

    #[test]
    fn pid_files_that_are_not_one_positive_pid_are_refused() {
        let (dir, control) = fake("pids", "nginx", None);
        for text in [
            "-1",
            "0",
            "abc",
            "",
            "+100",
            "100 101",
            "4294967296",
            "2147483648",
        ] {
            fs::write(&control.pid_file, text).expect("pid file");
            let found = find(&dir, &control);
            assert!(
                matches!(found, Err(MasterError::BadPidFile { .. })),
                "{text:?}: {found:?}"
            );
        }
    }

    #[test]
    fn a_process_that_is_not_the_configured_master_is_refused() {
        let (dir, control) = fake("sleep", "sleep", Some("sleep 3600"));
        let found = find(&dir, &control);
        assert!(
            matches!(found, Err(MasterError::NotNginx { pid: 100, .. })),
            "{found:?}"
        );

        let (dir, control) = fake("worker", "nginx", Some("nginx: worker process"));
        let error = find(&dir, &control).expect_err("a worker").to_string();
        assert!(
            error.contains("title is \"nginx: worker process\""),
            "{error}"
        );

        let title = |dir: &TempDir, options: &str| {
            format!(
                "nginx: master process {}/sbin/nginx {options}",
                dir.path().display()
            )
        };
        let (dir, control) = fake("no-prefix", "nginx", None);
        fs::write(
            dir.path().join("proc/100/cmdline"),
            title(&dir, "-c /etc/other.conf"),
        )
        .expect("cmdline");
        let error = find(&dir, &control).expect_err("another nginx").to_string();
        assert!(error.contains("prefix (none)"), "{error}");
        let options = format!("-p{}/conf -c /etc/other.conf", dir.path().display());
        fs::write(dir.path().join("proc/100/cmdline"), title(&dir, &options)).expect("cmdline");
        let error = find(&dir, &control)
            .expect_err("another config")
            .to_string();
        assert!(error.contains("-c /etc/other.conf"), "{error}");

        let (dir, control) = fake("other-binary", "nginx", None);
        let exe = dir.path().join("proc/100/exe");
        fs::remove_file(&exe).expect("unlink exe");
        std::os::unix::fs::symlink("/usr/bin/true", &exe).expect("exe");
        let error = find(&dir, &control)
            .expect_err("another binary")
            .to_string();
        assert!(error.contains("not [nginx] binary"), "{error}");

        let (dir, control) = fake("other-owner", "nginx", None);
        fs::write(
            dir.path().join("proc/100/status"),
            "Uid:\t4242\t4242\t4242\t4242\n",
        )
        .expect("status");
        let error = find(&dir, &control)
            .expect_err("another user's")
            .to_string();
        assert!(error.contains("runs as uid 4242"), "{error}");
    }

    #[test]
    fn a_missing_pid_file_is_named() {
        let (dir, control) = fake("missing", "nginx", None);
        fs::remove_file(&control.pid_file).expect("remove");
        let error = find(&dir, &control).expect_err("no file").to_string();
        assert!(
            error.contains("nginx.pid") && error.contains("is nginx running"),
            "{error}"
        );
    }

    #[test]
    fn command_line_options_are_read_both_ways() {
        assert_eq!(
            options("/usr/sbin/nginx -g daemon on; master_process on;"),
            (None, None)
        );
        assert_eq!(
            options("nginx -p /srv/x -c/srv/x/n.conf"),
            (Some("/srv/x".into()), Some("/srv/x/n.conf".into()))
        );
    }
}
