//! `herd init`, `herd token`, `herd revoke` and `herd remove`: cluster creation, join
//! tokens, revocation and the registry of enrolled names.
//!
//! They work on the state directory: the agent reads `tokens.toml` and `nodes.toml`
//! afresh for every enrollment, so a token made or revoked, or a name freed, here takes
//! effect at once. [`revoke_node`] also signs a new revocation list (`revoked.list`);
//! the CLI runs it inside the running agent when there is one (`LocalRequest::Revoke`),
//! which then spreads the list, and directly otherwise (the agent spreads it when it
//! starts).
//!
//! **Revoking and removing.** `herd revoke NODE` revokes the node's key: every node
//! refuses it once the list reaches it, and the CA neither renews nor enrolls it again.
//! The name stays taken (its record in `nodes.toml` says `revoked`), so no other key
//! can take it unnoticed. `herd remove NODE` frees the name for another key, and
//! revokes the old key first if it was not revoked: a name freed while its old
//! certificate still worked would let two keys be that node at once.
//!
//! A token made by `herd token` enrolls one node unless `--uses` says otherwise; the
//! first token, printed by `herd init`, enrolls any number until it expires (it is how
//! a whole cluster is usually brought up) unless `herd init --uses` limits it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use herd_pki::{Ca, NodeRecord, TokenRecord, Validity};
use herd_proto::{RevokeReport, Role, SignedRevocations, Token};

use crate::state::{CA_FILE_VERSION, CaFile, NODE_FILE_VERSION, NodeFile, StateDir};
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
    init_with(dir, opts, max_uses, herd_pki::DEFAULT_CERT_LIFETIME)
}

/// [`init_with_uses`], the cluster's node certificates living `cert_lifetime` (kept in
/// `ca.toml`: the CA signs every enrollment and renewal with it). Only tests choose
/// another lifetime than 30 days (`HERD_CERT_LIFETIME`).
pub fn init_with(
    dir: &StateDir,
    opts: &InitOptions,
    max_uses: Option<u64>,
    cert_lifetime: Duration,
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
    let validity = Validity::new(unix_now(), cert_lifetime);
    let (ca, identity) = Ca::create(
        &opts.cluster,
        &opts.name,
        &[Role::Submit, Role::Exec],
        validity,
    )?;
    dir.create()?;
    let _lock = dir.lock()?;
    dir.save_ca(&ca)?;
    dir.save_ca_file(&CaFile {
        version: CA_FILE_VERSION,
        cert_lifetime_secs: validity.lifetime.as_secs(),
    })?;
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
        revoked: None,
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

/// What [`revoke_node`] did.
#[derive(Clone, Debug)]
pub struct Revocation {
    /// What to tell the user.
    pub report: RevokeReport,
    /// The new list it signed and wrote, if the key was not revoked before.
    pub signed: Option<SignedRevocations>,
}

/// Revokes the key of the enrolled node `name` (`herd revoke`): signs a new revocation
/// list holding it, writes it to `revoked.list`, and marks the node's record revoked
/// (the name stays taken). With `remove` (`herd remove`) the record is then removed
/// and the name free for another key. Revoking a revoked key again signs nothing.
/// Only on the CA node; the CA node's own key cannot be revoked.
pub fn revoke_node(dir: &StateDir, name: &str, remove: bool) -> Result<Revocation, AgentError> {
    if !dir.has_ca() {
        return Err(AgentError::NotCa);
    }
    let me = dir.node_file()?.name;
    if name == me {
        return Err(AgentError::Usage(format!(
            "{name} is this node, the one holding the cluster CA: it cannot be removed or revoked"
        )));
    }
    let ca = dir.ca()?;
    let now = unix_now();
    dir.update_records(|| {
        let mut nodes = dir.nodes()?;
        let rec = nodes.get(name).cloned().ok_or_else(|| {
            AgentError::Usage(format!(
                "no node named {name:?} is enrolled (see `herd remove --list`)"
            ))
        })?;
        let current = match dir.revocations()? {
            Some(signed) => Some(
                herd_pki::verify_revocations(ca.cert_der(), &signed).map_err(|e| {
                    AgentError::Corrupt {
                        path: dir.root().join("revoked.list"),
                        why: e.to_string(),
                    }
                })?,
            ),
            None => None,
        };
        let next = herd_pki::next_list(ca.cluster(), current.as_ref(), name, &rec.key, now);
        // The list first: a crash before the registry is written leaves the key
        // revoked, and `herd revoke` again marks the record.
        let signed = match &next {
            Some(list) => {
                let signed = herd_pki::sign_revocations(&ca, list)?;
                dir.save_revocations(&signed)?;
                Some(signed)
            }
            None => None,
        };
        let version = next.as_ref().or(current.as_ref()).map_or(0, |l| l.version);
        let mut changed = nodes.mark_revoked(name, now);
        if remove {
            nodes.remove(name);
            changed = true;
        }
        if changed {
            dir.save_nodes(&nodes)?;
        }
        Ok(Revocation {
            report: RevokeReport {
                name: name.to_string(),
                key: rec.key,
                version,
                already: next.is_none(),
                removed: remove,
            },
            signed,
        })
    })
}

/// Checks, without changing anything, that `name` may be revoked or removed here:
/// this is the CA node, `name` is enrolled and is not this node. The CLI asks this
/// before it asks the agent, so that a mistake is told as one (exit 2).
pub fn check_revocable(dir: &StateDir, name: &str) -> Result<(), AgentError> {
    if !dir.has_ca() {
        return Err(AgentError::NotCa);
    }
    if name == dir.node_file()?.name {
        return Err(AgentError::Usage(format!(
            "{name} is this node, the one holding the cluster CA: it cannot be removed or revoked"
        )));
    }
    if dir.nodes()?.get(name).is_none() {
        return Err(AgentError::Usage(format!(
            "no node named {name:?} is enrolled (see `herd remove --list`)"
        )));
    }
    Ok(())
}

/// The lifetime of node certificates in a cluster made without `HERD_CERT_LIFETIME`.
pub fn default_cert_lifetime() -> Duration {
    herd_pki::DEFAULT_CERT_LIFETIME
}

/// Parses `HERD_CERT_LIFETIME` (a test knob): a duration as for `--ttl` (`20s`, `5m`,
/// `30d`), from 10 s to 10 years.
pub fn parse_cert_lifetime(s: &str) -> Result<Duration, AgentError> {
    let bad = || {
        AgentError::Usage(format!(
            "invalid HERD_CERT_LIFETIME {s:?}: use a duration from 10s to 3650d, e.g. 30s or 30d"
        ))
    };
    let secs = parse_ttl(s).map_err(|_| bad())?.ok_or_else(bad)?;
    let d = Duration::from_secs(secs);
    if d < herd_pki::MIN_CERT_LIFETIME || d > herd_pki::MAX_CERT_LIFETIME {
        return Err(bad());
    }
    Ok(d)
}

/// Frees the name `name` in the registry of enrolled nodes (`herd remove`), so that
/// another node may enroll under it, revoking its key first if it was not revoked
/// (see the module docs). Returns what was done.
pub fn remove_node(dir: &StateDir, name: &str) -> Result<Revocation, AgentError> {
    revoke_node(dir, name, true)
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
        let err = revoke_node(&sd, "ws", false).unwrap_err().to_string();
        assert!(err.contains("cannot be removed or revoked"), "{err}");
        let err = remove_node(&sd, "h7").unwrap_err().to_string();
        assert!(err.contains("no node named"), "{err}");
        assert_eq!(sd.ca_file().unwrap(), CaFile::default());
    }

    #[test]
    fn revoking_signs_a_new_list_keeps_the_name_and_removing_frees_it() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::new(d.path());
        init(&sd, &opts()).unwrap();
        let ca = sd.ca().unwrap();
        let record = |name: &str, key: &str| NodeRecord {
            name: name.into(),
            key: key.into(),
            roles: vec![Role::Exec],
            enrolled: 1,
            token: None,
            revoked: None,
        };
        sd.update_nodes(|n| {
            n.register(record("h1", "k1"));
            n.register(record("h2", "k2"));
            Ok(())
        })
        .unwrap();
        let version = |sd: &StateDir| {
            sd.revocations().unwrap().map(|s| {
                herd_pki::verify_revocations(ca.cert_der(), &s)
                    .unwrap()
                    .version
            })
        };
        assert_eq!(version(&sd), None);

        // Revoked: a list of version 1 signed by the CA, the name still taken.
        let r = revoke_node(&sd, "h1", false).unwrap();
        assert_eq!((r.report.version, r.report.already), (1, false));
        assert_eq!(r.report.key, "k1");
        assert_eq!(version(&sd), Some(1));
        assert_eq!(sd.revocations().unwrap(), r.signed);
        let h1 = sd.nodes().unwrap().get("h1").cloned().unwrap();
        assert!(h1.revoked.is_some());
        // Again: nothing new is signed.
        let again = revoke_node(&sd, "h1", false).unwrap();
        assert!(again.report.already && again.signed.is_none());
        assert_eq!(again.report.version, 1);
        // Removing a revoked node frees the name and signs nothing; removing another
        // revokes it first.
        let r = remove_node(&sd, "h1").unwrap();
        assert!(r.report.already && r.report.removed);
        assert!(sd.nodes().unwrap().get("h1").is_none());
        let r = remove_node(&sd, "h2").unwrap();
        assert_eq!((r.report.version, r.report.already), (2, false));
        let list = herd_pki::verify_revocations(ca.cert_der(), &r.signed.unwrap()).unwrap();
        assert!(list.contains_key("k1") && list.contains_key("k2"));
        assert_eq!(
            list_nodes(&sd)
                .unwrap()
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["ws"]
        );
        // A list that does not verify stops the next revocation, naming the file.
        std::fs::write(d.path().join("revoked.list"), b"\x01junk").unwrap();
        sd.update_nodes(|n| {
            n.register(record("h3", "k3"));
            Ok(())
        })
        .unwrap();
        let err = revoke_node(&sd, "h3", false).unwrap_err().to_string();
        assert!(err.contains("revoked.list"), "{err}");
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
    fn cert_lifetime_parsing() {
        assert_eq!(parse_cert_lifetime("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(
            parse_cert_lifetime("30d").unwrap(),
            herd_pki::DEFAULT_CERT_LIFETIME
        );
        for bad in ["5s", "never", "0", "3651d", "soon"] {
            assert!(parse_cert_lifetime(bad).is_err(), "{bad}");
        }
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
