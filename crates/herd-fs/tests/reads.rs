//! Reads a hostile helper might ask for: every one must miss what is hidden, through
//! `/proc`, links, `..`, bind mounts and hard links, and none may block the service.
//! Real temporary trees under `/var/tmp` and the real `/proc`, with `/` as the root.
//! Some need root (mounts): they fail rather than skip without it.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_fs::journal::Journal;
use herd_fs::source::MAX_READ;
use herd_fs::{LocalSource, Source};
use herd_proto::fs::{FileKind, Prefetched, Version};

/// A home with a secret directory and a project beside it.
struct Home {
    _dir: tempfile::TempDir,
    /// `<tmp>/home/u`.
    home: PathBuf,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let home = std::fs::canonicalize(dir.path()).unwrap().join("home/u");
        std::fs::create_dir_all(home.join(".ssh/keys")).unwrap();
        std::fs::write(home.join(".ssh/id_rsa"), b"PRIVATE KEY").unwrap();
        std::fs::write(home.join(".ssh/keys/deploy"), b"DEPLOY KEY").unwrap();
        std::fs::create_dir_all(home.join("proj")).unwrap();
        std::fs::write(home.join("proj/a.txt"), b"hello").unwrap();
        Home { _dir: dir, home }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.home.join(rel)
    }

    /// A source over `/` hiding `~/.ssh` (and `extra`, relative to the home).
    fn source(&self, extra: &[&str]) -> LocalSource {
        let mut hidden = vec![self.p(".ssh")];
        hidden.extend(extra.iter().map(|e| self.p(e)));
        LocalSource::new("/", hidden)
    }
}

/// The whole of a file through `src`.
fn read_all(src: &impl Source, path: &Path) -> Result<Vec<u8>, i32> {
    let mut out = Vec::new();
    loop {
        let chunk = src.read(path, out.len() as u64, MAX_READ)?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

fn names(src: &impl Source, dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = src
        .list(dir)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    n.sort();
    n
}

/// `path` as reached through `/proc/self/root` (and other magic roots).
fn through_proc(path: &Path) -> Vec<PathBuf> {
    let rel = path.strip_prefix("/").unwrap();
    ["/proc/self/root", "/proc/thread-self/root", "/proc/1/root"]
        .iter()
        .map(|r| Path::new(r).join(rel))
        .collect()
}

/// Unmounted (lazily) when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(args: &[&str], target: &Path) -> Mount {
        std::fs::create_dir_all(target).unwrap();
        let ok = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "mount {args:?} {} (root needed)",
            target.display()
        );
        Mount(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn honest_questions_are_answered() {
    let h = Home::new();
    let src = h.source(&[]);
    assert_eq!(read_all(&src, &h.p("proj/a.txt")).unwrap(), b"hello");
    assert_eq!(src.read(&h.p("proj/a.txt"), 1, 3).unwrap(), b"ell");
    assert_eq!(names(&src, &h.home), ["proj"]);
    symlink(".ssh", h.p("dotlink")).unwrap();
    // A link is answered as a link (the helper's kernel follows it).
    assert_eq!(src.stat(&h.p("dotlink")).unwrap().kind, FileKind::Symlink);
    assert_eq!(src.readlink(&h.p("dotlink")).unwrap(), Path::new(".ssh"));
    assert_eq!(names(&src, &h.home), ["dotlink", "proj"]);
    assert_eq!(src.stat(Path::new("/")).unwrap().kind, FileKind::Dir);
    // The sandbox mounts its own /proc and /dev over these: they stay visible.
    assert_eq!(src.stat(Path::new("/proc")).unwrap().kind, FileKind::Dir);
    assert!(names(&src, Path::new("/")).contains(&"proc".to_string()));
}

#[test]
fn hidden_paths_are_not_reached_through_proc_self_root() {
    let h = Home::new();
    let src = h.source(&[]);
    let key = h.p(".ssh/id_rsa");
    assert_eq!(read_all(&src, &key), Err(libc::ENOENT));
    for p in through_proc(&key) {
        assert!(read_all(&src, &p).is_err(), "{} was served", p.display());
        assert!(src.stat(&p).is_err(), "{}", p.display());
    }
    for p in through_proc(&h.p(".ssh")) {
        assert!(src.list(&p).is_err(), "{} was listed", p.display());
    }
}

#[test]
fn the_state_directory_is_not_reached_through_proc_self_root() {
    // The submitter is root here: only the hiding stands between a task and the CA.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let state = std::fs::canonicalize(dir.path()).unwrap().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("ca.key"), b"CA KEY").unwrap();
    let src = LocalSource::new("/", vec![state.clone()]);
    assert!(read_all(&src, &state.join("ca.key")).is_err());
    for p in through_proc(&state.join("ca.key")) {
        assert!(read_all(&src, &p).is_err(), "{} was served", p.display());
    }
}

#[test]
fn links_and_dotdot_do_not_reach_a_hidden_file() {
    let h = Home::new();
    symlink(".ssh", h.p("dotlink")).unwrap();
    symlink(&h.home, h.p("proj/abs")).unwrap();
    symlink("../.ssh/id_rsa", h.p("proj/key")).unwrap();
    let src = h.source(&[]);
    for p in [
        "dotlink/id_rsa",
        "dotlink/keys/deploy",
        "proj/abs/.ssh/id_rsa",
        "proj/../.ssh/id_rsa",
        "proj/key",
        "./.ssh/id_rsa",
    ] {
        let path = h.p(p);
        assert!(read_all(&src, &path).is_err(), "{p} was served");
        assert_ne!(
            src.stat(&path).map(|a| a.kind),
            Ok(FileKind::File),
            "{p} was stat'ed as the key"
        );
    }
    for p in ["dotlink", "proj/abs/.ssh", "proj/../.ssh"] {
        assert!(src.list(&h.p(p)).is_err(), "{p} was listed");
    }
    // The links themselves are there (the helper's kernel resolves them, and then
    // asks for the hidden path by its name).
    assert_eq!(
        src.readlink(&h.p("proj/key")).unwrap(),
        Path::new("../.ssh/id_rsa")
    );
}

#[test]
fn a_stow_style_ssh_hides_its_target() {
    let h = Home::new();
    std::fs::remove_dir_all(h.p(".ssh")).unwrap();
    std::fs::create_dir_all(h.p("dotfiles/ssh")).unwrap();
    std::fs::write(h.p("dotfiles/ssh/id_rsa"), b"PRIVATE KEY").unwrap();
    std::fs::write(h.p("dotfiles/vimrc"), b"set nu").unwrap();
    symlink("dotfiles/ssh", h.p(".ssh")).unwrap();
    let src = h.source(&[]);
    assert!(read_all(&src, &h.p("dotfiles/ssh/id_rsa")).is_err());
    assert!(src.stat(&h.p("dotfiles/ssh")).is_err());
    assert!(src.list(&h.p("dotfiles/ssh")).is_err());
    assert!(src.stat(&h.p(".ssh")).is_err());
    assert!(src.readlink(&h.p(".ssh")).is_err());
    // Listing hides both names: the link's in its directory, the target's in its.
    assert_eq!(names(&src, &h.home), ["dotfiles", "proj"]);
    assert_eq!(names(&src, &h.p("dotfiles")), ["vimrc"]);
    assert_eq!(read_all(&src, &h.p("dotfiles/vimrc")).unwrap(), b"set nu");
}

#[test]
fn proc_sys_and_dev_are_never_served() {
    let mut child = Command::new("sleep")
        .arg("30")
        .env("HERD_READS_MARKER", "token-5f1e")
        .spawn()
        .unwrap();
    let pid = child.id();
    let src = LocalSource::new("/", vec![]);
    let environ = PathBuf::from(format!("/proc/{pid}/environ"));
    let got = read_all(&src, &environ);
    let _ = child.kill();
    let _ = child.wait();
    assert!(got.is_err(), "the environment was served: {got:?}");
    for p in [
        "/proc/self/environ",
        "/proc/self/cmdline",
        "/proc/1/environ",
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/dev/null",
        "/dev/zero",
    ] {
        assert!(read_all(&src, Path::new(p)).is_err(), "{p} was served");
    }
    for p in ["/proc", "/proc/self", "/sys", "/sys/kernel", "/dev"] {
        assert!(src.list(Path::new(p)).is_err(), "{p} was listed");
    }
    assert!(src.stat(&environ).is_err());
}

#[test]
fn a_pseudo_file_system_elsewhere_is_never_served() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let p = std::fs::canonicalize(dir.path()).unwrap().join("p");
    let _m = Mount::new(&["-t", "proc", "proc"], &p);
    let src = LocalSource::new("/", vec![]);
    let environ = p.join("self/environ");
    assert!(
        read_all(&src, &environ).is_err(),
        "served through a proc mount"
    );
    assert!(read_all(&src, &p.join("1/environ")).is_err());
    assert!(src.list(&p).is_err());
    assert!(src.list(&p.join("self")).is_err());
}

#[test]
fn a_bind_mount_of_the_secret_directory_is_hidden() {
    let h = Home::new();
    let ssh = h.p(".ssh");
    let m = Mount::new(&["--bind", ssh.to_str().unwrap()], &h.p("proj/mirror"));
    let keys = h.p(".ssh/keys");
    let m2 = Mount::new(&["--bind", keys.to_str().unwrap()], &h.p("proj/keys"));
    let src = h.source(&[]);
    assert!(
        read_all(&src, &m.0.join("id_rsa")).is_err(),
        "through the mount"
    );
    assert!(read_all(&src, &m.0.join("keys/deploy")).is_err());
    assert!(src.list(&m.0).is_err());
    assert!(
        read_all(&src, &m2.0.join("deploy")).is_err(),
        "a subdirectory"
    );
    assert!(src.list(&m2.0).is_err());
    assert_eq!(names(&src, &h.p("proj")), ["a.txt"]);
}

#[test]
fn a_hard_link_to_a_hidden_file_is_hidden() {
    let h = Home::new();
    std::fs::write(h.p(".netrc"), b"machine x password p").unwrap();
    std::fs::hard_link(h.p(".netrc"), h.p("proj/netrc")).unwrap();
    std::fs::hard_link(h.p(".ssh/id_rsa"), h.p("proj/id")).unwrap();
    let src = h.source(&[".netrc"]);
    assert!(read_all(&src, &h.p("proj/netrc")).is_err(), "a hidden file");
    assert!(src.stat(&h.p("proj/netrc")).is_err());
    assert!(
        read_all(&src, &h.p("proj/id")).is_err(),
        "a file in a hidden directory"
    );
    assert_eq!(names(&src, &h.p("proj")), ["a.txt"]);
}

#[test]
fn a_fifo_or_a_device_is_not_read_and_does_not_block() {
    let h = Home::new();
    let fifo = h.p("proj/fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let dev = h.p("proj/zero");
    let ok = Command::new("mknod")
        .arg(&dev)
        .args(["c", "1", "5"])
        .status()
        .unwrap();
    assert!(ok.success(), "mknod (root needed)");
    let src = std::sync::Arc::new(h.source(&[]));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (src, fifo, dev) = (src.clone(), fifo.clone(), dev.clone());
        std::thread::spawn(move || {
            let _ = tx.send((src.read(&fifo, 0, 10), src.read(&dev, 0, 10)));
        });
    }
    let (f, d) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("reading a FIFO blocked the service");
    assert!(f.is_err(), "FIFO read: {f:?}");
    assert!(d.is_err(), "device read: {d:?}");
    // Their attributes are still reported: the view shows them.
    assert_eq!(src.stat(&fifo).unwrap().kind, FileKind::Fifo);
    assert_eq!(src.stat(&dev).unwrap().kind, FileKind::CharDev);
    let kinds: HashMap<Vec<u8>, FileKind> = src
        .list(&h.p("proj"))
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.attr.kind))
        .collect();
    assert_eq!(kinds.get(&b"fifo"[..]), Some(&FileKind::Fifo));
    assert_eq!(kinds.get(&b"zero"[..]), Some(&FileKind::CharDev));
}

/// Whether no ancestor of `path` is a symlink and it has no `.` or `..`.
fn link_free(path: &Path) -> bool {
    let b = path.as_os_str().as_bytes();
    if !b.starts_with(b"/")
        || b[1..]
            .split(|&c| c == b'/')
            .any(|c| c == b"." || c == b"..")
    {
        return false;
    }
    path.ancestors()
        .skip(1)
        .all(|a| std::fs::symlink_metadata(a).is_ok_and(|m| m.is_dir()))
}

fn bundle(items: &[Prefetched]) -> HashMap<PathBuf, &Prefetched> {
    items
        .iter()
        .map(|i| (PathBuf::from(std::ffi::OsStr::from_bytes(&i.path)), i))
        .collect()
}

#[test]
fn prefetch_of_a_hidden_executable_gets_nothing_hidden() {
    let h = Home::new();
    let tool = h.p(".ssh/tool");
    std::fs::copy("/usr/bin/true", &tool).unwrap();
    let bytes = std::fs::read(&tool).unwrap();
    symlink(".ssh", h.p("dotlink")).unwrap();
    let src = h.source(&[]);
    let mut asks = vec![tool.clone(), h.p("dotlink/tool")];
    asks.extend(through_proc(&tool));
    for exe in asks {
        let items = src.prefetch_closure(&exe);
        for i in &items {
            let p = PathBuf::from(std::ffi::OsStr::from_bytes(&i.path));
            assert_ne!(i.data.as_deref(), Some(&bytes[..]), "{}", exe.display());
            // A link may be reported (it is not what it points to); nothing else
            // whose object is in the hidden directory may.
            let real = std::fs::canonicalize(&p).ok();
            let link = i.attr.is_some_and(|a| a.kind == FileKind::Symlink);
            assert!(
                i.attr.is_none() || link || !real.is_some_and(|r| r.starts_with(h.p(".ssh"))),
                "{} answered hidden {}",
                exe.display(),
                p.display()
            );
        }
    }
}

#[test]
fn prefetch_through_a_hidden_library_gets_nothing_hidden() {
    // libc hidden by a path through the /lib link: its real path is hidden too, and
    // the closure of /usr/bin/true must not carry it.
    let libc = std::fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6");
    let Ok(libc) = libc else {
        eprintln!("no x86-64 libc here: nothing to check");
        return;
    };
    let bytes = std::fs::read(&libc).unwrap();
    let src = LocalSource::new("/", vec![PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")]);
    let items = src.prefetch_closure(&std::fs::canonicalize("/usr/bin/true").unwrap());
    assert!(!items.is_empty());
    for i in &items {
        let p = PathBuf::from(std::ffi::OsStr::from_bytes(&i.path));
        assert_ne!(
            i.data.as_deref(),
            Some(&bytes[..]),
            "libc's bytes in the bundle"
        );
        if i.attr.is_some() {
            assert_ne!(std::fs::canonicalize(&p).ok(), Some(libc.clone()), "{p:?}");
        }
    }
}

/// Follows `path` as the helper's kernel does in a view answered by `items`: every
/// component it looks up must be in the bundle, every link with its target; the
/// file at the end with its contents.
fn kernel_lookup(items: &HashMap<PathBuf, &Prefetched>, path: &Path) {
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    let mut cur = PathBuf::from("/");
    let mut rest: std::collections::VecDeque<std::ffi::OsString> =
        std::collections::VecDeque::new();
    let push = |rest: &mut std::collections::VecDeque<std::ffi::OsString>, p: &Path| {
        for c in p.components().rev() {
            if let std::path::Component::Normal(n) = c {
                rest.push_front(n.to_os_string());
            } else if matches!(c, std::path::Component::ParentDir) {
                rest.push_front("..".into());
            }
        }
    };
    push(&mut rest, &pending.pop().unwrap());
    let mut hops = 0;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let item = items
            .get(&next)
            .unwrap_or_else(|| panic!("{}: the kernel looks up {next:?}", path.display()));
        let attr = item.attr.expect("present");
        if attr.kind == FileKind::Symlink {
            hops += 1;
            assert!(hops < 40);
            let t = PathBuf::from(std::ffi::OsStr::from_bytes(
                item.target.as_ref().expect("a link's target"),
            ));
            if t.is_absolute() {
                cur = PathBuf::from("/");
            }
            push(&mut rest, &t);
        } else {
            cur = next;
        }
    }
    let last = items.get(&cur).unwrap();
    assert_eq!(last.attr.unwrap().kind, FileKind::File, "{cur:?}");
    assert!(last.data.is_some(), "{cur:?} without its contents");
}

#[test]
fn prefetch_names_what_the_helpers_kernel_looks_up() {
    let exe = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let src = LocalSource::new("/", vec![]);
    let items = src.prefetch_closure(&exe);
    let map = bundle(&items);
    for p in map.keys() {
        assert!(link_free(p), "{p:?} is a path through a link");
    }
    let out = Command::new("ldd").arg(&exe).output().unwrap();
    let mut loaded = vec![PathBuf::from("/lib64/ld-linux-x86-64.so.2")];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((_, r)) = line.split_once("=> ") {
            let p = r.split(" (").next().unwrap().trim();
            if p.starts_with('/') {
                loaded.push(PathBuf::from(p));
            }
        }
    }
    assert!(loaded.len() > 2, "{loaded:?}");
    for p in &loaded {
        if Path::new(p).exists() {
            kernel_lookup(&map, p);
        }
    }
}

#[test]
fn validation_reports_hidden_paths_absent() {
    let h = Home::new();
    symlink(".ssh", h.p("dotlink")).unwrap();
    let src = h.source(&[]);
    let open = LocalSource::new("/", vec![]);
    let key = h.p(".ssh/id_rsa");
    let v = Version::from(&open.stat(&key).unwrap());
    let mut asks = vec![
        key.clone(),
        h.p("dotlink/id_rsa"),
        h.p("proj/../.ssh/id_rsa"),
    ];
    asks.extend(through_proc(&key));
    let items: Vec<_> = asks
        .iter()
        .map(|p| (p.as_os_str().as_bytes().to_vec(), Some(v), None))
        .collect();
    let j = Journal::new();
    for round in 0..2 {
        let stale = j.validate(&src, &items).unwrap();
        assert_eq!(stale.len(), items.len(), "round {round}: {stale:?}");
        assert!(stale.iter().all(|(_, now)| now.is_none()), "{stale:?}");
    }
}
