//! Runs the placement simulation over a matrix of scenarios (cluster size,
//! homogeneous or heterogeneous, one or four workstations, uniform or skewed jobs,
//! with or without faults) and a sweep of batch sizes, several seeds each; prints a
//! table and writes the same as JSON.
//!
//! Then the testbed batch of `batch-bench` (four hosts of 0.5, 0.25, 0.5 and 0.75 CPU,
//! one slot each; 16 or 48 jobs of 1.5 reference-core seconds with 10 % or 25 %
//! relative spread; a first run and a repeat run), over `--testbed-seeds` seeds
//! (default 200): the share of the ideal makespan reached (ideal / makespan, the
//! benchmark's figure), median and worst, and how many jobs each host ran.
//! `--testbed` prints only that section.
//!
//! ```text
//! cargo run --release -p herd-sim --bin placement-report -- [--json PATH] [--seeds K] [--sizes 2,10,100,1000]
//!     [--testbed] [--testbed-seeds N]
//! ```
//!
//! Default JSON path: `target/bench/placement.json`. Times are virtual (simulated)
//! seconds. Exits with status 1 if a checker failed.

use std::path::PathBuf;
use std::time::Instant;

use herd_sim::placement::{Mix, Outcome, Scenario, median, run};
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    nodes: usize,
    heterogeneous: bool,
    workstations: usize,
    mix: Mix,
    faults: bool,
    batch_factor: f64,
    /// Nodes also report their load whenever a task starts or ends.
    report_on_change: bool,
    seeds: Vec<u64>,
    slots: u32,
    jobs: usize,
    gap_median: f64,
    gap_worst: f64,
    /// Gap of the omniscient scheduler bound to queue order: what FIFO costs by itself.
    fifo_gap_median: f64,
    /// Gap of the same simulation with exact job sizes (clusters up to 100 nodes).
    clairvoyant_gap_median: Option<f64>,
    makespan_s_median: f64,
    omniscient_s_median: f64,
    lower_bound_s_median: f64,
    reruns_total: u64,
    rejections_median: f64,
    discarded_total: u64,
    place_calls_median: f64,
    violations: Vec<String>,
    wall_s: f64,
}

/// The testbed batch over many seeds.
#[derive(Serialize)]
struct TestbedRow {
    jobs: usize,
    /// Relative standard deviation of a job's work.
    noise: f64,
    /// Caches warm and the estimator trained on an earlier batch.
    repeat: bool,
    seeds: u64,
    /// ideal / makespan (ideal = total work / Σ slot rates).
    of_ideal_median: f64,
    of_ideal_worst: f64,
    /// Share of the seeds reaching 90 % of the ideal.
    at_least_90: f64,
    /// makespan / ideal.
    ratio_median: f64,
    ratio_worst: f64,
    /// makespan / omniscient − 1.
    gap_median: f64,
    gap_worst: f64,
    /// Jobs per host (ws, h1, h2, h3), averaged over seeds.
    per_node_mean: Vec<f64>,
    /// The most frequent split of the jobs over the hosts, and in how many seeds.
    per_node_mode: (Vec<u32>, u64),
    violations: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    description: &'static str,
    rows: Vec<Row>,
    testbed: Vec<TestbedRow>,
}

fn usage() -> ! {
    eprintln!(
        "usage: placement-report [--json PATH] [--seeds K] [--sizes 2,10,100,1000] [--testbed] [--testbed-seeds N]"
    );
    std::process::exit(2)
}

fn testbed_row(jobs: usize, noise: f64, repeat: bool, seeds: u64) -> TestbedRow {
    let outs: Vec<Outcome> = (1..=seeds)
        .map(|seed| run(&Scenario::testbed(jobs, noise, repeat, seed)))
        .collect();
    let of_ideal: Vec<f64> = outs.iter().map(|o| o.ideal_s / o.makespan_s).collect();
    let ratio: Vec<f64> = outs.iter().map(|o| o.makespan_s / o.ideal_s).collect();
    let gaps: Vec<f64> = outs.iter().map(|o| o.gap).collect();
    let hosts = outs.first().map_or(0, |o| o.per_node.len());
    let per_node_mean = (0..hosts)
        .map(|i| outs.iter().map(|o| f64::from(o.per_node[i])).sum::<f64>() / seeds as f64)
        .collect();
    let mut splits: std::collections::BTreeMap<Vec<u32>, u64> = Default::default();
    for o in &outs {
        *splits.entry(o.per_node.clone()).or_default() += 1;
    }
    let per_node_mode = splits
        .into_iter()
        .max_by_key(|(split, n)| (*n, std::cmp::Reverse(split.clone())))
        .unwrap_or_default();
    TestbedRow {
        jobs,
        noise,
        repeat,
        seeds,
        of_ideal_median: median(of_ideal.clone()),
        of_ideal_worst: of_ideal.iter().copied().fold(f64::INFINITY, f64::min),
        at_least_90: of_ideal.iter().filter(|&&x| x >= 0.9).count() as f64 / seeds as f64,
        ratio_median: median(ratio.clone()),
        ratio_worst: ratio.iter().copied().fold(0.0, f64::max),
        gap_median: median(gaps.clone()),
        gap_worst: gaps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        per_node_mean,
        per_node_mode,
        violations: outs.iter().flat_map(|o| o.violations.clone()).collect(),
    }
}

fn testbed_section(seeds: u64) -> Vec<TestbedRow> {
    println!(
        "\ntestbed batch: hosts ws 0.5, h1 0.25, h2 0.5, h3 0.75 CPU (one slot each), jobs of 1.5 s ± noise (log-normal), {seeds} seeds"
    );
    println!(
        "of ideal = ideal / makespan (ideal = total work / 2.0 cores), median and worst; ≥90%: share of seeds; ratio = makespan / ideal; gap to omniscient"
    );
    println!(
        "first: cold caches, empty estimator; repeat: warm caches, estimator trained on an earlier batch\n"
    );
    println!(
        "{:>4} {:>5} {:>6} | {:>8} {:>6} {:>5} | {:>6} {:>6} | {:>6} {:>6} | {:>23} | {:>13}",
        "jobs",
        "noise",
        "run",
        "of ideal",
        "worst",
        "≥90%",
        "ratio",
        "worst",
        "gap",
        "worst",
        "jobs/host mean",
        "usual split"
    );
    let mut rows = Vec::new();
    for jobs in [16, 48] {
        for noise in [0.1, 0.25] {
            for repeat in [false, true] {
                let r = testbed_row(jobs, noise, repeat, seeds);
                let mean: Vec<String> = r.per_node_mean.iter().map(|x| format!("{x:.2}")).collect();
                let mode: Vec<String> = r.per_node_mode.0.iter().map(u32::to_string).collect();
                println!(
                    "{:>4} {:>5} {:>6} | {:>8} {:>6} {:>5} | {:>6.3} {:>6.3} | {:>6} {:>6} | {:>23} | {:>9} {:>3}",
                    r.jobs,
                    pct(r.noise),
                    if r.repeat { "repeat" } else { "first" },
                    pct(r.of_ideal_median),
                    pct(r.of_ideal_worst),
                    format!("{:.0}%", 100.0 * r.at_least_90),
                    r.ratio_median,
                    r.ratio_worst,
                    pct(r.gap_median),
                    pct(r.gap_worst),
                    mean.join("/"),
                    mode.join("/"),
                    r.per_node_mode.1
                );
                for v in &r.violations {
                    println!("      VIOLATION {v}");
                }
                rows.push(r);
            }
        }
    }
    rows
}

fn group(base: &Scenario, seeds: &[u64]) -> Row {
    let wall = Instant::now();
    let outs: Vec<Outcome> = seeds
        .iter()
        .map(|&seed| {
            let sc = Scenario {
                seed,
                ..base.clone()
            };
            run(&sc)
        })
        .collect();
    let f = |g: &dyn Fn(&Outcome) -> f64| median(outs.iter().map(g).collect());
    Row {
        nodes: base.nodes,
        heterogeneous: base.heterogeneous,
        workstations: base.workstations,
        mix: base.mix,
        faults: base.crashes + base.partitions > 0,
        batch_factor: base.batch_factor,
        report_on_change: base.report_on_change,
        seeds: seeds.to_vec(),
        slots: outs.first().map_or(0, |o| o.slots),
        jobs: outs.first().map_or(0, |o| o.jobs),
        gap_median: f(&|o| o.gap),
        gap_worst: outs.iter().map(|o| o.gap).fold(f64::NEG_INFINITY, f64::max),
        fifo_gap_median: f(&|o| o.omniscient_fifo_s / o.omniscient_s - 1.0),
        clairvoyant_gap_median: (base.nodes <= 100).then(|| {
            median(
                seeds
                    .iter()
                    .map(|&seed| {
                        let sc = Scenario {
                            seed,
                            clairvoyant: true,
                            ..base.clone()
                        };
                        run(&sc).gap
                    })
                    .collect(),
            )
        }),
        makespan_s_median: f(&|o| o.makespan_s),
        omniscient_s_median: f(&|o| o.omniscient_s),
        lower_bound_s_median: f(&|o| o.lower_bound_s),
        reruns_total: outs.iter().map(|o| o.reruns).sum(),
        rejections_median: f(&|o| o.rejections as f64),
        discarded_total: outs.iter().map(|o| o.discarded).sum(),
        place_calls_median: f(&|o| o.place_calls as f64),
        violations: outs.iter().flat_map(|o| o.violations.clone()).collect(),
        wall_s: wall.elapsed().as_secs_f64(),
    }
}

fn print_header() {
    println!(
        "{:>5} {:>6} {:>3} {:>7} {:>6} {:>5} {:>5} {:>6} | {:>6} {:>6} {:>6} {:>6} | {:>7} {:>7} {:>7} | {:>6} {:>6} {:>5} {:>6}",
        "nodes",
        "hetero",
        "ws",
        "mix",
        "faults",
        "batch",
        "slots",
        "jobs",
        "gap",
        "worst",
        "fifo",
        "clairv",
        "makesp.",
        "omnisc.",
        "low.bd.",
        "reruns",
        "refuse",
        "late",
        "wall s"
    );
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn print_row(r: &Row) {
    println!(
        "{:>5} {:>6} {:>3} {:>7} {:>6} {:>5} {:>5} {:>6} | {:>6} {:>6} {:>6} {:>6} | {:>6.2}s {:>6.2}s {:>6.2}s | {:>6} {:>6.0} {:>5} {:>6.1}",
        r.nodes,
        if r.heterogeneous { "yes" } else { "no" },
        format!(
            "{}{}",
            r.workstations,
            if r.report_on_change { "e" } else { "" }
        ),
        match r.mix {
            Mix::Uniform => "uniform",
            Mix::Skewed => "skewed",
        },
        if r.faults { "yes" } else { "no" },
        format!("{}×", r.batch_factor),
        r.slots,
        r.jobs,
        pct(r.gap_median),
        pct(r.gap_worst),
        pct(r.fifo_gap_median),
        r.clairvoyant_gap_median.map_or("-".into(), pct),
        r.makespan_s_median,
        r.omniscient_s_median,
        r.lower_bound_s_median,
        r.reruns_total,
        r.rejections_median,
        r.discarded_total,
        r.wall_s
    );
    for v in &r.violations {
        println!("      VIOLATION {v}");
    }
}

fn main() {
    let mut json = PathBuf::from("target/bench/placement.json");
    let mut nseeds = 5u64;
    let mut sizes = vec![2usize, 10, 100, 1000];
    let mut testbed_only = false;
    let mut testbed_seeds = 200u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--testbed" => testbed_only = true,
            "--testbed-seeds" => {
                testbed_seeds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&k| k > 0)
                    .unwrap_or_else(|| usage())
            }
            "--json" => json = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--seeds" => {
                nseeds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&k| k > 0)
                    .unwrap_or_else(|| usage())
            }
            "--sizes" => {
                sizes = args
                    .next()
                    .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let mut rows = Vec::new();
    if testbed_only {
        sizes.clear();
    }
    println!(
        "gap = makespan / omniscient − 1, median and worst over seeds (omniscient: exact sizes and rates, longest job first)"
    );
    println!(
        "fifo: gap of the omniscient scheduler bound to queue order; clairv: gap of this simulation with exact job sizes"
    );
    println!(
        "times are medians; reruns: jobs re-run after a crash or cut (total); refuse: tasks refused by a full node (median); late: late results discarded (total)"
    );
    println!(
        "ws: workstations submitting (\"e\": nodes also report their load when a task starts or ends)\n"
    );
    if !testbed_only {
        print_header();
    }
    for &n in &sizes {
        // The 1,000-node runs take the longest: fewer seeds.
        let k = if n >= 1000 { nseeds.min(2) } else { nseeds };
        let seeds: Vec<u64> = (1..=k).collect();
        for heterogeneous in [false, true] {
            for workstations in [1, 4] {
                if workstations > n / 2 {
                    continue;
                }
                for mix in [Mix::Uniform, Mix::Skewed] {
                    for faults in [false, true] {
                        let sc = Scenario::new(n, heterogeneous, workstations, mix, faults, 0);
                        let row = group(&sc, &seeds);
                        print_row(&row);
                        rows.push(row);
                    }
                }
            }
        }
    }
    let seeds: Vec<u64> = (1..=nseeds).collect();
    let factors: &[f64] = if testbed_only {
        &[]
    } else {
        println!("\nbatch size sweep: 100 heterogeneous nodes, one workstation, no faults\n");
        print_header();
        &[2.0, 5.0, 10.0, 20.0]
    };
    for mix in [Mix::Uniform, Mix::Skewed] {
        for &factor in factors {
            let mut sc = Scenario::new(100, true, 1, mix, false, 0);
            sc.batch_factor = factor;
            let row = group(&sc, &seeds);
            print_row(&row);
            rows.push(row);
        }
    }
    if sizes.iter().any(|n| (10..=100).contains(n)) {
        println!(
            "\nfour workstations, heterogeneous, no faults: load reports every 500 ms, then also whenever a task starts or ends (as the agent does)\n"
        );
        print_header();
    }
    for n in sizes.iter().copied().filter(|&n| (10..=100).contains(&n)) {
        for mix in [Mix::Uniform, Mix::Skewed] {
            for report_on_change in [false, true] {
                let mut sc = Scenario::new(n, true, 4, mix, false, 0);
                sc.report_on_change = report_on_change;
                let row = group(&sc, &seeds);
                print_row(&row);
                rows.push(row);
            }
        }
    }
    let testbed = testbed_section(testbed_seeds);
    let failed = rows.iter().any(|r| !r.violations.is_empty())
        || testbed.iter().any(|r| !r.violations.is_empty());
    let report = Report {
        description: "herd placement simulation: herd_sched::place vs an omniscient offline scheduler (LPT onto the earliest-completing slot, exact job sizes and rates, same latencies and cold penalties, no faults); \
                      gap = makespan / omniscient - 1; times in virtual seconds, medians over seeds",
        rows,
        testbed,
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
    if failed {
        eprintln!("some checkers failed (VIOLATION lines above)");
        std::process::exit(1)
    }
}
