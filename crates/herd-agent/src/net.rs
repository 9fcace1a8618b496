//! The QUIC transport between nodes.
//!
//! One UDP socket per agent carries everything: the agent's quinn endpoint both
//! accepts connections and opens them from its listening port, so a peer's
//! connection arrives from the peer's own listening address and either side can use
//! it. Every connection is TLS 1.3 with the cluster CA on both sides (see
//! `herd-pki`); a client with no certificate is only allowed to enroll.
//!
//! Membership packets travel as QUIC datagrams (unreliable, like SWIM expects).
//! Requests travel on bidirectional streams as one frame each way: a 4-byte
//! big-endian length, then a `herd-proto` payload. A frame over
//! [`herd_proto::MAX_FRAME`] or one that does not decode closes that stream (and the
//! connection, for datagrams that do not decode), never the agent.
//!
//! **Bounds on a peer.** A frame's buffer grows as its bytes arrive (never allocated
//! from the announced length); once a frame has started, each piece of it must follow
//! within [`STALL_TIMEOUT`], and a request must arrive whole within
//! [`REQUEST_TIMEOUT`] of its stream being opened ([`read_request`]). A connection may
//! have [`MAX_STREAMS`] bidirectional streams open at once (no unidirectional ones),
//! and the bytes it may have in flight unread are bounded by the receive windows
//! ([`STREAM_WINDOW`] per stream, [`CONNECTION_WINDOW`] per connection). At most
//! [`MAX_CONNS_PER_ADDR`] connections from one IP address are accepted at once
//! ([`ConnLimit`]).
//!
//! **Whom a connection reaches.** A connection made for a task or a request to a named
//! node goes through [`connect_to`] (or [`reuse_or_connect`]), which checks that the
//! peer's certificate names that node and closes the connection if not: an address
//! taken over by another node gets nothing.
//!
//! **Whom a handshake admits.** A running agent's endpoint is built from a
//! [`herd_pki::Trust`] ([`endpoint_with`]): each handshake presents the node's current
//! certificate (renewal swaps it in for new connections) and refuses a peer whose key
//! the CA revoked, with TLS's `certificate_revoked` alert; an expired certificate gets
//! `certificate_expired`. [`refusal`] reads which one a failed connection got.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herd_pki::{NodeIdentity, PeerCert, Trust};
use herd_proto::{MAX_FRAME, ProtoError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AgentError;

/// Idle time after which a silent connection is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive interval of connections this node opens.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Time allowed for a connection handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Once a frame started, how long the next piece of it may take.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may take to arrive whole on a stream the peer opened.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bidirectional streams a peer may have open on one connection at once.
pub const MAX_STREAMS: u32 = 128;
/// Bytes a peer may send ahead on one stream before it is read.
pub const STREAM_WINDOW: u32 = 2 << 20;
/// Bytes a peer may send ahead on one connection, all streams together.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// Connections accepted from one IP address at once.
pub const MAX_CONNS_PER_ADDR: usize = 32;
/// The most a frame's buffer grows by per read.
const CHUNK: usize = 64 * 1024;

fn transport(keep_alive: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(5_000))),
    ));
    if keep_alive {
        t.keep_alive_interval(Some(KEEP_ALIVE));
    }
    t.datagram_receive_buffer_size(Some(256 * 1024));
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    // herd opens none.
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(CONNECTION_WINDOW.into());
    Arc::new(t)
}

fn net_err(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Net(format!("{what}: {e}"))
}

/// Client configuration for node-to-node connections.
pub fn client_config(identity: &NodeIdentity) -> Result<quinn::ClientConfig, AgentError> {
    let tls = identity.client_config()?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| net_err("tls", e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport(true));
    Ok(cfg)
}

/// Client configuration for enrollment, trusting only the CA the token pins.
pub fn enroll_client_config(ca_fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, AgentError> {
    let tls = herd_pki::enroll_client_config(ca_fingerprint)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| net_err("tls", e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport(false));
    Ok(cfg)
}

/// Opens an endpoint on `listen` with `identity`, accepting and opening connections,
/// refusing no key but what the CA check refuses (tools and tests; the agent uses
/// [`endpoint_with`]).
pub fn endpoint(
    identity: &NodeIdentity,
    listen: SocketAddr,
) -> Result<quinn::Endpoint, AgentError> {
    endpoint_with(&Trust::new(identity)?, listen)
}

/// Opens the agent's endpoint on `listen`, accepting and opening connections, every
/// handshake asking `trust` for the certificate to present and the keys to refuse.
pub fn endpoint_with(trust: &Trust, listen: SocketAddr) -> Result<quinn::Endpoint, AgentError> {
    let tls = trust.server_config()?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| net_err("tls", e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport(false));
    let mut ep = quinn::Endpoint::server(server, listen)
        .map_err(|e| AgentError::Net(format!("cannot listen on {listen}: {e}")))?;
    let tls = trust.client_config()?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| net_err("tls", e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport(true));
    ep.set_default_client_config(client);
    Ok(ep)
}

/// Why a handshake refused a certificate, as a failed connection says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its key was revoked (TLS alert `certificate_revoked`).
    Revoked,
    /// It expired (TLS alert `certificate_expired`).
    Expired,
    /// Another TLS alert (its code).
    Other(u8),
}

/// TLS alert codes (RFC 8446, 6.2).
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;

/// The TLS refusal behind a connection's end, whichever side refused: a QUIC
/// connection closed with a crypto error code carries the TLS alert.
pub fn refusal(e: &quinn::ConnectionError) -> Option<Refusal> {
    let code = match e {
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        _ => return None,
    };
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    Some(match (code & 0xff) as u8 {
        ALERT_CERTIFICATE_REVOKED => Refusal::Revoked,
        ALERT_CERTIFICATE_EXPIRED => Refusal::Expired,
        other => Refusal::Other(other),
    })
}

/// A connection's end in words, naming a revoked or expired certificate as such.
pub fn explain(e: &quinn::ConnectionError) -> String {
    match refusal(e) {
        Some(Refusal::Revoked) => format!("the certificate was revoked ({e})"),
        Some(Refusal::Expired) => format!("the certificate has expired ({e})"),
        _ => e.to_string(),
    }
}

/// The certificate the peer presented (DER), if any.
pub fn peer_cert_der(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    Some(certs.first()?.to_vec())
}

/// The key fingerprint of the peer's certificate (as revocation lists name keys).
pub fn peer_key(conn: &quinn::Connection) -> Option<String> {
    herd_pki::key_fingerprint_of_cert(&peer_cert_der(conn)?).ok()
}

/// A client-only endpoint on an ephemeral port (for enrollment).
pub fn client_endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, AgentError> {
    quinn::Endpoint::client(bind).map_err(|e| net_err("cannot open a UDP socket", e))
}

/// What the peer's certificate says, if it presented one.
pub fn peer_of(conn: &quinn::Connection) -> Option<PeerCert> {
    herd_pki::peer_cert(&peer_cert_der(conn)?).ok()
}

/// Writes one frame (length + payload) to a stream.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), AgentError> {
    let payload = herd_proto::encode(msg)?;
    let len = (payload.len() as u32).to_be_bytes();
    send.write_all(&len).await.map_err(|e| net_err("send", e))?;
    send.write_all(&payload)
        .await
        .map_err(|e| net_err("send", e))?;
    Ok(())
}

/// Reads one frame from a stream and decodes it. The length is checked before
/// anything is allocated, and the buffer grows as the payload arrives. Waiting for a
/// frame to start is not bounded here (an answer may take its time); once it started,
/// each piece must come within [`STALL_TIMEOUT`].
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, AgentError> {
    let stalled = || {
        AgentError::Net(format!(
            "receive: the peer stopped sending in the middle of a frame ({} s)",
            STALL_TIMEOUT.as_secs()
        ))
    };
    let ended = || AgentError::Net("receive: the stream ended in the middle of a frame".into());
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        let read = recv.read(&mut len[got..]);
        let n = if got == 0 {
            read.await
        } else {
            tokio::time::timeout(STALL_TIMEOUT, read)
                .await
                .map_err(|_| stalled())?
        }
        .map_err(|e| net_err("receive", e))?
        .ok_or_else(ended)?;
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge {
            len,
            max: MAX_FRAME,
        }
        .into());
    }
    let mut buf = Vec::with_capacity(len.min(CHUNK));
    while buf.len() < len {
        let want = (len - buf.len()).min(CHUNK);
        let chunk = tokio::time::timeout(STALL_TIMEOUT, recv.read_chunk(want, true))
            .await
            .map_err(|_| stalled())?
            .map_err(|e| net_err("receive", e))?
            .ok_or_else(ended)?;
        buf.extend_from_slice(&chunk.bytes);
    }
    Ok(herd_proto::decode(&buf)?)
}

/// Reads the request on a stream a peer opened: [`read_frame`], the whole frame due
/// within [`REQUEST_TIMEOUT`].
pub async fn read_request<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, AgentError> {
    tokio::time::timeout(REQUEST_TIMEOUT, read_frame(recv))
        .await
        .map_err(|_| {
            AgentError::Net(format!(
                "receive: no whole request within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
        })?
}

/// Whether `conn`'s peer presented a certificate naming `name`.
pub fn peer_is(conn: &quinn::Connection, name: &str) -> bool {
    peer_of(conn).is_some_and(|p| p.name == name)
}

/// Checks that the peer of `conn` is the node `expected` (its certificate's name);
/// if not, closes the connection and says whom it reached instead.
pub fn check_peer(conn: &quinn::Connection, expected: &str) -> Result<(), AgentError> {
    let addr = conn.remote_address();
    match peer_of(conn) {
        Some(p) if p.name == expected => Ok(()),
        found => {
            conn.close(4u32.into(), b"not the node asked for");
            Err(AgentError::Net(match found {
                Some(p) => format!(
                    "the node at {addr} is {:?}, not {expected:?}: its certificate names another node",
                    p.name
                ),
                None => format!("the node at {addr} presented no certificate"),
            }))
        }
    }
}

/// Connects to the node `expected` at `addr` and checks, after the handshake, that the
/// peer's certificate names it; a connection to any other node is closed and is an
/// error. Bounded by [`CONNECT_TIMEOUT`].
pub async fn connect_to(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    expected: &str,
) -> Result<quinn::Connection, AgentError> {
    let connecting = endpoint
        .connect(addr, herd_pki::SERVER_NAME)
        .map_err(|e| net_err("connect", e))?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| AgentError::Net(format!("connect: {addr} did not answer in time")))?
        .map_err(|e| net_err("connect", e))?;
    check_peer(&conn, expected)?;
    Ok(conn)
}

/// `cached` if it is open and its peer is `expected`, else a new connection through
/// [`connect_to`]. A cached connection to another node is left alone (it may serve
/// membership) but not used.
pub async fn reuse_or_connect(
    endpoint: &quinn::Endpoint,
    cached: Option<quinn::Connection>,
    addr: SocketAddr,
    expected: &str,
) -> Result<quinn::Connection, AgentError> {
    if let Some(c) = cached.filter(|c| c.close_reason().is_none() && peer_is(c, expected)) {
        return Ok(c);
    }
    connect_to(endpoint, addr, expected).await
}

/// Counts accepted connections per IP address, up to a limit.
#[derive(Clone, Debug)]
pub struct ConnLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnLimit {
    /// At most `max` connections per IP address.
    pub fn new(max: usize) -> ConnLimit {
        ConnLimit {
            max,
            open: Default::default(),
        }
    }

    /// A place for one more connection from `ip`, if it has fewer than the limit.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnSlot> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            ip,
            open: self.open.clone(),
        })
    }

    /// Connections from `ip` admitted and not yet dropped.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .map(|o| o.get(&ip).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Default for ConnLimit {
    fn default() -> Self {
        ConnLimit::new(MAX_CONNS_PER_ADDR)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Sends a request on a new stream of `conn` and waits for the one-frame answer.
pub async fn request<Q: Serialize, A: DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Q,
) -> Result<A, AgentError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| net_err("open stream", e))?;
    write_frame(&mut send, req).await?;
    let _ = send.finish();
    read_frame(&mut recv).await
}

/// Sends a datagram if the connection allows it; returns whether it went out.
pub fn send_datagram(conn: &quinn::Connection, data: Bytes) -> bool {
    conn.send_datagram(data).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_per_address_are_capped_and_given_back() {
        let limit = ConnLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = limit.admit(a).unwrap();
        let _s2 = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none());
        let _s3 = limit.admit(b).unwrap();
        drop(s1);
        assert_eq!(limit.open_from(a), 1);
        let _s4 = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none());
    }
}
