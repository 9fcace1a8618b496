//! Mounts a real FUSE view of a local tree and reads it through the kernel. Needs
//! root (FUSE mounts); fails, never skips, without it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use herd_fs::{LocalSource, View, mount};

fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("home/u/.ssh")).unwrap();
    std::fs::create_dir_all(p.join("home/u/src/sub")).unwrap();
    std::fs::write(p.join("home/u/.ssh/id_ed25519"), b"secret").unwrap();
    std::fs::write(p.join("home/u/src/a.c"), b"int main(){return 0;}\n").unwrap();
    std::fs::write(p.join("home/u/src/sub/b.txt"), vec![7u8; 300_000]).unwrap();
    std::fs::set_permissions(
        p.join("home/u/src/a.c"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/b.txt", p.join("home/u/src/link")).unwrap();
    d
}

#[test]
fn a_view_shows_the_tree_read_only_without_hidden_paths() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test mounts FUSE and must run as root"
    );
    let src_dir = tree();
    let mnt = tempfile::tempdir().unwrap();
    let src = LocalSource::new(src_dir.path(), vec![PathBuf::from("/home/u/.ssh")]);
    let view = View::new(src).unwrap();
    let questions = view.questions();
    let seen = view.seen();
    let m = mount(view, mnt.path()).unwrap();
    let v = mnt.path();

    // Contents, sizes, modes, symlinks come through.
    assert_eq!(
        std::fs::read(v.join("home/u/src/a.c")).unwrap(),
        b"int main(){return 0;}\n"
    );
    let big = std::fs::read(v.join("home/u/src/sub/b.txt")).unwrap();
    assert_eq!(big.len(), 300_000);
    assert!(big.iter().all(|&b| b == 7));
    let md = std::fs::metadata(v.join("home/u/src/a.c")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!(
        std::fs::read_link(v.join("home/u/src/link")).unwrap(),
        PathBuf::from("sub/b.txt")
    );
    assert_eq!(
        std::fs::read(v.join("home/u/src/link")).unwrap().len(),
        300_000
    );

    // Hidden paths do not exist, and are not listed.
    assert_eq!(
        std::fs::metadata(v.join("home/u/.ssh")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    let mut names: Vec<_> = std::fs::read_dir(v.join("home/u"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["src"]);

    // Read-only.
    let err = std::fs::write(v.join("home/u/src/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    // A listing brings attributes: stat-ing every entry afterwards asks nothing more.
    let before = questions.load(Ordering::Relaxed);
    let entries: Vec<_> = std::fs::read_dir(v.join("home/u/src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let after_list = questions.load(Ordering::Relaxed);
    for e in &entries {
        std::fs::symlink_metadata(e).unwrap();
    }
    assert!(std::fs::metadata(v.join("home/u/src/missing")).is_err());
    let after_stats = questions.load(Ordering::Relaxed);
    assert_eq!(after_list - before, 1, "one question for the listing");
    assert_eq!(
        after_stats, after_list,
        "no question per entry, nor for a name the listing lacks"
    );

    // What the task saw is remembered for the commit's conflict checks.
    use herd_proto::fs::Base;
    assert!(
        matches!(seen.base(std::path::Path::new("/home/u/src/a.c")), Base::Seen(v) if v.size == 22)
    );
    assert_eq!(
        seen.base(std::path::Path::new("/home/u/src/missing")),
        Base::Absent
    );
    assert_eq!(
        seen.base(std::path::Path::new("/etc/never-looked")),
        Base::Unseen
    );

    m.unmount().unwrap();
    assert!(std::fs::read_dir(v).unwrap().next().is_none(), "unmounted");
}
