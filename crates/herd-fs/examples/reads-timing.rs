//! What a cold file question costs the workstation's `LocalSource`: a stat, list and
//! read mix over a real tree (`/usr/lib/python3*`), timed per request. Not a timed
//! assertion: run it with `cargo run --release -p herd-fs --example reads-timing` and read the numbers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use herd_fs::{LocalSource, Source};

/// Directories and regular files under `dir`, not following links.
fn tree(dir: &Path, dirs: &mut Vec<PathBuf>, files: &mut Vec<PathBuf>) {
    dirs.push(dir.to_path_buf());
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            tree(&e.path(), dirs, files);
        } else {
            files.push(e.path());
        }
    }
}

fn cold_question_mix_over_python() {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for e in std::fs::read_dir("/usr/lib").unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("python3") {
            tree(&e.path(), &mut dirs, &mut files);
        }
    }
    let depth: usize =
        files.iter().map(|f| f.components().count()).sum::<usize>() / files.len().max(1);
    println!(
        "{} directories, {} files (mean depth {depth} components)",
        dirs.len(),
        files.len()
    );
    let hidden = vec![PathBuf::from("/root/.ssh"), PathBuf::from("/var/lib/herd")];
    for round in 0..5 {
        // A new source each round: nothing it could cache is warm (the kernel's
        // dentry and page caches are, after the first round).
        let src = LocalSource::new("/", hidden.clone());
        let t = Instant::now();
        for f in &files {
            let _ = src.stat(f);
        }
        let stat = t.elapsed();
        let t = Instant::now();
        for d in &dirs {
            let _ = src.list(d);
        }
        let list = t.elapsed();
        let t = Instant::now();
        let mut bytes = 0;
        for f in &files {
            bytes += src.read(f, 0, 4096).map_or(0, |d| d.len());
        }
        let read = t.elapsed();
        // What the source did before it walked: one path lookup per question.
        let t = Instant::now();
        for f in &files {
            let _ = std::fs::symlink_metadata(f);
        }
        let plain_stat = t.elapsed();
        let t = Instant::now();
        for d in &dirs {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    let _ = e.metadata();
                }
            }
        }
        let plain_list = t.elapsed();
        let t = Instant::now();
        for f in &files {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; 4096];
            if let Ok(file) = std::fs::File::open(f) {
                let _ = file.read_at(&mut buf, 0);
            }
        }
        let plain_read = t.elapsed();
        let per = |d: std::time::Duration, n: usize| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "round {round}: plain lookups: stat {:.2} us, list {:.2} us/dir, read {:.2} us",
            per(plain_stat, files.len()),
            per(plain_list, dirs.len()),
            per(plain_read, files.len()),
        );
        println!(
            "round {round}: stat {:.2} us, list {:.2} us/dir, read(4 KiB) {:.2} us ({bytes} bytes)",
            per(stat, files.len()),
            per(list, dirs.len()),
            per(read, files.len()),
        );
    }
}

fn resolving_the_hidden_list_again() {
    // About the size of the default list, for two homes: most paths missing.
    let names = [
        ".ssh",
        ".gnupg",
        ".aws",
        ".config/herd",
        ".local/share/herd",
        ".netrc",
        ".docker/config.json",
        ".kube",
        ".git-credentials",
        ".config/gh",
        ".npmrc",
        ".pypirc",
        ".cargo/credentials.toml",
        ".config/gcloud",
        ".azure",
        ".local/share/keyrings",
        ".mozilla",
        ".config/google-chrome",
        ".password-store",
        ".vault-token",
    ];
    let hidden: Vec<PathBuf> = ["/root", "/home/u"]
        .iter()
        .flat_map(|h| names.iter().map(move |n| Path::new(h).join(n)))
        .chain([PathBuf::from("/var/lib/herd")])
        .collect();
    let src = LocalSource::new("/", hidden.clone());
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        src.refresh_hidden(false);
    }
    let quick = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..20 {
        src.refresh_hidden(true);
    }
    let full = t.elapsed() / 20;
    println!(
        "{} hidden paths: resolved again in {quick:?}, with the index below them {full:?}",
        hidden.len()
    );
}

fn main() {
    cold_question_mix_over_python();
    resolving_the_hidden_list_again();
}
