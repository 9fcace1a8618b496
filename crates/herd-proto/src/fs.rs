//! File-service contracts: how a helper asks the workstation about its files.
//!
//! Paths are absolute paths on the workstation. Attributes travel with every
//! answer that names a file (lookups, directory listings), so a listing followed by
//! a walk of its entries costs one round trip, not one per entry. Errors are plain
//! `errno` values, because that is what the task on the helper will see.

use serde::{Deserialize, Serialize};

/// The kind of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Unix socket.
    Socket,
}

/// A file's attributes as the workstation's `lstat` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// Kind.
    pub kind: FileKind,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links.
    pub nlink: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Access time, nanoseconds since the epoch.
    pub atime_ns: i64,
    /// Inode number on the workstation (part of a file's version).
    pub ino: u64,
    /// Device number for device files.
    pub rdev: u64,
}

impl Attr {
    /// The version of a file's contents as far as herd can tell without reading it:
    /// any write, truncate or replacement changes one of these.
    pub fn version(&self) -> (u64, i64, i64, u64) {
        (self.ino, self.mtime_ns, self.ctime_ns, self.size)
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// File name (bytes: names need not be UTF-8).
    pub name: Vec<u8>,
    /// Its attributes.
    pub attr: Attr,
}

/// A cached fact to validate: path, cached version (`None`: was absent) and, for a
/// directory whose listing is cached, the listing's digest.
pub type CachedFact = (Vec<u8>, Option<Version>, Option<[u8; 32]>);

/// A request to the workstation's file service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsRequest {
    /// Attributes of one path (not following a final symlink).
    Stat {
        /// The path.
        path: Vec<u8>,
    },
    /// A directory's entries with their attributes.
    List {
        /// The directory.
        path: Vec<u8>,
    },
    /// Bytes of a regular file.
    Read {
        /// The file.
        path: Vec<u8>,
        /// Where to start.
        offset: u64,
        /// How many bytes at most.
        len: u32,
    },
    /// A symlink's target.
    ReadLink {
        /// The link.
        path: Vec<u8>,
    },
    /// An executable about to be read: send it with its dynamic loader and shared
    /// libraries (and the directories and symlinks on their paths) in one answer.
    Prefetch {
        /// The executable.
        path: Vec<u8>,
    },
    /// Which of these cached facts are stale? `None` means "was absent". One round
    /// trip validates a task's whole warm working set.
    Validate {
        /// Paths, the versions the helper has cached, and for a directory whose
        /// listing is cached, the digest of that listing (see `herd_fs::listing_digest`).
        items: Vec<CachedFact>,
    },
}

/// The file service's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsResponse {
    /// Answer to `Stat`.
    Attr(Attr),
    /// Answer to `List`.
    Entries(Vec<DirEntry>),
    /// Answer to `Read` (shorter than asked at end of file).
    Data(Vec<u8>),
    /// Answer to `ReadLink`.
    Target(Vec<u8>),
    /// Answer to `Prefetch`: the executable first, then its closure.
    Bundle(Vec<Prefetched>),
    /// Answer to `Validate`: the indexes of the stale items with what is there now
    /// (`None`: nothing).
    Stale(Vec<(u32, Option<Attr>)>),
    /// The operation failed with this `errno`.
    Errno(i32),
}

/// The version of a file as a task saw it: if any of these differ now, the file
/// changed on the workstation after the task read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Inode number.
    pub ino: u64,
    /// Modification time (ns).
    pub mtime_ns: i64,
    /// Status change time (ns).
    pub ctime_ns: i64,
    /// Size.
    pub size: u64,
}

impl From<&Attr> for Version {
    fn from(a: &Attr) -> Self {
        Version {
            ino: a.ino,
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
            size: a.size,
        }
    }
}

/// What the task saw at a path before changing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Base {
    /// The task never looked at this path: it is new as far as the task knows.
    Unseen,
    /// The task found nothing there.
    Absent,
    /// The task saw this version.
    Seen(Version),
}

/// One change a task made, in the order they must be applied (parents first).
/// Paths are absolute workstation paths as bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A directory exists (created or kept). `replaces`: the task deleted the old
    /// directory and made a new one, so entries it does not list are removed.
    Dir {
        /// Path.
        path: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Modification time (ns).
        mtime_ns: i64,
        /// Whether it replaces the old directory's contents.
        replaces: bool,
    },
    /// A regular file with new contents; `size` bytes of data follow.
    File {
        /// Path.
        path: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Modification time (ns).
        mtime_ns: i64,
        /// Bytes of content that follow.
        size: u64,
        /// What the task saw there first.
        base: Base,
    },
    /// A symbolic link.
    Symlink {
        /// Path.
        path: Vec<u8>,
        /// Target.
        target: Vec<u8>,
        /// What the task saw there first.
        base: Base,
    },
    /// A deletion (file, link or whole directory).
    Remove {
        /// Path.
        path: Vec<u8>,
        /// What the task saw there first.
        base: Base,
    },
}

impl Change {
    /// The path the change is about.
    pub fn path(&self) -> &[u8] {
        match self {
            Change::Dir { path, .. }
            | Change::File { path, .. }
            | Change::Symlink { path, .. }
            | Change::Remove { path, .. } => path,
        }
    }
}

/// One file of a prefetched closure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefetched {
    /// Path.
    pub path: Vec<u8>,
    /// Attributes (`None`: nothing there).
    pub attr: Option<Attr>,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// A regular file's whole contents (absent when over the answer's size budget).
    pub data: Option<Vec<u8>>,
}

/// A question to the workstation's per-user file service (agent to child process).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsCall {
    /// Matches the answer to the question.
    pub id: u64,
    /// The question.
    pub req: FsRequest,
}

/// The per-user file service's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsReply {
    /// The question's id.
    pub id: u64,
    /// The answer.
    pub resp: FsResponse,
}

/// What the agent feeds a commit process, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitFrame {
    /// One change; a file's data follows in `Data` frames.
    Change(Change),
    /// A piece of the current file's data.
    Data(Vec<u8>),
    /// Everything was sent: commit.
    Done,
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitReport {
    /// How many paths were written, created or removed.
    pub applied: u64,
    /// Conflicts: the workstation path kept, and where the task's version was saved.
    pub conflicts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Why the commit failed (then nothing was committed).
    pub error: Option<String>,
    /// Changes not applied (outside the write scope, hidden, through a symbolic
    /// link, ...): the path and why, as text.
    pub dropped: Vec<(Vec<u8>, String)>,
    /// Paths whose setuid, setgid or sticky bits were dropped.
    pub stripped: Vec<Vec<u8>>,
}
