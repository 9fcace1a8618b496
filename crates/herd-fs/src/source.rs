//! Where a view's files come from.
//!
//! [`Source`] is the four questions a read-only view asks: stat, list, read,
//! readlink. [`LocalSource`] answers them from this machine's filesystem, hiding the
//! secret paths; it is what the workstation's file service runs (as the submitting
//! user, so the kernel enforces that user's permissions), and what tests mount
//! directly. A remote source on the helper asks a workstation's file service the same
//! questions over the network.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use herd_proto::fs::{Attr, DirEntry, FileKind, Prefetched};

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
    /// Answers a prefetch: `exe` and everything [`crate::elf::closure`] finds, with the
    /// directories on their paths; contents of regular files while within
    /// [`PREFETCH_BUDGET`]. Hidden paths stay hidden.
    pub fn prefetch_closure(&self, exe: &Path) -> Vec<Prefetched> {
        let mut paths: Vec<PathBuf> = vec![exe.to_path_buf()];
        if !self.is_hidden(exe)
            && let Ok(c) = crate::elf::closure(&self.root, exe)
        {
            paths.extend(c.files);
        }
        let mut all: Vec<PathBuf> = Vec::new();
        for p in &paths {
            for a in p.ancestors().collect::<Vec<_>>().into_iter().rev() {
                if !all.iter().any(|x| x == a) {
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
                        while (d.len() as u64) < a.size {
                            match self.read(&p, d.len() as u64, MAX_READ) {
                                Ok(c) if !c.is_empty() => d.extend_from_slice(&c),
                                _ => break,
                            }
                        }
                        budget -= d.len().min(budget);
                        Some(d)
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

/// This machine's filesystem, minus hidden paths.
#[derive(Clone, Debug)]
pub struct LocalSource {
    root: PathBuf,
    hidden: Vec<PathBuf>,
}

impl LocalSource {
    /// Serves the tree under `root` (usually `/`) as if it were `/`, hiding every path
    /// in `hidden` (absolute, as seen in the view) and everything below them.
    pub fn new(root: impl Into<PathBuf>, hidden: Vec<PathBuf>) -> Self {
        LocalSource {
            root: root.into(),
            hidden,
        }
    }

    /// Whether `path` (as seen in the view) is hidden.
    pub fn is_hidden(&self, path: &Path) -> bool {
        self.hidden.iter().any(|h| path.starts_with(h))
    }

    fn real(&self, path: &Path) -> Result<PathBuf, Errno> {
        if !path.is_absolute() {
            return Err(libc::EINVAL);
        }
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(libc::EINVAL);
        }
        if self.is_hidden(path) {
            return Err(libc::ENOENT);
        }
        Ok(self.root.join(path.strip_prefix("/").unwrap_or(path)))
    }
}

fn errno(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Converts `lstat` metadata to wire attributes.
pub fn attr_of(md: &std::fs::Metadata) -> Attr {
    let fmt = md.mode() & libc::S_IFMT;
    let kind = match fmt {
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFCHR => FileKind::CharDev,
        libc::S_IFBLK => FileKind::BlockDev,
        libc::S_IFSOCK => FileKind::Socket,
        _ => FileKind::File,
    };
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Attr {
        kind,
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

impl Source for LocalSource {
    fn stat(&self, path: &Path) -> Result<Attr, Errno> {
        let real = self.real(path)?;
        std::fs::symlink_metadata(real)
            .map(|m| attr_of(&m))
            .map_err(errno)
    }

    fn list(&self, path: &Path) -> Result<Vec<DirEntry>, Errno> {
        let real = self.real(path)?;
        // `path` is not hidden (or `real` refused it), so an entry is hidden only if a
        // hidden path names it exactly: those names are found once, not per entry.
        let hidden_here: Vec<&std::ffi::OsStr> = self
            .hidden
            .iter()
            .filter(|h| h.parent() == Some(path))
            .filter_map(|h| h.file_name())
            .collect();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&real).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name();
            if hidden_here.contains(&name.as_os_str()) {
                continue;
            }
            // lstat relative to the open directory (no walk from the root per entry);
            // an entry that vanished between readdir and lstat is simply skipped.
            let Ok(md) = entry.metadata() else {
                continue;
            };
            out.push(DirEntry {
                name: name.as_bytes().to_vec(),
                attr: attr_of(&md),
            });
        }
        Ok(out)
    }

    fn read(&self, path: &Path, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let real = self.real(path)?;
        let file = std::fs::File::open(real).map_err(errno)?;
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
        let real = self.real(path)?;
        std::fs::read_link(real).map_err(errno)
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
