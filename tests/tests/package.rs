//! The Debian package (`cargo xtask package`; `cargo xtask test` builds it and names it in
//! `LYNX_DEB`): lintian's verdict, what installing it puts on the machine, its unit run as
//! systemd would run it (tests/src/service.rs says how far that goes without systemd as PID 1),
//! what each capability of the unit is for, an upgrade over a running daemon, remove and
//! purge, man pages and completion. Each test installs the package on this machine with
//! apt-get, one at a time, and leaves the machine as it found it (`InstalledPackage`).
use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use lynx::model::Snapshot;
use lynx_tests::{
    assert_close,
    control::Farm,
    cpu_stat_usage_ns,
    daemon::tracepoints_of,
    lxd::TestContainer,
    nginx::free_port,
    package::{CONFIG, HISTORY, InstalledPackage, PINS, SNAPSHOT, built_package},
    privileged, run_ok,
    service::{Service, Unit},
    tmux::Tmux,
    workspace,
};

/// How long the daemon may take to attach its programs and write its first snapshot.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn deb() -> PathBuf {
    built_package("LYNX_DEB")
}

/// A directory of one test's files (logs, traces, unpacked packages), removed on drop.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("lynx-package-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    Scratch(dir)
}

/// A loopback port below 1024 that nothing listens on.
fn free_privileged_port() -> u16 {
    (600..1024)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port below 1024")
}

/// The config an operator would write for this farm: the default paths, every 200 ms, the
/// metrics endpoint on a free loopback port, and the group's 503 fallback on a port below
/// 1024, as nginx's own ports are in production (`nginx -t` must bind it).
fn configure(farm: Option<&Farm>) {
    let farm = farm
        .map(|f| {
            f.config("").replace(
                &format!("fallback_port = {}", f.fallback_port),
                &format!("fallback_port = {}", free_privileged_port()),
            )
        })
        .unwrap_or_default();
    let text = format!(
        "[daemon]\ninterval = \"200ms\"\n[prometheus]\nlisten = \"127.0.0.1:{}\"\n{farm}",
        free_port()
    );
    fs::write(CONFIG, text).expect("write /etc/lynx/lynx.toml");
}

/// The installed unit's `ExecStart` running as the unit says, `without` one capability, after
/// what systemd does at boot (bpffs and tmpfiles); its log in `dir`.
fn start(package: &InstalledPackage, without: Option<&str>, dir: &Path) -> (Unit, Service) {
    package.boot_tmpfiles();
    let (_, unit) = package.unit();
    let service = Service::start(&unit, without, &dir.join("journal.log"));
    (unit, service)
}

fn wait_ready(service: &Service) {
    assert!(
        service.notify.wait_for("READY=1", READY_TIMEOUT),
        "no READY=1 on $NOTIFY_SOCKET within {READY_TIMEOUT:?}; log:\n{}",
        service.log()
    );
}

/// The capability names of a `/proc/PID/status` mask line (`CapEff:` ...).
fn capabilities_of(pid: u32, line: &str) -> BTreeSet<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .unwrap_or_else(|| panic!("no {line} in status"))
        .trim();
    let mask = u64::from_str_radix(hex, 16).expect("capability mask");
    // setpriv lists the names it knows in the kernel's order: bit N is the Nth name.
    run_ok(Command::new("setpriv").arg("--list-caps"))
        .lines()
        .enumerate()
        .filter(|&(bit, _)| bit < 64 && mask & (1 << bit) != 0)
        .map(|(_, name)| format!("CAP_{}", name.trim().to_uppercase()))
        .collect()
}

fn uid_of(user: &str) -> u32 {
    run_ok(Command::new("id").args(["-u", user]))
        .trim()
        .parse()
        .expect("uid")
}

#[test]
fn lintian_reports_no_error_and_the_package_needs_nothing_beyond_libc() {
    if !privileged("lintian_reports_no_error_and_the_package_needs_nothing_beyond_libc") {
        return;
    }
    let deb = deb();
    let output = Command::new("lintian")
        .args(["--info", "--display-level", ">=pedantic"])
        .arg(&deb)
        .output()
        .expect("run lintian");
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("lintian {}:\n{report}", deb.display());
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));

    // Declared: libc (and libgcc's unwinder, part of the same base system) from
    // dpkg-shlibdeps, adduser for the postinst. nginx and LXD only suggested.
    let field = |name: &str| run_ok(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name));
    let depends: BTreeSet<String> = field("Depends")
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or_default().to_owned())
        .collect();
    let allowed: BTreeSet<String> = ["adduser", "libc6", "libgcc-s1"].map(String::from).into();
    assert!(depends.is_subset(&allowed), "Depends: {depends:?}");
    assert!(field("Suggests").contains("nginx") && field("Suggests").contains("lxd"));

    // What the packaged binary loads: libraries of those packages only.
    let dir = scratch("lintian");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&*dir));
    let binary = dir.join("usr/bin/lynx");
    let ldd = run_ok(Command::new("ldd").arg(&binary));
    for library in ldd.lines().filter_map(|l| l.split("=> ").nth(1)) {
        let path = library.split_whitespace().next().expect("library path");
        let owner = run_ok(Command::new("dpkg").args(["-S", path]));
        let package = owner.split(':').next().unwrap_or_default();
        assert!(
            ["libc6", "libgcc-s1"].contains(&package),
            "{path} comes from {package}"
        );
    }

    // A release build with the eBPF object embedded, and a version that names both.
    let version = run_ok(Command::new(&binary).arg("--version"));
    let object = std::env::var_os("LYNX_EBPF_OBJECT").expect("xtask sets LYNX_EBPF_OBJECT");
    let object_sha = run_ok(Command::new("sha256sum").arg(&object));
    let revision = run_ok(
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(workspace()),
    );
    assert_eq!(
        version.trim(),
        format!(
            "lynx {} (git {}, eBPF build id {})",
            env!("CARGO_PKG_VERSION"),
            revision.trim(),
            &object_sha[..40]
        )
    );
    let sections = run_ok(Command::new("readelf").arg("-S").arg(&binary));
    assert!(!sections.contains(".debug_info"), "the binary is stripped");
}

/// What `apt-get install` must put on the machine (the unit is checked through `unit()`).
const INSTALLED_FILES: [&str; 11] = [
    "/usr/bin/lynx",
    CONFIG,
    "/usr/lib/tmpfiles.d/lynx.conf",
    "/usr/share/man/man1/lynx.1.gz",
    "/usr/share/man/man1/lynx-daemon.1.gz",
    "/usr/share/man/man1/lynx-containers-list.1.gz",
    "/usr/share/bash-completion/completions/lynx",
    "/usr/share/zsh/vendor-completions/_lynx",
    "/usr/share/fish/vendor_completions.d/lynx.fish",
    "/usr/share/doc/lynx/copyright",
    "/usr/share/doc/lynx/changelog.Debian.gz",
];

#[test]
fn installed_unit_runs_as_its_user_with_its_capabilities_counts_and_reloads_nginx() {
    if !privileged("installed_unit_runs_as_its_user_with_its_capabilities_counts_and_reloads_nginx")
    {
        return;
    }
    let dir = scratch("run");
    let package = InstalledPackage::install(&deb());
    for file in INSTALLED_FILES {
        assert!(Path::new(file).exists(), "{file} is not installed");
    }
    let conffiles = run_ok(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "lynx"]));
    assert!(conffiles.contains(CONFIG), "conffiles: {conffiles}");
    assert_eq!(
        fs::read_to_string(CONFIG).expect("read the config"),
        fs::read_to_string(workspace().join("lynx.example.toml")).expect("read the example"),
        "the conffile is the commented example with every default"
    );
    let passwd = run_ok(Command::new("getent").args(["passwd", "lynx"]));
    assert!(
        passwd.trim_end().ends_with(":/usr/sbin/nologin") && uid_of("lynx") < 1000,
        "lynx is a system user without a login: {passwd}"
    );

    let (unit_path, _) = package.unit();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("run systemd-analyze verify");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{complaints}",
        unit_path.display(),
        verify.status
    );
    let security = run_ok(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&unit_path),
    );
    eprintln!("{security}");
    let score = security
        .lines()
        .find_map(|l| l.strip_prefix("→ Overall exposure level for lynx.service: "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an overall exposure level");
    let readme = fs::read_to_string(workspace().join("README.md")).expect("read README");
    assert!(
        readme.contains(&format!("exposure level **{score}**")),
        "README gives the unit's exposure level as measured, {score}"
    );

    let farm = Farm::new("pkg", 1);
    let busy = TestContainer::launch("pkg-busy");
    configure(Some(&farm));
    let (unit, mut service) = start(&package, None, &dir);
    wait_ready(&service);
    // READY=1 comes after the first snapshot is written, in the unit's runtime directory.
    let snapshot = fs::metadata(SNAPSHOT).expect("a snapshot when READY=1 comes");
    let lynx = uid_of("lynx");
    assert_eq!(snapshot.uid(), lynx, "the snapshot is the lynx user's");
    let pid = service.pid();
    assert_eq!(
        fs::metadata(format!("/proc/{pid}")).expect("stat").uid(),
        lynx,
        "the daemon runs as lynx"
    );
    for mask in ["CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            capabilities_of(pid, mask),
            unit.capabilities(),
            "{mask} of the daemon"
        );
    }
    assert!(
        !tracepoints_of(pid).is_empty(),
        "the daemon holds its programs' links"
    );
    let pins = fs::read_dir(PINS)
        .expect("the daemon pinned its maps")
        .count();
    assert!(pins > 0 && fs::metadata(PINS).expect("stat").uid() == lynx);

    // The busy container's CPU time against the kernel's own accounting.
    let snapshot_path = Path::new(SNAPSHOT);
    let cgroup = lynx::collector::cgroupfs::CgroupLayout::detect()
        .expect("cgroup layout")
        .unified
        .join(format!("lxc.payload.{}", busy.name()));
    let cpu = |s: &Snapshot| {
        s.containers
            .iter()
            .find(|c| c.name == busy.name())
            .map(|c| c.cpu.ns)
    };
    service.wait_for(snapshot_path, "the busy container", READY_TIMEOUT, |s| {
        cpu(s).is_some()
    });
    let before = service.next_snapshot(snapshot_path);
    let oracle_before = cpu_stat_usage_ns(&cgroup);
    // `timeout` ends the loop with SIGTERM: its exit status says nothing here.
    busy.exec(&["timeout", "3", "sh", "-c", "while :; do :; done"]);
    std::thread::sleep(Duration::from_millis(500));
    let after = service.next_snapshot(snapshot_path);
    let oracle_after = cpu_stat_usage_ns(&cgroup);
    assert_close(
        cpu(&after).expect("busy") - cpu(&before).expect("busy"),
        oracle_after - oracle_before,
        0.03,
        "busy container CPU under the packaged unit vs cpu.stat",
    );

    // The group's upstream: written, checked with `nginx -t` and nginx reloaded by the daemon.
    farm.until_answer(
        "the container's page through Lynx's upstream",
        Duration::from_secs(30),
        |answer| answer.as_ref().is_ok_and(|page| *page == farm.pages[0]),
    );

    let status = service.stop();
    assert!(status.success(), "exit on SIGTERM: {status}");
    assert!(
        service.log().contains("daemon stopping"),
        "{}",
        service.log()
    );
}

/// The history's minutes and their sample counts.
fn history_minutes() -> Vec<(i64, i64)> {
    let db =
        rusqlite::Connection::open_with_flags(HISTORY, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the history database");
    let mut query = db
        .prepare("SELECT minute, samples FROM minutes ORDER BY minute")
        .expect("query minutes");
    query
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("read minutes")
        .collect::<Result<_, _>>()
        .expect("read minutes")
}

#[test]
fn upgrading_over_a_running_daemon_keeps_history_and_counters() {
    if !privileged("upgrading_over_a_running_daemon_keeps_history_and_counters") {
        return;
    }
    let dir = scratch("upgrade");
    let package = InstalledPackage::install(&deb());
    let busy = TestContainer::launch("pkg-upgrade");
    configure(None);
    let (unit, mut old) = start(&package, None, &dir);
    wait_ready(&old);
    let snapshot_path = Path::new(SNAPSHOT);
    busy.exec(&["timeout", "2", "sh", "-c", "while :; do :; done"]);
    let cpu = |s: &Snapshot| {
        s.containers
            .iter()
            .find(|c| c.name == busy.name())
            .map_or(0, |c| c.cpu.ns)
    };
    // History is written a minute at a time, when the next one begins.
    old.wait_for(
        snapshot_path,
        "a history minute written",
        Duration::from_secs(75),
        |_| Path::new(HISTORY).exists() && !history_minutes().is_empty(),
    );
    let before = old.next_snapshot(snapshot_path);
    let minutes_before = history_minutes();
    assert!(cpu(&before) > 1_000_000_000, "the busy loop is counted");

    package.apt_install(&built_package("LYNX_DEB_UPGRADE"));
    let version = run_ok(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "lynx"]));
    assert!(version.ends_with("+upgrade1"), "upgraded to {version}");
    // Without systemd as PID 1 the postinst restarts nothing ([ -d /run/systemd/system ]):
    // the old daemon runs on, from the binary dpkg replaced.
    assert!(old.exited().is_none(), "the postinst left the daemon alone");
    let exe = fs::read_link(format!("/proc/{}/exe", old.pid())).expect("old exe");
    assert!(exe.to_string_lossy().ends_with("(deleted)"), "{exe:?}");
    // Under systemd the postinst runs `deb-systemd-invoke restart lynx.service` once
    // (see the maintainer-scripts test): stop, then start, as here.
    assert!(old.stop().success(), "the old daemon stops on SIGTERM");
    let mut new = Service::start(&unit, None, &dir.join("journal-new.log"));
    wait_ready(&new);
    let exe = fs::read_link(format!("/proc/{}/exe", new.pid())).expect("new exe");
    assert_eq!(exe, Path::new("/usr/bin/lynx"), "the new binary runs");
    let after = new.next_snapshot(snapshot_path);
    assert!(
        cpu(&after) >= cpu(&before),
        "the busy container's CPU time went back from {} to {} ns: the pins were not kept",
        cpu(&before),
        cpu(&after)
    );
    assert!(
        new.log().contains("daemon running")
            && !new
                .log()
                .contains("removed maps pinned by another layout version"),
        "{}",
        new.log()
    );
    assert!(new.stop().success());
    let minutes_after = history_minutes();
    for (minute, samples) in &minutes_before {
        let kept = minutes_after.iter().find(|(m, _)| m == minute);
        assert!(
            kept.is_some_and(|(_, s)| s >= samples),
            "history minute {minute} ({samples} samples) was not kept: {minutes_after:?}"
        );
    }
}

#[test]
fn remove_keeps_history_and_pins_and_purge_removes_them() {
    if !privileged("remove_keeps_history_and_pins_and_purge_removes_them") {
        return;
    }
    let dir = scratch("purge");
    let package = InstalledPackage::install(&deb());
    configure(None);
    let (_, mut service) = start(&package, None, &dir);
    wait_ready(&service);
    // Under systemd the prerm stops the unit before removal; here the test does.
    assert!(service.stop().success());
    assert!(Path::new(HISTORY).exists(), "the daemon wrote its history");
    let pinned = |dir: &str| fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    assert!(pinned(PINS) > 0, "the daemon pinned its maps");

    package.remove();
    assert!(
        !Path::new("/usr/bin/lynx").exists(),
        "remove takes the binary"
    );
    assert!(Path::new(HISTORY).exists(), "remove keeps /var/lib/lynx");
    assert!(pinned(PINS) > 0, "remove keeps the pinned counters");
    assert!(Path::new(CONFIG).exists(), "remove keeps the conffile");

    package.purge();
    for gone in ["/var/lib/lynx", PINS, "/etc/lynx", "/run/lynx"] {
        assert!(!Path::new(gone).exists(), "purge leaves {gone}");
    }
}

/// dpkg's `path-exclude` lines that cover manual pages (Debian's minimal images have them).
fn man_path_excludes() -> Vec<String> {
    let configs = std::iter::once(PathBuf::from("/etc/dpkg/dpkg.cfg")).chain(
        fs::read_dir("/etc/dpkg/dpkg.cfg.d")
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok().map(|e| e.path())),
    );
    configs
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| line.starts_with("path-exclude") && line.contains("/usr/share/man"))
        .collect()
}

#[test]
fn man_pages_and_bash_completion_work_after_installing() {
    if !privileged("man_pages_and_bash_completion_work_after_installing") {
        return;
    }
    let dir = scratch("man");
    let _package = InstalledPackage::install(&deb());
    for (page, expected) in [
        ("lynx", "autoscaler for nginx and LXD"),
        ("lynx-daemon", "READY=1"),
    ] {
        let installed = Path::new("/usr/share/man/man1").join(format!("{page}.1.gz"));
        let mut man = Command::new("man");
        man.env("MANPAGER", "cat").env("MANWIDTH", "100");
        if installed.exists() {
            man.arg(page);
        } else {
            // Honestly: this machine's dpkg drops manual pages, so `man PAGE` cannot work
            // here whatever the package does; read the packaged page itself.
            let excludes = man_path_excludes();
            assert!(
                !excludes.is_empty(),
                "{} is not installed and dpkg excludes no manual pages",
                installed.display()
            );
            eprintln!(
                "dpkg drops manual pages on this machine ({}): reading {page}(1) from the \
                 package with man -l",
                excludes.join("; ")
            );
            let unpacked = dir.join("unpacked");
            run_ok(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&unpacked));
            man.arg("-l")
                .arg(unpacked.join(installed.strip_prefix("/").expect("abs")));
        }
        let text = run_ok(&mut man);
        assert!(text.contains(expected), "man {page}:\n{text}");
    }

    // TAB in a login bash, as an operator gets it: /etc/profile.d loads bash-completion, which
    // loads the package's completion for `lynx` on first use.
    let home = dir.join("home");
    fs::create_dir_all(&home).expect("create home");
    let tmux = Tmux::start(
        "completion",
        (120, 30),
        &format!("env -i HOME={} TERM=xterm bash --login", home.display()),
    );
    tmux.type_text("lynx ");
    tmux.keys(&["Tab", "Tab"]);
    tmux.wait_for("lynx's subcommands offered", |screen| {
        let text = screen.join("\n");
        [
            "containers",
            "daemon",
            "history",
            "images",
            "snapshot",
            "top",
        ]
        .iter()
        .all(|sub| text.contains(sub))
    });
    tmux.keys(&["C-u"]);
    tmux.type_text("lynx conta");
    tmux.keys(&["Tab"]);
    tmux.wait_for("`lynx conta` completed to containers", |screen| {
        screen
            .iter()
            .any(|line| line.trim_end().ends_with("lynx containers"))
    });
}

/// Runs the maintainer script `script ARGS` of `deb` as dpkg would, in a mount namespace of
/// its own where `/run/systemd/system` exists when `systemd` is true (how scripts tell that
/// systemd is PID 1), with `systemctl`, `deb-systemd-invoke` and `deb-systemd-helper`
/// replaced by stand-ins that record their arguments; returns the calls.
fn maintainer_script_calls(
    deb: &Path,
    dir: &Path,
    script: &str,
    args: &[&str],
    systemd: bool,
) -> Vec<String> {
    let control = dir.join("control");
    let shims = dir.join("shims");
    let calls = dir.join("calls");
    let _ = fs::remove_dir_all(&control);
    run_ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    fs::create_dir_all(&shims).expect("create shims");
    for tool in ["systemctl", "deb-systemd-invoke", "deb-systemd-helper"] {
        let shim = shims.join(tool);
        fs::write(
            &shim,
            format!("#!/bin/sh\necho \"{tool} $*\" >> {}\n", calls.display()),
        )
        .expect("write shim");
        run_ok(Command::new("chmod").arg("755").arg(&shim));
    }
    let _ = fs::remove_file(&calls);
    let fake_systemd = if systemd {
        "mount -t tmpfs lynx-test /run/systemd && mkdir /run/systemd/system && "
    } else {
        ""
    };
    run_ok(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec"])
            .arg(format!(
                "{fake_systemd}PATH={}:$PATH sh -e {} {}",
                shims.display(),
                control.join(script).display(),
                args.join(" ")
            )),
    );
    fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn maintainer_scripts_start_and_restart_once_under_systemd_and_leave_other_hosts_alone() {
    if !privileged(
        "maintainer_scripts_start_and_restart_once_under_systemd_and_leave_other_hosts_alone",
    ) {
        return;
    }
    let dir = scratch("scripts");
    let _package = InstalledPackage::install(&deb());
    let upgrade = built_package("LYNX_DEB_UPGRADE");
    let service_calls = |calls: &[String]| -> Vec<String> {
        calls
            .iter()
            .filter(|c| c.starts_with("deb-systemd-invoke"))
            .cloned()
            .collect()
    };
    // Upgrade under systemd: the old prerm stops nothing, the new postinst restarts once.
    let prerm = maintainer_script_calls(
        &deb(),
        &dir,
        "prerm",
        &["upgrade", "0.1.0-1+upgrade1"],
        true,
    );
    assert_eq!(
        service_calls(&prerm),
        Vec::<String>::new(),
        "prerm upgrade: {prerm:?}"
    );
    let postinst =
        maintainer_script_calls(&upgrade, &dir, "postinst", &["configure", "0.1.0-1"], true);
    assert_eq!(
        service_calls(&postinst),
        ["deb-systemd-invoke restart lynx.service"],
        "postinst configure OLD-VERSION: {postinst:?}"
    );
    // A first install enables and starts it; a removal stops it.
    let install = maintainer_script_calls(&deb(), &dir, "postinst", &["configure"], true);
    assert_eq!(
        service_calls(&install),
        ["deb-systemd-invoke start lynx.service"]
    );
    assert!(
        install.contains(&"deb-systemd-helper enable lynx.service".to_owned()),
        "{install:?}"
    );
    let remove = maintainer_script_calls(&deb(), &dir, "prerm", &["remove"], true);
    assert_eq!(
        service_calls(&remove),
        ["deb-systemd-invoke stop lynx.service"]
    );
    // Without systemd as PID 1 (this machine): no service is started, stopped or reloaded.
    let plain =
        maintainer_script_calls(&upgrade, &dir, "postinst", &["configure", "0.1.0-1"], false);
    assert!(
        !plain
            .iter()
            .any(|c| c.starts_with("deb-systemd-invoke") || c.starts_with("systemctl")),
        "{plain:?}"
    );
}

/// Waits up to `timeout` for the service's log to contain `text`.
fn wait_log(service: &Service, text: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while !service.log().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "waited {timeout:?} for {text:?} in the log:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The installed unit started without `capability`, which must make it exit with `code` at
/// start-up, naming what failed and the capability (`message`).
fn exits_without(capability: &str, code: i32, message: &str) {
    let dir = scratch(&capability.to_lowercase());
    let package = InstalledPackage::install(&deb());
    configure(None);
    let (_, mut service) = start(&package, Some(capability), &dir);
    let status = service
        .wait_exit(READY_TIMEOUT)
        .unwrap_or_else(|| panic!("the daemon runs without {capability}:\n{}", service.log()));
    assert_eq!(status.code(), Some(code), "{}", service.log());
    assert!(
        service.log().contains(message) && service.log().contains(capability),
        "without {capability}, expected {message:?}; the log:\n{}",
        service.log()
    );
}

#[test]
fn without_cap_bpf_nothing_loads_and_the_daemon_exits_2_naming_it() {
    if !privileged("without_cap_bpf_nothing_loads_and_the_daemon_exits_2_naming_it") {
        return;
    }
    exits_without("CAP_BPF", 2, "lynx: missing privilege: CAP_BPF");
}

#[test]
fn without_cap_perfmon_no_tracing_program_loads_and_the_daemon_exits_2_naming_it() {
    if !privileged("without_cap_perfmon_no_tracing_program_loads_and_the_daemon_exits_2_naming_it")
    {
        return;
    }
    exits_without("CAP_PERFMON", 2, "lynx: missing privilege: CAP_PERFMON");
}

#[test]
fn without_cap_net_admin_no_socket_program_loads_and_the_daemon_exits_2_naming_it() {
    if !privileged("without_cap_net_admin_no_socket_program_loads_and_the_daemon_exits_2_naming_it")
    {
        return;
    }
    exits_without("CAP_NET_ADMIN", 2, "lynx: missing privilege: CAP_NET_ADMIN");
}

#[test]
fn without_cap_dac_override_the_counters_cannot_be_pinned_in_roots_bpffs() {
    if !privileged("without_cap_dac_override_the_counters_cannot_be_pinned_in_roots_bpffs") {
        return;
    }
    // bpffs is root's and 0700, as systemd mounts it (InstalledPackage sets it so).
    exits_without(
        "CAP_DAC_OVERRIDE",
        1,
        "a pin directory in root's bpffs needs CAP_DAC_OVERRIDE",
    );
}

#[test]
fn without_cap_sys_ptrace_nginx_is_not_counted_and_the_log_says_why() {
    if !privileged("without_cap_sys_ptrace_nginx_is_not_counted_and_the_log_says_why") {
        return;
    }
    let dir = scratch("ptrace");
    let package = InstalledPackage::install(&deb());
    let nginx =
        lynx_tests::nginx::Nginx::start("pkg-ptrace", &["127.0.0.1:1".parse().expect("address")]);
    fs::write(
        CONFIG,
        format!(
            "[daemon]\ninterval = \"200ms\"\n[prometheus]\nlisten = \"\"\n{}",
            nginx.lynx_config()
        ),
    )
    .expect("write the config");
    let (_, mut service) = start(&package, Some("CAP_SYS_PTRACE"), &dir);
    wait_ready(&service);
    wait_log(
        &service,
        // Checking nginx's master (its executable) or reading its network namespace.
        "another user's process needs CAP_SYS_PTRACE",
        READY_TIMEOUT,
    );
    let snapshot = service.next_snapshot(Path::new(SNAPSHOT));
    assert_eq!(snapshot.nginx.master_pid, None, "nginx is not followed");
    assert!(service.exited().is_none(), "everything else goes on");
}

#[test]
fn without_cap_kill_nginx_is_not_reloaded_and_the_log_says_why() {
    if !privileged("without_cap_kill_nginx_is_not_reloaded_and_the_log_says_why") {
        return;
    }
    let dir = scratch("kill");
    let package = InstalledPackage::install(&deb());
    let farm = Farm::new("pkg-kill", 1);
    configure(Some(&farm));
    let (_, mut service) = start(&package, Some("CAP_KILL"), &dir);
    wait_ready(&service);
    wait_log(&service, "needs CAP_KILL", READY_TIMEOUT);
    // nginx serves what it had: the group's 503 fallback, not the container.
    assert!(
        lynx_tests::control::is_503(&farm.get_within(Duration::from_secs(2))),
        "nginx was reloaded without CAP_KILL"
    );
    assert!(service.exited().is_none(), "everything else goes on");
}

#[test]
fn without_cap_net_bind_service_nginx_t_rejects_a_low_port_and_nginx_keeps_its_upstreams() {
    if !privileged(
        "without_cap_net_bind_service_nginx_t_rejects_a_low_port_and_nginx_keeps_its_upstreams",
    ) {
        return;
    }
    let dir = scratch("bind");
    let package = InstalledPackage::install(&deb());
    let farm = Farm::new("pkg-bind", 1);
    configure(Some(&farm));
    let (_, service) = start(&package, Some("CAP_NET_BIND_SERVICE"), &dir);
    wait_ready(&service);
    wait_log(
        &service,
        "nginx -t rejected the new upstreams",
        READY_TIMEOUT,
    );
    let snapshot = service.next_snapshot(Path::new(SNAPSHOT));
    let error = snapshot.groups[0]
        .upstream_error
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains("bind()") && error.contains("Permission denied"),
        "the group's upstream error: {error:?}"
    );
    assert!(
        lynx_tests::control::is_503(&farm.get_within(Duration::from_secs(2))),
        "nginx serves what it had"
    );
}

/// The system calls `SystemCallFilter=` allows: its names, and its `@groups` expanded from
/// systemd's own table (`systemd-analyze syscall-filter`).
fn allowed_system_calls(unit: &Unit) -> BTreeSet<String> {
    let table = run_ok(Command::new("systemd-analyze").args(["syscall-filter", "--no-pager"]));
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for line in table.lines() {
        if line.starts_with('@') {
            let name = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            groups.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(group), Some(member)) = (&current, line.strip_prefix("    "))
            && !member.starts_with('#')
            && let Some(member) = member.split_whitespace().next()
        {
            groups
                .get_mut(group)
                .expect("group")
                .push(member.to_owned());
        }
    }
    fn expand(
        name: &str,
        groups: &std::collections::HashMap<String, Vec<String>>,
        into: &mut BTreeSet<String>,
    ) {
        match groups.get(name) {
            Some(members) => members.iter().for_each(|m| expand(m, groups, into)),
            None => {
                into.insert(name.to_owned());
            }
        }
    }
    let filter = unit.service_list("SystemCallFilter");
    assert!(
        !filter.is_empty() && !filter.iter().any(|f| f.starts_with('~')),
        "an allow list: {filter:?}"
    );
    let mut allowed = BTreeSet::new();
    for entry in &filter {
        expand(entry, &groups, &mut allowed);
    }
    allowed
}

#[test]
fn the_unit_allows_every_system_call_of_a_daemon_life() {
    if !privileged("the_unit_allows_every_system_call_of_a_daemon_life") {
        return;
    }
    let dir = scratch("syscalls");
    let package = InstalledPackage::install(&deb());
    let farm = Farm::new("pkg-sys", 1);
    let metrics = free_port();
    fs::write(
        CONFIG,
        format!(
            "[daemon]\ninterval = \"200ms\"\n[prometheus]\nlisten = \"127.0.0.1:{metrics}\"\n{}",
            farm.config("")
        ),
    )
    .expect("write the config");
    package.boot_tmpfiles();
    let (_, unit) = package.unit();
    let trace = dir.join("strace.out");
    let trace_arg = trace.display().to_string();
    // The trace file is the service user's to write.
    run_ok(Command::new("chown").arg("lynx").arg(&*dir));
    let mut service = Service::start_under(
        &unit,
        None,
        &dir.join("journal.log"),
        &["strace", "-f", "-qq", "-o", &trace_arg],
    );
    wait_ready(&service);
    // A daemon's life: the upstream written, `nginx -t`, the reload, LXD's API, /metrics
    // served, a snapshot read back, SIGTERM.
    farm.until_answer(
        "the container's page through Lynx's upstream",
        Duration::from_secs(60),
        |answer| answer.as_ref().is_ok_and(|page| *page == farm.pages[0]),
    );
    lynx_tests::lxd::try_http_get(std::net::Ipv4Addr::LOCALHOST, metrics, "/metrics")
        .expect("/metrics answers");
    assert!(service.stop().success(), "{}", service.log());

    let text = fs::read_to_string(&trace).expect("read the trace");
    let used: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter_map(|call| call.split_once('(').map(|(name, _)| name))
        .filter(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    eprintln!("system calls of the daemon and its children: {used:?}");
    assert!(
        used.contains("bpf") && used.contains("execve"),
        "a whole life was traced"
    );
    let allowed = allowed_system_calls(&unit);
    let refused: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "SystemCallFilter= would refuse {refused:?}"
    );
}
