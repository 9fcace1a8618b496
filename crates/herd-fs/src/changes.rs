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
//! **On the workstation**, a [`Committer`] stages every file's data in a hidden
//! temporary file beside its target (`.herd-<task>-<n>.tmp`), and only when the whole
//! change set has arrived does [`Committer::commit`] rename them into place, delete
//! what was deleted and set modes and times. [`Committer::abort`] (or dropping it)
//! removes every temporary file: a task whose helper died commits nothing and leaves
//! nothing half-written.
//!
//! **Conflicts.** Every change carries the [`Base`] the task saw. If the workstation's
//! file is no longer that version (changed after the task read it, or created after the
//! task found the name free), the workstation's file is kept and the task's version is
//! written beside it as `NAME.herd-conflict-<task>`; the commit report lists it. A
//! conflicting deletion is dropped.
//!
//! The committer runs as the submitting user (in the workstation's per-user file
//! service), so it can only write where that user can.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use herd_proto::fs::{Base, Change, Version};

use crate::source::attr_of;

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

/// What a commit did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Paths written, created or removed.
    pub applied: Vec<PathBuf>,
    /// Conflicts: (the workstation's path kept, where the task's version was saved;
    /// `None` for a dropped deletion).
    pub conflicts: Vec<(PathBuf, Option<PathBuf>)>,
}

enum Staged {
    Dir {
        path: PathBuf,
        mode: u32,
        mtime_ns: i64,
        replaces: bool,
    },
    /// A temporary file or symlink to rename onto `target`.
    Rename {
        tmp: PathBuf,
        target: PathBuf,
        mtime_ns: Option<i64>,
    },
    Remove {
        path: PathBuf,
    },
    Conflict {
        path: PathBuf,
        saved: Option<PathBuf>,
    },
}

/// Applies one task's changes under `root` (`/` on the workstation, a directory in
/// tests), all or nothing. See the module docs.
pub struct Committer {
    root: PathBuf,
    task: String,
    staged: Vec<Staged>,
    temps: Vec<PathBuf>,
    made_dirs: Vec<PathBuf>,
    counter: u64,
    done: bool,
}

fn current(path: &Path) -> Option<Version> {
    fs::symlink_metadata(path)
        .ok()
        .map(|m| (&attr_of(&m)).into())
}

/// Whether the workstation's file is still what the task saw.
fn unchanged(path: &Path, base: &Base) -> bool {
    let now = current(path);
    match base {
        Base::Seen(v) => now.as_ref() == Some(v),
        Base::Absent | Base::Unseen => now.is_none(),
    }
}

impl Committer {
    /// A committer for task `task` (used in temporary and conflict names).
    pub fn new(root: impl Into<PathBuf>, task: &str) -> Self {
        Committer {
            root: root.into(),
            task: task.to_string(),
            staged: Vec::new(),
            temps: Vec::new(),
            made_dirs: Vec::new(),
            counter: 0,
            done: false,
        }
    }

    fn real(&self, path: &[u8]) -> Result<PathBuf, ChangeError> {
        let p = Path::new(OsStr::from_bytes(path));
        let bad = |why| ChangeError::Invalid {
            path: p.to_path_buf(),
            why,
        };
        if !p.is_absolute() || p.parent().is_none() {
            return Err(bad("not an absolute path below /"));
        }
        // Every component must be a plain name: no "", ".", "..".
        if path[1..]
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err(bad("path has an empty, . or .. component"));
        }
        Ok(self.root.join(p.strip_prefix("/").unwrap_or(p)))
    }

    fn temp_beside(&mut self, target: &Path) -> PathBuf {
        self.counter += 1;
        let dir = target.parent().unwrap_or(Path::new("/"));
        let tmp = dir.join(format!(".herd-{}-{}.tmp", self.task, self.counter));
        self.temps.push(tmp.clone());
        tmp
    }

    fn conflict_name(&self, target: &Path) -> PathBuf {
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".herd-conflict-{}", self.task));
        target.with_file_name(name)
    }

    /// Stages one change; for [`Change::File`], `data` must yield exactly `size` bytes.
    pub fn stage(
        &mut self,
        change: &Change,
        data: Option<&mut dyn Read>,
    ) -> Result<(), ChangeError> {
        match change {
            Change::Dir {
                path,
                mode,
                mtime_ns,
                replaces,
            } => {
                let p = self.real(path)?;
                if !p.is_dir() {
                    if p.symlink_metadata().is_ok() && !*replaces {
                        // A file stands where the task made a directory: the task
                        // must have removed it, so a Remove came first; otherwise keep
                        // the workstation's file and drop the directory's contents.
                        self.staged.push(Staged::Conflict {
                            path: p,
                            saved: None,
                        });
                        return Ok(());
                    }
                    // Create it now (empty, so nothing half-written shows) so that
                    // its children can be staged inside it.
                    let mut missing = Vec::new();
                    let mut cur = p.clone();
                    while !cur.exists() {
                        missing.push(cur.clone());
                        if !cur.pop() {
                            break;
                        }
                    }
                    for d in missing.into_iter().rev() {
                        fs::create_dir(&d).map_err(io("create directory", &d))?;
                        self.made_dirs.push(d);
                    }
                }
                self.staged.push(Staged::Dir {
                    path: p,
                    mode: *mode,
                    mtime_ns: *mtime_ns,
                    replaces: *replaces,
                });
            }
            Change::File {
                path,
                mode,
                mtime_ns,
                size,
                base,
            } => {
                let target = self.real(path)?;
                let tmp = self.temp_beside(&target);
                // Private until renamed into place; the final mode is set below.
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io("create", &tmp))?;
                let mut n = 0u64;
                if let Some(r) = data {
                    n = std::io::copy(&mut r.take(*size), &mut f).map_err(io("write", &tmp))?;
                }
                if n != *size {
                    return Err(ChangeError::Invalid {
                        path: target,
                        why: "file data ended early",
                    });
                }
                f.sync_all().map_err(io("sync", &tmp))?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(*mode & 0o7777))
                    .map_err(io("chmod", &tmp))?;
                self.stage_rename(tmp, target, Some(*mtime_ns), base);
            }
            Change::Symlink { path, target, base } => {
                let p = self.real(path)?;
                let tmp = self.temp_beside(&p);
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)
                    .map_err(io("create symlink", &tmp))?;
                self.stage_rename(tmp, p, None, base);
            }
            Change::Remove { path, base } => {
                let p = self.real(path)?;
                if unchanged(&p, base) || matches!(base, Base::Unseen) {
                    self.staged.push(Staged::Remove { path: p });
                } else {
                    self.staged.push(Staged::Conflict {
                        path: p,
                        saved: None,
                    });
                }
            }
        }
        Ok(())
    }

    fn stage_rename(&mut self, tmp: PathBuf, target: PathBuf, mtime_ns: Option<i64>, base: &Base) {
        // Removals staged earlier in this change set (a rename) make the path free.
        let freed = self
            .staged
            .iter()
            .any(|s| matches!(s, Staged::Remove { path } if *path == target));
        if freed || unchanged(&target, base) {
            self.staged.push(Staged::Rename {
                tmp,
                target,
                mtime_ns,
            });
        } else {
            let saved = self.conflict_name(&target);
            self.staged.push(Staged::Rename {
                tmp,
                target: saved.clone(),
                mtime_ns,
            });
            self.staged.push(Staged::Conflict {
                path: target,
                saved: Some(saved),
            });
        }
    }

    /// Applies everything staged, in order. Directory modes and times are set last.
    pub fn commit(mut self) -> Result<Report, ChangeError> {
        let mut report = Report::default();
        let staged = std::mem::take(&mut self.staged);
        let mut dirs = Vec::new();
        let ours: HashSet<PathBuf> = self.temps.iter().cloned().collect();
        for s in staged {
            match s {
                Staged::Dir {
                    path,
                    mode,
                    mtime_ns,
                    replaces,
                } => {
                    if replaces && path.is_dir() {
                        for e in fs::read_dir(&path).map_err(io("list", &path))? {
                            let e = e.map_err(io("list", &path))?.path();
                            if !ours.contains(&e) && !self.made_dirs.contains(&e) {
                                remove_any(&e)?;
                            }
                        }
                    }
                    report.applied.push(path.clone());
                    dirs.push((path, mode, mtime_ns));
                }
                Staged::Rename {
                    tmp,
                    target,
                    mtime_ns,
                } => {
                    if target.is_dir() && !target.is_symlink() {
                        remove_any(&target)?;
                    }
                    fs::rename(&tmp, &target).map_err(io("rename into place", &target))?;
                    self.temps.retain(|t| *t != tmp);
                    if let Some(ns) = mtime_ns {
                        set_mtime(&target, ns)?;
                    }
                    report.applied.push(target);
                }
                Staged::Remove { path } => {
                    if path.symlink_metadata().is_ok() {
                        remove_any(&path)?;
                    }
                    report.applied.push(path);
                }
                Staged::Conflict { path, saved } => report.conflicts.push((path, saved)),
            }
        }
        for (path, mode, mtime_ns) in dirs.into_iter().rev() {
            // A directory the task only passed through (copied up by the overlay, e.g.
            // /home) keeps its mode and time: touch only what changed, so that a user
            // who does not own it can still commit below it.
            let now = fs::symlink_metadata(&path).map_err(io("stat", &path))?;
            if now.mode() & 0o7777 != mode & 0o7777 {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(io("chmod", &path))?;
            }
            let now_ns = now.mtime() as i128 * 1_000_000_000 + now.mtime_nsec() as i128;
            if now_ns != mtime_ns as i128 {
                set_mtime(&path, mtime_ns)?;
            }
        }
        self.made_dirs.clear();
        self.done = true;
        Ok(report)
    }

    /// Throws everything staged away.
    pub fn abort(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        for t in self.temps.drain(..) {
            let _ = fs::remove_file(&t);
        }
        for d in self.made_dirs.drain(..).rev() {
            let _ = fs::remove_dir(&d);
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if !self.done {
            self.cleanup();
        }
    }
}

fn remove_any(p: &Path) -> Result<(), ChangeError> {
    let md = fs::symlink_metadata(p).map_err(io("stat", p))?;
    if md.is_dir() {
        fs::remove_dir_all(p).map_err(io("remove", p))
    } else {
        fs::remove_file(p).map_err(io("remove", p))
    }
}

fn set_mtime(p: &Path, ns: i64) -> Result<(), ChangeError> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT, utimensat};
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: ns.div_euclid(1_000_000_000),
            tv_nsec: ns.rem_euclid(1_000_000_000),
        },
    };
    utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io("set time", p)(e.into()))
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
