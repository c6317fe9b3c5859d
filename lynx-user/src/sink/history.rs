//! History: per-minute aggregates of the snapshots in a SQLite database, read by
//! `lynx history`.
//!
//! [`HistorySink::publish`] only folds each snapshot into the minute in progress, keyed by the
//! snapshot's own `host.timestamp`. When a snapshot of another minute arrives, the finished
//! minute goes over a channel to a writer thread that owns the database, so collection never
//! waits for the disk. Each minute is one transaction in WAL mode with `synchronous = FULL`:
//! a crash or power loss loses at most the minute in progress.
//!
//! Schema (version [`SCHEMA_VERSION`] in `PRAGMA user_version`), `minute` being the minute's
//! start in Unix seconds (UTC):
//!
//! - `minutes`: one row per minute with data: snapshots folded in (`samples`), min and max of
//!   running/stopped/frozen containers, host CPU average and memory peak, and nginx's request
//!   rate (average and peak), `NULL` for minutes in which nginx was not found.
//! - `container_minutes`: one row per minute and container (the `host` entry included) that
//!   was not stopped during the whole minute: average CPU %, peak memory, block and network
//!   bytes moved during the minute, the rate of requests nginx sent it (`NULL` for
//!   minutes in which nginx was not found), and the peak of its root disk's usage as LXD
//!   measured it (`NULL` where LXD gave none).
//!
//! An older database is upgraded in place when the daemon opens it (see [`UPGRADES`]);
//! `lynx history` and `lynx top` read every version.
//!
//! A row written twice for one minute (a daemon restarted within the minute, a clock set back)
//! is merged, not replaced.
//!
//! Retention counts from the host's clock when a minute is written, not from the minute's own
//! stamp: a snapshot stamped in the future (a clock wrong until NTP set it) cannot make every
//! older minute look expired. Minutes stamped ahead of the clock are kept and flagged
//! (`minutes.ahead_of_clock`).
//!
//! A database that cannot be opened (a read-only `/var/lib`, a filesystem whose locking
//! SQLite cannot use) does not stop the daemon: the sink says why once in the log and in
//! [`HistorySink::error`] (the snapshot's `history_error`), keeps the last
//! [`MAX_PENDING`] minutes in memory, and tries again each minute.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, ErrorCode, OpenFlags, params};
use serde::Serialize;

use super::Sink;
use crate::model::{Container, Snapshot};

/// Version of the schema below, kept in `PRAGMA user_version`: one more than the upgrades
/// that bring an older database to it.
pub const SCHEMA_VERSION: i32 = UPGRADES.len() as i32 + 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS minutes (
    minute INTEGER PRIMARY KEY,
    samples INTEGER NOT NULL,
    running_min INTEGER NOT NULL,
    running_max INTEGER NOT NULL,
    stopped_min INTEGER NOT NULL,
    stopped_max INTEGER NOT NULL,
    frozen_min INTEGER NOT NULL,
    frozen_max INTEGER NOT NULL,
    host_cpu_percent_avg REAL NOT NULL,
    host_memory_used_max_bytes INTEGER NOT NULL,
    nginx_requests_per_s_avg REAL,
    nginx_requests_per_s_max REAL,
    ahead_of_clock INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS container_minutes (
    minute INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    samples INTEGER NOT NULL,
    cpu_percent_avg REAL NOT NULL,
    memory_max_bytes INTEGER,
    block_read_bytes INTEGER NOT NULL,
    block_write_bytes INTEGER NOT NULL,
    network_rx_bytes INTEGER NOT NULL,
    network_tx_bytes INTEGER NOT NULL,
    requests_per_s_avg REAL,
    requests_per_s_max REAL,
    disk_used_max_bytes INTEGER,
    PRIMARY KEY (minute, kind, name)
) WITHOUT ROWID;
";

/// What each version after 1 added, in order: a database of version `n` gets the entries
/// from `n - 1` on. `ADD COLUMN` appends each column where [`SCHEMA`] has it, last.
const UPGRADES: [&str; 2] = [
    // 2: minutes stamped ahead of the host's clock.
    "ALTER TABLE minutes ADD COLUMN ahead_of_clock INTEGER NOT NULL DEFAULT 0;",
    // 3: the root disk's peak usage.
    "ALTER TABLE container_minutes ADD COLUMN disk_used_max_bytes INTEGER;",
];

// Averages are merged weighted by samples; SQLite's two-argument max() is NULL when either
// side is, hence the coalesce() around nullable columns.
const UPSERT_MINUTE: &str = "
INSERT INTO minutes (minute, samples, running_min, running_max, stopped_min, stopped_max,
    frozen_min, frozen_max, host_cpu_percent_avg, host_memory_used_max_bytes,
    nginx_requests_per_s_avg, nginx_requests_per_s_max, ahead_of_clock)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
ON CONFLICT (minute) DO UPDATE SET
    ahead_of_clock = max(ahead_of_clock, excluded.ahead_of_clock),
    samples = samples + excluded.samples,
    running_min = min(running_min, excluded.running_min),
    running_max = max(running_max, excluded.running_max),
    stopped_min = min(stopped_min, excluded.stopped_min),
    stopped_max = max(stopped_max, excluded.stopped_max),
    frozen_min = min(frozen_min, excluded.frozen_min),
    frozen_max = max(frozen_max, excluded.frozen_max),
    host_cpu_percent_avg = (host_cpu_percent_avg * samples
        + excluded.host_cpu_percent_avg * excluded.samples) / (samples + excluded.samples),
    host_memory_used_max_bytes = max(host_memory_used_max_bytes,
        excluded.host_memory_used_max_bytes),
    nginx_requests_per_s_avg = coalesce((nginx_requests_per_s_avg * samples
        + excluded.nginx_requests_per_s_avg * excluded.samples) / (samples + excluded.samples),
        nginx_requests_per_s_avg, excluded.nginx_requests_per_s_avg),
    nginx_requests_per_s_max = max(coalesce(nginx_requests_per_s_max,
        excluded.nginx_requests_per_s_max), coalesce(excluded.nginx_requests_per_s_max,
        nginx_requests_per_s_max))
";

const UPSERT_CONTAINER: &str = "
INSERT INTO container_minutes (minute, kind, name, samples, cpu_percent_avg, memory_max_bytes,
    block_read_bytes, block_write_bytes, network_rx_bytes, network_tx_bytes,
    requests_per_s_avg, requests_per_s_max, disk_used_max_bytes)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
ON CONFLICT (minute, kind, name) DO UPDATE SET
    samples = samples + excluded.samples,
    cpu_percent_avg = (cpu_percent_avg * samples + excluded.cpu_percent_avg * excluded.samples)
        / (samples + excluded.samples),
    memory_max_bytes = max(coalesce(memory_max_bytes, excluded.memory_max_bytes),
        coalesce(excluded.memory_max_bytes, memory_max_bytes)),
    block_read_bytes = block_read_bytes + excluded.block_read_bytes,
    block_write_bytes = block_write_bytes + excluded.block_write_bytes,
    network_rx_bytes = network_rx_bytes + excluded.network_rx_bytes,
    network_tx_bytes = network_tx_bytes + excluded.network_tx_bytes,
    requests_per_s_avg = coalesce((requests_per_s_avg * samples
        + excluded.requests_per_s_avg * excluded.samples) / (samples + excluded.samples),
        requests_per_s_avg, excluded.requests_per_s_avg),
    requests_per_s_max = max(coalesce(requests_per_s_max, excluded.requests_per_s_max),
        coalesce(excluded.requests_per_s_max, requests_per_s_max)),
    disk_used_max_bytes = max(coalesce(disk_used_max_bytes, excluded.disk_used_max_bytes),
        coalesce(excluded.disk_used_max_bytes, disk_used_max_bytes))
";

const SECONDS_PER_DAY: i64 = 86_400;
/// Minutes kept in memory while the database cannot be opened, written once it can.
pub const MAX_PENDING: usize = 60;
/// How long a statement waits for a lock another connection holds (`lynx history` reading).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the history database.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open history database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot move corrupt history database {path} aside to {aside}: {source}")]
    MoveAside {
        path: PathBuf,
        aside: PathBuf,
        source: io::Error,
    },
    #[error(
        "history database {path} has schema version {found}; this lynx reads version {SCHEMA_VERSION}"
    )]
    Schema { path: PathBuf, found: i32 },
    #[error("no history database at {path}: the daemon writes it")]
    Missing { path: PathBuf },
    #[error("cannot read history database {path}: {source}")]
    Read {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot start the writer thread of {path}: {source}")]
    Thread { path: PathBuf, source: io::Error },
}

/// The host's clock in Unix seconds, injected so that tests choose what "now" is.
pub type Clock = fn() -> i64;

/// The system clock.
pub fn system_clock() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Why the database is not being written now; `None` while it is.
type Status = Arc<Mutex<Option<String>>>;

/// The history sink: aggregates snapshots per minute and has them written by a thread of its
/// own. Dropping it writes the minute in progress and waits for the writer.
pub struct HistorySink {
    path: PathBuf,
    /// The minute in progress.
    minute: Option<MinuteRecord>,
    /// Each container's counters in the previous snapshot, for the byte deltas.
    previous: HashMap<ContainerKey, Counters>,
    warned_bad_timestamp: bool,
    status: Status,
    /// Declared last: dropped after [`Drop::drop`] has handed it the minute in progress.
    writer: Writer,
}

impl HistorySink {
    /// Opens (creating it and its directory if needed) the database at `path`, moving a
    /// corrupt one aside, and starts the writer thread. A database that cannot be opened is
    /// tried again each minute ([`HistorySink::error`] says why meanwhile). Minutes older
    /// than `retention_days` are deleted as new ones are written.
    pub fn start(path: &Path, retention_days: u32) -> Result<Self, HistoryError> {
        Self::start_with_clock(path, retention_days, system_clock)
    }

    /// [`HistorySink::start`] with retention counted from `clock`.
    pub fn start_with_clock(
        path: &Path,
        retention_days: u32,
        clock: Clock,
    ) -> Result<Self, HistoryError> {
        let status = Status::default();
        let mut database = Database {
            path: path.to_owned(),
            connection: None,
            retention_days,
            clock,
            status: Arc::clone(&status),
            pending: VecDeque::new(),
            warned_ahead: false,
        };
        database.reopen();
        let (sender, minutes) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("lynx-history".into())
            .spawn(move || database.run(minutes))
            .map_err(|source| HistoryError::Thread {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            minute: None,
            previous: HashMap::new(),
            warned_bad_timestamp: false,
            status,
            writer: Writer {
                sender: Some(sender),
                thread: Some(thread),
            },
        })
    }

    /// Why the database is not being written now (it cannot be opened); `None` while it is.
    pub fn error(&self) -> Option<String> {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Hands the minute in progress to the writer.
    fn flush(&mut self) {
        let Some(minute) = self.minute.take() else {
            return;
        };
        let at = minute.minute;
        let sent = self
            .writer
            .sender
            .as_ref()
            .is_some_and(|sender| sender.send(minute).is_ok());
        if !sent {
            tracing::warn!(
                "history writer of {} has stopped; minute {at} is lost",
                self.path.display()
            );
        }
    }
}

impl Sink for HistorySink {
    fn publish(&mut self, snapshot: &Snapshot) {
        let Some((seconds, _)) = parse_timestamp(&snapshot.host.timestamp) else {
            // Once: it would otherwise repeat every interval.
            if !self.warned_bad_timestamp {
                tracing::warn!(
                    "history: snapshot timestamp {:?} is not RFC 3339; such snapshots are left out of {}",
                    snapshot.host.timestamp,
                    self.path.display()
                );
                self.warned_bad_timestamp = true;
            }
            return;
        };
        let minute = seconds.div_euclid(60) * 60;
        if self.minute.as_ref().is_some_and(|m| m.minute != minute) {
            self.flush();
        }
        self.minute
            .get_or_insert_with(|| MinuteRecord::new(minute))
            .add(snapshot, &self.previous);
        self.previous = snapshot
            .containers
            .iter()
            .map(|c| (key_of(c), Counters::of(c)))
            .collect();
    }
}

impl Drop for HistorySink {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The channel to the writer thread, closed and joined on drop.
struct Writer {
    sender: Option<mpsc::Sender<MinuteRecord>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once it has written what is queued.
        drop(self.sender.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("history writer thread panicked");
        }
    }
}

/// `(kind, name)`: a container's identity in the history.
type ContainerKey = (String, String);

fn key_of(container: &Container) -> ContainerKey {
    (container.kind.clone(), container.name.clone())
}

/// The cumulative counters whose per-minute growth is kept.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    block_read_bytes: u64,
    block_write_bytes: u64,
    network_rx_bytes: u64,
    network_tx_bytes: u64,
}

impl Counters {
    fn of(container: &Container) -> Self {
        Self {
            block_read_bytes: container.block_io.read_bytes,
            block_write_bytes: container.block_io.write_bytes,
            // Where traffic is not counted (the host, services), none is kept.
            network_rx_bytes: container.network.as_ref().map_or(0, |n| n.rx_bytes),
            network_tx_bytes: container.network.as_ref().map_or(0, |n| n.tx_bytes),
        }
    }

    /// Growth since `before`. A counter that went back (a container recreated, its cgroups
    /// gone) adds nothing rather than its whole count again.
    fn since(self, before: Self) -> Self {
        Self {
            block_read_bytes: self
                .block_read_bytes
                .saturating_sub(before.block_read_bytes),
            block_write_bytes: self
                .block_write_bytes
                .saturating_sub(before.block_write_bytes),
            network_rx_bytes: self
                .network_rx_bytes
                .saturating_sub(before.network_rx_bytes),
            network_tx_bytes: self
                .network_tx_bytes
                .saturating_sub(before.network_tx_bytes),
        }
    }

    fn add(&mut self, other: Self) {
        self.block_read_bytes = self.block_read_bytes.saturating_add(other.block_read_bytes);
        self.block_write_bytes = self
            .block_write_bytes
            .saturating_add(other.block_write_bytes);
        self.network_rx_bytes = self.network_rx_bytes.saturating_add(other.network_rx_bytes);
        self.network_tx_bytes = self.network_tx_bytes.saturating_add(other.network_tx_bytes);
    }
}

#[derive(Clone, Copy, Debug)]
struct MinMax {
    min: u32,
    max: u32,
}

impl MinMax {
    fn add(this: &mut Option<Self>, value: u32) {
        let range = this.get_or_insert(Self {
            min: value,
            max: value,
        });
        range.min = range.min.min(value);
        range.max = range.max.max(value);
    }
}

/// One minute folded together, as the writer stores it.
#[derive(Debug)]
struct MinuteRecord {
    /// The minute's start, Unix seconds.
    minute: i64,
    samples: u32,
    running: Option<MinMax>,
    stopped: Option<MinMax>,
    frozen: Option<MinMax>,
    host_cpu_percent_sum: f64,
    host_memory_used_max_bytes: u64,
    /// nginx's client-side request rate, over the samples in which nginx was counted.
    nginx_requests: Rate,
    containers: BTreeMap<ContainerKey, ContainerMinute>,
}

#[derive(Debug, Default)]
struct ContainerMinute {
    samples: u32,
    cpu_percent_sum: f64,
    memory_max_bytes: Option<u64>,
    /// The root disk's peak usage, from LXD.
    disk_used_max_bytes: Option<u64>,
    moved: Counters,
    /// Requests nginx sent to the container, over the samples in which nginx was counted.
    requests: Rate,
}

/// A request rate's average and peak over the samples that had one.
#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    samples: u32,
    sum: f64,
    max: f64,
}

impl Rate {
    fn add(&mut self, per_s: f64) {
        self.samples += 1;
        self.sum += per_s;
        self.max = self.max.max(per_s);
    }

    /// Average and peak; `NULL`s when no sample had a rate.
    fn columns(&self) -> (Option<f64>, Option<f64>) {
        match self.samples {
            0 => (None, None),
            n => (Some(self.sum / f64::from(n)), Some(self.max)),
        }
    }
}

impl MinuteRecord {
    fn new(minute: i64) -> Self {
        Self {
            minute,
            samples: 0,
            running: None,
            stopped: None,
            frozen: None,
            host_cpu_percent_sum: 0.0,
            host_memory_used_max_bytes: 0,
            nginx_requests: Rate::default(),
            containers: BTreeMap::new(),
        }
    }

    fn add(&mut self, snapshot: &Snapshot, previous: &HashMap<ContainerKey, Counters>) {
        let host = &snapshot.host;
        self.samples += 1;
        MinMax::add(&mut self.running, host.containers_running);
        MinMax::add(&mut self.stopped, host.containers_stopped);
        MinMax::add(&mut self.frozen, host.containers_frozen);
        self.host_cpu_percent_sum += host.cpu_percent;
        self.host_memory_used_max_bytes = self
            .host_memory_used_max_bytes
            .max(host.memory_used_mb.saturating_mul(1024 * 1024));
        let nginx = &snapshot.nginx;
        let counted = nginx.master_pid.is_some();
        if counted {
            self.nginx_requests.add(nginx.requests_per_s);
        }
        for container in &snapshot.containers {
            let key = key_of(container);
            // A container first seen now: what it counted before is not this minute's.
            let moved = previous
                .get(&key)
                .map(|before| Counters::of(container).since(*before))
                .unwrap_or_default();
            // A stopped container has no CPU, memory or I/O: no row for it.
            if container.status == "Stopped" {
                continue;
            }
            let entry = self.containers.entry(key).or_default();
            entry.samples += 1;
            entry.cpu_percent_sum += container.cpu.percent;
            if let Some(memory) = &container.memory {
                entry.memory_max_bytes = entry.memory_max_bytes.max(Some(memory.used_bytes));
            }
            if let Some(used) = container.root_disk().and_then(|d| d.used_bytes) {
                entry.disk_used_max_bytes = entry.disk_used_max_bytes.max(Some(used));
            }
            entry.moved.add(moved);
            if counted && container.kind != "host" {
                let to_it = nginx
                    .upstreams
                    .iter()
                    .filter(|u| u.container.as_deref() == Some(container.name.as_str()))
                    .map(|u| u.requests_per_s)
                    .sum();
                entry.requests.add(to_it);
            }
        }
    }
}

/// Database figures are SQLite integers (i64); counters never get near that.
fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The writer thread's side: the connection, reopened when it turns out corrupt or could not
/// be opened.
struct Database {
    path: PathBuf,
    /// `None` while the database cannot be opened; each minute tries again.
    connection: Option<Connection>,
    retention_days: u32,
    clock: Clock,
    /// Shared with the sink: why the database is not written, for the snapshot.
    status: Status,
    /// Minutes not written yet because the database could not be opened, oldest first.
    pending: VecDeque<MinuteRecord>,
    /// A minute ahead of the clock was logged.
    warned_ahead: bool,
}

impl Database {
    fn run(mut self, minutes: mpsc::Receiver<MinuteRecord>) {
        for record in minutes {
            self.write(record);
        }
        if !self.pending.is_empty() {
            tracing::warn!(
                "{} minutes of history could not be written to {}: lost",
                self.pending.len(),
                self.path.display()
            );
        }
    }

    /// Opens the database (creating its directory), and records whether that worked, logging
    /// each change once.
    fn reopen(&mut self) {
        let opened = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or(Ok(()), |dir| {
                fs::create_dir_all(dir).map_err(|source| HistoryError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })
            })
            .and_then(|()| open_for_writing(&self.path));
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        match opened {
            Ok(connection) => {
                if status.take().is_some() {
                    tracing::info!(
                        "history database {} is open again: writing the {} minutes kept meanwhile",
                        self.path.display(),
                        self.pending.len()
                    );
                }
                self.connection = Some(connection);
            }
            Err(error) => {
                let error = error.to_string();
                if status.as_ref() != Some(&error) {
                    tracing::warn!(
                        "{error}: history is not written until it can be (tried again each \
                         minute, the last {MAX_PENDING} minutes kept meanwhile); collection and \
                         control go on"
                    );
                }
                *status = Some(error);
            }
        }
    }

    fn write(&mut self, record: MinuteRecord) {
        let now = (self.clock)();
        if record.minute > now && !self.warned_ahead {
            tracing::warn!(
                "history: minute {} is {} s ahead of this host's clock: kept and flagged \
                 (ahead_of_clock); retention counts from the clock",
                record.minute,
                record.minute - now
            );
            self.warned_ahead = true;
        }
        if self.connection.is_none() {
            self.reopen();
        }
        if self.connection.is_none() {
            if self.pending.len() == MAX_PENDING {
                self.pending.pop_front();
            }
            self.pending.push_back(record);
            return;
        }
        for record in std::mem::take(&mut self.pending)
            .into_iter()
            .chain(std::iter::once(record))
        {
            self.write_one(&record, now);
        }
    }

    fn write_one(&mut self, record: &MinuteRecord, now: i64) {
        if let Some(connection) = &mut self.connection {
            match write_minute(connection, record, self.retention_days, now) {
                Ok(()) => return,
                Err(error) if !is_corrupt(&error) => {
                    tracing::warn!(
                        "cannot write minute {} to {}: {error}",
                        record.minute,
                        self.path.display()
                    );
                    return;
                }
                Err(error) => {
                    // Closed before its file moves.
                    self.connection = None;
                    if let Err(error) = move_aside(&self.path, &error) {
                        tracing::warn!("{error}; minute {} is lost", record.minute);
                        return;
                    }
                }
            }
        }
        // Corrupt: start over on a new database.
        match open_for_writing(&self.path) {
            Ok(connection) => self.connection = Some(connection),
            Err(error) => {
                tracing::warn!("{error}; minute {} is lost", record.minute);
                return;
            }
        }
        if let Some(connection) = &mut self.connection
            && let Err(error) = write_minute(connection, record, self.retention_days, now)
        {
            tracing::warn!(
                "cannot write minute {} to {}: {error}",
                record.minute,
                self.path.display()
            );
        }
    }
}

/// Writes one minute, and deletes what is older than the retention counted from `now` (Unix
/// seconds), in one transaction.
fn write_minute(
    connection: &mut Connection,
    record: &MinuteRecord,
    retention_days: u32,
    now: i64,
) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    let samples = f64::from(record.samples.max(1));
    let range = |r: Option<MinMax>| r.map_or((0, 0), |r| (r.min, r.max));
    let (running, stopped, frozen) = (
        range(record.running),
        range(record.stopped),
        range(record.frozen),
    );
    let (nginx_avg, nginx_max) = record.nginx_requests.columns();
    transaction.prepare_cached(UPSERT_MINUTE)?.execute(params![
        record.minute,
        record.samples,
        running.0,
        running.1,
        stopped.0,
        stopped.1,
        frozen.0,
        frozen.1,
        record.host_cpu_percent_sum / samples,
        sql_int(record.host_memory_used_max_bytes),
        nginx_avg,
        nginx_max,
        record.minute > now,
    ])?;
    {
        let mut upsert = transaction.prepare_cached(UPSERT_CONTAINER)?;
        for ((kind, name), container) in &record.containers {
            let (requests_avg, requests_max) = container.requests.columns();
            upsert.execute(params![
                record.minute,
                kind,
                name,
                container.samples,
                container.cpu_percent_sum / f64::from(container.samples.max(1)),
                container.memory_max_bytes.map(sql_int),
                sql_int(container.moved.block_read_bytes),
                sql_int(container.moved.block_write_bytes),
                sql_int(container.moved.network_rx_bytes),
                sql_int(container.moved.network_tx_bytes),
                requests_avg,
                requests_max,
                container.disk_used_max_bytes.map(sql_int),
            ])?;
        }
    }
    let cutoff = now.div_euclid(60) * 60 - i64::from(retention_days) * SECONDS_PER_DAY;
    transaction.execute("DELETE FROM minutes WHERE minute < ?1", [cutoff])?;
    transaction.execute("DELETE FROM container_minutes WHERE minute < ?1", [cutoff])?;
    transaction.commit()
}

fn is_corrupt(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Opens the database for the writer, moving a corrupt one aside and starting a new one.
fn open_for_writing(path: &Path) -> Result<Connection, HistoryError> {
    match open_and_check(path) {
        Err(error) if is_corrupt(&error) => {
            move_aside(path, &error)?;
            open_and_check(path)
        }
        result => result,
    }
    .map_err(|source| HistoryError::Open {
        path: path.to_owned(),
        source,
    })
    .and_then(|(connection, version)| {
        if version == SCHEMA_VERSION {
            Ok(connection)
        } else {
            Err(HistoryError::Schema {
                path: path.to_owned(),
                found: version,
            })
        }
    })
}

/// Opens `path` in WAL mode and creates the schema on a new database; returns the schema
/// version found. A file that is not a database fails here, at the first read.
fn open_and_check(path: &Path) -> rusqlite::Result<(Connection, i32)> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            "{} stays in journal mode {mode}: WAL is unavailable there",
            path.display()
        );
    }
    // FULL syncs the WAL at each commit, so a finished minute survives a power loss.
    connection.pragma_update(None, "synchronous", "FULL")?;
    let mut version: i32 = connection.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 {
        connection.execute_batch(&format!(
            "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
        version = SCHEMA_VERSION;
    }
    if (1..SCHEMA_VERSION).contains(&version) {
        let upgrades = UPGRADES[usize::try_from(version - 1).unwrap_or_default()..].concat();
        connection.execute_batch(&format!(
            "BEGIN; {upgrades} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
        version = SCHEMA_VERSION;
    }
    if version == SCHEMA_VERSION {
        // Reads both tables' columns: a damaged schema fails here rather than a minute later.
        connection.prepare_cached(UPSERT_MINUTE)?;
        connection.prepare_cached(UPSERT_CONTAINER)?;
    }
    Ok((connection, version))
}

/// Renames a corrupt database (and its WAL) to `PATH.corrupt-<unix time>`, so that a new
/// one can start while the old one stays for inspection.
fn move_aside(path: &Path, why: &rusqlite::Error) -> Result<(), HistoryError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let with_suffix = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let mut aside = with_suffix(&format!(".corrupt-{now}"));
    // Two corruptions in one second must not overwrite the first copy.
    let mut n = 1;
    while aside.exists() {
        aside = with_suffix(&format!(".corrupt-{now}.{n}"));
        n += 1;
    }
    fs::rename(path, &aside).map_err(|source| HistoryError::MoveAside {
        path: path.to_owned(),
        aside: aside.clone(),
        source,
    })?;
    // The WAL belongs to the old file; the shared-memory index is rebuilt from it.
    let mut aside_wal = aside.as_os_str().to_owned();
    aside_wal.push("-wal");
    let _ = fs::rename(with_suffix("-wal"), aside_wal);
    let _ = fs::remove_file(with_suffix("-shm"));
    tracing::warn!(
        "history database {} is corrupt ({why}): moved it to {} and started a new one",
        path.display(),
        aside.display()
    );
    Ok(())
}

/// One UTC day of history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DaySummary {
    /// UTC date, `YYYY-MM-DD`.
    pub date: String,
    /// Minutes with data (1440 for a whole day); 0 for a day without any.
    pub minutes: u32,
    pub running_min: Option<u32>,
    pub running_max: Option<u32>,
    /// nginx's highest request rate of a minute; `None` while nginx is not measured.
    pub requests_per_s_peak: Option<f64>,
    /// nginx's average request rate over the minutes with data; `None` likewise.
    pub requests_per_s_avg: Option<f64>,
}

impl DaySummary {
    /// The columns of `lynx history`'s table and of the dashboard's.
    pub const HEADERS: [&str; 6] = [
        "date",
        "minutes",
        "running min",
        "running max",
        "req/s peak",
        "req/s avg",
    ];

    /// This day's cells under [`Self::HEADERS`], `-` where nothing is known.
    pub fn cells(&self) -> [String; 6] {
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
        [
            self.date.clone(),
            self.minutes.to_string(),
            or_dash(self.running_min.map(|n| n.to_string())),
            or_dash(self.running_max.map(|n| n.to_string())),
            or_dash(self.requests_per_s_peak.map(|r| format!("{r:.1}"))),
            or_dash(self.requests_per_s_avg.map(|r| format!("{r:.1}"))),
        ]
    }
}

/// One summary for each of the `days` UTC days up to and including the day of `now_unix`,
/// oldest first; days without data are included, empty.
/// One container's figures for one minute, from the history database.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContainerMinutePoint {
    /// Start of the minute, Unix seconds.
    pub minute: i64,
    /// Average CPU % of one CPU over the minute.
    pub cpu_percent_avg: f64,
    /// Highest memory use seen in the minute.
    pub memory_max_bytes: Option<u64>,
}

/// The minutes of container `name` since `since_unix`, oldest first: what `lynx top` draws
/// its longer sparklines from.
pub fn container_minutes(
    path: &Path,
    name: &str,
    since_unix: i64,
) -> Result<Vec<ContainerMinutePoint>, HistoryError> {
    read_rows(
        path,
        "SELECT minute, cpu_percent_avg, memory_max_bytes FROM container_minutes
         WHERE name = ?1 AND minute >= ?2 ORDER BY minute",
        rusqlite::params![name, since_unix],
        |row| {
            Ok(ContainerMinutePoint {
                minute: row.get(0)?,
                cpu_percent_avg: row.get(1)?,
                // SQLite integers are i64; memory is never negative.
                memory_max_bytes: row.get::<_, Option<i64>>(2)?.map(|b| b.max(0) as u64),
            })
        },
    )
}

/// nginx's average request rate of each minute since `since_unix`, oldest first, as (start
/// of the minute in Unix seconds, requests/s); minutes while nginx was not measured are left
/// out. What the dashboard's history chart draws.
pub fn nginx_minutes(path: &Path, since_unix: i64) -> Result<Vec<(i64, f64)>, HistoryError> {
    read_rows(
        path,
        "SELECT minute, nginx_requests_per_s_avg FROM minutes
         WHERE minute >= ?1 AND nginx_requests_per_s_avg IS NOT NULL ORDER BY minute",
        [since_unix],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
}

/// The rows `sql` selects with `params`, each made by `row`; none when the database has no
/// schema yet.
fn read_rows<T>(
    path: &Path,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>, HistoryError> {
    let read_error = |source| HistoryError::Read {
        path: path.to_owned(),
        source,
    };
    let Some(connection) = open_for_reading(path)? else {
        return Ok(Vec::new());
    };
    let mut query = connection.prepare(sql).map_err(read_error)?;
    let rows = query.query_map(params, row).map_err(read_error)?;
    rows.collect::<Result<_, _>>().map_err(read_error)
}

/// Opens the database read-only for a report; `None` when it exists but has no schema yet
/// (the daemon has not finished a minute).
fn open_for_reading(path: &Path) -> Result<Option<Connection>, HistoryError> {
    if !path.exists() {
        return Err(HistoryError::Missing {
            path: path.to_owned(),
        });
    }
    let read_error = |source| HistoryError::Read {
        path: path.to_owned(),
        source,
    };
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(read_error)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(read_error)?;
    let version: i32 = connection
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(read_error)?;
    match version {
        0 => Ok(None),
        // Reports read no column that an older version lacks.
        1..=SCHEMA_VERSION => Ok(Some(connection)),
        found => Err(HistoryError::Schema {
            path: path.to_owned(),
            found,
        }),
    }
}

pub fn daily_summary(
    path: &Path,
    days: u32,
    now_unix: i64,
) -> Result<Vec<DaySummary>, HistoryError> {
    let read_error = |source| HistoryError::Read {
        path: path.to_owned(),
        source,
    };
    let today = now_unix.div_euclid(SECONDS_PER_DAY);
    let first = today - i64::from(days) + 1;
    let mut found = HashMap::new();
    match open_for_reading(path)? {
        // Created but never given a schema: nothing recorded yet.
        None => {}
        Some(connection) => {
            let mut query = connection
                .prepare(
                    "SELECT minute / 86400, count(*), min(running_min), max(running_max),
                        max(nginx_requests_per_s_max),
                        sum(nginx_requests_per_s_avg * samples)
                            / sum(CASE WHEN nginx_requests_per_s_avg IS NOT NULL
                                  THEN samples END)
                     FROM minutes WHERE minute >= ?1 AND minute < ?2
                     GROUP BY minute / 86400",
                )
                .map_err(read_error)?;
            let rows = query
                .query_map(
                    [first * SECONDS_PER_DAY, (today + 1) * SECONDS_PER_DAY],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            (
                                row.get::<_, u32>(1)?,
                                row.get::<_, Option<u32>>(2)?,
                                row.get::<_, Option<u32>>(3)?,
                                row.get::<_, Option<f64>>(4)?,
                                row.get::<_, Option<f64>>(5)?,
                            ),
                        ))
                    },
                )
                .map_err(read_error)?;
            for row in rows {
                let (day, figures) = row.map_err(read_error)?;
                found.insert(day, figures);
            }
        }
    }
    Ok((first..=today)
        .map(|day| {
            let (minutes, running_min, running_max, peak, avg) =
                found.remove(&day).unwrap_or_default();
            DaySummary {
                date: date_of_day(day),
                minutes,
                running_min,
                running_max,
                requests_per_s_peak: peak,
                requests_per_s_avg: avg,
            }
        })
        .collect())
}

/// `YYYY-MM-DD` of the day `day` days after 1970-01-01.
fn date_of_day(day: i64) -> String {
    /// Julian day number of 1970-01-01.
    const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;
    i32::try_from(day + UNIX_EPOCH_JULIAN_DAY)
        .ok()
        .and_then(|julian| time::Date::from_julian_day(julian).ok())
        .map_or_else(|| format!("day {day}"), |date| date.to_string())
}

/// The table `lynx history` prints: one line per day, `-` where nothing is known.
pub fn render_table(days: &[DaySummary]) -> String {
    let rows: Vec<[String; 6]> = days.iter().map(DaySummary::cells).collect();
    let mut widths = DaySummary::HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            // The date left-aligned, figures right-aligned.
            let _ = match i {
                0 => write!(text, "{cell:<width$}"),
                _ => write!(text, "  {cell:>width$}"),
            };
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(DaySummary::HEADERS);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// Seconds and nanoseconds since the Unix epoch of an RFC 3339 timestamp of the shape the
/// snapshot has (`2026-11-22T04:22:02.196581371Z`; a `+HH:MM` offset is accepted too).
/// Written by hand: the `time` dependency is built without its parser.
pub fn parse_timestamp(text: &str) -> Option<(i64, u32)> {
    let bytes = text.as_bytes();
    let digits = |from: usize, to: usize| -> Option<u32> {
        let part = bytes.get(from..to)?;
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0, |n, digit| n * 10 + u32::from(digit - b'0'))
        })
    };
    let at = |index: usize, allowed: &[u8]| bytes.get(index).is_some_and(|b| allowed.contains(b));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 7)?, digits(8, 10)?);
    let (hour, minute, second) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    // Bytes 0..19 are ASCII digits and separators, so 19 is a char boundary.
    let mut rest = &text[19..];
    let mut nanos = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let count = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if count == 0 {
            return None;
        }
        // Digits past the nanosecond are dropped.
        let kept = &fraction.as_bytes()[..count.min(9)];
        nanos = kept
            .iter()
            .fold(0, |n, digit| n * 10 + u32::from(digit - b'0'))
            * 10u32.pow(9 - kept.len() as u32);
        rest = &fraction[count..];
    }
    let offset = match rest.as_bytes() {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (hours, minutes) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return None,
    };
    let date = time::Date::from_calendar_date(
        i32::try_from(year).ok()?,
        time::Month::try_from(u8::try_from(month).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    // A leap second (:60) counts as :59.
    let clock = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second.min(59)).ok()?,
    )
    .ok()?;
    let local = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp();
    Some((local - offset, nanos))
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };

    use time::format_description::well_known::Rfc3339;

    use super::*;
    use crate::model::{BlockIo, Container, Cpu, Memory, Network, fixtures};
    use crate::test_support::TempDir;

    /// 2026-11-20T00:00:00Z.
    const NOV_20: i64 = 20_777 * SECONDS_PER_DAY;
    const HOUR: i64 = 3600;

    fn history_dir(test: &str) -> TempDir {
        TempDir::new(&format!("history-{test}"))
    }

    fn db(dir: &TempDir) -> PathBuf {
        dir.path().join("sub/history.db")
    }

    fn rfc3339(unix: i64) -> String {
        time::OffsetDateTime::from_unix_timestamp(unix)
            .expect("a valid test time")
            .format(&Rfc3339)
            .expect("formats as RFC 3339")
    }

    /// A running (or otherwise) container whose counters are `bytes` each.
    fn container(name: &str, status: &str, cpu_percent: f64, bytes: u64) -> Container {
        let stopped = status == "Stopped";
        Container {
            cpu: Cpu {
                ns: 0,
                percent: cpu_percent,
            },
            memory: (!stopped).then_some(Memory {
                used_bytes: 1000 + bytes,
                limit_bytes: None,
                percent_of_host: 0.0,
                swap_bytes: 0,
            }),
            block_io: BlockIo {
                read_bytes: bytes,
                write_bytes: 2 * bytes,
                ..BlockIo::default()
            },
            network: Some(Network {
                rx_bytes: 3 * bytes,
                tx_bytes: 4 * bytes,
                ..Network::default()
            }),
            ..fixtures::container(name, "lxd", status)
        }
    }

    /// A snapshot taken at `unix` with `containers` (the `host` entry added), counted by status.
    fn snapshot(unix: i64, mut containers: Vec<Container>) -> Snapshot {
        containers.push(Container {
            cpu: Cpu {
                ns: 0,
                percent: 1.0,
            },
            ..fixtures::container("host", "host", "Running")
        });
        let mut snapshot = fixtures::snapshot(&rfc3339(unix), containers);
        snapshot.host.cpu_percent = 10.0;
        snapshot.host.memory_used_mb = 2048;
        snapshot
    }

    /// The clock of the tests' history: when the last minute of the retention test is
    /// written.
    fn test_clock() -> i64 {
        NOV_20 + 24 * HOUR + 600
    }

    fn open(path: &Path, retention_days: u32) -> HistorySink {
        HistorySink::start_with_clock(path, retention_days, test_clock)
            .unwrap_or_else(|e| panic!("open history sink: {e}"))
    }

    fn summary(path: &Path, days: u32, now: i64) -> Vec<DaySummary> {
        daily_summary(path, days, now).unwrap_or_else(|e| panic!("daily summary: {e}"))
    }

    fn query<T: rusqlite::types::FromSql>(path: &Path, sql: &str) -> Vec<T> {
        select(path, sql, |row| row.get(0))
    }

    fn select<T>(
        path: &Path,
        sql: &str,
        read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Vec<T> {
        let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut statement = connection
            .prepare(sql)
            .unwrap_or_else(|e| panic!("prepare {sql}: {e}"));
        statement
            .query_map([], read)
            .unwrap_or_else(|e| panic!("run {sql}: {e}"))
            .map(|row| row.unwrap_or_else(|e| panic!("read a row of {sql}: {e}")))
            .collect()
    }

    fn day(date: &str, minutes: u32, running: Option<(u32, u32)>) -> DaySummary {
        DaySummary {
            date: date.into(),
            minutes,
            running_min: running.map(|r| r.0),
            running_max: running.map(|r| r.1),
            requests_per_s_peak: None,
            requests_per_s_avg: None,
        }
    }

    #[test]
    fn daily_min_and_max_of_running_containers_over_several_days() {
        let dir = history_dir("daily");
        let mut sink = open(&db(&dir), 30);
        // Nov 20, 10:00:00 to 10:05:00 every 10 s: web1 runs; web2, stopped, starts at 10:02.
        let start = NOV_20 + 10 * HOUR;
        for (i, at) in (start..=start + 300).step_by(10).enumerate() {
            let web2 = if at < start + 120 {
                "Stopped"
            } else {
                "Running"
            };
            let bytes = 1000 * i as u64;
            let cpu = if i % 2 == 0 { 10.0 } else { 30.0 };
            sink.publish(&snapshot(
                at,
                vec![
                    container("web1", "Running", cpu, bytes),
                    container("web2", web2, 0.0, 0),
                ],
            ));
        }
        // Nov 21: nothing. Nov 22, 08:00:00 to 08:02:50: web1, web2 and web3 (frozen) up;
        // web2 stops at 08:01:30; at 23:59:50 three run.
        let nov_22 = NOV_20 + 2 * 24 * HOUR;
        for at in (nov_22 + 8 * HOUR..nov_22 + 8 * HOUR + 180).step_by(10) {
            let web2 = if at < nov_22 + 8 * HOUR + 90 {
                "Running"
            } else {
                "Stopped"
            };
            sink.publish(&snapshot(
                at,
                vec![
                    container("web1", "Running", 5.0, 0),
                    container("web2", web2, 5.0, 0),
                    container("web3", "Frozen", 0.0, 0),
                ],
            ));
        }
        let late = nov_22 + 24 * HOUR - 10;
        sink.publish(&snapshot(
            late,
            vec![
                container("web1", "Running", 5.0, 0),
                container("web2", "Running", 5.0, 0),
                container("web3", "Running", 5.0, 0),
            ],
        ));
        drop(sink);

        let days = summary(&db(&dir), 4, late);
        assert_eq!(
            days,
            [
                day("2026-11-19", 0, None),
                day("2026-11-20", 6, Some((1, 2))),
                day("2026-11-21", 0, None),
                day("2026-11-22", 4, Some((1, 3))),
            ],
            "daily summaries"
        );

        let path = db(&dir);
        // web1 on Nov 20: CPU alternates 10 and 30 %, bytes grow 1000 a sample (6 a minute,
        // 5 in the first minute, whose first sample has nothing to compare with).
        let web1 = |column: &str| -> Vec<f64> {
            query(
                &path,
                &format!(
                    "SELECT {column} FROM container_minutes \
                     WHERE name = 'web1' AND minute < {} ORDER BY minute",
                    NOV_20 + 24 * HOUR
                ),
            )
        };
        assert_eq!(web1("samples"), [6.0, 6.0, 6.0, 6.0, 6.0, 1.0], "samples");
        assert_eq!(
            web1("cpu_percent_avg"),
            [20.0, 20.0, 20.0, 20.0, 20.0, 10.0],
            "average CPU %"
        );
        assert_eq!(
            web1("block_read_bytes"),
            [5000.0, 6000.0, 6000.0, 6000.0, 6000.0, 1000.0],
            "block read bytes moved per minute"
        );
        assert_eq!(
            web1("network_tx_bytes"),
            [20_000.0, 24_000.0, 24_000.0, 24_000.0, 24_000.0, 4000.0],
            "network tx bytes moved per minute"
        );
        assert_eq!(
            web1("memory_max_bytes"),
            [6000.0, 12_000.0, 18_000.0, 24_000.0, 30_000.0, 31_000.0],
            "peak memory"
        );
        // web2 was stopped for the first two minutes: no rows then.
        let web2: Vec<i64> = query(
            &path,
            &format!(
                "SELECT minute FROM container_minutes WHERE name = 'web2' AND minute < {}",
                NOV_20 + 24 * HOUR
            ),
        );
        assert_eq!(
            web2,
            [start + 120, start + 180, start + 240, start + 300],
            "web2's minutes"
        );
        let host_memory: Vec<Option<i64>> = query(
            &path,
            "SELECT DISTINCT memory_max_bytes FROM container_minutes WHERE kind = 'host'",
        );
        assert_eq!(host_memory, [None], "the host entry has no memory figure");
        let rates: Vec<Option<f64>> = query(
            &path,
            "SELECT nginx_requests_per_s_max FROM minutes \
             UNION SELECT requests_per_s_avg FROM container_minutes",
        );
        assert_eq!(
            rates,
            [None],
            "request rates stay NULL while nginx is not measured"
        );
        let frozen: Vec<i64> = query(&path, "SELECT max(frozen_max) FROM minutes");
        assert_eq!(frozen, [1], "frozen containers");

        let table = render_table(&days);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "date        minutes  running min  running max  req/s peak  req/s avg",
                "2026-11-19        0            -            -           -          -",
                "2026-11-20        6            1            2           -          -",
                "2026-11-21        0            -            -           -          -",
                "2026-11-22        4            1            3           -          -",
            ],
            "table:\n{table}"
        );
        let json = serde_json::to_value(&days[1]).expect("a summary serialises");
        assert_eq!(
            json,
            serde_json::json!({
                "date": "2026-11-20", "minutes": 6, "running_min": 1, "running_max": 2,
                "requests_per_s_peak": null, "requests_per_s_avg": null
            }),
            "JSON of a day"
        );
    }

    #[test]
    fn nginx_request_rates_are_kept_per_minute_for_nginx_and_each_container() {
        let dir = history_dir("nginx-rates");
        let mut sink = open(&db(&dir), 7);
        let start = NOV_20 + 7 * HOUR;
        for (i, (total, to_web1)) in [(10.0, 4.0), (30.0, 12.0)].into_iter().enumerate() {
            let mut counted = snapshot(
                start + i as i64,
                vec![fixtures::container("web1", "lxd", "Running")],
            );
            counted.nginx.master_pid = Some(900);
            counted.nginx.requests_per_s = total;
            counted.nginx.upstreams = vec![fixtures::upstream("web1", "10.0.0.2", to_web1, 1)];
            sink.publish(&counted);
        }
        // nginx gone for a sample: it does not drag the average down.
        sink.publish(&snapshot(
            start + 2,
            vec![fixtures::container("web1", "lxd", "Running")],
        ));
        // The next minute closes the first.
        sink.publish(&snapshot(start + 60, vec![]));
        drop(sink);
        let nginx = rows(
            &db(&dir),
            "SELECT nginx_requests_per_s_avg, nginx_requests_per_s_max FROM minutes \
             ORDER BY minute",
        );
        assert_eq!(nginx, [(Some(20.0), Some(30.0)), (None, None)]);
        let web1 = rows(
            &db(&dir),
            "SELECT requests_per_s_avg, requests_per_s_max FROM container_minutes \
             WHERE name = 'web1'",
        );
        assert_eq!(web1, [(Some(8.0), Some(12.0))]);
    }

    /// Rows of two nullable columns.
    fn rows(path: &Path, sql: &str) -> Vec<(Option<f64>, Option<f64>)> {
        select(path, sql, |row| Ok((row.get(0)?, row.get(1)?)))
    }

    #[test]
    fn retention_deletes_old_minutes() {
        let dir = history_dir("retention");
        let mut sink = open(&db(&dir), 1);
        let web = || vec![container("web1", "Running", 1.0, 0)];
        for at in [NOV_20, NOV_20 + 1800, NOV_20 + 24 * HOUR + 600] {
            sink.publish(&snapshot(at, web()));
        }
        drop(sink);
        let minutes: Vec<i64> = query(&db(&dir), "SELECT minute FROM minutes ORDER BY minute");
        assert_eq!(
            minutes,
            [NOV_20 + 1800, NOV_20 + 24 * HOUR + 600],
            "a day's retention keeps the last 24 hours"
        );
        let container_minutes: Vec<i64> = query(
            &db(&dir),
            "SELECT DISTINCT minute FROM container_minutes ORDER BY minute",
        );
        assert_eq!(
            container_minutes, minutes,
            "container rows go with their minutes"
        );
    }

    #[test]
    fn a_minute_stamped_in_the_future_deletes_nothing_and_is_flagged() {
        fn an_hour_into_nov_20() -> i64 {
            NOV_20 + HOUR
        }
        let dir = history_dir("future");
        let mut sink = HistorySink::start_with_clock(&db(&dir), 7, an_hour_into_nov_20)
            .expect("start the sink");
        let web = || vec![container("web1", "Running", 1.0, 0)];
        // A clock 30 days fast stamps one snapshot before NTP sets it right.
        for at in [
            NOV_20,
            NOV_20 + 1800,
            NOV_20 + 30 * 24 * HOUR,
            NOV_20 + 1860,
        ] {
            sink.publish(&snapshot(at, web()));
        }
        drop(sink);
        let minutes: Vec<(i64, i64)> = select(
            &db(&dir),
            "SELECT minute, ahead_of_clock FROM minutes ORDER BY minute",
            |row| Ok((row.get(0)?, row.get(1)?)),
        );
        assert_eq!(
            minutes,
            [
                (NOV_20, 0),
                (NOV_20 + 1800, 0),
                (NOV_20 + 1860, 0),
                (NOV_20 + 30 * 24 * HOUR, 1)
            ],
            "nothing deleted, the future minute kept and flagged"
        );
    }

    #[test]
    fn a_database_that_cannot_be_opened_is_tried_again_and_nothing_is_lost_meanwhile() {
        let dir = history_dir("unopenable");
        let path = db(&dir);
        // Its directory cannot be made: a file is in the way.
        let parent = path.parent().expect("a parent");
        fs::write(parent, "not a directory").expect("block the directory");
        let mut sink = open(&path, 7);
        let error = sink.error().expect("the sink says why");
        assert!(
            error.starts_with(&format!("cannot create {}", parent.display())),
            "{error}"
        );
        let web = || vec![container("web1", "Running", 1.0, 0)];
        sink.publish(&snapshot(NOV_20, web()));
        sink.publish(&snapshot(NOV_20 + 60, web()));
        sink.publish(&snapshot(NOV_20 + 120, web()));
        // Two finished minutes are waiting; the way is cleared.
        fs::remove_file(parent).expect("unblock the directory");
        sink.publish(&snapshot(NOV_20 + 180, web()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.error().is_some() {
            assert!(std::time::Instant::now() < deadline, "never reopened");
            thread::sleep(Duration::from_millis(10));
        }
        drop(sink);
        let minutes: Vec<i64> = query(&path, "SELECT minute FROM minutes ORDER BY minute");
        assert_eq!(
            minutes,
            [NOV_20, NOV_20 + 60, NOV_20 + 120, NOV_20 + 180],
            "the minutes from while it could not be opened are written"
        );
    }

    #[test]
    fn a_version_1_database_gets_the_new_column() {
        let dir = history_dir("migrate");
        let path = db(&dir);
        fs::create_dir_all(path.parent().expect("a parent")).expect("db dir");
        {
            let connection = Connection::open(&path).expect("create a version 1 database");
            let v1 = SCHEMA
                .replace(",\n    ahead_of_clock INTEGER NOT NULL DEFAULT 0", "")
                .replace("    disk_used_max_bytes INTEGER,\n", "");
            assert_ne!(v1, SCHEMA, "the version 1 schema lacks the column");
            connection
                .execute_batch(&format!("{v1} PRAGMA user_version = 1;"))
                .expect("version 1 schema");
            connection
                .execute(
                    "INSERT INTO minutes VALUES (?1, 1, 1, 1, 0, 0, 0, 0, 1.0, 0, NULL, NULL)",
                    [NOV_20 - 60],
                )
                .expect("a version 1 minute");
        }
        let mut sink = open(&path, 7);
        sink.publish(&snapshot(NOV_20, vec![]));
        drop(sink);
        let minutes: Vec<(i64, i64)> = select(
            &path,
            "SELECT minute, ahead_of_clock FROM minutes ORDER BY minute",
            |row| Ok((row.get(0)?, row.get(1)?)),
        );
        assert_eq!(minutes, [(NOV_20 - 60, 0), (NOV_20, 0)]);
        let version: Vec<i64> = query(&path, "PRAGMA user_version");
        assert_eq!(version, [i64::from(SCHEMA_VERSION)]);
    }

    /// Captures what `tracing` logs on this thread.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .expect("log buffer lock")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_corrupt_database_is_moved_aside_and_a_new_one_started() {
        let dir = history_dir("corrupt");
        let path = db(&dir);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("create db dir");
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
        fs::write(&path, &garbage).expect("write garbage");

        let log = Log::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let log = log.clone();
                move || log.clone()
            })
            .with_ansi(false)
            .finish();
        let mut sink = tracing::subscriber::with_default(subscriber, || open(&path, 7));
        sink.publish(&snapshot(
            NOV_20,
            vec![container("web1", "Running", 1.0, 0)],
        ));
        drop(sink);

        let asides: Vec<PathBuf> = fs::read_dir(path.parent().expect("has a parent"))
            .expect("list db dir")
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|p| p.to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(asides.len(), 1, "one file moved aside: {asides:?}");
        let aside = &asides[0];
        let name = aside.file_name().expect("a name").to_string_lossy();
        let stamp = name
            .strip_prefix("history.db.corrupt-")
            .unwrap_or_else(|| panic!("{name} is history.db.corrupt-<time>"));
        assert!(stamp.parse::<u64>().is_ok(), "{name} ends in a Unix time");
        assert_eq!(
            fs::read(aside).expect("read the moved file"),
            garbage,
            "the corrupt file is kept as it was"
        );
        let logged = String::from_utf8(log.0.lock().expect("log lock").clone()).expect("UTF-8");
        assert!(
            logged.contains("WARN")
                && logged.contains(&path.display().to_string())
                && logged.contains(&aside.display().to_string()),
            "a warning names both paths: {logged}"
        );
        assert_eq!(
            summary(&path, 1, NOV_20),
            [day("2026-11-20", 1, Some((1, 1)))],
            "the new database works"
        );
    }

    /// `container` with a root disk using `used` bytes (`None`: LXD measured nothing).
    fn with_disk(mut container: Container, used: Option<u64>) -> Container {
        let root = crate::model::Disk {
            path: "/".into(),
            used_bytes: used,
            ..crate::model::Disk::default()
        };
        container.disk = Some([("root".to_owned(), root)].into());
        container
    }

    #[test]
    fn the_root_disks_peak_is_kept_per_minute() {
        let dir = history_dir("disk");
        let mut sink = open(&db(&dir), 7);
        for (at, used) in [(0, 10_000), (10, 30_000), (20, 20_000), (60, 5000)] {
            sink.publish(&snapshot(
                NOV_20 + at,
                vec![
                    with_disk(container("web1", "Running", 1.0, 0), Some(used)),
                    with_disk(container("web2", "Running", 1.0, 0), None),
                ],
            ));
        }
        drop(sink);
        let rows: Vec<(String, Option<i64>)> = select(
            &db(&dir),
            "SELECT name, disk_used_max_bytes FROM container_minutes \
             WHERE kind = 'lxd' ORDER BY minute, name",
            |row| Ok((row.get(0)?, row.get(1)?)),
        );
        assert_eq!(
            rows,
            [
                ("web1".to_owned(), Some(30_000)),
                ("web2".to_owned(), None),
                ("web1".to_owned(), Some(5000)),
                ("web2".to_owned(), None),
            ],
            "peak per minute; NULL where LXD measured nothing"
        );
    }

    #[test]
    fn a_version_2_database_is_upgraded_and_keeps_its_minutes() {
        let dir = history_dir("upgrade");
        let path = db(&dir);
        {
            let version_2 = SCHEMA.replace("    disk_used_max_bytes INTEGER,\n", "");
            assert_ne!(version_2, SCHEMA);
            fs::create_dir_all(path.parent().expect("a parent")).expect("create the directory");
            let connection = Connection::open(&path).expect("create");
            connection
                .execute_batch(&format!("{version_2} PRAGMA user_version = 2;"))
                .expect("a version 2 schema");
            connection
                .execute(
                    "INSERT INTO container_minutes VALUES \
                     (?1, 'lxd', 'old', 1, 5.0, 100, 0, 0, 0, 0, NULL, NULL)",
                    [NOV_20],
                )
                .expect("an old minute");
        }
        let old = container_minutes(&path, "old", 0).expect("version 2 reads");
        assert_eq!(old.len(), 1);
        let mut sink = open(&path, 3650);
        sink.publish(&snapshot(
            NOV_20 + 60,
            vec![with_disk(container("web1", "Running", 1.0, 0), Some(7))],
        ));
        drop(sink);
        let version: Vec<i64> = query(&path, "PRAGMA user_version");
        assert_eq!(version, [i64::from(SCHEMA_VERSION)]);
        let disks: Vec<Option<i64>> = query(
            &path,
            "SELECT disk_used_max_bytes FROM container_minutes WHERE kind = 'lxd' ORDER BY minute",
        );
        assert_eq!(
            disks,
            [None, Some(7)],
            "the old minute kept, the new one with its disk"
        );
    }

    #[test]
    fn drop_writes_the_minute_in_progress() {
        let dir = history_dir("drop");
        let mut sink = open(&db(&dir), 7);
        for at in (NOV_20 + 60..NOV_20 + 90).step_by(5) {
            sink.publish(&snapshot(at, vec![container("web1", "Running", 1.0, 0)]));
        }
        drop(sink);
        let samples: Vec<i64> = query(&db(&dir), "SELECT samples FROM minutes");
        assert_eq!(samples, [6], "the partial minute's six snapshots");
    }

    #[test]
    fn a_finished_minute_is_written_without_waiting_for_drop() {
        let dir = history_dir("finished");
        let mut sink = open(&db(&dir), 7);
        sink.publish(&snapshot(NOV_20, vec![]));
        sink.publish(&snapshot(NOV_20 + 60, vec![]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while summary(&db(&dir), 1, NOV_20)[0].minutes == 0 {
            assert!(
                Instant::now() < deadline,
                "the finished minute was not written within 10 s"
            );
            thread::sleep(Duration::from_millis(10));
        }
        drop(sink);
        assert_eq!(summary(&db(&dir), 1, NOV_20)[0].minutes, 2, "both minutes");
    }

    #[test]
    fn a_minute_written_twice_is_merged() {
        let dir = history_dir("merge");
        // A daemon restarted within a minute: two sinks write the same minute.
        let first = vec![
            container("web1", "Running", 10.0, 0),
            container("web2", "Running", 0.0, 0),
        ];
        let mut sink = open(&db(&dir), 7);
        sink.publish(&snapshot(NOV_20, first.clone()));
        sink.publish(&snapshot(NOV_20 + 10, first));
        drop(sink);
        let mut sink = open(&db(&dir), 7);
        sink.publish(&snapshot(
            NOV_20 + 30,
            vec![container("web1", "Running", 40.0, 0)],
        ));
        drop(sink);
        let samples: Vec<i64> = query(&db(&dir), "SELECT samples FROM minutes");
        assert_eq!(samples, [3], "samples add up");
        assert_eq!(
            summary(&db(&dir), 1, NOV_20),
            [day("2026-11-20", 1, Some((1, 2)))],
            "min and max merge"
        );
        let cpu: Vec<f64> = query(
            &db(&dir),
            "SELECT cpu_percent_avg FROM container_minutes WHERE name = 'web1'",
        );
        assert_eq!(cpu, [20.0], "averages merge weighted by samples");
    }

    #[test]
    fn summary_of_a_missing_database_names_it() {
        let dir = history_dir("missing");
        let error = daily_summary(&db(&dir), 7, NOV_20).expect_err("no database there");
        assert_eq!(
            error.to_string(),
            format!(
                "no history database at {}: the daemon writes it",
                db(&dir).display()
            )
        );
    }

    #[test]
    fn summary_of_zero_days_is_empty_and_days_end_today() {
        let dir = history_dir("zero");
        drop(open(&db(&dir), 7));
        assert_eq!(summary(&db(&dir), 0, NOV_20), [], "zero days");
        let days = summary(&db(&dir), 2, NOV_20 + 24 * HOUR - 1);
        assert_eq!(
            days,
            [day("2026-11-19", 0, None), day("2026-11-20", 0, None)],
            "today is the day of now, UTC"
        );
    }

    #[test]
    fn parses_the_timestamps_the_snapshot_writes() {
        for (unix, nanos) in [
            (0, 0),
            (NOV_20, 0),
            (1_795_000_000, 196_581_371),
            (1_795_000_059, 500_000_000),
            (951_782_400, 1), // 2000-02-29
        ] {
            let text = time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(unix) * 1_000_000_000 + i128::from(nanos),
            )
            .expect("a valid time")
            .format(&Rfc3339)
            .expect("formats");
            assert_eq!(parse_timestamp(&text), Some((unix, nanos)), "{text}");
        }
        assert_eq!(
            parse_timestamp("2026-11-20T02:00:00.5+02:00"),
            Some((NOV_20, 500_000_000)),
            "an offset"
        );
        assert_eq!(
            parse_timestamp("2026-11-19T23:59:60.1234567891Z"),
            Some((NOV_20 - 1, 123_456_789)),
            "a leap second; digits past the nanosecond"
        );
        for bad in [
            "",
            "2026-11-20",
            "2026-11-20T00:00:00",
            "2026-11-20T00:00:00.Z",
            "2026-13-20T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-20T24:00:00Z",
            "2026-11-20T00:00:00+2:00",
            "2026-11-20X00:00:00Z",
            "2026-11-20T00:00:00Zjunk",
            "２026-11-20T00:00:00Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?} is rejected");
        }
    }

    #[test]
    fn snapshots_with_a_bad_timestamp_are_left_out() {
        let dir = history_dir("badtime");
        let mut sink = open(&db(&dir), 7);
        let mut bad = snapshot(NOV_20, vec![]);
        bad.host.timestamp = "yesterday".into();
        sink.publish(&bad);
        sink.publish(&snapshot(NOV_20, vec![]));
        drop(sink);
        let samples: Vec<i64> = query(&db(&dir), "SELECT samples FROM minutes");
        assert_eq!(samples, [1], "only the good snapshot");
    }

    #[test]
    fn the_sink_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<HistorySink>();
    }

    #[test]
    fn container_minutes_come_back_oldest_first_for_top() {
        let dir = TempDir::new("container-minutes");
        {
            let mut sink = open(&db(&dir), 7);
            for (minute, cpu) in [(0, 10.0), (1, 30.0), (2, 50.0)] {
                let web = vec![
                    container("web1", "Running", cpu, 0),
                    container("web2", "Running", 99.0, 0),
                ];
                sink.publish(&snapshot(NOV_20 + minute * 60 + 5, web));
            }
        }
        let points = container_minutes(&db(&dir), "web1", NOV_20 + 60).expect("read minutes");
        let cpu: Vec<(i64, f64)> = points
            .iter()
            .map(|p| (p.minute, p.cpu_percent_avg))
            .collect();
        assert_eq!(cpu, [(NOV_20 + 60, 30.0), (NOV_20 + 120, 50.0)]);
        assert_eq!(points[0].memory_max_bytes, Some(1000));
        assert!(matches!(
            container_minutes(&dir.path().join("none.db"), "web1", 0),
            Err(HistoryError::Missing { .. })
        ));
    }
}
