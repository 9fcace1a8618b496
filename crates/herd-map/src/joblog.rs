//! GNU parallel's job log (`--joblog`) and `--resume`.
//!
//! The log is tab-separated text: the [`HEADER`] line, then one line per finished job,
//! written and flushed as each job finishes:
//!
//! ```text
//! Seq  Host  Starttime       JobRuntime  Send  Receive  Exitval  Signal  Command
//! 1    :     1795528919.735       0.002  0     2        1        0       echo a; exit 1
//! ```
//!
//! `Starttime` is seconds since the epoch with three decimals, `JobRuntime` seconds
//! with three decimals right-aligned in ten columns (`%10.3f`), and a newline in the
//! command is written as a NUL byte so that every job is one line, all as GNU parallel
//! does; each log can be resumed by the other program.
//!
//! With `--resume` the sequence numbers already in the log are skipped and new lines are
//! appended (no second header). A last line cut short (no newline, say after a crash)
//! is dropped from the file before appending; it is not counted as done.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first line of every job log (without its newline).
pub const HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// One line of a job log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLogEntry {
    /// The job's sequence number (`{#}`).
    pub seq: u64,
    /// Where it ran.
    pub host: String,
    /// When it started (kept to the millisecond).
    pub start: SystemTime,
    /// How long it ran (kept to the millisecond).
    pub runtime: Duration,
    /// Bytes sent for it.
    pub send: u64,
    /// Bytes received for it.
    pub receive: u64,
    /// Its exit status.
    pub exit: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
    /// The command line.
    pub command: String,
}

impl JobLogEntry {
    /// The entry as a log line, with its trailing newline.
    pub fn to_line(&self) -> String {
        let start = self.start.duration_since(UNIX_EPOCH).unwrap_or_default();
        let millis = (start.as_nanos() + 500_000) / 1_000_000;
        format!(
            "{}\t{}\t{}.{:03}\t{:10.3}\t{}\t{}\t{}\t{}\t{}\n",
            self.seq,
            self.host,
            millis / 1000,
            millis % 1000,
            self.runtime.as_secs_f64(),
            self.send,
            self.receive,
            self.exit,
            self.signal,
            self.command.replace('\n', "\0"),
        )
    }

    /// Parses a log line (without its newline). The error says which field is wrong.
    pub fn parse(line: &str) -> Result<Self, String> {
        let fields: Vec<&str> = line.splitn(9, '\t').collect();
        if fields.len() != 9 {
            return Err(format!(
                "expected 9 tab-separated fields, found {}",
                fields.len()
            ));
        }
        fn num<T: std::str::FromStr>(name: &str, s: &str) -> Result<T, String> {
            s.trim()
                .parse()
                .map_err(|_| format!("{name} {s:?} is not a number"))
        }
        fn secs(name: &str, s: &str) -> Result<Duration, String> {
            decimal_seconds(s.trim())
                .ok_or_else(|| format!("{name} {s:?} is not a number of seconds"))
        }
        Ok(Self {
            seq: num("Seq", fields[0])?,
            host: fields[1].to_owned(),
            start: UNIX_EPOCH + secs("Starttime", fields[2])?,
            runtime: secs("JobRuntime", fields[3])?,
            send: num("Send", fields[4])?,
            receive: num("Receive", fields[5])?,
            exit: num("Exitval", fields[6])?,
            signal: num("Signal", fields[7])?,
            command: fields[8].replace('\0', "\n"),
        })
    }
}

/// Parses `123.456` (any number of decimals, nanoseconds kept) exactly.
fn decimal_seconds(s: &str) -> Option<Duration> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos = 0u32;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + digit;
    }
    Some(Duration::new(whole.parse().ok()?, nanos))
}

/// An open job log that finished jobs are appended to.
#[derive(Debug)]
pub struct JobLog {
    file: File,
    path: PathBuf,
}

/// A job log that cannot be opened, read, understood or written.
#[derive(Debug, thiserror::Error)]
pub enum JobLogError {
    /// Opening, reading or writing failed.
    #[error("job log {path}: {source}")]
    Io {
        /// The log's path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A line of an existing log (for `--resume`) is not in GNU parallel's format.
    #[error(
        "job log {path} line {line}: {reason}; fix or remove the file, or run without --resume"
    )]
    Format {
        /// The log's path.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl JobLog {
    /// Creates (or truncates) the log and writes the header.
    pub fn create(path: &Path) -> Result<Self, JobLogError> {
        let io = |source| JobLogError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::create(path).map_err(io)?;
        file.write_all(format!("{HEADER}\n").as_bytes())
            .map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Opens the log for `--resume`: returns it, ready to append, and the sequence
    /// numbers it already holds. A missing or empty log is created with a header.
    pub fn resume(path: &Path) -> Result<(Self, HashSet<u64>), JobLogError> {
        let io = |source| JobLogError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut done = HashSet::new();
        let mut reader = BufReader::new(&mut file);
        let mut complete = 0u64; // bytes up to the end of the last whole line
        let mut number = 0usize;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                break;
            }
            number += 1;
            complete += n as u64;
            buf.pop();
            let format = |reason: String| JobLogError::Format {
                path: path.to_owned(),
                line: number,
                reason,
            };
            let line = std::str::from_utf8(&buf).map_err(|_| format("not UTF-8".into()))?;
            if number == 1 {
                if line != HEADER {
                    return Err(format(format!("expected the header {HEADER:?}")));
                }
                continue;
            }
            let entry = JobLogEntry::parse(line).map_err(format)?;
            done.insert(entry.seq);
        }
        drop(reader);
        file.set_len(complete).map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut log = Self {
            file,
            path: path.to_owned(),
        };
        if complete == 0 {
            log.write_raw(&format!("{HEADER}\n"))?;
        }
        Ok((log, done))
    }

    /// Appends one finished job and flushes.
    pub fn write(&mut self, entry: &JobLogEntry) -> Result<(), JobLogError> {
        self.write_raw(&entry.to_line())
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_raw(&mut self, text: &str) -> Result<(), JobLogError> {
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| JobLogError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, command: &str) -> JobLogEntry {
        JobLogEntry {
            seq,
            host: ":".into(),
            start: UNIX_EPOCH + Duration::from_millis(1_795_528_919_735),
            runtime: Duration::from_micros(2_400),
            send: 0,
            receive: 2,
            exit: 1,
            signal: 0,
            command: command.into(),
        }
    }

    #[test]
    fn lines_are_formatted_like_gnu_parallel() {
        // Copied from a log written by GNU parallel 20221122.
        assert_eq!(
            entry(1, "echo a; exit 1").to_line(),
            "1\t:\t1795528919.735\t     0.002\t0\t2\t1\t0\techo a; exit 1\n"
        );
        let long = JobLogEntry {
            runtime: Duration::from_millis(12_345_678),
            ..entry(2, "x")
        };
        assert!(
            long.to_line().contains("\t 12345.678\t"),
            "{:?}",
            long.to_line()
        );
    }

    #[test]
    fn lines_parse_back_and_newlines_become_nul() {
        let e = JobLogEntry {
            runtime: Duration::from_millis(1500),
            ..entry(7, "printf 'a\tb'\necho c")
        };
        let line = e.to_line();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains("'a\tb'\0echo c"));
        assert_eq!(JobLogEntry::parse(line.trim_end_matches('\n')), Ok(e));
        assert!(JobLogEntry::parse("1\t:\tx").is_err());
        assert!(JobLogEntry::parse("one\t:\t1.0\t1.0\t0\t0\t0\t0\tc").is_err());
    }

    #[test]
    fn resume_drops_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = JobLog::create(&path).unwrap();
        log.write(&entry(1, "a")).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"2\t:\t17955").unwrap();
        drop(f);
        let (mut log, done) = JobLog::resume(&path).unwrap();
        assert_eq!(done, HashSet::from([1]));
        log.write(&entry(3, "c")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "{HEADER}\n{}{}",
                entry(1, "a").to_line(),
                entry(3, "c").to_line()
            )
        );
    }

    #[test]
    fn resume_refuses_a_file_that_is_not_a_job_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "hello\n").unwrap();
        let e = JobLog::resume(&path).unwrap_err();
        assert!(matches!(e, JobLogError::Format { line: 1, .. }), "{e}");
        std::fs::write(&path, format!("{HEADER}\n1\t:\tbad\n")).unwrap();
        let e = JobLog::resume(&path).unwrap_err();
        assert!(matches!(e, JobLogError::Format { line: 2, .. }), "{e}");
        // Refusing leaves the file alone.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{HEADER}\n1\t:\tbad\n")
        );
    }

    #[test]
    fn resume_of_a_missing_log_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new");
        let (_log, done) = JobLog::resume(&path).unwrap();
        assert!(done.is_empty());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{HEADER}\n")
        );
    }
}
