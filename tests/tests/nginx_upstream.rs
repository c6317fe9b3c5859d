//! The upstream file Lynx owns, against a real nginx over LXD backends: changes are validated,
//! reloaded and serve at once; a config nginx rejects never replaces a working one; a group
//! with no running container answers 503.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    thread::{self, sleep},
    time::{Duration, Instant},
};

use lynx::nginx::{
    Applied, NginxError, UpstreamFile,
    upstream::{Upstream, render},
};
use lynx_tests::{
    lxd::{TestContainer, lxd, try_http_get},
    nginx::{Nginx, Upstreams},
    privileged,
};

const NAME: &str = "lynx_web";

fn file_for(backends: &[&TestContainer], fallback_port: u16) -> String {
    let servers = backends
        .iter()
        .map(|b| SocketAddr::from((b.ipv4(), 8080)))
        .collect();
    render(
        &[Upstream {
            name: NAME.into(),
            servers,
        }],
        fallback_port,
    )
    .expect("renders")
}

/// Waits until six fetches in a row satisfy `expected` (old workers finish their last
/// requests after a reload), or panics with what was answered.
fn serves(nginx: &Nginx, what: &str, expected: impl Fn(&Result<String, String>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut streak = 0;
    while streak < 6 {
        let answer = try_http_get(Ipv4Addr::LOCALHOST, nginx.port, "/");
        streak = if expected(&answer) { streak + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "expected {what}, last answer {answer:?}"
        );
        if streak == 0 {
            sleep(Duration::from_millis(20));
        }
    }
}

/// Waits until nginx serves `page`.
fn serves_page(nginx: &Nginx, page: &str) {
    serves(nginx, page, |answer| answer.as_deref() == Ok(page));
}

#[test]
fn upstream_changes_are_validated_reloaded_and_never_break_nginx() {
    if !privileged("upstream_changes_are_validated_reloaded_and_never_break_nginx") {
        return;
    }
    lxd();
    let [a, b] = thread::scope(|scope| {
        [0, 1]
            .map(|_| scope.spawn(|| TestContainer::launch("upstream")))
            .map(|launch| launch.join().expect("launch"))
    });
    let (page_a, page_b) = (a.serve_http(8080), b.serve_http(8080));
    let dir = std::env::temp_dir().join(format!("lynx-upstream-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create test dir");
    let path = dir.join("lynx-upstreams.conf");
    let fallback = 20_000 + (std::process::id() % 10_000) as u16;
    fs::write(&path, file_for(&[&a], fallback)).expect("first upstream file");
    let nginx = Nginx::start_with(
        "upstream",
        Upstreams::Include {
            file: &path,
            name: NAME,
        },
    );
    let mut owned = UpstreamFile::new(path.clone(), nginx.control());
    serves_page(&nginx, &page_a);

    let started = Instant::now();
    assert_eq!(
        owned
            .apply(&file_for(&[&b], fallback))
            .expect("switch to b"),
        Applied::Reloaded
    );
    serves_page(&nginx, &page_b);
    eprintln!(
        "switching the upstream and serving from it took {:?}",
        started.elapsed()
    );
    assert_eq!(
        owned.apply(&file_for(&[&b], fallback)).expect("same again"),
        Applied::Unchanged
    );

    // The operator breaks the main config: the new upstream file is rejected and rolled back.
    let main_config = nginx.control().main_config;
    let good = fs::read_to_string(&main_config).expect("read nginx.conf");
    fs::write(
        &main_config,
        format!("{good}\nthis_is_not_a_directive on;\n"),
    )
    .expect("break it");
    let both = file_for(&[&a, &b], fallback);
    match owned.apply(&both) {
        Err(NginxError::Rejected { message }) => {
            assert!(
                message.contains("unknown directive \"this_is_not_a_directive\""),
                "{message}"
            )
        }
        other => panic!("a broken main config must be rejected, got {other:?}"),
    }
    assert_eq!(
        fs::read_to_string(&path).expect("read back"),
        file_for(&[&b], fallback),
        "restored"
    );
    serves_page(&nginx, &page_b);
    assert_eq!(owned.apply(&both).expect("no retry"), Applied::StillFailing);

    fs::write(&main_config, good).expect("mend nginx.conf");
    assert_eq!(owned.apply(&both).expect("now it takes"), Applied::Reloaded);

    // No running container: nginx -t still passes, and clients get 503.
    assert_eq!(
        owned.apply(&file_for(&[], fallback)).expect("empty group"),
        Applied::Reloaded
    );
    serves(&nginx, "503 from the fallback", |answer| {
        answer.as_ref().is_err_and(|e| e.contains(" 503 "))
    });
    drop(nginx);
    fs::remove_dir_all(&dir).expect("clean up");
}
