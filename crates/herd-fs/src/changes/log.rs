//! The commit's intent log: `<log_dir>/<task>.log`, a header and checksummed records.
//!
//! Each record is a 4-byte little-endian length, the first 8 bytes of the payload's
//! BLAKE3 hash, and the payload (postcard of a [`Record`]). A record cut short or with
//! a wrong checksum (the tail written when the machine died) ends the log: it was
//! never fsynced, so nothing after it was acted on. A live committer holds an
//! exclusive `flock` on its log; [`super::recover`] leaves locked logs alone.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ChangeError, io};

const MAGIC: &[u8; 8] = b"HERDLOG1";

/// One operation of a commit's plan. Each is idempotent: replayed after a crash at
/// any point, the plan converges on the same tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Op {
    /// Move `dir/name` (if it is still the object `ino`) into staging `stage`'s trash
    /// as `trash`; done iff that trash name exists.
    Trash {
        stage: u32,
        dir: Vec<u8>,
        name: Vec<u8>,
        ino: u64,
        trash: u64,
    },
    /// Rename staging `stage`'s entry `from` to `dir/name`; done iff `from` is gone.
    /// A directory is put with `RENAME_NOREPLACE`, a file or link replaces.
    Put {
        stage: u32,
        from: Vec<u8>,
        dir: Vec<u8>,
        name: Vec<u8>,
        is_dir: bool,
    },
    /// Set a directory's permission bits and modification time.
    Attr {
        path: Vec<u8>,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    },
}

/// A record of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Record {
    /// A staging directory `host/name` is (about to be) made.
    Stage { host: Vec<u8>, name: Vec<u8> },
    /// Staging is complete and durable: the plan, the point of no return.
    Plan(Vec<Op>),
    /// The plan was applied and synced: only cleanup is left.
    Applied,
}

/// An open, locked log.
pub(super) struct Log {
    pub(super) path: PathBuf,
    file: File,
}

fn encode(r: &Record) -> Vec<u8> {
    let payload = postcard::to_allocvec(r).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 12);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&blake3::hash(&payload).as_bytes()[..8]);
    out.extend_from_slice(&payload);
    out
}

fn lock(file: &File) -> std::io::Result<bool> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), ChangeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

impl Log {
    /// Creates `<dir>/<task>.log` holding `first`, durable and locked. It is written
    /// under a temporary name and renamed into place, so [`super::recover`] never
    /// sees a log that is not locked by a live committer or complete up to a record.
    pub(super) fn create(dir: &Path, task: &str, first: &Record) -> Result<Log, ChangeError> {
        std::fs::create_dir_all(dir).map_err(io("create the commit log directory", dir))?;
        let path = dir.join(format!("{task}.log"));
        let tmp = dir.join(format!("{task}.log.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create commit log", &tmp))?;
        lock(&file).map_err(io("lock commit log", &tmp))?;
        let mut bytes = MAGIC.to_vec();
        bytes.extend(encode(first));
        file.write_all(&bytes)
            .and_then(|()| file.sync_data())
            .map_err(io("write commit log", &tmp))?;
        if path.exists() {
            let _ = std::fs::remove_file(&tmp);
            return Err(ChangeError::Invalid {
                path,
                why: "a commit log for this task exists already",
            });
        }
        std::fs::rename(&tmp, &path).map_err(io("rename commit log", &path))?;
        sync_dir(dir)?;
        Ok(Log { path, file })
    }

    /// Appends a record and makes it durable.
    pub(super) fn append(&mut self, r: &Record) -> Result<(), ChangeError> {
        self.file
            .write_all(&encode(r))
            .and_then(|()| self.file.sync_data())
            .map_err(io("write commit log", &self.path))
    }

    /// Removes the log (its work is done or undone).
    pub(super) fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Opens an existing log if no live committer holds it: `None` when it is
    /// locked (or already gone).
    pub(super) fn take(path: &Path) -> Result<Option<(Log, Vec<Record>)>, ChangeError> {
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open commit log", path)(e)),
        };
        if !lock(&file).map_err(io("lock commit log", path))? {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io("read commit log", path))?;
        if !bytes.starts_with(MAGIC) {
            // Cut before its header was durable: it never named anything.
            return Ok(Some((
                Log {
                    path: path.to_path_buf(),
                    file,
                },
                Vec::new(),
            )));
        }
        let mut records = Vec::new();
        let mut at = MAGIC.len();
        while bytes.len() >= at + 12 {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
            let Some(payload) = bytes.get(at + 12..at + 12 + len) else {
                break;
            };
            if blake3::hash(payload).as_bytes()[..8] != bytes[at + 4..at + 12] {
                break;
            }
            match postcard::from_bytes::<Record>(payload) {
                Ok(r) => records.push(r),
                Err(_) => break,
            }
            at += 12 + len;
        }
        Ok(Some((
            Log {
                path: path.to_path_buf(),
                file,
            },
            records,
        )))
    }
}
