//! The committer against a hostile (or unlucky) change set: every attack found on the
//! old committer, and the cases around write scopes, links, limits and aborts.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use common::*;
use herd_fs::changes::{ChangeError, Dropped, Limits};
use herd_proto::fs::{Base, Change};

/// A workstation root with a writable `/w` and an outside `/o`.
fn ws() -> (tempfile::TempDir, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("w")).unwrap();
    fs::create_dir_all(root.path().join("o")).unwrap();
    (root, tempfile::tempdir().unwrap())
}

fn dropped(r: &herd_fs::changes::Report, p: &str) -> Option<Dropped> {
    r.dropped
        .iter()
        .find(|(d, _)| d == Path::new(p))
        .map(|(_, why)| *why)
}

fn clean(root: &Path, logs: &Path) {
    assert_eq!(leftovers(&snapshot(root)), Vec::<std::path::PathBuf>::new());
    assert_eq!(
        fs::read_dir(logs).unwrap().count(),
        0,
        "a commit log is left"
    );
}

#[test]
fn a_replaced_directory_that_is_a_symlink_replaces_the_link_not_its_target() {
    let (root, logs) = ws();
    let r = root.path();
    fs::create_dir_all(r.join("o/elsewhere")).unwrap();
    fs::write(r.join("o/elsewhere/keep"), b"precious").unwrap();
    symlink("../o/elsewhere", r.join("w/data")).unwrap();
    // rm data && mkdir data && echo x > data/x
    let rep = apply(
        committer(r, "t", &["/w"], &[], logs.path()),
        &[dir("/w/data", 0o755, true), file("/w/data/x", b"x")],
    );
    assert_eq!(fs::read(r.join("o/elsewhere/keep")).unwrap(), b"precious");
    let md = fs::symlink_metadata(r.join("w/data")).unwrap();
    assert!(md.is_dir() && !md.is_symlink());
    assert_eq!(fs::read(r.join("w/data/x")).unwrap(), b"x");
    assert!(rep.dropped.is_empty(), "{rep:?}");
    clean(r, logs.path());
}

#[test]
fn nothing_is_written_through_a_symlink() {
    let (root, logs) = ws();
    let r = root.path();
    fs::create_dir_all(r.join("o/ssh")).unwrap();
    symlink("../o/ssh", r.join("w/dotlink")).unwrap();
    symlink(r.join("o"), r.join("w/abs")).unwrap();
    symlink("..", r.join("w/up")).unwrap();
    let before = snapshot(r);
    let rep = apply(
        committer(r, "t", &["/w"], &[], logs.path()),
        &[
            file("/w/dotlink/authorized_keys", b"evil"),
            file("/w/abs/x", b"evil"),
            file("/w/up/o/y", b"evil"),
            dir("/w/dotlink/sub", 0o755, false),
            file("/w/dotlink/sub/z", b"evil"),
            remove("/w/up/o/ssh"),
        ],
    );
    assert_eq!(snapshot(r), before);
    assert_eq!(
        dropped(&rep, "/w/dotlink/authorized_keys"),
        Some(Dropped::ThroughSymlink)
    );
    assert_eq!(dropped(&rep, "/w/abs/x"), Some(Dropped::ThroughSymlink));
    assert_eq!(dropped(&rep, "/w/up/o/y"), Some(Dropped::ThroughSymlink));
    assert_eq!(
        dropped(&rep, "/w/dotlink/sub"),
        Some(Dropped::ThroughSymlink)
    );
    // Below a dropped directory: dropped, not listed again.
    assert_eq!(dropped(&rep, "/w/dotlink/sub/z"), None);
    assert_eq!(dropped(&rep, "/w/up/o/ssh"), Some(Dropped::ThroughSymlink));
    clean(r, logs.path());
}

#[test]
fn hidden_paths_and_their_other_names_are_never_written() {
    let (root, logs) = ws();
    let r = root.path();
    fs::create_dir_all(r.join("w/.ssh")).unwrap();
    fs::write(r.join("w/.ssh/authorized_keys"), b"mine").unwrap();
    fs::write(r.join("w/secret"), b"s").unwrap();
    fs::create_dir_all(r.join("w/pub")).unwrap();
    fs::hard_link(r.join("w/secret"), r.join("w/pub/alias")).unwrap();
    fs::create_dir_all(r.join("w/proj/deep")).unwrap();
    fs::create_dir_all(r.join("w/proj2")).unwrap();
    let before = snapshot(r);
    let rep = apply(
        committer(
            r,
            "t",
            &["/w"],
            &["/w/.ssh", "/w/secret", "/w/proj/deep"],
            logs.path(),
        ),
        &[
            file("/w/.ssh/authorized_keys", b"evil"),
            remove("/w/.ssh"),
            file("/w/pub/alias", b"evil"),
            remove("/w/proj"),
            file("/w/secret", b"evil"),
        ],
    );
    assert_eq!(snapshot(r), before);
    assert_eq!(
        dropped(&rep, "/w/.ssh/authorized_keys"),
        Some(Dropped::Hidden)
    );
    assert_eq!(dropped(&rep, "/w/.ssh"), Some(Dropped::Hidden));
    assert_eq!(dropped(&rep, "/w/pub/alias"), Some(Dropped::Hidden));
    assert_eq!(dropped(&rep, "/w/proj"), Some(Dropped::HoldsHidden));
    assert_eq!(dropped(&rep, "/w/secret"), Some(Dropped::Hidden));
    // A replaced directory keeps its hidden entries.
    let rep = apply(
        committer(r, "t2", &["/w"], &["/w/proj/deep"], logs.path()),
        &[dir("/w/proj", 0o755, true), file("/w/proj/new", b"n")],
    );
    assert!(r.join("w/proj/deep").is_dir());
    assert!(r.join("w/proj/new").is_file());
    assert_eq!(dropped(&rep, "/w/proj/deep"), Some(Dropped::Hidden));
    clean(r, logs.path());
}

#[test]
fn set_id_bits_are_stripped_and_file_modes_make_regular_files() {
    let (root, logs) = ws();
    let r = root.path();
    let rep = apply(
        committer(r, "t", &["/w"], &[], logs.path()),
        &[
            file_mode("/w/suid", b"#!", 0o6755),
            file_mode("/w/sticky", b"x", 0o1777),
            // Type bits of a socket, a character device, a directory, a link.
            file_mode("/w/sock", b"s", 0o140755),
            file_mode("/w/chr", b"c", 0o020644),
            file_mode("/w/dirbits", b"d", 0o040700),
            file_mode("/w/lnk", b"l", 0o120777),
            dir("/w/sgid", 0o2755, false),
        ],
    );
    for (p, mode) in [
        ("suid", 0o755),
        ("sticky", 0o777),
        ("sock", 0o755),
        ("chr", 0o644),
        ("dirbits", 0o700),
        ("lnk", 0o777),
    ] {
        let md = fs::symlink_metadata(r.join("w").join(p)).unwrap();
        assert!(md.file_type().is_file(), "{p} is not a regular file");
        assert_eq!(md.mode() & 0o7777, mode, "{p}");
    }
    assert_eq!(
        fs::symlink_metadata(r.join("w/sgid")).unwrap().mode() & 0o7777,
        0o755
    );
    let mut stripped: Vec<_> = rep
        .stripped
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    stripped.sort();
    assert_eq!(stripped, ["/w/sgid", "/w/sticky", "/w/suid"]);
    clean(r, logs.path());
}

#[test]
fn changes_outside_the_scope_are_dropped_and_their_data_consumed() {
    let (root, logs) = ws();
    let r = root.path();
    fs::write(r.join("o/victim"), b"v").unwrap();
    let before_o = snapshot(&r.join("o"));
    let mut c = committer(r, "t", &["/w"], &[], logs.path());
    // One stream for all files: a dropped file's data must be read off it.
    let mut stream: &[u8] = b"EVIL!good";
    let evil = file("/o/victim", b"EVIL!").change;
    let good = file("/w/good", b"good").change;
    c.stage(&dir("/o", 0o755, false).change, None).unwrap();
    c.stage(&evil, Some(&mut stream)).unwrap();
    c.stage(&good, Some(&mut stream)).unwrap();
    c.stage(&remove("/o/victim").change, None).unwrap();
    c.stage(&file("/etc/passwd", b"").change, Some(&mut stream))
        .unwrap();
    let rep = c.commit().unwrap();
    assert_eq!(fs::read(r.join("w/good")).unwrap(), b"good");
    assert_eq!(snapshot(&r.join("o")), before_o);
    assert_eq!(dropped(&rep, "/o"), Some(Dropped::OutsideScope));
    assert_eq!(dropped(&rep, "/etc/passwd"), Some(Dropped::OutsideScope));
    assert!(
        Dropped::OutsideScope
            .to_string()
            .contains("outside the write scope")
    );
    clean(r, logs.path());
}

#[test]
fn malformed_paths_are_refused() {
    let (root, logs) = ws();
    let mut c = committer(root.path(), "t", &["/w"], &[], logs.path());
    for bad in [
        &b"/w/../o/x"[..],
        b"relative",
        b"/w/./b",
        b"/",
        b"/w//b",
        b"/w/b/",
    ] {
        let ch = Change::Remove {
            path: bad.to_vec(),
            base: Base::Unseen,
        };
        assert!(
            matches!(c.stage(&ch, None), Err(ChangeError::Invalid { .. })),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn a_writable_root_is_resolved_and_may_not_be_a_pseudo_file_system() {
    let (root, _logs) = ws();
    let r = root.path();
    symlink("w", r.join("wl")).unwrap();
    let s = herd_fs::changes::Scope::new(r, &["/wl".into()], Default::default()).unwrap();
    assert_eq!(s.roots(), [Path::new("/w")]);
    assert!(
        herd_fs::changes::Scope::new(Path::new("/"), &["/proc/self".into()], Default::default())
            .is_err()
    );
    // A root that does not exist yet is its resolved parent's child.
    let s =
        herd_fs::changes::Scope::new(r, &["/wl/new/deeper".into()], Default::default()).unwrap();
    assert_eq!(s.roots(), [Path::new("/w/new/deeper")]);
    fs::write(r.join("plain"), b"").unwrap();
    assert!(
        herd_fs::changes::Scope::new(r, &["/plain/x".into()], Default::default()).is_err(),
        "below a file"
    );
}

#[test]
fn a_rename_over_a_hard_linked_file_replaces_the_name_only() {
    let (root, logs) = ws();
    let r = root.path();
    fs::write(r.join("o/h"), b"orig").unwrap();
    fs::hard_link(r.join("o/h"), r.join("w/h")).unwrap();
    let mut f = file("/w/h", b"new");
    if let Change::File { base, .. } = &mut f.change {
        *base = seen(r, "/w/h");
    }
    let rep = apply(committer(r, "t", &["/w"], &[], logs.path()), &[f]);
    assert_eq!(fs::read(r.join("w/h")).unwrap(), b"new");
    assert_eq!(fs::read(r.join("o/h")).unwrap(), b"orig");
    assert!(rep.conflicts.is_empty(), "{rep:?}");
    clean(r, logs.path());
}

#[test]
fn a_rename_into_the_scope_is_a_copy_and_out_of_it_keeps_the_source() {
    let (root, logs) = ws();
    let r = root.path();
    fs::write(r.join("o/src"), b"in").unwrap();
    fs::write(r.join("w/leaving"), b"out").unwrap();
    fs::create_dir_all(r.join("w/dleaving")).unwrap();
    fs::write(r.join("w/dleaving/f"), b"f").unwrap();
    fs::write(r.join("w/really-gone"), b"g").unwrap();
    let m = |p: &str| match seen(r, p) {
        Base::Seen(v) => v,
        _ => unreachable!(),
    };
    let (leaving, dleaving) = (m("/w/leaving"), m("/w/dleaving"));
    let with_base = |mut s: Staged, p: &str| {
        if let Change::Remove { base, .. } = &mut s.change {
            *base = seen(r, p);
        }
        s
    };
    let moved_file = Staged {
        change: Change::File {
            path: b"/o/leaving".to_vec(),
            mode: 0o644,
            mtime_ns: leaving.mtime_ns,
            size: leaving.size,
            base: Base::Absent,
        },
        data: b"out".to_vec(),
    };
    let moved_dir = Staged {
        change: Change::Dir {
            path: b"/o/dleaving".to_vec(),
            mode: 0o755,
            mtime_ns: dleaving.mtime_ns,
            replaces: false,
        },
        data: vec![],
    };
    let rep = apply(
        committer(r, "t", &["/w"], &[], logs.path()),
        &[
            with_base(remove("/o/src"), "/o/src"),
            file("/w/dst", b"in"),
            with_base(remove("/w/leaving"), "/w/leaving"),
            moved_file,
            with_base(remove("/w/dleaving"), "/w/dleaving"),
            moved_dir,
            file("/o/dleaving/f", b"f"),
            with_base(remove("/w/really-gone"), "/w/really-gone"),
        ],
    );
    assert_eq!(fs::read(r.join("o/src")).unwrap(), b"in");
    assert_eq!(fs::read(r.join("w/dst")).unwrap(), b"in");
    assert_eq!(fs::read(r.join("w/leaving")).unwrap(), b"out");
    assert_eq!(fs::read(r.join("w/dleaving/f")).unwrap(), b"f");
    assert!(!r.join("o/leaving").exists() && !r.join("o/dleaving").exists());
    assert!(!r.join("w/really-gone").exists());
    assert_eq!(dropped(&rep, "/o/src"), Some(Dropped::OutsideScope));
    assert_eq!(dropped(&rep, "/w/leaving"), Some(Dropped::MovedOut));
    assert_eq!(dropped(&rep, "/w/dleaving"), Some(Dropped::MovedOut));
    clean(r, logs.path());
}

#[test]
fn a_file_replaces_a_directory_and_a_directory_replaces_it_back() {
    let (root, logs) = ws();
    let r = root.path();
    fs::create_dir_all(r.join("w/d/inner")).unwrap();
    fs::write(r.join("w/d/inner/x"), b"x").unwrap();
    fs::write(r.join("o/keep"), b"k").unwrap();
    symlink("../../o", r.join("w/d/out")).unwrap();
    fs::set_permissions(r.join("w/d/inner"), fs::Permissions::from_mode(0o555)).unwrap();
    let mut f = file("/w/d", b"now a file");
    if let Change::File { base, .. } = &mut f.change {
        *base = seen(r, "/w/d");
    }
    apply(committer(r, "t", &["/w"], &[], logs.path()), &[f]);
    assert_eq!(fs::read(r.join("w/d")).unwrap(), b"now a file");
    assert_eq!(fs::read(r.join("o/keep")).unwrap(), b"k");
    clean(r, logs.path());
    // And back: rm d; mkdir d; mkdir d/e; echo y > d/e/y
    apply(
        committer(r, "t2", &["/w"], &[], logs.path()),
        &[
            dir("/w/d", 0o750, true),
            dir("/w/d/e", 0o500, false),
            file("/w/d/e/y", b"y"),
        ],
    );
    assert_eq!(fs::read(r.join("w/d/e/y")).unwrap(), b"y");
    assert_eq!(fs::metadata(r.join("w/d")).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(
        fs::metadata(r.join("w/d/e")).unwrap().mode() & 0o7777,
        0o500
    );
    clean(r, logs.path());
}

#[test]
fn a_huge_announced_file_fails_cleanly() {
    let (root, logs) = ws();
    let r = root.path();
    let before = snapshot(r);
    let unlimited = Limits {
        max_bytes: u64::MAX,
        ..Limits::default()
    };
    let mut c = committer_with(r, "t", &["/w"], &[], logs.path(), unlimited);
    let mut huge = file("/w/huge", b"abc").change;
    if let Change::File { size, .. } = &mut huge {
        *size = 1 << 50;
    }
    let e = c.stage(&huge, Some(&mut &b"abc"[..])).unwrap_err();
    assert!(matches!(e, ChangeError::NoSpace { .. }), "{e}");
    assert!(e.to_string().contains("not enough free space"), "{e}");
    drop(c);
    // Announced 100 MB, 3 bytes sent: no preallocation, a clean failure.
    let mut c = committer(r, "t", &["/w"], &[], logs.path());
    c.stage(&file("/w/first", b"1").change, Some(&mut &b"1"[..]))
        .unwrap();
    if let Change::File { size, .. } = &mut huge {
        *size = 100 << 20;
    }
    let e = c.stage(&huge, Some(&mut &b"abc"[..])).unwrap_err();
    assert!(
        matches!(
            e,
            ChangeError::Invalid {
                why: "file data ended early",
                ..
            }
        ),
        "{e}"
    );
    c.abort();
    assert_eq!(snapshot(r), before);
    clean(r, logs.path());
}

#[test]
fn a_change_set_ending_half_way_commits_nothing() {
    let (root, logs) = ws();
    let r = root.path();
    fs::write(r.join("w/a"), b"old").unwrap();
    let before = snapshot(r);
    let mut c = committer(r, "t", &["/w"], &[], logs.path());
    for s in [
        dir("/w/new", 0o755, false),
        file("/w/new/f", b"f"),
        file("/w/a", b"new"),
    ] {
        let mut d = &s.data[..];
        let data: Option<&mut dyn std::io::Read> =
            matches!(s.change, Change::File { .. }).then_some(&mut d);
        c.stage(&s.change, data).unwrap();
    }
    c.stage(&remove("/w/a").change, None).unwrap();
    drop(c);
    assert_eq!(snapshot(r), before);
    clean(r, logs.path());
    // (A committer killed half-way: see the crash test.)
}

#[test]
fn limits_fail_the_commit_with_the_reason() {
    let (root, logs) = ws();
    let r = root.path();
    let before = snapshot(r);
    let limits = Limits {
        max_files: 2,
        ..Limits::default()
    };
    let mut c = committer_with(r, "t", &["/w"], &[], logs.path(), limits);
    c.stage(&file("/w/1", b"1").change, Some(&mut &b"1"[..]))
        .unwrap();
    c.stage(&file("/w/2", b"2").change, Some(&mut &b"2"[..]))
        .unwrap();
    let e = c
        .stage(&file("/w/3", b"3").change, Some(&mut &b"3"[..]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the change set has more than 2 files (limit [commit] max_files)"
    );
    drop(c);
    let limits = Limits {
        max_bytes: 5,
        ..Limits::default()
    };
    let mut c = committer_with(r, "t", &["/w"], &[], logs.path(), limits);
    c.stage(&file("/w/1", b"123").change, Some(&mut &b"123"[..]))
        .unwrap();
    let e = c
        .stage(&file("/w/2", b"456").change, Some(&mut &b"456"[..]))
        .unwrap_err();
    assert!(e.to_string().contains("max_bytes"), "{e}");
    drop(c);
    assert_eq!(snapshot(r), before);
    clean(r, logs.path());
}

#[test]
fn a_conflict_keeps_the_workstation_file_and_saves_the_task_version() {
    let (root, logs) = ws();
    let r = root.path();
    fs::write(r.join("w/a"), b"old").unwrap();
    let base = seen(r, "/w/a");
    fs::write(r.join("w/a"), b"edited meanwhile, longer").unwrap();
    let mut f = file("/w/a", b"task");
    if let Change::File { base: b, .. } = &mut f.change {
        *b = base;
    }
    let mut created = file("/w/c", b"mine");
    if let Change::File { base: b, .. } = &mut created.change {
        *b = Base::Absent;
    }
    fs::write(r.join("w/c"), b"ws").unwrap();
    let rep = apply(committer(r, "t", &["/w"], &[], logs.path()), &[f, created]);
    assert_eq!(
        fs::read(r.join("w/a")).unwrap(),
        b"edited meanwhile, longer"
    );
    assert_eq!(fs::read(r.join("w/a.herd-conflict-t")).unwrap(), b"task");
    assert_eq!(fs::read(r.join("w/c")).unwrap(), b"ws");
    assert_eq!(fs::read(r.join("w/c.herd-conflict-t")).unwrap(), b"mine");
    assert_eq!(rep.conflicts.len(), 2);
    clean(r, logs.path());
}

/// Found by the `change_set` fuzz target: a conflict copy's name (`NAME.herd-conflict-
/// <task>`, chosen when the plan is made) could be a path the change set itself makes.
/// A new directory there then failed to be put after the point of no return (the copy
/// was there first: the commit failed half applied), a file there was replaced by the
/// copy, and a workstation file there, kept in its own conflict, was overwritten.
#[test]
fn a_conflict_copy_never_takes_the_place_of_an_entry_of_the_change_set() {
    let read = |r: &Path, p: &str| fs::read(r.join(p)).unwrap();
    // The task's /w/a conflicts (the workstation made /w/a meanwhile), and the task
    // made a directory /w/a.herd-conflict-t, after the file or before it.
    for dir_first in [false, true] {
        let (root, logs) = ws();
        let r = root.path();
        fs::write(r.join("w/a"), b"ws").unwrap();
        let mut set = vec![
            file("/w/a", b"task"),
            dir("/w/a.herd-conflict-t", 0o755, true),
        ];
        if dir_first {
            set.reverse();
        }
        let rep = apply(committer(r, "t", &["/w"], &[], logs.path()), &set);
        assert_eq!(read(r, "w/a"), b"ws");
        assert!(r.join("w/a.herd-conflict-t").is_dir());
        assert_eq!(read(r, "w/a.herd-conflict-t-2"), b"task");
        assert_eq!(
            rep.conflicts,
            [(
                Path::new("/w/a").to_path_buf(),
                Some(Path::new("/w/a.herd-conflict-t-2").to_path_buf())
            )]
        );
        clean(r, logs.path());
    }
    // A file of the task at the copy's name, new or itself in conflict.
    for ws_has_it in [false, true] {
        let (root, logs) = ws();
        let r = root.path();
        fs::write(r.join("w/a"), b"ws a").unwrap();
        if ws_has_it {
            fs::write(r.join("w/a.herd-conflict-t"), b"ws copy").unwrap();
        }
        let set = [
            file("/w/a", b"task a"),
            file("/w/a.herd-conflict-t", b"task copy"),
        ];
        apply(committer(r, "t", &["/w"], &[], logs.path()), &set);
        assert_eq!(read(r, "w/a"), b"ws a");
        assert_eq!(read(r, "w/a.herd-conflict-t-2"), b"task a");
        if ws_has_it {
            assert_eq!(read(r, "w/a.herd-conflict-t"), b"ws copy");
            assert_eq!(read(r, "w/a.herd-conflict-t.herd-conflict-t"), b"task copy");
        } else {
            assert_eq!(read(r, "w/a.herd-conflict-t"), b"task copy");
        }
        clean(r, logs.path());
    }
}

#[test]
fn parents_above_the_scope_are_ignored_unless_they_change() {
    let (root, logs) = ws();
    let r = root.path();
    fs::create_dir_all(r.join("w/proj")).unwrap();
    fs::set_permissions(r.join("w"), fs::Permissions::from_mode(0o755)).unwrap();
    let rep = apply(
        committer(r, "t", &["/w/proj"], &[], logs.path()),
        &[
            dir("/w", 0o755, false),
            dir("/w/proj", 0o755, false),
            file("/w/proj/f", b"f"),
            file("/w/g", b"g"),
        ],
    );
    assert_eq!(dropped(&rep, "/w"), None);
    assert_eq!(dropped(&rep, "/w/g"), Some(Dropped::OutsideScope));
    assert!(r.join("w/proj/f").exists() && !r.join("w/g").exists());
    let rep = apply(
        committer(r, "t2", &["/w/proj"], &[], logs.path()),
        &[dir("/w", 0o777, true), dir("/w/proj", 0o755, false)],
    );
    assert_eq!(dropped(&rep, "/w"), Some(Dropped::OutsideScope));
    assert_eq!(fs::metadata(r.join("w")).unwrap().mode() & 0o777, 0o755);
    // The writable root itself cannot go.
    let rep = apply(
        committer(r, "t3", &["/w/proj"], &[], logs.path()),
        &[remove("/w/proj")],
    );
    assert_eq!(dropped(&rep, "/w/proj"), Some(Dropped::ScopeRoot));
    assert!(r.join("w/proj/f").exists());
    // But it may be replaced in place (emptied), staging aside.
    apply(
        committer(r, "t4", &["/w/proj"], &[], logs.path()),
        &[dir("/w/proj", 0o755, true), file("/w/proj/n", b"n")],
    );
    assert!(!r.join("w/proj/f").exists() && r.join("w/proj/n").exists());
    clean(r, logs.path());
}

#[test]
fn a_writable_root_that_does_not_exist_yet_is_made_by_the_change_set() {
    // `herd run --writes ~/.cache` before any tool made `~/.cache`.
    let (root, logs) = ws();
    let r = root.path();
    let rep = apply(
        committer(r, "t", &["/w/cache"], &[], logs.path()),
        &[
            dir("/w", 0o755, false),
            dir("/w/cache", 0o755, false),
            dir("/w/cache/tool", 0o755, false),
            file("/w/cache/tool/x", b"c"),
            file("/w/elsewhere", b"no"),
        ],
    );
    assert_eq!(
        fs::read(r.join("w/cache/tool/x")).ok().as_deref(),
        Some(&b"c"[..]),
        "{rep:?}"
    );
    assert_eq!(dropped(&rep, "/w/elsewhere"), Some(Dropped::OutsideScope));
    clean(r, logs.path());
}
