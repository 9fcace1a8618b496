//! End-to-end tests of `herd demo`: the real command, on this machine, as root and as a
//! plain user who cannot mount FUSE. They need root and fail (never skip) without it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Far above the demo's own time (about half a minute on a loaded 2-core machine): a
/// hang, not a performance bound.
const LIMIT: Duration = Duration::from_secs(600);

fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the demo tests need root (helpers mount FUSE and build sandboxes; the plain-user \
         test switches to uid 65534)"
    );
}

/// What a finished command printed.
struct Run {
    code: Option<i32>,
    pid: u32,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion (killing it after [`LIMIT`]), its output in files under
/// `scratch`.
fn run(mut cmd: Command, scratch: &Path) -> Run {
    let (out, err) = (scratch.join("stdout"), scratch.join("stderr"));
    let mut child = cmd
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start herd demo");
    let pid = child.id();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "herd demo did not finish within {LIMIT:?}:\n{}\n{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(200));
    };
    let r = Run {
        code: status.code(),
        pid,
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    };
    eprintln!("--- stdout\n{}--- stderr\n{}", r.stdout, r.stderr);
    r
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.display().to_string();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains(&needle) {
            found.push(format!("{name}: {line}"));
        }
    }
    found
}

/// Directories named `name` within three levels under /sys/fs/cgroup.
fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut level = vec![PathBuf::from("/sys/fs/cgroup")];
    for _ in 0..4 {
        let mut next = Vec::new();
        for dir in level {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if e.file_name() == name {
                    found.push(p.clone());
                }
                next.push(p);
            }
        }
        level = next;
    }
    found
}

/// Nothing of the demo is left: no file in `tmpdir`, no process naming it, no cgroup.
fn assert_nothing_left(tmpdir: &Path, pid: u32) {
    let left: Vec<_> = std::fs::read_dir(tmpdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the demo left files behind: {left:?}");
    let procs = processes_mentioning(tmpdir);
    assert!(
        procs.is_empty(),
        "the demo left processes behind: {procs:?}"
    );
    let groups = cgroups_named(&format!("herd-demo-{pid}"));
    assert!(
        groups.is_empty(),
        "the demo left cgroups behind: {groups:?}"
    );
}

#[test]
fn demo_spreads_a_batch_over_four_nodes_reports_the_speedup_and_cleans_up() {
    need_root();
    let tmpdir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(herd_bin());
    cmd.args(["demo", "--jobs", "8"])
        .env("TMPDIR", tmpdir.path())
        .env_remove("HERD_STATE");
    let r = run(cmd, scratch.path());
    assert_eq!(r.code, Some(0), "herd demo failed");

    // The spread: one line per node, in order, and every node ran some of the batch
    // (the first wave fills every free slot).
    let spread: Vec<&str> = r
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("how the jobs spread"))
        .skip(1)
        .take(4)
        .collect();
    let mut total = 0;
    for (line, name) in spread
        .iter()
        .zip(["workstation", "helper1", "helper2", "helper3"])
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&name), "spread line: {line:?}");
        let jobs: usize = words[1].parse().unwrap_or_else(|_| panic!("{line:?}"));
        assert!(jobs >= 1, "{name} ran no job: {line:?}");
        total += jobs;
    }
    assert_eq!(spread.len(), 4, "{}", r.stdout);
    assert_eq!(total, 8, "every job once: {spread:?}");

    let speedup = r
        .stdout
        .lines()
        .find(|l| l.starts_with("speedup vs one core: "))
        .unwrap_or_else(|| panic!("no speedup line in:\n{}", r.stdout));
    let factor: f64 = speedup["speedup vs one core: ".len()..]
        .split('x')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{speedup:?}"));
    assert!(factor > 0.0, "{speedup:?}");
    assert!(speedup.contains("cores on this machine") || speedup.contains("core on this machine"));
    assert!(
        r.stdout.contains("cannot exceed"),
        "the speedup's limit is explained"
    );
    assert!(r.stdout.contains("cleaned up: agents stopped"));

    assert_nothing_left(tmpdir.path(), r.pid);
}

#[test]
fn demo_as_a_plain_user_without_fuse_says_why_and_what_to_do() {
    need_root();
    // Whatever this machine's /dev/fuse allows, the demo's user cannot open it: in a
    // private mount namespace a root-only file lies over it.
    let stub_dir = tempfile::tempdir().unwrap();
    let stub = stub_dir.path().join("fuse");
    std::fs::write(&stub, "").unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(home.path(), Some(65534), Some(65534)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            r#"mount --bind "$1" /dev/fuse && exec setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$2" TMPDIR="$2" "$3" demo --jobs 2"#,
        )
        .arg("sh")
        .arg(&stub)
        .arg(home.path())
        .arg(herd_bin())
        .env_remove("HERD_STATE");
    let r = run(cmd, scratch.path());
    assert_eq!(r.code, Some(2), "a demo that cannot work exits 2");
    let reason = r
        .stderr
        .lines()
        .find(|l| l.starts_with("herd: demo: the helpers cannot run tasks here (as uid 65534)"))
        .unwrap_or_else(|| panic!("no reason line in:\n{}", r.stderr));
    if reason.contains("FUSE") {
        assert!(
            r.stderr.contains("/dev/fuse is mode 0600"),
            "says what blocks FUSE: {}",
            r.stderr
        );
    } else {
        // A kernel without unprivileged user namespaces fails one step earlier.
        assert!(reason.contains("namespace"), "{reason}");
        assert!(r.stderr.contains("allow unprivileged user namespaces"));
    }
    assert!(
        r.stderr.contains("run the demo as root"),
        "says what to do: {}",
        r.stderr
    );
    assert!(!r.stdout.contains("speedup"), "no batch ran");
    assert_nothing_left(home.path(), r.pid);
}
