//! The owner meter against this machine's real cgroups: busy loops in a "host" group
//! are attributed to the owner, a busy loop in a task group to herd.
//!
//! Needs root (it creates cgroups and moves processes, this test process included): run
//! as anyone else, it fails. It is the only test of this binary because it moves the
//! whole test process between cgroups. Every comparison is of cumulative CPU seconds
//! (what the meter reports times the interval it covers, against the busy loops' own
//! `/proc/PID/stat`), never of wall-clock time, so a loaded machine only makes it slower.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use herd_agent::polite::{OwnerMeter, Sample};

/// How much CPU each busy loop must accumulate between two samples.
const WANT_CPU: f64 = 1.0;
/// A bound on waiting for it, so a starved machine fails instead of hanging.
const GIVE_UP: Duration = Duration::from_secs(300);

/// A cgroup hierarchy of this machine and this process's group in it.
#[derive(Debug, Clone)]
struct Hier {
    v2: bool,
    mount: PathBuf,
    controllers: Vec<String>,
    /// This process's group, as a cgroup path.
    own: String,
}

impl Hier {
    fn dir(&self, cg: &str) -> PathBuf {
        self.mount.join(cg.trim_start_matches('/'))
    }
}

fn hierarchies() -> Vec<Hier> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cgroup = fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let v2 = match f[sep + 1] {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        let controllers: Vec<String> = if v2 {
            vec![]
        } else {
            f[sep + 3]
                .split(',')
                .filter(|o| matches!(*o, "cpu" | "cpuacct" | "memory" | "freezer"))
                .map(str::to_owned)
                .collect()
        };
        if !v2 && controllers.is_empty() {
            continue;
        }
        let own = cgroup
            .lines()
            .find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (id, ctl, path) = (p.next()?, p.next()?, p.next()?);
                let hit = if v2 {
                    id == "0" && ctl.is_empty()
                } else {
                    ctl.split(',').any(|c| controllers.iter().any(|x| x == c))
                };
                hit.then(|| path.to_owned())
            })
            .unwrap_or_else(|| "/".to_owned());
        out.push(Hier {
            v2,
            mount: PathBuf::from(f[4]),
            controllers,
            own,
        });
    }
    out
}

/// `utime + stime` of a process, in seconds.
fn cpu_of(pid: u32) -> f64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = text[text.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / procfs::ticks_per_second() as f64
}

fn join(dir: &Path, pid: u32) {
    fs::write(dir.join("cgroup.procs"), pid.to_string())
        .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", dir.display()));
}

/// Starts `sh` running a busy loop in the background and returns the loop's pid and the
/// `sh`; with `wait` the `sh` stays as the loop's parent (a sandbox supervisor), without
/// it the `sh` exits and the loop is orphaned (a process of the owner's).
fn busy_loop(wait: bool) -> (u32, std::process::Child) {
    let script = format!(
        "(while :; do :; done) </dev/null >/dev/null 2>&1 & echo $!{}",
        if wait { "; wait" } else { "" }
    );
    let mut child = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (line.trim().parse().unwrap(), child)
}

fn kill(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Everything the test made, undone on drop (also when an assertion fails).
#[derive(Default)]
struct Cleanup {
    pids: Vec<u32>,
    /// `(group, where this process goes back to)` for groups this process joined.
    joined: Vec<PathBuf>,
    /// Groups to remove, innermost first.
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &pid in &self.pids {
            kill(pid);
        }
        for back in &self.joined {
            let _ = fs::write(back.join("cgroup.procs"), std::process::id().to_string());
        }
        for dir in &self.dirs {
            for _ in 0..500 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Waits until every pid has run `WANT_CPU` seconds more than in `from`.
fn wait_for_cpu(pids: &[u32], from: &[f64]) {
    let start = Instant::now();
    while pids
        .iter()
        .zip(from)
        .any(|(&p, &f)| cpu_of(p) - f < WANT_CPU)
    {
        assert!(
            start.elapsed() < GIVE_UP,
            "the busy loops got less than {WANT_CPU} s of CPU in {GIVE_UP:?}"
        );
        sleep(Duration::from_millis(100));
    }
}

fn secs(s: &Sample, cores: f32) -> f64 {
    f64::from(cores) * s.interval.as_secs_f64()
}

/// `got` is `want` CPU seconds, give or take sampling skew.
fn about(what: &str, got: f64, want: f64) {
    let slack = 0.15 * want + 0.15;
    assert!(
        (got - want).abs() <= slack,
        "{what}: measured {got:.3} CPU s, expected {want:.3} ± {slack:.3}"
    );
}

fn check_memory(s: &Sample) {
    assert!(s.mem_total > 0 && s.mem_available <= s.mem_total, "{s:?}");
    assert!(s.host_cores > 0.0, "{s:?}");
}

#[test]
fn busy_loops_are_attributed_to_the_owner_and_to_herd() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test creates cgroups and must run as root"
    );
    let hiers = hierarchies();
    // Where CPU usage is accounted: a v1 hierarchy with cpuacct, else the v2 mount.
    let acct = hiers
        .iter()
        .find(|h| !h.v2 && h.controllers.iter().any(|c| c == "cpuacct"))
        .or_else(|| hiers.iter().find(|h| h.v2))
        .expect("no cgroup hierarchy with cpuacct and no cgroup v2 mount")
        .clone();
    // Where the sandbox puts task groups' CPU limit: v1 cpu, else v2.
    let cpu = hiers
        .iter()
        .find(|h| !h.v2 && h.controllers.iter().any(|c| c == "cpu"))
        .or_else(|| hiers.iter().find(|h| h.v2))
        .unwrap()
        .clone();
    // The unified mount of a hybrid machine: a second host group, measured by cpu.stat.
    let unified = hiers.iter().find(|h| h.v2 && !acct.v2).cloned();

    let name = format!("herd-polite-test-{}", std::process::id());
    let host_cg = format!("{}/{name}", acct.own.trim_end_matches('/'));
    let host = acct.dir(&host_cg);
    let mut cleanup = Cleanup::default();
    fs::create_dir(&host).unwrap();
    cleanup.dirs.push(host.clone());
    let host2 = unified.as_ref().map(|u| {
        let d = u.dir(&format!("{}/{name}", u.own.trim_end_matches('/')));
        fs::create_dir(&d).unwrap();
        cleanup.dirs.push(d.clone());
        d
    });
    // Task groups nest under the host's path in the cpu hierarchy, as under an agent
    // running inside the host.
    let task_parent = cpu.dir(&host_cg);
    if !task_parent.exists() {
        fs::create_dir(&task_parent).unwrap();
        cleanup.dirs.push(task_parent.clone());
    }
    let task_group = task_parent.join("herd-task-00000000000000a1");
    fs::create_dir(&task_group).unwrap();
    cleanup.dirs.insert(0, task_group.clone());

    // The owner: an orphaned busy loop in the host group(s).
    let (owner, mut sh) = busy_loop(false);
    cleanup.pids.push(owner);
    sh.wait().unwrap();
    join(&host, owner);
    if let Some(h2) = &host2 {
        join(h2, owner);
    }

    // 1. The agent (this process) outside the host: all of the host's CPU is the
    //    owner's, whichever way the host is named.
    let mut meters = vec![
        (
            "v1/v2 by directory",
            OwnerMeter::new(Some(&host), Some(Path::new(&host_cg))).unwrap(),
        ),
        (
            "by cgroup path",
            OwnerMeter::new(Some(Path::new(&host_cg)), Some(Path::new(&host_cg))).unwrap(),
        ),
    ];
    if let Some(h2) = &host2 {
        meters.push((
            "hybrid unified mount",
            OwnerMeter::new(Some(h2), Some(Path::new(&host_cg))).unwrap(),
        ));
    }
    let o0 = cpu_of(owner);
    for (_, m) in &mut meters {
        m.sample();
    }
    wait_for_cpu(&[owner], &[o0]);
    let samples: Vec<Sample> = meters.iter_mut().map(|(_, m)| m.sample()).collect();
    let o1 = cpu_of(owner);
    for ((what, _), s) in meters.iter().zip(&samples) {
        about(&format!("{what}: owner"), secs(s, s.owner_cores), o1 - o0);
        assert!(secs(s, s.herd_cores) < 0.15, "{what}: herd is idle: {s:?}");
        check_memory(s);
    }

    // 2. The agent inside the host, running a task: the task's CPU is herd's.
    for dir in [Some(&host), host2.as_ref()].into_iter().flatten() {
        join(dir, std::process::id());
    }
    cleanup.joined.push(acct.dir(&acct.own));
    if let Some(u) = &unified {
        cleanup.joined.push(u.dir(&u.own));
    }
    let (task, mut supervisor) = busy_loop(true);
    cleanup.pids.push(task);
    join(&task_group, task);
    let mut inside = OwnerMeter::new(Some(&host), Some(Path::new(&host_cg))).unwrap();
    let mut inside2 = host2
        .as_ref()
        .map(|h2| OwnerMeter::new(Some(h2), Some(Path::new(&host_cg))).unwrap());
    let (o0, t0) = (cpu_of(owner), cpu_of(task));
    inside.sample();
    if let Some(m) = &mut inside2 {
        m.sample();
    }
    wait_for_cpu(&[owner, task], &[o0, t0]);
    let s = inside.sample();
    let s2 = inside2.as_mut().map(|m| m.sample());
    let (o1, t1) = (cpu_of(owner), cpu_of(task));
    about("inside: owner", secs(&s, s.owner_cores), o1 - o0);
    about("inside: herd", secs(&s, s.herd_cores), t1 - t0);
    check_memory(&s);
    if let Some(s2) = &s2 {
        about("inside, unified: owner", secs(s2, s2.owner_cores), o1 - o0);
        about("inside, unified: herd", secs(s2, s2.herd_cores), t1 - t0);
    }

    // 3. The task ends: its group goes, its supervisor is reaped. Its CPU must neither
    //    vanish (the owner's load would jump by it) nor count twice (herd's would).
    let o0 = cpu_of(owner);
    kill(task);
    supervisor.wait().unwrap();
    for _ in 0..500 {
        if fs::remove_dir(&task_group).is_ok() {
            break;
        }
        sleep(Duration::from_millis(10));
    }
    assert!(!task_group.exists(), "the task group could not be removed");
    // A long enough interval that a lost task's CPU could not hide under the clamp to
    // the host's cores.
    wait_for_cpu(&[owner], &[o0]);
    let done = inside.sample();
    eprintln!("phase 1 {samples:?}\nphase 2 {s:?} {s2:?}\nphase 3 {done:?}");
    let o1 = cpu_of(owner);
    assert!(
        secs(&done, done.herd_cores) < 0.5,
        "a finished task is not counted again: {done:?}"
    );
    about(
        "after the task: owner",
        secs(&done, done.owner_cores),
        o1 - o0,
    );
}
