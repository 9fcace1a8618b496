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
//!
//! On the CA node, an enrollment is accepted when the token is valid (its secret
//! matches, it is neither revoked nor expired, and it has a use left) and the name is
//! free in the registry of enrolled nodes (`nodes.toml`), or registered to the very
//! key of the request (a retry whose answer was lost: no use is counted). Only an
//! accepted enrollment writes anything (the token's use count, the name's record);
//! a refusal writes nothing and is answered with its own reason. Refusals are
//! rate-limited per source address ([`Limiter`], a token bucket) and logged at most
//! once per [`LimiterConfig::warn_every`].
//!
//! The answer carries the cluster's revocation list, which the new node keeps before
//! its first handshake (a node that enrolled after a revocation refuses the revoked
//! key from the start, not only once it fetched the list from a peer).
//!
//! A key on the cluster's revocation list never enrolls again, under any name
//! ([`RemoteErrorKind::Revoked`]). A node whose certificate expired while it was off
//! enrolls again with a token and its own key ([`enroll_again`]): its registered key,
//! so it keeps its name and no use of the token is counted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herd_pki::{Claim, NodeRecord};
use herd_proto::{PeerRequest, PeerResponse, RemoteError, RemoteErrorKind, Role, Token};

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
    enroll_with(dir, token, name, listen, extra_peers, key_der, csr_der).await
}

/// Enrolls this node again with `token`, under its name and with its key (its
/// certificate expired while it was off), and writes its new certificate to `dir`.
/// `listen` overrides the address in `node.toml`.
pub async fn enroll_again(
    dir: &StateDir,
    token: &Token,
    listen: Option<SocketAddr>,
    extra_peers: &[SocketAddr],
) -> Result<(), AgentError> {
    let nf = dir.node_file()?;
    let identity = dir.identity()?;
    let csr_der = herd_pki::make_csr_for_key(&identity.key_der, &nf.name)?;
    enroll_with(
        dir,
        token,
        &nf.name,
        listen.unwrap_or(nf.listen),
        extra_peers,
        identity.key_der,
        csr_der,
    )
    .await
}

async fn enroll_with(
    dir: &StateDir,
    token: &Token,
    name: &str,
    listen: SocketAddr,
    extra_peers: &[SocketAddr],
    key_der: Vec<u8>,
    csr_der: Vec<u8>,
) -> Result<(), AgentError> {
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
                revocations,
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
                // The cluster's revocation list, if the CA signed it, is in force from
                // the first handshake on.
                let revocations = revocations
                    .filter(|s| herd_pki::verify_revocations(&identity.ca_der, s).is_ok());
                dir.create()?;
                if let Some(signed) = &revocations {
                    let ca = identity.ca_der.clone();
                    dir.save_revocations_if_newer(signed, |s| {
                        herd_pki::verify_revocations(&ca, s).ok().map(|l| l.version)
                    })?;
                }
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
        | RemoteErrorKind::TokenRevoked
        | RemoteErrorKind::TokenUsed
        | RemoteErrorKind::NameTaken
        | RemoteErrorKind::Revoked
        | RemoteErrorKind::NotEnrolled => AgentError::Token(e.message),
        _ => AgentError::Net(format!("enrollment refused: {}", e.message)),
    }
}

/// Handles an enrollment request on the CA node, without rate limiting or logging of
/// refusals (see [`Gate`] for both). Blocking (file I/O); run it off the event loop.
/// `peers` are live members to hand to the new node.
pub fn serve_enroll(dir: &StateDir, req: PeerRequest, peers: Vec<SocketAddr>) -> PeerResponse {
    match decide(dir, req, peers) {
        Ok(resp) => resp,
        Err((kind, message)) => refuse(kind, &message),
    }
}

/// An enrollment's refusal: its kind and the line the joining node shows.
type Refusal = (RemoteErrorKind, String);

fn decide(
    dir: &StateDir,
    req: PeerRequest,
    peers: Vec<SocketAddr>,
) -> Result<PeerResponse, Refusal> {
    let PeerRequest::Enroll {
        token_id,
        secret,
        name,
        csr_der,
    } = req
    else {
        return Err((
            RemoteErrorKind::BadRequest,
            "only enrollment is allowed without a certificate".into(),
        ));
    };
    if herd_pki::check_name(&name).is_err() {
        return Err((
            RemoteErrorKind::BadRequest,
            format!("invalid node name {name:?}"),
        ));
    }
    if !dir.has_ca() {
        return Err((
            RemoteErrorKind::Unavailable,
            "this node does not hold the cluster CA; enroll through the node where `herd init` ran"
                .into(),
        ));
    }
    let key = herd_pki::key_fingerprint_of_csr(&csr_der).map_err(|_| {
        (
            RemoteErrorKind::BadRequest,
            "the certificate request is malformed or its signature is wrong".to_string(),
        )
    })?;
    let internal = |e: AgentError| {
        tracing::error!(node = %name, "enrollment failed: {e}");
        (
            RemoteErrorKind::BadRequest,
            format!("enrollment failed: {e}"),
        )
    };
    let ca = dir.ca().map_err(internal)?;
    // A cluster made before the registry existed has no record of the CA's own node:
    // its name is taken all the same.
    let own = dir.node_file().map_err(internal)?.name;
    let own_key = dir
        .identity()
        .ok()
        .and_then(|id| herd_pki::key_fingerprint_of_cert(&id.cert_der).ok())
        .unwrap_or_default();
    let id = hex::encode(token_id);
    let now = unix_now();
    let validity = herd_pki::Validity::new(now, dir.ca_file().map_err(internal)?.cert_lifetime());
    // A revoked key enrolls no more, under any name.
    let revoked = match dir.revocations().map_err(internal)? {
        Some(signed) => herd_pki::verify_revocations(ca.cert_der(), &signed)
            .map_err(|e| internal(AgentError::Net(format!("revoked.list: {e}"))))?
            .contains_key(&key),
        None => false,
    };
    let outcome = dir.update_enrollment(|tokens, nodes| {
        let mut claim = nodes.check(&name, &key);
        if claim == Claim::Free && name == own && key != own_key {
            claim = Claim::Taken(NodeRecord {
                name: own.clone(),
                key: own_key.clone(),
                roles: vec![],
                enrolled: 0,
                token: None,
                revoked: None,
            });
        }
        let token_refusal = |tokens: &herd_pki::TokenStore, kind: RemoteErrorKind| {
            let msg = match kind {
                RemoteErrorKind::TokenExpired => format!("join token {id} has expired"),
                RemoteErrorKind::TokenRevoked => format!("join token {id} was revoked"),
                RemoteErrorKind::TokenUsed => {
                    let max = tokens
                        .tokens
                        .iter()
                        .find(|t| t.id == id)
                        .and_then(|t| t.max_uses)
                        .unwrap_or(1);
                    format!(
                        "this token was already used: join token {id} allows {max} enrollment{} and had {}; make a new one with `herd token` on the cluster's first node",
                        if max == 1 { "" } else { "s" },
                        if max == 1 { "it" } else { "them" },
                    )
                }
                _ => "join token refused: it is not a valid token of this cluster".to_string(),
            };
            (kind, msg)
        };
        if revoked {
            if let Err(kind) = tokens.verify(&token_id, &secret, now) {
                return Ok((Err(token_refusal(tokens, kind)), false));
            }
            return Ok((
                Err((
                    RemoteErrorKind::Revoked,
                    format!(
                        "this node's key was revoked (`herd revoke`): it cannot enroll again; to bring the host back, move its state directory away so that it makes a new key, run `herd remove {name}` on the cluster's first node to free the name, and enroll with a token"
                    ),
                )),
                false,
            ));
        }
        let (roles, changed) = match claim {
            Claim::Taken(_) => {
                // Say nothing about the token: the name is the problem either way, and
                // an unknown token must not learn which names exist.
                if let Err(kind) = tokens.verify(&token_id, &secret, now) {
                    return Ok((Err(token_refusal(tokens, kind)), false));
                }
                return Ok((
                    Err((
                        RemoteErrorKind::NameTaken,
                        format!(
                            "the name {name:?} is taken: another node (another key) is enrolled as {name}; choose another --name, or, if that node is gone for good, run `herd remove {name}` on the cluster's first node"
                        ),
                    )),
                    false,
                ));
            }
            Claim::Same => match tokens.verify(&token_id, &secret, now) {
                Ok(roles) => {
                    let changed = nodes.nodes.iter_mut().any(|r| {
                        let differ = r.name == name && r.roles != roles;
                        if differ {
                            r.roles = roles.clone();
                        }
                        differ
                    });
                    (roles, changed)
                }
                Err(kind) => return Ok((Err(token_refusal(tokens, kind)), false)),
            },
            Claim::Free => match tokens.redeem(&token_id, &secret, now) {
                Ok(roles) => {
                    nodes.register(NodeRecord {
                        name: name.clone(),
                        key: key.clone(),
                        roles: roles.clone(),
                        enrolled: now,
                        token: Some(id.clone()),
                        revoked: None,
                    });
                    (roles, true)
                }
                Err(kind) => return Ok((Err(token_refusal(tokens, kind)), false)),
            },
        };
        // Signing before anything is written: a failure writes nothing either.
        let cert_der = ca.sign_csr(&csr_der, &name, &roles, validity)?;
        Ok((Ok((cert_der, roles)), changed))
    });
    let (cert_der, roles): (Vec<u8>, Vec<Role>) = outcome.map_err(internal)??;
    tracing::info!(node = %name, roles = %Role::join(&roles), "enrolled a node");
    Ok(PeerResponse::Enrolled {
        cert_der,
        ca_der: ca.cert_der().to_vec(),
        cluster: ca.cluster().to_string(),
        roles,
        peers,
        revocations: dir.revocations().ok().flatten(),
    })
}

fn refuse(kind: RemoteErrorKind, message: &str) -> PeerResponse {
    PeerResponse::Error(RemoteError {
        kind,
        message: message.to_string(),
    })
}

/// How refused enrollments are limited and logged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterConfig {
    /// Refusals an address may collect at once before it is refused unheard.
    pub burst: u32,
    /// One more refusal is allowed per this much time.
    pub refill_every: Duration,
    /// At most one warning per this much time (the others are counted in it).
    pub warn_every: Duration,
    /// Addresses tracked at most (the table of a flood from many addresses stays small).
    pub max_addrs: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            burst: 5,
            refill_every: Duration::from_secs(10),
            warn_every: Duration::from_secs(10),
            max_addrs: 4096,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Refusals still allowed at `at` (fractional while refilling).
    level: f64,
    at: Duration,
}

/// A token bucket per source address over refused enrollments, and the log's pace.
/// Sans-IO: `now` is any monotonic time (a [`Duration`] since an origin), passed in.
#[derive(Debug)]
pub struct Limiter {
    cfg: LimiterConfig,
    buckets: HashMap<IpAddr, Bucket>,
    last_warn: Option<Duration>,
    unlogged: u64,
}

impl Limiter {
    /// A limiter with `cfg`.
    pub fn new(cfg: LimiterConfig) -> Limiter {
        Limiter {
            cfg,
            buckets: HashMap::new(),
            last_warn: None,
            unlogged: 0,
        }
    }

    fn level(&self, b: &Bucket, now: Duration) -> f64 {
        let refill =
            now.saturating_sub(b.at).as_secs_f64() / self.cfg.refill_every.as_secs_f64().max(1e-9);
        (b.level + refill).min(f64::from(self.cfg.burst))
    }

    /// Whether an enrollment from `ip` may be looked at now (it has refusals left).
    pub fn allow(&self, ip: IpAddr, now: Duration) -> bool {
        self.buckets
            .get(&ip)
            .is_none_or(|b| self.level(b, now) >= 1.0)
    }

    /// Counts one refusal of `ip` (also one refused unheard). Returns `Some(n)` when a
    /// warning is due now, `n` being the refusals it stands for (this one included).
    pub fn refused(&mut self, ip: IpAddr, now: Duration) -> Option<u64> {
        let full = Bucket {
            level: f64::from(self.cfg.burst),
            at: now,
        };
        let b = self.buckets.get(&ip).copied().unwrap_or(full);
        let level = (self.level(&b, now) - 1.0).max(0.0);
        self.buckets.insert(ip, Bucket { level, at: now });
        if self.buckets.len() > self.cfg.max_addrs {
            self.shrink(now);
        }
        self.unlogged += 1;
        if self
            .last_warn
            .is_none_or(|t| now.saturating_sub(t) >= self.cfg.warn_every)
        {
            self.last_warn = Some(now);
            return Some(std::mem::take(&mut self.unlogged));
        }
        None
    }

    /// Forgets full buckets (they are as good as new), then the oldest ones.
    fn shrink(&mut self, now: Duration) {
        let burst = f64::from(self.cfg.burst);
        let full: Vec<IpAddr> = self
            .buckets
            .iter()
            .filter(|(_, b)| self.level(b, now) >= burst)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in full {
            self.buckets.remove(&ip);
        }
        while self.buckets.len() > self.cfg.max_addrs {
            let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(ip, _)| *ip)
            else {
                break;
            };
            self.buckets.remove(&oldest);
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// The CA node's door for enrollments: [`serve_enroll`] behind a [`Limiter`] per
/// source address, refusals logged at most once per interval.
pub struct Gate {
    limiter: Mutex<Limiter>,
    origin: Instant,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new(LimiterConfig::default())
    }
}

impl Gate {
    /// A gate with `cfg`.
    pub fn new(cfg: LimiterConfig) -> Gate {
        Gate {
            limiter: Mutex::new(Limiter::new(cfg)),
            origin: Instant::now(),
        }
    }

    /// Serves one enrollment request from `from`. Blocking (file I/O): run it off the
    /// event loop.
    pub fn serve(
        &self,
        dir: &StateDir,
        req: PeerRequest,
        peers: Vec<SocketAddr>,
        from: SocketAddr,
    ) -> PeerResponse {
        let ip = from.ip();
        let allowed = self
            .limiter
            .lock()
            .map(|l| l.allow(ip, self.origin.elapsed()))
            .unwrap_or(true);
        let refusal = if allowed {
            match decide(dir, req, peers) {
                Ok(resp) => return resp,
                Err(r) => r,
            }
        } else {
            (
                RemoteErrorKind::RateLimited,
                format!("too many refused enrollments from {ip}: try again in a minute"),
            )
        };
        let warn = self
            .limiter
            .lock()
            .ok()
            .and_then(|mut l| l.refused(ip, self.origin.elapsed()));
        if let Some(n) = warn {
            if n > 1 {
                tracing::warn!(peer = %ip, "refused an enrollment: {} ({} refusals since the last warning)", refusal.1, n);
            } else {
                tracing::warn!(peer = %ip, "refused an enrollment: {}", refusal.1);
            }
        }
        refuse(refusal.0, &refusal.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// Steps of (time, address, `refused` is called, expected `allow` before, expected
    /// warning).
    #[test]
    fn token_bucket_per_address() {
        let cfg = LimiterConfig {
            burst: 3,
            refill_every: s(10.0),
            warn_every: s(5.0),
            max_addrs: 100,
        };
        let mut l = Limiter::new(cfg);
        let table: &[(f64, u8, bool, Option<u64>)] = &[
            // A fresh address is heard, and the first refusal warns at once.
            (0.0, 1, true, Some(1)),
            (0.1, 1, true, None),
            (0.2, 1, true, None),
            // Burst spent: refused unheard (still counted, not logged).
            (0.3, 1, false, None),
            // Another address has its own bucket; the log still waits.
            (1.0, 2, true, None),
            // The warning interval passed: one line for the 5 refusals since.
            (5.0, 2, true, Some(5)),
            // Still empty 9 s later (0.3 s + 10 s refills one); and a refusal while
            // empty keeps it empty: a flood is heard again only once it pauses.
            (9.0, 1, false, None),
            (18.9, 1, false, Some(2)),
            (28.9, 1, true, Some(1)),
            (29.0, 1, false, None),
            // Long quiet: the bucket is full again.
            (100.0, 1, true, Some(2)),
            (100.0, 1, true, None),
            (100.0, 1, true, None),
            (100.0, 1, false, None),
        ];
        for (i, &(t, a, allowed, warn)) in table.iter().enumerate() {
            assert_eq!(l.allow(ip(a), s(t)), allowed, "step {i}: allow");
            assert_eq!(l.refused(ip(a), s(t)), warn, "step {i}: warning");
        }
    }

    #[test]
    fn the_table_stays_small() {
        let cfg = LimiterConfig {
            burst: 2,
            refill_every: s(10.0),
            warn_every: s(5.0),
            max_addrs: 4,
        };
        let mut l = Limiter::new(cfg);
        for n in 0..50 {
            l.refused(ip(n), s(f64::from(n)));
            assert!(l.tracked() <= 4);
        }
        // The newest address is remembered.
        l.refused(ip(49), s(49.5));
        assert!(!l.allow(ip(49), s(49.6)));
        // One seen long ago was forgotten: heard again.
        assert!(l.allow(ip(0), s(49.6)));
    }
}
