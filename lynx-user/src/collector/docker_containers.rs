//! The Docker Engine as a [`DockerSource`], watched on a thread of its own so that collection
//! never waits for the engine: a tick takes the latest view.
//!
//! The thread subscribes to the engine's event stream first and reads every container after,
//! so no change falls between the two; then it reads again the container each event names
//! (or forgets it, for `destroy`), and every container each `reconcile` period, in case the
//! stream dropped something. A stream that ends or fails makes it start over; while that
//! fails the engine is down. Each change between up, down and absent is logged once.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{DockerSource, DockerView};
use crate::{
    docker::{
        Container, DockerClient, DockerError,
        events::{Change, EventStream, Next},
    },
    stop::sleep_until,
};

/// Short timeouts: a hung engine is reported as down rather than waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long one wait for an event lasts, so that a stop request is seen in time.
const POLL: Duration = Duration::from_millis(200);
/// How soon a failed subscription is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The containers of the engine at the first of `sockets` that exists, kept fresh in the
/// background.
pub struct DockerContainers {
    latest: Arc<Mutex<DockerView>>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl DockerContainers {
    /// Reads the engine once now (bounded by the client's timeouts), then keeps the view
    /// fresh on a background thread until dropped.
    pub fn spawn(sockets: Vec<PathBuf>, reconcile: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut watcher = Watcher {
            sockets,
            reconcile,
            containers: BTreeMap::new(),
            view: Arc::new(Mutex::new(DockerView::Absent)),
            logged: None,
            stop: Arc::clone(&stop),
        };
        let first = watcher.connect();
        let latest = Arc::clone(&watcher.view);
        let thread = std::thread::Builder::new()
            .name("docker-watcher".into())
            .spawn(move || watcher.run(first))
            .expect("spawn the Docker watcher thread");
        Self {
            latest,
            stop,
            watcher: Some(thread),
        }
    }
}

impl DockerSource for DockerContainers {
    fn view(&mut self) -> DockerView {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for DockerContainers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.watcher.take() {
            let _ = thread.join();
        }
    }
}

/// Which of up, down and absent was logged last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logged {
    Up,
    Down,
    Absent,
}

struct Watcher {
    sockets: Vec<PathBuf>,
    reconcile: Duration,
    containers: BTreeMap<String, Container>,
    view: Arc<Mutex<DockerView>>,
    logged: Option<Logged>,
    stop: Arc<AtomicBool>,
}

/// A live subscription and when every container was last read.
struct Session {
    client: DockerClient,
    events: EventStream,
    read_at: Instant,
}

impl Watcher {
    fn run(mut self, mut session: Option<Session>) {
        while !self.stop.load(Ordering::Relaxed) {
            let Some(live) = session.as_mut() else {
                if !sleep_until(Instant::now() + RETRY, &self.stop) {
                    return;
                }
                session = self.connect();
                continue;
            };
            if let Err(error) = self.follow(live) {
                tracing::debug!(%error, "Docker event stream ended: subscribing again");
                session = self.connect();
            }
        }
    }

    /// Subscribes and reads every container; publishes the result, up or down.
    fn connect(&mut self) -> Option<Session> {
        let Some(socket) = self.sockets.iter().find(|s| s.exists()).cloned() else {
            self.publish_down(None);
            return None;
        };
        let client = DockerClient::new(&socket).with_timeouts(CONNECT_TIMEOUT, TIMEOUT);
        let session = client.events(POLL).and_then(|events| {
            let containers = client.containers()?;
            Ok((events, containers))
        });
        match session {
            Ok((events, containers)) => {
                self.containers = containers.into_iter().map(|c| (c.id.clone(), c)).collect();
                self.publish_up(&socket);
                Some(Session {
                    client,
                    events,
                    read_at: Instant::now(),
                })
            }
            Err(error) => {
                self.publish_down(Some(&error));
                None
            }
        }
    }

    /// Applies events until the stream ends or fails, reading everything again every
    /// `reconcile` period.
    fn follow(&mut self, session: &mut Session) -> Result<(), DockerError> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if session.read_at.elapsed() >= self.reconcile {
                let containers = session.client.containers()?;
                self.containers = containers.into_iter().map(|c| (c.id.clone(), c)).collect();
                session.read_at = Instant::now();
                self.publish_up(session.client.socket());
            }
            let event = match session.events.recv()? {
                Next::Event(event) => event,
                Next::Idle => continue,
                Next::Closed => {
                    return Err(DockerError::Api {
                        endpoint: "GET /events".into(),
                        code: 0,
                        message: "the engine closed the stream".into(),
                    });
                }
            };
            tracing::debug!(id = %event.id, action = %event.action, "Docker event");
            match event.change {
                Change::Unchanged => continue,
                Change::Removed => {
                    self.containers.remove(&event.id);
                }
                Change::Changed => match session.client.inspect(&event.id)? {
                    Some(container) => {
                        self.containers.insert(container.id.clone(), container);
                    }
                    None => {
                        self.containers.remove(&event.id);
                    }
                },
            }
            self.publish_up(session.client.socket());
        }
    }

    fn publish_up(&mut self, socket: &Path) {
        if self.logged != Some(Logged::Up) {
            tracing::info!(
                socket = %socket.display(),
                containers = self.containers.len(),
                "Docker answers"
            );
            self.logged = Some(Logged::Up);
        }
        self.set(DockerView::Up(self.containers.values().cloned().collect()));
    }

    /// The engine does not answer (`error`), or has no socket (`None`): absent unless it was
    /// up before, when its socket going away (a clean engine stop removes it) is an outage.
    fn publish_down(&mut self, error: Option<&DockerError>) {
        self.containers.clear();
        let absent =
            error.is_none() && self.logged != Some(Logged::Up) && self.logged != Some(Logged::Down);
        let now = if absent { Logged::Absent } else { Logged::Down };
        if self.logged != Some(now) {
            let tried = self
                .sockets
                .iter()
                .map(|s| s.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            match (now, error) {
                (Logged::Absent, _) => tracing::info!(
                    sockets = %tried,
                    "no Docker engine here: Docker containers are listed by cgroup id"
                ),
                (_, Some(error)) => tracing::warn!(
                    %error,
                    "Docker unavailable: its containers are listed by cgroup id until it answers"
                ),
                (_, None) => tracing::warn!(
                    sockets = %tried,
                    "Docker unavailable (its socket is gone): its containers are listed by cgroup id until it answers"
                ),
            }
            self.logged = Some(now);
        }
        self.set(match now {
            Logged::Absent => DockerView::Absent,
            _ => DockerView::Down,
        });
    }

    fn set(&self, view: DockerView) {
        *self.view.lock().unwrap_or_else(PoisonError::into_inner) = view;
    }
}
