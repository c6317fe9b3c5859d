//! The daemon's HTTP server: `GET /metrics` (Prometheus text format, rendered by
//! [`crate::sink::prometheus`]) and `GET /snapshot` (the JSON document), both from the latest
//! snapshot, on `[web] listen`.
//!
//! axum's router on hyper's HTTP/1 server, on a tokio runtime of a thread of its own:
//! [`WebServer::publish`] only swaps in the new snapshot, so collection never waits for a
//! client, and clients never wait for each other. A request renders what it asks for from
//! the snapshot current when it arrives, so `/metrics` and `/snapshot` fetched within one
//! interval describe the same moment.
//!
//! Every client is an untrusted local user, or a web page in a browser on the host:
//! - at most `max_connections` connections at once (tokio's semaphore); more are closed at
//!   once;
//! - each connection serves one request and has `timeout` in all: hyper's header read
//!   timeout for the request head, and tokio's timeout around the whole exchange, so a client
//!   that sends slowly or reads slowly is cut off;
//! - request bodies are refused past a few kilobytes (tower-http's limit);
//! - the `Host` header must name this host: loopback names, an IP address, or a name in
//!   `[web] allowed_hosts`. A page from another site that makes its name resolve to
//!   127.0.0.1 (DNS rebinding) still sends its own name, and gets 403.
//!
//! An address another process holds is not fatal: the server names the holder in the log
//! and tries again every [`RETRY`], while collection and control go on.
//!
//! The dashboard ([`dashboard`]: pages, `/api/v1`, charts) is served beside them, behind the
//! same checks and a session ([`session`]), on a loopback address only: it has no TLS, so a
//! non-loopback `listen` serves `/metrics` and `/snapshot` alone.
pub mod chart;
pub mod dashboard;
pub mod holder;
pub mod page;
pub mod session;

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::Duration,
};

use axum::{
    Extension, Router,
    extract::{FromRef, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Semaphore, watch},
};
use tower_http::limit::RequestBodyLimitLayer;

use self::dashboard::{Dashboard, Live, Peer};
use crate::{
    model::Snapshot,
    sink::{
        Sink,
        prometheus::{METRICS_CONTENT_TYPE, render},
    },
};

/// How often an address another process holds is tried again.
pub const RETRY: Duration = Duration::from_secs(10);
/// Largest request body accepted: the endpoints take none.
const MAX_BODY: usize = 16 * 1024;
/// Largest request head read (hyper answers 431 past it); scrapers send a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;

/// How the server runs (`[web]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebOptions {
    pub listen: SocketAddr,
    /// Host names accepted in `Host` besides loopback names and IP addresses.
    pub allowed_hosts: Vec<String>,
    /// Connections served at once.
    pub max_connections: usize,
    /// The longest a connection may last: reading the request, answering, the client reading
    /// the answer.
    pub timeout: Duration,
    /// How often an address another process holds is tried again ([`RETRY`]).
    pub retry: Duration,
    /// `[web] actions`: whether the dashboard may start, stop and freeze containers and
    /// delete images.
    pub actions: bool,
    /// Where the dashboard's login token is written; `None`: no dashboard.
    pub login_file: Option<PathBuf>,
    /// LXD's sockets, for the dashboard's actions and images.
    pub lxd_sockets: Vec<PathBuf>,
    /// The history database, for the dashboard's history page.
    pub history_path: Option<PathBuf>,
}

impl WebOptions {
    /// These options with the dashboard on: its login token written to `login_file`, LXD
    /// reached through `lxd_sockets`, history read from `history_path`.
    pub fn with_dashboard(
        self,
        login_file: PathBuf,
        lxd_sockets: Vec<PathBuf>,
        history_path: PathBuf,
    ) -> Self {
        Self {
            login_file: Some(login_file),
            lxd_sockets,
            history_path: Some(history_path),
            ..self
        }
    }
}

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot start the HTTP server's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start the HTTP server's thread: {0}")]
    Thread(std::io::Error),
}

/// The latest snapshot, shared with the server; `None` until the first one.
pub(crate) type Latest = Arc<Mutex<Option<Arc<Snapshot>>>>;

/// What the routes read: the latest snapshot, the live chart samples, the dashboard (`None`
/// when it is off).
#[derive(Clone)]
pub(crate) struct AppState {
    latest: Latest,
    live: Live,
    dashboard: Option<Arc<Dashboard>>,
}

impl AppState {
    /// Serving `latest`, without the dashboard.
    pub(crate) fn new(latest: Latest) -> Self {
        Self {
            latest,
            live: Live::default(),
            dashboard: None,
        }
    }
}

impl FromRef<AppState> for Latest {
    fn from_ref(state: &AppState) -> Self {
        state.latest.clone()
    }
}

/// The running server. Dropping it stops it and joins its thread.
pub struct WebServer {
    latest: Latest,
    live: Live,
    local_addr: Arc<Mutex<Option<SocketAddr>>>,
    stop: watch::Sender<bool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl WebServer {
    /// Listens on `options.listen` (port 0 picks a free one) and serves; when the address
    /// cannot be had, says why (and who holds it) and keeps trying every [`RETRY`].
    pub fn start(options: WebOptions) -> Result<Self, WebError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(WebError::Runtime)?;
        // Tried here first, so that the caller learns the address at once when it is free.
        let mut failure = String::new();
        let listener = bind(options.listen, options.retry, &mut failure).ok();
        let local_addr = Arc::new(Mutex::new(
            listener.as_ref().and_then(|l| l.local_addr().ok()),
        ));
        let latest = Latest::default();
        let live = Live::default();
        let (stop, stopped) = watch::channel(false);
        let thread = thread::Builder::new()
            .name("lynx-web".into())
            .spawn({
                let state = AppState {
                    live: live.clone(),
                    ..AppState::new(latest.clone())
                };
                let local_addr = local_addr.clone();
                move || {
                    let bound = Bound { listener, failure };
                    runtime.block_on(run(options, bound, state, local_addr, stopped));
                }
            })
            .map_err(WebError::Thread)?;
        Ok(Self {
            latest,
            live,
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port chosen when asked for port 0); `None` while the
    /// address is taken.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self
            .local_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Sink for WebServer {
    fn publish(&mut self, snapshot: &Snapshot) {
        dashboard::record(&self.live, snapshot);
        let snapshot = Arc::new(snapshot.clone());
        // A poisoned lock only means a request panicked mid-read: the slot is intact.
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the HTTP server's thread panicked");
        }
    }
}

/// Binds `address`; logs a failure unless it is the same as `last`, which it then becomes.
fn bind(address: SocketAddr, retry: Duration, last: &mut String) -> std::io::Result<TcpListener> {
    let result = TcpListener::bind(address).and_then(|listener| {
        // tokio needs it non-blocking.
        listener.set_nonblocking(true)?;
        Ok(listener)
    });
    if let Err(error) = &result {
        let holder = match error.kind() {
            std::io::ErrorKind::AddrInUse => holder::describe(address),
            _ => String::new(),
        };
        let message = format!("{error}{holder}");
        if *last != message {
            tracing::error!(
                "cannot listen on {address}: {message}; /metrics and /snapshot are not served \
                 until it can (tried again every {retry:?}), collection and control go on"
            );
            *last = message;
        }
    }
    result
}

/// The first try at the address: the listener, or why there is none (logged already).
struct Bound {
    listener: Option<TcpListener>,
    failure: String,
}

/// The server thread: gets the address (trying again while another process holds it), then
/// serves until told to stop.
async fn run(
    options: WebOptions,
    bound: Bound,
    mut state: AppState,
    local_addr: Arc<Mutex<Option<SocketAddr>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match bound.listener {
        Some(listener) => listener,
        None => {
            let mut last = bound.failure;
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    () = tokio::time::sleep(options.retry) => {}
                }
                if let Ok(listener) = bind(options.listen, options.retry, &mut last) {
                    break listener;
                }
            }
        }
    };
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!("cannot serve on {}: {error}", options.listen);
            return;
        }
    };
    let address = listener.local_addr().ok();
    *local_addr.lock().unwrap_or_else(PoisonError::into_inner) = address;
    if let Some(address) = address {
        tracing::info!("serving http://{address}/metrics and http://{address}/snapshot");
    }
    state.dashboard = start_dashboard(&options, address);
    let app = router(state, &options);
    let limit = Arc::new(Semaphore::new(options.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: say so, and do not spin.
                    tracing::warn!("HTTP server: cannot accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP server: {} connections open, closing one more", options.max_connections);
            continue;
        };
        // The peer, for the dashboard's action log.
        let app = app.clone().layer(Extension(Peer(peer)));
        let timeout = options.timeout;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(why) = serve_connection(stream, app, timeout).await {
                tracing::debug!(%peer, "HTTP server: {why}");
            }
        });
    }
}

/// Serves one request on `io`, all of it within `timeout`.
pub(crate) async fn serve_connection(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    app: Router,
    timeout: Duration,
) -> Result<(), String> {
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    match tokio::time::timeout(timeout, connection).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("cut off after {timeout:?}")),
    }
}

/// The dashboard, when it is configured and the server listens on loopback: makes its
/// login token. `None` (said in the log) otherwise.
fn start_dashboard(options: &WebOptions, address: Option<SocketAddr>) -> Option<Arc<Dashboard>> {
    let login_file = options.login_file.clone()?;
    if !options.listen.ip().is_loopback() {
        tracing::warn!(
            "the dashboard is not served on {}: it has no TLS, so it is served on loopback \
             addresses only (reach it through `ssh -L`)",
            options.listen
        );
        return None;
    }
    let sessions = match session::Sessions::start(login_file) {
        Ok(sessions) => sessions,
        Err(error) => {
            tracing::error!(
                file = %options.login_file.as_deref().unwrap_or(std::path::Path::new("")).display(),
                %error,
                "cannot write the dashboard's login token: the dashboard is off"
            );
            return None;
        }
    };
    if let Some(address) = address {
        tracing::info!(
            actions = options.actions,
            "dashboard on http://{address}/ (`lynx web` prints the login link)"
        );
    }
    Some(Arc::new(Dashboard {
        sessions,
        hosts: Arc::new(AllowedHosts::new(&options.allowed_hosts)),
        actions: options.actions,
        lxd_sockets: options.lxd_sockets.clone(),
        history_path: options.history_path.clone(),
        // Within the connection's own timeout, so the answer still reaches the page.
        deadline: options
            .timeout
            .saturating_sub(Duration::from_secs(1))
            .max(Duration::from_secs(1)),
    }))
}

/// The routes, behind the Host check and the body limit.
pub(crate) fn router(state: AppState, options: &WebOptions) -> Router {
    let hosts = Arc::new(AllowedHosts::new(&options.allowed_hosts));
    let mut routes = Router::new()
        .route("/metrics", get(metrics))
        .route("/snapshot", get(snapshot));
    if state.dashboard.is_some() {
        routes = routes.merge(dashboard::routes(state.clone()));
    }
    routes
        .fallback(not_found)
        .with_state(state)
        .layer(middleware::from_fn_with_state(hosts, check_host))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
}

/// The snapshot current now, cloned out so that no lock is held while rendering.
fn current(latest: &Latest) -> Option<Arc<Snapshot>> {
    latest
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn no_snapshot_yet() -> Response {
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet\n");
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

async fn metrics(State(latest): State<Latest>) -> Response {
    let Some(snapshot) = current(&latest) else {
        return no_snapshot_yet();
    };
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        render(&snapshot),
    )
        .into_response()
}

async fn snapshot(State(latest): State<Latest>) -> Response {
    let Some(snapshot) = current(&latest) else {
        return no_snapshot_yet();
    };
    match serde_json::to_vec_pretty(&*snapshot) {
        Ok(mut body) => {
            body.push(b'\n');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(error) => {
            tracing::warn!("HTTP server: cannot serialise the snapshot: {error}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot serialise the snapshot\n",
            )
        }
    }
}

async fn not_found() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "not found: try /metrics or /snapshot\n",
    )
}

/// Refuses a request whose `Host` names a host this server does not know itself as.
async fn check_host(
    State(hosts): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    // HTTP/1.0 clients may send none; every browser sends one.
    let host = request
        .headers()
        .get(header::HOST)
        .map(HeaderValue::as_bytes);
    if host.is_some_and(|host| !hosts.admits(host)) {
        return text(
            StatusCode::FORBIDDEN,
            "forbidden: this Host is not one of the daemon's (see [web] allowed_hosts)\n",
        );
    }
    next.run(request).await
}

/// The names a `Host` header may carry.
#[derive(Debug)]
pub(crate) struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    pub(crate) fn new(configured: &[String]) -> Self {
        Self {
            names: configured.iter().map(|n| normalise(n).to_owned()).collect(),
        }
    }

    /// Whether `host` (a `Host` header's value: a name or address, and maybe a port) is
    /// loopback's name, an IP address, or a configured name. An IP address cannot be a
    /// rebound name: a browser sends one only when its user typed it.
    pub(crate) fn admits(&self, host: &[u8]) -> bool {
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        let name = strip_port(host.trim());
        if name.is_empty() {
            return false;
        }
        let unbracketed = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if unbracketed.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normalise(name);
        name == "localhost" || self.names.contains(&name)
    }
}

/// `example.org` of `Example.ORG.`: names compare without case or a final dot.
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The host part of `host[:port]` or `[v6]:port`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        // More than one colon: a bare IPv6 address, no port.
        Some((name, _)) if !name.contains(':') => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests;
