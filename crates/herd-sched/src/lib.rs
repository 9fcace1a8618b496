//! Placement: a pure function from the cluster view and the queue to assignments.
//!
//! The workstation's agent keeps a queue of tasks its users submitted (`herd run`,
//! `herd map` batches, compiler calls offloaded by `make -j`) and knows the cluster from
//! gossip. Whenever something changes (a job queued, a task finished, a load report
//! arrived) it calls [`place`] and dispatches exactly the [`Assignment`]s returned.
//! Nothing here reads a clock, opens a socket or draws a random number: the same input
//! always gives the same output.
//!
//! # The model
//!
//! * A [`Node`] offers [`Node::slots`] slots: `max(1, round(effective_cpus))` where
//!   `effective_cpus = max(0, cpus − owner_load)` (a node with no effective CPU offers
//!   none). One slot runs one task at [`Node::slot_rate`] = `speed × min(1,
//!   effective_cpus / slots)` reference cores, so a 0.25-core quota gives one slot at a
//!   quarter speed.
//! * A job's *work* is its run time on one reference core. The [`Estimator`] learns its
//!   mean and spread per executable from finished tasks; an unknown executable costs
//!   [`Params::default_estimate`] with a spread as large. Run time on a node = work /
//!   slot rate. A node that has not cached the executable starts it
//!   [`Params::cold_penalty`] late (one fetch serves every job that starts there; the
//!   local node is always warm).
//! * A slot of a busy node frees when a task there ends: our own tasks by their estimate
//!   minus the time they already ran (an overdue task is given a quarter of its elapsed
//!   time more), other submitters' tasks ([`Node::others`]) after one default estimate.
//! * Nodes are compared by a job's *pessimistic completion*: when its slot frees, plus
//!   the run time of a job `r` standard deviations larger than the mean. A slow node
//!   stretches the uncertainty of a job's size as much as its mean, so it gets a job
//!   only when even a large one would not finish later there; slots are still booked
//!   by the mean.
//! * How large is large depends on the cluster: `r = min(`[`Params::risk`]`, e(N))`,
//!   where `N` is the number of slots of the usable nodes (accepting, with at least one
//!   slot, busy or not) and `e(N)` the expected maximum of `N` independent standard
//!   normal draws, by Blom's formula `Φ⁻¹((N − 0.375) / (N + 0.25))` (0 for `N` ≤ 1;
//!   e(2) ≈ 0.59, e(4) ≈ 1.05, e(27) ≈ 2.0, e(100) ≈ 2.5). The makespan is the latest
//!   of the slots' completions, and the latest of `N` completions of similar spread
//!   lies about `e(N)` standard deviations after their mean: a job's spread moves the
//!   expected makespan that much and no more. In a large cluster some slot draws a long
//!   job at the tail, so a slow node must be safe against one; in a cluster of four
//!   slots the latest is only about one standard deviation late, and keeping the slowest
//!   node idle for fear of two would leave the faster nodes a job too many. The default
//!   risk of 2 is the bound from 28 slots up.
//!
//! # The algorithm
//!
//! [`place`] list-schedules the queue in order (FIFO): each job goes, *in a simulation
//! of the near future*, to the slot where it is expected to complete earliest, and that
//! slot is then booked until the job's expected end. Only jobs whose chosen slot is free
//! **now** are returned; the others stay queued (**late binding**, as in Sparrow: a job
//! is never bound to a busy node, so a slow host never hoards the tail of a batch).
//! Jobs that wait still hold their place in the simulation, so a later job may start on
//! a slower free node while earlier ones wait for faster nodes: each does what completes
//! it earliest given the jobs ahead of it, and a job's placement never depends on the
//! jobs behind it.
//!
//! For one job, let `best` be its earliest pessimistic completion over every eligible
//! node (busy nodes included) and `band = best + stability_margin × its run time
//! there`:
//!
//! 1. if the local node completes it within `band`, the local node (no transfer, always
//!    warm): now, or as soon as a local slot frees;
//! 2. else, if `best` is a node with a free slot, the job starts now on a free node
//!    within `band`: one that has the executable cached if any, then the earliest, then
//!    between exact ties the smallest stable hash of (job id, node name, local node
//!    name), so that workstations with the same view spread instead of piling onto one
//!    node (the herd effect);
//! 3. else `best` is busy: the job starts now only on a free node that completes it no
//!    later, otherwise it waits for `best` (at the tail of a batch it is better to wait
//!    for a fast node that frees soon than to start on a very slow free node). Both
//!    completions are the pessimistic ones of the model, `r` standard deviations late:
//!    in a small cluster `r` is small, so the slowest node takes a job at the tail when
//!    waiting for a faster one would complete it later on average by at least `r`
//!    times the difference of their spreads.
//!
//! The margin keeps placements stable (as in MOSIX): a load change smaller than the
//! margin does not move a job away from the local node or a warm node, nor between
//! nodes that can all start it now. Whether to wait for a busy node is decided on
//! completions alone: a margin there would hand the last jobs of a batch to slow nodes.
//!
//! A job never goes to a node that is not [`Node::accepting`], that it must
//! [`Job::avoid`], whose free memory is known to be smaller than the job's (memory is
//! booked by the jobs assigned in the same call), or that its [`Job::pin`],
//! [`Job::local_ok`] and [`Job::remote_ok`] exclude. A node never gets more jobs than
//! its free slots ([`Node::free_slots`]). A job id queued twice is placed once.
//!
//! # Cost
//!
//! One call is O(nodes × (distinct executables + running tasks) + queue × log nodes)
//! for ordinary jobs, plus the free nodes good enough for each job; a job with
//! constraints (avoid, pin, memory, local or remote only) costs O(nodes). The call
//! stops as soon as no slot is free. About 2 ms for 1,000 nodes and 18,000 queued jobs.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use herd_sched::{Estimator, Job, Node, Params, place, slots};
//!
//! let mut local = Node::new("ws", 2.0, 1.0);
//! local.local = true;
//! let fast = Node::new("fast", 4.0, 2.0);
//! let nodes = vec![local, fast];
//! assert_eq!(slots(&nodes), 6);
//!
//! let mut est = Estimator::new();
//! est.record("cc1", Duration::from_secs(2), 1.0); // 2 s on a reference core
//!
//! let queue: Vec<Job> = (1..=3).map(|id| Job::new(id, "cc1")).collect();
//! let out = place(&nodes, &queue, &est, &Params::default());
//! // The fast node is twice as fast as the local one (the cold penalty included), far
//! // more than the 15 % margin: the first jobs go there.
//! assert_eq!(out.len(), 3);
//! assert!(out.iter().all(|a| a.node == "fast"));
//! ```

mod estimator;
mod place;

use std::time::Duration;

pub use estimator::Estimator;
pub use place::place;

/// Identifies a job within the submitting agent. Ties are broken by a hash that mixes
/// in the local node's name, so equal ids on different workstations still spread.
pub type JobId = u64;

/// One node as the workstation sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Node name, as in membership.
    pub name: String,
    /// This is the workstation itself: no transfer, always warm.
    pub local: bool,
    /// The node takes work now: alive, has the exec role, not draining, owner not busy.
    pub accepting: bool,
    /// Cores granted to herd (may be fractional under a cgroup quota).
    pub cpus: f32,
    /// Per-core speed score (1.0 ≈ the reference core).
    pub speed: f32,
    /// Cores used by the owner's own (non-herd) work.
    pub owner_load: f32,
    /// Memory free for herd, in bytes; 0 when unknown.
    pub mem_free: u64,
    /// Herd tasks of *other* submitters running there (from the node's load report:
    /// its task count minus our own tasks it included).
    pub others: u32,
    /// Our own tasks running there (exact).
    pub running: Vec<Running>,
    /// Executables this node has cached (those we sent it).
    pub warm: Vec<String>,
}

impl Node {
    /// An idle, accepting, remote node with no owner load and unknown memory.
    pub fn new(name: impl Into<String>, cpus: f32, speed: f32) -> Self {
        Self {
            name: name.into(),
            local: false,
            accepting: true,
            cpus,
            speed,
            owner_load: 0.0,
            mem_free: 0,
            others: 0,
            running: Vec::new(),
            warm: Vec::new(),
        }
    }

    /// Cores left to herd: `max(0, cpus − owner_load)` (0 for nonsense values).
    pub fn effective_cpus(&self) -> f32 {
        let e = self.cpus - self.owner_load.max(0.0);
        if e.is_finite() && e > 0.0 { e } else { 0.0 }
    }

    /// Slots the node offers: `max(1, round(effective_cpus))`, or 0 when it has no
    /// effective CPU or no positive speed (it could not make progress).
    pub fn slots(&self) -> u32 {
        let e = self.effective_cpus();
        if e <= 0.0 || !(self.speed.is_finite() && self.speed > 0.0) {
            0
        } else {
            // Saturating float-to-int conversion; a million slots is plenty.
            (e.round() as u32).clamp(1, 1 << 20)
        }
    }

    /// Reference cores one slot delivers: `speed × min(1, effective_cpus / slots)`.
    pub fn slot_rate(&self) -> f32 {
        match self.slots() {
            0 => 0.0,
            s => self.speed * (self.effective_cpus() / s as f32).min(1.0),
        }
    }

    /// Slots free now: slots − own running − others, at least 0.
    pub fn free_slots(&self) -> u32 {
        let busy = u32::try_from(self.running.len())
            .unwrap_or(u32::MAX)
            .saturating_add(self.others);
        self.slots().saturating_sub(busy)
    }

    /// Whether the node has `exe` cached (the local node always has).
    pub fn is_warm(&self, exe: &str) -> bool {
        self.local || self.warm.iter().any(|w| w == exe)
    }
}

/// One of our own tasks running on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// The job it runs.
    pub job: JobId,
    /// Its executable (for the estimate).
    pub exe: String,
    /// How long it has been running.
    pub elapsed: Duration,
}

/// One queued job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Identifier, unique within the queue.
    pub id: JobId,
    /// Executable (the key of the estimate and of warm caches).
    pub exe: String,
    /// Memory it needs, in bytes; 0 when unknown.
    pub mem: u64,
    /// Nodes it must not go to (it was lost or evicted there).
    pub avoid: Vec<String>,
    /// The only node it may run on (`herd run --on NODE`); it waits while that is busy.
    pub pin: Option<String>,
    /// It may run on the local node.
    pub local_ok: bool,
    /// It may run on a remote node.
    pub remote_ok: bool,
}

impl Job {
    /// A job that may run anywhere, with unknown memory.
    pub fn new(id: JobId, exe: impl Into<String>) -> Self {
        Self {
            id,
            exe: exe.into(),
            mem: 0,
            avoid: Vec::new(),
            pin: None,
            local_ok: true,
            remote_ok: true,
        }
    }

    /// Whether the job has no constraint beyond the node's own state.
    pub fn is_unconstrained(&self) -> bool {
        self.avoid.is_empty()
            && self.pin.is_none()
            && self.mem == 0
            && self.local_ok
            && self.remote_ok
    }
}

/// Tuning of [`place`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Relative slack (0.15 = 15 %) within which a start now, the local node or a warm
    /// node is preferred to the earliest expected completion.
    pub stability_margin: f32,
    /// Extra run time on a node that has not cached the executable.
    pub cold_penalty: Duration,
    /// Work (reference-core time) of a job whose executable has no estimate yet; also
    /// how long another submitter's task is assumed to keep its slot.
    pub default_estimate: Duration,
    /// Nodes are compared by the completion of a job `risk` standard deviations larger
    /// than the mean ([`Estimator::spread`]), at most as many as the latest of the
    /// cluster's slots is expected to lie after their mean (see the crate docs); 0
    /// compares mean completions.
    pub risk: f32,
}

impl Default for Params {
    /// Margin 15 %, cold penalty 250 ms, default estimate 1 s, risk 2.
    fn default() -> Self {
        Self {
            stability_margin: 0.15,
            cold_penalty: Duration::from_millis(250),
            default_estimate: Duration::from_secs(1),
            risk: 2.0,
        }
    }
}

/// Start `job` on `node` now.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The node's name.
    pub node: String,
}

/// The width a build should run at: the cluster's slots and a quarter more, at least
/// one, so that a task's start and commit (the workstation sends it, the helper builds
/// its root; its outputs come back) overlap other tasks' work instead of leaving a slot
/// idle meanwhile. `herd slots` prints it and `herd shell`'s jobserver holds it.
pub fn jobserver_width(slots: u32) -> u32 {
    slots.saturating_add(slots.div_ceil(4)).max(1)
}

/// The slots of all accepting nodes, at least 1 (`herd slots` prints their
/// [`jobserver_width`]).
pub fn slots(nodes: &[Node]) -> u32 {
    nodes
        .iter()
        .filter(|n| n.accepting)
        .fold(0u32, |acc, n| acc.saturating_add(n.slots()))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_effective_cpus_and_keep_fractions_as_one_slow_slot() {
        let quota = Node::new("q", 0.25, 1.0);
        assert_eq!((quota.slots(), quota.slot_rate()), (1, 0.25));
        let mut busy_owner = Node::new("o", 4.0, 2.0);
        busy_owner.owner_load = 1.5;
        // 2.5 cores left: 3 slots (round half away from zero) at 2.5/3 of a core each.
        assert_eq!(busy_owner.slots(), 3);
        assert!((busy_owner.slot_rate() - 2.0 * 2.5 / 3.0).abs() < 1e-6);
        let mut full = Node::new("f", 2.0, 1.0);
        full.owner_load = 2.5;
        assert_eq!((full.slots(), full.slot_rate()), (0, 0.0));
        let broken = Node::new("b", f32::NAN, 1.0);
        assert_eq!(broken.slots(), 0);
        let stopped = Node::new("s", 2.0, 0.0);
        assert_eq!(stopped.slots(), 0);
    }

    #[test]
    fn free_slots_subtract_own_and_others_tasks() {
        let mut n = Node::new("n", 4.0, 1.0);
        n.others = 1;
        n.running.push(Running {
            job: 1,
            exe: "x".into(),
            elapsed: Duration::ZERO,
        });
        assert_eq!(n.free_slots(), 2);
        n.others = 7;
        assert_eq!(n.free_slots(), 0);
    }

    #[test]
    fn cluster_slots_count_accepting_nodes_and_are_at_least_one() {
        let mut a = Node::new("a", 8.0, 1.0);
        let b = Node::new("b", 0.5, 1.0);
        assert_eq!(slots(&[a.clone(), b.clone()]), 9);
        a.accepting = false;
        assert_eq!(slots(&[a.clone(), b]), 1);
        assert_eq!(slots(&[a]), 1);
        assert_eq!(slots(&[]), 1);
    }
}
