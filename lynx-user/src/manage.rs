//! `lynx containers` and `lynx images`: operators' actions on LXD and Docker. The clients do
//! the talking; this module holds what is decided here (which engine a container name
//! belongs to, which image a reference names, whether it is in use) and how lists are
//! shown, as plain functions.
use std::time::SystemTime;

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    docker::{self, ContainerState},
    lxd::{Image, Instance, InstanceStatus},
};

/// The container managers `lynx containers` acts through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Lxd,
    Docker,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lxd => "lxd",
            Self::Docker => "docker",
        }
    }
}

/// Why a container name cannot be acted on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContainerRefError {
    #[error(
        "{name:?} is an LXD container and a Docker container ({id}): give --engine lxd or --engine docker"
    )]
    Ambiguous { name: String, id: String },
    #[error("no Docker container is named {0:?}, and no LXD socket answers")]
    NotFound(String),
}

/// Which engine `name` belongs to. `docker` is the Docker container it names, when the
/// engine answered and has one (`None` also when it did not answer); `in_lxd` is whether
/// LXD has an instance of that name, `None` when LXD does not answer. A name only Docker
/// has is Docker's; anything else is left to LXD, whose own message then says what is
/// wrong, unless Docker answered without such a container and LXD cannot be asked.
pub fn engine_of(
    name: &str,
    docker: Option<&docker::Container>,
    docker_answered: bool,
    in_lxd: Option<bool>,
) -> Result<Engine, ContainerRefError> {
    match (docker, in_lxd) {
        (Some(container), Some(true)) => Err(ContainerRefError::Ambiguous {
            name: name.to_owned(),
            id: short(&container.id),
        }),
        (Some(_), _) => Ok(Engine::Docker),
        (None, None) if docker_answered => Err(ContainerRefError::NotFound(name.to_owned())),
        (None, _) => Ok(Engine::Lxd),
    }
}

/// Why an image reference cannot be acted on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("no image has the alias or fingerprint {0:?}")]
    NotFound(String),
    #[error("{reference:?} matches several images: {matches}; give more of the fingerprint")]
    Ambiguous { reference: String, matches: String },
    #[error("image {reference} is used by {users}: not deleted")]
    InUse { reference: String, users: String },
}

/// The image that `reference` names: an alias, a whole fingerprint, or a fingerprint prefix
/// that only one image has (as `lxc` accepts).
pub fn resolve_image<'a>(images: &'a [Image], reference: &str) -> Result<&'a Image, ImageRefError> {
    if let Some(image) = images
        .iter()
        .find(|i| i.aliases.iter().any(|a| a == reference))
    {
        return Ok(image);
    }
    let matches: Vec<&Image> = images
        .iter()
        .filter(|i| !reference.is_empty() && i.fingerprint.starts_with(reference))
        .collect();
    match matches.as_slice() {
        [image] => Ok(image),
        [] => Err(ImageRefError::NotFound(reference.to_owned())),
        several => Err(ImageRefError::Ambiguous {
            reference: reference.to_owned(),
            matches: several
                .iter()
                .map(|i| short(&i.fingerprint))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Refuses to delete `image` while instances were created from it.
pub fn check_unused(
    image: &Image,
    reference: &str,
    instances: &[Instance],
) -> Result<(), ImageRefError> {
    let users: Vec<&str> = instances
        .iter()
        .filter(|i| i.base_image.as_deref() == Some(image.fingerprint.as_str()))
        .map(|i| i.name.as_str())
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(ImageRefError::InUse {
        reference: reference.to_owned(),
        users: users.join(", "),
    })
}

/// `lynx containers list`: name, engine, status, IPv4, IPv6, image, uptime; LXD's instances
/// first, then Docker's containers, each in the engine's own words.
pub fn containers_table(
    instances: &[Instance],
    containers: &[docker::Container],
    now: SystemTime,
) -> String {
    let lxd = instances.iter().map(|i| {
        let uptime = match (&i.status, &i.last_used_at) {
            (InstanceStatus::Running | InstanceStatus::Frozen, Some(started)) => {
                OffsetDateTime::parse(started, &Rfc3339)
                    .map_or_else(|_| "-".into(), |t| since(t, now))
            }
            _ => "-".to_owned(),
        };
        vec![
            i.name.clone(),
            Engine::Lxd.as_str().to_owned(),
            i.status.as_str().to_owned(),
            join_or_dash(i.ipv4.iter().map(ToString::to_string)),
            join_or_dash(i.ipv6.iter().map(ToString::to_string)),
            i.image.clone().unwrap_or_else(|| "-".into()),
            uptime,
        ]
    });
    let docker = containers.iter().map(|c| {
        let uptime = match (&c.state, c.started_at) {
            (ContainerState::Running | ContainerState::Paused, Some(started)) => {
                since(started, now)
            }
            _ => "-".to_owned(),
        };
        vec![
            c.name.clone(),
            Engine::Docker.as_str().to_owned(),
            c.state.to_string(),
            join_or_dash(c.ipv4().map(|a| a.to_string())),
            join_or_dash(c.ipv6().map(|a| a.to_string())),
            Some(c.image.clone())
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| "-".into()),
            uptime,
        ]
    });
    table(
        &[
            "NAME", "ENGINE", "STATUS", "IPV4", "IPV6", "IMAGE", "UPTIME",
        ],
        lxd.chain(docker),
    )
}

/// The columns of `lynx images list` and of the dashboard's images page.
pub const IMAGE_COLUMNS: [&str; 6] = [
    "ALIAS",
    "FINGERPRINT",
    "ARCH",
    "DESCRIPTION",
    "SIZE",
    "UPLOADED",
];

/// One row of cells per image, under [`IMAGE_COLUMNS`].
pub fn image_rows(images: &[Image]) -> impl Iterator<Item = Vec<String>> + '_ {
    images.iter().map(|i| {
        vec![
            join_or_dash(i.aliases.iter().cloned()),
            short(&i.fingerprint),
            i.architecture.clone(),
            i.description.clone().unwrap_or_else(|| "-".into()),
            format!("{:.1} MiB", i.size as f64 / (1024.0 * 1024.0)),
            i.uploaded_at.get(..10).unwrap_or(&i.uploaded_at).to_owned(),
        ]
    })
}

/// `lynx images list`: alias, fingerprint, architecture, description, size, upload date.
pub fn images_table(images: &[Image]) -> String {
    table(&IMAGE_COLUMNS, image_rows(images))
}

/// The 12-digit form `lxc` shows.
fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(12).collect()
}

fn join_or_dash(items: impl Iterator<Item = String>) -> String {
    let joined: Vec<String> = items.collect();
    if joined.is_empty() {
        "-".into()
    } else {
        joined.join(",")
    }
}

/// "3d 4h", "2h 5m", "7m 3s" since `then`.
fn since(then: OffsetDateTime, now: SystemTime) -> String {
    let seconds = (OffsetDateTime::from(now) - then).whole_seconds().max(0);
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h) {
        (0, 0) => format!("{m}m {s}s"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Left-aligned columns two spaces apart.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
        .chain(rows)
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn image(fingerprint: &str, aliases: &[&str]) -> Image {
        Image {
            fingerprint: fingerprint.into(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            architecture: "x86_64".into(),
            description: Some("busybox".into()),
            kind: "container".into(),
            size: 3 * 1024 * 1024,
            uploaded_at: "2026-11-22T04:00:00Z".into(),
            cached: false,
        }
    }

    fn instance(name: &str, base: &str, status: InstanceStatus) -> Instance {
        Instance {
            name: name.into(),
            kind: "container".into(),
            status,
            pid: Some(10),
            ipv4: vec!["10.0.0.2".parse().expect("address")],
            ipv6: vec![],
            interfaces: Default::default(),
            nics: vec![],
            image: Some("busybox".into()),
            base_image: Some(base.into()),
            profiles: vec!["default".into()],
            created_at: "2026-11-22T03:00:00Z".into(),
            last_used_at: Some("2026-11-22T03:58:00Z".into()),
        }
    }

    #[test]
    fn images_resolve_by_alias_fingerprint_or_unique_prefix() {
        let images = [
            image("abcdef0123", &["web"]),
            image("abc999", &[]),
            image("ffff", &["db"]),
        ];
        assert_eq!(
            resolve_image(&images, "web").expect("alias").fingerprint,
            "abcdef0123"
        );
        assert_eq!(
            resolve_image(&images, "abc9").expect("prefix").fingerprint,
            "abc999"
        );
        assert_eq!(
            resolve_image(&images, "ffff").expect("whole").aliases,
            ["db"]
        );
        assert!(matches!(
            resolve_image(&images, "abc"),
            Err(ImageRefError::Ambiguous { .. })
        ));
        assert_eq!(
            resolve_image(&images, "nope").unwrap_err().to_string(),
            "no image has the alias or fingerprint \"nope\""
        );
    }

    #[test]
    fn an_image_in_use_is_refused_naming_its_containers() {
        let web = image("abcdef", &["web"]);
        let instances = [
            instance("web1", "abcdef", InstanceStatus::Running),
            instance("db1", "ffff", InstanceStatus::Running),
            instance("web2", "abcdef", InstanceStatus::Stopped),
        ];
        assert_eq!(
            check_unused(&web, "web", &instances)
                .unwrap_err()
                .to_string(),
            "image web is used by web1, web2: not deleted"
        );
        assert!(check_unused(&image("0000", &[]), "0000", &instances).is_ok());
    }

    fn docker(name: &str, state: ContainerState) -> docker::Container {
        let at = |text: &str| OffsetDateTime::parse(text, &Rfc3339).expect("a time");
        docker::Container {
            id: format!("{:0>64}", name.len()),
            name: name.into(),
            image: "busybox:1.36".into(),
            image_id: "sha256:feed".into(),
            state,
            pid: Some(20),
            command: vec!["sh".into()],
            created_at: at("2026-11-22T03:00:00Z"),
            started_at: Some(at("2026-11-22T01:00:00Z")),
            labels: Default::default(),
            networks: vec![docker::NetworkAddresses {
                name: "none".into(),
                ipv4: None,
                ipv6: None,
            }],
        }
    }

    #[test]
    fn container_table_shows_both_engines_and_uptime_for_running_ones() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_320_000); // 2026-11-22T04:00Z
        let text = containers_table(
            &[
                instance("web1", "a", InstanceStatus::Running),
                instance("web2", "a", InstanceStatus::Stopped),
            ],
            &[
                docker("api", ContainerState::Paused),
                docker("job", ContainerState::Exited),
            ],
            now,
        );
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            [
                vec![
                    "NAME", "ENGINE", "STATUS", "IPV4", "IPV6", "IMAGE", "UPTIME"
                ],
                vec![
                    "web1", "lxd", "Running", "10.0.0.2", "-", "busybox", "2m", "0s"
                ],
                vec!["web2", "lxd", "Stopped", "10.0.0.2", "-", "busybox", "-"],
                vec![
                    "api",
                    "docker",
                    "paused",
                    "-",
                    "-",
                    "busybox:1.36",
                    "3h",
                    "0m"
                ],
                vec!["job", "docker", "exited", "-", "-", "busybox:1.36", "-"],
            ]
        );
    }

    #[test]
    fn a_name_goes_to_the_engine_that_has_it_and_both_is_refused() {
        let api = docker("api", ContainerState::Running);
        assert_eq!(engine_of("web1", None, false, None), Ok(Engine::Lxd));
        assert_eq!(engine_of("web1", None, true, Some(true)), Ok(Engine::Lxd));
        assert_eq!(
            engine_of("nope", None, true, Some(false)),
            Ok(Engine::Lxd),
            "LXD says what is wrong"
        );
        assert_eq!(
            engine_of("api", Some(&api), true, Some(false)),
            Ok(Engine::Docker)
        );
        assert_eq!(engine_of("api", Some(&api), true, None), Ok(Engine::Docker));
        assert_eq!(
            engine_of("api", Some(&api), true, Some(true))
                .unwrap_err()
                .to_string(),
            "\"api\" is an LXD container and a Docker container (000000000000): give \
             --engine lxd or --engine docker"
        );
        assert_eq!(
            engine_of("nope", None, true, None),
            Err(ContainerRefError::NotFound("nope".into()))
        );
    }

    #[test]
    fn image_table_columns() {
        let text = images_table(&[image("abcdef0123456789", &["web", "www"])]);
        assert_eq!(
            text.lines()
                .nth(1)
                .expect("a row")
                .split_whitespace()
                .collect::<Vec<_>>(),
            [
                "web,www",
                "abcdef012345",
                "x86_64",
                "busybox",
                "3.0",
                "MiB",
                "2026-11-22"
            ]
        );
    }
}
