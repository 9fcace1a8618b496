//! The [`Membership`] state machine: foca plus herd's bookkeeping around it.

use core::net::SocketAddr;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::Duration;

use bytes::Bytes;
use foca::{Foca, Header, Member, Message, Notification, OwnedNotification, PostcardCodec};
use foca::{Runtime, State, Timer};
use foca_rand::rngs::Xoshiro256PlusPlus;
use foca_rand::{RngExt, SeedableRng};

use crate::gossip::{Gossip, SharedState};
use crate::wire::{
    self, Error, Item, LeftNotice, SyncRequest, TAG_LEFT, TAG_SWIM, TAG_SYNC_REQUEST,
};
use crate::{Config, Event, LoadReport, NodeId, NodeState, NodeView};

type Swim = Foca<NodeId, PostcardCodec, Xoshiro256PlusPlus, Gossip>;

/// Most events / transmits kept when the driver does not drain them.
const MAX_QUEUE: usize = 65_536;
/// Most timers fired by one `handle_timeout` call (they are all finite anyway).
const MAX_TIMERS_PER_CALL: usize = 100_000;
/// How often Dead/Left nodes past `forget_after` are pruned, at most.
const PRUNE_PERIOD: Duration = Duration::from_secs(60);
/// Every this many probe periods, all records are checked against foca's member list
/// (a safety net: transitions are normally picked up as they happen).
const RECONCILE_EVERY: u64 = 10;
/// Known nodes a node announces to when it starts over after being cut off.
const RESTART_ANNOUNCES: usize = 3;
/// How many other members a node asks for a sync before giving up until the next period.
const SYNC_RETRIES: u32 = 3;
/// Sync requests a node answers per probe period at most (each answer is a few packets
/// per 40 members).
const SYNC_ANSWERS_PER_PERIOD: u32 = 4;

/// How many other nodes are in each state (self excluded); see [`Membership::counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounts {
    /// Nodes seen Alive.
    pub alive: usize,
    /// Nodes seen Suspect.
    pub suspect: usize,
    /// Nodes seen Dead.
    pub dead: usize,
    /// Nodes seen Left.
    pub left: usize,
}

/// Counters for observability and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams produced.
    pub packets_sent: u64,
    /// Bytes produced.
    pub bytes_sent: u64,
    /// Datagrams handed to `handle_data`.
    pub packets_received: u64,
    /// Datagrams `handle_data` rejected with an error.
    pub packets_rejected: u64,
    /// Errors foca reported while handling a timer (a sign of a driver bug).
    pub timer_errors: u64,
    /// Times we were declared dead and renewed our identity.
    pub rejoins: u64,
    /// Events or transmits dropped because the driver did not drain them.
    pub dropped: u64,
    /// Own broadcasts (load reports) foca refused, e.g. for being too large.
    pub broadcast_errors: u64,
    /// Times we dropped our view and joined afresh after renewing our identity.
    pub restarts: u64,
    /// Packets addressed to an older incarnation of ours, answered with an announce
    /// that carries our current identity.
    pub stale_corrected: u64,
    /// "You are dead" notices from nodes we consider dead, ignored (see
    /// `Membership::ignore_death_notice`).
    pub death_notices_ignored: u64,
    /// Piggybacked membership updates handed to foca.
    pub updates_applied: u64,
    /// Piggybacked membership updates skipped because they were applied before.
    pub updates_skipped: u64,
}

/// Member-list synchronisation with one peer at a time (see `sync_tick`).
#[derive(Clone, Debug, Default)]
struct SyncState {
    /// When `sync_tick` runs next (None until we first join).
    next: Option<Duration>,
    /// Whom we asked last, if that request is still open.
    pending: Option<NodeId>,
    /// Whether `pending` sent at least one chunk.
    answered: bool,
    /// Retries of the current request with other members.
    retries: u32,
    /// Time between requests: short right after joining, doubling up to `sync_period`.
    interval: Duration,
}

/// Another node as we remember it.
#[derive(Clone, Debug)]
struct Record {
    id: NodeId,
    state: NodeState,
    since: Duration,
    /// Last time a foca packet from exactly `id` arrived (zero: never).
    heard: Duration,
}

/// Collects what foca asks for during one call.
#[derive(Default)]
struct Outbox {
    sends: Vec<(SocketAddr, Bytes)>,
    /// Name of the destination of each entry of `sends`.
    dst_names: Vec<String>,
    timers: Vec<(Duration, Timer<NodeId>)>,
    notes: Vec<OwnedNotification<NodeId>>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.timers.is_empty() && self.notes.is_empty()
    }
}

impl Runtime<NodeId> for Outbox {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.sends.push((to.addr, wire::frame(TAG_SWIM, data)));
        self.dst_names.push(to.name);
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// SWIM membership of one herd node: a sans-IO state machine (see the crate docs).
pub struct Membership {
    me: NodeId,
    config: Config,
    foca: Swim,
    shared: SharedState,
    out: Outbox,
    /// Foca timers by (deadline, insertion order).
    timers: BTreeMap<(Duration, u64), Timer<NodeId>>,
    timer_seq: u64,
    transmit: VecDeque<(SocketAddr, Bytes)>,
    events: VecDeque<Event>,
    records: BTreeMap<String, Record>,
    counts: NodeCounts,
    loads: BTreeMap<String, LoadReport>,
    my_load: Option<LoadReport>,
    load_seq: u64,
    next_load_refresh: Option<Duration>,
    seeds: Vec<SocketAddr>,
    next_seed_announce: Duration,
    dead_cursor: usize,
    /// Member being probed (from foca's indirect-probe timer): the next probe tick
    /// decides whether it becomes Suspect.
    probing: Option<NodeId>,
    /// Members whose suspicion state may have changed (see `watch_suspicion`).
    watched: Vec<NodeId>,
    /// Probe ticks so far (drives the periodic `reconcile`).
    probe_ticks: u64,
    /// Suspects we announced to directly (see `follow_ups`), and when.
    suspect_followup: BTreeMap<NodeId, Duration>,
    /// Members a peer's sync reported dead that we asked to speak up, and when.
    verify_down: BTreeMap<NodeId, Duration>,
    /// Since when (and until when) we have been ignoring death notices, see
    /// `ignore_death_notice`.
    ignoring: Option<(Duration, Duration)>,
    /// Member-list synchronisation (join and anti-entropy), see `sync_tick`.
    sync: SyncState,
    /// Sync requests answered in the current probe period: (period start, count).
    sync_answers: (Duration, u32),
    /// Our own random choices (foca has its own generator).
    rng: Xoshiro256PlusPlus,
    /// Hashes of piggybacked updates already applied (see `skip_known_updates`). Keyed
    /// per process so that nobody can craft a collision; the keys do not affect
    /// behaviour, only which (astronomically unlikely) collisions could occur.
    seen_updates: HashSet<u64>,
    seen_hasher: RandomState,
    next_prune: Duration,
    self_state: NodeState,
    self_since: Duration,
    left: bool,
    stats: Stats,
}

impl Membership {
    /// A node that knows nobody yet; call [`join`](Self::join) next (a seed node can also
    /// just wait to be contacted). `seed` drives every random choice. Invalid `config`
    /// values are clamped into range, never rejected.
    pub fn new(me: NodeId, config: Config, seed: u64, now: Duration) -> Self {
        let config = config.sanitized();
        let shared = SharedState::default();
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            config.to_foca(),
            Xoshiro256PlusPlus::seed_from_u64(seed),
            PostcardCodec,
            Gossip(shared.clone()),
        );
        Self {
            me,
            foca,
            shared,
            out: Outbox::default(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            records: BTreeMap::new(),
            counts: NodeCounts::default(),
            loads: BTreeMap::new(),
            my_load: None,
            load_seq: 0,
            next_load_refresh: None,
            seeds: Vec::new(),
            next_seed_announce: now + config.seed_announce_period,
            dead_cursor: 0,
            probing: None,
            watched: Vec::new(),
            probe_ticks: 0,
            suspect_followup: BTreeMap::new(),
            verify_down: BTreeMap::new(),
            ignoring: None,
            sync: SyncState::default(),
            sync_answers: (now, 0),
            seen_updates: HashSet::new(),
            seen_hasher: RandomState::new(),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xD15C_0E55),
            next_prune: now + PRUNE_PERIOD.min(config.forget_after),
            self_state: NodeState::Alive,
            self_since: now,
            left: false,
            stats: Stats::default(),
            config,
        }
    }

    /// Contacts seed addresses whose identity is not known yet, and remembers them: while
    /// we know no live member we keep re-announcing to them every
    /// [`Config::seed_announce_period`] (this heals a node that booted before its seed or
    /// ended up alone). Our own address is skipped.
    ///
    /// Foca only accepts an announce addressed to the receiver's name, so the announce
    /// goes to a placeholder identity with an empty name, which the receiving
    /// [`Membership`] replaces by itself before handing the packet to foca.
    pub fn join(&mut self, now: Duration, seeds: &[SocketAddr]) {
        if self.left {
            return;
        }
        for seed in seeds {
            if *seed != self.me.addr && !self.seeds.contains(seed) {
                self.seeds.push(*seed);
            }
        }
        for seed in seeds {
            if *seed != self.me.addr {
                let _ = self
                    .foca
                    .announce(NodeId::placeholder(*seed), &mut self.out);
            }
        }
        self.next_seed_announce = now + self.config.seed_announce_period;
        self.flush(now);
    }

    /// Handles one received datagram. Never panics, whatever `data` holds; an `Err` means
    /// the datagram was dropped (nothing else happens, the driver may log it).
    ///
    /// After [`leave`](Self::leave), valid datagrams are ignored.
    pub fn handle_data(&mut self, now: Duration, data: &[u8]) -> Result<(), Error> {
        self.stats.packets_received += 1;
        let result = self.handle_data_inner(now, data);
        if result.is_err() {
            self.stats.packets_rejected += 1;
        }
        result
    }

    fn handle_data_inner(&mut self, now: Duration, data: &[u8]) -> Result<(), Error> {
        let (tag, body) = wire::split_frame(data, self.config.max_packet_size)?;
        match tag {
            TAG_SWIM => {
                let (header, rest) =
                    postcard::take_from_bytes::<Header<NodeId>>(body).map_err(wire::malformed)?;
                wire::check_name(&header.src)?;
                let announce_to_seed =
                    header.message == Message::Announce && header.dst.is_placeholder();
                if !announce_to_seed {
                    wire::check_name(&header.dst)?;
                }
                if self.left {
                    return Ok(());
                }
                if announce_to_seed {
                    let mut header = header;
                    header.dst = self.me.clone();
                    let mut buf = wire::encode(&header);
                    buf.extend_from_slice(rest);
                    let result = self.foca.handle_data(&buf, &mut self.out);
                    self.flush(now);
                    return result.map_err(foca_error);
                }
                if header.src.name == self.me.name {
                    return Err(Error::Rejected(format!(
                        "packet claims to come from this node ({})",
                        header.src
                    )));
                }
                if header.dst.name == self.me.name && self.me.supersedes(&header.dst) {
                    // Addressed to an older incarnation of ours: foca would drop it
                    // silently and the sender would keep probing a ghost (and soon suspect
                    // it). Introduce our current identity instead.
                    self.stats.stale_corrected += 1;
                    let _ = self.foca.announce(header.src.clone(), &mut self.out);
                    self.flush(now);
                    return Ok(());
                }
                if header.message == Message::TurnUndead
                    && self.ignore_death_notice(now, &header.src)
                {
                    self.stats.death_notices_ignored += 1;
                    return Ok(());
                }
                let header_len = body.len() - rest.len();
                let me_before = self.me.clone();
                if self.counts.suspect > 0 {
                    // A message from a suspect carries its (possibly refuting) incarnation.
                    let sender =
                        Member::new(header.src.clone(), header.src_incarnation, State::Alive);
                    self.watch_suspicion(&sender);
                }
                let (rewritten, fresh) = self.skip_known_updates(&header, rest);
                let result = match &rewritten {
                    Some(tail) => {
                        let mut buf = Vec::with_capacity(body.len());
                        buf.extend_from_slice(&body[..header_len]);
                        buf.extend_from_slice(tail);
                        self.foca.handle_data(&buf, &mut self.out)
                    }
                    None => self.foca.handle_data(body, &mut self.out),
                };
                self.flush(now);
                if let Some(r) = self.records.get_mut(&header.src.name)
                    && r.id == header.src
                {
                    r.heard = now;
                }
                // Remember the updates only if foca applied them: it ignores packets for
                // another identity and updates from senders it considers down.
                if result.is_ok()
                    && !fresh.is_empty()
                    && header.dst == me_before
                    && self
                        .records
                        .get(&header.src.name)
                        .is_some_and(|r| r.id == header.src && r.state.is_active())
                {
                    self.remember_updates(fresh);
                }
                self.check_watched(now);
                result.map_err(foca_error)
            }
            TAG_LEFT => {
                let notice: LeftNotice = wire::decode_exact(body)?;
                wire::check_name(&notice.id)?;
                if !self.left && notice.id.name != self.me.name {
                    self.on_left_notice(now, notice.id);
                    self.flush(now);
                }
                Ok(())
            }
            TAG_SYNC_REQUEST => {
                let request: SyncRequest = wire::decode_exact(body)?;
                wire::check_name(&request.from)?;
                if !self.left && request.from.name != self.me.name {
                    self.answer_sync(now, &request.from);
                }
                Ok(())
            }
            _ => {
                let (from, rest) =
                    postcard::take_from_bytes::<NodeId>(body).map_err(wire::malformed)?;
                wire::check_name(&from)?;
                let (members, tail) = wire::split_members(rest)?;
                if !tail.is_empty() {
                    return Err(Error::Malformed(format!("{} trailing bytes", tail.len())));
                }
                if self.left {
                    return Ok(());
                }
                self.apply_sync(now, &from, members)
            }
        }
    }

    /// Fires every timer due at `now` (foca's protocol timers and our own: seed
    /// re-announce, load refresh, forgetting old nodes).
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.left {
            self.timers.clear();
            return;
        }
        let mut fired = 0;
        while fired < MAX_TIMERS_PER_CALL {
            let Some(entry) = self.timers.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            fired += 1;
            let is_probe = matches!(timer, Timer::ProbeRandomMember(_));
            if is_probe && let Some(probed) = self.probing.take() {
                // This tick decides whether the previous probe failed (-> Suspect).
                self.watched.push(probed);
            }
            let suspect = match &timer {
                Timer::ChangeSuspectToDown { member_id, .. } => Some(member_id.clone()),
                _ => None,
            };
            if self.foca.handle_timer(timer, &mut self.out).is_err() {
                self.stats.timer_errors += 1;
            }
            if let Some(id) = suspect {
                self.drop_spurious_turn_undead(&id);
            }
            self.flush(now);
            if is_probe {
                self.check_watched(now);
                self.probe_ticks += 1;
                if self.probe_ticks.is_multiple_of(RECONCILE_EVERY) {
                    self.reconcile(now);
                }
                self.follow_ups(now);
            }
        }
        if self.sync.next.is_some_and(|at| now >= at) {
            self.sync_tick(now);
        }
        if self.idle_targets() && now >= self.next_seed_announce {
            self.announce_when_idle(now);
        }
        if let Some(at) = self.next_load_refresh
            && now >= at
            && let Some(report) = self.my_load.clone()
        {
            self.set_load(now, report);
        }
        if now >= self.next_prune {
            self.prune(now);
            self.next_prune = now + PRUNE_PERIOD.min(self.config.forget_after);
        }
    }

    /// The earliest time at which [`handle_timeout`](Self::handle_timeout) has work to do
    /// (may be in the past: then call it right away). `None` after [`leave`](Self::leave).
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.left {
            return None;
        }
        let mut next = self.next_prune;
        if let Some((&(at, _), _)) = self.timers.first_key_value() {
            next = next.min(at);
        }
        if self.idle_targets() {
            next = next.min(self.next_seed_announce);
        }
        if let Some(at) = self.next_load_refresh {
            next = next.min(at);
        }
        if let Some(at) = self.sync.next {
            next = next.min(at);
        }
        Some(next)
    }

    /// Next datagram to send, and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.transmit.pop_front()
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Stores our load report and disseminates it. `report.seq` is overwritten with the
    /// next sequence number. The report is re-sent every [`Config::load_refresh_period`]
    /// until replaced. A report too large to fit in a packet is kept locally only (and
    /// counted in [`Stats::broadcast_errors`]).
    pub fn set_load(&mut self, now: Duration, mut report: LoadReport) {
        if self.left {
            return;
        }
        self.load_seq += 1;
        report.seq = self.load_seq;
        self.my_load = Some(report.clone());
        self.next_load_refresh = Some(now + self.config.load_refresh_period);
        let item = Item::Load {
            name: self.me.name.clone(),
            bump: self.me.bump,
            report,
        };
        if self.foca.add_broadcast(&wire::encode(&item)).is_err() {
            self.stats.broadcast_errors += 1;
        }
        self.flush(now);
    }

    /// Leaves the cluster gracefully: every known live member gets a direct "left" notice,
    /// a "left" record is gossiped, then foca declares us down. Peers then show this
    /// incarnation as [`NodeState::Left`], not `Dead`. Afterwards this instance only
    /// drains its outputs: a restarted node must use a new `Membership` (and bump).
    pub fn leave(&mut self, now: Duration) {
        if self.left {
            return;
        }
        let item = Item::Left {
            name: self.me.name.clone(),
            bump: self.me.bump,
        };
        if self.foca.add_broadcast(&wire::encode(&item)).is_err() {
            self.stats.broadcast_errors += 1;
        }
        let notice = wire::frame(
            TAG_LEFT,
            &wire::encode(&LeftNotice {
                id: self.me.clone(),
            }),
        );
        let targets: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for addr in targets {
            self.push_transmit(addr, notice.clone());
        }
        self.left = true;
        self.self_state = NodeState::Left;
        self.self_since = now;
        let _ = self.foca.leave_cluster(&mut self.out);
        self.flush(now);
        self.timers.clear();
    }

    /// Every node seen (alive at some point) and not yet forgotten, ourselves included,
    /// sorted by name.
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut out = Vec::with_capacity(self.records.len() + 1);
        let me = NodeView {
            id: self.me.clone(),
            state: self.self_state,
            load: self.my_load.clone(),
            since: self.self_since,
        };
        let mut me = Some(me);
        for (name, rec) in &self.records {
            if me.is_some() && *name > self.me.name {
                out.extend(me.take());
            }
            out.push(NodeView {
                id: rec.id.clone(),
                state: rec.state,
                load: self.loads.get(name).cloned(),
                since: rec.since,
            });
        }
        out.extend(me);
        out
    }

    /// Other nodes (not ourselves) with their state, sorted by name, without cloning.
    pub fn iter_nodes(&self) -> impl Iterator<Item = (&NodeId, NodeState)> + '_ {
        self.records.values().map(|r| (&r.id, r.state))
    }

    /// How we see the node called `name` (not ourselves): its identity and state.
    pub fn state_of(&self, name: &str) -> Option<(&NodeId, NodeState)> {
        self.records.get(name).map(|r| (&r.id, r.state))
    }

    /// Latest load report of `name` (ourselves included).
    pub fn load_of(&self, name: &str) -> Option<&LoadReport> {
        if name == self.me.name {
            self.my_load.as_ref()
        } else {
            self.loads.get(name)
        }
    }

    /// How many other nodes we see in each state (cheap).
    pub fn counts(&self) -> NodeCounts {
        self.counts
    }

    /// Our current identity (changes on [`Event::Rejoined`]).
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// Whether [`leave`](Self::leave) was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The (sanitized) configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Decodes only the sender identity of a datagram, so that the agent can check it
    /// against the peer's TLS certificate name before calling
    /// [`handle_data`](Self::handle_data). Never panics.
    pub fn peek_sender(data: &[u8]) -> Result<NodeId, Error> {
        wire::peek_sender(data)
    }

    // ----- internals -----

    /// Whether, knowing no live member, we have anyone to announce to.
    fn idle_targets(&self) -> bool {
        !self.left
            && self.foca.num_members() == 0
            && (!self.seeds.is_empty() || self.counts.dead > 0)
    }

    /// Announces to every seed and a couple of nodes we believe dead.
    fn announce_when_idle(&mut self, now: Duration) {
        for seed in self.seeds.clone() {
            let _ = self.foca.announce(NodeId::placeholder(seed), &mut self.out);
        }
        let dead: Vec<NodeId> = self
            .records
            .values()
            .filter(|r| r.state == NodeState::Dead)
            .map(|r| r.id.clone())
            .collect();
        if !dead.is_empty() {
            for i in 0..self.config.announce_down_fanout.min(dead.len()) {
                let id = dead[(self.dead_cursor + i) % dead.len()].clone();
                let _ = self.foca.announce(id, &mut self.out);
            }
            self.dead_cursor = self.dead_cursor.wrapping_add(1);
        }
        self.next_seed_announce = now + self.config.seed_announce_period;
        self.flush(now);
    }

    fn push_transmit(&mut self, addr: SocketAddr, data: Bytes) {
        if self.transmit.len() >= MAX_QUEUE {
            self.transmit.pop_front();
            self.stats.dropped += 1;
        }
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += data.len() as u64;
        self.transmit.push_back((addr, data));
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_QUEUE {
            self.events.pop_front();
            self.stats.dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Applies everything foca (and the broadcast handler) produced during a call.
    fn flush(&mut self, now: Duration) {
        // Each round may feed foca again (a "left" item applies a Down); bounded anyway.
        for _ in 0..16 {
            let items = std::mem::take(&mut self.shared.lock().inbox);
            if items.is_empty() && self.out.is_empty() {
                break;
            }
            // Items first: a "left" record must be known before the Down it explains.
            for item in items {
                self.on_item(now, item);
            }
            let out = std::mem::take(&mut self.out);
            // When foca renews our identity it immediately gossips from the view we are
            // about to discard (see `start_over`), now under our new identity, which the
            // others accept: our cut-off verdicts ("n3 is dead") would spread, and the
            // node that told us we were dead would be told the same. Nothing of that
            // batch is sent; the fresh instance announces itself instead.
            let renewed = out
                .notes
                .iter()
                .any(|n| matches!(n, OwnedNotification::Rejoin(_)));
            for ((addr, data), dst) in out.sends.into_iter().zip(out.dst_names) {
                // Foca may hold an older incarnation of ours as a Down member (learned from
                // peers) and announce to it: that would be a packet to ourselves.
                if renewed || dst == self.me.name {
                    continue;
                }
                self.push_transmit(addr, data);
            }
            for (after, timer) in out.timers {
                if let Timer::SendIndirectProbe { probed_id, .. } = &timer {
                    self.probing = Some(probed_id.clone());
                }
                self.timer_seq += 1;
                self.timers.insert((now + after, self.timer_seq), timer);
            }
            let mut notes = out.notes.into_iter().peekable();
            while let Some(note) = notes.next() {
                match note {
                    OwnedNotification::MemberUp(id) => self.set_node(now, &id, NodeState::Alive),
                    OwnedNotification::MemberDown(id) => {
                        let state = self.down_state(&id);
                        self.set_node(now, &id, state);
                    }
                    OwnedNotification::Rename(_old, new) => {
                        // If the liveness changes too, foca follows up with Up/Down.
                        let followed = matches!(notes.peek(),
                            Some(OwnedNotification::MemberUp(n) | OwnedNotification::MemberDown(n))
                                if *n == new);
                        if !followed {
                            self.rename(now, new);
                        }
                    }
                    OwnedNotification::Rejoin(new) => self.on_rejoin(now, new),
                    OwnedNotification::Active => {
                        // Joined (or rejoined): fetch a full member list right away.
                        self.sync = SyncState {
                            next: Some(now),
                            interval: self.config.probe_period * 2,
                            ..SyncState::default()
                        };
                    }
                    OwnedNotification::Defunct if !self.left => {
                        // Declared dead and unable to renew (bump at u32::MAX).
                        self.self_state = NodeState::Dead;
                        self.self_since = now;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Most of a foca packet's piggybacked updates are news to nobody: every update is
    /// retransmitted `max_transmissions` times by every node, so each node receives it
    /// about that many times, and foca checks each copy against its member list with a
    /// linear scan. Applying an update a second time is a no-op (member states only move
    /// forward), so updates already applied are cut out of the packet before foca sees
    /// it. Returns the rewritten tail of the packet (update count, fresh updates, custom
    /// broadcasts) if anything was cut, and the hashes of the fresh updates. A malformed
    /// list is left to foca, which rejects it.
    fn skip_known_updates(
        &mut self,
        header: &Header<NodeId>,
        rest: &[u8],
    ) -> (Option<Vec<u8>>, Vec<u64>) {
        if rest.len() < 2 || header.message == Message::Broadcast {
            return (None, Vec::new());
        }
        let count = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let mut cursor = &rest[2..];
        let mut fresh: Vec<&[u8]> = Vec::with_capacity(count.min(256));
        let mut hashes = Vec::with_capacity(count.min(256));
        for _ in 0..count {
            let Ok((member, after)) = postcard::take_from_bytes::<Member<NodeId>>(cursor) else {
                return (None, Vec::new());
            };
            let update = &cursor[..cursor.len() - after.len()];
            let hash = self.seen_hasher.hash_one(update);
            if !self.seen_updates.contains(&hash) && !hashes.contains(&hash) {
                fresh.push(update);
                hashes.push(hash);
                self.watch_suspicion(&member);
            }
            cursor = after;
        }
        self.stats.updates_applied += fresh.len() as u64;
        self.stats.updates_skipped += (count - fresh.len()) as u64;
        if fresh.len() == count {
            return (None, hashes);
        }
        let mut out = Vec::with_capacity(rest.len());
        out.extend_from_slice(&(fresh.len() as u16).to_be_bytes());
        for update in fresh {
            out.extend_from_slice(update);
        }
        out.extend_from_slice(cursor);
        (Some(out), hashes)
    }

    /// Bound of the applied-updates cache (it is simply cleared when full).
    fn seen_limit(&self) -> usize {
        4 * (self.records.len() + 64)
    }

    /// Whether to ignore a "you are dead" (`TurnUndead`) from `sender`.
    ///
    /// Foca honours it even from a sender it considers dead itself (so that two nodes
    /// that each think the other dead stop pinging each other), renewing our identity.
    /// When a partition heals, each side considers the other dead, and every node that
    /// meets the other side would renew (and start over, see `start_over`) for nothing:
    /// it is enough that one side renews. So a notice from a node we consider dead
    /// (in any incarnation) is honoured only if our side is the smaller one: we
    /// (ourselves plus the nodes we see alive) are fewer than the nodes we see dead, or
    /// as many and the smallest name we know of is on the other side (a tie-break every
    /// node of a side computes alike). A node cut off alone always renews; the majority
    /// of a clean split does not, unless it keeps receiving such notices for four
    /// `announce_down_period`s (overlapping partitions can leave two nodes that both
    /// believe they are the majority: one of them must give in). Notices from nodes we
    /// consider alive are always honoured (that is how SWIM tells a node it was declared
    /// dead).
    fn ignore_death_notice(&mut self, now: Duration, sender: &NodeId) -> bool {
        let sender_dead = self
            .records
            .get(&sender.name)
            .is_some_and(|r| !r.state.is_active());
        if !sender_dead {
            return false;
        }
        let ours = self.counts.alive + self.counts.suspect + 1;
        let theirs = self.counts.dead;
        let minority = match ours.cmp(&theirs) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                // Records are sorted by name: the first one not Left is the smallest.
                let smallest = self
                    .records
                    .values()
                    .find(|r| r.state != NodeState::Left)
                    .filter(|r| r.id.name < self.me.name);
                smallest.is_some_and(|r| !r.state.is_active())
            }
        };
        if minority {
            return false;
        }
        // Liveness: when partitions overlap, sides are not clean and two nodes can each
        // believe they are the majority. Whoever keeps hearing "you are dead" for longer
        // than `patience` gives in.
        let patience = self.config.announce_down_period * 4;
        let first = match self.ignoring {
            Some((first, last)) if now.saturating_sub(last) < patience => first,
            _ => now,
        };
        self.ignoring = Some((first, now));
        now.saturating_sub(first) < patience
    }

    /// Works around foca 2.0.0 sending `TurnUndead` when a suspicion *expires* even if
    /// the member refuted it in time (its `ChangeSuspectToDown` handler notifies whenever
    /// the member still exists, not only when it was declared down). Left alone, every
    /// refuted suspicion would force the live node to renew its identity.
    fn drop_spurious_turn_undead(&mut self, id: &NodeId) {
        let still_active = self
            .foca
            .iter_membership_state()
            .any(|m| m.id() == id && m.state() != State::Down);
        if !still_active {
            return;
        }
        let keep: Vec<bool> = self
            .out
            .sends
            .iter()
            .map(|(addr, data)| *addr != id.addr || !is_turn_undead(data))
            .collect();
        let mut keep_iter = keep.iter();
        self.out
            .sends
            .retain(|_| *keep_iter.next().unwrap_or(&true));
        let mut keep_iter = keep.iter();
        self.out
            .dst_names
            .retain(|_| *keep_iter.next().unwrap_or(&true));
    }

    /// Dead, or Left if this incarnation announced its leave.
    fn down_state(&self, id: &NodeId) -> NodeState {
        match self.shared.lock().left.get(&id.name) {
            Some(&bump) if bump >= id.bump => NodeState::Left,
            _ => NodeState::Dead,
        }
    }

    fn count_mut(&mut self, state: NodeState) -> &mut usize {
        match state {
            NodeState::Alive => &mut self.counts.alive,
            NodeState::Suspect => &mut self.counts.suspect,
            NodeState::Dead => &mut self.counts.dead,
            NodeState::Left => &mut self.counts.left,
        }
    }

    /// Records that `id` is in `state`, emitting the matching event on a change.
    fn set_node(&mut self, now: Duration, id: &NodeId, state: NodeState) {
        if id.name == self.me.name {
            return;
        }
        if self
            .records
            .get(&id.name)
            .is_some_and(|r| r.id.supersedes(id))
        {
            // An older incarnation than the one we know (e.g. relearned from a stale peer
            // after `start_over`): our record stays; foca will be corrected when it talks
            // to the node.
            return;
        }
        let previous = self
            .records
            .get(&id.name)
            .map(|r| (r.id == *id, r.state, r.heard));
        let heard = match previous {
            Some((true, old, _)) if old == state => return,
            Some((same, old, heard)) => {
                *self.count_mut(old) -= 1;
                if same { heard } else { Duration::ZERO }
            }
            None => Duration::ZERO,
        };
        *self.count_mut(state) += 1;
        self.records.insert(
            id.name.clone(),
            Record {
                id: id.clone(),
                state,
                since: now,
                heard,
            },
        );
        let event = match state {
            NodeState::Alive => Event::NodeUp(id.clone()),
            NodeState::Suspect => Event::NodeSuspect(id.clone()),
            NodeState::Dead => Event::NodeDown(id.clone()),
            NodeState::Left => Event::NodeLeft(id.clone()),
        };
        self.push_event(event);
    }

    /// A newer incarnation replaced the one foca knew, with the same liveness: record it
    /// in the state foca has it in.
    fn rename(&mut self, now: Duration, new: NodeId) {
        if new.name == self.me.name {
            return;
        }
        let state = self
            .foca
            .iter_membership_state()
            .find(|m| m.id().addr == new.addr && *m.id() == new)
            .map(|m| m.state());
        let state = match state {
            Some(State::Alive) => NodeState::Alive,
            Some(State::Suspect) => NodeState::Suspect,
            Some(State::Down) => self.down_state(&new),
            None => return,
        };
        self.set_node(now, &new, state);
    }

    fn on_rejoin(&mut self, now: Duration, new: NodeId) {
        self.me = new.clone();
        self.self_state = NodeState::Alive;
        self.self_since = now;
        self.stats.rejoins += 1;
        self.push_event(Event::Rejoined(new));
        self.start_over(now);
        if let Some(report) = self.my_load.clone() {
            // Re-issue the report under the new bump (flushed by our caller's loop).
            self.load_seq += 1;
            let mut report = report;
            report.seq = self.load_seq;
            self.my_load = Some(report.clone());
            let item = Item::Load {
                name: self.me.name.clone(),
                bump: self.me.bump,
                report,
            };
            if self.foca.add_broadcast(&wire::encode(&item)).is_err() {
                self.stats.broadcast_errors += 1;
            }
        }
    }

    /// Replaces foca by a fresh instance that knows nobody, and joins again. Done on
    /// every identity renewal (the cluster declared us dead).
    ///
    /// Being declared dead means our view is suspect too: typically we were cut off and
    /// have declared many healthy nodes dead ourselves. Foca's Down is final for an
    /// identity, so keeping that view would make us answer those nodes with `TurnUndead`
    /// and force each of them to renew its identity as well (one cut-off node would make
    /// half the cluster renew). A fresh instance relearns the cluster (announce replies,
    /// then a full sync) and only we change identity. Our records stay as they are and
    /// are refreshed as foca relearns members, so nodes that stayed alive produce no
    /// events.
    fn start_over(&mut self, now: Duration) {
        let seed = self.rng.random::<u64>();
        self.foca = Foca::with_custom_broadcast(
            self.me.clone(),
            self.config.to_foca(),
            Xoshiro256PlusPlus::seed_from_u64(seed),
            PostcardCodec,
            Gossip(self.shared.clone()),
        );
        self.stats.restarts += 1;
        self.timers.clear();
        self.seen_updates.clear();
        self.suspect_followup.clear();
        self.verify_down.clear();
        self.ignoring = None;
        self.watched.clear();
        self.probing = None;
        self.sync = SyncState::default();
        // Announce to the seeds and to a few nodes we knew.
        let mut known: Vec<NodeId> = self.records.values().map(|r| r.id.clone()).collect();
        let mut targets = Vec::new();
        for _ in 0..RESTART_ANNOUNCES.min(known.len()) {
            let i = self.rng.random_range(0..known.len());
            targets.push(known.swap_remove(i));
        }
        for seed in self.seeds.clone() {
            let _ = self.foca.announce(NodeId::placeholder(seed), &mut self.out);
        }
        for id in targets {
            let _ = self.foca.announce(id, &mut self.out);
        }
        self.next_seed_announce = now + self.config.seed_announce_period;
    }

    /// A broadcast item the handler accepted as new.
    fn on_item(&mut self, now: Duration, item: Item) {
        match item {
            Item::Load { name, report, .. } => {
                if name != self.me.name {
                    // Believed only within sane bounds: the one place reports come in.
                    self.loads.insert(name.clone(), report.clamped());
                    self.push_event(Event::Load(name));
                }
            }
            Item::Left { name, bump } => {
                if let Some(rec) = self.records.get(&name)
                    && rec.id.bump <= bump
                {
                    let id = rec.id.clone();
                    self.mark_left(now, id);
                }
            }
        }
    }

    /// A direct "left" notice from `id`.
    fn on_left_notice(&mut self, now: Duration, id: NodeId) {
        if let Some(rec) = self.records.get(&id.name)
            && rec.id.supersedes(&id)
        {
            return; // about an older incarnation than the one we know
        }
        // Take the leave as a broadcast item of our own: the handler records it (so the
        // Down below maps to Left) and every message that now spreads the Down carries it.
        let item = Item::Left {
            name: id.name.clone(),
            bump: id.bump,
        };
        if self.foca.add_broadcast(&wire::encode(&item)).is_err() {
            self.stats.broadcast_errors += 1;
        }
        self.mark_left(now, id);
    }

    /// `id` left: make foca consider it down (a Dead record becomes Left right away).
    fn mark_left(&mut self, now: Duration, id: NodeId) {
        if let Some(rec) = self.records.get(&id.name)
            && rec.id == id
            && rec.state == NodeState::Dead
        {
            self.set_node(now, &id, NodeState::Left);
            return;
        }
        let _ = self
            .foca
            .apply_many(std::iter::once(Member::down(id)), true, &mut self.out);
    }

    /// Brings records in line with foca's member list (catches Suspect transitions).
    fn reconcile(&mut self, now: Duration) {
        self.sync_records(now, None);
    }

    /// Updates the records of the members foca lists (all of them, or only those in
    /// `only`, compared by inline address first so that the scan stays cheap) to the
    /// state foca holds for them.
    fn sync_records(&mut self, now: Duration, only: Option<&[NodeId]>) {
        let mut changes = Vec::new();
        {
            let shared = self.shared.lock();
            for m in self.foca.iter_membership_state() {
                let id = m.id();
                if only.is_some_and(|w| !w.iter().any(|w| w.addr == id.addr && w.name == id.name)) {
                    continue;
                }
                let state = match m.state() {
                    State::Alive => NodeState::Alive,
                    State::Suspect => NodeState::Suspect,
                    State::Down => match shared.left.get(&id.name) {
                        Some(&b) if b >= id.bump => NodeState::Left,
                        _ => NodeState::Dead,
                    },
                };
                match self.records.get(&id.name) {
                    Some(r) if r.id == *id && r.state == state => {}
                    None if !state.is_active() => {}
                    _ => changes.push((id.clone(), state)),
                }
            }
        }
        for (id, state) in changes {
            self.set_node(now, &id, state);
        }
    }

    /// Notes that `update` may change a member's suspicion state (foca does not report
    /// Alive <-> Suspect transitions): a Suspect update, or an Alive one about a member
    /// we have as Suspect (a refutation). [`check_watched`](Self::check_watched) then
    /// reads foca's verdict.
    fn watch_suspicion(&mut self, update: &Member<NodeId>) {
        let relevant = match update.state() {
            State::Suspect => true,
            State::Alive => self
                .records
                .get(&update.id().name)
                .is_some_and(|r| r.state == NodeState::Suspect),
            State::Down => false,
        };
        if relevant && self.watched.len() < 1024 {
            self.watched.push(update.id().clone());
        }
    }

    /// Updates the records of the watched members from foca's member list.
    fn check_watched(&mut self, now: Duration) {
        if self.watched.is_empty() {
            return;
        }
        let watched = std::mem::take(&mut self.watched);
        self.sync_records(now, Some(&watched));
    }

    /// Member-list synchronisation, the anti-entropy half of the protocol.
    ///
    /// Gossip delivers each update to each node with high probability, not certainty,
    /// and a node that joins a settled cluster hears no gossip about the members that were
    /// already there: it would learn them ~45 at a time from announce replies (one packet
    /// each). So right after joining (foca's `Active`), and then every
    /// [`Config::sync_period`], a node asks one random live member for its whole member
    /// list (Alive, Suspect and Down entries), which arrives in as many packets as needed.
    /// If nobody answers within a probe period, another member is asked (up to 3 times).
    /// After a join the interval starts at two probe periods and doubles up to
    /// `sync_period`, so that whatever the join storm's gossip missed is repaired early.
    /// Answers are applied like gossip (already-known entries are skipped), but not
    /// re-gossiped: they are old news for everybody else.
    fn sync_tick(&mut self, now: Duration) {
        let open = self.sync.pending.is_some();
        if open && (self.sync.answered || self.sync.retries >= SYNC_RETRIES) {
            // The last request is done (or hopeless): wait for the next one.
            self.sync.pending = None;
            self.sync.next = Some(now + self.sync.interval);
            self.sync.interval = (self.sync.interval * 2).min(self.config.sync_period);
            return;
        }
        self.sync.retries = if open { self.sync.retries + 1 } else { 0 };
        let previous = self.sync.pending.take();
        let live: Vec<&NodeId> = self
            .records
            .values()
            .filter(|r| r.state == NodeState::Alive && Some(&r.id) != previous.as_ref())
            .map(|r| &r.id)
            .collect();
        if live.is_empty() {
            self.sync.next = Some(now + self.sync.interval.max(self.config.probe_period));
            return;
        }
        let target = live[self.rng.random_range(0..live.len())].clone();
        let request = SyncRequest {
            from: self.me.clone(),
        };
        self.push_transmit(
            target.addr,
            wire::frame(TAG_SYNC_REQUEST, &wire::encode(&request)),
        );
        self.sync.pending = Some(target);
        self.sync.answered = false;
        self.sync.next = Some(now + self.config.probe_period);
    }

    /// Answers a [`SyncRequest`] with our member list (rate limited).
    fn answer_sync(&mut self, now: Duration, from: &NodeId) {
        if now >= self.sync_answers.0 + self.config.probe_period {
            self.sync_answers = (now, 0);
        }
        if self.sync_answers.1 >= SYNC_ANSWERS_PER_PERIOD {
            return;
        }
        self.sync_answers.1 += 1;
        let me = Member::new(self.me.clone(), 0, State::Alive);
        let others = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().name != from.name);
        let chunks = wire::sync_chunks(
            &self.me,
            std::iter::once(&me).chain(others),
            self.config.max_packet_size,
        );
        for chunk in chunks {
            self.push_transmit(from.addr, chunk);
        }
    }

    /// Applies one chunk of the answer to our sync request.
    fn apply_sync(
        &mut self,
        now: Duration,
        from: &NodeId,
        members: Vec<&[u8]>,
    ) -> Result<(), Error> {
        if self
            .sync
            .pending
            .as_ref()
            .is_none_or(|p| p.name != from.name)
        {
            return Ok(()); // unsolicited or late: ignore
        }
        self.sync.answered = true;
        let mut fresh = Vec::with_capacity(members.len());
        let mut hashes = Vec::with_capacity(members.len());
        for bytes in members {
            let hash = self.seen_hasher.hash_one(bytes);
            if self.seen_updates.contains(&hash) || hashes.contains(&hash) {
                self.stats.updates_skipped += 1;
                continue;
            }
            let (member, _) =
                postcard::take_from_bytes::<Member<NodeId>>(bytes).map_err(wire::malformed)?;
            wire::check_name(member.id())?;
            if member.state() == State::Down {
                // A Down entry is not applied, it is verified: we check ourselves (see
                // `follow_ups`) members we still believe alive; the dead we never knew are
                // of no interest. Right after a partition heals the peer's verdicts can be
                // the other side's stale ones about *our* side, and believing them would
                // make us answer healthy nodes with "you are dead".
                let believed_alive = self
                    .records
                    .get(&member.id().name)
                    .is_some_and(|r| r.state.is_active() && r.id == *member.id());
                if believed_alive && !self.verify_down.contains_key(member.id()) {
                    let id = member.id().clone();
                    let _ = self.foca.announce(id.clone(), &mut self.out);
                    self.verify_down.insert(id, now);
                }
                continue;
            }
            self.watch_suspicion(&member);
            fresh.push(member);
            hashes.push(hash);
        }
        self.stats.updates_applied += fresh.len() as u64;
        let result = self
            .foca
            .apply_many(fresh.into_iter(), false, &mut self.out);
        self.flush(now);
        self.check_watched(now);
        result.map_err(foca_error)?;
        self.remember_updates(hashes);
        Ok(())
    }

    fn remember_updates(&mut self, hashes: Vec<u64>) {
        if self.seen_updates.len() + hashes.len() > self.seen_limit() {
            self.seen_updates.clear();
        }
        self.seen_updates.extend(hashes);
    }

    /// Resolves suspicions that outlive their deadline here, and checks members a sync
    /// peer reported dead. Runs every probe period.
    ///
    /// In SWIM only the prober that raised a suspicion times it out; everybody else
    /// waits for its Down (or the suspect's refutation) to arrive by gossip. Gossip
    /// reaches a given node with high probability, not certainty (each update is sent
    /// `max_transmissions` times by each node, to random members), so a node may keep a
    /// member Suspect until it happens to probe it itself, up to n periods later. So,
    /// like Lifeguard's local suspicion timers: a member still Suspect here
    /// `suspect_to_down_after` after we noticed gets a direct announce (a live member
    /// answers, and its answer carries the refuting incarnation or its renewed
    /// identity); if it is still Suspect one period later we declare it down ourselves.
    ///
    /// A member a sync peer reports dead while we believe it alive gets the same direct
    /// announce, and is declared down if nothing arrived from it two periods later.
    fn follow_ups(&mut self, now: Duration) {
        if self.counts.suspect == 0 && self.verify_down.is_empty() {
            self.suspect_followup.clear();
            return;
        }
        let stale = self.config.suspect_to_down_after;
        let grace = self.config.probe_period;
        let mut announce = Vec::new();
        let mut down = Vec::new();
        if self.counts.suspect > 0 {
            for rec in self.records.values() {
                if rec.state != NodeState::Suspect || now < rec.since + stale {
                    continue;
                }
                match self.suspect_followup.get(&rec.id) {
                    None => announce.push(rec.id.clone()),
                    Some(&at) if now >= at + grace => down.push(rec.id.clone()),
                    Some(_) => {}
                }
            }
        }
        // Members a peer's sync reported dead: dead unless they spoke since we asked.
        let verify_grace = self.config.probe_period * 2;
        let records = &self.records;
        self.verify_down.retain(|id, &mut asked| {
            if now < asked + verify_grace {
                return true;
            }
            if records
                .get(&id.name)
                .is_some_and(|r| r.id == *id && r.state.is_active() && r.heard < asked)
            {
                down.push(id.clone());
            }
            false
        });
        for id in announce {
            let _ = self.foca.announce(id.clone(), &mut self.out);
            self.suspect_followup.insert(id, now);
        }
        for id in down {
            self.suspect_followup.remove(&id);
            let _ = self
                .foca
                .apply_many(std::iter::once(Member::down(id)), true, &mut self.out);
        }
        let records = &self.records;
        self.suspect_followup.retain(|id, _| {
            records
                .get(&id.name)
                .is_some_and(|r| r.id == *id && r.state == NodeState::Suspect)
        });
        self.flush(now);
    }

    /// Forgets Dead/Left nodes gone for longer than `forget_after` (and anything kept
    /// about nodes we do not know).
    fn prune(&mut self, now: Duration) {
        let forget = self.config.forget_after;
        let gone: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| !r.state.is_active() && now.saturating_sub(r.since) >= forget)
            .map(|(name, _)| name.clone())
            .collect();
        let mut shared = self.shared.lock();
        for name in gone {
            if let Some(r) = self.records.remove(&name) {
                match r.state {
                    NodeState::Dead => self.counts.dead -= 1,
                    NodeState::Left => self.counts.left -= 1,
                    _ => {}
                }
            }
            self.loads.remove(&name);
            shared.load_versions.remove(&name);
            shared.left.remove(&name);
        }
        // Reports and leave records about nodes we never saw alive (gossip can carry
        // them): keep the maps bounded by the nodes we know. A live node re-sends its
        // report every `load_refresh_period`.
        let records = &self.records;
        let me = &self.me.name;
        self.loads.retain(|name, _| records.contains_key(name));
        shared
            .load_versions
            .retain(|name, _| name == me || records.contains_key(name));
        shared.left.retain(|name, _| records.contains_key(name));
    }
}

/// Whether a framed foca packet is a `TurnUndead` ("you are dead") message.
fn is_turn_undead(data: &[u8]) -> bool {
    matches!(
        data.get(wire::FRAME_LEN..).map(postcard::take_from_bytes::<Header<NodeId>>),
        Some(Ok((h, _))) if h.message == Message::TurnUndead
    )
}

fn foca_error(e: foca::Error) -> Error {
    match e {
        foca::Error::DataTooBig
        | foca::Error::MalformedPacket
        | foca::Error::Decode(_)
        | foca::Error::CustomBroadcast(_) => Error::Malformed(e.to_string()),
        other => Error::Rejected(other.to_string()),
    }
}
