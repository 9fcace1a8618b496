//! Polite helpers: measuring the host owner's load and deciding when to suspend, resume or
//! evict herd tasks.
//!
//! A helper lends its idle CPUs. Tasks already run at `SCHED_IDLE` and nice 19 inside
//! cgroups that cap their CPU and memory; this module adds the desktop policy of HTCondor:
//! start work only after the owner has been idle for a short while, freeze herd's tasks
//! while the owner is busy, evict them (so their workstation re-runs them elsewhere) after
//! a long suspension, and evict them before the owner's processes run out of memory.
//!
//! Two parts:
//!
//! * [`OwnerMeter`] touches the system: it samples cumulative CPU time and memory and
//!   returns a [`Sample`]: the owner's CPU use in cores over the last interval (the
//!   host's use minus herd's own), herd's, the host's capacity and its free memory.
//! * [`Policy`] is a sans-IO state machine (no clock, no files): the agent feeds it
//!   [`Policy::observe`] with the time, the sample and the running tasks, and drains
//!   [`Action`]s from [`Policy::poll_action`]; [`Policy::accepting`] says whether to
//!   advertise for new work and [`Policy::mode`] what to show in status.
//!
//! # Knobs
//!
//! Every knob of [`PoliteConfig`] (also listed in [`KNOBS`], which the CLI's help can use):
//!
//! | knob | default | flag | meaning |
//! |---|---|---|---|
//! | host cgroup | whole machine | `--host-cgroup PATH` | the cgroup that stands for "this host" when measuring the owner's load ([`OwnerMeter::new`]) |
//! | [`busy_fraction`](PoliteConfig::busy_fraction) | `0.5` | `--owner-busy FRACTION` | the owner is busy above this fraction of the host's cores (`1` never suspends) |
//! | [`idle_fraction`](PoliteConfig::idle_fraction) | `0.3` | `--owner-idle FRACTION` | the owner is idle below this fraction of the host's cores |
//! | [`start_after`](PoliteConfig::start_after) | `15s` | `--start-after DURATION` | idle this long before the helper first takes work (`0`: at once) |
//! | [`suspend_after`](PoliteConfig::suspend_after) | `5s` | `--suspend-after DURATION` | busy this long before tasks are frozen |
//! | [`resume_after`](PoliteConfig::resume_after) | `10s` | `--resume-after DURATION` | idle this long before frozen tasks are thawed |
//! | [`evict_after`](PoliteConfig::evict_after) | `10m` | `--evict-after DURATION` | frozen this long: every task is evicted |
//! | [`min_free`](PoliteConfig::min_free) | `5%` | `--min-free-mem SIZE` | below this much available memory (`512M`, or a percentage of the host's memory) the largest task is evicted; `0` turns it off |
//! | [`window`](PoliteConfig::window) | `3s` | none | the owner's load is averaged over this long |
//!
//! Why these defaults: the thresholds are HTCondor's (`CpuBusy` is a non-HTCondor load
//! of 0.5, `CpuIdle` 0.3), taken as fractions of the host's cores because herd tasks
//! span cores; the gap between them is the hysteresis that keeps a load near one line
//! from flipping the state. The delays are much shorter than HTCondor's (15 minutes of
//! keyboard idleness, 2 minutes busy) because herd's tasks last seconds to minutes and
//! already yield the CPU through `SCHED_IDLE`: 15 s of idleness rules out the start of a
//! burst; 5 s of sustained load is real work (a build, a video call) while opening a
//! browser tab or saving a file is a spike of a second or two, which the 3 s average
//! also flattens; resuming needs twice as long as suspending, so an owner who works in
//! bursts does not make tasks flap. Eviction after 10 minutes frozen is HTCondor's
//! `MaxSuspendTime`: by then the workstation does better re-running the task elsewhere.
//! 5% of memory is about where the kernel starts reclaiming hard and a desktop feels
//! it; memory counts as recovered at twice that.
//!
//! Durations are written as [`parse_duration`] reads them (`1500ms`, `30s`, `10m`, `2h`,
//! `0`), fractions as [`parse_fraction`] reads them, memory as [`MinFree::parse`] does.
//!
//! # How the owner's load is measured
//!
//! The owner's CPU use over an interval is the host's CPU time minus herd's, divided by
//! the interval, clamped to `0..=host_cores`:
//!
//! * **The host** is the whole machine (`/proc/stat`: user, nice, system, irq and
//!   softirq time; guest time is part of user already and iowait, idle and steal are not
//!   use), or with `--host-cgroup` that cgroup's cumulative usage: cgroup v1
//!   `cpuacct.usage` where a hierarchy carrying `cpuacct` has a group at the same path,
//!   else cgroup v2 `cpu.stat` `usage_usec` (the unified mount of a hybrid machine keeps
//!   it too), else the CPU times of the processes in the group's subtree. Its capacity
//!   is the tightest CPU quota of the group and its ancestors (v1 `cpu.cfs_quota_us`,
//!   v2 `cpu.max`), else the online CPUs; its memory is the tightest of the group's and
//!   its ancestors' limits minus their working set (usage less inactive file pages),
//!   and never more than the machine's `MemAvailable`.
//! * **herd** is, all from `/proc` and the cgroup files: the agent process itself
//!   (`utime`, `stime` of `/proc/self/stat`, every thread, the FUSE views included),
//!   its reaped descendants (`cutime`, `cstime`: finished sandboxes with their whole
//!   task trees, finished file services), its live children with their own reaped
//!   descendants (sandbox supervisors, file services), and the cumulative usage of every
//!   current task group (`herd-task-<16 hex>` under the task parent in every hierarchy
//!   the sandbox uses; the same sources as the host's, the processes of the group as a
//!   last resort). A task tree's CPU is in its group while it runs and moves into its
//!   supervisor's `cutime` when its pid 1 is reaped, then into the agent's when the
//!   supervisor is: the sum stays continuous, so nothing is counted twice and a task's
//!   last partial interval is not lost. Also herd's: the `herd run` and `herd map`
//!   processes that run tasks placed on this node themselves ([`LocalClients`]), with
//!   their descendants, from the first sample after the agent told them to until they
//!   are gone.
//!
//! Known error: between the supervisor removing an emptied task group and the agent
//! reaping the supervisor (milliseconds) herd's sum dips by the task's last unseen CPU,
//! and while a group counted by its usage file outlives its reaped pid 1 it is counted
//! twice; a sample falling in such a window shows a one-sample blip (owner load up, or
//! down to 0), which the policy's average absorbs. Without `/proc/PID/task/TID/children`
//! the agent's live children are found by scanning `/proc`. When the agent does not run
//! inside the host cgroup, herd's CPU is reported but not subtracted (it is not part of
//! the host's usage).
//!
//! # Using it in the agent
//!
//! ```no_run
//! use std::time::Instant;
//! use herd_agent::polite::{Action, OwnerMeter, Policy, PoliteConfig, SAMPLE_EVERY, TaskMem};
//! # fn main() -> Result<(), herd_agent::polite::PoliteError> {
//! let mut meter = OwnerMeter::new(None, None)?;
//! let mut policy = Policy::new(PoliteConfig::default());
//! let start = Instant::now();
//! loop {
//!     std::thread::sleep(SAMPLE_EVERY);
//!     let sample = meter.sample();
//!     let tasks: Vec<TaskMem> = vec![]; // the running tasks and their memory
//!     policy.observe(start.elapsed(), &sample, &tasks);
//!     while let Some(action) = policy.poll_action() {
//!         match action {
//!             Action::Suspend => { /* freeze every task, and tasks starting later */ }
//!             Action::Resume => { /* thaw them */ }
//!             Action::Evict { task, reason } => { /* kill it; its workstation re-runs it */ }
//!         }
//!     }
//!     let _advertise = policy.accepting();
//! }
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the agent should call [`OwnerMeter::sample`] and [`Policy::observe`].
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How long a task evicted for memory may take to go away before the next one is
/// evicted (at most one memory eviction per observation, and none while the last one is
/// still dying, unless it has been dying this long).
pub const MEMORY_SETTLE: Duration = Duration::from_secs(2);

/// Errors of this module: bad flag values and a `--host-cgroup` that does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum PoliteError {
    /// `--host-cgroup` names no usable cgroup.
    #[error("--host-cgroup {}: {why}", path.display())]
    HostCgroup {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A system file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A duration does not parse.
    #[error("bad duration {input:?}: write a number with a unit (1500ms, 30s, 10m, 2h) or 0")]
    Duration {
        /// The text given.
        input: String,
    },
    /// A fraction does not parse or is out of range.
    #[error("bad fraction {input:?}: write a number from 0 to 1, such as 0.5")]
    Fraction {
        /// The text given.
        input: String,
    },
    /// A memory size does not parse.
    #[error(
        "bad memory size {input:?}: write a size such as 512M or 2G, or a percentage of the host's memory such as 5%"
    )]
    Size {
        /// The text given.
        input: String,
    },
    /// The settings contradict each other.
    #[error("{0}")]
    Config(String),
}

// ---------------------------------------------------------------------------------------
// Knobs
// ---------------------------------------------------------------------------------------

/// One knob of the policy, for help texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knob {
    /// The [`PoliteConfig`] field (or `host_cgroup` for [`OwnerMeter::new`]'s).
    pub name: &'static str,
    /// The `herd agent` flag, empty when there is none.
    pub flag: &'static str,
    /// The default, as the flag would be written.
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Every knob, its flag and its default (the table of the module docs).
pub const KNOBS: &[Knob] = &[
    Knob {
        name: "host_cgroup",
        flag: "--host-cgroup PATH",
        default: "",
        meaning: "the cgroup that stands for this host when measuring the owner's load (default: the whole machine)",
    },
    Knob {
        name: "busy_fraction",
        flag: "--owner-busy FRACTION",
        default: "0.5",
        meaning: "the owner is busy above this fraction of the host's cores (1 never suspends)",
    },
    Knob {
        name: "idle_fraction",
        flag: "--owner-idle FRACTION",
        default: "0.3",
        meaning: "the owner is idle below this fraction of the host's cores",
    },
    Knob {
        name: "start_after",
        flag: "--start-after DURATION",
        default: "15s",
        meaning: "owner idle this long before the helper first takes work (0: at once)",
    },
    Knob {
        name: "suspend_after",
        flag: "--suspend-after DURATION",
        default: "5s",
        meaning: "owner busy this long before herd's tasks are frozen",
    },
    Knob {
        name: "resume_after",
        flag: "--resume-after DURATION",
        default: "10s",
        meaning: "owner idle this long before frozen tasks are thawed",
    },
    Knob {
        name: "evict_after",
        flag: "--evict-after DURATION",
        default: "10m",
        meaning: "tasks frozen this long are evicted and re-run elsewhere",
    },
    Knob {
        name: "min_free",
        flag: "--min-free-mem SIZE",
        default: "5%",
        meaning: "below this much available memory the largest task is evicted (0: never)",
    },
    Knob {
        name: "window",
        flag: "",
        default: "3s",
        meaning: "the owner's load is averaged over this long",
    },
];

/// The memory floor below which tasks are evicted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// A fraction (0 to 1) of the host's memory.
    Fraction(f32),
    /// Bytes.
    Bytes(u64),
}

impl MinFree {
    /// Parses `5%`, `512M`, `2G`, a byte count, or `0` (never evict for memory).
    pub fn parse(s: &str) -> Result<MinFree, PoliteError> {
        let t = s.trim();
        let bad = || PoliteError::Size {
            input: s.to_owned(),
        };
        if let Some(pct) = t.strip_suffix('%') {
            let v: f32 = pct.trim().parse().map_err(|_| bad())?;
            return if v.is_finite() && (0.0..=100.0).contains(&v) {
                Ok(MinFree::Fraction(v / 100.0))
            } else {
                Err(bad())
            };
        }
        crate::host::parse_size(t)
            .map(MinFree::Bytes)
            .ok_or_else(bad)
    }

    /// The floor in bytes for a host with `mem_total` bytes.
    pub fn bytes(self, mem_total: u64) -> u64 {
        match self {
            MinFree::Fraction(f) => (mem_total as f64 * f64::from(f.clamp(0.0, 1.0))) as u64,
            MinFree::Bytes(b) => b,
        }
    }
}

/// The policy's knobs; see the table in the module docs for defaults and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct PoliteConfig {
    /// The owner is busy when its average load exceeds this fraction of the host's cores.
    pub busy_fraction: f32,
    /// The owner is idle when its average load is below this fraction of the host's cores.
    pub idle_fraction: f32,
    /// How long the owner must be idle before the helper first accepts work.
    pub start_after: Duration,
    /// How long the owner must be busy before tasks are suspended.
    pub suspend_after: Duration,
    /// How long the owner must be idle before suspended tasks are resumed.
    pub resume_after: Duration,
    /// How long tasks may stay suspended before they are all evicted.
    pub evict_after: Duration,
    /// Below this much available memory the largest task is evicted.
    pub min_free: MinFree,
    /// The owner's load is averaged over the samples of this last stretch of time.
    pub window: Duration,
}

impl Default for PoliteConfig {
    fn default() -> PoliteConfig {
        PoliteConfig {
            busy_fraction: 0.5,
            idle_fraction: 0.3,
            start_after: Duration::from_secs(15),
            suspend_after: Duration::from_secs(5),
            resume_after: Duration::from_secs(10),
            evict_after: Duration::from_secs(600),
            min_free: MinFree::Fraction(0.05),
            window: Duration::from_secs(3),
        }
    }
}

impl PoliteConfig {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), PoliteError> {
        for (flag, v) in [
            ("--owner-busy", self.busy_fraction),
            ("--owner-idle", self.idle_fraction),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(PoliteError::Config(format!(
                    "{flag} {v} is out of range: use a fraction from 0 to 1"
                )));
            }
        }
        if self.idle_fraction > self.busy_fraction {
            return Err(PoliteError::Config(format!(
                "--owner-idle {} is above --owner-busy {}: the idle line must not be above the busy line",
                self.idle_fraction, self.busy_fraction
            )));
        }
        if let MinFree::Fraction(f) = self.min_free
            && !(f.is_finite() && (0.0..=1.0).contains(&f))
        {
            return Err(PoliteError::Config(format!(
                "--min-free-mem {}% is out of range",
                f * 100.0
            )));
        }
        Ok(())
    }
}

/// Parses a duration: a number and a unit (`1500ms`, `30s`, `1.5s`, `10m`, `2h`), or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, PoliteError> {
    let t = s.trim();
    let bad = || PoliteError::Duration {
        input: s.to_owned(),
    };
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => num / 1000.0,
        "s" => num,
        "m" | "min" => num * 60.0,
        "h" => num * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Parses a fraction from 0 to 1 (`0.5`).
pub fn parse_fraction(s: &str) -> Result<f32, PoliteError> {
    let v: f32 = s.trim().parse().map_err(|_| PoliteError::Fraction {
        input: s.to_owned(),
    })?;
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(PoliteError::Fraction {
            input: s.to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------

/// One measurement of the host: CPU rates over the last interval, memory now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// The owner's (non-herd) CPU use in cores, `0..=host_cores`.
    pub owner_cores: f32,
    /// herd's own CPU use in cores (the agent, its children and its tasks).
    pub herd_cores: f32,
    /// What the host can use in cores: its cgroup's CPU quota, else the online CPUs.
    pub host_cores: f32,
    /// Bytes of memory still available to the host.
    pub mem_available: u64,
    /// Bytes of memory of the host (its cgroup's limit, else the machine's).
    pub mem_total: u64,
    /// The wall time the CPU figures cover; zero for a meter's first sample, whose CPU
    /// figures are then zero too and which the policy ignores for CPU.
    pub interval: Duration,
}

/// A herd task running on this helper and the memory it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskMem {
    /// The task id.
    pub id: u64,
    /// Bytes of memory its cgroup uses.
    pub mem: u64,
}

/// Why a task is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// It stayed suspended for `evict_after` because the owner was busy.
    OwnerBusy,
    /// The host ran short of memory and it was the largest task.
    Memory,
}

/// What the agent must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Freeze every herd task, and start tasks that arrive meanwhile frozen.
    Suspend,
    /// Thaw every herd task (always follows a [`Action::Suspend`]).
    Resume,
    /// Kill this task and have its workstation run it elsewhere.
    Evict {
        /// The task id (one of the ids last observed).
        task: u64,
        /// Why.
        reason: EvictReason,
    },
}

/// Where the policy stands, for status display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The owner has not been idle long enough (`start_after`): no work is accepted.
    /// Also where the helper goes when the owner stays busy while no task runs.
    Waiting,
    /// Work is accepted and runs.
    Running,
    /// The owner is busy: tasks are frozen and no work is accepted.
    Suspended {
        /// When the suspension began (the time given to [`Policy::observe`]).
        since: Duration,
    },
}

/// The polite policy: a sans-IO state machine fed with samples; see the module docs.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PoliteConfig,
    mode: Mode,
    /// `(observed at, owner core-seconds, interval)` of the samples in the window.
    window: VecDeque<(Duration, f64, Duration)>,
    host_cores: f32,
    owner_avg: Option<f32>,
    /// Since when the owner's average has stayed above the busy line.
    busy_since: Option<Duration>,
    /// Since when the owner's average has stayed below the idle line.
    idle_since: Option<Duration>,
    memory_low: bool,
    /// Tasks evicted and still listed: when, and why.
    evicted: BTreeMap<u64, (Duration, EvictReason)>,
    actions: VecDeque<Action>,
}

impl Policy {
    /// A policy that starts waiting for the owner to be idle (or running at once when
    /// `start_after` is zero).
    pub fn new(config: PoliteConfig) -> Policy {
        let mode = if config.start_after.is_zero() {
            Mode::Running
        } else {
            Mode::Waiting
        };
        Policy {
            cfg: config,
            mode,
            window: VecDeque::new(),
            host_cores: 0.0,
            owner_avg: None,
            busy_since: None,
            idle_since: None,
            memory_low: false,
            evicted: BTreeMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// The knobs.
    pub fn config(&self) -> &PoliteConfig {
        &self.cfg
    }

    /// Where the policy stands.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the helper should advertise that it takes new work now: running, the
    /// owner not above the busy line, and memory not short.
    pub fn accepting(&self) -> bool {
        self.mode == Mode::Running && !self.memory_low && self.busy_since.is_none()
    }

    /// Whether memory is short (below `min_free`, and not yet back above twice that).
    pub fn memory_low(&self) -> bool {
        self.memory_low
    }

    /// The owner's average load in cores over the window, once there is a measurement.
    pub fn owner_cores(&self) -> Option<f32> {
        self.owner_avg
    }

    /// The next action for the agent, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Takes one sample at time `now` (any monotonic origin) with the tasks running now.
    pub fn observe(&mut self, now: Duration, sample: &Sample, tasks: &[TaskMem]) {
        self.update_load(now, sample);
        self.evicted
            .retain(|id, _| tasks.iter().any(|t| t.id == *id));
        self.check_memory(now, sample, tasks);
        let elapsed = |since: Option<Duration>, d: Duration| {
            since.is_some_and(|t| now.saturating_sub(t) >= d)
        };
        let busy_long = elapsed(self.busy_since, self.cfg.suspend_after);
        match self.mode {
            Mode::Waiting | Mode::Running => {
                if self.mode == Mode::Waiting && elapsed(self.idle_since, self.cfg.start_after) {
                    self.mode = Mode::Running;
                }
                if busy_long && !tasks.is_empty() {
                    self.mode = Mode::Suspended { since: now };
                    self.actions.push_back(Action::Suspend);
                } else if busy_long {
                    self.mode = Mode::Waiting;
                }
            }
            Mode::Suspended { .. } => {
                if elapsed(self.idle_since, self.cfg.resume_after) {
                    self.mode = Mode::Running;
                    self.actions.push_back(Action::Resume);
                }
            }
        }
        // Suspended for `evict_after` (at once when it is zero): evict every task, those
        // that arrive later included, each once.
        if let Mode::Suspended { since } = self.mode
            && now.saturating_sub(since) >= self.cfg.evict_after
        {
            for t in tasks {
                if !self.evicted.contains_key(&t.id) {
                    self.evict(now, t.id, EvictReason::OwnerBusy);
                }
            }
        }
    }

    fn update_load(&mut self, now: Duration, sample: &Sample) {
        if !sample.interval.is_zero() {
            self.window.push_back((
                now,
                f64::from(sample.owner_cores.max(0.0)) * sample.interval.as_secs_f64(),
                sample.interval,
            ));
            self.host_cores = sample.host_cores;
        }
        while self.window.len() > 1
            && self
                .window
                .front()
                .is_some_and(|(at, _, _)| now.saturating_sub(*at) >= self.cfg.window)
        {
            self.window.pop_front();
        }
        let (secs, span) = self.window.iter().fold((0.0, 0.0), |(s, d), (_, cs, iv)| {
            (s + cs, d + iv.as_secs_f64())
        });
        self.owner_avg = (span > 0.0).then(|| (secs / span) as f32);
        let Some(avg) = self.owner_avg else {
            return;
        };
        let busy = avg > self.cfg.busy_fraction * self.host_cores;
        let idle = avg < self.cfg.idle_fraction * self.host_cores;
        self.busy_since = if busy {
            Some(self.busy_since.unwrap_or(now))
        } else {
            None
        };
        self.idle_since = if idle {
            Some(self.idle_since.unwrap_or(now))
        } else {
            None
        };
    }

    fn check_memory(&mut self, now: Duration, sample: &Sample, tasks: &[TaskMem]) {
        let floor = self.cfg.min_free.bytes(sample.mem_total);
        if floor == 0 {
            self.memory_low = false;
            return;
        }
        let short = sample.mem_available < floor;
        if short {
            self.memory_low = true;
        } else if sample.mem_available >= floor.saturating_mul(2) {
            self.memory_low = false;
        }
        if !short {
            return;
        }
        let settling = self.evicted.values().any(|(at, why)| {
            *why == EvictReason::Memory && now.saturating_sub(*at) < MEMORY_SETTLE
        });
        if settling {
            return;
        }
        let largest = tasks
            .iter()
            .filter(|t| !self.evicted.contains_key(&t.id))
            .max_by(|a, b| a.mem.cmp(&b.mem).then(b.id.cmp(&a.id)));
        if let Some(t) = largest {
            self.evict(now, t.id, EvictReason::Memory);
        }
    }

    fn evict(&mut self, now: Duration, task: u64, reason: EvictReason) {
        self.evicted.insert(task, (now, reason));
        self.actions.push_back(Action::Evict { task, reason });
    }
}

// ---------------------------------------------------------------------------------------
// OwnerMeter
// ---------------------------------------------------------------------------------------

/// The prefix of task groups (`herd-task-<16 hex>`, see `task.rs`).
const TASK_PREFIX: &str = "herd-task-";

/// A cgroup hierarchy, from the workspace's one reader of them.
type Hier = herd_sandbox::cgroups::Hierarchy;

/// Where a cumulative CPU figure comes from.
#[derive(Debug, Clone, PartialEq)]
enum CpuSource {
    /// `/proc/stat`: the whole machine.
    Machine,
    /// v1 `cpuacct.usage` (ns) in this directory.
    Cpuacct(PathBuf),
    /// v2 `cpu.stat` `usage_usec` in this directory.
    V2(PathBuf),
    /// The CPU times of the processes in this directory's subtree.
    Procs(PathBuf),
}

/// The host cgroup, resolved in every hierarchy that matters.
#[derive(Debug, Clone)]
struct HostGroup {
    cpu: CpuSource,
    /// The host's directories that may carry a CPU quota: `(hierarchy, dir)`.
    quota: Vec<(usize, PathBuf)>,
    /// The host's directories that may carry a memory limit.
    memory: Vec<(usize, PathBuf)>,
    /// Whether the agent runs inside the group (so herd's CPU is part of its usage).
    inside: bool,
}

/// The `herd` processes (`herd run`, `herd map`) that run tasks placed on this node
/// themselves, outside the sandbox: their CPU and their children's is herd's, not the
/// owner's. The agent adds a client when it tells it to run a task here; the meter
/// counts the client's CPU from then on, until the process is gone.
#[derive(Debug, Clone, Default)]
pub struct LocalClients(Arc<Mutex<ClientsState>>);

#[derive(Debug, Default)]
struct ClientsState {
    by_pid: HashMap<u32, Client>,
    /// Ticks of clients that are gone.
    retired: u64,
}

#[derive(Debug, Default)]
struct Client {
    start: Option<u64>,
    baseline: Option<u64>,
    last: u64,
}

impl LocalClients {
    /// Counts process `pid` (and its descendants) as herd's from the next sample on.
    pub fn add(&self, pid: u32) {
        if let Ok(mut st) = self.0.lock() {
            st.by_pid.entry(pid).or_default();
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Last {
    at: Instant,
    host_ns: u64,
    herd_ns: u64,
}

/// Samples CPU time and memory and works out the owner's load; see the module docs for
/// what it counts.
#[derive(Debug)]
pub struct OwnerMeter {
    /// procfs (injectable for tests).
    proc: PathBuf,
    hiers: Vec<Hier>,
    host: Option<HostGroup>,
    /// The cgroup path task groups nest under; `None`: the agent's own group.
    task_parent: Option<PathBuf>,
    ns_per_tick: u64,
    /// Whether `/proc/self/task/TID/children` exists (else live children are found by
    /// scanning `/proc`).
    children_files: bool,
    last: Option<Last>,
    clients: LocalClients,
}

impl OwnerMeter {
    /// A meter for the host `host_cgroup` (`None`: the whole machine), given as a
    /// directory (`/sys/fs/cgroup/cpu,cpuacct/testbed/h1`) or a cgroup path as written in
    /// `/proc/PID/cgroup` (`/testbed/h1`). `task_parent` is the cgroup path herd's task
    /// groups nest under, the value the agent puts in `CgroupSpec::parent` (from
    /// `herd_sandbox::prepare_agent_cgroup`); `None` means the agent's own group in each
    /// hierarchy, as for the sandbox.
    ///
    /// Fails when the host cgroup does not resolve (the error names the path) or when
    /// `/proc/self/mountinfo` cannot be read.
    pub fn new(
        host_cgroup: Option<&Path>,
        task_parent: Option<&Path>,
    ) -> Result<OwnerMeter, PoliteError> {
        OwnerMeter::with_proc(
            Path::new("/proc"),
            procfs::ticks_per_second(),
            host_cgroup,
            task_parent,
        )
    }

    /// [`OwnerMeter::new`] with procfs at `proc` (tests use a fake tree).
    fn with_proc(
        proc: &Path,
        ticks_per_second: u64,
        host_cgroup: Option<&Path>,
        task_parent: Option<&Path>,
    ) -> Result<OwnerMeter, PoliteError> {
        let read = |p: PathBuf| {
            fs::read_to_string(&p).map_err(|source| PoliteError::Io { path: p, source })
        };
        let mountinfo = read(proc.join("self/mountinfo"))?;
        let proc_cgroup = read(proc.join("self/cgroup")).unwrap_or_default();
        let hiers =
            herd_sandbox::cgroups::parse(&mountinfo, &proc_cgroup, &|p| fs::read_to_string(p).ok());
        let children_files = fs::read_dir(proc.join("self/task"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .is_some_and(|e| e.path().join("children").exists());
        let mut meter = OwnerMeter {
            proc: proc.to_path_buf(),
            hiers,
            host: None,
            task_parent: task_parent.map(|p| Path::new("/").join(p)),
            ns_per_tick: 1_000_000_000 / ticks_per_second.max(1),
            children_files,
            last: None,
            clients: LocalClients::default(),
        };
        if let Some(given) = host_cgroup {
            meter.host = Some(meter.resolve_host(given)?);
        }
        Ok(meter)
    }

    /// The clients running tasks placed here, whose CPU counts as herd's.
    pub fn clients(&self) -> LocalClients {
        self.clients.clone()
    }

    /// Measures now. The CPU figures cover the time since the previous call (the first
    /// call only sets the baseline: its CPU figures and `interval` are zero).
    pub fn sample(&mut self) -> Sample {
        self.sample_at(Instant::now())
    }

    fn sample_at(&mut self, now: Instant) -> Sample {
        let host_ns = match &self.host {
            Some(h) => self.cpu_ns(&h.cpu),
            None => self.cpu_ns(&CpuSource::Machine),
        };
        let herd_ns = self.herd_ns();
        let host_cores = self.host_cores();
        let (mem_available, mem_total) = self.memory();
        let inside = self.host.as_ref().is_none_or(|h| h.inside);
        let mut s = Sample {
            owner_cores: 0.0,
            herd_cores: 0.0,
            host_cores,
            mem_available,
            mem_total,
            interval: Duration::ZERO,
        };
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last.at);
            if !dt.is_zero() {
                let ns = dt.as_secs_f64() * 1e9;
                // A counter that went backwards (a group recreated) counts as no use.
                let host_d = host_ns.saturating_sub(last.host_ns) as f64;
                let herd_d = herd_ns as f64 - last.herd_ns as f64;
                let owner_d = if inside { host_d - herd_d } else { host_d };
                s.interval = dt;
                s.herd_cores = (herd_d.max(0.0) / ns) as f32;
                s.owner_cores = ((owner_d / ns) as f32).clamp(0.0, host_cores.max(0.0));
            }
        }
        self.last = Some(Last {
            at: now,
            host_ns,
            herd_ns,
        });
        s
    }

    /// Resolves `--host-cgroup` (see [`OwnerMeter::new`]).
    fn resolve_host(&self, given: &Path) -> Result<HostGroup, PoliteError> {
        let err = |why: String| PoliteError::HostCgroup {
            path: given.to_path_buf(),
            why,
        };
        let deepest_mount = |p: &Path| {
            self.hiers
                .iter()
                .enumerate()
                .filter(|(_, h)| p.starts_with(&h.mount))
                .max_by_key(|(_, h)| h.mount.components().count())
                .map(|(i, _)| i)
        };
        let canon = fs::canonicalize(given).ok();
        let as_dir = canon.as_deref().and_then(|c| Some((deepest_mount(c)?, c)));
        let (primary, cg) = if let Some((i, dir)) = as_dir {
            if !dir.is_dir() {
                return Err(err("not a cgroup directory".into()));
            }
            let cg = self.hiers[i]
                .cgroup_of(dir)
                .ok_or_else(|| err("not inside a cgroup mount".into()))?;
            (i, cg)
        } else if given.is_absolute() && deepest_mount(given).is_some() {
            return Err(err(
                "no such cgroup directory (create the group first, or give a path as listed in /proc/PID/cgroup)".into(),
            ));
        } else {
            let cg = Path::new("/").join(given);
            let exists = |h: &Hier| h.dir(&cg).is_dir();
            let pick = self
                .hiers
                .iter()
                .position(|h| !h.v2 && h.has("cpuacct") && exists(h))
                .or_else(|| {
                    self.hiers
                        .iter()
                        .position(|h| h.v2 && h.dir(&cg).join("cpu.stat").is_file())
                })
                .or_else(|| self.hiers.iter().position(exists));
            let Some(i) = pick else {
                let looked: Vec<String> = self
                    .hiers
                    .iter()
                    .map(|h| h.dir(&cg).display().to_string())
                    .collect();
                return Err(err(format!(
                    "no such cgroup in any mounted hierarchy (looked for {}); give a directory under a cgroup mount or a path as listed in /proc/PID/cgroup",
                    if looked.is_empty() {
                        "none: no cgroup mounts".to_owned()
                    } else {
                        looked.join(", ")
                    }
                )));
            };
            (i, cg)
        };
        let primary_dir = self.hiers[primary].dir(&cg);
        let same = |h: &Hier, file: &str| {
            let d = h.dir(&cg);
            d.join(file).is_file().then_some(d)
        };
        let v2_usage = |h: &Hier| {
            let d = h.dir(&cg);
            let stat = fs::read_to_string(d.join("cpu.stat")).ok()?;
            key_value(&stat, "usage_usec").map(|_| d)
        };
        let (cpu, source_hier) = if let Some((i, d)) =
            self.hiers.iter().enumerate().find_map(|(i, h)| {
                (!h.v2 && h.has("cpuacct"))
                    .then(|| same(h, "cpuacct.usage"))?
                    .map(|d| (i, d))
            }) {
            (CpuSource::Cpuacct(d), i)
        } else if let Some((i, d)) = self.hiers.iter().enumerate().find_map(|(i, h)| {
            if h.v2 {
                v2_usage(h).map(|d| (i, d))
            } else {
                None
            }
        }) {
            (CpuSource::V2(d), i)
        } else {
            (CpuSource::Procs(primary_dir.clone()), primary)
        };
        // Another hierarchy's group of the host: the same path, else the group there of
        // a process of the host (hierarchies may nest the host at different paths).
        let member = fs::read_to_string(primary_dir.join("cgroup.procs"))
            .ok()
            .and_then(|s| s.split_whitespace().next().map(str::to_owned))
            .and_then(|pid| fs::read_to_string(self.proc.join(pid).join("cgroup")).ok());
        let dir_in = |i: usize| -> Option<PathBuf> {
            let h = &self.hiers[i];
            let d = h.dir(&cg);
            if d.is_dir() {
                return Some(d);
            }
            let path = herd_sandbox::cgroups::own_path(member.as_deref()?, h)?;
            let d = h.dir(&path);
            d.is_dir().then_some(d)
        };
        let pick = |want: &dyn Fn(&Hier) -> bool| -> Vec<(usize, PathBuf)> {
            (0..self.hiers.len())
                .filter(|&i| want(&self.hiers[i]))
                .filter_map(|i| dir_in(i).map(|d| (i, d)))
                .collect()
        };
        let quota = pick(&|h| h.v2 || h.has("cpu"));
        let memory = pick(&|h| h.v2 || h.has("memory"));
        let inside = self.hiers[source_hier].own.starts_with(&cg);
        Ok(HostGroup {
            cpu,
            quota,
            memory,
            inside,
        })
    }

    /// A cumulative CPU figure in nanoseconds (0 when unreadable).
    fn cpu_ns(&self, source: &CpuSource) -> u64 {
        match source {
            CpuSource::Machine => fs::read_to_string(self.proc.join("stat"))
                .ok()
                .and_then(|s| machine_busy_ticks(&s))
                .map_or(0, |t| t * self.ns_per_tick),
            CpuSource::Cpuacct(d) => read_u64(&d.join("cpuacct.usage")).unwrap_or(0),
            CpuSource::V2(d) => fs::read_to_string(d.join("cpu.stat"))
                .ok()
                .and_then(|s| key_value(&s, "usage_usec"))
                .map_or(0, |us| us.saturating_mul(1000)),
            CpuSource::Procs(d) => {
                let mut total = 0;
                let mut stack = vec![d.clone()];
                while let Some(dir) = stack.pop() {
                    total += self.procs_ns(&dir);
                    if let Ok(rd) = fs::read_dir(&dir) {
                        stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                    }
                }
                total
            }
        }
    }

    /// The CPU of the processes listed in `dir/cgroup.procs`, with their reaped
    /// descendants.
    fn procs_ns(&self, dir: &Path) -> u64 {
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| self.stat(pid))
            .map(|s| s.ticks * self.ns_per_tick)
            .sum()
    }

    fn stat(&self, pid: &str) -> Option<ProcStat> {
        parse_stat(&fs::read_to_string(self.proc.join(pid).join("stat")).ok()?)
    }

    /// herd's cumulative CPU: the agent with its reaped descendants, its live children
    /// with theirs, and the current task groups.
    fn herd_ns(&self) -> u64 {
        let Some(me) = self.stat("self") else {
            return 0;
        };
        let children: u64 = self
            .live_children("self", me.pid)
            .iter()
            .filter_map(|pid| self.stat(&pid.to_string()))
            .map(|s| s.ticks)
            .sum();
        (me.ticks + children + self.clients_ticks()) * self.ns_per_tick + self.tasks_ns()
    }

    /// The ticks local clients used since they were added (see [`LocalClients`]): each
    /// one's own with its reaped descendants', plus its live descendants'.
    fn clients_ticks(&self) -> u64 {
        let Ok(mut st) = self.clients.0.lock() else {
            return 0;
        };
        let mut retired = st.retired;
        st.by_pid.retain(|&pid, c| {
            let now = self
                .stat(&pid.to_string())
                .filter(|p| c.start.is_none_or(|s| s == p.start));
            match now {
                Some(p) => {
                    c.start = Some(p.start);
                    let ticks = p.ticks + self.descendants_ticks(pid);
                    let base = *c.baseline.get_or_insert(ticks);
                    c.last = ticks.max(base);
                    true
                }
                None => {
                    retired += c.last - c.baseline.unwrap_or(c.last);
                    false
                }
            }
        });
        st.retired = retired;
        retired
            + st.by_pid
                .values()
                .map(|c| c.last - c.baseline.unwrap_or(c.last))
                .sum::<u64>()
    }

    /// The ticks of `pid`'s live descendants (each with its own reaped ones).
    fn descendants_ticks(&self, pid: u32) -> u64 {
        let mut total = 0;
        let mut todo = vec![pid];
        // Bounded, against a pid loop in a changing /proc.
        for _ in 0..4096 {
            let Some(p) = todo.pop() else { break };
            for c in self.live_children(&p.to_string(), p) {
                if let Some(st) = self.stat(&c.to_string()) {
                    total += st.ticks;
                }
                todo.push(c);
            }
        }
        total
    }

    /// The live children of process `pid` (`who`: its `/proc` name, `self` or the pid).
    fn live_children(&self, who: &str, me: u32) -> Vec<u32> {
        if self.children_files {
            let mut out = Vec::new();
            if let Ok(rd) = fs::read_dir(self.proc.join(who).join("task")) {
                for e in rd.flatten() {
                    let text = fs::read_to_string(e.path().join("children")).unwrap_or_default();
                    out.extend(
                        text.split_whitespace()
                            .filter_map(|p| p.parse::<u32>().ok()),
                    );
                }
            }
            return out;
        }
        let Ok(rd) = fs::read_dir(&self.proc) else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me && self.stat(&pid.to_string()).is_some_and(|s| s.ppid == me))
            .collect()
    }

    /// The directories of every current task group, by task id.
    fn task_groups(&self) -> BTreeMap<u64, Vec<(usize, PathBuf)>> {
        let mut out: BTreeMap<u64, Vec<(usize, PathBuf)>> = BTreeMap::new();
        for (i, h) in self.hiers.iter().enumerate() {
            let used = h.v2
                || ["cpu", "cpuacct", "memory", "freezer"]
                    .iter()
                    .any(|c| h.has(c));
            if !used {
                continue;
            }
            let parent = h.dir(self.task_parent.as_deref().unwrap_or(&h.own));
            let Ok(rd) = fs::read_dir(&parent) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(id) = name.to_str().and_then(task_id) else {
                    continue;
                };
                if e.path().is_dir() {
                    out.entry(id).or_default().push((i, e.path()));
                }
            }
        }
        out
    }

    /// The cumulative CPU of every current task group.
    fn tasks_ns(&self) -> u64 {
        let mut total = 0;
        for dirs in self.task_groups().values() {
            let cpuacct = dirs.iter().find_map(|(i, d)| {
                let h = &self.hiers[*i];
                (!h.v2 && h.has("cpuacct"))
                    .then(|| read_u64(&d.join("cpuacct.usage")))
                    .flatten()
            });
            let v2 = || {
                dirs.iter().find_map(|(i, d)| {
                    self.hiers[*i]
                        .v2
                        .then(|| fs::read_to_string(d.join("cpu.stat")).ok())
                        .flatten()
                        .and_then(|s| key_value(&s, "usage_usec"))
                        .map(|us| us.saturating_mul(1000))
                })
            };
            total += cpuacct
                .or_else(v2)
                .unwrap_or_else(|| dirs.first().map_or(0, |(_, d)| self.procs_ns(d)));
        }
        total
    }

    /// The host's capacity in cores.
    fn host_cores(&self) -> f32 {
        let online = fs::read_to_string(self.proc.join("stat"))
            .map(|s| online_cpus(&s))
            .unwrap_or(0);
        let online = if online == 0 {
            crate::host::online_cpus()
        } else {
            online as f32
        };
        let Some(host) = &self.host else {
            return online;
        };
        let mut best: Option<f64> = None;
        for (i, dir) in &host.quota {
            let h = &self.hiers[*i];
            for d in h.up_from(dir) {
                if let Some(q) = herd_sandbox::cgroups::cpu_quota_of(h, &d) {
                    best = Some(best.map_or(q, |b| b.min(q)));
                }
            }
        }
        best.map_or(online, |q| (q as f32).min(online))
    }

    /// `(available, total)` bytes of memory of the host.
    fn memory(&self) -> (u64, u64) {
        let info = fs::read_to_string(self.proc.join("meminfo")).unwrap_or_default();
        let kb = |key: &str| key_value(&info, key).map(|v| v.saturating_mul(1024));
        let total = kb("MemTotal:").unwrap_or(0);
        let mut avail = kb("MemAvailable:").or_else(|| kb("MemFree:")).unwrap_or(0);
        let mut limit_total = total;
        let Some(host) = &self.host else {
            return (avail, total);
        };
        for (i, dir) in &host.memory {
            let h = &self.hiers[*i];
            for d in h.up_from(dir) {
                // v2 writes "max" for no limit, which does not parse: no limit either.
                let (limit, usage, inactive_key) = if h.v2 {
                    (
                        read_u64(&d.join("memory.max")),
                        read_u64(&d.join("memory.current")),
                        "inactive_file",
                    )
                } else {
                    (
                        read_u64(&d.join("memory.limit_in_bytes")),
                        read_u64(&d.join("memory.usage_in_bytes")),
                        "total_inactive_file",
                    )
                };
                let Some(limit) =
                    limit.filter(|&l| l > 0 && l < herd_sandbox::cgroups::V1_NO_LIMIT)
                else {
                    continue;
                };
                let inactive = fs::read_to_string(d.join("memory.stat"))
                    .ok()
                    .and_then(|s| key_value(&s, inactive_key))
                    .unwrap_or(0);
                let working = usage.unwrap_or(0).saturating_sub(inactive);
                limit_total = limit_total.min(limit);
                avail = avail.min(limit.saturating_sub(working));
            }
        }
        (avail.min(limit_total), limit_total)
    }
}

/// `utime + stime + cutime + cstime` of a process, with its pid and parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: u32,
    ppid: u32,
    ticks: u64,
    /// Start time (ticks after boot): with the pid, which process this is.
    start: u64,
}

/// Parses `/proc/PID/stat` (the command may hold spaces and parentheses).
fn parse_stat(text: &str) -> Option<ProcStat> {
    let pid = text.split_whitespace().next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let num = |i: usize| f.get(i)?.parse::<i64>().ok().map(|v| v.max(0) as u64);
    Some(ProcStat {
        pid,
        ppid: num(1)? as u32,
        ticks: num(11)? + num(12)? + num(13)? + num(14)?,
        start: num(19).unwrap_or(0),
    })
}

/// The busy ticks of the `cpu` line of `/proc/stat`: user, nice, system, irq, softirq
/// (guest time is already in user and nice; idle, iowait and steal are not use).
fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6))
}

/// The online CPUs listed in `/proc/stat`.
fn online_cpus(stat: &str) -> usize {
    stat.lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

/// The value of `key` in a `key value` file (`cpu.stat`, `memory.stat`, meminfo).
fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The task id of a task group's name (`herd-task-` and 16 hex digits).
fn task_id(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(TASK_PREFIX)?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(hex, 16).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    // ----- parsing helpers -------------------------------------------------------------

    #[test]
    fn durations_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("10m").unwrap(), secs(600));
        assert_eq!(parse_duration("30s").unwrap(), secs(30));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("2h").unwrap(), secs(7200));
        assert_eq!(
            parse_duration(" 1.5s ").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["", "30", "-1s", "10 parsecs", "s", "1e3s", "m10"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(matches!(e, PoliteError::Duration { .. }), "{bad:?}: {e}");
            assert!(
                e.to_string().contains("30s"),
                "the error shows the format: {e}"
            );
        }
    }

    #[test]
    fn fractions_and_memory_floors_parse() {
        assert_eq!(parse_fraction("0.5").unwrap(), 0.5);
        assert_eq!(parse_fraction("1").unwrap(), 1.0);
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("half").is_err());
        assert_eq!(MinFree::parse("5%").unwrap(), MinFree::Fraction(0.05));
        assert_eq!(MinFree::parse("512M").unwrap(), MinFree::Bytes(512 << 20));
        assert_eq!(MinFree::parse("0").unwrap(), MinFree::Bytes(0));
        assert!(MinFree::parse("150%").is_err());
        assert!(MinFree::parse("lots").is_err());
        assert_eq!(MinFree::Fraction(0.05).bytes(1000), 50);
        assert_eq!(MinFree::Bytes(7).bytes(1000), 7);
    }

    #[test]
    fn config_validation_names_the_flags() {
        assert!(PoliteConfig::default().validate().is_ok());
        let inverted = PoliteConfig {
            idle_fraction: 0.6,
            ..PoliteConfig::default()
        };
        let e = inverted.validate().unwrap_err().to_string();
        assert!(
            e.contains("--owner-idle") && e.contains("--owner-busy"),
            "{e}"
        );
        let out = PoliteConfig {
            busy_fraction: 2.0,
            ..PoliteConfig::default()
        };
        assert!(out.validate().is_err());
    }

    /// The knob table, the module docs and `PoliteConfig::default()` agree.
    #[test]
    fn knob_table_matches_defaults_and_docs() {
        let d = PoliteConfig::default();
        let docs = include_str!("polite.rs");
        for k in KNOBS {
            match k.name {
                "host_cgroup" => assert!(k.default.is_empty()),
                "busy_fraction" => assert_eq!(parse_fraction(k.default).unwrap(), d.busy_fraction),
                "idle_fraction" => assert_eq!(parse_fraction(k.default).unwrap(), d.idle_fraction),
                "start_after" => assert_eq!(parse_duration(k.default).unwrap(), d.start_after),
                "suspend_after" => assert_eq!(parse_duration(k.default).unwrap(), d.suspend_after),
                "resume_after" => assert_eq!(parse_duration(k.default).unwrap(), d.resume_after),
                "evict_after" => assert_eq!(parse_duration(k.default).unwrap(), d.evict_after),
                "min_free" => assert_eq!(MinFree::parse(k.default).unwrap(), d.min_free),
                "window" => assert_eq!(parse_duration(k.default).unwrap(), d.window),
                other => panic!("knob {other} is not checked here"),
            }
            let key = if k.name == "host_cgroup" {
                "| host cgroup |".to_owned()
            } else {
                format!("[`{}`](PoliteConfig::{})", k.name, k.name)
            };
            let row = docs
                .lines()
                .find(|l| l.starts_with("//! |") && l.contains(&key))
                .unwrap_or_else(|| panic!("no doc row for {}", k.name));
            if k.flag.is_empty() {
                assert!(row.contains("| none |"), "{row}");
            } else {
                assert!(row.contains(&format!("`{}`", k.flag)), "{row}");
            }
            if !k.default.is_empty() {
                assert!(row.contains(&format!("`{}`", k.default)), "{row}");
            }
        }
        for flag in [
            "--host-cgroup PATH",
            "--owner-busy FRACTION",
            "--owner-idle FRACTION",
            "--start-after DURATION",
            "--suspend-after DURATION",
            "--resume-after DURATION",
            "--evict-after DURATION",
            "--min-free-mem SIZE",
        ] {
            assert!(KNOBS.iter().any(|k| k.flag == flag), "{flag}");
        }
    }

    // ----- policy ----------------------------------------------------------------------

    const GIB: u64 = 1 << 30;

    fn load(owner: f32) -> Sample {
        Sample {
            owner_cores: owner,
            herd_cores: 0.0,
            host_cores: 4.0,
            mem_available: 8 * GIB,
            mem_total: 16 * GIB,
            interval: S,
        }
    }

    /// Drives `p` from time `from` (seconds) for `n` one-second samples of `owner` cores
    /// (of 4), and returns the actions with the second they came at.
    fn run(p: &mut Policy, from: u64, n: u64, owner: f32, tasks: &[TaskMem]) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        for t in from..from + n {
            p.observe(secs(t), &load(owner), tasks);
            while let Some(a) = p.poll_action() {
                out.push((t, a));
            }
        }
        out
    }

    fn task(id: u64, mem: u64) -> TaskMem {
        TaskMem { id, mem }
    }

    fn running_policy() -> (Policy, u64) {
        let mut p = Policy::new(PoliteConfig::default());
        assert!(run(&mut p, 0, 20, 0.0, &[]).is_empty());
        assert_eq!(p.mode(), Mode::Running);
        (p, 20)
    }

    #[test]
    fn work_starts_only_after_start_after_of_idleness() {
        let mut p = Policy::new(PoliteConfig::default());
        assert_eq!(p.mode(), Mode::Waiting);
        assert!(!p.accepting());
        // The owner is busy for a while: still waiting, and nothing to suspend.
        assert!(run(&mut p, 0, 30, 3.5, &[]).is_empty());
        assert_eq!(p.mode(), Mode::Waiting);
        // Idle from t=30: the average falls below the idle line within the window,
        // then 15 s more.
        run(&mut p, 30, 10, 0.0, &[]);
        assert!(!p.accepting(), "10 s of idleness is not enough");
        run(&mut p, 40, 10, 0.0, &[]);
        assert!(p.accepting());
        assert_eq!(p.mode(), Mode::Running);

        let now = Policy::new(PoliteConfig {
            start_after: Duration::ZERO,
            ..PoliteConfig::default()
        });
        assert!(now.accepting(), "start_after 0 accepts at once");
    }

    #[test]
    fn a_first_sample_without_an_interval_does_not_count_as_idle() {
        let cfg = PoliteConfig {
            start_after: secs(2),
            ..PoliteConfig::default()
        };
        let mut p = Policy::new(cfg);
        let first = Sample {
            interval: Duration::ZERO,
            ..load(0.0)
        };
        for t in 0..10 {
            p.observe(secs(t), &first, &[]);
        }
        assert_eq!(p.owner_cores(), None);
        assert_eq!(p.mode(), Mode::Waiting);
    }

    #[test]
    fn a_short_spike_does_not_suspend() {
        let (mut p, t) = running_policy();
        let tasks = [task(1, GIB)];
        // Two seconds at full load (a browser tab), then quiet.
        let mut acts = run(&mut p, t, 2, 4.0, &tasks);
        acts.extend(run(&mut p, t + 2, 20, 0.2, &tasks));
        assert!(acts.is_empty(), "{acts:?}");
        assert_eq!(p.mode(), Mode::Running);
        assert!(p.accepting());
    }

    #[test]
    fn sustained_load_suspends_once_and_stops_accepting() {
        let (mut p, t) = running_policy();
        let tasks = [task(1, GIB)];
        let acts = run(&mut p, t, 30, 3.0, &tasks);
        assert_eq!(acts.len(), 1, "{acts:?}");
        let (at, a) = acts[0];
        assert_eq!(a, Action::Suspend);
        // Busy from the second sample (average above 2 cores), suspended 5 s later.
        assert!((t + 5..=t + 8).contains(&at), "suspended at {at}");
        assert_eq!(p.mode(), Mode::Suspended { since: secs(at) });
        assert!(!p.accepting());
    }

    #[test]
    fn busy_without_tasks_goes_back_to_waiting_without_actions() {
        let (mut p, t) = running_policy();
        assert!(run(&mut p, t, 30, 3.0, &[]).is_empty());
        assert_eq!(p.mode(), Mode::Waiting);
        // A task slipping in while the owner is still busy is suspended at once.
        let acts = run(&mut p, t + 30, 1, 3.0, &[task(9, 1)]);
        assert_eq!(acts, vec![(t + 30, Action::Suspend)]);
    }

    #[test]
    fn resume_needs_resume_after_below_the_idle_line() {
        let (mut p, t) = running_policy();
        let tasks = [task(1, GIB)];
        run(&mut p, t, 10, 3.0, &tasks);
        assert!(matches!(p.mode(), Mode::Suspended { .. }));
        // Between the lines (1.6 cores of 4: below busy 2.0, above idle 1.2): no resume.
        assert!(run(&mut p, t + 10, 60, 1.6, &tasks).is_empty());
        assert!(matches!(p.mode(), Mode::Suspended { .. }));
        // Below the idle line: resumed after 10 s (plus the window catching up).
        let acts = run(&mut p, t + 70, 20, 0.5, &tasks);
        assert_eq!(acts.len(), 1, "{acts:?}");
        assert_eq!(acts[0].1, Action::Resume);
        assert!((t + 80..=t + 83).contains(&acts[0].0), "{acts:?}");
        assert_eq!(p.mode(), Mode::Running);
        assert!(p.accepting());
        // Load between the lines again does not suspend: hysteresis.
        assert!(run(&mut p, t + 90, 60, 1.6, &tasks).is_empty());
    }

    #[test]
    fn a_long_suspension_evicts_every_task_once() {
        let (mut p, t) = running_policy();
        let tasks = [task(1, GIB), task(2, 2 * GIB)];
        let acts = run(&mut p, t, 700, 3.5, &tasks);
        let Mode::Suspended { since } = p.mode() else {
            panic!("{:?}", p.mode())
        };
        let evictions: Vec<_> = acts
            .iter()
            .filter(|(_, a)| matches!(a, Action::Evict { .. }))
            .collect();
        assert_eq!(evictions.len(), 2, "{acts:?}");
        for (at, a) in &evictions {
            assert_eq!(secs(*at), since + secs(600));
            assert!(matches!(
                a,
                Action::Evict {
                    reason: EvictReason::OwnerBusy,
                    ..
                }
            ));
        }
        // A task arriving during the long suspension is evicted at once.
        let more = [task(1, GIB), task(2, 2 * GIB), task(3, 1)];
        let acts = run(&mut p, t + 700, 1, 3.5, &more);
        assert_eq!(
            acts,
            vec![(
                t + 700,
                Action::Evict {
                    task: 3,
                    reason: EvictReason::OwnerBusy
                }
            )]
        );
        // The owner leaves: Resume still comes (the agent thaws nothing).
        let acts = run(&mut p, t + 701, 20, 0.0, &[]);
        assert_eq!(
            acts.iter().map(|a| a.1).collect::<Vec<_>>(),
            vec![Action::Resume]
        );
    }

    #[test]
    fn zero_evict_after_evicts_instead_of_suspending_for_long() {
        let mut p = Policy::new(PoliteConfig {
            evict_after: Duration::ZERO,
            ..PoliteConfig::default()
        });
        run(&mut p, 0, 20, 0.0, &[]);
        let acts = run(&mut p, 20, 10, 3.5, &[task(4, 1)]);
        let kinds: Vec<Action> = acts.iter().map(|a| a.1).collect();
        assert_eq!(
            kinds,
            vec![
                Action::Suspend,
                Action::Evict {
                    task: 4,
                    reason: EvictReason::OwnerBusy
                }
            ]
        );
        assert_eq!(acts[0].0, acts[1].0, "in the same observation");
    }

    #[test]
    fn memory_pressure_evicts_the_largest_task_one_at_a_time() {
        let (mut p, t) = running_policy();
        let tasks = [task(1, GIB), task(2, 3 * GIB), task(3, 2 * GIB)];
        let short = Sample {
            mem_available: GIB / 2, // below 5% of 16 GiB
            ..load(0.0)
        };
        p.observe(secs(t), &short, &tasks);
        assert_eq!(
            p.poll_action(),
            Some(Action::Evict {
                task: 2,
                reason: EvictReason::Memory
            })
        );
        assert_eq!(p.poll_action(), None, "one per observation");
        assert!(!p.accepting() && p.memory_low());
        // Task 2 is still dying: wait for it (MEMORY_SETTLE) before the next one.
        p.observe(secs(t + 1), &short, &tasks);
        assert_eq!(p.poll_action(), None);
        // Task 2 gone, memory still short: the next largest.
        let left = [task(1, GIB), task(3, 2 * GIB)];
        p.observe(secs(t + 2), &short, &left);
        assert_eq!(
            p.poll_action(),
            Some(Action::Evict {
                task: 3,
                reason: EvictReason::Memory
            })
        );
        // A task that stays listed too long does not block the next eviction.
        p.observe(secs(t + 2 + MEMORY_SETTLE.as_secs()), &short, &left);
        assert_eq!(
            p.poll_action(),
            Some(Action::Evict {
                task: 1,
                reason: EvictReason::Memory
            })
        );
        // Memory above the floor but below twice it: no eviction, still not accepting.
        let between = Sample {
            mem_available: GIB + GIB / 2,
            ..load(0.0)
        };
        p.observe(secs(t + 10), &between, &[]);
        assert_eq!(p.poll_action(), None);
        assert!(!p.accepting());
        p.observe(secs(t + 11), &load(0.0), &[]);
        assert!(p.accepting(), "memory recovered");
    }

    #[test]
    fn zero_min_free_never_evicts_for_memory() {
        let mut p = Policy::new(PoliteConfig {
            min_free: MinFree::Bytes(0),
            start_after: Duration::ZERO,
            ..PoliteConfig::default()
        });
        let empty = Sample {
            mem_available: 0,
            ..load(0.0)
        };
        p.observe(S, &empty, &[task(1, GIB)]);
        assert_eq!(p.poll_action(), None);
        assert!(p.accepting());
    }

    /// A small seeded generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_sequences_keep_the_invariants() {
        // How many of each action the sequences produced: the test must exercise all.
        let mut seen = [0usize; 4];
        for seed in 1..=300u64 {
            let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let d = |r: &mut Rng, max: u64| Duration::from_millis(r.below(max * 1000));
            let cfg = PoliteConfig {
                busy_fraction: 0.3 + r.below(70) as f32 / 100.0,
                idle_fraction: r.below(30) as f32 / 100.0,
                start_after: d(&mut r, 20),
                suspend_after: d(&mut r, 10),
                resume_after: d(&mut r, 15),
                evict_after: d(&mut r, 60),
                min_free: MinFree::Fraction(r.below(20) as f32 / 100.0),
                window: d(&mut r, 5),
            };
            let mut p = Policy::new(cfg.clone());
            let mut now = Duration::ZERO;
            let mut suspended = false;
            let mut tasks: Vec<TaskMem> = Vec::new();
            let mut next_id = 1;
            let mut level = 0.0f32;
            for step in 0..400 {
                now += Duration::from_millis(100 + r.below(1900));
                // Tasks come and go.
                if r.below(4) == 0 {
                    tasks.push(task(next_id, r.below(8 * GIB)));
                    next_id += 1;
                }
                if !tasks.is_empty() && r.below(5) == 0 {
                    let i = r.below(tasks.len() as u64) as usize;
                    tasks.remove(i);
                }
                // The owner's load wanders, with spikes.
                if r.below(6) == 0 {
                    level = r.below(400) as f32 / 100.0;
                }
                let owner = if r.below(10) == 0 { 4.0 } else { level };
                let sample = Sample {
                    owner_cores: owner,
                    herd_cores: r.below(200) as f32 / 100.0,
                    host_cores: 4.0,
                    mem_available: r.below(16 * GIB),
                    mem_total: 16 * GIB,
                    interval: if step == 0 {
                        Duration::ZERO
                    } else {
                        d(&mut r, 2)
                    },
                };
                p.observe(now, &sample, &tasks);
                while let Some(a) = p.poll_action() {
                    match a {
                        Action::Suspend => {
                            assert!(!suspended, "seed {seed}: Suspend twice ({cfg:?})");
                            suspended = true;
                            seen[0] += 1;
                        }
                        Action::Resume => {
                            assert!(suspended, "seed {seed}: Resume without Suspend");
                            suspended = false;
                            seen[1] += 1;
                        }
                        Action::Evict { task: id, reason } => {
                            seen[if reason == EvictReason::OwnerBusy {
                                2
                            } else {
                                3
                            }] += 1;
                            assert!(
                                tasks.iter().any(|t| t.id == id),
                                "seed {seed}: evicted {id}, not running"
                            );
                        }
                    }
                }
                assert_eq!(
                    suspended,
                    matches!(p.mode(), Mode::Suspended { .. }),
                    "seed {seed}: mode and actions disagree"
                );
                if suspended {
                    assert!(!p.accepting(), "seed {seed}: accepting while suspended");
                }
            }
        }
        assert!(
            seen.iter().all(|&n| n > 10),
            "suspend, resume, busy and memory evictions: {seen:?}"
        );
    }

    // ----- meter on fake trees ---------------------------------------------------------

    struct Fake {
        _tmp: tempfile::TempDir,
        root: PathBuf,
    }

    impl Fake {
        fn new() -> Fake {
            let tmp = tempfile::tempdir().unwrap();
            let root = fs::canonicalize(tmp.path()).unwrap();
            Fake { _tmp: tmp, root }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }
        fn put(&self, rel: &str, text: &str) {
            let p = self.p(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        fn dir(&self, rel: &str) {
            fs::create_dir_all(self.p(rel)).unwrap();
        }
        /// `/proc/PID/stat` with the given ticks (utime, stime, cutime, cstime).
        fn stat(&self, who: &str, pid: u32, ppid: u32, t: [u64; 4]) {
            self.put(
                &format!("proc/{who}/stat"),
                &format!(
                    "{pid} (a (b) c) S {ppid} 1 1 0 -1 4194560 10 0 0 0 {} {} {} {} 20 0 1 0 100 0 0\n",
                    t[0], t[1], t[2], t[3]
                ),
            );
        }
        fn meter(
            &self,
            host: Option<&str>,
            parent: Option<&str>,
        ) -> Result<OwnerMeter, PoliteError> {
            OwnerMeter::with_proc(
                &self.p("proc"),
                100,
                host.map(Path::new),
                parent.map(Path::new),
            )
        }
    }

    fn meminfo(total_kb: u64, avail_kb: u64) -> String {
        format!("MemTotal: {total_kb} kB\nMemFree: 1 kB\nMemAvailable: {avail_kb} kB\n")
    }

    const STAT_2CPU: &str = "cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 50 0 25 500 0 0 0 0 0 0\ncpu1 50 0 25 500 0 0 0 0 0 0\n";

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-3
    }

    /// A v1 machine with cpu and cpuacct co-mounted (the usual systemd layout).
    fn v1_machine() -> Fake {
        let f = Fake::new();
        let cg = f.p("cg");
        f.put(
            "proc/self/mountinfo",
            &format!(
                "31 23 0:28 / {r} rw - tmpfs tmpfs rw\n\
                 32 31 0:29 / {r}/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
                 35 31 0:32 / {r}/memory rw,relatime - cgroup cgroup rw,memory\n\
                 37 31 0:34 / {r}/freezer rw,relatime - cgroup cgroup rw,freezer\n\
                 40 31 0:37 / {r}/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n",
                r = cg.display()
            ),
        );
        f.put(
            "proc/self/cgroup",
            "9:name=systemd:/\n4:memory:/bed/h1\n3:freezer:/bed/h1\n2:cpu,cpuacct:/bed/h1\n",
        );
        f.put("proc/stat", STAT_2CPU);
        f.put("proc/meminfo", &meminfo(16 << 20, 8 << 20));
        f.stat("self", 4242, 1, [100, 0, 0, 0]);
        f.dir("proc/self/task/4242"); // no `children` file: children by scanning
        f.stat("4242", 4242, 1, [100, 0, 0, 0]);
        // The host: 1.5 cores, 1 GiB.
        f.put("cg/cpu,cpuacct/bed/h1/cpuacct.usage", "5000000000\n");
        f.put("cg/cpu,cpuacct/bed/h1/cpu.cfs_quota_us", "150000\n");
        f.put("cg/cpu,cpuacct/bed/h1/cpu.cfs_period_us", "100000\n");
        f.put("cg/cpu,cpuacct/bed/h1/cgroup.procs", "4242\n");
        f.put("cg/cpu,cpuacct/bed/cpu.cfs_quota_us", "-1\n");
        f.put("cg/cpu,cpuacct/bed/cpu.cfs_period_us", "100000\n");
        f.put(
            "cg/memory/bed/h1/memory.limit_in_bytes",
            &(1u64 << 30).to_string(),
        );
        f.put(
            "cg/memory/bed/h1/memory.usage_in_bytes",
            &(600u64 << 20).to_string(),
        );
        f.put(
            "cg/memory/bed/h1/memory.stat",
            &format!(
                "cache 1\ninactive_file 5\ntotal_inactive_file {}\n",
                100u64 << 20
            ),
        );
        f.put(
            "cg/memory/bed/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        // A running task: cpuacct usage, memory, freezer.
        let t = "herd-task-00000000000000ab";
        f.put(
            &format!("cg/cpu,cpuacct/bed/h1/{t}/cpuacct.usage"),
            "2000000000\n",
        );
        f.put(&format!("cg/cpu,cpuacct/bed/h1/{t}/cgroup.procs"), "5000\n");
        f.put(
            &format!("cg/memory/bed/h1/{t}/memory.usage_in_bytes"),
            "123456\n",
        );
        f.dir(&format!("cg/freezer/bed/h1/{t}"));
        // Not a task group.
        f.dir("cg/cpu,cpuacct/bed/h1/herd-task-xyz");
        f
    }

    #[test]
    fn v1_host_cgroup_by_directory() {
        let f = v1_machine();
        let host = f.p("cg/cpu,cpuacct/bed/h1");
        let mut m = f.meter(Some(host.to_str().unwrap()), None).unwrap();
        assert_eq!(
            m.host.as_ref().unwrap().cpu,
            CpuSource::Cpuacct(host.clone())
        );
        assert!(m.host.as_ref().unwrap().inside);
        let t0 = Instant::now();
        let first = m.sample_at(t0);
        assert_eq!(first.interval, Duration::ZERO);
        assert_eq!(first.owner_cores, 0.0);
        assert!(close(first.host_cores, 1.5), "{first:?}");
        assert_eq!(first.mem_total, 1 << 30);
        // 1024 MiB limit - (600 - 100) MiB working set.
        assert_eq!(first.mem_available, 524 << 20);

        // One second later: the host used 1.2 s; herd 0.5 s (0.1 s the agent, 0.4 s
        // its task).
        f.put("cg/cpu,cpuacct/bed/h1/cpuacct.usage", "6200000000\n");
        f.stat("self", 4242, 1, [110, 0, 0, 0]);
        f.put(
            "cg/cpu,cpuacct/bed/h1/herd-task-00000000000000ab/cpuacct.usage",
            "2400000000\n",
        );
        let s = m.sample_at(t0 + S);
        assert_eq!(s.interval, S);
        assert!(close(s.herd_cores, 0.5), "{s:?}");
        assert!(close(s.owner_cores, 0.7), "{s:?}");
    }

    #[test]
    fn a_finished_task_moves_into_the_agents_children_without_double_counting() {
        let f = v1_machine();
        let mut m = f.meter(Some("/bed/h1"), None).unwrap();
        let t0 = Instant::now();
        m.sample_at(t0);
        // The task used 0.3 s more, then ended: its group is gone and the supervisor
        // was reaped, so the agent's cutime holds the task's whole 2.3 s.
        fs::remove_dir_all(f.p("cg/cpu,cpuacct/bed/h1/herd-task-00000000000000ab")).unwrap();
        f.stat("self", 4242, 1, [100, 0, 200, 30]);
        f.put("cg/cpu,cpuacct/bed/h1/cpuacct.usage", "5300000000\n");
        let s = m.sample_at(t0 + S);
        assert!(close(s.herd_cores, 0.3), "{s:?}");
        assert!(close(s.owner_cores, 0.0), "{s:?}");
    }

    #[test]
    fn live_children_count_as_herd() {
        let f = v1_machine();
        let mut m = f.meter(Some("/bed/h1"), None).unwrap();
        assert!(!m.children_files);
        f.stat("4300", 4300, 4242, [10, 0, 0, 0]); // a file service
        f.stat("4301", 4301, 1, [10, 0, 0, 0]); // somebody else's
        let t0 = Instant::now();
        m.sample_at(t0);
        f.stat("4300", 4300, 4242, [40, 10, 0, 0]);
        f.stat("4301", 4301, 1, [90, 0, 0, 0]);
        f.put("cg/cpu,cpuacct/bed/h1/cpuacct.usage", "6000000000\n");
        let s = m.sample_at(t0 + S);
        assert!(close(s.herd_cores, 0.4), "{s:?}");
        assert!(close(s.owner_cores, 0.6), "{s:?}");

        // With /proc/self/task/TID/children, those are used instead of a scan.
        f.put("proc/self/task/4242/children", "4301 ");
        let mut m = f.meter(Some("/bed/h1"), None).unwrap();
        assert!(m.children_files);
        m.sample_at(t0);
        f.stat("4301", 4301, 1, [140, 0, 0, 0]);
        let s = m.sample_at(t0 + S);
        assert!(close(s.herd_cores, 0.5), "{s:?}");
    }

    #[test]
    fn a_client_running_a_task_here_counts_as_herd_until_it_is_gone() {
        let f = v1_machine();
        let mut m = f.meter(Some("/bed/h1"), None).unwrap();
        // `herd map` (5000, not the agent's child) runs a job (5001) itself.
        f.stat("5000", 5000, 1, [50, 0, 20, 0]);
        f.put("proc/5000/task/5000/children", "5001 ");
        f.stat("5001", 5001, 5000, [5, 0, 0, 0]);
        let clients = m.clients();
        clients.add(5000);
        let t0 = Instant::now();
        m.sample_at(t0);
        f.stat("5000", 5000, 1, [60, 0, 20, 0]);
        f.stat("5001", 5001, 5000, [35, 0, 0, 0]);
        f.put("cg/cpu,cpuacct/bed/h1/cpuacct.usage", "6000000000\n");
        let s = m.sample_at(t0 + S);
        assert!(close(s.herd_cores, 0.4), "{s:?}");
        assert!(close(s.owner_cores, 0.6), "{s:?}");
        // The job ends and is reaped: its ticks move into the client's cutime.
        f.put("proc/5000/task/5000/children", "");
        fs::remove_dir_all(f.p("proc/5001")).unwrap();
        f.stat("5000", 5000, 1, [60, 0, 60, 0]);
        f.put("cg/cpu,cpuacct/bed/h1/cpuacct.usage", "6100000000\n");
        // (It ran 5 more ticks before it ended.)
        let s = m.sample_at(t0 + 2 * S);
        assert!(close(s.herd_cores, 0.05), "{s:?}");
        assert!(close(s.owner_cores, 0.05), "{s:?}");
        // The client exits: what it used stays counted, nothing more is added.
        fs::remove_dir_all(f.p("proc/5000")).unwrap();
        f.put("cg/cpu,cpuacct/bed/h1/cpuacct.usage", "6600000000\n");
        let s = m.sample_at(t0 + 3 * S);
        assert!(close(s.herd_cores, 0.0), "{s:?}");
        assert!(close(s.owner_cores, 0.5), "{s:?}");
    }

    #[test]
    fn an_agent_outside_the_host_is_not_subtracted() {
        let f = v1_machine();
        f.put("cg/cpu,cpuacct/other/cpuacct.usage", "0\n");
        let mut m = f.meter(Some("/other"), None).unwrap();
        assert!(!m.host.as_ref().unwrap().inside);
        let t0 = Instant::now();
        m.sample_at(t0);
        f.put("cg/cpu,cpuacct/other/cpuacct.usage", "1000000000\n");
        f.stat("self", 4242, 1, [150, 0, 0, 0]);
        let s = m.sample_at(t0 + S);
        assert!(close(s.owner_cores, 1.0), "{s:?}");
        assert!(close(s.herd_cores, 0.5), "{s:?}");
        // No quota there: the machine's two CPUs; no memory group: the machine's.
        assert!(close(s.host_cores, 2.0), "{s:?}");
        assert_eq!(s.mem_total, 16 << 30);
        assert_eq!(s.mem_available, 8 << 30);
    }

    #[test]
    fn the_whole_machine_without_a_host_cgroup() {
        let f = v1_machine();
        let mut m = f.meter(None, None).unwrap();
        let t0 = Instant::now();
        m.sample_at(t0);
        // 1 s on 2 CPUs: user +60 (of which guest 20), nice +10, system +20, idle +50,
        // iowait +40, irq +5, softirq +5, steal +10, guest +20 → busy 100 ticks.
        f.put(
            "proc/stat",
            "cpu  160 10 70 1050 40 5 5 10 20 0\ncpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\nintr 5\n",
        );
        f.stat("self", 4242, 1, [120, 0, 0, 0]);
        let s = m.sample_at(t0 + S);
        // Host 1.0 core, herd 0.2 (the agent) + 0 (task usage unchanged).
        assert!(close(s.herd_cores, 0.2), "{s:?}");
        assert!(close(s.owner_cores, 0.8), "{s:?}");
        assert!(close(s.host_cores, 2.0), "{s:?}");
        assert_eq!((s.mem_available, s.mem_total), (8 << 30, 16 << 30));
    }

    #[test]
    fn a_bad_host_cgroup_is_named_in_the_error() {
        let f = v1_machine();
        for bad in ["/no/such/group", "nothere"] {
            let e = f.meter(Some(bad), None).unwrap_err();
            assert!(matches!(e, PoliteError::HostCgroup { .. }));
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("--host-cgroup {bad}:")), "{msg}");
            assert!(msg.contains("cpu,cpuacct"), "says where it looked: {msg}");
        }
        let missing = f.p("cg/cpu,cpuacct/bed/h9");
        let e = f.meter(Some(missing.to_str().unwrap()), None).unwrap_err();
        assert!(e.to_string().contains("no such cgroup directory"), "{e}");
        let file = f.p("cg/cpu,cpuacct/bed/h1/cpuacct.usage");
        let e = f.meter(Some(file.to_str().unwrap()), None).unwrap_err();
        assert!(e.to_string().contains("not a cgroup directory"), "{e}");
    }

    /// A pure cgroup v2 machine, the agent in `/hosts/h1/agent` after
    /// `prepare_agent_cgroup`, tasks under `/hosts/h1`.
    #[test]
    fn v2_host_cgroup_by_cgroup_path() {
        let f = Fake::new();
        let cg = f.p("cg");
        f.put(
            "proc/self/mountinfo",
            &format!(
                "30 23 0:26 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
                cg.display()
            ),
        );
        f.put("cg/cgroup.controllers", "cpu memory pids\n");
        f.put("proc/self/cgroup", "0::/hosts/h1/agent\n");
        f.put("proc/stat", STAT_2CPU);
        f.put("proc/meminfo", &meminfo(16 << 20, 1 << 20));
        f.stat("self", 77, 1, [0, 0, 0, 0]);
        f.put("cg/hosts/h1/cpu.stat", "usage_usec 1000000\nuser_usec 1\n");
        f.put("cg/hosts/h1/cpu.max", "50000 100000\n");
        f.put("cg/hosts/cpu.max", "max 100000\n");
        f.put("cg/hosts/h1/memory.max", &(4u64 << 30).to_string());
        f.put("cg/hosts/h1/memory.current", &(1u64 << 30).to_string());
        f.put("cg/hosts/h1/memory.stat", "anon 1\ninactive_file 0\n");
        f.put("cg/hosts/h1/agent/cpu.stat", "usage_usec 5\n");
        let t = "cg/hosts/h1/herd-task-0000000000000007";
        f.put(&format!("{t}/cpu.stat"), "usage_usec 300000\n");
        f.put(&format!("{t}/cgroup.procs"), "90\n");

        let mut m = f.meter(Some("/hosts/h1"), Some("/hosts/h1")).unwrap();
        assert_eq!(
            m.host.as_ref().unwrap().cpu,
            CpuSource::V2(f.p("cg/hosts/h1"))
        );
        let t0 = Instant::now();
        let first = m.sample_at(t0);
        assert!(close(first.host_cores, 0.5), "{first:?}");
        // The limit leaves 3 GiB, the machine only 1 GiB.
        assert_eq!((first.mem_available, first.mem_total), (1 << 30, 4 << 30));
        f.put("cg/hosts/h1/cpu.stat", "usage_usec 1450000\n");
        f.put(&format!("{t}/cpu.stat"), "usage_usec 500000\n");
        f.stat("self", 77, 1, [5, 0, 0, 0]);
        let s = m.sample_at(t0 + S * 2);
        // Over 2 s: host 0.45 s, herd 0.2 + 0.05 s.
        assert!(close(s.herd_cores, 0.125), "{s:?}");
        assert!(close(s.owner_cores, 0.1), "{s:?}");

        // Without the task parent, the meter looks under the agent's own leaf and
        // misses the task: its CPU then counts as the owner's.
        let mut blind = f.meter(Some("/hosts/h1"), None).unwrap();
        blind.sample_at(t0);
        f.put("cg/hosts/h1/cpu.stat", "usage_usec 1650000\n");
        f.put(&format!("{t}/cpu.stat"), "usage_usec 700000\n");
        let s = blind.sample_at(t0 + S);
        assert!(
            close(s.owner_cores, 0.2) && close(s.herd_cores, 0.0),
            "{s:?}"
        );
    }

    /// This machine's layout: separate cpu and cpuacct hierarchies, a unified v2 mount,
    /// the host group made by the testbed in cpu, memory (under another path) and the
    /// unified mount but not in cpuacct; task groups in cpu, memory and freezer only.
    #[test]
    fn hybrid_layout_like_the_testbeds() {
        let f = Fake::new();
        let cg = f.p("cg");
        f.put(
            "proc/self/mountinfo",
            &format!(
                "32 31 0:29 / {r}/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                 33 31 0:30 / {r}/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
                 35 31 0:32 / {r}/memory rw,relatime - cgroup cgroup rw,memory\n\
                 37 31 0:34 / {r}/freezer rw,relatime - cgroup cgroup rw,freezer\n\
                 41 31 0:38 / {r}/unified rw,relatime - cgroup2 cgroup2 rw\n",
                r = cg.display()
            ),
        );
        f.put("cg/unified/cgroup.controllers", "");
        f.put(
            "proc/self/cgroup",
            "4:memory:/api/x/bed/h1\n3:freezer:/bed/h1\n2:cpuacct:/\n1:cpu:/bed/h1\n0::/bed/h1\n",
        );
        f.put("proc/stat", STAT_2CPU);
        f.put("proc/meminfo", &meminfo(16 << 20, 8 << 20));
        f.stat("self", 500, 1, [0, 0, 0, 0]);
        f.stat("500", 500, 1, [0, 0, 0, 0]);
        f.put(
            "proc/500/cgroup",
            "4:memory:/api/x/bed/h1\n3:freezer:/bed/h1\n2:cpuacct:/\n1:cpu:/bed/h1\n0::/bed/h1\n",
        );
        f.put("cg/cpu/bed/h1/cgroup.procs", "500\n");
        f.put("cg/cpu/bed/h1/cpu.cfs_quota_us", "100000\n");
        f.put("cg/cpu/bed/h1/cpu.cfs_period_us", "100000\n");
        f.put("cg/unified/bed/h1/cpu.stat", "usage_usec 0\n");
        f.put(
            "cg/memory/api/x/bed/h1/memory.limit_in_bytes",
            &(2u64 << 30).to_string(),
        );
        f.put(
            "cg/memory/api/x/bed/h1/memory.usage_in_bytes",
            &(1u64 << 30).to_string(),
        );
        f.put(
            "cg/memory/api/x/bed/h1/memory.stat",
            "total_inactive_file 0\n",
        );
        // A task: pid 1 (600) whose task (601) ran 0.2 s; its group has no usage file.
        let t = "herd-task-00000000000000c1";
        f.put(&format!("cg/cpu/bed/h1/{t}/cgroup.procs"), "600\n601\n");
        f.put(
            &format!("cg/memory/api/x/bed/h1/{t}/memory.usage_in_bytes"),
            "4096\n",
        );
        f.dir(&format!("cg/freezer/bed/h1/{t}"));
        f.stat("600", 600, 550, [0, 0, 0, 0]);
        f.stat("601", 601, 600, [20, 0, 0, 0]);
        f.stat("550", 550, 500, [1, 0, 0, 0]); // the supervisor

        let host = f.p("cg/cpu/bed/h1");
        let mut m = f.meter(Some(host.to_str().unwrap()), None).unwrap();
        let h = m.host.as_ref().unwrap();
        assert_eq!(h.cpu, CpuSource::V2(f.p("cg/unified/bed/h1")));
        assert!(h.inside);
        let t0 = Instant::now();
        let first = m.sample_at(t0);
        assert!(close(first.host_cores, 1.0), "{first:?}");
        assert_eq!((first.mem_available, first.mem_total), (1 << 30, 2 << 30));
        // 1 s: the host used 1.0 s, of which the task 0.6 s (its child 602 ran 0.1 s
        // and was reaped by 601) and the supervisor 0.
        f.put("cg/unified/bed/h1/cpu.stat", "usage_usec 1000000\n");
        f.put(&format!("cg/cpu/bed/h1/{t}/cgroup.procs"), "600\n601\n");
        f.stat("601", 601, 600, [70, 0, 10, 0]);
        let s = m.sample_at(t0 + S);
        assert!(close(s.herd_cores, 0.6), "{s:?}");
        assert!(close(s.owner_cores, 0.4), "{s:?}");
        // The task tree exits; pid 1 is reaped by the supervisor: continuous.
        f.put(&format!("cg/cpu/bed/h1/{t}/cgroup.procs"), "");
        f.stat("550", 550, 500, [1, 0, 80, 0]);
        f.put("cg/unified/bed/h1/cpu.stat", "usage_usec 1000000\n");
        let s = m.sample_at(t0 + S * 2);
        assert!(
            close(s.herd_cores, 0.0) && close(s.owner_cores, 0.0),
            "{s:?}"
        );
    }

    #[test]
    fn stat_and_proc_parsers() {
        let s = parse_stat("12 (we(i)rd) name) R 7 1 1 0 -1 0 0 0 0 0 3 4 5 6 20 0").unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 12,
                ppid: 7,
                ticks: 18,
                start: 0,
            }
        );
        let s = parse_stat("12 (x) R 7 1 1 0 -1 0 0 0 0 0 3 4 5 6 20 0 1 0 4711 0").unwrap();
        assert_eq!(s.start, 4711);
        assert_eq!(online_cpus(STAT_2CPU), 2);
        assert_eq!(machine_busy_ticks(STAT_2CPU), Some(150));
        assert_eq!(task_id("herd-task-00000000000000ff"), Some(255));
        assert_eq!(task_id("herd-task-ff"), None);
        assert_eq!(task_id("herd-task-0000000000000zff"), None);
    }
}
