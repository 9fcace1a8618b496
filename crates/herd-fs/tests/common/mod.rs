//! Helpers shared by the commit tests: workstation trees, snapshots, change sets.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use herd_fs::beneath::Hidden;
use herd_fs::changes::{Committer, Limits, Report, Scope};
use herd_proto::fs::{Base, Change, Version};

/// What a snapshot records of one path (never following a link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory and its permission bits (times change with staging: not kept).
    Dir(u32),
    /// A file: mode, contents, modification time (s).
    File(u32, Vec<u8>, i64),
    /// A link and its target.
    Link(Vec<u8>),
}

/// Every path below `dir` (relative), by `lstat`.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let mode = md.mode() & 0o7777;
            if md.is_symlink() {
                let t = fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes();
                out.insert(rel, Entry::Link(t));
            } else if md.is_dir() {
                out.insert(rel, Entry::Dir(mode));
                walk(base, &p, out);
            } else {
                out.insert(rel, Entry::File(mode, fs::read(&p).unwrap(), md.mtime()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Whether a snapshot shows any staging directory or temporary log.
pub fn leftovers(snap: &BTreeMap<PathBuf, Entry>) -> Vec<PathBuf> {
    snap.keys()
        .filter(|k| k.to_string_lossy().contains(".herd-stage"))
        .cloned()
        .collect()
}

/// A committer under `root` writing below `writes`, hiding `hidden`, logging in `logs`.
pub fn committer(
    root: &Path,
    task: &str,
    writes: &[&str],
    hidden: &[&str],
    logs: &Path,
) -> Committer {
    committer_with(root, task, writes, hidden, logs, Limits::default())
}

/// [`committer`] with limits.
pub fn committer_with(
    root: &Path,
    task: &str,
    writes: &[&str],
    hidden: &[&str],
    logs: &Path,
    limits: Limits,
) -> Committer {
    let hidden = Hidden::new(root, hidden.iter().map(PathBuf::from));
    let writes: Vec<PathBuf> = writes.iter().map(PathBuf::from).collect();
    let scope = Scope::new(root, &writes, hidden).unwrap();
    Committer::new(root, task, scope, limits, logs).unwrap()
}

/// One change with its data.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The change.
    pub change: Change,
    /// A file's data.
    pub data: Vec<u8>,
}

/// A new file.
pub fn file(path: &str, data: &[u8]) -> Staged {
    file_mode(path, data, 0o644)
}

/// A new file with a mode.
pub fn file_mode(path: &str, data: &[u8], mode: u32) -> Staged {
    Staged {
        change: Change::File {
            path: path.as_bytes().to_vec(),
            mode,
            mtime_ns: 1_600_000_000_000_000_000,
            size: data.len() as u64,
            base: Base::Unseen,
        },
        data: data.to_vec(),
    }
}

/// A directory.
pub fn dir(path: &str, mode: u32, replaces: bool) -> Staged {
    Staged {
        change: Change::Dir {
            path: path.as_bytes().to_vec(),
            mode,
            mtime_ns: 1_600_000_000_000_000_000,
            replaces,
        },
        data: vec![],
    }
}

/// A symlink.
pub fn link(path: &str, target: &str) -> Staged {
    Staged {
        change: Change::Symlink {
            path: path.as_bytes().to_vec(),
            target: target.as_bytes().to_vec(),
            base: Base::Unseen,
        },
        data: vec![],
    }
}

/// A removal.
pub fn remove(path: &str) -> Staged {
    Staged {
        change: Change::Remove {
            path: path.as_bytes().to_vec(),
            base: Base::Unseen,
        },
        data: vec![],
    }
}

/// The version the workstation has at `root/path` now.
pub fn seen(root: &Path, path: &str) -> Base {
    let md = fs::symlink_metadata(root.join(path.trim_start_matches('/'))).unwrap();
    Base::Seen(Version {
        ino: md.ino(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        size: md.size(),
    })
}

/// Stages every change (data from `data`) and commits.
pub fn apply(mut c: Committer, changes: &[Staged]) -> Report {
    for s in changes {
        let mut d = &s.data[..];
        let r: Option<&mut dyn std::io::Read> = match s.change {
            Change::File { .. } => Some(&mut d),
            _ => None,
        };
        c.stage(&s.change, r).unwrap();
    }
    c.commit().unwrap()
}

/// Runs a shell script in `dir`.
pub fn sh(dir: &Path, script: &str) {
    let st = std::process::Command::new("/bin/sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "script failed: {script}");
}
