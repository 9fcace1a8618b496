//! The binary's behaviour on bad input, without a cluster: exit codes and one-line
//! errors that say what to do. These need no privileges.

use std::process::{Command, Output};

fn herd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .env_remove("HERD_STATE")
        .output()
        .unwrap()
}

fn one_error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {err}");
    assert!(lines[0].starts_with("herd: "), "{err}");
    err
}

#[test]
fn init_prints_token_last_and_refuses_a_second_time() {
    let d = tempfile::tempdir().unwrap();
    let st = d.path().join("s");
    let st = st.to_str().unwrap();
    let out = herd(&[
        "init",
        "--state",
        st,
        "--name",
        "ws",
        "--listen",
        "127.0.0.1:7420",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.lines().last().unwrap().starts_with("herd1-"),
        "{stdout}"
    );

    let out = herd(&["init", "--state", st]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("already holds cluster"));
}

#[test]
fn corrupted_state_file_is_named() {
    let d = tempfile::tempdir().unwrap();
    let st = d.path().to_str().unwrap();
    assert!(
        herd(&["init", "--state", st, "--listen", "127.0.0.1:7420"])
            .status
            .success()
    );
    std::fs::write(d.path().join("node.toml"), "version = 1\nname = [[[").unwrap();
    let out = herd(&["agent", "--state", st]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node.toml") && err.contains("corrupt"),
        "{err}"
    );

    // A damaged certificate is named too.
    let d2 = tempfile::tempdir().unwrap();
    let st2 = d2.path().to_str().unwrap();
    assert!(
        herd(&["init", "--state", st2, "--listen", "127.0.0.1:7420"])
            .status
            .success()
    );
    std::fs::write(d2.path().join("node.crt"), b"garbage").unwrap();
    let out = herd(&["agent", "--state", st2]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node.crt"));

    // So is a damaged token store.
    std::fs::write(d.path().join("tokens.toml"), "bogus = 1\n").unwrap();
    let out = herd(&["token", "--state", st, "--list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("tokens.toml"));
}

#[test]
fn commands_without_agent_or_cluster_say_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    let st = d.path().join("none");
    let st = st.to_str().unwrap();
    let out = herd(&["nodes", "--state", st]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("herd init"));

    let out = herd(&["agent", "--state", st]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("--join"));

    let out = herd(&["token", "--state", st]);
    assert_eq!(out.status.code(), Some(2));

    let d2 = tempfile::tempdir().unwrap();
    let st2 = d2.path().to_str().unwrap();
    assert!(
        herd(&["init", "--state", st2, "--listen", "127.0.0.1:7420"])
            .status
            .success()
    );
    let out = herd(&["nodes", "--state", st2]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("no herd agent is running"));
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = herd(&["agent", "--memory", "lots", "--state", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("--memory"));
    let out = herd(&["token", "--ttl", "forever", "--state", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2));
    let out = herd(&["agent", "--join", "herd1-AAAA", "--state", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("garbled"));
    assert!(!std::path::Path::new("/nonexistent").exists());
}
