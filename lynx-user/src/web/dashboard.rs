//! The dashboard's routes: the login, the pages, `/api/v1` and the charts, behind a session;
//! the container and image actions, behind the session, `[web] actions`, the `Origin` and
//! the session's CSRF token. Every action is logged with the peer, the action, its target
//! and the result. LXD is asked on tokio's blocking threads, within a total deadline, so a
//! slow LXD holds up no other client.
use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, UNIX_EPOCH},
};

use axum::{
    Extension, Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use super::{
    AllowedHosts, AppState,
    chart::{self, Series},
    current, page,
    session::{self, Sessions},
};
use crate::{
    lxd::{LxdClient, StateAction},
    manage,
    model::Snapshot,
    sink::history,
    tui::{app::Column, format},
};

/// The page's script and style, embedded: the binary serves every asset itself.
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
/// Header of the CSRF token on a POST.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Only this server's own script, style and requests; no frames, no plugins, no forms to
/// elsewhere. Charts are inline SVG, coloured by attributes, not styles.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";
/// Live samples kept for the charts: ten minutes at the default 1 s interval.
pub const LIVE_LEN: usize = 600;

/// The peer of a connection, for the action log.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// One snapshot's nginx figures: Unix seconds, requests/s, active connections.
pub type LivePoint = (f64, f64, f64);
/// The latest [`LIVE_LEN`] points, oldest first.
pub type Live = Arc<Mutex<VecDeque<LivePoint>>>;

/// Adds `snapshot`'s figures to `live`.
pub fn record(live: &Live, snapshot: &Snapshot) {
    let Some(at) = format::parse_timestamp(&snapshot.host.timestamp)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
    else {
        return;
    };
    let mut live = live.lock().unwrap_or_else(PoisonError::into_inner);
    if live.len() == LIVE_LEN {
        live.pop_front();
    }
    live.push_back((
        at.as_secs_f64(),
        snapshot.nginx.requests_per_s,
        snapshot.nginx.active as f64,
    ));
}

/// What the dashboard needs besides the snapshot.
#[derive(Debug)]
pub(crate) struct Dashboard {
    pub(crate) sessions: Sessions,
    pub(crate) hosts: Arc<AllowedHosts>,
    /// `[web] actions`: whether POSTs may change anything.
    pub(crate) actions: bool,
    pub(crate) lxd_sockets: Vec<PathBuf>,
    pub(crate) history_path: Option<PathBuf>,
    /// The most an action may take in all, within the connection's own timeout.
    pub(crate) deadline: Duration,
}

/// The dashboard's routes (with `state.dashboard` set; without it they answer 404).
pub(crate) fn routes(state: AppState) -> Router<AppState> {
    let behind_login = Router::new()
        .route("/", get(overview_page))
        .route("/containers/{name}", get(container_page))
        .route("/images", get(images_page))
        .route("/history", get(history_page))
        .route("/chart/{which}", get(chart_svg))
        .route("/api/v1/snapshot", get(api_snapshot))
        .route("/api/v1/containers/{name}", get(api_container))
        .route("/api/v1/containers/{name}/{action}", post(container_action))
        .route("/api/v1/images/{fingerprint}/delete", post(image_delete))
        .route_layer(middleware::from_fn_with_state(state, require_session));
    Router::new()
        .route("/login", get(login))
        .route("/assets/app.js", get(|| asset("text/javascript", APP_JS)))
        .route("/assets/style.css", get(|| asset("text/css", STYLE_CSS)))
        .merge(behind_login)
        .layer(middleware::map_response(secure_headers))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Headers of every dashboard answer: the policy, no sniffing, no referrer (the login link
/// carries a token), no caching of pages that hold figures and the CSRF token.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn plain(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// The dashboard, or 404 when it is off.
fn dashboard(state: &AppState) -> Result<&Arc<Dashboard>, Response> {
    state
        .dashboard
        .as_ref()
        .ok_or_else(|| plain(StatusCode::NOT_FOUND, "the dashboard is off\n"))
}

/// A logged-in request: the dashboard, and the CSRF token of its session.
#[derive(Clone, Debug)]
struct LoggedIn {
    dashboard: Arc<Dashboard>,
    csrf: String,
}

/// Lets a request with a live session's cookie through, with [`LoggedIn`]; answers 401 to
/// any other.
async fn require_session(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let dashboard = match dashboard(&state) {
        Ok(d) => Arc::clone(d),
        Err(response) => return response,
    };
    let cookie = request
        .headers()
        .get(header::COOKIE)
        .map(HeaderValue::as_bytes);
    let Some(csrf) = dashboard.sessions.session(cookie, Instant::now()) else {
        return plain(
            StatusCode::UNAUTHORIZED,
            "not logged in: open the login link `lynx web` prints (as root, on the daemon's host)\n",
        );
    };
    request
        .extensions_mut()
        .insert(LoggedIn { dashboard, csrf });
    next.run(request).await
}

fn no_snapshot() -> Response {
    plain(StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet\n")
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    token: String,
}

async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<Peer>>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let dashboard = match dashboard(&state) {
        Ok(d) => d,
        Err(response) => return response,
    };
    let peer = peer_text(peer.as_ref());
    match dashboard.sessions.login(&query.token, Instant::now()) {
        Ok(id) => {
            tracing::info!(%peer, "dashboard: login");
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_owned()),
                    (header::SET_COOKIE, session::set_cookie(&id)),
                ],
            )
                .into_response()
        }
        Err(error) => {
            tracing::warn!(%peer, "dashboard: login refused: {error}");
            plain(
                StatusCode::FORBIDDEN,
                format!("{error}: run `lynx web` for a new login link\n"),
            )
        }
    }
}

#[derive(Deserialize)]
struct SortQuery {
    sort: Option<char>,
    #[serde(default)]
    desc: u8,
}

impl SortQuery {
    fn column(&self) -> Column {
        self.sort.and_then(Column::from_key).unwrap_or(Column::Name)
    }
}

/// The request and connection charts of the live samples.
fn charts(state: &AppState) -> String {
    ["requests", "active"]
        .iter()
        .map(|which| {
            format!(
                "<figure id=\"chart-{which}\">{}</figure>",
                chart(state, which).unwrap_or_default()
            )
        })
        .collect()
}

fn chart(state: &AppState, which: &str) -> Option<String> {
    let live = state.live.lock().unwrap_or_else(PoisonError::into_inner);
    let (title, unit, colour, pick): (_, _, _, fn(&LivePoint) -> f64) = match which {
        "requests" => ("nginx requests per second", "req/s", "#1f6fb4", |p| p.1),
        "active" => ("nginx active connections", "conns", "#c0392b", |p| p.2),
        _ => return None,
    };
    let points: Vec<(f64, f64)> = live.iter().map(|p| (p.0, pick(p))).collect();
    drop(live);
    Some(chart::render(&Series {
        title,
        unit,
        colour,
        points: &points,
    }))
}

async fn overview_page(
    State(state): State<AppState>,
    Extension(user): Extension<LoggedIn>,
    Query(query): Query<SortQuery>,
) -> Response {
    let Some(snapshot) = current(&state.latest) else {
        return no_snapshot();
    };
    let overview = page::overview(&snapshot, query.column(), query.desc == 1);
    let body = page::overview_html(&overview, &charts(&state));
    Html(page::layout("Overview", "overview", &user.csrf, &body)).into_response()
}

async fn api_snapshot(State(state): State<AppState>, Query(query): Query<SortQuery>) -> Response {
    let Some(snapshot) = current(&state.latest) else {
        return no_snapshot();
    };
    Json(page::overview(&snapshot, query.column(), query.desc == 1)).into_response()
}

async fn chart_svg(State(state): State<AppState>, Path(which): Path<String>) -> Response {
    let which = which.strip_suffix(".svg").unwrap_or(&which);
    match chart(&state, which) {
        Some(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        None => plain(
            StatusCode::NOT_FOUND,
            "no such chart: try requests or active\n",
        ),
    }
}

async fn container_page(
    State(state): State<AppState>,
    Extension(user): Extension<LoggedIn>,
    Path(name): Path<String>,
) -> Response {
    let Some(snapshot) = current(&state.latest) else {
        return no_snapshot();
    };
    let Some(container) = snapshot.containers.iter().find(|c| c.name == name) else {
        return plain(StatusCode::NOT_FOUND, format!("no container {name:?}\n"));
    };
    let body = page::container_html(&snapshot, container, user.dashboard.actions);
    Html(page::layout(&name, "container", &user.csrf, &body)).into_response()
}

async fn api_container(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(snapshot) = current(&state.latest) else {
        return no_snapshot();
    };
    match snapshot.containers.iter().find(|c| c.name == name) {
        Some(container) => Json(page::container_fields(&snapshot, container)).into_response(),
        None => plain(StatusCode::NOT_FOUND, format!("no container {name:?}\n")),
    }
}

/// Runs `work` (blocking LXD calls) on a blocking thread within `deadline`.
async fn within<T: Send + 'static>(
    deadline: Duration,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(format!("the action failed: {join}")),
        Err(_) => Err(format!(
            "LXD did not finish within {deadline:?}; it may still be carrying the action out"
        )),
    }
}

fn lxd(sockets: &[PathBuf]) -> Result<LxdClient, String> {
    LxdClient::discover(sockets).ok_or_else(|| "no LXD socket answers".to_owned())
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

/// The history page: nginx's requests per second a minute over `?range=` (`1h`, `24h`,
/// `7d`), and the daily minimum and maximum of running containers over 7 days, from the
/// history database `lynx history` reads.
async fn history_page(
    Extension(LoggedIn { dashboard, csrf }): Extension<LoggedIn>,
    Query(query): Query<RangeQuery>,
) -> Response {
    let (range, span) = match query.range.as_deref().unwrap_or("1h") {
        "24h" => ("24h", 86_400),
        "7d" => ("7d", 7 * 86_400),
        _ => ("1h", 3600),
    };
    let Some(path) = dashboard.history_path.clone() else {
        return plain(StatusCode::NOT_FOUND, "no history database\n");
    };
    let now = crate::sink::history::system_clock();
    let read = within(dashboard.deadline, move || {
        let minutes = history::nginx_minutes(&path, now - span).map_err(|e| e.to_string())?;
        let days = history::daily_summary(&path, 7, now).map_err(|e| e.to_string())?;
        Ok((minutes, days))
    })
    .await;
    let body = match read {
        Ok((minutes, days)) => {
            let points: Vec<(f64, f64)> = minutes.iter().map(|&(t, v)| (t as f64, v)).collect();
            let chart = chart::render(&Series {
                title: "nginx requests per second, average of each minute",
                unit: "req/s",
                colour: "#1f6fb4",
                points: &points,
            });
            page::history_html(range, &chart, &days)
        }
        Err(error) => format!(
            "<h1>History</h1><p id=\"message\">{}</p>",
            page::escape(&error)
        ),
    };
    Html(page::layout("History", "history", &csrf, &body)).into_response()
}

async fn images_page(Extension(LoggedIn { dashboard, csrf }): Extension<LoggedIn>) -> Response {
    let sockets = dashboard.lxd_sockets.clone();
    let listed = within(dashboard.deadline, move || {
        lxd(&sockets)?.images().map_err(|e| e.to_string())
    })
    .await;
    let body = match listed {
        Ok(images) => page::images_html(&images, dashboard.actions),
        Err(error) => format!(
            "<h1>Images</h1><p id=\"message\">{}</p>",
            page::escape(&error)
        ),
    };
    Html(page::layout("Images", "images", &csrf, &body)).into_response()
}

/// The answer to an action.
#[derive(Debug, Serialize)]
struct Outcome {
    ok: bool,
    message: String,
}

fn peer_text(peer: Option<&Extension<Peer>>) -> String {
    peer.map_or_else(|| "-".to_owned(), |p| p.0.0.to_string())
}

/// Whether a POST of a logged-in user may act: actions on, this server's `Origin`, the session's
/// CSRF token. The refusal says which failed; nothing has been done.
fn authorise(user: LoggedIn, headers: &HeaderMap) -> Result<Arc<Dashboard>, Response> {
    let LoggedIn { dashboard, csrf } = user;
    let forbidden = |why: &str| Err(plain(StatusCode::FORBIDDEN, format!("forbidden: {why}\n")));
    if !dashboard.actions {
        return forbidden("actions are off ([web] actions = false)");
    }
    let origin = headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    if !session::origin_allowed(origin, host, &dashboard.hosts) {
        return forbidden("the Origin is not this server's");
    }
    let given = headers
        .get(CSRF_HEADER)
        .map_or(&[][..], HeaderValue::as_bytes);
    if !session::same_secret(given, csrf.as_bytes()) {
        return forbidden("missing or wrong CSRF token; reload the page");
    }
    Ok(dashboard)
}

/// Logs an action and answers with its outcome.
fn outcome(peer: &str, action: &str, target: &str, result: Result<String, String>) -> Response {
    match result {
        Ok(message) => {
            tracing::info!(%peer, action, target, result = %message, "dashboard action");
            Json(Outcome { ok: true, message }).into_response()
        }
        Err(message) => {
            tracing::warn!(%peer, action, target, result = %message, "dashboard action failed");
            (
                StatusCode::BAD_GATEWAY,
                Json(Outcome { ok: false, message }),
            )
                .into_response()
        }
    }
}

/// Logs a refused action and passes the refusal on.
fn refused(peer: &str, action: &str, target: &str, response: Response) -> Response {
    tracing::warn!(%peer, action, target, result = %response.status(), "dashboard action refused");
    response
}

async fn container_action(
    Extension(user): Extension<LoggedIn>,
    Path((name, action)): Path<(String, String)>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let peer = peer_text(peer.as_ref());
    let dashboard = match authorise(user, &headers) {
        Ok(d) => d,
        Err(response) => return refused(&peer, &action, &name, response),
    };
    let change = match action.as_str() {
        "start" => StateAction::Start,
        "stop" => StateAction::Stop { force: false },
        "restart" => StateAction::Restart { force: false },
        "freeze" => StateAction::Freeze,
        "unfreeze" => StateAction::Unfreeze,
        _ => {
            let response = plain(StatusCode::NOT_FOUND, format!("no action {action:?}\n"));
            return refused(&peer, &action, &name, response);
        }
    };
    let (sockets, deadline, target) = (
        dashboard.lxd_sockets.clone(),
        dashboard.deadline,
        name.clone(),
    );
    let result = within(deadline, move || {
        let lxd = lxd(&sockets)?;
        // A clean shutdown gets what is left of the deadline.
        lxd.change_state(&target, change, deadline)
            .map_err(|e| e.to_string())?;
        let status = lxd.instance_state(&target).map_err(|e| e.to_string())?;
        Ok(format!("{target}: {}", status.status.as_str()))
    })
    .await;
    outcome(&peer, &action, &name, result)
}

async fn image_delete(
    Extension(user): Extension<LoggedIn>,
    Path(fingerprint): Path<String>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let peer = peer_text(peer.as_ref());
    let dashboard = match authorise(user, &headers) {
        Ok(d) => d,
        Err(response) => return refused(&peer, "delete image", &fingerprint, response),
    };
    let (sockets, target) = (dashboard.lxd_sockets.clone(), fingerprint.clone());
    let result = within(dashboard.deadline, move || {
        let lxd = lxd(&sockets)?;
        let images = lxd.images().map_err(|e| e.to_string())?;
        let found = manage::resolve_image(&images, &target).map_err(|e| e.to_string())?;
        let instances = lxd.instances().map_err(|e| e.to_string())?;
        manage::check_unused(found, &target, &instances).map_err(|e| e.to_string())?;
        lxd.delete_image(&found.fingerprint)
            .map_err(|e| e.to_string())?;
        Ok(format!("deleted image {}", found.fingerprint))
    })
    .await;
    outcome(&peer, "delete image", &fingerprint, result)
}

#[cfg(test)]
mod tests;
