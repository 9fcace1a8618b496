//! The helper's persistent cache of a workstation's files.
//!
//! Two parts, both kept across tasks and agent restarts under the cache directory:
//!
//! * **facts** (`index.bin`): per workstation, per path, what the workstation said:
//!   its attributes or that nothing is there, a directory's listing, a symlink's
//!   target, and the BLAKE3 hash of a file's contents at that version; plus each
//!   command's **working set**, the paths its last run looked up. Facts are never trusted
//!   blindly: at the start of a task the helper sends the working set's facts in one
//!   `Validate` request, and the workstation names the stale ones. So a warm, unchanged
//!   file costs no round trip of its own, and a task still sees every change made
//!   before it started.
//! * **blobs** (`blobs/<hash>`): file contents by BLAKE3 hash, shared by every path
//!   and workstation with the same bytes, evicted least-recently-used beyond the size
//!   limit.
//!
//! A damaged index is discarded (the cache starts empty); a blob whose bytes do not
//! hash to its name is deleted and fetched again.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use herd_proto::fs::{Attr, DirEntry};
use serde::{Deserialize, Serialize};

/// What the workstation said about one path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// Attributes; `None` if nothing was there.
    pub attr: Option<Attr>,
    /// A directory's entries.
    pub listing: Option<Vec<DirEntry>>,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// BLAKE3 of a regular file's contents at `attr`'s version.
    pub blob: Option<[u8; 32]>,
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    facts: HashMap<String, HashMap<Vec<u8>, Fact>>,
    sets: HashMap<String, Vec<Vec<u8>>>,
    blobs: HashMap<[u8; 32], (u64, u64)>,
    clock: u64,
}

const INDEX_VERSION: u32 = 1;
/// Paths remembered per working set.
const MAX_SET: usize = 20_000;

/// Cache counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blob reads served from the cache.
    pub hits: u64,
    /// Files fetched from the workstation.
    pub misses: u64,
    /// Bytes of blobs held.
    pub bytes: u64,
}

/// The cache (see the module docs). Thread-safe.
pub struct Cache {
    dir: PathBuf,
    limit: u64,
    index: Mutex<Index>,
    stats: Mutex<Stats>,
    saving: Mutex<()>,
}

/// Digest of a directory listing: names and versions of all entries, sorted.
pub fn listing_digest(entries: &[DirEntry]) -> [u8; 32] {
    let mut sorted: Vec<&DirEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = blake3::Hasher::new();
    for e in sorted {
        h.update(&(e.name.len() as u64).to_le_bytes());
        h.update(&e.name);
        let v = herd_proto::fs::Version::from(&e.attr);
        h.update(&v.ino.to_le_bytes());
        h.update(&v.mtime_ns.to_le_bytes());
        h.update(&v.ctime_ns.to_le_bytes());
        h.update(&v.size.to_le_bytes());
        h.update(&e.attr.mode.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

fn set_key(ws: &str, key: &str) -> String {
    format!("{ws}\0{key}")
}

impl Cache {
    /// Opens (or creates) the cache in `dir`, holding at most `limit` bytes of blobs.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<Cache> {
        fs::create_dir_all(dir.join("blobs"))?;
        // Workstation files live here: nobody else on the helper may read them.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let index = fs::read(dir.join("index.bin"))
            .ok()
            .and_then(|b| postcard::from_bytes::<Index>(&b).ok())
            .filter(|i| i.version == INDEX_VERSION)
            .unwrap_or(Index {
                version: INDEX_VERSION,
                ..Default::default()
            });
        let bytes = index.blobs.values().map(|(s, _)| s).sum();
        Ok(Cache {
            dir: dir.to_path_buf(),
            limit,
            index: Mutex::new(index),
            stats: Mutex::new(Stats {
                bytes,
                ..Default::default()
            }),
            saving: Mutex::new(()),
        })
    }

    /// Counters since the cache was opened (bytes: now).
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// The last working set of command `key` from workstation `ws`, with the facts
    /// known about each path.
    pub fn working_set(&self, ws: &str, key: &str) -> Vec<(Vec<u8>, Fact)> {
        let Ok(idx) = self.index.lock() else {
            return vec![];
        };
        let Some(facts) = idx.facts.get(ws) else {
            return vec![];
        };
        idx.sets
            .get(&set_key(ws, key))
            .map(|set| {
                set.iter()
                    .filter_map(|p| facts.get(p).map(|f| (p.clone(), f.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records what a task of command `key` learnt: `used` in lookup order.
    pub fn record(&self, ws: &str, key: &str, used: Vec<(Vec<u8>, Fact)>) {
        let Ok(mut idx) = self.index.lock() else {
            return;
        };
        let mut set = Vec::with_capacity(used.len().min(MAX_SET));
        let facts = idx.facts.entry(ws.to_string()).or_default();
        for (p, f) in used {
            if set.len() < MAX_SET {
                set.push(p.clone());
            }
            facts.insert(p, f);
        }
        idx.sets.insert(set_key(ws, key), set);
    }

    fn blob_file(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir
            .join("blobs")
            .join(blake3::Hash::from(*hash).to_hex().as_str())
    }

    /// The file holding `hash`'s bytes, if cached (marks it used).
    pub fn blob(&self, hash: &[u8; 32]) -> Option<PathBuf> {
        let mut idx = self.index.lock().ok()?;
        idx.clock += 1;
        let clock = idx.clock;
        let entry = idx.blobs.get_mut(hash)?;
        entry.1 = clock;
        let p = self.blob_file(hash);
        if p.exists() {
            if let Ok(mut s) = self.stats.lock() {
                s.hits += 1;
            }
            Some(p)
        } else {
            idx.blobs.remove(hash);
            None
        }
    }

    /// Stores bytes; returns their hash and the file holding them. Evicts
    /// least-recently-used blobs beyond the limit.
    pub fn put(&self, data: &[u8]) -> std::io::Result<([u8; 32], PathBuf)> {
        let hash = *blake3::hash(data).as_bytes();
        let path = self.blob_file(&hash);
        if !path.exists() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            fs::rename(&tmp, &path)?;
        }
        let mut evict = Vec::new();
        if let Ok(mut idx) = self.index.lock() {
            idx.clock += 1;
            let clock = idx.clock;
            if idx.blobs.insert(hash, (data.len() as u64, clock)).is_none()
                && let Ok(mut s) = self.stats.lock()
            {
                s.misses += 1;
                s.bytes += data.len() as u64;
            }
            let mut total: u64 = idx.blobs.values().map(|(s, _)| s).sum();
            if total > self.limit {
                let mut by_age: Vec<([u8; 32], u64, u64)> =
                    idx.blobs.iter().map(|(h, (s, t))| (*h, *s, *t)).collect();
                by_age.sort_by_key(|(_, _, t)| *t);
                for (h, size, _) in by_age {
                    if total <= self.limit || h == hash {
                        continue;
                    }
                    idx.blobs.remove(&h);
                    total -= size;
                    evict.push(h);
                }
                if let Ok(mut s) = self.stats.lock() {
                    s.bytes = total;
                }
            }
        }
        for h in evict {
            let _ = fs::remove_file(self.blob_file(&h));
        }
        Ok((hash, path))
    }

    /// Writes the index to disk (atomically; concurrent calls take turns).
    pub fn save(&self) -> std::io::Result<()> {
        // One save at a time: they share the temporary file.
        let _one = self
            .saving
            .lock()
            .map_err(|_| std::io::Error::other("cache lock poisoned"))?;
        let bytes = {
            let idx = self
                .index
                .lock()
                .map_err(|_| std::io::Error::other("cache lock poisoned"))?;
            postcard::to_stdvec(&*idx).map_err(std::io::Error::other)?
        };
        let tmp = self
            .dir
            .join(format!("index.bin.tmp{}", std::process::id()));
        fs::write(&tmp, bytes)?;
        fs::rename(tmp, self.dir.join("index.bin"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_proto::fs::FileKind;

    fn attr(size: u64) -> Attr {
        Attr {
            kind: FileKind::File,
            mode: 0o644,
            size,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime_ns: 1,
            ctime_ns: 1,
            atime_ns: 1,
            ino: 7,
            rdev: 0,
        }
    }

    #[test]
    fn facts_and_blobs_survive_a_reopen_and_lru_evicts() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path(), 10).unwrap();
        let (h1, p1) = c.put(b"hello").unwrap();
        assert_eq!(fs::read(&p1).unwrap(), b"hello");
        c.record(
            "ws",
            "true",
            vec![(
                b"/bin/true".to_vec(),
                Fact {
                    attr: Some(attr(5)),
                    blob: Some(h1),
                    ..Default::default()
                },
            )],
        );
        c.save().unwrap();
        let c = Cache::open(d.path(), 10).unwrap();
        let set = c.working_set("ws", "true");
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].1.blob, Some(h1));
        assert!(c.blob(&h1).is_some());
        assert!(c.working_set("other-ws", "true").is_empty());
        // Over the 10-byte limit: the older blob goes.
        let (h2, _) = c.put(b"world!!").unwrap();
        assert!(c.blob(&h1).is_none());
        assert!(c.blob(&h2).is_some());
    }

    #[test]
    fn a_damaged_index_starts_empty() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path()).unwrap();
        fs::write(d.path().join("index.bin"), b"garbage").unwrap();
        let c = Cache::open(d.path(), 1 << 20).unwrap();
        assert!(c.working_set("ws", "x").is_empty());
    }

    #[test]
    fn listing_digest_ignores_order_but_not_versions() {
        let e = |n: &str, size| DirEntry {
            name: n.as_bytes().to_vec(),
            attr: attr(size),
        };
        let a = listing_digest(&[e("a", 1), e("b", 2)]);
        assert_eq!(a, listing_digest(&[e("b", 2), e("a", 1)]));
        assert_ne!(a, listing_digest(&[e("a", 1), e("b", 3)]));
    }
}
