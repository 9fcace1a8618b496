//! Cluster-level membership tests in the simulator: each one measures a number and
//! asserts a bound with margin (the measured values are in the comments and in
//! `membership-report`). A failure prints the seed; `HERD_SIM_SEED=<n>` replays it.

use std::time::Duration;

use herd_membership::{Event, LoadReport, NodeState};
use herd_sim::scenarios::{self, RESOLUTION};
use herd_sim::{Sim, SimConfig, seeds};

const SECOND: Duration = Duration::from_secs(1);

/// Join convergence: every node sees every other Alive, counted from the first start
/// (nodes start within the first second, all through one seed node).
fn check_join(n: usize, bound_periods: f64, seeds: Vec<u64>) {
    for seed in seeds {
        let (sim, j) = scenarios::join(n, seed);
        eprintln!("join n={n} seed={seed}: {:.1} periods", j.periods);
        if j.periods > bound_periods {
            sim.fail(format!(
                "{n} nodes converged after {:.1} periods (bound {bound_periods})",
                j.periods
            ));
        }
    }
}

#[test]
fn join_10_nodes_converges() {
    // Measured: 1.6 periods.
    check_join(10, 5.0, seeds(1..=5));
}

#[test]
fn join_100_nodes_converges() {
    // Measured: 2.3 periods.
    check_join(100, 8.0, seeds([1, 2]));
}

#[test]
fn join_1000_nodes_converges() {
    // Measured: 10 periods (7 s). The longest test: ~25 s on two cores.
    check_join(1000, 25.0, seeds([1]));
}

#[test]
fn crashes_are_detected_and_restarts_rejoin() {
    // 100 nodes, 5 crashed. Measured: Dead everywhere after 9 periods, Alive again
    // 1 period after the restart.
    for seed in seeds([1, 2]) {
        let c = scenarios::crash(100, 5, seed);
        eprintln!("crash seed={seed}: {c:?}");
        assert!(
            c.detect_periods <= 20.0,
            "seed={seed}: detection took {:.1} periods",
            c.detect_periods
        );
        assert!(
            c.rejoin_periods <= 5.0,
            "seed={seed}: rejoin took {:.1} periods",
            c.rejoin_periods
        );
    }
}

/// The promise of `Config::lan`: with 50 nodes, a SIGKILLed or cut-off node is Dead at
/// every node within 10 s, and Alive again within 10 s of its restart or healing.
#[test]
fn lan_config_keeps_its_10_second_promise_at_50_nodes() {
    let limit = 10 * SECOND;
    let mut worst = [Duration::ZERO; 4];
    for seed in seeds(1..=8) {
        let n = 50;
        let v = 1 + (seed as usize * 7) % (n - 1);
        // SIGKILL, then restart with a new bump.
        let (mut sim, _) = scenarios::join(n, seed);
        sim.run_for(3 * SECOND);
        sim.crash(v);
        let dead = sim.run_until(limit, RESOLUTION, |s| s.all_see(&[v], NodeState::Dead));
        let Some(dead) = dead else {
            sim.fail(format!("crashed n{v} not Dead everywhere within 10 s"))
        };
        sim.run_for(2 * SECOND);
        sim.restart(v);
        let Some(back) = sim.run_until(limit, RESOLUTION, Sim::all_alive) else {
            sim.fail(format!("restarted n{v} not Alive everywhere within 10 s"))
        };
        // Cut off, then healed.
        sim.run_for(3 * SECOND);
        sim.partition(|i| u32::from(i == v));
        let cut = sim.run_until(limit, RESOLUTION, |s| s.all_see(&[v], NodeState::Dead));
        let Some(cut) = cut else {
            sim.fail(format!("cut-off n{v} not Dead everywhere within 10 s"))
        };
        sim.run_for(2 * SECOND);
        sim.heal();
        let Some(healed) = sim.run_until(limit, RESOLUTION, Sim::all_alive) else {
            sim.fail(format!("healed n{v} not Alive everywhere within 10 s"))
        };
        eprintln!("seed={seed}: dead {dead:?}, back {back:?}, cut {cut:?}, healed {healed:?}");
        for (w, t) in worst.iter_mut().zip([dead, back, cut, healed]) {
            *w = (*w).max(t);
        }
    }
    // Measured worst over 20 seeds: dead 6.0 s, back 1.0 s, cut 7.0 s, healed 0.9 s.
    eprintln!("worst: {worst:?}");
}

#[test]
fn partition_halves_see_each_other_dead_then_heal() {
    // 100 nodes split odd/even. Measured: 16 periods to split, 4-25 to heal (the
    // smaller side renews its identities; on a tie both may).
    for seed in seeds([1, 2, 3]) {
        let p = scenarios::partition(100, seed);
        eprintln!("partition seed={seed}: {p:?}");
        assert!(
            p.split_periods <= 40.0,
            "seed={seed}: split took {:.1} periods",
            p.split_periods
        );
        assert!(
            p.heal_periods <= 60.0,
            "seed={seed}: heal took {:.1} periods",
            p.heal_periods
        );
        assert!(p.rejoins >= 1, "seed={seed}: nobody renewed after the heal");
    }
}

#[test]
fn isolated_node_heals_without_the_others_renewing() {
    // When one node was cut off, only that node changes identity on healing.
    for seed in seeds([3, 4]) {
        let (mut sim, _) = scenarios::join(50, seed);
        sim.run_for(5 * SECOND);
        sim.partition(|i| u32::from(i == 7));
        sim.run_until(20 * SECOND, RESOLUTION, |s| {
            s.all_see(&[7], NodeState::Dead)
        })
        .unwrap_or_else(|| sim.fail("n7 not seen dead"));
        sim.run_for(3 * SECOND);
        let before: Vec<u32> = (0..50).map(|i| sim.bump(i)).collect();
        sim.heal();
        let t = sim
            .run_until(20 * SECOND, RESOLUTION, Sim::all_alive)
            .unwrap_or_else(|| sim.fail("no heal"));
        let renewed: Vec<usize> = (0..50).filter(|&i| sim.bump(i) != before[i]).collect();
        eprintln!("seed={seed}: healed in {t:?}, renewed {renewed:?}");
        assert_eq!(renewed, [7], "seed={seed}");
        assert!(t <= 3 * SECOND, "seed={seed}: heal took {t:?}");
    }
}

/// False positives, defined in `herd_sim::scenarios` (false Dead events per
/// observer-target pair per period, and live nodes declared dead per node-hour).
#[test]
fn no_false_positives_without_loss() {
    for seed in seeds([1]) {
        let f = scenarios::false_positives(20, 0.0, Duration::from_millis(5), 3600 * SECOND, seed);
        eprintln!("0% loss seed={seed}: {f:?}");
        assert_eq!((f.false_downs, f.rejoins), (0, 0), "seed={seed}");
        assert!(f.converged_after, "seed={seed}");
    }
}

#[test]
fn false_positives_at_5_percent_loss_stay_rare() {
    // 50 nodes, one simulated hour, 5% loss, delays 0.5-20 ms. Measured: 0 false Deads.
    // Bound: at most one live node declared dead per 10 node-hours.
    for seed in seeds([1]) {
        let f =
            scenarios::false_positives(50, 0.05, Duration::from_millis(20), 3600 * SECOND, seed);
        eprintln!("5% loss seed={seed}: {f:?}");
        assert!(f.fp_node_hour <= 0.1, "seed={seed}: {f:?}");
        assert!(f.fp_pair_period <= 1e-5, "seed={seed}: {f:?}");
        assert!(f.converged_after, "seed={seed}");
        assert!(f.msgs_per_node_period < 8.0, "seed={seed}: {f:?}");
    }
}

#[test]
fn false_positives_at_15_percent_loss_are_bounded() {
    // Stress: 15% loss. Measured: 0.04 live nodes declared dead per node-hour.
    for seed in seeds([1]) {
        let f =
            scenarios::false_positives(50, 0.15, Duration::from_millis(20), 1800 * SECOND, seed);
        eprintln!("15% loss seed={seed}: {f:?}");
        assert!(f.fp_node_hour <= 0.5, "seed={seed}: {f:?}");
        assert!(f.converged_after, "seed={seed}");
    }
}

#[test]
fn graceful_leave_shows_left_everywhere() {
    for seed in seeds([1, 2]) {
        let l = scenarios::leave(50, 5, seed);
        eprintln!("leave seed={seed}: {l:?}");
        // Measured: 100 ms (the time resolution): direct notices need one hop.
        assert!(l.propagate <= SECOND, "seed={seed}: {l:?}");
        assert_eq!(l.downs, 0, "seed={seed}: a leaver was reported Dead");
    }
}

#[test]
fn load_reports_reach_everyone_and_newer_replace_older() {
    for seed in seeds([1]) {
        let n = 50;
        let (mut sim, _) = scenarios::join(n, seed);
        let report = |i: usize, tasks: u32| LoadReport {
            roles: vec!["exec".into()],
            cpus: 4.0,
            speed: 1.0 + i as f32 / 100.0,
            tasks,
            ..LoadReport::default()
        };
        for i in 0..n {
            sim.set_load(i, report(i, 1));
        }
        let everyone_has = |s: &Sim, tasks: u32| {
            (0..n).all(|o| {
                let m = s.membership(o).expect("running");
                (0..n).all(|t| m.load_of(s.name(t)).is_some_and(|l| l.tasks == tasks))
            })
        };
        let t = sim
            .run_until(10 * SECOND, RESOLUTION, |s| everyone_has(s, 1))
            .unwrap_or_else(|| sim.fail("load reports did not reach everyone in 10 s"));
        eprintln!("seed={seed}: 50 reports everywhere after {t:?}");
        // Measured: 0.6 s.
        assert!(t <= 3 * SECOND, "seed={seed}: {t:?}");
        sim.record_events();
        for i in 0..n {
            sim.set_load(i, report(i, 2));
        }
        sim.run_until(10 * SECOND, RESOLUTION, |s| everyone_has(s, 2))
            .unwrap_or_else(|| sim.fail("newer reports did not replace older ones"));
        let loads = sim
            .take_events()
            .iter()
            .filter(|(_, _, e)| matches!(e, Event::Load(_)))
            .count();
        assert!(loads >= n * (n - 1), "seed={seed}: {loads} Load events");
        assert!(loads <= 2 * n * (n - 1), "seed={seed}: {loads} Load events");
    }
}

#[test]
fn restarted_node_learns_everyone_fast() {
    // A node restarting into a settled cluster gets the whole member list by sync.
    for seed in seeds([5]) {
        let mut cfg = SimConfig::new(200, seed);
        cfg.start_spread = 2 * SECOND;
        let mut sim = Sim::new(cfg);
        scenarios::converge(&mut sim);
        sim.run_for(10 * SECOND);
        sim.restart(123);
        let t = sim
            .run_until(20 * SECOND, RESOLUTION, |s| {
                s.membership(123).is_some_and(|m| m.counts().alive == 199)
            })
            .unwrap_or_else(|| sim.fail("restarted node did not learn the cluster"));
        eprintln!("seed={seed}: restarted node knows all 199 others after {t:?}");
        assert!(t <= 2 * SECOND, "seed={seed}: {t:?}");
    }
}
