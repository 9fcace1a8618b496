//! Hosts reach each other over the bridge, and only each other; partition and heal work.

mod common;

use std::time::Duration;

use common::{PROBE, can_connect, eventually, listen, run, testbed, value};
use herd_testbed::HostSpec;

#[test]
fn two_hosts_talk_over_tcp_until_partitioned_and_again_after_heal() {
    let mut bed = testbed();
    bed.add_host(HostSpec::real_fs("ws")).unwrap();
    bed.add_host(HostSpec::real_fs("helper")).unwrap();
    let (ws, helper) = (bed.host("ws"), bed.host("helper"));
    assert_ne!(ws.addr(), helper.addr());
    let mut server = listen(helper, 7000);
    let target = format!("{}:7000", helper.addr());

    assert!(
        eventually(Duration::from_secs(10), || can_connect(ws, &target, 1000)),
        "ws cannot reach helper at {target}"
    );
    let sent = run(ws, PROBE, &["send", &target, "100000"]);
    assert_eq!(value(&sent, "received").as_deref(), Some("100000"));

    helper.partition().unwrap();
    assert!(helper.is_partitioned().unwrap());
    assert!(
        !can_connect(ws, &target, 1000),
        "ws reached helper although helper is partitioned"
    );
    assert!(
        !can_connect(helper, &format!("{}:7000", ws.addr()), 1000),
        "a partitioned host reached ws"
    );

    helper.heal().unwrap();
    assert!(!helper.is_partitioned().unwrap());
    assert!(
        eventually(Duration::from_secs(10), || can_connect(ws, &target, 1000)),
        "ws cannot reach helper after heal"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_host_only_has_a_route_to_the_testbed_subnet() {
    let mut bed = testbed();
    let host = bed.add_host(HostSpec::real_fs("solo")).unwrap();
    let routes = std::process::Command::new("ip")
        .args(["-n", host.netns_name(), "-4", "route", "show"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(
        !routes.contains("default"),
        "unexpected default route: {routes}"
    );
    assert_eq!(routes.lines().count(), 1, "routes: {routes}");
    assert!(
        routes.starts_with("10.213.0.0/24 dev eth0"),
        "routes: {routes}"
    );
    assert_eq!(host.addr().to_string(), "10.213.0.1");
    assert!(host.netns_path().exists());
}

#[test]
fn processes_run_with_the_host_name_and_in_the_host_netns() {
    let mut bed = testbed();
    bed.add_host(HostSpec::real_fs("alpha")).unwrap();
    let host = bed.host("alpha");
    let out = run(host, PROBE, &["hostname"]);
    assert_eq!(value(&out, "hostname").as_deref(), Some("alpha"));

    // The loopback of the host is its own: a listener there is invisible from another host.
    let out = run(host, "/bin/sh", &["-c", "readlink /proc/self/ns/net"]);
    let inside = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let outside = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(inside.starts_with("net:["), "{inside:?}");
    assert_ne!(
        inside,
        outside.to_string_lossy(),
        "host shares the machine's netns"
    );
    use std::os::unix::fs::MetadataExt;
    let ns_inode = std::fs::metadata(host.netns_path()).unwrap().ino();
    assert_eq!(inside, format!("net:[{ns_inode}]"));
}
