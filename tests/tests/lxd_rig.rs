//! The LXD rig itself: containers launch with addresses on the rig's bridge, serve HTTP to the
//! host and to each other, and report freeze, thaw, stop and start through `lxc list`.
use std::thread;

use lynx_tests::{
    lxd::{BRIDGE, TestContainer, http_get, lxd, on_bridge},
    privileged,
};

#[test]
fn lxd_rig_runs_serves_and_freezes_containers() {
    if !privileged("lxd_rig_runs_serves_and_freezes_containers") {
        return;
    }
    let lxd = lxd();
    // Launched in parallel, as parallel tests would.
    let (web, client) = thread::scope(|scope| {
        let web = scope.spawn(|| TestContainer::launch("rig-web"));
        let client = scope.spawn(|| TestContainer::launch("rig-client"));
        (
            web.join().expect("launch rig-web"),
            client.join().expect("launch rig-client"),
        )
    });
    for container in [&web, &client] {
        assert!(
            on_bridge(container.ipv4()),
            "{} has {}, not on {BRIDGE}",
            container.name(),
            container.ipv4()
        );
        assert_eq!(lxd.status(container.name()).as_deref(), Some("Running"));
    }
    assert_ne!(web.ipv4(), client.ipv4(), "two containers share an address");

    let body = web.serve_http(8080);
    assert_eq!(http_get(web.ipv4(), 8080, "/"), body, "GET from the host");
    let url = format!("http://{}:8080/", web.ipv4());
    assert_eq!(
        client.exec_ok(&["wget", "-qO-", &url]),
        body,
        "GET from the other container"
    );

    client.freeze();
    assert_eq!(lxd.status(client.name()).as_deref(), Some("Frozen"));
    client.unfreeze();
    assert_eq!(lxd.status(client.name()).as_deref(), Some("Running"));
    assert_eq!(client.exec_ok(&["echo", "thawed"]), "thawed\n");
    client.stop();
    assert_eq!(lxd.status(client.name()).as_deref(), Some("Stopped"));
    client.start();
    assert_eq!(lxd.status(client.name()).as_deref(), Some("Running"));
    assert!(on_bridge(client.ipv4()), "{} after restart", client.ipv4());

    let name = client.name().to_owned();
    drop(client);
    assert_eq!(lxd.status(&name), None, "{name} is deleted on drop");
}
