//! Rendering: one function of the state, so the tests render into ratatui's `TestBackend`.
use std::{net::SocketAddr, time::Duration};

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, HighlightSpacing, Paragraph, Row, Sparkline, Table, TableState, Wrap},
};

use super::{
    app::{App, Column, History, LongHistory, View},
    format,
};
use crate::model::{Container, Disk, Snapshot};

/// A column never takes more than this, so one long name cannot push the figures away.
const MAX_COLUMN_WIDTH: usize = 40;
/// Spaces between the table's columns.
const COLUMN_SPACING: usize = 2;
/// Marks the selected row.
const HIGHLIGHT: &str = "> ";
/// Room for the host panel's longest line (the stale warning) and its borders.
const HOST_PANEL_WIDTH: u16 = 64;

/// Draws the whole screen for `app`.
pub fn draw(frame: &mut Frame, app: &App) {
    let status_height = u16::from(app.status.is_some());
    let [main, help, status] = Layout::vertical([
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(status_height),
    ])
    .areas(frame.area());
    match (&app.snapshot, &app.view) {
        (None, _) => {
            let text = format!("waiting for a snapshot from {}", app.origin);
            frame.render_widget(Paragraph::new(text).block(Block::bordered()), main);
        }
        (Some(snapshot), View::Table) => draw_overview(frame, main, app, snapshot),
        (Some(snapshot), View::Detail(name)) => draw_detail(frame, main, app, snapshot, name),
    }
    frame.render_widget(Paragraph::new(help_line(&app.view)), help);
    if let Some(message) = &app.status {
        let line = Line::from(vec![
            Span::styled("! ", Style::new().fg(Color::Red).bold()),
            Span::styled(message.as_str(), Style::new().fg(Color::Red)),
        ]);
        frame.render_widget(Paragraph::new(line), status);
    }
}

fn help_line(view: &View) -> Line<'static> {
    let key = |text: &'static str| Span::styled(text, Style::new().bold().fg(Color::Cyan));
    let mut spans = Vec::new();
    match view {
        View::Table => {
            spans.extend([
                key("q"),
                " quit  ".into(),
                key("↑↓/jk"),
                " select  ".into(),
                key("Enter"),
                " details  sort:".into(),
            ]);
            for column in Column::ALL {
                spans.push(" ".into());
                spans.push(Span::styled(
                    column.key().to_string(),
                    Style::new().bold().fg(Color::Cyan),
                ));
                spans.push(format!(" {}", column.help()).into());
            }
            spans.push("  (again: reverse)".into());
        }
        View::Detail(_) => spans.extend([
            key("Esc"),
            " back  ".into(),
            key("↑↓/jk"),
            " previous/next container  ".into(),
            key("q"),
            " quit".into(),
        ]),
    }
    Line::from(spans)
}

fn draw_overview(frame: &mut Frame, area: Rect, app: &App, snapshot: &Snapshot) {
    let [top, table] = Layout::vertical([Constraint::Length(6), Constraint::Min(3)]).areas(area);
    // The host panel takes what its lines need; nginx, which will have more to say, the rest.
    let [host, nginx] =
        Layout::horizontal([Constraint::Min(HOST_PANEL_WIDTH), Constraint::Fill(1)]).areas(top);
    frame.render_widget(
        Paragraph::new(host_lines(snapshot, app))
            .block(Block::bordered().title(format!(" Host: kernel {} ", snapshot.host.kernel))),
        host,
    );
    frame.render_widget(
        Paragraph::new(nginx_lines(snapshot))
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" nginx ")),
        nginx,
    );
    draw_table(frame, table, app);
}

fn label(text: &str) -> Span<'_> {
    Span::styled(text, Style::new().bold())
}

fn host_lines<'a>(snapshot: &'a Snapshot, app: &App) -> Vec<Line<'a>> {
    let host = &snapshot.host;
    let [one, five, fifteen] = host.load_average;
    let lxd = if host.lxd_available {
        Span::styled("LXD available", Style::new().fg(Color::Green))
    } else {
        Span::styled("LXD not answering", Style::new().fg(Color::Red))
    };
    let age = format::parse_timestamp(&host.timestamp)
        .map(|taken| app.now.duration_since(taken).unwrap_or_default());
    // A daemon writes every interval: several missed ones mean it stopped or hangs.
    let stale_after =
        Duration::from_millis(host.interval_ms.saturating_mul(3)).max(Duration::from_secs(3));
    let age = match age {
        Some(age) if age > stale_after => Span::styled(
            format!("{} old: stale, is `lynx daemon` running?", format::age(age)),
            Style::new().fg(Color::Red).bold(),
        ),
        Some(age) => Span::raw(format!("{} old", format::age(age))),
        None => Span::raw(format!("taken {}", host.timestamp)),
    };
    vec![
        Line::from(vec![
            label("CPU "),
            cpu_span(host.cpu_percent, 100.0),
            format!(
                " of {} CPUs   load {one:.2} {five:.2} {fifteen:.2}",
                host.cpus
            )
            .into(),
        ]),
        Line::from(vec![
            label("Memory "),
            format!(
                "{} used of {}, {} available",
                format::mebibytes(host.memory_used_mb),
                format::mebibytes(host.memory_total_mb),
                format::mebibytes(host.memory_available_mb)
            )
            .into(),
        ]),
        Line::from(vec![
            label("Containers "),
            format!(
                "{} running, {} stopped, {} frozen   ",
                host.containers_running, host.containers_stopped, host.containers_frozen
            )
            .into(),
            lxd,
        ]),
        Line::from(vec![
            label("Snapshot "),
            format!("every {}, ", format::interval_ms(host.interval_ms)).into(),
            age,
        ]),
    ]
}

/// The nginx panel: client-side totals and rates, then the upstreams by request rate.
fn nginx_lines(snapshot: &Snapshot) -> Vec<Line<'static>> {
    let nginx = &snapshot.nginx;
    let Some(master) = nginx.master_pid else {
        return vec![Line::styled(
            "nginx not found: not counted (is it running? see [nginx] pid_file)",
            Style::new().add_modifier(Modifier::DIM),
        )];
    };
    let mut upstreams: Vec<_> = nginx.upstreams.iter().collect();
    upstreams.sort_by(|a, b| b.requests_per_s.total_cmp(&a.requests_per_s));
    let upstreams = upstreams
        .iter()
        .map(|u| {
            // An address without a container, as a socket address: `[fd42::2]:80` for IPv6.
            let name = u.container.clone().unwrap_or_else(|| {
                u.address
                    .as_deref()
                    .and_then(|a| a.parse().ok())
                    .map_or_else(
                        || format!("?:{}", u.port),
                        |ip| SocketAddr::new(ip, u.port).to_string(),
                    )
            });
            format!("{name} {:.1}/s ({} active)", u.requests_per_s, u.active)
        })
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        Line::from(vec![
            label("Clients "),
            format!(
                "{} active   {:.1} req/s (10 s: {:.1})",
                nginx.active, nginx.requests_per_s, nginx.requests_per_s_10s
            )
            .into(),
        ]),
        Line::from(vec![
            label("Totals "),
            format!(
                "{} requests, {} connections   master {master}",
                nginx.requests, nginx.accepts
            )
            .into(),
        ]),
        Line::from(vec![
            label("Upstreams "),
            if upstreams.is_empty() {
                "none yet".into()
            } else {
                upstreams.into()
            },
        ]),
    ]
}

/// A CPU figure, coloured by how busy: `full` is 100% of what it is a share of.
fn cpu_span(percent: f64, full: f64) -> Span<'static> {
    let style = match percent / full {
        share if share >= 0.9 => Style::new().fg(Color::Red).bold(),
        share if share >= 0.5 => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    };
    Span::styled(format::percent(percent), style)
}

fn status_style(status: &str) -> Style {
    match status {
        "Running" => Style::new().fg(Color::Green),
        "Frozen" => Style::new().fg(Color::Cyan),
        "Stopped" => Style::new().add_modifier(Modifier::DIM),
        _ => Style::new().fg(Color::Yellow),
    }
}

fn draw_table(frame: &mut Frame, area: Rect, app: &App) {
    let rows = app.rows();
    let sort = app.sort;
    let arrow = if sort.descending { "▼" } else { "▲" };
    let title_of = |column: Column| {
        if column == sort.column {
            format!("{}{arrow}", column.title())
        } else {
            column.title().to_owned()
        }
    };
    let width_of = |column: Column| {
        rows.iter()
            .map(|container| column.cell(container).chars().count())
            .chain([title_of(column).chars().count(), column.min_width()])
            .max()
            .unwrap_or(0)
            .min(MAX_COLUMN_WIDTH)
    };
    // Columns that do not fit are left out from the right rather than squeezed: a cut figure
    // (`.02MiB` for `1.02MiB`) would mislead.
    let room = usize::from(area.width).saturating_sub(2 + HIGHLIGHT.len());
    let mut used = 0;
    let columns: Vec<(Column, usize)> = Column::ALL
        .into_iter()
        .map(|column| (column, width_of(column)))
        .take_while(|&(_, width)| {
            let gap = if used == 0 { 0 } else { COLUMN_SPACING };
            used += gap + width;
            used <= room
        })
        .collect();
    let columns = if columns.is_empty() {
        vec![(Column::Name, width_of(Column::Name))]
    } else {
        columns
    };
    let align = |column: Column, line: Line<'static>| {
        if column.is_numeric() {
            line.right_aligned()
        } else {
            line
        }
    };
    let header = Row::new(columns.iter().map(|&(column, _)| {
        let style = if column == sort.column {
            Style::new().bold().underlined()
        } else {
            Style::new().bold()
        };
        Cell::from(align(column, Line::styled(title_of(column), style)))
    }));
    let body = rows.iter().map(|container| {
        Row::new(columns.iter().map(|&(column, _)| {
            let line = match column {
                Column::Status => {
                    Line::styled(column.cell(container), status_style(&container.status))
                }
                Column::Cpu => Line::from(cpu_span(container.cpu.percent, 100.0)),
                Column::Disk if container.root_disk().is_some_and(|d| d.nearly_full) => {
                    Line::styled(column.cell(container), Style::new().fg(Color::Red).bold())
                }
                _ => Line::raw(column.cell(container)),
            };
            Cell::from(align(column, line))
        }))
    });
    let containers = rows.iter().filter(|c| c.kind != "host").count();
    let hidden = Column::ALL.len() - columns.len();
    let title = format!(
        " Containers: {containers} + host, by {} {arrow}{} ",
        sort.column.help(),
        if hidden > 0 {
            format!(", {hidden} columns hidden: widen the terminal")
        } else {
            String::new()
        }
    );
    let widths = columns
        .iter()
        .map(|&(_, width)| Constraint::Length(width as u16));
    let table = Table::new(body, widths)
        .column_spacing(COLUMN_SPACING as u16)
        .header(header)
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(HIGHLIGHT)
        .highlight_spacing(HighlightSpacing::Always);
    let mut state = TableState::new().with_selected(app.selected());
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_detail(frame: &mut Frame, area: Rect, app: &App, snapshot: &Snapshot, name: &str) {
    let info_height = app.detail().map_or(3, |c| info_lines(c).len()) as u16 + 2;
    let [info, cpu, memory, long, io] = Layout::vertical([
        Constraint::Length(info_height),
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(5),
        Constraint::Length(4 + disk_rows(app.detail())),
    ])
    .areas(area);
    let container = app.detail();
    let history = app.history(name);
    let title = match container {
        Some(c) => format!(" {} ({}) ", c.name, c.kind),
        None => format!(" {name}: not in the latest snapshot "),
    };
    frame.render_widget(
        Paragraph::new(container.map(info_lines).unwrap_or_default())
            .block(Block::bordered().title(title)),
        info,
    );
    draw_cpu_history(frame, cpu, container, history);
    draw_memory_history(frame, memory, container, history, snapshot);
    draw_long_history(
        frame,
        long,
        app.long_history.as_ref().filter(|l| l.name == name),
    );
    frame.render_widget(
        Paragraph::new(container.map(io_lines).unwrap_or_default())
            .block(Block::bordered().title(" Disk and network ")),
        io,
    );
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn info_lines(c: &Container) -> Vec<Line<'_>> {
    let list = |addresses: &[String]| {
        if addresses.is_empty() {
            "-".to_owned()
        } else {
            addresses.join(", ")
        }
    };
    let mut lines = vec![
        Line::from(vec![
            label("status "),
            Span::styled(c.status.as_str(), status_style(&c.status)),
            format!(
                "   pid {}   processes {}   uptime {}",
                or_dash(c.pid),
                or_dash(c.processes),
                c.uptime_s
                    .map_or_else(|| "-".to_owned(), format::duration_s)
            )
            .into(),
        ]),
        Line::from(vec![
            label("IPv4 "),
            list(&c.ipv4).into(),
            label("   IPv6 "),
            list(&c.ipv6).into(),
        ]),
        Line::from(vec![
            label("image "),
            or_dash(c.image.as_deref()).into(),
            label("   cgroup "),
            or_dash(c.cgroup.as_deref()).into(),
        ]),
    ];
    if let Some(docker) = &c.docker {
        lines.push(Line::from(vec![
            label("docker "),
            format!(
                "{} {}",
                docker.id.get(..12).unwrap_or(&docker.id),
                docker.state
            )
            .into(),
            label("   command "),
            docker.command.join(" ").into(),
        ]));
    }
    lines
}

fn io_lines(c: &Container) -> Vec<Line<'_>> {
    let disk = &c.block_io;
    let disk = both_ways(
        ["read", "write"],
        "ops",
        [
            (disk.read_bytes_per_s, disk.read_bytes, disk.read_ops),
            (disk.write_bytes_per_s, disk.write_bytes, disk.write_ops),
        ],
    );
    let net = c.network.as_ref().map_or_else(
        || " not counted (outside containers; see count_host_network)".to_owned(),
        |net| {
            both_ways(
                ["rx", "tx"],
                "packets",
                [
                    (net.rx_bytes_per_s, net.rx_bytes, net.rx_packets),
                    (net.tx_bytes_per_s, net.tx_bytes, net.tx_packets),
                ],
            )
        },
    );
    let mut lines = vec![
        Line::from(vec![label("disk "), disk.into()]),
        Line::from(vec![label("net  "), net.into()]),
    ];
    for (device, figures) in c.disk.iter().flatten() {
        let style = if figures.nearly_full {
            Style::new().fg(Color::Red).bold()
        } else {
            Style::new()
        };
        lines.push(Line::from(vec![
            label("space "),
            Span::styled(space_line(device, figures), style),
        ]));
    }
    lines
}

/// Rows the detail view gives the disk devices of `container`.
fn disk_rows(container: Option<&Container>) -> u16 {
    container
        .and_then(|c| c.disk.as_ref())
        .map_or(0, |disks| u16::try_from(disks.len()).unwrap_or(u16::MAX))
}

/// One disk device: `root / 20.0MiB of 64.0MiB (31%), 44.0MiB free, pool fast`.
fn space_line(device: &str, disk: &Disk) -> String {
    let used = match (disk.used_bytes, disk.limit_bytes) {
        (Some(used), Some(limit)) => format!(
            "{} of {} ({})",
            format::bytes(used),
            format::bytes(limit),
            format::percent(used as f64 * 100.0 / limit.max(1) as f64)
        ),
        (Some(used), None) => format!("{} used, no quota", format::bytes(used)),
        (None, Some(limit)) => format!("usage unknown, quota {}", format::bytes(limit)),
        (None, None) => "usage unknown".to_owned(),
    };
    let mut line = format!("{device} {} {used}", disk.path);
    if let Some(free) = disk.free_bytes {
        line += &format!(", {} free", format::bytes(free));
    }
    if let Some(pool) = &disk.pool {
        line += &format!(", pool {pool}");
    }
    if disk.nearly_full {
        line += "  NEARLY FULL";
    }
    if let Some(reason) = &disk.reason {
        line += &format!(" ({reason})");
    }
    line
}

/// Two directions of traffic, each as (bytes per second, bytes in all, `unit`s in all).
fn both_ways(names: [&str; 2], unit: &str, ways: [(f64, u64, u64); 2]) -> String {
    let [(a_rate, a_bytes, a_count), (b_rate, b_bytes, b_count)] = ways;
    format!(
        " {} {} ({}, {a_count} {unit} in all)   {} {} ({}, {b_count} {unit} in all)",
        names[0],
        format::rate(a_rate),
        format::bytes(a_bytes),
        names[1],
        format::rate(b_rate),
        format::bytes(b_bytes),
    )
}

/// The newest samples that fit in `width` columns: a sparkline draws from its first value.
fn tail<T: Copy>(values: &std::collections::VecDeque<T>, width: u16) -> Vec<T> {
    let skip = values.len().saturating_sub(usize::from(width));
    values.iter().skip(skip).copied().collect()
}

fn draw_cpu_history(
    frame: &mut Frame,
    area: Rect,
    container: Option<&Container>,
    history: Option<&History>,
) {
    let samples = history.map(|h| h.cpu.len()).unwrap_or(0);
    let peak = history
        .and_then(|h| h.cpu.iter().copied().reduce(f64::max))
        .unwrap_or(0.0);
    let now = container.map_or_else(|| "-".to_owned(), |c| format::percent(c.cpu.percent));
    let block = Block::bordered().title(format!(
        " CPU {now} of one CPU, peak {} over {samples} samples ",
        format::percent(peak)
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // Hundredths of a percent, scaled to one full CPU unless it used more: an idle
    // container's 0.1% must not fill the box.
    let centi = |percent: f64| (percent.max(0.0) * 100.0).round() as u64;
    let data = history
        .map(|h| tail(&h.cpu, inner.width))
        .unwrap_or_default();
    let sparkline = Sparkline::default()
        .data(data.into_iter().map(centi))
        .max(centi(peak.max(100.0)))
        .style(Style::new().fg(Color::Yellow));
    frame.render_widget(sparkline, inner);
}

/// CPU per minute from the daemon's history database: hours, where the other sparklines
/// show the samples seen since `lynx top` started.
fn draw_long_history(frame: &mut Frame, area: Rect, long: Option<&LongHistory>) {
    let minutes = match long.map(|l| &l.minutes) {
        Some(Ok(minutes)) if !minutes.is_empty() => minutes,
        Some(Ok(_)) => return empty_panel(frame, area, " CPU per minute: no history yet "),
        Some(Err(error)) => return empty_panel(frame, area, &format!(" CPU per minute: {error} ")),
        None => return empty_panel(frame, area, " CPU per minute: history not read "),
    };
    let block = Block::bordered().title(format!(
        " CPU per minute, last {} from history ",
        format::duration_s(minutes.len() as u64 * 60)
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let skip = minutes.len().saturating_sub(usize::from(inner.width));
    let centi = |percent: f64| (percent.max(0.0) * 100.0).round() as u64;
    let peak = minutes
        .iter()
        .map(|m| m.cpu_percent_avg)
        .fold(100.0, f64::max);
    let sparkline = Sparkline::default()
        .data(minutes.iter().skip(skip).map(|m| centi(m.cpu_percent_avg)))
        .max(centi(peak))
        .style(Style::new().fg(Color::Yellow));
    frame.render_widget(sparkline, inner);
}

fn empty_panel(frame: &mut Frame, area: Rect, title: &str) {
    frame.render_widget(Block::bordered().title(title.to_owned()), area);
}

fn draw_memory_history(
    frame: &mut Frame,
    area: Rect,
    container: Option<&Container>,
    history: Option<&History>,
    snapshot: &Snapshot,
) {
    let memory = container.and_then(|c| c.memory.as_ref());
    let peak = history
        .and_then(|h| h.memory.iter().flatten().copied().max())
        .unwrap_or(0);
    let title = match (container, memory) {
        (Some(c), None) if c.kind == "host" => format!(
            " Memory: not counted for the host entry; the host uses {} of {} ",
            format::mebibytes(snapshot.host.memory_used_mb),
            format::mebibytes(snapshot.host.memory_total_mb)
        ),
        (_, None) => " Memory: not accounted ".to_owned(),
        (_, Some(m)) => format!(
            " Memory {} ({} of host), limit {}, peak {} ",
            format::bytes(m.used_bytes),
            format::percent(m.percent_of_host),
            m.limit_bytes
                .map_or_else(|| "none".to_owned(), format::bytes),
            format::bytes(peak)
        ),
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let data = history
        .map(|h| tail(&h.memory, inner.width))
        .unwrap_or_default();
    // Scaled to the limit when there is one, so the box shows how close it is.
    let max = memory.and_then(|m| m.limit_bytes).unwrap_or(peak).max(1);
    let sparkline = Sparkline::default()
        .data(data)
        .max(max)
        .style(Style::new().fg(Color::Magenta));
    frame.render_widget(sparkline, inner);
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        model::{Nginx, NginxEndpoint, SNAPSHOT_VERSION, fixtures},
        tui::{
            source::load_snapshot,
            tests::{fixture, scratch_file},
        },
    };

    /// Renders `app` on a `width` x `height` test terminal; returns its lines.
    fn render(app: &App, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        terminal.draw(|frame| draw(frame, app)).expect("draw");
        let buffer = terminal.backend().buffer();
        buffer
            .content()
            .chunks(usize::from(buffer.area.width))
            .map(|row| row.iter().map(|cell| cell.symbol()).collect())
            .collect()
    }

    fn row_of(screen: &[String], name: &str) -> usize {
        screen
            .iter()
            .position(|line| line.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("{name} not on screen:\n{}", screen.join("\n")))
    }

    fn press(app: &mut App, code: KeyCode) {
        app.key(KeyEvent::new(code, KeyModifiers::NONE));
    }

    fn farm_app() -> App {
        let mut snapshot = fixture(
            "2026-11-22T04:22:02Z",
            &[
                ("web1", 3.25, 1_064_960),
                ("web2", 88.5, 300 << 20),
                ("web3", 41.0, 2 << 30),
            ],
        );
        snapshot.containers[1]
            .network
            .as_mut()
            .expect("a container's traffic")
            .rx_bytes_per_s = 2.5 * 1024.0 * 1024.0;
        snapshot.containers[2].block_io.write_bytes_per_s = 64.0 * 1024.0;
        snapshot.containers[1].disk = Some(
            [(
                "root".to_owned(),
                Disk {
                    path: "/".into(),
                    pool: Some("fast".into()),
                    used_bytes: Some(58 << 20),
                    limit_bytes: Some(64 << 20),
                    free_bytes: Some(6 << 20),
                    nearly_full: true,
                    reason: None,
                },
            )]
            .into(),
        );
        snapshot.containers[2].disk = Some(
            [(
                "root".to_owned(),
                Disk {
                    path: "/".into(),
                    pool: Some("default".into()),
                    free_bytes: Some(40 << 30),
                    reason: Some("pool default is a dir pool".into()),
                    ..Disk::default()
                },
            )]
            .into(),
        );
        snapshot.nginx = Nginx {
            master_pid: Some(900),
            accepts: 40,
            active: 3,
            requests: 5000,
            requests_per_s: 120.5,
            requests_per_s_10s: 110.0,
            listen: vec![],
            upstreams: vec![
                fixtures::upstream("api1", "10.0.0.2", 50.5, 1),
                fixtures::upstream("api2", "10.0.0.3", 70.0, 2),
            ],
        };
        let mut app = App::new("/run/lynx/snapshot.json".into());
        app.update(snapshot);
        app.now = format::parse_timestamp("2026-11-22T04:22:02.5Z").expect("timestamp");
        app
    }

    #[test]
    fn overview_shows_host_nginx_and_every_container_with_its_figures() {
        let app = farm_app();
        let screen = render(&app, 160, 30);
        let text = screen.join("\n");
        for expected in [
            "CPU 51.0% of 2 CPUs   load 0.59 0.87 0.81",
            "Memory 760MiB used of 23.5GiB, 22.8GiB available",
            "Containers 3 running, 0 stopped, 0 frozen   LXD available",
            "Host: kernel 6.18.44",
            "Snapshot every 1s, 0.5s old",
            "Clients 3 active   120.5 req/s (10 s: 110.0)",
            "Totals 5000 requests, 40 connections   master 900",
            "Upstreams api2 70.0/s (2 active), api1 50.5/s (1 active)",
            "Containers: 3 + host, by name ▲",
        ] {
            assert!(text.contains(expected), "{expected:?} missing:\n{text}");
        }
        let header = &screen[row_of(&screen, "web1") - 1];
        for column in Column::ALL {
            assert!(header.contains(column.title()), "{column:?} in {header}");
        }
        let web2 = &screen[row_of(&screen, "web2")];
        for figure in [
            "Running",
            "10.177.42.11",
            "88.5%",
            "300MiB",
            "58.0MiB!",
            "2.50MiB/s",
        ] {
            assert!(web2.contains(figure), "{figure} in {web2}");
        }
        assert!(screen[row_of(&screen, "web3")].contains("2.00GiB"));
        assert!(screen[row_of(&screen, "web3")].contains("64.0KiB/s"));
        assert!(
            screen[row_of(&screen, "web1")].starts_with("│> web1"),
            "selected"
        );
        let host = row_of(&screen, "host");
        assert!(host > row_of(&screen, "web3"));
        assert!(screen[host].contains("2.4%"));
        assert!(text.contains("c cpu"), "sort keys on screen");
    }

    #[test]
    fn cpu_sort_reorders_the_rows() {
        let mut app = farm_app();
        let before = render(&app, 160, 30);
        assert!(row_of(&before, "web1") < row_of(&before, "web2"));
        press(&mut app, KeyCode::Char('c'));
        let after = render(&app, 160, 30);
        let rows = ["web2", "web3", "web1", "host"].map(|name| row_of(&after, name));
        assert!(rows.is_sorted(), "{rows:?}:\n{}", after.join("\n"));
        assert!(after.join("\n").contains("CPU%▼"));
    }

    #[test]
    fn stale_snapshot_and_missing_lxd_are_flagged() {
        let mut app = farm_app();
        app.now += Duration::from_secs(30);
        let mut snapshot = app.snapshot.clone().expect("snapshot");
        snapshot.host.lxd_available = false;
        snapshot.host.timestamp = "2026-11-22T04:22:03Z".into();
        app.update(snapshot);
        let text = render(&app, 160, 30).join("\n");
        assert!(text.contains("29.5s old: stale"), "{text}");
        assert!(text.contains("LXD not answering"), "{text}");
    }

    #[test]
    fn detail_view_shows_sparklines_of_the_samples_seen() {
        let mut app = farm_app();
        for n in 0..40_u32 {
            let mut snapshot = app.snapshot.clone().expect("snapshot");
            snapshot.host.timestamp = format!("t{n}");
            snapshot.containers[1].cpu.percent = f64::from(n % 10) * 10.0;
            let memory = snapshot.containers[1].memory.as_mut().expect("memory");
            memory.used_bytes = u64::from(n + 1) << 20;
            app.update(snapshot);
        }
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Enter);
        let screen = render(&app, 100, 30);
        let text = screen.join("\n");
        for expected in [
            " web2 (lxd) ",
            "status Running",
            "IPv4 10.177.42.11",
            "CPU 90.0% of one CPU, peak 90.0% over 41 samples",
            "Memory 40.0MiB (1.2% of host), limit none, peak 300MiB",
            "rx 2.50MiB/s",
            "Esc back",
        ] {
            assert!(text.contains(expected), "{expected:?} missing:\n{text}");
        }
        let cpu_box = screen
            .iter()
            .position(|line| line.contains(" CPU "))
            .expect("CPU box");
        let memory_box = screen
            .iter()
            .position(|line| line.contains(" Memory "))
            .expect("memory box");
        let bars = |lines: &[String]| {
            lines
                .iter()
                .flat_map(|line| line.chars())
                .filter(|c| ('▁'..='█').contains(c))
                .count()
        };
        assert!(bars(&screen[cpu_box + 1..memory_box]) > 20, "{text}");
        assert!(bars(&screen[memory_box + 1..]) > 20, "{text}");
        press(&mut app, KeyCode::Esc);
        assert!(render(&app, 100, 30).join("\n").contains("nginx"));
    }

    #[test]
    fn detail_view_shows_each_disk_device_and_why_usage_is_unknown() {
        let mut app = farm_app();
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Enter);
        let text = render(&app, 140, 34).join("\n");
        assert!(
            text.contains(
                "space root / 58.0MiB of 64.0MiB (90.6%), 6.00MiB free, pool fast  NEARLY FULL"
            ),
            "{text}"
        );
        press(&mut app, KeyCode::Esc);
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Enter);
        let text = render(&app, 140, 34).join("\n");
        assert!(
            text.contains(
                "space root / usage unknown, 40.0GiB free, pool default (pool default is a dir pool)"
            ),
            "{text}"
        );
    }

    #[test]
    fn detail_view_draws_hours_of_minutes_from_history() {
        use crate::sink::history::ContainerMinutePoint;

        let mut app = farm_app();
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Enter);
        let name = app.selected_name().expect("a selection").to_owned();
        assert!(
            app.long_history_due(std::time::Duration::from_secs(60)),
            "not read yet"
        );
        let text = render(&app, 100, 30).join("\n");
        assert!(text.contains("CPU per minute: history not read"), "{text}");

        let minutes: Vec<ContainerMinutePoint> = (0..120)
            .map(|m| ContainerMinutePoint {
                minute: 1_795_320_000 + m * 60,
                cpu_percent_avg: (m % 50) as f64,
                memory_max_bytes: None,
            })
            .collect();
        app.set_long_history(name.clone(), Ok(minutes));
        assert!(
            !app.long_history_due(std::time::Duration::from_secs(60)),
            "just read"
        );
        let screen = render(&app, 100, 30);
        let panel = screen
            .iter()
            .position(|line| line.contains("CPU per minute, last 2h00m from history"))
            .unwrap_or_else(|| panic!("history panel missing:\n{}", screen.join("\n")));
        let bars = screen[panel + 1..panel + 4]
            .iter()
            .flat_map(|line| line.chars())
            .filter(|c| ('▁'..='█').contains(c))
            .count();
        assert!(bars > 20, "{}", screen.join("\n"));

        app.set_long_history(
            name,
            Err("no history database at /x: the daemon writes it".into()),
        );
        let text = render(&app, 100, 30).join("\n");
        assert!(
            text.contains("CPU per minute: no history database at /x"),
            "{text}"
        );
    }

    #[test]
    fn detail_of_the_host_entry_explains_its_memory() {
        let mut app = farm_app();
        press(&mut app, KeyCode::End);
        press(&mut app, KeyCode::Enter);
        let text = render(&app, 120, 30).join("\n");
        assert!(text.contains(" host (host) "), "{text}");
        assert!(
            text.contains("Memory: not counted for the host entry; the host uses 760MiB"),
            "{text}"
        );
        assert!(
            text.contains("net   not counted (outside containers; see count_host_network)"),
            "{text}"
        );
    }

    #[test]
    fn upstreams_without_a_container_show_their_socket_address() {
        let mut app = farm_app();
        let mut snapshot = app.snapshot.clone().expect("a snapshot");
        snapshot.nginx.upstreams = ["192.0.2.9", "fd42::9"]
            .iter()
            .zip([2.0, 1.0])
            .map(|(address, rate)| NginxEndpoint {
                container: None,
                ..fixtures::upstream("", address, rate, 0)
            })
            .collect();
        snapshot.host.timestamp = "2026-11-22T04:22:03Z".into();
        assert!(app.update(snapshot));
        let text = render(&app, 160, 30).join("\n");
        assert!(
            text.contains("Upstreams 192.0.2.9:80 2.0/s (0 active), [fd42::9]:80 1.0/s"),
            "{text}"
        );
    }

    #[test]
    fn nginx_not_found_says_so() {
        let mut app = farm_app();
        let mut snapshot = app.snapshot.clone().expect("a snapshot");
        snapshot.nginx = Nginx::default();
        snapshot.host.timestamp = "2026-11-22T04:22:03Z".into();
        assert!(app.update(snapshot));
        let text = render(&app, 160, 30).join("\n");
        assert!(text.contains("nginx not found: not counted"), "{text}");
    }

    #[test]
    fn a_version_mismatch_shows_in_the_status_line_over_the_last_document() {
        let mut app = farm_app();
        let file = scratch_file("draw-v1", br#"{"version": 1, "cgroups": []}"#);
        let error = load_snapshot(file.path()).expect_err("version 1");
        app.read_failed(&error);
        let screen = render(&app, 160, 30);
        let last = screen.last().expect("lines");
        assert!(
            last.contains(&format!(
                "snapshot {} has schema version 1, this lynx reads {SNAPSHOT_VERSION}",
                file.path().display()
            )),
            "{last}"
        );
        assert!(screen.join("\n").contains("web2"), "last document kept");
    }

    #[test]
    fn before_any_document_it_says_what_it_waits_for() {
        let mut app = App::new("/tmp/none.json".into());
        app.now = SystemTime::UNIX_EPOCH;
        let text = render(&app, 80, 10).join("\n");
        assert!(
            text.contains("waiting for a snapshot from /tmp/none.json"),
            "{text}"
        );
    }

    #[test]
    fn columns_that_do_not_fit_are_left_out_not_cut() {
        let app = farm_app();
        let screen = render(&app, 80, 24);
        let text = screen.join("\n");
        let web3 = &screen[row_of(&screen, "web3")];
        assert!(web3.contains(" 2.00GiB "), "memory whole: {web3}");
        assert!(!text.contains("PROCS"), "{text}");
        assert!(
            text.contains("columns hidden: widen the terminal"),
            "{text}"
        );
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let mut app = farm_app();
        for (width, height) in [(1, 1), (10, 3), (40, 8)] {
            render(&app, width, height);
        }
        press(&mut app, KeyCode::Enter);
        for (width, height) in [(1, 1), (10, 3), (40, 8)] {
            render(&app, width, height);
        }
    }
}
