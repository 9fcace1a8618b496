//! The sandbox that runs one herd task on a helper.
//!
//! `herd run -- CMD` runs CMD on a helper host while CMD sees the *workstation's*
//! filesystem. This crate builds the box CMD runs in: a root made of the read-only view
//! of the workstation (the *lower* layer, a FUSE mount in production) under a private,
//! writable overlayfs *upper* layer on the helper's disk, in its own namespaces, as the
//! submitter's uid, at idle priority, inside a cgroup with the helper's CPU and memory
//! grant. What the task wrote is left in the upper directory for the agent to commit.
//!
//! # How it runs
//!
//! The agent is a threaded async daemon, and `unshare`/`fork` do not mix with threads.
//! So [`spawn`] only starts a fresh process: `helper_exe __sandbox-init SPEC_FD
//! STATUS_FD LIFELINE_FD [CONSOLE_FD]` (the herd binary re-executing itself,
//! `/proc/self/exe`), hands it the serialized [`SandboxSpec`] on one pipe, reads
//! one-line reports from it on another, and holds the write end of a third, the
//! *lifeline*: if the spawner dies without waiting for the sandbox (an agent crash), the
//! lifeline closes and the supervisor kills the task tree, so no task outlives its agent.
//! `CONSOLE_FD`, with [`SandboxSpec::console`], is the socket the task's terminal master
//! comes back on.
//! The herd binary's `main()` calls [`init_main`] first thing when `argv[1]` is
//! [`INIT_ARG`]. Then, single-threaded:
//!
//! 1. **Supervisor** (the spawner's child, [`Sandbox::pid`]): creates the cgroup
//!    `<parent>/<name>` with `cpu.max`/`memory.max` (v2) or `cpu.cfs_quota_us` /
//!    `memory.limit_in_bytes` (v1, nested under the agent's own group of each
//!    hierarchy, plus the v1 `freezer` hierarchy or the v2 mount for
//!    [`SandboxHandle::freeze`]); when not root, enters a new user namespace (see *Rootless* below);
//!    makes the task's network namespace and attaches its stack (see *Network* below);
//!    unshares the pid namespace and forks **pid 1**, which it moves into the cgroup
//!    before letting it continue. It forwards signals to pid 1, waits for it, ends the
//!    network stack, removes the cgroup and exits with the task's status.
//!
//!    **Prepared ahead** ([`prepare`], then [`Prepared::start`]): the init is started
//!    before its task with only the cgroup and the network to make; it moves *itself*
//!    into the cgroup, enters its user namespace (rootless), makes the network
//!    namespace with its stack, and waits on a socket for the spec and the task's
//!    stdin, stdout and stderr (or its console socket), passed with `SCM_RIGHTS`. Pid 1
//!    then inherits the cgroup and the namespaces, and the spawner removes the cgroup
//!    after the supervisor exits. The fork and exec of the init, the making and
//!    joining of the cgroup (a cgroup v1 attach can wait for an RCU grace period) and
//!    the network's setup (pasta takes about 20 ms) are then off the task's critical
//!    path.
//!    [`Prepared::start_gated`] hands the task over but lets pid 1 build the root and
//!    then wait at a *gate* until [`Starting::go`]: the helper checks that its kept
//!    view is still current meanwhile, and only then lets the task start.
//!    [`Prepared::park`] goes further: pid 1 builds the root before any task comes and
//!    waits in it; [`Parked::start_gated`] then hands it the task, with its
//!    descriptors, on the same socket, and the gate opens as before. The socket's
//!    messages are length-prefixed and read exactly, so a gate's byte that follows a
//!    task is never taken for part of it.
//!
//!    [`Sandbox::wait_ended`] returns as soon as pid 1 reports the tree gone (or the
//!    supervisor reports pid 1 reaped), and leaves the namespaces' teardown and the
//!    removal of the cgroup to the kernel and a background thread.
//! 2. **Pid 1** of the new pid namespace: unshares mount, IPC and UTS namespaces, makes
//!    every mount private, mounts `overlay(lower, upper, work)` on top of the work
//!    directory and builds the root there (below), `pivot_root`s into it and detaches the
//!    helper's root, hides the [`SandboxSpec::hidden`] paths, sets the hostname, and
//!    forks the **task**. It forwards signals to the task and reaps every orphan. As
//!    soon as the task exits it kills every other process left in the namespace, reaps
//!    them, says `ended` and exits, so a task's background tree never outlives it.
//! 3. **Task**: a new session (`setsid`; with [`SandboxSpec::tty`] its stdin becomes the
//!    controlling terminal), `SCHED_IDLE` and nice 19 when [`SandboxSpec::idle`], the
//!    resource limits, as root a user namespace of its own (below), the submitter's
//!    groups, gid and uid, the umask,
//!    `PR_SET_NO_NEW_PRIVS`, with [`SandboxSpec::console`] a terminal of its own (see
//!    *Terminals* below), `chdir(cwd)`, every descriptor but 0, 1 and 2 closed on exec,
//!    default signal dispositions, and `execve` with a `PATH` search like a shell's
//!    ([`SandboxSpec::exe`], where the search is expected to end, is tried first).
//!
//! # What a task can see
//!
//! * `/`: the lower layer (only that one filesystem: mounts below it on the helper are
//!   not visible) with the upper layer on top. All writes land in `upper`; deletions and
//!   renames show there as overlayfs whiteouts and opaque directories. The root is
//!   mounted `nosuid,nodev`.
//! * `/proc`: a fresh procfs of the task's own pid namespace: only the task's processes
//!   (pid 1 is the sandbox init).
//! * `/tmp`: a private, empty tmpfs per task, **not** committed back and gone when the
//!   task ends (sized by the kernel default, half of RAM, and charged to the cgroup).
//! * `/dev`: a read-only tmpfs holding exactly `null`, `zero`, `full`, `random`,
//!   `urandom`, `tty` (nodes of the helper's devices; bind mounts of them when
//!   rootless), `pts` (a new devpts
//!   instance), `ptmx` (→ `pts/ptmx`), `shm` (a private tmpfs) and the symlinks `fd`,
//!   `stdin`, `stdout`, `stderr` into `/proc/self/fd` ([`DEV_ENTRIES`]).
//! * A network namespace of its own ([`SandboxSpec::net`]): loopback only, or outward
//!   through a user-mode stack (see *Network*); its own IPC namespace and hostname
//!   ([`SandboxSpec::hostname`]).
//!
//! # What a task cannot see or do
//!
//! * Any file of the helper: the helper's root is detached after `pivot_root`. There is
//!   no `/sys` (the view's `/sys` is the lower layer's empty directory).
//! * Hidden paths (`~/.ssh`, `~/.gnupg`, herd's keys, ...): each is covered by an empty
//!   read-only directory or file, resolved inside the view (a symlink to a secret hides
//!   its target). The agent's FUSE view should not export them either; this is the second
//!   wall.
//! * Gain privileges: `no_new_privs` makes setuid/setgid bits and file capabilities
//!   inert, and the root is `nosuid` anyway. Raise its limits or priority above what it
//!   was given. Escape its cgroup's CPU quota and memory limit.
//! * Outlive its pid 1: when the task's first process exits, everything it started dies.
//!
//! * Be anybody on the helper. As root, the task enters a user namespace of its own
//!   (pid 1 writes its maps) mapping its ids `0..TASK_ID_COUNT` to [`TASK_ID_BASE`] and
//!   up: the submitter's uid 0 is uid 2^31 on the helper, and files of the helper's own
//!   users show as the overflow id. The lower layer is expected to present its owners
//!   shifted the same way (herd's FUSE view does). A helper confined to a chroot
//!   directory, a mount point or not, still gets this: pid 1 leaves the chroot inside
//!   its own mount namespace before it builds the task's root and pivots into it (the
//!   kernel refuses user namespaces to a chrooted process). Rootless, the namespaces described under *Rootless* do this.
//! * Hold any capability, whoever submitted it (root included: a task of uid 0 is still
//!   uid 0, but cannot mount, unmount the covers of hidden paths, write `/proc/sys`,
//!   renice below its nice or leave `SCHED_IDLE`), or make the system calls of the
//!   seccomp filter (mounts, modules, kexec, bpf, keyrings, new user namespaces...);
//!   see the `harden` module (`src/harden.rs`) for the lists and why.
//! * Write the kernel's knobs in `/proc` ([`READ_ONLY_PROC`] are read-only) or read its
//!   internals ([`MASKED_PROC`] are covered).
//! * Set limits outside [`ALLOWED_RLIMITS`] or above the helper's own; real-time and
//!   (when idle) nice limits are 0.
//! * Hold more than [`SandboxSpec::pids_max`] processes: a task that reaches it is
//!   ended, with a message on its stderr.
//! * Reach pid 1's status pipe or gate through `/proc/1/fd`: pid 1 is not dumpable.
//! * Reach the helper's loopback (its listeners on 127.0.0.1 and `::1`) or its abstract
//!   Unix sockets (X11's, a desktop's D-Bus): they belong to the helper's network
//!   namespace. Change its own network namespace (addresses, routes, interfaces,
//!   firewall, its sysctls): it holds no capability in the user namespace that owns it.
//!
//! # Network
//!
//! The init makes the task's network namespace, in the user namespace the sandbox
//! already uses (none of its own as root; the supervisor's when rootless), never the
//! task. With [`Net::Loopback`] it holds only `lo`. With [`Net::Outward`] a user-mode
//! stack attaches to it, started by the init before it enters any namespace (so as
//! the agent's user, in the helper's namespaces) and opening the task's from
//! `/proc/<init>/ns`: [`StackKind::Pasta`] (preferred; the task's connections become
//! the helper's own sockets, with the helper's address) or [`StackKind::Slirp4netns`]
//! (NAT behind 10.0.2.0/24). Neither forwards a port either way nor maps the helper's
//! loopback (pasta: `-t none -u none -T none -U none --no-map-gw -D none`;
//! slirp4netns: `--disable-host-loopback --disable-dns`). The stack dies with the init
//! (`PR_SET_PDEATHSIG`) and is killed and reaped by the supervisor once the task's tree
//! is gone. [`NetStack::find`] finds the installed ones; [`probe`] tries them. The
//! `netns` module (`src/netns.rs`) has the details.
//!
//! What the stack cannot keep from a task: the helper's services on its *other*
//! addresses (a second interface, a bridge such as `docker0`; with slirp4netns also its
//! LAN address) are reached as from the LAN, and the helper's own firewall rules for
//! LAN traffic do not apply to them (the stack's connections are local).
//!
//! Costs: the namespace and pasta take milliseconds to set up (pasta's start alone,
//! 12-17 ms of CPU), which a sandbox prepared ahead pays before its task comes; once
//! configured, the stack runs at idle priority (`SCHED_IDLE`, nice 19), as the
//! helper's tasks do. A task that asks for [`Net::Loopback`]
//! in a sandbox prepared with a stack gets a fresh loopback-only namespace from pid 1
//! (a fraction of a millisecond). pasta holds 20-30 MB of memory (its packet buffers),
//! charged to the task's cgroup when prepared ahead. As root, pasta keeps uid 0 with
//! only `CAP_NET_BIND_SERVICE` and `CAP_SYS_ADMIN` under its own seccomp filter: this
//! pasta opens its namespace after it would have become nobody, who may not join a
//! namespace of the helper's user namespace. A rootless stack needs `/dev/net/tun`
//! open to the agent's user (mode 0666, as distributions set it up); a rootless
//! slirp4netns runs without its own sandbox (a plain user's cannot make one there).
//!
//! # Rootless mode
//!
//! An agent running as a plain user (uid `U`) needs unprivileged user namespaces. The
//! supervisor (a prepared init: before its task comes) enters a user namespace mapping
//! root to `U` (that is what allows mounting the overlay, procfs, tmpfs and devpts,
//! with overlayfs' `userxattr`, and owning the task's network namespace), and the task
//! enters a second, nested one mapping the task's uid and gid to that root, so the task
//! sees itself as the submitter while every file it creates belongs to `U` on the helper.
//! The limits of this mode:
//!
//! * Only one uid and one gid exist inside: files of the lower layer owned by anybody
//!   else show as the overflow id (65534, "nobody"), and the task gets the access those
//!   files grant to "others" only.
//! * Supplementary groups cannot be set (`setgroups` is denied in such namespaces):
//!   [`SandboxSpec::groups`] is ignored.
//! * The lower layer's `/proc`, `/dev` and `/tmp` directories must exist (a plain user
//!   cannot create them in a root-owned view), and device nodes are bind-mounted from
//!   the helper rather than created.
//! * Copy-up preserves ownership, and only the agent's user can own files here: writing
//!   a file fails with `EOVERFLOW` ("Value too large for defined data type") unless it
//!   and every directory above it, `/` included, are owned by the agent's user in the
//!   lower layer, even when their modes would allow the write. In practice the FUSE
//!   view must present files as the agent's user's for a rootless helper; mapping more
//!   ids (newuidmap and /etc/subuid) is not implemented.
//! * The lower layer must not have mounts below it (the FUSE view has none): in a user
//!   namespace overlayfs refuses a lower directory with locked submounts ("failed to
//!   clone lowerpath"), so `lower = /` only works as root.
//! * Resource limits above the agent's own hard limits are lowered to them.
//! * A cgroup is only possible under a parent delegated to the user (systemd's
//!   `Delegate=yes`); without [`SandboxSpec::cgroup`] the task runs in the agent's group.
//!
//! [`probe`] runs a throwaway sandbox to find out whether this agent can run tasks, and
//! says why not, and which network stack works.
//!
//! # Exit codes
//!
//! [`Sandbox::wait`] returns the task's own status ([`TaskExit`]). The helper process
//! itself exits with the task's code, 128 + N for signal N, or one of
//! [`EXIT_SETUP_FAILED`] (125: the sandbox could not be built; the reason went to the
//! spawner), [`EXIT_CANNOT_EXECUTE`] (126: the command exists but cannot be executed),
//! [`EXIT_NOT_FOUND`] (127: the command, or the working directory, does not exist).
//!
//! # Example
//!
//! ```no_run
//! use herd_sandbox::{SandboxSpec, spawn};
//! # fn main() -> Result<(), herd_sandbox::SandboxError> {
//! let mut spec = SandboxSpec::new("/", "/var/lib/herd/t1/upper", "/var/lib/herd/t1/work",
//!     vec!["sh".into(), "-c".into(), "echo hi > /home/me/out".into()]);
//! spec.uid = 1000;
//! spec.gid = 1000;
//! spec.idle = true;
//! let sandbox = spawn(std::path::Path::new("/proc/self/exe"), &spec)?;
//! let exit = sandbox.wait()?;
//! println!("task exited with {}", exit.code());
//! # Ok(()) }
//! ```
//!
//! # Terminals
//!
//! Two ways to give a task a terminal:
//!
//! * [`SandboxSpec::tty`]: the agent allocates a PTY on the helper and passes its slave
//!   in [`SandboxSpec::stdio`]. Simple, but the slave belongs to the helper's devpts,
//!   which the task cannot see (its `/dev/pts` is a new instance): `ttyname()` fails and
//!   `tty` prints "not a tty", although `isatty()`, `stty` and `/dev/tty` work.
//! * [`SandboxSpec::console`] (the container runtimes' "console socket"): the task
//!   allocates the PTY itself from its own `/dev/ptmx`, after its devpts is mounted and
//!   its identity taken on, sets the window size, makes the slave its stdin, stdout,
//!   stderr and controlling terminal, and sends the master to the spawner over a
//!   socketpair (`SCM_RIGHTS`) before it execs. [`Sandbox::console`] takes the master
//!   once [`spawn`] returned. The task sees `/dev/pts/0`, owned by its uid. Reading the
//!   master fails with `EIO` once every process holding the slave has exited; the
//!   task's status still comes from [`Sandbox::wait`].
//!
//! # Signals and priority
//!
//! [`Sandbox::signal`] reaches the task's first process only (not its process group):
//! with a terminal, send keyboard signals through the PTY (`^C` written to the master)
//! so the line discipline delivers them to the foreground job. `SCHED_IDLE` is what
//! keeps the task polite under autogroup (each `setsid` makes a new autogroup, which
//! defeats plain nice); nice 19 is set as well.
//!
//! # Known gaps
//!
//! * An agent that crashes takes its tasks with it (the lifeline), but their upper and
//!   work directories and any cgroup left by a supervisor killed with SIGKILL remain for
//!   the restarted agent to clean up.
//! * With a PTY from the helper's devpts ([`SandboxSpec::tty`]), `ttyname()` inside the
//!   task does not resolve (the task has its own devpts instance); `/dev/tty` works. Use
//!   [`SandboxSpec::console`] for a terminal the task can name.
//! * [`spawn`] blocks until the task has been exec'd; a lower layer that hangs (an
//!   unreachable workstation behind the FUSE view) hangs it too. Run it on a blocking
//!   thread; [`SandboxHandle`] is not available before it returns.
//! * cgroup v2 is unit-tested against a fake hierarchy only (the test machine has its
//!   controllers on v1); memory limits do not include swap (`memory.swap.max`,
//!   `memory.memsw.limit_in_bytes` are left alone).
//! * The overlay is mounted on top of the work directory; if the lower layer lacks
//!   `/proc`, `/dev` or `/tmp`, the empty directory created for it lands in `upper`.

mod cgroup;
pub mod cgroups;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod harden;
mod init;
mod netns;
mod spawn;
mod spec;

use std::path::Path;

pub use cgroups::unescape as unescape_mountinfo;
pub use error::SandboxError;
pub use harden::{ALLOWED_RLIMITS, MASKED_PROC, READ_ONLY_PROC};
pub use netns::{Net, NetStack, StackKind};
pub use spawn::{Parked, Prepared, Sandbox, SandboxHandle, Starting, TaskExit, prepare, spawn};
pub use spec::{CgroupSpec, SandboxSpec, StdioFd, TaskStdio};

/// `argv[1]` that makes the herd binary run [`init_main`].
pub const INIT_ARG: &str = "__sandbox-init";

/// The argument after [`INIT_ARG`] that starts a prepared init ([`prepare`]).
pub(crate) const PREPARED_ARG: &str = "prepared";

/// Exit code of the init when the sandbox could not be set up (the reason is reported to
/// the spawner as [`SandboxError::Setup`]).
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Exit code of a task whose command exists but cannot be executed (as a shell does).
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code of a task whose command is not found (as a shell does), and of the init
/// when the working directory cannot be entered ([`SandboxError::Cwd`]).
pub const EXIT_NOT_FOUND: i32 = 127;

/// The default [`SandboxSpec::pids_max`]: processes and threads a task tree may hold.
pub const DEFAULT_PIDS_MAX: u64 = 4096;

/// Where a root helper's tasks live: the task's user namespace maps its uids and gids
/// `0..TASK_ID_COUNT` to `TASK_ID_BASE..` on the helper (2^31 up to 2^32 - 2), a range
/// no account or container manager uses. The submitter's root is uid 2^31 on the
/// helper, with no capability there. The FUSE view presents the workstation's owners
/// shifted the same way (herd-fs `IdShift`), so the task sees them as they are.
pub const TASK_ID_BASE: u32 = 1 << 31;

/// How many ids a root helper's task namespace maps (see [`TASK_ID_BASE`]).
pub const TASK_ID_COUNT: u32 = (1 << 31) - 1;

/// Every entry of the task's `/dev`, sorted.
pub const DEV_ENTRIES: &[&str] = &[
    "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
    "urandom", "zero",
];

/// The init entry point. The herd binary's `main()` calls it first thing, before any
/// thread starts, when `argv[1] == INIT_ARG`; it never returns.
pub fn init_main() -> ! {
    init::main()
}

/// Runs [`init_main`] (and never returns) if this process was started as a sandbox init,
/// that is when `argv[1] == INIT_ARG`; returns otherwise. Call it first thing in
/// `main()`, before any thread is started:
///
/// ```no_run
/// // First line of the herd binary's main():
/// herd_sandbox::init_if_requested();
/// ```
pub fn init_if_requested() {
    if std::env::args_os().nth(1).is_some_and(|a| a == INIT_ARG) {
        init_main()
    }
}

/// Prepares the agent's own cgroup for nesting task groups, and returns the parent to
/// put in [`CgroupSpec::parent`].
///
/// On cgroup v2 a group that holds processes cannot hand controllers to children (the
/// "no internal processes" rule), so task groups cannot nest under the agent's own
/// group (`/system.slice/herd.service`, say) while the agent runs in it. This moves every
/// process of that group into a leaf child named `leaf` (conventionally `"agent"`)
/// and returns the group itself, under which tasks then get their limits. Call it once
/// at agent startup, before starting sandboxes. On cgroup v1 or hybrid machines (v1
/// groups may hold processes and children alike) it does nothing and returns `None`,
/// which is also the right [`CgroupSpec::parent`] there.
pub fn prepare_agent_cgroup(leaf: &str) -> Result<Option<std::path::PathBuf>, SandboxError> {
    cgroup::prepare_agent(leaf).map_err(SandboxError::Cgroup)
}

/// How this agent runs sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As root: real uids, groups and cgroups.
    Root,
    /// As a plain user through user namespaces (see the crate docs for the limits).
    Rootless,
}

impl Mode {
    /// The mode sandboxes started by this process would use (root or not).
    pub fn current() -> Mode {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            Mode::Root
        } else {
            Mode::Rootless
        }
    }
}

/// Hints about why unprivileged user namespaces are unavailable, for error messages.
pub(crate) fn userns_hint() -> String {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let mut hints = Vec::new();
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        hints.push("user namespaces are disabled (sysctl user.max_user_namespaces = 0)");
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        hints.push("unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone = 0)");
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        hints.push("AppArmor restricts unprivileged user namespaces (sysctl kernel.apparmor_restrict_unprivileged_userns = 1)");
    }
    if hints.is_empty() {
        String::new()
    } else {
        format!(
            " ({}; run the agent as root or allow them)",
            hints.join("; ")
        )
    }
}

/// What [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// How sandboxes run here.
    pub mode: Mode,
    /// The first user-mode network stack that attached to a throwaway sandbox's
    /// namespace (for [`Net::Outward`]), or why none did: then tasks get loopback only.
    pub net: Result<NetStack, String>,
}

/// Finds out whether this process can run sandboxes, by running a throwaway one: an
/// empty lower directory, a command that does not exist, everything else as for a real
/// task; then which network stack works, by running one more with each found in
/// `PATH` ([`NetStack::find`]) until one does. `scratch` is a directory on the
/// helper's disk where the probe may create (and then removes) a few directories.
///
/// Returns the [`Probe`] when a sandbox comes up, or [`SandboxError::Unsupported`] with
/// the step that failed and, in rootless mode, hints about what blocks user namespaces.
pub fn probe(helper_exe: &Path, scratch: &Path) -> Result<Probe, SandboxError> {
    let mode = Mode::current();
    let what = match mode {
        Mode::Root => "as root",
        Mode::Rootless => "rootless",
    };
    let dir = scratch.join(format!("herd-sandbox-probe-{}", std::process::id()));
    let result = probe_in(helper_exe, &dir, &Net::Loopback);
    if let Err(e) = result {
        remove_tree(&dir);
        let hint = match (&e, mode) {
            (ProbeError::Sandbox(_), Mode::Rootless) => userns_hint(),
            _ => String::new(),
        };
        return Err(SandboxError::Unsupported(format!("{what}: {e}{hint}")));
    }
    let stacks = NetStack::find(std::env::var_os("PATH").as_deref());
    let mut why = Vec::new();
    let mut net = None;
    for stack in stacks {
        match probe_in(helper_exe, &dir, &Net::Outward(stack.clone())) {
            Ok(()) => {
                net = Some(stack);
                break;
            }
            Err(e) => why.push(format!("{}: {e}", stack.kind.program_name())),
        }
    }
    remove_tree(&dir);
    let net = net.ok_or_else(|| {
        if why.is_empty() {
            "neither pasta (package passt) nor slirp4netns is installed".to_owned()
        } else {
            why.join("; ")
        }
    });
    Ok(Probe { mode, net })
}

/// Why a throwaway sandbox failed.
#[derive(Debug)]
enum ProbeError {
    Dirs(SandboxError),
    Sandbox(SandboxError),
    Status(i32),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Dirs(e) | ProbeError::Sandbox(e) => write!(f, "{e}"),
            ProbeError::Status(code) => write!(
                f,
                "the probe task ended with status {code} instead of {EXIT_NOT_FOUND}"
            ),
        }
    }
}

/// Runs one throwaway sandbox with `net` in fresh layers under `dir`.
fn probe_in(helper_exe: &Path, dir: &Path, net: &Net) -> Result<(), ProbeError> {
    let run = dir.join(match net {
        Net::Loopback => "loopback",
        Net::Outward(_) => "outward",
    });
    remove_tree(&run);
    let made = (|| -> std::io::Result<()> {
        for d in ["lower/proc", "lower/dev", "lower/tmp", "upper", "work"] {
            std::fs::create_dir_all(run.join(d))?;
        }
        Ok(())
    })();
    made.map_err(|e| ProbeError::Dirs(SandboxError::io("create", &run, e)))?;
    let mut spec = SandboxSpec::new(
        run.join("lower"),
        run.join("upper"),
        run.join("work"),
        vec!["/herd-sandbox-probe".into()],
    );
    spec.stdio = TaskStdio {
        stdin: StdioFd::Null,
        stdout: StdioFd::Null,
        stderr: StdioFd::Null,
    };
    spec.net = net.clone();
    if Mode::current() == Mode::Rootless {
        // SAFETY: geteuid/getegid have no preconditions.
        (spec.uid, spec.gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    }
    let result = spawn(helper_exe, &spec).and_then(Sandbox::wait);
    remove_tree(&run);
    match result {
        Ok(TaskExit::Exited(EXIT_NOT_FOUND)) => Ok(()),
        Ok(other) => Err(ProbeError::Status(other.code())),
        Err(e) => Err(ProbeError::Sandbox(e)),
    }
}

/// Removes a directory tree, first making directories searchable (overlayfs leaves a
/// mode-000 `work/work` directory behind).
fn remove_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fn open_up(d: &Path) {
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(dir);
    let _ = std::fs::remove_dir_all(dir);
}
