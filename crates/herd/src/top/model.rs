//! The state behind `herd top`, without a terminal: it takes the agent's answers
//! ([`Snapshot`]s, with the time they arrived) and keys ([`Key`]), and answers what
//! to show ([`Model::host_rows`], [`Model::task_rows`], [`Model::throughput`]) and
//! what to do ([`Action`]). No I/O, no clock: the driver passes the time in, so tests
//! feed it by hand.
//!
//! Derived figures:
//! * herd's load on a host is its load minus its owner's (both in cores);
//! * a host's cache hit rate is hits / (hits + misses) over the last
//!   [`HIT_WINDOW`] snapshots, or since the host started when nothing was read in
//!   that window;
//! * throughput is the number of this workstation's tasks that ended between two
//!   snapshots: those that left `herd ps`, plus those sent to helpers
//!   (`tasks_submitted`) that started and ended between two snapshots without ever
//!   being seen running. Killed and failed tasks count as ended; a task that runs
//!   on this machine and ends within one poll is missed.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};

use herd_proto::{AgentStatus, MemberState, NodeInfo, TaskInfo};

/// Snapshots over which a host's cache hit rate is measured.
pub const HIT_WINDOW: usize = 10;
/// Throughput samples kept (one per snapshot: ten minutes at one a second).
pub const HISTORY: usize = 600;
/// Seconds over which the average throughput is shown.
pub const AVERAGE_SECS: f64 = 60.0;
/// Seconds a message stays under the lists (a key clears it sooner).
pub const NOTICE_SECS: f64 = 10.0;

/// One poll of the local agent.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// `herd nodes`.
    pub nodes: Vec<NodeInfo>,
    /// `herd ps`.
    pub tasks: Vec<TaskInfo>,
    /// `herd status`.
    pub status: AgentStatus,
}

/// A key press, as far as `herd top` cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A printable character (case matters: `K` kills, `k` moves up).
    Char(char),
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Tab.
    Tab,
    /// Shift-Tab.
    BackTab,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Home.
    Home,
    /// End.
    End,
    /// Backspace.
    Backspace,
    /// Ctrl-C: quits whatever the mode.
    Interrupt,
}

/// What the driver should do after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing but redraw.
    None,
    /// Leave `herd top`.
    Quit,
    /// Poll the agent now.
    Refresh,
    /// Drain (`true`) or undrain a node.
    Drain {
        /// The node.
        node: String,
        /// Drain or undrain.
        drain: bool,
    },
    /// Kill a task (confirmed).
    Kill(u64),
}

/// Which list keys act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    /// The hosts.
    Hosts,
    /// The tasks.
    Tasks,
}

/// What keys mean now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Moving, sorting, acting.
    Normal,
    /// Typing the focused list's filter.
    Filter,
    /// Asking whether to kill a task.
    ConfirmKill {
        /// The task.
        id: u64,
        /// Its command, to show in the question.
        command: String,
    },
    /// The help window is open.
    Help,
}

/// A one-line message under the lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Something worked, or a hint.
    Info(String),
    /// Something failed.
    Error(String),
}

/// Host list columns to sort by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostSort {
    /// Name, A to Z.
    Name,
    /// State: alive first.
    State,
    /// Granted cores, most first.
    Cores,
    /// Load (owner's and herd's), highest first.
    Load,
    /// Free memory, most first.
    Mem,
    /// herd tasks running there, most first.
    Tasks,
    /// Cache hit rate, best first.
    Hit,
}

impl HostSort {
    const ALL: [HostSort; 7] = [
        HostSort::Name,
        HostSort::State,
        HostSort::Cores,
        HostSort::Load,
        HostSort::Mem,
        HostSort::Tasks,
        HostSort::Hit,
    ];

    /// The column's name as shown.
    pub fn label(self) -> &'static str {
        match self {
            HostSort::Name => "name",
            HostSort::State => "state",
            HostSort::Cores => "cores",
            HostSort::Load => "load",
            HostSort::Mem => "memory",
            HostSort::Tasks => "tasks",
            HostSort::Hit => "hit rate",
        }
    }

    fn next(self) -> HostSort {
        let i = Self::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }
}

/// Task list columns to sort by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskSort {
    /// Id, oldest first.
    Id,
    /// Running first, then queued.
    State,
    /// Host, A to Z (queued last).
    Host,
    /// Time running or queued, longest first.
    Time,
    /// Command, A to Z.
    Command,
}

impl TaskSort {
    const ALL: [TaskSort; 5] = [
        TaskSort::Id,
        TaskSort::State,
        TaskSort::Host,
        TaskSort::Time,
        TaskSort::Command,
    ];

    /// The column's name as shown.
    pub fn label(self) -> &'static str {
        match self {
            TaskSort::Id => "id",
            TaskSort::State => "state",
            TaskSort::Host => "host",
            TaskSort::Time => "time",
            TaskSort::Command => "command",
        }
    }

    fn next(self) -> TaskSort {
        let i = Self::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }
}

/// A host's state as `herd top` shows it: membership, refined by whether it takes
/// work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostState {
    /// Alive and taking work (or not an executing node at all).
    Alive,
    /// Alive but taking no new work: drained (`herd drain`, from here or elsewhere).
    Drained,
    /// Alive but taking no new work by its own policy: its owner is busy or has not
    /// been idle long enough, or its memory is short.
    Held,
    /// Missed probes.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left the cluster.
    Left,
    /// Its certificate was revoked (`herd revoke`): refused everywhere.
    Revoked,
}

impl HostState {
    /// The state's name as shown (at most 7 characters).
    pub fn label(self) -> &'static str {
        match self {
            HostState::Alive => "alive",
            HostState::Drained => "drained",
            HostState::Held => "held",
            HostState::Suspect => "suspect",
            HostState::Dead => "dead",
            HostState::Left => "left",
            HostState::Revoked => "revoked",
        }
    }
}

/// One line of the host list.
#[derive(Clone, Debug, PartialEq)]
pub struct HostRow {
    /// Node name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// Whether it is the agent `herd top` talks to.
    pub local: bool,
    /// Its state.
    pub state: HostState,
    /// Whether it runs tasks (exec role and cores granted).
    pub exec: bool,
    /// Cores granted to herd.
    pub cpus: f32,
    /// The owner's load, in cores.
    pub owner: f32,
    /// herd's load (the host's load minus the owner's), in cores.
    pub herd: f32,
    /// Bytes of memory free for herd.
    pub mem_free: u64,
    /// Bytes of memory granted to herd.
    pub mem_total: u64,
    /// herd tasks running there.
    pub tasks: u32,
    /// Cache hit rate, 0 to 1; none before anything was read.
    pub hit: Option<f64>,
}

/// The cluster's throughput, for the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    /// Tasks ended in each interval, oldest first.
    pub counts: Vec<u64>,
    /// Tasks per second in the last interval (none before two snapshots).
    pub now: Option<f64>,
    /// Tasks per second over the last [`AVERAGE_SECS`].
    pub average: Option<f64>,
    /// Tasks ended since `herd top` started.
    pub total: u64,
}

#[derive(Clone, Debug)]
struct Previous {
    /// Task ids in `herd ps`, and whether each ran on a helper.
    ids: HashMap<u64, bool>,
    submitted: u64,
    uptime: f64,
    at: f64,
}

/// Per list: how it is sorted and filtered, and what is selected.
#[derive(Clone, Debug, Default)]
struct ListState<K> {
    reverse: bool,
    filter: String,
    /// The selected item, followed across refreshes and re-sorts.
    selected: Option<K>,
    /// Its last position, used when it disappears.
    index: usize,
    /// The first row shown (kept by the view).
    offset: usize,
    /// Rows that fit on screen (set by the view), for page up and down.
    page: usize,
}

/// Everything `herd top` shows and remembers.
#[derive(Clone, Debug)]
pub struct Model {
    nodes: Vec<NodeInfo>,
    tasks: Vec<TaskInfo>,
    status: Option<AgentStatus>,
    hits: HashMap<String, VecDeque<(u64, u64)>>,
    previous: Option<Previous>,
    /// (tasks ended, seconds) per interval, oldest first.
    samples: VecDeque<(u64, f64)>,
    total: u64,
    drained_here: BTreeSet<String>,
    focus: Pane,
    host_sort: HostSort,
    task_sort: TaskSort,
    hosts: ListState<String>,
    task_list: ListState<u64>,
    mode: Mode,
    notice: Option<Notice>,
    /// When the notice came (in snapshot time).
    notice_at: f64,
    /// When the last snapshot came.
    now: f64,
    poll_error: Option<String>,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty model: no snapshot yet, hosts focused and sorted by name.
    pub fn new() -> Model {
        Model {
            nodes: Vec::new(),
            tasks: Vec::new(),
            status: None,
            hits: HashMap::new(),
            previous: None,
            samples: VecDeque::new(),
            total: 0,
            drained_here: BTreeSet::new(),
            focus: Pane::Hosts,
            host_sort: HostSort::Name,
            task_sort: TaskSort::Id,
            hosts: ListState {
                page: 10,
                ..ListState::default()
            },
            task_list: ListState {
                page: 10,
                ..ListState::default()
            },
            mode: Mode::Normal,
            notice: None,
            notice_at: 0.0,
            now: 0.0,
            poll_error: None,
        }
    }

    /// Takes a snapshot that arrived at `now` (seconds, any origin, never
    /// decreasing).
    pub fn observe(&mut self, snap: Snapshot, now: f64) {
        self.poll_error = None;
        self.now = now;
        if now - self.notice_at >= NOTICE_SECS {
            self.notice = None;
        }
        // Cache counters, per host; a restarted host starts again from zero.
        for n in &snap.nodes {
            let h = self.hits.entry(n.name.clone()).or_default();
            if h.back()
                .is_some_and(|&(hits, misses)| n.cache_hits < hits || n.cache_misses < misses)
            {
                h.clear();
            }
            h.push_back((n.cache_hits, n.cache_misses));
            while h.len() > HIT_WINDOW + 1 {
                h.pop_front();
            }
        }
        self.hits
            .retain(|name, _| snap.nodes.iter().any(|n| &n.name == name));

        // Throughput.
        let local = snap.nodes.iter().find(|n| n.local).map(|n| n.name.as_str());
        let ids: HashMap<u64, bool> = snap
            .tasks
            .iter()
            .map(|t| {
                let remote = t.state == "running" && t.node.is_some() && t.node.as_deref() != local;
                (t.id, remote)
            })
            .collect();
        let submitted = snap.status.tasks_submitted;
        let uptime = snap.status.uptime_secs;
        if let Some(prev) = &self.previous {
            let restarted = submitted < prev.submitted || uptime < prev.uptime;
            let dt = now - prev.at;
            if !restarted && dt > 0.0 {
                let ended = prev.ids.keys().filter(|id| !ids.contains_key(id)).count() as u64;
                let seen_starting = ids
                    .iter()
                    .filter(|&(id, &remote)| remote && prev.ids.get(id) != Some(&true))
                    .count() as u64;
                let unseen = (submitted - prev.submitted).saturating_sub(seen_starting);
                let n = ended + unseen;
                self.total += n;
                self.samples.push_back((n, dt));
                while self.samples.len() > HISTORY {
                    self.samples.pop_front();
                }
            }
        }
        self.previous = Some(Previous {
            ids,
            submitted,
            uptime,
            at: now,
        });

        // A node drained from here is marked until its own report says it is drained
        // (from then on the report tells), or it takes work again.
        for n in &snap.nodes {
            if n.accepting || n.drained {
                self.drained_here.remove(&n.name);
            }
        }
        self.nodes = snap.nodes;
        self.tasks = snap.tasks;
        self.status = Some(snap.status);
    }

    /// The agent could not be asked: keep the last snapshot, say why.
    pub fn poll_failed(&mut self, error: String) {
        self.poll_error = Some(error);
    }

    /// Why the last poll failed, if it did.
    pub fn poll_error(&self) -> Option<&str> {
        self.poll_error.as_deref()
    }

    /// The local agent's status from the last snapshot.
    pub fn status(&self) -> Option<&AgentStatus> {
        self.status.as_ref()
    }

    /// All nodes, alive ones and nodes in total.
    pub fn node_counts(&self) -> (usize, usize) {
        let alive = self
            .nodes
            .iter()
            .filter(|n| n.state == MemberState::Alive)
            .count();
        (alive, self.nodes.len())
    }

    /// Cores granted by alive executing nodes.
    pub fn cores(&self) -> f32 {
        self.nodes
            .iter()
            .filter(|n| n.state == MemberState::Alive && is_exec(n))
            .fold(0.0, |sum, n| sum + n.cpus)
    }

    /// The focused list.
    pub fn focus(&self) -> Pane {
        self.focus
    }

    /// What keys mean now.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// The message to show, if any.
    pub fn notice(&self) -> Option<&Notice> {
        self.notice.as_ref()
    }

    /// How the host list is sorted: column, reversed.
    pub fn host_sort(&self) -> (HostSort, bool) {
        (self.host_sort, self.hosts.reverse)
    }

    /// How the task list is sorted: column, reversed.
    pub fn task_sort(&self) -> (TaskSort, bool) {
        (self.task_sort, self.task_list.reverse)
    }

    /// A list's filter (empty: none).
    pub fn filter(&self, pane: Pane) -> &str {
        match pane {
            Pane::Hosts => &self.hosts.filter,
            Pane::Tasks => &self.task_list.filter,
        }
    }

    /// A list's first shown row and rows on screen, as the view last left them.
    pub fn scroll(&self, pane: Pane) -> usize {
        match pane {
            Pane::Hosts => self.hosts.offset,
            Pane::Tasks => self.task_list.offset,
        }
    }

    /// The view records where a list is scrolled and how many rows fit.
    pub fn set_scroll(&mut self, pane: Pane, offset: usize, page: usize) {
        let l = match pane {
            Pane::Hosts => &mut self.hosts.offset,
            Pane::Tasks => &mut self.task_list.offset,
        };
        *l = offset;
        let p = match pane {
            Pane::Hosts => &mut self.hosts.page,
            Pane::Tasks => &mut self.task_list.page,
        };
        *p = page.max(1);
    }

    /// The host list as shown: filtered and sorted.
    pub fn host_rows(&self) -> Vec<HostRow> {
        let filter = self.hosts.filter.to_lowercase();
        let mut rows: Vec<HostRow> = self
            .nodes
            .iter()
            .filter(|n| n.name.to_lowercase().contains(&filter))
            .map(|n| self.host_row(n))
            .collect();
        let sort = self.host_sort;
        rows.sort_by(|a, b| {
            let o = match sort {
                HostSort::Name => Ordering::Equal,
                HostSort::State => a.state.cmp(&b.state),
                HostSort::Cores => b.cpus.total_cmp(&a.cpus),
                HostSort::Load => (b.owner + b.herd).total_cmp(&(a.owner + a.herd)),
                HostSort::Mem => b.mem_free.cmp(&a.mem_free),
                HostSort::Tasks => b.tasks.cmp(&a.tasks),
                HostSort::Hit => match (a.hit, b.hit) {
                    (Some(x), Some(y)) => y.total_cmp(&x),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                },
            };
            o.then_with(|| a.name.cmp(&b.name))
        });
        if self.hosts.reverse {
            rows.reverse();
        }
        rows
    }

    fn host_row(&self, n: &NodeInfo) -> HostRow {
        let exec = is_exec(n);
        let state = match n.state {
            MemberState::Alive if exec && !n.accepting => {
                // Drained from here shows at once, before the node's report says so.
                if n.drained || self.drained_here.contains(&n.name) {
                    HostState::Drained
                } else {
                    HostState::Held
                }
            }
            MemberState::Alive => HostState::Alive,
            MemberState::Suspect => HostState::Suspect,
            MemberState::Dead => HostState::Dead,
            MemberState::Left => HostState::Left,
            MemberState::Revoked => HostState::Revoked,
        };
        let owner = n.owner_load.max(0.0);
        HostRow {
            name: n.name.clone(),
            addr: n.addr.to_string(),
            local: n.local,
            state,
            exec,
            cpus: n.cpus,
            owner,
            herd: (n.load - owner).max(0.0),
            mem_free: n.mem_free,
            mem_total: n.mem_total,
            tasks: n.tasks,
            hit: self.hit_rate(&n.name),
        }
    }

    /// A host's cache hit rate: over the last snapshots if it read anything then,
    /// else since it started; none if it never read anything.
    pub fn hit_rate(&self, host: &str) -> Option<f64> {
        let h = self.hits.get(host)?;
        let &(hits, misses) = h.back()?;
        let &(h0, m0) = h.front()?;
        let (dh, dm) = (hits - h0, misses - m0);
        let ratio = |h: u64, m: u64| (h + m > 0).then(|| h as f64 / (h + m) as f64);
        ratio(dh, dm).or_else(|| ratio(hits, misses))
    }

    /// The task list as shown: filtered and sorted.
    pub fn task_rows(&self) -> Vec<TaskInfo> {
        let filter = self.task_list.filter.to_lowercase();
        let mut rows: Vec<TaskInfo> = self
            .tasks
            .iter()
            .filter(|t| {
                t.command.to_lowercase().contains(&filter)
                    || t.node
                        .as_deref()
                        .is_some_and(|n| n.to_lowercase().contains(&filter))
            })
            .cloned()
            .collect();
        let sort = self.task_sort;
        rows.sort_by(|a, b| {
            let o = match sort {
                TaskSort::Id => Ordering::Equal,
                TaskSort::State => (a.state != "running").cmp(&(b.state != "running")),
                TaskSort::Host => match (&a.node, &b.node) {
                    (Some(x), Some(y)) => x.cmp(y),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                },
                TaskSort::Time => b.secs.total_cmp(&a.secs),
                TaskSort::Command => a.command.cmp(&b.command),
            };
            o.then_with(|| a.id.cmp(&b.id))
        });
        if self.task_list.reverse {
            rows.reverse();
        }
        rows
    }

    /// The position of the selected host in [`Model::host_rows`].
    pub fn selected_host(&self, rows: &[HostRow]) -> Option<usize> {
        select(
            rows.iter().map(|r| &r.name),
            self.hosts.selected.as_ref(),
            self.hosts.index,
        )
    }

    /// The position of the selected task in [`Model::task_rows`].
    pub fn selected_task(&self, rows: &[TaskInfo]) -> Option<usize> {
        select(
            rows.iter().map(|t| &t.id),
            self.task_list.selected.as_ref(),
            self.task_list.index,
        )
    }

    /// Throughput so far.
    pub fn throughput(&self) -> Throughput {
        let now = self.samples.back().map(|&(n, dt)| n as f64 / dt);
        let (mut n, mut secs) = (0u64, 0.0);
        for &(c, dt) in self.samples.iter().rev() {
            if secs >= AVERAGE_SECS {
                break;
            }
            n += c;
            secs += dt;
        }
        Throughput {
            counts: self.samples.iter().map(|&(n, _)| n).collect(),
            now,
            average: (secs > 0.0).then(|| n as f64 / secs),
            total: self.total,
        }
    }

    /// Handles a key; the driver carries out the returned action and reports back
    /// with [`Model::done`].
    pub fn key(&mut self, key: Key) -> Action {
        if key == Key::Interrupt {
            return Action::Quit;
        }
        match self.mode.clone() {
            Mode::Help => {
                self.mode = Mode::Normal;
                Action::None
            }
            Mode::ConfirmKill { id, .. } => {
                self.mode = Mode::Normal;
                if matches!(key, Key::Char('y') | Key::Char('Y')) {
                    Action::Kill(id)
                } else {
                    self.tell(Notice::Info(format!("task {id} not killed")));
                    Action::None
                }
            }
            Mode::Filter => {
                match key {
                    Key::Char(c) => self.list_filter().push(c),
                    Key::Backspace => {
                        self.list_filter().pop();
                    }
                    Key::Enter => self.mode = Mode::Normal,
                    Key::Esc => {
                        self.list_filter().clear();
                        self.mode = Mode::Normal;
                    }
                    Key::Up => self.move_selection(-1),
                    Key::Down => self.move_selection(1),
                    _ => {}
                }
                Action::None
            }
            Mode::Normal => self.normal_key(key),
        }
    }

    fn normal_key(&mut self, key: Key) -> Action {
        self.notice = None;
        let page = match self.focus {
            Pane::Hosts => self.hosts.page,
            Pane::Tasks => self.task_list.page,
        } as isize;
        match key {
            Key::Char('q') | Key::Esc => return Action::Quit,
            Key::Tab | Key::BackTab => {
                self.focus = match self.focus {
                    Pane::Hosts => Pane::Tasks,
                    Pane::Tasks => Pane::Hosts,
                }
            }
            Key::Up | Key::Char('k') => self.move_selection(-1),
            Key::Down | Key::Char('j') => self.move_selection(1),
            Key::PageUp => self.move_selection(-page),
            Key::PageDown => self.move_selection(page),
            Key::Home | Key::Char('g') => self.move_selection(isize::MIN / 2),
            Key::End | Key::Char('G') => self.move_selection(isize::MAX / 2),
            Key::Char('s') => match self.focus {
                Pane::Hosts => self.host_sort = self.host_sort.next(),
                Pane::Tasks => self.task_sort = self.task_sort.next(),
            },
            Key::Char('S') => match self.focus {
                Pane::Hosts => self.hosts.reverse = !self.hosts.reverse,
                Pane::Tasks => self.task_list.reverse = !self.task_list.reverse,
            },
            Key::Char('/') => self.mode = Mode::Filter,
            Key::Char(c @ ('d' | 'u')) => {
                if self.focus != Pane::Hosts {
                    self.tell(Notice::Info(
                        "d and u act on the selected host: Tab to the host list".into(),
                    ));
                    return Action::None;
                }
                let rows = self.host_rows();
                match self.selected_host(&rows) {
                    Some(i) => {
                        return Action::Drain {
                            node: rows[i].name.clone(),
                            drain: c == 'd',
                        };
                    }
                    None => self.tell(Notice::Info("no host selected".into())),
                }
            }
            Key::Char('K') => {
                if self.focus != Pane::Tasks {
                    self.tell(Notice::Info(
                        "K kills the selected task: Tab to the task list".into(),
                    ));
                    return Action::None;
                }
                let rows = self.task_rows();
                match self.selected_task(&rows) {
                    Some(i) => {
                        self.mode = Mode::ConfirmKill {
                            id: rows[i].id,
                            command: rows[i].command.clone(),
                        }
                    }
                    None => self.tell(Notice::Info("no task selected".into())),
                }
            }
            Key::Char('?') => self.mode = Mode::Help,
            Key::Char('r') => return Action::Refresh,
            _ => {}
        }
        Action::None
    }

    fn tell(&mut self, notice: Notice) {
        self.notice = Some(notice);
        self.notice_at = self.now;
    }

    /// The driver reports how an action went.
    pub fn done(&mut self, action: &Action, result: Result<(), String>) {
        let notice = match (action, result) {
            (Action::Kill(id), Ok(())) => Notice::Info(format!("killed task {id}")),
            (Action::Kill(id), Err(e)) => Notice::Error(format!("cannot kill {id}: {e}")),
            (Action::Drain { node, drain: true }, Ok(())) => {
                self.drained_here.insert(node.clone());
                Notice::Info(format!(
                    "drained {node}: it takes no new work, its running tasks finish"
                ))
            }
            (Action::Drain { node, drain: false }, Ok(())) => {
                self.drained_here.remove(node);
                Notice::Info(format!("undrained {node}: it takes work again"))
            }
            (Action::Drain { node, drain }, Err(e)) => Notice::Error(format!(
                "cannot {} {node}: {e}",
                if *drain { "drain" } else { "undrain" }
            )),
            (_, Ok(())) => return,
            (_, Err(e)) => Notice::Error(e),
        };
        self.tell(notice);
    }

    fn list_filter(&mut self) -> &mut String {
        match self.focus {
            Pane::Hosts => &mut self.hosts.filter,
            Pane::Tasks => &mut self.task_list.filter,
        }
    }

    fn move_selection(&mut self, by: isize) {
        fn step(len: usize, at: Option<usize>, by: isize) -> Option<usize> {
            if len == 0 {
                return None;
            }
            let at = at.unwrap_or(0) as isize;
            Some(at.saturating_add(by).clamp(0, len as isize - 1) as usize)
        }
        match self.focus {
            Pane::Hosts => {
                let rows = self.host_rows();
                if let Some(i) = step(rows.len(), self.selected_host(&rows), by) {
                    self.hosts.selected = Some(rows[i].name.clone());
                    self.hosts.index = i;
                }
            }
            Pane::Tasks => {
                let rows = self.task_rows();
                if let Some(i) = step(rows.len(), self.selected_task(&rows), by) {
                    self.task_list.selected = Some(rows[i].id);
                    self.task_list.index = i;
                }
            }
        }
    }
}

/// Whether a node runs tasks: it has the exec role and grants cores.
fn is_exec(n: &NodeInfo) -> bool {
    n.cpus > 0.0 && n.roles.iter().any(|r| r == "exec")
}

/// The selected item's position: where `key` is, else the last position (clamped),
/// else the first row.
fn select<'a, K: PartialEq + 'a>(
    keys: impl ExactSizeIterator<Item = &'a K>,
    key: Option<&K>,
    index: usize,
) -> Option<usize> {
    let len = keys.len();
    if len == 0 {
        return None;
    }
    let mut keys = keys;
    key.and_then(|k| keys.position(|x| x == k))
        .or(Some(index.min(len - 1)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node as the agent reports it.
    pub fn node(name: &str, cpus: f32, load: f32, owner: f32) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            addr: "10.0.0.1:7420".parse().unwrap(),
            state: MemberState::Alive,
            roles: vec!["exec".into()],
            cpus,
            load,
            owner_load: owner,
            mem_free: 3 << 30,
            mem_total: 4 << 30,
            speed: 1.0,
            tasks: 0,
            incarnation: 1,
            since_secs: 10.0,
            local: false,
            accepting: true,
            drained: false,
            cache_hits: 0,
            cache_misses: 0,
        }
    }

    /// A task as `herd ps` reports it.
    pub fn task(id: u64, command: &str, node: Option<&str>, secs: f64) -> TaskInfo {
        TaskInfo {
            id,
            command: command.into(),
            uid: 1000,
            state: if node.is_some() { "running" } else { "queued" }.into(),
            node: node.map(Into::into),
            secs,
            lost: 0,
        }
    }

    /// The local agent's status.
    pub fn status(submitted: u64, uptime: f64) -> AgentStatus {
        AgentStatus {
            name: "ws".into(),
            cluster: "lab".into(),
            addr: "10.0.0.1:7420".parse().unwrap(),
            roles: vec!["submit".into(), "exec".into()],
            uptime_secs: uptime,
            version: "0".into(),
            tasks_submitted: submitted,
            fs_requests: 0,
            queued: 0,
            running: 0,
            hosting: 0,
            mode: "running".into(),
            owner_load: 0.0,
            cert_expires: 0,
            revocations: 0,
        }
    }

    /// A small cluster: the workstation and two helpers, three tasks.
    pub fn sample() -> Snapshot {
        let mut ws = node("ws", 4.0, 1.5, 1.5);
        ws.local = true;
        ws.roles = vec!["submit".into(), "exec".into()];
        let mut h1 = node("h1", 8.0, 6.0, 1.0);
        h1.tasks = 5;
        h1.cache_hits = 90;
        h1.cache_misses = 10;
        let mut h2 = node("h2", 2.0, 0.5, 0.5);
        h2.mem_free = 1 << 30;
        Snapshot {
            nodes: vec![ws, h1, h2],
            tasks: vec![
                task(1, "gcc -c alpha.c", Some("h1"), 12.0),
                task(2, "gzip -k big.txt", Some("h2"), 75.0),
                task(3, "xz -9 zeta.tar", None, 3.0),
            ],
            status: status(2, 100.0),
        }
    }

    fn names(m: &Model) -> Vec<String> {
        m.host_rows().into_iter().map(|r| r.name).collect()
    }

    fn ids(m: &Model) -> Vec<u64> {
        m.task_rows().into_iter().map(|t| t.id).collect()
    }

    #[test]
    fn herd_load_is_load_minus_owner_load() {
        let mut m = Model::new();
        m.observe(sample(), 0.0);
        let h1 = m.host_rows().into_iter().find(|r| r.name == "h1").unwrap();
        assert_eq!((h1.owner, h1.herd), (1.0, 5.0));
        // An owner load above the total (sampling skew) never makes herd's negative.
        let mut s = sample();
        s.nodes[1].owner_load = 7.0;
        m.observe(s, 1.0);
        let h1 = m.host_rows().into_iter().find(|r| r.name == "h1").unwrap();
        assert_eq!((h1.owner, h1.herd), (7.0, 0.0));
    }

    #[test]
    fn cores_count_alive_executing_nodes() {
        let mut m = Model::new();
        let mut s = sample();
        s.nodes[2].state = MemberState::Dead;
        s.nodes[0].roles = vec!["submit".into()];
        m.observe(s.clone(), 0.0);
        assert_eq!(m.cores(), 8.0);
        assert_eq!(m.node_counts(), (2, 3));
        s.nodes.truncate(1);
        m.observe(s, 1.0);
        assert_eq!(format!("{:.1}", m.cores()), "0.0", "not -0.0");
    }

    #[test]
    fn hit_rate_uses_recent_reads_else_all_reads() {
        let mut m = Model::new();
        let mut s = sample();
        m.observe(s.clone(), 0.0);
        // Cumulative before anything happens: 90 of 100.
        assert_eq!(m.hit_rate("h1"), Some(0.9));
        assert_eq!(m.hit_rate("h2"), None, "never read anything");
        // 10 more reads, all misses: the recent rate is 0.
        s.nodes[1].cache_misses = 20;
        m.observe(s.clone(), 1.0);
        assert_eq!(m.hit_rate("h1"), Some(0.0));
        // Nothing read for a whole window: back to the cumulative rate.
        for t in 2..(2 + HIT_WINDOW) {
            m.observe(s.clone(), t as f64);
        }
        assert_eq!(m.hit_rate("h1"), Some(90.0 / 110.0));
        // A restarted host (counters back to zero) starts afresh.
        s.nodes[1].cache_hits = 3;
        s.nodes[1].cache_misses = 1;
        m.observe(s, 100.0);
        assert_eq!(m.hit_rate("h1"), Some(0.75));
    }

    #[test]
    fn throughput_counts_tasks_that_left_ps_and_unseen_submissions() {
        let mut m = Model::new();
        let mut s = sample();
        m.observe(s.clone(), 0.0);
        assert_eq!(m.throughput().now, None, "one snapshot: no rate yet");

        // Task 1 ended; task 3 started on h1 (submitted +1, seen running); two more
        // tasks were sent and ended between polls (submitted +2, never seen).
        s.tasks = vec![
            task(2, "gzip -k big.txt", Some("h2"), 76.0),
            task(3, "xz -9 zeta.tar", Some("h1"), 0.5),
        ];
        s.status.tasks_submitted += 3;
        m.observe(s.clone(), 2.0);
        let t = m.throughput();
        assert_eq!(t.counts, vec![3]);
        assert_eq!(t.now, Some(1.5));
        assert_eq!(t.total, 3);

        // A task running on this machine is not a submission; its end counts once.
        s.tasks.push(task(4, "cc -c local.c", Some("ws"), 0.1));
        m.observe(s.clone(), 3.0);
        assert_eq!(m.throughput().counts, vec![3, 0]);
        s.tasks.pop();
        m.observe(s.clone(), 4.0);
        assert_eq!(m.throughput().counts, vec![3, 0, 1]);
        assert_eq!(m.throughput().average, Some(1.0));

        // The agent restarted: no sample from the reset counters.
        s.status = status(0, 1.0);
        s.tasks.clear();
        m.observe(s, 5.0);
        assert_eq!(m.throughput().counts, vec![3, 0, 1]);
    }

    #[test]
    fn sort_cycles_and_reverses() {
        let mut m = Model::new();
        m.observe(sample(), 0.0);
        assert_eq!(names(&m), ["h1", "h2", "ws"]);
        assert_eq!(m.host_sort(), (HostSort::Name, false));
        m.key(Key::Char('s'));
        assert_eq!(m.host_sort().0, HostSort::State);
        m.key(Key::Char('s'));
        assert_eq!(m.host_sort().0, HostSort::Cores);
        assert_eq!(names(&m), ["h1", "ws", "h2"]);
        m.key(Key::Char('s'));
        assert_eq!(m.host_sort().0, HostSort::Load);
        assert_eq!(names(&m), ["h1", "ws", "h2"]);
        m.key(Key::Char('s'));
        assert_eq!(m.host_sort().0, HostSort::Mem);
        assert_eq!(names(&m), ["h1", "ws", "h2"], "ties by name");
        m.key(Key::Char('S'));
        assert_eq!(names(&m), ["h2", "ws", "h1"]);
        for _ in 0..3 {
            m.key(Key::Char('s'));
        }
        assert_eq!(m.host_sort(), (HostSort::Name, true), "wraps around");

        // The task list sorts on its own.
        m.key(Key::Tab);
        assert_eq!(ids(&m), [1, 2, 3]);
        m.key(Key::Char('s'));
        m.key(Key::Char('s'));
        m.key(Key::Char('s'));
        assert_eq!(m.task_sort().0, TaskSort::Time);
        assert_eq!(ids(&m), [2, 1, 3]);
        m.key(Key::Char('s'));
        assert_eq!(ids(&m), [1, 2, 3], "by command");
        assert_eq!(m.host_sort(), (HostSort::Name, true));
    }

    #[test]
    fn filter_per_list_live_enter_keeps_esc_clears() {
        let mut m = Model::new();
        m.observe(sample(), 0.0);
        m.key(Key::Char('/'));
        assert_eq!(m.mode(), &Mode::Filter);
        m.key(Key::Char('H'));
        assert_eq!(names(&m), ["h1", "h2"], "case-insensitive, as typed");
        m.key(Key::Char('2'));
        m.key(Key::Enter);
        assert_eq!(m.mode(), &Mode::Normal);
        assert_eq!(names(&m), ["h2"]);
        assert_eq!(ids(&m), [1, 2, 3], "the task list is not filtered");

        m.key(Key::Tab);
        m.key(Key::Char('/'));
        for c in "gz".chars() {
            m.key(Key::Char(c));
        }
        assert_eq!(ids(&m), [2]);
        m.key(Key::Backspace);
        m.key(Key::Backspace);
        for c in "h1".chars() {
            m.key(Key::Char(c));
        }
        assert_eq!(ids(&m), [1], "tasks match by host too");
        m.key(Key::Esc);
        assert_eq!(m.mode(), &Mode::Normal);
        assert_eq!(ids(&m), [1, 2, 3]);
        assert_eq!(m.filter(Pane::Hosts), "H2", "kept as typed");
    }

    #[test]
    fn selection_follows_the_item_across_refreshes() {
        let mut m = Model::new();
        m.observe(sample(), 0.0);
        let rows = m.host_rows();
        assert_eq!(m.selected_host(&rows), Some(0), "first row by default");
        m.key(Key::Down);
        m.key(Key::Char('j'));
        m.key(Key::Down);
        let rows = m.host_rows();
        assert_eq!(rows[m.selected_host(&rows).unwrap()].name, "ws", "clamped");
        m.key(Key::Char('k'));
        // Re-sorted: still h2.
        m.key(Key::Char('s'));
        m.key(Key::Char('s'));
        let rows = m.host_rows();
        assert_eq!(rows[m.selected_host(&rows).unwrap()].name, "h2");
        // h2 leaves: the selection stays at its last position.
        let mut s = sample();
        s.nodes.remove(2);
        m.observe(s, 1.0);
        let rows = m.host_rows();
        assert_eq!(m.selected_host(&rows), Some(1));
        m.key(Key::Home);
        let rows = m.host_rows();
        assert_eq!(m.selected_host(&rows), Some(0));
    }

    #[test]
    fn keys_give_actions() {
        let mut m = Model::new();
        m.observe(sample(), 0.0);
        assert_eq!(m.key(Key::Char('r')), Action::Refresh);
        m.key(Key::Down);
        assert_eq!(
            m.key(Key::Char('d')),
            Action::Drain {
                node: "h2".into(),
                drain: true
            }
        );
        assert_eq!(
            m.key(Key::Char('u')),
            Action::Drain {
                node: "h2".into(),
                drain: false
            }
        );
        // K on the host list only hints.
        assert_eq!(m.key(Key::Char('K')), Action::None);
        assert!(matches!(m.notice(), Some(Notice::Info(s)) if s.contains("Tab")));

        // K asks first; anything but y cancels.
        m.key(Key::Tab);
        m.key(Key::End);
        assert_eq!(m.key(Key::Char('K')), Action::None);
        assert_eq!(
            m.mode(),
            &Mode::ConfirmKill {
                id: 3,
                command: "xz -9 zeta.tar".into()
            }
        );
        assert_eq!(m.key(Key::Char('n')), Action::None);
        assert_eq!(m.mode(), &Mode::Normal);
        m.key(Key::Char('K'));
        assert_eq!(m.key(Key::Char('y')), Action::Kill(3));
        // d on the task list only hints.
        assert_eq!(m.key(Key::Char('d')), Action::None);

        // Help closes on any key; q and Esc quit; Ctrl-C quits from any mode.
        m.key(Key::Char('?'));
        assert_eq!(m.mode(), &Mode::Help);
        assert_eq!(m.key(Key::Char('q')), Action::None);
        assert_eq!(m.mode(), &Mode::Normal);
        assert_eq!(m.key(Key::Char('q')), Action::Quit);
        assert_eq!(m.key(Key::Esc), Action::Quit);
        m.key(Key::Char('/'));
        assert_eq!(m.key(Key::Char('q')), Action::None, "typed into the filter");
        assert_eq!(m.key(Key::Interrupt), Action::Quit);
    }

    #[test]
    fn drained_hosts_and_results() {
        let mut m = Model::new();
        let mut s = sample();
        m.observe(s.clone(), 0.0);
        let drain = Action::Drain {
            node: "h2".into(),
            drain: true,
        };
        m.done(&drain, Ok(()));
        s.nodes[2].accepting = false;
        s.nodes[1].accepting = false;
        m.observe(s.clone(), 1.0);
        let state = |m: &Model, n: &str| {
            m.host_rows()
                .into_iter()
                .find(|r| r.name == n)
                .unwrap()
                .state
        };
        assert_eq!(state(&m, "h2"), HostState::Drained, "drained from here");
        assert_eq!(state(&m, "h1"), HostState::Held, "its owner is busy");
        // Drained elsewhere: its report says so.
        s.nodes[1].drained = true;
        m.observe(s.clone(), 1.5);
        assert_eq!(state(&m, "h1"), HostState::Drained, "drained elsewhere");
        s.nodes[1].drained = false;
        // Undrained elsewhere: no longer marked.
        s.nodes[2].accepting = true;
        m.observe(s.clone(), 2.0);
        s.nodes[2].accepting = false;
        m.observe(s.clone(), 3.0);
        assert_eq!(state(&m, "h2"), HostState::Held);

        m.done(&Action::Kill(12), Err("no task 12 here".into()));
        assert_eq!(
            m.notice(),
            Some(&Notice::Error("cannot kill 12: no task 12 here".into()))
        );
        // Messages go after a while, or at the next key.
        m.observe(sample(), 3.0 + NOTICE_SECS - 1.0);
        assert!(m.notice().is_some());
        m.observe(sample(), 3.0 + NOTICE_SECS);
        assert_eq!(m.notice(), None);
        m.done(&drain, Err("no alive node named \"h2\"".into()));
        assert!(matches!(m.notice(), Some(Notice::Error(e)) if e.starts_with("cannot drain h2")));
        // Drained from here, confirmed by its report, then undrained elsewhere while
        // its owner is busy: held, not drained.
        m.done(&drain, Ok(()));
        s.nodes[2].drained = true;
        m.observe(s.clone(), 20.0 + NOTICE_SECS);
        assert_eq!(state(&m, "h2"), HostState::Drained);
        s.nodes[2].drained = false;
        m.observe(s, 21.0 + NOTICE_SECS);
        assert_eq!(state(&m, "h2"), HostState::Held);
    }
}
