//! File questions from a (hostile) helper, answered by the workstation's file service:
//! a `herd_fs::LocalSource` over a small temporary tree with a hidden `.ssh` directory,
//! answering like `herd_agent::fsserve::answer` (which is private, so its six lines are
//! repeated here: stat, list, read, readlink, prefetch, validate through a
//! `herd_fs::journal::Journal`). Up to eight questions per input share one source and
//! journal (as one service answers a task's questions), with `refresh_hidden` between
//! them as the service does after a task starts.
//!
//! The first byte picks the form: the rest as one framed `FsCall` (how the service
//! reads it), or questions built from the bytes with paths mostly taken from a list of
//! interesting ones (with fuzzer-chosen suffixes), which reaches deep paths sooner.
//!
//! The tree (built once) has `/home/u/.ssh` hidden, holding secret files, and around it
//! a relative and an absolute symlink into it, a hard link to a secret file, a FIFO, an
//! ELF executable (a copy of /bin/true, for prefetch), a `..` trap and a hidden path
//! that does not exist.
//!
//! Properties: never panics or blocks; no answer carries a secret file's bytes, an
//! attribute of any object inside the hidden directory (by inode: so a hard link does
//! not leak it either), a listing entry named like a hidden object, or a prefetched item
//! for a hidden path with anything in it.
#![no_main]

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use herd_fs::journal::Journal;
use herd_fs::LocalSource;
use herd_proto::fs::{Attr, FsCall, FsRequest, FsResponse, Version};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"-----BEGIN OPENSSH PRIVATE KEY----- s3cr3t-7f1c9a2e-herd-fuzz";
const SECRET2: &[u8] = b"deeper-secret-0b5e77d1-herd-fuzz";
/// Names that exist only inside the hidden directory.
const HIDDEN_NAMES: &[&[u8]] = &[b".ssh", b"id_secret", b"known_hosts", b"sub", b"deeper"];

struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Inodes of the hidden directory and of everything in it.
    hidden_inos: HashSet<u64>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("herd-fuzz-fsq")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let root = dir.path().to_path_buf();
        let p = |s: &str| root.join(s);
        use std::fs;
        use std::os::unix::fs::symlink;
        fs::create_dir_all(p("home/u/.ssh/sub")).unwrap();
        fs::create_dir_all(p("home/u/dir/inner")).unwrap();
        fs::create_dir_all(p("home/u/bin")).unwrap();
        fs::create_dir_all(p("usr/lib")).unwrap();
        fs::create_dir_all(p("proc/1")).unwrap();
        fs::create_dir_all(p("tmp")).unwrap();
        fs::write(p("home/u/.ssh/id_secret"), SECRET).unwrap();
        fs::write(p("home/u/.ssh/known_hosts"), SECRET).unwrap();
        fs::write(p("home/u/.ssh/sub/deeper"), SECRET2).unwrap();
        fs::write(p("home/u/a.txt"), b"hello world").unwrap();
        fs::write(p("home/u/dir/inner/b.txt"), b"public bytes").unwrap();
        fs::write(p("proc/1/environ"), b"pseudo").unwrap();
        fs::hard_link(p("home/u/.ssh/id_secret"), p("home/u/dir/alias")).unwrap();
        symlink(".ssh/id_secret", p("home/u/rel_link")).unwrap();
        symlink("/home/u/.ssh", p("home/u/abs_link")).unwrap();
        symlink("../u/.ssh", p("home/u/dir/up_link")).unwrap();
        symlink("/", p("home/u/root_link")).unwrap();
        let fifo = std::ffi::CString::new(p("home/u/pipe").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        if fs::copy("/bin/true", p("home/u/bin/tool")).is_err() {
            fs::write(p("home/u/bin/tool"), b"\x7fELF").unwrap();
        }
        fs::copy(p("home/u/bin/tool"), p("usr/lib/libc.so.6")).unwrap();
        let mut hidden_inos = HashSet::new();
        fn walk(d: &Path, out: &mut HashSet<u64>) {
            out.insert(std::fs::symlink_metadata(d).unwrap().ino());
            for e in std::fs::read_dir(d).unwrap() {
                let e = e.unwrap().path();
                let md = std::fs::symlink_metadata(&e).unwrap();
                out.insert(md.ino());
                if md.is_dir() {
                    walk(&e, out);
                }
            }
        }
        walk(&p("home/u/.ssh"), &mut hidden_inos);
        World {
            _dir: dir,
            root,
            hidden_inos,
        }
    })
}

const HIDDEN: &[&str] = &["/home/u/.ssh", "/home/u/.gnupg"];

const PATHS: &[&str] = &[
    "/",
    "/home",
    "/home/u",
    "/home/u/.ssh",
    "/home/u/.ssh/id_secret",
    "/home/u/.ssh/sub",
    "/home/u/.ssh/sub/deeper",
    "/home/u/.gnupg",
    "/home/u/a.txt",
    "/home/u/dir",
    "/home/u/dir/alias",
    "/home/u/dir/inner",
    "/home/u/dir/inner/b.txt",
    "/home/u/dir/up_link",
    "/home/u/rel_link",
    "/home/u/abs_link",
    "/home/u/abs_link/id_secret",
    "/home/u/root_link",
    "/home/u/root_link/home/u/.ssh/id_secret",
    "/home/u/pipe",
    "/home/u/bin/tool",
    "/usr/lib/libc.so.6",
    "/proc",
    "/proc/1/environ",
    "/tmp",
    "/home/u/../u/.ssh/id_secret",
    "/home//u/./.ssh/id_secret",
    "/home/u/.ssh/",
];

/// Whether `p` names the hidden directory or something below it, by name (`None`: it
/// has `..`, which the source refuses; not judged by name).
fn hidden_by_name(p: &[u8]) -> Option<bool> {
    let mut names = Vec::new();
    for c in Path::new(OsStr::from_bytes(p)).components() {
        match c {
            Component::Normal(n) => names.push(n.as_bytes()),
            Component::ParentDir => return None,
            _ => {}
        }
    }
    Some(
        names.len() >= 3
            && names[0] == b"home"
            && names[1] == b"u"
            && (names[2] == b".ssh" || names[2] == b".gnupg"),
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn check_bytes(what: &str, b: &[u8]) {
    // Any 16-byte piece of a secret is a leak (a read at an offset).
    for s in [SECRET, SECRET2] {
        for w in s.windows(16) {
            assert!(!contains(b, w), "{what} carries secret bytes");
        }
    }
}

fn check_attr(w: &World, what: &str, a: &Attr) {
    assert!(
        !w.hidden_inos.contains(&a.ino),
        "{what}: attributes of a hidden object (inode {})",
        a.ino
    );
}

fn check(w: &World, req: &FsRequest, resp: &FsResponse) {
    match resp {
        FsResponse::Attr(a) => check_attr(w, "stat", a),
        FsResponse::Entries(es) => {
            for e in es {
                check_attr(w, "listing", &e.attr);
                assert!(
                    !HIDDEN_NAMES.contains(&e.name.as_slice()),
                    "listing names hidden {:?}",
                    String::from_utf8_lossy(&e.name)
                );
            }
        }
        FsResponse::Data(d) => check_bytes("read", d),
        FsResponse::Target(_) => {}
        FsResponse::Bundle(b) => {
            for p in b {
                if let Some(a) = &p.attr {
                    check_attr(w, "prefetch", a);
                }
                if let Some(d) = &p.data {
                    check_bytes("prefetch", d);
                }
                if hidden_by_name(&p.path) == Some(true) {
                    assert!(
                        p.attr.is_none() && p.data.is_none() && p.target.is_none(),
                        "prefetch answers for hidden {:?}",
                        String::from_utf8_lossy(&p.path)
                    );
                }
            }
        }
        FsResponse::Stale(s) => {
            let FsRequest::Validate { items } = req else {
                panic!("stale answer to another question");
            };
            for (i, a) in s {
                let item = items.get(*i as usize).expect("a stale index names an item");
                if let Some(a) = a {
                    check_attr(w, "validate", a);
                    assert_ne!(hidden_by_name(&item.0), Some(true), "validate reveals hidden");
                }
            }
        }
        FsResponse::Errno(e) => assert!(*e > 0, "errno {e}"),
    }
}

fn path(w: &World, u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => Vec::<u8>::arbitrary(u)?.into_iter().take(256).collect(),
        1 => {
            // A real path of the tree with a fuzzer-chosen tail.
            let mut p = u.choose(PATHS)?.as_bytes().to_vec();
            p.extend(Vec::<u8>::arbitrary(u)?.into_iter().take(32));
            p
        }
        2 => {
            // The real absolute path of the root (a link target the service meets).
            let mut p = w.root.as_os_str().as_bytes().to_vec();
            p.extend_from_slice(u.choose(PATHS)?.as_bytes());
            p
        }
        _ => u.choose(PATHS)?.as_bytes().to_vec(),
    })
}

fn version(w: &World, u: &mut Unstructured<'_>, p: &[u8]) -> arbitrary::Result<Option<Version>> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => None,
        1 => Some(Version {
            ino: u.arbitrary()?,
            mtime_ns: u.arbitrary()?,
            ctime_ns: u.arbitrary()?,
            size: u.arbitrary()?,
        }),
        // The version there now (seen through the real path), so items can be clean.
        _ => std::fs::symlink_metadata(w.root.join(OsStr::from_bytes(p.strip_prefix(b"/").unwrap_or(p))))
            .ok()
            .map(|m| Version {
                ino: m.ino(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
                size: m.size(),
            }),
    })
}

fn request(w: &World, u: &mut Unstructured<'_>) -> arbitrary::Result<FsRequest> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => FsRequest::Stat { path: path(w, u)? },
        1 => FsRequest::List { path: path(w, u)? },
        2 => FsRequest::Read {
            path: path(w, u)?,
            offset: if u.arbitrary()? { u.int_in_range(0..=64)? } else { u.arbitrary()? },
            len: if u.arbitrary()? { u.int_in_range(0..=256)? } else { u.arbitrary()? },
        },
        3 => FsRequest::ReadLink { path: path(w, u)? },
        4 => FsRequest::Prefetch { path: path(w, u)? },
        _ => {
            let n = u.int_in_range(0..=12)?;
            let mut items = Vec::new();
            for _ in 0..n {
                let p = path(w, u)?;
                let v = version(w, u, &p)?;
                let d: Option<[u8; 32]> = if u.arbitrary()? { Some(u.arbitrary()?) } else { None };
                items.push((p, v, d));
            }
            FsRequest::Validate { items }
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let hidden: Vec<PathBuf> = HIDDEN.iter().map(PathBuf::from).collect();
    let src = LocalSource::new(&w.root, hidden);
    let journal = Journal::new();
    let mut reqs = Vec::new();
    if sel & 1 == 0 {
        if let Ok(call) = herd_proto::decode::<FsCall>(rest) {
            reqs.push((call.req, false));
        }
    } else {
        let mut u = Unstructured::new(rest);
        for _ in 0..8 {
            let Ok(r) = request(w, &mut u) else { break };
            let refresh = u.arbitrary::<bool>().unwrap_or(false);
            reqs.push((r, refresh));
            if u.is_empty() {
                break;
            }
        }
    }
    for (req, refresh) in reqs {
        let resp = herd_agent::fsserve::answer(&src, &journal, req.clone());
        check(w, &req, &resp);
        if refresh && src.refresh_hidden(true) {
            journal.forget();
        }
    }
});
