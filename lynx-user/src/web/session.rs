//! Who may use the dashboard: a one-time login token in a root-only file, exchanged for a
//! session cookie; a CSRF token per session; the `Origin` of a state-changing request.
//!
//! - At each start the daemon writes a random login token to a file only its user can read
//!   (mode 0600, created anew with `O_EXCL`/`O_NOFOLLOW` in the daemon's runtime directory,
//!   which the daemon's lock has checked no one else can write). `lynx web` reads it and
//!   prints a login link.
//! - `GET /login?token=` with that token starts a session: an `HttpOnly`, `SameSite=Strict`
//!   cookie, and a redirect so that the token leaves the address bar. The token is then
//!   replaced (in memory and in the file): a link works once.
//! - A session lasts [`SESSION_LIFETIME`]; at most [`MAX_SESSIONS`] are kept, the oldest
//!   dropped first.
//! - A POST must carry the session's CSRF token and an `Origin` naming this host: a page of
//!   another site can neither read the token nor forge the origin.
use std::{
    collections::HashMap,
    fs,
    io::{self, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::AllowedHosts;

/// The session cookie's name.
pub const COOKIE: &str = "lynx_session";
/// How long a session lasts from its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; a login past it ends the oldest.
pub const MAX_SESSIONS: usize = 64;
/// Random bytes in a token (printed as twice as many hex digits).
const TOKEN_BYTES: usize = 32;

/// The login file of the daemon whose lock is `lock_path`: beside it, in the runtime
/// directory the lock has checked.
pub fn login_file(lock_path: &Path) -> PathBuf {
    lock_path.with_extension("login")
}

/// The login link of the server on `listen` whose token is in `file`: a wildcard address
/// reads as loopback's, where the dashboard is served.
pub fn login_link(listen: std::net::SocketAddr, file: &Path) -> io::Result<String> {
    let token = fs::read_to_string(file)?;
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a login token",
        ));
    }
    let ip = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let address = std::net::SocketAddr::new(ip, listen.port());
    Ok(format!("http://{address}/login?token={token}"))
}

/// A fresh random token, hex.
pub fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Replaces `path` with a new file holding `token`, readable by this user alone. The old
/// file is removed first, so that its owner and mode (whatever they were) do not carry
/// over, and the new one is made with `O_EXCL`: a file or link planted in between makes
/// the write fail instead of redirecting it.
pub fn write_login_file(path: &Path, token: &str) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()
}

/// Why a login was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("wrong or already used login token")]
    BadToken,
    #[error("cannot make a session: {0}")]
    Random(String),
}

/// One browser's session.
#[derive(Clone, Debug)]
struct Session {
    csrf: String,
    started: Instant,
}

/// The login token and the live sessions.
#[derive(Debug)]
pub struct Sessions {
    file: PathBuf,
    login: Mutex<String>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Makes a login token and writes it to `file`.
    pub fn start(file: PathBuf) -> io::Result<Self> {
        let login = random_token()?;
        write_login_file(&file, &login)?;
        Ok(Self {
            file,
            login: Mutex::new(login),
            sessions: Mutex::default(),
        })
    }

    /// The login file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Exchanges the login token for a new session (its id, for the cookie) and replaces
    /// the token.
    pub fn login(&self, token: &str, now: Instant) -> Result<String, LoginError> {
        let mut login = self.login.lock().unwrap_or_else(PoisonError::into_inner);
        if login.is_empty() || !same_secret(login.as_bytes(), token.as_bytes()) {
            return Err(LoginError::BadToken);
        }
        let random = |_| random_token().map_err(|e| LoginError::Random(e.to_string()));
        let (id, csrf, next) = (random(0)?, random(1)?, random(2)?);
        // Used once: a link seen by someone else later is worthless. If the file cannot be
        // replaced, no link works until the daemon restarts, rather than the old one.
        *login = match write_login_file(&self.file, &next) {
            Ok(()) => next,
            Err(error) => {
                tracing::error!(file = %self.file.display(), %error, "cannot write a new dashboard login token: no login works until the daemon restarts");
                String::new()
            }
        };
        drop(login);
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, s| now.duration_since(s.started) < SESSION_LIFETIME);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), Session { csrf, started: now });
        Ok(id)
    }

    /// The CSRF token of the live session a `Cookie` header names, if it names one.
    pub fn session(&self, cookie_header: Option<&[u8]>, now: Instant) -> Option<String> {
        let id = session_id(cookie_header?)?;
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up by equality of hex strings from our own random source: a timing
        // difference tells an attacker nothing about a 256-bit value it must match whole.
        let session = sessions.get(id)?;
        (now.duration_since(session.started) < SESSION_LIFETIME).then(|| session.csrf.clone())
    }
}

/// The session id in a `Cookie` header (`a=1; lynx_session=ID; b=2`).
fn session_id(header: &[u8]) -> Option<&str> {
    std::str::from_utf8(header)
        .ok()?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    )
}

/// Whether a request's `Origin` header names this server as the request's `Host` does, by
/// a host it admits: an `http` or `https` origin (no path) whose authority is the `Host`. A
/// missing origin is refused: every browser sends one with a POST, and so can any client.
pub(crate) fn origin_allowed(
    origin: Option<&[u8]>,
    host: Option<&[u8]>,
    hosts: &AllowedHosts,
) -> bool {
    let text = |v: Option<&[u8]>| v.and_then(|v| std::str::from_utf8(v).ok().map(str::to_owned));
    let (Some(origin), Some(host)) = (text(origin), text(host)) else {
        return false;
    };
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    authority.eq_ignore_ascii_case(host.trim()) && hosts.admits(authority.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::test_support::TempDir;

    fn token_in(file: &Path) -> String {
        fs::read_to_string(file)
            .expect("the login file")
            .trim()
            .to_owned()
    }

    #[test]
    fn the_login_token_is_root_only_and_works_once() {
        let dir = TempDir::new("session-once");
        let file = dir.path().join("daemon.login");
        // A file someone left there, readable by all, is replaced, not reused.
        fs::write(&file, "planted\n").expect("plant");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
        let sessions = Sessions::start(file.clone()).expect("start");
        let meta = fs::symlink_metadata(&file).expect("the file");
        assert_eq!(meta.mode() & 0o777, 0o600, "only its owner reads it");
        let token = token_in(&file);
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));

        let now = Instant::now();
        assert_eq!(sessions.login("planted", now), Err(LoginError::BadToken));
        assert_eq!(sessions.login("", now), Err(LoginError::BadToken));
        let id = sessions.login(&token, now).expect("the token logs in");
        assert_eq!(
            sessions.login(&token, now),
            Err(LoginError::BadToken),
            "a used link is worthless"
        );
        let next = token_in(&file);
        assert_ne!(next, token, "a new token for the next `lynx web`");
        let link = login_link("0.0.0.0:9464".parse().expect("addr"), &file).expect("a link");
        assert_eq!(link, format!("http://127.0.0.1:9464/login?token={next}"));

        let cookie = format!("theme=dark; {COOKIE}={id}; other=1");
        let csrf = sessions
            .session(Some(cookie.as_bytes()), now)
            .expect("the cookie names a session");
        assert_eq!(csrf.len(), 2 * TOKEN_BYTES);
        assert_ne!(csrf, id, "the CSRF token is not the cookie");
        assert_eq!(sessions.session(None, now), None);
        assert_eq!(sessions.session(Some(b"lynx_session=forged"), now), None);
        assert_eq!(
            sessions.session(Some(format!("{COOKIE}=").as_bytes()), now),
            None
        );
        assert_eq!(
            sessions.session(Some(cookie.as_bytes()), now + SESSION_LIFETIME),
            None,
            "sessions expire"
        );
        assert!(
            set_cookie(&id).contains("; HttpOnly; SameSite=Strict;"),
            "{}",
            set_cookie(&id)
        );
    }

    #[test]
    fn a_link_planted_for_the_login_file_is_not_followed() {
        let dir = TempDir::new("session-link");
        let target = dir.path().join("elsewhere");
        fs::write(&target, "keep\n").expect("target");
        let file = dir.path().join("daemon.login");
        std::os::unix::fs::symlink(&target, &file).expect("symlink");
        let sessions = Sessions::start(file.clone()).expect("start");
        assert_eq!(fs::read_to_string(&target).expect("target"), "keep\n");
        assert!(
            fs::symlink_metadata(sessions.file())
                .expect("file")
                .is_file()
        );
    }

    #[test]
    fn sessions_are_bounded_oldest_first() {
        let dir = TempDir::new("session-bound");
        let file = dir.path().join("daemon.login");
        let sessions = Sessions::start(file.clone()).expect("start");
        let start = Instant::now();
        let ids: Vec<String> = (0..=MAX_SESSIONS)
            .map(|i| {
                sessions
                    .login(&token_in(&file), start + Duration::from_millis(i as u64))
                    .expect("login")
            })
            .collect();
        let live = |id: &String| {
            sessions
                .session(Some(format!("{COOKIE}={id}").as_bytes()), start)
                .is_some()
        };
        assert!(!live(&ids[0]), "the oldest made room");
        assert!(ids[1..].iter().all(live));
    }

    #[test]
    fn only_this_servers_origin_may_post() {
        let hosts = AllowedHosts::new(&["lynx.example.org".to_owned()]);
        let allowed = |origin: Option<&str>, host: Option<&str>| {
            origin_allowed(origin.map(str::as_bytes), host.map(str::as_bytes), &hosts)
        };
        assert!(allowed(
            Some("http://127.0.0.1:9464"),
            Some("127.0.0.1:9464")
        ));
        assert!(allowed(
            Some("http://localhost:9464"),
            Some("localhost:9464")
        ));
        assert!(allowed(
            Some("https://lynx.example.org"),
            Some("lynx.example.org")
        ));
        assert!(allowed(Some("http://[::1]:9464"), Some("[::1]:9464")));
        for (origin, host) in [
            (None, Some("127.0.0.1:9464")),
            (Some("null"), Some("127.0.0.1:9464")),
            (Some("http://evil.example"), Some("127.0.0.1:9464")),
            (Some("http://evil.example"), Some("evil.example")),
            (Some("http://1.2.3.4"), Some("127.0.0.1:9464")),
            (Some("http://127.0.0.1:9465"), Some("127.0.0.1:9464")),
            (Some("http://127.0.0.1:9464/x"), Some("127.0.0.1:9464")),
            (Some("ftp://127.0.0.1:9464"), Some("127.0.0.1:9464")),
            (Some("http://127.0.0.1:9464"), None),
        ] {
            assert!(!allowed(origin, host), "{origin:?} for Host {host:?}");
        }
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"abc", b"ab"));
    }
}
