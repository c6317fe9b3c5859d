//! The upstream file Lynx owns: rendered from the running backends of each group, with every
//! name checked before it reaches nginx syntax.
//!
//! nginx refuses an `upstream` block with no server, and a group may have no running
//! container. Such a group points at a fallback server on loopback, defined in the same file,
//! that answers every request with `503 Service Unavailable`, so clients get an honest "try
//! again later" rather than a connection error.
use std::{fmt::Write as _, net::SocketAddr};

/// One `upstream` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The upstream's name, as the operator's `proxy_pass http://NAME` uses it.
    pub name: String,
    /// The running backends, in a stable order.
    pub servers: Vec<SocketAddr>,
}

/// Why a file cannot be rendered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("upstream name {0:?} is not a plain nginx name (letters, digits, '_', '-', '.')")]
    BadName(String),
    #[error("upstream {0:?} is declared twice")]
    Duplicate(String),
}

/// The first line of every file Lynx writes: Lynx overwrites only a file that starts with it.
pub const HEADER: &str =
    "# Written by lynx: changes here are overwritten. Running containers are the servers.\n";

/// The whole file for `upstreams`, with the fallback server on `127.0.0.1:fallback_port`.
pub fn render(upstreams: &[Upstream], fallback_port: u16) -> Result<String, RenderError> {
    let mut names: Vec<&str> = Vec::new();
    let mut text = String::from(HEADER);
    for upstream in upstreams {
        if !is_plain_name(&upstream.name) {
            return Err(RenderError::BadName(upstream.name.clone()));
        }
        if names.contains(&upstream.name.as_str()) {
            return Err(RenderError::Duplicate(upstream.name.clone()));
        }
        names.push(&upstream.name);
        let _ = writeln!(text, "upstream {} {{", upstream.name);
        if upstream.servers.is_empty() {
            let _ = writeln!(text, "    # No running container: clients get 503.");
            let _ = writeln!(text, "    server 127.0.0.1:{fallback_port};");
        }
        for server in &upstream.servers {
            let _ = writeln!(text, "    server {server};");
        }
        text.push_str("}\n");
    }
    let _ = writeln!(
        text,
        "server {{\n    listen 127.0.0.1:{fallback_port};\n    return 503;\n}}"
    );
    Ok(text)
}

/// Names that nginx takes as one bare word and that cannot end or open a block.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, servers: &[&str]) -> Upstream {
        Upstream {
            name: name.into(),
            servers: servers
                .iter()
                .map(|s| s.parse().expect("an address"))
                .collect(),
        }
    }

    #[test]
    fn running_backends_are_the_servers() {
        let text =
            render(&[upstream("web", &["10.0.0.2:80", "10.0.0.3:80"])], 9099).expect("renders");
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            [
                "upstream web {",
                "    server 10.0.0.2:80;",
                "    server 10.0.0.3:80;",
                "}",
                "server {",
                "    listen 127.0.0.1:9099;",
                "    return 503;",
                "}",
            ]
        );
    }

    #[test]
    fn an_empty_group_points_at_the_503_fallback() {
        let text = render(
            &[upstream("web", &[]), upstream("api", &["[fd00::2]:8080"])],
            9099,
        )
        .expect("renders");
        assert!(text.contains("upstream web {\n    # No running container: clients get 503.\n    server 127.0.0.1:9099;\n}"), "{text}");
        assert!(text.contains("    server [fd00::2]:8080;"), "{text}");
    }

    #[test]
    fn names_that_could_inject_nginx_syntax_are_refused() {
        for bad in ["", "web; }", "a b", "x{", "name\n", "web#", &"a".repeat(65)] {
            assert_eq!(
                render(&[upstream(bad, &[])], 9099),
                Err(RenderError::BadName(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            render(&[upstream("web", &[]), upstream("web", &[])], 9099),
            Err(RenderError::Duplicate("web".into()))
        );
    }
}
