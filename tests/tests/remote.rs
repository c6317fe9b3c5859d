//! `lynx --host ssh://...`: a real sshd of this test's own (Debian's openssh-server, on a
//! loopback port, with its own config and host key) lets a non-root user in LXD's group in with
//! a key the test made, and lynx runs there against a daemon under test and real LXD
//! containers. Every remote command must print what the same command prints locally.
use std::{
    fs,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use lynx_tests::{
    ChildGuard, daemon::DaemonUnderTest, lxd::TestContainer, lynx_bin, output_within, privileged,
    require, run_ok, tmux::Tmux,
};

/// sshd by its absolute path: sshd refuses to run otherwise (it re-executes itself).
const SSHD: &str = "/usr/sbin/sshd";
/// sshd's privilege separation directory, which it requires and Debian's init script makes.
const PRIVSEP_DIR: &str = "/run/sshd";

/// A directory this test made, removed on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A user made for this test (`useradd`), in LXD's group, with a home of its own; removed,
/// home and all, on drop.
struct TestUser {
    name: String,
}

impl TestUser {
    fn create(name: &str, home: &Path) -> Self {
        require("useradd");
        require("userdel");
        let user = Self {
            name: name.to_owned(),
        };
        // `*`: no password to log in with, yet not locked, as sshd (without PAM) refuses
        // even keys for a locked account.
        run_ok(
            Command::new("useradd")
                .args(["--create-home", "--home-dir"])
                .arg(home)
                .args(["--shell", "/bin/sh", "--groups", "lxd", "--password", "*"])
                .arg(name),
        );
        user
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Its processes first (a remote lynx still running), or userdel refuses.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        let _ = Command::new("userdel")
            .args(["--remove", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// `/run/sshd`, made when missing and then removed on drop.
struct PrivsepDir(bool);

impl PrivsepDir {
    fn ensure() -> Self {
        let made = !Path::new(PRIVSEP_DIR).exists();
        if made {
            fs::create_dir(PRIVSEP_DIR).expect("create /run/sshd");
            fs::set_permissions(PRIVSEP_DIR, fs::Permissions::from_mode(0o755))
                .expect("chmod /run/sshd");
        }
        Self(made)
    }
}

impl Drop for PrivsepDir {
    fn drop(&mut self) {
        if self.0 {
            let _ = fs::remove_dir(PRIVSEP_DIR);
        }
    }
}

/// sshd in the foreground on 127.0.0.1:`port`, letting in `user` with `dir/client_key`;
/// ssh's side (client config, known host) written next to it. Killed on drop.
struct Sshd {
    _process: ChildGuard,
    _privsep: PrivsepDir,
    port: u16,
    /// For `--ssh-config`: the client key, and the server's host key as the only known host.
    client_config: PathBuf,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, user: &str) -> Self {
        require("ssh-keygen");
        require("ssh");
        assert!(Path::new(SSHD).is_file(), "{SSHD} is not installed");
        for key in ["host_key", "client_key"] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "lynx-test", "-f"])
                    .arg(dir.join(key)),
            );
        }
        // sshd reads the user's keys as that user.
        let authorized = dir.join("authorized_keys");
        fs::copy(dir.join("client_key.pub"), &authorized).expect("authorized_keys");
        fs::set_permissions(&authorized, fs::Permissions::from_mode(0o644)).expect("chmod");
        let port = free_port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {host_key}\nPidFile none\n\
                 AuthorizedKeysFile {authorized}\n\
                 # The test's directory is under /tmp, which everyone may write.\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 AllowUsers {user}\nPermitRootLogin no\nLogLevel VERBOSE\n",
                host_key = dir.join("host_key").display(),
                authorized = authorized.display(),
            ),
        )
        .expect("write sshd_config");
        let host_key = fs::read_to_string(dir.join("host_key.pub")).expect("host key");
        let known_hosts = dir.join("known_hosts");
        fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}")).expect("known_hosts");
        let client_config = dir.join("ssh_config");
        fs::write(
            &client_config,
            format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
                 GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n",
                dir.join("client_key").display(),
                known_hosts.display()
            ),
        )
        .expect("write ssh_config");
        let privsep = PrivsepDir::ensure();
        let log = dir.join("sshd.log");
        let process = ChildGuard(
            Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).expect("sshd log"))
                .spawn()
                .expect("start sshd"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd does not listen on port {port} after 10 s:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            sleep(Duration::from_millis(50));
        }
        Self {
            _process: process,
            _privsep: privsep,
            port,
            client_config,
            log,
        }
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// How long one lynx command may take here, ssh included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What running lynx gave: exit code, stdout, stderr.
type Ran = (Option<i32>, String, String);

/// Runs `command` within [`COMMAND_TIMEOUT`].
fn ran(command: &mut Command) -> Ran {
    let output = output_within(command, COMMAND_TIMEOUT);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// How lynx is run in this test: here, or over ssh as the test user.
struct Lynx {
    config: PathBuf,
    host: String,
    ssh_config: PathBuf,
    remote_lynx: PathBuf,
}

impl Lynx {
    fn local(&self, args: &[&str]) -> Ran {
        ran(Command::new(lynx_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args))
    }

    /// `lynx --host ...`, with the host, ssh config and remote program from the environment,
    /// as an operator's shell profile would set them.
    fn remote(&self, args: &[&str]) -> Ran {
        ran(&mut self.remote_command(args))
    }

    fn remote_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(lynx_bin());
        command
            .env("LYNX_HOST", &self.host)
            .env("LYNX_SSH_CONFIG", &self.ssh_config)
            .env("LYNX_REMOTE_LYNX", &self.remote_lynx)
            .arg("--config")
            .arg(&self.config)
            .args(args);
        command
    }

    /// Asserts that `args` print the same remotely as locally. Views that change with time
    /// (uptimes, a snapshot replaced every interval) are read locally just before and just
    /// after the remote run, and the remote output must be one of the two.
    fn same_as_local(&self, args: &[&str]) -> String {
        let mut last = None;
        for _ in 0..5 {
            let before = self.local(args);
            let remote = self.remote(args);
            let after = self.local(args);
            assert_eq!(before.0, Some(0), "local lynx {args:?}: {}", before.2);
            assert_eq!(remote.0, Some(0), "remote lynx {args:?}: {}", remote.2);
            if remote.1 == before.1 || remote.1 == after.1 {
                return remote.1;
            }
            last = Some((before, remote, after));
        }
        panic!("lynx {args:?} differs remotely from locally: {last:#?}")
    }
}

#[test]
fn lynx_runs_remotely_over_ssh_as_a_non_root_user() {
    if !privileged("lynx_runs_remotely_over_ssh_as_a_non_root_user") {
        return;
    }
    let dir =
        ScratchDir(std::env::temp_dir().join(format!("lynx-test-ssh-{}", std::process::id())));
    fs::create_dir_all(&dir.0).expect("create test dir");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).expect("chmod test dir");
    // The lynx under test where the remote user can run it: the build tree may be private.
    let bin = dir.0.join("bin");
    fs::create_dir(&bin).expect("bin dir");
    let remote_lynx = bin.join("lynx");
    fs::copy(lynx_bin(), &remote_lynx).expect("copy lynx");
    fs::set_permissions(&remote_lynx, fs::Permissions::from_mode(0o755)).expect("chmod lynx");
    let user_name = format!("lynxrt{}", std::process::id() % 100_000);
    let user = TestUser::create(&user_name, &dir.0.join("home"));
    let sshd = Sshd::start(&dir.0, &user.name);

    let container = TestContainer::launch("remote");
    let other = TestContainer::launch("remote");
    // Slow enough that a document often outlives a remote read made next to a local one.
    let daemon = DaemonUnderTest::start("remote", "2s");
    daemon.wait_for("both containers", Duration::from_secs(30), |s| {
        [container.name(), other.name()]
            .iter()
            .all(|name| s.containers.iter().any(|c| c.name == *name))
    });
    // The daemon's directory and config, as a packaged daemon's are, readable by others.
    fs::set_permissions(&daemon.dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(&daemon.config, fs::Permissions::from_mode(0o644)).expect("chmod");
    let lynx = Lynx {
        config: daemon.config.clone(),
        host: format!("ssh://{}@127.0.0.1:{}", user.name, sshd.port),
        ssh_config: sshd.client_config.clone(),
        remote_lynx: remote_lynx.clone(),
    };

    // The remote side is the test user, not root: `id` through the same ssh says so.
    let id = run_ok(
        Command::new("ssh")
            .arg("-F")
            .arg(&sshd.client_config)
            .args([
                "-p",
                &sshd.port.to_string(),
                "-l",
                &user.name,
                "127.0.0.1",
                "id",
            ]),
    );
    assert!(
        id.contains(&format!("({})", user.name)) && id.contains("(lxd)"),
        "remote id: {id}; sshd log:\n{}",
        fs::read_to_string(&sshd.log).unwrap_or_default()
    );

    // Read views: the same text as locally.
    let list = lynx.same_as_local(&["containers", "list"]);
    assert!(
        list.contains(container.name()) && list.contains(other.name()),
        "{list}"
    );
    let snapshot = lynx.same_as_local(&["snapshot"]);
    let document: serde_json::Value = serde_json::from_str(&snapshot).expect("snapshot is JSON");
    assert!(document["containers"].is_array(), "{snapshot}");
    let table = lynx.same_as_local(&["top", "--once"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(container.name()), "{table}");

    // Container actions as the non-root user, checked through lxc.
    let (code, out, err) = lynx.remote(&["containers", "stop", "--force", container.name()]);
    assert_eq!(code, Some(0), "remote stop: {err}");
    assert_eq!(out, format!("{} (lxd): Stopped\n", container.name()));
    assert_eq!(container.status(), "Stopped", "lxc sees it stopped");
    let (code, out, err) = lynx.remote(&["containers", "start", container.name()]);
    assert_eq!(code, Some(0), "remote start: {err}");
    assert_eq!(out, format!("{} (lxd): Running\n", container.name()));
    assert_eq!(container.status(), "Running", "lxc sees it running");

    // A remote failure keeps its exit code and message.
    let missing = ["containers", "stop", "lynx-no-such-container"];
    let (local_code, _, local_err) = lynx.local(&missing);
    let (remote_code, remote_out, remote_err) = lynx.remote(&missing);
    assert_ne!(local_code, Some(0), "{local_err}");
    assert_eq!(remote_code, local_code, "{remote_err}");
    assert_eq!(remote_err, local_err);
    assert_eq!(remote_out, "");
    // A quoted argument stays one word there: a name with a space and a `$(...)` is only
    // an unknown container, as it is locally.
    let odd = ["containers", "start", "a b$(touch /tmp/lynx-remote-pwned)"];
    let (local_code, _, local_err) = lynx.local(&odd);
    let (remote_code, _, remote_err) = lynx.remote(&odd);
    assert_eq!((remote_code, remote_err), (local_code, local_err));
    assert!(!Path::new("/tmp/lynx-remote-pwned").exists());

    // What the host string, ssh or the remote PATH get wrong is one line and an exit code.
    let mut bad = lynx.remote_command(&["containers", "list"]);
    let (code, _, err) = ran(bad.env("LYNX_HOST", "farm1"));
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err,
        "lynx: host \"farm1\" (--host or LYNX_HOST) is not ssh://USER@HOST[:PORT]: it must start with ssh://\n"
    );
    let closed = format!("ssh://{}@127.0.0.1:{}", user.name, free_port());
    let (code, _, err) = ran(bad.env("LYNX_HOST", &closed));
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.ends_with(&format!(
            "lynx: ssh to {closed} failed or its connection ended (ssh exit status 255)\n"
        )),
        "{err}"
    );
    let mut missing_lynx = lynx.remote_command(&["containers", "list"]);
    let (code, _, err) = ran(missing_lynx.env("LYNX_REMOTE_LYNX", "lynx-not-installed"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.ends_with(&format!(
            "lynx: lynx-not-installed is not on the remote PATH of {}: install lynx there, or \
             name it with --remote-lynx\n",
            lynx.host
        )),
        "{err}"
    );

    // `top` on a terminal here, drawing from the remote daemon's stream, follows a change.
    let tmux = Tmux::start("remote", (160, 40), "env -u ENV PS1='$ ' sh");
    tmux.type_line(&format!(
        "LYNX_HOST={} LYNX_SSH_CONFIG={} LYNX_REMOTE_LYNX={} {} --config {} top --refresh 250ms; echo top-exit=$?",
        lynx.host,
        sshd.client_config.display(),
        remote_lynx.display(),
        lynx_bin().display(),
        daemon.config.display()
    ));
    let row = |screen: &[String], name: &str| {
        screen
            .iter()
            .find(|line| line.split_whitespace().any(|cell| cell == name))
            .cloned()
    };
    tmux.wait_for("both containers, running, over ssh", |screen| {
        [container.name(), other.name()]
            .iter()
            .all(|name| row(screen, name).is_some_and(|line| line.contains("Running")))
    });
    assert_eq!(tmux.pane("alternate_on"), "1", "full-screen");
    other.freeze();
    tmux.wait_for("the frozen container's new status", |screen| {
        row(screen, other.name()).is_some_and(|line| line.contains("Frozen"))
    });
    other.unfreeze();
    tmux.wait_for("it running again", |screen| {
        row(screen, other.name()).is_some_and(|line| line.contains("Running"))
    });
    tmux.keys(&["q"]);
    tmux.wait_for("top to exit with 0", |screen| {
        screen
            .iter()
            .any(|line| line.trim().trim_start_matches('$').trim() == "top-exit=0")
    });
    // The remote `snapshot --follow` ends with the connection: nothing left behind there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("pgrep")
        .args(["-u", &user.name])
        .stdout(Stdio::null())
        .status()
        .expect("run pgrep")
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the test user still runs processes 10 s after top quit"
        );
        sleep(Duration::from_millis(100));
    }
}
