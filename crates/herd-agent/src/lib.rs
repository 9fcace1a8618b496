//! The herd agent: the one long-running process on every host, and the client side
//! the CLI uses to talk to it.
//!
//! This crate is the *driver* layer: it owns every socket, file, timer and thread.
//! The distributed logic lives in sans-IO crates (`herd-membership`) that this crate
//! feeds with events and drains of outputs; wire formats live in `herd-proto` and
//! certificates in `herd-pki`.
//!
//! * [`state`]: the state directory (identity, tokens, lock, socket path).
//! * [`admin`]: `herd init`, `herd token`, `herd revoke` and `herd remove`, which work
//!   on the state directory (`revoke` and `remove` through the running agent when
//!   there is one, so that the new revocation list spreads at once).
//! * [`enroll`]: joining a cluster with a token (`herd agent --join`), also again
//!   after the certificate expired.
//! * [`renew`]: certificates renewing themselves through the CA node, both sides.
//! * [`net`]: the QUIC endpoint: mutual TLS, per-peer connections, datagrams for
//!   membership, bidirectional streams for requests.
//! * [`agent`]: the main loop, one `tokio::select!` over a closed set of events.
//! * [`local`]: the Unix-socket API between the CLI and its local agent.
//! * [`client`]: `herd run`'s side of running a task.
//! * [`host`]: what the host grants and how loaded it is.
//! * [`discovery`]: LAN discovery of peers by mDNS.
//! * [`task`]: running a task, on the workstation's side and on the helper's.
//! * [`views`]: a helper's views of workstations, kept mounted between tasks and
//!   validated before each.
//! * [`fsserve`]: the workstation's file service and commits, run as the submitter.
//! * [`hook`]: a test seam replacing how a helper serves tasks (hostile-helper tests).
//!
//! **Architecture invariant:** only this crate (and the binary above it) knows tokio
//! and quinn; of the crates below it, only `herd-fs` and `herd-sandbox` touch the
//! system, and `herd-proto`, `herd-pki` and `herd-membership` do no I/O at all.

#![deny(missing_docs)]

pub mod admin;
pub mod agent;
pub mod client;
pub mod config;
pub mod discovery;
pub mod enroll;
pub mod fsserve;
pub mod hook;
pub mod host;
pub mod local;
pub mod metrics;
pub mod net;
pub mod polite;
pub mod queue;
pub mod renew;
pub mod shell;
pub mod state;
pub mod task;
pub mod views;

use std::path::{Path, PathBuf};

pub use agent::{AgentOptions, run_agent};
pub use hook::{RunCall, RunHook};

/// Errors of the agent and of the CLI's requests to it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A state file does not parse.
    #[error("{} is corrupt: {why} (restore it from a backup, or remove the state directory and join again)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        why: String,
    },
    /// Another agent holds the state directory.
    #[error("another herd agent (pid {pid}) is already running on state directory {}", dir.display())]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// Pid of the holder, as it wrote it.
        pid: String,
    },
    /// No cluster in the state directory.
    #[error("no herd cluster in {}: run `herd init` to create one, or `herd agent --join TOKEN` to join one", dir.display())]
    NoCluster {
        /// The state directory.
        dir: PathBuf,
    },
    /// `herd init` on a state directory that already holds a cluster.
    #[error("{} already holds cluster {cluster:?}: use another --state, or remove it to start over", dir.display())]
    AlreadyInitialized {
        /// The state directory.
        dir: PathBuf,
        /// The cluster it holds.
        cluster: String,
    },
    /// A join token was refused (locally or by the cluster).
    #[error("{0}")]
    Token(String),
    /// This node's certificate can no longer be used (it expired, or its key was
    /// revoked): the message says what to do.
    #[error("{0}")]
    Certificate(String),
    /// A request needs the CA key, which this node does not hold.
    #[error(
        "this node does not hold the cluster CA: run `herd token` on the node where `herd init` ran"
    )]
    NotCa,
    /// Invalid user input (flag value).
    #[error("{0}")]
    Usage(String),
    /// Certificate handling failed.
    #[error(transparent)]
    Pki(#[from] herd_pki::PkiError),
    /// The network failed.
    #[error("{0}")]
    Net(String),
    /// The local agent is not running.
    #[error("no herd agent is running on state directory {} (start one with `herd agent`)", dir.display())]
    NotRunning {
        /// The state directory.
        dir: PathBuf,
    },
    /// A peer or the agent sent something that does not decode.
    #[error(transparent)]
    Proto(#[from] herd_proto::ProtoError),
}

impl AgentError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &Path, source: std::io::Error) -> AgentError {
        AgentError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The process exit code this error should produce: 2 for problems the user must
    /// fix (bad token, bad flag, state directory in the way or damaged), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Corrupt { .. }
            | AgentError::Locked { .. }
            | AgentError::NoCluster { .. }
            | AgentError::AlreadyInitialized { .. }
            | AgentError::Token(_)
            | AgentError::Certificate(_)
            | AgentError::NotCa
            | AgentError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
