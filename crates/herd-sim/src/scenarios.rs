//! Measured experiments on the membership protocol, shared by the tests and the
//! `membership-report` binary. Each returns numbers; the callers decide the bounds.
//!
//! Times are virtual and also given in **protocol periods** (`probe_period`, 700 ms by
//! default). Each experiment panics through [`Sim::fail`] (seed in the message) when the
//! thing it measures never happens within its generous limit.
//!
//! # False positives, precisely
//!
//! A *false Dead* is a `NodeDown` event at observer `o` about node `t` while `t` is
//! running, in exactly the incarnation declared dead, and not separated from `o` by a
//! partition. With no crashes and no partitions every `NodeDown` is false. Two rates:
//!
//! * `fp_pair_period` = false Deads / (n·(n−1) observer–target pairs × periods run): the
//!   probability that, in a given protocol period, a given observer wrongly sees a given
//!   live node die.
//! * `fp_node_hour` = `Rejoined` events / (n × hours run): how often a live node is
//!   declared dead by the cluster (and so has to renew its identity), per node-hour. One
//!   such incident produces up to n−1 false Deads, one per observer.

use std::time::Duration;

use herd_membership::NodeState;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Sim, SimConfig};

/// How often predicates are evaluated while measuring (the time resolution).
pub const RESOLUTION: Duration = Duration::from_millis(100);

/// Join convergence of a fresh cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Join {
    /// Time from the first node starting until every node sees every other Alive (nodes
    /// start at random times within the first second, all through one seed node).
    pub converge: Duration,
    /// `converge` in protocol periods.
    pub periods: f64,
    /// Datagrams sent per node per period while converging.
    pub msgs_per_node_period: f64,
}

/// Starts a cluster of `n` and measures how long until everybody sees everybody.
pub fn join(n: usize, seed: u64) -> (Sim, Join) {
    let mut sim = Sim::new(SimConfig::new(n, seed));
    let j = converge(&mut sim);
    (sim, j)
}

/// Starts `sim` and waits for convergence.
pub fn converge(sim: &mut Sim) -> Join {
    sim.start_all();
    let Some(t) = sim.run_until(Duration::from_secs(300), RESOLUTION, Sim::all_alive) else {
        sim.fail("cluster did not converge within 300 s")
    };
    let periods = sim.periods(t);
    Join {
        converge: t,
        periods,
        msgs_per_node_period: sim.stats().sent as f64 / sim.len() as f64 / periods.max(1.0),
    }
}

/// Crash detection and recovery.
#[derive(Clone, Debug, PartialEq)]
pub struct Crash {
    /// Hosts crashed.
    pub crashed: Vec<usize>,
    /// From the crash until every survivor sees every crashed node Dead.
    pub detect: Duration,
    /// `detect` in periods.
    pub detect_periods: f64,
    /// From the restart until everybody sees everybody Alive (new incarnations).
    pub rejoin: Duration,
    /// `rejoin` in periods.
    pub rejoin_periods: f64,
}

/// Converged cluster of `n`; crash `k` random non-seed nodes; wait until all survivors
/// see them Dead; after 5 s restart them; wait for convergence.
pub fn crash(n: usize, k: usize, seed: u64) -> Crash {
    let (mut sim, _) = join(n, seed);
    sim.run_for(Duration::from_secs(5));
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC4A5);
    let mut victims: Vec<usize> = (sim.config().seed_nodes..n).collect();
    victims.shuffle(&mut rng);
    victims.truncate(k);
    victims.sort_unstable();
    for &v in &victims {
        sim.crash(v);
    }
    let Some(detect) = sim.run_until(Duration::from_secs(120), RESOLUTION, |s| {
        s.all_see(&victims, NodeState::Dead)
    }) else {
        sim.fail(format!(
            "crashed {victims:?} not seen Dead everywhere within 120 s"
        ))
    };
    sim.run_for(Duration::from_secs(5));
    for &v in &victims {
        sim.restart(v);
    }
    let Some(rejoin) = sim.run_until(Duration::from_secs(120), RESOLUTION, Sim::all_alive) else {
        sim.fail(format!(
            "restarted {victims:?} not Alive everywhere within 120 s"
        ))
    };
    Crash {
        detect_periods: sim.periods(detect),
        rejoin_periods: sim.periods(rejoin),
        crashed: victims,
        detect,
        rejoin,
    }
}

/// A partition and its healing.
#[derive(Clone, Debug, PartialEq)]
pub struct Partition {
    /// From the split until each side sees the other side Dead (and its own Alive).
    pub split: Duration,
    /// `split` in periods.
    pub split_periods: f64,
    /// From healing until everybody sees everybody Alive again.
    pub heal: Duration,
    /// `heal` in periods.
    pub heal_periods: f64,
    /// `Rejoined` events during the heal (nodes renewing their identity).
    pub rejoins: u64,
}

/// Converged cluster of `n`, split in two halves (odd/even hosts), wait for each side to
/// see the other Dead, heal, wait for convergence.
pub fn partition(n: usize, seed: u64) -> Partition {
    let (mut sim, _) = join(n, seed);
    sim.run_for(Duration::from_secs(5));
    sim.partition(|i| (i % 2) as u32);
    let Some(split) = sim.run_until(Duration::from_secs(180), RESOLUTION, Sim::sides_split) else {
        sim.fail("sides did not see each other Dead within 180 s")
    };
    sim.run_for(Duration::from_secs(5));
    let rejoins = sim.stats().rejoins;
    sim.heal();
    let Some(heal) = sim.run_until(Duration::from_secs(180), RESOLUTION, Sim::all_alive) else {
        sim.fail("cluster did not heal within 180 s")
    };
    Partition {
        split_periods: sim.periods(split),
        heal_periods: sim.periods(heal),
        split,
        heal,
        rejoins: sim.stats().rejoins - rejoins,
    }
}

/// False positives over a long run without faults (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct FalsePositives {
    /// Packet loss during the measurement.
    pub loss: f64,
    /// Length of the measurement.
    pub duration: Duration,
    /// False Dead events (observer, target).
    pub false_downs: u64,
    /// `Rejoined` events (live nodes declared dead by the cluster).
    pub rejoins: u64,
    /// False Deads per observer–target pair per period.
    pub fp_pair_period: f64,
    /// Rejoins per node-hour.
    pub fp_node_hour: f64,
    /// Datagrams sent per node per period (steady state).
    pub msgs_per_node_period: f64,
    /// Whether the cluster was converged again at the end (after the run, loss removed).
    pub converged_after: bool,
}

/// Converged cluster of `n` (no loss); then `duration` with `loss` and delays jittering
/// between 0.5 and `max_delay`; counts false Deads; then loss off and a final
/// convergence check.
pub fn false_positives(
    n: usize,
    loss: f64,
    max_delay: Duration,
    duration: Duration,
    seed: u64,
) -> FalsePositives {
    let (mut sim, _) = join(n, seed);
    sim.run_for(Duration::from_secs(10));
    let before = sim.stats().clone();
    sim.set_loss(loss);
    sim.set_delay(Duration::from_micros(500), max_delay);
    sim.run_for(duration);
    let after = sim.stats().clone();
    sim.set_loss(0.0);
    let converged_after = sim
        .run_until(Duration::from_secs(60), RESOLUTION, Sim::all_alive)
        .is_some();
    let periods = sim.periods(duration);
    let nf = n as f64;
    let false_downs = after.false_downs - before.false_downs;
    let rejoins = after.rejoins - before.rejoins;
    FalsePositives {
        loss,
        duration,
        false_downs,
        rejoins,
        fp_pair_period: false_downs as f64 / (nf * (nf - 1.0) * periods),
        fp_node_hour: rejoins as f64 / (nf * duration.as_secs_f64() / 3600.0),
        msgs_per_node_period: (after.sent - before.sent) as f64 / nf / periods,
        converged_after,
    }
}

/// Graceful leave.
#[derive(Clone, Debug, PartialEq)]
pub struct Leave {
    /// Hosts that left.
    pub left: Vec<usize>,
    /// From the leave until everybody else sees them Left.
    pub propagate: Duration,
    /// `NodeDown` events about the leavers (should be none).
    pub downs: usize,
}

/// Converged cluster of `n`; `k` random non-seed nodes leave; measure until everybody
/// sees them Left; then watch 20 s more for any `NodeDown` about them.
pub fn leave(n: usize, k: usize, seed: u64) -> Leave {
    let (mut sim, _) = join(n, seed);
    sim.run_for(Duration::from_secs(3));
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1EA7);
    let mut leavers: Vec<usize> = (sim.config().seed_nodes..n).collect();
    leavers.shuffle(&mut rng);
    leavers.truncate(k);
    sim.record_events();
    for &l in &leavers {
        sim.leave(l);
    }
    let Some(t) = sim.run_until(Duration::from_secs(60), RESOLUTION, |s| {
        s.all_see(&leavers, NodeState::Left)
    }) else {
        sim.fail(format!("{leavers:?} not seen Left everywhere within 60 s"))
    };
    sim.run_for(Duration::from_secs(20));
    if !sim.all_see(&leavers, NodeState::Left) {
        sim.fail("a Left node changed state later");
    }
    let names: Vec<String> = leavers.iter().map(|&l| sim.name(l).to_owned()).collect();
    let downs = sim
        .take_events()
        .iter()
        .filter(|(_, _, e)| {
            matches!(e, herd_membership::Event::NodeDown(id) if names.contains(&id.name))
        })
        .count();
    Leave {
        left: leavers,
        propagate: t,
        downs,
    }
}

/// One randomized fault schedule (see `tests/chaos.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct Chaos {
    /// Time from the end of all faults until convergence.
    pub settle: Duration,
    /// Crashes injected.
    pub crashes: usize,
    /// Partitions injected.
    pub partitions: usize,
    /// Hosts still crashed at the end (seen Dead by everyone).
    pub down_at_end: Vec<usize>,
    /// [`Sim::trace_hash`] at the end.
    pub trace_hash: u64,
    /// Counters at the end.
    pub stats: crate::SimStats,
}

/// `n` nodes (3 seeds), then `fault_time` of random loss (0–15 %), delay (up to 80 ms),
/// crashes (some restarted later), and partitions that heal; then faults stop (loss 0,
/// partitions healed, most crashed nodes restarted) and we wait for convergence: every
/// running node sees every running node Alive, and no stopped node as alive (a node
/// that restarted after another crashed may never have heard of it).
pub fn chaos(n: usize, seed: u64, fault_time: Duration) -> Chaos {
    let mut cfg = SimConfig::new(n, seed);
    cfg.seed_nodes = 3.min(n);
    let mut sim = Sim::new(cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC4A0_5EED);
    converge(&mut sim);
    let mut crashes = 0;
    let mut partitions = 0;
    let end = sim.now() + fault_time;
    while sim.now() < end {
        let step = Duration::from_millis(rng.random_range(200..3000));
        match rng.random_range(0..10) {
            0 | 1 => {
                sim.set_loss(rng.random_range(0.0..0.15));
                let max = rng.random_range(1..80);
                sim.set_delay(Duration::from_micros(300), Duration::from_millis(max));
            }
            2 | 3 => {
                // Crash a node (never all seeds at once).
                let v = rng.random_range(0..n);
                let seeds_up = (0..sim.config().seed_nodes)
                    .filter(|&s| sim.is_running(s))
                    .count();
                if sim.is_running(v) && (v >= sim.config().seed_nodes || seeds_up > 1) {
                    sim.crash(v);
                    crashes += 1;
                }
            }
            4 | 5 => {
                let v = rng.random_range(0..n);
                if !sim.is_running(v) {
                    sim.restart(v);
                }
            }
            6 => {
                let sides = rng.random_range(2..4);
                let salt: u64 = rng.random();
                sim.partition(|i| {
                    ((i as u64 ^ salt).wrapping_mul(0x9E37_79B9) >> 7) as u32 % sides
                });
                partitions += 1;
            }
            7 => sim.heal(),
            _ => {}
        }
        sim.run_for(step);
    }
    // Faults stop: heal, no loss, LAN delays; restart all but a few crashed nodes.
    sim.heal();
    sim.set_loss(0.0);
    sim.set_delay(Duration::from_micros(500), Duration::from_millis(5));
    let mut down: Vec<usize> = (0..n).filter(|&i| !sim.is_running(i)).collect();
    let keep_down = down.len().min(2);
    for &v in &down[keep_down..] {
        sim.restart(v);
    }
    down.truncate(keep_down);
    let Some(settle) = sim.run_until(Duration::from_secs(120), RESOLUTION, |s| {
        s.converged() && s.none_see_active(&down)
    }) else {
        let report = describe_divergence(&sim);
        sim.fail(format!(
            "no convergence 120 s after faults stopped ({crashes} crashes, {partitions} partitions)\n{report}"
        ))
    };
    Chaos {
        settle,
        crashes,
        partitions,
        down_at_end: down,
        trace_hash: sim.trace_hash(),
        stats: sim.stats().clone(),
    }
}

/// A short description of who disagrees about whom (for failure messages).
pub fn describe_divergence(sim: &Sim) -> String {
    let mut lines = Vec::new();
    for o in 0..sim.len() {
        let Some(m) = sim.membership(o) else { continue };
        for t in 0..sim.len() {
            if t == o {
                continue;
            }
            let seen = m.state_of(sim.name(t));
            let ok = match (sim.is_running(t), seen) {
                (true, Some((id, NodeState::Alive))) => id.bump == sim.bump(t),
                (false, None | Some((_, NodeState::Dead | NodeState::Left))) => true,
                _ => false,
            };
            if !ok && lines.len() < 12 {
                lines.push(format!(
                    "  {} sees {} as {:?} (actual: {} bump {})",
                    sim.name(o),
                    sim.name(t),
                    seen.map(|(id, s)| (id.bump, s)),
                    if sim.is_running(t) { "running" } else { "down" },
                    sim.bump(t)
                ));
            }
        }
    }
    lines.join("\n")
}
