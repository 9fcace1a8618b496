//! The init helper: what runs after the spawner re-executes the binary.
//!
//! Three processes, all single-threaded:
//!
//! * **supervisor** (the spawner's child, `Sandbox::pid`): reads the spec, creates the
//!   cgroup, enters a user namespace when not root, unshares the pid namespace and forks
//!   the pid-1 process; moves it into the cgroup before letting it go on; then forwards
//!   signals to it, waits for it, removes the cgroup and exits with the task's status.
//!   The lifeline pipe raises SIGIO when the spawner's end closes; the supervisor then
//!   kills pid 1 (and with it the whole namespace).
//! * **pid 1** of the new pid namespace: unshares mount, IPC and UTS namespaces, builds
//!   the root (overlay, /proc, /tmp, /dev, hidden paths), `pivot_root`s into it, forks
//!   the task, forwards signals to it, reaps every orphan, and exits with the task's
//!   status as soon as the task exits: the kernel then kills whatever the task left
//!   behind in the namespace.
//! * **task**: takes on the submitter's identity, limits and priority and `exec`s.
//!
//! Setup failures are sent to the spawner over the status pipe as one line each.

use std::ffi::{CString, OsString};
use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{ForkResult, Pid, fork};

use crate::spec::{WireSpec, path};
use crate::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SETUP_FAILED};
use crate::{cgroup, harden};

/// Host devices bind-mounted into the task's /dev.
pub(crate) const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// The status pipe to the spawner (see `crate::spawn` for the line protocol).
#[derive(Clone, Copy)]
struct Status(RawFd);

impl Status {
    fn send(self, line: &str) {
        let mut line: String = line.replace('\n', " ");
        line.push('\n');
        let mut buf = line.as_bytes();
        while !buf.is_empty() {
            // SAFETY: buf is a valid slice for its length.
            let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
            if n < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return;
            }
            buf = &buf[n as usize..];
        }
    }

    /// Reports a setup failure and exits.
    fn fail(self, msg: &str) -> ! {
        self.send(&format!("error {msg}"));
        // SAFETY: _exit has no preconditions; we skip atexit handlers on purpose.
        unsafe { libc::_exit(EXIT_SETUP_FAILED) }
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

fn errno_str(e: nix::errno::Errno) -> String {
    std::io::Error::from(e).to_string()
}

/// The signals the supervisor and pid 1 block, wait for and forward: everything except
/// SIGKILL/SIGSTOP (cannot be caught) and the synchronous fault signals.
fn forwardable() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigfillset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            libc::sigdelset(&mut set, s);
        }
        set
    }
}

fn block_signals() {
    let set = forwardable();
    // SAFETY: set is a valid sigset_t; the process is single-threaded.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Restores default dispositions (Rust's runtime ignores SIGPIPE, and ignored signals
/// survive exec) and an empty mask, right before exec.
pub(crate) fn reset_signals() {
    // SAFETY: plain libc calls on valid arguments; single-threaded.
    unsafe {
        for s in 1..libc::SIGRTMIN() {
            if s != libc::SIGKILL && s != libc::SIGSTOP {
                libc::signal(s, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Like [`wait_signal`], with the signal's `si_code` (`SI_TIMER` for a timer's).
fn wait_signal_info() -> (i32, i32) {
    let set = forwardable();
    loop {
        // SAFETY: set is valid; info is plain data the kernel fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let s = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if s > 0 {
            return (s, info.si_code);
        }
    }
}

fn wait_signal() -> i32 {
    let set = forwardable();
    loop {
        // SAFETY: set is valid; a null siginfo pointer is allowed.
        let s = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if s > 0 {
            return s;
        }
    }
}

/// Points fds 0, 1 and 2 at /dev/null (the supervisor and pid 1 do not need the task's
/// streams, and must not keep a pipe or terminal open on the task's behalf).
fn null_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd number; failure is harmless.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {}", errno_str(e)))
}

/// Entry point after re-exec: `argv = [exe, INIT_ARG, spec_fd, status_fd, lifeline_fd]`,
/// plus `console_fd` (the socket the task's terminal master goes back on) with a console.
pub(crate) fn main() -> ! {
    block_signals();
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(2).is_some_and(|a| a == crate::PREPARED_ARG) {
        prepared_main()
    }
    let fd = |i: usize| -> Option<RawFd> { args.get(i)?.to_str()?.parse().ok() };
    let (Some(spec_fd), Some(status_fd), Some(lifeline)) = (fd(2), fd(3), fd(4)) else {
        eprintln!("herd-sandbox: this entry point is started by the herd agent, not by hand");
        exit(EXIT_SETUP_FAILED);
    };
    set_cloexec(status_fd);
    let status = Status(status_fd);
    let console = fd(5);
    if let Some(c) = console {
        set_cloexec(c);
    }
    let spec = read_spec(spec_fd, status);
    if spec.console.is_some() != console.is_some() {
        status.fail("console requested without a console socket (or the reverse)");
    }
    let made_pids = spec.pids_max;
    supervisor(&spec, status, lifeline, console, None, None, made_pids)
}

/// Reads and decodes the spec the spawner writes on `spec_fd` (then closed).
fn read_spec(spec_fd: RawFd, status: Status) -> WireSpec {
    // SAFETY: the spawner passed us this descriptor for our exclusive use.
    let mut spec_file = unsafe { fs::File::from_raw_fd(spec_fd) };
    let mut data = Vec::new();
    if let Err(e) = spec_file.read_to_end(&mut data) {
        status.fail(&format!("read spec from fd {spec_fd}: {e}"));
    }
    match WireSpec::decode(&data) {
        Ok(s) => s,
        Err(e) => status.fail(&e.to_string()),
    }
}

/// A prepared init (`__sandbox-init prepared`, with SOCKET as its stdin, STATUS as its
/// stdout and LIFELINE as its stderr, so the spawner needs no code between fork and
/// exec and can start it with `posix_spawn`): reads a template spec from SOCKET (a
/// length-prefixed message), makes the task's cgroup from it, moves itself into it,
/// says `ready`, and waits on SOCKET for the task: a length-prefixed spec with its
/// stdin, stdout and stderr (and the console socket, when the spec asks for one) as
/// `SCM_RIGHTS`. Then it goes on as the supervisor. Its pid 1 inherits the cgroup: no
/// attach is left for the task's start. If SOCKET closes first, it leaves and removes
/// the cgroup and exits.
///
/// SOCKET then becomes the task's *gate*: pid 1 builds the task's root and waits for
/// one byte on it before it hides paths and starts the task, so the spawner can build
/// the root while it still checks what the view holds. SOCKET closing instead calls
/// the task off.
fn prepared_main() -> ! {
    // SAFETY: fstat of fd 0 into a zeroed stat buffer.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(0, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if !is_socket {
        eprintln!("herd-sandbox: this entry point is started by the herd agent, not by hand");
        exit(EXIT_SETUP_FAILED);
    }
    // SAFETY: F_DUPFD_CLOEXEC on the standard descriptors makes new ones we own.
    let moved = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    let (sock, status_fd, lifeline) = (moved(0), moved(1), moved(2));
    if sock < 0 || status_fd < 0 || lifeline < 0 {
        exit(EXIT_SETUP_FAILED);
    }
    null_stdio();
    let status = Status(status_fd);
    let template = match receive_task(sock) {
        Some((data, _)) => WireSpec::decode(&data).unwrap_or_else(|e| status.fail(&e.to_string())),
        None => exit(0),
    };
    let groups = match &template.cgroup {
        Some(c) => match cgroup::create(c, template.pids_max) {
            Ok(g) => g,
            Err(e) => status.fail(&e),
        },
        None => Vec::new(),
    };
    for g in &groups {
        status.send(&format!("cgroup {}", g.dir.display()));
    }
    // SAFETY: getpid has no preconditions.
    if let Err(e) = cgroup::attach(&groups, unsafe { libc::getpid() }) {
        cgroup::remove(&groups);
        status.fail(&e);
    }
    // The task's network namespace (and, rootless, the user namespace owning it), with
    // its stack attached, before any task comes. In the cgroup: the stack's work for
    // the task is charged to it.
    // SAFETY: geteuid has no preconditions.
    let rootless = unsafe { libc::geteuid() } != 0;
    if let Err(e) = crate::netns::make(template.net.as_ref(), rootless) {
        status.fail(&e);
    }
    status.send("ready");
    let (data, fds) = match receive_task(sock) {
        Some(t) => t,
        None => {
            // Nobody will give us a task: leave the cgroups (a group holding a process
            // cannot be removed), remove them and go.
            crate::netns::end_stack();
            let parents: Vec<cgroup::Group> = groups
                .iter()
                .filter_map(|g| {
                    Some(cgroup::Group {
                        dir: g.dir.parent()?.to_path_buf(),
                    })
                })
                .collect();
            // SAFETY: getpid has no preconditions.
            let _ = cgroup::attach(&parents, unsafe { libc::getpid() });
            cgroup::remove(&groups);
            exit(0)
        }
    };
    let spec = match WireSpec::decode(&data) {
        Ok(s) => s,
        Err(e) => status.fail(&e.to_string()),
    };
    // A root to park gets its task, and the task's descriptors, in pid 1 later.
    let console = if spec.parked {
        if !fds.is_empty() {
            status.fail("a root to park came with descriptors");
        }
        None
    } else {
        install_stdio(spec.console.is_some(), fds, status)
    };
    supervisor(
        &spec,
        status,
        lifeline,
        console,
        Some(groups),
        Some(sock),
        template.pids_max,
    )
}

/// Makes the descriptors that came with a task this process's stdin, stdout and
/// stderr, or (`console`: the task wants a terminal) returns the console socket that
/// came instead, close-on-exec.
fn install_stdio(console: bool, fds: Vec<OwnedFd>, status: Status) -> Option<RawFd> {
    match (console, fds.as_slice()) {
        (false, [i, o, e]) => {
            for (from, to) in [(i, 0), (o, 1), (e, 2)] {
                // SAFETY: dup2 onto the standard descriptors from ones we received.
                unsafe { libc::dup2(from.as_raw_fd(), to) };
            }
            None
        }
        (true, [c]) => {
            null_stdio();
            // SAFETY: duplicating a descriptor we received; the copy is ours.
            let raw = unsafe { libc::dup(c.as_raw_fd()) };
            set_cloexec(raw);
            Some(raw)
        }
        _ => status.fail("the task came with the wrong descriptors"),
    }
}

/// The largest task message a prepared init takes (its environment and arguments).
const MAX_TASK: usize = 64 << 20;

/// Receives the task of a prepared init: a 4-byte length, the spec, and descriptors
/// with the first bytes. Reads exactly that much: what follows on the socket (the
/// gate's byte) stays there for pid 1. `None` when the socket closes first.
fn receive_task(sock: RawFd) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut fds = Vec::new();
    let mut fill = |buf: &mut [u8]| -> Option<()> {
        let mut got = 0usize;
        while got < buf.len() {
            let mut iov = [std::io::IoSliceMut::new(&mut buf[got..])];
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let msg = match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::empty()) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            };
            for c in msg.cmsgs().ok()? {
                if let ControlMessageOwned::ScmRights(r) = c {
                    // SAFETY: the kernel just installed these descriptors for us.
                    fds.extend(r.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
            if msg.bytes == 0 {
                return None;
            }
            got += msg.bytes;
        }
        Some(())
    };
    let mut head = [0u8; 4];
    fill(&mut head)?;
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_TASK {
        return None;
    }
    let mut buf = vec![0u8; len];
    fill(&mut buf)?;
    Some((buf, fds))
}

/// Arms the lifeline: SIGIO arrives when the spawner's end closes.
fn arm_lifeline(fd: RawFd) {
    set_cloexec(fd);
    // SAFETY: fcntl on our own descriptor with integer arguments.
    unsafe {
        libc::fcntl(fd, libc::F_SETOWN, libc::getpid());
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC | libc::O_NONBLOCK);
    }
}

/// Whether the spawner is gone: its end of the lifeline is closed (read sees EOF).
fn spawner_gone(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into a valid buffer.
    let n = unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
    n == 0
}

/// `prepared`: the cgroups a prepared init made and moved itself into (its children
/// inherit them; the spawner removes them after it exits), instead of the spec's.
/// `gate`: pid 1 waits for a byte on it before it starts the task (only pid 1 keeps it).
/// `made_pids`: the `pids.max` the groups were made with (pid 1 sets the task's own if
/// it differs).
fn supervisor(
    spec: &WireSpec,
    status: Status,
    lifeline: RawFd,
    console: Option<RawFd>,
    prepared: Option<Vec<cgroup::Group>>,
    gate: Option<RawFd>,
    made_pids: Option<u64>,
) -> ! {
    arm_lifeline(lifeline);
    // Detach from the agent's session: its terminal's signals are not the task's.
    // SAFETY: setsid has no preconditions.
    unsafe { libc::setsid() };
    let rootless = rootless();

    let inside = prepared.is_some();
    let groups = match (prepared, &spec.cgroup) {
        (Some(g), _) => g,
        (None, Some(c)) => match cgroup::create(c, spec.pids_max) {
            Ok(g) => g,
            Err(e) => status.fail(&e),
        },
        (None, None) => Vec::new(),
    };
    if !inside {
        for g in &groups {
            status.send(&format!("cgroup {}", g.dir.display()));
        }
    }
    // Groups this process is in cannot be removed by it: the spawner does that.
    let own: &[cgroup::Group] = if inside { &[] } else { &groups };
    let fail = |msg: String| -> ! {
        cgroup::remove(own);
        status.fail(&msg)
    };

    // A prepared init made them before it was ready.
    if !inside && let Err(e) = crate::netns::make(spec.net.as_ref(), rootless) {
        fail(e);
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        fail(format!("unshare pid namespace: {}", errno_str(e)));
    }
    let (go_r, go_w) = match pipe() {
        Ok(p) => p,
        Err(e) => fail(e),
    };
    // SAFETY: this process is single-threaded (init_main runs before any thread starts).
    match unsafe { fork() } {
        Err(e) => fail(format!("fork pid 1: {}", errno_str(e))),
        Ok(ForkResult::Child) => {
            drop(go_w);
            // SAFETY: prctl with integer arguments.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
            let mut byte = [0u8; 1];
            let mut go = fs::File::from(go_r);
            if !matches!(go.read(&mut byte), Ok(1)) {
                exit(EXIT_SETUP_FAILED);
            }
            drop(go);
            let pids = Pids::open(&groups, made_pids);
            pid1(spec, status, rootless, console, gate, pids)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(go_r);
            close_ours(console);
            // Only pid 1 waits at the gate: closed here, the spawner's end closing is
            // seen there.
            close_ours(gate);
            if let Err(e) = cgroup::attach(own, child.as_raw()) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = reap(child.as_raw(), false);
                fail(e);
            }
            status.send(&format!("pid1 {}", child.as_raw()));
            let mut go = fs::File::from(go_w);
            let _ = std::io::Write::write_all(&mut go, b"g");
            drop(go);
            null_stdio();
            let code = loop {
                // Checked first, so a spawner that died before the lifeline was armed
                // is noticed too.
                if spawner_gone(lifeline) {
                    // SAFETY: kill with our unreaped child's pid; its namespace dies with it.
                    unsafe { libc::kill(child.as_raw(), libc::SIGKILL) };
                }
                let sig = wait_signal();
                if sig == libc::SIGCHLD {
                    match reap(child.as_raw(), true) {
                        Ok(Some((_, Reaped::Exited(code)))) => break code,
                        Ok(Some((_, Reaped::Signaled(s)))) => {
                            status.send(&format!("exit signal {s}"));
                            break 128 + s;
                        }
                        _ => continue,
                    }
                }
                if sig == libc::SIGIO && spawner_gone(lifeline) {
                    continue;
                }
                // SAFETY: kill with a pid we own (our unreaped child) and a signal number.
                unsafe { libc::kill(child.as_raw(), sig) };
            };
            // pid 1 is reaped, so its namespace is empty: the whole tree is gone (pid 1
            // said so already when its task ended by itself).
            status.send("ended");
            crate::netns::end_stack();
            if let Some(e) = cgroup::remove(own) {
                status.send(&format!("warn {e}"));
            }
            exit(code)
        }
    }
}

/// This init runs rootless: as a plain user, or in the user namespace it made for that
/// ([`enter_user_namespace`]; a prepared init enters it before its task comes).
fn rootless() -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    euid != 0 || IN_OWN_USERNS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Set once this init has entered its own user namespace.
static IN_OWN_USERNS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Rootless: enters a new user namespace mapping root to this user (and group), in
/// which the sandbox may mount and own its network namespace.
pub(crate) fn enter_user_namespace() -> Result<(), String> {
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
        format!(
            "rootless: create a user namespace: {}{}",
            errno_str(e),
            crate::userns_hint()
        )
    })?;
    IN_OWN_USERNS.store(true, std::sync::atomic::Ordering::SeqCst);
    let maps = [
        ("/proc/self/uid_map", format!("0 {euid} 1")),
        ("/proc/self/setgroups", "deny".to_owned()),
        ("/proc/self/gid_map", format!("0 {egid} 1")),
    ];
    for (file, value) in maps {
        fs::write(file, &value).map_err(|e| format!("rootless: write {value:?} to {file}: {e}"))?;
    }
    Ok(())
}

/// Pid 1, its task known: the task's network namespace (see [`crate::netns::narrow`]).
fn task_net(spec: &WireSpec, status: Status) {
    if let Err(e) = crate::netns::narrow(spec.net.is_some()) {
        status.fail(&e);
    }
}

fn mnt(
    src: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(Some(src), target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {}: {}",
            fstype.unwrap_or(if flags.contains(MsFlags::MS_BIND) {
                "bind"
            } else {
                "remount"
            }),
            target.display(),
            errno_str(e)
        )
    })
}

/// Escapes a path for overlayfs' comma- and colon-separated options.
fn escape_overlay(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn ensure_dir(dir: &Path, what: &str) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().mode(0o755).create(dir).map_err(|e| {
        format!(
            "the view has no {what} directory and creating {} failed: {e}",
            dir.display()
        )
    })
}

fn absolute(p: &Path, what: &str) -> Result<PathBuf, String> {
    fs::canonicalize(p).map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// The root directory of an overlay takes its owner and mode from the upper layer: make
/// them the lower root's, so that an upper made with mode 0700 by the agent does not lock
/// the task out of `/`. (Rootless: the owner cannot be changed; the mode is.)
fn match_root_attributes(lower: &Path, upper: &Path, rootless: bool) -> Result<(), String> {
    let want = fs::metadata(lower).map_err(|e| format!("stat lower {}: {e}", lower.display()))?;
    let have = fs::metadata(upper).map_err(|e| format!("stat upper {}: {e}", upper.display()))?;
    if !rootless && (have.uid() != want.uid() || have.gid() != want.gid()) {
        std::os::unix::fs::chown(upper, Some(want.uid()), Some(want.gid()))
            .map_err(|e| format!("chown upper {}: {e}", upper.display()))?;
    }
    if have.mode() & 0o7777 != want.mode() & 0o7777 {
        fs::set_permissions(upper, fs::Permissions::from_mode(want.mode() & 0o7777))
            .map_err(|e| format!("chmod upper {}: {e}", upper.display()))?;
    }
    Ok(())
}

/// Mount options of a tmpfs the task sees, owned by the task's root: as root, the
/// namespace's root is `TASK_ID_BASE` on the helper (rootless, the mounter's uid is).
fn owned(opts: &str, rootless: bool) -> String {
    if rootless {
        opts.to_owned()
    } else {
        let base = crate::TASK_ID_BASE;
        format!("{opts},uid={base},gid={base}")
    }
}

/// Builds the task's root at `work` (overlay + /proc + /tmp + /dev) and pivots into it.
fn build_root(spec: &WireSpec, rootless: bool) -> Result<(), String> {
    let lower = absolute(&path(&spec.lower), "lower")?;
    let upper = absolute(&path(&spec.upper), "upper")?;
    let work = absolute(&path(&spec.work), "work")?;
    // As root, from the namespace's real root (see `leave_chroot`): the layers' paths
    // are then below the agent's old root.
    let (lower, upper, work) = if rootless {
        (lower, upper, work)
    } else {
        let old_root = leave_chroot(&work)?;
        let under = |p: &Path| old_root.join(p.strip_prefix("/").unwrap_or(p));
        (under(&lower), under(&upper), under(&work))
    };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make mounts private: {}", errno_str(e)))?;
    match_root_attributes(&lower, &upper, rootless)?;
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        escape_overlay(&lower),
        escape_overlay(&upper),
        escape_overlay(&work)
    );
    if rootless {
        opts.push_str(",userxattr");
    }
    let root = work.clone();
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // `volatile` (Linux 5.10): the layers are scratch, read back by the agent while the
    // page cache still holds them, so the unmount at the task's end need not sync the
    // helper's file system and flush its disk's cache. Older kernels refuse the option:
    // then without it. Not rootless: the option leaves a directory in the work layer's
    // mode-0 `work`, which a plain user's agent could not remove.
    //
    // That directory (`work/work/incompat/volatile`) makes overlayfs refuse the work
    // layer next time: one used before (herd's tasks get fresh ones; the library's
    // callers may not) is cleared of it first.
    let _ = fs::remove_dir_all(work.join("work/incompat"));
    let volatile = format!("{opts},volatile");
    if rootless
        || mount(
            Some("herd"),
            &root,
            Some("overlay"),
            flags,
            Some(volatile.as_str()),
        )
        .is_err()
    {
        mnt("herd", &root, Some("overlay"), flags, Some(&opts))
            .map_err(|e| format!("{e} (lower {}, upper {})", lower.display(), upper.display()))?;
    }

    let proc_dir = root.join("proc");
    ensure_dir(&proc_dir, "/proc")?;
    mnt(
        "proc",
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mask_proc(&proc_dir)?;

    let tmp = root.join("tmp");
    ensure_dir(&tmp, "/tmp")?;
    mnt(
        "tmpfs",
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&owned("mode=1777", rootless)),
    )?;

    let dev = root.join("dev");
    ensure_dir(&dev, "/dev")?;
    mnt(
        "tmpfs",
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&owned("mode=755,size=64k", rootless)),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        let host = Path::new("/dev").join(name);
        if !rootless {
            // As root, a device node of the same number (cheaper than a bind mount).
            let meta = fs::metadata(&host).map_err(|e| format!("stat {}: {e}", host.display()))?;
            let c = CString::new(target.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("bad path {}", target.display()))?;
            // SAFETY: c is a NUL-terminated path; mode and device are plain integers.
            let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, meta.rdev()) };
            if made == 0 {
                fs::set_permissions(&target, fs::Permissions::from_mode(0o666))
                    .map_err(|e| format!("chmod {}: {e}", target.display()))?;
                let base = Some(crate::TASK_ID_BASE);
                std::os::unix::fs::chown(&target, base, base)
                    .map_err(|e| format!("chown {}: {e}", target.display()))?;
                continue;
            }
        }
        fs::File::create(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
        mnt(
            host.to_str().unwrap_or("/dev/null"),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(|e| format!("create {}: {e}", pts.display()))?;
    let pts_opts = if rootless {
        "newinstance,ptmxmode=0666,mode=0620".to_owned()
    } else {
        // The task's tty group (5) as the task's namespace maps it.
        format!(
            "newinstance,ptmxmode=0666,mode=0620,gid={}",
            crate::TASK_ID_BASE + 5
        )
    };
    mnt(
        "devpts",
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&pts_opts),
    )?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(|e| format!("create {}: {e}", shm.display()))?;
    mnt(
        "tmpfs",
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&owned("mode=1777", rootless)),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(link)).map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }

    std::env::set_current_dir(&root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| format!("pivot_root {}: {}", root.display(), errno_str(e)))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| format!("detach the helper's root: {}", errno_str(e)))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// An agent confined to a chroot directory (a real way to run a helper: NAS boxes run
/// Debian in one) makes every process it starts "chrooted": the kernel refuses such a
/// process a user namespace, and the chroot directory need not even be a mount point
/// (then `/` cannot be made private, nor pivoted from). In pid 1's own mount namespace,
/// as root, this climbs out of the chroot to the namespace's real root (through
/// `below`, any directory under the current root) and returns where the old root is
/// from there (`/` when there was no chroot). The task's root later takes the real
/// root's place by `pivot_root`, and the helper's whole tree is detached.
fn leave_chroot(below: &Path) -> Result<PathBuf, String> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path and integer flags.
    let fd = unsafe { libc::open(c"/".as_ptr(), flags) };
    check(fd, || "leave the agent's chroot: open /".into())?;
    // SAFETY: the kernel just returned this descriptor to us.
    let old = unsafe { OwnedFd::from_raw_fd(fd) };
    let below = cstr(below.as_os_str().as_encoded_bytes());
    let step =
        |ret: libc::c_int, what: &str| check(ret, || format!("leave the agent's chroot: {what}"));
    // SAFETY (this block): NUL-terminated paths, a descriptor we own, and stat buffers
    // valid for the calls' duration.
    unsafe {
        step(libc::chroot(below.as_ptr()), "chroot below /")?;
        step(libc::fchdir(old.as_raw_fd()), "fchdir /")?;
        loop {
            let mut a: libc::stat = std::mem::zeroed();
            let mut b: libc::stat = std::mem::zeroed();
            step(libc::stat(c".".as_ptr(), &mut a), "stat .")?;
            step(libc::stat(c"..".as_ptr(), &mut b), "stat ..")?;
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) {
                break;
            }
            step(libc::chdir(c"..".as_ptr()), "chdir ..")?;
        }
        step(
            libc::chroot(c".".as_ptr()),
            "chroot to the namespace's root",
        )?;
        step(libc::fchdir(old.as_raw_fd()), "back to the old root")?;
    }
    let old_root = std::env::current_dir()
        .map_err(|e| format!("leave the agent's chroot: where the old root is: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(old_root)
}

/// Makes the kernel's knobs in the task's fresh /proc read-only and covers what shows
/// kernel internals (see `harden`).
fn mask_proc(proc_dir: &Path) -> Result<(), String> {
    let ro = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    for name in harden::READ_ONLY_PROC {
        let p = proc_dir.join(name);
        if fs::symlink_metadata(&p).is_err() {
            continue;
        }
        let p_str = p.to_string_lossy();
        mnt(&p_str, &p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        mnt(
            "none",
            &p,
            None,
            ro | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
            None,
        )?;
    }
    for name in harden::MASKED_PROC {
        let p = proc_dir.join(name);
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            mnt("tmpfs", &p, Some("tmpfs"), ro, Some("mode=0555,size=4k"))?;
        } else {
            mnt("/dev/null", &p, None, MsFlags::MS_BIND, None)?;
        }
    }
    Ok(())
}

/// Makes each hidden path (resolved inside the view) an empty read-only directory or
/// file. Runs after pivot_root so that symlinks resolve inside the view.
fn hide(paths: &[Vec<u8>]) -> Result<(), String> {
    let staging = Path::new("/dev/.herd-hide");
    let empty = staging.join("empty");
    let mut staged = false;
    for raw in paths {
        let p = path(raw);
        let Ok(meta) = fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            mnt(
                "tmpfs",
                &p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0555,size=4k"),
            )
            .map_err(|e| format!("hide {}: {e}", p.display()))?;
        } else {
            if !staged {
                fs::create_dir(staging)
                    .map_err(|e| format!("create {}: {e}", staging.display()))?;
                mnt(
                    "tmpfs",
                    staging,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID,
                    Some("mode=0755,size=4k"),
                )?;
                fs::File::create(&empty).map_err(|e| format!("create {}: {e}", empty.display()))?;
                fs::set_permissions(&empty, fs::Permissions::from_mode(0o444))
                    .map_err(|e| format!("chmod {}: {e}", empty.display()))?;
                staged = true;
            }
            let hidden = |e: String| format!("hide {}: {e}", p.display());
            mnt(&empty.to_string_lossy(), &p, None, MsFlags::MS_BIND, None).map_err(hidden)?;
            mnt(
                "none",
                &p,
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None,
            )
            .map_err(hidden)?;
        }
    }
    if staged {
        umount2(staging, MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmount {}: {}", staging.display(), errno_str(e)))?;
        fs::remove_dir(staging).map_err(|e| format!("remove {}: {e}", staging.display()))?;
    }
    Ok(())
}

/// Closes this process's copy of a descriptor another process uses (the console socket
/// is the task's, the gate pid 1's).
fn close_ours(fd: Option<RawFd>) {
    if let Some(fd) = fd {
        // SAFETY: our own copy of the descriptor, not used afterwards in this process.
        unsafe { libc::close(fd) };
    }
}

/// Waits at the gate for the spawner's go-ahead (one byte); fails if it closes first.
fn pass_gate(gate: RawFd, status: Status) {
    let mut byte = 0u8;
    let n = loop {
        // SAFETY: reads at most one byte into a valid buffer from our own descriptor.
        let n = unsafe { libc::read(gate, (&raw mut byte).cast(), 1) };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break n;
        }
    };
    // SAFETY: our own descriptor, not used again.
    unsafe { libc::close(gate) };
    if n != 1 {
        status.fail("the task was called off before it started");
    }
}

/// The task ended by itself: kills what is left of its tree (every other process of
/// this pid namespace), reaps it, and says `ended` before pid 1 exits, so the spawner
/// goes on while the kernel tears the namespaces down.
/// How a reaped child ended.
enum Reaped {
    Exited(i32),
    Signaled(i32),
    /// Stopped or continued: not an end.
    Other,
}

/// `waitpid` through libc: nix's refuses a status it cannot name (a task killed by a
/// real-time signal) with `EINVAL` after the kernel reaped the child, which lost the
/// task's end and hung its sandbox. `Ok(None)`: nothing to reap now (with `nohang`).
fn reap(pid: libc::pid_t, nohang: bool) -> Result<Option<(libc::pid_t, Reaped)>, i32> {
    let mut st: libc::c_int = 0;
    let flags = if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: st is a valid place for the status.
    let got = unsafe { libc::waitpid(pid, &mut st, flags) };
    if got < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ECHILD));
    }
    if got == 0 {
        return Ok(None);
    }
    let how = if libc::WIFEXITED(st) {
        Reaped::Exited(libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        Reaped::Signaled(libc::WTERMSIG(st))
    } else {
        Reaped::Other
    };
    Ok(Some((got, how)))
}

fn end_tree(status: Status, stderr: Option<fs::File>) {
    // SAFETY: kill(-1) from pid 1 signals every other process of its pid namespace.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    loop {
        match reap(-1, false) {
            Err(libc::EINTR) => continue,
            Err(_) => break, // ECHILD: nothing is left
            Ok(_) => continue,
        }
    }
    drop(stderr);
    status.send("ended");
}

fn pids_value(max: Option<u64>) -> String {
    max.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// The task's `pids` limit as pid 1 holds it: `pids.max`, to set the task's own
/// limit, and `pids.events`, whose `max` count pid 1 checks on a timer (v1's
/// `pids.events` raises no inotify event). Opened before `pivot_root` hides the cgroup
/// file system.
struct Pids {
    max: fs::File,
    events: fs::File,
    /// The limit the group was made with.
    made: Option<u64>,
    /// Forks refused before the task started (a reused group).
    before: u64,
}

/// How often pid 1 checks whether the task ran into its `pids` limit.
const PIDS_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

impl Pids {
    fn open(groups: &[cgroup::Group], made: Option<u64>) -> Option<Pids> {
        let (max, events) = cgroup::open_pids(groups)?;
        let before = cgroup::pids_refused(&events);
        Some(Pids {
            max,
            events,
            made,
            before,
        })
    }

    /// Whether a fork was refused since the task started.
    fn refused(&self) -> bool {
        cgroup::pids_refused(&self.events) > self.before
    }

    /// Starts a timer that raises `SIGIO` (with `si_code` `SI_TIMER`) every
    /// [`PIDS_CHECK`].
    fn arm(&self) {
        // SAFETY: sigevent and itimerspec are plain data, filled in before use; the
        // timer id is written by the kernel.
        unsafe {
            let mut ev: libc::sigevent = std::mem::zeroed();
            ev.sigev_notify = libc::SIGEV_SIGNAL;
            ev.sigev_signo = libc::SIGIO;
            let mut timer: libc::timer_t = std::mem::zeroed();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) != 0 {
                return;
            }
            let period = libc::timespec {
                tv_sec: PIDS_CHECK.as_secs() as libc::time_t,
                tv_nsec: PIDS_CHECK.subsec_nanos() as libc::c_long,
            };
            let spec = libc::itimerspec {
                it_interval: period,
                it_value: period,
            };
            libc::timer_settime(timer, 0, &spec, std::ptr::null_mut());
        }
    }
}

fn pid1(
    spec: &WireSpec,
    status: Status,
    rootless: bool,
    console: Option<RawFd>,
    gate: Option<RawFd>,
    pids: Option<Pids>,
) -> ! {
    // Not dumpable: the task, even as the same uid, cannot open pid 1's /proc files
    // (its descriptors: the status pipe and the gate) or trace it.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if let Err(e) = unshare(flags) {
        status.fail(&format!(
            "unshare mount/ipc/uts namespaces: {}",
            errno_str(e)
        ));
    }
    if let Err(e) = build_root(spec, rootless) {
        status.fail(&e);
    }
    // Before the task comes (and the gate): pid 1's share of the task's hardening,
    // which the task inherits (see `harden`): an empty bounding set, pid 1's seccomp
    // filter, and the helper's own limits to clamp the task's to.
    let (pid1_filter, filter) = harden::filters().unwrap_or_else(|e| status.fail(&e));
    if let Err(e) = harden::limit_capabilities().and_then(|()| harden::load(&pid1_filter)) {
        status.fail(&e);
    }
    let own_limits = harden::own_limits();
    let parked_task;
    let (spec, console) = match gate {
        Some(g) if spec.parked => {
            // The root is built: the task comes on the gate, with its descriptors, and
            // then the go-ahead.
            status.send("parked");
            let Some((data, fds)) = receive_task(g) else {
                status.fail("the task was called off before it started")
            };
            parked_task = WireSpec::decode(&data).unwrap_or_else(|e| status.fail(&e.to_string()));
            let console = install_stdio(parked_task.console.is_some(), fds, status);
            pass_gate(g, status);
            (&parked_task, console)
        }
        Some(g) => {
            pass_gate(g, status);
            (spec, console)
        }
        None => (spec, console),
    };
    task_net(spec, status);
    if let Some(p) = &pids
        && spec.pids_max != p.made
        && let Err(e) = cgroup::set_pids_max(&p.max, spec.pids_max)
    {
        status.fail(&e);
    }
    if let Err(e) = hide(&spec.hidden) {
        status.fail(&e);
    }
    if let Err(e) = mnt(
        "none",
        Path::new("/dev"),
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    ) {
        status.fail(&e);
    }
    if let Some(name) = &spec.hostname
        && let Err(e) = nix::unistd::sethostname(name)
    {
        status.fail(&format!("set hostname {name:?}: {}", errno_str(e)));
    }
    let (exec_r, exec_w) = match pipe() {
        Ok(p) => p,
        Err(e) => status.fail(&e),
    };
    let userns = if rootless {
        None
    } else {
        match IdHandshake::new() {
            Ok(h) => Some(h),
            Err(e) => status.fail(&e),
        }
    };
    // SAFETY: single-threaded process.
    let task = match unsafe { fork() } {
        Err(e) => status.fail(&format!("fork task: {}", errno_str(e))),
        Ok(ForkResult::Child) => {
            drop(exec_r);
            let userns = userns.map(IdHandshake::task_side);
            task(spec, status, exec_w, console, &filter, &own_limits, userns)
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    close_ours(console);
    drop(exec_w);
    if let Some(h) = userns
        && let Err(e) = h.map(task)
    {
        // SAFETY: kill with our unreaped child's pid.
        unsafe { libc::kill(task.as_raw(), libc::SIGKILL) };
        status.fail(&e);
    }
    // Wait until the task has exec'd (or failed): its copy of the pipe closes then.
    let mut sink = [0u8; 16];
    let mut exec_r = fs::File::from(exec_r);
    while matches!(exec_r.read(&mut sink), Ok(n) if n > 0) {}
    drop(exec_r);
    status.send("started");
    // The task's stderr, kept to say why pid 1 ended the task (none with a console).
    let stderr = match console {
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor we own, or fails.
        None => match unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) } {
            // SAFETY: the kernel just returned this descriptor to us.
            fd if fd >= 0 => Some(unsafe { OwnedFd::from_raw_fd(fd) }),
            _ => None,
        },
        Some(_) => None,
    };
    let mut stderr = stderr.map(fs::File::from);
    null_stdio();
    if let Some(p) = &pids {
        p.arm();
    }
    // Says, once, that the task ran into its process limit.
    let mut told = false;
    let mut tell_pids_limit = |stderr: &mut Option<fs::File>| {
        if told || !pids.as_ref().is_some_and(Pids::refused) {
            return false;
        }
        told = true;
        let limit = pids_value(spec.pids_max);
        let msg = format!(
            "herd: the task was ended: it reached its limit of {limit} processes (pids.max); a fork bomb?\n"
        );
        if let Some(e) = stderr.as_mut() {
            let _ = std::io::Write::write_all(e, msg.as_bytes());
        }
        status.send(&format!("warn task ended at its pids.max ({limit})"));
        true
    };
    loop {
        let (sig, code) = wait_signal_info();
        if sig == libc::SIGIO && code == libc::SI_TIMER {
            if tell_pids_limit(&mut stderr) {
                // SAFETY: kill(-1) from pid 1 signals every other process of its namespace.
                unsafe { libc::kill(-1, libc::SIGKILL) };
            }
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: kill with our child's pid (not reaped yet) and a signal number.
            unsafe { libc::kill(task.as_raw(), sig) };
            continue;
        }
        let task_pid = task.as_raw();
        loop {
            match reap(-1, true) {
                Ok(Some((pid, Reaped::Exited(code)))) if pid == task_pid => {
                    // The task may have ended because a fork was refused, before the
                    // timer saw it.
                    tell_pids_limit(&mut stderr);
                    status.send(&format!("exit code {code}"));
                    end_tree(status, stderr.take());
                    exit(code);
                }
                Ok(Some((pid, Reaped::Signaled(s)))) if pid == task_pid => {
                    tell_pids_limit(&mut stderr);
                    status.send(&format!("exit signal {s}"));
                    end_tree(status, stderr.take());
                    exit(128 + s);
                }
                Ok(None) | Err(_) => break,
                Ok(Some(_)) => continue,
            }
        }
    }
}

/// The pipes over which a root helper's task, once in a user namespace of its own, has
/// pid 1 write that namespace's id maps: a range can only be mapped from the parent
/// namespace, with `CAP_SETUID` there.
struct IdHandshake {
    unshared: (OwnedFd, OwnedFd),
    mapped: (OwnedFd, OwnedFd),
}

/// The task's ends of an [`IdHandshake`].
pub(crate) struct TaskIds {
    unshared: OwnedFd,
    mapped: OwnedFd,
}

impl IdHandshake {
    fn new() -> Result<IdHandshake, String> {
        Ok(IdHandshake {
            unshared: pipe()?,
            mapped: pipe()?,
        })
    }

    fn task_side(self) -> TaskIds {
        TaskIds {
            unshared: self.unshared.1,
            mapped: self.mapped.0,
        }
    }

    /// Pid 1's side: waits until `task` is in its user namespace, then maps it. A task
    /// that failed before (its end closed) is left to report its own failure.
    fn map(self, task: Pid) -> Result<(), String> {
        let IdHandshake { unshared, mapped } = self;
        drop(unshared.1);
        drop(mapped.0);
        let mut byte = [0u8; 1];
        if !matches!(fs::File::from(unshared.0).read(&mut byte), Ok(1)) {
            return Ok(());
        }
        let range = format!("0 {} {}", crate::TASK_ID_BASE, crate::TASK_ID_COUNT);
        for file in ["uid_map", "gid_map"] {
            let path = format!("/proc/{}/{file}", task.as_raw());
            fs::write(&path, &range)
                .map_err(|e| format!("map the task's ids: write {range:?} to {path}: {e}"))?;
        }
        std::io::Write::write_all(&mut fs::File::from(mapped.1), b"m")
            .map_err(|e| format!("tell the task its ids are mapped: {e}"))
    }
}

impl TaskIds {
    /// The task's side: a new user namespace, mapped by pid 1.
    fn enter(self, spec: &WireSpec) -> Result<(), String> {
        let outside = spec
            .groups
            .iter()
            .chain([&spec.uid, &spec.gid])
            .find(|&&id| id >= crate::TASK_ID_COUNT);
        if let Some(id) = outside {
            return Err(format!(
                "id {id} of the submitter cannot be mapped into a task (at most {})",
                crate::TASK_ID_COUNT - 1
            ));
        }
        unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("create the task's user namespace: {}", errno_str(e)))?;
        std::io::Write::write_all(&mut fs::File::from(self.unshared), b"u")
            .map_err(|e| format!("tell pid 1 the task's user namespace exists: {e}"))?;
        let mut byte = [0u8; 1];
        if !matches!(fs::File::from(self.mapped).read(&mut byte), Ok(1)) {
            return Err("pid 1 did not map the task's ids".into());
        }
        // The new namespace gave the task a full bounding set again.
        harden::limit_capabilities()
    }
}

fn cstr(b: &[u8]) -> CString {
    // Interior NULs cannot be passed to exec; cut there (the kernel would too).
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    CString::new(&b[..end]).unwrap_or_default()
}

/// Checks a libc return value: negative means failure, described by errno.
fn check(ret: libc::c_int, what: impl FnOnce() -> String) -> Result<(), String> {
    if ret < 0 {
        Err(format!("{}: {}", what(), std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// Session, terminal, priority, limits, identity, capabilities, umask, no_new_privs
/// and the seccomp filter of the task.
fn prepare_task(
    spec: &WireSpec,
    filter: &[seccompiler::sock_filter],
    own_limits: &[(libc::__rlimit_resource_t, libc::rlimit)],
    userns: Option<TaskIds>,
) -> Result<(), String> {
    let rootless = userns.is_none();
    // SAFETY: setsid has no preconditions (it fails harmlessly for a group leader).
    unsafe { libc::setsid() };
    if spec.tty && spec.console.is_none() {
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
        check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }, || {
            "make stdin the controlling terminal".into()
        })?;
    }
    if spec.idle {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: param is a valid sched_param for the call's duration.
        check(
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) },
            || "set SCHED_IDLE".into(),
        )?;
        // SAFETY: integer arguments only.
        check(
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) },
            || "set nice 19".into(),
        )?;
    }
    for (res, lim) in harden::clamp_rlimits(&spec.rlimits, spec.idle, own_limits) {
        // SAFETY: lim is a valid rlimit.
        check(unsafe { libc::setrlimit(res, &lim) }, || {
            format!("set rlimit {res} to {}/{}", lim.rlim_cur, lim.rlim_max)
        })?;
    }
    if rootless && (spec.uid != 0 || spec.gid != 0) {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
            format!(
                "rootless: create the task's user namespace: {}",
                errno_str(e)
            )
        })?;
        // Already denied by the outer namespace; writing it again is harmless.
        let _ = fs::write("/proc/self/setgroups", "deny");
        for (file, value) in [
            ("/proc/self/uid_map", format!("{} 0 1", spec.uid)),
            ("/proc/self/gid_map", format!("{} 0 1", spec.gid)),
        ] {
            fs::write(file, &value)
                .map_err(|e| format!("rootless: write {value:?} to {file}: {e}"))?;
        }
        // The new user namespace gave the task a full bounding set again (pid 1
        // emptied the one it inherited).
        harden::limit_capabilities()?;
    }
    if let Some(ids) = userns {
        // Root helper: the task's own user namespace, its ids shifted out of the
        // helper's (see `TASK_ID_BASE`). Its uid 0, if the submitter is root, is root
        // only over what that namespace owns: nothing but itself.
        ids.enter(spec)?;
    }
    if !rootless {
        let groups: &[libc::gid_t] = &spec.groups;
        // SAFETY: groups is a valid slice of gid_t of the given length.
        check(
            unsafe { libc::setgroups(groups.len(), groups.as_ptr()) },
            || format!("setgroups {groups:?}"),
        )?;
        // SAFETY: integer arguments only.
        check(
            unsafe { libc::setresgid(spec.gid, spec.gid, spec.gid) },
            || format!("setgid {}", spec.gid),
        )?;
        // SAFETY: integer arguments only.
        check(
            unsafe { libc::setresuid(spec.uid, spec.uid, spec.uid) },
            || format!("setuid {}", spec.uid),
        )?;
    }
    harden::clear_capabilities()?;
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(spec.umask & 0o777) };
    // SAFETY: integer arguments only.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        || "set no_new_privs".into(),
    )?;
    // Last: nothing after it (the console, chdir, exec) needs a refused call.
    harden::load(filter)?;
    Ok(())
}

/// Opens a terminal in the task's devpts, makes it fds 0-2 and the controlling terminal
/// (the caller already called `setsid`), and sends the master over `sock`.
fn open_console(sock: RawFd, (rows, cols): (u16, u16)) -> Result<(), String> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path and integer flags.
    let master = unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) };
    check(master, || "open /dev/ptmx".into())?;
    // SAFETY: the descriptor was just opened and is ours alone.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let m = master.as_raw_fd();
    // SAFETY: unlockpt on an open ptmx descriptor.
    check(unsafe { libc::unlockpt(m) }, || "unlockpt".into())?;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize.
    check(unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &size) }, || {
        "set the terminal size".into()
    })?;
    // The slave through the master's own devpts mount (no path lookup), or by its name.
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let mut slave = unsafe { libc::ioctl(m, libc::TIOCGPTPEER, flags) };
    if slave < 0 {
        let mut n: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes the pty number into n.
        check(unsafe { libc::ioctl(m, libc::TIOCGPTN, &mut n) }, || {
            "get the pty number".into()
        })?;
        let name = cstr(format!("/dev/pts/{n}").as_bytes());
        // SAFETY: a NUL-terminated path and integer flags.
        slave = unsafe { libc::open(name.as_ptr(), flags) };
        check(slave, || format!("open /dev/pts/{n}"))?;
    }
    // SAFETY: the descriptor was just opened and is ours alone.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors (dup2 clears close-on-exec).
        check(unsafe { libc::dup2(slave.as_raw_fd(), fd) }, || {
            format!("make the terminal fd {fd}")
        })?;
    }
    drop(slave);
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }, || {
        "make the terminal the controlling terminal".into()
    })?;
    let iov = [std::io::IoSlice::new(b"m")];
    let fds = [m];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    nix::sys::socket::sendmsg::<()>(sock, &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)
        .map_err(|e| format!("send the terminal to the spawner: {}", errno_str(e)))?;
    drop(master);
    // SAFETY: the socket is not used again in this process.
    unsafe { libc::close(sock) };
    Ok(())
}

/// `userns`: as root, the task's side of the handshake for its user namespace (rootless
/// tasks have theirs from the supervisor).
fn task(
    spec: &WireSpec,
    status: Status,
    _exec_w: OwnedFd,
    console: Option<RawFd>,
    filter: &[seccompiler::sock_filter],
    own_limits: &[(libc::__rlimit_resource_t, libc::rlimit)],
    userns: Option<TaskIds>,
) -> ! {
    // Dumpable again (pid 1 is not, and a fork inherits that): the task's own /proc
    // files belong to it, which a rootless task needs to write its uid_map.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    if let Err(e) = prepare_task(spec, filter, own_limits, userns) {
        status.fail(&e);
    }
    if let (Some(sock), Some(size)) = (console, spec.console)
        && let Err(e) = open_console(sock, size)
    {
        status.fail(&e);
    }
    let cwd = path(&spec.cwd);
    if let Err(e) = std::env::set_current_dir(&cwd) {
        status.send(&format!("cwd {}\t{e}", cwd.display()));
        exit(EXIT_NOT_FOUND);
    }
    // Nothing but 0, 1 and 2 reaches the task.
    // SAFETY: close_range with integer arguments only marks descriptors close-on-exec.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a)).collect();
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push(b'=');
            kv.extend_from_slice(v);
            cstr(&kv)
        })
        .collect();
    let Some(cmd) = spec.argv.first() else {
        status.fail("empty command line");
    };
    let candidates: Vec<CString> = if cmd.contains(&b'/') {
        vec![cstr(cmd)]
    } else {
        let search = spec
            .env
            .iter()
            .find(|(k, _)| k == b"PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| b"/usr/local/bin:/usr/bin:/bin".to_vec());
        // The hint first: it is one of the candidates below, so trying it twice
        // changes no outcome, only skips the misses before it.
        spec.exe
            .iter()
            .map(|e| cstr(e))
            .chain(search.split(|&c| c == b':').map(|dir| {
                let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
                let mut full = dir.to_vec();
                full.push(b'/');
                full.extend_from_slice(cmd);
                cstr(&full)
            }))
            .collect()
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    reset_signals();
    let mut denied = false;
    let mut last = libc::ENOENT;
    for c in &candidates {
        // SAFETY: NUL-terminated arrays of pointers to live CStrings.
        unsafe { libc::execve(c.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
        let err = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOENT);
        match err {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => denied = true,
            libc::ENOEXEC => {
                // No #! line: run it with /bin/sh, as shells do.
                let sh = cstr(b"/bin/sh");
                let mut sh_argv: Vec<*const libc::c_char> = vec![sh.as_ptr(), c.as_ptr()];
                sh_argv.extend_from_slice(&argv_ptrs[1..]);
                // SAFETY: NUL-terminated arrays of pointers to live CStrings.
                unsafe { libc::execve(sh.as_ptr(), sh_argv.as_ptr(), env_ptrs.as_ptr()) };
                last = libc::ENOEXEC;
                break;
            }
            other => {
                last = other;
                break;
            }
        }
    }
    let name = OsString::from_vec(cmd.clone());
    let name = name.to_string_lossy();
    let (code, msg) = if last != libc::ENOENT {
        (
            EXIT_CANNOT_EXECUTE,
            format!(
                "herd: {name}: {}\n",
                std::io::Error::from_raw_os_error(last)
            ),
        )
    } else if denied {
        (
            EXIT_CANNOT_EXECUTE,
            format!("herd: {name}: Permission denied\n"),
        )
    } else if cmd.contains(&b'/') {
        (
            EXIT_NOT_FOUND,
            format!("herd: {name}: No such file or directory\n"),
        )
    } else {
        (EXIT_NOT_FOUND, format!("herd: {name}: command not found\n"))
    };
    // SAFETY: write to fd 2 from a valid buffer.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    exit(code)
}
