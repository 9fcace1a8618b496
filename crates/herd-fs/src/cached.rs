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

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use herd_proto::fs::{Attr, DirEntry, FileKind};

use crate::cache::{Cache, Fact};
use crate::source::{Errno, MAX_READ, Source};

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

    /// Records the facts this task used as working set `set` of workstation `ws`.
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
        let _ = self.cache.save();
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
