//! The FUSE view: a read-only filesystem whose files come from a [`Source`].
//!
//! Everything a view learns is valid for the task using it: attributes, directory
//! listings and absent names are kept in memory and handed to the kernel with a long
//! TTL, and a listing stores the attributes of every entry it names, so walking a
//! directory after listing it costs no further question. A helper keeps a mounted view
//! for the next task of the same workstation and user (the kernel's page and entry
//! caches then stay warm); before that task starts, [`ViewCtl::changed`] drops what the
//! workstation changed in the meantime. The
//! mount uses `default_permissions` (the kernel checks modes against the task's uid)
//! and `allow_other` (the task does not run as the mounting user).
//!
//! Inode numbers are the view's own (1 is `/`); the workstation's inode number is
//! kept in the attributes as part of a file's version, not shown to the task.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use herd_proto::fs::{Attr, Base, FileKind, Version};

use crate::source::Source;

/// How long the kernel may cache what the view answers: a task sees the workstation
/// as it was when the task started, and [`ViewCtl::changed`] drops what changed
/// before the next task.
const TTL: Duration = Duration::from_secs(3600);

struct Node {
    path: PathBuf,
    attr: Attr,
}

/// A directory's entries: (name, inode, kind).
type Listing = Vec<(Vec<u8>, u64, FileKind)>;

#[derive(Default)]
struct Table {
    nodes: HashMap<u64, Node>,
    /// Paths looked up and found missing.
    absent: HashSet<PathBuf>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
    /// Directory listings, by inode.
    listings: HashMap<u64, Arc<Listing>>,
}

impl Table {
    fn intern(&mut self, path: PathBuf, attr: Attr) -> u64 {
        if let Some(&ino) = self.by_path.get(&path) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.attr = attr;
            }
            return ino;
        }
        self.next += 1;
        let ino = self.next;
        self.by_path.insert(path.clone(), ino);
        self.nodes.insert(ino, Node { path, attr });
        ino
    }
}

/// How a view presents owners: the workstation's uid or gid `id` as `base + id`, and
/// an id at or past `count` as `base + 65534` (the overflow id, "nobody"). A root
/// helper's task runs in a user namespace mapping its ids `0..count` to
/// `base..base + count` (herd-sandbox's `TASK_ID_BASE`), so the task sees the
/// workstation's owners while no file of the view belongs to a user of the helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdShift {
    /// Where id 0 lands.
    pub base: u32,
    /// How many ids are shifted.
    pub count: u32,
}

impl IdShift {
    /// Owners as the workstation has them.
    pub const NONE: IdShift = IdShift {
        base: 0,
        count: u32::MAX,
    };

    /// The id the view shows for the workstation's `id`.
    pub fn present(self, id: u32) -> u32 {
        let id = if id < self.count { id } else { 65534 };
        self.base.saturating_add(id)
    }
}

/// A read-only FUSE filesystem over a [`Source`].
pub struct View<S: Source> {
    src: Arc<S>,
    table: Arc<Mutex<Table>>,
    questions: Arc<AtomicU64>,
    ids: IdShift,
}

impl<S: Source> View<S> {
    /// A view of `src`; fails if `/` cannot be read.
    pub fn new(src: S) -> Result<Self, Errno> {
        let root = src.stat(Path::new("/")).map_err(Errno::from_i32)?;
        let mut table = Table {
            next: 1,
            ..Default::default()
        };
        table.by_path.insert(PathBuf::from("/"), 1);
        table.nodes.insert(
            1,
            Node {
                path: PathBuf::from("/"),
                attr: root,
            },
        );
        Ok(View {
            src: Arc::new(src),
            table: Arc::new(Mutex::new(table)),
            questions: Arc::new(AtomicU64::new(1)),
            ids: IdShift::NONE,
        })
    }

    /// Presents owners shifted by `ids` (see [`IdShift`]).
    pub fn with_ids(mut self, ids: IdShift) -> Self {
        self.ids = ids;
        self
    }

    /// A counter of the questions this view asks its source (one was asked to make
    /// it); it keeps counting after the view is mounted.
    pub fn questions(&self) -> Arc<AtomicU64> {
        self.questions.clone()
    }

    /// What the view saw, for the commit's conflict checks; keeps working after the
    /// view is mounted and unmounted.
    pub fn seen(&self) -> Seen {
        Seen {
            table: self.table.clone(),
        }
    }

    fn ask(&self) {
        self.questions.fetch_add(1, Ordering::Relaxed);
    }

    fn node(&self, ino: INodeNo) -> Option<(PathBuf, Attr)> {
        let t = self.table.lock().ok()?;
        t.nodes.get(&ino.0).map(|n| (n.path.clone(), n.attr))
    }

    /// The entries of directory `ino`, asked of the source the first time.
    fn listing(&self, ino: INodeNo) -> Result<Arc<Listing>, Errno> {
        let Some((path, _)) = self.node(ino) else {
            return Err(Errno::ENOENT);
        };
        if let Some(l) = self
            .table
            .lock()
            .ok()
            .and_then(|t| t.listings.get(&ino.0).cloned())
        {
            return Ok(l);
        }
        self.ask();
        let entries = self.src.list(&path).map_err(Errno::from_i32)?;
        let mut t = self.table.lock().map_err(|_| Errno::EIO)?;
        let listing: Listing = entries
            .into_iter()
            .map(|e| {
                let child = path.join(OsStr::from_bytes(&e.name));
                let ino = t.intern(child, e.attr);
                (e.name, ino, e.attr.kind)
            })
            .collect();
        let listing = Arc::new(listing);
        t.listings.insert(ino.0, listing.clone());
        Ok(listing)
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

fn file_attr(ino: u64, a: &Attr, ids: IdShift) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: kind(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: ids.present(a.uid),
        gid: ids.present(a.gid),
        rdev: a.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// Answers a lookup with "nothing there" that the kernel may cache (a negative entry:
/// node id 0 with a timeout), so a task probing a missing name again (a search path, an
/// import) costs no question; [`ViewCtl::changed`] drops it when the name appears.
fn reply_absent(reply: ReplyEntry) {
    let none = Attr {
        ino: 0,
        kind: FileKind::File,
        mode: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 0,
        atime_ns: 0,
        mtime_ns: 0,
        ctime_ns: 0,
    };
    reply.entry(&TTL, &file_attr(0, &none, IdShift::NONE), Generation(0));
}

impl<S: Source> Filesystem for View<S> {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some((dir, _)) = self.node(parent) else {
            return reply.error(Errno::ENOENT);
        };
        let path = dir.join(name);
        // Known from a listing or an earlier lookup: no question.
        let known = self.table.lock().ok().and_then(|t| {
            let ino = *t.by_path.get(&path)?;
            Some((ino, t.nodes.get(&ino)?.attr))
        });
        if let Some((ino, attr)) = known {
            return reply.entry(&TTL, &file_attr(ino, &attr, self.ids), Generation(0));
        }
        // The parent was listed and the name is not in it: it does not exist.
        let listed = self
            .table
            .lock()
            .ok()
            .is_some_and(|t| t.listings.contains_key(&parent.0));
        if listed {
            if let Ok(mut t) = self.table.lock() {
                t.absent.insert(path);
            }
            return reply_absent(reply);
        }
        self.ask();
        match self.src.stat(&path) {
            Ok(attr) => {
                let ino = match self.table.lock() {
                    Ok(mut t) => t.intern(path, attr),
                    Err(_) => return reply.error(Errno::EIO),
                };
                reply.entry(&TTL, &file_attr(ino, &attr, self.ids), Generation(0));
            }
            Err(libc::ENOENT) => {
                if let Ok(mut t) = self.table.lock() {
                    t.absent.insert(path);
                }
                reply_absent(reply)
            }
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some((_, attr)) => reply.attr(&TTL, &file_attr(ino.0, &attr, self.ids)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let Some((path, _)) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        self.ask();
        match self.src.readlink(&path) {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Symlink targets stay in the kernel's cache like file pages do (dropped with
        // the inode by `ViewCtl::changed`). An older kernel without it just asks.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_CACHE_SYMLINKS);
        Ok(())
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // "Not implemented" tells the kernel to stop sending opens and releases: files
        // then open without a question, keeping their cached pages. The mount is
        // read-only, so the kernel refuses writes before they get here.
        reply.error(Errno::ENOSYS)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        // Nothing to flush on a read-only view; "not implemented" stops the kernel
        // sending flushes on close (quietly: fuser's default logs a warning).
        reply.error(Errno::ENOSYS)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((path, _)) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        self.ask();
        match self.src.read(&path, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No file flags or other ioctls on a read-only view.
        reply.error(Errno::ENOTTY);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // The view carries no extended attributes (overlayfs and exec ask for theirs):
        // "not implemented" makes the kernel answer "not supported" without asking.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // As with `open`: "not implemented" stops opendirs and releasedirs, and the
        // kernel then keeps each directory's entries in its cache (FOPEN_CACHE_DIR),
        // so listing a directory again costs no request; `ViewCtl::changed` drops a
        // changed directory's cached entries with its pages. The listing is fetched
        // by the first `readdir`.
        reply.error(Errno::ENOSYS)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.listing(ino) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let parent = match self.table.lock() {
            Ok(t) => t
                .nodes
                .get(&ino.0)
                .and_then(|n| n.path.parent().map(|p| p.to_path_buf()))
                .and_then(|p| t.by_path.get(&p).copied())
                .unwrap_or(1),
            Err(_) => return reply.error(Errno::EIO),
        };
        let dots = [
            (b".".to_vec(), ino.0, FileKind::Dir),
            (b"..".to_vec(), parent, FileKind::Dir),
        ];
        for (i, (name, child, k)) in dots
            .iter()
            .chain(listing.iter())
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(
                INodeNo(*child),
                (i + 1) as u64,
                kind(*k),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }
}

/// What a view saw of the workstation's files (see [`View::seen`]).
#[derive(Clone)]
pub struct Seen {
    table: Arc<Mutex<Table>>,
}

impl Seen {
    /// The [`Base`] of `path`: the version the task saw, absent if it found nothing
    /// there (or the parent's listing lacked it), unseen otherwise.
    pub fn base(&self, path: &Path) -> Base {
        let Ok(t) = self.table.lock() else {
            return Base::Unseen;
        };
        if let Some(n) = t.by_path.get(path).and_then(|i| t.nodes.get(i)) {
            return Base::Seen(Version::from(&n.attr));
        }
        if t.absent.contains(path) {
            return Base::Absent;
        }
        let parent_listed = path
            .parent()
            .and_then(|p| t.by_path.get(p))
            .is_some_and(|i| t.listings.contains_key(i));
        if parent_listed {
            Base::Absent
        } else {
            Base::Unseen
        }
    }
}

/// Tells a mounted view, between two tasks, what changed on the workstation: the view's
/// table and the kernel's caches (entries, attributes, pages) then agree with the
/// workstation as it is now. Use it only while no task uses the view: the kernel's
/// invalidation waits for the locks a running lookup holds.
#[derive(Clone)]
pub struct ViewCtl {
    table: Arc<Mutex<Table>>,
    notifier: fuser::Notifier,
}

enum Inval {
    Entry(u64, Vec<u8>),
    Inode(u64),
}

impl ViewCtl {
    /// Control over the view whose table `seen` shows, mounted as `mounted`.
    pub fn new(seen: &Seen, mounted: &Mounted) -> Option<ViewCtl> {
        Some(ViewCtl {
            table: seen.table.clone(),
            notifier: mounted.session.as_ref()?.notifier(),
        })
    }

    /// How many paths the view knows (its memory grows with it).
    pub fn size(&self) -> usize {
        self.table
            .lock()
            .map(|t| t.by_path.len() + t.absent.len())
            .unwrap_or(usize::MAX)
    }

    /// `path` on the workstation is now `now` (`None`: nothing there). Its cached
    /// attributes and contents are dropped; if it appeared, vanished or changed kind,
    /// so is its entry (and everything the view knew below it); a directory's listing
    /// and the names it said were absent are forgotten.
    pub fn changed(&self, path: &Path, now: Option<Attr>) {
        let mut inval = Vec::new();
        if let Ok(mut t) = self.table.lock() {
            let parent = path.parent().and_then(|p| t.by_path.get(p).copied());
            let name = path.file_name().map(|n| n.as_bytes().to_vec());
            let entry = |inval: &mut Vec<Inval>| {
                if let (Some(p), Some(n)) = (parent, &name) {
                    inval.push(Inval::Entry(p, n.clone()));
                }
            };
            match t.by_path.get(path).copied() {
                Some(ino) => {
                    let old = t.nodes.get(&ino).map(|n| n.attr.kind);
                    inval.push(Inval::Inode(ino));
                    t.listings.remove(&ino);
                    match now {
                        Some(a) if Some(a.kind) == old => {
                            if let Some(n) = t.nodes.get_mut(&ino) {
                                n.attr = a;
                            }
                        }
                        _ => {
                            entry(&mut inval);
                            t.by_path.retain(|p, _| !p.starts_with(path));
                            t.absent.retain(|p| !p.starts_with(path));
                        }
                    }
                }
                None => entry(&mut inval),
            }
            t.absent.remove(path);
            // Names found absent because this directory's listing lacked them.
            let gone: Vec<PathBuf> = t
                .absent
                .iter()
                .filter(|p| p.parent() == Some(path))
                .cloned()
                .collect();
            if let Some(&ino) = t.by_path.get(path) {
                for p in &gone {
                    if let Some(n) = p.file_name() {
                        inval.push(Inval::Entry(ino, n.as_bytes().to_vec()));
                    }
                }
            }
            for p in gone {
                t.absent.remove(&p);
            }
        }
        // Errors mean the kernel holds nothing of that entry or inode: nothing to drop.
        for i in inval {
            let _ = match i {
                Inval::Entry(parent, name) => self
                    .notifier
                    .inval_entry(INodeNo(parent), OsStr::from_bytes(&name)),
                Inval::Inode(ino) => self.notifier.inval_inode(INodeNo(ino), 0, 0),
            };
        }
    }
}

/// A mounted view; unmounted when dropped.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
}

impl Mounted {
    /// Where the view is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the serving threads.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

/// Mounts `view` read-only at `mountpoint` (which must exist). Needs the right to
/// mount FUSE (root, or `/dev/fuse` access in a user namespace).
pub fn mount<S: Source>(view: View<S>, mountpoint: &Path) -> std::io::Result<Mounted> {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("herd".into()),
        MountOption::Subtype("herd".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(4);
    let session = fuser::spawn_mount(view, mountpoint, &cfg)?;
    Ok(Mounted {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::IdShift;

    #[test]
    fn ids_shift_into_the_task_range_and_overflow_past_it() {
        let shift = IdShift {
            base: 1 << 31,
            count: (1 << 31) - 1,
        };
        assert_eq!(shift.present(0), 1 << 31);
        assert_eq!(shift.present(1000), (1 << 31) + 1000);
        assert_eq!(shift.present((1 << 31) - 2), u32::MAX - 1);
        assert_eq!(shift.present((1 << 31) - 1), (1 << 31) + 65534);
        assert_eq!(shift.present(u32::MAX), (1 << 31) + 65534);
        assert_eq!(IdShift::NONE.present(1000), 1000);
        assert_eq!(IdShift::NONE.present(u32::MAX), 65534);
    }
}
