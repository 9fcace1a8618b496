//! An untrusted helper cannot harm the workstation: end-to-end attacks through the
//! real workstation agent.
//!
//! The workstation is a testbed host with the machine's real files and lends no cores
//! (`--cpus 0`). The attacker is `evil`, the hostile helper (`herd-hostile-helper`,
//! built from herd-testbed on first use): the real agent with a real exec certificate
//! whose tasks are served by a script (`herd_testbed::hostile`) that asks the
//! workstation file questions and sends it whatever change set the test says. Honest
//! tasks run on `h1`, a real herd helper.
//!
//! Every test makes its own home under /var/tmp (tasks get a private /tmp),
//! `/var/tmp/herd-trust-XXXX/home` with `.ssh/id_rsa` and `.ssh/authorized_keys`, and
//! runs `herd run` as root with `HOME` set to it, from `home/proj` (the task's cwd and
//! its default write scope). Nothing touches the real home. Needs root; fails, never
//! skips, without it.
//!
//! What these tests assert is the secure outcome; they wait for the event that proves
//! it (`herd run` exiting, an answer saved by the helper), never for time to pass.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use herd_testbed::cluster::{Agents, Node, all_see, text, wait_for};
use herd_testbed::hostile::{
    self, Base, Change, FsRequest, FsResponse, FsResult, Script, Step, TaskOutput, TaskRef,
    path_bytes,
};
use herd_testbed::{HostSpec, Testbed};

const CONVERGE: Duration = Duration::from_secs(40);
/// How long `herd run` may take before the test calls it hung.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// The private key's contents: no answer to the helper may carry them.
const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nherd-trust-test-key-material\n";
/// The original `authorized_keys`.
const AUTHORIZED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA herd-trust-original\n";
/// What the attacker writes.
const EVIL: &[u8] = b"ssh-ed25519 AAAAevil attacker@evil\n";

fn herd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

/// The hostile helper, built once per test process beside the herd binary.
fn hostile_bin() -> &'static Path {
    hostile::helper_bin(herd_bin())
}

/// A test's own home: `DIR/home/{proj,.ssh/{id_rsa,authorized_keys}}`.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("herd-trust-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let home = Home { dir };
        std::fs::create_dir_all(home.proj()).unwrap();
        std::fs::create_dir(home.ssh()).unwrap();
        std::fs::set_permissions(home.ssh(), std::fs::Permissions::from_mode(0o700)).unwrap();
        for (name, body) in [("id_rsa", KEY), ("authorized_keys", AUTHORIZED)] {
            std::fs::write(home.ssh().join(name), body).unwrap();
            std::fs::set_permissions(
                home.ssh().join(name),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        home
    }

    /// The temporary directory holding the home (outside it: `elsewhere`).
    fn base(&self) -> &Path {
        self.dir.path()
    }

    fn home(&self) -> PathBuf {
        self.base().join("home")
    }

    fn proj(&self) -> PathBuf {
        self.home().join("proj")
    }

    fn ssh(&self) -> PathBuf {
        self.home().join(".ssh")
    }

    /// A path under the home.
    fn h(&self, rel: &str) -> PathBuf {
        self.home().join(rel)
    }

    /// A symlink in the project.
    fn link(&self, name: &str, target: impl AsRef<Path>) {
        std::os::unix::fs::symlink(target, self.proj().join(name)).unwrap();
    }

    /// The files of `.ssh` with their contents.
    fn ssh_files(&self) -> BTreeMap<String, Vec<u8>> {
        files_in(&self.ssh())
    }

    /// `.ssh` holds exactly what it held at the start and is still 0700 (after the
    /// attack `what`).
    #[track_caller]
    fn assert_ssh_intact(&self, what: &str) {
        let want: BTreeMap<String, Vec<u8>> = [
            (
                "authorized_keys".to_string(),
                AUTHORIZED.as_bytes().to_vec(),
            ),
            ("id_rsa".to_string(), KEY.as_bytes().to_vec()),
        ]
        .into();
        let got = self.ssh_files();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{what}: no file was added to or removed from ~/.ssh"
        );
        assert_eq!(
            text(&got["authorized_keys"]),
            AUTHORIZED,
            "{what}: ~/.ssh/authorized_keys is unchanged"
        );
        assert_eq!(
            text(&got["id_rsa"]),
            KEY,
            "{what}: ~/.ssh/id_rsa is unchanged"
        );
        assert_eq!(
            mode(&self.ssh()),
            0o700,
            "{what}: ~/.ssh is still mode 0700"
        );
    }

    /// No commit's temporary file (`.herd-*`) is left anywhere under the home.
    #[track_caller]
    fn assert_no_temporaries(&self) {
        let left: Vec<PathBuf> = walk(&self.home())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".herd-"))
            })
            .collect();
        assert!(left.is_empty(), "no temporary file is left: {left:?}");
    }
}

/// The regular files directly in `dir`, with their contents (empty if `dir` is gone).
fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let data = std::fs::read(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), data)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every path below `dir`, not following symlinks.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// The testbed: the workstation `ws` and the helpers asked for.
struct Bed {
    bed: Testbed,
    _agents: Agents,
}

impl Bed {
    /// The workstation and the hostile helper `evil`.
    fn hostile() -> Bed {
        Bed::start(false, true)
    }

    /// The workstation and a real herd helper `h1`.
    fn honest() -> Bed {
        Bed::start(true, false)
    }

    fn start(h1: bool, evil: bool) -> Bed {
        if evil {
            hostile_bin();
        }
        let mut bed = Testbed::new().expect("the testbed needs root");
        bed.add_host(HostSpec::real_fs("ws")).unwrap();
        if h1 {
            bed.add_host(HostSpec::minimal("h1", herd_bin())).unwrap();
        }
        if evil {
            bed.add_host(HostSpec::minimal("evil", hostile_bin()))
                .unwrap();
        }
        let ws = Node::new(bed.host("ws"), herd_bin());
        let token = ws.init();
        let mut agents = Agents(vec![ws.agent(&["--no-mdns", "--cpus", "0"])]);
        let mut names = vec![];
        if h1 {
            agents
                .0
                .push(Node::new(bed.host("h1"), herd_bin()).join(&token));
            names.push("h1");
        }
        if evil {
            let node = Node::new(bed.host("evil"), hostile_bin());
            let listen = node.listen();
            agents.0.push(node.agent(&[
                "--join",
                &token,
                "--name",
                "evil",
                "--listen",
                &listen,
                "--no-mdns",
            ]));
            names.push("evil");
        }
        for name in names {
            wait_for(&format!("{name} alive at ws"), CONVERGE, || {
                all_see(&[ws], name, "alive")
            });
        }
        Bed {
            bed,
            _agents: agents,
        }
    }

    fn ws(&self) -> Node<'_> {
        Node::new(self.bed.host("ws"), herd_bin())
    }

    /// The workstation's state directory (its CA key is there).
    fn ws_state(&self) -> PathBuf {
        self.bed.host("ws").state_dir().to_path_buf()
    }

    /// Gives `evil` the script for the next tasks it is sent.
    fn script(&self, script: &Script) {
        let path = self.bed.host("evil").machine_path(hostile::SCRIPT);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_vec_pretty(script).unwrap()).unwrap();
    }

    /// The answers `evil` saved so far, by name.
    fn results(&self) -> BTreeMap<String, FsResult> {
        let path = self.bed.host("evil").machine_path(hostile::RESULTS);
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<FsResult>(l).expect("a saved answer"))
            .map(|r| (r.save.clone(), r))
            .collect()
    }

    /// `herd run -T [FLAGS] -- ARGS` as root on the workstation, in `home`'s project,
    /// with `HOME` set to it; waits for it to exit.
    fn run(&self, home: &Home, flags: &[&str], args: &[&str]) -> Output {
        let state = self.ws().state();
        let mut argv = vec!["run", "--state", state.as_str(), "-T"];
        argv.extend_from_slice(flags);
        argv.push("--");
        argv.extend_from_slice(args);
        let child = self
            .bed
            .host("ws")
            .command(herd_bin().to_str().unwrap(), &argv)
            .current_dir(home.proj())
            .env("HOME", home.home())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        exited(child)
    }

    /// Plays `script` on `evil` for one task; returns once `herd run` exited.
    fn attack(&self, home: &Home, script: &Script) -> Output {
        self.script(script);
        self.run(home, &["--on", "evil"], &["true"])
    }

    /// Asks the workstation `questions` from `evil` during one task (which then ends
    /// with exit 0 and no changes); returns the answers by name.
    fn ask(&self, home: &Home, questions: &[(&str, FsRequest)]) -> BTreeMap<String, FsResult> {
        let mut script: Script = questions
            .iter()
            .map(|(save, req)| Step::Fs {
                req: req.clone(),
                save: save.to_string(),
                task: TaskRef::Own,
            })
            .collect();
        script.extend(hostile::commit(0, vec![]));
        let out = self.attack(home, &script);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let results = self.results();
        for (save, _) in questions {
            assert!(results.contains_key(*save), "evil saved the answer {save}");
        }
        results
    }
}

/// Waits (at most [`RUN_LIMIT`]) for `herd run` to exit and returns its output.
fn exited(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("herd run did not exit within {RUN_LIMIT:?}");
        }
    }
}

fn read(path: impl AsRef<Path>) -> FsRequest {
    FsRequest::Read {
        path: path_bytes(path),
        offset: 0,
        len: 1 << 20,
    }
}

fn stat(path: impl AsRef<Path>) -> FsRequest {
    FsRequest::Stat {
        path: path_bytes(path),
    }
}

fn list(path: impl AsRef<Path>) -> FsRequest {
    FsRequest::List {
        path: path_bytes(path),
    }
}

/// A new file of `data` (the `Data` frame is sent beside it).
fn file(path: impl AsRef<Path>, mode: u32, base: Base, data: &[u8]) -> (Change, Option<Vec<u8>>) {
    let ch = Change::File {
        path: path_bytes(path),
        mode,
        mtime_ns: 1_000_000_000_000_000_000,
        size: data.len() as u64,
        base,
    };
    (ch, Some(data.to_vec()))
}

/// What an honest helper says it saw at `path` on the workstation: its version now.
fn seen(path: impl AsRef<Path>) -> Base {
    let m = std::fs::symlink_metadata(path).unwrap();
    Base::Seen(herd_proto::fs::Version {
        ino: m.ino(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        size: m.size(),
    })
}

/// A file moved by the task from `from`: the same data and modification time (a
/// rename keeps them), at `to`.
fn moved(from: impl AsRef<Path>, to: impl AsRef<Path>) -> (Change, Option<Vec<u8>>) {
    let m = std::fs::symlink_metadata(&from).unwrap();
    let data = std::fs::read(&from).unwrap();
    let ch = Change::File {
        path: path_bytes(to),
        mode: 0o644,
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        size: data.len() as u64,
        base: Base::Absent,
    };
    (ch, Some(data))
}

fn remove(path: impl AsRef<Path>) -> (Change, Option<Vec<u8>>) {
    let ch = Change::Remove {
        path: path_bytes(path),
        base: Base::Unseen,
    };
    (ch, None)
}

fn dir(path: impl AsRef<Path>, replaces: bool) -> (Change, Option<Vec<u8>>) {
    let ch = Change::Dir {
        path: path_bytes(path),
        mode: 0o755,
        mtime_ns: 1_000_000_000_000_000_000,
        replaces,
    };
    (ch, None)
}

fn symlink(path: impl AsRef<Path>, target: impl AsRef<Path>) -> (Change, Option<Vec<u8>>) {
    let ch = Change::Symlink {
        path: path_bytes(path),
        target: path_bytes(target),
        base: Base::Unseen,
    };
    (ch, None)
}

/// Every one of `saves` was refused with an errno: none was answered with data,
/// attributes or a listing.
#[track_caller]
fn assert_refused(results: &BTreeMap<String, FsResult>, saves: &[&str]) {
    let answered: Vec<String> = saves
        .iter()
        .filter(|s| !matches!(results[**s].response, FsResponse::Errno(_)))
        .map(|s| format!("{s} ({})", summary(&results[*s].response)))
        .collect();
    assert!(
        answered.is_empty(),
        "the workstation refused every question; it answered {}",
        answered.join(", ")
    );
}

/// An answer in a few words (never the data itself: it may be a secret).
fn summary(r: &FsResponse) -> String {
    match r {
        FsResponse::Data(d) => format!("{} bytes of data", d.len()),
        FsResponse::Entries(e) => {
            let names: Vec<String> = e.iter().map(|e| text(&e.name)).collect();
            format!("entries {names:?}")
        }
        FsResponse::Attr(a) => format!("{:?} of {} bytes", a.kind, a.size),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

/// No part of the answer carries `secret`.
#[track_caller]
fn assert_not_leaked(results: &BTreeMap<String, FsResult>, save: &str, secret: &str) {
    let json = serde_json::to_string(&results[save].response).unwrap();
    let bytes = serde_json::to_string(&path_bytes(secret)).unwrap();
    let needle = &bytes[1..bytes.len() - 1];
    assert!(
        !json.contains(needle),
        "{save}: the answer does not carry the secret"
    );
}

// ---------------------------------------------------------------------------------
// A hostile helper's change sets.

/// Changes with their data, as a helper sends them.
type ChangeSet = Vec<(Change, Option<Vec<u8>>)>;

/// A change set made for a test's home.
type Attack = fn(&Home) -> ChangeSet;

#[test]
fn a_helper_cannot_write_ssh_keys_or_herds_config() {
    let bed = Bed::hostile();
    // Each change set alone (one refused change may fail a whole commit).
    let attacks: [(&str, Attack); 4] = [
        ("over ~/.ssh/authorized_keys", |h| {
            vec![file(h.h(".ssh/authorized_keys"), 0o600, Base::Absent, EVIL)]
        }),
        ("over ~/.ssh/authorized_keys, unseen", |h| {
            vec![file(h.h(".ssh/authorized_keys"), 0o600, Base::Unseen, EVIL)]
        }),
        ("a new ~/.ssh/authorized_keys2", |h| {
            vec![file(
                h.h(".ssh/authorized_keys2"),
                0o600,
                Base::Absent,
                EVIL,
            )]
        }),
        ("~/.ssh/rc by proj/..", |h| {
            vec![file(h.h("proj/../.ssh/rc"), 0o755, Base::Absent, EVIL)]
        }),
    ];
    for (what, changes) in attacks {
        let home = Home::new();
        bed.attack(&home, &hostile::commit(0, changes(&home)));
        home.assert_ssh_intact(what);
    }
    let home = Home::new();
    bed.attack(
        &home,
        &hostile::commit(
            0,
            vec![
                dir(home.h(".config"), false),
                dir(home.h(".config/herd"), false),
                file(
                    home.h(".config/herd/config.toml"),
                    0o600,
                    Base::Absent,
                    b"x",
                ),
            ],
        ),
    );
    assert!(
        !home.h(".config/herd/config.toml").exists(),
        "~/.config/herd/config.toml was not written"
    );
}

#[test]
fn a_helper_cannot_plant_a_set_id_file() {
    let bed = Bed::hostile();
    let home = Home::new();
    let target = home.h("proj/suid-sh");
    let outside = home.h("suid-sh");
    let out = bed.attack(
        &home,
        &hostile::commit(
            0,
            vec![
                file(&target, 0o6755, Base::Absent, b"#!/bin/sh\n"),
                file(&outside, 0o6755, Base::Absent, b"#!/bin/sh\n"),
            ],
        ),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // In the project the file is the task's to write, without its set-id bits.
    let m = mode(&target);
    assert_eq!(
        m & 0o6000,
        0,
        "proj/suid-sh has no set-user-ID or set-group-ID bit ({m:o})"
    );
    assert_eq!(m, 0o755, "proj/suid-sh keeps its other permission bits");
    assert!(
        text(&out.stderr).contains("set-user-ID, set-group-ID and sticky bits")
            && text(&out.stderr).contains("proj/suid-sh"),
        "herd run says the bits were dropped: {}",
        text(&out.stderr)
    );
    // Outside it, nothing.
    assert!(
        !outside.exists(),
        "~/suid-sh (outside the scope) is not written"
    );
}

#[test]
fn a_helper_cannot_write_through_a_symlink_in_the_project() {
    let bed = Bed::hostile();
    let home = Home::new();
    home.link("dotlink", "../.ssh");
    bed.attack(
        &home,
        &hostile::commit(
            0,
            vec![file(home.h("proj/dotlink/x"), 0o644, Base::Absent, EVIL)],
        ),
    );
    home.assert_ssh_intact("a file written through proj/dotlink -> ../.ssh");
}

#[test]
fn a_helper_cannot_empty_a_symlinked_directory_by_replacing_it() {
    let bed = Bed::hostile();
    let home = Home::new();
    home.link("dotlink", "../.ssh");
    bed.attack(
        &home,
        &hostile::commit(0, vec![dir(home.h("proj/dotlink"), true)]),
    );
    home.assert_ssh_intact("proj/dotlink -> ../.ssh replaced by a directory");
}

#[test]
fn a_symlink_made_by_the_change_set_is_not_followed_by_its_later_changes() {
    let bed = Bed::hostile();
    let home = Home::new();
    std::fs::create_dir(home.h("proj/sub")).unwrap();
    bed.attack(
        &home,
        &hostile::commit(
            0,
            vec![
                remove(home.h("proj/sub")),
                symlink(home.h("proj/sub"), home.ssh()),
                file(
                    home.h("proj/sub/authorized_keys"),
                    0o600,
                    Base::Unseen,
                    EVIL,
                ),
                file(home.h("proj/sub/new_key"), 0o600, Base::Absent, EVIL),
            ],
        ),
    );
    home.assert_ssh_intact("proj/sub made a link to ~/.ssh, then written through");
}

#[test]
fn a_move_out_of_the_write_scope_keeps_the_file_where_it_was() {
    let bed = Bed::hostile();
    let home = Home::new();
    std::fs::write(home.h("proj/moved.txt"), "mine\n").unwrap();
    std::fs::write(home.h("outside-src.txt"), "outside\n").unwrap();
    bed.attack(
        &home,
        &hostile::commit(
            0,
            vec![
                // Out of the project, as an honest helper reports a rename (the
                // removal with the version it saw, the file with the same time and
                // size): its copy outside is not written, so the file in the project
                // must stay.
                (
                    Change::Remove {
                        path: path_bytes(home.h("proj/moved.txt")),
                        base: seen(home.h("proj/moved.txt")),
                    },
                    None,
                ),
                moved(home.h("proj/moved.txt"), home.h("moved.txt")),
                // Into the project: the original outside is not removed.
                moved(home.h("outside-src.txt"), home.h("proj/in.txt")),
                remove(home.h("outside-src.txt")),
            ],
        ),
    );
    assert!(
        !home.h("moved.txt").exists(),
        "nothing was written outside the project"
    );
    assert_eq!(
        std::fs::read_to_string(home.h("proj/moved.txt"))
            .ok()
            .as_deref(),
        Some("mine\n"),
        "proj/moved.txt is still there, since its copy outside was not written"
    );
    assert_eq!(
        std::fs::read_to_string(home.h("outside-src.txt"))
            .ok()
            .as_deref(),
        Some("outside\n"),
        "the file outside the project was not removed"
    );
}

#[test]
fn a_change_set_cut_off_half_way_commits_nothing() {
    let bed = Bed::hostile();
    let home = Home::new();
    std::fs::write(home.h("proj/keep.txt"), "old\n").unwrap();
    let (first, first_data) = file(home.h("proj/first.txt"), 0o644, Base::Absent, b"whole\n");
    let script = vec![
        Step::Out(TaskOutput::Exited { code: 0 }),
        Step::Out(TaskOutput::Change(first)),
        Step::Out(TaskOutput::Data(first_data.unwrap())),
        Step::Out(TaskOutput::Change(Change::File {
            path: path_bytes(home.h("proj/keep.txt")),
            mode: 0o644,
            mtime_ns: 0,
            size: 1 << 20,
            base: Base::Unseen,
        })),
        Step::Fill {
            len: 300 << 10,
            byte: b'h',
        },
        // Give the partial data time to reach the commit process before the reset.
        Step::Pause { ms: 500 },
        Step::Reset,
    ];
    let out = bed.attack(&home, &script);
    assert_ne!(
        out.status.code(),
        Some(0),
        "herd run fails: {}",
        text(&out.stderr)
    );
    assert!(
        !home.h("proj/first.txt").exists(),
        "proj/first.txt was not committed"
    );
    assert_eq!(
        std::fs::read_to_string(home.h("proj/keep.txt")).unwrap(),
        "old\n",
        "proj/keep.txt is unchanged"
    );
    home.assert_no_temporaries();
}

#[test]
fn a_file_announced_huge_but_sent_short_fails_cleanly() {
    let bed = Bed::hostile();
    let home = Home::new();
    let script = vec![
        Step::Out(TaskOutput::Exited { code: 0 }),
        Step::Out(TaskOutput::Change(Change::File {
            path: path_bytes(home.h("proj/huge")),
            mode: 0o644,
            mtime_ns: 0,
            size: 1 << 50,
            base: Base::Absent,
        })),
        Step::Out(TaskOutput::Data(b"short".to_vec())),
        Step::Out(TaskOutput::Done),
        Step::Finish,
    ];
    let out = bed.attack(&home, &script);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(255),
        "herd run fails as herd: {err}"
    );
    assert!(err.starts_with("herd: "), "one line says why: {err}");
    assert!(!home.h("proj/huge").exists(), "proj/huge was not committed");
    home.assert_no_temporaries();
}

// ---------------------------------------------------------------------------------
// A hostile helper's file questions.

#[test]
fn file_questions_cannot_reach_secrets_through_proc() {
    let bed = Bed::hostile();
    let home = Home::new();
    let ca_key = bed.ws_state().join("ca.key");
    assert!(ca_key.exists(), "the workstation holds the CA key");
    let root = |p: &Path| Path::new("/proc/self/root").join(p.strip_prefix("/").unwrap());
    let marker = "herd-trust-environ-marker-5f2d";
    let sleeper = Sleeper::start(marker);
    let pid = sleeper.0.id();
    let r = bed.ask(
        &home,
        &[
            ("ssh-direct", read(home.h(".ssh/id_rsa"))),
            ("ca-direct", read(&ca_key)),
            ("ssh-via-proc-self-root", read(root(&home.h(".ssh/id_rsa")))),
            ("ca-via-proc-self-root", read(root(&ca_key))),
            (
                "ssh-via-proc-pid-root",
                read(
                    Path::new(&format!("/proc/{pid}/root"))
                        .join(home.h(".ssh/id_rsa").strip_prefix("/").unwrap()),
                ),
            ),
            ("environ-of-a-process", read(format!("/proc/{pid}/environ"))),
        ],
    );
    assert_refused(
        &r,
        &[
            "ssh-direct",
            "ca-direct",
            "ssh-via-proc-self-root",
            "ca-via-proc-self-root",
            "ssh-via-proc-pid-root",
            "environ-of-a-process",
        ],
    );
    assert_not_leaked(&r, "environ-of-a-process", marker);
}

#[test]
fn file_questions_cannot_reach_secrets_through_symlinks_or_dotdot() {
    let bed = Bed::hostile();
    let home = Home::new();
    home.link("dotlink", "../.ssh");
    home.link("abs", home.ssh());
    let r = bed.ask(
        &home,
        &[
            (
                "read-via-relative-link",
                read(home.h("proj/dotlink/id_rsa")),
            ),
            (
                "stat-via-relative-link",
                stat(home.h("proj/dotlink/id_rsa")),
            ),
            ("list-via-relative-link", list(home.h("proj/dotlink"))),
            (
                "list-via-relative-link-slash",
                list(home.h("proj/dotlink/")),
            ),
            ("read-via-absolute-link", read(home.h("proj/abs/id_rsa"))),
            ("list-via-absolute-link", list(home.h("proj/abs"))),
            ("read-via-dotdot", read(home.h("proj/../.ssh/id_rsa"))),
            (
                "prefetch-via-absolute-link",
                FsRequest::Prefetch {
                    path: path_bytes(home.h("proj/abs/id_rsa")),
                },
            ),
        ],
    );
    assert_refused(
        &r,
        &[
            "read-via-relative-link",
            "stat-via-relative-link",
            "list-via-relative-link",
            "list-via-relative-link-slash",
            "read-via-absolute-link",
            "list-via-absolute-link",
            "read-via-dotdot",
        ],
    );
    assert_not_leaked(&r, "prefetch-via-absolute-link", KEY);
    // The project itself is readable (the control).
    std::fs::write(home.h("proj/plain.txt"), "plain\n").unwrap();
    let r = bed.ask(&home, &[("plain", read(home.h("proj/plain.txt")))]);
    assert_eq!(
        r["plain"].response,
        FsResponse::Data(b"plain\n".to_vec()),
        "a project file is served"
    );
}

#[test]
fn file_questions_for_another_task_are_refused() {
    let bed = Bed::hostile();
    let home = Home::new();
    std::fs::write(home.h("proj/plain.txt"), "plain\n").unwrap();
    let q = |save: &str, task| Step::Fs {
        req: read(home.h("proj/plain.txt")),
        save: save.into(),
        task,
    };
    // One task first, so that there is a previous one.
    bed.attack(&home, &hostile::commit(0, vec![]));
    let mut script = vec![
        q("previous-task", TaskRef::Previous),
        q("random-task", TaskRef::Id(0x5eed_0000_dead_beef)),
    ];
    script.extend(hostile::commit(0, vec![]));
    // After the task is over, even its own id is refused.
    script.push(Step::Wait);
    script.push(q("own-task-after-the-end", TaskRef::Own));
    let out = bed.attack(&home, &script);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_for("evil asked after its task ended", CONVERGE, || {
        bed.results().contains_key("own-task-after-the-end")
    });
    let r = bed.results();
    assert_refused(
        &r,
        &["previous-task", "random-task", "own-task-after-the-end"],
    );
}

/// A process on the workstation with a secret in its environment.
struct Sleeper(Child);

impl Sleeper {
    fn start(marker: &str) -> Sleeper {
        // Nothing of this machine's own environment: only the marker.
        let child = std::process::Command::new("/bin/sleep")
            .arg("600")
            .env_clear()
            .env("SECRET_TOKEN", marker)
            .spawn()
            .unwrap();
        Sleeper(child)
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------
// Honest tasks: what the write scope means for ordinary commands.

/// The stderr lines of `herd run` saying changes were not written.
fn not_written_lines(out: &Output) -> Vec<String> {
    text(&out.stderr)
        .lines()
        .filter(|l| l.contains("not written") || l.contains("outside the write scope"))
        .map(str::to_string)
        .collect()
}

#[test]
fn replacing_a_symlinked_directory_leaves_its_target_alone() {
    let bed = Bed::honest();
    let home = Home::new();
    let elsewhere = home.base().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("a"), "a\n").unwrap();
    std::fs::write(elsewhere.join("b"), "b\n").unwrap();
    home.link("data", &elsewhere);
    let out = bed.run(
        &home,
        &[],
        &[
            "/bin/sh",
            "-c",
            "rm data && mkdir data && echo new > data/f",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let want: BTreeMap<String, Vec<u8>> = [
        ("a".to_string(), b"a\n".to_vec()),
        ("b".to_string(), b"b\n".to_vec()),
    ]
    .into();
    assert_eq!(
        files_in(&elsewhere),
        want,
        "the symlink's target directory is untouched"
    );
}

#[test]
fn a_task_cannot_write_ssh_keys_or_herds_config_and_is_told_so() {
    let bed = Bed::honest();
    let home = Home::new();
    std::fs::remove_file(home.h(".ssh/authorized_keys")).unwrap();
    let out = bed.run(
        &home,
        &[],
        &[
            "/bin/sh",
            "-c",
            "mkdir -p \"$HOME/.ssh\" \"$HOME/.config/herd\" && \
             echo evil > \"$HOME/.ssh/authorized_keys\" && \
             echo evil > \"$HOME/.config/herd/config.toml\" && echo done",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the task's exit code: {}",
        text(&out.stderr)
    );
    assert!(
        !home.h(".ssh/authorized_keys").exists(),
        "~/.ssh/authorized_keys was not written"
    );
    assert!(
        !home.h(".config/herd/config.toml").exists(),
        "~/.config/herd/config.toml was not written"
    );
    assert_eq!(mode(&home.ssh()), 0o700, "~/.ssh is still mode 0700");
    let lines = not_written_lines(&out);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(".ssh/authorized_keys") && l.contains(".config/herd/config.toml")),
        "herd run names the paths it did not write: {}",
        text(&out.stderr)
    );
}

#[test]
fn changes_outside_the_write_scope_are_dropped_unless_allowed() {
    let bed = Bed::honest();
    let home = Home::new();
    let script = "mkdir -p \"$HOME/.cache/tool\" && echo c > \"$HOME/.cache/tool/x\" && \
                  echo out > out.txt";
    let out = bed.run(&home, &[], &["/bin/sh", "-c", script]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the task's exit code: {}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(home.h("proj/out.txt"))
            .ok()
            .as_deref(),
        Some("out\n"),
        "proj/out.txt was committed"
    );
    assert!(
        !home.h(".cache/tool/x").exists(),
        "~/.cache/tool/x (outside the write scope) was not written"
    );
    let lines = not_written_lines(&out);
    assert!(
        lines.len() == 1 && lines[0].contains(".cache/tool/x"),
        "one stderr line names the dropped path: {}",
        text(&out.stderr)
    );

    // `--writes DIR` widens the scope.
    let cache = home.h(".cache");
    let out = bed.run(
        &home,
        &["--writes", cache.to_str().unwrap()],
        &["/bin/sh", "-c", script],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "with --writes: {}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(home.h(".cache/tool/x"))
            .ok()
            .as_deref(),
        Some("c\n"),
        "with --writes ~/.cache, ~/.cache/tool/x is written"
    );
    assert!(
        not_written_lines(&out).is_empty(),
        "nothing is reported dropped with --writes: {}",
        text(&out.stderr)
    );

    // A file moved out of the scope stays where it was (its new place is not
    // written), and the user is told; one moved in is copied.
    std::fs::write(home.h("proj/moved.txt"), "mine\n").unwrap();
    std::fs::write(home.h("outside.txt"), "theirs\n").unwrap();
    let out = bed.run(
        &home,
        &[],
        &[
            "/bin/sh",
            "-c",
            "mv moved.txt \"$HOME/moved.txt\" && mv \"$HOME/outside.txt\" in.txt",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "mv: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(home.h("proj/moved.txt"))
            .ok()
            .as_deref(),
        Some("mine\n"),
        "a file moved out of the scope is still in the project: {}",
        text(&out.stderr)
    );
    assert!(!home.h("moved.txt").exists(), "nor written outside it");
    assert_eq!(
        std::fs::read_to_string(home.h("proj/in.txt"))
            .ok()
            .as_deref(),
        Some("theirs\n"),
        "a file moved into the scope is copied in"
    );
    assert!(home.h("outside.txt").exists(), "and stays where it was");
    let lines = not_written_lines(&out);
    assert!(
        lines.len() == 1 && lines[0].contains("proj/moved.txt"),
        "one stderr line names the file kept in place: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_directory_may_become_a_file_and_a_file_a_directory_in_the_project() {
    // The control: replacements inside the write scope are committed.
    let bed = Bed::honest();
    let home = Home::new();
    std::fs::create_dir(home.h("proj/d")).unwrap();
    std::fs::write(home.h("proj/d/inner"), "i\n").unwrap();
    std::fs::write(home.h("proj/f"), "f\n").unwrap();
    let out = bed.run(
        &home,
        &[],
        &[
            "/bin/sh",
            "-c",
            "rm -r d && echo now a file > d && rm f && mkdir f && echo now inside > f/inner",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(home.h("proj/d")).ok().as_deref(),
        Some("now a file\n"),
        "proj/d became a file"
    );
    assert_eq!(
        std::fs::read_to_string(home.h("proj/f/inner"))
            .ok()
            .as_deref(),
        Some("now inside\n"),
        "proj/f became a directory"
    );
}
