//! A real browser for the dashboard's tests: Debian's `chromium`, headless, driven over the
//! W3C WebDriver protocol by `chromedriver` (package `chromium-driver`) on a loopback port.
//! The protocol is plain HTTP with JSON bodies, spoken here with the standard library. The
//! session (and with it the browser) ends and the driver is killed on drop, also on panic.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::ChildGuard;

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The longest one WebDriver command may take (a navigation waits for the page's load).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Browser {
    session: String,
    driver_addr: SocketAddr,
    profile: PathBuf,
    // Last: killed after the session is deleted.
    _driver: ChildGuard,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless chromium session.
    pub fn start(name: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let driver_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("run chromedriver: {e} (Debian package chromium-driver: cargo xtask setup)")
            });
        let driver = ChildGuard(driver);
        let deadline = Instant::now() + Duration::from_secs(20);
        while request(driver_addr, "GET", "/status", None)
            .ok()
            .and_then(|v| v["value"]["ready"].as_bool())
            != Some(true)
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not get ready in 20 s"
            );
            sleep(Duration::from_millis(100));
        }
        let profile =
            std::env::temp_dir().join(format!("lynx-browser-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&profile);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The test answers confirm() itself.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    // Root cannot use chromium's sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let answer = request(driver_addr, "POST", "/session", Some(&capabilities))
            .unwrap_or_else(|e| panic!("new WebDriver session: {e}"));
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session in {answer}"))
            .to_owned();
        Self {
            session,
            driver_addr,
            profile,
            _driver: driver,
        }
    }

    /// Runs a command of this session; its `value`. Panics with WebDriver's message.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let answer = request(self.driver_addr, method, &path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {method} {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    /// Opens `url` and waits for its load.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The elements that match `css`.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.call(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .map(|elements| {
                elements
                    .iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element that matches `css`.
    pub fn find(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element matches {css:?} on {}", self.url()))
    }

    /// The rendered text of `element`.
    pub fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn click(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        );
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub fn execute(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// Waits (at most `timeout`) for a prompt such as `confirm()`, accepts it and returns its
    /// text.
    pub fn accept_prompt(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let path = format!("/session/{}/alert/text", self.session);
            let answer = request(self.driver_addr, "GET", &path, None).expect("WebDriver");
            if let Some(text) = answer["value"].as_str() {
                self.call("POST", "/alert/accept", Some(&json!({})));
                return text.to_owned();
            }
            assert!(Instant::now() < deadline, "no prompt within {timeout:?}");
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most `timeout`) until the text of the first element matching `css` passes
    /// `check`; returns it and how long it took.
    pub fn wait_for_text(
        &self,
        css: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let started = Instant::now();
        loop {
            let text = self
                .find_all(css)
                .first()
                .map(|e| self.text(e))
                .unwrap_or_default();
            if check(&text) {
                return (text, started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "{css} still reads {text:?} after {timeout:?} on {}",
                self.url()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.call("GET", "/screenshot", None);
        let bytes = decode_base64(png.as_str().expect("a base64 PNG"));
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("the screenshot directory");
        }
        fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends chromium; killing the driver alone would leave it running.
        let _ = request(
            self.driver_addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// One WebDriver exchange, on a connection of its own that the driver closes after its
/// answer (chromedriver speaks HTTP/1.1 only).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(COMMAND_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // The driver says `Connection: close` but may keep the connection open: the answer
    // ends where its Content-Length says.
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let body_start = loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buffer).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the driver closed the connection before its answer's head".into());
        }
        answer.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&answer[..body_start]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    while answer.len() < body_start + length {
        let n = stream.read(&mut buffer).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the driver closed the connection mid-answer".into());
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    let body = &answer[body_start..body_start + length];
    serde_json::from_slice(body)
        .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Standard base64 (WebDriver's screenshots), padding and line breaks ignored.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    sextets
        .chunks(4)
        .flat_map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &s)| acc | u32::from(s) << (18 - 6 * i));
            let bytes = bits.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver itself, on a page of its own (no daemon, no root).
    #[test]
    fn drives_chromium_through_a_page_with_a_prompt() {
        let browser = Browser::start("self-test");
        browser.goto("about:blank");
        browser.execute(
            "document.body.innerHTML = '<p id=out>none</p><button id=go>go</button>'; \
             document.getElementById('go').onclick = function () { \
             document.getElementById('out').textContent = String(confirm('Sure?')); };",
        );
        assert_eq!(browser.text(&browser.find("#out")), "none");
        browser.click(&browser.find("#go"));
        assert_eq!(browser.accept_prompt(Duration::from_secs(5)), "Sure?");
        let (text, _) = browser.wait_for_text("#out", Duration::from_secs(5), |t| t == "true");
        assert_eq!(text, "true");
        assert_eq!(browser.execute("return 6 * 7;"), json!(42));
        let shot = std::env::temp_dir().join(format!("lynx-browser-{}.png", std::process::id()));
        browser.screenshot(&shot);
        let png = fs::read(&shot).expect("the screenshot");
        let _ = fs::remove_file(&shot);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8="), b"hello");
        assert_eq!(decode_base64("aGVsbG8h"), b"hello!");
        assert_eq!(decode_base64("aGk="), b"hi");
        assert_eq!(decode_base64("iVBORw0K\nGgo="), b"\x89PNG\r\n\x1a\n");
    }
}
