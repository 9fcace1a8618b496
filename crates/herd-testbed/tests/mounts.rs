//! Each host has one mount namespace: its mounts are shared by its processes and seen
//! by no other host and not by the machine.

mod common;

use std::fs;

use common::{PROBE, probe_on, run, testbed, value};
use herd_testbed::{Host, HostSpec};

fn exists(host: &Host, path: &str) -> bool {
    let out = run(host, probe_on(host), &["exists", path]);
    value(&out, "exists").as_deref() == Some("yes")
}

fn mount_and_mark(host: &Host, dir: &str) {
    let out = run(host, probe_on(host), &["mount-tmpfs", dir]);
    assert!(out.status.success(), "mount on {}: {out:?}", host.name());
    let out = run(
        host,
        probe_on(host),
        &["write", &format!("{dir}/marker"), "x"],
    );
    assert!(out.status.success(), "write on {}: {out:?}", host.name());
}

#[test]
fn a_mount_made_on_a_real_fs_host_stays_on_that_host() {
    let mut bed = testbed();
    bed.add_host(HostSpec::real_fs("a")).unwrap();
    bed.add_host(HostSpec::real_fs("b")).unwrap();
    let (a, b) = (bed.host("a"), bed.host("b"));
    // A directory every host (and the machine) can see, being real-fs hosts.
    let dir = a.state_dir().to_string_lossy().into_owned();
    mount_and_mark(a, &dir);
    let marker = format!("{dir}/marker");

    assert!(
        exists(a, &marker),
        "a later process on the same host misses the mount"
    );
    assert!(!exists(b, &marker), "another host sees the mount");
    assert!(!fs::exists(&marker).unwrap(), "the machine sees the mount");
    let machine = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !machine.contains(&dir),
        "the mount leaked into the machine: {dir}"
    );
    assert!(a.mntns_path().exists());
    // The testbed's teardown copes with mounts inside its state directory.
    bed.shutdown().unwrap();
}

#[test]
fn a_mount_made_on_a_minimal_host_stays_on_that_host() {
    let mut bed = testbed();
    bed.add_host(HostSpec::minimal("m", PROBE)).unwrap();
    let m = bed.host("m");
    mount_and_mark(m, "/tmp");
    assert!(exists(m, "/tmp/marker"));
    assert!(
        !m.machine_path("/tmp/marker").exists(),
        "the machine sees the mount"
    );
    bed.shutdown().unwrap();
}
