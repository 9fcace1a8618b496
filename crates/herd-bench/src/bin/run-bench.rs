//! `herd run` against running locally and against ssh, on the testbed.
//!
//! Hosts: `ws` (the machine's filesystem, the workstation), `h1` (a root holding only
//! herd, the zero-install helper), `h2` (like h1, behind a `--link-mbit` link, default
//! 200 Mbit/s, for the bulk-read test) and, when `/usr/sbin/sshd` exists (Debian's
//! openssh-server), `sshd` (the machine's filesystem, running sshd with key auth).
//!
//! With `--outrun PATH`, outrun (PyPI: `python3 -m venv /opt/outrun && /opt/outrun/bin/pip
//! install outrun`, and Debian's `fuse3` for `fusermount3`) runs against the same
//! `sshd` host. outrun checks for the FUSE module with `lsmod` and fails where FUSE
//! is built into the kernel and `/proc/modules` is absent (as here), so the remote side
//! gets an `lsmod` shim that reports it; nothing else of outrun is changed.
//!
//! Reported, each as the median of `--runs` (default 15) runs with min and max:
//! * `true` and `python3 -c pass`: locally, through `herd run` (first run = cold, the
//!   rest warm), and `ssh host CMD`; the overhead over local; the network round trips
//!   on the critical path (the run request plus one per file question the workstation
//!   answered, from `herd status --json`); `outrun host CMD` where it runs (first run =
//!   cold cache on the helper, the rest warm);
//! * `sha256sum` of a 256 MB workstation file read on h2, against the link rate.
//!
//! ```sh
//! cargo build --release -p herd -p herd-bench
//! target/release/run-bench [--runs 15] [--link-mbit 200] [--herd PATH] [--outrun PATH] [--json PATH] [--real-fs-helper] [--pause-ms 0]
//! ```
//!
//! `--pause-ms N` waits N ms before each `herd run` of `true` and `python3 -c pass`
//! (a helper then has time to prepare the next sandboxes, as between interactive
//! runs; idle CPUs wake more slowly, which makes every run a little slower).
//!
//! `--real-fs-helper` gives `h1` the machine's files instead of a minimal root: its
//! agent then finds the machine's pasta, and its tasks reach outward through it (a
//! minimal helper has no network stack, so its tasks get loopback only).
//!
//! `--herd` defaults to the `herd` beside this program (the dynamic development
//! build). The README's figures are of the static binary that is shipped:
//! `packaging/build-static.sh`, then `--herd packaging/out/herd`.
//!
//! Latency is not emulated on the testbed (no netem): round trips are counted so that
//! a reader can add their own network's RTT.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use herd_bench::{Summary, arg, herd_binary, write_json};
use herd_testbed::cluster::{Node, all_see, sigterm, wait_for};
use herd_testbed::{HostSpec, Testbed};
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    what: String,
    how: String,
    time: Option<Summary>,
    overhead_ms: Option<f64>,
    round_trips: Option<f64>,
    note: String,
}

/// The `PATH` every measured command gets, locally and through herd, ssh and outrun:
/// Debian's own, so that a shell profile's shims (pyenv's `python3` is a bash script
/// that runs more scripts) do not stand in for the command measured.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn timed(mut cmd: herd_testbed::HostCommand) -> (Duration, Output) {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    (t.elapsed(), out)
}

fn status_fs(ws: &Node) -> u64 {
    let out = ws.herd(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["fs_requests"].as_u64().unwrap_or(0)
}

/// The outrun to compare with (`--outrun PATH`), which must exist.
fn outrun_binary(args: &[String]) -> anyhow::Result<Option<PathBuf>> {
    let Some(i) = args.iter().position(|a| a == "--outrun") else {
        return Ok(None);
    };
    let p = PathBuf::from(
        args.get(i + 1)
            .ok_or_else(|| anyhow::anyhow!("--outrun needs a path"))?,
    );
    anyhow::ensure!(p.is_file(), "--outrun {}: no such file", p.display());
    Ok(Some(p))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let herd = herd_binary(&args)?;
    let runs: usize = arg(&args, "--runs", 15);
    let mbit: u32 = arg(&args, "--link-mbit", 200);
    let pause = Duration::from_millis(arg(&args, "--pause-ms", 0));
    let with_ssh = Path::new("/usr/sbin/sshd").exists();
    let outrun = outrun_binary(&args)?;
    anyhow::ensure!(
        outrun.is_none() || with_ssh,
        "--outrun needs openssh-server (outrun runs over ssh)"
    );

    let mut bed = Testbed::new()?;
    bed.add_host(HostSpec::real_fs("ws"))?;
    // `--real-fs-helper`: h1 has the machine's files, so its tasks reach outward
    // through the machine's pasta; a minimal h1 has no network stack (loopback only).
    if args.iter().any(|a| a == "--real-fs-helper") {
        bed.add_host(HostSpec::real_fs("h1"))?;
    } else {
        bed.add_host(HostSpec::minimal("h1", &herd))?;
    }
    bed.add_host(HostSpec::minimal("h2", &herd).bandwidth_mbit(mbit))?;
    if with_ssh {
        bed.add_host(HostSpec::real_fs("sshd"))?;
    }
    let n = |name: &str| Node::new(bed.host(name), &herd);
    let (ws, h1, h2) = (n("ws"), n("h1"), n("h2"));
    let token = ws.init();
    let mut agents = vec![
        ws.agent(&["--no-mdns", "--cpus", "0"]),
        h1.join(&token),
        h2.join(&token),
    ];
    wait_for("helpers alive", Duration::from_secs(60), || {
        all_see(&[ws], "h1", "alive") && all_see(&[ws], "h2", "alive")
    });
    let project = tempfile::Builder::new()
        .prefix("herd-bench")
        .tempdir_in("/var/tmp")?;
    let state = ws.state();
    let herd_s = herd.to_str().unwrap_or("herd").to_string();
    let run_cmd = |on: &str, cmd: &[&str]| {
        let mut argv = vec!["run", "--state", state.as_str(), "--on", on, "-T", "--"];
        argv.extend_from_slice(cmd);
        let mut c = bed.host("ws").command(&herd_s, &argv);
        c.current_dir(project.path()).env("PATH", SYSTEM_PATH);
        c
    };
    let local_cmd = |cmd: &[&str]| {
        let mut c = bed.host("ws").command(cmd[0], &cmd[1..]);
        c.current_dir(project.path()).env("PATH", SYSTEM_PATH);
        c
    };

    // ssh baseline: sshd on its own host with a throwaway key.
    let ssh_dir = tempfile::tempdir()?;
    let mut sshd = None;
    // The remote side's PATH: a directory with outrun and an `lsmod` that reports the
    // FUSE module (built into this kernel, so absent from `lsmod`), then the system's.
    let shim = ssh_dir.path().join("bin");
    std::fs::create_dir_all(&shim)?;
    if let Some(o) = &outrun {
        use std::os::unix::fs::PermissionsExt;
        let lsmod = shim.join("lsmod");
        std::fs::write(
            &lsmod,
            "#!/bin/sh\necho 'Module Size Used by'\necho 'fuse 0 0'\n",
        )?;
        std::fs::set_permissions(&lsmod, std::fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::symlink(std::fs::canonicalize(o)?, shim.join("outrun"))?;
    }
    if with_ssh {
        let key = ssh_dir.path().join("id");
        let hostkey = ssh_dir.path().join("hostkey");
        for k in [&key, &hostkey] {
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(k)
                .status()?;
        }
        let auth = ssh_dir.path().join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &auth)?;
        let host = bed.host("sshd");
        let cfg = format!(
            "-oHostKey={} -oAuthorizedKeysFile={} -oPasswordAuthentication=no -oStrictModes=no -oUsePAM=no -oPermitRootLogin=yes -oListenAddress={}:22 -oPidFile=none",
            hostkey.display(),
            auth.display(),
            host.addr(),
        );
        // A home of its own: outrun keeps its cache there (so the first run is cold),
        // and no shell profile of this machine's root changes the PATH.
        let home = ssh_dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        let env = format!(
            "-oSetEnv=HOME={} PATH={}:{SYSTEM_PATH}",
            home.display(),
            shim.display()
        );
        let mut argv: Vec<&str> = std::iter::once("-D").chain(cfg.split(' ')).collect();
        argv.push(&env);
        std::fs::create_dir_all("/run/sshd")?;
        sshd = Some(host.command("/usr/sbin/sshd", &argv).spawn()?);
        std::thread::sleep(Duration::from_millis(500));
    }
    // (No `sshd` host without openssh-server: then nothing uses the target.)
    let ssh_target = bed
        .try_host("sshd")
        .map(|h| format!("root@{}", h.addr()))
        .unwrap_or_default();
    let ssh_opts = format!(
        "-q -i {} -oStrictHostKeyChecking=no -oUserKnownHostsFile=/dev/null -oBatchMode=yes",
        ssh_dir.path().join("id").display()
    );
    let ssh_cmd = |cmd: &[&str]| {
        let mut argv: Vec<&str> = ssh_opts.split(' ').collect();
        argv.push(&ssh_target);
        argv.extend_from_slice(cmd);
        let mut c = bed.host("ws").command("/usr/bin/ssh", &argv);
        c.env("PATH", SYSTEM_PATH);
        c
    };
    let outrun_cmd = |outrun: &Path, cmd: &[&str]| {
        let mut argv = vec!["--ssh", ssh_opts.as_str(), ssh_target.as_str()];
        argv.extend_from_slice(cmd);
        let mut c = bed
            .host("ws")
            .command(outrun.to_str().unwrap_or("outrun"), &argv);
        c.current_dir(project.path()).env("PATH", SYSTEM_PATH);
        c
    };

    let mut rows = Vec::new();
    for (label, cmd) in [
        ("true", vec!["true"]),
        ("python3 -c pass", vec!["python3", "-c", "pass"]),
    ] {
        // Local and herd runs alternate, so that a change in the machine's load during
        // the benchmark weighs on both alike.
        let mut local = Vec::new();
        let (mut cold, mut warm, mut rtts) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let (t, o) = timed(local_cmd(&cmd));
            anyhow::ensure!(o.status.success(), "local {label} failed");
            local.push(t);
            let before = status_fs(&ws);
            std::thread::sleep(pause);
            let (t, o) = timed(run_cmd("h1", &cmd));
            anyhow::ensure!(
                o.status.success(),
                "herd run {label} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let q = status_fs(&ws) - before;
            rtts.push(Duration::from_secs_f64(1.0 + q as f64));
            if i == 0 { cold.push(t) } else { warm.push(t) }
        }
        let local_s = Summary::of(&local);
        let med_local = local_s.as_ref().map(|s| s.median).unwrap_or(0.0);
        let over = |s: &Option<Summary>| s.as_ref().map(|s| (s.median - med_local) * 1000.0);
        let rtt = Summary::of(&rtts).map(|s| s.median);
        rows.push(Row {
            what: label.into(),
            how: "local".into(),
            time: local_s.clone(),
            overhead_ms: None,
            round_trips: None,
            note: String::new(),
        });
        let c = Summary::of(&cold);
        rows.push(Row {
            what: label.into(),
            how: "herd run, cold (first)".into(),
            overhead_ms: over(&c),
            time: c,
            round_trips: rtts.first().map(|d| d.as_secs_f64()),
            note: String::new(),
        });
        let w = Summary::of(&warm);
        rows.push(Row {
            what: label.into(),
            how: "herd run, warm".into(),
            overhead_ms: over(&w),
            time: w,
            round_trips: rtt,
            note: "working set validated in one round trip".into(),
        });
        if with_ssh {
            let mut s = Vec::new();
            for _ in 0..runs {
                let (t, o) = timed(ssh_cmd(&cmd));
                anyhow::ensure!(
                    o.status.success(),
                    "ssh {label} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                s.push(t);
            }
            let s = Summary::of(&s);
            rows.push(Row {
                what: label.into(),
                how: "ssh host CMD (key auth)".into(),
                overhead_ms: over(&s),
                time: s,
                round_trips: None,
                note: "helper has the tools installed".into(),
            });
        }
        if let Some(o) = &outrun {
            let (mut cold, mut warm) = (Vec::new(), Vec::new());
            for i in 0..runs {
                let (t, out) = timed(outrun_cmd(o, &cmd));
                anyhow::ensure!(
                    out.status.success(),
                    "outrun {label} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                if i == 0 { cold.push(t) } else { warm.push(t) }
            }
            for (how, s) in [
                ("outrun host CMD, cold", cold),
                ("outrun host CMD, warm", warm),
            ] {
                let s = Summary::of(&s);
                rows.push(Row {
                    what: label.into(),
                    how: how.into(),
                    overhead_ms: over(&s),
                    time: s,
                    round_trips: None,
                    note: "root and outrun on the helper".into(),
                });
            }
        }
    }

    // Bulk read: sha256 of a 256 MB workstation file on h2 behind the limited link.
    let big = project.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&big)?;
        let chunk: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        for _ in 0..256 {
            f.write_all(&chunk)?;
        }
    }
    let (t_local, _) = timed(local_cmd(&["sha256sum", "big.bin"]));
    let (t, o) = timed(run_cmd("h2", &["sha256sum", "big.bin"]));
    anyhow::ensure!(
        o.status.success(),
        "herd run sha256sum failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let link = f64::from(mbit) * 1e6 / 8.0;
    let rate = 256.0 * 1048576.0 / t.as_secs_f64();
    rows.push(Row {
        what: "sha256sum 256 MB file".into(),
        how: "local".into(),
        time: Summary::of(&[t_local]),
        overhead_ms: None,
        round_trips: None,
        note: String::new(),
    });
    rows.push(Row {
        what: "sha256sum 256 MB file".into(),
        how: format!("herd run on h2 ({mbit} Mbit/s link)"),
        time: Summary::of(&[t]),
        overhead_ms: None,
        round_trips: None,
        note: format!(
            "{:.1} MB/s = {:.0}% of the link rate",
            rate / 1e6,
            100.0 * rate / link
        ),
    });

    for a in &agents {
        sigterm(a);
    }
    for a in &mut agents {
        let _ = a.wait();
    }
    if let Some(mut s) = sshd {
        let _ = s.kill();
        let _ = s.wait();
    }

    println!("herd run on the testbed: median of {runs} runs (min-max), overhead over local");
    println!(
        "{:<22} {:<34} {:>9} {:>19} {:>10} {:>6}  note",
        "command", "how", "median", "min-max", "overhead", "RTTs"
    );
    for r in &rows {
        let (med, range) = match &r.time {
            Some(s) => (
                format!("{:.1}ms", s.median * 1000.0),
                format!("{:.1}-{:.1}ms", s.min * 1000.0, s.max * 1000.0),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<22} {:<34} {:>9} {:>19} {:>10} {:>6}  {}",
            r.what,
            r.how,
            med,
            range,
            r.overhead_ms
                .map(|o| format!("{o:+.1}ms"))
                .unwrap_or_default(),
            r.round_trips.map(|x| format!("{x:.0}")).unwrap_or_default(),
            r.note
        );
    }
    if !with_ssh {
        println!("(ssh baseline skipped: install openssh-server to include it)");
    }
    if outrun.is_none() {
        println!("(outrun baseline skipped: pass --outrun PATH to include it)");
    }
    let path = write_json(&args, "run", &rows)?;
    println!("wrote {}", path.display());
    Ok(())
}
