//! A task's changes: found in its overlay upper layer on the helper, applied to the
//! workstation in one commit.
//!
//! **On the helper**, [`scan`] walks the overlayfs upper directory once the task's
//! process tree has exited. overlayfs records a deletion as a whiteout (a character
//! device 0:0) and a directory that was removed and made again as an *opaque*
//! directory (`trusted.overlay.opaque` or, in a user namespace, `user.overlay.opaque`
//! set to `y`). Everything else in the upper layer is new or modified and is sent
//! whole (overlayfs copies a file up entirely on its first write or chmod). A rename
//! shows up as a removal plus a new entry. FIFOs, sockets and device nodes a task
//! creates are not committed.
//!
//! **On the workstation**, a [`Committer`] takes the change set as the helper sends
//! it, an untrusted peer: everything it does is bounded by a [`Scope`] and
//! [`Limits`], follows no symbolic link, and is all or nothing even if the machine
//! dies half-way. [`recover`] finishes or undoes what a dead committer left.
//!
//! **Write scope.** A [`Scope`] is a set of writable roots (resolved once, with the
//! workstation's own resolution: the user named them) minus hidden paths
//! ([`Hidden`](crate::beneath::Hidden)). A change is applied only if its path is at
//! or below a writable root, not hidden (by name, or by object: a hard link or bind
//! mount of a hidden file), not on a pseudo file system, not a staging name
//! (`.herd-stage-*`), and every directory above it is reached from the root without
//! following a symbolic link ([`Tree`](crate::beneath::Tree)): a link inside the
//! scope pointing elsewhere does not extend it. A change that fails is **dropped**,
//! not an error: the commit goes on and [`Report::dropped`] names the path and why
//! ([`Dropped`]). Below a dropped directory, changes are dropped without being listed
//! again. A dropped file's data is still read (the stream carries it) and thrown
//! away. `Dir` changes for directories above a writable root (the overlay copies
//! parents such as `/home` up) are ignored when their mode is unchanged (their times
//! do not matter); otherwise they are dropped. A writable root itself may change its
//! mode, time or contents but not be removed or replaced by a file. A removal of a
//! directory holding a hidden path, or of a mount point, is dropped; entries of a
//! replaced directory that are hidden, hold a hidden path or are mount points are
//! kept (and listed).
//!
//! **Renames across the scope's edge** arrive as a removal of the old path and a new
//! entry at the new one. A rename *into* the scope becomes a copy: the source outside
//! stays (its removal is dropped as outside the scope). A rename *out of* the scope
//! must not lose the object: a removal inside the scope whose object matches a
//! dropped change of the same change set (a file: the removal's base version has the
//! dropped file's modification time and size; a directory: the same modification
//! time) is not applied either, and the report lists it as [`Dropped::MovedOut`].
//!
//! **Following no link.** Every operation is relative to a directory descriptor
//! reached by [`Tree`](crate::beneath::Tree) (`openat`, `mkdirat`, `renameat`,
//! `unlinkat`, `utimensat` with `AT_SYMLINK_NOFOLLOW`, `fchmod` on the directory's
//! own descriptor), and decisions are made on `lstat`. A `Dir` change meeting a
//! symbolic link (with `replaces`, as overlayfs marks a directory made where the
//! task removed something) replaces the link and never touches its target; a `File`
//! or `Symlink` over a directory moves the directory away whole and deletes it by
//! descriptors. Files get permission bits only: setuid, setgid and sticky bits are
//! dropped and listed in [`Report::stripped`] (a directory keeps the special bits it
//! has, and a new one gets setgid only below a setgid directory, as the kernel would
//! do), and whatever type bits a `mode` carries, a `File` is a plain regular file.
//!
//! **Crash-atomic commit.** Nothing of the workstation's tree is touched until the
//! whole change set has arrived and is durable:
//!
//! 1. *Staging.* Every new file and link, and every new directory with everything
//!    below it, is written into a staging directory `.herd-stage-<task>`, one per
//!    (device, mount) of the targets, made in the writable root when it is on that
//!    mount (else the highest directory of the scope on the target's path that is):
//!    moving from staging to a target is then a `rename` within one file system.
//!    Before a staging directory is made, the intent log `<log_dir>/<task>.log`
//!    names it, fsynced (normally once per commit). Files are not fsynced one by one.
//! 2. *Plan.* When the change set is complete, each staged change is resolved against
//!    the workstation as it is now (the [`Base`] check, conflicts, what a replaced
//!    directory holds), giving a list of idempotent operations: `Trash` (move an
//!    object, identified by inode, into staging's trash under a unique name; done iff
//!    that name exists), `Put` (rename a staged entry to its target; done iff the
//!    staged entry is gone; a directory is put with `RENAME_NOREPLACE`), `Attr` (a
//!    directory's mode and time). Then one `syncfs` per staging file system makes
//!    staging durable, and the plan is appended to the log and fsynced: **the point
//!    of no return**.
//! 3. *Apply* the plan in order; then one `syncfs` per file system again, and an
//!    `Applied` record (fsynced).
//! 4. *Clean up*: remove the staging directories (with the trash: removed objects
//!    are deleted now) and the log.
//!
//! [`recover`] (run before each commit) handles every log no live committer holds
//! (committers `flock` theirs): without a plan, it removes the staging directories
//! (nothing was applied); with a plan and no `Applied`, it replays the plan; then it
//! cleans up. Either every change of the task is applied or none, and nothing of
//! staging is left. [`Committer::abort`], dropping a committer before
//! [`Committer::commit`], and any failure before the point of no return roll back
//! the same way. Log records are a 4-byte length, an 8-byte BLAKE3 prefix of the
//! payload and the payload (postcard): a torn tail is ignored.
//!
//! **Limits and time.** The work is linear in the change set (hash maps, a few
//! hundred directory descriptors kept), with no per-file fsync. [`Limits`] bounds the
//! number of changes and the bytes of data, and before each file is staged the
//! staging file system must keep its announced size plus a reserve free (`statvfs`);
//! data is written as it arrives, never preallocated from the announced size. A
//! change set over a limit, out of space or cut short fails with the reason and
//! rolls back.
//!
//! **Conflicts.** Every change carries the [`Base`] the task saw. If the workstation's
//! file is no longer that version (changed after the task read it, or created after the
//! task found the name free), the workstation's file is kept and the task's version is
//! written beside it as `NAME.herd-conflict-<task>` (through staging like any file);
//! the commit report lists it. When the change set itself makes that path (or
//! something below it), the copy is `NAME.herd-conflict-<task>-2` (`-3`, ...): a copy
//! never takes the place of an entry of the change set. A conflicting deletion is
//! dropped.
//!
//! The committer runs as the submitting user (in the workstation's per-user file
//! service), so it can only write where that user can.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use herd_proto::fs::{Base, Change};

use crate::source::attr_of;

mod commit;
mod log;
mod ops;

pub use commit::{Committer, Dropped, Limits, Report, Scope, Step, recover};

/// Errors scanning or committing changes.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which path.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A change is malformed (relative path, `..`, data of the wrong length).
    #[error("invalid change for {}: {why}", path.display())]
    Invalid {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// A writable root cannot be used.
    #[error("cannot make {} writable: {why}", path.display())]
    Scope {
        /// The root as given.
        path: PathBuf,
        /// Why not.
        why: &'static str,
    },
    /// The change set has too many changes.
    #[error("the change set has more than {limit} files (limit [commit] max_files)")]
    TooMany {
        /// The limit.
        limit: u64,
    },
    /// The change set has too much data.
    #[error("the change set has more than {limit} bytes of file data (limit [commit] max_bytes)")]
    TooBig {
        /// The limit.
        limit: u64,
    },
    /// The staging file system has not enough free space.
    #[error(
        "not enough free space to stage {}: it needs {need} bytes, {free} are free and {keep} must stay free; free some space and run the task again",
        path.display()
    )]
    NoSpace {
        /// The file being staged.
        path: PathBuf,
        /// Its size.
        need: u64,
        /// Bytes free.
        free: u64,
        /// Bytes kept free.
        keep: u64,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ChangeError + use<> {
    let path = path.to_path_buf();
    move |source| ChangeError::Io { op, path, source }
}

fn is_opaque(path: &Path) -> bool {
    for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        let mut buf = [0u8; 4];
        if let Ok(n) = rustix::fs::lgetxattr(path, name, &mut buf)
            && n >= 1
            && buf[0] == b'y'
        {
            return true;
        }
    }
    false
}

/// A file to send with a [`Change::File`]: where its data is on the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// The change.
    pub change: Change,
    /// For a file, where its contents are in the upper layer.
    pub data: Option<PathBuf>,
}

/// Walks an overlay upper directory; `base` tells what the task saw at a workstation
/// path. Parents come before their children; names are sorted.
pub fn scan(upper: &Path, base: &dyn Fn(&Path) -> Base) -> Result<Vec<Scanned>, ChangeError> {
    let mut out = Vec::new();
    walk(upper, Path::new("/"), base, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    at: &Path,
    base: &dyn Fn(&Path) -> Base,
    out: &mut Vec<Scanned>,
) -> Result<(), ChangeError> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .map_err(io("list", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io("list", dir))?;
    names.sort();
    for name in names {
        let real = dir.join(&name);
        let path = at.join(&name);
        let md = fs::symlink_metadata(&real).map_err(io("stat", &real))?;
        let ft = md.file_type();
        let bytes = path.as_os_str().as_bytes().to_vec();
        if ft.is_char_device() && md.rdev() == 0 {
            out.push(Scanned {
                change: Change::Remove {
                    path: bytes,
                    base: base(&path),
                },
                data: None,
            });
        } else if ft.is_dir() {
            let a = attr_of(&md);
            out.push(Scanned {
                change: Change::Dir {
                    path: bytes,
                    mode: a.mode,
                    mtime_ns: a.mtime_ns,
                    replaces: is_opaque(&real),
                },
                data: None,
            });
            walk(&real, &path, base, out)?;
        } else if ft.is_file() {
            let a = attr_of(&md);
            out.push(Scanned {
                change: Change::File {
                    path: bytes,
                    mode: a.mode,
                    mtime_ns: a.mtime_ns,
                    size: a.size,
                    base: base(&path),
                },
                data: Some(real),
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&real).map_err(io("read link", &real))?;
            out.push(Scanned {
                change: Change::Symlink {
                    path: bytes,
                    target: target.into_os_string().into_vec(),
                    base: base(&path),
                },
                data: None,
            });
        }
    }
    Ok(())
}

/// Writes a change set's data to a writer as the helper sends it: used by tests and
/// by the agent to stream a [`Scanned`] file.
pub fn copy_data(scanned: &Scanned, out: &mut dyn Write) -> Result<u64, ChangeError> {
    match &scanned.data {
        Some(p) => {
            let mut f = fs::File::open(p).map_err(io("open", p))?;
            std::io::copy(&mut f, out).map_err(io("read", p))
        }
        None => Ok(0),
    }
}
