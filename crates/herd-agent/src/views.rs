//! A helper's views of workstations, kept mounted between tasks.
//!
//! Mounting a fresh FUSE view for every task would throw away what the kernel cached
//! through it: entries, attributes and the pages of every library and script the last
//! task read. So a helper keeps a finished task's view, idle, for the next task of the
//! same workstation and identity (uid, gid, groups and hidden paths: what the
//! workstation's file service answers depends on them), and leases it to one task at a
//! time.
//!
//! Before a kept view serves a task, everything it holds is validated with the
//! workstation ([`ViewPool::lease`]): one `Validate` question with every fact (a listed
//! directory's digest stands for its entries), and one more round for the entries of
//! each directory found changed. What changed is dropped from the view and from the
//! kernel's caches, so the task sees every change made before it started, exactly as
//! with a fresh view. A view that cannot be validated is unmounted and a fresh one is
//! made.
//!
//! An idle view may carry a [`ParkedRoot`]: the next task's root (overlay over the
//! view, /proc, /tmp, /dev) built ahead by a prepared sandbox init, whose pid 1 waits
//! in it for the task (`HelperCtx::keep_view` parks it after a task; the next task of
//! the key takes it with the view). It ends, before the view is unmounted, whenever
//! the view goes.
//!
//! Views idle longer than [`IDLE_FOR`] are unmounted, at most [`MAX_IDLE`] are kept,
//! and a view that grew past [`MAX_FACTS`] is not kept. The agent unmounts them all
//! when it stops, and lazily unmounts leftovers of a crashed agent when it starts.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_fs::cache::Cache;
use herd_fs::cached::CachedSource;
use herd_fs::view::ViewCtl;
use herd_fs::{Mounted, Seen, Source, View};
use herd_proto::PeerRequest;
use herd_proto::fs::{Attr, DirEntry, FsRequest, FsResponse};

use crate::net;

/// How long an idle view stays mounted.
pub const IDLE_FOR: Duration = Duration::from_secs(600);
/// Idle views kept at most (the oldest go first).
pub const MAX_IDLE: usize = 16;
/// A view holding more facts than this is not kept for another task.
pub const MAX_FACTS: usize = 200_000;
/// Validation rounds before a kept view is given up for a fresh one.
const MAX_ROUNDS: u32 = 6;

/// Where a view's questions go: the connection and task id of the task leasing it.
#[derive(Clone)]
struct Target {
    conn: quinn::Connection,
    task: u64,
}

/// The helper's view of the workstation: questions go back over the connection the
/// task came in on, as that task.
pub struct RemoteSource {
    target: Arc<Mutex<Target>>,
    rt: tokio::runtime::Handle,
}

impl RemoteSource {
    fn ask(&self, req: FsRequest) -> FsResponse {
        let Ok(t) = self.target.lock().map(|t| t.clone()) else {
            return FsResponse::Errno(libc::EIO);
        };
        self.rt
            .block_on(async move {
                net::request::<_, FsResponse>(&t.conn, &PeerRequest::Fs { task: t.task, req }).await
            })
            .unwrap_or(FsResponse::Errno(libc::EIO))
    }
}

fn path_bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

impl Source for RemoteSource {
    fn stat(&self, path: &Path) -> Result<Attr, i32> {
        match self.ask(FsRequest::Stat {
            path: path_bytes(path),
        }) {
            FsResponse::Attr(a) => Ok(a),
            FsResponse::Errno(e) => Err(e),
            _ => Err(libc::EIO),
        }
    }
    fn list(&self, path: &Path) -> Result<Vec<DirEntry>, i32> {
        match self.ask(FsRequest::List {
            path: path_bytes(path),
        }) {
            FsResponse::Entries(e) => Ok(e),
            FsResponse::Errno(e) => Err(e),
            _ => Err(libc::EIO),
        }
    }
    fn read(&self, path: &Path, offset: u64, len: u32) -> Result<Vec<u8>, i32> {
        match self.ask(FsRequest::Read {
            path: path_bytes(path),
            offset,
            len,
        }) {
            FsResponse::Data(d) => Ok(d),
            FsResponse::Errno(e) => Err(e),
            _ => Err(libc::EIO),
        }
    }
    fn prefetch(&self, path: &Path) -> Vec<herd_proto::fs::Prefetched> {
        match self.ask(FsRequest::Prefetch {
            path: path_bytes(path),
        }) {
            FsResponse::Bundle(items) => items,
            _ => Vec::new(),
        }
    }
    fn readlink(&self, path: &Path) -> Result<PathBuf, i32> {
        match self.ask(FsRequest::ReadLink {
            path: path_bytes(path),
        }) {
            FsResponse::Target(t) => Ok(PathBuf::from(OsString::from_vec(t))),
            FsResponse::Errno(e) => Err(e),
            _ => Err(libc::EIO),
        }
    }
}

/// Who a view is for: the workstation, and the identity and hidden paths its file
/// service answers with.
pub type Key = (String, u32, u32, Vec<u32>, Vec<Vec<u8>>);

/// A mounted view leased to one task (see the module docs).
pub struct LeasedView {
    /// The cached source under the view.
    pub cached: Arc<CachedSource<RemoteSource>>,
    /// What the view saw, for the commit's conflict checks.
    pub seen: Seen,
    /// Validation round trips this lease took.
    pub rounds: u32,
    /// Whether the view was kept from an earlier task.
    pub reused: bool,
    target: Arc<Mutex<Target>>,
    ctl: Option<ViewCtl>,
    mounted: Option<Mounted>,
    dir: PathBuf,
    key: Key,
    idle_since: Instant,
    parked: Option<ParkedRoot>,
}

/// A task's root built ahead over an idle kept view, its pid 1 waiting for the view's
/// next task (`herd_sandbox::Parked`), and the task directory holding its layers.
pub struct ParkedRoot {
    /// The waiting sandbox.
    pub sandbox: herd_sandbox::Parked,
    /// The task directory (`upper`, `work`) its root is built on.
    pub dir: PathBuf,
}

impl ParkedRoot {
    /// Ends the sandbox and removes its task directory. Blocking.
    pub fn end(self) {
        drop(self.sandbox);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LeasedView {
    /// Where the view is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the root parked over this view, if there is one.
    pub fn take_parked(&mut self) -> Option<ParkedRoot> {
        self.parked.take()
    }

    /// Ends a root parked over the view, unmounts the view and removes its mount
    /// point, now. Blocking: never on the agent's async thread (see the `Drop` impl).
    pub fn close(mut self) {
        if let Some(p) = self.parked.take() {
            // First: its mount namespace holds the view.
            p.end();
        }
        if let Some(m) = self.mounted.take() {
            let _ = m.unmount();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for LeasedView {
    /// A view dropped without [`LeasedView::close`] (an error path, maybe on the
    /// agent's async thread) is unmounted on a thread of its own: unmounting joins the
    /// view's FUSE threads, and one of those may be waiting for an answer that only the
    /// async thread can bring in.
    fn drop(&mut self) {
        let parked = self.parked.take();
        if let Some(m) = self.mounted.take() {
            let dir = std::mem::take(&mut self.dir);
            std::thread::spawn(move || {
                if let Some(p) = parked {
                    p.end();
                }
                let _ = m.unmount();
                let _ = std::fs::remove_dir(&dir);
            });
        } else if let Some(p) = parked {
            std::thread::spawn(move || p.end());
        }
    }
}

/// The idle views of a helper (see the module docs).
pub struct ViewPool {
    root: PathBuf,
    idle: Mutex<HashMap<Key, Vec<LeasedView>>>,
    next: AtomicU64,
}

impl ViewPool {
    /// A pool mounting its views under `root` (made private on first use).
    pub fn new(root: PathBuf) -> ViewPool {
        ViewPool {
            root,
            idle: Default::default(),
            next: AtomicU64::new(0),
        }
    }

    /// Takes an idle view kept for `key`, not yet validated (see [`renew`]).
    pub fn take_idle(&self, key: &Key) -> Option<LeasedView> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        let v = list.pop();
        if list.is_empty() {
            idle.remove(key);
        }
        v
    }

    /// Leases a view to task `task` of workstation `key.0`, arriving on `conn`: a kept
    /// one, validated, or a fresh one trusting the validated `working` set. Blocking
    /// work (mounting, unmounting) runs off the async threads.
    /// `kept`: an idle view already taken for `key` ([`ViewPool::take_idle`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn lease(
        self: &Arc<Self>,
        key: Key,
        kept: Option<LeasedView>,
        conn: &quinn::Connection,
        task: u64,
        cache: Arc<Cache>,
        working: Vec<(Vec<u8>, herd_fs::cache::Fact)>,
    ) -> Result<LeasedView, String> {
        if let Some(v) = kept.or_else(|| self.take_idle(&key)) {
            match renew(v, conn, task, working.clone()).await {
                Ok(v) => return Ok(v),
                Err(v) => {
                    let _ = tokio::task::spawn_blocking(move || v.close()).await;
                }
            }
        }
        self.fresh(key, conn, task, cache, working).await
    }

    async fn fresh(
        self: &Arc<Self>,
        key: Key,
        conn: &quinn::Connection,
        task: u64,
        cache: Arc<Cache>,
        mut trusted: Vec<(Vec<u8>, herd_fs::cache::Fact)>,
    ) -> Result<LeasedView, String> {
        let mut rounds = 0;
        if !trusted.is_empty() {
            rounds += 1;
            let items = trusted
                .iter()
                .map(|(p, f)| herd_fs::cached::check(p, f))
                .collect();
            let req = PeerRequest::Fs {
                task,
                req: FsRequest::Validate { items },
            };
            match net::request::<_, FsResponse>(conn, &req).await {
                Ok(FsResponse::Stale(stale)) => {
                    for (i, now) in stale {
                        if let Some(entry) = trusted.get_mut(i as usize) {
                            entry.1 = herd_fs::cache::Fact {
                                attr: now,
                                ..Default::default()
                            };
                        }
                    }
                }
                _ => trusted.clear(),
            }
        }
        let target = Arc::new(Mutex::new(Target {
            conn: conn.clone(),
            task,
        }));
        let remote = RemoteSource {
            target: target.clone(),
            rt: tokio::runtime::Handle::current(),
        };
        let cached = Arc::new(CachedSource::new(remote, cache, trusted));
        let dir = self
            .root
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        let (src, root, d) = (cached.clone(), self.root.clone(), dir.clone());
        let (mounted, seen) = tokio::task::spawn_blocking(move || {
            crate::task::make_tasks_dir(&root).map_err(|e| format!("{}: {e}", root.display()))?;
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            let view = View::new(src)
                .map_err(|e| format!("the workstation's files are not reachable: {e:?}"))?
                .with_ids(task_ids());
            let seen = view.seen();
            let m = herd_fs::mount(view, &d)
                .map_err(|e| format!("cannot mount the workstation's files: {e}"))?;
            Ok::<_, String>((m, seen))
        })
        .await
        .map_err(|e| e.to_string())?
        .inspect_err(|_| {
            let _ = std::fs::remove_dir(&dir);
        })?;
        Ok(LeasedView {
            cached,
            ctl: ViewCtl::new(&seen, &mounted),
            seen,
            rounds,
            reused: false,
            target,
            mounted: Some(mounted),
            dir,
            key,
            idle_since: Instant::now(),
            parked: None,
        })
    }

    /// Whether [`ViewPool::put_back`] would keep `v`.
    pub fn keeps(&self, v: &LeasedView) -> bool {
        v.cached.len() <= MAX_FACTS && v.ctl.as_ref().is_some_and(|c| c.size() <= MAX_FACTS)
    }

    /// Parks `root` with the idle view mounted at `dir`. Gives it back (`Some`) if that
    /// view is no longer idle (a task took it, or it was unmounted) or has one already.
    pub fn attach_parked(&self, dir: &Path, root: ParkedRoot) -> Option<ParkedRoot> {
        let Ok(mut idle) = self.idle.lock() else {
            return Some(root);
        };
        match idle
            .values_mut()
            .flatten()
            .find(|v| v.dir == dir && v.parked.is_none())
        {
            Some(v) => {
                v.parked = Some(root);
                None
            }
            None => Some(root),
        }
    }

    /// How many idle views have a root parked over them.
    pub fn parked(&self) -> usize {
        self.idle
            .lock()
            .map(|i| i.values().flatten().filter(|v| v.parked.is_some()).count())
            .unwrap_or(0)
    }

    /// Keeps `v` for the next task of its workstation and identity, if it is not too
    /// big; unmounts what is over the limits. Blocking (unmounts).
    pub fn put_back(&self, mut v: LeasedView) {
        if !self.keeps(&v) {
            v.close();
            return;
        }
        v.idle_since = Instant::now();
        let mut dropped = Vec::new();
        if let Ok(mut idle) = self.idle.lock() {
            idle.entry(v.key.clone()).or_default().push(v);
            dropped = over_limit(&mut idle, Instant::now());
        }
        dropped.into_iter().for_each(LeasedView::close);
    }

    /// Unmounts views idle for longer than [`IDLE_FOR`]. Blocking.
    pub fn expire(&self) {
        let dropped = match self.idle.lock() {
            Ok(mut idle) => over_limit(&mut idle, Instant::now()),
            Err(_) => Vec::new(),
        };
        dropped.into_iter().for_each(LeasedView::close);
    }

    /// Unmounts every idle view (the agent is stopping). Blocking.
    pub fn clear(&self) {
        let all: Vec<LeasedView> = match self.idle.lock() {
            Ok(mut idle) => idle.drain().flat_map(|(_, v)| v).collect(),
            Err(_) => Vec::new(),
        };
        all.into_iter().for_each(LeasedView::close);
    }

    /// How many views are idle.
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .map(|i| i.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

/// Takes out of `idle` the views idle too long and, beyond [`MAX_IDLE`], the oldest.
fn over_limit(idle: &mut HashMap<Key, Vec<LeasedView>>, now: Instant) -> Vec<LeasedView> {
    let mut out = Vec::new();
    for list in idle.values_mut() {
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(list)
            .into_iter()
            .partition(|v| now.duration_since(v.idle_since) > IDLE_FOR);
        *list = keep;
        out.extend(old);
    }
    loop {
        let total: usize = idle.values().map(Vec::len).sum();
        if total <= MAX_IDLE {
            break;
        }
        let oldest = idle
            .iter()
            .flat_map(|(k, l)| l.iter().enumerate().map(move |(i, v)| (v.idle_since, k, i)))
            .min_by_key(|(t, _, _)| *t)
            .map(|(_, k, i)| (k.clone(), i));
        let Some((k, i)) = oldest else { break };
        if let Some(l) = idle.get_mut(&k) {
            out.push(l.remove(i));
        }
    }
    idle.retain(|_, l| !l.is_empty());
    out
}

/// Validates a kept view for task `task` (see the module docs); gives the view back
/// as `Err` when that fails.
pub async fn renew(
    mut v: LeasedView,
    conn: &quinn::Connection,
    task: u64,
    working: Vec<(Vec<u8>, herd_fs::cache::Fact)>,
) -> Result<LeasedView, LeasedView> {
    let Some(ctl) = v.ctl.clone() else {
        return Err(v);
    };
    let retargeted = match v.target.lock() {
        Ok(mut t) => {
            *t = Target {
                conn: conn.clone(),
                task,
            };
            true
        }
        Err(_) => false,
    };
    if !retargeted {
        return Err(v);
    }
    let carry = working.iter().map(|(p, _)| p.clone()).collect();
    v.cached.trust(working);
    let mut done = HashSet::new();
    let mut kernel = Vec::new();
    let mut rounds = 0;
    loop {
        let items = v.cached.checks(&done);
        if items.is_empty() {
            break;
        }
        rounds += 1;
        if rounds > MAX_ROUNDS {
            return Err(v);
        }
        let paths: Vec<Vec<u8>> = items.iter().map(|i| i.0.clone()).collect();
        let req = PeerRequest::Fs {
            task,
            req: FsRequest::Validate { items },
        };
        let Ok(FsResponse::Stale(stale)) = net::request::<_, FsResponse>(conn, &req).await else {
            return Err(v);
        };
        tracing::debug!(
            task = format!("{task:016x}"),
            round = rounds,
            items = paths.len(),
            stale = ?stale
                .iter()
                .filter_map(|(i, _)| paths.get(*i as usize))
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>(),
            "validated a kept view"
        );
        for (i, now) in stale {
            let Some(p) = paths.get(i as usize) else {
                return Err(v);
            };
            v.cached.changed(p, now);
            kernel.push((PathBuf::from(std::ffi::OsStr::from_bytes(p)), now));
        }
        done.extend(paths);
    }
    // The kernel's caches are told on a blocking thread: an invalidation waits for the
    // directory's lock, which a lookup in flight may hold while its FUSE thread waits
    // for an answer that only the async thread can bring in.
    if !kernel.is_empty() {
        let told = tokio::task::spawn_blocking(move || {
            for (p, now) in kernel {
                ctl.changed(&p, now);
            }
        })
        .await;
        if told.is_err() {
            return Err(v);
        }
    }
    v.cached.begin(carry);
    v.rounds = rounds;
    v.reused = true;
    Ok(v)
}

/// Lazily unmounts views a crashed agent left under `root` and removes their
/// directories. Blocking.
pub fn clean_stale(root: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(herd_sandbox::unescape_mountinfo(p)))
        .filter(|p| p.starts_with(root) && p != root)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// How a view presents owners: shifted into the ids a root helper's task namespace
/// maps (`herd_sandbox::TASK_ID_BASE`); as they are for a rootless helper, whose task
/// maps only the submitter's ids.
fn task_ids() -> herd_fs::IdShift {
    match herd_sandbox::Mode::current() {
        herd_sandbox::Mode::Root => herd_fs::IdShift {
            base: herd_sandbox::TASK_ID_BASE,
            count: herd_sandbox::TASK_ID_COUNT,
        },
        herd_sandbox::Mode::Rootless => herd_fs::IdShift::NONE,
    }
}
