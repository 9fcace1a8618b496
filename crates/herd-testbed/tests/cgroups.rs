//! Host processes live in the host's cgroups, limits are written and enforced, and
//! kill_all kills whole process trees.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{PROBE, eventually, is_dead, run, testbed, value};
use herd_testbed::{CgroupVersion, HostSpec};

#[test]
fn host_processes_are_in_every_host_cgroup() {
    let mut bed = testbed();
    bed.add_host(HostSpec::real_fs("ws")).unwrap();
    let host = bed.host("ws");
    let mut child = host.command(PROBE, &["sleep"]).spawn().unwrap();
    let pid = child.id();
    assert!(!host.cgroup_dirs().is_empty());
    assert!(host.cgroup_dirs().contains(&host.cgroup_dir().to_owned()));
    for dir in host.cgroup_dirs() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.split_whitespace().any(|p| p == pid.to_string()),
            "pid {pid} not in {}: {procs:?}",
            dir.display()
        );
        assert!(
            dir.to_string_lossy().contains(bed.id()),
            "{}",
            dir.display()
        );
        assert!(dir.ends_with("ws"), "{}", dir.display());
    }
    assert_eq!(host.pids(), vec![pid]);
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(own.contains(&format!("/{}/ws", bed.id())), "{own}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn kill_all_kills_a_forked_tree() {
    let mut bed = testbed();
    bed.add_host(HostSpec::real_fs("victim")).unwrap();
    bed.add_host(HostSpec::real_fs("bystander")).unwrap();
    let host = bed.host("victim");
    let mut bystander = bed
        .host("bystander")
        .command(PROBE, &["sleep"])
        .spawn()
        .unwrap();
    // tree 3: the root, then two children per level (the next level and a sleeper).
    let mut root = host
        .command(PROBE, &["tree", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(root.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), format!("pid={}", root.id()));
    assert!(
        eventually(Duration::from_secs(20), || host.pids().len() == 7),
        "expected 7 processes in the tree, found {:?}",
        host.pids()
    );
    let pids = host.pids();

    host.kill_all().unwrap();

    assert!(host.pids().is_empty(), "left: {:?}", host.pids());
    for pid in &pids {
        assert!(
            eventually(Duration::from_secs(5), || is_dead(*pid)),
            "pid {pid} survived"
        );
    }
    let status = root.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status}");
    // The other host is untouched.
    assert_eq!(bed.host("bystander").pids(), vec![bystander.id()]);
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn cpu_quota_is_written_and_enforced() {
    let mut bed = testbed();
    bed.add_host(HostSpec::real_fs("slow").cpu_quota(0.25))
        .unwrap();
    bed.add_host(HostSpec::real_fs("free")).unwrap();
    let slow = bed.host("slow");
    let dir = slow.cgroup_dir();
    match slow.cgroup_version() {
        CgroupVersion::V1 => {
            let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap().trim().to_owned();
            assert_eq!(read("cpu.cfs_period_us"), "100000");
            assert_eq!(read("cpu.cfs_quota_us"), "25000");
            let free = bed.host("free").cgroup_dir().join("cpu.cfs_quota_us");
            assert_eq!(fs::read_to_string(free).unwrap().trim(), "-1");
        }
        CgroupVersion::V2 => {
            let max = fs::read_to_string(dir.join("cpu.max")).unwrap();
            assert_eq!(max.trim(), "25000 100000");
        }
    }
    // Two threads spinning for 1.5 s of wall time may use at most ~0.4 s of CPU under a
    // quarter-CPU quota (the quota is a hard ceiling, so this cannot flake upwards).
    let out = run(slow, PROBE, &["burn", "1.5", "2"]);
    assert!(out.status.success(), "{out:?}");
    let cpu: f64 = value(&out, "cpu_seconds").unwrap().parse().unwrap();
    assert!(
        cpu < 0.75,
        "quota 0.25 CPU but used {cpu} s of CPU in 1.5 s"
    );
    assert!(cpu > 0.05, "burn used no CPU at all ({cpu} s)");
}

#[test]
fn memory_limit_is_written() {
    let mut bed = testbed();
    let limit = 256u64 << 20;
    let host = bed
        .add_host(HostSpec::real_fs("small").memory_limit(limit))
        .unwrap();
    let file = host
        .cgroup_dirs()
        .iter()
        .find_map(|d| {
            ["memory.limit_in_bytes", "memory.max"]
                .iter()
                .map(|f| d.join(f))
                .find(|p| p.exists())
        })
        .expect("no memory controller file in the host's cgroups");
    assert_eq!(
        fs::read_to_string(&file).unwrap().trim(),
        limit.to_string(),
        "{}",
        file.display()
    );
}
