//! What to run and how: [`SandboxSpec`] and its wire form for the init helper.
//!
//! The wire form is a private contract between [`crate::spawn`] and [`crate::init_main`]
//! of the *same* binary (the agent re-executes itself), so it is not versioned; it only
//! has to round-trip every path and argument byte for byte, including non-UTF-8 ones.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::SandboxError;
use crate::netns::{Net, StackKind};

/// Everything needed to run one task in a sandbox.
///
/// Paths `lower`, `upper` and `work` are paths on the helper; `cwd` and `hidden` are
/// paths *in the task's view* (that is, inside `lower`).
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The read-only root the task sees: in production the FUSE view of the
    /// workstation's `/`; in tests `/` itself or a prepared directory. Only this one
    /// filesystem is visible: mounts below it on the helper are not.
    pub lower: PathBuf,
    /// The overlayfs upper directory (on the helper's disk): every write of the task
    /// lands here, deletions as overlayfs whiteouts. Must be empty and on the same
    /// filesystem as `work`.
    pub upper: PathBuf,
    /// The overlayfs work directory (empty, same filesystem as `upper`). The init also
    /// mounts the composed root on top of it, in its private mount namespace, so no
    /// other directory is needed.
    pub work: PathBuf,
    /// The command and its arguments; `argv[0]` is looked up in the task's `PATH` (from
    /// `env`) when it contains no `/`, like a shell does.
    pub argv: Vec<OsString>,
    /// Where that `PATH` search is expected to end (the workstation's own search, when
    /// `argv[0]` contains no `/`): tried first, so the search's misses are skipped. A
    /// hint only: when it cannot be executed the search runs as usual.
    pub exe: Option<PathBuf>,
    /// The task's whole environment (nothing of the helper's environment is passed).
    pub env: Vec<(OsString, OsString)>,
    /// The task's working directory in its view. If it cannot be entered, spawning fails
    /// with [`SandboxError::Cwd`] and the init exits with [`crate::EXIT_NOT_FOUND`].
    pub cwd: PathBuf,
    /// The task's user id (the submitter's uid on the workstation).
    pub uid: u32,
    /// The task's primary group id.
    pub gid: u32,
    /// The task's supplementary groups (ignored in rootless mode, see the crate docs).
    pub groups: Vec<u32>,
    /// The task's umask (only the low 9 bits count).
    pub umask: u32,
    /// Resource limits as `(RLIMIT_*, soft, hard)`; `u64::MAX` means unlimited. In
    /// rootless mode a limit above the helper's own hard limit is lowered to it.
    pub rlimits: Vec<(i32, u64, u64)>,
    /// Paths in the view made unreadable: a directory becomes an empty read-only
    /// directory, a file an empty read-only file. Paths that do not exist are skipped.
    pub hidden: Vec<PathBuf>,
    /// The task's hostname (its own UTS namespace); `None` keeps the helper's.
    pub hostname: Option<String>,
    /// The cgroup to run the task tree in, with its limits; `None` runs it in the
    /// spawner's own cgroup without limits.
    pub cgroup: Option<CgroupSpec>,
    /// Run at idle priority: `SCHED_IDLE` and nice 19.
    pub idle: bool,
    /// The task's stdin, stdout and stderr.
    pub stdio: TaskStdio,
    /// Make the task's stdin its controlling terminal (`setsid` + `TIOCSCTTY`); stdin
    /// must then be a terminal, typically the slave side of a PTY the agent allocated.
    /// Such a PTY belongs to the helper's devpts, which the task cannot see, so
    /// `ttyname()` fails inside; [`SandboxSpec::console`] avoids that.
    pub tty: bool,
    /// Give the task a terminal of its own, `(rows, cols)` in size (the container
    /// runtimes' "console socket"). When `Some`, the init opens `/dev/ptmx` of the
    /// task's own devpts instance after mounting it (in the task process, once it has
    /// taken on the task's identity, so the slave belongs to the task's uid), sets the
    /// window size, makes the slave the task's stdin, stdout and stderr and its
    /// controlling terminal (`setsid` + `TIOCSCTTY`), and sends the master back to the
    /// spawner over a socketpair with `SCM_RIGHTS`; take it with
    /// [`crate::Sandbox::console`]. The task then sees its terminal as `/dev/pts/0`, and
    /// `ttyname()` works. [`SandboxSpec::stdio`] and [`SandboxSpec::tty`] are ignored
    /// (the helper's own stdio is `/dev/null`). `None` (the default): no terminal of the
    /// sandbox's own.
    pub console: Option<(u16, u16)>,
    /// The most processes and threads the task's tree may hold at once: `pids.max` of
    /// its cgroup (v2 `pids` controller, or the v1 `pids` hierarchy), only with
    /// [`SandboxSpec::cgroup`]. A task that reaches it is ended, with a message on its
    /// stderr (a fork bomb would otherwise spin at the limit). `None`: no limit.
    /// Defaults to [`crate::DEFAULT_PIDS_MAX`]. A prepared init's group gets the
    /// default when it is made, and the task's own value when it starts.
    pub pids_max: Option<u64>,
    /// The task's network: always a namespace of its own, made by the init; with only
    /// loopback ([`Net::Loopback`], the default) or reaching outward through a
    /// user-mode stack ([`Net::Outward`]). See the crate docs, *Network*.
    pub net: Net,
}

impl SandboxSpec {
    /// A spec with the given layers and command and everything else neutral: cwd `/`,
    /// uid/gid 65534 (nobody), no groups, umask 022, no limits, nothing hidden, no
    /// cgroup, normal priority, stdio inherited from the spawner, no terminal, no
    /// console, loopback only.
    pub fn new(
        lower: impl Into<PathBuf>,
        upper: impl Into<PathBuf>,
        work: impl Into<PathBuf>,
        argv: Vec<OsString>,
    ) -> Self {
        SandboxSpec {
            lower: lower.into(),
            upper: upper.into(),
            work: work.into(),
            argv,
            exe: None,
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            cwd: PathBuf::from("/"),
            uid: 65534,
            gid: 65534,
            groups: Vec::new(),
            umask: 0o022,
            rlimits: Vec::new(),
            hidden: Vec::new(),
            hostname: None,
            cgroup: None,
            idle: false,
            stdio: TaskStdio::default(),
            tty: false,
            console: None,
            pids_max: Some(crate::DEFAULT_PIDS_MAX),
            net: Net::Loopback,
        }
    }
}

/// The cgroup a task tree runs in.
///
/// The init creates `<parent>/<name>` in every hierarchy it uses (cgroup v2: the unified
/// hierarchy; v1: the hierarchies carrying `cpu` and `memory`), sets the limits, moves
/// the task tree's pid 1 into it before anything of the task runs, and removes it after
/// the whole tree has exited.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupSpec {
    /// The parent group as a cgroup path (`/system.slice/herd.service`), the same in
    /// every hierarchy; `None` means the spawner's own group in each hierarchy. On
    /// cgroup v2 the parent must not hold processes itself once controllers are enabled
    /// for its children (the "no internal processes" rule): run the agent in a leaf such
    /// as `<parent>/agent`, which [`crate::prepare_agent_cgroup`] arranges.
    pub parent: Option<PathBuf>,
    /// The group's name, conventionally `herd-task-<id>`.
    pub name: String,
    /// CPU quota in CPUs (1.5 = one and a half CPUs' worth of time per period).
    pub cpus: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
}

/// One of the task's standard streams.
#[derive(Debug, Clone, Default)]
pub enum StdioFd {
    /// The spawner's own stream of the same number.
    #[default]
    Inherit,
    /// `/dev/null` of the helper.
    Null,
    /// This file descriptor (a pipe, a socket, a PTY slave, a file); it is duplicated
    /// for the task, so the caller keeps (and may close) its own.
    Fd(Arc<OwnedFd>),
}

/// The task's stdin, stdout and stderr.
#[derive(Debug, Clone, Default)]
pub struct TaskStdio {
    /// Standard input (fd 0).
    pub stdin: StdioFd,
    /// Standard output (fd 1).
    pub stdout: StdioFd,
    /// Standard error (fd 2).
    pub stderr: StdioFd,
}

/// The serialized spec sent to the init helper: bytes instead of OS strings. Each
/// field is the [`SandboxSpec`] field of the same name, paths and OS strings as their
/// bytes. `pub` only for the fuzzing seam (`crate::fuzzing`); the module is private.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSpec {
    /// [`SandboxSpec::lower`].
    pub lower: Vec<u8>,
    /// [`SandboxSpec::upper`].
    pub upper: Vec<u8>,
    /// [`SandboxSpec::work`].
    pub work: Vec<u8>,
    /// [`SandboxSpec::argv`].
    pub argv: Vec<Vec<u8>>,
    /// [`SandboxSpec::exe`].
    pub exe: Option<Vec<u8>>,
    /// [`SandboxSpec::env`].
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// [`SandboxSpec::cwd`].
    pub cwd: Vec<u8>,
    /// [`SandboxSpec::uid`].
    pub uid: u32,
    /// [`SandboxSpec::gid`].
    pub gid: u32,
    /// [`SandboxSpec::groups`].
    pub groups: Vec<u32>,
    /// [`SandboxSpec::umask`].
    pub umask: u32,
    /// [`SandboxSpec::rlimits`].
    pub rlimits: Vec<(i32, u64, u64)>,
    /// [`SandboxSpec::hidden`].
    pub hidden: Vec<Vec<u8>>,
    /// [`SandboxSpec::hostname`].
    pub hostname: Option<String>,
    /// [`SandboxSpec::cgroup`].
    pub cgroup: Option<WireCgroup>,
    /// [`SandboxSpec::idle`].
    pub idle: bool,
    /// [`SandboxSpec::tty`].
    pub tty: bool,
    /// [`SandboxSpec::console`].
    pub console: Option<(u16, u16)>,
    /// [`SandboxSpec::pids_max`].
    pub pids_max: Option<u64>,
    /// Only the root (`lower`, `upper`, `work`) is given: build it and park pid 1 until
    /// the task comes (see `Prepared::park`).
    pub parked: bool,
    /// The user-mode network stack to attach, or none (loopback only).
    pub net: Option<WireStack>,
}

/// The wire form of [`crate::NetStack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireStack {
    /// Which stack.
    pub kind: StackKind,
    /// Its program, as bytes.
    pub program: Vec<u8>,
}

/// The wire form of [`CgroupSpec`] (each field that of the same name, paths as bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireCgroup {
    /// [`CgroupSpec::parent`].
    pub parent: Option<Vec<u8>>,
    /// [`CgroupSpec::name`].
    pub name: String,
    /// [`CgroupSpec::cpus`].
    pub cpus: Option<f64>,
    /// [`CgroupSpec::memory`].
    pub memory: Option<u64>,
}

fn bytes(p: &std::path::Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

impl WireSpec {
    pub(crate) fn from_spec(spec: &SandboxSpec) -> Self {
        WireSpec {
            lower: bytes(&spec.lower),
            upper: bytes(&spec.upper),
            work: bytes(&spec.work),
            argv: spec.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            exe: spec.exe.as_deref().map(bytes),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            cwd: bytes(&spec.cwd),
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.groups.clone(),
            umask: spec.umask,
            rlimits: spec.rlimits.clone(),
            hidden: spec.hidden.iter().map(|p| bytes(p)).collect(),
            hostname: spec.hostname.clone(),
            cgroup: spec.cgroup.as_ref().map(|c| WireCgroup {
                parent: c.parent.as_deref().map(bytes),
                name: c.name.clone(),
                cpus: c.cpus,
                memory: c.memory,
            }),
            idle: spec.idle,
            tty: spec.tty,
            console: spec.console,
            pids_max: spec.pids_max,
            parked: false,
            net: match &spec.net {
                Net::Loopback => None,
                Net::Outward(stack) => Some(WireStack {
                    kind: stack.kind,
                    program: bytes(&stack.program),
                }),
            },
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, SandboxError> {
        postcard::to_stdvec(self).map_err(|e| SandboxError::Spec(e.to_string()))
    }

    pub(crate) fn decode(data: &[u8]) -> Result<Self, SandboxError> {
        postcard::from_bytes(data).map_err(|e| SandboxError::Spec(e.to_string()))
    }
}

/// Turns wire bytes back into a path.
pub(crate) fn path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(b.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spec_round_trips_non_utf8() {
        let mut spec =
            SandboxSpec::new("/l", "/u", "/w", vec![OsString::from_vec(vec![0xff, b'x'])]);
        spec.hidden = vec![path(&[b'/', 0xfe])];
        spec.cgroup = Some(CgroupSpec {
            parent: None,
            name: "herd-task-1".into(),
            cpus: Some(1.5),
            memory: Some(1 << 30),
        });
        spec.console = Some((30, 100));
        let wire = WireSpec::from_spec(&spec);
        let back = WireSpec::decode(&wire.encode().unwrap()).unwrap();
        assert_eq!(back.argv, vec![vec![0xff, b'x']]);
        assert_eq!(back.hidden, vec![vec![b'/', 0xfe]]);
        assert_eq!(back.cgroup.unwrap().cpus, Some(1.5));
        assert_eq!(back.console, Some((30, 100)));
    }
}
