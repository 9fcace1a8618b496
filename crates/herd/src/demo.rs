//! `herd demo`: herd on one machine, with nothing to set up.
//!
//! It starts a throwaway cluster on this machine (the workstation and three helpers),
//! runs a real CPU-bound batch across it with `herd map`, prints how the jobs spread
//! and the speedup against one core, and cleans up after itself.
//!
//! # What it does
//!
//! 1. A temporary directory (`$TMPDIR`, else `/tmp`, named `herd-demo-*`, mode 0700)
//!    holds the four state directories, the agents' logs (`logs/NAME.log`) and the job
//!    log. Nothing else on the machine is touched, except an empty cgroup (below).
//! 2. `herd init` (in process) makes the cluster `demo` with the node `workstation`;
//!    then the workstation's agent starts, and when it answers, three helper agents
//!    join it with the token (`--name helperN`). Every agent is a child process of the
//!    current executable, listens on `127.0.0.1` on a port the kernel just handed out
//!    as free (a UDP bind probe), has mDNS off (`--no-mdns`, so a real cluster on the
//!    LAN never sees the demo) and lends `--cpus` = a quarter of the cores this process
//!    may use (at least 0.25).
//! 3. It waits until the workstation's agent shows all four nodes alive with their
//!    load reports, and every helper `accepting` work. A helper that cannot run tasks
//!    logs `this node cannot run tasks: WHY` and its load report lacks `exec`, so the
//!    workstation shows it not accepting: the demo prints WHY and what to do (run as
//!    root; give yourself `/dev/fuse`; allow unprivileged user namespaces), cleans up
//!    and exits 2. That is what a plain user meets where `/dev/fuse` is root's only or
//!    user namespaces are off; where both are available it runs as a plain user too.
//! 4. It measures one core: a short probe sizes the job so that one job takes about
//!    `0.625 s × cores` on one core (at most 3.75 s; the default batch of 24 jobs, or 4
//!    per core, then keeps the whole machine busy for about 15 s), then two jobs run one
//!    after the other, directly (no herd), and the faster one counts.
//! 5. The batch is `herd map` itself, a child process with the terminal, so the user
//!    sees its real progress bar (one line per job when stderr is not a terminal):
//!    each job is `head -c BYTES /dev/zero | sha256sum`, tools every Linux has, that
//!    run on the helpers from the workstation's own files through herd. Its working
//!    directory is `/`: tasks get a private `/tmp`, so a directory under `/tmp` (where
//!    the user may be) would not exist for them. The jobs read no files of the demo.
//! 6. From the job log it prints how many jobs each node ran and their summed run
//!    time, then `speedup vs one core`: the batch's jobs times the one-core job time,
//!    over the batch's wall time.
//! 7. Cleanup, always: SIGTERM to every agent (their graceful leave), SIGKILL after
//!    10 s, then the temporary directory and the cgroup are removed. On Ctrl-C,
//!    SIGTERM or SIGHUP it does the same and exits 130; on an error too. The agents run
//!    in their own process group (Ctrl-C reaches `herd map` and the demo, which then
//!    stops the agents in order) and get SIGTERM from the kernel if the demo itself
//!    dies (`PR_SET_PDEATHSIG`), so even `kill -9` leaves no agent behind: only the
//!    temporary directory, and the empty cgroup, which the next demo removes.
//!    `--keep` keeps the directory and says where.
//!
//! # One machine playing four: what had to change
//!
//! A helper lends only what its owner leaves idle: it measures the owner's load (the
//! machine's CPU time minus herd's own) and offers `round(cpus − owner_load)` slots.
//! Here every node shares one machine, so each would count the other nodes' jobs (and
//! whatever else runs here) as its owner's, offer no slot and stall the batch. So the
//! agents measure their owner in an empty cgroup the demo makes for the purpose
//! (`--host-cgroup`, in the cpuacct hierarchy or the unified one, removed at the end):
//! the owner's load is zero and each node offers its grant. Where no such cgroup can
//! be made (a plain user without a delegated cgroup), the agents measure the whole
//! machine; the batch still completes, but the workstation runs more of it. Every
//! agent also gets `--owner-busy 1` (never suspend for the owner) and the helpers
//! `--start-after 0` (take work at once).
//!
//! # How honest the speedup is
//!
//! The four nodes share this machine's cores: a helper's job runs in a cgroup limited
//! to its grant and at `SCHED_IDLE`, and the workstation's own jobs run unsandboxed at
//! normal priority. The speedup against one core therefore cannot exceed the number of
//! cores here, and the output says so; what the demo shows is how herd spreads the
//! work and what it costs (sandboxes, the files each helper fetches on first use). On
//! real helpers each brings its own cores. The one-core time is the faster of two
//! runs, so the speedup errs low. Anything else busy on the machine slows the batch
//! and lowers the figure.
//!
//! # Known limits
//!
//! * On a cgroup v2 machine each agent moves the processes of its cgroup into a child
//!   group named `agent` before it creates task groups (the agent's own behaviour, as
//!   for any `herd agent` started from a shell), so four agents may nest several
//!   levels deep, and the shell that ran the demo stays in the innermost afterwards.
//!   Untested so far: the test machines use cgroup v1.
//! * The ports are free when probed, not reserved: another program could take one in
//!   between (the agent then fails and the demo shows its log).
//! * After `kill -9` of the demo the temporary directory stays behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herd_agent::admin::{self, InitOptions};
use herd_agent::state::StateDir;
use herd_proto::{LocalRequest, LocalResponse, NodeInfo};

/// The `herd demo` flags.
pub struct DemoArgs {
    /// `--jobs`: jobs in the batch.
    pub jobs: Option<u32>,
    /// `--keep`: keep the temporary directory.
    pub keep: bool,
}

/// The workstation's node name.
const WORKSTATION: &str = "workstation";
/// The helpers' node names.
const HELPERS: [&str; 3] = ["helper1", "helper2", "helper3"];
/// How long the four agents may take to form the cluster.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long an agent may take to leave after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// Seconds of the whole machine the default batch should take.
const BATCH_SECONDS: f64 = 15.0;
/// The probe that sizes the jobs hashes this many bytes.
const PROBE_BYTES: u64 = 32 << 20;
/// Exit status when the demo cannot work here (something the user must fix).
const EXIT_CANNOT: u8 = 2;
/// Exit status after Ctrl-C, SIGTERM or SIGHUP.
const EXIT_INTERRUPTED: u8 = 130;
/// What a helper's agent logs when it cannot run tasks.
const CANNOT_RUN: &str = "this node cannot run tasks: ";

/// `herd demo`.
pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let stop = watch_signals()?;
    let exe = std::env::current_exe().context("cannot find herd's own binary")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = ((cores as f64 / 4.0).max(0.25) * 100.0).round() / 100.0;
    let jobs = args
        .jobs
        .map_or_else(|| default_jobs(cores), |j| j as usize);
    let root = tempfile::Builder::new()
        .prefix("herd-demo-")
        .tempdir()
        .context("cannot make a temporary directory (set TMPDIR to a writable one)")?
        .keep();
    let mut cluster = Cluster {
        root,
        keep: args.keep,
        cgroup: None,
        agents: Vec::new(),
        batch: None,
        cleaned: false,
    };
    let plan = Plan {
        exe,
        cores,
        share,
        jobs,
        stop,
    };
    let result = run(&mut cluster, &plan);
    let problems = cluster.cleanup();
    for p in &problems {
        eprintln!("herd demo: {p}");
    }
    let gone = if cluster.keep {
        format!("kept {}", cluster.root.display())
    } else if cluster.root.exists() {
        format!("could not remove {}", cluster.root.display())
    } else {
        format!("removed {}", cluster.root.display())
    };
    match result {
        Ok(code) => {
            println!("cleaned up: agents stopped, {gone}");
            Ok(code)
        }
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("herd demo: interrupted; agents stopped, {gone}");
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        Err(e) => {
            eprintln!("herd demo: agents stopped, {gone}");
            Err(e)
        }
    }
}

/// What the run is made of.
struct Plan {
    exe: PathBuf,
    cores: usize,
    share: f64,
    jobs: usize,
    stop: Arc<AtomicBool>,
}

impl Plan {
    fn check(&self) -> anyhow::Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        Ok(())
    }
}

/// The default batch: 24 jobs, or 4 per core on machines with more than 6.
fn default_jobs(cores: usize) -> usize {
    (4 * cores).max(24)
}

/// Seconds one job should take on one core: the default batch then keeps every core
/// busy for about [`BATCH_SECONDS`].
fn job_seconds(cores: usize) -> f64 {
    (BATCH_SECONDS * cores as f64 / default_jobs(cores) as f64).clamp(0.5, 5.0)
}

/// One job of the batch, as a shell command line.
fn job_line(bytes: u64) -> String {
    format!("head -c {bytes} /dev/zero | sha256sum >/dev/null")
}

fn run(cluster: &mut Cluster, plan: &Plan) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let root = cluster.root.clone();
    let core_word = if plan.cores == 1 { "core" } else { "cores" };
    println!("herd demo: a throwaway cluster on this machine, and a CPU-bound batch across it");
    println!(
        "  {WORKSTATION:<12} this machine's agent: it submits the batch and lends {} cores",
        plan.share
    );
    println!(
        "  {:<12} three more agents, as if on three other machines, each lending {} cores;",
        "helper1..3", plan.share
    );
    println!(
        "  {:<12} they run each job in a sandbox that sees this machine's files through herd",
        ""
    );
    println!(
        "  all four share this machine's {} {core_word}; files in {} (removed at the end)",
        plan.cores,
        root.display()
    );

    cluster.cgroup = empty_cgroup(&format!("herd-demo-{}", std::process::id()));
    let ws_dir = StateDir::new(root.join(WORKSTATION));
    let ports = free_ports(1 + HELPERS.len())?;
    let token = admin::init(
        &ws_dir,
        &InitOptions {
            cluster: "demo".into(),
            name: WORKSTATION.into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0])),
            ttl: Some(3600),
        },
    )
    .context("herd init for the demo's workstation")?
    .encode();
    std::fs::create_dir_all(root.join("logs"))
        .with_context(|| format!("cannot create {}", root.join("logs").display()))?;

    print!("starting the workstation's agent and three helpers... ");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let share = plan.share.to_string();
    let mut common: Vec<String> = vec![
        "--no-mdns".into(),
        "--cpus".into(),
        share,
        "--owner-busy".into(),
        "1".into(),
    ];
    if let Some(cg) = &cluster.cgroup {
        common.push("--host-cgroup".into());
        common.push(cg.display().to_string());
    }
    let mut ws_args = vec!["agent".to_string(), "--state".into(), path_arg(&ws_dir)];
    ws_args.extend(common.iter().cloned());
    cluster.start_agent(plan, WORKSTATION, &ws_args)?;
    // Helpers enroll through the workstation: start them once it answers.
    wait_until(plan, cluster, "the workstation's agent to answer", || {
        Ok(nodes(&rt, &ws_dir).is_some())
    })?;
    for (i, name) in HELPERS.iter().enumerate() {
        let mut a = vec![
            "agent".to_string(),
            "--state".into(),
            path_arg(&StateDir::new(root.join(name))),
            "--join".into(),
            token.clone(),
            "--name".into(),
            (*name).into(),
            "--listen".into(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, ports[i + 1])).to_string(),
            "--start-after".into(),
            "0".into(),
        ];
        a.extend(common.iter().cloned());
        cluster.start_agent(plan, name, &a)?;
    }
    let mut cannot: Option<(String, String)> = None;
    wait_until(
        plan,
        cluster,
        "all four nodes to be alive and taking work",
        || {
            let Some(ns) = nodes(&rt, &ws_dir) else {
                return Ok(false);
            };
            let reported = |name: &str| {
                ns.iter().find(|n| {
                    n.name == name && n.state.as_str() == "alive" && n.speed > 0.0 && n.cpus > 0.0
                })
            };
            if reported(WORKSTATION).is_none() {
                return Ok(false);
            }
            let mut all = true;
            for h in HELPERS {
                match reported(h) {
                    Some(n) if n.accepting => {}
                    Some(_) => {
                        if let Some(why) = cannot_run_reason(&log_path(&root, h)) {
                            cannot = Some((h.to_string(), why));
                            return Ok(true);
                        }
                        all = false;
                    }
                    None => all = false,
                }
            }
            Ok(all)
        },
    )?;
    if let Some((node, why)) = cannot {
        println!("{node} cannot run tasks");
        explain_cannot_run(&node, &why);
        return Ok(ExitCode::from(EXIT_CANNOT));
    }
    println!(
        "all four alive, every helper taking work ({:.1} s). `herd nodes` shows:",
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    let _ = Command::new(&plan.exe)
        .arg("nodes")
        .arg("--state")
        .arg(ws_dir.root())
        .stdin(Stdio::null())
        .status();
    if cluster.cgroup.is_none() {
        println!(
            "(no empty cgroup could be made for the agents to measure their owner in: they see \
             each other's jobs as their owner's load, so the workstation will run more of the batch)"
        );
    }

    // One core.
    plan.check()?;
    print!("measuring one core... ");
    let _ = std::io::stdout().flush();
    let probe = time_job(PROBE_BYTES)?;
    let rate = PROBE_BYTES as f64 / probe.as_secs_f64().max(0.001);
    let mib = ((rate * job_seconds(plan.cores)) / (1 << 20) as f64)
        .round()
        .max(16.0) as u64;
    let bytes = mib << 20;
    plan.check()?;
    let first = time_job(bytes)?;
    plan.check()?;
    let one = first.min(time_job(bytes)?);
    println!(
        "one job hashes {mib} MiB of zeros: {:.2} s on one core (the faster of two runs here, without herd)",
        one.as_secs_f64()
    );

    // The batch.
    plan.check()?;
    let slots = match rt.block_on(herd_agent::local::call(&ws_dir, &LocalRequest::Slots)) {
        Ok(LocalResponse::Slots(n)) => n.to_string(),
        _ => "?".into(),
    };
    let joblog = root.join("joblog.tsv");
    let template = format!("{} # job {{}}", job_line(bytes));
    println!(
        "running {} jobs across the cluster's {slots} slots (`herd slots`):",
        plan.jobs
    );
    println!(
        "  herd map '{template}' ::: {}",
        if plan.jobs <= 3 {
            (1..=plan.jobs)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            format!("1 2 ... {}", plan.jobs)
        }
    );
    let _ = std::io::stdout().flush();
    let mut cmd = Command::new(&plan.exe);
    cmd.arg("map")
        .arg("--state")
        .arg(ws_dir.root())
        .arg("--joblog")
        .arg(&joblog)
        .arg(&template)
        .arg(":::")
        .args((1..=plan.jobs).map(|i| i.to_string()))
        .current_dir("/")
        .stdin(Stdio::null());
    sys::die_with_parent(&mut cmd);
    let t0 = Instant::now();
    cluster.batch = Some(cmd.spawn().context("cannot start herd map")?);
    let status = loop {
        let batch = cluster.batch.as_mut().expect("the batch runs");
        if let Some(st) = batch.try_wait().context("waiting for herd map")? {
            break st;
        }
        if plan.stop.load(Ordering::SeqCst) {
            // Ctrl-C on a terminal reached herd map as well: let it cancel its jobs.
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if batch.try_wait().ok().flatten().is_some() {
                    break;
                }
                sleep(Duration::from_millis(50));
            }
            return Err(Interrupted.into());
        }
        sleep(Duration::from_millis(50));
    };
    let wall = t0.elapsed();
    cluster.batch = None;
    plan.check()?;
    if std::io::stderr().is_terminal() {
        // herd map leaves its finished bar without a line end.
        eprintln!();
    }

    // The spread.
    let text = std::fs::read_to_string(&joblog)
        .with_context(|| format!("cannot read the job log {}", joblog.display()))?;
    let entries: Vec<herd_map::JobLogEntry> = text
        .lines()
        .skip(1)
        .filter_map(|l| herd_map::JobLogEntry::parse(l).ok())
        .collect();
    let mut spread: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for name in std::iter::once(WORKSTATION).chain(HELPERS) {
        spread.insert(name.to_string(), (0, 0.0));
    }
    for e in &entries {
        let host = if e.host.is_empty() || e.host == ":" {
            "(no node)".to_string()
        } else {
            e.host.clone()
        };
        let s = spread.entry(host).or_default();
        s.0 += 1;
        s.1 += e.runtime.as_secs_f64();
    }
    println!("how the jobs spread (from the job log):");
    let order = std::iter::once(WORKSTATION.to_string())
        .chain(HELPERS.iter().map(|h| h.to_string()))
        .chain(
            spread
                .keys()
                .filter(|k| *k != WORKSTATION && !HELPERS.contains(&k.as_str()))
                .cloned()
                .collect::<Vec<_>>(),
        );
    let widest = spread.values().map(|s| s.0).max().unwrap_or(0).max(1);
    for name in order {
        let (n, secs) = spread[&name];
        let bar = "#".repeat((n * 30).div_ceil(widest));
        let each = if n > 0 {
            format!(", {:.2} s each", secs / n as f64)
        } else {
            String::new()
        };
        println!(
            "  {name:<12} {n:>4} job{} {bar:<30} {secs:>6.1} s of job time{each}",
            if n == 1 { " " } else { "s" }
        );
    }
    let failed = entries
        .iter()
        .filter(|e| e.exit != 0 || e.signal != 0)
        .count();
    let done = entries.len() - failed;
    let one_core = one.as_secs_f64() * done as f64;
    println!(
        "{done} jobs in {:.1} s; one core would take {one_core:.1} s ({done} x {:.2} s)",
        wall.as_secs_f64(),
        one.as_secs_f64()
    );
    println!(
        "speedup vs one core: {:.1}x ({} {core_word} on this machine)",
        one_core / wall.as_secs_f64().max(0.001),
        plan.cores
    );
    println!(
        "  The four nodes share these {} {core_word}, so here the speedup cannot exceed {}: a helper's job",
        plan.cores, plan.cores
    );
    println!(
        "  runs within its {} cores at idle priority, after fetching sh, head and sha256sum on first use.",
        plan.share
    );
    println!("  Helpers on other machines bring their own cores.");
    println!(
        "  For a real cluster: `herd init` here, `herd agent --join TOKEN` on each helper (README)."
    );
    if failed > 0 || !status.success() || entries.len() < plan.jobs {
        eprintln!(
            "herd demo: the batch did not complete: {failed} of {} jobs failed, {} ran (herd map: {status})",
            plan.jobs,
            entries.len()
        );
        for name in std::iter::once(WORKSTATION).chain(HELPERS) {
            for line in log_problems(&cluster.log(name)) {
                eprintln!("  {name}: {line}");
            }
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one job here, without herd, and times it.
fn time_job(bytes: u64) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(job_line(bytes))
        .stdin(Stdio::null())
        .output()
        .context("cannot run /bin/sh")?;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!(
            "the demo's job (`{}`) failed here ({}): {}; it needs sh, head and sha256sum",
            job_line(bytes),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// `herd nodes` from the workstation's agent, or `None` while it does not answer.
fn nodes(rt: &tokio::runtime::Runtime, dir: &StateDir) -> Option<Vec<NodeInfo>> {
    match rt.block_on(herd_agent::local::call(dir, &LocalRequest::Nodes)) {
        Ok(LocalResponse::Nodes(n)) => Some(n),
        _ => None,
    }
}

/// Polls `ready` every 200 ms until it holds; fails on Ctrl-C, when an agent exits,
/// or after [`READY_WITHIN`], showing the agents' logs.
fn wait_until(
    plan: &Plan,
    cluster: &mut Cluster,
    what: &str,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        plan.check()?;
        if ready()? {
            return Ok(());
        }
        if let Some((name, status)) = cluster.exited() {
            println!();
            bail!(
                "the agent of {name} exited ({status}) while waiting for {what}:\n{}",
                tail(&cluster.log(&name), 12)
            );
        }
        if start.elapsed() > READY_WITHIN {
            println!();
            let mut logs = String::new();
            for a in &cluster.agents {
                logs.push_str(&format!("--- {}:\n{}\n", a.name, tail(&a.log, 6)));
            }
            bail!(
                "timed out after {} s waiting for {what}; the agents' logs end with:\n{logs}",
                READY_WITHIN.as_secs()
            );
        }
        sleep(Duration::from_millis(200));
    }
}

/// The reason the agent that wrote `log` gave for not running tasks, if it did.
fn cannot_run_reason(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| {
        let l = strip_ansi(l);
        l.find(CANNOT_RUN)
            .map(|i| l[i + CANNOT_RUN.len()..].trim().to_string())
    })
}

/// Tells a user whose helpers cannot run tasks why, and what to do.
fn explain_cannot_run(node: &str, why: &str) {
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    let who = if uid == 0 {
        "as root".to_string()
    } else {
        format!("as uid {uid}")
    };
    eprintln!("herd: demo: the helpers cannot run tasks here ({who}): {node} says: {why}");
    eprintln!(
        "A helper runs each task in a sandbox: user and mount namespaces, and this machine's files"
    );
    eprintln!("through a FUSE mount. What to do, one of:");
    if uid != 0 {
        eprintln!("  * run the demo as root (e.g. `sudo herd demo`)");
    }
    let fuse = why.contains("FUSE") || why.contains("fuse");
    let userns = why.contains("namespace");
    if fuse || !userns {
        match std::fs::metadata("/dev/fuse") {
            Ok(m) => eprintln!(
                "  * let yourself use FUSE: /dev/fuse is mode {:04o}, owner uid {}; most distributions ship it \
                 as 0666 (`sudo chmod 0666 /dev/fuse`)",
                m.permissions().mode() & 0o7777,
                m.uid()
            ),
            Err(_) => eprintln!("  * load FUSE: /dev/fuse does not exist (`sudo modprobe fuse`)"),
        }
    }
    if userns || !fuse {
        eprintln!(
            "  * allow unprivileged user namespaces: sysctl user.max_user_namespaces > 0 and \
             kernel.unprivileged_userns_clone = 1 (Debian), kernel.apparmor_restrict_unprivileged_userns = 0 (Ubuntu)"
        );
    }
    if uid == 0 {
        eprintln!(
            "  * see the helper's reason above: as root this usually means FUSE or overlayfs is missing"
        );
    }
}

/// The last WARN and ERROR lines of an agent's log.
fn log_problems(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    let keep = lines.len().saturating_sub(5);
    lines.drain(..keep);
    lines
}

/// The last `n` lines of a log, indented.
fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(strip_ansi).collect();
    let from = lines.len().saturating_sub(n);
    if lines.is_empty() {
        return format!("  ({} is empty)", log.display());
    }
    lines[from..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `s` without terminal colour sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Where the agent `name` logs.
fn log_path(root: &Path, name: &str) -> PathBuf {
    root.join("logs").join(format!("{name}.log"))
}

fn path_arg(dir: &StateDir) -> String {
    dir.root().display().to_string()
}

/// `n` distinct UDP ports on 127.0.0.1 that were free a moment ago.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free UDP ports on 127.0.0.1")?;
    sockets
        .iter()
        .map(|s| Ok(s.local_addr()?.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot find free UDP ports on 127.0.0.1")
}

/// Makes an empty cgroup named `name` for the agents to measure their owner in (see
/// the module docs): in the cpuacct hierarchy of cgroup v1, else the unified one; beside
/// this process's own group, else at the hierarchy's root. `None` if none can be made.
fn empty_cgroup(name: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    // (is v2, mount root, mount point, super options)
    let mounts: Vec<(bool, String, PathBuf, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (root, point, fstype, opts) = (f.get(3)?, f.get(4)?, r.first()?, r.get(2)?);
            match *fstype {
                "cgroup" | "cgroup2" => Some((
                    *fstype == "cgroup2",
                    root.to_string(),
                    PathBuf::from(point),
                    opts.to_string(),
                )),
                _ => None,
            }
        })
        .collect();
    let own_path = |v2: bool| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if v2 {
                ctrl.is_empty()
            } else {
                ctrl.split(',').any(|c| c == "cpuacct")
            };
            hit.then(|| path.to_string())
        })
    };
    let mut candidates = Vec::new();
    for want_v2 in [false, true] {
        for (v2, root, point, opts) in &mounts {
            let fits = if want_v2 {
                *v2
            } else {
                !v2 && opts.split(',').any(|o| o == "cpuacct")
            };
            if !fits {
                continue;
            }
            if let Some(path) = own_path(want_v2)
                && let Ok(rel) = Path::new(&path).strip_prefix(root)
            {
                candidates.push((want_v2, point.join(rel).join(name)));
            }
            candidates.push((want_v2, point.join(name)));
        }
    }
    for (_, dir) in &candidates {
        if let Some(parent) = dir.parent() {
            remove_stale_cgroups(parent);
        }
    }
    for (v2, dir) in candidates {
        if std::fs::create_dir(&dir).is_err() {
            continue;
        }
        let usage = if v2 { "cpu.stat" } else { "cpuacct.usage" };
        if dir.join(usage).is_file() {
            return Some(dir);
        }
        let _ = std::fs::remove_dir(&dir);
    }
    None
}

/// Removes the empty cgroups `herd-demo-PID` in `parent` whose demo is gone (killed
/// before it could clean up).
fn remove_stale_cgroups(parent: &Path) {
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("herd-demo-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// One agent the demo started.
struct Agent {
    name: String,
    child: Child,
    log: PathBuf,
}

/// What the demo made and must undo.
struct Cluster {
    root: PathBuf,
    keep: bool,
    cgroup: Option<PathBuf>,
    agents: Vec<Agent>,
    batch: Option<Child>,
    cleaned: bool,
}

impl Cluster {
    fn log(&self, name: &str) -> PathBuf {
        log_path(&self.root, name)
    }

    /// Starts `herd ARGS` as the agent `name`, logging to `logs/NAME.log`.
    fn start_agent(&mut self, plan: &Plan, name: &str, args: &[String]) -> anyhow::Result<()> {
        let log = self.log(name);
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&plan.exe);
        cmd.args(args)
            .env("HERD_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("HERD_STATE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Ctrl-C goes to the demo, which stops the agents after the batch.
            .process_group(0);
        sys::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the agent of {name}"))?;
        self.agents.push(Agent {
            name: name.to_string(),
            child,
            log,
        });
        Ok(())
    }

    /// An agent that has exited, with its status.
    fn exited(&mut self) -> Option<(String, String)> {
        self.agents
            .iter_mut()
            .find_map(|a| match a.child.try_wait() {
                Ok(Some(st)) => Some((a.name.clone(), st.to_string())),
                _ => None,
            })
    }

    /// Stops everything and removes what the demo made; returns what went wrong.
    fn cleanup(&mut self) -> Vec<String> {
        if self.cleaned {
            return Vec::new();
        }
        self.cleaned = true;
        let mut problems = Vec::new();
        if let Some(mut b) = self.batch.take() {
            if b.try_wait().ok().flatten().is_none() {
                let _ = b.kill();
            }
            let _ = b.wait();
        }
        for a in &mut self.agents {
            if a.child.try_wait().ok().flatten().is_none() {
                sys::terminate(a.child.id());
            }
        }
        let deadline = Instant::now() + STOP_WITHIN;
        for a in &mut self.agents {
            loop {
                match a.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(50)),
                    Ok(None) => {
                        problems.push(format!(
                            "the agent of {} did not stop within {} s: killed it",
                            a.name,
                            STOP_WITHIN.as_secs()
                        ));
                        let _ = a.child.kill();
                        let _ = a.child.wait();
                        break;
                    }
                }
            }
        }
        if let Some(cg) = self.cgroup.take() {
            // Empty all along; the kernel may take a moment after the agents exit.
            let mut removed = false;
            for _ in 0..40 {
                if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
                    removed = true;
                    break;
                }
                sleep(Duration::from_millis(50));
            }
            if !removed {
                problems.push(format!("could not remove the cgroup {}", cg.display()));
            }
        }
        if !self.keep
            && let Err(e) = std::fs::remove_dir_all(&self.root)
            && self.root.exists()
        {
            problems.push(format!("could not remove {}: {e}", self.root.display()));
        }
        problems
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.cleanup() {
            eprintln!("herd demo: {p}");
        }
    }
}

/// The demo was interrupted (Ctrl-C, SIGTERM, SIGHUP).
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Sets the returned flag on SIGINT, SIGTERM and SIGHUP (which then no longer end the
/// process: the demo cleans up first).
fn watch_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("herd-demo-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let kinds = [
                    SignalKind::interrupt(),
                    SignalKind::terminate(),
                    SignalKind::hangup(),
                ];
                let mut streams = Vec::new();
                for k in kinds {
                    match signal(k) {
                        Ok(s) => streams.push(s),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok(()));
                let [mut int, mut term, mut hup]: [_; 3] =
                    streams.try_into().expect("three signal streams");
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                    set.store(true, Ordering::SeqCst);
                }
            });
        })
        .context("cannot start the signal watcher")?;
    rx.recv()
        .context("the signal watcher stopped")?
        .context("cannot watch for Ctrl-C")?;
    Ok(flag)
}

/// The two system calls std does not offer: kill(2) with SIGTERM, and
/// prctl(PR_SET_PDEATHSIG).
mod sys {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// Sends SIGTERM to `pid` (a child not reaped yet, so the pid is still ours).
    pub fn terminate(pid: u32) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }

    /// The child gets SIGTERM when the thread that started it (the demo's main thread)
    /// ends, so a killed demo leaves no agent behind.
    pub fn die_with_parent(cmd: &mut Command) {
        // SAFETY: the closure runs between fork and exec and only makes one system
        // call, which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_sizes_keep_the_default_batch_near_its_target() {
        assert_eq!(default_jobs(2), 24);
        assert_eq!(default_jobs(16), 64);
        assert!((job_seconds(2) - 1.25).abs() < 1e-9);
        assert!((job_seconds(1) - 0.625).abs() < 1e-9);
        assert!((job_seconds(64) - 3.75).abs() < 1e-9);
    }

    #[test]
    fn colours_are_stripped_and_reasons_found() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m herd_agent::agent: this node cannot run tasks: cannot mount FUSE (Permission denied (os error 13)); a helper needs root or access to /dev/fuse";
        assert!(strip_ansi(line).starts_with("2026  WARN herd_agent"));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("h.log");
        std::fs::write(&log, format!("started\n{line}\n")).unwrap();
        assert_eq!(
            cannot_run_reason(&log).as_deref(),
            Some(
                "cannot mount FUSE (Permission denied (os error 13)); a helper needs root or access to /dev/fuse"
            )
        );
        assert_eq!(log_problems(&log).len(), 1);
        std::fs::write(&log, "started\n").unwrap();
        assert_eq!(cannot_run_reason(&log), None);
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports(4).unwrap();
        let set: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(set.len(), 4);
    }
}
