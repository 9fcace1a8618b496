//! Helpers shared by the integration tests: a fake runner and a one-call driver.

#![allow(dead_code)]

use std::io;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use herd_map::{
    Cancel, Captured, JobError, JobRequest, JobResult, MapError, MapOptions, MapSummary, Progress,
    Runner, Template, cartesian, run_map,
};

/// Owned strings from string slices.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Options for tests: `jobs` slots, progress lines, everything else default.
pub fn opts(jobs: usize) -> MapOptions {
    MapOptions {
        jobs,
        progress: Progress::Lines,
        ..MapOptions::default()
    }
}

/// What a run printed.
pub struct Ran {
    pub result: Result<MapSummary, MapError>,
    pub out: String,
    pub err: String,
}

impl Ran {
    pub fn summary(&self) -> &MapSummary {
        match &self.result {
            Ok(s) => s,
            Err(e) => panic!("run failed: {e}\nstderr:\n{}", self.err),
        }
    }
}

/// Runs `template` over one `:::` group.
pub fn run_group(opts: &MapOptions, template: &str, args: &[&str], runner: &dyn Runner) -> Ran {
    let rows = cartesian(vec![strings(args)]).map(Ok);
    run_rows(opts, template, rows, runner, &Cancel::new())
}

/// Runs `template` over any rows.
pub fn run_rows<I>(
    opts: &MapOptions,
    template: &str,
    rows: I,
    runner: &dyn Runner,
    cancel: &Cancel,
) -> Ran
where
    I: Iterator<Item = io::Result<Vec<String>>> + Send + 'static,
{
    let template = Template::from_text(template);
    let mut out = Vec::new();
    let mut err = Vec::new();
    let result = run_map(opts, &template, rows, runner, &mut out, &mut err, cancel);
    Ran {
        result,
        out: String::from_utf8(out).expect("stdout is UTF-8"),
        err: String::from_utf8(err).expect("stderr is UTF-8"),
    }
}

/// A runner that answers with a function of the request; never touches a process.
pub struct FakeRunner<F>(pub F);

impl<F> Runner for FakeRunner<F>
where
    F: Fn(&JobRequest, &Cancel) -> Result<JobResult, JobError> + Send + Sync,
{
    fn run(&self, job: &JobRequest, cancel: &Cancel) -> Result<JobResult, JobError> {
        (self.0)(job, cancel)
    }
}

/// A result as a fake host `h1` would send it.
pub fn result(exit: i32, stdout: &str, stderr: &str) -> JobResult {
    JobResult {
        host: "h1".into(),
        exit,
        signal: 0,
        stdout: Captured::from(stdout),
        stderr: Captured::from(stderr),
        start: SystemTime::now(),
        runtime: Duration::from_millis(1200),
        send: 0,
        receive: stdout.len() as u64,
    }
}

/// GNU parallel, if installed.
pub fn gnu_parallel() -> Option<&'static Path> {
    let p = Path::new("/usr/bin/parallel");
    let works = p.exists()
        && Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"GNU parallel"));
    works.then_some(p)
}

/// Runs `line` with `/bin/sh -c` and returns its stdout.
pub fn sh(line: &str) -> String {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(line)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sh -c {line:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
