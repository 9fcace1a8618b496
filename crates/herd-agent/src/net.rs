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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herd_pki::{NodeIdentity, PeerCert};
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
    t.max_concurrent_bidi_streams(256u32.into());
    t.max_concurrent_uni_streams(64u32.into());
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

/// Opens the agent's endpoint on `listen`, accepting and opening connections.
pub fn endpoint(
    identity: &NodeIdentity,
    listen: SocketAddr,
) -> Result<quinn::Endpoint, AgentError> {
    let tls = identity.server_config()?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| net_err("tls", e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport(false));
    let mut ep = quinn::Endpoint::server(server, listen)
        .map_err(|e| AgentError::Net(format!("cannot listen on {listen}: {e}")))?;
    ep.set_default_client_config(client_config(identity)?);
    Ok(ep)
}

/// A client-only endpoint on an ephemeral port (for enrollment).
pub fn client_endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, AgentError> {
    quinn::Endpoint::client(bind).map_err(|e| net_err("cannot open a UDP socket", e))
}

/// What the peer's certificate says, if it presented one.
pub fn peer_of(conn: &quinn::Connection) -> Option<PeerCert> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    herd_pki::peer_cert(certs.first()?).ok()
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

/// Reads one frame from a stream and decodes it. The length is checked before any
/// allocation.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, AgentError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| net_err("receive", e))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge {
            len,
            max: MAX_FRAME,
        }
        .into());
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| net_err("receive", e))?;
    Ok(herd_proto::decode(&buf)?)
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
