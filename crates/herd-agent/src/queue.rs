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
use std::time::Instant;

use herd_proto::RunSpec;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio_util::codec::Framed;

use crate::task::Caller;

/// `herd run`'s connection to the agent.
pub type Cli = Framed<UnixStream, herd_proto::Codec>;

/// What `herd ps` shows instead of another user's command line.
pub const HIDDEN_COMMAND: &str = "(another user's task)";

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
    /// When it was submitted.
    pub since: Instant,
}

impl Pending {
    /// The command line as `herd ps` shows it.
    pub fn command(&self) -> String {
        let mut s = self
            .spec
            .argv
            .iter()
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect::<Vec<_>>()
            .join(" ");
        if s.len() > 200 {
            let mut cut = 200;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }
}

/// Why the agent stops a running task's driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// Its node was lost (why): the task may run again elsewhere.
    Lost(String),
    /// `herd kill`: the task ends, nothing of it is committed.
    Kill,
}

/// A task running somewhere.
struct Active {
    node: String,
    /// The node is the workstation itself (its speed is trusted).
    local: bool,
    exe: String,
    command: String,
    uid: u32,
    lost_before: u32,
    started: Instant,
    /// Work units per second of one slot of the node (speed × share).
    rate: f32,
    /// Whether its run time is a fair sample of its work (see
    /// [`herd_sched::Estimator::record_unsure`]).
    sure: bool,
    /// Fired when the node is lost or the task killed: its driver gives it up.
    halt: Option<oneshot::Sender<Halt>>,
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

    /// Records that `p` started on `node`; returns what fires if the node is lost or
    /// the task is killed.
    /// `sure`: whether the run time will be a fair sample of the job's work (the node
    /// had the executable and its full rate).
    pub fn start(
        &mut self,
        p: &Pending,
        node: &str,
        local: bool,
        rate: f32,
        sure: bool,
    ) -> oneshot::Receiver<Halt> {
        let (tx, rx) = oneshot::channel();
        let warm = self.warm.entry(node.to_string()).or_default();
        if warm.len() < MAX_WARM {
            warm.insert(p.exe.clone());
        }
        self.active.insert(
            p.job,
            Active {
                node: node.to_string(),
                local,
                exe: p.exe.clone(),
                command: p.command(),
                uid: p.caller.uid,
                lost_before: p.spec.retries - p.retries_left,
                started: Instant::now(),
                rate,
                sure,
                halt: Some(tx),
            },
        );
        rx
    }

    /// The tasks as `herd ps` shows them to `viewer` (a uid): running, then queued in
    /// order. Root sees every command line; another user sees their own, and only
    /// that the others' tasks exist ([`HIDDEN_COMMAND`]): a command line can carry
    /// what its user would not show (a token, a password from the environment).
    pub fn list(&self, viewer: u32) -> Vec<herd_proto::TaskInfo> {
        let shown = |uid: u32, command: String| {
            if viewer == 0 || viewer == uid {
                command
            } else {
                HIDDEN_COMMAND.to_string()
            }
        };
        let mut out: Vec<herd_proto::TaskInfo> = self
            .active
            .iter()
            .map(|(id, a)| herd_proto::TaskInfo {
                id: *id,
                command: shown(a.uid, a.command.clone()),
                uid: a.uid,
                state: "running".into(),
                node: Some(a.node.clone()),
                secs: a.started.elapsed().as_secs_f64(),
                lost: a.lost_before,
            })
            .collect();
        out.sort_by_key(|t| t.id);
        out.extend(self.pending.iter().map(|p| herd_proto::TaskInfo {
            id: p.job,
            command: shown(p.caller.uid, p.command()),
            uid: p.caller.uid,
            state: "queued".into(),
            node: None,
            secs: p.since.elapsed().as_secs_f64(),
            lost: p.spec.retries - p.retries_left,
        }));
        out
    }

    /// The submitter of task `job`, queued or running.
    pub fn owner(&self, job: u64) -> Option<u32> {
        self.active.get(&job).map(|a| a.uid).or_else(|| {
            self.pending
                .iter()
                .find(|p| p.job == job)
                .map(|p| p.caller.uid)
        })
    }

    /// Kills a running task (its driver aborts it); false if it is not running or
    /// already being stopped.
    pub fn kill(&mut self, job: u64) -> bool {
        self.active
            .get_mut(&job)
            .and_then(|a| a.halt.take())
            .is_some_and(|tx| tx.send(Halt::Kill).is_ok())
    }

    /// Records that `job` ended; learns its run time when it ran to completion.
    pub fn end(&mut self, job: u64, completed: bool) {
        if let Some(a) = self.active.remove(&job) {
            *self.ended_since_report.entry(a.node.clone()).or_default() += 1;
            if completed {
                if a.sure {
                    let node = (!a.local).then_some(a.node.as_str());
                    self.est
                        .record_on(node, &a.exe, a.started.elapsed(), a.rate);
                } else {
                    self.est.record_unsure(&a.exe, a.started.elapsed(), a.rate);
                }
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
            if let Some(tx) = a.halt.take() {
                let _ = tx.send(Halt::Lost(reason.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(job: u64, argv: &[&str]) -> Pending {
        let (a, _b) = UnixStream::pair().unwrap();
        Pending {
            job,
            cli: Framed::new(a, herd_proto::codec()),
            spec: RunSpec {
                argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
                env: vec![],
                cwd: b"/".to_vec(),
                umask: 0o022,
                rlimits: vec![],
                tty: None,
                on: None,
                retries: 2,
                local_ok: true,
                hide: vec![],
                writes: vec![],
                exe: None,
                net: herd_proto::NetMode::Default,
            },
            caller: Caller {
                uid: 1000,
                gid: 1000,
                pid: None,
                groups: None,
            },
            exe: exe_key(
                &argv
                    .iter()
                    .map(|a| a.as_bytes().to_vec())
                    .collect::<Vec<_>>(),
            ),
            avoid: vec![],
            retries_left: 1,
            since: Instant::now(),
        }
    }

    #[tokio::test]
    async fn others_do_not_count_our_ended_tasks_and_ps_lists_everything() {
        let mut q = Queue::default();
        let running = pending(1, &["gcc", "-c", "a.c"]);
        let _halt = q.start(&running, "h1", false, 1.0, true);
        q.push(pending(2, &["xz", "big"]));
        let ps = q.list(0);
        assert_eq!(ps.len(), 2);
        let own: Vec<_> = q.list(1000).into_iter().map(|t| t.command).collect();
        assert_eq!(
            own,
            ["gcc -c a.c", "xz big"],
            "the submitter sees its own in full"
        );
        let other = q.list(1001);
        assert!(
            other
                .iter()
                .all(|t| t.command == HIDDEN_COMMAND && t.uid == 1000)
        );
        assert_eq!(
            (ps[0].id, ps[0].state.as_str(), ps[0].node.as_deref()),
            (1, "running", Some("h1"))
        );
        assert_eq!((ps[0].command.as_str(), ps[0].lost), ("gcc -c a.c", 1));
        assert_eq!((ps[1].id, ps[1].state.as_str()), (2, "queued"));
        assert_eq!(q.owner(2), Some(1000));
        assert_eq!(q.owner(3), None);

        assert_eq!(q.others_on("h1", 3), 2);
        q.end(1, true);
        // The report still counts our ended task: not another submitter's.
        assert_eq!(q.others_on("h1", 3), 2);
        assert_eq!(q.others_on("h1", 1), 0);
        q.report_arrived("h1");
        assert_eq!(q.others_on("h1", 2), 2);
        assert!(q.est.estimate("gcc").is_some());
    }

    #[tokio::test]
    async fn kill_and_loss_reach_the_driver_once() {
        let mut q = Queue::default();
        let mut h1 = q.start(&pending(1, &["a"]), "h1", false, 1.0, true);
        let mut h2 = q.start(&pending(2, &["b"]), "h2", false, 1.0, true);
        assert!(q.kill(1));
        assert!(!q.kill(1), "already being stopped");
        q.lose_node("h2", "it is dead");
        assert_eq!(h1.try_recv().unwrap(), Halt::Kill);
        assert_eq!(h2.try_recv().unwrap(), Halt::Lost("it is dead".into()));
        assert!(!q.kill(9));
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
