//! The control loop: nginx's upstreams follow the containers' states, and each autoscaling
//! group's size follows its load.
//!
//! Three threads, so that nothing slow holds up the upstream file:
//! - `lxd-events` listens to LXD's lifecycle and operation events (`/1.0/events`) and wakes
//!   the controller for each; when the stream ends (LXD restarting) it reconnects every
//!   second, and the controller then re-reads everything, since events may have been missed.
//!   Operation events come when LXD *begins* to stop or freeze an instance (the lifecycle
//!   event only once it is done, up to a second later for a clean stop): such a member leaves
//!   its upstream at once, before its service goes away.
//! - `lxd-actions` carries out starts, stops, freezes and unfreezes one at a time, which take
//!   LXD up to seconds.
//! - `controller` owns the state ([`core::Core`]): on an event it reads the one instance's
//!   state, every `reconcile_interval` every instance; then it admits members that answer on
//!   their port, writes the upstream file when its content changes (`nginx -t`, reload,
//!   confirmed, rolled back on failure), moves drains on, and feeds the autoscalers each
//!   snapshot's load. While something is under way (a drain, a member not answering yet) it
//!   looks again every 100 ms.
//!
//! While LXD is away the upstreams stay as they are and no scale decision is made; the log
//! says when LXD goes and comes back.
pub mod address;
pub mod core;
mod counts;
pub mod group;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use self::{
    core::{Backends, Core, DrainProbe, Io, Load, MemberState, Request},
    counts::{KernelCounts, Upstreams},
    group::GroupConfig,
};
use crate::{
    lxd::{
        InstanceStatus, LxdClient, LxdError, StateAction,
        events::{EventStream, Next},
    },
    model,
    nginx::{NginxControl, UpstreamFile},
    stop::sleep_until,
};

/// Short LXD timeouts: a hung LXD is reported as away rather than waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a start, stop, freeze or unfreeze may take LXD.
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to look again while something is under way.
const BUSY_POLL: Duration = Duration::from_millis(100);
/// How long a backend may take to accept a connection to count as answering.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(200);
/// How long a member is re-read after an event saying it stops or freezes, while LXD still
/// reports it running.
const RECHECK_FOR: Duration = Duration::from_secs(3);
/// How long the event thread waits between reconnects.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How the controller runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlOptions {
    pub groups: Vec<GroupConfig>,
    pub lxd_sockets: Vec<PathBuf>,
    pub reconcile_interval: Duration,
    pub upstream_file: PathBuf,
    pub nginx: NginxControl,
    pub fallback_port: u16,
    /// Decide and log, but touch nothing: no LXD action, no file, no reload.
    pub dry_run: bool,
}

enum Message {
    /// A lifecycle event about instance `name`.
    Event {
        name: String,
        action: String,
    },
    /// An LXD operation on instance `name` was created or changed status.
    Operation {
        name: String,
        description: String,
        status: String,
    },
    /// The event stream (re)connected: events may have been missed.
    Resubscribed,
    Load(Instant, Load),
    Done {
        name: String,
        action: StateAction,
        result: Result<(), String>,
        state: Option<MemberState>,
    },
}

/// The running controller; stops its threads when dropped (the one carrying out an LXD
/// action ends once LXD answers).
pub struct Controller {
    sender: Sender<Message>,
    counts: KernelCounts,
    groups: Arc<Mutex<Vec<model::Group>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Controller {
    /// Starts the threads.
    pub fn spawn(options: ControlOptions) -> Self {
        let counts = KernelCounts::default();
        let (sender, receiver) = mpsc::channel();
        let (actions, action_receiver) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let groups = Arc::new(Mutex::new(Vec::new()));
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(body)
                .expect("spawn a controller thread")
        };
        if options.dry_run {
            tracing::info!("dry run: the controller decides and logs, and changes nothing");
        }
        // Not joined on drop: a start or stop LXD carries out can take it a minute, and
        // waiting here would hold up a daemon told to stop; LXD finishes it either way.
        drop(spawn("lxd-actions", {
            let (sockets, sender) = (options.lxd_sockets.clone(), sender.clone());
            Box::new(move || act(&sockets, &action_receiver, &sender))
        }));
        let threads = vec![
            spawn("lxd-events", {
                let (sockets, sender, stop) = (
                    options.lxd_sockets.clone(),
                    sender.clone(),
                    Arc::clone(&stop),
                );
                Box::new(move || listen(&sockets, &sender, &stop))
            }),
            spawn("controller", {
                let (groups, stop, probe) =
                    (Arc::clone(&groups), Arc::clone(&stop), counts.clone());
                Box::new(move || control(options, &probe, &receiver, &actions, &groups, &stop))
            }),
        ];
        Self {
            sender,
            counts,
            groups,
            stop,
            threads,
        }
    }

    /// Hands a snapshot's load to the autoscalers, and nginx's connection counts to the
    /// drains.
    pub fn feed(&self, snapshot: &model::Snapshot) {
        let now = Instant::now();
        // Per backend, when nginx is counted (the kernel knows its processes).
        let backends: Option<Upstreams> = snapshot.nginx.master_pid.map(|_| {
            snapshot
                .nginx
                .upstreams
                .iter()
                .filter_map(|e| {
                    let ip = e.address.as_deref()?.parse().ok()?;
                    Some((SocketAddrV4::new(ip, e.port), e))
                })
                .collect()
        });
        let complete = self
            .counts
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update(now, snapshot, backends.as_ref());
        let load = Load {
            cpu_percent: snapshot
                .containers
                .iter()
                .filter(|c| c.kind == "lxd")
                .map(|c| (c.name.clone(), c.cpu.percent))
                .collect(),
            requests_per_s: backends
                .map(|b| b.iter().map(|(a, e)| (*a, e.requests_per_s)).collect()),
            complete,
        };
        let _ = self.sender.send(Message::Load(now, load));
    }

    /// The groups as of the controller's last step, for the snapshot.
    pub fn groups(&self) -> Vec<model::Group> {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The controller thread wakes on any message; it then sees `stop`.
        let _ = self.sender.send(Message::Resubscribed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Backends answer when a TCP connection to them succeeds.
struct TcpBackends;

impl Backends for TcpBackends {
    fn answers(&self, address: SocketAddrV4) -> bool {
        TcpStream::connect_timeout(&SocketAddr::V4(address), ANSWER_TIMEOUT).is_ok()
    }
}

fn client(sockets: &[PathBuf]) -> Option<LxdClient> {
    LxdClient::discover(sockets).map(|c| c.with_timeouts(CONNECT_TIMEOUT, IO_TIMEOUT))
}

/// The `lxd-events` thread.
fn listen(sockets: &[PathBuf], sender: &Sender<Message>, stop: &AtomicBool) {
    let mut connected_before = false;
    let mut last_failure = String::new();
    while !stop.load(Ordering::Relaxed) {
        let stream = client(sockets)
            .ok_or_else(|| "no LXD socket answers".to_owned())
            .and_then(|c| {
                c.events("lifecycle,operation", Duration::from_millis(500))
                    .map_err(|e| e.to_string())
            });
        match stream {
            Ok(stream) => {
                if connected_before {
                    tracing::info!("LXD event stream back: re-reading every instance");
                }
                connected_before = true;
                last_failure.clear();
                if sender.send(Message::Resubscribed).is_err() {
                    return;
                }
                let why = forward(stream, sender, stop);
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                tracing::warn!(
                    "LXD event stream ended ({why}); reconnecting every {RECONNECT_PAUSE:?}, the upstreams stay as they are meanwhile"
                );
            }
            Err(error) => {
                if error != last_failure {
                    tracing::warn!(%error, "cannot subscribe to LXD's events; retrying every {RECONNECT_PAUSE:?}");
                    last_failure = error;
                }
            }
        }
        sleep_until(Instant::now() + RECONNECT_PAUSE, stop);
    }
}

/// Forwards events until the stream ends; returns why it ended.
fn forward(mut stream: EventStream, sender: &Sender<Message>, stop: &AtomicBool) -> String {
    while !stop.load(Ordering::Relaxed) {
        match stream.recv() {
            Ok(Next::Event(event)) => {
                let metadata = event.metadata;
                let messages: Vec<Message> = if event.kind == "operation" {
                    let instances = metadata.resources.unwrap_or_default();
                    let instances = instances.get("instances").cloned().unwrap_or_default();
                    instances
                        .iter()
                        .filter_map(|path| instance_name(path))
                        .map(|name| Message::Operation {
                            name,
                            description: metadata.description.clone(),
                            status: metadata.status.clone(),
                        })
                        .collect()
                } else {
                    instance_name(&metadata.source)
                        .map(|name| Message::Event {
                            name,
                            action: metadata.action,
                        })
                        .into_iter()
                        .collect()
                };
                for message in messages {
                    if sender.send(message).is_err() {
                        return "controller gone".into();
                    }
                }
            }
            Ok(Next::Idle) => {}
            Ok(Next::Closed) => return "LXD closed it".into(),
            Err(error) => return error.to_string(),
        }
    }
    "stopping".into()
}

/// `web1` of `/1.0/instances/web1` (or `/1.0/instances/web1?project=default`).
fn instance_name(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/1.0/instances/")?;
    Some(rest.split(['/', '?']).next().unwrap_or(rest).to_owned())
}

/// Whether an LXD operation (by its description, as LXD 5 words them) takes an instance out
/// of Running: its members leave their upstream as soon as it begins.
fn takes_out_of_running(description: &str) -> bool {
    matches!(
        description,
        "Stopping instance" | "Freezing instance" | "Restarting instance"
    )
}

/// How long a member stays out of its upstream for an operation that never reports its end.
const LEAVING_FOR: Duration = Duration::from_secs(60);

/// The `lxd-actions` thread: one action at a time, answered with the instance's new state.
fn act(sockets: &[PathBuf], requests: &Receiver<Request>, sender: &Sender<Message>) {
    while let Ok(Request { name, action }) = requests.recv() {
        let (result, state) = match client(sockets) {
            None => (Err("no LXD socket answers".to_owned()), None),
            Some(lxd) => {
                let started = Instant::now();
                let result = lxd
                    .change_state(&name, action, ACTION_TIMEOUT)
                    .map_err(|e| e.to_string());
                tracing::debug!(container = %name, ?action, took = ?started.elapsed(), "LXD action done");
                let state = lxd.instance_state(&name).ok().map(|s| MemberState::of(&s));
                (result, state)
            }
        };
        let done = Message::Done {
            name,
            action,
            result,
            state,
        };
        if sender.send(done).is_err() {
            return;
        }
    }
}

/// Whether an event says an instance stops or freezes; LXD may report it running a moment
/// longer.
fn leaves_running(action: &str) -> bool {
    matches!(
        action,
        "instance-shutdown" | "instance-stopped" | "instance-paused" | "instance-restarted"
    )
}

/// Whether an event can change which instances are members: then every instance is re-read.
fn changes_membership(action: &str) -> bool {
    matches!(
        action,
        "instance-created" | "instance-deleted" | "instance-renamed" | "instance-updated"
    )
}

/// The `controller` thread.
fn control(
    options: ControlOptions,
    probe: &dyn DrainProbe,
    receiver: &Receiver<Message>,
    actions: &Sender<Request>,
    groups: &Mutex<Vec<model::Group>>,
    stop: &Arc<AtomicBool>,
) {
    let mut core = Core::new(
        options.groups,
        options.fallback_port,
        options.dry_run,
        Instant::now(),
    );
    let mut nginx =
        UpstreamFile::new(options.upstream_file, options.nginx).cancelled_by(Arc::clone(stop));
    let mut lxd = Lxd {
        sockets: options.lxd_sockets,
        client: None,
        known: BTreeSet::new(),
        available: None,
    };
    let mut next_full = Instant::now();
    // Members to re-read until they leave Running, with when to give up.
    let mut recheck: BTreeMap<String, Instant> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let wait = next_full.saturating_duration_since(Instant::now());
        let wait = if core.busy() || !recheck.is_empty() {
            wait.min(BUSY_POLL)
        } else {
            wait
        };
        let mut messages = Vec::new();
        match receiver.recv_timeout(wait) {
            Ok(message) => messages.push(message),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        messages.extend(receiver.try_iter());
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut full = Instant::now() >= next_full;
        let mut touched = BTreeSet::new();
        let mut loads = Vec::new();
        let mut leaving = false;
        for message in messages {
            match message {
                Message::Event { name, action } => {
                    tracing::debug!(container = %name, %action, "LXD event");
                    if changes_membership(&action) || !lxd.known.contains(&name) {
                        full = true;
                    } else if core.is_member(&name) {
                        if leaves_running(&action) {
                            recheck.insert(name.clone(), Instant::now() + RECHECK_FOR);
                        }
                        touched.insert(name);
                    }
                }
                Message::Operation {
                    name,
                    description,
                    status,
                } => {
                    if !core.is_member(&name) || !takes_out_of_running(&description) {
                        continue;
                    }
                    tracing::debug!(container = %name, %description, %status, "LXD operation");
                    if matches!(status.as_str(), "Pending" | "Running") {
                        // Out at once; its state is not read meanwhile: LXD holds a read of
                        // an instance it is stopping until it is done.
                        core.set_leaving(&name, Some(Instant::now() + LEAVING_FOR));
                        leaving = true;
                    } else {
                        // Done: its state tells the rest (a failed stop leaves it Running).
                        core.set_leaving(&name, None);
                        recheck.insert(name.clone(), Instant::now() + RECHECK_FOR);
                        touched.insert(name);
                    }
                }
                Message::Resubscribed => full = true,
                Message::Load(at, load) => loads.push((at, load)),
                Message::Done {
                    name,
                    action,
                    result,
                    state,
                } => core.action_done(&name, action, result, state),
            }
        }
        if leaving {
            // Before any LXD read, which may wait for LXD.
            step(&mut core, &mut nginx, probe, actions);
        }
        if full {
            lxd.refresh_all(&mut core);
            core.reconciled();
            next_full = Instant::now() + options.reconcile_interval;
        } else {
            let now = Instant::now();
            recheck.retain(|name, until| {
                *until > now && core.status(name) == Some(InstanceStatus::Running)
            });
            touched.extend(recheck.keys().cloned());
            touched.extend(core.awaiting_address().cloned());
            touched.retain(|name| !core.is_leaving(name));
            for name in touched {
                if !lxd.refresh_one(&mut core, &name) {
                    lxd.refresh_all(&mut core);
                    break;
                }
            }
        }
        for (at, load) in loads {
            core.observe_load(at, &load);
        }
        step(&mut core, &mut nginx, probe, actions);
        *groups.lock().unwrap_or_else(PoisonError::into_inner) = core.groups(Instant::now());
    }
}

/// One [`Core::step`], its LXD actions handed to the `lxd-actions` thread.
fn step(
    core: &mut Core,
    nginx: &mut UpstreamFile,
    probe: &dyn DrainProbe,
    actions: &Sender<Request>,
) {
    let requests = core.step(
        Instant::now(),
        &mut Io {
            balancer: nginx,
            backends: &TcpBackends,
            probe,
        },
    );
    for request in requests {
        // The thread only ends with this one.
        let _ = actions.send(request);
    }
}

/// The controller's view of LXD.
struct Lxd {
    sockets: Vec<PathBuf>,
    client: Option<LxdClient>,
    /// Every instance name of the last full read: events about others mean a new instance.
    known: BTreeSet<String>,
    /// Whether LXD answered last time; `None` before the first try.
    available: Option<bool>,
}

impl Lxd {
    fn refresh_all(&mut self, core: &mut Core) {
        let answer = self
            .client()
            .ok_or_else(|| "no LXD socket answers".to_owned())
            .and_then(|c| {
                let instances = c.instances().map_err(|e| e.to_string())?;
                Ok((instances, c.networks().map_err(|e| e.to_string())?))
            });
        match answer {
            Ok((instances, networks)) => {
                self.known = instances.iter().map(|i| i.name.clone()).collect();
                core.set_instances(&instances, &networks);
                self.mark(core, Ok(()));
            }
            Err(error) => self.mark(core, Err(error)),
        }
    }

    /// Re-reads one member; false when a full read is needed instead (it is gone).
    fn refresh_one(&mut self, core: &mut Core, name: &str) -> bool {
        let Some(client) = self.client() else {
            self.mark(core, Err("no LXD socket answers".into()));
            return true;
        };
        match client.instance_state(name) {
            Ok(state) => {
                core.set_member(name, Some(MemberState::of(&state)));
                self.mark(core, Ok(()));
                true
            }
            Err(LxdError::Api { code: 404, .. }) => false,
            Err(error) => {
                self.mark(core, Err(error.to_string()));
                true
            }
        }
    }

    fn client(&mut self) -> Option<&LxdClient> {
        if self.client.is_none() {
            self.client = client(&self.sockets);
        }
        self.client.as_ref()
    }

    /// Logs LXD going away and coming back, once each.
    fn mark(&mut self, core: &mut Core, result: Result<(), String>) {
        let available = result.is_ok();
        match (&result, self.available) {
            (Err(error), Some(true) | None) => {
                tracing::warn!(%error, "LXD does not answer: the upstreams stay as they are and autoscaling waits until it does")
            }
            (Ok(()), Some(false)) => tracing::info!("LXD answers again"),
            _ => {}
        }
        if !available {
            // Look for the socket again next time: LXD may come back elsewhere.
            self.client = None;
        }
        self.available = Some(available);
        core.set_lxd_available(available);
    }
}
