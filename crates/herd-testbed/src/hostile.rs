//! The script a hostile helper plays (`herd-hostile-helper`, this crate's binary).
//!
//! The hostile helper is the real herd agent with a real exec certificate, whose
//! tasks are served not by the sandbox but by a [`Script`]: for every task sent to it,
//! it reads the script file anew and plays its [`Step`]s in order on that task's
//! stream. End-to-end tests write the script into the helper's root directory
//! ([`SCRIPT`] as the host sees it) and read what the workstation answered from
//! [`RESULTS`], one JSON [`FsResult`] per line.
//!
//! Paths in the wire types are bytes: in JSON, arrays of numbers (use
//! [`path_bytes`]).

use serde::{Deserialize, Serialize};

pub use herd_proto::TaskOutput;
pub use herd_proto::fs::{Base, Change, FsRequest, FsResponse};

/// Where the hostile helper reads its script, as its host sees it (its root is a
/// minimal one: `Host::machine_path` gives the file on this machine).
pub const SCRIPT: &str = "/hostile/script.json";
/// Where it appends what the workstation answered, as its host sees it.
pub const RESULTS: &str = "/hostile/results.jsonl";

/// A hostile helper's script: the steps played for every task sent to it.
pub type Script = Vec<Step>;

/// Which task a file question claims to be for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskRef {
    /// The task being served (what an honest helper does).
    Own,
    /// The task this helper served before the current one (finished by now).
    Previous,
    /// Any id.
    Id(u64),
}

/// One thing the hostile helper does on a task's behalf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Asks the workstation a file question (`PeerRequest::Fs` on a new stream of the
    /// task's connection, as a helper's view does) and appends `{save, task, response}`
    /// to [`RESULTS`].
    Fs {
        /// The question.
        req: FsRequest,
        /// The name the answer is saved under.
        save: String,
        /// The task the question claims to be for.
        task: TaskRef,
    },
    /// Sends one frame on the task's stream.
    Out(TaskOutput),
    /// Sends [`TaskOutput::Data`] of `len` bytes, all `byte`.
    Fill {
        /// How many bytes.
        len: u64,
        /// Of what.
        byte: u8,
    },
    /// Finishes the task's stream (what an honest helper does after `Done`).
    Finish,
    /// Resets the task's stream (the helper breaks off).
    Reset,
    /// Waits until the workstation closes or resets its side of the task's stream.
    Wait,
    /// Pauses (only to give an attack time to land, e.g. partial data to reach the
    /// workstation's commit process before a reset; never a test's proof of anything).
    Pause {
        /// Milliseconds.
        ms: u64,
    },
}

/// One answer the hostile helper saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsResult {
    /// The step's `save` name.
    pub save: String,
    /// The task id the question was sent for.
    pub task: u64,
    /// The workstation's answer (or `Errno(EIO)` with `error` set if none came).
    pub response: FsResponse,
    /// Why no answer came (the stream or connection failed).
    pub error: Option<String>,
}

/// A path as the wire types carry it.
pub fn path_bytes(p: impl AsRef<std::path::Path>) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_ref().as_os_str().as_bytes().to_vec()
}

/// The steps of an honest-looking end: `Exited { code }`, the `changes` (each file's
/// data given beside it; `None`: no data), `Done`, finish.
pub fn commit(code: i32, changes: Vec<(Change, Option<Vec<u8>>)>) -> Script {
    let mut s = vec![Step::Out(TaskOutput::Exited { code })];
    for (ch, data) in changes {
        s.push(Step::Out(TaskOutput::Change(ch)));
        if let Some(d) = data {
            s.push(Step::Out(TaskOutput::Data(d)));
        }
    }
    s.push(Step::Out(TaskOutput::Done));
    s.push(Step::Finish);
    s
}

/// The hostile helper's binary, built beside `herd_bin` (the herd binary a test was
/// given, `CARGO_BIN_EXE_herd`), once per test process: cargo builds no binary of
/// another package for a test, so this runs `cargo build -p herd-testbed --bin
/// herd-hostile-helper` (a no-op when it is up to date) into the same target
/// directory and profile. Panics, saying why, if that fails.
pub fn helper_bin(herd_bin: &std::path::Path) -> &'static std::path::Path {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BIN.get_or_init(|| {
        let profile_dir = herd_bin.parent().expect("herd's directory");
        let target = profile_dir.parent().expect("the target directory");
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut cmd = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"));
        cmd.args(["build", "--quiet", "-p", "herd-testbed"])
            .args(["--bin", "herd-hostile-helper", "--target-dir"])
            .arg(target)
            .current_dir(&workspace);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(st) if st.success() => Ok(profile_dir.join("herd-hostile-helper")),
            Ok(st) => Err(format!(
                "`cargo build -p herd-testbed --bin herd-hostile-helper` failed ({st}): see its errors above"
            )),
            Err(e) => Err(format!("cannot run cargo to build the hostile helper: {e}")),
        }
    });
    match built {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}
