//! The CA's signed revocation list, and how a node comes to hold the newest one.
//!
//! `herd revoke NODE` on the CA node adds the node's key to the cluster's
//! [`RevocationList`] (a `herd-proto` contract), bumps its version and signs it with the
//! CA key ([`sign_revocations`]). Every node keeps the newest list whose signature
//! checks against its `ca.crt` ([`verify_revocations`]) and refuses the listed keys at
//! every handshake ([`crate::Trust::set_revoked`]).
//!
//! **How it spreads.** A list grows with every revocation and would soon not fit in a
//! membership packet (1,100 bytes), so membership carries only its *version*: every
//! node's load report says which version it holds, and reaches every other node within
//! a second. A node that sees a peer announce a newer version than its own asks that
//! peer for the list over their mutually authenticated connection
//! (`PeerRequest::Revocations`), checks the signature and the version, and keeps it:
//! from then on its own report announces the new version, so the list spreads from
//! every node that holds it, not only from the CA node. A node that joins or restarts
//! learns everybody's version from the reports that greet it and fetches the list the
//! same way (after reading its own copy from disk before its first handshake).
//! [`RevocationSync`] decides whom to ask and what to keep; the agent does the asking.
//!
//! **Why a node without `ca.key` cannot forge or roll it back.** Only a list signed by
//! the CA key is kept; only a version higher than the one held replaces it. A peer
//! announcing a version it does not have, or serving a forged or older list, gains
//! nothing: the list is refused, and that peer is not asked again for that version
//! for a while ([`RETRY_AFTER`]) while others announcing it are.
//!
//! Sans-IO: time (`now`, a monotonic [`Duration`]) is an input.

use std::collections::BTreeMap;
use std::time::Duration;

use herd_proto::{RevocationList, SignedRevocations};

use crate::{Ca, PkiError};

/// Domain separation: what the CA signs is this, then the list's bytes.
const CONTEXT: &[u8] = b"herd revocation list\0";

/// How long an unanswered request for the list is waited for.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer that failed to hand over the version it announced is not asked for
/// it again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why a list is not believed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// The bytes are not a list.
    #[error("{0}")]
    Malformed(String),
    /// The signature is not the cluster CA's.
    #[error("the revocation list is not signed by the cluster CA")]
    Signature,
    /// Signed for another cluster.
    #[error("the revocation list is for cluster {got:?}, not {want:?}")]
    Cluster {
        /// The list's cluster.
        got: String,
        /// Ours.
        want: String,
    },
}

/// Signs `list` with the CA key.
pub fn sign_revocations(ca: &Ca, list: &RevocationList) -> Result<SignedRevocations, PkiError> {
    let body = list.to_bytes();
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(&body);
    let signature = ca.sign(&msg)?;
    Ok(SignedRevocations { body, signature })
}

/// Checks that `signed` carries the signature of the CA whose certificate is `ca_der`
/// and is a list of that CA's cluster; returns the list.
pub fn verify_revocations(
    ca_der: &[u8],
    signed: &SignedRevocations,
) -> Result<RevocationList, RevocationError> {
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der)
        .map_err(|_| RevocationError::Malformed("the CA certificate does not parse".into()))?;
    let spki = ca.public_key();
    let ec = x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY;
    let p256 = x509_parser::oid_registry::OID_EC_P256;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    // herd's CAs are ECDSA P-256 (`Ca::create`); nothing else is believed.
    if spki.algorithm.algorithm != ec || curve.as_ref() != Some(&p256) {
        return Err(RevocationError::Signature);
    }
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(&signed.body);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        &spki.subject_public_key.data,
    )
    .verify(&msg, &signed.signature)
    .map_err(|_| RevocationError::Signature)?;
    let list = RevocationList::from_bytes(&signed.body)
        .map_err(|e| RevocationError::Malformed(e.to_string()))?;
    let want = ca
        .subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .unwrap_or_default()
        .to_string();
    if list.cluster != want {
        return Err(RevocationError::Cluster {
            got: list.cluster,
            want,
        });
    }
    Ok(list)
}

/// The next list after `current`: `add` (name, key fingerprint) revoked at `now`
/// (Unix seconds), the version one higher. `None` if the key is listed already.
pub fn next_list(
    cluster: &str,
    current: Option<&RevocationList>,
    name: &str,
    key: &str,
    now: u64,
) -> Option<RevocationList> {
    if current.is_some_and(|l| l.contains_key(key)) {
        return None;
    }
    let mut list = current.cloned().unwrap_or_else(|| RevocationList {
        cluster: cluster.to_string(),
        ..RevocationList::default()
    });
    list.version += 1;
    list.issued = now;
    list.revoked.push(herd_proto::RevokedKey {
        name: name.to_string(),
        key: key.to_string(),
        at: now,
    });
    Some(list)
}

/// What [`RevocationSync::offer`] did with a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// It is newer than the one held, and now held: apply it, store it, announce it.
    Newer,
    /// It is the one held, or older: nothing changes.
    NotNewer,
}

/// Which peer to ask for the list, and which list to keep (see the module docs).
///
/// Inputs: [`claim`](Self::claim) (a peer's load report announced a version),
/// [`offer`](Self::offer) (a list arrived, or was made here), [`ask_failed`]
/// (a request got no list). Output: [`poll_ask`](Self::poll_ask), the peer to ask
/// now (one request at a time).
///
/// [`ask_failed`]: Self::ask_failed
#[derive(Debug)]
pub struct RevocationSync {
    ca_der: Vec<u8>,
    held: Option<(RevocationList, SignedRevocations)>,
    /// Versions peers announced, newer than ours.
    claims: BTreeMap<String, u64>,
    /// Peers that did not hand over what they announced: (version, when).
    failed: BTreeMap<String, (u64, Duration)>,
    /// The request in flight: (peer, version it announced, since).
    asking: Option<(String, u64, Duration)>,
}

impl RevocationSync {
    /// Holding no list yet; lists are checked against the CA certificate `ca_der`.
    pub fn new(ca_der: Vec<u8>) -> RevocationSync {
        RevocationSync {
            ca_der,
            held: None,
            claims: BTreeMap::new(),
            failed: BTreeMap::new(),
            asking: None,
        }
    }

    /// The version held (0: none).
    pub fn version(&self) -> u64 {
        self.held.as_ref().map_or(0, |(l, _)| l.version)
    }

    /// The list held.
    pub fn list(&self) -> Option<&RevocationList> {
        self.held.as_ref().map(|(l, _)| l)
    }

    /// The list held, as signed (what a peer asking is given).
    pub fn signed(&self) -> Option<&SignedRevocations> {
        self.held.as_ref().map(|(_, s)| s)
    }

    /// Whether the key with this fingerprint is revoked by the list held.
    pub fn is_revoked(&self, key: &str) -> bool {
        self.list().is_some_and(|l| l.contains_key(key))
    }

    /// `peer` announced that it holds `version`.
    pub fn claim(&mut self, peer: &str, version: u64) {
        if version > self.version() {
            self.claims.insert(peer.to_string(), version);
        } else {
            self.claims.remove(peer);
        }
    }

    /// `peer` is gone: it is asked nothing more.
    pub fn forget(&mut self, peer: &str) {
        self.claims.remove(peer);
        self.failed.remove(peer);
        if self.asking.as_ref().is_some_and(|(p, _, _)| p == peer) {
            self.asking = None;
        }
    }

    /// The peer to ask for its list now, if any: the one announcing the highest
    /// version (by name among equals), skipping those that recently failed to hand
    /// over that version. At most one request is open; one unanswered for
    /// [`ASK_TIMEOUT`] counts as failed.
    pub fn poll_ask(&mut self, now: Duration) -> Option<String> {
        if let Some((peer, _, since)) = &self.asking {
            if now < *since + ASK_TIMEOUT {
                return None;
            }
            let peer = peer.clone();
            self.ask_failed(now, &peer);
        }
        let failed = &self.failed;
        let (peer, version) = self
            .claims
            .iter()
            .filter(|(p, v)| {
                failed
                    .get(*p)
                    .is_none_or(|(fv, at)| *fv < **v || now >= *at + RETRY_AFTER)
            })
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(p, v)| (p.clone(), *v))?;
        self.asking = Some((peer.clone(), version, now));
        Some(peer)
    }

    /// The request to `peer` got no list (no answer, the peer has none, an error).
    pub fn ask_failed(&mut self, now: Duration, peer: &str) {
        if let Some((p, version, _)) = &self.asking
            && p == peer
        {
            self.failed.insert(peer.to_string(), (*version, now));
            self.asking = None;
        }
    }

    /// A list arrived from `from` (or was made or read here: `None`). It is kept if
    /// the CA signed it and it is newer than the one held. A list that is not the
    /// CA's, or older than what `from` announced, counts as `from` failing.
    pub fn offer(
        &mut self,
        now: Duration,
        from: Option<&str>,
        signed: SignedRevocations,
    ) -> Result<Offered, RevocationError> {
        let verified = verify_revocations(&self.ca_der, &signed);
        let short = match &verified {
            Ok(list) => self
                .asking
                .as_ref()
                .is_some_and(|(p, v, _)| Some(p.as_str()) == from && list.version < *v),
            Err(_) => true,
        };
        if let Some(peer) = from {
            if short {
                self.ask_failed(now, peer);
            } else if self.asking.as_ref().is_some_and(|(p, _, _)| p == peer) {
                self.asking = None;
            }
        }
        let list = verified?;
        if list.version <= self.version() {
            return Ok(Offered::NotNewer);
        }
        let version = list.version;
        self.held = Some((list, signed));
        self.claims.retain(|_, v| *v > version);
        Ok(Offered::Newer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_validity;
    use herd_proto::Role;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn ca(cluster: &str) -> Ca {
        Ca::create(cluster, "ws", &[Role::Submit, Role::Exec], test_validity())
            .unwrap()
            .0
    }

    /// Lists of versions 1..=n, each revoking one more key.
    fn lists(ca: &Ca, n: u64) -> Vec<SignedRevocations> {
        let mut out = Vec::new();
        let mut cur: Option<RevocationList> = None;
        for v in 1..=n {
            let next = next_list(
                ca.cluster(),
                cur.as_ref(),
                &format!("h{v}"),
                &"ab".repeat(v as usize),
                100 + v,
            )
            .unwrap();
            out.push(sign_revocations(ca, &next).unwrap());
            cur = Some(next);
        }
        out
    }

    #[test]
    fn only_the_cluster_cas_signature_is_believed() {
        let ca = ca("lab");
        let good = lists(&ca, 1).remove(0);
        let list = verify_revocations(ca.cert_der(), &good).unwrap();
        assert_eq!(list.version, 1);
        assert!(list.contains_key("ab"));

        // Another CA of the same cluster name (anyone can make one): refused.
        let other = crate::Ca::create("lab", "evil", &[Role::Exec], test_validity())
            .unwrap()
            .0;
        let forged = lists(&other, 1).remove(0);
        assert_eq!(
            verify_revocations(ca.cert_der(), &forged),
            Err(RevocationError::Signature)
        );
        // A node's key (a node signs with its own key): refused.
        let (_, node) = crate::Ca::create("lab", "h1", &[Role::Exec], test_validity()).unwrap();
        let node_key = rcgen::KeyPair::try_from(node.key_der.as_slice()).unwrap();
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(&good.body);
        let by_node = SignedRevocations {
            body: good.body.clone(),
            signature: rcgen::SigningKey::sign(&node_key, &msg).unwrap(),
        };
        assert_eq!(
            verify_revocations(ca.cert_der(), &by_node),
            Err(RevocationError::Signature)
        );
        // The CA's signature over another body, or a changed body: refused.
        let mut tampered = good.clone();
        tampered.body[3] ^= 1;
        assert_eq!(
            verify_revocations(ca.cert_der(), &tampered),
            Err(RevocationError::Signature)
        );
        let other_body = SignedRevocations {
            body: lists(&ca, 2)[1].body.clone(),
            signature: good.signature.clone(),
        };
        assert_eq!(
            verify_revocations(ca.cert_der(), &other_body),
            Err(RevocationError::Signature)
        );
        // Signed without the context (a signature made for something else): refused.
        let bare = SignedRevocations {
            body: good.body.clone(),
            signature: ca.sign(&good.body).unwrap(),
        };
        assert_eq!(
            verify_revocations(ca.cert_der(), &bare),
            Err(RevocationError::Signature)
        );
        // Signed by the CA, for another cluster's name: refused.
        let mut foreign = verify_revocations(ca.cert_der(), &good).unwrap();
        foreign.cluster = "other".into();
        let foreign = sign_revocations(&ca, &foreign).unwrap();
        assert!(matches!(
            verify_revocations(ca.cert_der(), &foreign),
            Err(RevocationError::Cluster { .. })
        ));
        // Garbage.
        let junk = SignedRevocations {
            body: vec![1, 2, 3],
            signature: ca.sign(&[CONTEXT, &[1, 2, 3]].concat()).unwrap(),
        };
        assert!(matches!(
            verify_revocations(ca.cert_der(), &junk),
            Err(RevocationError::Malformed(_))
        ));
    }

    #[test]
    fn next_list_adds_a_key_once_and_counts_versions() {
        let one = next_list("lab", None, "h2", "k2", 10).unwrap();
        assert_eq!((one.version, one.issued, one.revoked.len()), (1, 10, 1));
        assert_eq!(next_list("lab", Some(&one), "h2", "k2", 11), None);
        let two = next_list("lab", Some(&one), "h3", "k3", 12).unwrap();
        assert_eq!((two.version, two.revoked.len()), (2, 2));
        assert!(two.contains_key("k2") && two.contains_key("k3"));
    }

    /// A step of the sync table: what happens, and what `poll_ask` says right after.
    enum Step {
        Claim(&'static str, u64),
        /// A list of this version (from `lists`, 0 = forged by another CA) arrives.
        Offer(Option<&'static str>, u64, Result<Offered, ()>),
        Failed(&'static str),
        Forget(&'static str),
    }

    #[test]
    fn a_node_fetches_the_newest_list_and_ignores_forged_or_older_ones() {
        use Step::*;
        let ca = ca("lab");
        let good = lists(&ca, 3);
        let forged = lists(
            &crate::Ca::create("lab", "x", &[], test_validity())
                .unwrap()
                .0,
            9,
        );
        let mut sync = RevocationSync::new(ca.cert_der().to_vec());
        // (time, step, version held after, whom poll_ask names)
        let table: Vec<(u64, Step, u64, Option<&str>)> = vec![
            // Nobody announced anything: nobody to ask.
            (0, Claim("h1", 0), 0, None),
            // h1 and the liar both announce version 2; the liar sorts first by name.
            (1, Claim("h1", 2), 0, Some("h1")),
            // (One question at a time: h1 is being asked.)
            (1, Claim("evil", 9), 0, None),
            // h1 hands over version 1 though it announced 2: kept (newer than
            // nothing), and h1 counts as failed for 2; the liar is asked next.
            (2, Offer(Some("h1"), 1, Ok(Offered::Newer)), 1, Some("evil")),
            // The liar's list is forged: ignored, the held list stays.
            (3, Offer(Some("evil"), 0, Err(())), 1, None),
            // Both failed recently: nobody is asked until RETRY_AFTER has passed ...
            (10, Claim("h3", 2), 1, Some("h3")),
            // ... but a third node announcing 2 is. It serves version 2.
            (11, Offer(Some("h3"), 2, Ok(Offered::Newer)), 2, None),
            // An older list, from anyone or read from disk, changes nothing.
            (12, Offer(Some("h1"), 1, Ok(Offered::NotNewer)), 2, None),
            (12, Offer(None, 2, Ok(Offered::NotNewer)), 2, None),
            // The liar is asked again only after RETRY_AFTER; its request times out.
            (40, Claim("evil", 9), 2, Some("evil")),
            (45, Claim("h1", 2), 2, None),
            (51, Claim("h1", 2), 2, None),
            // A list made on this node (the CA) is taken without asking anyone.
            (52, Offer(None, 3, Ok(Offered::Newer)), 3, None),
            (53, Failed("evil"), 3, None),
            // A peer that is gone is asked nothing more.
            (80, Forget("evil"), 3, None),
        ];
        for (i, (t, step, held, ask)) in table.into_iter().enumerate() {
            let now = s(t);
            match step {
                Claim(p, v) => sync.claim(p, v),
                Offer(from, v, want) => {
                    let list = if v == 0 {
                        forged[8].clone()
                    } else {
                        good[v as usize - 1].clone()
                    };
                    let got = sync.offer(now, from, list).map_err(|_| ());
                    assert_eq!(got, want, "step {i}: offer");
                }
                Failed(p) => sync.ask_failed(now, p),
                Forget(p) => sync.forget(p),
            }
            assert_eq!(sync.version(), held, "step {i}: version held");
            assert_eq!(sync.poll_ask(now).as_deref(), ask, "step {i}: whom to ask");
        }
        assert!(sync.is_revoked(&"ab".repeat(3)));
        assert_eq!(sync.signed(), Some(&good[2]));
    }
}
