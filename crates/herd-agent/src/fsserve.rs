//! The workstation's file service, run as the submitting user.
//!
//! The agent may run as root, but a task must see the workstation's files with its
//! submitter's permissions, and its changes must be written with them too. So the
//! agent never touches files on a task's behalf itself: it starts child processes of
//! its own binary that drop to the submitter's uid, gid and groups first, and lets the
//! kernel enforce the rest.
//!
//! * `herd __fs-serve` ([`serve_main`]): one per submitter uid, kept while tasks run.
//!   Answers [`FsCall`]s (stat, list, read, readlink) with a [`LocalSource`] that hides
//!   the secret paths, on a few threads, in any order ([`FsClient`] matches answers to
//!   questions by id). A kept view's `Validate` is answered from the user's
//!   [`Journal`] where it can (items it vouches for are not looked at), on the thread
//!   that reads the questions: it is on every warm run's critical path, and handing it
//!   to a worker would cost a thread wakeup.
//! * `herd __fs-commit` ([`commit_main`]): one per task that changed files. Reads the
//!   change stream ([`CommitFrame`]s) on stdin, stages it with a
//!   [`Committer`](herd_fs::changes::Committer), commits on `Done` and prints a
//!   [`CommitReport`]; end of input before `Done` commits nothing.
//!
//! Both speak herd's framing (4-byte length, version byte, postcard) on stdin/stdout.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use herd_fs::changes::Committer;
use herd_fs::journal::Journal;
use herd_fs::{LocalSource, Source};
use herd_proto::fs::{CommitFrame, CommitReport, FsCall, FsReply, FsRequest, FsResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::AgentError;

/// Who the service acts as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Identity {
    fn args(&self) -> Vec<String> {
        vec![
            "--uid".into(),
            self.uid.to_string(),
            "--gid".into(),
            self.gid.to_string(),
            "--groups".into(),
            self.groups
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ]
    }

    /// Parses the `--uid U --gid G --groups a,b` arguments the agent passes.
    pub fn from_args(args: &[String]) -> Option<Identity> {
        let get = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
        };
        let groups = get("--groups")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<u32>>>()?;
        Some(Identity {
            uid: get("--uid")?.parse().ok()?,
            gid: get("--gid")?.parse().ok()?,
            groups,
        })
    }

    /// Becomes this user for good (the process must be single-threaded).
    pub fn become_user(&self) -> std::io::Result<()> {
        use nix::unistd::{Gid, Uid, getuid, setgid, setgroups, setuid};
        if getuid().is_root() {
            let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
            setgroups(&groups).map_err(std::io::Error::from)?;
            setgid(Gid::from_raw(self.gid)).map_err(std::io::Error::from)?;
            setuid(Uid::from_raw(self.uid)).map_err(std::io::Error::from)?;
        } else if getuid().as_raw() != self.uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "an agent running as uid {} cannot serve files for uid {}",
                    getuid(),
                    self.uid
                ),
            ));
        }
        Ok(())
    }
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > herd_proto::MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

fn write_frame(w: &mut impl Write, msg: &impl serde::Serialize) -> std::io::Result<()> {
    let payload = herd_proto::encode(msg)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    w.write_all(&(payload.len() as u32).to_be_bytes())?;
    w.write_all(&payload)?;
    w.flush()
}

/// The file service's answer to one question (public for the `fs_question` fuzz
/// target, which asks it what a peer would).
pub fn answer(src: &LocalSource, journal: &Journal, req: FsRequest) -> FsResponse {
    let path = |b: &[u8]| PathBuf::from(OsStr::from_bytes(b));
    let r = match req {
        FsRequest::Stat { path: p } => src.stat(&path(&p)).map(FsResponse::Attr),
        FsRequest::List { path: p } => src.list(&path(&p)).map(FsResponse::Entries),
        FsRequest::Read {
            path: p,
            offset,
            len,
        } => src.read(&path(&p), offset, len).map(FsResponse::Data),
        FsRequest::ReadLink { path: p } => src
            .readlink(&path(&p))
            .map(|t| FsResponse::Target(t.into_os_string().into_encoded_bytes())),
        FsRequest::Prefetch { path: p } => Ok(FsResponse::Bundle(src.prefetch_closure(&path(&p)))),
        FsRequest::Validate { items } => journal
            .validate(src, &items)
            .map(FsResponse::Stale)
            .ok_or(libc::EIO),
    };
    r.unwrap_or_else(FsResponse::Errno)
}

/// Answers `call` on stdout; false when stdout is gone.
fn respond(
    src: &LocalSource,
    journal: &Journal,
    out: &Mutex<std::io::Stdout>,
    call: FsCall,
) -> bool {
    let reply = FsReply {
        id: call.id,
        resp: answer(src, journal, call.req),
    };
    out.lock()
        .map(|mut o| write_frame(&mut *o, &reply).is_ok())
        .unwrap_or(true)
}

/// `herd __fs-serve --uid U --gid G --groups a,b`: becomes the user, reads the hidden
/// paths (first frame: one service answers for one hidden list, resolved again after
/// each `Validate` is answered), then answers questions until stdin ends.
pub fn serve_main(args: &[String]) -> i32 {
    let Some(id) = Identity::from_args(args) else {
        eprintln!("herd: __fs-serve: bad arguments");
        return 2;
    };
    if let Err(e) = id.become_user() {
        eprintln!("herd: file service: {e}");
        return 1;
    }
    // What a commit of this user cut short is finished or undone before any of the
    // user's tasks reads a file.
    if let Some(h) = user_home(id.uid)
        && let Err(e) = herd_fs::changes::recover(Path::new("/"), &commit_log_dir(&h))
    {
        eprintln!("herd: file service: recovering commits cut short: {e}");
    }
    let mut stdin = std::io::stdin().lock();
    let hidden: Vec<Vec<u8>> = match read_frame(&mut stdin)
        .ok()
        .flatten()
        .map(|f| herd_proto::decode(&f))
    {
        Some(Ok(h)) => h,
        _ => return 2,
    };
    let hidden = hidden
        .into_iter()
        .map(|h| PathBuf::from(OsStr::from_bytes(&h)))
        .collect();
    let src = Arc::new(LocalSource::new("/", hidden));
    // Made as the user: the watches count against the user's inotify limits.
    let journal = Arc::new(Journal::new());
    // The objects below the hidden directories are looked for again after each task
    // start (a walk of the hidden trees: off the validation's way, at most once a
    // second).
    let (reindex, wanted) = std::sync::mpsc::sync_channel::<()>(1);
    {
        let (src, journal) = (src.clone(), journal.clone());
        std::thread::spawn(move || {
            while wanted.recv().is_ok() {
                if src.refresh_hidden(true) {
                    journal.forget();
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        });
    }
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let (tx, rx) = std::sync::mpsc::sync_channel::<FsCall>(64);
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (src, journal, out, rx) = (src.clone(), journal.clone(), out.clone(), rx.clone());
            std::thread::spawn(move || {
                loop {
                    let call = match rx.lock() {
                        Ok(r) => match r.recv() {
                            Ok(c) => c,
                            Err(_) => return,
                        },
                        Err(_) => return,
                    };
                    if !respond(&src, &journal, &out, call) {
                        return;
                    }
                }
            })
        })
        .collect();
    while let Ok(Some(frame)) = read_frame(&mut stdin) {
        match herd_proto::decode::<FsCall>(&frame) {
            // A kept view's validation is every warm run's one question, mostly
            // answered from the journal: answered here, without waking a worker.
            Ok(call) if matches!(call.req, FsRequest::Validate { .. }) => {
                if !respond(&src, &journal, &out, call) {
                    break;
                }
                // Every task starts with one: once it is answered (off the warm run's
                // critical path: resolving the hidden list costs 0.1-0.2 ms), the
                // hidden paths are resolved again (a secret directory made or
                // replaced, or turned into a link, since), before the next question is
                // read, and what the journal confirmed is dropped if that changed what
                // is hidden. The validation itself was answered with the list as it
                // was resolved at the previous task's start: by name, every hidden
                // path is refused at any time.
                if src.refresh_hidden(false) {
                    journal.forget();
                }
                let _ = reindex.try_send(());
            }
            Ok(call) => {
                if tx.send(call).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    0
}

/// Reads a file's data from the `Data` frames that follow its `Change`.
struct DataFrames<'a, R: Read> {
    input: &'a mut R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> Read for DataFrames<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(frame) = read_frame(self.input)? else {
                return Ok(0);
            };
            match herd_proto::decode::<CommitFrame>(&frame) {
                Ok(CommitFrame::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "expected file data",
                    ));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `herd __fs-commit --uid U --gid G --groups a,b --task T [--writes PATH]...
/// [--hide PATH]... [--log-dir DIR] [--max-files N] [--max-bytes N]`: becomes the
/// user, finishes or undoes the commits a dead `__fs-commit` of the user left
/// ([`herd_fs::changes::recover`]), stages the change stream from stdin inside the
/// write scope, commits on `Done`, prints a [`CommitReport`].
pub fn commit_main(args: &[String]) -> i32 {
    let Some(id) = Identity::from_args(args) else {
        eprintln!("herd: __fs-commit: bad arguments");
        return 2;
    };
    let cargs = match CommitArgs::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herd: __fs-commit: {e}");
            return 2;
        }
    };
    let task = args
        .iter()
        .position(|a| a == "--task")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "task".into());
    let fail = |e: String| CommitReport {
        applied: 0,
        conflicts: vec![],
        error: Some(e),
        dropped: vec![],
        stripped: vec![],
    };
    let home = user_home(id.uid);
    let log_dir = cargs
        .log_dir
        .clone()
        .or_else(|| home.as_deref().map(commit_log_dir));
    if args.iter().any(|a| a == "--recover") {
        // Only what dead commits left (the agent's start): nothing on stdin.
        let Some(log_dir) = log_dir else {
            return 0;
        };
        if let Err(e) = id.become_user() {
            eprintln!("herd: recovering commits of uid {}: {e}", id.uid);
            return 1;
        }
        return match herd_fs::changes::recover(Path::new("/"), &log_dir) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("herd: recovering commits in {}: {e}", log_dir.display());
                1
            }
        };
    }
    let mut cargs = cargs;
    let report = if let Err(e) = id.become_user() {
        fail(format!("file service: {e}"))
    } else {
        // The user's own limits (`[commit]` in the config under the home
        // /etc/passwd gives: the agent's environment is not the user's), unless the
        // agent passed some.
        if let Some(h) = &home {
            let env = |k: &str| (k == "HOME").then(|| h.to_string_lossy().into_owned());
            match crate::config::load(&env) {
                Ok(c) => {
                    cargs.max_files.get_or_insert(c.commit.max_files);
                    cargs.max_bytes.get_or_insert(c.commit.max_bytes);
                }
                Err(e) => eprintln!("herd: {e} (the default commit limits apply)"),
            }
        }
        match log_dir {
            None => fail("no commit log directory: the user has no home directory in /etc/passwd (pass --log-dir)".into()),
            Some(log_dir) => match herd_fs::changes::recover(Path::new("/"), &log_dir) {
                Err(e) => fail(format!("cannot recover an earlier commit: {e} (nothing committed)")),
                Ok(_) => run_commit(
                    &task,
                    &cargs,
                    Path::new("/"),
                    &log_dir,
                    &mut std::io::stdin().lock(),
                ),
            },
        }
    };
    let ok = report.error.is_none();
    let _ = write_frame(&mut std::io::stdout().lock(), &report);
    if ok { 0 } else { 1 }
}

fn run_commit(
    task: &str,
    cargs: &CommitArgs,
    root: &Path,
    log_dir: &Path,
    input: &mut impl Read,
) -> CommitReport {
    use herd_fs::changes::{Limits, Scope};
    let fail = |e: String| CommitReport {
        applied: 0,
        conflicts: vec![],
        error: Some(e),
        dropped: vec![],
        stripped: vec![],
    };
    let hidden = herd_fs::beneath::Hidden::new(root, cargs.hide.iter().cloned());
    let scope = match Scope::new(root, &cargs.writes, hidden) {
        Ok(s) => s,
        Err(e) => return fail(format!("{e} (nothing committed)")),
    };
    let mut limits = Limits::default();
    if let Some(n) = cargs.max_files {
        limits.max_files = n;
    }
    if let Some(n) = cargs.max_bytes {
        limits.max_bytes = n;
    }
    let mut c = match Committer::new(root, task, scope, limits, log_dir) {
        Ok(c) => c,
        Err(e) => return fail(format!("{e} (nothing committed)")),
    };
    loop {
        let frame = match read_frame(input) {
            Ok(Some(f)) => f,
            Ok(None) => return fail("the change stream ended early: nothing committed".into()),
            Err(e) => return fail(format!("reading changes: {e}")),
        };
        match herd_proto::decode::<CommitFrame>(&frame) {
            Ok(CommitFrame::Change(ch)) => {
                let res = if matches!(ch, herd_proto::fs::Change::File { .. }) {
                    let mut data = DataFrames {
                        input: &mut *input,
                        buf: Vec::new(),
                        pos: 0,
                    };
                    c.stage(&ch, Some(&mut data))
                } else {
                    c.stage(&ch, None)
                };
                if let Err(e) = res {
                    return fail(format!("{e} (nothing committed)"));
                }
            }
            Ok(CommitFrame::Done) => break,
            Ok(CommitFrame::Data(_)) => return fail("file data without a file".into()),
            Err(e) => return fail(format!("bad change: {e}")),
        }
    }
    let b = |p: PathBuf| p.into_os_string().into_encoded_bytes();
    match c.commit() {
        Ok(r) => CommitReport {
            applied: r.applied.len() as u64,
            conflicts: r
                .conflicts
                .into_iter()
                .map(|(p, s)| (b(p), s.map(b)))
                .collect(),
            error: None,
            dropped: r
                .dropped
                .into_iter()
                .map(|(p, why)| (b(p), why.to_string()))
                .collect(),
            stripped: r.stripped.into_iter().map(b).collect(),
        },
        Err(e) => fail(format!("commit failed: {e}")),
    }
}

/// The agent's handle on one user's file service process.
pub struct FsClient {
    tx: mpsc::Sender<FsCall>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<FsResponse>>>>,
    next: AtomicU64,
    _child: tokio::process::Child,
}

impl FsClient {
    /// Starts `exe __fs-serve` as `id`, hiding `hidden`.
    pub async fn start(
        exe: &Path,
        id: &Identity,
        hidden: &[Vec<u8>],
    ) -> Result<FsClient, AgentError> {
        let mut child = tokio::process::Command::new(exe)
            .arg("__fs-serve")
            .args(id.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AgentError::io(exe, e))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| AgentError::Net("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| AgentError::Net("no stdout".into()))?;
        let mut sink = FramedWrite::new(stdin, herd_proto::codec());
        sink.send(herd_proto::encode(&hidden.to_vec())?)
            .await
            .map_err(|e| AgentError::Net(format!("file service: {e}")))?;
        let (tx, mut rx) = mpsc::channel::<FsCall>(256);
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let Ok(bytes) = herd_proto::encode(&call) else {
                    continue;
                };
                if sink.send(bytes).await.is_err() {
                    break;
                }
            }
        });
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<FsResponse>>>> = Arc::default();
        let p2 = pending.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(stdout, herd_proto::codec());
            while let Some(Ok(frame)) = frames.next().await {
                if let Ok(reply) = herd_proto::decode::<FsReply>(&frame)
                    && let Some(tx) = p2.lock().ok().and_then(|mut p| p.remove(&reply.id))
                {
                    let _ = tx.send(reply.resp);
                }
            }
            // The service is gone: fail everything still waiting.
            if let Ok(mut p) = p2.lock() {
                p.clear();
            }
        });
        Ok(FsClient {
            tx,
            pending,
            next: AtomicU64::new(1),
            _child: child,
        })
    }

    /// Asks one question.
    pub async fn call(&self, req: FsRequest) -> FsResponse {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        if self.tx.send(FsCall { id, req }).await.is_err() {
            return FsResponse::Errno(libc::EIO);
        }
        rx.await.unwrap_or(FsResponse::Errno(libc::EIO))
    }
}

/// What a task's commit may write, and its limits (`herd __fs-commit`'s arguments
/// besides who and which task).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitArgs {
    /// Writable roots (`--writes`, repeatable): nothing outside them is written.
    pub writes: Vec<PathBuf>,
    /// Hidden paths, never written even inside a root (`--hide`, repeatable).
    pub hide: Vec<PathBuf>,
    /// Where the commit's intent log goes (`--log-dir`; by default
    /// `~/.local/state/herd/commits` of the user in `/etc/passwd`).
    pub log_dir: Option<PathBuf>,
    /// At most this many changes (`--max-files`).
    pub max_files: Option<u64>,
    /// At most this many bytes of file data (`--max-bytes`).
    pub max_bytes: Option<u64>,
}

impl CommitArgs {
    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = Vec::new();
        for (flag, paths) in [("--writes", &self.writes), ("--hide", &self.hide)] {
            for p in paths {
                out.push(flag.into());
                out.push(p.clone().into_os_string());
            }
        }
        if let Some(d) = &self.log_dir {
            out.push("--log-dir".into());
            out.push(d.clone().into_os_string());
        }
        for (flag, n) in [
            ("--max-files", self.max_files),
            ("--max-bytes", self.max_bytes),
        ] {
            if let Some(n) = n {
                out.push(flag.into());
                out.push(n.to_string().into());
            }
        }
        out
    }

    fn from_args(args: &[String]) -> Result<CommitArgs, String> {
        let mut c = CommitArgs::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value"))
            };
            // A hidden directory may come with a trailing slash; paths are plain.
            let path = |v: String| PathBuf::from(v.trim_end_matches('/'));
            let num = |v: String| {
                v.parse::<u64>()
                    .map_err(|_| format!("{a}: not a number: {v}"))
            };
            match a.as_str() {
                "--writes" => c.writes.push(path(value()?)),
                "--hide" => c.hide.push(path(value()?)),
                "--log-dir" => c.log_dir = Some(PathBuf::from(value()?)),
                "--max-files" => c.max_files = Some(num(value()?)?),
                "--max-bytes" => c.max_bytes = Some(num(value()?)?),
                _ => {}
            }
        }
        Ok(c)
    }
}

/// The home directory of `uid` in `/etc/passwd`, read directly rather than through NSS:
/// a statically linked herd must not load the host's NSS modules.
pub fn user_home(uid: u32) -> Option<PathBuf> {
    passwd_home(&std::fs::read_to_string("/etc/passwd").ok()?, uid)
}

/// The home directory of `uid` in the text of `/etc/passwd`.
pub fn passwd_home(passwd: &str, uid: u32) -> Option<PathBuf> {
    passwd_users(passwd).find_map(|(u, _, home)| (u == uid).then_some(home))
}

/// The users of the text of `/etc/passwd` with an absolute home: uid, primary gid,
/// home.
fn passwd_users(passwd: &str) -> impl Iterator<Item = (u32, u32, PathBuf)> + '_ {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || !f[5].starts_with('/') {
            return None;
        }
        Some((f[2].parse().ok()?, f[3].parse().ok()?, PathBuf::from(f[5])))
    })
}

/// Where a user's commits keep their intent logs: in the user's state under `home`
/// (hidden from tasks, like all of `~/.local/state/herd`).
pub fn commit_log_dir(home: &Path) -> PathBuf {
    home.join(".local/state/herd/commits")
}

/// Finishes or undoes, for every user with a pending commit log, what a commit cut
/// short left (the agent's start: a crash of the workstation or of the agent killed
/// them). Each user's recovery runs as that user (`__fs-commit --recover`), with the
/// primary group only; one needing more is recovered by that user's next commit.
/// An agent that is not root recovers its own user's only.
pub async fn recover_commits(exe: &Path) {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return;
    };
    let me = nix::unistd::getuid().as_raw();
    for (uid, gid, home) in passwd_users(&passwd) {
        if me != 0 && uid != me {
            continue;
        }
        let dir = commit_log_dir(&home);
        if !std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            continue;
        }
        let id = Identity {
            uid,
            gid,
            groups: vec![gid],
        };
        let status = tokio::process::Command::new(exe)
            .arg("__fs-commit")
            .args(id.args())
            .arg("--recover")
            .stdin(Stdio::null())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => {
                tracing::info!(uid, dir = %dir.display(), "recovered commits cut short")
            }
            other => {
                tracing::warn!(uid, dir = %dir.display(), "could not recover commits cut short: {other:?}")
            }
        }
    }
}

/// Starts `exe __fs-commit` as `id` for `task`, writing only as `commit` allows;
/// feed it frames on stdin, read the report from stdout.
pub fn start_commit(
    exe: &Path,
    id: &Identity,
    task: u64,
    commit: &CommitArgs,
) -> Result<tokio::process::Child, AgentError> {
    tokio::process::Command::new(exe)
        .arg("__fs-commit")
        .args(id.args())
        .args(["--task", &format!("{task:016x}")])
        .args(commit.args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| AgentError::io(exe, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_args_roundtrip() {
        let id = Identity {
            uid: 1000,
            gid: 100,
            groups: vec![4, 27],
        };
        assert_eq!(Identity::from_args(&id.args()), Some(id));
        let none = Identity {
            uid: 1,
            gid: 2,
            groups: vec![],
        };
        assert_eq!(Identity::from_args(&none.args()), Some(none));
    }

    #[test]
    fn commit_stream_ending_early_commits_nothing() {
        // Not below /tmp: the file service treats it as the task's own.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let logs = tempfile::tempdir().unwrap();
        let cargs = CommitArgs {
            writes: vec![dir.path().to_path_buf()],
            ..CommitArgs::default()
        };
        let path = dir.path().join("f").into_os_string().into_encoded_bytes();
        let mut input = Vec::new();
        write_frame(
            &mut input,
            &CommitFrame::Change(herd_proto::fs::Change::File {
                path: path.clone(),
                mode: 0o644,
                mtime_ns: 0,
                size: 4,
                base: herd_proto::fs::Base::Absent,
            }),
        )
        .unwrap();
        write_frame(&mut input, &CommitFrame::Data(b"da".to_vec())).unwrap();
        write_frame(&mut input, &CommitFrame::Data(b"ta".to_vec())).unwrap();
        // No Done: the helper died. Nothing is left, staging and log included.
        let r = run_commit("t", &cargs, Path::new("/"), logs.path(), &mut &input[..]);
        assert!(r.error.is_some());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(logs.path()).unwrap().count(), 0);
        // With Done it lands.
        write_frame(&mut input, &CommitFrame::Done).unwrap();
        let r = run_commit("t", &cargs, Path::new("/"), logs.path(), &mut &input[..]);
        assert_eq!(r.error, None);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"data");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Outside the write scope: dropped and reported, not written.
        let other = tempfile::tempdir_in("/var/tmp").unwrap();
        let mut input = Vec::new();
        let outside = other.path().join("g").into_os_string().into_encoded_bytes();
        write_frame(
            &mut input,
            &CommitFrame::Change(herd_proto::fs::Change::File {
                path: outside.clone(),
                mode: 0o644,
                mtime_ns: 0,
                size: 1,
                base: herd_proto::fs::Base::Absent,
            }),
        )
        .unwrap();
        write_frame(&mut input, &CommitFrame::Data(b"x".to_vec())).unwrap();
        write_frame(&mut input, &CommitFrame::Done).unwrap();
        let r = run_commit("t2", &cargs, Path::new("/"), logs.path(), &mut &input[..]);
        assert_eq!(r.error, None);
        assert_eq!(
            r.dropped,
            vec![(outside, "outside the write scope".to_string())]
        );
        assert!(!other.path().join("g").exists());
        // The scope and limits reach the commit process as they were given.
        let c = CommitArgs {
            writes: vec!["/home/u/proj".into(), "/tmp/x".into()],
            hide: vec!["/home/u/.ssh".into()],
            log_dir: Some("/home/u/.local/state/herd/commits".into()),
            max_files: Some(10),
            max_bytes: Some(20),
        };
        let args: Vec<String> = c
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(CommitArgs::from_args(&args), Ok(c));
    }
}
