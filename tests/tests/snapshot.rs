//! `lynx snapshot` and `lynx daemon` as an operator runs them.
use std::{
    collections::BTreeSet,
    fs,
    net::Ipv4Addr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lynx::model::Snapshot;
use lynx_tests::{
    daemon::DaemonUnderTest,
    documented_example,
    http_client::{CountingBackend, get, session},
    lynx_bin, lynx_ok,
    nginx::Nginx,
    privileged, workspace,
};
use serde_json::Value;

/// Every key path in a JSON document (`host.cpus`, `containers[].cpu.ns`), arrays by their
/// elements; paths whose value is `null`, and empty arrays as `path[]`, also go to `nulls`.
fn key_paths(
    value: &Value,
    prefix: &str,
    out: &mut BTreeSet<String>,
    nulls: &mut BTreeSet<String>,
) {
    match value {
        Value::Null => {
            nulls.insert(prefix.to_owned());
        }
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                key_paths(value, &path, out, nulls);
            }
        }
        Value::Array(items) => {
            if items.is_empty() {
                nulls.insert(format!("{prefix}[]"));
            }
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out, nulls);
            }
        }
        _ => {}
    }
}

#[test]
fn snapshot_output_matches_the_documented_example() {
    if !privileged("snapshot_output_matches_the_documented_example") {
        return;
    }
    // nginx with traffic during the run, so that its endpoints are in the document.
    let backend = CountingBackend::start();
    let nginx = Nginx::start("snapshot", &[backend.addr]);
    let dir = std::env::temp_dir().join(format!("lynx-snapshot-test-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create the config dir");
    let config = dir.join("lynx.toml");
    fs::write(&config, nginx.lynx_config()).expect("write the config");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, port) = (Arc::clone(&stop), nginx.port);
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                session(Ipv4Addr::LOCALHOST, port, &[get("/")], Duration::ZERO, 1);
            }
        })
    };
    let config_arg = config.to_string_lossy();
    let output = lynx_ok(&["--config", &config_arg, "snapshot", "--interval", "300ms"]);
    stop.store(true, Ordering::SeqCst);
    load.join().expect("the load thread");
    let _ = fs::remove_dir_all(&dir);
    let real: Value = serde_json::from_str(&output).expect("lynx snapshot prints JSON");
    let example = documented_example();

    let (mut real_keys, mut real_nulls) = (BTreeSet::new(), BTreeSet::new());
    let mut documented_keys = BTreeSet::new();
    key_paths(&real, "", &mut real_keys, &mut real_nulls);
    key_paths(&example, "", &mut documented_keys, &mut BTreeSet::new());
    // What is null or empty in this run (say, a container's memory, or the groups, which
    // only a daemon has) has no keys below it here.
    documented_keys.retain(|key| {
        !real_nulls
            .iter()
            .any(|null| key.starts_with(&format!("{null}.")))
    });
    assert_eq!(
        real_keys, documented_keys,
        "docs/snapshot.md's example and a real snapshot differ in keys"
    );
    let docs = fs::read_to_string(workspace().join("docs/snapshot.md")).expect("read docs");
    for key in &real_keys {
        let leaf = key
            .rsplit(['.', ']'])
            .next()
            .expect("a key has a last part");
        assert!(
            docs.contains(&format!("`{key}")) || docs.contains(&format!("`{leaf}`")),
            "{key} is not in docs/snapshot.md's fields table"
        );
    }

    for document in [real, example] {
        let snapshot: Snapshot =
            serde_json::from_value(document).expect("fits the snapshot schema");
        let last = snapshot.containers.last().expect("containers listed");
        assert_eq!(
            (last.name.as_str(), last.kind.as_str()),
            ("host", "host"),
            "the host entry is last"
        );
    }
}

#[test]
fn unprivileged_run_names_the_missing_privilege_and_exits_2() {
    if !privileged("unprivileged_run_names_the_missing_privilege_and_exits_2") {
        return;
    }
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(lynx_bin())
        .args(["snapshot", "--interval", "100ms"])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(
        stderr.trim(),
        "lynx: missing privilege: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (lynx needs CAP_BPF, \
         CAP_PERFMON and CAP_NET_ADMIN, or root, to load its eBPF programs)"
    );
}

#[test]
fn daemon_rewrites_the_snapshot_file_and_stops_on_sigterm() {
    if !privileged("daemon_rewrites_the_snapshot_file_and_stops_on_sigterm") {
        return;
    }
    let mut daemon = DaemonUnderTest::start("sigterm", "100ms");
    let mut seen = BTreeSet::new();
    daemon.wait_for(
        "three distinct snapshots",
        Duration::from_secs(10),
        |snapshot| {
            seen.insert(snapshot.host.timestamp.clone());
            seen.len() >= 3
        },
    );
    let status = daemon.terminate();
    assert!(status.success(), "daemon exit on SIGTERM: {status}");
    assert!(daemon.log().contains("daemon stopping"), "{}", daemon.log());
}
