//! Running a task: the workstation's side ([`run_from_cli`], [`Tasks`]) and the
//! helper's ([`serve_run`]).
//!
//! ```text
//!  herd run ──unix──▶ workstation agent ──QUIC stream──▶ helper agent
//!     ▲  stdin, signals   │  Run{task, spec}, TaskInput…     │ FUSE view ◀─ Fs questions
//!     │                   ◀── TaskOutput: Started, Stdout, Stderr, Exited, Change, Data, Done
//!     └── RunEvent: Output…, Conflicts, Exit(code)          │ sandbox (overlay upper)
//! ```
//!
//! The helper mounts a read-only FUSE view of the workstation whose questions go back
//! over the same connection (`PeerRequest::Fs`, answered by the submitter's file
//! service, and only for the node the task was sent to), runs the command in a sandbox
//! whose writes land in an overlay upper layer, relays stdio, and when the task's tree
//! has exited sends the exit code and then every change. The workstation commits them
//! through a commit process running as the submitter, and only then tells `herd run`
//! the exit code. If the stream breaks first, the commit is aborted: nothing of the
//! task reaches the workstation, and the helper kills the task's tree.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herd_fs::View;
use herd_pki::PeerCert;
use herd_proto::fs::{CommitFrame, CommitReport, FsRequest, FsResponse};
use herd_proto::{PeerRequest, RunEvent, RunSpec, TaskInput, TaskOutput, TaskSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::FramedRead;

use crate::fsserve::{FsClient, Identity, passwd_home, start_commit};
use crate::host::Grant;
use crate::metrics::{Attempt, Metrics};
use crate::{AgentError, net};

/// Bytes of a file sent per `Data` frame.
const CHUNK: usize = 256 * 1024;

/// Free space below which a finished task is taken to have filled the helper's disk.
const DISK_RESERVE: u64 = 4 << 20;

struct Entry {
    helper: String,
    fs: Arc<FsClient>,
}

/// A file service's key: the identity it acts as and the paths it hides.
type ServiceKey = (Identity, Vec<Vec<u8>>);

/// The workstation's running tasks and its per-user file services.
pub struct Tasks {
    /// Tasks sent to helpers so far.
    pub submitted: std::sync::atomic::AtomicU64,
    /// File questions answered so far.
    pub fs_requests: std::sync::atomic::AtomicU64,
    /// The agent's metrics.
    pub metrics: Arc<Metrics>,
    exe: PathBuf,
    extra_hidden: Vec<Vec<u8>>,
    running: Mutex<HashMap<u64, Entry>>,
    /// One file service per identity and hidden list: what a task may read is decided
    /// by its own list, never by an earlier task's.
    services: tokio::sync::Mutex<HashMap<ServiceKey, Arc<FsClient>>>,
}

impl Tasks {
    /// `exe` is herd's own binary; `extra_hidden` are paths hidden from every task
    /// (herd's state directories) besides each user's secrets.
    pub fn new(exe: PathBuf, extra_hidden: Vec<Vec<u8>>, metrics: Arc<Metrics>) -> Self {
        Tasks {
            submitted: Default::default(),
            fs_requests: Default::default(),
            metrics,
            exe,
            extra_hidden,
            running: Mutex::new(HashMap::new()),
            services: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The secret paths of `uid`, hidden from its tasks: under its home directory in
    /// `/etc/passwd` and under `env_home` (the `HOME` it runs with), when they differ.
    ///
    /// `/etc/passwd` is read directly rather than through NSS: a statically linked herd
    /// must not load the host's NSS modules, and a user NSS does not list (LDAP, say)
    /// is still covered through its `HOME`.
    pub fn hidden_for(&self, uid: u32, env_home: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut out = self.extra_hidden.clone();
        let mut homes: Vec<PathBuf> = Vec::new();
        if let Some(h) = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| passwd_home(&p, uid))
        {
            homes.push(h);
        }
        if let Some(h) = env_home.filter(|h| h.starts_with(b"/")) {
            let h = PathBuf::from(OsString::from_vec(h.to_vec()));
            if !homes.contains(&h) {
                homes.push(h);
            }
        }
        for home in homes {
            for rel in SECRET_DIRS {
                let mut p = home.as_os_str().as_bytes().to_vec();
                p.push(b'/');
                p.extend_from_slice(rel.as_bytes());
                out.push(p);
            }
        }
        // The user's runtime directory (sockets of its agents and session bus). Its
        // name comes from the uid, never from the request.
        out.push(format!("/run/user/{uid}/").into_bytes());
        out
    }

    async fn service(
        &self,
        id: &Identity,
        hidden: &[Vec<u8>],
    ) -> Result<Arc<FsClient>, AgentError> {
        let key = (id.clone(), hidden.to_vec());
        let mut s = self.services.lock().await;
        if let Some(c) = s.get(&key) {
            return Ok(c.clone());
        }
        // A service whose hidden list no running task uses any more is stopped (its
        // process ends with its last handle), so the map holds few.
        if let Ok(running) = self.running.lock() {
            s.retain(|_, c| running.values().any(|e| Arc::ptr_eq(&e.fs, c)));
        }
        let c = Arc::new(FsClient::start(&self.exe, id, hidden).await?);
        s.insert(key, c.clone());
        Ok(c)
    }

    /// Answers a file question from `peer` for `task`: only the node the task was sent
    /// to may ask, and only while it runs.
    pub async fn serve_fs(&self, peer: &str, task: u64, req: FsRequest) -> FsResponse {
        self.fs_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.fs_request(&req);
        tracing::trace!(%peer, task = format!("{task:016x}"), ?req, "file question");
        let fs = {
            let Ok(running) = self.running.lock() else {
                return FsResponse::Errno(libc::EIO);
            };
            match running.get(&task) {
                Some(e) if e.helper == peer => e.fs.clone(),
                _ => return FsResponse::Errno(libc::EACCES),
            }
        };
        let resp = fs.call(req).await;
        self.metrics.fs_answered(&resp);
        resp
    }
}

/// Secret paths under each user's home, hidden from tasks by default: never served,
/// never written. Directories end with `/` (a sandbox covers an absent one with an
/// empty directory, an absent file with an empty file).
pub const SECRET_DIRS: &[&str] = &[
    // Keys and agents.
    ".ssh/",
    ".gnupg/",
    ".local/share/keyrings/",
    ".password-store/",
    // herd's own identity, configuration and commit logs.
    ".config/herd/",
    ".local/share/herd/",
    ".local/state/herd/",
    // Credentials of tools and clouds.
    ".netrc",
    ".git-credentials",
    ".config/git/credentials",
    ".config/gh/",
    ".config/hub",
    ".npmrc",
    ".yarnrc",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".docker/config.json",
    ".config/containers/auth.json",
    ".kube/",
    ".aws/",
    ".azure/",
    ".config/gcloud/",
    ".oci/",
    ".vault-token",
    ".terraform.d/credentials.tfrc.json",
    // Browser profiles (cookies, saved passwords).
    ".mozilla/",
    ".thunderbird/",
    ".config/google-chrome/",
    ".config/chromium/",
    ".config/BraveSoftware/",
    ".config/microsoft-edge/",
    ".config/vivaldi/",
];

/// Who asked: from the Unix socket's credentials.
#[derive(Clone, Debug)]
pub struct Caller {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// pid (to read its supplementary groups where the socket did not give them).
    pub pid: Option<i32>,
    /// Supplementary groups, from the socket.
    pub groups: Option<Vec<u32>>,
}

fn groups_of(pid: Option<i32>) -> Vec<u32> {
    let Some(pid) = pid else { return vec![] };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return vec![];
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

use crate::queue::{Cli, Halt, JobEnd, Pending};

async fn send_event(cli: &mut Cli, ev: &RunEvent) -> bool {
    match herd_proto::encode(ev) {
        Ok(b) => cli.send(b).await.is_ok(),
        Err(_) => false,
    }
}

/// Tells a client its task cannot run, and ends it.
pub async fn refuse(mut cli: Cli, message: String) {
    let _ = send_event(&mut cli, &RunEvent::Error(message)).await;
}

/// Runs a task that placement sent to the workstation itself: `herd run` runs it
/// directly (see [`crate::client`]) and reports its exit; true when it ran to its end.
pub async fn run_local(mut cli: Cli, node: String) -> bool {
    if !send_event(&mut cli, &RunEvent::RunHere { node }).await {
        return false;
    }
    while let Some(frame) = cli.next().await {
        let Ok(frame) = frame else { return false };
        if let Ok(TaskInput::LocalDone(_)) = herd_proto::decode::<TaskInput>(&frame) {
            return true;
        }
    }
    false
}

/// Why a remote attempt ended without an exit code.
enum Stop {
    /// The node was lost, or evicted the task: nothing was committed; it may run again.
    Lost(String),
    /// It cannot go on (herd run went away, a commit failed, ...).
    Fatal(String),
}

/// Drives one task sent to the helper `name` until it ends, or its node is lost
/// (`lost` fires, the stream breaks, or the helper evicts it). A lost task is handed
/// back for a re-run when it has retries left and has not consumed stdin.
pub async fn run_remote(
    mut p: Pending,
    helper: (String, std::net::SocketAddr, Option<quinn::Connection>),
    halt: tokio::sync::oneshot::Receiver<Halt>,
    endpoint: quinn::Endpoint,
    tasks: Arc<Tasks>,
) -> JobEnd {
    let task: u64 = rand::random();
    tasks
        .submitted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (name, addr, conn) = helper;
    let mut attempt = tasks.metrics.attempt(&name, p.since);
    if !send_event(&mut p.cli, &RunEvent::Placed { node: name.clone() }).await {
        return JobEnd::Done { completed: false };
    }
    let mut stdin_used = false;
    let result = drive(
        &mut p.cli,
        p.since,
        p.spec.clone(),
        p.caller.clone(),
        &name,
        addr,
        conn,
        endpoint,
        &tasks,
        task,
        halt,
        &mut stdin_used,
        &mut attempt,
    )
    .await;
    if let Ok(mut r) = tasks.running.lock() {
        r.remove(&task);
    }
    let ev = match result {
        Ok(code) => {
            let _ = send_event(&mut p.cli, &RunEvent::Exit(code)).await;
            return JobEnd::Done { completed: true };
        }
        Err(Stop::Lost(reason)) if p.retries_left > 0 && !stdin_used => {
            tracing::info!(node = %name, "{reason}; running the task again");
            if !send_event(
                &mut p.cli,
                &RunEvent::Retrying {
                    node: name.clone(),
                    reason,
                },
            )
            .await
            {
                return JobEnd::Done { completed: false };
            }
            attempt.retried();
            return JobEnd::Requeue {
                pending: Box::new(p),
                node: name,
            };
        }
        Err(Stop::Lost(reason)) if stdin_used && p.retries_left > 0 => RunEvent::Error(format!(
            "{reason}; nothing of the task was committed, and it cannot run again because it already read its input"
        )),
        Err(Stop::Lost(reason)) => {
            RunEvent::Error(format!("{reason}; nothing of the task was committed"))
        }
        Err(Stop::Fatal(e)) => RunEvent::Error(e),
    };
    let _ = send_event(&mut p.cli, &ev).await;
    JobEnd::Done { completed: false }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    cli: &mut Cli,
    since: std::time::Instant,
    spec: RunSpec,
    caller: Caller,
    name: &str,
    addr: std::net::SocketAddr,
    conn: Option<quinn::Connection>,
    endpoint: quinn::Endpoint,
    tasks: &Tasks,
    task: u64,
    mut halt: tokio::sync::oneshot::Receiver<Halt>,
    stdin_used: &mut bool,
    attempt: &mut Attempt,
) -> Result<i32, Stop> {
    let id = Identity {
        uid: caller.uid,
        gid: caller.gid,
        groups: caller
            .groups
            .clone()
            .unwrap_or_else(|| groups_of(caller.pid)),
    };
    let env_home = spec
        .env
        .iter()
        .find(|(k, _)| k == b"HOME")
        .map(|(_, v)| v.clone());
    let mut hidden = tasks.hidden_for(caller.uid, env_home.as_deref());
    // The runtime directory the task's environment names, when it is not the usual one.
    if let Some((_, d)) = spec.env.iter().find(|(k, _)| k == b"XDG_RUNTIME_DIR")
        && d.starts_with(b"/")
    {
        let mut d = d.clone();
        while d.len() > 1 && d.ends_with(b"/") {
            d.pop();
        }
        d.push(b'/');
        if !hidden.contains(&d) {
            hidden.push(d);
        }
    }
    hidden.extend(spec.hide.iter().cloned());
    let fs = tasks
        .service(&id, &hidden)
        .await
        .map_err(|e| Stop::Fatal(format!("cannot start the file service: {e}")))?;
    if let Ok(mut r) = tasks.running.lock() {
        r.insert(
            task,
            Entry {
                helper: name.to_string(),
                fs,
            },
        );
    }
    let unreachable = |e: String| Stop::Lost(format!("cannot reach the helper {name} ({e})"));
    // Only to the node placement chose: a connection whose certificate names another
    // node (an address taken over) is closed, and the task goes nowhere.
    let conn = net::reuse_or_connect(&endpoint, conn, addr, name)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let lost_msg = |e: String| Stop::Lost(format!("lost the helper {name} ({e})"));
    let (mut send, recv) = conn.open_bi().await.map_err(|e| lost_msg(e.to_string()))?;
    // The task may write below its working directory and the directories it was
    // given (`--writes`, `[run] writable`), nowhere hidden: the committer checks,
    // whatever the helper sends.
    let commit_args = crate::fsserve::CommitArgs {
        writes: std::iter::once(&spec.cwd)
            .chain(&spec.writes)
            .map(|w| PathBuf::from(std::ffi::OsStr::from_bytes(w)))
            .collect(),
        hide: hidden
            .iter()
            .map(|h| PathBuf::from(std::ffi::OsStr::from_bytes(h)))
            .collect(),
        ..Default::default()
    };
    let req = PeerRequest::Run {
        task,
        spec: TaskSpec {
            run: spec,
            uid: id.uid,
            gid: id.gid,
            groups: id.groups.clone(),
            hidden,
        },
    };
    net::write_frame(&mut send, &req)
        .await
        .map_err(|e| lost_msg(e.to_string()))?;
    let ms = |t: std::time::Duration| t.as_secs_f64() * 1e3;
    let (sent_ms, mut started_ms, mut exited_ms) = (ms(since.elapsed()), 0.0, 0.0);
    let mut from_helper = FramedRead::new(recv, herd_proto::codec());
    let mut code: Option<i32> = None;
    let mut commit: Option<(
        tokio::process::Child,
        tokio_util::codec::FramedWrite<tokio::process::ChildStdin, herd_proto::Codec>,
    )> = None;
    let fatal = Stop::Fatal;
    let result = async { loop {
        tokio::select! {
            why = &mut halt => {
                // The node is gone or the task is killed: give it up (resetting the
                // stream makes the helper, or one that comes back, kill it); a commit
                // in progress is aborted.
                let _ = send.reset(2u32.into());
                return Err(match why {
                    Ok(Halt::Lost(why)) => Stop::Lost(format!("lost the helper {name} ({why})")),
                    Ok(Halt::Kill) => Stop::Fatal(format!(
                        "the task was killed on {name} (herd kill); nothing of it was committed"
                    )),
                    Err(_) => Stop::Fatal("the agent gave the task up".into()),
                });
            }
            frame = from_helper.next() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return Err(lost_msg(e.to_string())),
                    None => return Err(lost_msg("stream closed".into())),
                };
                let out: TaskOutput = herd_proto::decode(&frame).map_err(|e| lost_msg(e.to_string()))?;
                match out {
                    TaskOutput::Exited { code: c } => {
                        exited_ms = ms(since.elapsed());
                        code = Some(c);
                    }
                    TaskOutput::Change(ch) => {
                        if commit.is_none() {
                            let mut child = start_commit(&tasks.exe, &id, task, &commit_args).map_err(|e| fatal(e.to_string()))?;
                            let stdin = child.stdin.take().ok_or_else(|| fatal("commit process has no stdin".into()))?;
                            commit = Some((child, tokio_util::codec::FramedWrite::new(stdin, herd_proto::codec())));
                        }
                        if let Some((_, w)) = commit.as_mut() {
                            feed(w, &CommitFrame::Change(ch)).await.map_err(fatal)?;
                        }
                    }
                    TaskOutput::Data(d) => {
                        if let Some((_, w)) = commit.as_mut() {
                            feed(w, &CommitFrame::Data(d)).await.map_err(fatal)?;
                        }
                    }
                    TaskOutput::Done => {
                        let done_ms = ms(since.elapsed());
                        if let Some((mut child, mut w)) = commit.take() {
                            feed(&mut w, &CommitFrame::Done).await.map_err(fatal)?;
                            drop(w);
                            let report = read_report(&mut child).await.map_err(fatal)?;
                            if let Some(e) = report.error {
                                return Err(fatal(format!("the task's changes could not be committed: {e}")));
                            }
                            if !report.conflicts.is_empty() {
                                send_event(cli, &RunEvent::Conflicts(report.conflicts)).await;
                            }
                            if !report.dropped.is_empty() || !report.stripped.is_empty() {
                                tracing::info!(
                                    task = format!("{task:016x}"),
                                    node = %name,
                                    dropped = report.dropped.len(),
                                    stripped = report.stripped.len(),
                                    "changes of the task not written as sent"
                                );
                                send_event(cli, &RunEvent::NotWritten {
                                    dropped: report.dropped,
                                    stripped: report.stripped,
                                })
                                .await;
                            }
                        }
                        if code.is_some() {
                            attempt.finished();
                        }
                        tracing::debug!(
                            task = format!("{task:016x}"),
                            sent_ms,
                            started_ms,
                            exited_ms,
                            done_ms,
                            committed_ms = ms(since.elapsed()),
                            "task phases on the workstation (since it was queued)"
                        );
                        return code.ok_or_else(|| lost_msg("no exit status".into()));
                    }
                    TaskOutput::Evicted { reason } => {
                        attempt.evicted();
                        return Err(Stop::Lost(format!("the helper {name} evicted the task ({reason})")));
                    }
                    TaskOutput::Failed { message, code } => {
                        send_event(cli, &RunEvent::Output(TaskOutput::Failed { message, code })).await;
                        return Ok(code);
                    }
                    // herd run has no use for it: not relayed (one wakeup less).
                    TaskOutput::Started { .. } => started_ms = ms(since.elapsed()),
                    other => {
                        if !send_event(cli, &RunEvent::Output(other)).await {
                            // herd run went away: end the task (dropping the stream resets it).
                            return Err(fatal("herd run went away".into()));
                        }
                    }
                }
            }
            input = cli.next() => {
                match input {
                    Some(Ok(frame)) => {
                        let Ok(inp) = herd_proto::decode::<TaskInput>(&frame) else { continue };
                        if matches!(&inp, TaskInput::Stdin(d) if !d.is_empty()) {
                            *stdin_used = true;
                        }
                        if net::write_frame(&mut send, &inp).await.is_err() {
                            return Err(lost_msg("stream closed".into()));
                        }
                    }
                    _ => {
                        // herd run exited: reset the stream so the helper kills the task.
                        let _ = send.reset(1u32.into());
                        return Err(fatal("herd run went away".into()));
                    }
                }
            }
        }
    } }
    .await;
    // A commit still open here did not get its `Done`: nothing of it is applied.
    if let Some((child, w)) = commit.take() {
        abort_commit(child, w).await;
    }
    result
}

/// Ends a commit process whose change set will not be complete: its input ends
/// before `Done`, so it rolls its staging back and exits. Waited for (so that nothing
/// of the task is left once `herd run` hears it failed), killed only if it hangs; a
/// killed one's staging is undone by the next commit's recovery.
async fn abort_commit(
    mut child: tokio::process::Child,
    w: tokio_util::codec::FramedWrite<tokio::process::ChildStdin, herd_proto::Codec>,
) {
    drop(w);
    if tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .is_err()
    {
        tracing::warn!("a commit process did not end within 60 s of its input: killed");
        let _ = child.kill().await;
    }
}

async fn feed(
    w: &mut tokio_util::codec::FramedWrite<tokio::process::ChildStdin, herd_proto::Codec>,
    f: &CommitFrame,
) -> Result<(), String> {
    let b = herd_proto::encode(f).map_err(|e| e.to_string())?;
    w.send(b)
        .await
        .map_err(|e| format!("commit process failed: {e}"))
}

async fn read_report(child: &mut tokio::process::Child) -> Result<CommitReport, String> {
    let stdout = child.stdout.take().ok_or("commit process has no stdout")?;
    let mut frames = FramedRead::new(stdout, herd_proto::codec());
    let frame = frames
        .next()
        .await
        .ok_or("commit process ended without a report")?
        .map_err(|e| e.to_string())?;
    let _ = child.wait().await;
    herd_proto::decode(&frame).map_err(|e| e.to_string())
}

/// Unmounts a view off the async threads.
async fn drop_view(view: Option<crate::views::LeasedView>) {
    if let Some(v) = view {
        let _ = tokio::task::spawn_blocking(move || v.close()).await;
    }
}

/// How many sandbox inits a helper keeps prepared: one for the next task, one more for
/// a task arriving before the first is replaced (making one takes about 10 ms, most of
/// it waiting for the kernel to attach it to its cgroup).
pub const PREPARED: usize = 2;

/// How many idle kept views at most have a root parked over them: each holds a
/// waiting sandbox init, its namespaces, a few empty mounts and a task directory.
pub const PARKED: usize = 2;

/// A sandbox to start a task in: a root parked over a kept view, or a prepared init.
enum Starter {
    Parked(herd_sandbox::Parked),
    Prepared(herd_sandbox::Prepared),
}

/// How long after a task the file cache's index is written to disk.
pub const INDEX_SAVE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// What the helper needs to run tasks.
pub struct HelperCtx {
    /// This node's name.
    pub name: String,
    /// herd's own binary (re-executed as the sandbox init).
    pub exe: PathBuf,
    /// Where task directories go.
    pub tasks_dir: PathBuf,
    /// What this host grants.
    pub grant: Grant,
    /// Whether this node has the exec role.
    pub exec: bool,
    /// The persistent cache of workstations' files.
    pub cache: Arc<herd_fs::cache::Cache>,
    /// Views kept mounted between tasks.
    pub views: Arc<crate::views::ViewPool>,
    /// Sandbox inits started ahead for the next tasks (see `herd_sandbox::prepare`),
    /// at most [`PREPARED`].
    pub prepared: Mutex<Vec<herd_sandbox::Prepared>>,
    /// How many inits are being prepared now.
    pub preparing: std::sync::atomic::AtomicUsize,
    /// Task directories made ahead (see [`HelperCtx::take_spare_dir`]), at most
    /// [`PREPARED`].
    pub spare_dirs: Mutex<Vec<PathBuf>>,
    /// A save of the file cache's index is scheduled (see [`HelperCtx::save_index_soon`]).
    pub index_save_due: std::sync::atomic::AtomicBool,
    /// The cgroup task groups nest under (`None`: the agent's own).
    pub cgroup_parent: Option<PathBuf>,
    /// Whether this host can run sandboxes and mount views, or why not.
    pub ready: Result<(), String>,
    /// The user-mode network stack tasks reach outward through (found by [`probe`]);
    /// `None`: tasks get loopback only.
    pub stack: Option<herd_sandbox::NetStack>,
    /// Tasks running here, for the polite policy (suspend, resume, evict).
    pub running: Mutex<HashMap<u64, HelperTask>>,
    /// The owner is busy: tasks are frozen, and a task starting now starts frozen.
    pub suspended: std::sync::atomic::AtomicBool,
    /// Signalled when a task starts or ends here (the load report says so at once).
    pub tasks_changed: tokio::sync::Notify,
    /// The agent's metrics.
    pub metrics: Arc<Metrics>,
}

/// A task running on this helper.
pub struct HelperTask {
    handle: herd_sandbox::SandboxHandle,
    cgroups: Vec<PathBuf>,
    evict: Option<tokio::sync::oneshot::Sender<String>>,
}

impl HelperCtx {
    /// The network of a task asking for `mode`: loopback only when it asks for that or
    /// this helper has no stack, outward otherwise.
    fn task_net(&self, mode: herd_proto::NetMode) -> herd_sandbox::Net {
        match (mode, &self.stack) {
            (herd_proto::NetMode::Loopback, _) | (_, None) => herd_sandbox::Net::Loopback,
            (_, Some(stack)) => herd_sandbox::Net::Outward(stack.clone()),
        }
    }

    /// The network sandboxes prepared ahead are made with: the widest a task may ask
    /// for here (a task asking for loopback only gets a namespace of its own in one
    /// from its pid 1, off the agent's way).
    fn prepared_net(&self) -> herd_sandbox::Net {
        self.task_net(herd_proto::NetMode::Default)
    }

    /// The line a task asking explicitly for an outward network gets on its stderr
    /// where there is none.
    fn net_notice(&self, mode: herd_proto::NetMode) -> Option<String> {
        (mode == herd_proto::NetMode::Outward && self.stack.is_none()).then(|| {
            format!(
                "herd: {} has no user-mode network stack (pasta or slirp4netns): the task has loopback only\n",
                self.name
            )
        })
    }

    /// The cgroup a task gets: the granted CPUs and memory.
    fn task_cgroup(&self) -> herd_sandbox::CgroupSpec {
        herd_sandbox::CgroupSpec {
            parent: self.cgroup_parent.clone(),
            name: format!("herd-task-{:016x}", rand::random::<u64>()),
            cpus: Some(f64::from(self.grant.cpus)),
            memory: Some(self.grant.memory),
        }
    }

    /// Saves the file cache's index to disk [`INDEX_SAVE_AFTER`] from now, off the
    /// tasks' critical path, unless a save is already due: back-to-back tasks share one
    /// write and replacing rename (on which ext4 starts flushing the new file) instead of
    /// one each.
    /// The agent saves it when it stops as well; a crash loses at most that much of the
    /// index (files then fetched again), never a file.
    pub fn save_index_soon(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.index_save_due.swap(true, SeqCst) {
            return;
        }
        let ctx = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(INDEX_SAVE_AFTER).await;
            ctx.index_save_due.store(false, SeqCst);
            let cache = ctx.cache.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = cache.save() {
                    tracing::warn!("cannot save the file cache's index: {e}");
                }
            })
            .await;
        });
    }

    /// Keeps a finished task's view for the next task of its key and, while fewer
    /// than [`PARKED`] idle views have one, parks a root over it: a prepared init
    /// builds it now, off any task's way. The view is back in the pool meanwhile (a
    /// task arriving then takes it as it is, and the root built is ended). Blocking.
    pub fn keep_view(self: &Arc<Self>, view: crate::views::LeasedView) {
        let lower = view.dir().to_path_buf();
        let park = self.views.keeps(&view) && self.views.parked() < PARKED;
        self.views.put_back(view);
        if !park {
            return;
        }
        let Some(p) = self.prepared.lock().ok().and_then(|mut p| p.pop()) else {
            return;
        };
        let dir = self
            .spare_dirs
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .or_else(|| self.new_spare_dir());
        if let Some(dir) = dir {
            match p.park(&lower, &dir.join("upper"), &dir.join("work")) {
                Ok(sandbox) => {
                    let root = crate::views::ParkedRoot { sandbox, dir };
                    if let Some(root) = self.views.attach_parked(&lower, root) {
                        root.end();
                    }
                }
                Err(e) => {
                    tracing::debug!("cannot park a root over a kept view: {e}");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        self.prepare_next();
    }

    /// Makes `dir` a task directory, with its empty upper and work layers, out of one
    /// made ahead: one rename instead of three `mkdir`s (each allocating an inode and a
    /// directory block) while the task waits. False if none was made ahead; the caller
    /// then makes the directories itself.
    pub fn take_spare_dir(&self, dir: &Path) -> bool {
        let Some(spare) = self.spare_dirs.lock().ok().and_then(|mut s| s.pop()) else {
            return false;
        };
        if std::fs::rename(&spare, dir).is_ok() {
            return true;
        }
        let _ = std::fs::remove_dir_all(&spare);
        false
    }

    /// Makes a task directory ahead for [`HelperCtx::take_spare_dir`], up to
    /// [`PREPARED`] of them. It is named like a task's ([`task_dir`], node `spare`), so
    /// that [`clean_task_dirs`] removes those a crash left. Blocking.
    fn make_spare_dir(&self) {
        if self.spare_dirs.lock().map_or(true, |s| s.len() >= PREPARED) {
            return;
        }
        let Some(dir) = self.new_spare_dir() else {
            return;
        };
        match self.spare_dirs.lock() {
            Ok(mut s) if s.len() < PREPARED => s.push(dir),
            _ => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }

    /// A new empty task directory (`upper`, `work`) named like a spare one. Blocking.
    fn new_spare_dir(&self) -> Option<PathBuf> {
        let dir = task_dir(&self.tasks_dir, "spare", rand::random::<u64>());
        let made = ["upper", "work"]
            .iter()
            .try_for_each(|d| std::fs::create_dir_all(dir.join(d)));
        match made {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::debug!("cannot make a task directory ahead: {}: {e}", dir.display());
                let _ = std::fs::remove_dir_all(&dir);
                None
            }
        }
    }

    /// Starts sandbox inits for the next tasks in the background, up to [`PREPARED`]
    /// waiting or being prepared, unless this node runs no tasks.
    pub fn prepare_next(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.exec || self.ready.is_err() || self.grant.cpus <= 0.0 {
            return;
        }
        let Ok(waiting) = self.prepared.lock().map(|p| p.len()) else {
            return;
        };
        let preparing = self.preparing.load(SeqCst);
        for _ in (waiting + preparing)..PREPARED {
            self.preparing.fetch_add(1, SeqCst);
            let ctx = self.clone();
            tokio::task::spawn_blocking(move || {
                let p =
                    herd_sandbox::prepare(&ctx.exe, Some(ctx.task_cgroup()), &ctx.prepared_net());
                match p {
                    Ok(p) => {
                        if let Ok(mut slot) = ctx.prepared.lock()
                            && slot.len() < PREPARED
                        {
                            slot.push(p);
                        }
                    }
                    Err(e) => tracing::debug!("cannot prepare a sandbox ahead: {e}"),
                }
                ctx.make_spare_dir();
                ctx.preparing.fetch_sub(1, SeqCst);
            });
        }
    }

    /// Ends the sandbox inits prepared ahead, removes the task directories made ahead
    /// and saves the file cache's index (the agent is stopping). Blocking.
    pub fn stop(&self) {
        let p = self.prepared.lock().map(|mut p| std::mem::take(&mut *p));
        drop(p);
        let spare = self.spare_dirs.lock().map(|mut s| std::mem::take(&mut *s));
        for d in spare.unwrap_or_default() {
            let _ = std::fs::remove_dir_all(d);
        }
        if let Err(e) = self.cache.save() {
            tracing::warn!("cannot save the file cache's index: {e}");
        }
    }

    /// How many tasks run here.
    pub fn task_count(&self) -> u32 {
        self.running.lock().map(|r| r.len() as u32).unwrap_or(0)
    }

    /// Freezes (`true`) or thaws every task running here, and those that start later.
    pub fn set_suspended(&self, suspended: bool) {
        self.suspended
            .store(suspended, std::sync::atomic::Ordering::SeqCst);
        if let Ok(r) = self.running.lock() {
            for (id, t) in r.iter() {
                let res = if suspended {
                    t.handle.freeze()
                } else {
                    t.handle.thaw()
                };
                if let Err(e) = res {
                    tracing::warn!(task = format!("{id:016x}"), "cannot freeze or thaw: {e}");
                }
            }
        }
    }

    /// Evicts a task: its tree is killed, nothing is committed, and its workstation
    /// runs it elsewhere. False when it is not running here.
    pub fn evict(&self, task: u64, reason: &str) -> bool {
        let tx = self
            .running
            .lock()
            .ok()
            .and_then(|mut r| r.get_mut(&task).and_then(|t| t.evict.take()));
        tx.is_some_and(|tx| tx.send(reason.to_string()).is_ok())
    }

    /// The tasks running here with the memory their cgroups use (bytes; 0 unknown).
    pub fn task_memory(&self) -> Vec<(u64, u64)> {
        let Ok(r) = self.running.lock() else {
            return vec![];
        };
        r.iter()
            .map(|(id, t)| {
                let mem = t
                    .cgroups
                    .iter()
                    .find_map(|d| {
                        ["memory.usage_in_bytes", "memory.current"]
                            .iter()
                            .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
                    })
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                (*id, mem)
            })
            .collect()
    }
}

/// Takes a task out of [`HelperCtx::running`] when its run ends, however it ends.
struct Registered<'a> {
    ctx: &'a HelperCtx,
    task: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut r) = self.ctx.running.lock() {
            r.remove(&self.task);
        }
        self.ctx.tasks_changed.notify_one();
    }
}

/// Makes the directory task directories go in; private (0700): a task's files are
/// nobody else's business on the helper.
pub fn make_tasks_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The directory of task `task` from node `peer` (its upper and work layers) in
/// `tasks_dir`: `NODE-TASKID`, the id in 16 hex digits ([`clean_task_dirs`] knows them
/// by that).
fn task_dir(tasks_dir: &Path, peer: &str, task: u64) -> PathBuf {
    tasks_dir.join(format!("{peer}-{task:016x}"))
}

/// Removes the task directories ([`task_dir`]) a crashed agent left in `tasks_dir`: no
/// task runs before the agent starts, so none is in use. Other entries (the views, a
/// probe's) are left to their own cleanup. Blocking.
pub fn clean_task_dirs(tasks_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(tasks_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let is_task = name
            .to_string_lossy()
            .rsplit_once('-')
            .is_some_and(|(node, id)| {
                !node.is_empty() && id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
            });
        if is_task
            && e.file_type().is_ok_and(|t| t.is_dir())
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            tracing::warn!(
                "cannot remove a task directory left by an earlier run: {}: {err}",
                e.path().display()
            );
        }
    }
}

/// Checks that this host can run tasks (in `scratch`, made by [`make_tasks_dir`]): a
/// throwaway sandbox and a throwaway FUSE view; returns the network stack tasks reach
/// outward through, `None` when none works here (tasks then get loopback only, which
/// the log says once, here).
pub fn probe(exe: &Path, scratch: &Path) -> Result<Option<herd_sandbox::NetStack>, String> {
    let probed = herd_sandbox::probe(exe, scratch).map_err(|e| e.to_string())?;
    let mode = probed.mode;
    let empty = scratch.join(format!("probe-src-{}", std::process::id()));
    let mnt = scratch.join(format!("probe-mnt-{}", std::process::id()));
    let res = (|| {
        std::fs::create_dir_all(&empty).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        let view =
            View::new(herd_fs::LocalSource::new(&empty, vec![])).map_err(|e| format!("{e:?}"))?;
        let m = herd_fs::mount(view, &mnt).map_err(|e| {
            format!("cannot mount FUSE ({e}); a helper needs root or access to /dev/fuse")
        })?;
        m.unmount().map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir(&mnt);
    let _ = std::fs::remove_dir(&empty);
    res?;
    match &probed.net {
        Ok(stack) => tracing::info!(mode = ?mode, net = %stack, "this node can run tasks"),
        Err(why) => tracing::warn!(
            mode = ?mode,
            "this node can run tasks, but no user-mode network stack works here ({why}): tasks get loopback only; install pasta (Debian package passt) or slirp4netns for an outward network"
        ),
    }
    Ok(probed.net.ok())
}

/// Why a running task was stopped for its writes.
enum DiskOver {
    /// Its upper layer took this many bytes, more than the grant.
    Grant { used: u64, grant: u64 },
    /// The helper's file system under it had less than [`DISK_RESERVE`] free.
    Full,
}

impl DiskOver {
    fn message(&self, node: &str) -> String {
        match self {
            DiskOver::Grant { used, grant } => format!(
                "the task was stopped: its files on the helper {node} took {}, over the {} of disk the helper grants a task (herd agent --disk); nothing was committed",
                crate::host::human_bytes(*used),
                crate::host::human_bytes(*grant)
            ),
            DiskOver::Full => format!(
                "the task was stopped: the helper {node} ran out of disk space for the task's files; nothing was committed"
            ),
        }
    }
}

/// Watches a running task's upper layer, on the blocking pool, and resolves once it
/// takes more than `grant` bytes or the file system under it is nearly full. Checked
/// every 200 ms, less often when a walk takes long (a twentieth of the time walking at
/// most, and every 5 s at least): a task can overshoot by what it writes in between.
async fn watch_disk(upper: PathBuf, grant: u64) -> DiskOver {
    const FIRST: Duration = Duration::from_millis(200);
    let mut pause = FIRST;
    loop {
        tokio::time::sleep(pause).await;
        let up = upper.clone();
        let t = Instant::now();
        let measured = tokio::task::spawn_blocking(move || {
            let free = rustix::fs::statvfs(&up)
                .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
                .unwrap_or(u64::MAX);
            (crate::host::disk_usage(&up), free)
        })
        .await;
        let Ok((used, free)) = measured else {
            continue;
        };
        tracing::debug!(upper = %upper.display(), used, free, grant, "task disk");
        if used > grant {
            return DiskOver::Grant { used, grant };
        }
        if free < DISK_RESERVE {
            return DiskOver::Full;
        }
        pause = (t.elapsed() * 20).clamp(FIRST, Duration::from_secs(5));
    }
}

async fn out(send: &mut quinn::SendStream, o: &TaskOutput) -> Result<(), AgentError> {
    net::write_frame(send, o).await
}

/// Serves one `Run` request from `peer` on its stream.
pub async fn serve_run(
    conn: quinn::Connection,
    peer: PeerCert,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    task: u64,
    spec: TaskSpec,
    ctx: Arc<HelperCtx>,
) {
    let dir = task_dir(&ctx.tasks_dir, &peer.name, task);
    let result = run_here(&conn, &peer.name, &mut send, recv, task, spec, &ctx, &dir).await;
    if let Err(e) = result {
        tracing::warn!(task = format!("{task:016x}"), from = %peer.name, "task failed: {e}");
        let _ = out(
            &mut send,
            &TaskOutput::Failed {
                message: e.to_string(),
                code: 255,
            },
        )
        .await;
    }
    let _ = send.finish();
    let d = dir.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(d)).await;
    // The next tasks' sandboxes are prepared now, when they do not compete with this
    // one (a second one waits already, for a task that comes sooner).
    ctx.prepare_next();
}

/// Tells the workstation the task could not start: 127 when its cwd cannot be entered
/// (as a shell would say), 255 for herd's own failures. Nothing is committed.
async fn not_started(
    send: &mut quinn::SendStream,
    e: herd_sandbox::SandboxError,
) -> Result<(), AgentError> {
    let code = match &e {
        herd_sandbox::SandboxError::Cwd { .. } => herd_sandbox::EXIT_NOT_FOUND,
        _ => 255,
    };
    let message = e.to_string();
    out(send, &TaskOutput::Failed { message, code }).await
}

/// Reads a task's output: a pipe through the runtime's epoll (no thread per read), a
/// terminal's master through the blocking pool.
fn task_reader(fd: OwnedFd) -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    match as_pipe(
        fd,
        tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked,
    ) {
        Ok(r) => Box::new(r),
        Err(fd) => Box::new(tokio::fs::File::from(std::fs::File::from(fd))),
    }
}

/// Writes a task's input, as [`task_reader`] reads its output.
fn task_writer(fd: OwnedFd) -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
    match as_pipe(fd, tokio::net::unix::pipe::Sender::from_owned_fd_unchecked) {
        Ok(w) => Box::new(w),
        Err(fd) => Box::new(tokio::fs::File::from(std::fs::File::from(fd))),
    }
}

/// `fd` made non-blocking and registered by `make` if it is a pipe; otherwise, or if
/// that fails, `fd` back.
fn as_pipe<T>(fd: OwnedFd, make: impl FnOnce(OwnedFd) -> std::io::Result<T>) -> Result<T, OwnedFd> {
    if is_fifo(&fd)
        && rustix::io::ioctl_fionbio(&fd, true).is_ok()
        && let Ok(dup) = fd.try_clone()
        && let Ok(t) = make(dup)
    {
        return Ok(t);
    }
    Err(fd)
}

fn is_fifo(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| AgentError::Net(format!("pipe: {e}")))
}

#[allow(clippy::too_many_arguments)]
async fn run_here(
    conn: &quinn::Connection,
    ws: &str,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
    task: u64,
    spec: TaskSpec,
    ctx: &Arc<HelperCtx>,
    dir: &Path,
) -> Result<(), AgentError> {
    let t0 = std::time::Instant::now();
    if !ctx.exec {
        return Err(AgentError::Net(format!(
            "{} does not execute tasks (no exec role)",
            ctx.name
        )));
    }
    if let Err(why) = &ctx.ready {
        return Err(AgentError::Net(format!(
            "{} cannot run tasks: {why}",
            ctx.name
        )));
    }
    // A view kept from this workstation's and user's last task, validated in one round
    // trip (and one more per changed directory), or a fresh one trusting the command's
    // validated working set.
    let set_key =
        String::from_utf8_lossy(spec.run.argv.first().map(|a| a.as_slice()).unwrap_or(b""))
            .to_string();
    let key: crate::views::Key = (
        ws.to_string(),
        spec.uid,
        spec.gid,
        spec.groups.clone(),
        spec.hidden.clone(),
    );
    let mut kept = ctx.views.take_idle(&key);
    // A root parked over the kept view brings its own task directory: it becomes this
    // task's.
    let parked = match kept.as_mut().and_then(|v| v.take_parked()) {
        Some(p) if std::fs::rename(&p.dir, dir).is_ok() => Some(p),
        Some(p) => {
            let _ = tokio::task::spawn_blocking(move || p.end()).await;
            None
        }
        None => None,
    };
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    if parked.is_none() && !ctx.take_spare_dir(dir) {
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| AgentError::io(d, e))?;
        }
    }
    let working = ctx.cache.working_set(ws, &set_key);

    let run = &spec.run;
    let os = |b: &Vec<u8>| OsString::from_vec(b.clone());
    // The view's mount point is filled in once the view is leased.
    let mut sb = herd_sandbox::SandboxSpec::new(
        Path::new("/"),
        &upper,
        &work,
        run.argv.iter().map(os).collect(),
    );
    sb.exe = run.exe.as_ref().map(|e| PathBuf::from(os(e)));
    sb.env = run.env.iter().map(|(k, v)| (os(k), os(v))).collect();
    sb.env.retain(|(k, _)| k != "HERD_NODE");
    sb.env.push(("HERD_NODE".into(), ctx.name.clone().into()));
    sb.cwd = PathBuf::from(os(&run.cwd));
    sb.uid = spec.uid;
    sb.gid = spec.gid;
    sb.groups = spec.groups.clone();
    sb.umask = run.umask;
    sb.rlimits = run.rlimits.clone();
    sb.hidden = spec.hidden.iter().map(|h| PathBuf::from(os(h))).collect();
    sb.idle = true;
    sb.cgroup = Some(ctx.task_cgroup());
    sb.net = ctx.task_net(run.net);

    // stdio: a terminal from the task's own devpts (its master comes back from the
    // sandbox), or three pipes.
    let mut pipes: Option<(OwnedFd, OwnedFd, OwnedFd)> = None;
    if let Some((rows, cols)) = run.tty {
        sb.console = Some((rows, cols));
    } else {
        let (ir, iw) = pipe()?;
        let (or, ow) = pipe()?;
        let (er, ew) = pipe()?;
        sb.stdio = herd_sandbox::TaskStdio {
            stdin: herd_sandbox::StdioFd::Fd(Arc::new(ir)),
            stdout: herd_sandbox::StdioFd::Fd(Arc::new(ow)),
            stderr: herd_sandbox::StdioFd::Fd(Arc::new(ew)),
        };
        pipes = Some((iw, or, er));
    }

    // A sandbox init prepared ahead (forked, exec'd, in its cgroup already) saves those
    // steps; a root parked over the kept view saves building the root too.
    let mut prepared = match parked {
        Some(_) => None,
        None => ctx.prepared.lock().ok().and_then(|mut p| p.pop()),
    };
    // A view kept from this workstation's and user's last task is validated in one
    // round trip (and one more per changed directory) while the task is handed to the
    // root parked over it, or a prepared sandbox builds the task's root over it; the
    // task starts once both are done. Otherwise a view is leased first (a kept one
    // validated, or a fresh one trusting the command's validated working set) and the
    // sandbox started over it.
    let mut early = None;
    let mut leased = None;
    let starter = match parked {
        Some(p) => Some(Starter::Parked(p.sandbox)),
        None if kept.is_some() => prepared.take().map(Starter::Prepared),
        None => None,
    };
    if let Some(starter) = starter
        && let Some(kept) = kept.take()
    {
        let mut gated = sb.clone();
        gated.lower = kept.dir().to_path_buf();
        // Handing the task over does not block: pid 1 builds the root meanwhile (or
        // has built it already).
        let starting = match starter {
            Starter::Parked(p) => p.start_gated(&gated),
            Starter::Prepared(p) => p.start_gated(&gated),
        };
        let renewed = crate::views::renew(kept, conn, task, working.clone()).await;
        match renewed {
            Ok(v) => {
                sb.lower = v.dir().to_path_buf();
                leased = Some(v);
                // pid 1 may start the task as soon as its root is built: let it go
                // from here rather than after a hop to a blocking thread.
                let mut starting = starting;
                if let Ok(s) = starting.as_mut() {
                    s.open_gate();
                }
                early = Some(starting);
            }
            Err(v) => {
                // Stale beyond repair: the sandbox over it is called off, and a fresh
                // view and sandbox are made below.
                // The sandbox goes first: its mount namespace holds the view.
                let _ = tokio::task::spawn_blocking(move || {
                    drop(starting);
                    v.close();
                })
                .await;
            }
        }
    }
    let view = match leased {
        Some(v) => v,
        None => ctx
            .views
            .lease(key, kept, conn, task, ctx.cache.clone(), working)
            .await
            .map_err(AgentError::Net)?,
    };
    let t_validated = t0.elapsed(); // the view is leased: validated, or mounted fresh
    sb.lower = view.dir().to_path_buf();
    // Given back to the pool only when the task ended by itself and its changes were
    // read; dropped (unmounted) on every other path.
    let mut view = Some(view);

    let exe = ctx.exe.clone();
    let sandbox = tokio::task::spawn_blocking(move || {
        let started = match (early, prepared) {
            (Some(Ok(starting)), _) => Some(starting.go()),
            (_, Some(p)) => Some(p.start(&sb)),
            _ => None,
        };
        // No init prepared, the gated start failed, or the prepared init died: a
        // fresh one.
        let r = match started {
            None | Some(Err(herd_sandbox::SandboxError::Io { .. })) => {
                herd_sandbox::spawn(&exe, &sb)
            }
            Some(r) => r,
        };
        drop(sb); // close our copies of the task's ends
        r
    })
    .await
    .map_err(|e| AgentError::Net(e.to_string()))?;
    let sandbox = match sandbox {
        Ok(s) => s,
        Err(e) => {
            drop_view(view.take()).await;
            return not_started(send, e).await;
        }
    };
    let t_started = t0.elapsed();
    let mut sandbox = sandbox;
    let (our_in, our_out, our_err) = match pipes {
        Some((iw, or, er)) => (Some(iw), or, Some(er)),
        None => {
            let master = sandbox
                .console()
                .ok_or_else(|| AgentError::Net("the sandbox gave no terminal".into()))?;
            let dup = master
                .try_clone()
                .map_err(|e| AgentError::Net(format!("terminal: {e}")))?;
            (Some(dup), master, None)
        }
    };
    let handle = sandbox.handle();
    let (evict_tx, mut evicted) = tokio::sync::oneshot::channel::<String>();
    if let Ok(mut r) = ctx.running.lock() {
        r.insert(
            task,
            HelperTask {
                handle: handle.clone(),
                cgroups: sandbox.cgroups().to_vec(),
                evict: Some(evict_tx),
            },
        );
    }
    let _registered = Registered { ctx, task };
    ctx.tasks_changed.notify_one();
    ctx.metrics.hosted_started();
    if ctx.suspended.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = handle.freeze();
    }
    out(
        send,
        &TaskOutput::Started {
            node: ctx.name.clone(),
        },
    )
    .await?;
    if let Some(line) = ctx.net_notice(run.net) {
        out(send, &TaskOutput::Stderr(line.into_bytes())).await?;
    }

    let mut waiter = tokio::task::spawn_blocking(move || sandbox.wait_ended());
    let tty_fd = if run.tty.is_some() {
        our_in.as_ref().map(|f| f.as_raw_fd())
    } else {
        None
    };
    let mut stdout = task_reader(our_out);
    let mut stderr = our_err.map(task_reader);
    let mut stdin = our_in.map(task_writer);
    let mut inputs = FramedRead::new(recv, herd_proto::codec());
    let (mut out_open, mut err_open, mut exit) = (true, stderr.is_some(), None);
    let mut obuf = vec![0u8; 64 * 1024];
    let mut ebuf = vec![0u8; 64 * 1024];
    let disk = watch_disk(upper.clone(), ctx.grant.disk);
    tokio::pin!(disk);
    loop {
        if exit.is_some() && !out_open && !err_open {
            break;
        }
        tokio::select! {
            n = stdout.read(&mut obuf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => out(send, &TaskOutput::Stdout(obuf[..n].to_vec())).await?,
            },
            n = async { match stderr.as_mut() { Some(e) => e.read(&mut ebuf).await, None => Ok(0) } }, if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => out(send, &TaskOutput::Stderr(ebuf[..n].to_vec())).await?,
            },
            r = &mut waiter, if exit.is_none() => {
                let code = match r {
                    Ok(Ok(e)) => e.code(),
                    // The task could not start (the sandbox did not wait for it to):
                    // as a failure to start, nothing is committed.
                    Ok(Err(e @ (herd_sandbox::SandboxError::Cwd { .. } | herd_sandbox::SandboxError::Setup(_)))) => {
                        drop_view(view.take()).await;
                        return not_started(send, e).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("sandbox wait: {e}");
                        255
                    }
                    Err(_) => 255,
                };
                exit = Some(code);
                // With a terminal, the master reports EIO once the last slave closes;
                // stop reading once the task is gone and the buffer is drained.
                if run.tty.is_some() {
                    stdin = None;
                }
            },
            over = &mut disk, if exit.is_none() => {
                handle.kill_tree();
                let _ = (&mut waiter).await;
                drop_view(view.take()).await;
                let message = over.message(&ctx.name);
                tracing::warn!(task = format!("{task:016x}"), "stopped: {message}");
                out(send, &TaskOutput::Failed { message, code: 255 }).await?;
                return Ok(());
            }
            Ok(reason) = &mut evicted, if exit.is_none() => {
                handle.kill_tree();
                let _ = (&mut waiter).await;
                drop_view(view.take()).await;
                tracing::info!(task = format!("{task:016x}"), "evicted: {reason}");
                ctx.metrics.hosted_evicted();
                out(send, &TaskOutput::Evicted { reason }).await?;
                return Ok(());
            }
            frame = inputs.next() => match frame {
                Some(Ok(f)) => match herd_proto::decode::<TaskInput>(&f) {
                    Ok(TaskInput::Stdin(d)) => {
                        if let Some(i) = stdin.as_mut()
                            && i.write_all(&d).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    Ok(TaskInput::StdinEof) => {
                        if run.tty.is_some() {
                            // A terminal has no EOF of its own: send ^D.
                            if let Some(i) = stdin.as_mut() {
                                let _ = i.write_all(&[4]).await;
                            }
                        } else {
                            stdin = None;
                        }
                    }
                    Ok(TaskInput::Signal(sig)) => {
                        let _ = handle.signal(sig);
                    }
                    Ok(TaskInput::Resize(rows, cols)) => {
                        if let Some(fd) = tty_fd {
                            let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                            // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
                            unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
                        }
                    }
                    Ok(TaskInput::LocalDone(_)) | Err(_) => {}
                },
                _ => {
                    // The workstation is gone or herd run exited: kill the whole tree.
                    handle.kill_tree();
                    let _ = (&mut waiter).await;
                    drop_view(view.take()).await;
                    return Err(AgentError::Net("the workstation went away; task killed".into()));
                }
            },
        }
    }
    let code = exit.unwrap_or(255);
    let t_exited = t0.elapsed();
    let Some(view) = view.take() else {
        return Err(AgentError::Net("the task's view is gone".into()));
    };
    let seen = view.seen.clone();
    let cached = view.cached.clone();
    let ws_name = ws.to_string();
    cached.finish(&ws_name, &set_key);
    ctx.save_index_soon();
    // A task that filled the helper's disk may have lost writes (ENOSPC): its changes
    // cannot be trusted, so none are committed.
    if let Ok(st) = rustix::fs::statvfs(&upper)
        && st.f_bavail.saturating_mul(st.f_frsize) < DISK_RESERVE
    {
        tracing::warn!(
            task = format!("{task:016x}"),
            "the task filled the disk; nothing committed"
        );
        drop_view(Some(view)).await;
        out(
            send,
            &TaskOutput::Failed {
                message: format!(
                    "the helper {} ran out of disk space for the task's files (exit code {code}); nothing was committed",
                    ctx.name
                ),
                code: 255,
            },
        )
        .await?;
        return Ok(());
    }
    out(send, &TaskOutput::Exited { code }).await?;
    let up = upper.clone();
    // An upper layer left empty (nothing written) is seen at once; a scan may take a
    // while and goes to the blocking pool.
    let untouched = std::fs::read_dir(&upper).is_ok_and(|mut d| d.next().is_none());
    let changes = if untouched {
        Vec::new()
    } else {
        tokio::task::spawn_blocking(move || herd_fs::changes::scan(&up, &|p| seen.base(p)))
            .await
            .map_err(|e| AgentError::Net(e.to_string()))?
            .map_err(|e| AgentError::Net(format!("cannot read the task's changes: {e}")))?
    };
    // The changes are read (with what the view saw): the view can serve the next task.
    let (rounds, reused) = (view.rounds, view.reused);
    let c = ctx.clone();
    tokio::task::spawn_blocking(move || c.keep_view(view));
    for s in changes {
        out(send, &TaskOutput::Change(s.change.clone())).await?;
        if let Some(p) = &s.data {
            let mut f = tokio::fs::File::open(p)
                .await
                .map_err(|e| AgentError::io(p, e))?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = f.read(&mut buf).await.map_err(|e| AgentError::io(p, e))?;
                if n == 0 {
                    break;
                }
                out(send, &TaskOutput::Data(buf[..n].to_vec())).await?;
            }
        }
    }
    out(send, &TaskOutput::Done).await?;
    tracing::debug!(
        task = format!("{task:016x}"),
        reused,
        rounds,
        view_ms = t_validated.as_secs_f64() * 1e3,
        started_ms = t_started.as_secs_f64() * 1e3,
        exited_ms = t_exited.as_secs_f64() * 1e3,
        done_ms = t0.elapsed().as_secs_f64() * 1e3,
        "task phases"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_directories_left_by_a_crash_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for dir in [
            "ws-0123456789abcdef/upper/sub",
            "ws-0123456789abcdef/work/work",
            "node-with-dashes-fedcba9876543210/upper",
            "views/0",
            "probe-mnt-4242",
            "ws-notahexid00000",
            "ws-0123",
        ] {
            std::fs::create_dir_all(d.join(dir)).unwrap();
        }
        std::fs::write(d.join("ws-0123456789abcdef/upper/sub/out.txt"), "x").unwrap();
        std::fs::write(d.join("ab-0123456789abcdef"), "a file, not a task's").unwrap();
        clean_task_dirs(d);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "ab-0123456789abcdef",
                "probe-mnt-4242",
                "views",
                "ws-0123",
                "ws-notahexid00000"
            ]
        );
        assert!(d.join("views/0").is_dir());
    }

    #[test]
    fn homes_come_from_passwd_without_nss() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\nann:x:1000:1000:Ann:/home/ann:/bin/sh\nnohome:x:1001:1001::relative:/bin/sh\n";
        assert_eq!(passwd_home(passwd, 1000), Some(PathBuf::from("/home/ann")));
        assert_eq!(passwd_home(passwd, 0), Some(PathBuf::from("/root")));
        assert_eq!(passwd_home(passwd, 1001), None);
        assert_eq!(passwd_home(passwd, 4242), None);
    }
}
