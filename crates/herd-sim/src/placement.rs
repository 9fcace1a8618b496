//! Deterministic, seeded simulation of placement: [`herd_sched::place`] running batches
//! on a heterogeneous cluster, measured against an omniscient offline scheduler.
//!
//! # The model
//!
//! * **Cluster.** `nodes` hosts; the first `workstations` of them submit. Homogeneous:
//!   4 cores at speed 1.0 each. Heterogeneous: speeds 0.5–2.0, 0.25 to 16 cores
//!   (fractional cgroup quotas included), a quarter of the hosts with owner load; the
//!   workstations have 8 cores at speed 1.5 with the user busy on one. A node's slots and
//!   slot rate are [`herd_sched::Node::slots`] and [`herd_sched::Node::slot_rate`] of its
//!   true state: a task's run time is `work / slot_rate`.
//! * **Jobs.** Every workstation queues its batch at time 0: in total `batch_factor` ×
//!   the cluster's slots jobs. [`Mix::Uniform`]: one executable, work uniform in
//!   0.5–1.5 reference-core seconds (image resizes). [`Mix::Skewed`]: a build, 80 %
//!   compiler calls with log-normal work (median 0.8 s, σ 0.8, capped at 20 s) and 20 %
//!   assembler calls of 0.05–0.15 s. The scheduler never sees a job's work: the
//!   workstation's [`Estimator`] learns per executable from the jobs that finished.
//! * **Costs.** A remote task pays the one-way latency (2 ms) to start and again to
//!   report its result; a node runs an executable for the first time after a cold fetch
//!   (250 ms; concurrent tasks wait for the same fetch); the local node is always warm
//!   and has no latency. A workstation calls `place` at most once per millisecond.
//! * **Views.** A workstation knows its own tasks exactly (dispatch time, executable).
//!   Other submitters' tasks reach it through load reports: every node samples its task
//!   count every 500 ms (and, with [`Scenario::report_on_change`], whenever a task
//!   starts or ends, as the agent does) and the report arrives 10–300 ms later; the
//!   workstation sets [`herd_sched::Node::others`] to the count minus its own tasks the
//!   node was running at the sample. A node that is full when a task arrives refuses it; the workstation
//!   re-queues the job and counts the node one task fuller until the next report.
//! * **Faults** (seeded). A crash kills a node and its tasks; a partition cuts a node
//!   off for 2–12 s (tasks keep running, results are held, dispatches are lost). A
//!   workstation detects either 4 s after it started (if it still lasts), marks the node
//!   not accepting and re-queues the jobs it had there with the node in
//!   [`Job::avoid`]; a dispatch that reached no one is re-queued after the same delay.
//!   A healed node is accepting again with its next load report; the results it held
//!   then arrive late and are **discarded**.
//!
//! # The testbed batch
//!
//! [`Scenario::testbed`] replaces the drawn cluster and batch with fixed ones
//! ([`FixedBatch`]): the hosts of `batch-bench` (a workstation with a 0.5-CPU quota and
//! helpers with 0.25, 0.5 and 0.75 CPU, one slot each, speed 1.0) and a batch of equal
//! jobs of one executable (1.5 reference-core seconds on average) whose work is
//! log-normal with a given relative standard deviation, standing in for the run times
//! that vary because the hosts share one machine. A *repeat* run is the benchmark's
//! measured one: every helper has the executable cached and the estimator learned from
//! an earlier batch of the same size and distribution; a first run starts with cold
//! caches and an empty estimator. The estimator then learns from finished jobs as the
//! agent does: the time from dispatch to result ([`Scenario::learn_elapsed`]), the
//! latencies and a cold fetch included. [`Outcome::ideal_s`] is the batch's total work
//! over the cluster's slot rates, the benchmark's ideal.
//!
//! # Checkers
//!
//! Recorded in [`Outcome::violations`] (empty when all is well): every job's output is
//! accepted exactly once; no node runs more tasks than its slots; no workstation
//! dispatches to a node it has detected as down; every `place` result respects the
//! workstation's view (free slots, accepting, avoid); with a single workstation no
//! node ever refuses a task (its view of every node is exact); the run finishes.
//!
//! # The baselines
//!
//! [`omniscient`] knows every job's work and every slot's rate and schedules offline:
//! longest job first, each onto the slot that completes it earliest, paying the same
//! latencies and cold fetches (a node's jobs wait for its first fetch of an
//! executable), without faults. `gap = makespan / omniscient − 1`.
//! [`Outcome::lower_bound_s`] is `max(total work / Σ slot rates, largest job / fastest
//! slot rate)`.
//!
//! Two diagnostics split the gap: [`omniscient_fifo`] is the same omniscient scheduler
//! held to queue order (what FIFO costs by itself: the omniscient one finishes a batch
//! with its smallest jobs), and [`Scenario::clairvoyant`] runs this simulation with the
//! exact work of every job in the estimator (what estimate error costs).
//!
//! # Reports
//!
//! `cargo run --release -p herd-sim --bin placement-report` runs the matrix of
//! scenarios and prints the table; `tests/placement.rs` bounds a few of them.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use herd_sched::{Estimator, Job, Node, Params, Running, place};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Job size distribution of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// One executable, work uniform in 0.5–1.5 s (image resizes).
    Uniform,
    /// A build: log-normal compiler calls and short assembler calls.
    Skewed,
}

/// Parameters of one run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Hosts, workstations included.
    pub nodes: usize,
    /// Mixed speeds, core counts and owner loads (else 4 cores at speed 1.0 each).
    pub heterogeneous: bool,
    /// How many of the hosts submit a batch (each runs its own `place`).
    pub workstations: usize,
    /// Job sizes.
    pub mix: Mix,
    /// Jobs in all batches together, as a multiple of the cluster's slots.
    pub batch_factor: f64,
    /// Nodes crashed during the run.
    pub crashes: usize,
    /// Nodes cut off during the run.
    pub partitions: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// One-way latency between a workstation and a remote node.
    pub latency: Duration,
    /// Time to fetch an executable the node has not cached.
    pub cold_penalty: Duration,
    /// Time until a workstation declares a crashed or cut-off node down.
    pub detect_delay: Duration,
    /// Period of a node's load reports.
    pub report_interval: Duration,
    /// Delay of a load report (uniform in the range).
    pub report_delay: (Duration, Duration),
    /// A node also sends a load report whenever one of its tasks starts or ends (not
    /// only every `report_interval`), as the agent does.
    pub report_on_change: bool,
    /// A workstation calls `place` at most once per this interval.
    pub coalesce: Duration,
    /// Parameters of `place`.
    pub params: Params,
    /// Diagnostic: every job is its own executable for the scheduler and the estimator
    /// knows its exact work, so the gap left is the scheduler's own (FIFO order, views,
    /// the tail), not that of estimates. The scheduler then cannot tell warm nodes (its
    /// cold penalty is set to 0; the simulated fetch still costs).
    pub clairvoyant: bool,
    /// A fixed cluster and batch instead of drawn ones (then `nodes`, `heterogeneous`,
    /// `workstations`, `mix` and `batch_factor` are not used to draw them).
    pub fixed: Option<FixedBatch>,
    /// The estimator learns the time from dispatch to result, as the agent does (its
    /// latencies and a cold fetch included), rather than the compute time alone.
    pub learn_elapsed: bool,
}

/// A fixed cluster and batch of one executable (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct FixedBatch {
    /// CPU quota of each host (speed 1.0, so one slot at that rate below one CPU); the
    /// first host is the workstation.
    pub quotas: Vec<f32>,
    /// Jobs in the batch.
    pub jobs: usize,
    /// Mean work of a job, reference-core seconds.
    pub work: f64,
    /// Standard deviation of a job's work relative to its mean (log-normal).
    pub noise: f64,
    /// A repeat run: the helpers have the executable cached and the estimator learned
    /// from an earlier batch like this one.
    pub repeat: bool,
}

impl FixedBatch {
    /// The quotas of `batch-bench`: workstation 0.5, helpers 0.25, 0.5 and 0.75 CPU.
    pub const TESTBED_QUOTAS: [f32; 4] = [0.5, 0.25, 0.5, 0.75];
}

impl Scenario {
    /// A run with the default costs; `faults` crashes and cuts off about 1 % of the
    /// hosts (at least one each, never a workstation).
    pub fn new(
        nodes: usize,
        heterogeneous: bool,
        workstations: usize,
        mix: Mix,
        faults: bool,
        seed: u64,
    ) -> Self {
        let k = if faults { (nodes / 100).max(1) } else { 0 };
        Self {
            nodes,
            heterogeneous,
            workstations,
            mix,
            batch_factor: 5.0,
            crashes: k,
            partitions: k,
            seed,
            latency: Duration::from_millis(2),
            cold_penalty: Duration::from_millis(250),
            detect_delay: Duration::from_secs(4),
            report_interval: Duration::from_millis(500),
            report_delay: (Duration::from_millis(10), Duration::from_millis(300)),
            report_on_change: false,
            coalesce: Duration::from_millis(1),
            params: Params::default(),
            clairvoyant: false,
            fixed: None,
            learn_elapsed: false,
        }
    }

    /// The batch of `batch-bench` on its testbed: `jobs` jobs of 1.5 reference-core
    /// seconds on average with relative standard deviation `noise`, on the four hosts of
    /// [`FixedBatch::TESTBED_QUOTAS`], one workstation, no faults, the default costs; the
    /// estimator learns from dispatch to result, as the agent does.
    pub fn testbed(jobs: usize, noise: f64, repeat: bool, seed: u64) -> Self {
        let quotas = FixedBatch::TESTBED_QUOTAS.to_vec();
        let mut sc = Self::new(quotas.len(), true, 1, Mix::Uniform, false, seed);
        sc.fixed = Some(FixedBatch {
            quotas,
            jobs,
            work: 1.5,
            noise,
            repeat,
        });
        sc.learn_elapsed = true;
        sc
    }
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Slots of the whole cluster.
    pub slots: u32,
    /// Jobs in all batches.
    pub jobs: usize,
    /// Time from submission until the last output was accepted.
    pub makespan_s: f64,
    /// Makespan of the omniscient schedule.
    pub omniscient_s: f64,
    /// Makespan of the omniscient scheduler bound to queue order ([`omniscient_fifo`]).
    pub omniscient_fifo_s: f64,
    /// `max(total work / Σ slot rates, largest job / fastest slot rate)`.
    pub lower_bound_s: f64,
    /// Total work / Σ slot rates (the ideal of `batch-bench`).
    pub ideal_s: f64,
    /// `makespan / omniscient − 1`.
    pub gap: f64,
    /// Jobs re-queued after their node crashed, was cut off or never got the dispatch.
    pub reruns: u64,
    /// Tasks refused by a full node (stale views, several workstations).
    pub rejections: u64,
    /// Late results discarded (from a node that had been cut off).
    pub discarded: u64,
    /// Nodes crashed.
    pub crashes: usize,
    /// Nodes cut off.
    pub partitions: usize,
    /// Calls of `place`, all workstations together.
    pub place_calls: u64,
    /// When the last job left a queue (its final dispatch).
    pub last_dispatch_s: f64,
    /// The job whose output came last: its work (reference-core seconds), the slot rate
    /// of the node it ran on, and when it was dispatched.
    pub last_job: (f64, f64, f64),
    /// Accepted outputs per node (in the order of the setup's nodes).
    pub per_node: Vec<u32>,
    /// Checker failures (empty when all is well).
    pub violations: Vec<String>,
    /// Fingerprint of every processed event.
    pub trace_hash: u64,
}

const NS: f64 = 1e9;

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn secs_ns(s: f64) -> u64 {
    (s * NS).round().max(0.0) as u64
}

/// One host's true state.
struct Host {
    name: String,
    slots: usize,
    rate: f64,
    up: bool,
    cut: bool,
    /// Increased at every cut: a detection applies to the cut it was armed for.
    cut_epoch: u32,
    /// Tasks occupying slots.
    running: Vec<usize>,
    /// Per executable: when its cached copy is (or will be) ready.
    warm_at: Vec<Option<u64>>,
    /// Results finished while cut off, sent when the cut heals.
    held: Vec<usize>,
}

struct SimJob {
    ws: usize,
    id: u64,
    exe: usize,
    work: f64,
    /// Current attempt; a task of an older attempt is stale.
    attempt: u32,
    avoid: Vec<String>,
    /// Accepted outputs (must end at exactly 1).
    accepted: u32,
}

struct Task {
    job: usize,
    node: usize,
    attempt: u32,
    /// The workstation still counts it as running.
    tracked: bool,
    /// It occupies a slot on its node.
    on_node: bool,
    dispatched: u64,
    compute: u64,
}

struct Workstation {
    node: usize,
    /// Global index of its job with id 1.
    first_job: usize,
    queue: Vec<Job>,
    /// Its view of every host; `view[n].running` is parallel to `own[n]`.
    view: Vec<Node>,
    own: Vec<Vec<usize>>,
    /// Detected down (crashed or cut off) and not heard from since.
    down: Vec<bool>,
    /// Others' tasks from the last report, and refusals since.
    reported: Vec<u32>,
    refused: Vec<u32>,
    est: Estimator,
    place_pending: bool,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Place { ws: usize },
    Arrive { task: usize },
    Finish { task: usize },
    Result { task: usize },
    Refused { task: usize },
    Unreached { task: usize },
    Report { node: usize },
    ReportArrive { ws: usize, node: usize, others: u32 },
    Crash { node: usize },
    Cut { node: usize, heal_after: u64 },
    Heal { node: usize },
    Detect { ws: usize, node: usize, epoch: u32 },
}

impl Ev {
    fn code(self) -> (u64, u64) {
        match self {
            Ev::Place { ws } => (1, ws as u64),
            Ev::Arrive { task } => (2, task as u64),
            Ev::Finish { task } => (3, task as u64),
            Ev::Result { task } => (4, task as u64),
            Ev::Refused { task } => (5, task as u64),
            Ev::Unreached { task } => (6, task as u64),
            Ev::Report { node } => (7, node as u64),
            Ev::ReportArrive { ws, node, others } => (
                8,
                (ws as u64) << 40 | (node as u64) << 20 | u64::from(others),
            ),
            Ev::Crash { node } => (9, node as u64),
            Ev::Cut { node, .. } => (10, node as u64),
            Ev::Heal { node } => (11, node as u64),
            Ev::Detect { ws, node, .. } => (12, (ws as u64) << 32 | node as u64),
        }
    }
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

const EXES: [&str; 3] = ["resize", "cc1", "as"];

/// A cluster and its batches, as drawn from a seed (shared by the simulation and the
/// omniscient baseline).
pub struct Setup {
    /// The true nodes (name, cpus, speed, owner load).
    pub nodes: Vec<Node>,
    /// Per job: (workstation, executable, work in reference-core seconds).
    pub jobs: Vec<(usize, &'static str, f64)>,
    /// Every node has every executable cached at the start.
    pub warm: bool,
    /// Jobs that finished before the run (executable, work): every workstation's
    /// estimator has learned from them.
    pub history: Vec<(&'static str, f64)>,
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The cluster and batch of a [`FixedBatch`]: hosts `ws`, `h1`, `h2`, ... and
/// log-normal work with the batch's mean and relative spread.
fn fixed_setup(b: &FixedBatch, rng: &mut ChaCha8Rng) -> Setup {
    let nodes = b
        .quotas
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let name = if i == 0 {
                "ws".to_string()
            } else {
                format!("h{i}")
            };
            Node::new(name, q, 1.0)
        })
        .collect();
    // Log-normal with mean `work` and standard deviation `noise × work`.
    let s2 = (1.0 + b.noise * b.noise).ln();
    let mu = b.work.ln() - s2 / 2.0;
    let draw = |rng: &mut ChaCha8Rng| (mu + s2.sqrt() * normal(rng)).exp();
    let jobs = (0..b.jobs).map(|_| (0, EXES[0], draw(rng))).collect();
    let history = if b.repeat {
        (0..b.jobs).map(|_| (EXES[0], draw(rng))).collect()
    } else {
        Vec::new()
    };
    Setup {
        nodes,
        jobs,
        warm: b.repeat,
        history,
    }
}

/// Draws the cluster and the batches of `sc`.
pub fn setup(sc: &Scenario) -> Setup {
    let mut rng = ChaCha8Rng::seed_from_u64(sc.seed ^ 0x005e_ed0f_c1a5);
    if let Some(b) = &sc.fixed {
        return fixed_setup(b, &mut rng);
    }
    let mut nodes = Vec::with_capacity(sc.nodes);
    for i in 0..sc.nodes {
        let name = if i < sc.workstations {
            format!("ws{i}")
        } else {
            format!("n{i:04}")
        };
        let (cpus, speed, owner) = match (sc.heterogeneous, i < sc.workstations) {
            (false, _) => (4.0, 1.0, 0.0),
            (true, true) => (8.0, 1.5, 1.0),
            (true, false) => {
                const CPUS: [(f32, u32); 7] = [
                    (0.25, 1),
                    (0.5, 1),
                    (1.0, 2),
                    (2.0, 3),
                    (4.0, 3),
                    (8.0, 2),
                    (16.0, 1),
                ];
                const SPEEDS: [f32; 5] = [0.5, 0.75, 1.0, 1.5, 2.0];
                let total: u32 = CPUS.iter().map(|c| c.1).sum();
                let mut pick = rng.random_range(0..total);
                let mut cpus = CPUS[0].0;
                for (c, w) in CPUS {
                    if pick < w {
                        cpus = c;
                        break;
                    }
                    pick -= w;
                }
                let speed = SPEEDS[rng.random_range(0..SPEEDS.len())];
                let owner = if rng.random_bool(0.25) {
                    rng.random_range(0.0..0.5) * cpus
                } else {
                    0.0
                };
                (cpus, speed, owner)
            }
        };
        let mut n = Node::new(name, cpus, speed);
        n.owner_load = owner;
        nodes.push(n);
    }
    let slots: u32 = nodes.iter().map(Node::slots).sum();
    let total = ((sc.batch_factor * f64::from(slots)).ceil() as usize).max(sc.workstations);
    let mut jobs = Vec::with_capacity(total);
    for ws in 0..sc.workstations {
        let n = total / sc.workstations + usize::from(ws < total % sc.workstations);
        for _ in 0..n {
            let (exe, work) = match sc.mix {
                Mix::Uniform => (EXES[0], rng.random_range(0.5..1.5)),
                Mix::Skewed => {
                    if rng.random_bool(0.8) {
                        let z = normal(&mut rng);
                        (EXES[1], (0.8 * (0.8 * z).exp()).min(20.0))
                    } else {
                        (EXES[2], rng.random_range(0.05..0.15))
                    }
                }
            };
            jobs.push((ws, exe, work));
        }
    }
    Setup {
        nodes,
        jobs,
        warm: false,
        history: Vec::new(),
    }
}

/// The omniscient offline schedule's makespan (seconds): longest job first onto the
/// slot that completes it earliest, with the simulation's latencies and cold penalties
/// (a node's first job of an executable pays the fetch), no faults.
pub fn omniscient(setup: &Setup, sc: &Scenario) -> f64 {
    let mut order: Vec<usize> = (0..setup.jobs.len()).collect();
    order.sort_by(|&a, &b| setup.jobs[b].2.total_cmp(&setup.jobs[a].2).then(a.cmp(&b)));
    list_schedule(setup, sc, &order)
}

/// The same omniscient scheduler bound to queue order: each workstation's jobs in the
/// order they were queued (workstations interleaved). What FIFO costs by itself.
pub fn omniscient_fifo(setup: &Setup, sc: &Scenario) -> f64 {
    let mut rank = vec![0usize; sc.workstations.max(1)];
    let mut order: Vec<(usize, usize, usize)> = setup
        .jobs
        .iter()
        .enumerate()
        .map(|(j, &(ws, _, _))| {
            rank[ws] += 1;
            (rank[ws], ws, j)
        })
        .collect();
    order.sort_unstable();
    let order: Vec<usize> = order.into_iter().map(|(_, _, j)| j).collect();
    list_schedule(setup, sc, &order)
}

/// Makespan (seconds) of placing the jobs in `order`, each onto the slot that completes
/// it earliest, knowing its exact work.
fn list_schedule(setup: &Setup, sc: &Scenario, order: &[usize]) -> f64 {
    let lat = sc.latency.as_secs_f64();
    let cold = if setup.warm {
        0.0
    } else {
        sc.cold_penalty.as_secs_f64()
    };
    let rates: Vec<f64> = setup
        .nodes
        .iter()
        .map(|n| f64::from(n.slot_rate()))
        .collect();
    // Per node, its slots' free times as a min-heap of non-negative floats (bit order
    // of non-negative f64 is their numeric order).
    let mut free: Vec<BinaryHeap<std::cmp::Reverse<u64>>> = setup
        .nodes
        .iter()
        .map(|n| {
            (0..n.slots())
                .map(|_| std::cmp::Reverse(0f64.to_bits()))
                .collect()
        })
        .collect();
    // When a node has fetched an executable (fetched with its first job there).
    let mut fetched: HashMap<(usize, &str), f64> = HashMap::new();
    let mut makespan: f64 = 0.0;
    for &j in order {
        let (ws, exe, work) = setup.jobs[j];
        let mut best: Option<(f64, usize)> = None;
        for (n, heap) in free.iter().enumerate() {
            let Some(&std::cmp::Reverse(t)) = heap.peek() else {
                continue;
            };
            let t = f64::from_bits(t);
            let end = if n == ws {
                t + work / rates[n]
            } else {
                let ready = fetched.get(&(n, exe)).copied().unwrap_or(t + lat + cold);
                t.max(ready - lat) + 2.0 * lat + work / rates[n]
            };
            if best.is_none_or(|(b, _)| end < b) {
                best = Some((end, n));
            }
        }
        let Some((end, n)) = best else { continue };
        let start = f64::from_bits(free[n].pop().map_or(0, |r| r.0));
        free[n].push(std::cmp::Reverse(end.to_bits()));
        if n != ws {
            fetched.entry((n, exe)).or_insert(start + lat + cold);
        }
        makespan = makespan.max(end);
    }
    makespan
}

/// Σ slot rates of the cluster: reference cores.
fn capacity(setup: &Setup) -> f64 {
    setup
        .nodes
        .iter()
        .map(|n| f64::from(n.slots()) * f64::from(n.slot_rate()))
        .sum()
}

/// `total work / Σ slot rates`, in seconds: the ideal makespan of `batch-bench`.
pub fn ideal(setup: &Setup) -> f64 {
    setup.jobs.iter().map(|j| j.2).sum::<f64>() / capacity(setup)
}

/// `max(total work / Σ slot rates, largest job / fastest slot rate)`, in seconds.
pub fn lower_bound(setup: &Setup) -> f64 {
    let fastest = setup
        .nodes
        .iter()
        .map(|n| f64::from(n.slot_rate()))
        .fold(0.0, f64::max);
    let largest = setup.jobs.iter().map(|j| j.2).fold(0.0, f64::max);
    ideal(setup).max(largest / fastest)
}

/// Runs one scenario to the end (or to a stall, recorded as a violation).
pub fn run(sc: &Scenario) -> Outcome {
    let setup = setup(sc);
    let omni = omniscient(&setup, sc);
    let omni_fifo = omniscient_fifo(&setup, sc);
    let lb = lower_bound(&setup);
    let ideal = ideal(&setup);
    let mut sim = PlacementSim::new(sc, &setup, omni);
    sim.run(omni);
    let makespan = sim.makespan as f64 / NS;
    Outcome {
        seed: sc.seed,
        slots: setup.nodes.iter().map(Node::slots).sum(),
        jobs: setup.jobs.len(),
        makespan_s: makespan,
        omniscient_s: omni,
        omniscient_fifo_s: omni_fifo,
        lower_bound_s: lb,
        ideal_s: ideal,
        gap: makespan / omni - 1.0,
        reruns: sim.reruns,
        rejections: sim.rejections,
        discarded: sim.discarded,
        crashes: sim.crashes,
        partitions: sim.partitions,
        place_calls: sim.place_calls,
        last_dispatch_s: sim.last_dispatch as f64 / NS,
        last_job: sim.last_job,
        per_node: sim.per_node,
        violations: sim.violations,
        trace_hash: sim.trace,
    }
}

struct PlacementSim<'a> {
    sc: &'a Scenario,
    /// What `place` is given (the scenario's, adjusted when clairvoyant).
    params: Params,
    now: u64,
    rng: ChaCha8Rng,
    events: BinaryHeap<Queued>,
    seq: u64,
    hosts: Vec<Host>,
    by_name: HashMap<String, usize>,
    jobs: Vec<SimJob>,
    tasks: Vec<Task>,
    ws: Vec<Workstation>,
    done: usize,
    makespan: u64,
    reruns: u64,
    rejections: u64,
    discarded: u64,
    crashes: usize,
    partitions: usize,
    place_calls: u64,
    last_dispatch: u64,
    last_job: (f64, f64, f64),
    per_node: Vec<u32>,
    violations: Vec<String>,
    trace: u64,
}

impl<'a> PlacementSim<'a> {
    fn new(sc: &'a Scenario, setup: &Setup, omni: f64) -> Self {
        let n_hosts = setup.nodes.len();
        assert!(
            sc.workstations >= 1 && sc.workstations <= n_hosts,
            "seed={}: {} workstations for {} nodes",
            sc.seed,
            sc.workstations,
            n_hosts
        );
        let hosts: Vec<Host> = setup
            .nodes
            .iter()
            .map(|n| Host {
                name: n.name.clone(),
                slots: n.slots() as usize,
                rate: f64::from(n.slot_rate()),
                up: true,
                cut: false,
                cut_epoch: 0,
                running: Vec::new(),
                warm_at: vec![setup.warm.then_some(0); EXES.len()],
                held: Vec::new(),
            })
            .collect();
        let by_name = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.clone(), i))
            .collect();
        let mut jobs = Vec::with_capacity(setup.jobs.len());
        let mut ws: Vec<Workstation> = (0..sc.workstations)
            .map(|w| {
                let view = setup
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let mut v = n.clone();
                        v.local = i == w;
                        if setup.warm {
                            v.warm = EXES.iter().map(|e| (*e).to_owned()).collect();
                        }
                        v
                    })
                    .collect();
                let mut est = Estimator::new();
                for &(exe, work) in &setup.history {
                    est.record(exe, Duration::from_secs_f64(work), 1.0);
                }
                Workstation {
                    node: w,
                    first_job: 0,
                    queue: Vec::new(),
                    view,
                    own: vec![Vec::new(); n_hosts],
                    down: vec![false; n_hosts],
                    reported: vec![0; n_hosts],
                    refused: vec![0; n_hosts],
                    est,
                    place_pending: false,
                }
            })
            .collect();
        for (g, &(w, exe, work)) in setup.jobs.iter().enumerate() {
            if ws[w].queue.is_empty() {
                ws[w].first_job = g;
            }
            let id = (g - ws[w].first_job) as u64 + 1;
            let key = job_key(sc, exe, id);
            if sc.clairvoyant {
                for _ in 0..2 {
                    ws[w].est.record(&key, Duration::from_secs_f64(work), 1.0);
                }
            }
            ws[w].queue.push(Job::new(id, key));
            jobs.push(SimJob {
                ws: w,
                id,
                exe: EXES.iter().position(|e| *e == exe).unwrap_or(0),
                work,
                attempt: 0,
                avoid: Vec::new(),
                accepted: 0,
            });
        }
        let mut params = sc.params;
        if sc.clairvoyant {
            params.cold_penalty = Duration::ZERO;
        }
        let mut sim = Self {
            sc,
            params,
            now: 0,
            rng: ChaCha8Rng::seed_from_u64(sc.seed),
            events: BinaryHeap::new(),
            seq: 0,
            hosts,
            by_name,
            jobs,
            tasks: Vec::new(),
            ws,
            done: 0,
            makespan: 0,
            reruns: 0,
            rejections: 0,
            discarded: 0,
            crashes: 0,
            partitions: 0,
            place_calls: 0,
            last_dispatch: 0,
            last_job: (0.0, 0.0, 0.0),
            per_node: vec![0; n_hosts],
            violations: Vec::new(),
            trace: 0xcbf2_9ce4_8422_2325 ^ sc.seed,
        };
        for n in 0..sim.hosts.len() {
            let phase = sim.rng.random_range(0..ns(sc.report_interval).max(1));
            sim.push(phase, Ev::Report { node: n });
        }
        for w in 0..sim.ws.len() {
            sim.schedule_place(w);
        }
        sim.schedule_faults(omni);
        sim
    }

    /// Crashes and cuts distinct non-workstation hosts at random times within the first
    /// 10–60 % of the omniscient makespan.
    fn schedule_faults(&mut self, omni: f64) {
        let mut victims: Vec<usize> = (self.sc.workstations..self.hosts.len()).collect();
        victims.shuffle(&mut self.rng);
        let crashes = self.sc.crashes.min(victims.len());
        let cuts = self.sc.partitions.min(victims.len() - crashes);
        for (k, &node) in victims.iter().take(crashes + cuts).enumerate() {
            let at = secs_ns(omni * self.rng.random_range(0.1..0.6));
            if k < crashes {
                self.push(at, Ev::Crash { node });
            } else {
                let heal_after = secs_ns(self.rng.random_range(2.0..12.0));
                self.push(at, Ev::Cut { node, heal_after });
            }
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!(
                "seed={} t={:.3}s: {what}",
                self.sc.seed,
                self.now as f64 / NS
            ));
        }
    }

    fn latency(&self, ws: usize, node: usize) -> u64 {
        if self.ws[ws].node == node {
            0
        } else {
            ns(self.sc.latency)
        }
    }

    fn run(&mut self, omni: f64) {
        let limit = secs_ns(50.0 * omni + 300.0);
        while self.done < self.jobs.len() {
            let Some(q) = self.events.pop() else {
                self.violation("no events left before every job finished".into());
                break;
            };
            if q.at > limit {
                self.violation(format!(
                    "{} of {} jobs done at the time limit",
                    self.done,
                    self.jobs.len()
                ));
                break;
            }
            self.now = q.at;
            let (kind, arg) = q.ev.code();
            for w in [q.at, kind, arg] {
                for b in w.to_le_bytes() {
                    self.trace ^= u64::from(b);
                    self.trace = self.trace.wrapping_mul(0x100_0000_01b3);
                }
            }
            self.handle(q.ev);
        }
        for (j, job) in self.jobs.iter().enumerate() {
            if job.accepted != 1 && self.violations.len() < 20 {
                self.violations.push(format!(
                    "seed={}: job {j} (ws {} id {}) accepted {} times",
                    self.sc.seed, job.ws, job.id, job.accepted
                ));
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Place { ws } => self.place(ws),
            Ev::Arrive { task } => self.arrive(task),
            Ev::Finish { task } => self.finish(task),
            Ev::Result { task } => self.result(task),
            Ev::Refused { task } => {
                if self.untrack(task) {
                    self.rejections += 1;
                    let t = &self.tasks[task];
                    let (job, node) = (t.job, t.node);
                    let w = self.jobs[job].ws;
                    self.ws[w].refused[node] += 1;
                    self.ws[w].view[node].others =
                        self.ws[w].reported[node] + self.ws[w].refused[node];
                    self.requeue(job, None);
                }
            }
            Ev::Unreached { task } => {
                if self.untrack(task) {
                    let t = &self.tasks[task];
                    let (job, node) = (t.job, t.node);
                    self.reruns += 1;
                    self.requeue(job, Some(node));
                }
            }
            Ev::Report { node } => self.report(node),
            Ev::ReportArrive { ws, node, others } => {
                let w = &mut self.ws[ws];
                let changed = w.down[node] || w.reported[node] != others || w.refused[node] != 0;
                w.down[node] = false;
                w.view[node].accepting = true;
                w.reported[node] = others;
                w.refused[node] = 0;
                w.view[node].others = others;
                if changed && !w.queue.is_empty() {
                    self.schedule_place(ws);
                }
            }
            Ev::Crash { node } => {
                self.crashes += 1;
                let h = &mut self.hosts[node];
                h.up = false;
                for t in std::mem::take(&mut h.running) {
                    self.tasks[t].on_node = false;
                }
                h.held.clear();
                self.arm_detection(node);
            }
            Ev::Cut { node, heal_after } => {
                self.partitions += 1;
                let h = &mut self.hosts[node];
                h.cut = true;
                h.cut_epoch += 1;
                self.arm_detection(node);
                self.push(self.now + heal_after, Ev::Heal { node });
            }
            Ev::Heal { node } => {
                let h = &mut self.hosts[node];
                h.cut = false;
                for t in std::mem::take(&mut h.held) {
                    let w = self.jobs[self.tasks[t].job].ws;
                    let at = self.now + self.latency(w, node);
                    self.push(at, Ev::Result { task: t });
                }
            }
            Ev::Detect { ws, node, epoch } => {
                let h = &self.hosts[node];
                let still = !h.up || (h.cut && h.cut_epoch == epoch);
                if still {
                    self.ws[ws].down[node] = true;
                    self.ws[ws].view[node].accepting = false;
                    for t in self.ws[ws].own[node].clone() {
                        if self.untrack(t) {
                            self.reruns += 1;
                            self.requeue(self.tasks[t].job, Some(node));
                        }
                    }
                    self.schedule_place(ws);
                }
            }
        }
    }

    fn arm_detection(&mut self, node: usize) {
        let at = self.now + ns(self.sc.detect_delay);
        let epoch = self.hosts[node].cut_epoch;
        for ws in 0..self.ws.len() {
            if self.ws[ws].node != node {
                self.push(at, Ev::Detect { ws, node, epoch });
            }
        }
    }

    fn schedule_place(&mut self, ws: usize) {
        if !self.ws[ws].place_pending {
            self.ws[ws].place_pending = true;
            self.push(self.now + ns(self.sc.coalesce), Ev::Place { ws });
        }
    }

    /// Stops tracking `task` at its workstation; false if it was not tracked.
    fn untrack(&mut self, task: usize) -> bool {
        let t = &mut self.tasks[task];
        if !t.tracked {
            return false;
        }
        t.tracked = false;
        let (node, w) = (t.node, self.jobs[t.job].ws);
        let ws = &mut self.ws[w];
        if let Some(k) = ws.own[node].iter().position(|&x| x == task) {
            ws.own[node].swap_remove(k);
            ws.view[node].running.swap_remove(k);
        }
        true
    }

    /// Puts `job` back at the head of its workstation's queue (a new attempt), avoiding
    /// `avoid` from now on.
    fn requeue(&mut self, job: usize, avoid: Option<usize>) {
        let j = &mut self.jobs[job];
        j.attempt += 1;
        if let Some(n) = avoid {
            let name = self.hosts[n].name.clone();
            if !j.avoid.contains(&name) {
                j.avoid.push(name);
            }
        }
        let mut q = Job::new(j.id, job_key(self.sc, EXES[j.exe], j.id));
        q.avoid = j.avoid.clone();
        let w = j.ws;
        self.ws[w].queue.insert(0, q);
        self.schedule_place(w);
    }

    fn place(&mut self, w: usize) {
        self.ws[w].place_pending = false;
        if self.ws[w].queue.is_empty() {
            return;
        }
        self.place_calls += 1;
        let now = self.now;
        let ws = &mut self.ws[w];
        for (view, own) in ws.view.iter_mut().zip(&ws.own) {
            for (r, &t) in view.running.iter_mut().zip(own) {
                r.elapsed = Duration::from_nanos(now - self.tasks[t].dispatched);
            }
        }
        let out = place(&ws.view, &ws.queue, &ws.est, &self.params);
        // The view-level contract.
        let mut per_node: HashMap<usize, u32> = HashMap::new();
        let mut problems = Vec::new();
        let mut assigned = HashSet::new();
        let mut dispatch = Vec::with_capacity(out.len());
        for a in &out {
            let Some(&n) = self.by_name.get(&a.node) else {
                problems.push(format!("ws{w}: assignment to unknown node {}", a.node));
                continue;
            };
            let c = per_node.entry(n).or_default();
            *c += 1;
            let v = &ws.view[n];
            if *c > v.free_slots() {
                problems.push(format!("ws{w}: more jobs than free slots on {}", a.node));
            }
            if ws.down[n] || !v.accepting {
                problems.push(format!(
                    "ws{w}: job {} sent to {}, detected down",
                    a.job, a.node
                ));
            }
            let job = ws.first_job + (a.job as usize - 1);
            if self.jobs[job].avoid.contains(&a.node) {
                problems.push(format!("ws{w}: job {} sent to avoided {}", a.job, a.node));
            }
            if !assigned.insert(a.job) {
                problems.push(format!("ws{w}: job {} assigned twice", a.job));
            }
            dispatch.push((job, n));
        }
        ws.queue.retain(|j| !assigned.contains(&j.id));
        for p in problems {
            self.violation(p);
        }
        for (job, n) in dispatch {
            self.dispatch(w, job, n);
        }
    }

    fn dispatch(&mut self, w: usize, job: usize, node: usize) {
        let task = self.tasks.len();
        self.last_dispatch = self.last_dispatch.max(self.now);
        let j = &self.jobs[job];
        self.tasks.push(Task {
            job,
            node,
            attempt: j.attempt,
            tracked: true,
            on_node: false,
            dispatched: self.now,
            compute: secs_ns(j.work / self.hosts[node].rate),
        });
        let exe = EXES[j.exe];
        let id = j.id;
        let key = job_key(self.sc, exe, id);
        let ws = &mut self.ws[w];
        ws.own[node].push(task);
        ws.view[node].running.push(Running {
            job: id,
            exe: key,
            elapsed: Duration::ZERO,
        });
        if !ws.view[node].is_warm(exe) {
            ws.view[node].warm.push(exe.to_owned());
        }
        let at = self.now + self.latency(w, node);
        self.push(at, Ev::Arrive { task });
    }

    fn arrive(&mut self, task: usize) {
        let (job, node) = (self.tasks[task].job, self.tasks[task].node);
        let w = self.jobs[job].ws;
        let local = self.ws[w].node == node;
        let h = &self.hosts[node];
        if !h.up || (h.cut && !local) {
            // Nobody got it; the workstation gives up after the detection delay.
            let at = self.tasks[task].dispatched + ns(self.sc.detect_delay);
            self.push(at.max(self.now), Ev::Unreached { task });
            return;
        }
        if h.running.len() >= h.slots {
            if self.sc.workstations == 1 {
                self.violation(format!(
                    "{} refused a task with a single workstation (its view is exact)",
                    h.name
                ));
            }
            let at = self.now + self.latency(w, node);
            self.push(at, Ev::Refused { task });
            return;
        }
        let exe = self.jobs[job].exe;
        let h = &mut self.hosts[node];
        let ready = if local {
            self.now
        } else {
            *h.warm_at[exe].get_or_insert(self.now + ns(self.sc.cold_penalty))
        };
        h.running.push(task);
        let over = h.running.len() > h.slots;
        let name = h.name.clone();
        self.tasks[task].on_node = true;
        let end = ready.max(self.now) + self.tasks[task].compute;
        self.push(end, Ev::Finish { task });
        if over {
            self.violation(format!("{name} runs more tasks than its slots"));
        }
        if self.sc.report_on_change {
            self.send_reports(node);
        }
    }

    fn finish(&mut self, task: usize) {
        if !self.tasks[task].on_node {
            return; // its node crashed
        }
        self.tasks[task].on_node = false;
        let node = self.tasks[task].node;
        let h = &mut self.hosts[node];
        if let Some(k) = h.running.iter().position(|&t| t == task) {
            h.running.swap_remove(k);
        }
        let w = self.jobs[self.tasks[task].job].ws;
        if h.cut && self.ws[w].node != node {
            h.held.push(task);
        } else {
            let at = self.now + self.latency(w, node);
            self.push(at, Ev::Result { task });
            if self.sc.report_on_change {
                self.send_reports(node);
            }
        }
    }

    fn result(&mut self, task: usize) {
        let (job, node, attempt) = {
            let t = &self.tasks[task];
            (t.job, t.node, t.attempt)
        };
        let current = self.tasks[task].tracked && self.jobs[job].attempt == attempt;
        if !current {
            self.discarded += 1;
            return;
        }
        self.untrack(task);
        let j = &mut self.jobs[job];
        j.accepted += 1;
        self.per_node[node] += 1;
        let (w, exe) = (j.ws, EXES[j.exe]);
        self.done += 1;
        if self.now >= self.makespan {
            self.makespan = self.now;
            let t = &self.tasks[task];
            self.last_job = (
                self.jobs[job].work,
                self.hosts[node].rate,
                t.dispatched as f64 / NS,
            );
        }
        let rate = self.ws[w].view[node].slot_rate();
        let t = &self.tasks[task];
        let runtime = Duration::from_nanos(if self.sc.learn_elapsed {
            self.now - t.dispatched
        } else {
            t.compute
        });
        if !self.sc.clairvoyant {
            self.ws[w].est.record(exe, runtime, rate);
        }
        self.schedule_place(w);
    }

    fn report(&mut self, node: usize) {
        let (up, cut) = (self.hosts[node].up, self.hosts[node].cut);
        if !up {
            return;
        }
        let next = self.now + ns(self.sc.report_interval);
        self.push(next, Ev::Report { node });
        if !cut {
            self.send_reports(node);
        }
    }

    /// Samples `node`'s task count and sends it to every workstation.
    fn send_reports(&mut self, node: usize) {
        for ws in 0..self.ws.len() {
            let h = &self.hosts[node];
            let mine = h
                .running
                .iter()
                .filter(|&&t| self.tasks[t].tracked && self.jobs[self.tasks[t].job].ws == ws)
                .count();
            let others = (h.running.len() - mine) as u32;
            let delay = if self.ws[ws].node == node {
                0
            } else {
                let (lo, hi) = (ns(self.sc.report_delay.0), ns(self.sc.report_delay.1));
                self.rng.random_range(lo..=hi.max(lo))
            };
            self.push(self.now + delay, Ev::ReportArrive { ws, node, others });
        }
    }
}

/// The executable a job is queued under: its own name, or a per-job key when the
/// scenario is clairvoyant.
fn job_key(sc: &Scenario, exe: &str, id: u64) -> String {
    if sc.clairvoyant {
        format!("{exe}#{id}")
    } else {
        exe.to_owned()
    }
}

/// Median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omniscient_is_between_the_lower_bound_and_a_naive_schedule() {
        let sc = Scenario::new(10, true, 1, Mix::Uniform, false, 3);
        let s = setup(&sc);
        let lb = lower_bound(&s);
        let om = omniscient(&s, &sc);
        assert!(om >= lb, "{om} < {lb}");
        // Everything on the fastest slot alone is far worse.
        let fastest = s
            .nodes
            .iter()
            .map(|n| f64::from(n.slot_rate()))
            .fold(0.0, f64::max);
        let serial: f64 = s.jobs.iter().map(|j| j.2).sum::<f64>() / fastest;
        assert!(om < serial / 2.0, "{om} vs serial {serial}");
    }

    #[test]
    fn setup_sizes_the_batch_from_the_slots() {
        let sc = Scenario::new(10, false, 2, Mix::Skewed, false, 1);
        let s = setup(&sc);
        assert_eq!(s.nodes.len(), 10);
        assert_eq!(s.jobs.len(), 5 * 40);
        assert_eq!(s.jobs.iter().filter(|j| j.0 == 1).count(), 100);
        assert!(s.jobs.iter().any(|j| j.1 == "as") && s.jobs.iter().any(|j| j.1 == "cc1"));
    }
}
