//! `lynx containers` and `lynx images`: operators' actions on LXD. The LXD client does the
//! talking; this module holds what is decided here (which image a reference names, whether
//! it is in use) and how lists are shown, as plain functions.
use std::time::SystemTime;

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::lxd::{Image, Instance, InstanceStatus};

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

/// `lynx containers list`: name, status, IPv4, IPv6, image, uptime.
pub fn containers_table(instances: &[Instance], now: SystemTime) -> String {
    let rows = instances.iter().map(|i| {
        let uptime = match (&i.status, &i.last_used_at) {
            (InstanceStatus::Running | InstanceStatus::Frozen, Some(started)) => {
                since(started, now)
            }
            _ => "-".to_owned(),
        };
        vec![
            i.name.clone(),
            i.status.as_str().to_owned(),
            join_or_dash(i.ipv4.iter().map(ToString::to_string)),
            join_or_dash(i.ipv6.iter().map(ToString::to_string)),
            i.image.clone().unwrap_or_else(|| "-".into()),
            uptime,
        ]
    });
    table(&["NAME", "STATUS", "IPV4", "IPV6", "IMAGE", "UPTIME"], rows)
}

/// `lynx images list`: alias, fingerprint, architecture, description, size, upload date.
pub fn images_table(images: &[Image]) -> String {
    let rows = images.iter().map(|i| {
        vec![
            join_or_dash(i.aliases.iter().cloned()),
            short(&i.fingerprint),
            i.architecture.clone(),
            i.description.clone().unwrap_or_else(|| "-".into()),
            format!("{:.1} MiB", i.size as f64 / (1024.0 * 1024.0)),
            i.uploaded_at.get(..10).unwrap_or(&i.uploaded_at).to_owned(),
        ]
    });
    table(
        &[
            "ALIAS",
            "FINGERPRINT",
            "ARCH",
            "DESCRIPTION",
            "SIZE",
            "UPLOADED",
        ],
        rows,
    )
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

/// "3d 4h", "2h 5m", "7m 3s" since an RFC 3339 time; "-" if it does not parse.
fn since(rfc3339: &str, now: SystemTime) -> String {
    let Ok(then) = OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return "-".into();
    };
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

    #[test]
    fn container_table_shows_uptime_for_running_ones() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_320_000); // 2026-11-22T04:00Z
        let text = containers_table(
            &[
                instance("web1", "a", InstanceStatus::Running),
                instance("web2", "a", InstanceStatus::Stopped),
            ],
            now,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "STATUS", "IPV4", "IPV6", "IMAGE", "UPTIME"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["web1", "Running", "10.0.0.2", "-", "busybox", "2m", "0s"]
        );
        assert!(
            lines[2].ends_with('-'),
            "a stopped container has no uptime: {}",
            lines[2]
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
