//! The nginx rig itself: nginx balances over two LXD containers serving HTTP, and its
//! `stub_status` counts exactly the requests wrk made (the oracle later tests lean on).
use std::{net::SocketAddr, thread, time::Duration};

use lynx_tests::{
    lxd::{TestContainer, http_get, lxd},
    nginx::{Nginx, wrk},
    privileged,
};

#[test]
fn nginx_balances_over_containers_and_stub_status_counts_every_request() {
    if !privileged("nginx_balances_over_containers_and_stub_status_counts_every_request") {
        return;
    }
    lxd();
    let backends: Vec<TestContainer> = thread::scope(|scope| {
        let launches: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| TestContainer::launch("lb")))
            .collect();
        launches
            .into_iter()
            .map(|l| l.join().expect("launch"))
            .collect()
    });
    let pages: Vec<String> = backends.iter().map(|b| b.serve_http(8080)).collect();
    let addresses: Vec<SocketAddr> = backends
        .iter()
        .map(|b| SocketAddr::from((b.ipv4(), 8080)))
        .collect();
    let nginx = Nginx::start("rig", &addresses);

    // Round robin per worker: of 10 requests one of the 2 workers handles 5 or more, and those
    // alternate between the backends.
    let served: Vec<String> = (0..10)
        .map(|_| http_get([127, 0, 0, 1].into(), nginx.port, "/"))
        .collect();
    for page in &pages {
        assert!(
            served.contains(page),
            "{page:?} was never served: {served:?}"
        );
    }

    for keep_alive in [true, false] {
        let before = nginx.stub_status();
        let connections = 16;
        let totals = wrk(
            &nginx.url("/"),
            connections,
            Duration::from_secs(2),
            keep_alive,
        );
        let after = nginx.stub_status();
        eprintln!("keep-alive {keep_alive}: wrk {totals:?}; stub_status {before:?} -> {after:?}");
        assert!(
            totals.requests > 500,
            "wrk made only {} requests",
            totals.requests
        );
        assert_eq!((totals.non_2xx, totals.socket_errors), (0, 0));
        // The second stub_status request counts itself. wrk stops at its deadline and does
        // not count requests still in flight, which nginx did receive: at most one a
        // connection.
        let received = after.requests - before.requests - 1;
        assert!(
            (totals.requests..=totals.requests + u64::from(connections)).contains(&received),
            "keep-alive {keep_alive}: nginx counted {received}, wrk completed {}",
            totals.requests
        );
    }
}
