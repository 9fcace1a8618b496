//! Node identities: [`NodeId`] and the key foca uses to tell incarnations of one node apart.
//!
//! A herd node is known by its **name** (the CN of its TLS certificate, unique in the
//! cluster). Every time a node process starts it picks a fresh **bump** (the agent uses
//! seconds since the epoch), and every time the cluster declares it down it renews itself
//! with `bump + 1`. Two identities with the same name are two incarnations of one node:
//! the higher bump wins, so a restarted node replaces its dead predecessor.

use std::cmp::Ordering;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Longest node name accepted on the wire (a DNS name is at most 253 bytes).
pub const MAX_NAME_LEN: usize = 253;

/// A node's identity on the wire.
///
/// Foca [`Identity`](foca::Identity) semantics: the identity's address (the thing two
/// incarnations share) is the `name`; [`renew`](foca::Identity::renew) returns the same
/// name and socket address with `bump + 1`; in a conflict between two identities with the
/// same name the higher `bump` wins (ties broken by the socket address, so every node
/// picks the same winner).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Cluster-unique node name (its certificate name).
    pub name: String,
    /// Where the node's agent receives membership datagrams.
    pub addr: SocketAddr,
    /// Incarnation counter of this name: fresh per process start, `+1` per rejoin.
    pub bump: u32,
}

impl NodeId {
    /// Builds an identity.
    pub fn new(name: impl Into<String>, addr: SocketAddr, bump: u32) -> Self {
        Self {
            name: name.into(),
            addr,
            bump,
        }
    }

    /// The identity used to contact a seed whose name is not known yet (empty name).
    pub(crate) fn placeholder(addr: SocketAddr) -> Self {
        Self {
            name: String::new(),
            addr,
            bump: 0,
        }
    }

    /// Whether this is a [`placeholder`](Self::placeholder) rather than a real node.
    pub(crate) fn is_placeholder(&self) -> bool {
        self.name.is_empty()
    }

    /// Whether `self` replaces `other` (same name): higher bump, then higher address.
    pub fn supersedes(&self, other: &NodeId) -> bool {
        match self.bump.cmp(&other.bump) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => self.addr > other.addr,
        }
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}@{}", self.name, self.bump, self.addr)
    }
}

impl foca::Identity for NodeId {
    type Addr = NameKey;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            name: self.name.clone(),
            addr: self.addr,
            bump: self.bump.checked_add(1)?,
        })
    }

    fn addr(&self) -> NameKey {
        NameKey::new(&self.name)
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.supersedes(adversary)
    }
}

/// Bytes of a name stored inline by [`NameKey`].
const INLINE: usize = 39;

/// Foca's `Identity::Addr` for [`NodeId`]: exactly the node name, compared by value.
///
/// Foca calls `addr()` on *every* known member for *every* update it applies (its member
/// list is a `Vec` scanned linearly), so this must not allocate. Names of up to 39 bytes
/// (every realistic host name) are copied inline; longer ones fall back to the heap. The
/// representation is canonical (a name has exactly one form), so the derived equality is
/// name equality. Measured in the 1,000-node simulation, an `Addr = String` (one heap
/// allocation per call) made joins several times slower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameKey {
    /// A name of at most 39 bytes: its length and bytes (zero padded).
    Inline(u8, [u8; INLINE]),
    /// A longer name.
    Heap(Box<str>),
}

impl NameKey {
    /// The key of `name`.
    pub fn new(name: &str) -> Self {
        let bytes = name.as_bytes();
        if bytes.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..bytes.len()].copy_from_slice(bytes);
            NameKey::Inline(bytes.len() as u8, buf)
        } else {
            NameKey::Heap(name.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(name: &str, bump: u32) -> NodeId {
        NodeId::new(name, "10.0.0.1:7000".parse().unwrap(), bump)
    }

    #[test]
    fn renew_bumps_and_wins() {
        let a = id("alpha", 7);
        let b = a.renew().unwrap();
        assert_eq!((b.name.as_str(), b.addr, b.bump), ("alpha", a.addr, 8));
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        assert_eq!(a.addr(), b.addr());
        assert_eq!(id("x", u32::MAX).renew(), None);
    }

    #[test]
    fn name_key_is_exact() {
        let long = "l".repeat(100);
        assert_eq!(NameKey::new("abc"), NameKey::new("abc"));
        assert_ne!(NameKey::new("abc"), NameKey::new("abd"));
        assert_ne!(NameKey::new("abc"), NameKey::new("abc\0"));
        assert_eq!(NameKey::new(&long), NameKey::new(&long));
        assert_ne!(NameKey::new(&long), NameKey::new(&long[..99]));
        let edge = "e".repeat(INLINE);
        assert!(matches!(NameKey::new(&edge), NameKey::Inline(..)));
        assert!(matches!(
            NameKey::new(&format!("{edge}e")),
            NameKey::Heap(_)
        ));
    }

    #[test]
    fn equal_bumps_pick_one_winner() {
        let a = NodeId::new("n", "10.0.0.1:1".parse().unwrap(), 3);
        let b = NodeId::new("n", "10.0.0.2:1".parse().unwrap(), 3);
        assert!(b.win_addr_conflict(&a) ^ a.win_addr_conflict(&b));
    }
}
