//! End-to-end tests of placement, re-runs and transparent offload on the testbed: a
//! workstation with the machine's real filesystem and helpers whose root holds only
//! herd. Needs root; fails, never skips, without it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use herd_testbed::cluster::{Agents, Node, ok, text, wait_for};
use herd_testbed::{HostSpec, Testbed};

const CONVERGE: Duration = Duration::from_secs(40);

fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

struct Cluster {
    bed: Testbed,
    _agents: Agents,
    project: tempfile::TempDir,
}

impl Cluster {
    /// `ws` (real filesystem, `ws_args` for its agent) and minimal helpers with the
    /// given CPU quotas.
    fn start(ws_args: &[&str], helpers: &[(&str, f64)]) -> Cluster {
        Cluster::start_with(ws_args, helpers, &[])
    }

    /// As [`Cluster::start`], with `helper_args` for every helper's agent.
    fn start_with(ws_args: &[&str], helpers: &[(&str, f64)], helper_args: &[&str]) -> Cluster {
        let mut bed = Testbed::new().expect("the testbed needs root");
        bed.add_host(HostSpec::real_fs("ws").cpu_quota(1.0))
            .unwrap();
        for (h, q) in helpers {
            bed.add_host(HostSpec::minimal(*h, herd_bin()).cpu_quota(*q))
                .unwrap();
        }
        let ws = Node::new(bed.host("ws"), herd_bin());
        let token = ws.init();
        let mut args = vec!["--no-mdns"];
        args.extend_from_slice(ws_args);
        let mut agents = vec![ws.agent(&args)];
        for (h, _) in helpers {
            let n = Node::new(bed.host(h), herd_bin());
            let listen = n.listen();
            let mut args = vec!["--join", token.as_str(), "--name", h, "--listen", &listen];
            args.extend_from_slice(helper_args);
            agents.push(n.agent(&args));
        }
        let names: Vec<&str> = helpers.iter().map(|(h, _)| *h).collect();
        wait_for("helpers alive with load reports at ws", CONVERGE, || {
            ws.nodes().is_some_and(|ns| {
                names.iter().all(|h| {
                    ns.iter().any(|n| {
                        n["name"] == *h
                            && n["state"] == "alive"
                            && n["cpus"].as_f64().unwrap_or(0.0) > 0.0
                            && n["roles"]
                                .as_array()
                                .is_some_and(|r| r.contains(&"exec".into()))
                    })
                })
            })
        });
        let project = tempfile::Builder::new()
            .prefix("herd-batch-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        Cluster {
            bed,
            _agents: Agents(agents),
            project,
        }
    }

    fn ws(&self) -> Node<'_> {
        Node::new(self.bed.host("ws"), herd_bin())
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.project.path().join(rel)
    }

    /// `herd SUB --state STATE ARGS` on the workstation in the project directory.
    fn herd(&self, sub: &str, args: &[&str]) -> herd_testbed::HostCommand {
        let state = self.ws().state();
        let mut argv = vec![sub, "--state", state.as_str()];
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

    fn output(&self, sub: &str, args: &[&str]) -> Output {
        self.herd(sub, args).output().unwrap()
    }

    fn submitted(&self) -> u64 {
        let out = self.output("status", &["--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["tasks_submitted"].as_u64().unwrap()
    }
}

/// Files in `dir` whose names contain `needle`.
fn files_with(dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(needle))
        .collect()
}

#[test]
fn slots_count_the_workstation_and_the_helpers_and_local_runs_skip_the_sandbox() {
    let c = Cluster::start(&[], &[("h1", 0.5), ("h2", 1.0)]);
    // ws 1.0 + h1 0.5 + h2 1.0: one slot each, and a quarter more (rounded up) to
    // hide tasks' starts and commits.
    let slots: u32 = ok(&c.output("slots", &[])).trim().parse().unwrap();
    assert_eq!(slots, 4);

    // Pinned to the workstation: runs there, directly (same pid namespace as this
    // test, the real /tmp), and its writes land.
    let me = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let out = ok(&c.output(
        "run",
        &[
            "--on",
            "ws",
            "--",
            "sh",
            "-c",
            "echo $HERD_NODE; readlink /proc/self/ns/pid; echo local > here.txt",
        ],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ws");
    assert_eq!(Path::new(lines[1]), me);
    assert_eq!(std::fs::read_to_string(c.p("here.txt")).unwrap(), "local\n");
    // A missing command is 127, as locally.
    let out = c.output("run", &["--on", "ws", "--", "no-such-command-here"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));

    // `--remote` keeps it off the workstation.
    let out = ok(&c.output("run", &["--remote", "--", "sh", "-c", "echo $HERD_NODE"]));
    assert!(out.trim() == "h1" || out.trim() == "h2", "{out}");

    // Six two-second tasks at once on three slots: they spread over the workstation
    // and the helpers (where exactly is placement's choice: a slow helper may be
    // passed over for a faster node that frees soon), and each runs once.
    let kids: Vec<Child> = (0..6)
        .map(|i| {
            let script = format!("sleep 2; echo $HERD_NODE > out.{i}");
            c.herd("run", &["-T", "--", "sh", "-c", &script])
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        ok(&k.wait_with_output().unwrap());
    }
    let mut nodes: Vec<String> = (0..6)
        .map(|i| {
            std::fs::read_to_string(c.p(&format!("out.{i}")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    assert!(
        nodes.contains(&"ws".to_string()) && nodes.len() >= 2,
        "the workstation and a helper took work: {nodes:?}"
    );
}

#[test]
fn a_task_runs_again_elsewhere_when_its_helper_is_cut_off_and_the_late_result_is_dropped() {
    let c = Cluster::start(&["--cpus", "0"], &[("h1", 0.5), ("h2", 0.5)]);
    let mut child = c
        .herd(
            "run",
            &[
                "-T",
                "--retries",
                "2",
                "--",
                "sh",
                "-c",
                "echo start $HERD_NODE >&2; sleep 6; echo $HERD_NODE > result; echo done $HERD_NODE >&2",
            ],
        )
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(CONVERGE).expect("the task started");
    let victim = first.strip_prefix("start ").expect(&first).to_string();
    let other = if victim == "h1" { "h2" } else { "h1" };
    c.bed.host(&victim).partition().unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = reader.join();
    let lines: Vec<String> = rx.try_iter().collect();
    assert!(
        out.status.success(),
        "status {:?}; stderr {lines:?}",
        out.status
    );
    assert!(
        lines.iter().any(|l| l.contains("running the task again")),
        "{lines:?}"
    );
    assert!(lines.contains(&format!("done {other}")), "{lines:?}");
    assert_eq!(
        std::fs::read_to_string(c.p("result")).unwrap(),
        format!("{other}\n")
    );

    // The cut-off helper comes back after its copy of the task would have finished:
    // nothing of that copy ever reaches the workstation.
    c.bed.host(&victim).heal().unwrap();
    wait_for("the healed helper is alive again", CONVERGE, || {
        c.ws().state_of(&victim).as_deref() == Some("alive")
    });
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        std::fs::read_to_string(c.p("result")).unwrap(),
        format!("{other}\n")
    );
    assert!(files_with(c.project.path(), "herd-").is_empty());
}

#[test]
fn a_lost_task_without_retries_fails_with_255_and_commits_nothing() {
    let c = Cluster::start(&["--cpus", "0"], &[("h1", 0.5)]);
    let mut child = c
        .herd(
            "run",
            &[
                "-T",
                "--",
                "sh",
                "-c",
                "echo start >&2; echo partial > result; sleep 30",
            ],
        )
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert_eq!(line, "start\n");
    c.bed.host("h1").kill_all().unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(255), "{rest}");
    assert!(rest.starts_with("herd: ") && rest.contains("h1"), "{rest}");
    assert!(rest.contains("nothing of the task was committed"), "{rest}");
    assert!(!c.p("result").exists());
}

/// A small multi-file C project: `make` builds `prog`, which prints a checksum.
fn write_c_project(dir: &Path, files: usize) {
    let mut main = String::from("#include <stdio.h>\n");
    let mut calls = String::new();
    let mut objs = Vec::new();
    for i in 0..files {
        std::fs::write(
            dir.join(format!("f{i}.c")),
            format!(
                "#include \"common.h\"\nunsigned long f{i}(unsigned long x) {{\n  for (int k = 0; k < 1000; k++) x = x * 6364136223846793005UL + {i};\n  return x ^ SEED;\n}}\n"
            ),
        )
        .unwrap();
        main.push_str(&format!("unsigned long f{i}(unsigned long);\n"));
        calls.push_str(&format!("  x = f{i}(x);\n"));
        objs.push(format!("f{i}.o"));
    }
    main.push_str(&format!(
        "int main(void) {{\n  unsigned long x = 1;\n{calls}  printf(\"%lu\\n\", x);\n  return 0;\n}}\n"
    ));
    std::fs::write(dir.join("main.c"), main).unwrap();
    std::fs::write(dir.join("common.h"), "#define SEED 42UL\n").unwrap();
    std::fs::write(
        dir.join("Makefile"),
        format!(
            "CFLAGS = -O2\nOBJS = main.o {}\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n%.o: %.c common.h\n\t$(CC) $(CFLAGS) -c $< -o $@\nclean:\n\trm -f prog *.o\n",
            objs.join(" ")
        ),
    )
    .unwrap();
}

/// Plain `make`, with no `-j`, inside `herd shell` runs jobs side by side: the shell's
/// jobserver gives it the cluster's width. Two recipes wait for each other (each until
/// it sees the other's marker): a serial make would run one, alone, until its wait ran
/// out, and both would record that they ran alone.
#[test]
fn plain_make_in_herd_shell_takes_the_clusters_width_from_its_jobserver() {
    let c = Cluster::start(&[], &[("h1", 1.0)]);
    let recipe = "@touch run.$@; n=0; while [ $$(ls run.* | wc -l) -lt 2 ] && [ $$n -lt 300 ]; do sleep 0.1; n=$$((n+1)); done; ls run.* | wc -l > seen.$@";
    std::fs::write(
        c.p("Makefile"),
        format!("all: a b\na:\n\t{recipe}\nb:\n\t{recipe}\n"),
    )
    .unwrap();
    let out = c.output("shell", &["--", "sh", "-c", "echo \"$MAKEFLAGS\"; make"]);
    let stdout = ok(&out);
    assert!(
        stdout
            .lines()
            .next()
            .unwrap_or("")
            .contains("--jobserver-auth="),
        "{stdout}"
    );
    for t in ["a", "b"] {
        let seen = std::fs::read_to_string(c.p(&format!("seen.{t}"))).unwrap();
        assert_eq!(seen.trim(), "2", "{t} ran alone: {stdout}");
    }
}

#[test]
fn make_inside_herd_shell_builds_on_the_helpers_like_a_local_build() {
    // The workstation lends no cores: every compile and the link run on helpers.
    let c = Cluster::start(&["--cpus", "0"], &[("h1", 0.5), ("h2", 0.5)]);
    let local = c.p("local");
    let remote = c.p("remote");
    for d in [&local, &remote] {
        std::fs::create_dir(d).unwrap();
        write_c_project(d, 6);
    }
    let built = std::process::Command::new("make")
        .args(["-s", "-j2"])
        .current_dir(&local)
        .output()
        .unwrap();
    ok(&built);
    let want = ok(&std::process::Command::new(local.join("prog"))
        .output()
        .unwrap());

    let shell_dirs = || -> Vec<std::ffi::OsString> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with("herd-shell-"))
            .collect()
    };
    let dirs_before = shell_dirs();
    let before = c.submitted();
    // Two slots and a quarter more, rounded up: the jobserver's width. A plain `make`
    // takes it from the shell's jobserver; an explicit -jN still works as ever.
    let slots = ok(&c.output("slots", &[])).trim().to_string();
    assert_eq!(slots, "3");
    let mut make = c.herd("shell", &["--", "make", "-s", &format!("-j{slots}")]);
    make.current_dir(&remote).env_remove("XDG_RUNTIME_DIR");
    ok(&make.output().unwrap());
    // 7 compiles and the link went through herd, to the helpers.
    assert!(c.submitted() - before >= 8, "{}", c.submitted() - before);
    let got = ok(&std::process::Command::new(remote.join("prog"))
        .output()
        .unwrap());
    assert_eq!(got, want);
    for f in ["main.o", "f0.o", "f5.o"] {
        assert_eq!(
            std::fs::read(local.join(f)).unwrap(),
            std::fs::read(remote.join(f)).unwrap(),
            "{f} differs from the local build's"
        );
    }
    // The masquerade directory is gone with the shell.
    wait_for(
        "the masquerade directory is removed",
        Duration::from_secs(10),
        || shell_dirs() == dirs_before,
    );

    // The user's config hides more paths from their tasks.
    std::fs::create_dir(c.p("private")).unwrap();
    std::fs::write(c.p("private/key"), "secret").unwrap();
    let config = c.p("herd.toml");
    std::fs::write(
        &config,
        format!("version = 1\n[run]\nhide = [{:?}]\n", c.p("private")),
    )
    .unwrap();
    let mut run = c.herd("run", &["--", "sh", "-c", "cat private/key || echo hidden"]);
    run.env("HERD_CONFIG", &config);
    assert_eq!(ok(&run.output().unwrap()), "hidden\n");
    let mut run = c.herd("run", &["--", "cat", "private/key"]);
    run.env("HERD_CONFIG", "/nonexistent/herd.toml");
    assert_eq!(ok(&run.output().unwrap()), "secret");
}

/// `herd map` on the workstation, in the project directory, with `stdin`.
fn map_cmd(c: &Cluster, args: &[&str]) -> herd_testbed::HostCommand {
    c.herd("map", args)
}

#[test]
fn herd_map_spreads_jobs_keeps_outputs_whole_and_counts_failures() {
    let c = Cluster::start(&[], &[("h1", 0.5), ("h2", 0.5)]);
    std::fs::create_dir(c.p("dir")).unwrap();
    // Replacement strings, the job log, and the exit status (one job fails).
    let out = map_cmd(
        &c,
        &[
            "-j",
            "3",
            "--joblog",
            "jobs.tsv",
            "echo {/.} {#} {//} > {.}.out; echo {/} {#}; test {#} -ne 2",
            ":::",
            "dir/a.txt",
            "dir/b.txt",
            "dir/c d.txt",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let mut lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, vec!["a.txt 1", "b.txt 2", "c d.txt 3"]);
    assert_eq!(
        std::fs::read_to_string(c.p("dir/c d.out")).unwrap(),
        "c d 3 dir\n"
    );
    // One progress line per finished job on a non-terminal stderr.
    assert_eq!(
        text(&out.stderr).lines().count(),
        3,
        "{}",
        text(&out.stderr)
    );
    let log = std::fs::read_to_string(c.p("jobs.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = log.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        rows[0],
        vec![
            "Seq",
            "Host",
            "Starttime",
            "JobRuntime",
            "Send",
            "Receive",
            "Exitval",
            "Signal",
            "Command"
        ]
    );
    assert_eq!(rows.len(), 4);
    for r in &rows[1..] {
        assert!(["ws", "h1", "h2"].contains(&r[1]), "{r:?}");
        assert_eq!(r[6], if r[0] == "2" { "1" } else { "0" }, "{r:?}");
    }

    // Arguments from stdin lines; outputs of jobs that print in pieces stay whole.
    let mut cmd = map_cmd(
        &c,
        &["-j", "4", "for i in 1 2 3; do echo {}-$i; sleep 0.3; done"],
    );
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut si = child.stdin.take().unwrap();
        si.write_all(b"a\nb\nc\nd\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = ok(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 12, "{stdout}");
    for chunk in lines.chunks(3) {
        let arg = chunk[0].split('-').next().unwrap();
        assert_eq!(
            chunk,
            [
                format!("{arg}-1").as_str(),
                &format!("{arg}-2"),
                &format!("{arg}-3")
            ],
            "{stdout}"
        );
    }
}

#[test]
fn a_batch_loses_nothing_when_a_helper_is_killed_midway() {
    let c = Cluster::start(&["--cpus", "0"], &[("h1", 0.5), ("h2", 0.5), ("h3", 0.5)]);
    let args: Vec<String> = (1..=9).map(|i| i.to_string()).collect();
    let mut argv = vec![
        "-j",
        "9",
        "--joblog",
        "jobs.tsv",
        "echo start {}; sleep 3; echo {} $HERD_NODE > out.{}; echo end {}",
        ":::",
    ];
    argv.extend(args.iter().map(String::as_str));
    let child = map_cmd(&c, &argv).spawn().unwrap();
    // Once h1 runs a job of the batch, kill every process of h1.
    wait_for("h1 runs a job", CONVERGE, || {
        c.ws().nodes().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["name"] == "h1" && n["tasks"].as_u64().unwrap_or(0) > 0)
        })
    });
    c.bed.host("h1").kill_all().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = ok(&out);
    // Every job ran to its end exactly once, as far as the workstation can tell: one
    // start and one end line each (the lost attempts' output was dropped), one output
    // file each, written by a surviving helper or by h1 before it died.
    for a in &args {
        let starts = stdout
            .lines()
            .filter(|l| *l == format!("start {a}"))
            .count();
        let ends = stdout.lines().filter(|l| *l == format!("end {a}")).count();
        assert_eq!((starts, ends), (1, 1), "job {a}: {stdout}");
        let file = std::fs::read_to_string(c.p(&format!("out.{a}"))).unwrap();
        assert!(file.starts_with(&format!("{a} h")), "{file}");
    }
    let log = std::fs::read_to_string(c.p("jobs.tsv")).unwrap();
    assert_eq!(log.lines().count(), 10, "{log}");
    assert!(
        log.lines()
            .skip(1)
            .all(|l| l.split('\t').nth(6) == Some("0"))
    );
    assert!(files_with(c.project.path(), "herd-").is_empty());
}

/// The hang found under faults: a task lost with its helper was placed again on the
/// workstation itself, and `herd map`'s client, past its first placement, ignored the
/// "run it here" and waited for ever. Here the workstation lends one core and the only
/// helper is killed while it runs a job, so the re-run can only land on the
/// workstation.
#[test]
fn a_task_lost_with_its_helper_runs_again_on_the_workstation_itself() {
    let c = Cluster::start(&["--cpus", "1"], &[("h1", 1.0)]);
    let args: Vec<String> = (1..=3).map(|i| i.to_string()).collect();
    let mut argv = vec![
        "-j",
        "3",
        "echo start {}; sleep 2; echo {} $HERD_NODE > out.{}; echo end {}",
        ":::",
    ];
    argv.extend(args.iter().map(String::as_str));
    let mut child = map_cmd(&c, &argv).spawn().unwrap();
    wait_for("h1 runs a job", CONVERGE, || {
        c.ws().nodes().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["name"] == "h1" && n["tasks"].as_u64().unwrap_or(0) > 0)
        })
    });
    c.bed.host("h1").kill_all().unwrap();
    // The batch ends (it hung before): every job ran once to its end, on ws at last.
    let ended = herd_testbed::cluster::time_until(Duration::from_secs(120), || {
        child.try_wait().unwrap().is_some()
    });
    if ended.is_none() {
        let _ = child.kill();
        let ps = c.output("ps", &[]);
        panic!("herd map hung; herd ps:\n{}", text(&ps.stdout));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = ok(&out);
    for a in &args {
        let ends = stdout.lines().filter(|l| *l == format!("end {a}")).count();
        assert_eq!(ends, 1, "job {a}: {stdout}");
        let file = std::fs::read_to_string(c.p(&format!("out.{a}"))).unwrap();
        assert!(file.starts_with(&format!("{a} ")), "{file}");
    }
    assert!(
        (1..=3).any(|a| std::fs::read_to_string(c.p(&format!("out.{a}")))
            .is_ok_and(|f| f.trim().ends_with(" ws"))),
        "no job ran on the workstation"
    );
}

/// A CPU-bound process standing for the host owner's own work, in the host's cgroups.
struct OwnerLoad(Child);

impl OwnerLoad {
    fn start(host: &herd_testbed::Host) -> OwnerLoad {
        let child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        for dir in host.cgroup_dirs() {
            std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        }
        OwnerLoad(child)
    }
}

impl Drop for OwnerLoad {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_busy_owner_suspends_herds_tasks_and_a_long_suspension_evicts_them_elsewhere() {
    let c = Cluster::start_with(
        &["--cpus", "0"],
        &[("h1", 1.0), ("h2", 0.25)],
        &[
            "--suspend-after",
            "1s",
            "--resume-after",
            "1s",
            "--evict-after",
            "15s",
        ],
    );
    let h1 = Node::new(c.bed.host("h1"), herd_bin());
    let mode = || -> String {
        let out = h1.herd(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["mode"].as_str().unwrap_or("").to_string()
    };
    // A task that ticks on stderr forever; the fast h1 gets it.
    let mut child = c
        .herd(
            "run",
            &[
                "-T",
                "--retries",
                "1",
                "--",
                "sh",
                "-c",
                "while :; do echo tick $HERD_NODE >&2; sleep 0.2; done",
            ],
        )
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(CONVERGE).unwrap(), "tick h1");
    assert_eq!(mode(), "running");

    // The owner gets busy: the task's cgroup is frozen, then thawed when the owner is
    // idle again, and the task goes on.
    let frozen = || -> Vec<bool> {
        let mut states = Vec::new();
        for dir in c.bed.host("h1").cgroup_dirs() {
            for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
                if !e.file_name().to_string_lossy().starts_with("herd-task-") {
                    continue;
                }
                // A group holding one process is the sandbox prepared for the next task
                // (its init waits there), not a running task.
                let procs =
                    std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
                if procs.lines().count() <= 1 {
                    continue;
                }
                if let Ok(s) = std::fs::read_to_string(e.path().join("freezer.state")) {
                    states.push(s.trim() == "FROZEN");
                }
                if let Ok(s) = std::fs::read_to_string(e.path().join("cgroup.freeze")) {
                    states.push(s.trim() == "1");
                }
            }
        }
        states
    };
    assert!(frozen().iter().all(|f| !f), "{:?}", frozen());
    let load = OwnerLoad::start(c.bed.host("h1"));
    wait_for("h1 suspends its task", CONVERGE, || mode() == "suspended");
    let states = frozen();
    assert!(
        !states.is_empty() && states.iter().all(|f| *f),
        "{states:?}"
    );
    drop(load);
    wait_for("h1 resumes its task", CONVERGE, || mode() == "running");
    assert!(frozen().iter().all(|f| !f), "{:?}", frozen());
    while rx.try_recv().is_ok() {}
    let resumed = rx.recv_timeout(CONVERGE).expect("the task goes on");
    assert_eq!(resumed, "tick h1");

    // Busy for longer than --evict-after: the task is evicted and runs again on h2.
    let _load = OwnerLoad::start(c.bed.host("h1"));
    let mut seen = Vec::new();
    wait_for("the task runs on h2", Duration::from_secs(90), || {
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l.clone());
            if l == "tick h2" {
                return true;
            }
        }
        false
    });
    assert!(
        seen.iter()
            .any(|l| l.contains("evicted the task") && l.contains("running the task again")),
        "{seen:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_task_that_eats_the_helpers_memory_is_evicted_and_runs_elsewhere() {
    // h1 (fast, preferred) has 512 MiB and keeps 60% of it free for its owner.
    let mut bed = Testbed::new().expect("the testbed needs root");
    bed.add_host(HostSpec::real_fs("ws").cpu_quota(1.0))
        .unwrap();
    bed.add_host(
        HostSpec::minimal("h1", herd_bin())
            .cpu_quota(1.0)
            .memory_limit(512 << 20),
    )
    .unwrap();
    bed.add_host(HostSpec::minimal("h2", herd_bin()).cpu_quota(0.25))
        .unwrap();
    let ws = Node::new(bed.host("ws"), herd_bin());
    let token = ws.init();
    let mut agents = Agents(vec![ws.agent(&["--no-mdns", "--cpus", "0"])]);
    for (h, extra) in [("h1", vec!["--min-free-mem", "60%"]), ("h2", vec![])] {
        let n = Node::new(bed.host(h), herd_bin());
        let listen = n.listen();
        let mut args = vec!["--join", token.as_str(), "--name", h, "--listen", &listen];
        args.extend(extra);
        agents.0.push(n.agent(&args));
    }
    wait_for("both helpers take work", CONVERGE, || {
        ws.nodes().is_some_and(|ns| {
            ["h1", "h2"]
                .iter()
                .all(|h| ns.iter().any(|n| n["name"] == *h && n["accepting"] == true))
        })
    });
    let project = tempfile::Builder::new()
        .prefix("herd-batch-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let state = ws.state();
    let out = bed
        .host("ws")
        .command(
            herd_bin().to_str().unwrap(),
            &[
                "run",
                "--state",
                &state,
                "-T",
                "--retries",
                "1",
                "--",
                "sh",
                "-c",
                "python3 -c 'import time; x = bytearray(300 << 20); time.sleep(5)' && echo $HERD_NODE > where",
            ],
        )
        .current_dir(project.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    drop(agents);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the helper h1 evicted the task (the host is short of memory)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(project.path().join("where")).unwrap(),
        "h2\n"
    );
}

#[test]
fn ps_kill_and_drain_control_the_cluster() {
    let c = Cluster::start(&["--cpus", "0"], &[("h1", 0.5), ("h2", 0.5)]);
    let accepting = |node: &str| -> Option<bool> {
        c.ws()
            .nodes()?
            .iter()
            .find(|n| n["name"] == node)
            .and_then(|n| n["accepting"].as_bool())
    };
    let ps = || -> Vec<serde_json::Value> {
        serde_json::from_slice(&c.output("ps", &["--json"]).stdout).unwrap()
    };

    // A drained node takes no work (asked from the workstation, carried out by h1).
    ok(&c.output("drain", &["h1"]));
    wait_for("h1 drained", CONVERGE, || accepting("h1") == Some(false));
    for _ in 0..3 {
        let out = ok(&c.output("run", &["--", "sh", "-c", "echo $HERD_NODE"]));
        assert_eq!(out, "h2\n");
    }
    ok(&c.output("undrain", &["h1"]));
    wait_for("h1 undrained", CONVERGE, || accepting("h1") == Some(true));

    // herd kill of a running task: it ends, nothing of it is committed.
    let child = c
        .herd(
            "run",
            &[
                "--",
                "sh",
                "-c",
                "echo x > killed.txt; echo started >&2; sleep 60",
            ],
        )
        .spawn()
        .unwrap();
    wait_for("the task runs", CONVERGE, || {
        ps().iter().any(|t| t["state"] == "running")
    });
    let tasks = ps();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert!(tasks[0]["command"].as_str().unwrap().contains("sleep 60"));
    let id = tasks[0]["id"].as_u64().unwrap().to_string();
    ok(&c.output("kill", &[&id]));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("killed"),
        "{}",
        text(&out.stderr)
    );
    assert!(!c.p("killed.txt").exists());
    assert!(ps().is_empty());

    // A queued task can be killed too; an unknown id is an error.
    ok(&c.output("drain", &["h1"]));
    ok(&c.output("drain", &["h2"]));
    wait_for("both drained", CONVERGE, || {
        accepting("h1") == Some(false) && accepting("h2") == Some(false)
    });
    let child = c.herd("run", &["--", "true"]).spawn().unwrap();
    wait_for("the task waits", CONVERGE, || {
        ps().iter().any(|t| t["state"] == "queued")
    });
    let id = ps()[0]["id"].as_u64().unwrap().to_string();
    ok(&c.output("kill", &[&id]));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("killed before it started"),
        "{}",
        text(&out.stderr)
    );
    let out = c.output("kill", &["999999"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no task 999999"),
        "{}",
        text(&out.stderr)
    );
}
