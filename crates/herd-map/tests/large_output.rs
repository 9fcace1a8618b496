//! A job's large output passes through whole with bounded memory. Alone in its test
//! binary, so the process's peak memory is this test's.

mod common;

use std::io::{self, Write};

use common::opts;
use herd_map::{Cancel, LocalRunner, Progress, Template, cartesian, run_map};

/// Hashes (FNV-1a) and counts what is written, remembering the largest single write.
struct Digest {
    hash: u64,
    len: u64,
    largest_write: usize,
}

impl Digest {
    fn new() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
            largest_write: 0,
        }
    }
}

impl Write for Digest {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        for &byte in b {
            self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.len += b.len() as u64;
        self.largest_write = self.largest_write.max(b.len());
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The process's peak resident memory in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn fifty_megabytes_of_output_pass_through_with_bounded_memory() {
    const SIZE: u64 = 50_000_000;
    const LINE: &[u8] = b"herd map large output test line\n";
    let mut want = Digest::new();
    let mut left = SIZE as usize;
    while left > 0 {
        let n = left.min(LINE.len());
        want.write_all(&LINE[..n]).unwrap();
        left -= n;
    }

    let before = peak_rss_kib();
    let line = std::str::from_utf8(&LINE[..LINE.len() - 1]).unwrap();
    let template = Template::from_text(&format!("yes '{line}' | head -c {{}}"));
    let rows = cartesian(vec![vec![SIZE.to_string()]]).map(Ok);
    let mut out = Digest::new();
    let mut err = Vec::new();
    let options = herd_map::MapOptions {
        progress: Progress::Quiet,
        ..opts(2)
    };
    let summary = run_map(
        &options,
        &template,
        rows,
        &LocalRunner,
        &mut out,
        &mut err,
        &Cancel::new(),
    )
    .unwrap();
    let after = peak_rss_kib();

    assert_eq!(summary.succeeded, 1, "{}", String::from_utf8_lossy(&err));
    assert_eq!(out.len, SIZE);
    assert_eq!(out.hash, want.hash, "content differs");
    assert!(
        out.largest_write <= 64 * 1024,
        "a write of {} bytes",
        out.largest_write
    );
    let grew = after.saturating_sub(before);
    assert!(
        grew < 16 * 1024,
        "peak memory grew by {grew} KiB for {SIZE} bytes of output"
    );
}
