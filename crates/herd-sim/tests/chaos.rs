//! Randomized fault schedules over many seeds, and the determinism of the simulator.
//! A failure prints its seed; `HERD_SIM_SEED=<n> cargo test -p herd-sim --test chaos`
//! replays exactly that run.

use std::time::Duration;

use herd_sim::scenarios;
use herd_sim::seeds;

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let seed = seeds([42])[0];
    let a = scenarios::chaos(30, seed, Duration::from_secs(20));
    let b = scenarios::chaos(30, seed, Duration::from_secs(20));
    assert_eq!(a.trace_hash, b.trace_hash, "seed={seed}: two runs diverged");
    assert_eq!(a, b, "seed={seed}");
    let c = scenarios::chaos(30, seed + 1, Duration::from_secs(20));
    assert_ne!(
        a.trace_hash,
        c.trace_hash,
        "seeds {seed} and {} collide",
        seed + 1
    );
    assert!(a.stats.sent > 1000, "{:?}", a.stats);
}

/// 20 seeds × 50 nodes: 60 s of random loss (up to 15 %), delays (up to 80 ms), crashes
/// and restarts, partitions into 2-3 groups that heal; then the faults stop and the
/// cluster must converge (every running node sees every running node Alive in its
/// latest incarnation, the nodes left crashed Dead). The invariant checkers run every
/// protocol period throughout.
#[test]
fn randomized_faults_then_convergence() {
    let mut worst = Duration::ZERO;
    let mut crashes = 0;
    let mut partitions = 0;
    for seed in seeds(1..=20) {
        let c = scenarios::chaos(50, seed, Duration::from_secs(60));
        eprintln!(
            "seed={seed}: settled in {:?} after {} crashes and {} partitions",
            c.settle, c.crashes, c.partitions
        );
        // Measured: 0.1-15 s over seeds 1-80.
        assert!(
            c.settle <= Duration::from_secs(40),
            "seed={seed}: took {:?} to settle; replay with HERD_SIM_SEED={seed}",
            c.settle
        );
        worst = worst.max(c.settle);
        crashes += c.crashes;
        partitions += c.partitions;
    }
    eprintln!("worst settle {worst:?}; {crashes} crashes, {partitions} partitions in total");
    if std::env::var(herd_sim::SEED_ENV).is_err() {
        assert!(
            crashes >= 20 && partitions >= 10,
            "the schedules injected too few faults"
        );
    }
}
