//! The dashboard's HTML, rendered from the snapshot with the figures `lynx top` shows (its
//! columns and cells, [`Column`]), and the same figures as JSON for the page's refresh.
//! Every text that comes from outside (names, LXD's words) is escaped; the pages load only
//! the embedded `/assets/` script and style, as the Content-Security-Policy demands.
use std::fmt::Write;

use serde::Serialize;

use crate::{
    lxd::Image,
    manage,
    model::{Container, Snapshot},
    sink::history::DaySummary,
    tui::{app::Column, format},
};

/// `text` safe in HTML text and in a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One labelled figure of a panel; `key` names it for the page's refresh.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Field {
    pub key: String,
    pub label: String,
    pub value: String,
}

fn field(key: impl Into<String>, label: impl Into<String>, value: impl Into<String>) -> Field {
    Field {
        key: key.into(),
        label: label.into(),
        value: value.into(),
    }
}

/// The container table's row: its name and its cells in [`Column::ALL`] order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    pub cells: Vec<String>,
}

/// What the overview shows, as `/api/v1/snapshot` sends it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Overview {
    pub timestamp: String,
    pub fields: Vec<Field>,
    pub columns: Vec<&'static str>,
    /// The key of each column (`?sort=`).
    pub sort_keys: Vec<char>,
    pub rows: Vec<Row>,
}

/// The host, nginx and group figures.
pub fn fields(snapshot: &Snapshot) -> Vec<Field> {
    let host = &snapshot.host;
    let nginx = &snapshot.nginx;
    let mut fields = vec![
        field("host.cpu", "CPU", format::percent(host.cpu_percent)),
        field(
            "host.memory",
            "Memory used",
            format!(
                "{} of {}",
                format::mebibytes(host.memory_used_mb),
                format::mebibytes(host.memory_total_mb)
            ),
        ),
        field(
            "host.containers",
            "Running / stopped / frozen",
            format!(
                "{} / {} / {}",
                host.containers_running, host.containers_stopped, host.containers_frozen
            ),
        ),
        field(
            "host.lxd",
            "LXD",
            if host.lxd_available {
                "answers"
            } else {
                "not answering"
            },
        ),
        field(
            "nginx.active",
            "Active connections",
            nginx.active.to_string(),
        ),
        field(
            "nginx.rps",
            "Requests/s (last interval, 10 s)",
            format!(
                "{:.1}, {:.1}",
                nginx.requests_per_s, nginx.requests_per_s_10s
            ),
        ),
        field("nginx.requests", "Requests", nginx.requests.to_string()),
        field("nginx.accepts", "Accepts", nginx.accepts.to_string()),
    ];
    for group in &snapshot.groups {
        let key = |what: &str| format!("group.{}.{what}", group.name);
        fields.push(field(
            key("members"),
            format!("Group {} (upstream {})", group.name, group.upstream),
            format!(
                "{} running, {} frozen, {} stopped; serving {}",
                group.running,
                group.frozen,
                group.stopped,
                if group.servers.is_empty() {
                    "none (503 fallback)".to_owned()
                } else {
                    group.servers.join(", ")
                }
            ),
        ));
        if let Some(autoscaler) = &group.autoscaler {
            let last = autoscaler.last_action.as_ref().map_or_else(
                || "no scale action yet".to_owned(),
                |a| {
                    format!(
                        "{} at {}: {} -> {} ({})",
                        a.direction, a.at, a.from, a.to, a.reason
                    )
                },
            );
            fields.push(field(
                key("autoscaler"),
                format!("Autoscaler of {}", group.name),
                format!(
                    "{}{}, {}..{}; last: {last}",
                    autoscaler.state,
                    if autoscaler.dry_run { " (dry run)" } else { "" },
                    autoscaler.min,
                    autoscaler.max
                ),
            ));
        }
    }
    fields
}

/// The overview of `snapshot`, its rows sorted by `sort` as `lynx top` sorts them.
pub fn overview(snapshot: &Snapshot, sort: Column, descending: bool) -> Overview {
    let mut containers: Vec<&Container> = snapshot.containers.iter().collect();
    containers.sort_by(|a, b| {
        let order = sort.compare(a, b).then_with(|| a.name.cmp(&b.name));
        if descending { order.reverse() } else { order }
    });
    Overview {
        timestamp: snapshot.host.timestamp.clone(),
        fields: fields(snapshot),
        columns: Column::ALL.iter().map(|c| c.title()).collect(),
        sort_keys: Column::ALL.iter().map(|c| c.key()).collect(),
        rows: containers
            .into_iter()
            .map(|c| Row {
                name: c.name.clone(),
                cells: Column::ALL.iter().map(|column| column.cell(c)).collect(),
            })
            .collect(),
    }
}

/// The page around `body`: the embedded style and script, the CSRF token for the script.
pub fn layout(title: &str, page: &str, csrf: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf-token\" content=\"{csrf}\">\
         <title>{title} - Lynx</title>\
         <link rel=\"stylesheet\" href=\"/assets/style.css\">\
         <script src=\"/assets/app.js\" defer></script></head>\
         <body data-page=\"{page}\"><header><a href=\"/\">Lynx</a> <a href=\"/history\">History</a> <a href=\"/images\">Images</a>\
         <span id=\"updated\"></span></header><main>{body}</main></body></html>\n",
        csrf = escape(csrf),
        title = escape(title),
        page = escape(page),
    )
}

fn fields_html(fields: &[Field]) -> String {
    let mut html = String::from("<dl class=\"fields\">");
    for f in fields {
        let _ = write!(
            html,
            "<dt>{}</dt><dd data-field=\"{}\">{}</dd>",
            escape(&f.label),
            escape(&f.key),
            escape(&f.value)
        );
    }
    html.push_str("</dl>");
    html
}

/// The overview page: panels, the request and connection charts, the container table.
pub fn overview_html(overview: &Overview, charts: &str) -> String {
    let mut html = format!(
        "<h1>Host</h1>{}<section id=\"charts\">{charts}</section><h2>Containers</h2>\
         <table id=\"containers\"><thead><tr>",
        fields_html(&overview.fields)
    );
    for (title, key) in overview.columns.iter().zip(&overview.sort_keys) {
        let _ = write!(
            html,
            "<th><a href=\"/?sort={key}\" data-sort=\"{key}\">{}</a></th>",
            escape(title)
        );
    }
    html.push_str("</tr></thead><tbody>");
    for row in &overview.rows {
        let _ = write!(html, "<tr data-name=\"{}\">", escape(&row.name));
        for (i, cell) in row.cells.iter().enumerate() {
            match i {
                0 => {
                    let _ = write!(
                        html,
                        "<td><a href=\"/containers/{}\">{}</a></td>",
                        escape(&url_segment(&row.name)),
                        escape(cell)
                    );
                }
                _ => {
                    let _ = write!(html, "<td>{}</td>", escape(cell));
                }
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    html
}

/// A container's figures: its `lynx top` cells, what LXD says of it, nginx's traffic to it.
pub fn container_fields(snapshot: &Snapshot, container: &Container) -> Vec<Field> {
    let mut fields: Vec<Field> = Column::ALL
        .iter()
        .map(|column| {
            field(
                format!("c.{}", column.key()),
                column.title(),
                column.cell(container),
            )
        })
        .collect();
    fields.push(field("c.kind", "Engine", container.kind.clone()));
    fields.push(field(
        "c.image",
        "Image",
        container.image.clone().unwrap_or_else(|| "-".into()),
    ));
    fields.push(field(
        "c.ipv6",
        "IPv6",
        if container.ipv6.is_empty() {
            "-".into()
        } else {
            container.ipv6.join(", ")
        },
    ));
    fields.push(field(
        "c.uptime",
        "Uptime",
        container
            .uptime_s
            .map_or_else(|| "-".into(), format::duration_s),
    ));
    let (requests, active) = snapshot
        .nginx
        .upstreams
        .iter()
        .filter(|u| u.container.as_deref() == Some(container.name.as_str()))
        .fold((0, 0), |(r, a), u| (r + u.requests, a + u.active));
    fields.push(field(
        "c.nginx",
        "nginx requests / active connections to it",
        format!("{requests} / {active}"),
    ));
    fields
}

/// The container page: its figures and the actions.
pub fn container_html(snapshot: &Snapshot, container: &Container, actions: bool) -> String {
    let fields = container_fields(snapshot, container);
    let name = escape(&container.name);
    let mut html = format!(
        "<h1 id=\"container\" data-name=\"{name}\">{name}</h1>{}<section id=\"actions\">",
        fields_html(&fields)
    );
    if actions {
        for (action, label, confirm) in [
            ("start", "Start", false),
            ("stop", "Stop", true),
            ("restart", "Restart", true),
            ("freeze", "Freeze", true),
            ("unfreeze", "Unfreeze", false),
        ] {
            let _ = write!(
                html,
                "<button type=\"button\" data-action=\"{action}\" data-confirm=\"{}\">{label}</button>",
                if confirm { "yes" } else { "" }
            );
        }
        html.push_str("<p id=\"message\" role=\"status\"></p>");
    } else {
        html.push_str("<p>Actions are off: set <code>[web] actions = true</code> to start, stop and freeze containers from here.</p>");
    }
    html.push_str("</section>");
    html
}

/// The images page: the table `lynx images list` prints, with a delete button per image.
pub fn images_html(images: &[Image], actions: bool) -> String {
    let mut html = String::from("<h1>Images</h1><table id=\"images\"><thead><tr>");
    for title in manage::IMAGE_COLUMNS {
        let _ = write!(html, "<th>{title}</th>");
    }
    html.push_str("<th></th></tr></thead><tbody>");
    for (image, cells) in images.iter().zip(manage::image_rows(images)) {
        html.push_str("<tr>");
        for cell in cells {
            let _ = write!(html, "<td>{}</td>", escape(&cell));
        }
        html.push_str("<td>");
        if actions {
            let _ = write!(
                html,
                "<button type=\"button\" data-image=\"{}\" data-confirm=\"yes\">Delete</button>",
                escape(&image.fingerprint)
            );
        }
        html.push_str("</td></tr>");
    }
    html.push_str("</tbody></table><p id=\"message\" role=\"status\"></p>");
    html
}

/// The history page: the request chart over `range`, the daily table of `lynx history`.
pub fn history_html(range: &str, chart: &str, days: &[DaySummary]) -> String {
    let mut html = String::from("<h1>History</h1><nav id=\"ranges\">");
    for choice in ["1h", "24h", "7d"] {
        match choice == range {
            true => {
                let _ = write!(html, "<strong>{choice}</strong> ");
            }
            false => {
                let _ = write!(html, "<a href=\"/history?range={choice}\">{choice}</a> ");
            }
        }
    }
    let _ = write!(
        html,
        "</nav><figure id=\"chart-history\">{chart}</figure><h2>Last 7 days (UTC)</h2>\
         <table id=\"days\"><thead><tr>"
    );
    for title in DaySummary::HEADERS {
        let _ = write!(html, "<th>{}</th>", title.to_uppercase());
    }
    html.push_str("</tr></thead><tbody>");
    for day in days {
        html.push_str("<tr>");
        for cell in day.cells() {
            let _ = write!(html, "<td>{}</td>", escape(&cell));
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    html
}

/// `name` as one path segment: what is not a letter, digit, `-`, `_` or `.` is escaped.
pub fn url_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}
