//! A task's network: a namespace of its own, made by the init, with only loopback or
//! reaching outward through a user-mode network stack (pasta, or slirp4netns).
//!
//! The init makes the namespace ([`make`]) before its pid namespace: the supervisor
//! of a sandbox spawned at once, or a prepared init before it says `ready`, so that
//! with a sandbox prepared ahead none of this is on the task's way. It is owned by the
//! user namespace the init runs in: the helper's own as root, the supervisor's one when
//! rootless (a prepared init enters that one now too). The task never holds a
//! capability there, so it cannot change its network: no address, route, interface,
//! firewall rule or sysctl.
//!
//! With a stack, the init forks a *launcher* before it enters any namespace. The
//! launcher waits until the namespace exists, opens it (and the user namespace) from
//! `/proc/<init>/ns`, and executes the stack on those descriptors: it runs as the
//! agent's user in the helper's own namespaces, attached to the task's. It dies with
//! the init (`PR_SET_PDEATHSIG`), and the supervisor kills and reaps it when its task
//! is over ([`end_stack`]). The init waits until the stack says the namespace is
//! configured (pasta's pid file, slirp4netns' ready descriptor) before it goes on, and
//! then puts it at idle priority (`SCHED_IDLE`, nice 19), as a polite helper's tasks
//! run (its start, 12-17 ms of CPU for pasta here, runs at the init's priority).
//!
//! What the stack is told (pasta): no port forwarding either way (`-t none -u none -T
//! none -U none`), no mapping of the gateway address to the helper's loopback
//! (`--no-map-gw`), no DNS forwarding (`-D none`); as root it keeps uid 0 (`--runas
//! 0`: pasta opens the namespace after it would have become nobody, which may not join
//! it), holding only the capabilities it keeps itself. slirp4netns:
//! `--disable-host-loopback`, `--disable-dns`, its seccomp filter and, as root, its
//! sandbox (which a plain user's slirp4netns cannot make). On a host with no default
//! route pasta is given the first interface with a route and a gateway on its subnet
//! (`-i`, `-g`), so a LAN without a way out still reaches the LAN.
//!
//! A task that asks for loopback only in a sandbox made with a stack (one prepared
//! ahead for whatever task comes) gets a fresh namespace from pid 1 ([`narrow`]): the
//! stack then serves a namespace nobody is in.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

use crate::spec::WireStack;

/// How a task reaches the network ([`crate::SandboxSpec::net`]). Either way it has a
/// network namespace of its own: it never sees the helper's loopback, its listeners,
/// or its abstract Unix sockets (X11, D-Bus).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Net {
    /// Only loopback (the task's own).
    #[default]
    Loopback,
    /// Outward (the LAN and beyond) through this user-mode stack, which maps nothing
    /// of the helper's loopback and forwards no port either way.
    Outward(NetStack),
}

/// The kinds of user-mode network stack, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StackKind {
    /// pasta, from passt: the task's sockets become the helper's own (no NAT).
    Pasta,
    /// slirp4netns: a user-mode TCP/IP stack behind NAT (10.0.2.0/24).
    Slirp4netns,
}

impl StackKind {
    /// Every kind, the preferred first.
    pub const ALL: [StackKind; 2] = [StackKind::Pasta, StackKind::Slirp4netns];

    /// The program's name.
    pub fn program_name(self) -> &'static str {
        match self {
            StackKind::Pasta => "pasta",
            StackKind::Slirp4netns => "slirp4netns",
        }
    }
}

/// A user-mode network stack installed on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetStack {
    /// Which one.
    pub kind: StackKind,
    /// Its program.
    pub program: PathBuf,
}

impl std::fmt::Display for NetStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            self.kind.program_name(),
            self.program.display()
        )
    }
}

/// Where stacks are looked for when there is no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl NetStack {
    /// The stacks installed here, the preferred first: each kind's program found in
    /// `path` (a `PATH` value; the usual system directories when `None`).
    pub fn find(path: Option<&OsStr>) -> Vec<NetStack> {
        let path = path.unwrap_or(OsStr::new(DEFAULT_PATH));
        StackKind::ALL
            .iter()
            .filter_map(|&kind| {
                let program = path
                    .as_bytes()
                    .split(|&b| b == b':')
                    .filter(|d| d.first() == Some(&b'/'))
                    .map(|d| Path::new(OsStr::from_bytes(d)).join(kind.program_name()))
                    .find(|p| {
                        std::fs::metadata(p)
                            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    })?;
                Some(NetStack { kind, program })
            })
            .collect()
    }
}

/// The namespace this init made reaches outward (a stack is attached).
static OUTWARD: AtomicBool = AtomicBool::new(false);
/// The stack's pid, a child of this init (0: none).
static STACK: AtomicI32 = AtomicI32::new(0);

/// How long the init waits for the stack to configure the namespace.
const ATTACH_LIMIT_MS: i32 = 10_000;

/// Makes this init's network namespace (with only loopback up) and attaches `stack`
/// to it; when `rootless`, first the user namespace owning it (see
/// [`crate::init::enter_user_namespace`]). Single-threaded init only.
pub(crate) fn make(stack: Option<&WireStack>, rootless: bool) -> Result<(), String> {
    let launcher = stack.map(|s| Launcher::fork(s, rootless)).transpose()?;
    if rootless {
        crate::init::enter_user_namespace()?;
    }
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare network namespace: {}", std::io::Error::from(e)))?;
    loopback_up()?;
    if let Some(l) = launcher {
        l.attach()?;
        OUTWARD.store(true, Ordering::SeqCst);
    }
    Ok(())
}

/// Pid 1, once its task is known: a task that wants loopback only, in a namespace made
/// with a stack, gets a fresh namespace with only loopback (owned by the same user
/// namespace; the task inherits it).
pub(crate) fn narrow(wants_outward: bool) -> Result<(), String> {
    if wants_outward || !OUTWARD.load(Ordering::SeqCst) {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
        format!(
            "unshare a loopback-only network namespace: {}",
            std::io::Error::from(e)
        )
    })?;
    loopback_up()
}

/// The supervisor, its task over: kills the stack and reaps it.
pub(crate) fn end_stack() {
    let pid = STACK.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill and waitpid on our own unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Brings `lo` up in the current network namespace.
fn loopback_up() -> Result<(), String> {
    let err = |what: &str| format!("{what} lo: {}", std::io::Error::last_os_error());
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket to bring up"));
    }
    // SAFETY: the kernel just returned this descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills in the flags of the named interface.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(err("read the flags of"));
    }
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS set.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the flags of the named interface.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(err("bring up"));
    }
    Ok(())
}

/// A stack forked ahead, waiting for the namespace to attach to.
struct Launcher {
    pid: libc::pid_t,
    name: &'static str,
    go: OwnedFd,
    ready: OwnedFd,
    errors: OwnedFd,
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("pipe: {}", std::io::Error::from(e)))
}

/// The descriptors the stack gets: its namespaces, its ready signal, its stderr.
const NETNS_FD: RawFd = 0;
const ERRORS_FD: RawFd = 2;
const READY_FD: RawFd = 3;
const USERNS_FD: RawFd = 4;

impl Launcher {
    /// Forks the launcher (see the module docs), everything it needs made before.
    fn fork(stack: &WireStack, rootless: bool) -> Result<Launcher, String> {
        let program = CString::new(stack.program.clone())
            .map_err(|_| "the network stack's path holds a NUL".to_owned())?;
        let args: Vec<CString> = stack_args(stack.kind, rootless)
            .into_iter()
            .filter_map(|a| CString::new(a).ok())
            .collect();
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: getpid has no preconditions.
        let init = unsafe { libc::getpid() };
        let ns = |what: &str| CString::new(format!("/proc/{init}/ns/{what}")).unwrap_or_default();
        let (netns, userns) = (ns("net"), ns("user"));
        let (go_r, go_w) = cloexec_pipe()?;
        let (ready_r, ready_w) = cloexec_pipe()?;
        let (errors_r, errors_w) = cloexec_pipe()?;
        // SAFETY: the init is single-threaded: the child may do anything.
        match unsafe { libc::fork() } {
            -1 => Err(format!(
                "fork the network stack: {}",
                std::io::Error::last_os_error()
            )),
            0 => {
                drop((go_w, ready_r, errors_r));
                let fds = Fds {
                    go: go_r,
                    ready: ready_w,
                    errors: errors_w,
                };
                launch(
                    init,
                    fds,
                    &netns,
                    rootless.then_some(&userns),
                    &program,
                    &argv,
                )
            }
            pid => Ok(Launcher {
                pid,
                name: stack.kind.program_name(),
                go: go_w,
                ready: ready_r,
                errors: errors_r,
            }),
        }
    }

    /// Lets the stack attach (the namespace exists now) and waits until it says the
    /// namespace is configured. On failure the stack is ended and its errors returned.
    fn attach(self) -> Result<(), String> {
        let Launcher {
            pid,
            name,
            go,
            ready,
            errors,
        } = self;
        STACK.store(pid, Ordering::SeqCst);
        // SAFETY: one byte from a valid buffer into our pipe.
        unsafe { libc::write(go.as_raw_fd(), b"g".as_ptr().cast(), 1) };
        drop(go);
        let mut said = Vec::new();
        let mut errors_open = true;
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(ATTACH_LIMIT_MS as u64);
        let outcome = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Err(format!("{name} did not configure the namespace in time"));
            }
            let mut polled = [ready.as_raw_fd(), errors.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            if !errors_open {
                polled[1].fd = -1; // ignored by poll
            }
            // SAFETY: two valid pollfds for the call's duration.
            let n = unsafe { libc::poll(polled.as_mut_ptr(), 2, left.as_millis() as i32) };
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break Err(format!("poll: {}", std::io::Error::last_os_error()));
            }
            let mut buf = [0u8; 1024];
            if polled[1].revents != 0 {
                // SAFETY: reads into a valid buffer from our pipe.
                let r = unsafe { libc::read(errors.as_raw_fd(), buf.as_mut_ptr().cast(), 1024) };
                match r {
                    r if r > 0 && said.len() < 8192 => said.extend_from_slice(&buf[..r as usize]),
                    r if r > 0 => {}
                    _ => errors_open = false,
                }
            }
            if polled[0].revents != 0 {
                // pasta writes its pid, slirp4netns a byte; a stack that exited first
                // closes the pipe instead.
                // SAFETY: reads into a valid buffer from our pipe.
                let r = unsafe { libc::read(ready.as_raw_fd(), buf.as_mut_ptr().cast(), 1024) };
                if r > 0 {
                    break Ok(());
                }
                if errors_open {
                    continue; // what it said on its way out is still to be read
                }
                break Err(format!("{name} could not configure the namespace"));
            }
        };
        if outcome.is_ok() {
            to_idle_priority(pid);
        }
        if let Err(why) = outcome {
            end_stack();
            let said = stack_errors(&said);
            return Err(if said.is_empty() {
                why
            } else {
                format!("{why}: {said}")
            });
        }
        Ok(())
    }
}

/// Puts every thread of process `pid` (the stack, configured) at idle priority
/// (`SCHED_IDLE`, nice 19), as a polite helper's tasks run: the task's traffic never
/// takes a CPU from the helper's owner. Its start ran at the init's priority, like the
/// rest of a sandbox's preparation, so that a sandbox prepared ahead is ready soon.
fn to_idle_priority(pid: libc::pid_t) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
                .collect()
        })
        .unwrap_or_else(|_| vec![pid]);
    let param = libc::sched_param { sched_priority: 0 };
    for tid in threads {
        // SAFETY: param is a valid sched_param; integer arguments otherwise. Lowering
        // the priority of a process of the same user needs no privilege.
        unsafe {
            libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        }
    }
}

/// What a failing stack wrote, in one line: syslog complaints and timestamps dropped.
fn stack_errors(said: &[u8]) -> String {
    String::from_utf8_lossy(said)
        .lines()
        .filter(|l| !l.contains("to syslog") && !l.trim().is_empty())
        .map(|l| match l.split_once(": ") {
            Some((t, rest)) if t.chars().all(|c| c.is_ascii_digit() || c == '.') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The launcher's ends of its pipes.
struct Fds {
    go: OwnedFd,
    ready: OwnedFd,
    errors: OwnedFd,
}

/// The launcher (a forked child of the single-threaded init): waits for the go-ahead,
/// opens the init's namespaces, puts its descriptors in place and executes the stack.
fn launch(
    init: libc::pid_t,
    fds: Fds,
    netns: &CString,
    userns: Option<&CString>,
    program: &CString,
    argv: &[*const libc::c_char],
) -> ! {
    let fail = |msg: &str| -> ! {
        let line = format!("herd: {msg}: {}\n", std::io::Error::last_os_error());
        // SAFETY: writes a valid buffer to our errors pipe, then exits.
        unsafe {
            libc::write(fds.errors.as_raw_fd(), line.as_ptr().cast(), line.len());
            libc::_exit(126)
        }
    };
    // SAFETY: prctl and getppid with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != init {
            libc::_exit(1);
        }
    }
    let mut byte = 0u8;
    // SAFETY: reads one byte into a valid buffer.
    if unsafe { libc::read(fds.go.as_raw_fd(), (&raw mut byte).cast(), 1) } != 1 {
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(1) };
    }
    let open = |p: &CString| {
        // SAFETY: a NUL-terminated path and integer flags.
        unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
    };
    let net = open(netns);
    if net < 0 {
        fail("open the task's network namespace");
    }
    let user = match userns {
        Some(u) => {
            let fd = open(u);
            if fd < 0 {
                fail("open the task's user namespace");
            }
            Some(fd)
        }
        None => None,
    };
    // SAFETY: a NUL-terminated path and integer flags.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    // Above every target first, so that no dup2 below overwrites a source.
    let high = |fd: RawFd| {
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor at 16 or above.
        unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 16) }
    };
    let mut places = vec![
        (high(net), NETNS_FD),
        (high(null), 1),
        (high(fds.errors.as_raw_fd()), ERRORS_FD),
        (high(fds.ready.as_raw_fd()), READY_FD),
    ];
    if let Some(u) = user {
        places.push((high(u), USERNS_FD));
    }
    for (from, to) in &places {
        // SAFETY: dup2 between descriptors of this process; the flags are then cleared
        // so the target survives exec.
        if *from < 0
            || unsafe { libc::dup2(*from, *to) } < 0
            || unsafe { libc::fcntl(*to, libc::F_SETFD, 0) } < 0
        {
            fail("place the network stack's descriptors");
        }
    }
    let first_free = if user.is_some() {
        USERNS_FD + 1
    } else {
        READY_FD + 1
    };
    // SAFETY: marks every other descriptor close-on-exec.
    unsafe {
        libc::close_range(
            first_free as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as i32,
        )
    };
    // The init blocks every signal and Rust ignores SIGPIPE; both survive exec, and
    // pasta refuses to start when SIGPIPE is ignored already.
    crate::init::reset_signals();
    // SAFETY: NUL-terminated arrays of pointers to live CStrings.
    unsafe { libc::execv(program.as_ptr(), argv.as_ptr()) };
    // SAFETY: write to our stderr (the errors pipe now) from a valid buffer, then exit.
    let line = format!(
        "herd: execute {}: {}\n",
        program.to_string_lossy(),
        std::io::Error::last_os_error()
    );
    unsafe {
        libc::write(ERRORS_FD, line.as_ptr().cast(), line.len());
        libc::_exit(127)
    }
}

/// The stack's command line (`argv[0]` included), on the descriptors [`launch`] sets.
fn stack_args(kind: StackKind, rootless: bool) -> Vec<String> {
    let fd = |n: RawFd| format!("/proc/self/fd/{n}");
    let mut a: Vec<String> = Vec::new();
    match kind {
        StackKind::Pasta => {
            a.extend(
                [
                    "pasta",
                    "--foreground",
                    "--quiet",
                    "--config-net",
                    // No port forwarding into or out of the namespace.
                    "-t",
                    "none",
                    "-u",
                    "none",
                    "-T",
                    "none",
                    "-U",
                    "none",
                    // The gateway's address is not the helper's loopback.
                    "--no-map-gw",
                    // Nor is any DNS resolver the helper's.
                    "-D",
                    "none",
                ]
                .map(String::from),
            );
            if !rootless {
                a.extend(["--runas".into(), "0".into()]);
            }
            a.extend(route_args());
            if rootless {
                a.extend(["--userns".into(), fd(USERNS_FD)]);
            }
            a.extend(["--netns".into(), fd(NETNS_FD)]);
            a.extend(["--pid".into(), fd(READY_FD)]);
        }
        StackKind::Slirp4netns => {
            a.extend(
                [
                    "slirp4netns",
                    "--configure",
                    "--mtu=65520",
                    "--disable-host-loopback",
                    "--disable-dns",
                    "--enable-seccomp",
                ]
                .map(String::from),
            );
            // Its sandbox (a mount namespace of its own, capabilities dropped) needs
            // root: a plain user's slirp4netns cannot make one outside the namespace.
            if !rootless {
                a.push("--enable-sandbox".into());
            }
            a.push(format!("--ready-fd={READY_FD}"));
            if rootless {
                a.push(format!("--userns-path={}", fd(USERNS_FD)));
            }
            a.extend(["--netns-type=path".into(), fd(NETNS_FD), "tap0".into()]);
        }
    }
    a
}

/// pasta's interface and gateway on a host without a default route (pasta would
/// refuse to start): the first interface with an IPv4 route, and an address of its
/// subnet other than the host's. Nothing when there is a default route.
fn route_args() -> Vec<String> {
    let Ok(v4) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let has_v6_default = v6.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo"
    });
    let routes = parse_routes(&v4);
    if has_v6_default || routes.iter().any(|r| r.mask == 0) {
        return Vec::new();
    }
    for r in routes {
        let own = interface_addr(&r.iface);
        if let Some(gw) = gateway_for(r.dest, r.mask, own) {
            return vec!["-i".into(), r.iface, "-g".into(), gw.to_string()];
        }
    }
    Vec::new()
}

/// One line of `/proc/net/route`.
#[derive(Debug, PartialEq)]
struct Route {
    iface: String,
    /// Destination and mask, in host order.
    dest: u32,
    mask: u32,
}

/// The routes of `/proc/net/route` (its header skipped, `lo` left out).
fn parse_routes(table: &str) -> Vec<Route> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // The kernel prints each network-order word as a native number: its
            // native bytes are the address's bytes.
            let word = |s: &str| {
                u32::from_str_radix(s, 16)
                    .ok()
                    .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
            };
            let (iface, dest, mask) = (f.first()?, word(f.get(1)?)?, word(f.get(7)?)?);
            (*iface != "lo").then(|| Route {
                iface: iface.to_string(),
                dest,
                mask,
            })
        })
        .collect()
}

/// An address of the subnet `dest`/`mask` other than `own`: its first, or its second.
fn gateway_for(dest: u32, mask: u32, own: Option<u32>) -> Option<std::net::Ipv4Addr> {
    if mask == 0 || (!mask) < 3 {
        return None; // the default route, or a subnet too small to hold another host
    }
    let network = dest & mask;
    let first = network + 1;
    let gw = if own == Some(first) { first + 1 } else { first };
    Some(std::net::Ipv4Addr::from(gw))
}

/// The IPv4 address of interface `name` (host order).
fn interface_addr(name: &str) -> Option<u32> {
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return None;
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFADDR fills in the interface's address.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFADDR, &mut ifr) } < 0 {
        return None;
    }
    // SAFETY: SIOCGIFADDR set the address member, an AF_INET sockaddr.
    let sin: libc::sockaddr_in = unsafe { std::mem::transmute_copy(&ifr.ifr_ifru.ifru_addr) };
    Some(u32::from_be(sin.sin_addr.s_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_in_host_order_without_lo() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0000D50A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";
        assert_eq!(
            parse_routes(table),
            vec![Route {
                iface: "eth0".into(),
                dest: u32::from(std::net::Ipv4Addr::new(10, 213, 0, 0)),
                mask: 0xffff_ff00,
            }]
        );
    }

    #[test]
    fn the_gateway_is_another_address_of_the_subnet() {
        let net = u32::from(std::net::Ipv4Addr::new(10, 213, 0, 0));
        let ip = |d| Some(std::net::Ipv4Addr::new(10, 213, 0, d));
        assert_eq!(gateway_for(net, 0xffff_ff00, Some(net + 2)), ip(1));
        assert_eq!(gateway_for(net, 0xffff_ff00, Some(net + 1)), ip(2));
        assert_eq!(gateway_for(net, 0, None), None);
        assert_eq!(gateway_for(net, 0xffff_fffe, None), None);
    }

    #[test]
    fn a_stack_never_forwards_ports_nor_maps_the_helpers_loopback() {
        for rootless in [false, true] {
            let a = stack_args(StackKind::Pasta, rootless).join(" ");
            for want in [
                "-t none",
                "-u none",
                "-T none",
                "-U none",
                "--no-map-gw",
                "-D none",
            ] {
                assert!(a.contains(want), "{a}");
            }
            assert_eq!(a.contains("--runas 0"), !rootless, "{a}");
            assert_eq!(a.contains("--userns"), rootless, "{a}");
            let s = stack_args(StackKind::Slirp4netns, rootless).join(" ");
            assert!(s.contains("--disable-host-loopback"), "{s}");
        }
    }

    #[test]
    fn stack_errors_drop_syslog_noise_and_timestamps() {
        let said = b"Failed to send 47 bytes to syslog\n1796698462.3448: Couldn't open network namespace /proc/self/fd/0\n";
        assert_eq!(
            stack_errors(said),
            "Couldn't open network namespace /proc/self/fd/0"
        );
    }
}
