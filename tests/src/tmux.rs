//! A real terminal for the tests: a tmux server of one test alone (its own socket) with one
//! detached session, keys typed into it and the screen read back with `capture-pane`.
use crate::{require, run_ok};
use std::{
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

/// How long the screen may take to show what is expected.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Killed on drop, also when the test panics, which ends whatever runs in the pane.
pub struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    /// A `width` x `height` session running `command` (a shell command line).
    pub fn start(name: &str, (width, height): (u16, u16), command: &str) -> Self {
        require("tmux");
        let tmux = Self {
            socket: format!("lynx-test-{name}-{}", std::process::id()),
            session: name.to_owned(),
        };
        let (width, height) = (width.to_string(), height.to_string());
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            &tmux.session,
            "-x",
            &width,
            "-y",
            &height,
            command,
        ]);
        tmux
    }

    /// `tmux ARGS` on this test's server; panics unless it succeeds, returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        run_ok(Command::new("tmux").arg("-L").arg(&self.socket).args(args))
    }

    /// Types `text` and Enter.
    pub fn type_line(&self, text: &str) {
        self.type_text(text);
        self.keys(&["Enter"]);
    }

    /// Types `text` as it is.
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", &self.session, "-l", text]);
    }

    /// Presses keys by tmux's names (`c`, `Enter`, `Escape`, `C-c`, `Tab`).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend(keys);
        self.run(&args);
    }

    /// The visible pane, line by line.
    pub fn screen(&self) -> Vec<String> {
        self.run(&["capture-pane", "-p", "-t", &self.session])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A pane variable, e.g. `alternate_on`.
    pub fn pane(&self, variable: &str) -> String {
        self.run(&[
            "display-message",
            "-p",
            "-t",
            &self.session,
            &format!("#{{{variable}}}"),
        ])
        .trim()
        .to_owned()
    }

    /// Waits until the screen satisfies `condition`; panics with the screen otherwise.
    pub fn wait_for(
        &self,
        what: &str,
        mut condition: impl FnMut(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let screen = self.screen();
            if condition(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited {SCREEN_TIMEOUT:?} for {what}; the pane shows:\n{}",
                screen.join("\n")
            );
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        for args in [
            vec!["kill-session", "-t", self.session.as_str()],
            vec!["kill-server"],
        ] {
            let _ = Command::new("tmux")
                .arg("-L")
                .arg(&self.socket)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
