//! The web dashboard against a real daemon, real LXD containers and a real browser
//! (headless chromium over WebDriver): what the pages show, the Stop button, who is refused,
//! and `/metrics` while dashboards poll. Screenshots of each page go to
//! `target/dashboard-screenshots/`.
use std::{
    collections::HashMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::MetadataExt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lynx::{model::Snapshot, tui::app::Column};
use lynx_tests::{
    browser::Browser,
    daemon::{DaemonUnderTest, read_snapshot},
    lxd::{TestContainer, lxd},
    lynx_ok, privileged, promtool_check, workspace,
};

/// `lynx web` for this daemon: its login link, after checking the token file is root's alone.
fn login_link(daemon: &DaemonUnderTest, listen: &str) -> String {
    let file = lynx::web::session::login_file(&lynx::daemon::lock_path(&daemon.pin_dir));
    let meta = fs::symlink_metadata(&file)
        .unwrap_or_else(|e| panic!("the login file {}: {e}", file.display()));
    assert!(meta.is_file(), "{} is a plain file", file.display());
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o600),
        "{}",
        file.display()
    );
    let config = daemon.config.to_str().expect("a UTF-8 path");
    let link = lynx_ok(&["--config", config, "web"]);
    let link = link.trim().to_owned();
    assert!(
        link.starts_with(&format!("http://{listen}/login?token=")),
        "lynx web printed {link:?}"
    );
    link
}

/// One HTTP exchange: status, headers (names lowercased), body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let mut text = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        text.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(text.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Logs in through the link: the session cookie and the page's CSRF token.
fn log_in(addr: SocketAddr, link: &str) -> (String, String) {
    let path = &link[link.find("/login").expect("a login path")..];
    let (status, headers, _) = http(addr, "GET", path, &[]);
    assert_eq!(status, 303, "the login link logs in");
    let cookie = headers["set-cookie"]
        .split(';')
        .next()
        .expect("a cookie")
        .to_owned();
    let (status, _, page) = http(addr, "GET", "/", &[("Cookie", &cookie)]);
    assert_eq!(status, 200);
    let csrf = page
        .split("<meta name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the CSRF token in the page")
        .to_owned();
    (cookie, csrf)
}

fn screenshots() -> std::path::PathBuf {
    workspace().join("target/dashboard-screenshots")
}

#[test]
fn dashboard_in_a_browser_shows_the_farm_and_stops_a_container() {
    if !privileged("dashboard_in_a_browser_shows_the_farm_and_stops_a_container") {
        return;
    }
    const LISTEN: &str = "127.0.0.1:19471";
    let containers = [TestContainer::launch("dash"), TestContainer::launch("dash")];
    let daemon =
        DaemonUnderTest::start_configured("dashboard", "500ms", LISTEN, "actions = true\n");
    let names: Vec<&str> = containers.iter().map(TestContainer::name).collect();
    daemon.wait_for("both containers running", Duration::from_secs(30), |s| {
        names.iter().all(|n| {
            s.containers
                .iter()
                .any(|c| c.name == *n && c.status == "Running" && !c.ipv4.is_empty())
        })
    });
    let link = login_link(&daemon, LISTEN);
    let browser = Browser::start("dashboard");
    browser.goto(&link);
    assert_eq!(
        browser.url(),
        format!("http://{LISTEN}/"),
        "the login redirects, so the token leaves the address bar"
    );

    // The overview: every container with the figures of the snapshot the page shows.
    let started = Instant::now();
    let (rows, snapshot) = loop {
        browser.wait_for_text("#updated", Duration::from_secs(10), |t| {
            t.starts_with("as of ")
        });
        let page = browser.execute(
            "return [document.getElementById('updated').textContent, \
             Array.from(document.querySelectorAll('#containers tbody tr')).map(tr => \
             Array.from(tr.cells).map(td => td.textContent))];",
        );
        let shown_at = page[0]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("as of ")
            .to_owned();
        let snapshot: Snapshot = read_snapshot(&daemon.snapshot_path).expect("the snapshot");
        if snapshot.host.timestamp == shown_at {
            let rows: Vec<Vec<String>> = serde_json::from_value(page[1].clone()).expect("rows");
            break (rows, snapshot);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the page never showed the current snapshot"
        );
        thread::sleep(Duration::from_millis(150));
    };
    assert_eq!(
        rows.len(),
        snapshot.containers.len(),
        "a row per container: {rows:?}"
    );
    for container in &snapshot.containers {
        let expected: Vec<String> = Column::ALL.iter().map(|c| c.cell(container)).collect();
        assert!(
            rows.contains(&expected),
            "{expected:?} (lynx top's cells) among {rows:?}"
        );
    }
    for name in &names {
        assert!(rows.iter().any(|r| r[0] == *name), "{name} is listed");
    }
    eprintln!(
        "overview: {} rows equal lynx top's cells of snapshot {}",
        rows.len(),
        snapshot.host.timestamp
    );

    // The charts: points with their value on hover.
    let points = browser.find_all("#chart-active svg circle").len();
    assert!(points >= 2, "the connections chart has {points} points");
    let hover = browser
        .execute("return document.querySelector('#chart-requests svg circle title').textContent;");
    assert!(
        hover.as_str().is_some_and(|t| t.contains(" req/s: ")),
        "a point's hover text: {hover}"
    );
    eprintln!("charts: {points} points on the connections chart; hover {hover}");
    browser.screenshot(&screenshots().join("overview.png"));

    // The container page, and Stop.
    let target = names[0];
    browser.goto(&format!("http://{LISTEN}/containers/{target}"));
    browser.wait_for_text("[data-field=\"c.s\"]", Duration::from_secs(5), |t| {
        t == "Running"
    });
    browser.screenshot(&screenshots().join("container.png"));
    browser.click(&browser.find("button[data-action=\"stop\"]"));
    let prompt = browser.accept_prompt(Duration::from_secs(5));
    assert_eq!(prompt, format!("Stop {target}?"));
    let clicked = Instant::now();
    let (message, took) = browser.wait_for_text("#message", Duration::from_secs(60), |t| {
        t.contains("Stopped") || t.starts_with("failed")
    });
    assert_eq!(message, format!("{target}: Stopped"));
    assert_eq!(
        lxd().status(target).as_deref(),
        Some("Stopped"),
        "lxc says so"
    );
    let (_, shown) = browser.wait_for_text("[data-field=\"c.s\"]", Duration::from_secs(5), |t| {
        t == "Stopped"
    });
    eprintln!(
        "stop: LXD done {:.2} s after the click; the page's status read Stopped {:.2} s later",
        took.as_secs_f64(),
        shown.as_secs_f64()
    );
    assert!(clicked.elapsed() < Duration::from_secs(90));
    assert_eq!(
        lxd().status(names[1]).as_deref(),
        Some("Running"),
        "the other one is untouched"
    );
    browser.screenshot(&screenshots().join("container-stopped.png"));

    // The images page lists the rig's image, and refuses to delete it while it is in use.
    browser.goto(&format!("http://{LISTEN}/images"));
    let table = browser.text(&browser.find("#images"));
    assert!(table.contains("lynx-busybox"), "{table}");
    browser.screenshot(&screenshots().join("images.png"));
    // The rig's image, not another test's.
    let rows = browser.find_all("#images tbody tr");
    let row = rows
        .iter()
        .position(|r| browser.text(r).contains("lynx-busybox"))
        .expect("a row for lynx-busybox");
    browser.click(&browser.find_all("#images tbody tr button[data-image]")[row]);
    browser.accept_prompt(Duration::from_secs(5));
    let (message, _) = browser.wait_for_text("#message", Duration::from_secs(30), |t| {
        t.starts_with("failed")
    });
    assert!(
        message.contains(names[1]),
        "the refusal names a container using it: {message}"
    );
    assert!(
        lxd()
            .lxc(&["image", "list", "--format", "csv"])
            .contains("lynx-busybox"),
        "the image is still there"
    );
    // The history page: the daily table of `lynx history` over 7 days, and its chart.
    browser.goto(&format!("http://{LISTEN}/history?range=1h"));
    let days = browser.find_all("#days tbody tr").len();
    assert_eq!(days, 7, "a row per day");
    assert_eq!(browser.find_all("#chart-history svg").len(), 1);
    browser.screenshot(&screenshots().join("history.png"));

    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("dashboard action") && l.contains("action=") && l.contains(target)),
        "the action is in the daemon's log:\n{log}"
    );
}

#[test]
fn dashboard_refuses_without_a_session_or_with_a_forged_post() {
    if !privileged("dashboard_refuses_without_a_session_or_with_a_forged_post") {
        return;
    }
    const LISTEN: &str = "127.0.0.1:19472";
    let addr: SocketAddr = LISTEN.parse().expect("an address");
    let container = TestContainer::launch("dashsec");
    let name = container.name();
    let daemon = DaemonUnderTest::start_configured(
        "dashboard-refusals",
        "500ms",
        LISTEN,
        "actions = true\n",
    );
    let stop = format!("/api/v1/containers/{name}/stop");
    for path in [
        "/",
        "/images",
        "/api/v1/snapshot",
        &format!("/containers/{name}"),
    ] {
        assert_eq!(
            http(addr, "GET", path, &[]).0,
            401,
            "GET {path} without a session"
        );
    }
    assert_eq!(
        http(addr, "POST", &stop, &[]).0,
        401,
        "POST without a session"
    );
    assert_eq!(
        http(addr, "GET", "/login?token=0123", &[]).0,
        403,
        "a guessed token"
    );

    let link = login_link(&daemon, LISTEN);
    let (cookie, csrf) = log_in(addr, &link);
    assert_eq!(
        http(
            addr,
            "GET",
            &link[link.find("/login").expect("path")..],
            &[]
        )
        .0,
        403,
        "the link works once"
    );
    let origin = format!("http://{LISTEN}");
    let evil_host = format!("evil.example:{}", addr.port());
    for (why, headers) in [
        (
            "no CSRF token",
            vec![("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
        ),
        (
            "a wrong CSRF token",
            vec![
                ("Cookie", &cookie),
                ("Origin", &origin),
                ("X-CSRF-Token", "00ff"),
            ],
        ),
        (
            "Origin: http://evil.example",
            vec![
                ("Cookie", &cookie),
                ("Origin", "http://evil.example"),
                ("X-CSRF-Token", &csrf),
            ],
        ),
        (
            "Host: evil.example",
            vec![
                ("Host", &evil_host),
                ("Cookie", &cookie),
                ("Origin", "http://evil.example"),
                ("X-CSRF-Token", &csrf),
            ],
        ),
        (
            "no Origin",
            vec![("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        ),
    ] {
        let (status, _, body) = http(addr, "POST", &stop, &headers);
        assert_eq!(status, 403, "{why}: {body}");
        assert_eq!(
            lxd().status(name).as_deref(),
            Some("Running"),
            "{why}: nothing changed"
        );
    }
    let (status, headers, _) = http(addr, "GET", "/", &[("Cookie", &cookie)]);
    assert_eq!(status, 200);
    let policy = &headers["content-security-policy"];
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
        "{policy}"
    );
    assert!(
        !headers.keys().any(|h| h.starts_with("access-control-")),
        "no CORS: {headers:?}"
    );
    let log = daemon.log();
    assert!(
        log.contains("dashboard action refused"),
        "refusals are logged:\n{log}"
    );
}

#[test]
fn dashboard_polling_leaves_metrics_answering_within_a_second() {
    if !privileged("dashboard_polling_leaves_metrics_answering_within_a_second") {
        return;
    }
    const LISTEN: &str = "127.0.0.1:19473";
    const CLIENTS: usize = 20;
    /// Each client's requests: bounded in count and in time.
    const POLLS: usize = 100;
    let addr: SocketAddr = LISTEN.parse().expect("an address");
    let daemon = DaemonUnderTest::start_configured("dashboard-load", "200ms", LISTEN, "");
    let link = login_link(&daemon, LISTEN);
    let (cookie, _) = log_in(addr, &link);
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (cookie, done, served) = (cookie.clone(), done.clone(), served.clone());
            thread::spawn(move || {
                for n in 0..POLLS {
                    if done.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let path = match (i + n) % 3 {
                        0 => "/api/v1/snapshot",
                        1 => "/",
                        _ => "/chart/requests.svg",
                    };
                    let (status, ..) = http(addr, "GET", path, &[("Cookie", &cookie)]);
                    assert_eq!(status, 200, "{path}");
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut last = String::new();
    for _ in 0..20 {
        let asked = Instant::now();
        let (status, _, body) = http(addr, "GET", "/metrics", &[]);
        let took = asked.elapsed();
        assert_eq!(status, 200);
        slowest = slowest.max(took);
        assert!(
            took < Duration::from_secs(1),
            "/metrics took {took:?} while dashboards poll"
        );
        last = body;
        thread::sleep(Duration::from_millis(100));
    }
    let during = served.load(Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a dashboard client");
    }
    eprintln!(
        "/metrics: slowest of 20 answers {:.1} ms while {CLIENTS} dashboards made {during} requests",
        slowest.as_secs_f64() * 1000.0
    );
    assert!(
        during > CLIENTS as u64,
        "the dashboards did poll meanwhile ({during} requests)"
    );
    promtool_check(&last);
}
