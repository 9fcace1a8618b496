//! Starting processes "on" a host: cgroups, network, UTS and mount namespaces, chroot.
//!
//! Placement happens in the forked child, before `exec`, in a `pre_exec` hook. The test
//! process is multi-threaded, so that hook only makes raw system calls on data prepared
//! before the fork (open file descriptors, `CString`s): no allocation, no locks.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Error;
use crate::rootfs::MINIMAL_PATH;

/// What a host's processes are placed into; shared by the host and its commands.
#[derive(Debug)]
pub(crate) struct Placement {
    pub host: String,
    pub netns_path: PathBuf,
    pub mntns_path: PathBuf,
    pub procs_files: Vec<PathBuf>,
    pub root: Option<PathBuf>,
    pub log_dir: PathBuf,
    pub seq: AtomicU32,
}

/// A process to be started on a host; made by [`Host::command`](crate::Host::command).
///
/// Works like [`std::process::Command`]. Differences, all on purpose:
///
/// * stdin defaults to `/dev/null`; with [`spawn`](HostCommand::spawn), stdout and
///   stderr default to one log file per command in the host's log directory
///   ([`log_path`](HostCommand::log_path)); [`output`](HostCommand::output) captures them
///   and also appends them to that file.
/// * On a minimal host the environment starts empty except for `PATH` (see
///   [`MINIMAL_PATH`](crate::MINIMAL_PATH)) and `HOME=/root`, the program is looked up
///   inside the host's root, and the working directory (default `/`) is inside the root.
///   On a real-fs host the environment and working directory are inherited.
/// * The process gets its own UTS namespace with the host's name as hostname.
#[derive(Debug)]
pub struct HostCommand {
    placement: Arc<Placement>,
    program: String,
    args: Vec<OsString>,
    env_clear: bool,
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    log_path: PathBuf,
}

impl HostCommand {
    pub(crate) fn new(placement: Arc<Placement>, program: &str, args: &[&str]) -> Self {
        let seq = placement.seq.fetch_add(1, Ordering::Relaxed);
        let base = Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cmd".to_owned());
        let log_path = placement.log_dir.join(format!("{seq:03}-{base}.log"));
        HostCommand {
            placement,
            program: program.to_owned(),
            args: args.iter().map(OsString::from).collect(),
            env_clear: false,
            env: Vec::new(),
            cwd: None,
            stdin: None,
            stdout: None,
            stderr: None,
            log_path,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Starts from an empty environment (also drops the minimal host's default `PATH`).
    pub fn env_clear(&mut self) -> &mut Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// Sets the working directory, as seen from the host (inside its root on a minimal host).
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Sets stdin (default: `/dev/null`).
    pub fn stdin(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.stdin = Some(cfg.into());
        self
    }

    /// Sets stdout (default: the log file for `spawn`, a pipe for `output`).
    pub fn stdout(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.stdout = Some(cfg.into());
        self
    }

    /// Sets stderr (default: the log file for `spawn`, a pipe for `output`).
    pub fn stderr(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.stderr = Some(cfg.into());
        self
    }

    /// The log file that receives stdout and stderr unless they are redirected.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Starts the process on the host.
    pub fn spawn(&mut self) -> Result<Child, Error> {
        if self.stdout.is_none() || self.stderr.is_none() {
            let log = self.open_log()?;
            if self.stdout.is_none() {
                let dup = log
                    .try_clone()
                    .map_err(|e| Error::io("duplicate", &self.log_path, e))?;
                self.stdout = Some(Stdio::from(dup));
            }
            if self.stderr.is_none() {
                self.stderr = Some(Stdio::from(log));
            }
        }
        self.spawn_placed()
    }

    /// Runs the process to completion, capturing stdout and stderr (unless redirected);
    /// what was captured is also appended to [`log_path`](HostCommand::log_path).
    pub fn output(&mut self) -> Result<Output, Error> {
        if self.stdout.is_none() {
            self.stdout = Some(Stdio::piped());
        }
        if self.stderr.is_none() {
            self.stderr = Some(Stdio::piped());
        }
        let child = self.spawn_placed()?;
        let output = child
            .wait_with_output()
            .map_err(|e| self.spawn_error("waiting for it", e))?;
        if let Ok(mut log) = self.open_log() {
            let _ = write!(
                log,
                "{}\n--- stdout ---\n{}--- stderr ---\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    /// Runs the process to completion and returns its exit status (output goes to the
    /// log file unless redirected).
    pub fn status(&mut self) -> Result<ExitStatus, Error> {
        let mut child = self.spawn()?;
        child
            .wait()
            .map_err(|e| self.spawn_error("waiting for it", e))
    }

    fn open_log(&self) -> Result<File, Error> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| Error::io("open log file", &self.log_path, e))
    }

    fn spawn_error(&self, step: &'static str, source: io::Error) -> Error {
        Error::Spawn {
            host: self.placement.host.clone(),
            program: self.program.clone(),
            step,
            source,
        }
    }

    fn spawn_placed(&mut self) -> Result<Child, Error> {
        let placement = Arc::clone(&self.placement);
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if self.env_clear || placement.root.is_some() {
            cmd.env_clear();
        }
        if placement.root.is_some() && !self.env_clear {
            cmd.env("PATH", MINIMAL_PATH).env("HOME", "/root");
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(self.stdin.take().unwrap_or_else(Stdio::null));
        if let Some(out) = self.stdout.take() {
            cmd.stdout(out);
        }
        if let Some(err) = self.stderr.take() {
            cmd.stderr(err);
        }

        // Everything the child needs, prepared before the fork.
        let mut keep: Vec<OwnedFd> = Vec::new();
        let mut procs_fds = Vec::new();
        for file in &placement.procs_files {
            let f = OpenOptions::new().write(true).open(file).map_err(|e| {
                self.spawn_error("opening the host's cgroup.procs", annotate(e, file))
            })?;
            procs_fds.push(f.as_raw_fd());
            keep.push(f.into());
        }
        let netns = File::open(&placement.netns_path).map_err(|e| {
            self.spawn_error(
                "opening the host's network namespace",
                annotate(e, &placement.netns_path),
            )
        })?;
        let netns_fd = netns.as_raw_fd();
        keep.push(netns.into());
        let mntns = File::open(&placement.mntns_path).map_err(|e| {
            self.spawn_error(
                "opening the host's mount namespace",
                annotate(e, &placement.mntns_path),
            )
        })?;
        let mntns_fd = mntns.as_raw_fd();
        keep.push(mntns.into());
        let hostname = cstring(placement.host.as_bytes());
        let chroot = placement
            .root
            .as_ref()
            .map(|root| cstring(root.as_os_str().as_encoded_bytes()));
        // Entering a mount namespace resets the working directory: choose it explicitly.
        let cwd = match (&self.cwd, &placement.root) {
            (Some(cwd), _) => cwd.clone(),
            (None, Some(_)) => PathBuf::from("/"),
            (None, None) => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        };
        let cwd = cstring(cwd.as_os_str().as_encoded_bytes());
        let (step_read, step_write) =
            step_pipe().map_err(|e| self.spawn_error("creating a pipe", e))?;
        let plan = ChildPlan {
            procs_fds,
            netns_fd,
            mntns_fd,
            hostname,
            chroot,
            cwd,
            step_fd: step_write.as_raw_fd(),
        };
        // SAFETY: the hook only calls async-signal-safe functions (raw system calls) on
        // data prepared above; it neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || plan.enter());
        }
        let spawned = cmd.spawn();
        drop(step_write);
        drop(keep);
        match spawned {
            Ok(child) => Ok(child),
            Err(e) => {
                let step = read_step(&step_read);
                Err(self.spawn_error(step, e))
            }
        }
    }
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn cstring(bytes: &[u8]) -> CString {
    // Paths and host names never contain NUL (names are validated; paths come from the OS).
    CString::new(bytes.to_vec()).unwrap_or_default()
}

struct ChildPlan {
    procs_fds: Vec<RawFd>,
    netns_fd: RawFd,
    mntns_fd: RawFd,
    hostname: CString,
    chroot: Option<CString>,
    cwd: CString,
    step_fd: RawFd,
}

/// Placement steps, reported back through a pipe when one fails.
const STEPS: &[&str] = &[
    "exec",
    "joining the host's cgroups",
    "entering the host's network namespace",
    "creating a UTS namespace",
    "setting the hostname",
    "entering the host's mount namespace",
    "chroot into the host root",
    "changing to the working directory",
];

impl ChildPlan {
    /// Runs in the forked child. Async-signal-safe: raw system calls only.
    fn enter(&self) -> io::Result<()> {
        for &fd in &self.procs_fds {
            // "0" moves the writer itself, in v1 and v2 alike.
            // SAFETY: writing 2 bytes from a static buffer to an open fd.
            let rc = unsafe { libc::write(fd, b"0\n".as_ptr().cast(), 2) };
            self.check(rc as i32, 1)?;
        }
        // SAFETY: plain system calls on valid fds and NUL-terminated strings.
        unsafe {
            self.check(libc::setns(self.netns_fd, libc::CLONE_NEWNET), 2)?;
            self.check(libc::unshare(libc::CLONE_NEWUTS), 3)?;
            let name = self.hostname.as_bytes();
            self.check(libc::sethostname(self.hostname.as_ptr(), name.len()), 4)?;
            self.check(libc::setns(self.mntns_fd, libc::CLONE_NEWNS), 5)?;
            if let Some(root) = &self.chroot {
                self.check(libc::chroot(root.as_ptr()), 6)?;
            }
            self.check(libc::chdir(self.cwd.as_ptr()), 7)?;
        }
        Ok(())
    }

    /// Turns a failed system call into an error, reporting the step to the parent.
    fn check(&self, rc: i32, step: u8) -> io::Result<()> {
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // SAFETY: writing one byte from the stack to the pipe's write end.
        unsafe {
            libc::write(self.step_fd, (&step as *const u8).cast(), 1);
        }
        Err(err)
    }
}

fn step_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_step(fd: &OwnedFd) -> &'static str {
    let mut byte = 0u8;
    // SAFETY: reading one byte into a stack variable from an open, non-blocking fd.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
    if n == 1 {
        STEPS.get(usize::from(byte)).copied().unwrap_or(STEPS[0])
    } else {
        STEPS[0]
    }
}
