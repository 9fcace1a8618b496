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
//! **Architecture invariant:** this crate does no file or network I/O. It turns keys and
//! certificates into bytes, checks bytes, and builds rustls configurations.

#![deny(missing_docs)]

mod registry;
mod store;

pub use registry::{
    Claim, NodeRecord, NodeRegistry, key_fingerprint_of_cert, key_fingerprint_of_csr,
};
pub use store::{TokenRecord, TokenStore};

use std::sync::Arc;

use herd_proto::Role;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// The DNS name every node certificate carries and every client asks for.
pub const SERVER_NAME: &str = "node.herd";

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
#[derive(Clone)]
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

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn node_params(cluster: &str, name: &str, roles: &[Role]) -> Result<CertificateParams, PkiError> {
    check_name(name)?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, cluster);
    dn.push(
        DnType::OrganizationalUnitName,
        format!("roles={}", Role::join(roles)),
    );
    params.distinguished_name = dn;
    params.not_before = now() - time::Duration::hours(1);
    params.not_after = now() + time::Duration::days(3650);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl Ca {
    /// Creates a new cluster CA and the first node's identity (which gets `roles`).
    pub fn create(
        cluster: &str,
        node_name: &str,
        roles: &[Role],
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
        params.not_before = now() - time::Duration::hours(1);
        params.not_after = now() + time::Duration::days(7300);
        let cert = params.self_signed(&key)?;
        let ca = Ca {
            cert_der: cert.der().to_vec(),
            key,
            cluster: cluster.to_string(),
        };
        let node_key = KeyPair::generate()?;
        let node_cert =
            node_params(cluster, node_name, roles)?.signed_by(&node_key, &ca.issuer()?)?;
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
    ) -> Result<Vec<u8>, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.into())?;
        let params = node_params(&self.cluster, name, roles)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.der().to_vec())
    }
}

/// Makes a fresh node key and a certificate signing request for it. Returns the key
/// (PKCS#8 DER) and the request (DER).
pub fn make_csr(name: &str) -> Result<(Vec<u8>, Vec<u8>), PkiError> {
    check_name(name)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_der(), csr.der().to_vec()))
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

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![
            CertificateDer::from(self.cert_der.clone()),
            CertificateDer::from(self.ca_der.clone()),
        ]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca_der.clone()))?;
        Ok(Arc::new(roots))
    }

    /// Server side of every connection: presents this node's chain, requires a client
    /// certificate from the cluster CA *or none at all* (enrollment; the agent then
    /// allows nothing but `Enroll`).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .allow_unauthenticated()
            .build()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain(), self.key())?;
        cfg.alpn_protocols = vec![herd_proto::ALPN.to_vec()];
        Ok(cfg)
    }

    /// Client side of node-to-node connections: verifies the server against the
    /// cluster CA and presents this node's certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain(), self.key())?;
        cfg.alpn_protocols = vec![herd_proto::ALPN.to_vec()];
        Ok(cfg)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_node_with_roles() {
        let (ca, first) = Ca::create("lab", "ws", &[Role::Submit, Role::Exec]).unwrap();
        let info = first.info().unwrap();
        assert_eq!(info.name, "ws");
        assert_eq!(info.cluster, "lab");
        assert!(info.has(Role::Submit) && info.has(Role::Exec));

        let (_key, csr) = make_csr("h1").unwrap();
        let cert = ca.sign_csr(&csr, "h1", &[Role::Exec]).unwrap();
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
        let (ca, first) = Ca::create("lab", "ws", &[Role::Submit, Role::Exec]).unwrap();
        first.server_config().unwrap();
        first.client_config().unwrap();
        enroll_client_config(ca.fingerprint()).unwrap();
    }

    #[test]
    fn garbage_csr_is_an_error() {
        let (ca, _) = Ca::create("lab", "ws", &[Role::Exec]).unwrap();
        assert!(ca.sign_csr(b"not a csr", "h1", &[Role::Exec]).is_err());
        assert!(peer_cert(b"junk").is_err());
        assert!(Ca::load(b"junk", b"junk").is_err());
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
