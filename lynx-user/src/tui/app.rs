//! The live view's state: the latest snapshot, its rows in display order, the selection, the
//! sort, the view and per-container history. No terminal here: keys come in as values and the
//! tests drive it directly.
use std::{
    cmp::Ordering,
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
    time::{Instant, SystemTime},
};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::format;
use crate::{
    model::{Container, Snapshot},
    sink::history::ContainerMinutePoint,
};

/// Samples kept per container for the sparklines: five minutes at the default 1 s interval.
pub const HISTORY_LEN: usize = 300;

/// A column of the container table; every one sorts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Name,
    Status,
    Ipv4,
    Cpu,
    Memory,
    /// Root disk used (LXD's figure).
    Disk,
    DiskRead,
    DiskWrite,
    NetRx,
    NetTx,
    Processes,
}

impl Column {
    /// In display order.
    pub const ALL: [Self; 11] = [
        Self::Name,
        Self::Status,
        Self::Ipv4,
        Self::Cpu,
        Self::Memory,
        Self::Disk,
        Self::DiskRead,
        Self::DiskWrite,
        Self::NetRx,
        Self::NetTx,
        Self::Processes,
    ];

    /// The key that sorts by this column.
    pub fn key(self) -> char {
        match self {
            Self::Name => 'n',
            Self::Status => 's',
            Self::Ipv4 => 'i',
            Self::Cpu => 'c',
            Self::Memory => 'm',
            Self::Disk => 'd',
            Self::DiskRead => 'r',
            Self::DiskWrite => 'w',
            Self::NetRx => 'x',
            Self::NetTx => 't',
            Self::Processes => 'p',
        }
    }

    pub fn from_key(key: char) -> Option<Self> {
        Self::ALL.into_iter().find(|column| column.key() == key)
    }

    /// Header of the table, also of the `--once` output.
    pub fn title(self) -> &'static str {
        match self {
            Self::Name => "NAME",
            Self::Status => "STATUS",
            Self::Ipv4 => "IPV4",
            Self::Cpu => "CPU%",
            Self::Memory => "MEM",
            Self::Disk => "DISK",
            Self::DiskRead => "READ/S",
            Self::DiskWrite => "WRITE/S",
            Self::NetRx => "RX/S",
            Self::NetTx => "TX/S",
            Self::Processes => "PROCS",
        }
    }

    /// What the key does, for the help line.
    pub fn help(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Status => "status",
            Self::Ipv4 => "ipv4",
            Self::Cpu => "cpu",
            Self::Memory => "mem",
            Self::Disk => "disk used",
            Self::DiskRead => "disk read",
            Self::DiskWrite => "disk write",
            Self::NetRx => "net rx",
            Self::NetTx => "net tx",
            Self::Processes => "procs",
        }
    }

    /// Narrowest the full-screen table makes it: room for the widest usual figure
    /// (`100.0%`, `1023KiB`, `1023KiB/s`), so columns do not jump as figures change.
    pub fn min_width(self) -> usize {
        match self {
            Self::Name | Self::Ipv4 => 4,
            Self::Status => 7,
            Self::Cpu => 6,
            Self::Memory => 7,
            // `1023KiB!`: the mark of a nearly full disk.
            Self::Disk => 8,
            Self::DiskRead | Self::DiskWrite | Self::NetRx | Self::NetTx => 9,
            Self::Processes => 5,
        }
    }

    /// Figures are right-aligned, words left.
    pub fn is_numeric(self) -> bool {
        !matches!(self, Self::Name | Self::Status | Self::Ipv4)
    }

    /// The cell of `container` in this column, in human units; `-` where unknown.
    pub fn cell(self, container: &Container) -> String {
        match self {
            Self::Name => container.name.clone(),
            Self::Status => container.status.clone(),
            Self::Ipv4 if container.ipv4.is_empty() => "-".to_owned(),
            Self::Ipv4 => container.ipv4.join(","),
            Self::Cpu => format::percent(container.cpu.percent),
            Self::Memory => memory_used(container).map_or_else(|| "-".to_owned(), format::bytes),
            Self::Disk => match container.root_disk().and_then(|d| Some((d.used_bytes?, d))) {
                Some((used, disk)) if disk.nearly_full => format!("{}!", format::bytes(used)),
                Some((used, _)) => format::bytes(used),
                None => "-".to_owned(),
            },
            Self::DiskRead => format::rate(container.block_io.read_bytes_per_s),
            Self::DiskWrite => format::rate(container.block_io.write_bytes_per_s),
            Self::NetRx | Self::NetTx => self
                .network_rate(container)
                .map_or_else(|| "-".to_owned(), format::rate),
            Self::Processes => container
                .processes
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        }
    }

    /// The network column's rate, `None` where traffic is not counted or this is no network
    /// column.
    fn network_rate(self, container: &Container) -> Option<f64> {
        let network = container.network.as_ref()?;
        match self {
            Self::NetRx => Some(network.rx_bytes_per_s),
            Self::NetTx => Some(network.tx_bytes_per_s),
            _ => None,
        }
    }

    /// Compares two containers by this column alone, ascending.
    pub fn compare(self, a: &Container, b: &Container) -> Ordering {
        match self {
            Self::Name => a.name.cmp(&b.name),
            Self::Status => a.status.cmp(&b.status),
            Self::Ipv4 => first_ipv4(a).cmp(&first_ipv4(b)),
            Self::Cpu => a.cpu.percent.total_cmp(&b.cpu.percent),
            Self::Memory => memory_used(a).cmp(&memory_used(b)),
            Self::Disk => {
                let used = |c: &Container| c.root_disk().and_then(|d| d.used_bytes);
                used(a).cmp(&used(b))
            }
            Self::DiskRead => a
                .block_io
                .read_bytes_per_s
                .total_cmp(&b.block_io.read_bytes_per_s),
            Self::DiskWrite => a
                .block_io
                .write_bytes_per_s
                .total_cmp(&b.block_io.write_bytes_per_s),
            // Not counted sorts below any rate.
            Self::NetRx | Self::NetTx => {
                let rate = |c| self.network_rate(c).unwrap_or(-1.0);
                rate(a).total_cmp(&rate(b))
            }
            Self::Processes => a.processes.cmp(&b.processes),
        }
    }
}

fn first_ipv4(container: &Container) -> Option<Ipv4Addr> {
    container.ipv4.first().and_then(|ip| ip.parse().ok())
}

fn memory_used(container: &Container) -> Option<u64> {
    container.memory.as_ref().map(|m| m.used_bytes)
}

/// Column and direction of the table's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub column: Column,
    pub descending: bool,
}

impl Default for Sort {
    /// By name, as the snapshot lists them.
    fn default() -> Self {
        Self {
            column: Column::Name,
            descending: false,
        }
    }
}

/// Which screen is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    Table,
    /// One container, by name: it stays on that container while the table reorders.
    Detail(String),
}

/// One container's recent figures, oldest first, at most [`HISTORY_LEN`] each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// CPU % of one CPU.
    pub cpu: VecDeque<f64>,
    /// Memory used in bytes; `None` where the snapshot had no memory figure.
    pub memory: VecDeque<Option<u64>>,
}

impl History {
    fn push(&mut self, container: &Container) {
        if self.cpu.len() == HISTORY_LEN {
            self.cpu.pop_front();
            self.memory.pop_front();
        }
        self.cpu.push_back(container.cpu.percent);
        self.memory.push_back(memory_used(container));
    }
}

/// A container's per-minute figures from the history database.
#[derive(Clone, Debug, PartialEq)]
pub struct LongHistory {
    pub name: String,
    pub minutes: Result<Vec<ContainerMinutePoint>, String>,
    pub read_at: Instant,
}

/// The live view's whole state.
#[derive(Debug)]
pub struct App {
    /// Where the documents come from (a path, or `ssh://...`), for messages.
    pub origin: String,
    /// The latest good document; kept while reads fail.
    pub snapshot: Option<Snapshot>,
    /// Indices into `snapshot.containers` in display order; the `host` entry is always last,
    /// since it is the remainder of the machine, not a peer to rank.
    order: Vec<usize>,
    /// Index into `order`.
    selected: usize,
    pub sort: Sort,
    pub view: View,
    history: HashMap<String, History>,
    /// Why the latest read failed, while it keeps failing.
    pub status: Option<String>,
    /// The detail view's container's minutes from the history database, or why there are
    /// none; and when they were read.
    pub long_history: Option<LongHistory>,
    /// The wall clock of the latest tick, for the snapshot's age (fixed in tests).
    pub now: SystemTime,
    pub quit: bool,
}

impl App {
    pub fn new(origin: String) -> Self {
        Self {
            origin,
            snapshot: None,
            order: Vec::new(),
            selected: 0,
            sort: Sort::default(),
            view: View::Table,
            history: HashMap::new(),
            status: None,
            long_history: None,
            now: SystemTime::now(),
            quit: false,
        }
    }

    /// Takes a freshly read document. Only a new timestamp advances the history and reorders;
    /// returns whether it was new.
    pub fn update(&mut self, snapshot: Snapshot) -> bool {
        self.status = None;
        if self
            .snapshot
            .as_ref()
            .is_some_and(|old| old.host.timestamp == snapshot.host.timestamp)
        {
            return false;
        }
        let selected = self.selected_name().map(str::to_owned);
        for container in &snapshot.containers {
            self.history
                .entry(container.name.clone())
                .or_default()
                .push(container);
        }
        // Containers come and go on an autoscaled farm: keep history for the ones still there,
        // and for the one on screen.
        let shown = match &self.view {
            View::Detail(name) => Some(name.as_str()),
            View::Table => None,
        };
        self.history.retain(|name, _| {
            Some(name.as_str()) == shown || snapshot.containers.iter().any(|c| &c.name == name)
        });
        self.snapshot = Some(snapshot);
        self.reorder(selected.as_deref());
        true
    }

    /// True when the detail view shows a container whose history is missing or older than
    /// `max_age`.
    pub fn long_history_due(&self, max_age: std::time::Duration) -> bool {
        let View::Detail(name) = &self.view else {
            return false;
        };
        self.long_history
            .as_ref()
            .is_none_or(|long| &long.name != name || long.read_at.elapsed() >= max_age)
    }

    pub fn set_long_history(
        &mut self,
        name: String,
        minutes: Result<Vec<ContainerMinutePoint>, String>,
    ) {
        self.long_history = Some(LongHistory {
            name,
            minutes,
            read_at: Instant::now(),
        });
    }

    /// Records a failed read; the last good document stays on screen.
    pub fn read_failed(&mut self, error: &impl std::fmt::Display) {
        self.status = Some(error.to_string());
    }

    /// The containers in display order.
    pub fn rows(&self) -> Vec<&Container> {
        let Some(snapshot) = &self.snapshot else {
            return Vec::new();
        };
        self.order
            .iter()
            .map(|&index| &snapshot.containers[index])
            .collect()
    }

    /// Index of the selected row, when there are rows.
    pub fn selected(&self) -> Option<usize> {
        (!self.order.is_empty()).then_some(self.selected)
    }

    pub fn selected_name(&self) -> Option<&str> {
        let snapshot = self.snapshot.as_ref()?;
        let &index = self.order.get(self.selected)?;
        Some(&snapshot.containers[index].name)
    }

    /// The container of the detail view, when it is in the latest snapshot.
    pub fn detail(&self) -> Option<&Container> {
        let View::Detail(name) = &self.view else {
            return None;
        };
        self.snapshot
            .as_ref()?
            .containers
            .iter()
            .find(|c| &c.name == name)
    }

    pub fn history(&self, name: &str) -> Option<&History> {
        self.history.get(name)
    }

    /// Handles one key press; see the help line in `draw` for the bindings.
    pub fn key(&mut self, key: KeyEvent) {
        // Terminals that report releases and repeats send those too.
        if key.kind == KeyEventKind::Release {
            return;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) {
            // Raw mode turns Ctrl-C into a key instead of SIGINT.
            if key.code == KeyCode::Char('c') {
                self.quit = true;
            }
            return;
        }
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Up | KeyCode::Char('k') => self.select_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.select_by(1),
            KeyCode::PageUp => self.select_by(-10),
            KeyCode::PageDown => self.select_by(10),
            KeyCode::Home | KeyCode::Char('g') => self.select_by(isize::MIN),
            KeyCode::End | KeyCode::Char('G') => self.select_by(isize::MAX),
            KeyCode::Enter => {
                if let Some(name) = self.selected_name() {
                    self.view = View::Detail(name.to_owned());
                }
            }
            KeyCode::Esc | KeyCode::Backspace => self.view = View::Table,
            KeyCode::Char(key) => {
                if let Some(column) = Column::from_key(key) {
                    self.sort_by(column);
                }
            }
            _ => {}
        }
    }

    /// Sorts by `column`: figures largest first, words A to Z; the same column again reverses.
    pub fn sort_by(&mut self, column: Column) {
        self.sort = if self.sort.column == column {
            Sort {
                column,
                descending: !self.sort.descending,
            }
        } else {
            Sort {
                column,
                descending: column.is_numeric(),
            }
        };
        let selected = self.selected_name().map(str::to_owned);
        self.reorder(selected.as_deref());
    }

    /// Moves the selection by `delta` rows, clamped to the table. In the detail view the
    /// detail follows, so up and down page through containers.
    fn select_by(&mut self, delta: isize) {
        if self.order.is_empty() {
            return;
        }
        let last = self.order.len() - 1;
        self.selected = self.selected.saturating_add_signed(delta).min(last);
        if let View::Detail(_) = self.view
            && let Some(name) = self.selected_name()
        {
            self.view = View::Detail(name.to_owned());
        }
    }

    /// Sorts the rows and keeps the selection on the container named `selected` when it is
    /// still there.
    fn reorder(&mut self, selected: Option<&str>) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        let containers = &snapshot.containers;
        let (mut order, host): (Vec<usize>, Vec<usize>) =
            (0..containers.len()).partition(|&i| containers[i].kind != "host");
        let sort = self.sort;
        order.sort_by(|&a, &b| {
            let (a, b) = (&containers[a], &containers[b]);
            let ordering = sort.column.compare(a, b);
            let ordering = if sort.descending {
                ordering.reverse()
            } else {
                ordering
            };
            // Ties A to Z either way, so equal rows do not swap places between refreshes.
            ordering.then_with(|| a.name.cmp(&b.name))
        });
        order.extend(host);
        self.selected = selected
            .and_then(|name| order.iter().position(|&i| containers[i].name == name))
            .unwrap_or(self.selected)
            .min(order.len().saturating_sub(1));
        self.order = order;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::tests::fixture;

    fn press(app: &mut App, code: KeyCode) {
        app.key(KeyEvent::new(code, KeyModifiers::NONE));
    }

    fn names(app: &App) -> Vec<&str> {
        app.rows().iter().map(|c| c.name.as_str()).collect()
    }

    fn farm(timestamp: &str) -> Snapshot {
        fixture(
            timestamp,
            &[
                ("alpha", 5.0, 300 << 20),
                ("bravo", 97.5, 100 << 20),
                ("charlie", 40.0, 200 << 20),
            ],
        )
    }

    fn app_with(snapshot: Snapshot) -> App {
        let mut app = App::new("/run/lynx/snapshot.json".into());
        assert!(app.update(snapshot), "first document is new");
        app
    }

    #[test]
    fn rows_start_by_name_with_host_last() {
        let app = app_with(farm("t1"));
        assert_eq!(names(&app), ["alpha", "bravo", "charlie", "host"]);
        assert_eq!(app.selected(), Some(0));
    }

    #[test]
    fn cpu_key_sorts_busiest_first_and_again_reverses() {
        let mut app = app_with(farm("t1"));
        press(&mut app, KeyCode::Char('c'));
        assert_eq!(
            app.sort,
            Sort {
                column: Column::Cpu,
                descending: true
            }
        );
        assert_eq!(names(&app), ["bravo", "charlie", "alpha", "host"]);
        press(&mut app, KeyCode::Char('c'));
        assert_eq!(names(&app), ["alpha", "charlie", "bravo", "host"]);
        press(&mut app, KeyCode::Char('m'));
        assert_eq!(names(&app), ["alpha", "charlie", "bravo", "host"]);
        press(&mut app, KeyCode::Char('n'));
        assert_eq!(names(&app), ["alpha", "bravo", "charlie", "host"]);
        press(&mut app, KeyCode::Char('n'));
        assert_eq!(names(&app), ["charlie", "bravo", "alpha", "host"]);
    }

    #[test]
    fn every_column_has_its_own_key() {
        let mut keys: Vec<char> = Column::ALL.iter().map(|c| c.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Column::ALL.len());
        assert!(!keys.contains(&'q') && !keys.contains(&'j') && !keys.contains(&'k'));
        let mut app = app_with(farm("t1"));
        for column in Column::ALL {
            press(&mut app, KeyCode::Char(column.key()));
            assert_eq!(app.sort.column, column);
            assert_eq!(app.rows().last().expect("rows").name, "host");
        }
    }

    #[test]
    fn ties_stay_in_name_order_both_ways() {
        let mut app = app_with(fixture(
            "t1",
            &[("b", 1.0, 0), ("a", 1.0, 0), ("c", 2.0, 0)],
        ));
        press(&mut app, KeyCode::Char('c'));
        assert_eq!(names(&app), ["c", "a", "b", "host"]);
        press(&mut app, KeyCode::Char('c'));
        assert_eq!(names(&app), ["a", "b", "c", "host"]);
    }

    #[test]
    fn selection_moves_within_bounds_and_follows_its_container() {
        let mut app = app_with(farm("t1"));
        press(&mut app, KeyCode::Up);
        assert_eq!(app.selected_name(), Some("alpha"));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char('j'));
        assert_eq!(app.selected_name(), Some("charlie"));
        press(&mut app, KeyCode::End);
        assert_eq!(app.selected_name(), Some("host"));
        press(&mut app, KeyCode::Down);
        assert_eq!(app.selected_name(), Some("host"));
        press(&mut app, KeyCode::Char('g'));
        press(&mut app, KeyCode::Char('j'));
        assert_eq!(app.selected_name(), Some("bravo"));
        // Re-sorting keeps bravo selected, now in the first row.
        press(&mut app, KeyCode::Char('c'));
        assert_eq!(
            (app.selected(), app.selected_name()),
            (Some(0), Some("bravo"))
        );
        press(&mut app, KeyCode::Char('k'));
        assert_eq!(app.selected_name(), Some("bravo"));
    }

    #[test]
    fn a_vanished_selection_stays_in_place() {
        let mut app = app_with(farm("t1"));
        press(&mut app, KeyCode::End);
        app.update(fixture("t2", &[("alpha", 1.0, 0)]));
        assert_eq!(app.selected_name(), Some("host"));
        assert_eq!(names(&app), ["alpha", "host"]);
    }

    #[test]
    fn enter_opens_the_detail_and_escape_or_backspace_return() {
        let mut app = app_with(farm("t1"));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Enter);
        assert_eq!(app.view, View::Detail("bravo".into()));
        assert_eq!(app.detail().map(|c| c.cpu.percent), Some(97.5));
        press(&mut app, KeyCode::Down);
        assert_eq!(app.view, View::Detail("charlie".into()));
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.view, View::Table);
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Backspace);
        assert_eq!(app.view, View::Table);
    }

    #[test]
    fn q_and_ctrl_c_quit_but_plain_c_sorts() {
        let mut app = app_with(farm("t1"));
        press(&mut app, KeyCode::Char('c'));
        assert!(!app.quit);
        app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(app.quit);
        let mut app = app_with(farm("t1"));
        press(&mut app, KeyCode::Char('q'));
        assert!(app.quit);
    }

    #[test]
    fn history_advances_only_on_a_new_timestamp_and_is_bounded() {
        let mut app = app_with(farm("t0"));
        assert!(!app.update(farm("t0")), "same timestamp");
        assert_eq!(app.history("bravo").expect("history").cpu.len(), 1);
        for n in 1..=HISTORY_LEN + 50 {
            let mut snapshot = farm(&format!("t{n}"));
            snapshot.containers[1].cpu.percent = n as f64;
            assert!(app.update(snapshot));
        }
        let history = app.history("bravo").expect("history");
        assert_eq!(history.cpu.len(), HISTORY_LEN);
        assert_eq!(history.memory.len(), HISTORY_LEN);
        assert_eq!(history.cpu.back(), Some(&((HISTORY_LEN + 50) as f64)));
        assert_eq!(history.cpu.front(), Some(&51.0));
    }

    #[test]
    fn history_of_gone_containers_is_dropped_unless_shown() {
        let mut app = app_with(farm("t1"));
        press(&mut app, KeyCode::Enter);
        app.update(fixture("t2", &[("bravo", 1.0, 0)]));
        assert!(app.history("alpha").is_some(), "shown in the detail view");
        assert!(app.history("charlie").is_none());
        assert!(app.detail().is_none(), "gone from the snapshot");
    }

    #[test]
    fn a_failed_read_keeps_the_last_document_until_the_next_good_one() {
        let mut app = app_with(farm("t1"));
        app.read_failed(&"cannot read snapshot x: boom");
        assert_eq!(app.status.as_deref(), Some("cannot read snapshot x: boom"));
        assert_eq!(app.rows().len(), 4);
        app.update(farm("t1"));
        assert_eq!(app.status, None);
    }
}
