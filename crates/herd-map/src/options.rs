//! [`MapOptions`]: what the `herd map` flags ask for, and their parsing.

use std::fmt;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;

/// The settings of one `herd map` run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapOptions {
    /// Most jobs running at once (`-j`); at least 1.
    pub jobs: usize,
    /// Where to write GNU parallel's job log (`--joblog`).
    pub joblog: Option<PathBuf>,
    /// Skip the jobs already in the job log, append to it (`--resume`).
    pub resume: bool,
    /// Re-run a failed job (non-zero exit, signal, or runner error) up to this many
    /// more times (`--retries`); only the last attempt is written, logged and
    /// counted. GNU parallel's `--retries N` instead allows N attempts in all, and 0
    /// means no limit there. Independent of this, the herd runner re-runs a job whose
    /// host was lost before reporting it.
    pub retries: u32,
    /// When failures stop the run (`--halt`).
    pub halt: Halt,
    /// Print outputs in input order rather than as jobs finish (`--keep-order`).
    pub keep_order: bool,
    /// How progress is shown on stderr.
    pub progress: Progress,
}

impl Default for MapOptions {
    /// One job per local CPU, no job log, no retries, never halt, output as jobs
    /// finish, progress lines.
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(1, usize::from),
            joblog: None,
            resume: false,
            retries: 0,
            halt: Halt::Never,
            keep_order: false,
            progress: Progress::Lines,
        }
    }
}

impl MapOptions {
    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<(), OptionError> {
        if self.jobs == 0 {
            return Err(OptionError::ZeroJobs);
        }
        if self.resume && self.joblog.is_none() {
            return Err(OptionError::ResumeWithoutJoblog);
        }
        Ok(())
    }
}

/// How progress is shown on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// An indicatif bar drawn on the process's stderr (when it is a terminal): done and
    /// total jobs, ETA, failed jobs. Job output is written with the bar taken off the
    /// screen. The bar is drawn only from the thread that called
    /// [`run_map`](crate::run_map), which may therefore hold the stderr lock.
    Bar,
    /// One line per finished job, written to the driver's stderr writer, such as
    /// `herd map: [3/10] ok 1.2s on h2: gzip -k 'a b.txt'` (done/total, `?` for a
    /// stream; status `ok`, `exit N`, `signal N` or `error: MESSAGE after 0.4s`;
    /// ` (attempt N)` after a retry), and one line per attempt that is retried.
    Lines,
    /// Nothing but the jobs' own output and the halt notices.
    Quiet,
}

impl Progress {
    /// The progress display for `--bar` (`bar`) and this process's stderr: the bar
    /// when stderr is a terminal, whether or not `--bar` asked for it; one line per
    /// finished job otherwise, with or without `--bar`, because a bar cannot be drawn
    /// into a file or pipe and the log of a non-interactive run should show progress.
    pub fn auto(bar: bool) -> Self {
        let _ = bar;
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Lines
        }
    }
}

/// When failures stop a run (`--halt`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Halt {
    /// Run every job whatever fails (`never`, the default).
    #[default]
    Never,
    /// After `fail` failed jobs start no more and let running jobs finish
    /// (`soon,fail=N`).
    Soon {
        /// Failed jobs that trigger the halt; at least 1.
        fail: u32,
    },
    /// After `fail` failed jobs start no more and kill running jobs, discarding their
    /// output (`now,fail=N`).
    Now {
        /// Failed jobs that trigger the halt; at least 1.
        fail: u32,
    },
}

impl Halt {
    /// The number of failures that halts the run, if any.
    pub fn fail_limit(self) -> Option<u32> {
        match self {
            Self::Never => None,
            Self::Soon { fail } | Self::Now { fail } => Some(fail),
        }
    }
}

impl FromStr for Halt {
    type Err = OptionError;

    /// Accepts `never`, `soon,fail=N`, `now,fail=N` (N ≥ 1), and GNU parallel's old
    /// numeric forms `0` (never), `1` (soon,fail=1) and `2` (now,fail=1).
    fn from_str(s: &str) -> Result<Self, OptionError> {
        let bad = || OptionError::Halt {
            value: s.to_owned(),
        };
        match s {
            "never" | "0" => return Ok(Self::Never),
            "1" => return Ok(Self::Soon { fail: 1 }),
            "2" => return Ok(Self::Now { fail: 1 }),
            _ => {}
        }
        let (when, cond) = s.split_once(',').ok_or_else(bad)?;
        let fail = cond
            .strip_prefix("fail=")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n >= 1)
            .ok_or_else(bad)?;
        match when {
            "soon" => Ok(Self::Soon { fail }),
            "now" => Ok(Self::Now { fail }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Never => f.write_str("never"),
            Self::Soon { fail } => write!(f, "soon,fail={fail}"),
            Self::Now { fail } => write!(f, "now,fail={fail}"),
        }
    }
}

/// A bad option value or combination.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// `--halt` got something it does not understand.
    #[error("invalid --halt value {value:?}: use never, soon,fail=N or now,fail=N (N at least 1)")]
    Halt {
        /// The value given.
        value: String,
    },
    /// `-j 0`.
    #[error("invalid -j value 0: at least one job must be able to run")]
    ZeroJobs,
    /// `--resume` without a job log to resume from.
    #[error("--resume needs --joblog FILE to know which jobs already ran")]
    ResumeWithoutJoblog,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halt_values_parse_and_print_back() {
        for (text, halt) in [
            ("never", Halt::Never),
            ("soon,fail=1", Halt::Soon { fail: 1 }),
            ("now,fail=3", Halt::Now { fail: 3 }),
        ] {
            assert_eq!(text.parse::<Halt>(), Ok(halt));
            assert_eq!(halt.to_string(), text);
        }
        assert_eq!("2".parse::<Halt>(), Ok(Halt::Now { fail: 1 }));
    }

    #[test]
    fn bad_halt_values_name_the_value() {
        for bad in [
            "sometimes",
            "now",
            "now,fail=0",
            "now,fail=x",
            "later,fail=1",
            "now,done=1",
            "soon,fail=10%",
        ] {
            let e = bad.parse::<Halt>().unwrap_err();
            assert_eq!(e, OptionError::Halt { value: bad.into() });
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{bad:?}")) && !msg.contains('\n'),
                "{msg}"
            );
        }
    }

    #[test]
    fn validation_refuses_zero_jobs_and_resume_without_log() {
        let mut o = MapOptions {
            jobs: 0,
            ..MapOptions::default()
        };
        assert_eq!(o.validate(), Err(OptionError::ZeroJobs));
        o.jobs = 2;
        o.resume = true;
        assert_eq!(o.validate(), Err(OptionError::ResumeWithoutJoblog));
        o.joblog = Some("log".into());
        assert_eq!(o.validate(), Ok(()));
    }
}
