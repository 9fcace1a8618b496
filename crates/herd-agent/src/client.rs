//! `herd run`'s side: describe the command, hand it to the local agent, then relay
//! stdin, signals and window size one way and output the other, and exit with the
//! task's code.
//!
//! Exit codes: the command's own, or 128+N if a signal N killed it; 127 when the
//! command or the working directory does not exist on the workstation; 255 for
//! herd's own failures (no agent, no helper, helper lost), each with one `herd: ...`
//! line on stderr.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{SinkExt, StreamExt};
use herd_proto::{LocalRequest, RunEvent, RunSpec, TaskInput, TaskOutput};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::codec::Framed;

use crate::state::StateDir;

/// Exit code of herd's own failures.
pub const EXIT_HERD: i32 = 255;

/// How `herd run` was asked to behave.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `--on NODE`.
    pub on: Option<String>,
    /// `-t` (true), `-T` (false) or automatic (None: a terminal when stdin and stdout
    /// are terminals).
    pub tty: Option<bool>,
    /// `--env K=V` overrides.
    pub env: Vec<(String, String)>,
    /// `--retries N`: re-runs elsewhere when the node is lost or evicts the task.
    pub retries: u32,
    /// Whether placement may run the task on the workstation itself.
    pub local_ok: bool,
    /// Extra paths to hide from the task (absolute).
    pub hide: Vec<std::path::PathBuf>,
    /// More directories the task may write under, besides its working directory
    /// (`--writes`, `[run] writable`; relative ones from the working directory).
    pub writes: Vec<std::path::PathBuf>,
    /// `--net`: the network the task asks for.
    pub net: herd_proto::NetMode,
}

const RLIMITS: &[i32] = &[
    libc::RLIMIT_CPU as i32,
    libc::RLIMIT_FSIZE as i32,
    libc::RLIMIT_DATA as i32,
    libc::RLIMIT_STACK as i32,
    libc::RLIMIT_CORE as i32,
    libc::RLIMIT_NOFILE as i32,
    libc::RLIMIT_AS as i32,
    libc::RLIMIT_NPROC as i32,
    libc::RLIMIT_MEMLOCK as i32,
];

fn current_umask() -> u32 {
    // SAFETY: umask has no preconditions; it is set back at once.
    unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    }
}

fn rlimits() -> Vec<(i32, u64, u64)> {
    RLIMITS
        .iter()
        .filter_map(|&r| {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into a valid rlimit.
            let ok = unsafe { libc::getrlimit(r as _, &mut l) } == 0;
            ok.then_some((r, l.rlim_cur, l.rlim_max))
        })
        .collect()
}

fn window_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes into a valid winsize.
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Describes `argv` as run here and now.
pub fn describe(argv: &[std::ffi::OsString], opts: &RunOptions) -> std::io::Result<RunSpec> {
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .filter(|(k, _)| k != "HERD_STATE")
        .map(|(k, v)| (k.into_vec(), v.into_vec()))
        .collect();
    for (k, v) in &opts.env {
        env.retain(|(ek, _)| ek != k.as_bytes());
        env.push((k.clone().into_bytes(), v.clone().into_bytes()));
    }
    let tty = opts
        .tty
        .unwrap_or_else(|| std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let exe = argv.first().and_then(|cmd| {
        let path = env.iter().find(|(k, _)| k == b"PATH").map(|(_, v)| v)?;
        resolve(cmd.as_bytes(), path)
    });
    let cwd = std::env::current_dir()?;
    Ok(RunSpec {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env,
        writes: opts
            .writes
            .iter()
            .map(|p| write_root(&cwd, p).into_os_string().into_vec())
            .collect(),
        cwd: cwd.into_os_string().into_vec(),
        umask: current_umask(),
        rlimits: rlimits(),
        tty: if tty {
            Some(window_size().unwrap_or((24, 80)))
        } else {
            None
        },
        on: opts.on.clone(),
        retries: opts.retries,
        // The workstation runs its own share without a sandbox: no network of its own.
        local_ok: opts.local_ok && opts.net != herd_proto::NetMode::Loopback,
        hide: opts
            .hide
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect(),
        exe,
        net: opts.net,
    })
}

/// A `--writes` directory as the workstation resolves it: relative to `cwd`, its links
/// followed (the user named it; a task sees and writes the link's target). One that
/// does not exist yet is taken as written, made absolute.
pub fn write_root(cwd: &std::path::Path, p: &std::path::Path) -> std::path::PathBuf {
    let abs = cwd.join(p);
    std::fs::canonicalize(&abs).unwrap_or(abs)
}

/// The one line `herd run` prints about changes that were not written.
pub fn not_written_line(dropped: &[(Vec<u8>, String)]) -> Option<String> {
    const SHOWN: usize = 5;
    if dropped.is_empty() {
        return None;
    }
    let mut reasons: Vec<&str> = Vec::new();
    for (_, why) in dropped {
        if !reasons.contains(&why.as_str()) {
            reasons.push(why);
        }
    }
    let paths: Vec<String> = dropped
        .iter()
        .take(SHOWN)
        .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
        .collect();
    let more = match dropped.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let n = dropped.len();
    Some(format!(
        "herd: {n} {} of the task not written ({}): {}{more}; `--writes DIR` lets a task write outside its working directory\n",
        if n == 1 { "change" } else { "changes" },
        reasons.join("; "),
        paths.join(", "),
    ))
}

/// Where a `PATH` search for `cmd` (named without a `/`) ends: the first regular file
/// `DIR/cmd` the user may execute, over the absolute directories of `path`. `None`
/// for a name with a `/`, or when the search reaches a relative directory first or
/// finds nothing (the sandbox then searches by itself). Not [`crate::shell::resolve`],
/// which skips empty entries and herd's own links: this one must end where the
/// sandbox's own search would, so it stops at a relative entry (searched first there).
fn resolve(cmd: &[u8], path: &[u8]) -> Option<Vec<u8>> {
    if cmd.is_empty() || cmd.contains(&b'/') {
        return None;
    }
    for dir in path.split(|&c| c == b':') {
        if dir.first() != Some(&b'/') {
            return None;
        }
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(cmd);
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&full));
        if p.metadata().is_ok_and(|m| m.is_file())
            && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
        {
            return Some(full);
        }
    }
    None
}

/// Puts the terminal in raw mode while alive.
struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            nix::sys::termios::cfmakeraw(&mut raw);
            let _ = nix::sys::termios::tcsetattr(
                stdin.as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                &raw,
            );
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Where a task's streams go, and what else `herd run` relays.
#[derive(Debug, Default)]
pub struct Io {
    /// Forward this process's stdin (otherwise the task's stdin is empty).
    pub stdin: bool,
    /// Capture stdout into this file (otherwise this process's stdout).
    pub stdout: Option<std::fs::File>,
    /// Capture stderr into this file (otherwise this process's stderr).
    pub stderr: Option<std::fs::File>,
    /// Forward SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH.
    pub signals: bool,
    /// Stop the task (SIGTERM, then kill) when this turns true.
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Io {
    /// `herd run`'s own: this process's stdio and signals.
    pub fn terminal() -> Io {
        Io {
            stdin: true,
            signals: true,
            ..Io::default()
        }
    }
}

/// How a task ended, as `herd run` saw it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The exit code `herd run` gives: the task's, 128+N, 127, or 255.
    pub code: i32,
    /// The node that ran it (last attempt).
    pub node: Option<String>,
    /// herd's own failure or the helper's explanation, one line (already shown when
    /// stderr is this process's).
    pub error: Option<String>,
    /// Attempts lost before the last one: (node, why).
    pub retried: Vec<(String, String)>,
}

fn write_to(file: &mut Option<std::fs::File>, data: &[u8], err: bool) {
    match file {
        Some(f) => {
            let _ = f.write_all(data);
        }
        None if err => {
            let mut e = std::io::stderr();
            let _ = e.write_all(data);
            let _ = e.flush();
        }
        None => {
            let mut o = std::io::stdout();
            let _ = o.write_all(data);
            let _ = o.flush();
        }
    }
}

/// Empties a capture file after a lost attempt.
fn rewind(file: &mut Option<std::fs::File>) {
    use std::io::Seek;
    if let Some(f) = file {
        let _ = f.set_len(0);
        let _ = f.seek(std::io::SeekFrom::Start(0));
    }
}

const FORWARDED: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Whether stdin is `/dev/null` (scripts and benchmarks often run commands so): its
/// end is known without starting a reader.
fn stdin_is_null() -> bool {
    let Ok(st) = rustix::fs::fstat(std::io::stdin()) else {
        return false;
    };
    let null = rustix::fs::stat("/dev/null");
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice
        && null.is_ok_and(|n| n.st_rdev == st.st_rdev)
}

/// Runs `spec` through the agent of `dir`; returns the exit code. Errors are printed.
pub async fn run(dir: &StateDir, spec: RunSpec) -> i32 {
    run_io(dir, spec, Io::terminal()).await.code
}

/// Runs `spec` through the agent of `dir` with the streams of `io`.
pub async fn run_io(dir: &StateDir, spec: RunSpec, mut io: Io) -> Outcome {
    let captured_err = io.stderr.is_some();
    let mut outcome = Outcome::default();
    let fail = |mut o: Outcome, m: String| {
        if !captured_err {
            eprintln!("herd: {m}");
        }
        o.code = EXIT_HERD;
        o.error = Some(m);
        o
    };
    let stream = match tokio::net::UnixStream::connect(dir.socket_path()).await {
        Ok(s) => s,
        Err(_) => {
            return fail(
                outcome,
                format!(
                    "no herd agent is running on state directory {} (start one with `herd agent`)",
                    dir.root().display()
                ),
            );
        }
    };
    let tty = spec.tty.is_some();
    let mut framed = Framed::new(stream, herd_proto::codec());
    let Ok(req) = herd_proto::encode(&LocalRequest::Run(spec.clone())) else {
        return fail(outcome, "the command is too large to send".into());
    };
    if framed.send(req).await.is_err() {
        return fail(outcome, "the agent closed the connection".into());
    }
    // The task may wait in the agent's queue until a slot frees; nothing is relayed
    // before it is placed.
    let waiting_note = async {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        if !captured_err && std::io::stderr().is_terminal() {
            eprintln!(
                "herd: waiting for a free slot in the cluster (`herd nodes` shows who is busy)"
            );
        }
        std::future::pending::<()>().await
    };
    let first = tokio::select! {
        f = framed.next() => f,
        _ = cancelled(&mut io.cancel) => {
            return fail(outcome, "cancelled before the task started".into());
        }
        _ = waiting_note => unreachable!("the note never ends"),
    };
    let first = match first.map(|f| f.map(|b| herd_proto::decode::<RunEvent>(&b))) {
        Some(Ok(Ok(ev))) => ev,
        Some(Ok(Err(_))) => return fail(outcome, "the agent sent something unreadable".into()),
        _ => {
            return fail(
                outcome,
                "lost the connection to the agent before the task started".into(),
            );
        }
    };
    match first {
        RunEvent::Placed { node } => outcome.node = Some(node),
        RunEvent::RunHere { node } => {
            run_here_into(&spec, &node, &mut io, &mut outcome).await;
            if let Ok(b) = herd_proto::encode(&TaskInput::LocalDone(outcome.code)) {
                let _ = framed.send(b).await;
            }
            return outcome;
        }
        RunEvent::Error(m) => return fail(outcome, m),
        _ => return fail(outcome, "the agent sent an unexpected answer".into()),
    }
    let _raw = tty.then(RawMode::enter);
    let (mut sink, mut events) = framed.split();
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<TaskInput>(16);

    // Whether any of this process's stdin was read for the task: a re-run here could
    // not see it again.
    let stdin_read = Arc::new(AtomicBool::new(false));
    if io.stdin && !stdin_is_null() {
        // stdin, in a task of its own (reading blocks a thread).
        let stdin_tx = in_tx.clone();
        let read = stdin_read.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = stdin_tx.send(TaskInput::StdinEof).await;
                        return;
                    }
                    Ok(n) => {
                        read.store(true, Ordering::SeqCst);
                        if stdin_tx
                            .send(TaskInput::Stdin(buf[..n].to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    } else {
        let _ = in_tx.send(TaskInput::StdinEof).await;
    }
    if io.signals {
        for sig in FORWARDED {
            let tx = in_tx.clone();
            let Ok(mut s) = signal(SignalKind::from_raw(sig)) else {
                continue;
            };
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    let input = if sig == libc::SIGWINCH {
                        match window_size() {
                            Some((r, c)) => TaskInput::Resize(r, c),
                            None => continue,
                        }
                    } else {
                        TaskInput::Signal(sig)
                    };
                    if tx.send(input).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    let ctl_tx = in_tx.clone();
    let mut cancel = io.cancel.take();
    let mut deadline: Option<tokio::time::Instant> = None;
    drop(in_tx);
    tokio::spawn(async move {
        while let Some(input) = in_rx.recv().await {
            let Ok(b) = herd_proto::encode(&input) else {
                continue;
            };
            if sink.send(b).await.is_err() {
                return;
            }
        }
    });

    loop {
        let frame = tokio::select! {
            f = events.next() => f,
            _ = cancelled(&mut cancel), if deadline.is_none() => {
                let _ = ctl_tx.send(TaskInput::Signal(libc::SIGTERM)).await;
                deadline = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(3));
                continue;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                // Closing the connection makes the agent drop the task, which kills it.
                drop(_raw);
                return fail(outcome, "cancelled; the task was killed".into());
            }
        };
        let Some(frame) = frame else { break };
        let Ok(frame) = frame else { break };
        let Ok(ev) = herd_proto::decode::<RunEvent>(&frame) else {
            return fail(outcome, "the agent sent something unreadable".into());
        };
        match ev {
            RunEvent::Output(TaskOutput::Stdout(d)) => write_to(&mut io.stdout, &d, false),
            RunEvent::Output(TaskOutput::Stderr(d)) => write_to(&mut io.stderr, &d, true),
            RunEvent::Output(TaskOutput::Failed { message, code }) => {
                drop(_raw);
                write_to(
                    &mut io.stderr,
                    format!("herd: {message}\n").as_bytes(),
                    true,
                );
                outcome.code = code;
                outcome.error = Some(message);
                return outcome;
            }
            RunEvent::RunHere { node } => {
                // A re-run placed on the workstation itself after a lost attempt: run it
                // here, as when placement chose this node first, and say how it ended.
                drop(_raw);
                if stdin_read.load(Ordering::SeqCst) {
                    let m = "the task's stdin was already read for the lost attempt; it cannot run again".to_owned();
                    write_to(&mut io.stderr, format!("herd: {m}\n").as_bytes(), true);
                    outcome.code = EXIT_HERD;
                    outcome.error = Some(m);
                } else {
                    run_here_into(&spec, &node, &mut io, &mut outcome).await;
                }
                let _ = ctl_tx.send(TaskInput::LocalDone(outcome.code)).await;
                // Let the sender task pass it on: the agent ends the job and closes
                // the connection.
                drop(ctl_tx);
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await;
                return outcome;
            }
            RunEvent::Output(_) | RunEvent::Placed { .. } => {}
            RunEvent::Retrying { node, reason } => {
                // The lost attempt's output is discarded where it was captured.
                rewind(&mut io.stdout);
                rewind(&mut io.stderr);
                if !captured_err {
                    eprintln!("herd: {reason}; running the task again elsewhere");
                }
                outcome.retried.push((node, reason));
            }
            RunEvent::Conflicts(list) => {
                for (path, saved) in list {
                    let p = String::from_utf8_lossy(&path);
                    let line = match saved {
                        Some(s) => format!(
                            "herd: {p} changed on the workstation while the task ran: kept it; the task's version is {}\n",
                            String::from_utf8_lossy(&s)
                        ),
                        None => format!(
                            "herd: {p} changed on the workstation while the task ran: kept it (the task deleted it)\n"
                        ),
                    };
                    write_to(&mut io.stderr, line.as_bytes(), true);
                }
            }
            RunEvent::NotWritten { dropped, stripped } => {
                if let Some(line) = not_written_line(&dropped) {
                    write_to(&mut io.stderr, line.as_bytes(), true);
                }
                if !stripped.is_empty() {
                    let paths: Vec<String> = stripped
                        .iter()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect();
                    let line = format!(
                        "herd: set-user-ID, set-group-ID and sticky bits from the helper dropped on {}\n",
                        paths.join(", ")
                    );
                    write_to(&mut io.stderr, line.as_bytes(), true);
                }
            }
            RunEvent::Exit(code) => {
                outcome.code = code;
                return outcome;
            }
            RunEvent::Error(m) => {
                drop(_raw);
                return fail(outcome, m);
            }
        }
    }
    drop(_raw);
    fail(
        outcome,
        "lost the connection to the agent before the task ended".into(),
    )
}

/// Resolves when `cancel` turns true (never without one).
async fn cancelled(cancel: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match cancel {
        Some(c) => {
            let _ = c.wait_for(|v| *v).await;
        }
        None => std::future::pending().await,
    }
}

/// Runs the task on this machine, directly as the calling user: what placement chose
/// when the workstation finishes it soonest. Same files, same identity, same limits,
/// no sandbox (writes land at once rather than at exit).
/// Runs the task here ([`run_here`]) and records how it ended in `outcome`: its code,
/// or 127 / 126 with the error written to stderr.
async fn run_here_into(spec: &RunSpec, node: &str, io: &mut Io, outcome: &mut Outcome) {
    outcome.node = Some(node.to_owned());
    match run_here(spec, node, io).await {
        Ok(code) => outcome.code = code,
        Err(m) => {
            write_to(&mut io.stderr, format!("herd: {m}\n").as_bytes(), true);
            outcome.code = if m.contains("not found") { 127 } else { 126 };
            outcome.error = Some(m);
        }
    }
}

async fn run_here(spec: &RunSpec, node: &str, io: &mut Io) -> Result<i32, String> {
    use std::ffi::OsString;
    use std::process::Stdio;
    let os = |b: &Vec<u8>| OsString::from_vec(b.clone());
    let argv0 = spec.argv.first().ok_or("empty command")?;
    let mut cmd = tokio::process::Command::new(os(argv0));
    cmd.args(spec.argv[1..].iter().map(os))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (os(k), os(v))))
        .env("HERD_NODE", node)
        .current_dir(os(&spec.cwd))
        .stdin(if io.stdin {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    let out = |f: &Option<std::fs::File>| match f.as_ref().map(|f| f.try_clone()) {
        Some(Ok(f)) => Stdio::from(f),
        _ => Stdio::inherit(),
    };
    cmd.stdout(out(&io.stdout)).stderr(out(&io.stderr));
    let name = String::from_utf8_lossy(argv0).to_string();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(
                if std::path::Path::new(&OsString::from_vec(spec.cwd.clone())).is_dir() {
                    format!("{name}: command not found")
                } else {
                    format!(
                        "working directory {} not found",
                        String::from_utf8_lossy(&spec.cwd)
                    )
                },
            );
        }
        Err(e) => return Err(format!("{name}: {e}")),
    };
    let pid = child.id().map(|p| p as i32);
    // The terminal delivers SIGINT, SIGQUIT and SIGWINCH to the child itself (same
    // process group); the others are forwarded.
    let from_tty = std::io::stdin().is_terminal();
    let mut sigs = Vec::new();
    if io.signals {
        for sig in FORWARDED {
            if sig == libc::SIGWINCH || (from_tty && (sig == libc::SIGINT || sig == libc::SIGQUIT))
            {
                continue;
            }
            if let Ok(s) = signal(SignalKind::from_raw(sig)) {
                sigs.push((sig, s));
            }
        }
    }
    let (stx, mut srx) = tokio::sync::mpsc::channel::<i32>(8);
    for (sig, mut s) in sigs {
        let tx = stx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(sig).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(stx);
    let kill = |sig: i32| {
        if let Some(pid) = pid {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, sig) };
        }
    };
    let mut cancel = io.cancel.clone();
    let mut term_sent = false;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st.map_err(|e| format!("{name}: {e}"))?,
            Some(sig) = srx.recv() => kill(sig),
            _ = cancelled(&mut cancel), if !term_sent => {
                term_sent = true;
                kill(libc::SIGTERM);
                let tx_pid = pid;
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                    if let Some(p) = tx_pid {
                        // SAFETY: kill has no memory preconditions.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                });
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    #[test]
    fn the_exe_hint_is_where_a_shell_search_would_end() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        for dir in [&a, &b, &c] {
            std::fs::create_dir(dir).unwrap();
        }
        // a/tool is a directory, b/tool a file nobody may execute, c/tool the program.
        std::fs::create_dir(a.join("tool")).unwrap();
        std::fs::write(b.join("tool"), "x").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(c.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(c.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = |dirs: &[&Path]| -> Vec<u8> {
            let s: Vec<String> = dirs.iter().map(|p| p.display().to_string()).collect();
            s.join(":").into_bytes()
        };
        let found = resolve(b"tool", &path(&[&a, &b, &c]));
        assert_eq!(found, Some(c.join("tool").into_os_string().into_vec()));
        // Not for a name with a slash, a relative directory before the match, or none.
        assert_eq!(resolve(b"./tool", &path(&[&c])), None);
        assert_eq!(
            resolve(b"tool", format!(".:{}", c.display()).as_bytes()),
            None
        );
        assert_eq!(resolve(b"tool", &path(&[&a, &b])), None);
    }
}
