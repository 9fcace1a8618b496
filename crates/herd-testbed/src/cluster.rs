//! herd on the testbed: start agents on hosts and read what they see.
//!
//! The end-to-end tests and the benchmarks share these helpers. A [`Node`] is a host
//! plus the herd binary as that host sees it (`/herd` on a minimal host, the given
//! path on a real-fs host); every command gets the host's state directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Host, MINIMAL_BINARY};

/// The port agents listen on in the testbed.
pub const PORT: u16 = 7420;

/// A testbed host running herd.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    /// The host.
    pub host: &'a Host,
    herd: &'a Path,
}

impl<'a> Node<'a> {
    /// `herd` is the binary on the machine (copied into minimal roots by the testbed).
    pub fn new(host: &'a Host, herd: &'a Path) -> Self {
        Node { host, herd }
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        self.host.name()
    }

    fn bin(&self) -> PathBuf {
        if self.host.root_dir().is_some() {
            PathBuf::from(MINIMAL_BINARY)
        } else {
            self.herd.to_path_buf()
        }
    }

    /// The state directory as the host sees it.
    pub fn state(&self) -> String {
        self.host.state_dir().display().to_string()
    }

    /// `ADDR:PORT` the agent listens on.
    pub fn listen(&self) -> String {
        format!("{}:{PORT}", self.host.addr())
    }

    /// Runs `herd SUBCOMMAND --state STATE ARGS...` to completion.
    pub fn herd(&self, args: &[&str]) -> Output {
        self.herd_env(&[], args)
    }

    /// [`herd`](Self::herd) with environment variables `env` set.
    pub fn herd_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let (sub, rest) = args.split_first().expect("a subcommand");
        let st = self.state();
        let mut argv = vec![*sub, "--state", st.as_str()];
        argv.extend_from_slice(rest);
        let bin = self.bin();
        self.host
            .command(bin.to_str().expect("utf-8 path"), &argv)
            .env("HERD_LOG", "info")
            .envs(env.iter().copied())
            .output()
            .expect("run herd")
    }

    /// `herd init` for cluster `lab`; returns the token (the last line of stdout).
    pub fn init(&self) -> String {
        let listen = self.listen();
        let out = self.herd(&[
            "init",
            "--name",
            self.name(),
            "--cluster",
            "lab",
            "--listen",
            &listen,
        ]);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("token line")
            .trim()
            .to_string()
    }

    /// Starts `herd agent --state STATE --host-cgroup CG --start-after 0 EXTRA...` in
    /// the background: the host's cgroup is what its owner's load is measured in (every
    /// testbed host shares one machine), and a testbed helper takes work at once.
    pub fn agent(&self, extra: &[&str]) -> Child {
        self.agent_env(&[], extra).0
    }

    /// [`agent`](Self::agent) with environment variables `env` set; also returns the
    /// log file that receives its stdout and stderr.
    pub fn agent_env(&self, env: &[(&str, &str)], extra: &[&str]) -> (Child, PathBuf) {
        let st = self.state();
        let cg = self.host.cgroup_dir().display().to_string();
        let mut argv = vec![
            "agent",
            "--state",
            st.as_str(),
            "--host-cgroup",
            cg.as_str(),
            "--start-after",
            "0",
        ];
        argv.extend_from_slice(extra);
        let bin = self.bin();
        // An outer HERD_LOG (for profiling a benchmark) wins over the default.
        let log = std::env::var("HERD_LOG").unwrap_or_else(|_| "info".into());
        let mut cmd = self.host.command(bin.to_str().expect("utf-8 path"), &argv);
        cmd.env("HERD_LOG", log).envs(env.iter().copied());
        let log_path = cmd.log_path().to_path_buf();
        (cmd.spawn().expect("start agent"), log_path)
    }

    /// Starts an agent that joins with `token` under the host's name.
    pub fn join(&self, token: &str) -> Child {
        let listen = self.listen();
        self.agent(&["--join", token, "--name", self.name(), "--listen", &listen])
    }

    /// `herd nodes --json`, or `None` while the agent does not answer.
    pub fn nodes(&self) -> Option<Vec<Value>> {
        let out = self.herd(&["nodes", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The state this node's agent shows for `node`.
    pub fn state_of(&self, node: &str) -> Option<String> {
        self.nodes()?
            .iter()
            .find(|n| n["name"] == node)
            .and_then(|n| n["state"].as_str().map(str::to_string))
    }
}

/// Whether every observer shows `node` in state `want`.
pub fn all_see(observers: &[Node<'_>], node: &str, want: &str) -> bool {
    observers
        .iter()
        .all(|o| o.state_of(node).as_deref() == Some(want))
}

/// Polls `cond` every 100 ms until it holds; returns how long that took, or `None`
/// after `limit`.
pub fn time_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        sleep(Duration::from_millis(100));
    }
}

/// Like [`time_until`], but panics naming `what` on time-out and prints the time.
pub fn wait_for(what: &str, limit: Duration, cond: impl FnMut() -> bool) -> Duration {
    match time_until(limit, cond) {
        Some(t) => {
            eprintln!("measured: {what}: {:.2} s", t.as_secs_f64());
            t
        }
        None => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}

/// Sends SIGTERM to a child (a graceful leave for an agent).
pub fn sigterm(child: &Child) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// Agents started on the testbed; dropping it stops them (SIGTERM, a graceful leave)
/// and waits for them.
pub struct Agents(pub Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for a in &self.0 {
            sigterm(a);
        }
        for a in &mut self.0 {
            let _ = a.wait();
        }
    }
}

/// Bytes as text, lossily.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The stdout of a command that must have succeeded; otherwise panics showing its
/// status and both streams.
#[track_caller]
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}
