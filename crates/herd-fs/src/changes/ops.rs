//! Descriptor-relative file operations of a commit: nothing here follows a link.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use super::log::Op;
use crate::beneath::{Tree, components, is_dir};

/// A (device, mount) pair: renames stay within one.
pub(super) type MountKey = (u64, u64);

/// The mount a directory descriptor is on (device and mount id; mount id 0 on kernels
/// before 5.8).
pub(super) fn mount_key(fd: BorrowedFd<'_>) -> std::io::Result<MountKey> {
    use rustix::fs::{StatxFlags, statx};
    let s = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    let dev = (u64::from(s.stx_dev_major) << 32) | u64::from(s.stx_dev_minor);
    let mnt = if s.stx_mask & StatxFlags::MNT_ID.bits() != 0 {
        s.stx_mnt_id
    } else {
        0
    };
    Ok((dev, mnt))
}

/// Opens `dir/name` as an `O_PATH` directory, not following a link.
pub(super) fn open_path(
    dir: BorrowedFd<'_>,
    name: impl rustix::path::Arg,
) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `lstat` of `dir/name`; `None` if nothing is there.
pub(super) fn lstat_at(
    dir: BorrowedFd<'_>,
    name: impl rustix::path::Arg,
) -> std::io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Sets a directory's mode through its own descriptor (`fchmod`; via `/proc/self/fd`
/// when it cannot be opened for reading), never following a link.
pub(super) fn chmod_dir(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> std::io::Result<()> {
    let mode = Mode::from_raw_mode(mode);
    match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(rustix::fs::fchmod(&fd, mode)?),
        Err(Errno::ACCESS) => {
            let fd = open_path(dir, name)?;
            let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            Ok(rustix::fs::chmodat(
                rustix::fs::CWD,
                proc.as_str(),
                mode,
                AtFlags::empty(),
            )?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Timestamps setting only the modification time.
pub(super) fn mtime(ns: i64) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: ns.div_euclid(1_000_000_000),
            tv_nsec: ns.rem_euclid(1_000_000_000),
        },
    }
}

/// Sets `dir/name`'s modification time, not following a link.
pub(super) fn set_mtime(dir: BorrowedFd<'_>, name: &OsStr, ns: i64) -> std::io::Result<()> {
    Ok(rustix::fs::utimensat(
        dir,
        name,
        &mtime(ns),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Removes `dir/name` and everything below it, walking by descriptors: no link is
/// followed and no other mount is entered. A directory of ours without write
/// permission is made writable first.
pub(super) fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if !is_dir(&st) {
        return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    if st.st_mode & 0o700 != 0o700 && (st.st_uid == euid() || euid() == 0) {
        chmod_dir(dir, name, (st.st_mode & 0o7777) | 0o700)?;
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        let n = OsStr::from_bytes(&n);
        match lstat_at(fd.as_fd(), n)? {
            Some(s) if is_dir(&s) && s.st_dev == st.st_dev => remove_tree(fd.as_fd(), n)?,
            Some(s) if is_dir(&s) => {
                // Another mount: leave it (removing its mount point fails below).
                rustix::fs::unlinkat(&fd, n, AtFlags::REMOVEDIR)?
            }
            Some(_) => match rustix::fs::unlinkat(&fd, n, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            },
            None => {}
        }
    }
    drop(fd);
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Directories of the workstation reached (by [`Tree::walk`]) while applying a plan,
/// kept for the next operation in the same directory.
pub(super) struct Dirs {
    map: HashMap<PathBuf, OwnedFd>,
}

/// How many directory descriptors [`Dirs`] keeps at most.
const KEEP_DIRS: usize = 256;

impl Dirs {
    pub(super) fn new() -> Dirs {
        Dirs {
            map: HashMap::new(),
        }
    }

    /// The directory at `path` (absolute, under the tree's root), reached without
    /// following a link.
    pub(super) fn get(&mut self, tree: &Tree, path: &Path) -> std::io::Result<BorrowedFd<'_>> {
        if !self.map.contains_key(path) {
            let comps =
                components(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            let r = tree
                .walk(&comps, comps.len())
                .map_err(|s| std::io::Error::from_raw_os_error(s.errno()))?;
            if self.map.len() >= KEEP_DIRS {
                self.map.clear();
            }
            self.map.insert(path.to_path_buf(), r.fd);
        }
        Ok(self.map[path].as_fd())
    }

    /// Forgets every descriptor (a directory was moved).
    pub(super) fn clear(&mut self) {
        self.map.clear();
    }
}

/// A staging directory as the applier sees it: the directory and its trash.
pub(super) struct StageFds {
    pub(super) dir: OwnedFd,
    pub(super) trash: OwnedFd,
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Applies one operation of a plan (idempotently: see [`Op`]).
pub(super) fn apply(
    op: &Op,
    tree: &Tree,
    stages: &[Option<StageFds>],
    dirs: &mut Dirs,
) -> std::io::Result<()> {
    let stage = |i: u32| {
        stages
            .get(i as usize)
            .and_then(|s| s.as_ref())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
    };
    match op {
        Op::Trash {
            stage: s,
            dir,
            name,
            ino,
            trash,
        } => {
            let st = stage(*s)?;
            let tname = trash.to_string();
            if lstat_at(st.trash.as_fd(), tname.as_str())?.is_some() {
                return Ok(());
            }
            // A directory gone (moved away by an earlier operation) holds nothing.
            let d = match dirs.get(tree, Path::new(os(dir))) {
                Err(e) if gone(&e) => return Ok(()),
                d => d?,
            };
            match lstat_at(d, os(name))? {
                Some(now) if now.st_ino == *ino => {
                    rustix::fs::renameat(d, os(name), &st.trash, tname.as_str())?;
                    if is_dir(&now) {
                        dirs.clear();
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        Op::Put {
            stage: s,
            from,
            dir,
            name,
            is_dir,
        } => {
            let st = stage(*s)?;
            if lstat_at(st.dir.as_fd(), os(from))?.is_none() {
                return Ok(());
            }
            let d = dirs.get(tree, Path::new(os(dir)))?;
            let flags = if *is_dir {
                RenameFlags::NOREPLACE
            } else {
                RenameFlags::empty()
            };
            rustix::fs::renameat_with(&st.dir, os(from), d, os(name), flags)?;
            Ok(())
        }
        Op::Attr {
            path,
            mode,
            mtime_ns,
        } => {
            let p = Path::new(os(path));
            let (parent, name) = match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) => (parent, name),
                _ => return Ok(()),
            };
            let d = match dirs.get(tree, parent) {
                Err(e) if gone(&e) => return Ok(()),
                d => d?,
            };
            match lstat_at(d, name)? {
                Some(now) if is_dir(&now) => {
                    if let Some(m) = mode
                        && now.st_mode & 0o7777 != *m
                    {
                        chmod_dir(d, name, *m)?;
                    }
                    if let Some(ns) = mtime_ns {
                        set_mtime(d, name, *ns)?;
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }
}
