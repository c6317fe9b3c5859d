//! `lynx --host ssh://USER@HOST[:PORT] COMMAND`: the command runs on another host through the
//! system's `ssh` (its config, keys and known_hosts), as `docker -H ssh://` does. Nothing
//! listens on the network for it: the remote side is the remote host's own `lynx`, started
//! by sshd as the ssh user, which reads the daemon's snapshot and talks to LXD as it would
//! locally. Each argument is quoted for the remote shell, so the remote side runs exactly the
//! words given here.
use std::{
    borrow::Cow,
    ffi::OsString,
    fmt,
    io::{self, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    str::FromStr,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::tui::StreamSource;

/// How long ssh may take to connect (`ConnectTimeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a silent connection is kept: ssh asks the server every interval and gives up
/// after three unanswered asks, so a `top` over a dead link says so.
const ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a running remote command is looked at for its deadline.
const POLL: Duration = Duration::from_millis(20);
/// How long ssh may take to exit once its stream ended.
const ENDING: Duration = Duration::from_secs(2);
/// How much of ssh's standard error a stream keeps for its end message.
const STDERR_KEPT: usize = 4096;

/// Exit status of the remote shell when it cannot find the program.
const NOT_FOUND: i32 = 127;
/// Exit status of ssh itself when it fails (cannot connect, authenticate, ...).
const SSH_FAILED: i32 = 255;

/// Why a remote command could not run or gave no result.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("host {value:?} (--host or LYNX_HOST) is not ssh://USER@HOST[:PORT]: {reason}")]
    BadHost { value: String, reason: &'static str },
    #[error("`lynx {command}` runs only on its own host, not with --host")]
    LocalOnly { command: &'static str },
    #[error("argument {0:?} is not UTF-8 and cannot be passed to the remote host")]
    NotUtf8(OsString),
    #[error("cannot run ssh: {0}")]
    Spawn(io::Error),
    #[error("cannot wait for ssh: {0}")]
    Wait(io::Error),
    #[error("ssh to {host} failed or its connection ended (ssh exit status 255)")]
    Ssh { host: SshHost },
    #[error(
        "{program} is not on the remote PATH of {host}: install lynx there, or name it with --remote-lynx"
    )]
    NoRemoteLynx { host: SshHost, program: String },
    #[error("no result from {host} within {after:?}: ssh killed")]
    TimedOut { host: SshHost, after: Duration },
    #[error("ssh to {host} ended by {status}")]
    Killed { host: SshHost, status: ExitStatus },
}

impl RemoteError {
    /// 2 for bad input (the host string, a command that is local only, lynx missing there),
    /// 3 when the host cannot be reached, 1 otherwise; as locally.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadHost { .. }
            | Self::LocalOnly { .. }
            | Self::NotUtf8(_)
            | Self::NoRemoteLynx { .. } => 2,
            Self::Ssh { .. } | Self::TimedOut { .. } => 3,
            _ => 1,
        }
    }
}

/// A parsed `ssh://[USER@]HOST[:PORT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshHost {
    pub user: Option<String>,
    /// A name or an IPv4 address, or an IPv6 address without its brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl FromStr for SshHost {
    type Err = RemoteError;

    fn from_str(value: &str) -> Result<Self, RemoteError> {
        let bad = |reason| RemoteError::BadHost {
            value: value.to_owned(),
            reason,
        };
        let rest = value
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("it must start with ssh://"))?;
        if rest.contains(['/', '?', '#']) {
            return Err(bad("a path, query or fragment has no meaning here"));
        }
        let (user, address) = match rest.rsplit_once('@') {
            Some((user, address)) => (Some(user), address),
            None => (None, rest),
        };
        if let Some(user) = user {
            // A user name as useradd takes it: no shell or ssh syntax can hide in it.
            let valid = user.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !valid {
                return Err(bad(
                    "the user name has characters other than A-Z a-z 0-9 . _ -",
                ));
            }
        }
        let (host, port) = match address.strip_prefix('[') {
            Some(bracketed) => {
                let (ip, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| bad("an IPv6 address lacks its closing ]"))?;
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(bad("the bracketed host is not an IPv6 address"));
                }
                match after {
                    "" => (ip, None),
                    _ => (
                        ip,
                        Some(
                            after
                                .strip_prefix(':')
                                .ok_or_else(|| bad("only :PORT may follow the host"))?,
                        ),
                    ),
                }
            }
            None => match address.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            },
        };
        let is_name = host.starts_with(|c: char| c.is_ascii_alphanumeric())
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
        if !is_name {
            return Err(bad(
                "the host is not a name or address (letters, digits, . - _ and IPv6 in [])",
            ));
        }
        let port = port
            .map(|port| port.parse::<u16>().ok().filter(|&port| port != 0))
            .map(|port| port.ok_or_else(|| bad("the port is not a number in 1..=65535")))
            .transpose()?;
        Ok(Self {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for SshHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ssh://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match self.host.contains(':') {
            true => write!(f, "[{}]", self.host)?,
            false => f.write_str(&self.host)?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// `word` as the remote POSIX shell must see it to pass it on unchanged: as it is when it
/// holds only characters no shell treats specially, otherwise in single quotes, inside which
/// nothing is special but the quote itself (written `'\''`).
pub fn quote(word: &str) -> Cow<'_, str> {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@,+%".contains(c));
    match plain {
        true => Cow::Borrowed(word),
        false => Cow::Owned(format!("'{}'", word.replace('\'', r"'\''"))),
    }
}

/// The flags of this lynx that choose the remote host, removed from what is passed on.
const HOST_FLAGS: [&str; 3] = ["--host", "--remote-lynx", "--ssh-config"];

/// The command line to run remotely: `args` (without the program name) less the flags that
/// choose the host. clap has already accepted `args`, so each such flag is either `--flag
/// VALUE` or `--flag=VALUE`; everything after `--` is passed on as it is.
pub fn remote_args(args: &[OsString]) -> Result<Vec<String>, RemoteError> {
    let mut kept = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let word = word
            .to_str()
            .ok_or_else(|| RemoteError::NotUtf8(word.clone()))?;
        if word == "--" {
            kept.push(word.to_owned());
            for word in words.by_ref() {
                let text = word
                    .to_str()
                    .ok_or_else(|| RemoteError::NotUtf8(word.clone()))?;
                kept.push(text.to_owned());
            }
            break;
        }
        if HOST_FLAGS.contains(&word) {
            words.next();
        } else if !HOST_FLAGS
            .iter()
            .any(|flag| word.strip_prefix(flag).is_some_and(|v| v.starts_with('=')))
        {
            kept.push(word.to_owned());
        }
    }
    Ok(kept)
}

/// A remote host and how to run lynx there.
#[derive(Clone, Debug)]
pub struct Remote {
    pub host: SshHost,
    /// The remote program: `lynx` on the remote user's PATH, or an absolute path.
    pub lynx: String,
    /// An ssh config file used instead of `~/.ssh/config` (`ssh -F`).
    pub ssh_config: Option<PathBuf>,
}

impl Remote {
    /// `ssh ... HOST 'lynx' ARGS...`, with no terminal, no password prompt, no forwarding.
    pub fn command(&self, args: &[String]) -> Command {
        let mut ssh = Command::new("ssh");
        if let Some(config) = &self.ssh_config {
            ssh.arg("-F").arg(config);
        }
        ssh.args(["-T", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("ConnectTimeout={}", CONNECT_TIMEOUT.as_secs()))
            .arg("-o")
            .arg(format!("ServerAliveInterval={}", ALIVE_INTERVAL.as_secs()))
            .args(["-o", "ServerAliveCountMax=3"])
            .args(["-o", "ForwardAgent=no", "-o", "ForwardX11=no"])
            // A LocalForward in the user's config (the dashboard tunnel) must not make every
            // command fail on a port already taken.
            .args(["-o", "ClearAllForwardings=yes"]);
        if let Some(user) = &self.host.user {
            ssh.arg("-l").arg(user);
        }
        if let Some(port) = self.host.port {
            ssh.arg("-p").arg(port.to_string());
        }
        // `--`: the host cannot be taken for an option.
        ssh.arg("--").arg(&self.host.host);
        ssh.arg(self.command_line(args));
        ssh.stdin(Stdio::null());
        ssh
    }

    /// The one string ssh hands to the remote user's shell.
    pub fn command_line(&self, args: &[String]) -> String {
        std::iter::once(self.lynx.as_str())
            .chain(args.iter().map(String::as_str))
            .map(quote)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs lynx remotely with `args`, its output and messages passed through as they come,
    /// within `deadline` when given (a stream has none); returns the remote exit status.
    pub fn run(&self, args: &[String], deadline: Option<Duration>) -> Result<u8, RemoteError> {
        let mut child = self.command(args).spawn().map_err(RemoteError::Spawn)?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().map_err(RemoteError::Wait)? {
                return self.status(status);
            }
            if let Some(deadline) = deadline
                && start.elapsed() >= deadline
            {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RemoteError::TimedOut {
                    host: self.host.clone(),
                    after: deadline,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// The remote exit code in `status`, or what it says went wrong on the way.
    fn status(&self, status: ExitStatus) -> Result<u8, RemoteError> {
        match status.code() {
            Some(SSH_FAILED) => Err(RemoteError::Ssh {
                host: self.host.clone(),
            }),
            Some(NOT_FOUND) => Err(RemoteError::NoRemoteLynx {
                host: self.host.clone(),
                program: self.lynx.clone(),
            }),
            Some(code) => Ok(u8::try_from(code).unwrap_or(1)),
            None => Err(RemoteError::Killed {
                host: self.host.clone(),
                status,
            }),
        }
    }

    /// `lynx snapshot --follow` (with `args`) remotely, as a source for `top`. ssh runs in a
    /// process group of its own, so the terminal's keys and signals stay `top`'s; its
    /// standard error is kept for the message when the stream ends.
    pub fn follow(&self, args: &[String]) -> Result<StreamSource, RemoteError> {
        use std::os::unix::process::CommandExt;
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(RemoteError::Spawn)?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let kept = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut chunk = [0; 512];
                while let Ok(read @ 1..) = pipe.read(&mut chunk) {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    kept.extend_from_slice(&chunk[..read]);
                    let excess = kept.len().saturating_sub(STDERR_KEPT);
                    kept.drain(..excess);
                }
            });
        }
        let mut child = KillOnDrop(child);
        let remote = self.clone();
        let ended = move || {
            // The stream ended, so ssh is ending: give it a moment to exit by itself and say
            // why, then make sure of it.
            let deadline = Instant::now() + ENDING;
            let status = loop {
                match child.0.try_wait() {
                    Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                    Ok(None) => {
                        let _ = child.0.kill();
                        break child.0.wait();
                    }
                    Ok(Some(status)) => break Ok(status),
                    Err(error) => break Err(error),
                }
            };
            // The stderr thread reads until ssh's end; a moment lets it take the last line.
            thread::sleep(Duration::from_millis(100));
            let text = stderr.lock().map(|t| t.clone()).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let said = text.lines().rev().find(|line| !line.trim().is_empty());
            match (said, status) {
                (Some(line), _) => line.trim().to_owned(),
                (None, Ok(status)) => match remote.status(status) {
                    Ok(code) => format!("remote lynx exited with {code}"),
                    Err(error) => error.to_string(),
                },
                (None, Err(error)) => RemoteError::Wait(error).to_string(),
            }
        };
        Ok(StreamSource::new(
            self.host.to_string(),
            BufReader::new(stdout),
            CONNECT_TIMEOUT * 2,
            Box::new(ended),
        ))
    }
}

/// ssh behind a stream: killed and reaped when the stream is dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> Result<SshHost, String> {
        text.parse::<SshHost>().map_err(|e| e.to_string())
    }

    #[test]
    fn hosts_parse_with_user_and_port() {
        assert_eq!(
            host("ssh://ops@farm1.example:2222"),
            Ok(SshHost {
                user: Some("ops".into()),
                host: "farm1.example".into(),
                port: Some(2222),
            })
        );
        let plain = host("ssh://ops@10.0.0.7").unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("10.0.0.7", None));
        let v6 = host("ssh://ops@[fd00::7]:22").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("fd00::7", Some(22)));
        assert_eq!(v6.to_string(), "ssh://ops@[fd00::7]:22");
        // The user may come from the ssh config, as with ssh itself.
        assert_eq!(host("ssh://farm1").unwrap().user, None);
    }

    #[test]
    fn bad_hosts_name_the_value_on_one_line() {
        for (value, reason) in [
            ("farm1", "it must start with ssh://"),
            ("http://ops@farm1", "it must start with ssh://"),
            ("ssh://ops@farm1/x", "a path, query or fragment"),
            ("ssh://ops@-oProxyCommand=x", "the host is not a name"),
            ("ssh://ops@", "the host is not a name"),
            ("ssh://o;ps@farm1", "the user name has characters"),
            ("ssh://-l@farm1", "the user name has characters"),
            ("ssh://ops@farm1:0", "the port is not a number"),
            ("ssh://ops@farm1:99999", "the port is not a number"),
            ("ssh://ops@farm1:", "the port is not a number"),
            ("ssh://ops@[fd00::7", "lacks its closing ]"),
            ("ssh://ops@[farm]", "not an IPv6 address"),
            ("ssh://ops@farm$(id)", "the host is not a name"),
        ] {
            let error = host(value).expect_err(value);
            assert!(
                error.starts_with(&format!("host {value:?} (--host or LYNX_HOST) is not ")),
                "{error}"
            );
            assert!(error.contains(reason), "{value}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        let error: RemoteError = "farm1".parse::<SshHost>().unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn words_are_quoted_only_when_the_shell_would_change_them() {
        assert_eq!(quote("containers"), "containers");
        assert_eq!(quote("--timeout=30s"), "--timeout=30s");
        assert_eq!(quote("/usr/local/bin/lynx"), "/usr/local/bin/lynx");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("web 1"), "'web 1'");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(quote("a;b|c&d`e`"), "'a;b|c&d`e`'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("~root"), "'~root'");
        assert_eq!(quote("*"), "'*'");
        assert_eq!(quote("a\nb"), "'a\nb'");
    }

    /// The remote shell, given the quoted line, sees exactly the original words.
    #[test]
    fn a_posix_shell_reads_back_the_words_quoted() {
        let words = [
            "it's",
            "$(touch /tmp/lynx-quote-test-pwned)",
            "a b\tc\nd",
            "",
            "\\",
            "\"",
            "*",
            "-n",
            "'';",
        ];
        let line: Vec<String> = words.iter().map(|w| quote(w).into_owned()).collect();
        let script = format!("printf '%s\\0' {}", line.join(" "));
        let output = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("run sh");
        assert!(output.status.success(), "{output:?}");
        let read: Vec<&[u8]> = output.stdout.split(|&b| b == 0).collect();
        let expected: Vec<&[u8]> = words
            .iter()
            .map(|w| w.as_bytes())
            .chain([&b""[..]])
            .collect();
        assert_eq!(read, expected);
        assert!(!std::path::Path::new("/tmp/lynx-quote-test-pwned").exists());
    }

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_host_flags_are_not_passed_on() {
        let args = os(&[
            "--host",
            "ssh://ops@farm",
            "--config",
            "/etc/lynx/lynx.toml",
            "containers",
            "--remote-lynx=/opt/lynx",
            "stop",
            "--ssh-config",
            "/tmp/c",
            "web1",
            "--host=ssh://x@y",
        ]);
        assert_eq!(
            remote_args(&args).unwrap(),
            [
                "--config",
                "/etc/lynx/lynx.toml",
                "containers",
                "stop",
                "web1"
            ]
        );
        // After `--`, words are operands, never flags.
        let args = os(&["containers", "start", "--", "--host"]);
        assert_eq!(
            remote_args(&args).unwrap(),
            ["containers", "start", "--", "--host"]
        );
    }

    #[test]
    fn the_ssh_command_has_no_prompt_no_forwarding_and_a_quoted_line() {
        let remote = Remote {
            host: "ssh://ops@farm:2222".parse().unwrap(),
            lynx: "/opt/lynx dir/lynx".into(),
            ssh_config: Some("/tmp/ssh_config".into()),
        };
        let ssh = remote.command(&["containers".into(), "stop".into(), "web 1".into()]);
        assert_eq!(ssh.get_program(), "ssh");
        let args: Vec<String> = ssh
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-F",
                "/tmp/ssh_config",
                "-T",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "-o",
                "ForwardAgent=no",
                "-o",
                "ForwardX11=no",
                "-o",
                "ClearAllForwardings=yes",
                "-l",
                "ops",
                "-p",
                "2222",
                "--",
                "farm",
                "'/opt/lynx dir/lynx' containers stop 'web 1'",
            ]
        );
    }

    #[test]
    fn exit_statuses_of_ssh_and_the_remote_shell_are_told_apart() {
        use std::os::unix::process::ExitStatusExt;
        let remote = Remote {
            host: "ssh://ops@farm".parse().unwrap(),
            lynx: "lynx".into(),
            ssh_config: None,
        };
        let code = |code: i32| remote.status(ExitStatus::from_raw(code << 8));
        assert_eq!(code(0).unwrap(), 0);
        assert_eq!(code(2).unwrap(), 2);
        assert_eq!(code(3).unwrap(), 3);
        let failed = code(255).unwrap_err();
        assert_eq!(failed.exit_code(), 3);
        assert_eq!(
            failed.to_string(),
            "ssh to ssh://ops@farm failed or its connection ended (ssh exit status 255)"
        );
        let missing = code(127).unwrap_err();
        assert_eq!(missing.exit_code(), 2);
        assert!(
            missing
                .to_string()
                .starts_with("lynx is not on the remote PATH of ssh://ops@farm")
        );
    }
}
