//! In-process tests of the agent on loopback: enrollment, refusals, malformed input
//! and the metrics server. The multi-host behaviour is tested on the testbed
//! (`crates/herd/tests`).

use std::net::SocketAddr;
use std::time::Duration;

use herd_agent::admin::{self, InitOptions};
use herd_agent::state::StateDir;
use herd_agent::{AgentError, AgentOptions, enroll, local, net, run_agent};
use herd_proto::{LocalRequest, LocalResponse, PeerRequest, PeerResponse, Role};

mod common;

use common::*;

#[tokio::test]
async fn enroll_succeeds_once_token_is_valid_and_refuses_bad_tokens() {
    let c = start_cluster().await;
    let tmp = tempfile::tempdir().unwrap();

    // A valid token enrolls and writes an identity with the token's roles.
    let h1 = StateDir::new(tmp.path().join("h1"));
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    enroll::enroll(&h1, &c.token, "h1", listen, &[])
        .await
        .unwrap();
    let info = h1.identity().unwrap().info().unwrap();
    assert_eq!(info.name, "h1");
    assert_eq!(info.roles, vec![Role::Exec]);

    // A wrong secret is refused and writes nothing.
    let mut wrong = c.token.clone();
    wrong.secret[0] ^= 0xff;
    let h2 = StateDir::new(tmp.path().join("h2"));
    let err = enroll::enroll(&h2, &wrong, "h2", listen, &[])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(!h2.root().exists(), "a refused token must enroll nothing");

    // A revoked token is refused.
    let t2 = admin::issue_token(&c.ws, &[Role::Exec], None).unwrap();
    admin::revoke_token(&c.ws, &t2.id_hex()).unwrap();
    let err = enroll::enroll(&h2, &t2, "h2", listen, &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    assert!(!h2.root().exists());

    // A token pinning another cluster's CA is refused by the TLS handshake.
    let other = tempfile::tempdir().unwrap();
    let other_tok = admin::init(
        &StateDir::new(other.path()),
        &InitOptions {
            cluster: "other".into(),
            name: "x".into(),
            listen: c.addr,
            ttl: None,
        },
    )
    .unwrap();
    let err = enroll::enroll(&h2, &other_tok, "h2", listen, &[])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(!h2.root().exists());

    // An expired token is refused before any contact.
    let mut expired = c.token.clone();
    expired.expires = Some(1);
    let err = enroll::parse_token(&expired.encode()).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    c.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_that_connection() {
    let c = start_cluster().await;
    let ep = net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let cfg = net::enroll_client_config(c.token.ca_fingerprint).unwrap();

    // Oversized length prefix.
    let conn = ep
        .connect_with(cfg.clone(), c.addr, herd_pki::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let _ = send.finish();
    let mut buf = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(15), async {
        recv.read_to_end(1 << 20).await
    })
    .await
    .expect("the agent must close a connection that sent an oversized frame");
    assert!(res.map(|b| buf.extend(b)).is_err() || buf.is_empty());

    // Garbage payload of a plausible size.
    let conn2 = ep
        .connect_with(cfg.clone(), c.addr, herd_pki::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn2.open_bi().await.unwrap();
    send.write_all(&8u32.to_be_bytes()).await.unwrap();
    send.write_all(b"\x01garbage").await.unwrap();
    let _ = send.finish();
    let got = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 20))
        .await
        .expect("closed");
    assert!(got.is_err() || got.unwrap().is_empty());

    // The agent still serves: a proper enrollment works and the CLI socket answers.
    let conn3 = ep
        .connect_with(cfg, c.addr, herd_pki::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (_k, csr) = herd_pki::make_csr("h9").unwrap();
    let resp: PeerResponse = net::request(
        &conn3,
        &PeerRequest::Enroll {
            token_id: c.token.id,
            secret: c.token.secret,
            name: "h9".into(),
            csr_der: csr,
        },
    )
    .await
    .unwrap();
    assert!(matches!(resp, PeerResponse::Enrolled { .. }), "{resp:?}");
    let st = local::call(&c.ws, &LocalRequest::Status).await.unwrap();
    assert!(matches!(st, LocalResponse::Status(_)));

    // Garbage on the Unix socket does not hurt either.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::UnixStream::connect(c.ws.socket_path())
            .await
            .unwrap();
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        s.write_all(b"junkjunk").await.unwrap();
    }
    let st = local::call(&c.ws, &LocalRequest::Nodes).await.unwrap();
    assert!(
        matches!(st, LocalResponse::Nodes(ref n) if n.len() == 1),
        "{st:?}"
    );
    c.stop().await;
}

#[tokio::test]
async fn second_agent_on_same_state_dir_is_refused() {
    let c = start_cluster().await;
    let opts = AgentOptions {
        state: c.ws.clone(),
        name: None,
        listen: Some("127.0.0.1:0".parse().unwrap()),
        advertise: None,
        join: None,
        peers: vec![],
        cpus: None,
        memory: None,
        disk: None,
        mdns: false,
        cache_size: None,
        host_cgroup: None,
        polite: Default::default(),
        metrics: None,
        run_hook: None,
    };
    let err = start_must_fail(opts).await;
    assert!(matches!(err, AgentError::Locked { .. }), "{err}");
    assert_eq!(err.exit_code(), 2);
    c.stop().await;
}

/// Runs an agent that must fail to start, and returns its error. Bounded: an agent
/// that started after all would otherwise run for good.
async fn start_must_fail(opts: AgentOptions) -> AgentError {
    tokio::time::timeout(
        Duration::from_secs(30),
        run_agent(opts, std::future::pending()),
    )
    .await
    .expect("an agent that cannot start must stop at once")
    .unwrap_err()
}

/// Sends one HTTP request to `addr` and returns the whole answer.
async fn http(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("the metrics server must answer and close")
        .unwrap();
    out
}

#[tokio::test]
async fn metrics_are_served_and_a_taken_port_is_refused() {
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = start_cluster_with_metrics(Some(addr)).await;
    let get = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut page = String::new();
    for _ in 0..100 {
        page = http(addr, get).await;
        if page.contains("\nherd_members{state=\"alive\"} 1\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(
        page.contains("Content-Type: text/plain; version=0.0.4"),
        "{page}"
    );
    for line in [
        "herd_members{state=\"alive\"} 1",
        "herd_members{state=\"dead\"} 0",
        "herd_queue_length 0",
        "herd_tasks_running 0",
        // (per-node task counters appear with the first task)
        "# TYPE herd_fs_requests_total counter",
        "# TYPE herd_task_duration_seconds histogram",
        "herd_fs_bytes_served_total 0",
    ] {
        assert!(page.lines().any(|l| l == line), "no {line:?} in:\n{page}");
    }
    let missing = http(addr, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");

    // Another agent asked to serve metrics on the same port refuses to start.
    let tmp = tempfile::tempdir().unwrap();
    let other = StateDir::new(tmp.path().join("other"));
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    admin::init(
        &other,
        &InitOptions {
            cluster: "lab2".into(),
            name: "other".into(),
            listen,
            ttl: None,
        },
    )
    .unwrap();
    let opts = AgentOptions {
        state: other.clone(),
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
        metrics: Some(addr),
        run_hook: None,
    };
    let err = start_must_fail(opts).await;
    assert!(err.to_string().contains("cannot serve metrics on"), "{err}");
    assert_eq!(err.exit_code(), 1);
    c.stop().await;

    // The server stops with its agent.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
