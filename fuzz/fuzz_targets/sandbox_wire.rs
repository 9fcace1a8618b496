//! What crosses herd-sandbox's process boundaries, through its fuzzing seam
//! (`herd_sandbox::fuzzing`, thin wrappers over the crate's private code):
//!
//! * the spec the init reads (`WireSpec::decode`), from raw bytes and from a
//!   `SandboxSpec` the way the spawner makes it;
//! * the status lines the spawner reads back (its line reader, `spawn::setup_failure`,
//!   `Sandbox::note`), from raw bytes and from the lines the init writes (its formats
//!   and its newline replacement, copied from `init.rs`'s `Status::send`);
//! * `harden::clamp_rlimits`: the limits a task asks for (from the workstation's
//!   `RunSpec`), clamped to the helper's own, the real ones or made up.
//!
//! The first byte picks one of the five. Properties: never panics; a decoded spec
//! re-encodes to bytes that decode to the same spec, and no strict prefix of them
//! decodes; a `SandboxSpec` comes out of the wire byte for byte; a status line yields
//! an exit status only from an `exit code N` / `exit signal N` line, with N in range
//! (a code 0..=255, a signal 1..=64) and only a setup failure from an `error` or `cwd`
//! line, carrying what the line says; what the init writes is read back as it meant
//! it; no limit above the helper's own, no resource outside `ALLOWED_RLIMITS` (but
//! `RLIMIT_NICE` and `RLIMIT_RTPRIO`), `RLIMIT_RTPRIO` 0/0, `RLIMIT_NICE` 0/0 when idle
//! and never above the helper's.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use arbitrary::{Result, Unstructured};
use herd_sandbox::fuzzing::{self, WireSpec};
use herd_sandbox::{ALLOWED_RLIMITS, CgroupSpec, SandboxError, SandboxSpec, TaskExit};
use libfuzzer_sys::fuzz_target;

fn b(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

// ---- the spec ----

/// Checks a decoded spec: it re-encodes, the re-encoding decodes to the same spec
/// (same bytes again, same fields), is no longer than what was decoded, and no strict
/// prefix of it decodes. Paths come back from the wire's bytes unchanged.
fn check_decoded(w: &WireSpec, input_len: Option<usize>, cut: usize) {
    let e1 = fuzzing::encode_spec(w).expect("a decoded spec re-encodes");
    let w2 = fuzzing::decode_spec(&e1).expect("a re-encoded spec decodes");
    let e2 = fuzzing::encode_spec(&w2).unwrap();
    assert_eq!(e1, e2, "re-encoding changed the bytes");
    assert_eq!(format!("{w:?}"), format!("{w2:?}"));
    if let Some(n) = input_len {
        assert!(e1.len() <= n, "the re-encoding is longer than the input");
    }
    for end in [e1.len() - 1, cut % e1.len()] {
        assert!(
            fuzzing::decode_spec(&e1[..end]).is_err(),
            "a spec cut to {end} of {} bytes decoded",
            e1.len()
        );
    }
    let paths = [&w.lower, &w.upper, &w.work, &w.cwd]
        .into_iter()
        .chain(&w.hidden)
        .chain(&w.exe)
        .chain(w.cgroup.as_ref().and_then(|c| c.parent.as_ref()));
    for p in paths {
        assert_eq!(b(&fuzzing::wire_path(p)), &p[..]);
    }
    let _ = format!("{}", SandboxError::Spec("x".into()));
}

fn raw_spec(data: &[u8]) {
    let cut = data.first().copied().unwrap_or(0) as usize;
    match fuzzing::decode_spec(data) {
        Ok(w) => check_decoded(&w, Some(data.len()), cut),
        Err(e) => {
            assert!(matches!(e, SandboxError::Spec(_)), "{e:?}");
            let _ = e.to_string();
        }
    }
}

fn bytes(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    // Mostly path-like, sometimes anything (non-UTF-8, NUL, newlines).
    Ok(match u.int_in_range(0u8..=3)? {
        0 => u.arbitrary()?,
        1 => b"/".to_vec(),
        2 => {
            let mut v = b"/home/u/".to_vec();
            v.extend(u.arbitrary::<Vec<u8>>()?);
            v
        }
        _ => vec![b'/', 0xff, 0xfe, b'\n', b'\t', 0],
    })
}

fn os(u: &mut Unstructured<'_>) -> Result<OsString> {
    Ok(OsString::from_vec(bytes(u)?))
}

fn few<T>(
    u: &mut Unstructured<'_>,
    max: usize,
    mut f: impl FnMut(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect()
}

fn sandbox_spec(u: &mut Unstructured<'_>) -> Result<SandboxSpec> {
    let argv = few(u, 6, os)?;
    let mut s = SandboxSpec::new(os(u)?, os(u)?, os(u)?, argv);
    s.exe = if u.arbitrary()? {
        Some(os(u)?.into())
    } else {
        None
    };
    s.env = few(u, 6, |u| Ok((os(u)?, os(u)?)))?;
    s.cwd = os(u)?.into();
    s.uid = u.arbitrary()?;
    s.gid = u.arbitrary()?;
    s.groups = few(u, 8, |u| u.arbitrary())?;
    s.umask = u.arbitrary()?;
    s.rlimits = few(u, 8, |u| u.arbitrary())?;
    s.hidden = few(u, 6, |u| Ok(os(u)?.into()))?;
    s.hostname = u.arbitrary()?;
    s.cgroup = if u.arbitrary()? {
        Some(CgroupSpec {
            parent: if u.arbitrary()? {
                Some(os(u)?.into())
            } else {
                None
            },
            name: u.arbitrary()?,
            cpus: u.arbitrary()?,
            memory: u.arbitrary()?,
        })
    } else {
        None
    };
    s.idle = u.arbitrary()?;
    s.tty = u.arbitrary()?;
    s.console = u.arbitrary()?;
    s.pids_max = u.arbitrary()?;
    Ok(s)
}

/// A `SandboxSpec` comes out of the wire byte for byte, non-UTF-8 included (the
/// promise of `spec.rs`).
fn spec_through_the_wire(u: &mut Unstructured<'_>) -> Result<()> {
    let s = sandbox_spec(u)?;
    let cut: usize = u.arbitrary()?;
    let data = fuzzing::encode_spec(&fuzzing::wire_spec(&s)).expect("a spec encodes");
    let w = fuzzing::decode_spec(&data).expect("an encoded spec decodes");
    check_decoded(&w, Some(data.len()), cut);
    assert_eq!(w.lower, b(&s.lower));
    assert_eq!(w.upper, b(&s.upper));
    assert_eq!(w.work, b(&s.work));
    let argv: Vec<&[u8]> = s.argv.iter().map(|a| a.as_bytes()).collect();
    assert_eq!(w.argv, argv);
    assert_eq!(w.exe.as_deref(), s.exe.as_deref().map(b));
    let env: Vec<(&[u8], &[u8])> = s
        .env
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    let wenv: Vec<(&[u8], &[u8])> = w.env.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    assert_eq!(wenv, env);
    assert_eq!(w.cwd, b(&s.cwd));
    assert_eq!(
        (w.uid, w.gid, &w.groups, w.umask),
        (s.uid, s.gid, &s.groups, s.umask)
    );
    assert_eq!(w.rlimits, s.rlimits);
    let hidden: Vec<&[u8]> = s.hidden.iter().map(|p| b(p)).collect();
    assert_eq!(w.hidden, hidden);
    assert_eq!(w.hostname, s.hostname);
    match (&w.cgroup, &s.cgroup) {
        (None, None) => {}
        (Some(wc), Some(sc)) => {
            assert_eq!(wc.parent.as_deref(), sc.parent.as_deref().map(b));
            assert_eq!(wc.name, sc.name);
            assert_eq!(wc.cpus.map(f64::to_bits), sc.cpus.map(f64::to_bits));
            assert_eq!(wc.memory, sc.memory);
        }
        _ => panic!("cgroup lost or made up"),
    }
    assert_eq!(
        (w.idle, w.tty, w.console, w.pids_max),
        (s.idle, s.tty, s.console, s.pids_max)
    );
    assert!(!w.parked);
    // And as the init turns them back into paths.
    assert_eq!(b(&fuzzing::wire_path(&w.cwd)), b(&s.cwd));
    Ok(())
}

// ---- the status lines ----

const MAX_SIGNAL: i32 = 64; // Linux's _NSIG - 1 on x86_64 and aarch64

fn check_exit(e: TaskExit) {
    match e {
        TaskExit::Exited(c) => assert!((0..=255).contains(&c), "exit code {c} out of range"),
        TaskExit::Signaled(s) => assert!((1..=MAX_SIGNAL).contains(&s), "signal {s} out of range"),
    }
    assert!(
        (0..=255).contains(&e.code()),
        "status {} out of range",
        e.code()
    );
}

/// What `setup_failure` must make of `line`.
fn check_setup_failure(line: &str) {
    let got = fuzzing::setup_failure(line);
    if let Some(e) = &got {
        let _ = e.to_string();
    }
    if let Some(msg) = line.strip_prefix("error ") {
        match got {
            Some(SandboxError::Setup(m)) => assert_eq!(m, msg),
            other => panic!("{line:?} gave {other:?}"),
        }
    } else if let Some(rest) = line.strip_prefix("cwd ") {
        let Some(SandboxError::Cwd { path, message }) = got else {
            panic!("{line:?} gave {got:?}");
        };
        let path = path
            .into_os_string()
            .into_string()
            .expect("the path of a str line");
        if rest.contains('\t') {
            assert_eq!(format!("{path}\t{message}"), rest);
        } else {
            assert_eq!((&path[..], &message[..]), (rest, "cannot enter"));
        }
    } else {
        assert!(got.is_none(), "{line:?} is no failure but gave {got:?}");
    }
}

/// Feeds `lines` to `note` as `Sandbox::finish` does, checking each step.
fn note_all(lines: &[String]) -> (Option<TaskExit>, Option<SandboxError>) {
    let (mut exit, mut failed) = (None, None);
    for line in lines {
        check_setup_failure(line);
        let before_exit = exit;
        let before_failed = failed.as_ref().map(|e: &SandboxError| e.to_string());
        fuzzing::note(line, &mut exit, &mut failed);
        if let Some(e) = exit {
            check_exit(e);
        }
        let (code, signal) = (
            line.strip_prefix("exit code "),
            line.strip_prefix("exit signal "),
        );
        match code.or(signal) {
            None => assert_eq!(exit, before_exit, "{line:?} is no exit line"),
            Some(rest) => {
                // A new status comes from this line, with its kind and number.
                if exit != before_exit
                    && let Some(e) = exit
                {
                    let (kind, v) = match e {
                        TaskExit::Exited(c) => (code.is_some(), c),
                        TaskExit::Signaled(s) => (signal.is_some(), s),
                    };
                    assert!(kind, "{line:?} gave {e:?}");
                    assert_eq!(
                        rest.parse::<i64>().ok(),
                        Some(v as i64),
                        "{line:?} gave {e:?}"
                    );
                }
                // A line with a number in range is taken.
                let n = rest.parse::<i32>().ok();
                if let Some(c) = n
                    .filter(|_| code.is_some())
                    .filter(|c| (0..=255).contains(c))
                {
                    assert_eq!(exit, Some(TaskExit::Exited(c)), "{line:?}");
                }
                if let Some(s) = n
                    .filter(|_| signal.is_some())
                    .filter(|s| (1..=MAX_SIGNAL).contains(s))
                {
                    assert_eq!(exit, Some(TaskExit::Signaled(s)), "{line:?}");
                }
            }
        }
        let after_failed = failed.as_ref().map(|e| e.to_string());
        match before_failed {
            Some(f) => assert_eq!(after_failed, Some(f), "the first failure was replaced"),
            None if after_failed.is_some() => assert!(
                line.starts_with("error ") || line.starts_with("cwd "),
                "{line:?} made a failure"
            ),
            None => {}
        }
    }
    (exit, failed)
}

fn raw_status(data: &[u8]) {
    let lines = fuzzing::status_lines(data);
    // One line per newline, and the rest if any, each without its newline.
    let mut want: Vec<String> = data
        .split(|&c| c == b'\n')
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    if data.is_empty() || data.ends_with(b"\n") {
        want.pop();
    }
    assert_eq!(lines, want);
    note_all(&lines);
}

/// The lines the init writes (see the table in `spawn.rs`), as `Status::send` writes
/// them: newlines replaced by spaces, one newline after.
#[derive(Debug)]
enum Event {
    Cgroup(String),
    Pid1(i32),
    Started,
    Error(String),
    Cwd(Vec<u8>, i32),
    Code(i32),
    Signal(i32),
    Ended,
    Warn(String),
}

fn send(out: &mut Vec<u8>, line: &str) {
    out.extend(line.replace('\n', " ").bytes());
    out.push(b'\n');
}

fn written(u: &mut Unstructured<'_>) -> Result<()> {
    let events = few(u, 12, |u| {
        Ok(match u.int_in_range(0u8..=8)? {
            0 => Event::Cgroup(u.arbitrary()?),
            1 => Event::Pid1(u.arbitrary()?),
            2 => Event::Started,
            3 => Event::Error(u.arbitrary()?),
            4 => Event::Cwd(bytes(u)?, u.int_in_range(1..=133)?),
            5 => Event::Code(u.int_in_range(0..=255)?),
            6 => Event::Signal(u.int_in_range(1..=MAX_SIGNAL)?),
            7 => Event::Ended,
            _ => Event::Warn(u.arbitrary()?),
        })
    })?;
    let mut data = Vec::new();
    let (mut exit, mut failed) = (None, None::<(bool, String, String)>);
    for e in &events {
        match e {
            Event::Cgroup(d) => send(&mut data, &format!("cgroup {d}")),
            Event::Pid1(p) => send(&mut data, &format!("pid1 {p}")),
            Event::Started => send(&mut data, "started"),
            Event::Error(m) => {
                send(&mut data, &format!("error {m}"));
                failed.get_or_insert((false, String::new(), m.replace('\n', " ")));
            }
            Event::Cwd(p, errno) => {
                // As the task writes it: `cwd {}\t{e}` with `cwd.display()` and the
                // io::Error of `set_current_dir`.
                let cwd = fuzzing::wire_path(p);
                let msg = std::io::Error::from_raw_os_error(*errno).to_string();
                assert!(!msg.contains(['\t', '\n']));
                send(&mut data, &format!("cwd {}\t{msg}", cwd.display()));
                let shown = cwd.display().to_string().replace('\n', " ");
                failed.get_or_insert((true, shown, msg));
            }
            Event::Code(c) => {
                send(&mut data, &format!("exit code {c}"));
                exit = Some(TaskExit::Exited(*c));
            }
            Event::Signal(s) => {
                send(&mut data, &format!("exit signal {s}"));
                exit = Some(TaskExit::Signaled(*s));
            }
            Event::Ended => send(&mut data, "ended"),
            Event::Warn(m) => send(&mut data, &format!("warn {m}")),
        }
    }
    let lines = fuzzing::status_lines(&data);
    assert_eq!(lines.len(), events.len(), "one line per event");
    let (got_exit, got_failed) = note_all(&lines);
    assert_eq!(got_exit, exit, "{events:?}");
    match (got_failed, failed) {
        (None, None) => {}
        (Some(SandboxError::Setup(m)), Some((false, _, want))) => assert_eq!(m, want),
        (Some(SandboxError::Cwd { path, message }), Some((true, want_path, want_msg))) => {
            assert_eq!(path, PathBuf::from(&want_path), "{events:?}");
            assert_eq!(b(&path), want_path.as_bytes(), "{events:?}");
            assert_eq!(message, want_msg, "{events:?}");
        }
        (got, want) => panic!("{got:?} for {want:?} from {events:?}"),
    }
    Ok(())
}

// ---- the limits ----

const OTHER_RLIMITS: &[i32] = &[
    libc::RLIMIT_NICE as i32,
    libc::RLIMIT_RTPRIO as i32,
    libc::RLIMIT_RTTIME as i32,
    libc::RLIMIT_NPROC as i32,
    libc::RLIMIT_MEMLOCK as i32,
    libc::RLIMIT_RSS as i32,
    libc::RLIMIT_LOCKS as i32,
    libc::RLIMIT_SIGPENDING as i32,
    libc::RLIMIT_MSGQUEUE as i32,
    16, // RLIM_NLIMITS
    -1,
    i32::MIN,
];

fn value(u: &mut Unstructured<'_>, near: u64) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => 0,
        1 => u64::MAX, // RLIM_INFINITY
        2 => near,
        3 => near.saturating_add(1),
        4 => near.saturating_sub(1),
        _ => u.arbitrary()?,
    })
}

fn limits(u: &mut Unstructured<'_>) -> Result<()> {
    let idle: bool = u.arbitrary()?;
    let mut own = fuzzing::own_limits();
    if u.arbitrary()? {
        // Another helper's limits: any, soft no higher than hard (as the kernel keeps them).
        for (_, l) in &mut own {
            let (x, y): (u64, u64) = (value(u, l.rlim_max)?, value(u, l.rlim_cur)?);
            (l.rlim_cur, l.rlim_max) = (x.min(y), x.max(y));
        }
    }
    let own_of = |r: u32| own.iter().find(|(x, _)| *x == r).map(|(_, l)| *l);
    let requested = few(u, 24, |u| {
        let res = match u.int_in_range(0u8..=2)? {
            0 => *u.choose(ALLOWED_RLIMITS)? as i32,
            1 => *u.choose(OTHER_RLIMITS)?,
            _ => u.arbitrary()?,
        };
        let near = u32::try_from(res)
            .ok()
            .and_then(own_of)
            .map_or(0, |l| l.rlim_max);
        Ok((res, value(u, near)?, value(u, near)?))
    })?;
    let got = fuzzing::clamp_rlimits(&requested, idle, &own);

    let (nice, rtprio) = (libc::RLIMIT_NICE, libc::RLIMIT_RTPRIO);
    for (i, (r, l)) in got.iter().enumerate() {
        assert!(
            ALLOWED_RLIMITS.contains(r) || *r == nice || *r == rtprio,
            "resource {r} is not allowed: {got:?}"
        );
        assert!(
            got[..i].iter().all(|(x, _)| x != r),
            "resource {r} twice: {got:?}"
        );
        assert!(l.rlim_cur <= l.rlim_max, "soft above hard for {r}: {got:?}");
        if *r != rtprio {
            let o = own_of(*r).expect("own_limits has every allowed resource and NICE");
            assert!(
                l.rlim_max <= o.rlim_max,
                "resource {r}: {l:?} above the helper's {o:?}"
            );
        }
    }
    let find = |r: u32| {
        got.iter()
            .find(|(x, _)| *x == r)
            .map(|(_, l)| (l.rlim_cur, l.rlim_max))
    };
    assert_eq!(find(rtprio), Some((0, 0)), "RLIMIT_RTPRIO: {got:?}");
    let asked = |r: u32| requested.iter().filter(move |(x, _, _)| *x == r as i32);
    if idle {
        assert_eq!(find(nice), Some((0, 0)), "RLIMIT_NICE when idle: {got:?}");
    } else {
        assert_eq!(
            find(nice).is_some(),
            asked(nice).next().is_some(),
            "RLIMIT_NICE: {got:?}"
        );
    }
    for &r in ALLOWED_RLIMITS.iter().chain([&nice]) {
        if r == nice && idle {
            continue;
        }
        let o = own_of(r).unwrap();
        // Applied as asked, as far as the helper's hard limit allows: one of the
        // requests for it, clamped; and not at all if not asked for.
        let clamped: Vec<(u64, u64)> = asked(r)
            .map(|&(_, s, h)| {
                let h = h.min(o.rlim_max);
                (s.min(h), h)
            })
            .collect();
        match find(r) {
            Some(l) => assert!(
                clamped.contains(&l),
                "resource {r}: {l:?} not one of {clamped:?}"
            ),
            None => assert!(clamped.is_empty(), "resource {r} asked for but not set"),
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    match sel % 5 {
        0 => raw_spec(rest),
        1 => {
            let _ = spec_through_the_wire(&mut u);
        }
        2 => raw_status(rest),
        3 => {
            let _ = written(&mut u);
        }
        _ => {
            let _ = limits(&mut u);
        }
    }
});
