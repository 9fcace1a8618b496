//! The workstation's change journal: which validation items cannot have changed since
//! they were last confirmed, so that validating a kept view costs no `stat` per fact.
//!
//! A helper validates everything its kept view holds before each task (hundreds of
//! facts and listings for a python start). Without a journal the file service
//! `lstat`s every fact and re-lists every listed directory each time. With it, the
//! service keeps an inotify watch on every directory on the way to a fact it has
//! confirmed, and remembers the confirmation. An item confirmed before, with the same
//! version and listing digest, and with no event since on the directories that could
//! change it, is unchanged without a look.
//!
//! How an item stays trustworthy:
//! * **Watch first, then look.** [`Journal::cover`] watches every ancestor directory of
//!   a path (and the path itself when it is a directory) *before* the caller checks it,
//!   so a change made after the check always leaves an event.
//! * **Events drop confirmations.** [`Journal::begin`] reads all pending events before
//!   a validation (the kernel queues them before the changing call returns, so every
//!   change made before the request is seen). A named event in directory `D` drops the
//!   confirmations of `D/name` and of `D` (its listing and times); an event about a
//!   directory drops everything below it; a full event queue or a change of the mount
//!   table drops everything.
//! * **No confirmation across a concurrent event.** A check that was running while
//!   events arrived for its path is not confirmed (an epoch log kept while passes are
//!   in flight).
//! * **Only what inotify sees.** Directories on file systems whose changes may come
//!   from elsewhere (NFS, FUSE, overlay, ...) are never trusted; a file with more than
//!   one hard link (it can change through a name in an unwatched directory) and a
//!   listing naming one are never confirmed; a directory reachable by two paths (a
//!   bind mount) is trusted under the first only.
//!
//! What it does not see: writes through a shared writable `mmap` (inotify reports none);
//! such a file is seen changed once something else touches it. The README says so.
//!
//! [`Journal::validate`] answers a whole `Validate` question this way; the file service
//! calls it. Without inotify (or past [`MAX_WATCHES`]) items are simply checked.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use herd_proto::fs::{Attr, DirEntry, FileKind, Version};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use crate::cached::Check;
use crate::source::Source;

/// Directories watched at most; past it, items below unwatched directories are checked
/// every time.
pub const MAX_WATCHES: usize = 8192;
/// Confirmations remembered at most (all are dropped when it is reached).
pub const MAX_CONFIRMED: usize = 1 << 20;

/// Validation items one thread checks at least (fewer are not worth a thread).
const VALIDATE_CHUNK: usize = 64;

/// File systems whose every change is made through this kernel, so inotify sees it.
const TRUSTED_FS: &[i64] = &[
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x8584_58F6, // ramfs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
    0xCA45_1A4E, // bcachefs
];

/// What one validation item says: the version held (`None`: known absent) and the
/// digest of its listing when one is held.
pub type Held = (Option<Version>, Option<[u8; 32]>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Watched with this descriptor.
    On(i32),
    /// Not watchable (untrusted file system, shared inode, limit, error).
    Off,
}

enum Inval {
    Exact(Vec<u8>),
    Below(Vec<u8>),
    All,
}

struct Inner {
    fd: Option<OwnedFd>,
    mounts: Option<std::fs::File>,
    watches: HashMap<Vec<u8>, Watch>,
    by_wd: HashMap<i32, Vec<u8>>,
    confirmed: HashMap<Vec<u8>, Held>,
    epoch: u64,
    passes: usize,
    log: Vec<(u64, Inval)>,
}

/// See the module docs. Shared by the file service's threads.
pub struct Journal {
    inner: Mutex<Inner>,
}

/// A validation in progress, from [`Journal::begin`]; ends when dropped.
pub struct Pass<'a> {
    journal: &'a Journal,
    epoch: u64,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if let Ok(mut i) = self.journal.inner.lock() {
            i.passes -= 1;
            if i.passes == 0 {
                i.log.clear();
            }
        }
    }
}

fn under(path: &[u8], dir: &[u8]) -> bool {
    path.starts_with(dir)
        && (path.len() == dir.len() || dir == b"/" || path.get(dir.len()) == Some(&b'/'))
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The directory holding an absolute path (`/` for `/`).
fn parent(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&c| c == b'/') {
        Some(0) | None => b"/".to_vec(),
        Some(i) => path[..i].to_vec(),
    }
}

/// The proper ancestors of an absolute path, from `/` down.
fn ancestors(path: &[u8]) -> Vec<&[u8]> {
    let mut out = vec![&b"/"[..]];
    for (i, &c) in path.iter().enumerate().skip(1) {
        if c == b'/' {
            out.push(&path[..i]);
        }
    }
    out
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal {
    /// A journal with its own inotify instance (none if inotify is unavailable: then
    /// nothing is ever clean).
    pub fn new() -> Journal {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok();
        let mounts = std::fs::File::open("/proc/self/mounts").ok();
        let j = Journal {
            inner: Mutex::new(Inner {
                fd,
                mounts,
                watches: HashMap::new(),
                by_wd: HashMap::new(),
                confirmed: HashMap::new(),
                epoch: 0,
                passes: 0,
                log: Vec::new(),
            }),
        };
        // The first poll reports the mount table as changed: take that now.
        if let Ok(mut i) = j.inner.lock() {
            i.mounts_changed();
        }
        j
    }

    /// Starts a validation: applies every change reported so far.
    pub fn begin(&self) -> Pass<'_> {
        let mut epoch = 0;
        if let Ok(mut i) = self.inner.lock() {
            i.drain();
            i.passes += 1;
            epoch = i.epoch;
        }
        Pass {
            journal: self,
            epoch,
        }
    }

    /// Whether the item for `path` holding `held` is known unchanged.
    pub fn clean(&self, _pass: &Pass<'_>, path: &[u8], held: &Held) -> bool {
        self.inner
            .lock()
            .is_ok_and(|i| i.confirmed.get(path) == Some(held))
    }

    /// Watches what a change to `path` would be reported in; call before checking it.
    /// Returns whether the path is fully covered (only then can it be confirmed).
    pub fn cover(&self, _pass: &Pass<'_>, path: &[u8]) -> bool {
        let Ok(mut i) = self.inner.lock() else {
            return false;
        };
        if i.fd.is_none() || !path.starts_with(b"/") {
            return false;
        }
        for a in ancestors(path) {
            match i.watch(a) {
                Ok(Watch::On(_)) => {}
                // Missing from here down: a creation is reported in the last watched
                // directory.
                Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => return true,
                _ => return false,
            }
        }
        // The path itself, if it is a directory (its listing and times).
        matches!(
            i.watch(path),
            Ok(Watch::On(_)) | Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT)
        )
    }

    /// Records that `path` was checked (after [`Journal::cover`] said it is covered)
    /// and holds `held`: `now` is what is there, `listing` the entries the digest
    /// was made of. Not recorded if a change touching it arrived during the pass, or
    /// if it could change unseen (hard links).
    pub fn confirm(
        &self,
        pass: &Pass<'_>,
        path: &[u8],
        held: Held,
        now: Option<&Attr>,
        listing: Option<&[DirEntry]>,
    ) {
        let linked = |a: &Attr| a.kind != FileKind::Dir && a.nlink > 1;
        if now.is_some_and(linked) || listing.is_some_and(|l| l.iter().any(|e| linked(&e.attr))) {
            return;
        }
        let Ok(mut i) = self.inner.lock() else {
            return;
        };
        let touched = i.log.iter().any(|(e, inval)| {
            *e > pass.epoch
                && match inval {
                    Inval::Exact(p) => p == path,
                    Inval::Below(d) => under(path, d),
                    Inval::All => true,
                }
        });
        if touched {
            return;
        }
        if i.confirmed.len() >= MAX_CONFIRMED {
            i.confirmed.clear();
        }
        i.confirmed.insert(path.to_vec(), held);
    }

    /// Drops every confirmation (what may be served changed: the hidden paths were
    /// resolved anew, say). A pass under way confirms nothing it checked before.
    pub fn forget(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.confirmed.clear();
            i.epoch += 1;
            if i.passes > 0 {
                let epoch = i.epoch;
                i.log.push((epoch, Inval::All));
            }
        }
    }

    /// How many directories are watched (for tests and status).
    pub fn watched(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.by_wd.len())
    }

    /// Answers a `Validate` question against `src`: the indexes of the stale items with
    /// what is there now (`None`: nothing). What the journal vouches for needs no look;
    /// the rest is checked (on up to 4 threads when there are many, since the helper
    /// waits for the answer before its task starts) and confirmed when unchanged and
    /// covered by the watches. `None` if a check panicked: the helper then drops its
    /// view rather than trust it.
    pub fn validate<S: Source + Sync>(
        &self,
        src: &S,
        items: &[Check],
    ) -> Option<Vec<(u32, Option<Attr>)>> {
        let pass = self.begin();
        let items: Vec<(usize, &Check)> = items
            .iter()
            .enumerate()
            .filter(|(_, (p, v, d))| !self.clean(&pass, p, &(*v, *d)))
            .collect();
        let check = |&(i, (p, held, digest)): &(usize, &Check)| {
            let path = Path::new(OsStr::from_bytes(p));
            let covered = self.cover(&pass, p);
            let now = src.stat(path).ok();
            let listing = digest.map(|_| src.list(path));
            let listing_changed = match (&listing, digest) {
                (Some(Ok(l)), Some(d)) => crate::cache::listing_digest(l) != *d,
                (Some(Err(_)), _) => true,
                _ => false,
            };
            let stale = now.as_ref().map(Version::from) != *held || listing_changed;
            if !stale && covered {
                let entries = match &listing {
                    Some(Ok(l)) => Some(l.as_slice()),
                    _ => None,
                };
                self.confirm(&pass, p, (*held, *digest), now.as_ref(), entries);
            }
            stale.then_some((i as u32, now))
        };
        // The CPU count only matters past one chunk, and is asked once: the standard
        // library reads the cgroup's CPU quota files each time.
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let threads = if items.len() <= VALIDATE_CHUNK {
            1
        } else {
            *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        };
        let chunk = items
            .len()
            .div_ceil(threads.clamp(1, 4))
            .max(VALIDATE_CHUNK);
        if items.len() <= chunk {
            return Some(items.iter().filter_map(check).collect());
        }
        std::thread::scope(|s| {
            let parts: Vec<_> = items
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().filter_map(check).collect::<Vec<_>>()))
                .collect();
            let mut all = Vec::new();
            for h in parts {
                all.extend(h.join().ok()?);
            }
            Some(all)
        })
    }
}

impl Inner {
    /// Watches directory `dir` (not following a final symlink).
    fn watch(&mut self, dir: &[u8]) -> Result<Watch, rustix::io::Errno> {
        if let Some(w) = self.watches.get(dir) {
            return Ok(*w);
        }
        let Some(fd) = self.fd.as_ref() else {
            return Ok(Watch::Off);
        };
        if self.by_wd.len() >= MAX_WATCHES {
            return Ok(Watch::Off);
        }
        let flags = WatchFlags::MODIFY
            | WatchFlags::ATTRIB
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR
            | WatchFlags::DONT_FOLLOW;
        let path = Path::new(OsStr::from_bytes(dir));
        let wd = inotify::add_watch(fd.as_fd(), path, flags)?;
        // `f_type`'s integer type differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        let trusted =
            rustix::fs::statfs(path).is_ok_and(|s| TRUSTED_FS.contains(&(s.f_type as i64)));
        let w = if !trusted || self.by_wd.contains_key(&wd) {
            // Another path reaches the same directory, or its changes may come from
            // elsewhere. (The watch stays for the other path, if any.)
            if !self.by_wd.contains_key(&wd) {
                let _ = inotify::remove_watch(fd.as_fd(), wd);
            }
            Watch::Off
        } else {
            self.by_wd.insert(wd, dir.to_vec());
            Watch::On(wd)
        };
        self.watches.insert(dir.to_vec(), w);
        Ok(w)
    }

    fn mounts_changed(&mut self) -> bool {
        let Some(m) = self.mounts.as_ref() else {
            return false;
        };
        let mut p = libc::pollfd {
            fd: m.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLPRI | libc::POLLERR) != 0
    }

    /// Reads every pending event and drops what it touches.
    fn drain(&mut self) {
        let mut invals = Vec::new();
        if self.mounts_changed() {
            invals.push(Inval::All);
        }
        if let Some(fd) = self.fd.as_ref() {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16384];
            let mut r = inotify::Reader::new(fd.as_fd(), &mut buf);
            loop {
                let ev = match r.next() {
                    Ok(ev) => ev,
                    Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => break,
                    Err(_) => {
                        invals.push(Inval::All);
                        break;
                    }
                };
                let mask = ev.events();
                if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
                    invals.push(Inval::All);
                    continue;
                }
                let Some(dir) = self.by_wd.get(&ev.wd()).cloned() else {
                    continue;
                };
                match ev
                    .file_name()
                    .map(|n| n.to_bytes())
                    .filter(|n| !n.is_empty())
                {
                    Some(name) => {
                        let child = join(&dir, name);
                        // The directory's listing and times, and its parent's listing
                        // (which holds those times).
                        invals.push(Inval::Exact(dir.clone()));
                        invals.push(Inval::Exact(parent(&dir)));
                        if mask.contains(ReadFlags::ISDIR) {
                            invals.push(Inval::Below(child));
                        } else {
                            invals.push(Inval::Exact(child));
                        }
                    }
                    None => {
                        invals.push(Inval::Exact(parent(&dir)));
                        invals.push(Inval::Below(dir));
                    }
                }
            }
        }
        if invals.is_empty() {
            return;
        }
        self.epoch += 1;
        for inval in invals {
            match &inval {
                Inval::Exact(p) => {
                    self.confirmed.remove(p);
                }
                Inval::Below(d) => {
                    self.confirmed.retain(|p, _| !under(p, d));
                    // Paths below may now name other directories: watch them anew.
                    let gone: Vec<Vec<u8>> = self
                        .watches
                        .keys()
                        .filter(|p| under(p, d))
                        .cloned()
                        .collect();
                    for p in gone {
                        self.unwatch(&p);
                    }
                }
                Inval::All => {
                    self.confirmed.clear();
                    let all: Vec<Vec<u8>> = self.watches.keys().cloned().collect();
                    for p in all {
                        self.unwatch(&p);
                    }
                }
            }
            if self.passes > 0 {
                self.log.push((self.epoch, inval));
            }
        }
    }

    fn unwatch(&mut self, dir: &[u8]) {
        if let Some(Watch::On(wd)) = self.watches.remove(dir) {
            self.by_wd.remove(&wd);
            if let Some(fd) = self.fd.as_ref() {
                let _ = inotify::remove_watch(fd.as_fd(), wd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::LocalSource;
    use std::os::unix::fs::PermissionsExt;

    /// Validates `path` holding `held` as the file service does; returns whether the
    /// journal vouched for it, and whether it was found unchanged.
    fn validate(j: &Journal, src: &LocalSource, path: &Path, held: &Held) -> (bool, bool) {
        let key = path.as_os_str().as_bytes();
        let clean = j.clean(&j.begin(), key, held);
        let stale = j.validate(src, &[(key.to_vec(), held.0, held.1)]).unwrap();
        (clean, stale.is_empty())
    }

    /// The journal vouches for `path` once it has been checked unchanged.
    fn confirmed(j: &Journal, src: &LocalSource, path: &Path, held: &Held) -> bool {
        validate(j, src, path, held);
        validate(j, src, path, held).0
    }

    fn setup() -> (tempfile::TempDir, LocalSource, Journal) {
        (
            tempfile::tempdir_in("/var/tmp").unwrap(),
            LocalSource::new("/", vec![]),
            Journal::new(),
        )
    }

    fn held(src: &LocalSource, p: &Path, listed: bool) -> Held {
        (
            src.stat(p).ok().as_ref().map(Version::from),
            listed.then(|| crate::cache::listing_digest(&src.list(p).unwrap())),
        )
    }

    #[test]
    fn a_confirmed_item_is_clean_until_something_touches_it() {
        let (d, src, j) = setup();
        let f = d.path().join("a/b/f");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, "one").unwrap();

        let h = held(&src, &f, false);
        assert_eq!(validate(&j, &src, &f, &h), (false, true));
        assert_eq!(validate(&j, &src, &f, &h), (true, true), "confirmed");
        assert!(j.watched() >= 3);

        // Modified in place: not clean, and the check finds it changed.
        std::fs::write(&f, "two!").unwrap();
        assert_eq!(validate(&j, &src, &f, &h), (false, false));
        let h = held(&src, &f, false);
        assert!(confirmed(&j, &src, &f, &h));

        // A mode change.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!validate(&j, &src, &f, &h).0);
        let h = held(&src, &f, false);
        assert!(confirmed(&j, &src, &f, &h));

        // An ancestor renamed away and replaced by a look-alike.
        let a = d.path().join("a");
        std::fs::rename(&a, d.path().join("old")).unwrap();
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, "one").unwrap();
        assert_eq!(validate(&j, &src, &f, &h), (false, false));
    }

    #[test]
    fn absent_names_and_listings_are_dropped_when_the_directory_changes() {
        let (d, src, j) = setup();
        let missing = d.path().join("x/y");
        let h: Held = (None, None);
        assert!(confirmed(&j, &src, &missing, &h), "absence is confirmed");
        std::fs::create_dir(d.path().join("x")).unwrap();
        std::fs::write(&missing, "").unwrap();
        assert_eq!(validate(&j, &src, &missing, &h), (false, false));

        let dir = d.path().join("x");
        let hd = held(&src, &dir, true);
        assert!(confirmed(&j, &src, &dir, &hd), "listing confirmed");
        // A child's attributes are part of the listing's digest.
        std::fs::write(&missing, "grown").unwrap();
        assert_eq!(validate(&j, &src, &dir, &hd), (false, false));
    }

    #[test]
    fn hard_linked_files_are_never_taken_as_clean() {
        let (d, src, j) = setup();
        std::fs::create_dir(d.path().join("other")).unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "one").unwrap();
        std::fs::hard_link(&f, d.path().join("other/g")).unwrap();
        let h = held(&src, &f, false);
        assert!(!confirmed(&j, &src, &f, &h));
        let hd = held(&src, d.path(), true);
        assert!(!confirmed(&j, &src, d.path(), &hd));
    }

    #[test]
    fn a_change_during_a_check_keeps_the_item_from_being_confirmed() {
        let (d, src, j) = setup();
        let f = d.path().join("f");
        std::fs::write(&f, "one").unwrap();
        let h = held(&src, &f, false);
        let key = f.as_os_str().as_bytes();
        let pass = j.begin();
        assert!(j.cover(&pass, key));
        let now = src.stat(&f).ok();
        // Another validation reads the change's event before this one confirms.
        std::fs::write(&f, "two").unwrap();
        drop(j.begin());
        j.confirm(&pass, key, h, now.as_ref(), None);
        drop(pass);
        let pass = j.begin();
        assert!(!j.clean(&pass, key, &h));
    }

    #[test]
    fn ancestors_are_listed_from_the_root() {
        assert_eq!(ancestors(b"/a/b/c"), vec![&b"/"[..], b"/a", b"/a/b"]);
        assert_eq!(ancestors(b"/a"), vec![&b"/"[..]]);
        assert!(under(b"/a/b", b"/a") && under(b"/a", b"/a") && under(b"/x", b"/"));
        assert!(!under(b"/ab", b"/a"));
        assert_eq!(parent(b"/a/b"), b"/a");
        assert_eq!(parent(b"/a"), b"/");
    }
}
