//! Prints a table of measured membership protocol numbers (median over seeds) for
//! clusters of 10, 100 and 1,000 nodes, and writes the same as JSON.
//!
//! ```text
//! cargo run --release -p herd-sim --bin membership-report -- [--json PATH] [--seeds K] [--sizes 10,100,1000]
//! ```
//!
//! Default JSON path: `target/membership-report.json`. All times are virtual (simulated);
//! "periods" are protocol periods (`probe_period`, 700 ms with `Config::lan`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use herd_sim::scenarios;
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    nodes: usize,
    seeds: Vec<u64>,
    join_periods: f64,
    crashed: usize,
    crash_detect_periods: f64,
    crash_rejoin_periods: f64,
    partition_split_periods: f64,
    partition_heal_periods: f64,
    fp_window_s: f64,
    fp_pair_period_loss0: f64,
    fp_node_hour_loss0: f64,
    fp_pair_period_loss5: f64,
    fp_node_hour_loss5: f64,
    msgs_per_node_period: f64,
    msgs_per_node_period_loss5: f64,
    msgs_per_node_period_join: f64,
    leave_ms: f64,
    wall_s: f64,
}

#[derive(Serialize)]
struct Report {
    description: &'static str,
    rows: Vec<Row>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn usage() -> ! {
    eprintln!("usage: membership-report [--json PATH] [--seeds K] [--sizes 10,100,1000]");
    std::process::exit(2)
}

fn main() {
    let mut json = PathBuf::from("target/membership-report.json");
    let mut nseeds = 3u64;
    let mut sizes = vec![10usize, 100, 1000];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--seeds" => {
                nseeds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--sizes" => {
                sizes = args
                    .next()
                    .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let seeds: Vec<u64> = (1..=nseeds).collect();
    let mut rows = Vec::new();
    for &n in &sizes {
        let wall = Instant::now();
        let k = (n / 20).max(1);
        let fp_window = Duration::from_secs(match n {
            0..=20 => 3600,
            21..=200 => 600,
            _ => 60,
        });
        let (mut join, mut join_msgs, mut det, mut rej, mut split, mut heal) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut fp0, mut fph0, mut fp5, mut fph5, mut msgs, mut msgs5, mut leave) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for &seed in &seeds {
            let (_, j) = scenarios::join(n, seed);
            join.push(j.periods);
            join_msgs.push(j.msgs_per_node_period);
            let c = scenarios::crash(n, k, seed);
            det.push(c.detect_periods);
            rej.push(c.rejoin_periods);
            let p = scenarios::partition(n, seed);
            split.push(p.split_periods);
            heal.push(p.heal_periods);
            let f = scenarios::false_positives(n, 0.0, Duration::from_millis(5), fp_window, seed);
            fp0.push(f.fp_pair_period);
            fph0.push(f.fp_node_hour);
            msgs.push(f.msgs_per_node_period);
            let f = scenarios::false_positives(n, 0.05, Duration::from_millis(20), fp_window, seed);
            fp5.push(f.fp_pair_period);
            fph5.push(f.fp_node_hour);
            msgs5.push(f.msgs_per_node_period);
            let l = scenarios::leave(n, k, seed);
            leave.push(l.propagate.as_secs_f64() * 1000.0);
            eprintln!(
                "  n={n} seed={seed} done ({:.1}s so far)",
                wall.elapsed().as_secs_f64()
            );
        }
        rows.push(Row {
            nodes: n,
            seeds: seeds.clone(),
            join_periods: median(join),
            crashed: k,
            crash_detect_periods: median(det),
            crash_rejoin_periods: median(rej),
            partition_split_periods: median(split),
            partition_heal_periods: median(heal),
            fp_window_s: fp_window.as_secs_f64(),
            fp_pair_period_loss0: median(fp0),
            fp_node_hour_loss0: median(fph0),
            fp_pair_period_loss5: median(fp5),
            fp_node_hour_loss5: median(fph5),
            msgs_per_node_period: median(msgs),
            msgs_per_node_period_loss5: median(msgs5),
            msgs_per_node_period_join: median(join_msgs),
            leave_ms: median(leave),
            wall_s: wall.elapsed().as_secs_f64(),
        });
    }
    print_table(&rows);
    let report = Report {
        description: "herd membership simulation: medians over seeds; times in protocol periods (probe_period = 700 ms) of virtual time; \
                      fp_pair_period = false Dead events per (observer, live target) pair per period; \
                      fp_node_hour = live nodes declared dead (rejoins) per node-hour",
        rows,
    };
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match serde_json::to_string_pretty(&report) {
        Ok(s) => match std::fs::write(&json, s + "\n") {
            Ok(()) => println!("\nwrote {}", json.display()),
            Err(e) => {
                eprintln!("cannot write {}: {e}", json.display());
                std::process::exit(1)
            }
        },
        Err(e) => {
            eprintln!("cannot encode report: {e}");
            std::process::exit(1)
        }
    }
}

fn print_table(rows: &[Row]) {
    let cols: Vec<String> = rows.iter().map(|r| format!("{} nodes", r.nodes)).collect();
    print!("{:<44}", "metric (median over seeds)");
    for c in &cols {
        print!("{c:>14}");
    }
    println!();
    let line = |label: &str, f: &dyn Fn(&Row) -> String| {
        print!("{label:<44}");
        for r in rows {
            print!("{:>14}", f(r));
        }
        println!();
    };
    line("join: all see all Alive (periods)", &|r| {
        format!("{:.1}", r.join_periods)
    });
    line("crash: nodes crashed", &|r| format!("{}", r.crashed));
    line("crash: all see them Dead (periods)", &|r| {
        format!("{:.1}", r.crash_detect_periods)
    });
    line("crash: restarted, all Alive (periods)", &|r| {
        format!("{:.1}", r.crash_rejoin_periods)
    });
    line("partition: sides see each other Dead (per.)", &|r| {
        format!("{:.1}", r.partition_split_periods)
    });
    line("partition: healed, all Alive (periods)", &|r| {
        format!("{:.1}", r.partition_heal_periods)
    });
    line("leave: all see Left (ms)", &|r| {
        format!("{:.0}", r.leave_ms)
    });
    line("false-positive window (s)", &|r| {
        format!("{:.0}", r.fp_window_s)
    });
    line("FP per pair-period, 0% loss", &|r| {
        format!("{:.2e}", r.fp_pair_period_loss0)
    });
    line("FP per pair-period, 5% loss + jitter", &|r| {
        format!("{:.2e}", r.fp_pair_period_loss5)
    });
    line("FP per node-hour, 0% loss", &|r| {
        format!("{:.3}", r.fp_node_hour_loss0)
    });
    line("FP per node-hour, 5% loss + jitter", &|r| {
        format!("{:.3}", r.fp_node_hour_loss5)
    });
    line("msgs/node/period, steady, 0% loss", &|r| {
        format!("{:.2}", r.msgs_per_node_period)
    });
    line("msgs/node/period, steady, 5% loss", &|r| {
        format!("{:.2}", r.msgs_per_node_period_loss5)
    });
    line("msgs/node/period, during join", &|r| {
        format!("{:.2}", r.msgs_per_node_period_join)
    });
    line("wall time (s)", &|r| format!("{:.1}", r.wall_s));
}
