//! Helpers shared by the testbed's end-to-end tests (each test file uses some of them).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use herd_testbed::{Host, Testbed};

/// The probe binary built from this crate.
pub const PROBE: &str = env!("CARGO_BIN_EXE_herd-testbed-probe");

/// The probe as a host can run it: `herd` on a minimal host, the build output elsewhere.
pub fn probe_on(host: &Host) -> &'static str {
    if host.root_dir().is_some() {
        "herd"
    } else {
        PROBE
    }
}

/// A fresh testbed; fails the test (never skips) when the machine cannot host one.
pub fn testbed() -> Testbed {
    Testbed::new().unwrap_or_else(|e| panic!("cannot create a testbed: {e}"))
}

/// The value of `key=` in a probe's stdout.
pub fn value(output: &Output, key: &str) -> Option<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

/// Runs `program args` on `host` and returns its output (the command must start).
pub fn run(host: &Host, program: &str, args: &[&str]) -> Output {
    host.command(program, args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {args:?} on {}: {e}", host.name()))
}

/// Starts a probe listener on `host` and waits until it accepts connections.
pub fn listen(host: &Host, port: u16) -> Child {
    let mut child = host
        .command(probe_on(host), &["listen", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting a listener on {}: {e}", host.name()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reading the listener's first line");
    assert!(
        line.starts_with("listening="),
        "listener on {} said {line:?}",
        host.name()
    );
    child
}

/// Whether `from` can open a TCP connection to `to` within `ms` milliseconds.
pub fn can_connect(from: &Host, to: &str, ms: u64) -> bool {
    let out = run(from, probe_on(from), &["connect", to, &ms.to_string()]);
    out.status.success()
}

/// Polls `f` until it returns true or `timeout` passes; returns the last answer.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
pub fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Everything on the machine that still carries testbed `id` in its name, or lies at
/// one of `paths`.
pub fn leftovers(id: &str, paths: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    for line in String::from_utf8_lossy(&netns.stdout).lines() {
        if line.contains(id) {
            found.push(format!("netns {line}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    for line in mounts.lines() {
        if line.contains(id) {
            found.push(format!("mount {line}"));
        }
    }
    for path in paths {
        if path.exists() {
            found.push(format!("path {}", path.display()));
        }
    }
    if Path::new(&format!("/run/herd-testbed/{id}.owner")).exists() {
        found.push(format!("owner record of {id}"));
    }
    found
}

/// Every cgroup directory on the machine named `id` (searched a few levels deep).
pub fn cgroup_dirs_named(id: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, id: &str, depth: usize, out: &mut Vec<PathBuf>) {
        if depth > 8 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name() == id {
                out.push(entry.path());
            } else {
                walk(&entry.path(), id, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), id, 0, &mut out);
    out
}
