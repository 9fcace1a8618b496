//! Walking the workstation's tree as an untrusted peer asks, following no link.
//!
//! Every path a helper sends (a file question, a change to commit) is a path of the
//! workstation *as the task saw it*: the helper's kernel resolved the task's symlinks
//! itself (a view answers `readlink`, and the kernel follows the target inside the
//! task's root). So an honest helper never names a path through a symbolic link, and
//! the workstation never has to follow one on its behalf. [`Tree`] walks a path one
//! component at a time from a directory descriptor, each intermediate component
//! opened `O_PATH | O_DIRECTORY | O_NOFOLLOW`: a symlink on the way (a magic link of
//! `/proc` included) ends the walk, `..` and empty components are refused before it
//! starts. The final component is never followed either: callers `lstat` it, or open
//! it with `O_NOFOLLOW`. This needs no `openat2` (Linux 5.6): the walk has to stop at
//! each component anyway, to compare it with the hidden entries.
//!
//! **Hidden entries** ([`Hidden`]) are matched twice: by path (as given, and as the
//! workstation resolves it, so a symlinked `~/.ssh` hides both the link and its
//! target) and by object (device and inode of what each hidden path resolves to), so
//! neither a bind mount, a hard link nor another path to the same directory reaches
//! a hidden file.
//!
//! **Pseudo file systems** (`/proc`, `/sys`, `/dev` and the kernel's other virtual
//! file systems, wherever they are mounted) are never walked into: a task's sandbox
//! has its own, and the workstation's hold its processes' environments and the
//! machine's controls.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Stat};

/// An `errno` value (positive).
pub type Errno = i32;

/// Why a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The path is not absolute, or has an empty, `.` or `..` component.
    Malformed,
    /// Component `at` (0 = the first below the root) is a symbolic link.
    Symlink {
        /// Its index among the path's components.
        at: usize,
    },
    /// Component `at` does not exist.
    Missing {
        /// Its index among the path's components.
        at: usize,
    },
    /// Component `at` exists and is neither a directory nor a symlink.
    NotDir {
        /// Its index among the path's components.
        at: usize,
    },
    /// Component `at` is hidden (by path or by object).
    Hidden {
        /// Its index among the path's components.
        at: usize,
    },
    /// Component `at` is on a pseudo file system (`/proc`, `/sys`, `/dev`, ...).
    Pseudo {
        /// Its index among the path's components.
        at: usize,
    },
    /// Any other failure (permission denied, ...).
    Io(Errno),
}

impl Stop {
    /// The `errno` a task should see: a hidden or pseudo path does not exist; a path
    /// through a link (which an honest helper never asks for) neither.
    pub fn errno(self) -> Errno {
        match self {
            Stop::Malformed => libc::EINVAL,
            Stop::Symlink { .. } | Stop::Missing { .. } | Stop::Hidden { .. } => libc::ENOENT,
            Stop::Pseudo { .. } => libc::ENOENT,
            Stop::NotDir { .. } => libc::ENOTDIR,
            Stop::Io(e) => e,
        }
    }
}

/// The components of an absolute path, each a plain name; `Malformed` otherwise.
pub fn components(path: &Path) -> Result<Vec<&OsStr>, Stop> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Stop::Malformed);
    }
    if bytes == b"/" {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for c in bytes[1..].split(|&b| b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(Stop::Malformed);
        }
        out.push(OsStr::from_bytes(c));
    }
    Ok(out)
}

/// Top-level directories whose contents are never served or written, whatever file
/// system holds them (the directories themselves may be looked at).
/// `/tmp` is one of them: every sandbox mounts a private one, so no task looks below
/// the workstation's (where Kerberos caches and other users' sockets live).
pub const PSEUDO_ROOTS: &[&str] = &["/proc", "/sys", "/dev", "/tmp"];

/// `statfs` magic numbers of the kernel's virtual file systems.
const PSEUDO_MAGIC: &[i64] = &[
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x1cd1,      // devpts
    0x0027_e0eb, // cgroup
    0x6367_7270, // cgroup2
    0x7363_6673, // securityfs
    0x6462_6720, // debugfs
    0x7472_6163, // tracefs
    0xcafe_4a11, // bpf
    0x6165_676c, // pstore
    0xde5e_81e4, // efivarfs
    0x6265_6570, // configfs
    0x6573_5543, // fusectl
    0x4249_4e4d, // binfmt_misc
    0xf97c_ff8c, // selinuxfs
    0x1980_0202, // mqueue
    0x6e73_6673, // nsfs
];

fn is_pseudo(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|s| PSEUDO_MAGIC.contains(&{ s.f_type }))
}

/// A device and inode: one object of the workstation's file systems.
pub type Object = (u64, u64);

fn object(st: &Stat) -> Object {
    (st.st_dev, st.st_ino)
}

fn errno(e: rustix::io::Errno) -> Errno {
    e.raw_os_error()
}

/// Paths hidden from tasks: never served, never written. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hidden {
    given: Vec<PathBuf>,
    paths: Vec<PathBuf>,
    objects: HashSet<Object>,
    /// Objects below the hidden directories ([`Hidden::index`]).
    below: HashSet<Object>,
}

impl Hidden {
    /// Hides each of `paths` (absolute, as seen under `root`) and everything below it:
    /// the path as given, where the workstation resolves it to, and the object it
    /// resolves to. A path that does not exist (yet) is hidden by path only; call
    /// [`Hidden::refresh`] to pick up what appeared since.
    pub fn new(root: &Path, paths: impl IntoIterator<Item = PathBuf>) -> Hidden {
        let mut h = Hidden {
            // A trailing `/` (a directory, to a sandbox) is not part of the path.
            given: paths
                .into_iter()
                .map(|p| p.components().collect::<PathBuf>())
                .filter(|p| components(p).is_ok())
                .collect(),
            ..Hidden::default()
        };
        h.refresh(root);
        h
    }

    /// Resolves the hidden paths again (a secret directory made or replaced since).
    pub fn refresh(&mut self, root: &Path) {
        let mut paths = Vec::new();
        let mut objects = HashSet::new();
        for p in &self.given {
            paths.push(p.clone());
            let real = root.join(p.strip_prefix("/").unwrap_or(p));
            if let Ok(c) = std::fs::canonicalize(&real)
                && let Ok(rel) = c.strip_prefix(root)
            {
                let resolved = Path::new("/").join(rel);
                if !paths.contains(&resolved) {
                    paths.push(resolved);
                }
            }
            if let Ok(st) = rustix::fs::stat(&real) {
                objects.insert(object(&st));
            }
        }
        self.paths = paths;
        self.objects = objects;
    }

    /// The hidden paths, as given and as resolved (what a sandbox covers).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Whether `path` is a hidden path or below one (by path only).
    pub fn covers_path(&self, path: &Path) -> bool {
        self.paths.iter().any(|h| path.starts_with(h))
    }

    /// Whether the object is a hidden path's (a bind mount or hard link of it, say),
    /// or was found below one by [`Hidden::index`].
    pub fn covers_object(&self, o: Object) -> bool {
        self.objects.contains(&o) || self.below.contains(&o)
    }

    /// Finds the objects below the hidden directories (at most `limit` entries,
    /// breadth-first, not following links), so that another name for one of them (a
    /// hard link, a bind mount of a subdirectory or of a single file) is hidden too.
    /// What lies past `limit` is hidden by path, and through its hidden ancestors'
    /// objects, only. Keeps the objects found before when nothing can be listed now.
    pub fn index(&mut self, root: &Path, limit: usize) {
        let mut below = HashSet::new();
        let mut queue: std::collections::VecDeque<OwnedFd> = std::collections::VecDeque::new();
        for p in &self.paths {
            let real = root.join(p.strip_prefix("/").unwrap_or(p));
            if let Ok(fd) = rustix::fs::open(
                &real,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                queue.push_back(fd);
            }
        }
        let mut seen = 0;
        while let Some(dir) = queue.pop_front() {
            let Ok(entries) = rustix::fs::Dir::read_from(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                seen += 1;
                if seen > limit {
                    break;
                }
                let Ok(st) = rustix::fs::statat(&dir, e.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                else {
                    continue;
                };
                below.insert(object(&st));
                if is_dir(&st)
                    && let Ok(fd) = rustix::fs::openat(
                        &dir,
                        e.file_name(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                {
                    queue.push_back(fd);
                }
            }
            if seen > limit {
                break;
            }
        }
        self.below = below;
    }

    /// The hidden entries directly in directory `dir`, by name.
    pub fn names_in<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = &'a OsStr> + 'a {
        self.paths
            .iter()
            .filter(move |h| h.parent() == Some(dir))
            .filter_map(|h| h.file_name())
    }
}

/// A directory reached by [`Tree::walk`]: its descriptor (`O_PATH`) and `lstat`.
#[derive(Debug)]
pub struct Reached {
    /// The directory (opened `O_PATH`; use it with the `*at` calls).
    pub fd: OwnedFd,
    /// Its status.
    pub stat: Stat,
}

/// The workstation's tree under a root (`/`, or a directory in tests), with its
/// hidden entries.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    root_fd: OwnedFd,
    root_stat: Stat,
    hidden: Hidden,
}

impl Tree {
    /// Opens `root`; `hidden` are absolute paths as seen under it.
    pub fn open(root: &Path, hidden: Hidden) -> std::io::Result<Tree> {
        let root_fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let root_stat = rustix::fs::fstat(&root_fd)?;
        Ok(Tree {
            root: root.to_path_buf(),
            root_fd,
            root_stat,
            hidden,
        })
    }

    /// The root's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The hidden entries.
    pub fn hidden(&self) -> &Hidden {
        &self.hidden
    }

    /// Resolves the hidden entries again ([`Hidden::refresh`]).
    pub fn refresh_hidden(&mut self) {
        let root = self.root.clone();
        self.hidden.refresh(&root);
    }

    /// Whether `path` (absolute, components plain) is hidden or pseudo by its name
    /// alone, before any walk.
    fn refused_by_name(&self, path: &Path, comps: &[&OsStr]) -> Option<Stop> {
        if self.hidden.covers_path(path) {
            // Report the first hidden component.
            let mut p = PathBuf::from("/");
            for (i, c) in comps.iter().enumerate() {
                p.push(c);
                if self.hidden.covers_path(&p) {
                    return Some(Stop::Hidden { at: i });
                }
            }
        }
        // The mount points themselves may be looked at (a sandbox mounts its own
        // there); nothing below them.
        if PSEUDO_ROOTS
            .iter()
            .any(|r| path.starts_with(r) && path != Path::new(r))
        {
            return Some(Stop::Pseudo { at: 0 });
        }
        None
    }

    /// Opens the directory `comps[..n]` (the root for `n == 0`), following no link
    /// and refusing hidden and pseudo components on the way.
    pub fn walk(&self, comps: &[&OsStr], n: usize) -> Result<Reached, Stop> {
        let mut fd = rustix::io::dup(&self.root_fd).map_err(|e| Stop::Io(errno(e)))?;
        let mut st = self.root_stat;
        for (i, name) in comps.iter().take(n).enumerate() {
            let next = match rustix::fs::openat(
                &fd,
                *name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(f) => f,
                Err(e) => {
                    return Err(match e {
                        rustix::io::Errno::NOENT => Stop::Missing { at: i },
                        rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => {
                            match rustix::fs::statat(&fd, *name, AtFlags::SYMLINK_NOFOLLOW) {
                                Ok(s) if is_link(&s) => Stop::Symlink { at: i },
                                Ok(_) => Stop::NotDir { at: i },
                                Err(e) => Stop::Io(errno(e)),
                            }
                        }
                        e => Stop::Io(errno(e)),
                    });
                }
            };
            let nst = rustix::fs::fstat(&next).map_err(|e| Stop::Io(errno(e)))?;
            if self.hidden.covers_object(object(&nst)) {
                return Err(Stop::Hidden { at: i });
            }
            if nst.st_dev != st.st_dev && is_pseudo(next.as_fd()) {
                return Err(Stop::Pseudo { at: i });
            }
            fd = next;
            st = nst;
        }
        Ok(Reached { fd, stat: st })
    }

    /// Checks `path` and opens its parent: the parent's descriptor and the final
    /// name (`None` for the root itself). Hidden or pseudo paths, links on the way and
    /// malformed paths are refused.
    pub fn parent_of<'p>(&self, path: &'p Path) -> Result<(Reached, Option<&'p OsStr>), Stop> {
        let comps = components(path)?;
        if let Some(stop) = self.refused_by_name(path, &comps) {
            return Err(stop);
        }
        let n = comps.len().saturating_sub(1);
        let dir = self.walk(&comps, n)?;
        Ok((dir, comps.last().copied()))
    }

    /// Opens directory `path` itself (`O_PATH`), refusing what [`Tree::parent_of`]
    /// refuses and a final component that is a link, hidden or pseudo.
    pub fn dir(&self, path: &Path) -> Result<Reached, Stop> {
        let comps = components(path)?;
        if let Some(stop) = self.refused_by_name(path, &comps) {
            return Err(stop);
        }
        self.walk(&comps, comps.len())
    }

    /// [`Tree::lstat`] of `path` with its parent's descriptor and the final name
    /// (`None` for the root), for the `*at` calls that act on the entry checked.
    pub fn entry<'p>(&self, path: &'p Path) -> Result<(Reached, Option<&'p OsStr>, Stat), Stop> {
        let (dir, name) = self.parent_of(path)?;
        let Some(name) = name else {
            let st = dir.stat;
            return Ok((dir, None, st));
        };
        let st = self.lstat_in(&dir, name, components(path)?.len() - 1)?;
        Ok((dir, Some(name), st))
    }

    /// `lstat` of entry `name` of a directory reached by a walk, which is component
    /// `at` of the path asked about; a hidden object is refused.
    pub fn lstat_in(&self, dir: &Reached, name: &OsStr, at: usize) -> Result<Stat, Stop> {
        let st = rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
            if e == rustix::io::Errno::NOENT {
                Stop::Missing { at }
            } else {
                Stop::Io(errno(e))
            }
        })?;
        if self.hidden.covers_object(object(&st)) {
            return Err(Stop::Hidden { at });
        }
        Ok(st)
    }

    /// `lstat` of `path` (never following it), refusing what [`Tree::parent_of`]
    /// refuses and a final component that is a hidden object.
    pub fn lstat(&self, path: &Path) -> Result<Stat, Stop> {
        let (dir, name) = self.parent_of(path)?;
        let Some(name) = name else {
            return Ok(dir.stat);
        };
        self.lstat_in(&dir, name, components(path)?.len() - 1)
    }
}

/// Whether a status is a symbolic link's.
pub fn is_link(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// Whether a status is a directory's.
pub fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(d: &Path, hidden: &[&str]) -> Tree {
        let h = Hidden::new(d, hidden.iter().map(PathBuf::from));
        Tree::open(d, h).unwrap()
    }

    #[test]
    fn components_refuse_dotdot_empty_and_relative() {
        for bad in ["a/b", "/a//b", "/a/./b", "/a/../b", "/a/", ""] {
            assert_eq!(components(Path::new(bad)), Err(Stop::Malformed), "{bad}");
        }
        assert_eq!(components(Path::new("/")).unwrap().len(), 0);
        assert_eq!(components(Path::new("/a/b")).unwrap(), ["a", "b"]);
    }

    #[test]
    fn a_walk_follows_no_link_and_reaches_no_hidden_object() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("home/u/.ssh")).unwrap();
        std::fs::write(p.join("home/u/.ssh/id"), b"k").unwrap();
        std::fs::create_dir_all(p.join("home/u/proj")).unwrap();
        std::os::unix::fs::symlink("../.ssh", p.join("home/u/proj/dotlink")).unwrap();
        std::os::unix::fs::symlink("/home/u", p.join("home/u/proj/abs")).unwrap();
        // A second path to the secret directory (as a bind mount would be).
        std::fs::hard_link(p.join("home/u/.ssh/id"), p.join("home/u/proj/id-link")).unwrap();
        let t = tree(p, &["/home/u/.ssh"]);
        let stop = |s: &str| t.lstat(Path::new(s)).err();
        assert_eq!(stop("/home/u/.ssh/id"), Some(Stop::Hidden { at: 2 }));
        assert_eq!(
            stop("/home/u/proj/dotlink/id"),
            Some(Stop::Symlink { at: 3 })
        );
        assert_eq!(
            stop("/home/u/proj/abs/.ssh/id"),
            Some(Stop::Symlink { at: 3 })
        );
        assert_eq!(stop("/home/u/proj/../.ssh/id"), Some(Stop::Malformed));
        assert_eq!(
            stop("/proc/self/root/home/u/.ssh/id"),
            Some(Stop::Pseudo { at: 0 })
        );
        assert_eq!(stop("/home/u/nothing/x"), Some(Stop::Missing { at: 2 }));
        // The link itself is a link, and may be looked at.
        assert!(is_link(
            &t.lstat(Path::new("/home/u/proj/dotlink")).unwrap()
        ));
        // A hidden regular file's other name is hidden too (by object). Hidden
        // directories' objects are checked on every component of a walk.
        let t = tree(p, &["/home/u/.ssh/id"]);
        assert_eq!(
            t.lstat(Path::new("/home/u/proj/id-link")).err(),
            Some(Stop::Hidden { at: 3 })
        );
    }

    #[test]
    fn a_symlinked_secret_directory_hides_its_target_too() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("dotfiles/ssh")).unwrap();
        std::fs::write(p.join("dotfiles/ssh/id"), b"k").unwrap();
        std::fs::create_dir_all(p.join("home/u")).unwrap();
        std::os::unix::fs::symlink("../../dotfiles/ssh", p.join("home/u/.ssh")).unwrap();
        let t = tree(p, &["/home/u/.ssh"]);
        assert!(t.hidden().covers_path(Path::new("/dotfiles/ssh/id")));
        assert_eq!(
            t.lstat(Path::new("/dotfiles/ssh/id")).err(),
            Some(Stop::Hidden { at: 1 })
        );
        assert_eq!(
            t.lstat(Path::new("/home/u/.ssh")).err(),
            Some(Stop::Hidden { at: 2 })
        );
    }
}
