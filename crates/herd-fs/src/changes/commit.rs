//! The workstation side: [`Scope`], [`Committer`], [`recover`]. See the module docs of
//! [`super`].

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use herd_proto::fs::{Base, Change, Version};
use rustix::fs::{AtFlags, Mode, OFlags, Stat};

use super::log::{Log, Op, Record};
use super::ops::{self, Dirs, MountKey, StageFds, lstat_at, mount_key, open_path};
use super::{ChangeError, io};
use crate::beneath::{Hidden, PSEUDO_ROOTS, Stop, Tree, components, is_dir};

/// Where a task may write: writable roots, minus hidden paths. See the module docs.
#[derive(Debug, Clone)]
pub struct Scope {
    roots: Vec<PathBuf>,
    hidden: Hidden,
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

fn path_of(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

impl Scope {
    /// The writable roots `writable` (absolute, as seen under `root`), each resolved
    /// once as the workstation resolves it (the user named them, links included), and
    /// `hidden`, never writable even inside a root. A root must exist, lie under
    /// `root` once resolved, and not be on `/proc`, `/sys` or `/dev`.
    pub fn new(root: &Path, writable: &[PathBuf], hidden: Hidden) -> Result<Scope, ChangeError> {
        let bad = |path: &Path, why| ChangeError::Scope {
            path: path.to_path_buf(),
            why,
        };
        let top = fs::canonicalize(root).map_err(io("resolve", root))?;
        let mut roots = Vec::new();
        for w in writable {
            if components(w).is_err() {
                return Err(bad(w, "not an absolute path with plain components"));
            }
            let real = root.join(w.strip_prefix("/").unwrap_or(w));
            // A root that does not exist yet (`--writes ~/.cache` before any tool made
            // it) is its deepest existing ancestor, resolved, with the rest appended:
            // no link can be on the part that does not exist.
            let mut missing = Vec::new();
            let mut existing = real.as_path();
            let c = loop {
                match fs::symlink_metadata(existing) {
                    Ok(_) => break fs::canonicalize(existing).map_err(io("resolve", existing))?,
                    Err(_) => {
                        missing.push(existing.file_name().unwrap_or_default().to_os_string());
                        existing = existing
                            .parent()
                            .ok_or_else(|| bad(w, "it does not exist"))?;
                    }
                }
            };
            if !fs::metadata(&c).is_ok_and(|m| m.is_dir()) {
                return Err(bad(w, "it is not a directory"));
            }
            let c = missing.iter().rev().fold(c, |p, name| p.join(name));
            let rel = c
                .strip_prefix(&top)
                .map_err(|_| bad(w, "it resolves outside the root"))?;
            let p = Path::new("/").join(rel);
            if PSEUDO_ROOTS.iter().any(|r| p.starts_with(r)) {
                return Err(bad(w, "it is on a pseudo file system"));
            }
            if !roots.contains(&p) {
                roots.push(p);
            }
        }
        Ok(Scope { roots, hidden })
    }

    /// The writable roots, resolved.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The hidden paths.
    pub fn hidden(&self) -> &Hidden {
        &self.hidden
    }

    /// The writable root `path` is at or below (the deepest one), by name alone.
    pub fn root_of(&self, path: &Path) -> Option<&Path> {
        self.roots
            .iter()
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
            .map(|r| r.as_path())
    }

    /// Whether `path` is strictly above a writable root (a parent the overlay copies
    /// up, like `/home`).
    pub fn is_ancestor(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| r != path && r.starts_with(path))
    }
}

/// Limits on one change set. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Changes (files, directories, links, removals) at most.
    pub max_files: u64,
    /// Bytes of file data at most.
    pub max_bytes: u64,
    /// Free space to keep on a staging file system (or 1% of it, whichever is more).
    pub reserve_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 1_000_000,
            max_bytes: 64 << 30,
            reserve_bytes: 256 << 20,
        }
    }
}

/// Why a change was not applied (the commit went on without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not at or below a writable root.
    OutsideScope,
    /// A hidden path (by name or by object).
    Hidden,
    /// A directory on its way is a symbolic link on the workstation.
    ThroughSymlink,
    /// On a pseudo file system (`/proc`, `/sys`, `/dev`, ...).
    Pseudo,
    /// Its directory does not exist on the workstation (nor in the change set).
    NoParent,
    /// Its directory is not writable by the user.
    NotWritable,
    /// The directory is not the user's: its mode cannot be changed.
    NotOwner,
    /// A removal or replacement of a directory holding a hidden path.
    HoldsHidden,
    /// A mount point.
    MountPoint,
    /// A writable root itself cannot be removed or replaced by a file.
    ScopeRoot,
    /// A name herd uses for staging (`.herd-stage-*`).
    Reserved,
    /// A removal not applied: the object was moved to a place outside the scope, so
    /// it is kept where it was.
    MovedOut,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dropped::OutsideScope => "outside the write scope",
            Dropped::Hidden => "hidden",
            Dropped::ThroughSymlink => "through a symbolic link",
            Dropped::Pseudo => "on a pseudo file system",
            Dropped::NoParent => "its directory is not on the workstation",
            Dropped::NotWritable => "its directory is not writable",
            Dropped::NotOwner => "not yours: its mode was not changed",
            Dropped::HoldsHidden => "holds a hidden path",
            Dropped::MountPoint => "a mount point",
            Dropped::ScopeRoot => "a writable root itself",
            Dropped::Reserved => "a name herd uses for staging",
            Dropped::MovedOut => "kept: its new place is outside the write scope",
        })
    }
}

/// What a commit did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Paths written, created or removed.
    pub applied: Vec<PathBuf>,
    /// Conflicts: (the workstation's path kept, where the task's version was saved;
    /// `None` for a dropped deletion or directory).
    pub conflicts: Vec<(PathBuf, Option<PathBuf>)>,
    /// Changes not applied, and why. Below a dropped directory only the directory is
    /// listed.
    pub dropped: Vec<(PathBuf, Dropped)>,
    /// Paths whose setuid, setgid or sticky bits were dropped.
    pub stripped: Vec<PathBuf>,
}

/// A point of a commit's progress, for [`Committer::observe`] (the crash tests kill
/// the committer at each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A staging directory was made.
    StagingMade,
    /// One change was staged.
    Staged,
    /// Staging is durable; the plan is about to be written.
    Sealed,
    /// The plan is durable: the point of no return.
    Planned,
    /// One operation of the plan was applied.
    Applied,
    /// Everything applied is durable and recorded.
    Synced,
    /// Staging and the log are removed.
    Done,
}

/// What the change set makes of a path, as staging goes.
enum Planned {
    /// A directory made in staging (`rel` inside staging `stage`); `sgid`: its final
    /// mode has the setgid bit.
    NewDir {
        stage: usize,
        rel: PathBuf,
        sgid: bool,
    },
    /// A directory of the workstation kept (`replaced`: emptied first).
    WsDir { replaced: bool },
    /// Removed by the change set.
    Removed,
    /// Dropped or in conflict: everything below is dropped silently.
    Dropped,
}

/// A change staged, resolved into operations at commit time.
enum Pending {
    Remove {
        path: PathBuf,
        base: Base,
    },
    /// Empty the workstation's directory at `path` (a replaced directory).
    Empty {
        path: PathBuf,
    },
    Put {
        stage: usize,
        from: String,
        path: PathBuf,
        /// `None`: the path is free (its old entry is removed by the change set).
        base: Option<Base>,
        /// For a new directory: its mode, time, and whether it replaces what is there.
        dir: Option<(u32, i64, bool)>,
    },
    Attr {
        path: PathBuf,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    },
    /// A `Put` a later change of the same path took the place of.
    Cancelled,
}

/// A staging directory.
struct Stage {
    host: PathBuf,
    name: OsString,
    host_fd: OwnedFd,
    fds: StageFds,
}

/// A workstation directory reached for staging, with what was found out about it.
#[derive(Clone)]
struct WsDir {
    fd: Rc<OwnedFd>,
    stat: Stat,
    writable: bool,
}

/// Where a change's parent is.
enum Parent {
    Ws(WsDir, bool),
    Staged(usize, PathBuf, bool),
    Silent,
    Drop(Dropped),
}

fn version(st: &Stat) -> Version {
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Version {
        ino: st.st_ino,
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec as i64),
        ctime_ns: ns(st.st_ctime, st.st_ctime_nsec as i64),
        size: st.st_size as u64,
    }
}

fn mtime_ns(st: &Stat) -> i64 {
    version(st).mtime_ns
}

/// Whether the workstation's object is still what the task saw.
fn unchanged(now: Option<&Stat>, base: &Base) -> bool {
    match base {
        Base::Seen(v) => now.map(version).as_ref() == Some(v),
        Base::Absent | Base::Unseen => now.is_none(),
    }
}

fn stop_to_drop(s: Stop, path: &Path) -> Result<Dropped, ChangeError> {
    Ok(match s {
        Stop::Symlink { .. } => Dropped::ThroughSymlink,
        Stop::Missing { .. } | Stop::NotDir { .. } => Dropped::NoParent,
        Stop::Hidden { .. } => Dropped::Hidden,
        Stop::Pseudo { .. } => Dropped::Pseudo,
        Stop::Io(libc::EACCES) => Dropped::NotWritable,
        Stop::Malformed => Dropped::OutsideScope,
        Stop::Io(e) => {
            return Err(ChangeError::Io {
                op: "walk to",
                path: path.to_path_buf(),
                source: std::io::Error::from_raw_os_error(e),
            });
        }
    })
}

const STAGE_PREFIX: &str = ".herd-stage-";

fn raise_fd_limit() {
    if let Ok(l) = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .ok_or(())
        && let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum
        && l < max
    {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
}

/// Applies one task's changes under `root` (`/` on the workstation, a directory in
/// tests), inside a [`Scope`], all or nothing, crash included. See the module docs.
pub struct Committer {
    root: PathBuf,
    task: String,
    tree: Tree,
    scope: Scope,
    limits: Limits,
    log_dir: PathBuf,
    log: Option<Log>,
    stages: Vec<Stage>,
    stage_by_key: HashMap<MountKey, usize>,
    planned: HashMap<PathBuf, Planned>,
    pending: Vec<Pending>,
    /// Directories made inside new directories: (stage, rel, mode, mtime), parents
    /// first.
    nested: Vec<(usize, PathBuf, u32, i64)>,
    ws_dirs: HashMap<PathBuf, WsDir>,
    /// When each path's entry of `planned` was made (a change's number).
    planned_seq: HashMap<PathBuf, u64>,
    /// When a directory was emptied or a path removed or replaced by a file.
    killed_at: HashMap<PathBuf, u64>,
    /// The pending `Put` of each path: a later change of the path cancels it.
    puts: HashMap<PathBuf, usize>,
    staged_dirs: HashMap<(usize, PathBuf), OwnedFd>,
    counter: u64,
    changes: u64,
    bytes: u64,
    moved_files: HashSet<(i64, u64)>,
    moved_dirs: HashSet<i64>,
    report: Report,
    observer: Option<Box<dyn FnMut(Step)>>,
    planned_written: bool,
    done: bool,
    buf: Vec<u8>,
}

/// How many directory descriptors are kept while staging.
const KEEP_DIRS: usize = 256;

impl Committer {
    /// A committer for task `task` (letters, digits, `-` and `_`: used in staging,
    /// log and conflict names) under `root`, writing only inside `scope`, its intent
    /// log in `log_dir` (the user's state, e.g. `~/.local/state/herd/commits`).
    pub fn new(
        root: &Path,
        task: &str,
        scope: Scope,
        limits: Limits,
        log_dir: &Path,
    ) -> Result<Committer, ChangeError> {
        if task.is_empty()
            || task.len() > 64
            || !task
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ChangeError::Invalid {
                path: PathBuf::from(task),
                why: "a task name must be 1 to 64 letters, digits, - or _",
            });
        }
        raise_fd_limit();
        let tree = Tree::open(root, scope.hidden.clone()).map_err(io("open", root))?;
        Ok(Committer {
            root: root.to_path_buf(),
            task: task.to_string(),
            tree,
            scope,
            limits,
            log_dir: log_dir.to_path_buf(),
            log: None,
            stages: Vec::new(),
            stage_by_key: HashMap::new(),
            planned: HashMap::new(),
            pending: Vec::new(),
            nested: Vec::new(),
            ws_dirs: HashMap::new(),
            puts: HashMap::new(),
            planned_seq: HashMap::new(),
            killed_at: HashMap::new(),
            staged_dirs: HashMap::new(),
            counter: 0,
            changes: 0,
            bytes: 0,
            moved_files: HashSet::new(),
            moved_dirs: HashSet::new(),
            report: Report::default(),
            observer: None,
            planned_written: false,
            done: false,
            buf: Vec::new(),
        })
    }

    /// Calls `f` at each [`Step`] of the commit (tests use it to crash at each).
    pub fn observe(&mut self, f: impl FnMut(Step) + 'static) {
        self.observer = Some(Box::new(f));
    }

    fn step(&mut self, s: Step) {
        if let Some(f) = self.observer.as_mut() {
            f(s);
        }
    }

    fn stage_name(&self) -> OsString {
        OsString::from(format!("{STAGE_PREFIX}{}", self.task))
    }

    fn drop_change(&mut self, path: &Path, why: Dropped) {
        self.report.dropped.push((path.to_path_buf(), why));
    }

    /// The workstation directory `q`, reached without following a link.
    fn ws_dir(&mut self, q: &Path) -> Result<Result<WsDir, Dropped>, ChangeError> {
        if let Some(d) = self.ws_dirs.get(q) {
            return Ok(Ok(d.clone()));
        }
        let comps = components(q).map_err(|_| ChangeError::Invalid {
            path: q.to_path_buf(),
            why: "not an absolute path",
        })?;
        let r = match self.tree.walk(&comps, comps.len()) {
            Ok(r) => r,
            Err(s) => return stop_to_drop(s, q).map(Err),
        };
        let writable = rustix::fs::accessat(
            &r.fd,
            ".",
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            AtFlags::EACCESS,
        )
        .is_ok();
        let d = WsDir {
            fd: Rc::new(r.fd),
            stat: r.stat,
            writable,
        };
        if self.ws_dirs.len() >= KEEP_DIRS {
            self.ws_dirs.clear();
        }
        self.ws_dirs.insert(q.to_path_buf(), d.clone());
        Ok(Ok(d))
    }

    /// The staging directory for a target in workstation directory `q` (at or below
    /// a writable root), made on first use.
    fn stage_for(&mut self, q: &Path, d: &WsDir) -> Result<usize, ChangeError> {
        let key = mount_key(d.fd.as_fd()).map_err(io("stat", q))?;
        if let Some(&i) = self.stage_by_key.get(&key) {
            return Ok(i);
        }
        // The highest directory on this mount between the writable root and `q`.
        let root = self.scope.root_of(q).unwrap_or(q).to_path_buf();
        let comps = components(q).map_err(|_| ChangeError::Invalid {
            path: q.to_path_buf(),
            why: "not an absolute path",
        })?;
        let start = components(&root).map(|c| c.len()).unwrap_or(0);
        let mut host = None;
        for n in start..=comps.len() {
            let r = self
                .tree
                .walk(&comps, n)
                .map_err(|s| io("walk to", q)(std::io::Error::from_raw_os_error(s.errno())))?;
            if mount_key(r.fd.as_fd()).map_err(io("stat", q))? == key {
                let mut p = PathBuf::from("/");
                p.extend(&comps[..n]);
                host = Some((p, r.fd));
                break;
            }
        }
        let (host, host_fd) = host.ok_or_else(|| ChangeError::Invalid {
            path: q.to_path_buf(),
            why: "no directory to stage in",
        })?;
        let name = self.stage_name();
        let rec = Record::Stage {
            host: bytes(&host),
            name: name.as_bytes().to_vec(),
        };
        // The log names the staging directory before it exists.
        match self.log.as_mut() {
            Some(l) => l.append(&rec)?,
            None => self.log = Some(Log::create(&self.log_dir, &self.task, &rec)?),
        }
        let at = host.join(&name);
        rustix::fs::mkdirat(&host_fd, &name, Mode::from_raw_mode(0o700))
            .map_err(|e| io("create staging directory", &at)(e.into()))?;
        let dir = open_path(host_fd.as_fd(), &name).map_err(io("open", &at))?;
        rustix::fs::mkdirat(&dir, "t", Mode::from_raw_mode(0o700))
            .map_err(|e| io("create staging directory", &at)(e.into()))?;
        let trash = open_path(dir.as_fd(), "t").map_err(io("open", &at))?;
        self.stages.push(Stage {
            host,
            name,
            host_fd,
            fds: StageFds { dir, trash },
        });
        let i = self.stages.len() - 1;
        self.stage_by_key.insert(key, i);
        self.step(Step::StagingMade);
        Ok(i)
    }

    /// The descriptor of a directory in staging.
    fn staged_dir(&mut self, stage: usize, rel: &Path) -> Result<BorrowedFd<'_>, ChangeError> {
        let k = (stage, rel.to_path_buf());
        if !self.staged_dirs.contains_key(&k) {
            let fd = open_path(self.stages[stage].fds.dir.as_fd(), rel)
                .map_err(io("open", &self.stages[stage].host.join(rel)))?;
            if self.staged_dirs.len() >= KEEP_DIRS {
                self.staged_dirs.clear();
            }
            self.staged_dirs.insert(k.clone(), fd);
        }
        Ok(self.staged_dirs[&k].as_fd())
    }

    fn next_name(&mut self) -> String {
        self.counter += 1;
        format!("n{}", self.counter)
    }

    /// Where the parent of `path` is: a workstation directory (and whether it is
    /// being emptied), a new directory in staging, or nowhere.
    fn parent(&mut self, path: &Path) -> Result<Parent, ChangeError> {
        let q = path.parent().unwrap_or(Path::new("/"));
        let mut a = Some(q);
        while let Some(p) = a {
            if let Some(found) = self.planned.get(p) {
                if self.killed_above(p) {
                    return Ok(Parent::Drop(Dropped::NoParent));
                }
                let direct = p == q;
                return Ok(match found {
                    Planned::NewDir { stage, rel, sgid } if direct => {
                        Parent::Staged(*stage, rel.clone(), *sgid)
                    }
                    Planned::NewDir { .. } | Planned::Removed => Parent::Drop(Dropped::NoParent),
                    Planned::Dropped => Parent::Silent,
                    Planned::WsDir { replaced: true } if !direct => Parent::Drop(Dropped::NoParent),
                    Planned::WsDir { replaced } => {
                        let replaced = *replaced && direct;
                        match self.ws_dir(q)? {
                            Ok(d) => Parent::Ws(d, replaced),
                            Err(why) => Parent::Drop(why),
                        }
                    }
                });
            }
            a = p.parent();
        }
        Ok(match self.ws_dir(q)? {
            Ok(d) => Parent::Ws(d, false),
            Err(why) => Parent::Drop(why),
        })
    }

    /// Reads and throws away a dropped file's data.
    fn discard(
        &mut self,
        path: &Path,
        size: u64,
        data: Option<&mut dyn Read>,
    ) -> Result<(), ChangeError> {
        let n = match data {
            Some(r) => std::io::copy(&mut r.take(size), &mut std::io::sink())
                .map_err(io("read data of", path))?,
            None => 0,
        };
        if n != size {
            return Err(ChangeError::Invalid {
                path: path.to_path_buf(),
                why: "file data ended early",
            });
        }
        Ok(())
    }

    /// Stages one change; for [`Change::File`], `data` must yield exactly `size` bytes
    /// (read even when the change is dropped). Changes must come parents first.
    pub fn stage(
        &mut self,
        change: &Change,
        data: Option<&mut dyn Read>,
    ) -> Result<(), ChangeError> {
        let raw = change.path();
        let path = path_of(raw).to_path_buf();
        match components(&path) {
            Ok(c) if !c.is_empty() => {}
            _ => {
                return Err(ChangeError::Invalid {
                    path,
                    why: "not an absolute path below / with plain components",
                });
            }
        }
        self.changes += 1;
        if self.changes > self.limits.max_files {
            return Err(ChangeError::TooMany {
                limit: self.limits.max_files,
            });
        }
        let r = self.stage_one(&path, change, data);
        self.step(Step::Staged);
        r
    }

    fn stage_one(
        &mut self,
        path: &Path,
        change: &Change,
        data: Option<&mut dyn Read>,
    ) -> Result<(), ChangeError> {
        let size = match change {
            Change::File { size, .. } => *size,
            _ => 0,
        };
        // Remembers a dropped file or directory: a removal inside the scope of the
        // same object is then not applied (it moved out).
        let note_moved = |c: &mut Committer| match change {
            Change::File { mtime_ns, size, .. } => {
                c.moved_files.insert((*mtime_ns, *size));
            }
            Change::Dir { mtime_ns, .. } => {
                c.moved_dirs.insert(*mtime_ns);
            }
            _ => {}
        };
        let skip = |c: &mut Committer, why: Option<Dropped>, data: Option<&mut dyn Read>| {
            if let Some(why) = why {
                c.drop_change(path, why);
            }
            note_moved(c);
            if matches!(change, Change::Dir { .. }) {
                c.set_planned(path.to_path_buf(), Planned::Dropped);
            }
            c.discard(path, size, data)
        };
        // By name: the scope, hidden paths, pseudo file systems, staging names.
        let in_scope = self.scope.root_of(path).is_some();
        if !in_scope {
            if let Change::Dir { mode, .. } = change
                && self.scope.is_ancestor(path)
            {
                return self.ancestor_dir(path, *mode);
            }
            return skip(self, Some(Dropped::OutsideScope), data);
        }
        if self.scope.hidden.covers_path(path) {
            return skip(self, Some(Dropped::Hidden), data);
        }
        if PSEUDO_ROOTS.iter().any(|r| path.starts_with(r)) {
            return skip(self, Some(Dropped::Pseudo), data);
        }
        if path
            .iter()
            .any(|c| c.as_bytes().starts_with(STAGE_PREFIX.as_bytes()))
        {
            return skip(self, Some(Dropped::Reserved), data);
        }
        let is_root = self.scope.roots.iter().any(|r| r == path);
        if is_root && !matches!(change, Change::Dir { .. }) {
            return skip(self, Some(Dropped::ScopeRoot), data);
        }
        let name = path.file_name().unwrap_or_default().to_os_string();
        let parent = self.parent(path)?;
        let (d, replaced) = match parent {
            Parent::Silent => return skip(self, None, data),
            Parent::Drop(why) => return skip(self, Some(why), data),
            Parent::Staged(stage, rel, sgid) => {
                return self.stage_inside(path, change, data, stage, rel, &name, sgid);
            }
            Parent::Ws(d, replaced) => (d, replaced),
        };
        let q = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        if !d.writable && !matches!(change, Change::Dir { .. }) {
            return skip(self, Some(Dropped::NotWritable), data);
        }
        let now = lstat_at(d.fd.as_fd(), &name).map_err(io("stat", path))?;
        // What is there goes if its directory is emptied or it was removed.
        let freed = replaced || matches!(self.planned.get(path), Some(Planned::Removed));
        let now = if freed { None } else { now };
        if let Some(st) = &now
            && self.tree.hidden().covers_object((st.st_dev, st.st_ino))
        {
            return skip(self, Some(Dropped::Hidden), data);
        }
        match change {
            Change::Dir {
                mode,
                mtime_ns,
                replaces,
                ..
            } => {
                let parent_sgid = d.stat.st_mode & libc::S_ISGID != 0;
                match now {
                    Some(st) if is_dir(&st) => {
                        self.cancel_put(path);
                        // Once emptied, emptied: a second `Dir` of the path (a hostile
                        // change set) does not bring the old entries back.
                        let before = matches!(
                            self.planned.get(path),
                            Some(Planned::WsDir { replaced: true })
                        );
                        if *replaces && !before {
                            // Staged on the directory itself: it may be a writable
                            // root, whose parent is outside the scope.
                            match self.ws_dir(path)? {
                                Ok(me) => {
                                    self.stage_for(path, &me)?;
                                }
                                Err(why) => return skip(self, Some(why), None),
                            }
                            self.pending.push(Pending::Empty {
                                path: path.to_path_buf(),
                            });
                        }
                        self.set_planned(
                            path.to_path_buf(),
                            Planned::WsDir {
                                replaced: *replaces || before,
                            },
                        );
                        self.existing_dir_attr(path, &st, *mode, *mtime_ns);
                        self.report.applied.push(path.to_path_buf());
                        Ok(())
                    }
                    // A root that does not exist yet is made like any directory
                    // (staged beside it, in its parent); one that is not a
                    // directory stays.
                    Some(_) if is_root => skip(self, Some(Dropped::ScopeRoot), None),
                    Some(_) if !*replaces && !freed => {
                        // A file or link stands where the task made a directory.
                        self.report.conflicts.push((path.to_path_buf(), None));
                        self.set_planned(path.to_path_buf(), Planned::Dropped);
                        Ok(())
                    }
                    _ => {
                        if !d.writable {
                            return skip(self, Some(Dropped::NotWritable), None);
                        }
                        let stage = self.stage_for(&q, &d)?;
                        let from = self.next_name();
                        rustix::fs::mkdirat(
                            &self.stages[stage].fds.dir,
                            from.as_str(),
                            Mode::from_raw_mode(0o700),
                        )
                        .map_err(|e| io("create directory in staging for", path)(e.into()))?;
                        let final_mode = self.new_dir_mode(path, *mode, parent_sgid);
                        self.set_planned(
                            path.to_path_buf(),
                            Planned::NewDir {
                                stage,
                                rel: PathBuf::from(&from),
                                sgid: final_mode & libc::S_ISGID != 0,
                            },
                        );
                        self.push_put(Pending::Put {
                            stage,
                            from,
                            path: path.to_path_buf(),
                            base: None,
                            dir: Some((final_mode, *mtime_ns, *replaces || freed)),
                        });
                        Ok(())
                    }
                }
            }
            Change::File { .. } | Change::Symlink { .. } => {
                let stage = self.stage_for(&q, &d)?;
                let from = self.next_name();
                let fd = rustix::io::dup(&self.stages[stage].fds.dir)
                    .map_err(|e| io("dup", path)(e.into()))?;
                self.write_entry(fd.as_fd(), OsStr::new(&from), path, change, data)?;
                let base = match change {
                    Change::File { base, .. } | Change::Symlink { base, .. } => *base,
                    _ => Base::Unseen,
                };
                self.push_put(Pending::Put {
                    stage,
                    from,
                    path: path.to_path_buf(),
                    base: if freed { None } else { Some(base) },
                    dir: None,
                });
                // Nothing can be below a file.
                self.set_planned(path.to_path_buf(), Planned::Removed);
                Ok(())
            }
            Change::Remove { base, .. } => {
                self.cancel_put(path);
                if freed {
                    return Ok(());
                }
                let Some(st) = now else {
                    return Ok(());
                };
                if is_dir(&st) && self.holds_hidden(path) {
                    return skip(self, Some(Dropped::HoldsHidden), None);
                }
                if is_dir(&st) && st.st_dev != d.stat.st_dev {
                    return skip(self, Some(Dropped::MountPoint), None);
                }
                self.stage_for(&q, &d)?;
                self.pending.push(Pending::Remove {
                    path: path.to_path_buf(),
                    base: *base,
                });
                self.set_planned(path.to_path_buf(), Planned::Removed);
                Ok(())
            }
        }
    }

    /// Records what the change set makes of `path`, and when.
    fn set_planned(&mut self, path: PathBuf, p: Planned) {
        if matches!(p, Planned::Removed | Planned::WsDir { replaced: true }) {
            self.killed_at.insert(path.clone(), self.changes);
        }
        self.planned_seq.insert(path.clone(), self.changes);
        self.planned.insert(path, p);
    }

    /// Whether a directory above `p` was emptied or removed after `p`'s entry was
    /// made (a change set out of order): what `p`'s entry stands for is gone.
    fn killed_above(&self, p: &Path) -> bool {
        let since = self.planned_seq.get(p).copied().unwrap_or(0);
        p.ancestors()
            .skip(1)
            .any(|a| self.killed_at.get(a).is_some_and(|&k| k > since))
    }

    /// Cancels the pending `Put` of `path`, if any (a later change of it wins).
    fn cancel_put(&mut self, path: &Path) {
        if let Some(i) = self.puts.remove(path) {
            self.pending[i] = Pending::Cancelled;
        }
    }

    /// Queues a `Put`, in place of an earlier one of the same path.
    fn push_put(&mut self, put: Pending) {
        if let Pending::Put { path, .. } = &put {
            let path = path.clone();
            self.cancel_put(&path);
            self.puts.insert(path, self.pending.len());
        }
        self.pending.push(put);
    }

    fn holds_hidden(&self, path: &Path) -> bool {
        self.tree
            .hidden()
            .paths()
            .iter()
            .any(|h| h != path && h.starts_with(path))
    }

    /// A new directory's mode: permission bits, and setgid only where the kernel
    /// would have set it (its parent has it). Other special bits are stripped.
    fn new_dir_mode(&mut self, path: &Path, mode: u32, parent_sgid: bool) -> u32 {
        let mut m = mode & 0o777;
        if parent_sgid {
            m |= libc::S_ISGID;
        }
        if mode & 0o7000 & !m != 0 {
            self.report.stripped.push(path.to_path_buf());
        }
        m
    }

    /// A `Dir` change on an existing workstation directory: its mode (special bits
    /// kept as they are, new ones stripped) and time, set at the end.
    fn existing_dir_attr(&mut self, path: &Path, st: &Stat, mode: u32, mtime: i64) {
        let old = st.st_mode & 0o7777;
        let want = (mode & 0o777) | (old & 0o7000);
        if mode & 0o7000 & !old != 0 {
            self.report.stripped.push(path.to_path_buf());
        }
        let me = rustix::process::geteuid().as_raw();
        let mine = me == 0 || st.st_uid == me;
        let mut set_mode = (want != old).then_some(want);
        if set_mode.is_some() && !mine {
            self.drop_change(path, Dropped::NotOwner);
            set_mode = None;
        }
        let set_time = (mine && mtime_ns(st) != mtime).then_some(mtime);
        if set_mode.is_some() || set_time.is_some() {
            self.pending.push(Pending::Attr {
                path: path.to_path_buf(),
                mode: set_mode,
                mtime_ns: set_time,
            });
        }
    }

    /// A `Dir` change for a directory above a writable root: ignored if it changes
    /// nothing but its time, dropped otherwise.
    fn ancestor_dir(&mut self, path: &Path, mode: u32) -> Result<(), ChangeError> {
        let same = match self.tree.lstat(path) {
            Ok(st) => is_dir(&st) && st.st_mode & 0o7777 == mode & 0o7777,
            Err(_) => false,
        };
        if !same {
            self.drop_change(path, Dropped::OutsideScope);
        }
        Ok(())
    }

    /// A change inside a new directory of staging.
    #[allow(clippy::too_many_arguments)]
    fn stage_inside(
        &mut self,
        path: &Path,
        change: &Change,
        data: Option<&mut dyn Read>,
        stage: usize,
        rel: PathBuf,
        name: &OsStr,
        parent_sgid: bool,
    ) -> Result<(), ChangeError> {
        let dir = rustix::io::dup(self.staged_dir(stage, &rel)?)
            .map_err(|e| io("dup", path)(e.into()))?;
        match change {
            Change::Dir { mode, mtime_ns, .. } => {
                rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                    .map_err(|e| io("create directory in staging for", path)(e.into()))?;
                let m = self.new_dir_mode(path, *mode, parent_sgid);
                let r = rel.join(name);
                self.nested.push((stage, r.clone(), m, *mtime_ns));
                self.set_planned(
                    path.to_path_buf(),
                    Planned::NewDir {
                        stage,
                        rel: r,
                        sgid: m & libc::S_ISGID != 0,
                    },
                );
                Ok(())
            }
            Change::File { .. } | Change::Symlink { .. } => {
                self.write_entry(dir.as_fd(), name, path, change, data)?;
                self.set_planned(path.to_path_buf(), Planned::Removed);
                Ok(())
            }
            // Nothing of the workstation is inside a new directory.
            Change::Remove { .. } => Ok(()),
        }
    }

    /// Writes a file's data or makes a link as `dir/name` in staging.
    fn write_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        change: &Change,
        data: Option<&mut dyn Read>,
    ) -> Result<(), ChangeError> {
        match change {
            Change::Symlink { target, .. } => {
                rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name)
                    .map_err(|e| io("create symlink in staging for", path)(e.into()))?;
                Ok(())
            }
            Change::File {
                mode,
                mtime_ns,
                size,
                ..
            } => {
                self.bytes = self.bytes.saturating_add(*size);
                if self.bytes > self.limits.max_bytes {
                    return Err(ChangeError::TooBig {
                        limit: self.limits.max_bytes,
                    });
                }
                self.check_space(dir, path, *size)?;
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io("create in staging", path)(e.into()))?;
                let mut f = fs::File::from(fd);
                let mut n = 0u64;
                if let Some(r) = data {
                    if self.buf.is_empty() {
                        self.buf = vec![0u8; 1 << 20];
                    }
                    let mut r = r.take(*size);
                    loop {
                        let k = match r.read(&mut self.buf) {
                            Ok(0) => break,
                            Ok(k) => k,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(io("read data of", path)(e)),
                        };
                        std::io::Write::write_all(&mut f, &self.buf[..k])
                            .map_err(io("write in staging", path))?;
                        n += k as u64;
                    }
                }
                if n != *size {
                    return Err(ChangeError::Invalid {
                        path: path.to_path_buf(),
                        why: "file data ended early",
                    });
                }
                // Permission bits only: a regular file whatever the mode says.
                if mode & 0o7000 != 0 {
                    self.report.stripped.push(path.to_path_buf());
                }
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o777))
                    .map_err(|e| io("chmod in staging", path)(e.into()))?;
                rustix::fs::futimens(&f, &ops::mtime(*mtime_ns))
                    .map_err(|e| io("set time in staging", path)(e.into()))?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Fails if `size` more bytes would leave less than the reserve free.
    fn check_space(&self, dir: BorrowedFd<'_>, path: &Path, size: u64) -> Result<(), ChangeError> {
        let s = rustix::fs::fstatvfs(dir).map_err(|e| io("statvfs", path)(e.into()))?;
        let free = s.f_bavail.saturating_mul(s.f_frsize);
        let total = s.f_blocks.saturating_mul(s.f_frsize);
        let keep = self.limits.reserve_bytes.max(total / 100);
        if size.saturating_add(keep) > free {
            return Err(ChangeError::NoSpace {
                path: path.to_path_buf(),
                need: size,
                free,
                keep,
            });
        }
        Ok(())
    }

    /// Resolves the staged changes into the plan (base checks, conflicts, what a
    /// replaced directory held, removals of what moved out of the scope).
    fn plan(&mut self) -> Result<Vec<Op>, ChangeError> {
        let mut ops = Vec::new();
        let mut attrs = Vec::new();
        let mut trashed: HashSet<PathBuf> = HashSet::new();
        let mut trash_n = 0u64;
        let pending = std::mem::take(&mut self.pending);
        let mut dirs = Dirs::new();
        // What a conflict copy may not be named: paths the change set makes (and the
        // directories above them), other copies.
        let mut named: Option<HashSet<PathBuf>> = None;
        let mut copies: HashSet<PathBuf> = HashSet::new();
        for p in pending {
            match p {
                Pending::Remove { path, base } => {
                    // Something of the change set takes the path: not a move.
                    let later = self.puts.contains_key(&path)
                        || !matches!(self.planned.get(&path), Some(Planned::Removed));
                    let (q, name) = split(&path);
                    let d = dirs.get(&self.tree, q).map_err(io("open", q))?;
                    let Some(st) = lstat_at(d, name).map_err(io("stat", &path))? else {
                        continue;
                    };
                    if let Base::Seen(v) = &base {
                        let moved = if is_dir(&st) {
                            self.moved_dirs.contains(&v.mtime_ns)
                        } else {
                            self.moved_files.contains(&(v.mtime_ns, v.size))
                        };
                        if moved && !later {
                            self.drop_change(&path, Dropped::MovedOut);
                            continue;
                        }
                    }
                    if !(unchanged(Some(&st), &base) || matches!(base, Base::Unseen)) {
                        self.report.conflicts.push((path, None));
                        continue;
                    }
                    let stage = self.stage_of(d)?;
                    trash_n += 1;
                    ops.push(trash_op(stage, &path, &st, trash_n));
                    trashed.insert(path.clone());
                    self.report.applied.push(path);
                }
                Pending::Empty { path } => {
                    let (q, name) = split(&path);
                    let d = dirs.get(&self.tree, q).map_err(io("open", q))?;
                    let fd = rustix::fs::openat(
                        d,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io("list", &path)(e.into()))?;
                    let dst = rustix::fs::fstat(&fd).map_err(|e| io("stat", &path)(e.into()))?;
                    let stage = self.stage_of(fd.as_fd())?;
                    let skip = self.stage_name();
                    for e in
                        rustix::fs::Dir::read_from(&fd).map_err(|e| io("list", &path)(e.into()))?
                    {
                        let e = e.map_err(|e| io("list", &path)(e.into()))?;
                        let n = OsStr::from_bytes(e.file_name().to_bytes()).to_os_string();
                        if n == "." || n == ".." || n == skip {
                            continue;
                        }
                        let child = path.join(&n);
                        let Some(st) = lstat_at(fd.as_fd(), &n).map_err(io("stat", &child))? else {
                            continue;
                        };
                        let why = if self.tree.hidden().covers_path(&child)
                            || self.tree.hidden().covers_object((st.st_dev, st.st_ino))
                        {
                            Some(Dropped::Hidden)
                        } else if is_dir(&st) && self.holds_hidden(&child) {
                            Some(Dropped::HoldsHidden)
                        } else if is_dir(&st) && st.st_dev != dst.st_dev {
                            Some(Dropped::MountPoint)
                        } else {
                            None
                        };
                        if let Some(why) = why {
                            self.drop_change(&child, why);
                            continue;
                        }
                        trash_n += 1;
                        ops.push(trash_op(stage, &child, &st, trash_n));
                        trashed.insert(child);
                    }
                }
                Pending::Put {
                    stage,
                    from,
                    path,
                    base,
                    dir,
                } => {
                    let (q, name) = split(&path);
                    let d = dirs.get(&self.tree, q).map_err(io("open", q))?;
                    let dst = rustix::fs::fstat(d).map_err(|e| io("stat", q)(e.into()))?;
                    let now = if trashed.contains(&path) {
                        None
                    } else {
                        lstat_at(d, name).map_err(io("stat", &path))?
                    };
                    let mut target = path.clone();
                    let mut tnow = now;
                    match dir {
                        Some((_, _, replaces)) => match &now {
                            None => {}
                            Some(_) if !replaces => {
                                self.report.conflicts.push((path, None));
                                continue;
                            }
                            Some(_) => {}
                        },
                        None => {
                            if let Some(base) = base
                                && !unchanged(now.as_ref(), &base)
                            {
                                let named = named.get_or_insert_with(|| self.named_paths());
                                target = self.conflict_path(&path, named, &mut copies);
                                self.report
                                    .conflicts
                                    .push((path.clone(), Some(target.clone())));
                                tnow = if trashed.contains(&target) {
                                    None
                                } else {
                                    lstat_at(d, split(&target).1).map_err(io("stat", &target))?
                                };
                            }
                        }
                    }
                    // A directory (or, for a new directory, anything) in the way goes
                    // to the trash; a file or link is replaced by the rename itself.
                    if let Some(st) = &tnow
                        && (is_dir(st) || dir.is_some())
                    {
                        if let Some(why) = self.unremovable(&target, st, &dst) {
                            self.drop_change(&target, why);
                            continue;
                        }
                        trash_n += 1;
                        ops.push(trash_op(stage, &target, st, trash_n));
                        trashed.insert(target.clone());
                    }
                    let (tq, tname) = split(&target);
                    ops.push(Op::Put {
                        stage: stage as u32,
                        from: from.into_bytes(),
                        dir: bytes(tq),
                        name: tname.as_bytes().to_vec(),
                        is_dir: dir.is_some(),
                    });
                    if let Some((mode, mtime, _)) = dir {
                        ops.push(Op::Attr {
                            path: bytes(&target),
                            mode: Some(mode),
                            mtime_ns: Some(mtime),
                        });
                    }
                    self.report.applied.push(target);
                }
                Pending::Cancelled => {}
                Pending::Attr {
                    path,
                    mode,
                    mtime_ns,
                } => attrs.push(Op::Attr {
                    path: bytes(&path),
                    mode,
                    mtime_ns,
                }),
            }
        }
        // Directory modes and times last, deepest first.
        ops.extend(attrs.into_iter().rev());
        Ok(ops)
    }

    /// Every path the change set names, and every directory above one.
    fn named_paths(&self) -> HashSet<PathBuf> {
        let mut out = HashSet::new();
        for p in self.planned.keys() {
            for a in p.ancestors() {
                // Its ancestors are in already.
                if !out.insert(a.to_path_buf()) {
                    break;
                }
            }
        }
        out
    }

    /// Where the task's version of `path` goes when the workstation's is kept: beside
    /// it as `NAME.herd-conflict-<task>`, or with `-2`, `-3`... when the change set
    /// makes that path or something below it (`named`), or another copy took it.
    /// Chosen at plan time, it must not meet a `Put` of the same plan: that one would
    /// fail after the point of no return, or replace the copy or be replaced by it.
    fn conflict_path(
        &self,
        path: &Path,
        named: &HashSet<PathBuf>,
        copies: &mut HashSet<PathBuf>,
    ) -> PathBuf {
        let (q, name) = split(path);
        let mut n = 1u64;
        loop {
            let mut s = name.to_os_string();
            s.push(format!(".herd-conflict-{}", self.task));
            if n > 1 {
                s.push(format!("-{n}"));
            }
            let p = q.join(s);
            if !named.contains(&p) && copies.insert(p.clone()) {
                return p;
            }
            n += 1;
        }
    }

    /// Why an object at `path` (in directory `dst`) may not be replaced, if so.
    fn unremovable(&self, path: &Path, st: &Stat, dst: &Stat) -> Option<Dropped> {
        if self.tree.hidden().covers_object((st.st_dev, st.st_ino)) {
            Some(Dropped::Hidden)
        } else if is_dir(st) && self.holds_hidden(path) {
            Some(Dropped::HoldsHidden)
        } else if is_dir(st) && st.st_dev != dst.st_dev {
            Some(Dropped::MountPoint)
        } else {
            None
        }
    }

    fn stage_of(&self, fd: BorrowedFd<'_>) -> Result<usize, ChangeError> {
        let key = mount_key(fd).map_err(io("stat", &self.root))?;
        self.stage_by_key
            .get(&key)
            .copied()
            .ok_or_else(|| ChangeError::Invalid {
                path: self.root.clone(),
                why: "no staging directory on the file system of a change",
            })
    }

    /// Gives each directory made inside a new directory its mode and time, deepest
    /// first (a directory's time changes as entries are made in it).
    fn seal(&mut self) -> Result<(), ChangeError> {
        let nested = std::mem::take(&mut self.nested);
        for (stage, rel, mode, mtime) in nested.into_iter().rev() {
            let (parent, name) = (
                rel.parent().unwrap_or(Path::new("")),
                rel.file_name().unwrap_or_default(),
            );
            let at = self.stages[stage]
                .host
                .join(&self.stages[stage].name)
                .join(&rel);
            let pfd = if parent.as_os_str().is_empty() {
                rustix::io::dup(&self.stages[stage].fds.dir)
                    .map_err(|e| io("dup", &at)(e.into()))?
            } else {
                open_path(self.stages[stage].fds.dir.as_fd(), parent).map_err(io("open", &at))?
            };
            ops::set_mtime(pfd.as_fd(), name, mtime).map_err(io("set time in staging", &at))?;
            ops::chmod_dir(pfd.as_fd(), name, mode).map_err(io("chmod in staging", &at))?;
        }
        Ok(())
    }

    fn sync_all(&self) -> Result<(), ChangeError> {
        for s in &self.stages {
            syncfs(s.fds.dir.as_fd()).map_err(io("sync", &s.host))?;
        }
        Ok(())
    }

    /// Applies everything staged: seals staging, syncs it, writes the plan (the point
    /// of no return), applies it, syncs, and cleans up.
    pub fn commit(mut self) -> Result<Report, ChangeError> {
        self.staged_dirs.clear();
        self.ws_dirs.clear();
        self.seal()?;
        let ops = self.plan()?;
        if ops.is_empty() {
            self.cleanup();
            self.done = true;
            return Ok(std::mem::take(&mut self.report));
        }
        self.sync_all()?;
        self.step(Step::Sealed);
        let plan = Record::Plan(ops.clone());
        match self.log.as_mut() {
            Some(log) => log.append(&plan)?,
            // Only directory attributes change: no staging, the plan is the log.
            None => self.log = Some(Log::create(&self.log_dir, &self.task, &plan)?),
        }
        self.planned_written = true;
        self.step(Step::Planned);
        let stages: Vec<Option<StageFds>> = self
            .stages
            .iter()
            .map(|s| {
                Some(StageFds {
                    dir: rustix::io::dup(&s.fds.dir).ok()?,
                    trash: rustix::io::dup(&s.fds.trash).ok()?,
                })
            })
            .collect();
        let mut dirs = Dirs::new();
        let mut failed = Vec::new();
        for op in &ops {
            if let Err(e) = ops::apply(op, &self.tree, &stages, &mut dirs) {
                failed.push((op_path(op), e));
            }
            self.step(Step::Applied);
        }
        self.sync_all()?;
        if let Some(log) = self.log.as_mut() {
            log.append(&Record::Applied)?;
        }
        self.step(Step::Synced);
        self.cleanup();
        self.done = true;
        self.step(Step::Done);
        if let Some((path, source)) = failed.into_iter().next() {
            return Err(ChangeError::Io {
                op: "apply (the rest of the change set was applied)",
                path,
                source,
            });
        }
        Ok(std::mem::take(&mut self.report))
    }

    /// Throws everything staged away: nothing of the change set is applied.
    pub fn abort(mut self) {
        self.cleanup();
        self.done = true;
    }

    /// Removes the staging directories, then the log.
    fn cleanup(&mut self) {
        for s in self.stages.drain(..) {
            if let Err(e) = ops::remove_tree(s.host_fd.as_fd(), &s.name) {
                tracing::warn!(dir = %s.host.join(&s.name).display(), "cannot remove staging: {e}");
            }
        }
        if let Some(l) = self.log.take() {
            l.remove();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Before the plan, dropping rolls back; after it, the log stays for recover.
        if !self.done && !self.planned_written {
            self.cleanup();
        }
    }
}

/// `syncfs` of the file system holding an `O_PATH` directory descriptor.
fn syncfs(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(rustix::fs::syncfs(&fd)?)
}

fn split(p: &Path) -> (&Path, &OsStr) {
    (
        p.parent().unwrap_or(Path::new("/")),
        p.file_name().unwrap_or_default(),
    )
}

fn trash_op(stage: usize, path: &Path, st: &Stat, n: u64) -> Op {
    let (q, name) = split(path);
    Op::Trash {
        stage: stage as u32,
        dir: bytes(q),
        name: name.as_bytes().to_vec(),
        ino: st.st_ino,
        trash: n,
    }
}

fn op_path(op: &Op) -> PathBuf {
    match op {
        Op::Trash { dir, name, .. } | Op::Put { dir, name, .. } => {
            path_of(dir).join(OsStr::from_bytes(name))
        }
        Op::Attr { path, .. } => path_of(path).to_path_buf(),
    }
}

/// Finishes or rolls back every commit of `log_dir` whose committer died (a live
/// committer's log is locked and left alone): a log without a plan has its staging
/// removed (nothing was applied); a plan is replayed; then staging and the log are
/// removed. Returns how many logs were handled.
pub fn recover(root: &Path, log_dir: &Path) -> Result<usize, ChangeError> {
    let entries = match fs::read_dir(log_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("list", log_dir)(e)),
    };
    raise_fd_limit();
    let tree = Tree::open(root, Hidden::default()).map_err(io("open", root))?;
    let mut handled = 0;
    for e in entries {
        let e = e.map_err(io("list", log_dir))?;
        let name = e.file_name().into_vec();
        let path = e.path();
        if name.ends_with(b".log.tmp") {
            // Never renamed into place: no staging was made for it.
            if let Ok(Some((log, _))) = Log::take(&path) {
                log.remove();
            }
            continue;
        }
        if !name.ends_with(b".log") {
            continue;
        }
        let Some((log, records)) = Log::take(&path)? else {
            continue;
        };
        recover_one(&tree, &records);
        log.remove();
        handled += 1;
    }
    Ok(handled)
}

fn recover_one(tree: &Tree, records: &[Record]) {
    let mut stages: Vec<(PathBuf, OsString)> = Vec::new();
    let mut plan = None;
    let mut applied = false;
    for r in records {
        match r {
            Record::Stage { host, name } => stages.push((
                path_of(host).to_path_buf(),
                OsStr::from_bytes(name).to_os_string(),
            )),
            Record::Plan(ops) => plan = Some(ops),
            Record::Applied => applied = true,
        }
    }
    let mut hosts = Vec::new();
    for (host, name) in &stages {
        let fd = components(host)
            .ok()
            .and_then(|c| tree.walk(&c, c.len()).ok())
            .map(|r| r.fd);
        hosts.push(fd.map(|fd| (fd, name.clone())));
    }
    if let (Some(ops), false) = (plan, applied) {
        let fds: Vec<Option<StageFds>> = hosts
            .iter()
            .map(|h| {
                let (fd, name) = h.as_ref()?;
                let dir = open_path(fd.as_fd(), name).ok()?;
                let trash = open_path(dir.as_fd(), "t").ok()?;
                Some(StageFds { dir, trash })
            })
            .collect();
        let mut dirs = Dirs::new();
        for op in ops {
            if let Err(e) = ops::apply(op, tree, &fds, &mut dirs) {
                tracing::warn!(path = %op_path(op).display(), "recovering a commit: {e}");
            }
        }
        for s in fds.iter().flatten() {
            let _ = syncfs(s.dir.as_fd());
        }
    }
    for (h, (host, _)) in hosts.iter().zip(&stages) {
        if let Some((fd, name)) = h
            && let Err(e) = ops::remove_tree(fd.as_fd(), name)
        {
            tracing::warn!(dir = %host.join(name).display(), "cannot remove staging: {e}");
        }
    }
}
