//! An executable a task wrote (committed to the workstation, then run by a later task)
//! is parsed by the workstation when the helper asks `Prefetch` for it:
//! `herd_fs::LocalSource::prefetch_closure` (and `herd_fs::elf::closure`) over a
//! temporary root whose executable, one library and `/etc/ld.so.conf` (and an included
//! file) hold the input's bytes.
//!
//! The input is split at the first two `\0\0\xff\xfe` markers: executable, library,
//! ld.so.conf text (the rest). Seeds: real ELF files (see README.md).
//!
//! Properties: never panics or hangs; at most `MAX_FILES` paths, each absolute with no
//! `..`; the bundle's data stays within `PREFETCH_BUDGET` (plus the files the budget
//! lets through whole).
#![no_main]

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use herd_fs::LocalSource;
use herd_fs::elf::{MAX_FILES, closure};
use libfuzzer_sys::fuzz_target;

fn root() -> &'static (tempfile::TempDir, PathBuf) {
    static R: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    R.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("herd-fuzz-elf")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let r = d.path().to_path_buf();
        for dir in ["bin", "etc/ld.so.conf.d", "lib/x86_64-linux-gnu", "usr/lib", "opt/l"] {
            fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::os::unix::fs::symlink("lib/x86_64-linux-gnu", r.join("lib64")).unwrap();
        std::os::unix::fs::symlink("libc.so.6", r.join("lib/x86_64-linux-gnu/libm.so.6")).unwrap();
        std::os::unix::fs::symlink("/bin/x", r.join("usr/lib/loop.so")).unwrap();
        (d, r)
    })
}

fn split<'a>(data: &'a [u8], marker: &[u8]) -> (&'a [u8], &'a [u8]) {
    match data.windows(marker.len()).position(|w| w == marker) {
        Some(i) => (&data[..i], &data[i + marker.len()..]),
        None => (data, &[]),
    }
}

fn plain(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir))
}

fuzz_target!(|data: &[u8]| {
    let (_, r) = root();
    let m = b"\0\0\xff\xfe";
    let (exe, rest) = split(data, m);
    let (lib, conf) = split(rest, m);
    fs::write(r.join("bin/x"), exe).unwrap();
    fs::write(r.join("lib/x86_64-linux-gnu/libc.so.6"), lib).unwrap();
    fs::write(r.join("opt/l/libz.so.1"), lib).unwrap();
    fs::write(r.join("etc/ld.so.conf"), conf).unwrap();
    fs::write(r.join("etc/ld.so.conf.d/x.conf"), conf).unwrap();
    if let Ok(c) = closure(r, Path::new("/bin/x")) {
        assert!(c.files.len() <= MAX_FILES);
        for f in &c.files {
            assert!(plain(f), "closure path {}", f.display());
        }
    }
    let src = LocalSource::new(r, vec![PathBuf::from("/etc/shadow")]);
    let b = src.prefetch_closure(Path::new("/bin/x"));
    assert!(b.len() <= MAX_FILES + 64);
    let total: usize = b.iter().filter_map(|p| p.data.as_ref()).map(|d| d.len()).sum();
    assert!(total <= herd_fs::source::PREFETCH_BUDGET);
    for p in &b {
        assert!(p.path.starts_with(b"/"));
    }
});
