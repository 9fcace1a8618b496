//! The state directory: where a node keeps its identity, and how it is found.
//!
//! Layout (every file written atomically: temporary file, fsync, rename):
//!
//! | file          | mode | what                                                     |
//! |---------------|------|----------------------------------------------------------|
//! | `node.toml`   | 0600 | format version, cluster, node name, listen address, seeds |
//! | `node.crt`    | 0644 | this node's certificate (DER)                            |
//! | `node.key`    | 0600 | this node's private key (PKCS#8 DER)                     |
//! | `ca.crt`      | 0644 | the cluster CA certificate (DER)                         |
//! | `ca.key`      | 0600 | the CA private key: only on the node that ran `herd init` |
//! | `tokens.toml` | 0600 | join-token records: only beside `ca.key`                  |
//! | `nodes.toml`  | 0600 | enrolled names and their keys: only beside `ca.key`      |
//! | `ca.toml`     | 0600 | the lifetime of the certificates the CA signs: beside `ca.key` |
//! | `revoked.list`| 0644 | the newest revocation list the CA signed (on every node)  |
//! | `agent.lock`  | 0600 | held (flock) by the running agent                        |
//! | `agent.sock`  |      | the local agent's Unix socket                            |
//!
//! Where it is: `--state DIR`, else `$HERD_STATE`, else `/var/lib/herd` for root and
//! `$XDG_DATA_HOME/herd` (`~/.local/share/herd`) for other users. A plain user whose
//! own directory holds no cluster but who can reach a system agent's socket uses the
//! system directory (read-only use: `herd nodes`, later `herd run`).

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use herd_pki::{Ca, NodeIdentity, NodeRegistry, TokenStore};
use herd_proto::SignedRevocations;
use serde::{Deserialize, Serialize};

use crate::AgentError;

/// Current format version of `node.toml`.
pub const NODE_FILE_VERSION: u32 = 1;

/// System-wide state directory (root's agent).
pub const SYSTEM_STATE_DIR: &str = "/var/lib/herd";

/// Current format version of `ca.toml`.
pub const CA_FILE_VERSION: u32 = 1;

/// Contents of `ca.toml`, beside `ca.key`: how the CA signs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaFile {
    /// Format version; must be [`CA_FILE_VERSION`].
    pub version: u32,
    /// Lifetime of the node certificates it signs, in seconds (chosen at `herd init`:
    /// 30 days, or `HERD_CERT_LIFETIME` for tests).
    pub cert_lifetime_secs: u64,
}

impl Default for CaFile {
    fn default() -> Self {
        CaFile {
            version: CA_FILE_VERSION,
            cert_lifetime_secs: herd_pki::DEFAULT_CERT_LIFETIME.as_secs(),
        }
    }
}

impl CaFile {
    /// The lifetime of the certificates the CA signs.
    pub fn cert_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.cert_lifetime_secs)
    }
}

/// Contents of `node.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Format version; must be [`NODE_FILE_VERSION`].
    pub version: u32,
    /// Cluster name.
    pub cluster: String,
    /// This node's name.
    pub name: String,
    /// Address to listen on (`--listen` overrides).
    pub listen: SocketAddr,
    /// Addresses to contact at start: the token's and peers seen alive before.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
}

/// A state directory on disk.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// Picks the state directory: explicit path, `HERD_STATE`, or the per-user/system
/// default. `env` is passed in (not read here) so tests can choose.
pub fn resolve(explicit: Option<&Path>, env_state: Option<&str>, for_client: bool) -> StateDir {
    if let Some(p) = explicit {
        return StateDir::new(p);
    }
    if let Some(p) = env_state.filter(|s| !s.is_empty()) {
        return StateDir::new(p);
    }
    if rustix::process::geteuid().is_root() {
        return StateDir::new(SYSTEM_STATE_DIR);
    }
    let user = user_state_dir();
    if for_client {
        let u = StateDir::new(&user);
        let sys = StateDir::new(SYSTEM_STATE_DIR);
        if !u.has_cluster() && sys.socket_path().exists() {
            return sys;
        }
    }
    StateDir::new(user)
}

fn user_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("herd");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/herd")
}

impl StateDir {
    /// A state directory at `root` (not created yet); a relative path is taken from
    /// the current directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = if root.is_relative() {
            std::env::current_dir()
                .map(|c| c.join(&root))
                .unwrap_or(root)
        } else {
            root
        };
        StateDir { root }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, f: &str) -> PathBuf {
        self.root.join(f)
    }

    /// Whether this is the system-wide directory (root's agent, shared by local users).
    pub fn is_system(&self) -> bool {
        self.root.starts_with(SYSTEM_STATE_DIR)
    }

    /// Path of the agent's Unix socket.
    pub fn socket_path(&self) -> PathBuf {
        self.path("agent.sock")
    }

    /// Path of the agent's lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.path("agent.lock")
    }

    /// Whether a cluster identity exists here.
    pub fn has_cluster(&self) -> bool {
        self.path("node.toml").exists()
    }

    /// Whether this node holds the cluster CA key.
    pub fn has_ca(&self) -> bool {
        self.path("ca.key").exists()
    }

    /// Creates the directory if needed: mode 0700, or 0755 for the system directory,
    /// whose agent socket local users reach (its secrets are 0600 files, its cache and
    /// task directories 0700).
    pub fn create(&self) -> Result<(), AgentError> {
        fs::create_dir_all(&self.root).map_err(|e| AgentError::io(&self.root, e))?;
        let mode = if self.is_system() { 0o755 } else { 0o700 };
        fs::set_permissions(&self.root, fs::Permissions::from_mode(mode))
            .map_err(|e| AgentError::io(&self.root, e))?;
        Ok(())
    }

    fn read(&self, f: &str) -> Result<Vec<u8>, AgentError> {
        let p = self.path(f);
        fs::read(&p).map_err(|e| AgentError::io(&p, e))
    }

    fn write(&self, f: &str, data: &[u8], mode: u32) -> Result<(), AgentError> {
        write_atomic(&self.path(f), data, mode)
    }

    /// Reads `node.toml`.
    pub fn node_file(&self) -> Result<NodeFile, AgentError> {
        let p = self.path("node.toml");
        let text = String::from_utf8(self.read("node.toml")?).map_err(|_| AgentError::Corrupt {
            path: p.clone(),
            why: "not UTF-8 text".into(),
        })?;
        let nf: NodeFile = toml::from_str(&text).map_err(|e| AgentError::Corrupt {
            path: p.clone(),
            why: e.message().to_string(),
        })?;
        if nf.version != NODE_FILE_VERSION {
            return Err(AgentError::Corrupt {
                path: p,
                why: format!(
                    "format version {} is not supported (this herd reads {NODE_FILE_VERSION})",
                    nf.version
                ),
            });
        }
        Ok(nf)
    }

    /// Writes `node.toml`.
    pub fn save_node_file(&self, nf: &NodeFile) -> Result<(), AgentError> {
        let text = toml::to_string_pretty(nf).map_err(|e| AgentError::Corrupt {
            path: self.path("node.toml"),
            why: e.to_string(),
        })?;
        self.write("node.toml", text.as_bytes(), 0o600)
    }

    /// Reads this node's TLS identity, checking that it parses.
    pub fn identity(&self) -> Result<NodeIdentity, AgentError> {
        let id = NodeIdentity {
            cert_der: self.read("node.crt")?,
            key_der: self.read("node.key")?,
            ca_der: self.read("ca.crt")?,
        };
        id.info().map_err(|e| AgentError::Corrupt {
            path: self.path("node.crt"),
            why: e.to_string(),
        })?;
        herd_pki::peer_cert(&id.ca_der).map_err(|e| AgentError::Corrupt {
            path: self.path("ca.crt"),
            why: e.to_string(),
        })?;
        // The key must parse and match the certificate: building a config checks both.
        id.client_config().map_err(|e| AgentError::Corrupt {
            path: self.path("node.key"),
            why: e.to_string(),
        })?;
        Ok(id)
    }

    /// Writes this node's certificate alone (a renewal: the key and CA stay).
    pub fn save_cert(&self, cert_der: &[u8]) -> Result<(), AgentError> {
        self.write("node.crt", cert_der, 0o644)
    }

    /// Writes this node's TLS identity.
    pub fn save_identity(&self, id: &NodeIdentity) -> Result<(), AgentError> {
        self.write("ca.crt", &id.ca_der, 0o644)?;
        self.write("node.key", &id.key_der, 0o600)?;
        self.write("node.crt", &id.cert_der, 0o644)
    }

    /// Reads the CA (only on the node that ran `herd init`).
    pub fn ca(&self) -> Result<Ca, AgentError> {
        let cert = self.read("ca.crt")?;
        let key = self.read("ca.key")?;
        Ca::load(&cert, &key).map_err(|e| AgentError::Corrupt {
            path: self.path("ca.key"),
            why: e.to_string(),
        })
    }

    /// Writes the CA key.
    pub fn save_ca(&self, ca: &Ca) -> Result<(), AgentError> {
        self.write("ca.key", &ca.key_der(), 0o600)
    }

    /// Reads `ca.toml` (the defaults if absent: a cluster made before it existed).
    pub fn ca_file(&self) -> Result<CaFile, AgentError> {
        let p = self.path("ca.toml");
        if !p.exists() {
            return Ok(CaFile::default());
        }
        let text = String::from_utf8(self.read("ca.toml")?).map_err(|_| AgentError::Corrupt {
            path: p.clone(),
            why: "not UTF-8 text".into(),
        })?;
        let f: CaFile = toml::from_str(&text).map_err(|e| AgentError::Corrupt {
            path: p.clone(),
            why: e.message().to_string(),
        })?;
        if f.version != CA_FILE_VERSION {
            return Err(AgentError::Corrupt {
                path: p,
                why: format!(
                    "format version {} is not supported (this herd reads {CA_FILE_VERSION})",
                    f.version
                ),
            });
        }
        Ok(f)
    }

    /// Writes `ca.toml`.
    pub fn save_ca_file(&self, f: &CaFile) -> Result<(), AgentError> {
        let text = toml::to_string_pretty(f).map_err(|e| AgentError::Corrupt {
            path: self.path("ca.toml"),
            why: e.to_string(),
        })?;
        self.write("ca.toml", text.as_bytes(), 0o600)
    }

    /// Reads `revoked.list`, the newest revocation list this node holds (`None` if it
    /// holds none). Its signature is checked by whoever uses it
    /// (`herd_pki::RevocationSync::offer`).
    pub fn revocations(&self) -> Result<Option<SignedRevocations>, AgentError> {
        let p = self.path("revoked.list");
        if !p.exists() {
            return Ok(None);
        }
        SignedRevocations::from_bytes(&self.read("revoked.list")?)
            .map(Some)
            .map_err(|e| AgentError::Corrupt {
                path: p,
                why: e.to_string(),
            })
    }

    /// Writes `revoked.list` if `signed` is newer than the list there (or there is
    /// none), under the records lock, so that `herd revoke` and an agent storing a list
    /// it fetched never replace a newer list by an older one. `version_of` reads a
    /// list's version (after checking its signature; an unreadable list there counts as
    /// none). Returns whether it wrote.
    pub fn save_revocations_if_newer(
        &self,
        signed: &SignedRevocations,
        version_of: impl Fn(&SignedRevocations) -> Option<u64>,
    ) -> Result<bool, AgentError> {
        let _lock = self.records_lock()?;
        let new = version_of(signed).unwrap_or(0);
        let old = self
            .revocations()
            .ok()
            .flatten()
            .and_then(|o| version_of(&o))
            .unwrap_or(0);
        if new <= old {
            return Ok(false);
        }
        self.save_revocations(signed)?;
        Ok(true)
    }

    /// Writes `revoked.list` (the caller holds the records lock, see
    /// [`update_records`](Self::update_records)).
    pub fn save_revocations(&self, signed: &SignedRevocations) -> Result<(), AgentError> {
        self.write("revoked.list", &signed.to_bytes(), 0o644)
    }

    /// Runs `f` under the records lock (over `tokens.toml`, `nodes.toml` and
    /// `revoked.list`): `herd revoke` reads and writes the list and the registry in it.
    pub fn update_records<R>(
        &self,
        f: impl FnOnce() -> Result<R, AgentError>,
    ) -> Result<R, AgentError> {
        let _lock = self.records_lock()?;
        f()
    }

    /// Reads `tokens.toml` (empty store if absent).
    pub fn tokens(&self) -> Result<TokenStore, AgentError> {
        let p = self.path("tokens.toml");
        if !p.exists() {
            return Ok(TokenStore::default());
        }
        let text =
            String::from_utf8(self.read("tokens.toml")?).map_err(|_| AgentError::Corrupt {
                path: p.clone(),
                why: "not UTF-8 text".into(),
            })?;
        TokenStore::from_toml(&text).map_err(|e| AgentError::Corrupt {
            path: p,
            why: e.message().to_string(),
        })
    }

    /// Writes `tokens.toml`.
    pub fn save_tokens(&self, store: &TokenStore) -> Result<(), AgentError> {
        self.write("tokens.toml", store.to_toml().as_bytes(), 0o600)
    }

    /// Reads, changes and writes `tokens.toml` under an exclusive lock, so that
    /// `herd token` and a running agent never lose each other's updates.
    pub fn update_tokens<R>(
        &self,
        f: impl FnOnce(&mut TokenStore) -> Result<R, AgentError>,
    ) -> Result<R, AgentError> {
        let _lock = self.records_lock()?;
        let mut store = self.tokens()?;
        let r = f(&mut store)?;
        self.save_tokens(&store)?;
        Ok(r)
    }

    /// Reads `nodes.toml` (empty registry if absent).
    pub fn nodes(&self) -> Result<NodeRegistry, AgentError> {
        let p = self.path("nodes.toml");
        if !p.exists() {
            return Ok(NodeRegistry::default());
        }
        let text =
            String::from_utf8(self.read("nodes.toml")?).map_err(|_| AgentError::Corrupt {
                path: p.clone(),
                why: "not UTF-8 text".into(),
            })?;
        NodeRegistry::from_toml(&text).map_err(|e| AgentError::Corrupt {
            path: p,
            why: e.message().to_string(),
        })
    }

    /// Writes `nodes.toml`.
    pub fn save_nodes(&self, nodes: &NodeRegistry) -> Result<(), AgentError> {
        self.write("nodes.toml", nodes.to_toml().as_bytes(), 0o600)
    }

    /// Reads, changes and writes `nodes.toml` under the records lock (`herd remove`).
    pub fn update_nodes<R>(
        &self,
        f: impl FnOnce(&mut NodeRegistry) -> Result<R, AgentError>,
    ) -> Result<R, AgentError> {
        let _lock = self.records_lock()?;
        let mut nodes = self.nodes()?;
        let r = f(&mut nodes)?;
        self.save_nodes(&nodes)?;
        Ok(r)
    }

    /// Reads the token records and the node registry under the records lock and hands
    /// them to `f`, which says whether it changed them: only then are they written
    /// (tokens first, so a crash between the two never gives a token an extra use).
    /// An enrollment that is refused thus writes nothing at all.
    pub fn update_enrollment<R>(
        &self,
        f: impl FnOnce(&mut TokenStore, &mut NodeRegistry) -> Result<(R, bool), AgentError>,
    ) -> Result<R, AgentError> {
        let _lock = self.records_lock()?;
        let mut store = self.tokens()?;
        let mut nodes = self.nodes()?;
        let (r, changed) = f(&mut store, &mut nodes)?;
        if changed {
            self.save_tokens(&store)?;
            self.save_nodes(&nodes)?;
        }
        Ok(r)
    }

    /// The exclusive lock over `tokens.toml`, `nodes.toml` and `revoked.list` (held
    /// until dropped).
    fn records_lock(&self) -> Result<fs::File, AgentError> {
        let p = self.path("tokens.lock");
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&p)
            .map_err(|e| AgentError::io(&p, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| AgentError::io(&p, e.into()))?;
        Ok(file)
    }

    /// Takes the agent lock, or says who holds it.
    pub fn lock(&self) -> Result<StateLock, AgentError> {
        let p = self.lock_path();
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&p)
            .map_err(|e| AgentError::io(&p, e))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let holder = fs::read_to_string(&p).unwrap_or_default();
            return Err(AgentError::Locked {
                dir: self.root.clone(),
                pid: holder.trim().to_string(),
            });
        }
        file.set_len(0).map_err(|e| AgentError::io(&p, e))?;
        write!(file, "{}", std::process::id()).map_err(|e| AgentError::io(&p, e))?;
        Ok(StateLock { _file: file })
    }
}

/// Held while an agent runs; released when dropped (or when the process dies).
pub struct StateLock {
    _file: fs::File,
}

/// Writes a file atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), AgentError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(|e| AgentError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_file_roundtrip_and_corruption_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        let nf = NodeFile {
            version: 1,
            cluster: "lab".into(),
            name: "ws".into(),
            listen: "0.0.0.0:7420".parse().unwrap(),
            seeds: vec!["10.0.0.2:7420".parse().unwrap()],
        };
        sd.save_node_file(&nf).unwrap();
        assert_eq!(sd.node_file().unwrap(), nf);
        fs::write(dir.path().join("node.toml"), "version = 1\ncluster = [").unwrap();
        let err = sd.node_file().unwrap_err().to_string();
        assert!(err.contains("node.toml"), "{err}");
        fs::write(
            dir.path().join("node.toml"),
            "version = 7\ncluster='a'\nname='b'\nlisten='1.2.3.4:5'\n",
        )
        .unwrap();
        let err = sd.node_file().unwrap_err().to_string();
        assert!(err.contains("version 7"), "{err}");
    }

    #[test]
    fn second_lock_is_refused_with_pid() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        let _l = sd.lock().unwrap();
        let err = sd.lock().err().unwrap().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
    }

    #[test]
    fn resolve_prefers_explicit_then_env() {
        assert_eq!(
            resolve(Some(Path::new("/x")), Some("/y"), false).root(),
            Path::new("/x")
        );
        assert_eq!(resolve(None, Some("/y"), false).root(), Path::new("/y"));
    }
}
