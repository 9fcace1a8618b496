//! Wire format: herd framing around foca packets, the "left" notice, broadcast items.
//!
//! Every datagram is `[tag: u8][version: u8][body]`, and every body starts with the
//! sender's [`NodeId`] (so [`peek_sender`] works on all of them):
//!
//! | tag | body                                                                          |
//! |-----|-------------------------------------------------------------------------------|
//! | 0   | a foca packet (postcard header whose first field is the sender)               |
//! | 1   | a [`LeftNotice`] (postcard), sent directly to every live member on leave      |
//! | 2   | a [`SyncRequest`] (postcard): "send me your member list"                      |
//! | 3   | a sync chunk: sender, `u16` big-endian count, that many postcard foca `Member`s |
//!
//! Unknown tags and other versions are rejected with an [`Error`]. Custom broadcast items
//! (load reports and "left" records) travel inside foca packets, encoded as [`Item`].
//! Sync chunks use the same member encoding as foca's piggybacked updates.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::LoadReport;
use crate::id::{MAX_NAME_LEN, NodeId};

/// Tag of a foca (SWIM) packet.
pub(crate) const TAG_SWIM: u8 = 0;
/// Tag of a [`LeftNotice`].
pub(crate) const TAG_LEFT: u8 = 1;
/// Tag of a [`SyncRequest`].
pub(crate) const TAG_SYNC_REQUEST: u8 = 2;
/// Tag of a sync chunk (part of the answer to a [`SyncRequest`]).
pub(crate) const TAG_SYNC: u8 = 3;
/// Bytes of framing (tag, version) before the body.
pub(crate) const FRAME_LEN: usize = 2;
/// Current wire version (second byte of every packet).
pub const WIRE_VERSION: u8 = 4;

/// Why a packet (or a piece of one) was rejected. Never caused by a local bug: these are
/// all about the input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The datagram had no bytes at all.
    #[error("empty membership packet")]
    Empty,
    /// The datagram is larger than [`Config::max_packet_size`](crate::Config::max_packet_size).
    #[error("membership packet of {len} bytes exceeds the {max}-byte limit")]
    TooBig {
        /// Size of the datagram.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The first byte is not a tag this version knows.
    #[error("unknown membership packet tag {0}")]
    UnknownTag(u8),
    /// The peer speaks another wire version; upgrade the older node.
    #[error("membership wire version {got} is not supported (this node speaks {expected})")]
    Version {
        /// Version in the packet.
        got: u8,
        /// Version this node speaks.
        expected: u8,
    },
    /// The body does not decode (truncated, corrupted or hostile input).
    #[error("malformed membership packet: {0}")]
    Malformed(String),
    /// The packet decoded but the protocol refused it (e.g. it claims to come from us).
    #[error("membership packet rejected: {0}")]
    Rejected(String),
}

/// Direct notice that a node is leaving the cluster gracefully.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct LeftNotice {
    /// The leaving node (also the sender).
    pub id: NodeId,
}

/// Asks the receiver for its whole member list (answered with sync chunks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SyncRequest {
    /// The requesting node (also the sender).
    pub from: NodeId,
}

/// A custom broadcast item disseminated by foca alongside membership updates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Item {
    /// A node's load report, versioned by `(bump, report.seq)`.
    Load {
        /// Reporting node.
        name: String,
        /// Its incarnation when it made the report.
        bump: u32,
        /// The report.
        report: LoadReport,
    },
    /// A node incarnation left gracefully.
    Left {
        /// Leaving node.
        name: String,
        /// Incarnation that left.
        bump: u32,
    },
}

/// Checks the framing and returns `(tag, body)`.
pub(crate) fn split_frame(data: &[u8], max: usize) -> Result<(u8, &[u8]), Error> {
    if data.is_empty() {
        return Err(Error::Empty);
    }
    if data.len() > max {
        return Err(Error::TooBig {
            len: data.len(),
            max,
        });
    }
    let tag = data[0];
    if tag > TAG_SYNC {
        return Err(Error::UnknownTag(tag));
    }
    match data.get(1) {
        Some(&WIRE_VERSION) => Ok((tag, &data[2..])),
        Some(&got) => Err(Error::Version {
            got,
            expected: WIRE_VERSION,
        }),
        None => Err(Error::Malformed("packet truncated after its tag".into())),
    }
}

/// Frames `body` with `tag`.
pub(crate) fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 2);
    b.put_u8(tag);
    b.put_u8(WIRE_VERSION);
    b.extend_from_slice(body);
    b.freeze()
}

/// Rejects names that are empty or too long (after decoding).
pub(crate) fn check_name(id: &NodeId) -> Result<(), Error> {
    if id.name.is_empty() || id.name.len() > MAX_NAME_LEN {
        return Err(Error::Malformed(format!(
            "node name of {} bytes (must be 1..={MAX_NAME_LEN})",
            id.name.len()
        )));
    }
    Ok(())
}

pub(crate) fn malformed(e: postcard::Error) -> Error {
    Error::Malformed(e.to_string())
}

/// Decodes the sender identity of any herd membership packet (see
/// [`Membership::peek_sender`](crate::Membership::peek_sender)).
pub(crate) fn peek_sender(data: &[u8]) -> Result<NodeId, Error> {
    // The size limit is checked again by `handle_data`; here only u16 matters.
    let (tag, body) = split_frame(data, u16::MAX as usize)?;
    let id = match tag {
        // foca::Header's first field is `src`, postcard encodes fields in order; a sync
        // chunk starts with its sender too.
        TAG_SWIM | TAG_SYNC => {
            postcard::take_from_bytes::<NodeId>(body)
                .map_err(malformed)?
                .0
        }
        TAG_LEFT => decode_exact::<LeftNotice>(body)?.id,
        _ => decode_exact::<SyncRequest>(body)?.from,
    };
    check_name(&id)?;
    Ok(id)
}

/// Decodes a value that must use every byte of `body`.
pub(crate) fn decode_exact<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(Error::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// Encodes a value with postcard (infallible for our types; an error yields empty bytes,
/// which every receiver rejects).
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Splits a member list (`u16` big-endian count, then postcard `Member`s) into the
/// encoded members and what follows them.
pub(crate) fn split_members(data: &[u8]) -> Result<(Vec<&[u8]>, &[u8]), Error> {
    let [hi, lo, rest @ ..] = data else {
        return Err(Error::Malformed("member list truncated".into()));
    };
    let count = usize::from(u16::from_be_bytes([*hi, *lo]));
    let mut cursor = rest;
    let mut members = Vec::with_capacity(count.min(256));
    for _ in 0..count {
        let (_, after) =
            postcard::take_from_bytes::<foca::Member<NodeId>>(cursor).map_err(malformed)?;
        members.push(&cursor[..cursor.len() - after.len()]);
        cursor = after;
    }
    Ok((members, cursor))
}

/// Encodes `members` as sync chunks from `from`, each at most `max` bytes.
pub(crate) fn sync_chunks<'a>(
    from: &NodeId,
    members: impl Iterator<Item = &'a foca::Member<NodeId>>,
    max: usize,
) -> Vec<Bytes> {
    let head = encode(from);
    let start = || {
        let mut b = Vec::with_capacity(max);
        b.extend_from_slice(&[TAG_SYNC, WIRE_VERSION]);
        b.extend_from_slice(&head);
        b.extend_from_slice(&[0, 0]);
        (b, 0u16)
    };
    let count_at = FRAME_LEN + head.len();
    let mut chunks = Vec::new();
    let (mut buf, mut count) = start();
    for member in members {
        let bytes = encode(member);
        if bytes.is_empty() || count_at + 2 + bytes.len() > max {
            continue; // cannot ever fit (absurdly long name)
        }
        if buf.len() + bytes.len() > max || count == u16::MAX {
            buf[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
            chunks.push(Bytes::from(std::mem::replace(&mut buf, start().0)));
            count = 0;
        }
        buf.extend_from_slice(&bytes);
        count += 1;
    }
    if count > 0 {
        buf[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
        chunks.push(Bytes::from(buf));
    }
    chunks
}
