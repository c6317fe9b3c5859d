//! The dashboard over real sockets, without root and without LXD: who gets in, what a page
//! shows, and which POSTs are refused before anything is asked of LXD.
use std::{fs, net::SocketAddr, path::Path};

use super::*;
use crate::{
    sink::{
        Sink,
        prometheus::tests::{FIXTURE_METRICS, fixture},
    },
    test_support::TempDir,
    web::{
        WebOptions, WebServer,
        tests::{Answer, exchange, header, options},
    },
};

/// A server with the dashboard on (its login file in `dir`, LXD nowhere) and the fixture
/// published twice, a second apart.
fn start(dir: &Path, actions: bool) -> (WebServer, SocketAddr) {
    let mut server = WebServer::start(WebOptions {
        actions,
        login_file: Some(dir.join("daemon.login")),
        lxd_sockets: vec![dir.join("no-lxd.socket")],
        ..options("127.0.0.1:0")
    })
    .expect("start the server");
    let addr = server.local_addr().expect("listening");
    let mut snapshot = fixture();
    server.publish(&snapshot);
    snapshot.host.timestamp = "2026-11-22T04:22:03Z".into();
    snapshot.nginx.active = 3;
    server.publish(&snapshot);
    // The login file is written on the server's thread.
    let file = dir.join("daemon.login");
    for _ in 0..200 {
        if fs::read_to_string(&file).is_ok_and(|t| t.ends_with('\n')) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (server, addr)
}

fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Answer {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
        addr.port()
    );
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    exchange(addr, text.as_bytes())
}

/// Logs in with the token of `dir`'s login file: the cookie header and the CSRF token.
fn log_in(dir: &Path, addr: SocketAddr) -> (String, String) {
    let token = fs::read_to_string(dir.join("daemon.login")).expect("the login file");
    let (status, headers, _) = request(addr, "GET", &format!("/login?token={}", token.trim()), &[]);
    assert_eq!(status, "HTTP/1.1 303 See Other");
    assert_eq!(header(&headers, "location"), "/");
    assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
    let set_cookie = header(&headers, "set-cookie");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    let (status, _, body) = request(addr, "GET", "/", &[("Cookie", &cookie)]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let body = String::from_utf8(body).expect("UTF-8");
    let csrf = body
        .split("<meta name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries the CSRF token")
        .to_owned();
    (cookie, csrf)
}

#[test]
fn pages_and_the_api_need_a_session() {
    let dir = TempDir::new("dashboard-session");
    let (_server, addr) = start(dir.path(), true);
    for path in [
        "/",
        "/images",
        "/containers/web1",
        "/api/v1/snapshot",
        "/api/v1/containers/web1",
        "/chart/requests.svg",
    ] {
        let (status, headers, _) = request(addr, "GET", path, &[]);
        assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{path}");
        assert_eq!(
            header(&headers, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
    }
    let (status, ..) = request(addr, "GET", "/", &[("Cookie", "lynx_session=forged")]);
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "a forged cookie");
    let (status, ..) = request(addr, "POST", "/api/v1/containers/web1/stop", &[]);
    assert_eq!(
        status, "HTTP/1.1 401 Unauthorized",
        "a POST without a session"
    );
    let (status, ..) = request(addr, "GET", "/login?token=00", &[]);
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "a wrong token");
    // The embedded assets hold no figures.
    let (status, headers, body) = request(addr, "GET", "/assets/app.js", &[]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "content-type"), "text/javascript");
    assert_eq!(body, APP_JS.as_bytes());

    let (cookie, _) = log_in(dir.path(), addr);
    let token = fs::read_to_string(dir.path().join("daemon.login")).expect("the file");
    assert_eq!(
        request(addr, "GET", &format!("/login?token={}", token.trim()), &[]).0,
        "HTTP/1.1 303 See Other",
        "the new token logs in once more"
    );
    assert_eq!(
        request(addr, "GET", &format!("/login?token={}", token.trim()), &[]).0,
        "HTTP/1.1 403 Forbidden",
        "and only once"
    );
    let (status, ..) = request(addr, "GET", "/containers/web1", &[("Cookie", &cookie)]);
    assert_eq!(status, "HTTP/1.1 200 OK", "the first session lives on");
}

#[test]
fn the_overview_shows_the_figures_of_lynx_top() {
    let dir = TempDir::new("dashboard-overview");
    let (_server, addr) = start(dir.path(), false);
    let (cookie, _) = log_in(dir.path(), addr);
    let (status, headers, body) = request(addr, "GET", "/", &[("Cookie", &cookie)]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(&headers, "content-security-policy"),
        CONTENT_SECURITY_POLICY
    );
    assert_eq!(header(&headers, "cache-control"), "no-store");
    let body = String::from_utf8(body).expect("UTF-8");
    let mut snapshot = fixture();
    snapshot.host.timestamp = "2026-11-22T04:22:03Z".into();
    snapshot.nginx.active = 3;
    for container in &snapshot.containers {
        let cells: String = Column::ALL
            .iter()
            .skip(1)
            .map(|c| format!("<td>{}</td>", page::escape(&c.cell(container))))
            .collect();
        assert!(
            body.contains(&cells),
            "{} row {cells} in {body}",
            container.name
        );
    }
    assert!(
        !body.contains("<script>") && !body.contains(" style="),
        "no inline code"
    );
    assert_eq!(
        body.matches("<circle").count(),
        4,
        "two samples on two charts"
    );

    let (status, _, json) = request(
        addr,
        "GET",
        "/api/v1/snapshot?sort=c&desc=1",
        &[("Cookie", &cookie)],
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    let api: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(
        api,
        serde_json::to_value(page::overview(&snapshot, Column::Cpu, true)).expect("JSON"),
        "the API sends what the page shows, sorted as `lynx top` sorts"
    );
    let (status, headers, svg) = request(addr, "GET", "/chart/active.svg", &[("Cookie", &cookie)]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "content-type"), "image/svg+xml");
    assert!(String::from_utf8_lossy(&svg).contains("<title>3 conns: 04:22:03</title>"));

    // /metrics and /snapshot are as open and as exact as before.
    let (status, _, metrics) = request(addr, "GET", "/metrics", &[]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut expected = fixture();
    expected.host.timestamp = snapshot.host.timestamp.clone();
    expected.nginx.active = 3;
    assert_eq!(
        metrics,
        crate::sink::prometheus::render(&expected).into_bytes()
    );
    assert_ne!(FIXTURE_METRICS.len(), 0);
}

#[test]
fn a_post_needs_actions_on_this_origin_and_the_csrf_token() {
    let dir = TempDir::new("dashboard-post-off");
    let (_server, addr) = start(dir.path(), false);
    let (cookie, csrf) = log_in(dir.path(), addr);
    let origin = format!("http://127.0.0.1:{}", addr.port());
    let good = [
        ("Cookie", cookie.as_str()),
        ("Origin", origin.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
    ];
    let (status, _, body) = request(addr, "POST", "/api/v1/containers/web1/stop", &good);
    assert_eq!(
        status, "HTTP/1.1 403 Forbidden",
        "actions are off by default"
    );
    assert!(String::from_utf8_lossy(&body).contains("[web] actions"));

    let dir = TempDir::new("dashboard-post-on");
    let (_server, addr) = start(dir.path(), true);
    let (cookie, csrf) = log_in(dir.path(), addr);
    let origin = format!("http://127.0.0.1:{}", addr.port());
    let with = |name: &'static str, value: &str| {
        let mut headers = vec![
            ("Cookie", cookie.clone()),
            ("Origin", origin.clone()),
            ("X-CSRF-Token", csrf.clone()),
        ];
        headers.retain(|(n, _)| *n != name);
        if !value.is_empty() {
            headers.push((name, value.to_owned()));
        }
        headers
    };
    for (name, value, why) in [
        ("X-CSRF-Token", "", "no CSRF token"),
        ("X-CSRF-Token", "0000", "a wrong CSRF token"),
        ("Origin", "", "no Origin"),
        ("Origin", "http://evil.example", "another site's Origin"),
    ] {
        let headers = with(name, value);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, ..) = request(addr, "POST", "/api/v1/containers/web1/stop", &headers);
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "{why}");
        let (status, ..) = request(addr, "POST", "/api/v1/images/abc/delete", &headers);
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "image delete, {why}");
    }
    let raw = format!(
        "POST /api/v1/containers/web1/stop HTTP/1.1\r\nHost: evil.example\r\nCookie: {cookie}\r\n\
         Origin: http://evil.example\r\nX-CSRF-Token: {csrf}\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(
        exchange(addr, raw.as_bytes()).0,
        "HTTP/1.1 403 Forbidden",
        "Host: evil.example"
    );
    let headers = with("", "");
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (status, ..) = request(addr, "POST", "/api/v1/containers/web1/explode", &headers);
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // Every check passed: the action reaches for LXD, which is not there.
    let (status, _, body) = request(addr, "POST", "/api/v1/containers/web1/stop", &headers);
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway");
    let outcome: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(outcome["ok"], false);
    assert_eq!(outcome["message"], "no LXD socket answers");
}
