//! `herd init`, `herd token` and `herd remove`: cluster creation, join tokens and the
//! registry of enrolled names.
//!
//! They work directly on the state directory, whether or not an agent runs: the agent
//! reads `tokens.toml` and `nodes.toml` afresh for every enrollment, so a token made or
//! revoked, or a name freed, here takes effect at once.
//!
//! A token made by `herd token` enrolls one node unless `--uses` says otherwise; the
//! first token, printed by `herd init`, enrolls any number until it expires (it is how
//! a whole cluster is usually brought up) unless `herd init --uses` limits it.

use std::net::{IpAddr, SocketAddr};

use herd_pki::{Ca, NodeRecord, TokenRecord};
use herd_proto::{Role, Token};

use crate::state::{NODE_FILE_VERSION, NodeFile, StateDir};
use crate::{AgentError, unix_now};

/// Default port of `herd agent`.
pub const DEFAULT_PORT: u16 = 7420;

/// Default lifetime of a join token: 24 hours.
pub const DEFAULT_TOKEN_TTL: u64 = 24 * 3600;

/// How many nodes a `herd token` token enrolls unless `--uses` says otherwise.
pub const DEFAULT_TOKEN_USES: u64 = 1;

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

/// Creates a cluster in `dir`; returns the first join token (granting `exec`, for any
/// number of nodes until it expires).
pub fn init(dir: &StateDir, opts: &InitOptions) -> Result<Token, AgentError> {
    init_with_uses(dir, opts, None)
}

/// [`init`], the first token enrolling at most `max_uses` nodes (`None`: any number).
pub fn init_with_uses(
    dir: &StateDir,
    opts: &InitOptions,
    max_uses: Option<u64>,
) -> Result<Token, AgentError> {
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
    // The CA's own node holds its name like any other.
    let mut nodes = herd_pki::NodeRegistry::default();
    nodes.register(NodeRecord {
        name: opts.name.clone(),
        key: herd_pki::key_fingerprint_of_cert(&identity.cert_der)?,
        roles: vec![Role::Submit, Role::Exec],
        enrolled: unix_now(),
        token: None,
    });
    dir.save_nodes(&nodes)?;
    let nf = NodeFile {
        version: NODE_FILE_VERSION,
        cluster: opts.cluster.clone(),
        name: opts.name.clone(),
        listen: opts.listen,
        seeds: vec![],
    };
    // node.toml last: its presence is what marks the directory as initialised.
    dir.save_node_file(&nf)?;
    issue_token_with_uses(dir, &[Role::Exec], opts.ttl, max_uses)
}

/// Issues a new join token granting `roles`, for one node
/// ([`DEFAULT_TOKEN_USES`]).
pub fn issue_token(dir: &StateDir, roles: &[Role], ttl: Option<u64>) -> Result<Token, AgentError> {
    issue_token_with_uses(dir, roles, ttl, Some(DEFAULT_TOKEN_USES))
}

/// Issues a new join token granting `roles`, valid for `ttl` seconds (`None`: for
/// ever) and `max_uses` enrollments (`None`: any number).
pub fn issue_token_with_uses(
    dir: &StateDir,
    roles: &[Role],
    ttl: Option<u64>,
    max_uses: Option<u64>,
) -> Result<Token, AgentError> {
    if max_uses == Some(0) {
        return Err(AgentError::Usage(
            "a token must allow at least one use".into(),
        ));
    }
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
            max_uses,
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

/// Frees the name `name` in the registry of enrolled nodes (`herd remove`), so that
/// another node may enroll under it. Returns the record removed. The removed node's
/// certificate stays valid until it expires (there is no revocation yet): remove a
/// node only once it is gone for good.
pub fn remove_node(dir: &StateDir, name: &str) -> Result<NodeRecord, AgentError> {
    if !dir.has_ca() {
        return Err(AgentError::NotCa);
    }
    let me = dir.node_file()?.name;
    if name == me {
        return Err(AgentError::Usage(format!(
            "{name} is this node, the one holding the cluster CA: it cannot be removed"
        )));
    }
    dir.update_nodes(|nodes| {
        nodes.remove(name).ok_or_else(|| {
            AgentError::Usage(format!(
                "no node named {name:?} is enrolled (see `herd remove --list`)"
            ))
        })
    })
}

/// Lists the enrolled nodes.
pub fn list_nodes(dir: &StateDir) -> Result<Vec<NodeRecord>, AgentError> {
    if !dir.has_ca() {
        return Err(AgentError::NotCa);
    }
    Ok(dir.nodes()?.nodes)
}

/// Parses `--uses`: a positive count, or `unlimited` (`None`).
pub fn parse_uses(s: &str) -> Result<Option<u64>, AgentError> {
    let s = s.trim();
    if s == "unlimited" {
        return Ok(None);
    }
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(AgentError::Usage(format!(
            "invalid --uses {s:?}: use a positive number or unlimited"
        ))),
    }
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
        assert_eq!(list_tokens(&sd).unwrap()[0].max_uses, None);
        assert_eq!(list_tokens(&sd).unwrap()[1].max_uses, Some(1));
        let t3 = issue_token_with_uses(&sd, &[Role::Exec], None, Some(3)).unwrap();
        assert_eq!(list_tokens(&sd).unwrap()[2].id, t3.id_hex());
        assert_eq!(list_tokens(&sd).unwrap()[2].max_uses, Some(3));
        assert!(issue_token_with_uses(&sd, &[Role::Exec], None, Some(0)).is_err());
    }

    #[test]
    fn the_ca_node_is_registered_and_cannot_be_removed() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::new(d.path());
        init(&sd, &opts()).unwrap();
        let nodes = list_nodes(&sd).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, "ws");
        let key = herd_pki::key_fingerprint_of_cert(&sd.identity().unwrap().cert_der).unwrap();
        assert_eq!(nodes[0].key, key);
        let err = remove_node(&sd, "ws").unwrap_err().to_string();
        assert!(err.contains("cannot be removed"), "{err}");
        let err = remove_node(&sd, "h7").unwrap_err().to_string();
        assert!(err.contains("no node named"), "{err}");
    }

    #[test]
    fn uses_parsing() {
        assert_eq!(parse_uses("1").unwrap(), Some(1));
        assert_eq!(parse_uses("unlimited").unwrap(), None);
        assert!(parse_uses("0").is_err());
        assert!(parse_uses("-1").is_err());
        assert!(parse_uses("lots").is_err());
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
