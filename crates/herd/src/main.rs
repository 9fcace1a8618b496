//! `herd`: the one binary. It parses the command line and dispatches to the library
//! crates; no cluster logic lives here.
//!
//! Exit codes: 0 success; 1 a runtime failure (network, agent not running); 2 a
//! problem the user must fix (bad flag, bad or expired token, state directory in the
//! way or damaged). Every error is one `herd: ...` line on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herd_agent::admin::{self, InitOptions};
use herd_agent::client::{self, RunOptions};
use herd_agent::polite::{self, PoliteConfig};
use herd_agent::state::{self, StateDir};
use herd_agent::{AgentError, AgentOptions, host, local};
use herd_proto::{LocalRequest, LocalResponse, NodeInfo, Role};

mod clidoc;
mod demo;
mod jobserver;
mod map;
mod offload;
mod top;

/// Pool the CPUs of nearby Linux hosts.
///
/// Start with `herd init` on the workstation, then `herd agent --join TOKEN` on each
/// helper; `herd nodes` shows the cluster.
#[derive(Parser, Debug)]
#[command(name = "herd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct StateArg {
    /// State directory [default: /var/lib/herd for root, ~/.local/share/herd otherwise]
    #[arg(long, env = "HERD_STATE", value_name = "DIR")]
    state: Option<PathBuf>,
}

impl StateArg {
    fn dir(&self, for_client: bool) -> StateDir {
        state::resolve(self.state.as_deref(), None, for_client)
    }
}

/// `--writes DIR`, shared by `herd run`, `herd map` and `herd shell`.
#[derive(Args, Debug, Default)]
struct WritesArg {
    /// Let tasks change files under DIR too, besides their working directory
    /// (repeatable; `[run] writable` in the config adds more). Changes anywhere else
    /// are not written back, and herd says which
    #[arg(long = "writes", value_name = "DIR")]
    writes: Vec<PathBuf>,
}

impl WritesArg {
    /// These directories with the config's `[run] writable` ones.
    fn with_config(self, run: &herd_agent::config::RunConfig) -> Vec<PathBuf> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut all = run.writable_dirs(home.as_deref());
        all.extend(self.writes);
        all
    }
}

/// `--net MODE`, shared by `herd run`, `herd map` and `herd shell`.
#[derive(Args, Debug, Default, Clone, Copy)]
struct NetArg {
    /// The task's network on a helper: `outward` (the default) reaches the LAN and
    /// beyond through the helper's user-mode network stack (pasta or slirp4netns),
    /// never the helper's own loopback services; `none` gives it loopback only (and
    /// never runs it on this machine, which has no sandbox)
    #[arg(long = "net", value_name = "MODE", value_enum)]
    net: Option<NetChoice>,
}

/// The values of `--net`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum NetChoice {
    /// The LAN and beyond, through the helper's user-mode network stack
    Outward,
    /// Loopback only
    None,
}

impl NetChoice {
    /// Its name on the command line (and in `HERD_NET` for `herd shell`'s programs).
    fn name(self) -> &'static str {
        match self {
            NetChoice::Outward => "outward",
            NetChoice::None => "none",
        }
    }

    /// The value named `name`, as on the command line.
    fn parse(name: &str) -> Option<NetChoice> {
        <NetChoice as clap::ValueEnum>::from_str(name, false).ok()
    }
}

impl NetArg {
    /// What the task asks for: nothing said is [`herd_proto::NetMode::Default`].
    fn mode(self) -> herd_proto::NetMode {
        match self.net {
            None => herd_proto::NetMode::Default,
            Some(NetChoice::Outward) => herd_proto::NetMode::Outward,
            Some(NetChoice::None) => herd_proto::NetMode::Loopback,
        }
    }
}

// The arguments of `herd run`. (A plain comment: clap would take a doc comment here for
// the subcommand's description instead of the variant's.)
#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    state: StateArg,
    /// Run on this node
    #[arg(long, value_name = "NODE")]
    on: Option<String>,
    /// Give the command a terminal (default when stdin and stdout are terminals)
    #[arg(short = 't', conflicts_with = "no_tty")]
    tty: bool,
    /// Never give the command a terminal
    #[arg(short = 'T')]
    no_tty: bool,
    /// Set an environment variable for the command (repeatable)
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Run the command again elsewhere, up to N times, if its node dies, is cut
    /// off or evicts it (not once it has read stdin)
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,
    /// Never run it on this machine itself, even when that would be fastest
    #[arg(long)]
    remote: bool,
    #[command(flatten)]
    writes: WritesArg,
    #[command(flatten)]
    net: NetArg,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<std::ffi::OsString>,
}

/// `herd run` alone: parsed without building every other subcommand's arguments,
/// which costs a few hundred microseconds of each `herd run`. What it does not take
/// (help, a mistake) is parsed again by [`Cli`], which answers as for any command.
#[derive(Parser, Debug)]
#[command(name = "herd")]
struct RunOnly {
    #[command(subcommand)]
    command: RunOnlyCommand,
}

#[derive(Subcommand, Debug)]
enum RunOnlyCommand {
    Run(RunArgs),
}

/// The command line, `herd run`'s parsed the quick way when it can be.
fn parse_cli() -> Cli {
    if std::env::args_os().nth(1).is_some_and(|a| a == "run")
        && let Ok(RunOnly {
            command: RunOnlyCommand::Run(args),
        }) = RunOnly::try_parse()
    {
        return Cli {
            command: Command::Run(args),
        };
    }
    Cli::parse()
}

// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new cluster here (CA, this node's certificate) and print a join token.
    Init {
        #[command(flatten)]
        state: StateArg,
        /// This node's name [default: the host name]
        #[arg(long)]
        name: Option<String>,
        /// The cluster's name
        #[arg(long, default_value = "herd")]
        cluster: String,
        /// Address the agent will listen on
        #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7420")]
        listen: SocketAddr,
        /// Lifetime of the printed token (e.g. 30m, 24h, 7d, never)
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How many nodes the printed token may enroll (a number, or unlimited)
        #[arg(long, value_name = "N", default_value = "unlimited")]
        uses: String,
    },
    /// Run this host's agent in the foreground (joining a cluster first with --join).
    Agent {
        #[command(flatten)]
        state: StateArg,
        /// This node's name, when joining [default: the host name]
        #[arg(long)]
        name: Option<String>,
        /// Address to listen on [default: as at init/join, else 0.0.0.0:7420]
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<SocketAddr>,
        /// Address to announce to peers [default: the listen address, or the first
        /// non-loopback interface address when listening on 0.0.0.0]
        #[arg(long, value_name = "ADDR:PORT")]
        advertise: Option<SocketAddr>,
        /// Join the cluster with this token (first start only, or again after this
        /// node's certificate expired while it was off; restarts need none)
        #[arg(long, value_name = "TOKEN")]
        join: Option<String>,
        /// A peer to contact (repeatable); without it, the token's addresses and the
        /// peers seen before are used
        #[arg(long = "peer", value_name = "ADDR:PORT")]
        peers: Vec<SocketAddr>,
        /// Cores granted to herd, may be fractional; 0 lends none (a workstation that
        /// only submits) [default: all cores, or the agent's cgroup CPU quota]
        #[arg(long)]
        cpus: Option<f32>,
        /// Memory granted to herd, e.g. 4G [default: 80% of the memory available at start]
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
        /// Disk each task may fill with its writes on this host, e.g. 10G; a task over
        /// it is stopped and nothing of it is committed [default: half the free space
        /// of the state directory's file system at start]
        #[arg(long, value_name = "SIZE")]
        disk: Option<String>,
        /// Do not announce or discover peers on the LAN by mDNS
        #[arg(long)]
        no_mdns: bool,
        /// Bytes of workstation files a helper keeps cached, e.g. 10G
        #[arg(long, value_name = "SIZE", default_value = "4G")]
        cache_size: String,
        /// The cgroup that stands for this host when measuring its owner's load (a
        /// directory under /sys/fs/cgroup, or a path as in /proc/PID/cgroup)
        /// [default: the whole machine]
        #[arg(long, value_name = "PATH")]
        host_cgroup: Option<PathBuf>,
        /// The owner is busy above this fraction of the host's cores
        #[arg(long, value_name = "FRACTION", default_value = "0.5")]
        owner_busy: String,
        /// The owner is idle below this fraction of the host's cores
        #[arg(long, value_name = "FRACTION", default_value = "0.3")]
        owner_idle: String,
        /// Take work only after the owner has been idle this long (0: at once)
        #[arg(long, value_name = "DURATION", default_value = "15s")]
        start_after: String,
        /// Freeze herd's tasks after the owner has been busy this long
        #[arg(long, value_name = "DURATION", default_value = "5s")]
        suspend_after: String,
        /// Thaw them after the owner has been idle this long
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        resume_after: String,
        /// Evict tasks frozen this long (their workstations run them elsewhere)
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        evict_after: String,
        /// Evict the largest task when available memory falls below this (e.g. 512M,
        /// or 5% of the host's memory; 0 turns it off)
        #[arg(long, value_name = "SIZE", default_value = "5%")]
        min_free_mem: String,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics (no authentication:
        /// use a loopback or trusted address) [default: off]
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<SocketAddr>,
    },
    /// Print a new join token; list or revoke tokens (on the node that ran `herd init`).
    Token {
        #[command(flatten)]
        state: StateArg,
        /// Lifetime of the token (e.g. 30m, 24h, 7d, never)
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Roles granted to nodes joining with it: exec, submit or submit,exec
        #[arg(long, default_value = "exec")]
        roles: String,
        /// How many nodes may enroll with it (a number, or unlimited)
        #[arg(long, value_name = "N", default_value = "1")]
        uses: String,
        /// List the tokens instead
        #[arg(long, conflicts_with = "revoke")]
        list: bool,
        /// Revoke the token with this id (or unique id prefix)
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
    },
    /// Free an enrolled node's name so that another node (another key) may enroll
    /// under it (on the node that ran `herd init`). Its key is revoked first if it was
    /// not (see `herd revoke`): a name is never held by two working keys.
    Remove {
        #[command(flatten)]
        state: StateArg,
        /// The node's name
        #[arg(required_unless_present = "list")]
        node: Option<String>,
        /// List the enrolled names, their keys and whether they are revoked instead
        #[arg(long, conflicts_with = "node")]
        list: bool,
    },
    /// Revoke an enrolled node's certificate (on the node that ran `herd init`): every
    /// node refuses it at the handshake within seconds, closes its connections and
    /// sends it no task, also after restarts.
    ///
    /// The CA signs a new revocation list, which the running agent spreads to every
    /// node. The key never enrolls or renews again; the name stays taken until `herd
    /// remove NODE`. Root or the agent's own user only.
    Revoke {
        #[command(flatten)]
        state: StateArg,
        /// The node's name
        node: String,
    },
    /// Show the cluster's nodes as the local agent sees them.
    Nodes {
        #[command(flatten)]
        state: StateArg,
        /// Print JSON (one object per node) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Run a command where it finishes soonest (a helper, or this machine), seeing
    /// this machine's files, cwd, environment and uid; on a helper its file changes come
    /// back when it exits.
    Run(RunArgs),
    /// Run a command once per argument across the cluster, like GNU parallel:
    /// `herd map gzip -k {} ::: *.txt`, or one argument per stdin line.
    ///
    /// Replacement strings: {} the argument, {.} without extension, {/} basename, {//}
    /// dirname, {/.} basename without extension, {#} job number, {%} slot, {1} {2}...
    /// the argument of each ::: group. Each job's output comes out whole. The exit
    /// status is the number of failed jobs (at most 101). A job whose node is lost or
    /// evicts it runs again elsewhere.
    Map {
        #[command(flatten)]
        state: StateArg,
        /// Jobs handed to the agent at once; it runs as many as there are free slots
        /// and places the rest as slots free [default: 4 × `herd slots`, at most 256]
        #[arg(short = 'j', long = "jobs", value_name = "N")]
        jobs: Option<usize>,
        /// Write GNU parallel's tab-separated job log here
        #[arg(long, value_name = "FILE")]
        joblog: Option<PathBuf>,
        /// Skip the jobs the job log already holds
        #[arg(long)]
        resume: bool,
        /// Run a failed job again up to N more times
        #[arg(long, value_name = "N", default_value_t = 0)]
        retries: u32,
        /// Stop after failures: never, soon,fail=N (let running jobs finish) or
        /// now,fail=N (kill them)
        #[arg(long, value_name = "WHEN", default_value = "never")]
        halt: String,
        /// Print outputs in input order, not as jobs finish
        #[arg(short = 'k', long)]
        keep_order: bool,
        /// Show a progress bar even when stderr is not a terminal
        #[arg(long)]
        bar: bool,
        #[command(flatten)]
        writes: WritesArg,
        #[command(flatten)]
        net: NetArg,
        /// The command template, then `:::` and the arguments
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "TEMPLATE ::: ARGS"
        )]
        words: Vec<String>,
    },
    /// List the tasks this workstation queued or runs.
    Ps {
        #[command(flatten)]
        state: StateArg,
        /// Print JSON (one object per task) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Kill a task (an id from `herd ps`): it ends at once and nothing of it is
    /// committed.
    Kill {
        #[command(flatten)]
        state: StateArg,
        /// The task's id
        id: u64,
    },
    /// Make a node take no new work (its running tasks finish).
    Drain {
        #[command(flatten)]
        state: StateArg,
        /// The node
        node: String,
    },
    /// Make a drained node take work again.
    Undrain {
        #[command(flatten)]
        state: StateArg,
        /// The node
        node: String,
    },
    /// Print how many jobs the cluster can usefully run at once: its slots and a
    /// quarter more, the width of `herd shell`'s jobserver
    Slots {
        #[command(flatten)]
        state: StateArg,
    },
    /// Start a shell (or CMD) in which compilers, compressors and image tools run
    /// through herd automatically (the list is in the config file).
    Shell {
        #[command(flatten)]
        state: StateArg,
        #[command(flatten)]
        writes: WritesArg,
        #[command(flatten)]
        net: NetArg,
        /// The command to run instead of $SHELL
        #[arg(last = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
    /// Try herd on this machine alone: start a throwaway cluster (this workstation and
    /// three helpers), run a CPU-bound batch across it with a progress bar, show how the
    /// jobs spread and the speedup against one core, then clean up.
    ///
    /// Exit status 2 when the helpers cannot run tasks here (the output says why and
    /// what to do), 130 on Ctrl-C.
    Demo {
        /// Jobs in the batch [default: 24, or 4 per core above 6 cores]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        jobs: Option<u32>,
        /// Keep the temporary directory (state, agent logs, job log) and say where
        #[arg(long)]
        keep: bool,
    },
    /// Show the local agent's status.
    Status {
        #[command(flatten)]
        state: StateArg,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show the cluster live, full screen: hosts (load split between owner and herd,
    /// memory, tasks, cache hit rate), tasks and throughput.
    ///
    /// Keys: q quit, Tab switch list, arrows select, s sort, / filter, d/u drain or
    /// undrain the host, K kill the task, ? help. When stdout is not a terminal, or
    /// with --once, prints one snapshot as plain text instead.
    Top {
        #[command(flatten)]
        state: StateArg,
        /// Print one snapshot as plain text and exit (the default when stdout is not
        /// a terminal)
        #[arg(long)]
        once: bool,
    },
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    ///
    /// For example `herd completions bash > /usr/share/bash-completion/completions/herd`
    /// or `herd completions zsh > /usr/local/share/zsh/site-functions/_herd`.
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print herd's manual page (roff), every subcommand included: `herd man | man -l -`.
    ///
    /// With --dir, write herd.1 and one herd-SUB.1 per subcommand there instead.
    Man {
        /// Write herd.1 and herd-SUB.1 pages into this directory (created if missing)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Internal entry points the agent re-executes itself as; never in --help.
    if let Some(name) = std::env::args_os()
        .next()
        .and_then(|a| herd_agent::shell::masquerade_name(&a))
    {
        offload::masquerade(&name);
    }
    // `args_os`: `std::env::args()` panics on an argument that is not UTF-8, and a
    // command's arguments may be any bytes. Only the internal entry points, whose
    // arguments herd itself writes, take theirs as strings.
    let internal = || std::env::args().skip(2).collect::<Vec<String>>();
    match std::env::args_os()
        .nth(1)
        .as_deref()
        .and_then(|a| a.to_str())
    {
        Some("__sandbox-init") => herd_sandbox::init_main(),
        Some("__fs-serve") => std::process::exit(herd_agent::fsserve::serve_main(&internal())),
        Some("__fs-commit") => std::process::exit(herd_agent::fsserve::commit_main(&internal())),
        _ => {}
    }
    let cli = parse_cli();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = e
                .downcast_ref::<AgentError>()
                .map(|a| a.exit_code())
                .unwrap_or(1);
            eprintln!("herd: {e:#}");
            ExitCode::from(code as u8)
        }
    }
}

/// The agent's runtime: one async thread (blocking work goes to tokio's blocking
/// pool). Measured against two worker threads, a warm `herd run` takes up to half a
/// millisecond less: the workers no longer wake each other to steal the tasks that
/// every message spawns. ARCHITECTURE.md has the figures, and says what must never run
/// on that thread.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            state,
            name,
            cluster,
            listen,
            ttl,
            uses,
        } => {
            let dir = state.dir(false);
            let ttl = admin::parse_ttl(&ttl)?;
            let uses = admin::parse_uses(&uses)?;
            let name = name.unwrap_or_else(herd_agent::agent::default_name);
            // A test knob (README, *Defaults*): certificates that live seconds.
            let lifetime = match std::env::var("HERD_CERT_LIFETIME") {
                Ok(v) if !v.is_empty() => admin::parse_cert_lifetime(&v)?,
                _ => herd_agent::admin::default_cert_lifetime(),
            };
            let token = admin::init_with(
                &dir,
                &InitOptions {
                    cluster: cluster.clone(),
                    name: name.clone(),
                    listen,
                    ttl,
                },
                uses,
                lifetime,
            )?;
            println!(
                "created cluster {cluster:?} in {} (this node: {name})",
                dir.root().display()
            );
            println!("start this node with:  herd agent");
            println!("join a helper with:    herd agent --join <token below>");
            println!("{}", token.encode());
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent {
            state,
            name,
            listen,
            advertise,
            join,
            peers,
            cpus,
            memory,
            disk,
            no_mdns,
            cache_size,
            host_cgroup,
            owner_busy,
            owner_idle,
            start_after,
            suspend_after,
            resume_after,
            evict_after,
            min_free_mem,
            metrics,
        } => {
            init_logging();
            let usage = |flag: &str, e: polite::PoliteError| {
                AgentError::Usage(format!("invalid --{flag}: {e}"))
            };
            let polite_config = PoliteConfig {
                busy_fraction: polite::parse_fraction(&owner_busy)
                    .map_err(|e| usage("owner-busy", e))?,
                idle_fraction: polite::parse_fraction(&owner_idle)
                    .map_err(|e| usage("owner-idle", e))?,
                start_after: polite::parse_duration(&start_after)
                    .map_err(|e| usage("start-after", e))?,
                suspend_after: polite::parse_duration(&suspend_after)
                    .map_err(|e| usage("suspend-after", e))?,
                resume_after: polite::parse_duration(&resume_after)
                    .map_err(|e| usage("resume-after", e))?,
                evict_after: polite::parse_duration(&evict_after)
                    .map_err(|e| usage("evict-after", e))?,
                min_free: polite::MinFree::parse(&min_free_mem)
                    .map_err(|e| usage("min-free-mem", e))?,
                ..PoliteConfig::default()
            };
            let cache_size = host::parse_size(&cache_size).ok_or_else(|| {
                AgentError::Usage(format!("invalid --cache-size {cache_size:?}: use e.g. 4G"))
            })?;
            let memory = match memory {
                Some(m) => Some(host::parse_size(&m).ok_or_else(|| {
                    AgentError::Usage(format!("invalid --memory {m:?}: use e.g. 512M or 4G"))
                })?),
                None => None,
            };
            let disk = match disk {
                Some(d) => Some(host::parse_size(&d).ok_or_else(|| {
                    AgentError::Usage(format!("invalid --disk {d:?}: use e.g. 512M or 10G"))
                })?),
                None => None,
            };
            if let Some(c) = cpus
                && !(c >= 0.0 && c.is_finite())
            {
                return Err(AgentError::Usage(format!(
                    "invalid --cpus {c}: must be 0 (lend none) or more"
                ))
                .into());
            }
            let opts = AgentOptions {
                state: state.dir(false),
                name,
                listen,
                advertise,
                join,
                peers,
                cpus,
                memory,
                disk,
                mdns: !no_mdns,
                cache_size: Some(cache_size),
                host_cgroup,
                polite: polite_config,
                metrics,
                run_hook: None,
            };
            runtime()?.block_on(herd_agent::run_agent(opts, std::future::pending()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            state,
            ttl,
            roles,
            uses,
            list,
            revoke,
        } => {
            let dir = state.dir(false);
            if list {
                println!(
                    "{:<18} {:<12} {:<10} {:<20} USES",
                    "ID", "ROLES", "STATE", "EXPIRES"
                );
                let now = herd_agent::unix_now();
                for t in admin::list_tokens(&dir)? {
                    let st = if t.revoked {
                        "revoked"
                    } else if t.expires.is_some_and(|e| now >= e) {
                        "expired"
                    } else if t.used_up() {
                        "used"
                    } else {
                        "valid"
                    };
                    let exp = t
                        .expires
                        .map(|e| format!("in {}", human_secs(e as i64 - now as i64)))
                        .unwrap_or_else(|| "never".into());
                    println!(
                        "{:<18} {:<12} {:<10} {:<20} {}",
                        t.id,
                        Role::join(&t.roles),
                        st,
                        exp,
                        match t.max_uses {
                            Some(m) => format!("{}/{m}", t.uses),
                            None => format!("{}/unlimited", t.uses),
                        }
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(id) = revoke {
                let id = admin::revoke_token(&dir, &id)?;
                println!("revoked token {id}");
                return Ok(ExitCode::SUCCESS);
            }
            let roles = Role::parse_list(&roles)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| {
                    AgentError::Usage(format!(
                        "invalid --roles {roles:?}: use exec, submit or submit,exec"
                    ))
                })?;
            let token = admin::issue_token_with_uses(
                &dir,
                &roles,
                admin::parse_ttl(&ttl)?,
                admin::parse_uses(&uses)?,
            )?;
            println!("{}", token.encode());
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { state, node, list } => {
            let dir = state.dir(false);
            if list {
                println!(
                    "{:<24} {:<12} {:<9} {:<20} KEY (SHA-256)",
                    "NAME", "ROLES", "STATE", "ENROLLED"
                );
                let now = herd_agent::unix_now();
                for n in admin::list_nodes(&dir)? {
                    println!(
                        "{:<24} {:<12} {:<9} {:<20} {}",
                        n.name,
                        Role::join(&n.roles),
                        if n.revoked.is_some() {
                            "revoked"
                        } else {
                            "enrolled"
                        },
                        format!("{} ago", human_secs(now as i64 - n.enrolled as i64)),
                        n.key
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            revoke(&dir, &node.unwrap_or_default(), true)
        }
        Command::Revoke { state, node } => revoke(&state.dir(false), &node, false),
        Command::Nodes { state, json } => {
            let dir = state.dir(true);
            let nodes = match call(&dir, LocalRequest::Nodes)? {
                LocalResponse::Nodes(n) => n,
                other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print_nodes(&nodes);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(RunArgs {
            state,
            on,
            tty,
            no_tty,
            env,
            retries,
            remote,
            writes,
            net,
            command,
        }) => {
            let config = herd_agent::config::load_env()?;
            let mut opts = RunOptions {
                on,
                retries,
                local_ok: !remote,
                net: net.mode(),
                writes: writes.with_config(&config.run),
                hide: config.run.hide,
                tty: if tty {
                    Some(true)
                } else if no_tty {
                    Some(false)
                } else {
                    None
                },
                env: Vec::new(),
            };
            for kv in env {
                let Some((k, v)) = kv.split_once('=') else {
                    eprintln!("herd: invalid --env {kv:?}: use K=V");
                    return Ok(ExitCode::from(2));
                };
                opts.env.push((k.to_string(), v.to_string()));
            }
            let spec = match client::describe(&command, &opts) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("herd: cannot describe the command: {e}");
                    return Ok(ExitCode::from(255));
                }
            };
            let dir = state.dir(true);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let code = rt.block_on(client::run(&dir, spec));
            // Do not wait for the stdin reader thread.
            std::process::exit(code);
        }
        Command::Slots { state } => {
            let dir = state.dir(true);
            match call(&dir, LocalRequest::Slots)? {
                LocalResponse::Slots(n) => println!("{n}"),
                other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Shell {
            state,
            writes,
            net,
            command,
        } => offload::shell(&state.dir(true), &writes.writes, net.net, &command),
        Command::Completions { shell } => clidoc::completions(shell),
        Command::Man { dir } => clidoc::man(dir.as_deref()),
        Command::Ps { state, json } => {
            let tasks = match call(&state.dir(true), LocalRequest::Ps)? {
                LocalResponse::Ps(t) => t,
                other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else {
                println!(
                    "{:>6} {:<8} {:<12} {:>8} {:>6} COMMAND",
                    "ID", "STATE", "NODE", "TIME", "UID"
                );
                for t in tasks {
                    println!(
                        "{:>6} {:<8} {:<12} {:>8} {:>6} {}",
                        t.id,
                        t.state,
                        t.node.as_deref().unwrap_or("-"),
                        human_secs(t.secs as i64),
                        t.uid,
                        t.command
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill { state, id } => {
            call(&state.dir(true), LocalRequest::Kill(id))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain { state, node } => {
            call(&state.dir(true), LocalRequest::Drain { node, drain: true })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Undrain { state, node } => {
            call(&state.dir(true), LocalRequest::Drain { node, drain: false })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Map {
            state,
            jobs,
            joblog,
            resume,
            retries,
            halt,
            keep_order,
            bar,
            writes,
            net,
            words,
        } => {
            let writes = writes.with_config(&herd_agent::config::load_env()?.run);
            map::map(
                &state.dir(true),
                map::MapArgs {
                    jobs,
                    joblog,
                    resume,
                    retries,
                    halt,
                    keep_order,
                    bar,
                    writes,
                    net: net.mode(),
                    words,
                },
            )
        }
        Command::Top { state, once } => top::top(&state.dir(true), once),
        Command::Demo { jobs, keep } => demo::demo(demo::DemoArgs { jobs, keep }),
        Command::Status { state, json } => {
            let dir = state.dir(true);
            let st = match call(&dir, LocalRequest::Status)? {
                LocalResponse::Status(s) => s,
                other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!("node     {}", st.name);
                println!("cluster  {}", st.cluster);
                println!("address  {}", st.addr);
                println!("roles    {}", st.roles.join(","));
                println!("uptime   {}", human_secs(st.uptime_secs as i64));
                println!("version  {}", st.version);
                println!(
                    "tasks    {} queued, {} running (submitted here); {} hosted",
                    st.queued, st.running, st.hosting
                );
                println!(
                    "helper   {} (owner load {:.2} cores)",
                    st.mode, st.owner_load
                );
                println!(
                    "cert     valid for {} (renews itself when half is left)",
                    human_secs(st.cert_expires as i64 - herd_agent::unix_now() as i64)
                );
                if st.revocations > 0 {
                    println!("revoked  revocation list version {}", st.revocations);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `herd revoke NODE` (`remove`: `herd remove NODE`): through the running agent, which
/// spreads the new list at once, or on the state directory when no agent runs (the
/// agent spreads it when it starts).
fn revoke(dir: &StateDir, node: &str, remove: bool) -> anyhow::Result<ExitCode> {
    // Mistakes are told here, with their exit code, before the agent is asked.
    admin::check_revocable(dir, node)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let request = LocalRequest::Revoke {
        node: node.to_string(),
        remove,
    };
    let (report, spreading) = match rt.block_on(local::call(dir, &request)) {
        Ok(LocalResponse::Revoked(r)) => (r, true),
        Ok(LocalResponse::Error(e)) => anyhow::bail!("the agent refused: {e}"),
        Ok(other) => anyhow::bail!("unexpected answer from the agent: {other:?}"),
        Err(AgentError::NotRunning { .. }) => {
            // No agent: hold its lock meanwhile, so that none starts without the list.
            let _lock = dir.lock()?;
            (admin::revoke_node(dir, node, remove)?.report, false)
        }
        Err(e) => return Err(e.into()),
    };
    let key = &report.key[..16.min(report.key.len())];
    let version = report.version;
    if report.already {
        println!("{node} was revoked already (key {key}…, revocation list version {version})");
    } else {
        println!("revoked {node} (key {key}…): revocation list version {version}");
    }
    if report.removed {
        println!("removed {node}: another node may now enroll under this name");
    } else if !report.already {
        println!("the name stays taken until `herd remove {node}`; its key never enrolls again");
    }
    if !report.already {
        if spreading {
            println!("every node refuses it as soon as the list reaches it (seconds)");
        } else {
            println!(
                "no agent runs on {}: the list spreads when it starts",
                dir.root().display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn call(dir: &StateDir, req: LocalRequest) -> anyhow::Result<LocalResponse> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(local::call(dir, &req))? {
        LocalResponse::Error(e) => anyhow::bail!("the agent refused: {e}"),
        r => Ok(r),
    }
}

fn human_secs(s: i64) -> String {
    let s = s.max(0);
    match s {
        0..=89 => format!("{s}s"),
        90..=5399 => format!("{}m", s / 60),
        5400..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn print_nodes(nodes: &[NodeInfo]) {
    println!(
        "{:<16} {:<21} {:<8} {:<12} {:>5} {:>6} {:>5} {:>8} {:>5}",
        "NAME", "ADDRESS", "STATE", "ROLES", "CPUS", "SPEED", "LOAD", "MEM-FREE", "TASKS"
    );
    for n in nodes {
        let name = if n.local {
            format!("{}*", n.name)
        } else {
            n.name.clone()
        };
        println!(
            "{:<16} {:<21} {:<8} {:<12} {:>5.2} {:>6.2} {:>5.2} {:>8} {:>5}",
            name,
            n.addr.to_string(),
            n.state.as_str(),
            n.roles.join(","),
            n.cpus,
            n.speed,
            n.load,
            host::human_bytes(n.mem_free),
            n.tasks
        );
    }
}
