//! Placement in the simulator: exactly-once completion under crashes and partitions, no
//! node over its slots, determinism, and bounds on the gap to the omniscient scheduler
//! (measured values in the comments and in `placement-report`). A failure prints its
//! seed; `HERD_SIM_SEED=<n> cargo test -p herd-sim --test placement` replays it.

use herd_sim::placement::{Mix, Outcome, Scenario, run};
use herd_sim::seeds;

fn replay(seed: u64) -> String {
    format!("replay with HERD_SIM_SEED={seed} cargo test -p herd-sim --test placement")
}

fn assert_clean(o: &Outcome) {
    assert!(
        o.violations.is_empty(),
        "seed={}: checkers failed: {:#?}; {}",
        o.seed,
        o.violations,
        replay(o.seed)
    );
}

/// 20 seeds × 20 heterogeneous nodes, two workstations, 2 crashes and 3 cut-offs per
/// run (some heal before the 4 s detection, most after, with results still held): every
/// job is accepted exactly once, no node runs more than its slots, nothing goes to a
/// node its workstation has detected down.
#[test]
fn every_job_completes_exactly_once_through_crashes_and_partitions() {
    let (mut reruns, mut late, mut crashes, mut cuts) = (0, 0, 0, 0);
    for seed in seeds(1..=20) {
        let mix = if seed % 2 == 0 {
            Mix::Skewed
        } else {
            Mix::Uniform
        };
        let mut sc = Scenario::new(20, true, 2, mix, true, seed);
        sc.crashes = 2;
        sc.partitions = 3;
        sc.batch_factor = 4.0;
        let o = run(&sc);
        eprintln!(
            "seed={seed}: {} jobs, {} reruns, {} late results discarded, gap {:.1} %",
            o.jobs,
            o.reruns,
            o.discarded,
            100.0 * o.gap
        );
        assert_clean(&o);
        assert_eq!(
            (o.crashes, o.partitions),
            (2, 3),
            "seed={seed}: faults not injected; {}",
            replay(seed)
        );
        reruns += o.reruns;
        late += o.discarded;
        crashes += o.crashes;
        cuts += o.partitions;
    }
    eprintln!("{crashes} crashes, {cuts} cut-offs, {reruns} reruns, {late} late results");
    if std::env::var(herd_sim::SEED_ENV).is_err() {
        // The faults must have bitten: jobs re-run, and late results arrived (and were
        // discarded) from healed nodes.
        assert!(reruns >= 100, "only {reruns} reruns");
        assert!(late >= 10, "only {late} late results");
    }
}

/// With one workstation its view of every node is exact (its own tasks, and the
/// orphans of a healed node through load reports), so no node ever refuses a task —
/// the simulator's checker fails the run otherwise. With four, stale views make nodes
/// refuse tasks, and still none runs more than its slots.
#[test]
fn place_never_overcommits_a_node_it_sees_exactly() {
    for seed in seeds(1..=10) {
        let o = run(&Scenario::new(30, true, 1, Mix::Skewed, true, seed));
        assert_clean(&o);
        assert_eq!(o.rejections, 0, "seed={seed}; {}", replay(seed));
        let o = run(&Scenario::new(30, true, 4, Mix::Uniform, false, seed));
        assert_clean(&o);
        assert!(
            o.rejections > 0,
            "seed={seed}: four workstations starting together never collided"
        );
    }
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let seed = seeds([7])[0];
    let sc = Scenario::new(20, true, 2, Mix::Skewed, true, seed);
    let a = run(&sc);
    let b = run(&sc);
    assert_eq!(a, b, "seed={seed}: two runs diverged");
    let c = run(&Scenario {
        seed: seed + 1,
        ..sc
    });
    assert_ne!(
        a.trace_hash,
        c.trace_hash,
        "seeds {seed} and {} collide",
        seed + 1
    );
}

/// One workstation, uniform jobs, batches of 5 × the slots, no faults. The gap to the
/// omniscient scheduler (which knows every job's size and sorts them, longest first)
/// is mostly the price of FIFO order: the omniscient scheduler held to queue order
/// (`fifo`) is already most of it.
fn check_gap(nodes: usize, batch: f64, bound: f64, over_fifo: f64, seeds: Vec<u64>) {
    for seed in seeds {
        let mut sc = Scenario::new(nodes, true, 1, Mix::Uniform, false, seed);
        sc.batch_factor = batch;
        let o = run(&sc);
        assert_clean(&o);
        let fifo = o.omniscient_fifo_s / o.omniscient_s - 1.0;
        eprintln!(
            "{nodes} nodes, {batch}× seed={seed}: gap {:.1} % (fifo {:.1} %), makespan {:.2} s, omniscient {:.2} s",
            100.0 * o.gap,
            100.0 * fifo,
            o.makespan_s,
            o.omniscient_s
        );
        assert!(
            o.gap <= bound,
            "seed={seed}: gap {:.1} % > {:.0} %; {}",
            100.0 * o.gap,
            100.0 * bound,
            replay(seed)
        );
        assert!(
            o.gap - fifo <= over_fifo,
            "seed={seed}: {:.1} points over the FIFO-bound omniscient scheduler; {}",
            100.0 * (o.gap - fifo),
            replay(seed)
        );
    }
}

#[test]
fn gap_heterogeneous_uniform_10_nodes() {
    // Measured over seeds 1-8: gap 8.5-19.8 % (FIFO-bound omniscient 7.4-13.1 %), at
    // most 11 points over it.
    check_gap(10, 5.0, 0.25, 0.15, seeds(1..=8));
}

#[test]
fn gap_heterogeneous_uniform_100_nodes() {
    // Measured over seeds 1-3: gap 10.8-12.6 % (FIFO-bound omniscient 7.1-9.9 %), at
    // most 3.7 points over it.
    check_gap(100, 5.0, 0.18, 0.08, seeds(1..=3));
}

#[test]
fn gap_heterogeneous_uniform_large_batch() {
    // 20 × the slots: the tail matters less. Measured over seeds 1-3: gap 2.6-3.4 %, at
    // most 1.4 points over the FIFO-bound omniscient scheduler.
    check_gap(10, 20.0, 0.06, 0.04, seeds(1..=3));
}

/// The batch of `batch-bench` on its testbed (hosts of 0.5, 0.25, 0.5 and 0.75 CPU, one
/// slot each; jobs of 1.5 s ± `noise`), a repeat run, over `seeds`: the median share of
/// the ideal (total work / 2.0 cores) reached, the share of seeds reaching 90 %, and the
/// jobs the 0.25-CPU helper ran on average.
fn testbed(jobs: usize, noise: f64, seeds: &[u64]) -> (f64, f64, f64) {
    let mut of_ideal = Vec::new();
    let mut slowest = 0.0;
    for &seed in seeds {
        let o = run(&Scenario::testbed(jobs, noise, true, seed));
        assert_clean(&o);
        assert_eq!(o.per_node.iter().sum::<u32>() as usize, jobs, "seed={seed}");
        of_ideal.push(o.ideal_s / o.makespan_s);
        slowest += f64::from(o.per_node[1]);
    }
    let n = seeds.len() as f64;
    let at_90 = of_ideal.iter().filter(|&&x| x >= 0.9).count() as f64 / n;
    let m = herd_sim::placement::median(of_ideal);
    eprintln!(
        "testbed {jobs} jobs ± {:.0} %: {:.1} % of ideal (median), {:.0} % of seeds ≥ 90 %, slowest helper {:.2} jobs",
        100.0 * noise,
        100.0 * m,
        100.0 * at_90,
        slowest / n
    );
    (m, at_90, slowest / n)
}

/// The slowest helper must not be kept out of the batch's tail: an even finish needs it
/// to run 2 of the 16 jobs. Measured over seeds 1-200 (repeat runs): with 25 % spread,
/// 90.1 % of the ideal (median), 50 % of seeds at 90 % or more, 1.73 jobs on the
/// 0.25-CPU helper; the rule that compared every cluster's nodes 2 standard deviations
/// late reached 89.2 %, 40 % and 1.50. With 10 % spread 95.5 %; with 48 jobs 96.3 %.
/// The rest of the gap is the job sizes no one knows in advance: the same simulation
/// with exact sizes (still in queue order) reaches about 91 %.
#[test]
fn the_testbed_batch_uses_its_slowest_helper_at_the_tail() {
    let all: Vec<u64> = (1..=200).collect();
    let single = std::env::var(herd_sim::SEED_ENV).is_ok();
    let seeds = seeds(all);
    let (m, at_90, slowest) = testbed(16, 0.25, &seeds);
    if !single {
        assert!(m >= 0.895, "median {:.1} % of ideal", 100.0 * m);
        assert!(at_90 >= 0.45, "{:.0} % of seeds at 90 %", 100.0 * at_90);
        assert!(slowest >= 1.6, "slowest helper ran {slowest:.2} jobs");
        let (m, _, _) = testbed(16, 0.1, &seeds);
        assert!(m >= 0.94, "10 % spread: median {:.1} % of ideal", 100.0 * m);
        let (m, _, _) = testbed(48, 0.25, &seeds);
        assert!(m >= 0.95, "48 jobs: median {:.1} % of ideal", 100.0 * m);
    }
}
