//! The [`Membership`] state machine: foca plus herd's bookkeeping around it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use foca::{Foca, Header, Member, Message, Notification, OwnedNotification, PostcardCodec};
use foca::{Runtime, State, Timer};
use foca_rand::SeedableRng;
use foca_rand::rngs::Xoshiro256PlusPlus;

use crate::gossip::{Gossip, SharedState};
use crate::wire::{self, Error, Item, LeftNotice, TAG_LEFT, TAG_SWIM};
use crate::{Config, Event, LoadReport, NodeId, NodeState, NodeView};

type Swim = Foca<NodeId, PostcardCodec, Xoshiro256PlusPlus, Gossip>;

/// Most events / transmits kept when the driver does not drain them.
const MAX_QUEUE: usize = 65_536;
/// Most timers fired by one `handle_timeout` call (they are all finite anyway).
const MAX_TIMERS_PER_CALL: usize = 100_000;
/// How often Dead/Left nodes past `forget_after` are pruned, at most.
const PRUNE_PERIOD: Duration = Duration::from_secs(60);

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
}

/// Another node as we remember it.
#[derive(Clone, Debug)]
struct Record {
    id: NodeId,
    state: NodeState,
    since: Duration,
}

/// Collects what foca asks for during one call.
#[derive(Default)]
struct Outbox {
    sends: Vec<(SocketAddr, Bytes)>,
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
                let result = if announce_to_seed {
                    let mut header = header;
                    header.dst = self.me.clone();
                    let mut buf = wire::encode(&header);
                    buf.extend_from_slice(rest);
                    self.foca.handle_data(&buf, &mut self.out)
                } else {
                    self.foca.handle_data(body, &mut self.out)
                };
                self.flush(now);
                result.map_err(foca_error)
            }
            _ => {
                let notice: LeftNotice = wire::decode_exact(body)?;
                wire::check_name(&notice.id)?;
                if !self.left && notice.id.name != self.me.name {
                    self.on_left_notice(now, notice.id);
                    self.flush(now);
                }
                Ok(())
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
            if self.foca.handle_timer(timer, &mut self.out).is_err() {
                self.stats.timer_errors += 1;
            }
            self.flush(now);
            if is_probe {
                // Foca raises suspicion (and sees refutations) without notifying: pick
                // those up once per probe period.
                self.reconcile(now);
            }
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
            for (addr, data) in out.sends {
                self.push_transmit(addr, data);
            }
            for (after, timer) in out.timers {
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
                        self.rename(now, new, !followed);
                    }
                    OwnedNotification::Rejoin(new) => self.on_rejoin(now, new),
                    OwnedNotification::Defunct => {
                        if !self.left {
                            self.self_state = NodeState::Dead;
                            self.self_since = now;
                        }
                    }
                    _ => {}
                }
            }
        }
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
        let previous = self.records.get(&id.name).map(|r| (r.id == *id, r.state));
        match previous {
            Some((true, old)) if old == state => return,
            Some((_, old)) => *self.count_mut(old) -= 1,
            None => {}
        }
        *self.count_mut(state) += 1;
        self.records.insert(
            id.name.clone(),
            Record {
                id: id.clone(),
                state,
                since: now,
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

    /// A newer incarnation replaced the one we knew, with the same liveness.
    fn rename(&mut self, now: Duration, new: NodeId, announce: bool) {
        if new.name == self.me.name {
            return;
        }
        let state = match self.records.get(&new.name) {
            Some(r) if r.state.is_active() => NodeState::Alive,
            Some(_) => self.down_state(&new),
            None => return,
        };
        if announce || !state.is_active() {
            self.set_node(now, &new, state);
        } else if let Some(r) = self.records.get_mut(&new.name) {
            r.id = new;
        }
    }

    fn on_rejoin(&mut self, now: Duration, new: NodeId) {
        self.me = new.clone();
        self.self_state = NodeState::Alive;
        self.self_since = now;
        self.stats.rejoins += 1;
        self.push_event(Event::Rejoined(new));
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

    /// A broadcast item the handler accepted as new.
    fn on_item(&mut self, now: Duration, item: Item) {
        match item {
            Item::Load { name, report, .. } => {
                if name != self.me.name {
                    self.loads.insert(name.clone(), report);
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
        {
            let mut shared = self.shared.lock();
            let known = shared.left.get(&id.name).copied();
            if known.is_none_or(|b| b < id.bump) {
                shared.left.insert(id.name.clone(), id.bump);
            }
        }
        if let Some(rec) = self.records.get(&id.name)
            && rec.id.supersedes(&id)
        {
            return; // about an older incarnation than the one we know
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
        let mut changes = Vec::new();
        {
            let shared = self.shared.lock();
            for m in self.foca.iter_membership_state() {
                let id = m.id();
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

    /// Forgets Dead/Left nodes gone for longer than `forget_after`.
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
    }
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
