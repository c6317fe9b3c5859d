//! The controller's ordering rules against a fake LXD, a fake nginx and fake backends.
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{
    core::{Backends, Balancer, Core, DrainProbe, Io, Load, MemberState, Request},
    group::{
        GroupConfig,
        tests::{group, instance},
    },
};
use crate::{
    autoscale::{DownAction, PolicyConfig},
    lxd::{Instance, InstanceStatus, Interfaces, Network, StateAction},
    nginx::{Applied, NginxError},
};

/// What happened, in order: nginx took a file, or LXD was asked for an action.
#[derive(Clone, Debug, PartialEq)]
enum Happened {
    Reloaded(String),
    Lxd(String, StateAction),
}

#[derive(Default)]
struct FakeNginx {
    serving: Option<String>,
    reject: bool,
    retiring: BTreeSet<u32>,
    calls: usize,
    log: Vec<Happened>,
}

impl Balancer for FakeNginx {
    fn apply(&mut self, content: &str) -> Result<Applied, NginxError> {
        self.calls += 1;
        if self.serving.as_deref() == Some(content) {
            return Ok(Applied::Unchanged);
        }
        if self.reject {
            return Err(NginxError::Rejected {
                message: "unknown directive \"oops\"".into(),
            });
        }
        self.serving = Some(content.to_owned());
        self.retiring = BTreeSet::from([101, 102]);
        self.log.push(Happened::Reloaded(content.to_owned()));
        Ok(Applied::Reloaded)
    }

    fn retiring_workers(&self) -> BTreeSet<u32> {
        self.retiring.clone()
    }
}

#[derive(Default)]
struct FakeBackends(RefCell<BTreeSet<Ipv4Addr>>);

impl Backends for FakeBackends {
    fn answers(&self, address: SocketAddrV4) -> bool {
        self.0.borrow().contains(address.ip())
    }
}

#[derive(Default)]
/// A count of nginx's connections and when it was taken.
struct FakeProbe(RefCell<Option<(Instant, u64)>>);

impl DrainProbe for FakeProbe {
    fn active_connections(&self, _: SocketAddrV4, since: Instant) -> Option<u64> {
        let count = *self.0.borrow();
        count.filter(|(at, _)| *at >= since).map(|(_, n)| n)
    }
}

/// A core with its fakes and a fake LXD that carries out requests when told.
struct Rig {
    core: Core,
    nginx: FakeNginx,
    backends: FakeBackends,
    probe: FakeProbe,
    instances: Vec<Instance>,
    /// Requests LXD has not carried out yet.
    requested: Vec<Request>,
    start: Instant,
    now: Instant,
}

/// What LXD reports of a member: its status and address.
fn reported(status: InstanceStatus, ipv4: Option<Ipv4Addr>) -> Option<MemberState> {
    Some(MemberState {
        status,
        interfaces: on_eth0(ipv4),
    })
}

/// What an instance reports with `ipv4` on its `eth0`.
fn on_eth0(ipv4: Option<Ipv4Addr>) -> Interfaces {
    ipv4.map(|ip| ("eth0".to_owned(), vec![ip]))
        .into_iter()
        .collect()
}

/// The members' network: every test instance has its `eth0` there.
fn networks() -> Vec<Network> {
    vec![Network {
        name: "lxdbr0".into(),
        managed: true,
        ipv4: Some((ip(1), 24)),
    }]
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

impl Rig {
    /// Group `web` (pattern `web-*`, port 80) with `members`: (name, status); running ones
    /// answer.
    fn new(config: GroupConfig, members: &[(&str, InstanceStatus)], dry_run: bool) -> Self {
        let start = Instant::now();
        let mut rig = Self {
            core: Core::new(vec![config], 9099, dry_run, start),
            nginx: FakeNginx::default(),
            backends: FakeBackends::default(),
            probe: FakeProbe::default(),
            instances: Vec::new(),
            requested: Vec::new(),
            start,
            now: start,
        };
        for (n, (name, status)) in members.iter().enumerate() {
            let mut instance = instance(name, &["default"]);
            instance.status = status.clone();
            let address = ip(n as u8 + 2);
            if *status == InstanceStatus::Running {
                instance.ipv4 = vec![address];
                instance.interfaces = on_eth0(Some(address));
            }
            rig.backends.0.borrow_mut().insert(address);
            rig.instances.push(instance);
        }
        rig.core.set_instances(&rig.instances, &networks());
        rig.step();
        rig
    }

    fn step(&mut self) {
        let requests = self.core.step(
            self.now,
            &mut Io {
                balancer: &mut self.nginx,
                backends: &self.backends,
                probe: &self.probe,
            },
        );
        for request in &requests {
            self.nginx
                .log
                .push(Happened::Lxd(request.name.clone(), request.action));
        }
        self.requested.extend(requests);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// One snapshot's load: every running member at `cpu` %.
    fn load(&mut self, cpu: f64) {
        let load = Load {
            cpu_percent: self
                .instances
                .iter()
                .map(|i| (i.name.clone(), cpu))
                .collect(),
            requests_per_s: None,
            complete: true,
        };
        self.core.observe_load(self.now, &load);
        self.step();
    }

    /// LXD carries out every request, reporting each member's new state.
    fn lxd_carries_out(&mut self) {
        for Request { name, action } in std::mem::take(&mut self.requested) {
            let index = self
                .instances
                .iter()
                .position(|i| i.name == name)
                .expect("known");
            let address = ip(index as u8 + 2);
            let instance = &mut self.instances[index];
            instance.status = match action {
                StateAction::Freeze => InstanceStatus::Frozen,
                StateAction::Stop { .. } => InstanceStatus::Stopped,
                _ => InstanceStatus::Running,
            };
            instance.ipv4 = match instance.status {
                InstanceStatus::Stopped => vec![],
                _ => vec![address],
            };
            instance.interfaces = on_eth0(instance.ipv4.first().copied());
            let state = MemberState {
                status: instance.status.clone(),
                interfaces: instance.interfaces.clone(),
            };
            self.core.action_done(&name, action, Ok(()), Some(state));
        }
        self.step();
    }

    /// The servers of upstream `web` in the file nginx serves.
    fn serving(&self) -> Vec<String> {
        servers(self.nginx.serving.as_deref().unwrap_or_default())
    }

    fn status(&self, name: &str) -> InstanceStatus {
        let found = self.instances.iter().find(|i| i.name == name);
        found.expect("known").status.clone()
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }
}

/// `server` lines of upstream `web`, without the fallback.
fn servers(content: &str) -> Vec<String> {
    content
        .split("upstream web {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter(|s| !s.starts_with("127.0.0.1:"))
        .map(|s| s.trim_end_matches(';').to_owned())
        .collect()
}

/// min 1, max 3, 2 s window, cpu 20..60, no cooldowns, steps of `step`.
fn autoscaled(step: u32, action: DownAction) -> GroupConfig {
    GroupConfig {
        autoscale: Some(PolicyConfig {
            min: 1,
            max: 3,
            window: Duration::from_secs(2),
            scale_up_cpu_percent: 60.0,
            scale_down_cpu_percent: 20.0,
            scale_up_cooldown: Duration::ZERO,
            scale_down_cooldown: Duration::ZERO,
            scale_up_step: step,
            scale_down_step: step,
            scale_down_action: action,
            ..PolicyConfig::default()
        }),
        drain_timeout: Duration::from_secs(10),
        ..group("web")
    }
}

/// Feeds `cpu` every second until the autoscaler acts (a drain or an LXD request) or `limit`
/// passes.
fn load_until_action(rig: &mut Rig, cpu: f64, limit: Duration) {
    let until = rig.elapsed() + limit;
    while rig.requested.is_empty() && state(rig) == "steady" && rig.elapsed() < until {
        rig.advance(Duration::from_secs(1));
        rig.load(cpu);
    }
}

fn state(rig: &Rig) -> String {
    let groups = rig.core.groups(rig.now);
    let autoscaler = groups[0].autoscaler.as_ref().expect("autoscaled");
    autoscaler.state.clone()
}

use InstanceStatus::{Frozen, Running, Stopped};

#[test]
fn a_member_joins_only_once_running_and_answering() {
    let mut rig = Rig::new(
        group("web"),
        &[("web-1", Running), ("web-2", Stopped)],
        false,
    );
    assert_eq!(rig.serving(), ["10.0.0.2:80"]);
    // web-2 starts, but its service is not up yet.
    rig.backends.0.borrow_mut().remove(&ip(3));
    rig.core.set_member("web-2", reported(Running, Some(ip(3))));
    rig.step();
    assert_eq!(rig.serving(), ["10.0.0.2:80"], "not answering: kept out");
    assert!(rig.core.busy(), "looks again soon");
    for _ in 0..10 {
        rig.step();
    }
    assert!(rig.core.busy(), "still looked at on the short poll");
    rig.backends.0.borrow_mut().insert(ip(3));
    rig.step();
    assert_eq!(rig.serving(), ["10.0.0.2:80", "10.0.0.3:80"]);
    assert!(!rig.core.busy());
    // Stopped and frozen members leave at once.
    rig.core.set_member("web-1", reported(Frozen, Some(ip(2))));
    rig.core.set_member("web-2", None);
    rig.step();
    assert_eq!(rig.serving(), Vec::<String>::new(), "empty: 503 fallback");
    let content = rig.nginx.serving.clone().expect("a file");
    assert!(content.contains("server 127.0.0.1:9099;"), "{content}");
}

#[test]
fn a_member_is_served_on_its_lxd_nic_only_whatever_else_it_reports() {
    let mut rig = Rig::new(group("web"), &[("web-1", Running)], false);
    assert_eq!(rig.serving(), ["10.0.0.2:80"]);
    // The container's root adds an interface that sorts before eth0, with the bridge's own
    // address and an outside one; both would answer.
    let outside = Ipv4Addr::new(192, 0, 2, 7);
    rig.backends.0.borrow_mut().extend([ip(1), outside]);
    let mut interfaces = on_eth0(Some(ip(2)));
    interfaces.insert("docker0".into(), vec![ip(1), outside]);
    let web = &mut rig.instances[0];
    web.ipv4 = vec![ip(1), outside, ip(2)];
    web.interfaces = interfaces.clone();
    rig.core.set_instances(&rig.instances, &networks());
    rig.core.reconciled();
    rig.step();
    assert_eq!(rig.serving(), ["10.0.0.2:80"], "a full re-read");
    let state = MemberState {
        status: Running,
        interfaces: interfaces.clone(),
    };
    rig.core.set_member("web-1", Some(state));
    rig.step();
    assert_eq!(rig.serving(), ["10.0.0.2:80"], "an event's re-read");
    // Only those addresses left: not served at all.
    interfaces.remove("eth0");
    let state = MemberState {
        status: Running,
        interfaces,
    };
    rig.core.set_member("web-1", Some(state));
    rig.step();
    assert_eq!(rig.serving(), Vec::<String>::new());
}

#[test]
fn the_same_content_is_not_handed_to_nginx_again_until_a_reconcile() {
    let mut rig = Rig::new(group("web"), &[("web-1", Running)], false);
    let calls = rig.nginx.calls;
    for _ in 0..5 {
        rig.step();
    }
    assert_eq!(
        rig.nginx.calls, calls,
        "nothing changed: nginx not bothered"
    );
    rig.core.reconciled();
    rig.step();
    assert_eq!(rig.nginx.calls, calls + 1, "checked after a full re-read");
    assert_eq!(
        rig.nginx
            .log
            .iter()
            .filter(|h| matches!(h, Happened::Reloaded(_)))
            .count(),
        1,
        "and reloaded once only"
    );
}

#[test]
fn scale_down_takes_the_member_out_and_waits_for_old_workers_before_freezing() {
    let members = [("web-1", Running), ("web-2", Running), ("web-3", Running)];
    let mut rig = Rig::new(autoscaled(1, DownAction::Freeze), &members, false);
    assert_eq!(rig.serving().len(), 3);
    load_until_action(&mut rig, 1.0, Duration::from_secs(10));
    // The drain started: web-3 (last by name) is out of nginx, but not frozen yet, while the
    // workers retired by that reload still run.
    assert!(rig.requested.is_empty(), "{:?}", rig.requested);
    assert_eq!(rig.serving(), ["10.0.0.2:80", "10.0.0.3:80"]);
    for _ in 0..3 {
        rig.advance(Duration::from_millis(100));
        rig.step();
    }
    assert!(rig.requested.is_empty(), "old workers still run");
    rig.nginx.retiring.clear();
    rig.step();
    assert_eq!(
        rig.requested,
        [Request {
            name: "web-3".into(),
            action: StateAction::Freeze
        }]
    );
    let reload = rig
        .nginx
        .log
        .iter()
        .position(|h| matches!(h, Happened::Reloaded(c) if !c.contains("10.0.0.4:80")))
        .expect("a reload without web-3");
    let freeze = rig
        .nginx
        .log
        .iter()
        .position(|h| *h == Happened::Lxd("web-3".into(), StateAction::Freeze))
        .expect("web-3 frozen");
    assert!(
        reload < freeze,
        "out of nginx before frozen: {:?}",
        rig.nginx.log
    );
    rig.lxd_carries_out();
    assert_eq!(rig.status("web-3"), Frozen);
    assert_eq!(rig.serving(), ["10.0.0.2:80", "10.0.0.3:80"]);
}

#[test]
fn a_drain_ends_when_the_kernel_counts_no_connection_while_old_workers_still_run() {
    let members = [("web-1", Running), ("web-2", Running)];
    let mut rig = Rig::new(autoscaled(1, DownAction::Stop), &members, false);
    load_until_action(&mut rig, 1.0, Duration::from_secs(10));
    let confirmed = rig.now;
    // The retired workers still run (serving other backends); the kernel's count decides.
    *rig.probe.0.borrow_mut() = Some((confirmed + Duration::from_secs(1), 2));
    rig.advance(Duration::from_secs(1));
    rig.step();
    assert!(rig.requested.is_empty(), "2 connections left");
    // A zero counted too soon after the reload does not count: an old worker may still
    // accept a client and send it there.
    *rig.probe.0.borrow_mut() = Some((confirmed + Duration::from_millis(100), 0));
    rig.step();
    assert!(
        rig.requested.is_empty(),
        "a zero from before the settle time"
    );
    *rig.probe.0.borrow_mut() = Some((confirmed + Duration::from_secs(1), 0));
    rig.step();
    assert_eq!(
        rig.requested,
        [Request {
            name: "web-2".into(),
            action: StateAction::Stop { force: false }
        }]
    );
    rig.lxd_carries_out();
    assert_eq!(rig.status("web-2"), Stopped);

    // A connection that never ends: the drain timeout (10 s) puts it away anyway.
    let members = [("web-1", Running), ("web-2", Running)];
    let mut rig = Rig::new(autoscaled(1, DownAction::Freeze), &members, false);
    load_until_action(&mut rig, 1.0, Duration::from_secs(10));
    let drain_started = rig.now;
    while rig.requested.is_empty() {
        rig.advance(Duration::from_millis(500));
        *rig.probe.0.borrow_mut() = Some((rig.now, 1));
        rig.step();
        assert!(
            rig.now - drain_started <= Duration::from_secs(11),
            "no timeout"
        );
    }
    assert!(
        rig.now - drain_started >= Duration::from_secs(10),
        "not before"
    );
}

#[test]
fn a_member_nginx_cannot_be_made_to_drop_is_never_put_away() {
    let members = [("web-1", Running), ("web-2", Running)];
    let mut rig = Rig::new(autoscaled(1, DownAction::Freeze), &members, false);
    rig.nginx.reject = true;
    load_until_action(&mut rig, 1.0, Duration::from_secs(10));
    assert_eq!(state(&rig), "draining");
    let groups = rig.core.groups(rig.now);
    assert!(
        groups[0]
            .upstream_error
            .as_deref()
            .is_some_and(|e| e.contains("unknown directive \"oops\"")),
        "{groups:?}"
    );
    for _ in 0..30 {
        rig.advance(Duration::from_millis(500));
        rig.step();
    }
    assert!(rig.requested.is_empty(), "{:?}", rig.requested);
    assert_eq!(rig.status("web-2"), Running);
    assert_eq!(
        rig.serving(),
        ["10.0.0.2:80", "10.0.0.3:80"],
        "nginx unchanged"
    );
    assert_eq!(state(&rig), "steady", "the drain was given up");
    let groups = rig.core.groups(rig.now);
    assert_eq!(
        groups[0].upstream_error, None,
        "nginx serves what Lynx renders again: the same servers as before"
    );
}

#[test]
fn scale_up_unfreezes_first_then_starts_and_serves_only_once_running() {
    let members = [("web-1", Running), ("web-2", Stopped), ("web-3", Frozen)];
    let mut rig = Rig::new(autoscaled(2, DownAction::Freeze), &members, false);
    load_until_action(&mut rig, 90.0, Duration::from_secs(10));
    assert_eq!(
        rig.requested,
        [
            Request {
                name: "web-3".into(),
                action: StateAction::Unfreeze
            },
            Request {
                name: "web-2".into(),
                action: StateAction::Start
            },
        ]
    );
    assert_eq!(
        rig.serving(),
        ["10.0.0.2:80"],
        "not running yet: not served"
    );
    let groups = rig.core.groups(rig.now);
    let autoscaler = groups[0].autoscaler.as_ref().expect("autoscaled");
    assert_eq!(autoscaler.state, "scaling_up");
    let action = autoscaler.last_action.as_ref().expect("an action");
    assert_eq!((action.from, action.to), (1, 3));
    assert_eq!(action.containers, ["web-3", "web-2"]);
    rig.lxd_carries_out();
    assert_eq!(
        rig.serving(),
        ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"],
        "running and answering: served"
    );
    // At max: more load starts nothing.
    load_until_action(&mut rig, 90.0, Duration::from_secs(10));
    assert!(rig.requested.is_empty());
}

#[test]
fn a_dry_run_decides_but_touches_nothing() {
    let members = [("web-1", Running), ("web-2", Running), ("web-3", Frozen)];
    let mut rig = Rig::new(autoscaled(1, DownAction::Freeze), &members, true);
    load_until_action(&mut rig, 90.0, Duration::from_secs(10));
    load_until_action(&mut rig, 1.0, Duration::from_secs(10));
    assert!(rig.requested.is_empty(), "{:?}", rig.requested);
    assert_eq!(rig.nginx.calls, 0, "nginx never touched");
    let groups = rig.core.groups(rig.now);
    let autoscaler = groups[0].autoscaler.as_ref().expect("autoscaled");
    assert!(autoscaler.dry_run);
    let action = autoscaler.last_action.as_ref().expect("decided");
    assert_eq!(action.direction, "down", "{action:?}");
    assert_eq!(
        groups[0].servers,
        ["10.0.0.2:80", "10.0.0.3:80"],
        "would serve"
    );
}

#[test]
fn without_lxd_the_upstreams_stay_and_nothing_is_decided() {
    let members = [("web-1", Running), ("web-2", Running)];
    let mut rig = Rig::new(autoscaled(1, DownAction::Freeze), &members, false);
    let calls = rig.nginx.calls;
    rig.core.set_lxd_available(false);
    rig.core.reconciled();
    for _ in 0..10 {
        rig.advance(Duration::from_secs(1));
        rig.load(1.0);
    }
    assert!(rig.requested.is_empty());
    assert_eq!(rig.nginx.calls, calls, "file left alone");
    assert_eq!(state(&rig), "lxd_unavailable");
}

#[test]
fn a_member_lxd_begins_to_stop_leaves_at_once_and_returns_only_after() {
    let mut rig = Rig::new(
        group("web"),
        &[("web-1", Running), ("web-2", Running)],
        false,
    );
    assert_eq!(rig.serving().len(), 2);
    rig.core
        .set_leaving("web-2", Some(rig.now + Duration::from_secs(60)));
    assert!(rig.core.is_leaving("web-2"));
    rig.step();
    assert_eq!(
        rig.serving(),
        ["10.0.0.2:80"],
        "out before it stops answering"
    );
    // LXD shows a container it shuts down running for a moment: it stays out.
    rig.core.set_member("web-2", reported(Running, None));
    rig.core.set_member("web-2", reported(Running, Some(ip(3))));
    rig.step();
    assert_eq!(rig.serving(), ["10.0.0.2:80"]);
    // The stop failed: the operation ended and it still runs and answers, so it returns.
    rig.core.set_leaving("web-2", None);
    rig.step();
    assert_eq!(rig.serving(), ["10.0.0.2:80", "10.0.0.3:80"]);
    // An operation whose end never comes: out for its time only.
    rig.core
        .set_leaving("web-1", Some(rig.now + Duration::from_secs(60)));
    rig.step();
    assert_eq!(rig.serving(), ["10.0.0.3:80"]);
    rig.advance(Duration::from_secs(61));
    rig.step();
    assert_eq!(rig.serving(), ["10.0.0.2:80", "10.0.0.3:80"]);
}

#[test]
fn a_member_that_never_answers_or_never_gets_an_address_is_not_polled_for_ever() {
    let mut rig = Rig::new(
        group("web"),
        &[("web-1", Running), ("web-2", Running)],
        false,
    );
    rig.backends.0.borrow_mut().clear();
    let no_address = reported(Running, None).expect("a state");
    rig.core.set_member("web-1", Some(no_address.clone()));
    rig.core.set_member("web-2", reported(Stopped, None));
    rig.core.set_member("web-2", reported(Running, Some(ip(3))));
    assert!(rig.core.busy());
    assert_eq!(rig.core.awaiting_address().collect::<Vec<_>>(), ["web-1"]);
    for _ in 0..700 {
        rig.core.set_member("web-1", Some(no_address.clone()));
        rig.step();
    }
    assert!(!rig.core.busy(), "left to the full re-reads");
    assert_eq!(rig.core.awaiting_address().count(), 0);
    // A change makes it worth looking at again.
    rig.backends.0.borrow_mut().insert(ip(2));
    rig.core.set_member("web-1", reported(Running, Some(ip(2))));
    rig.step();
    assert_eq!(rig.serving(), ["10.0.0.2:80"]);
}

#[test]
fn events_are_read_by_instance_and_what_they_mean() {
    use super::{changes_membership, instance_name, leaves_running, takes_out_of_running};
    assert_eq!(
        instance_name("/1.0/instances/web-1").as_deref(),
        Some("web-1")
    );
    assert_eq!(
        instance_name("/1.0/instances/web-1?project=default").as_deref(),
        Some("web-1")
    );
    assert_eq!(
        instance_name("/1.0/instances/web-1/snapshots/s0").as_deref(),
        Some("web-1")
    );
    assert_eq!(instance_name("/1.0/images/abc"), None);
    assert!(takes_out_of_running("Stopping instance"));
    assert!(takes_out_of_running("Freezing instance"));
    assert!(!takes_out_of_running("Unfreezing instance"));
    assert!(!takes_out_of_running("Executing command"));
    assert!(leaves_running("instance-shutdown") && !leaves_running("instance-started"));
    assert!(changes_membership("instance-created") && changes_membership("instance-updated"));
    assert!(
        !changes_membership("instance-exec"),
        "lxc exec changes nothing"
    );
}

#[test]
fn requests_per_second_from_nginx_scale_a_group_up() {
    let members = [("web-1", Running), ("web-2", Frozen)];
    let mut config = autoscaled(1, DownAction::Freeze);
    let policy = config.autoscale.as_mut().expect("autoscaled");
    // CPU alone never scales: only the requests can.
    (policy.scale_down_cpu_percent, policy.scale_up_cpu_percent) = (0.0, 1000.0);
    (
        policy.scale_down_requests_per_s,
        policy.scale_up_requests_per_s,
    ) = (Some(10.0), Some(100.0));
    let mut rig = Rig::new(config, &members, false);
    let until = rig.elapsed() + Duration::from_secs(10);
    while rig.requested.is_empty() && rig.elapsed() < until {
        rig.advance(Duration::from_secs(1));
        let load = Load {
            cpu_percent: BTreeMap::from([("web-1".to_owned(), 50.0)]),
            requests_per_s: Some(BTreeMap::from([
                (SocketAddrV4::new(ip(2), 80), 250.0),
                // Another backend on the same address but another port is not the group's.
                (SocketAddrV4::new(ip(2), 8080), 10_000.0),
            ])),
            complete: true,
        };
        rig.core.observe_load(rig.now, &load);
        rig.step();
    }
    assert_eq!(
        rig.requested,
        [Request {
            name: "web-2".into(),
            action: StateAction::Unfreeze
        }]
    );
    let groups = rig.core.groups(rig.now);
    let autoscaler = groups[0].autoscaler.as_ref().expect("autoscaled");
    let reason = &autoscaler.last_action.as_ref().expect("an action").reason;
    assert!(
        reason.contains("requests 250.0/s per container"),
        "{reason}"
    );
}

/// nginx counted with these upstream endpoints, and these drops.
fn counted(
    master: u32,
    upstreams: Vec<crate::model::NginxEndpoint>,
    drops: u64,
) -> crate::model::Snapshot {
    let mut snapshot = crate::model::fixtures::snapshot("2026-11-22T04:22:02Z", vec![]);
    snapshot.nginx.master_pid = Some(master);
    snapshot.nginx.upstreams = upstreams;
    snapshot.kernel_drops.nginx_flows_full = drops;
    snapshot
}

#[test]
fn a_backend_without_a_counter_or_with_unfollowed_connections_has_unknown_connections() {
    use super::{
        DrainProbe,
        counts::{Counts, KernelCounts},
    };
    use crate::model::fixtures::upstream;
    let probe = KernelCounts::default();
    let feed = |snapshot: &crate::model::Snapshot| {
        let backends = snapshot
            .nginx
            .upstreams
            .iter()
            .map(|e| {
                let ip: Ipv4Addr = e
                    .address
                    .as_deref()
                    .expect("an address")
                    .parse()
                    .expect("IPv4");
                (SocketAddrV4::new(ip, e.port), e)
            })
            .collect();
        let mut counts = probe.0.lock().expect("counts");
        Counts::update(&mut counts, Instant::now(), snapshot, Some(&backends))
    };
    // nginx's "master" with a "worker": a shell waiting for a sleep it started.
    let mut master = std::process::Command::new("sh")
        .args(["-c", "sleep 3600 & wait"])
        .spawn()
        .expect("start a shell");
    let pid = master.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let worker = loop {
        if let Some(&worker) = crate::nginx::children(pid).iter().next() {
            break worker;
        }
        assert!(Instant::now() < deadline, "the shell started no sleep");
        thread::sleep(Duration::from_millis(10));
    };
    let (counted_0, uncounted) = (SocketAddrV4::new(ip(2), 80), SocketAddrV4::new(ip(3), 80));
    let since = Instant::now();
    assert!(feed(&counted(
        pid,
        vec![upstream("web-1", "10.0.0.2", 0.0, 0)],
        0
    )));
    assert_eq!(probe.active_connections(counted_0, since), Some(0));
    assert_eq!(
        probe.active_connections(uncounted, since),
        None,
        "no counter slot: unknown, not zero"
    );
    // A connection went unfollowed: every count is unknown while nginx's processes of that
    // time run, and the load figures are incomplete.
    assert!(!feed(&counted(
        pid,
        vec![upstream("web-1", "10.0.0.2", 0.0, 0)],
        1
    )));
    assert_eq!(probe.active_connections(counted_0, since), None);
    assert!(!feed(&counted(
        pid,
        vec![upstream("web-1", "10.0.0.2", 0.0, 0)],
        1
    )));
    // The worker exits (a reload replaced it); the master stays.
    // SAFETY: kill has no memory-safety preconditions; the pid is this test's grandchild.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::nginx::children(pid).contains(&worker) {
        assert!(Instant::now() < deadline, "the worker did not exit");
        thread::sleep(Duration::from_millis(10));
    }
    assert!(feed(&counted(
        pid,
        vec![upstream("web-1", "10.0.0.2", 0.0, 0)],
        1
    )));
    assert_eq!(probe.active_connections(counted_0, since), Some(0));
    let _ = master.kill();
    let _ = master.wait();
}

/// An address of this host that is not loopback (nginx is never sent to loopback), with an
/// address of its subnet that is not it, as the fake network's own.
fn host_address() -> (Ipv4Addr, Ipv4Addr, u8) {
    let names = fs::read_dir("/sys/class/net").expect("list the host's interfaces");
    names
        .flatten()
        .filter_map(|entry| super::address::host_subnet(&entry.file_name().to_string_lossy()))
        .find(|subnet| !subnet.gateway.is_loopback() && subnet.prefix <= 30)
        .map(|subnet| {
            let mask = u32::MAX << (32 - u32::from(subnet.prefix));
            let network = u32::from(subnet.gateway) & mask;
            let other = match network + 1 == u32::from(subnet.gateway) {
                true => network + 2,
                false => network + 1,
            };
            (subnet.gateway, Ipv4Addr::from(other), subnet.prefix)
        })
        .expect("this host has an IPv4 address besides loopback")
}

/// A fake LXD on a unix socket: lists `web-1` running at [`host_address`] and holds event
/// streams open; gone (socket removed, streams closed) when dropped, as LXD is while it
/// restarts.
struct FakeLxd {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl FakeLxd {
    fn start(socket: &Path) -> Self {
        let _ = fs::remove_file(socket);
        let listener = UnixListener::bind(socket).expect("bind the fake LXD socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (address, gateway, prefix) = host_address();
        let instances = serde_json::json!({"type": "sync", "metadata": [{
            "name": "web-1", "status": "Running", "type": "container", "profiles": ["default"],
            "created_at": "2026-11-22T04:02:29Z", "last_used_at": "2026-11-22T04:02:29Z",
            "expanded_devices": {"eth0": {"type": "nic", "network": "hostnet", "name": "eth0"}},
            "state": {"status": "Running", "network": {"eth0": {"addresses": [
                {"family": "inet", "address": address.to_string(), "netmask": "8", "scope": "global"}
            ]}}}
        }]})
        .to_string();
        let networks = serde_json::json!({"type": "sync", "metadata": [{
            "name": "hostnet", "managed": true,
            "config": {"ipv4.address": format!("{gateway}/{prefix}")}
        }]})
        .to_string();
        let server = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut streams = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok((stream, _)) = listener.accept() else {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    stream.set_nonblocking(false).expect("blocking");
                    stream
                        .set_read_timeout(Some(Duration::from_millis(200)))
                        .expect("timeout");
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut head = String::new();
                    while !head.ends_with("\r\n\r\n") {
                        match reader.read_line(&mut head) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    let mut stream = stream;
                    if head.starts_with("GET /1.0/events") {
                        let _ = stream.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                              Connection: Upgrade\r\n\r\n",
                        );
                        streams.push(stream);
                    } else {
                        let body = if head.starts_with("GET /1.0/instances?recursion=2") {
                            &instances
                        } else if head.starts_with("GET /1.0/networks?recursion=1") {
                            &networks
                        } else {
                            continue;
                        };
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    // Anything else (a connect probe) is just closed.
                }
            })
        };
        Self {
            socket: socket.to_owned(),
            stop,
            server: Some(server),
        }
    }
}

impl Drop for FakeLxd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        let _ = fs::remove_file(&self.socket);
    }
}

#[test]
fn lxd_going_away_keeps_the_upstreams_and_its_return_is_picked_up() {
    let dir = std::env::temp_dir().join(format!("lynx-controller-lxd-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("test dir");
    let socket = dir.join("lxd.socket");
    let backend = TcpListener::bind((host_address().0, 0)).expect("a backend");
    let port = backend.local_addr().expect("address").port();
    let upstream_file = dir.join("upstreams.conf");
    let lxd = FakeLxd::start(&socket);
    let controller = super::Controller::spawn(super::ControlOptions {
        groups: vec![GroupConfig {
            port,
            pattern: None,
            containers: Some(vec!["web-1".into()]),
            autoscale: Some(PolicyConfig::default()),
            ..group("web")
        }],
        lxd_sockets: vec![socket.clone()],
        reconcile_interval: Duration::from_millis(200),
        upstream_file: upstream_file.clone(),
        // `nginx -t` passes; with no master to reload, nginx's part is an error the
        // snapshot shows, which this test does not look at.
        nginx: crate::nginx::NginxControl {
            binary: "true".into(),
            main_config: dir.join("nginx.conf"),
            prefix: None,
            pid_file: dir.join("nginx.pid"),
            test_timeout: Duration::from_secs(5),
        },
        fallback_port: 9099,
        dry_run: false,
    });
    let server = format!("{}:{port}", host_address().0);
    let wait_for = |what: &str, condition: &dyn Fn(&crate::model::Group) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let groups = controller.groups();
            if groups.first().is_some_and(condition) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited 10 s for {what}: {groups:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    let state = |g: &crate::model::Group| g.autoscaler.as_ref().map(|a| a.state.clone());
    wait_for("web-1 served", &|g| {
        g.servers == [server.clone()] && state(g).as_deref() == Some("steady")
    });
    let file = fs::read_to_string(&upstream_file).expect("the upstream file");
    assert!(file.contains(&format!("server {server};")), "{file}");

    drop(lxd);
    wait_for("LXD missed", &|g| {
        state(g).as_deref() == Some("lxd_unavailable")
    });
    thread::sleep(Duration::from_millis(500));
    wait_for("the upstream kept", &|g| {
        g.servers == [server.clone()] && g.running == 1
    });
    assert_eq!(
        fs::read_to_string(&upstream_file).expect("the upstream file"),
        file,
        "the file is left as it was"
    );

    let _lxd = FakeLxd::start(&socket);
    wait_for("LXD back", &|g| state(g).as_deref() == Some("steady"));
    drop(controller);
    fs::remove_dir_all(&dir).expect("clean up");
}
