//! [`run_map`]: runs every job through a [`Runner`], at most `-j` at once.
//!
//! Threads, not async: the runner is a blocking call, so each running job has a
//! thread of its own, and one more thread reads argument rows lazily (one row ahead of
//! need at most), so a long stream starts jobs before it ends. The calling thread does
//! everything else, one event at a time: it starts jobs, writes each finished job's
//! output whole (stdout to `out`, stderr to `err`, never mixed with another job's),
//! writes the job log, shows progress and applies `--halt`.
//!
//! * **Order.** Output is written as jobs finish, or with `--keep-order` in input
//!   order; finished later jobs then wait (their output stays in the runner's
//!   [`Captured`], usually a temporary file). At most `-j` + max(`-j`, 32) jobs,
//!   counted from the oldest one not yet written, are running or waiting, which
//!   bounds the files kept open.
//! * **Retries.** A failed attempt (non-zero exit, signal, or runner error) is run
//!   again, up to `--retries` more times; its output is dropped and only the last
//!   attempt counts.
//! * **Halt.** After `--halt …,fail=N` failures no job starts any more; `now` also
//!   cancels the running jobs, whose results are then discarded: not written, not
//!   logged (so `--resume` runs them again), not counted.
//! * **Cancel.** When the caller's [`Cancel`] is set the run stops as with
//!   `--halt now`, and [`MapSummary::cancelled`] says so.
//! * **Exit status.** The number of failed jobs, at most 101; 0 when all succeed.
//!   After a halt with `fail=1` it is the failed job's exit status (128 + signal when
//!   killed, 255 for a runner error); with `fail=N` for N > 1 it is the number of
//!   failures then, as GNU parallel does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, Scope};
use std::time::{Duration, Instant, SystemTime};

use crate::joblog::{JobLog, JobLogEntry, JobLogError};
use crate::options::{Halt, MapOptions, OptionError};
use crate::progress::{Attempt, Reporter};
use crate::template::{Template, TemplateError};
use crate::{Cancel, Captured, JobError, JobRequest, JobResult, Runner};

/// Exit status for more than 100 failed jobs (GNU parallel's cap).
pub const MAX_EXIT: i32 = 101;
/// Exit status of a job whose runner failed to run it, for `--halt …,fail=1`.
pub const RUNNER_ERROR_EXIT: i32 = 255;

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSummary {
    /// The exit status GNU parallel would give; see the [module docs](self).
    pub exit_code: i32,
    /// Jobs whose last attempt succeeded.
    pub succeeded: u64,
    /// Jobs whose last attempt failed.
    pub failed: u64,
    /// Jobs skipped because the job log already held them (`--resume`).
    pub skipped: u64,
    /// Jobs stopped by `--halt now` or a cancel: not logged, output discarded.
    pub killed: u64,
    /// Whether `--halt` stopped the run.
    pub halted: bool,
    /// Whether the caller's [`Cancel`] stopped the run; a CLI then exits with
    /// 128 + the signal rather than [`exit_code`](Self::exit_code).
    pub cancelled: bool,
}

/// Why a run could not be done as asked. Jobs failing is not an error: it is counted
/// in the [`MapSummary`].
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A bad option value or combination.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// The job log cannot be opened, read or written.
    #[error(transparent)]
    JobLog(#[from] JobLogError),
    /// Reading the argument rows failed; jobs already started were finished.
    #[error("cannot read arguments: {0}")]
    Input(#[source] io::Error),
    /// A job's command line cannot be made; jobs already started were finished.
    #[error("job {seq}: {source}")]
    Template {
        /// The job's sequence number.
        seq: u64,
        /// Why.
        source: TemplateError,
    },
    /// Writing job output failed (say, stdout was closed); running jobs were stopped.
    #[error("cannot write job output: {0}")]
    Output(#[source] io::Error),
}

/// Runs the jobs of `rows` (one row of arguments per job) through `runner`.
///
/// `rows` is read on a thread of its own, lazily; a read error stops the run. Output
/// goes to `out` and `err`, progress and notices to `err` (or the bar). See the
/// [module docs](self) for the rules; a job that fails is counted, not an error.
///
/// ```no_run
/// use herd_map::{Cancel, LocalRunner, MapOptions, Template, cartesian, run_map};
/// let template = Template::parse(&["gzip".into(), "-k".into()]);
/// let rows = cartesian(vec![vec!["a.txt".into(), "b c.txt".into()]]).map(Ok);
/// let summary = run_map(
///     &MapOptions::default(), &template, rows, &LocalRunner,
///     &mut std::io::stdout(), &mut std::io::stderr(), &Cancel::new(),
/// )?;
/// std::process::exit(summary.exit_code);
/// # Ok::<(), herd_map::MapError>(())
/// ```
pub fn run_map<I>(
    opts: &MapOptions,
    template: &Template,
    rows: I,
    runner: &dyn Runner,
    out: &mut dyn Write,
    err: &mut dyn Write,
    cancel: &Cancel,
) -> Result<MapSummary, MapError>
where
    I: Iterator<Item = io::Result<Vec<String>>> + Send + 'static,
{
    let reporter = |total| Reporter::new(opts.progress, total);
    run_with(opts, template, rows, runner, out, err, cancel, &reporter)
}

/// [`run_map`] with the progress reporter made by `reporter` from the total.
#[allow(clippy::too_many_arguments)]
fn run_with<I>(
    opts: &MapOptions,
    template: &Template,
    rows: I,
    runner: &dyn Runner,
    out: &mut dyn Write,
    err: &mut dyn Write,
    cancel: &Cancel,
    reporter: &dyn Fn(Option<u64>) -> Reporter,
) -> Result<MapSummary, MapError>
where
    I: Iterator<Item = io::Result<Vec<String>>> + Send + 'static,
{
    opts.validate()?;
    let (joblog, skip) = match (&opts.joblog, opts.resume) {
        (Some(path), true) => {
            let (log, done) = JobLog::resume(path)?;
            (Some(log), done)
        }
        (Some(path), false) => (Some(JobLog::create(path)?), HashSet::new()),
        (None, _) => (None, HashSet::new()),
    };
    let total = match rows.size_hint() {
        (low, Some(high)) if low == high => Some(low as u64),
        _ => None,
    };
    let reporter = reporter(total);
    let (events, inbox) = mpsc::channel();
    let want = spawn_reader(rows, events.clone());
    let mut driver = Driver::new(opts, template, out, err, reporter, joblog, skip);
    thread::scope(|scope| driver.run(scope, runner, cancel, &events, &inbox, &want));
    driver.end()
}

/// What the driver waits for.
enum Event {
    /// The next argument row; `None` at the end.
    Row(Option<io::Result<Vec<String>>>),
    /// An attempt failed and the job runs again.
    Retry(Box<Done>),
    /// A job's last attempt ended.
    Done(Box<Done>),
}

/// One attempt's outcome.
struct Done {
    job: JobRequest,
    result: Result<JobResult, JobError>,
    start: SystemTime,
    runtime: Duration,
}

impl Done {
    fn failed(&self) -> bool {
        self.result.as_ref().map_or(true, JobResult::failed)
    }

    fn attempt(&self) -> Attempt<'_> {
        Attempt {
            result: &self.result,
            runtime: self.runtime,
            attempt: self.job.attempt,
            command: &self.job.command,
        }
    }
}

/// Reads rows on demand: one `()` on `want` asks for one [`Event::Row`]. The thread is
/// not joined: a read that blocks forever (a terminal nobody types into) must not keep
/// `run_map` from returning; it ends when the read returns or the process exits.
fn spawn_reader<I>(mut rows: I, events: Sender<Event>) -> Sender<()>
where
    I: Iterator<Item = io::Result<Vec<String>>> + Send + 'static,
{
    let (want, wanted) = mpsc::channel::<()>();
    thread::spawn(move || {
        while wanted.recv().is_ok() {
            let row = rows.next();
            let last = !matches!(row, Some(Ok(_)));
            if events.send(Event::Row(row)).is_err() || last {
                break;
            }
        }
    });
    want
}

/// Runs one job, with its retries, on a thread of the scope.
fn spawn_job<'scope>(
    scope: &'scope Scope<'scope, '_>,
    runner: &'scope dyn Runner,
    mut job: JobRequest,
    retries: u32,
    cancel: Cancel,
    events: Sender<Event>,
) {
    scope.spawn(move || {
        loop {
            let start = SystemTime::now();
            let began = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| runner.run(&job, &cancel)))
                .unwrap_or_else(|_| Err(JobError::new("the job runner panicked")));
            let done = Done {
                job: job.clone(),
                result,
                start,
                runtime: began.elapsed(),
            };
            if done.failed() && job.attempt <= retries && !cancel.is_cancelled() {
                let _ = events.send(Event::Retry(Box::new(done)));
                job.attempt += 1;
                continue;
            }
            let _ = events.send(Event::Done(Box::new(done)));
            break;
        }
    });
}

/// How a run stops early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Start no more jobs; let running ones finish.
    Soon,
    /// Start no more jobs; cancel running ones and discard their results.
    Now,
}

/// A job started with `--keep-order`, in input order.
enum Slot {
    Running,
    Ready(Captured, Captured),
    Dropped,
}

struct Driver<'a> {
    opts: &'a MapOptions,
    template: &'a Template,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    reporter: Reporter,
    joblog: Option<JobLog>,
    skip: HashSet<u64>,
    /// Given to the runners; set on `--halt now`, cancel and fatal errors.
    jobs_cancel: Cancel,
    /// Slots given back, lowest first; slots above `fresh_slot` were never used.
    free_slots: BinaryHeap<Reverse<usize>>,
    fresh_slot: usize,
    running: usize,
    last_seq: u64,
    /// `--keep-order` only: started jobs not yet written, in input order.
    order: VecDeque<(u64, Slot)>,
    stop: Option<Stop>,
    error: Option<MapError>,
    output_broken: bool,
    halt_exit: Option<i32>,
    summary: MapSummary,
}

impl<'a> Driver<'a> {
    fn new(
        opts: &'a MapOptions,
        template: &'a Template,
        out: &'a mut dyn Write,
        err: &'a mut dyn Write,
        reporter: Reporter,
        joblog: Option<JobLog>,
        skip: HashSet<u64>,
    ) -> Self {
        Self {
            opts,
            template,
            out,
            err,
            reporter,
            joblog,
            skip,
            jobs_cancel: Cancel::new(),
            free_slots: BinaryHeap::new(),
            fresh_slot: 0,
            running: 0,
            last_seq: 0,
            order: VecDeque::new(),
            stop: None,
            error: None,
            output_broken: false,
            halt_exit: None,
            summary: MapSummary::default(),
        }
    }

    fn run<'scope>(
        &mut self,
        scope: &'scope Scope<'scope, '_>,
        runner: &'scope dyn Runner,
        cancel: &Cancel,
        events: &Sender<Event>,
        inbox: &Receiver<Event>,
        want: &Sender<()>,
    ) {
        let mut input_done = false;
        let mut asked = false;
        loop {
            if !self.summary.cancelled && cancel.is_cancelled() {
                self.summary.cancelled = true;
                let text = format!("cancelled; stopping {} running job(s)", self.running);
                self.stop_with(Stop::Now, &text);
            }
            if self.stop.is_none() && !input_done && !asked && self.can_start() {
                asked = want.send(()).is_ok();
                input_done = !asked;
            }
            if self.running == 0 && (input_done || self.stop.is_some()) {
                break;
            }
            let Ok(event) = inbox.recv_timeout(Cancel::POLL) else {
                self.reporter.tick();
                continue;
            };
            match event {
                Event::Row(row) => {
                    asked = false;
                    match row {
                        None => input_done = true,
                        Some(Err(e)) => {
                            input_done = true;
                            self.fail(MapError::Input(e), Stop::Soon);
                        }
                        Some(Ok(args)) if self.stop.is_none() => {
                            self.start(scope, runner, args, events);
                        }
                        Some(Ok(_)) => {}
                    }
                }
                Event::Retry(done) => {
                    if self.stop != Some(Stop::Now) {
                        let r = self
                            .reporter
                            .retrying(self.err, done.job.seq, &done.attempt());
                        self.check_output(r);
                    }
                }
                Event::Done(done) => self.finished(*done),
            }
        }
    }

    /// Whether a job may start now: a slot is free and, with `--keep-order`, not too
    /// many jobs wait to be written.
    fn can_start(&self) -> bool {
        let jobs = self.opts.jobs;
        self.running < jobs
            && (!self.opts.keep_order || self.order.len() < jobs.saturating_add(jobs.max(32)))
    }

    fn start<'scope>(
        &mut self,
        scope: &'scope Scope<'scope, '_>,
        runner: &'scope dyn Runner,
        args: Vec<String>,
        events: &Sender<Event>,
    ) {
        self.last_seq += 1;
        let seq = self.last_seq;
        if self.skip.contains(&seq) {
            self.summary.skipped += 1;
            self.reporter.skipped();
            return;
        }
        let slot = match self.free_slots.pop() {
            Some(Reverse(slot)) => slot,
            None => {
                self.fresh_slot += 1;
                self.fresh_slot
            }
        };
        let command = match self.template.render(&args, seq, slot) {
            Ok(c) => c,
            Err(source) => {
                self.free_slots.push(Reverse(slot));
                self.fail(MapError::Template { seq, source }, Stop::Soon);
                return;
            }
        };
        self.running += 1;
        if self.opts.keep_order {
            self.order.push_back((seq, Slot::Running));
        }
        let job = JobRequest {
            seq,
            slot,
            attempt: 1,
            command,
            args,
        };
        let cancel = self.jobs_cancel.clone();
        spawn_job(
            scope,
            runner,
            job,
            self.opts.retries,
            cancel,
            events.clone(),
        );
    }

    fn finished(&mut self, done: Done) {
        self.running -= 1;
        self.free_slots.push(Reverse(done.job.slot));
        let seq = done.job.seq;
        if self.stop == Some(Stop::Now) {
            self.summary.killed += 1;
            self.set_slot(seq, Slot::Dropped);
            self.write_ready();
            return;
        }
        let failed = done.failed();
        if failed {
            self.summary.failed += 1;
        } else {
            self.summary.succeeded += 1;
        }
        self.log(&done);
        let r = self.reporter.finished(self.err, &done.attempt(), failed);
        self.check_output(r);
        let status = match &done.result {
            Ok(r) if r.exit != 0 => r.exit,
            Ok(r) if r.signal != 0 => 128 + r.signal,
            Ok(_) => 0,
            Err(_) => RUNNER_ERROR_EXIT,
        };
        let (stdout, stderr) = match done.result {
            Ok(r) => (r.stdout, r.stderr),
            Err(_) => (Captured::empty(), Captured::empty()),
        };
        if self.opts.keep_order {
            self.set_slot(seq, Slot::Ready(stdout, stderr));
            self.write_ready();
        } else {
            self.write_output(stdout, stderr);
        }
        if failed {
            self.check_halt(status, &done.job.command);
        }
    }

    fn log(&mut self, done: &Done) {
        let Some(log) = &mut self.joblog else { return };
        let entry = match &done.result {
            Ok(r) => JobLogEntry {
                seq: done.job.seq,
                host: r.host.clone(),
                start: r.start,
                runtime: r.runtime,
                send: r.send,
                receive: r.receive,
                exit: r.exit,
                signal: r.signal,
                command: done.job.command.clone(),
            },
            Err(e) => JobLogEntry {
                seq: done.job.seq,
                host: e.host.clone().unwrap_or_else(|| "-".to_owned()),
                start: done.start,
                runtime: done.runtime,
                send: 0,
                receive: 0,
                exit: RUNNER_ERROR_EXIT,
                signal: 0,
                command: done.job.command.clone(),
            },
        };
        if let Err(e) = log.write(&entry) {
            self.fail(MapError::JobLog(e), Stop::Now);
        }
    }

    fn check_halt(&mut self, status: i32, command: &str) {
        let Some(limit) = self.opts.halt.fail_limit() else {
            return;
        };
        if self.halt_exit.is_some() || self.summary.failed < u64::from(limit) {
            return;
        }
        self.halt_exit = Some(if limit == 1 {
            status
        } else {
            capped(self.summary.failed)
        });
        self.summary.halted = true;
        let (stop, then) = match self.opts.halt {
            Halt::Now { .. } => (Stop::Now, "stopping"),
            _ => (Stop::Soon, "waiting for"),
        };
        let text = format!(
            "halting after {} failed job(s) (--halt {}), the last: {}; starting no more jobs, {then} {} running job(s)",
            self.summary.failed,
            self.opts.halt,
            command.replace('\n', "\\n"),
            self.running,
        );
        self.stop_with(stop, &text);
    }

    /// Records the first fatal error and stops.
    fn fail(&mut self, error: MapError, stop: Stop) {
        let text = format!("{error}; starting no more jobs");
        if self.error.is_none() {
            self.error = Some(error);
        }
        self.stop_with(stop, &text);
    }

    fn stop_with(&mut self, stop: Stop, text: &str) {
        if self.stop == Some(Stop::Now) || self.stop == Some(stop) {
            return;
        }
        self.stop = Some(stop);
        if stop == Stop::Now {
            self.jobs_cancel.cancel();
        }
        if !self.output_broken {
            let r = self.reporter.notice(self.err, text);
            self.check_output(r);
        }
    }

    fn set_slot(&mut self, seq: u64, slot: Slot) {
        if let Ok(i) = self.order.binary_search_by_key(&seq, |(s, _)| *s) {
            self.order[i].1 = slot;
        }
    }

    /// `--keep-order`: writes the finished jobs at the front of the queue.
    fn write_ready(&mut self) {
        while let Some((_, slot)) = self.order.front() {
            if matches!(slot, Slot::Running) {
                break;
            }
            if let Some((_, Slot::Ready(stdout, stderr))) = self.order.pop_front() {
                self.write_output(stdout, stderr);
            }
        }
    }

    fn write_output(&mut self, mut stdout: Captured, mut stderr: Captured) {
        if self.output_broken || (stdout.is_empty() && stderr.is_empty()) {
            return;
        }
        let (out, err) = (&mut *self.out, &mut *self.err);
        let r = self.reporter.suspend(|| -> io::Result<()> {
            stdout.write_to(out)?;
            out.flush()?;
            stderr.write_to(err)?;
            err.flush()
        });
        self.check_output(r);
    }

    fn check_output(&mut self, r: io::Result<()>) {
        if let Err(e) = r
            && !self.output_broken
        {
            self.output_broken = true;
            self.fail(MapError::Output(e), Stop::Now);
        }
    }

    fn end(mut self) -> Result<MapSummary, MapError> {
        self.write_ready();
        self.reporter.finish();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.summary.exit_code = self
            .halt_exit
            .unwrap_or_else(|| capped(self.summary.failed));
        Ok(self.summary)
    }
}

fn capped(failed: u64) -> i32 {
    i32::try_from(failed.min(MAX_EXIT as u64)).unwrap_or(MAX_EXIT)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::{ProgressDrawTarget, TermLike};

    use super::*;
    use crate::{LocalRunner, cartesian};

    /// A terminal that remembers whether the bar is on screen, shared with the output
    /// writers, which fail a write made while it is.
    #[derive(Clone, Debug, Default)]
    struct Screen(Arc<Mutex<ScreenState>>);

    #[derive(Debug, Default)]
    struct ScreenState {
        bar_shown: bool,
        bar_draws: usize,
        writes: usize,
        writes_over_bar: usize,
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            if !s.is_empty() {
                let mut st = self.0.lock().unwrap();
                st.bar_shown = true;
                st.bar_draws += 1;
            }
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            self.0.lock().unwrap().bar_shown = false;
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Write for Screen {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut st = self.0.lock().unwrap();
            st.writes += 1;
            if st.bar_shown {
                st.writes_over_bar += 1;
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn job_output_is_written_with_the_bar_off_screen() {
        let screen = Screen::default();
        let target = screen.clone();
        let reporter = move |total| {
            Reporter::with_target(
                total,
                ProgressDrawTarget::term_like_with_hz(Box::new(target.clone()), 200),
            )
        };
        let opts = MapOptions {
            jobs: 2,
            ..MapOptions::default()
        };
        let template = Template::from_text("echo {}; echo {} >&2; sleep 0.01");
        let rows = cartesian(vec![(0..20).map(|i| i.to_string()).collect()]).map(Ok);
        let (mut out, mut err) = (screen.clone(), screen.clone());
        let summary = run_with(
            &opts,
            &template,
            rows,
            &LocalRunner,
            &mut out,
            &mut err,
            &Cancel::new(),
            &reporter,
        )
        .unwrap();
        assert_eq!(summary.succeeded, 20);
        let st = screen.0.lock().unwrap();
        assert!(st.bar_draws > 1, "the bar was never drawn");
        assert!(st.writes >= 40, "{} writes", st.writes);
        assert_eq!(st.writes_over_bar, 0, "output written over the bar");
    }
}
