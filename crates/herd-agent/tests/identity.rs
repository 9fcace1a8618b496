//! Who a node is, in-process on loopback: join tokens are used up, a name belongs to
//! one key, refused enrollments cost the CA node nothing and are rate-limited, a
//! connection for a named node reaches that node or nothing, and a peer's streams and
//! connections are bounded. The multi-host side is in `crates/herd/tests/identity.rs`.
//!
//! Every test waits for the event that proves its point (an answer, a closed stream),
//! never for time to pass.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use herd_agent::admin;
use herd_agent::state::StateDir;
use herd_agent::{enroll, net};
use herd_proto::{PeerRequest, PeerResponse, RemoteErrorKind, Role, Token};

mod common;

use common::*;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Sends one raw enrollment (a fresh connection, as a joining node does) and returns
/// the answer.
async fn raw_enroll(c: &Cluster, token: &Token, name: &str, csr: &[u8]) -> PeerResponse {
    let ep = net::client_endpoint(any_port()).unwrap();
    let cfg = net::enroll_client_config(token.ca_fingerprint).unwrap();
    let conn = ep
        .connect_with(cfg, c.addr, herd_pki::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let resp = net::request(
        &conn,
        &PeerRequest::Enroll {
            token_id: token.id,
            secret: token.secret,
            name: name.into(),
            csr_der: csr.to_vec(),
        },
    )
    .await
    .unwrap();
    conn.close(0u32.into(), b"");
    resp
}

fn refusal(resp: &PeerResponse) -> (RemoteErrorKind, String) {
    match resp {
        PeerResponse::Error(e) => (e.kind, e.message.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_enrolls_as_many_nodes_as_it_allows() {
    let c = start_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = |n: &str| StateDir::new(tmp.path().join(n));

    // `herd token` makes a single-use token.
    let once = admin::issue_token(&c.ws, &[Role::Exec], None).unwrap();
    enroll::enroll(&dir("h1"), &once, "h1", any_port(), &[])
        .await
        .unwrap();
    let err = enroll::enroll(&dir("h2"), &once, "h2", any_port(), &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("this token was already used"),
        "{err}"
    );
    assert!(!err.to_string().contains("expired"), "{err}");
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(
        !dir("h2").root().exists(),
        "a refused token enrolls nothing"
    );

    // `--uses 2`.
    let twice = admin::issue_token_with_uses(&c.ws, &[Role::Exec], None, Some(2)).unwrap();
    for n in ["h3", "h4"] {
        enroll::enroll(&dir(n), &twice, n, any_port(), &[])
            .await
            .unwrap();
    }
    let err = enroll::enroll(&dir("h5"), &twice, "h5", any_port(), &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
    assert!(err.to_string().contains("allows 2 enrollments"), "{err}");

    // `--uses unlimited`, and the first token of `herd init`.
    let any = admin::issue_token_with_uses(&c.ws, &[Role::Exec], None, None).unwrap();
    for (n, t) in [
        ("h6", &any),
        ("h7", &any),
        ("h8", &c.token),
        ("h9", &c.token),
    ] {
        enroll::enroll(&dir(n), t, n, any_port(), &[])
            .await
            .unwrap();
    }

    let uses: Vec<(u64, Option<u64>)> = admin::list_tokens(&c.ws)
        .unwrap()
        .iter()
        .map(|t| (t.uses, t.max_uses))
        .collect();
    assert_eq!(
        uses,
        [(2, None), (1, Some(1)), (2, Some(2)), (2, None)],
        "init's, once, twice, any"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_name_belongs_to_one_key_until_it_is_removed() {
    let c = start_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = |n: &str| StateDir::new(tmp.path().join(n));
    let any = admin::issue_token_with_uses(&c.ws, &[Role::Exec], None, None).unwrap();

    enroll::enroll(&dir("first"), &any, "h1", any_port(), &[])
        .await
        .unwrap();
    // Another node (another key) asking for h1, or for the CA node's own name.
    for taken in ["h1", "ws"] {
        let err = enroll::enroll(&dir("second"), &any, taken, any_port(), &[])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("the name \"{taken}\" is taken")),
            "{err}"
        );
        assert!(err.to_string().contains("herd remove"), "{err}");
        assert_eq!(err.exit_code(), 2);
        assert!(!dir("second").root().exists());
    }
    let names: Vec<String> = admin::list_nodes(&c.ws)
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["ws", "h1"]);

    // Freed by `herd remove`, the name can be taken by the new node.
    let removed = admin::remove_node(&c.ws, "h1").unwrap();
    let first_key =
        herd_pki::key_fingerprint_of_cert(&dir("first").identity().unwrap().cert_der).unwrap();
    assert_eq!(removed.report.key, first_key);
    enroll::enroll(&dir("second"), &any, "h1", any_port(), &[])
        .await
        .unwrap();
    let now = admin::list_nodes(&c.ws).unwrap();
    let second_key =
        herd_pki::key_fingerprint_of_cert(&dir("second").identity().unwrap().cert_der).unwrap();
    assert_eq!(now.iter().find(|n| n.name == "h1").unwrap().key, second_key);

    // The same key under the same name again (an enrollment whose answer was lost)
    // is answered again, without using the single-use token up twice.
    let once = admin::issue_token(&c.ws, &[Role::Exec], None).unwrap();
    let (_key, csr) = herd_pki::make_csr("h2").unwrap();
    for _ in 0..2 {
        let resp = raw_enroll(&c, &once, "h2", &csr).await;
        let PeerResponse::Enrolled { cert_der, .. } = resp else {
            panic!("a retried enrollment must be answered: {resp:?}");
        };
        assert_eq!(herd_pki::peer_cert(&cert_der).unwrap().name, "h2");
    }
    let rec = admin::list_tokens(&c.ws)
        .unwrap()
        .into_iter()
        .find(|t| t.id == once.id_hex())
        .unwrap();
    assert_eq!(rec.uses, 1);
    // A fresh key with that used token is refused as used, not as a taken name.
    let (_key, other) = herd_pki::make_csr("h3").unwrap();
    let (kind, msg) = refusal(&raw_enroll(&c, &once, "h3", &other).await);
    assert_eq!(kind, RemoteErrorKind::TokenUsed, "{msg}");
    c.stop().await;
}

/// The inode and modification time of a state file: a rewrite (temporary file,
/// rename) changes the inode.
fn stamp(p: &Path) -> (u64, i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[tokio::test]
async fn refused_enrollments_write_nothing_and_are_rate_limited() {
    let c = start_cluster().await;
    let tokens = c.ws.root().join("tokens.toml");
    let nodes = c.ws.root().join("nodes.toml");
    let before = (stamp(&tokens), stamp(&nodes));

    let (_k, csr) = herd_pki::make_csr("x").unwrap();
    let mut forged = c.token.clone();
    forged.id = rand_id();
    let used = admin::issue_token(&c.ws, &[Role::Exec], None).unwrap();
    let before_used = {
        // Use it up (a write, of course), then watch the refusals.
        let t = tempfile::tempdir().unwrap();
        enroll::enroll(
            &StateDir::new(t.path().join("h1")),
            &used,
            "h1",
            any_port(),
            &[],
        )
        .await
        .unwrap();
        (stamp(&tokens), stamp(&nodes))
    };
    assert_ne!(before, before_used, "an accepted enrollment is written");

    // Burst: each refusal says why, and writes nothing.
    let mut kinds = Vec::new();
    for i in 0..5 {
        let (t, name) = if i % 2 == 0 {
            (&forged, "x")
        } else {
            (&used, "y")
        };
        kinds.push(refusal(&raw_enroll(&c, t, name, &csr).await).0);
        assert_eq!(
            (stamp(&tokens), stamp(&nodes)),
            before_used,
            "refusal {i} rewrote a state file"
        );
    }
    assert_eq!(
        kinds,
        [
            RemoteErrorKind::BadToken,
            RemoteErrorKind::TokenUsed,
            RemoteErrorKind::BadToken,
            RemoteErrorKind::TokenUsed,
            RemoteErrorKind::BadToken,
        ]
    );
    // Then this address is refused unheard, even with a good token.
    let (kind, msg) = refusal(&raw_enroll(&c, &forged, "x", &csr).await);
    assert_eq!(kind, RemoteErrorKind::RateLimited, "{msg}");
    assert!(msg.contains("too many refused enrollments"), "{msg}");
    let (kind, _) = refusal(&raw_enroll(&c, &c.token, "z", &csr).await);
    assert_eq!(kind, RemoteErrorKind::RateLimited);
    assert_eq!((stamp(&tokens), stamp(&nodes)), before_used);
    c.stop().await;
}

fn rand_id() -> [u8; 8] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (t ^ 0x5a5a_5a5a_5a5a_5a5a).to_be_bytes()
}

/// Enrolls `name` and opens an endpoint with its identity: a real member of the
/// cluster, as a peer.
async fn member(c: &Cluster, tmp: &Path, name: &str) -> quinn::Endpoint {
    let d = StateDir::new(tmp.join(name));
    enroll::enroll(&d, &c.token, name, any_port(), &[])
        .await
        .unwrap();
    net::endpoint(&d.identity().unwrap(), any_port()).unwrap()
}

#[tokio::test]
async fn a_connection_for_a_named_node_reaches_that_node_or_nothing() {
    let c = start_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let ep = member(&c, tmp.path(), "h1").await;

    let conn = net::connect_to(&ep, c.addr, "ws").await.unwrap();
    assert_eq!(net::peer_of(&conn).unwrap().name, "ws");

    // Placement chose h2, whose address now answers as ws: refused, and closed.
    let err = net::connect_to(&ep, c.addr, "h2").await.unwrap_err();
    assert!(err.to_string().contains("not \"h2\""), "{err}");
    let plain = ep
        .connect(c.addr, herd_pki::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    assert!(net::check_peer(&plain, "h2").is_err());
    assert!(
        plain.close_reason().is_some(),
        "a mismatch closes the connection"
    );

    // A cached connection to another node is not reused (and not closed: it may
    // carry membership); a new one is checked like any other.
    let err = net::reuse_or_connect(&ep, Some(conn.clone()), c.addr, "h2")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not \"h2\""), "{err}");
    assert!(conn.close_reason().is_none());
    let same = net::reuse_or_connect(&ep, Some(conn.clone()), c.addr, "ws")
        .await
        .unwrap();
    assert_eq!(same.stable_id(), conn.stable_id());
    c.stop().await;
}

#[tokio::test]
async fn a_peer_s_streams_are_bounded_and_a_stalled_request_is_dropped() {
    let c = start_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let ep = member(&c, tmp.path(), "h1").await;

    // Streams: the agent lets a connection open MAX_STREAMS at once, no more.
    let conn = net::connect_to(&ep, c.addr, "ws").await.unwrap();
    let mut held = Vec::new();
    for i in 0..net::MAX_STREAMS {
        let s = tokio::time::timeout(Duration::from_secs(10), conn.open_bi())
            .await
            .unwrap_or_else(|_| panic!("stream {i} must open"))
            .unwrap();
        held.push(s);
    }
    // The limit is the agent's transport parameter: the next open is pending at its
    // very first poll (a zero timeout polls once).
    assert!(
        tokio::time::timeout(Duration::ZERO, conn.open_bi())
            .await
            .is_err(),
        "stream {} opened beyond the limit",
        net::MAX_STREAMS
    );
    // No unidirectional streams at all.
    assert!(
        tokio::time::timeout(Duration::ZERO, conn.open_uni())
            .await
            .is_err()
    );
    drop(held);

    // Half a frame announced as 1 MiB, then silence: the agent drops the stream (and
    // the connection) instead of waiting for ever.
    let conn = net::connect_to(&ep, c.addr, "ws").await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    send.write_all(&[herd_proto::PROTOCOL_VERSION; 10])
        .await
        .unwrap();
    let started = Instant::now();
    let got = tokio::time::timeout(
        net::REQUEST_TIMEOUT + Duration::from_secs(10),
        recv.read_to_end(1 << 20),
    )
    .await
    .expect("the agent must end a stalled request");
    assert!(got.is_err() || got.unwrap().is_empty());
    assert!(
        started.elapsed() < net::REQUEST_TIMEOUT,
        "cut by the stall timeout"
    );
    // The agent is fine.
    let conn = net::connect_to(&ep, c.addr, "ws").await.unwrap();
    let pong: PeerResponse = net::request(&conn, &PeerRequest::Ping).await.unwrap();
    assert!(matches!(pong, PeerResponse::Pong { ref name } if name == "ws"));
    c.stop().await;
}

#[tokio::test]
async fn connections_from_one_address_are_capped() {
    let c = start_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let ep = member(&c, tmp.path(), "h1").await;
    let mut conns = Vec::new();
    for i in 0..net::MAX_CONNS_PER_ADDR {
        let conn = net::connect_to(&ep, c.addr, "ws")
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        conns.push(conn);
    }
    let err = net::connect_to(&ep, c.addr, "ws").await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");

    // One closes: its place is given back (once the agent sees it closed).
    let gone = conns.pop().unwrap();
    gone.close(0u32.into(), b"bye");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match net::connect_to(&ep, c.addr, "ws").await {
            Ok(conn) => {
                conns.push(conn);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the closed connection's place never came back: {e}"),
        }
    }
    drop(conns);
    c.stop().await;
}

/// `PeerRequest::Renew { csr }` from `ep` to the CA node.
async fn renew(ep: &quinn::Endpoint, c: &Cluster, csr: Vec<u8>) -> PeerResponse {
    let conn = net::connect_to(ep, c.addr, "ws").await.unwrap();
    net::request(&conn, &PeerRequest::Renew { csr_der: csr })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_renewal_keeps_the_key_and_is_refused_to_revoked_and_removed_nodes() {
    let c = start_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let ep = member(&c, tmp.path(), "h1").await;
    let h1 = StateDir::new(tmp.path().join("h1")).identity().unwrap();
    let key = herd_pki::key_fingerprint_of_cert(&h1.cert_der).unwrap();
    let csr = herd_pki::make_csr_for_key(&h1.key_der, "h1").unwrap();

    // Renewed: the same name, roles and key, chained to the CA, a new certificate.
    let started = Instant::now();
    let PeerResponse::Renewed { cert_der } = renew(&ep, &c, csr.clone()).await else {
        panic!("not renewed");
    };
    eprintln!(
        "measured: a renewal (connection, request, signing, answer): {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_ne!(cert_der, h1.cert_der);
    let got = herd_pki::verify_node_cert(&h1.ca_der, &cert_der, herd_agent::unix_now()).unwrap();
    assert_eq!(
        (got.name.as_str(), got.roles.as_slice()),
        ("h1", &[Role::Exec][..])
    );
    assert_eq!(herd_pki::key_fingerprint_of_cert(&cert_der).unwrap(), key);
    assert!(
        herd_pki::cert_validity(&cert_der).unwrap().1
            >= herd_pki::cert_validity(&h1.cert_der).unwrap().1
    );

    // A request for another key is not a renewal.
    let (_k, other) = herd_pki::make_csr("h1").unwrap();
    let (kind, msg) = refusal(&renew(&ep, &c, other).await);
    assert_eq!(kind, RemoteErrorKind::BadRequest, "{msg}");

    // Its record gone from the registry by hand (a node removed before revocation
    // existed): not enrolled, so not renewed.
    c.ws.update_nodes(|n| Ok(n.remove("h1"))).unwrap();
    let (kind, msg) = refusal(&renew(&ep, &c, csr.clone()).await);
    assert_eq!(kind, RemoteErrorKind::NotEnrolled, "{msg}");
    assert!(msg.contains("enroll again"), "{msg}");

    // Revoked (written on disk only: the running agent has not applied the list, so
    // the connection is still made): neither renewed nor enrolled again, under any name.
    let h2 = member(&c, tmp.path(), "h2").await;
    let h2_id = StateDir::new(tmp.path().join("h2")).identity().unwrap();
    admin::revoke_node(&c.ws, "h2", false).unwrap();
    let h2_csr = herd_pki::make_csr_for_key(&h2_id.key_der, "h2").unwrap();
    let (kind, msg) = refusal(&renew(&h2, &c, h2_csr.clone()).await);
    assert_eq!(kind, RemoteErrorKind::Revoked, "{msg}");
    let any = admin::issue_token_with_uses(&c.ws, &[Role::Exec], None, None).unwrap();
    for name in ["h2", "h9"] {
        let csr = herd_pki::make_csr_for_key(&h2_id.key_der, name).unwrap();
        let (kind, msg) = refusal(&raw_enroll(&c, &any, name, &csr).await);
        assert_eq!(kind, RemoteErrorKind::Revoked, "{msg}");
        assert!(msg.contains("herd remove"), "{msg}");
    }
    c.stop().await;
}

#[tokio::test]
async fn herd_revoke_through_the_agent_closes_and_refuses_the_nodes_connections() {
    let c = start_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let ep = member(&c, tmp.path(), "h1").await;
    let open = net::connect_to(&ep, c.addr, "ws").await.unwrap();
    let pong: PeerResponse = net::request(&open, &PeerRequest::Ping).await.unwrap();
    assert!(matches!(pong, PeerResponse::Pong { .. }));
    // Nobody holds a list yet.
    let none: PeerResponse = net::request(&open, &PeerRequest::Revocations)
        .await
        .unwrap();
    assert_eq!(none, PeerResponse::Revocations(None));

    let resp = herd_agent::local::call(
        &c.ws,
        &herd_proto::LocalRequest::Revoke {
            node: "h1".into(),
            remove: false,
        },
    )
    .await
    .unwrap();
    let herd_proto::LocalResponse::Revoked(report) = resp else {
        panic!("{resp:?}");
    };
    assert_eq!(
        (report.version, report.already, report.removed),
        (1, false, false)
    );

    // The open connection is closed by the agent ...
    let closed = tokio::time::timeout(Duration::from_secs(10), open.closed())
        .await
        .expect("the revoked node's connection must be closed");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(a) if a.reason.as_ref() == b"certificate revoked"),
        "{closed:?}"
    );
    // ... and a new one is refused at the handshake, saying why.
    let refused = match net::connect_to(&ep, c.addr, "ws").await {
        Err(e) => e.to_string(),
        Ok(conn) => {
            let e = net::request::<_, PeerResponse>(&conn, &PeerRequest::Ping)
                .await
                .unwrap_err();
            let reason = conn.close_reason().expect("closed");
            assert_eq!(
                net::refusal(&reason),
                Some(net::Refusal::Revoked),
                "{e} {reason:?}"
            );
            net::explain(&reason)
        }
    };
    assert!(refused.contains("revoked"), "{refused}");
    // A node enrolling now gets the list with its certificate, in force before its
    // first handshake; and any node gets it on asking: signed, version 1, naming h1.
    let h2 = member(&c, tmp.path(), "h2").await;
    let kept = StateDir::new(tmp.path().join("h2")).revocations().unwrap();
    let ca = c.ws.identity().unwrap().ca_der;
    let kept = herd_pki::verify_revocations(&ca, &kept.expect("kept at enrollment")).unwrap();
    assert_eq!(kept.version, 1);
    let conn = net::connect_to(&h2, c.addr, "ws").await.unwrap();
    let PeerResponse::Revocations(Some(signed)) = net::request(&conn, &PeerRequest::Revocations)
        .await
        .unwrap()
    else {
        panic!("no list");
    };
    let list = herd_pki::verify_revocations(&ca, &signed).unwrap();
    assert_eq!(list.version, 1);
    assert!(list.contains_key(&report.key));
    c.stop().await;
}
