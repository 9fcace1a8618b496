//! A C project built with `make -j` three ways on a heterogeneous testbed: locally,
//! through herd (`herd shell`), and with distcc.
//!
//! Hosts (CPU quotas from `--quotas`, default `0.5,0.25,0.5,0.75`):
//! * `ws`, the workstation: the machine's filesystem, 0.5 CPU;
//! * `h1`, `h2`, `h3`: zero-install helpers for herd (roots holding only herd);
//! * `d1`, `d2`, `d3`: helpers with gcc installed (the machine's filesystem) running
//!   Debian's `distccd`, with the same quotas as `h1`-`h3`.
//!
//! The project is [`herd_bench::cproject`]'s: `--files` units (default 24) of `--work`
//! functions (default 10, about 0.5 s of CPU each to compile at `-O2`), linked into
//! one program. Each build starts from `make clean`; after each, the program's output
//! and every object file are compared with a reference build.
//!
//! Measured, medians of `--runs` (default 3) with min and max:
//! * **W**: the CPU time of a sequential `make -j1` on the unrestricted machine (also
//!   the reference build), and the ideal W / Σ quotas over ws and the helpers;
//! * **local**: `make -j2` on ws;
//! * **herd**: `herd shell -- make -j$(herd slots)` on ws (cc and gcc go through herd);
//!   the first build separately (the helpers' caches are cold). `--herd-cc run`
//!   measures `make -jN CC="herd run -T -- gcc"` instead (explicit offload of every
//!   compile, no masquerade), labelled as such;
//! * **distcc**: `make -jN CC="distcc gcc"` on ws with
//!   `DISTCC_HOSTS="localhost/1 d1/1 d2/1 d3/1"` (`--distcc-slots` per helper);
//!   preprocessing and linking stay on ws, as distcc does;
//! * the efficiency (ideal / makespan), speed-up over local, CPU the hosts used
//!   (cgroup accounting) and other load on the machine during the build.
//!
//! ```sh
//! cargo build --release -p herd -p herd-bench
//! target/release/build-bench [--runs 3] [--files 24] [--work 10]
//!     [--quotas 0.5,0.25,0.5,0.75] [--local-jobs 2] [--distcc-slots 1]
//!     [--herd-jobs N] [--herd-cc shell|run] [--no-herd] [--quiet-wait 20]
//!     [--timeout SECS] [--herd PATH] [--json PATH]
//! ```
//!
//! Needs root, make, gcc and, for the distcc baseline, Debian's distcc. Before each
//! build the benchmark waits up to `--quiet-wait` seconds for the machine to be quiet
//! and reports the other load during each build (the default quotas add up to the
//! machine's two cores). `HERD_TESTBED_KEEP_LOGS=1` keeps the hosts' logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use herd_bench::cproject;
use herd_bench::{
    arg, children_cpu, herd_binary, host_cpu, machine_busy, median, owner_load_note, run_timed,
    start_cluster, wait_quiet, write_json,
};
use herd_testbed::cluster::Node;
use herd_testbed::{HostCommand, Testbed};
use serde::Serialize;

/// Before each build, wait (up to `--quiet-wait` seconds, default 20) until the
/// machine uses less than this many CPUs.
const QUIET_CPUS: f64 = 0.3;

/// One timed build.
#[derive(Debug, Clone, Serialize)]
struct BuildRun {
    /// From starting make (or herd) to its exit.
    makespan_s: f64,
    /// Ideal / makespan.
    efficiency: f64,
    /// CPU seconds the method's hosts used (cgroup accounting), by host.
    cpu_used_s: BTreeMap<String, f64>,
    /// CPU seconds used elsewhere on the machine during the build / makespan, in CPUs.
    other_load_cpus: f64,
    /// Compilations per distcc helper (from distccd's log), when known.
    compiles_per_host: BTreeMap<String, usize>,
}

type Method = herd_bench::Method<BuildRun>;

impl herd_bench::MethodRun for BuildRun {
    fn makespan_s(&self) -> f64 {
        self.makespan_s
    }
    fn efficiency(&self) -> f64 {
        self.efficiency
    }
}

#[derive(Serialize)]
struct Report {
    files: usize,
    work: usize,
    /// CPU seconds of a sequential `make -j1` on the unrestricted machine.
    work_cpu_s: f64,
    work_wall_s: f64,
    cluster: Vec<(String, f64)>,
    cluster_cpus: f64,
    ideal_makespan_s: f64,
    herd_slots: Option<usize>,
    herd_nodes: Option<serde_json::Value>,
    /// Set when the agents reported an owner's load at the start (see `herd slots`).
    herd_owner_load_note: Option<String>,
    methods: Vec<Method>,
    /// Median distcc makespan / median herd makespan (> 1: herd faster).
    herd_speedup_vs_distcc: Option<f64>,
    loadavg_at_start: String,
    expected_output: String,
}

struct Bench<'a> {
    bed: &'a Testbed,
    proj: PathBuf,
    /// The reference build's objects and program output.
    objects: Vec<(String, Vec<u8>)>,
    output: String,
    ideal: f64,
    limit: Duration,
    /// How long to wait for the machine to be quiet before each build.
    quiet: Duration,
}

impl Bench<'_> {
    /// `make clean` on ws, untimed.
    fn clean(&self) -> anyhow::Result<()> {
        let out = self
            .bed
            .host("ws")
            .command("make", &["-s", "clean"])
            .current_dir(&self.proj)
            .output()?;
        anyhow::ensure!(out.status.success(), "make clean failed");
        Ok(())
    }

    /// The build's program prints the reference output and every object equals the
    /// reference's.
    fn check(&self) -> anyhow::Result<()> {
        let out = Command::new(self.proj.join(cproject::PROGRAM))
            .stdin(Stdio::null())
            .output()
            .context("running the built program")?;
        anyhow::ensure!(
            String::from_utf8_lossy(&out.stdout) == self.output,
            "the program printed {:?}, the reference build's printed {:?}",
            String::from_utf8_lossy(&out.stdout),
            self.output
        );
        for (name, want) in &self.objects {
            let got =
                std::fs::read(self.proj.join(name)).with_context(|| format!("{name} missing"))?;
            anyhow::ensure!(&got == want, "{name} differs from the reference build's");
        }
        Ok(())
    }

    fn run(
        &self,
        what: &str,
        cmd: HostCommand,
        hosts: &[(String, f64)],
    ) -> anyhow::Result<BuildRun> {
        self.clean()?;
        wait_quiet(QUIET_CPUS, self.quiet);
        let before: Vec<(String, Option<Duration>)> = self
            .bed
            .hosts()
            .map(|h| (h.name().to_string(), host_cpu(h)))
            .collect();
        let m0 = machine_busy();
        let t = run_timed(cmd, self.limit).with_context(|| what.to_string())?;
        let m1 = machine_busy();
        anyhow::ensure!(
            t.status.success(),
            "{what} failed ({}): {}",
            t.status,
            t.log_tail(15)
        );
        self.check()
            .with_context(|| format!("{what}: checking the build"))?;
        let makespan = t.elapsed.as_secs_f64();
        let mut cpu_used_s = BTreeMap::new();
        for (h, b) in &before {
            if let (Some(b), Some(a)) = (b, host_cpu(self.bed.host(h)))
                && hosts.iter().any(|(n, _)| n == h)
            {
                cpu_used_s.insert(h.clone(), a.saturating_sub(*b).as_secs_f64());
            }
        }
        let used: f64 = cpu_used_s.values().sum();
        let other_load_cpus = match (m0, m1) {
            (Some(a), Some(b)) => ((b.saturating_sub(a).as_secs_f64() - used) / makespan).max(0.0),
            _ => 0.0,
        };
        eprintln!("{what}: {makespan:.1} s");
        Ok(BuildRun {
            makespan_s: makespan,
            efficiency: self.ideal / makespan,
            cpu_used_s,
            other_load_cpus,
            compiles_per_host: BTreeMap::new(),
        })
    }
}

/// Counts "COMPILE_OK" lines in each distccd's log.
fn distcc_counts(logs: &[(String, PathBuf)]) -> BTreeMap<String, usize> {
    logs.iter()
        .map(|(h, p)| {
            let n = std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("COMPILE_OK"))
                .count();
            (h.clone(), n)
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = arg(&args, "--runs", 3).max(1);
    let files: usize = arg(&args, "--files", 24).max(1);
    let work: usize = arg(&args, "--work", 10).max(1);
    let local_j: usize = arg(&args, "--local-jobs", 2).max(1);
    let distcc_slots: usize = arg(&args, "--distcc-slots", 1).max(1);
    let quotas =
        herd_bench::parse_quotas(&arg(&args, "--quotas", "0.5,0.25,0.5,0.75".to_string()))?;
    let herd_cc: String = arg(&args, "--herd-cc", "shell".to_string());
    anyhow::ensure!(
        herd_cc == "shell" || herd_cc == "run",
        "--herd-cc is shell or run"
    );
    let with_herd = !args.iter().any(|a| a == "--no-herd");
    let herd = herd_binary(&args)?;
    let with_distcc = Path::new("/usr/bin/distccd").exists();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let root = tempfile::Builder::new()
        .prefix("herd-build")
        .tempdir_in("/var/tmp")?;
    let proj = root.path().join("proj");
    cproject::generate(&proj, files, work)?;
    let expected = cproject::expected_output(files, work);

    // W and the reference build: make -j1 on the unrestricted machine.
    eprintln!("reference build: {files} files, make -j1…");
    let make = |args: &[&str]| {
        Command::new("make")
            .args(args)
            .current_dir(&proj)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
    };
    let before = children_cpu();
    let t = Instant::now();
    anyhow::ensure!(make(&["-s", "-j1"])?.success(), "reference build failed");
    let w_wall = t.elapsed().as_secs_f64();
    let w = children_cpu() - before;
    let objects = cproject::object_files(files)
        .into_iter()
        .map(|o| {
            let bytes = std::fs::read(proj.join(&o))?;
            Ok((o, bytes))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = Command::new(proj.join(cproject::PROGRAM)).output()?;
    anyhow::ensure!(
        String::from_utf8_lossy(&out.stdout) == expected,
        "the reference build printed {:?}, expected {expected:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let cluster_cpus: f64 = quotas.iter().sum();
    let ideal = w / cluster_cpus;
    eprintln!("W = {w:.1} CPU-s ({w_wall:.1} s wall), ideal on {cluster_cpus} CPUs {ideal:.1} s");

    // The testbed.
    let names = ["ws", "h1", "h2", "h3"];
    let d_names = ["d1", "d2", "d3"];
    let bed = herd_bench::quota_testbed(&herd, &quotas, with_herd, with_distcc.then_some("d"))?;
    let ws_host = bed.host("ws");
    let bench = Bench {
        bed: &bed,
        proj: proj.clone(),
        objects,
        output: expected.clone(),
        ideal,
        limit: Duration::from_secs_f64(arg(&args, "--timeout", ideal * 30.0 + 180.0)),
        quiet: Duration::from_secs(arg(&args, "--quiet-wait", 20)),
    };
    let ws_only = vec![("ws".to_string(), quotas[0])];

    // herd.
    let ws_node = Node::new(ws_host, &herd);
    let ws_state = ws_node.state();
    let herd_s = herd.display().to_string();
    let herd_cmd = |argv: &[&str]| {
        let mut c = ws_host.command(&herd_s, argv);
        c.env("HERD_STATE", &ws_state).env("HERD_LOG", "warn");
        c.current_dir(&proj);
        c
    };
    let has = |sub: &str| {
        herd_cmd(&[sub, "--help"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let mut herd_note = String::new();
    let use_herd = with_herd
        && if herd_cc == "shell" && !has("shell") {
            herd_note = format!(
                "{} has no `herd shell`: herd not measured (--herd-cc run measures herd run as CC instead)",
                herd.display()
            );
            false
        } else {
            true
        };
    if !herd_note.is_empty() {
        eprintln!("{herd_note}");
    }
    let herd_hosts: Vec<(String, f64)> = names
        .iter()
        .zip(quotas)
        .map(|(h, q)| (h.to_string(), q))
        .collect();
    let mut agents = None;
    let mut herd_slots = None;
    let mut herd_nodes = None;
    let mut load_note = None;
    if use_herd {
        agents = Some(start_cluster(&bed, &herd, "ws", &names[1..])?);
        herd_nodes = ws_node.nodes().map(serde_json::Value::from);
        load_note = owner_load_note(herd_nodes.as_ref());
        if has("slots") {
            let out = herd_cmd(&["slots"]).output()?;
            anyhow::ensure!(
                out.status.success(),
                "herd slots failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            herd_slots = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
            anyhow::ensure!(herd_slots.is_some(), "herd slots printed no number");
        }
    }
    let herd_j: usize = arg(&args, "--herd-jobs", herd_slots.unwrap_or(4)).max(1);
    let herd_desc = if herd_cc == "shell" {
        format!("herd shell -- make -j{herd_j} (herd slots = {herd_slots:?})")
    } else {
        format!("make -j{herd_j} CC=\"herd run -T -- gcc\" (herd run as CC)")
    };
    let herd_build = || {
        let j = format!("-j{herd_j}");
        if herd_cc == "shell" {
            herd_cmd(&["shell", "--", "make", "-s", &j])
        } else {
            let cc = format!("CC={herd_s} run -T -- gcc");
            let mut c = ws_host.command("make", &["-s", &j, &cc]);
            c.env("HERD_STATE", &ws_state).env("HERD_LOG", "warn");
            c.current_dir(&proj);
            c
        }
    };

    // distcc.
    let mut distccds: Vec<Child> = Vec::new();
    let mut distcc_logs = Vec::new();
    let distcc_dir = root.path().join("distcc");
    std::fs::create_dir_all(&distcc_dir)?;
    if with_distcc {
        for h in d_names {
            let host = bed.host(h);
            let log = root.path().join(format!("distccd-{h}.log"));
            // The daemon drops to the distccd user; let it write its log.
            std::fs::write(&log, "")?;
            let _ = Command::new("chmod").arg("666").arg(&log).status();
            let listen = host.addr().to_string();
            let jobs = distcc_slots.to_string();
            let log_arg = format!("--log-file={}", log.display());
            let d = host
                .command(
                    "/usr/bin/distccd",
                    &[
                        "--daemon",
                        "--no-detach",
                        "--user",
                        "distccd",
                        "--allow",
                        "10.213.0.0/24",
                        "--listen",
                        &listen,
                        "--jobs",
                        &jobs,
                        "--log-level=info",
                        &log_arg,
                    ],
                )
                .spawn()?;
            distccds.push(d);
            distcc_logs.push((h.to_string(), log));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let distcc_hosts = std::iter::once("localhost/1".to_string())
        .chain(
            d_names
                .iter()
                .filter(|_| with_distcc)
                .map(|h| format!("{}/{distcc_slots}", bed.host(h).addr())),
        )
        .collect::<Vec<_>>()
        .join(" ");
    let distcc_j = 1 + 3 * distcc_slots;
    let distcc_desc =
        format!("make -j{distcc_j} CC=\"distcc gcc\", DISTCC_HOSTS=\"{distcc_hosts}\"");
    let distcc_host_list: Vec<(String, f64)> = std::iter::once(("ws".to_string(), quotas[0]))
        .chain(
            d_names
                .iter()
                .zip(&quotas[1..])
                .map(|(h, q)| (h.to_string(), *q)),
        )
        .collect();
    let distcc_build = || {
        let j = format!("-j{distcc_j}");
        let mut c = ws_host.command("make", &["-s", &j, "CC=distcc gcc"]);
        c.env("DISTCC_HOSTS", &distcc_hosts)
            .env("DISTCC_DIR", &distcc_dir)
            .env("DISTCC_FALLBACK", "0")
            .current_dir(&proj);
        c
    };
    let local_build = || {
        let mut c = ws_host.command("make", &["-s", &format!("-j{local_j}")]);
        c.current_dir(&proj);
        c
    };

    let mut cold = Vec::new();
    if use_herd {
        cold.push(bench.run("herd (cold)", herd_build(), &herd_hosts)?);
    }
    let (mut local_runs, mut herd_runs, mut distcc_runs) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..runs {
        eprintln!("round {}/{runs}", r + 1);
        local_runs.push(bench.run("local", local_build(), &ws_only)?);
        if use_herd {
            herd_runs.push(bench.run("herd", herd_build(), &herd_hosts)?);
        }
        if with_distcc {
            let before = distcc_counts(&distcc_logs);
            let mut run = bench.run("distcc", distcc_build(), &distcc_host_list)?;
            run.compiles_per_host = distcc_counts(&distcc_logs)
                .into_iter()
                .map(|(h, n)| {
                    let b = before.get(&h).copied().unwrap_or(0);
                    (h, n - b)
                })
                .collect();
            let remote: usize = run.compiles_per_host.values().sum();
            run.compiles_per_host
                .insert("ws".into(), (files + 1).saturating_sub(remote));
            distcc_runs.push(run);
        }
    }
    drop(agents);
    for mut d in distccds {
        let _ = d.kill();
        let _ = d.wait();
    }

    let mut methods = vec![Method::new(
        "local",
        &format!("make -j{local_j} on ws"),
        &ws_only,
        local_runs,
        "ws alone",
    )];
    let herd_name = if herd_cc == "shell" {
        "herd"
    } else {
        "herd run as CC"
    };
    if use_herd {
        methods.push(Method::new(
            &format!("{herd_name}, cold"),
            &herd_desc,
            &herd_hosts,
            cold,
            "first build: helpers' caches empty",
        ));
        methods.push(Method::new(
            herd_name,
            &herd_desc,
            &herd_hosts,
            herd_runs,
            "helpers hold only herd",
        ));
    }
    if with_distcc {
        methods.push(Method::new(
            "distcc",
            &distcc_desc,
            &distcc_host_list,
            distcc_runs,
            "helpers have gcc; cpp and link on ws",
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
    let herd_vs_distcc = match (med_of(herd_name), med_of("distcc")) {
        (Some(h), Some(d)) => Some(d / h),
        _ => None,
    };

    println!(
        "build: {files} C files ({work} functions each) + main.c, -O2; W = {w:.1} CPU-s (make -j1, {w_wall:.1} s wall, unrestricted)"
    );
    println!(
        "cluster: ws {} + helpers {} / {} / {} = {cluster_cpus} CPUs; ideal W / {cluster_cpus} = {ideal:.1} s; median of {runs} builds from clean (min-max); outputs and objects verified",
        quotas[0], quotas[1], quotas[2], quotas[3]
    );
    println!(
        "{:<20} {:>8} {:>14} {:>6} {:>8} {:>9} {:>10}  command",
        "method", "time", "min-max", "eff.", "vs local", "CPU used", "other load"
    );
    for m in &methods {
        let Some(s) = &m.makespan else { continue };
        println!(
            "{:<20} {:>7.1}s {:>14} {:>5.0}% {:>7.2}x {:>8.1}s {:>6.2} CPU  {}",
            m.name,
            s.median,
            format!("{:.1}-{:.1}s", s.min, s.max),
            m.efficiency_median.unwrap_or(0.0) * 100.0,
            m.speedup_vs_local.unwrap_or(0.0),
            median(m.runs.iter().map(|r| r.cpu_used_s.values().sum::<f64>())).unwrap_or(0.0),
            median(m.runs.iter().map(|r| r.other_load_cpus)).unwrap_or(0.0),
            m.command
        );
    }
    if let Some(m) = methods.iter().find(|m| m.name == "distcc")
        && let Some(r) = m.runs.last()
    {
        println!(
            "distcc compilations per host (last build): {}",
            r.compiles_per_host
                .iter()
                .map(|(h, n)| format!("{h}:{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if let Some(r) = herd_vs_distcc {
        println!("herd vs distcc: {r:.2}x (distcc time / herd time)");
    }
    println!(
        "(CPU used: cgroup accounting of the method's hosts, W = {w:.1} s; other load: the rest of the machine during the build)"
    );
    if !herd_note.is_empty() {
        println!("({herd_note})");
    }
    if let Some(n) = &load_note {
        println!("(herd slots = {herd_slots:?}; {n})");
    }
    if !with_distcc {
        println!("(distcc baseline skipped: install distcc to include it)");
    }
    let report = Report {
        files,
        work,
        work_cpu_s: w,
        work_wall_s: w_wall,
        cluster: herd_hosts,
        cluster_cpus,
        ideal_makespan_s: ideal,
        herd_slots,
        herd_nodes,
        herd_owner_load_note: load_note,
        methods,
        herd_speedup_vs_distcc: herd_vs_distcc,
        loadavg_at_start: loadavg.trim().to_string(),
        expected_output: expected.trim().to_string(),
    };
    let path = write_json(&args, "build", &report)?;
    println!("wrote {}", path.display());
    drop(bed);
    Ok(())
}
