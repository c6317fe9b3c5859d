//! Running an external command with a total deadline: a check that hangs (`nginx -t` stuck
//! on a DNS lookup in `proxy_pass`, or on a certificate on a hung mount) must not hold up the
//! thread that runs it, nor a daemon told to stop.
use std::{
    io::{self, Read},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

/// Most bytes kept of each of the command's outputs: enough for any error message.
const MAX_OUTPUT: u64 = 64 * 1024;
/// How often the command is looked at while it runs.
const POLL: Duration = Duration::from_millis(10);

/// What a command that ran printed, and how it ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a command gave no result.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run it: {0}")]
    Spawn(io::Error),
    #[error("no result within {0:?}: killed")]
    TimedOut(Duration),
    #[error("stopped: the daemon is shutting down")]
    Cancelled,
    #[error("cannot wait for it: {0}")]
    Wait(io::Error),
}

/// Runs `command` (no stdin) in a process group of its own and returns its output. Once
/// `timeout` has passed, or as soon as `cancel` is set, the whole group is killed.
pub fn output(
    command: &mut Command,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<Output, CommandError> {
    let deadline = Instant::now() + timeout;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(CommandError::Spawn)?;
    // Read on threads of their own so that a chatty command cannot fill a pipe and stall.
    let (sender, outputs) = mpsc::channel();
    for (index, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let sender = sender.clone();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut bytes);
            }
            let _ = sender.send((index, bytes));
        });
    }
    drop(sender);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(CommandError::Wait)? {
            break status;
        }
        let why = if cancel.load(Ordering::Relaxed) {
            Some(CommandError::Cancelled)
        } else if Instant::now() >= deadline {
            Some(CommandError::TimedOut(timeout))
        } else {
            None
        };
        if let Some(why) = why {
            // SAFETY: kill has no memory-safety preconditions; the group is the child's own.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Err(why);
        }
        thread::sleep(POLL);
    };
    // A process the command left behind may hold its pipes open: wait for the output only
    // until the deadline.
    let mut collected = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
        match outputs.recv_timeout(left) {
            Ok((index, bytes)) => collected[index] = bytes,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = collected;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// How a command ended, for messages: its exit code or the signal that ended it.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn output_and_status_come_back() {
        let never = AtomicBool::new(false);
        let output = output(
            &mut sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
            &never,
        )
        .expect("runs");
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
        assert_eq!(describe(output.status), "exit code 3");
    }

    #[test]
    fn a_command_that_hangs_is_killed_at_its_deadline_with_its_children() {
        let dir = crate::test_support::TempDir::new("command-hang");
        let pid_file = dir.path().join("background.pid");
        let never = AtomicBool::new(false);
        let started = Instant::now();
        let error = output(
            &mut sh(&format!(
                "sleep 3600 & echo $! > {}; sleep 3600",
                pid_file.display()
            )),
            Duration::from_millis(300),
            &never,
        )
        .expect_err("hangs");
        assert!(matches!(error, CommandError::TimedOut(_)), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let background = std::fs::read_to_string(&pid_file).expect("the background pid");
        let stat = format!("/proc/{}/stat", background.trim());
        let deadline = Instant::now() + Duration::from_secs(2);
        // Killed: gone, or a zombie until whoever adopted it reaps it.
        while std::fs::read_to_string(&stat).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        }) {
            assert!(Instant::now() < deadline, "the background sleep still runs");
            thread::sleep(POLL);
        }
    }

    #[test]
    fn cancelling_kills_it_at_once() {
        let cancel = AtomicBool::new(true);
        let started = Instant::now();
        let error = output(&mut sh("sleep 3600"), Duration::from_secs(3600), &cancel)
            .expect_err("cancelled");
        assert!(matches!(error, CommandError::Cancelled), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_missing_binary_is_a_spawn_error() {
        let never = AtomicBool::new(false);
        let error = output(
            &mut Command::new("/nonexistent/nginx"),
            Duration::from_secs(1),
            &never,
        )
        .expect_err("missing");
        assert!(matches!(error, CommandError::Spawn(_)), "{error}");
    }
}
