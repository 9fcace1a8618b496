//! How long a task's start takes, warm (a prepared init whose root is parked, as the
//! helper keeps them) and cold ([`herd_sandbox::spawn`]). Not a pass/fail test: run it
//! by hand, as root, in release mode, and compare the figures before and after a
//! change on the task's start path:
//!
//! ```text
//! cargo build --release -p herd-sandbox && cargo run --release -p herd-sandbox --example start-timing
//! ```
//!
//! Warm: from `Parked::start_gated` to `Sandbox::wait_ended` returning for `/bin/true`
//! (hand-over, gate, hidden paths, fork, the task's own setup, exec, `true`, teardown
//! of the tree); the init, its cgroup and the root are made before the clock starts.

use std::path::Path;
use std::time::{Duration, Instant};

use herd_sandbox::{CgroupSpec, SandboxSpec, StdioFd, TaskExit, TaskStdio};

/// The crate's init binary, built beside the examples' directory (`cargo build
/// --release -p herd-sandbox` first).
fn init() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("this example's path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("the target directory")
        .join("herd-sandbox-init")
}

fn true_spec(dir: &Path) -> SandboxSpec {
    let mut spec = SandboxSpec::new(
        "/",
        dir.join("upper"),
        dir.join("work"),
        vec!["/bin/true".into()],
    );
    spec.stdio = TaskStdio {
        stdin: StdioFd::Null,
        stdout: StdioFd::Null,
        stderr: StdioFd::Null,
    };
    spec.uid = 65534;
    spec.gid = 65534;
    spec.idle = true;
    spec.hidden = vec!["/root/.ssh".into()];
    spec
}

fn summary(what: &str, mut t: Vec<Duration>) {
    t.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = t.iter().map(|d| us(*d)).sum::<f64>() / t.len() as f64;
    println!(
        "{what}: n={} median {:.0} us, mean {mean:.0} us, p10 {:.0} us, p90 {:.0} us",
        t.len(),
        us(t[t.len() / 2]),
        us(t[t.len() / 10]),
        us(t[t.len() * 9 / 10]),
    );
}

fn start_timing() {
    let n: usize = std::env::var("HERD_TIMING_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let base = tempfile::Builder::new()
        .prefix("herd-sandbox-timing")
        .tempdir_in("/tmp")
        .unwrap();
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    for i in 0..n {
        let dir = base.path().join(format!("w{i}"));
        for d in ["upper", "work"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let prepared = herd_sandbox::prepare(
            &init(),
            Some(CgroupSpec {
                parent: None,
                name: format!("herd-timing-{}-{i}", std::process::id()),
                cpus: Some(1.0),
                memory: Some(1 << 30),
            }),
            &herd_sandbox::Net::Loopback,
        )
        .unwrap();
        let parked = prepared
            .park(Path::new("/"), &dir.join("upper"), &dir.join("work"))
            .unwrap();
        let spec = true_spec(&dir);
        // The previous sandbox's teardown (in the background) must not compete.
        std::thread::sleep(Duration::from_millis(40));
        let t0 = Instant::now();
        let mut starting = parked.start_gated(&spec).unwrap();
        starting.open_gate();
        let exit = starting.go().unwrap().wait_ended().unwrap();
        warm.push(t0.elapsed());
        assert_eq!(exit, TaskExit::Exited(0));

        let dir = base.path().join(format!("c{i}"));
        for d in ["upper", "work"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let spec = true_spec(&dir);
        std::thread::sleep(Duration::from_millis(40));
        let t0 = Instant::now();
        let exit = herd_sandbox::spawn(&init(), &spec)
            .unwrap()
            .wait_ended()
            .unwrap();
        cold.push(t0.elapsed());
        assert_eq!(exit, TaskExit::Exited(0));
    }
    // Let the background teardown finish before the directories go.
    std::thread::sleep(Duration::from_millis(500));
    let _ = std::process::Command::new("chmod")
        .arg("-R")
        .arg("u+rwx")
        .arg(base.path())
        .status();
    summary("warm (parked root, gate, /bin/true)", warm);
    summary("cold (spawn, /bin/true)", cold);
}

fn main() {
    start_timing();
}
