//! Runs one command in a sandbox, for tests (as a non-root spawner) and by hand:
//!
//! ```text
//! herd-sandbox-run [--prepared] [--net outward] LOWER UPPER WORK UID GID CWD -- CMD [ARGS...]
//! herd-sandbox-run --probe SCRATCH_DIR
//! ```
//!
//! `--probe` prints `root` or `rootless` when this user can run sandboxes, then `net
//! STACK` or `net loopback only: WHY`; or the reason why not on stderr (exit 1).
//! `--net outward` gives the task the first network stack found in `PATH` (the usual
//! system directories without one); without it the task has loopback only.
//! `--prepared` starts the sandbox as the agent does, through an init prepared ahead
//! (`herd_sandbox::prepare`, then `Prepared::start`).
//!
//! The command's streams are this program's; it exits with the task's status (128 + N
//! for signal N), or prints `herd-sandbox-run: ...` and exits 125 when the sandbox
//! cannot be set up. The init helper is `herd-sandbox-init` next to this program.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::exit;

use herd_sandbox::{SandboxSpec, spawn};

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let helper = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join("herd-sandbox-init")))
        .unwrap_or_else(|| PathBuf::from("herd-sandbox-init"));
    if args.len() == 2 && args[0] == "--probe" {
        match herd_sandbox::probe(&helper, std::path::Path::new(&args[1])) {
            Ok(p) => {
                println!(
                    "{}",
                    match p.mode {
                        herd_sandbox::Mode::Root => "root",
                        herd_sandbox::Mode::Rootless => "rootless",
                    }
                );
                match p.net {
                    Ok(stack) => println!("net {}", stack.kind.program_name()),
                    Err(why) => println!("net loopback only: {why}"),
                }
            }
            Err(e) => {
                eprintln!("herd-sandbox-run: {e}");
                exit(1)
            }
        }
        return;
    }
    let prepared = args.first().is_some_and(|a| a == "--prepared");
    if prepared {
        args.remove(0);
    }
    let mut net = herd_sandbox::Net::Loopback;
    if args.first().is_some_and(|a| a == "--net") && args.get(1).is_some_and(|a| a == "outward") {
        args.drain(..2);
        match herd_sandbox::NetStack::find(std::env::var_os("PATH").as_deref()).first() {
            Some(stack) => net = herd_sandbox::Net::Outward(stack.clone()),
            None => {
                eprintln!("herd-sandbox-run: no network stack (pasta, slirp4netns) found");
                exit(2);
            }
        }
    }
    let Some(sep) = args.iter().position(|a| a == "--") else {
        eprintln!(
            "usage: herd-sandbox-run [--prepared] [--net outward] LOWER UPPER WORK UID GID CWD -- CMD [ARGS...]"
        );
        exit(2);
    };
    if sep != 6 || sep + 1 >= args.len() {
        eprintln!(
            "usage: herd-sandbox-run [--prepared] [--net outward] LOWER UPPER WORK UID GID CWD -- CMD [ARGS...]"
        );
        exit(2);
    }
    let num = |i: usize| -> u32 {
        args[i]
            .to_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                eprintln!("herd-sandbox-run: bad id {:?}", args[i]);
                exit(2)
            })
    };
    let mut spec = SandboxSpec::new(&args[0], &args[1], &args[2], args[sep + 1..].to_vec());
    spec.uid = num(3);
    spec.gid = num(4);
    spec.cwd = PathBuf::from(&args[5]);
    spec.env.push(("HOME".into(), "/".into()));
    let result = if prepared {
        herd_sandbox::prepare(&helper, None, &net).and_then(|p| {
            spec.net = net;
            p.start(&spec)
        })
    } else {
        spec.net = net;
        spawn(&helper, &spec)
    }
    .and_then(|s| s.wait());
    match result {
        Ok(status) => exit(status.code()),
        Err(e) => {
            eprintln!("herd-sandbox-run: {e}");
            exit(herd_sandbox::EXIT_SETUP_FAILED)
        }
    }
}
