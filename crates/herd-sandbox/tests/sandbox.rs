//! End-to-end tests of the sandbox: real namespaces, mounts, cgroups and processes.
//!
//! They need root (CI runs them as root) and fail, not skip, without it. Most use the
//! machine's own root filesystem as the lower layer; some a prepared minimal root (a copy
//! of dash and its libraries). Layers live under /tmp, which the task's private /tmp
//! hides from it.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;

use herd_sandbox::{
    CgroupSpec, DEV_ENTRIES, Mode, SandboxError, SandboxSpec, StdioFd, TaskExit, TaskStdio, probe,
    spawn,
};

mod common;

use common::*;

impl Layers {
    fn new() -> Layers {
        Layers::new_in("herd-sandbox-test")
    }
    /// A spec with lower `lower` running `sh -c script` as nobody.
    fn spec(&self, lower: &Path, script: &str) -> SandboxSpec {
        SandboxSpec::new(
            lower,
            self.upper(),
            self.work(),
            argv(&["/bin/sh", "-c", script]),
        )
    }
}

fn argv(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

/// A minimal root: dash as /bin/sh with its libraries, /proc, /dev, /tmp, and the given
/// files; everything owned by `owner`.
fn minimal_root(base: &Path, owner: u32, files: &[(&str, &str)]) -> PathBuf {
    let root = base.join("lower");
    for d in [
        "bin",
        "lib/x86_64-linux-gnu",
        "lib64",
        "proc",
        "dev",
        "tmp",
        "home/u",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/usr/bin/dash", root.join("bin/sh")).unwrap();
    let ldd = Command::new("ldd").arg("/usr/bin/dash").output().unwrap();
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            let to = root.join(word.trim_start_matches('/'));
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(word, &to).unwrap();
        }
    }
    for (name, content) in files {
        let p = root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    Command::new("chown")
        .arg("-R")
        .arg(format!("{owner}:{owner}"))
        .arg(&root)
        .status()
        .unwrap();
    root
}

fn run_ok(spec: SandboxSpec) -> String {
    let out = run(spec);
    assert_eq!(
        out.exit,
        TaskExit::Exited(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// A unique name for files and markers of one test.
fn unique(tag: &str) -> String {
    format!("herd-sbx-{tag}-{}", std::process::id())
}

/// Host pids of `sleep MARKER` processes.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with(&format!("sleep {marker}")) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn writes_land_in_upper_and_not_in_lower() {
    let l = Layers::new();
    let name = unique("write");
    // Owned by the task's root (the workstation's root, as a root helper's view shows it).
    let lower = minimal_root(
        l.dir.path(),
        herd_sandbox::TASK_ID_BASE,
        &[
            ("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
            ("var/tmp/.keep", ""),
        ],
    );
    let mut spec = l.spec(
        &lower,
        &format!("echo hello > /var/tmp/{name} && echo root > /etc/{name}"),
    );
    spec.uid = 0;
    spec.gid = 0;
    run_ok(spec);
    assert_eq!(
        fs::read_to_string(l.upper().join("var/tmp").join(&name)).unwrap(),
        "hello\n"
    );
    assert_eq!(
        fs::read_to_string(l.upper().join("etc").join(&name)).unwrap(),
        "root\n"
    );
    assert!(!lower.join("var/tmp").join(&name).exists());
    assert!(!lower.join("etc").join(&name).exists());
}

/// The attack: a task submitted as root, on a root helper, tries to act as the helper's
/// root. Its uid 0 is the helper's `TASK_ID_BASE`: the helper's own root-owned files
/// (the lower here is the helper's `/`) are not its own, whatever its uid says.
#[test]
fn a_root_task_is_not_the_helpers_root() {
    let l = Layers::new();
    let name = unique("rootwrite");
    let script = format!(
        "id -u; cat /proc/self/uid_map; stat -c %u /etc/passwd; \
         {{ echo x > /etc/{name}; }} 2>/dev/null || echo refused-etc; \
         {{ echo x >> /etc/passwd; }} 2>/dev/null || echo refused-passwd; \
         echo x > /var/tmp/{name} && stat -c %u /var/tmp/{name}"
    );
    let mut spec = l.spec(Path::new("/"), &script);
    spec.uid = 0;
    spec.gid = 0;
    let out = run_ok(spec);
    let base = herd_sandbox::TASK_ID_BASE;
    let count = herd_sandbox::TASK_ID_COUNT;
    let want = format!(
        "0\n{:>10} {:>10} {:>10}\n65534\nrefused-etc\nrefused-passwd\n0\n",
        0, base, count
    );
    assert_eq!(out, want);
    assert!(!Path::new("/etc").join(&name).exists());
    // On the helper, the file the task wrote belongs to the task's range, not to root.
    let made = fs::symlink_metadata(l.upper().join("var/tmp").join(&name)).unwrap();
    assert_eq!((made.uid(), made.gid()), (base, base));
}

#[test]
fn a_private_upper_directory_does_not_lock_the_task_out_of_root() {
    let l = Layers::new();
    fs::set_permissions(l.upper(), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(run_ok(l.spec(Path::new("/"), "stat -c %a /")), "755\n");
}

#[test]
fn many_sandboxes_start_concurrently_from_a_threaded_spawner() {
    let layers: Vec<Layers> = (0..8).map(|_| Layers::new()).collect();
    let exits: Vec<(TaskExit, String)> = thread::scope(|s| {
        let runs: Vec<_> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                s.spawn(move || {
                    let out = run(l.spec(Path::new("/"), &format!("echo {i}; exit {i}")));
                    (out.exit, out.stdout)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (i, (exit, stdout)) in exits.into_iter().enumerate() {
        assert_eq!(exit, TaskExit::Exited(i as i32));
        assert_eq!(stdout, format!("{i}\n"));
    }
}

#[test]
fn deletes_and_renames_appear_as_whiteouts_in_upper() {
    let l = Layers::new();
    let data = Path::new("/var/tmp").join(unique("delete"));
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("a"), "a\n").unwrap();
    fs::write(data.join("b"), "b\n").unwrap();
    // The task's root owns it (see `TASK_ID_BASE`).
    let base = Some(herd_sandbox::TASK_ID_BASE);
    chown(&data, base, base).unwrap();
    let d = data.display();
    let mut spec = l.spec(
        Path::new("/"),
        &format!("rm {d}/a && mv {d}/b {d}/c && ls {d}"),
    );
    spec.uid = 0;
    spec.gid = 0;
    let out = run(spec);
    let upper = l.upper().join(data.strip_prefix("/").unwrap());
    let whiteouts: Vec<bool> = ["a", "b"]
        .iter()
        .map(|gone| {
            let meta = fs::symlink_metadata(upper.join(gone)).unwrap();
            std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) && meta.rdev() == 0
        })
        .collect();
    let moved = fs::read_to_string(upper.join("c")).unwrap();
    let lower_intact = (
        fs::read_to_string(data.join("a")).unwrap(),
        fs::read_to_string(data.join("b")).unwrap(),
    );
    fs::remove_dir_all(&data).unwrap();
    assert_eq!(out.exit, TaskExit::Exited(0), "{}", out.stderr);
    assert_eq!(out.stdout, "c\n");
    assert_eq!(whiteouts, [true, true], "a and b are 0:0 whiteouts");
    assert_eq!(moved, "b\n");
    assert_eq!(lower_intact, ("a\n".to_owned(), "b\n".to_owned()));
}

#[test]
fn tmp_is_private_empty_and_not_committed() {
    let l = Layers::new();
    let name = unique("tmp");
    let out = run_ok(l.spec(
        Path::new("/"),
        &format!("ls -A /tmp | wc -l; echo x > /tmp/{name}; ls /tmp"),
    ));
    assert_eq!(out, format!("0\n{name}\n"));
    assert!(!l.upper().join("tmp").join(&name).exists());
    assert!(!Path::new("/tmp").join(&name).exists());
}

#[test]
fn proc_shows_only_the_task_pid_namespace() {
    let l = Layers::new();
    let out = run_ok(l.spec(
        Path::new("/"),
        "echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; tr '\\0' ' ' < /proc/1/cmdline",
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "2", "the task is pid 2, its init pid 1");
    let pids: Vec<u32> = lines[1]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids[0], 1);
    assert!(
        pids.len() <= 6 && pids.iter().all(|&p| p < 10),
        "pids: {pids:?}"
    );
    assert!(
        lines[2].contains("herd-sandbox-init"),
        "pid 1: {}",
        lines[2]
    );
}

#[test]
fn dev_holds_exactly_the_minimal_set() {
    let l = Layers::new();
    let out = run(l.spec(
        Path::new("/"),
        "ls -A /dev; echo discard > /dev/null && head -c 3 /dev/zero | wc -c && head -c 3 /dev/urandom | wc -c; \
         ls -A /dev/pts | tr '\\n' ' '; echo; touch /dev/new",
    ));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(&lines[..DEV_ENTRIES.len()], DEV_ENTRIES);
    assert_eq!(&lines[DEV_ENTRIES.len()..], ["3", "3", "ptmx "]);
    assert_ne!(out.exit, TaskExit::Exited(0), "/dev is read-only");
}

#[test]
fn hidden_paths_are_empty_and_unreadable() {
    let l = Layers::new();
    let secret = Path::new("/var/tmp").join(unique("secret"));
    fs::create_dir_all(secret.join(".ssh")).unwrap();
    fs::write(secret.join(".ssh/id_ed25519"), "PRIVATE").unwrap();
    fs::write(secret.join("token"), "TOKEN").unwrap();
    fs::write(secret.join("visible"), "ok").unwrap();
    let s = secret.display();
    for uid in [65534, 0] {
        let mut spec = l.spec(
            Path::new("/"),
            &format!(
                "ls -A {s}/.ssh | wc -l; cat {s}/token | wc -c; cat {s}/visible; echo; \
                 cat {s}/.ssh/id_ed25519 2>/dev/null || echo unreadable; echo x > {s}/token || echo readonly"
            ),
        );
        spec.uid = uid;
        spec.gid = uid;
        spec.hidden = vec![
            secret.join(".ssh"),
            secret.join("token"),
            PathBuf::from("/nonexistent/secret"),
        ];
        let out = run(spec);
        assert_eq!(
            out.stdout, "0\n0\nok\nunreadable\nreadonly\n",
            "uid {uid}: {}",
            out.stderr
        );
    }
    fs::remove_dir_all(&secret).unwrap();
}

#[test]
fn a_hidden_symlink_hides_its_target_in_the_view() {
    let l = Layers::new();
    let secret = Path::new("/var/tmp").join(unique("symlinked-secret"));
    fs::create_dir_all(secret.join("real-ssh")).unwrap();
    fs::write(secret.join("real-ssh/id_rsa"), "PRIVATE").unwrap();
    std::os::unix::fs::symlink("real-ssh", secret.join(".ssh")).unwrap();
    let mut spec = l.spec(
        Path::new("/"),
        &format!("ls -A {}/real-ssh | wc -l", secret.display()),
    );
    spec.hidden = vec![secret.join(".ssh")];
    let out = run(spec);
    fs::remove_dir_all(&secret).unwrap();
    assert_eq!(out.stdout, "0\n", "{}", out.stderr);
}

#[test]
fn arguments_and_environment_need_not_be_utf8() {
    use std::os::unix::ffi::OsStringExt;
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "");
    spec.argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        "printf '%s|%s' \"$1\" \"$HERD_BYTES\" | od -An -tx1".into(),
        "sh".into(),
        OsString::from_vec(vec![0xff, b'a']),
    ];
    spec.env
        .push(("HERD_BYTES".into(), OsString::from_vec(vec![0xfe])));
    assert_eq!(run_ok(spec).trim(), "ff 61 7c fe");
}

#[test]
fn task_runs_with_the_given_uid_gids_and_umask() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "id -u; id -g; id -G; umask");
    spec.uid = 65534;
    spec.gid = 65534;
    spec.groups = vec![65534, 100];
    spec.umask = 0o027;
    assert_eq!(run_ok(spec), "65534\n65534\n65534 100\n0027\n");
}

#[test]
fn cwd_and_env_are_as_given() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "pwd; env | grep -v '^PWD=' | sort");
    spec.cwd = PathBuf::from("/usr/share");
    spec.env = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("HERD_TEST".into(), "a b=c".into()),
    ];
    assert_eq!(
        run_ok(spec),
        "/usr/share\nHERD_TEST=a b=c\nPATH=/usr/bin:/bin\n"
    );
}

#[test]
fn missing_cwd_is_a_clear_error() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "true");
    spec.cwd = PathBuf::from("/nonexistent/dir");
    match spawn(Path::new(INIT), &spec) {
        Err(SandboxError::Cwd { path, message }) => {
            assert_eq!(path, PathBuf::from("/nonexistent/dir"));
            assert!(message.contains("No such file"), "{message}");
        }
        other => panic!("expected a cwd error, got {other:?}"),
    }
}

#[test]
fn exit_codes_pass_through_like_a_shell() {
    let l = Layers::new();
    assert_eq!(
        run(l.spec(Path::new("/"), "exit 7")).exit,
        TaskExit::Exited(7)
    );
    let killed = run(l.spec(Path::new("/"), "kill -TERM $$"));
    assert_eq!(killed.exit, TaskExit::Signaled(libc::SIGTERM));
    assert_eq!(killed.exit.code(), 143);

    let mut missing = l.spec(Path::new("/"), "");
    missing.argv = argv(&["herd-no-such-command", "x"]);
    let out = run(missing);
    assert_eq!(out.exit, TaskExit::Exited(127));
    assert_eq!(
        out.stderr,
        "herd: herd-no-such-command: command not found\n"
    );

    let mut not_exec = l.spec(Path::new("/"), "");
    not_exec.argv = argv(&["/etc/passwd"]);
    assert_eq!(run(not_exec).exit, TaskExit::Exited(126));
}

#[test]
fn the_path_hint_is_tried_first_and_a_stale_one_falls_back_to_the_search() {
    let l = Layers::new();
    // A hint that is there runs, with argv[0] as given (no PATH entry holds the name).
    let mut hinted = l.spec(Path::new("/"), "");
    hinted.argv = argv(&["herd-hinted-echo", "via", "hint"]);
    hinted.exe = Some(PathBuf::from("/bin/echo"));
    assert_eq!(run_ok(hinted), "via hint\n");
    // A hint that is gone: the PATH search finds the command as before.
    let mut stale = l.spec(Path::new("/"), "");
    stale.argv = argv(&["echo", "via", "search"]);
    stale.exe = Some(PathBuf::from("/no/such/dir/echo"));
    assert_eq!(run_ok(stale), "via search\n");
    // And a command that is nowhere is still not found.
    let mut missing = l.spec(Path::new("/"), "");
    missing.argv = argv(&["herd-no-such-command"]);
    missing.exe = Some(PathBuf::from("/no/such/dir/herd-no-such-command"));
    let out = run(missing);
    assert_eq!(out.exit, TaskExit::Exited(127));
    assert_eq!(
        out.stderr,
        "herd: herd-no-such-command: command not found\n"
    );
}

#[test]
fn a_script_without_shebang_runs_with_sh() {
    let l = Layers::new();
    let dir = Path::new("/var/tmp").join(unique("script"));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("script"), "echo from script \"$1\"\n").unwrap();
    fs::set_permissions(dir.join("script"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = l.spec(Path::new("/"), "");
    spec.argv = argv(&["script", "arg one"]);
    spec.env = vec![("PATH".into(), dir.clone().into_os_string())];
    let out = run(spec);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.stdout, "from script arg one\n", "{}", out.stderr);
}

#[test]
fn signals_reach_the_task() {
    let l = Layers::new();
    let mut spec = l.spec(
        Path::new("/"),
        "trap 'echo got USR1; exit 3' USR1; echo ready; while :; do sleep 0.05; done",
    );
    let (out_r, out_w) = pipe();
    spec.stdio.stdout = StdioFd::Fd(out_w);
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    drop(spec);
    let mut lines = BufReader::new(out_r).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    sandbox.signal(libc::SIGUSR1).unwrap();
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(3));
    assert_eq!(lines.next().unwrap().unwrap(), "got USR1");
}

#[test]
fn a_background_tree_is_reaped_when_the_task_exits() {
    let l = Layers::new();
    let marker = format!("1000.{}1", std::process::id());
    let mut spec = l.spec(
        Path::new("/"),
        &format!("sleep {marker} & setsid sleep {marker} & (sleep {marker} &) ; echo started"),
    );
    let (out_r, out_w) = pipe();
    spec.stdio.stdout = StdioFd::Fd(out_w);
    spec.stdio.stderr = StdioFd::Null;
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    drop(spec);
    let out = reader(out_r);
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(0));
    assert_eq!(out.join().unwrap(), "started\n");
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
}

#[test]
fn kill_tree_kills_every_process() {
    let l = Layers::new();
    let marker = format!("1000.{}2", std::process::id());
    let mut spec = l.spec(
        Path::new("/"),
        &format!("sleep {marker} & setsid sleep {marker} & echo ready; wait"),
    );
    let (out_r, out_w) = pipe();
    spec.stdio.stdout = StdioFd::Fd(out_w);
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    drop(spec);
    let mut lines = BufReader::new(out_r).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // The background processes exec sleep on their own schedule: wait until both have.
    let mut rounds = 0;
    while processes_with(&marker).len() < 2 {
        rounds += 1;
        assert!(rounds < 10_000, "the task's sleeps never started");
        thread::sleep(std::time::Duration::from_millis(1));
    }
    sandbox.handle().kill_tree();
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Signaled(libc::SIGKILL));
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
}

#[test]
fn a_spawner_that_dies_takes_its_sandboxes_with_it() {
    let l = Layers::new();
    let marker = format!("1000.{}3", std::process::id());
    let mut spawner = Command::new(RUN)
        .args([
            "/".as_ref(),
            l.upper().as_os_str(),
            l.work().as_os_str(),
            "65534".as_ref(),
            "65534".as_ref(),
            "/".as_ref(),
            "--".as_ref(),
            "/bin/sh".as_ref(),
            "-c".as_ref(),
            std::ffi::OsStr::new(&format!("sleep {marker} & echo ready; wait")),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(spawner.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut rounds = 0;
    while processes_with(&marker).is_empty() {
        rounds += 1;
        assert!(rounds < 10_000, "the task's sleep never started");
        thread::sleep(std::time::Duration::from_millis(1));
    }
    spawner.kill().unwrap();
    spawner.wait().unwrap();
    // The supervisor notices the closed lifeline and kills the tree: wait for it.
    let mut rounds = 0;
    while !processes_with(&marker).is_empty() {
        rounds += 1;
        assert!(rounds < 10_000, "the task outlived its spawner");
        thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn cgroup_gets_the_limits_and_is_removed_afterwards() {
    let l = Layers::new();
    let name = unique("cg");
    let mut spec = l.spec(
        Path::new("/"),
        "cat /proc/self/cgroup; echo ready; read line || true",
    );
    // On a pure cgroup v2 machine the test's own group holds processes, so it cannot
    // hand controllers to children ("no internal processes"): use a fresh parent under
    // the root instead. On v1 (and hybrid) machines nest under the test's own groups.
    let pure_v2 = fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .all(|l| l.starts_with("0::"));
    let v2_parent = pure_v2.then(|| {
        let p = PathBuf::from("/sys/fs/cgroup").join(unique("parent"));
        fs::create_dir(&p).unwrap();
        p
    });
    spec.cgroup = Some(CgroupSpec {
        parent: v2_parent
            .as_ref()
            .map(|p| Path::new("/").join(p.file_name().unwrap())),
        name: name.clone(),
        cpus: Some(0.5),
        memory: Some(256 << 20),
    });
    let (out_r, out_w) = pipe();
    let (in_r, in_w) = std::io::pipe().unwrap();
    spec.stdio.stdout = StdioFd::Fd(out_w);
    spec.stdio.stdin = StdioFd::Fd(Arc::new(OwnedFd::from(in_r)));
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    drop(spec);
    let mut lines = BufReader::new(out_r).lines();
    let mut inside = Vec::new();
    loop {
        let line = lines.next().unwrap().unwrap();
        if line == "ready" {
            break;
        }
        inside.push(line);
    }
    let dirs = sandbox.cgroups().to_vec();
    assert!(!dirs.is_empty());
    let mut saw_cpu = false;
    let mut saw_memory = false;
    for dir in &dirs {
        assert!(dir.ends_with(&name), "{}", dir.display());
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs
                .split_whitespace()
                .any(|p| p == sandbox.pid1().to_string()),
            "pid 1 is in {}",
            dir.display()
        );
        let read = |f: &str| {
            fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        if let Some(q) = read("cpu.cfs_quota_us") {
            assert_eq!(q, "50000");
            saw_cpu = true;
        }
        if let Some(q) = read("cpu.max") {
            assert_eq!(q, "50000 100000");
            saw_cpu = true;
        }
        if let Some(m) = read("memory.limit_in_bytes").or_else(|| read("memory.max")) {
            assert_eq!(m, (256u64 << 20).to_string());
            saw_memory = true;
        }
    }
    assert!(saw_cpu && saw_memory, "groups: {dirs:?}");
    assert!(
        inside.iter().any(|l| l.ends_with(&format!("/{name}"))),
        "inside: {inside:?}"
    );
    drop(in_w);
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(0));
    for dir in &dirs {
        assert!(!dir.exists(), "{} was removed", dir.display());
    }
    if let Some(p) = v2_parent {
        fs::remove_dir(p).unwrap();
    }
}

#[test]
fn freeze_suspends_the_whole_tree_until_thaw() {
    let l = Layers::new();
    let mut spec = l.spec(
        Path::new("/"),
        "sleep 1000 & echo ready; read line; echo after",
    );
    spec.cgroup = Some(CgroupSpec {
        parent: None,
        name: unique("freeze"),
        cpus: None,
        memory: None,
    });
    let (out_r, out_w) = pipe();
    let (in_r, mut in_w) = std::io::pipe().unwrap();
    spec.stdio.stdout = StdioFd::Fd(out_w);
    spec.stdio.stdin = StdioFd::Fd(Arc::new(OwnedFd::from(in_r)));
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    drop(spec);
    let mut lines = BufReader::new(out_r).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let handle = sandbox.handle();
    handle.freeze().unwrap();
    // Wait until the kernel reports the tree frozen (v1 passes through FREEZING).
    let frozen = |dir: &Path| {
        let v1 = fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
        let v2 = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        v1.trim() == "FROZEN" || v2.lines().any(|l| l == "frozen 1")
    };
    let mut rounds = 0;
    while !sandbox.cgroups().iter().any(|d| frozen(d)) {
        rounds += 1;
        assert!(rounds < 10_000, "the tree never froze");
        thread::sleep(std::time::Duration::from_millis(1));
    }
    std::io::Write::write_all(&mut in_w, b"go\n").unwrap();
    handle.thaw().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "after");
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(0));
}

#[test]
fn kill_tree_kills_a_frozen_tree() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "echo ready; sleep 1000");
    spec.cgroup = Some(CgroupSpec {
        parent: None,
        name: unique("frozen-kill"),
        cpus: None,
        memory: None,
    });
    let (out_r, out_w) = pipe();
    spec.stdio.stdout = StdioFd::Fd(out_w);
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    drop(spec);
    assert_eq!(
        BufReader::new(out_r).lines().next().unwrap().unwrap(),
        "ready"
    );
    sandbox.handle().freeze().unwrap();
    sandbox.kill_tree();
    let dirs = sandbox.cgroups().to_vec();
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Signaled(libc::SIGKILL));
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
}

#[test]
fn wait_ended_returns_once_the_tree_is_gone_and_cleans_up_behind() {
    let l = Layers::new();
    // A background child keeps running after the shell exits: the tree ends only when
    // the namespace's pid 1 takes it down.
    let mut spec = l.spec(
        Path::new("/"),
        "sleep 1000 & echo $! > /var/tmp/bg.pid; exit 7",
    );
    spec.cgroup = Some(CgroupSpec {
        parent: None,
        name: unique("ended"),
        cpus: None,
        memory: None,
    });
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    let dirs = sandbox.cgroups().to_vec();
    let ours = [sandbox.pid(), sandbox.pid1()];
    assert!(!dirs.is_empty());
    assert_eq!(sandbox.wait_ended().unwrap(), TaskExit::Exited(7));
    // Nothing of the tree runs any more (its cgroups hold at most the sandbox's own
    // pid 1, on its way out)...
    for d in &dirs {
        let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        let left: Vec<u32> = procs
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| !ours.contains(p))
            .collect();
        assert!(left.is_empty(), "{}: {procs}", d.display());
    }
    // ...and the cgroups go soon after, removed in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while dirs.iter().any(|d| d.exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "cgroups left: {dirs:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_prepared_sandbox_runs_its_task_in_the_cgroup_it_made_ahead() {
    let l = Layers::new();
    let name = unique("prepared");
    let prepared = herd_sandbox::prepare(
        Path::new(INIT),
        Some(CgroupSpec {
            parent: None,
            name: name.clone(),
            cpus: Some(0.5),
            memory: None,
        }),
        &herd_sandbox::Net::Loopback,
    )
    .unwrap();
    let dirs = prepared.cgroups().to_vec();
    assert!(!dirs.is_empty());
    // The waiting init is in its groups already.
    for d in &dirs {
        let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert_eq!(procs.lines().count(), 1, "{}: {procs}", d.display());
    }
    let mut spec = l.spec(
        Path::new("/"),
        "grep -c herd-sbx-prepared /proc/self/cgroup; cat; echo err >&2; exit 3",
    );
    // A prepared sandbox ignores the spec's own cgroup.
    spec.cgroup = Some(CgroupSpec {
        parent: None,
        name: unique("ignored"),
        cpus: None,
        memory: None,
    });
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    spec.stdio.stdin = StdioFd::Fd(Arc::new(OwnedFd::from(in_r)));
    spec.stdio.stdout = StdioFd::Fd(out_w);
    spec.stdio.stderr = StdioFd::Fd(err_w);
    let sandbox = prepared.start(&spec).unwrap();
    assert_eq!(sandbox.cgroups(), &dirs[..]);
    drop(spec);
    {
        let mut w = in_w;
        std::io::Write::write_all(&mut w, b"from stdin\n").unwrap();
    }
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(3));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(out_r), &mut out).unwrap();
    let n: usize = out.lines().next().unwrap().trim().parse().unwrap();
    assert!(n >= 1, "the task runs in the prepared group: {out}");
    assert!(out.ends_with("from stdin\n"), "{out}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(err_r), &mut err).unwrap();
    assert_eq!(err, "err\n");
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    assert!(
        !Path::new("/sys/fs/cgroup/freezer")
            .join(unique("ignored"))
            .exists()
    );
}

#[test]
fn a_prepared_sandbox_dropped_unused_leaves_nothing() {
    require_root();
    let prepared = herd_sandbox::prepare(
        Path::new(INIT),
        Some(CgroupSpec {
            parent: None,
            name: unique("unused"),
            cpus: None,
            memory: None,
        }),
        &herd_sandbox::Net::Loopback,
    )
    .unwrap();
    let dirs = prepared.cgroups().to_vec();
    assert!(dirs.iter().all(|d| d.exists()));
    drop(prepared);
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
}

fn prepared(tag: &str) -> herd_sandbox::Prepared {
    herd_sandbox::prepare(
        Path::new(INIT),
        Some(CgroupSpec {
            parent: None,
            name: unique(tag),
            cpus: None,
            memory: None,
        }),
        &herd_sandbox::Net::Loopback,
    )
    .unwrap()
}

#[test]
fn a_gated_task_runs_only_once_the_gate_opens() {
    let l = Layers::new();
    let spec = l.spec(Path::new("/"), "echo ran > /var/tmp/gated; exit 5");
    let starting = prepared("gated").start_gated(&spec).unwrap();
    // Pid 1 builds the root and waits at the gate: the task does not run meanwhile.
    thread::sleep(std::time::Duration::from_millis(300));
    let marker = l.upper().join("var/tmp/gated");
    assert!(!marker.exists(), "the task ran before the gate opened");
    let sandbox = starting.go().unwrap();
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(5));
    assert_eq!(fs::read_to_string(&marker).unwrap(), "ran\n");
}

#[test]
fn a_parked_root_runs_the_task_it_is_handed_in_its_own_layers() {
    let l = Layers::new();
    let parked = prepared("parked")
        .park(Path::new("/"), &l.upper(), &l.work())
        .unwrap();
    assert_eq!(parked.upper(), l.upper());
    // The task's spec names other layers: the parked root's are kept. Its output goes
    // to the descriptors handed over with it, and its identity and cwd are its own.
    let other = Layers::new();
    let mut spec = other.spec(
        Path::new("/nonexistent"),
        "echo ran > /var/tmp/parked; echo out; echo err >&2; pwd; exit 6",
    );
    spec.cwd = PathBuf::from("/usr");
    let (out_r, out_w) = std::io::pipe().unwrap();
    let (err_r, err_w) = std::io::pipe().unwrap();
    spec.stdio.stdout = StdioFd::Fd(Arc::new(OwnedFd::from(out_w)));
    spec.stdio.stderr = StdioFd::Fd(Arc::new(OwnedFd::from(err_w)));
    let mut starting = parked.start_gated(&spec).unwrap();
    drop(spec);
    thread::sleep(std::time::Duration::from_millis(200));
    let marker = l.upper().join("var/tmp/parked");
    assert!(!marker.exists(), "the task ran before the gate opened");
    starting.open_gate();
    let sandbox = starting.go().unwrap();
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(6));
    assert_eq!(fs::read_to_string(&marker).unwrap(), "ran\n");
    assert!(!other.upper().join("var/tmp/parked").exists());
    let read = |r: std::io::PipeReader| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { r }, &mut s).unwrap();
        s
    };
    assert_eq!(read(out_r), "out\n/usr\n");
    assert_eq!(read(err_r), "err\n");
}

#[test]
fn a_parked_root_dropped_leaves_no_process_and_no_cgroup() {
    let l = Layers::new();
    let p = prepared("parkdrop");
    let dirs = p.cgroups().to_vec();
    let parked = p.park(Path::new("/"), &l.upper(), &l.work()).unwrap();
    assert!(dirs.iter().all(|d| d.exists()));
    drop(parked);
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
}

#[test]
fn a_gated_task_called_off_never_runs_and_leaves_nothing() {
    let l = Layers::new();
    let p = prepared("calledoff");
    let dirs = p.cgroups().to_vec();
    assert!(!dirs.is_empty());
    let spec = l.spec(Path::new("/"), "echo ran > /var/tmp/off");
    let starting = p.start_gated(&spec).unwrap();
    thread::sleep(std::time::Duration::from_millis(100));
    drop(starting);
    assert!(!l.upper().join("var/tmp/off").exists(), "the task ran");
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
}

#[test]
fn a_task_started_without_waiting_reports_a_missing_cwd_when_waited_for() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "true");
    spec.cwd = PathBuf::from("/no/such/dir");
    // A prepared start does not wait for the task's exec (no terminal): the failure
    // comes out of wait, as a missing cwd, not as the shell's exit status.
    let sandbox = prepared("cwd").start(&spec).unwrap();
    match sandbox.wait() {
        Err(SandboxError::Cwd { path, .. }) => assert_eq!(path, Path::new("/no/such/dir")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn freeze_without_a_cgroup_says_why() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "read line");
    let (in_r, in_w) = std::io::pipe().unwrap();
    spec.stdio.stdin = StdioFd::Fd(Arc::new(OwnedFd::from(in_r)));
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    drop(spec);
    let err = sandbox.handle().freeze().unwrap_err();
    assert!(err.to_string().contains("no cgroup"), "{err}");
    drop(in_w);
    sandbox.wait().unwrap();
}

#[test]
fn idle_priority_is_observed_inside() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "cat /proc/self/stat");
    spec.idle = true;
    let out = run_ok(spec);
    // Fields after the command name: state is field 3, nice 19, policy 41.
    let after = out.rsplit_once(") ").unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    assert_eq!(fields[19 - 3], "19", "nice");
    assert_eq!(fields[41 - 3], libc::SCHED_IDLE.to_string(), "policy");
}

#[test]
fn no_new_privs_keeps_setuid_binaries_powerless() {
    let l = Layers::new();
    let dir = Path::new("/var/tmp").join(unique("suid"));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let id = dir.join("id");
    fs::copy("/usr/bin/id", &id).unwrap();
    chown(&id, Some(0), Some(0)).unwrap();
    fs::set_permissions(&id, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = run_ok(l.spec(
        Path::new("/"),
        &format!("grep NoNewPrivs /proc/self/status; {} -u", id.display()),
    ));
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out, "NoNewPrivs:\t1\n65534\n");
}

#[test]
fn hostname_is_the_task_own() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "hostname");
    spec.hostname = Some("herd-task".into());
    assert_eq!(run_ok(spec), "herd-task\n");
}

#[test]
fn setup_failure_names_the_path() {
    let l = Layers::new();
    let spec = l.spec(Path::new("/nonexistent-lower"), "true");
    match spawn(Path::new(INIT), &spec) {
        Err(SandboxError::Setup(msg)) => assert!(msg.contains("/nonexistent-lower"), "{msg}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[test]
fn probe_as_root_says_root() {
    let l = Layers::new();
    assert_eq!(
        probe(Path::new(INIT), l.dir.path()).unwrap().mode,
        Mode::Root
    );
    assert_eq!(
        fs::read_dir(l.dir.path()).unwrap().count(),
        2,
        "the probe cleans up"
    );
}

#[test]
fn probe_says_why_not() {
    let l = Layers::new();
    let err = probe(Path::new("/nonexistent/herd"), l.dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SandboxError::Unsupported(_)), "{err:?}");
    assert!(msg.contains("/nonexistent/herd"), "{msg}");
}

/// Runs `herd-sandbox-run` as uid/gid 65534 (a plain user, so the sandbox is rootless).
fn as_nobody(args: &[&OsString]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(RUN)
        .args(args)
        .uid(65534)
        .gid(65534)
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn rootless_mode_works_for_a_plain_user() {
    let l = Layers::new();
    let lower = minimal_root(l.dir.path(), 65534, &[("home/u/data", "lower data\n")]);
    // FIXME(rootless copy-up): a directory owned by anyone but the agent's user cannot be
    // copied up, however open its mode; this pins today's behaviour (see the crate docs).
    fs::create_dir(lower.join("shared")).unwrap();
    fs::set_permissions(lower.join("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(lower.join("rootfile"), "root only").unwrap();
    fs::set_permissions(lower.join("rootfile"), fs::Permissions::from_mode(0o600)).unwrap();
    chown(lower.join("rootfile"), Some(0), Some(0)).unwrap();
    for d in [l.upper(), l.work()] {
        chown(&d, Some(65534), Some(65534)).unwrap();
    }
    let scratch = l.dir.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    chown(&scratch, Some(65534), Some(65534)).unwrap();
    let probe = as_nobody(&[&"--probe".into(), &scratch.into()]);
    assert!(
        String::from_utf8_lossy(&probe.stdout).starts_with("rootless\nnet "),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let script = "while read k a b; do case $k in Uid:|Gid:|NoNewPrivs:) echo $k $a;; esac; done < /proc/self/status; \
                  echo written > /home/u/out; echo more >> /home/u/data; read x < /rootfile || echo denied; \
                  { echo x > /shared/f; } 2>/tmp/err || { read e < /tmp/err; case $e in *'Value too large'*) echo overflow;; esac; }; \
                  echo $(echo /dev/*)";
    let out = as_nobody(&[
        &lower.clone().into(),
        &l.upper().into(),
        &l.work().into(),
        &"1000".into(),
        &"1000".into(),
        &"/home/u".into(),
        &"--".into(),
        &"/bin/sh".into(),
        &"-c".into(),
        &script.into(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev: Vec<String> = DEV_ENTRIES.iter().map(|e| format!("/dev/{e}")).collect();
    assert_eq!(
        stdout,
        format!(
            "Uid: 1000\nGid: 1000\nNoNewPrivs: 1\ndenied\noverflow\n{}\n",
            dev.join(" ")
        )
    );
    let written = l.upper().join("home/u/out");
    assert_eq!(fs::read_to_string(&written).unwrap(), "written\n");
    assert_eq!(
        fs::metadata(&written).unwrap().uid(),
        65534,
        "files belong to the agent's user"
    );
    assert_eq!(
        fs::read_to_string(l.upper().join("home/u/data")).unwrap(),
        "lower data\nmore\n"
    );
    assert_eq!(
        fs::read_to_string(lower.join("home/u/data")).unwrap(),
        "lower data\n"
    );
}

/// Opens a new PTY of the host: (master, slave).
fn open_pty() -> (fs::File, OwnedFd) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc PTY calls; the returned descriptors are checked and owned once.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0);
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 64];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let slave = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(slave >= 0);
        (fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
    }
}

#[test]
fn tty_makes_stdin_the_controlling_terminal() {
    let l = Layers::new();
    for tty in [true, false] {
        let (mut master, slave) = open_pty();
        let slave = Arc::new(slave);
        // Fields after the command name: tty_nr is field 7, tpgid 8, pgrp 5.
        let mut spec = l.spec(
            Path::new("/"),
            "read pid comm state ppid pgrp session tty tpgid rest < /proc/self/stat; \
             [ -t 0 ] && echo isatty; [ $tty != 0 ] && [ $tpgid = $pgrp ] && echo controlling; \
             echo done",
        );
        spec.tty = tty;
        spec.stdio = TaskStdio {
            stdin: StdioFd::Fd(slave.clone()),
            stdout: StdioFd::Fd(slave.clone()),
            stderr: StdioFd::Fd(slave),
        };
        let sandbox = spawn(Path::new(INIT), &spec).unwrap();
        drop(spec);
        let mut out = String::new();
        let mut buf = [0u8; 256];
        while !out.contains("done") {
            let n = master.read(&mut buf).unwrap();
            assert!(n > 0);
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(0));
        let expected = if tty {
            "isatty\r\ncontrolling\r\ndone"
        } else {
            "isatty\r\ndone"
        };
        assert_eq!(out.trim_end(), expected, "tty {tty}");
    }
}

/// Reads a console master until the terminal is gone (EIO once no slave is left open).
fn read_console(master: &mut fs::File) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read the console: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a console master until `want` has been seen; returns everything read.
fn read_console_until(master: &mut fs::File, want: &str) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 256];
    while !out.contains(want) {
        let n = master
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{e}; read so far: {out:?}"));
        assert!(n > 0, "console closed; read so far: {out:?}");
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    out
}

/// Spawns `script` with a console of 30 rows and 100 columns; returns the master.
fn spawn_with_console(l: &Layers, script: &str) -> (herd_sandbox::Sandbox, fs::File) {
    let mut spec = l.spec(Path::new("/"), script);
    spec.console = Some((30, 100));
    let mut sandbox = spawn(Path::new(INIT), &spec).unwrap_or_else(|e| panic!("spawn: {e}"));
    let master = sandbox.console().expect("a console master");
    assert!(sandbox.console().is_none(), "the master is taken once");
    (sandbox, fs::File::from(master))
}

#[test]
fn console_is_a_terminal_of_the_task_own_devpts() {
    let l = Layers::new();
    let (sandbox, mut master) = spawn_with_console(
        &l,
        "tty; stty size; test -t 0 && echo isatty; \
         read pid comm state ppid pgrp session tty tpgid rest < /proc/self/stat; \
         [ $tpgid = $pgrp ] && echo controlling; \
         [ -O /dev/pts/0 ] && echo owned; exit 3",
    );
    let out = read_console(&mut master);
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(3), "{out:?}");
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(
        lines,
        ["/dev/pts/0", "30 100", "isatty", "controlling", "owned"],
        "{out:?}"
    );
}

#[test]
fn console_input_reaches_the_task() {
    let l = Layers::new();
    let (sandbox, mut master) = spawn_with_console(&l, "read x; echo got:$x");
    std::io::Write::write_all(&mut master, b"hello\n").unwrap();
    let out = read_console(&mut master);
    assert!(out.contains("got:hello"), "{out:?}");
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(0));
}

#[test]
fn console_drives_an_interactive_shell() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "");
    spec.argv = argv(&["/bin/sh", "-i"]);
    spec.console = Some((24, 80));
    let mut sandbox = spawn(Path::new(INIT), &spec).unwrap();
    let mut master = fs::File::from(sandbox.console().unwrap());
    std::io::Write::write_all(&mut master, b"echo answer-$((6 * 7))\n").unwrap();
    read_console_until(&mut master, "answer-42");
    std::io::Write::write_all(&mut master, b"exit 3\n").unwrap();
    read_console(&mut master);
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(3));
}

#[test]
fn console_delivers_keyboard_signals_to_the_foreground_job() {
    let l = Layers::new();
    let (sandbox, mut master) = spawn_with_console(
        &l,
        "trap 'echo interrupted; exit 5' INT; echo ready; while :; do sleep 0.1; done",
    );
    read_console_until(&mut master, "ready");
    std::io::Write::write_all(&mut master, b"\x03").unwrap();
    let out = read_console(&mut master);
    assert!(out.contains("interrupted"), "{out:?}");
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(5));
}

#[test]
fn no_console_unless_asked() {
    let l = Layers::new();
    let mut spec = l.spec(Path::new("/"), "true");
    spec.stdio = TaskStdio {
        stdin: StdioFd::Null,
        stdout: StdioFd::Null,
        stderr: StdioFd::Null,
    };
    let mut sandbox = spawn(Path::new(INIT), &spec).unwrap();
    assert!(sandbox.console().is_none());
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(0));
}

/// A task killed by a real-time signal: nix cannot name the signal and its `waitpid`
/// returned an error after reaping the task, so pid 1 never saw it end and the sandbox
/// hung (found while fuzzing the status lines). Waited for on a thread, so a hang fails
/// the test instead of stalling it.
#[test]
fn a_task_killed_by_a_real_time_signal_ends_its_sandbox() {
    let l = Layers::new();
    let spec = l.spec(Path::new("/"), "kill -s RTMIN $$");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(run(spec).exit);
    });
    let exit = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the sandbox hung after its task died of SIGRTMIN");
    assert_eq!(exit, TaskExit::Signaled(libc::SIGRTMIN()));
}
