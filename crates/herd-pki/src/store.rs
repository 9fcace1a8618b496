//! Join-token records kept by the node that holds the cluster CA.
//!
//! The store is plain data, serialized as TOML (`tokens.toml`). A record keeps the
//! token's id, a BLAKE3 hash of its secret (never the secret), the roles it grants,
//! when it was made, when it expires, whether it was revoked and how often it was used.

use std::net::SocketAddr;

use herd_proto::{RemoteErrorKind, Role, Token};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// One issued token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Token id, lowercase hex.
    pub id: String,
    /// BLAKE3 of the secret, lowercase hex.
    pub secret_hash: String,
    /// Roles granted to nodes that enroll with it.
    pub roles: Vec<Role>,
    /// Unix seconds of creation.
    pub created: u64,
    /// Unix seconds of expiry; absent means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Whether it was revoked.
    #[serde(default)]
    pub revoked: bool,
    /// How many nodes enrolled with it.
    #[serde(default)]
    pub uses: u64,
}

/// All tokens of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenStore {
    /// Format version of the file.
    #[serde(default = "one")]
    pub version: u32,
    /// The records, oldest first.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenRecord>,
}

fn one() -> u32 {
    1
}

fn hash_hex(secret: &[u8]) -> String {
    hex::encode(blake3::hash(secret).as_bytes())
}

impl TokenStore {
    /// Parses `tokens.toml`.
    pub fn from_toml(s: &str) -> Result<TokenStore, toml::de::Error> {
        toml::from_str(s)
    }

    /// Formats `tokens.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Issues a new token granting `roles`, valid for `ttl_secs` from `now` (`None`:
    /// forever), pointing at `addrs`.
    pub fn issue(
        &mut self,
        cluster: &str,
        ca_fingerprint: [u8; 32],
        roles: &[Role],
        now: u64,
        ttl_secs: Option<u64>,
        addrs: Vec<SocketAddr>,
    ) -> Token {
        let mut rng = rand::rng();
        let mut id = [0u8; 8];
        let mut secret = [0u8; 24];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let expires = ttl_secs.map(|t| now.saturating_add(t));
        self.tokens.push(TokenRecord {
            id: hex::encode(id),
            secret_hash: hash_hex(&secret),
            roles: roles.to_vec(),
            created: now,
            expires,
            revoked: false,
            uses: 0,
        });
        Token {
            cluster: cluster.to_string(),
            ca_fingerprint,
            id,
            secret,
            expires,
            addrs,
        }
    }

    /// Checks a presented token; on success counts the use and returns its roles.
    pub fn redeem(
        &mut self,
        id: &[u8; 8],
        secret: &[u8; 24],
        now: u64,
    ) -> Result<Vec<Role>, RemoteErrorKind> {
        let id = hex::encode(id);
        let rec = self
            .tokens
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or(RemoteErrorKind::BadToken)?;
        // Compare hashes: constant-time with respect to the secret.
        if !constant_eq(rec.secret_hash.as_bytes(), hash_hex(secret).as_bytes()) {
            return Err(RemoteErrorKind::BadToken);
        }
        if rec.revoked {
            return Err(RemoteErrorKind::TokenRevoked);
        }
        if rec.expires.is_some_and(|e| now >= e) {
            return Err(RemoteErrorKind::TokenExpired);
        }
        rec.uses += 1;
        Ok(rec.roles.clone())
    }

    /// Revokes every token whose id starts with `prefix` (at least 4 hex digits, and
    /// it must match exactly one token). Returns the full id revoked.
    pub fn revoke(&mut self, prefix: &str) -> Result<String, String> {
        if prefix.len() < 4 {
            return Err("give at least 4 hex digits of the token id".into());
        }
        let mut matches = self.tokens.iter_mut().filter(|r| r.id.starts_with(prefix));
        let Some(rec) = matches.next() else {
            return Err(format!("no token id starts with {prefix:?}"));
        };
        rec.revoked = true;
        let id = rec.id.clone();
        if matches.next().is_some() {
            return Err(format!(
                "{prefix:?} matches several tokens; give more digits"
            ));
        }
        Ok(id)
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_redeem_expire_revoke() {
        let mut s = TokenStore::default();
        let t = s.issue("lab", [1; 32], &[Role::Exec], 100, Some(60), vec![]);
        assert_eq!(s.redeem(&t.id, &t.secret, 120), Ok(vec![Role::Exec]));
        assert_eq!(s.tokens[0].uses, 1);
        let mut wrong = t.secret;
        wrong[0] ^= 1;
        assert_eq!(s.redeem(&t.id, &wrong, 120), Err(RemoteErrorKind::BadToken));
        assert_eq!(
            s.redeem(&[0; 8], &t.secret, 120),
            Err(RemoteErrorKind::BadToken)
        );
        assert_eq!(
            s.redeem(&t.id, &t.secret, 160),
            Err(RemoteErrorKind::TokenExpired)
        );

        let t2 = s.issue(
            "lab",
            [1; 32],
            &[Role::Exec, Role::Submit],
            100,
            None,
            vec![],
        );
        assert!(s.redeem(&t2.id, &t2.secret, u64::MAX - 1).is_ok());
        assert_eq!(s.revoke(&t2.id_hex()[..6]), Ok(t2.id_hex()));
        assert_eq!(
            s.redeem(&t2.id, &t2.secret, 100),
            Err(RemoteErrorKind::TokenRevoked)
        );
        assert!(s.revoke("zz").is_err());

        let back = TokenStore::from_toml(&s.to_toml()).unwrap();
        assert_eq!(back, s);
        assert!(!s.to_toml().contains(&hex::encode(t2.secret)));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(TokenStore::from_toml("version = 1\nbogus = 2\n").is_err());
    }
}
