//! `lynx top`: a full-screen live view of the daemon's snapshot file, or one plain table with
//! `--once` or when standard output is not a terminal. It only reads the file, so it needs no
//! privilege.
//!
//! - [`source`] reads and checks the documents, from the file or a remote stream,
//! - [`app`] holds the state and handles keys, with no terminal,
//! - [`draw`] renders the state,
//! - [`plain`] writes the `--once` table,
//! - `terminal` owns the terminal's full-screen mode and restores it however `top` ends,
//! - [`format`] has the human units.
//!
//! Nothing here logs: a log line would land in the middle of the screen.
pub mod app;
pub mod draw;
pub mod format;
pub mod plain;
pub mod source;
mod terminal;

use std::{
    io::{self, IsTerminal, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use crossterm::event::{self, Event};

pub use self::{
    app::App,
    draw::draw,
    source::{FileSource, SnapshotSource, StreamSource, load_snapshot},
};
use self::{
    app::View,
    terminal::{Input, TerminalGuard},
};
use crate::sink::history::container_minutes;

/// How `lynx top` shows its documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopOptions {
    /// How often to look for a new document (`top.refresh`).
    pub refresh: Duration,
    /// Print one plain table and return, as when standard output is not a terminal.
    pub once: bool,
    /// The daemon's history database (`history.path`), for the detail view's longer
    /// per-minute sparkline; `None` for none.
    pub history_path: Option<PathBuf>,
}

/// How far back the detail view's per-minute sparkline reaches, and how often it is re-read.
const LONG_SPAN: Duration = Duration::from_secs(6 * 3600);
const LONG_RELOAD: Duration = Duration::from_secs(60);

/// Why `lynx top` could not show the snapshot. One line each.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("no snapshot at {}: is `lynx daemon` running?", .path.display())]
    NoSnapshot { path: PathBuf },
    #[error("cannot read snapshot {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("snapshot {} is not valid JSON: {source}", .path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("snapshot {} has no schema version", .path.display())]
    NoVersion { path: PathBuf },
    #[error("snapshot {} has schema version {found}, this lynx reads {expected}", .path.display())]
    Version {
        path: PathBuf,
        found: u64,
        expected: u32,
    },
    #[error("snapshot {} does not match schema version {version}: {source}", .path.display())]
    Schema {
        path: PathBuf,
        version: u32,
        source: serde_json::Error,
    },
    #[error("the snapshot stream from {origin} ended: {why}")]
    StreamEnded { origin: String, why: String },
    #[error("terminal: {0}")]
    Terminal(io::Error),
    #[error("cannot write to standard output: {0}")]
    Stdout(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
}

/// Longest wait between looks at the signal flags: how long SIGTERM may take to end `top`.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);
/// Shortest refresh, so that a zero from a caller cannot spin.
const MIN_REFRESH: Duration = Duration::from_millis(10);

/// Runs `lynx top`. The first read must succeed, so that a missing daemon or a foreign file is
/// a message in the shell; later failed reads show in the status line over the last document.
pub fn run(source: &mut dyn SnapshotSource, options: &TopOptions) -> Result<(), TuiError> {
    let snapshot = source.first()?;
    if options.once || !io::stdout().is_terminal() {
        let mut out = io::stdout().lock();
        return match plain::write_table(&mut out, &snapshot).and_then(|()| out.flush()) {
            // `lynx top --once | head -1` is a normal use.
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            result => result.map_err(TuiError::Stdout),
        };
    }
    // Raw mode turns Ctrl-C into a key; these are the signals still delivered (a `kill`, the
    // terminal closing). Their default action would end the process without restoring.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(TuiError::Signals)?;
    }
    let mut app = App::new(source.origin());
    app.update(snapshot);
    let mut guard = TerminalGuard::enter().map_err(TuiError::Terminal)?;
    live(&mut guard, &mut app, source, options, &stop)
}

/// The full-screen loop: keys as they come, the source every `refresh`.
fn live(
    guard: &mut TerminalGuard,
    app: &mut App,
    source: &mut dyn SnapshotSource,
    options: &TopOptions,
    stop: &AtomicBool,
) -> Result<(), TuiError> {
    let refresh = options.refresh.max(MIN_REFRESH);
    let mut next_read = Instant::now() + refresh;
    let mut redraw = true;
    let mut last_size = None;
    while !app.quit && !stop.load(Ordering::Relaxed) {
        if redraw {
            app.now = SystemTime::now();
            guard
                .terminal
                .draw(|frame| draw(frame, app))
                .map_err(TuiError::Terminal)?;
            redraw = false;
        }
        let wait = next_read
            .saturating_duration_since(Instant::now())
            .min(SIGNAL_CHECK);
        // Resizes are seen by size, not as crossterm events: crossterm is only asked for
        // events when keys are waiting (see `wait_for_input`).
        let size = guard.terminal.size().map_err(TuiError::Terminal)?;
        if Some(size) != last_size {
            last_size = Some(size);
            redraw = true;
        }
        match guard.wait_for_input(wait).map_err(TuiError::Terminal)? {
            // Nobody is looking any more; nothing to restore on a terminal that is gone.
            Input::Gone => return Ok(()),
            Input::Quiet => {}
            Input::Ready => {
                while event::poll(Duration::ZERO).map_err(TuiError::Terminal)? {
                    if let Event::Key(key) = event::read().map_err(TuiError::Terminal)? {
                        app.key(key);
                        redraw = true;
                    }
                }
            }
        }
        if let Some(path) = &options.history_path
            && app.long_history_due(LONG_RELOAD)
            && let View::Detail(name) = &app.view
        {
            let since = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |now| now.saturating_sub(LONG_SPAN).as_secs() as i64);
            let minutes = container_minutes(path, name, since).map_err(|e| e.to_string());
            app.set_long_history(name.clone(), minutes);
            redraw = true;
        }
        if Instant::now() >= next_read {
            next_read = Instant::now() + refresh;
            match source.poll() {
                // An unchanged document leaves the history alone; the screen is still redrawn
                // for the snapshot's age, which ratatui sends as the few cells that changed.
                Ok(Some(snapshot)) => {
                    app.update(snapshot);
                }
                Ok(None) => {}
                Err(error) => app.read_failed(&error),
            }
            redraw = true;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::model::{Container, Cpu, Memory, Snapshot, fixtures};

    const HOST_MEMORY_MB: u64 = 24_105;

    /// A snapshot taken at `timestamp` of LXD containers given as (name, CPU %, memory
    /// bytes), with the `host` entry last, as the daemon orders them.
    pub fn fixture(timestamp: &str, containers: &[(&str, f64, u64)]) -> Snapshot {
        let mut list: Vec<Container> = containers
            .iter()
            .zip(10..)
            .map(|(&(name, cpu, used_bytes), n)| Container {
                pid: Some(12_000 + n),
                ipv4: vec![format!("10.177.42.{n}")],
                image: Some("Lynx test busybox".into()),
                uptime_s: Some(65),
                cgroup: Some(format!("/lxc.payload.{name}")),
                processes: Some(4),
                cpu: Cpu {
                    ns: 1_000_000_000,
                    percent: cpu,
                },
                memory: Some(Memory {
                    used_bytes,
                    limit_bytes: None,
                    percent_of_host: used_bytes as f64 / (HOST_MEMORY_MB << 20) as f64 * 100.0,
                    swap_bytes: 0,
                }),
                ..fixtures::container(name, "lxd", "Running")
            })
            .collect();
        list.push(Container {
            cpu: Cpu {
                ns: 28_416_451,
                percent: 2.36,
            },
            // By default the host's traffic is not counted.
            network: None,
            ..fixtures::container("host", "host", "Running")
        });
        let mut snapshot = fixtures::snapshot(timestamp, list);
        snapshot.host.cpu_percent = 51.01;
        snapshot.host.memory_total_mb = HOST_MEMORY_MB;
        snapshot
    }

    /// A file under a directory of this test process, removed on drop.
    pub struct ScratchFile(PathBuf);

    impl ScratchFile {
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for ScratchFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0).or_else(|_| std::fs::remove_dir_all(&self.0));
        }
    }

    /// Writes `contents` to a scratch file named after `name`.
    pub fn scratch_file(name: &str, contents: &[u8]) -> ScratchFile {
        let dir = std::env::temp_dir().join(format!("lynx-tui-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, contents).expect("write scratch file");
        ScratchFile(path)
    }

    #[test]
    fn errors_are_one_line() {
        let path = PathBuf::from("/run/lynx/snapshot.json");
        let errors = [
            TuiError::NoSnapshot { path: path.clone() },
            TuiError::Version {
                path: path.clone(),
                found: 3,
                expected: 2,
            },
            TuiError::Terminal(io::Error::other("not a tty")),
        ];
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "no snapshot at /run/lynx/snapshot.json: is `lynx daemon` running?",
                "snapshot /run/lynx/snapshot.json has schema version 3, this lynx reads 2",
                "terminal: not a tty",
            ]
        );
    }

    #[test]
    fn run_says_when_there_is_no_snapshot_before_touching_the_terminal() {
        let error = run(
            &mut FileSource("/nonexistent/snapshot.json".into()),
            &TopOptions {
                refresh: Duration::from_secs(1),
                once: false,
                history_path: None,
            },
        )
        .expect_err("no file");
        assert!(matches!(error, TuiError::NoSnapshot { .. }), "{error}");
    }
}
