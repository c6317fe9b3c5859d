//! `lynx history` over minute buckets written through the daemon's own history sink, with
//! snapshots stamped at times the test chooses: the daily minimum and maximum of running
//! containers come out right. Needs no root.
use std::{fs, process::Command};

use lynx::{
    model::Snapshot,
    sink::{Sink, history::HistorySink},
};
use lynx_tests::{lynx_bin, workspace};
use serde_json::Value;
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

/// The documented example snapshot, as a template.
fn template() -> Snapshot {
    let docs = fs::read_to_string(workspace().join("docs/snapshot.md")).expect("read docs");
    let start = docs.find("```json\n").expect("an example") + 8;
    let end = start + docs[start..].find("```").expect("closed");
    serde_json::from_str(&docs[start..end]).expect("the example is a snapshot")
}

#[test]
fn history_reports_daily_min_and_max_of_running_containers() {
    let dir = std::env::temp_dir().join(format!("lynx-history-cli-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create test dir");
    let database = dir.join("history.db");

    let today = OffsetDateTime::now_utc().replace_time(time::Time::MIDNIGHT);
    // (days ago, minute of the day, running containers)
    let samples = [
        (2, 1, 2),
        (2, 2, 5),
        (2, 3, 3),
        (1, 10, 1),
        (1, 11, 1),
        (0, 0, 4),
    ];
    {
        let mut sink = HistorySink::start(&database, 7).expect("start the history sink");
        let mut snapshot = template();
        for (days_ago, minute, running) in samples {
            let at = today - Duration::days(days_ago) + Duration::minutes(minute);
            // Two snapshots in each minute, as a daemon writes several.
            for second in [5, 35] {
                snapshot.host.timestamp = (at + Duration::seconds(second))
                    .format(&Rfc3339)
                    .expect("format");
                snapshot.host.containers_running = running;
                sink.publish(&snapshot);
            }
        }
    } // Dropping the sink writes the minute in progress.

    let config = dir.join("lynx.toml");
    fs::write(
        &config,
        format!("[history]\npath = \"{}\"\n", database.display()),
    )
    .expect("config");
    let output = Command::new(lynx_bin())
        .arg("--config")
        .arg(&config)
        .args(["history", "--days", "3", "--json"])
        .output()
        .expect("run lynx history");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let days: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    let running: Vec<(Option<u64>, Option<u64>)> = days
        .iter()
        .map(|d| (d["running_min"].as_u64(), d["running_max"].as_u64()))
        .collect();
    assert_eq!(
        running,
        [(Some(2), Some(5)), (Some(1), Some(1)), (Some(4), Some(4))],
        "{days:#?}"
    );
    let table = Command::new(lynx_bin())
        .arg("--config")
        .arg(&config)
        .arg("history")
        .output()
        .expect("run lynx history");
    assert_eq!(
        String::from_utf8_lossy(&table.stdout).lines().count(),
        8,
        "a header and 7 days"
    );
    fs::remove_dir_all(&dir).expect("clean up");
}
