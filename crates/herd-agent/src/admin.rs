//! `herd init` and `herd token`: cluster creation and join tokens.
//!
//! Both work directly on the state directory, whether or not an agent runs: the agent
//! reads `tokens.toml` afresh for every enrollment, so a token made or revoked here
//! takes effect at once.

use std::net::{IpAddr, SocketAddr};

use herd_pki::{Ca, TokenRecord};
use herd_proto::{Role, Token};

use crate::state::{NODE_FILE_VERSION, NodeFile, StateDir};
use crate::{AgentError, unix_now};

/// Default port of `herd agent`.
pub const DEFAULT_PORT: u16 = 7420;

/// Default lifetime of a join token: 24 hours.
pub const DEFAULT_TOKEN_TTL: u64 = 24 * 3600;

/// Options of `herd init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Cluster name.
    pub cluster: String,
    /// This node's name.
    pub name: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Lifetime of the first token (`None`: never expires).
    pub ttl: Option<u64>,
}

/// Creates a cluster in `dir`; returns the first join token (granting `exec`).
pub fn init(dir: &StateDir, opts: &InitOptions) -> Result<Token, AgentError> {
    if dir.has_cluster() {
        let cluster = dir
            .node_file()
            .map(|n| n.cluster)
            .unwrap_or_else(|_| "?".into());
        return Err(AgentError::AlreadyInitialized {
            dir: dir.root().to_path_buf(),
            cluster,
        });
    }
    herd_pki::check_name(&opts.name)?;
    let (ca, identity) = Ca::create(&opts.cluster, &opts.name, &[Role::Submit, Role::Exec])?;
    dir.create()?;
    let _lock = dir.lock()?;
    dir.save_ca(&ca)?;
    dir.save_identity(&identity)?;
    dir.save_tokens(&Default::default())?;
    let nf = NodeFile {
        version: NODE_FILE_VERSION,
        cluster: opts.cluster.clone(),
        name: opts.name.clone(),
        listen: opts.listen,
        seeds: vec![],
    };
    // node.toml last: its presence is what marks the directory as initialised.
    dir.save_node_file(&nf)?;
    issue_token(dir, &[Role::Exec], opts.ttl)
}

/// Issues a new join token granting `roles`.
pub fn issue_token(dir: &StateDir, roles: &[Role], ttl: Option<u64>) -> Result<Token, AgentError> {
    if !dir.has_cluster() {
        return Err(AgentError::NoCluster {
            dir: dir.root().to_path_buf(),
        });
    }
    if !dir.has_ca() {
        return Err(AgentError::NotCa);
    }
    let nf = dir.node_file()?;
    let ca = dir.ca()?;
    dir.update_tokens(|store| {
        Ok(store.issue(
            ca.cluster(),
            ca.fingerprint(),
            roles,
            unix_now(),
            ttl,
            advertised_addrs(nf.listen),
        ))
    })
}

/// Revokes the token whose id starts with `prefix`.
pub fn revoke_token(dir: &StateDir, prefix: &str) -> Result<String, AgentError> {
    if !dir.has_ca() {
        return Err(AgentError::NotCa);
    }
    dir.update_tokens(|store| store.revoke(prefix).map_err(AgentError::Usage))
}

/// Lists the tokens.
pub fn list_tokens(dir: &StateDir) -> Result<Vec<TokenRecord>, AgentError> {
    if !dir.has_ca() {
        return Err(AgentError::NotCa);
    }
    Ok(dir.tokens()?.tokens)
}

/// The addresses other hosts can reach a node listening on `listen` at: the address
/// itself, or, for an unspecified address, every non-loopback IPv4 address of the
/// host's interfaces followed by loopback (for a cluster on one machine).
pub fn advertised_addrs(listen: SocketAddr) -> Vec<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return vec![listen];
    }
    let mut out: Vec<SocketAddr> = interface_ipv4s()
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, listen.port()))
        .collect();
    out.push(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), listen.port()));
    out.dedup();
    out
}

/// The one address a node advertises in membership.
pub fn advertised_addr(listen: SocketAddr) -> SocketAddr {
    advertised_addrs(listen)[0]
}

fn interface_ipv4s() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return vec![];
    };
    let mut out = Vec::new();
    for a in addrs {
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let ip = IpAddr::V4(sin.ip());
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// Parses a duration such as `30s`, `15m`, `24h`, `7d`, or `never` / `0` (no expiry).
pub fn parse_ttl(s: &str) -> Result<Option<u64>, AgentError> {
    let s = s.trim();
    if s == "never" || s == "0" {
        return Ok(None);
    }
    let bad = || {
        AgentError::Usage(format!(
            "invalid duration {s:?}: use e.g. 90s, 30m, 24h, 7d or never"
        ))
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    Ok(Some(n.checked_mul(mult).ok_or_else(bad)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InitOptions {
        InitOptions {
            cluster: "lab".into(),
            name: "ws".into(),
            listen: "127.0.0.1:7420".parse().unwrap(),
            ttl: Some(3600),
        }
    }

    #[test]
    fn init_twice_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::new(d.path().join("s"));
        let tok = init(&sd, &opts()).unwrap();
        assert_eq!(tok.cluster, "lab");
        assert_eq!(tok.addrs, vec!["127.0.0.1:7420".parse().unwrap()]);
        let err = init(&sd, &opts()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("already holds cluster"), "{err}");
        let id = sd.identity().unwrap();
        assert_eq!(herd_pki::fingerprint(&id.ca_der), tok.ca_fingerprint);
    }

    #[test]
    fn tokens_issue_list_revoke() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::new(d.path());
        let t1 = init(&sd, &opts()).unwrap();
        let t2 = issue_token(&sd, &[Role::Submit, Role::Exec], None).unwrap();
        assert_eq!(t2.expires, None);
        assert_eq!(list_tokens(&sd).unwrap().len(), 2);
        assert_eq!(revoke_token(&sd, &t1.id_hex()).unwrap(), t1.id_hex());
        assert!(list_tokens(&sd).unwrap()[0].revoked);
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("24h").unwrap(), Some(86400));
        assert_eq!(parse_ttl("never").unwrap(), None);
        assert_eq!(parse_ttl("90").unwrap(), Some(90));
        assert!(parse_ttl("1y").is_err());
    }

    #[test]
    fn unspecified_listen_advertises_interfaces() {
        let a = advertised_addrs("0.0.0.0:9".parse().unwrap());
        assert!(a.iter().all(|s| s.port() == 9));
        assert_eq!(a.last().unwrap().ip(), IpAddr::from([127, 0, 0, 1]));
    }
}
