//! Sans-IO SWIM cluster membership for herd, built on [foca], carrying load reports.
//!
//! Every herd node runs one [`Membership`]. It answers "which nodes exist, which are
//! alive, and how busy is each?" without a master: nodes probe each other (SWIM), gossip
//! what they learn, and piggyback each node's [`LoadReport`] on the same messages.
//!
//! # A pure state machine
//!
//! **Architecture Invariant:** this crate opens no socket, reads no clock, spawns no
//! thread and knows nothing about tokio or QUIC. Time comes in as `now` (a monotonic
//! [`Duration`] since an arbitrary origin, which must never go backwards), randomness from
//! the seed given to [`Membership::new`]. The same inputs always give the same outputs,
//! which is what lets `herd-sim` run a thousand nodes deterministically in one thread.
//!
//! A driver (the agent, a test, the simulator) owns the I/O and loops:
//!
//! ```
//! use std::time::Duration;
//! use herd_membership::{Config, Membership, NodeId};
//!
//! let me = NodeId::new("helper-1", "10.0.0.2:7946".parse().unwrap(), 1_700_000_000);
//! let mut m = Membership::new(me, Config::lan(), 42, Duration::ZERO);
//! m.join(Duration::ZERO, &["10.0.0.1:7946".parse().unwrap()]);
//! // Inputs: m.handle_data(now, datagram) for every datagram received,
//! //         m.handle_timeout(now) whenever `now >= m.poll_timeout()`.
//! // Outputs, drained after every input:
//! while let Some((dst, datagram)) = m.poll_transmit() {
//!     // send `datagram` to `dst` (a QUIC datagram in the agent)
//!     # let _ = (dst, datagram);
//! }
//! while let Some(event) = m.poll_event() {
//!     // NodeUp / NodeSuspect / NodeDown / NodeLeft / Load / Rejoined
//!     # let _ = event;
//! }
//! assert!(m.poll_timeout().is_some());
//! ```
//!
//! # Identities and incarnations
//!
//! A node is its [`NodeId`]: a cluster-unique `name` (its certificate name), the socket
//! address its agent listens on, and a `bump` (incarnation). A restarted process uses a
//! fresh, larger bump (the agent passes seconds since the epoch) and so replaces its dead
//! predecessor everywhere. When the cluster wrongly declares a live node dead (or after a
//! partition), foca notices, renews the identity with `bump + 1` (see
//! [`foca::Identity::renew`]) and rejoins; the node then reports [`Event::Rejoined`] with
//! its new identity. Foca keys identities by name through [`NameKey`].
//!
//! # States
//!
//! Foca's member states map to [`NodeState`]: Alive → `Alive`, Suspect → `Suspect`,
//! Down → `Dead`, unless that very incarnation announced a graceful [`Membership::leave`],
//! in which case it is `Left`. Foca only reports Up/Down transitions; Suspect and a
//! refuted suspicion going back to Alive are read from foca's member list whenever a
//! probe fails or an update about suspicion arrives (and everything is re-checked every
//! ten probe periods). A node's [`NodeView`] never goes back to an older incarnation.
//!
//! # Wire
//!
//! Datagrams are `[tag][version][body]`, every body starting with the sender's
//! [`NodeId`]: tag 0 carries a foca packet encoded with foca's postcard codec, tag 1 a
//! "left" notice, tags 2 and 3 a member-list sync request and its answer. Unknown tags,
//! other versions, oversized or malformed packets are rejected with an [`Error`];
//! [`Membership::handle_data`] and [`Membership::peek_sender`] never panic, whatever the
//! input (property-tested). Every datagram produced fits in
//! [`Config::max_packet_size`] (default 1,100 bytes, so it rides in one QUIC datagram).
//!
//! Load reports and "left" records are foca custom broadcasts: retransmitted
//! `max_transmissions` times by every node that learns them, a newer `(bump, seq)` from a
//! node superseding older ones still in flight. A node's report is re-sent every
//! [`Config::load_refresh_period`] so that nodes joining later learn it.
//!
//! # Joining
//!
//! [`Membership::join`] announces to seed addresses whose identity is not known yet. As
//! foca only accepts an announce addressed to the receiver's own name, the receiver
//! substitutes itself for the empty-name placeholder destination before handing the
//! packet to foca. While a node knows no live member it re-announces to its seeds (and a
//! few nodes it believes dead) every [`Config::seed_announce_period`], so a node that
//! booted before its seed, or ended up alone, finds the cluster again.
//!
//! # What this crate adds to foca (each found by the simulator)
//!
//! * **Member-list sync** (anti-entropy). Right after joining, then at growing intervals
//!   up to [`Config::sync_period`], a node fetches the whole member list of one random
//!   live member (as many packets as needed). A node joining a settled cluster learns
//!   everybody in one round trip instead of ~45 members per announce reply, and whatever
//!   gossip failed to deliver is repaired. Dead entries in a sync are not believed but
//!   verified: the member is asked to speak up, and declared down only if it stays silent.
//! * **Local suspicion timeouts.** In SWIM only the prober that raised a suspicion times
//!   it out; a node that missed its verdict would keep the member Suspect until it
//!   probes it itself, up to n periods later. Here a suspicion older than
//!   `suspect_to_down_after` is checked directly and settled one period later.
//! * **No spurious renewals.** Foca 2.0.0 tells a member "you are dead" when a suspicion
//!   expires even if the member refuted it in time, forcing a healthy node to renew its
//!   identity; those messages are dropped. A node that renews forgets its (stale) view
//!   and joins afresh, instead of declaring healthy nodes dead from it. A "you are dead"
//!   from a node we consider dead is only honoured by the smaller side of a partition
//!   (or after ten seconds of insisting), so that when one node comes back from being cut
//!   off, only that node changes identity.
//! * **Stale identities corrected.** A packet addressed to an older incarnation of ours
//!   (foca drops those silently) is answered with an announce that introduces the
//!   current one.
//! * **Cheaper duplicates.** Every update reaches each node about `max_transmissions`
//!   times and foca checks each copy with a linear scan of its member list; copies of
//!   updates already applied are cut out of a packet before foca sees it (the 1,000-node
//!   simulated join went from 269 s to 23 s).
//!
//! //! # Memory
//!
//! Dead and Left nodes are forgotten [`Config::forget_after`] (1 h) after they went away;
//! every queue is bounded (the driver is expected to drain events and transmits after
//! each input; if it does not, the oldest entries are dropped and counted in [`Stats`]).

mod config;
mod gossip;
mod id;
mod membership;
mod wire;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use config::Config;
pub use id::{MAX_NAME_LEN, NameKey, NodeId};
pub use membership::{Membership, NodeCounts, Stats};
pub use wire::{Error, WIRE_VERSION};

/// Load report each node disseminates about itself.
///
/// Versioned by `seq` (set by [`Membership::set_load`]) together with the reporter's
/// bump: a newer report from the same name invalidates older ones still being gossiped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct LoadReport {
    /// Version of the report within one incarnation (set by `set_load`).
    pub seq: u64,
    /// What the node does, e.g. `["submit", "exec"]`.
    pub roles: Vec<String>,
    /// Cores granted to herd.
    pub cpus: f32,
    /// CPU speed score measured at start (1.0 ≈ reference core).
    pub speed: f32,
    /// Run-queue length / load average of the host.
    pub load: f32,
    /// Load caused by the host owner's own (non-herd) work.
    pub owner_load: f32,
    /// Memory granted to herd, in bytes.
    pub mem_total: u64,
    /// Memory currently free for herd, in bytes.
    pub mem_free: u64,
    /// Herd tasks running on the node.
    pub tasks: u32,
    /// The node accepts no new work (drained, its owner is busy, or memory is short).
    pub draining: bool,
    /// It was drained (`herd drain`): a node `draining` but not `drained` is held by
    /// its own policy (its owner is busy or has not been idle long enough, or its
    /// memory is short).
    pub drained: bool,
    /// Reads of workstation files its cache answered, since it started.
    pub cache_hits: u64,
    /// Files it fetched from workstations, since it started.
    pub cache_misses: u64,
    /// The version of the CA's revocation list the node holds (0: none). A node that
    /// holds an older one asks it for the list (the list itself is too large for a
    /// packet; it is signed, so whoever hands it over cannot change it).
    pub revocations: u64,
    /// The node holds the cluster CA key: it signs enrollments and renewals.
    pub ca: bool,
}

/// The most cores a load report may claim (larger claims are taken as this).
pub const MAX_REPORTED_CPUS: f32 = 1024.0;
/// The highest speed score a load report may claim (1.0 ≈ reference core).
pub const MAX_REPORTED_SPEED: f32 = 16.0;

impl LoadReport {
    /// The report with every number brought into sane bounds: what another node says
    /// about itself is believed only that far. `cpus` in `0..=`[`MAX_REPORTED_CPUS`],
    /// `speed` in `0..=`[`MAX_REPORTED_SPEED`] (0 means unknown), loads in
    /// `0..=`[`MAX_REPORTED_CPUS`], free memory at most the total; anything not a
    /// finite number counts as 0. Applied to every report received
    /// ([`Membership::nodes`], [`Membership::load_of`] only ever show clamped ones).
    pub fn clamped(mut self) -> LoadReport {
        let clamp = |x: f32, max: f32| {
            if x.is_finite() {
                x.clamp(0.0, max)
            } else {
                0.0
            }
        };
        self.cpus = clamp(self.cpus, MAX_REPORTED_CPUS);
        self.speed = clamp(self.speed, MAX_REPORTED_SPEED);
        self.load = clamp(self.load, MAX_REPORTED_CPUS);
        self.owner_load = clamp(self.owner_load, MAX_REPORTED_CPUS);
        self.mem_free = self.mem_free.min(self.mem_total);
        self
    }
}

/// How this node currently sees another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Answering probes.
    Alive,
    /// Failed a probe; declared dead unless it refutes within `suspect_to_down_after`.
    Suspect,
    /// Declared down by the cluster (crashed, cut off, or too slow to refute).
    Dead,
    /// Left gracefully with [`Membership::leave`].
    Left,
}

impl NodeState {
    /// Alive or Suspect: the node is still considered part of the cluster.
    pub fn is_active(self) -> bool {
        matches!(self, NodeState::Alive | NodeState::Suspect)
    }
}

/// One node as seen from here (see [`Membership::nodes`]).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    /// Its current (latest known) identity.
    pub id: NodeId,
    /// Its state.
    pub state: NodeState,
    /// Its latest load report, if one arrived.
    pub load: Option<LoadReport>,
    /// When `state` (or the identity) last changed, in `now` units.
    pub since: Duration,
}

/// Something the driver may want to react to; drained with [`Membership::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node became Alive: it joined, restarted with a new identity, rejoined, or refuted
    /// a suspicion.
    NodeUp(NodeId),
    /// A node failed a probe and is suspected dead.
    NodeSuspect(NodeId),
    /// A node was declared dead.
    NodeDown(NodeId),
    /// A node left gracefully.
    NodeLeft(NodeId),
    /// A newer load report from the named node arrived.
    Load(String),
    /// The cluster declared *us* dead (false positive or partition); we renewed our
    /// identity (`bump + 1`, carried here) and rejoined.
    Rejoined(NodeId),
}
