//! Join-token records kept by the node that holds the cluster CA.
//!
//! The store is plain data, serialized as TOML (`tokens.toml`). A record keeps the
//! token's id, a BLAKE3 hash of its secret (never the secret), the roles it grants,
//! when it was made, when it expires, whether it was revoked, how often it was used and
//! how often it may be used (`max_uses`; absent: no limit). A token used up is refused
//! with [`RemoteErrorKind::TokenUsed`], distinct from expired, revoked and unknown.

use core::net::SocketAddr;

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
    /// How many nodes may enroll with it; absent means no limit (also what records
    /// written before the limit existed read as).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
}

impl TokenRecord {
    /// Whether every use it allows was taken.
    pub fn used_up(&self) -> bool {
        self.max_uses.is_some_and(|m| self.uses >= m)
    }
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
    /// forever) and for `max_uses` enrollments (`None`: any number), pointing at
    /// `addrs`.
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &mut self,
        cluster: &str,
        ca_fingerprint: [u8; 32],
        roles: &[Role],
        now: u64,
        ttl_secs: Option<u64>,
        max_uses: Option<u64>,
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
            max_uses,
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

    /// Checks a presented token; on success counts the use and returns its roles. A
    /// refusal changes nothing.
    pub fn redeem(
        &mut self,
        id: &[u8; 8],
        secret: &[u8; 24],
        now: u64,
    ) -> Result<Vec<Role>, RemoteErrorKind> {
        let i = self.find_valid(id, secret, now)?;
        let rec = &mut self.tokens[i];
        if rec.used_up() {
            return Err(RemoteErrorKind::TokenUsed);
        }
        rec.uses += 1;
        Ok(rec.roles.clone())
    }

    /// Checks a presented token like [`redeem`](Self::redeem) but neither counts a use
    /// nor requires one left: for a node enrolling again under its registered name
    /// with its registered key (an enrollment whose answer was lost).
    pub fn verify(
        &self,
        id: &[u8; 8],
        secret: &[u8; 24],
        now: u64,
    ) -> Result<Vec<Role>, RemoteErrorKind> {
        let i = self.find_valid(id, secret, now)?;
        Ok(self.tokens[i].roles.clone())
    }

    /// The index of the record of a token whose secret matches, not revoked and not
    /// expired.
    fn find_valid(
        &self,
        id: &[u8; 8],
        secret: &[u8; 24],
        now: u64,
    ) -> Result<usize, RemoteErrorKind> {
        let id = hex::encode(id);
        let i = self
            .tokens
            .iter()
            .position(|r| r.id == id)
            .ok_or(RemoteErrorKind::BadToken)?;
        let rec = &self.tokens[i];
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
        Ok(i)
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
        let t = s.issue("lab", [1; 32], &[Role::Exec], 100, Some(60), None, vec![]);
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
    fn uses_are_counted_and_a_used_up_token_is_refused_as_such() {
        let mut s = TokenStore::default();
        let once = s.issue("lab", [1; 32], &[Role::Exec], 100, None, Some(1), vec![]);
        let twice = s.issue("lab", [1; 32], &[Role::Exec], 100, None, Some(2), vec![]);
        let any = s.issue("lab", [1; 32], &[Role::Exec], 100, None, None, vec![]);
        // (token, uses that succeed)
        for (t, ok) in [(&once, 1), (&twice, 2), (&any, 50)] {
            for _ in 0..ok {
                assert_eq!(s.redeem(&t.id, &t.secret, 120), Ok(vec![Role::Exec]));
            }
            if t.id != any.id {
                let before = s.clone();
                assert_eq!(
                    s.redeem(&t.id, &t.secret, 120),
                    Err(RemoteErrorKind::TokenUsed)
                );
                assert_eq!(s, before, "a refusal changes nothing");
                // Still a valid token of this cluster for a lost answer's retry.
                assert_eq!(s.verify(&t.id, &t.secret, 120), Ok(vec![Role::Exec]));
            }
        }
        // Wrong secrets, expiry and revocation come before "used": they say more.
        let mut wrong = once.secret;
        wrong[1] ^= 4;
        assert_eq!(
            s.redeem(&once.id, &wrong, 120),
            Err(RemoteErrorKind::BadToken)
        );
        assert_eq!(
            s.verify(&once.id, &wrong, 120),
            Err(RemoteErrorKind::BadToken)
        );
        s.revoke(&once.id_hex()).unwrap();
        assert_eq!(
            s.redeem(&once.id, &once.secret, 120),
            Err(RemoteErrorKind::TokenRevoked)
        );
        assert_eq!(TokenStore::from_toml(&s.to_toml()).unwrap(), s);
        // Records of before the limit read as unlimited.
        let old = "version = 1\n[[token]]\nid = \"00\"\nsecret_hash = \"00\"\nroles = [\"exec\"]\ncreated = 1\nuses = 9\n";
        let old = TokenStore::from_toml(old).unwrap();
        assert_eq!(old.tokens[0].max_uses, None);
        assert!(!old.tokens[0].used_up());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(TokenStore::from_toml("version = 1\nbogus = 2\n").is_err());
    }
}
