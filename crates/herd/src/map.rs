//! `herd map`: the CLI's side. [`herd_map`] runs the batch; [`AgentRunner`] sends each
//! job through the local agent, which places it on the cluster (or runs it here) and
//! re-runs it elsewhere when its node is lost or evicts it.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use herd_agent::client::{self, Io, RunOptions};
use herd_agent::state::StateDir;
use herd_map::{Cancel, Captured, JobError, JobRequest, JobResult, MapOptions, Progress, Runner};
use herd_proto::{LocalRequest, LocalResponse};

/// Re-runs elsewhere of a job whose node is lost or evicts it (independent of
/// `--retries`, which re-runs failed jobs).
pub const LOST_RETRIES: u32 = 3;

/// Jobs handed to the agent at once per slot of the cluster, by default.
pub const IN_FLIGHT_PER_SLOT: usize = 4;
/// At most this many jobs in flight by default.
pub const MAX_IN_FLIGHT: usize = 256;

/// The `herd map` flags, parsed.
pub struct MapArgs {
    /// `-j`.
    pub jobs: Option<usize>,
    /// `--joblog`.
    pub joblog: Option<PathBuf>,
    /// `--resume`.
    pub resume: bool,
    /// `--retries`.
    pub retries: u32,
    /// `--halt`.
    pub halt: String,
    /// `--keep-order`.
    pub keep_order: bool,
    /// `--bar`.
    pub bar: bool,
    /// `--writes` and `[run] writable`.
    pub writes: Vec<PathBuf>,
    /// `--net`.
    pub net: herd_proto::NetMode,
    /// The template and the `:::` groups.
    pub words: Vec<String>,
}

/// Runs each job as `/bin/sh -c LINE` through the agent of a state directory.
pub struct AgentRunner {
    dir: StateDir,
    rt: tokio::runtime::Handle,
    hide: Vec<PathBuf>,
    writes: Vec<PathBuf>,
    net: herd_proto::NetMode,
}

impl Runner for AgentRunner {
    fn run(&self, job: &JobRequest, cancel: &Cancel) -> Result<JobResult, JobError> {
        let argv: Vec<OsString> = vec!["/bin/sh".into(), "-c".into(), job.command.clone().into()];
        let opts = RunOptions {
            tty: Some(false),
            retries: LOST_RETRIES,
            local_ok: true,
            hide: self.hide.clone(),
            writes: self.writes.clone(),
            net: self.net,
            ..RunOptions::default()
        };
        let spec = client::describe(&argv, &opts)
            .map_err(|e| JobError::new(format!("cannot describe the job: {e}")))?;
        let out =
            tempfile::tempfile().map_err(|e| JobError::new(format!("temporary file: {e}")))?;
        let err =
            tempfile::tempfile().map_err(|e| JobError::new(format!("temporary file: {e}")))?;
        let keep = |f: &std::fs::File| {
            f.try_clone()
                .map_err(|e| JobError::new(format!("temporary file: {e}")))
        };
        let (out2, err2) = (keep(&out)?, keep(&err)?);
        let flag = cancel.flag();
        let (start, t0) = (SystemTime::now(), Instant::now());
        let outcome = self.rt.block_on(async {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let watcher = tokio::spawn(async move {
                while !flag.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = tx.send(true);
                // Keep the sender until the job ends.
                std::future::pending::<()>().await;
            });
            let io = Io {
                stdin: false,
                stdout: Some(out2),
                stderr: Some(err2),
                signals: false,
                cancel: Some(rx),
            };
            let o = client::run_io(&self.dir, spec, io).await;
            watcher.abort();
            o
        });
        let host = outcome.node.clone().unwrap_or_default();
        if outcome.code == client::EXIT_HERD
            && let Some(e) = &outcome.error
        {
            let e = JobError::new(e);
            return Err(if host.is_empty() { e } else { e.on_host(host) });
        }
        let captured = |f: std::fs::File| {
            Captured::from_file(f).map_err(|e| JobError::new(format!("job output: {e}")))
        };
        Ok(JobResult {
            host,
            exit: outcome.code,
            signal: 0,
            stdout: captured(out)?,
            stderr: captured(err)?,
            start,
            runtime: t0.elapsed(),
            send: 0,
            receive: 0,
        })
    }
}

/// Splits `TEMPLATE... ::: A B ::: C D` into the template words and the groups.
fn split_groups(words: &[String]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut parts = words.split(|w| w == ":::");
    let template = parts.next().unwrap_or_default().to_vec();
    let groups: Vec<Vec<String>> = parts.map(|g| g.to_vec()).collect();
    (template, groups)
}

/// `herd map`.
pub fn map(dir: &StateDir, args: MapArgs) -> anyhow::Result<ExitCode> {
    let (template_words, groups) = split_groups(&args.words);
    if template_words.is_empty() {
        anyhow::bail!("herd map needs a command template, e.g. `herd map gzip ::: *.txt`");
    }
    let halt: herd_map::Halt = args.halt.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let jobs = match args.jobs {
        Some(j) => j,
        None => match rt.block_on(herd_agent::local::call(dir, &LocalRequest::Slots)) {
            // More jobs in flight than slots: the agent's placement then sees the
            // batch ahead and can give a slow node the jobs it would finish in time,
            // rather than only ever the next one (late binding).
            Ok(LocalResponse::Slots(n)) => {
                (n.max(1) as usize * IN_FLIGHT_PER_SLOT).min(MAX_IN_FLIGHT)
            }
            Ok(other) => anyhow::bail!("unexpected answer from the agent: {other:?}"),
            Err(e) => return Err(e.into()),
        },
    };
    let opts = MapOptions {
        jobs,
        joblog: args.joblog,
        resume: args.resume,
        retries: args.retries,
        halt,
        keep_order: args.keep_order,
        progress: Progress::auto(args.bar),
    };
    let template = herd_map::Template::parse(&template_words);
    let cancel = Cancel::new();
    let flag = cancel.flag();
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    let runner = AgentRunner {
        dir: dir.clone(),
        rt: rt.handle().clone(),
        hide: herd_agent::config::load_env()?.run.hide,
        writes: args.writes.clone(),
        net: args.net,
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    // Boxed, the rows keep their size hint (the progress bar's total).
    type Rows = Box<dyn Iterator<Item = std::io::Result<Vec<String>>> + Send>;
    let rows: Rows = if groups.is_empty() {
        if std::io::stdin().is_terminal() {
            eprintln!(
                "herd map: reading arguments from stdin, one per line (none given after :::)"
            );
        }
        Box::new(herd_map::lines(std::io::BufReader::new(std::io::stdin())))
    } else {
        Box::new(herd_map::cartesian(groups).map(Ok))
    };
    let summary = herd_map::run_map(
        &opts,
        &template,
        rows,
        &runner,
        &mut stdout.lock(),
        &mut stderr.lock(),
        &cancel,
    )?;
    rt.shutdown_timeout(Duration::from_millis(100));
    if summary.cancelled {
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::from(summary.exit_code.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups() {
        let w = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let (t, g) = split_groups(&w("gzip -k ::: a b ::: c"));
        assert_eq!(t, w("gzip -k"));
        assert_eq!(g, vec![w("a b"), w("c")]);
        let (t, g) = split_groups(&w("echo"));
        assert_eq!(t, w("echo"));
        assert!(g.is_empty());
    }
}
