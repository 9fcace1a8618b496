//! A seam for the fuzz targets in `fuzz/` (`sandbox_wire`), and for nothing else.
//!
//! The decoders the sandbox runs on what crosses a process boundary are private: the
//! spec the init reads ([`WireSpec`]), the status lines the spawner reads back from it
//! and the clamping of the limits a task asks for. This module re-exports them as thin
//! wrappers, each calling the crate's own code and doing nothing of its own, so a fuzz
//! target outside the crate can drive them. It is hidden from the docs, not part of the
//! crate's API and may change at any time: code outside `fuzz/` must not use it.

use std::path::PathBuf;

use crate::{SandboxError, SandboxSpec, TaskExit};

pub use crate::spec::{WireCgroup, WireSpec};

/// How the spawner turns a [`SandboxSpec`] into what it sends the init.
pub fn wire_spec(spec: &SandboxSpec) -> WireSpec {
    WireSpec::from_spec(spec)
}

/// The bytes the spawner writes on the init's spec pipe (or task socket).
pub fn encode_spec(spec: &WireSpec) -> Result<Vec<u8>, SandboxError> {
    spec.encode()
}

/// How the init decodes those bytes.
pub fn decode_spec(data: &[u8]) -> Result<WireSpec, SandboxError> {
    WireSpec::decode(data)
}

/// How the init turns a path of the wire spec back into a path.
pub fn wire_path(bytes: &[u8]) -> PathBuf {
    crate::spec::path(bytes)
}

/// The lines the spawner reads from `data` on a status pipe, one by one as it does
/// (without their newline, as lossy UTF-8), until the end.
pub fn status_lines(data: &[u8]) -> Vec<String> {
    let mut r = std::io::Cursor::new(data);
    std::iter::from_fn(|| crate::spawn::next_line(&mut r)).collect()
}

/// The failure a status line reports, if it reports one (`spawn::setup_failure`).
pub fn setup_failure(line: &str) -> Option<SandboxError> {
    crate::spawn::setup_failure(line)
}

/// How a [`crate::Sandbox`] takes in a status line once its task runs
/// (`Sandbox::note`): how the task ended into `exit`, the first failure into `failed`.
pub fn note(line: &str, exit: &mut Option<TaskExit>, failed: &mut Option<SandboxError>) {
    crate::spawn::note(0, line, exit, failed)
}

/// The helper's own limits that [`clamp_rlimits`] clamps to, as pid 1 reads them.
pub fn own_limits() -> Vec<(libc::__rlimit_resource_t, libc::rlimit)> {
    crate::harden::own_limits()
}

/// The limits the task sets, given those it asked for and the helper's own
/// (`harden::clamp_rlimits`).
pub fn clamp_rlimits(
    requested: &[(i32, u64, u64)],
    idle: bool,
    own: &[(libc::__rlimit_resource_t, libc::rlimit)],
) -> Vec<(libc::__rlimit_resource_t, libc::rlimit)> {
    crate::harden::clamp_rlimits(requested, idle, own)
}
