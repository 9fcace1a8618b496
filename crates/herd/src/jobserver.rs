//! `herd shell`'s cluster jobserver: a GNU make jobserver whose width is the cluster's.
//!
//! A jobserver is a pipe of tokens: a client (make, cargo, ninja with `-j0`-style
//! support) takes one byte before starting a job beyond its first and puts it back when
//! the job ends. herd shell makes a FIFO in its masquerade directory, holds it open,
//! and fills it with `herd_sched::jobserver_width(...) - 1` tokens (each client has one
//! job of its own). Every child gets `MAKEFLAGS` naming it: the `fifo:PATH` form for make
//! 4.4 and later, the descriptor form (`R,W`, two descriptors of that same FIFO left
//! open across exec) for older makes (cargo reads `MAKEFLAGS` too; untested). So plain `make`, and `cargo
//! build`, take their width from the cluster.
//!
//! A thread asks the agent for the width every second and follows it: tokens are
//! written when helpers join, and taken back (as they come free) when helpers leave,
//! are held by their owners or drained. A command line's own `-jN` wins: make then
//! runs its own jobserver of N (and warns "-jN forced in submake" for a sub-make).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herd_agent::state::StateDir;
use herd_proto::{LocalRequest, LocalResponse};

/// How often the width is asked for.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The tokens to hold for a jobserver of width `width` (one job per client is free).
pub fn tokens_for(width: u32) -> u32 {
    width.saturating_sub(1)
}

/// A running jobserver; stops following the cluster when dropped.
pub struct Jobserver {
    fifo: PathBuf,
    /// The descriptors children inherit (read end, write end), open across exec.
    child_fds: (OwnedFd, OwnedFd),
    stop: Arc<AtomicBool>,
}

impl Jobserver {
    /// Makes the FIFO `dir/jobserver`, fills it for `width` and starts following the
    /// agent of `state`.
    pub fn start(dir: &Path, state: &StateDir, width: u32) -> anyhow::Result<Jobserver> {
        let fifo = dir.join("jobserver");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
        // SAFETY: a NUL-terminated path and a mode.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // Our own end (close-on-exec, non-blocking: taking tokens back never waits).
        let mut ours = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)?;
        let inherit = |write: bool| -> anyhow::Result<OwnedFd> {
            let f = std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(if write { 0 } else { libc::O_NONBLOCK })
                .open(&fifo)?;
            let fd = OwnedFd::from(f);
            // Blocking, and left open across exec, as make's own pipe is.
            // SAFETY: fcntl on a descriptor we own, with integer arguments.
            unsafe {
                let raw = fd.as_raw_fd();
                let fl = libc::fcntl(raw, libc::F_GETFL);
                libc::fcntl(raw, libc::F_SETFL, fl & !libc::O_NONBLOCK);
                libc::fcntl(raw, libc::F_SETFD, 0);
            }
            Ok(fd)
        };
        let child_fds = (inherit(false)?, inherit(true)?);
        let have = tokens_for(width);
        ours.write_all(&vec![b'+'; have as usize])?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, state) = (stop.clone(), state.clone());
        std::thread::spawn(move || follow(&mut ours, &state, have, &flag));
        Ok(Jobserver {
            fifo,
            child_fds,
            stop,
        })
    }

    /// `MAKEFLAGS` for children: `existing` without its own jobserver or `-j`, then
    /// `-j` and this jobserver in the form `make_version` understands.
    pub fn makeflags(&self, existing: Option<&OsString>, fifo_form: bool) -> OsString {
        let mut out = OsString::new();
        if let Some(e) = existing {
            for word in e.to_string_lossy().split_whitespace() {
                let ours = word.starts_with("--jobserver-auth=")
                    || word.starts_with("--jobserver-fds=")
                    || word == "-j"
                    || (word.starts_with("-j") && word[2..].bytes().all(|b| b.is_ascii_digit()));
                if !ours {
                    out.push(word);
                    out.push(" ");
                }
            }
        }
        out.push("-j --jobserver-auth=");
        if fifo_form {
            out.push("fifo:");
            out.push(self.fifo.as_os_str());
        } else {
            out.push(format!(
                "{},{}",
                self.child_fds.0.as_raw_fd(),
                self.child_fds.1.as_raw_fd()
            ));
        }
        out
    }
}

impl Drop for Jobserver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Whether the `make` on `path` understands `--jobserver-auth=fifo:` (GNU make 4.4+).
pub fn make_takes_fifo(path: &std::ffi::OsStr) -> bool {
    let out = std::process::Command::new("make")
        .arg("--version")
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GNU Make "))
        .map(|v| {
            let mut it = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            (it.next().unwrap_or(0), it.next().unwrap_or(0))
        });
    version.is_some_and(|v| v >= (4, 4))
}

/// Asks the agent for the width now.
pub fn width(rt: &tokio::runtime::Runtime, state: &StateDir) -> Option<u32> {
    match rt.block_on(herd_agent::local::call(state, &LocalRequest::Slots)) {
        Ok(LocalResponse::Slots(n)) => Some(n),
        _ => None,
    }
}

/// With `have` tokens made and `owed` of them still to take back, what a jobserver
/// that should hold `want` does: `(tokens to write, tokens owed now)`. Owed tokens are
/// forgiven before fresh ones are made (they are still out there).
fn plan(have: u32, owed: u32, want: u32) -> (u32, u32) {
    let target = have.saturating_sub(owed);
    if want > target {
        let add = want - target;
        let forgiven = add.min(owed);
        (add - forgiven, owed - forgiven)
    } else {
        (0, owed + (target - want))
    }
}

/// Keeps `have` tokens in the FIFO equal to what the cluster's width asks for.
fn follow(fifo: &mut File, state: &StateDir, mut have: u32, stop: &AtomicBool) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    // Tokens to take back as they come free.
    let mut owed = 0u32;
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(FOLLOW_EVERY);
        let Some(w) = width(&rt, state) else { continue };
        let (fresh, now_owed) = plan(have, owed, tokens_for(w));
        owed = now_owed;
        if fresh > 0 && fifo.write_all(&vec![b'+'; fresh as usize]).is_ok() {
            have += fresh;
        }
        while owed > 0 {
            let n = (owed as usize).min(buf.len());
            match fifo.read(&mut buf[..n]) {
                Ok(got) if got > 0 => {
                    owed -= got as u32;
                    have -= got as u32;
                }
                _ => break,
            }
        }
    }
}

/// The raw descriptors of a jobserver's child ends (for tests).
#[cfg(test)]
fn fds(j: &Jobserver) -> (std::os::fd::RawFd, std::os::fd::RawFd) {
    (j.child_fds.0.as_raw_fd(), j.child_fds.1.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makeflags_keep_other_flags_and_name_this_jobserver_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let j = Jobserver::start(dir.path(), &state, 3).unwrap();
        let (r, w) = fds(&j);
        let existing = OsString::from("-k -j8 --jobserver-auth=3,4 --no-print-directory");
        let flags = j.makeflags(Some(&existing), false);
        assert_eq!(
            flags,
            OsString::from(format!(
                "-k --no-print-directory -j --jobserver-auth={r},{w}"
            ))
        );
        let fifo = j.makeflags(None, true);
        assert_eq!(
            fifo,
            OsString::from(format!(
                "-j --jobserver-auth=fifo:{}",
                dir.path().join("jobserver").display()
            ))
        );
        // Width 3: two tokens wait in the FIFO.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dir.path().join("jobserver"))
            .unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(f.read(&mut buf).unwrap(), 2);
    }

    #[test]
    fn the_tokens_follow_the_width() {
        // (have, owed, want) -> (write, owed)
        let table = [
            ((2, 0, 2), (0, 0)), // steady
            ((2, 0, 5), (3, 0)), // helpers joined
            ((5, 0, 2), (0, 3)), // helpers left: take three back as they free
            ((5, 3, 4), (0, 1)), // one came back before it was taken: forgiven
            ((5, 3, 7), (2, 0)), // all forgiven, two fresh
            ((5, 1, 0), (0, 5)), // nobody: take every one back
        ];
        for ((have, owed, want), expect) in table {
            assert_eq!(plan(have, owed, want), expect, "{have} {owed} {want}");
        }
    }

    #[test]
    fn tokens_leave_one_job_to_each_client() {
        assert_eq!(tokens_for(0), 0);
        assert_eq!(tokens_for(1), 0);
        assert_eq!(tokens_for(5), 4);
    }
}
