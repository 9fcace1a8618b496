//! A task's network namespace, attacked: it must not reach the spawner's loopback
//! listeners or abstract Unix sockets, nor change its own network; outward it goes
//! only through the user-mode stack it was given, and no stack outlives its sandbox.
//!
//! Root (CI runs them as root), and pasta (Debian package `passt`) and slirp4netns
//! installed; they fail, never skip, without them. The outward tests make two network
//! namespaces of their own joined by a veth pair (`ip`, iproute2), with a listener in
//! one (`A`, the "LAN") and the sandbox's spawner in the other (`B`, the "helper"),
//! which has no default route. Tasks use the machine's python3 (bash in the rootless
//! test's minimal root).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_sandbox::{CgroupSpec, Net, NetStack, SandboxSpec, StackKind, StdioFd, TaskExit};

mod common;

use common::*;

fn argv(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

/// Python that tries each `(name, family, address)` and prints `name RESULT`: `hello`
/// (the listener's greeting: it connected) or the connect's errno name.
fn connect_script(targets: &[(&str, &str, String)]) -> String {
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

/// Listeners of the test process on its loopback and an abstract Unix socket, each
/// greeting every connection with `hello`; the targets naming them.
fn spawner_listeners() -> Vec<(&'static str, &'static str, String)> {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let name = format!("herd-sbx-net-{}-{port}", std::process::id());
    let unix = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    std::thread::spawn(move || {
        for c in tcp.incoming().flatten() {
            let _ = { c }.write_all(b"hello\n");
        }
    });
    std::thread::spawn(move || {
        for c in unix.incoming().flatten() {
            let _ = { c }.write_all(b"hello\n");
        }
    });
    vec![
        ("tcp", "AF_INET", format!("('127.0.0.1', {port})")),
        ("unix", "AF_UNIX", format!("'\\0{name}'")),
    ]
}

/// Runs `python3 -c script` in `spec`'s sandbox (started by `start`), returns stdout.
fn python_in(
    l: &Layers,
    script: &str,
    net: Net,
    start: impl FnOnce(&SandboxSpec) -> herd_sandbox::Sandbox,
) -> String {
    let mut spec = SandboxSpec::new(
        "/",
        l.upper(),
        l.work(),
        argv(&["/usr/bin/python3", "-c", script]),
    );
    spec.net = net;
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    spec.stdio.stdin = StdioFd::Null;
    spec.stdio.stdout = StdioFd::Fd(out_w);
    spec.stdio.stderr = StdioFd::Fd(err_w);
    let sandbox = start(&spec);
    drop(spec);
    let (out, err) = (reader(out_r), reader(err_r));
    let exit = sandbox.wait().unwrap();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert_eq!(exit, TaskExit::Exited(0), "stdout: {out}\nstderr: {err}");
    out
}

/// pasta, which the tests need (CI installs it).
fn pasta() -> NetStack {
    NetStack::find(None)
        .into_iter()
        .find(|s| s.kind == StackKind::Pasta)
        .expect("pasta is installed (Debian package passt)")
}

/// slirp4netns, which the fallback's tests need (CI installs it).
fn slirp4netns() -> NetStack {
    NetStack::find(None)
        .into_iter()
        .find(|s| s.kind == StackKind::Slirp4netns)
        .expect("slirp4netns is installed")
}

fn prepared(tag: &str, net: &Net) -> herd_sandbox::Prepared {
    herd_sandbox::prepare(
        Path::new(INIT),
        Some(CgroupSpec {
            parent: None,
            name: format!("herd-sbx-net-{tag}-{}", std::process::id()),
            cpus: None,
            memory: None,
        }),
        net,
    )
    .unwrap()
}

fn expect_refused(out: &str) {
    assert_eq!(out, "tcp ECONNREFUSED\nunix ECONNREFUSED\n");
}

#[test]
fn a_task_cannot_reach_the_spawners_loopback_nor_its_abstract_sockets() {
    let targets = spawner_listeners();
    let script = connect_script(&targets);
    let spawn = |s: &SandboxSpec| herd_sandbox::spawn(Path::new(INIT), s).unwrap();
    for net in [
        Net::Loopback,
        Net::Outward(pasta()),
        Net::Outward(slirp4netns()),
    ] {
        let out = python_in(&Layers::new_in("herd-sbx-net"), &script, net.clone(), spawn);
        assert_eq!(out, "tcp ECONNREFUSED\nunix ECONNREFUSED\n", "{net:?}");
    }
}

#[test]
fn a_task_cannot_reach_them_from_a_prepared_sandbox_or_a_parked_root_either() {
    let script = connect_script(&spawner_listeners());
    for made in [Net::Loopback, Net::Outward(pasta())] {
        for wanted in [Net::Loopback, made.clone()] {
            let l = Layers::new_in("herd-sbx-net");
            let p = prepared("prep", &made);
            expect_refused(&python_in(&l, &script, wanted.clone(), |s| {
                p.start(s).unwrap()
            }));
            let l = Layers::new_in("herd-sbx-net");
            let parked = prepared("park", &made)
                .park(Path::new("/"), &l.upper(), &l.work())
                .unwrap();
            expect_refused(&python_in(&l, &script, wanted, |s| {
                parked.start_gated(s).unwrap().go().unwrap()
            }));
        }
    }
}

/// Prints the task's interfaces, then tries to set `lo` down (SIOCSIFFLAGS), to make
/// a network namespace of its own and to enter the spawner's: each error number.
const RECONFIGURE: &str = "import ctypes, fcntl, os, socket, struct\n\
    print(sorted(n for _, n in socket.if_nameindex()))\n\
    s = socket.socket()\n\
    try:\n    fcntl.ioctl(s, 0x8914, struct.pack('16sH', b'lo', 0)); print('lo down')\n\
    except OSError as e:\n    print('ioctl', e.errno)\n\
    libc = ctypes.CDLL(None, use_errno=True)\n\
    print('unshare', libc.unshare(0x40000000), ctypes.get_errno())\n\
    fd = os.open('/proc/self/ns/net', os.O_RDONLY)\n\
    print('setns', libc.setns(fd, 0x40000000), ctypes.get_errno())\n";

#[test]
fn a_task_cannot_change_its_network() {
    let spawn = |s: &SandboxSpec| herd_sandbox::spawn(Path::new(INIT), s).unwrap();
    let out = python_in(
        &Layers::new_in("herd-sbx-net"),
        RECONFIGURE,
        Net::Loopback,
        spawn,
    );
    assert_eq!(out, "['lo']\nioctl 1\nunshare -1 1\nsetns -1 1\n");
    let out = python_in(
        &Layers::new_in("herd-sbx-net"),
        RECONFIGURE,
        Net::Outward(pasta()),
        spawn,
    );
    let (ifaces, rest) = out.split_once('\n').unwrap();
    assert!(ifaces.starts_with("['") && ifaces.contains("'lo'") && ifaces.contains(", "));
    assert_eq!(rest, "ioctl 1\nunshare -1 1\nsetns -1 1\n");
}

#[test]
fn a_loopback_task_in_a_sandbox_made_outward_gets_only_loopback() {
    let script = "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))\n";
    let l = Layers::new_in("herd-sbx-net");
    let p = prepared("narrow", &Net::Outward(pasta()));
    assert_eq!(
        python_in(&l, script, Net::Loopback, |s| p.start(s).unwrap()),
        "['lo']\n"
    );
    let l = Layers::new_in("herd-sbx-net");
    let parked = prepared("narrowpark", &Net::Outward(pasta()))
        .park(Path::new("/"), &l.upper(), &l.work())
        .unwrap();
    assert_eq!(
        python_in(&l, script, Net::Loopback, |s| parked
            .start_gated(s)
            .unwrap()
            .go()
            .unwrap()),
        "['lo']\n"
    );
    // The reverse cannot be: a sandbox made with loopback only has no stack to give.
    let l = Layers::new_in("herd-sbx-net");
    let mut spec = SandboxSpec::new("/", l.upper(), l.work(), argv(&["true"]));
    spec.net = Net::Outward(pasta());
    let err = prepared("widen", &Net::Loopback).start(&spec).unwrap_err();
    assert!(err.to_string().contains("loopback only"), "{err}");
}

/// Pids of the stack processes (pasta re-executes itself as `passt.avx2`, slirp4netns)
/// whose parent is `parent`.
fn stacks_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        let name = field("Name:").unwrap_or_default();
        if ["pasta", "passt", "slirp4netns"]
            .iter()
            .any(|n| name.starts_with(n))
            && field("PPid:").as_deref() == Some(parent.to_string().as_str())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` is gone: no such process, or a zombie (it holds nothing any more).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
    })
}

/// Waits (at most 10 s) for every one of `pids` to be gone.
fn wait_gone(pids: &[u32], what: &str) {
    let start = Instant::now();
    while !pids.iter().all(|&p| gone(p)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: the stack {pids:?} outlived its sandbox"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn no_stack_outlives_its_sandbox() {
    for stack in [pasta(), slirp4netns()] {
        let net = Net::Outward(stack.clone());
        let what = |w: &str| format!("{}: {w}", stack.kind.program_name());

        // Prepared, never used.
        let p = prepared("unused", &net);
        let stacks = stacks_of(p.pid());
        assert_eq!(stacks.len(), 1, "one stack per sandbox: {stacks:?}");
        // Configured, it runs at idle priority, as the tasks do (field 41: the policy).
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", stacks[0])).unwrap();
        let after = stat.rsplit_once(") ").unwrap().1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        assert_eq!(
            fields[41 - 3],
            libc::SCHED_IDLE.to_string(),
            "{}",
            what("policy")
        );
        assert_eq!(fields[19 - 3], "19", "{}", what("nice"));
        drop(p);
        wait_gone(&stacks, &what("a prepared sandbox dropped"));

        // Parked, never used.
        let l = Layers::new_in("herd-sbx-net");
        let p = prepared("parkunused", &net);
        let stacks = stacks_of(p.pid());
        let parked = p.park(Path::new("/"), &l.upper(), &l.work()).unwrap();
        drop(parked);
        wait_gone(&stacks, &what("a parked root dropped"));

        // A task that ends by itself (waited for to its end, or only until its tree
        // is gone), and one killed.
        for how in ["wait", "wait_ended", "kill"] {
            let l = Layers::new_in("herd-sbx-net");
            let mut spec = SandboxSpec::new(
                "/",
                l.upper(),
                l.work(),
                argv(&["/bin/sh", "-c", "read line"]),
            );
            spec.net = net.clone();
            let (in_r, in_w) = std::io::pipe().unwrap();
            spec.stdio.stdin = StdioFd::Fd(Arc::new(OwnedFd::from(in_r)));
            let sandbox = herd_sandbox::spawn(Path::new(INIT), &spec).unwrap();
            drop(spec);
            let stacks = stacks_of(sandbox.pid());
            assert_eq!(stacks.len(), 1, "{}: {stacks:?}", what(how));
            match how {
                "wait" => {
                    drop(in_w);
                    sandbox.wait().unwrap();
                }
                "wait_ended" => {
                    drop(in_w);
                    sandbox.wait_ended().unwrap();
                }
                _ => {
                    sandbox.kill_tree();
                    sandbox.wait().unwrap();
                }
            }
            wait_gone(&stacks, &what(how));
        }
    }
}

/// Two network namespaces joined by a veth pair, each held by a process of its own
/// (no name under `/run/netns`, which other tests on the machine change meanwhile):
/// `a` (10.99.0.1, a listener greeting with `hello` on port 7781) and `b` (10.99.0.2,
/// with a listener on its loopback, port 7782, and an abstract Unix socket
/// `herd-sbx-net-b`), neither with a default route. Removed when dropped.
struct NetPair {
    holders: [Child; 2],
    listeners: Vec<Child>,
}

/// `nsenter --net=/proc/PID/ns/net` (as root) and what follows.
fn nsenter(holder: &Child) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{}/ns/net", holder.id()));
    cmd
}

fn run_ok(cmd: &mut Command) {
    let st = cmd
        .status()
        .expect("nsenter (util-linux) and ip (iproute2)");
    assert!(st.success(), "{cmd:?}");
}

impl NetPair {
    fn new() -> NetPair {
        require_root();
        let hold = || {
            Command::new("unshare")
                .args(["--net", "sleep", "1000000"])
                .spawn()
                .expect("unshare (util-linux)")
        };
        let mut pair = NetPair {
            holders: [hold(), hold()],
            listeners: Vec::new(),
        };
        // The holder's namespace exists once `sleep` runs in it.
        for h in &pair.holders {
            let start = Instant::now();
            while std::fs::read_to_string(format!("/proc/{}/comm", h.id()))
                .is_ok_and(|c| c.trim() != "sleep")
            {
                assert!(start.elapsed() < Duration::from_secs(10), "unshare --net");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let [a, b] = &pair.holders;
        let b_pid = b.id().to_string();
        run_ok(nsenter(a).args([
            "ip", "link", "add", "hsn0", "type", "veth", "peer", "name", "hsn1",
        ]));
        run_ok(nsenter(a).args(["ip", "link", "set", "hsn1", "netns", &b_pid]));
        for (h, dev, addr) in [(a, "hsn0", "10.99.0.1/24"), (b, "hsn1", "10.99.0.2/24")] {
            run_ok(nsenter(h).args(["ip", "addr", "add", addr, "dev", dev]));
            run_ok(nsenter(h).args(["ip", "link", "set", dev, "up"]));
            run_ok(nsenter(h).args(["ip", "link", "set", "lo", "up"]));
        }
        pair.listen(0, "s = socket.socket()\ns.bind(('0.0.0.0', 7781))");
        pair.listen(1, "s = socket.socket()\ns.bind(('127.0.0.1', 7782))");
        pair.listen(
            1,
            "s = socket.socket(socket.AF_UNIX)\ns.bind('\\0herd-sbx-net-b')",
        );
        pair
    }

    /// A python3 listener in namespace `which` (`bind` makes and binds `s`), once it
    /// listens.
    fn listen(&mut self, which: usize, bind: &str) {
        let script = format!(
            "import socket\n{bind}\ns.listen(16)\nprint('ready', flush=True)\n\
             while True:\n    c, _ = s.accept()\n    c.sendall(b'hello\\n')\n    c.close()\n"
        );
        let mut child = nsenter(&self.holders[which])
            .args(["python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "a listener: {bind}");
        self.listeners.push(child);
    }

    /// The targets a task tries from `b`.
    fn targets() -> Vec<(&'static str, &'static str, String)> {
        vec![
            ("lan", "AF_INET", "('10.99.0.1', 7781)".into()),
            ("tcp", "AF_INET", "('127.0.0.1', 7782)".into()),
            ("unix", "AF_UNIX", "'\\0herd-sbx-net-b'".into()),
        ]
    }

    /// `herd-sandbox-run [--prepared] [--net outward] ARGS` in `b` (as `user`, `PATH`
    /// set to `path`); its stdout, after checking it exited 0.
    fn run_in_b(
        &self,
        user: Option<u32>,
        path: &str,
        (prepared, outward): (bool, bool),
        args: &[OsString],
    ) -> String {
        let mut cmd = nsenter(&self.holders[1]);
        if let Some(uid) = user {
            cmd.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
            ])
            .arg("--clear-groups");
        }
        cmd.args(["env", "-i", &format!("PATH={path}"), RUN]);
        if prepared {
            cmd.arg("--prepared");
        }
        if outward {
            cmd.args(["--net", "outward"]);
        }
        let out = cmd.args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for c in self.listeners.iter_mut().chain(self.holders.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A directory holding only `stack`'s program, for a `PATH` that finds no other.
fn path_with_only(stack: &NetStack, dir: &Path) -> String {
    let bin = dir.join(format!("bin-{}", stack.kind.program_name()));
    std::fs::create_dir_all(&bin).unwrap();
    let _ = std::fs::remove_file(bin.join(stack.kind.program_name()));
    std::os::unix::fs::symlink(&stack.program, bin.join(stack.kind.program_name())).unwrap();
    bin.display().to_string()
}

#[test]
fn an_outward_task_reaches_the_lan_and_nothing_of_its_helper() {
    let pair = NetPair::new();
    let script = connect_script(&NetPair::targets());
    for stack in [pasta(), slirp4netns()] {
        let l = Layers::new_in("herd-sbx-net");
        let path = path_with_only(&stack, l.dir.path());
        let args: Vec<OsString> = [
            "/",
            &l.upper().display().to_string(),
            &l.work().display().to_string(),
            "65534",
            "65534",
            "/",
            "--",
            "/usr/bin/python3",
            "-c",
            &script,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let name = stack.kind.program_name();
        let out = pair.run_in_b(None, &path, (false, true), &args);
        assert_eq!(
            out, "lan hello\ntcp ECONNREFUSED\nunix ECONNREFUSED\n",
            "{name}"
        );
        let l = Layers::new_in("herd-sbx-net");
        let mut args = args;
        args[1] = l.upper().into();
        args[2] = l.work().into();
        let out = pair.run_in_b(None, &path, (false, false), &args);
        assert_eq!(
            out, "lan ENETUNREACH\ntcp ECONNREFUSED\nunix ECONNREFUSED\n",
            "{name}"
        );
    }
}

/// Makes `/dev/net/tun` usable by everyone while it lives, as distributions set it up
/// (udev's rule; a rootless stack opens it), and restores its mode after.
struct OpenTun(u32);

impl OpenTun {
    fn new() -> OpenTun {
        let tun = Path::new("/dev/net/tun");
        let mode = std::fs::metadata(tun).expect("/dev/net/tun").mode() & 0o7777;
        std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666)).unwrap();
        OpenTun(mode)
    }
}

impl Drop for OpenTun {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(self.0));
    }
}

/// A minimal root for a rootless task: bash (whose `/dev/tcp` connects) with its
/// libraries, `/proc`, `/dev`, `/tmp`; all owned by `owner`.
fn bash_root(base: &Path, owner: u32) -> PathBuf {
    let root = base.join("lower");
    for d in ["bin", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/bash", root.join("bin/bash")).unwrap();
    let ldd = Command::new("ldd").arg("/bin/bash").output().unwrap();
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            let to = root.join(word.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(word, &to).unwrap();
        }
    }
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{owner}:{owner}"))
        .arg(base)
        .status()
        .unwrap();
    assert!(st.success());
    root
}

#[test]
fn a_rootless_task_reaches_the_lan_and_nothing_of_its_helper() {
    let pair = NetPair::new();
    let _tun = OpenTun::new();
    // bash's /dev/tcp: `lan hello` when it connects and reads the greeting.
    let script = "for t in lan:10.99.0.1/7781 tcp:127.0.0.1/7782; do \
                  if exec 3<>/dev/tcp/${t#*:}; then read -r g <&3; echo ${t%%:*} $g; exec 3<&-; \
                  else echo ${t%%:*} refused; fi; done 2>/dev/null";
    for stack in [pasta(), slirp4netns()] {
        let name = stack.kind.program_name();
        // Spawned at once, and prepared ahead as the agent does (the prepared init
        // enters its user namespace and makes the network before its task comes).
        for (prepared, outward) in [(false, true), (true, true), (false, false), (true, false)] {
            let l = Layers::new_in("herd-sbx-net");
            let lower = bash_root(l.dir.path(), 65534);
            let path = path_with_only(&stack, l.dir.path());
            let args: Vec<OsString> = [
                &lower.display().to_string(),
                &l.upper().display().to_string(),
                &l.work().display().to_string(),
                "1000",
                "1000",
                "/",
                "--",
                "/bin/bash",
                "-c",
                script,
            ]
            .iter()
            .map(OsString::from)
            .collect();
            let out = pair.run_in_b(Some(65534), &path, (prepared, outward), &args);
            let lan = if outward { "lan hello" } else { "lan refused" };
            assert_eq!(
                out,
                format!("{lan}\ntcp refused\n"),
                "{name}, prepared {prepared}, outward {outward}"
            );
        }
    }
}
