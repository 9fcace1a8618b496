//! The dynamic-loading closure against this machine's binaries, `ldd`, prepared roots,
//! binaries built with gcc, and garbage.

use std::collections::HashSet;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use herd_fs::elf::{Closure, closure};

const INTERP: &str = "/lib64/ld-linux-x86-64.so.2";

/// The closure's files plus their canonical forms.
fn canonical_set(c: &Closure) -> HashSet<PathBuf> {
    let mut set: HashSet<PathBuf> = c.files.iter().cloned().collect();
    set.extend(c.files.iter().filter_map(|p| std::fs::canonicalize(p).ok()));
    set
}

/// The first symlink met resolving `path` (the path itself if none is): what the
/// closure lists first for it.
fn first_lookup(path: &Path) -> PathBuf {
    let mut p = PathBuf::from("/");
    for c in path.components().skip(1) {
        p.push(c);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) {
            return p;
        }
    }
    p
}

/// Whether no proper ancestor of `path` is a symlink, and it has no `.` or `..`: a
/// path the view is asked for as it is.
fn link_free(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path
            .ancestors()
            .skip(1)
            .all(|a| std::fs::symlink_metadata(a).is_ok_and(|m| m.is_dir()))
}

/// The paths `ldd` lists for `exe` (not the vDSO).
fn ldd(exe: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(exe).output().expect("run ldd");
    assert!(out.status.success(), "ldd {} failed", exe.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            let path = path.split(" (").next().unwrap_or_default().trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Checks the closure of a system binary: the interpreter and its target, the cache,
/// libc, every library `ldd` lists, and the `expected` library name prefixes.
fn check_system(exe: &str, expected: &[&str]) {
    let exe = Path::new(exe);
    if !exe.exists() {
        eprintln!("{} is not on this machine: nothing to check", exe.display());
        return;
    }
    let c = closure(Path::new("/"), exe).expect("closure");
    let files = canonical_set(&c);
    assert!(
        c.not_found.is_empty(),
        "{}: not found {:?}",
        exe.display(),
        c.not_found
    );
    if cfg!(target_arch = "x86_64") {
        assert_eq!(c.files[0], first_lookup(Path::new(INTERP)), "{c:#?}");
        let target = std::fs::canonicalize(INTERP).unwrap();
        assert!(
            c.files.contains(&target),
            "{} lacks {target:?}",
            exe.display()
        );
    }
    if Path::new("/etc/ld.so.cache").exists() {
        assert!(c.files.contains(&PathBuf::from("/etc/ld.so.cache")));
    }
    assert!(
        c.files.iter().any(|p| {
            p.file_name().is_some_and(|n| n == "libc.so.6")
                && p.components()
                    .any(|c| c.as_os_str().to_string_lossy().starts_with("lib"))
        }),
        "{}: no libc.so.6 in {:#?}",
        exe.display(),
        c.files
    );
    for name in expected {
        assert!(
            c.files.iter().any(|p| p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(name))),
            "{}: no {name} in {:#?}",
            exe.display(),
            c.files
        );
    }
    for path in ldd(exe) {
        let canonical = std::fs::canonicalize(&path).unwrap();
        assert!(
            files.contains(&canonical),
            "{}: ldd lists {} ({}) but the closure is {:#?}",
            exe.display(),
            path.display(),
            canonical.display(),
            c.files
        );
    }
    for p in &c.files {
        assert!(
            p.is_absolute() && std::fs::symlink_metadata(p).is_ok(),
            "{p:?}"
        );
        assert!(link_free(p), "{p:?} goes through a link");
    }
    let unique: HashSet<_> = c.files.iter().collect();
    assert_eq!(unique.len(), c.files.len(), "duplicates in {:#?}", c.files);
}

#[test]
fn dash_matches_ldd() {
    check_system("/bin/sh", &[]);
}

#[test]
fn python3_matches_ldd() {
    check_system("/usr/bin/python3", &["libm.so"]);
}

#[test]
fn gcc_matches_ldd() {
    check_system("/usr/bin/gcc", &[]);
}

#[test]
fn cc1_matches_ldd() {
    check_system(
        "/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
        &["libmpc", "libmpfr", "libgmp", "libzstd"],
    );
}

#[test]
fn closure_is_stable() {
    let a = closure(Path::new("/"), Path::new("/bin/true")).unwrap();
    let b = closure(Path::new("/"), Path::new("/bin/true")).unwrap();
    assert_eq!(a, b);
}

#[test]
fn shell_script_has_empty_closure() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("script"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(dir.path().join("empty"), "").unwrap();
    for name in ["script", "empty"] {
        let c = closure(Path::new("/"), &dir.path().join(name)).unwrap();
        assert_eq!(c, Closure::default(), "{name}");
    }
}

#[test]
fn missing_or_relative_executable_is_an_error_naming_it() {
    let err = closure(Path::new("/"), Path::new("/no/such/exe")).unwrap_err();
    assert!(err.to_string().contains("/no/such/exe"), "{err}");
    let err = closure(Path::new("/"), Path::new("bin/true")).unwrap_err();
    assert!(err.to_string().contains("bin/true"), "{err}");
}

#[test]
fn directories_and_pipes_have_empty_closures() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    for path in [dir.path(), fifo.as_path(), Path::new("/dev/null")] {
        let c = closure(Path::new("/"), path).unwrap();
        assert_eq!(c, Closure::default(), "{}", path.display());
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn garbled_elf_never_panics() {
    let original = std::fs::read("/bin/true").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbled");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Truncations: every length through the headers, then coarser.
    for len in (0..1024).chain((1024..original.len()).step_by(977)) {
        cases.push(original[..len].to_vec());
    }
    // Flipped bytes, mostly in the headers and the dynamic section.
    for _ in 0..400 {
        let mut bytes = original.clone();
        for _ in 0..1 + rng.below(8) {
            let at = if rng.below(2) == 0 {
                rng.below(4096.min(bytes.len()))
            } else {
                rng.below(bytes.len())
            };
            bytes[at] = rng.next() as u8;
        }
        cases.push(bytes);
    }
    // The magic followed by noise.
    for _ in 0..100 {
        let mut bytes = b"\x7fELF".to_vec();
        bytes.extend((0..rng.below(512)).map(|_| rng.next() as u8));
        cases.push(bytes);
    }
    let mut errors = 0;
    for bytes in &cases {
        std::fs::write(&path, bytes).unwrap();
        match closure(Path::new("/"), &path) {
            Ok(c) => assert!(c.files.len() <= herd_fs::elf::MAX_FILES),
            Err(e) => {
                errors += 1;
                assert!(e.to_string().contains("garbled"), "{e}");
            }
        }
    }
    assert!(errors > 0, "no garbled case was refused");
}

/// Copies a host file to the same path under `root`.
fn copy_in(root: &Path, host: &Path, to: &str) {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(host, dest).unwrap();
}

fn write_in(root: &Path, to: &str, contents: &[u8]) {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(dest, contents).unwrap();
}

/// A root holding /bin/true, its libraries in /opt/libs (found only through
/// /etc/ld.so.conf and an included file), and the interpreter behind an absolute
/// symlink.
fn prepared_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    copy_in(root, Path::new("/bin/true"), "/usr/bin/true");
    copy_in(
        root,
        &std::fs::canonicalize(INTERP).unwrap(),
        "/opt/libs/ld-linux-x86-64.so.2",
    );
    let host = closure(Path::new("/"), Path::new("/bin/true")).unwrap();
    let libc = host
        .files
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "libc.so.6"))
        .unwrap();
    copy_in(
        root,
        &std::fs::canonicalize(libc).unwrap(),
        "/opt/libs/libc.so.6",
    );
    std::fs::create_dir_all(root.join("lib64")).unwrap();
    symlink(
        "/opt/libs/ld-linux-x86-64.so.2",
        root.join("lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    write_in(
        root,
        "/etc/ld.so.conf",
        b"# comment\ninclude ld.so.conf.d/*.conf\n",
    );
    write_in(root, "/etc/ld.so.conf.d/libs.conf", b"/opt/libs\n");
    dir
}

#[test]
fn resolves_inside_prepared_root() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = prepared_root();
    let c = closure(dir.path(), Path::new("/usr/bin/true")).unwrap();
    assert_eq!(
        c.files,
        [
            "/lib64/ld-linux-x86-64.so.2",
            "/opt/libs/ld-linux-x86-64.so.2",
            "/opt/libs/libc.so.6",
        ]
        .map(PathBuf::from),
    );
    assert!(c.not_found.is_empty());
}

#[test]
fn incompatible_candidates_are_skipped() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = prepared_root();
    let root = dir.path();
    // Earlier directories hold a text file and an aarch64-stamped libc.
    let mut arm = std::fs::read(root.join("opt/libs/libc.so.6")).unwrap();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    write_in(root, "/opt/arm/libc.so.6", &arm);
    write_in(root, "/opt/text/libc.so.6", b"INPUT(-lc)\n");
    write_in(root, "/etc/ld.so.conf.d/a.conf", b"/opt/text\n/opt/arm\n");
    let c = closure(root, Path::new("/usr/bin/true")).unwrap();
    assert_eq!(c.files.last().unwrap(), Path::new("/opt/libs/libc.so.6"));
    assert!(
        !c.files
            .iter()
            .any(|p| p.starts_with("/opt/arm") || p.starts_with("/opt/text"))
    );
}

#[test]
fn symlinks_cannot_leave_the_root() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = prepared_root();
    let root = dir.path();
    // /opt/libs/libc.so.6 now points far above the root: it resolves to the root's
    // own /usr/lib/..., which does not exist, never to the host's libc.
    std::fs::remove_file(root.join("opt/libs/libc.so.6")).unwrap();
    symlink(
        "../../../../../../../../usr/lib/x86_64-linux-gnu/libc.so.6",
        root.join("opt/libs/libc.so.6"),
    )
    .unwrap();
    // A loop must end too.
    write_in(root, "/etc/ld.so.conf.d/0.conf", b"/opt/loop\n");
    std::fs::create_dir_all(root.join("opt/loop")).unwrap();
    symlink("libc.so.6", root.join("opt/loop/libc.so.6")).unwrap();
    let c = closure(root, Path::new("/usr/bin/true")).unwrap();
    assert_eq!(c.not_found, ["libc.so.6"]);
    assert!(c.files.iter().all(|p| !p.ends_with("libc.so.6")), "{c:#?}");
}

/// Builds `tmp/lib/libx.so` and `tmp/bin/app` linked with `$ORIGIN/../lib` (as
/// DT_RUNPATH, or DT_RPATH with `old_tags`), checks the closure finds the library
/// and that the real loader agrees.
fn check_origin(old_tags: bool) {
    let gcc = Path::new("/usr/bin/gcc");
    if !gcc.exists() {
        eprintln!("no gcc on this machine: nothing to check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmp = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir_all(tmp.join("lib")).unwrap();
    std::fs::create_dir_all(tmp.join("bin")).unwrap();
    std::fs::write(tmp.join("x.c"), "int x(void) { return 42; }\n").unwrap();
    std::fs::write(
        tmp.join("main.c"),
        "int x(void);\nint main(void) { return x() == 42 ? 0 : 1; }\n",
    )
    .unwrap();
    let ok = Command::new(gcc)
        .current_dir(&tmp)
        .args(["-shared", "-fPIC", "-o", "lib/libx.so", "x.c"])
        .status()
        .unwrap();
    assert!(ok.success());
    let tags = if old_tags {
        "-Wl,--disable-new-dtags"
    } else {
        "-Wl,--enable-new-dtags"
    };
    let ok = Command::new(gcc)
        .current_dir(&tmp)
        .args([
            "-o",
            "bin/app",
            "main.c",
            "-Llib",
            "-lx",
            "-Wl,-rpath,$ORIGIN/../lib",
            tags,
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(
        Command::new(tmp.join("bin/app"))
            .status()
            .unwrap()
            .success()
    );

    let c = closure(Path::new("/"), &tmp.join("bin/app")).unwrap();
    assert!(c.not_found.is_empty(), "{c:#?}");
    assert!(c.files.contains(&tmp.join("lib/libx.so")), "{c:#?}");
    // Found as `bin/../lib/libx.so`: listed as the kernel finds it.
    assert!(c.files.iter().all(|p| link_free(p)), "{c:#?}");
    let lib = c
        .files
        .iter()
        .position(|p| p == &tmp.join("lib/libx.so"))
        .unwrap();
    let libc = c
        .files
        .iter()
        .position(|p| p.ends_with("libc.so.6"))
        .unwrap();
    assert!(lib < libc, "libx.so is needed first: {c:#?}");

    // Through a symlink to the executable, $ORIGIN is still the real directory.
    symlink(tmp.join("bin/app"), tmp.join("app-link")).unwrap();
    let through = closure(Path::new("/"), &tmp.join("app-link")).unwrap();
    assert_eq!(through, c);
}

#[test]
fn origin_runpath_with_gcc() {
    check_origin(false);
}

#[test]
fn origin_rpath_with_gcc() {
    check_origin(true);
}

/// Runs gcc in `dir`.
fn gcc(dir: &Path, args: &[&str]) {
    let ok = Command::new("/usr/bin/gcc")
        .current_dir(dir)
        .args(args)
        .status()
        .unwrap();
    assert!(ok.success(), "gcc {args:?}");
}

/// `app` (with `$ORIGIN/../lib:$ORIGIN/../lib2` and a 5,000-byte element) needs
/// `libx.so` in `lib`, which needs `liby.so` in `lib2` and has no path of its own.
/// A DT_RPATH is inherited, so `liby.so` is found; a DT_RUNPATH is not, so it is
/// missing. The real loader must agree in both cases.
fn check_inherited(old_tags: bool) {
    if !Path::new("/usr/bin/gcc").exists() {
        eprintln!("no gcc on this machine: nothing to check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmp = std::fs::canonicalize(dir.path()).unwrap();
    for d in ["bin", "lib", "lib2"] {
        std::fs::create_dir_all(tmp.join(d)).unwrap();
    }
    std::fs::write(tmp.join("y.c"), "int y(void) { return 41; }\n").unwrap();
    std::fs::write(
        tmp.join("x.c"),
        "int y(void);\nint x(void) { return y() + 1; }\n",
    )
    .unwrap();
    std::fs::write(
        tmp.join("main.c"),
        "int x(void);\nint main(void) { return x() == 42 ? 0 : 1; }\n",
    )
    .unwrap();
    gcc(&tmp, &["-shared", "-fPIC", "-o", "lib2/liby.so", "y.c"]);
    gcc(
        &tmp,
        &[
            "-shared",
            "-fPIC",
            "-o",
            "lib/libx.so",
            "x.c",
            "-Llib2",
            "-ly",
        ],
    );
    let long = "/nonexistent/".to_string() + &"d".repeat(5000);
    let rpath = format!("-Wl,-rpath,$ORIGIN/../lib:{long}:$ORIGIN/../lib2");
    let tags = if old_tags {
        "-Wl,--disable-new-dtags"
    } else {
        "-Wl,--enable-new-dtags"
    };
    gcc(
        &tmp,
        &[
            "-o",
            "bin/app",
            "main.c",
            "-Llib",
            "-lx",
            "-Wl,-rpath-link,lib2",
            &rpath,
            tags,
        ],
    );
    let runs = Command::new(tmp.join("bin/app"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();

    let c = closure(Path::new("/"), &tmp.join("bin/app")).unwrap();
    assert!(c.files.contains(&tmp.join("lib/libx.so")), "{c:#?}");
    let found_y = c.files.contains(&tmp.join("lib2/liby.so"));
    assert_eq!(found_y, old_tags, "{c:#?}");
    assert_eq!(c.not_found.is_empty(), old_tags, "{c:#?}");
    assert_eq!(runs, old_tags, "the loader disagrees: {c:#?}");
}

#[test]
fn inherited_rpath_with_gcc() {
    check_inherited(true);
}

#[test]
fn runpath_is_not_inherited_with_gcc() {
    check_inherited(false);
}
