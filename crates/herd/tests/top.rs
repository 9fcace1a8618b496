//! `herd top` end to end, without a terminal: it prints one snapshot as plain text.
//! The agent is a real one on a loopback address (no testbed, no mDNS). The snapshot
//! needs no root; the task it shows runs on the agent's own node, which needs root
//! (FUSE), as the rest of the suite does.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn herd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .env_remove("HERD_STATE")
        .output()
        .unwrap()
}

/// A child process stopped when the test ends, however it ends: SIGTERM (the agent
/// leaves, `herd run` passes it to its command), then SIGKILL after 10 s.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `herd top` until its output satisfies `ok` (or fails after 30 s).
fn top_until(state: &str, extra: &[&str], ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut args = vec!["top", "--state", state];
        args.extend(extra);
        let out = herd(&args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "herd top never showed what was expected: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        sleep(Duration::from_millis(300));
    }
}

#[test]
fn without_a_terminal_top_prints_one_snapshot() {
    // No cluster: one line saying what to do, as every command.
    let d = tempfile::tempdir().unwrap();
    let none = d.path().join("none");
    let out = herd(&["top", "--state", none.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("herd: ") && err.contains("herd init"),
        "{err}"
    );

    let state = d.path().join("s");
    let st = state.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let out = herd(&["init", "--state", st, "--name", "ws", "--listen", &listen]);
    assert!(out.status.success(), "{out:?}");
    let _agent = Stopped(
        Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(["agent", "--state", st, "--no-mdns"])
            .env("HERD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // stdout is a pipe here: one snapshot, then exit.
    let text = top_until(st, &[], |t| t.contains("ws*"));
    for s in [
        "herd top",
        "cluster herd · node ws",
        "1/1 alive",
        "Hosts",
        "Tasks",
        "owner",
    ] {
        assert!(text.contains(s), "{s:?} missing from\n{text}");
    }
    assert!(text.contains("no tasks queued or running"), "{text}");
    assert!(!text.contains('\x1b'), "no escape sequences: {text:?}");
    assert!(!text.contains("q quit"), "no key line: {text}");

    // A task shows with its command, host and state.
    let _run = Stopped(
        Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(["run", "--state", st, "-T", "--", "sleep", "30"])
            .current_dir(Path::new("/"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let text = top_until(st, &["--once"], |t| t.contains("sleep 30"));
    let line = text.lines().find(|l| l.contains("sleep 30")).unwrap();
    assert!(
        line.contains("running") || line.contains("queued"),
        "{text}"
    );
}
