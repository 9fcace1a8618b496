//! A [`Source`] that answers from the helper's [`Cache`] what was validated at the
//! start of the task, and asks the workstation for the rest.
//!
//! At the start of a task the agent validates the command's working set in one round
//! trip and hands the surviving facts to [`CachedSource::new`] as *trusted*: for the
//! task's lifetime, a trusted path's attributes, listing and link target are answered
//! locally, and its contents come from the blob cache. Anything else is asked of the
//! workstation once and then trusted for the rest of the task. A regular file up to
//! [`WHOLE_FILE`] bytes is fetched whole on its first read and stored as a blob; larger
//! files are read through in the pieces the kernel asks for.
//!
//! [`CachedSource::finish`] records what the task used as the command's next working
//! set.
//!
//! A source can serve one task after another (with the view mounted over it): before
//! the next task, [`CachedSource::checks`] lists everything it holds for validation,
//! [`CachedSource::changed`] drops what the workstation changed, and
//! [`CachedSource::begin`] starts the new task's record.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use herd_proto::fs::{Attr, DirEntry, FileKind, Version};

use crate::cache::{Cache, Fact};
use crate::source::{Errno, MAX_READ, Source};

/// One validation item: a path, the version held (`None`: known absent) and the
/// digest of its listing when one is held.
pub type Check = (Vec<u8>, Option<Version>, Option<[u8; 32]>);

/// The validation item for what `fact` says of `path`.
pub fn check(path: &[u8], fact: &Fact) -> Check {
    (
        path.to_vec(),
        fact.attr.as_ref().map(Version::from),
        fact.listing.as_deref().map(crate::cache::listing_digest),
    )
}

/// Files up to this size are fetched whole and cached.
pub const WHOLE_FILE: u64 = 64 << 20;

/// See the module docs.
pub struct CachedSource<S: Source> {
    inner: S,
    cache: Arc<Cache>,
    known: Mutex<HashMap<Vec<u8>, Fact>>,
    used: Mutex<Vec<Vec<u8>>>,
}

fn key(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

impl<S: Source> CachedSource<S> {
    /// A source over `inner` trusting `trusted` (validated facts) for this task.
    pub fn new(inner: S, cache: Arc<Cache>, trusted: Vec<(Vec<u8>, Fact)>) -> Self {
        CachedSource {
            inner,
            cache,
            known: Mutex::new(trusted.into_iter().collect()),
            used: Mutex::new(Vec::new()),
        }
    }

    /// What to validate before the next task uses this source: every fact it holds
    /// (path, version or absent, listing digest), except paths in `done` and entries of
    /// a directory whose listing is held (the listing's digest covers their versions),
    /// unless they hold a listing of their own.
    pub fn checks(&self, done: &HashSet<Vec<u8>>) -> Vec<Check> {
        let Ok(k) = self.known.lock() else {
            return Vec::new();
        };
        let covered = |p: &[u8]| {
            Path::new(std::ffi::OsStr::from_bytes(p))
                .parent()
                .is_some_and(|d| {
                    k.get(d.as_os_str().as_bytes())
                        .is_some_and(|f| f.listing.is_some())
                })
        };
        k.iter()
            // A listed directory's own listing is checked even when its parent's
            // listing covers its version: that does not cover its entries.
            .filter(|(p, f)| !done.contains(*p) && (f.listing.is_some() || !covered(p)))
            .map(|(p, f)| check(p, f))
            .collect()
    }

    /// The workstation says `path` is now `now`: what was known of it is dropped (its
    /// listing and contents too), and if it vanished or changed kind, everything known
    /// below it.
    pub fn changed(&self, path: &[u8], now: Option<Attr>) {
        let Ok(mut k) = self.known.lock() else {
            return;
        };
        let same_kind = k
            .get(path)
            .and_then(|f| f.attr)
            .zip(now)
            .is_some_and(|(a, b)| a.kind == b.kind);
        if !same_kind {
            let below = Path::new(std::ffi::OsStr::from_bytes(path));
            k.retain(|p, _| {
                p.as_slice() == path
                    || !Path::new(std::ffi::OsStr::from_bytes(p)).starts_with(below)
            });
        }
        k.insert(
            path.to_vec(),
            Fact {
                attr: now,
                ..Default::default()
            },
        );
    }

    /// Adds validated facts (a command's working set) for paths this source does not
    /// know yet.
    pub fn trust(&self, facts: Vec<(Vec<u8>, Fact)>) {
        if let Ok(mut k) = self.known.lock() {
            for (p, f) in facts {
                k.entry(p).or_insert(f);
            }
        }
    }

    /// Starts the next task on this source: what it uses is recorded afresh (see
    /// [`CachedSource::finish`]), starting with `carry`, the command's working set.
    /// (The kernel answers most of a warm task's lookups itself, so what the task asks
    /// alone would shrink the working set a fresh view starts from.)
    pub fn begin(&self, carry: Vec<Vec<u8>>) {
        if let Ok(mut u) = self.used.lock() {
            *u = carry;
        }
    }

    /// How many facts this source holds.
    pub fn len(&self) -> usize {
        self.known.lock().map(|k| k.len()).unwrap_or(usize::MAX)
    }

    /// Whether this source holds no facts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fact(&self, p: &[u8]) -> Option<Fact> {
        self.known.lock().ok()?.get(p).cloned()
    }

    fn learn(&self, p: Vec<u8>, update: impl FnOnce(&mut Fact)) {
        if let Ok(mut k) = self.known.lock() {
            let new = !k.contains_key(&p);
            update(k.entry(p.clone()).or_default());
            if new && let Ok(mut u) = self.used.lock() {
                u.push(p);
            }
        }
    }

    fn touch(&self, p: &[u8]) {
        if let Ok(mut u) = self.used.lock()
            && u.last().is_none_or(|l| l != p)
        {
            u.push(p.to_vec());
        }
    }

    /// Records the facts this task used as working set `set` of workstation `ws` (in
    /// memory: [`Cache::save`] writes them to disk).
    pub fn finish(&self, ws: &str, set: &str) {
        let (Ok(known), Ok(used)) = (self.known.lock(), self.used.lock()) else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
        let facts: Vec<(Vec<u8>, Fact)> = used
            .iter()
            .filter(|p| seen.insert(p.to_vec()))
            .filter_map(|p| known.get(p).map(|f| (p.clone(), f.clone())))
            .collect();
        drop((known, used));
        self.cache.record(ws, set, facts);
    }

    fn take_prefetch(&self, path: &Path) {
        for item in self.inner.prefetch(path) {
            let blob = item
                .data
                .as_deref()
                .and_then(|d| self.cache.put(d).ok())
                .map(|(h, _)| h);
            let p = item.path.clone();
            // Facts about other paths become known (trusted for this task) without
            // counting as used until the task looks them up.
            if let Ok(mut k) = self.known.lock() {
                let f = k.entry(p).or_default();
                f.attr = item.attr;
                if item.target.is_some() {
                    f.target = item.target.clone();
                }
                if blob.is_some() {
                    f.blob = blob;
                }
            }
        }
    }

    fn fetch_whole(&self, path: &Path, size: u64) -> Result<PathBuf, Errno> {
        let mut data = Vec::with_capacity(size as usize);
        loop {
            let chunk = self.inner.read(path, data.len() as u64, MAX_READ)?;
            let n = chunk.len();
            data.extend_from_slice(&chunk);
            if n < MAX_READ as usize || data.len() as u64 > size + u64::from(MAX_READ) {
                break;
            }
        }
        let (hash, file) = self.cache.put(&data).map_err(|_| libc::EIO)?;
        self.learn(key(path), |f| f.blob = Some(hash));
        Ok(file)
    }
}

impl<S: Source> Source for CachedSource<S> {
    fn stat(&self, path: &Path) -> Result<Attr, Errno> {
        let k = key(path);
        if let Some(f) = self.fact(&k) {
            self.touch(&k);
            return f.attr.ok_or(libc::ENOENT);
        }
        match self.inner.stat(path) {
            Ok(a) => {
                self.learn(k, |f| f.attr = Some(a));
                Ok(a)
            }
            Err(libc::ENOENT) => {
                self.learn(k, |f| f.attr = None);
                Err(libc::ENOENT)
            }
            Err(e) => Err(e),
        }
    }

    fn list(&self, path: &Path) -> Result<Vec<DirEntry>, Errno> {
        let k = key(path);
        let cached = self.fact(&k).and_then(|f| f.listing);
        let from_cache = cached.is_some();
        let entries = match cached {
            Some(l) => {
                self.touch(&k);
                l
            }
            None => self.inner.list(path)?,
        };
        // The entries' attributes are current (fresh, or validated with the listing's
        // digest): trust them for this task, keeping what else is known about them.
        if let Ok(mut known) = self.known.lock() {
            for e in &entries {
                let child = key(&path.join(std::ffi::OsStr::from_bytes(&e.name)));
                let f = known.entry(child).or_default();
                if f.attr.map(|a| herd_proto::fs::Version::from(&a)) != Some((&e.attr).into()) {
                    *f = Fact {
                        attr: Some(e.attr),
                        ..Default::default()
                    };
                }
            }
        }
        if from_cache {
            return Ok(entries);
        }
        let l = entries.clone();
        self.learn(k, |f| f.listing = Some(l));
        Ok(entries)
    }

    fn read(&self, path: &Path, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let k = key(path);
        self.touch(&k);
        let fact = self.fact(&k).unwrap_or_default();
        let attr = fact.attr;
        let cached = fact.blob.and_then(|h| self.cache.blob(&h));
        // An executable read for the first time comes with its loader and libraries.
        let cached = match (cached, attr) {
            (None, Some(a)) if a.kind == FileKind::File && a.mode & 0o111 != 0 => {
                self.take_prefetch(path);
                self.fact(&k)
                    .and_then(|f| f.blob)
                    .and_then(|h| self.cache.blob(&h))
            }
            (c, _) => c,
        };
        let file = match (cached, attr) {
            (Some(f), _) => Some(f),
            (None, Some(a)) if a.kind == FileKind::File && a.size <= WHOLE_FILE => {
                Some(self.fetch_whole(path, a.size)?)
            }
            _ => None,
        };
        match file {
            Some(file) => {
                let f = std::fs::File::open(file).map_err(|_| libc::EIO)?;
                let mut buf = vec![0u8; len as usize];
                let mut filled = 0;
                while filled < buf.len() {
                    match f.read_at(&mut buf[filled..], offset + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(_) => return Err(libc::EIO),
                    }
                }
                buf.truncate(filled);
                Ok(buf)
            }
            None => self.inner.read(path, offset, len),
        }
    }

    fn readlink(&self, path: &Path) -> Result<PathBuf, Errno> {
        let k = key(path);
        if let Some(t) = self.fact(&k).and_then(|f| f.target) {
            self.touch(&k);
            return Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&t)));
        }
        let t = self.inner.readlink(path)?;
        let bytes = t.as_os_str().as_bytes().to_vec();
        self.learn(k, |f| f.target = Some(bytes));
        Ok(t)
    }
}
