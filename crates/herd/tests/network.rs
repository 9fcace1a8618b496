//! A task's network, end to end on the testbed: what a hostile task can and cannot
//! reach from a helper.
//!
//! The workstation `ws` lends no cores. `h1` is a helper with the machine's real files,
//! so its agent finds pasta (Debian package `passt`, which CI installs); `h2` is a
//! helper whose root holds only herd: no user-mode network stack, so its tasks get
//! loopback only. Tasks use the workstation's python3 for sockets. Needs root; fails,
//! never skips, without it.
//!
//! Every assertion waits for the event that proves it: a connection's own error or
//! greeting, `herd run` exiting, a process found gone. None waits for time to pass.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use herd_testbed::cluster::{Agents, Node, all_see, ok, text, wait_for};
use herd_testbed::{Host, HostSpec, Testbed};

const CONVERGE: Duration = Duration::from_secs(40);
/// The port the workstation's listener takes (each testbed host is a namespace of its
/// own, so a fixed port cannot clash).
const WS_PORT: u16 = 7551;
/// The port of the listener on the helper's loopback.
const LOOPBACK_PORT: u16 = 7552;

fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

struct Cluster {
    bed: Testbed,
    agents: Agents,
    /// The tasks' working directory on the workstation (not under /tmp: tasks get a
    /// private /tmp).
    project: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let mut bed = Testbed::new().expect("the testbed needs root");
        bed.add_host(HostSpec::real_fs("ws")).unwrap();
        bed.add_host(HostSpec::real_fs("h1")).unwrap();
        bed.add_host(HostSpec::minimal("h2", herd_bin())).unwrap();
        let ws = Node::new(bed.host("ws"), herd_bin());
        let token = ws.init();
        let agents = Agents(vec![
            ws.agent(&["--no-mdns", "--cpus", "0"]),
            Node::new(bed.host("h1"), herd_bin()).join(&token),
            Node::new(bed.host("h2"), herd_bin()).join(&token),
        ]);
        for h in ["h1", "h2"] {
            wait_for(&format!("{h} alive at ws"), CONVERGE, || {
                all_see(&[ws], h, "alive")
            });
        }
        let project = tempfile::Builder::new()
            .prefix("herd-net-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        Cluster {
            bed,
            agents,
            project,
        }
    }

    fn ws(&self) -> Node<'_> {
        Node::new(self.bed.host("ws"), herd_bin())
    }

    /// `herd SUB --state STATE ARGS` on the workstation in the project directory,
    /// stdin empty, with the project's `config.toml` as herd's configuration (when
    /// there is one); waits for it.
    fn herd(&self, sub: &str, args: &[&str]) -> Output {
        let state = self.ws().state();
        let mut argv = vec![sub, "--state", state.as_str()];
        argv.extend_from_slice(args);
        self.bed
            .host("ws")
            .command(herd_bin().to_str().unwrap(), &argv)
            .current_dir(self.project.path())
            .env("HERD_CONFIG", self.project.path().join("config.toml"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `herd run -T --on NODE FLAGS -- python3 -c SCRIPT`.
    fn python(&self, node: &str, flags: &[&str], script: &str) -> Output {
        let mut args = vec!["-T", "--on", node];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "python3", "-c", script]);
        self.herd("run", &args)
    }

    /// The agents' log of `host` (every command's log in its log directory).
    fn logs(&self, host: &str) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.bed.host(host).log_dir())
            .unwrap()
            .flatten()
        {
            all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
        all
    }
}

/// A listener started on a host with python3: it prints `ready` once it listens, and
/// then greets every connection with `hello`. Killed when dropped.
struct Listener(Child);

impl Listener {
    /// `bind` is python: `socket.socket(...)` bound and listening as `s`.
    fn start(host: &Host, bind: &str) -> Listener {
        let script = format!(
            "import socket, sys\n{bind}\ns.listen(16)\nprint('ready', flush=True)\n\
             while True:\n    c, _ = s.accept()\n    c.sendall(b'hello\\n')\n    c.close()\n"
        );
        let mut child = host
            .command("python3", &["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "the listener on {} started", host.name());
        Listener(child)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python that tries each `(name, family, address)` and prints `name RESULT`: `hello`
/// (the listener's greeting: it connected), or the connect's errno name.
fn connect_script(targets: &[(&str, &str, &str)]) -> String {
    let mut s = String::from(
        "import errno, socket\n\
         def attempt(family, addr):\n\
         \x20   s = socket.socket(family, socket.SOCK_STREAM)\n\
         \x20   s.settimeout(20)\n\
         \x20   try:\n\
         \x20       s.connect(addr)\n\
         \x20       return s.makefile().readline().strip() or 'closed'\n\
         \x20   except OSError as e:\n\
         \x20       return errno.errorcode.get(e.errno, str(e))\n",
    );
    for (name, family, addr) in targets {
        s.push_str(&format!(
            "print({name:?}, attempt(socket.{family}, {addr}), flush=True)\n"
        ));
    }
    s
}

/// The inode of a network namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
fn netns_ino(path: impl AsRef<Path>) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Pids of the machine's processes that hold network namespace `ino`: as their own, or
/// through a descriptor (pasta holds its task's namespace that way).
fn holders_of(ino: u64) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let own = netns_ino(e.path().join("ns/net")) == Some(ino);
        let by_fd = std::fs::read_dir(e.path().join("fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| l.to_string_lossy() == format!("net:[{ino}]"))
            })
        });
        if own || by_fd {
            pids.push(pid);
        }
    }
    pids
}

/// Pids of pasta processes in `host`'s network namespace (pasta re-executes itself as
/// `passt.avx2` where the CPU has AVX2).
fn pastas_on(host: &Host) -> Vec<u32> {
    let host_ns = netns_ino(host.netns_path()).expect("the host's namespace");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        let name = exe.file_name().unwrap_or_default().to_string_lossy();
        if (name.starts_with("pasta") || name.starts_with("passt"))
            && netns_ino(e.path().join("ns/net")) == Some(host_ns)
        {
            pids.push(pid);
        }
    }
    pids
}

/// One line `NAME RESULT` of a connect script's output.
fn result_of(out: &Output, name: &str) -> String {
    let stdout = ok(out);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in: {stdout}\nstderr: {}", text(&out.stderr)))
        .to_string()
}

#[test]
fn a_task_cannot_reach_the_helpers_loopback_nor_its_abstract_sockets() {
    let c = Cluster::start();
    let h1 = c.bed.host("h1");
    let abstract_name = format!("herd-net-test-{}", std::process::id());
    let _tcp = Listener::start(
        h1,
        &format!(
            "s = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {LOOPBACK_PORT}))"
        ),
    );
    let _unix = Listener::start(
        h1,
        &format!("s = socket.socket(socket.AF_UNIX)\ns.bind('\\0{abstract_name}')"),
    );
    // The listeners answer on the helper itself: what the task is refused is there.
    let tcp = format!("('127.0.0.1', {LOOPBACK_PORT})");
    let unix = format!("'\\0{abstract_name}'");
    let targets = [
        ("tcp", "AF_INET", tcp.as_str()),
        ("unix", "AF_UNIX", unix.as_str()),
    ];
    let here = h1
        .command("python3", &["-c", &connect_script(&targets)])
        .output()
        .unwrap();
    assert_eq!(ok(&here), "tcp hello\nunix hello\n", "on the helper itself");

    for flags in [&[][..], &["--net", "none"][..]] {
        let out = c.python("h1", flags, &connect_script(&targets));
        assert_eq!(result_of(&out, "tcp"), "ECONNREFUSED", "{flags:?}");
        assert_eq!(result_of(&out, "unix"), "ECONNREFUSED", "{flags:?}");
    }
    // Nor on a helper without a network stack.
    let out = c.python("h2", &[], &connect_script(&targets));
    assert_eq!(result_of(&out, "tcp"), "ECONNREFUSED");
    assert_eq!(result_of(&out, "unix"), "ECONNREFUSED");
}

#[test]
fn a_task_reaches_other_hosts_by_default_and_not_with_net_none() {
    let c = Cluster::start();
    let ws_addr = c.bed.host("ws").addr();
    let _ws = Listener::start(
        c.bed.host("ws"),
        &format!(
            "s = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{ws_addr}', {WS_PORT}))"
        ),
    );
    let addr = format!("('{ws_addr}', {WS_PORT})");
    let script = connect_script(&[("ws", "AF_INET", &addr)]);

    let out = c.python("h1", &[], &script);
    assert_eq!(result_of(&out, "ws"), "hello");
    assert_eq!(text(&out.stderr), "", "nothing said about the network");
    let out = c.python("h1", &["--net", "outward"], &script);
    assert_eq!(result_of(&out, "ws"), "hello");

    let out = c.python("h1", &["--net", "none"], &script);
    assert_eq!(result_of(&out, "ws"), "ENETUNREACH");
    // The task's namespace holds loopback only, and it cannot change that (0x8914:
    // SIOCSIFFLAGS, here setting lo down: EPERM).
    let out = c.python(
        "h1",
        &["--net", "none"],
        "import fcntl, socket, struct\nprint(sorted(n for _, n in socket.if_nameindex()))\n\
         s = socket.socket()\ntry:\n    fcntl.ioctl(s, 0x8914, struct.pack('16sH', b'lo', 0))\n\
         except OSError as e:\n    print(e.errno)\n",
    );
    assert_eq!(ok(&out), "['lo']\n1\n");

    // `herd map` and `herd shell` (for the programs it offloads: python3 here) take
    // the same flag. They have no `--on`: h2, without a stack, is drained.
    std::fs::write(
        c.project.path().join("config.toml"),
        "version = 1\n[shell]\nprograms = [\"python3\"]\n",
    )
    .unwrap();
    ok(&c.herd("drain", &["h2"]));
    wait_for("h2 drained at ws", CONVERGE, || {
        c.ws().nodes().is_some_and(|nodes| {
            nodes
                .iter()
                .any(|n| n["name"] == "h2" && n["accepting"] == false)
        })
    });
    let script_file = c.project.path().join("connect.py");
    std::fs::write(&script_file, &script).unwrap();
    let out = c.herd("map", &["--net", "none", "python3 {}", ":::", "connect.py"]);
    assert_eq!(result_of(&out, "ws"), "ENETUNREACH");
    let out = c.herd("map", &["python3 {}", ":::", "connect.py"]);
    assert_eq!(result_of(&out, "ws"), "hello");

    let out = c.herd("shell", &["--net", "none", "--", "python3", "connect.py"]);
    assert_eq!(result_of(&out, "ws"), "ENETUNREACH");
    let out = c.herd("shell", &["--", "python3", "connect.py"]);
    assert_eq!(result_of(&out, "ws"), "hello");
}

#[test]
fn a_helper_without_a_network_stack_gives_loopback_only_and_says_so() {
    let c = Cluster::start();
    let ws_addr = c.bed.host("ws").addr();
    let _ws = Listener::start(
        c.bed.host("ws"),
        &format!(
            "s = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{ws_addr}', {WS_PORT}))"
        ),
    );
    let script = connect_script(&[("ws", "AF_INET", &format!("('{ws_addr}', {WS_PORT})"))]);
    // The agent said so when it started.
    let notice = "tasks get loopback only";
    wait_for("h2's agent says it has no network stack", CONVERGE, || {
        c.logs("h2").contains(notice)
    });
    assert_eq!(c.logs("h2").matches(notice).count(), 1, "said once");

    // The default asks for nothing: the task runs with loopback, and herd adds nothing
    // to its stderr (a compiler's configure test may read it).
    let out = c.python("h2", &[], &script);
    assert_eq!(result_of(&out, "ws"), "ENETUNREACH");
    assert_eq!(text(&out.stderr), "");
    // Asked for explicitly: one line says why it is not there.
    let out = c.python("h2", &["--net", "outward"], &script);
    assert_eq!(result_of(&out, "ws"), "ENETUNREACH");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("herd: h2 has no user-mode network stack"),
        "{stderr}"
    );
}

#[test]
fn no_pasta_outlives_its_task() {
    let c = Cluster::start();
    let h1 = c.bed.host("h1");
    let helper_ns = netns_ino(h1.netns_path()).unwrap();
    let script = "import os\nprint(os.stat('/proc/self/ns/net').st_ino)\n";
    let mut seen = Vec::new();
    // Cold and warm tasks (a fresh sandbox, then roots parked over kept views), and
    // one killed by a signal.
    for i in 0..6 {
        let out = if i == 5 {
            c.python(
                "h1",
                &[],
                &format!("{script}import signal\nos.kill(os.getpid(), signal.SIGKILL)\n"),
            )
        } else {
            c.python("h1", &[], script)
        };
        let ino: u64 = text(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{out:?}"));
        assert_ne!(
            ino, helper_ns,
            "the task has a network namespace of its own"
        );
        assert!(!seen.contains(&ino), "a namespace of its own for each task");
        seen.push(ino);
        // The task is over: its namespace goes, and the pasta that served it with it.
        wait_for(
            "the task's namespace to go",
            Duration::from_secs(10),
            || holders_of(ino).is_empty(),
        );
    }
    // Those serving prepared sandboxes end with the agent.
    assert!(
        !pastas_on(h1).is_empty(),
        "prepared sandboxes have their pasta"
    );
    drop(c.agents);
    wait_for("no pasta left on h1", Duration::from_secs(10), || {
        pastas_on(h1).is_empty()
    });
}
