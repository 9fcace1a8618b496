//! The join token: everything a new node needs to find and trust a cluster.
//!
//! A token is printed as `herd1-` followed by unpadded URL-safe base64 of a postcard
//! record holding:
//!
//! * the cluster name and the SHA-256 fingerprint of the cluster CA certificate, so
//!   the joining node authenticates the cluster before sending anything secret;
//! * a token id and a 24-byte random secret, checked by the node holding the CA key
//!   (which stores only a hash of the secret, so it can expire or revoke the token);
//! * an optional expiry (seconds since the Unix epoch);
//! * the addresses where the issuing node listens.
//!
//! Anything else (a typo, a truncated paste, another version) is a [`TokenError`].

use core::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "herd1-";

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Name of the cluster.
    pub cluster: String,
    /// SHA-256 of the cluster CA certificate (DER).
    pub ca_fingerprint: [u8; 32],
    /// Public token identifier.
    pub id: [u8; 8],
    /// Secret proving possession of the token.
    pub secret: [u8; 24],
    /// Expiry, seconds since the Unix epoch; `None` never expires.
    pub expires: Option<u64>,
    /// Where the issuing node listens.
    pub addrs: Vec<SocketAddr>,
}

/// Why a token string could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The string does not start with the expected prefix.
    #[error("not a herd join token (it should start with `{PREFIX}`)")]
    Prefix,
    /// The base64 part is damaged.
    #[error("join token is garbled (bad base64): check that it was copied whole")]
    Base64,
    /// The decoded record is damaged.
    #[error("join token is garbled: check that it was copied whole")]
    Record,
}

impl Token {
    /// Formats the token as printed by `herd init` and `herd token`.
    pub fn encode(&self) -> String {
        // A Token always serializes: it holds no maps or unsupported types.
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a token string; surrounding whitespace is ignored. Never panics.
    pub fn decode(s: &str) -> Result<Token, TokenError> {
        let body = s.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Base64)?;
        let (token, rest): (Token, &[u8]) =
            postcard::take_from_bytes(&bytes).map_err(|_| TokenError::Record)?;
        if !rest.is_empty() || token.cluster.is_empty() {
            return Err(TokenError::Record);
        }
        Ok(token)
    }

    /// The token id as lowercase hex (how `herd token --list` names it).
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Token {
        Token {
            cluster: "lab".into(),
            ca_fingerprint: [7; 32],
            id: [1, 2, 3, 4, 5, 6, 7, 8],
            secret: [9; 24],
            expires: Some(1_900_000_000),
            addrs: vec!["10.0.0.1:7420".parse().unwrap()],
        }
    }

    #[test]
    fn roundtrip() {
        let t = sample();
        let s = t.encode();
        assert!(s.starts_with("herd1-"));
        assert_eq!(Token::decode(&format!("  {s}\n")).unwrap(), t);
        assert_eq!(t.id_hex(), "0102030405060708");
    }

    #[test]
    fn garbled_tokens_are_refused() {
        let s = sample().encode();
        assert_eq!(Token::decode("hello"), Err(TokenError::Prefix));
        assert_eq!(Token::decode("herd1-@@@"), Err(TokenError::Base64));
        assert!(Token::decode(&s[..s.len() - 5]).is_err());
        assert!(Token::decode(&format!("{s}AAAA")).is_err());
    }
}
