//! A task's changes made through a real overlayfs, scanned from the upper layer and
//! committed (with a write scope, staging and an intent log) to a copy of the lower
//! layer: the copy must end up exactly like the merged view. Needs root (overlay
//! mounts, whiteouts); fails, never skips, without. (The same tests as
//! `tests/changes.rs`, on the scoped committer's API.)

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use herd_fs::changes::{Committer, Limits, Scanned, Scope, scan};
use herd_fs::source::attr_of;
use herd_proto::fs::{Base, Change};

fn root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test mounts overlayfs and must run as root"
    );
}

/// name -> (kind, mode, contents or link target)
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (char, u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let mode = md.mode() & 0o7777;
            if md.is_symlink() {
                out.insert(
                    rel,
                    (
                        'l',
                        0,
                        fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ),
                );
            } else if md.is_dir() {
                out.insert(rel, ('d', mode, vec![]));
                walk(base, &p, out);
            } else {
                out.insert(rel, ('f', mode, fs::read(&p).unwrap()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn sh(dir: &Path, script: &str) {
    let st = Command::new("/bin/sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "script failed: {script}");
}

struct Overlay {
    _tmp: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    merged: PathBuf,
}

impl Overlay {
    fn new(setup: &str) -> Overlay {
        let tmp = tempfile::tempdir().unwrap();
        let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|n| {
            let p = tmp.path().join(n);
            fs::create_dir(&p).unwrap();
            p
        });
        sh(&lower, setup);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .unwrap();
        assert!(st.success(), "mount overlay");
        Overlay {
            _tmp: tmp,
            lower,
            upper,
            merged,
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.merged).status();
    }
}

/// What the task saw: the lower layer's version, or absent.
fn base_from(lower: PathBuf) -> impl Fn(&Path) -> Base {
    move |p: &Path| {
        let real = lower.join(p.strip_prefix("/").unwrap());
        match fs::symlink_metadata(real) {
            Ok(md) => Base::Seen((&attr_of(&md)).into()),
            Err(_) => Base::Absent,
        }
    }
}

/// A committer writing anywhere below `ws` (its own root), its log in a temporary
/// directory kept as long as the committer.
fn committer(ws: &Path, task: &str) -> (Committer, tempfile::TempDir) {
    let logs = tempfile::tempdir().unwrap();
    let scope = Scope::new(ws, &[PathBuf::from("/")], Default::default()).unwrap();
    let c = Committer::new(ws, task, scope, Limits::default(), logs.path()).unwrap();
    (c, logs)
}

fn commit_to(ws: &Path, task: &str, changes: &[Scanned]) -> herd_fs::changes::Report {
    let (mut c, _logs) = committer(ws, task);
    for s in changes {
        match &s.data {
            Some(p) => {
                let mut f = fs::File::open(p).unwrap();
                c.stage(&s.change, Some(&mut f)).unwrap();
            }
            None => c.stage(&s.change, None).unwrap(),
        }
    }
    c.commit().unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

const SETUP: &str = "
    echo old > a.txt
    mkdir -p d r keep/deep
    echo k > d/keep.txt; echo g > d/gone.txt
    echo x > r/x.txt; echo z > r/z.txt
    echo m > mv_src.txt
    echo deep > keep/deep/f
    chmod 640 a.txt
";

const TASK: &str = "
    echo new >> a.txt
    echo hello > new.txt
    rm d/gone.txt
    rm -r r; mkdir r; echo y > r/y.txt
    mv mv_src.txt mv_dst.txt
    ln -s a.txt link
    mkdir -p newdir/sub; echo f > newdir/sub/f; chmod 700 newdir
    chmod 600 d/keep.txt
    rm -r keep
    head -c 3000000 /dev/zero > big.bin
";

#[test]
fn committed_changes_reproduce_the_merged_view() {
    root();
    let ov = Overlay::new(SETUP);
    sh(&ov.merged, TASK);
    // The workstation: what the task's lower layer showed.
    let ws = tempfile::tempdir().unwrap();
    copy_tree(&ov.lower, ws.path());
    let changes = scan(&ov.upper, &base_from(ws.path().to_path_buf())).unwrap();

    // Deletions and the replaced directory are visible as such.
    assert!(
        changes
            .iter()
            .any(|s| matches!(&s.change, Change::Remove { path, .. } if path == b"/d/gone.txt"))
    );
    assert!(
        changes.iter().any(
            |s| matches!(&s.change, Change::Dir { path, replaces: true, .. } if path == b"/r")
        )
    );

    let report = commit_to(ws.path(), "t1", &changes);
    assert!(report.conflicts.is_empty(), "{report:?}");
    assert_eq!(snapshot(ws.path()), snapshot(&ov.merged));
    // No temporary file is left behind.
    assert!(
        snapshot(ws.path())
            .keys()
            .all(|k| !k.to_string_lossy().contains(".herd-"))
    );
    // Modification times come along.
    let m1 = fs::metadata(ov.merged.join("a.txt")).unwrap().mtime();
    let m2 = fs::metadata(ws.path().join("a.txt")).unwrap().mtime();
    assert_eq!(m1, m2);
}

#[test]
fn a_file_changed_on_the_workstation_meanwhile_is_kept_and_the_task_version_saved_beside_it() {
    root();
    let ov = Overlay::new(SETUP);
    sh(
        &ov.merged,
        "echo task >> a.txt; echo mine > created.txt; rm d/gone.txt",
    );
    let ws = tempfile::tempdir().unwrap();
    copy_tree(&ov.lower, ws.path());
    let changes = scan(&ov.upper, &base_from(ws.path().to_path_buf())).unwrap();
    // Meanwhile on the workstation: a.txt edited, created.txt created, gone.txt edited.
    fs::write(ws.path().join("a.txt"), "workstation edit\n").unwrap();
    fs::write(ws.path().join("created.txt"), "ws\n").unwrap();
    fs::write(ws.path().join("d/gone.txt"), "edited, keep me\n").unwrap();

    let report = commit_to(ws.path(), "t2", &changes);
    assert_eq!(
        fs::read_to_string(ws.path().join("a.txt")).unwrap(),
        "workstation edit\n"
    );
    assert_eq!(
        fs::read_to_string(ws.path().join("a.txt.herd-conflict-t2")).unwrap(),
        "old\ntask\n"
    );
    assert_eq!(
        fs::read_to_string(ws.path().join("created.txt")).unwrap(),
        "ws\n"
    );
    assert_eq!(
        fs::read_to_string(ws.path().join("created.txt.herd-conflict-t2")).unwrap(),
        "mine\n"
    );
    assert_eq!(
        fs::read_to_string(ws.path().join("d/gone.txt")).unwrap(),
        "edited, keep me\n"
    );
    assert_eq!(report.conflicts.len(), 3, "{report:?}");
}

#[test]
fn an_aborted_commit_leaves_nothing_behind() {
    root();
    let ov = Overlay::new(SETUP);
    sh(&ov.merged, TASK);
    let ws = tempfile::tempdir().unwrap();
    copy_tree(&ov.lower, ws.path());
    let changes = scan(&ov.upper, &base_from(ws.path().to_path_buf())).unwrap();
    let before = snapshot(ws.path());
    let (mut c, _logs) = committer(ws.path(), "t3");
    // Stage half of the changes, as if the helper died in the middle of sending them.
    for s in changes.iter().take(changes.len() / 2 + 1) {
        match &s.data {
            Some(p) => c
                .stage(&s.change, Some(&mut fs::File::open(p).unwrap()))
                .unwrap(),
            None => c.stage(&s.change, None).unwrap(),
        }
    }
    drop(c);
    assert_eq!(snapshot(ws.path()), before);

    // Data that ends early is refused.
    let (mut c, _logs4) = committer(ws.path(), "t4");
    let short = Change::File {
        path: b"/short".to_vec(),
        mode: 0o644,
        mtime_ns: 0,
        size: 10,
        base: Base::Absent,
    };
    assert!(c.stage(&short, Some(&mut &b"abc"[..])).is_err());
    c.abort();
    assert_eq!(snapshot(ws.path()), before);
}

#[test]
fn changes_with_dotdot_or_relative_paths_are_refused() {
    let ws = tempfile::tempdir().unwrap();
    let (mut c, _logs) = committer(ws.path(), "t5");
    for bad in [
        &b"/../etc/passwd"[..],
        b"relative",
        b"/a/./b",
        b"/",
        b"/a//b",
        b"/a/b/",
    ] {
        let ch = Change::Remove {
            path: bad.to_vec(),
            base: Base::Unseen,
        };
        assert!(
            c.stage(&ch, None).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
