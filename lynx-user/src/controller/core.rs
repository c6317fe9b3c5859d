//! The controller's decisions over plain inputs: members and their states in, the upstream
//! file and LXD state changes out. No threads, sockets or clocks here; nginx, the backends and
//! the drain probe are traits, so the ordering rules are tested with fakes.
//!
//! Ordering rules that keep requests from failing:
//! - a member enters its upstream only once it is `Running`, has an address and answers on the
//!   group's port;
//! - a member leaves its upstream (nginx confirmed the reload) before it is frozen or stopped,
//!   and is put away only once nginx has no connection to it (every worker that the removing
//!   reload retired has exited, or the kernel's count, taken [`SETTLE`] after that reload,
//!   says 0) or the drain timeout passed; a member nginx could not be made to drop is never
//!   put away;
//! - one scale action per group at a time: the policy is not asked while one is under way.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant, SystemTime},
};

use super::{
    address::{self, Binding, Subnet},
    group::GroupConfig,
};
use crate::{
    autoscale::{Decision, Direction, DownAction, Observation, Policy},
    lxd::{Instance, InstanceState, InstanceStatus, Interfaces, Network, StateAction},
    model::{self, round2},
    nginx::{
        Applied, NginxError, UpstreamFile,
        upstream::{self, Upstream},
    },
};

/// The nginx whose upstream file the controller owns.
pub trait Balancer {
    /// Makes `content` the upstream file nginx serves, or leaves the previous one in place.
    fn apply(&mut self, content: &str) -> Result<Applied, NginxError>;
    /// Workers retired by reloads that still run (they may still talk to removed servers).
    fn retiring_workers(&self) -> BTreeSet<u32>;
}

impl Balancer for UpstreamFile {
    fn apply(&mut self, content: &str) -> Result<Applied, NginxError> {
        UpstreamFile::apply(self, content)
    }

    fn retiring_workers(&self) -> BTreeSet<u32> {
        UpstreamFile::retiring_workers(self)
    }
}

/// How many looks (state re-reads, connection tries) a member that runs but does not serve
/// yet gets at the short poll before it is left to the full re-reads: about a minute at the
/// 100 ms poll. A container without an IPv4 address or without the service would otherwise
/// be polled ten times a second for ever.
const PATIENCE: u32 = 600;

/// Whether a backend accepts connections on its port.
pub trait Backends {
    fn answers(&self, address: SocketAddrV4) -> bool;
}

/// nginx's open connections to one backend, as counted at some instant after `since` (the
/// kernel counts them when nginx is counted); `None` without such a count.
pub trait DrainProbe {
    fn active_connections(&self, address: SocketAddrV4, since: Instant) -> Option<u64>;
}

/// How long after the reload that took a member out a connection count must be taken to end
/// its drain: workers of the previous generation may still accept a client for a moment
/// after the new ones start, and send it to the member.
const SETTLE: Duration = Duration::from_millis(500);

/// What the controller uses of the outside world in one step.
pub struct Io<'a> {
    pub balancer: &'a mut dyn Balancer,
    pub backends: &'a dyn Backends,
    pub probe: &'a dyn DrainProbe,
}

/// An instance's state as far as its group cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub status: InstanceStatus,
    /// Its global IPv4 addresses by interface, as it reports them: its upstream address is
    /// picked from these by its [`Binding`], never taken as they come.
    pub interfaces: Interfaces,
}

impl MemberState {
    /// What LXD reports of an instance's live state.
    pub fn of(state: &InstanceState) -> Self {
        Self {
            status: state.status.clone(),
            interfaces: state.interfaces.clone(),
        }
    }
}

/// A state change for LXD to carry out; its result comes back through
/// [`Core::action_done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub action: StateAction,
}

/// The load figures of one snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// CPU % (100 = one CPU) of each container over the snapshot's interval.
    pub cpu_percent: BTreeMap<String, f64>,
    /// Requests per second nginx sent to each backend (address and port), when nginx is
    /// counted; `None` otherwise.
    pub requests_per_s: Option<BTreeMap<SocketAddrV4, f64>>,
    /// Whether every event behind these figures was counted: false while a kernel map is
    /// full (the figures are lower bounds; see [`crate::autoscale::Observation::complete`]).
    pub complete: bool,
}

/// What the controller is doing with one member.
#[derive(Clone, Debug, PartialEq)]
enum Task {
    /// Taken out of the upstream; put away once nginx has no connection to it.
    Drain {
        action: DownAction,
        deadline: Instant,
        /// Set once nginx serves an upstream without it: when, and the workers that were
        /// retiring then.
        confirmed: Option<(Instant, BTreeSet<u32>)>,
    },
    /// Asked of LXD; not answered yet.
    Pending(StateAction),
}

#[derive(Debug)]
struct Member {
    state: MemberState,
    /// The NIC nginx reaches it on, from its LXD config at the last full read, or why there
    /// is none.
    binding: Result<Binding, String>,
    /// Its upstream address: on its binding's interface and subnet; `None` until it has one.
    ipv4: Option<Ipv4Addr>,
    /// Addresses it reports that are not its upstream address, as last logged.
    ignored: Vec<Ipv4Addr>,
    /// Answered on the group's port since it last became `Running`: may serve.
    admitted: bool,
    /// "does not answer yet" logged since it last became `Running`.
    waiting_logged: bool,
    /// Looks at it since its state last changed, while it runs but does not serve.
    tries: u32,
    /// LXD is stopping or freezing it: out of the upstream until the operation ends or this
    /// time passes. Not until its state changes: LXD shows a container it shuts down frozen,
    /// then running again, for a moment, before it is stopped.
    leaving_until: Option<Instant>,
}

#[derive(Debug)]
struct Group {
    config: GroupConfig,
    policy: Option<Policy>,
    members: BTreeMap<String, Member>,
    tasks: BTreeMap<String, Task>,
    /// The containers the last scale action picked.
    last_containers: Vec<String>,
}

/// Members running, frozen and stopped. Of the members map rather than the group, so that it
/// borrows nothing the group's policy needs.
fn counts(members: &BTreeMap<String, Member>) -> (u32, u32, u32) {
    let count = |status| {
        members
            .values()
            .filter(|m| m.state.status == status)
            .count() as u32
    };
    (
        count(InstanceStatus::Running),
        count(InstanceStatus::Frozen),
        count(InstanceStatus::Stopped),
    )
}

/// The controller's state: groups, their members, what nginx serves.
pub struct Core {
    groups: Vec<Group>,
    fallback_port: u16,
    dry_run: bool,
    /// The policies' clock: durations since `origin`, shown as wall time from `origin_wall`.
    origin: Instant,
    origin_wall: SystemTime,
    /// The upstreams nginx confirmed serving; `None` before the first apply.
    serving: Option<BTreeMap<String, Vec<SocketAddr>>>,
    upstream_error: Option<String>,
    lxd_available: bool,
    /// The content last handed to nginx (or, in a dry run, logged as "would write"): the same
    /// content is not handed again until [`Core::reconciled`].
    rendered: Option<String>,
    outbox: Vec<Request>,
    /// The subnet of a host bridge LXD does not manage ([`address::host_subnet`]).
    host_subnet: &'static dyn Fn(&str) -> Option<Subnet>,
}

impl Core {
    pub fn new(groups: Vec<GroupConfig>, fallback_port: u16, dry_run: bool, now: Instant) -> Self {
        Self {
            groups: groups
                .into_iter()
                .map(|config| Group {
                    policy: config.autoscale.clone().map(Policy::new),
                    config,
                    members: BTreeMap::new(),
                    tasks: BTreeMap::new(),
                    last_containers: Vec::new(),
                })
                .collect(),
            fallback_port,
            dry_run,
            origin: now,
            origin_wall: SystemTime::now(),
            serving: None,
            upstream_error: None,
            lxd_available: false,
            rendered: None,
            outbox: Vec::new(),
            host_subnet: &address::host_subnet,
        }
    }

    /// Whether `name` is a member of some group.
    pub fn is_member(&self, name: &str) -> bool {
        self.groups.iter().any(|g| g.members.contains_key(name))
    }

    /// Whether LXD is stopping or freezing member `name`.
    pub fn is_leaving(&self, name: &str) -> bool {
        self.groups.iter().any(|g| {
            g.members
                .get(name)
                .is_some_and(|m| m.leaving_until.is_some())
        })
    }

    /// A member's status as last read (in its first group).
    pub fn status(&self, name: &str) -> Option<InstanceStatus> {
        self.groups
            .iter()
            .find_map(|g| g.members.get(name))
            .map(|m| m.state.status.clone())
    }

    /// Running members without an address yet (DHCP takes a moment after a start): their
    /// state is re-read until they have one.
    pub fn awaiting_address(&self) -> impl Iterator<Item = &String> {
        self.groups.iter().flat_map(|g| {
            g.members
                .iter()
                .filter(|(_, m)| m.waiting() && m.ipv4.is_none())
                .map(|(name, _)| name)
        })
    }

    /// Whether something waits on a short poll: a member to answer, a drain, an LXD action.
    pub fn busy(&self) -> bool {
        self.groups
            .iter()
            .any(|g| !g.tasks.is_empty() || g.members.values().any(Member::waiting))
    }

    /// LXD stopped answering (`false`) or answers again: while it is away the upstreams stay
    /// as they are and no scale decision is made.
    pub fn set_lxd_available(&mut self, available: bool) {
        self.lxd_available = available;
    }

    /// Every instance LXD has, with its state, and LXD's networks: the groups' members are
    /// re-selected, and the NIC each is reached on re-read from its config.
    pub fn set_instances(&mut self, instances: &[Instance], networks: &[Network]) {
        self.lxd_available = true;
        let mut joined = BTreeSet::new();
        for group in &mut self.groups {
            let wanted = group.config.network.clone();
            let selected: BTreeMap<&str, (MemberState, _)> = instances
                .iter()
                .filter(|instance| group.config.selects(instance))
                .map(|instance| {
                    let state = MemberState {
                        status: instance.status.clone(),
                        interfaces: instance.interfaces.clone(),
                    };
                    let binding =
                        address::bind(instance, networks, wanted.as_deref(), self.host_subnet);
                    (instance.name.as_str(), (state, binding))
                })
                .collect();
            let gone: Vec<String> = group
                .members
                .keys()
                .filter(|name| !selected.contains_key(name.as_str()))
                .cloned()
                .collect();
            for name in gone {
                tracing::info!(group = %group.config.name, container = %name, "container left the group (deleted, renamed or reconfigured)");
                group.members.remove(&name);
                group.tasks.remove(&name);
            }
            for (name, (state, binding)) in selected {
                if !group.members.contains_key(name) {
                    tracing::info!(group = %group.config.name, container = %name, status = state.status.as_str(), "container joined the group");
                    joined.insert(name.to_owned());
                }
                update_member(group, name, state, Some(binding));
            }
        }
        for name in joined {
            let autoscalers: Vec<&str> = self
                .groups
                .iter()
                .filter(|g| g.policy.is_some() && g.members.contains_key(&name))
                .map(|g| g.config.name.as_str())
                .collect();
            if autoscalers.len() > 1 {
                tracing::warn!(container = %name, groups = ?autoscalers, "container is in more than one autoscaling group: their autoscalers may undo each other's actions");
            }
        }
    }

    /// A full re-read happened: the upstream file is checked against what it should be at the
    /// next step even when nothing changed, which repairs a file someone else edited and
    /// retries one nginx rejected (once its main config changed).
    pub fn reconciled(&mut self) {
        if !self.dry_run {
            self.rendered = None;
        }
    }

    /// LXD began (`Some(until)`) or ended (`None`) an operation that takes member `name`
    /// out of Running.
    pub fn set_leaving(&mut self, name: &str, until: Option<Instant>) {
        for group in &mut self.groups {
            if let Some(member) = group.members.get_mut(name) {
                if until.is_some()
                    && member.leaving_until.is_none()
                    && member.state.status == InstanceStatus::Running
                {
                    tracing::info!(group = %group.config.name, container = %name, "LXD is stopping or freezing the container: it leaves the upstream");
                }
                member.leaving_until = until;
            }
        }
    }

    /// One member's new state (from an event); `None` when LXD no longer has it.
    pub fn set_member(&mut self, name: &str, state: Option<MemberState>) {
        for group in &mut self.groups {
            if !group.members.contains_key(name) {
                continue;
            }
            match &state {
                Some(state) => update_member(group, name, state.clone(), None),
                None => {
                    tracing::info!(group = %group.config.name, container = %name, "container vanished");
                    group.members.remove(name);
                    group.tasks.remove(name);
                }
            }
        }
    }

    /// Feeds each autoscaling group's policy and starts what it decides.
    pub fn observe_load(&mut self, now: Instant, load: &Load) {
        if !self.lxd_available {
            return;
        }
        let at = now.saturating_duration_since(self.origin);
        for group in &mut self.groups {
            let Some(policy) = &mut group.policy else {
                continue;
            };
            // The policy counts on its last decision being carried out (or given up) first.
            if !group.tasks.is_empty() {
                continue;
            }
            let (running, frozen, stopped) = counts(&group.members);
            let cpu: Vec<f64> = group
                .members
                .iter()
                .filter(|(_, m)| m.state.status == InstanceStatus::Running)
                .filter_map(|(name, _)| load.cpu_percent.get(name).copied())
                .collect();
            let cpu_percent_avg = match cpu.len() {
                0 => f64::NAN,
                n => cpu.iter().sum::<f64>() / n as f64,
            };
            let port = group.config.port;
            let requests = load
                .requests_per_s
                .as_ref()
                .filter(|_| running > 0)
                .map(|rates| {
                    let total: f64 = group
                        .members
                        .values()
                        .filter(|m| m.state.status == InstanceStatus::Running)
                        .filter_map(|m| m.ipv4)
                        .filter_map(|ip| rates.get(&SocketAddrV4::new(ip, port)))
                        .sum();
                    total / f64::from(running)
                });
            let observation = Observation {
                at,
                running,
                frozen,
                stopped,
                cpu_percent_avg,
                requests_per_s_per_container: requests,
                complete: load.complete,
            };
            let decision = policy.observe(observation);
            let name = &group.config.name;
            let inputs = format!(
                "running {running}, frozen {frozen}, stopped {stopped}, cpu now {cpu_percent_avg:.1}%"
            );
            let down_action = policy.config().scale_down_action;
            let (tasks, verb): (Vec<(String, Task)>, _) = match &decision {
                Decision::Hold { reason } => {
                    tracing::debug!(group = %name, %inputs, "autoscaler holds: {reason}");
                    continue;
                }
                Decision::ScaleUp { by, .. } => (
                    pick_up(group, *by)
                        .into_iter()
                        .map(|(member, action)| (member, Task::Pending(action)))
                        .collect(),
                    "scale up",
                ),
                Decision::ScaleDown { by, .. } => (
                    pick_down(group, *by)
                        .into_iter()
                        .map(|member| {
                            let task = Task::Drain {
                                action: down_action,
                                deadline: now + group.config.drain_timeout,
                                confirmed: None,
                            };
                            (member, task)
                        })
                        .collect(),
                    "scale down",
                ),
            };
            let names: Vec<String> = tasks.iter().map(|(n, _)| n.clone()).collect();
            group.last_containers = names.clone();
            if self.dry_run {
                tracing::info!(group = %name, %inputs, containers = ?names, "dry run: would {verb}: {}", decision.reason());
                continue;
            }
            tracing::info!(group = %name, %inputs, containers = ?names, "{verb}: {}", decision.reason());
            for (member, task) in tasks {
                if let Task::Pending(action) = task {
                    self.outbox.push(Request {
                        name: member.clone(),
                        action,
                    });
                }
                group.tasks.insert(member, task);
            }
        }
    }

    /// LXD's answer to a [`Request`], with the member's state after it when LXD told.
    pub fn action_done(
        &mut self,
        name: &str,
        action: StateAction,
        result: Result<(), String>,
        state: Option<MemberState>,
    ) {
        for group in &mut self.groups {
            if group.tasks.get(name) != Some(&Task::Pending(action)) {
                continue;
            }
            group.tasks.remove(name);
            match &result {
                Ok(()) => {
                    tracing::info!(group = %group.config.name, container = %name, action = ?action, "LXD carried out the action")
                }
                Err(error) => {
                    tracing::warn!(group = %group.config.name, container = %name, action = ?action, %error, "LXD failed the action; the autoscaler decides again from the new state")
                }
            }
            if let Some(state) = &state {
                update_member(group, name, state.clone(), None);
            }
        }
    }

    /// Admits members that answer, brings the upstream file up to date, moves drains on;
    /// returns the LXD actions to carry out now.
    pub fn step(&mut self, now: Instant, io: &mut Io) -> Vec<Request> {
        for member in self.groups.iter_mut().flat_map(|g| g.members.values_mut()) {
            if member.leaving_until.is_some_and(|until| until <= now) {
                member.leaving_until = None;
            }
        }
        self.admit(io.backends);
        if self.lxd_available {
            self.render_and_apply(io.balancer);
        }
        self.advance_drains(now, io);
        std::mem::take(&mut self.outbox)
    }

    fn admit(&mut self, backends: &dyn Backends) {
        for group in &mut self.groups {
            let port = group.config.port;
            for (name, member) in &mut group.members {
                if member.admitted || member.state.status != InstanceStatus::Running {
                    continue;
                }
                let Some(ip) = member.ipv4 else {
                    continue;
                };
                let address = SocketAddrV4::new(ip, port);
                if backends.answers(address) {
                    member.admitted = true;
                    tracing::info!(group = %group.config.name, container = %name, %address, "container answers: it joins the upstream");
                    continue;
                }
                member.tries = member.tries.saturating_add(1);
                if !member.waiting_logged {
                    member.waiting_logged = true;
                    tracing::info!(group = %group.config.name, container = %name, %address, "container runs but does not answer on its port yet: kept out of the upstream");
                } else if member.tries == PATIENCE {
                    tracing::warn!(group = %group.config.name, container = %name, %address, "container still does not answer on its port: tried again at each full re-read only");
                }
            }
        }
    }

    /// Each group's upstream as it should be now.
    fn desired(&self) -> BTreeMap<String, Vec<SocketAddr>> {
        self.groups
            .iter()
            .map(|group| {
                let servers = group
                    .members
                    .iter()
                    .filter(|(name, m)| {
                        m.admitted
                            && m.state.status == InstanceStatus::Running
                            && m.leaving_until.is_none()
                            && !leaving(group.tasks.get(*name))
                    })
                    .filter_map(|(_, m)| m.ipv4)
                    .map(|ip| SocketAddr::from((ip, group.config.port)))
                    .collect();
                (group.config.upstream_name().to_owned(), servers)
            })
            .collect()
    }

    fn render_and_apply(&mut self, balancer: &mut dyn Balancer) {
        let desired = self.desired();
        let upstreams: Vec<Upstream> = self
            .groups
            .iter()
            .map(|g| Upstream {
                name: g.config.upstream_name().to_owned(),
                servers: desired[g.config.upstream_name()].clone(),
            })
            .collect();
        let content = match upstream::render(&upstreams, self.fallback_port) {
            Ok(content) => content,
            Err(error) => {
                // Names were validated with the config; this is a bug, not an input.
                tracing::error!(%error, "cannot render the upstream file");
                return;
            }
        };
        if self.rendered.as_ref() == Some(&content) {
            return;
        }
        if self.dry_run {
            tracing::info!(upstreams = %summary(&desired), "dry run: would write the upstream file and reload nginx");
            self.rendered = Some(content);
            return;
        }
        let applied = balancer.apply(&content);
        self.rendered = Some(content);
        match applied {
            Ok(Applied::StillFailing) => {}
            Ok(applied) => {
                if applied == Applied::Reloaded {
                    tracing::info!(upstreams = %summary(&desired), "upstream file written, nginx reloaded");
                }
                if let Some(error) = self.upstream_error.take() {
                    tracing::info!(previous_error = %error, "nginx takes the upstream file again");
                }
                self.serving = Some(desired);
            }
            Err(error) => {
                tracing::error!(%error, upstreams = %summary(&desired), "nginx keeps serving the previous upstreams");
                self.upstream_error = Some(error.to_string());
            }
        }
    }

    fn advance_drains(&mut self, now: Instant, io: &mut Io) {
        for group in &mut self.groups {
            let upstream_name = group.config.upstream_name().to_owned();
            let mut finished = Vec::new();
            for (name, task) in &mut group.tasks {
                let Task::Drain {
                    action,
                    deadline,
                    confirmed,
                } = task
                else {
                    continue;
                };
                let Some(member) = group.members.get(name) else {
                    continue;
                };
                if member.state.status != InstanceStatus::Running {
                    tracing::info!(group = %group.config.name, container = %name, status = member.state.status.as_str(), "container left Running while draining: nothing to put away");
                    finished.push((name.clone(), None));
                    continue;
                }
                let address = member
                    .ipv4
                    .map(|ip| SocketAddrV4::new(ip, group.config.port));
                let out_of_nginx = self.serving.as_ref().is_some_and(|serving| {
                    address.is_none_or(|a| {
                        !serving
                            .get(&upstream_name)
                            .is_some_and(|servers| servers.contains(&SocketAddr::V4(a)))
                    })
                });
                if confirmed.is_none() && out_of_nginx {
                    *confirmed = Some((now, io.balancer.retiring_workers()));
                }
                let Some((confirmed_at, retiring)) = confirmed else {
                    if now >= *deadline {
                        tracing::error!(group = %group.config.name, container = %name, "nginx still has the container in its upstream at the drain timeout: scale-down abandoned, the container keeps serving");
                        finished.push((name.clone(), None));
                    }
                    continue;
                };
                // Either is enough: no worker that knew the member is left, or none of them
                // has a connection to it.
                let workers_gone = io.balancer.retiring_workers().is_disjoint(retiring);
                let connections =
                    address.and_then(|a| io.probe.active_connections(a, *confirmed_at + SETTLE));
                if workers_gone || connections == Some(0) || now >= *deadline {
                    let why = match (workers_gone, connections) {
                        (true, _) => "the nginx workers that knew it have exited".to_owned(),
                        (false, Some(0)) => {
                            "the kernel counts no connection from nginx to it".to_owned()
                        }
                        (false, Some(count)) => {
                            format!("drain timeout with {count} connections left")
                        }
                        (false, None) => "drain timeout".to_owned(),
                    };
                    let request = match action {
                        DownAction::Freeze => StateAction::Freeze,
                        DownAction::Stop => StateAction::Stop { force: false },
                    };
                    tracing::info!(group = %group.config.name, container = %name, action = ?request, "drained ({why}): putting the container away");
                    finished.push((name.clone(), Some(request)));
                }
            }
            for (name, request) in finished {
                match request {
                    Some(action) => {
                        group.tasks.insert(name.clone(), Task::Pending(action));
                        self.outbox.push(Request { name, action });
                    }
                    None => {
                        group.tasks.remove(&name);
                    }
                }
            }
        }
    }

    /// The groups for the snapshot.
    pub fn groups(&self, now: Instant) -> Vec<model::Group> {
        let desired = self.desired();
        let wall = |d: Duration| model::rfc3339(self.origin_wall + d);
        let at = now.saturating_duration_since(self.origin);
        self.groups
            .iter()
            .map(|group| {
                let autoscaler = group.policy.as_ref().map(|policy| {
                    let state = policy.state(at);
                    let config = policy.config();
                    let task_state = group.tasks.values().fold("steady", |_, task| match task {
                        Task::Drain { .. } => "draining",
                        Task::Pending(StateAction::Freeze | StateAction::Stop { .. }) => {
                            "scaling_down"
                        }
                        Task::Pending(_) => "scaling_up",
                    });
                    model::Autoscaler {
                        dry_run: self.dry_run,
                        state: if self.lxd_available {
                            task_state
                        } else {
                            "lxd_unavailable"
                        }
                        .to_owned(),
                        min: config.min,
                        max: config.max,
                        cpu_percent_avg: state.cpu_percent_avg.map(round2),
                        requests_per_s_avg: state.requests_per_s_avg.map(round2),
                        window_filled_s: round2(state.window_filled.as_secs_f64()),
                        last_action: state.last_action.map(|action| model::ScaleAction {
                            at: wall(action.at),
                            direction: match action.direction {
                                Direction::Up => "up",
                                Direction::Down => "down",
                            }
                            .to_owned(),
                            from: action.from,
                            to: action.to,
                            containers: group.last_containers.clone(),
                            reason: action.reason,
                        }),
                        next_scale_up_at: state.next_up_at.map(wall),
                        next_scale_down_at: state.next_down_at.map(wall),
                        reason: state.reason,
                    }
                });
                let (running, frozen, stopped) = counts(&group.members);
                model::Group {
                    name: group.config.name.clone(),
                    upstream: group.config.upstream_name().to_owned(),
                    port: group.config.port,
                    servers: desired[group.config.upstream_name()]
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    running,
                    frozen,
                    stopped,
                    upstream_error: self.upstream_error.clone(),
                    autoscaler,
                }
            })
            .collect()
    }
}

/// Whether a member with this task must be out of the upstream.
fn leaving(task: Option<&Task>) -> bool {
    matches!(
        task,
        Some(Task::Drain { .. } | Task::Pending(StateAction::Freeze | StateAction::Stop { .. }))
    )
}

impl Member {
    /// Runs, does not serve, and is still looked at on the short poll.
    fn waiting(&self) -> bool {
        self.state.status == InstanceStatus::Running && !self.admitted && self.tries < PATIENCE
    }
}

/// A member's new state; `binding` is its NIC from a full read, `None` to keep the one it has.
fn update_member(
    group: &mut Group,
    name: &str,
    state: MemberState,
    binding: Option<Result<Binding, String>>,
) {
    let new = !group.members.contains_key(name);
    let member = group
        .members
        .entry(name.to_owned())
        .or_insert_with(|| Member {
            state: state.clone(),
            binding: Err(String::new()),
            ipv4: None,
            ignored: Vec::new(),
            admitted: false,
            waiting_logged: false,
            tries: 0,
            leaving_until: None,
        });
    if let Some(binding) = binding
        && binding != member.binding
    {
        if let Err(why) = &binding {
            tracing::warn!(group = %group.config.name, container = %name, "container is not served: {why}");
        }
        member.binding = binding;
    }
    let (ipv4, mut ignored) = match &member.binding {
        Ok(binding) => binding.address(&state.interfaces),
        Err(_) => (None, Vec::new()),
    };
    ignored.sort_unstable();
    if ignored != member.ignored {
        if let (Ok(binding), false) = (&member.binding, ignored.is_empty()) {
            tracing::warn!(group = %group.config.name, container = %name, ?ignored, "container reports addresses that are not on its LXD NIC {}: nginx is never sent there", binding.describe());
        }
        member.ignored = ignored;
    }
    if member.state.status == state.status && member.ipv4 == ipv4 {
        member.state = state;
        if !new && member.waiting() && ipv4.is_none() {
            member.tries += 1;
            if member.tries == PATIENCE {
                tracing::warn!(group = %group.config.name, container = %name, "container runs without an IPv4 address: read again at each full re-read only");
            }
        }
        return;
    }
    if member.admitted || member.ipv4.is_some() || member.state.status != state.status {
        tracing::info!(group = %group.config.name, container = %name, from = member.state.status.as_str(), to = state.status.as_str(), ?ipv4, "container changed");
    }
    // Whatever it was, it has to answer again before it serves again.
    member.admitted = false;
    member.waiting_logged = false;
    member.tries = 0;
    member.state = state;
    member.ipv4 = ipv4;
}

/// Scale-up picks: frozen members first (they come back in milliseconds), then stopped ones.
fn pick_up(group: &Group, by: u32) -> Vec<(String, StateAction)> {
    let with = |status: InstanceStatus, action: StateAction| {
        group
            .members
            .iter()
            .filter(move |(_, m)| m.state.status == status)
            .map(move |(name, _)| (name.clone(), action))
    };
    with(InstanceStatus::Frozen, StateAction::Unfreeze)
        .chain(with(InstanceStatus::Stopped, StateAction::Start))
        .take(by as usize)
        .collect()
}

/// Scale-down picks: running members that do not serve yet first, then the last by name, so
/// that the same members keep serving from one scale-down to the next.
fn pick_down(group: &Group, by: u32) -> Vec<String> {
    let mut running: Vec<(&String, &Member)> = group
        .members
        .iter()
        .filter(|(_, m)| m.state.status == InstanceStatus::Running)
        .collect();
    running.sort_by(|(a, ma), (b, mb)| ma.admitted.cmp(&mb.admitted).then(b.cmp(a)));
    running
        .into_iter()
        .take(by as usize)
        .map(|(name, _)| name.clone())
        .collect()
}

/// `web: 10.0.0.2:80 10.0.0.3:80; api: (none, 503)` for logs.
fn summary(upstreams: &BTreeMap<String, Vec<SocketAddr>>) -> String {
    upstreams
        .iter()
        .map(|(name, servers)| {
            let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
            match servers.is_empty() {
                true => format!("{name}: none (503)"),
                false => format!("{name}: {}", servers.join(" ")),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
