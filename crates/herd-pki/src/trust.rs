//! What every handshake of a running node consults: [`Trust`].
//!
//! A node's TLS configurations are built once, when its endpoint opens, but two
//! things they depend on change while it runs: its own certificate (renewed before it
//! expires) and the keys the CA revoked (a new list arrives). So the configurations
//! hold no certificate and no list themselves: they ask a [`Trust`] at each handshake.
//!
//! * Its own chain comes from a certificate *resolver* (rustls `ResolvesServerCert`,
//!   `ResolvesClientCert`) that returns whatever [`Trust::set_identity`] stored last:
//!   new connections present the renewed certificate, open ones carry on.
//! * The peer's chain is checked by rustls' WebPKI verifiers (chain to the cluster CA,
//!   validity period, usage) wrapped by one that then refuses a certificate whose key
//!   [`Trust::set_revoked`] lists, with TLS's `certificate_revoked` alert. The check
//!   is by key (the SHA-256 of the raw public key, as in `nodes.toml`), so it covers
//!   every certificate ever issued for that key.
//! * **No session resumption**, on either side: a resumed TLS 1.3 session skips the
//!   certificate checks (the peer's certificate is restored from the ticket), so a
//!   node revoked, or whose certificate expired, since its last connection would get
//!   back in with a ticket. Every handshake is a full one (one ECDSA signature and
//!   verification more per connection; herd's connections are long-lived).
//!
//! Pure data behind a lock: no I/O, and the clock is rustls' (the handshake's time).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::{NodeIdentity, PkiError, key_fingerprint_of_cert, provider};

/// The certificate a node presents and the keys it refuses, shared by every
/// configuration built from it (cheap to clone: one `Arc`).
#[derive(Clone, Debug)]
pub struct Trust {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ca_der: Vec<u8>,
    current: RwLock<Arc<CertifiedKey>>,
    identity: RwLock<NodeIdentity>,
    revoked: RwLock<HashSet<String>>,
}

fn certified(identity: &NodeIdentity) -> Result<Arc<CertifiedKey>, PkiError> {
    let chain = vec![
        CertificateDer::from(identity.cert_der.clone()),
        CertificateDer::from(identity.ca_der.clone()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()));
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

impl Inner {
    fn refuse_revoked(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = key_fingerprint_of_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        if revoked.contains(&key) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(())
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca_der.clone()))?;
        Ok(Arc::new(roots))
    }
}

impl Trust {
    /// Presents `identity` and refuses nothing yet (beyond what the CA check refuses).
    /// Fails if its key does not match its certificate.
    pub fn new(identity: &NodeIdentity) -> Result<Trust, PkiError> {
        Ok(Trust {
            inner: Arc::new(Inner {
                ca_der: identity.ca_der.clone(),
                current: RwLock::new(certified(identity)?),
                identity: RwLock::new(identity.clone()),
                revoked: RwLock::new(HashSet::new()),
            }),
        })
    }

    /// From now on, handshakes present `identity` (a renewed certificate). It must be
    /// of the same cluster CA, and its key must match its certificate.
    pub fn set_identity(&self, identity: &NodeIdentity) -> Result<(), PkiError> {
        if identity.ca_der != self.inner.ca_der {
            return Err(PkiError::Malformed {
                what: "identity (another cluster CA)",
            });
        }
        let key = certified(identity)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = key;
        *self
            .inner
            .identity
            .write()
            .unwrap_or_else(|e| e.into_inner()) = identity.clone();
        Ok(())
    }

    /// The identity handshakes present now.
    pub fn identity(&self) -> NodeIdentity {
        self.inner
            .identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// From now on, handshakes refuse certificates whose key fingerprint (lowercase hex
    /// SHA-256 of the raw public key) is one of `keys`.
    pub fn set_revoked(&self, keys: impl IntoIterator<Item = String>) {
        *self
            .inner
            .revoked
            .write()
            .unwrap_or_else(|e| e.into_inner()) = keys.into_iter().collect();
    }

    /// Whether the key with this fingerprint is refused.
    pub fn is_revoked(&self, key: &str) -> bool {
        self.inner
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    /// Server side of every connection: presents the current chain, requires a client
    /// certificate from the cluster CA whose key is not revoked, *or none at all*
    /// (enrollment; the agent then allows nothing but `Enroll`).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let webpki = WebPkiClientVerifier::builder_with_provider(self.inner.roots()?, provider())
            .allow_unauthenticated()
            .build()?;
        let verifier = Arc::new(CheckedClient {
            inner: webpki,
            trust: self.inner.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Current(self.inner.clone())));
        cfg.alpn_protocols = vec![herd_proto::ALPN.to_vec()];
        // A resumed session would skip the checks above (see the module docs).
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(cfg)
    }

    /// Client side of node-to-node connections: verifies the server against the
    /// cluster CA and the revoked keys, and presents the current chain.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.inner.roots()?,
            provider(),
        )
        .build()
        .map_err(|e| PkiError::Rustls(rustls::Error::General(e.to_string())))?;
        let verifier = Arc::new(CheckedServer {
            inner: webpki,
            trust: self.inner.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Current(self.inner.clone())));
        cfg.alpn_protocols = vec![herd_proto::ALPN.to_vec()];
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(cfg)
    }
}

/// Hands out the current certificate, both as a server and as a client.
#[derive(Debug)]
struct Current(Arc<Inner>);

impl Current {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// rustls' WebPKI client verifier, then the revoked keys.
#[derive(Debug)]
struct CheckedClient {
    inner: Arc<dyn ClientCertVerifier>,
    trust: Arc<Inner>,
}

impl ClientCertVerifier for CheckedClient {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.trust.refuse_revoked(end_entity)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// rustls' WebPKI server verifier, then the revoked keys.
#[derive(Debug)]
struct CheckedServer {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    trust: Arc<Inner>,
}

impl ServerCertVerifier for CheckedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.trust.refuse_revoked(end_entity)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, Validity, make_csr};
    use herd_proto::Role;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn real_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn valid() -> Validity {
        Validity::new(real_now(), crate::DEFAULT_CERT_LIFETIME)
    }

    /// A node of `ca` named `name`, certified with `validity`.
    fn member(ca: &Ca, name: &str, validity: Validity) -> NodeIdentity {
        let (key_der, csr) = make_csr(name).unwrap();
        NodeIdentity {
            cert_der: ca.sign_csr(&csr, name, &[Role::Exec], validity).unwrap(),
            key_der,
            ca_der: ca.cert_der().to_vec(),
        }
    }

    /// Runs a TLS handshake in memory between `client` and `server`: the error of the
    /// side that failed first, or the certificate the server saw from the client.
    fn handshake(client: &Trust, server: &Trust) -> Result<Option<Vec<u8>>, rustls::Error> {
        handshake_with(
            &Arc::new(client.client_config().unwrap()),
            &Arc::new(server.server_config().unwrap()),
        )
    }

    /// [`handshake`] with configurations built once (as an endpoint's are).
    fn handshake_with(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
    ) -> Result<Option<Vec<u8>>, rustls::Error> {
        let name = ServerName::try_from(crate::SERVER_NAME).unwrap();
        let mut c = rustls::ClientConnection::new(client.clone(), name).unwrap();
        let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s
                    .peer_certificates()
                    .and_then(|certs| certs.first().map(|c| c.to_vec())));
            }
        }
        panic!("the handshake did not end");
    }

    fn revoked_error(e: &rustls::Error) -> bool {
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
                | rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)
        )
    }

    #[test]
    fn a_revoked_key_is_refused_by_either_side_of_a_handshake() {
        let (ca, ws) = Ca::create("lab", "ws", &[Role::Submit, Role::Exec], valid()).unwrap();
        let h1 = member(&ca, "h1", valid());
        let (ws, h1) = (Trust::new(&ws).unwrap(), Trust::new(&h1).unwrap());
        assert!(handshake(&h1, &ws).unwrap().is_some());
        assert!(handshake(&ws, &h1).unwrap().is_some());

        // ws learns that h1's key is revoked: it refuses h1 as a client and as a server.
        let key = key_fingerprint_of_cert(&h1.identity().cert_der).unwrap();
        ws.set_revoked([key.clone()]);
        assert!(ws.is_revoked(&key));
        let e = handshake(&h1, &ws).unwrap_err();
        assert!(revoked_error(&e), "{e:?}");
        let e = handshake(&ws, &h1).unwrap_err();
        assert!(revoked_error(&e), "{e:?}");
        // A certificate renewed for the revoked key is refused just the same.
        let renewed = NodeIdentity {
            cert_der: ca
                .sign_csr(
                    &crate::make_csr_for_key(&h1.identity().key_der, "h1").unwrap(),
                    "h1",
                    &[Role::Exec],
                    valid(),
                )
                .unwrap(),
            ..h1.identity()
        };
        h1.set_identity(&renewed).unwrap();
        assert!(revoked_error(&handshake(&h1, &ws).unwrap_err()));
        // Another key is not.
        let h2 = Trust::new(&member(&ca, "h2", valid())).unwrap();
        assert!(handshake(&h2, &ws).is_ok());
        // And the list can shrink again (a newer list is the whole truth).
        ws.set_revoked([]);
        assert!(handshake(&h1, &ws).is_ok());
    }

    #[test]
    fn a_node_revoked_since_its_last_connection_cannot_resume_its_session() {
        let (ca, ws) = Ca::create("lab", "ws", &[Role::Submit, Role::Exec], valid()).unwrap();
        let h1 = member(&ca, "h1", valid());
        let (ws, h1) = (Trust::new(&ws).unwrap(), Trust::new(&h1).unwrap());
        // The configurations live as long as the endpoint: built once.
        let (client, server) = (
            Arc::new(h1.client_config().unwrap()),
            Arc::new(ws.server_config().unwrap()),
        );
        for _ in 0..3 {
            assert!(handshake_with(&client, &server).is_ok());
        }
        ws.set_revoked([key_fingerprint_of_cert(&h1.identity().cert_der).unwrap()]);
        let e = handshake_with(&client, &server).unwrap_err();
        assert!(revoked_error(&e), "{e:?}");
    }

    #[test]
    fn a_renewed_certificate_is_presented_from_the_next_handshake_on() {
        let (ca, ws) = Ca::create("lab", "ws", &[Role::Submit, Role::Exec], valid()).unwrap();
        let ws = Trust::new(&ws).unwrap();
        let first = member(&ca, "h1", valid());
        let h1 = Trust::new(&first).unwrap();
        assert_eq!(handshake(&h1, &ws).unwrap(), Some(first.cert_der.clone()));
        let renewed = NodeIdentity {
            cert_der: ca
                .sign_csr(
                    &crate::make_csr_for_key(&first.key_der, "h1").unwrap(),
                    "h1",
                    &[Role::Exec],
                    Validity::new(real_now() + 5, crate::DEFAULT_CERT_LIFETIME),
                )
                .unwrap(),
            ..first.clone()
        };
        assert_ne!(renewed.cert_der, first.cert_der);
        h1.set_identity(&renewed).unwrap();
        assert_eq!(h1.identity(), renewed);
        assert_eq!(handshake(&h1, &ws).unwrap(), Some(renewed.cert_der.clone()));
        // A certificate whose key is not ours, or of another CA, is not taken.
        let other = member(&ca, "h1", valid());
        let mismatched = NodeIdentity {
            key_der: other.key_der,
            ..renewed.clone()
        };
        assert!(h1.set_identity(&mismatched).is_err());
        let (_, foreign) = Ca::create("lab", "x", &[Role::Exec], valid()).unwrap();
        assert!(h1.set_identity(&foreign).is_err());
        assert_eq!(h1.identity(), renewed);
    }

    #[test]
    fn expired_and_foreign_certificates_are_refused_and_no_certificate_may_only_enroll() {
        let (ca, ws) = Ca::create("lab", "ws", &[Role::Submit, Role::Exec], valid()).unwrap();
        let ws = Trust::new(&ws).unwrap();
        let old = Validity::new(real_now() - 40 * 86_400, crate::DEFAULT_CERT_LIFETIME);
        let expired = Trust::new(&member(&ca, "h1", old)).unwrap();
        let e = handshake(&expired, &ws).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
                    | rustls::Error::InvalidCertificate(CertificateError::Expired)
            ),
            "{e:?}"
        );
        let (_, foreign) = Ca::create("lab", "ws", &[Role::Exec], valid()).unwrap();
        let foreign = Trust::new(&foreign).unwrap();
        assert!(handshake(&foreign, &ws).is_err());
        assert!(handshake(&ws, &foreign).is_err());
        // A client with no certificate gets through the handshake (the agent then
        // allows only `Enroll`), the CA pinned by the token.
        let name = ServerName::try_from(crate::SERVER_NAME).unwrap();
        let cfg = crate::enroll_client_config(ca.fingerprint()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(ws.server_config().unwrap())).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!s.is_handshaking());
        assert!(s.peer_certificates().is_none());
    }
}
