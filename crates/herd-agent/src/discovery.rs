//! LAN discovery over mDNS (DNS-SD service `_herd._udp.local.`).
//!
//! Every agent announces itself with TXT records naming its cluster and the first
//! 16 hex digits of its CA fingerprint, and browses for the same service. A resolved
//! instance of the *same* CA is handed to membership as a seed address; nothing is
//! trusted because of mDNS: the QUIC handshake with mutual TLS still decides who is a
//! member. Discovery only saves typing `--peer`.
//!
//! When the agent listens on one address, mDNS runs only on the interface that holds
//! it; on `0.0.0.0` it runs on every IPv4 interface. `herd agent --no-mdns` turns it
//! off (static `--peer` addresses and the token's addresses still work).

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;

use crate::AgentError;

/// The DNS-SD service type herd announces.
pub const SERVICE: &str = "_herd._udp.local.";

/// A running mDNS announcer and browser; stops when dropped.
pub struct Discovery {
    daemon: ServiceDaemon,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Starts announcing `name` at `advertise` and browsing for peers of the same CA;
/// discovered addresses arrive on the returned channel.
pub fn start(
    name: &str,
    cluster: &str,
    ca_fingerprint: &[u8; 32],
    listen: SocketAddr,
    advertise: SocketAddr,
) -> Result<(Discovery, mpsc::Receiver<SocketAddr>), AgentError> {
    let err = |e: mdns_sd::Error| AgentError::Net(format!("mdns: {e}"));
    let daemon = ServiceDaemon::new().map_err(err)?;
    daemon.disable_interface(IfKind::IPv6).map_err(err)?;
    if !listen.ip().is_unspecified() {
        daemon.disable_interface(IfKind::All).map_err(err)?;
        daemon
            .enable_interface(IfKind::Addr(listen.ip()))
            .map_err(err)?;
    }
    let ca = hex::encode(&ca_fingerprint[..8]);
    let props = [("cluster", cluster), ("ca", ca.as_str()), ("node", name)];
    let info = ServiceInfo::new(
        SERVICE,
        name,
        &format!("{name}.herd.local."),
        advertise.ip(),
        advertise.port(),
        &props[..],
    )
    .map_err(err)?;
    daemon.register(info).map_err(err)?;
    let events = daemon.browse(SERVICE).map_err(err)?;
    let (tx, rx) = mpsc::channel(64);
    let me = name.to_string();
    std::thread::Builder::new()
        .name("herd-mdns".into())
        .spawn(move || {
            while let Ok(ev) = events.recv() {
                let ServiceEvent::ServiceResolved(svc) = ev else {
                    continue;
                };
                let same_ca = svc.get_property_val_str("ca") == Some(ca.as_str());
                let other = svc.get_property_val_str("node") != Some(me.as_str());
                if !(same_ca && other) {
                    continue;
                }
                for ip in svc.get_addresses_v4() {
                    let addr = SocketAddr::new(IpAddr::V4(ip), svc.get_port());
                    if tx.blocking_send(addr).is_err() {
                        return;
                    }
                }
            }
        })
        .map_err(|e| AgentError::Net(format!("mdns thread: {e}")))?;
    Ok((Discovery { daemon }, rx))
}
