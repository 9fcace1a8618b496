//! What the in-process agent tests share: a cluster's CA node (`ws`) started on
//! loopback with `run_agent`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use herd_agent::admin::{self, InitOptions};
use herd_agent::state::StateDir;
use herd_agent::{AgentError, AgentOptions, local, run_agent};
use herd_proto::LocalRequest;

/// A UDP port free a moment ago on loopback.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running CA node: its state directory (in `tmp`), address and first join token.
pub struct Cluster {
    /// Holds the state directory.
    pub tmp: tempfile::TempDir,
    /// The CA node's state directory.
    pub ws: StateDir,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The token `herd init` printed.
    pub token: herd_proto::Token,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), AgentError>>>,
}

/// Starts the CA node's agent (one core, 1 GiB to lend).
pub async fn start_cluster() -> Cluster {
    start_cluster_with_metrics(None).await
}

/// [`start_cluster`], serving metrics at `metrics`.
pub async fn start_cluster_with_metrics(metrics: Option<SocketAddr>) -> Cluster {
    // Two things unrelated to what the tests check can make the agent exit at start,
    // and the start is then tried again: the free port picked here may be taken before
    // the agent binds it, and `init`'s lock on the state directory may outlive `init`
    // for a moment: a flock lock lasts while any copy of its descriptor is open, and a
    // process another test forks in this process holds one until it execs (seen here as
    // `Locked` by this very process, about once in fifteen runs).
    // Any other failure to start fails the test at once.
    let mut last = String::new();
    for _ in 0..5 {
        match try_start_cluster(metrics).await {
            Ok(c) => return c,
            Err(Some(e)) => {
                eprintln!("the cluster's agent exited at start, trying again: {e}");
                last = e.to_string();
            }
            Err(None) => panic!("the cluster's agent's socket did not answer within 10 s"),
        }
    }
    panic!("the cluster's agent did not start: {last}");
}

/// Starts the cluster's agent; `Err(Some(e))` when it exited at start for one of the
/// two reasons above, `Err(None)` when its socket never answered. Panics on any other
/// failure.
async fn try_start_cluster(metrics: Option<SocketAddr>) -> Result<Cluster, Option<AgentError>> {
    let tmp = tempfile::tempdir().unwrap();
    let ws = StateDir::new(tmp.path().join("ws"));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let token = admin::init(
        &ws,
        &InitOptions {
            cluster: "lab".into(),
            name: "ws".into(),
            listen: addr,
            ttl: Some(3600),
        },
    )
    .unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = AgentOptions {
        state: ws.clone(),
        name: None,
        listen: None,
        advertise: None,
        join: None,
        peers: vec![],
        cpus: Some(1.0),
        memory: Some(1 << 30),
        disk: None,
        mdns: false,
        cache_size: None,
        host_cgroup: None,
        polite: Default::default(),
        metrics,
        run_hook: None,
    };
    let task = tokio::spawn(run_agent(opts, async {
        let _ = rx.await;
    }));
    // Wait for the socket; an agent that exited says why.
    for _ in 0..200 {
        if task.is_finished() {
            let e = match task.await {
                Ok(Err(e)) => e,
                other => panic!("the cluster's agent ended at start: {other:?}"),
            };
            let own_pid = std::process::id().to_string();
            let unrelated = matches!(&e, AgentError::Locked { pid, .. } if *pid == own_pid)
                || e.to_string().contains("cannot listen on");
            assert!(unrelated, "the cluster's agent failed to start: {e}");
            return Err(Some(e));
        }
        if local::call(&ws, &LocalRequest::Status).await.is_ok() {
            return Ok(Cluster {
                tmp,
                ws,
                addr,
                token,
                stop: Some(stop),
                task: Some(task),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(None)
}

impl Cluster {
    /// Stops the agent and waits for it to end cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    /// Stops the agent, waiting at most 10 s, whatever its end.
    pub async fn stop_within(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap()).await;
    }
}
