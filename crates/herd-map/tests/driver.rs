//! The driver: output grouping and order, halt, retries, exit status, progress lines,
//! cancellation, lazy input, and its error cases.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{FakeRunner, opts, result, run_group, run_rows, strings};
use herd_map::{
    Cancel, Halt, JobError, JobRequest, LocalRunner, MapError, MapOptions, Progress, Template,
    cartesian, lines, run_map,
};

/// Lines that are not this crate's own progress or notice lines.
fn job_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("herd map:"))
        .collect()
}

#[test]
fn outputs_of_concurrent_jobs_never_interleave() {
    let names: Vec<String> = (1..=12).map(|i| format!("job{i:02}")).collect();
    let args: Vec<&str> = names.iter().map(String::as_str).collect();
    let template = "for i in 1 2 3 4 5; do echo {} out $i; echo {} err $i >&2; sleep 0.02; done";
    let ran = run_group(&opts(4), template, &args, &LocalRunner);
    assert_eq!(ran.summary().succeeded, 12);
    for (text, stream) in [(ran.out.as_str(), "out"), (ran.err.as_str(), "err")] {
        let lines = job_lines(text);
        assert_eq!(lines.len(), 60, "{stream}:\n{text}");
        let mut seen = HashSet::new();
        for block in lines.chunks(5) {
            let job = block[0].split(' ').next().unwrap();
            let want: Vec<String> = (1..=5).map(|i| format!("{job} {stream} {i}")).collect();
            assert_eq!(block, want, "{stream} of {job} is not whole:\n{text}");
            assert!(seen.insert(job.to_owned()), "{job} twice");
        }
        assert_eq!(seen.len(), 12);
    }
}

/// A writer whose content a runner can watch.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `slow b c` with -j 3 where `slow` finishes only once `b` and `c` were reported
/// finished (their progress lines written), so the driver has them before `slow`.
fn slow_first(keep_order: bool) -> String {
    let err = Shared::default();
    let watch = err.clone();
    let runner = FakeRunner(move |job: &JobRequest, _: &Cancel| {
        let arg = &job.args[0];
        if arg == "slow" {
            while !(watch.text().contains(": echo b\n") && watch.text().contains(": echo c\n")) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(result(0, &format!("{arg}\n"), ""))
    });
    let options = MapOptions {
        keep_order,
        ..opts(3)
    };
    let template = Template::from_text("echo");
    let rows = cartesian(vec![strings(&["slow", "b", "c"])]).map(Ok);
    let mut out = Vec::new();
    let summary = run_map(
        &options,
        &template,
        rows,
        &runner,
        &mut out,
        &mut err.clone(),
        &Cancel::new(),
    )
    .unwrap();
    assert_eq!(summary.succeeded, 3);
    String::from_utf8(out).unwrap()
}

#[test]
fn output_comes_as_jobs_finish_without_keep_order() {
    let out = slow_first(false);
    assert!(out == "b\nc\nslow\n" || out == "c\nb\nslow\n", "{out:?}");
}

#[test]
fn keep_order_writes_in_input_order() {
    assert_eq!(slow_first(true), "slow\nb\nc\n");
}

#[test]
fn keep_order_with_real_processes() {
    let args: Vec<String> = (1..=8).map(|i| i.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let options = MapOptions {
        keep_order: true,
        ..opts(4)
    };
    let ran = run_group(
        &options,
        "sleep 0.0$((9 - {})); echo {}",
        &args,
        &LocalRunner,
    );
    assert_eq!(ran.out, "1\n2\n3\n4\n5\n6\n7\n8\n");
}

/// A runner whose job exits with the status given as its argument and prints it;
/// records which arguments ran.
fn exit_runner(ran: Arc<Mutex<Vec<String>>>) -> impl herd_map::Runner {
    FakeRunner(move |job: &JobRequest, _: &Cancel| {
        let arg = job.args[0].clone();
        ran.lock().unwrap().push(arg.clone());
        let code: i32 = arg.parse().unwrap();
        Ok(result(code, &format!("out {arg}\n"), ""))
    })
}

#[test]
fn halt_now_at_the_first_failure_exits_with_its_status() {
    let ran = Arc::new(Mutex::new(Vec::new()));
    let options = MapOptions {
        halt: Halt::Now { fail: 1 },
        ..opts(1)
    };
    let r = run_group(
        &options,
        "exit",
        &["0", "3", "5"],
        &exit_runner(ran.clone()),
    );
    let s = r.summary();
    assert_eq!(s.exit_code, 3);
    assert!(s.halted);
    assert_eq!((s.succeeded, s.failed), (1, 1));
    assert_eq!(*ran.lock().unwrap(), strings(&["0", "3"]));
    assert_eq!(r.out, "out 0\nout 3\n");
    assert!(
        r.err
            .contains("herd map: halting after 1 failed job(s) (--halt now,fail=1)"),
        "{}",
        r.err
    );
}

#[test]
fn halt_soon_with_several_failures_exits_with_their_number() {
    // GNU parallel: `--halt soon,fail=2 'exit {}' ::: 0 3 5 7 9` exits 2.
    let ran = Arc::new(Mutex::new(Vec::new()));
    let options = MapOptions {
        halt: Halt::Soon { fail: 2 },
        ..opts(1)
    };
    let r = run_group(
        &options,
        "exit",
        &["0", "3", "5", "7", "9"],
        &exit_runner(ran.clone()),
    );
    assert_eq!(r.summary().exit_code, 2);
    assert_eq!(*ran.lock().unwrap(), strings(&["0", "3", "5"]));
}

#[test]
fn halt_soon_lets_running_jobs_finish_and_halt_now_kills_them() {
    for halt in [Halt::Soon { fail: 1 }, Halt::Now { fail: 1 }] {
        let now = matches!(halt, Halt::Now { .. });
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let out = Shared::default();
        let watch = out.clone();
        let started = Arc::new(AtomicUsize::new(0));
        let s2 = started.clone();
        let runner =
            FakeRunner(
                move |job: &JobRequest, cancel: &Cancel| match job.args[0].as_str() {
                    "long" => {
                        s2.store(1, Ordering::SeqCst);
                        if now {
                            // Runs until the halt cancels it.
                            assert!(
                                cancel.wait_timeout(Duration::from_secs(600)),
                                "long was never cancelled"
                            );
                            let mut r = result(0, "long killed\n", "");
                            r.signal = 15;
                            return Ok(r);
                        }
                        // Finishes on its own once the failure was reported; never cancelled.
                        while !watch.text().contains("fail out") {
                            assert!(
                                !cancel.wait_timeout(Duration::from_millis(1)),
                                "soon cancelled a job"
                            );
                        }
                        Ok(result(0, "long done\n", ""))
                    }
                    "fail" => {
                        while s2.load(Ordering::SeqCst) == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Ok(result(4, "fail out\n", ""))
                    }
                    _ => Ok(result(0, "never\n", "")),
                },
            );
        let options = MapOptions {
            halt,
            joblog: Some(log.clone()),
            ..opts(2)
        };
        let template = Template::from_text("x");
        let rows = cartesian(vec![strings(&["long", "fail", "third"])]).map(Ok);
        let mut writer = out.clone();
        let s = run_map(
            &options,
            &template,
            rows,
            &runner,
            &mut writer,
            &mut io::sink(),
            &Cancel::new(),
        )
        .unwrap();
        let out = out.text();
        assert_eq!(s.exit_code, 4, "{halt}");
        assert!(s.halted);
        assert!(
            !out.contains("never"),
            "{halt}: a job started after the halt"
        );
        let logged = std::fs::read_to_string(&log).unwrap();
        if now {
            assert_eq!(out, "fail out\n", "output of a killed job");
            assert_eq!((s.killed, s.failed, s.succeeded), (1, 1, 0));
            assert_eq!(
                logged.lines().count(),
                2,
                "a killed job was logged: {logged}"
            );
            assert!(
                logged.lines().nth(1).unwrap().starts_with("2\th1\t"),
                "{logged}"
            );
        } else {
            assert_eq!(out, "fail out\nlong done\n");
            assert_eq!((s.killed, s.failed, s.succeeded), (0, 1, 1));
            assert_eq!(logged.lines().count(), 3, "{logged}");
        }
    }
}

#[test]
fn retries_rerun_failures_and_count_only_the_last_attempt() {
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = attempts.clone();
    let runner = FakeRunner(move |job: &JobRequest, _: &Cancel| {
        let arg = job.args[0].clone();
        let n = {
            let mut a = seen.lock().unwrap();
            let n = a.entry(arg.clone()).or_default();
            *n += 1;
            *n
        };
        assert_eq!(job.attempt, n, "attempt number of {arg}");
        let out = format!("{arg} attempt {n}\n");
        match arg.as_str() {
            "flaky" if n <= 2 => Ok(result(1, &out, "")),
            "lost" if n == 1 => Err(JobError::new("host lost").on_host("h2")),
            "bad" => Ok(result(7, &out, "")),
            _ => Ok(result(0, &out, "")),
        }
    });
    let options = MapOptions {
        retries: 2,
        ..opts(2)
    };
    let r = run_group(&options, "x", &["good", "flaky", "lost", "bad"], &runner);
    let s = r.summary();
    assert_eq!((s.succeeded, s.failed, s.exit_code), (3, 1, 1));
    let a = attempts.lock().unwrap();
    assert_eq!((a["good"], a["flaky"], a["lost"], a["bad"]), (1, 3, 2, 3));
    let mut out: Vec<&str> = r.out.lines().collect();
    out.sort();
    assert_eq!(
        out,
        [
            "bad attempt 3",
            "flaky attempt 3",
            "good attempt 1",
            "lost attempt 2"
        ]
    );
    assert!(
        r.err
            .contains("herd map: [job 2] exit 1 1.2s on h1, running it again: x flaky"),
        "{}",
        r.err
    );
    assert!(
        r.err.contains("herd map: [job 3] error: host lost after "),
        "{}",
        r.err
    );
    assert!(
        r.err.contains("ok 1.2s on h1 (attempt 3): x flaky"),
        "{}",
        r.err
    );
}

#[test]
fn exit_status_is_the_number_of_failures_capped_at_101() {
    let fail_all = FakeRunner(|_: &JobRequest, _: &Cancel| Ok(result(1, "", "")));
    let many: Vec<String> = (0..150).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let quiet = MapOptions {
        progress: Progress::Quiet,
        ..opts(8)
    };
    let r = run_group(&quiet, "exit 1", &many, &fail_all);
    assert_eq!((r.summary().failed, r.summary().exit_code), (150, 101));
    assert_eq!(r.err, "");

    let r = run_group(&quiet, "exit 1", &many[..7], &fail_all);
    assert_eq!(r.summary().exit_code, 7);

    let ok = FakeRunner(|_: &JobRequest, _: &Cancel| Ok(result(0, "", "")));
    let r = run_group(&quiet, "true", &many, &ok);
    assert_eq!((r.summary().succeeded, r.summary().exit_code), (150, 0));
}

#[test]
fn progress_lines_name_status_runtime_host_and_command() {
    let runner = FakeRunner(|job: &JobRequest, _: &Cancel| match job.args[0].as_str() {
        "lost" => Err(JobError::new("host lost").on_host("h2")),
        "nowhere" => Err(JobError::new("no host available")),
        "killed" => {
            let mut r = result(0, "", "");
            r.signal = 9;
            Ok(r)
        }
        "three" => Ok(result(3, "", "")),
        _ => Ok(result(0, "", "")),
    });
    let r = run_group(
        &opts(1),
        "gzip -k",
        &["a b.txt", "three", "killed", "lost", "nowhere"],
        &runner,
    );
    let lines: Vec<&str> = r.err.lines().collect();
    assert_eq!(lines.len(), 5, "{}", r.err);
    assert_eq!(lines[0], "herd map: [1/5] ok 1.2s on h1: gzip -k 'a b.txt'");
    assert_eq!(lines[1], "herd map: [2/5] exit 3 1.2s on h1: gzip -k three");
    assert_eq!(
        lines[2],
        "herd map: [3/5] signal 9 1.2s on h1: gzip -k killed"
    );
    assert!(
        lines[3].starts_with("herd map: [4/5] error: host lost after ")
            && lines[3].ends_with("s on h2: gzip -k lost"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].starts_with("herd map: [5/5] error: no host available after ")
            && lines[4].ends_with("s: gzip -k nowhere"),
        "{}",
        lines[4]
    );
    assert_eq!(r.summary().exit_code, 4);
}

#[test]
fn progress_lines_of_local_jobs_and_streams() {
    let rows = lines(io::Cursor::new("a\nb\n"));
    let r = run_rows(
        &opts(1),
        "kill -9 $$; echo",
        rows,
        &LocalRunner,
        &Cancel::new(),
    );
    let lines: Vec<&str> = r.err.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.err);
    assert!(
        lines[0].starts_with("herd map: [1/?] signal 9 ")
            && lines[0].ends_with("s on local: kill -9 $$; echo a"),
        "{}",
        lines[0]
    );
    assert_eq!(r.summary().failed, 2);
}

#[test]
fn quiet_and_bar_modes_write_no_progress_lines() {
    let runner = FakeRunner(|job: &JobRequest, _: &Cancel| {
        Ok(result(0, &format!("{}\n", job.args[0]), "e\n"))
    });
    for progress in [Progress::Quiet, Progress::Bar] {
        let options = MapOptions {
            progress,
            ..opts(1)
        };
        let r = run_group(&options, "x", &["a", "b"], &runner);
        assert_eq!(r.out, "a\nb\n");
        assert_eq!(r.err, "e\ne\n", "{progress:?}");
    }
}

#[test]
fn job_slots_are_unique_among_running_jobs() {
    let active: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let max = Arc::new(AtomicUsize::new(0));
    let (a, m) = (active.clone(), max.clone());
    let runner = FakeRunner(move |job: &JobRequest, _: &Cancel| {
        assert!((1..=3).contains(&job.slot), "slot {}", job.slot);
        {
            let mut set = a.lock().unwrap();
            assert!(set.insert(job.slot), "slot {} used twice", job.slot);
            m.fetch_max(set.len(), Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(2));
        a.lock().unwrap().remove(&job.slot);
        Ok(result(0, &format!("{}\n", job.command), ""))
    });
    let args: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_group(&opts(3), "echo {#} {%}", &args, &runner);
    assert_eq!(r.summary().succeeded, 30);
    assert!(max.load(Ordering::SeqCst) <= 3);
    // `{#}` follows input order: job N got argument N - 1.
    let mut seqs: Vec<u64> = r
        .out
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
}

#[test]
fn stdin_rows_are_consumed_lazily() {
    // The second row is only sent once the first job ran: a driver that read all
    // input before starting would wait for ever (the test fails after a minute).
    let (row_tx, row_rx) = mpsc::channel::<String>();
    let (ran_tx, ran_rx) = mpsc::channel::<String>();
    let ran_tx = Mutex::new(ran_tx);
    let rows = row_rx.into_iter().map(|line| Ok(vec![line]));
    let runner = FakeRunner(move |job: &JobRequest, _: &Cancel| {
        ran_tx.lock().unwrap().send(job.command.clone()).unwrap();
        Ok(result(0, "", ""))
    });
    let feeder = std::thread::spawn(move || {
        row_tx.send("first".into()).unwrap();
        let got = ran_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("first job ran before input ended");
        row_tx.send("second".into()).unwrap();
        drop(row_tx);
        (got, ran_rx.recv_timeout(Duration::from_secs(60)).unwrap())
    });
    let r = run_rows(&opts(2), "echo {#} {}", rows, &runner, &Cancel::new());
    assert_eq!(r.summary().succeeded, 2);
    assert_eq!(
        feeder.join().unwrap(),
        ("echo 1 first".into(), "echo 2 second".into())
    );
}

#[test]
fn cancel_stops_starting_jobs_and_stops_running_ones() {
    let cancel = Cancel::new();
    let user = cancel.clone();
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let runner = FakeRunner(move |job: &JobRequest, c: &Cancel| {
        s.fetch_add(1, Ordering::SeqCst);
        if job.seq == 2 {
            user.cancel();
        }
        // Every job runs until cancelled.
        assert!(
            c.wait_timeout(Duration::from_secs(600)),
            "job {} never cancelled",
            job.seq
        );
        Ok(result(0, "late\n", ""))
    });
    let args: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let rows = cartesian(vec![args]).map(Ok);
    let r = run_rows(&opts(2), "x", rows, &runner, &cancel);
    let s = r.summary();
    assert!(s.cancelled);
    assert_eq!(started.load(Ordering::SeqCst), 2);
    assert_eq!((s.killed, s.succeeded, s.failed), (2, 0, 0));
    assert_eq!(r.out, "");
    assert!(
        r.err
            .contains("herd map: cancelled; stopping 2 running job(s)"),
        "{}",
        r.err
    );
}

#[test]
fn a_cancelled_local_job_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let cancel = Cancel::new();
    let c = cancel.clone();
    let m = marker.clone();
    let killer = std::thread::spawn(move || {
        while !m.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        c.cancel();
    });
    let template = format!("touch {}; sleep", marker.display());
    let rows = cartesian(vec![strings(&["600"])]).map(Ok);
    let r = run_rows(&opts(1), &template, rows, &LocalRunner, &cancel);
    killer.join().unwrap();
    assert!(r.summary().cancelled);
    assert_eq!((r.summary().killed, r.summary().failed), (1, 0));
}

#[test]
fn local_runner_reports_the_kill_signal() {
    let cancel = Cancel::new();
    cancel.cancel();
    let job = JobRequest {
        seq: 1,
        slot: 1,
        attempt: 1,
        command: "sleep 600".into(),
        args: vec![],
    };
    let r = herd_map::Runner::run(&LocalRunner, &job, &cancel).unwrap();
    assert_eq!((r.exit, r.signal), (0, 15));
    assert!(r.failed());
}

#[test]
fn a_runner_panic_is_a_failed_job() {
    let runner = FakeRunner(|job: &JobRequest, _: &Cancel| {
        if job.seq == 1 {
            panic!("fake runner bug");
        }
        Ok(result(0, "fine\n", ""))
    });
    let r = run_group(&opts(1), "x", &["a", "b"], &runner);
    assert_eq!((r.summary().failed, r.summary().succeeded), (1, 1));
    assert!(
        r.err.contains("error: the job runner panicked"),
        "{}",
        r.err
    );
}

#[test]
fn bad_input_stops_the_run_with_an_error_after_running_jobs_finish() {
    let runner =
        FakeRunner(|job: &JobRequest, _: &Cancel| Ok(result(0, &format!("{}\n", job.args[0]), "")));
    let rows = lines(io::Cursor::new(b"a\n\xff\nc\n".to_vec()));
    let r = run_rows(&opts(1), "x", rows, &runner, &Cancel::new());
    assert_eq!(r.out, "a\n");
    let e = r.result.unwrap_err();
    assert!(matches!(e, MapError::Input(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "cannot read arguments: input line 2 is not valid UTF-8"
    );

    let rows = cartesian(vec![strings(&["a", "b\0c", "d"])]).map(Ok);
    let r = run_rows(&opts(1), "x", rows, &runner, &Cancel::new());
    assert_eq!(r.out, "a\n");
    assert!(matches!(r.result, Err(MapError::Template { seq: 2, .. })));
}

#[test]
fn a_closed_output_stops_the_run() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let runner = FakeRunner(move |_: &JobRequest, _: &Cancel| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(result(0, "x\n", ""))
    });
    let template = Template::from_text("x");
    let rows = cartesian(vec![(0..50).map(|i| i.to_string()).collect()]).map(Ok);
    let mut err = Vec::new();
    let e = run_map(
        &opts(1),
        &template,
        rows,
        &runner,
        &mut Closed,
        &mut err,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(matches!(e, MapError::Output(_)), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_options_are_refused_before_anything_runs() {
    let runner = FakeRunner(
        |_: &JobRequest, _: &Cancel| -> Result<herd_map::JobResult, JobError> { panic!("ran") },
    );
    let r = run_group(&MapOptions { jobs: 0, ..opts(1) }, "x", &["a"], &runner);
    assert_eq!(
        r.result.unwrap_err().to_string(),
        "invalid -j value 0: at least one job must be able to run"
    );
    let r = run_group(
        &MapOptions {
            resume: true,
            ..opts(1)
        },
        "x",
        &["a"],
        &runner,
    );
    assert!(matches!(r.result, Err(MapError::Option(_))));
    let e = "sometimes".parse::<Halt>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid --halt value \"sometimes\": use never, soon,fail=N or now,fail=N (N at least 1)"
    );
}
