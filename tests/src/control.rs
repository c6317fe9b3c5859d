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
        DaemonUnderTest::start_configured(name, "200ms", &self.config(group_extra), args)
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

    /// Polls nginx until an answer satisfies `expected` (each try bounded by 50 ms, so a
    /// request stuck on a backend that went away does not hide the change), up to `timeout`;
    /// returns when it did.
    pub fn until_answer(
        &self,
        what: &str,
        timeout: Duration,
        expected: impl Fn(&Result<String, String>) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.get_within(Duration::from_millis(50));
            if expected(&answer) {
                return Instant::now();
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

/// LXD's lifecycle events as they arrive, each with when it arrived; stops on drop.
pub struct LxdEvents {
    receiver: mpsc::Receiver<(String, String, Instant)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LxdEvents {
    /// Subscribes now: every later event is seen.
    pub fn subscribe() -> Self {
        let mut stream = LxdClient::new(SOCKET)
            .events("lifecycle", Duration::from_millis(100))
            .expect("subscribe to LXD's events");
        let (sender, receiver) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match stream.recv() {
                        Ok(Next::Event(event)) => {
                            let name = event
                                .metadata
                                .source
                                .trim_start_matches("/1.0/instances/")
                                .to_owned();
                            let _ = sender.send((name, event.metadata.action, Instant::now()));
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

    /// When event `action` about `name` arrived; waits up to `timeout` for it.
    pub fn wait_for(&self, name: &str, action: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok((n, a, at)) if n == name && a == action => return at,
                Ok(_) => {}
                Err(_) => panic!("no {action} event for {name} within {timeout:?}"),
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

/// Milliseconds from `from` to `to`, negative when `to` came first.
pub fn ms_between(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(from - to).as_secs_f64() * 1000.0,
    }
}
