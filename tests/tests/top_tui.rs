//! `lynx top` in a real terminal: tmux runs it against a live daemon that watches two LXD
//! containers, one of them busy, and the test reads the screen back with `capture-pane`.
use std::{
    path::Path,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use lynx::model::Snapshot;
use lynx_tests::{
    ChildGuard, daemon::DaemonUnderTest, lxd::TestContainer, lynx_bin, output_within, privileged,
    tmux::Tmux,
};

/// The pane's size: wide enough for every column of the table.
const WIDTH: u16 = 160;
const HEIGHT: u16 = 40;

/// How long a `top` that prints one table may take: a `top` that wrongly went full-screen
/// would wait for a key forever.
const ONCE_TIMEOUT: Duration = Duration::from_secs(30);

/// The CPU figure in the row of `name`: the first cell that is a percentage.
fn cpu_on_row(line: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|cell| cell.strip_suffix('%')?.parse().ok())
}

/// Index of the line showing container `name` (a whole cell, not part of a longer name).
fn row_of(screen: &[String], name: &str) -> Option<usize> {
    screen
        .iter()
        .position(|line| line.split_whitespace().any(|cell| cell == name))
}

fn cpu_of(snapshot: &Snapshot, name: &str) -> Option<f64> {
    snapshot
        .containers
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.cpu.percent)
}

fn quoted(path: &Path) -> String {
    let text = path.to_str().expect("UTF-8 path");
    assert!(!text.contains('\''), "{text} needs no quoting");
    format!("'{text}'")
}

#[test]
fn top_shows_sorts_and_restores_the_terminal() {
    if !privileged("top_shows_sorts_and_restores_the_terminal") {
        return;
    }
    // Launched first, so that by name the idle one comes first and sorting by CPU must move
    // the busy one above it.
    let idle = TestContainer::launch("top");
    let busy = TestContainer::launch("top");
    assert!(idle.name() < busy.name(), "names order by launch");
    let _spin = ChildGuard(busy.spawn_exec(&["sh", "-c", "while :; do :; done"]));
    let daemon = DaemonUnderTest::start("top", "200ms");
    daemon.wait_for(
        "the busy container above 50% CPU",
        Duration::from_secs(30),
        |s| {
            cpu_of(s, busy.name()).is_some_and(|cpu| cpu > 50.0) && cpu_of(s, idle.name()).is_some()
        },
    );
    let lynx = lynx_bin();
    let config = daemon.config.clone();

    // Scripts: `--once`, and any `top` whose stdout is not a terminal, print one table.
    for args in [&["top", "--once"][..], &["top"]] {
        let output = output_within(
            Command::new(&lynx).arg("--config").arg(&config).args(args),
            ONCE_TIMEOUT,
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "lynx {args:?}: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(lines[0].starts_with("NAME"), "header first:\n{stdout}");
        let row = |name: &str| {
            lines
                .iter()
                .find(|line| line.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"))
        };
        let busy_cpu = cpu_on_row(row(busy.name())).expect("busy CPU %");
        assert!(busy_cpu > 50.0, "busy at {busy_cpu}%:\n{stdout}");
        row(idle.name());
        assert!(
            lines.last().is_some_and(|l| l.starts_with("host ")),
            "host last:\n{stdout}"
        );
        assert!(!stdout.contains('\x1b'), "no escape sequences:\n{stdout}");
    }

    let tty_before = daemon.dir.join("tty.before");
    // A plain shell with a fixed prompt and no rc file: dash does its own line input in the
    // terminal's cooked mode, so it only runs a typed line if `top` restored that.
    let tmux = Tmux::start("top", (WIDTH, HEIGHT), "env -u ENV PS1='$ ' sh");
    tmux.type_line(&format!(
        "stty -g > {}; {} --config {} top; echo top-exit=$?",
        quoted(&tty_before),
        quoted(&lynx),
        quoted(&config)
    ));
    let screen = tmux.wait_for("both containers, the busy one above 50%", |screen| {
        let busy_cpu = row_of(screen, busy.name()).and_then(|row| cpu_on_row(&screen[row]));
        busy_cpu.is_some_and(|cpu| cpu > 50.0) && row_of(screen, idle.name()).is_some()
    });
    assert_eq!(tmux.pane("alternate_on"), "1", "full-screen");
    let idle_cpu =
        cpu_on_row(&screen[row_of(&screen, idle.name()).expect("idle row")]).expect("idle CPU %");
    assert!(
        idle_cpu < 10.0,
        "idle at {idle_cpu}%:\n{}",
        screen.join("\n")
    );
    let text = screen.join("\n");
    for expected in [
        "Host",
        "nginx not found: not counted",
        "CPU%",
        "c cpu",
        "LXD available",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    let above = |screen: &[String], upper: &str, lower: &str| matches!((row_of(screen, upper), row_of(screen, lower)), (Some(u), Some(l)) if u < l);
    assert!(
        above(&screen, idle.name(), busy.name()),
        "by name at first:\n{text}"
    );

    tmux.keys(&["c"]);
    tmux.wait_for("the busy container first when sorted by CPU", |screen| {
        screen.iter().any(|l| l.contains("CPU%▼")) && above(screen, busy.name(), idle.name())
    });
    tmux.keys(&["c"]);
    tmux.wait_for(
        "the idle container first when the CPU sort is reversed",
        |screen| {
            screen.iter().any(|l| l.contains("CPU%▲")) && above(screen, idle.name(), busy.name())
        },
    );
    tmux.keys(&["c"]);

    // The top row, now the busy container, in detail: its CPU history as a sparkline, a full
    // bar per sample at ~100%, growing as `top` reads new snapshots.
    tmux.keys(&["g", "Enter"]);
    tmux.wait_for(
        "the busy container's detail with 3 samples of CPU history",
        |screen| {
            let title = format!(" {} (lxd) ", busy.name());
            let samples = screen.iter().find_map(|line| {
                let (_, rest) = line.split_once("of one CPU, peak ")?;
                let (_, count) = rest.split_once(" over ")?;
                count.split_whitespace().next()?.parse::<u32>().ok()
            });
            screen.iter().any(|l| l.contains(&title))
                && samples.is_some_and(|n| n >= 3)
                && screen.iter().any(|l| l.contains("███"))
        },
    );
    tmux.keys(&["Escape"]);
    tmux.wait_for("the table again", |screen| {
        screen.iter().any(|l| l.contains("nginx"))
    });

    tmux.keys(&["q"]);
    tmux.wait_for("top to exit with 0", |screen| {
        screen.iter().any(|l| shell_output_is(l, "top-exit=0"))
    });
    assert_eq!(tmux.pane("alternate_on"), "0", "back on the normal screen");
    assert_eq!(tmux.pane("cursor_flag"), "1", "cursor shown again");
    // A line typed now only runs in cooked mode, and says whether every tty setting is back.
    let same_tty = |marker: &str| {
        format!(
            "[ \"$(stty -g)\" = \"$(cat {})\" ] && echo {marker}",
            quoted(&tty_before)
        )
    };
    tmux.type_line(&same_tty("ok-after-top"));
    tmux.wait_for("a usable shell after q", |screen| {
        screen.iter().any(|l| shell_output_is(l, "ok-after-top"))
    });

    // Ctrl-C, a key in raw mode, ends it the same way.
    tmux.type_line("clear");
    tmux.type_line(&format!(
        "{} --config {} top --refresh 250ms; echo top-exit2=$?",
        quoted(&lynx),
        quoted(&config)
    ));
    tmux.wait_for("top again", |screen| row_of(screen, busy.name()).is_some());
    tmux.keys(&["C-c"]);
    tmux.wait_for("top to exit with 0 after Ctrl-C", |screen| {
        screen.iter().any(|l| shell_output_is(l, "top-exit2=0"))
    });
    tmux.type_line(&same_tty("ok-after-ctrl-c"));
    tmux.wait_for("a usable shell after Ctrl-C", |screen| {
        screen.iter().any(|l| shell_output_is(l, "ok-after-ctrl-c"))
    });

    // The terminal closing under it (the window or the ssh session goes) ends `top` too.
    let refresh = "--refresh=333ms";
    tmux.type_line(&format!(
        "{} --config {} top {refresh}",
        quoted(&lynx),
        quoted(&config)
    ));
    tmux.wait_for("top a third time", |screen| {
        row_of(screen, busy.name()).is_some()
    });
    let running = || {
        Command::new("pgrep")
            .args(["-f", &format!("top {refresh}")])
            .output()
            .expect("run pgrep")
            .status
            .success()
    };
    assert!(running(), "pgrep finds top");
    drop(tmux);
    let deadline = Instant::now() + Duration::from_secs(5);
    while running() {
        assert!(
            Instant::now() < deadline,
            "lynx top still runs 5 s after its terminal closed"
        );
        sleep(Duration::from_millis(50));
    }
}

/// A line of the pane is `output`: alone, or after the shell's prompt. When the test types
/// ahead of a busy shell, the tty echoes the typed line before the shell prints its prompt,
/// so the prompt then shares a line with what the command prints.
fn shell_output_is(line: &str, output: &str) -> bool {
    line.trim().trim_start_matches('$').trim() == output
}
