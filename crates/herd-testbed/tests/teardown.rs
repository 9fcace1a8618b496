//! Tearing a testbed down leaves nothing behind, whether it is dropped, shut down, or
//! dropped by a panicking test; bad specs and failed hosts leave nothing either.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::{PROBE, cgroup_dirs_named, eventually, is_dead, leftovers, testbed};
use herd_testbed::{Error, HostSpec, KEEP_LOGS_ENV, Testbed};

/// Everything a busy testbed made: id, paths, and the pids of its processes.
struct Made {
    id: String,
    paths: Vec<PathBuf>,
    pids: Vec<u32>,
    state_dir: PathBuf,
    log_file: PathBuf,
}

/// Builds a testbed with a real-fs and a minimal host, both running processes.
fn busy_testbed() -> (Testbed, Made) {
    let mut bed = testbed();
    bed.add_host(
        HostSpec::real_fs("ws")
            .cpu_quota(0.5)
            .bandwidth_mbit(100)
            .memory_limit(512 << 20),
    )
    .unwrap();
    bed.add_host(HostSpec::minimal("helper", PROBE)).unwrap();
    let mut pids = Vec::new();
    let ws = bed.host("ws").command(PROBE, &["tree", "2"]);
    let log_file = ws.log_path().to_owned();
    pids.push(ws.spawn_detached());
    pids.push(
        bed.host("helper")
            .command("herd", &["sleep"])
            .spawn_detached(),
    );
    assert!(eventually(Duration::from_secs(10), || bed
        .host("ws")
        .pids()
        .len()
        == 5));
    pids.extend(bed.host("ws").pids());
    let mut paths: Vec<PathBuf> = bed.cgroup_dirs();
    for host in bed.hosts() {
        paths.extend(host.cgroup_dirs().iter().cloned());
        paths.push(host.netns_path());
        paths.extend(host.root_dir().map(|r| r.to_owned()));
    }
    paths.push(bed.bridge_netns_path());
    let made = Made {
        id: bed.id().to_owned(),
        paths,
        pids,
        state_dir: bed.state_dir().to_owned(),
        log_file,
    };
    (bed, made)
}

/// Spawns and forgets the child handle (its process is the testbed's to kill).
trait SpawnDetached {
    fn spawn_detached(self) -> u32;
}

impl SpawnDetached for herd_testbed::HostCommand {
    fn spawn_detached(mut self) -> u32 {
        self.spawn().unwrap().id()
    }
}

fn assert_all_gone(made: &Made) {
    let left = leftovers(&made.id, &made.paths);
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(cgroup_dirs_named(&made.id).is_empty());
    for pid in &made.pids {
        assert!(
            eventually(Duration::from_secs(5), || is_dead(*pid)),
            "process {pid} survived the teardown"
        );
    }
}

#[test]
fn drop_leaves_no_netns_cgroup_mount_process_or_directory_behind() {
    let (bed, made) = busy_testbed();
    assert!(made.log_file.exists());
    assert!(leftovers(&made.id, &made.paths).len() >= made.paths.len());
    drop(bed);
    assert_all_gone(&made);
    if std::env::var_os(KEEP_LOGS_ENV).is_none() {
        assert!(
            !made.state_dir.exists(),
            "{} left",
            made.state_dir.display()
        );
    }
}

#[test]
fn shutdown_reports_a_clean_teardown() {
    let (bed, made) = busy_testbed();
    bed.shutdown().unwrap();
    assert_all_gone(&made);
}

#[test]
fn a_panicking_test_still_cleans_up_and_keeps_its_logs() {
    let made: Mutex<Option<Made>> = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (_bed, m) = busy_testbed();
        *made.lock().unwrap() = Some(m);
        panic!("a test failing with a testbed in scope");
    }));
    assert!(result.is_err());
    let made = made.into_inner().unwrap().unwrap();
    assert_all_gone(&made);
    assert!(
        made.log_file.exists(),
        "the log of a failed test was deleted: {}",
        made.log_file.display()
    );
    assert!(!made.state_dir.join("hosts").exists());
    std::fs::remove_dir_all(&made.state_dir).unwrap();
}

#[test]
fn bad_specs_are_rejected_and_a_failed_host_leaves_nothing_behind() {
    let mut bed = testbed();
    bed.add_host(HostSpec::real_fs("ws")).unwrap();
    for bad in [
        HostSpec::real_fs("ws"),
        HostSpec::real_fs("Bad_Name"),
        HostSpec::real_fs(""),
        HostSpec::real_fs("-x"),
        HostSpec::real_fs("ok").bandwidth_mbit(0),
        HostSpec::real_fs("ok").cpu_quota(0.0),
        HostSpec::real_fs("ok").memory_limit(10),
    ] {
        let err = bed.add_host(bad.clone()).unwrap_err();
        assert!(matches!(err, Error::InvalidSpec(_)), "{bad:?}: {err}");
    }

    let err = bed
        .add_host(HostSpec::minimal("broken", "/nonexistent/herd"))
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/herd"), "{err}");
    let netns = format!("{}-broken", bed.id());
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&netns));
    for dir in bed.cgroup_dirs() {
        assert!(!dir.join("broken").exists(), "{}", dir.display());
    }
    assert!(!bed.state_dir().join("hosts/broken").exists());
    // The name is free again, and the testbed still works.
    bed.add_host(HostSpec::real_fs("broken")).unwrap();
    assert_eq!(bed.hosts().count(), 2);
}

#[test]
fn testbed_new_fails_clearly_without_root() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // A copy of the probe that user nobody can execute.
    let dir = std::env::temp_dir().join(format!("herd-testbed-nonroot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let probe = dir.join("probe");
    std::fs::copy(PROBE, &probe).unwrap();
    // Another test's fork may briefly hold the copy open for writing (ETXTBSY): retry.
    let out = (0..50)
        .find_map(|_| {
            match Command::new(&probe)
                .arg("testbed-new")
                .uid(65534)
                .gid(65534)
                .output()
            {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    None
                }
                r => Some(r.unwrap()),
            }
        })
        .expect("the probe copy stayed busy");
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("needs root"), "{stdout}");
    assert!(stdout.contains("uid is 65534"), "{stdout}");
}
