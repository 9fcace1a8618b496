//! The CLI-to-agent API on a Unix socket in the state directory.
//!
//! One request and one answer per connection, framed as everywhere in herd (4-byte
//! length, version byte, postcard). The agent learns the caller's uid from the socket
//! (`SO_PEERCRED`) and hands it to the main loop with the request; a socket in a
//! per-user state directory is reachable only by its owner (the directory is 0700),
//! a system agent's socket is open to every local user, who then act as themselves.

use std::path::Path;
use std::time::Duration;

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

/// Accepts CLI connections forever, forwarding each request to the main loop.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<LocalCall>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (uid, gid, pid) = match stream.peer_cred() {
                Ok(c) => (c.uid(), c.gid(), c.pid()),
                Err(_) => return,
            };
            let groups = peer_groups(&stream);
            let mut framed = Framed::new(stream, herd_proto::codec());
            let Ok(Some(Ok(frame))) =
                tokio::time::timeout(Duration::from_secs(10), framed.next()).await
            else {
                return;
            };
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
    framed
        .send(herd_proto::encode(req)?)
        .await
        .map_err(|e| AgentError::io(&path, e))?;
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
