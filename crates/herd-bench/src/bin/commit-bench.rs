//! Committing a task's changes on the workstation against copying the same tree.
//!
//! For each case — one 4 KiB file (a compile's object: at least 21 runs), 10,000
//! small files, 100,000 small files (1 KiB each, 100 per directory) and one 1 GiB
//! file — the benchmark makes the tree once under
//! `--dir` (default `/var/tmp/herd-commit-bench`), then times, `--runs` times each
//! (default 3): a [`Committer`] staging the tree as a change set (read from the
//! source files, as the agent streams them) and committing it into a fresh directory
//! of the same file system (staging, `syncfs`, intent log, renames, cleanup), and
//! `cp -a` of the same tree to a fresh directory followed by `sync -f` (so both make
//! their result durable). Prints medians and the ratio, and writes JSON (`--json
//! PATH`, default `target/bench/commit.json`).
//!
//! ```sh
//! cargo build --release -p herd-bench
//! target/release/commit-bench [--runs 3] [--dir /var/tmp/herd-commit-bench] [--json PATH]
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use herd_bench::{Summary, arg, write_json};
use herd_fs::changes::{Committer, Limits, Scope};
use herd_proto::fs::{Base, Change};
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    case: String,
    files: u64,
    bytes: u64,
    herd: Summary,
    cp: Summary,
    ratio: f64,
}

/// Makes `files` files of `size` bytes, 100 per directory (or one file).
fn make_tree(dir: &Path, files: u64, size: usize) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    let chunk = vec![b'x'; size.min(1 << 20)];
    for i in 0..files {
        let d = dir.join(format!("d{}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&d)?;
        }
        let mut f = fs::File::create(d.join(format!("f{i}")))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n])?;
            left -= n;
        }
    }
    Ok(())
}

/// The change set that makes `src`'s tree at `dst` (a workstation path).
fn change_set(src: &Path, dst: &Path) -> anyhow::Result<Vec<(Change, Option<PathBuf>)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let b = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
    let md = fs::metadata(src)?;
    out.push((
        Change::Dir {
            path: b(dst),
            mode: md.mode() & 0o7777,
            mtime_ns: md.mtime() * 1_000_000_000,
            replaces: false,
        },
        None,
    ));
    let mut dirs: Vec<_> = fs::read_dir(src)?.collect::<Result<_, _>>()?;
    dirs.sort_by_key(|e| e.file_name());
    for d in dirs {
        let md = d.metadata()?;
        let to = dst.join(d.file_name());
        if md.is_dir() {
            out.push((
                Change::Dir {
                    path: b(&to),
                    mode: md.mode() & 0o7777,
                    mtime_ns: md.mtime() * 1_000_000_000,
                    replaces: false,
                },
                None,
            ));
            for f in fs::read_dir(d.path())? {
                let f = f?;
                let md = f.metadata()?;
                out.push((
                    Change::File {
                        path: b(&to.join(f.file_name())),
                        mode: md.mode() & 0o7777,
                        mtime_ns: md.mtime() * 1_000_000_000,
                        size: md.size(),
                        base: Base::Absent,
                    },
                    Some(f.path()),
                ));
            }
        } else {
            out.push((
                Change::File {
                    path: b(&to),
                    mode: md.mode() & 0o7777,
                    mtime_ns: md.mtime() * 1_000_000_000,
                    size: md.size(),
                    base: Base::Absent,
                },
                Some(d.path()),
            ));
        }
    }
    Ok(out)
}

fn herd_commit(base: &Path, src: &Path, run: usize) -> anyhow::Result<Duration> {
    let dst = base.join(format!("herd-{run}"));
    let logs = base.join("logs");
    let set = change_set(src, &dst)?;
    let t = Instant::now();
    let scope = Scope::new(Path::new("/"), &[base.to_path_buf()], Default::default())?;
    let mut c = Committer::new(
        Path::new("/"),
        &format!("bench{run}"),
        scope,
        Limits::default(),
        &logs,
    )?;
    for (ch, data) in &set {
        match data {
            Some(p) => {
                let mut f = fs::File::open(p)?;
                c.stage(ch, Some(&mut f))?;
            }
            None => c.stage(ch, None)?,
        }
    }
    let report = c.commit()?;
    let took = t.elapsed();
    anyhow::ensure!(
        report.dropped.is_empty(),
        "dropped: {:?}",
        &report.dropped[..1]
    );
    fs::remove_dir_all(&dst)?;
    Ok(took)
}

fn cp_a(base: &Path, src: &Path, run: usize) -> anyhow::Result<Duration> {
    let dst = base.join(format!("cp-{run}"));
    let t = Instant::now();
    let st = Command::new("cp").arg("-a").arg(src).arg(&dst).status()?;
    anyhow::ensure!(st.success(), "cp -a failed");
    let st = Command::new("sync").arg("-f").arg(&dst).status()?;
    anyhow::ensure!(st.success(), "sync -f failed");
    let took = t.elapsed();
    fs::remove_dir_all(&dst)?;
    Ok(took)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = arg(&args, "--runs", 3);
    let base = PathBuf::from(arg(
        &args,
        "--dir",
        "/var/tmp/herd-commit-bench".to_string(),
    ));
    fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let mut rows = Vec::new();
    for (case, files, size) in [
        // What one compile commits: its object file.
        ("1 file of 4 KiB", 1u64, 4096usize),
        ("10,000 files of 1 KiB", 10_000, 1024),
        ("100,000 files of 1 KiB", 100_000, 1024),
        ("1 file of 1 GiB", 1, 1 << 30),
    ] {
        let src = base.join("src");
        make_tree(&src, files, size)?;
        let (mut herd, mut cp) = (Vec::new(), Vec::new());
        // A small commit's time is mostly its syncs: more runs for a stable median.
        let n = if files == 1 && size < 1 << 20 {
            runs.max(21)
        } else {
            runs
        };
        for run in 0..n {
            herd.push(herd_commit(&base, &src, run)?);
            cp.push(cp_a(&base, &src, run)?);
        }
        let herd = Summary::of(&herd).context("no runs")?;
        let cp = Summary::of(&cp).context("no runs")?;
        rows.push(Row {
            case: case.to_string(),
            files,
            bytes: files * size as u64,
            ratio: herd.median / cp.median,
            herd,
            cp,
        });
        fs::remove_dir_all(&src)?;
    }
    println!(
        "commit on {} ({} runs each; medians, min-max)",
        base.display(),
        runs
    );
    println!(
        "{:<24} {:>22} {:>22} {:>7}",
        "case", "herd commit (s)", "cp -a + sync (s)", "ratio"
    );
    for r in &rows {
        println!(
            "{:<24} {:>8.3} ({:.3}-{:.3}) {:>8.3} ({:.3}-{:.3}) {:>7.2}",
            r.case, r.herd.median, r.herd.min, r.herd.max, r.cp.median, r.cp.min, r.cp.max, r.ratio
        );
    }
    let path = write_json(&args, "commit", &rows)?;
    println!("wrote {}", path.display());
    let _ = fs::remove_dir_all(&base);
    Ok(())
}
