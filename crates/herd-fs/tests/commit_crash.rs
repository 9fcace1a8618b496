//! Kills a committing process (SIGKILL, a real separate process: this test binary run
//! again as `crash_child`) at seeded points of large commits — staging, the point of
//! no return, applying, cleanup — then runs `recover` and checks all or nothing: the
//! tree is exactly the before or the after snapshot, with no staging and no log left.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use herd_fs::changes::{Step, recover};
use herd_proto::fs::Change;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const DIRS: usize = 8;
const FILES: usize = 25;

/// The workstation before the task: `/w/dN/fM` files, all with fixed times.
fn build(root: &Path) {
    for d in 0..DIRS {
        let dir = root.join(format!("w/d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES {
            let p = dir.join(format!("f{f}"));
            fs::write(&p, format!("old {d} {f}")).unwrap();
            let t = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
    fs::create_dir_all(root.join("o")).unwrap();
}

/// The task's change set for `seed`: edits, new directories of new files, removals,
/// a replaced directory and links (some 300 changes).
fn changes(root: &Path, seed: u64) -> Vec<Staged> {
    let mut rng = Rng(seed | 1);
    let mut out = vec![dir("/w", 0o755, false)];
    let replaced = rng.below(DIRS as u64) as usize;
    let removed = (replaced + 1) % DIRS;
    for d in 0..DIRS {
        if d == removed {
            out.push(remove(&format!("/w/d{d}")));
            continue;
        }
        out.push(dir(&format!("/w/d{d}"), 0o755, d == replaced));
        for f in 0..FILES {
            let p = format!("/w/d{d}/f{f}");
            match rng.below(4) {
                0 if d != replaced => out.push(remove(&p)),
                1 | 2 => {
                    let mut s = file(&p, format!("new {seed} {d} {f}").as_bytes());
                    if d != replaced
                        && let Change::File { base, .. } = &mut s.change
                    {
                        *base = seen(root, &p);
                    }
                    out.push(s);
                }
                _ if d == replaced => out.push(link(&p, "../d0/f0")),
                _ => {}
            }
        }
    }
    for n in 0..4 {
        out.push(dir(&format!("/w/new{n}"), 0o750, false));
        out.push(dir(&format!("/w/new{n}/sub"), 0o700, false));
        for f in 0..20 {
            out.push(file(
                &format!("/w/new{n}/sub/g{f}"),
                format!("g {seed} {n} {f}").as_bytes(),
            ));
        }
    }
    out
}

fn snap(root: &Path) -> BTreeMap<PathBuf, Entry> {
    snapshot(&root.join("w"))
}

/// The child: commits seed's change set, reporting each step with a byte on stdout
/// and, when `HERD_CRASH_ACK` is set, waiting for a byte on stdin before going on.
#[test]
fn crash_child() {
    let Ok(root) = std::env::var("HERD_CRASH_ROOT") else {
        return;
    };
    let root = PathBuf::from(root);
    let logs = PathBuf::from(std::env::var("HERD_CRASH_LOGS").unwrap());
    let seed: u64 = std::env::var("HERD_CRASH_SEED").unwrap().parse().unwrap();
    let ack = std::env::var("HERD_CRASH_ACK").is_ok();
    let set = changes(&root, seed);
    let mut c = committer(&root, "crash", &["/w"], &[], &logs);
    c.observe(move |_: Step| {
        // SAFETY: plain writes and reads of the inherited pipes.
        unsafe {
            libc::write(1, [1u8].as_ptr().cast(), 1);
            if ack {
                let mut b = [0u8];
                libc::read(0, b.as_mut_ptr().cast(), 1);
            }
        }
    });
    for s in &set {
        let mut d = &s.data[..];
        let r: Option<&mut dyn Read> = matches!(s.change, Change::File { .. }).then_some(&mut d);
        c.stage(&s.change, r).unwrap();
    }
    c.commit().unwrap();
}

/// Runs the child on `root` and kills it after `k` steps (`ack`: the child waits for
/// each step to be acknowledged, so the kill lands exactly there). Returns whether it
/// was killed (else it ran to the end).
fn run_child(root: &Path, logs: &Path, seed: u64, k: u64, ack: bool) -> bool {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["crash_child", "--exact", "--test-threads=1", "-q"])
        .env("HERD_CRASH_ROOT", root)
        .env("HERD_CRASH_LOGS", logs)
        .env("HERD_CRASH_SEED", seed.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if ack {
        cmd.env("HERD_CRASH_ACK", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut steps = 0;
    let mut b = [0u8; 1];
    let killed = loop {
        match out.read(&mut b) {
            Ok(1) if b[0] == 1 => {
                steps += 1;
                if steps >= k {
                    child.kill().unwrap();
                    break true;
                }
                if ack {
                    let _ = stdin.write_all(&[0]);
                }
            }
            Ok(1) => {}
            _ => break false,
        }
    };
    let st = child.wait().unwrap();
    if !killed {
        assert!(st.success(), "the child failed without being killed");
    }
    killed
}

#[test]
fn a_killed_commit_is_recovered_all_or_nothing() {
    const SEEDS: u64 = 4;
    const RUNS: u64 = 220;
    let mut none = 0;
    let mut all = 0;
    let mut killed_runs = 0;
    let mut rng = Rng(0x5eed);
    // On a tmpfs of its own: a kill tests the process dying, not the disk, and the
    // disk's syncfs would make the runs slow.
    let fs_dir = Tmpfs::mount();
    let tempdir = || tempfile::tempdir_in(fs_dir.path()).unwrap();
    for seed in 1..=SEEDS {
        // The before and after trees of this change set.
        let t = tempdir();
        let logs = tempfile::tempdir().unwrap();
        build(t.path());
        let before = snap(t.path());
        let set = changes(t.path(), seed);
        let total = {
            let steps = std::rc::Rc::new(std::cell::Cell::new(0u64));
            let s2 = steps.clone();
            let mut c = committer(t.path(), "crash", &["/w"], &[], logs.path());
            c.observe(move |_| s2.set(s2.get() + 1));
            for s in &set {
                let mut d = &s.data[..];
                let r: Option<&mut dyn Read> =
                    matches!(s.change, Change::File { .. }).then_some(&mut d);
                c.stage(&s.change, r).unwrap();
            }
            c.commit().unwrap();
            steps.get()
        };
        let after = snap(t.path());
        assert_ne!(before, after);
        assert!(total > 300, "only {total} steps");
        for run in 0..RUNS / SEEDS {
            let t = tempdir();
            let logs = tempfile::tempdir().unwrap();
            build(t.path());
            // Two thirds exact kills at a seeded step, a third asynchronous ones (the
            // child runs on while the kill is on its way).
            let ack = run % 3 != 2;
            let k = 1 + rng.below(total + 2);
            if run_child(t.path(), logs.path(), seed, k, ack) {
                killed_runs += 1;
            }
            recover(t.path(), logs.path()).unwrap();
            let now = snap(t.path());
            assert!(
                leftovers(&snapshot(t.path())).is_empty(),
                "staging left (seed {seed}, k {k})"
            );
            assert_eq!(
                fs::read_dir(logs.path()).unwrap().count(),
                0,
                "log left (seed {seed}, k {k})"
            );
            if now == before {
                none += 1;
            } else if now == after {
                all += 1;
            } else {
                let diff: Vec<_> = now
                    .iter()
                    .filter(|(p, e)| before.get(*p) != Some(e) && after.get(*p) != Some(e))
                    .map(|(p, _)| p)
                    .take(5)
                    .collect();
                panic!(
                    "seed {seed}, killed at step {k}/{total} (ack {ack}): neither before nor after: {diff:?}"
                );
            }
        }
    }
    eprintln!(
        "crash runs: {} ({killed_runs} killed), outcomes: none {none}, all {all}",
        none + all
    );
    assert!(none + all >= 200);
    assert!(none > 0 && all > 0, "none {none}, all {all}");
}

/// A tmpfs mounted for the test (it must run as root: it fails, never skips).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Tmpfs {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1g", "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "this test mounts a tmpfs and must run as root"
        );
        Tmpfs(d)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}
