//! Node identity on the multi-host testbed: a token made by `herd token` enrolls one
//! host, a second host cannot take a name in use (so `herd nodes` never shows one name
//! at two addresses), and `herd remove` frees a name for a replacement host. Needs
//! root; fails, never skips, without it. The in-process side (counts, rate limits,
//! stream and connection bounds, connecting to a named node) is in
//! `crates/herd-agent/tests/identity.rs`.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use herd_testbed::cluster::{Agents, Node, sigterm, text, wait_for};
use herd_testbed::{HostSpec, Testbed};

const CONVERGE: Duration = Duration::from_secs(40);

fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

fn token(ws: Node<'_>, args: &[&str]) -> String {
    let mut argv = vec!["token"];
    argv.extend_from_slice(args);
    let out = ws.herd(&argv);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// `herd agent --join TOKEN --name NAME` on `host`, which must be refused: returns
/// its stderr.
fn refused_join(host: Node<'_>, tok: &str, name: &str) -> String {
    let out: Output = host.herd(&[
        "agent",
        "--join",
        tok,
        "--name",
        name,
        "--listen",
        &host.listen(),
        "--no-mdns",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let node_file = host
        .host
        .machine_path(format!("{}/node.toml", host.state()));
    assert!(!node_file.exists(), "a refused enrollment enrolls nothing");
    err
}

/// The addresses `observer` shows for `name`.
fn addrs_of(observer: Node<'_>, name: &str) -> Vec<String> {
    observer
        .nodes()
        .unwrap_or_default()
        .iter()
        .filter(|n| n["name"] == name)
        .map(|n| n["addr"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn tokens_are_used_up_and_names_are_unique_until_removed() {
    let mut bed = Testbed::new().expect("the testbed needs root, network namespaces and cgroups");
    bed.add_host(HostSpec::real_fs("ws")).unwrap();
    for h in ["h1", "h2", "h3"] {
        bed.add_host(HostSpec::minimal(h, env!("CARGO_BIN_EXE_herd")).cpu_quota(0.5))
            .unwrap();
    }
    let (ws, h1, h2, h3) = (
        Node::new(bed.host("ws"), herd_bin()),
        Node::new(bed.host("h1"), herd_bin()),
        Node::new(bed.host("h2"), herd_bin()),
        Node::new(bed.host("h3"), herd_bin()),
    );
    ws.init();
    let mut agents = Agents(vec![ws.agent(&["--no-mdns"])]);
    wait_for("ws agent answers", CONVERGE, || ws.nodes().is_some());

    // A single-use token enrolls h1 ...
    let once = token(ws, &[]);
    agents.0.push(h1.join(&once));
    wait_for("h1 alive at ws", CONVERGE, || {
        ws.state_of("h1").as_deref() == Some("alive")
    });
    // ... and nobody after it.
    let err = refused_join(h2, &once, "h2");
    assert!(err.contains("this token was already used"), "{err}");

    // h2 with a fresh token but h1's name: refused, h1 stays where it is.
    let fresh = token(ws, &[]);
    let err = refused_join(h2, &fresh, "h1");
    assert!(err.contains("the name \"h1\" is taken"), "{err}");
    assert_eq!(addrs_of(ws, "h1"), [h1.listen()]);
    // The refusal used nothing: the fresh token still enrolls h2 under its own name.
    agents.0.push(h2.join(&fresh));
    wait_for("h2 alive at ws", CONVERGE, || {
        ws.state_of("h2").as_deref() == Some("alive")
    });
    assert_eq!(addrs_of(ws, "h1"), [h1.listen()]);

    // h1 is gone for good: `herd remove h1` frees its name for a replacement.
    let a1 = agents.0.remove(1);
    sigterm(&a1);
    let mut a1 = a1;
    assert!(a1.wait().unwrap().success());
    wait_for("h1 left at ws", CONVERGE, || {
        ws.state_of("h1").as_deref() == Some("left")
    });
    let out = ws.herd(&["remove", "h1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("removed h1"),
        "{}",
        text(&out.stdout)
    );
    let out = ws.herd(&["remove", "--list"]);
    let list = text(&out.stdout);
    assert!(
        list.contains("ws") && list.contains("h2") && !list.contains("h1 "),
        "{list}"
    );
    let out = ws.herd(&["remove", "ws"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // The replacement, another host, enrolls as h1 and takes its place.
    let tok = token(ws, &[]);
    let listen = h3.listen();
    agents
        .0
        .push(h3.agent(&["--join", &tok, "--name", "h1", "--listen", &listen]));
    wait_for(
        "h1 alive again, at the replacement's address",
        CONVERGE,
        || ws.state_of("h1").as_deref() == Some("alive") && addrs_of(ws, "h1") == [h3.listen()],
    );
    drop(agents);
}
