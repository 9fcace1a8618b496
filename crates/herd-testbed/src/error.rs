//! The one error type of the testbed.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while building, using or tearing down a testbed.
///
/// Every variant names what failed: the command line and its stderr, or the path and the
/// operation, so that a failing end-to-end test says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The testbed needs root (network namespaces, cgroups, chroot, mounts).
    #[error(
        "herd-testbed needs root (effective uid is {euid}): run the end-to-end tests as root, e.g. `sudo -E cargo test -p herd-testbed`"
    )]
    NotRoot {
        /// The effective uid of the calling process.
        euid: u32,
    },
    /// An external tool (`ip`, `tc`, `ldd`, ...) could not be started at all.
    #[error("could not run `{command}`: {source} (is the package that provides it installed?)")]
    ToolMissing {
        /// The command line that was attempted.
        command: String,
        /// Why it could not be started.
        #[source]
        source: io::Error,
    },
    /// An external tool ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line that failed.
        command: String,
        /// Its exit status, as text.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "write" or "create directory".
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The machine's cgroup setup cannot host a testbed, or a cgroup operation failed.
    #[error("cgroups: {0}")]
    Cgroup(String),
    /// The machine's networking cannot host a testbed (no netns or bridge support).
    #[error("network namespaces: {0}")]
    Network(String),
    /// A [`HostSpec`](crate::HostSpec) was rejected.
    #[error("invalid host spec: {0}")]
    InvalidSpec(String),
    /// Starting a process on a host failed.
    #[error("starting `{program}` on host {host} failed while {step}: {source}")]
    Spawn {
        /// The host the process was meant to run on.
        host: String,
        /// The program that was to be started.
        program: String,
        /// The placement step that failed (joining the cgroup, the netns, chroot, exec, ...).
        step: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Something did not happen within its deadline.
    #[error("timed out after {seconds:.1}s: {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long was waited.
        seconds: f64,
    },
    /// Tearing a testbed down left something behind; every item is listed.
    #[error("teardown of testbed {id} left problems: {}", problems.join("; "))]
    Teardown {
        /// The testbed's id.
        id: String,
        /// One entry per failed cleanup step.
        problems: Vec<String>,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
