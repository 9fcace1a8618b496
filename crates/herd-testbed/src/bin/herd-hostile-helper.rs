//! A hostile helper for end-to-end tests: the real herd agent, enrolled with a real
//! exec certificate, whose tasks are served by a script instead of the sandbox (see
//! `herd_testbed::hostile`). It takes the flags the testbed gives `herd agent`:
//!
//! ```text
//! herd-hostile-helper agent --state DIR [--join TOKEN] [--name NAME] [--listen ADDR]
//!     [--peer ADDR]... [--host-cgroup DIR] [--start-after 0] [--no-mdns]
//!     [--script FILE] [--results FILE]
//! ```
//!
//! `--script` (default `herd_testbed::hostile::SCRIPT`, or `$HERD_HOSTILE_SCRIPT`) is
//! read anew for every task; answers to its file questions are appended to
//! `--results` (default `herd_testbed::hostile::RESULTS`, or `$HERD_HOSTILE_RESULTS`).
//! Like herd, it also serves as its own sandbox init (`__sandbox-init`), so the agent's
//! probe passes and the node advertises itself as an exec node with cores.
//!
//! ```text
//! herd-hostile-helper connect --state DIR --to ADDR:PORT
//! ```
//!
//! makes one connection to the node at `ADDR:PORT` with the certificate and key in
//! `DIR` (a node's state directory, whether or not its agent runs; a revoked or
//! expired certificate, say) and asks it a `Ping`. It prints `accepted by NAME` and
//! exits 0 if the node answered, or `refused: WHY` and exits 1 if the handshake or the
//! request failed (within 8 s).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use herd_agent::polite::PoliteConfig;
use herd_agent::state::StateDir;
use herd_agent::{AgentOptions, RunCall, RunHook, net};
use herd_proto::PeerRequest;
use herd_proto::fs::FsResponse;
use herd_testbed::hostile::{FsResult, RESULTS, SCRIPT, Script, Step, TaskOutput, TaskRef};

/// Bytes per `Data` frame of a [`Step::Fill`].
const CHUNK: u64 = 256 * 1024;

struct Flags {
    state: PathBuf,
    join: Option<String>,
    name: Option<String>,
    listen: Option<std::net::SocketAddr>,
    peers: Vec<std::net::SocketAddr>,
    host_cgroup: Option<PathBuf>,
    start_after_zero: bool,
    script: PathBuf,
    results: PathBuf,
}

fn parse(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags {
        state: PathBuf::from("/var/lib/herd"),
        join: None,
        name: None,
        listen: None,
        peers: vec![],
        host_cgroup: None,
        start_after_zero: false,
        script: std::env::var_os("HERD_HOSTILE_SCRIPT")
            .map(PathBuf::from)
            .unwrap_or_else(|| SCRIPT.into()),
        results: std::env::var_os("HERD_HOSTILE_RESULTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| RESULTS.into()),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--no-mdns" {
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        let addr = |v: &str| v.parse().map_err(|e| format!("bad address {v:?}: {e}"));
        match flag.as_str() {
            "--state" => f.state = value.into(),
            "--join" => f.join = Some(value),
            "--name" => f.name = Some(value),
            "--listen" => f.listen = Some(addr(&value)?),
            "--peer" => f.peers.push(addr(&value)?),
            "--host-cgroup" => f.host_cgroup = Some(value.into()),
            "--start-after" => f.start_after_zero = value == "0",
            "--script" => f.script = value.into(),
            "--results" => f.results = value.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(f)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("__sandbox-init") => herd_sandbox::init_main(),
        Some("agent") => {}
        Some("connect") => return connect(&args[1..]),
        _ => {
            eprintln!(
                "usage: herd-hostile-helper agent --state DIR [--join TOKEN] ... | connect --state DIR --to ADDR:PORT"
            );
            return ExitCode::from(2);
        }
    }
    let flags = match parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("herd-hostile-helper: {e}");
            return ExitCode::from(2);
        }
    };
    let mut polite = PoliteConfig::default();
    if flags.start_after_zero {
        polite.start_after = std::time::Duration::ZERO;
    }
    let player = Arc::new(Player {
        script: flags.script,
        results: flags.results,
        previous: Mutex::new(None),
    });
    let opts = AgentOptions {
        state: StateDir::new(flags.state),
        name: flags.name,
        listen: flags.listen,
        advertise: None,
        join: flags.join,
        peers: flags.peers,
        cpus: None,
        memory: None,
        disk: None,
        mdns: false,
        cache_size: None,
        host_cgroup: flags.host_cgroup,
        polite,
        metrics: None,
        run_hook: Some(RunHook::new(move |call| player.clone().play(call))),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herd-hostile-helper: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(herd_agent::run_agent(opts, std::future::pending())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd-hostile-helper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `connect --state DIR --to ADDR:PORT`: one connection with DIR's certificate, one
/// `Ping`.
fn connect(args: &[String]) -> ExitCode {
    let (mut state, mut to) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next()) {
            ("--state", Some(v)) => state = Some(PathBuf::from(v)),
            ("--to", Some(v)) => to = v.parse::<std::net::SocketAddr>().ok(),
            _ => {
                eprintln!("herd-hostile-helper connect --state DIR --to ADDR:PORT");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(state), Some(to)) = (state, to) else {
        eprintln!("herd-hostile-helper connect --state DIR --to ADDR:PORT");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herd-hostile-helper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let attempt = async {
        let identity = StateDir::new(state).identity().map_err(|e| e.to_string())?;
        let ep = net::endpoint(&identity, "0.0.0.0:0".parse().expect("literal"))
            .map_err(|e| e.to_string())?;
        let conn = ep
            .connect(to, herd_pki::SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        // A server refuses a client's certificate after the client's side of the
        // handshake is done: only an answer proves the node accepted it.
        let answer = net::request::<_, herd_proto::PeerResponse>(&conn, &PeerRequest::Ping).await;
        let result = match answer {
            Ok(herd_proto::PeerResponse::Pong { name }) => Ok(name),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| e.to_string())),
        };
        conn.close(0u32.into(), b"probe done");
        ep.wait_idle().await;
        result
    };
    match rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(8), attempt)
            .await
            .unwrap_or_else(|_| Err("no answer within 8 s".into()))
    }) {
        Ok(name) => {
            println!("accepted by {name}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("refused: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Plays the script for every task.
struct Player {
    script: PathBuf,
    results: PathBuf,
    /// The task served before the current one.
    previous: Mutex<Option<u64>>,
}

impl Player {
    async fn play(self: Arc<Self>, call: RunCall) {
        let RunCall {
            conn,
            peer,
            mut send,
            mut recv,
            task,
            spec: _,
        } = call;
        let previous = self.previous.lock().ok().and_then(|mut p| p.replace(task));
        eprintln!(
            "herd-hostile-helper: task {task:016x} from {}: playing {}",
            peer.name,
            self.script.display()
        );
        let script: Script = match std::fs::read(&self.script)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                let message = format!("hostile helper: bad script {}: {e}", self.script.display());
                let _ =
                    net::write_frame(&mut send, &TaskOutput::Failed { message, code: 255 }).await;
                let _ = send.finish();
                return;
            }
        };
        for step in script {
            match step {
                Step::Fs { req, save, task: r } => {
                    let id = match r {
                        TaskRef::Own => task,
                        TaskRef::Previous => previous.unwrap_or(0),
                        TaskRef::Id(id) => id,
                    };
                    let asked =
                        net::request::<_, FsResponse>(&conn, &PeerRequest::Fs { task: id, req })
                            .await;
                    let (response, error) = match asked {
                        Ok(r) => (r, None),
                        Err(e) => (FsResponse::Errno(libc::EIO), Some(e.to_string())),
                    };
                    self.save(&FsResult {
                        save,
                        task: id,
                        response,
                        error,
                    });
                }
                Step::Out(o) => {
                    if let Err(e) = net::write_frame(&mut send, &o).await {
                        eprintln!("herd-hostile-helper: cannot send {o:?}: {e}");
                        break;
                    }
                }
                Step::Fill { len, byte } => {
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(CHUNK);
                        let d = TaskOutput::Data(vec![byte; n as usize]);
                        if net::write_frame(&mut send, &d).await.is_err() {
                            break;
                        }
                        left -= n;
                    }
                }
                Step::Finish => {
                    let _ = send.finish();
                }
                Step::Reset => {
                    let _ = send.reset(0u32.into());
                }
                Step::Pause { ms } => {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await
                }
                Step::Wait => {
                    let mut buf = [0u8; 4096];
                    while let Ok(Some(_)) = recv.read(&mut buf).await {}
                }
            }
        }
        // Hold the stream until the workstation is done with it (a reset stream
        // answers at once).
        let _ = send.stopped().await;
    }

    fn save(&self, r: &FsResult) {
        let line = match serde_json::to_string(r) {
            Ok(l) => l,
            Err(e) => format!("{{\"save\":{:?},\"error\":{:?}}}", r.save, e.to_string()),
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.results.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.results)?;
            writeln!(f, "{line}")
        };
        if let Err(e) = write() {
            eprintln!(
                "herd-hostile-helper: cannot save to {}: {e}",
                Path::new(&self.results).display()
            );
        }
    }
}
