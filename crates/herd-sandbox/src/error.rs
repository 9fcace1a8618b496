//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Why a sandbox could not be started, watched or probed.
///
/// Messages are short and lowercase, and name the path or step that failed, so the
/// agent can print them after `herd: ` unchanged.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spawner could not make a pipe, write the spec or start the helper.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("spawn", "read", "write", ...).
        what: &'static str,
        /// The file or program it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The spec could not be encoded or decoded (a helper built from another version).
    #[error("sandbox spec: {0}")]
    Spec(String),
    /// The init reported that setting up the sandbox failed (one line: the step, the
    /// path and the reason), before the task was started.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The task's working directory does not exist (or is hidden, or is not a directory
    /// the task may enter) in the task's view of the filesystem.
    #[error("working directory {path}: {message}")]
    Cwd {
        /// The working directory asked for.
        path: PathBuf,
        /// Why it could not be entered.
        message: String,
    },
    /// A cgroup operation outside a sandbox's setup failed (freeze, thaw, preparing the
    /// agent's group).
    #[error("{0}")]
    Cgroup(String),
    /// The init process died without saying why (for example killed before it reported).
    #[error("sandbox init exited unexpectedly ({0}) before the task started")]
    InitDied(String),
    /// This host cannot run sandboxes at all; the message says why and what to change.
    #[error("this host cannot run herd sandboxes: {0}")]
    Unsupported(String),
}

impl SandboxError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SandboxError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
