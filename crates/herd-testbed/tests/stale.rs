//! What a killed test process leaves behind is removed by `cleanup_stale`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{PROBE, cgroup_dirs_named, eventually, is_dead, leftovers};
use herd_testbed::{cleanup_stale, state_base};

#[test]
fn cleanup_stale_removes_what_a_killed_test_process_left() {
    // A process builds a testbed with busy hosts and is then killed: no Drop runs.
    let mut crashed = Command::new(PROBE)
        .args(["testbed-crash", PROBE])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(crashed.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let id = line
        .trim()
        .strip_prefix("id=")
        .unwrap_or_else(|| panic!("the crashing probe said {line:?}"))
        .to_owned();
    let groups = cgroup_dirs_named(&id);
    assert!(!groups.is_empty(), "the crashed testbed made no cgroups");
    let mut pids: Vec<u32> = Vec::new();
    for group in &groups {
        for host in std::fs::read_dir(group).unwrap().flatten() {
            if host.file_type().unwrap().is_dir() {
                let procs = std::fs::read_to_string(host.path().join("cgroup.procs")).unwrap();
                pids.extend(procs.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
            }
        }
    }
    assert!(!pids.is_empty(), "the crashed testbed's hosts run nothing");
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    let state = state_base().join(&id);
    let roots = state.join("hosts");
    assert!(roots.exists());
    assert!(!leftovers(&id, &[]).is_empty(), "nothing to clean up?");

    let report = cleanup_stale().unwrap();
    // Another test process on this machine may have cleaned it up first.
    assert!(
        eventually(Duration::from_secs(20), || leftovers(
            &id,
            std::slice::from_ref(&roots)
        )
        .is_empty()
            && cgroup_dirs_named(&id).is_empty()),
        "left behind: {:#?} {:#?}; report {report:?}",
        leftovers(&id, std::slice::from_ref(&roots)),
        cgroup_dirs_named(&id)
    );
    for pid in pids {
        assert!(
            eventually(Duration::from_secs(5), || is_dead(pid)),
            "process {pid} of the crashed testbed survived"
        );
    }
    // Logs of a crashed run are kept for debugging.
    assert!(state.join("logs/ws").exists());
    std::fs::remove_dir_all(&state).unwrap();
}
