//! Attacks on the sandbox from inside a task: capabilities, forbidden system calls,
//! the kernel's knobs in /proc, resource limits, fork bombs and pid 1's channels.
//!
//! Like `sandbox.rs`, these need root (CI runs them as root) and fail, not skip,
//! without it. Rootless sandboxes are tested by running `herd-sandbox-run` as nobody.

use std::ffi::OsString;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use herd_sandbox::{CgroupSpec, SandboxSpec, StdioFd, TaskExit, TaskStdio, spawn};

mod common;

use common::*;

impl Layers {
    fn new() -> Layers {
        Layers::new_in("herd-sandbox-hardening")
    }
    /// `sh -c script` over the host's root, as `uid`.
    fn spec(&self, uid: u32, script: &str) -> SandboxSpec {
        let mut spec = SandboxSpec::new(
            "/",
            self.upper(),
            self.work(),
            vec!["/bin/sh".into(), "-c".into(), script.into()],
        );
        spec.uid = uid;
        spec.gid = uid;
        spec
    }
}

fn unique(tag: &str) -> String {
    format!("herd-hard-{tag}-{}", std::process::id())
}

/// The `Cap*:` lines of /proc/self/status, as the task sees them, in dash only.
const CAPS: &str =
    "while read k v; do case $k in Cap*) echo $k $v;; esac; done < /proc/self/status";

fn all_caps_zero(out: &str) -> bool {
    let caps: Vec<&str> = out.lines().filter(|l| l.starts_with("Cap")).collect();
    caps.len() == 5 && caps.iter().all(|l| l.ends_with(" 0000000000000000"))
}

// ---------------------------------------------------------------------------------
// 1. Capabilities

#[test]
fn a_root_task_holds_no_capability_and_cannot_mount_or_write_sysctls() {
    let l = Layers::new();
    let secret = Path::new("/var/tmp").join(unique("caps-secret"));
    fs::create_dir_all(secret.join(".ssh")).unwrap();
    fs::write(secret.join(".ssh/id_ed25519"), "PRIVATE").unwrap();
    let s = secret.display();
    let mut spec = l.spec(
        0,
        &format!(
            "{CAPS}; id -u; \
             mount -t tmpfs x /mnt 2>/dev/null && echo MOUNTED; \
             umount {s}/.ssh 2>/dev/null && echo UNMOUNTED; umount -l {s}/.ssh 2>/dev/null && echo UNMOUNTED; \
             cat {s}/.ssh/id_ed25519 2>/dev/null; \
             cat /proc/sys/kernel/core_pattern > /tmp/cp; cat /tmp/cp > /proc/sys/kernel/core_pattern 2>/dev/null && echo SYSCTL; \
             renice -n -5 -p $$ >/dev/null 2>&1 && echo RENICED; \
             chrt -o -p 0 $$ 2>/dev/null && echo LEFT_IDLE; \
             hostname pwned 2>/dev/null && echo HOSTNAME; \
             chown 65534 /etc/hostname 2>/dev/null && echo CHOWNED; \
             grep NoNewPrivs /proc/self/status"
        ),
    );
    spec.idle = true;
    spec.hidden = vec![secret.join(".ssh")];
    let out = run(spec);
    fs::remove_dir_all(&secret).unwrap();
    assert!(all_caps_zero(&out.stdout), "{}", out.stdout);
    let rest: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("Cap"))
        .collect();
    assert_eq!(rest, ["0", "NoNewPrivs:\t1"], "stderr: {}", out.stderr);
}

#[test]
fn a_plain_task_has_an_empty_bounding_set() {
    let l = Layers::new();
    let out = run(l.spec(65534, CAPS));
    assert!(all_caps_zero(&out.stdout), "{}", out.stdout);
}

/// A minimal root: dash as /bin/sh with its libraries, /proc, /dev, /tmp; everything
/// owned by `owner`.
fn minimal_root(base: &Path, owner: u32) -> PathBuf {
    let root = base.join("lower");
    for d in ["bin", "proc", "dev", "tmp", "home/u"] {
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
    Command::new("chown")
        .arg("-R")
        .arg(format!("{owner}:{owner}"))
        .arg(&root)
        .status()
        .unwrap();
    root
}

/// Runs `script` with dash in a rootless sandbox (herd-sandbox-run as nobody) as
/// `uid` inside.
fn rootless(l: &Layers, uid: u32, script: &str) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let lower = l.dir.path().join("lower");
    if !lower.exists() {
        minimal_root(l.dir.path(), 65534);
    }
    for d in [l.upper(), l.work()] {
        chown(&d, Some(65534), Some(65534)).unwrap();
    }
    let args: Vec<OsString> = vec![
        lower.into(),
        l.upper().into(),
        l.work().into(),
        uid.to_string().into(),
        uid.to_string().into(),
        "/".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
    ];
    Command::new(RUN)
        .args(args)
        .uid(65534)
        .gid(65534)
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn a_rootless_task_holds_no_capability_as_root_or_as_a_user() {
    for uid in [0, 1000] {
        let l = Layers::new();
        let out = rootless(&l, uid, CAPS);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "uid {uid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all_caps_zero(&stdout), "uid {uid}: {stdout}");
    }
}

// ---------------------------------------------------------------------------------
// 2. seccomp

/// `(name, number, arguments)` of every system call the filter refuses, with
/// arguments that would do no harm if the call went through.
fn refused_calls() -> Vec<(&'static str, i64, Vec<i64>)> {
    use libc::*;
    let mut v: Vec<(&'static str, i64, Vec<i64>)> = vec![
        ("mount", SYS_mount, vec![0, 0, 0, 0, 0]),
        ("umount2", SYS_umount2, vec![0, 0]),
        ("pivot_root", SYS_pivot_root, vec![0, 0]),
        ("chroot", SYS_chroot, vec![0]),
        ("move_mount", SYS_move_mount, vec![-1, 0, -1, 0, 0]),
        ("open_tree", SYS_open_tree, vec![-1, 0, 0]),
        ("fsopen", SYS_fsopen, vec![0, 0]),
        ("fsmount", SYS_fsmount, vec![-1, 0, 0]),
        ("fsconfig", SYS_fsconfig, vec![-1, 0, 0, 0, 0]),
        ("fspick", SYS_fspick, vec![-1, 0, 0]),
        ("mount_setattr", SYS_mount_setattr, vec![-1, 0, 0, 0, 0]),
        ("open_tree_attr", 467, vec![-1, 0, 0, 0, 0]),
        ("init_module", SYS_init_module, vec![0, 0, 0]),
        ("finit_module", SYS_finit_module, vec![-1, 0, 0]),
        ("delete_module", SYS_delete_module, vec![0, 0]),
        ("kexec_load", SYS_kexec_load, vec![0, 0, 0, 0xdead_beef]),
        (
            "kexec_file_load",
            SYS_kexec_file_load,
            vec![-1, -1, 0, 0, 0xdead_beef],
        ),
        ("bpf", SYS_bpf, vec![-1, 0, 0]),
        ("keyctl", SYS_keyctl, vec![0, -1, 0, 0, 0]),
        ("add_key", SYS_add_key, vec![0, 0, 0, 0, 0]),
        ("request_key", SYS_request_key, vec![0, 0, 0, 0]),
        (
            "perf_event_open",
            SYS_perf_event_open,
            vec![0, 0, -1, -1, 0],
        ),
        ("userfaultfd", SYS_userfaultfd, vec![1]),
        (
            "process_vm_readv",
            SYS_process_vm_readv,
            vec![0, 0, 0, 0, 0, 0],
        ),
        (
            "process_vm_writev",
            SYS_process_vm_writev,
            vec![0, 0, 0, 0, 0, 0],
        ),
        ("reboot", SYS_reboot, vec![0, 0, 0, 0]),
        ("swapon", SYS_swapon, vec![0, 0]),
        ("swapoff", SYS_swapoff, vec![0]),
        ("acct", SYS_acct, vec![0]),
        ("settimeofday", SYS_settimeofday, vec![0, 0]),
        ("clock_settime", SYS_clock_settime, vec![-1, 0]),
        ("clock_adjtime", SYS_clock_adjtime, vec![-1, 0]),
        ("adjtimex", SYS_adjtimex, vec![0]),
        ("setns", SYS_setns, vec![-1, 0]),
        (
            "unshare(CLONE_NEWUSER)",
            SYS_unshare,
            vec![CLONE_NEWUSER as i64],
        ),
        (
            "clone(CLONE_NEWUSER)",
            SYS_clone,
            vec![(CLONE_NEWUSER | CLONE_FS) as i64, 0, 0, 0, 0],
        ),
        ("open_by_handle_at", SYS_open_by_handle_at, vec![-1, 0, 0]),
        (
            "name_to_handle_at",
            SYS_name_to_handle_at,
            vec![-1, 0, 0, 0, 0],
        ),
        ("quotactl", SYS_quotactl, vec![0, 0, 0, 0]),
        ("quotactl_fd", SYS_quotactl_fd, vec![-1, 0, 0, 0]),
        ("lookup_dcookie", SYS_lookup_dcookie, vec![0, 0, 0]),
        ("vhangup", SYS_vhangup, vec![]),
        (
            "personality(ADDR_NO_RANDOMIZE)",
            SYS_personality,
            vec![0x0040000],
        ),
        (
            "personality(READ_IMPLIES_EXEC)",
            SYS_personality,
            vec![0x0400000],
        ),
        ("syslog", SYS_syslog, vec![10, 0, 0]),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        ("iopl", SYS_iopl, vec![0]),
        ("ioperm", SYS_ioperm, vec![0, 0, 0]),
        ("sysfs", SYS_sysfs, vec![1, 0]),
        ("_sysctl", SYS__sysctl, vec![0]),
        ("uselib", SYS_uselib, vec![0]),
    ]);
    v
}

/// A python3 program that makes each `name=nr:args` call given on its command line and
/// prints `name errno` (0 when the call succeeded).
const PROBE: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for spec in sys.argv[1:]:
    name, rest = spec.split("=", 1)
    nr, _, args = rest.partition(":")
    args = [ctypes.c_long(int(a)) for a in args.split(",") if a]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(int(nr)), *args)
    print(name.replace(" ", "_"), ctypes.get_errno() if r == -1 else 0, flush=True)
"#;

fn probe_args(calls: &[(&str, i64, Vec<i64>)]) -> Vec<String> {
    calls
        .iter()
        .map(|(name, nr, args)| {
            let a: Vec<String> = args.iter().map(|x| x.to_string()).collect();
            format!("{name}={nr}:{}", a.join(","))
        })
        .collect()
}

#[test]
fn seccomp_refuses_every_listed_call_to_a_root_task() {
    let l = Layers::new();
    let calls = refused_calls();
    let mut spec = l.spec(0, "");
    spec.argv = vec!["/usr/bin/python3".into(), "-c".into(), PROBE.into()];
    spec.argv
        .extend(probe_args(&calls).into_iter().map(OsString::from));
    let out = run(spec);
    assert_eq!(out.exit, TaskExit::Exited(0), "{}", out.stderr);
    let wrong: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.ends_with(&format!(" {}", libc::EPERM)))
        .collect();
    assert_eq!(out.stdout.lines().count(), calls.len(), "{}", out.stdout);
    assert!(wrong.is_empty(), "not refused with EPERM: {wrong:?}");
}

#[test]
fn seccomp_is_on_and_lets_ordinary_calls_through() {
    let l = Layers::new();
    let out = run(l.spec(
        65534,
        "grep -E '^Seccomp(_filters)?:' /proc/self/status; \
         python3 -c 'import os; p = os.fork(); p or os._exit(0); os.waitpid(p, 0)' && echo forked; \
         echo subshell $(echo ok)",
    ));
    assert_eq!(
        out.stdout, "Seccomp:\t2\nSeccomp_filters:\t2\nforked\nsubshell ok\n",
        "{}",
        out.stderr
    );
    let calls: Vec<(&str, i64, Vec<i64>)> = vec![
        ("clone3", libc::SYS_clone3, vec![0, 0]),
        (
            "personality_query",
            libc::SYS_personality,
            vec![0xffff_ffff],
        ),
        ("personality_linux", libc::SYS_personality, vec![0]),
        ("personality_linux32", libc::SYS_personality, vec![8]),
        ("getpid", libc::SYS_getpid, vec![]),
        (
            "unshare_files",
            libc::SYS_unshare,
            vec![libc::CLONE_FILES as i64],
        ),
    ];
    let mut spec = l.spec(65534, "");
    spec.argv = vec!["/usr/bin/python3".into(), "-c".into(), PROBE.into()];
    spec.argv
        .extend(probe_args(&calls).into_iter().map(OsString::from));
    let out = run(spec);
    assert_eq!(
        out.stdout,
        format!(
            "clone3 {}\npersonality_query 0\npersonality_linux 0\npersonality_linux32 0\ngetpid 0\nunshare_files 0\n",
            libc::ENOSYS
        ),
        "{}",
        out.stderr
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn seccomp_kills_a_task_that_uses_the_x32_abi() {
    let l = Layers::new();
    let mut spec = l.spec(65534, "");
    spec.argv = vec![
        "/usr/bin/python3".into(),
        "-c".into(),
        "import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39); print('survived')".into(),
    ];
    let out = run(spec);
    assert_eq!(out.exit, TaskExit::Signaled(libc::SIGSYS), "{}", out.stdout);
}

#[test]
fn a_task_cannot_make_a_user_namespace() {
    let l = Layers::new();
    for uid in [0, 65534] {
        let out = run(l.spec(uid, "unshare -U true 2>/dev/null && echo UNSHARED; unshare -Ur id -u 2>/dev/null; echo done"));
        assert_eq!(out.stdout, "done\n", "uid {uid}: {}", out.stderr);
    }
}

// ---------------------------------------------------------------------------------
// 3. /proc

#[test]
fn proc_knobs_are_read_only_and_kernel_internals_masked() {
    let l = Layers::new();
    let script = "\
        cat /proc/sys/kernel/core_pattern > /tmp/cp; \
        cat /tmp/cp > /proc/sys/kernel/core_pattern 2>/dev/null && echo SYSCTL; \
        echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo DROPPED; \
        for f in kcore kmsg kallsyms timer_list keys sched_debug interrupts latency_stats kpagecount kpageflags; do \
          [ -e /proc/$f ] && { n=$(head -c 64 /proc/$f 2>/dev/null | wc -c); [ $n = 0 ] || echo LEAK $f $n; }; \
        done; \
        for d in acpi asound scsi; do [ -d /proc/$d ] && [ -n \"$(ls -A /proc/$d)\" ] && echo LEAK $d; done; \
        for p in sys sysrq-trigger bus fs irq; do \
          [ -e /proc/$p ] && { grep -q \" /proc/$p [a-z]*ro[,]\" /proc/self/mountinfo || echo WRITABLE $p; }; \
        done; \
        head -c 10 /proc/self/status | wc -c; grep -c . /proc/cpuinfo >/dev/null && echo cpuinfo; \
        cat /proc/sys/kernel/ostype";
    for uid in [0, 65534] {
        let out = run(l.spec(uid, script));
        assert_eq!(
            out.stdout, "10\ncpuinfo\nLinux\n",
            "uid {uid}; stderr: {}",
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------------
// 4. Resource limits and processes

fn own_hard(res: i32) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit.
    assert_eq!(unsafe { libc::getrlimit(res as _, &mut l) }, 0);
    l.rlim_max
}

/// `(soft, hard)` of a limit as `/proc/self/limits` shows it (`Max open files`).
fn limit_in(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let field = |from: usize| line.get(from..from + 20).unwrap_or("").trim().to_owned();
    (field(26), field(47))
}

fn shown(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        v.to_string()
    }
}

#[test]
fn requested_limits_are_clamped_to_the_helper_and_nice_and_rtprio_never_raised() {
    let l = Layers::new();
    let nofile_hard = own_hard(libc::RLIMIT_NOFILE as i32);
    let nproc_hard = shown(own_hard(libc::RLIMIT_NPROC as i32));
    for uid in [0, 65534] {
        let mut spec = l.spec(
            uid,
            "cat /proc/self/limits; \
             renice -n -20 -p $$ >/dev/null 2>&1 && echo RENICED; \
             renice -n 18 -p $$ >/dev/null 2>&1 && echo RENICED; \
             chrt -o -p 0 $$ 2>/dev/null && echo LEFT_IDLE; \
             ulimit -Hn unlimited 2>/dev/null && echo RAISED; echo end",
        );
        spec.idle = true;
        spec.rlimits = vec![
            (
                libc::RLIMIT_NOFILE as i32,
                1234,
                nofile_hard.saturating_mul(4),
            ),
            (libc::RLIMIT_NICE as i32, 40, 40),
            (libc::RLIMIT_RTPRIO as i32, 99, 99),
            // Not on the allow-list: left as the helper has it.
            (libc::RLIMIT_NPROC as i32, 5, 5),
            (libc::RLIMIT_CORE as i32, 0, 0),
        ];
        let out = run(spec);
        let lim = |n: &str| limit_in(&out.stdout, n);
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            lim("Max open files"),
            pair("1234", &nofile_hard.to_string()),
            "uid {uid}"
        );
        assert_eq!(lim("Max nice priority"), pair("0", "0"), "uid {uid}");
        assert_eq!(lim("Max realtime priority"), pair("0", "0"), "uid {uid}");
        assert_eq!(lim("Max core file size"), pair("0", "0"), "uid {uid}");
        assert_eq!(lim("Max processes").1, nproc_hard, "uid {uid}");
        assert!(
            out.stdout.lines().last() == Some("end")
                && !out.stdout.contains("RENICED")
                && !out.stdout.contains("LEFT_IDLE")
                && !out.stdout.contains("RAISED"),
            "uid {uid}: {}; stderr: {}",
            out.stdout,
            out.stderr
        );
    }
}

/// Which of the task's cgroup directories carries `pids.max`.
fn pids_dir(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().find(|d| d.join("pids.max").exists()).cloned()
}

#[test]
fn a_fork_bomb_is_ended_with_a_message_and_the_helper_goes_on() {
    let l = Layers::new();
    let mut spec = l.spec(
        65534,
        // The bomb runs in the background and the task's own process becomes `sleep`:
        // a shell that waited for the bomb would exit by itself (status 2) the moment
        // one of its forks is refused, before the limit is seen.
        "echo started; (f() { f | f & }; f) 2>/dev/null & exec sleep 100",
    );
    spec.cgroup = Some(CgroupSpec {
        parent: None,
        name: unique("forkbomb"),
        cpus: None,
        memory: Some(512 << 20),
    });
    spec.pids_max = Some(64);
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    spec.stdio = TaskStdio {
        stdin: StdioFd::Null,
        stdout: StdioFd::Fd(out_w),
        stderr: StdioFd::Fd(err_w),
    };
    let t0 = Instant::now();
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    drop(spec);
    let dir = pids_dir(sandbox.cgroups()).expect("a cgroup with pids.max");
    assert_eq!(
        fs::read_to_string(dir.join("pids.max")).unwrap().trim(),
        "64"
    );
    let (out, err) = (reader(out_r), reader(err_r));
    let exit = sandbox.wait().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(exit, TaskExit::Signaled(libc::SIGKILL));
    assert_eq!(out.join().unwrap(), "started\n");
    let err = err.join().unwrap();
    assert!(
        err.contains("herd: the task was ended: it reached its limit of 64 processes"),
        "{err}"
    );
    // The next task runs as usual.
    let l2 = Layers::new();
    let out = run(l2.spec(65534, "echo fine"));
    assert_eq!(out.stdout, "fine\n");
}

/// A shell that runs into the limit and exits at once (its fork refused) ends before
/// pid 1's timer looks: the message must come all the same.
#[test]
fn a_task_that_exits_when_its_fork_is_refused_is_told_why() {
    let l = Layers::new();
    let mut spec = l.spec(
        65534,
        "i=0; while [ $i -lt 40 ]; do sleep 100 & i=$((i+1)); done; wait",
    );
    spec.cgroup = Some(CgroupSpec {
        parent: None,
        name: unique("forkrefused"),
        cpus: None,
        memory: Some(256 << 20),
    });
    spec.pids_max = Some(8);
    let (err_r, err_w) = pipe();
    spec.stdio = TaskStdio {
        stdin: StdioFd::Null,
        stdout: StdioFd::Null,
        stderr: StdioFd::Fd(err_w),
    };
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    drop(spec);
    let err = reader(err_r);
    let exit = sandbox.wait().unwrap();
    let err = err.join().unwrap();
    assert_ne!(exit, TaskExit::Exited(0), "{err}");
    assert!(
        err.contains("herd: the task was ended: it reached its limit of 8 processes"),
        "{exit:?}: {err}"
    );
}

#[test]
fn a_task_cgroup_gets_the_default_pids_limit() {
    let l = Layers::new();
    let mut spec = l.spec(65534, "true");
    spec.cgroup = Some(CgroupSpec {
        parent: None,
        name: unique("pidsdefault"),
        cpus: None,
        memory: None,
    });
    assert_eq!(spec.pids_max, Some(herd_sandbox::DEFAULT_PIDS_MAX));
    let (in_r, in_w) = std::io::pipe().unwrap();
    spec.argv = vec!["/bin/sh".into(), "-c".into(), "read x || true".into()];
    spec.stdio.stdin = StdioFd::Fd(Arc::new(OwnedFd::from(in_r)));
    let sandbox = spawn(Path::new(INIT), &spec).unwrap();
    let dir = pids_dir(sandbox.cgroups()).expect("a cgroup with pids.max");
    assert_eq!(
        fs::read_to_string(dir.join("pids.max")).unwrap().trim(),
        herd_sandbox::DEFAULT_PIDS_MAX.to_string()
    );
    drop(in_w);
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(0));

    // A prepared init's group gets the default too, and a task's own limit on start.
    let prepared = herd_sandbox::prepare(
        Path::new(INIT),
        Some(CgroupSpec {
            parent: None,
            name: unique("pidsprepared"),
            cpus: None,
            memory: None,
        }),
        &herd_sandbox::Net::Loopback,
    )
    .unwrap();
    let dir = pids_dir(prepared.cgroups()).expect("a cgroup with pids.max");
    assert_eq!(
        fs::read_to_string(dir.join("pids.max")).unwrap().trim(),
        herd_sandbox::DEFAULT_PIDS_MAX.to_string()
    );
    let l = Layers::new();
    let mut spec = l.spec(65534, "cat /sys/fs/cgroup/pids.max 2>/dev/null; echo ok");
    spec.pids_max = Some(100);
    let (in_r, in_w) = std::io::pipe().unwrap();
    spec.argv = vec!["/bin/sh".into(), "-c".into(), "read x || true".into()];
    spec.stdio.stdin = StdioFd::Fd(Arc::new(OwnedFd::from(in_r)));
    let sandbox = prepared.start(&spec).unwrap();
    // The limit is written before the task starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(dir.join("pids.max")).unwrap().trim() != "100" {
        assert!(Instant::now() < deadline, "pids.max stayed at the default");
        thread::sleep(Duration::from_millis(5));
    }
    drop(in_w);
    assert_eq!(sandbox.wait().unwrap(), TaskExit::Exited(0));
}

// ---------------------------------------------------------------------------------
// 5. pid 1's channels

/// Tries to read pid 1's descriptors and to write a forged status line into each.
const FORGE: &str = "for f in /proc/1/fd/*; do [ -e \"$f\" ] && echo SEEN $f; \
    { echo 'error forged by the task' > $f; } 2>/dev/null && echo WROTE $f; done; \
    read x < /proc/1/environ 2>/dev/null && echo ENVIRON; echo done";

#[test]
fn pid1_channels_are_out_of_a_root_sandbox_task_reach() {
    let l = Layers::new();
    for uid in [0, 65534] {
        let out = try_run(l.spec(uid, FORGE)).unwrap_or_else(|e| panic!("uid {uid}: {e}"));
        assert_eq!(out.exit, TaskExit::Exited(0), "uid {uid}");
        assert_eq!(out.stdout, "done\n", "uid {uid}: {}", out.stderr);
    }
}

#[test]
fn pid1_channels_are_out_of_a_rootless_sandbox_task_reach() {
    for uid in [0, 1000] {
        let l = Layers::new();
        let out = rootless(&l, uid, FORGE);
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).as_ref()
            ),
            (Some(0), "done\n"),
            "uid {uid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
