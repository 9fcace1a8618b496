//! A batch of CPU-bound jobs on a heterogeneous testbed: `herd map` against the ideal,
//! against running locally, and against GNU parallel over ssh.
//!
//! Hosts (CPU quotas from `--quotas`, default `0.4,0.2,0.4,0.6`):
//! * `ws`, the workstation: the machine's filesystem, 0.4 CPU;
//! * `h1`, `h2`, `h3`: zero-install helpers for herd (roots holding only herd), 0.2,
//!   0.4 and 0.6 CPU;
//! * `s1`, `s2`, `s3`: helpers with the tools installed for the GNU parallel baseline
//!   (the machine's filesystem, shared with `ws` as over NFS, running sshd with key
//!   auth), with the same quotas as `h1`-`h3`.
//!
//! The quotas keep the proportions 2 : 1 : 2 : 3 of a 0.5-CPU workstation with 0.25,
//! 0.5 and 0.75-CPU helpers, but add up to 1.6 of the machine's two cores. A quota is
//! a cap, not a share: with caps adding up to the whole machine, no host can reach its
//! cap while anything else runs (the kernel's network and FUSE work, the benchmark's
//! own processes), which separate machines would not suffer; the default leaves that
//! work a fifth of the machine. `--quotas 0.5,0.25,0.5,0.75` measures the full-machine
//! case.
//!
//! The batch: `--jobs` (default 16) ImageMagick runs, each
//! `/usr/bin/convert -limit thread 1 in/imgNN.jpg -blur 0x8 -resize 50% -quality 90
//! out/imgNN.jpg` on its own 2000×2000 plasma picture (about 1.6 s of CPU each;
//! `--blur`, `--size`). Every output is compared with a reference made up front.
//!
//! Measured:
//! * **W**, the batch's CPU work: every job run once, one after the other, on the
//!   unrestricted machine (user + system CPU time of the children);
//! * the **ideal makespan** W / Σ (quota × speed) over the cluster (ws and its three
//!   helpers; speed is 1 for all: they share one machine's cores);
//! * the makespan of: `parallel -j1` on ws alone (local-only, its quota holds one job);
//!   `herd map -j $(herd slots)` on ws (the first run separately: the helpers' caches
//!   are cold); `parallel -S 1/: -S 1/s1 -S 1/s2 -S 1/s3` over ssh, reusing one
//!   connection per host (ssh's `ControlMaster=auto`; parallel's own `-M` loses jobs
//!   in version 20221122). Medians of `--runs` (default 3), with min and max;
//! * the efficiency ideal / makespan, the speed-up over local, herd against parallel
//!   over ssh, and the jobs each host ran (joblogs' Host column);
//! * where the rest goes: the capacity (Σ quota × makespan of the method's hosts)
//!   split into useful work (W); hosts busy with a job but not with W, as the CPU the
//!   hosts used beyond W (cgroup accounting: herd, ssh and parallel processes,
//!   sandboxes, file service) and waiting (reading files, network, CPU taken by other
//!   work); hosts idle at startup (before their first job), in gaps between jobs, in
//!   the tail (after their last job) and never used; also the startup (driver start to
//!   first job), the tail (last job's start to the end), and how much other work
//!   shared the machine during the run;
//! * with `--ssh-idle`, parallel over ssh once more with every job at `SCHED_IDLE` and
//!   nice 19, the priority herd's sandbox gives its tasks. On the testbed all hosts
//!   share the machine's two cores, so an idle-priority task on one host yields to
//!   normal-priority processes of every other host and of the machine, which separate
//!   machines would not do; this row shows how much of a difference that makes.
//!
//! ```sh
//! cargo build --release -p herd -p herd-bench
//! target/release/batch-bench [--runs 3] [--jobs 16] [--quotas 0.4,0.2,0.4,0.6]
//!     [--blur 8] [--size 2000] [--local-jobs 1] [--ssh-slots 1] [--ssh-idle]
//!     [--herd-jobs N] [--no-herd] [--quiet-wait 20] [--timeout SECS] [--herd PATH]
//!     [--json PATH]
//! ```
//!
//! Needs root, GNU parallel, ImageMagick (`/usr/bin/convert`) and, for the ssh
//! baseline, openssh-server. Without `herd map` in the herd binary the herd rows are
//! left out (said in the output). The machine has two cores and the hosts share them:
//! any other load on the machine slows the runs, so before each run
//! the benchmark waits up to `--quiet-wait` seconds for the machine to be quiet, and
//! reports the other load during each run. `HERD_TESTBED_KEEP_LOGS=1` keeps the
//! hosts' logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use herd_bench::{
    Timed, arg, children_cpu, herd_binary, host_cpu, machine_busy, median, owner_load_note,
    run_timed, start_cluster, wait_quiet, write_json,
};
use herd_testbed::cluster::Node;
use herd_testbed::{HostCommand, Testbed};
use serde::Serialize;

/// The real ImageMagick (`/usr/local/bin/convert` may be something else).
const CONVERT: &str = "/usr/bin/convert";
const PARALLEL: &str = "/usr/bin/parallel";
/// What `--ssh-idle` puts before each job of its extra parallel-over-ssh run: the
/// priority herd's sandbox gives its tasks.
const IDLE_PREFIX: &str = "/usr/bin/chrt -i 0 /usr/bin/nice -n 19";
/// How long the agents' owner-load average takes to forget the previous run.
const SETTLE: Duration = Duration::from_secs(4);
/// Before each run, wait (up to `--quiet-wait` seconds, default 20) until the machine
/// uses less than this many CPUs.
const QUIET_CPUS: f64 = 0.3;

/// One line of a GNU parallel joblog.
#[derive(Debug, Clone)]
struct Job {
    host: String,
    start: f64,
    runtime: f64,
    exit: i64,
}

/// Parses a joblog (tab-separated, with GNU parallel's header), by column name.
fn parse_joblog(text: &str) -> anyhow::Result<Vec<Job>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty joblog")?.split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| format!("joblog has no {name} column: {header:?}"))
    };
    let (host, start, runtime, exit) = (
        col("Host")?,
        col("Starttime")?,
        col("JobRuntime")?,
        col("Exitval")?,
    );
    let mut jobs = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| f.get(i).map(|s| s.trim()).unwrap_or("");
        jobs.push(Job {
            host: get(host).to_string(),
            start: get(start)
                .parse()
                .with_context(|| format!("joblog line {line:?}"))?,
            runtime: get(runtime)
                .parse()
                .with_context(|| format!("joblog line {line:?}"))?,
            exit: get(exit).parse().unwrap_or(-1),
        });
    }
    Ok(jobs)
}

/// What one run of a method did, and where its capacity went.
#[derive(Debug, Clone, Serialize)]
struct RunStats {
    /// From starting the driver (parallel, herd map) to its exit.
    makespan_s: f64,
    /// Cluster ideal / makespan.
    efficiency: f64,
    /// From starting the driver to the first job's start.
    startup_s: f64,
    /// From the last job's start to the driver's exit.
    tail_s: f64,
    /// From the last job's end to the driver's exit.
    finish_s: f64,
    /// Jobs per host (testbed host name; the joblog's Host column mapped).
    jobs_per_host: BTreeMap<String, usize>,
    /// Seconds each host had at least one job running.
    busy_s: BTreeMap<String, f64>,
    /// The capacity of the method's hosts (Σ quota × makespan) in CPU seconds.
    capacity_cpu_s: f64,
    /// Fractions of the capacity: W ...
    useful: f64,
    /// ... hosts busy with a job but not with W (per-job overhead, contention), which
    /// is `overhead_cpu + waiting` ...
    busy_overhead: f64,
    /// ... of which the CPU the method's hosts used beyond W (herd, ssh and parallel
    /// processes, sandboxes, file service; counted whenever it was used) ...
    overhead_cpu: f64,
    /// ... and the rest: a job's host not computing (reading files, network, CPU taken
    /// by other work on the machine) ...
    waiting: f64,
    /// ... idle before each host's first job ...
    idle_startup: f64,
    /// ... idle between jobs ...
    idle_gaps: f64,
    /// ... idle after each host's last job (the tail) ...
    idle_tail: f64,
    /// ... and hosts that got no job at all.
    idle_unused: f64,
    /// CPU seconds the method's hosts used during the run (cgroup accounting), by host.
    cpu_used_s: BTreeMap<String, f64>,
    /// CPU seconds used on the machine outside the method's hosts during the run,
    /// divided by the makespan: the other load sharing the two cores, in CPUs.
    other_load_cpus: f64,
}

/// Turns a joblog into [`RunStats`]; `hosts` are the method's (name, quota) pairs.
fn analyse(
    jobs: &[Job],
    run: &Timed,
    hosts: &[(String, f64)],
    host_of: &dyn Fn(&str) -> String,
    w: f64,
    ideal: f64,
) -> RunStats {
    let t0 = run
        .started
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let m = run.elapsed.as_secs_f64();
    let rel = |t: f64| (t - t0).clamp(0.0, m);
    let first = jobs.iter().map(|j| j.start).fold(f64::INFINITY, f64::min);
    let last_start = jobs
        .iter()
        .map(|j| j.start)
        .fold(f64::NEG_INFINITY, f64::max);
    let last_end = jobs
        .iter()
        .map(|j| j.start + j.runtime)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut per_host: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for j in jobs {
        per_host
            .entry(host_of(&j.host))
            .or_default()
            .push((rel(j.start), rel(j.start + j.runtime)));
    }
    let capacity: f64 = hosts.iter().map(|(_, q)| q * m).sum();
    let (mut busy_cap, mut head_cap, mut gap_cap, mut tail_cap) = (0.0, 0.0, 0.0, 0.0);
    let mut unused_cap = 0.0;
    let mut busy_s = BTreeMap::new();
    let mut jobs_per_host = BTreeMap::new();
    for (name, q) in hosts {
        let mut iv = per_host.get(name).cloned().unwrap_or_default();
        jobs_per_host.insert(name.clone(), iv.len());
        iv.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut busy, mut cur): (f64, Option<(f64, f64)>) = (0.0, None);
        for (s, e) in iv.iter().copied() {
            cur = match cur {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    busy += ce - cs;
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = cur {
            busy += ce - cs;
        }
        if iv.is_empty() {
            busy_s.insert(name.clone(), 0.0);
            unused_cap += q * m;
            continue;
        }
        let head = iv.first().map(|x| x.0).unwrap_or(m);
        let tail = iv
            .iter()
            .map(|x| x.1)
            .fold(None, |a: Option<f64>, e| Some(a.map_or(e, |a| a.max(e))))
            .map(|e| m - e)
            .unwrap_or(0.0);
        let gaps = (m - busy - head - tail).max(0.0);
        busy_s.insert(name.clone(), busy);
        busy_cap += q * busy;
        head_cap += q * head;
        gap_cap += q * gaps;
        tail_cap += q * tail;
    }
    // Jobs on hosts outside the method's list (should not happen) still count.
    for (name, iv) in &per_host {
        if !hosts.iter().any(|(h, _)| h == name) {
            jobs_per_host.insert(name.clone(), iv.len());
        }
    }
    let frac = |x: f64| if capacity > 0.0 { x / capacity } else { 0.0 };
    RunStats {
        makespan_s: m,
        efficiency: ideal / m,
        startup_s: if jobs.is_empty() { m } else { first - t0 },
        tail_s: if jobs.is_empty() {
            0.0
        } else {
            t0 + m - last_start
        },
        finish_s: if jobs.is_empty() {
            0.0
        } else {
            t0 + m - last_end
        },
        jobs_per_host,
        busy_s,
        capacity_cpu_s: capacity,
        useful: frac(w),
        busy_overhead: frac(busy_cap - w),
        idle_startup: frac(head_cap),
        idle_gaps: frac(gap_cap),
        idle_tail: frac(tail_cap),
        idle_unused: frac(unused_cap),
        overhead_cpu: 0.0,
        waiting: frac(busy_cap - w),
        cpu_used_s: BTreeMap::new(),
        other_load_cpus: 0.0,
    }
}

type Method = herd_bench::Method<RunStats>;

impl herd_bench::MethodRun for RunStats {
    fn makespan_s(&self) -> f64 {
        self.makespan_s
    }
    fn efficiency(&self) -> f64 {
        self.efficiency
    }
}

#[derive(Serialize)]
struct Report {
    jobs: usize,
    job: String,
    image_size: u32,
    /// W: CPU seconds of the whole batch, measured sequentially on the unrestricted machine.
    work_cpu_s: f64,
    /// CPU seconds of each job in that measurement.
    work_per_job_cpu_s: Vec<f64>,
    /// Wall time of that sequential run.
    work_wall_s: f64,
    /// The cluster ws + helpers: (host, CPU quota).
    cluster: Vec<(String, f64)>,
    cluster_cpus: f64,
    ideal_makespan_s: f64,
    herd_slots: Option<usize>,
    herd_jobs: Option<usize>,
    /// `herd nodes --json` as ws saw it.
    herd_nodes: Option<serde_json::Value>,
    /// Set when the agents reported an owner's load at the start (see `herd slots`).
    herd_owner_load_note: Option<String>,
    methods: Vec<Method>,
    /// Median makespan of parallel over ssh / median makespan of herd map (> 1: herd faster).
    herd_speedup_vs_parallel_ssh: Option<f64>,
    loadavg_at_start: String,
}

struct Bench<'a> {
    bed: &'a Testbed,
    dir: PathBuf,
    inputs: Vec<PathBuf>,
    template: String,
    w: f64,
    ideal: f64,
    limit: Duration,
    /// How long to wait for the machine to be quiet before each run.
    quiet: Duration,
}

impl Bench<'_> {
    fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }

    fn clear_outputs(&self) -> anyhow::Result<()> {
        let out = self.out_dir();
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        std::fs::create_dir(&out)?;
        Ok(())
    }

    /// Every output exists and equals the reference.
    fn check_outputs(&self) -> anyhow::Result<()> {
        for input in &self.inputs {
            let name = input.file_name().context("input name")?;
            let got = std::fs::read(self.out_dir().join(name))
                .with_context(|| format!("output {} missing", name.to_string_lossy()))?;
            let want = std::fs::read(self.dir.join("ref").join(name))?;
            anyhow::ensure!(
                got == want,
                "output {} differs from the reference",
                name.to_string_lossy()
            );
        }
        Ok(())
    }

    /// Runs `cmd` (which writes a joblog to `joblog`) once, checks it and the outputs,
    /// and analyses it.
    fn run(
        &self,
        what: &str,
        cmd: HostCommand,
        joblog: &Path,
        hosts: &[(String, f64)],
        host_of: &dyn Fn(&str) -> String,
    ) -> anyhow::Result<RunStats> {
        self.clear_outputs()?;
        let _ = std::fs::remove_file(joblog);
        wait_quiet(QUIET_CPUS, self.quiet);
        // The agents average their owner's load over 3 s and report it every second:
        // let that settle, or the previous method's jobs count as the owner's load.
        std::thread::sleep(SETTLE);
        let cpu_before: Vec<(String, Option<Duration>)> = self
            .bed
            .hosts()
            .map(|h| (h.name().to_string(), host_cpu(h)))
            .collect();
        let machine_before = machine_busy();
        let t = run_timed(cmd, self.limit).with_context(|| what.to_string())?;
        let machine_after = machine_busy();
        anyhow::ensure!(
            t.status.success(),
            "{what} failed ({}): {}",
            t.status,
            t.log_tail(15)
        );
        let jobs = parse_joblog(&std::fs::read_to_string(joblog)?)
            .with_context(|| format!("{what}: joblog"))?;
        anyhow::ensure!(
            jobs.len() == self.inputs.len() && jobs.iter().all(|j| j.exit == 0),
            "{what}: {} jobs logged, {} failed",
            jobs.len(),
            jobs.iter().filter(|j| j.exit != 0).count()
        );
        self.check_outputs().with_context(|| what.to_string())?;
        let mut stats = analyse(&jobs, &t, hosts, host_of, self.w, self.ideal);
        for (h, before) in &cpu_before {
            let after = host_cpu(self.bed.host(h));
            if let (Some(b), Some(a)) = (before, after) {
                let used = a.saturating_sub(*b).as_secs_f64();
                if hosts.iter().any(|(n, _)| n == h) {
                    stats.cpu_used_s.insert(h.clone(), used);
                }
            }
        }
        let method_cpu: f64 = stats.cpu_used_s.values().sum();
        if stats.capacity_cpu_s > 0.0 && !stats.cpu_used_s.is_empty() {
            stats.overhead_cpu = (method_cpu - self.w) / stats.capacity_cpu_s;
            stats.waiting = stats.busy_overhead - stats.overhead_cpu;
        }
        if let (Some(b), Some(a)) = (machine_before, machine_after) {
            // Everything but the method's hosts: other testbed hosts (idle agents,
            // sshd) and whatever else runs on the machine.
            let other = a.saturating_sub(b).as_secs_f64() - method_cpu;
            stats.other_load_cpus = (other / stats.makespan_s).max(0.0);
        }
        eprintln!(
            "{what}: {:.1} s, efficiency {:.0}%, jobs {:?}",
            stats.makespan_s,
            stats.efficiency * 100.0,
            stats.jobs_per_host
        );
        Ok(stats)
    }
}

/// Key-auth sshd on each of `hosts`; returns the client key and the daemons.
fn start_sshds(bed: &Testbed, hosts: &[&str], dir: &Path) -> anyhow::Result<(PathBuf, Vec<Child>)> {
    let key = dir.join("id");
    let hostkey = dir.join("hostkey");
    for k in [&key, &hostkey] {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(k)
            .status()?;
        anyhow::ensure!(st.success(), "ssh-keygen failed");
    }
    let auth = dir.join("authorized_keys");
    std::fs::copy(key.with_extension("pub"), &auth)?;
    std::fs::create_dir_all("/run/sshd")?;
    let mut daemons = Vec::new();
    for h in hosts {
        let host = bed.host(h);
        let cfg = format!(
            "-oHostKey={} -oAuthorizedKeysFile={} -oPasswordAuthentication=no -oStrictModes=no -oUsePAM=no -oPermitRootLogin=yes -oListenAddress={}:22 -oPidFile=none -oMaxStartups=100 -oMaxSessions=100",
            hostkey.display(),
            auth.display(),
            host.addr()
        );
        let argv: Vec<&str> = std::iter::once("-D").chain(cfg.split(' ')).collect();
        daemons.push(host.command("/usr/sbin/sshd", &argv).spawn()?);
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok((key, daemons))
}

fn fmt_hosts(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(h, n)| format!("{h}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = arg(&args, "--runs", 3).max(1);
    let k: usize = arg(&args, "--jobs", 16).max(1);
    let blur: u32 = arg(&args, "--blur", 8);
    let size: u32 = arg(&args, "--size", 2000);
    let ssh_slots: usize = arg(&args, "--ssh-slots", 1).max(1);
    let quotas = herd_bench::parse_quotas(&arg(&args, "--quotas", "0.4,0.2,0.4,0.6".to_string()))?;
    let with_herd = !args.iter().any(|a| a == "--no-herd");
    let herd = herd_binary(&args)?;
    anyhow::ensure!(
        Path::new(CONVERT).exists(),
        "{CONVERT} missing: install imagemagick"
    );
    anyhow::ensure!(
        Path::new(PARALLEL).exists(),
        "{PARALLEL} missing: install parallel"
    );
    let with_ssh = Path::new("/usr/sbin/sshd").exists();
    let ssh_idle = args.iter().any(|a| a == "--ssh-idle");
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // The project: inputs, references, outputs.
    let project = tempfile::Builder::new()
        .prefix("herd-batch")
        .tempdir_in("/var/tmp")?;
    let dir = project.path().to_path_buf();
    for d in ["in", "ref", "out", "logs"] {
        std::fs::create_dir(dir.join(d))?;
    }
    let inputs: Vec<PathBuf> = (0..k)
        .map(|i| dir.join("in").join(format!("img{i:02}.jpg")))
        .collect();
    eprintln!("generating {k} {size}x{size} pictures…");
    let st = Command::new(PARALLEL)
        .args(["--will-cite", "-j2", "--halt", "now,fail=1"])
        .arg(format!(
            "{CONVERT} -seed {{}} -size {size}x{size} plasma: -quality 92 {}/in/img{{}}.jpg",
            dir.display()
        ))
        .arg(":::")
        .args((0..k).map(|i| format!("{i:02}")))
        .stdin(Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "generating the pictures failed");
    let out_dir = dir.join("out");
    let job_cmd = |input: &str, out: &str| {
        format!("{CONVERT} -limit thread 1 {input} -blur 0x{blur} -resize 50% -quality 90 {out}")
    };
    let template = job_cmd("{}", &format!("{}/{{/}}", out_dir.display()));

    // W: each job once, sequentially, on the unrestricted machine.
    eprintln!("measuring W: {k} jobs one after the other…");
    let mut per_job = Vec::new();
    let t = Instant::now();
    for input in &inputs {
        let name = input.file_name().context("name")?.to_string_lossy();
        let cmd = job_cmd(
            &input.display().to_string(),
            &format!("{}/ref/{name}", dir.display()),
        );
        let before = children_cpu();
        let st = Command::new("/bin/sh")
            .args(["-c", &cmd])
            .stdin(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "reference job failed: {cmd}");
        per_job.push(children_cpu() - before);
    }
    let w_wall = t.elapsed().as_secs_f64();
    let w: f64 = per_job.iter().sum();
    let cluster_cpus: f64 = quotas.iter().sum();
    let ideal = w / cluster_cpus;
    eprintln!(
        "W = {w:.1} CPU-s ({:.2} s per job), ideal makespan on {cluster_cpus} CPUs {ideal:.1} s",
        w / k as f64
    );

    // The testbed.
    let names = ["ws", "h1", "h2", "h3"];
    let ssh_names = ["s1", "s2", "s3"];
    let bed = herd_bench::quota_testbed(&herd, &quotas, with_herd, with_ssh.then_some("s"))?;
    let ws_host = bed.host("ws");
    let bench = Bench {
        bed: &bed,
        dir: dir.clone(),
        inputs: inputs.clone(),
        template: template.clone(),
        w,
        ideal,
        limit: Duration::from_secs_f64(arg(&args, "--timeout", ideal * 20.0 + 120.0)),
        quiet: Duration::from_secs(arg(&args, "--quiet-wait", 20)),
    };
    let args_with = |cmd: &mut HostCommand, template: &str| {
        cmd.arg(template).arg(":::").args(&bench.inputs);
        cmd.current_dir(&bench.dir);
    };
    let args_of = |cmd: &mut HostCommand| {
        cmd.arg(&bench.template).arg(":::").args(&bench.inputs);
        cmd.current_dir(&bench.dir);
    };
    let joblog = dir.join("logs").join("joblog");
    let jl = joblog.display().to_string();

    // Local only.
    let ws_only = vec![("ws".to_string(), quotas[0])];
    let local_j: usize = arg(&args, "--local-jobs", 1).max(1);
    let local_desc = format!("parallel -j{local_j} on ws");
    let local_cmd = || {
        let mut c = ws_host.command(
            PARALLEL,
            &["--will-cite", "-j", &local_j.to_string(), "--joblog", &jl],
        );
        args_of(&mut c);
        c
    };
    let as_ws = |h: &str| {
        if h == ":" {
            "ws".to_string()
        } else {
            h.to_string()
        }
    };

    // herd.
    let mut agents = None;
    let mut herd_slots = None;
    let mut herd_nodes = None;
    let mut load_note = None;
    let mut herd_note = String::new();
    let herd_hosts: Vec<(String, f64)> = names
        .iter()
        .zip(quotas)
        .map(|(h, q)| (h.to_string(), q))
        .collect();
    let ws_node = Node::new(ws_host, &herd);
    let ws_state = ws_node.state();
    let herd_s = herd.display().to_string();
    let herd_cmd = |argv: &[&str]| {
        let mut c = ws_host.command(&herd_s, argv);
        c.env("HERD_STATE", &ws_state).env("HERD_LOG", "warn");
        c
    };
    let has_map = with_herd
        && herd_cmd(&["map", "--help"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if with_herd && !has_map {
        herd_note = format!("{} has no `herd map`: herd not measured", herd.display());
        eprintln!("{herd_note}");
    }
    if has_map {
        agents = Some(start_cluster(&bed, &herd, "ws", &names[1..])?);
        herd_nodes = ws_node.nodes().map(serde_json::Value::from);
        load_note = owner_load_note(herd_nodes.as_ref());
        let out = herd_cmd(&["slots"]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "herd slots failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        herd_slots = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        anyhow::ensure!(herd_slots.is_some(), "herd slots printed no number");
    }
    // Without --herd-jobs, herd map's own default (jobs in flight per slot).
    let herd_j_arg: Option<usize> = args
        .iter()
        .position(|a| a == "--herd-jobs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok());
    let herd_j: usize = herd_j_arg.unwrap_or(herd_slots.unwrap_or(4) * 4);
    let herd_desc = match herd_j_arg {
        Some(j) => format!("herd map -j{j} (herd slots = {herd_slots:?})"),
        None => format!("herd map (default -j, herd slots = {herd_slots:?})"),
    };
    let herd_map_cmd = || {
        let mut argv = vec!["map".to_string()];
        if let Some(j) = herd_j_arg {
            argv.push("-j".into());
            argv.push(j.to_string());
        }
        argv.push("--joblog".into());
        argv.push(jl.clone());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut c = herd_cmd(&argv);
        args_of(&mut c);
        c
    };

    // GNU parallel over ssh.
    let ssh_dir = tempfile::tempdir()?;
    let mut sshds = Vec::new();
    let mut ssh_key = PathBuf::new();
    if with_ssh {
        let (key, d) = start_sshds(&bed, &ssh_names, ssh_dir.path())?;
        ssh_key = key;
        sshds = d;
    }
    let ssh_hosts: Vec<(String, f64)> = std::iter::once(("ws".to_string(), quotas[0]))
        .chain(
            ssh_names
                .iter()
                .zip(&quotas[1..])
                .map(|(h, q)| (h.to_string(), *q)),
        )
        .collect();
    let login_of: BTreeMap<String, String> = ssh_names
        .iter()
        .map(|h| (format!("root@{}", bed.host(h).addr()), h.to_string()))
        .collect();
    let ssh_host_of = |h: &str| {
        let bare = h.rsplit('/').next().unwrap_or(h);
        if bare == ":" {
            "ws".to_string()
        } else {
            login_of
                .get(bare)
                .cloned()
                .unwrap_or_else(|| bare.to_string())
        }
    };
    let ssh_desc = format!("parallel -S {ssh_slots}/: -S {ssh_slots}/s1..s3 (ssh, control master)");
    let ssh_run_cmd = |idle: bool| {
        let ssh = format!(
            "ssh -q -i {} -oStrictHostKeyChecking=no -oUserKnownHostsFile=/dev/null -oBatchMode=yes -oLogLevel=ERROR -oControlMaster=auto -oControlPath={}/cm-%C -oControlPersist=120",
            ssh_key.display(),
            ssh_dir.path().display()
        );
        let mut argv: Vec<String> = vec![
            "--will-cite".into(),
            "--ssh".into(),
            ssh,
            "--joblog".into(),
            jl.clone(),
            "-S".into(),
            format!("{ssh_slots}/:"),
        ];
        for login in login_of.keys() {
            argv.extend(["-S".into(), format!("{ssh_slots}/{login}")]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut c = ws_host.command(PARALLEL, &argv);
        if idle {
            args_with(&mut c, &format!("{IDLE_PREFIX} {}", bench.template));
        } else {
            args_of(&mut c);
        }
        c
    };

    // The runs, methods interleaved so that drifting load hits all alike.
    let mut cold = Vec::new();
    if has_map {
        cold.push(bench.run(
            "herd map (cold)",
            herd_map_cmd(),
            &joblog,
            &herd_hosts,
            &|h| h.to_string(),
        )?);
    }
    let (mut local_runs, mut herd_runs, mut ssh_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut ssh_idle_runs = Vec::new();
    for r in 0..runs {
        eprintln!("round {}/{runs}", r + 1);
        local_runs.push(bench.run("local", local_cmd(), &joblog, &ws_only, &as_ws)?);
        if has_map {
            herd_runs.push(
                bench.run("herd map", herd_map_cmd(), &joblog, &herd_hosts, &|h| {
                    h.to_string()
                })?,
            );
        }
        if with_ssh {
            ssh_runs.push(bench.run(
                "parallel over ssh",
                ssh_run_cmd(false),
                &joblog,
                &ssh_hosts,
                &ssh_host_of,
            )?);
        }
        if with_ssh && ssh_idle {
            ssh_idle_runs.push(bench.run(
                "parallel over ssh, idle priority",
                ssh_run_cmd(true),
                &joblog,
                &ssh_hosts,
                &ssh_host_of,
            )?);
        }
    }
    drop(agents);
    for mut d in sshds {
        let _ = d.kill();
        let _ = d.wait();
    }

    let mut methods = vec![Method::new(
        "local only",
        &local_desc,
        &ws_only,
        local_runs,
        "ws alone, 0.5 CPU",
    )];
    if has_map {
        methods.push(Method::new(
            "herd map, cold",
            &herd_desc,
            &herd_hosts,
            cold,
            "first run: helpers' caches empty",
        ));
        methods.push(Method::new(
            "herd map",
            &herd_desc,
            &herd_hosts,
            herd_runs,
            "helpers hold only herd",
        ));
    }
    if with_ssh {
        methods.push(Method::new(
            "parallel over ssh",
            &ssh_desc,
            &ssh_hosts,
            ssh_runs,
            "helpers have the tools, shared fs",
        ));
    }
    if with_ssh && ssh_idle {
        methods.push(Method::new(
            "ssh, idle priority",
            &format!("{ssh_desc}, jobs under `{IDLE_PREFIX}`"),
            &ssh_hosts,
            ssh_idle_runs,
            "as parallel over ssh, jobs at SCHED_IDLE and nice 19 like herd's tasks",
        ));
    }
    let local_med = methods[0].makespan.as_ref().map(|s| s.median);
    for m in &mut methods {
        if let (Some(l), Some(s)) = (local_med, &m.makespan) {
            m.speedup_vs_local = Some(l / s.median);
        }
    }
    let med_of = |name: &str| {
        methods
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.makespan.as_ref())
            .map(|s| s.median)
    };
    let herd_vs_ssh = match (med_of("herd map"), med_of("parallel over ssh")) {
        (Some(h), Some(s)) => Some(s / h),
        _ => None,
    };

    // The report.
    println!(
        "batch: {k} jobs `convert -blur 0x{blur} -resize 50%` of {size}x{size} JPEGs; W = {w:.1} CPU-s ({:.2} s/job, {w_wall:.1} s wall sequentially)",
        w / k as f64
    );
    println!(
        "cluster: ws {} + helpers {} / {} / {} = {cluster_cpus} CPUs; ideal makespan W / {cluster_cpus} = {ideal:.1} s; median of {runs} runs (min-max)",
        quotas[0], quotas[1], quotas[2], quotas[3]
    );
    println!(
        "{:<18} {:>8} {:>14} {:>6} {:>8} {:>8} {:>7} {:>7}  jobs per host",
        "method", "makespan", "min-max", "eff.", "vs local", "startup", "tail", "finish"
    );
    for m in &methods {
        let Some(s) = &m.makespan else { continue };
        let med = |f: fn(&RunStats) -> f64| median(m.runs.iter().map(f)).unwrap_or(0.0);
        // The jobs per host of the median run.
        let mid = m
            .runs
            .iter()
            .min_by(|a, b| {
                (a.makespan_s - s.median)
                    .abs()
                    .total_cmp(&(b.makespan_s - s.median).abs())
            })
            .map(|r| fmt_hosts(&r.jobs_per_host))
            .unwrap_or_default();
        println!(
            "{:<18} {:>7.1}s {:>14} {:>5.0}% {:>7.2}x {:>7.2}s {:>6.1}s {:>6.2}s  {mid}",
            m.name,
            s.median,
            format!("{:.1}-{:.1}s", s.min, s.max),
            m.efficiency_median.unwrap_or(0.0) * 100.0,
            m.speedup_vs_local.unwrap_or(0.0),
            med(|r| r.startup_s),
            med(|r| r.tail_s),
            med(|r| r.finish_s),
        );
    }
    if let Some(r) = herd_vs_ssh {
        println!(
            "herd map vs parallel over ssh: {r:.2}x (makespan of parallel / makespan of herd)"
        );
    }
    println!();
    println!(
        "where the capacity (Σ quota × makespan) went, % of it (medians): useful work W; hosts busy with a job: overhead CPU, waiting; hosts idle: at startup, in gaps, in the tail, never used"
    );
    println!(
        "{:<18} {:>7} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7}  {:>9} {:>11}",
        "method",
        "useful",
        "ovhd CPU",
        "waiting",
        "startup",
        "gaps",
        "tail",
        "unused",
        "CPU used",
        "other load"
    );
    for m in &methods {
        if m.runs.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&RunStats) -> f64| median(m.runs.iter().map(f)).unwrap_or(0.0);
        println!(
            "{:<18} {:>6.1}% {:>7.1}% {:>7.1}% {:>7.1}% {:>5.1}% {:>5.1}% {:>6.1}%  {:>8.1}s {:>7.2} CPU",
            m.name,
            med(&|r| r.useful * 100.0),
            med(&|r| r.overhead_cpu * 100.0),
            med(&|r| r.waiting * 100.0),
            med(&|r| r.idle_startup * 100.0),
            med(&|r| r.idle_gaps * 100.0),
            med(&|r| r.idle_tail * 100.0),
            med(&|r| r.idle_unused * 100.0),
            med(&|r| r.cpu_used_s.values().sum::<f64>()),
            med(&|r| r.other_load_cpus),
        );
    }
    println!(
        "(useful = W / capacity: the efficiency against the method's own hosts; overhead CPU = CPU the hosts used (cgroup accounting, \"CPU used\") beyond W = {w:.1} s; waiting = the rest of the time hosts had a job: reading files, network, or CPU taken by other load; other load = CPU used elsewhere on the machine during the run)"
    );
    if !herd_note.is_empty() {
        println!("({herd_note})");
    }
    if let Some(n) = &load_note {
        println!("(herd slots = {herd_slots:?}; {n})");
    }
    if !with_ssh {
        println!("(ssh baseline skipped: install openssh-server to include it)");
    }
    let report = Report {
        jobs: k,
        job: template,
        image_size: size,
        work_cpu_s: w,
        work_per_job_cpu_s: per_job,
        work_wall_s: w_wall,
        cluster: herd_hosts.clone(),
        cluster_cpus,
        ideal_makespan_s: ideal,
        herd_slots,
        herd_jobs: has_map.then_some(herd_j),
        herd_nodes,
        herd_owner_load_note: load_note,
        methods,
        herd_speedup_vs_parallel_ssh: herd_vs_ssh,
        loadavg_at_start: loadavg.trim().to_string(),
    };
    let path = write_json(&args, "batch", &report)?;
    println!("wrote {}", path.display());
    drop(bed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn joblog_analysis_splits_the_capacity() {
        let log = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n\
                   1\t:\t1000.500\t     2.000\t0\t0\t0\t0\tjob a\n\
                   2\troot@10.0.0.2\t1000.500\t     4.000\t0\t0\t0\t0\tjob b\n\
                   3\t:\t1002.500\t     1.000\t0\t0\t0\t0\tjob c\n";
        let jobs = parse_joblog(log).unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(
            (jobs[1].host.as_str(), jobs[1].runtime),
            ("root@10.0.0.2", 4.0)
        );
        let run = Timed {
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            elapsed: Duration::from_secs(5),
            status: std::process::ExitStatus::default(),
            log: PathBuf::new(),
        };
        let hosts = vec![("ws".to_string(), 1.0), ("s1".to_string(), 0.5)];
        let host_of = |h: &str| if h == ":" { "ws".into() } else { "s1".into() };
        // W = 3 CPU-s; capacity 1.5 CPUs × 5 s = 7.5 CPU-s.
        let s = analyse(&jobs, &run, &hosts, &host_of, 3.0, 2.0);
        assert_eq!(s.jobs_per_host["ws"], 2);
        assert_eq!(s.jobs_per_host["s1"], 1);
        assert!((s.startup_s - 0.5).abs() < 1e-9);
        assert!((s.tail_s - 2.5).abs() < 1e-9);
        assert!((s.finish_s - 0.5).abs() < 1e-9);
        assert!((s.busy_s["ws"] - 3.0).abs() < 1e-9);
        // ws: head 0.5, busy 3, tail 1.5; s1: head 0.5, busy 4, tail 0.5.
        let cap = 7.5;
        assert!((s.idle_startup - (0.5 + 0.25) / cap).abs() < 1e-9);
        assert!((s.idle_tail - (1.5 + 0.25) / cap).abs() < 1e-9);
        assert!(s.idle_gaps.abs() < 1e-9);
        assert!((s.useful - 3.0 / cap).abs() < 1e-9);
        let total =
            s.useful + s.busy_overhead + s.idle_startup + s.idle_gaps + s.idle_tail + s.idle_unused;
        assert!((total - 1.0).abs() < 1e-9);
        assert!((s.efficiency - 0.4).abs() < 1e-9);
    }
}
