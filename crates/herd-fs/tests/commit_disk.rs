//! A staging file system that runs out of space (bytes, then inodes): the commit
//! fails cleanly, nothing is applied and nothing is left. Mounts its own small tmpfs,
//! so it must run as root (it fails, never skips).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use herd_fs::changes::{ChangeError, Limits};
use herd_proto::fs::Change;

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(opts: &str) -> Tmpfs {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "this test mounts a tmpfs and must run as root"
        );
        Tmpfs(d)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn run(root: &Path, n: usize, size: usize) -> Result<(), ChangeError> {
    let logs = tempfile::tempdir().unwrap();
    let limits = Limits {
        reserve_bytes: 0,
        ..Limits::default()
    };
    let mut c = committer_with(root, "t", &["/w"], &[], logs.path(), limits);
    let data = vec![7u8; size];
    for i in 0..n {
        let s = file(&format!("/w/f{i}"), &data);
        let mut d = &s.data[..];
        let r: Option<&mut dyn std::io::Read> =
            matches!(s.change, Change::File { .. }).then_some(&mut d);
        c.stage(&s.change, r)?;
    }
    c.commit().map(|_| ())
}

#[test]
fn a_full_staging_file_system_fails_the_commit_cleanly() {
    // Bytes: 40 files of 100 KiB do not fit in 2 MiB.
    let t = Tmpfs::mount("size=2m");
    let root = t.0.path();
    fs::create_dir(root.join("w")).unwrap();
    fs::write(root.join("w/old"), b"old").unwrap();
    let before = snapshot(root);
    let e = run(root, 40, 100 << 10).unwrap_err();
    assert!(matches!(e, ChangeError::NoSpace { .. }), "{e}");
    assert!(e.to_string().contains("free some space"), "{e}");
    assert_eq!(snapshot(root), before);
    assert!(leftovers(&snapshot(root)).is_empty());
    // A change set that fits still commits.
    run(root, 5, 100 << 10).unwrap();
    assert!(root.join("w/f4").exists());

    // Inodes: the file system refuses the 30th file (ENOSPC while staging).
    let t = Tmpfs::mount("size=64m,nr_inodes=24");
    let root = t.0.path();
    fs::create_dir(root.join("w")).unwrap();
    let before = snapshot(root);
    let e = run(root, 40, 10).unwrap_err();
    assert!(
        matches!(&e, ChangeError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{e}"
    );
    assert_eq!(snapshot(root), before);
    assert!(leftovers(&snapshot(root)).is_empty());
}
