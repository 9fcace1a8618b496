//! herd's public-key infrastructure: the cluster CA, node certificates, join tokens
//! and the rustls configurations every connection uses.
//!
//! Trust model, in one paragraph: `herd init` makes a self-signed cluster CA and a
//! certificate for its own node. A node's certificate names the node (subject CN), the
//! cluster (O) and the node's roles (OU, `roles=submit,exec`), and carries the fixed
//! DNS name [`SERVER_NAME`] so that standard WebPKI verification applies. Every
//! node-to-node connection is TLS 1.3 with a certificate on *both* sides, chained to the
//! cluster CA; a certificate from any other CA fails the handshake. The only exception
//! is enrollment: a joining node has no certificate yet, so the server accepts an
//! unauthenticated client and the agent then allows only the `Enroll` request on that
//! connection. The joining node authenticates the *server* by the CA fingerprint in the
//! token ([`enroll_client_config`]), so it never sends the token secret to an impostor.
//!
//! Token records ([`TokenStore`]) keep only a BLAKE3 hash of each secret, an expiry, a
//! revoked flag and how many uses are left; the store is plain data that the agent
//! reads from and writes to `tokens.toml` in the CA node's state directory. The
//! registry of enrolled names ([`NodeRegistry`], `nodes.toml`) binds each name to one
//! public key, so that two nodes never hold certificates of the same name.
//!
//! **Lifetimes.** A node certificate lives [`DEFAULT_CERT_LIFETIME`] (30 days) unless
//! the cluster was made with another ([`Validity`]), and its node renews it when less
//! than half is left ([`renewal`]), over its mutually authenticated connection to the
//! CA node, keeping its key. **Revocation.** The CA signs a versioned list of revoked
//! keys ([`revocation`]); every node keeps the newest and refuses those keys at every
//! handshake ([`Trust`], which also swaps in a renewed certificate for new
//! connections).
//!
//! **Architecture invariant:** this crate does no file or network I/O and reads no
//! clock: the time a certificate is made or checked is an argument. It turns keys and
//! certificates into bytes, checks bytes, and builds rustls configurations.

#![deny(missing_docs)]

mod registry;
pub mod revocation;
mod store;
mod trust;

pub use registry::{
    Claim, NodeRecord, NodeRegistry, key_fingerprint_of_cert, key_fingerprint_of_csr,
};
pub use revocation::{
    Offered, RevocationError, RevocationSync, next_list, sign_revocations, verify_revocations,
};
pub use store::{TokenRecord, TokenStore};
pub use trust::Trust;

use std::sync::Arc;
use std::time::Duration;

use herd_proto::Role;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// The DNS name every node certificate carries and every client asks for.
pub const SERVER_NAME: &str = "node.herd";

/// How long a node certificate lives unless the cluster says otherwise.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// The shortest lifetime a cluster may give its certificates (tests use seconds).
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(10);
/// The longest.
pub const MAX_CERT_LIFETIME: Duration = Duration::from_secs(3650 * 86_400);

/// When a certificate is made (Unix seconds, read by the caller) and how long it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Now, in seconds since the Unix epoch.
    pub now: u64,
    /// The certificate's lifetime from now.
    pub lifetime: Duration,
}

impl Validity {
    /// A certificate made at `now` living `lifetime` (clamped to
    /// [`MIN_CERT_LIFETIME`]..=[`MAX_CERT_LIFETIME`]).
    pub fn new(now: u64, lifetime: Duration) -> Validity {
        Validity {
            now,
            lifetime: lifetime.clamp(MIN_CERT_LIFETIME, MAX_CERT_LIFETIME),
        }
    }

    /// How far `notBefore` is set back, for a peer whose clock is a little behind: an
    /// hour, or a tenth of a lifetime shorter than ten hours.
    pub fn backdate(&self) -> Duration {
        (self.lifetime / 10).min(Duration::from_secs(3600))
    }

    fn not_before(&self) -> time::OffsetDateTime {
        unix_time(self.now.saturating_sub(self.backdate().as_secs()))
    }

    fn not_after(&self) -> time::OffsetDateTime {
        unix_time(self.now.saturating_add(self.lifetime.as_secs()))
    }
}

fn unix_time(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// What a node should do about its certificate at a given time (see [`renewal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing until then (Unix seconds): more than half its life is left.
    Until(u64),
    /// Renew it: less than half its life is left.
    Due,
    /// It has expired: the node must enroll again with a token.
    Expired,
}

/// Whether a certificate valid from `not_before` to `not_after` (Unix seconds, from
/// [`cert_validity`]) is to be renewed at `now`: from the middle of its life on.
pub fn renewal(not_before: u64, not_after: u64, now: u64) -> Renewal {
    let half = not_before.saturating_add(not_after.saturating_sub(not_before) / 2);
    if now >= not_after {
        Renewal::Expired
    } else if now >= half {
        Renewal::Due
    } else {
        Renewal::Until(half)
    }
}

/// `(notBefore, notAfter)` of a certificate (DER), in Unix seconds.
pub fn cert_validity(der: &[u8]) -> Result<(u64, u64), PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| PkiError::Malformed {
        what: "certificate",
    })?;
    let secs = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    Ok((
        secs(cert.validity().not_before),
        secs(cert.validity().not_after),
    ))
}

/// Checks a node certificate (DER) as a handshake would at `now` (Unix seconds):
/// chained to the CA `ca_der`, within its validity, for herd's server name. Returns
/// what it says.
pub fn verify_node_cert(ca_der: &[u8], cert_der: &[u8], now: u64) -> Result<PeerCert, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| PkiError::Rustls(rustls::Error::General(e.to_string())))?;
    let name = ServerName::try_from(SERVER_NAME).map_err(|_| PkiError::Malformed {
        what: "server name",
    })?;
    verifier.verify_server_cert(
        &CertificateDer::from(cert_der),
        &[],
        &name,
        &[],
        UnixTime::since_unix_epoch(Duration::from_secs(now)),
    )?;
    peer_cert(cert_der)
}

/// Errors of the PKI layer.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A rustls configuration could not be built.
    #[error("tls configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// A client verifier could not be built.
    #[error("tls verifier failed: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A certificate or key did not parse.
    #[error("malformed {what}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
    },
    /// A name is not acceptable as a node or cluster name.
    #[error(
        "invalid name {0:?}: use 1-63 characters from letters, digits, '-', '_' and '.', starting with a letter or digit"
    )]
    BadName(String),
}

/// Checks a node or cluster name: 1-63 of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_string()))
    }
}

/// SHA-256 of a DER certificate, as carried in join tokens.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The crypto provider herd uses everywhere (ring, no C build beyond ring's own).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster certificate authority: held by the node that ran `herd init`.
pub struct Ca {
    cert_der: Vec<u8>,
    key: KeyPair,
    cluster: String,
}

/// A node's TLS identity: its certificate, private key and the cluster CA.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's certificate (DER).
    pub cert_der: Vec<u8>,
    /// The node's private key (PKCS#8 DER).
    pub key_der: Vec<u8>,
    /// The cluster CA certificate (DER).
    pub ca_der: Vec<u8>,
}

/// What a peer's certificate says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    /// Node name (subject CN).
    pub name: String,
    /// Cluster name (subject O).
    pub cluster: String,
    /// Roles (subject OU).
    pub roles: Vec<Role>,
}

impl PeerCert {
    /// Whether the certificate grants `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("NodeIdentity")
            .field("cert", &hex::encode(fingerprint(&self.cert_der)))
            .field("ca", &hex::encode(fingerprint(&self.ca_der)))
            .finish_non_exhaustive()
    }
}

/// A random serial number (16 bytes, positive): unique per certificate, so a renewed
/// certificate is told from the one it replaces.
fn random_serial() -> rcgen::SerialNumber {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn node_params(
    cluster: &str,
    name: &str,
    roles: &[Role],
    validity: Validity,
) -> Result<CertificateParams, PkiError> {
    check_name(name)?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    params.serial_number = Some(random_serial());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, cluster);
    dn.push(
        DnType::OrganizationalUnitName,
        format!("roles={}", Role::join(roles)),
    );
    params.distinguished_name = dn;
    params.not_before = validity.not_before();
    params.not_after = validity.not_after();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl Ca {
    /// Creates a new cluster CA (valid 20 years from `validity.now`) and the first
    /// node's identity (which gets `roles` and `validity`).
    pub fn create(
        cluster: &str,
        node_name: &str,
        roles: &[Role],
        validity: Validity,
    ) -> Result<(Ca, NodeIdentity), PkiError> {
        check_name(cluster)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("herd cluster CA {cluster}"));
        dn.push(DnType::OrganizationName, cluster);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = unix_time(validity.now.saturating_sub(3600));
        params.not_after = unix_time(validity.now.saturating_add(7300 * 86_400));
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let ca = Ca {
            cert_der: cert.der().to_vec(),
            key,
            cluster: cluster.to_string(),
        };
        let node_key = KeyPair::generate()?;
        let node_cert = node_params(cluster, node_name, roles, validity)?
            .signed_by(&node_key, &ca.issuer()?)?;
        let identity = NodeIdentity {
            cert_der: node_cert.der().to_vec(),
            key_der: node_key.serialize_der(),
            ca_der: ca.cert_der.clone(),
        };
        Ok((ca, identity))
    }

    /// Loads a CA from its certificate (DER) and private key (PKCS#8 DER).
    pub fn load(cert_der: &[u8], key_der: &[u8]) -> Result<Ca, PkiError> {
        let key = KeyPair::try_from(key_der).map_err(|_| PkiError::Malformed { what: "CA key" })?;
        let cluster = subject_field(cert_der, Field::Organization)?.ok_or(PkiError::Malformed {
            what: "CA certificate",
        })?;
        Ok(Ca {
            cert_der: cert_der.to_vec(),
            key,
            cluster,
        })
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(
            &CertificateDer::from(self.cert_der.as_slice()),
            &self.key,
        )?)
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key (PKCS#8 DER), for the state directory.
    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// SHA-256 fingerprint of the CA certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert_der)
    }

    /// Signs a node's certificate signing request. The subject is set by the CA (`name`,
    /// the cluster, `roles`); only the public key is taken from the request, whose
    /// signature proves the requester holds the key.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        name: &str,
        roles: &[Role],
        validity: Validity,
    ) -> Result<Vec<u8>, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.into())?;
        let params = node_params(&self.cluster, name, roles, validity)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.der().to_vec())
    }

    /// Signs `msg` with the CA key (ECDSA P-256 with SHA-256, DER signature).
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        if self.key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::Malformed {
                what: "CA key (herd's CAs are ECDSA P-256)",
            });
        }
        Ok(rcgen::SigningKey::sign(&self.key, msg)?)
    }
}

/// Makes a fresh node key and a certificate signing request for it. Returns the key
/// (PKCS#8 DER) and the request (DER).
pub fn make_csr(name: &str) -> Result<(Vec<u8>, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let csr = csr_for(&key, name)?;
    Ok((key.serialize_der(), csr))
}

/// A certificate signing request (DER) for a key the node already holds (PKCS#8 DER):
/// renewal, and enrolling again after the certificate expired, keep the key.
pub fn make_csr_for_key(key_der: &[u8], name: &str) -> Result<Vec<u8>, PkiError> {
    let key = KeyPair::try_from(key_der).map_err(|_| PkiError::Malformed { what: "node key" })?;
    csr_for(&key, name)
}

fn csr_for(key: &KeyPair, name: &str) -> Result<Vec<u8>, PkiError> {
    check_name(name)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.der().to_vec())
}

enum Field {
    CommonName,
    Organization,
    Unit,
}

fn subject_field(der: &[u8], field: Field) -> Result<Option<String>, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| PkiError::Malformed {
        what: "certificate",
    })?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .map(|s| s.to_string())
    };
    Ok(match field {
        Field::CommonName => first(&mut subject.iter_common_name()),
        Field::Organization => first(&mut subject.iter_organization()),
        Field::Unit => first(&mut subject.iter_organizational_unit()),
    })
}

/// Reads name, cluster and roles from a node certificate (DER). The certificate's
/// chain must have been verified already (by the TLS handshake).
pub fn peer_cert(der: &[u8]) -> Result<PeerCert, PkiError> {
    let name = subject_field(der, Field::CommonName)?.ok_or(PkiError::Malformed {
        what: "node certificate (no common name)",
    })?;
    let cluster = subject_field(der, Field::Organization)?.unwrap_or_default();
    let roles = subject_field(der, Field::Unit)?
        .and_then(|ou| ou.strip_prefix("roles=").map(|s| s.to_string()))
        .and_then(|s| Role::parse_list(&s))
        .unwrap_or_default();
    Ok(PeerCert {
        name,
        cluster,
        roles,
    })
}

impl NodeIdentity {
    /// What this node's own certificate says.
    pub fn info(&self) -> Result<PeerCert, PkiError> {
        peer_cert(&self.cert_der)
    }

    /// Server side of every connection: presents this node's chain, requires a client
    /// certificate from the cluster CA *or none at all* (enrollment; the agent then
    /// allows nothing but `Enroll`). Refuses no key: a running node uses a [`Trust`].
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        Trust::new(self)?.server_config()
    }

    /// Client side of node-to-node connections: verifies the server against the
    /// cluster CA and presents this node's certificate. Refuses no key: a running node
    /// uses a [`Trust`].
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        Trust::new(self)?.client_config()
    }
}

/// Client configuration for enrollment: no client certificate; the server is trusted
/// only if its chain includes a CA whose SHA-256 fingerprint is `ca_fingerprint` and
/// its certificate verifies against that CA.
pub fn enroll_client_config(ca_fingerprint: [u8; 32]) -> Result<rustls::ClientConfig, PkiError> {
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_fingerprint,
        provider: provider(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![herd_proto::ALPN.to_vec()];
    Ok(cfg)
}

/// Verifies a server against the CA pinned by a join token.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's cluster CA does not match the join token".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A validity for tests: now-ish, the default lifetime.
#[cfg(test)]
pub(crate) fn test_validity() -> Validity {
    Validity::new(1_700_000_000, DEFAULT_CERT_LIFETIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_node_with_roles() {
        let (ca, first) =
            Ca::create("lab", "ws", &[Role::Submit, Role::Exec], test_validity()).unwrap();
        let info = first.info().unwrap();
        assert_eq!(info.name, "ws");
        assert_eq!(info.cluster, "lab");
        assert!(info.has(Role::Submit) && info.has(Role::Exec));

        let (_key, csr) = make_csr("h1").unwrap();
        let cert = ca
            .sign_csr(&csr, "h1", &[Role::Exec], test_validity())
            .unwrap();
        let pc = peer_cert(&cert).unwrap();
        assert_eq!(pc.name, "h1");
        assert_eq!(pc.roles, vec![Role::Exec]);
        assert!(!pc.has(Role::Submit));

        let reloaded = Ca::load(ca.cert_der(), &ca.key_der()).unwrap();
        assert_eq!(reloaded.cluster(), "lab");
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());
    }

    #[test]
    fn configs_build() {
        let (ca, first) =
            Ca::create("lab", "ws", &[Role::Submit, Role::Exec], test_validity()).unwrap();
        first.server_config().unwrap();
        first.client_config().unwrap();
        enroll_client_config(ca.fingerprint()).unwrap();
    }

    #[test]
    fn garbage_csr_is_an_error() {
        let (ca, _) = Ca::create("lab", "ws", &[Role::Exec], test_validity()).unwrap();
        assert!(
            ca.sign_csr(b"not a csr", "h1", &[Role::Exec], test_validity())
                .is_err()
        );
        assert!(peer_cert(b"junk").is_err());
        assert!(Ca::load(b"junk", b"junk").is_err());
    }

    #[test]
    fn certificates_live_as_long_as_asked_and_renew_from_half_their_life() {
        let day = 86_400;
        let v = Validity::new(1_000_000, DEFAULT_CERT_LIFETIME);
        assert_eq!(v.backdate(), Duration::from_secs(3600));
        let (ca, ws) = Ca::create("lab", "ws", &[Role::Exec], v).unwrap();
        assert_eq!(
            cert_validity(&ws.cert_der).unwrap(),
            (1_000_000 - 3600, 1_000_000 + 30 * day)
        );
        // A test's lifetime of 20 s is backdated 2 s; below the minimum it is clamped.
        let short = Validity::new(1_000_000, Duration::from_secs(20));
        assert_eq!(short.backdate(), Duration::from_secs(2));
        assert_eq!(
            Validity::new(5, Duration::from_secs(1)).lifetime,
            MIN_CERT_LIFETIME
        );
        let (key, csr) = make_csr("h1").unwrap();
        let cert = ca.sign_csr(&csr, "h1", &[Role::Exec], short).unwrap();
        let (nb, na) = cert_validity(&cert).unwrap();
        assert_eq!((nb, na), (999_998, 1_000_020));
        // (now, what to do)
        for (now, want) in [
            (999_998, Renewal::Until(1_000_009)),
            (1_000_008, Renewal::Until(1_000_009)),
            (1_000_009, Renewal::Due),
            (1_000_019, Renewal::Due),
            (1_000_020, Renewal::Expired),
            (u64::MAX, Renewal::Expired),
        ] {
            assert_eq!(renewal(nb, na, now), want, "at {now}");
        }
        // Renewal keeps the key; every certificate has its own serial.
        let again = ca
            .sign_csr(
                &make_csr_for_key(&key, "h1").unwrap(),
                "h1",
                &[Role::Exec],
                short,
            )
            .unwrap();
        assert_eq!(
            key_fingerprint_of_cert(&again).unwrap(),
            key_fingerprint_of_cert(&cert).unwrap()
        );
        let serial = |der: &[u8]| {
            x509_parser::parse_x509_certificate(der)
                .unwrap()
                .1
                .raw_serial()
                .to_vec()
        };
        assert_ne!(serial(&again), serial(&cert));
        assert!(make_csr_for_key(b"junk", "h1").is_err());
        // Checked as a handshake would: within its life, chained to the CA.
        assert_eq!(
            verify_node_cert(ca.cert_der(), &cert, 1_000_010)
                .unwrap()
                .name,
            "h1"
        );
        assert!(verify_node_cert(ca.cert_der(), &cert, 1_000_021).is_err());
        assert!(verify_node_cert(ca.cert_der(), &cert, 999_990).is_err());
        let (other, _) = Ca::create("lab", "ws", &[Role::Exec], v).unwrap();
        assert!(verify_node_cert(other.cert_der(), &cert, 1_000_010).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("h-1.lab").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"x".repeat(64)).is_err());
    }
}
