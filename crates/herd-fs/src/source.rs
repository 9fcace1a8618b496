//! Where a view's files come from.
//!
//! [`Source`] is the four questions a read-only view asks: stat, list, read,
//! readlink. [`LocalSource`] answers them from this machine's filesystem through a
//! [`Tree`] (no link followed, hidden objects and pseudo file systems refused); it is
//! what the workstation's file service runs (as the submitting
//! user, so the kernel enforces that user's permissions), and what tests mount
//! directly. A remote source on the helper asks a workstation's file service the same
//! questions over the network.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use herd_proto::fs::{Attr, DirEntry, FileKind, Prefetched};
use rustix::fs::{AtFlags, Mode, OFlags, Stat};

use crate::beneath::{Hidden, PSEUDO_ROOTS, Reached, Stop, Tree, components, is_link};

/// An `errno` value (positive).
pub type Errno = i32;

/// The questions a read-only view asks about absolute paths.
pub trait Source: Send + Sync + 'static {
    /// Attributes of `path`, not following a final symlink.
    fn stat(&self, path: &Path) -> Result<Attr, Errno>;
    /// Entries of directory `path` with their attributes (without `.` and `..`).
    fn list(&self, path: &Path) -> Result<Vec<DirEntry>, Errno>;
    /// Up to `len` bytes of regular file `path` from `offset`.
    fn read(&self, path: &Path, offset: u64, len: u32) -> Result<Vec<u8>, Errno>;
    /// Target of symlink `path`.
    fn readlink(&self, path: &Path) -> Result<PathBuf, Errno>;
    /// Executable `path` with its dynamic-loading closure, in one question; empty if
    /// the source cannot do that (callers then read the file as usual).
    fn prefetch(&self, _path: &Path) -> Vec<Prefetched> {
        Vec::new()
    }
}

/// A shared source is a source (the agent keeps a handle on the one it mounts).
impl<T: Source> Source for std::sync::Arc<T> {
    fn stat(&self, path: &Path) -> Result<Attr, Errno> {
        (**self).stat(path)
    }
    fn list(&self, path: &Path) -> Result<Vec<DirEntry>, Errno> {
        (**self).list(path)
    }
    fn read(&self, path: &Path, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        (**self).read(path, offset, len)
    }
    fn readlink(&self, path: &Path) -> Result<PathBuf, Errno> {
        (**self).readlink(path)
    }
    fn prefetch(&self, path: &Path) -> Vec<Prefetched> {
        (**self).prefetch(path)
    }
}

/// Bytes of file contents one prefetch answer carries at most.
pub const PREFETCH_BUDGET: usize = 12 << 20;

impl LocalSource {
    /// Answers a prefetch: `exe` and everything [`crate::elf::closure_in`] finds, with
    /// the directories on their paths; contents of regular files while within
    /// [`PREFETCH_BUDGET`]. The closure is resolved through the same [`Tree`] as every
    /// question, and each item is answered as its own question would be, so nothing
    /// hidden or pseudo is in it; its paths go through no link (each link met is an
    /// item of its own, with its target), as the helper's kernel looks them up.
    pub fn prefetch_closure(&self, exe: &Path) -> Vec<Prefetched> {
        let mut paths: Vec<PathBuf> = vec![exe.to_path_buf()];
        if let Ok(tree) = self.tree()
            && tree.lstat(exe).is_ok()
            && let Ok(c) = crate::elf::closure_in(&tree, exe)
        {
            paths.extend(c.files);
        }
        let mut all: Vec<PathBuf> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in &paths {
            for a in p.ancestors().collect::<Vec<_>>().into_iter().rev() {
                if seen.insert(a.to_path_buf()) {
                    all.push(a.to_path_buf());
                }
            }
        }
        let mut budget = PREFETCH_BUDGET;
        all.into_iter()
            .map(|p| {
                let attr = self.stat(&p).ok();
                let target = match attr {
                    Some(a) if a.kind == FileKind::Symlink => self
                        .readlink(&p)
                        .ok()
                        .map(|t| t.into_os_string().into_encoded_bytes()),
                    _ => None,
                };
                let data = match attr {
                    Some(a) if a.kind == FileKind::File && (a.size as usize) <= budget => {
                        let mut d = Vec::with_capacity(a.size as usize);
                        let mut whole = true;
                        while (d.len() as u64) < a.size {
                            match self.read(&p, d.len() as u64, MAX_READ) {
                                Ok(c) if !c.is_empty() => d.extend_from_slice(&c),
                                Ok(_) => break,
                                Err(_) => {
                                    whole = false;
                                    break;
                                }
                            }
                        }
                        budget -= d.len().min(budget);
                        whole.then_some(d)
                    }
                    _ => None,
                };
                Prefetched {
                    path: p.as_os_str().as_bytes().to_vec(),
                    attr,
                    target,
                    data,
                }
            })
            .collect()
    }
}

/// Largest single read served, in bytes.
pub const MAX_READ: u32 = 4 << 20;

/// Entries [`Hidden::index`] looks at below the hidden directories, at most.
pub const HIDDEN_INDEX_LIMIT: usize = 4096;

/// This machine's filesystem, minus hidden paths and pseudo file systems.
///
/// Every question is answered through a [`Tree`]: the path is walked one component at
/// a time from the root, following no link, and each component's object (device and
/// inode) is compared with the hidden ones; the final component is never followed.
/// So `..`, `/proc/self/root`, a symlink, a bind mount or a hard link does not reach
/// a hidden file, and nothing on `/proc`, `/sys`, `/dev` or another pseudo file
/// system is listed or read (their entries' attributes are still reported where they
/// appear in a listing, and `/proc`, `/sys`, `/dev`, `/tmp` themselves are stat'ed,
/// never listed: the sandbox mounts its own over them). Only regular files are read, opened
/// `O_NOFOLLOW | O_NONBLOCK` after their `lstat` and checked with `fstat` to be the
/// file that was checked: a FIFO cannot block the service, and a device is not opened.
///
/// The directories that hold the files asked about are kept open (at most
/// [`DIRS_KEPT`]), by path: a question about a file in a kept directory costs one
/// `lstat` of the directory's path, which must still reach the same object (else the
/// directory is walked to again), instead of a walk of every component. A kept
/// directory was reached by a walk that followed no link and met nothing hidden or
/// pseudo, and the kept ones are dropped whenever what is hidden changes; the file
/// itself, and the path's names, are checked at every question.
#[derive(Debug)]
pub struct LocalSource {
    root: PathBuf,
    tree: RwLock<Option<Arc<Served>>>,
}

/// Directories kept open by a [`LocalSource`], at most.
pub const DIRS_KEPT: usize = 4096;

/// A tree and the directories walked to in it.
#[derive(Debug)]
struct Served {
    tree: Tree,
    dirs: Mutex<HashMap<PathBuf, Arc<Reached>>>,
}

impl std::ops::Deref for Served {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        &self.tree
    }
}

impl Served {
    fn new(tree: Tree) -> Served {
        Served {
            tree,
            dirs: Mutex::new(HashMap::new()),
        }
    }

    /// The parent directory of `path` (kept, or walked to), and the final name.
    fn parent<'p>(&self, path: &'p Path) -> Result<(Arc<Reached>, Option<&'p OsStr>), Stop> {
        let comps = components(path)?;
        let hidden = self.tree.hidden().covers_path(path)
            || PSEUDO_ROOTS
                .iter()
                .any(|r| path.starts_with(r) && path != Path::new(r));
        let (Some(dir), false) = (path.parent().filter(|_| comps.len() > 1), hidden) else {
            // The root's entries, and every refusal by name, as the tree answers.
            let (r, name) = self.tree.parent_of(path)?;
            return Ok((Arc::new(r), name));
        };
        let kept = self.dirs.lock().ok().and_then(|d| d.get(dir).cloned());
        if let Some(r) = kept
            && let Ok(st) =
                rustix::fs::lstat(self.tree.root().join(dir.strip_prefix("/").unwrap_or(dir)))
            && (st.st_dev, st.st_ino) == (r.stat.st_dev, r.stat.st_ino)
        {
            return Ok((r, comps.last().copied()));
        }
        let (r, name) = self.tree.parent_of(path)?;
        let r = Arc::new(r);
        if let Ok(mut d) = self.dirs.lock() {
            if d.len() >= DIRS_KEPT {
                d.clear();
            }
            d.insert(dir.to_path_buf(), r.clone());
        }
        Ok((r, name))
    }

    /// As [`Tree::entry`], through the kept directories.
    fn entry<'p>(&self, path: &'p Path) -> Result<(Arc<Reached>, Option<&'p OsStr>, Stat), Stop> {
        let (dir, name) = self.parent(path)?;
        let Some(name) = name else {
            let st = dir.stat;
            return Ok((dir, None, st));
        };
        let st = self
            .tree
            .lstat_in(&dir, name, components(path)?.len() - 1)?;
        Ok((dir, Some(name), st))
    }
}

impl Clone for LocalSource {
    fn clone(&self) -> Self {
        LocalSource {
            root: self.root.clone(),
            tree: RwLock::new(self.tree.read().ok().and_then(|t| t.clone())),
        }
    }
}

impl LocalSource {
    /// Serves the tree under `root` (usually `/`) as if it were `/`, hiding every path
    /// in `hidden` (absolute, as seen in the view) and everything below them: by path,
    /// as given and as resolved here, and by object ([`Hidden`]). If `root` cannot be
    /// opened, every question fails with `EIO`.
    pub fn new(root: impl Into<PathBuf>, hidden: Vec<PathBuf>) -> Self {
        let root = root.into();
        let mut h = Hidden::new(&root, hidden);
        h.index(&root, HIDDEN_INDEX_LIMIT);
        let tree = Tree::open(&root, h).ok().map(|t| Arc::new(Served::new(t)));
        LocalSource {
            root,
            tree: RwLock::new(tree),
        }
    }

    fn tree(&self) -> Result<Arc<Served>, Errno> {
        self.tree
            .read()
            .ok()
            .and_then(|t| t.clone())
            .ok_or(libc::EIO)
    }

    /// The hidden entries now in force.
    pub fn hidden(&self) -> Option<Hidden> {
        self.tree().ok().map(|t| t.hidden().clone())
    }

    /// Resolves the hidden paths again (a secret directory made, replaced or turned
    /// into a link since), and with `index` also looks again below them
    /// ([`Hidden::index`], which costs a walk of the hidden trees); keeps the objects
    /// found below them before otherwise. Returns whether anything hidden changed
    /// (a journal's confirmations are then to be dropped).
    pub fn refresh_hidden(&self, index: bool) -> bool {
        let Ok(old) = self.tree() else {
            return false;
        };
        let mut h = old.hidden().clone();
        h.refresh(&self.root);
        if index {
            h.index(&self.root, HIDDEN_INDEX_LIMIT);
        }
        if h == *old.hidden() {
            return false;
        }
        let Ok(tree) = Tree::open(&self.root, h) else {
            return false;
        };
        if let Ok(mut t) = self.tree.write() {
            *t = Some(Arc::new(Served::new(tree)));
        }
        true
    }

    /// Whether `path` (as seen in the view) is hidden by its name.
    pub fn is_hidden(&self, path: &Path) -> bool {
        self.tree()
            .map(|t| t.hidden().covers_path(path))
            .unwrap_or(true)
    }
}

fn errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn kind_of(mode: u32) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFCHR => FileKind::CharDev,
        libc::S_IFBLK => FileKind::BlockDev,
        libc::S_IFSOCK => FileKind::Socket,
        _ => FileKind::File,
    }
}

fn ns(s: i64, n: i64) -> i64 {
    s.saturating_mul(1_000_000_000).saturating_add(n)
}

/// Converts `lstat` metadata to wire attributes.
pub fn attr_of(md: &std::fs::Metadata) -> Attr {
    Attr {
        kind: kind_of(md.mode()),
        mode: md.mode() & 0o7777,
        size: md.size(),
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink() as u32,
        mtime_ns: ns(md.mtime(), md.mtime_nsec()),
        ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        atime_ns: ns(md.atime(), md.atime_nsec()),
        ino: md.ino(),
        rdev: md.rdev(),
    }
}

/// Converts a `stat` to wire attributes (as [`attr_of`] does).
// The `stat` fields' integer types differ between architectures.
#[allow(clippy::unnecessary_cast)]
pub fn attr_of_stat(st: &Stat) -> Attr {
    Attr {
        kind: kind_of(st.st_mode as u32),
        mode: st.st_mode as u32 & 0o7777,
        size: st.st_size as u64,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: st.st_nlink as u32,
        mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        atime_ns: ns(st.st_atime as i64, st.st_atime_nsec as i64),
        ino: st.st_ino as u64,
        rdev: st.st_rdev as u64,
    }
}

fn io(e: rustix::io::Errno) -> Errno {
    e.raw_os_error()
}

impl Source for LocalSource {
    fn stat(&self, path: &Path) -> Result<Attr, Errno> {
        let tree = self.tree()?;
        tree.entry(path)
            .map(|(_, _, st)| attr_of_stat(&st))
            .map_err(Stop::errno)
    }

    fn list(&self, path: &Path) -> Result<Vec<DirEntry>, Errno> {
        let tree = self.tree()?;
        // `/proc`, `/dev`, ... themselves are looked at (the sandbox mounts its own
        // there), never listed.
        if PSEUDO_ROOTS.iter().any(|r| Path::new(r) == path) {
            return Err(libc::ENOENT);
        }
        let dir = tree.dir(path).map_err(Stop::errno)?;
        let fd = rustix::fs::openat(
            &dir.fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        // `path` is not hidden (or the walk refused it), so an entry is hidden only if
        // a hidden path names it exactly (found once, not per entry) or it is a hidden
        // object (another name for one, a mount of one).
        let hidden_here: Vec<&OsStr> = tree.hidden().names_in(path).collect();
        let mut out = Vec::new();
        let entries = rustix::fs::Dir::new(fd).map_err(io)?;
        for entry in entries {
            let entry = entry.map_err(io)?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." || hidden_here.contains(&name) {
                continue;
            }
            // lstat relative to the open directory (no walk from the root per entry);
            // an entry that vanished between readdir and lstat is simply skipped.
            let Ok(st) = rustix::fs::statat(&dir.fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            if tree.hidden().covers_object((st.st_dev, st.st_ino)) {
                continue;
            }
            out.push(DirEntry {
                name: name.as_bytes().to_vec(),
                attr: attr_of_stat(&st),
            });
        }
        Ok(out)
    }

    fn read(&self, path: &Path, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let tree = self.tree()?;
        let (dir, name, st) = tree.entry(path).map_err(Stop::errno)?;
        let Some(name) = name else {
            return Err(libc::EISDIR);
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(libc::EISDIR),
            // A FIFO, socket, device or link: never opened.
            _ => return Err(libc::EINVAL),
        }
        let fd = rustix::fs::openat(
            &dir.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        let now = rustix::fs::fstat(&fd).map_err(io)?;
        // Replaced between the check and the open: not what was checked.
        if now.st_mode & libc::S_IFMT != libc::S_IFREG
            || (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)
        {
            return Err(libc::EAGAIN);
        }
        let file = std::fs::File::from(fd);
        let mut buf = vec![0u8; len.min(MAX_READ) as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn readlink(&self, path: &Path) -> Result<PathBuf, Errno> {
        let tree = self.tree()?;
        let (dir, name, st) = tree.entry(path).map_err(Stop::errno)?;
        let Some(name) = name else {
            return Err(libc::EINVAL);
        };
        if !is_link(&st) {
            return Err(libc::EINVAL);
        }
        let target = rustix::fs::readlinkat(&dir.fd, name, Vec::new()).map_err(io)?;
        Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }
}

/// A path from wire bytes.
pub fn path_from_bytes(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_paths_are_invisible_and_dotdot_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("home/u/.ssh")).unwrap();
        std::fs::write(d.path().join("home/u/.ssh/id"), b"secret").unwrap();
        std::fs::write(d.path().join("home/u/a.txt"), b"hello world").unwrap();
        let src = LocalSource::new(d.path(), vec![PathBuf::from("/home/u/.ssh")]);
        assert_eq!(src.stat(Path::new("/home/u/.ssh")), Err(libc::ENOENT));
        assert_eq!(
            src.read(Path::new("/home/u/.ssh/id"), 0, 10),
            Err(libc::ENOENT)
        );
        let names: Vec<_> = src
            .list(Path::new("/home/u"))
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect();
        assert_eq!(names, vec!["a.txt"]);
        assert_eq!(
            src.read(Path::new("/home/u/a.txt"), 6, 100).unwrap(),
            b"world"
        );
        assert_eq!(src.stat(Path::new("/home/u/../u/.ssh")), Err(libc::EINVAL));
        assert_eq!(src.stat(Path::new("relative")), Err(libc::EINVAL));
        let a = src.stat(Path::new("/home/u/a.txt")).unwrap();
        assert_eq!((a.kind, a.size), (FileKind::File, 11));
    }
}
