//! Revoking a node on the multi-host testbed: after `herd revoke h2` on the CA node,
//! every other node refuses h2's certificate at the handshake within seconds, shows it
//! `revoked`, and will not run a task there; the refusal survives restarts of the
//! others (each keeps the signed list in its state directory) and of h2 itself.
//!
//! The direct attempts with h2's certificate are made by `herd-hostile-helper
//! connect`, run on the workstation's host with h2's state directory: the real
//! certificate and key, whatever h2's own agent knows. Every wait is for the event
//! that proves the point (a node's answer, a refused handshake, a log line), never for
//! time to pass. Needs root; fails, never skips, without it.

use std::path::Path;
use std::time::{Duration, Instant};

use herd_testbed::cluster::{Agents, Node, all_see, ok, text, wait_for};
use herd_testbed::{HostSpec, Testbed, hostile};

const CONVERGE: Duration = Duration::from_secs(40);
/// How long the revocation may take to reach every node.
const SPREAD: Duration = Duration::from_secs(15);

fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

/// `herd-hostile-helper connect` from `from`'s host with the certificate in `cert_of`'s
/// state directory to `to`: `Ok(name)` if `to` answered, `Err(why)` if it refused.
fn attempt(from: Node<'_>, cert_of: Node<'_>, to: Node<'_>) -> Result<String, String> {
    let state = cert_of.host.machine_path(cert_of.host.state_dir());
    let out = from
        .host
        .command(
            hostile::helper_bin(herd_bin()).to_str().unwrap(),
            &[
                "connect",
                "--state",
                state.to_str().unwrap(),
                "--to",
                &to.listen(),
            ],
        )
        .output()
        .unwrap();
    let said = text(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(said),
        Some(1) => Err(said),
        other => panic!("the probe failed ({other:?}): {said} {}", text(&out.stderr)),
    }
}

/// Whether `to` refuses `cert_of`'s certificate, saying it was revoked.
fn refuses_revoked(from: Node<'_>, cert_of: Node<'_>, to: Node<'_>) -> bool {
    match attempt(from, cert_of, to) {
        Ok(_) => false,
        Err(why) => {
            let why = why.to_lowercase();
            assert!(why.contains("revoked"), "refused for another reason: {why}");
            true
        }
    }
}

/// Waits until every node in `nodes` answers `herd nodes` and shows each of `alive`
/// alive with an exec load report.
fn wait_alive(nodes: &[Node<'_>], alive: &[&str]) {
    for n in nodes {
        wait_for(
            &format!("{} sees {alive:?} alive", n.name()),
            CONVERGE,
            || {
                n.nodes().is_some_and(|ns| {
                    alive.iter().all(|h| {
                        ns.iter().any(|v| {
                            v["name"] == *h
                                && v["state"] == "alive"
                                && v["cpus"].as_f64() > Some(0.0)
                        })
                    })
                })
            },
        );
    }
}

#[test]
fn a_revoked_node_is_refused_everywhere_and_after_restarts() {
    hostile::helper_bin(herd_bin());
    let mut bed = Testbed::new().expect("the testbed needs root, network namespaces and cgroups");
    bed.add_host(HostSpec::real_fs("ws")).unwrap();
    for h in ["h1", "h2", "h3"] {
        bed.add_host(HostSpec::minimal(h, herd_bin()).cpu_quota(0.4))
            .unwrap();
    }
    let node = |n: &str| Node::new(bed.host(n), herd_bin());
    let (ws, h1, h2, h3) = (node("ws"), node("h1"), node("h2"), node("h3"));
    let token = ws.init();
    let ws_args = ["--no-mdns", "--cpus", "0"];
    let mut agents = Agents(vec![ws.agent(&ws_args)]);
    for h in [h1, h2, h3] {
        agents.0.push(h.join(&token));
    }
    wait_alive(&[ws, h1, h3], &["h1", "h2", "h3"]);

    // Before: h2's certificate is accepted everywhere and h2 runs tasks.
    for to in [ws, h1, h3] {
        assert_eq!(
            attempt(ws, h2, to).as_deref(),
            Ok(&*format!("accepted by {}", to.name()))
        );
    }
    let out = ws.herd(&[
        "run",
        "--on",
        "h2",
        "-T",
        "--",
        "sh",
        "-c",
        "echo on $HERD_NODE",
    ]);
    assert_eq!(ok(&out).trim(), "on h2");

    // Revoked on the CA node: every other node refuses it within seconds.
    let start = Instant::now();
    let out = ws.herd(&["revoke", "h2"]);
    assert!(ok(&out).contains("revoked h2"), "{}", text(&out.stdout));
    let others = [ws, h1, h3];
    let shown = wait_for("every other node shows h2 revoked", SPREAD, || {
        all_see(&others, "h2", "revoked")
    });
    let mut refused = vec![false; others.len()];
    wait_for(
        "every other node refuses h2's certificate at the handshake",
        SPREAD,
        || {
            for (i, to) in others.iter().enumerate() {
                refused[i] = refused[i] || refuses_revoked(ws, h2, *to);
            }
            refused.iter().all(|r| *r)
        },
    );
    eprintln!(
        "measured: herd revoke until every other node refuses h2: {:.2} s (shown revoked after {:.2} s)",
        start.elapsed().as_secs_f64(),
        shown.as_secs_f64()
    );
    // The other nodes' certificates are still good.
    assert!(attempt(ws, h1, h3).is_ok());
    let out = ws.herd(&["run", "--on", "h2", "-T", "--", "true"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("h2") && err.contains("revoked") && err.lines().count() == 1,
        "{err}"
    );
    // The CA node keeps the name taken: no new key may enroll as h2 before `herd
    // remove`, and the list says so.
    let out = ws.herd(&["remove", "--list"]);
    let list = ok(&out);
    assert!(
        list.lines()
            .any(|l| l.starts_with("h2 ") && l.contains("revoked")),
        "{list}"
    );

    // Everybody stops; h1 starts alone: the list it keeps on disk is its only source,
    // and it refuses h2 from its first handshake.
    drop(agents);
    let mut agents = Agents(vec![h1.agent(&["--no-mdns"])]);
    wait_for("h1 answers again", CONVERGE, || h1.nodes().is_some());
    assert!(refuses_revoked(ws, h2, h1), "h1 forgot the revocation");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&h1.herd(&["status", "--json"]))).unwrap();
    assert_eq!(status["revocations"], 1, "{status}");

    // The CA node and h3 come back and refuse h2 as well.
    agents.0.push(ws.agent(&ws_args));
    agents.0.push(h3.agent(&["--no-mdns"]));
    wait_alive(&[ws, h1, h3], &["h1", "h3"]);
    for to in [ws, h3] {
        assert!(
            refuses_revoked(ws, h2, to),
            "{} forgot the revocation",
            to.name()
        );
    }

    // h2 restarts: it is refused (and says so), and stays out.
    let (h2_agent, h2_log) = h2.agent_env(&[], &["--no-mdns"]);
    agents.0.push(h2_agent);
    wait_for("h2 says its certificate was revoked", CONVERGE, || {
        std::fs::read_to_string(&h2_log).is_ok_and(|l| l.contains("certificate was revoked"))
    });
    // (A node that restarted never saw h2 alive since: it shows it revoked or not at
    // all.)
    for o in others {
        let st = o.state_of("h2");
        assert!(
            st.is_none() || st.as_deref() == Some("revoked"),
            "{}: {st:?}",
            o.name()
        );
    }
    for to in others {
        assert!(refuses_revoked(ws, h2, to));
    }
    let out = ws.herd(&["run", "--on", "h2", "-T", "--", "true"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    drop(agents);
}
