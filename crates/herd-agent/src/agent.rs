//! The agent's main loop.
//!
//! Everything that happens to the agent arrives as one [`Event`] on one channel, or
//! as a timer, and is handled in one place ([`Agent::handle`]) that owns all state:
//! the membership state machine, the table of connections and the host's load. Tasks
//! spawned around it (the QUIC accept loop, one reader per connection, the Unix
//! socket server, connection attempts) only ever send events; they never touch the
//! state.
//!
//! Lifecycle: take the state-directory lock; enroll first if `--join` was given and
//! the directory holds no cluster (or holds one whose certificate expired); check the
//! certificate (an expired or revoked one stops the agent with one line saying what to
//! do) and read the revocation list kept on disk; open the QUIC endpoint; announce to
//! the seeds (`--peer`, the token's addresses, peers seen alive before); then loop
//! until SIGTERM/SIGINT (or the `shutdown` future), which is a graceful leave: peers
//! show this node as `left`.
//!
//! **Revocation and renewal in the loop.** The revocation list is the state of a
//! [`RevocationSync`] (sans-IO, in `herd-pki`): every load report that arrives tells it
//! which version its sender holds; when it names a peer to ask, the loop fetches the
//! list from that peer (`PeerRequest::Revocations`) and offers it back. A newer list
//! (or one `herd revoke` just signed here) is written to `revoked.list`, handed to the
//! endpoint's [`Trust`] (every handshake from then on refuses its keys), announced in
//! our own load report, and every open connection whose peer's key it lists is
//! closed. The certificate's renewal is a timer ([`crate::renew`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herd_membership::{Event as MemberEvent, LoadReport, Membership, NodeId, NodeState};
use herd_pki::{NodeIdentity, Offered, PeerCert, Renewal, RevocationSync, Trust};
use herd_proto::{
    AgentStatus, LocalRequest, LocalResponse, MemberState, NodeInfo, PeerRequest, PeerResponse,
    RemoteError, RemoteErrorKind, Role, SignedRevocations,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::hook::{RunCall, RunHook};
use crate::host::{self, Grant};
use crate::local::{self, LocalCall};
use crate::metrics::{self, Metrics};
use crate::polite::{self, Action, OwnerMeter, Policy, PoliteConfig, Sample, TaskMem};
use crate::queue::{JobEnd, Pending, Queue};
use crate::state::StateDir;
use crate::task::{self, Caller, HelperCtx, Tasks};
use crate::{AgentError, admin, discovery, enroll, net};

/// How the agent was asked to run (`herd agent` flags).
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The state directory.
    pub state: StateDir,
    /// Node name (first start only; default: the host name).
    pub name: Option<String>,
    /// Listen address (default: from `node.toml`, else `0.0.0.0:7420`).
    pub listen: Option<SocketAddr>,
    /// Address announced to peers (default: the listen address, or the first
    /// non-loopback interface address when listening on all of them).
    pub advertise: Option<SocketAddr>,
    /// Join token (first start only).
    pub join: Option<String>,
    /// Addresses to contact.
    pub peers: Vec<SocketAddr>,
    /// Cores granted to herd.
    pub cpus: Option<f32>,
    /// Bytes of memory granted to herd.
    pub memory: Option<u64>,
    /// Bytes of disk each task may write (default: half the free space of the tasks'
    /// file system at start; see [`crate::host::disk_grant`]).
    pub disk: Option<u64>,
    /// Announce and discover peers on the LAN by mDNS.
    pub mdns: bool,
    /// Bytes of workstation files the helper keeps cached (default 4 GiB).
    pub cache_size: Option<u64>,
    /// The cgroup standing for this host when measuring its owner's load (default:
    /// the whole machine).
    pub host_cgroup: Option<std::path::PathBuf>,
    /// When to take work, suspend, resume and evict (see [`crate::polite`]).
    pub polite: PoliteConfig,
    /// Serve Prometheus metrics over HTTP here (see [`crate::metrics`]).
    pub metrics: Option<SocketAddr>,
    /// Replaces how this node serves `PeerRequest::Run` (a test seam, not reachable
    /// from the command line: tests that play a hostile helper, a node with a real exec
    /// certificate that sends whatever the test says). `None`: the real sandbox.
    pub run_hook: Option<RunHook>,
}

/// Everything that can happen to the agent.
enum Event {
    /// A membership datagram from a connection whose certificate names `name`.
    Datagram { name: String, data: Bytes },
    /// A connection to or from `addr` is established.
    Connected {
        addr: SocketAddr,
        conn: quinn::Connection,
        peer: PeerCert,
    },
    /// A connection attempt to `addr` failed.
    ConnectFailed { addr: SocketAddr },
    /// A connection ended.
    Closed { addr: SocketAddr, id: usize },
    /// A task this workstation dispatched ended or was lost.
    JobEnded { job: u64, end: JobEnd },
    /// A sample of the host's load (every [`polite::SAMPLE_EVERY`]).
    Sample(Sample),
    /// The answer of `from` to our request for its revocation list.
    ListFetched {
        from: String,
        result: Result<Option<SignedRevocations>, String>,
    },
    /// `herd revoke` / `herd remove` ran here (the CA node).
    Revoked {
        result: Result<admin::Revocation, AgentError>,
        reply: oneshot::Sender<LocalResponse>,
    },
    /// Our certificate's renewal ended.
    Renewed(Result<NodeIdentity, AgentError>),
}

struct Conn {
    conn: Option<quinn::Connection>,
    connecting: bool,
    last_attempt: Option<Instant>,
    queue: Vec<Bytes>,
}

/// Packets held per peer while its connection is being set up.
const MAX_QUEUED: usize = 32;
/// Minimum time between connection attempts to one address.
const RETRY_CONNECT: Duration = Duration::from_millis(1000);
/// How often the host's load is sampled.
const LOAD_TICK: Duration = Duration::from_secs(2);
/// How often a certificate refused by peers is complained about, at most.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// This node's certificate and when to renew it.
struct Cert {
    /// Its validity, Unix seconds.
    not_before: u64,
    not_after: u64,
    /// A renewal is under way, since then.
    renewing: bool,
    started: Option<Instant>,
    /// Renewals failed in a row (each tries the next node claiming the CA key).
    failures: usize,
    /// When to look again (a failed renewal is retried then).
    next: Instant,
}

impl Cert {
    fn new(identity: &NodeIdentity) -> Result<Cert, AgentError> {
        let (not_before, not_after) = herd_pki::cert_validity(&identity.cert_der)?;
        let mut c = Cert {
            not_before,
            not_after,
            renewing: false,
            started: None,
            failures: 0,
            next: Instant::now(),
        };
        c.schedule(crate::unix_now());
        Ok(c)
    }

    /// Looks again when renewal is due (or now, if it is).
    fn schedule(&mut self, now: u64) {
        let wait = match herd_pki::renewal(self.not_before, self.not_after, now) {
            Renewal::Until(t) => t.saturating_sub(now),
            Renewal::Due | Renewal::Expired => 0,
        };
        self.next = Instant::now() + Duration::from_secs(wait);
    }

    /// After a failed renewal: a twentieth of the lifetime, between 1 s and a minute,
    /// and never past the expiry (which is checked then).
    fn retry(&mut self, now: u64) {
        let life = self.not_after.saturating_sub(self.not_before);
        let wait = (life / 20).clamp(1, 60);
        let left = self.not_after.saturating_sub(now);
        self.next = Instant::now() + Duration::from_secs(wait.min(left.max(1)));
    }
}

/// The line a node whose certificate expired says before it stops.
fn expired_message(not_after: u64) -> String {
    let ago = crate::unix_now().saturating_sub(not_after);
    format!(
        "this node's certificate expired {ago} s ago (it could not be renewed in time, e.g. because the node was off): it must enroll again with a token: `herd agent --join TOKEN` (make one with `herd token` on the cluster's first node)"
    )
}

/// The line a node whose key was revoked says.
fn revoked_message(name: &str) -> String {
    format!(
        "this node's certificate was revoked (`herd revoke` on the cluster's first node): every node refuses it; to bring this host back, move its state directory away, run `herd remove {name}` on the cluster's first node, and enroll again with a token"
    )
}

struct Agent {
    dir: StateDir,
    cluster: String,
    me: NodeId,
    roles: Vec<Role>,
    membership: Membership,
    endpoint: quinn::Endpoint,
    conns: HashMap<SocketAddr, Conn>,
    cert_roles: HashMap<String, Vec<Role>>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    peers_tx: watch::Sender<Vec<SocketAddr>>,
    started: Instant,
    origin: Instant,
    grant: Grant,
    speed: f32,
    seq: u64,
    last_report: Option<(Instant, LoadReport)>,
    saved_seeds: Vec<SocketAddr>,
    queue: Queue,
    /// Something placement depends on changed since it last ran.
    sched_dirty: bool,
    policy: Policy,
    last_sample: Option<Sample>,
    metrics: Arc<Metrics>,
    /// Clients running tasks placed on this node (their CPU is herd's).
    local_clients: polite::LocalClients,
    /// The revocation list held, and whom to ask for a newer one.
    revocations: RevocationSync,
    /// The key of each peer's certificate, from its latest connection.
    cert_keys: HashMap<String, String>,
    /// Our certificate, and its renewal.
    cert: Cert,
    /// Whether this node holds the CA key.
    is_ca: bool,
    /// Our key's fingerprint (renewal keeps the key).
    own_key: String,
    /// Set when the agent must stop with this error (its certificate expired, or was
    /// revoked).
    fatal: Option<AgentError>,
}

/// Runs an agent until `shutdown` resolves or SIGTERM/SIGINT arrives.
pub async fn run_agent(
    opts: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let dir = opts.state.clone();
    if let Some(tok) = &opts.join {
        let token = enroll::parse_token(tok)?;
        if dir.has_cluster() {
            let id = dir.identity()?;
            if herd_pki::fingerprint(&id.ca_der) != token.ca_fingerprint {
                return Err(AgentError::Token(format!(
                    "{} already belongs to another cluster; use another --state to join this one",
                    dir.root().display()
                )));
            }
            let (nb, na) = herd_pki::cert_validity(&id.cert_der)?;
            if herd_pki::renewal(nb, na, crate::unix_now()) == Renewal::Expired && !dir.has_ca() {
                let _lock = dir.lock()?;
                enroll::enroll_again(&dir, &token, opts.listen, &opts.peers).await?;
                tracing::info!(cluster = %token.cluster, "enrolled again: this node's certificate had expired");
            } else {
                tracing::info!("already enrolled in this cluster; ignoring --join");
            }
        } else {
            dir.create()?;
            let _lock = dir.lock()?;
            let name = match &opts.name {
                Some(n) => n.clone(),
                None => default_name(),
            };
            let listen = opts
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], admin::DEFAULT_PORT)));
            enroll::enroll(&dir, &token, &name, listen, &opts.peers).await?;
            tracing::info!(cluster = %token.cluster, node = %name, "joined the cluster");
        }
    }
    if !dir.has_cluster() {
        return Err(AgentError::NoCluster {
            dir: dir.root().to_path_buf(),
        });
    }
    let _lock = dir.lock()?;
    let mut nf = dir.node_file()?;
    if let Some(l) = opts.listen {
        nf.listen = l;
    }
    let mut identity = dir.identity()?;
    let info = identity.info()?;
    if opts.name.as_ref().is_some_and(|n| n != &nf.name) {
        tracing::warn!(
            name = %nf.name,
            "--name ignored: this node is enrolled as {:?}",
            nf.name
        );
    }
    let is_ca = dir.has_ca();
    let (_, not_after) = herd_pki::cert_validity(&identity.cert_der)?;
    if not_after <= crate::unix_now() {
        if !is_ca {
            return Err(AgentError::Certificate(expired_message(not_after)));
        }
        // The CA node signs its own.
        let d = dir.clone();
        identity = tokio::task::spawn_blocking(move || crate::renew::renew_locally(&d))
            .await
            .map_err(|e| AgentError::Net(e.to_string()))??;
        tracing::info!("renewed this node's expired certificate");
    }
    // The revocation list kept on disk is in force before the first handshake.
    let mut revocations = RevocationSync::new(identity.ca_der.clone());
    if let Some(signed) = dir.revocations()? {
        revocations
            .offer(Duration::ZERO, None, signed)
            .map_err(|e| AgentError::Corrupt {
                path: dir.root().join("revoked.list"),
                why: format!("{e} (remove it: the node fetches the list from its peers again)"),
            })?;
    }
    let own_key = herd_pki::key_fingerprint_of_cert(&identity.cert_der)?;
    if revocations.is_revoked(&own_key) {
        return Err(AgentError::Certificate(revoked_message(&nf.name)));
    }
    let trust = Trust::new(&identity)?;
    trust.set_revoked(
        revocations
            .list()
            .into_iter()
            .flat_map(|l| l.revoked.iter().map(|r| r.key.clone())),
    );
    if revocations.version() > 0 {
        tracing::info!(version = revocations.version(), "revocation list in force");
    }
    let cert = Cert::new(&identity)?;
    let endpoint = net::endpoint_with(&trust, nf.listen)?;
    let listen = endpoint
        .local_addr()
        .map_err(|e| AgentError::Net(e.to_string()))?;
    let advertise = opts
        .advertise
        .unwrap_or_else(|| admin::advertised_addr(listen));
    let metrics = Arc::new(Metrics::new());
    let _metrics_server = metrics::start(opts.metrics, &metrics).await?;
    let socket = local::bind(&dir, dir.is_system())?;

    let grant = Grant::resolve(opts.cpus, opts.memory);
    opts.polite
        .validate()
        .map_err(|e| AgentError::Usage(e.to_string()))?;
    let speed = tokio::task::spawn_blocking(|| host::measure_speed(Duration::from_millis(100)))
        .await
        .unwrap_or(1.0);
    let origin = Instant::now();
    let bump = crate::unix_now() as u32;
    let me = NodeId {
        name: nf.name.clone(),
        addr: advertise,
        bump,
    };
    let seed = u64::from(bump) ^ u64::from(std::process::id()) << 32;
    let membership = Membership::new(
        me.clone(),
        herd_membership::Config::lan(),
        seed,
        Duration::ZERO,
    );
    let (events, mut rx) = mpsc::channel::<Event>(1024);
    let (local_tx, mut local_rx) = mpsc::channel::<LocalCall>(64);
    let (peers_tx, peers_rx) = watch::channel(Vec::new());
    tokio::spawn(local::serve(socket, local_tx));
    task::make_tasks_dir(&dir.root().join("tasks"))
        .map_err(|e| AgentError::io(&dir.root().join("tasks"), e))?;
    let mut grant = grant;
    grant.disk = host::disk_grant(opts.disk, &dir.root().join("tasks"));
    let views_dir = dir.root().join("tasks").join("views");
    {
        let d = views_dir.clone();
        let tasks = dir.root().join("tasks");
        let _ = tokio::task::spawn_blocking(move || {
            crate::views::clean_stale(&d);
            task::clean_task_dirs(&tasks);
        })
        .await;
    }
    let views = Arc::new(crate::views::ViewPool::new(views_dir));
    {
        let views = views.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let v = views.clone();
                let _ = tokio::task::spawn_blocking(move || v.expire()).await;
            }
        });
    }
    let exe = std::env::current_exe()
        .map_err(|e| AgentError::Net(format!("cannot find herd's own binary: {e}")))?;
    // Commits a crash cut short are finished or undone, each as its user.
    tokio::spawn({
        let exe = exe.clone();
        async move { crate::fsserve::recover_commits(&exe).await }
    });
    let mut hidden_everywhere = vec![dir.root().as_os_str().as_encoded_bytes().to_vec()];
    hidden_everywhere.push(crate::state::SYSTEM_STATE_DIR.as_bytes().to_vec());
    let (lists, _) = watch::channel(revocations.signed().cloned().map(Arc::new));
    // Whether this node can run tasks, and through which network stack.
    let probed = if info.roles.contains(&Role::Exec) {
        let (exe, scratch) = (exe.clone(), dir.root().join("tasks"));
        let r = tokio::task::spawn_blocking(move || task::probe(&exe, &scratch))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(why) = &r {
            tracing::warn!("this node cannot run tasks: {why}");
        }
        r
    } else {
        Err("this node has no exec role".into())
    };
    let shared = Arc::new(Shared {
        trust: trust.clone(),
        lists,
        refused_logged: Default::default(),
        drained: Default::default(),
        enroll_gate: Default::default(),
        conn_limit: Default::default(),
        run_hook: opts.run_hook.clone(),
        me: nf.name.clone(),
        endpoint: endpoint.clone(),
        dir: Arc::new(dir.clone()),
        peers: peers_rx,
        tasks: Arc::new(Tasks::new(exe.clone(), hidden_everywhere, metrics.clone())),
        helper: Arc::new(HelperCtx {
            name: nf.name.clone(),
            exe: exe.clone(),
            tasks_dir: dir.root().join("tasks"),
            grant: grant.clone(),
            exec: info.roles.contains(&Role::Exec),
            ready: probed.as_ref().map(|_| ()).map_err(Clone::clone),
            stack: probed.ok().flatten(),
            cgroup_parent: match herd_sandbox::prepare_agent_cgroup("agent") {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("cannot prepare cgroups for tasks: {e}");
                    None
                }
            },
            views: views.clone(),
            prepared: Default::default(),
            preparing: Default::default(),
            spare_dirs: Default::default(),
            index_save_due: Default::default(),
            running: Default::default(),
            suspended: Default::default(),
            tasks_changed: Default::default(),
            metrics: metrics.clone(),
            cache: Arc::new(
                herd_fs::cache::Cache::open(
                    &dir.root().join("cache"),
                    opts.cache_size.unwrap_or(4 << 30),
                )
                .map_err(|e| AgentError::io(&dir.root().join("cache"), e))?,
            ),
        }),
    });
    shared.helper.prepare_next();
    tokio::spawn(accept_loop(shared.clone(), events.clone()));
    let mut meter = OwnerMeter::new(
        opts.host_cgroup.as_deref(),
        shared.helper.cgroup_parent.as_deref(),
    )
    .map_err(|e| AgentError::Usage(e.to_string()))?;
    let local_clients = meter.clients();

    let mut agent = Agent {
        dir: dir.clone(),
        cluster: nf.cluster.clone(),
        me,
        roles: info.roles.clone(),
        membership,
        endpoint,
        conns: HashMap::new(),
        cert_roles: HashMap::new(),
        events,
        shared,
        peers_tx,
        started: Instant::now(),
        origin,
        grant,
        speed,
        seq: 0,
        last_report: None,
        saved_seeds: nf.seeds.clone(),
        queue: Queue::default(),
        sched_dirty: false,
        policy: Policy::new(opts.polite.clone()),
        last_sample: None,
        metrics,
        local_clients,
        revocations,
        cert_keys: HashMap::new(),
        cert,
        is_ca,
        own_key,
        fatal: None,
    };
    {
        let events = agent.events.clone();
        std::thread::Builder::new()
            .name("herd-meter".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(polite::SAMPLE_EVERY);
                    if events.blocking_send(Event::Sample(meter.sample())).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| AgentError::Net(format!("cannot start the load meter: {e}")))?;
    }
    let mut seeds: Vec<SocketAddr> = opts.peers.clone();
    seeds.extend(nf.seeds.iter().copied());
    seeds.retain(|s| *s != advertise && *s != listen);
    seeds.sort();
    seeds.dedup();
    tracing::info!(
        node = %agent.me.name,
        cluster = %agent.cluster,
        %listen,
        %advertise,
        cpus = agent.grant.cpus,
        memory = agent.grant.memory,
        disk = agent.grant.disk,
        speed,
        "agent started"
    );
    let (_discovery, mut discovered) = if opts.mdns {
        match discovery::start(
            &agent.me.name,
            &agent.cluster,
            &herd_pki::fingerprint(&identity.ca_der),
            listen,
            advertise,
        ) {
            Ok((d, rx)) => (Some(d), Some(rx)),
            Err(e) => {
                tracing::warn!("LAN discovery is off: {e}");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let now = agent.now();
    agent.report_load(true);
    agent.membership.join(now, &seeds);
    agent.flush();

    let mut load_tick = tokio::time::interval(LOAD_TICK);
    let helper = agent.shared.helper.clone();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::Net(e.to_string()))?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| AgentError::Net(e.to_string()))?;
    tokio::pin!(shutdown);
    loop {
        let deadline = agent
            .membership
            .poll_timeout()
            .map(|t| agent.origin + t)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            Some(ev) = rx.recv() => agent.handle(ev),
            Some(call) = local_rx.recv() => agent.handle_local(call),
            Some(addr) = recv_opt(&mut discovered) => agent.discovered(addr),
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = agent.now();
                agent.membership.handle_timeout(now);
            }
            _ = helper.tasks_changed.notified() => agent.report_load(false),
            _ = load_tick.tick() => {
                agent.report_load(false);
                // Expected completion times move with the clock.
                agent.sched_dirty = true;
                // A request for a list that went unanswered times out.
                agent.ask_for_list();
            }
            _ = tokio::time::sleep_until(agent.cert.next.into()), if !agent.cert.renewing => {
                agent.renew_tick();
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = &mut shutdown => break,
        }
        agent.flush();
        if agent.sched_dirty {
            agent.sched_dirty = false;
            agent.schedule();
        }
        if agent.fatal.is_some() {
            break;
        }
    }
    agent.leave().await;
    // Kept views are unmounted, not left behind as dead FUSE mounts, and the sandbox
    // prepared ahead is ended.
    let helper = agent.shared.helper.clone();
    let _ = tokio::task::spawn_blocking(move || {
        views.clear();
        helper.stop();
    })
    .await;
    let _ = std::fs::remove_file(dir.socket_path());
    match agent.fatal.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The host name (first label), or `node` if it is not a valid node name.
pub fn default_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or("").to_string())
        .filter(|h| herd_pki::check_name(h).is_ok())
        .unwrap_or_else(|| "node".into())
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Agent {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// mDNS found a node of our CA at `addr`: announce to it unless already a live member.
    fn discovered(&mut self, addr: SocketAddr) {
        let known = self
            .membership
            .nodes()
            .iter()
            .any(|n| n.id.addr == addr && n.state == NodeState::Alive);
        if !known && addr != self.me.addr {
            tracing::info!(%addr, "discovered a peer on the LAN");
            let now = self.now();
            self.membership.join(now, &[addr]);
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Datagram { name, data } => {
                let now = self.now();
                if let Err(e) = self.membership.handle_data(now, &data) {
                    tracing::debug!(peer = %name, "membership packet refused: {e}");
                }
            }
            Event::Connected { addr, conn, peer } => {
                self.cert_roles
                    .insert(peer.name.clone(), peer.roles.clone());
                if let Some(key) = net::peer_key(&conn) {
                    self.cert_keys.insert(peer.name.clone(), key);
                }
                let entry = self.conns.entry(addr).or_insert_with(|| Conn {
                    conn: None,
                    connecting: false,
                    last_attempt: None,
                    queue: Vec::new(),
                });
                entry.connecting = false;
                for data in entry.queue.drain(..) {
                    net::send_datagram(&conn, data);
                }
                entry.conn = Some(conn);
            }
            Event::ConnectFailed { addr } => {
                if let Some(c) = self.conns.get_mut(&addr) {
                    c.connecting = false;
                    c.queue.clear();
                }
            }
            Event::Closed { addr, id } => {
                if let Some(c) = self.conns.get_mut(&addr)
                    && c.conn.as_ref().is_some_and(|c| c.stable_id() == id)
                {
                    c.conn = None;
                }
            }
            Event::Sample(sample) => self.observe(sample),
            Event::ListFetched { from, result } => {
                let now = self.now();
                match result {
                    Ok(Some(signed)) => match self.revocations.offer(now, Some(&from), signed) {
                        Ok(Offered::Newer) => self.apply_list(true),
                        Ok(Offered::NotNewer) => {}
                        Err(e) => tracing::warn!(peer = %from, "ignored a revocation list: {e}"),
                    },
                    Ok(None) => self.revocations.ask_failed(now, &from),
                    Err(e) => {
                        tracing::debug!(peer = %from, "could not fetch the revocation list: {e}");
                        self.revocations.ask_failed(now, &from);
                    }
                }
                self.ask_for_list();
            }
            Event::Revoked { result, reply } => {
                let resp = match result {
                    Ok(r) => {
                        if let Some(signed) = r.signed {
                            let now = self.now();
                            match self.revocations.offer(now, None, signed) {
                                Ok(Offered::Newer) => self.apply_list(false),
                                Ok(Offered::NotNewer) => {}
                                Err(e) => {
                                    tracing::error!("the list just signed does not verify: {e}")
                                }
                            }
                        }
                        LocalResponse::Revoked(r.report)
                    }
                    Err(e) => LocalResponse::Error(e.to_string()),
                };
                let _ = reply.send(resp);
            }
            Event::Renewed(result) => self.renewed(result),
            Event::JobEnded { job, end } => {
                self.sched_dirty = true;
                match end {
                    JobEnd::Done { completed } => self.queue.end(job, completed),
                    JobEnd::Requeue { mut pending, node } => {
                        self.queue.end(job, false);
                        pending.retries_left -= 1;
                        pending.avoid.push(node);
                        self.queue.push_front(*pending);
                    }
                }
            }
        }
    }

    /// Sends everything membership wants sent and handles its events.
    fn flush(&mut self) {
        while let Some((addr, data)) = self.membership.poll_transmit() {
            self.send(addr, data);
        }
        let (mut newcomer, mut changed) = (false, false);
        while let Some(ev) = self.membership.poll_event() {
            self.sched_dirty = true;
            changed |= !matches!(ev, MemberEvent::Load(_));
            match ev {
                MemberEvent::NodeUp(id) => {
                    tracing::info!(node = %id.name, addr = %id.addr, "node is alive");
                    newcomer = true;
                }
                MemberEvent::NodeSuspect(id) => tracing::info!(node = %id.name, "node is suspect"),
                MemberEvent::NodeDown(id) => {
                    tracing::warn!(node = %id.name, "node is dead");
                    self.queue.lose_node(&id.name, "it is dead or cut off");
                    self.revocations.forget(&id.name);
                }
                MemberEvent::NodeLeft(id) => {
                    tracing::info!(node = %id.name, "node left");
                    self.queue.lose_node(&id.name, "it left the cluster");
                    self.revocations.forget(&id.name);
                }
                MemberEvent::Rejoined(id) => {
                    tracing::warn!(
                        bump = id.bump,
                        "this node was declared dead by the cluster; rejoined"
                    );
                    self.me = id;
                }
                MemberEvent::Load(name) => {
                    self.queue.report_arrived(&name);
                    if let Some(version) = self.membership.load_of(&name).map(|l| l.revocations) {
                        self.revocations.claim(&name, version);
                    }
                }
            }
        }
        self.ask_for_list();
        if newcomer {
            // A node that just came up knows nobody's load yet: tell it ours now
            // rather than at the next periodic report.
            self.report_load(true);
            while let Some((addr, data)) = self.membership.poll_transmit() {
                self.send(addr, data);
            }
        }
        if !changed {
            // Nobody's state changed: the peer list and the saved seeds stand.
            return;
        }
        let alive: Vec<SocketAddr> = self
            .membership
            .nodes()
            .into_iter()
            .filter(|n| n.state == NodeState::Alive && n.id.name != self.me.name)
            .map(|n| n.id.addr)
            .collect();
        self.peers_tx.send_if_modified(|p| {
            if *p != alive {
                *p = alive.clone();
                true
            } else {
                false
            }
        });
        self.save_seeds(&alive);
    }

    fn save_seeds(&mut self, alive: &[SocketAddr]) {
        let mut new: Vec<SocketAddr> = self.saved_seeds.clone();
        let mut changed = false;
        for a in alive {
            if !new.contains(a) {
                new.push(*a);
                changed = true;
            }
        }
        if !changed {
            return;
        }
        // Keep the most recent 16.
        let skip = new.len().saturating_sub(16);
        new.drain(..skip);
        if let Ok(mut nf) = self.dir.node_file() {
            nf.seeds = new.clone();
            if let Err(e) = self.dir.save_node_file(&nf) {
                tracing::warn!("could not save peers: {e}");
            }
        }
        self.saved_seeds = new;
    }

    /// Asks the peer [`RevocationSync`] names, if any, for its revocation list.
    fn ask_for_list(&mut self) {
        let now = self.now();
        let Some(peer) = self.revocations.poll_ask(now) else {
            return;
        };
        let Some(addr) = self
            .membership
            .state_of(&peer)
            .filter(|(_, st)| st.is_active())
            .map(|(id, _)| id.addr)
        else {
            self.revocations.ask_failed(now, &peer);
            return;
        };
        let conn = self.conns.get(&addr).and_then(|c| c.conn.clone());
        let (endpoint, events) = (self.endpoint.clone(), self.events.clone());
        tokio::spawn(async move {
            let result = async {
                let conn = net::reuse_or_connect(&endpoint, conn, addr, &peer)
                    .await
                    .map_err(|e| e.to_string())?;
                match net::request::<_, PeerResponse>(&conn, &PeerRequest::Revocations).await {
                    Ok(PeerResponse::Revocations(list)) => Ok(list),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            };
            let result = tokio::time::timeout(herd_pki::revocation::ASK_TIMEOUT, result)
                .await
                .unwrap_or_else(|_| Err("no answer in time".into()));
            let _ = events.send(Event::ListFetched { from: peer, result }).await;
        });
    }

    /// A newer revocation list is held: every handshake refuses its keys from now on,
    /// open connections to revoked peers close, their tasks are lost, the list goes to
    /// disk (`store`: it came from a peer; `herd revoke` wrote it already) and our load
    /// report announces it.
    fn apply_list(&mut self, store: bool) {
        let (Some(list), Some(signed)) = (
            self.revocations.list().cloned(),
            self.revocations.signed().cloned(),
        ) else {
            return;
        };
        let newly: Vec<String> = list
            .revoked
            .iter()
            .filter(|r| !self.shared.trust.is_revoked(&r.key))
            .map(|r| r.name.clone())
            .collect();
        self.shared
            .trust
            .set_revoked(list.revoked.iter().map(|r| r.key.clone()));
        // Each connection's watcher closes it if its peer's key is listed now.
        self.shared
            .lists
            .send_replace(Some(Arc::new(signed.clone())));
        tracing::info!(
            version = list.version,
            revoked = list.revoked.len(),
            newly = %newly.join(","),
            "revocation list in force"
        );
        for name in &newly {
            if self.is_revoked(name) {
                self.queue.lose_node(name, "its certificate was revoked");
            }
        }
        self.sched_dirty = true;
        if store {
            let dir = self.dir.clone();
            let ca = self.shared.trust.identity().ca_der;
            tokio::task::spawn_blocking(move || {
                let version = |s: &SignedRevocations| {
                    herd_pki::verify_revocations(&ca, s).ok().map(|l| l.version)
                };
                if let Err(e) = dir.save_revocations_if_newer(&signed, version) {
                    tracing::warn!("could not save the revocation list: {e}");
                }
            });
        }
        self.report_load(true);
        if list.contains_key(&self.own_key) {
            tracing::error!("{}", revoked_message(&self.me.name));
            self.fatal = Some(AgentError::Certificate(revoked_message(&self.me.name)));
        }
    }

    /// Whether `name`'s certificate is revoked as far as we know: the key of its
    /// latest connection is listed, or (no connection seen) the list names it.
    fn is_revoked(&self, name: &str) -> bool {
        let Some(list) = self.revocations.list() else {
            return false;
        };
        let key = if name == self.me.name {
            Some(&self.own_key)
        } else {
            self.cert_keys.get(name)
        };
        match key {
            Some(key) => self.shared.trust.is_revoked(key),
            None => list.entries_for(name).next().is_some(),
        }
    }

    /// The renewal timer fired: renew if due, stop if expired, else wait.
    fn renew_tick(&mut self) {
        let now = crate::unix_now();
        match herd_pki::renewal(self.cert.not_before, self.cert.not_after, now) {
            Renewal::Until(_) => self.cert.schedule(now),
            Renewal::Expired => {
                let msg = expired_message(self.cert.not_after);
                tracing::error!("{msg}");
                self.fatal = Some(AgentError::Certificate(msg));
            }
            Renewal::Due => {
                self.cert.renewing = true;
                self.cert.started = Some(Instant::now());
                let events = self.events.clone();
                let dir = self.dir.clone();
                if self.is_ca {
                    tokio::spawn(async move {
                        let r =
                            tokio::task::spawn_blocking(move || crate::renew::renew_locally(&dir))
                                .await
                                .unwrap_or_else(|e| Err(AgentError::Net(e.to_string())));
                        let _ = events.send(Event::Renewed(r)).await;
                    });
                    return;
                }
                // The CA node: whoever alive says it holds the CA key (a node saying so
                // falsely cannot sign a certificate we accept; after each failure the
                // next one that says so is asked).
                let cas: Vec<_> = self
                    .membership
                    .nodes()
                    .into_iter()
                    .filter(|n| {
                        n.state == NodeState::Alive
                            && n.id.name != self.me.name
                            && !self.is_revoked(&n.id.name)
                            && n.load.as_ref().is_some_and(|l| l.ca)
                    })
                    .collect();
                let ca = match cas.len() {
                    0 => None,
                    n => cas.get(self.cert.failures % n).cloned(),
                };
                let Some(ca) = ca else {
                    self.cert.renewing = false;
                    self.cert.failures += 1;
                    self.cert.retry(now);
                    // Once, then less and less often (the CA node may be off for days).
                    if self.cert.failures.is_power_of_two() {
                        tracing::warn!(
                            expires_in_secs = self.cert.not_after.saturating_sub(now),
                            "this node's certificate is due for renewal, but the node holding the cluster CA is not alive: trying again"
                        );
                    }
                    return;
                };
                let conn = self.conns.get(&ca.id.addr).and_then(|c| c.conn.clone());
                let endpoint = self.endpoint.clone();
                let identity = self.shared.trust.identity();
                tokio::spawn(async move {
                    let r = crate::renew::renew_remote(
                        &endpoint,
                        conn,
                        (&ca.id.name, ca.id.addr),
                        &dir,
                        &identity,
                    )
                    .await;
                    let _ = events.send(Event::Renewed(r)).await;
                });
            }
        }
    }

    fn renewed(&mut self, result: Result<NodeIdentity, AgentError>) {
        self.cert.renewing = false;
        let now = crate::unix_now();
        let identity = match result {
            Ok(id) => id,
            Err(e) => {
                self.cert.failures += 1;
                if self.cert.failures.is_power_of_two() {
                    tracing::warn!(
                        expires_in_secs = self.cert.not_after.saturating_sub(now),
                        "could not renew this node's certificate: {e}; trying again"
                    );
                }
                self.cert.retry(now);
                return;
            }
        };
        let validity = herd_pki::cert_validity(&identity.cert_der);
        match (self.shared.trust.set_identity(&identity), validity) {
            (Ok(()), Ok((nb, na))) => {
                self.cert.failures = 0;
                self.cert.not_before = nb;
                self.cert.not_after = na;
                self.cert.schedule(now);
                tracing::info!(
                    valid_for_secs = na.saturating_sub(now),
                    took_ms = self.cert.started.map_or(0, |t| t.elapsed().as_millis()),
                    "renewed this node's certificate"
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("the renewed certificate is unusable: {e}; trying again later");
                self.cert.retry(now);
            }
        }
    }

    fn send(&mut self, addr: SocketAddr, data: Bytes) {
        let entry = self.conns.entry(addr).or_insert_with(|| Conn {
            conn: None,
            connecting: false,
            last_attempt: None,
            queue: Vec::new(),
        });
        if let Some(c) = &entry.conn {
            if c.close_reason().is_none() && net::send_datagram(c, data.clone()) {
                return;
            }
            entry.conn = None;
        }
        if entry.queue.len() < MAX_QUEUED {
            entry.queue.push(data);
        }
        let due = entry
            .last_attempt
            .is_none_or(|t| t.elapsed() >= RETRY_CONNECT);
        if !entry.connecting && due {
            entry.connecting = true;
            entry.last_attempt = Some(Instant::now());
            tokio::spawn(connect(self.shared.clone(), addr, self.events.clone()));
        }
    }

    /// Feeds the polite policy a load sample and carries out what it decides.
    fn observe(&mut self, sample: Sample) {
        let helper = self.shared.helper.clone();
        let tasks: Vec<TaskMem> = helper
            .task_memory()
            .into_iter()
            .map(|(id, mem)| TaskMem { id, mem })
            .collect();
        let was = self.policy.accepting();
        let now = self.now();
        self.policy.observe(now, &sample, &tasks);
        while let Some(action) = self.policy.poll_action() {
            match action {
                Action::Suspend => {
                    tracing::info!(
                        owner_cores = sample.owner_cores,
                        "the owner is busy: suspending herd's tasks"
                    );
                    helper.set_suspended(true);
                }
                Action::Resume => {
                    tracing::info!("the owner is idle again: resuming herd's tasks");
                    helper.set_suspended(false);
                }
                Action::Evict { task, reason } => {
                    let why = match reason {
                        polite::EvictReason::OwnerBusy => {
                            "its owner has needed the host for too long"
                        }
                        polite::EvictReason::Memory => "the host is short of memory",
                    };
                    tracing::info!(task = format!("{task:016x}"), "evicting a task: {why}");
                    helper.evict(task, why);
                }
            }
        }
        self.last_sample = Some(sample);
        self.report_load(was != self.policy.accepting());
    }

    fn report_load(&mut self, force: bool) {
        let stats = self.shared.helper.cache.stats();
        let (owner, herd) = match &self.last_sample {
            Some(s) => (
                self.policy.owner_cores().unwrap_or(s.owner_cores),
                s.herd_cores,
            ),
            None => (0.0, 0.0),
        };
        let drained = self
            .shared
            .drained
            .load(std::sync::atomic::Ordering::SeqCst);
        let report = LoadReport {
            seq: 0,
            roles: self
                .roles
                .iter()
                .filter(|r| **r != Role::Exec || self.shared.helper.ready.is_ok())
                .map(|r| r.as_str().to_string())
                .collect(),
            cpus: self.grant.cpus,
            speed: self.speed,
            load: owner + herd,
            owner_load: owner,
            mem_total: self.grant.memory,
            mem_free: host::mem_available().min(self.grant.memory),
            tasks: self.shared.helper.task_count(),
            // Not taking new work: drained, the owner is busy, has not been idle long
            // enough, or memory is short.
            draining: !self.policy.accepting() || drained,
            drained,
            cache_hits: stats.hits,
            cache_misses: stats.misses,
            revocations: self.revocations.version(),
            ca: self.is_ca,
        };
        let members = self.membership.nodes();
        self.metrics
            .observe(&report, self.policy.mode(), &members, self.queue.waiting());
        let stale = self.last_report.as_ref().is_none_or(|(t, last)| {
            t.elapsed() >= Duration::from_secs(10)
                || (last.load - report.load).abs() >= 0.1
                || last.tasks != report.tasks
                || last.draining != report.draining
                || last.drained != report.drained
                || last.revocations != report.revocations
                || last.mem_free.abs_diff(report.mem_free) > last.mem_total / 20
        });
        if force || stale {
            self.seq += 1;
            let mut report = report;
            report.seq = self.seq;
            let now = self.now();
            self.membership.set_load(now, report.clone());
            self.last_report = Some((Instant::now(), report));
        }
    }

    fn handle_local(&mut self, call: LocalCall) {
        if let LocalRequest::Run(spec) = call.request {
            let Some(cli) = call.stream else { return };
            let caller = Caller {
                uid: call.uid,
                gid: call.gid,
                pid: call.pid,
                groups: call.groups,
            };
            if let Some(on) = spec.on.as_deref()
                && let Err(e) = self.check_pin(on)
            {
                tokio::spawn(task::refuse(cli, e));
                return;
            }
            let job = self.queue.next_id();
            let exe = crate::queue::exe_key(&spec.argv);
            let retries_left = spec.retries;
            self.queue.push(Pending {
                job,
                cli,
                spec,
                caller,
                exe,
                avoid: Vec::new(),
                retries_left,
                since: Instant::now(),
            });
            self.sched_dirty = true;
            return;
        }
        let resp = match call.request {
            LocalRequest::Nodes => LocalResponse::Nodes(self.node_infos()),
            LocalRequest::Run(_) => return,
            LocalRequest::Slots => LocalResponse::Slots(herd_sched::jobserver_width(
                herd_sched::slots(&self.sched_nodes(&self.membership.nodes())),
            )),
            // Another user's command line is theirs to show (root sees all).
            LocalRequest::Ps => LocalResponse::Ps(self.queue.list(call.uid)),
            LocalRequest::Kill(job) => match self.queue.owner(job) {
                None => LocalResponse::Error(format!("no task {job} here (see `herd ps`)")),
                Some(uid) if uid != call.uid && call.uid != 0 => LocalResponse::Error(format!(
                    "task {job} belongs to uid {uid}; only it or root may kill it"
                )),
                Some(_) => {
                    if let Some(p) = self.queue.take(job) {
                        tokio::spawn(task::refuse(
                            p.cli,
                            "the task was killed before it started (herd kill)".into(),
                        ));
                        LocalResponse::Done
                    } else if self.queue.kill(job) {
                        LocalResponse::Done
                    } else {
                        LocalResponse::Error(format!(
                            "task {job} runs on this machine in its herd run process, or is already ending: signal that process instead"
                        ))
                    }
                }
            },
            LocalRequest::Drain { node, drain } => {
                // A per-user agent's socket is its user's alone; the system agent's is
                // open to every local user, who may not drain nodes through it.
                if call.uid != 0 && self.dir.is_system() {
                    let _ = call.reply.send(LocalResponse::Error(
                        "only root may drain nodes through the system agent".into(),
                    ));
                    return;
                }
                if node == self.me.name {
                    self.shared
                        .drained
                        .store(drain, std::sync::atomic::Ordering::SeqCst);
                    self.report_load(true);
                    LocalResponse::Done
                } else {
                    let Some(addr) = self
                        .membership
                        .nodes()
                        .iter()
                        .find(|n| n.id.name == node && n.state == NodeState::Alive)
                        .map(|n| n.id.addr)
                    else {
                        let _ = call.reply.send(LocalResponse::Error(format!(
                            "no alive node named {node:?}"
                        )));
                        return;
                    };
                    let conn = self.conns.get(&addr).and_then(|c| c.conn.clone());
                    let endpoint = self.endpoint.clone();
                    tokio::spawn(async move {
                        let resp = drain_peer(endpoint, conn, addr, &node, drain).await;
                        let _ = call.reply.send(match resp {
                            Ok(()) => LocalResponse::Done,
                            Err(e) => LocalResponse::Error(format!("{node}: {e}")),
                        });
                    });
                    return;
                }
            }
            LocalRequest::Revoke { node, remove } => {
                // Root, or the user the agent runs as (whose state directory holds the
                // CA key): nobody else may revoke through this socket.
                let me = rustix::process::geteuid().as_raw();
                if call.uid != 0 && call.uid != me {
                    let _ = call.reply.send(LocalResponse::Error(
                        "only root or the agent's own user may revoke or remove nodes".into(),
                    ));
                    return;
                }
                if !self.is_ca {
                    let _ = call
                        .reply
                        .send(LocalResponse::Error(AgentError::NotCa.to_string()));
                    return;
                }
                let (dir, events) = (self.dir.clone(), self.events.clone());
                tokio::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || {
                        admin::revoke_node(&dir, &node, remove)
                    })
                    .await
                    .unwrap_or_else(|e| Err(AgentError::Net(e.to_string())));
                    let _ = events
                        .send(Event::Revoked {
                            result,
                            reply: call.reply,
                        })
                        .await;
                });
                return;
            }
            LocalRequest::Status => LocalResponse::Status(AgentStatus {
                name: self.me.name.clone(),
                cluster: self.cluster.clone(),
                addr: self.me.addr,
                roles: self.roles.iter().map(|r| r.as_str().to_string()).collect(),
                uptime_secs: self.started.elapsed().as_secs_f64(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                tasks_submitted: self
                    .shared
                    .tasks
                    .submitted
                    .load(std::sync::atomic::Ordering::Relaxed),
                fs_requests: self
                    .shared
                    .tasks
                    .fs_requests
                    .load(std::sync::atomic::Ordering::Relaxed),
                queued: self.queue.waiting() as u32,
                running: self.queue.running() as u32,
                hosting: self.shared.helper.task_count(),
                mode: match self.policy.mode() {
                    polite::Mode::Waiting => "waiting",
                    polite::Mode::Running => "running",
                    polite::Mode::Suspended { .. } => "suspended",
                }
                .to_string(),
                owner_load: self.policy.owner_cores().unwrap_or(0.0),
                cert_expires: self.cert.not_after,
                revocations: self.revocations.version(),
            }),
        };
        let _ = call.reply.send(resp);
    }

    /// Whether `n` executes tasks: its certificate says so (when known), its load
    /// report (when one arrived) says it can run them now, and it grants cores.
    fn is_exec(&self, n: &herd_membership::NodeView) -> bool {
        if self.is_revoked(&n.id.name) {
            return false;
        }
        if n.id.name == self.me.name {
            return self.roles.contains(&Role::Exec) && self.grant.cpus > 0.0;
        }
        let cert = self
            .cert_roles
            .get(&n.id.name)
            .is_none_or(|r| r.contains(&Role::Exec));
        // Before its first load report arrives, trust the certificate: the helper
        // itself refuses a task it cannot run, saying why.
        let ready = n
            .load
            .as_ref()
            .is_none_or(|l| l.roles.iter().any(|r| r == "exec") && l.cpus > 0.0);
        cert && ready
    }

    /// Checks `herd run --on NAME` before queueing the task.
    fn check_pin(&self, name: &str) -> Result<(), String> {
        let nodes = self.membership.nodes();
        let n = nodes.iter().find(|n| n.id.name == name);
        if self.is_revoked(name) {
            return Err(format!(
                "node {name} was revoked (`herd revoke`): every node refuses it, and it runs no task"
            ));
        }
        let n = n.ok_or_else(|| format!("no node named {name:?} in the cluster"))?;
        if n.state != NodeState::Alive {
            return Err(format!("node {name} is {:?}, not alive", n.state).to_lowercase());
        }
        if !self.is_exec(n) {
            return Err(if n.id.name == self.me.name {
                format!("this node ({name}) lends no cores to herd (no exec role, or --cpus 0)")
            } else {
                format!(
                    "node {name} does not execute tasks (no exec role, or it cannot run sandboxes: see its log)"
                )
            });
        }
        Ok(())
    }

    /// The cluster as placement sees it.
    fn sched_nodes(&self, members: &[herd_membership::NodeView]) -> Vec<herd_sched::Node> {
        members
            .iter()
            .filter(|n| n.state.is_active())
            .map(|n| {
                let local = n.id.name == self.me.name;
                let load = n.load.clone().unwrap_or_default();
                // The owner's load leaves out herd's own CPU, here that of the `herd
                // run` and `herd map` processes running tasks placed on this node (the
                // meter's local clients): nothing to take off again.
                let (cpus, speed, owner_load) = if local {
                    (self.grant.cpus, self.speed, load.owner_load)
                } else {
                    // A peer's claimed speed, scaled by what its run times showed.
                    let measured = self.queue.est.speed_factor(&n.id.name);
                    (load.cpus, load.speed * measured, load.owner_load)
                };
                herd_sched::Node {
                    accepting: n.state == NodeState::Alive
                        && self.is_exec(n)
                        // The workstation's own policy guards helpers' tasks, not the
                        // submitter's own work run here.
                        && (local || (!load.draining && n.load.is_some())),
                    others: if local {
                        0
                    } else {
                        self.queue.others_on(&n.id.name, load.tasks)
                    },
                    running: self.queue.running_on(&n.id.name),
                    warm: self.queue.warm(&n.id.name),
                    name: n.id.name.clone(),
                    local,
                    cpus,
                    speed: if speed > 0.0 { speed } else { 1.0 },
                    owner_load,
                    mem_free: load.mem_free,
                }
            })
            .collect()
    }

    /// Runs placement over the queue and starts what it assigns. A task no node could
    /// ever run (none alive with cores to lend, all avoided) fails at once; the others
    /// wait for a slot.
    fn schedule(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        // Read membership once per call: the placement view, alive exec nodes and every
        // node's address.
        let members = self.membership.nodes();
        let nodes = self.sched_nodes(&members);
        let exec_alive: std::collections::HashSet<&str> = members
            .iter()
            .filter(|n| n.state == NodeState::Alive && self.is_exec(n))
            .map(|n| n.id.name.as_str())
            .collect();
        let addrs: HashMap<&str, SocketAddr> = members
            .iter()
            .map(|n| (n.id.name.as_str(), n.id.addr))
            .collect();
        let hopeless: Vec<u64> = self
            .queue
            .pending()
            .filter(|p| {
                !nodes.iter().any(|n| {
                    exec_alive.contains(n.name.as_str())
                        && !p.avoid.contains(&n.name)
                        && p.spec.on.as_deref().is_none_or(|on| on == n.name)
                        && (!n.local || p.spec.local_ok)
                })
            })
            .map(|p| p.job)
            .collect();
        for job in hopeless {
            if let Some(p) = self.queue.take(job) {
                self.metrics.task_unplaceable();
                let msg = if p.avoid.is_empty() {
                    "no helper is available: `herd nodes` shows none alive with the exec role"
                        .to_string()
                } else {
                    format!(
                        "the task was lost on {} and no other node can run it; nothing of it was committed",
                        p.avoid.join(", ")
                    )
                };
                tokio::spawn(task::refuse(p.cli, msg));
            }
        }
        let jobs = self.queue.jobs();
        if jobs.is_empty() {
            return;
        }
        let params = herd_sched::Params::default();
        let placed = herd_sched::place(&nodes, &jobs, &self.queue.est, &params);
        if tracing::enabled!(tracing::Level::DEBUG) && placed.len() < jobs.len() {
            // Why work waits while a slot is free: what placement saw.
            let idle: Vec<String> = nodes
                .iter()
                .filter(|n| n.free_slots() > 0 && !placed.iter().any(|a| a.node == n.name))
                .map(|n| {
                    format!(
                        "{} accepting={} cpus={} owner={:.2} others={} running={} rate={:.3}",
                        n.name,
                        n.accepting,
                        n.cpus,
                        n.owner_load,
                        n.others,
                        n.running.len(),
                        n.slot_rate()
                    )
                })
                .collect();
            if !idle.is_empty() {
                let exe = &jobs[0].exe;
                tracing::debug!(
                    queued = jobs.len() - placed.len(),
                    estimate = ?self.queue.est.estimate(exe),
                    spread = ?self.queue.est.spread(exe),
                    idle = idle.join("; "),
                    "placement leaves free slots idle"
                );
            }
        }
        for a in placed {
            let Some(p) = self.queue.take(a.job) else {
                continue;
            };
            let Some(n) = nodes.iter().find(|n| n.name == a.node) else {
                self.queue.push_front(p);
                continue;
            };
            let rate = n.slot_rate();
            // A run that fetches the executable first, or on a slot the owner's load
            // slowed by an uncertain amount, says little about the job's work.
            let sure = n.is_warm(&p.exe) && n.effective_cpus() >= 0.9 * n.cpus;
            let lost = self.queue.start(&p, &n.name, n.local, rate, sure);
            let (job, events) = (p.job, self.events.clone());
            if n.local {
                // The client runs it: its CPU is herd's, not the owner's.
                if let Some(pid) = p.caller.pid.and_then(|p| u32::try_from(p).ok()) {
                    self.local_clients.add(pid);
                }
                let node = n.name.clone();
                let mut attempt = self.metrics.attempt(&node, p.since);
                tokio::spawn(async move {
                    let completed = task::run_local(p.cli, node).await;
                    if completed {
                        attempt.finished();
                    }
                    let _ = events
                        .send(Event::JobEnded {
                            job,
                            end: JobEnd::Done { completed },
                        })
                        .await;
                });
                continue;
            }
            let Some(&addr) = addrs.get(n.name.as_str()) else {
                self.queue.end(job, false);
                self.queue.push_front(p);
                continue;
            };
            // Only a connection whose certificate names the node placement chose.
            let conn = self
                .conns
                .get(&addr)
                .and_then(|c| c.conn.clone())
                .filter(|c| net::peer_is(c, &n.name));
            let fut = task::run_remote(
                p,
                (n.name.clone(), addr, conn),
                lost,
                self.endpoint.clone(),
                self.shared.tasks.clone(),
            );
            tokio::spawn(async move {
                let end = fut.await;
                let _ = events.send(Event::JobEnded { job, end }).await;
            });
        }
    }

    fn node_infos(&self) -> Vec<NodeInfo> {
        let now = self.now();
        let mut out: Vec<NodeInfo> = self
            .membership
            .nodes()
            .into_iter()
            .map(|n| {
                let load = n.load.clone().unwrap_or_default();
                let roles = match self.cert_roles.get(&n.id.name) {
                    Some(r) if n.id.name != self.me.name => {
                        r.iter().map(|r| r.as_str().to_string()).collect()
                    }
                    _ => load.roles.clone(),
                };
                let revoked = self.is_revoked(&n.id.name);
                NodeInfo {
                    local: n.id.name == self.me.name,
                    name: n.id.name.clone(),
                    addr: n.id.addr,
                    state: match n.state {
                        _ if revoked => MemberState::Revoked,
                        NodeState::Alive => MemberState::Alive,
                        NodeState::Suspect => MemberState::Suspect,
                        NodeState::Dead => MemberState::Dead,
                        NodeState::Left => MemberState::Left,
                    },
                    roles,
                    cpus: load.cpus,
                    load: load.load,
                    owner_load: load.owner_load,
                    mem_free: load.mem_free,
                    mem_total: load.mem_total,
                    speed: load.speed,
                    tasks: load.tasks,
                    incarnation: n.id.bump,
                    since_secs: now.saturating_sub(n.since).as_secs_f64(),
                    accepting: n.state == NodeState::Alive
                        && self.is_exec(&n)
                        && !load.draining
                        && !revoked,
                    drained: load.drained,
                    cache_hits: load.cache_hits,
                    cache_misses: load.cache_misses,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    async fn leave(&mut self) {
        tracing::info!("leaving the cluster");
        let now = self.now();
        self.membership.leave(now);
        self.flush();
        // Give the datagrams a moment to leave, then close connections politely.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.endpoint.close(0u32.into(), b"leaving");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Asks the node at `addr` to drain or undrain.
async fn drain_peer(
    endpoint: quinn::Endpoint,
    conn: Option<quinn::Connection>,
    addr: SocketAddr,
    node: &str,
    drain: bool,
) -> Result<(), String> {
    let conn = net::reuse_or_connect(&endpoint, conn, addr, node)
        .await
        .map_err(|e| e.to_string())?;
    match net::request::<_, PeerResponse>(&conn, &PeerRequest::Drain(drain)).await {
        Ok(PeerResponse::Pong { .. }) => Ok(()),
        Ok(PeerResponse::Error(e)) => Err(e.message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn connect(shared: Arc<Shared>, addr: SocketAddr, events: mpsc::Sender<Event>) {
    let attempt = async {
        let conn = shared
            .endpoint
            .connect(addr, herd_pki::SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| {
                shared.note_refusal(&addr.to_string(), &e);
                net::explain(&e)
            })?;
        let peer = net::peer_of(&conn).ok_or("peer presented no certificate")?;
        Ok::<_, String>((conn, peer))
    };
    match tokio::time::timeout(net::CONNECT_TIMEOUT, attempt).await {
        Ok(Ok((conn, peer))) => {
            spawn_readers(conn.clone(), addr, peer.clone(), events.clone(), shared);
            let _ = events.send(Event::Connected { addr, conn, peer }).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(%addr, "connection failed: {e}");
            let _ = events.send(Event::ConnectFailed { addr }).await;
        }
        Err(_) => {
            let _ = events.send(Event::ConnectFailed { addr }).await;
        }
    }
}

/// What the tasks serving connections share (read-only, or internally synchronised).
struct Shared {
    /// The certificate every handshake presents and the keys it refuses.
    trust: Trust,
    /// The revocation list held (what a peer asking gets); each connection's watcher
    /// closes it when a new one lists its peer's key.
    lists: watch::Sender<Option<Arc<SignedRevocations>>>,
    /// When a peer's refusal of our certificate was last logged.
    refused_logged: std::sync::Mutex<Option<Instant>>,
    me: String,
    endpoint: quinn::Endpoint,
    dir: Arc<StateDir>,
    peers: watch::Receiver<Vec<SocketAddr>>,
    tasks: Arc<Tasks>,
    helper: Arc<HelperCtx>,
    /// `herd drain`: take no new work.
    drained: std::sync::atomic::AtomicBool,
    /// Serves tasks in place of the sandbox (tests; see [`AgentOptions::run_hook`]).
    run_hook: Option<RunHook>,
    /// Enrollments, rate-limited per source address (CA node).
    enroll_gate: Arc<enroll::Gate>,
    /// Connections accepted per IP address.
    conn_limit: net::ConnLimit,
}

impl Shared {
    /// Logs (at most every [`REFUSED_LOG_EVERY`]) that `peer` refused our certificate,
    /// if that is why `e` ended a connection.
    fn note_refusal(&self, peer: &str, e: &quinn::ConnectionError) {
        // Our own refusals of a peer arrive as local transport errors; the peer's
        // refusal of us as its connection close.
        if !matches!(e, quinn::ConnectionError::ConnectionClosed(_)) {
            return;
        }
        let why = match net::refusal(e) {
            Some(net::Refusal::Revoked) => format!(
                "{peer} refused this node: its certificate was revoked (`herd revoke` on the cluster's first node); to bring this host back, move its state directory away, run `herd remove {}` there, and enroll again with a token",
                self.me
            ),
            Some(net::Refusal::Expired) => format!(
                "{peer} refused this node: its certificate has expired; enroll again with `herd agent --join TOKEN`"
            ),
            _ => return,
        };
        let mut last = self
            .refused_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= REFUSED_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::error!("{why}");
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, events: mpsc::Sender<Event>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        // Held until the connection ends: at most so many per IP address.
        let Some(slot) = shared.conn_limit.admit(incoming.remote_address().ip()) else {
            tracing::debug!(peer = %incoming.remote_address(), "refused a connection: too many from that address");
            incoming.refuse();
            continue;
        };
        let events = events.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let remote = incoming.remote_address();
            let conn = match tokio::time::timeout(net::CONNECT_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::warn!(peer = %remote, "rejected a connection: {e}");
                    return;
                }
                Err(_) => return,
            };
            match net::peer_of(&conn) {
                Some(peer) => {
                    let open = conn.clone();
                    spawn_readers(conn.clone(), remote, peer.clone(), events.clone(), shared);
                    let _ = events
                        .send(Event::Connected {
                            addr: remote,
                            conn,
                            peer,
                        })
                        .await;
                    open.closed().await;
                }
                None => serve_unauthenticated(conn, shared).await,
            }
        });
    }
}

/// A connection without a client certificate may enroll, once, and nothing else.
async fn serve_unauthenticated(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    let work = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let req: PeerRequest = net::read_frame(&mut recv)
            .await
            .map_err(|e| e.to_string())?;
        let peers = shared.peers.borrow().clone();
        let dir = shared.dir.clone();
        let gate = shared.enroll_gate.clone();
        let resp = tokio::task::spawn_blocking(move || gate.serve(&dir, req, peers, remote))
            .await
            .map_err(|e| e.to_string())?;
        net::write_frame(&mut send, &resp)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let _ = send.stopped().await;
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(peer = %remote, "enrollment connection failed: {e}"),
        Err(_) => tracing::warn!(peer = %remote, "enrollment connection timed out"),
    }
    conn.close(0u32.into(), b"done");
}

/// Reads a connection's datagrams (membership) and serves its requests, whichever
/// side opened it.
fn spawn_readers(
    conn: quinn::Connection,
    addr: SocketAddr,
    peer: PeerCert,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
) {
    let id = conn.stable_id();
    // Closes the connection as soon as a revocation list lists its peer's key.
    {
        let (conn, shared) = (conn.clone(), shared.clone());
        let mut lists = shared.lists.subscribe();
        let key = net::peer_key(&conn);
        let name = peer.name.clone();
        tokio::spawn(async move {
            loop {
                if key.as_ref().is_some_and(|k| shared.trust.is_revoked(k)) {
                    tracing::info!(peer = %name, "closing a connection: the peer's certificate was revoked");
                    conn.close(5u32.into(), b"certificate revoked");
                    return;
                }
                tokio::select! {
                    changed = lists.changed() => if changed.is_err() { return },
                    _ = conn.closed() => return,
                }
            }
        });
    }
    let c = conn.clone();
    let name = peer.name.clone();
    let ev = events.clone();
    let sh = shared.clone();
    tokio::spawn(async move {
        while let Ok(data) = c.read_datagram().await {
            // The sender a packet claims must be the node its certificate names; a
            // packet that does not even decode closes this connection (only).
            match Membership::peek_sender(&data) {
                Ok(sender) if sender.name == name => {}
                Ok(sender) => {
                    tracing::warn!(cert = %name, claimed = %sender.name,
                        "closing a connection whose packets claim another node's name");
                    c.close(2u32.into(), b"sender does not match certificate");
                    break;
                }
                Err(e) => {
                    tracing::warn!(peer = %name, "closing a connection that sent a malformed packet: {e}");
                    c.close(2u32.into(), b"malformed packet");
                    break;
                }
            }
            if ev
                .send(Event::Datagram {
                    name: name.clone(),
                    data,
                })
                .await
                .is_err()
            {
                break;
            }
        }
        if let Some(e) = c.close_reason() {
            sh.note_refusal(&name, &e);
        }
        let _ = ev.send(Event::Closed { addr, id }).await;
    });
    tokio::spawn(async move {
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(serve_stream(
                conn.clone(),
                peer.clone(),
                send,
                recv,
                shared.clone(),
            ));
        }
    });
}

/// Serves one request stream from an authenticated peer.
async fn serve_stream(
    conn: quinn::Connection,
    peer: PeerCert,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
) {
    let req = match net::read_request::<PeerRequest>(&mut recv).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = %peer.name, "closing a connection that sent a bad request: {e}");
            conn.close(3u32.into(), b"malformed frame");
            return;
        }
    };
    if let Some(role) = req.required_role()
        && !peer.has(role)
    {
        tracing::warn!(peer = %peer.name, role = role.as_str(), "refused a request the peer's roles do not allow");
        let message = format!(
            "node {} lacks the {} role this request needs (its certificate grants: {})",
            peer.name,
            role.as_str(),
            Role::join(&peer.roles)
        );
        let _ = match req {
            // A task's stream speaks TaskOutput.
            PeerRequest::Run { .. } => {
                net::write_frame(
                    &mut send,
                    &herd_proto::TaskOutput::Failed { message, code: 255 },
                )
                .await
            }
            _ => {
                let resp = PeerResponse::Error(RemoteError {
                    kind: RemoteErrorKind::Forbidden,
                    message,
                });
                net::write_frame(&mut send, &resp).await
            }
        };
        let _ = send.finish();
        let _ = send.stopped().await;
        return;
    }
    match req {
        PeerRequest::Drain(drain) => {
            tracing::info!(by = %peer.name, drain, "asked to drain or undrain");
            shared
                .drained
                .store(drain, std::sync::atomic::Ordering::SeqCst);
            let _ = net::write_frame(
                &mut send,
                &PeerResponse::Pong {
                    name: shared.me.clone(),
                },
            )
            .await;
        }
        PeerRequest::Ping => {
            let _ = net::write_frame(
                &mut send,
                &PeerResponse::Pong {
                    name: shared.me.clone(),
                },
            )
            .await;
        }
        PeerRequest::Enroll { .. } => {
            let resp = PeerResponse::Error(RemoteError {
                kind: RemoteErrorKind::BadRequest,
                message: "this node is already enrolled".into(),
            });
            let _ = net::write_frame(&mut send, &resp).await;
        }
        PeerRequest::Fs { task, req } => {
            let resp = shared.tasks.serve_fs(&peer.name, task, req).await;
            let _ = net::write_frame(&mut send, &resp).await;
        }
        PeerRequest::Revocations => {
            let list = shared.lists.borrow().as_deref().cloned();
            let _ = net::write_frame(&mut send, &PeerResponse::Revocations(list)).await;
        }
        PeerRequest::Renew { csr_der } => {
            let resp = match net::peer_cert_der(&conn) {
                Some(cert) => {
                    let dir = shared.dir.clone();
                    let peer = peer.clone();
                    tokio::task::spawn_blocking(move || {
                        crate::renew::serve_renew(&dir, &peer, &cert, &csr_der)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        PeerResponse::Error(RemoteError {
                            kind: RemoteErrorKind::Unavailable,
                            message: format!("renewal failed: {e}"),
                        })
                    })
                }
                None => PeerResponse::Error(RemoteError {
                    kind: RemoteErrorKind::Forbidden,
                    message: "no certificate".into(),
                }),
            };
            let _ = net::write_frame(&mut send, &resp).await;
        }
        PeerRequest::Run { task, spec } => {
            if let Some(hook) = &shared.run_hook {
                let call = RunCall {
                    conn,
                    peer,
                    send,
                    recv,
                    task,
                    spec,
                };
                (hook.0)(call).await;
                return;
            }
            task::serve_run(conn, peer, send, recv, task, spec, shared.helper.clone()).await;
            return;
        }
    }
    let _ = send.finish();
}
