//! Joining a cluster with a token, both sides.
//!
//! The joining node ([`enroll`]) parses the token, refuses an expired one at once,
//! makes a key and a certificate request, and contacts the addresses the token lists
//! (then `--peer` addresses) over QUIC, trusting the server only if it proves to hold
//! a certificate of the CA whose fingerprint the token carries. It sends the token's
//! id and secret with the request; the CA node ([`serve_enroll`]) checks them against
//! `tokens.toml`, signs the request with the token's roles and answers with the
//! certificate. Only then does the joining node write anything to its state
//! directory, so a refused token enrolls nothing.

use std::net::SocketAddr;
use std::time::Duration;

use herd_proto::{PeerRequest, PeerResponse, RemoteError, RemoteErrorKind, Token};

use crate::state::{NODE_FILE_VERSION, NodeFile, StateDir};
use crate::{AgentError, net, unix_now};

/// Parses a token and checks its expiry locally.
pub fn parse_token(s: &str) -> Result<Token, AgentError> {
    let token = Token::decode(s).map_err(|e| AgentError::Token(e.to_string()))?;
    if token.expires.is_some_and(|e| unix_now() >= e) {
        return Err(AgentError::Token(format!(
            "join token {} has expired: make a new one with `herd token` on the cluster's first node",
            token.id_hex()
        )));
    }
    Ok(token)
}

/// Enrolls this node into the token's cluster and writes its identity to `dir`.
pub async fn enroll(
    dir: &StateDir,
    token: &Token,
    name: &str,
    listen: SocketAddr,
    extra_peers: &[SocketAddr],
) -> Result<(), AgentError> {
    herd_pki::check_name(name)?;
    let (key_der, csr_der) = herd_pki::make_csr(name)?;
    let endpoint = net::client_endpoint(if listen.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    })?;
    let cfg = net::enroll_client_config(token.ca_fingerprint)?;
    let mut addrs: Vec<SocketAddr> = token.addrs.clone();
    addrs.extend(extra_peers.iter().copied());
    addrs.dedup();
    let mut failures = Vec::new();
    for addr in &addrs {
        let attempt = async {
            let conn = endpoint
                .connect_with(cfg.clone(), *addr, herd_pki::SERVER_NAME)
                .map_err(|e| AgentError::Net(e.to_string()))?
                .await
                .map_err(|e| classify_connect_error(*addr, e))?;
            let req = PeerRequest::Enroll {
                token_id: token.id,
                secret: token.secret,
                name: name.to_string(),
                csr_der: csr_der.clone(),
            };
            let resp: PeerResponse = net::request(&conn, &req).await?;
            conn.close(0u32.into(), b"enrolled");
            Ok::<_, AgentError>(resp)
        };
        let resp = match tokio::time::timeout(Duration::from_secs(8), attempt).await {
            Ok(Ok(r)) => r,
            Ok(Err(e @ AgentError::Token(_))) => return Err(e),
            Ok(Err(e)) => {
                failures.push(format!("{addr}: {e}"));
                continue;
            }
            Err(_) => {
                failures.push(format!("{addr}: timed out"));
                continue;
            }
        };
        match resp {
            PeerResponse::Enrolled {
                cert_der,
                ca_der,
                cluster,
                peers,
                ..
            } => {
                if herd_pki::fingerprint(&ca_der) != token.ca_fingerprint {
                    return Err(AgentError::Token(
                        "the cluster answered with a CA that does not match the join token".into(),
                    ));
                }
                let identity = herd_pki::NodeIdentity {
                    cert_der,
                    key_der: key_der.clone(),
                    ca_der,
                };
                // Checks the certificate parses and matches our key.
                identity.client_config()?;
                let mut seeds = addrs.clone();
                seeds.extend(peers);
                seeds.sort();
                seeds.dedup();
                dir.create()?;
                dir.save_identity(&identity)?;
                dir.save_node_file(&NodeFile {
                    version: NODE_FILE_VERSION,
                    cluster,
                    name: name.to_string(),
                    listen,
                    seeds,
                })?;
                endpoint.wait_idle().await;
                return Ok(());
            }
            PeerResponse::Error(e) => return Err(remote_to_error(e)),
            other => {
                failures.push(format!("{addr}: unexpected answer {other:?}"));
            }
        }
    }
    Err(AgentError::Net(format!(
        "could not reach the cluster to enroll ({})",
        failures.join("; ")
    )))
}

fn classify_connect_error(addr: SocketAddr, e: quinn::ConnectionError) -> AgentError {
    let text = e.to_string();
    if text.contains("does not match the join token") || text.contains("UnknownIssuer") {
        AgentError::Token(format!(
            "the node at {addr} is not part of the token's cluster (its CA does not match the join token)"
        ))
    } else {
        AgentError::Net(text)
    }
}

fn remote_to_error(e: RemoteError) -> AgentError {
    match e.kind {
        RemoteErrorKind::BadToken
        | RemoteErrorKind::TokenExpired
        | RemoteErrorKind::TokenRevoked => AgentError::Token(e.message),
        _ => AgentError::Net(format!("enrollment refused: {}", e.message)),
    }
}

/// Handles an enrollment request on the CA node. Blocking (file I/O); run it off the
/// event loop. `peers` are live members to hand to the new node.
pub fn serve_enroll(dir: &StateDir, req: PeerRequest, peers: Vec<SocketAddr>) -> PeerResponse {
    let PeerRequest::Enroll {
        token_id,
        secret,
        name,
        csr_der,
    } = req
    else {
        return refuse(
            RemoteErrorKind::BadRequest,
            "only enrollment is allowed without a certificate",
        );
    };
    if herd_pki::check_name(&name).is_err() {
        return refuse(
            RemoteErrorKind::BadRequest,
            &format!("invalid node name {name:?}"),
        );
    }
    if !dir.has_ca() {
        return refuse(
            RemoteErrorKind::Unavailable,
            "this node does not hold the cluster CA; enroll through the node where `herd init` ran",
        );
    }
    let result = (|| {
        let ca = dir.ca()?;
        let redeemed =
            dir.update_tokens(|store| Ok(store.redeem(&token_id, &secret, unix_now())))?;
        let roles = match redeemed {
            Ok(r) => r,
            Err(kind) => return Ok(Err(kind)),
        };
        let cert_der = ca.sign_csr(&csr_der, &name, &roles)?;
        Ok::<_, AgentError>(Ok(PeerResponse::Enrolled {
            cert_der,
            ca_der: ca.cert_der().to_vec(),
            cluster: ca.cluster().to_string(),
            roles,
            peers,
        }))
    })();
    match result {
        Ok(Ok(resp)) => {
            tracing::info!(node = %name, "enrolled a new node");
            resp
        }
        Ok(Err(kind)) => {
            let id = hex::encode(token_id);
            let msg = match kind {
                RemoteErrorKind::TokenExpired => format!("join token {id} has expired"),
                RemoteErrorKind::TokenRevoked => format!("join token {id} was revoked"),
                _ => "join token refused: it is not a valid token of this cluster".to_string(),
            };
            tracing::warn!(node = %name, token = %id, "refused enrollment: {msg}");
            refuse(kind, &msg)
        }
        Err(e) => {
            tracing::error!(node = %name, "enrollment failed: {e}");
            refuse(
                RemoteErrorKind::BadRequest,
                &format!("enrollment failed: {e}"),
            )
        }
    }
}

fn refuse(kind: RemoteErrorKind, message: &str) -> PeerResponse {
    PeerResponse::Error(RemoteError {
        kind,
        message: message.to_string(),
    })
}
