//! A hostile helper's change set, committed on the workstation: `herd_fs::changes::
//! Committer` over a fresh temporary root (on /dev/shm: its `syncfs` is cheap) holding
//! `/w` (writable, with `/w/h` hidden) and `/o` (outside the scope), filled with files,
//! directories and symbolic links (relative, absolute, up and out) chosen by the input,
//! then fed up to 16 changes with their data the way `herd __fs-commit` feeds them
//! (`stage` with a reader of the file's bytes, then `commit`).
//!
//! The first byte picks how changes are made: from the property test's candidate paths
//! (with kinds, modes, bases and data from the input; bases may be the version there
//! now), or as framed `CommitFrame`s decoded from the input (the real decoder, any path).
//!
//! Properties (those of crates/herd-fs/tests/commit_prop.rs): never panics; after
//! `commit()` or an error nothing outside `/w` (or under the hidden `/w/h`) changed,
//! inside `/w` only what the change set names (or its conflict copies) changed, a
//! change set that failed changed nothing at all, and no staging directory or intent
//! log is left.
#![no_main]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Component, Path, PathBuf};

use arbitrary::Unstructured;
use herd_fs::beneath::Hidden;
use herd_fs::changes::{Committer, Limits, Scope};
use herd_proto::fs::{Base, Change, CommitFrame, Version};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &["a", "b", "h"];
const TASK: &str = "p";

fn paths() -> Vec<String> {
    let mut out = vec!["/w".to_string(), "/o".to_string()];
    for top in ["/w", "/o"] {
        for a in NAMES {
            out.push(format!("{top}/{a}"));
            for b in NAMES {
                out.push(format!("{top}/{a}/{b}"));
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File(u32, Vec<u8>, i64),
    Link(Vec<u8>),
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let mode = md.mode() & 0o7777;
            if md.is_symlink() {
                let t = fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes();
                out.insert(rel, Entry::Link(t));
            } else if md.is_dir() {
                out.insert(rel, Entry::Dir(mode));
                walk(base, &p, out);
            } else {
                out.insert(rel, Entry::File(mode, fs::read(&p).unwrap_or_default(), md.mtime()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Builds the workstation tree: `/w`, `/o` and, for each other candidate path, nothing,
/// a file, a directory or a link, as the input says.
fn build(root: &Path, u: &mut Unstructured<'_>) {
    let ps = paths();
    fs::create_dir_all(root.join("w")).unwrap();
    fs::create_dir_all(root.join("o")).unwrap();
    for p in ps.iter().skip(2) {
        let real = root.join(&p[1..]);
        let parent = real.parent().unwrap();
        if !parent.is_dir() || parent.is_symlink() {
            continue;
        }
        match u.int_in_range(0u8..=9).unwrap_or(0) {
            0 | 1 => {}
            2 | 3 => fs::write(&real, p.as_bytes()).unwrap(),
            4..=6 => fs::create_dir(&real).unwrap(),
            k => {
                let target = &ps[u.int_in_range(0..=ps.len() - 1).unwrap_or(0)];
                let t = match k {
                    7 => root.join(&target[1..]).into_os_string(),
                    8 => format!("../..{target}").into(),
                    _ => format!("..{}", &target[2..]).into(),
                };
                symlink(t, &real).unwrap();
            }
        }
    }
}

fn seen(root: &Path, p: &[u8]) -> Base {
    let rel = p.strip_prefix(b"/").unwrap_or(p);
    match fs::symlink_metadata(root.join(OsStr::from_bytes(rel))) {
        Ok(md) => Base::Seen(Version {
            ino: md.ino(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            size: md.size(),
        }),
        Err(_) => Base::Absent,
    }
}

fn base(root: &Path, u: &mut Unstructured<'_>, p: &[u8]) -> arbitrary::Result<Base> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 => Base::Unseen,
        1 => Base::Absent,
        2 => Base::Seen(Version {
            ino: u.arbitrary()?,
            mtime_ns: u.arbitrary()?,
            ctime_ns: u.arbitrary()?,
            size: u.arbitrary()?,
        }),
        _ => seen(root, p),
    })
}

const MODES: &[u32] = &[0o644, 0o755, 0o600, 0o4755, 0o2775, 0o1777, 0o170777, 0o000, 0o750];

/// A change of the structured form, with its data.
fn change(root: &Path, u: &mut Unstructured<'_>, ps: &[String]) -> arbitrary::Result<(Change, Vec<u8>)> {
    let path: Vec<u8> = match u.int_in_range(0u8..=15)? {
        0 => {
            // Any bytes below /w.
            let mut p = b"/w/".to_vec();
            p.extend(u.arbitrary::<Vec<u8>>()?.into_iter().take(24));
            p
        }
        1 => {
            let mut p = u.choose(ps)?.as_bytes().to_vec();
            p.extend_from_slice(u.choose(&[
                &b"/.herd-stage-p"[..],
                b".herd-conflict-p",
                b"/.",
                b"/..",
                b"//",
                b"/",
                b"/../o",
            ])?);
            p
        }
        _ => u.choose(ps)?.as_bytes().to_vec(),
    };
    let mode = if u.arbitrary()? { *u.choose(MODES)? } else { u.arbitrary()? };
    let mtime_ns = if u.arbitrary()? { 1_600_000_000_000_000_000 } else { u.arbitrary()? };
    Ok(match u.int_in_range(0u8..=3)? {
        0 => {
            let data: Vec<u8> = u.arbitrary::<Vec<u8>>()?.into_iter().take(64).collect();
            let size = if u.ratio(1u8, 16)? {
                u.int_in_range(0..=80)?
            } else {
                data.len() as u64
            };
            (
                Change::File {
                    base: base(root, u, &path)?,
                    path,
                    mode,
                    mtime_ns,
                    size,
                },
                data,
            )
        }
        1 => (
            Change::Dir {
                path,
                mode,
                mtime_ns,
                replaces: u.arbitrary()?,
            },
            vec![],
        ),
        2 => {
            let target = if u.arbitrary()? {
                u.choose(ps)?.as_bytes().to_vec()
            } else {
                u.arbitrary::<Vec<u8>>()?.into_iter().take(32).collect()
            };
            (
                Change::Symlink {
                    base: base(root, u, &path)?,
                    path,
                    target,
                },
                vec![],
            )
        }
        _ => (
            Change::Remove {
                base: base(root, u, &path)?,
                path,
            },
            vec![],
        ),
    })
}

/// Changes decoded from length-prefixed `CommitFrame`s, as `run_commit` reads them.
/// `None` when the stream is one `run_commit` refuses before committing.
fn framed(u: &mut Unstructured<'_>) -> Option<Vec<(Change, Vec<u8>)>> {
    let mut out: Vec<(Change, Vec<u8>)> = Vec::new();
    while !u.is_empty() && out.len() < 16 {
        let n = u.int_in_range(0usize..=200).ok()?;
        let bytes = u.bytes(n.min(u.len())).ok()?;
        let mut payload = vec![herd_proto::PROTOCOL_VERSION];
        payload.extend_from_slice(bytes);
        match herd_proto::decode::<CommitFrame>(&payload) {
            Ok(CommitFrame::Change(c)) => out.push((c, vec![])),
            Ok(CommitFrame::Data(d)) => match out.last_mut() {
                Some((Change::File { .. }, data)) => data.extend_from_slice(&d),
                _ => return None,
            },
            Ok(CommitFrame::Done) => break,
            Err(_) => return None,
        }
    }
    Some(out)
}

/// The normalised path a change names, relative to the root (`None`: not a plain
/// absolute path; staging refuses it).
fn rel(raw: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    Some(out)
}

/// Whether `d` is, or is below, a conflict copy of `c`: `NAME.herd-conflict-TASK`, or
/// that and `-N` when the change set itself names it.
fn in_copy(d: &Path, c: &Path) -> bool {
    let (Some(parent), Some(name)) = (c.parent(), c.file_name()) else {
        return false;
    };
    let mut copy = name.as_bytes().to_vec();
    copy.extend_from_slice(format!(".herd-conflict-{TASK}").as_bytes());
    d.ancestors().any(|a| {
        let Some(n) = a.file_name() else { return false };
        let n = n.as_bytes();
        a.parent() == Some(parent)
            && n.starts_with(&copy)
            && match &n[copy.len()..] {
                [] => true,
                [b'-', digits @ ..] => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
                _ => false,
            }
    })
}

fn allowed(d: &Path, set: &[(Change, Vec<u8>)]) -> bool {
    set.iter().any(|(ch, _)| {
        let Some(c) = rel(ch.path()) else { return false };
        let subtree = matches!(
            ch,
            Change::Remove { .. }
                | Change::File { .. }
                | Change::Symlink { .. }
                | Change::Dir { replaces: true, .. }
        );
        d == c || (subtree && d.starts_with(&c)) || in_copy(d, &c)
    })
}

fn outside(snap: &BTreeMap<PathBuf, Entry>) -> BTreeMap<PathBuf, Entry> {
    snap.iter()
        .filter(|(p, _)| !p.starts_with("w") || p.starts_with("w/h"))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    let t = tempfile::Builder::new()
        .prefix("herd-fuzz-cs")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let logs = t.path().join("logs");
    fs::create_dir(&logs).unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    build(&root, &mut u);
    let ps = paths();
    let set: Vec<(Change, Vec<u8>)> = if sel & 1 == 0 {
        let n = u.int_in_range(1usize..=16).unwrap_or(1);
        let mut set = Vec::new();
        for _ in 0..n {
            match change(&root, &mut u, &ps) {
                Ok(c) => set.push(c),
                Err(_) => break,
            }
        }
        set
    } else {
        match framed(&mut u) {
            Some(s) => s,
            None => return,
        }
    };
    if set.is_empty() {
        return;
    }
    let before = snapshot(&root);
    let hidden = Hidden::new(&root, [PathBuf::from("/w/h")]);
    let scope = Scope::new(&root, &[PathBuf::from("/w")], hidden).unwrap();
    let limits = Limits {
        max_files: 32,
        max_bytes: 4096,
        reserve_bytes: 0,
    };
    let mut c = Committer::new(&root, TASK, scope, limits, &logs).unwrap();
    let mut failed = false;
    for (ch, data) in &set {
        let mut d = &data[..];
        let r: Option<&mut dyn std::io::Read> = matches!(ch, Change::File { .. }).then_some(&mut d);
        if c.stage(ch, r).is_err() {
            failed = true;
            break;
        }
    }
    if !failed {
        failed = c.commit().is_err();
    } else {
        drop(c);
    }
    let after = snapshot(&root);
    let left: Vec<_> = after
        .keys()
        .filter(|k| k.to_string_lossy().contains(".herd-stage"))
        .collect();
    assert!(left.is_empty(), "staging left: {left:?}");
    assert_eq!(fs::read_dir(&logs).unwrap().count(), 0, "intent log left");
    if failed {
        assert_eq!(after, before, "a failed change set changed the tree");
    }
    assert_eq!(outside(&after), outside(&before), "something outside /w (or hidden) changed");
    for (p, e) in &after {
        if before.get(p) != Some(e) {
            assert!(allowed(p, &set), "{} changed: {:?} -> {:?}", p.display(), before.get(p), e);
        }
    }
    for p in before.keys() {
        if !after.contains_key(p) {
            assert!(allowed(p, &set), "{} vanished", p.display());
        }
    }
});
