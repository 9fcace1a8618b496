//! Minimal hosts: a root holding only the binary, its libraries and stub files, in
//! which the machine's own files are invisible.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{PROBE, can_connect, eventually, listen, run, testbed, value};
use herd_testbed::{HostSpec, MINIMAL_STATE_DIR};

fn walk(root: &Path, dir: &Path, files: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap().to_owned();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            dirs.push(rel);
            walk(root, &entry.path(), files, dirs);
        } else {
            assert!(kind.is_file(), "unexpected non-file {}", rel.display());
            files.push(rel);
        }
    }
}

#[test]
fn minimal_root_holds_only_the_binary_its_libraries_and_stub_files() {
    let mut bed = testbed();
    let host = bed.add_host(HostSpec::minimal("helper", PROBE)).unwrap();
    let root = host
        .root_dir()
        .expect("a minimal host has a root")
        .to_owned();
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk(&root, &root, &mut files, &mut dirs);

    let stubs = [
        "herd",
        "usr/local/bin/herd",
        "etc/passwd",
        "etc/group",
        "etc/hosts",
        "etc/nsswitch.conf",
        "etc/hostname",
    ];
    let mut libs = 0;
    for file in &files {
        let text = file.to_string_lossy();
        if stubs.contains(&text.as_ref()) {
            continue;
        }
        let in_lib_dir = text.starts_with("lib") || text.starts_with("usr/lib");
        assert!(
            in_lib_dir && text.contains(".so"),
            "unexpected file in the minimal root: {text}"
        );
        libs += 1;
    }
    for stub in stubs {
        assert!(files.contains(&PathBuf::from(stub)), "missing {stub}");
    }
    assert!(
        libs >= 2,
        "the probe is dynamically linked, expected its libc and loader, found {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("libc.so")),
        "{files:?}"
    );
    for dir in ["proc", "dev", "sys", "tmp", "etc", "var/lib/herd"] {
        assert!(dirs.contains(&PathBuf::from(dir)), "missing /{dir}");
    }
    for empty in ["proc", "dev", "sys", "tmp", "var/lib/herd"] {
        assert_eq!(
            fs::read_dir(root.join(empty)).unwrap().count(),
            0,
            "/{empty} not empty"
        );
    }
    assert_eq!(
        fs::read(root.join("herd")).unwrap(),
        fs::read(PROBE).unwrap(),
        "/herd is not a copy of the binary"
    );
    let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("herd"), ino("usr/local/bin/herd"));
    assert_eq!(host.machine_path("/etc/hosts"), root.join("etc/hosts"));
    assert_eq!(host.state_dir(), Path::new(MINIMAL_STATE_DIR));
}

#[test]
fn a_minimal_host_cannot_see_the_machine_files() {
    let mut bed = testbed();
    bed.add_host(HostSpec::minimal("helper", PROBE)).unwrap();
    let host = bed.host("helper");
    let exists = |path: &str| {
        let out = run(host, "herd", &["exists", path]);
        value(&out, "exists").unwrap_or_else(|| panic!("exists {path}: {out:?}")) == "yes"
    };
    assert!(exists("/herd"));
    assert!(exists("/usr/local/bin/herd"));
    assert!(!exists("/work"), "/work is visible on a minimal host");
    assert!(!exists("/home"), "/home is visible on a minimal host");
    assert!(!exists("/bin/sh"), "/bin/sh is visible on a minimal host");
    assert!(
        !exists(PROBE),
        "the machine's copy of the binary is visible"
    );
    // The kernel interfaces the agent needs are there.
    assert!(exists("/proc/self/status"));
    assert!(exists("/dev/null"));
    assert!(exists("/sys/fs/cgroup"));
    assert!(
        exists(&host.cgroup_dir().to_string_lossy()),
        "own cgroup not visible"
    );

    let out = run(host, "herd", &["ls", "/"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.lines().any(|l| l == "work" || l == "home"),
        "{listing}"
    );

    let out = run(host, "/herd", &["hostname"]);
    assert_eq!(value(&out, "hostname").as_deref(), Some("helper"));

    // The working directory defaults to / inside the root, and can be chosen.
    let out = host
        .command("herd", &["exists", "lib"])
        .current_dir("/usr/local")
        .output()
        .unwrap();
    assert_eq!(value(&out, "exists").as_deref(), Some("no"));
    let out = host.command("herd", &["exists", "herd"]).output().unwrap();
    assert_eq!(value(&out, "exists").as_deref(), Some("yes"));
}

#[test]
fn minimal_hosts_resolve_every_testbed_host_by_name() {
    let mut bed = testbed();
    bed.add_host(HostSpec::minimal("helper", PROBE)).unwrap();
    // Added later: the helper's /etc/hosts is rewritten to list it.
    bed.add_host(HostSpec::real_fs("ws")).unwrap();
    let (helper, ws) = (bed.host("helper"), bed.host("ws"));

    let out = run(helper, "herd", &["resolve", "ws"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(value(&out, "addr"), Some(ws.addr().to_string()));
    let hosts = fs::read_to_string(helper.machine_path("/etc/hosts")).unwrap();
    assert!(
        hosts.contains(&format!("{}\thelper", helper.addr())),
        "{hosts}"
    );

    let mut server = listen(ws, 7100);
    assert!(
        eventually(std::time::Duration::from_secs(10), || can_connect(
            helper, "ws:7100", 1000
        )),
        "helper cannot connect to ws by name"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn processes_on_a_minimal_host_mount_nothing_in_the_machine_namespace() {
    let mut bed = testbed();
    bed.add_host(HostSpec::minimal("helper", PROBE)).unwrap();
    let host = bed.host("helper");
    let mut child = host.command("herd", &["sleep"]).spawn().unwrap();
    assert!(eventually(std::time::Duration::from_secs(5), || host
        .pids()
        == vec![child.id()]));
    let root = host.root_dir().unwrap().to_string_lossy().into_owned();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&root),
        "a mount under {root} leaked into the machine's namespace"
    );
    // ...while the process itself sees a fresh /proc and the cgroup mounts, in its root.
    let theirs = fs::read_to_string(format!("/proc/{}/mountinfo", child.id())).unwrap();
    let mounted = |point: &str, fstype: &str| {
        theirs
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(point) && l.contains(&format!(" - {fstype} ")))
    };
    assert!(mounted("/proc", "proc"), "{theirs}");
    assert!(mounted("/sys", "sysfs"), "{theirs}");
    assert!(theirs.contains(" /sys/fs/cgroup"), "{theirs}");
    child.kill().unwrap();
    child.wait().unwrap();
}
