//! The cluster's revocation list: which node keys the CA revoked.
//!
//! A contract between the CA node (which signs it, `herd revoke`), every node that
//! keeps it in its state directory (`revoked.list`) and every node that hands it to a
//! peer ([`PeerRequest::Revocations`](crate::PeerRequest::Revocations)). The list is
//! [`RevocationList`], encoded as its own format byte ([`LIST_FORMAT`]) and postcard
//! (not the frame's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION): a signed list must
//! stay readable across protocol bumps); [`SignedRevocations`] carries those bytes and
//! the CA's signature over them. Signing and checking are `herd-pki`'s; this module
//! only turns values into bytes and back.
//!
//! A list names each revoked key by the SHA-256 of its raw public key (lowercase hex,
//! as in the CA node's `nodes.toml`), so it covers every certificate ever issued for
//! that key, renewed ones included. Its `version` grows by one per change; a node
//! keeps the highest version whose signature checks and ignores any other.

use serde::{Deserialize, Serialize};

/// Format byte leading an encoded [`RevocationList`] and an encoded
/// [`SignedRevocations`].
pub const LIST_FORMAT: u8 = 1;

/// Most entries a list may hold (a bound for decoding what a peer sends).
pub const MAX_REVOKED: usize = 65_536;

/// One revoked key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedKey {
    /// The name its certificates carry (for people: the key is what is checked).
    pub name: String,
    /// SHA-256 of the raw public key, lowercase hex.
    pub key: String,
    /// Unix seconds of the revocation.
    pub at: u64,
}

/// The revoked keys of one cluster, at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// The cluster's name (the CA certificate's O).
    pub cluster: String,
    /// Grows by one with every change; 0 is "no list".
    pub version: u64,
    /// Unix seconds when the CA signed this version.
    pub issued: u64,
    /// The revoked keys, oldest first.
    pub revoked: Vec<RevokedKey>,
}

/// Why bytes are not a list.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// Another format, or no bytes.
    #[error("revocation list of format {0:?} (this herd reads {LIST_FORMAT})")]
    Format(Option<u8>),
    /// The bytes do not decode.
    #[error("malformed revocation list: {0}")]
    Malformed(String),
}

fn decode_exact<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ListError> {
    match bytes.split_first() {
        Some((&LIST_FORMAT, rest)) => {
            let (value, tail) = postcard::take_from_bytes::<T>(rest)
                .map_err(|e| ListError::Malformed(e.to_string()))?;
            if !tail.is_empty() {
                return Err(ListError::Malformed(format!(
                    "{} trailing bytes",
                    tail.len()
                )));
            }
            Ok(value)
        }
        Some((&other, _)) => Err(ListError::Format(Some(other))),
        None => Err(ListError::Format(None)),
    }
}

fn encode_with_format<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![LIST_FORMAT];
    // Infallible for these types (plain strings, integers and byte vectors).
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    out
}

impl RevocationList {
    /// The bytes the CA signs: [`LIST_FORMAT`], then postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_with_format(self)
    }

    /// Reads [`to_bytes`](Self::to_bytes)'s output. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<RevocationList, ListError> {
        let list: RevocationList = decode_exact(bytes)?;
        if list.revoked.len() > MAX_REVOKED {
            return Err(ListError::Malformed(format!(
                "{} entries (at most {MAX_REVOKED})",
                list.revoked.len()
            )));
        }
        Ok(list)
    }

    /// Whether the key with this fingerprint (lowercase hex) is revoked.
    pub fn contains_key(&self, key: &str) -> bool {
        self.revoked.iter().any(|r| r.key == key)
    }

    /// The entries naming `name`.
    pub fn entries_for<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a RevokedKey> {
        self.revoked.iter().filter(move |r| r.name == name)
    }
}

/// A list as the CA signed it: the list's bytes and the signature over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocations {
    /// [`RevocationList::to_bytes`].
    pub body: Vec<u8>,
    /// The CA key's signature (see `herd_pki::verify_revocations` for what is signed).
    pub signature: Vec<u8>,
}

impl SignedRevocations {
    /// As kept in `revoked.list`: [`LIST_FORMAT`], then postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_with_format(self)
    }

    /// Reads [`to_bytes`](Self::to_bytes)'s output (the signature is not checked
    /// here). Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedRevocations, ListError> {
        decode_exact(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_garbage_is_refused() {
        let list = RevocationList {
            cluster: "lab".into(),
            version: 3,
            issued: 9,
            revoked: vec![RevokedKey {
                name: "h2".into(),
                key: "ab".repeat(32),
                at: 7,
            }],
        };
        let bytes = list.to_bytes();
        assert_eq!(RevocationList::from_bytes(&bytes), Ok(list.clone()));
        assert!(list.contains_key(&"ab".repeat(32)));
        assert!(!list.contains_key("cd"));
        assert_eq!(list.entries_for("h2").count(), 1);
        let signed = SignedRevocations {
            body: bytes.clone(),
            signature: vec![1, 2, 3],
        };
        assert_eq!(
            SignedRevocations::from_bytes(&signed.to_bytes()),
            Ok(signed)
        );
        // Another format, nothing, trailing bytes, truncation.
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(
            RevocationList::from_bytes(&other),
            Err(ListError::Format(Some(9)))
        );
        assert_eq!(
            RevocationList::from_bytes(&[]),
            Err(ListError::Format(None))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert!(RevocationList::from_bytes(&long).is_err());
        assert!(RevocationList::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }
}
