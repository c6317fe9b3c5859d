//! `[[groups]]`: which containers serve one nginx upstream, on which port, and (optionally)
//! how their number follows the load.
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::{autoscale::PolicyConfig, lxd::Instance, nginx::upstream};

/// One group of containers behind one nginx upstream.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name, in logs, the snapshot and metrics.
    pub name: String,
    /// The `upstream` block's name that nginx's `proxy_pass http://NAME` uses; the group's
    /// name when not given.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The port the containers serve on.
    pub port: u16,
    /// The LXD network (or host bridge) the containers serve on: nginx gets each member's
    /// address on the NIC LXD attached there, within that network's subnet. Without it, a
    /// member's first NIC (by device name) on a network whose subnet is known.
    #[serde(default)]
    pub network: Option<String>,
    /// Members: the containers with this LXD profile...
    #[serde(default)]
    pub profile: Option<String>,
    /// ...or whose name matches this pattern (`*` any run of characters, `?` one)...
    #[serde(default)]
    pub pattern: Option<String>,
    /// ...or these containers.
    #[serde(default)]
    pub containers: Option<Vec<String>>,
    /// How long a scale-down waits for nginx's connections to the container to end before it
    /// freezes or stops it anyway.
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// The autoscaling policy; without it the group's upstream only follows the containers'
    /// states and Lynx starts or stops nothing.
    #[serde(default)]
    pub autoscale: Option<PolicyConfig>,
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A humantime duration (`"500ms"`, `"30s"`, `"2m"`).
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

/// Why a group's config cannot be used; each message names the key.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum GroupError {
    #[error("name {0:?} must be 1 to 64 letters, digits, '_', '-' or '.'")]
    BadName(String),
    #[error("upstream {0:?} must be 1 to 64 letters, digits, '_', '-' or '.'")]
    BadUpstream(String),
    #[error("set exactly one of profile, pattern or containers (found {0})")]
    Selection(usize),
    #[error("port must not be 0")]
    ZeroPort,
    #[error("autoscale.{0}")]
    Policy(#[from] crate::autoscale::PolicyError),
    #[error("name {0:?} is used by another group")]
    DuplicateName(String),
    #[error("upstream {0:?} is used by another group")]
    DuplicateUpstream(String),
}

impl GroupConfig {
    /// The upstream's name in nginx's config.
    pub fn upstream_name(&self) -> &str {
        self.upstream.as_deref().unwrap_or(&self.name)
    }

    /// Checks what the types cannot, for this group alone.
    pub fn validate(&self) -> Result<(), GroupError> {
        if !upstream::is_plain_name(&self.name) {
            return Err(GroupError::BadName(self.name.clone()));
        }
        if !upstream::is_plain_name(self.upstream_name()) {
            return Err(GroupError::BadUpstream(self.upstream_name().to_owned()));
        }
        let selections = usize::from(self.profile.is_some())
            + usize::from(self.pattern.is_some())
            + usize::from(self.containers.is_some());
        if selections != 1 {
            return Err(GroupError::Selection(selections));
        }
        if self.port == 0 {
            return Err(GroupError::ZeroPort);
        }
        if let Some(policy) = &self.autoscale {
            policy.validate()?;
        }
        Ok(())
    }

    /// Whether `instance` belongs to the group. Only containers: a VM's addresses are not on
    /// the container bridge the group's port is served on.
    pub fn selects(&self, instance: &Instance) -> bool {
        if instance.kind != "container" && !instance.kind.is_empty() {
            return false;
        }
        if let Some(profile) = &self.profile {
            instance.profiles.iter().any(|p| p == profile)
        } else if let Some(pattern) = &self.pattern {
            glob(pattern.as_bytes(), instance.name.as_bytes())
        } else {
            self.containers
                .as_ref()
                .is_some_and(|names| names.contains(&instance.name))
        }
    }
}

/// Checks every group, and that no two share a name or an upstream; the error names the
/// group by its place and name.
pub fn validate_all(groups: &[GroupConfig]) -> Result<(), (usize, String, GroupError)> {
    for (index, group) in groups.iter().enumerate() {
        let fail = |error| (index, group.name.clone(), error);
        group.validate().map_err(fail)?;
        let earlier = &groups[..index];
        if earlier.iter().any(|g| g.name == group.name) {
            return Err(fail(GroupError::DuplicateName(group.name.clone())));
        }
        if earlier
            .iter()
            .any(|g| g.upstream_name() == group.upstream_name())
        {
            return Err(fail(GroupError::DuplicateUpstream(
                group.upstream_name().to_owned(),
            )));
        }
    }
    Ok(())
}

/// Shell-style matching of `*` (any run, also empty) and `?` (any one byte).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative, with one backtrack point: linear in practice, never exponential.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::lxd::InstanceStatus;

    pub(crate) fn instance(name: &str, profiles: &[&str]) -> Instance {
        Instance {
            name: name.into(),
            kind: "container".into(),
            status: InstanceStatus::Running,
            pid: None,
            ipv4: vec![],
            ipv6: vec![],
            interfaces: Default::default(),
            nics: vec![crate::lxd::NicDevice {
                device: "eth0".into(),
                interface: "eth0".into(),
                network: Some("lxdbr0".into()),
                ipv4_address: None,
            }],
            image: None,
            base_image: None,
            profiles: profiles.iter().map(|p| (*p).into()).collect(),
            created_at: String::new(),
            last_used_at: None,
        }
    }

    pub(crate) fn group(name: &str) -> GroupConfig {
        GroupConfig {
            name: name.into(),
            upstream: None,
            port: 80,
            network: None,
            profile: None,
            pattern: Some(format!("{name}-*")),
            containers: None,
            drain_timeout: Duration::from_secs(30),
            autoscale: None,
        }
    }

    #[test]
    fn globs_match_as_a_shell_does() {
        for (pattern, name, matches) in [
            ("web-*", "web-1", true),
            ("web-*", "web-", true),
            ("web-*", "api-1", false),
            ("*-blue", "web-blue", true),
            ("*-blue", "web-green", false),
            ("w?b*", "wib-3", true),
            ("w?b*", "wb-3", false),
            ("a*b*c", "aXXbYYbc", true),
            ("a*b*c", "aXXbYYb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "", true),
        ] {
            assert_eq!(
                glob(pattern.as_bytes(), name.as_bytes()),
                matches,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn selection_by_profile_pattern_or_list() {
        let web = instance("web-1", &["default", "web"]);
        let api = instance("api-1", &["default"]);
        let by_profile = GroupConfig {
            profile: Some("web".into()),
            pattern: None,
            ..group("g")
        };
        assert!(by_profile.selects(&web) && !by_profile.selects(&api));
        let by_pattern = group("web");
        assert!(by_pattern.selects(&web) && !by_pattern.selects(&api));
        let by_list = GroupConfig {
            containers: Some(vec!["api-1".into()]),
            pattern: None,
            ..group("g")
        };
        assert!(!by_list.selects(&web) && by_list.selects(&api));
        let vm = Instance {
            kind: "virtual-machine".into(),
            ..web
        };
        assert!(!by_pattern.selects(&vm), "VMs are never members");
    }

    #[test]
    fn validation_names_the_key() {
        let both = GroupConfig {
            profile: Some("web".into()),
            ..group("web")
        };
        assert_eq!(both.validate(), Err(GroupError::Selection(2)));
        let bad_upstream = GroupConfig {
            upstream: Some("web; }".into()),
            ..group("web")
        };
        assert_eq!(
            bad_upstream.validate().unwrap_err().to_string(),
            "upstream \"web; }\" must be 1 to 64 letters, digits, '_', '-' or '.'"
        );
        let bad_policy = GroupConfig {
            autoscale: Some(PolicyConfig {
                min: 3,
                max: 2,
                ..PolicyConfig::default()
            }),
            ..group("web")
        };
        assert_eq!(
            bad_policy.validate().unwrap_err().to_string(),
            "autoscale.max (2) must be at least min (3)"
        );
        let twice = [group("web"), group("web")];
        let (index, name, error) = validate_all(&twice).unwrap_err();
        assert_eq!((index, name.as_str()), (1, "web"));
        assert_eq!(error, GroupError::DuplicateName("web".into()));
        let same_upstream = [
            group("a"),
            GroupConfig {
                upstream: Some("a".into()),
                ..group("b")
            },
        ];
        assert_eq!(
            validate_all(&same_upstream).unwrap_err().2,
            GroupError::DuplicateUpstream("a".into())
        );
    }
}
