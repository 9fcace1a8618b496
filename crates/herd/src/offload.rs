//! `herd shell` and herd started under another program's name (see
//! [`herd_agent::shell`] for how the two fit together).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use herd_agent::client::{self, RunOptions};
use herd_agent::shell::{self, SHELL_DIR_ENV};
use herd_agent::state::{self, StateDir};

fn herd_exe() -> PathBuf {
    std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

/// herd was started as `name` (a masquerade link): run the real `name` through the
/// agent, or locally when no agent runs. Never returns.
pub fn masquerade(name: &str) -> ! {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let herd = herd_exe();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let shell_dir = std::env::var_os(SHELL_DIR_ENV).map(PathBuf::from);
    let Some(real) = shell::resolve(name, &path, &herd) else {
        eprintln!(
            "herd: {name}: command not found (herd runs it through the cluster, but found no real {name} in PATH)"
        );
        std::process::exit(127);
    };
    // The task sees PATH without the masquerade directory and no HERD_SHELL_DIR, so
    // what the real program runs in turn runs as it would locally.
    let clean_path = match &shell_dir {
        Some(d) => shell::strip_path(&path, d),
        None => path.clone(),
    };
    // SAFETY: single-threaded at this point (nothing has started threads yet).
    unsafe {
        std::env::set_var("PATH", &clean_path);
        std::env::remove_var(SHELL_DIR_ENV);
    }
    let local = || -> ! {
        let e = std::process::Command::new(&real).args(&args).exec();
        eprintln!("herd: cannot run {}: {e}", real.display());
        std::process::exit(127);
    };
    let env_state = std::env::var("HERD_STATE").ok();
    let dir = state::resolve(None, env_state.as_deref(), true);
    if std::os::unix::net::UnixStream::connect(dir.socket_path()).is_err() {
        eprintln!("herd: no agent is running; {name} runs locally");
        local();
    }
    let config = match herd_agent::config::load_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herd: {e}");
            std::process::exit(2);
        }
    };
    let mut argv = vec![real.clone().into_os_string()];
    argv.extend(args.iter().cloned());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut writes = config.run.writable_dirs(home.as_deref());
    writes.extend(shell_writes());
    let opts = RunOptions {
        // A build runs many of these at once on one terminal: none gets a terminal.
        tty: Some(false),
        net: shell_net(),
        retries: config.shell.retries,
        local_ok: true,
        hide: config.run.hide.clone(),
        writes,
        ..RunOptions::default()
    };
    let spec = match client::describe(&argv, &opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herd: cannot describe the command: {e}");
            std::process::exit(255);
        }
    };
    let code = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(client::run(&dir, spec)),
        Err(e) => {
            eprintln!("herd: cannot start the async runtime: {e}");
            255
        }
    };
    std::process::exit(code);
}

/// Where `herd shell` tells the programs it offloads what they may write: the
/// directories, one per line.
const WRITES_ENV: &str = "HERD_WRITES";

/// Where `herd shell` tells the programs it offloads what network they get: a `--net`
/// value (`outward`, `none`).
const NET_ENV: &str = "HERD_NET";

/// What the enclosing `herd shell` asked for its programs' network.
fn shell_net() -> herd_proto::NetMode {
    let choice = std::env::var(NET_ENV)
        .ok()
        .and_then(|v| crate::NetChoice::parse(&v));
    crate::NetArg { net: choice }.mode()
}

/// The directories the enclosing `herd shell` lets its offloaded programs write.
fn shell_writes() -> Vec<PathBuf> {
    std::env::var_os(WRITES_ENV)
        .map(|v| {
            v.as_encoded_bytes()
                .split(|&b| b == b'\n')
                .filter(|l| l.first() == Some(&b'/'))
                .map(|l| PathBuf::from(std::ffi::OsStr::from_bytes(l)))
                .collect()
        })
        .unwrap_or_default()
}

/// `herd shell [--writes DIR]... [--net MODE] [-- CMD]`. The programs it offloads may
/// write under the directory it started in (a build's commands run in subdirectories
/// and write beside them) and under each `--writes DIR`, besides their own working
/// directory; they get the network `--net` says (an enclosing shell's otherwise).
pub fn shell(
    dir: &StateDir,
    writes: &[PathBuf],
    net: Option<crate::NetChoice>,
    command: &[OsString],
) -> anyhow::Result<ExitCode> {
    let config = herd_agent::config::load_env()?;
    if std::os::unix::net::UnixStream::connect(dir.socket_path()).is_err() {
        anyhow::bail!(
            "no herd agent is running on state directory {} (start one with `herd agent`)",
            dir.root().display()
        );
    }
    let herd = herd_exe();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let masq = shell::make_dir()?;
    let cleanup = Cleanup(masq.clone());
    let linked = shell::make_masquerade(&masq, &herd, &config.shell.all_programs(), &path)?;
    let mut new_path = masq.clone().into_os_string();
    if !path.is_empty() {
        new_path.push(":");
        new_path.push(&path);
    }
    let (program, args): (OsString, Vec<OsString>) = match command.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => {
            let sh = std::env::var_os("SHELL")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "/bin/sh".into());
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprintln!(
                    "herd shell: {} run through herd; make and cargo take the cluster's width from its jobserver; exit to leave",
                    if linked.is_empty() {
                        "no configured program was found, nothing will".to_string()
                    } else {
                        linked.join(", ")
                    }
                );
            }
            (sh, vec![])
        }
    };
    let cwd = std::env::current_dir()?;
    let mut roots = shell_writes();
    roots.push(cwd.clone());
    roots.extend(writes.iter().map(|w| client::write_root(&cwd, w)));
    let mut writes_env = Vec::new();
    for r in roots {
        writes_env.extend_from_slice(r.as_os_str().as_bytes());
        writes_env.push(b'\n');
    }
    // The cluster jobserver (see `jobserver`): plain `make` and cargo take the
    // cluster's width from it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let width = crate::jobserver::width(&rt, dir).unwrap_or(1);
    drop(rt);
    let jobs = crate::jobserver::Jobserver::start(&masq, dir, width)?;
    let makeflags = jobs.makeflags(
        std::env::var_os("MAKEFLAGS").as_ref(),
        crate::jobserver::make_takes_fifo(&path),
    );
    let mut cmd = std::process::Command::new(&program);
    if let Some(net) = net {
        cmd.env(NET_ENV, net.name());
    }
    let status = cmd
        .args(&args)
        .env("MAKEFLAGS", &makeflags)
        .env(WRITES_ENV, std::ffi::OsStr::from_bytes(&writes_env))
        .env("PATH", &new_path)
        .env(SHELL_DIR_ENV, &masq)
        .env("HERD_STATE", dir.root())
        .status();
    drop(jobs);
    drop(cleanup);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herd: cannot run {}: {e}", Path::new(&program).display());
            return Ok(ExitCode::from(127));
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// Removes the masquerade directory when the shell ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
