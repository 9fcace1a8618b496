//! Concrete placement cases, each a small cluster with one expected outcome.

use std::time::Duration;

use crate::{Assignment, Estimator, Job, Node, Params, Running, place};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Params with no cold penalty and mean completions unless a test wants otherwise.
fn params() -> Params {
    Params {
        stability_margin: 0.15,
        cold_penalty: Duration::ZERO,
        default_estimate: secs(1.0),
        risk: 0.0,
    }
}

fn est(exe: &str, work: f64) -> Estimator {
    let mut e = Estimator::new();
    e.record(exe, secs(work), 1.0);
    e
}

fn jobs(ids: std::ops::RangeInclusive<u64>) -> Vec<Job> {
    ids.map(|i| Job::new(i, "x")).collect()
}

fn running(job: u64, elapsed: f64) -> Running {
    Running {
        job,
        exe: "x".into(),
        elapsed: secs(elapsed),
    }
}

/// Node names of the assignments, in order.
fn names(out: &[Assignment]) -> Vec<&str> {
    out.iter().map(|a| a.node.as_str()).collect()
}

#[test]
fn tail_job_waits_for_a_fast_node_that_frees_soon() {
    // fast: 1 slot at speed 4, its task (1 s of work = 0.25 s here) ran 0.2 s: frees in
    // 0.05 s, then runs ours in 0.25 s: done at 0.3 s. slow: free, speed 1: done at 1 s.
    let mut fast = Node::new("fast", 1.0, 4.0);
    fast.running.push(running(100, 0.2));
    let slow = Node::new("slow", 1.0, 1.0);
    let out = place(&[fast, slow], &jobs(1..=1), &est("x", 1.0), &params());
    assert_eq!(out, vec![], "the job must wait for the fast node");
}

#[test]
fn a_long_queue_uses_the_slow_node_for_a_job_that_would_wait_longer() {
    // Same cluster, 6 jobs: the fast node frees at 0.05 s and then completes one job
    // every 0.25 s (0.3, 0.55, 0.8, 1.05, …); the slow node completes one at 1 s, so
    // the job that would finish at 1.05 (or later) on the fast node starts on the slow
    // one now: the fourth in line (the first three wait for the fast node).
    let mut fast = Node::new("fast", 1.0, 4.0);
    fast.running.push(running(100, 0.2));
    let slow = Node::new("slow", 1.0, 1.0);
    let out = place(&[fast, slow], &jobs(1..=6), &est("x", 1.0), &params());
    assert_eq!(
        out,
        vec![Assignment {
            job: 4,
            node: "slow".into()
        }],
    );
}

#[test]
fn without_a_fast_node_in_sight_the_job_starts_on_the_slow_free_node() {
    // The fast node's task has 2 s left: waiting would finish at 2.25 s > 1 s.
    let mut fast = Node::new("fast", 1.0, 4.0);
    fast.running.push(Running {
        job: 100,
        exe: "long".into(),
        elapsed: secs(0.0),
    });
    let slow = Node::new("slow", 1.0, 1.0);
    let mut e = est("x", 1.0);
    e.record("long", secs(8.0), 1.0);
    let out = place(&[fast, slow], &jobs(1..=1), &e, &params());
    assert_eq!(names(&out), ["slow"]);
}

#[test]
fn local_is_preferred_when_equal_and_within_the_margin() {
    let mut local = Node::new("ws", 1.0, 1.0);
    local.local = true;
    let remote = Node::new("r", 1.0, 1.0);
    let out = place(
        &[remote.clone(), local.clone()],
        &jobs(1..=1),
        &est("x", 1.0),
        &params(),
    );
    assert_eq!(names(&out), ["ws"]);
    // 10 % faster remote: still local (within 15 %).
    let faster = Node::new("r", 1.0, 1.1);
    let out = place(
        &[faster, local.clone()],
        &jobs(1..=1),
        &est("x", 1.0),
        &params(),
    );
    assert_eq!(names(&out), ["ws"]);
    // 30 % faster remote: remote.
    let much = Node::new("r", 1.0, 1.3);
    let out = place(&[much, local], &jobs(1..=1), &est("x", 1.0), &params());
    assert_eq!(names(&out), ["r"]);
}

#[test]
fn a_job_waits_for_the_local_node_rather_than_start_on_an_equal_remote() {
    // The local task (1 s of work) ran 0.8 s: its slot frees in 0.2 s, and our 2 s job
    // completes there at 2.2 s ≤ 2 s × 1.15 on the idle remote: the job waits.
    let mut local = Node::new("ws", 1.0, 1.0);
    local.local = true;
    local.running.push(running(100, 0.8));
    let remote = Node::new("r", 1.0, 1.0);
    let mut e = est("x", 1.0);
    e.record("y", secs(2.0), 1.0);
    let nodes = [local, remote];
    let out = place(&nodes, &[Job::new(1, "y")], &e, &params());
    assert_eq!(out, vec![]);
    // A 1 s job would complete locally at 1.2 s > 1.15 s: it starts on the remote.
    let out = place(&nodes, &[Job::new(1, "x")], &e, &params());
    assert_eq!(names(&out), ["r"]);
}

#[test]
fn warm_node_is_preferred_within_the_margin() {
    let mut warm = Node::new("warm", 1.0, 1.0);
    warm.warm.push("x".into());
    let cold = Node::new("cold", 1.0, 1.1);
    let nodes = [cold.clone(), warm.clone()];
    let out = place(&nodes, &jobs(1..=1), &est("x", 1.0), &params());
    assert_eq!(names(&out), ["warm"]);
    // Without margin the faster node wins.
    let strict = Params {
        stability_margin: 0.0,
        ..params()
    };
    let out = place(&nodes, &jobs(1..=1), &est("x", 1.0), &strict);
    assert_eq!(names(&out), ["cold"]);
    // A node twice as fast wins even cold.
    let fast = Node::new("cold", 1.0, 2.0);
    let out = place(&[fast, warm], &jobs(1..=1), &est("x", 1.0), &params());
    assert_eq!(names(&out), ["cold"]);
}

#[test]
fn cold_penalty_counts_in_the_completion() {
    // 1 s of work; the cold node is 20 % faster but pays 0.5 s to fetch the executable.
    let mut warm = Node::new("warm", 1.0, 1.0);
    warm.warm.push("x".into());
    let cold = Node::new("cold", 1.0, 1.2);
    let p = Params {
        stability_margin: 0.0,
        cold_penalty: secs(0.5),
        ..params()
    };
    let out = place(&[cold, warm], &jobs(1..=1), &est("x", 1.0), &p);
    assert_eq!(names(&out), ["warm"]);
}

#[test]
fn owner_load_reduces_capacity() {
    // 4 cores, owner uses 3: one slot left.
    let mut n = Node::new("n", 4.0, 1.0);
    n.owner_load = 3.0;
    let out = place(&[n.clone()], &jobs(1..=4), &est("x", 1.0), &params());
    assert_eq!(out.len(), 1);
    n.owner_load = 0.0;
    let out = place(&[n.clone()], &jobs(1..=4), &est("x", 1.0), &params());
    assert_eq!(out.len(), 4);
    // Owner load makes a node slower, so work moves to an equal idle neighbour.
    n.owner_load = 3.5; // 1 slot at half speed
    let idle = Node::new("idle", 1.0, 1.0);
    let out = place(&[n, idle], &jobs(1..=1), &est("x", 1.0), &params());
    assert_eq!(names(&out), ["idle"]);
}

#[test]
fn other_submitters_tasks_occupy_slots() {
    let mut n = Node::new("n", 4.0, 1.0);
    n.others = 3;
    let out = place(&[n], &jobs(1..=4), &est("x", 1.0), &params());
    assert_eq!(out.len(), 1);
}

#[test]
fn pinned_job_waits_for_its_node_and_others_go_ahead() {
    let mut pinned_node = Node::new("p", 1.0, 1.0);
    pinned_node.running.push(running(100, 0.0));
    let other = Node::new("o", 1.0, 1.0);
    let mut queue = jobs(1..=2);
    queue[0].pin = Some("p".into());
    let out = place(&[pinned_node, other], &queue, &est("x", 1.0), &params());
    assert_eq!(
        out,
        vec![Assignment {
            job: 2,
            node: "o".into()
        }]
    );
}

#[test]
fn avoid_memory_accepting_and_local_remote_flags_are_honoured() {
    let mut local = Node::new("ws", 1.0, 1.0);
    local.local = true;
    local.mem_free = 1 << 30;
    let mut a = Node::new("a", 1.0, 2.0);
    a.mem_free = 4 << 30;
    let mut b = Node::new("b", 1.0, 2.0);
    b.accepting = false;
    let nodes = [local, a, b];
    let e = est("x", 1.0);

    let mut avoid = Job::new(1, "x");
    avoid.avoid.push("a".into());
    assert_eq!(names(&place(&nodes, &[avoid], &e, &params())), ["ws"]);

    let mut big = Job::new(2, "x");
    big.mem = 2 << 30;
    assert_eq!(names(&place(&nodes, &[big.clone()], &e, &params())), ["a"]);
    big.mem = 8 << 30;
    assert_eq!(place(&nodes, &[big], &e, &params()), vec![]);

    let mut local_only = Job::new(3, "x");
    local_only.remote_ok = false;
    assert_eq!(names(&place(&nodes, &[local_only], &e, &params())), ["ws"]);

    let mut remote_only = Job::new(4, "x");
    remote_only.local_ok = false;
    remote_only.avoid.push("a".into());
    assert_eq!(place(&nodes, &[remote_only], &e, &params()), vec![]);
}

#[test]
fn memory_is_booked_by_the_jobs_assigned_in_one_call() {
    let mut a = Node::new("a", 4.0, 1.0);
    a.mem_free = 3 << 30;
    let queue: Vec<Job> = (1..=4)
        .map(|i| {
            let mut j = Job::new(i, "x");
            j.mem = 1 << 30;
            j
        })
        .collect();
    let out = place(&[a], &queue, &est("x", 1.0), &params());
    assert_eq!(out.len(), 3, "{out:?}");
}

#[test]
fn an_overdue_task_is_expected_to_run_a_quarter_of_its_elapsed_time_more() {
    // fast's task is 1 s of work at speed 2 (0.5 s) and ran 4 s: expected to free in
    // 1 s, then 0.5 s for ours: 1.5 s, while slow (speed 1) does it in 1 s: slow now.
    let mut fast = Node::new("fast", 1.0, 2.0);
    fast.running.push(running(100, 4.0));
    let slow = Node::new("slow", 1.0, 1.0);
    let out = place(
        &[fast.clone(), slow.clone()],
        &jobs(1..=1),
        &est("x", 1.0),
        &params(),
    );
    assert_eq!(names(&out), ["slow"]);
    // Ran only 0.8 s (overdue by 0.3 s): a quarter of it, 0.2 s, then 0.5 s: wait.
    fast.running[0].elapsed = secs(0.8);
    let out = place(&[fast, slow], &jobs(1..=1), &est("x", 1.0), &params());
    assert_eq!(out, vec![]);
}

#[test]
fn default_estimate_applies_to_unknown_executables() {
    // Unknown exe, default 1 s: the fast node frees in 0.1 s (its task is unknown too:
    // 1 s of work at speed 10) and finishes ours at 0.2 s: wait rather than 1 s on slow.
    let mut fast = Node::new("fast", 1.0, 10.0);
    fast.running.push(Running {
        job: 100,
        exe: "y".into(),
        elapsed: secs(0.0),
    });
    let slow = Node::new("slow", 1.0, 1.0);
    let out = place(&[fast, slow], &jobs(1..=1), &Estimator::new(), &params());
    assert_eq!(out, vec![]);
}

#[test]
fn identical_nodes_are_spread_by_the_tie_hash() {
    let nodes: Vec<Node> = (0..10)
        .map(|i| Node::new(format!("n{i}"), 1.0, 1.0))
        .collect();
    let mut chosen = std::collections::BTreeSet::new();
    for id in 0..100 {
        let out = place(&nodes, &[Job::new(id, "x")], &est("x", 1.0), &params());
        assert_eq!(out.len(), 1);
        chosen.insert(out[0].node.clone());
    }
    assert!(chosen.len() >= 8, "only {chosen:?}");
    // Two workstations placing the same job id over the same helpers: the local name
    // is mixed in, so they need not agree.
    let differ = (0..20).any(|id| {
        let pick = |ws: &str| {
            let mut local = Node::new(ws, 1.0, 0.5);
            local.local = true;
            let mut all = nodes.clone();
            all.push(local);
            place(&all, &[Job::new(id, "x")], &est("x", 1.0), &params())[0]
                .node
                .clone()
        };
        pick("ws-a") != pick("ws-b")
    });
    assert!(differ);
}

#[test]
fn duplicate_ids_are_assigned_once() {
    let nodes = [Node::new("a", 4.0, 1.0)];
    let queue = [Job::new(7, "x"), Job::new(7, "x")];
    let out = place(&nodes, &queue, &est("x", 1.0), &params());
    assert_eq!(out.len(), 1);
}

#[test]
fn unusable_nodes_get_nothing() {
    let mut full = Node::new("owner-busy", 2.0, 1.0);
    full.owner_load = 2.0;
    let stopped = Node::new("zero-speed", 2.0, 0.0);
    let out = place(&[full, stopped], &jobs(1..=3), &est("x", 1.0), &params());
    assert_eq!(out, vec![]);
}

#[test]
fn fifo_order_decides_who_gets_the_only_slot() {
    let nodes = [Node::new("a", 1.0, 1.0)];
    let out = place(&nodes, &jobs(5..=9), &est("x", 1.0), &params());
    assert_eq!(
        out,
        vec![Assignment {
            job: 5,
            node: "a".into()
        }]
    );
}

#[test]
fn an_uncertain_job_avoids_a_slow_node_that_a_certain_one_would_take() {
    // Long queue ahead: the fast node (speed 4) is booked ~1 s ahead for each of the
    // jobs before; the slow node (speed 0.5) needs 2 s for a mean job. Which job gets
    // the slow node depends on how uncertain the work is.
    let fast = Node::new("fast", 1.0, 4.0);
    let slow = Node::new("slow", 1.0, 0.5);
    let nodes = [fast, slow];
    let p = Params {
        risk: 1.0,
        ..params()
    };
    let first_on_slow = |e: &Estimator| {
        let out = place(&nodes, &jobs(1..=40), e, &p);
        out.iter().find(|a| a.node == "slow").map(|a| a.job)
    };
    // Every job takes exactly 1 s of work: no spread.
    let mut certain = Estimator::new();
    for _ in 0..10 {
        certain.record("x", secs(1.0), 1.0);
    }
    // Half take 0.2 s, half 1.8 s: same mean, spread 0.8 s.
    let mut uncertain = Estimator::new();
    for _ in 0..10 {
        uncertain.record("x", secs(0.2), 1.0);
        uncertain.record("x", secs(1.8), 1.0);
    }
    // No spread: the k-th job completes on fast at 0.25 k and on slow at 2 s, so the
    // 8th is the first that slow does as well. Spread 0.8 s: with two slots the risk is
    // capped at e(2) ≈ 0.589 (the expected maximum of two standard normal draws), so
    // nodes are compared on a 1.47 s job: slow at 2.94 s against 0.25 (k − 1) + 0.368
    // on fast (slots are still booked by the mean): the 12th.
    assert_eq!(first_on_slow(&certain), Some(8));
    let u = first_on_slow(&uncertain).unwrap();
    assert!(
        u > 8,
        "uncertain work must wait longer before the slow node: {u}"
    );
    assert_eq!(u, 12);
}

/// The end of `batch-bench`'s batch: the workstation (0.5 CPU) and helpers of 0.5 and
/// 0.75 CPU have just started a job each (1.5 s of work, spread 0.4 s), the 0.25-CPU
/// helper is idle, and `queued` jobs are left.
fn testbed_tail(queued: u64) -> (Vec<Node>, Vec<Job>, Estimator) {
    let mut ws = Node::new("ws", 0.5, 1.0);
    ws.local = true;
    let mut h2 = Node::new("h2", 0.5, 1.0);
    let mut h3 = Node::new("h3", 0.75, 1.0);
    for (i, n) in [&mut ws, &mut h2, &mut h3].into_iter().enumerate() {
        n.running.push(running(100 + i as u64, 0.0));
    }
    let h1 = Node::new("h1", 0.25, 1.0);
    let mut e = Estimator::with_alpha(0.5);
    e.record("x", secs(1.1), 1.0);
    e.record("x", secs(1.9), 1.0);
    (vec![ws, h1, h2, h3], jobs(1..=queued), e)
}

#[test]
fn the_slowest_node_of_a_small_cluster_takes_a_job_that_would_end_the_batch_later() {
    // Four slots: the risk is capped at e(4) ≈ 1.05, nodes are compared on a 1.92 s
    // job. Mean plan: h3 frees at 2 s, ws and h2 at 3 s. Jobs 1 to 4 wait for h3 (done
    // at 4 and 6 s), ws and h2 (6 s); job 5 would complete at 8 s on h3 (8.56 s
    // pessimistic) or 9 s on ws, and at 6 s on h1 (7.68 s pessimistic): it starts on h1
    // now, and the batch ends at 6 s rather than 8 s. With the full risk of 2 (a 2.3 s
    // job), h1 would offer 9.2 s against 9.07 s on h3 and stay idle.
    let p = Params {
        risk: 2.0,
        ..params()
    };
    let (nodes, queue, e) = testbed_tail(5);
    let out = place(&nodes, &queue, &e, &p);
    assert_eq!(
        out,
        vec![Assignment {
            job: 5,
            node: "h1".into()
        }]
    );
    // Four jobs: the three busy nodes finish them by 6 s; nothing starts now.
    let (nodes, queue, e) = testbed_tail(4);
    assert_eq!(place(&nodes, &queue, &e, &p), vec![]);
}

#[test]
fn in_a_large_cluster_the_full_risk_keeps_a_slow_node_out_of_the_tail() {
    // The same four nodes plus 30 slots that are busy for a long time: with 34 usable
    // slots e(34) ≈ 2.09, so the risk is the full 2 and job 5 waits for h3 (9.07 s
    // pessimistic against 9.2 s on h1).
    let p = Params {
        risk: 2.0,
        ..params()
    };
    let (mut nodes, queue, mut e) = testbed_tail(5);
    e.record("long", secs(100.0), 1.0);
    for i in 0..30 {
        let mut n = Node::new(format!("busy{i}"), 1.0, 1.0);
        n.running.push(Running {
            job: 200 + i,
            exe: "long".into(),
            elapsed: Duration::ZERO,
        });
        nodes.push(n);
    }
    assert_eq!(place(&nodes, &queue, &e, &p), vec![]);
}

#[test]
fn expected_maximum_of_normals_is_close_to_the_exact_values() {
    use super::expected_max_of_normals as e;
    // Exact values by numerical integration.
    for (n, exact) in [
        (2, 0.5642),
        (3, 0.8463),
        (4, 1.0294),
        (10, 1.5388),
        (27, 1.9983),
        (100, 2.5076),
        (1000, 3.2414),
        (1_000_000, 4.8629),
    ] {
        assert!((e(n) - exact).abs() < 0.03, "e({n}) = {} vs {exact}", e(n));
    }
    assert_eq!(e(0), 0.0);
    assert_eq!(e(1), 0.0);
    assert!((1..2000).all(|n| e(n) < e(n + 1)));
    // The default risk of 2 is capped up to 27 slots.
    assert!(e(27) < 2.0 && e(28) > 2.0);
}
