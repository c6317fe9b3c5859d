//! The terminal in full-screen mode, restored however `lynx top` ends: on return (the guard's
//! `Drop`), on a panic (a hook that restores before the message is printed, so that it lands
//! on the normal screen in cooked mode), and on SIGTERM/SIGHUP/SIGINT (flags the loop checks).
use std::{
    fs::File,
    io::{self, IsTerminal, Stdout},
    os::fd::{AsRawFd, RawFd},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crossterm::{
    cursor::{Hide, Show},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{Terminal, backend::CrosstermBackend};

/// Whether the terminal is in full-screen mode now; restoring clears it, so the panic hook and
/// the guard restore once between them.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Raw mode, alternate screen and hidden cursor while it lives.
pub struct TerminalGuard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
    /// `/dev/tty` when standard input is not the terminal (crossterm reads keys from it then).
    tty: Option<File>,
}

/// What the terminal has for the reader after a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes to read: crossterm turns them into events without blocking.
    Ready,
    /// Nothing within the wait, or a signal cut it short.
    Quiet,
    /// The terminal hung up (its window or session closed).
    Gone,
}

impl TerminalGuard {
    pub fn enter() -> io::Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        // From here on a failure returns through `restore`.
        let enter = || -> io::Result<Self> {
            execute!(io::stdout(), EnterAlternateScreen, Hide)?;
            let tty = match io::stdin().is_terminal() {
                true => None,
                false => Some(File::open("/dev/tty")?),
            };
            Ok(Self {
                terminal: Terminal::new(CrosstermBackend::new(io::stdout()))?,
                tty,
            })
        };
        enter().inspect_err(|_| restore())
    }

    /// Waits up to `timeout` for keys with poll(2). crossterm's own wait never returns once
    /// the terminal hangs up (its reader retries a read that keeps returning end-of-file),
    /// which would leave `lynx top` spinning and deaf to SIGTERM; so crossterm is only asked
    /// for events once bytes are there. A signal ends the wait early, for the caller's flags.
    pub fn wait_for_input(&self, timeout: Duration) -> io::Result<Input> {
        let fd: RawFd = self.tty.as_ref().map_or(0, AsRawFd::as_raw_fd);
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut poll, 1, ms) } {
            0 => Ok(Input::Quiet),
            n if n > 0 => Ok(
                if poll.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                    Input::Gone
                } else {
                    Input::Ready
                },
            ),
            _ => match io::Error::last_os_error() {
                error if error.kind() == io::ErrorKind::Interrupted => Ok(Input::Quiet),
                error => Err(error),
            },
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen, shows the cursor and leaves raw mode, if still needed. Errors
/// are ignored: there is nothing better to do with a terminal that is gone (SIGHUP).
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
        let _ = disable_raw_mode();
    }
}

/// Chains a hook that restores the terminal before the previous hook prints the panic. Once
/// per process: the hook does nothing while no guard is active.
fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
