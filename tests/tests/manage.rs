//! `lynx containers` and `lynx images` against a real LXD, each result checked through LXD's
//! API with the independent `lxc` client.
use std::{
    net::Ipv4Addr,
    process::{Command, Output},
};

use lynx_tests::{
    lxd::{BRIDGE_SUBNET, IMAGE, TestContainer, lxd},
    lynx_bin, lynx_ok, privileged,
};

fn lynx(args: &[&str]) -> Output {
    Command::new(lynx_bin())
        .args(args)
        .output()
        .expect("run lynx")
}

#[test]
fn container_actions_take_effect_in_lxd() {
    if !privileged("container_actions_take_effect_in_lxd") {
        return;
    }
    let lxd = lxd();
    let container = TestContainer::launch("manage");
    let name = container.name();

    let listed = lynx_ok(&["containers", "list"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with(name))
        .expect("listed");
    assert!(
        row.contains("Running") && row.contains(&container.ipv4().to_string()),
        "{row}"
    );

    for (action, expected) in [
        ("freeze", "Frozen"),
        ("unfreeze", "Running"),
        ("stop", "Stopped"),
        ("start", "Running"),
        ("restart", "Running"),
    ] {
        assert_eq!(
            lynx_ok(&["containers", action, name]),
            format!("{name} (lxd): {expected}\n")
        );
        assert_eq!(
            lxd.status(name).as_deref(),
            Some(expected),
            "after {action}"
        );
    }

    // A static address, from the next start on.
    let host = 250 - (std::process::id() % 40) as u8;
    let address = Ipv4Addr::from(u32::from(BRIDGE_SUBNET) | u32::from(host));
    lynx_ok(&["containers", "set-ipv4", name, &address.to_string()]);
    lynx_ok(&["containers", "restart", name]);
    let state = lxd.lxc(&["query", &format!("/1.0/instances/{name}")]);
    assert!(
        state.contains(&format!("\"ipv4.address\": \"{address}\"")),
        "{state}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !lxd
        .lxc(&["list", name, "-c", "4", "--format", "csv"])
        .contains(&address.to_string())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never got {address}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let missing = lynx(&["containers", "stop", "lynx-t-no-such-container"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("Instance not found"));
}

#[test]
fn images_are_listed_and_deleted_but_not_while_in_use() {
    if !privileged("images_are_listed_and_deleted_but_not_while_in_use") {
        return;
    }
    let lxd = lxd();
    let user = TestContainer::launch("image-user");
    assert!(
        lynx_ok(&["images", "list"])
            .lines()
            .any(|l| l.starts_with(IMAGE))
    );

    let refused = lynx(&["images", "delete", IMAGE]);
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains(user.name()) && message.contains("not deleted"),
        "{message}"
    );
    assert!(
        lxd.lxc(&["image", "list", "--format", "csv"])
            .contains(IMAGE),
        "still there"
    );

    // An image nothing uses: published from a stopped test container.
    let alias = format!("lynx-t-published-{}", std::process::id());
    user.stop();
    lxd.lxc(&["publish", user.name(), "--alias", &alias]);
    assert!(lynx_ok(&["images", "delete", &alias]).starts_with(&format!("deleted image {alias}")));
    assert!(
        !lxd.lxc(&["image", "list", "--format", "csv"])
            .contains(&alias),
        "{alias} deleted"
    );

    assert_eq!(
        lynx(&["images", "delete", &alias]).status.code(),
        Some(2),
        "now unknown"
    );
}
