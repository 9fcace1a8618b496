//! Wire contracts of herd: every type that crosses a process boundary.
//!
//! herd speaks two protocols, both defined here and nowhere else:
//!
//! * **node to node**, over QUIC with mutual TLS (see `herd-agent`): request/response
//!   exchanges on bidirectional streams ([`PeerRequest`], [`PeerResponse`]) and
//!   membership packets in QUIC datagrams (opaque here, owned by `herd-membership`);
//! * **CLI to local agent**, over a Unix socket in the state directory
//!   ([`LocalRequest`], [`LocalResponse`]).
//!
//! Both use the same framing: a 4-byte big-endian length, then a payload whose first
//! byte is [`PROTOCOL_VERSION`] followed by the [postcard] encoding of the message.
//! Frames longer than [`MAX_FRAME`] are refused before any allocation, a frame with
//! another version is refused with [`ProtoError::Version`], and a payload that does
//! not decode is refused with [`ProtoError::Decode`]. None of these panic, whatever the
//! bytes: the caller closes that one connection and carries on.
//!
//! The join token ([`Token`]) is also defined here because it is a contract between
//! `herd init`/`herd token` on one machine and `herd agent --join` on another, and so
//! is the CA's signed revocation list ([`revocation`]), which every node keeps and
//! hands on.
//!
//! **Architecture invariant:** this crate does no I/O and knows no runtime; it only
//! turns values into bytes and back.

#![deny(missing_docs)]

pub mod fs;
pub mod revocation;
mod token;

pub use revocation::{RevocationList, RevokedKey, SignedRevocations};
pub use token::{Token, TokenError};

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Version byte leading every frame payload. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u8 = 5;

/// Largest frame payload accepted or produced, in bytes. A receiver refuses a longer
/// announced length before allocating anything.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// ALPN identifier of herd's QUIC protocol.
pub const ALPN: &[u8] = b"herd/1";

/// Errors turning bytes into messages or back.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The frame was larger than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced or actual length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {got}, this herd speaks {PROTOCOL_VERSION}")]
    Version {
        /// Version byte received.
        got: u8,
    },
    /// The frame was empty.
    #[error("empty frame")]
    Empty,
    /// The payload did not decode as the expected message.
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes `msg` as a frame payload (version byte + postcard), without the length
/// prefix. Fails only if the message is larger than [`MAX_FRAME`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, ProtoError> {
    let mut buf = BytesMut::with_capacity(64).writer();
    buf.get_mut().put_u8(PROTOCOL_VERSION);
    postcard::to_io(msg, &mut buf)?;
    let buf = buf.into_inner();
    if buf.len() > MAX_FRAME {
        return Err(ProtoError::TooLarge {
            len: buf.len(),
            max: MAX_FRAME,
        });
    }
    Ok(buf.freeze())
}

/// Decodes a frame payload produced by [`encode`]. Never panics.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtoError> {
    if payload.len() > MAX_FRAME {
        return Err(ProtoError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME,
        });
    }
    let (&version, rest) = payload.split_first().ok_or(ProtoError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::Version { got: version });
    }
    Ok(postcard::from_bytes(rest)?)
}

/// herd's framing as a codec for `tokio_util::codec::Framed` over any byte stream.
pub fn codec() -> Codec {
    Codec
}

/// herd's framing (a 4-byte big-endian length, then the payload) as a tokio codec.
/// Unlike tokio's `LengthDelimitedCodec`, it never reserves the length a frame
/// announces: a peer announcing [`MAX_FRAME`] on many streams makes the receiver hold
/// only the bytes that actually arrived (the framed reader's buffer grows as they do).
/// Longer announcements are refused before any of the frame is read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Codec;

impl tokio_util::codec::Decoder for Codec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        let Some(head) = src.get(..4) else {
            return Ok(None);
        };
        let n = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if n > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a frame of {n} bytes announced (at most {MAX_FRAME})"),
            ));
        }
        if src.len() < 4 + n {
            return Ok(None);
        }
        let mut frame = src.split_to(4 + n);
        let _ = frame.split_to(4);
        Ok(Some(frame))
    }
}

impl tokio_util::codec::Encoder<Bytes> for Codec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        if item.len() > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a frame of {} bytes (at most {MAX_FRAME})", item.len()),
            ));
        }
        dst.reserve(4 + item.len());
        dst.put_u32(item.len() as u32);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// A role a node's certificate grants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May submit work to the cluster (a workstation).
    Submit,
    /// May execute work for the cluster (a helper).
    Exec,
}

impl Role {
    /// The role's name as written in certificates, tokens and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submit => "submit",
            Role::Exec => "exec",
        }
    }

    /// Parses `submit` or `exec`.
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim() {
            "submit" => Some(Role::Submit),
            "exec" => Some(Role::Exec),
            _ => None,
        }
    }

    /// Parses a comma-separated list such as `submit,exec`; `None` if any is unknown.
    pub fn parse_list(s: &str) -> Option<Vec<Role>> {
        let mut roles = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Role::parse)
            .collect::<Option<Vec<_>>>()?;
        roles.sort();
        roles.dedup();
        Some(roles)
    }

    /// Formats a list as `submit,exec`.
    pub fn join(roles: &[Role]) -> String {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A request from one node to another on a QUIC bidirectional stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Enrollment of a new node with a join token. The only request accepted on a
    /// connection whose client presented no certificate.
    Enroll {
        /// Token identifier (public part).
        token_id: [u8; 8],
        /// Token secret.
        secret: [u8; 24],
        /// Name the node wants.
        name: String,
        /// PKCS#10 certificate signing request (DER) for the node's own key.
        csr_der: Vec<u8>,
    },
    /// Asks the peer for its name (diagnostics).
    Ping,
    /// Run a task (workstation to helper). The stream then carries [`TaskInput`]
    /// frames to the helper and [`TaskOutput`] frames back.
    Run {
        /// Task id, chosen by the workstation.
        task: u64,
        /// What to run and as whom.
        spec: TaskSpec,
    },
    /// Stop (`true`) or resume taking new work (`herd drain` / `herd undrain` run on
    /// another node). Answered with `Pong`.
    Drain(bool),
    /// A file question for a running task (helper to workstation).
    Fs {
        /// The task it is for.
        task: u64,
        /// The question.
        req: fs::FsRequest,
    },
    /// Asks for the newest signed revocation list the peer holds (sent to a peer whose
    /// load report announces a newer version than ours). Answered with
    /// [`PeerResponse::Revocations`].
    Revocations,
    /// Asks the CA node to renew the sender's certificate: a new one for the same name,
    /// roles and key, valid from now. The request is authenticated by the connection's
    /// certificate, which must still be valid; `csr_der` (PKCS#10, for the key that
    /// certificate holds) proves the key again. Answered with
    /// [`PeerResponse::Renewed`].
    Renew {
        /// Certificate signing request (DER) for the node's current key.
        csr_der: Vec<u8>,
    },
}

/// What a task is and whom it runs as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// What the user asked for.
    pub run: RunSpec,
    /// The submitter's uid on the workstation.
    pub uid: u32,
    /// The submitter's primary gid.
    pub gid: u32,
    /// The submitter's supplementary groups.
    pub groups: Vec<u32>,
    /// Paths the task must not see (secrets).
    pub hidden: Vec<Vec<u8>>,
}

/// A command to run, as `herd run` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Command and arguments.
    pub argv: Vec<Vec<u8>>,
    /// The whole environment.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory (absolute).
    pub cwd: Vec<u8>,
    /// umask.
    pub umask: u32,
    /// Resource limits `(RLIMIT_*, soft, hard)`.
    pub rlimits: Vec<(i32, u64, u64)>,
    /// A terminal of this size (rows, columns), or none.
    pub tty: Option<(u16, u16)>,
    /// Run on this node.
    pub on: Option<String>,
    /// Re-run the task elsewhere up to this many times when its node is lost or
    /// evicts it (never after it consumed stdin).
    pub retries: u32,
    /// The task may run on the workstation itself, without a sandbox, when that is
    /// where it finishes soonest.
    pub local_ok: bool,
    /// More paths to hide from the task (the user's `[run] hide`), on top of the
    /// secrets the agent always hides.
    pub hide: Vec<Vec<u8>>,
    /// More directories the task may change files under (absolute, resolved on the
    /// workstation), on top of its working directory's subtree: `herd run --writes`,
    /// `[run] writable`. Checked on the workstation when the task's changes are
    /// committed; the helper is never trusted with it.
    pub writes: Vec<Vec<u8>>,
    /// Where the command's `PATH` search ends on the workstation, for a command named
    /// without a `/`: a hint the sandbox tries first, saving the search's misses; a
    /// miss on the hint falls back to the search.
    pub exe: Option<Vec<u8>>,
    /// The network the task asks for (`--net`). Whatever it asks, a task on a helper
    /// has a network namespace of its own and never reaches the helper's loopback.
    pub net: NetMode,
}

/// The network a task asks for (`herd run --net`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetMode {
    /// Nothing asked: outward (the LAN and beyond) where the helper has a user-mode
    /// network stack, loopback only where it has none, without a word on the task's
    /// stderr (which a compiler's `configure` check may read).
    #[default]
    Default,
    /// `--net outward`: outward; on a helper without a stack the task runs with
    /// loopback only and one line on its stderr says so.
    Outward,
    /// `--net none`: loopback only. Never run on the workstation itself (that has no
    /// sandbox).
    Loopback,
}

/// Workstation to helper, on a task's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskInput {
    /// Bytes for the task's stdin.
    Stdin(Vec<u8>),
    /// stdin is at its end.
    StdinEof,
    /// Deliver this signal to the task.
    Signal(i32),
    /// The terminal was resized (rows, columns).
    Resize(u16, u16),
    /// `herd run` to its agent only: the task it was told to run itself
    /// ([`RunEvent::RunHere`]) exited with this code (or 128 + signal).
    LocalDone(i32),
}

/// Helper to workstation, on a task's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutput {
    /// The task started on this node.
    Started {
        /// The node.
        node: String,
    },
    /// Bytes the task wrote to stdout (or to its terminal).
    Stdout(Vec<u8>),
    /// Bytes the task wrote to stderr.
    Stderr(Vec<u8>),
    /// The task's tree exited; its changes follow.
    Exited {
        /// Exit code, or 128 + signal.
        code: i32,
    },
    /// One change; a file's data follows as [`TaskOutput::Data`] frames.
    Change(fs::Change),
    /// A piece of the current file's data.
    Data(Vec<u8>),
    /// All changes were sent: the workstation may commit.
    Done,
    /// The helper evicted the task (its owner needed the host back, or memory ran
    /// short): the tree was killed and nothing will be committed.
    Evicted {
        /// Why, in one line.
        reason: String,
    },
    /// The helper could not run the task.
    Failed {
        /// Why, in one line.
        message: String,
        /// The exit code `herd run` should give (127 for a missing command).
        code: i32,
    },
}

impl PeerRequest {
    /// The role the *sender's* certificate must grant for the receiver to serve this
    /// request: submitting work needs `submit`; a file question comes from the node
    /// executing the task (checked against the task itself); membership and
    /// diagnostics need none.
    pub fn required_role(&self) -> Option<Role> {
        match self {
            PeerRequest::Enroll { .. }
            | PeerRequest::Ping
            | PeerRequest::Revocations
            | PeerRequest::Renew { .. } => None,
            PeerRequest::Run { .. } | PeerRequest::Drain(_) => Some(Role::Submit),
            PeerRequest::Fs { .. } => Some(Role::Exec),
        }
    }
}

/// The answer to a [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Enrollment succeeded.
    Enrolled {
        /// The node's certificate, signed by the cluster CA (DER).
        cert_der: Vec<u8>,
        /// The cluster CA certificate (DER).
        ca_der: Vec<u8>,
        /// The cluster's name.
        cluster: String,
        /// Roles granted.
        roles: Vec<Role>,
        /// Addresses of live members to contact.
        peers: Vec<SocketAddr>,
        /// The cluster's revocation list, if there is one: in force before the new
        /// node's first handshake (it checks the CA's signature first).
        revocations: Option<SignedRevocations>,
    },
    /// Answer to [`PeerRequest::Ping`].
    Pong {
        /// The answering node's name.
        name: String,
    },
    /// The request was refused.
    Error(RemoteError),
    /// Answer to [`PeerRequest::Revocations`]: the peer's newest list, if it holds one.
    Revocations(Option<SignedRevocations>),
    /// Answer to [`PeerRequest::Renew`].
    Renewed {
        /// The node's new certificate, signed by the cluster CA (DER).
        cert_der: Vec<u8>,
    },
}

/// Why a peer refused a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    /// Machine-readable category.
    pub kind: RemoteErrorKind,
    /// One line for people.
    pub message: String,
}

/// Categories of [`RemoteError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteErrorKind {
    /// The token is unknown or its secret does not match.
    BadToken,
    /// The token has expired.
    TokenExpired,
    /// The token was revoked.
    TokenRevoked,
    /// The token was used as many times as it allows (`herd token --uses`).
    TokenUsed,
    /// Another node (another key) is enrolled under the name asked for.
    NameTaken,
    /// Too many refused requests from this address: try again later.
    RateLimited,
    /// The caller's certificate lacks the role the request needs.
    Forbidden,
    /// This node cannot serve the request (for example it does not hold the CA key).
    Unavailable,
    /// The request was malformed.
    BadRequest,
    /// The key of the request was revoked (`herd revoke`): it enrolls and renews no more.
    Revoked,
    /// The name is not enrolled (any more: `herd remove`), so its certificate is not
    /// renewed: the node must enroll again with a token.
    NotEnrolled,
}

/// A request from the CLI to the agent on the same host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LocalRequest {
    /// The cluster as this agent sees it.
    Nodes,
    /// This agent's own status.
    Status,
    /// Run a command on the cluster. The connection then carries [`TaskInput`]
    /// frames to the agent and [`RunEvent`] frames back, ending with `Exit`.
    Run(RunSpec),
    /// How many tasks the cluster can usefully run at once.
    Slots,
    /// The tasks this workstation queued or runs.
    Ps,
    /// Kill a task of this workstation (queued or running): nothing of it is
    /// committed. Only its submitter or root may.
    Kill(u64),
    /// Make a node stop (`true`) or resume taking new work.
    Drain {
        /// The node (this one or another).
        node: String,
        /// Drain or undrain.
        drain: bool,
    },
    /// Revoke an enrolled node's key (`herd revoke`; only on the CA node, only root or
    /// the agent's own user): the CA signs a new revocation list, which spreads to every
    /// node. With `remove` the name is also freed (`herd remove`). Answered with
    /// [`LocalResponse::Revoked`].
    Revoke {
        /// The node.
        node: String,
        /// Also free the name for another key.
        remove: bool,
    },
}

/// What `herd revoke` or `herd remove` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeReport {
    /// The node.
    pub name: String,
    /// Its key's fingerprint (lowercase hex SHA-256).
    pub key: String,
    /// The version of the revocation list that holds it.
    pub version: u64,
    /// The key was revoked before (nothing new was signed).
    pub already: bool,
    /// The name was freed.
    pub removed: bool,
}

/// One task as `herd ps` shows it. Its JSON form is a documented output format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The workstation's id for it (what `herd kill` takes).
    pub id: u64,
    /// The command line (shortened).
    pub command: String,
    /// The submitter's uid.
    pub uid: u32,
    /// `queued` or `running`.
    pub state: String,
    /// Where it runs (none while queued).
    pub node: Option<String>,
    /// Seconds since it was submitted (queued) or started (running).
    pub secs: f64,
    /// Attempts lost so far (its node died, was cut off or evicted it).
    pub lost: u32,
}

/// The agent to `herd run`, after a `Run` request.
///
/// The first event is `Placed` (the task went to a node: start sending stdin and
/// signals), `RunHere` (run it yourself, then send [`TaskInput::LocalDone`]) or
/// `Error`. A task may be queued before that, until a slot frees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunEvent {
    /// The task was sent to this node.
    Placed {
        /// The node.
        node: String,
    },
    /// The workstation itself is where the task finishes soonest: `herd run` runs it
    /// directly, as the user, and reports its exit with [`TaskInput::LocalDone`].
    RunHere {
        /// The workstation's node name (for `HERD_NODE`).
        node: String,
    },
    /// The node running the task was lost or evicted it; the task runs again from the
    /// start (output already shown came from the lost attempt).
    Retrying {
        /// The node that was lost.
        node: String,
        /// Why, in one line.
        reason: String,
    },
    /// Output from the task.
    Output(TaskOutput),
    /// Files that changed on the workstation meanwhile: kept, and the task's version
    /// saved beside them.
    Conflicts(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    /// Changes of the task that were not written: outside its write scope, hidden, or
    /// through a symbolic link (path, why); and files whose set-user-ID, set-group-ID
    /// or sticky bits were dropped. Sent before `Exit`, at most once.
    NotWritten {
        /// The paths dropped, with the reason.
        dropped: Vec<(Vec<u8>, String)>,
        /// The paths written without their set-id and sticky bits.
        stripped: Vec<Vec<u8>>,
    },
    /// The task is over: exit with this code.
    Exit(i32),
    /// herd itself failed (no helper, helper lost, ...): one line; exit 255.
    Error(String),
}

/// The agent's answer to a [`LocalRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LocalResponse {
    /// Answer to [`LocalRequest::Nodes`].
    Nodes(Vec<NodeInfo>),
    /// Answer to [`LocalRequest::Status`].
    Status(AgentStatus),
    /// Answer to [`LocalRequest::Slots`].
    Slots(u32),
    /// Answer to [`LocalRequest::Ps`].
    Ps(Vec<TaskInfo>),
    /// The request was carried out.
    Done,
    /// Answer to [`LocalRequest::Revoke`].
    Revoked(RevokeReport),
    /// The request failed.
    Error(String),
}

/// Membership state of a node as shown to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; may be declared dead soon.
    Suspect,
    /// Declared failed (killed, crashed or cut off).
    Dead,
    /// Left the cluster gracefully.
    Left,
    /// Its certificate's key was revoked (`herd revoke`): refused at every handshake.
    Revoked,
}

impl MemberState {
    /// The state's name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
            MemberState::Revoked => "revoked",
        }
    }
}

/// One node as `herd nodes` shows it. Its JSON form is a documented output format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name (the certificate's common name).
    pub name: String,
    /// Address the node listens on.
    pub addr: SocketAddr,
    /// Membership state as seen by the answering agent.
    pub state: MemberState,
    /// Roles the node's certificate grants.
    pub roles: Vec<String>,
    /// Cores granted to herd.
    pub cpus: f32,
    /// Load average of the host.
    pub load: f32,
    /// Load of the host's owner (not herd's).
    pub owner_load: f32,
    /// Bytes of memory free for herd.
    pub mem_free: u64,
    /// Bytes of memory granted to herd.
    pub mem_total: u64,
    /// CPU speed score (1.0 is the reference core).
    pub speed: f32,
    /// herd tasks running there.
    pub tasks: u32,
    /// Incarnation of the node (changes on restart).
    pub incarnation: u32,
    /// Seconds since the state last changed.
    pub since_secs: f64,
    /// Whether this is the answering agent itself.
    pub local: bool,
    /// Whether the node takes new work now (alive, executes tasks, its owner is not
    /// busy and its memory not short).
    pub accepting: bool,
    /// Whether it was drained (`herd drain`, from any node); a node not accepting and
    /// not drained is held by its own policy.
    pub drained: bool,
    /// Reads of workstation files its cache answered, since it started.
    pub cache_hits: u64,
    /// Files it fetched from workstations, since it started.
    pub cache_misses: u64,
}

/// What `herd status` shows about the local agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Node name.
    pub name: String,
    /// Cluster name.
    pub cluster: String,
    /// Listening address.
    pub addr: SocketAddr,
    /// Roles of this node.
    pub roles: Vec<String>,
    /// Seconds since the agent started.
    pub uptime_secs: f64,
    /// herd version string.
    pub version: String,
    /// Tasks this agent has sent to helpers since it started.
    pub tasks_submitted: u64,
    /// File questions from helpers this agent has answered since it started.
    pub fs_requests: u64,
    /// Tasks of this workstation waiting for a slot.
    pub queued: u32,
    /// Tasks of this workstation running (here or on helpers).
    pub running: u32,
    /// Tasks running on this node as a helper.
    pub hosting: u32,
    /// The polite policy's state as a helper: `waiting` (the owner has not been idle
    /// long enough), `running` (takes work) or `suspended` (the owner is busy; tasks
    /// frozen).
    pub mode: String,
    /// The host owner's own CPU use, in cores (averaged).
    pub owner_load: f32,
    /// When this node's certificate expires (Unix seconds); it renews itself before.
    pub cert_expires: u64,
    /// The version of the revocation list this node holds (0: none).
    pub revocations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_request() {
        let req = PeerRequest::Enroll {
            token_id: [1; 8],
            secret: [2; 24],
            name: "h1".into(),
            csr_der: vec![3; 100],
        };
        let bytes = encode(&req).unwrap();
        assert_eq!(bytes[0], PROTOCOL_VERSION);
        assert_eq!(decode::<PeerRequest>(&bytes).unwrap(), req);
    }

    #[test]
    fn the_codec_holds_only_what_arrived_of_an_announced_frame() {
        use tokio_util::codec::{Decoder, Encoder};
        let mut c = codec();
        // A peer announces the largest frame and sends ten bytes of it.
        let mut src = BytesMut::new();
        src.put_u32(MAX_FRAME as u32);
        src.extend_from_slice(&[7; 10]);
        assert_eq!(c.decode(&mut src).unwrap(), None);
        assert!(src.capacity() < 4096, "reserved {} bytes", src.capacity());
        // Longer than allowed: refused at once.
        let mut big = BytesMut::new();
        big.put_u32(MAX_FRAME as u32 + 1);
        assert!(c.decode(&mut big).is_err());
        // Frames round-trip, two in one buffer.
        let mut dst = BytesMut::new();
        c.encode(Bytes::from_static(b"one"), &mut dst).unwrap();
        c.encode(Bytes::from_static(b""), &mut dst).unwrap();
        assert_eq!(c.decode(&mut dst).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(c.decode(&mut dst).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(c.decode(&mut dst).unwrap(), None);
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut bytes = encode(&LocalRequest::Nodes).unwrap().to_vec();
        bytes[0] = 99;
        assert!(matches!(
            decode::<LocalRequest>(&bytes),
            Err(ProtoError::Version { got: 99 })
        ));
    }

    #[test]
    fn empty_and_oversized_are_refused() {
        assert!(matches!(
            decode::<LocalRequest>(&[]),
            Err(ProtoError::Empty)
        ));
        let big = vec![PROTOCOL_VERSION; MAX_FRAME + 1];
        assert!(matches!(
            decode::<LocalRequest>(&big),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn roles_parse() {
        assert_eq!(
            Role::parse_list("exec,submit,exec"),
            Some(vec![Role::Submit, Role::Exec])
        );
        assert_eq!(Role::parse_list("exec,root"), None);
        assert_eq!(Role::join(&[Role::Submit, Role::Exec]), "submit,exec");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<PeerRequest>(&data);
            let _ = decode::<PeerResponse>(&data);
            let _ = decode::<LocalRequest>(&data);
            let _ = decode::<LocalResponse>(&data);
        }
    }
}
