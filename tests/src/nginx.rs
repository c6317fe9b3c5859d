//! nginx under test, the load balancer of the web farm: Debian's nginx with a config of the
//! test's own in a private prefix (its own port on loopback, `stub_status` on a loopback-only
//! location, an `upstream` of backends), run in the foreground as the test's child and stopped
//! on drop. Also the oracles that come with it: `stub_status` and wrk's totals.
use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use lynx::nginx::NginxControl;

use crate::{ChildGuard, TestCgroup, require};

/// The upstream group name in the config.
pub const UPSTREAM: &str = "lynx_backends";

/// Workers of every test nginx.
pub const WORKER_PROCESSES: usize = 2;

pub struct Nginx {
    master: ChildGuard,
    prefix: PathBuf,
    pub port: u16,
    /// A second port of the same server that speaks TLS, with a self-signed certificate, when
    /// started with [`Nginx::start_with_tls`].
    pub tls_port: Option<u16>,
}

/// Where nginx's upstream comes from.
pub enum Upstreams<'a> {
    /// An `upstream` block of these backends, in nginx.conf.
    Inline(&'a [SocketAddr]),
    /// A file nginx.conf `include`s (Lynx's), which defines the upstream `name`.
    Include { file: &'a Path, name: &'a str },
}

impl Nginx {
    /// Starts nginx on a free loopback port, balancing `/` over `backends`, and waits until it
    /// answers.
    pub fn start(name: &str, backends: &[SocketAddr]) -> Self {
        Self::start_with(name, Upstreams::Inline(backends))
    }

    /// As [`Self::start`], with the upstream from `upstreams`.
    pub fn start_with(name: &str, upstreams: Upstreams) -> Self {
        Self::start_full(name, upstreams, false, None)
    }

    /// As [`Self::start`], also listening with TLS on [`Self::tls_port`].
    pub fn start_with_tls(name: &str, backends: &[SocketAddr]) -> Self {
        Self::start_full(name, Upstreams::Inline(backends), true, None)
    }

    /// As [`Self::start`], with nginx in `cgroup` (as a service manager runs it), so that
    /// it shares its cgroup with no other process. Drop the nginx before the cgroup.
    pub fn start_in(name: &str, backends: &[SocketAddr], cgroup: &TestCgroup) -> Self {
        Self::start_full(name, Upstreams::Inline(backends), false, Some(cgroup))
    }

    fn start_full(
        name: &str,
        upstreams: Upstreams,
        tls: bool,
        cgroup: Option<&TestCgroup>,
    ) -> Self {
        require("nginx");
        let prefix = std::env::temp_dir().join(format!("lynx-nginx-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&prefix);
        fs::create_dir_all(prefix.join("temp")).expect("create nginx prefix");
        let port = free_port();
        let tls_port = tls.then(free_port);
        let tls_config = match tls_port {
            Some(tls_port) => {
                require("openssl");
                let made = Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    ])
                    .args(["-subj", "/CN=localhost", "-keyout"])
                    .arg(prefix.join("key.pem"))
                    .arg("-out")
                    .arg(prefix.join("cert.pem"))
                    .output()
                    .expect("run openssl");
                assert!(made.status.success(), "openssl: {made:?}");
                format!(
                    "listen 127.0.0.1:{tls_port} ssl;
    ssl_certificate {p}/cert.pem;
    ssl_certificate_key {p}/key.pem;",
                    p = prefix.display()
                )
            }
            None => String::new(),
        };
        let (upstream_config, upstream_name) = match upstreams {
            Upstreams::Inline(backends) => {
                let servers: String = backends
                    .iter()
                    .map(|b| format!("    server {b};\n"))
                    .collect();
                (
                    format!("upstream {UPSTREAM} {{\n{servers}    keepalive 16;\n  }}"),
                    UPSTREAM,
                )
            }
            Upstreams::Include { file, name } => (format!("include {};", file.display()), name),
        };
        let config = format!(
            "user root;
worker_processes {WORKER_PROCESSES};
pid {p}/nginx.pid;
error_log {p}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {p}/temp/body;
  proxy_temp_path {p}/temp/proxy;
  fastcgi_temp_path {p}/temp/fastcgi;
  uwsgi_temp_path {p}/temp/uwsgi;
  scgi_temp_path {p}/temp/scgi;
  {upstream_config}
  server {{
    listen 127.0.0.1:{port};
    {tls_config}
    location = /stub_status {{ stub_status; allow 127.0.0.1; deny all; }}
    location / {{
      proxy_pass http://{upstream_name};
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }}
  }}
}}
",
            p = prefix.display()
        );
        let conf = prefix.join("nginx.conf");
        fs::write(&conf, config).expect("write nginx.conf");
        let test = Command::new("nginx")
            .args(["-t", "-p"])
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .output()
            .expect("run nginx -t");
        assert!(
            test.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let master = match cgroup {
            Some(cgroup) => cgroup.spawn(&mut command),
            None => ChildGuard(command.spawn().expect("start nginx")),
        };
        let nginx = Self {
            master,
            prefix,
            port,
            tls_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10) * crate::SLOWDOWN;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx does not listen on {port} after 10 s"
            );
            sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How Lynx reaches this nginx to validate and reload it.
    pub fn control(&self) -> NginxControl {
        NginxControl {
            binary: "nginx".into(),
            main_config: self.prefix.join("nginx.conf"),
            prefix: Some(self.prefix.clone()),
            pid_file: self.prefix.join("nginx.pid"),
            test_timeout: Duration::from_secs(10),
        }
    }

    /// The `[nginx]` section of a Lynx config that counts this nginx on its ports: the master
    /// must be this nginx's, started from this binary, prefix and config.
    pub fn lynx_config(&self) -> String {
        let tls: Vec<String> = self.tls_port.iter().map(u16::to_string).collect();
        let ports: Vec<String> = [self.port.to_string()]
            .into_iter()
            .chain(tls.clone())
            .collect();
        let control = self.control();
        format!(
            "[nginx]\npid_file = \"{}\"\nbinary = \"{}\"\nmain_config = \"{}\"\nprefix = \"{}\"\n\
             ports = [{}]\ntls_ports = [{}]\n",
            control.pid_file.display(),
            control.binary.display(),
            control.main_config.display(),
            self.prefix.display(),
            ports.join(", "),
            tls.join(", ")
        )
    }

    /// The master process, whose cgroup and children are nginx.
    pub fn master_pid(&self) -> u32 {
        self.master.0.id()
    }

    /// nginx's own counters. The request that reads them is counted in them.
    pub fn stub_status(&self) -> StubStatus {
        let mut stream =
            TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect to nginx");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(b"GET /stub_status HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .expect("ask stub_status");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("read stub_status");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        StubStatus::parse(body).unwrap_or_else(|| panic!("unexpected stub_status answer: {answer}"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of the master and its workers.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.master.0.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.master.0.try_wait(), Ok(None)) {
            sleep(Duration::from_millis(20));
        }
        self.master.kill();
        let _ = fs::remove_dir_all(&self.prefix);
    }
}

/// nginx's `stub_status` counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubStatus {
    pub active: u64,
    pub accepts: u64,
    pub handled: u64,
    pub requests: u64,
    pub reading: u64,
    pub writing: u64,
    pub waiting: u64,
}

impl StubStatus {
    /// Parses the module's answer:
    /// `Active connections: 1 \nserver accepts handled requests\n 10 10 12 \nReading: 0 Writing: 1 Waiting: 0 \n`.
    pub fn parse(text: &str) -> Option<Self> {
        let numbers: Vec<u64> = text
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect();
        match numbers.as_slice() {
            &[
                active,
                accepts,
                handled,
                requests,
                reading,
                writing,
                waiting,
            ] => Some(Self {
                active,
                accepts,
                handled,
                requests,
                reading,
                writing,
                waiting,
            }),
            _ => None,
        }
    }
}

/// wrk's totals for one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WrkTotals {
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// Runs wrk against `url` (loopback or the rig's bridge only) for `duration` (bounded to
/// 60 s) with `connections` connections; `keep_alive: false` closes each connection after one
/// request.
pub fn wrk(url: &str, connections: u32, duration: Duration, keep_alive: bool) -> WrkTotals {
    let close: &[&str] = if keep_alive {
        &[]
    } else {
        &["Connection: close"]
    };
    wrk_with_headers(url, connections, duration, close)
}

/// As [`wrk`], with `headers` added to every request.
pub fn wrk_with_headers(
    url: &str,
    connections: u32,
    duration: Duration,
    headers: &[&str],
) -> WrkTotals {
    assert!(
        url.starts_with("http://127.") || url.starts_with("http://10.177.42."),
        "{url}"
    );
    require("wrk");
    let seconds = duration.as_secs().clamp(1, 60).to_string();
    let mut command = Command::new("wrk");
    command.args([
        "-t2",
        "-c",
        &connections.to_string(),
        "-d",
        &seconds,
        "--timeout",
        "5s",
    ]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    WrkTotals::parse(&text).unwrap_or_else(|| panic!("unexpected wrk output:\n{text}"))
}

impl WrkTotals {
    /// Reads `N requests in ...`, `Non-2xx or 3xx responses: N` and
    /// `Socket errors: connect N, read N, write N, timeout N` from wrk's report.
    pub fn parse(text: &str) -> Option<Self> {
        let requests = text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))
            .and_then(|(n, _)| n.trim().parse().ok())?;
        let non_2xx = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
            .map_or(Some(0), |n| n.trim().parse().ok())?;
        let socket_errors = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Socket errors:"))
            .map_or(0, |errors| {
                errors
                    .split(',')
                    .filter_map(|kind| kind.split_whitespace().last()?.parse::<u64>().ok())
                    .sum()
            });
        Some(Self {
            requests,
            non_2xx,
            socket_errors,
        })
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("find a free loopback port")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_status_answer_parses() {
        let text = "Active connections: 3 \nserver accepts handled requests\n 10 10 42 \nReading: 0 Writing: 1 Waiting: 2 \n";
        let status = StubStatus::parse(text).expect("parses");
        assert_eq!(
            (
                status.active,
                status.accepts,
                status.requests,
                status.waiting
            ),
            (3, 10, 42, 2)
        );
        assert_eq!(StubStatus::parse("Active connections: x"), None);
    }

    #[test]
    fn wrk_report_parses_with_and_without_errors() {
        let clean = "Running 5s test @ http://127.0.0.1:8080/\n  2 threads and 20 connections\n  \
                     50123 requests in 5.00s, 10.00MB read\nRequests/sec:  10024.60\n";
        assert_eq!(
            WrkTotals::parse(clean),
            Some(WrkTotals {
                requests: 50123,
                non_2xx: 0,
                socket_errors: 0
            })
        );
        let errors = "  1200 requests in 1.00s, 1.00MB read\n  Socket errors: connect 0, read 3, write 1, timeout 2\n  \
                      Non-2xx or 3xx responses: 7\n";
        assert_eq!(
            WrkTotals::parse(errors),
            Some(WrkTotals {
                requests: 1200,
                non_2xx: 7,
                socket_errors: 6
            })
        );
    }
}
