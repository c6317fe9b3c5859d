//! The packaged service without systemd as PID 1 (these machines have none): the installed
//! unit file is parsed, and its `ExecStart=` runs as systemd would run it, as far as a test can
//! reproduce that: the unit's `User=`/`Group=` with their groups, exactly its capability
//! bounding and ambient sets, `NoNewPrivileges=`, its runtime, state and configuration
//! directories made and owned as systemd makes them, the environment systemd gives a service
//! (`$NOTIFY_SOCKET` for `Type=notify` included), `/` as working directory and stdin from
//! `/dev/null`. The file-system sandbox (`ProtectSystem=`, `PrivateTmp=`, ...) and the system
//! call filters are not reproduced: `systemd-analyze verify` and `security` check those.
use std::{
    collections::BTreeSet,
    fs,
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use lynx::model::Snapshot;

use crate::{ChildGuard, daemon, run_ok};

/// A unit file's settings, in order, with `\` continuations joined and comments left out.
#[derive(Debug, Clone)]
pub struct Unit {
    settings: Vec<(String, String, String)>,
}

impl Unit {
    pub fn load(path: &Path) -> Self {
        let text = fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read unit file {}: {e}", path.display()));
        Self::parse(&text)
    }

    /// Parses unit-file text (systemd.syntax(7)): `[Section]` headers, `Key=value` lines,
    /// `#`/`;` comments, a trailing `\` continuing a line.
    pub fn parse(text: &str) -> Self {
        let mut settings = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for line in text.lines() {
            let line = line.trim();
            if pending.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
                continue;
            }
            if let Some(start) = line.strip_suffix('\\') {
                pending.push_str(start);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else if let Some((key, value)) = line.split_once('=') {
                settings.push((section.clone(), key.trim().into(), value.trim().into()));
            }
        }
        Self { settings }
    }

    /// The last value of `[Service] key`, as systemd takes a single-valued setting.
    pub fn service(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
    }

    /// A list setting of `[Service]`: every value's words, accumulated; an empty value resets.
    pub fn service_list(&self, key: &str) -> Vec<String> {
        let mut list = Vec::new();
        for (_, _, value) in self
            .settings
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
        {
            if value.is_empty() {
                list.clear();
            }
            list.extend(value.split_whitespace().map(str::to_owned));
        }
        list
    }

    /// `CapabilityBoundingSet=`, which must be a plain list (no `~` inversion).
    pub fn capabilities(&self) -> BTreeSet<String> {
        capability_set(self.service_list("CapabilityBoundingSet"))
    }

    /// `AmbientCapabilities=`.
    pub fn ambient_capabilities(&self) -> BTreeSet<String> {
        capability_set(self.service_list("AmbientCapabilities"))
    }

    /// `ExecStart=` as arguments; it must be a plain command line (no prefixes, quotes or
    /// variables), which this parser refuses rather than misreads.
    pub fn exec_start(&self) -> Vec<String> {
        let line = self.service("ExecStart").expect("the unit has ExecStart=");
        assert!(
            !line.contains(['"', '\'', '$', '%']) && !line.starts_with(['-', '@', '+', '!', ':']),
            "ExecStart={line} needs more of systemd's command-line syntax than the test parses"
        );
        line.split_whitespace().map(str::to_owned).collect()
    }
}

fn capability_set(list: Vec<String>) -> BTreeSet<String> {
    assert!(
        list.iter().all(|c| c.starts_with("CAP_")),
        "capabilities are listed plainly: {list:?}"
    );
    list.into_iter().collect()
}

/// How far `Type=notify` got: the datagrams the service sent to `$NOTIFY_SOCKET`.
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Self {
        let _ = fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        // systemd's own socket takes any sender; the service's user must reach this one.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).expect("chmod socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("socket timeout");
        Self { socket, path }
    }

    /// Waits up to `timeout` for a message with the line `state` (e.g. `READY=1`).
    pub fn wait_for(&self, state: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(length) = self.socket.recv(&mut buffer)
                && String::from_utf8_lossy(&buffer[..length])
                    .lines()
                    .any(|line| line == state)
            {
                return true;
            }
        }
        false
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `ExecStart=` running as the unit says; killed on drop, and its runtime directory removed
/// as systemd removes it when a service stops.
pub struct Service {
    child: ChildGuard,
    /// `ExecStart=` runs as the child's child.
    wrapped: bool,
    pub notify: NotifySocket,
    pub log_path: PathBuf,
    runtime_dirs: Vec<PathBuf>,
}

/// Where systemd puts `RuntimeDirectory=`, `StateDirectory=` and `ConfigurationDirectory=`.
const DIRECTORIES: [(&str, &str, bool); 3] = [
    ("RuntimeDirectory", "/run", true),
    ("StateDirectory", "/var/lib", true),
    ("ConfigurationDirectory", "/etc", false),
];

impl Service {
    /// Starts `unit`'s `ExecStart=` with its user and capabilities, less `without` (to show
    /// what each capability is for). Its standard error goes to `log_path`, in the place of the
    /// journal.
    pub fn start(unit: &Unit, without: Option<&str>, log_path: &Path) -> Self {
        Self::start_under(unit, without, log_path, &[])
    }

    /// As [`Self::start`], with `ExecStart=` run by `wrapper` (e.g. `strace -f -o FILE`),
    /// which runs as the service does.
    pub fn start_under(
        unit: &Unit,
        without: Option<&str>,
        log_path: &Path,
        wrapper: &[&str],
    ) -> Self {
        let user = unit.service("User").expect("the unit names its User=");
        let group = unit.service("Group").unwrap_or(user);
        let mut runtime_dirs = Vec::new();
        let mut env = vec![
            (
                "PATH".to_owned(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ];
        for (key, base, owned) in DIRECTORIES {
            let dirs: Vec<PathBuf> = unit
                .service_list(key)
                .iter()
                .map(|name| Path::new(base).join(name))
                .collect();
            for dir in &dirs {
                fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                // systemd makes them 0755 and, except the configuration directory, the
                // service's own.
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
                if owned {
                    run_ok(
                        Command::new("chown")
                            .arg(format!("{user}:{group}"))
                            .arg(dir),
                    );
                }
            }
            let variable = match key {
                "RuntimeDirectory" => "RUNTIME_DIRECTORY",
                "StateDirectory" => "STATE_DIRECTORY",
                _ => "CONFIGURATION_DIRECTORY",
            };
            if !dirs.is_empty() {
                let joined: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                env.push((variable.to_owned(), joined.join(":")));
            }
            if key == "RuntimeDirectory" {
                runtime_dirs = dirs;
            }
        }
        let notify_path = log_path.with_extension("notify");
        let notify = NotifySocket::bind(notify_path.clone());
        if unit.service("Type") == Some("notify") {
            env.push(("NOTIFY_SOCKET".into(), notify_path.display().to_string()));
        }

        let mut bounding = unit.capabilities();
        let mut ambient = unit.ambient_capabilities();
        if let Some(capability) = without {
            assert!(
                bounding.remove(capability),
                "{capability} is not in the unit's set"
            );
            ambient.remove(capability);
        }
        let setpriv_caps = |caps: &BTreeSet<String>| -> String {
            std::iter::once("-all".to_owned())
                .chain(caps.iter().map(|c| format!("+{}", c[4..].to_lowercase())))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={group}"))
            .arg("--init-groups")
            .arg(format!("--bounding-set={}", setpriv_caps(&bounding)))
            // Ambient capabilities must be inheritable too; systemd sets both.
            .arg(format!("--inh-caps={}", setpriv_caps(&ambient)))
            .arg(format!("--ambient-caps={}", setpriv_caps(&ambient)));
        if unit.service("NoNewPrivileges") == Some("yes") {
            command.arg("--no-new-privs");
        }
        let log = fs::File::create(log_path).expect("create service log");
        command
            .arg("--")
            .args(wrapper)
            .args(unit.exec_start())
            .env_clear()
            .envs(env)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = ChildGuard(command.spawn().expect("start the service under setpriv"));
        Self {
            child,
            wrapped: !wrapper.is_empty(),
            notify,
            log_path: log_path.to_owned(),
            runtime_dirs,
        }
    }

    /// The daemon's pid (systemd's `$MAINPID`): the wrapper's child when there is one.
    pub fn pid(&self) -> u32 {
        let started = self.child.0.id();
        if !self.wrapped {
            return started;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children = fs::read_to_string(format!("/proc/{started}/task/{started}/children"))
                .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                return pid.parse().expect("a pid");
            }
            assert!(Instant::now() < deadline, "the wrapper started nothing");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the service logged (the journal's share of it).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.0.try_wait().expect("poll the service")
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Stops it as `systemctl stop` does: SIGTERM, then its exit.
    pub fn stop(&mut self) -> ExitStatus {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let status = self
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the service ignored SIGTERM; log:\n{}", self.log()));
        self.remove_runtime_dirs();
        status
    }

    /// The snapshot document at `path` (the unit's runtime directory's).
    pub fn wait_for(
        &self,
        path: &Path,
        what: &str,
        timeout: Duration,
        condition: impl FnMut(&Snapshot) -> bool,
    ) -> Snapshot {
        daemon::wait_for_snapshot(path, what, timeout, &|| self.log(), condition)
    }

    /// A snapshot at `path` collected wholly after this call.
    pub fn next_snapshot(&self, path: &Path) -> Snapshot {
        daemon::next_snapshot_at(path, &|| self.log())
    }

    fn remove_runtime_dirs(&mut self) {
        for dir in std::mem::take(&mut self.runtime_dirs) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.child.kill();
        self.remove_runtime_dirs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_files_parse_as_systemd_reads_them() {
        let unit = Unit::parse(
            "[Unit]\nDescription=x\n# User=nobody\n[Service]\nUser=lynx\n\
             CapabilityBoundingSet=CAP_BPF \\\n  CAP_PERFMON\nCapabilityBoundingSet=CAP_KILL\n\
             AmbientCapabilities=CAP_KILL\nAmbientCapabilities=\nAmbientCapabilities=CAP_BPF\n\
             ExecStart=/usr/bin/lynx daemon\n; Type=simple\nType=notify\n",
        );
        assert_eq!(unit.service("User"), Some("lynx"));
        assert_eq!(unit.service("Type"), Some("notify"));
        assert_eq!(unit.service("Description"), None, "only [Service]");
        assert_eq!(
            unit.capabilities().into_iter().collect::<Vec<_>>(),
            ["CAP_BPF", "CAP_KILL", "CAP_PERFMON"]
        );
        assert_eq!(
            unit.ambient_capabilities().into_iter().collect::<Vec<_>>(),
            ["CAP_BPF"],
            "an empty assignment resets the list"
        );
        assert_eq!(unit.exec_start(), ["/usr/bin/lynx", "daemon"]);
    }
}
