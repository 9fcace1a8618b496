//! The [`Runner`] trait, what it is given and what it returns, and [`LocalRunner`].
//!
//! The driver knows nothing of where a job runs: it hands a [`JobRequest`] to a
//! [`Runner`] on a thread of its own and gets back a [`JobResult`] (the job ran, and
//! exited or was killed) or a [`JobError`] (it could not be run to the end, e.g. its
//! host was lost). The herd CLI's runner sends the job through the herd agent; that
//! runner may itself re-run a job whose host was lost before reporting anything. That is
//! independent of `--retries`, which re-runs jobs that *failed*, whatever the cause.

use std::fmt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::{Cancel, Captured};

/// One job to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRequest {
    /// Sequence number, from 1, in input order (`{#}`).
    pub seq: u64,
    /// Job slot, from 1 to `-j` (`{%}`); no two running jobs share one.
    pub slot: usize,
    /// Attempt number, from 1; above 1 when `--retries` re-runs a failed job.
    pub attempt: u32,
    /// The shell line to run with `/bin/sh -c`.
    pub command: String,
    /// The job's arguments, before quoting.
    pub args: Vec<String>,
}

/// How a job that ran ended, with its output.
#[derive(Debug)]
pub struct JobResult {
    /// Where it ran (`:` is GNU parallel's name for this machine).
    pub host: String,
    /// Exit status (0 when killed by a signal).
    pub exit: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
    /// Everything it wrote to stdout.
    pub stdout: Captured,
    /// Everything it wrote to stderr.
    pub stderr: Captured,
    /// When it started.
    pub start: SystemTime,
    /// How long it ran.
    pub runtime: Duration,
    /// Bytes sent to the host for it (the job log's `Send`).
    pub send: u64,
    /// Bytes received from the host for it (the job log's `Receive`).
    pub receive: u64,
}

impl JobResult {
    /// Whether the job failed: non-zero exit status or killed by a signal.
    pub fn failed(&self) -> bool {
        self.exit != 0 || self.signal != 0
    }
}

/// A job that could not be run to the end: it never started, or its host was lost.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// What went wrong, in one line.
    pub message: String,
    /// The host it was sent to, if any.
    pub host: Option<String>,
}

impl JobError {
    /// An error with no host.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            host: None,
        }
    }

    /// The same error, naming the host the job was sent to.
    pub fn on_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
}

/// Runs one job and waits for it.
///
/// Called from several threads at once, at most `-j` at a time. Must return soon after
/// `cancel` is set (killing the job); what it returns then is discarded.
pub trait Runner: Send + Sync {
    /// Runs `job` to the end.
    fn run(&self, job: &JobRequest, cancel: &Cancel) -> Result<JobResult, JobError>;
}

/// Runs jobs on this machine with `/bin/sh -c`, each in its own process group,
/// capturing stdout and stderr into anonymous temporary files.
///
/// Jobs get `/dev/null` as stdin and, like GNU parallel's, the environment variables
/// `PARALLEL_SEQ` and `PARALLEL_JOBSLOT`. On cancel the job's process group gets
/// SIGTERM, then SIGKILL after [`LocalRunner::GRACE`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalRunner;

impl LocalRunner {
    /// The name this runner gives its host in results and job logs (GNU parallel's).
    pub const HOST: &'static str = ":";
    /// How long a cancelled job has between SIGTERM and SIGKILL.
    pub const GRACE: Duration = Duration::from_millis(200);
}

impl Runner for LocalRunner {
    fn run(&self, job: &JobRequest, cancel: &Cancel) -> Result<JobResult, JobError> {
        let err = |what: &str, e: std::io::Error| JobError::new(format!("{what}: {e}"));
        let stdout = tempfile::tempfile().map_err(|e| err("cannot create a temporary file", e))?;
        let stderr = tempfile::tempfile().map_err(|e| err("cannot create a temporary file", e))?;
        let start = SystemTime::now();
        let began = Instant::now();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&job.command)
            .stdin(Stdio::null())
            .stdout(
                stdout
                    .try_clone()
                    .map_err(|e| err("cannot dup a file", e))?,
            )
            .stderr(
                stderr
                    .try_clone()
                    .map_err(|e| err("cannot dup a file", e))?,
            )
            .env("PARALLEL_SEQ", job.seq.to_string())
            .env("PARALLEL_JOBSLOT", job.slot.to_string())
            .process_group(0)
            .spawn()
            .map_err(|e| err("cannot start /bin/sh", e))?;
        let status = wait(&mut child, cancel).map_err(|e| err("cannot wait for /bin/sh", e))?;
        let runtime = began.elapsed();
        let stdout = Captured::from_file(stdout).map_err(|e| err("cannot read output", e))?;
        let stderr = Captured::from_file(stderr).map_err(|e| err("cannot read output", e))?;
        Ok(JobResult {
            host: Self::HOST.to_owned(),
            exit: status.code().unwrap_or(0),
            signal: status.signal().unwrap_or(0),
            receive: stdout.len(),
            send: 0,
            stdout,
            stderr,
            start,
            runtime,
        })
    }
}

/// Waits for `child`, killing its process group when `cancel` is set. Polls with a
/// growing interval (1 ms to 50 ms) so short jobs are reaped quickly.
fn wait(child: &mut Child, cancel: &Cancel) -> std::io::Result<ExitStatus> {
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if cancel.wait_timeout(nap) {
            return kill(child);
        }
        nap = (nap * 2).min(Cancel::POLL);
    }
}

/// SIGTERM to the job's process group, SIGKILL after the grace period.
fn kill(child: &mut Child) -> std::io::Result<ExitStatus> {
    let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // The group may be gone already; the wait below tells.
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + LocalRunner::GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = killpg(group, Signal::SIGKILL);
    child.wait()
}
