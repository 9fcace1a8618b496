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
    Ok(RunSpec {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env,
        cwd: std::env::current_dir()?.into_os_string().into_vec(),
        umask: current_umask(),
        rlimits: rlimits(),
        tty: if tty {
            Some(window_size().unwrap_or((24, 80)))
        } else {
            None
        },
        on: opts.on.clone(),
    })
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

/// Runs `spec` through the agent of `dir`; returns the exit code. Errors are printed.
pub async fn run(dir: &StateDir, spec: RunSpec) -> i32 {
    let fail = |m: String| {
        eprintln!("herd: {m}");
        EXIT_HERD
    };
    let stream = match tokio::net::UnixStream::connect(dir.socket_path()).await {
        Ok(s) => s,
        Err(_) => {
            return fail(format!(
                "no herd agent is running on state directory {} (start one with `herd agent`)",
                dir.root().display()
            ));
        }
    };
    let tty = spec.tty.is_some();
    let mut framed = Framed::new(stream, herd_proto::codec());
    let Ok(req) = herd_proto::encode(&LocalRequest::Run(spec)) else {
        return fail("the command is too large to send".into());
    };
    if framed.send(req).await.is_err() {
        return fail("the agent closed the connection".into());
    }
    let _raw = tty.then(RawMode::enter);
    let (mut sink, mut events) = framed.split();
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<TaskInput>(16);

    // stdin, in a task of its own (reading blocks a thread).
    let stdin_tx = in_tx.clone();
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
    // Signals to forward.
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
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

    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(frame) = events.next().await {
        let Ok(frame) = frame else { break };
        let Ok(ev) = herd_proto::decode::<RunEvent>(&frame) else {
            return fail("the agent sent something unreadable".into());
        };
        match ev {
            RunEvent::Output(TaskOutput::Stdout(d)) => {
                let _ = stdout.write_all(&d);
                let _ = stdout.flush();
            }
            RunEvent::Output(TaskOutput::Stderr(d)) => {
                let _ = stderr.write_all(&d);
                let _ = stderr.flush();
            }
            RunEvent::Output(TaskOutput::Failed { message, code }) => {
                drop(_raw);
                eprintln!("herd: {message}");
                return code;
            }
            RunEvent::Output(_) => {}
            RunEvent::Conflicts(list) => {
                for (path, saved) in list {
                    let p = String::from_utf8_lossy(&path);
                    match saved {
                        Some(s) => eprintln!(
                            "herd: {p} changed on the workstation while the task ran: kept it; the task's version is {}",
                            String::from_utf8_lossy(&s)
                        ),
                        None => eprintln!(
                            "herd: {p} changed on the workstation while the task ran: kept it (the task deleted it)"
                        ),
                    }
                }
            }
            RunEvent::Exit(code) => return code,
            RunEvent::Error(m) => {
                drop(_raw);
                return fail(m);
            }
        }
    }
    drop(_raw);
    fail("lost the connection to the agent before the task ended".into())
}
