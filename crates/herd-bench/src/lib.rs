//! Shared pieces of herd's benchmarks: finding the herd binary, statistics, and the
//! table-plus-JSON report every benchmark prints.
//!
//! Benchmarks are programs (`src/bin/*.rs`), not timed tests: timing on a shared
//! 2-core machine is too noisy to assert on, so each benchmark runs its baseline in
//! the same run, prints a table a person can read and writes JSON a script can
//! compare (under `target/bench/` by default).

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// The herd binary to benchmark: `--herd PATH`, else `herd` beside this program
/// (build both with `cargo build --release -p herd -p herd-bench`).
pub fn herd_binary(args: &[String]) -> anyhow::Result<PathBuf> {
    if let Some(i) = args.iter().position(|a| a == "--herd") {
        let p = PathBuf::from(
            args.get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("--herd needs a path"))?,
        );
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("herd");
    anyhow::ensure!(
        p.exists(),
        "no herd binary at {}: build it (cargo build --release -p herd) or pass --herd PATH",
        p.display()
    );
    Ok(p)
}

/// The value after `flag`, parsed, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median, minimum and maximum of a sample, in seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Number of observations.
    pub n: usize,
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarises durations; `None` if there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Some(Summary {
            n: v.len(),
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// Writes `value` as pretty JSON to `--json PATH` or `target/bench/NAME.json`;
/// returns the path.
pub fn write_json(args: &[String], name: &str, value: &impl Serialize) -> anyhow::Result<PathBuf> {
    let path = match args.iter().position(|a| a == "--json") {
        Some(i) => PathBuf::from(
            args.get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("--json needs a path"))?,
        ),
        None => Path::new("target/bench").join(format!("{name}.json")),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median() {
        let d = |s| Duration::from_secs(s);
        let s = Summary::of(&[d(3), d(1), d(2)]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[d(1), d(2)]).unwrap().median, 1.5);
        assert!(Summary::of(&[]).is_none());
    }
}
