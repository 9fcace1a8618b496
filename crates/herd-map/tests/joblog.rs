//! `--joblog` in GNU parallel's format, and `--resume`, also across the two programs.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{FakeRunner, gnu_parallel, opts, result, run_group, strings};
use herd_map::joblog::HEADER;
use herd_map::{Cancel, Halt, JobRequest, LocalRunner, MapOptions};

/// Checks one log line field by field against GNU parallel's format and returns the
/// fields.
fn fields(line: &str) -> Vec<String> {
    let f: Vec<&str> = line.splitn(9, '\t').collect();
    assert_eq!(f.len(), 9, "{line:?}");
    assert!(f[0].parse::<u64>().is_ok(), "Seq {line:?}");
    let (secs, millis) = f[2].split_once('.').expect("Starttime has decimals");
    assert!(
        secs.len() >= 10 && secs.bytes().all(|b| b.is_ascii_digit()),
        "Starttime {line:?}"
    );
    assert!(
        millis.len() == 3 && millis.bytes().all(|b| b.is_ascii_digit()),
        "Starttime {line:?}"
    );
    // `%10.3f`: right-aligned in ten columns, three decimals.
    assert_eq!(f[3].len(), 10, "JobRuntime {line:?}");
    let runtime = f[3].trim_start();
    assert_eq!(
        runtime.split_once('.').map(|(_, d)| d.len()),
        Some(3),
        "JobRuntime {line:?}"
    );
    for (i, name) in [(4, "Send"), (5, "Receive"), (6, "Exitval"), (7, "Signal")] {
        assert!(f[i].parse::<i64>().is_ok(), "{name} {line:?}");
    }
    f.into_iter().map(str::to_owned).collect()
}

#[test]
fn job_log_has_gnu_parallels_header_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let options = MapOptions {
        joblog: Some(log.clone()),
        ..opts(1)
    };
    let r = run_group(
        &options,
        "echo {}; exit {#}",
        &["a", "b c", "d'e"],
        &LocalRunner,
    );
    assert_eq!(r.summary().exit_code, 3);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], HEADER);
    assert_eq!(
        HEADER,
        "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
    );
    assert_eq!(lines.len(), 4);
    let rows: Vec<Vec<String>> = lines[1..].iter().map(|l| fields(l)).collect();
    let commands = [
        "echo a; exit 1",
        "echo 'b c'; exit 2",
        "echo \"d'e\"; exit 3",
    ];
    for (i, row) in rows.iter().enumerate() {
        let seq = i + 1;
        assert_eq!(row[0], seq.to_string());
        assert_eq!(row[1], ":");
        assert_eq!(row[4], "0");
        assert_eq!(row[5], ["2", "4", "4"][i], "Receive counts stdout bytes");
        assert_eq!(row[6], seq.to_string());
        assert_eq!(row[7], "0");
        assert_eq!(row[8], commands[i]);
    }
}

#[test]
fn a_killed_job_logs_its_signal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let options = MapOptions {
        joblog: Some(log.clone()),
        ..opts(1)
    };
    run_group(&options, "kill -9 $$", &["a"], &LocalRunner);
    let text = std::fs::read_to_string(&log).unwrap();
    let row = fields(text.lines().nth(1).unwrap());
    assert_eq!((row[6].as_str(), row[7].as_str()), ("0", "9"));
}

/// A runner that fails the job whose argument is `fail` and records what ran.
fn recording(ran: Arc<Mutex<Vec<u64>>>) -> impl herd_map::Runner {
    FakeRunner(move |job: &JobRequest, _: &Cancel| {
        ran.lock().unwrap().push(job.seq);
        let exit = if job.args[0] == "fail" { 1 } else { 0 };
        Ok(result(exit, &format!("{}\n", job.args[0]), ""))
    })
}

#[test]
fn resume_skips_logged_jobs_and_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let args = ["a", "b", "fail", "d", "e"];
    let first = Arc::new(Mutex::new(Vec::new()));
    let options = MapOptions {
        joblog: Some(log.clone()),
        halt: Halt::Now { fail: 1 },
        ..opts(1)
    };
    let r = run_group(&options, "x", &args, &recording(first.clone()));
    assert_eq!(r.summary().exit_code, 1);
    assert_eq!(*first.lock().unwrap(), [1, 2, 3]);

    // GNU parallel's --resume skips every logged job, failed or not.
    let second = Arc::new(Mutex::new(Vec::new()));
    let options = MapOptions {
        joblog: Some(log.clone()),
        resume: true,
        ..opts(2)
    };
    let r = run_group(&options, "x", &args, &recording(second.clone()));
    let s = r.summary();
    assert_eq!(
        (s.skipped, s.succeeded, s.failed, s.exit_code),
        (3, 2, 0, 0)
    );
    let mut ran = second.lock().unwrap().clone();
    ran.sort();
    assert_eq!(ran, [4, 5]);
    // Progress counts only this run's jobs.
    assert!(r.err.contains("[2/2]"), "{}", r.err);

    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("Seq\t").count(), 1, "one header:\n{text}");
    let mut seqs: Vec<String> = text.lines().skip(1).map(|l| fields(l)[0].clone()).collect();
    seqs.sort();
    assert_eq!(seqs, strings(&["1", "2", "3", "4", "5"]));

    // Everything is logged now: a third run runs nothing.
    let third = Arc::new(Mutex::new(Vec::new()));
    let r = run_group(&options, "x", &args, &recording(third.clone()));
    assert_eq!(r.summary().skipped, 5);
    assert!(third.lock().unwrap().is_empty());
}

#[test]
fn without_resume_the_log_is_started_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    std::fs::write(&log, "old content\n").unwrap();
    let options = MapOptions {
        joblog: Some(log.clone()),
        ..opts(1)
    };
    run_group(&options, "x", &["a"], &recording(Arc::default()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with(&format!("{HEADER}\n1\th1\t")), "{text}");
    assert_eq!(text.lines().count(), 2);
}

#[test]
fn logs_resume_across_gnu_parallel_and_herd_map() {
    let Some(parallel) = gnu_parallel() else {
        eprintln!("GNU parallel is not installed: comparison skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // GNU parallel writes, we resume.
    let gnu_log = dir.path().join("gnu.log");
    let out = Command::new(parallel)
        .args(["--will-cite", "-j1", "--joblog"])
        .arg(&gnu_log)
        .args(["echo", ":::", "a", "b"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ran = Arc::new(Mutex::new(Vec::new()));
    let options = MapOptions {
        joblog: Some(gnu_log.clone()),
        resume: true,
        ..opts(1)
    };
    let r = run_group(&options, "echo", &["a", "b", "c"], &recording(ran.clone()));
    assert_eq!(r.summary().skipped, 2);
    assert_eq!(*ran.lock().unwrap(), [3]);
    let text = std::fs::read_to_string(&gnu_log).unwrap();
    for line in text.lines().skip(1) {
        fields(line);
    }

    // We write, GNU parallel resumes.
    let our_log = dir.path().join("ours.log");
    let options = MapOptions {
        joblog: Some(our_log.clone()),
        ..opts(1)
    };
    run_group(&options, "echo", &["a", "b"], &LocalRunner);
    let out = Command::new(parallel)
        .args(["--will-cite", "-j1", "--resume", "--joblog"])
        .arg(&our_log)
        .args(["echo", ":::", "a", "b", "c"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "c\n");
    let text = std::fs::read_to_string(&our_log).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().nth(3).unwrap().starts_with("3\t:\t"), "{text}");
}
