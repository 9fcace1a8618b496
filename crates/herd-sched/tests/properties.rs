//! Property tests of `place`: the invariants every call keeps, whatever the cluster and
//! the queue, and equality with a slow reference implementation written straight from
//! the rules in the crate documentation.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use herd_sched::{Assignment, Estimator, Job, Node, Params, Running, place, slots};
use proptest::prelude::*;

const EXES: [&str; 4] = ["a", "b", "c", "d"];
const GIB: u64 = 1 << 30;

fn node_strategy(i: usize) -> impl Strategy<Value = Node> {
    (
        (
            prop::bool::weighted(0.9),
            prop_oneof![
                Just(0.25f32),
                Just(0.5),
                Just(1.0),
                Just(2.0),
                Just(4.0),
                0.0f32..8.0
            ],
            prop_oneof![Just(1.0f32), Just(2.0), 0.0f32..3.0],
            prop_oneof![Just(0.0f32), 0.0f32..4.0],
        ),
        (
            prop_oneof![Just(0u64), Just(GIB), Just(4 * GIB)],
            prop_oneof![Just(0u32), 0u32..4],
            prop::collection::vec((0usize..4, 0.0f64..3.0), 0..4),
            prop::collection::vec(0usize..4, 0..3),
        ),
    )
        .prop_map(
            move |((accepting, cpus, speed, owner_load), (mem_free, others, running, warm))| Node {
                name: format!("n{i}"),
                local: false,
                accepting,
                cpus,
                speed,
                owner_load,
                mem_free,
                others,
                running: running
                    .into_iter()
                    .enumerate()
                    .map(|(k, (e, s))| Running {
                        job: 1000 + (i * 10 + k) as u64,
                        exe: EXES[e].into(),
                        elapsed: Duration::from_secs_f64(s),
                    })
                    .collect(),
                warm: warm.into_iter().map(|e| EXES[e].to_string()).collect(),
            },
        )
}

fn nodes_strategy() -> impl Strategy<Value = Vec<Node>> {
    (1usize..10, any::<bool>())
        .prop_flat_map(|(n, has_local)| {
            let nodes: Vec<_> = (0..n).map(node_strategy).collect();
            (nodes, Just(has_local))
        })
        .prop_map(|(mut nodes, has_local)| {
            nodes[0].local = has_local;
            nodes
        })
}

fn job_strategy() -> impl Strategy<Value = Job> {
    (
        0u64..40,
        0usize..4,
        prop_oneof![4 => Just(0u64), 1 => Just(GIB / 2), 1 => Just(2 * GIB), 1 => Just(8 * GIB)],
        prop::collection::vec(0usize..11, 0..2),
        prop_oneof![6 => Just(None), 1 => (0usize..11).prop_map(Some)],
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(id, exe, mem, avoid, pin, local_ok, remote_ok)| Job {
            id,
            exe: EXES[exe].into(),
            mem,
            avoid: avoid.into_iter().map(|i| format!("n{i}")).collect(),
            pin: pin.map(|i| format!("n{i}")),
            local_ok,
            remote_ok,
        })
}

fn estimator_strategy() -> impl Strategy<Value = Estimator> {
    prop::collection::vec((0usize..4, 0.0f64..4.0, 0.1f32..3.0), 0..8).prop_map(|samples| {
        let mut e = Estimator::new();
        for (exe, secs, rate) in samples {
            e.record(EXES[exe], Duration::from_secs_f64(secs), rate);
        }
        e
    })
}

fn params_strategy() -> impl Strategy<Value = Params> {
    (0.0f32..0.5, 0.0f64..1.0, 0.1f64..3.0, 0.0f32..2.0).prop_map(|(m, c, d, r)| Params {
        stability_margin: m,
        cold_penalty: Duration::from_secs_f64(c),
        default_estimate: Duration::from_secs_f64(d),
        risk: r,
    })
}

/// A reference implementation of the rules, O(queue × nodes × slots), no cleverness.
fn reference(nodes: &[Node], queue: &[Job], est: &Estimator, p: &Params) -> Vec<Assignment> {
    fn fnv1a(bytes: &[u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        h
    }
    fn mix(mut x: u64) -> u64 {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    struct S {
        usable: bool,
        rate: f64,
        free: u32,
        busy: Vec<f64>,
        mem: Option<u64>,
    }
    let margin = f64::from(p.stability_margin).max(0.0);
    let default = p.default_estimate.as_secs_f64();
    let work = |exe: &str| est.estimate(exe).map_or(default, |d| d.as_secs_f64());
    let salt = nodes
        .iter()
        .find(|n| n.local)
        .map_or(0, |n| fnv1a(n.name.as_bytes()));
    let mut st: Vec<S> = nodes
        .iter()
        .map(|n| {
            let k = n.slots();
            let rate = f64::from(n.slot_rate());
            let mut times: Vec<f64> = n
                .running
                .iter()
                .map(|r| {
                    let e = r.elapsed.as_secs_f64();
                    (work(&r.exe) / rate - e).max(e * 0.25)
                })
                .collect();
            times.extend(std::iter::repeat_n(default, n.others as usize));
            times.sort_by(f64::total_cmp);
            let busy = times.len();
            let keep = times.split_off(busy.saturating_sub(k as usize));
            S {
                usable: n.accepting && k > 0,
                rate,
                free: (k as usize).saturating_sub(busy) as u32,
                busy: keep,
                mem: (n.mem_free > 0).then_some(n.mem_free),
            }
        })
        .collect();
    // The risk: at most the expected maximum of as many standard normal draws as there
    // are usable slots (Blom's formula with Abramowitz and Stegun 26.2.23, as documented).
    let usable_slots: u64 = nodes
        .iter()
        .zip(&st)
        .filter(|(_, s)| s.usable)
        .map(|(n, _)| u64::from(n.slots()))
        .sum();
    let e_max = if usable_slots <= 1 {
        0.0
    } else {
        let q = 0.625 / (usable_slots as f64 + 0.25);
        let t = (-2.0 * q.ln()).sqrt();
        t - (2.515_517 + t * (0.802_853 + t * 0.010_328))
            / (1.0 + t * (1.432_788 + t * (0.189_269 + t * 0.001_308)))
    };
    let risk = f64::from(p.risk).max(0.0).min(e_max);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for job in queue {
        if !st.iter().any(|s| s.usable && s.free > 0) {
            break;
        }
        if !seen.insert(job.id) {
            continue;
        }
        let w = work(&job.exe);
        let spread = est.spread(&job.exe).map_or(w, |d| d.as_secs_f64());
        let pessimistic = w + risk * spread;
        let mut cands: Vec<(usize, f64)> = Vec::new();
        let mut run = vec![f64::NAN; nodes.len()];
        let mut booked = vec![f64::NAN; nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            let s = &st[i];
            let ok = s.usable
                && (if n.local { job.local_ok } else { job.remote_ok })
                && job.pin.as_ref().is_none_or(|x| *x == n.name)
                && !job.avoid.contains(&n.name)
                && (job.mem == 0 || s.mem.is_none_or(|m| job.mem <= m));
            if !ok {
                continue;
            }
            let next = if s.free > 0 {
                0.0
            } else {
                s.busy.iter().copied().fold(f64::INFINITY, f64::min)
            };
            let pen = if n.is_warm(&job.exe) {
                0.0
            } else {
                p.cold_penalty.as_secs_f64()
            };
            run[i] = pessimistic / s.rate;
            booked[i] = next.max(pen) + w / s.rate;
            cands.push((i, next.max(pen) + pessimistic / s.rate));
        }
        let by_time = |a: &(usize, f64), b: &(usize, f64)| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0));
        let Some(&best) = cands.iter().min_by(|a, b| by_time(a, b)) else {
            continue;
        };
        let band = best.1 + margin * run[best.0] + 1e-9;
        let local = cands
            .iter()
            .filter(|(i, t)| nodes[*i].local && *t <= band)
            .min_by(|a, b| by_time(a, b));
        let free_band = if st[best.0].free > 0 {
            band
        } else {
            best.1 + 1e-9
        };
        let now = cands
            .iter()
            .filter(|(i, t)| st[*i].free > 0 && *t <= free_band)
            .min_by_key(|(i, t)| {
                let h = mix(mix(job.id ^ salt).wrapping_add(fnv1a(nodes[*i].name.as_bytes())));
                (!nodes[*i].is_warm(&job.exe), TotalF64(*t), h, *i)
            });
        let (i, _) = *local.or(now).unwrap_or(&best);
        let t = booked[i];
        let s = &mut st[i];
        if s.free > 0 {
            s.free -= 1;
            s.busy.push(t);
            if job.mem > 0
                && let Some(m) = s.mem.as_mut()
            {
                *m = m.saturating_sub(job.mem);
            }
            out.push(Assignment {
                job: job.id,
                node: nodes[i].name.clone(),
            });
        } else {
            let j = (0..s.busy.len())
                .min_by(|&a, &b| s.busy[a].total_cmp(&s.busy[b]))
                .expect("a usable node without a free slot has a busy one");
            s.busy[j] = t;
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
struct TotalF64(f64);
impl Eq for TotalF64 {}
impl PartialOrd for TotalF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TotalF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn check_invariants(
    nodes: &[Node],
    queue: &[Job],
    out: &[Assignment],
) -> Result<(), TestCaseError> {
    let mut per_node: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
    let mut ids = HashSet::new();
    let mut last_pos = None;
    for a in out {
        prop_assert!(ids.insert(a.job), "job {} assigned twice", a.job);
        let pos = queue.iter().position(|j| j.id == a.job);
        prop_assert!(pos.is_some(), "job {} is not queued", a.job);
        prop_assert!(pos > last_pos, "assignments out of queue order");
        last_pos = pos;
        let job = &queue[pos.unwrap_or_default()];
        let node = nodes.iter().find(|n| n.name == a.node);
        prop_assert!(node.is_some(), "unknown node {}", a.node);
        let node = node.unwrap_or(&nodes[0]);
        prop_assert!(node.accepting, "{} is not accepting", node.name);
        prop_assert!(!job.avoid.contains(&node.name), "job avoids {}", node.name);
        prop_assert!(
            job.pin.as_ref().is_none_or(|p| *p == node.name),
            "pin broken"
        );
        let allowed = if node.local {
            job.local_ok
        } else {
            job.remote_ok
        };
        prop_assert!(allowed, "local/remote flags broken on {}", node.name);
        let e = per_node.entry(&node.name).or_default();
        e.0 += 1;
        e.1 += job.mem;
    }
    for (name, (count, mem)) in per_node {
        let node = nodes.iter().find(|n| n.name == name).unwrap_or(&nodes[0]);
        prop_assert!(
            count <= node.free_slots(),
            "{name}: {count} jobs for {} free slots",
            node.free_slots()
        );
        prop_assert!(
            node.mem_free == 0 || mem <= node.mem_free,
            "{name}: {mem} bytes of jobs for {} free",
            node.mem_free
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_the_result_equals_the_reference(
        nodes in nodes_strategy(),
        queue in prop::collection::vec(job_strategy(), 0..40),
        est in estimator_strategy(),
        params in params_strategy(),
    ) {
        let out = place(&nodes, &queue, &est, &params);
        check_invariants(&nodes, &queue, &out)?;
        prop_assert_eq!(&out, &reference(&nodes, &queue, &est, &params));
        // Deterministic.
        prop_assert_eq!(&out, &place(&nodes, &queue, &est, &params));
    }

    /// FIFO: a job's placement never depends on the jobs queued after it.
    #[test]
    fn later_jobs_never_change_earlier_placements(
        nodes in nodes_strategy(),
        queue in prop::collection::vec(job_strategy(), 1..40),
        est in estimator_strategy(),
        params in params_strategy(),
        cut in any::<prop::sample::Index>(),
    ) {
        let k = cut.index(queue.len() + 1);
        let full = place(&nodes, &queue, &est, &params);
        let prefix = place(&nodes, &queue[..k], &est, &params);
        let first: HashSet<u64> = queue[..k].iter().map(|j| j.id).collect();
        let expected: Vec<Assignment> =
            full.into_iter().filter(|a| first.contains(&a.job)).collect();
        prop_assert_eq!(prefix, expected);
    }

    /// With every node idle and a usable one among them, the first job starts now.
    #[test]
    fn an_idle_cluster_starts_the_first_job(
        nodes in nodes_strategy(),
        n in 1usize..30,
        est in estimator_strategy(),
        params in params_strategy(),
    ) {
        let mut nodes = nodes;
        for node in &mut nodes {
            node.running.clear();
            node.others = 0;
        }
        let queue: Vec<Job> = (0..n as u64).map(|i| Job::new(i, EXES[i as usize % 4])).collect();
        let out = place(&nodes, &queue, &est, &params);
        let usable = nodes.iter().any(|n| n.accepting && n.slots() > 0);
        prop_assert_eq!(usable, out.first().is_some_and(|a| a.job == 0), "{:?}", out);
    }

    /// A node better than every other by more than the margin keeps the job when the
    /// loads move a little (a few percent of a core).
    #[test]
    fn small_load_changes_do_not_move_a_job_off_a_clearly_best_node(
        speeds in prop::collection::vec(0.2f32..2.0, 1..8),
        best_at in any::<prop::sample::Index>(),
        jitter in prop::collection::vec(0.0f32..0.04, 8),
        margin in 0.0f32..0.3,
        id in any::<u64>(),
    ) {
        let top = speeds.iter().copied().fold(0.0, f32::max);
        let best_at = best_at.index(speeds.len() + 1);
        // Others at most top; the best node 1.1 × (1 + margin) faster than that.
        let mut nodes: Vec<Node> = speeds
            .iter()
            .enumerate()
            .map(|(i, &s)| Node::new(format!("n{i}"), 1.0, s))
            .collect();
        nodes.insert(best_at, Node::new("best", 1.0, top * 1.1 * (1.0 + margin)));
        let params = Params { stability_margin: margin, cold_penalty: Duration::ZERO, ..Params::default() };
        let job = [Job::new(id, "x")];
        let est = Estimator::new();
        prop_assert_eq!(&place(&nodes, &job, &est, &params)[0].node, "best");
        for (n, j) in nodes.iter_mut().zip(&jitter) {
            n.owner_load = *j;
        }
        prop_assert_eq!(&place(&nodes, &job, &est, &params)[0].node, "best");
    }

    /// The local node (or a warm one) within the margin keeps the job when a remote
    /// node's load moves but stays within the margin.
    #[test]
    fn small_load_changes_do_not_move_a_job_off_the_incumbent(
        advantage in 1.0f32..1.1,
        load in 0.0f32..0.04,
        warm_incumbent in any::<bool>(),
        id in any::<u64>(),
    ) {
        let mut incumbent = Node::new("inc", 1.0, 1.0);
        if warm_incumbent {
            incumbent.warm.push("x".into());
        } else {
            incumbent.local = true;
        }
        let mut rival = Node::new("rival", 1.0, advantage);
        let params = Params { stability_margin: 0.15, cold_penalty: Duration::ZERO, ..Params::default() };
        let job = [Job::new(id, "x")];
        let est = Estimator::new();
        let before = place(&[rival.clone(), incumbent.clone()], &job, &est, &params);
        rival.owner_load = load;
        incumbent.owner_load = 0.04 - load;
        let after = place(&[rival, incumbent], &job, &est, &params);
        prop_assert_eq!(&before[0].node, "inc");
        prop_assert_eq!(&after[0].node, "inc");
    }

    /// `slots` is the sum over accepting nodes, at least one; a cluster of identical
    /// idle nodes starts exactly min(queue, slots) jobs.
    #[test]
    fn cluster_slots_bound_what_an_idle_cluster_starts(
        nodes in nodes_strategy(),
        est in estimator_strategy(),
        params in params_strategy(),
    ) {
        let mut nodes = nodes;
        let total: u32 = nodes.iter().filter(|n| n.accepting).map(|n| n.slots()).sum();
        prop_assert_eq!(slots(&nodes), total.max(1));
        let (cpus, speed) = (nodes[0].cpus, nodes[0].speed);
        for node in &mut nodes {
            node.running.clear();
            node.others = 0;
            node.local = false;
            node.warm.clear();
            node.owner_load = 0.0;
            node.cpus = cpus;
            node.speed = speed;
        }
        let total: u32 = nodes.iter().filter(|n| n.accepting).map(|n| n.slots()).sum();
        let queue: Vec<Job> = (0..100).map(|i| Job::new(i, "a")).collect();
        let out = place(&nodes, &queue, &est, &params);
        prop_assert_eq!(out.len() as u32, total.min(100));
    }
}
