//! End-to-end tests of `herd run` on the testbed: the workstation is a host with the
//! machine's real filesystem, the helper a host whose root holds only the herd binary.
//! Everything the task runs (sh, python3, gcc, ...) comes from the workstation through
//! herd's view. Needs root; fails, never skips, without it.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use herd_testbed::cluster::{Agents, Node, all_see, ok, sigterm, text, wait_for};
use herd_testbed::{HostSpec, Testbed};

const CONVERGE: Duration = Duration::from_secs(40);

fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

struct Cluster {
    bed: Testbed,
    agents: Agents,
    /// A project directory on the workstation (not under /tmp: tasks get a private /tmp).
    project: tempfile::TempDir,
}

impl Cluster {
    /// The workstation lends no cores (`--cpus 0`): every task runs on h1.
    fn start() -> Cluster {
        Cluster::start_with(&["--cpus", "0"])
    }

    fn start_with(ws_args: &[&str]) -> Cluster {
        let mut bed = Testbed::new().expect("the testbed needs root");
        bed.add_host(HostSpec::real_fs("ws")).unwrap();
        bed.add_host(HostSpec::minimal("h1", herd_bin())).unwrap();
        let (ws, h1) = (
            Node::new(bed.host("ws"), herd_bin()),
            Node::new(bed.host("h1"), herd_bin()),
        );
        let token = ws.init();
        let mut args = vec!["--no-mdns"];
        args.extend_from_slice(ws_args);
        let agents = Agents(vec![ws.agent(&args), h1.join(&token)]);
        wait_for("h1 alive at ws", CONVERGE, || all_see(&[ws], "h1", "alive"));
        let project = tempfile::Builder::new()
            .prefix("herd-run-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        Cluster {
            bed,
            agents,
            project,
        }
    }

    fn ws(&self) -> Node<'_> {
        Node::new(self.bed.host("ws"), herd_bin())
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.project.path().join(rel)
    }

    /// `herd run --state STATE ARGS` on the workstation, in the project directory, with
    /// stdin empty and stdout/stderr captured (ARGS include the flags and `--`).
    fn run_cmd(&self, args: &[&str]) -> herd_testbed::HostCommand {
        let state = self.ws().state();
        let mut argv = vec!["run", "--state", state.as_str()];
        argv.extend_from_slice(args);
        let mut cmd = self
            .bed
            .host("ws")
            .command(herd_bin().to_str().unwrap(), &argv);
        cmd.current_dir(self.project.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// `herd run -T -- ARGS`, feeding `stdin` if given.
    fn run_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.run_cmd(&[&["-T", "--"], args].concat());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(data) = stdin {
            let mut si = child.stdin.take().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = si.write_all(&data);
            });
        }
        child.wait_with_output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, None)
    }

    fn sh(&self, script: &str) -> Output {
        self.run(&["/bin/sh", "-c", script])
    }
}

#[test]
fn the_workstations_tools_run_on_a_helper_that_has_only_herd() {
    let c = Cluster::start();
    // The helper's root really is empty but for herd.
    let h1_root = c.bed.host("h1").root_dir().unwrap().to_path_buf();
    assert!(!h1_root.join("bin/sh").exists() && !h1_root.join("usr/bin/gcc").exists());

    assert_eq!(ok(&c.sh("echo $HERD_NODE")).trim(), "h1");
    assert_eq!(ok(&c.run(&["python3", "-c", "print(6*7)"])).trim(), "42");

    std::fs::write(c.p("data.txt"), "some data\n").unwrap();
    let local = std::process::Command::new("sha256sum")
        .arg("data.txt")
        .current_dir(c.project.path())
        .output()
        .unwrap();
    assert_eq!(ok(&c.run(&["sha256sum", "data.txt"])), text(&local.stdout));

    ok(&c.run(&["tar", "czf", "data.tgz", "data.txt"]));
    let listing = std::process::Command::new("tar")
        .args(["tzf", "data.tgz"])
        .current_dir(c.project.path())
        .output()
        .unwrap();
    assert_eq!(text(&listing.stdout).trim(), "data.txt");

    // gcc on the helper; the binary comes back and runs on the workstation.
    std::fs::write(
        c.p("hello.c"),
        "#include <stdio.h>\nint main(void){puts(\"hello from gcc\");return 0;}\n",
    )
    .unwrap();
    ok(&c.run(&["gcc", "-O2", "-o", "hello", "hello.c"]));
    let out = std::process::Command::new(c.p("hello")).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), "hello from gcc");
}

#[test]
fn exit_codes_streams_and_environment_behave_as_locally() {
    let c = Cluster::start();
    assert_eq!(c.sh("exit 3").status.code(), Some(3));
    assert_eq!(c.sh("kill -TERM $$").status.code(), Some(128 + 15));
    let missing = c.run(&["no-such-command-anywhere"]);
    assert_eq!(
        missing.status.code(),
        Some(127),
        "{}",
        text(&missing.stderr)
    );

    // stdout and stderr stay apart.
    let out = c.sh("echo out; echo err >&2");
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    // cwd, environment and umask are the workstation's.
    let out = ok(&c.run_with(&["/bin/sh", "-c", "pwd; echo $HERD_TEST_VAR; umask"], None));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], c.project.path().to_str().unwrap());
    assert_eq!(lines[1], "");
    let out = c
        .run_cmd(&[
            "-T",
            "--env",
            "HERD_TEST_VAR=v1",
            "--",
            "/bin/sh",
            "-c",
            "echo $HERD_TEST_VAR",
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "v1");

    // Arguments are bytes, not necessarily UTF-8 (file names are not), and arrive as
    // given.
    let script = format!(
        "{} run --state {} -T -- printf %s \"$(printf '\\377\\376')\" | od -An -tx1",
        herd_bin().display(),
        c.ws().state()
    );
    let out = c
        .bed
        .host("ws")
        .command("/bin/sh", &["-c", &script])
        .current_dir(c.project.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(ok(&out).trim(), "ff fe");

    // A plain user's task runs as that user, with the gid and supplementary groups the
    // workstation's kernel gives the connecting process (not root's, not a guess).
    use std::os::unix::fs::PermissionsExt;
    let state = c.ws().state();
    let reach = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    reach(Path::new(&state), 0o711);
    reach(&Path::new(&state).join("agent.sock"), 0o666);
    reach(c.project.path(), 0o755);
    let herd = herd_bin().to_str().unwrap();
    let out = c
        .bed
        .host("ws")
        .command(
            "setpriv",
            &[
                "--reuid=65534",
                "--regid=65534",
                "--groups=4242,4343",
                herd,
                "run",
                "--state",
                &state,
                "-T",
                "--",
                "/bin/sh",
                "-c",
                "id -u; id -G",
            ],
        )
        .current_dir(c.project.path())
        .env("HOME", c.project.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(ok(&out), "65534\n65534 4242 4343\n");
    reach(Path::new(&state), 0o700);

    // A large stdin goes through and comes back hashed.
    let big = vec![b'x'; 20 << 20];
    let out = c.run_with(&["sha256sum"], Some(&big));
    let local = {
        use std::io::Write;
        let mut ch = std::process::Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        ch.stdin.take().unwrap().write_all(&big).unwrap();
        ch.wait_with_output().unwrap()
    };
    assert_eq!(ok(&out), text(&local.stdout));

    // A large stdout comes back whole.
    let out = c.sh("head -c 30000000 /dev/zero");
    assert_eq!(ok(&out).len(), 30_000_000);
}

#[test]
fn file_changes_are_committed_back_and_secrets_stay_hidden() {
    let c = Cluster::start();
    std::fs::write(c.p("keep.txt"), "keep\n").unwrap();
    std::fs::write(c.p("edit.txt"), "v1\n").unwrap();
    std::fs::write(c.p("gone.txt"), "bye\n").unwrap();
    std::fs::write(c.p("old-name.txt"), "moved\n").unwrap();
    std::fs::create_dir(c.p("dir")).unwrap();
    std::fs::write(c.p("dir/inner.txt"), "inner\n").unwrap();

    ok(&c.sh(
        "echo v2 >> edit.txt; rm gone.txt; mv old-name.txt new-name.txt; \
         mkdir -p made/deeper; echo deep > made/deeper/f; ln -s keep.txt link; \
         chmod 600 keep.txt; rm -r dir; touch -d 2001-02-03T04:05:06Z dated.txt; \
         echo scratch > /tmp/scratch-file",
    ));
    assert_eq!(
        std::fs::read_to_string(c.p("edit.txt")).unwrap(),
        "v1\nv2\n"
    );
    assert!(!c.p("gone.txt").exists());
    assert!(!c.p("old-name.txt").exists());
    assert_eq!(
        std::fs::read_to_string(c.p("new-name.txt")).unwrap(),
        "moved\n"
    );
    assert_eq!(
        std::fs::read_to_string(c.p("made/deeper/f")).unwrap(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_link(c.p("link")).unwrap(),
        PathBuf::from("keep.txt")
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        std::fs::metadata(c.p("keep.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(!c.p("dir").exists());
    assert_eq!(
        std::fs::metadata(c.p("dated.txt")).unwrap().mtime(),
        981173106
    );
    // The task's /tmp is its own and is not committed.
    assert!(!Path::new("/tmp/scratch-file").exists());

    // A task cannot read the workstation's secrets: ~/.ssh is hidden.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let ssh = Path::new(&home).join(".ssh");
    let created = !ssh.exists();
    if created {
        std::fs::create_dir(&ssh).unwrap();
    }
    std::fs::write(ssh.join("herd-test-secret"), "secret").unwrap();
    let out = c.run(&["cat", ssh.join("herd-test-secret").to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!text(&out.stdout).contains("secret"));
    let out = ok(&c.run(&["ls", "-a", &home]));
    assert!(!out.lines().any(|l| l == ".ssh"), "{out}");
    std::fs::remove_file(ssh.join("herd-test-secret")).unwrap();
    if created {
        std::fs::remove_dir(&ssh).unwrap();
    }

    // The helper's own files are not visible: its root holds /herd, the workstation's does not.
    assert!(!Path::new("/herd").exists());
    assert_ne!(c.run(&["ls", "/herd"]).status.code(), Some(0));
}

#[test]
fn a_cwd_that_does_not_exist_gives_a_clear_error() {
    let c = Cluster::start();
    // A cwd under /tmp is the workstation's, but tasks get a private /tmp.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let out = c
        .run_cmd(&["-T", "--", "true"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("herd: ") && err.contains("working directory"),
        "{err}"
    );
}

impl Cluster {
    /// Starts `herd run -T -- ARGS` in the background with stdout piped.
    fn spawn_run(&self, args: &[&str]) -> Child {
        self.run_cmd(&[&["-T", "--"], args].concat())
            .spawn()
            .unwrap()
    }

    /// Processes on h1 other than its agent.
    /// The task's own processes on h1: everything in h1's cgroups (task groups
    /// included) but herd itself (the agent, sandbox inits, and the one prepared for the
    /// next task).
    fn h1_task_processes(&self) -> usize {
        fn walk(dir: &Path, pids: &mut std::collections::HashSet<u32>) {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), pids);
                    }
                }
            }
        }
        let mut pids = std::collections::HashSet::new();
        for dir in self.bed.host("h1").cgroup_dirs() {
            walk(dir, &mut pids);
        }
        pids.into_iter()
            .filter(|pid| {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                exe.file_name().is_some_and(|n| n != "herd")
            })
            .count()
    }

    /// Task directories on h1 (the views kept for the next task live in `views`, the
    /// empty directories made ahead for the next tasks are `spare-*`).
    fn h1_task_dirs(&self) -> usize {
        let dir = self.bed.host("h1").machine_path("/var/lib/herd/tasks");
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "views" && !n.starts_with("spare-"))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn read_line(child: &mut Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    let out = child.stdout.as_mut().unwrap();
    let mut r = std::io::BufReader::new(out);
    r.read_line(&mut line).unwrap();
    line
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

#[test]
fn signals_reach_the_task_and_nothing_outlives_it() {
    let c = Cluster::start();
    assert_eq!(c.h1_task_processes(), 0);

    // SIGINT, SIGTERM and SIGUSR1 to `herd run` reach the remote shell.
    for (sig, name, code) in [
        (nix::sys::signal::Signal::SIGINT, "INT", 7),
        (nix::sys::signal::Signal::SIGTERM, "TERM", 8),
        (nix::sys::signal::Signal::SIGUSR1, "USR1", 9),
    ] {
        let script = format!(
            "trap 'echo got {name}; exit {code}' {name}; echo ready; while :; do sleep 0.1; done"
        );
        let mut child = c.spawn_run(&["/bin/sh", "-c", &script]);
        assert_eq!(read_line(&mut child).trim(), "ready");
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{name}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stdout).contains(&format!("got {name}")), "{name}");
    }

    // A task that leaves a background tree behind has it reaped when it exits.
    ok(&c.sh("sleep 1000 & sleep 1000 & echo started"));
    wait_for("background tree reaped on h1", CONVERGE, || {
        c.h1_task_processes() == 0
    });

    // Killing `herd run` kills the task on the helper and removes its traces.
    let mut child = c.spawn_run(&["/bin/sh", "-c", "echo ready; sleep 1000"]);
    assert_eq!(read_line(&mut child).trim(), "ready");
    assert!(c.h1_task_processes() > 0);
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    wait_for("nothing of the task left on h1", CONVERGE, || {
        c.h1_task_processes() == 0 && c.h1_task_dirs() == 0
    });
}

#[test]
fn a_terminal_is_given_with_dash_t() {
    let c = Cluster::start();
    let out = c
        .run_cmd(&[
            "-t",
            "--",
            "/bin/sh",
            "-c",
            "tty; stty size; test -t 0 && echo stdin-is-tty",
        ])
        .output()
        .unwrap();
    let stdout = ok(&out);
    // The terminal comes from the task's own devpts, so it has a name there.
    assert!(stdout.starts_with("/dev/pts/0"), "{stdout}");
    assert!(stdout.contains("24 80"), "{stdout}");
    assert!(stdout.contains("stdin-is-tty"), "{stdout}");
    // Without -t (and without a local terminal) there is none.
    let stdout = ok(&c.sh("tty || true"));
    assert!(stdout.contains("not a tty"), "{stdout}");
}

#[test]
fn a_full_disk_on_the_helper_fails_the_task_cleanly_and_commits_nothing() {
    let c = Cluster::start();
    // Give h1's task area a 24 MB filesystem of its own (in h1's mount namespace).
    let h1 = c.bed.host("h1");
    let tasks = h1.machine_path("/var/lib/herd/tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let st = std::process::Command::new("nsenter")
        .arg(format!("--mount={}", h1.mntns_path().display()))
        .args(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&tasks)
        .status()
        .unwrap();
    assert!(st.success());

    let out = c.sh("echo small > small.txt; head -c 64000000 /dev/zero > big.bin; echo written");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("ran out of disk space") && err.contains("nothing was committed"),
        "{err}"
    );
    assert!(!c.p("small.txt").exists() && !c.p("big.bin").exists());

    // The helper keeps serving.
    ok(&c.sh("echo fine > after.txt"));
    assert_eq!(std::fs::read_to_string(c.p("after.txt")).unwrap(), "fine\n");
}

#[test]
fn a_file_deleted_while_the_task_reads_it_gives_an_error_not_a_crash() {
    let c = Cluster::start();
    std::fs::write(c.p("vanishing.txt"), vec![b'v'; 1 << 20]).unwrap();
    // The task looks the file up, then (after the workstation deletes it) reads it.
    let mut child = c.spawn_run(&[
        "/bin/sh",
        "-c",
        "test -f vanishing.txt && echo found; sleep 1; cat vanishing.txt >/dev/null; echo cat=$?",
    ]);
    assert_eq!(read_line(&mut child).trim(), "found");
    std::fs::remove_file(c.p("vanishing.txt")).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.contains("cat=1"), "{stdout} / {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("No such file") || err.contains("Input/output error"),
        "{err}"
    );
    // Everything still works afterwards.
    assert_eq!(ok(&c.sh("echo alive")).trim(), "alive");
}

impl Cluster {
    fn fs_requests(&self) -> u64 {
        let out = self.ws().herd(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["fs_requests"].as_u64().unwrap()
    }

    /// Runs `args` and returns (stdout, file questions the workstation answered).
    fn counted(&self, args: &[&str]) -> (String, u64) {
        let before = self.fs_requests();
        let out = ok(&self.run(args));
        (out, self.fs_requests() - before)
    }
}

#[test]
fn the_helper_cache_makes_warm_runs_one_round_trip_and_never_serves_stale_files() {
    let mut c = Cluster::start();
    std::fs::write(c.p("data.txt"), "first\n").unwrap();
    let (_, cold) = c.counted(&["cat", "data.txt"]);
    let (out, warm) = c.counted(&["cat", "data.txt"]);
    assert_eq!(out, "first\n");
    assert!(cold > 5, "a cold run asks about every file ({cold})");
    assert_eq!(
        warm, 1,
        "a warm, unchanged run validates its working set in one question"
    );

    // Changed on the workstation: the next run sees the change.
    std::fs::write(c.p("data.txt"), "second, longer\n").unwrap();
    let (out, _) = c.counted(&["cat", "data.txt"]);
    assert_eq!(out, "second, longer\n");
    // A new file in a directory the task listed before shows up; a deleted one goes.
    std::fs::write(c.p("a.txt"), "a").unwrap();
    let (out, _) = c.counted(&["ls"]);
    assert!(out.lines().any(|l| l == "a.txt"), "{out}");
    std::fs::remove_file(c.p("a.txt")).unwrap();
    std::fs::write(c.p("b.txt"), "b").unwrap();
    let (out, _) = c.counted(&["ls"]);
    assert!(
        !out.lines().any(|l| l == "a.txt") && out.lines().any(|l| l == "b.txt"),
        "{out}"
    );

    // The helper keeps the view for the next task; a file changed deep below
    // directories it listed is still seen anew (a listing's digest vouches for its
    // entries' versions, not for what the listed subdirectories hold).
    std::fs::create_dir_all(c.p("d/e")).unwrap();
    std::fs::write(c.p("d/e/f"), "one\n").unwrap();
    let (out, _) = c.counted(&["/bin/sh", "-c", "ls d; ls d/e; cat d/e/f"]);
    assert_eq!(out, "e\nf\none\n");
    std::fs::write(c.p("d/e/f"), "two, longer\n").unwrap();
    let (out, _) = c.counted(&["/bin/sh", "-c", "ls d; ls d/e; cat d/e/f"]);
    assert_eq!(out, "e\nf\ntwo, longer\n");
    std::fs::write(c.p("d/e/g"), "new\n").unwrap();
    let (out, _) = c.counted(&["/bin/sh", "-c", "ls d/e; cat d/e/g"]);
    assert_eq!(out, "f\ng\nnew\n");

    // The workstation's journal vouches for unchanged files without a look, but not
    // for a file that can change through another name: written through a hard link
    // in a directory no task looked at, it is still seen anew.
    std::fs::write(c.p("linked.txt"), "old\n").unwrap();
    std::fs::create_dir_all(c.p("elsewhere")).unwrap();
    std::fs::hard_link(c.p("linked.txt"), c.p("elsewhere/link")).unwrap();
    for _ in 0..2 {
        assert_eq!(c.counted(&["cat", "linked.txt"]).0, "old\n");
    }
    std::fs::write(c.p("elsewhere/link"), "new, longer\n").unwrap();
    assert_eq!(c.counted(&["cat", "linked.txt"]).0, "new, longer\n");
    // A directory renamed away and replaced by a look-alike: its files are seen anew.
    std::fs::create_dir_all(c.p("r/s")).unwrap();
    std::fs::write(c.p("r/s/t"), "1\n").unwrap();
    for _ in 0..2 {
        assert_eq!(c.counted(&["cat", "r/s/t"]).0, "1\n");
    }
    std::fs::rename(c.p("r"), c.p("r.old")).unwrap();
    std::fs::create_dir_all(c.p("r/s")).unwrap();
    std::fs::write(c.p("r/s/t"), "2\n").unwrap();
    assert_eq!(c.counted(&["cat", "r/s/t"]).0, "2\n");

    // The cache outlives the helper's agent.
    let h1 = Node::new(c.bed.host("h1"), herd_bin());
    sigterm(&c.agents.0[1]);
    let _ = c.agents.0[1].wait();
    c.agents.0[1] = h1.agent(&[]);
    let ws = c.ws();
    wait_for("h1 back", CONVERGE, || all_see(&[ws], "h1", "alive"));
    let (out, warm) = c.counted(&["cat", "data.txt"]);
    assert_eq!(out, "second, longer\n");
    assert_eq!(warm, 1, "still warm after the helper's agent restarted");
}

#[test]
fn a_node_without_the_submit_role_cannot_run_tasks_on_others() {
    // The workstation executes tasks too here, so h1 has somewhere to send one.
    let c = Cluster::start_with(&[]);
    // h1 joined with the default token: exec only. Its own `herd run` sent to the
    // workstation must be refused there (the workstation checks h1's certificate).
    let out = c
        .bed
        .host("h1")
        .command(
            herd_testbed::MINIMAL_BINARY,
            &[
                "run",
                "--state",
                "/var/lib/herd",
                "-T",
                "--on",
                "ws",
                "--",
                "true",
            ],
        )
        .current_dir("/")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(err.contains("lacks the submit role"), "{err}");
}

#[test]
fn herds_own_failures_exit_255_with_one_line() {
    let mut c = Cluster::start();
    let run = |c: &Cluster, args: &[&str]| c.run_cmd(&[&["-T"], args].concat()).output().unwrap();
    let check = |out: &Output, needle: &str| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with("herd: ") && err.contains(needle),
            "{needle:?} in {err}"
        );
    };
    check(&run(&c, &["--on", "nosuch", "--", "true"]), "no node named");
    // The workstation lends no cores (--cpus 0).
    check(&run(&c, &["--on", "ws", "--", "true"]), "lends no cores");
    // The only helper leaves: nothing can take the task.
    sigterm(&c.agents.0[1]);
    let _ = c.agents.0[1].wait();
    let ws = c.ws();
    wait_for("h1 left", CONVERGE, || all_see(&[ws], "h1", "left"));
    check(&run(&c, &["--", "true"]), "no helper is available");
    // No agent at all.
    let out = c
        .bed
        .host("ws")
        .command(
            herd_bin().to_str().unwrap(),
            &["run", "--state", "/nonexistent-herd-state", "--", "true"],
        )
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    check(&out, "no herd agent is running");
}
