//! A hostile task against its helper, end to end on the testbed: the workstation (the
//! machine's real file system) submits as root, the helper is a host whose root holds
//! only the herd binary (a chroot directory). Each test does what an attacker's task
//! would, checks it was refused with a clear message, and that the helper keeps
//! serving. Needs root; fails, never skips, without it.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use herd_testbed::cluster::{Agents, Node, all_see, ok, text, wait_for};
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
    /// The workstation lends no cores: every task runs on h1.
    fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// As [`Cluster::start`], with more arguments for h1's agent.
    fn start_with(h1_args: &[&str]) -> Cluster {
        Cluster::start_on(HostSpec::minimal("h1", herd_bin()), h1_args)
    }

    /// As [`Cluster::start_with`], with h1 as `h1`.
    fn start_on(h1: HostSpec, h1_args: &[&str]) -> Cluster {
        let mut bed = Testbed::new().expect("the testbed needs root");
        bed.add_host(HostSpec::real_fs("ws")).unwrap();
        bed.add_host(h1).unwrap();
        let (ws, h1) = (
            Node::new(bed.host("ws"), herd_bin()),
            Node::new(bed.host("h1"), herd_bin()),
        );
        let token = ws.init();
        let listen = h1.listen();
        let mut h1_argv = vec!["--join", &token, "--name", "h1", "--listen", &listen];
        h1_argv.extend_from_slice(h1_args);
        let agents = Agents(vec![
            ws.agent(&["--no-mdns", "--cpus", "0"]),
            h1.agent(&h1_argv),
        ]);
        wait_for("h1 alive at ws", CONVERGE, || all_see(&[ws], "h1", "alive"));
        let project = tempfile::Builder::new()
            .prefix("herd-hostile-task")
            .tempdir_in("/var/tmp")
            .unwrap();
        Cluster {
            bed,
            _agents: agents,
            project,
        }
    }

    fn ws(&self) -> Node<'_> {
        Node::new(self.bed.host("ws"), herd_bin())
    }

    /// `PREFIX... herd run --state STATE -T -- sh -c SCRIPT` on the workstation, as
    /// root, in the project directory.
    fn sh_with(&self, prefix: &[&str], script: &str) -> Output {
        let state = self.ws().state();
        let herd = herd_bin().to_str().unwrap();
        let run = [
            "run", "--state", &state, "-T", "--", "/bin/sh", "-c", script,
        ];
        let (program, argv): (&str, Vec<&str>) = match prefix.split_first() {
            Some((first, rest)) => (first, [rest, &[herd], &run].concat()),
            None => (herd, run.to_vec()),
        };
        self.bed
            .host("ws")
            .command(program, &argv)
            .current_dir(self.project.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    }

    fn sh(&self, script: &str) -> Output {
        self.sh_with(&[], script)
    }

    /// The helper still serves: a plain task runs there and says where it ran.
    fn still_serves(&self) {
        assert_eq!(ok(&self.sh("echo $HERD_NODE")).trim(), "h1");
    }
}

/// Output lines as (key, value) pairs for `key=value` lines.
fn values(out: &Output) -> Vec<(String, String)> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn value(out: &Output, key: &str) -> String {
    values(out)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| {
            panic!(
                "no {key}= in the task's output:\n{}\nstderr:\n{}",
                text(&out.stdout),
                text(&out.stderr)
            )
        })
}

#[test]
fn root_on_the_workstation_is_root_only_inside_its_task() {
    let c = Cluster::start();
    let pattern_before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let out = c.sh("echo uid=$(id -u); \
         echo capeff=$(grep CapEff /proc/self/status | tr -d '[:space:]'); \
         echo uidmap=$(cat /proc/self/uid_map | tr -s ' '); \
         m=$(mount -t tmpfs x /mnt 2>&1); echo mount=$?:$m; \
         echo '|/bin/sh -c id' 2>/dev/null > /proc/sys/kernel/core_pattern; echo sysctl=$?; \
         u=$(umount $HOME/.ssh 2>&1); echo umount=$?:$u; \
         u=$(unshare -U -r true 2>&1); echo unshare=$?:$u; \
         echo passwd=$(stat -c %u /etc/passwd)");
    let got = |k| value(&out, k);
    assert_eq!(got("uid"), "0", "{}", text(&out.stderr));
    assert_eq!(got("capeff"), "CapEff:0000000000000000");
    assert_eq!(
        got("uidmap"),
        format!(" 0 {} {}", herd_sandbox_base(), (1u64 << 31) - 1)
    );
    assert!(got("mount").starts_with("32:"), "{}", got("mount"));
    assert!(
        got("mount").contains("ermission denied"),
        "{}",
        got("mount")
    );
    assert_ne!(got("sysctl"), "0");
    assert!(!got("umount").starts_with("0:"), "{}", got("umount"));
    assert!(!got("unshare").starts_with("0:"), "{}", got("unshare"));
    // The workstation's root files are root's inside the task.
    assert_eq!(got("passwd"), "0");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        pattern_before
    );
    c.still_serves();
}

fn herd_sandbox_base() -> u64 {
    1 << 31
}

#[test]
fn a_task_cannot_reach_the_helper_through_proc_ptrace_modules_or_its_state() {
    let c = Cluster::start();
    let h1 = c.bed.host("h1");
    // The helper agent's state directory and socket, as the agent sees them (inside its
    // chroot) and as the helper's machine does.
    let inside = Node::new(h1, herd_bin()).state();
    let outside = h1.machine_path(&inside).display().to_string();
    let script = format!(
        "r=$(ls /proc/1/root/ 2>&1); echo root=$?:$r; \
         r=$(ls /proc/1/fd 2>&1); echo fd=$?:$r; \
         r=$(cat /proc/1/environ 2>&1); echo environ=$?:$r; \
         r=$({{ echo x > /proc/1/fd/1; }} 2>&1); echo fdwrite=$?:$r; \
         r=$({{ echo h > /proc/sysrq-trigger; }} 2>&1); echo sysrq=$?:$r; \
         echo procs=$(ls /proc | grep -c '^[0-9]'); \
         for p in {inside}/agent.sock {outside}/agent.sock {outside}/ca.key; do \
           r=$(ls -d $p 2>&1); echo state=$?:$r; done; \
         python3 -c '
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, nr, *a):
    r = libc.syscall(nr, *[ctypes.c_long(x) for x in a])
    print(name + \"=\" + (\"ok\" if r >= 0 else os.strerror(ctypes.get_errno())))
call(\"ptrace\", 101, 16, 1, 0, 0)
call(\"init_module\", 175, 0, 0, 0)
call(\"finit_module\", 313, 0, 0, 0)
call(\"kexec_load\", 246, 0, 0, 0, 0)
call(\"bpf\", 321, 0, 0, 0)
'"
    );
    let out = c.sh(&script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = |k| value(&out, k);
    for key in ["root", "fd", "environ", "fdwrite"] {
        let v = got(key);
        assert!(
            !v.starts_with("0:") && v.contains("ermission denied"),
            "{key}: {v}"
        );
    }
    // Read-only where the kernel has the file (this one may be built without it).
    let sysrq = if Path::new("/proc/sysrq-trigger").exists() {
        "Read-only file system"
    } else {
        "nonexistent"
    };
    assert!(got("sysrq").contains(sysrq), "{}", got("sysrq"));
    // pid 1, the shell, ls and grep at most: nothing of the helper's.
    let procs: u32 = got("procs").parse().unwrap();
    assert!(procs <= 5, "{procs} processes visible");
    let states: Vec<String> = values(&out)
        .into_iter()
        .filter(|(k, _)| k == "state")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(states.len(), 3);
    for v in states {
        assert!(v.contains("No such file or directory"), "{v}");
    }
    for key in ["ptrace", "init_module", "finit_module", "kexec_load", "bpf"] {
        assert_eq!(got(key), "Operation not permitted", "{key}");
    }
    c.still_serves();
}

#[test]
fn a_submitter_cannot_raise_the_tasks_limits_or_priority() {
    let c = Cluster::start();
    let out = c.sh_with(
        // Raising RTPRIO or NICE needs CAP_SYS_RESOURCE, which root lacks on this CI
        // machine: the clamp of a request that raises them is the sandbox's own test
        // (`hardening::requested_limits_are_clamped_to_the_helper_and_nice_and_rtprio_never_raised`); here the task must not gain them.
        &["prlimit", "--nofile=1234:1234"],
        "grep -E 'open files|realtime priority|nice priority' /proc/self/limits \
           | sed -E 's/^Max (open files|realtime priority|nice priority) +([0-9]+) +([0-9]+).*/\\1=\\2:\\3/; s/ /_/'; \
         r=$(chrt -f 1 true 2>&1); echo chrt=$?:$r; \
         r=$(renice -n -5 -p $$ 2>&1); echo renice=$?:$r; \
         echo policy=$(chrt -p $$ | sed -n 's/.*scheduling policy: //p'); \
         echo nice=$(cut -d' ' -f19 /proc/self/stat)",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = |k| value(&out, k);
    // Lowering a limit is the submitter's right; raising one, or any real-time or
    // nice allowance, is not.
    assert_eq!(got("open_files"), "1234:1234");
    assert_eq!(got("realtime_priority"), "0:0");
    assert_eq!(got("nice_priority"), "0:0");
    assert!(!got("chrt").starts_with("0:"), "{}", got("chrt"));
    assert!(!got("renice").starts_with("0:"), "{}", got("renice"));
    assert_eq!(got("policy"), "SCHED_IDLE");
    assert_eq!(got("nice"), "19");
    c.still_serves();
}

#[test]
fn a_fork_bomb_is_ended_with_a_message_and_the_helper_keeps_serving() {
    let c = Cluster::start();
    let out = c.sh("(b() { b | b & }; b) & exec sleep 600");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("pids.max"), "{err}");
    c.still_serves();
}

#[test]
fn a_task_cannot_reach_or_mount_a_cgroup_file_system() {
    let c = Cluster::start();
    let out = c.sh("r=$(ls /sys/fs/cgroup 2>&1); echo sys=$?:$r; \
         mkdir -p /var/tmp/cg; \
         r=$(mount -t cgroup2 none /var/tmp/cg 2>&1); echo cgroup2=$?:$r; \
         r=$(mount -t cgroup -o cpu none /var/tmp/cg 2>&1); echo cgroup1=$?:$r; \
         r=$(mount -t proc none /var/tmp/cg 2>&1); echo proc=$?:$r");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = |k| value(&out, k);
    assert!(
        got("sys").contains("No such file or directory"),
        "{}",
        got("sys")
    );
    for key in ["cgroup2", "cgroup1", "proc"] {
        let v = got(key);
        assert!(
            v.starts_with("32:") && v.contains("ermission denied"),
            "{key}: {v}"
        );
    }
    c.still_serves();
}

#[test]
fn a_task_over_its_disk_grant_is_stopped_and_nothing_is_committed() {
    let c = Cluster::start_with(&["--disk", "8M"]);
    // Well over the grant at once, then a wait the stop cuts short: the old helper let
    // it finish and committed the 64 MiB.
    let out = c.sh("echo small > small.txt; head -c 64M /dev/zero > big.bin; sleep 30");
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(
        err.contains("the task was stopped") && err.contains("over the 8.0M of disk"),
        "{err}"
    );
    assert!(err.contains("nothing was committed"), "{err}");
    for name in ["small.txt", "big.bin"] {
        assert!(
            !c.project.path().join(name).exists(),
            "{name} was committed"
        );
    }
    // Under the grant, the same helper writes and commits.
    ok(&c.sh("head -c 1M /dev/zero > fits.bin"));
    assert_eq!(
        std::fs::metadata(c.project.path().join("fits.bin"))
            .unwrap()
            .len(),
        1 << 20
    );
    c.still_serves();
}

/// A helper run from a plain chroot directory (not a mount point, as on a NAS that runs
/// Debian in one): the kernel refuses user namespaces to chrooted processes and `/`
/// there cannot be made private or pivoted from, so its probe failed ("make mounts
/// private: Invalid argument"). Its tasks run, in their own user namespace.
#[test]
fn a_helper_in_a_plain_chroot_directory_runs_sandboxed_tasks() {
    let c = Cluster::start_on(HostSpec::minimal("h1", herd_bin()).plain_chroot(), &[]);
    let root = c.bed.host("h1").root_dir().unwrap().to_path_buf();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(root.to_str().unwrap())),
        "the test needs h1's root not to be a mount point here"
    );
    let out = c.sh("echo uidmap=$(tr -s ' ' < /proc/self/uid_map); echo made > made.txt");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        value(&out, "uidmap"),
        format!(" 0 {} {}", herd_sandbox_base(), (1u64 << 31) - 1)
    );
    assert_eq!(
        std::fs::read_to_string(c.project.path().join("made.txt")).unwrap(),
        "made\n"
    );
    c.still_serves();
}
