//! Membership on the testbed: how long until every node agrees that a host was
//! killed, restarted, cut off or healed. A workstation and three helpers (minimal
//! roots, 0.5 CPU each), default agent settings, `--trials N` rounds (default 5).
//!
//! ```sh
//! cargo build --release -p herd -p herd-bench
//! sudo target/release/membership-bench [--trials 5] [--json PATH]
//! ```

use std::path::Path;
use std::time::Duration;

use herd_bench::{Summary, arg, herd_binary, write_json};
use herd_testbed::cluster::{Node, all_see, time_until, wait_for};
use herd_testbed::{HostSpec, Testbed};
use serde::Serialize;

const LIMIT: Duration = Duration::from_secs(60);
const TARGET_SECS: f64 = 10.0;

#[derive(Serialize)]
struct Row {
    event: &'static str,
    target_s: f64,
    #[serde(flatten)]
    summary: Option<Summary>,
    timeouts: usize,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let herd = herd_binary(&args)?;
    let trials: usize = arg(&args, "--trials", 5);
    let mut bed = Testbed::new()?;
    bed.add_host(HostSpec::real_fs("ws"))?;
    for h in ["h1", "h2", "h3"] {
        bed.add_host(HostSpec::minimal(h, &herd).cpu_quota(0.5))?;
    }
    let n = |name: &str| Node::new(bed.host(name), Path::new(&herd));
    let (ws, h1, h2, h3) = (n("ws"), n("h1"), n("h2"), n("h3"));
    let all = [ws, h1, h2, h3];
    let token = ws.init();
    let mut agents = vec![ws.agent(&[])];
    let start = std::time::Instant::now();
    for h in [h1, h2, h3] {
        agents.push(h.join(&token));
    }
    let formed = time_until(LIMIT, || {
        all.iter().all(|o| {
            o.nodes()
                .is_some_and(|ns| ns.len() == 4 && ns.iter().all(|x| x["state"] == "alive"))
        })
    })
    .map(|_| start.elapsed());

    let (mut kill, mut restart, mut cut, mut heal) = (vec![], vec![], vec![], vec![]);
    let mut timeouts = [0usize; 4];
    let mut record = |v: &mut Vec<Duration>, slot: usize, t: Option<Duration>| match t {
        Some(t) => v.push(t),
        None => timeouts[slot] += 1,
    };
    for round in 0..trials {
        // Alternate victims so every helper is killed and cut off.
        let victim = [h1, h2, h3][round % 3];
        let others: Vec<Node> = all
            .iter()
            .copied()
            .filter(|x| x.name() != victim.name())
            .collect();
        let idx = 1 + round % 3;
        victim.host.kill_all()?;
        let _ = agents[idx].wait();
        record(
            &mut kill,
            0,
            time_until(LIMIT, || all_see(&others, victim.name(), "dead")),
        );
        agents[idx] = victim.agent(&[]);
        record(
            &mut restart,
            1,
            time_until(LIMIT, || all_see(&others, victim.name(), "alive")),
        );
        wait_for("victim sees everybody", LIMIT, || {
            victim
                .nodes()
                .is_some_and(|ns| ns.iter().filter(|x| x["state"] == "alive").count() == 4)
        });

        victim.host.partition()?;
        record(
            &mut cut,
            2,
            time_until(LIMIT, || all_see(&others, victim.name(), "dead")),
        );
        victim.host.heal()?;
        record(
            &mut heal,
            3,
            time_until(LIMIT, || {
                all_see(&others, victim.name(), "alive")
                    && others
                        .iter()
                        .all(|o| victim.state_of(o.name()).as_deref() == Some("alive"))
            }),
        );
        eprintln!("round {}/{trials} done", round + 1);
    }
    for a in &agents {
        herd_testbed::cluster::sigterm(a);
    }
    for a in &mut agents {
        let _ = a.wait();
    }

    let rows = vec![
        Row {
            event: "cluster of 4 formed (from start)",
            target_s: TARGET_SECS,
            summary: formed.and_then(|f| Summary::of(&[f])),
            timeouts: usize::from(formed.is_none()),
        },
        Row {
            event: "SIGKILL -> dead at all others",
            target_s: TARGET_SECS,
            summary: Summary::of(&kill),
            timeouts: timeouts[0],
        },
        Row {
            event: "restart -> alive at all others",
            target_s: TARGET_SECS,
            summary: Summary::of(&restart),
            timeouts: timeouts[1],
        },
        Row {
            event: "partition -> dead at all others",
            target_s: TARGET_SECS,
            summary: Summary::of(&cut),
            timeouts: timeouts[2],
        },
        Row {
            event: "heal -> alive on both sides",
            target_s: TARGET_SECS,
            summary: Summary::of(&heal),
            timeouts: timeouts[3],
        },
    ];
    println!("membership on the testbed: 4 hosts, {trials} rounds, default settings");
    println!(
        "{:<36} {:>4} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "event", "n", "median", "min", "max", "target", "timeouts"
    );
    for r in &rows {
        match &r.summary {
            Some(s) => println!(
                "{:<36} {:>4} {:>7.2}s {:>7.2}s {:>7.2}s {:>7.0}s {:>9}",
                r.event, s.n, s.median, s.min, s.max, r.target_s, r.timeouts
            ),
            None => println!(
                "{:<36} {:>4} {:>8} {:>8} {:>8} {:>7.0}s {:>9}",
                r.event, 0, "-", "-", "-", r.target_s, r.timeouts
            ),
        }
    }
    println!("(times include up to 0.1 s of polling and one `herd nodes` call per observer)");
    let path = write_json(&args, "membership", &rows)?;
    println!("wrote {}", path.display());
    Ok(())
}
