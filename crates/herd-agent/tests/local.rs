//! The CLI-to-agent socket under a hostile local user: connections held idle, the
//! agent out of descriptors, and `herd ps` shown to another user.
//!
//! The tests run as root and play the other user (uid 65534) from a thread that
//! changes only its own effective uid (a raw `setresuid` system call; glibc's wrapper
//! would change every thread's) for the moment it connects: the kernel records the
//! connecting thread's credentials for `SO_PEERCRED`. The tests of this file run one
//! at a time: one lowers the process's descriptor limit and measures its CPU time.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herd_agent::local;
use herd_proto::{LocalRequest, LocalResponse, RunEvent, RunSpec};
use tokio_util::codec::Framed;

const NOBODY: u32 = 65534;

/// One test at a time (process-wide limits, CPU time).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

mod common;

use common::*;

/// Lets every user reach the agent's socket, as the system agent's is.
fn open_to_all(agent: &Cluster) {
    for p in [agent.tmp.path(), agent.ws.root()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        agent.ws.socket_path(),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
}

/// Runs `f` on a thread of its own whose effective uid is `uid` meanwhile (only that
/// thread's: a raw system call).
fn as_uid<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let keep = u32::MAX; // -1: unchanged
        // SAFETY: plain system calls changing this thread's credentials.
        let r = unsafe { libc::syscall(libc::SYS_setresuid, keep, uid, keep) };
        assert_eq!(r, 0, "setresuid: {}", std::io::Error::last_os_error());
        let out = f();
        let r = unsafe { libc::syscall(libc::SYS_setresuid, keep, 0u32, keep) };
        assert_eq!(r, 0, "setresuid back: {}", std::io::Error::last_os_error());
        out
    })
    .join()
    .unwrap()
}

fn connect_as(uid: u32, path: &Path) -> StdStream {
    let path = path.to_path_buf();
    as_uid(uid, move || StdStream::connect(path).unwrap())
}

fn frame(req: &LocalRequest) -> Vec<u8> {
    use tokio_util::codec::Encoder;
    let mut buf = bytes::BytesMut::new();
    herd_proto::codec()
        .encode(herd_proto::encode(req).unwrap(), &mut buf)
        .unwrap();
    buf.to_vec()
}

/// One request and its answer on a blocking connection.
fn ask(mut s: &StdStream, req: &LocalRequest) -> std::io::Result<LocalResponse> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&frame(req))?;
    read_answer(s)
}

fn read_answer(mut s: &StdStream) -> std::io::Result<LocalResponse> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    herd_proto::decode(&body).map_err(|e| std::io::Error::other(e.to_string()))
}

/// `uid`'s `herd ps` (off the runtime's thread: the agent runs on it).
async fn ps_as(uid: u32, path: &Path) -> Vec<herd_proto::TaskInfo> {
    let path = path.to_path_buf();
    let resp = tokio::task::spawn_blocking(move || {
        as_uid(uid, move || {
            let s = StdStream::connect(path).unwrap();
            ask(&s, &LocalRequest::Ps).unwrap()
        })
    })
    .await
    .unwrap();
    match resp {
        LocalResponse::Ps(t) => t,
        other => panic!("ps answered {other:?}"),
    }
}

fn spec(argv: &[&str]) -> RunSpec {
    RunSpec {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: vec![(b"TOKEN".to_vec(), b"hunter2".to_vec())],
        cwd: b"/".to_vec(),
        umask: 0o022,
        rlimits: vec![],
        tty: None,
        on: None,
        retries: 0,
        local_ok: true,
        hide: vec![],
        writes: vec![],
        exe: None,
        net: herd_proto::NetMode::Default,
    }
}

/// Submits a task from `stream` and keeps the connection (the task stays listed).
async fn submit(
    stream: StdStream,
    argv: &[&str],
) -> Framed<tokio::net::UnixStream, herd_proto::Codec> {
    stream.set_nonblocking(true).unwrap();
    let s = tokio::net::UnixStream::from_std(stream).unwrap();
    let mut f = Framed::new(s, herd_proto::codec());
    f.send(herd_proto::encode(&LocalRequest::Run(spec(argv))).unwrap())
        .await
        .unwrap();
    f
}

#[tokio::test]
async fn ps_shows_other_users_tasks_without_their_command_lines() {
    let _serial = SERIAL.lock().await;
    let agent = start_cluster().await;
    open_to_all(&agent);
    let path = agent.ws.socket_path();

    let _root_task = submit(
        connect_as(0, &path),
        &["/usr/bin/make", "deploy", "PASSWORD=root-secret"],
    )
    .await;
    let mut nobody_task = submit(
        connect_as(NOBODY, &path),
        &["/usr/bin/curl", "-H", "Authorization: nobody-secret"],
    )
    .await;
    // Both are listed once the main loop took them (the first one placed here, the
    // second queued behind it, or both queued).
    let deadline = Instant::now() + Duration::from_secs(10);
    let all = loop {
        let all = ps_as(0, &path).await;
        if all.len() == 2 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "ps never listed both tasks: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The tasks are still there: nobody's was not refused meanwhile.
    if let Ok(Some(Ok(f))) =
        tokio::time::timeout(Duration::from_millis(1), nobody_task.next()).await
    {
        let ev: RunEvent = herd_proto::decode(&f).unwrap();
        assert!(!matches!(ev, RunEvent::Error(_)), "{ev:?}");
    }

    // Root sees everything.
    let by = |ts: &[herd_proto::TaskInfo], uid: u32| {
        ts.iter()
            .find(|t| t.uid == uid)
            .unwrap_or_else(|| panic!("no task of uid {uid} in {ts:?}"))
            .clone()
    };
    assert!(by(&all, 0).command.contains("root-secret"), "{all:?}");
    assert!(
        by(&all, NOBODY).command.contains("nobody-secret"),
        "{all:?}"
    );

    // Nobody sees its own command line and that root has a task, not what it runs.
    let seen = ps_as(NOBODY, &path).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        by(&seen, NOBODY).command.contains("nobody-secret"),
        "{seen:?}"
    );
    let roots = by(&seen, 0);
    assert!(
        !roots.command.contains("root-secret") && !roots.command.contains("make"),
        "another user's command line is shown: {seen:?}"
    );
    assert_eq!(roots.command, "(another user's task)");
    assert_eq!(roots.id, by(&all, 0).id);
    assert_eq!(roots.state, by(&all, 0).state);

    // And a third user sees neither command line.
    let third = ps_as(NOBODY - 1, &path).await;
    assert_eq!(third.len(), 2);
    assert!(
        third.iter().all(|t| t.command == "(another user's task)"),
        "{third:?}"
    );
    agent.stop_within().await;
}

#[tokio::test]
async fn a_user_holding_idle_connections_is_capped_and_others_are_served() {
    let _serial = SERIAL.lock().await;
    let agent = start_cluster().await;
    open_to_all(&agent);
    let path = agent.ws.socket_path();

    let started = Instant::now();
    let p = path.clone();
    let held: Vec<StdStream> = as_uid(NOBODY, move || {
        (0..150).map(|_| StdStream::connect(&p).unwrap()).collect()
    });
    // Root (and any other user) is still answered while they are held.
    match local::call(&agent.ws, &LocalRequest::Status).await.unwrap() {
        LocalResponse::Status(_) => {}
        other => panic!("status answered {other:?}"),
    }
    // The connections beyond the user's share are refused at once, saying why (long
    // before the agent's 10 s wait for a first request would close them).
    let refused = tokio::task::spawn_blocking(move || {
        for s in &held {
            s.set_nonblocking(true).unwrap();
        }
        // Something to read, or the connection closed.
        let answered = |s: &StdStream| {
            let mut b = 0u8;
            // SAFETY: reads at most one byte into `b`.
            let r = unsafe {
                libc::recv(
                    s.as_raw_fd(),
                    (&mut b as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            r >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while held.iter().filter(|s| answered(s)).count() < 150 - 64 {
            assert!(
                Instant::now() < deadline,
                "the agent refused {} of 150 idle connections of one user",
                held.iter().filter(|s| answered(s)).count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (done, open): (Vec<StdStream>, Vec<StdStream>) =
            held.into_iter().partition(|s| answered(s));
        for s in &done {
            s.set_nonblocking(false).unwrap();
            let msg = match read_answer(s) {
                Ok(LocalResponse::Error(m)) => m,
                other => panic!("a refused connection got {other:?}"),
            };
            assert!(msg.contains("too many"), "{msg}");
        }
        (done.len(), open)
    })
    .await
    .unwrap();
    let (refused, open) = refused;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "too slow to tell: the agent's first-request timeout may have closed them"
    );
    assert_eq!(refused, 150 - 64, "refused connections");
    // At the cap, a connection whose request is already there when the agent accepts
    // it (here written while the agent's thread is held by this very call) is served:
    // a burst of `herd run`s is not refused.
    let p = path.clone();
    let eager = as_uid(NOBODY, move || {
        let mut s = StdStream::connect(p).unwrap();
        s.write_all(&frame(&LocalRequest::Status)).unwrap();
        s
    });
    let answer = tokio::task::spawn_blocking(move || read_answer(&eager).unwrap())
        .await
        .unwrap();
    assert!(matches!(answer, LocalResponse::Status(_)), "{answer:?}");
    // The ones kept are served.
    let answers = tokio::task::spawn_blocking(move || {
        open.iter()
            .map(|s| {
                s.set_nonblocking(false).unwrap();
                ask(s, &LocalRequest::Status).is_ok_and(|r| matches!(r, LocalResponse::Status(_)))
            })
            .filter(|ok| *ok)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(answers, 64);
    agent.stop_within().await;
}

/// CPU time (user + system) this process used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Restores the descriptor limit when dropped (a failed assertion included).
struct NofileLimit(libc::rlimit);

impl NofileLimit {
    fn lower_to(soft: u64) -> NofileLimit {
        let mut old: libc::rlimit = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }, 0);
        NofileLimit(old)
    }
}

impl Drop for NofileLimit {
    fn drop(&mut self) {
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap()
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    let _serial = SERIAL.lock().await;
    let agent = start_cluster().await;
    let path: PathBuf = agent.ws.socket_path();
    // The clients' sockets are made before the limit is lowered; connecting them takes
    // no descriptor.
    let socks: Vec<OwnedFd> = (0..150)
        .map(|_| {
            let fd = unsafe {
                libc::socket(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            assert!(fd >= 0);
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect();
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[i] = *b as libc::c_char;
    }
    // Let the agent settle (its start-up work done) before it runs short.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let limit = NofileLimit::lower_to(highest_fd() + 1 + 16);
    let mut connected = 0;
    for s in &socks {
        let r = unsafe {
            libc::connect(
                s.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if r == 0 {
            connected += 1;
        }
    }
    assert!(connected > 32, "only {connected} connections");
    // The agent accepts what it can, then `accept` fails with EMFILE while connections
    // wait in the backlog.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    drop(limit);
    eprintln!("out of descriptors: {cpu:?} of CPU in {wall:?}");
    assert!(
        cpu.as_secs_f64() < 0.5 * wall.as_secs_f64(),
        "the agent spun while out of descriptors: {cpu:?} of CPU in {wall:?}"
    );
    // With descriptors again, it answers (after the connections waiting before).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            local::call(&agent.ws, &LocalRequest::Status),
        )
        .await
        {
            Ok(Ok(LocalResponse::Status(_))) => break,
            other => assert!(Instant::now() < deadline, "no status: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(socks);
    agent.stop_within().await;
}
