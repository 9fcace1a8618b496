//! The workstation's queue: every task its users submit waits here until placement
//! ([`herd_sched::place`]) gives it a free slot somewhere, the workstation's own cores
//! included. Placement is late-bound: a task is sent only to a node with a free slot
//! *now*, so a slow host never hoards the tail of a batch; when a node running one of
//! our tasks is lost or evicts it, the task goes back to the front of the queue
//! (avoiding that node) if it has retries left.
//!
//! This module keeps the bookkeeping (queued and running tasks, which node has run
//! which executable, the run-time estimates); the agent's main loop builds the cluster
//! view, calls [`herd_sched::place`] and starts what it returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use herd_proto::RunSpec;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::task::Caller;

/// `herd run`'s connection to the agent.
pub type Cli = Framed<UnixStream, LengthDelimitedCodec>;

/// Executables remembered per node as warm (bounded).
const MAX_WARM: usize = 256;

/// A task waiting for a slot.
pub struct Pending {
    /// The queue's id for it (stays the same across re-runs).
    pub job: u64,
    /// The connection of the `herd run` (or `herd map` job) that submitted it.
    pub cli: Cli,
    /// What to run.
    pub spec: RunSpec,
    /// Who asked.
    pub caller: Caller,
    /// The key run-time estimates and cache warmth are kept under.
    pub exe: String,
    /// Nodes it was lost on or evicted from.
    pub avoid: Vec<String>,
    /// Re-runs left.
    pub retries_left: u32,
}

/// A task running somewhere.
struct Active {
    node: String,
    exe: String,
    started: Instant,
    /// Work units per second of one slot of the node (speed × share).
    rate: f32,
    /// Fired when the node is lost: the task's driver gives it up.
    lost: Option<oneshot::Sender<String>>,
}

/// How a dispatched task ended, reported back to the main loop.
pub enum JobEnd {
    /// It ended (exit code or herd's error already sent to the client).
    Done {
        /// Whether it ran to its exit (so its run time says something about its work).
        completed: bool,
    },
    /// Its node was lost or evicted it; it goes back in the queue.
    Requeue {
        /// The task, its client connection and its attempts.
        pending: Box<Pending>,
        /// The node it was lost on.
        node: String,
    },
}

/// Queued and running tasks of this workstation.
#[derive(Default)]
pub struct Queue {
    pending: VecDeque<Pending>,
    active: HashMap<u64, Active>,
    warm: HashMap<String, HashSet<String>>,
    /// Our tasks that ended on each node since its last load report arrived: that
    /// report still counts them.
    ended_since_report: HashMap<String, u32>,
    /// Run-time estimates per executable, learnt from finished tasks.
    pub est: herd_sched::Estimator,
    next: u64,
}

impl Queue {
    /// A fresh id for a submitted task.
    pub fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Queues a task at the back.
    pub fn push(&mut self, p: Pending) {
        self.pending.push_back(p);
    }

    /// Queues a lost task at the front: it was submitted before the others.
    pub fn push_front(&mut self, p: Pending) {
        self.pending.push_front(p);
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Tasks waiting.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Tasks running (here or on helpers).
    pub fn running(&self) -> usize {
        self.active.len()
    }

    /// The queue as placement sees it.
    pub fn jobs(&self) -> Vec<herd_sched::Job> {
        self.pending
            .iter()
            .map(|p| herd_sched::Job {
                id: p.job,
                exe: p.exe.clone(),
                mem: 0,
                avoid: p.avoid.clone(),
                pin: p.spec.on.clone(),
                local_ok: p.spec.local_ok,
                remote_ok: true,
            })
            .collect()
    }

    /// The waiting tasks, for checks before placement.
    pub fn pending(&self) -> impl Iterator<Item = &Pending> {
        self.pending.iter()
    }

    /// Our tasks running on `node`.
    pub fn running_on(&self, node: &str) -> Vec<herd_sched::Running> {
        self.active
            .iter()
            .filter(|(_, a)| a.node == node)
            .map(|(job, a)| herd_sched::Running {
                job: *job,
                exe: a.exe.clone(),
                elapsed: a.started.elapsed(),
            })
            .collect()
    }

    /// How many of our tasks run on `node`.
    pub fn count_on(&self, node: &str) -> u32 {
        self.active.values().filter(|a| a.node == node).count() as u32
    }

    /// Executables `node` has run for us (its cache holds their files).
    pub fn warm(&self, node: &str) -> Vec<String> {
        self.warm
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes a waiting task out of the queue.
    pub fn take(&mut self, job: u64) -> Option<Pending> {
        let i = self.pending.iter().position(|p| p.job == job)?;
        self.pending.remove(i)
    }

    /// Records that `job` started on `node`; returns what fires if the node is lost.
    pub fn start(
        &mut self,
        job: u64,
        node: &str,
        exe: &str,
        rate: f32,
    ) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        let warm = self.warm.entry(node.to_string()).or_default();
        if warm.len() < MAX_WARM {
            warm.insert(exe.to_string());
        }
        self.active.insert(
            job,
            Active {
                node: node.to_string(),
                exe: exe.to_string(),
                started: Instant::now(),
                rate,
                lost: Some(tx),
            },
        );
        rx
    }

    /// Records that `job` ended; learns its run time when it ran to completion.
    pub fn end(&mut self, job: u64, completed: bool) {
        if let Some(a) = self.active.remove(&job) {
            *self.ended_since_report.entry(a.node.clone()).or_default() += 1;
            if completed {
                self.est.record(&a.exe, a.started.elapsed(), a.rate);
            }
        }
    }

    /// A load report from `node` arrived: it no longer counts our ended tasks.
    pub fn report_arrived(&mut self, node: &str) {
        self.ended_since_report.remove(node);
    }

    /// Tasks of other submitters on `node`, from its last report of `reported` tasks:
    /// what is neither ours now nor ours ended since that report.
    pub fn others_on(&self, node: &str, reported: u32) -> u32 {
        let ended = self.ended_since_report.get(node).copied().unwrap_or(0);
        reported
            .saturating_sub(self.count_on(node))
            .saturating_sub(ended)
    }

    /// `node` is gone: every task of ours on it is given up (and re-run if it may).
    pub fn lose_node(&mut self, node: &str, reason: &str) {
        for a in self.active.values_mut().filter(|a| a.node == node) {
            if let Some(tx) = a.lost.take() {
                let _ = tx.send(reason.to_string());
            }
        }
    }
}

/// The key a task's run time and cache warmth are kept under: the program's name and,
/// for `sh -c SCRIPT`, the script's first word (`herd map` runs every job that way).
pub fn exe_key(argv: &[Vec<u8>]) -> String {
    let name = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.rsplit('/').next().unwrap_or_default().to_string()
    };
    let Some(first) = argv.first() else {
        return String::new();
    };
    let prog = name(first);
    if matches!(prog.as_str(), "sh" | "bash" | "dash" | "zsh")
        && argv.get(1).is_some_and(|a| a == b"-c")
        && let Some(script) = argv.get(2)
    {
        let script = String::from_utf8_lossy(script);
        if let Some(word) = script.split_whitespace().next() {
            return format!("{prog} -c {}", name(word.as_bytes()));
        }
    }
    prog
}

/// How long a task with no history is assumed to take on one reference core.
pub const DEFAULT_ESTIMATE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_do_not_count_our_ended_tasks() {
        let mut q = Queue::default();
        let _lost = q.start(1, "h1", "gcc", 1.0);
        assert_eq!(q.others_on("h1", 3), 2);
        q.end(1, true);
        // The report still counts our ended task: not another submitter's.
        assert_eq!(q.others_on("h1", 3), 2);
        assert_eq!(q.others_on("h1", 1), 0);
        q.report_arrived("h1");
        assert_eq!(q.others_on("h1", 2), 2);
        assert!(q.est.estimate("gcc").is_some());
    }

    #[test]
    fn keys() {
        let v = |a: &[&str]| a.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(exe_key(&v(&["/usr/bin/gcc", "-c", "a.c"])), "gcc");
        assert_eq!(
            exe_key(&v(&["/bin/sh", "-c", "/usr/bin/convert a.png b.png"])),
            "sh -c convert"
        );
        assert_eq!(exe_key(&v(&["sh", "-c", ""])), "sh");
        assert_eq!(exe_key(&[]), "");
    }
}
