//! `/etc/lynx/lynx.toml`: every key optional, with the defaults documented in
//! `lynx.example.toml`; unknown or mistyped keys are errors that name the key and line.
use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use crate::controller::group::{self, GroupConfig, GroupError};

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/lynx/lynx.toml";

/// Errors of reading the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: line {line}, column {column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A `[[groups]]` entry that parses but cannot be used.
    #[error("{path}: groups[{index}] ({name:?}): {source}")]
    Group {
        path: PathBuf,
        index: usize,
        name: String,
        source: GroupError,
    },
}

/// The whole config.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub lxd: LxdConfig,
    pub docker: DockerConfig,
    pub history: HistoryConfig,
    pub web: WebConfig,
    /// The older name of `[web] listen`, still read.
    pub prometheus: PrometheusConfig,
    pub top: TopConfig,
    pub nginx: NginxConfig,
    pub disk: DiskConfig,
    /// `[[groups]]`: the containers behind each upstream Lynx keeps, and their autoscaling.
    pub groups: Vec<GroupConfig>,
}

/// `[nginx]`: the load balancer Lynx counts and whose upstream file it owns.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NginxConfig {
    /// The master's pid file: which nginx is counted (its processes, found from the master)
    /// and which master is reloaded.
    pub pid_file: PathBuf,
    /// The `nginx` binary, for `nginx -t`.
    pub binary: PathBuf,
    /// nginx's main config, which `include`s Lynx's upstream file.
    pub main_config: PathBuf,
    /// The `-p` prefix nginx runs with, if any.
    pub prefix: Option<PathBuf>,
    /// Listening ports whose accepted connections are counted.
    pub ports: Vec<u16>,
    /// Of those, the ports that speak TLS: connections and bytes are counted, requests only on
    /// the upstream side (the bytes nginx reads there are ciphertext).
    pub tls_ports: Vec<u16>,
    /// The file Lynx owns and nginx's config `include`s: every group's `upstream` block.
    pub upstream_file: PathBuf,
    /// The loopback port of the server, defined in the upstream file, that answers 503 for a
    /// group with no running container.
    pub fallback_port: u16,
    /// How long `nginx -t` may take before it is killed and the change given up.
    #[serde(deserialize_with = "timeout")]
    pub test_timeout: Duration,
    /// Which kernel hooks follow nginx's bytes: `auto` (the socket tracepoints from kernel
    /// 6.3 on, the end of every system call before), `socket_tracepoints` or `system_calls`.
    pub byte_hooks: crate::collector::features::ByteHooks,
}

impl Default for NginxConfig {
    fn default() -> Self {
        Self {
            pid_file: "/run/nginx.pid".into(),
            binary: "/usr/sbin/nginx".into(),
            main_config: "/etc/nginx/nginx.conf".into(),
            prefix: None,
            ports: vec![80, 443],
            tls_ports: vec![443],
            upstream_file: "/etc/nginx/conf.d/lynx-upstreams.conf".into(),
            fallback_port: 9099,
            test_timeout: Duration::from_secs(10),
            byte_hooks: crate::collector::features::ByteHooks::Auto,
        }
    }
}

impl NginxConfig {
    /// What the kernel can follow: the key at fault and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let capacity = lynx_common::http::HTTP_PORT_ENTRIES as usize;
        if self.ports.len() > capacity {
            return Err((
                "ports",
                format!("{} ports, at most {capacity}", self.ports.len()),
            ));
        }
        // The default TLS port need not be counted; one the operator named must be.
        let named = self.tls_ports != Self::default().tls_ports;
        if let Some(port) = self
            .tls_ports
            .iter()
            .find(|p| named && !self.ports.contains(p))
        {
            return Err((
                "tls_ports",
                format!("port {port} is not in ports, so it would not be counted"),
            ));
        }
        Ok(())
    }

    /// Which nginx the collector counts.
    pub fn counting(&self) -> crate::collector::NginxOptions {
        crate::collector::NginxOptions {
            control: self.control(),
            ports: self.ports.clone(),
            tls_ports: self.tls_ports.clone(),
            byte_hooks: self.byte_hooks,
        }
    }

    /// How to validate and reload this nginx.
    pub fn control(&self) -> crate::nginx::NginxControl {
        crate::nginx::NginxControl {
            binary: self.binary.clone(),
            main_config: self.main_config.clone(),
            prefix: self.prefix.clone(),
            pid_file: self.pid_file.clone(),
            test_timeout: self.test_timeout,
        }
    }
}

/// `[disk]`: containers' disk usage, read from LXD.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskConfig {
    /// How often LXD is asked for disk usage and pool space: measuring is costly for LXD
    /// (a btrfs qgroup scan, a zfs property per volume) and usage changes slowly.
    #[serde(deserialize_with = "interval")]
    pub interval: Duration,
    /// A disk device whose usage reaches this fraction of its quota is flagged `nearly_full`
    /// and logged once; 0 < fraction <= 1.
    #[serde(deserialize_with = "fraction")]
    pub full_fraction: f64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            full_fraction: 0.9,
        }
    }
}

/// `[history]`: per-minute aggregates kept on disk.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// The SQLite database file.
    pub path: PathBuf,
    /// How long minute aggregates are kept.
    #[serde(deserialize_with = "days")]
    pub retention_days: u32,
}

/// `[web]`: the daemon's HTTP server (`/metrics`, `/snapshot`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// `address:port` to listen on; `""` turns the server off. Loopback by default: expose
    /// it deliberately.
    pub listen: String,
    /// Host names clients may reach the server by, besides `localhost` and IP addresses: a
    /// request whose `Host` header names another is refused (403), which stops web pages
    /// that rebind their own name to this host.
    pub allowed_hosts: Vec<String>,
    /// Connections served at once; more are closed at once.
    pub max_connections: u32,
    /// The longest a connection may take in all: reading the request, answering, the client
    /// reading the answer. A slower client is cut off.
    #[serde(deserialize_with = "timeout")]
    pub timeout: Duration,
    /// Whether the dashboard may start, stop, restart, freeze and unfreeze containers and
    /// delete images (each still needs a logged-in session, a CSRF token and this server's
    /// `Origin`). Off by default: the dashboard then only shows.
    pub actions: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            allowed_hosts: Vec::new(),
            max_connections: 64,
            timeout: Duration::from_secs(10),
            actions: false,
        }
    }
}

impl WebConfig {
    /// What the key at fault says and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return Err((
                "listen",
                format!(
                    "{:?} is not an IP address and port, as \"127.0.0.1:9464\"",
                    self.listen
                ),
            ));
        }
        if !(1..=10_000).contains(&self.max_connections) {
            return Err((
                "max_connections",
                format!("{} is outside 1..=10000", self.max_connections),
            ));
        }
        if let Some(bad) = self.allowed_hosts.iter().find(|h| {
            h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        }) {
            return Err(("allowed_hosts", format!("{bad:?} is not a host name")));
        }
        Ok(())
    }

    /// The server's options; `None` when it is off.
    pub fn options(&self) -> Option<crate::web::WebOptions> {
        Some(crate::web::WebOptions {
            listen: self.listen.parse().ok()?,
            allowed_hosts: self.allowed_hosts.clone(),
            max_connections: self.max_connections as usize,
            timeout: self.timeout,
            retry: crate::web::RETRY,
            actions: self.actions,
            login_file: None,
            lxd_sockets: Vec::new(),
            history_path: None,
        })
    }
}

/// `[prometheus]`: `listen` is the older name of `[web] listen`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    pub listen: Option<String>,
}

/// `[top]`: the live view.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopConfig {
    /// How often `lynx top` redraws.
    #[serde(deserialize_with = "interval")]
    pub refresh: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            path: "/var/lib/lynx/history.db".into(),
            retention_days: 7,
        }
    }
}

impl Default for TopConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(1),
        }
    }
}

/// `[daemon]`: collection and the snapshot file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// How often to collect.
    #[serde(deserialize_with = "interval")]
    pub interval: Duration,
    /// Where the snapshot document is written.
    pub snapshot_path: PathBuf,
    /// bpffs directory where the kernel maps are pinned, so that a restarted daemon goes on
    /// counting from where the last one stopped.
    pub pin_dir: PathBuf,
    /// Count the network traffic of the host's own sockets and of systemd services too, not
    /// only containers'. Costs a program run on every packet of the host, nginx's clients'
    /// included.
    pub count_host_network: bool,
}

/// `[lxd]`: where LXD's API is.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LxdConfig {
    /// Unix sockets tried in order; the first that exists is used.
    pub sockets: Vec<PathBuf>,
    /// How often the controller re-reads every instance, in case an event was missed.
    #[serde(deserialize_with = "interval")]
    pub reconcile_interval: Duration,
}

/// `[docker]`: where the Docker Engine API is.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// The engine's unix socket. Left at the default while that is absent, Podman's
    /// Docker-compatible socket is used if it exists.
    pub socket: PathBuf,
    /// How often every container is read again, in case an event was missed (changes come
    /// from the engine's event stream as they happen).
    #[serde(deserialize_with = "interval")]
    pub reconcile_interval: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            socket: crate::docker::DEFAULT_SOCKET.into(),
            reconcile_interval: Duration::from_secs(10),
        }
    }
}

impl DockerConfig {
    /// The sockets to look for an engine at, in order.
    pub fn sockets(&self) -> Vec<PathBuf> {
        let mut sockets = vec![self.socket.clone()];
        if self.socket == Path::new(crate::docker::DEFAULT_SOCKET) {
            sockets.push(crate::docker::PODMAN_SOCKET.into());
        }
        sockets
    }

    /// The engine's containers, watched in the background.
    pub fn watch(&self) -> crate::collector::docker_containers::DockerContainers {
        crate::collector::docker_containers::DockerContainers::spawn(
            self.sockets(),
            self.reconcile_interval,
        )
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            snapshot_path: "/run/lynx/snapshot.json".into(),
            pin_dir: "/sys/fs/bpf/lynx".into(),
            count_host_network: false,
        }
    }
}

impl Default for LxdConfig {
    fn default() -> Self {
        Self {
            sockets: crate::lxd::DEFAULT_SOCKETS
                .iter()
                .map(PathBuf::from)
                .collect(),
            reconcile_interval: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Reads `path`; with `explicit` false (the default path), a missing file means defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(error) if error.kind() == io::ErrorKind::NotFound && !explicit => {
                Ok(Self::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses config text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let invalid = |offset: usize, message: String| {
            let before = &text[..offset.min(text.len())];
            ConfigError::Invalid {
                path: path.to_owned(),
                line: before.matches('\n').count() + 1,
                column: before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                message,
            }
        };
        let mut config: Self = toml::from_str(text).map_err(|error| {
            let offset = error.span().map_or(0, |span| span.start);
            invalid(offset, error.message().trim().replace('\n', " "))
        })?;
        // Where a key is written, for a message about it.
        let at = |key: &str| text.find(&format!("\n{key}")).map_or(0, |at| at + 1);
        if let Some(listen) = config.prometheus.listen.take() {
            if config.web.listen != WebConfig::default().listen {
                return Err(invalid(
                    at("[prometheus]"),
                    "[prometheus] listen is the older name of [web] listen: set only one".into(),
                ));
            }
            config.web.listen = listen;
        }
        config
            .nginx
            .check()
            .map_err(|(key, message)| invalid(at(key), format!("[nginx] {key}: {message}")))?;
        config
            .web
            .check()
            .map_err(|(key, message)| invalid(at(key), format!("[web] {key}: {message}")))?;
        group::validate_all(&config.groups).map_err(|(index, name, source)| {
            ConfigError::Group {
                path: path.to_owned(),
                index,
                name,
                source,
            }
        })?;
        Ok(config)
    }
}

fn days<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let days = u32::deserialize(deserializer)?;
    if !(1..=3660).contains(&days) {
        return Err(serde::de::Error::custom(format!(
            "{days} is outside 1..=3660 days"
        )));
    }
    Ok(days)
}

fn fraction<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let fraction = f64::deserialize(deserializer)?;
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(serde::de::Error::custom(format!(
            "{fraction} is not a fraction in (0, 1]"
        )));
    }
    Ok(fraction)
}

/// Shortest and longest interval accepted: shorter makes rates noise, longer makes them stale.
const INTERVAL_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));
/// Shortest and longest deadline of an external command.
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(600));

/// Parses a human duration (`250ms`, `1s`, `2m`) within [`INTERVAL_RANGE`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    parse_duration_in(text, INTERVAL_RANGE)
}

/// Parses a human duration within `(min, max)`, naming the value when it is not one.
fn parse_duration_in(text: &str, (min, max): (Duration, Duration)) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if !(min..=max).contains(&duration) {
        return Err(format!("{text:?} is outside {min:?}..={max:?}"));
    }
    Ok(duration)
}

/// A deadline: a humantime duration within [`TIMEOUT_RANGE`].
fn timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration_in(&text, TIMEOUT_RANGE).map_err(serde::de::Error::custom)
}

fn interval<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_interval(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_in_human_units() {
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn bad_intervals_name_the_value() {
        let error = parse_interval("1 fortnight").unwrap_err();
        assert!(error.contains("\"1 fortnight\""), "{error}");
        let error = parse_interval("1ms").unwrap_err();
        assert!(error.contains("\"1ms\" is outside"), "{error}");
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("lynx.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse(""), Ok(Config::default()));
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let example = include_str!("../../lynx.example.toml");
        let uncommented: String = example
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .filter(|l| l.contains(" = ") || l.starts_with('['))
                    .unwrap_or("")
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            parse(&uncommented),
            Ok(Config::default()),
            "example:\n{uncommented}"
        );
    }

    #[test]
    fn the_example_group_parses_and_validates() {
        let example = include_str!("../../lynx.example.toml");
        let group: String = example
            .lines()
            .filter_map(|line| line.strip_prefix("## "))
            .filter(|l| l.contains(" = ") || l.starts_with('['))
            .collect::<Vec<_>>()
            .join("\n");
        let config = parse(&group).unwrap_or_else(|e| panic!("{e}\n{group}"));
        let [web] = config.groups.as_slice() else {
            panic!("one group: {config:?}");
        };
        assert_eq!(
            (web.name.as_str(), web.upstream_name()),
            ("web", "web_backends")
        );
        assert_eq!(web.pattern.as_deref(), Some("web-*"));
        assert_eq!(web.drain_timeout, Duration::from_secs(30));
        assert_eq!(
            web.autoscale,
            Some(crate::autoscale::PolicyConfig::default()),
            "the example shows the policy's defaults"
        );
    }

    #[test]
    fn a_bad_group_is_named_with_its_key() {
        let error = parse(
            "[[groups]]\nname = \"web\"\nport = 80\npattern = \"web-*\"\n\
             [groups.autoscale]\nmin = 3\nmax = 2\n",
        )
        .unwrap_err();
        assert_eq!(
            error,
            "lynx.toml: groups[0] (\"web\"): autoscale.max (2) must be at least min (3)"
        );
        let error = parse("[[groups]]\nname = \"web\"\nport = 80\n").unwrap_err();
        assert_eq!(
            error,
            "lynx.toml: groups[0] (\"web\"): set exactly one of profile, pattern or containers (found 0)"
        );
        let error = parse("[[groups]]\nname = \"web\"\nport = 80\nprofle = \"web\"\n").unwrap_err();
        assert!(
            error.starts_with("lynx.toml: line 4, column 1: unknown field `profle`"),
            "{error}"
        );
    }

    #[test]
    fn keys_override_defaults() {
        let config = parse("[daemon]\ninterval = \"250ms\"\nsnapshot_path = \"/tmp/s.json\"\n")
            .expect("valid");
        assert_eq!(config.daemon.interval, Duration::from_millis(250));
        assert_eq!(config.daemon.snapshot_path, Path::new("/tmp/s.json"));
        assert_eq!(config.lxd, LxdConfig::default());
    }

    #[test]
    fn podman_is_tried_only_for_the_default_docker_socket() {
        assert_eq!(
            DockerConfig::default().sockets(),
            [
                PathBuf::from("/var/run/docker.sock"),
                PathBuf::from("/run/podman/podman.sock")
            ]
        );
        let config = parse("[docker]\nsocket = \"/srv/docker.sock\"\n").expect("valid");
        assert_eq!(config.docker.sockets(), [PathBuf::from("/srv/docker.sock")]);
        let error = parse("[docker]\nsockets = []\n").unwrap_err();
        assert!(
            error.starts_with("lynx.toml: line 2, column 1: unknown field `sockets`"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let error = parse("[daemon]\ninterval = \"1s\"\nintervall = \"2s\"\n").unwrap_err();
        assert!(
            error.starts_with("lynx.toml: line 3, column 1: unknown field `intervall`"),
            "{error}"
        );
        assert!(!error.contains('\n'), "one line: {error}");
    }

    #[test]
    fn mistyped_value_is_named_with_its_line() {
        let error = parse("[daemon]\n\ninterval = \"soon\"\n").unwrap_err();
        assert!(
            error.starts_with("lynx.toml: line 3, column 12:"),
            "{error}"
        );
        assert!(error.contains("\"soon\""), "{error}");
        let error = parse("[lxd]\nsockets = \"/one/path\"\n").unwrap_err();
        assert!(error.starts_with("lynx.toml: line 2"), "{error}");
    }

    #[test]
    fn disk_keys_are_read_and_checked() {
        let config = parse("[disk]\ninterval = \"10s\"\nfull_fraction = 0.75\n").expect("valid");
        assert_eq!(
            config.disk,
            DiskConfig {
                interval: Duration::from_secs(10),
                full_fraction: 0.75
            }
        );
        let error = parse("[disk]\n\nfull_fraction = 1.5\n").unwrap_err();
        assert!(
            error.starts_with("lynx.toml: line 3, column 17:") && error.contains("1.5"),
            "{error}"
        );
        let error = parse("[disk]\nfull_fraction = 0\n").unwrap_err();
        assert!(error.starts_with("lynx.toml: line 2"), "{error}");
        let error = parse("[disk]\nfull = 0.5\n").unwrap_err();
        assert!(
            error.starts_with("lynx.toml: line 2, column 1: unknown field `full`"),
            "{error}"
        );
    }

    #[test]
    fn a_tls_port_that_is_not_counted_is_named() {
        let error = parse("[nginx]\nports = [8080]\ntls_ports = [8443]\n").unwrap_err();
        assert_eq!(
            error,
            "lynx.toml: line 3, column 1: [nginx] tls_ports: port 8443 is not in ports, so it \
             would not be counted"
        );
        assert!(
            parse("[nginx]\nports = [8080]\n").is_ok(),
            "default TLS port"
        );
        assert!(parse("[nginx]\nports = [8080, 8443]\ntls_ports = [8443]\n").is_ok());
    }

    #[test]
    fn the_web_server_is_checked_and_its_old_name_still_read() {
        let error = parse("[web]\nlisten = \"localhost:9464\"\n").unwrap_err();
        assert_eq!(
            error,
            "lynx.toml: line 2, column 1: [web] listen: \"localhost:9464\" is not an IP \
             address and port, as \"127.0.0.1:9464\""
        );
        let error = parse("[web]\nmax_connections = 0\n").unwrap_err();
        assert!(
            error.contains("[web] max_connections: 0 is outside"),
            "{error}"
        );
        let error = parse("[web]\nallowed_hosts = [\"a b\"]\n").unwrap_err();
        assert!(error.contains("[web] allowed_hosts: \"a b\""), "{error}");
        assert_eq!(
            parse("[web]\nlisten = \"\"\n").expect("off").web.options(),
            None
        );
        let old = parse("[prometheus]\nlisten = \"127.0.0.1:9\"\n").expect("the old name");
        assert_eq!(old.web.listen, "127.0.0.1:9");
        let error =
            parse("[web]\nlisten = \"127.0.0.1:8\"\n[prometheus]\nlisten = \"127.0.0.1:9\"\n")
                .unwrap_err();
        assert!(error.contains("set only one"), "{error}");
    }

    #[test]
    fn missing_default_file_means_defaults_but_a_named_one_is_an_error() {
        let missing = Path::new("/nonexistent/lynx.toml");
        assert_eq!(
            Config::load(missing, false).expect("defaults"),
            Config::default()
        );
        let error = Config::load(missing, true).unwrap_err().to_string();
        assert!(error.starts_with("/nonexistent/lynx.toml: "), "{error}");
    }
}
