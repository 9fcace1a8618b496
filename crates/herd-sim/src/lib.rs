//! Deterministic, seeded simulation of herd's distributed state machines.
//!
//! Today it runs [`herd_membership::Membership`]: N instances (up to thousands) in one
//! thread, over a simulated network, in virtual time. Nothing here reads the wall clock,
//! spawns a thread or opens a socket, so a run is a pure function of its seed.
//!
//! # The model
//!
//! * **Event queue.** A priority queue ordered by (virtual time, insertion number) holds
//!   datagram deliveries, node timers and node starts. [`Sim::run_for`] pops events in
//!   order, feeds them to the node's `handle_data` / `handle_timeout`, drains the node's
//!   outputs back into the queue, and re-arms its timer from `poll_timeout`.
//! * **Network.** Every datagram is independently lost with probability
//!   [`SimConfig::loss`], else delivered after a delay drawn uniformly from
//!   [`SimConfig::delay`] (so datagrams reorder). A partition ([`Sim::partition`]) assigns
//!   nodes to groups; a datagram whose sender and receiver are in different groups *at
//!   delivery time* is dropped. [`Sim::heal`] puts everybody back in one group.
//! * **Faults.** [`Sim::crash`] stops a node instantly (its state is dropped, datagrams to
//!   it vanish, its pending timers are ignored). [`Sim::restart`] starts a fresh
//!   `Membership` on the same name and address with a larger bump (as the agent does with
//!   seconds since the epoch) and joins it through the seed nodes.
//! * **Randomness.** One `ChaCha8Rng` seeded from [`SimConfig::seed`] draws every delay,
//!   loss and fault; each node's `Membership` gets a seed derived from it.
//!
//! # Checkers
//!
//! Cheap invariants are asserted on every step: every datagram fits in
//! `max_packet_size`, and honest traffic is never rejected as malformed. Every
//! [`SimConfig::check_every`] of virtual time the cluster-wide invariants of
//! [`Sim::check_invariants`] run: each node knows itself by its own name with a bump that
//! never went backwards, no node believes another node's incarnation went backwards, the
//! per-state counters agree with the node list, and nobody knows more nodes than exist.
//!
//! # Reproducing a failure
//!
//! Every failure message starts with `seed=<n>` and ends with the command that replays
//! it: `HERD_SIM_SEED=<n> cargo test -p herd-sim <test>`. [`seeds`] returns that one seed
//! when the variable is set. [`Sim::trace_hash`] folds every processed event (time, kind,
//! node, bytes) into a 64-bit hash; two runs with the same seed produce the same hash.
//!
//! # Build profile
//!
//! The 1,000-node tests need optimized code even under `cargo test` (dev profile). The
//! workspace's root `Cargo.toml` should have:
//!
//! ```toml
//! [profile.dev.package.herd-sim]
//! opt-level = 3
//! [profile.dev.package.herd-membership]
//! opt-level = 3
//! [profile.dev.package.foca]
//! opt-level = 3
//! ```
//!
//! # Tests
//!
//! `tests/membership.rs` measures and bounds: join convergence at 10, 100 and 1,000
//! nodes; crash detection and rejoin after restart; the 10-second promise of
//! `Config::lan` at 50 nodes (SIGKILL and cut-off, then restart and heal); partition
//! into halves and healing; that a node coming back from being cut off is the only one to
//! renew its identity; false positives at 0 %, 5 % and 15 % loss; graceful leave; load
//! report dissemination; a restarted node learning a 200-node cluster by sync.
//! `tests/chaos.rs` runs 20 seeds × 50 nodes of random loss, delay, crashes and
//! partitions, then asserts convergence; and checks that a seed replays exactly.
//!
//! # Measurements
//!
//! [`scenarios`] holds the measured experiments (join convergence, crash detection,
//! partition healing, false positives, graceful leave) shared by the tests and by the
//! `membership-report` binary:
//!
//! ```text
//! cargo run --release -p herd-sim --bin membership-report -- [--json PATH]
//! ```

pub mod placement;
pub mod scenarios;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use herd_membership::{Config, Error, Event, Membership, NodeId, NodeState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Environment variable that replays a single seed.
pub const SEED_ENV: &str = "HERD_SIM_SEED";

/// The seeds a test should run: the one in `HERD_SIM_SEED` if set, else `default`.
pub fn seeds(default: impl IntoIterator<Item = u64>) -> Vec<u64> {
    match std::env::var(SEED_ENV) {
        Ok(s) => match s.trim().parse() {
            Ok(seed) => vec![seed],
            Err(_) => panic!("{SEED_ENV}={s:?} is not a u64 seed"),
        },
        Err(_) => default.into_iter().collect(),
    }
}

/// Parameters of one simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Membership configuration of every node.
    pub membership: Config,
    /// One-way delay range of a datagram (uniform).
    pub delay: (Duration, Duration),
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// How many nodes (the first ones) act as seeds for joins and restarts.
    pub seed_nodes: usize,
    /// Nodes start at uniformly random times within this window (seeds first, at 0).
    pub start_spread: Duration,
    /// How often the cluster-wide invariants are checked.
    pub check_every: Duration,
}

impl SimConfig {
    /// `n` nodes with `Config::for_cluster_size(n)`, 0.5–5 ms delays, no loss, one seed,
    /// all starting within the first second.
    pub fn new(n: usize, seed: u64) -> Self {
        let membership = Config::for_cluster_size(n as u32);
        Self {
            nodes: n,
            seed,
            check_every: if n <= 200 {
                membership.probe_period
            } else {
                membership.probe_period * 10
            },
            membership,
            delay: (Duration::from_micros(500), Duration::from_millis(5)),
            loss: 0.0,
            seed_nodes: 1,
            start_spread: Duration::from_secs(1),
        }
    }
}

/// What the simulated network and the nodes did, summed over the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimStats {
    /// Datagrams sent by nodes.
    pub sent: u64,
    /// Bytes sent by nodes.
    pub bytes: u64,
    /// Datagrams delivered to a running node.
    pub delivered: u64,
    /// Datagrams lost at random.
    pub lost: u64,
    /// Datagrams dropped by a partition.
    pub cut: u64,
    /// Datagrams to a crashed node or an unknown address.
    pub undeliverable: u64,
    /// Datagrams a node refused (not malformed: e.g. addressed to a stale identity).
    pub refused: u64,
    /// `NodeDown` events about a node that was running, in the declared incarnation,
    /// and reachable from the observer (no partition between them): false positives.
    pub false_downs: u64,
    /// `Rejoined` events: a running node learned it was declared dead and renewed.
    pub rejoins: u64,
    /// Events of any kind.
    pub events: u64,
}

/// State of one simulated host.
struct Host {
    name: String,
    addr: SocketAddr,
    /// Bump of the current (or last) incarnation.
    bump: u32,
    /// Increased on every crash/restart; stale timers carry an older epoch.
    epoch: u32,
    m: Option<Membership>,
    /// Deadline of the earliest timer entry queued for this host, if any.
    timer_at: Option<Duration>,
    /// Partition group.
    group: u32,
    /// Whether the host left gracefully.
    left: bool,
    /// How many times the host was restarted.
    restarts: u32,
}

#[derive(Debug)]
enum Action {
    Deliver { from: usize, to: usize, data: Bytes },
    Timer { node: usize, epoch: u32 },
    Start { node: usize, epoch: u32 },
}

struct Queued {
    at: Duration,
    seq: u64,
    action: Action,
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

/// FNV-1a over 64-bit words: a stable, dependency-free trace fingerprint.
#[derive(Clone, Copy, Debug)]
struct TraceHash(u64);

impl TraceHash {
    fn word(&mut self, w: u64) {
        for b in w.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
    fn bytes(&mut self, data: &[u8]) {
        self.word(data.len() as u64);
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// A simulated cluster (see the crate docs).
pub struct Sim {
    cfg: SimConfig,
    now: Duration,
    rng: ChaCha8Rng,
    hosts: Vec<Host>,
    by_addr: HashMap<SocketAddr, usize>,
    by_name: HashMap<String, usize>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    trace: TraceHash,
    stats: SimStats,
    next_check: Duration,
    /// `seen_bump[o][t]`: highest bump observer `o` has seen for `t` (monotonic check).
    seen_bump: Vec<Vec<u32>>,
    /// Optional sink for every event, for tests that want the raw stream.
    event_log: Option<Vec<(Duration, usize, Event)>>,
    /// Optional sink for every delivered datagram (debugging).
    packet_log: Option<Vec<(Duration, usize, usize, Bytes)>>,
}

impl Sim {
    /// A cluster of `cfg.nodes` hosts, none started yet (see [`Sim::start_all`]).
    pub fn new(cfg: SimConfig) -> Self {
        let n = cfg.nodes;
        assert!(n > 0 && n < 60_000, "seed={}: {n} nodes", cfg.seed);
        let mut hosts = Vec::with_capacity(n);
        let mut by_addr = HashMap::new();
        let mut by_name = HashMap::new();
        for i in 0..n {
            let addr = SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 7946));
            let name = format!("n{i:04}");
            by_addr.insert(addr, i);
            by_name.insert(name.clone(), i);
            hosts.push(Host {
                name,
                addr,
                bump: 1,
                epoch: 0,
                m: None,
                timer_at: None,
                group: 0,
                left: false,
                restarts: 0,
            });
        }
        Self {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            now: Duration::ZERO,
            hosts,
            by_addr,
            by_name,
            queue: BinaryHeap::new(),
            seq: 0,
            trace: TraceHash(0xcbf2_9ce4_8422_2325 ^ cfg.seed),
            stats: SimStats::default(),
            next_check: cfg.check_every,
            seen_bump: vec![Vec::new(); n],
            event_log: None,
            packet_log: None,
            cfg,
        }
    }

    /// Starts every host: seeds at time 0, the others at random times within
    /// [`SimConfig::start_spread`], each joining through the seeds.
    pub fn start_all(&mut self) {
        for i in 0..self.hosts.len() {
            let at = if i < self.cfg.seed_nodes || self.cfg.start_spread.is_zero() {
                self.now
            } else {
                let spread = self.cfg.start_spread.as_micros() as u64;
                self.now + Duration::from_micros(self.rng.random_range(0..=spread))
            };
            let epoch = self.hosts[i].epoch;
            self.push(at, Action::Start { node: i, epoch });
        }
    }

    /// Records every event from now on (see [`Sim::take_events`]).
    pub fn record_events(&mut self) {
        self.event_log.get_or_insert_with(Vec::new);
    }

    /// Takes the events recorded since [`Sim::record_events`]: (time, observer, event).
    pub fn take_events(&mut self) -> Vec<(Duration, usize, Event)> {
        self.event_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Records every datagram delivered from now on (see [`Sim::take_packets`]); for
    /// debugging a failing seed.
    pub fn record_packets(&mut self) {
        self.packet_log.get_or_insert_with(Vec::new);
    }

    /// Takes the datagrams recorded since [`Sim::record_packets`]: (time, from, to, data).
    pub fn take_packets(&mut self) -> Vec<(Duration, usize, usize, Bytes)> {
        self.packet_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.cfg.seed
    }

    /// The configuration of this run.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Current virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Virtual time in protocol periods.
    pub fn periods(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.cfg.membership.probe_period.as_secs_f64()
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the cluster has no hosts (never: `new` requires at least one).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Fingerprint of everything processed so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.0
    }

    /// Counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Name of host `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i].name
    }

    /// The running membership of host `i` (None if crashed, left or not started).
    pub fn membership(&self, i: usize) -> Option<&Membership> {
        self.hosts[i].m.as_ref().filter(|_| !self.hosts[i].left)
    }

    /// Whether host `i` is running (started, not crashed, not left).
    pub fn is_running(&self, i: usize) -> bool {
        self.membership(i).is_some()
    }

    /// Current bump of host `i` (its latest incarnation).
    pub fn bump(&self, i: usize) -> u32 {
        self.hosts[i]
            .m
            .as_ref()
            .map_or(self.hosts[i].bump, |m| m.me().bump)
    }

    /// Sets the datagram loss probability from now on.
    pub fn set_loss(&mut self, loss: f64) {
        self.cfg.loss = loss.clamp(0.0, 1.0);
    }

    /// Sets the delay range from now on.
    pub fn set_delay(&mut self, min: Duration, max: Duration) {
        self.cfg.delay = (min, max.max(min));
    }

    /// Panics with the seed and the replay command.
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!(
            "seed={} t={:.3}s: {msg}\n  replay: {}={} cargo test -p herd-sim",
            self.cfg.seed,
            self.now.as_secs_f64(),
            SEED_ENV,
            self.cfg.seed
        )
    }

    /// Crashes host `i`: its state is gone, nothing reaches it any more.
    pub fn crash(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if let Some(m) = h.m.take() {
            h.bump = h.bump.max(m.me().bump);
        }
        h.epoch += 1;
        h.timer_at = None;
        self.trace.word(0xC0 ^ i as u64);
    }

    /// Restarts host `i` (crashing it first if needed) with a larger bump; it joins
    /// through the seed nodes.
    pub fn restart(&mut self, i: usize) {
        self.crash(i);
        let h = &mut self.hosts[i];
        h.bump += 1;
        h.left = false;
        h.restarts += 1;
        // A fresh process remembers nothing: its view may legitimately start over.
        self.seen_bump[i].clear();
        self.start(i);
    }

    /// Host `i` leaves gracefully (its remaining datagrams are still sent).
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(m) = self.hosts[i].m.as_mut() {
            m.leave(now);
            self.after_io(i);
        }
        self.hosts[i].left = true;
        self.trace.word(0x1E ^ i as u64);
    }

    /// Sets the load report of host `i`.
    pub fn set_load(&mut self, i: usize, report: herd_membership::LoadReport) {
        let now = self.now;
        if let Some(m) = self.hosts[i].m.as_mut() {
            m.set_load(now, report);
            self.after_io(i);
        }
    }

    /// Splits the cluster: `group_of(i)` is host `i`'s side. Datagrams between sides are
    /// dropped until [`Sim::heal`].
    pub fn partition(&mut self, group_of: impl Fn(usize) -> u32) {
        for i in 0..self.hosts.len() {
            self.hosts[i].group = group_of(i);
            self.trace.word(u64::from(self.hosts[i].group));
        }
    }

    /// Ends any partition.
    pub fn heal(&mut self) {
        for h in &mut self.hosts {
            h.group = 0;
        }
        self.trace.word(0x4EA1);
    }

    /// Partition group of host `i`.
    pub fn group(&self, i: usize) -> u32 {
        self.hosts[i].group
    }

    /// Starts host `i` now: a fresh `Membership` joining through the seed nodes.
    fn start(&mut self, i: usize) {
        let now = self.now;
        self.trace.word(0x57A ^ i as u64);
        let seeds: Vec<SocketAddr> = (0..self.cfg.seed_nodes.min(self.hosts.len()))
            .map(|s| self.hosts[s].addr)
            .collect();
        let h = &mut self.hosts[i];
        let id = NodeId::new(h.name.clone(), h.addr, h.bump);
        let mseed = self.cfg.seed
            ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(h.restarts) << 48;
        let mut m = Membership::new(id, self.cfg.membership.clone(), mseed, now);
        m.join(now, &seeds);
        h.m = Some(m);
        self.after_io(i);
    }

    /// Number of running hosts.
    pub fn running(&self) -> usize {
        (0..self.hosts.len())
            .filter(|&i| self.is_running(i))
            .count()
    }

    fn push(&mut self, at: Duration, action: Action) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            action,
        });
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_to(end);
    }

    /// Runs until `done(self)` holds, checking it every `every` of virtual time, for at
    /// most `limit`. Returns the elapsed virtual time when it held, `None` on timeout.
    pub fn run_until(
        &mut self,
        limit: Duration,
        every: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let end = start + limit;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if self.now >= end {
                return None;
            }
            let next = (self.now + every).min(end);
            self.run_to(next);
        }
    }

    /// Processes every queued event up to `end` (inclusive), then sets the clock to `end`.
    fn run_to(&mut self, end: Duration) {
        while let Some(top) = self.queue.peek() {
            if top.at > end {
                break;
            }
            if top.at >= self.next_check {
                let at = self.next_check;
                self.now = self.now.max(at);
                if let Err(e) = self.check_invariants() {
                    self.fail(e);
                }
                self.next_check = at + self.cfg.check_every;
                continue;
            }
            let Some(q) = self.queue.pop() else { break };
            self.now = self.now.max(q.at);
            self.step(q.action);
        }
        self.now = self.now.max(end);
    }

    fn step(&mut self, action: Action) {
        let now = self.now;
        self.trace.word(now.as_nanos() as u64);
        match action {
            Action::Start { node, epoch } => {
                if self.hosts[node].epoch == epoch && self.hosts[node].m.is_none() {
                    self.start(node);
                }
            }
            Action::Timer { node, epoch } => {
                let h = &mut self.hosts[node];
                if h.epoch != epoch || h.left {
                    return;
                }
                if h.timer_at == Some(now) {
                    h.timer_at = None;
                }
                let Some(m) = h.m.as_mut() else { return };
                if m.poll_timeout().is_some_and(|t| t <= now) {
                    self.trace.word(0x7 ^ node as u64);
                    m.handle_timeout(now);
                }
                self.after_io(node);
            }
            Action::Deliver { from, to, data } => {
                let h = &mut self.hosts[to];
                if h.group != self.hosts[from].group {
                    self.stats.cut += 1;
                    return;
                }
                let h = &mut self.hosts[to];
                let Some(m) = h.m.as_mut().filter(|_| !h.left) else {
                    self.stats.undeliverable += 1;
                    return;
                };
                self.trace.word(0xD ^ (to as u64) << 8 ^ from as u64);
                self.trace.bytes(&data);
                self.stats.delivered += 1;
                if let Some(log) = self.packet_log.as_mut() {
                    log.push((now, from, to, data.clone()));
                }
                match m.handle_data(now, &data) {
                    Ok(()) => {}
                    Err(
                        e @ (Error::Malformed(_) | Error::UnknownTag(_) | Error::Version { .. }),
                    ) => {
                        let (a, b) = (self.hosts[from].name.clone(), self.hosts[to].name.clone());
                        self.fail(format!("{b} rejected honest datagram from {a}: {e}"))
                    }
                    Err(_) => self.stats.refused += 1,
                }
                self.after_io(to);
            }
        }
    }

    /// Drains host `i`'s outputs into the network and event log, re-arms its timer.
    fn after_io(&mut self, i: usize) {
        let now = self.now;
        let max = self.cfg.membership.max_packet_size;
        let Some(m) = self.hosts[i].m.as_mut() else {
            return;
        };
        let mut sends = Vec::new();
        while let Some(t) = m.poll_transmit() {
            sends.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = m.poll_event() {
            events.push(e);
        }
        let timeout = m.poll_timeout();
        for (to, data) in sends {
            if data.len() > max {
                self.fail(format!(
                    "{} sent a {}-byte datagram",
                    self.hosts[i].name,
                    data.len()
                ));
            }
            self.stats.sent += 1;
            self.stats.bytes += data.len() as u64;
            let Some(&j) = self.by_addr.get(&to) else {
                self.stats.undeliverable += 1;
                continue;
            };
            if self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
                self.stats.lost += 1;
                continue;
            }
            let (lo, hi) = self.cfg.delay;
            let delay = if hi > lo {
                Duration::from_nanos(
                    self.rng
                        .random_range(lo.as_nanos() as u64..=hi.as_nanos() as u64),
                )
            } else {
                lo
            };
            self.push(
                now + delay,
                Action::Deliver {
                    from: i,
                    to: j,
                    data,
                },
            );
        }
        for e in events {
            self.on_event(i, e);
        }
        if let Some(t) = timeout
            && self.hosts[i].timer_at.is_none_or(|at| t < at)
        {
            let at = t.max(now);
            self.hosts[i].timer_at = Some(at);
            let epoch = self.hosts[i].epoch;
            self.push(at, Action::Timer { node: i, epoch });
        }
    }

    fn on_event(&mut self, observer: usize, e: Event) {
        self.stats.events += 1;
        let (kind, id) = match &e {
            Event::NodeUp(id) => (1, Some(id)),
            Event::NodeSuspect(id) => (2, Some(id)),
            Event::NodeDown(id) => (3, Some(id)),
            Event::NodeLeft(id) => (4, Some(id)),
            Event::Load(_) => (5, None),
            Event::Rejoined(id) => (6, Some(id)),
        };
        self.trace.word(kind << 32 ^ observer as u64);
        if let Some(id) = id {
            self.trace.bytes(id.name.as_bytes());
            self.trace.word(u64::from(id.bump));
        }
        match &e {
            Event::NodeDown(id) => {
                if let Some(&t) = self.by_name.get(&id.name)
                    && self.is_running(t)
                    && self.bump(t) == id.bump
                    && self.hosts[t].group == self.hosts[observer].group
                {
                    self.stats.false_downs += 1;
                }
            }
            Event::Rejoined(_) => self.stats.rejoins += 1,
            _ => {}
        }
        if let Some(log) = self.event_log.as_mut() {
            log.push((self.now, observer, e));
        }
    }

    /// Cluster-wide invariants (run automatically every [`SimConfig::check_every`]).
    pub fn check_invariants(&mut self) -> Result<(), String> {
        let n = self.hosts.len();
        for o in 0..n {
            let host = &self.hosts[o];
            let Some(m) = host.m.as_ref().filter(|_| !host.left) else {
                continue;
            };
            if m.me().name != host.name || m.me().bump < host.bump {
                return Err(format!("{} thinks it is {}", host.name, m.me()));
            }
            if m.state_of(&host.name).is_some() {
                return Err(format!("{} lists itself among the others", host.name));
            }
            let mut counts = herd_membership::NodeCounts::default();
            let mut known = 0;
            let seen = &mut self.seen_bump[o];
            if seen.is_empty() {
                seen.resize(n, 0);
            }
            for (id, state) in m.iter_nodes() {
                known += 1;
                match state {
                    NodeState::Alive => counts.alive += 1,
                    NodeState::Suspect => counts.suspect += 1,
                    NodeState::Dead => counts.dead += 1,
                    NodeState::Left => counts.left += 1,
                }
                let Some(&t) = self.by_name.get(&id.name) else {
                    return Err(format!("{} knows unknown node {id}", host.name));
                };
                if id.bump < seen[t] {
                    return Err(format!(
                        "{} went back from {}#{} to {id}",
                        host.name, id.name, seen[t]
                    ));
                }
                seen[t] = id.bump;
                if id.addr != self.hosts[t].addr {
                    return Err(format!("{} has a wrong address for {id}", host.name));
                }
            }
            if counts != m.counts() {
                return Err(format!(
                    "{} counts {:?} but lists {counts:?}",
                    host.name,
                    m.counts()
                ));
            }
            if known >= n {
                return Err(format!("{} knows {known} nodes of {n}", host.name));
            }
        }
        Ok(())
    }

    /// Whether every host runs and sees every other host Alive in its current
    /// incarnation.
    pub fn all_alive(&self) -> bool {
        self.running() == self.hosts.len() && self.converged()
    }

    /// Whether every running host sees every other running host Alive in its current
    /// incarnation (stopped hosts are not checked; see [`Sim::all_see`]).
    pub fn converged(&self) -> bool {
        let running: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.is_running(i))
            .collect();
        let want = running.len().saturating_sub(1);
        // Cheap pass first: counters.
        for &o in &running {
            let c = self.hosts[o]
                .m
                .as_ref()
                .map(|m| m.counts())
                .unwrap_or_default();
            if c.alive != want || c.suspect != 0 {
                return false;
            }
        }
        for &o in &running {
            let Some(m) = self.membership(o) else {
                return false;
            };
            for &t in &running {
                if t == o {
                    continue;
                }
                match m.state_of(&self.hosts[t].name) {
                    Some((id, NodeState::Alive)) if id.bump == self.bump(t) => {}
                    _ => return false,
                }
            }
        }
        true
    }

    /// Whether every running host not in `targets` sees every host of `targets` in
    /// `state` (in its latest incarnation or an older one).
    pub fn all_see(&self, targets: &[usize], state: NodeState) -> bool {
        (0..self.hosts.len())
            .filter(|o| self.is_running(*o) && !targets.contains(o))
            .all(|o| {
                let Some(m) = self.membership(o) else { return true };
                targets.iter().all(|&t| {
                    matches!(m.state_of(&self.hosts[t].name), Some((id, s)) if s == state && id.bump <= self.bump(t))
                })
            })
    }

    /// Whether no running host sees a host of `targets` as Alive or Suspect (Dead, Left
    /// or never heard of are all fine).
    pub fn none_see_active(&self, targets: &[usize]) -> bool {
        (0..self.hosts.len())
            .filter(|o| !targets.contains(o))
            .filter_map(|o| self.membership(o))
            .all(|m| {
                targets.iter().all(|&t| {
                    m.state_of(&self.hosts[t].name)
                        .is_none_or(|(_, s)| !s.is_active())
                })
            })
    }

    /// Whether every running host sees every running host of another partition group as
    /// not active (Dead), and everybody of its own group Alive.
    pub fn sides_split(&self) -> bool {
        let running: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.is_running(i))
            .collect();
        running.iter().all(|&o| {
            let Some(m) = self.membership(o) else {
                return true;
            };
            running.iter().all(|&t| {
                if t == o {
                    return true;
                }
                let same = self.hosts[t].group == self.hosts[o].group;
                match m.state_of(&self.hosts[t].name) {
                    Some((_, s)) if same => s == NodeState::Alive,
                    Some((_, s)) => s == NodeState::Dead,
                    None => !same,
                }
            })
        })
    }
}
