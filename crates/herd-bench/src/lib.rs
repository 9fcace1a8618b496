//! Shared pieces of herd's benchmarks: finding the herd binary, statistics, the
//! table-plus-JSON report every benchmark prints, forming a testbed cluster, timing a
//! command on a host, CPU accounting (a host's cgroup, the whole machine, children),
//! and [`cproject`], a generated C project to build.
//!
//! Benchmarks are programs (`src/bin/*.rs`), not timed tests: timing on a shared
//! 2-core machine is too noisy to assert on, so each benchmark runs its baseline in
//! the same run, prints a table a person can read and writes JSON a script can
//! compare (under `target/bench/` by default).

#![deny(missing_docs)]

pub mod cproject;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use herd_testbed::cluster::Node;
use herd_testbed::{Host, HostCommand, Testbed};
use serde::Serialize;

/// The herd binary to benchmark: `--herd PATH`, else `herd` beside this program
/// (build both with `cargo build --release -p herd -p herd-bench`).
pub fn herd_binary(args: &[String]) -> anyhow::Result<PathBuf> {
    if let Some(i) = args.iter().position(|a| a == "--herd") {
        let p = PathBuf::from(
            args.get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("--herd needs a path"))?,
        );
        // Absolute: the benchmarks run commands from other working directories.
        return std::fs::canonicalize(&p)
            .map_err(|e| anyhow::anyhow!("--herd {}: {e}", p.display()));
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("herd");
    anyhow::ensure!(
        p.exists(),
        "no herd binary at {}: build it (cargo build --release -p herd) or pass --herd PATH",
        p.display()
    );
    Ok(p)
}

/// The value after `flag`, parsed, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median, minimum and maximum of a sample, in seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Number of observations.
    pub n: usize,
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarises durations; `None` if there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Some(Summary {
            n: v.len(),
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// Writes `value` as pretty JSON to `--json PATH` or `target/bench/NAME.json`;
/// returns the path.
pub fn write_json(args: &[String], name: &str, value: &impl Serialize) -> anyhow::Result<PathBuf> {
    let path = match args.iter().position(|a| a == "--json") {
        Some(i) => PathBuf::from(
            args.get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("--json needs a path"))?,
        ),
        None => Path::new("target/bench").join(format!("{name}.json")),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    Ok(path)
}

/// The median of a sample, or `None` if it is empty.
pub fn median(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = v.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// User + system CPU seconds of this process's waited-for children (and of their
/// waited-for descendants) so far; the difference around one child's run is its CPU
/// time, as long as no other child is reaped meanwhile.
pub fn children_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a pointer to a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time the host's processes (all of them, with their descendants) have used so
/// far, from the host's cgroup accounting (`cpuacct.usage` on cgroup v1, `usage_usec`
/// of `cpu.stat` on v2); `None` if neither is readable.
pub fn host_cpu(host: &Host) -> Option<Duration> {
    for dir in host.cgroup_dirs() {
        if let Ok(s) = std::fs::read_to_string(dir.join("cpuacct.usage"))
            && let Ok(ns) = s.trim().parse::<u64>()
        {
            return Some(Duration::from_nanos(ns));
        }
    }
    for dir in host.cgroup_dirs() {
        if let Ok(s) = std::fs::read_to_string(dir.join("cpu.stat"))
            && let Some(us) = s.lines().find_map(|l| {
                l.strip_prefix("usage_usec ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        {
            return Some(Duration::from_micros(us));
        }
    }
    None
}

/// CPU time the whole machine has spent busy (all cores: everything but idle and
/// iowait in `/proc/stat`) since boot; compare two readings with [`host_cpu`] of the
/// testbed's hosts to see how much other work shared the machine.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_secs_f64(busy as f64 / hz as f64))
}

/// Waits until the machine is quiet: less than `threshold` CPUs busy over one second
/// (this process's testbed included), for at most `limit`. Returns the busy CPUs of
/// the last sample; benchmarks call it before each timed run because the machine is
/// shared and the testbed's quotas add up to all of its cores.
pub fn wait_quiet(threshold: f64, limit: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let (Some(a), t) = (machine_busy(), Instant::now()) else {
            return 0.0;
        };
        std::thread::sleep(Duration::from_secs(1));
        let Some(b) = machine_busy() else {
            return 0.0;
        };
        let busy = b.saturating_sub(a).as_secs_f64() / t.elapsed().as_secs_f64();
        if busy < threshold || start.elapsed() >= limit {
            return busy;
        }
    }
}

/// A note when `herd nodes --json` shows agents reporting their owner's load (above
/// 0.05 CPUs): `herd slots` and placement count it as taken, so the slots can be
/// fewer than the hosts' quotas give. On the testbed the owner's load is measured in
/// each host's cgroup (`--host-cgroup`), so it is the load of that host's processes.
pub fn owner_load_note(nodes: Option<&serde_json::Value>) -> Option<String> {
    let nodes = nodes?.as_array()?;
    let loads: Vec<String> = nodes
        .iter()
        .filter(|n| n["owner_load"].as_f64().unwrap_or(0.0) > 0.05)
        .map(|n| {
            format!(
                "{} {:.2} of {:.2}",
                n["name"].as_str().unwrap_or("?"),
                n["owner_load"].as_f64().unwrap_or(0.0),
                n["cpus"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    (!loads.is_empty()).then(|| {
        format!(
            "at the start the agents reported their owners' load, in CPUs: {}",
            loads.join(", ")
        )
    })
}

pub use herd_testbed::cluster::Agents;

/// Forms a cluster: `herd init` and an agent on `ws`, then an agent joining from each
/// of `helpers`; returns when `ws` sees every helper alive with its load report (its
/// CPUs), or fails after a minute.
pub fn start_cluster(
    bed: &Testbed,
    herd: &Path,
    ws: &str,
    helpers: &[&str],
) -> anyhow::Result<Agents> {
    let ws = Node::new(bed.host(ws), herd);
    let token = ws.init();
    let mut agents = Agents(vec![ws.agent(&["--no-mdns"])]);
    for h in helpers {
        agents.0.push(Node::new(bed.host(h), herd).join(&token));
    }
    let start = Instant::now();
    let ready = || {
        ws.nodes().is_some_and(|ns| {
            helpers.iter().all(|h| {
                ns.iter().any(|n| {
                    n["name"] == *h
                        && n["state"] == "alive"
                        && n["cpus"].as_f64().unwrap_or(0.0) > 0.0
                })
            })
        })
    };
    while !ready() {
        for (i, a) in agents.0.iter_mut().enumerate() {
            if let Some(st) = a.try_wait()? {
                let name = if i == 0 { ws.name() } else { helpers[i - 1] };
                anyhow::bail!(
                    "the agent on {name} exited ({st}); its log is in {} (kept with HERD_TESTBED_KEEP_LOGS=1)",
                    bed.host(name).log_dir().display()
                );
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the helpers {helpers:?} did not all become alive at {} within a minute",
            ws.name()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("cluster formed in {:.1} s", start.elapsed().as_secs_f64());
    Ok(agents)
}

/// One timed run of a command on a testbed host.
#[derive(Debug)]
pub struct Timed {
    /// Wall-clock time just before the command was started.
    pub started: SystemTime,
    /// From start to exit.
    pub elapsed: Duration,
    /// How it exited.
    pub status: ExitStatus,
    /// The file holding its stdout and stderr.
    pub log: PathBuf,
}

impl Timed {
    /// The last `n` lines of the command's output, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Runs `cmd` (stdout and stderr to its log file) and times it; kills it and fails
/// after `limit`.
pub fn run_timed(mut cmd: HostCommand, limit: Duration) -> anyhow::Result<Timed> {
    let log = cmd.log_path().to_path_buf();
    let started = SystemTime::now();
    let t = Instant::now();
    let mut child = cmd.spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Timed {
                started,
                elapsed: t.elapsed(),
                status,
                log,
            });
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let timed = Timed {
                started,
                elapsed: t.elapsed(),
                status: std::process::ExitStatus::default(),
                log,
            };
            anyhow::bail!(
                "still running after {:.0} s: killed; its last output:\n{}",
                limit.as_secs_f64(),
                timed.log_tail(15)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median() {
        let d = |s| Duration::from_secs(s);
        let s = Summary::of(&[d(3), d(1), d(2)]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[d(1), d(2)]).unwrap().median, 1.5);
        assert!(Summary::of(&[]).is_none());
    }
}

/// One run of a method: its makespan and its efficiency against the ideal.
pub trait MethodRun {
    /// From start to end, in seconds.
    fn makespan_s(&self) -> f64;
    /// Ideal makespan / makespan.
    fn efficiency(&self) -> f64;
}

/// One way of running a workload (local, through herd, a baseline), with its runs.
#[derive(Debug, Serialize)]
pub struct Method<R> {
    /// Short name for tables.
    pub name: String,
    /// The command it runs.
    pub command: String,
    /// The hosts it may use, with their CPU quotas.
    pub hosts: Vec<(String, f64)>,
    /// Runs whose numbers are summarised.
    pub runs: Vec<R>,
    /// Makespan over the runs.
    pub makespan: Option<Summary>,
    /// Median efficiency over the runs.
    pub efficiency_median: Option<f64>,
    /// Filled in once the local method is known.
    pub speedup_vs_local: Option<f64>,
    /// Anything a reader should know.
    pub note: String,
}

impl<R: MethodRun> Method<R> {
    /// Summarises `runs` of the method `name`.
    pub fn new(
        name: &str,
        command: &str,
        hosts: &[(String, f64)],
        runs: Vec<R>,
        note: &str,
    ) -> Self {
        let makespan = Summary::of(
            &runs
                .iter()
                .map(|r| Duration::from_secs_f64(r.makespan_s()))
                .collect::<Vec<_>>(),
        );
        Method {
            name: name.into(),
            command: command.into(),
            hosts: hosts.to_vec(),
            efficiency_median: median(runs.iter().map(|r| r.efficiency())),
            runs,
            makespan,
            speedup_vs_local: None,
            note: note.into(),
        }
    }
}

/// The batch and build benchmarks' testbed, each host with its CPU quota from
/// `quotas` (ws, h1, h2, h3): `ws` on the real filesystem; with `herd`, the
/// zero-install helpers `h1`..`h3`; with `baseline` (a name prefix), three
/// real-filesystem hosts `<prefix>1`..`<prefix>3` for the tool herd is compared with,
/// with the helpers' quotas.
pub fn quota_testbed(
    herd: &Path,
    quotas: &[f64; 4],
    with_herd: bool,
    baseline: Option<&str>,
) -> anyhow::Result<Testbed> {
    use herd_testbed::HostSpec;
    let mut bed = Testbed::new()?;
    bed.add_host(HostSpec::real_fs("ws").cpu_quota(quotas[0]))?;
    if with_herd {
        for (i, q) in quotas.iter().enumerate().skip(1) {
            bed.add_host(HostSpec::minimal(format!("h{i}"), herd).cpu_quota(*q))?;
        }
    }
    if let Some(prefix) = baseline {
        for (i, q) in quotas.iter().enumerate().skip(1) {
            bed.add_host(HostSpec::real_fs(format!("{prefix}{i}")).cpu_quota(*q))?;
        }
    }
    Ok(bed)
}

/// Parses `--quotas ws,h1,h2,h3` (CPU quotas of the workstation and three helpers).
pub fn parse_quotas(s: &str) -> anyhow::Result<[f64; 4]> {
    use anyhow::Context;
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .context("--quotas: four numbers, e.g. 0.5,0.25,0.5,0.75")?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("--quotas needs four numbers: ws, h1, h2, h3"))
}
