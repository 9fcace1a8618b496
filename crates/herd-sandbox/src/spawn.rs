//! The spawner's side: start the init helper, follow its status pipe, signal, wait.
//!
//! The status pipe carries one line per event from the init to the spawner:
//!
//! | line | from | meaning |
//! |---|---|---|
//! | `cgroup DIR` | supervisor | created this cgroup directory |
//! | `pid1 PID` | supervisor | the namespace's pid 1 has this (helper) pid |
//! | `started` | pid 1 | the task exec'd (or its exec failed: exit 127/126 follows) |
//! | `error MSG` | any | setup failed; nothing of the task ran |
//! | `cwd PATH\tMSG` | task | the working directory could not be entered |
//! | `exit code N` / `exit signal N` | pid 1 / supervisor | how the task ended |
//! | `ended` | pid 1 / supervisor | nothing of the task's tree runs any more (pid 1 says so once it reaped the rest, before it exits; the supervisor once pid 1 is reaped) |
//! | `warn MSG` | supervisor | cleanup trouble after the task ended |
//!
//! With [`SandboxSpec::console`] a fourth descriptor is passed (`argv[5]`): one end of a
//! Unix socketpair over which the task sends its terminal's master with `SCM_RIGHTS`
//! before it execs, so the master is queued by the time `started` arrives.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use nix::sys::socket;

use crate::cgroup;
use crate::spec::{SandboxSpec, StdioFd, WireSpec};
use crate::{INIT_ARG, SandboxError};

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskExit {
    /// It exited with this code (127: command not found, 126: not executable).
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl TaskExit {
    /// The status as a shell reports it: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            TaskExit::Exited(c) => c,
            TaskExit::Signaled(s) => 128 + s,
        }
    }
}

/// Process handles that stay valid (pidfds) however long they are kept.
#[derive(Debug)]
struct Pids {
    init: OwnedFd,
    pid1: Option<OwnedFd>,
    /// The task's cgroup directories (for the freezer).
    cgroups: Vec<PathBuf>,
}

/// A cloneable, thread-safe handle to signal or kill a running sandbox from another
/// thread while one thread blocks in [`Sandbox::wait`]. Signals are sent through pidfds,
/// so a handle kept after the sandbox ended can never hit a recycled pid.
#[derive(Debug, Clone)]
pub struct SandboxHandle {
    pids: Arc<Pids>,
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_signal(fd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, a null siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        // The process is already gone: nothing left to signal.
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

impl SandboxHandle {
    /// Sends signal `sig` to the task (the process started from `argv`). It travels
    /// through the supervisor and the namespace's pid 1, which forward every signal
    /// they can catch. SIGKILL kills the whole tree ([`SandboxHandle::kill_tree`]);
    /// SIGSTOP cannot be forwarded and would stop only the supervisor, so it is refused
    /// (use SIGTSTP). Signalling a sandbox that has ended is not an error.
    pub fn signal(&self, sig: i32) -> Result<(), SandboxError> {
        if sig == libc::SIGKILL {
            self.kill_tree();
            return Ok(());
        }
        if sig == libc::SIGSTOP {
            return Err(SandboxError::io(
                "signal",
                "sandbox (SIGSTOP)",
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "SIGSTOP cannot be forwarded; send SIGTSTP",
                ),
            ));
        }
        pidfd_signal(&self.pids.init, sig)
            .map_err(|e| SandboxError::io("signal", format!("sandbox ({sig})"), e))
    }

    /// Suspends every process of the task tree at once through the cgroup freezer (v2
    /// `cgroup.freeze`, or the v1 `freezer` hierarchy), for example while the helper's
    /// owner needs the machine. Needs a [`crate::CgroupSpec`]; signals sent meanwhile are
    /// delivered after [`SandboxHandle::thaw`].
    pub fn freeze(&self) -> Result<(), SandboxError> {
        self.set_frozen(true)
    }

    /// Resumes a task tree suspended by [`SandboxHandle::freeze`].
    pub fn thaw(&self) -> Result<(), SandboxError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), SandboxError> {
        match cgroup::freeze(&self.pids.cgroups, frozen) {
            Ok(true) => Ok(()),
            Ok(false) => Err(SandboxError::Cgroup(
                "the task has no cgroup with a freezer (give it a CgroupSpec)".into(),
            )),
            Err(e) => Err(SandboxError::Cgroup(e)),
        }
    }

    /// Kills the whole task tree at once: SIGKILL to the namespace's pid 1, which makes
    /// the kernel kill every process in the namespace. The supervisor then removes the
    /// cgroup and exits; [`Sandbox::wait`] reports `Signaled(9)`.
    pub fn kill_tree(&self) {
        match self.pids.pid1.as_ref() {
            Some(fd) => {
                let _ = pidfd_signal(fd, libc::SIGKILL);
            }
            None => {
                // Before pid 1 exists: the supervisor dies, and pid 1 (if it was just
                // forked) follows through its parent-death signal.
                let _ = pidfd_signal(&self.pids.init, libc::SIGKILL);
            }
        }
        // A v1-frozen process only dies once thawed.
        let _ = cgroup::freeze(&self.pids.cgroups, false);
    }
}

/// A running sandbox: one task tree on this host.
#[derive(Debug)]
pub struct Sandbox {
    child: Child,
    handle: SandboxHandle,
    status: BufReader<File>,
    cgroups: Vec<PathBuf>,
    pid1: i32,
    waited: bool,
    /// The terminal's master with [`SandboxSpec::console`], until taken.
    console: Option<OwnedFd>,
    /// Held open while the sandbox is ours; see `spawn`.
    _lifeline: OwnedFd,
}

impl Drop for Sandbox {
    /// A sandbox dropped without [`Sandbox::wait`] is killed (the whole tree) and reaped,
    /// so losing track of a task never leaves it running. Dropping blocks until the
    /// supervisor has exited (normally a few milliseconds).
    fn drop(&mut self) {
        if !self.waited {
            self.kill_tree();
            let _ = self.finish();
        }
    }
}

impl Sandbox {
    /// The pid of the sandbox's supervisor process (the spawner's child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid, on this host, of the task namespace's pid 1 (the task's parent).
    pub fn pid1(&self) -> u32 {
        self.pid1 as u32
    }

    /// The cgroup directories made for the task (empty without [`crate::CgroupSpec`]).
    pub fn cgroups(&self) -> &[PathBuf] {
        &self.cgroups
    }

    /// Takes the master side of the task's terminal (with [`SandboxSpec::console`]; the
    /// first call after [`spawn`] returned gets it, later calls and sandboxes without a
    /// console get `None`). Reading it gives what the task wrote to its terminal,
    /// writing it types into the terminal (`^C` included). Once every process holding
    /// the slave has exited, reads fail with `EIO`: that is the end of the output.
    pub fn console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// A handle to signal or kill the sandbox from other threads.
    pub fn handle(&self) -> SandboxHandle {
        self.handle.clone()
    }

    /// Sends signal `sig` to the task; see [`SandboxHandle::signal`].
    pub fn signal(&self, sig: i32) -> Result<(), SandboxError> {
        self.handle.signal(sig)
    }

    /// Kills the whole task tree; see [`SandboxHandle::kill_tree`].
    pub fn kill_tree(&self) {
        self.handle.kill_tree()
    }

    /// Waits until the task tree has exited and its cgroup is gone, and returns how the
    /// task (the process started from `argv`) ended. When this returns, no process of
    /// the tree is left.
    pub fn wait(mut self) -> Result<TaskExit, SandboxError> {
        self.waited = true;
        self.finish()
    }

    /// Like [`Sandbox::wait`], but returns as soon as the task's whole tree has ended
    /// (nothing but the namespace's pid 1 is left, and it is exiting), leaving the
    /// teardown of its namespaces, the supervisor's removal of the task's cgroups and
    /// its reaping to the kernel and a background thread.
    pub fn wait_ended(mut self) -> Result<TaskExit, SandboxError> {
        self.waited = true;
        let (mut exit, mut failed) = (None, None);
        while let Some(line) = next_line(&mut self.status) {
            if line == "ended" {
                break;
            }
            self.note(&line, &mut exit, &mut failed);
        }
        if let Some(e) = failed {
            let _ = self.finish();
            return Err(e);
        }
        match exit {
            Some(exit) => {
                // `finish` reads what is left of the status pipe, reaps the supervisor
                // and removes any cgroup it left.
                std::thread::spawn(move || {
                    let _ = self.finish();
                });
                Ok(exit)
            }
            None => self.finish(),
        }
    }

    /// Takes in a status line of a running or ending sandbox: how the task ended, a
    /// failure to start it (when it was started without waiting, [`Starting::go`]), or
    /// a warning to log.
    fn note(&self, line: &str, exit: &mut Option<TaskExit>, failed: &mut Option<SandboxError>) {
        note(self.child.id(), line, exit, failed)
    }

    fn finish(&mut self) -> Result<TaskExit, SandboxError> {
        let status = self.child.wait().map_err(|e| {
            SandboxError::io("wait for", format!("sandbox pid {}", self.child.id()), e)
        })?;
        let (mut exit, mut failed) = (None, None);
        while let Some(line) = next_line(&mut self.status) {
            self.note(&line, &mut exit, &mut failed);
        }
        // If the supervisor itself was killed, its cgroups are left: remove them here.
        if let Some(e) = remove_left(&self.cgroups) {
            tracing::warn!(sandbox = self.child.id(), "{e}");
        }
        if let Some(e) = failed {
            return Err(e);
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(
            exit.unwrap_or_else(|| match (status.code(), status.signal()) {
                (Some(c), _) => TaskExit::Exited(c),
                (None, Some(s)) => TaskExit::Signaled(s),
                (None, None) => TaskExit::Exited(crate::EXIT_SETUP_FAILED),
            }),
        )
    }
}

/// [`Sandbox::note`] for the sandbox whose supervisor has pid `sandbox` (named in the
/// warnings logged). An exit line is only taken with a status a process can have: a
/// code 0 to 255, a signal 1 to `SIGRTMAX`; any other leaves no status (the
/// supervisor's own exit status is used instead).
pub(crate) fn note(
    sandbox: u32,
    line: &str,
    exit: &mut Option<TaskExit>,
    failed: &mut Option<SandboxError>,
) {
    let number = |rest: &str, range: std::ops::RangeInclusive<i32>| {
        rest.parse().ok().filter(|n| range.contains(n))
    };
    if let Some(rest) = line.strip_prefix("exit code ") {
        *exit = number(rest, 0..=255).map(TaskExit::Exited);
    } else if let Some(rest) = line.strip_prefix("exit signal ") {
        *exit = number(rest, 1..=libc::SIGRTMAX()).map(TaskExit::Signaled);
    } else if let Some(rest) = line.strip_prefix("warn ") {
        tracing::warn!(sandbox, "{rest}");
    } else if let Some(e) = setup_failure(line) {
        failed.get_or_insert(e);
    }
}

/// The failure a status line reports, if it reports one: `error MSG` (setup failed)
/// or `cwd PATH\tMSG` (the task's working directory could not be entered). The path
/// is the task's, and may hold tabs; the message, an `io::Error`'s text, holds none:
/// the line is cut at its last tab.
pub(crate) fn setup_failure(line: &str) -> Option<SandboxError> {
    if let Some(msg) = line.strip_prefix("error ") {
        return Some(SandboxError::Setup(msg.to_owned()));
    }
    let rest = line.strip_prefix("cwd ")?;
    let (p, msg) = rest.rsplit_once('\t').unwrap_or((rest, "cannot enter"));
    Some(SandboxError::Cwd {
        path: PathBuf::from(p),
        message: msg.to_owned(),
    })
}

/// The next status line without its newline; `None` at EOF (all writers gone) or on
/// an error.
pub(crate) fn next_line(r: &mut impl BufRead) -> Option<String> {
    let mut line = Vec::new();
    match r.read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            while line.last() == Some(&b'\n') {
                line.pop();
            }
            Some(String::from_utf8_lossy(&line).into_owned())
        }
    }
}

fn stdio(s: &StdioFd) -> Result<Stdio, SandboxError> {
    Ok(match s {
        StdioFd::Inherit => Stdio::inherit(),
        StdioFd::Null => Stdio::null(),
        StdioFd::Fd(fd) => Stdio::from(
            fd.try_clone()
                .map_err(|e| SandboxError::io("duplicate", format!("fd {}", fd.as_raw_fd()), e))?,
        ),
    })
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SandboxError::io("create", "pipe", io::Error::from(e)))
}

/// Starts a sandbox running `spec` by executing `helper_exe __sandbox-init` (the herd
/// binary itself, `/proc/self/exe`, in production), and returns once the task has been
/// exec'd.
///
/// Safe to call from a multi-threaded program: the only work between fork and exec is
/// clearing the close-on-exec flag of the three pipes (and, with
/// [`SandboxSpec::console`], the console socket) passed to the helper. Blocks while
/// the sandbox is set up (mounting the overlay may wait on the FUSE lower layer).
///
/// Errors: [`SandboxError::Setup`] or [`SandboxError::Cwd`] when the init reports a
/// failure (nothing of the task ran, nothing is left behind), [`SandboxError::Io`] when
/// the helper cannot be started, [`SandboxError::InitDied`] when it died silently.
/// A command that does not exist or cannot be executed is *not* an error here: the task
/// exits with 127 or 126 and says so on its stderr, like a shell.
pub fn spawn(helper_exe: &Path, spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
    if spec.argv.is_empty() {
        return Err(SandboxError::Spec("empty command line".into()));
    }
    let data = WireSpec::from_spec(spec).encode()?;
    let (spec_r, spec_w) = cloexec_pipe()?;
    let (status_r, status_w) = cloexec_pipe()?;
    // The lifeline: the supervisor kills the tree when its write end (ours) closes, that
    // is when the spawner dies without waiting for the sandbox.
    let (life_r, life_w) = cloexec_pipe()?;
    // With a console: the socketpair the task sends its terminal's master over.
    let console = match spec.console {
        Some(_) => Some(stream_pair("console socketpair")?),
        None => None,
    };
    let console_fd = console.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
    let passed = [spec_r.as_raw_fd(), status_w.as_raw_fd(), life_r.as_raw_fd()];
    let mut cmd = Command::new(helper_exe);
    cmd.arg(INIT_ARG)
        .arg(passed[0].to_string())
        .arg(passed[1].to_string())
        .arg(passed[2].to_string())
        .env_clear();
    if let Some(fd) = console_fd {
        cmd.arg(fd.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    } else {
        cmd.stdin(stdio(&spec.stdio.stdin)?)
            .stdout(stdio(&spec.stdio.stdout)?)
            .stderr(stdio(&spec.stdio.stderr)?);
    }
    let passed: Vec<RawFd> = passed.into_iter().chain(console_fd).collect();
    let (child, init) = start_init(&mut cmd, passed, helper_exe)?;
    drop(spec_r);
    drop(status_w);
    drop(life_r);
    let console = console.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    // A write error means the helper died early; its status line or exit says why.
    let _ = File::from(spec_w).write_all(&data);

    let status = BufReader::new(File::from(status_r));
    follow(child, init, status, Vec::new(), life_w, console)
}

/// An init started ahead of its task ([`prepare`]): it has made the task's cgroup and
/// moved itself into it, and waits. Dropping it ends it and removes the cgroup.
#[derive(Debug)]
pub struct Prepared {
    child: Option<Child>,
    init: OwnedFd,
    sock: OwnedFd,
    status: Option<BufReader<File>>,
    cgroups: Vec<PathBuf>,
    lifeline: Option<OwnedFd>,
    /// Its network namespace reaches outward (a stack is attached).
    outward: bool,
}

/// Starts a sandbox init for a task to come, with `cgroup` made (see
/// [`crate::SandboxSpec::cgroup`]) and the init already in it, and its network
/// namespace made as `net` says (a stack attached to it for [`crate::Net::Outward`]):
/// the fork and exec of the init, the making and joining of the cgroup and the
/// network's setup happen now, off the task's critical path. A task with
/// [`crate::Net::Loopback`] may still be started in one made outward (pid 1 gives it
/// a namespace of its own then), not the reverse. Errors as for [`spawn`].
pub fn prepare(
    helper_exe: &Path,
    cgroup: Option<crate::CgroupSpec>,
    net: &crate::Net,
) -> Result<Prepared, SandboxError> {
    let mut template = SandboxSpec::new("/", "/", "/", vec!["prepared".into()]);
    template.cgroup = cgroup;
    template.net = net.clone();
    let data = WireSpec::from_spec(&template).encode()?;
    let (status_r, status_w) = cloexec_pipe()?;
    let (life_r, life_w) = cloexec_pipe()?;
    let (ours, theirs) = stream_pair("task socketpair")?;
    // The init's descriptors are its stdin (the task socket), stdout (status) and
    // stderr (lifeline): no code runs between fork and exec, so the standard library
    // starts it with posix_spawn (vfork) instead of copying the agent's page tables.
    let mut cmd = Command::new(helper_exe);
    cmd.arg(INIT_ARG)
        .arg(crate::PREPARED_ARG)
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::from(status_w))
        .stderr(Stdio::from(life_r));
    let spawned = cmd.spawn();
    drop(cmd); // our copies of the init's ends
    let (child, init) =
        with_pidfd(spawned.map_err(|e| SandboxError::io("start sandbox helper", helper_exe, e))?)?;
    let mut msg = (data.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&data);
    // A write error means the init died early; its status line or exit says why.
    if let Ok(sock) = ours.try_clone() {
        let _ = File::from(sock).write_all(&msg);
    }
    let mut status = BufReader::new(File::from(status_r));
    let mut p = Prepared {
        child: Some(child),
        init,
        sock: ours,
        status: None,
        cgroups: Vec::new(),
        lifeline: Some(life_w),
        outward: matches!(net, crate::Net::Outward(_)),
    };
    loop {
        let Some(line) = next_line(&mut status) else {
            return Err(SandboxError::InitDied("before it was ready".into()));
        };
        if let Some(dir) = line.strip_prefix("cgroup ") {
            p.cgroups.push(PathBuf::from(dir));
        } else if let Some(msg) = line.strip_prefix("error ") {
            return Err(SandboxError::Setup(msg.to_owned()));
        } else if line == "ready" {
            break;
        }
    }
    p.status = Some(status);
    Ok(p)
}

impl Prepared {
    /// The pid of the waiting init (the sandbox's supervisor-to-be).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The cgroup directories made for the task to come.
    pub fn cgroups(&self) -> &[PathBuf] {
        &self.cgroups
    }

    /// Runs `spec` in this prepared sandbox, as [`spawn`] would; `spec.cgroup` is
    /// ignored (the prepared one applies).
    pub fn start(self, spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
        self.start_gated(spec)?.go()
    }

    /// Hands `spec` to this prepared sandbox and returns at once (it does not block):
    /// its pid 1 builds the task's root meanwhile and then waits for [`Starting::go`]
    /// before it starts the task. Dropping the [`Starting`] instead calls the task off.
    pub fn start_gated(mut self, spec: &SandboxSpec) -> Result<Starting, SandboxError> {
        check_task(spec, self.outward)?;
        let mut wire = WireSpec::from_spec(spec);
        wire.cgroup = None;
        let console = send_task(&self.sock, spec, &wire)?;
        let gate = self
            .sock
            .try_clone()
            .map_err(|e| SandboxError::io("duplicate", "task socket", e))?;
        let mut following = self.following()?;
        following.console = console;
        Ok(Starting {
            following,
            gate: Some(gate),
        })
    }

    /// Builds a task's root ahead, before its task comes: the overlay of `lower` (a
    /// kept view) with `upper` and `work`, and its /proc, /tmp and /dev; pid 1 then
    /// waits in it. Blocks until the root is built. [`Parked::start_gated`] hands it a
    /// task with no mount left on the task's way; dropping the [`Parked`] ends it.
    pub fn park(mut self, lower: &Path, upper: &Path, work: &Path) -> Result<Parked, SandboxError> {
        let mut wire = WireSpec::from_spec(&SandboxSpec::new(lower, upper, work, Vec::new()));
        wire.cgroup = None;
        wire.parked = true;
        let data = wire.encode()?;
        let mut msg = (data.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&data);
        let sock = self
            .sock
            .try_clone()
            .map_err(|e| SandboxError::io("duplicate", "task socket", e))?;
        File::from(sock)
            .write_all(&msg)
            .map_err(|e| SandboxError::io("hand a root to", "the prepared sandbox", e))?;
        let gate = self
            .sock
            .try_clone()
            .map_err(|e| SandboxError::io("duplicate", "task socket", e))?;
        let mut following = self.following()?;
        following.until(Until::Parked)?;
        Ok(Parked {
            following,
            gate,
            outward: self.outward,
            lower: lower.to_path_buf(),
            upper: upper.to_path_buf(),
            work: work.to_path_buf(),
        })
    }

    /// Takes the running init over, to follow its status lines.
    fn following(&mut self) -> Result<Following, SandboxError> {
        let (Some(child), Some(status), Some(life)) =
            (self.child.take(), self.status.take(), self.lifeline.take())
        else {
            return Err(SandboxError::Setup("the prepared sandbox was used".into()));
        };
        let init = self
            .init
            .try_clone()
            .map_err(|e| SandboxError::io("duplicate", "pidfd", e))?;
        Ok(Following {
            child: Some(child),
            init: Some(init),
            status: Some(status),
            cgroups: std::mem::take(&mut self.cgroups),
            life_w: Some(life),
            console: None,
            pid1: 0,
            pid1_fd: None,
            exiting: false,
        })
    }
}

/// Whether `spec` may run in a sandbox prepared ahead whose network namespace reaches
/// outward (`outward`) or not.
fn check_task(spec: &SandboxSpec, outward: bool) -> Result<(), SandboxError> {
    if spec.argv.is_empty() {
        return Err(SandboxError::Spec("empty command line".into()));
    }
    if matches!(spec.net, crate::Net::Outward(_)) && !outward {
        return Err(SandboxError::Spec(
            "an outward network was asked of a sandbox prepared with loopback only".into(),
        ));
    }
    Ok(())
}

/// Sends a task (`wire`, made from `spec`) with its descriptors on a prepared init's
/// socket: the three standard streams, or one end of a new console socket when `spec`
/// asks for a terminal. Returns our end of that socket.
fn send_task(
    sock: &OwnedFd,
    spec: &SandboxSpec,
    wire: &WireSpec,
) -> Result<Option<OwnedFd>, SandboxError> {
    let data = wire.encode()?;
    let console = match spec.console {
        Some(_) => Some(stream_pair("console socketpair")?),
        None => None,
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    match &console {
        Some((_, theirs)) => fds.push(
            theirs
                .try_clone()
                .map_err(|e| SandboxError::io("duplicate", "console socket", e))?,
        ),
        None => {
            for (s, n) in [
                (&spec.stdio.stdin, 0),
                (&spec.stdio.stdout, 1),
                (&spec.stdio.stderr, 2),
            ] {
                fds.push(stdio_fd(s, n)?);
            }
        }
    }
    let mut msg = (data.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&data);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [socket::ControlMessage::ScmRights(&raw)];
    let handed = |e: io::Error| SandboxError::io("hand the task to", "the prepared sandbox", e);
    let sent = socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &[io::IoSlice::new(&msg)],
        &cmsg,
        socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| handed(io::Error::from(e)))?;
    if sent < msg.len() {
        File::from(sock.try_clone().map_err(handed)?)
            .write_all(&msg[sent..])
            .map_err(handed)?;
    }
    Ok(console.map(|(ours, _theirs)| ours))
}

/// A task's root built ahead over a kept view, its pid 1 waiting in it for a task
/// ([`Prepared::park`]). Dropping it ends the sandbox (blocking until it is reaped):
/// its mount namespace holds the view, so it goes before the view is unmounted.
#[derive(Debug)]
pub struct Parked {
    following: Following,
    gate: OwnedFd,
    outward: bool,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

impl Parked {
    /// The root's upper layer: where the task's changes are.
    pub fn upper(&self) -> &Path {
        &self.upper
    }

    /// Hands `spec` to pid 1 and returns at once, as [`Prepared::start_gated`] does:
    /// the task starts at [`Starting::go`]. The root's lower, upper and work layers
    /// stay those it was parked with (`spec`'s are ignored), and so does its cgroup.
    pub fn start_gated(mut self, spec: &SandboxSpec) -> Result<Starting, SandboxError> {
        check_task(spec, self.outward)?;
        let mut wire = WireSpec::from_spec(spec);
        wire.cgroup = None;
        wire.lower = self.lower.as_os_str().as_encoded_bytes().to_vec();
        wire.upper = self.upper.as_os_str().as_encoded_bytes().to_vec();
        wire.work = self.work.as_os_str().as_encoded_bytes().to_vec();
        self.following.console = send_task(&self.gate, spec, &wire)?;
        let following = std::mem::replace(&mut self.following, Following::taken());
        let gate = self
            .gate
            .try_clone()
            .map_err(|e| SandboxError::io("duplicate", "task socket", e))?;
        Ok(Starting {
            following,
            gate: Some(gate),
        })
    }
}

/// A task handed to a prepared sandbox whose pid 1 waits at the gate
/// ([`Prepared::start_gated`]). Dropping it calls the task off: the sandbox is killed
/// and reaped, and nothing of the task runs.
#[derive(Debug)]
pub struct Starting {
    following: Following,
    gate: Option<OwnedFd>,
}

impl Starting {
    /// Lets pid 1 start the task, and returns at once (with a terminal, once the task
    /// runs, as [`spawn`] would). A setup failure after this point (the task's cwd
    /// cannot be entered, hiding a path fails) is returned by [`Sandbox::wait`] or
    /// [`Sandbox::wait_ended`] instead.
    pub fn go(mut self) -> Result<Sandbox, SandboxError> {
        self.open_gate();
        self.following.until(Until::Pid1)?;
        // A task with a terminal sends its master before it execs: wait for that.
        // Otherwise the task's start is not waited for: a failure to start (its cwd
        // missing, say) comes out of [`Sandbox::wait`] instead.
        if self.following.console.is_some() {
            self.following.until(Until::Started)?;
        }
        let following = std::mem::replace(&mut self.following, Following::taken());
        following.sandbox()
    }
}

impl Starting {
    /// Lets pid 1 start the task now, without waiting for anything (one byte into an
    /// empty socket), so that a caller on an async thread can let it go at once and
    /// leave [`Starting::go`], which may wait, to a blocking thread.
    pub fn open_gate(&mut self) {
        if let Some(gate) = self.gate.take() {
            // A write error means pid 1 is gone; its status line says why.
            let _ = File::from(gate).write_all(b"g");
        }
    }
}

impl Drop for Starting {
    /// Calls the task off: pid 1 sees the gate close and fails, and the init exits by
    /// itself and is reaped.
    fn drop(&mut self) {
        if self.gate.take().is_some() {
            self.following.exiting = true;
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = pidfd_signal(&self.init, libc::SIGKILL);
            let _ = child.wait();
            remove_left(&self.cgroups);
        }
    }
}

/// The descriptor a prepared init's task gets as its stream number `n`.
fn stdio_fd(s: &StdioFd, n: RawFd) -> Result<OwnedFd, SandboxError> {
    let dup = |fd: RawFd| {
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor we own, or fails.
        let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if r < 0 {
            return Err(SandboxError::io(
                "duplicate",
                format!("fd {fd}"),
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    };
    match s {
        StdioFd::Inherit => dup(n),
        StdioFd::Null => File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| SandboxError::io("open", "/dev/null", e)),
        StdioFd::Fd(fd) => dup(fd.as_raw_fd()),
    }
}

/// Starts the init with `cmd`, the descriptors in `passed` left open across exec, and
/// opens a pidfd on it.
fn start_init(
    cmd: &mut Command,
    passed: Vec<RawFd>,
    helper_exe: &Path,
) -> Result<(Child, OwnedFd), SandboxError> {
    // SAFETY: the closure only calls fcntl, which is async-signal-safe, on descriptors
    // that are open in the child (fork copied them).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            for &fd in &passed {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| SandboxError::io("start sandbox helper", helper_exe, e))?;
    with_pidfd(child)
}

/// Opens a pidfd on a just started init (killed and reaped if that fails).
fn with_pidfd(mut child: Child) -> Result<(Child, OwnedFd), SandboxError> {
    match pidfd_open(child.id() as i32) {
        Ok(fd) => Ok((child, fd)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(SandboxError::io(
                "open pidfd of",
                format!("pid {}", child.id()),
                e,
            ))
        }
    }
}

/// A connected pair of Unix stream sockets, close-on-exec.
fn stream_pair(what: &str) -> Result<(OwnedFd, OwnedFd), SandboxError> {
    socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::Stream,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SandboxError::io("create", what, io::Error::from(e)))
}

/// Follows a started init's status lines until the task runs (or setup fails), and
/// makes the [`Sandbox`]. `cgroups`: those already reported (a prepared init's).
fn follow(
    child: Child,
    init: OwnedFd,
    status: BufReader<File>,
    cgroups: Vec<PathBuf>,
    life_w: OwnedFd,
    console: Option<OwnedFd>,
) -> Result<Sandbox, SandboxError> {
    let mut f = Following {
        child: Some(child),
        init: Some(init),
        status: Some(status),
        cgroups,
        life_w: Some(life_w),
        console,
        pid1: 0,
        pid1_fd: None,
        exiting: false,
    };
    f.until(Until::Started)?;
    f.sandbox()
}

/// A started init whose status lines are being read, before it becomes a [`Sandbox`].
/// Dropped on the way (setup failed, or the task was called off), it kills the init
/// and reaps it, and removes the cgroups it reported.
#[derive(Debug)]
struct Following {
    child: Option<Child>,
    init: Option<OwnedFd>,
    status: Option<BufReader<File>>,
    cgroups: Vec<PathBuf>,
    life_w: Option<OwnedFd>,
    console: Option<OwnedFd>,
    pid1: i32,
    pid1_fd: Option<OwnedFd>,
    /// The init reported a failure and exits by itself, its cgroups removed.
    exiting: bool,
}

/// What [`Following::until`] reads the init's status lines up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// `pid1`: pid 1 exists.
    Pid1,
    /// `parked`: pid 1 built the root and waits in it for its task.
    Parked,
    /// `started`: the task runs.
    Started,
}

impl Following {
    /// One whose init was taken (dropping it does nothing).
    fn taken() -> Following {
        Following {
            child: None,
            init: None,
            status: None,
            cgroups: Vec::new(),
            life_w: None,
            console: None,
            pid1: 0,
            pid1_fd: None,
            exiting: false,
        }
    }

    /// Reads status lines until `want` is reported; a setup failure ends the init and
    /// is returned.
    fn until(&mut self, want: Until) -> Result<(), SandboxError> {
        // A parked root's pid 1 said so before it parked.
        if want == Until::Pid1 && self.pid1 != 0 {
            return Ok(());
        }
        loop {
            let line = self.status.as_mut().and_then(next_line);
            let Some(line) = line else {
                let how = match self.child.as_mut().map(|c| (c.kill(), c.wait()).1) {
                    Some(Ok(s)) => s.to_string(),
                    Some(Err(e)) => e.to_string(),
                    None => "gone".to_owned(),
                };
                return Err(SandboxError::InitDied(how));
            };
            if let Some(dir) = line.strip_prefix("cgroup ") {
                self.cgroups.push(PathBuf::from(dir));
            } else if let Some(pid) = line.strip_prefix("pid1 ") {
                self.pid1 = pid.parse().unwrap_or(0);
                // pid 1 cannot have been reaped yet: it waits for the supervisor's
                // go-ahead, which comes after this line, and only the supervisor can
                // reap it.
                self.pid1_fd = pidfd_open(self.pid1).ok();
                if want == Until::Pid1 {
                    return Ok(());
                }
            } else if (line == "parked" && want == Until::Parked) || line == "started" {
                return Ok(());
            } else if let Some(rest) = line.strip_prefix("warn ") {
                tracing::warn!(pid1 = self.pid1, "{rest}");
            } else if let Some(e) = setup_failure(&line) {
                self.exiting = true;
                return Err(e);
            }
        }
    }

    /// The running sandbox (after `until(Until::Started)`).
    fn sandbox(mut self) -> Result<Sandbox, SandboxError> {
        let (Some(child), Some(init), Some(status), Some(life_w)) = (
            self.child.take(),
            self.init.take(),
            self.status.take(),
            self.life_w.take(),
        ) else {
            return Err(SandboxError::Setup("the sandbox was taken".into()));
        };
        // The task sent its master before exec'ing, so it is queued by now.
        let master = self.console.as_ref().map(receive_fd);
        let cgroups = std::mem::take(&mut self.cgroups);
        let mut sandbox = Sandbox {
            child,
            handle: SandboxHandle {
                pids: Arc::new(Pids {
                    init,
                    pid1: self.pid1_fd.take(),
                    cgroups: cgroups.clone(),
                }),
            },
            status,
            cgroups,
            pid1: self.pid1,
            waited: false,
            console: None,
            _lifeline: life_w,
        };
        match master {
            None => {}
            Some(Ok(fd)) => sandbox.console = Some(fd),
            // Dropping the sandbox kills and reaps the tree.
            Some(Err(e)) => return Err(SandboxError::Setup(format!("receive the console: {e}"))),
        }
        Ok(sandbox)
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !self.exiting
                && let Some(init) = &self.init
            {
                let _ = pidfd_signal(init, libc::SIGKILL);
            }
            let _ = child.wait();
            remove_left(&self.cgroups);
        }
    }
}

/// Removes those of the cgroup directories `dirs` that are still there (their init
/// died, or left them to the spawner); a warning when one cannot be removed.
fn remove_left(dirs: &[PathBuf]) -> Option<String> {
    let left: Vec<cgroup::Group> = dirs
        .iter()
        .filter(|d| d.exists())
        .map(|d| cgroup::Group { dir: d.clone() })
        .collect();
    cgroup::remove(&left)
}

/// Receives one descriptor sent with `SCM_RIGHTS` on `sock`, without blocking.
fn receive_fd(sock: &OwnedFd) -> Result<OwnedFd, String> {
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(errno_string)?;
    let mut got = None;
    for cmsg in msg.cmsgs().map_err(errno_string)? {
        if let socket::ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor for us.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                got.get_or_insert(fd);
            }
        }
    }
    got.ok_or_else(|| "the task sent no descriptor".to_owned())
}

fn errno_string(e: nix::errno::Errno) -> String {
    io::Error::from(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `sandbox_wire` fuzz target: an exit line was taken with any `i32`,
    /// so a signal 0 or one that made `TaskExit::code` overflow (`128 + i32::MAX`),
    /// and codes below 0 or above 255.
    #[test]
    fn exit_lines_out_of_range_give_no_status() {
        let noted = |line: &str| {
            let (mut exit, mut failed) = (Some(TaskExit::Exited(3)), None);
            note(0, line, &mut exit, &mut failed);
            assert!(failed.is_none());
            exit
        };
        for line in [
            "exit signal 0",
            "exit signal -9",
            "exit signal 2147483647",
            "exit signal 65",
            "exit code -1",
            "exit code 256",
            "exit code 2147483647",
            "exit code x",
        ] {
            assert_eq!(noted(line), None, "{line}");
        }
        assert_eq!(noted("exit code 0"), Some(TaskExit::Exited(0)));
        assert_eq!(noted("exit code 255"), Some(TaskExit::Exited(255)));
        assert_eq!(noted("exit signal 9"), Some(TaskExit::Signaled(9)));
        assert_eq!(noted("exit signal 64").map(TaskExit::code), Some(192));
    }

    /// Found by the `sandbox_wire` fuzz target: a working directory with a tab in it
    /// was cut at that tab, the rest of it taken for the message.
    #[test]
    fn a_cwd_line_keeps_a_path_with_tabs_whole() {
        let msg = io::Error::from_raw_os_error(libc::ENOENT).to_string();
        let got = setup_failure(&format!("cwd /home/u/a\tb\t\tc\t{msg}"));
        let Some(SandboxError::Cwd { path, message }) = got else {
            panic!("{got:?}");
        };
        assert_eq!(path, Path::new("/home/u/a\tb\t\tc"));
        assert_eq!(message, msg);
        let Some(SandboxError::Cwd { path, message }) = setup_failure("cwd /x") else {
            panic!("no failure from a cwd line");
        };
        assert_eq!(
            (path.as_path(), &message[..]),
            (Path::new("/x"), "cannot enter")
        );
    }
}
