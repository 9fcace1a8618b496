//! The placement algorithm: earliest-completion list scheduling of the queue over the
//! nodes' slots, returning only the jobs that start now (see the crate documentation
//! for the rules).
//!
//! Each call rebuilds, per node, the times at which its slots free (0 for a free slot)
//! and walks the queue once. Ordinary jobs find the earliest completion through one
//! lazily updated min-heap per executable (a slot's free time only grows during a call,
//! so a stale heap entry is a lower bound and is refreshed when it surfaces); jobs with
//! constraints scan every node. Both paths apply the same rule, [`choose`].

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::{Assignment, Estimator, Job, JobId, Node, Params};

/// Absolute slack (seconds) on the band comparison, against rounding.
const EPS: f64 = 1e-9;

/// An overdue task is expected to run this fraction of its elapsed time more.
const OVERDUE_FRACTION: f64 = 0.25;

/// A time in seconds from now, totally ordered.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Secs(f64);

impl Eq for Secs {}
impl PartialOrd for Secs {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Secs {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One node's slots during a call.
struct Slots {
    usable: bool,
    local: bool,
    /// Reference cores per slot (> 0 when usable).
    rate: f64,
    /// Slots free now.
    free: u32,
    /// When each other slot frees (seconds from now).
    busy: BinaryHeap<Reverse<Secs>>,
    /// Memory left for the jobs assigned in this call; None when unknown.
    mem_left: Option<u64>,
    name_hash: u64,
    /// Bumped whenever a slot is taken (invalidates heap entries).
    version: u32,
}

impl Slots {
    fn new(node: &Node, est: &Estimator, default: f64) -> Self {
        let k = node.slots();
        let usable = node.accepting && k > 0;
        let rate = f64::from(node.slot_rate());
        let mut s = Self {
            usable,
            local: node.local,
            rate,
            free: 0,
            busy: BinaryHeap::new(),
            mem_left: (node.mem_free > 0).then_some(node.mem_free),
            name_hash: fnv1a(node.name.as_bytes()),
            version: 0,
        };
        if !usable {
            return s;
        }
        let others = node.others.min(k) as usize;
        let mut times: Vec<f64> = Vec::with_capacity(node.running.len() + others);
        for r in &node.running {
            let work = est.estimate(&r.exe).map_or(default, |d| d.as_secs_f64());
            let elapsed = r.elapsed.as_secs_f64();
            times.push((work / rate - elapsed).max(elapsed * OVERDUE_FRACTION));
        }
        times.extend(std::iter::repeat_n(default, others));
        let busy = u32::try_from(node.running.len())
            .unwrap_or(u32::MAX)
            .saturating_add(node.others);
        s.free = k.saturating_sub(busy);
        // With b tasks on k < b slots, a slot frees each time one of the k longest ends.
        let k = k as usize;
        if times.len() > k {
            let cut = times.len() - k;
            times.select_nth_unstable_by(cut, f64::total_cmp);
            times.drain(..cut);
        }
        s.busy = times.into_iter().map(|t| Reverse(Secs(t))).collect();
        s
    }

    /// Seconds until a slot frees (0 when one is free now).
    fn next_free(&self) -> f64 {
        if self.free > 0 {
            0.0
        } else {
            self.busy.peek().map_or(f64::INFINITY, |r| r.0.0)
        }
    }

    /// Takes the earliest slot until `until`.
    fn take(&mut self, until: f64) {
        if self.free > 0 {
            self.free -= 1;
        } else {
            self.busy.pop();
        }
        self.busy.push(Reverse(Secs(until)));
        self.version = self.version.wrapping_add(1);
    }
}

/// What a call knows about one executable.
struct Exe {
    /// Estimated work, reference-core seconds.
    work: f64,
    /// The work nodes are compared with: `work + risk × spread`, with the risk of
    /// [`effective_risk`].
    pessimistic: f64,
    /// Per node: has it cached.
    warm: Vec<bool>,
    /// Per node: seconds until the executable is there (the cold penalty, or 0).
    ready: Vec<f64>,
    /// Earliest completion over usable nodes, built on first use by an ordinary job.
    heap: Option<BinaryHeap<Reverse<(Secs, usize, u32)>>>,
    /// The nodes that had a free slot at first use by an ordinary job, by completion (a
    /// free node's completion does not change during a call), and how many of the
    /// first ones are known to be full since.
    free_sorted: Option<(Vec<(Secs, usize)>, usize)>,
}

impl Exe {
    fn new(exe: &str, nodes: &[Node], est: &Estimator, params: &Params, risk: f64) -> Self {
        let work = est
            .estimate(exe)
            .unwrap_or(params.default_estimate)
            .as_secs_f64();
        // Until two tasks finished, the spread is taken to be as large as the work.
        let spread = est.spread(exe).map_or(work, |d| d.as_secs_f64());
        let cold = params.cold_penalty.as_secs_f64();
        let warm: Vec<bool> = nodes.iter().map(|n| n.is_warm(exe)).collect();
        let ready = warm.iter().map(|&w| if w { 0.0 } else { cold }).collect();
        Self {
            work,
            pessimistic: work + risk * spread,
            warm,
            ready,
            heap: None,
            free_sorted: None,
        }
    }

    /// Expected run time of one job of this executable on node `i` once it starts.
    fn run_time(&self, st: &[Slots], i: usize) -> f64 {
        self.work / st[i].rate
    }

    /// Pessimistic run time on node `i`.
    fn risky_run_time(&self, st: &[Slots], i: usize) -> f64 {
        self.pessimistic / st[i].rate
    }

    /// When one job of this executable would start on node `i`: when a slot frees and
    /// the executable is there (one fetch serves every job on the node).
    fn start(&self, st: &[Slots], i: usize) -> f64 {
        st[i].next_free().max(self.ready[i])
    }

    /// Expected completion on node `i` (what the slot is booked until).
    fn completion(&self, st: &[Slots], i: usize) -> f64 {
        self.start(st, i) + self.run_time(st, i)
    }

    /// Pessimistic completion on node `i`, by which nodes are compared: a slow node
    /// stretches the uncertainty of the job's size as much as its mean.
    fn score(&self, st: &[Slots], i: usize) -> f64 {
        self.start(st, i) + self.risky_run_time(st, i)
    }
}

/// Assigns queued jobs to free slots (see the crate documentation).
///
/// Returns the jobs to start now, in queue order, with their nodes. Jobs not returned
/// stay queued: they wait for a better node to free, or no node can take them.
pub fn place(nodes: &[Node], queue: &[Job], est: &Estimator, params: &Params) -> Vec<Assignment> {
    let margin = f64::from(params.stability_margin);
    let margin = if margin.is_finite() {
        margin.max(0.0)
    } else {
        0.0
    };
    let default = params.default_estimate.as_secs_f64();
    let salt = nodes
        .iter()
        .find(|n| n.local)
        .map_or(0, |n| fnv1a(n.name.as_bytes()));

    let mut st: Vec<Slots> = nodes.iter().map(|n| Slots::new(n, est, default)).collect();
    let slots = nodes
        .iter()
        .zip(&st)
        .filter(|(_, s)| s.usable)
        .fold(0u64, |acc, (n, _)| acc + u64::from(n.slots()));
    let risk = effective_risk(params.risk, slots);
    let mut free_list: Vec<usize> = (0..st.len())
        .filter(|&i| st[i].usable && st[i].free > 0)
        .collect();
    let locals: Vec<usize> = (0..st.len())
        .filter(|&i| st[i].usable && st[i].local)
        .collect();
    let mut exes: HashMap<&str, Exe, Fast> = HashMap::default();
    let mut seen: HashSet<JobId, Fast> = HashSet::default();
    let mut scratch: Vec<(usize, f64)> = Vec::new();
    let mut out = Vec::new();

    for job in queue {
        if free_list.is_empty() {
            break;
        }
        if !seen.insert(job.id) {
            continue;
        }
        let exe = exes
            .entry(job.exe.as_str())
            .or_insert_with(|| Exe::new(&job.exe, nodes, est, params, risk));
        let ctx = Ctx {
            job: job.id,
            salt,
            margin,
        };
        let choice = if job.is_unconstrained() {
            fast(&st, exe, &free_list, &locals, &ctx)
        } else {
            scan(nodes, &st, exe, job, &ctx, &mut scratch)
        };
        let Some(i) = choice else { continue };
        let until = exe.completion(&st, i);
        let now = st[i].free > 0;
        st[i].take(until);
        if now {
            if job.mem > 0
                && let Some(m) = st[i].mem_left.as_mut()
            {
                *m = m.saturating_sub(job.mem);
            }
            if st[i].free == 0 {
                free_list.retain(|&x| x != i);
            }
            out.push(Assignment {
                job: job.id,
                node: nodes[i].name.clone(),
            });
        }
    }
    out
}

/// How many standard deviations later than expected a completion is taken to be:
/// [`Params::risk`], at most the expected maximum of as many standard normal draws as
/// the cluster has usable slots (the makespan is the latest of the slots' completions,
/// so a job's spread weighs as much as it can move that maximum).
fn effective_risk(risk: f32, slots: u64) -> f64 {
    let risk = f64::from(risk);
    let risk = if risk.is_finite() { risk.max(0.0) } else { 0.0 };
    risk.min(expected_max_of_normals(slots))
}

/// The expected maximum of `n` independent standard normal draws, by Blom's formula
/// `Φ⁻¹((n − 0.375) / (n + 0.25))` (within 0.03 of the exact value for every `n`;
/// 0 for `n` ≤ 1).
fn expected_max_of_normals(n: u64) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let n = n as f64;
    // Upper tail q = 1 − p, and Abramowitz and Stegun 26.2.23 (error < 4.5e-4).
    let q = 0.625 / (n + 0.25);
    let t = (-2.0 * q.ln()).sqrt();
    t - (2.515_517 + t * (0.802_853 + t * 0.010_328))
        / (1.0 + t * (1.432_788 + t * (0.189_269 + t * 0.001_308)))
}

/// Per-job constants of the choice.
struct Ctx {
    job: JobId,
    salt: u64,
    margin: f64,
}

/// An ordinary job: the earliest completion from the executable's heap, then the local
/// nodes and the nodes with a free slot (from the executable's sorted list, so that a
/// call where no free node is good enough costs O(log nodes) per job).
fn fast(
    st: &[Slots],
    exe: &mut Exe,
    free_list: &[usize],
    locals: &[usize],
    ctx: &Ctx,
) -> Option<usize> {
    let mut heap = match exe.heap.take() {
        Some(h) => h,
        None => (0..st.len())
            .filter(|&i| st[i].usable)
            .map(|i| Reverse((Secs(exe.score(st, i)), i, st[i].version)))
            .collect(),
    };
    let best = loop {
        let Some(&Reverse((Secs(t), i, v))) = heap.peek() else {
            break None;
        };
        if v == st[i].version {
            break Some((i, t));
        }
        heap.pop();
        heap.push(Reverse((Secs(exe.score(st, i)), i, st[i].version)));
    };
    exe.heap = Some(heap);
    let best = best?;
    if exe.free_sorted.is_none() {
        let mut v: Vec<(Secs, usize)> = free_list
            .iter()
            .map(|&i| (Secs(exe.score(st, i)), i))
            .collect();
        v.sort_unstable();
        exe.free_sorted = Some((v, 0));
    }
    if let Some((list, head)) = exe.free_sorted.as_mut() {
        while *head < list.len() && st[list[*head].1].free == 0 {
            *head += 1;
        }
    }
    let exe: &Exe = exe;
    let Some((list, head)) = exe.free_sorted.as_ref() else {
        return Some(best.0);
    };
    let bands = Bands::new(st, best, exe.risky_run_time(st, best.0), ctx.margin);
    let free = list[*head..]
        .iter()
        .take_while(|(t, _)| t.0 <= bands.free)
        .filter(|&&(_, i)| st[i].free > 0)
        .map(|&(t, i)| (i, t.0, exe.warm[i]));
    Some(choose(
        st,
        best,
        &bands,
        locals.iter().map(|&i| (i, exe.score(st, i))),
        free,
        ctx,
    ))
}

/// A job with constraints: every node is checked.
fn scan(
    nodes: &[Node],
    st: &[Slots],
    exe: &Exe,
    job: &Job,
    ctx: &Ctx,
    scratch: &mut Vec<(usize, f64)>,
) -> Option<usize> {
    scratch.clear();
    for (i, node) in nodes.iter().enumerate() {
        if eligible(node, &st[i], job) {
            scratch.push((i, exe.score(st, i)));
        }
    }
    let best = scratch
        .iter()
        .copied()
        .min_by(|a, b| Secs(a.1).cmp(&Secs(b.1)).then(a.0.cmp(&b.0)))?;
    let bands = Bands::new(st, best, exe.risky_run_time(st, best.0), ctx.margin);
    Some(choose(
        st,
        best,
        &bands,
        scratch.iter().copied().filter(|&(i, _)| st[i].local),
        scratch
            .iter()
            .copied()
            .filter(|&(i, _)| st[i].free > 0)
            .map(|(i, t)| (i, t, exe.warm[i])),
        ctx,
    ))
}

fn eligible(node: &Node, s: &Slots, job: &Job) -> bool {
    s.usable
        && (if s.local { job.local_ok } else { job.remote_ok })
        && job.pin.as_ref().is_none_or(|p| *p == node.name)
        && !job.avoid.contains(&node.name)
        && (job.mem == 0 || s.mem_left.is_none_or(|m| job.mem <= m))
}

/// How much later than the best a node may complete a job and still get it.
struct Bands {
    /// For the local node: `best + margin × run`.
    local: f64,
    /// For a node with a free slot: the same if `best` has a free slot too, else `best`
    /// (whether to wait for a busy node is decided on completions alone; the margin only
    /// chooses between nodes that can all start the job now).
    free: f64,
}

impl Bands {
    /// `best` is the eligible node with the earliest (pessimistic) completion and `run`
    /// the job's pessimistic run time there.
    fn new(st: &[Slots], best: (usize, f64), run: f64, margin: f64) -> Self {
        let local = best.1 + margin * run + EPS;
        let free = if st[best.0].free > 0 {
            local
        } else {
            best.1 + EPS
        };
        Self { local, free }
    }
}

/// The rule: the local node within its band; else a node with a free slot within its
/// band (warm first, then earliest completion, then the tie hash); else wait for
/// `best`, the eligible node with the earliest completion (ties: lowest index).
/// Completions here are the pessimistic scores.
fn choose(
    st: &[Slots],
    best: (usize, f64),
    bands: &Bands,
    locals: impl Iterator<Item = (usize, f64)>,
    free: impl Iterator<Item = (usize, f64, bool)>,
    ctx: &Ctx,
) -> usize {
    let local = locals
        .filter(|&(_, t)| t <= bands.local)
        .min_by(|a, b| Secs(a.1).cmp(&Secs(b.1)).then(a.0.cmp(&b.0)));
    if let Some((i, _)) = local {
        return i;
    }
    free.filter(|&(_, t, _)| t <= bands.free)
        .map(|(i, t, warm)| {
            (
                !warm,
                Secs(t),
                tie_hash(ctx.job, st[i].name_hash, ctx.salt),
                i,
            )
        })
        .min()
        .map_or(best.0, |(_, _, _, i)| i)
}

/// A cheap hasher for the call's own maps (keys are the caller's, not an attacker's).
type Fast = BuildHasherDefault<FnvHasher>;

/// FNV-1a as a [`Hasher`], with integers mixed by splitmix64.
#[derive(Default)]
struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a_from(self.0 ^ 0xcbf2_9ce4_8422_2325, bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = mix(self.0 ^ n);
    }
}

/// FNV-1a: a stable hash of a name (the same on every workstation and every build).
fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The tie-break between nodes with exactly the same expected completion.
fn tie_hash(job: JobId, node: u64, salt: u64) -> u64 {
    mix(mix(job ^ salt).wrapping_add(node))
}

#[cfg(test)]
mod tests;
