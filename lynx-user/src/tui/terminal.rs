//! The terminal in full-screen mode, restored however `lynx top` ends: on return (the guard's
//! `Drop`), on a panic (a hook that restores before the message is printed, so that it lands
//! on the normal screen in cooked mode), and on SIGTERM/SIGHUP/SIGINT (flags the loop checks).
use std::{
    io::{self, Stdout},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
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
}

impl TerminalGuard {
    pub fn enter() -> io::Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        // From here on a failure returns through `restore`.
        let enter = || -> io::Result<Self> {
            execute!(io::stdout(), EnterAlternateScreen, Hide)?;
            Ok(Self {
                terminal: Terminal::new(CrosstermBackend::new(io::stdout()))?,
            })
        };
        enter().inspect_err(|_| restore())
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
