//! Which of Lynx's counter families the running kernel supports, and through which hooks.
//!
//! Each family stands or falls with the kernel features its programs need (a BTF tracepoint,
//! a helper offered to a program type, a struct field the programs read). The loader probes
//! them before loading, loads what the kernel supports, and records every family here as
//! `active` (with the hooks that count it) or `unavailable` (with the reason and the kernel
//! it was found on): the snapshot's `features` object and `lynx_feature_active` in
//! `/metrics`. Only missing BTF or privilege stops Lynx as a whole (see [`super::preflight`]).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A family of counters that is counted, or not, as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// CPU time per cgroup (`containers[].cpu`).
    Cpu,
    /// Block I/O per cgroup (`containers[].block_io`).
    BlockIo,
    /// Network traffic per container (`containers[].network`).
    Network,
    /// nginx's connections: accepts, active, upstream connections (`nginx.accepts`,
    /// `nginx.active`, `connections`).
    NginxConnections,
    /// nginx's requests and bytes (`nginx.requests`, `requests`, `bytes_in`, `bytes_out`).
    NginxRequests,
}

impl Family {
    pub const ALL: [Self; 5] = [
        Self::Cpu,
        Self::BlockIo,
        Self::Network,
        Self::NginxConnections,
        Self::NginxRequests,
    ];

    /// The name in the snapshot and in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::BlockIo => "block_io",
            Self::Network => "network",
            Self::NginxConnections => "nginx_connections",
            Self::NginxRequests => "nginx_requests",
        }
    }
}

/// Whether a family is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureState {
    Active,
    Unavailable,
}

/// One family's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub state: FeatureState,
    /// The kernel hooks that count it, as `type/name` (`tp_btf/sched_switch`).
    pub hooks: Vec<String>,
    /// Why it is unavailable, or why these hooks stand in for the usual ones; with the
    /// kernel's version.
    pub reason: Option<String>,
}

impl Feature {
    pub fn active(hooks: &[&str]) -> Self {
        Self {
            state: FeatureState::Active,
            hooks: hooks.iter().map(|&h| h.to_owned()).collect(),
            reason: None,
        }
    }

    pub fn unavailable(hooks: &[&str], reason: String) -> Self {
        Self {
            reason: Some(reason),
            state: FeatureState::Unavailable,
            ..Self::active(hooks)
        }
    }

    pub fn is_active(&self) -> bool {
        self.state == FeatureState::Active
    }
}

/// Every family's state: the snapshot's `features` object.
pub type Features = BTreeMap<Family, Feature>;

/// Which hooks follow nginx's bytes (`[nginx] byte_hooks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteHooks {
    /// The socket tracepoints where the kernel has them (6.3 on), else the system calls.
    #[default]
    Auto,
    /// `sock_recv_length` and `sock_send_length` only; without them requests are not counted.
    SocketTracepoints,
    /// The end of every system call (`sys_exit`), filtered by nginx's cgroup, on any kernel.
    SystemCalls,
}

/// How nginx's bytes are followed, decided by [`choose_byte_path`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BytePath {
    SocketTracepoints,
    SystemCalls,
}

/// The byte path for `wanted`, given whether the kernel has the socket tracepoints and the
/// `sys_exit` one; `Err` with the reason when the wanted path cannot be had.
pub fn choose_byte_path(
    wanted: ByteHooks,
    has_socket_tracepoints: bool,
    has_sys_exit: bool,
) -> Result<BytePath, String> {
    const NO_SOCKET: &str =
        "the kernel has no tracepoints sock_recv_length and sock_send_length (they came in 6.3)";
    const NO_SYS_EXIT: &str = "the kernel has no BTF tracepoint sys_exit";
    match wanted {
        ByteHooks::Auto | ByteHooks::SocketTracepoints if has_socket_tracepoints => {
            Ok(BytePath::SocketTracepoints)
        }
        ByteHooks::SocketTracepoints => Err(NO_SOCKET.into()),
        ByteHooks::Auto | ByteHooks::SystemCalls if has_sys_exit => Ok(BytePath::SystemCalls),
        ByteHooks::Auto => Err(format!("{NO_SOCKET}, and {NO_SYS_EXIT}")),
        ByteHooks::SystemCalls => Err(NO_SYS_EXIT.into()),
    }
}

/// The running kernel's release (`uname -r`), for the reasons given.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_tracepoints_win_where_the_kernel_has_them() {
        assert_eq!(
            choose_byte_path(ByteHooks::Auto, true, true),
            Ok(BytePath::SocketTracepoints)
        );
        assert_eq!(
            choose_byte_path(ByteHooks::Auto, false, true),
            Ok(BytePath::SystemCalls)
        );
        assert_eq!(
            choose_byte_path(ByteHooks::SystemCalls, true, true),
            Ok(BytePath::SystemCalls)
        );
    }

    #[test]
    fn a_path_the_kernel_lacks_is_a_reason_not_a_fallback() {
        let error = choose_byte_path(ByteHooks::SocketTracepoints, false, true).unwrap_err();
        assert!(error.contains("sock_recv_length"), "{error}");
        let error = choose_byte_path(ByteHooks::Auto, false, false).unwrap_err();
        assert!(
            error.contains("6.3") && error.contains("sys_exit"),
            "{error}"
        );
        assert!(choose_byte_path(ByteHooks::SystemCalls, true, false).is_err());
    }

    #[test]
    fn features_serialise_by_family_name() {
        let features = Features::from([
            (Family::Cpu, Feature::active(&["tp_btf/sched_switch"])),
            (
                Family::NginxRequests,
                Feature::unavailable(&["tp_btf/sys_exit"], "no sys_exit (kernel 5.4)".into()),
            ),
        ]);
        let json = serde_json::to_value(&features).expect("serialises");
        assert_eq!(json["cpu"]["state"], "active");
        assert_eq!(json["nginx_requests"]["state"], "unavailable");
        assert_eq!(json["nginx_requests"]["reason"], "no sys_exit (kernel 5.4)");
        let back: Features = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, features);
        for family in Family::ALL {
            assert_eq!(
                serde_json::to_value(family).expect("a name"),
                family.name(),
                "{family:?}"
            );
        }
    }
}
