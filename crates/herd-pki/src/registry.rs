//! The names of enrolled nodes, kept by the node that holds the cluster CA.
//!
//! A node's name is its identity everywhere (certificate CN, membership, `--on`, the
//! file service), so the CA signs a name for one key only. The registry is plain data,
//! serialized as TOML (`nodes.toml`): one record per name with the SHA-256 of the
//! node's public key ([`key_fingerprint_of_csr`], [`key_fingerprint_of_cert`]), its
//! roles, when it enrolled and with which token, and when its key was revoked. A
//! revoked node's record stays (the name stays taken, `herd remove --list` shows it
//! revoked); a name is free again only once its record is removed (`herd remove
//! NODE`), and a revoked key never enrolls again under any name (the revocation list
//! says so, see [`crate::revocation`]).

use serde::{Deserialize, Serialize};

use herd_proto::Role;

/// One enrolled node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// The node's name (its certificate's CN).
    pub name: String,
    /// SHA-256 of its public key (the raw key of its SubjectPublicKeyInfo), lowercase
    /// hex.
    pub key: String,
    /// Roles its certificate grants.
    pub roles: Vec<Role>,
    /// Unix seconds of (the first) enrollment.
    pub enrolled: u64,
    /// Id of the token it enrolled with (absent for the CA's own node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Unix seconds of the revocation of its key (`herd revoke`), if revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<u64>,
}

/// Every enrolled node of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistry {
    /// Format version of the file.
    #[serde(default = "one")]
    pub version: u32,
    /// The records, in enrollment order.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeRecord>,
}

fn one() -> u32 {
    1
}

/// What [`NodeRegistry::check`] found for a name and a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nobody holds the name.
    Free,
    /// The name is registered to this very key (a retried enrollment).
    Same,
    /// Another key holds the name.
    Taken(NodeRecord),
}

impl NodeRegistry {
    /// Parses `nodes.toml`.
    pub fn from_toml(s: &str) -> Result<NodeRegistry, toml::de::Error> {
        toml::from_str(s)
    }

    /// Formats `nodes.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The record of `name`.
    pub fn get(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Whether `key` may have `name`.
    pub fn check(&self, name: &str, key: &str) -> Claim {
        match self.get(name) {
            None => Claim::Free,
            Some(r) if r.key == key => Claim::Same,
            Some(r) => Claim::Taken(r.clone()),
        }
    }

    /// Registers `name` for `key`; a name already registered (to any key) is left as it
    /// is. Returns whether the registry changed.
    pub fn register(&mut self, record: NodeRecord) -> bool {
        if self.get(&record.name).is_some() {
            return false;
        }
        self.nodes.push(record);
        true
    }

    /// Records that `name`'s key was revoked at `at` (Unix seconds); returns whether
    /// that changed anything (a name not enrolled, or revoked before, does not).
    pub fn mark_revoked(&mut self, name: &str, at: u64) -> bool {
        match self.nodes.iter_mut().find(|n| n.name == name) {
            Some(r) if r.revoked.is_none() => {
                r.revoked = Some(at);
                true
            }
            _ => false,
        }
    }

    /// Forgets `name`; returns its record.
    pub fn remove(&mut self, name: &str) -> Option<NodeRecord> {
        let i = self.nodes.iter().position(|n| n.name == name)?;
        Some(self.nodes.remove(i))
    }
}

fn key_hex(raw_key: &[u8]) -> String {
    hex::encode(crate::fingerprint(raw_key))
}

/// The key fingerprint of a certificate signing request, after checking its
/// signature (which proves the requester holds the key).
pub fn key_fingerprint_of_csr(csr_der: &[u8]) -> Result<String, crate::PkiError> {
    use rcgen::PublicKeyData;
    let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.into())?;
    Ok(key_hex(csr.public_key.der_bytes()))
}

/// The key fingerprint of a certificate (DER).
pub fn key_fingerprint_of_cert(cert_der: &[u8]) -> Result<String, crate::PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|_| crate::PkiError::Malformed {
            what: "certificate",
        })?;
    Ok(key_hex(&cert.public_key().subject_public_key.data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, key: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            key: key.into(),
            roles: vec![Role::Exec],
            enrolled: 5,
            token: Some("ab".into()),
            revoked: None,
        }
    }

    #[test]
    fn a_name_belongs_to_one_key_until_removed() {
        let mut r = NodeRegistry::default();
        assert_eq!(r.check("h1", "k1"), Claim::Free);
        assert!(r.register(rec("h1", "k1")));
        assert_eq!(r.check("h1", "k1"), Claim::Same);
        assert_eq!(r.check("h1", "k2"), Claim::Taken(rec("h1", "k1")));
        assert!(!r.register(rec("h1", "k2")));
        assert_eq!(r.check("h2", "k2"), Claim::Free);
        assert_eq!(NodeRegistry::from_toml(&r.to_toml()).unwrap(), r);
        // Revoked: the record (and so the name) stays.
        assert!(r.mark_revoked("h1", 9));
        assert!(!r.mark_revoked("h1", 10), "revoked once");
        assert!(!r.mark_revoked("h9", 10));
        assert_eq!(r.get("h1").unwrap().revoked, Some(9));
        assert_eq!(
            r.check("h1", "k2"),
            Claim::Taken(r.get("h1").unwrap().clone())
        );
        assert_eq!(NodeRegistry::from_toml(&r.to_toml()).unwrap(), r);
        r.nodes[0].revoked = None;
        assert_eq!(r.remove("h1"), Some(rec("h1", "k1")));
        assert_eq!(r.check("h1", "k2"), Claim::Free);
        assert_eq!(r.remove("h1"), None);
        assert!(NodeRegistry::from_toml("version = 1\nbogus = 1\n").is_err());
    }

    #[test]
    fn key_fingerprints_of_request_and_certificate_agree() {
        let (ca, first) =
            crate::Ca::create("lab", "ws", &[Role::Exec], crate::test_validity()).unwrap();
        let (_k, csr) = crate::make_csr("h1").unwrap();
        let (_k2, other) = crate::make_csr("h1").unwrap();
        let cert = ca
            .sign_csr(&csr, "h1", &[Role::Exec], crate::test_validity())
            .unwrap();
        let a = key_fingerprint_of_csr(&csr).unwrap();
        assert_eq!(a, key_fingerprint_of_cert(&cert).unwrap());
        assert_ne!(a, key_fingerprint_of_csr(&other).unwrap());
        assert_ne!(a, key_fingerprint_of_cert(&first.cert_der).unwrap());
        assert!(key_fingerprint_of_csr(b"junk").is_err());
        assert!(key_fingerprint_of_cert(b"junk").is_err());
    }
}
