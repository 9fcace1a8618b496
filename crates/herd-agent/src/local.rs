//! The CLI-to-agent API on a Unix socket in the state directory.
//!
//! One request and one answer per connection, framed as everywhere in herd (4-byte
//! length, version byte, postcard). The agent learns the caller's uid from the socket
//! (`SO_PEERCRED`) and hands it to the main loop with the request; a socket in a
//! per-user state directory is reachable only by its owner (the directory is 0700),
//! a system agent's socket is open to every local user, who then act as themselves.
//! A user (other than root) holds at most [`MAX_WAITING_PER_UID`] connections that have
//! not sent their request yet, and an accept loop out of descriptors rests rather than
//! spin.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herd_proto::{LocalRequest, LocalResponse};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use crate::AgentError;
use crate::state::StateDir;

/// A CLI connection after its first frame.
pub type CliStream = Framed<UnixStream, herd_proto::Codec>;

/// A request from the CLI as the main loop sees it.
pub struct LocalCall {
    /// The request.
    pub request: LocalRequest,
    /// The caller's uid, from the socket.
    pub uid: u32,
    /// The caller's gid, from the socket.
    pub gid: u32,
    /// The caller's pid, from the socket.
    pub pid: Option<i32>,
    /// The caller's supplementary groups, from the socket (`SO_PEERGROUPS`; `None`
    /// where the kernel cannot say).
    pub groups: Option<Vec<u32>>,
    /// Where the answer goes (one-shot requests).
    pub reply: oneshot::Sender<LocalResponse>,
    /// The connection itself, for requests that go on talking (`Run`).
    pub stream: Option<CliStream>,
}

/// Binds the agent's socket (replacing a stale one: the caller holds the state lock).
pub fn bind(dir: &StateDir, world_accessible: bool) -> Result<UnixListener, AgentError> {
    let path = dir.socket_path();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| AgentError::io(&path, e))?;
    if world_accessible {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| AgentError::io(&path, e))?;
    }
    Ok(listener)
}

/// Connections one user other than root may hold open before sending their request.
/// A local user holding more would take the agent's descriptors from everyone else;
/// beyond it a connection is refused (one error frame), unless its whole request has
/// already arrived (it is served at once: a burst of `herd run`s is not refused).
pub const MAX_WAITING_PER_UID: usize = 64;

/// How long the accept loop rests when the process (or the system) is out of
/// descriptors: `accept` would fail again at once, with the connection still waiting.
const OUT_OF_DESCRIPTORS_BACKOFF: Duration = Duration::from_millis(100);

/// How often a repeated complaint is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts CLI connections forever, forwarding each request to the main loop.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<LocalCall>) {
    let waiting = Arc::new(Mutex::new(HashMap::new()));
    let (mut accept_log, mut refuse_log) = (Throttled::default(), Throttled::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(&e, &mut accept_log).await;
                continue;
            }
        };
        let (uid, gid, pid) = match stream.peer_cred() {
            Ok(c) => (c.uid(), c.gid(), c.pid()),
            Err(_) => continue,
        };
        let Some(slot) = Waiting::admit(&waiting, uid, &stream) else {
            refuse(&stream, uid, &mut refuse_log);
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let groups = peer_groups(&stream);
            let mut framed = Framed::new(stream, herd_proto::codec());
            let Ok(Some(Ok(frame))) =
                tokio::time::timeout(Duration::from_secs(10), framed.next()).await
            else {
                return;
            };
            // The request arrived: the connection no longer counts against its user.
            drop(slot);
            let resp = match herd_proto::decode::<LocalRequest>(&frame) {
                Ok(request) => {
                    // `Run` goes on talking on this connection: hand it over.
                    let talks_on = matches!(request, LocalRequest::Run(_));
                    let (reply, rx) = oneshot::channel();
                    let call = LocalCall {
                        request,
                        uid,
                        gid,
                        pid,
                        groups,
                        reply,
                        stream: None,
                    };
                    if talks_on {
                        let _ = tx
                            .send(LocalCall {
                                stream: Some(framed),
                                ..call
                            })
                            .await;
                        return;
                    }
                    if tx.send(call).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(r) => r,
                        Err(_) => LocalResponse::Error("the agent is shutting down".into()),
                    }
                }
                Err(e) => LocalResponse::Error(format!("bad request: {e}")),
            };
            if let Ok(bytes) = herd_proto::encode(&resp) {
                let _ = framed.send(bytes).await;
            }
        });
    }
}

/// `accept` failed: rest a moment rather than try again at once (out of descriptors,
/// the waiting connection makes the listener ready again at once, and the loop would
/// spin a core), and say so now and then.
async fn accept_failed(e: &std::io::Error, log: &mut Throttled) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) {
        // That connection is gone; the next one may be fine.
        return;
    }
    let scarce = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if let Some(more) = log.due() {
        if scarce {
            tracing::warn!(
                "cannot accept CLI connections: {e} ({more} more like it since the last warning); \
                 retrying every {} ms",
                OUT_OF_DESCRIPTORS_BACKOFF.as_millis()
            );
        } else {
            tracing::warn!(
                "cannot accept a CLI connection: {e} ({more} more like it since the last warning)"
            );
        }
    }
    let rest = if scarce {
        OUT_OF_DESCRIPTORS_BACKOFF
    } else {
        Duration::from_millis(10)
    };
    tokio::time::sleep(rest).await;
}

/// Refuses a connection of `uid`, which holds too many: one error frame, written
/// without waiting (a small frame fits an empty socket buffer), then closed.
fn refuse(stream: &UnixStream, uid: u32, log: &mut Throttled) {
    use std::os::fd::AsRawFd;
    use tokio_util::codec::Encoder;
    if let Some(more) = log.due() {
        tracing::warn!(
            "uid {uid} holds {MAX_WAITING_PER_UID} connections to the agent that sent no \
             request yet; refusing more ({more} more refused since the last warning)"
        );
    }
    let msg = format!(
        "too many connections to the agent from uid {uid} are waiting to send their \
         request (at most {MAX_WAITING_PER_UID}); close some and try again"
    );
    let mut buf = bytes::BytesMut::new();
    let Ok(payload) = herd_proto::encode(&LocalResponse::Error(msg)) else {
        return;
    };
    if herd_proto::codec().encode(payload, &mut buf).is_err() {
        return;
    }
    // SAFETY: sends from a buffer we own; MSG_DONTWAIT: never blocks; MSG_NOSIGNAL: a
    // closed peer is an error, not SIGPIPE.
    unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// Connections per uid (other than root) that have not sent their request yet.
type WaitingCounts = Arc<Mutex<HashMap<u32, usize>>>;

/// One connection's place among its user's waiting ones; given back when dropped.
struct Waiting {
    counts: WaitingCounts,
    uid: u32,
}

impl Waiting {
    /// A place for a connection of `uid`, or `None` if it must be refused.
    fn admit(counts: &WaitingCounts, uid: u32, stream: &UnixStream) -> Option<Waiting> {
        if uid == 0 {
            // Root can take the agent's descriptors in many other ways.
            return Some(Waiting {
                counts: counts.clone(),
                uid,
            });
        }
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(uid).or_insert(0);
        if *n >= MAX_WAITING_PER_UID && !request_arrived(stream) {
            return None;
        }
        *n += 1;
        Some(Waiting {
            counts: counts.clone(),
            uid,
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.uid == 0 {
            return;
        }
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// Whether a whole frame already waits on `stream` (peeked, not read).
fn request_arrived(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let mut head = [0u8; 4];
    // SAFETY: peeks at most 4 bytes into `head`, without waiting.
    let r = unsafe {
        libc::recv(
            fd,
            head.as_mut_ptr().cast(),
            head.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if r != 4 {
        return false;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } != 0 {
        return false;
    }
    queued as u64 >= 4 + u64::from(u32::from_be_bytes(head))
}

/// Says a repeated thing at most once per [`LOG_EVERY`].
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    unsaid: u64,
}

impl Throttled {
    /// `Some(times unsaid since last said)` when it is time to say it again.
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.unsaid += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.unsaid))
    }
}

/// The supplementary groups of the process that connected `stream`, as they were when
/// it connected (`SO_PEERGROUPS`, Linux 4.13): one system call, where reading
/// `/proc/PID/status` costs the kernel a whole report. `None` if the kernel cannot say.
fn peer_groups(stream: &UnixStream) -> Option<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`, and `len` back.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            return Some(groups);
        }
        // ERANGE: `len` says how much room the list needs.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || n <= groups.len()
        {
            return None;
        }
        groups.resize(n, 0);
    }
    None
}

/// Sends one request to the agent of `dir` and waits for the answer.
pub async fn call(dir: &StateDir, req: &LocalRequest) -> Result<LocalResponse, AgentError> {
    let path = dir.socket_path();
    let stream = connect(&path, dir).await?;
    let mut framed = Framed::new(stream, herd_proto::codec());
    if let Err(e) = framed.send(herd_proto::encode(req)?).await {
        // A refused connection was told why before the agent closed it.
        return match framed.next().await {
            Some(Ok(frame)) => Ok(herd_proto::decode(&frame)?),
            _ => Err(AgentError::io(&path, e)),
        };
    }
    match framed.next().await {
        Some(Ok(frame)) => Ok(herd_proto::decode(&frame)?),
        Some(Err(e)) => Err(AgentError::io(&path, e)),
        None => Err(AgentError::Net("the agent closed the connection".into())),
    }
}

async fn connect(path: &Path, dir: &StateDir) -> Result<UnixStream, AgentError> {
    UnixStream::connect(path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            if dir.has_cluster() || dir.root().exists() {
                AgentError::NotRunning {
                    dir: dir.root().to_path_buf(),
                }
            } else {
                AgentError::NoCluster {
                    dir: dir.root().to_path_buf(),
                }
            }
        }
        _ => AgentError::io(path, e),
    })
}
