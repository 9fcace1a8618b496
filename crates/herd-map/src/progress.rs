//! Progress on stderr: an indicatif bar, or one line per finished job.
//!
//! Lines look like `herd map: [3/10] ok 1.2s on h2: gzip -k 'a b.txt'`, where `3` is
//! the number of jobs finished so far and `10` the number this run will run (`?` when
//! the arguments come from a stream). The status is `ok`, `exit N`, `signal N` or
//! `error: MESSAGE`; `(attempt N)` follows the host when `--retries` re-ran the job.
//! While the bar is shown every write to the terminal happens with the bar suspended,
//! so job output and the bar never share a line. The bar is only ever drawn from the
//! thread that called [`run_map`](crate::run_map) (no ticker thread), so that thread
//! may hold the stderr lock, e.g. pass `&mut std::io::stderr().lock()` as its `err`.

use std::io::{self, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{JobError, JobResult, LocalRunner, Progress};

/// Prefix of every line this crate writes to stderr.
pub(crate) const PREFIX: &str = "herd map:";

/// What a finished (or retried) attempt looked like, for a progress line.
pub(crate) struct Attempt<'a> {
    pub result: &'a Result<JobResult, JobError>,
    pub runtime: Duration,
    pub attempt: u32,
    pub command: &'a str,
}

impl Attempt<'_> {
    /// `ok 1.2s on h2`, `exit 3 0.0s on h2 (attempt 2)`, `error: lost after 0.4s`.
    fn describe(&self) -> String {
        let secs = match self.result {
            Ok(r) => r.runtime.as_secs_f64(),
            Err(_) => self.runtime.as_secs_f64(),
        };
        let (status, host) = match self.result {
            Ok(r) if r.signal != 0 => (format!("signal {} {secs:.1}s", r.signal), Some(&r.host)),
            Ok(r) if r.exit != 0 => (format!("exit {} {secs:.1}s", r.exit), Some(&r.host)),
            Ok(r) => (format!("ok {secs:.1}s"), Some(&r.host)),
            Err(e) => (
                format!("error: {} after {secs:.1}s", e.message),
                e.host.as_ref(),
            ),
        };
        let mut text = status;
        if let Some(host) = host {
            let host = if host == LocalRunner::HOST {
                "local"
            } else {
                host
            };
            text.push_str(" on ");
            text.push_str(host);
        }
        if self.attempt > 1 {
            text.push_str(&format!(" (attempt {})", self.attempt));
        }
        text
    }
}

/// Shows progress in the chosen way.
pub(crate) struct Reporter {
    mode: Progress,
    bar: Option<ProgressBar>,
    total: Option<u64>,
    done: u64,
    failed: u64,
}

impl Reporter {
    /// A reporter for a run of `total` jobs, if known.
    pub fn new(mode: Progress, total: Option<u64>) -> Self {
        let bar = (mode == Progress::Bar).then(|| make_bar(total, ProgressDrawTarget::stderr()));
        Self {
            mode,
            bar,
            total,
            done: 0,
            failed: 0,
        }
    }

    /// Like [`new`](Self::new) with the bar drawn to `target` (for tests).
    #[cfg(test)]
    pub fn with_target(total: Option<u64>, target: ProgressDrawTarget) -> Self {
        Self {
            mode: Progress::Bar,
            bar: Some(make_bar(total, target)),
            total,
            done: 0,
            failed: 0,
        }
    }

    /// Runs `f` with the bar (if any) taken off the terminal.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// A job was skipped by `--resume`: it is not part of this run's total.
    pub fn skipped(&mut self) {
        if let Some(t) = &mut self.total {
            *t = t.saturating_sub(1);
        }
        if let (Some(bar), Some(t)) = (&self.bar, self.total) {
            bar.set_length(t);
        }
    }

    /// A job finished (its final attempt).
    pub fn finished(
        &mut self,
        err: &mut dyn Write,
        attempt: &Attempt<'_>,
        failed: bool,
    ) -> io::Result<()> {
        self.done += 1;
        if failed {
            self.failed += 1;
        }
        match self.mode {
            Progress::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("failed: {}", self.failed));
                    bar.inc(1);
                }
                Ok(())
            }
            Progress::Lines => {
                let total = self.total.map_or_else(|| "?".to_owned(), |t| t.to_string());
                let line = format!(
                    "{PREFIX} [{}/{total}] {}: {}\n",
                    self.done,
                    attempt.describe(),
                    one_line(attempt.command)
                );
                err.write_all(line.as_bytes())?;
                err.flush()
            }
            Progress::Quiet => Ok(()),
        }
    }

    /// An attempt failed and the job will run again.
    pub fn retrying(&self, err: &mut dyn Write, seq: u64, attempt: &Attempt<'_>) -> io::Result<()> {
        if self.mode != Progress::Lines {
            return Ok(());
        }
        let line = format!(
            "{PREFIX} [job {seq}] {}, running it again: {}\n",
            attempt.describe(),
            one_line(attempt.command)
        );
        err.write_all(line.as_bytes())?;
        err.flush()
    }

    /// A notice (halt, cancel) that is shown whatever the mode.
    pub fn notice(&self, err: &mut dyn Write, text: &str) -> io::Result<()> {
        self.suspend(|| {
            err.write_all(format!("{PREFIX} {text}\n").as_bytes())?;
            err.flush()
        })
    }

    /// Redraws the bar (elapsed time, spinner) while no job finishes.
    pub fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.tick();
        }
    }

    /// Leaves the final state of the bar on the terminal, on a line of its own (the
    /// bar is drawn without a newline: what the shell prints next would join it).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            if !bar.is_hidden() {
                eprintln!();
            }
        }
    }
}

fn make_bar(total: Option<u64>, target: ProgressDrawTarget) -> ProgressBar {
    let template = if total.is_some() {
        "{elapsed_precise} [{wide_bar}] {pos}/{len} ETA {eta} {msg}"
    } else {
        "{elapsed_precise} {spinner} {pos} done {msg}"
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(total, target).with_style(style);
    bar.set_message("failed: 0");
    bar
}

/// The command on one line: newlines shown as `\n`.
fn one_line(command: &str) -> String {
    command.replace('\n', "\\n")
}
