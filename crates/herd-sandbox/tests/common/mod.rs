//! What the sandbox's integration tests share: scratch layers, running a spec to its
//! end with its output captured.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;

use herd_sandbox::{SandboxError, SandboxSpec, StdioFd, TaskExit, TaskStdio, spawn};
use tempfile::TempDir;

/// The crate's init binary.
pub const INIT: &str = env!("CARGO_BIN_EXE_herd-sandbox-init");
/// The crate's runner binary.
pub const RUN: &str = env!("CARGO_BIN_EXE_herd-sandbox-run");

/// Fails (never skips) when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the sandbox tests must run as root (they mount, unshare and set uids)"
    );
}

/// A scratch directory under /tmp holding `upper` and `work` (and whatever else).
pub struct Layers {
    /// The directory.
    pub dir: TempDir,
}

impl Layers {
    /// Fresh layers in a directory named after `prefix`.
    pub fn new_in(prefix: &str) -> Layers {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(dir.path().join("upper")).unwrap();
        fs::create_dir(dir.path().join("work")).unwrap();
        Layers { dir }
    }
    /// The overlay's upper layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }
    /// The overlay's work directory.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }
}

impl Drop for Layers {
    fn drop(&mut self) {
        // overlayfs leaves a mode-000 work/work directory.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+rwx")
            .arg(self.dir.path())
            .status();
    }
}

/// A task's end and what it printed.
pub struct Output {
    /// How it ended.
    pub exit: TaskExit,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// A pipe whose write end a sandbox can take.
pub fn pipe() -> (std::io::PipeReader, Arc<OwnedFd>) {
    let (r, w) = std::io::pipe().unwrap();
    (r, Arc::new(OwnedFd::from(w)))
}

/// Reads `r` to its end on a thread of its own.
pub fn reader(mut r: std::io::PipeReader) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        s
    })
}

/// Runs the spec to the end, capturing stdout and stderr.
pub fn try_run(mut spec: SandboxSpec) -> Result<Output, SandboxError> {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    spec.stdio = TaskStdio {
        stdin: StdioFd::Null,
        stdout: StdioFd::Fd(out_w),
        stderr: StdioFd::Fd(err_w),
    };
    let sandbox = spawn(Path::new(INIT), &spec)?;
    drop(spec);
    let (out, err) = (reader(out_r), reader(err_r));
    let exit = sandbox.wait()?;
    Ok(Output {
        exit,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

/// [`try_run`], panicking on herd's own failure.
pub fn run(spec: SandboxSpec) -> Output {
    try_run(spec).unwrap_or_else(|e| panic!("sandbox: {e}"))
}
