//! Protocol timing and sizing: [`Config`], with the reasoning behind the defaults.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use crate::wire::FRAME_LEN;

/// Smallest packet size we accept in a configuration (room for a header and a few updates).
const MIN_PACKET_SIZE: usize = 256;

/// Timing and sizing of the membership protocol. All nodes of a cluster should use the
/// same values (they are not negotiated).
///
/// Start from [`Config::lan`] (clusters up to ~50 nodes) or [`Config::for_cluster_size`].
///
/// # Why the defaults meet "dead within 10 s, alive again within 10 s" (≤ 50 nodes)
///
/// **Crash detection** of a SIGKILLed or cut-off node X takes four steps:
///
/// 1. *Someone probes X.* Every node probes one member per `probe_period` (700 ms),
///    walking its member list in a freshly shuffled order, so each of the other n−1
///    nodes probes X once every n−1 periods at an independent random offset. The first
///    probe of X by anyone comes after about one period on average, and after more than
///    k periods with probability ≈ e⁻ᵏ (n = 50; for small n the round robin itself
///    bounds it). A 1 s period would leave e⁻⁵·⁵ ≈ 0.4 % of crashes over the budget;
///    700 ms makes that e⁻⁸ ≈ 0.03 %, for about 1.4 pings per node per second.
/// 2. *The probe fails.* No ack within `probe_rtt` (250 ms, far above a LAN round trip
///    even through QUIC), then `num_indirect_probes` (3) other members ping X for us; at
///    the next period tick X becomes Suspect.
/// 3. *Suspicion times out.* X cannot refute (it is dead), so after
///    `suspect_to_down_after` (3 s) the prober declares it Down. 3 s is many gossip
///    rounds: a live but unlucky X has ample time to learn of the suspicion and refute.
/// 4. *Dissemination.* The Down update is gossiped every `gossip_period` (200 ms) to
///    `gossip_fanout` (3) members and piggybacked on every probe; an epidemic with
///    fanout 3 reaches 50 nodes in ≈ log₄ 50 ≈ 3 rounds, well under 1 s. Each update is
///    sent `max_transmissions` (12) times by every node that learns it, so a given node
///    misses it with probability ≈ e⁻¹²; a node that saw the suspicion but missed the
///    verdict resolves it itself one period after the deadline (see the crate docs).
///
/// Typical total: 0.7 + 0.7 + 3 + 0.5 ≈ 5 s. Measured in `herd-sim` with 50 nodes over
/// 20 seeds: Dead everywhere after 4.2–6.0 s (SIGKILL) and 4.1–7.0 s (cut off).
///
/// **Alive again.** A restarted node (fresh, larger bump) announces to its seeds, gets
/// a member list back in one round trip and a full one by sync, and its Alive update
/// replaces the dead incarnation everywhere by gossip: measured 0.4–1.0 s. A node that
/// was cut off learns it was declared dead when it meets the others again (they
/// announce to members they believe dead every `announce_down_period`, 2.5 s, and it
/// announces to its seeds every `seed_announce_period`, 2 s, while it sees nobody
/// alive), renews its identity (`bump + 1`), forgets its stale view and rejoins:
/// measured 0.4–0.9 s after the partition heals.
///
/// **False positives** need a failed direct probe *and* three failed indirect probes *and*
/// a refutation that does not arrive within 3 s. Measured with 50 nodes over one
/// simulated hour: none at 5 % packet loss; 0.04 per node-hour at 15 %.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// How often each node probes one member (the SWIM protocol period).
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to probe indirectly.
    /// Must be below `probe_period` (ideally under half of it).
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly when a direct probe times out.
    pub num_indirect_probes: usize,
    /// How long a Suspect member has to refute the suspicion before it is declared dead.
    pub suspect_to_down_after: Duration,
    /// How many times each membership update (and each load report) is retransmitted.
    pub max_transmissions: u8,
    /// How often pending updates are pushed to random members (on top of piggybacking).
    pub gossip_period: Duration,
    /// How many members receive each periodic gossip.
    pub gossip_fanout: usize,
    /// How often to ask a random live member for its member list (speeds up discovery).
    pub announce_period: Duration,
    /// How many live members each periodic announce goes to.
    pub announce_fanout: usize,
    /// How often to announce to members believed dead (heals partitions).
    pub announce_down_period: Duration,
    /// How many dead members each of those announces goes to.
    pub announce_down_fanout: usize,
    /// Tell a node we consider dead that we do (so it renews its identity and rejoins).
    pub notify_down_members: bool,
    /// How often to re-announce to the seeds (and a few dead members) while we know no
    /// live member at all.
    pub seed_announce_period: Duration,
    /// How often each node fetches the whole member list of one random live member
    /// (anti-entropy: repairs whatever gossip failed to deliver). A node also does this
    /// right after joining, which is how it learns the members that were already there.
    pub sync_period: Duration,
    /// How often our own load report is re-disseminated (with a new sequence number) even
    /// if [`Membership::set_load`](crate::Membership::set_load) was not called again, so
    /// that nodes joining later learn it.
    pub load_refresh_period: Duration,
    /// How long a Dead or Left node stays in [`Membership::nodes`](crate::Membership::nodes)
    /// (and in foca's memory) before it is forgotten.
    pub forget_after: Duration,
    /// Largest datagram produced or accepted, herd framing included.
    pub max_packet_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}

impl Config {
    /// Defaults for a LAN herd cluster of up to ~50 nodes: a SIGKILLed or partitioned node
    /// is Dead at every node within 10 s, a restarted or healed node is Alive again
    /// within 10 s. The reasoning is on [`Config`].
    pub fn lan() -> Self {
        Self {
            probe_period: Duration::from_millis(700),
            probe_rtt: Duration::from_millis(250),
            num_indirect_probes: 3,
            suspect_to_down_after: Duration::from_secs(3),
            max_transmissions: 12,
            gossip_period: Duration::from_millis(200),
            gossip_fanout: 3,
            announce_period: Duration::from_secs(5),
            announce_fanout: 1,
            announce_down_period: Duration::from_millis(2500),
            announce_down_fanout: 2,
            notify_down_members: true,
            seed_announce_period: Duration::from_secs(2),
            sync_period: Duration::from_secs(30),
            load_refresh_period: Duration::from_secs(10),
            forget_after: Duration::from_secs(3600),
            max_packet_size: 1100,
        }
    }

    /// [`Config::lan`] scaled for a cluster of `n` nodes (the simulator runs 1,000).
    ///
    /// Up to 50 nodes this is exactly `lan()`. Beyond, two things grow with log n, as in
    /// SWIM and memberlist: updates must be retransmitted more often to reach everybody
    /// (`max_transmissions` = 4·log₁₀(n+1), rounded, at least 12: 12 at 1,000 nodes), and
    /// a suspected node needs longer for the suspicion to reach it and its refutation to
    /// come back (`suspect_to_down_after` = 3 s · (1 + log₁₀(n/50)), e.g. 6.9 s at 1,000
    /// nodes). Detection time therefore grows slowly with n, while the false-positive
    /// rate stays flat.
    pub fn for_cluster_size(n: u32) -> Self {
        let mut c = Self::lan();
        if n > 50 {
            let n = f64::from(n);
            let tx = (4.0 * (n + 1.0).log10()).round();
            c.max_transmissions = tx.clamp(12.0, 255.0) as u8;
            let factor = 1.0 + (n / 50.0).log10();
            c.suspect_to_down_after = Duration::from_secs_f64(3.0 * factor);
        }
        c
    }

    /// Clamps every field into the range foca accepts, so that [`Membership::new`]
    /// (crate::Membership::new) never panics on a bad configuration.
    pub(crate) fn sanitized(mut self) -> Self {
        let ms = Duration::from_millis;
        self.probe_period = self.probe_period.max(ms(2));
        self.probe_rtt = self.probe_rtt.clamp(ms(1), self.probe_period - ms(1));
        self.num_indirect_probes = self.num_indirect_probes.max(1);
        self.suspect_to_down_after = self.suspect_to_down_after.max(ms(1));
        self.max_transmissions = self.max_transmissions.max(1);
        self.gossip_period = self.gossip_period.max(ms(1));
        self.gossip_fanout = self.gossip_fanout.max(1);
        self.announce_period = self.announce_period.max(ms(1));
        self.announce_fanout = self.announce_fanout.max(1);
        self.announce_down_period = self.announce_down_period.max(ms(1));
        self.announce_down_fanout = self.announce_down_fanout.max(1);
        self.seed_announce_period = self.seed_announce_period.max(ms(1));
        self.sync_period = self.sync_period.max(self.probe_period);
        self.load_refresh_period = self.load_refresh_period.max(ms(1));
        self.forget_after = self.forget_after.max(ms(1));
        self.max_packet_size = self
            .max_packet_size
            .clamp(MIN_PACKET_SIZE, u16::MAX as usize);
        self
    }

    /// The foca configuration this maps to (call on a sanitized config).
    pub(crate) fn to_foca(&self) -> foca::Config {
        let nz = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nz(self.num_indirect_probes),
            max_transmissions: NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: Some(self.forget_after),
            max_packet_size: nz(self.max_packet_size - FRAME_LEN),
            notify_down_members: self.notify_down_members,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: self.announce_period,
                num_members: nz(self.announce_fanout),
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_down_period,
                num_members: nz(self.announce_down_fanout),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_period,
                num_members: nz(self.gossip_fanout),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_is_monotonic_and_lan_below_50() {
        assert_eq!(Config::for_cluster_size(10), Config::lan());
        assert_eq!(Config::for_cluster_size(50), Config::lan());
        let big = Config::for_cluster_size(1000);
        assert_eq!(big.max_transmissions, 12);
        let s = big.suspect_to_down_after.as_secs_f64();
        assert!((6.8..7.0).contains(&s), "{s}");
        assert!(Config::for_cluster_size(200).suspect_to_down_after < big.suspect_to_down_after);
    }

    #[test]
    fn sanitize_repairs_nonsense() {
        let mut c = Config::lan();
        c.probe_period = Duration::ZERO;
        c.probe_rtt = Duration::from_secs(9);
        c.max_packet_size = 3;
        c.gossip_fanout = 0;
        let c = c.sanitized();
        assert!(c.probe_rtt < c.probe_period);
        assert!(c.max_packet_size >= MIN_PACKET_SIZE);
        assert_eq!(c.gossip_fanout, 1);
        let _ = c.to_foca();
    }
}
