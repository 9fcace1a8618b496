//! Running the external tools the testbed drives (`ip`, `tc`, `ldd`).

use std::process::{Command, Stdio};

use crate::Error;

/// Runs `program args...`, returning its stdout; a failure names the command line and
/// carries its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let command = command_line(program, args);
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::ToolMissing {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::CommandFailed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip -n NETNS args...`: configures a namespace without entering it (unlike
/// `ip netns exec`, which remounts /sys).
pub(crate) fn ip_in(netns: &str, args: &[&str]) -> Result<String, Error> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `tc -n NETNS args...`.
pub(crate) fn tc_in(netns: &str, args: &[&str]) -> Result<String, Error> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("tc", &all)
}

fn command_line(program: &str, args: &[&str]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}
