//! Every framed message a peer, a task's helper, the CLI or a per-user child can send:
//! `herd_proto::decode::<T>` for each wire type (picked by the first byte), and the
//! tokio codec fed the bytes in random chunks.
//!
//! Properties: never panics; what decodes re-encodes to bytes that decode to the same
//! encoding (a stable round trip); the pure follow-ups the receivers run
//! (`required_role`, `Change::path`, `Attr::version`, ...) do not panic; the codec cuts
//! the same frames whatever the chunking, never holds much more than what arrived, and
//! refuses an announced length over `MAX_FRAME` at once.
#![no_main]

use bytes::BytesMut;
use herd_proto::fs::{CommitFrame, CommitReport, FsCall, FsReply, FsRequest, FsResponse};
use herd_proto::{
    LocalRequest, LocalResponse, MAX_FRAME, PeerRequest, PeerResponse, RunEvent, TaskInput,
    TaskOutput, decode, encode,
};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::Decoder;

/// Decodes `payload` as `T`; on success re-encodes and checks the round trip.
fn round_trip<T: Serialize + DeserializeOwned>(payload: &[u8]) -> Option<T> {
    let v: T = decode(payload).ok()?;
    let e1 = encode(&v).expect("a decoded value re-encodes");
    let w: T = decode(&e1).expect("a re-encoded value decodes");
    let e2 = encode(&w).expect("re-encodes again");
    assert_eq!(e1, e2, "round trip is not stable");
    Some(v)
}

fn fs_request(r: &FsRequest) {
    if let FsRequest::Validate { items } = r {
        for (p, v, _) in items {
            let _ = herd_fs::source::path_from_bytes(p);
            let _ = v.map(|v| v.size);
        }
    }
}

fn fs_response(r: &FsResponse) {
    match r {
        FsResponse::Attr(a) => {
            let _ = a.version();
        }
        FsResponse::Entries(es) => {
            // What the helper's cache does with a listing it receives.
            let _ = herd_fs::cache::listing_digest(es);
            for e in es {
                let _ = herd_proto::fs::Version::from(&e.attr);
            }
        }
        FsResponse::Bundle(b) => {
            for p in b {
                let _ = p.attr.map(|a| a.version());
            }
        }
        _ => {}
    }
}

fn task_output(o: &TaskOutput) {
    if let TaskOutput::Change(c) = o {
        let _ = herd_fs::source::path_from_bytes(c.path());
    }
}

/// The codec fed `stream` in chunks whose sizes come from `sizes`; returns the frames
/// cut (and whether it stopped at an error).
fn cut(stream: &[u8], sizes: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut c = herd_proto::codec();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0usize;
    let mut k = 0usize;
    while fed < stream.len() {
        let n = sizes
            .get(k % sizes.len().max(1))
            .map_or(stream.len(), |&s| 1 + s as usize % 97)
            .min(stream.len() - fed);
        k += 1;
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            match c.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.len() <= MAX_FRAME);
                    // What the receivers do with a frame.
                    let _ = decode::<PeerRequest>(&f);
                    let _ = decode::<TaskOutput>(&f);
                    frames.push(f.to_vec());
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        // Never reserves what a frame announces: holds about what arrived.
        assert!(
            buf.capacity() <= 2 * fed + 64 * 1024,
            "holds {} bytes for {} received",
            buf.capacity(),
            fed
        );
    }
    (frames, false)
}

/// The frames a stream holds, by the book (4-byte big-endian length, then payload).
fn reference(stream: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    let mut rest = stream;
    while rest.len() >= 4 {
        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if n > MAX_FRAME {
            return (out, true);
        }
        if rest.len() < 4 + n {
            break;
        }
        out.push(rest[4..4 + n].to_vec());
        rest = &rest[4 + n..];
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 14 {
        0 => {
            if let Some(r) = round_trip::<PeerRequest>(rest) {
                let _ = r.required_role();
                if let PeerRequest::Fs { req, .. } = &r {
                    fs_request(req);
                }
            }
        }
        1 => {
            let _ = round_trip::<PeerResponse>(rest);
        }
        2 => {
            let _ = round_trip::<TaskInput>(rest);
        }
        3 => {
            if let Some(o) = round_trip::<TaskOutput>(rest) {
                task_output(&o);
            }
        }
        4 => {
            let _ = round_trip::<LocalRequest>(rest);
        }
        5 => {
            if let Some(RunEvent::Output(o)) = round_trip::<RunEvent>(rest) {
                task_output(&o);
            }
        }
        6 => {
            if let Some(c) = round_trip::<FsCall>(rest) {
                fs_request(&c.req);
            }
        }
        7 => {
            if let Some(r) = round_trip::<FsReply>(rest) {
                fs_response(&r.resp);
            }
        }
        8 => {
            if let Some(CommitFrame::Change(c)) = round_trip::<CommitFrame>(rest) {
                let _ = herd_fs::source::path_from_bytes(c.path());
            }
        }
        9 => {
            let _ = round_trip::<CommitReport>(rest);
        }
        10 => {
            let _ = round_trip::<LocalResponse>(rest);
        }
        11 => {
            // The hidden list a file service reads first.
            let _ = round_trip::<Vec<Vec<u8>>>(rest);
        }
        _ => {
            // The codec: the first byte of `rest` says how many chunk sizes follow.
            let Some((&k, rest)) = rest.split_first() else {
                return;
            };
            let k = (k as usize % 16).min(rest.len());
            let (sizes, stream) = rest.split_at(k);
            let got = cut(stream, sizes);
            let whole = cut(stream, &[]);
            let want = reference(stream);
            assert_eq!(got, want, "codec disagrees with the framing");
            assert_eq!(whole, want, "codec disagrees with the framing (one chunk)");
        }
    }
});
