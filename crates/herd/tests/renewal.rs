//! Certificates that live shortly and renew themselves, on the multi-host testbed.
//! `HERD_CERT_LIFETIME` (the documented test knob, read by `herd init`) makes the
//! cluster's certificates live seconds instead of 30 days.
//!
//! * A helper renews its certificate through the CA node before it expires, without
//!   leaving the cluster, and keeps taking tasks after its first certificate expired,
//!   also over connections made after that (the workstation restarts).
//! * A helper that was off while its certificate expired is refused by the others, is
//!   told in one line to enroll again, and enrolls again with a token.
//!
//! Each wait is for the event that proves its point (a renewed certificate on disk, the
//! clock passing a certificate's expiry, a node's answer). Needs root; fails, never
//! skips, without it.

use std::path::Path;
use std::time::{Duration, Instant};

use herd_testbed::cluster::{Agents, Node, ok, sigterm, text, wait_for};
use herd_testbed::{HostSpec, Testbed, hostile};

const CONVERGE: Duration = Duration::from_secs(40);
/// The certificates' lifetime in these tests.
const LIFETIME: &str = "20s";

fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `(not_before, not_after)` of the certificate in `n`'s state directory.
fn cert_of(n: Node<'_>) -> (u64, u64) {
    let path = n.host.machine_path(n.host.state_dir()).join("node.crt");
    let der = std::fs::read(&path).unwrap();
    herd_pki::cert_validity(&der).unwrap()
}

/// A workstation `ws` (the CA node, lending no cores) and helper `h1`, every
/// certificate living [`LIFETIME`].
fn start() -> (Testbed, Agents) {
    let mut bed = Testbed::new().expect("the testbed needs root, network namespaces and cgroups");
    bed.add_host(HostSpec::real_fs("ws")).unwrap();
    bed.add_host(HostSpec::minimal("h1", herd_bin()).cpu_quota(0.5))
        .unwrap();
    let ws = Node::new(bed.host("ws"), herd_bin());
    let listen = ws.listen();
    let out = ws.herd_env(
        &[("HERD_CERT_LIFETIME", LIFETIME)],
        &[
            "init",
            "--name",
            "ws",
            "--cluster",
            "lab",
            "--listen",
            &listen,
        ],
    );
    let token = ok(&out).lines().last().unwrap().trim().to_string();
    let h1 = Node::new(bed.host("h1"), herd_bin());
    let agents = Agents(vec![
        ws.agent(&["--no-mdns", "--cpus", "0"]),
        h1.join(&token),
    ]);
    wait_for("h1 alive with a load report at ws", CONVERGE, || {
        alive_at(ws, "h1").is_some()
    });
    (bed, agents)
}

/// `h`'s incarnation if `at` shows it alive with cores to lend.
fn alive_at(at: Node<'_>, h: &str) -> Option<u64> {
    at.nodes()?
        .into_iter()
        .find(|n| n["name"] == h && n["state"] == "alive" && n["cpus"].as_f64() > Some(0.0))
        .and_then(|n| n["incarnation"].as_u64())
}

fn run_on_h1(ws: Node<'_>) -> String {
    let out = ws.herd(&[
        "run",
        "--on",
        "h1",
        "-T",
        "--",
        "sh",
        "-c",
        "echo on $HERD_NODE",
    ]);
    ok(&out).trim().to_string()
}

#[test]
fn a_node_renews_its_certificate_and_keeps_taking_tasks_past_its_expiry() {
    let (bed, mut agents) = start();
    let (ws, h1) = (
        Node::new(bed.host("ws"), herd_bin()),
        Node::new(bed.host("h1"), herd_bin()),
    );
    let first = cert_of(h1);
    assert!(
        first.1 - first.0 <= 30,
        "HERD_CERT_LIFETIME was not applied: {first:?}"
    );
    let incarnation = alive_at(ws, "h1").unwrap();
    assert_eq!(run_on_h1(ws), "on h1");

    // Renewed through the CA node, in place: h1 never leaves the cluster.
    let due = (first.0 + first.1) / 2;
    wait_for("h1 holds a renewed certificate", CONVERGE, || {
        assert_eq!(alive_at(ws, "h1"), Some(incarnation), "h1 left the cluster");
        cert_of(h1).1 > first.1
    });
    eprintln!(
        "measured: renewal came {} s after it was due (second granularity)",
        unix_now() as i64 - due as i64
    );
    let out = h1.herd(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(
        status["cert_expires"].as_u64(),
        Some(cert_of(h1).1),
        "{status}"
    );

    // Past the first certificate's expiry h1 still takes tasks, over the connections
    // it had ...
    wait_for("h1's first certificate expired", CONVERGE, || {
        unix_now() > first.1 + 1
    });
    assert_eq!(alive_at(ws, "h1"), Some(incarnation));
    assert_eq!(run_on_h1(ws), "on h1");
    // ... and over new ones: the workstation restarts (its own certificate renewed
    // itself too) and every handshake is made anew.
    let ws_agent = agents.0.remove(0);
    sigterm(&ws_agent);
    let mut ws_agent = ws_agent;
    assert!(ws_agent.wait().unwrap().success());
    assert!(
        cert_of(ws).1 > first.1,
        "the CA node did not renew its own certificate"
    );
    let restart = Instant::now();
    agents.0.push(ws.agent(&["--no-mdns", "--cpus", "0"]));
    wait_for("h1 alive at the restarted workstation", CONVERGE, || {
        alive_at(ws, "h1").is_some()
    });
    eprintln!(
        "measured: h1 alive at the restarted ws after {:.2} s",
        restart.elapsed().as_secs_f64()
    );
    assert_eq!(run_on_h1(ws), "on h1");
    // And again after the second certificate's expiry.
    let second = cert_of(h1);
    wait_for("h1's second certificate expired", CONVERGE, || {
        unix_now() > second.1 + 1
    });
    assert_eq!(run_on_h1(ws), "on h1");
    drop(agents);
}

#[test]
fn an_expired_node_is_refused_and_told_to_enroll_again() {
    hostile::helper_bin(herd_bin());
    let (bed, mut agents) = start();
    let (ws, h1) = (
        Node::new(bed.host("ws"), herd_bin()),
        Node::new(bed.host("h1"), herd_bin()),
    );
    // h1 goes off, and its certificate expires meanwhile.
    let a1 = agents.0.remove(1);
    sigterm(&a1);
    let mut a1 = a1;
    assert!(a1.wait().unwrap().success());
    let expiry = cert_of(h1).1;
    wait_for("h1's certificate expired", CONVERGE, || {
        unix_now() > expiry + 1
    });

    // Its certificate is refused at the handshake ...
    let state = h1.host.machine_path(h1.host.state_dir());
    let out = ws
        .host
        .command(
            hostile::helper_bin(herd_bin()).to_str().unwrap(),
            &[
                "connect",
                "--state",
                state.to_str().unwrap(),
                "--to",
                &ws.listen(),
            ],
        )
        .output()
        .unwrap();
    let said = text(&out.stdout).to_lowercase();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("expired"), "{said}");

    // ... and its agent says, in one line, that it must enroll again.
    let listen = h1.listen();
    let (mut agent, log) = h1.agent_env(&[], &["--listen", &listen, "--no-mdns"]);
    let mut status = None;
    wait_for("h1's agent stops", CONVERGE, || {
        status = agent.try_wait().unwrap();
        status.is_some()
    });
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.unwrap().code(), Some(2), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("herd: ") && last.contains("expired") && last.contains("--join"),
        "{err}"
    );

    // It does, with a token (the same key, the same name).
    let tok = ok(&ws.herd(&["token"])).trim().to_string();
    agents.0.push(h1.join(&tok));
    wait_for("h1 alive again at ws", CONVERGE, || {
        alive_at(ws, "h1").is_some()
    });
    assert!(cert_of(h1).1 > expiry);
    assert_eq!(run_on_h1(ws), "on h1");
    drop(agents);
}
