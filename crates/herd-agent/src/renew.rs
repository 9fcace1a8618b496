//! Certificates that renew themselves, both sides.
//!
//! A node certificate lives as long as the cluster's `ca.toml` says (30 days by
//! default). From the middle of its life on (`herd_pki::renewal`) the agent asks for a
//! new one: a node without the CA key sends `PeerRequest::Renew` to the CA node over
//! their mutually authenticated connection ([`renew_remote`]), with a certificate
//! request for the key it already holds; the CA node renews its own certificate itself
//! ([`renew_locally`]). The new certificate is written to `node.crt` and handed to the
//! endpoint's [`herd_pki::Trust`], so new connections present it while open ones carry
//! on: the node never leaves the cluster for it.
//!
//! The CA node ([`serve_renew`]) renews only a certificate that is still valid (the
//! connection proved the key; the certificate is checked again, since a connection can
//! outlive it), for the name and key `nodes.toml` holds (a removed node is refused with
//! [`RemoteErrorKind::NotEnrolled`]), whose key is not revoked
//! ([`RemoteErrorKind::Revoked`]), with the roles the registry grants. A node that
//! missed its renewal window altogether (it was off) finds its certificate expired at
//! start and must enroll again with a token (`herd agent --join`, which keeps its key
//! and name: `enroll::enroll_again`).

use std::net::SocketAddr;

use herd_pki::{NodeIdentity, PeerCert, Validity};
use herd_proto::{PeerRequest, PeerResponse, RemoteError, RemoteErrorKind};

use crate::state::StateDir;
use crate::{AgentError, net, unix_now};

fn refuse(kind: RemoteErrorKind, message: String) -> PeerResponse {
    PeerResponse::Error(RemoteError { kind, message })
}

/// Serves a renewal request from `peer` (whose certificate on this connection is
/// `peer_cert_der`) on the CA node. Blocking (file I/O): run it off the event loop.
pub fn serve_renew(
    dir: &StateDir,
    peer: &PeerCert,
    peer_cert_der: &[u8],
    csr_der: &[u8],
) -> PeerResponse {
    match decide(dir, peer, peer_cert_der, csr_der) {
        Ok(cert_der) => {
            tracing::info!(node = %peer.name, "renewed a node's certificate");
            PeerResponse::Renewed { cert_der }
        }
        Err((kind, message)) => {
            tracing::warn!(node = %peer.name, "refused to renew a certificate: {message}");
            refuse(kind, message)
        }
    }
}

fn decide(
    dir: &StateDir,
    peer: &PeerCert,
    peer_cert_der: &[u8],
    csr_der: &[u8],
) -> Result<Vec<u8>, (RemoteErrorKind, String)> {
    let internal = |e: AgentError| (RemoteErrorKind::Unavailable, format!("renewal failed: {e}"));
    if !dir.has_ca() {
        return Err((
            RemoteErrorKind::Unavailable,
            "this node does not hold the cluster CA".into(),
        ));
    }
    let ca = dir.ca().map_err(internal)?;
    let now = unix_now();
    herd_pki::verify_node_cert(ca.cert_der(), peer_cert_der, now).map_err(|_| {
        (
            RemoteErrorKind::Forbidden,
            format!(
                "the certificate of {} is no longer valid: it must enroll again with a token",
                peer.name
            ),
        )
    })?;
    let key = herd_pki::key_fingerprint_of_cert(peer_cert_der)
        .map_err(|e| internal(AgentError::Pki(e)))?;
    let asked = herd_pki::key_fingerprint_of_csr(csr_der).map_err(|_| {
        (
            RemoteErrorKind::BadRequest,
            "the certificate request is malformed or its signature is wrong".to_string(),
        )
    })?;
    if asked != key {
        return Err((
            RemoteErrorKind::BadRequest,
            "a renewal keeps the key: the request is for another key than the certificate's".into(),
        ));
    }
    let revoked = match dir.revocations().map_err(internal)? {
        Some(s) => herd_pki::verify_revocations(ca.cert_der(), &s)
            .map_err(|e| internal(AgentError::Net(format!("revoked.list: {e}"))))?
            .contains_key(&key),
        None => false,
    };
    let nodes = dir.nodes().map_err(internal)?;
    let record = nodes.get(&peer.name);
    if revoked || record.is_some_and(|r| r.revoked.is_some() && r.key == key) {
        return Err((
            RemoteErrorKind::Revoked,
            format!(
                "the key of {} was revoked (`herd revoke`): its certificate is not renewed",
                peer.name
            ),
        ));
    }
    let own = dir.node_file().map_err(internal)?.name;
    let roles = match record {
        Some(r) if r.key == key => r.roles.clone(),
        // The CA's own node, in a cluster made before the registry existed.
        None if peer.name == own => peer.roles.clone(),
        _ => {
            return Err((
                RemoteErrorKind::NotEnrolled,
                format!(
                    "{} is not enrolled under this key any more (`herd remove`): it must enroll again with a token",
                    peer.name
                ),
            ));
        }
    };
    let validity = Validity::new(now, dir.ca_file().map_err(internal)?.cert_lifetime());
    ca.sign_csr(csr_der, &peer.name, &roles, validity)
        .map_err(|e| internal(AgentError::Pki(e)))
}

/// The CA node renews its own certificate: signs a new one for its key, writes it and
/// returns the identity. Blocking (file I/O).
pub fn renew_locally(dir: &StateDir) -> Result<NodeIdentity, AgentError> {
    let ca = dir.ca()?;
    let identity = dir.identity()?;
    let info = identity.info()?;
    let csr = herd_pki::make_csr_for_key(&identity.key_der, &info.name)?;
    let validity = Validity::new(unix_now(), dir.ca_file()?.cert_lifetime());
    let cert_der = ca.sign_csr(&csr, &info.name, &info.roles, validity)?;
    let renewed = NodeIdentity {
        cert_der,
        ..identity
    };
    dir.save_cert(&renewed.cert_der)?;
    Ok(renewed)
}

/// Asks the CA node `ca` (at `addr`; `conn` is an open connection to it, if any) to
/// renew `identity`'s certificate. Checks the answer (the CA's, for our name and
/// key, valid now), writes it to `node.crt` and returns the new identity.
pub async fn renew_remote(
    endpoint: &quinn::Endpoint,
    conn: Option<quinn::Connection>,
    (ca, addr): (&str, SocketAddr),
    dir: &StateDir,
    identity: &NodeIdentity,
) -> Result<NodeIdentity, AgentError> {
    let me = identity.info()?;
    let csr_der = herd_pki::make_csr_for_key(&identity.key_der, &me.name)?;
    let conn = net::reuse_or_connect(endpoint, conn, addr, ca).await?;
    let cert_der = match net::request(&conn, &PeerRequest::Renew { csr_der }).await? {
        PeerResponse::Renewed { cert_der } => cert_der,
        PeerResponse::Error(e) => return Err(AgentError::Net(format!("{ca}: {}", e.message))),
        other => {
            return Err(AgentError::Net(format!(
                "{ca}: unexpected answer {other:?}"
            )));
        }
    };
    let got = herd_pki::verify_node_cert(&identity.ca_der, &cert_der, unix_now())
        .map_err(|e| AgentError::Net(format!("{ca} answered with a bad certificate: {e}")))?;
    let same_key = herd_pki::key_fingerprint_of_cert(&cert_der).ok()
        == herd_pki::key_fingerprint_of_cert(&identity.cert_der).ok();
    if got.name != me.name || got.cluster != me.cluster || !same_key {
        return Err(AgentError::Net(format!(
            "{ca} answered with a certificate for another node"
        )));
    }
    let renewed = NodeIdentity {
        cert_der,
        ..identity.clone()
    };
    let d = dir.clone();
    let cert = renewed.cert_der.clone();
    tokio::task::spawn_blocking(move || d.save_cert(&cert))
        .await
        .map_err(|e| AgentError::Net(e.to_string()))??;
    Ok(renewed)
}
