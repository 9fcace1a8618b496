//! The hidden list is resolved again while the file service runs: a secret directory
//! made, replaced or turned into a link after it started is hidden by what it is now,
//! and the journal does not vouch for what it confirmed before.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use herd_fs::journal::Journal;
use herd_fs::{LocalSource, Source};
use herd_proto::fs::Version;

#[test]
fn a_secret_linked_in_after_the_start_is_hidden_once_refreshed() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let home = std::fs::canonicalize(dir.path()).unwrap().join("home/u");
    std::fs::create_dir_all(home.join("dotfiles/ssh")).unwrap();
    let key = home.join("dotfiles/ssh/id_rsa");
    std::fs::write(&key, b"PRIVATE KEY").unwrap();
    let src = LocalSource::new("/", vec![home.join(".ssh")]);
    let journal = Journal::new();
    let v = Version::from(&src.stat(&key).unwrap());
    let items = vec![(key.as_os_str().as_bytes().to_vec(), Some(v), None)];
    // Not a secret yet: confirmed, then vouched for by the journal.
    assert!(journal.validate(&src, &items).unwrap().is_empty());
    assert!(journal.validate(&src, &items).unwrap().is_empty());

    // Stow-style: ~/.ssh becomes a link to it.
    symlink("dotfiles/ssh", home.join(".ssh")).unwrap();
    assert!(src.refresh_hidden(false), "the hidden list changed");
    journal.forget();
    assert!(!src.refresh_hidden(false), "and is stable");
    assert!(src.read(&key, 0, 100).is_err());
    let stale = journal.validate(&src, &items).unwrap();
    assert_eq!(stale, vec![(0, None)], "the key is absent now");
}

#[test]
fn a_hard_link_made_after_the_start_is_hidden_once_indexed() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let home = std::fs::canonicalize(dir.path()).unwrap().join("home/u");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::create_dir_all(home.join("proj")).unwrap();
    let src = LocalSource::new("/", vec![home.join(".ssh")]);
    std::fs::write(home.join(".ssh/id_rsa"), b"PRIVATE KEY").unwrap();
    let other: PathBuf = home.join("proj/id");
    std::fs::hard_link(home.join(".ssh/id_rsa"), &other).unwrap();
    // Resolving the hidden paths again does not look below them; the index does.
    assert!(src.refresh_hidden(true));
    assert!(src.read(&other, 0, 100).is_err());
    assert!(src.stat(&other).is_err());
}
