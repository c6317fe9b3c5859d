//! `lynx generate DIR` (hidden): the manual pages and shell completions, made from the command
//! line's own definition so that they cannot drift from it. `cargo xtask package` runs it and
//! ships what it writes; nothing generated is kept in git.
use std::{
    fs,
    io::{self, Write},
    path::Path,
};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::{
    Man,
    roff::{Roff, bold, roman},
};

use crate::cli::{Cli, VERSION};

/// Writes `DIR/man/lynx.1` and a page per subcommand (`lynx-daemon.1`, `lynx-containers-list.1`,
/// ...), and `DIR/completions/` for bash (`lynx.bash`), zsh (`_lynx`) and fish (`lynx.fish`).
pub fn generate(dir: &Path) -> io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;
    // `lynx help` needs no page of its own. Building gives subcommands their display names
    // (`lynx-daemon`), which name their pages.
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    write_pages(&command, &man)?;
    let mut completable = completable(&Cli::command());
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut completable, "lynx", &completions)?;
    }
    Ok(())
}

/// `command` as completions should offer it: clap_complete lists hidden subcommands too, so
/// `lynx` is rebuilt from its arguments and its visible subcommands.
fn completable(command: &clap::Command) -> clap::Command {
    clap::Command::new("lynx")
        .version(VERSION)
        .args(command.get_arguments().cloned())
        .subcommands(
            command
                .get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .cloned(),
        )
}

/// The page of `command` and of each visible subcommand, below it.
fn write_pages(command: &clap::Command, dir: &Path) -> io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    let page = Man::new(command.clone());
    let mut file = fs::File::create(dir.join(page.get_filename()))?;
    page.render(&mut file)?;
    let name = command.get_display_name().unwrap_or(command.get_name());
    if matches!(name, "lynx" | "lynx-daemon") {
        extra_sections(name).to_writer(&mut file)?;
    }
    file.flush()
}

/// What the generated sections cannot say: files, environment, exit status, the service.
fn extra_sections(name: &str) -> Roff {
    let mut roff = Roff::default();
    let item = |roff: &mut Roff, term: &str, text: &str| {
        roff.control("TP", [])
            .text([bold(term)])
            .text([roman(text)]);
    };
    roff.control("SH", ["FILES"]);
    for (file, what) in FILES {
        item(&mut roff, file, what);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    item(
        &mut roff,
        "LYNX_LOG",
        "Log filter (tracing's EnvFilter syntax), e.g. debug or lynx=debug; info by default. \
         Logs go to standard error, which systemd sends to the journal.",
    );
    roff.control("SH", ["EXIT STATUS"]);
    for (code, what) in EXIT_STATUS {
        item(&mut roff, code, what);
    }
    if name == "lynx-daemon" {
        roff.control("SH", ["SERVICE"]);
        roff.text([roman(
            "The Debian package runs the daemon as lynx.service, as the lynx user with only \
             the capabilities it needs (see the unit file). It tells systemd it is ready \
             (sd_notify READY=1) once its kernel programs are attached and its first snapshot \
             is written. SIGTERM or SIGINT stop it and detach its programs; the pinned maps \
             stay, so the next daemon continues the counts.",
        )]);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "lynx(1), lynx-daemon(1), lynx-top(1), lynx-snapshot(1), lynx-history(1), \
         lynx-containers(1), lynx-images(1), systemctl(1), journalctl(1)",
    )]);
    roff
}

const FILES: [(&str, &str); 4] = [
    (
        "/etc/lynx/lynx.toml",
        "The configuration; every key is optional and the installed file lists each with its \
         default. Another file is named with --config.",
    ),
    (
        "/run/lynx/snapshot.json",
        "The daemon's snapshot document, replaced atomically every interval.",
    ),
    (
        "/var/lib/lynx/history.db",
        "Per-minute aggregates (SQLite), read by lynx history.",
    ),
    (
        "/sys/fs/bpf/lynx",
        "The pinned kernel maps, so that a restarted daemon continues the counts.",
    ),
];

const EXIT_STATUS: [(&str, &str); 4] = [
    ("0", "Success."),
    (
        "1",
        "Any other failure, such as LXD refusing an operation or an image in use.",
    ),
    (
        "2",
        "Bad input (command line, config file, a name that matches nothing), a host that \
         cannot run Lynx (a missing capability or kernel feature, named), or a daemon already \
         running on the same pinned maps.",
    ),
    ("3", "LXD cannot be reached."),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_command_gets_a_page_and_every_shell_a_completion() {
        let dir = std::env::temp_dir().join(format!("lynx-generate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        generate(&dir).expect("generate");
        for page in [
            "lynx.1",
            "lynx-daemon.1",
            "lynx-containers-list.1",
            "lynx-top.1",
        ] {
            let text = fs::read_to_string(dir.join("man").join(page)).expect(page);
            assert!(text.contains(".SH NAME"), "{page}:\n{text}");
        }
        let daemon = fs::read_to_string(dir.join("man/lynx-daemon.1")).expect("daemon page");
        assert!(daemon.contains("/var/lib/lynx/history.db"), "{daemon}");
        assert!(daemon.contains("READY=1"), "{daemon}");
        assert!(
            !dir.join("man/lynx-generate.1").exists(),
            "the hidden generator has no page"
        );
        let bash = fs::read_to_string(dir.join("completions/lynx.bash")).expect("bash");
        assert!(
            bash.contains("containers") && !bash.contains("generate"),
            "{bash}"
        );
        assert!(dir.join("completions/_lynx").exists());
        assert!(dir.join("completions/lynx.fish").exists());
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
