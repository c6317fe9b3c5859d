//! The web farm the control loop runs: LXD containers serving HTTP (also after a restart),
//! a private nginx that `include`s the upstream file Lynx owns, and the daemon's config for
//! one group `web` over those containers. Also a watcher of LXD's own events, the clock the
//! control loop's latency is measured from.
use std::{
    fs,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use lynx::{
    lxd::{LxdClient, events::Next},
    nginx::upstream::{Upstream, render},
};

use crate::{
    daemon::DaemonUnderTest,
    lxd::{SOCKET, TestContainer, lxd, try_http_get_within},
    nginx::{Nginx, Upstreams, free_port},
};

/// The group's upstream name and the port its containers serve on.
pub const UPSTREAM: &str = "web";
pub const PORT: u16 = 8080;

/// Containers behind a private nginx whose upstream `web` is Lynx's file. Removed on drop.
pub struct Farm {
    pub containers: Vec<TestContainer>,
    /// What each container's `GET /` serves.
    pub pages: Vec<String>,
    pub nginx: Nginx,
    pub upstream_file: PathBuf,
    pub fallback_port: u16,
    dir: PathBuf,
}

impl Farm {
    /// `count` containers, in name order, serving on [`PORT`] at every start, and nginx over an upstream file
    /// with no server yet (clients get 503 until Lynx writes it).
    pub fn new(name: &str, count: usize) -> Self {
        lxd();
        let mut containers: Vec<TestContainer> = thread::scope(|scope| {
            let launches: Vec<_> = (0..count)
                .map(|_| scope.spawn(|| TestContainer::launch(&format!("ctl-{name}"))))
                .collect();
            launches
                .into_iter()
                .map(|l| l.join().expect("launch"))
                .collect()
        });
        // In name order, the order Lynx picks members in.
        containers.sort_by(|a, b| a.name().cmp(b.name()));
        let pages = containers
            .iter()
            .map(|c| c.serve_http_at_boot(PORT))
            .collect();
        let dir = std::env::temp_dir().join(format!("lynx-farm-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create farm dir");
        let upstream_file = dir.join("lynx-upstreams.conf");
        let fallback_port = free_port();
        let empty = Upstream {
            name: UPSTREAM.into(),
            servers: vec![],
        };
        let text = render(&[empty], fallback_port).expect("renders");
        fs::write(&upstream_file, text).expect("write the first upstream file");
        let nginx = Nginx::start_with(
            name,
            Upstreams::Include {
                file: &upstream_file,
                name: UPSTREAM,
            },
        );
        Self {
            containers,
            pages,
            nginx,
            upstream_file,
            fallback_port,
            dir,
        }
    }

    /// The daemon's config for this farm (after `[daemon]` and `[history]`): nginx, a 2 s
    /// re-read, and group `web` over every container, followed by `group_extra` (keys of the
    /// group, then `[groups.autoscale]`).
    pub fn config(&self, group_extra: &str) -> String {
        let control = self.nginx.control();
        let names: Vec<String> = self
            .containers
            .iter()
            .map(|c| format!("\"{}\"", c.name()))
            .collect();
        format!(
            "[lxd]\nreconcile_interval = \"2s\"\n\
             [nginx]\npid_file = \"{}\"\nbinary = \"{}\"\nmain_config = \"{}\"\nprefix = \"{}\"\n\
             upstream_file = \"{}\"\nfallback_port = {}\n\
             [[groups]]\nname = \"web\"\nupstream = \"{UPSTREAM}\"\nport = {PORT}\n\
             containers = [{}]\n{group_extra}",
            control.pid_file.display(),
            control.binary.display(),
            control.main_config.display(),
            control
                .prefix
                .as_ref()
                .expect("the rig's nginx has a prefix")
                .display(),
            self.upstream_file.display(),
            self.fallback_port,
            names.join(", ")
        )
    }

    /// A daemon collecting every 200 ms with this farm's config.
    pub fn daemon(&self, name: &str, group_extra: &str, args: &[&str]) -> DaemonUnderTest {
        DaemonUnderTest::start_with_args(name, "200ms", "", &self.config(group_extra), args)
    }

    /// `GET /` through nginx, giving up after `timeout`.
    pub fn get_within(&self, timeout: Duration) -> Result<String, String> {
        try_http_get_within(Ipv4Addr::LOCALHOST, self.nginx.port, "/", timeout)
    }

    /// The `server` addresses of upstream `web` in the upstream file, the fallback left out.
    pub fn servers(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.upstream_file).expect("read the upstream file");
        let fallback = format!("127.0.0.1:{}", self.fallback_port);
        text.split(&format!("upstream {UPSTREAM} {{"))
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server "))
            .map(|s| s.trim_end_matches(';').to_owned())
            .filter(|s| *s != fallback)
            .collect()
    }

    /// `address:port` of container `index`, as the upstream file has it.
    pub fn server(&self, index: usize) -> String {
        format!("{}:{PORT}", self.containers[index].ipv4())
    }

    /// Polls nginx until answers satisfy `expected` three times in a row (each try bounded by
    /// 50 ms, so a request stuck on a backend that went away does not hide the change), up to
    /// `timeout`; returns when the first of the three came. In a row: just after a reload a
    /// worker of the previous generation may still accept a connection and answer the old way.
    pub fn until_answer(
        &self,
        what: &str,
        timeout: Duration,
        expected: impl Fn(&Result<String, String>) -> bool,
    ) -> Instant {
        self.until_answer_each(what, timeout, Duration::from_millis(50), expected)
    }

    /// [`Self::until_answer`] with each try bounded by `each`: the resolution of the time
    /// returned when requests stick on a backend that went away.
    pub fn until_answer_each(
        &self,
        what: &str,
        timeout: Duration,
        each: Duration,
        expected: impl Fn(&Result<String, String>) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + timeout;
        let mut streak: Option<(Instant, u32)> = None;
        loop {
            let asked = Instant::now();
            let answer = self.get_within(each);
            streak = match (expected(&answer), streak) {
                (false, _) => None,
                (true, None) => Some((asked, 1)),
                (true, Some((first, n))) => Some((first, n + 1)),
            };
            if let Some((first, 3)) = streak {
                return first;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for nginx to answer {what}; last answer {answer:?}"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A 503 answer: the group's fallback.
pub fn is_503(answer: &Result<String, String>) -> bool {
    answer.as_ref().is_err_and(|e| e.contains(" 503 "))
}

/// LXD's reports of state changes as they arrive: lifecycle events by their action
/// (`instance-paused`, once LXD is done) and the start of operations by their description
/// (`Freezing instance`, when LXD begins), each with when LXD says it happened (its
/// `timestamp`: a subscriber may get an event later than another one does); stops on drop.
pub struct LxdEvents {
    receiver: mpsc::Receiver<(String, String, Instant)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LxdEvents {
    /// Subscribes now: every later event is seen.
    pub fn subscribe() -> Self {
        let mut stream = LxdClient::new(SOCKET)
            .events("lifecycle,operation", Duration::from_millis(100))
            .expect("subscribe to LXD's events");
        let (sender, receiver) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match stream.recv() {
                        Ok(Next::Event(event)) => {
                            let at = instant_of(&event.timestamp);
                            let metadata = event.metadata;
                            let reports: Vec<(String, String)> = if event.kind == "operation" {
                                // Each operation once, when it begins.
                                let resources = metadata.resources.unwrap_or_default();
                                resources
                                    .get("instances")
                                    .filter(|_| metadata.status == "Pending")
                                    .into_iter()
                                    .flatten()
                                    .map(|path| (instance(path), metadata.description.clone()))
                                    .collect()
                            } else {
                                vec![(instance(&metadata.source), metadata.action)]
                            };
                            for (name, what) in reports {
                                let _ = sender.send((name, what, at));
                            }
                        }
                        Ok(Next::Idle) => {}
                        Ok(Next::Closed) | Err(_) => return,
                    }
                }
            })
        };
        Self {
            receiver,
            stop,
            thread: Some(thread),
        }
    }

    /// When LXD reported `what` (a lifecycle action or an operation's description) about
    /// `name`; waits up to `timeout` for it, passing over earlier reports.
    pub fn wait_for(&self, name: &str, what: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok((n, w, at)) if n == name && w == what => return at,
                Ok(_) => {}
                Err(_) => panic!("no {what} from LXD for {name} within {timeout:?}"),
            }
        }
    }
}

impl Drop for LxdEvents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `web1` of `/1.0/instances/web1`.
fn instance(path: &str) -> String {
    path.trim_start_matches("/1.0/instances/").to_owned()
}

/// The monotonic instant of an RFC 3339 wall-clock time of this host.
fn instant_of(rfc3339: &str) -> Instant {
    let wall = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("LXD's event timestamp {rfc3339:?}: {e}"));
    let (now, now_wall) = (Instant::now(), time::OffsetDateTime::now_utc());
    let ago = now_wall - wall;
    match std::time::Duration::try_from(ago) {
        Ok(ago) => now - ago,
        Err(_) => now + std::time::Duration::try_from(-ago).unwrap_or_default(),
    }
}

/// Milliseconds from `from` to `to`, negative when `to` came first.
pub fn ms_between(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(from - to).as_secs_f64() * 1000.0,
    }
}
