//! Membership datagrams from peers (any node with a cluster certificate can send any
//! bytes): `herd_membership::Membership::handle_data(now, bytes)` on a victim node, with
//! `peek_sender` first as the agent does. So that valid packets reach deep states, the
//! victim lives in a small simulated cluster (two honest peers, real `Membership`s,
//! driven through `handle_timeout` with virtual time): the input is a script of steps
//! that deliver the honest peers' real packets (as they are, bit-flipped, truncated or
//! with bytes spliced in), raw datagrams, time passing, load reports, joins and leaves.
//!
//! Properties: never panics; a timer storm (a node whose timers are due again and again
//! without time passing) is a failure; memory stays bounded (libFuzzer's RSS limit).
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Unstructured;
use herd_membership::{Config, LoadReport, Membership, NodeId};
use libfuzzer_sys::fuzz_target;

struct Net {
    nodes: Vec<Membership>,
    addrs: Vec<SocketAddr>,
    queue: std::collections::VecDeque<(SocketAddr, Vec<u8>)>,
    now: Duration,
}

impl Net {
    fn new() -> Net {
        let now = Duration::from_secs(1000);
        let addrs: Vec<SocketAddr> = ["10.0.0.1:7420", "10.0.0.2:7420", "10.0.0.3:7420"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let names = ["victim", "a", "b"];
        let nodes = names
            .iter()
            .zip(&addrs)
            .enumerate()
            .map(|(i, (n, a))| Membership::new(NodeId::new(*n, *a, 1), Config::lan(), i as u64 + 7, now))
            .collect();
        let mut net = Net {
            nodes,
            addrs,
            queue: Default::default(),
            now,
        };
        let (v, a) = (net.addrs[0], net.addrs[1]);
        net.nodes[1].join(now, &[v]);
        net.nodes[2].join(now, &[a]);
        net.drain();
        net
    }

    fn drain(&mut self) {
        for n in &mut self.nodes {
            while let Some((to, b)) = n.poll_transmit() {
                if self.queue.len() >= 512 {
                    self.queue.pop_front();
                }
                self.queue.push_back((to, b.to_vec()));
            }
            while n.poll_event().is_some() {}
        }
    }

    fn deliver(&mut self, to: SocketAddr, bytes: &[u8]) {
        let Some(i) = self.addrs.iter().position(|a| *a == to) else {
            return;
        };
        // The agent checks the claimed sender against the certificate first; a hostile
        // peer puts its own name there, so every datagram that names a sender passes.
        if i == 0 && Membership::peek_sender(bytes).is_err() {
            let _ = self.nodes[0].handle_data(self.now, bytes);
            return;
        }
        let _ = self.nodes[i].handle_data(self.now, bytes);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        for n in &mut self.nodes {
            let mut rounds = 0;
            while n.poll_timeout().is_some_and(|t| t <= self.now) {
                n.handle_timeout(self.now);
                rounds += 1;
                assert!(rounds < 100_000, "timer storm: due again and again at {:?}", self.now);
            }
        }
    }
}

fn step(net: &mut Net, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    match u.int_in_range(0u8..=9)? {
        0 | 1 => {
            if let Some((to, b)) = net.queue.pop_front() {
                net.deliver(to, &b);
            }
        }
        2 => {
            // An honest packet, altered, to the victim.
            if let Some((_, mut b)) = net.queue.pop_front() {
                if !b.is_empty() {
                    match u.int_in_range(0u8..=3)? {
                        0 => {
                            let i = u.choose_index(b.len())?;
                            b[i] ^= u.arbitrary::<u8>()?.max(1);
                        }
                        1 => b.truncate(u.choose_index(b.len())?),
                        2 => {
                            let i = u.choose_index(b.len())?;
                            let ins: Vec<u8> = u.arbitrary::<Vec<u8>>()?.into_iter().take(32).collect();
                            b.splice(i..i, ins);
                        }
                        _ => {
                            let i = u.choose_index(b.len())?;
                            let v: u8 = u.arbitrary()?;
                            b[i] = v;
                        }
                    }
                }
                let v = net.addrs[0];
                net.deliver(v, &b);
            }
        }
        3 | 4 => {
            let n = u.int_in_range(0usize..=1200)?.min(u.len());
            let raw = u.bytes(n)?.to_vec();
            let v = net.addrs[0];
            net.deliver(v, &raw);
        }
        5 | 6 => {
            let ms = u.int_in_range(0u64..=5000)?;
            net.advance(Duration::from_millis(ms));
        }
        7 => {
            let i = u.int_in_range(1usize..=2)?;
            let report = LoadReport {
                seq: 0,
                roles: vec!["exec".into()],
                cpus: u.arbitrary()?,
                speed: u.arbitrary()?,
                load: u.arbitrary()?,
                owner_load: u.arbitrary()?,
                mem_total: u.arbitrary()?,
                mem_free: u.arbitrary()?,
                tasks: u.arbitrary()?,
                draining: u.arbitrary()?,
                drained: u.arbitrary()?,
                cache_hits: u.arbitrary()?,
                cache_misses: u.arbitrary()?,
                revocations: u.arbitrary()?,
                ca: u.arbitrary()?,
            };
            let now = net.now;
            net.nodes[i].set_load(now, report);
        }
        8 => {
            let i = u.int_in_range(1usize..=2)?;
            let now = net.now;
            net.nodes[i].leave(now);
        }
        _ => {
            let (now, a) = (net.now, net.addrs[1]);
            net.nodes[0].join(now, &[a]);
        }
    }
    net.drain();
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut net = Net::new();
    let mut u = Unstructured::new(data);
    for _ in 0..64 {
        if u.is_empty() || step(&mut net, &mut u).is_err() {
            break;
        }
    }
    // What the agent reads after each input.
    let _ = net.nodes[0].nodes();
    let _ = net.nodes[0].counts();
});
